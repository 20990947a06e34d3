//! The binary layout shared by the XDP program (`rampart-filter-ebpf`) and the
//! daemon: map names, keys, values, reason codes and counter indexes.
//!
//! Every type here is `#[repr(C)]`, made of integers and fixed arrays only,
//! with explicit padding and a compile-time size check, because the kernel and
//! userspace read the same bytes. Byte order is in the field name (`_be`).
//! Changing anything here changes [`LAYOUT_VERSION`], which names the pin
//! directory: a daemon never reuses maps pinned by an incompatible build.
#![no_std]

/// Version of the map layout. Pins live under `<pin_root>/v<LAYOUT_VERSION>/`.
pub const LAYOUT_VERSION: u32 = 3;

// ---------------------------------------------------------------------------
// Map names (also the pin file names).
// ---------------------------------------------------------------------------

pub const MAP_CONFIG: &str = "RAMPART_CONFIG";
pub const MAP_PORTS: &str = "RAMPART_PORTS";
pub const MAP_NODES: &str = "RAMPART_NODES";
pub const MAP_CLASSES: &str = "RAMPART_CLASSES";
pub const MAP_DENY_V4: &str = "RAMPART_DENY_V4";
pub const MAP_DENY_V6: &str = "RAMPART_DENY_V6";
pub const MAP_FLOOD: &str = "RAMPART_FLOOD";
pub const MAP_STATS: &str = "RAMPART_STATS";
pub const MAP_IFACE_STATS: &str = "RAMPART_IFACE_STATS";
pub const MAP_EVENTS: &str = "RAMPART_EVENTS";
/// Every map the program declares, for pinning.
pub const ALL_MAPS: [&str; 10] = [
    MAP_CONFIG,
    MAP_PORTS,
    MAP_NODES,
    MAP_CLASSES,
    MAP_DENY_V4,
    MAP_DENY_V6,
    MAP_FLOOD,
    MAP_STATS,
    MAP_IFACE_STATS,
    MAP_EVENTS,
];
/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "rampart";

// ---------------------------------------------------------------------------
// The prefix table: a multibit trie shared by IPv4 and IPv6.
//
// Every prefix rule (bypass, deny CIDRs, allowlist, country) is folded by the
// daemon into one table whose leaves are *class ids*; a class says everything
// the kernel needs about a source. The trie is a pool of nodes of 256 `u16`
// entries (stride 8). Nodes 0..256 are the IPv4 root (node = first byte,
// entry = second byte), nodes 256..512 the IPv6 root, so the first 16 bits
// cost one array access; each further byte costs one more. The real country
// table answers an IPv4 lookup in at most three array accesses and an IPv6
// lookup in at most six, whatever the number of prefixes.
//
// The pool and the class table exist twice (buffers 0 and 1). The daemon
// writes the inactive buffer, then flips the active buffer in `Config::epoch`
// (together with the exact generation), so a change is applied in one step.
// ---------------------------------------------------------------------------

/// Entries per node (stride 8 bits).
pub const NODE_FANOUT: usize = 256;
/// Nodes per buffer. Two buffers are allocated.
pub const NODES_PER_BUFFER: u32 = 49_152;
/// First node of the IPv4 root.
pub const V4_ROOT: u32 = 0;
/// First node of the IPv6 root.
pub const V6_ROOT: u32 = 256;
/// First node available for inner nodes.
pub const FIRST_INNER_NODE: u32 = 512;
/// Entry values below this are class ids; values at or above are
/// `CHILD_BASE + node index`.
pub const CHILD_BASE: u16 = 8192;
/// Class ids per buffer (ids 0..MAX_CLASSES). Class 0 is "no rule matched".
pub const MAX_CLASSES: u32 = CHILD_BASE as u32;
/// Deepest walk: 2 root bytes + 14 more bytes of an IPv6 address.
pub const MAX_DEPTH: usize = 16;
/// Inner nodes available in one buffer.
pub const MAX_INNER_NODES: u32 = NODES_PER_BUFFER - FIRST_INNER_NODE;
/// Highest node index that fits in an entry.
const _: () = assert!(NODES_PER_BUFFER <= (u16::MAX - CHILD_BASE) as u32 + 1);

/// One node of the trie.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Node {
    pub entries: [u16; NODE_FANOUT],
}
const _: () = assert!(core::mem::size_of::<Node>() == 512);

