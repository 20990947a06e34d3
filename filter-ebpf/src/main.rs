//! rampart's XDP program: decides on the source address of every packet.
//!
//! Order of checks (one verdict, one counter per packet):
//!
//! 1. Non-IP frames (ARP, LLDP, ...) pass; IPv6 neighbour/router discovery
//!    (ICMPv6 133-137) passes. Truncated or malformed IP headers get
//!    `MALFORMED` and are dropped, or passed when `DROP_MALFORMED` is off.
//! 2. The source's class comes from one lookup in the prefix table (bypass,
//!    deny CIDRs, allowlist and country folded together by the daemon).
//! 3. Bypass passes. Exact deny entries and deny CIDRs drop (unless expired).
//! 4. Traffic outside the protected scope passes.
//! 5. Protected traffic: allowlist, country, then the per-source flood limit.
//!
//! Non-first fragments and packets whose L4 header cannot be reached carry
//! no port: they are judged by the source alone (treated as protected when
//! their protocol is TCP or UDP and any port of it is protected).
#![no_std]
#![no_main]

use core::mem;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use rampart_common::{
    CHILD_BASE, COUNTRY_SLOTS, Class, Config, DenyEntry, DropEvent, EVENT_RING_BYTES,
    EventBudget, FloodState, MAX_CLASSES, MAX_DEPTH, MAX_EXACT_DENY, MAX_FLOOD_SOURCES,
    NODES_PER_BUFFER, Node, PORT_WORDS, SourceKey, V4_ROOT, V6_ROOT, class_flags,
    config_flags, port_slot, reason, ANY_PORT,
};

#[map]
static RAMPART_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static RAMPART_PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);
#[map]
static RAMPART_NODES: Array<Node> = Array::with_max_entries(2 * NODES_PER_BUFFER, 0);
#[map]
static RAMPART_CLASSES: Array<Class> = Array::with_max_entries(2 * MAX_CLASSES, 0);
/// BPF_F_NO_PREALLOC: memory is used only for entries that exist.
#[map]
static RAMPART_DENY_V4: HashMap<[u8; 4], DenyEntry> =
    HashMap::with_max_entries(MAX_EXACT_DENY, BPF_F_NO_PREALLOC);
#[map]
static RAMPART_DENY_V6: HashMap<[u8; 16], DenyEntry> =
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

