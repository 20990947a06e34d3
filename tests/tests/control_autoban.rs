//! Automatic bans end to end: a client in the client namespace sends
//! requests with bad subscription keys to rampartd's TLS listener until
//! `[filter.autoban]` bans it; its next TCP connection dies in the kernel;
//! the ban shows in `deny list` as `auto` with a reason, can be lifted by
//! hand, and ends by itself after `ban_secs`. A source in a bypass network is
//! never banned.
//!
//! Needs root; skipped visibly otherwise.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use rampart_tests::{
    control::{RigOptions, gateway::Gateway},
    privileged,
};
use serde_json::Value;

const THRESHOLD: usize = 5;
const BAN_SECS: u64 = 3;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The rig: bans after `THRESHOLD` authentication failures for `BAN_SECS`;
/// 198.18.0.8/30 is a bypass network.
fn start() -> Gateway {
    Gateway::start(
        RigOptions {
            client_addrs: ["198.18.0.3", "198.18.0.4", "198.18.0.9"]
                .into_iter()
                .chain(ROUND_SOURCES)
                .map(ip)
                .collect(),
            filter: r#"bypass = ["198.18.0.8/30"]"#.into(),
            ..RigOptions::default()
        },
        &format!("[filter.autoban]\nauth_failures = {THRESHOLD}\nban_secs = {BAN_SECS}\n"),
    )
    .unwrap()
}

/// Sources of `the_next_connection_after_the_banning_failure_is_dropped`.
const ROUND_SOURCES: [&str; 5] = [
    "198.18.0.20",
    "198.18.0.21",
    "198.18.0.22",
    "198.18.0.23",
    "198.18.0.24",
];

const BAD_KEY: &str = "0123456789abcdef-not-a-key";

fn bad_key(gw: &Gateway, src: &str) -> Option<u16> {
    gw.get(src, Some(BAD_KEY))
}

/// Sends bad keys until the kernel drops the source; returns how many
/// answered 401. From the threshold on, it waits up to `settle` after each
/// answer for the ban to land before sending again (the ban is applied
/// asynchronously, see `the_next_connection_after_the_banning_failure_is_dropped`).
fn fail_until_banned(gw: &Gateway, src: &str, settle: Duration) -> usize {
    let mut answered = 0;
    while answered < THRESHOLD * 3 {
        match bad_key(gw, src) {
            Some(401) => answered += 1,
            Some(other) => panic!("a bad key got {other}"),
            None => return answered,
        }
        if answered >= THRESHOLD && dropped_within(gw, src, settle).is_some() {
            return answered;
        }
    }
    answered
}

