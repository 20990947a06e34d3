//! rampart's XDP program: decides on the source address of every packet.
//!
//! Order of checks (one verdict per packet, counted once in the totals and
//! once in its interface's slot):
//!
//! 1. Non-IP frames (ARP, LLDP, ...) pass; IPv6 neighbour/router discovery
//!    (ICMPv6 133-137) passes. Truncated or malformed IP headers, and
//!    frames with more VLAN tags than are parsed, get `MALFORMED` and are
//!    dropped, or passed when `DROP_MALFORMED` is off. So does an IPv6 packet
//!    from an IPv4-mapped source (::ffff:a.b.c.d), which only a forger sends.
//! 2. The source's class comes from one walk of the prefix table (bypass,
//!    deny CIDRs, allowlist and country folded together by the daemon).
//! 3. Bypass passes. Exact deny entries and deny CIDRs drop (unless expired).
//! 4. Traffic outside the protected scope passes.
//! 5. Protected traffic: allowlist, country, then the per-source flood limit
//!    (an IPv6 source counted by its prefix of `Config::flood_v6_prefix` bits).
//!
//! Non-first fragments and packets whose L4 header cannot be reached carry
//! no port: they are judged by the source alone (treated as protected when
//! any port of their protocol is protected; an IPv6 extension chain longer
//! than the walk counts as protected when any port is).
//!
//! Atomic changes: the configuration is copied once per packet, and its
//! `epoch` word (active table buffer + exact generation) is one 8-byte load,
//! so a packet is judged wholly by the rules before a batch of changes or
//! wholly by the rules after it. Exact deny entries carry the generations in
//! which they apply (`DenyEntry::applies`).
//!
//! Speed: header fields are read with single loads of their natural width
//! (as the kernel's C does with `iph->saddr`), map values other than the
//! configuration are read in place rather than copied, and the IPv4 table
//! walk is unrolled.
#![no_std]
#![no_main]

use core::mem;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use rampart_common::{
    ANY_PORT, CHILD_BASE, CONFIG_MAP_FLAGS, Class, Config, DenyEntry, DropEvent, EVENT_RING_BYTES,
    FloodState, IFACE_SLOTS, IfaceStats, MAX_CLASSES, MAX_EXACT_DENY, MAX_FLOOD_SOURCES,
    NODES_PER_BUFFER, Node, PORT_WORDS, SourceKey, Stats, V4_ROOT, V6_ROOT, class_flags,
    config_flags, flood_v6_key, iface_slot, port_slot, reason,
};

/// Memory-mapped by the daemon, which flips `Config::epoch` with one store.
#[map]
static RAMPART_CONFIG: Array<Config> = Array::with_max_entries(1, CONFIG_MAP_FLAGS);
#[map]
static RAMPART_PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);
#[map]
static RAMPART_NODES: Array<Node> = Array::with_max_entries(2 * NODES_PER_BUFFER, 0);
#[map]
static RAMPART_CLASSES: Array<Class> = Array::with_max_entries(2 * MAX_CLASSES, 0);
/// Keys are the address bytes in packet order. BPF_F_NO_PREALLOC: memory is
/// used only for entries that exist.
#[map]
static RAMPART_DENY_V4: HashMap<u32, DenyEntry> =
    HashMap::with_max_entries(MAX_EXACT_DENY, BPF_F_NO_PREALLOC);
#[map]
static RAMPART_DENY_V6: HashMap<[u32; 4], DenyEntry> =
    HashMap::with_max_entries(MAX_EXACT_DENY, BPF_F_NO_PREALLOC);
#[map]
static RAMPART_FLOOD: LruHashMap<SourceKey, FloodState> =
    LruHashMap::with_max_entries(MAX_FLOOD_SOURCES, 0);
