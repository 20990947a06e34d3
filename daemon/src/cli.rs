//! The `rampart` command line: its clap definition ([`Cli`]), shared by the
//! binary and by the man page and completion generator, and [`main`].
//!
//! Every value an operator types (entries, countries, TTLs, names) is checked
//! here before anything is sent ([`input`]); the daemon's answer is printed as
//! a table for people or as JSON for scripts ([`output`]).

use std::path::PathBuf;

use clap::{Args, CommandFactory as _, Parser, Subcommand};

use crate::paths;

mod input;
mod output;
mod run;

pub use input::InputError;
pub use run::{CliError, main, run};

/// `rampart`: talks to rampartd over its control socket.
#[derive(Debug, Parser)]
#[command(
    name = "rampart",
    version,
    about = "Control rampartd: kernel deny/allow/bypass lists, countries, subscription keys",
    long_about = "Control rampartd over its control socket: kernel deny, allow and bypass lists, \
                  country rules, subscription keys, reloads and events.\n\n\
                  Exit codes: 0 done, 1 the daemon failed, 2 bad command line, 3 invalid input, \
                  4 not found, 5 permission denied, 6 rampartd not running, 7 already exists, \
                  8 invalid configuration (reload), 10 `check --exit-code`: dropped.",
    max_term_width = 100
)]
pub struct Cli {
    /// rampartd's control socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = paths::CONTROL_SOCKET_ENV,
        default_value = paths::DEFAULT_CONTROL_SOCKET,
        hide_env_values = true
    )]
    pub socket: PathBuf,
    /// Machine output: the daemon's reply as JSON (listings as a JSON array or object).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub verb: Verb,
}

/// The clap command of `rampart`, for man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Daemon, filter and gateway summary.
    Status,
    /// Kernel counters, drops by country, gateway requests and rejections.
    Stats,
    /// Explain what the kernel decides for packets from a source address.
    Check(CheckArgs),
    /// The denylist: sources dropped in the kernel.
    #[command(subcommand)]
    Deny(ListVerb),
    /// The allowlist: when it has entries, only they reach protected ports.
    #[command(subcommand)]
    Allow(ListVerb),
    /// Management networks that are never filtered.
    #[command(subcommand)]
    Bypass(ListVerb),
    /// Country rules (block, allow-only) and the country database in force.
    #[command(subcommand)]
    Country(CountryVerb),
    /// The country database.
    #[command(subcommand)]
    Geo(GeoVerb),
    /// Subscriptions and their keys.
    #[command(subcommand)]
    Keys(KeysVerb),
    /// Read the configuration file again; a bad file changes nothing.
    Reload,
    /// Recent events (list changes, bans, reloads, sampled drops).
    Events(EventsArgs),
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (rampart.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    GenerateMan {
        /// Where the pages go (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Source address (IPv4 or IPv6).
    #[arg(value_name = "IP")]
    pub ip: String,
    /// Destination port, to tell whether it is in the protected scope.
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// The port is a UDP port (default TCP).
    #[arg(long, requires = "port")]
    pub udp: bool,
    /// Exit with 10 when the kernel drops this source.
    #[arg(long)]
    pub exit_code: bool,
}

/// What can be done to a deny, allow or bypass list.
#[derive(Debug, Subcommand)]
pub enum ListVerb {
    /// Add entries: addresses, CIDRs or inclusive ranges `a-b`.
    Add(AddArgs),
    /// Remove entries.
    Del(DelArgs),
    /// The live entries, with where each comes from and when it expires.
    List,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Addresses, CIDRs (no host bits) or inclusive ranges `a-b`.
    #[arg(value_name = "ENTRY", required_unless_present = "from_file")]
    pub entries: Vec<String>,
    /// Make the entries temporary, e.g. `10m`, `2h`, `7d` (at most 365d).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// A note kept with the entries.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// Also read entries from a file, one a line (`#` comments); `-` reads stdin.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    /// Make the operator's entries of this list exactly these (one atomic change;
    /// configuration and automatic entries stay).
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Args)]
pub struct DelArgs {
    /// Entries to remove, as they were added or as listed.
    #[arg(value_name = "ENTRY", required_unless_present = "from_file")]
    pub entries: Vec<String>,
    /// Also read entries from a file, one a line (`#` comments); `-` reads stdin.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CountryVerb {
    /// Drop protected traffic from these countries (two-letter codes, any case).
    Block {
        /// Two-letter country codes.
        #[arg(value_name = "CC", required = true)]
        countries: Vec<String>,
    },
    /// Stop blocking these countries.
    Unblock {
        /// Two-letter country codes.
        #[arg(value_name = "CC", required = true)]
        countries: Vec<String>,
    },
    /// Let protected traffic through only from these countries; `--off` turns
    /// the country policy off.
    AllowOnly {
        /// Two-letter country codes.
        #[arg(
            value_name = "CC",
            required_unless_present = "off",
            conflicts_with = "off"
        )]
        countries: Vec<String>,
        /// Sources of no known country pass too.
        #[arg(long, conflicts_with = "off")]
        allow_unknown: bool,
        /// Turn the country policy off (no country is blocked).
        #[arg(long)]
        off: bool,
    },
    /// The country policy and the database in force.
    List,
}

#[derive(Debug, Subcommand)]
pub enum GeoVerb {
    /// Load a country database (MMDB, CSV or a directory of `<cc>.cidr` files)
    /// that rampartd reads from PATH; the table is replaced atomically.
    Load {
        /// The database, as rampartd sees it (made absolute here).
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysVerb {
    /// Create a subscription and print its two keys (shown once).
    Create(CreateArgs),
    /// The subscriptions: scope, state, origin.
    List,
    /// Replace a subscription's primary (or secondary) key and print the new one.
    Rotate {
        /// The subscription's name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Rotate the secondary key instead of the primary.
        #[arg(long)]
        secondary: bool,
    },
    /// Suspend a subscription: its keys stop working until `activate`.
    Suspend {
        /// The subscription's name.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Make a suspended subscription active again.
    Activate {
        /// The subscription's name.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Cancel a subscription for good.
    Revoke {
        /// The subscription's name.
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The subscription's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Scope the keys to one product's APIs (default: every API).
    #[arg(long, value_name = "P", conflicts_with = "api")]
    pub product: Option<String>,
    /// Scope the keys to one API (default: every API).
    #[arg(long, value_name = "A")]
    pub api: Option<String>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// How many recent events to print first.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub last: usize,
}

#[cfg(test)]
mod tests;
