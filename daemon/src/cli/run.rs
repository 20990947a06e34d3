//! From a parsed command line to a request, a reply, the output and the exit
//! code.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Parser as _;

use super::{
    Cli, CountryVerb, GeoVerb, KeysVerb, ListVerb, Verb, command,
    input::{self, InputError},
    output,
};
use crate::control::{
    client::{Client, ClientError},
    protocol::{ChangeReply, KeySlotName, ListName, Reply, Request, ScopeSpec, exit},
};

/// Why a `rampart` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
    /// The daemon made the keys, but they could not be shown; rampartd keeps
    /// only their hashes, so new ones are the way to get keys.
    #[error(
        "{what}, but the output could not be written ({source}); rampartd keeps no copy of a key: \
         run {commands} to get new ones"
    )]
    KeysNotShown {
        what: String,
        commands: String,
        #[source]
        source: io::Error,
    },
    /// `events --follow` ended without the reader leaving: rampartd hung up.
    #[error("rampartd closed the event stream (it stopped or restarted)")]
    EventsEnded,
    #[error("cannot write man pages to {}: {source}", dir.display())]
    ManPages {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CliError {
    /// The exit code (`protocol::exit`), chosen by the error's type.
    pub fn exit_code(&self) -> u8 {
        match self {
            // A file the operator named that is not there is "not found",
            // as `geo load` of a missing file is (the daemon's answer).
            Self::Input(InputError::ReadFile { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                exit::NOT_FOUND
            }
            Self::Input(_) => exit::INVALID_INPUT,
            Self::Client(e) => e.exit_code(),
            Self::Output(_) | Self::ManPages { .. } | Self::KeysNotShown { .. } => exit::FAILED,
            Self::EventsEnded => exit::DAEMON_DOWN,
        }
    }

    /// `rampart: <message>`, then each detail the daemon gave, indented.
    pub fn report(&self) -> String {
        let mut text = format!("rampart: {self}\n");
        if let Self::Client(e) = self {
            for line in e.details() {
                text.push_str("  ");
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

/// The `rampart` binary.
pub fn main() -> ExitCode {
    // Clap prints its own errors and help, and exits with 2 (usage) or 0.
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match run(&cli, &mut out) {
        Ok(code) => ExitCode::from(code),
        // `rampart events --follow | head`: the reader is gone, nothing to say.
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            let _ = io::stderr().write_all(e.report().as_bytes());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs one command, printing to `out`; returns the exit code of a success
/// (`check --exit-code` may make that 10).
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<u8, CliError> {
    let Some(request) = request(&cli.verb)? else {
        return local(&cli.verb, out);
    };
    if let Request::Events { follow, last } = request {
        return events(&cli.socket, cli.json, follow, last, out);
    }
    let mut client = Client::connect(&cli.socket)?;
    let reply = client.call(request.clone())?;
    let text = if cli.json {
        json_text(&reply)?
    } else {
        text(&request, &reply, output::unix_now())
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| not_shown(&reply, e))?;
    match (&cli.verb, &reply) {
        (Verb::Check(args), Reply::Check(check)) if args.exit_code && check.action == "drop" => {
            Ok(exit::CHECK_DROPPED)
        }
        _ => Ok(exit::OK),
    }
}

/// The error for output that could not be written: for new keys, what was done
/// and how to get keys again.
fn not_shown(reply: &Reply, source: io::Error) -> CliError {
    match reply {
        Reply::KeysCreated { name, .. } => {
            let name = output::shown(name);
            CliError::KeysNotShown {
                what: format!("subscription {name} was created"),
                commands: format!(
                    "`rampart keys rotate {name}` and `rampart keys rotate {name} --secondary`"
                ),
                source,
            }
        }
        Reply::KeyRotated { name, slot, .. } => {
            let name = output::shown(name);
            let (which, flag) = match slot {
                KeySlotName::Primary => ("primary", ""),
                KeySlotName::Secondary => ("secondary", " --secondary"),
            };
            CliError::KeysNotShown {
                what: format!("the {which} key of subscription {name} was replaced"),
                commands: format!("`rampart keys rotate {name}{flag}` again"),
                source,
            }
        }
        _ => CliError::Output(source),
    }
}

/// The request a verb sends, after checking every value in it; `None` for
/// the verbs that never reach the daemon (`completions`, `generate-man`).
pub fn request(verb: &Verb) -> Result<Option<Request>, InputError> {
    Ok(Some(match verb {
        Verb::Status => Request::Status,
        Verb::Stats => Request::Stats,
        Verb::Check(args) => Request::Check {
            addr: input::address(&args.ip)?,
            port: args.port,
            udp: args.udp,
        },
        Verb::Deny(action) => list_request(ListName::Deny, action)?,
        Verb::Allow(action) => list_request(ListName::Allow, action)?,
        Verb::Bypass(action) => list_request(ListName::Bypass, action)?,
        Verb::Country(action) => match action {
            CountryVerb::Block { countries } => Request::CountryBlock {
                countries: input::countries(countries)?,
            },
            CountryVerb::Unblock { countries } => Request::CountryUnblock {
                countries: input::countries(countries)?,
            },
            CountryVerb::AllowOnly {
                countries,
                allow_unknown,
                off,
            } => Request::CountryAllowOnly {
                // The protocol's "off" is an empty list; `--off` is required
                // to say so, so that an empty shell variable cannot.
                countries: if *off {
                    Vec::new()
                } else {
                    input::countries(countries)?
                },
                allow_unknown: *allow_unknown && !*off,
            },
            CountryVerb::List => Request::CountryList,
        },
        Verb::Geo(GeoVerb::Load { path }) => Request::GeoLoad {
            path: input::daemon_path(path)?,
        },
        Verb::Keys(action) => match action {
            KeysVerb::Create(args) => Request::KeysCreate {
                name: input::name("subscription name", &args.name)?,
                scope: match (&args.product, &args.api) {
                    (Some(p), _) => ScopeSpec::Product(input::name("product name", p)?),
                    (None, Some(a)) => ScopeSpec::Api(input::name("API name", a)?),
                    (None, None) => ScopeSpec::All,
                },
            },
            KeysVerb::List => Request::KeysList,
            KeysVerb::Rotate { name, secondary } => Request::KeysRotate {
                name: input::name("subscription name", name)?,
                slot: if *secondary {
                    KeySlotName::Secondary
                } else {
                    KeySlotName::Primary
                },
            },
            KeysVerb::Suspend { name } => Request::KeysSuspend {
                name: input::name("subscription name", name)?,
            },
            KeysVerb::Activate { name } => Request::KeysActivate {
                name: input::name("subscription name", name)?,
            },
            KeysVerb::Revoke { name } => Request::KeysRevoke {
                name: input::name("subscription name", name)?,
            },
        },
        Verb::Reload => Request::Reload,
        Verb::Events(args) => Request::Events {
            follow: args.follow,
            last: args.last,
        },
        Verb::Completions { .. } | Verb::GenerateMan { .. } => return Ok(None),
    }))
}

/// The verbs answered without the daemon.
fn local(verb: &Verb, out: &mut dyn Write) -> Result<u8, CliError> {
    match verb {
        Verb::Completions { shell } => {
            clap_complete::generate(*shell, &mut command(), "rampart", out);
            out.flush().map_err(CliError::Output)?;
        }
        Verb::GenerateMan { dir } => man_pages(dir, out)?,
        _ => {}
    }
    Ok(exit::OK)
}

fn list_request(list: ListName, action: &ListVerb) -> Result<Request, InputError> {
    Ok(match action {
        ListVerb::Add(args) => Request::ListAdd {
            list,
            // `--replace` with an empty file clears the operator's entries.
            entries: input::entries(&args.entries, args.from_file.as_deref(), args.replace)?,
            ttl_secs: args.ttl.as_deref().map(input::ttl).transpose()?,
            comment: args.comment.as_deref().map(input::comment).transpose()?,
            replace: args.replace,
        },
        ListVerb::Del(args) => Request::ListDel {
            list,
            entries: input::entries(&args.entries, args.from_file.as_deref(), false)?,
        },
        ListVerb::List => Request::ListShow { list },
    })
}

/// `--json`: pretty-printed, one document per command.
fn json_text(reply: &Reply) -> Result<String, CliError> {
    let mut text = serde_json::to_string_pretty(&output::json(reply)).map_err(json_error)?;
    text.push('\n');
    Ok(text)
}

/// Plain data always serializes; this only guards against a future reply
/// type that does not.
fn json_error(e: serde_json::Error) -> CliError {
    CliError::Output(io::Error::other(e))
}

/// What people see for `reply` to `request`; `now` is unix seconds.
pub fn text(request: &Request, reply: &Reply, now: u64) -> String {
    match reply {
        Reply::Status(s) => output::status(s),
        Reply::Stats(s) => output::stats(s),
        Reply::Check(c) => output::check(c, matches!(request, Request::Check { udp: true, .. })),
        Reply::Entries { entries } => {
            let list = match request {
                Request::ListShow { list } => *list,
                _ => entries.first().map_or(ListName::Deny, |e| e.list),
            };
            output::entries(list, entries, now)
        }
        Reply::Countries(c) => output::countries(c),
        Reply::GeoLoaded(g) => output::geo_loaded(g),
        Reply::KeysCreated {
            name,
            primary,
            secondary,
        } => {
            let scope = match request {
                Request::KeysCreate { scope, .. } => output::scope(scope),
                _ => "as requested".into(),
            };
            output::keys_created(name, primary, secondary, &scope)
        }
        Reply::KeyRotated { name, slot, key } => output::key_rotated(name, *slot, key),
        Reply::Subscriptions { subscriptions } => output::subscriptions(subscriptions),
        Reply::Reloaded { message } => format!("{}\n", output::shown(message)),
        Reply::Event(e) => output::event(e),
        Reply::Changed(c) => format!("{}\n", changed(request, c)),
        Reply::Done => format!("{}\n", done(request)),
    }
}

/// The sentence for a `changed` reply. An add's expiry is told only of the
/// entries it added or extended: one already there keeps its own.
fn changed(request: &Request, reply: &ChangeReply) -> String {
    let &ChangeReply {
        changed,
        updated,
        unchanged,
    } = reply;
    let entries = |n| output::count(n, "entry", "entries");
    let countries = |n| output::count(n, "country", "countries");
    match request {
        Request::ListAdd {
            list,
            ttl_secs,
            replace,
            ..
        } => {
            let ttl = match ttl_secs {
                Some(secs) if changed > 0 => format!(", expiring in {}", output::duration(*secs)),
                _ => String::new(),
            };
            if *replace {
                format!(
                    "{}: operator entries replaced ({} changed, {unchanged} unchanged){ttl}",
                    list.as_str(),
                    entries(changed)
                )
            } else {
                // A daemon older than `updated` counts extensions as added.
                let mut text = format!(
                    "{}: {} added",
                    list.as_str(),
                    entries(changed.saturating_sub(updated))
                );
                match (updated, ttl_secs) {
                    (0, _) => {}
                    (n, Some(_)) => text.push_str(&format!(", {n} extended")),
                    (n, None) => text.push_str(&format!(", {n} made permanent")),
                }
                // `;`: the expiry is not that of the entries already there.
                let sep = if ttl.is_empty() { "," } else { ";" };
                format!("{text}{ttl}{sep} {unchanged} already there")
            }
        }
        Request::ListDel { list, .. } => format!(
            "{}: {} removed, {unchanged} not there",
            list.as_str(),
            entries(changed)
        ),
        Request::CountryBlock { .. } => {
            format!(
                "{} blocked, {unchanged} already blocked",
                countries(changed)
            )
        }
        Request::CountryUnblock { .. } => {
            format!("{} unblocked, {unchanged} not blocked", countries(changed))
        }
        Request::CountryAllowOnly { .. } => done(request),
        _ => format!("{changed} changed, {unchanged} unchanged"),
    }
}

/// The sentence for a `done` reply.
fn done(request: &Request) -> String {
    match request {
        Request::CountryAllowOnly { countries, .. } if countries.is_empty() => {
            "country policy off: no country is blocked".into()
        }
        Request::CountryAllowOnly {
            countries,
            allow_unknown,
        } => format!(
            "only {} pass now; sources of unknown country {}",
            countries.join(" "),
            if *allow_unknown {
                "pass"
            } else {
                "are dropped"
            }
        ),
        Request::KeysSuspend { name } => format!("subscription {name:?} suspended"),
        Request::KeysActivate { name } => format!("subscription {name:?} active"),
        Request::KeysRevoke { name } => format!("subscription {name:?} revoked"),
        Request::ListAdd { list, .. } | Request::ListDel { list, .. } => {
            format!("{}: done", list.as_str())
        }
        Request::Reload => "configuration reloaded".into(),
        _ => "done".into(),
    }
}

/// `events`: the recent events, then (with `--follow`) new ones until the
/// daemon hangs up or the reader goes away.
fn events(
    socket: &Path,
    json: bool,
    follow: bool,
    last: usize,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let mut client = Client::connect(socket)?;
    if follow {
        client.set_timeout(None)?;
    }
    let request = Request::Events { follow, last };
    let mut printed = 0usize;
    let mut done = false;
    for item in client.stream(request.clone())? {
        let line = match item? {
            Reply::Done => {
                done = true;
                break;
            }
            // One JSON document per line, so that a follower can be piped.
            reply if json => {
                let mut line = serde_json::to_string(&output::json(&reply)).map_err(json_error)?;
                line.push('\n');
                line
            }
            reply => text(&request, &reply, output::unix_now()),
        };
        out.write_all(line.as_bytes()).map_err(CliError::Output)?;
        out.flush().map_err(CliError::Output)?;
        printed += 1;
    }
    if !done {
        return Err(CliError::EventsEnded);
    }
    if printed == 0 && !json && !follow {
        out.write_all(b"no recent events\n")
            .map_err(CliError::Output)?;
    }
    Ok(exit::OK)
}

/// `generate-man DIR` (hidden; `cargo xtask man` runs it).
fn man_pages(dir: &Path, out: &mut dyn Write) -> Result<(), CliError> {
    let failed = |source| CliError::ManPages {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    clap_mangen::generate_to(command(), dir).map_err(failed)?;
    writeln!(out, "man pages written to {}", dir.display()).map_err(CliError::Output)
}
