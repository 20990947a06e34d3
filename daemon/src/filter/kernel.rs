//! The aya side: loading with pins, attaching through pinned links, and
//! writing maps.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fmt,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, MapInfo, PerCpuArray, RingBuf},
    programs::{
        ProgramError, TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use rampart_common::{
    ALL_MAPS, ANY_PORT, COUNTRY_SLOTS, Class, Config as KernelConfig, DenyEntry, DropEvent,
    MAP_CLASSES, MAP_CONFIG, MAP_DENY_V4, MAP_DENY_V6, MAP_EVENTS, MAP_NODES, MAP_PORTS, MAP_STATS,
    MAX_CLASSES, NODES_PER_BUFFER, Node, PORT_WORDS, PROGRAM_NAME, REASON_NAMES, Stats, port_slot,
};

use rampart_common::config_flags;

use super::{Counters, FilterError, Protect, Settings};
use crate::rules::CompiledTable;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rampart-filter"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SYS_FS_BPF: &str = "/sys/fs/bpf";

/// How the program is attached. There is no silent fallback from one to
/// the other: the kernel either gives the mode asked for or attaching fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// In the driver (native XDP).
    #[default]
    Native,
    /// Generic XDP, in the kernel's network stack.
    Skb,
}

impl AttachMode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What attaching did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachInfo {
    pub interface: String,
    pub mode: AttachMode,
    /// A pinned link from an earlier run was reused and its program
    /// replaced in place (no gap).
    pub reused: bool,
}

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

