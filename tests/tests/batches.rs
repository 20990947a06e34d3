//! Batches of changes and explanations, against the real XDP program run
//! through BPF_PROG_TEST_RUN: `Filter::explain` agrees with the kernel, a
//! bulk replace is never seen half-applied, a failed batch changes nothing,
//! and a single host entry on a large filter is in force as soon as the call
//! returns.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use ipnet::IpNet;
use rampart::{
    filter::{
        Change, EntryOrigin, Filter, FilterError, ListEntry, ListKind, Lists, Protect, Settings,
    },
    rules::CountryPolicy,
};
use rampart_common::{DenyEntry, GEN_FOREVER, MAP_DENY_V4, REASON_NAMES, country_index};
use rampart_tests::{
    PinDir,
    packet::{Frame, ICMP, Ipv4, Ipv6},
    privileged,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cc(code: &str) -> u16 {
    let b = code.as_bytes();
    country_index([b[0], b[1]]).unwrap()
}

fn host(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

fn countries() -> Vec<(IpNet, u16)> {
    vec![
        (net("198.19.0.0/16"), cc("xx")),
        (net("198.19.7.0/24"), cc("aa")),
        (net("2001:db8:c000::/40"), cc("xx")),
        (net("2001:db8:c000:aa00::/56"), cc("aa")),
    ]
}

fn lists(bypass: &[&str], deny: &[&str], allow: &[&str]) -> Lists {
    let mut l = Lists::default();
    for (kind, items) in [
        (ListKind::Bypass, bypass),
        (ListKind::Deny, deny),
        (ListKind::Allow, allow),
    ] {
        for s in items {
            l.insert(
                kind,
                ListEntry {
                    net: net(s),
                    expires_ns: 0,
                    origin: EntryOrigin::Config,
                },
            );
        }
    }
    l
}

/// A packet from `src` to (protocol, port).
fn packet(src: IpAddr, (protocol, port): (u8, u16)) -> Vec<u8> {
    let f = Frame::new();
    match (src, protocol) {
        (IpAddr::V4(a), UDP) => f.ipv4(&Ipv4::udp(a, port)),
        (IpAddr::V4(a), ICMP) => f.ipv4(&Ipv4 {
            protocol: ICMP,
            l4: vec![8, 0, 0, 0, 0, 0, 0, 0],
            ..Ipv4::tcp(a, 0)
        }),
        (IpAddr::V4(a), _) => f.ipv4(&Ipv4::tcp(a, port)),
        (IpAddr::V6(a), UDP) => f.ipv6(&Ipv6::udp(a, port)),
        (IpAddr::V6(a), ICMPV6) => f.ipv6(&Ipv6::icmp(a, 128)),
        (IpAddr::V6(a), _) => f.ipv6(&Ipv6::tcp(a, port)),
    }
}

/// Runs one packet: (XDP action, the name of the one counter that moved).
fn run(filter: &Filter, packet: &[u8]) -> (u32, &'static str) {
    let before = filter.counters().unwrap();
    let (action, _) = filter.kernel().test_run(packet, 1).unwrap();
    let after = filter.counters().unwrap();
    let moved: Vec<&'static str> = after
        .by_reason
        .iter()
        .zip(before.by_reason.iter())
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
        .collect();
    assert_eq!(moved.len(), 1, "exactly one counter moves: {moved:?}");
    (action, moved[0])
}

/// Asserts that `explain` gives the kernel's verdict for every address and
/// destination; returns the number of cases.
fn explain_agrees(filter: &Filter, what: &str, addrs: &[IpAddr]) -> usize {
    let mut cases = 0;
    for &addr in addrs {
        let icmp = if addr.is_ipv4() { ICMP } else { ICMPV6 };
        for dst in [
            (TCP, 443),
            (TCP, 22),
            (TCP, 0),
            (UDP, 53),
            (UDP, 443),
            (icmp, 0),
        ] {
            let (action, counter) = run(filter, &packet(addr, dst));
            let x = filter.explain(addr, Some(dst));
            assert_eq!(
                (action == XDP_DROP, counter),
                (x.dropped(), x.reason),
                "{what}: {addr} to {dst:?}: explain says {x}"
            );
            assert!(REASON_NAMES.contains(&x.reason));
            cases += 1;
        }
        // Without a destination: judged as protected traffic.
        let x = filter.explain(addr, None);
        assert!(x.in_scope);
        if filter.settings().protects(TCP, 443) {
            let protected = filter.explain(addr, Some((TCP, 443)));
            assert_eq!((x.reason, x.action), (protected.reason, protected.action));
        }
    }
    cases
}

fn open(pins: &PinDir, capacity: u32) -> Filter {
    Filter::open_sized(pins.path(), capacity).expect("load the XDP program")
}

#[test]
fn explain_agrees_with_the_kernel() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    let mut f = open(&pins, 4096);
    let block_xx = CountryPolicy::Block(BTreeSet::from([cc("xx")]));
    let mut cases = 0;

    // Bypass, exact and prefix denies (bypass wins over both), countries,
    // temporary entries in force and expired ones.
    f.replace_all(
        Settings::default(),
        lists(
            &["198.18.3.0/24", "198.18.2.128/25", "2001:db8:3::/48"],
            &[
                "198.18.1.1/32",
                "198.18.3.3/32",
                "198.18.2.0/24",
                "2001:db8::bad/128",
                "2001:db8:3::3/128",
                "2001:db8:dead::/48",
                "198.19.200.0/24",
            ],
            &[],
        ),
        countries(),
        block_xx.clone(),
    )
    .unwrap();
    let soon = Some(Duration::from_millis(150));
    let later = Some(Duration::from_secs(3600));
    f.add(
        ListKind::Deny,
        &[
            net("198.18.1.2/32"),
            net("198.18.4.0/24"),
            net("2001:db8::2/128"),
        ],
        soon,
        EntryOrigin::Auto,
    )
    .unwrap();
    f.add(
        ListKind::Deny,
        &[net("198.18.1.3/32"), net("2001:db8:5::/48")],
        later,
        EntryOrigin::Operator,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let addrs: Vec<IpAddr> = [
        "198.18.0.5",    // nothing
        "198.18.1.1",    // exact deny
        "198.18.1.2",    // exact deny, expired
        "198.18.1.3",    // exact deny, temporary
        "198.18.2.7",    // deny prefix
        "198.18.2.200",  // bypass inside the deny prefix
        "198.18.3.3",    // exact deny inside a bypass
        "198.18.4.4",    // deny prefix, expired
        "198.19.200.1",  // deny prefix in a blocked country
        "198.19.100.1",  // blocked country
        "198.19.7.7",    // more specific, allowed country
        "2001:db8::5",   // nothing
        "2001:db8::bad", // exact deny
        "2001:db8::2",   // exact deny, expired
        "2001:db8:3::3", // exact deny inside a bypass
        "2001:db8:dead::1",
        "2001:db8:5::1", // deny prefix, temporary
        "2001:db8:c000:1::1",
        "2001:db8:c000:aa00::1",
        // IPv4-mapped IPv6 sources: judged as the IPv4 source they map.
        "::ffff:198.18.1.1",
        "::ffff:198.18.2.7",
        "::ffff:198.19.200.1",
        "::ffff:198.19.100.1",
        "::ffff:198.18.0.5",
    ]
    .iter()
    .map(|s| ip(s))
    .collect();
    cases += explain_agrees(&f, "deny and bypass", &addrs);
    let x = f.explain(ip("198.18.1.3"), Some((TCP, 443)));
    let m = x.matched.expect("an entry decided");
    assert_eq!(
        (m.list, m.net, m.origin, m.exact),
        (
            ListKind::Deny,
            net("198.18.1.3/32"),
            EntryOrigin::Operator,
            true
        )
    );
    assert!(m.expires_ns > 0);
    let x = f.explain(ip("198.18.2.200"), Some((TCP, 443)));
    assert_eq!(x.matched.map(|m| m.net), Some(net("198.18.2.128/25")));
    assert_eq!(x.reason, "bypassed");
    let x = f.explain(ip("198.19.100.1"), Some((TCP, 443)));
    assert_eq!((x.reason, x.country.as_deref()), ("country", Some("xx")));
    let x = f.explain(ip("198.19.100.1"), Some((TCP, 22)));
    assert_eq!((x.reason, x.in_scope), ("passed_unprotected", false));

    // An allowlist (with a temporary entry that has expired but is still in
    // the table until `expire` runs: explain follows the kernel).
    f.replace_all(
        Settings::default(),
        lists(
            &[],
            &["198.18.0.9/32"],
            &["198.18.0.0/24", "198.19.200.0/24", "2001:db8:1::/48"],
        ),
        countries(),
        block_xx.clone(),
    )
    .unwrap();
    f.add(
        ListKind::Allow,
        &[net("198.18.5.0/24")],
        soon,
        EntryOrigin::Operator,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let addrs: Vec<IpAddr> = [
        "198.18.0.5",
        "198.18.0.9",
        "198.18.5.5",
        "198.18.9.9",
        "198.19.200.1",
        "198.19.100.1",
        "2001:db8:1::7",
        "2001:db8:2::7",
        "::ffff:198.18.0.5",
        "::ffff:198.18.9.9",
    ]
    .iter()
    .map(|s| ip(s))
    .collect();
    cases += explain_agrees(&f, "allowlist", &addrs);
    let x = f.explain(ip("198.18.0.5"), Some((TCP, 443)));
    assert_eq!(
        x.matched.map(|m| (m.list, m.net)),
        Some((ListKind::Allow, net("198.18.0.0/24")))
    );
    assert!(f.explain(ip("198.18.5.5"), None).reason == "passed");
    assert_eq!(f.expire().unwrap(), 1);
    assert!(
        f.list(ListKind::Allow)
            .iter()
            .all(|e| e.net != net("198.18.5.0/24"))
    );
    cases += explain_agrees(&f, "allowlist after expire", &addrs);
    assert_eq!(f.explain(ip("198.18.5.5"), None).reason, "not_allowlisted");

    // Allow-only countries on every port, with a flood limit (not reached).
    f.replace_all(
        Settings {
            protect: Protect::All,
            flood: Some((100_000, 100_000)),
            ..Settings::default()
        },
        lists(&["198.18.3.0/24"], &["198.19.7.9/32"], &[]),
        countries(),
        CountryPolicy::AllowOnly {
            allowed: BTreeSet::from([cc("aa")]),
            allow_unknown: false,
        },
    )
    .unwrap();
    let addrs: Vec<IpAddr> = [
        "198.19.7.1",
        "198.19.7.9",
        "198.19.8.1",
        "198.18.0.5",
        "198.18.3.1",
        "2001:db8:c000:aa00::1",
        "2001:db8::5",
    ]
    .iter()
    .map(|s| ip(s))
    .collect();
    cases += explain_agrees(&f, "allow-only countries, scope all", &addrs);
    let x = f.explain(ip("198.19.7.1"), Some((UDP, 53)));
    assert!(x.flood_limited && x.in_scope && x.reason == "passed");

    // Monitor mode: drops are counted and pass.
    f.replace_all(
        Settings {
            monitor: true,
            protect: Protect::Ports {
                tcp: vec![443..=443, 8000..=8080],
                udp: vec![443..=443],
            },
            ..Settings::default()
        },
        lists(&[], &["198.18.1.1/32", "2001:db8:dead::/48"], &[]),
        countries(),
        block_xx,
    )
    .unwrap();
    let addrs: Vec<IpAddr> = [
        "198.18.1.1",
        "198.19.100.1",
        "198.18.0.5",
        "2001:db8:dead::1",
    ]
    .iter()
    .map(|s| ip(s))
    .collect();
    cases += explain_agrees(&f, "monitor", &addrs);
    let x = f.explain(ip("198.18.1.1"), Some((TCP, 443)));
    assert_eq!((x.dropped(), x.reason, x.monitor), (false, "denied", true));
    eprintln!("explain agreed with the kernel on {cases} cases");
}

/// A probe: a packet and the action expected before and after a change.
struct Probe {
    name: String,
    packet: Vec<u8>,
    before: u32,
    after: u32,
}

fn probe(name: &str, src: IpAddr, before: u32, after: u32) -> Probe {
    Probe {
        name: format!("{name} ({src})"),
        packet: packet(src, (TCP, 443)),
        before,
        after,
    }
}

/// Runs the probes in a loop from a second handle on the same pinned maps
/// until `stop`; returns the actions of every round, in order.
fn spawn_prober(
    pins: PathBuf,
    capacity: u32,
    probes: Arc<Vec<Probe>>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<Vec<u32>>> {
    std::thread::spawn(move || {
        let handle = Filter::open_sized(&pins, capacity).unwrap();
        let mut rounds = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let round: Vec<u32> = probes
                .iter()
                .map(|p| handle.kernel().test_run(&p.packet, 1).unwrap().0)
                .collect();
            rounds.push(round);
            ready.store(true, Ordering::Relaxed);
        }
        rounds
    })
}

/// Checks that every probe result, in time order, is the state before the
/// change until some instant and the state after it from then on: (rounds
/// that saw only the old state, rounds that saw only the new one).
fn assert_one_switch(probes: &[Probe], rounds: &[Vec<u32>]) -> (usize, usize) {
    let mut switched: Option<(usize, usize)> = None;
    let (mut old_rounds, mut new_rounds) = (0, 0);
    for (r, round) in rounds.iter().enumerate() {
        let mut saw = (false, false);
        for (i, (p, got)) in probes.iter().zip(round).enumerate() {
            assert!(
                *got == p.before || *got == p.after,
                "round {r}: {} got action {got}, never expected",
                p.name
            );
            if p.before == p.after {
                continue;
            }
            let after = *got == p.after;
            match (after, switched) {
                (true, None) => switched = Some((r, i)),
                (false, Some((sr, si))) => panic!(
                    "round {r}: {} is in its old state after {} was seen in its new state \
                     (round {sr}): a mixed state",
                    p.name, probes[si].name
                ),
                _ => {}
            }
            if after {
                saw.1 = true;
            } else {
                saw.0 = true;
            }
        }
        match saw {
            (true, false) => old_rounds += 1,
            (false, true) => new_rounds += 1,
            _ => {}
        }
    }
    (old_rounds, new_rounds)
}

fn v4_range(first: u32, n: u32) -> Vec<IpNet> {
    (0..n)
        .map(|i| host(IpAddr::V4(Ipv4Addr::from(first + i))))
        .collect()
}

fn v6_range(first: u128, n: u128) -> Vec<IpNet> {
    (0..n)
        .map(|i| host(IpAddr::V6(Ipv6Addr::from(first + i))))
        .collect()
}

fn config_entries(nets: &[IpNet]) -> Vec<(IpNet, u64)> {
    nets.iter().map(|n| (*n, 0)).collect()
}

#[test]
fn a_bulk_replace_is_never_seen_half_applied() {
    if !privileged() {
        return;
    }
    const CAPACITY: u32 = 131_072;
    let pins = PinDir::new();
    let mut f = open(&pins, CAPACITY);
    f.replace_all(
        Settings::default(),
        Lists::default(),
        countries(),
        CountryPolicy::Off,
    )
    .unwrap();
    // 100k old and 100k new entries (90k IPv4, 10k IPv6 each), one kept.
    // They are staged in address order: the first and last of each family
    // are probed.
    let kept = net("10.64.0.1/32");
    let mut old = v4_range(0x0a00_0001, 90_000);
    old.extend(v6_range(0x2001_0db8_0001_u128 << 80, 10_000));
    old.push(kept);
    let mut new = v4_range(0x0a80_0001, 90_000);
    new.extend(v6_range(0x2001_0db8_0002_u128 << 80, 10_000));
    new.push(kept);
    f.apply(&[Change::ReplaceOrigin {
        kind: ListKind::Deny,
        origin: EntryOrigin::Config,
        entries: config_entries(&old),
    }])
    .unwrap();
    let sorted = |v: &[IpNet], v6: bool| -> (IpAddr, IpAddr) {
        let mut s: Vec<IpNet> = v
            .iter()
            .filter(|n| n.addr().is_ipv6() == v6 && **n != kept)
            .copied()
            .collect();
        s.sort();
        (s[0].addr(), s[s.len() - 1].addr())
    };
    let (old4_first, old4_last) = sorted(&old, false);
    let (old6_first, old6_last) = sorted(&old, true);
    let (new4_first, new4_last) = sorted(&new, false);
    let (new6_first, new6_last) = sorted(&new, true);
    let probes = Arc::new(vec![
        probe("new v4 first", new4_first, XDP_PASS, XDP_DROP),
        probe("old v4 last", old4_last, XDP_DROP, XDP_PASS),
        probe("new v6 last", new6_last, XDP_PASS, XDP_DROP),
        probe("old v6 first", old6_first, XDP_DROP, XDP_PASS),
        probe("kept", kept.addr(), XDP_DROP, XDP_DROP),
        probe("never listed", ip("10.200.0.1"), XDP_PASS, XDP_PASS),
        probe("new v4 last", new4_last, XDP_PASS, XDP_DROP),
        probe("old v4 first", old4_first, XDP_DROP, XDP_PASS),
        probe("new v6 first", new6_first, XDP_PASS, XDP_DROP),
        probe("old v6 last", old6_last, XDP_DROP, XDP_PASS),
    ]);
    let ready = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = spawn_prober(
        pins.path().to_path_buf(),
        CAPACITY,
        probes.clone(),
        ready.clone(),
        stop.clone(),
    );
    while !ready.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(20));
    let t = Instant::now();
    let applied = f
        .apply(&[Change::ReplaceOrigin {
            kind: ListKind::Deny,
            origin: EntryOrigin::Config,
            entries: config_entries(&new),
        }])
        .unwrap();
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let rounds = prober.join().expect("the prober ran");
    let (old_rounds, new_rounds) = assert_one_switch(&probes, &rounds);
    eprintln!(
        "replace of 100k exact entries by 100k others: {took:.1?}, {} probe rounds \
         ({old_rounds} all-old, {new_rounds} all-new, none mixed); {applied:?}",
        rounds.len()
    );
    assert!(
        old_rounds > 10 && new_rounds > 10,
        "the prober saw both states"
    );
    assert_eq!(
        (applied.added, applied.removed, applied.unchanged),
        (100_000, 100_000, 1)
    );
    assert!(!applied.table_rebuilt, "exact entries only");

    // The final state, from this handle.
    for p in probes.iter() {
        let (action, _) = f.kernel().test_run(&p.packet, 1).unwrap();
        assert_eq!(action, p.after, "{}", p.name);
    }
    assert_eq!(f.list(ListKind::Deny).len(), 100_001);
    // Retired entries go once their grace is over.
    std::thread::sleep(Duration::from_millis(20));
    f.expire().unwrap();
    assert_eq!(f.kernel().exact_len(), 100_001);
}

/// Fills the pinned IPv4 exact map with `n` entries that never apply, behind
/// the filter's back: the kernel then refuses a batch half-way through.
fn fill_v4_map(pins: &PinDir, n: u32) -> HashMap<MapData, [u8; 4], DenyEntry> {
    let data = MapData::from_pin(pins.path().join(MAP_DENY_V4)).unwrap();
    let mut map: HashMap<MapData, [u8; 4], DenyEntry> =
        HashMap::try_from(Map::HashMap(data)).unwrap();
    let never = DenyEntry {
        expires_ns: 0,
        from_gen: GEN_FOREVER - 1,
        until_gen: GEN_FOREVER,
    };
    for i in 0..n {
        map.insert(Ipv4Addr::from(0xac10_0000 + i).octets(), never, 0)
            .unwrap();
    }
    map
}

#[test]
fn a_batch_the_kernel_refuses_leaves_the_old_rules_in_force() {
    if !privileged() {
        return;
    }
    // 4096 entries in force per family; the maps hold 8192.
    const CAPACITY: u32 = 4096;
    let pins = PinDir::new();
    let mut f = open(&pins, CAPACITY);
    f.replace_all(
        Settings::default(),
        Lists::default(),
        vec![],
        CountryPolicy::Off,
    )
    .unwrap();
    let old = v4_range(0x0a00_0001, 3000);
    let new = v4_range(0x0a80_0001, 3000);
    f.apply(&[Change::ReplaceOrigin {
        kind: ListKind::Deny,
        origin: EntryOrigin::Config,
        entries: config_entries(&old),
    }])
    .unwrap();
    // Room for 1000 of the 3000 new entries only.
    let mut junk = fill_v4_map(&pins, 2 * CAPACITY - 3000 - 1000);
    let probes = Arc::new(vec![
        probe("old first", old[0].addr(), XDP_DROP, XDP_DROP),
        probe("old last", old[2999].addr(), XDP_DROP, XDP_DROP),
        probe("new first", new[0].addr(), XDP_PASS, XDP_PASS),
        probe("new 999", new[999].addr(), XDP_PASS, XDP_PASS),
        probe("new last", new[2999].addr(), XDP_PASS, XDP_PASS),
    ]);
    let ready = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = spawn_prober(
        pins.path().to_path_buf(),
        CAPACITY,
        probes.clone(),
        ready.clone(),
        stop.clone(),
    );
    while !ready.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // With a prefix in the same batch: it must not come into force either.
    let err = f
        .apply(&[
            Change::ReplaceOrigin {
                kind: ListKind::Deny,
                origin: EntryOrigin::Config,
                entries: config_entries(&new),
            },
            Change::Add {
                kind: ListKind::Deny,
                entries: vec![(net("10.200.0.0/16"), 0, EntryOrigin::Operator)],
            },
        ])
        .unwrap_err();
    std::thread::sleep(Duration::from_millis(10));
    stop.store(true, Ordering::Relaxed);
    let rounds = prober.join().expect("the prober ran");
    // Every probe expects the same action throughout: nothing changed.
    assert_one_switch(&probes, &rounds);
    assert!(
        matches!(err, FilterError::DenyMapFull { family: 4, .. }),
        "{err:?}"
    );
    assert_eq!(
        f.list(ListKind::Deny).len(),
        3000,
        "the lists are unchanged"
    );
    assert_eq!(f.kernel().exact_len(), 3000);
    assert_eq!(
        junk.keys().count(),
        2 * CAPACITY as usize - 1000,
        "nothing staged stays in the kernel"
    );
    assert_eq!(
        run(&f, &packet(ip("10.200.0.1"), (TCP, 443))),
        (XDP_PASS, "passed"),
        "the prefix of the refused batch is not in force"
    );

    // Once there is room, the same batch goes through.
    for i in 0..(2 * CAPACITY - 3000 - 1000) {
        junk.remove(&Ipv4Addr::from(0xac10_0000 + i).octets())
            .unwrap();
    }
    f.apply(&[Change::ReplaceOrigin {
        kind: ListKind::Deny,
        origin: EntryOrigin::Config,
        entries: config_entries(&new),
    }])
    .unwrap();
    for p in probes.iter() {
        let want = if p.name.starts_with("old") {
            XDP_PASS
        } else {
            XDP_DROP
        };
        assert_eq!(
            f.kernel().test_run(&p.packet, 1).unwrap().0,
            want,
            "{}",
            p.name
        );
    }
    // A batch over the capacity is refused before the kernel sees it.
    let err = f
        .add(
            ListKind::Deny,
            &v4_range(0x0b00_0000, CAPACITY - 3000 + 1),
            None,
            EntryOrigin::Operator,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            FilterError::DenyMapFull {
                family: 4,
                capacity: CAPACITY
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_reload_replaces_the_configuration_entries_only() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    let mut f = open(&pins, 4096);
    f.replace_all(
        Settings::default(),
        lists(&[], &["198.18.1.1/32", "198.18.2.0/24"], &[]),
        vec![],
        CountryPolicy::Off,
    )
    .unwrap();
    let op = [net("198.18.1.5/32"), net("198.18.1.1/32")];
    f.add(ListKind::Deny, &op, None, EntryOrigin::Operator)
        .unwrap();
    let applied = f
        .apply(&[Change::ReplaceOrigin {
            kind: ListKind::Deny,
            origin: EntryOrigin::Config,
            entries: vec![(net("198.18.3.3/32"), 0)],
        }])
        .unwrap();
    assert_eq!((applied.added, applied.removed), (1, 2));
    assert!(applied.table_rebuilt, "the /24 left the table");
    let drops = |f: &Filter, s: &str| run(f, &packet(ip(s), (TCP, 443))).0 == XDP_DROP;
    assert!(drops(&f, "198.18.1.5"), "operator entry kept");
    assert!(drops(&f, "198.18.1.1"), "listed by the operator too");
    assert!(drops(&f, "198.18.3.3"), "new configuration entry");
    assert!(!drops(&f, "198.18.2.9"), "old configuration prefix gone");
    // Removing the operator's entry of 198.18.1.1 only.
    f.apply(&[Change::RemoveOrigin {
        kind: ListKind::Deny,
        origin: EntryOrigin::Operator,
        nets: vec![net("198.18.1.1/32")],
    }])
    .unwrap();
    assert!(!drops(&f, "198.18.1.1"), "no origin lists it any more");
    let origins: Vec<(IpNet, EntryOrigin)> = f
        .list(ListKind::Deny)
        .iter()
        .map(|e| (e.net, e.origin))
        .collect();
    assert_eq!(
        origins,
        vec![
            (net("198.18.1.5/32"), EntryOrigin::Operator),
            (net("198.18.3.3/32"), EntryOrigin::Config),
        ]
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_single_host_entry_on_a_large_filter_applies_at_once() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    let mut f = open(&pins, 262_144);
    // 100k exact entries, 1000 deny prefixes and the test country table.
    let mut l = Lists::default();
    for n in v4_range(0x0a00_0001, 100_000) {
        l.insert(
            ListKind::Deny,
            ListEntry {
                net: n,
                expires_ns: 0,
                origin: EntryOrigin::Config,
            },
        );
    }
    for i in 0..1000u32 {
        l.insert(
            ListKind::Deny,
            ListEntry {
                net: IpNet::new(IpAddr::V4(Ipv4Addr::from(0x2000_0000 + (i << 8))), 24).unwrap(),
                expires_ns: 0,
                origin: EntryOrigin::Config,
            },
        );
    }
    f.replace_all(
        Settings::default(),
        l,
        countries(),
        CountryPolicy::Block(BTreeSet::from([cc("xx")])),
    )
    .unwrap();
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    for i in 0..200u32 {
        let addr = IpAddr::V4(Ipv4Addr::new(198, 18, 9, (i % 250) as u8 + 1));
        let pkt = packet(addr, (TCP, 443));
        let t = Instant::now();
        f.add(ListKind::Deny, &[host(addr)], None, EntryOrigin::Operator)
            .unwrap();
        adds.push(t.elapsed());
        let (action, _) = f.kernel().test_run(&pkt, 1).unwrap();
        assert_eq!(action, XDP_DROP, "enforced when add returns ({addr})");
        let t = Instant::now();
        assert_eq!(f.remove(ListKind::Deny, &[host(addr)]).unwrap(), 1);
        removes.push(t.elapsed());
        let (action, _) = f.kernel().test_run(&pkt, 1).unwrap();
        assert_eq!(action, XDP_PASS, "lifted when remove returns ({addr})");
    }
    adds.sort();
    removes.sort();
    eprintln!(
        "one host deny entry on a filter of 100k exact entries + 1000 prefixes + countries: \
         add p50 {:.1?} p99 {:.1?} max {:.1?}; remove p50 {:.1?} p99 {:.1?} max {:.1?}",
        percentile(&adds, 0.5),
        percentile(&adds, 0.99),
        adds[adds.len() - 1],
        percentile(&removes, 0.5),
        percentile(&removes, 0.99),
        removes[removes.len() - 1],
    );
    // A prefix rebuilds the table, and is in force when the call returns too.
    let t = Instant::now();
    let applied = f
        .add(
            ListKind::Deny,
            &[net("198.18.10.0/24")],
            None,
            EntryOrigin::Operator,
        )
        .unwrap();
    let prefix_took = t.elapsed();
    assert!(applied.table_rebuilt);
    let (action, _) = f
        .kernel()
        .test_run(&packet(ip("198.18.10.10"), (TCP, 443)), 1)
        .unwrap();
    assert_eq!(action, XDP_DROP);
    eprintln!("one deny prefix on the same filter: {prefix_took:.1?}");
}

/// An automatic ban of an IPv6 prefix (`[filter.autoban] ipv6_prefix`) is a deny
/// prefix with its own expiry: it rebuilds the table, and each one is a class of its
/// own. It is in force when the call returns, drops every address of the prefix, and
/// lets a bypassed address inside the prefix through (bypass is judged first).
/// Prints what one more costs with 1,024 of them in force (the daemon's limit,
/// `MAX_PREFIX_BANS`), next to the test country table and a bypass address.
#[test]
fn ipv6_prefix_bans_apply_at_once_and_spare_a_bypass_inside() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    let mut f = open(&pins, 4096);
    f.replace_all(
        Settings::default(),
        lists(&["2001:db8:77:1::9/128"], &[], &[]),
        countries(),
        CountryPolicy::Block(BTreeSet::from([cc("xx")])),
    )
    .unwrap();
    let prefix = |i: u32| {
        let a = (0x2001_0db8_u128 << 96) | (u128::from(i) << 64);
        IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), 64).unwrap()
    };
    let mut times = Vec::new();
    for i in 0..rampart::policy::ban::MAX_PREFIX_BANS as u32 {
        // Bans made one after another expire one after another: no two alike.
        let ttl = Duration::from_secs(600) + Duration::from_micros(u64::from(i));
        let t = Instant::now();
        let applied = f
            .add(
                ListKind::Deny,
                &[prefix(i * 7919)],
                Some(ttl),
                EntryOrigin::Auto,
            )
            .unwrap();
        times.push(t.elapsed());
        assert!(applied.table_rebuilt);
    }
    let banned = net("2001:db8:77:1::/64");
    let t = Instant::now();
    f.add(
        ListKind::Deny,
        &[banned],
        Some(Duration::from_secs(600)),
        EntryOrigin::Auto,
    )
    .unwrap();
    let took = t.elapsed();
    for (src, expected) in [
        ("2001:db8:77:1::1", XDP_DROP),
        ("2001:db8:77:1:ffff:ffff:ffff:ffff", XDP_DROP),
        ("2001:db8:77:1::9", XDP_PASS),
        ("2001:db8:77:2::1", XDP_PASS),
    ] {
        let (action, _) = f
            .kernel()
            .test_run(&packet(ip(src), (TCP, 443)), 1)
            .unwrap();
        assert_eq!(action, expected, "{src}");
    }
    times.sort();
    eprintln!(
        "automatic /64 bans with the test country table: the first 1,024 took p50 {:.1?} \
         p99 {:.1?} max {:.1?} each; one more with 1,024 in force: {took:.1?}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
    );
}