/// Class flags.
pub mod class_flags {
    /// A bypass network: always pass.
    pub const BYPASS: u16 = 1 << 0;
    /// Covered by a deny CIDR (subject to `deny_expires_ns`).
    pub const DENY: u16 = 1 << 1;
    /// An allowlist is active and this source is not on it.
    pub const NOT_ALLOWLISTED: u16 = 1 << 2;
    /// The source's country is blocked (and it is not allowlisted).
    pub const COUNTRY_BLOCKED: u16 = 1 << 3;
    /// The source is on the allowlist (informational for the kernel).
    pub const ALLOWLISTED: u16 = 1 << 4;
}

/// What the kernel knows about a source once its class is found.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Class {
    /// `class_flags::*`.
    pub flags: u16,
    /// Country index (see [`country_index`]); 0 = unknown.
    pub country: u16,
    pub _pad: u32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) time at which the deny CIDR
    /// stops applying; 0 = never.
    pub deny_expires_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Class>() == 16);

/// Value of the exact-address deny maps.
///
/// An entry applies while the configuration's exact generation is inside its
/// window (`from_gen <= exact_gen < until_gen`) and it has not expired. A
/// batch of changes stages new entries with `from_gen` and retires old ones
/// with `until_gen` set to the next generation, then one write of
/// [`Config::epoch`] makes the whole batch apply at once.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct DenyEntry {
    /// CLOCK_MONOTONIC expiry; 0 = permanent.
    pub expires_ns: u64,
    /// First exact generation in which the entry applies.
    pub from_gen: u32,
    /// First exact generation in which it no longer applies;
    /// [`GEN_FOREVER`] = no end.
    pub until_gen: u32,
}
const _: () = assert!(core::mem::size_of::<DenyEntry>() == 16);

/// `DenyEntry::until_gen` of an entry that is not retired. The exact
/// generation itself never reaches it.
pub const GEN_FOREVER: u32 = u32::MAX;

impl DenyEntry {
    /// Whether the entry belongs to generation `exact_gen` (expiry aside).
    #[inline(always)]
    pub const fn in_window(&self, exact_gen: u32) -> bool {
        self.from_gen <= exact_gen && exact_gen < self.until_gen
    }

    /// Whether the entry applies at generation `exact_gen` and time `now`
    /// (CLOCK_MONOTONIC ns). The program checks the same two conditions.
    #[inline(always)]
    pub const fn applies(&self, exact_gen: u32, now: u64) -> bool {
        self.in_window(exact_gen) && (self.expires_ns == 0 || now < self.expires_ns)
    }
}

/// Capacity of each exact deny map (IPv4 and IPv6) in the object file; the
/// daemon sets the real size at load time (`filter.max_deny_entries`).
pub const MAX_EXACT_DENY: u32 = 131_072;

// ---------------------------------------------------------------------------
// Configuration (single-element array).
// ---------------------------------------------------------------------------

pub mod config_flags {
    /// Every packet is protected (scope `all`).
    pub const PROTECT_ALL: u32 = 1 << 0;
    /// Drop malformed IP packets (otherwise pass them).
    pub const DROP_MALFORMED: u32 = 1 << 1;
    /// Per-source flood limit enabled.
    pub const FLOOD: u32 = 1 << 2;
    /// Send sampled drop events.
    pub const EVENTS: u32 = 1 << 3;
    /// Dry run: count and report drops under their reason, but pass.
    pub const MONITOR: u32 = 1 << 4;
    /// The IPv4 exact deny map has entries (otherwise its lookup is skipped).
    pub const EXACT_V4: u32 = 1 << 5;
    /// The IPv6 exact deny map has entries.
    pub const EXACT_V6: u32 = 1 << 6;
}

/// Flags of the configuration map: userspace maps it into memory so that
/// [`Config::epoch`] is written with one atomic 8-byte store (a map update
/// through the bpf syscall is a `memcpy`, which promises no such thing).
pub const CONFIG_MAP_FLAGS: u32 = BPF_F_MMAPABLE;
/// `BPF_F_MMAPABLE` from the kernel's uapi.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The flip word: the active table buffer (0 or 1) in the low half and the
/// exact generation in the high half.
#[inline(always)]
pub const fn epoch(active: u32, exact_gen: u32) -> u64 {
    ((exact_gen as u64) << 32) | active as u64
}

