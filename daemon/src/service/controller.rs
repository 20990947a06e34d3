//! The control thread: the one owner of the kernel filter and the durable
//! state. Requests from the control socket, reloads, automatic bans and the
//! expiry of temporary entries are carried out here one at a time, on a
//! thread of its own, so that a big change (a 100k-entry file, a country
//! table) never stalls the gateway's runtime.
//!
//! Every change follows the same order: parse and validate everything; write
//! it to the state directory (durable before anyone is told "ok"); apply it
//! to the kernel; answer. A change the state directory refuses never reaches
//! the kernel; a change the kernel refuses is taken back out of the state.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;

use crate::{
    control::{
        protocol::{
            ChangeReply, CheckReply, CountriesReply, ErrorKind, ErrorReply, FilterStatus, GeoReply,
            ListName, ReloadStatus, Reply, Request, Response, StatsReply, StatusReply,
            check_comment,
        },
        server::{Command, EventLog, Peer},
    },
    filter::{self, EntryOrigin, Filter, ListEntry, ListKind},
    geo,
    policy::ban::{BanRequest, BanTracker, net_text},
    rules::{self, CountryPolicy},
    state::{Change, CountryPolicyState, GeoState, StateError, StateStore, StoredEntry},
};

use super::{ServiceError, chain};

/// What the control thread is asked to do.
pub(crate) enum Message {
    Control(Command),
    /// SIGHUP (no one to answer) or `rampart reload` (answered through its command).
    Reload,
    /// An automatic ban; `done` is told once it is in the kernel (or refused).
    Ban(BanRequest, tokio::sync::oneshot::Sender<()>),
    /// `/metrics` and `/readyz`: the kernel's counters and tables, the reloads.
    Metrics(tokio::sync::oneshot::Sender<crate::admin::ControlSnapshot>),
    Stop,
}

/// The configuration's country database and policy, as last loaded.
#[derive(Clone, Default)]
pub(crate) struct ConfigCountries {
    pub prefixes: Vec<(IpNet, u16)>,
    pub policy: CountryPolicy,
    pub database: Option<String>,
}

impl ConfigCountries {
    pub(crate) fn of(plan: &super::FilterPlan) -> Self {
        Self {
            prefixes: plan.countries.clone(),
            policy: plan.policy.clone(),
            database: plan
                .config
                .geo
                .as_ref()
                .map(|g| g.database.display().to_string()),
        }
    }
}

pub(crate) struct Controller {
    pub config_path: PathBuf,
    pub filter: Option<Filter>,
    pub interfaces: Vec<String>,
    pub pins: String,
    pub store: StateStore,
    pub events: Arc<EventLog>,
    pub started: Instant,
    pub config_countries: ConfigCountries,
    /// The table of the last `geo load`, when one was made.
    pub loaded_countries: Option<Vec<(IpNet, u16)>>,
    pub last_reload: Option<ReloadStatus>,
    /// The settings read only at start, as the daemon started with them.
    pub start_only: super::StartOnly,
    /// The keys of the file in force that differ from those (not applied): set
    /// by each applied reload.
    pub not_applied: Vec<&'static str>,
    pub bans_issued: u64,
    /// Reload outcomes (`/metrics`).
    pub reloads: crate::admin::ReloadCounts,
    pub gateway: Option<super::GatewayControl>,
    /// Counts the gateway's rejections per source (fed by the gateway's rejection sink).
    pub bans: Arc<BanTracker>,
    /// `[gateway] trusted_proxies`: never banned.
    pub trusted_proxies: Vec<IpNet>,
    /// systemd notifications: reloads, the watchdog's proof of life, STATUS=.
    pub notify: Arc<super::notify::Notifier>,
    /// `[filter] monitor` in force, for the drop summaries' wording.
    pub monitor: Arc<std::sync::atomic::AtomicBool>,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn error(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(kind, message)
}

fn list_kind(list: ListName) -> ListKind {
    match list {
        ListName::Deny => ListKind::Deny,
        ListName::Allow => ListKind::Allow,
        ListName::Bypass => ListKind::Bypass,
    }
}

fn list_name(kind: ListKind) -> ListName {
    match kind {
        ListKind::Deny => ListName::Deny,
        ListKind::Allow => ListName::Allow,
        ListKind::Bypass => ListName::Bypass,
    }
}

pub(crate) fn origin_name(origin: EntryOrigin) -> &'static str {
    match origin {
        EntryOrigin::Config => "config",
        EntryOrigin::Operator => "operator",
        EntryOrigin::Auto => "auto",
    }
}

fn storage_error(e: &StateError) -> ErrorReply {
    // The operator who asked sees the reply; whoever watches the service sees this.
    tracing::error!(error = %chain(e), "a change could not be written to the state directory; it was not made");
    error(
        ErrorKind::Storage,
        format!(
            "the change was not made (nothing reached the kernel): {}",
            chain(e)
        ),
    )
}

/// CLOCK_MONOTONIC ns of a wall-clock expiry (the kernel's clock; 0 is no expiry).
/// Saturates: an expiry too far off for the clock (one journaled before TTLs were
/// bounded by the daemon) stays far off instead of overflowing.
pub(super) fn expiry_ns(expires_at: Option<u64>, now_unix: u64, now_mono: u64) -> u64 {
    match expires_at {
        None => 0,
        Some(at) => now_mono
            .saturating_add(at.saturating_sub(now_unix).saturating_mul(1_000_000_000))
            .max(1),
    }
}

/// Whether an entry expiring at `new` lasts longer than one expiring at `old`
/// (unix seconds; `None` = permanent).
fn outlasts(new: Option<u64>, old: Option<u64>) -> bool {
    match (new, old) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(new), Some(old)) => new > old,
    }
}

/// The fields of a list change's event.
fn list_fields(kind: ListKind, peer: Peer) -> Vec<(String, String)> {
    vec![
        ("LIST".into(), kind.name().into()),
        ("PEER_UID".into(), peer.uid.to_string()),
    ]
}

