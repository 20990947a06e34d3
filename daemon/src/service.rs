//! `rampartd`'s life: load and validate the configuration, put the rules in
//! the kernel, attach, serve the gateway when listeners are configured, then
//! run until SIGTERM (the gateway drains, the filter stays attached), reloading
//! the rules and certificates on SIGHUP, expiring temporary entries and
//! logging drop events.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use thiserror::Error;
use tokio::{
    io::unix::{AsyncFd, AsyncFdReadyMutGuard},
    signal::unix::{SignalKind, signal},
};
use tokio_util::sync::CancellationToken;

mod controller;
mod metrics;
mod notify;

use controller::{ConfigCountries, Controller, Message};

use crate::{
    config::{
        self, Config, ConfigError, CountryPolicy as ConfigCountryPolicy, DEFAULT_FLOOD_IPV6_PREFIX,
        FilterConfig, ProtectScope,
    },
    control::{
        protocol::{ErrorKind, ErrorReply, GatewayStatus, Reply, Request},
        server::{ControlError, ControlServer, Dispatch, EventLog, SocketSettings},
    },
    filter::{
        AttachMode, DropRecord, EntryOrigin, Filter, FilterError, ListEntry, ListKind, Lists,
        Protect, Settings,
    },
    gateway::{
        GatewayError,
        running::{GatewayConfigError, RunningGateway, StoredSubscriptions},
    },
    geo::{self, GeoError},
    pipeline::PipelineError,
    policy::ban::BanTracker,
    rules::CountryPolicy,
    state::{State, StateError, StateStore},
};

