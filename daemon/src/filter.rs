//! The kernel filter: loads the XDP program, pins its maps and links, keeps
//! the rule lists and writes them into the kernel maps.
//!
//! Pins live under `<pin_root>/v<LAYOUT_VERSION>/`: maps by name, links as
//! `link_<ifname>_<mode>`. A second start reuses the pinned maps (rules keep
//! being enforced while no daemon runs) and replaces the program behind each
//! pinned link atomically (`bpf_link_update`): there is no instant without a
//! filter. Only [`detach`] removes the pins.

mod kernel;
mod lists;

use std::{net::IpAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;
use rampart_common::{Config as KernelConfig, DropEvent, REASON_NAMES, config_flags};
use thiserror::Error;

pub(crate) use kernel::interface_exists;
pub use kernel::{AttachInfo, AttachMode, Events, Kernel, detach};
pub use lists::{EntryOrigin, ListEntry, ListKind, Lists};

use crate::rules::{self, CompiledTable, CountryPolicy, RuleError};

#[derive(Debug, Error)]
pub enum FilterError {
    #[error("cannot mount bpffs at {path}")]
    MountBpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the XDP program failed")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("XDP program: {action} failed")]
    Program {
        action: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {action} failed")]
    Map {
        name: &'static str,
        action: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("no network interface named {name:?}")]
    UnknownInterface { name: String },
    #[error("attaching to {interface} in {mode} mode failed")]
    Attach {
        interface: String,
        mode: AttachMode,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinned link {path} is not usable")]
    PinnedLink {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the rule table cannot be built")]
    Table {
        #[source]
        source: RuleError,
    },
    #[error(
        "the exact deny map for IPv{family} is full ({capacity} entries; see filter.max_deny_entries)"
    )]
    DenyMapFull { family: u8, capacity: u32 },
    #[error(
        "pinned map {map} holds {pinned} entries but the configuration asks for {wanted}; \
         run `rampartd --detach` to rebuild the maps with the new size"
    )]
    PinnedCapacity {
        map: &'static str,
        pinned: u32,
        wanted: u32,
    },
}

/// Nanoseconds of CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Settings of the program that are not rule lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub protect: Protect,
    pub drop_malformed: bool,
    pub monitor: bool,
    /// (packets per second, burst)
    pub flood: Option<(u64, u64)>,
    /// (events per second per CPU, burst); None = no events.
    pub events: Option<(u64, u64)>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            protect: Protect::Ports {
                tcp: vec![443..=443],
                udp: vec![],
            },
            drop_malformed: true,
            monitor: false,
            flood: None,
            events: Some((100, 50)),
        }
    }
}

/// Which traffic the allowlist, country and flood rules apply to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protect {
    All,
    Ports {
        tcp: Vec<std::ops::RangeInclusive<u16>>,
        udp: Vec<std::ops::RangeInclusive<u16>>,
    },
}

impl Settings {
    fn kernel_config(&self, active: u32) -> KernelConfig {
        let mut flags = 0;
        if self.protect == Protect::All {
            flags |= config_flags::PROTECT_ALL;
        }
        if self.drop_malformed {
            flags |= config_flags::DROP_MALFORMED;
        }
        if self.monitor {
            flags |= config_flags::MONITOR;
        }
        let (mut flood_interval_ns, mut flood_tolerance_ns) = (0, 0);
        if let Some((pps, burst)) = self.flood {
            flags |= config_flags::FLOOD;
            (flood_interval_ns, flood_tolerance_ns) = gcra(pps, burst);
        }
        let (mut event_interval_ns, mut event_tolerance_ns) = (0, 0);
        if let Some((rate, burst)) = self.events {
            flags |= config_flags::EVENTS;
            (event_interval_ns, event_tolerance_ns) = gcra(rate, burst);
        }
        KernelConfig {
            active,
            flags,
            flood_interval_ns,
            flood_tolerance_ns,
            event_interval_ns,
            event_tolerance_ns,
        }
    }
}