/// The `entries` field of a `list_changed` log event: the first few networks
/// changed, so that a bulk change of thousands stays one short line.
fn entries_field<'a>(nets: impl ExactSizeIterator<Item = &'a IpNet>) -> String {
    const SHOWN: usize = 8;
    let total = nets.len();
    let mut text = nets
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if total > SHOWN {
        text.push_str(&format!(",... ({} more)", total - SHOWN));
    }
    text
}

/// Parses every entry; all errors are reported at once.
fn parse_entries(entries: &[String]) -> Result<Vec<IpNet>, ErrorReply> {
    let mut nets = Vec::new();
    let mut bad = Vec::new();
    for text in entries {
        match rules::parse_entry(text) {
            Ok(mut n) => nets.append(&mut n),
            Err(e) => bad.push(format!("{text}: {e}")),
        }
    }
    if bad.is_empty() {
        Ok(nets)
    } else {
        let mut reply = error(
            ErrorKind::InvalidInput,
            format!(
                "{} invalid entr{}; nothing changed",
                bad.len(),
                if bad.len() == 1 { "y" } else { "ies" }
            ),
        );
        reply.details = bad;
        Err(reply)
    }
}

fn country_codes(codes: &[String]) -> Result<BTreeSet<String>, ErrorReply> {
    let mut out = BTreeSet::new();
    let mut bad = Vec::new();
    for code in codes {
        let lower = code.to_ascii_lowercase();
        if code_index(&lower).is_some() {
            out.insert(lower);
        } else {
            bad.push(format!("{code:?} is not a two-letter country code"));
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        let mut reply = error(
            ErrorKind::InvalidInput,
            "invalid country code; nothing changed",
        );
        reply.details = bad;
        Err(reply)
    }
}

/// The country index of a two-letter code.
fn code_index(code: &str) -> Option<u16> {
    match code.as_bytes() {
        &[a, b] => rampart_common::country_index([a, b]),
        _ => None,
    }
}

/// The kernel-side country policy of a CLI one.
pub(crate) fn kernel_policy(state: &CountryPolicyState) -> CountryPolicy {
    let index = |codes: &BTreeSet<String>| -> BTreeSet<u16> {
        codes.iter().filter_map(|c| code_index(c)).collect()
    };
    match state {
        CountryPolicyState::Off => CountryPolicy::Off,
        CountryPolicyState::Block(codes) => CountryPolicy::Block(index(codes)),
        CountryPolicyState::AllowOnly {
            countries,
            allow_unknown,
        } => CountryPolicy::AllowOnly {
            allowed: index(countries),
            allow_unknown: *allow_unknown,
        },
    }
}

/// How a loaded table is named: its path and what was read there, e.g.
/// `/var/lib/GeoIP/c.mmdb (MMDB, GeoLite2-Country, built 2026-11-01)` or
/// `/tmp/g.csv (network,country CSV)`: one level of parentheses, and the file
/// name not said twice.
fn source_text(path: &Path, describe: &str) -> String {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let what = match describe.strip_suffix(')').and_then(|d| d.split_once(" (")) {
        Some((format, detail)) if detail == file => format.to_owned(),
        Some((format, detail)) => format!("{format}, {detail}"),
        None => describe.to_owned(),
    };
    format!("{} ({what})", path.display())
}

fn policy_view(policy: &CountryPolicy) -> (String, Vec<String>, bool) {
    let codes = |set: &BTreeSet<u16>| -> Vec<String> {
        set.iter()
            .filter_map(|i| rampart_common::country_code(*i))
            .map(|c| String::from_utf8_lossy(&c).to_ascii_uppercase())
            .collect()
    };
    match policy {
        CountryPolicy::Off => ("off".into(), Vec::new(), false),
        CountryPolicy::Block(set) => ("block".into(), codes(set), false),
        CountryPolicy::AllowOnly {
            allowed,
            allow_unknown,
        } => ("allow_only".into(), codes(allowed), *allow_unknown),
    }
}

impl Controller {
    /// Runs until [`Message::Stop`] or until every sender is gone.
    pub(crate) fn run(mut self, inbox: mpsc::Receiver<Message>) {
        let mut next_expiry = Instant::now() + Duration::from_secs(1);
        loop {
            let wait = next_expiry.saturating_duration_since(Instant::now());
            match inbox.recv_timeout(wait) {
                Ok(Message::Control(command)) => self.command(command),
                Ok(Message::Reload) => {
                    let _ = self.notified_reload();
                }
                Ok(Message::Ban(ban, done)) => {
                    self.ban(ban);
                    let _ = done.send(());
                }
                Ok(Message::Metrics(reply)) => {
                    let _ = reply.send(super::metrics::snapshot(&self));
                }
                Ok(Message::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_expiry {
                self.expire();
                self.bans.sweep(Instant::now());
                self.notify_tick();
                next_expiry = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    fn command(&mut self, command: Command) {
        let Command {
            request,
            peer,
            reply,
        } = command;
        let response = match self.handle(request, peer) {
            Ok(r) => Response::Ok(r),
            Err(e) => Response::Error(e),
        };
        // The client may have gone; the change is made either way.
        let _ = reply.send(response);
    }

    fn handle(&mut self, request: Request, peer: Peer) -> Result<Reply, ErrorReply> {
        match request {
            Request::Status => Ok(Reply::Status(Box::new(self.status()))),
            Request::Stats => self.stats().map(Reply::Stats),
            Request::Check { addr, port, udp } => self.check(addr, port, udp).map(Reply::Check),
            Request::ListAdd {
                list,
                entries,
                ttl_secs,
                comment,
                replace,
            } => {
                let changed =
                    self.list_add(list_kind(list), &entries, ttl_secs, comment, replace, peer);
                if list == ListName::Bypass {
                    self.refresh_exempt();
                }
                changed.map(Reply::Changed)
            }
            Request::ListDel { list, entries } => {
                let changed = self.list_del(list_kind(list), &entries, peer);
                if list == ListName::Bypass {
                    self.refresh_exempt();
                }
                changed.map(Reply::Changed)
            }
            Request::ListShow { list } => Ok(Reply::Entries {
                entries: self.list_show(list_kind(list)),
            }),
            Request::CountryBlock { countries } => self.country_block(&countries, true, peer),
            Request::CountryUnblock { countries } => self.country_block(&countries, false, peer),
            Request::CountryAllowOnly {
                countries,
                allow_unknown,
            } => self.country_allow_only(&countries, allow_unknown, peer),
            Request::CountryList => Ok(Reply::Countries(self.countries_view())),
            Request::GeoLoad { path } => self.geo_load(&path, peer).map(Reply::GeoLoaded),
            Request::KeysCreate { .. }
            | Request::KeysList
            | Request::KeysRotate { .. }
            | Request::KeysSuspend { .. }
            | Request::KeysActivate { .. }
            | Request::KeysRevoke { .. } => self.keys(request, peer),
            Request::Reload => self
                .notified_reload()
                .map(|message| Reply::Reloaded { message }),
            // Answered by the socket server from the event log.
            Request::Events { .. } => Ok(Reply::Done),
        }
    }

    /// Bypass networks (file and CLI) and trusted proxies are never banned.
    pub(crate) fn refresh_exempt(&self) {
        let mut exempt = self.trusted_proxies.clone();
        if let Some(filter) = &self.filter {
            exempt.extend(filter.list(ListKind::Bypass).iter().map(|e| e.net));
        }
        self.bans.set_exempt(exempt);
    }

    fn filter_ref(&self) -> Result<&Filter, ErrorReply> {
        self.filter.as_ref().ok_or_else(|| {
            error(
                ErrorKind::Unavailable,
                "the kernel filter is not configured (no [filter] section)",
            )
        })
    }

    fn filter_mut(&mut self) -> Result<&mut Filter, ErrorReply> {
        self.filter.as_mut().ok_or_else(|| {
            error(
                ErrorKind::Unavailable,
                "the kernel filter is not configured (no [filter] section)",
            )
        })
    }

    fn status(&self) -> StatusReply {
        let filter = self.filter.as_ref().map(|f| {
            let live = |kind| f.list(kind);
            let deny = live(ListKind::Deny);
            let (policy, countries, _) = policy_view(&self.country_policy());
            FilterStatus {
                interfaces: self.interfaces.clone(),
                pins: self.pins.clone(),
                auto_bans: deny
                    .iter()
                    .filter(|e| e.origin == EntryOrigin::Auto)
                    .count(),
                deny: deny.len(),
                allow: live(ListKind::Allow).len(),
                bypass: live(ListKind::Bypass).len(),
                country_policy: policy,
                countries,
                country_prefixes: self.countries().len(),
            }
        });
        StatusReply {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config: self.config_path.display().to_string(),
            filter,
            gateway: self.gateway.as_ref().map(super::GatewayControl::status),
            last_reload: self.last_reload.clone(),
        }
    }

    fn stats(&self) -> Result<StatsReply, ErrorReply> {
        let (kernel, drops_by_country) = match &self.filter {
            Some(f) => {
                let c = f
                    .counters()
                    .map_err(|e| error(ErrorKind::Kernel, chain(&e)))?;
                (
                    c.by_reason
                        .iter()
                        .map(|(n, v)| ((*n).to_owned(), *v))
                        .collect(),
                    c.drops_by_country,
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        let (requests, rejections) = self
            .gateway
            .as_ref()
            .map(super::GatewayControl::counters)
            .unwrap_or_default();
        Ok(StatsReply {
            kernel,
            drops_by_country,
            requests,
            rejections,
            bans_issued: self.bans_issued,
        })
    }

    /// The country table in force: the last `geo load`, else the configuration's.
    fn countries(&self) -> &[(IpNet, u16)] {
        self.loaded_countries
            .as_deref()
            .unwrap_or(&self.config_countries.prefixes)
    }

    /// The country policy in force: the CLI's once set, else the configuration's.
    pub(crate) fn country_policy(&self) -> CountryPolicy {
        match &self.store.state().countries {
            Some(state) => kernel_policy(state),
            None => self.config_countries.policy.clone(),
        }
    }

    fn check(&self, addr: IpAddr, port: Option<u16>, udp: bool) -> Result<CheckReply, ErrorReply> {
        // The kernel judges an IPv4 packet by its IPv4 source (an IPv6 packet
        // with a mapped source never gets that far): answer for that one,
        // whichever client sent the request.
        let addr = addr.to_canonical();
        let filter = self.filter.as_ref().ok_or_else(|| {
            error(
                ErrorKind::Unavailable,
                "the kernel filter is not configured (no [filter] section)",
            )
        })?;
        let protocol = if udp { 17 } else { 6 };
        let x = filter.explain(addr, port.map(|p| (protocol, p)));
        let now_mono = filter::monotonic_ns();
        let matched = x.matched.as_ref();
        let expires_in_secs = matched.and_then(|m| {
            (m.expires_ns != 0).then(|| m.expires_ns.saturating_sub(now_mono) / 1_000_000_000)
        });
        Ok(CheckReply {
            addr,
            port,
            action: if x.dropped() { "drop" } else { "pass" }.into(),
            reason: x.reason.to_owned(),
            list: matched.map(|m| list_name(m.list)),
            entry: matched.map(|m| m.net.to_string()),
            origin: matched.map(|m| origin_name(m.origin).to_owned()),
            expires_in_secs,
            country: x.country.clone(),
            in_scope: port.map(|_| x.in_scope),
            explanation: x.to_string(),
        })
    }

    /// Adds operator entries. Without `replace`, an add never shortens an
    /// entry's life: a net already listed until at least the expiry asked for
    /// (or for good) is "already there" and left as it is, comment included; one
    /// listed until earlier is extended (made permanent without a TTL) and keeps
    /// its comment unless a new one is given. With `replace`, the operator's
    /// entries become exactly these. Either way an automatic ban is never
    /// shortened: an operator entry that outlasts it takes its place (the state
    /// holds one entry per network, and the kernel then holds that one too).
    fn list_add(
        &mut self,
        kind: ListKind,
        entries: &[String],
        ttl_secs: Option<u64>,
        comment: Option<String>,
        replace: bool,
        peer: Peer,
    ) -> Result<ChangeReply, ErrorReply> {
        let nets = parse_entries(entries)?;
        if ttl_secs == Some(0) {
            return Err(error(ErrorKind::InvalidInput, "--ttl must be more than 0"));
        }
        // The CLI refuses these too; a request made some other way must not reach
        // the journal with an expiry the kernel's clock cannot hold.
        if ttl_secs.is_some_and(|t| t > crate::control::protocol::MAX_TTL_SECS) {
            return Err(error(
                ErrorKind::InvalidInput,
                "--ttl is longer than 365d; leave it out for a permanent entry",
            ));
        }
        // The CLI's rule too: a comment with a newline would print as a line of
        // its own in `rampart deny list`.
        if let Some(Err(e)) = comment.as_deref().map(check_comment) {
            return Err(error(
                ErrorKind::InvalidInput,
                format!("invalid comment: {e}; nothing changed"),
            ));
        }
        let now = unix_now();
        let expires_at = ttl_secs.map(|t| now.saturating_add(t));
        let lists = self.filter_ref()?.lists();
        let in_config = |net: &IpNet| lists.slots(kind, net).get(EntryOrigin::Config).is_some();
        let mut unchanged = 0;
        let mut updated = 0;
        let mut fresh = Vec::new();
        // Automatic bans an operator entry takes the place of.
        let mut retired = Vec::new();
        let mut seen = BTreeSet::new();
        for net in nets {
            let net = net.trunc();
            if !seen.insert(net) {
                continue;
            }
            if in_config(&net) {
                unchanged += 1;
                continue;
            }
            let mut entry = StoredEntry {
                list: kind,
                net,
                origin: EntryOrigin::Operator,
                expires_at,
                comment: comment.clone(),
                added_by: Some(peer.uid),
                added_at: now,
                reason: None,
            };
            let old = self
                .store
                .state()
                .get(kind, &net)
                .filter(|e| e.is_live(now));
            if let Some(old) = old {
                let keep = match old.origin {
                    EntryOrigin::Operator => !replace,
                    EntryOrigin::Auto | EntryOrigin::Config => true,
                };
                if keep && !outlasts(expires_at, old.expires_at) {
                    unchanged += 1;
                    continue;
                }
                if old.origin == EntryOrigin::Auto {
                    retired.push(net);
                } else if !replace {
                    updated += 1;
                    if entry.comment.is_none() {
                        entry.comment.clone_from(&old.comment);
                    }
                }
            }
            fresh.push(entry);
        }
        let change = if replace {
            Change::Replace {
                list: kind,
                origin: EntryOrigin::Operator,
                entries: fresh.clone(),
            }
        } else {
            if fresh.is_empty() {
                return Ok(ChangeReply {
                    changed: 0,
                    updated: 0,
                    unchanged,
                });
            }
            Change::Add(fresh.clone())
        };
        let removed: Vec<IpNet> = if replace {
            self.store
                .state()
                .entries
                .values()
                .filter(|e| e.list == kind && e.origin == EntryOrigin::Operator)
                .filter(|e| !seen.contains(&e.net))
                .map(|e| e.net)
                .collect()
        } else {
            Vec::new()
        };
        // Only what this change touches is remembered for taking it back.
        let undo = self.undo_changes(kind, seen.iter().chain(&removed));
        self.store
            .commit(std::slice::from_ref(&change))
            .map_err(|e| storage_error(&e))?;
        let now_mono = filter::monotonic_ns();
        let mut batch = Vec::new();
        if !retired.is_empty() {
            batch.push(filter::Change::RemoveOrigin {
                kind,
                origin: EntryOrigin::Auto,
                nets: retired,
            });
        }
        if replace {
            // The operator's whole set at once: kept entries keep their expiry.
            let all: Vec<(IpNet, u64)> = self
                .store
                .state()
                .entries
                .values()
                .filter(|e| e.list == kind && e.origin == EntryOrigin::Operator)
                .map(|e| (e.net, expiry_ns(e.expires_at, now, now_mono)))
                .collect();
            batch.push(filter::Change::ReplaceOrigin {
                kind,
                origin: EntryOrigin::Operator,
                entries: all,
            });
        } else {
            batch.push(filter::Change::Add {
                kind,
                entries: fresh
                    .iter()
                    .map(|e| (e.net, expiry_ns(e.expires_at, now, now_mono), e.origin))
                    .collect(),
            });
        }
        if let Err(e) = self.apply_kernel(batch) {
            self.undo(&undo);
            return Err(e);
        }
        let changed = fresh.len() + removed.len();
        let added = fresh.len() - updated;
        let summary = format!(
            "{} list: {added} added{}{}{}",
            kind.name(),
            if updated == 0 {
                String::new()
            } else {
                format!(", {updated} extended")
            },
            if removed.is_empty() {
                String::new()
            } else {
                format!(", {} removed", removed.len())
            },
            ttl_secs.map_or(String::new(), |t| format!(" (ttl {t} s)"))
        );
        let entries = entries_field(fresh.iter().map(|e| &e.net));
        tracing::info!(
            rampart_event = "list_changed",
            list = kind.name(),
            added,
            extended = updated,
            removed = removed.len(),
            entries = %entries,
            ttl_secs = ttl_secs.unwrap_or(0),
            peer_uid = peer.uid,
            peer_pid = peer.pid.unwrap_or(0),
            "list changed by the control socket: {summary}: {entries}"
        );
        self.events
            .push("list_changed", summary, list_fields(kind, peer));
        Ok(ChangeReply {
            changed,
            updated,
            unchanged,
        })
    }

    /// Puts one list change into the kernel as one atomic step.
    fn apply_kernel(&mut self, batch: Vec<filter::Change>) -> Result<(), ErrorReply> {
        let filter = self.filter_mut()?;
        filter.apply(&batch).map(|_| ()).map_err(|e| {
            error(
                ErrorKind::Kernel,
                format!(
                    "the kernel refused the change (nothing changed): {}",
                    chain(&e)
                ),
            )
        })
    }

    /// The changes that put the stored entries of `nets` back as they are now.
    fn undo_changes<'a>(
        &self,
        kind: ListKind,
        nets: impl Iterator<Item = &'a IpNet>,
    ) -> Vec<Change> {
        let mut keys = Vec::new();
        let mut previous = Vec::new();
        for net in nets {
            keys.push((kind, *net));
            if let Some(e) = self.store.state().get(kind, net) {
                previous.push(e.clone());
            }
        }
        vec![Change::Remove(keys), Change::Add(previous)]
    }

    /// Takes a change the kernel refused back out of the state.
    fn undo(&mut self, changes: &[Change]) {
        if let Err(e) = self.store.commit(changes) {
            tracing::error!(error = %chain(&e), "taking a refused change back out of the state failed; it will be retried at the next start");
        }
    }

    fn list_del(
        &mut self,
        kind: ListKind,
        entries: &[String],
        peer: Peer,
    ) -> Result<ChangeReply, ErrorReply> {
        let nets = parse_entries(entries)?;
        let lists = self.filter_ref()?.lists();
        let mut remove = Vec::new();
        let mut missing = Vec::new();
        let mut from_config = Vec::new();
        for net in nets {
            let net = net.trunc();
            let slots = lists.slots(kind, &net);
            let by_cli = slots.get(EntryOrigin::Operator).is_some()
                || slots.get(EntryOrigin::Auto).is_some()
                || self.store.state().get(kind, &net).is_some();
            if by_cli {
                remove.push(net);
            } else if slots.get(EntryOrigin::Config).is_some() {
                from_config.push(net.to_string());
            } else {
                missing.push(net.to_string());
            }
        }
        if !from_config.is_empty() {
            let mut reply = error(
                ErrorKind::InvalidInput,
                format!(
                    "{} entr{} of the {} list come{} from the configuration file: change the file and reload; nothing changed",
                    from_config.len(),
                    if from_config.len() == 1 { "y" } else { "ies" },
                    kind.name(),
                    if from_config.len() == 1 { "s" } else { "" },
                ),
            );
            reply.details = from_config;
            return Err(reply);
        }
        if remove.is_empty() {
            let mut reply = error(
                ErrorKind::NotFound,
                format!("not in the {} list; nothing changed", kind.name()),
            );
            reply.details = missing;
            return Err(reply);
        }
        let undo = self.undo_changes(kind, remove.iter());
        let keys: Vec<(ListKind, IpNet)> = remove.iter().map(|n| (kind, *n)).collect();
        self.store
            .commit(&[Change::Remove(keys)])
            .map_err(|e| storage_error(&e))?;
        let batch = [EntryOrigin::Operator, EntryOrigin::Auto]
            .into_iter()
            .map(|origin| filter::Change::RemoveOrigin {
                kind,
                origin,
                nets: remove.clone(),
            })
            .collect();
        if let Err(e) = self.apply_kernel(batch) {
            self.undo(&undo);
            return Err(e);
        }
        if kind == ListKind::Deny {
            // A ban lifted by hand: the source's failures count again from now.
            for net in &remove {
                self.bans.forget(*net);
            }
        }
        let summary = format!("{} list: {} removed", kind.name(), remove.len());
        let entries = entries_field(remove.iter());
        tracing::info!(
            rampart_event = "list_changed",
            list = kind.name(),
            removed = remove.len(),
            entries = %entries,
            peer_uid = peer.uid,
            peer_pid = peer.pid.unwrap_or(0),
            "list changed by the control socket: {summary}: {entries}"
        );
        self.events
            .push("list_changed", summary, list_fields(kind, peer));
        Ok(ChangeReply {
            changed: remove.len(),
            updated: 0,
            unchanged: missing.len(),
        })
    }

    fn list_show(&self, kind: ListKind) -> Vec<crate::control::protocol::EntryView> {
        let Some(filter) = &self.filter else {
            return Vec::new();
        };
        let now_unix = unix_now();
        let now_mono = filter::monotonic_ns();
        filter
            .list(kind)
            .into_iter()
            .map(|e: ListEntry| {
                // The state keeps one entry per network: its details belong to
                // the kernel entry of its origin only.
                let stored =
                    (self.store.state().get(kind, &e.net)).filter(|s| s.origin == e.origin);
                let expires_at = (e.expires_ns != 0).then(|| {
                    now_unix
                        + e.expires_ns
                            .saturating_sub(now_mono)
                            .div_ceil(1_000_000_000)
                });
                crate::control::protocol::EntryView {
                    list: list_name(kind),
                    entry: e.net.to_string(),
                    origin: origin_name(e.origin).to_owned(),
                    expires_at: stored.and_then(|s| s.expires_at).or(expires_at),
                    comment: stored.and_then(|s| s.comment.clone()),
                    added_by: stored.and_then(|s| s.added_by),
                    added_at: stored.map(|s| s.added_at),
                    reason: stored.and_then(|s| s.reason.clone()),
                }
            })
            .collect()
    }

    fn country_block(
        &mut self,
        codes: &[String],
        block: bool,
        peer: Peer,
    ) -> Result<Reply, ErrorReply> {
        let codes = country_codes(codes)?;
        let mut blocked = match self.store.state().countries.clone() {
            Some(CountryPolicyState::Block(set)) => set,
            Some(CountryPolicyState::AllowOnly { .. }) if block => {
                return Err(error(
                    ErrorKind::InvalidInput,
                    "an allow-only country policy is in force: `rampart country allow-only` (with no country) turns it off first",
                ));
            }
            Some(_) => BTreeSet::new(),
            None => match &self.config_countries.policy {
                CountryPolicy::Block(set) => set
                    .iter()
                    .filter_map(|i| rampart_common::country_code(*i))
                    .map(|c| String::from_utf8_lossy(&c).to_ascii_lowercase())
                    .collect(),
                _ => BTreeSet::new(),
            },
        };
        let mut changed = 0;
        for code in &codes {
            let did = if block {
                blocked.insert(code.clone())
            } else {
                blocked.remove(code)
            };
            changed += usize::from(did);
        }
        let policy = if blocked.is_empty() {
            CountryPolicyState::Off
        } else {
            CountryPolicyState::Block(blocked)
        };
        self.set_country_policy(policy, peer)?;
        Ok(Reply::Changed(ChangeReply {
            changed,
            updated: 0,
            unchanged: codes.len() - changed,
        }))
    }

    fn country_allow_only(
        &mut self,
        codes: &[String],
        allow_unknown: bool,
        peer: Peer,
    ) -> Result<Reply, ErrorReply> {
        let codes = country_codes(codes)?;
        let n = codes.len();
        let policy = if codes.is_empty() {
            CountryPolicyState::Off
        } else {
            CountryPolicyState::AllowOnly {
                countries: codes,
                allow_unknown,
            }
        };
        self.set_country_policy(policy, peer)?;
        Ok(Reply::Changed(ChangeReply {
            changed: n,
            updated: 0,
            unchanged: 0,
        }))
    }

    fn set_country_policy(
        &mut self,
        policy: CountryPolicyState,
        peer: Peer,
    ) -> Result<(), ErrorReply> {
        if self.filter.is_none() {
            return Err(error(
                ErrorKind::Unavailable,
                "the kernel filter is not configured (no [filter] section)",
            ));
        }
        if !matches!(policy, CountryPolicyState::Off) && self.countries().is_empty() {
            return Err(error(
                ErrorKind::Unavailable,
                "no country database is loaded: set [filter.geo] database or run `rampart geo load FILE` first",
            ));
        }
        let before = self.store.state().countries.clone();
        self.store
            .commit(&[Change::SetCountries(policy.clone())])
            .map_err(|e| storage_error(&e))?;
        let kernel = kernel_policy(&policy);
        let filter = self.filter_mut()?;
        if let Err(e) = filter.set_country_policy(kernel) {
            let undo = before.unwrap_or(CountryPolicyState::Off);
            let _ = self.store.commit(&[Change::SetCountries(undo)]);
            return Err(error(ErrorKind::Kernel, chain(&e)));
        }
        let (name, codes, _) = policy_view(&self.country_policy());
        self.events.push(
            "list_changed",
            format!("country policy: {name} {}", codes.join(",")),
            vec![("PEER_UID".into(), peer.uid.to_string())],
        );
        tracing::info!(
            rampart_event = "list_changed",
            country_policy = %name,
            countries = %codes.join(","),
            peer_uid = peer.uid,
            peer_pid = peer.pid.unwrap_or(0),
            "country policy changed by the control socket"
        );
        Ok(())
    }

    fn countries_view(&self) -> CountriesReply {
        let (policy, countries, allow_unknown) = policy_view(&self.country_policy());
        let table = self.countries();
        let v4 = table
            .iter()
            .filter(|(n, _)| matches!(n, IpNet::V4(_)))
            .count();
        CountriesReply {
            policy,
            countries,
            allow_unknown,
            origin: if self.store.state().countries.is_some() {
                "operator"
            } else {
                "config"
            }
            .into(),
            database: match (&self.store.state().geo, &self.loaded_countries) {
                (Some(geo), Some(_)) => Some(format!("{}, from geo load", geo.source)),
                _ => self.config_countries.database.clone(),
            },
            prefixes_v4: v4,
            prefixes_v6: table.len() - v4,
        }
    }

    fn geo_load(&mut self, path: &str, peer: Peer) -> Result<GeoReply, ErrorReply> {
        if self.filter.is_none() {
            return Err(error(
                ErrorKind::Unavailable,
                "the kernel filter is not configured (no [filter] section)",
            ));
        }
        let path = PathBuf::from(path);
        // rampartd reads the file with its own rights (root's), and an error quotes
        // the line it could not read: a control_group member could read the first
        // line of any file root can (/etc/shadow). Only root, or rampartd's own user,
        // may name a file.
        if peer.uid != 0 && peer.uid != nix::unistd::geteuid().as_raw() {
            tracing::warn!(
                peer_uid = peer.uid,
                peer_pid = peer.pid.unwrap_or(0),
                path = %path.display(),
                "country table load refused: geo load reads the file as rampartd, so only root may ask for it"
            );
            return Err(error(
                ErrorKind::PermissionDenied,
                "permission denied: geo load reads the file with rampartd's rights, so only root may ask for it (the control group may not)",
            ));
        }
        if !path.is_absolute() {
            return Err(error(
                ErrorKind::InvalidInput,
                "the database path must be absolute (rampartd reads it, from its own directory)",
            ));
        }
        let data = geo::load(&path).map_err(|e| {
            let kind = if matches!(e, geo::GeoError::Io { .. }) {
                ErrorKind::NotFound
            } else {
                ErrorKind::InvalidInput
            };
            tracing::warn!(
                peer_uid = peer.uid,
                peer_pid = peer.pid.unwrap_or(0),
                error = %chain(&e),
                "country table load failed; the current table stays"
            );
            error(
                kind,
                format!("{}; the current country table stays", chain(&e)),
            )
        })?;
        let source = source_text(&path, data.describe());
        let (v4, v6, countries) = (
            data.v4_prefixes(),
            data.v6_prefixes(),
            data.countries().len(),
        );
        let prefixes = data.into_prefixes();
        self.store
            .save_countries(&prefixes)
            .and_then(|()| {
                self.store.commit(&[Change::SetGeo(GeoState {
                    source: source.clone(),
                    loaded_at: unix_now(),
                })])
            })
            .map(|_| ())
            .map_err(|e| storage_error(&e))?;
        let filter = self.filter_mut()?;
        if let Err(e) = filter.set_countries(prefixes.clone()) {
            return Err(error(
                ErrorKind::Kernel,
                format!(
                    "the kernel refused the table: {}; the table stays on disk and is retried at the next start",
                    chain(&e)
                ),
            ));
        }
        self.loaded_countries = Some(prefixes);
        self.events.push(
            "geo_loaded",
            format!("country table loaded from {source}: {v4} IPv4 + {v6} IPv6 prefixes"),
            vec![("PEER_UID".into(), peer.uid.to_string())],
        );
        tracing::info!(
            rampart_event = "geo_loaded",
            source = %source,
            prefixes_v4 = v4,
            prefixes_v6 = v6,
            peer_uid = peer.uid,
            peer_pid = peer.pid.unwrap_or(0),
            "country table replaced"
        );
        Ok(GeoReply {
            source,
            countries,
            prefixes_v4: v4,
            prefixes_v6: v6,
        })
    }

    fn keys(&mut self, request: Request, peer: Peer) -> Result<Reply, ErrorReply> {
        let gateway = self.gateway.as_ref().ok_or_else(|| {
            error(
                ErrorKind::Unavailable,
                "the gateway is not configured (no [[listener]]): there are no subscriptions",
            )
        })?;
        let (reply, changed) = gateway.keys(request)?;
        if let Some(what) = changed {
            self.events.push(
                "keys_changed",
                what.clone(),
                vec![("PEER_UID".into(), peer.uid.to_string())],
            );
            tracing::info!(
                rampart_event = "keys_changed",
                peer_uid = peer.uid,
                peer_pid = peer.pid.unwrap_or(0),
                "{what}"
            );
        }
        Ok(reply)
    }

    /// An automatic ban from the gateway: durable, then in the kernel.
    fn ban(&mut self, ban: BanRequest) {
        if self.filter.is_none() {
            return;
        }
        // Bypass networks and trusted proxies are never counted (refresh_exempt),
        // but an IPv6 source is a prefix that may hold some. A bypass network inside
        // it still passes: the kernel judges bypass before deny. A trusted proxy is
        // not known to the kernel: the ban is narrowed to spare it.
        let Some((net, reason)) = ban.target(&self.trusted_proxies, || self.prefix_bans()) else {
            return;
        };
        let shown = net_text(&net);
        let now = unix_now();
        let ttl = ban.ttl.as_secs().max(1);
        let entry = StoredEntry {
            list: ListKind::Deny,
            net,
            origin: EntryOrigin::Auto,
            expires_at: Some(now + ttl),
            comment: None,
            added_by: None,
            added_at: now,
            reason: Some(reason.clone()),
        };
        // A ban never shortens an entry: one that lasts at least as long stays
        // (an operator's comment included), and so does an entry of the
        // configuration file (permanent); one that ends sooner gives way to the
        // ban, in the state (one entry per network) and in the kernel alike. A
        // source denied already reaches the gateway only where the filter does not
        // see it (monitor mode, another interface, local traffic).
        let old = (self.store.state().get(ListKind::Deny, &net)).filter(|e| e.is_live(now));
        let in_config = self.filter.as_ref().is_some_and(|filter| {
            (filter.lists().slots(ListKind::Deny, &net))
                .get(EntryOrigin::Config)
                .is_some()
        });
        // A wider entry (an operator's /32 around a /64 ban) that lasts at least
        // as long leaves nothing for the ban to add.
        let covering = if in_config {
            None
        } else {
            self.covering_deny(&net, entry.expires_at, now)
        };
        if in_config
            || covering.is_some()
            || old.is_some_and(|old| !outlasts(entry.expires_at, old.expires_at))
        {
            let (covered_by, origin) = match covering {
                Some((wider, origin)) => (wider, origin),
                None if in_config => (net, "config"),
                None => (net, old.map_or("-", |old| origin_name(old.origin))),
            };
            tracing::info!(
                src_ip = %ban.source,
                network = %net,
                reason = %reason,
                origin,
                covered_by = %covered_by,
                "no automatic ban: the source is denied already, for at least as long"
            );
            return;
        }
        let replaces_operator = old.is_some_and(|old| old.origin == EntryOrigin::Operator);
        // Automatic bans inside a prefix ban that end no later than it are
        // redundant: they go with the same change.
        let inner = self.inner_auto_bans(&net, entry.expires_at);
        let undo = self.undo_changes(ListKind::Deny, std::iter::once(&net).chain(&inner));
        let mut changes = Vec::new();
        if !inner.is_empty() {
            changes.push(Change::Remove(
                inner.iter().map(|n| (ListKind::Deny, *n)).collect(),
            ));
        }
        changes.push(Change::Add(vec![entry]));
        if let Err(e) = self.store.commit(&changes) {
            tracing::error!(src_ip = %ban.source, network = %net, error = %chain(&e), "automatic ban not stored; not applied");
            return;
        }
        let expires = expiry_ns(Some(now + ttl), now, filter::monotonic_ns());
        let mut batch = Vec::new();
        if !inner.is_empty() {
            batch.push(filter::Change::RemoveOrigin {
                kind: ListKind::Deny,
                origin: EntryOrigin::Auto,
                nets: inner.clone(),
            });
        }
        if replaces_operator {
            batch.push(filter::Change::RemoveOrigin {
                kind: ListKind::Deny,
                origin: EntryOrigin::Operator,
                nets: vec![net],
            });
        }
        batch.push(filter::Change::Add {
            kind: ListKind::Deny,
            entries: vec![(net, expires, EntryOrigin::Auto)],
        });
        if let Err(e) = self.apply_kernel(batch) {
            self.undo(&undo);
            tracing::error!(src_ip = %ban.source, network = %net, error = %e.message, "automatic ban refused by the kernel");
            return;
        }
        self.bans_issued += 1;
        self.events.push(
            "ban_added",
            format!("{shown} banned for {ttl} s: {reason}"),
            vec![
                ("SRC_IP".into(), ban.source.to_string()),
                ("NETWORK".into(), net.to_string()),
                ("REASON".into(), reason.clone()),
            ],
        );
        tracing::warn!(
            rampart_event = "ban_added",
            src_ip = %ban.source,
            network = %net,
            reason = %reason,
            ttl_secs = ttl,
            replaced_bans = inner.len(),
            "source banned in the kernel"
        );
    }

    /// The nearest live deny entry wider than `net` that covers it for at least
    /// as long as a ban ending at `expires_at` (unix seconds): (its network, its
    /// origin's name). At most one lookup per prefix length.
    fn covering_deny(
        &self,
        net: &IpNet,
        expires_at: Option<u64>,
        now: u64,
    ) -> Option<(IpNet, &'static str)> {
        let filter = self.filter.as_ref()?;
        (0..net.prefix_len()).rev().find_map(|len| {
            let wider = IpNet::new(net.addr(), len).ok()?.trunc();
            let in_config = (filter.lists().slots(ListKind::Deny, &wider))
                .get(EntryOrigin::Config)
                .is_some();
            if in_config {
                return Some((wider, "config"));
            }
            let e = (self.store.state().get(ListKind::Deny, &wider)).filter(|e| e.is_live(now))?;
            (!outlasts(expires_at, e.expires_at)).then(|| (wider, origin_name(e.origin)))
        })
    }

    /// Automatic deny entries strictly inside `net` that end no later than a ban
    /// of `net` ending at `expires_at`.
    fn inner_auto_bans(&self, net: &IpNet, expires_at: Option<u64>) -> Vec<IpNet> {
        if net.prefix_len() == net.max_prefix_len() {
            return Vec::new();
        }
        let Ok(last) = IpNet::new(net.broadcast(), net.max_prefix_len()) else {
            return Vec::new();
        };
        // Entries are ordered by list, then address: those inside `net` lie
        // between `net` itself and its last address.
        (self
            .store
            .state()
            .entries
            .range((ListKind::Deny, *net)..=(ListKind::Deny, last)))
        .filter(|((_, inner), e)| {
            inner != net
                && net.contains(inner)
                && e.origin == EntryOrigin::Auto
                && !outlasts(e.expires_at, expires_at)
        })
        .map(|((_, inner), _)| *inner)
        .collect()
    }

    /// Automatic bans of prefixes in force (they take room in the prefix table).
    fn prefix_bans(&self) -> usize {
        let now = filter::monotonic_ns();
        self.filter.as_ref().map_or(0, |filter| {
            (filter.lists().iter(ListKind::Deny))
                .filter(|(net, slots)| {
                    net.prefix_len() < net.max_prefix_len()
                        && slots.live(EntryOrigin::Auto, now).is_some()
                })
                .count()
        })
    }

    fn expire(&mut self) {
        let Some(filter) = self.filter.as_mut() else {
            return;
        };
        match filter.expire_entries() {
            Ok(gone) if gone.is_empty() => {}
            Ok(gone) => {
                let n = gone.len();
                let mut other = 0usize;
                for (kind, net, origin) in &gone {
                    if *kind == ListKind::Deny && *origin == EntryOrigin::Auto {
                        if net.prefix_len() == net.max_prefix_len() {
                            tracing::info!(
                                rampart_event = "ban_removed",
                                src_ip = %net.addr(),
                                network = %net,
                                "automatic ban expired"
                            );
                        } else {
                            // An IPv6 prefix: no one source address.
                            tracing::info!(
                                rampart_event = "ban_removed",
                                network = %net,
                                "automatic ban expired"
                            );
                        }
                    } else {
                        other += 1;
                    }
                }
                if other > 0 {
                    tracing::info!(
                        rampart_event = "list_changed",
                        expired = other,
                        "temporary entries expired"
                    );
                }
                self.events.push(
                    "entries_expired",
                    format!(
                        "{n} temporary entr{} expired",
                        if n == 1 { "y" } else { "ies" }
                    ),
                    Vec::new(),
                );
            }
            Err(e) => tracing::error!(error = %chain(&e), "expiring entries failed"),
        }
    }

    /// Reads the configuration again and swaps it in whole, or changes nothing.
    pub(crate) fn reload(&mut self) -> Result<String, ErrorReply> {
        let result = super::reload_all(self);
        let at = unix_now();
        self.reloads.record(result.is_ok(), at);
        match &result {
            Ok(message) if !self.not_applied.is_empty() => {
                tracing::warn!(
                    rampart_event = "config_reloaded",
                    config = %self.config_path.display(),
                    not_applied = %self.not_applied.join(", "),
                    "{message}"
                );
            }
            Ok(message) => {
                tracing::info!(rampart_event = "config_reloaded", config = %self.config_path.display(), "{message}");
            }
            Err(_) => {}
        }
        match &result {
            Ok(message) => {
                self.events
                    .push("config_reloaded", message.clone(), Vec::new());
                self.last_reload = Some(ReloadStatus {
                    at,
                    ok: true,
                    message: message.clone(),
                });
            }
            Err(e) => {
                tracing::error!(
                    rampart_event = "config_reload_failed",
                    config = %self.config_path.display(),
                    error = %e.message,
                    details = %e.details.join("; "),
                    "reload rejected; the running configuration stays"
                );
                self.events.push(
                    "reload_rejected",
                    format!("{} {}", e.message, e.details.join("; ")),
                    Vec::new(),
                );
                // The first problem, as STATUS= says it: "not reloaded" is
                // what `refused` already says.
                let message = match e.details.as_slice() {
                    [] => e.message.clone(),
                    [only] => only.clone(),
                    [first, rest @ ..] => format!(
                        "{first} (and {} more; `rampart reload` lists them)",
                        rest.len()
                    ),
                };
                self.last_reload = Some(ReloadStatus {
                    at,
                    ok: false,
                    message,
                });
            }
        }
        result
    }
}

/// Converts a service error of a reload into the reply, every problem listed.
pub(crate) fn reload_error(e: &ServiceError) -> ErrorReply {
    let mut reply = error(
        ErrorKind::Config,
        "the configuration was not reloaded; the running one stays",
    );
    match e {
        // With the OS's reason for a file that cannot be read.
        ServiceError::Config(c) => reply.details = chain(c).lines().map(str::to_owned).collect(),
        ServiceError::GatewayBuild(g) => {
            reply.details = g.problems.iter().map(|p| chain(p)).collect()
        }
        other => reply.details = vec![chain(other)],
    }
    reply
}