/// Events `rampart events` can show.
const EVENT_LOG_CAPACITY: usize = 1000;
/// How often drop events are summarised into the log.
const EVENT_INTERVAL: Duration = Duration::from_secs(10);
/// Sources named per summary; the rest are counted.
const EVENT_SOURCES_PER_SUMMARY: usize = 20;

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("country database")]
    Geo(#[from] GeoError),
    #[error("kernel filter")]
    Filter(#[from] FilterError),
    #[error("adding or removing [filter] needs a restart")]
    FilterAddedOrRemoved,
    #[error("gateway")]
    Gateway(#[from] GatewayError),
    #[error("gateway policies")]
    Pipeline(#[from] PipelineError),
    /// What the file's gateway makes cannot be built (two APIs with one route, a
    /// certificate that does not load...): every problem, found before anything
    /// is bound or changed.
    #[error("{0}")]
    GatewayBuild(GatewayConfigError),
    #[error("state directory")]
    State(#[from] StateError),
    #[error("control socket")]
    Control(#[from] ControlError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen for signals")]
    Signals(#[source] std::io::Error),
    #[error("admin listener")]
    Admin(#[from] crate::admin::AdminError),
    /// The control thread or the control socket ended while the daemon ran (a
    /// panic, logged before): the daemon stops rather than run half alive.
    #[error("the control thread ended unexpectedly")]
    ControlEnded,
    /// Another rampartd holds the filter's pins (`pin_root`): this one would
    /// replace its program and maps with its own rules.
    #[error(
        "another rampartd is running on the filter pinned at {}: stop it first, or give this one another [daemon] pin_root",
        path.display()
    )]
    PinsInUse { path: PathBuf },
    /// `rampartd --detach` while a rampartd runs on the same pins or state
    /// directory: detaching would leave it reporting (and writing) rules the
    /// kernel no longer enforces.
    #[error(
        "{} is running on the filter pinned at {}: stop it first (systemctl stop rampartd); nothing was detached",
        pid.map_or_else(|| "a rampartd".to_string(), |pid| format!("rampartd (pid {pid})")),
        pins.display()
    )]
    Running { pid: Option<u32>, pins: PathBuf },
    #[error("cannot lock {}", path.display())]
    DetachLock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock the filter pins at {}", path.display())]
    PinLock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ServiceError {
    /// sysexits.h: 64 bad configuration, 65 bad data, 66 unreadable input,
    /// 69 unavailable (kernel refused), 71 OS error, 74 I/O error (state
    /// directory), 75 temporary failure (another rampartd holds the state).
    pub fn exit_code(&self) -> u8 {
        match self {
            ServiceError::Config(e) => e.exit_code(),
            ServiceError::Geo(GeoError::Io { .. }) => 66,
            ServiceError::Geo(_) => 65,
            ServiceError::Filter(FilterError::UnknownInterface { .. }) => 64,
            ServiceError::Filter(FilterError::PinnedCapacity { .. }) => 64,
            ServiceError::Filter(FilterError::Table { .. }) => 65,
            ServiceError::Filter(_) => 69,
            ServiceError::FilterAddedOrRemoved => 64,
            ServiceError::Gateway(GatewayError::Bind { .. }) => 71,
            // Certificates, keys and backend URLs named by the configuration.
            ServiceError::Gateway(_) => 64,
            // Quota counters a newer rampartd wrote, or damaged ones: bad data, as
            // a newer state.json and a corrupt subscription store are.
            ServiceError::Pipeline(
                PipelineError::KeyStore(_)
                | PipelineError::Quota(
                    crate::policy::quota::QuotaError::NewerFormat { .. }
                    | crate::policy::quota::QuotaError::Corrupt { .. },
                ),
            ) => 65,
            ServiceError::Pipeline(_) => 64,
            ServiceError::GatewayBuild(e) => e.exit_code(),
            ServiceError::State(StateError::Locked { .. }) => 75,
            // Written by a newer rampartd: bad data for this one, as a newer
            // subscription store is (65, through the key store).
            ServiceError::State(
                StateError::NewerFormat { .. } | StateError::NewerJournal { .. },
            ) => 65,
            ServiceError::PinsInUse { .. } => 75,
            ServiceError::Running { .. } => 75,
            ServiceError::DetachLock { .. } => 71,
            ServiceError::PinLock { .. } => 71,
            ServiceError::State(_) => 74,
            ServiceError::Control(ControlError::UnknownGroup { .. }) => 64,
            ServiceError::Control(_) => 71,
            ServiceError::Runtime(_) | ServiceError::Signals(_) => 71,
            ServiceError::Admin(_) => 71,
            ServiceError::ControlEnded => crate::lifecycle::EXIT_INTERNAL,
        }
    }
}

/// A configuration, loaded and validated with everything it names (country
/// database included) before anything is applied.
pub struct Desired {
    pub config: Config,
    /// What the kernel filter is asked to do; `None` without `[filter]`.
    pub filter: Option<FilterPlan>,
    /// What [`check`] could not look at (`--check-config` says it beside "ok").
    pub unchecked: Vec<String>,
    /// Files holding secrets that others can read or change
    /// ([`config::permissions`]): warned about, not refused.
    pub exposed: Vec<String>,
}

/// Everything `[filter]` asks of the kernel filter.
pub struct FilterPlan {
    pub config: FilterConfig,
    pub settings: Settings,
    pub lists: Lists,
    pub countries: Vec<(ipnet::IpNet, u16)>,
    pub policy: CountryPolicy,
    /// Why `[filter.geo] database` could not be loaded (`countries` is then
    /// empty): fatal unless a table from `rampart geo load` is in force, which
    /// replaces the file's ([`FilterPlan::geo_unused`]).
    pub geo_error: Option<GeoError>,
}

impl FilterPlan {
    /// A database that could not be loaded is not needed while a table from
    /// `rampart geo load` (`loaded`) is in force: the warning to give; without
    /// one, the error (start exits 66 or 65, a reload is rejected).
    fn geo_unused(&mut self, loaded: bool) -> Result<Option<String>, ServiceError> {
        match self.geo_error.take() {
            None => Ok(None),
            Some(e) if loaded => Ok(Some(format!(
                "[filter.geo] database is not used while the table from `rampart geo load` is in force, and it cannot be loaded ({})",
                chain(&e)
            ))),
            Some(e) => Err(e.into()),
        }
    }
}

/// Reads, validates and resolves a configuration file (with its country
/// database), and builds the gateway it describes without binding anything
/// ([`crate::gateway::running::check`]: routes, policies, certificates). Used by
/// start-up and reload (and by [`check`]), so that the check refuses what start
/// and reload refuse, and a bad file is refused before anything reaches the
/// kernel or a reload changes anything.
pub fn prepare(path: &Path) -> Result<Desired, ServiceError> {
    prepare_with(path, StoredSubscriptions::Unread, plan_filter)
}

/// [`prepare`] for start and reload: a country database that cannot be loaded
/// is left in [`FilterPlan::geo_error`], since a table from `rampart geo
/// load` makes it unneeded.
fn prepare_running(path: &Path) -> Result<Desired, ServiceError> {
    prepare_with(path, StoredSubscriptions::Unread, plan_filter_lenient)
}

/// `rampartd --check-config`: [`prepare`], and the file's subscriptions checked
/// against those stored in its state directory, read without creating or
/// locking anything, since start refuses a name or key hash the store has
/// already (start and reload check against the store they open).
pub fn check(path: &Path) -> Result<Desired, ServiceError> {
    prepare_with(path, StoredSubscriptions::ReadOnly, plan_filter)
}

fn prepare_with(
    path: &Path,
    stored: StoredSubscriptions,
    plan: fn(FilterConfig) -> Result<FilterPlan, ServiceError>,
) -> Result<Desired, ServiceError> {
    let config = config::load(path)?;
    let filter = config.filter.clone().map(plan).transpose()?;
    let unchecked =
        crate::gateway::running::check(&config, stored).map_err(ServiceError::GatewayBuild)?;
    let exposed = config::permissions::exposed_secrets(path, &config);
    Ok(Desired {
        config,
        filter,
        unchecked,
        exposed,
    })
}

/// What rampartd reads only at start: `[daemon]` (paths, control socket and
/// group, admin listener, logging) and `[gateway] worker_threads`. A reload
/// that changes one applies the rest of the file, keeps the running value, and
/// says which keys were not applied (log, `rampart reload`, STATUS=).
pub(crate) struct StartOnly {
    daemon: config::DaemonConfig,
    worker_threads: u32,
}

impl StartOnly {
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            daemon: config.daemon.clone(),
            worker_threads: config.gateway.worker_threads,
        }
    }

    /// The keys whose value in `new` is not the one the daemon started with
    /// (and still runs with), in the order of the reference.
    pub(crate) fn not_applied(&self, new: &Config) -> Vec<&'static str> {
        let (old, d) = (&self.daemon, &new.daemon);
        [
            (old.state_dir != d.state_dir, "[daemon] state_dir"),
            (old.runtime_dir != d.runtime_dir, "[daemon] runtime_dir"),
            (old.pin_root != d.pin_root, "[daemon] pin_root"),
            (old.log_level != d.log_level, "[daemon] log_level"),
            (old.log_target != d.log_target, "[daemon] log_target"),
            (
                old.control_socket() != d.control_socket(),
                "[daemon] control_socket",
            ),
            (
                old.control_group != d.control_group,
                "[daemon] control_group",
            ),
            (old.admin_listen != d.admin_listen, "[daemon] admin_listen"),
            (
                self.worker_threads != new.gateway.worker_threads,
                "[gateway] worker_threads",
            ),
        ]
        .into_iter()
        .filter_map(|(changed, key)| changed.then_some(key))
        .collect()
    }
}

fn plan_filter(f: FilterConfig) -> Result<FilterPlan, ServiceError> {
    let mut plan = plan_filter_lenient(f)?;
    match plan.geo_error.take() {
        Some(e) => Err(e.into()),
        None => Ok(plan),
    }
}

fn plan_filter_lenient(f: FilterConfig) -> Result<FilterPlan, ServiceError> {
    let settings = Settings {
        protect: match &f.protect {
            ProtectScope::All => Protect::All,
            ProtectScope::Ports { tcp, udp } => Protect::Ports {
                tcp: tcp.clone(),
                udp: udp.clone(),
            },
        },
        drop_malformed: f.drop_malformed,
        monitor: f.monitor,
        flood: f
            .flood
            .map(|fl| (u64::from(fl.packets_per_second), u64::from(fl.burst))),
        flood_ipv6_prefix: f
            .flood
            .map_or(DEFAULT_FLOOD_IPV6_PREFIX, |fl| fl.ipv6_prefix),
        events: (f.events_per_second > 0)
            .then(|| (u64::from(f.events_per_second), u64::from(f.events_burst))),
    };
    let mut lists = Lists::default();
    for (kind, nets) in [
        (ListKind::Bypass, &f.bypass),
        (ListKind::Deny, &f.deny),
        (ListKind::Allow, &f.allow),
    ] {
        for net in nets {
            lists.insert(
                kind,
                ListEntry {
                    net: *net,
                    expires_ns: 0,
                    origin: EntryOrigin::Config,
                },
            );
        }
    }
    let (countries, policy, geo_error) = match &f.geo {
        None => (Vec::new(), CountryPolicy::Off, None),
        Some(g) => {
            let (countries, geo_error) = match geo::load(&g.database) {
                Ok(data) => (data.into_prefixes(), None),
                Err(e) => (Vec::new(), Some(e)),
            };
            let policy = match &g.policy {
                ConfigCountryPolicy::LabelOnly => CountryPolicy::Off,
                ConfigCountryPolicy::Block(cs) => {
                    CountryPolicy::Block(cs.iter().map(|c| c.index()).collect::<BTreeSet<_>>())
                }
                ConfigCountryPolicy::AllowOnly {
                    countries,
                    allow_unknown,
                } => CountryPolicy::AllowOnly {
                    allowed: countries.iter().map(|c| c.index()).collect(),
                    allow_unknown: *allow_unknown,
                },
            };
            (countries, policy, geo_error)
        }
    };
    Ok(FilterPlan {
        config: f,
        settings,
        lists,
        countries,
        policy,
        geo_error,
    })
}

fn attach_mode(m: config::AttachMode) -> AttachMode {
    match m {
        config::AttachMode::Native => AttachMode::Native,
        config::AttachMode::Skb => AttachMode::Skb,
    }
}

/// `rampartd --detach`: removes the filter (links and pinned maps), those
/// of older map layouts (a daemon upgraded but not started since) included,
/// then the pin root when that leaves it empty. Refused while a rampartd
/// runs on the same pins or state directory (the locks start takes,
/// [`lock_pins`] and the journal's): it would go on reporting rules the
/// kernel no longer enforces. The locks are held until the pins are gone,
/// so that no start slips in between.
pub fn detach(config_path: &Path) -> Result<Vec<String>, ServiceError> {
    let config = config::load(config_path)?;
    let paths = config.daemon.paths();
    let pin_dir = paths.pin_dir();
    let _pins = lock_for_detach(&pin_dir, &pin_dir)?;
    let _state = lock_for_detach(
        &config.daemon.state_dir.join(crate::state::JOURNAL_FILE),
        &pin_dir,
    )?;
    let mut detached = crate::filter::detach(&pin_dir)?;
    detached.extend(crate::filter::detach_old_layouts(&pin_dir)?);
    remove_empty_pin_root(paths.pin_root());
    Ok(detached)
}

/// The pin root, once `--detach` has removed every pin under it, if it is an
/// empty directory: never one that still holds anything (another tool's pins),
/// nor a mount point (a `pin_root` of `/sys/fs/bpf` is bpffs itself). Not
/// removing it is only logged: the filter is gone either way.
fn remove_empty_pin_root(pin_root: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let Some(parent) = pin_root.parent() else {
        return;
    };
    let (Ok(root), Ok(above)) = (
        std::fs::symlink_metadata(pin_root),
        std::fs::metadata(parent),
    ) else {
        return;
    };
    if !root.is_dir() || root.dev() != above.dev() {
        return;
    }
    match std::fs::remove_dir(pin_root) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
            ) => {}
        Err(e) => tracing::warn!(
            pins = %pin_root.display(),
            error = %e,
            "the pin root is empty but could not be removed"
        ),
    }
}

