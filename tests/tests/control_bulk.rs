//! An atomic bulk replace, watched from the wire: `rampart deny add
//! --from-file F --replace` swaps 100,000 denied addresses for 100,000 others
//! while probes from addresses of both sets connect continuously; no probe
//! may see a mixed state.
//!
//! 198.18.0.0/15 has 131,072 IPv4 addresses, too few for two disjoint sets of
//! 100,000 (plus the rig's own), so each set is 50,000 IPv4 addresses and
//! 50,000 IPv6 ones (2001:db8::/32, documentation space like the rest of the
//! namespaces' addresses); that also covers both families' exact maps.
//!
//! Slow by nature: two 100,000-entry changes through a debug rampartd (each
//! parsed, journalled and fsynced, written to the kernel maps), and the
//! listings; about a minute on two CPUs. Needs root; skipped otherwise.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use rampart_tests::{
    control::{
        PORT, Rig, RigOptions,
        probe::{Prober, check_single_switch},
    },
    privileged,
};

const HALF: u32 = 50_000;

/// `HALF` IPv4 addresses from `v4`, then `HALF` IPv6 ones from `v6`.
fn set(v4: Ipv4Addr, v6: Ipv6Addr) -> Vec<IpAddr> {
    let v4 = u32::from(v4);
    let v6 = u128::from(v6);
    (0..HALF)
        .map(|i| IpAddr::V4(Ipv4Addr::from(v4 + i)))
        .chain((0..HALF).map(|i| IpAddr::V6(Ipv6Addr::from(v6 + u128::from(i)))))
        .collect()
}

fn file_text(addrs: &[IpAddr]) -> String {
    let mut text = String::with_capacity(addrs.len() * 24);
    for a in addrs {
        let _ = writeln!(text, "{a}");
    }
    text
}

/// The first, middle and last IPv4 address and the first and last IPv6
/// one: the first- and last-inserted entries of each family.
fn probes_of(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let h = HALF as usize;
    vec![
        addrs[0],
        addrs[h / 2],
        addrs[h - 1],
        addrs[h],
        addrs[2 * h - 1],
    ]
}

#[test]
fn a_100k_replace_is_atomic_on_the_wire() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::default()).unwrap();
    let cli = &rig.cli;
    let old = set(
        Ipv4Addr::new(198, 18, 16, 1),
        "2001:db8:0:a::1".parse().unwrap(),
    );
    let new = set(
        Ipv4Addr::new(198, 19, 0, 1),
        "2001:db8:0:b::1".parse().unwrap(),
    );
    let old_file = rig.file("old.txt", &file_text(&old)).unwrap();
    let new_file = rig.file("new.txt", &file_text(&new)).unwrap();

    // The probe addresses live on the client interface; the server side
    // routes the whole ranges back over the veth.
    let (srv, cli_ns) = (&rig.pair.srv, &rig.pair.cli);
    rig.pair
        .ip(
            srv,
            &["route", "add", "198.18.0.0/15", "dev", &rig.pair.srv_if],
        )
        .unwrap();
    rig.pair
        .ip(
            srv,
            &[
                "-6",
                "route",
                "add",
                "2001:db8::/32",
                "dev",
                &rig.pair.srv_if,
            ],
        )
        .unwrap();
    let old_probes = probes_of(&old);
    let new_probes = probes_of(&new);
    for a in old_probes.iter().chain(&new_probes) {
        let (cidr, extra) = match a {
            IpAddr::V4(_) => (format!("{a}/32"), None),
            IpAddr::V6(_) => (format!("{a}/128"), Some("nodad")),
        };
        let mut args = vec!["addr", "add", &cidr, "dev", &rig.pair.cli_if];
        args.extend(extra);
        rig.pair.ip(cli_ns, &args).unwrap();
    }

    // The old set, in one command.
    let t = Instant::now();
    let r = cli
        .json(&["deny", "add", "--from-file", old_file.to_str().unwrap()])
        .unwrap();
    let first_add = t.elapsed();
    assert_eq!(r["changed"], 100_000, "{r}");
    let s = cli.json(&["status"]).unwrap();
    assert_eq!(s["filter"]["deny"], 100_000, "{s}");
    for a in &old_probes {
        assert!(!rig.reach(&a.to_string()), "{a} (old set) is denied");
    }
    for a in &new_probes {
        assert!(rig.reach(&a.to_string()), "{a} (new set) passes");
    }

    // Probes from both sets, continuously, while the replace runs. A dropped
    // probe waits 300 ms (one SYN), a passing one is followed by a 10 ms
    // pause; one thread per source.
    let sources: Vec<(IpAddr, bool)> = old_probes
        .iter()
        .map(|a| (*a, true))
        .chain(new_probes.iter().map(|a| (*a, false)))
        .collect();
    let (srv4, srv6) = (rig.pair.srv_v4, rig.pair.srv_v6);
    let prober = Prober::start(
        cli_ns,
        &sources,
        move |src| SocketAddr::new(if src.is_ipv4() { srv4 } else { srv6 }, PORT),
        Duration::from_millis(300),
        Duration::from_millis(10),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let t = Instant::now();
    let r = cli
        .json(&[
            "deny",
            "add",
            "--from-file",
            new_file.to_str().unwrap(),
            "--replace",
        ])
        .unwrap();
    let replace = t.elapsed();
    std::thread::sleep(Duration::from_millis(1000));
    let probes = prober.finish().unwrap();
    assert_eq!(r["changed"], 200_000, "100k added + 100k removed: {r}");

    let before = probes.iter().filter(|p| !p.after()).count();
    let after = probes.iter().filter(|p| p.after()).count();
    eprintln!(
        "first add of 100k: {first_add:?}; replace: {replace:?}; {} probes ({before} saw the old state, {after} the new)",
        probes.len()
    );
    assert!(
        before > 0 && after > 0,
        "the probes did not span the switch"
    );
    for (src, is_old) in &sources {
        let mine: Vec<_> = probes.iter().filter(|p| p.src == *src).collect();
        assert!(
            mine.iter().any(|p| !p.after()) && mine.iter().any(|p| p.after()),
            "{src} ({}) did not see both states: {} probes",
            if *is_old { "old" } else { "new" },
            mine.len()
        );
    }
    if let Err(e) = check_single_switch(&probes) {
        panic!("{e}");
    }

    // The end state, on the wire and in the listing.
    for a in &old_probes {
        assert!(
            rig.reach(&a.to_string()),
            "{a} (old set) passes after the replace"
        );
    }
    for a in &new_probes {
        assert!(
            !rig.reach(&a.to_string()),
            "{a} (new set) is denied after the replace"
        );
    }
    let list = cli.list("deny").unwrap();
    assert_eq!(list.len(), 100_000);
    let listed: std::collections::HashSet<&str> =
        list.iter().map(|e| e["entry"].as_str().unwrap()).collect();
    for a in &new_probes {
        let net = match a {
            IpAddr::V4(_) => format!("{a}/32"),
            IpAddr::V6(_) => format!("{a}/128"),
        };
        assert!(listed.contains(net.as_str()), "{net} listed");
    }
    for a in &old_probes {
        let net = match a {
            IpAddr::V4(_) => format!("{a}/32"),
            IpAddr::V6(_) => format!("{a}/128"),
        };
        assert!(!listed.contains(net.as_str()), "{net} no longer listed");
    }
}
