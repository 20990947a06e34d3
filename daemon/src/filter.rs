//! The kernel filter: loads the XDP program, pins its maps and links, keeps
//! the rule lists and writes them into the kernel maps.
//!
//! Pins live under `<pin_root>/v<LAYOUT_VERSION>/`: maps by name, links as
//! `link_<ifname>_<mode>`. A second start reuses the pinned maps (rules keep
//! being enforced while no daemon runs) and replaces the program behind each
//! pinned link atomically (`bpf_link_update`): there is no instant without a
//! filter. Only [`detach`] removes the pins.
//!
//! Changes come in batches ([`Filter::apply`]): validated and compiled
//! first, then written aside and put in force by one store into the
//! program's configuration, so the kernel never applies half a batch, and a
//! batch that fails leaves the rules in force as they were.

mod batch;
mod config_map;
mod exact;
mod explain;
mod kernel;
mod lists;

use std::{net::IpAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;
use rampart_common::{
    ANY_PORT, Config as KernelConfig, DropEvent, REASON_NAMES, config_flags, iface_slot,
};
use thiserror::Error;

pub use batch::{Applied, Change};
pub use explain::{Action, Explanation, Matched};
pub(crate) use kernel::interface_exists;
pub use kernel::{
    AttachInfo, AttachMode, Events, Kernel, detach, detach_old_layouts, ensure_bpffs,
};
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
    #[error(
        "attaching to {interface} in {mode} mode failed: another XDP program is attached to {interface} (a rampartd with another pin_root, or another tool; `ip link show {interface}` names it)"
    )]
    AttachBusy { interface: String, mode: AttachMode },
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
    #[error("map {name}: mapping it into memory failed")]
    MapMemory {
        name: &'static str,
        #[source]
        source: std::io::Error,
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
    /// The length of the IPv6 prefix the flood limit counts as one source
    /// (32..=128; 128: per address).
    pub flood_ipv6_prefix: u8,
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
            flood_ipv6_prefix: crate::config::DEFAULT_FLOOD_IPV6_PREFIX,
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
    /// Whether traffic to (IP protocol, destination port) is protected: the
    /// program's `protected`. Port 0 stands for "no port known" (a
    /// non-first fragment): protected when any port of the protocol is.
    pub fn protects(&self, protocol: u8, port: u16) -> bool {
        let (tcp, udp) = match &self.protect {
            Protect::All => return true,
            Protect::Ports { tcp, udp } => (tcp, udp),
        };
        let ranges = match protocol {
            6 => tcp,
            17 => udp,
            _ => return false,
        };
        if port == ANY_PORT {
            return !ranges.is_empty();
        }
        ranges.iter().any(|r| r.contains(&port))
    }

    /// The configuration word for these settings (epoch and exact-map
    /// presence left to the kernel side).
    fn kernel_config(&self) -> KernelConfig {
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
            epoch: 0,
            flags,
            flood_v6_prefix: u32::from(self.flood_ipv6_prefix),
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
    /// The same counters as `by_reason` for each attached interface: (label,
    /// counts by reason). The label is the interface's name, or the names
    /// joined by `+` for interfaces that share a counter slot
    /// ([`interface_slots`]).
    pub by_interface: Vec<(String, ReasonCounts)>,
}

/// Counts by reason name.
pub type ReasonCounts = Vec<(&'static str, u64)>;

/// The counter slots of attached interfaces given as (name, ifindex):
/// (label, slot), in the order given. The kernel counts each packet in slot
/// `iface_slot(ifindex)` (the low 10 bits of the index), so interfaces whose
/// indexes differ by a multiple of 1024 share a slot and their packets
/// cannot be told apart: such a slot is reported once, its label the names
/// joined by `+` (`eth0+eth1`), rather than the same counts twice.
pub(crate) fn interface_slots(interfaces: &[(String, u32)]) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for (name, ifindex) in interfaces {
        let slot = iface_slot(*ifindex);
        match out.iter_mut().find(|(_, s)| *s == slot) {
            Some((label, _)) => {
                label.push('+');
                label.push_str(name);
            }
            None => out.push((name.clone(), slot)),
        }
    }
    out
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
    /// The table in force in the kernel (once `table_stale` is false).
    table: CompiledTable,
    /// The kernel's table may not be `table` (just opened, or a write
    /// failed): the next change rebuilds and writes it.
    table_stale: bool,
    /// The kernel's exact maps may hold entries the lists do not (just
    /// opened): the next change compares them whole.
    exact_stale: bool,
}

impl Filter {
    /// Loads (or reuses from `pin_dir`) the program and its maps. Nothing is
    /// attached yet and the kernel keeps its current rules until the first
    /// change, which replaces them all.
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
            table_stale: true,
            exact_stale: true,
        })
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    pub fn kernel_mut(&mut self) -> &mut Kernel {
        &mut self.kernel
    }

    /// The lists as they are (expired entries included until
    /// [`Filter::expire`] removes them).
    pub fn lists(&self) -> &Lists {
        &self.lists
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<AttachInfo, FilterError> {
        self.kernel.attach(interface, mode)
    }

    /// Detaches the program from `interface` (its pinned links); whether it
    /// was attached.
    pub fn detach_interface(&mut self, interface: &str) -> Result<bool, FilterError> {
        self.kernel.detach_interface(interface)
    }

    /// What [`Filter::replace_all`] takes, as it is in force: to put it back
    /// when a later step of a reload fails.
    pub fn rules(&self) -> (Settings, Lists, Vec<(IpNet, u16)>, CountryPolicy) {
        (
            self.settings.clone(),
            self.lists.clone(),
            self.countries.clone(),
            self.policy.clone(),
        )
    }

    /// After attaching: frees the pins of older map layouts whose links were
    /// all taken over; returns (removed, kept because links remain).
    pub fn retire_old_layouts(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        self.kernel.retire_old_layouts()
    }

    /// Applies a batch of changes, all or nothing. The batch is worked out
    /// and the prefix table compiled before anything reaches the kernel
    /// (a table that cannot be built or an exact map that would overflow
    /// refuses the batch); then the exact deny entries are staged, the
    /// table written into the inactive buffer, and one store puts both in
    /// force. On a kernel error before that store, what was staged is
    /// undone and the rules in force stay as they were.
    ///
    /// Cost: a batch of single-address deny entries costs one map write per
    /// entry, whatever the size of the lists; any other entry (a prefix,
    /// bypass or allow entry), countries or policy rebuild the table.
    pub fn apply(&mut self, batch: &[Change]) -> Result<Applied, FilterError> {
        let now = monotonic_ns();
        let plan = batch::plan(&self.lists, batch, now);
        let rebuild =
            self.table_stale || plan.prefix_changed(&self.lists, &self.countries, &self.policy);
        let table = if rebuild {
            let countries = plan
                .countries
                .clone()
                .unwrap_or_else(|| self.countries.clone());
            let policy = plan.policy.clone().unwrap_or_else(|| self.policy.clone());
            let rules = self
                .lists
                .prefix_rules_with(&plan.touched, countries, policy, now);
            Some(rules::compile(&rules).map_err(|source| FilterError::Table { source })?)
        } else {
            None
        };
        let full = self.exact_stale || !self.kernel.exact_consistent();
        let targets = if full {
            self.kernel
                .exact_targets_for(&plan.all_exact(&self.lists, now))
        } else {
            plan.exact_targets(now)
        };
        // On an error, the active table buffer is untouched: `self.table`
        // is still the one in force.
        let written = self.kernel.apply(&targets, table.as_ref(), None)?;
        if full {
            self.kernel.mark_exact_consistent();
            self.exact_stale = false;
        }
        let mut applied = plan.applied;
        applied.table_rebuilt = table.is_some();
        applied.exact_written = written;
        if let Some(c) = plan.countries.clone() {
            self.countries = c;
        }
        if let Some(p) = plan.policy.clone() {
            self.policy = p;
        }
        if let Some(t) = table {
            self.table = t;
            self.table_stale = false;
        }
        plan.commit_lists(&mut self.lists);
        Ok(applied)
    }

    /// Replaces the whole state at once (start-up and reload): settings,
    /// lists, country table and policy. Validated and compiled before
    /// anything reaches the kernel; the rules are applied with one flip (the
    /// settings and protected ports are written just before it).
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
        let targets = self.kernel.exact_targets_for(&lists.exact_denies(now));
        self.kernel.apply(&targets, Some(&table), Some(&settings))?;
        self.kernel.mark_exact_consistent();
        self.exact_stale = false;
        self.settings = settings;
        self.lists = lists;
        self.countries = countries;
        self.policy = policy;
        self.table = table;
        self.table_stale = false;
        Ok(())
    }

    /// Adds entries to a list; a TTL makes them temporary (the kernel stops
    /// applying deny entries on time by itself). All or nothing.
    pub fn add(
        &mut self,
        kind: ListKind,
        nets: &[IpNet],
        ttl: Option<Duration>,
        origin: EntryOrigin,
    ) -> Result<Applied, FilterError> {
        let expires_ns = ttl.map_or(0, |t| {
            monotonic_ns().saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
        });
        let entries = nets.iter().map(|net| (*net, expires_ns, origin)).collect();
        self.apply(&[Change::Add { kind, entries }])
    }

    /// Removes the entries of these networks (every origin); returns how
    /// many networks had an entry in force.
    pub fn remove(&mut self, kind: ListKind, nets: &[IpNet]) -> Result<usize, FilterError> {
        let applied = self.apply(&[Change::Remove {
            kind,
            nets: nets.to_vec(),
        }])?;
        Ok(nets.len() - applied.not_found)
    }

    /// The live (not expired) entries of a list, one per network and
    /// origin, in address order.
    pub fn list(&self, kind: ListKind) -> Vec<ListEntry> {
        self.lists.live(kind, monotonic_ns())
    }

    /// Replaces the country table atomically (built aside, one flip).
    pub fn set_countries(&mut self, countries: Vec<(IpNet, u16)>) -> Result<(), FilterError> {
        self.apply(&[Change::Countries(countries)]).map(|_| ())
    }

    pub fn set_country_policy(&mut self, policy: CountryPolicy) -> Result<(), FilterError> {
        self.apply(&[Change::CountryPolicy(policy)]).map(|_| ())
    }

    /// Housekeeping, every second: removes expired entries from the lists
    /// and the exact maps, rebuilds the table when a prefix entry expired
    /// (the kernel ends deny prefixes itself; bypass and allow entries end
    /// here), and deletes retired exact entries. Returns how many entries
    /// expired.
    pub fn expire(&mut self) -> Result<usize, FilterError> {
        self.expire_entries().map(|gone| gone.len())
    }

    /// [`Filter::expire`], returning the entries that expired (for the log:
    /// an automatic ban that ends is a `ban_removed` event).
    pub fn expire_entries(&mut self) -> Result<Vec<(ListKind, IpNet, EntryOrigin)>, FilterError> {
        let now = monotonic_ns();
        let gone = self.lists.expire_entries(now);
        let exact: Vec<IpAddr> = gone
            .iter()
            .filter(|(kind, net, _)| lists::is_exact(*kind, net))
            .filter(|(kind, net, _)| self.lists.slots(*kind, net).effective(now).is_none())
            .map(|(_, net, _)| net.addr())
            .collect();
        let prefix = gone
            .iter()
            .any(|(kind, net, _)| !lists::is_exact(*kind, net));
        if prefix {
            let rules = self
                .lists
                .prefix_rules(self.countries.clone(), self.policy.clone(), now);
            let table = rules::compile(&rules).map_err(|source| FilterError::Table { source })?;
            if let Err(e) = self.kernel.apply(&[], Some(&table), None) {
                self.table_stale = true;
                return Err(e);
            }
            self.table = table;
            self.table_stale = false;
        }
        self.kernel.tidy_exact(&exact)?;
        Ok(gone)
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

#[cfg(test)]
mod slot_tests {
    use super::interface_slots;

    fn slots(interfaces: &[(&str, u32)]) -> Vec<(String, u32)> {
        let owned: Vec<(String, u32)> = interfaces
            .iter()
            .map(|(n, i)| ((*n).to_string(), *i))
            .collect();
        interface_slots(&owned)
    }

    #[test]
    fn each_interface_has_the_slot_of_its_index() {
        assert_eq!(
            slots(&[("eth0", 2), ("eth1", 3), ("veth9", 1023)]),
            vec![
                ("eth0".to_string(), 2),
                ("eth1".to_string(), 3),
                ("veth9".to_string(), 1023)
            ]
        );
        assert_eq!(slots(&[("big", 1024 + 5)]), vec![("big".to_string(), 5)]);
        assert!(slots(&[]).is_empty());
    }

    #[test]
    fn interfaces_sharing_a_slot_are_reported_once_under_joined_names() {
        assert_eq!(
            slots(&[("eth0", 2), ("eth1", 3), ("vlan7", 1026), ("x", 2050)]),
            vec![("eth0+vlan7+x".to_string(), 2), ("eth1".to_string(), 3)]
        );
        // Index 1024 wraps to slot 0, which no real interface has otherwise.
        assert_eq!(
            slots(&[("a", 1024), ("b", 2048)]),
            vec![("a+b".to_string(), 0)]
        );
    }
}