/// What the parser learnt about a packet.
struct Packet {
    /// Source address; IPv4 uses the first 4 bytes.
    src: [u8; 16],
    v6: bool,
    protocol: u8,
    /// Destination port when the L4 header was read.
    dst_port: Option<u16>,
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

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Stop> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(Stop::Malformed);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, Stop> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: ptr_at checked that the bytes are inside the packet; T is a
    // byte array or integer and read_unaligned needs no alignment.
    Ok(unsafe { p.read_unaligned() })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[xdp]
pub fn rampart(ctx: XdpContext) -> u32 {
    let (reason, action) = decide(&ctx);
    count(reason);
    action
}

#[inline(always)]
fn count(r: u32) {
    if let Some(c) = RAMPART_COUNTERS.get_ptr_mut(r) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn config() -> Config {
    match RAMPART_CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}

#[inline(always)]
fn decide(ctx: &XdpContext) -> (u32, u32) {
    let cfg = config();
    let pkt = match parse(ctx) {
        Ok(p) => p,
        Err(Stop::NotIp) => return (reason::NOT_IP, xdp_action::XDP_PASS),
        Err(Stop::NeighborDiscovery) => {
            return (reason::NEIGHBOR_DISCOVERY, xdp_action::XDP_PASS);
        }
        Err(Stop::Malformed) => {
            let action = if cfg.flags & config_flags::DROP_MALFORMED != 0
                && cfg.flags & config_flags::MONITOR == 0
            {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            };
            return (reason::MALFORMED, action);
        }
    };
    let class = class_of(cfg.active, &pkt);
    let r = judge(&cfg, &pkt, &class);
    if r == reason::PASS || r == reason::PASS_UNPROTECTED || r == reason::BYPASS {
        return (r, xdp_action::XDP_PASS);
    }
    (r, dropped(ctx, &cfg, &pkt, r, class.country))
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
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(b) = RAMPART_EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // Per-CPU GCRA: at most one event per interval after a small burst.
    // SAFETY: per-CPU slot.
    let tat = unsafe { (*b).tat_ns };
    let tat = if tat > now { tat } else { now };
    if tat - now > cfg.event_tolerance_ns {
        return;
    }
    unsafe { (*b).tat_ns = tat + cfg.event_interval_ns };
    let Some(mut entry) = RAMPART_EVENTS.reserve::<DropEvent>(0) else {
        return;
    };
    let mut src = pkt.src;
    if !pkt.v6 {
        src = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, src[0], src[1], src[2], src[3]];
    }
    entry.write(DropEvent {
        src,
        time_ns: now,
        ifindex: ctx.ingress_ifindex() as u32,
        reason: r,
        country,
        protocol: pkt.protocol,
        family: if pkt.v6 { 6 } else { 4 },
        dst_port: pkt.dst_port.unwrap_or(0),
        _pad: 0,
    });
    entry.submit(0);
}

#[inline(always)]
fn judge(cfg: &Config, pkt: &Packet, class: &Class) -> u32 {
    if class.flags & class_flags::BYPASS != 0 {
        return reason::BYPASS;
    }
    if exact_denied(pkt) {
        return reason::DENY;
    }
    if class.flags & class_flags::DENY != 0
        && (class.deny_expires_ns == 0 || unsafe { bpf_ktime_get_ns() } < class.deny_expires_ns)
    {
        return reason::DENY;
    }
    if !protected(cfg, pkt) {
        return reason::PASS_UNPROTECTED;
    }
    if class.flags & class_flags::NOT_ALLOWLISTED != 0 {
        return reason::NOT_ALLOWLISTED;
    }
    if class.flags & class_flags::COUNTRY_BLOCKED != 0 {
        return reason::COUNTRY;
    }
    if cfg.flags & config_flags::FLOOD != 0 && flooding(cfg, pkt) {
        return reason::FLOOD;
    }
    reason::PASS
}

#[inline(always)]
fn exact_denied(pkt: &Packet) -> bool {
    let entry = if pkt.v6 {
        RAMPART_DENY_V6.get_ptr(&pkt.src)
    } else {
        let k = [pkt.src[0], pkt.src[1], pkt.src[2], pkt.src[3]];
        RAMPART_DENY_V4.get_ptr(&k)
    };
    match entry {
        None => false,
        Some(p) => {
            // SAFETY: a map value pointer from a successful lookup.
            let expires = unsafe { (*p).expires_ns };
            expires == 0 || unsafe { bpf_ktime_get_ns() } < expires
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
    match pkt.dst_port {
        Some(port) => {
            let (word, bit) = port_slot(udp, port);
            match RAMPART_PORTS.get(word) {
                Some(w) => *w & bit != 0,
                None => false,
            }
        }
        // No port (non-first fragment, unreachable L4 header): judged by
        // the source alone when any port of the protocol is protected.
        None => any_port(udp),
    }
}

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
    let mut key = SourceKey { addr: pkt.src };
    if !pkt.v6 {
        key.addr = [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, pkt.src[0], pkt.src[1], pkt.src[2],
            pkt.src[3],
        ];
    }
    let now = unsafe { bpf_ktime_get_ns() };
    match RAMPART_FLOOD.get_ptr_mut(&key) {
        Some(p) => {
            // GCRA: racy across CPUs by design (a lost update lets one more
            // packet through, never drops a legitimate one).
            // SAFETY: a map value pointer from a successful lookup.
            let tat = unsafe { (*p).tat_ns };
            let tat = if tat > now { tat } else { now };
            if tat - now > cfg.flood_tolerance_ns {
                return true;
            }
            unsafe { (*p).tat_ns = tat + cfg.flood_interval_ns };
            false
        }
        None => {
            let _ = RAMPART_FLOOD.insert(
                &key,
                &FloodState {
                    tat_ns: now + cfg.flood_interval_ns,
                },
                0,
            );
            false
        }
    }
}

/// The class of the packet's source: one walk of the prefix table.
#[inline(always)]
fn class_of(active: u32, pkt: &Packet) -> Class {
    let id = if pkt.v6 {
        walk(active, V6_ROOT, &pkt.src, 16)
    } else {
        walk(active, V4_ROOT, &pkt.src, 4)
    };
    let idx = (active & 1) * MAX_CLASSES + (id as u32 & (MAX_CLASSES - 1));
    match RAMPART_CLASSES.get(idx) {
        Some(c) => *c,
        None => Class::default(),
    }
}

#[inline(always)]
fn walk(active: u32, root: u32, addr: &[u8; 16], len: usize) -> u16 {
    let base = (active & 1) * NODES_PER_BUFFER;
    let mut entry = match RAMPART_NODES.get(base + root + addr[0] as u32) {
        Some(n) => n.entries[addr[1] as usize],
        None => return 0,
    };
    let mut depth = 2;
    while depth < MAX_DEPTH {
        if depth >= len || entry < CHILD_BASE {
            break;
        }
        let node = (entry - CHILD_BASE) as u32;
        entry = match RAMPART_NODES.get(base + node) {
            Some(n) => n.entries[addr[depth] as usize],
            None => return 0,
        };
        depth += 1;
    }
    if entry >= CHILD_BASE { 0 } else { entry }
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Packet, Stop> {
    let mut proto: u16 = be16(read::<[u8; 2]>(ctx, 12)?);
    let mut off = ETH_HLEN;
    let mut i = 0;
    while i < MAX_VLAN_DEPTH {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = be16(read::<[u8; 2]>(ctx, off + 2)?);
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
    let h: [u8; 20] = read(ctx, off)?;
    if h[0] >> 4 != 4 {
        return Err(Stop::Malformed);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let total = be16([h[2], h[3]]) as usize;
    if ihl < 20 || total < ihl || ctx.data() + off + total > ctx.data_end() {
        return Err(Stop::Malformed);
    }
    let mut src = [0u8; 16];
    src[0] = h[12];
    src[1] = h[13];
    src[2] = h[14];
    src[3] = h[15];
    let protocol = h[9];
    let first_fragment = be16([h[6], h[7]]) & 0x1fff == 0;
    let mut dst_port = None;
    if first_fragment {
        dst_port = l4_port(ctx, off + ihl, protocol, ctx.data() + off + total)?;
    }
    Ok(Packet {
        src,
        v6: false,
        protocol,
        dst_port,
        unknown_l4: false,
    })
}

/// The destination port of a TCP or UDP header at `off`; the whole L4 header
/// must be inside the IP packet (a first fragment too short to hold it is
/// malformed, RFC 1858).
#[inline(always)]
fn l4_port(ctx: &XdpContext, off: usize, protocol: u8, ip_end: usize) -> Result<Option<u16>, Stop> {
    let hlen = match protocol {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        _ => return Ok(None),
    };
    let ports: [u8; 4] = read(ctx, off)?;
    if ctx.data() + off + hlen > ip_end {
        return Err(Stop::Malformed);
    }
    Ok(Some(be16([ports[2], ports[3]])))
}

/// Where the IPv6 extension-header walk ended.
const WALK_L4: u8 = 0;
const WALK_NO_PORT: u8 = 1;
const WALK_TOO_LONG: u8 = 2;

#[inline(always)]
fn parse_v6(ctx: &XdpContext, off: usize) -> Result<Packet, Stop> {
    let h: [u8; 8] = read(ctx, off)?;
    if h[0] >> 4 != 6 {
        return Err(Stop::Malformed);
    }
    let src: [u8; 16] = read(ctx, off + 8)?;
    let payload = be16([h[4], h[5]]) as usize;
    let ip_end = ctx.data() + off + IPV6_HLEN + payload;
    if ip_end > ctx.data_end() {
        return Err(Stop::Malformed);
    }
    let mut next = h[6];
    let mut at = off + IPV6_HLEN;
    let mut walk = WALK_TOO_LONG;
    let mut i = 0;
    while i < MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => {
                let e: [u8; 2] = read(ctx, at)?;
                next = e[0];
                at += (e[1] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let e: [u8; 2] = read(ctx, at)?;
                next = e[0];
                at += (e[1] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e: [u8; 4] = read(ctx, at)?;
                next = e[0];
                at += 8;
                if be16([e[2], e[3]]) & 0xfff8 != 0 {
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
        dst_port: None,
        // A chain longer than the walk: judged by source alone, as protected
        // traffic (the stack behind us may still find a port).
        unknown_l4: walk == WALK_TOO_LONG,
    };
    if walk == WALK_L4 {
        if next == IPPROTO_ICMPV6 {
            // The whole 4-byte ICMPv6 header (a 1-byte read at a variable
            // offset gets a bounds check the verifier cannot follow).
            let t: [u8; 4] = read(ctx, at)?;
            if (133..=137).contains(&t[0]) {
                return Err(Stop::NeighborDiscovery);
            }
        } else {
            pkt.dst_port = l4_port(ctx, at, next, ip_end)?;
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
