//! The aya side: loading with pins, attaching through pinned links
//! (`links`), and writing maps.

mod links;

use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, MapInfo, PerCpuArray, RingBuf},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
};
use rampart_common::{
    ALL_MAPS, ANY_PORT, COUNTRY_SLOTS, Class, DenyEntry, DropEvent, IFACE_SLOTS, IfaceStats,
    MAP_CLASSES, MAP_CONFIG, MAP_DENY_V4, MAP_DENY_V6, MAP_EVENTS, MAP_IFACE_STATS, MAP_NODES,
    MAP_PORTS, MAP_STATS, MAX_CLASSES, NODES_PER_BUFFER, Node, PORT_WORDS, PROGRAM_NAME,
    REASON_NAMES, Stats, config_flags, port_slot,
};

use super::{
    Counters, FilterError, Protect, ReasonCounts, Settings,
    config_map::ConfigMap,
    exact::{DenyMaps, ExactSet, RETIRE_GRACE_NS},
    interface_slots, monotonic_ns,
};
use crate::rules::CompiledTable;

pub use links::{AttachInfo, AttachMode, detach, detach_old_layouts};
pub(crate) use links::{interface_exists, interface_index};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rampart-filter"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SYS_FS_BPF: &str = "/sys/fs/bpf";

fn map_err(name: &'static str, action: &'static str) -> impl FnOnce(MapError) -> FilterError {
    move |source| FilterError::Map {
        name,
        action,
        source: Box::new(source),
    }
}

fn prog_err(action: &'static str) -> impl FnOnce(ProgramError) -> FilterError {
    move |source| FilterError::Program {
        action,
        source: Box::new(source),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FilterError + '_ {
    move |source| FilterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, FilterError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| FilterError::Map {
        name,
        action: "find",
        source: Box::new(MapError::InvalidName {
            name: name.to_string(),
        }),
    })?;
    T::try_from(map).map_err(map_err(name, "open"))
}

/// Mounts bpffs at /sys/fs/bpf when the pin directory is below it and it is
/// not mounted yet (a fresh host).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), FilterError> {
    let base = Path::new(SYS_FS_BPF);
    if !pin_dir.starts_with(base) || is_bpffs(base) {
        return Ok(());
    }
    std::fs::create_dir_all(base).map_err(io_err(base))?;
    let fstype = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(FilterError::MountBpffs {
            path: base.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// The loaded program and its maps.
pub struct Kernel {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    config: ConfigMap,
    ports: Array<MapData, u64>,
    nodes: Array<MapData, Node>,
    classes: Array<MapData, Class>,
    deny: KernelDenyMaps,
    /// What the exact deny maps hold, and the generation in force.
    exact: ExactSet,
    stats: PerCpuArray<MapData, Stats>,
    iface_stats: PerCpuArray<MapData, IfaceStats>,
    events: Option<RingBuf<MapData>>,
    /// What each table buffer holds, when known (not after a restart, nor
    /// after a write of that buffer failed).
    shadow_nodes: [Option<Vec<Node>>; 2],
    shadow_classes: [Option<Vec<Class>>; 2],
    shadow_ports: Option<Vec<u64>>,
}

/// The two exact deny maps. They are created with room for twice
/// `max_deny_entries` (memory is used per entry only: BPF_F_NO_PREALLOC), so
/// that a batch can stage a whole new set next to the one in force.
struct KernelDenyMaps {
    v4: HashMap<MapData, [u8; 4], DenyEntry>,
    v6: HashMap<MapData, [u8; 16], DenyEntry>,
    max_deny_entries: u32,
}

impl DenyMaps for KernelDenyMaps {
    fn put(&mut self, addr: IpAddr, entry: DenyEntry) -> Result<(), FilterError> {
        let (r, family, name) = match addr {
            IpAddr::V4(a) => (self.v4.insert(a.octets(), entry, 0), 4, MAP_DENY_V4),
            IpAddr::V6(a) => (self.v6.insert(a.octets(), entry, 0), 6, MAP_DENY_V6),
        };
        match r {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e))
                if matches!(
                    e.io_error.raw_os_error(),
                    Some(libc::E2BIG) | Some(libc::ENOSPC)
                ) =>
            {
                Err(FilterError::DenyMapFull {
                    family,
                    capacity: self.max_deny_entries,
                })
            }
            Err(e) => Err(map_err(name, "write")(e)),
        }
    }

    fn delete(&mut self, addr: IpAddr) -> Result<(), FilterError> {
        let (r, name) = match addr {
            IpAddr::V4(a) => (self.v4.remove(&a.octets()), MAP_DENY_V4),
            IpAddr::V6(a) => (self.v6.remove(&a.octets()), MAP_DENY_V6),
        };
        match r {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(map_err(name, "delete")(e)),
        }
    }
}

