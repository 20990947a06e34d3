//! rampart's XDP program: decides on the source address of every packet.
//!
//! Order of checks (one verdict, one counter per packet):
//!
//! 1. Non-IP frames (ARP, LLDP, ...) pass; IPv6 neighbour/router discovery
//!    (ICMPv6 133-137) passes. Truncated or malformed IP headers get
//!    `MALFORMED` and are dropped, or passed when `DROP_MALFORMED` is off.
//! 2. The source's class comes from one walk of the prefix table (bypass,
//!    deny CIDRs, allowlist and country folded together by the daemon).
//! 3. Bypass passes. Exact deny entries and deny CIDRs drop (unless expired).
//! 4. Traffic outside the protected scope passes.
//! 5. Protected traffic: allowlist, country, then the per-source flood limit.
//!
//! Non-first fragments and packets whose L4 header cannot be reached carry
//! no port: they are judged by the source alone (treated as protected when
//! any port of their protocol is protected; an IPv6 extension chain longer
//! than the walk counts as protected when any port is).
//!
//! Speed: header fields are read with single loads of their natural width
//! (as the kernel's C does with `iph->saddr`), map values are read in place
//! rather than copied, and the IPv4 table walk is unrolled.
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
    ANY_PORT, CHILD_BASE, COUNTRY_SLOTS, Class, Config, DenyEntry, DropEvent, EVENT_RING_BYTES,
    EventBudget, FloodState, MAX_CLASSES, MAX_DEPTH, MAX_EXACT_DENY, MAX_FLOOD_SOURCES,
    NODES_PER_BUFFER, Node, PORT_WORDS, SourceKey, V4_ROOT, V6_ROOT, class_flags, config_flags,
    port_slot, reason,
};

#[map]
static RAMPART_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
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
static RAMPART_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(reason::COUNT, 0);
#[map]
static RAMPART_COUNTRY_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTRY_SLOTS, 0);
#[map]
static RAMPART_EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);
#[map]
static RAMPART_EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HLEN: usize = 4;
const MAX_VLAN_DEPTH: usize = 2;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
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

/// What the parser learnt about a packet.
struct Packet {
    /// Source address bytes in packet order, as four words; IPv4 uses the
    /// first word only.
    src: [u32; 4],
    v6: bool,
    protocol: u8,
    /// Destination port (host order) when `has_port`.
    dst_port: u16,
    has_port: bool,
    /// The IPv6 extension chain was longer than the walk: the transport
    /// protocol is unknown.
    unknown_l4: bool,
}

/// Why parsing stopped without a packet to judge.
enum Stop {
    /// Not IP: pass.
    NotIp,
    /// IPv6 neighbour or router discovery: pass.
    NeighborDiscovery,
    /// Truncated or malformed headers.
    Malformed,
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
    let (reason, action) = decide(&ctx);
    if let Some(c) = RAMPART_COUNTERS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
    action
}

#[inline(always)]
fn decide(ctx: &XdpContext) -> (u32, u32) {
    let Some(cfg) = RAMPART_CONFIG.get(0) else {
        return (reason::PASS_UNPROTECTED, xdp_action::XDP_PASS);
    };
    let pkt = match parse(ctx) {
        Ok(p) => p,
        Err(Stop::NotIp) => return (reason::NOT_IP, xdp_action::XDP_PASS),
        Err(Stop::NeighborDiscovery) => {
            return (reason::NEIGHBOR_DISCOVERY, xdp_action::XDP_PASS);
        }
        Err(Stop::Malformed) => {
            let drop = cfg.flags & config_flags::DROP_MALFORMED != 0
                && cfg.flags & config_flags::MONITOR == 0;
            let action = if drop {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            };
            return (reason::MALFORMED, action);
        }
    };
    let Some(class) = class_of(cfg.active, &pkt) else {
        return (reason::PASS_UNPROTECTED, xdp_action::XDP_PASS);
    };
    let r = judge(cfg, &pkt, class);
    if r == reason::PASS || r == reason::PASS_UNPROTECTED || r == reason::BYPASS {
        return (r, xdp_action::XDP_PASS);
    }
    (r, dropped(ctx, cfg, &pkt, r, class.country))
}