/// Takes the lock a running rampartd holds on `path` (its pin directory or
/// its journal), if `path` exists; refuses, naming that rampartd, when it is
/// held.
fn lock_for_detach(path: &Path, pins: &Path) -> Result<Option<std::fs::File>, ServiceError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ServiceError::DetachLock {
                path: path.to_owned(),
                source,
            });
        }
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServiceError::Running {
            pid: lock_holder(&file),
            pins: pins.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(ServiceError::DetachLock {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The process holding a `flock` on `file`, from /proc/locks (lines such as
/// `1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF`: pid, then device
/// major:minor in hex and inode); `None` when it cannot be told.
fn lock_holder(file: &std::fs::File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = file.metadata().ok()?;
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| *f == id)?;
        (fields.get(1) == Some(&"FLOCK"))
            .then(|| fields.get(at.checked_sub(1)?)?.parse().ok())
            .flatten()
    })
}

/// Checked before anything reaches the kernel: a missing interface changes
/// nothing.
fn interfaces_exist(plan: &FilterPlan) -> Result<(), ServiceError> {
    match plan
        .config
        .interfaces
        .iter()
        .find(|i| !crate::filter::interface_exists(i))
    {
        Some(name) => Err(FilterError::UnknownInterface { name: name.clone() }.into()),
        None => Ok(()),
    }
}

/// The lists the kernel gets: the configuration's plus the stored operator and
/// automatic entries still in force.
fn merged_lists(plan: &FilterPlan, state: &State) -> Lists {
    let mut lists = plan.lists.clone();
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let now_mono = crate::filter::monotonic_ns();
    let from_config: std::collections::HashSet<(ListKind, ipnet::IpNet)> =
        [ListKind::Bypass, ListKind::Deny, ListKind::Allow]
            .into_iter()
            .flat_map(|kind| lists.live(kind, 0).into_iter().map(move |e| (kind, e.net)))
            .collect();
    for e in state.live(now_unix) {
        // A configuration entry of the same network stays the file's.
        if from_config.contains(&(e.list, e.net)) {
            continue;
        }
        lists.insert(
            e.list,
            ListEntry {
                net: e.net,
                expires_ns: controller::expiry_ns(e.expires_at, now_unix, now_mono),
                origin: e.origin,
            },
        );
    }
    lists
}

/// The country table and policy in force: a table from `rampart geo load` wins
/// over the configuration's database, a policy set with `rampart country` over
/// the configuration's.
fn effective_countries(
    plan: &FilterPlan,
    store: &StateStore,
    loaded: Option<&Vec<(ipnet::IpNet, u16)>>,
) -> (Vec<(ipnet::IpNet, u16)>, CountryPolicy) {
    let countries = loaded.cloned().unwrap_or_else(|| plan.countries.clone());
    let policy = match &store.state().countries {
        Some(p) => controller::kernel_policy(p),
        None => plan.policy.clone(),
    };
    (countries, policy)
}

/// Starts the filter: everything is validated first; a bad file, database or
/// interface changes nothing in the kernel. Without `[filter]`, nothing is
/// attached and the filter is `None`.
/// Locks the filter's pin directory (`flock` on the directory, which bpffs keeps
/// like any other) for the life of this process, before anything is loaded or
/// pinned. A second rampartd on the same `pin_root` (another state directory, a
/// test run, a unit started twice by hand) would otherwise replace the running
/// one's program and maps with its own rules, and only then fail on the control
/// socket: the running daemon would go on reporting rules the kernel no longer
/// held. The lock goes with the process; the pins stay (restarts keep no gap).
fn lock_pins(pin_dir: &Path) -> Result<(), ServiceError> {
    static PINS: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if PINS.get().is_some() {
        return Ok(());
    }
    crate::filter::ensure_bpffs(pin_dir)?;
    // A directory that cannot be made or opened is left to the filter's own
    // opening, which says what is wrong with it.
    let Ok(dir) = std::fs::create_dir_all(pin_dir).and_then(|()| std::fs::File::open(pin_dir))
    else {
        return Ok(());
    };
    match dir.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(ServiceError::PinsInUse {
                path: pin_dir.to_owned(),
            });
        }
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(ServiceError::PinLock {
                path: pin_dir.to_owned(),
                source,
            });
        }
    }
    let _ = PINS.set(dir);
    Ok(())
}