/// Entries the kernel's exact maps are created for, per family.
fn map_slots(max_deny_entries: u32) -> u32 {
    max_deny_entries.saturating_mul(2)
}

impl Kernel {
    /// Loads the program, reusing maps pinned in `pin_dir` (created and
    /// pinned there when absent). The exact deny maps hold
    /// `max_deny_entries` addresses per family; pinned maps of another size
    /// are refused (aya would reuse them silently). Nothing is written: the
    /// kernel keeps enforcing what it holds until the first change.
    pub fn open(pin_dir: &Path, max_deny_entries: u32) -> Result<Self, FilterError> {
        ensure_bpffs(pin_dir)?;
        std::fs::create_dir_all(pin_dir).map_err(io_err(pin_dir))?;
        let slots = map_slots(max_deny_entries);
        for name in [MAP_DENY_V4, MAP_DENY_V6] {
            let pin = pin_dir.join(name);
            if pin.exists() {
                let info = MapInfo::from_pin(&pin).map_err(map_err(name, "inspect pin"))?;
                if info.max_entries() != slots {
                    return Err(FilterError::PinnedCapacity {
                        map: name,
                        pinned: info.max_entries() / 2,
                        wanted: max_deny_entries,
                    });
                }
            }
        }
        let pins: Vec<(&'static str, PathBuf)> =
            ALL_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(MAP_DENY_V4, slots)
            .map_max_entries(MAP_DENY_V6, slots);
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|source| FilterError::Load {
            source: Box::new(source),
        })?;
        xdp(&mut ebpf)?.load().map_err(prog_err("load"))?;

        let deny_v4: HashMap<MapData, [u8; 4], DenyEntry> = take(&mut ebpf, MAP_DENY_V4)?;
        let deny_v6: HashMap<MapData, [u8; 16], DenyEntry> = take(&mut ebpf, MAP_DENY_V6)?;
        let mut entries = StdHashMap::new();
        for item in deny_v4.iter() {
            let (k, v) = item.map_err(map_err(MAP_DENY_V4, "read"))?;
            entries.insert(IpAddr::from(k), v);
        }
        for item in deny_v6.iter() {
            let (k, v) = item.map_err(map_err(MAP_DENY_V6, "read"))?;
            entries.insert(IpAddr::from(k), v);
        }
        let config = match ebpf.take_map(MAP_CONFIG) {
            Some(Map::Array(data)) => ConfigMap::new(data)?,
            _ => {
                return Err(FilterError::Map {
                    name: MAP_CONFIG,
                    action: "find",
                    source: Box::new(MapError::InvalidName {
                        name: MAP_CONFIG.to_string(),
                    }),
                });
            }
        };
        let exact = ExactSet::new(entries, config.read().exact_gen(), max_deny_entries);
        Ok(Self {
            config,
            ports: take(&mut ebpf, MAP_PORTS)?,
            nodes: take(&mut ebpf, MAP_NODES)?,
            classes: take(&mut ebpf, MAP_CLASSES)?,
            stats: take(&mut ebpf, MAP_STATS)?,
            iface_stats: take(&mut ebpf, MAP_IFACE_STATS)?,
            events: Some(take(&mut ebpf, MAP_EVENTS)?),
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            deny: KernelDenyMaps {
                v4: deny_v4,
                v6: deny_v6,
                max_deny_entries,
            },
            exact,
            shadow_nodes: [None, None],
            shadow_classes: [None, None],
            shadow_ports: None,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Runs the program `repeat` times on `packet` (BPF_PROG_TEST_RUN):
    /// (XDP action, average duration per run).
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<(u32, Duration), FilterError> {
        let prog: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or(FilterError::Program {
                action: "find",
                source: Box::new(ProgramError::NotLoaded),
            })?
            .try_into()
            .map_err(prog_err("find"))?;
        let opts = TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..Default::default()
        };
        let r = prog.test_run(opts).map_err(prog_err("test run"))?;
        Ok((r.return_value, r.duration))
    }

    /// Writes the protected-port bitmap.
    pub fn set_ports(&mut self, protect: &Protect) -> Result<(), FilterError> {
        let mut words = vec![0u64; PORT_WORDS as usize];
        if let Protect::Ports { tcp, udp } = protect {
            for (is_udp, ranges) in [(false, tcp), (true, udp)] {
                for r in ranges {
                    for port in r.clone() {
                        let (w, b) = port_slot(is_udp, port);
                        words[w as usize] |= b;
                    }
                    let (w, b) = port_slot(is_udp, ANY_PORT);
                    words[w as usize] |= b;
                }
            }
        }
        for (i, w) in words.iter().enumerate() {
            let known = self.shadow_ports.as_ref().and_then(|s| s.get(i));
            if known != Some(w) {
                self.ports
                    .set(i as u32, *w, 0)
                    .map_err(map_err(MAP_PORTS, "write"))?;
            }
        }
        self.shadow_ports = Some(words);
        Ok(())
    }

    /// Applies a change with one flip of the configuration's epoch: exact
    /// deny `targets` (address, expiry or None for no entry) staged for the
    /// next generation, `table` written into the inactive buffer, and
    /// `settings`. On an error before the flip, what was staged is undone
    /// and the rules in force stay as they were (the protected ports
    /// excepted: they are not double-buffered). Returns the exact entries
    /// written.
    pub(crate) fn apply(
        &mut self,
        targets: &[(IpAddr, Option<u64>)],
        table: Option<&CompiledTable>,
        settings: Option<&Settings>,
    ) -> Result<usize, FilterError> {
        self.prepare_exact()?;
        let needs = self.exact.check(targets)?;
        if !self.exact.has_room(&needs) {
            self.reap_all()?;
        }
        let staged = self
            .exact
            .stage(&mut self.deny, targets, needs, monotonic_ns())?;
        let current = self.config.read();
        let mut active = current.active();
        if let Some(table) = table {
            match self.write_buffer(1 - active, table) {
                Ok(()) => active = 1 - active,
                Err(e) => {
                    self.exact.abort(&mut self.deny, staged);
                    return Err(e);
                }
            }
        }
        let presence = config_flags::EXACT_V4 | config_flags::EXACT_V6;
        if let Some(settings) = settings {
            if let Err(e) = self.set_ports(&settings.protect) {
                self.exact.abort(&mut self.deny, staged);
                return Err(e);
            }
            let mut cfg = settings.kernel_config();
            cfg.flags |= self.exact.presence();
            self.config.write_settings(&cfg);
        } else {
            // Staged entries may be the first of their family: the program
            // must look them up from the flip on.
            self.config
                .set_flags((current.flags & !presence) | self.exact.presence());
        }
        let written = staged.written();
        if staged.is_empty() {
            self.exact.abort(&mut self.deny, staged);
            if table.is_some() {
                self.config.flip(active, self.exact.generation());
            }
        } else {
            self.config.flip(active, staged.next_gen());
            self.exact.commit(staged, monotonic_ns());
        }
        Ok(written)
    }

    /// Before staging: deletes dead exact entries whose grace is over, and
    /// starts the generation count over when it is exhausted.
    fn prepare_exact(&mut self) -> Result<(), FilterError> {
        self.exact.reap(
            &mut self.deny,
            monotonic_ns().saturating_sub(RETIRE_GRACE_NS),
        )?;
        if self.exact.needs_rebase() {
            self.reap_all()?;
            self.exact.rebase(&mut self.deny)?;
            let active = self.config.read().active();
            self.config.flip(active, 0);
            self.exact.rebased();
        }
        Ok(())
    }

    /// Deletes every dead exact entry, waiting for the grace of the most
    /// recently retired ones (at most [`RETIRE_GRACE_NS`]).
    fn reap_all(&mut self) -> Result<(), FilterError> {
        if let Some(newest) = self.exact.newest_dead() {
            let ready = newest.saturating_add(RETIRE_GRACE_NS);
            let now = monotonic_ns();
            if ready > now {
                std::thread::sleep(Duration::from_nanos(ready - now));
            }
        }
        self.exact.reap(
            &mut self.deny,
            monotonic_ns().saturating_sub(RETIRE_GRACE_NS),
        )?;
        self.publish_presence();
        Ok(())
    }

    /// Housekeeping (every second): deletes the exact entries of `expired`
    /// addresses whose time is over, and retired entries whose grace is.
    /// No verdict changes: the kernel ignores both already.
    pub(crate) fn tidy_exact(&mut self, expired: &[IpAddr]) -> Result<usize, FilterError> {
        let now = monotonic_ns();
        let n = self.exact.delete_expired(&mut self.deny, expired, now)?;
        self.exact
            .reap(&mut self.deny, now.saturating_sub(RETIRE_GRACE_NS))?;
        self.publish_presence();
        Ok(n)
    }

    /// Tells the program which exact maps hold entries (it skips the lookup
    /// in an empty one).
    fn publish_presence(&mut self) {
        let both = config_flags::EXACT_V4 | config_flags::EXACT_V6;
        let flags = self.config.read().flags;
        let wanted = (flags & !both) | self.exact.presence();
        if wanted != flags {
            self.config.set_flags(wanted);
        }
    }

    /// Writes `table` into buffer `target` (only what differs from what
    /// the buffer is known to hold).
    fn write_buffer(&mut self, target: u32, table: &CompiledTable) -> Result<(), FilterError> {
        let t = target as usize;
        // Unknown until the write completes.
        let known_classes = self.shadow_classes[t].take();
        let known_nodes = self.shadow_nodes[t].take();
        for (i, class) in table.classes.iter().enumerate() {
            let known = known_classes.as_ref().and_then(|s| s.get(i));
            if known != Some(class) {
                self.classes
                    .set(target * MAX_CLASSES + i as u32, *class, 0)
                    .map_err(map_err(MAP_CLASSES, "write"))?;
            }
        }
        for (i, node) in table.nodes.iter().enumerate() {
            let known = known_nodes.as_ref().and_then(|s| s.get(i));
            if known.map(|k| k.entries) != Some(node.entries) {
                self.nodes
                    .set(target * NODES_PER_BUFFER + i as u32, *node, 0)
                    .map_err(map_err(MAP_NODES, "write"))?;
            }
        }
        self.shadow_classes[t] = Some(table.classes.clone());
        self.shadow_nodes[t] = Some(table.nodes.clone());
        Ok(())
    }

    /// Exact deny targets that make the maps hold exactly `desired`
    /// (address, expiry).
    pub(crate) fn exact_targets_for(
        &self,
        desired: &[(IpAddr, u64)],
    ) -> Vec<(IpAddr, Option<u64>)> {
        self.exact.full_targets(desired)
    }

    /// The exact deny entry the program applies to `addr` at `now`.
    pub(crate) fn exact_applying(&self, addr: IpAddr, now: u64) -> Option<DenyEntry> {
        self.exact.applying(addr, now)
    }

    /// False when an earlier failure may have left the exact maps different
    /// from the lists (the next change compares them whole).
    pub(crate) fn exact_consistent(&self) -> bool {
        self.exact.consistent()
    }

    pub(crate) fn mark_exact_consistent(&mut self) {
        self.exact.mark_consistent();
    }

    /// The exact generation in force.
    pub fn exact_generation(&self) -> u32 {
        self.config.read().exact_gen()
    }

    /// Entries in force allowed in each exact deny map
    /// (`filter.max_deny_entries`).
    pub fn max_deny_entries(&self) -> u32 {
        self.deny.max_deny_entries
    }

    /// Number of entries in the exact deny maps (retired ones not yet
    /// deleted included).
    pub fn exact_len(&self) -> usize {
        self.exact.stored()
    }

    pub fn counters(&self) -> Result<Counters, FilterError> {
        let per_cpu = self.stats.get(&0, 0).map_err(map_err(MAP_STATS, "read"))?;
        // The program counts packets per interface slot only: each slot is read
        // once; the totals are the sum of every slot (interfaces detached since
        // included), the attached interfaces' series their own slots.
        let slots = (0..IFACE_SLOTS)
            .map(|slot| {
                let per_cpu =
                    (self.iface_stats.get(&slot, 0)).map_err(map_err(MAP_IFACE_STATS, "read"))?;
                let mut reasons = [0u64; REASON_NAMES.len()];
                for cpu in per_cpu.iter() {
                    for (sum, v) in reasons.iter_mut().zip(cpu.reasons.iter()) {
                        *sum += v;
                    }
                }
                Ok(reasons)
            })
            .collect::<Result<Vec<_>, FilterError>>()?;
        let mut reasons = [0u64; REASON_NAMES.len()];
        for slot in &slots {
            for (sum, v) in reasons.iter_mut().zip(slot) {
                *sum += v;
            }
        }
        let mut countries = vec![0u64; COUNTRY_SLOTS as usize];
        for cpu in per_cpu.iter() {
            for (sum, v) in countries.iter_mut().zip(cpu.country_drops.iter()) {
                *sum += v;
            }
        }
        let by_reason = REASON_NAMES.iter().copied().zip(reasons).collect();
        let drops_by_country = countries
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0)
            .map(|(i, v)| {
                let code = rampart_common::country_code(i as u16).map_or_else(
                    || "??".to_string(),
                    |c| String::from_utf8_lossy(&c).into_owned(),
                );
                (code, *v)
            })
            .collect();
        Ok(Counters {
            by_reason,
            drops_by_country,
            by_interface: self.interface_counters(&slots),
        })
    }

    /// The reason counters of every attached interface (one pinned link per
    /// interface), by slot: interfaces sharing a slot come once, under their
    /// names joined by `+` ([`interface_slots`]). An interface that no longer
    /// exists is left out. `slots`: every slot's counts, by slot.
    fn interface_counters(
        &self,
        slots: &[[u64; REASON_NAMES.len()]],
    ) -> Vec<(String, ReasonCounts)> {
        let attached: Vec<(String, u32)> = self
            .attached_interfaces()
            .into_iter()
            .filter_map(|name| interface_index(&name).map(|i| (name, i)))
            .collect();
        interface_slots(&attached)
            .into_iter()
            .filter_map(|(label, slot)| {
                let reasons = slots.get(slot as usize)?;
                Some((label, REASON_NAMES.iter().copied().zip(*reasons).collect()))
            })
            .collect()
    }

    /// The drop-event ring buffer (it can be taken once).
    pub fn take_events(&mut self) -> Result<Events, FilterError> {
        self.events
            .take()
            .map(|ring| Events { ring })
            .ok_or(FilterError::Map {
                name: MAP_EVENTS,
                action: "take (already taken)",
                source: Box::new(MapError::InvalidName {
                    name: MAP_EVENTS.to_string(),
                }),
            })
    }
}

fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp, FilterError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or(FilterError::Program {
            action: "find",
            source: Box::new(ProgramError::NotLoaded),
        })?
        .try_into()
        .map_err(prog_err("find"))
}

/// The drop-event ring buffer.
pub struct Events {
    ring: RingBuf<MapData>,
}

impl Events {
    /// Every event waiting in the ring.
    pub fn drain(&mut self) -> Vec<DropEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= std::mem::size_of::<DropEvent>() {
                // SAFETY: the kernel wrote a DropEvent (repr(C), integers
                // only); read_unaligned copes with any alignment.
                let e = unsafe { (item.as_ptr() as *const DropEvent).read_unaligned() };
                out.push(e);
            }
        }
        out
    }
}

impl AsFd for Events {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for Events {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