/// When TCP connections from `src` to the gateway start failing: the start
/// of the first failed attempt, if within `within`.
fn dropped_within(gw: &Gateway, src: &str, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let attempt = start.elapsed();
        if !gw.tls_port_reachable(src) {
            return Some(attempt);
        }
        if start.elapsed() >= within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn deny_entry(gw: &Gateway, net: &str) -> Option<Value> {
    gw.rig
        .cli
        .list("deny")
        .unwrap()
        .into_iter()
        .find(|e| e["entry"] == net)
}

/// Sends `THRESHOLD` bad keys from `src` (each answered 401), then waits
/// until the kernel drops `src`'s connections; returns when the last answer
/// came.
fn ban(gw: &Gateway, src: &str) -> Instant {
    for i in 0..THRESHOLD {
        assert_eq!(
            bad_key(gw, src),
            Some(401),
            "failure {} of {THRESHOLD}",
            i + 1
        );
    }
    let answered = Instant::now();
    // The ban is made on the control thread after the last answer went out;
    // give it a moment, then every new connection must fail.
    let latency = loop {
        let attempt = Instant::now();
        if !gw.tls_port_reachable(src) {
            break attempt - answered;
        }
        assert!(
            answered.elapsed() < Duration::from_secs(2),
            "{src} not banned after {THRESHOLD} bad keys; deny list: {:?}\nlog:\n{}",
            gw.rig.cli.list("deny").unwrap(),
            gw.rig.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("{src} banned at most {latency:?} after its {THRESHOLD}th failure");
    answered
}

#[test]
fn failing_clients_are_banned_in_the_kernel_and_bypass_sources_never_are() {
    if !privileged() {
        return;
    }
    let gw = start();
    let cli = &gw.rig.cli;
    assert_eq!(bad_key(&gw, "198.18.0.4"), Some(401), "the gateway answers");

    // The threshold-th failure bans; the next connection dies at the kernel.
    let banned_at = ban(&gw, "198.18.0.3");
    assert_eq!(
        bad_key(&gw, "198.18.0.3"),
        None,
        "the next request never connects"
    );
    assert!(!gw.rig.reach("198.18.0.3"), "banned on every port");
    assert!(
        gw.tls_port_reachable("198.18.0.4"),
        "other sources are not affected"
    );

    // Visible as an automatic entry with a reason.
    let e = deny_entry(&gw, "198.18.0.3/32").expect("the ban is listed");
    assert_eq!(e["origin"], "auto", "{e}");
    assert!(
        e["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "a reason: {e}"
    );
    let expires = e["expires_at"].as_u64().expect("a ban expires");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expires <= now + BAN_SECS + 1, "{e} (now {now})");
    let c = cli.json(&["check", "198.18.0.3"]).unwrap();
    assert_eq!(c["origin"], "auto", "{c}");
    let s = cli.json(&["status"]).unwrap();
    assert_eq!(s["filter"]["auto_bans"], 1, "{s}");
    let st = cli.json(&["stats"]).unwrap();
    assert_eq!(st["bans_issued"], 1, "{st}");
    let text = cli.ok(&["deny", "list"]).unwrap().stdout;
    assert!(
        text.lines()
            .any(|l| l.starts_with("198.18.0.3/32") && l.contains("auto")),
        "{text}"
    );
    let events = cli.ok(&["--json", "events"]).unwrap().json_lines().unwrap();
    assert!(
        events.iter().any(|e| e["event"] == "ban_added"
            && e["fields"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f[0] == "SRC_IP" && f[1] == "198.18.0.3")),
        "{events:?}"
    );

    // Lifted by hand: passes at once.
    cli.ok(&["deny", "del", "198.18.0.3"]).unwrap();
    assert!(
        gw.tls_port_reachable("198.18.0.3"),
        "`deny del` lifts the ban"
    );
    assert!(deny_entry(&gw, "198.18.0.3/32").is_none());

    // Once the first ban's time is over, failures count again from zero:
    // banned again at the threshold; then the ban ends by itself.
    std::thread::sleep(
        (banned_at + Duration::from_millis(BAN_SECS * 1000 + 500))
            .saturating_duration_since(Instant::now()),
    );
    let answered = fail_until_banned(&gw, "198.18.0.3", Duration::from_secs(1));
    assert_eq!(answered, THRESHOLD, "banned again at the threshold");
    let banned_at = Instant::now();
    assert!(!gw.tls_port_reachable("198.18.0.3"));
    let lifted = loop {
        if gw.tls_port_reachable("198.18.0.3") {
            break banned_at.elapsed();
        }
        assert!(
            banned_at.elapsed() < Duration::from_secs(BAN_SECS + 3),
            "the ban did not end after {BAN_SECS} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("ban of {BAN_SECS} s lifted after {lifted:?}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while deny_entry(&gw, "198.18.0.3/32").is_some() {
        assert!(Instant::now() < deadline, "the expired ban is still listed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(bad_key(&gw, "198.18.0.3"), Some(401), "served again");

    // A source in a bypass network fails as often as it likes: never banned.
    for _ in 0..THRESHOLD * 3 {
        assert_eq!(
            bad_key(&gw, "198.18.0.9"),
            Some(401),
            "bypass source still served"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(gw.tls_port_reachable("198.18.0.9"));
    assert!(
        deny_entry(&gw, "198.18.0.9/32").is_none(),
        "no ban for a bypass source"
    );
    let st = cli.json(&["stats"]).unwrap();
    assert_eq!(st["bans_issued"], 2, "{st}");
}

#[test]
fn a_ban_lifted_by_hand_counts_failures_again_at_once() {
    if !privileged() {
        return;
    }
    let gw = start();
    ban(&gw, "198.18.0.3");
    gw.rig.cli.ok(&["deny", "del", "198.18.0.3"]).unwrap();
    assert!(gw.tls_port_reachable("198.18.0.3"), "lifted by hand");
    // The operator let it in again; if it keeps failing, it is banned again
    // at the threshold, not only once the lifted ban's time would have ended.
    let answered = fail_until_banned(&gw, "198.18.0.3", Duration::from_millis(200));
    assert_eq!(
        answered, THRESHOLD,
        "after `deny del` of an automatic ban, {answered} failures within the \
         lifted ban's {BAN_SECS} s did not ban again (threshold {THRESHOLD})"
    );
}

#[test]
fn the_next_connection_after_the_banning_failure_is_dropped() {
    if !privileged() {
        return;
    }
    let gw = start();
    // Several sources in turn, so that a race is seen, not only sometimes.
    let mut leaked = Vec::new();
    for src in ROUND_SOURCES {
        for i in 0..THRESHOLD {
            assert_eq!(bad_key(&gw, src), Some(401), "{src}: failure {}", i + 1);
        }
        // The client has its 5th 401; the very next connection it opens
        // must die in the kernel.
        if gw.tls_port_reachable(src) {
            let landed = dropped_within(&gw, src, Duration::from_secs(2));
            let landed = landed.unwrap_or_else(|| panic!("{src} never banned"));
            leaked.push(format!("{src} (dropped from {landed:?} later)"));
        }
    }
    assert!(
        leaked.is_empty(),
        "the connection opened right after the banning 401 got through for {} of {} sources: {leaked:?}",
        leaked.len(),
        ROUND_SOURCES.len()
    );
}

#[test]
fn an_auto_ban_survives_a_sigkill_and_the_kernel_keeps_it_meanwhile() {
    if !privileged() {
        return;
    }
    // A ban long enough to outlive the restart.
    let mut gw = Gateway::start(
        RigOptions {
            client_addrs: ["198.18.0.3", "198.18.0.4"].into_iter().map(ip).collect(),
            ..RigOptions::default()
        },
        &format!("[filter.autoban]\nauth_failures = {THRESHOLD}\nban_secs = 120\n"),
    )
    .unwrap();
    ban(&gw, "198.18.0.3");

    // rampartd crashes: the pinned filter goes on dropping the banned source
    // (and only it) while no daemon runs.
    gw.rig.kill_daemon().unwrap();
    assert!(!gw.rig.reach("198.18.0.3"), "banned while rampartd is down");
    assert!(gw.rig.reach("198.18.0.4"), "other sources pass meanwhile");

    // Restarted (what systemd's Restart=on-failure does): the ban is still
    // there, listed as automatic, still enforced.
    gw.rig.start_daemon().unwrap();
    let e = deny_entry(&gw, "198.18.0.3/32").expect("the ban is listed after the restart");
    assert_eq!(e["origin"], "auto", "{e}");
    assert!(e["expires_at"].as_u64().is_some(), "still temporary: {e}");
    assert!(!gw.tls_port_reachable("198.18.0.3"), "still banned");
    assert_eq!(
        bad_key(&gw, "198.18.0.4"),
        Some(401),
        "the restarted gateway serves the others"
    );
}

#[test]
fn an_operator_entry_takes_a_bans_place_only_when_it_outlasts_it() {
    if !privileged() {
        return;
    }
    let gw = start();
    let cli = &gw.rig.cli;
    ban(&gw, "198.18.0.4");

    // Shorter than the ban: the ban stays as it is.
    let run = cli
        .ok(&["deny", "add", "198.18.0.4", "--ttl", "1s"])
        .unwrap();
    assert_eq!(run.stdout, "deny: 0 entries added, 1 already there\n");
    let e = deny_entry(&gw, "198.18.0.4/32").unwrap();
    assert_eq!(e["origin"], "auto", "{e}");

    // For good: the operator's entry replaces the ban, in the listing and in
    // the kernel alike (one entry, not the ban beside it).
    let run = cli
        .ok(&["deny", "add", "198.18.0.4", "--comment", "known scanner"])
        .unwrap();
    assert_eq!(run.stdout, "deny: 1 entry added, 0 already there\n");
    let rows: Vec<Value> = (cli.list("deny").unwrap().into_iter())
        .filter(|e| e["entry"] == "198.18.0.4/32")
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["origin"], "operator", "{rows:?}");
    assert!(rows[0]["expires_at"].is_null(), "{rows:?}");
    assert_eq!(rows[0]["comment"], "known scanner", "{rows:?}");
    let c = cli.json(&["check", "198.18.0.4"]).unwrap();
    assert_eq!(c["origin"], "operator", "{c}");
    assert!(c["expires_in_secs"].is_null(), "{c}");
    let s = cli.json(&["status"]).unwrap();
    assert_eq!(s["filter"]["auto_bans"], 0, "{s}");

    // Once the ban's time is over: still denied, still the operator's.
    std::thread::sleep(Duration::from_secs(BAN_SECS + 1));
    assert!(!gw.tls_port_reachable("198.18.0.4"), "still denied");
    let e = deny_entry(&gw, "198.18.0.4/32").unwrap();
    assert_eq!(e["origin"], "operator", "{e}");

    // --replace follows the same rule for a ban: a shorter entry leaves it
    // (the operator's other entries go), a lasting one takes its place.
    ban(&gw, "198.18.0.3");
    cli.ok(&["deny", "add", "--replace", "198.18.0.3", "--ttl", "1s"])
        .unwrap();
    let list = cli.list("deny").unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["entry"], "198.18.0.3/32", "{list:?}");
    assert_eq!(list[0]["origin"], "auto", "{list:?}");
    assert!(gw.tls_port_reachable("198.18.0.4"), "replaced away");
    cli.ok(&["deny", "add", "--replace", "198.18.0.3"]).unwrap();
    let list = cli.list("deny").unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["origin"], "operator", "{list:?}");
    assert!(list[0]["expires_at"].is_null(), "{list:?}");
    assert!(!gw.tls_port_reachable("198.18.0.3"), "denied");
}

/// Where the filter lets a denied source through (monitor mode here; another
/// interface or local traffic alike), its failures at the gateway never replace an
/// operator's entry that lasts longer, nor one from the configuration file: the
/// entry keeps its expiry, comment and origin, across a restart too, and is listed
/// once.
#[test]
fn a_ban_leaves_entries_that_deny_the_source_for_longer() {
    if !privileged() {
        return;
    }
    let mut gw = Gateway::start(
        RigOptions {
            client_addrs: ["198.18.0.3", "198.18.0.4"].into_iter().map(ip).collect(),
            filter: "monitor = true\ndeny = [\"198.18.0.4\"]".into(),
            ..RigOptions::default()
        },
        &format!("[filter.autoban]\nauth_failures = {THRESHOLD}\nban_secs = {BAN_SECS}\n"),
    )
    .unwrap();
    let cli = &gw.rig.cli;
    cli.ok(&[
        "deny",
        "add",
        "198.18.0.3",
        "--ttl",
        "30d",
        "--comment",
        "known abuser, ticket 123",
    ])
    .unwrap();
    for src in ["198.18.0.3", "198.18.0.4"] {
        for i in 0..THRESHOLD {
            assert_eq!(bad_key(&gw, src), Some(401), "{src}: failure {}", i + 1);
        }
        // The ban request is handled on the control thread after the answer:
        // wait for its word in the log (at most 2 s).
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline
            && !gw.rig.log().lines().any(|l| {
                l.contains(&format!("src_ip={src}"))
                    && (l.contains("no automatic ban") || l.contains("source banned"))
            })
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let check = |gw: &Gateway| {
        let list = gw.rig.cli.list("deny").unwrap();
        assert_eq!(list.len(), 2, "one row each: {list:#?}");
        let e = deny_entry(gw, "198.18.0.3/32").unwrap();
        assert_eq!(e["origin"], "operator", "{e}");
        assert_eq!(e["comment"], "known abuser, ticket 123", "{e}");
        let left = e["expires_at"].as_u64().unwrap()
            - std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
        assert!(left > 29 * 86_400, "still about 30 days: {e}");
        let e = deny_entry(gw, "198.18.0.4/32").unwrap();
        assert_eq!(e["origin"], "config", "{e}");
        assert!(e["expires_at"].is_null(), "{e}");
        let s = gw.rig.cli.json(&["status"]).unwrap();
        assert_eq!(s["filter"]["auto_bans"], 0, "{s}");
    };
    check(&gw);
    // Past the ban's time and across a restart: the same.
    std::thread::sleep(Duration::from_secs(BAN_SECS + 1));
    gw.rig.kill_daemon().unwrap();
    gw.rig.start_daemon().unwrap();
    check(&gw);
}

/// Sources of the IPv6 tests, all in the rig's client /64 (2001:db8::/64): each
/// fails once.
const V6_SOURCES: [&str; THRESHOLD] = [
    "2001:db8::10",
    "2001:db8::11",
    "2001:db8::12",
    "2001:db8::13",
    "2001:db8::14",
];
/// A bypassed address inside that /64.
const V6_BYPASSED: &str = "2001:db8::9";
/// An address of another /64 (routed to the client side by the test).
const V6_ELSEWHERE: &str = "2001:db8:1::5";

/// The rig with a listener on the server's IPv6 address too: autoban after
/// `THRESHOLD` authentication failures for 60 s, `V6_BYPASSED` a bypass
/// address; `sections` go after `[filter.autoban]`.
fn start_v6(sections: &str) -> Gateway {
    start_v6_with("", sections)
}

/// [`start_v6`] with more `[filter]` lines.
fn start_v6_with(filter: &str, sections: &str) -> Gateway {
    let addrs =
        V6_SOURCES
            .into_iter()
            .chain([V6_BYPASSED, V6_ELSEWHERE, "2001:db8::20", "198.18.0.3"]);
    let mut gw = Gateway::prepare(
        RigOptions {
            client_addrs: addrs.map(ip).collect(),
            filter: format!(r#"bypass = ["198.18.0.8/30", "{V6_BYPASSED}"]"#) + "\n" + filter,
            ..RigOptions::default()
        },
        &format!("[filter.autoban]\nauth_failures = {THRESHOLD}\nban_secs = 60\n{sections}"),
    )
    .unwrap();
    gw.start_with_ipv6("").unwrap();
    // Not from the client /64: these failures would count.
    for src in [V6_ELSEWHERE, V6_BYPASSED] {
        assert_eq!(bad_key(&gw, src), Some(401), "{src}: the gateway answers");
    }
    gw
}

/// One failure from each address of `V6_SOURCES`: `THRESHOLD` failures of one
/// client that changes address every time.
fn fail_from_each_v6_source(gw: &Gateway) {
    for (i, src) in V6_SOURCES.into_iter().enumerate() {
        assert_eq!(bad_key(gw, src), Some(401), "{src}: failure {}", i + 1);
    }
}

/// An IPv6 client holds a whole /64 and can change address at will: it is
/// counted and banned by its /64. One failure from each of five addresses bans
/// the /64 (before, each address stayed at one failure and nothing was banned):
/// every address of it is dropped in the kernel, one that never failed included,
/// but not a bypassed address inside it, nor another /64, nor IPv4 clients.
#[test]
fn an_ipv6_client_is_banned_by_its_prefix_whatever_address_it_fails_from() {
    if !privileged() {
        return;
    }
    let gw = start_v6("");
    let cli = &gw.rig.cli;
    fail_from_each_v6_source(&gw);
    let unused = "2001:db8::2";
    let landed = dropped_within(&gw, unused, Duration::from_secs(2));
    assert!(
        landed.is_some(),
        "after {THRESHOLD} failures from {THRESHOLD} addresses of 2001:db8::/64, \
         {unused} of the same /64 still connects; deny list: {:?}",
        cli.list("deny").unwrap()
    );
    for src in V6_SOURCES {
        assert!(!gw.tls_port_reachable(src), "{src} dropped");
    }

    let e = deny_entry(&gw, "2001:db8::/64").expect("the /64 is listed");
    assert_eq!(e["origin"], "auto", "{e}");
    let reason = e["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        format!(
            "{THRESHOLD} authentication failures within 60 s from addresses in \
             2001:db8::/64 (last: SubscriptionKeyInvalid, from {})",
            V6_SOURCES[THRESHOLD - 1]
        ),
        "{e}"
    );
    let list = cli.list("deny").unwrap();
    assert_eq!(list.len(), 1, "one entry, the /64: {list:?}");
    let c = cli.json(&["check", "2001:db8::abcd"]).unwrap();
    assert_eq!(c["action"], "drop", "{c}");
    assert_eq!(c["entry"], "2001:db8::/64", "{c}");
    assert_eq!(c["origin"], "auto", "{c}");
    let events = cli.ok(&["--json", "events"]).unwrap().json_lines().unwrap();
    let ban = events
        .iter()
        .find(|e| e["event"] == "ban_added")
        .unwrap_or_else(|| panic!("{events:?}"));
    let field = |name: &str| {
        ban["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f[0] == name)
            .map(|f| f[1].clone())
    };
    assert_eq!(field("NETWORK").unwrap(), "2001:db8::/64", "{ban}");
    assert_eq!(field("SRC_IP").unwrap(), V6_SOURCES[THRESHOLD - 1], "{ban}");

    // Bypass beats deny in the kernel: the bypassed address inside the /64 is
    // served; so are another /64 and IPv4 clients.
    assert_eq!(bad_key(&gw, V6_BYPASSED), Some(401), "bypassed");
    assert_eq!(bad_key(&gw, V6_ELSEWHERE), Some(401), "another /64");
    assert_eq!(bad_key(&gw, "198.18.0.3"), Some(401), "IPv4");

    // Lifted by hand: the whole /64 is back, and counted again from zero.
    cli.ok(&["deny", "del", "2001:db8::/64"]).unwrap();
    assert!(gw.tls_port_reachable(unused), "lifted");
    fail_from_each_v6_source(&gw);
    assert!(
        dropped_within(&gw, unused, Duration::from_secs(2)).is_some(),
        "banned again at the threshold"
    );
}

/// A trusted proxy is never banned, also when it shares the client's /64: the
/// ban is narrowed to the largest prefix around the failing address that leaves
/// the proxy out, and says so. With `ipv6_prefix = 128` the old per-address
/// counting is kept.
#[test]
fn an_ipv6_prefix_ban_spares_a_trusted_proxy_inside_it() {
    if !privileged() {
        return;
    }
    let gw = start_v6("[gateway]\ntrusted_proxies = [\"2001:db8::20\"]\n");
    let cli = &gw.rig.cli;
    fail_from_each_v6_source(&gw);
    assert!(
        dropped_within(&gw, "2001:db8::2", Duration::from_secs(2)).is_some(),
        "banned"
    );
    // ::14 failed last: ::/123 holds ::0 to ::1f, not the proxy at ::20.
    let e = deny_entry(&gw, "2001:db8::/123")
        .unwrap_or_else(|| panic!("the narrowed ban: {:?}", cli.list("deny").unwrap()));
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .ends_with("; banned as 2001:db8::/123: 2001:db8::/64 holds a trusted proxy"),
        "{e}"
    );
    assert!(gw.tls_port_reachable("2001:db8::20"), "the proxy passes");
    assert_eq!(cli.list("deny").unwrap().len(), 1);

    // Per address: five addresses, one failure each, ban nothing.
    cli.ok(&["deny", "del", "2001:db8::/123"]).unwrap();
    let text = gw.rig.config_text(
        &gw.rig.opts.filter,
        &gw.rig
            .opts
            .sections
            .replace("ban_secs = 60\n", "ban_secs = 60\nipv6_prefix = 128\n"),
    );
    std::fs::write(&gw.rig.config, text).unwrap();
    cli.ok(&["reload"]).unwrap();
    fail_from_each_v6_source(&gw);
    std::thread::sleep(Duration::from_millis(300));
    assert!(gw.tls_port_reachable("2001:db8::2"));
    assert!(cli.list("deny").unwrap().is_empty());
}

/// Waits (at most 2 s) for a log line holding every one of `words`; the line.
fn log_line(gw: &Gateway, words: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let log = gw.rig.log();
        if let Some(l) = log.lines().find(|l| words.iter().all(|w| l.contains(w))) {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {words:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A wider deny entry that covers the client's /64 for at least as long (an
/// operator's 2001:db8::/32) leaves nothing for a /64 ban to add: none is made,
/// and the log says so, as for an entry of the same network. (Monitor mode: the
/// filter lets the denied client reach the gateway, as another interface or local
/// traffic would.) Before, the /64 ban was added under the /32.
#[test]
fn a_prefix_ban_is_not_added_under_a_wider_deny_entry() {
    if !privileged() {
        return;
    }
    let gw = start_v6_with("monitor = true", "");
    let cli = &gw.rig.cli;
    cli.ok(&["deny", "add", "2001:db8::/32"]).unwrap();
    fail_from_each_v6_source(&gw);
    let line = log_line(&gw, &["no automatic ban", "network=2001:db8::/64"]);
    assert!(line.contains("covered_by=2001:db8::/32"), "{line}");
    assert!(line.contains(r#"origin="operator""#), "{line}");
    assert_eq!(cli.list_entries("deny").unwrap(), ["2001:db8::/32"]);
    let s = cli.json(&["status"]).unwrap();
    assert_eq!(s["filter"]["auto_bans"], 0, "{s}");
}

/// Per-address bans made before a reload to `ipv6_prefix = 64` are inside the
/// /64 ban that follows and end before it: they are removed with its addition
/// (before, they stayed listed, and in the kernel, beside the /64).
#[test]
fn a_prefix_ban_replaces_the_shorter_address_bans_inside_it() {
    if !privileged() {
        return;
    }
    let gw = start_v6("ipv6_prefix = 128\n");
    let cli = &gw.rig.cli;
    ban(&gw, V6_SOURCES[0]);
    assert_eq!(cli.list_entries("deny").unwrap(), ["2001:db8::10/128"]);

    let text = gw.rig.config_text(
        &gw.rig.opts.filter,
        &gw.rig.opts.sections.replace("ipv6_prefix = 128\n", ""),
    );
    std::fs::write(&gw.rig.config, text).unwrap();
    cli.ok(&["reload"]).unwrap();
    // Five failures in the /64 from addresses not banned yet.
    for src in V6_SOURCES[1..].iter().chain(["2001:db8::2"].iter()) {
        assert_eq!(bad_key(&gw, src), Some(401), "{src}");
    }
    let line = log_line(&gw, &["source banned", "network=2001:db8::/64"]);
    assert_eq!(cli.list_entries("deny").unwrap(), ["2001:db8::/64"]);
    assert!(line.contains("replaced_bans=1"), "{line}");
    let s = cli.json(&["status"]).unwrap();
    assert_eq!(s["filter"]["auto_bans"], 1, "{s}");
    assert!(
        !gw.tls_port_reachable(V6_SOURCES[0]),
        "still dropped, by the /64"
    );
}
