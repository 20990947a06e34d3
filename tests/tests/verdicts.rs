//! Kernel verdict tests: the real XDP program, loaded into this kernel, run
//! on crafted packets through BPF_PROG_TEST_RUN. Each case asserts the XDP
//! action and the one counter that moved.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use ipnet::IpNet;
use rampart::{
    filter::{EntryOrigin, Filter, ListEntry, ListKind, Lists, Protect, Settings},
    rules::CountryPolicy,
};
use rampart_common::country_index;
use rampart_tests::{
    PinDir,
    packet::{Frame, Ipv4, Ipv6, ext_fragment, ext_generic},
    privileged,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Harness {
    filter: Filter,
    _pins: PinDir,
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn cc(code: &str) -> u16 {
    let b = code.as_bytes();
    country_index([b[0], b[1]]).unwrap()
}

fn lists(bypass: &[&str], deny: &[&str], allow: &[&str]) -> Lists {
    let mut l = Lists::default();
    for (kind, items) in [
        (ListKind::Bypass, bypass),
        (ListKind::Deny, deny),
        (ListKind::Allow, allow),
    ] {
        for s in items {
            for net in rampart::rules::parse_entry(s).unwrap() {
                l.insert(
                    kind,
                    ListEntry {
                        net,
                        expires_ns: 0,
                        origin: EntryOrigin::Config,
                    },
                );
            }
        }
    }
    l
}

/// Countries of the test data: xx is blocked in the standard rule set.
fn countries() -> Vec<(IpNet, u16)> {
    vec![
        (net("198.19.0.0/16"), cc("xx")),
        (net("198.19.7.0/24"), cc("aa")),
        (net("2001:db8:c000::/40"), cc("xx")),
        (net("2001:db8:c000:aa00::/56"), cc("aa")),
    ]
}

impl Harness {
    fn new(settings: Settings, lists: Lists, policy: CountryPolicy) -> Self {
        let pins = PinDir::new();
        let mut filter = Filter::open(pins.path()).expect("load the XDP program");
        filter
            .replace_all(settings, lists, countries(), policy)
            .expect("apply rules");
        Self {
            filter,
            _pins: pins,
        }
    }

    fn standard() -> Self {
        Self::new(
            Settings::default(),
            lists(
                &["198.18.3.0/24", "2001:db8:3::/48"],
                &[
                    "198.18.1.1",
                    "198.18.2.0/24",
                    "2001:db8::bad",
                    "2001:db8:dead::/48",
                ],
                &[],
            ),
            CountryPolicy::Block(BTreeSet::from([cc("xx")])),
        )
    }

    /// Runs one packet: (action, the name of the one counter that moved).
    fn run(&self, packet: &[u8]) -> (u32, &'static str) {
        let before = self.filter.counters().unwrap();
        let (action, _) = self.filter_kernel_run(packet);
        let after = self.filter.counters().unwrap();
        let moved: Vec<(&'static str, u64)> = after
            .by_reason
            .iter()
            .zip(before.by_reason.iter())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, b)| (a.0, a.1 - b.1))
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "exactly one counter moves per packet: {moved:?}"
        );
        assert_eq!(moved[0].1, 1, "by one: {moved:?}");
        (action, moved[0].0)
    }

    fn filter_kernel_run(&self, packet: &[u8]) -> (u32, Duration) {
        self.filter.kernel().test_run(packet, 1).unwrap()
    }

    fn expect(&self, what: &str, packet: &[u8], action: u32, counter: &str) {
        let got = self.run(packet);
        assert_eq!(got, (action, counter_static(counter)), "{what}");
    }
}

fn counter_static(name: &str) -> &'static str {
    rampart_common::REASON_NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or_else(|| panic!("no counter named {name}"))
}

