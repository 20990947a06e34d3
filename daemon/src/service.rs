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

use crate::{
    config::{
        self, Config, ConfigError, CountryPolicy as ConfigCountryPolicy, FilterConfig, ProtectScope,
    },
    filter::{
        AttachMode, DropRecord, EntryOrigin, Filter, FilterError, ListEntry, ListKind, Lists,
        Protect, Settings,
    },
    gateway::{CertReloader, Gateway, GatewayError},
    geo::{self, GeoError},
    pipeline::{self, ApiPolicies, PipelineError},
    rules::CountryPolicy,
};

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
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen for signals")]
    Signals(#[source] std::io::Error),
}

impl ServiceError {
    /// sysexits.h: 64 bad configuration, 65 bad data, 66 unreadable input,
    /// 69 unavailable (kernel refused), 71 OS error.
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
            ServiceError::Pipeline(PipelineError::KeyStore(_)) => 65,
            ServiceError::Pipeline(_) => 64,
            ServiceError::Runtime(_) | ServiceError::Signals(_) => 71,
        }
    }
}

/// A configuration, loaded and validated with everything it names (country
/// database included) before anything is applied.
pub struct Desired {
    pub config: Config,
    /// What the kernel filter is asked to do; `None` without `[filter]`.
    pub filter: Option<FilterPlan>,
}

/// Everything `[filter]` asks of the kernel filter.
pub struct FilterPlan {
    pub config: FilterConfig,
    pub settings: Settings,
    pub lists: Lists,
    pub countries: Vec<(ipnet::IpNet, u16)>,
    pub policy: CountryPolicy,
}

/// Reads, validates and resolves a configuration file (with its country
/// database). Used by `--check-config`, start-up and reload.
pub fn prepare(path: &Path) -> Result<Desired, ServiceError> {
    let config = config::load(path)?;
    let filter = config.filter.clone().map(plan_filter).transpose()?;
    // Certificates are loaded (and thrown away) here too, so that a bad one
    // is reported by --check-config and at start before anything reaches the
    // kernel, and a reload with one is rejected whole.
    for listener in crate::pipeline::gateway_settings(&config).0 {
        if let crate::gateway::Transport::Tls(tls) = &listener.transport {
            crate::gateway::CertResolver::load(tls)?;
            crate::gateway::client_verification(&tls.client_auth)?;
        }
    }
    Ok(Desired { config, filter })
}

fn plan_filter(f: FilterConfig) -> Result<FilterPlan, ServiceError> {
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
    let (countries, policy) = match &f.geo {
        None => (Vec::new(), CountryPolicy::Off),
        Some(g) => {
            let data = geo::load(&g.path)?;
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
            (data.into_prefixes(), policy)
        }
    };
    Ok(FilterPlan {
        config: f,
        settings,
        lists,
        countries,
        policy,
    })
}

fn attach_mode(m: config::AttachMode) -> AttachMode {
    match m {
        config::AttachMode::Native => AttachMode::Native,
        config::AttachMode::Skb => AttachMode::Skb,
    }
}