#[map]
static RAMPART_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);
/// The reason counters again, per interface slot (`iface_slot(ifindex)`).
#[map]
static RAMPART_IFACE_STATS: PerCpuArray<IfaceStats> = PerCpuArray::with_max_entries(IFACE_SLOTS, 0);
#[map]
static RAMPART_EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// Pre-standard QinQ tag types, still sent by some switches (Cisco, Juniper).
const ETH_P_QINQ1: u16 = 0x9100;
const ETH_P_QINQ2: u16 = 0x9200;
const ETH_P_QINQ3: u16 = 0x9300;
const VLAN_HLEN: usize = 4;
const MAX_VLAN_DEPTH: usize = 2;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
/// The most an IP length field can say (IPv4 total length, IPv6 payload
/// length); a longer packet (BIG TCP after GRO) carries 0 there.
const IP_MAXLEN: usize = 0xffff;
/// Extension headers walked before giving up on finding the L4 header.
const MAX_IPV6_EXT: usize = 6;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;

/// ::ffff:0:0/96 as the third word of an address held as four words.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Where the L4 header was, as far as the parser could tell.
#[derive(Clone, Copy)]
struct L4 {
    protocol: u8,
    /// Destination port, host order; `NO_PORT` when there is none (a
    /// non-first fragment, a protocol without ports).
    port: u32,
    /// The IPv6 extension chain was longer than the walk.
    unknown: bool,
}

const NO_PORT: u32 = 0x1_0000;

/// Drops that skip the event clock once the event budget is spent.
const EVENT_SKIP: u64 = 63;

/// Why parsing stopped without a packet to judge.
enum Stop {
    /// Not IP: pass.
    NotIp,
    /// IPv6 neighbour or router discovery: pass.
    NeighborDiscovery,
    /// Truncated or malformed headers.
    Malformed,
}

/// A source address of one family. The two families are separate types so
/// that every function below is compiled once per family (no merged paths,
/// no packet struct shuffled through the stack).
trait Source {
    const V6: bool;
    /// The class id from the prefix table.
    fn walk(&self, base: u32) -> u16;
    /// Whether an exact deny entry covers the source.
    fn exact(&self, cfg: &Config) -> bool;
    /// The address as 16 bytes (IPv4 mapped into IPv6).
    fn key(&self) -> SourceKey;
    /// The flood-map key: the address, IPv6 masked to the configured prefix.
    fn flood_key(&self, cfg: &Config) -> SourceKey;
}

struct V4(u32);
struct V6([u32; 4]);

impl Source for V4 {
    const V6: bool = false;

    #[inline(always)]
    fn walk(&self, base: u32) -> u16 {
        walk_v4(base, self.0)
    }

    #[inline(always)]
    fn exact(&self, cfg: &Config) -> bool {
        cfg.flags & config_flags::EXACT_V4 != 0
            && live(RAMPART_DENY_V4.get_ptr(self.0), cfg.exact_gen())
    }

    #[inline(always)]
    fn key(&self) -> SourceKey {
        SourceKey {
            addr: [0, 0, V4_MAPPED_WORD, self.0],
        }
    }

    #[inline(always)]
    fn flood_key(&self, _cfg: &Config) -> SourceKey {
        self.key()
    }
}

impl Source for V6 {
    const V6: bool = true;

    #[inline(always)]
    fn walk(&self, base: u32) -> u16 {
        walk_v6(base, &self.0)
    }

    #[inline(always)]
    fn exact(&self, cfg: &Config) -> bool {
        cfg.flags & config_flags::EXACT_V6 != 0
            && live(RAMPART_DENY_V6.get_ptr(self.0), cfg.exact_gen())
    }

    #[inline(always)]
    fn key(&self) -> SourceKey {
        SourceKey { addr: self.0 }
    }

    #[inline(always)]
    fn flood_key(&self, cfg: &Config) -> SourceKey {
        // A client rotating addresses inside its prefix shares one allowance.
        flood_v6_key(self.0, cfg.flood_v6_prefix)
    }
}

/// Whether a found exact entry applies in generation `exact_gen` (the
/// conditions of `DenyEntry::applies`; the clock is read only for an entry
/// that expires).
#[inline(always)]
fn live(entry: Option<*const DenyEntry>, exact_gen: u32) -> bool {
    match entry {
        None => false,
        Some(p) => {
            // SAFETY: a map value pointer from a successful lookup.
            let e = unsafe { &*p };
            e.in_window(exact_gen) && (e.expires_ns == 0 || now() < e.expires_ns)
        }
    }
}