#[test]
fn ipv4_rules_on_every_encapsulation() {
    if !privileged() {
        return;
    }
    let h = Harness::standard();
    let frames = [
        ("untagged", Frame::new()),
        ("802.1Q", Frame::new().vlan(10)),
        ("QinQ", Frame::new().qinq(100).vlan(10)),
    ];
    for (enc, f) in &frames {
        let c = |s: &str| format!("{enc}: {s}");
        h.expect(
            &c("allowed to API"),
            &f.ipv4(&Ipv4::tcp(v4("198.18.0.5"), 443)),
            XDP_PASS,
            "passed",
        );
        h.expect(
            &c("allowed to ssh"),
            &f.ipv4(&Ipv4::tcp(v4("198.18.0.5"), 22)),
            XDP_PASS,
            "passed_unprotected",
        );
        h.expect(
            &c("exact deny, API"),
            &f.ipv4(&Ipv4::tcp(v4("198.18.1.1"), 443)),
            XDP_DROP,
            "denied",
        );
        h.expect(
            &c("exact deny, any port"),
            &f.ipv4(&Ipv4::udp(v4("198.18.1.1"), 53)),
            XDP_DROP,
            "denied",
        );
        h.expect(
            &c("neighbour of exact deny"),
            &f.ipv4(&Ipv4::tcp(v4("198.18.1.2"), 443)),
            XDP_PASS,
            "passed",
        );
        h.expect(
            &c("deny CIDR"),
            &f.ipv4(&Ipv4::tcp(v4("198.18.2.200"), 443)),
            XDP_DROP,
            "denied",
        );
        h.expect(
            &c("bypass"),
            &f.ipv4(&Ipv4::tcp(v4("198.18.3.9"), 443)),
            XDP_PASS,
            "bypassed",
        );
        h.expect(
            &c("blocked country, API"),
            &f.ipv4(&Ipv4::tcp(v4("198.19.200.1"), 443)),
            XDP_DROP,
            "country",
        );
        h.expect(
            &c("blocked country, ssh"),
            &f.ipv4(&Ipv4::tcp(v4("198.19.200.1"), 22)),
            XDP_PASS,
            "passed_unprotected",
        );
        h.expect(
            &c("more specific country"),
            &f.ipv4(&Ipv4::tcp(v4("198.19.7.7"), 443)),
            XDP_PASS,
            "passed",
        );
        h.expect(
            &c("udp/443 not protected"),
            &f.ipv4(&Ipv4::udp(v4("198.19.200.1"), 443)),
            XDP_PASS,
            "passed_unprotected",
        );
        h.expect(
            &c("ARP from a denied sender"),
            &f.arp(v4("198.18.1.1"), v4("198.18.0.1")),
            XDP_PASS,
            "not_ip",
        );
    }
}

#[test]
fn ipv4_options_fragments_and_malformed_headers() {
    if !privileged() {
        return;
    }
    let h = Harness::standard();
    let f = Frame::new();
    let mut opts = Ipv4::tcp(v4("198.19.200.1"), 443);
    opts.options = vec![1; 40]; // IHL 15: 40 bytes of NOP options
    h.expect("IHL 15, blocked", &f.ipv4(&opts), XDP_DROP, "country");
    opts.src = v4("198.18.0.5");
    h.expect("IHL 15, allowed", &f.ipv4(&opts), XDP_PASS, "passed");
    opts.l4 = rampart_tests::packet::tcp(22);
    h.expect(
        "IHL 15 reaches the port",
        &f.ipv4(&opts),
        XDP_PASS,
        "passed_unprotected",
    );

    // A non-first fragment has no port: judged by the source alone.
    let mut frag = Ipv4::tcp(v4("198.19.200.1"), 22);
    frag.frag_offset = 185;
    frag.l4 = vec![0xab; 16];
    h.expect(
        "non-first fragment, blocked country",
        &f.ipv4(&frag),
        XDP_DROP,
        "country",
    );
    frag.src = v4("198.18.0.5");
    h.expect(
        "non-first fragment, allowed",
        &f.ipv4(&frag),
        XDP_PASS,
        "passed",
    );
    frag.src = v4("198.18.1.1");
    h.expect(
        "non-first fragment, denied",
        &f.ipv4(&frag),
        XDP_DROP,
        "denied",
    );
    // A first fragment carries the port.
    let mut first = Ipv4::tcp(v4("198.19.200.1"), 22);
    first.more_fragments = true;
    h.expect(
        "first fragment to ssh",
        &f.ipv4(&first),
        XDP_PASS,
        "passed_unprotected",
    );
    // A first fragment too short for a TCP header is malformed (RFC 1858).
    first.l4 = first.l4[..8].to_vec();
    h.expect(
        "tiny first fragment",
        &f.ipv4(&first),
        XDP_DROP,
        "malformed",
    );

    let good = f.ipv4(&Ipv4::tcp(v4("198.18.0.5"), 443));
    let mut bad = good.clone();
    bad[14] = 0x44; // IHL 4
    h.expect("IHL < 5", &bad, XDP_DROP, "malformed");
    let mut bad = good.clone();
    bad[14] = 0x65; // version 6 in an IPv4 ethertype
    h.expect("wrong version", &bad, XDP_DROP, "malformed");
    let mut bad = good.clone();
    bad[16..18].copy_from_slice(&10u16.to_be_bytes()); // total length < IHL
    h.expect("total length < header", &bad, XDP_DROP, "malformed");
    // 0 means "longer than 65,535" (BIG TCP after GRO) only on such a frame.
    bad[16..18].copy_from_slice(&0u16.to_be_bytes());
    h.expect("total length 0, short frame", &bad, XDP_DROP, "malformed");
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 12]); // Ethernet padding after the packet
    h.expect("trailing padding", &padded, XDP_PASS, "passed");

    // BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header
    // (so does every driver): truncations start there.
    for len in 14..good.len() {
        h.expect(
            &format!("IPv4 truncated to {len}"),
            &good[..len],
            XDP_DROP,
            "malformed",
        );
    }
    h.expect("IPv4 whole", &good, XDP_PASS, "passed");
}