/// `rampartd --detach`: removes the filter (links and pinned maps).
pub fn detach(config_path: &Path) -> Result<Vec<String>, ServiceError> {
    let config = config::load(config_path)?;
    Ok(crate::filter::detach(&config.daemon.paths().pin_dir())?)
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

/// Starts the filter from `config_path`: everything is validated first; a
/// bad file, database or interface changes nothing in the kernel.
/// Without `[filter]`, nothing is attached and the filter is `None`.
pub fn start(config_path: &Path) -> Result<(Option<Filter>, Desired), ServiceError> {
    let desired = prepare(config_path)?;
    let Some(plan) = &desired.filter else {
        tracing::info!("no [filter] configured: the kernel filter is not attached");
        return Ok((None, desired));
    };
    interfaces_exist(plan)?;
    let pin_dir = desired.config.daemon.paths().pin_dir();
    let mut filter = Filter::open_sized(&pin_dir, plan.config.max_deny_entries)?;
    filter.replace_all(
        plan.settings.clone(),
        plan.lists.clone(),
        plan.countries.clone(),
        plan.policy.clone(),
    )?;
    let mode = attach_mode(plan.config.attach_mode);
    for iface in &plan.config.interfaces {
        let info = filter.attach(iface, mode)?;
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
    }
    tracing::info!(
        pins = %pin_dir.display(),
        countries = plan.countries.len(),
        bypass = plan.lists.live(ListKind::Bypass, 0).len(),
        deny = plan.lists.live(ListKind::Deny, 0).len(),
        allow = plan.lists.live(ListKind::Allow, 0).len(),
        "rules applied"
    );
    Ok((Some(filter), desired))
}

/// Runs the daemon until SIGTERM or SIGINT. The filter stays attached.
pub fn run(config_path: PathBuf) -> Result<(), ServiceError> {
    let (mut filter, desired) = start(&config_path)?;
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
        let mut expire = tokio::time::interval(Duration::from_secs(1));
        let mut summary = tokio::time::interval(EVENT_INTERVAL);
        let mut upkeep = tokio::time::interval(Duration::from_secs(1));
        let mut drops = DropSummary::default();
        let mut interfaces = desired
            .filter
            .as_ref()
            .map(|plan| plan.config.interfaces.clone())
            .unwrap_or_default();
        let shutdown = CancellationToken::new();
        let gateway = start_gateway(&desired.config, shutdown.clone()).await?;
        tracing::info!(config = %config_path.display(), "rampartd running");
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    reload(&config_path, filter.as_mut(), &mut interfaces);
                    if let Some(gateway) = &gateway {
                        reload_certificates(&gateway.certificates);
                    }
                }
                _ = expire.tick(), if filter.is_some() => {
                    match filter.as_mut().map(Filter::expire) {
                        None | Some(Ok(0)) => {}
                        Some(Ok(n)) => tracing::info!(expired = n, "temporary entries expired"),
                        Some(Err(e)) => {
                            tracing::error!(error = %chain(&e), "expiring entries failed");
                        }
                    }
                }
                _ = summary.tick() => drops.flush(),
                _ = upkeep.tick(), if gateway.is_some() => {
                    if let Some(gateway) = &gateway {
                        // Off the request threads: writing the counters syncs a file.
                        let policies = Arc::clone(&gateway.policies);
                        tokio::task::spawn_blocking(move || maintain(&policies));
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
        drops.flush();
        shutdown.cancel();
        if let Some(gateway) = gateway {
            tracing::info!("gateway draining");
            if let Err(e) = gateway.serving.await {
                tracing::error!(error = %e, "gateway task failed");
            }
            if let Err(e) = gateway.policies.flush() {
                tracing::error!(error = %chain(&e), "writing the quota counters failed");
            }
        }
        tracing::info!(
            "rampartd stopping; the filter stays attached (rampartd --detach removes it)"
        );
        Ok(())
    })
}

/// The running gateway, as the service loop sees it.
struct RunningGateway {
    certificates: CertReloader,
    policies: Arc<ApiPolicies>,
    serving: tokio::task::JoinHandle<()>,
}