/// A pointer to `len` bytes at `offset`, or `Malformed` when the packet is
/// shorter. Every header read goes through here.
#[inline(always)]
fn ptr_at(ctx: &XdpContext, offset: usize, len: usize) -> Result<*const u8, Stop> {
    let start = ctx.data();
    if start + offset + len > ctx.data_end() {
        return Err(Stop::Malformed);
    }
    Ok((start + offset) as *const u8)
}

/// Whether the frame from `off` on is longer than an IP length field can
/// say: an IP length of 0 there is a BIG TCP packet, not an empty one.
#[inline(always)]
fn past_ip_maxlen(ctx: &XdpContext, off: usize) -> bool {
    ctx.data_end() - ctx.data() > off + IP_MAXLEN
}

/// Reads a `T` at byte `at` of a header whose bounds `ptr_at` checked.
///
/// # Safety
/// `at + size_of::<T>()` must be within the checked length of `base`.
#[inline(always)]
unsafe fn field<T: Copy>(base: *const u8, at: usize) -> T {
    // SAFETY: in bounds per the caller. A plain load of the field's width,
    // as the kernel's C does (`iph->saddr`): BPF packet loads need no
    // alignment on architectures with efficient unaligned access, and the
    // network header is NET_IP_ALIGN-aligned in practice.
    unsafe { *(base.add(at) as *const T) }
}

/// CLOCK_MONOTONIC at tick resolution (CLOCK_MONOTONIC_COARSE): cheaper
/// than the precise clock on every drop, and precise enough for expiries
/// and per-second budgets.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn be16(v: u16) -> u16 {
    u16::from_be(v)
}

#[xdp]
pub fn rampart(ctx: XdpContext) -> u32 {
    // Two per-CPU lookups per packet, both inlined by the kernel: the
    // configuration and this interface's counters. The global statistics
    // (country drops, the event budget) are looked up only for a drop.
    let (Some(cfg), Some(counts)) = (
        RAMPART_CONFIG.get_ptr(0),
        RAMPART_IFACE_STATS.get_ptr_mut(iface_slot(ctx.ingress_ifindex() as u32)),
    ) else {
        return xdp_action::XDP_PASS;
    };
    // One copy per packet: the daemon may write the configuration meanwhile,
    // and the epoch word (table buffer + exact generation) must be read once.
    // SAFETY: a map value pointer from a successful lookup; volatile so that
    // the fields are not re-read from the map later.
    let cfg = unsafe { core::ptr::read_volatile(cfg) };
    let (reason, action) = decide(&ctx, &cfg);
    // SAFETY: this CPU's counters of the interface's slot; no concurrent
    // writer on this CPU. The daemon sums the slots for the totals.
    if let Some(c) = unsafe { (*counts).reasons.get_mut(reason as usize) } {
        *c += 1;
    }
    action
}

#[inline(always)]
fn decide(ctx: &XdpContext, cfg: &Config) -> (u32, u32) {
    let verdict = match ethertype(ctx) {
        Ok((ETH_P_IP, off)) => v4(ctx, cfg, off),
        Ok((ETH_P_IPV6, off)) => v6(ctx, cfg, off),
        // Still a tag after the ones parsed: more than MAX_VLAN_DEPTH tags. The
        // frame is not judged, so it must not pass as "not IP" (it would skip
        // every rule); checked after the IP arms, so untagged IP pays nothing.
        Ok((proto, _)) if is_vlan(proto) => Err(Stop::Malformed),
        Ok(_) => Err(Stop::NotIp),
        Err(e) => Err(e),
    };
    match verdict {
        Ok(v) => v,
        Err(Stop::NotIp) => (reason::NOT_IP, xdp_action::XDP_PASS),
        Err(Stop::NeighborDiscovery) => (reason::NEIGHBOR_DISCOVERY, xdp_action::XDP_PASS),
        Err(Stop::Malformed) => {
            let drop = cfg.flags & config_flags::DROP_MALFORMED != 0
                && cfg.flags & config_flags::MONITOR == 0;
            let action = if drop {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            };
            (reason::MALFORMED, action)
        }
    }
}

