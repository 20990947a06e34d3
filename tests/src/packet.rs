//! Crafted frames for BPF_PROG_TEST_RUN and for injection on a veth
//! (`Pair::inject`). Checksums are left zero: the XDP
//! program never reads them. (A byte builder of a few dozen lines is clearer
//! here than a packet crate: the tests need malformed and truncated frames
//! that such crates refuse to build.)

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// A frame under construction: Ethernet header plus optional VLAN tags.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    vlans: Vec<(u16, u16)>,
}

impl Frame {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an 802.1Q (0x8100) tag.
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans.push((0x8100, id));
        self
    }

    /// Adds an 802.1ad (0x88a8) service tag (put it first for QinQ).
    pub fn qinq(mut self, id: u16) -> Self {
        self.vlans.push((0x88a8, id));
        self
    }

    /// Adds a tag of any type (`tpid`), e.g. the pre-standard QinQ 0x9100.
    pub fn tag(mut self, tpid: u16, id: u16) -> Self {
        self.vlans.push((tpid, id));
        self
    }

    fn eth(&self, ethertype: u16) -> Vec<u8> {
        let mut b = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (tpid, id) in &self.vlans {
            b.extend_from_slice(&tpid.to_be_bytes());
            b.extend_from_slice(&id.to_be_bytes());
        }
        b.extend_from_slice(&ethertype.to_be_bytes());
        b
    }

    /// An ARP request.
    pub fn arp(&self, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut b = self.eth(0x0806);
        b.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
        b.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        b.extend_from_slice(&sender.octets());
        b.extend_from_slice(&[0; 6]);
        b.extend_from_slice(&target.octets());
        b
    }

    /// An IPv4 packet; `l4` is the transport header and payload.
    pub fn ipv4(&self, v4: &Ipv4) -> Vec<u8> {
        let mut b = self.eth(0x0800);
        let opts_len = v4.options.len();
        assert!(opts_len.is_multiple_of(4) && opts_len <= 40);
        let ihl = 5 + opts_len / 4;
        let total = (ihl * 4 + v4.l4.len()) as u16;
        b.push(0x40 | ihl as u8);
        b.push(0);
        b.extend_from_slice(&total.to_be_bytes());
        b.extend_from_slice(&[0, 1]);
        let frag = (if v4.more_fragments { 0x2000 } else { 0 }) | (v4.frag_offset & 0x1fff);
        b.extend_from_slice(&frag.to_be_bytes());
        b.push(64);
        b.push(v4.protocol);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&v4.src.octets());
        b.extend_from_slice(&v4.dst.octets());
        b.extend_from_slice(&v4.options);
        b.extend_from_slice(&v4.l4);
        b
    }

    /// An IPv6 packet; `ext` are (next-header-of-this-ext, bytes) pairs
    /// already encoded, chained in order before `l4`.
    pub fn ipv6(&self, v6: &Ipv6) -> Vec<u8> {
        let mut b = self.eth(0x86dd);
        let ext_len: usize = v6.ext.iter().map(|(_, e)| e.len()).sum();
        let payload = (ext_len + v6.l4.len()) as u16;
        b.extend_from_slice(&[0x60, 0, 0, 0]);
        b.extend_from_slice(&payload.to_be_bytes());
        let first = v6.ext.first().map_or(v6.protocol, |(t, _)| *t);
        b.push(first);
        b.push(64);
        b.extend_from_slice(&v6.src.octets());
        b.extend_from_slice(&v6.dst.octets());
        for (i, (_, e)) in v6.ext.iter().enumerate() {
            let next = v6.ext.get(i + 1).map_or(v6.protocol, |(t, _)| *t);
            let mut e = e.clone();
            e[0] = next;
            b.extend_from_slice(&e);
        }
        b.extend_from_slice(&v6.l4);
        b
    }
}

#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub options: Vec<u8>,
    pub frag_offset: u16,
    pub more_fragments: bool,
    pub l4: Vec<u8>,
}

impl Ipv4 {
    pub fn tcp(src: Ipv4Addr, dport: u16) -> Self {
        Self {
            src,
            dst: Ipv4Addr::new(198, 18, 0, 1),
            protocol: TCP,
            options: vec![],
            frag_offset: 0,
            more_fragments: false,
            l4: tcp(dport),
        }
    }
    pub fn udp(src: Ipv4Addr, dport: u16) -> Self {
        Self {
            protocol: UDP,
            l4: udp(dport),
            ..Self::tcp(src, 0)
        }
    }
}

#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub protocol: u8,
    pub ext: Vec<(u8, Vec<u8>)>,
    pub l4: Vec<u8>,
}

impl Ipv6 {
    pub fn tcp(src: Ipv6Addr, dport: u16) -> Self {
        Self {
            src,
            dst: "2001:db8::1".parse().unwrap_or(Ipv6Addr::LOCALHOST),
            protocol: TCP,
            ext: vec![],
            l4: tcp(dport),
        }
    }
    pub fn udp(src: Ipv6Addr, dport: u16) -> Self {
        Self {
            protocol: UDP,
            l4: udp(dport),
            ..Self::tcp(src, 0)
        }
    }
    /// ICMPv6 of `kind` (135 = neighbour solicitation, 128 = echo request).
    pub fn icmp(src: Ipv6Addr, kind: u8) -> Self {
        Self {
            protocol: ICMPV6,
            l4: vec![kind, 0, 0, 0, 0, 0, 0, 0],
            ..Self::tcp(src, 0)
        }
    }
}

/// A 20-byte TCP SYN header plus 8 bytes of payload.
pub fn tcp(dport: u16) -> Vec<u8> {
    let mut b = vec![0xc0, 0x01];
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    b.extend_from_slice(b"payload!");
    b
}

/// An 8-byte UDP header plus 8 bytes of payload.
pub fn udp(dport: u16) -> Vec<u8> {
    let mut b = vec![0xc0, 0x01];
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&[0, 16, 0, 0]);
    b.extend_from_slice(b"payload!");
    b
}

/// An IPv6 extension header of the generic (hop-by-hop, routing,
/// destination options) form, `len8` units of 8 bytes after the first 8.
pub fn ext_generic(kind: u8, len8: u8) -> (u8, Vec<u8>) {
    let mut e = vec![0u8; 8 * (len8 as usize + 1)];
    e[1] = len8;
    (kind, e)
}

/// An IPv6 fragment header with `offset` in 8-byte units.
pub fn ext_fragment(offset: u16, more: bool) -> (u8, Vec<u8>) {
    let v = (offset << 3) | u16::from(more);
    let b = v.to_be_bytes();
    (44, vec![0, 0, b[0], b[1], 0, 0, 0, 7])
}

/// A UDP datagram over IPv6 that the receiving stack accepts (IPv6 requires
/// the UDP checksum): `payload` from `src` port 4444 to `dst` port `dport`.
/// Frames built by [`Frame`] go to 02:00:00:00:00:01; give the receiving
/// interface that address for the stack to take them.
pub fn udp6_datagram(src: Ipv6Addr, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Ipv6 {
    let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
    let mut l4 = vec![0x11, 0x5c];
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&len.to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    // RFC 8200 8.1: the pseudo-header (addresses, length, next header) and
    // the datagram, in 16-bit one's complement.
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).map_or(0, |b| u32::from(*b));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&u32::from(len).to_be_bytes());
    add(&[0, 0, 0, UDP]);
    add(&l4);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let check = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    l4[6..8].copy_from_slice(&check.to_be_bytes());
    Ipv6 {
        src,
        dst,
        protocol: UDP,
        ext: vec![],
        l4,
    }
}