fn start_filter(
    desired: &Desired,
    store: &StateStore,
    loaded: Option<&Vec<(ipnet::IpNet, u16)>>,
) -> Result<Option<Filter>, ServiceError> {
    let Some(plan) = &desired.filter else {
        tracing::info!("no [filter] configured: the kernel filter is not attached");
        return Ok(None);
    };
    interfaces_exist(plan)?;
    let paths = desired.config.daemon.paths();
    let pin_dir = paths.pin_dir();
    let root_existed = paths.pin_root().exists();
    // No pins yet: a start that fails removes those it made (maps hold
    // kernel memory until removed).
    let fresh = std::fs::read_dir(&pin_dir).map_or(true, |mut d| d.next().is_none());
    lock_pins(&pin_dir)?;
    let opened = Filter::open_sized(&pin_dir, plan.config.max_deny_entries)
        .map_err(ServiceError::from)
        .and_then(|filter| load_and_attach(filter, plan, store, loaded));
    let (filter, lists, countries) = match opened {
        Ok(done) => done,
        Err(e) => {
            if fresh {
                remove_fresh_pins(&pin_dir, paths.pin_root(), root_existed);
            }
            return Err(e);
        }
    };
    let (retired, kept) = filter.retire_old_layouts();
    for dir in retired {
        tracing::info!(pins = %dir.display(), "pins of an older map layout removed");
    }
    for dir in kept {
        tracing::warn!(
            pins = %dir.display(),
            "pins of an older map layout still hold links to interfaces not configured here; `rampartd --detach` removes them"
        );
    }
    let (bypass, deny, allow) = (
        lists.live(ListKind::Bypass, 0).len(),
        lists.live(ListKind::Deny, 0).len(),
        lists.live(ListKind::Allow, 0).len(),
    );
    tracing::info!(
        pins = %pin_dir.display(),
        countries = countries.len(),
        bypass,
        deny,
        allow,
        "rules applied: {deny} deny, {allow} allow and {bypass} bypass entries, {} country prefixes",
        countries.len()
    );
    Ok(Some(filter))
}

/// What attaching did to the interfaces, undone when a later step of the
/// reload fails.
#[derive(Default)]
struct Attachments {
    /// Interfaces attached afresh (no link was pinned for them).
    fresh: Vec<String>,
    /// Interfaces re-attached in another mode, with the mode they had.
    remoded: Vec<(String, AttachMode)>,
}

impl Attachments {
    fn undo(self, filter: &mut Filter) {
        for iface in &self.fresh {
            match filter.detach_interface(iface) {
                Ok(_) => tracing::info!(interface = %iface, "filter detached again from {iface}"),
                Err(e) => {
                    tracing::error!(interface = %iface, error = %chain(&e), "detaching the filter from {iface} again failed")
                }
            }
        }
        for (iface, mode) in &self.remoded {
            reattach_in(filter, iface, *mode);
        }
    }
}

/// Puts `iface` back in `mode` after a change of mode was undone.
fn reattach_in(filter: &mut Filter, iface: &str, mode: AttachMode) {
    let back = filter
        .detach_interface(iface)
        .and_then(|_| filter.attach(iface, mode));
    match back {
        Ok(_) => {
            tracing::info!(interface = %iface, %mode, "filter attached to {iface} in {mode} mode again")
        }
        Err(e) => tracing::error!(
            interface = %iface,
            %mode,
            error = %chain(&e),
            "attaching the filter to {iface} in {mode} mode again failed: {iface} is not filtered"
        ),
    }
}

/// Attaches the filter to `interfaces` in `mode` (a pinned link is reused,
/// its program replaced in place). `running`: the interfaces a reload finds
/// attached, left as they are. On an error, what this call attached is
/// detached again.
fn attach_interfaces(
    filter: &mut Filter,
    interfaces: &[String],
    mode: AttachMode,
    running: &[String],
) -> Result<Attachments, FilterError> {
    let mut done = Attachments::default();
    for iface in interfaces {
        let before = filter.kernel().attached_mode(iface);
        if running.contains(iface) && before == Some(mode) {
            continue;
        }
        // A change of attach_mode: the kernel has no atomic swap between modes
        // (one XDP program per interface), so the link is replaced, leaving the
        // interface unfiltered for the moment in between.
        if let Some(old) = before.filter(|m| *m != mode) {
            tracing::warn!(
                interface = %iface,
                from = %old,
                to = %mode,
                "attach_mode changed: re-attaching {iface} in {mode} mode (was {old}); it is not filtered for a moment"
            );
            let swapped = filter
                .detach_interface(iface)
                .and_then(|_| filter.attach(iface, mode));
            if let Err(e) = swapped {
                reattach_in(filter, iface, old);
                done.undo(filter);
                return Err(e);
            }
            tracing::info!(interface = %iface, %mode, "filter attached to {iface} in {mode} mode");
            done.remoded.push((iface.clone(), old));
            continue;
        }
        let info = match filter.attach(iface, mode) {
            Ok(info) => info,
            Err(e) => {
                done.undo(filter);
                return Err(e);
            }
        };
        tracing::info!(
            interface = %info.interface,
            mode = %info.mode,
            reused = info.reused,
            "{}",
            if info.reused {
                "filter attached: pinned link reused, program replaced in place (no gap)"
            } else {
                "filter attached"
            }
        );
        if !info.reused {
            done.fresh.push(iface.clone());
        }
    }
    Ok(done)
}