/// Whether an ethertype is a VLAN tag: 802.1Q, 802.1ad, or the old QinQ
/// types. A tag type taken for "not IP" would pass a tagged IP frame
/// unjudged.
#[inline(always)]
fn is_vlan(proto: u16) -> bool {
    matches!(
        proto,
        ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ1 | ETH_P_QINQ2 | ETH_P_QINQ3
    )
}

/// The ethertype after up to two VLAN tags, and the network header offset.
/// With more tags, the ethertype returned is the third tag's, which `decide`
/// treats as malformed.
#[inline(always)]
fn ethertype(ctx: &XdpContext) -> Result<(u16, usize), Stop> {
    let eth = ptr_at(ctx, 0, ETH_HLEN)?;
    // SAFETY: 14 bytes checked.
    let mut proto = be16(unsafe { field::<u16>(eth, 12) });
    let mut off = ETH_HLEN;
    let mut i = 0;
    while i < MAX_VLAN_DEPTH {
        if !is_vlan(proto) {
            break;
        }
        let tag = ptr_at(ctx, off, VLAN_HLEN)?;
        // SAFETY: 4 bytes checked.
        proto = be16(unsafe { field::<u16>(tag, 2) });
        off += VLAN_HLEN;
        i += 1;
    }
    Ok((proto, off))
}

#[inline(always)]
fn v4(ctx: &XdpContext, cfg: &Config, off: usize) -> Result<(u32, u32), Stop> {
    let h = ptr_at(ctx, off, IPV4_HLEN)?;
    // SAFETY (all reads of h): 20 bytes checked.
    let ver_ihl: u8 = unsafe { field(h, 0) };
    if ver_ihl >> 4 != 4 {
        return Err(Stop::Malformed);
    }
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    let total = be16(unsafe { field::<u16>(h, 2) }) as usize;
    if ihl < IPV4_HLEN {
        return Err(Stop::Malformed);
    }
    let ip_end = if total == 0 && past_ip_maxlen(ctx, off) {
        // BIG TCP: in skb mode XDP runs after GRO, and a packet longer than
        // the field can say carries 0 there; the frame's end is its end.
        ctx.data_end()
    } else {
        let ip_end = ctx.data() + off + total;
        if total < ihl || ip_end > ctx.data_end() {
            return Err(Stop::Malformed);
        }
        ip_end
    };
    let frag = be16(unsafe { field::<u16>(h, 6) });
    let protocol: u8 = unsafe { field(h, 9) };
    let src = V4(unsafe { field(h, 12) });
    let port = if frag & 0x1fff == 0 {
        l4_port(ctx, off + ihl, ip_end, protocol)?
    } else {
        NO_PORT
    };
    let l4 = L4 {
        protocol,
        port,
        unknown: false,
    };
    Ok(judge(ctx, cfg, &src, l4))
}

/// The destination port of a TCP or UDP header at `off` (`NO_PORT` for
/// other protocols); the whole L4 header must be inside the IP packet (a
/// first fragment too short to hold it is malformed, RFC 1858).
#[inline(always)]
fn l4_port(ctx: &XdpContext, off: usize, ip_end: usize, protocol: u8) -> Result<u32, Stop> {
    let hlen = match protocol {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        _ => return Ok(NO_PORT),
    };
    let l4 = ptr_at(ctx, off, 4)?;
    if ctx.data() + off + hlen > ip_end {
        return Err(Stop::Malformed);
    }
    // SAFETY: 4 bytes checked.
    Ok(be16(unsafe { field::<u16>(l4, 2) }) as u32)
}

/// Whether an IPv6 next-header value is one of the extension headers the
/// walk steps over.
#[inline(always)]
fn is_ext_header(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_DSTOPTS
            | IPPROTO_MH
            | IPPROTO_AH
            | IPPROTO_FRAGMENT
    )
}