#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Config {
    /// [`epoch`]: the active buffer of the prefix table and the exact
    /// generation, in one naturally aligned word so that one store by the
    /// daemon switches both and one load by the program reads both.
    pub epoch: u64,
    /// `config_flags::*`.
    pub flags: u32,
    /// Flood limit: the length of the IPv6 prefix counted as one source
    /// (32..=128; `[filter.flood] ipv6_prefix`). 0, the value of a
    /// configuration written before this field existed (it was padding),
    /// counts per address like 128, so that maps pinned by an older daemon
    /// keep their meaning and the layout is unchanged.
    pub flood_v6_prefix: u32,
    /// Flood limit: nanoseconds of credit one packet costs (1e9 / pps).
    pub flood_interval_ns: u64,
    /// Flood limit: burst tolerance in nanoseconds ((burst - 1) * interval).
    pub flood_tolerance_ns: u64,
    /// Drop events: nanoseconds between events per CPU (1e9 / rate).
    pub event_interval_ns: u64,
    /// Drop events: burst tolerance in nanoseconds.
    pub event_tolerance_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 48);
const _: () = assert!(core::mem::offset_of!(Config, epoch) == 0);
const _: () = assert!(core::mem::offset_of!(Config, flood_v6_prefix) == 12);

impl Config {
    /// Active buffer of the prefix table: 0 or 1.
    #[inline(always)]
    pub const fn active(&self) -> u32 {
        (self.epoch as u32) & 1
    }

    /// The exact generation: which [`DenyEntry`] windows apply.
    #[inline(always)]
    pub const fn exact_gen(&self) -> u32 {
        (self.epoch >> 32) as u32
    }
}

// ---------------------------------------------------------------------------
// Protected ports: a bitmap, 1024 words of 64 bits for TCP then 1024 for UDP.
// ---------------------------------------------------------------------------

pub const PORT_WORDS: u32 = 2048;
pub const PORT_WORDS_UDP_BASE: u32 = 1024;
/// Port 0 is never a destination: its bit says "some port of this protocol
/// is protected", which decides for packets whose port cannot be read.
pub const ANY_PORT: u16 = 0;
/// Word index and bit of a (protocol, port) in the bitmap.
#[inline(always)]
pub const fn port_slot(udp: bool, port: u16) -> (u32, u64) {
    let base = if udp { PORT_WORDS_UDP_BASE } else { 0 };
    (base + (port as u32 >> 6), 1u64 << (port & 63))
}

// ---------------------------------------------------------------------------
// Flood limiter state (LRU hash keyed by source).
// ---------------------------------------------------------------------------

/// Flood map key: an IPv6 source masked to [`Config::flood_v6_prefix`] bits
/// (the rest zero), or an IPv4 address mapped (::ffff:a.b.c.d); the 16
/// address bytes in packet order, held as four words so the kernel copies
/// them with four loads.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct SourceKey {
    pub addr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<SourceKey>() == 16);

/// The flood-map key of an IPv6 source (`addr`: words in packet order): the
/// first `prefix` bits kept, the rest zero. 0 (see
/// [`Config::flood_v6_prefix`]) and 128 keep the whole address.
#[inline(always)]
pub const fn flood_v6_key(addr: [u32; 4], prefix: u32) -> SourceKey {
    let p = if prefix == 0 { 128 } else { prefix };
    SourceKey {
        addr: [
            keep_bits(addr[0], p),
            keep_bits(addr[1], p.saturating_sub(32)),
            keep_bits(addr[2], p.saturating_sub(64)),
            keep_bits(addr[3], p.saturating_sub(96)),
        ],
    }
}