/// Fetches a JWT provider's keys when its schedule says so (at start, hourly, on an
/// unknown `kid` at most every 5 minutes, retries after failures), until shutdown.
async fn refresh_jwt_keys(
    provider: Arc<crate::policy::jwt::JwtProvider>,
    shutdown: CancellationToken,
) {
    let limits = crate::policy::jwt::FetchLimits::default();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    loop {
        let planner = provider.planner();
        if planner.needs_refresh(now())
            && let Some(ticket) = planner.try_begin(now())
        {
            let fetched = tokio::select! {
                () = shutdown.cancelled() => return,
                fetched = provider.refresh(&limits) => fetched,
            };
            match &fetched {
                Ok(keys) => tracing::info!(provider = provider.name(), keys, "JWT keys fetched"),
                Err(e) => tracing::warn!(
                    provider = provider.name(),
                    error = %chain(e),
                    has_keys = provider.has_keys(),
                    "JWT key fetch failed; the last good keys stay"
                ),
            }
            planner.finish(ticket, now(), fetched.is_ok());
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = provider.refresh_requested() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Sweeps idle counters and writes changed quota counters (every second).
fn maintain(policies: &ApiPolicies) {
    if let Err(e) = policies.maintain() {
        tracing::error!(error = %chain(&e), "writing the quota counters failed; retrying");
    }
}

/// Binds the gateway's listeners when the configuration has any, and serves them
/// on this runtime until `shutdown` is cancelled.
async fn start_gateway(
    config: &Config,
    shutdown: CancellationToken,
) -> Result<Option<RunningGateway>, ServiceError> {
    if config.listeners.is_empty() {
        return Ok(None);
    }
    let policies = Arc::new(ApiPolicies::from_config(config)?);
    for provider in policies.jwt_providers() {
        if provider.client().is_some() {
            tokio::spawn(refresh_jwt_keys(Arc::clone(provider), shutdown.clone()));
        }
    }
    let (listeners, settings) = pipeline::gateway_settings(config);
    let gateway = Gateway::bind(&listeners, settings)
        .await?
        .with_policy(Arc::clone(&policies) as Arc<dyn crate::gateway::RequestPolicy>);
    let addresses: Vec<String> = gateway
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    tracing::info!(
        addresses = %addresses.join(","),
        apis = config.apis.len(),
        "gateway listening"
    );
    let certificates = gateway.certificates();
    let serving = tokio::spawn(gateway.serve(shutdown));
    Ok(Some(RunningGateway {
        certificates,
        policies,
        serving,
    }))
}

/// SIGHUP: new certificates for new connections; a bad file keeps the old ones.
fn reload_certificates(certificates: &CertReloader) {
    match certificates.reload() {
        Ok(()) => tracing::info!("certificates reloaded"),
        Err(e) => tracing::error!(
            error = %chain(&e),
            "certificate reload rejected; the running certificates stay"
        ),
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

fn reload(config_path: &Path, filter: Option<&mut Filter>, interfaces: &mut Vec<String>) {
    let result = prepare(config_path).and_then(|d| match (filter, d.filter) {
        (Some(filter), Some(plan)) => {
            interfaces_exist(&plan)?;
            filter.replace_all(plan.settings, plan.lists, plan.countries, plan.policy)?;
            let mode = attach_mode(plan.config.attach_mode);
            for iface in &plan.config.interfaces {
                if !interfaces.contains(iface) {
                    filter.attach(iface, mode)?;
                }
            }
            *interfaces = plan.config.interfaces;
            Ok(())
        }
        (None, None) => Ok(()),
        (Some(_), None) | (None, Some(_)) => Err(ServiceError::FilterAddedOrRemoved),
    });
    match result {
        Ok(()) => tracing::info!(config = %config_path.display(), "configuration reloaded"),
        Err(e) => tracing::error!(
            config = %config_path.display(),
            error = %chain(&e),
            "reload rejected; the running configuration stays"
        ),
    }
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

/// Drop events aggregated per source and reason, logged once per interval,
/// so that a flood cannot flood the log.
#[derive(Default)]
struct DropSummary {
    counts: HashMap<(IpAddr, &'static str), (u64, Option<String>)>,
}

impl DropSummary {
    fn add(&mut self, d: DropRecord) {
        let e = self
            .counts
            .entry((d.source, d.reason))
            .or_insert((0, d.country));
        e.0 += 1;
    }

    fn flush(&mut self) {
        if self.counts.is_empty() {
            return;
        }
        let mut all: Vec<_> = self.counts.drain().collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.1.0));
        let rest = all.len().saturating_sub(EVENT_SOURCES_PER_SUMMARY);
        for ((src, reason), (count, country)) in all.into_iter().take(EVENT_SOURCES_PER_SUMMARY) {
            tracing::warn!(
                event = "xdp_drop",
                src_ip = %src,
                reason,
                country = country.as_deref().unwrap_or("-"),
                sampled_events = count,
                "packets dropped"
            );
        }
        if rest > 0 {
            tracing::warn!(
                event = "xdp_drop",
                more_sources = rest,
                "more sources dropped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        s.flush();
        assert!(s.counts.is_empty());
    }

    #[test]
    fn exit_codes_follow_sysexits() {
        let e = ServiceError::Filter(FilterError::UnknownInterface { name: "x".into() });
        assert_eq!(e.exit_code(), 64);
    }
}