/// Where the IPv6 extension-header walk ended.
const WALK_L4: u8 = 0;
const WALK_NO_PORT: u8 = 1;
const WALK_TOO_LONG: u8 = 2;

#[inline(always)]
fn v6(ctx: &XdpContext, cfg: &Config, off: usize) -> Result<(u32, u32), Stop> {
    let h = ptr_at(ctx, off, IPV6_HLEN)?;
    // SAFETY (all reads of h): 40 bytes checked.
    let ver: u8 = unsafe { field(h, 0) };
    if ver >> 4 != 6 {
        return Err(Stop::Malformed);
    }
    let payload = be16(unsafe { field::<u16>(h, 4) }) as usize;
    let ip_end = if payload == 0 && past_ip_maxlen(ctx, off + IPV6_HLEN) {
        // BIG TCP after GRO (skb mode), as for IPv4 (where GRO also inserts
        // a hop-by-hop jumbo option, RFC 2675, the walk steps over it). On a
        // shorter frame 0 stays an empty payload.
        ctx.data_end()
    } else {
        let ip_end = ctx.data() + off + IPV6_HLEN + payload;
        if ip_end > ctx.data_end() {
            return Err(Stop::Malformed);
        }
        ip_end
    };
    let src: [u32; 4] = unsafe { [field(h, 8), field(h, 12), field(h, 16), field(h, 20)] };
    let mut next: u8 = unsafe { field(h, 6) };
    let mut at = off + IPV6_HLEN;
    let mut walk = WALK_TOO_LONG;
    let mut i = 0;
    while i < MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => {
                let e = ptr_at(ctx, at, 2)?;
                // SAFETY: 2 bytes checked.
                let (n, len): (u8, u8) = unsafe { (field(e, 0), field(e, 1)) };
                next = n;
                at += (len as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let e = ptr_at(ctx, at, 2)?;
                // SAFETY: 2 bytes checked.
                let (n, len): (u8, u8) = unsafe { (field(e, 0), field(e, 1)) };
                next = n;
                at += (len as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e = ptr_at(ctx, at, 4)?;
                // SAFETY: 4 bytes checked.
                let (n, frag): (u8, u16) = unsafe { (field(e, 0), field(e, 2)) };
                next = n;
                at += 8;
                if be16(frag) & 0xfff8 != 0 {
                    // Non-first fragment: no L4 header, judged by source.
                    walk = WALK_NO_PORT;
                    break;
                }
            }
            _ => {
                walk = WALK_L4;
                break;
            }
        }
        if ctx.data() + at > ip_end {
            return Err(Stop::Malformed);
        }
        i += 1;
    }
    if walk == WALK_TOO_LONG && !is_ext_header(next) {
        // The walk consumed exactly MAX_IPV6_EXT headers: what follows the
        // last one is the L4 header.
        walk = WALK_L4;
    }
    let mut port = NO_PORT;
    if walk == WALK_L4 {
        if next == IPPROTO_ICMPV6 {
            // The whole 4-byte ICMPv6 header: a 1-byte read at a variable
            // offset gets a bounds check the verifier cannot follow.
            let icmp = ptr_at(ctx, at, 4)?;
            // Inside the IP packet, not in the padding after it (a 0x87 byte
            // there would pass a denied source as neighbour discovery).
            if ctx.data() + at + 4 > ip_end {
                return Err(Stop::Malformed);
            }
            // SAFETY: 4 bytes checked.
            let kind: u8 = unsafe { field(icmp, 0) };
            if (133..=137).contains(&kind) {
                return Err(Stop::NeighborDiscovery);
            }
        } else {
            port = l4_port(ctx, at, ip_end, next)?;
        }
    }
    let l4 = L4 {
        protocol: next,
        port,
        // A chain longer than the walk: judged by source alone, as protected
        // traffic (the stack behind us may still find a port).
        unknown: walk == WALK_TOO_LONG,
    };
    // An IPv4-mapped source (::ffff:a.b.c.d) never appears on the wire (RFC
    // 4291 §2.5.5.2, RFC 6890): such a packet is forged. Linux since 5.12
    // delivers it to UDP and raw sockets (only TCP refuses it), so it is
    // malformed here: judged as IPv6 it escaped the IPv4 deny entries, judged
    // as IPv4 it would take IPv4's bypass, allowlist and flood allowances,
    // which edge filters that drop forged IPv4 sources do not guard. The first
    // word decides for every ordinary source: one compare.
    if src[0] == 0 && src[1] == 0 && src[2] == V4_MAPPED_WORD {
        return Err(Stop::Malformed);
    }
    Ok(judge(ctx, cfg, &V6(src), l4))
}