/// Detaches the filter from the interfaces of `attached` that `configured`
/// does not name (removed from `[filter] interfaces` since they were
/// attached), logging each: an interface taken out of the file is not
/// filtered any more.
fn detach_unconfigured(filter: &mut Filter, configured: &[String], mut attached: Vec<String>) {
    attached.sort();
    attached.dedup();
    for iface in attached.iter().filter(|i| !configured.contains(i)) {
        match filter.detach_interface(iface) {
            Ok(true) => tracing::info!(
                interface = %iface,
                "filter detached from {iface}: it is not in [filter] interfaces"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(
                interface = %iface,
                error = %chain(&e),
                "detaching the filter from {iface}, which is not in [filter] interfaces, failed"
            ),
        }
    }
}

type Started = (Filter, Lists, Vec<(ipnet::IpNet, u16)>);

/// Start: the rules into the kernel, then the interfaces attached (and those
/// no longer configured detached).
fn load_and_attach(
    mut filter: Filter,
    plan: &FilterPlan,
    store: &StateStore,
    loaded: Option<&Vec<(ipnet::IpNet, u16)>>,
) -> Result<Started, ServiceError> {
    let lists = merged_lists(plan, store.state());
    let (countries, policy) = effective_countries(plan, store, loaded);
    filter.replace_all(
        plan.settings.clone(),
        lists.clone(),
        countries.clone(),
        policy,
    )?;
    let mode = attach_mode(plan.config.attach_mode);
    attach_interfaces(&mut filter, &plan.config.interfaces, mode, &[])?;
    let pinned = filter.kernel().attached_interfaces();
    detach_unconfigured(&mut filter, &plan.config.interfaces, pinned);
    Ok((filter, lists, countries))
}

/// After a failed start that found no pins: removes the pins it made (and
/// the pin root, when it made that too).
fn remove_fresh_pins(pin_dir: &Path, pin_root: &Path, root_existed: bool) {
    match crate::filter::detach(pin_dir) {
        Ok(_) => tracing::info!(pins = %pin_dir.display(), "the pins this start made are removed"),
        Err(e) => tracing::warn!(
            pins = %pin_dir.display(),
            error = %chain(&e),
            "removing the pins this start made failed; `rampartd --detach` removes them"
        ),
    }
    if !root_existed {
        let _ = std::fs::remove_dir(pin_root);
    }
}

/// One warning per file holding a secret that others can read or change.
fn warn_exposed(desired: &Desired) {
    for warning in &desired.exposed {
        tracing::warn!("{warning}");
    }
}

/// Runs the daemon until SIGTERM or SIGINT. The filter stays attached.
pub fn run(config_path: PathBuf) -> Result<(), ServiceError> {
    let open_files = raise_open_file_limit();
    let mut desired = prepare_running(&config_path)?;
    warn_exposed(&desired);
    let store = StateStore::open(&desired.config.daemon.state_dir)?;
    let loaded_countries = match store.state().geo {
        Some(_) => store.load_countries()?,
        None => None,
    };
    if let Some(plan) = desired.filter.as_mut()
        && let Some(warning) = plan.geo_unused(loaded_countries.is_some())?
    {
        tracing::warn!("{warning}");
    }
    let mut filter = start_filter(&desired, &store, loaded_countries.as_ref())?;
    let events = filter.as_mut().map(Filter::take_events).transpose()?;
    let workers = match desired.config.gateway.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n as usize,
    };
    // One worker: a current-thread runtime, without the multi-threaded scheduler's
    // cross-thread wake-ups (measured faster by `cargo xtask bench gateway`).
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let rt = builder
        .thread_name("rampartd")
        .enable_all()
        .build()
        .map_err(ServiceError::Runtime)?;
    let handle = rt.handle().clone();
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate()).map_err(ServiceError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(ServiceError::Signals)?;
        let mut hup = signal(SignalKind::hangup()).map_err(ServiceError::Signals)?;
        // SAFETY: the AsyncFd owns `events`, so the ring's fd stays open for
        // as long as it is registered.
        let mut ring = events
            .map(|events| {
                unsafe { AsyncFd::register(events) }.map_err(|e| ServiceError::Signals(e.into()))
            })
            .transpose()?;
        let mut summary = tokio::time::interval(EVENT_INTERVAL);
        let mut upkeep = tokio::time::interval(Duration::from_secs(1));
        let monitor = Arc::new(std::sync::atomic::AtomicBool::new(
            desired
                .filter
                .as_ref()
                .is_some_and(|plan| plan.settings.monitor),
        ));
        let mut drops = DropSummary {
            monitor: Arc::clone(&monitor),
            ..DropSummary::default()
        };
        let event_log = EventLog::new(EVENT_LOG_CAPACITY);
        let shutdown = CancellationToken::new();
        let (inbox, messages) = std::sync::mpsc::channel::<Message>();
        let gateway = start_gateway(&desired.config, shutdown.clone(), open_files).await?;
        let admin = metrics::start_admin(&desired.config, gateway.as_ref(), &inbox).await?;
        crate::lifecycle::sockets::close_unclaimed();
        let config_countries = desired
            .filter
            .as_ref()
            .map(ConfigCountries::of)
            .unwrap_or_default();
        let bans = Arc::new(BanTracker::new(
            desired
                .filter
                .as_ref()
                .map(|plan| plan.config.autoban)
                .unwrap_or_default(),
        ));
        if let (Some(gateway), Some(_)) = (&gateway, &desired.filter) {
            let bans = Arc::clone(&bans);
            let inbox = std::sync::Mutex::new(inbox.clone());
            // The banning request's response waits until the ban is in the kernel,
            // so that the client's next connection already meets it.
            let sink = move |peer: IpAddr, reason: &'static str| {
                let ban = bans.record(peer, reason, std::time::Instant::now())?;
                let (done, applied) = tokio::sync::oneshot::channel();
                let inbox = inbox.lock().ok()?;
                inbox.send(Message::Ban(ban, done)).ok()?;
                Some(applied)
            };
            gateway.set_rejection_sink(Some(Arc::new(sink)));
        }
        let notifier = Arc::new(notify::Notifier::from_env(
            &desired.config.daemon.control_socket(),
        ));
        let controller = Controller {
            config_path: config_path.clone(),
            interfaces: desired
                .filter
                .as_ref()
                .map(|plan| plan.config.interfaces.clone())
                .unwrap_or_default(),
            pins: desired
                .config
                .daemon
                .paths()
                .pin_dir()
                .display()
                .to_string(),
            filter,
            store,
            events: Arc::clone(&event_log),
            started: std::time::Instant::now(),
            config_countries,
            loaded_countries,
            last_reload: None,
            start_only: StartOnly::of(&desired.config),
            not_applied: Vec::new(),
            bans_issued: 0,
            reloads: crate::admin::ReloadCounts::started(controller::unix_now()),
            gateway: gateway
                .as_ref()
                .map(|g| GatewayControl::new(g, handle.clone(), &desired.config)),
            bans,
            trusted_proxies: desired.config.gateway.trusted_proxies.clone(),
            notify: Arc::clone(&notifier),
            monitor,
        };
        controller.refresh_exempt();
        let ready_summary = controller.summary();
        // Cancelled when the control thread or the control socket's task ends,
        // even by a panic: before shutdown, the daemon then stops (exit 70).
        let control_ended = CancellationToken::new();
        let ended = control_ended.clone().drop_guard();
        let control_thread = std::thread::Builder::new()
            .name("rampart-control".into())
            .spawn(move || {
                let _ended = ended;
                #[cfg(debug_assertions)]
                crate::lifecycle::panics::inject_control_fault();
                controller.run(messages);
            })
            .map_err(ServiceError::Runtime)?;
        let dispatch: Dispatch = {
            let inbox = std::sync::Mutex::new(inbox.clone());
            Arc::new(move |command| {
                inbox
                    .lock()
                    .is_ok_and(|tx| tx.send(Message::Control(command)).is_ok())
            })
        };
        let socket = SocketSettings {
            path: desired.config.daemon.control_socket(),
            group: desired.config.daemon.control_group.clone(),
        };
        let server = ControlServer::bind(&socket, dispatch, Arc::clone(&event_log)).await?;
        tracing::info!(socket = %server.path().display(), "control socket ready");
        let control_serving = {
            let ended = control_ended.clone().drop_guard();
            let serving = server.serve(shutdown.clone());
            tokio::spawn(async move {
                let _ended = ended;
                serving.await;
            })
        };
        // Filter attached, listeners bound, control socket listening.
        notifier.ready(&ready_summary.to_string());
        let mut watchdog = notifier.watchdog_timer();
        tracing::info!(config = %config_path.display(), "rampartd running");
        let mut outcome = Ok(());
        loop {
            tokio::select! {
                () = control_ended.cancelled() => {
                    tracing::error!("the control thread ended unexpectedly; rampartd stops (exit 70) to be restarted");
                    outcome = Err(ServiceError::ControlEnded);
                    break;
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let _ = inbox.send(Message::Reload);
                }
                _ = summary.tick() => drops.flush(&event_log),
                () = notify::Notifier::watchdog_tick(&mut watchdog) => notifier.watchdog_ping(),
                _ = upkeep.tick(), if gateway.is_some() => {
                    if let Some(gateway) = &gateway {
                        // Off the request threads: writing the counters syncs a file.
                        let gateway = Arc::clone(gateway);
                        tokio::task::spawn_blocking(move || gateway.maintain());
                    }
                }
                guard = readable(ring.as_mut()) => {
                    if let Ok(mut g) = guard {
                        for e in g.get_inner_mut().drain() {
                            drops.add(DropRecord::from(&e));
                        }
                        g.clear_ready();
                    }
                }
            }
        }
        notifier.stopping();
        if let Some(admin) = &admin {
            admin.set_draining();
        }
        drops.flush(&event_log);
        // Before the cancel: the gateway drains from there on, and says
        // "gateway stopped" once every listener has drained.
        if gateway.is_some() {
            tracing::info!("gateway draining");
        }
        shutdown.cancel();
        let _ = inbox.send(Message::Stop);
        let _ = control_serving.await;
        // The control thread finishes the change it is making, if any.
        let _ = tokio::task::spawn_blocking(move || control_thread.join()).await;
        if let Some(gateway) = gateway
            && let Err(e) = gateway.drained().await
        {
            tracing::error!(error = %chain(&e), "writing the quota counters failed");
        }
        tracing::info!(
            "rampartd stopping; the filter stays attached (rampartd --detach removes it)"
        );
        outcome
    })
}