/// GCRA parameters for `rate` per second with a burst of `burst`:
/// (emission interval, tolerance), both in nanoseconds.
fn gcra(rate: u64, burst: u64) -> (u64, u64) {
    let interval = 1_000_000_000 / rate.max(1);
    (interval, interval * burst.max(1).saturating_sub(1))
}

/// Counters summed over CPUs, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub by_reason: Vec<(&'static str, u64)>,
    /// Drops by country code (only countries with drops), "??" = unknown.
    pub drops_by_country: Vec<(String, u64)>,
}

impl Counters {
    pub fn get(&self, reason: &str) -> u64 {
        self.by_reason
            .iter()
            .find(|(n, _)| *n == reason)
            .map_or(0, |(_, v)| *v)
    }
}

/// The kernel filter with its rule lists: the typed API the daemon uses.
pub struct Filter {
    kernel: Kernel,
    lists: Lists,
    countries: Vec<(IpNet, u16)>,
    policy: CountryPolicy,
    settings: Settings,
    table: CompiledTable,
}

impl Filter {
    /// Loads (or reuses from `pin_dir`) the program and its maps. Nothing is
    /// attached yet and the kernel keeps its current rules until the first
    /// change.
    pub fn open(pin_dir: &std::path::Path) -> Result<Self, FilterError> {
        Self::open_sized(pin_dir, crate::config::DEFAULT_MAX_DENY_ENTRIES)
    }