#[test]
fn old_qinq_tag_types_are_parsed_as_vlan_tags() {
    if !privileged() {
        return;
    }
    // 0x9100, 0x9200 and 0x9300 (QinQ before 802.1ad): before, such a frame
    // counted as not_ip and passed whatever its source.
    let h = Harness::standard();
    for tpid in [0x9100, 0x9200, 0x9300] {
        let frames = [
            ("alone", Frame::new().tag(tpid, 100)),
            ("outer", Frame::new().tag(tpid, 100).vlan(10)),
        ];
        for (enc, f) in &frames {
            let c = |s: &str| format!("{tpid:#x} {enc}: {s}");
            h.expect(
                &c("exact deny"),
                &f.ipv4(&Ipv4::tcp(v4("198.18.1.1"), 443)),
                XDP_DROP,
                "denied",
            );
            h.expect(
                &c("allowed"),
                &f.ipv4(&Ipv4::tcp(v4("198.18.0.5"), 443)),
                XDP_PASS,
                "passed",
            );
            h.expect(
                &c("IPv6 deny CIDR"),
                &f.ipv6(&Ipv6::tcp(v6("2001:db8:dead::1"), 443)),
                XDP_DROP,
                "denied",
            );
            h.expect(
                &c("ARP"),
                &f.arp(v4("198.18.0.5"), v4("198.18.0.1")),
                XDP_PASS,
                "not_ip",
            );
        }
        // A third tag of these types is one more than parsed, as for 802.1Q.
        h.expect(
            &format!("{tpid:#x} third tag"),
            &Frame::new()
                .qinq(1)
                .vlan(2)
                .tag(tpid, 3)
                .ipv4(&Ipv4::tcp(v4("198.18.1.1"), 443)),
            XDP_DROP,
            "malformed",
        );
    }
}

#[test]
fn more_vlan_tags_than_parsed_are_malformed() {
    if !privileged() {
        return;
    }
    // The program parses two tags. A third one must not make the frame "not
    // IP" (which passes whatever its source): before, a denied source in a
    // frame with three 802.1Q tags got XDP_PASS, counted as not_ip.
    let h = Harness::standard();
    let frames = [
        ("802.1Q x3", Frame::new().vlan(10).vlan(20).vlan(30)),
        ("QinQ + 802.1Q", Frame::new().qinq(100).vlan(10).vlan(20)),
        ("802.1ad x3", Frame::new().qinq(1).qinq(2).qinq(3)),
        ("4 tags", Frame::new().qinq(100).vlan(10).vlan(20).vlan(30)),
    ];
    for (enc, f) in &frames {
        let c = |s: &str| format!("{enc}: {s}");
        h.expect(
            &c("exact deny"),
            &f.ipv4(&Ipv4::tcp(v4("198.18.1.1"), 443)),
            XDP_DROP,
            "malformed",
        );
        h.expect(
            &c("allowed source"),
            &f.ipv4(&Ipv4::tcp(v4("198.18.0.5"), 443)),
            XDP_DROP,
            "malformed",
        );
        h.expect(
            &c("IPv6 deny"),
            &f.ipv6(&Ipv6::tcp(v6("2001:db8::bad"), 443)),
            XDP_DROP,
            "malformed",
        );
        h.expect(
            &c("ARP"),
            &f.arp(v4("198.18.0.5"), v4("198.18.0.1")),
            XDP_DROP,
            "malformed",
        );
    }
    // Two tags are still parsed and judged.
    h.expect(
        "QinQ, exact deny",
        &Frame::new()
            .qinq(100)
            .vlan(10)
            .ipv4(&Ipv4::tcp(v4("198.18.1.1"), 443)),
        XDP_DROP,
        "denied",
    );

    // Handled as any malformed frame: passed (and counted) with
    // drop_malformed = false.
    let settings = Settings {
        drop_malformed: false,
        ..Settings::default()
    };
    let h = Harness::new(
        settings,
        lists(&[], &["198.18.1.1"], &[]),
        CountryPolicy::Off,
    );
    h.expect(
        "802.1Q x3, drop_malformed = false",
        &Frame::new()
            .vlan(10)
            .vlan(20)
            .vlan(30)
            .ipv4(&Ipv4::tcp(v4("198.18.1.1"), 443)),
        XDP_PASS,
        "malformed",
    );
}

