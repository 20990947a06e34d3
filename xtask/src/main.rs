//! rampart's build tooling, run as `cargo xtask <command>` (the alias lives in
//! `.cargo/config.toml`). Each command is a module with its `Options` and a
//! `run`; `process` runs the tools they drive.

mod bench;
mod build;
mod demo;
mod install;
mod man;
mod process;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The eBPF crate only builds for the BPF target (`#![no_main]`, no libc), so
/// host builds leave it out; daemon/build.rs builds it with aya-build.
const EBPF_PACKAGE: &str = "rampart-filter-ebpf";

/// The target the eBPF crate is built for (little-endian hosts: x86_64, aarch64).
const BPF_TARGET: &str = "bpfel-unknown-none";

/// The crate holding the tests that need root (XDP, network namespaces).
const PRIVILEGED_TESTS_PACKAGE: &str = "rampart-tests";

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build, set up and test rampart")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need: rust-src, bpf-linker, Debian packages, bpffs.
    Setup(setup::Options),
    /// Check the eBPF toolchain, then build the workspace (XDP object included).
    Build(build::Options),
    /// Format check, setup, clippy, every test, then the demo's check (the command CI runs).
    Test(test::Options),
    /// Benchmarks, side by side with their anchors; figures go to docs/benchmarks.md.
    Bench(bench::Options),
    /// The whole of rampart on a demo pair of network namespaces, with things to try.
    #[command(alias = "demo")]
    Run(demo::Options),
    /// Build and install rampartd, rampart, the systemd units, the default
    /// configuration, man pages and completions.
    Install(install::InstallOptions),
    /// Remove what `install` installed (configuration and state: with --purge).
    Uninstall(install::UninstallOptions),
    /// Man pages and bash/zsh/fish completions of the `rampart` CLI (default: target/man).
    Man(man::Options),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup(options) => setup::run(&options),
        Command::Build(options) => build::run(&options),
        Command::Test(options) => test::run(&options),
        Command::Bench(options) => bench::run(&options),
        Command::Run(options) => demo::run(&options),
        Command::Install(options) => install::install(&options),
        Command::Uninstall(options) => install::uninstall(&options),
        Command::Man(options) => man::run(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The chain, without the backtrace anyhow adds under RUST_BACKTRACE:
            // these errors come from the machine's state, not from a bug here.
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