/// Bookkeeping for a drop; returns the action (PASS in monitor mode).
#[inline(always)]
fn dropped(ctx: &XdpContext, cfg: &Config, pkt: &Packet, r: u32, country: u16) -> u32 {
    if let Some(c) = RAMPART_COUNTRY_DROPS.get_ptr_mut(country as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
    if cfg.flags & config_flags::EVENTS != 0 {
        emit(ctx, cfg, pkt, r, country);
    }
    if cfg.flags & config_flags::MONITOR != 0 {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn emit(ctx: &XdpContext, cfg: &Config, pkt: &Packet, r: u32, country: u16) {
    let Some(b) = RAMPART_EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    let now = now();
    // Per-CPU GCRA: at most one event per interval after a small burst.
    // SAFETY: per-CPU slot.
    let tat = unsafe { (*b).tat_ns };
    let tat = if tat > now { tat } else { now };
    if tat - now > cfg.event_tolerance_ns {
        return;
    }
    // SAFETY: per-CPU slot.
    unsafe { (*b).tat_ns = tat + cfg.event_interval_ns };
    let Some(mut entry) = RAMPART_EVENTS.reserve::<DropEvent>(0) else {
        return;
    };
    let words = source_key(pkt).addr;
    // SAFETY: [u32; 4] and [u8; 16] have the same size; bytes keep order.
    let src: [u8; 16] = unsafe { mem::transmute(words) };
    entry.write(DropEvent {
        src,
        time_ns: now,
        ifindex: ctx.ingress_ifindex() as u32,
        reason: r,
        country,
        protocol: pkt.protocol,
        family: if pkt.v6 { 6 } else { 4 },
        dst_port: if pkt.has_port { pkt.dst_port } else { 0 },
        _pad: 0,
    });
    entry.submit(0);
}

#[inline(always)]
fn source_key(pkt: &Packet) -> SourceKey {
    if pkt.v6 {
        SourceKey { addr: pkt.src }
    } else {
        SourceKey {
            addr: [0, 0, V4_MAPPED_WORD, pkt.src[0]],
        }
    }
}

#[inline(always)]
fn judge(cfg: &Config, pkt: &Packet, class: &Class) -> u32 {
    let flags = class.flags;
    if flags & class_flags::BYPASS != 0 {
        return reason::BYPASS;
    }
    if exact_denied(cfg, pkt) {
        return reason::DENY;
    }
    if flags & class_flags::DENY != 0 {
        let expires = class.deny_expires_ns;
        if expires == 0 || now() < expires {
            return reason::DENY;
        }
    }
    if !protected(cfg, pkt) {
        return reason::PASS_UNPROTECTED;
    }
    if flags & class_flags::NOT_ALLOWLISTED != 0 {
        return reason::NOT_ALLOWLISTED;
    }
    if flags & class_flags::COUNTRY_BLOCKED != 0 {
        return reason::COUNTRY;
    }
    if cfg.flags & config_flags::FLOOD != 0 && flooding(cfg, pkt) {
        return reason::FLOOD;
    }
    reason::PASS
}

#[inline(always)]
fn exact_denied(cfg: &Config, pkt: &Packet) -> bool {
    let family = if pkt.v6 {
        config_flags::EXACT_V6
    } else {
        config_flags::EXACT_V4
    };
    if cfg.flags & family == 0 {
        return false;
    }
    let entry = if pkt.v6 {
        RAMPART_DENY_V6.get_ptr(pkt.src)
    } else {
        RAMPART_DENY_V4.get_ptr(pkt.src[0])
    };
    match entry {
        None => false,
        Some(p) => {
            // SAFETY: a map value pointer from a successful lookup.
            let expires = unsafe { (*p).expires_ns };
            expires == 0 || now() < expires
        }
    }
}

#[inline(always)]
fn protected(cfg: &Config, pkt: &Packet) -> bool {
    if cfg.flags & config_flags::PROTECT_ALL != 0 {
        return true;
    }
    if pkt.unknown_l4 {
        return any_port(false) || any_port(true);
    }
    let udp = match pkt.protocol {
        IPPROTO_TCP => false,
        IPPROTO_UDP => true,
        _ => return false,
    };
    if !pkt.has_port {
        return any_port(udp);
    }
    let (word, bit) = port_slot(udp, pkt.dst_port);
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
fn flooding(cfg: &Config, pkt: &Packet) -> bool {
    let key = source_key(pkt);
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

/// The class of the packet's source: one walk of the prefix table.
#[inline(always)]
fn class_of(active: u32, pkt: &Packet) -> Option<&'static Class> {
    let base = (active & 1) * NODES_PER_BUFFER;
    let id = if pkt.v6 {
        walk_v6(base, &pkt.src)
    } else {
        walk_v4(base, pkt.src[0])
    };
    RAMPART_CLASSES.get((active & 1) * MAX_CLASSES + (id as u32 & (MAX_CLASSES - 1)))
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

/// IPv6: the root gives the first 16 bits, then one node per byte.
#[inline(always)]
fn walk_v6(base: u32, src: &[u32; 4]) -> u16 {
    let w0 = src[0];
    let mut e = entry(base + V6_ROOT + (w0 & 0xff), w0 >> 8);
    let mut depth = 2;
    while depth < MAX_DEPTH {
        if e < CHILD_BASE {
            return e;
        }
        let byte = src[(depth >> 2) & 3] >> ((depth & 3) * 8);
        e = entry(child(base, e), byte);
        depth += 1;
    }
    if e < CHILD_BASE { e } else { 0 }
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Packet, Stop> {
    let eth = ptr_at(ctx, 0, ETH_HLEN)?;
    // SAFETY: 14 bytes checked.
    let mut proto = be16(unsafe { field::<u16>(eth, 12) });
    let mut off = ETH_HLEN;
    let mut i = 0;
    while i < MAX_VLAN_DEPTH {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let tag = ptr_at(ctx, off, VLAN_HLEN)?;
        // SAFETY: 4 bytes checked.
        proto = be16(unsafe { field::<u16>(tag, 2) });
        off += VLAN_HLEN;
        i += 1;
    }
    match proto {
        ETH_P_IP => parse_v4(ctx, off),
        ETH_P_IPV6 => parse_v6(ctx, off),
        _ => Err(Stop::NotIp),
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, off: usize) -> Result<Packet, Stop> {
    let h = ptr_at(ctx, off, IPV4_HLEN)?;
    // SAFETY (all reads of h): 20 bytes checked.
    let ver_ihl: u8 = unsafe { field(h, 0) };
    if ver_ihl >> 4 != 4 {
        return Err(Stop::Malformed);
    }
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    let total = be16(unsafe { field::<u16>(h, 2) }) as usize;
    if ihl < IPV4_HLEN || total < ihl {
        return Err(Stop::Malformed);
    }
    let ip_end = ctx.data() + off + total;
    if ip_end > ctx.data_end() {
        return Err(Stop::Malformed);
    }
    let frag = be16(unsafe { field::<u16>(h, 6) });
    let protocol: u8 = unsafe { field(h, 9) };
    let src: u32 = unsafe { field(h, 12) };
    let mut pkt = Packet {
        src: [src, 0, 0, 0],
        v6: false,
        protocol,
        dst_port: 0,
        has_port: false,
        unknown_l4: false,
    };
    if frag & 0x1fff == 0 {
        l4_port(ctx, off + ihl, ip_end, &mut pkt)?;
    }
    Ok(pkt)
}

/// Reads the destination port of a TCP or UDP header at `off`; the whole L4
/// header must be inside the IP packet (a first fragment too short to hold
/// it is malformed, RFC 1858).
#[inline(always)]
fn l4_port(ctx: &XdpContext, off: usize, ip_end: usize, pkt: &mut Packet) -> Result<(), Stop> {
    let hlen = match pkt.protocol {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        _ => return Ok(()),
    };
    let l4 = ptr_at(ctx, off, 4)?;
    if ctx.data() + off + hlen > ip_end {
        return Err(Stop::Malformed);
    }
    // SAFETY: 4 bytes checked.
    pkt.dst_port = be16(unsafe { field::<u16>(l4, 2) });
    pkt.has_port = true;
    Ok(())
}

/// Where the IPv6 extension-header walk ended.
const WALK_L4: u8 = 0;
const WALK_NO_PORT: u8 = 1;
const WALK_TOO_LONG: u8 = 2;

#[inline(always)]
fn parse_v6(ctx: &XdpContext, off: usize) -> Result<Packet, Stop> {
    let h = ptr_at(ctx, off, IPV6_HLEN)?;
    // SAFETY (all reads of h): 40 bytes checked.
    let ver: u8 = unsafe { field(h, 0) };
    if ver >> 4 != 6 {
        return Err(Stop::Malformed);
    }
    let payload = be16(unsafe { field::<u16>(h, 4) }) as usize;
    let ip_end = ctx.data() + off + IPV6_HLEN + payload;
    if ip_end > ctx.data_end() {
        return Err(Stop::Malformed);
    }
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
    let mut pkt = Packet {
        src,
        v6: true,
        protocol: next,
        dst_port: 0,
        has_port: false,
        // A chain longer than the walk: judged by source alone, as protected
        // traffic (the stack behind us may still find a port).
        unknown_l4: walk == WALK_TOO_LONG,
    };
    if walk == WALK_L4 {
        if next == IPPROTO_ICMPV6 {
            // The whole 4-byte ICMPv6 header: a 1-byte read at a variable
            // offset gets a bounds check the verifier cannot follow.
            let icmp = ptr_at(ctx, at, 4)?;
            // SAFETY: 4 bytes checked.
            let kind: u8 = unsafe { field(icmp, 0) };
            if (133..=137).contains(&kind) {
                return Err(Stop::NeighborDiscovery);
            }
        } else {
            l4_port(ctx, at, ip_end, &mut pkt)?;
        }
    }
    Ok(pkt)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