#[test]
fn ipv6_rules_extension_headers_and_neighbour_discovery() {
    if !privileged() {
        return;
    }
    let h = Harness::standard();
    for (enc, f) in [
        ("untagged", Frame::new()),
        ("QinQ", Frame::new().qinq(7).vlan(8)),
    ] {
        let c = |s: &str| format!("{enc}: {s}");
        h.expect(
            &c("allowed"),
            &f.ipv6(&Ipv6::tcp(v6("2001:db8::5"), 443)),
            XDP_PASS,
            "passed",
        );
        h.expect(
            &c("exact deny"),
            &f.ipv6(&Ipv6::tcp(v6("2001:db8::bad"), 443)),
            XDP_DROP,
            "denied",
        );
        h.expect(
            &c("deny /48"),
            &f.ipv6(&Ipv6::udp(v6("2001:db8:dead:1::9"), 53)),
            XDP_DROP,
            "denied",
        );
        h.expect(
            &c("bypass"),
            &f.ipv6(&Ipv6::tcp(v6("2001:db8:3::1"), 443)),
            XDP_PASS,
            "bypassed",
        );
        h.expect(
            &c("blocked country"),
            &f.ipv6(&Ipv6::tcp(v6("2001:db8:c000:1::1"), 443)),
            XDP_DROP,
            "country",
        );
        h.expect(
            &c("more specific country"),
            &f.ipv6(&Ipv6::tcp(v6("2001:db8:c000:aa01::1"), 443)),
            XDP_PASS,
            "passed",
        );
        h.expect(
            &c("blocked country, ssh"),
            &f.ipv6(&Ipv6::tcp(v6("2001:db8:c000:1::1"), 22)),
            XDP_PASS,
            "passed_unprotected",
        );
        h.expect(
            &c("ND from a denied source"),
            &f.ipv6(&Ipv6::icmp(v6("2001:db8::bad"), 135)),
            XDP_PASS,
            "neighbor_discovery",
        );
        h.expect(
            &c("RA from a denied source"),
            &f.ipv6(&Ipv6::icmp(v6("2001:db8::bad"), 134)),
            XDP_PASS,
            "neighbor_discovery",
        );
        h.expect(
            &c("echo from a denied source"),
            &f.ipv6(&Ipv6::icmp(v6("2001:db8::bad"), 128)),
            XDP_DROP,
            "denied",
        );
    }
    let f = Frame::new();
    // Extension headers before TCP: the walk reaches the port.
    let mut p = Ipv6::tcp(v6("2001:db8:c000:1::1"), 443);
    p.ext = vec![ext_generic(0, 0), ext_generic(60, 1), ext_generic(43, 0)];
    h.expect(
        "3 ext headers, blocked, API",
        &f.ipv6(&p),
        XDP_DROP,
        "country",
    );
    p.l4 = rampart_tests::packet::tcp(22);
    h.expect(
        "3 ext headers, blocked, ssh",
        &f.ipv6(&p),
        XDP_PASS,
        "passed_unprotected",
    );
    // The walk takes up to 6 headers: the L4 header after the 6th is read.
    p.ext = std::iter::once(ext_generic(0, 0))
        .chain((0..5).map(|_| ext_generic(60, 0)))
        .collect();
    h.expect(
        "6 ext headers, blocked, ssh",
        &f.ipv6(&p),
        XDP_PASS,
        "passed_unprotected",
    );
    p.l4 = rampart_tests::packet::tcp(443);
    h.expect(
        "6 ext headers, blocked, API",
        &f.ipv6(&p),
        XDP_DROP,
        "country",
    );
    p.l4 = rampart_tests::packet::tcp(22);
    // A chain longer than the walk: judged by source as protected traffic.
    p.ext.push(ext_generic(60, 0));
    h.expect(
        "7 ext headers, blocked, ssh",
        &f.ipv6(&p),
        XDP_DROP,
        "country",
    );
    p.ext = (0..8).map(|_| ext_generic(60, 0)).collect();
    h.expect("8 ext headers, blocked", &f.ipv6(&p), XDP_DROP, "country");
    p.src = v6("2001:db8::5");
    h.expect("8 ext headers, allowed", &f.ipv6(&p), XDP_PASS, "passed");
    // Fragments.
    let mut frag = Ipv6::tcp(v6("2001:db8:c000:1::1"), 22);
    frag.ext = vec![ext_fragment(100, true)];
    frag.l4 = vec![0xab; 16];
    h.expect(
        "non-first fragment, blocked",
        &f.ipv6(&frag),
        XDP_DROP,
        "country",
    );
    frag.src = v6("2001:db8::5");
    h.expect(
        "non-first fragment, allowed",
        &f.ipv6(&frag),
        XDP_PASS,
        "passed",
    );
    let mut first = Ipv6::tcp(v6("2001:db8:c000:1::1"), 22);
    first.ext = vec![ext_fragment(0, true)];
    h.expect(
        "first fragment to ssh",
        &f.ipv6(&first),
        XDP_PASS,
        "passed_unprotected",
    );

    let good = f.ipv6(&Ipv6::tcp(v6("2001:db8::5"), 443));
    let mut bad = good.clone();
    bad[14] = 0x40;
    h.expect("wrong version", &bad, XDP_DROP, "malformed");
    for len in 14..good.len() {
        h.expect(
            &format!("IPv6 truncated to {len}"),
            &good[..len],
            XDP_DROP,
            "malformed",
        );
    }
    h.expect("IPv6 whole", &good, XDP_PASS, "passed");
    // An ICMPv6 header must be inside the IP payload: a type byte of 135 in
    // the padding after an empty payload is no neighbour solicitation.
    for (kind, src) in [(135, "2001:db8::bad"), (128, "2001:db8::5")] {
        let mut padded = f.ipv6(&Ipv6::icmp(v6(src), kind));
        padded[18..20].copy_from_slice(&0u16.to_be_bytes());
        h.expect(
            &format!("ICMPv6 {kind} in the padding"),
            &padded,
            XDP_DROP,
            "malformed",
        );
        padded[18..20].copy_from_slice(&3u16.to_be_bytes());
        h.expect(
            &format!("ICMPv6 {kind} header cut by the payload length"),
            &padded,
            XDP_DROP,
            "malformed",
        );
    }
    let mut empty = good.clone();
    empty[18..20].copy_from_slice(&0u16.to_be_bytes());
    h.expect(
        "payload length 0, short frame",
        &empty,
        XDP_DROP,
        "malformed",
    );
    let mut with_ext = Ipv6::tcp(v6("2001:db8::5"), 443);
    with_ext.ext = vec![ext_generic(0, 1)];
    let good = f.ipv6(&with_ext);
    for len in 54..good.len() {
        h.expect(
            &format!("IPv6+ext truncated to {len}"),
            &good[..len],
            XDP_DROP,
            "malformed",
        );
    }
}