/// The first `bits` bits (in network order) of a word in packet order.
#[inline(always)]
const fn keep_bits(word: u32, bits: u32) -> u32 {
    if bits >= 32 {
        word
    } else if bits == 0 {
        0
    } else {
        word & (u32::MAX << (32 - bits)).to_be()
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct FloodState {
    /// GCRA theoretical arrival time (bpf_ktime_get_ns clock).
    pub tat_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FloodState>() == 8);
pub const MAX_FLOOD_SOURCES: u32 = 262_144;

// ---------------------------------------------------------------------------
// Verdict reasons and counters. Each packet moves exactly one counter.
// ---------------------------------------------------------------------------

pub mod reason {
    /// Protected traffic that passed every check.
    pub const PASS: u32 = 0;
    /// Traffic outside the protected scope (after bypass and deny checks).
    pub const PASS_UNPROTECTED: u32 = 1;
    /// Source on the bypass list.
    pub const BYPASS: u32 = 2;
    /// Source on the deny list (exact address or CIDR).
    pub const DENY: u32 = 3;
    /// An allowlist is set and the source is not on it.
    pub const NOT_ALLOWLISTED: u32 = 4;
    /// The source's country is blocked.
    pub const COUNTRY: u32 = 5;
    /// The source exceeded the flood limit.
    pub const FLOOD: u32 = 6;
    /// Truncated or malformed Ethernet/VLAN/IP/L4 header.
    pub const MALFORMED: u32 = 7;
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
    pub const NOT_IP: u32 = 8;
    /// IPv6 neighbour discovery / router discovery: always passed.
    pub const NEIGHBOR_DISCOVERY: u32 = 9;
    pub const COUNT: u32 = 16;
}

/// Human names of the reasons, indexed by reason code.
pub const REASON_NAMES: [&str; 10] = [
    "passed",
    "passed_unprotected",
    "bypassed",
    "denied",
    "not_allowlisted",
    "country",
    "flood",
    "malformed",
    "not_ip",
    "neighbor_discovery",
];

// ---------------------------------------------------------------------------
// Countries.
// ---------------------------------------------------------------------------

/// Number of country slots: 0 = unknown, then 26*26 two-letter codes.
pub const COUNTRY_SLOTS: u32 = 1 + 26 * 26;

/// Index of a lower- or upper-case two-letter code; None if not letters.
pub const fn country_index(code: [u8; 2]) -> Option<u16> {
    let a = code[0].to_ascii_lowercase();
    let b = code[1].to_ascii_lowercase();
    if !a.is_ascii_lowercase() || !b.is_ascii_lowercase() {
        return None;
    }
    Some(1 + (a - b'a') as u16 * 26 + (b - b'a') as u16)
}

/// The lower-case code of a country index; None for 0 or out of range.
pub const fn country_code(index: u16) -> Option<[u8; 2]> {
    if index == 0 || index as u32 >= COUNTRY_SLOTS {
        return None;
    }
    let i = index - 1;
    Some([b'a' + (i / 26) as u8, b'a' + (i % 26) as u8])
}

// ---------------------------------------------------------------------------
// Drop events (ring buffer), sampled and rate-limited per CPU.
// ---------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct DropEvent {
    /// Source address; IPv4 as ::ffff:a.b.c.d.
    pub src: [u8; 16],
    /// CLOCK_MONOTONIC (coarse) at the drop.
    pub time_ns: u64,
    /// Interface index the packet arrived on.
    pub ifindex: u32,
    /// `reason::*`.
    pub reason: u32,
    /// Country index of the source (0 = unknown).
    pub country: u16,
    /// IP protocol number (6 TCP, 17 UDP, ...), 0 if not known.
    pub protocol: u8,
    /// 4 or 6.
    pub family: u8,
    /// Destination port, host order (0 when not known).
    pub dst_port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<DropEvent>() == 40);

/// Per-CPU drop statistics and event budget, looked up only for a drop (the
/// packet counters by reason are per interface slot: [`IfaceStats`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Stats {
    /// Dropped packets by country index (0 = unknown).
    pub country_drops: [u64; COUNTRY_SLOTS as usize],
    pub _pad: u64,
    /// Drop events: GCRA theoretical arrival time of the next event.
    pub event_tat_ns: u64,
    /// Drops still to pass without looking at the clock: set when the event
    /// budget is spent, so that a flood of drops pays for the clock once in 64.
    pub event_skip: u64,
}
const _: () = assert!(core::mem::size_of::<Stats>() == 8 * (677 + 3));

/// Per-CPU packet counters of one interface slot (see [`iface_slot`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IfaceStats {
    /// Packets by `reason::*`.
    pub reasons: [u64; reason::COUNT as usize],
}
const _: () = assert!(core::mem::size_of::<IfaceStats>() == 8 * 16);

