//! `cargo xtask man [--out DIR]`: the man pages (`rampart.1` and one page per
//! subcommand) and the bash, zsh and fish completions of the `rampart` CLI,
//! all generated from its clap definition (`rampart::cli::Cli`).
//!
//! xtask does not link the `rampart` crate to do this: that crate's build
//! script compiles the XDP program, which needs the toolchain that `cargo
//! xtask setup` installs, so xtask must build without it. Instead this builds
//! the CLI and runs its hidden `generate-man DIR` and `completions SHELL`
//! commands.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{
    process,
    setup::{self, Mode, Scope},
};

/// The completion scripts written, by the name each shell looks for.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "rampart.bash"),
    ("zsh", "_rampart"),
    ("fish", "rampart.fish"),
];

#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Output directory [default: target/man in the workspace]; completions
    /// go to its `completions/` folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub(crate) fn run(options: &Options) -> Result<()> {
    let out = match &options.out {
        // Relative to where the operator stands, not the workspace root that
        // cargo runs in.
        Some(dir) => {
            std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?
        }
        None => process::workspace_root().join("target").join("man"),
    };
    setup::ensure(Scope::Toolchain, Mode::Install)?;
    process::run(process::cargo().args(["build", "--package", "rampart", "--bin", "rampart"]))?;
    let binary = target_dir().join("debug").join("rampart");
    let rampart = || std::process::Command::new(&binary);
    process::run(rampart().arg("generate-man").arg(&out))?;

    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;
    for (shell, file) in COMPLETIONS {
        let script = process::stdout(rampart().args(["completions", shell]))?;
        let path = completions.join(file);
        std::fs::write(&path, script)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{shell} completion: {}", path.display());
    }
    Ok(())
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR`, else `target/`
/// in the workspace (the workspace sets no other `target-dir`).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => process::workspace_root().join(dir),
        None => process::workspace_root().join("target"),
    }
}