#[test]
fn allowlist_and_allow_only_countries() {
    if !privileged() {
        return;
    }
    let h = Harness::new(
        Settings::default(),
        lists(
            &[],
            &[],
            &["198.18.0.0/24", "198.19.200.0/24", "2001:db8:1::/48"],
        ),
        CountryPolicy::Block(BTreeSet::from([cc("xx")])),
    );
    let f = Frame::new();
    h.expect(
        "allowlisted",
        &f.ipv4(&Ipv4::tcp(v4("198.18.0.5"), 443)),
        XDP_PASS,
        "passed",
    );
    h.expect(
        "not allowlisted",
        &f.ipv4(&Ipv4::tcp(v4("198.18.9.9"), 443)),
        XDP_DROP,
        "not_allowlisted",
    );
    h.expect(
        "not allowlisted, ssh",
        &f.ipv4(&Ipv4::tcp(v4("198.18.9.9"), 22)),
        XDP_PASS,
        "passed_unprotected",
    );
    h.expect(
        "allowlist beats country",
        &f.ipv4(&Ipv4::tcp(v4("198.19.200.1"), 443)),
        XDP_PASS,
        "passed",
    );
    h.expect(
        "v6 allowlisted",
        &f.ipv6(&Ipv6::tcp(v6("2001:db8:1::7"), 443)),
        XDP_PASS,
        "passed",
    );
    h.expect(
        "v6 not allowlisted",
        &f.ipv6(&Ipv6::tcp(v6("2001:db8:2::7"), 443)),
        XDP_DROP,
        "not_allowlisted",
    );

    let h = Harness::new(
        Settings::default(),
        lists(&[], &[], &[]),
        CountryPolicy::AllowOnly {
            allowed: BTreeSet::from([cc("aa")]),
            allow_unknown: false,
        },
    );
    h.expect(
        "allowed country",
        &f.ipv4(&Ipv4::tcp(v4("198.19.7.1"), 443)),
        XDP_PASS,
        "passed",
    );
    h.expect(
        "other country",
        &f.ipv4(&Ipv4::tcp(v4("198.19.8.1"), 443)),
        XDP_DROP,
        "country",
    );
    h.expect(
        "unknown country",
        &f.ipv4(&Ipv4::tcp(v4("198.18.0.5"), 443)),
        XDP_DROP,
        "country",
    );
    h.expect(
        "v6 allowed country",
        &f.ipv6(&Ipv6::tcp(v6("2001:db8:c000:aa00::1"), 443)),
        XDP_PASS,
        "passed",
    );
    h.expect(
        "v6 unknown country",
        &f.ipv6(&Ipv6::tcp(v6("2001:db8::5"), 443)),
        XDP_DROP,
        "country",
    );
}

