//! `rampart`: the command line of rampartd (see `rampart --help` and docs/cli.md).

fn main() -> std::process::ExitCode {
    rampart::cli::main()
}