fn link_err(path: &Path) -> impl FnOnce(aya::programs::links::LinkError) -> FilterError + '_ {
    move |e| FilterError::PinnedLink {
        path: path.to_path_buf(),
        source: Box::new(e),
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
fn ensure_bpffs(pin_dir: &Path) -> Result<(), FilterError> {
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
    config: Array<MapData, KernelConfig>,
    ports: Array<MapData, u64>,
    nodes: Array<MapData, Node>,
    classes: Array<MapData, Class>,
    deny_v4: HashMap<MapData, [u8; 4], DenyEntry>,
    deny_v6: HashMap<MapData, [u8; 16], DenyEntry>,
    stats: PerCpuArray<MapData, Stats>,
    events: Option<RingBuf<MapData>>,
    /// What each table buffer holds, when known (not after a restart).
    shadow_nodes: [Option<Vec<Node>>; 2],
    shadow_classes: [Option<Vec<Class>>; 2],
    shadow_ports: Option<Vec<u64>>,
    /// The exact deny entries in the kernel maps.
    exact: StdHashMap<IpAddr, u64>,
    max_deny_entries: u32,
}

impl Kernel {
    /// Loads the program, reusing maps pinned in `pin_dir` (created and
    /// pinned there when absent). The exact deny maps hold
    /// `max_deny_entries` addresses per family; pinned maps of another size
    /// are refused (aya would reuse them silently).
    pub fn open(pin_dir: &Path, max_deny_entries: u32) -> Result<Self, FilterError> {
        ensure_bpffs(pin_dir)?;
        std::fs::create_dir_all(pin_dir).map_err(io_err(pin_dir))?;
        for name in [MAP_DENY_V4, MAP_DENY_V6] {
            let pin = pin_dir.join(name);
            if pin.exists() {
                let info = MapInfo::from_pin(&pin).map_err(map_err(name, "inspect pin"))?;
                if info.max_entries() != max_deny_entries {
                    return Err(FilterError::PinnedCapacity {
                        map: name,
                        pinned: info.max_entries(),
                        wanted: max_deny_entries,
                    });
                }
            }
        }
        let pins: Vec<(&'static str, PathBuf)> =
            ALL_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(MAP_DENY_V4, max_deny_entries)
            .map_max_entries(MAP_DENY_V6, max_deny_entries);
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|source| FilterError::Load {
            source: Box::new(source),
        })?;
        xdp(&mut ebpf)?.load().map_err(prog_err("load"))?;

        let deny_v4: HashMap<MapData, [u8; 4], DenyEntry> = take(&mut ebpf, MAP_DENY_V4)?;
        let deny_v6: HashMap<MapData, [u8; 16], DenyEntry> = take(&mut ebpf, MAP_DENY_V6)?;
        let mut exact = StdHashMap::new();
        for item in deny_v4.iter() {
            let (k, v) = item.map_err(map_err(MAP_DENY_V4, "read"))?;
            exact.insert(IpAddr::from(k), v.expires_ns);
        }
        for item in deny_v6.iter() {
            let (k, v) = item.map_err(map_err(MAP_DENY_V6, "read"))?;
            exact.insert(IpAddr::from(k), v.expires_ns);
        }
        Ok(Self {
            config: take(&mut ebpf, MAP_CONFIG)?,
            ports: take(&mut ebpf, MAP_PORTS)?,
            nodes: take(&mut ebpf, MAP_NODES)?,
            classes: take(&mut ebpf, MAP_CLASSES)?,
            stats: take(&mut ebpf, MAP_STATS)?,
            events: Some(take(&mut ebpf, MAP_EVENTS)?),
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            deny_v4,
            deny_v6,
            shadow_nodes: [None, None],
            shadow_classes: [None, None],
            shadow_ports: None,
            exact,
            max_deny_entries,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn current_config(&self) -> Result<KernelConfig, FilterError> {
        self.config.get(&0, 0).map_err(map_err(MAP_CONFIG, "read"))
    }

    fn link_pin(&self, interface: &str, mode: AttachMode) -> PathBuf {
        self.pin_dir
            .join(format!("link_{interface}_{}", mode.name()))
    }

    /// Attaches to `interface`. When a pinned link for it exists, the
    /// program behind it is replaced atomically instead.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<AttachInfo, FilterError> {
        let pin = self.link_pin(interface, mode);
        let other = match mode {
            AttachMode::Native => AttachMode::Skb,
            AttachMode::Skb => AttachMode::Native,
        };
        let other_pin = self.link_pin(interface, other);
        if other_pin.exists() {
            return Err(FilterError::PinnedLink {
                path: other_pin,
                source: format!(
                    "{interface} is attached in {other} mode; detach first (rampartd --detach) to change the mode"
                )
                .into(),
            });
        }
        if !interface_exists(interface) {
            return Err(FilterError::UnknownInterface {
                name: interface.to_string(),
            });
        }
        let info = |reused| AttachInfo {
            interface: interface.to_string(),
            mode,
            reused,
        };
        if pin.exists() {
            match self.replace_pinned(&pin) {
                Ok(()) => return Ok(info(true)),
                // A link whose interface went away and came back is defunct.
                Err(e) => {
                    tracing::warn!(error = %e, path = %pin.display(), "pinned link not reusable; attaching afresh");
                    if let Ok(p) = PinnedLink::from_pin(&pin) {
                        let _ = p.unpin();
                    }
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let prog = xdp(&mut self.ebpf)?;
        let id = prog
            .attach(interface, mode.xdp_mode())
            .map_err(|source| FilterError::Attach {
                interface: interface.to_string(),
                mode,
                source: Box::new(source),
            })?;
        let link = prog.take_link(id).map_err(prog_err("take link"))?;
        let fd_link: FdLink = link.try_into().map_err(link_err(&pin))?;
        fd_link.pin(&pin).map_err(|e| FilterError::PinnedLink {
            path: pin.clone(),
            source: Box::new(e),
        })?;
        Ok(info(false))
    }

    fn replace_pinned(&mut self, pin: &Path) -> Result<(), FilterError> {
        let pinned = PinnedLink::from_pin(pin).map_err(link_err(pin))?;
        let fd_link: FdLink = pinned.into();
        let link = XdpLink::try_from(fd_link).map_err(link_err(pin))?;
        let prog = xdp(&mut self.ebpf)?;
        let id = prog
            .attach_to_link(link)
            .map_err(prog_err("replace the program of a pinned link"))?;
        // The pin keeps the link alive; this process's fd can go.
        drop(prog.take_link(id).map_err(prog_err("take link"))?);
        Ok(())
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

    /// Writes `table` into the inactive buffer, then makes it active with
    /// one write of the configuration (which also carries `settings`).
    pub fn write_table(
        &mut self,
        table: &CompiledTable,
        settings: &Settings,
    ) -> Result<(), FilterError> {
        let active = self.current_config()?.active & 1;
        let target = 1 - active;
        let t = target as usize;
        for (i, class) in table.classes.iter().enumerate() {
            let known = self.shadow_classes[t].as_ref().and_then(|s| s.get(i));
            if known != Some(class) {
                self.classes
                    .set(target * MAX_CLASSES + i as u32, *class, 0)
                    .map_err(map_err(MAP_CLASSES, "write"))?;
            }
        }
        for (i, node) in table.nodes.iter().enumerate() {
            let known = self.shadow_nodes[t].as_ref().and_then(|s| s.get(i));
            if known.map(|k| k.entries) != Some(node.entries) {
                self.nodes
                    .set(target * NODES_PER_BUFFER + i as u32, *node, 0)
                    .map_err(map_err(MAP_NODES, "write"))?;
            }
        }
        let mut cfg = settings.kernel_config(target);
        cfg.flags |= self.exact_presence();
        self.config
            .set(0, cfg, 0)
            .map_err(map_err(MAP_CONFIG, "write"))?;
        self.shadow_classes[t] = Some(table.classes.clone());
        self.shadow_nodes[t] = Some(table.nodes.clone());
        Ok(())
    }

    /// `config_flags::EXACT_V4 | EXACT_V6` for the families with entries.
    fn exact_presence(&self) -> u32 {
        let mut flags = 0;
        for a in self.exact.keys() {
            flags |= match a {
                IpAddr::V4(_) => config_flags::EXACT_V4,
                IpAddr::V6(_) => config_flags::EXACT_V6,
            };
            if flags == config_flags::EXACT_V4 | config_flags::EXACT_V6 {
                break;
            }
        }
        flags
    }

    /// Tells the program which exact maps have entries (it skips the lookup
    /// in an empty one).
    fn publish_presence(&mut self) -> Result<(), FilterError> {
        let mut cfg = self.current_config()?;
        let both = config_flags::EXACT_V4 | config_flags::EXACT_V6;
        let flags = (cfg.flags & !both) | self.exact_presence();
        if flags != cfg.flags {
            cfg.flags = flags;
            self.config
                .set(0, cfg, 0)
                .map_err(map_err(MAP_CONFIG, "write"))?;
        }
        Ok(())
    }

    /// Makes the exact deny maps hold exactly `want`: inserts first, then
    /// deletes. If an insert fails, the inserts made so far are undone.
    pub fn sync_exact(&mut self, want: &[(IpAddr, u64)]) -> Result<(), FilterError> {
        self.sync_exact_entries(want)?;
        self.publish_presence()
    }

    fn sync_exact_entries(&mut self, want: &[(IpAddr, u64)]) -> Result<(), FilterError> {
        let mut inserted: Vec<IpAddr> = Vec::new();
        for (addr, expires) in want {
            if self.exact.get(addr) == Some(expires) {
                continue;
            }
            let fresh = !self.exact.contains_key(addr);
            if let Err(e) = self.put_exact(*addr, *expires) {
                for a in inserted {
                    let _ = self.del_exact(a);
                }
                return Err(e);
            }
            if fresh {
                inserted.push(*addr);
            }
        }
        // New entries are visible to the program before stale ones go.
        self.publish_presence()?;
        let want: HashSet<IpAddr> = want.iter().map(|(a, _)| *a).collect();
        let stale: Vec<IpAddr> = self
            .exact
            .keys()
            .filter(|a| !want.contains(a))
            .copied()
            .collect();
        for a in stale {
            self.del_exact(a)?;
        }
        Ok(())
    }

    fn put_exact(&mut self, addr: IpAddr, expires_ns: u64) -> Result<(), FilterError> {
        let v = DenyEntry { expires_ns };
        let (r, family, name) = match addr {
            IpAddr::V4(a) => (self.deny_v4.insert(a.octets(), v, 0), 4, MAP_DENY_V4),
            IpAddr::V6(a) => (self.deny_v6.insert(a.octets(), v, 0), 6, MAP_DENY_V6),
        };
        match r {
            Ok(()) => {
                self.exact.insert(addr, expires_ns);
                Ok(())
            }
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

    fn del_exact(&mut self, addr: IpAddr) -> Result<(), FilterError> {
        let (r, name) = match addr {
            IpAddr::V4(a) => (self.deny_v4.remove(&a.octets()), MAP_DENY_V4),
            IpAddr::V6(a) => (self.deny_v6.remove(&a.octets()), MAP_DENY_V6),
        };
        match r {
            Ok(()) | Err(MapError::KeyNotFound) => {
                self.exact.remove(&addr);
                Ok(())
            }
            Err(e) => Err(map_err(name, "delete")(e)),
        }
    }

    /// Capacity of each exact deny map.
    pub fn max_deny_entries(&self) -> u32 {
        self.max_deny_entries
    }

    /// Number of exact deny entries in the kernel.
    pub fn exact_len(&self) -> usize {
        self.exact.len()
    }

    pub fn counters(&self) -> Result<Counters, FilterError> {
        let per_cpu = self.stats.get(&0, 0).map_err(map_err(MAP_STATS, "read"))?;
        let mut reasons = [0u64; REASON_NAMES.len()];
        let mut countries = vec![0u64; COUNTRY_SLOTS as usize];
        for cpu in per_cpu.iter() {
            for (sum, v) in reasons.iter_mut().zip(cpu.reasons.iter()) {
                *sum += v;
            }
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
        })
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

pub(crate) fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Removes every link and map pinned under `pin_dir`: the filter stops.
/// Returns the detached `interface_mode` names.
pub fn detach(pin_dir: &Path) -> Result<Vec<String>, FilterError> {
    let mut detached = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(detached),
        Err(e) => return Err(io_err(pin_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(pin_dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(link) = name.strip_prefix("link_") {
            // Unpinning drops the last reference: the kernel detaches.
            if let Ok(pinned) = PinnedLink::from_pin(&path) {
                let _ = pinned.unpin();
            }
            let _ = std::fs::remove_file(&path);
            detached.push(link.to_string());
        }
    }
    for m in ALL_MAPS {
        let p = pin_dir.join(m);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p)(e)),
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(pin_dir)(e)),
    }
    Ok(detached)
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
