//! `cargo xtask test`: the one test command of the README and CI. Runs the
//! cheap checks first so that they fail fast: format, then setup (which the
//! build needs), clippy on the host crates and on the eBPF crate for its own
//! target, and the tests, whose output is passed through untouched (CI reads
//! cargo's `test result:` lines); last, as root, `cargo xtask run --check`.

use anyhow::{Result, bail};

use crate::{
    BPF_TARGET, EBPF_PACKAGE, PRIVILEGED_TESTS_PACKAGE, demo, process,
    setup::{self, Mode, Scope},
};

#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Run only the tests that need no privileges: everything but the
    /// rampart-tests crate; the host setup (packages, bpffs) is skipped too.
    #[arg(long)]
    unprivileged: bool,

    /// Passed to `cargo test`, e.g. `cargo xtask test -- deny_list -- --nocapture`.
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

pub(crate) fn run(options: &Options) -> Result<()> {
    if !options.unprivileged && !setup::is_root() {
        bail!(
            "the tests in {PRIVILEGED_TESTS_PACKAGE} load XDP programs and create network \
             namespaces, which needs root: run `cargo xtask test` as root, or \
             `cargo xtask test --unprivileged` for the other tests only"
        );
    }

    let mut fmt = process::cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    // rustfmt colours its diff even in a CI log unless told what cargo was told.
    if let Some(color) = std::env::var_os("CARGO_TERM_COLOR") {
        fmt.arg("--color").arg(color);
    }
    process::run(&mut fmt)?;

    let scope = if options.unprivileged {
        Scope::Toolchain
    } else {
        Scope::Host
    };
    setup::ensure(scope, Mode::Install)?;

    process::run(process::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_PACKAGE,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate only compiles for the BPF target: lint it there, with the
    // nightly that builds it (as aya's own CI does).
    process::run(setup::nightly_cargo().args([
        "clippy",
        "--package",
        EBPF_PACKAGE,
        "--target",
        BPF_TARGET,
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;

    let mut cmd = process::cargo();
    cmd.args(["test", "--workspace", "--exclude", EBPF_PACKAGE]);
    if options.unprivileged {
        cmd.args(["--exclude", PRIVILEGED_TESTS_PACKAGE]);
    }
    cmd.args(&options.cargo_test_args);
    process::run(&mut cmd)?;

    // The README's first command, run as a test: every command the demo
    // prints must do what it says. Not when only some tests were asked for.
    if !options.unprivileged && options.cargo_test_args.is_empty() {
        demo::run(&demo::Options { check: true })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::{Cli, Command};

    #[test]
    fn test_passes_everything_after_the_separator_to_cargo_test() {
        let cli =
            Cli::try_parse_from(["xtask", "test", "--", "deny", "--", "--nocapture"]).unwrap();
        let Command::Test(options) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(options.cargo_test_args, ["deny", "--", "--nocapture"]);
    }
}