/// Slots of the per-interface counters (a power of two).
pub const IFACE_SLOTS: u32 = 1024;
const _: () = assert!(IFACE_SLOTS.is_power_of_two());

/// The per-interface counter slot of an interface index: its low 10 bits.
/// Interfaces whose indexes differ by a multiple of [`IFACE_SLOTS`] share a
/// slot (the daemon reports such a slot once, under the names joined by `+`).
#[inline(always)]
pub const fn iface_slot(ifindex: u32) -> u32 {
    ifindex & (IFACE_SLOTS - 1)
}

pub const EVENT_RING_BYTES: u32 = 256 * 1024;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), made of integers only, with explicit
    // padding, so any bit pattern is valid.
    unsafe impl aya::Pod for Node {}
    unsafe impl aya::Pod for Class {}
    unsafe impl aya::Pod for DenyEntry {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for FloodState {}
    unsafe impl aya::Pod for DropEvent {}
    unsafe impl aya::Pod for Stats {}
    unsafe impl aya::Pod for IfaceStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_index_round_trips() {
        assert_eq!(country_index(*b"aa"), Some(1));
        assert_eq!(country_index(*b"ZZ"), Some(676));
        assert_eq!(country_index(*b"a1"), None);
        for i in 1..COUNTRY_SLOTS as u16 {
            let code = country_code(i).unwrap();
            assert_eq!(country_index(code), Some(i));
        }
        assert_eq!(country_code(0), None);
        assert_eq!(country_code(677), None);
    }

    #[test]
    fn epoch_packs_buffer_and_generation() {
        let cfg = Config {
            epoch: epoch(1, 7),
            ..Config::default()
        };
        assert_eq!((cfg.active(), cfg.exact_gen()), (1, 7));
        let cfg = Config {
            epoch: epoch(0, GEN_FOREVER - 1),
            ..Config::default()
        };
        assert_eq!((cfg.active(), cfg.exact_gen()), (0, GEN_FOREVER - 1));
    }

    #[test]
    fn deny_entries_apply_inside_their_window_until_expiry() {
        let e = DenyEntry {
            expires_ns: 100,
            from_gen: 3,
            until_gen: 5,
        };
        assert!(!e.applies(2, 0));
        assert!(e.applies(3, 0) && e.applies(4, 99));
        assert!(!e.applies(4, 100), "expired");
        assert!(!e.applies(5, 0), "retired");
        let forever = DenyEntry {
            expires_ns: 0,
            from_gen: 0,
            until_gen: GEN_FOREVER,
        };
        assert!(forever.applies(GEN_FOREVER - 1, u64::MAX));
    }

    #[test]
    fn flood_keys_mask_ipv6_sources_to_the_prefix() {
        let a = [
            0x0db8_0120u32.to_be(),
            0x0001_0002u32.to_be(),
            0x1122_3344u32.to_be(),
            0x5566_7788u32.to_be(),
        ];
        let words = |p: u32| flood_v6_key(a, p).addr.map(u32::from_be);
        assert_eq!(words(64), [0x0db8_0120, 0x0001_0002, 0, 0]);
        assert_eq!(words(60), [0x0db8_0120, 0x0001_0000, 0, 0]);
        assert_eq!(words(32), [0x0db8_0120, 0, 0, 0]);
        assert_eq!(
            words(127),
            [0x0db8_0120, 0x0001_0002, 0x1122_3344, 0x5566_7788 & !1]
        );
        assert_eq!(
            words(128),
            [0x0db8_0120, 0x0001_0002, 0x1122_3344, 0x5566_7788]
        );
        assert_eq!(words(0), words(128), "0: per address");
    }

    #[test]
    fn iface_slots_wrap_every_1024_indexes() {
        assert_eq!(iface_slot(1), 1);
        assert_eq!(iface_slot(1023), 1023);
        assert_eq!(iface_slot(1024), 0);
        assert_eq!(iface_slot(1025), iface_slot(1));
        assert!(iface_slot(u32::MAX) < IFACE_SLOTS);
    }

    #[test]
    fn port_slots_do_not_overlap() {
        assert_eq!(port_slot(false, 0), (0, 1));
        assert_eq!(port_slot(false, 65535), (1023, 1 << 63));
        assert_eq!(port_slot(true, 443), (1024 + 6, 1 << (443 - 384)));
    }
}
