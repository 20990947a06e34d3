//! Running the tools the commands drive. Every command line is echoed before
//! it runs so that a CI log shows exactly what happened.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root, so that `cargo xtask` behaves the same from any directory.
pub(crate) fn workspace_root() -> PathBuf {
    // xtask/ sits directly under the workspace root.
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// A `cargo` command run from the workspace root.
pub(crate) fn cargo() -> Command {
    // `cargo xtask` runs under cargo, which names its own binary in CARGO:
    // every step then uses the toolchain that built xtask (stable).
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd` with inherited stdio and fails unless it exits with 0.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its standard output; fails with its
/// standard error unless it exits with 0.
pub(crate) fn stdout(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let output = cmd
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// The command as a shell would show it, with the environment it sets.
pub(crate) fn display(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(key, value)| {
        value.map(|value| format!("{}={}", key.display(), quote(value)))
    });
    let program = std::iter::once(quote(cmd.get_program()));
    let args = cmd.get_args().map(quote);
    envs.chain(program)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=+:,@%".contains(c))
    {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_a_shell_would_split() {
        let mut cmd = Command::new("dpkg-query");
        cmd.env("LLVM_PREFIX", "/root/.cache/rampart/llvm-22")
            .args(["-W", "-f=${Status}", "it's"]);
        assert_eq!(
            display(&cmd),
            r"LLVM_PREFIX=/root/.cache/rampart/llvm-22 dpkg-query -W '-f=${Status}' 'it'\''s'"
        );
    }
}