#[test]
fn scope_all_monitor_and_malformed_pass() {
    if !privileged() {
        return;
    }
    let settings = Settings {
        protect: Protect::All,
        ..Settings::default()
    };
    let h = Harness::new(
        settings,
        lists(&[], &[], &[]),
        CountryPolicy::Block(BTreeSet::from([cc("xx")])),
    );
    let f = Frame::new();
    h.expect(
        "scope all: ssh is protected",
        &f.ipv4(&Ipv4::tcp(v4("198.19.200.1"), 22)),
        XDP_DROP,
        "country",
    );
    let mut icmp = Ipv4::tcp(v4("198.19.200.1"), 0);
    icmp.protocol = rampart_tests::packet::ICMP;
    icmp.l4 = vec![8, 0, 0, 0, 0, 0, 0, 0];
    h.expect(
        "scope all: ICMP is protected",
        &f.ipv4(&icmp),
        XDP_DROP,
        "country",
    );

    let settings = Settings {
        monitor: true,
        drop_malformed: false,
        ..Settings::default()
    };
    let h = Harness::new(
        settings,
        lists(&[], &["198.18.1.1"], &[]),
        CountryPolicy::Off,
    );
    h.expect(
        "monitor: counted, passed",
        &f.ipv4(&Ipv4::tcp(v4("198.18.1.1"), 443)),
        XDP_PASS,
        "denied",
    );
    let good = f.ipv4(&Ipv4::tcp(v4("198.18.0.5"), 443));
    h.expect(
        "malformed passed when asked",
        &good[..30],
        XDP_PASS,
        "malformed",
    );
}

#[test]
fn flood_limit_per_source() {
    if !privileged() {
        return;
    }
    let settings = Settings {
        flood: Some((10, 5)),
        ..Settings::default()
    };
    let h = Harness::new(settings, lists(&[], &[], &[]), CountryPolicy::Off);
    let f = Frame::new();
    let a = f.ipv4(&Ipv4::tcp(v4("198.18.0.5"), 443));
    let b = f.ipv6(&Ipv6::tcp(v6("2001:db8::5"), 443));
    let mut passed = 0;
    let started = std::time::Instant::now();
    for _ in 0..20 {
        match h.run(&a) {
            (XDP_PASS, "passed") => passed += 1,
            (XDP_DROP, "flood") => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // burst 5 at 10/s: 5 pass at once, and one more for each 100 ms the 20 runs
    // took (on a busy machine they can take several ticks).
    let refills = usize::try_from(started.elapsed().as_millis() / 100).unwrap_or(usize::MAX);
    assert!(
        (5..=6 + refills).contains(&passed) && passed < 20,
        "{passed} passed in {:?}",
        started.elapsed()
    );
    // Another source has its own bucket; unprotected traffic is not limited.
    h.expect("other source", &b, XDP_PASS, "passed");
    h.expect(
        "unprotected",
        &f.ipv4(&Ipv4::tcp(v4("198.18.0.5"), 22)),
        XDP_PASS,
        "passed_unprotected",
    );
    std::thread::sleep(Duration::from_millis(250));
    h.expect("refilled", &a, XDP_PASS, "passed");
}

#[test]
fn temporary_entries_expire_in_the_kernel() {
    if !privileged() {
        return;
    }
    let mut h = Harness::new(
        Settings::default(),
        lists(&[], &[], &[]),
        CountryPolicy::Off,
    );
    let f = Frame::new();
    let exact = f.ipv4(&Ipv4::tcp(v4("198.18.5.5"), 443));
    let cidr = f.ipv6(&Ipv6::tcp(v6("2001:db8:5::5"), 443));
    let ttl = Some(Duration::from_millis(800));
    h.filter
        .add(
            ListKind::Deny,
            &[net("198.18.5.5/32"), net("2001:db8:5::/48")],
            ttl,
            EntryOrigin::Operator,
        )
        .unwrap();
    h.expect("banned", &exact, XDP_DROP, "denied");
    h.expect("banned prefix", &cidr, XDP_DROP, "denied");
    assert_eq!(h.filter.list(ListKind::Deny).len(), 2);
    std::thread::sleep(Duration::from_millis(900));
    // No userspace action in between: the kernel honours the expiry.
    h.expect("ban over", &exact, XDP_PASS, "passed");
    h.expect("prefix ban over", &cidr, XDP_PASS, "passed");
    assert!(
        h.filter.list(ListKind::Deny).is_empty(),
        "expired entries vanish from listings"
    );
    assert_eq!(h.filter.expire().unwrap(), 2);
    assert_eq!(h.filter.kernel().exact_len(), 0, "and from the exact map");
    h.expect("still over", &exact, XDP_PASS, "passed");
}

#[test]
fn live_changes_and_rejected_changes() {
    if !privileged() {
        return;
    }
    let mut h = Harness::new(
        Settings::default(),
        lists(&[], &[], &[]),
        CountryPolicy::Off,
    );
    let f = Frame::new();
    let p = f.ipv4(&Ipv4::tcp(v4("198.18.7.7"), 443));
    h.expect("before", &p, XDP_PASS, "passed");
    h.filter
        .add(
            ListKind::Deny,
            &[net("198.18.7.0/24")],
            None,
            EntryOrigin::Operator,
        )
        .unwrap();
    h.expect("after add", &p, XDP_DROP, "denied");
    h.filter
        .add(
            ListKind::Bypass,
            &[net("198.18.7.7/32")],
            None,
            EntryOrigin::Operator,
        )
        .unwrap();
    h.expect("bypass wins", &p, XDP_PASS, "bypassed");
    assert_eq!(
        h.filter
            .remove(ListKind::Bypass, &[net("198.18.7.7/32")])
            .unwrap(),
        1
    );
    h.expect("bypass removed", &p, XDP_DROP, "denied");

    // A change the table cannot hold is refused whole; nothing changes.
    // 60k host bypass entries in distinct /24s need 60k inner table nodes.
    let spread: Vec<IpNet> = (0..60_000u32)
        .map(|i| IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0001 + (i << 8))), 32).unwrap())
        .collect();
    let err = h
        .filter
        .add(ListKind::Bypass, &spread, None, EntryOrigin::Operator)
        .unwrap_err();
    assert!(
        matches!(
            err,
            rampart::filter::FilterError::Table {
                source: rampart::rules::RuleError::TooManyNodes { .. }
            }
        ),
        "{err:?}"
    );
    assert!(
        h.filter.list(ListKind::Bypass).is_empty(),
        "nothing was added"
    );
    h.expect(
        "not bypassed",
        &f.ipv4(&Ipv4::tcp(v4("10.0.0.1"), 443)),
        XDP_PASS,
        "passed",
    );
    h.expect(
        "rules still apply after a refused change",
        &p,
        XDP_DROP,
        "denied",
    );
    h.expect(
        "other sources unaffected",
        &f.ipv4(&Ipv4::tcp(v4("198.18.8.8"), 443)),
        XDP_PASS,
        "passed",
    );
}