    /// [`Filter::open`] with exact deny maps of `max_deny_entries` per family.
    pub fn open_sized(
        pin_dir: &std::path::Path,
        max_deny_entries: u32,
    ) -> Result<Self, FilterError> {
        let kernel = Kernel::open(pin_dir, max_deny_entries)?;
        let lists = Lists::default();
        let table = rules::compile(&lists.prefix_rules(Vec::new(), CountryPolicy::Off, 0))
            .map_err(|source| FilterError::Table { source })?;
        Ok(Self {
            kernel,
            lists,
            countries: Vec::new(),
            policy: CountryPolicy::Off,
            settings: Settings::default(),
            table,
        })
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    pub fn kernel_mut(&mut self) -> &mut Kernel {
        &mut self.kernel
    }

    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<AttachInfo, FilterError> {
        self.kernel.attach(interface, mode)
    }

    /// Replaces the whole state at once (start-up and reload): settings,
    /// lists, country table and policy. Validated and compiled before
    /// anything reaches the kernel; applied with one buffer flip.
    pub fn replace_all(
        &mut self,
        settings: Settings,
        lists: Lists,
        countries: Vec<(IpNet, u16)>,
        policy: CountryPolicy,
    ) -> Result<(), FilterError> {
        let now = monotonic_ns();
        let table = rules::compile(&lists.prefix_rules(countries.clone(), policy.clone(), now))
            .map_err(|source| FilterError::Table { source })?;
        self.kernel.sync_exact(&lists.exact_denies(now))?;
        self.kernel.set_ports(&settings.protect)?;
        self.kernel.write_table(&table, &settings)?;
        self.settings = settings;
        self.lists = lists;
        self.countries = countries;
        self.policy = policy;
        self.table = table;
        Ok(())
    }

    /// Adds entries to a list; a TTL makes them temporary (the kernel stops
    /// applying them on time by itself). All or nothing.
    pub fn add(
        &mut self,
        kind: ListKind,
        nets: &[IpNet],
        ttl: Option<Duration>,
        origin: EntryOrigin,
    ) -> Result<(), FilterError> {
        let now = monotonic_ns();
        let expires_ns = ttl.map_or(0, |t| now + t.as_nanos() as u64);
        let mut next = self.lists.clone();
        for net in nets {
            next.insert(
                kind,
                ListEntry {
                    net: *net,
                    expires_ns,
                    origin,
                },
            );
        }
        self.commit(next, now)
    }

    /// Removes entries; returns how many were removed.
    pub fn remove(&mut self, kind: ListKind, nets: &[IpNet]) -> Result<usize, FilterError> {
        let mut next = self.lists.clone();
        let removed = nets.iter().filter(|n| next.remove(kind, n)).count();
        self.commit(next, monotonic_ns())?;
        Ok(removed)
    }

    /// The live (not expired) entries of a list.
    pub fn list(&self, kind: ListKind) -> Vec<ListEntry> {
        self.lists.live(kind, monotonic_ns())
    }

    /// Replaces the country table atomically (built aside, one flip).
    pub fn set_countries(&mut self, countries: Vec<(IpNet, u16)>) -> Result<(), FilterError> {
        let rules = self
            .lists
            .prefix_rules(countries.clone(), self.policy.clone(), monotonic_ns());
        let table = rules::compile(&rules).map_err(|source| FilterError::Table { source })?;
        self.kernel.write_table(&table, &self.settings)?;
        self.countries = countries;
        self.table = table;
        Ok(())
    }

    pub fn set_country_policy(&mut self, policy: CountryPolicy) -> Result<(), FilterError> {
        let rules = self
            .lists
            .prefix_rules(self.countries.clone(), policy.clone(), monotonic_ns());
        let table = rules::compile(&rules).map_err(|source| FilterError::Table { source })?;
        self.kernel.write_table(&table, &self.settings)?;
        self.policy = policy;
        self.table = table;
        Ok(())
    }

    /// Drops expired entries from the lists and the kernel maps. The kernel
    /// already ignores them; this keeps listings and maps tidy.
    pub fn expire(&mut self) -> Result<usize, FilterError> {
        let now = monotonic_ns();
        let mut next = self.lists.clone();
        let n = next.expire(now);
        if n > 0 {
            self.commit(next, now)?;
        }
        Ok(n)
    }

    /// The class the table gives an address (what the kernel will decide,
    /// before exact denies, scope and flood).
    pub fn lookup(&self, addr: IpAddr) -> rampart_common::Class {
        rules::lookup(&self.table, addr).1
    }

    pub fn counters(&self) -> Result<Counters, FilterError> {
        self.kernel.counters()
    }

    pub fn take_events(&mut self) -> Result<Events, FilterError> {
        self.kernel.take_events()
    }

    fn commit(&mut self, next: Lists, now: u64) -> Result<(), FilterError> {
        let table = if next.prefix_differs(&self.lists) {
            let rules = next.prefix_rules(self.countries.clone(), self.policy.clone(), now);
            Some(rules::compile(&rules).map_err(|source| FilterError::Table { source })?)
        } else {
            None
        };
        // Exact denies first (insert before delete), then the table flip.
        self.kernel.sync_exact(&next.exact_denies(now))?;
        if let Some(table) = table {
            self.kernel.write_table(&table, &self.settings)?;
            self.table = table;
        }
        self.lists = next;
        Ok(())
    }
}

/// A drop event in userspace terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropRecord {
    pub source: IpAddr,
    pub reason: &'static str,
    pub country: Option<String>,
    pub ifindex: u32,
    pub protocol: u8,
    pub dst_port: u16,
}

impl From<&DropEvent> for DropRecord {
    fn from(e: &DropEvent) -> Self {
        let v6 = std::net::Ipv6Addr::from(e.src);
        let source = match (e.family, v6.to_ipv4_mapped()) {
            (4, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        };
        Self {
            source,
            reason: REASON_NAMES
                .get(e.reason as usize)
                .copied()
                .unwrap_or("unknown"),
            country: rampart_common::country_code(e.country)
                .map(|c| String::from_utf8_lossy(&c).into_owned()),
            ifindex: e.ifindex,
            protocol: e.protocol,
            dst_port: e.dst_port,
        }
    }
}