/// Starts the gateway when the configuration has listeners; it serves on this
/// runtime until `shutdown` is cancelled. Every problem is logged; the first
/// one is the error (and chooses the exit code).
/// Raises the soft open-file limit to the hard one (gateway::descriptors); the
/// limit in force, if it could be read.
fn raise_open_file_limit() -> Option<u64> {
    match crate::gateway::descriptors::raise_open_file_limit() {
        Ok(limit) => {
            if limit.now != limit.was {
                tracing::info!(
                    was = limit.was,
                    now = limit.now,
                    "open-file limit raised to the hard limit"
                );
            }
            Some(limit.now)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit");
            None
        }
    }
}

async fn start_gateway(
    config: &Config,
    shutdown: CancellationToken,
    open_files: Option<u64>,
) -> Result<Option<Arc<RunningGateway>>, ServiceError> {
    if !config.listeners.is_empty()
        && let Some(limit) = open_files
    {
        crate::gateway::descriptors::check(
            config.gateway.max_connections,
            config.gateway.max_backend_requests,
            limit,
        );
    }
    match crate::gateway::running::start(config, shutdown).await {
        Ok(gateway) => Ok(gateway.map(Arc::new)),
        Err(e) => {
            for problem in e.problems.iter().skip(1) {
                tracing::error!(error = %chain(problem), "gateway configuration problem");
            }
            Err(e.into())
        }
    }
}

