//! The kernel families of `/metrics` end to end: a real rampartd with
//! `[filter]` on a veth in a test-made namespace, scraped with curl inside
//! that namespace; a denied source's SYNs move the `denied` counter, an
//! allowed one's the `passed` counter (in total and in the veth's
//! per-interface series, by the same amounts), and the list sizes follow the
//! CLI.
//!
//! Needs root (BPF, XDP, network namespaces); skipped visibly otherwise.
//! The binaries are the debug builds (`cargo build -p rampart --bins` first).

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rampart_tests::{
    control::{Rig, RigOptions},
    privileged,
};

const ADMIN: &str = "127.0.0.1:9180";

/// GET `path` of the admin listener with curl inside the server namespace:
/// (status, body); `None` while nothing answers.
fn try_get(rig: &Rig, path: &str) -> Option<(u16, String)> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &rig.pair.srv,
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("http://{ADMIN}{path}"))
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    Some((status.parse().unwrap(), body.to_owned()))
}

fn get(rig: &Rig, path: &str) -> (u16, String) {
    try_get(rig, path).unwrap_or_else(|| panic!("nothing answered GET {path}"))
}

fn get_status(rig: &Rig, path: &str) -> Option<u16> {
    try_get(rig, path).map(|(status, _)| status)
}

/// Samples by `name{labels}` (as written).
fn scrape(rig: &Rig) -> BTreeMap<String, f64> {
    let (status, body) = get(rig, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

#[test]
fn kernel_counters_and_tables_are_exported() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions {
        client_addrs: vec!["198.18.0.3".parse().unwrap(), "198.18.0.5".parse().unwrap()],
        daemon: format!("admin_listen = \"{ADMIN}\""),
        filter: r#"deny = ["198.18.0.5"]"#.into(),
        ..RigOptions::default()
    })
    .unwrap();
    // The admin listener answers once rampartd runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_status(&rig, "/readyz") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "/readyz never 200:\n{}",
            rig.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let before = scrape(&rig);
    assert_eq!(value(&before, "rampart_control_up"), 1.0);
    assert_eq!(value(&before, "rampart_interfaces_attached"), 1.0);
    assert_eq!(
        value(
            &before,
            r#"rampart_list_entries{list="deny",origin="config"}"#
        ),
        1.0
    );
    assert_eq!(value(&before, "rampart_active_bans"), 0.0);

    const ATTEMPTS: u32 = 3;
    for _ in 0..ATTEMPTS {
        assert!(!rig.reach("198.18.0.5"), "the denied source got through");
        assert!(rig.reach("198.18.0.3"), "the allowed source was dropped");
    }
    rig.cli
        .ok(&["deny", "add", "198.18.0.9", "198.18.1.0/24"])
        .unwrap();

    // The rig's interface is the only one attached: its series moves exactly
    // as the totals do. The two maps are read one after the other, so a
    // straggling packet (a FIN) can fall between them: scrape until settled.
    let iface = &rig.pair.srv_if;
    let per_iface = |reason: &str| {
        format!(r#"rampart_xdp_interface_packets_total{{interface="{iface}",reason="{reason}"}}"#)
    };
    let denied = r#"rampart_xdp_packets_total{reason="denied"}"#;
    let passed = r#"rampart_xdp_packets_total{reason="passed"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let after = scrape(&rig);
        let delta = |key: &str| value(&after, key) - value(&before, key);
        let settled = delta(&per_iface("denied")) == delta(denied)
            && delta(&per_iface("passed")) == delta(passed);
        if settled || Instant::now() >= deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let delta = |key: &str| value(&after, key) - value(&before, key);
    assert!(
        after.contains_key(&per_iface("passed")),
        "no per-interface series for {iface}:\n{after:#?}"
    );
    for (reason, total) in [("denied", denied), ("passed", passed)] {
        assert_eq!(
            delta(&per_iface(reason)),
            delta(total),
            "{reason}: the interface's series and the total moved differently:\n{after:#?}"
        );
    }
    let interfaces: Vec<&String> = after
        .keys()
        .filter(|k| k.starts_with("rampart_xdp_interface_packets_total{"))
        .filter(|k| !k.contains(&format!(r#"interface="{iface}""#)))
        .collect();
    assert!(interfaces.is_empty(), "other interfaces: {interfaces:?}");
    assert!(
        delta(denied) >= f64::from(ATTEMPTS),
        "{ATTEMPTS} SYNs dropped, denied moved by {}:\n{after:#?}",
        delta(denied)
    );
    assert!(delta(passed) >= f64::from(ATTEMPTS), "{after:#?}");
    assert_eq!(
        value(
            &after,
            r#"rampart_list_entries{list="deny",origin="operator"}"#
        ),
        2.0,
        "{after:#?}"
    );
    assert_eq!(get_status(&rig, "/healthz"), Some(200));
}
