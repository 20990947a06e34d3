//! `rampartd`'s life: load and validate the configuration, put the rules in
//! the kernel, attach, then run until SIGTERM (the filter stays attached),
//! reloading on SIGHUP, expiring temporary entries and logging drop events.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    config::{self, Config, ConfigError, CountryPolicy as ConfigCountryPolicy, ProtectScope},
    filter::{
        AttachMode, DropRecord, EntryOrigin, Filter, FilterError, ListEntry, ListKind, Lists,
        Protect, Settings,
    },
    geo::{self, GeoError},
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
            ServiceError::Runtime(_) | ServiceError::Signals(_) => 71,
        }
    }
}

/// Everything a configuration asks of the kernel filter, loaded and
/// validated (country database included) before anything is applied.
pub struct Desired {
    pub config: Config,
    pub settings: Settings,
    pub lists: Lists,
    pub countries: Vec<(ipnet::IpNet, u16)>,
    pub policy: CountryPolicy,
}

/// Reads, validates and resolves a configuration file (with its country
/// database). Used by `--check-config`, start-up and reload.
pub fn prepare(path: &Path) -> Result<Desired, ServiceError> {
    let config = config::load(path)?;
    let f = &config.filter;
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
    Ok(Desired {
        config,
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
fn interfaces_exist(d: &Desired) -> Result<(), ServiceError> {
    match d
        .config
        .filter
        .interfaces
        .iter()
        .find(|i| interface_missing(i))
    {
        Some(name) => Err(FilterError::UnknownInterface { name: name.clone() }.into()),
        None => Ok(()),
    }
}

fn interface_missing(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return true;
    };
    // SAFETY: valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) == 0 }
}

/// Starts the filter from `config_path`: everything is validated first; a
/// bad file, database or interface changes nothing in the kernel.
pub fn start(config_path: &Path) -> Result<(Filter, Desired), ServiceError> {
    let desired = prepare(config_path)?;
    interfaces_exist(&desired)?;
    let pin_dir = desired.config.daemon.paths().pin_dir();
    let mut filter = Filter::open_sized(&pin_dir, desired.config.filter.max_deny_entries)?;
    filter.replace_all(
        desired.settings.clone(),
        desired.lists.clone(),
        desired.countries.clone(),
        desired.policy.clone(),
    )?;
    let mode = attach_mode(desired.config.filter.attach_mode);
    for iface in &desired.config.filter.interfaces {
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
        countries = desired.countries.len(),
        bypass = desired.lists.live(ListKind::Bypass, 0).len(),
        deny = desired.lists.live(ListKind::Deny, 0).len(),
        allow = desired.lists.live(ListKind::Allow, 0).len(),
        "rules applied"
    );
    Ok((filter, desired))
}

/// Runs the daemon until SIGTERM or SIGINT. The filter stays attached.
pub fn run(config_path: PathBuf) -> Result<(), ServiceError> {
    let (mut filter, desired) = start(&config_path)?;
    let events = filter.take_events()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServiceError::Runtime)?;
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate()).map_err(ServiceError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(ServiceError::Signals)?;
        let mut hup = signal(SignalKind::hangup()).map_err(ServiceError::Signals)?;
        // SAFETY: the AsyncFd owns `events`, so the ring's fd stays open for
        // as long as it is registered.
        let mut ring =
            unsafe { AsyncFd::register(events) }.map_err(|e| ServiceError::Signals(e.into()))?;
        let mut expire = tokio::time::interval(Duration::from_secs(1));
        let mut summary = tokio::time::interval(EVENT_INTERVAL);
        let mut drops = DropSummary::default();
        let mut interfaces = desired.config.filter.interfaces.clone();
        tracing::info!(config = %config_path.display(), "rampartd running");
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => reload(&config_path, &mut filter, &mut interfaces),
                _ = expire.tick() => {
                    match filter.expire() {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(expired = n, "temporary entries expired"),
                        Err(e) => tracing::error!(error = %chain(&e), "expiring entries failed"),
                    }
                }
                _ = summary.tick() => drops.flush(),
                guard = ring.readable_mut() => {
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
        tracing::info!(
            "rampartd stopping; the filter stays attached (rampartd --detach removes it)"
        );
        Ok(())
    })
}

fn reload(config_path: &Path, filter: &mut Filter, interfaces: &mut Vec<String>) {
    let result = prepare(config_path).and_then(|d| {
        interfaces_exist(&d)?;
        filter.replace_all(d.settings, d.lists, d.countries, d.policy)?;
        let mode = attach_mode(d.config.filter.attach_mode);
        for iface in &d.config.filter.interfaces {
            if !interfaces.contains(iface) {
                filter.attach(iface, mode)?;
            }
        }
        *interfaces = d.config.filter.interfaces;
        Ok(())
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