/// The drop event ring when it becomes readable; never without a filter.
async fn readable<T: std::os::fd::AsRawFd>(
    ring: Option<&mut AsyncFd<T>>,
) -> std::io::Result<AsyncFdReadyMutGuard<'_, T>> {
    match ring {
        Some(ring) => ring.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// SIGHUP or `rampart reload`, on the control thread: the new file is read and
/// validated whole (with its country database and certificates), then the
/// gateway and the filter take it; the operator's and automatic entries and
/// the CLI's country settings stay.
fn reload_all(c: &mut Controller) -> Result<String, ErrorReply> {
    let mut desired = prepare_running(&c.config_path).map_err(|e| controller::reload_error(&e))?;
    let geo_unused = match desired.filter.as_mut() {
        Some(plan) => plan
            .geo_unused(c.loaded_countries.is_some())
            .map_err(|e| controller::reload_error(&e))?,
        None => None,
    };
    warn_exposed(&desired);
    match (&c.filter, &desired.filter) {
        (Some(_), Some(plan)) => {
            interfaces_exist(plan).map_err(|e| controller::reload_error(&e))?
        }
        (None, None) => {}
        _ => {
            return Err(controller::reload_error(
                &ServiceError::FilterAddedOrRemoved,
            ));
        }
    }
    // All or nothing: the filter first (new interfaces attached, then the
    // rules), undone when a later step fails; the gateway last.
    let mut undo = None;
    if let (Some(filter), Some(plan)) = (c.filter.as_mut(), desired.filter.as_ref()) {
        let previous = filter.rules();
        let mode = attach_mode(plan.config.attach_mode);
        let attached = attach_interfaces(filter, &plan.config.interfaces, mode, &c.interfaces)
            .map_err(|e| controller::reload_error(&e.into()))?;
        let lists = merged_lists(plan, c.store.state());
        let (countries, policy) = effective_countries(plan, &c.store, c.loaded_countries.as_ref());
        if let Err(e) = filter.replace_all(plan.settings.clone(), lists, countries, policy) {
            attached.undo(filter);
            return Err(controller::reload_error(&e.into()));
        }
        undo = Some((previous, attached));
    }
    let gateway_reloaded = match &mut c.gateway {
        Some(gateway) => gateway.reload(&desired.config),
        None => Ok(Vec::new()),
    };
    let mut dangling = match gateway_reloaded {
        Ok(dangling) => dangling,
        Err(reply) => {
            if let (Some(filter), Some(((settings, lists, countries, policy), attached))) =
                (c.filter.as_mut(), undo)
            {
                if let Err(e) = filter.replace_all(settings, lists, countries, policy) {
                    tracing::error!(error = %chain(&e), "putting the running rules back in the kernel failed");
                }
                attached.undo(filter);
            }
            return Err(reply);
        }
    };
    if let Some(warning) = geo_unused {
        tracing::warn!("{warning}");
        dangling.push(warning);
    }
    if let (Some(filter), Some(plan)) = (c.filter.as_mut(), desired.filter.as_ref()) {
        let mut dropped = filter.kernel().attached_interfaces();
        dropped.extend(c.interfaces.iter().cloned());
        detach_unconfigured(filter, &plan.config.interfaces, dropped);
    }
    if let Some(plan) = desired.filter.as_ref() {
        c.interfaces = plan.config.interfaces.clone();
        c.config_countries = ConfigCountries::of(plan);
        c.monitor
            .store(plan.settings.monitor, std::sync::atomic::Ordering::Relaxed);
    }
    c.trusted_proxies = desired.config.gateway.trusted_proxies.clone();
    if let Some(plan) = &desired.filter {
        c.bans.set_settings(plan.config.autoban);
    }
    c.refresh_exempt();
    c.not_applied = c.start_only.not_applied(&desired.config);
    Ok(reloaded_message(&c.config_path, &c.not_applied, &dangling))
}

/// What a reload that was applied says (log, `rampart reload`, events): with the
/// keys it did not apply, which keep the values rampartd started with, and warnings
/// (`dangling`, one sentence each): the subscriptions whose API or product the file
/// no longer has, gateway limits past the open-file limit.
fn reloaded_message(path: &Path, not_applied: &[&str], dangling: &[String]) -> String {
    let mut message = if not_applied.is_empty() {
        format!("configuration reloaded from {}", path.display())
    } else {
        format!(
            "configuration reloaded from {}, except {}: read only at start, their running values stay until rampartd restarts",
            path.display(),
            not_applied.join(", ")
        )
    };
    for sentence in dangling {
        message.push_str("; ");
        message.push_str(sentence);
    }
    message
}

/// An error and its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What an `xdp_drop` summary says (log and `rampart events`). `count` is the
/// number of drop events the kernel sent: each is one dropped packet, but the
/// kernel sends only a sample (`events_per_second` per CPU, after a burst), so
/// it is a lower bound; the kernel's counters (`rampart stats`) count every drop,
/// per reason.
/// In monitor mode the packets passed: the message says they would have been
/// dropped.
fn drop_message(count: u64, src: IpAddr, reason: &str, monitor: bool) -> String {
    let packets = if count == 1 { "packet" } else { "packets" };
    let dropped = if monitor {
        "would have been dropped (monitor mode: passed; "
    } else {
        "dropped ("
    };
    format!(
        "at least {count} {packets} from {src} {dropped}{reason}; counted from sampled events, rampart stats has the exact totals per reason)"
    )
}

/// Drop events aggregated per source and reason, logged once per interval,
/// so that a flood cannot flood the log.
#[derive(Default)]
struct DropSummary {
    counts: HashMap<(IpAddr, &'static str), (u64, Option<String>)>,
    /// `[filter] monitor` in force (set by the control thread at a reload).
    monitor: Arc<std::sync::atomic::AtomicBool>,
}

impl DropSummary {
    fn add(&mut self, d: DropRecord) {
        let e = self
            .counts
            .entry((d.source, d.reason))
            .or_insert((0, d.country));
        e.0 += 1;
    }

    fn flush(&mut self, log: &EventLog) {
        if self.counts.is_empty() {
            return;
        }
        let mut all: Vec<_> = self.counts.drain().collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.1.0));
        let rest = all.len().saturating_sub(EVENT_SOURCES_PER_SUMMARY);
        for ((src, reason), (count, country)) in all.into_iter().take(EVENT_SOURCES_PER_SUMMARY) {
            let monitor = self.monitor.load(std::sync::atomic::Ordering::Relaxed);
            let message = drop_message(count, src, reason, monitor);
            log.push(
                "xdp_drop",
                message.clone(),
                vec![
                    ("SRC_IP".into(), src.to_string()),
                    ("REASON".into(), reason.to_owned()),
                    (
                        "COUNTRY".into(),
                        country.clone().unwrap_or_else(|| "-".into()),
                    ),
                ],
            );
            tracing::warn!(
                rampart_event = "xdp_drop",
                src_ip = %src,
                reason,
                country = country.as_deref(),
                // Drop events the kernel sent (sampled: at most
                // `events_per_second` per CPU), not every dropped packet.
                count,
                "{message}"
            );
        }
        if rest > 0 {
            tracing::warn!(
                rampart_event = "xdp_drop",
                more_sources = rest,
                window_secs = EVENT_INTERVAL.as_secs(),
                "more sources dropped"
            );
        }
    }
}

/// What the control thread may do with the gateway: read its status and
/// counters, manage subscriptions, reload it.
pub(crate) struct GatewayControl {
    gateway: Arc<RunningGateway>,
    runtime: tokio::runtime::Handle,
    /// The configuration's products, for checking `keys create --product`.
    products: Vec<String>,
    /// The descriptors its limits may need (`descriptors::needed`), checked against
    /// the open-file limit at start and again when a reload raises them.
    descriptors_needed: u64,
}

fn descriptors_needed(config: &Config) -> u64 {
    crate::gateway::descriptors::needed(
        config.gateway.max_connections,
        config.gateway.max_backend_requests,
    )
}

impl GatewayControl {
    fn new(
        gateway: &Arc<RunningGateway>,
        runtime: tokio::runtime::Handle,
        config: &Config,
    ) -> Self {
        Self {
            gateway: Arc::clone(gateway),
            runtime,
            products: config.products.iter().map(|p| p.name.clone()).collect(),
            descriptors_needed: descriptors_needed(config),
        }
    }

    fn status(&self) -> GatewayStatus {
        GatewayStatus {
            listeners: (self.gateway.local_addrs().iter())
                .map(ToString::to_string)
                .collect(),
            apis: self.gateway.apis().len(),
            subscriptions: self.gateway.subscriptions().list().len(),
        }
    }

    fn counters(&self) -> (u64, Vec<(String, u64)>) {
        let stats = self.gateway.stats();
        let rejections = (stats.rejections.into_iter())
            .map(|(reason, n)| (reason.to_owned(), n))
            .collect();
        (stats.requests, rejections)
    }