#[test]
fn country_table_swap_is_atomic_under_traffic() {
    if !privileged() {
        return;
    }
    // Two country tables that give every test source the same country, laid
    // out differently (split prefixes, extra countries). Swapping between
    // them must never change a verdict.
    let table_a = countries();
    let mut table_b: Vec<(IpNet, u16)> = Vec::new();
    for sub in net("198.19.0.0/16").subnets(20).unwrap() {
        if sub != net("198.19.0.0/20") {
            table_b.push((sub, cc("xx")));
        }
    }
    table_b.push((net("198.19.0.0/21"), cc("xx")));
    table_b.push((net("198.19.8.0/21"), cc("xx")));
    table_b.push((net("198.19.7.0/24"), cc("aa")));
    table_b.push((net("2001:db8:c000::/41"), cc("xx")));
    table_b.push((net("2001:db8:c080::/41"), cc("xx")));
    table_b.push((net("2001:db8:c000:aa00::/56"), cc("aa")));
    for i in 0..200u32 {
        table_b.push((
            IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i << 12))), 20).unwrap(),
            cc("zz"),
        ));
    }
    let mut h = Harness::new(
        Settings::default(),
        lists(&[], &[], &[]),
        CountryPolicy::Block(BTreeSet::from([cc("xx")])),
    );
    let f = Frame::new();
    let cases = [
        (f.ipv4(&Ipv4::tcp(v4("198.19.200.1"), 443)), XDP_DROP),
        (f.ipv4(&Ipv4::tcp(v4("198.19.7.1"), 443)), XDP_PASS),
        (f.ipv4(&Ipv4::tcp(v4("198.19.1.1"), 443)), XDP_DROP),
        (f.ipv6(&Ipv6::tcp(v6("2001:db8:c000:1::1"), 443)), XDP_DROP),
        (
            f.ipv6(&Ipv6::tcp(v6("2001:db8:c000:aa00::1"), 443)),
            XDP_PASS,
        ),
        (f.ipv4(&Ipv4::tcp(v4("198.18.0.1"), 443)), XDP_PASS),
    ];
    let pins = h.filter.kernel().pin_dir().to_path_buf();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ready2 = ready.clone();
    // A second handle on the same pinned maps runs the packets meanwhile.
    let prober = std::thread::spawn(move || {
        let probe = Filter::open(&pins).unwrap();
        ready2.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut runs = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            for (p, want) in &cases {
                let (got, _) = probe.kernel().test_run(p, 1).unwrap();
                assert_eq!(got, *want, "verdict changed during a swap");
                runs += 1;
            }
        }
        runs
    });
    while !ready.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 0..40 {
        let t = if i % 2 == 0 {
            table_b.clone()
        } else {
            table_a.clone()
        };
        h.filter.set_countries(t).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = prober.join().expect("no verdict changed");
    assert!(runs > 100, "the prober ran ({runs} packets)");
}

