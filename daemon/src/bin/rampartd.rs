//! `rampartd`: the rampart service.
//!
//! `rampartd [--config FILE]` runs until SIGTERM (the filter stays attached);
//! `rampartd --check-config FILE` validates a file and exits 0 or with the
//! code start would exit with (64 for a bad file);
//! `rampartd --detach [--config FILE]` removes the filter.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use rampart::{paths, service};

#[derive(Parser)]
#[command(name = "rampartd", version, about = "rampart edge filter daemon")]
struct Args {
    /// Configuration file.
    #[arg(long, value_name = "FILE", default_value_os_t = PathBuf::from(paths::DEFAULT_CONFIG_FILE))]
    config: PathBuf,
    /// Validate FILE (and the country database, certificates and subscription
    /// store it names), print every error with file:line:column where it has
    /// one, and exit: 0 valid, 64 invalid (65 bad data, 66 unreadable file).
    #[arg(long, value_name = "FILE", conflicts_with = "detach")]
    check_config: Option<PathBuf>,
    /// Detach the filter from every interface and remove its pinned maps
    /// (refused, exit 75, while a rampartd runs on the same pins or state).
    #[arg(long)]
    detach: bool,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    rampart::lifecycle::signals::ignore_stray();
    // First, while the process has one thread: this unsets LISTEN_FDS & co.
    let inherited = rampart::lifecycle::sockets::take_from_env();
    let args = Args::parse();
    if let Some(file) = args.check_config {
        return match service::check(&file) {
            Ok(d) => {
                for unchecked in &d.unchecked {
                    eprintln!("note: {unchecked}");
                }
                for exposed in &d.exposed {
                    eprintln!("warning: {exposed}");
                }
                let (interfaces, countries) = d.filter.as_ref().map_or((0, 0), |plan| {
                    (plan.config.interfaces.len(), plan.countries.len())
                });
                println!(
                    "{}: ok ({interfaces} interface(s), {countries} country prefixes, {} listener(s), {} API(s))",
                    file.display(),
                    d.config.listeners.len(),
                    d.config.apis.len(),
                );
                ExitCode::SUCCESS
            }
            Err(service::ServiceError::GatewayBuild(e)) => {
                // One line per problem, each as start and reload say it.
                for problem in &e.problems {
                    eprintln!("{}", service::chain(problem));
                }
                ExitCode::from(e.exit_code())
            }
            Err(e) => {
                eprintln!("{}", service::chain(&e));
                ExitCode::from(e.exit_code())
            }
        };
    }
    let _log = init_logging(&args.config, args.detach);
    rampart::lifecycle::panics::install_hook();
    rampart::lifecycle::sockets::log_found(&inherited);
    if args.detach {
        return match service::detach(&args.config) {
            Ok(links) => {
                println!(
                    "detached: {}",
                    if links.is_empty() {
                        "nothing was attached".to_string()
                    } else {
                        links.join(", ")
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rampartd: {}", service::chain(&e));
                ExitCode::from(e.exit_code())
            }
        };
    }
    match service::run(args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let what = match e {
                service::ServiceError::ControlEnded => "rampartd stops",
                _ => "rampartd cannot start",
            };
            tracing::error!(error = %service::chain(&e), "{what}");
            eprintln!("rampartd: {}", service::chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs at the configured level (RUST_LOG overrides it) to the configured
/// `log_target`; `--detach`, a command someone runs by hand, always logs to
/// stderr. The guard writes what is still queued when dropped.
fn init_logging(config: &std::path::Path, detach: bool) -> rampart::logging::LogGuard {
    use rampart::config::LogTarget;
    let (level, target) = rampart::config::load(config)
        .map(|c| (c.daemon.log_level.as_str(), c.daemon.log_target))
        .unwrap_or(("info", LogTarget::Auto));
    let target = if detach { LogTarget::Stderr } else { target };
    rampart::logging::init(level, target)
}