    /// `rampart keys ...`: each change is durable and seen by the next request
    /// when this returns; the second value describes a change for the event log.
    fn keys(&self, request: Request) -> Result<(Reply, Option<String>), ErrorReply> {
        use crate::control::protocol::{KeySlotName, ScopeSpec, SubscriptionView};
        use crate::policy::keys::{KeySlot, KeyStoreError, Origin, Scope, SubscriptionState};
        let refused = |e: KeyStoreError| {
            let kind = match &e {
                KeyStoreError::NotFound { .. } => ErrorKind::NotFound,
                KeyStoreError::Exists { .. } => ErrorKind::Conflict,
                KeyStoreError::FromConfig { .. }
                | KeyStoreError::Cancelled { .. }
                | KeyStoreError::InvalidName { .. }
                | KeyStoreError::DuplicateKey { .. } => ErrorKind::InvalidInput,
                KeyStoreError::Read { .. }
                | KeyStoreError::Corrupt { .. }
                | KeyStoreError::NewerFormat { .. }
                | KeyStoreError::Write { .. } => ErrorKind::Storage,
                KeyStoreError::Random { .. } => ErrorKind::Internal,
            };
            if matches!(kind, ErrorKind::Storage | ErrorKind::Internal) {
                tracing::error!(error = %chain(&e), "a subscription change could not be made");
            }
            ErrorReply::new(kind, chain(&e))
        };
        let subscriptions = self.gateway.subscriptions();
        match request {
            Request::KeysCreate { name, scope } => {
                let unknown = |what: &str, name: &str| {
                    ErrorReply::new(
                        ErrorKind::InvalidInput,
                        format!("no {what} named {name:?} is configured; nothing created"),
                    )
                };
                let scope = match scope {
                    ScopeSpec::All => Scope::AllApis,
                    ScopeSpec::Product(product) => {
                        if !self.products.contains(&product) {
                            return Err(unknown("product", &product));
                        }
                        Scope::Product(product)
                    }
                    ScopeSpec::Api(api) => {
                        if !self.gateway.apis().contains(&api) {
                            return Err(unknown("API", &api));
                        }
                        Scope::Api(api)
                    }
                };
                let keys = subscriptions.create(&name, scope).map_err(refused)?;
                let what = format!("subscription {name:?} created");
                let reply = Reply::KeysCreated {
                    name,
                    primary: keys.primary.expose().to_owned(),
                    secondary: keys.secondary.expose().to_owned(),
                };
                Ok((reply, Some(what)))
            }
            Request::KeysList => {
                let apis = self.gateway.apis();
                let views = (subscriptions.list().into_iter())
                    .map(|s| SubscriptionView {
                        scope: s.scope.to_string(),
                        scope_missing: s.scope.missing(&apis, &self.products).is_some(),
                        state: match s.state {
                            SubscriptionState::Active => "active",
                            SubscriptionState::Suspended => "suspended",
                            SubscriptionState::Cancelled => "cancelled",
                        }
                        .to_owned(),
                        origin: match s.origin {
                            Origin::Store => "store",
                            Origin::Config => "config",
                        }
                        .to_owned(),
                        created_at: s.created_at,
                        name: s.name,
                    })
                    .collect();
                Ok((
                    Reply::Subscriptions {
                        subscriptions: views,
                    },
                    None,
                ))
            }
            Request::KeysRotate { name, slot } => {
                let which = match slot {
                    KeySlotName::Primary => KeySlot::Primary,
                    KeySlotName::Secondary => KeySlot::Secondary,
                };
                let key = subscriptions.rotate(&name, which).map_err(refused)?;
                let what = format!("subscription {name:?}: {slot} key rotated");
                let reply = Reply::KeyRotated {
                    name,
                    slot,
                    key: key.expose().to_owned(),
                };
                Ok((reply, Some(what)))
            }
            Request::KeysSuspend { name } => {
                subscriptions.suspend(&name).map_err(refused)?;
                Ok((
                    Reply::Done,
                    Some(format!("subscription {name:?} suspended")),
                ))
            }
            Request::KeysActivate { name } => {
                subscriptions.activate(&name).map_err(refused)?;
                Ok((
                    Reply::Done,
                    Some(format!("subscription {name:?} activated")),
                ))
            }
            Request::KeysRevoke { name } => {
                subscriptions.revoke(&name).map_err(refused)?;
                Ok((Reply::Done, Some(format!("subscription {name:?} revoked"))))
            }
            _ => Err(ErrorReply::new(ErrorKind::Internal, "not a keys request")),
        }
    }

    /// The whole gateway from `config` (every problem is logged by the gateway).
    /// Every problem of the new configuration is listed in the error; once
    /// applied, the subscriptions whose API or product `config` does not have,
    /// one sentence each (the gateway logs each as a warning).
    fn reload(&mut self, config: &Config) -> Result<Vec<String>, ErrorReply> {
        self.runtime
            .block_on(self.gateway.reload(config))
            .map(|summary| {
                self.products = config.products.iter().map(|p| p.name.clone()).collect();
                let mut warnings: Vec<String> = (summary.dangling_scopes.iter())
                    .map(ToString::to_string)
                    .collect();
                // Limits raised past the open-file limit are warned about (in the
                // answer too); limits that stay or shrink repeat nothing of start's.
                let needed = descriptors_needed(config);
                if needed > self.descriptors_needed
                    && let Some(limit) = crate::gateway::descriptors::current_limit()
                    && let Some(warning) = crate::gateway::descriptors::shortfall(
                        config.gateway.max_connections,
                        config.gateway.max_backend_requests,
                        limit,
                    )
                {
                    warnings.push(warning);
                }
                self.descriptors_needed = needed;
                warnings
            })
            .map_err(|e| {
                let mut reply = ErrorReply::new(
                    ErrorKind::Config,
                    "the configuration was not reloaded; the running one stays",
                );
                reply.details = e.problems.iter().map(|p| chain(p)).collect();
                reply
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_beyond_the_kernel_clock_saturates() {
        // A journal record from before the daemon bounded TTLs: it loads (before,
        // every start panicked on the overflow) as an entry that never expires in
        // practice.
        assert_eq!(
            controller::expiry_ns(Some(u64::MAX), 1_000, 5_000),
            u64::MAX
        );
        assert_eq!(controller::expiry_ns(Some(1_010), 1_000, 5), 10_000_000_005);
        assert_eq!(controller::expiry_ns(None, 1_000, 5), 0);
    }

    #[test]
    fn drop_summary_aggregates_per_source_and_reason() {
        let mut s = DropSummary::default();
        let rec = |src: &str, reason| DropRecord {
            source: src.parse().unwrap(),
            reason,
            country: None,
            ifindex: 1,
            protocol: 6,
            dst_port: 443,
        };
        for _ in 0..1000 {
            s.add(rec("198.18.0.1", "denied"));
        }
        s.add(rec("198.18.0.1", "flood"));
        s.add(rec("198.18.0.2", "denied"));
        assert_eq!(s.counts.len(), 3);
        assert_eq!(s.counts[&("198.18.0.1".parse().unwrap(), "denied")].0, 1000);
        let log = EventLog::new(10);
        s.flush(&log);
        let events = log.last(10);
        assert_eq!(events.len(), 3);
        assert!(s.counts.is_empty());
        // The count is of sampled events, and the text says so.
        let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
        for expected in [
            "at least 1000 packets from 198.18.0.1 dropped (denied; counted from sampled events, rampart stats has the exact totals per reason)",
            "at least 1 packet from 198.18.0.1 dropped (flood; counted from sampled events, rampart stats has the exact totals per reason)",
            "at least 1 packet from 198.18.0.2 dropped (denied; counted from sampled events, rampart stats has the exact totals per reason)",
        ] {
            assert!(messages.contains(&expected), "{messages:#?}");
        }
        // In monitor mode the packets passed.
        s.monitor.store(true, std::sync::atomic::Ordering::Relaxed);
        s.add(rec("198.18.0.3", "denied"));
        s.flush(&log);
        assert_eq!(
            log.last(1)[0].message,
            "at least 1 packet from 198.18.0.3 would have been dropped (monitor mode: passed; denied; counted from sampled events, rampart stats has the exact totals per reason)"
        );
    }

    #[test]
    fn exit_codes_follow_sysexits() {
        let e = ServiceError::Filter(FilterError::UnknownInterface { name: "x".into() });
        assert_eq!(e.exit_code(), 64);
    }
}