#[test]
fn pinned_maps_of_another_size_are_refused() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    let first = Filter::open_sized(pins.path(), 4096).unwrap();
    drop(first);
    // The same size reuses the pins; another size is refused with the fix.
    assert!(Filter::open_sized(pins.path(), 4096).is_ok());
    let err = Filter::open_sized(pins.path(), 8192)
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("4096") && text.contains("8192") && text.contains("--detach"),
        "{text}"
    );
}

#[test]
fn a_full_exact_map_refuses_the_whole_change() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    let mut filter = Filter::open_sized(pins.path(), 1024).unwrap();
    filter
        .replace_all(
            Settings::default(),
            Lists::default(),
            vec![],
            CountryPolicy::Off,
        )
        .unwrap();
    let first: Vec<IpNet> = (0..1000u32)
        .map(|i| IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 32).unwrap())
        .collect();
    filter
        .add(ListKind::Deny, &first, None, EntryOrigin::Operator)
        .unwrap();
    let more: Vec<IpNet> = (0..100u32)
        .map(|i| IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), 32).unwrap())
        .collect();
    let err = filter
        .add(ListKind::Deny, &more, None, EntryOrigin::Operator)
        .unwrap_err();
    assert!(
        matches!(
            err,
            rampart::filter::FilterError::DenyMapFull {
                family: 4,
                capacity: 1024
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        filter.list(ListKind::Deny).len(),
        1000,
        "the listing is unchanged"
    );
    assert_eq!(
        filter.kernel().exact_len(),
        1000,
        "no partial insert stays in the kernel"
    );
    let f = Frame::new();
    let (action, _) = filter
        .kernel()
        .test_run(&f.ipv4(&Ipv4::tcp(v4("11.0.0.5"), 443)), 1)
        .unwrap();
    assert_eq!(action, XDP_PASS, "a refused entry does not apply");
    let (action, _) = filter
        .kernel()
        .test_run(&f.ipv4(&Ipv4::tcp(v4("10.0.0.5"), 443)), 1)
        .unwrap();
    assert_eq!(action, XDP_DROP, "the earlier entries still apply");
}

/// An IPv6 packet from an IPv4-mapped source (`::ffff:a.b.c.d`), which Linux
/// delivers to UDP sockets since 5.12, never comes from a real host (RFC 4291
/// §2.5.5.2): it is malformed, whatever the IPv4 address's rules. Judged as
/// IPv6 (before 7a33b1c) it escaped the IPv4 deny entries; judged as IPv4 (after
/// it) a forged packet took IPv4's bypass, allowlist and flood allowances.
#[test]
fn ipv4_mapped_sources_are_malformed() {
    if !privileged() {
        return;
    }
    let mapped = |s: &str| v4(s).to_ipv6_mapped();
    let h = Harness::standard();
    let f = Frame::new();
    // Denied, bypassed, of a blocked country, allowed: all the same.
    for (what, src) in [
        ("exact deny", "198.18.1.1"),
        ("deny CIDR", "198.18.2.200"),
        ("bypass", "198.18.3.9"),
        ("blocked country", "198.19.200.1"),
        ("allowed", "198.18.0.5"),
    ] {
        h.expect(
            &format!("mapped TCP, {what}"),
            &f.ipv6(&Ipv6::tcp(mapped(src), 443)),
            XDP_DROP,
            "malformed",
        );
        h.expect(
            &format!("mapped UDP, {what}"),
            &f.ipv6(&Ipv6::udp(mapped(src), 53)),
            XDP_DROP,
            "malformed",
        );
    }
    // Neighbour discovery still passes first (documented); an echo request is
    // malformed.
    h.expect(
        "mapped ND",
        &f.ipv6(&Ipv6::icmp(mapped("198.18.1.1"), 135)),
        XDP_PASS,
        "neighbor_discovery",
    );
    h.expect(
        "mapped echo",
        &f.ipv6(&Ipv6::icmp(mapped("198.18.3.9"), 128)),
        XDP_DROP,
        "malformed",
    );
    // An allowlisted IPv4 address does not let its mapped form in.
    let h = Harness::new(
        Settings::default(),
        lists(&[], &[], &["198.18.0.0/24"]),
        CountryPolicy::Off,
    );
    h.expect(
        "mapped, allowlisted IPv4",
        &f.ipv6(&Ipv6::tcp(mapped("198.18.0.9"), 443)),
        XDP_DROP,
        "malformed",
    );
    // With drop_malformed = false it passes, counted as malformed.
    let h = Harness::new(
        Settings {
            drop_malformed: false,
            ..Settings::default()
        },
        lists(&[], &[], &[]),
        CountryPolicy::Off,
    );
    h.expect(
        "mapped, drop_malformed off",
        &f.ipv6(&Ipv6::udp(mapped("198.18.0.9"), 53)),
        XDP_PASS,
        "malformed",
    );
}