/// The verdict for a parsed packet: (reason, action).
#[inline(always)]
fn judge<S: Source>(ctx: &XdpContext, cfg: &Config, src: &S, l4: L4) -> (u32, u32) {
    let active = cfg.active();
    let id = src.walk(active * NODES_PER_BUFFER);
    let Some(class) = RAMPART_CLASSES.get(active * MAX_CLASSES + (id as u32 & (MAX_CLASSES - 1)))
    else {
        return (reason::PASS_UNPROTECTED, xdp_action::XDP_PASS);
    };
    let flags = class.flags;
    if flags & class_flags::BYPASS != 0 {
        return (reason::BYPASS, xdp_action::XDP_PASS);
    }
    let denied = src.exact(cfg)
        || (flags & class_flags::DENY != 0
            && (class.deny_expires_ns == 0 || now() < class.deny_expires_ns));
    let r = if denied {
        reason::DENY
    } else if !protected(cfg, l4) {
        return (reason::PASS_UNPROTECTED, xdp_action::XDP_PASS);
    } else if flags & class_flags::NOT_ALLOWLISTED != 0 {
        reason::NOT_ALLOWLISTED
    } else if flags & class_flags::COUNTRY_BLOCKED != 0 {
        reason::COUNTRY
    } else if cfg.flags & config_flags::FLOOD != 0 && flooding(cfg, src.flood_key(cfg)) {
        reason::FLOOD
    } else {
        return (reason::PASS, xdp_action::XDP_PASS);
    };
    (r, dropped(ctx, cfg, src, l4, r, class.country))
}

