//! `cargo xtask man [--out DIR]`: the man pages (`rampart.1` and one page per
//! subcommand) and the bash, zsh and fish completions of the `rampart` CLI,
//! all generated from its clap definition (`rampart::cli::Cli`).
//!
//! xtask does not link the `rampart` crate to do this: that crate's build
//! script compiles the XDP program, which needs the toolchain that `cargo
//! xtask setup` installs, so xtask must build without it. Instead this builds
//! the CLI and runs its hidden `generate-man DIR` and `completions SHELL`
//! commands.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{
    process,
    setup::{self, Mode, Scope},
};

/// The completion scripts written, by the name each shell looks for.
pub(crate) const COMPLETIONS: [(&str, &str); 3] = [
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
    man_pages(&binary, &out)?;

    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;
    for (shell, file) in COMPLETIONS {
        let script = completion(&binary, shell)?;
        let path = completions.join(file);
        std::fs::write(&path, script)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{shell} completion: {}", path.display());
    }
    Ok(())
}

/// Writes the man pages of `binary`, a built `rampart`, into `dir`
/// (`rampart.1`, `rampart-deny-add.1`, ...).
pub(crate) fn man_pages(binary: &Path, dir: &Path) -> Result<()> {
    process::run(Command::new(binary).arg("generate-man").arg(dir))
}

/// The completion script of `binary`, a built `rampart`, for `shell`
/// (`bash`, `zsh` or `fish`).
pub(crate) fn completion(binary: &Path, shell: &str) -> Result<String> {
    process::stdout(Command::new(binary).args(["completions", shell]))
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR`, else `target/`
/// in the workspace (the workspace sets no other `target-dir`).
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => process::workspace_root().join(dir),
        None => process::workspace_root().join("target"),
    }
}