/// Bookkeeping for a drop; returns the action (PASS in monitor mode).
#[inline(always)]
fn dropped<S: Source>(
    ctx: &XdpContext,
    cfg: &Config,
    src: &S,
    l4: L4,
    r: u32,
    country: u16,
) -> u32 {
    if let Some(stats) = RAMPART_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's statistics.
        if let Some(c) = unsafe { (*stats).country_drops.get_mut(country as usize) } {
            *c += 1;
        }
        if cfg.flags & config_flags::EVENTS != 0 {
            emit(ctx, cfg, stats, src, l4, r, country);
        }
    }
    if cfg.flags & config_flags::MONITOR != 0 {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn emit<S: Source>(
    ctx: &XdpContext,
    cfg: &Config,
    b: *mut Stats,
    src: &S,
    l4: L4,
    r: u32,
    country: u16,
) {
    // SAFETY (all accesses to *b): this CPU's statistics.
    let skip = unsafe { (*b).event_skip };
    if skip > 0 {
        unsafe { (*b).event_skip = skip - 1 };
        return;
    }
    let now = now();
    // Per-CPU GCRA: at most one event per interval after a small burst.
    let tat = unsafe { (*b).event_tat_ns };
    let tat = if tat > now { tat } else { now };
    if tat - now > cfg.event_tolerance_ns {
        // Spent: the next drops skip the clock.
        unsafe { (*b).event_skip = EVENT_SKIP };
        return;
    }
    unsafe { (*b).event_tat_ns = tat + cfg.event_interval_ns };
    let Some(mut entry) = RAMPART_EVENTS.reserve::<DropEvent>(0) else {
        return;
    };
    let words = src.key().addr;
    // SAFETY: [u32; 4] and [u8; 16] have the same size; bytes keep order.
    let addr: [u8; 16] = unsafe { mem::transmute(words) };
    entry.write(DropEvent {
        src: addr,
        time_ns: now,
        ifindex: ctx.ingress_ifindex() as u32,
        reason: r,
        country,
        protocol: l4.protocol,
        family: if S::V6 { 6 } else { 4 },
        dst_port: if l4.port == NO_PORT {
            0
        } else {
            l4.port as u16
        },
        _pad: 0,
    });
    entry.submit(0);
}

#[inline(always)]
fn protected(cfg: &Config, l4: L4) -> bool {
    if cfg.flags & config_flags::PROTECT_ALL != 0 {
        return true;
    }
    if l4.unknown {
        return any_port(false) || any_port(true);
    }
    let udp = match l4.protocol {
        IPPROTO_TCP => false,
        IPPROTO_UDP => true,
        _ => return false,
    };
    if l4.port == NO_PORT {
        return any_port(udp);
    }
    let (word, bit) = port_slot(udp, l4.port as u16);
    match RAMPART_PORTS.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}

/// Whether any port of the protocol is protected (the bit of port 0).
#[inline(always)]
fn any_port(udp: bool) -> bool {
    let (word, bit) = port_slot(udp, ANY_PORT);
    match RAMPART_PORTS.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}

#[inline(always)]
fn flooding(cfg: &Config, key: SourceKey) -> bool {
    let now = now();
    match RAMPART_FLOOD.get_ptr_mut(key) {
        Some(p) => {
            // GCRA: racy across CPUs by design (a lost update lets one more
            // packet through, never drops a legitimate one).
            // SAFETY: a map value pointer from a successful lookup.
            let tat = unsafe { (*p).tat_ns };
            let tat = if tat > now { tat } else { now };
            if tat - now > cfg.flood_tolerance_ns {
                return true;
            }
            // SAFETY: as above.
            unsafe { (*p).tat_ns = tat + cfg.flood_interval_ns };
            false
        }
        None => {
            let state = FloodState {
                tat_ns: now + cfg.flood_interval_ns,
            };
            let _ = RAMPART_FLOOD.insert(key, state, 0);
            false
        }
    }
}

/// Entry `byte` of node `node` (absolute index).
#[inline(always)]
fn entry(node: u32, byte: u32) -> u16 {
    match RAMPART_NODES.get(node) {
        Some(n) => n.entries[(byte & 0xff) as usize],
        None => 0,
    }
}

#[inline(always)]
fn child(base: u32, e: u16) -> u32 {
    base + (e - CHILD_BASE) as u32
}

/// IPv4: the root gives the first 16 bits, then at most two more nodes.
/// `src` holds the bytes in packet order (byte 0 in the low bits, bpfel).
#[inline(always)]
fn walk_v4(base: u32, src: u32) -> u16 {
    let e = entry(base + V4_ROOT + (src & 0xff), src >> 8);
    if e < CHILD_BASE {
        return e;
    }
    let e = entry(child(base, e), src >> 16);
    if e < CHILD_BASE {
        return e;
    }
    let e = entry(child(base, e), src >> 24);
    if e < CHILD_BASE { e } else { 0 }
}

/// IPv6: the root gives the first 16 bits, then one node per byte, unrolled
/// so that every byte index is a constant.
#[inline(always)]
fn walk_v6(base: u32, src: &[u32; 4]) -> u16 {
    let [w0, w1, w2, w3] = *src;
    let mut e = entry(base + V6_ROOT + (w0 & 0xff), w0 >> 8);
    macro_rules! step {
        ($word:expr, $shift:expr) => {
            if e < CHILD_BASE {
                return e;
            }
            e = entry(child(base, e), $word >> $shift);
        };
    }
    step!(w0, 16);
    step!(w0, 24);
    step!(w1, 0);
    step!(w1, 8);
    step!(w1, 16);
    step!(w1, 24);
    step!(w2, 0);
    step!(w2, 8);
    step!(w2, 16);
    step!(w2, 24);
    step!(w3, 0);
    step!(w3, 8);
    step!(w3, 16);
    step!(w3, 24);
    if e < CHILD_BASE { e } else { 0 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
