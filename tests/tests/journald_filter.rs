//! Kernel-side and control-side security events read back from a real
//! journald: a rampartd with `[filter]` on a veth in a test-made namespace and
//! `[daemon] log_target = "journald"`; a denied source's SYNs make `xdp_drop`
//! (the 10 s summary, read with `rampart events`, and what is left at SIGTERM),
//! `rampart deny add` makes `list_changed` with the caller's credentials, and
//! bad subscription keys from one source make `[filter.autoban]` write
//! `ban_added`. All are read with `journalctl -o json _PID=<rampartd>`.
//!
//! When no journald answers on /run/systemd/journal/socket, the test starts
//! `/lib/systemd/systemd-journald` standalone and stops it at the end, even
//! when the test fails. Needs root (BPF, XDP, network namespaces, journald);
//! skipped visibly otherwise. The binaries are the debug builds
//! (`cargo build -p rampart --bins` first).

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rampart_tests::{
    control::{RigOptions, gateway::Gateway},
    journald::{JournalDaemon, Journald, field, wait_entries},
    privileged,
};
use serde_json::Value;

/// In `deny` of the configuration: its SYNs are dropped in the kernel.
const DENIED: &str = "198.18.0.5";
/// Not in any list: its SYNs pass.
const ALLOWED: &str = "198.18.0.3";
/// Sends bad keys until `[filter.autoban]` bans it.
const BANNED: &str = "198.18.0.7";
/// Added with `rampart deny add`.
const ADDED: [&str; 2] = ["198.18.0.9", "198.18.1.0/24"];

const ATTEMPTS: u32 = 3;
const THRESHOLD: usize = 3;
const BAN_SECS: u64 = 600;
const BAD_KEY: &str = "0123456789abcdef-not-a-key";

fn events<'a>(entries: &'a [Value], event: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    entries
        .iter()
        .filter(move |e| field(e, "RAMPART_EVENT") == event)
}

fn drops_of<'a>(entries: &'a [Value], src: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    events(entries, "xdp_drop").filter(move |e| field(e, "SRC_IP") == src)
}

fn deny_change(entries: &[Value]) -> Option<&Value> {
    events(entries, "list_changed").find(|e| {
        field(e, "LIST") == "deny" && ADDED.iter().all(|a| field(e, "ENTRIES").contains(a))
    })
}

fn ban_of<'a>(entries: &'a [Value], src: &str) -> Option<&'a Value> {
    events(entries, "ban_added").find(|e| field(e, "SRC_IP") == src)
}

#[test]
fn kernel_and_control_events_reach_the_journal_with_their_fields() {
    if !privileged() {
        return;
    }
    // Declared first, dropped last: after rampartd and the rig are gone.
    let journald = match Journald::ensure() {
        Ok(j) => j,
        Err(why) => {
            eprintln!("SKIPPED: no journald: {why}");
            return;
        }
    };
    eprintln!(
        "journald: {}",
        if journald.started_here() {
            "started by this test"
        } else {
            "already running"
        }
    );

    let gw = Gateway::prepare(
        RigOptions {
            client_addrs: [ALLOWED, DENIED, BANNED]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
            daemon: "log_target = \"journald\"".into(),
            filter: format!("deny = [\"{DENIED}\"]"),
            ..RigOptions::default()
        },
        &format!(
            "[filter.autoban]\nauth_failures = {THRESHOLD}\nrate_limited = 0\nban_secs = {BAN_SECS}\n"
        ),
    )
    .unwrap();
    let rig = &gw.rig;
    // Declared after the rig, dropped before it: rampartd is killed before
    // the rig detaches the filter and deletes the namespaces.
    let mut daemon = JournalDaemon::start(
        &rig.pair.srv,
        &rig.config,
        &rig.cli,
        &rig.path("rampartd.stderr"),
    )
    .unwrap();
    let pid = daemon.pid();

    // Kernel drops: the denied source's SYNs die, the allowed one's pass.
    for _ in 0..ATTEMPTS {
        assert!(!rig.reach(DENIED), "the denied source got through");
        assert!(rig.reach(ALLOWED), "the allowed source was dropped");
    }

    // A control change by root: PEER_UID=0.
    let mut args = vec!["deny", "add"];
    args.extend(ADDED);
    rig.cli.ok(&args).unwrap();

    // An automatic ban: the threshold-th bad key bans the source.
    for i in 0..THRESHOLD {
        assert_eq!(
            gw.get(BANNED, Some(BAD_KEY)),
            Some(401),
            "bad key {} of {THRESHOLD}",
            i + 1
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.tls_port_reachable(BANNED) {
        assert!(
            Instant::now() < deadline,
            "{BANNED} not banned after {THRESHOLD} bad keys; deny list: {:?}",
            rig.cli.list("deny").unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The drops are summed per source and reason and written every 10 s:
    // `rampart events` shows the summary, whose count is of sampled drop
    // events and says so (before: "3 packets from ... dropped (denied)", read
    // as an exact count).
    let deadline = Instant::now() + Duration::from_secs(15);
    let event = loop {
        let text = rig.cli.ok(&["events"]).unwrap().stdout;
        let line = text
            .lines()
            .find(|l| l.contains("  xdp_drop  ") && l.contains(&format!("SRC_IP={DENIED} ")))
            .map(str::to_owned);
        if let Some(line) = line {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no xdp_drop event for {DENIED} within 15 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, text) = event.split_once("  xdp_drop  ").unwrap();
    let count: u64 = text
        .strip_prefix("at least ")
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not \"at least N\": {event}"));
    let packets = if count == 1 { "packet" } else { "packets" };
    assert_eq!(
        text,
        format!(
            "at least {count} {packets} from {DENIED} dropped (denied; counted from sampled events, rampart stats has the exact totals per reason) SRC_IP={DENIED} REASON=denied COUNTRY=-"
        ),
        "{event}"
    );
    // A lower bound of what the kernel counted.
    let stats = rig.cli.json(&["stats"]).unwrap();
    let denied = stats["kernel"]
        .as_array()
        .and_then(|pairs| pairs.iter().find(|pair| pair[0] == "denied"))
        .and_then(|pair| pair[1].as_u64())
        .unwrap_or_else(|| panic!("no denied counter: {stats}"));
    assert!(count <= denied, "{count} > {denied}: {stats}");

    // And at shutdown: SIGTERM writes what is left now.
    assert_eq!(
        daemon.terminate(Duration::from_secs(20)).unwrap(),
        Some(0),
        "rampartd's exit; stderr:\n{}",
        daemon.stderr()
    );

    let (journal, entries) = wait_entries(pid, Duration::from_secs(10), |entries| {
        drops_of(entries, DENIED).next().is_some()
            && deny_change(entries).is_some()
            && ban_of(entries, BANNED).is_some()
    });
    let context = || format!("journal of rampartd ({pid}):\n{journal}");
    assert!(!entries.is_empty(), "nothing in the journal; {}", context());

    // xdp_drop: one entry per source and reason per window, with COUNT.
    let drops: Vec<&Value> = drops_of(&entries, DENIED).collect();
    assert!(!drops.is_empty(), "no xdp_drop for {DENIED}; {}", context());
    let mut counted = 0u64;
    for d in &drops {
        assert_eq!(field(d, "REASON"), "denied", "{d}");
        assert_eq!(field(d, "PRIORITY"), "4", "warning: {d}");
        assert_eq!(field(d, "SYSLOG_IDENTIFIER"), "rampartd", "{d}");
        let count: u64 = field(d, "COUNT")
            .parse()
            .unwrap_or_else(|_| panic!("COUNT is a number: {d}"));
        assert!(count >= 1, "{d}");
        let packets = if count == 1 { "packet" } else { "packets" };
        assert_eq!(
            field(d, "MESSAGE"),
            format!(
                "at least {count} {packets} from {DENIED} dropped (denied; counted from sampled events, rampart stats has the exact totals per reason)"
            ),
            "{d}"
        );
        counted += count;
    }
    assert!(counted >= 1, "{}", context());
    eprintln!(
        "{} xdp_drop entr{} for {DENIED}, COUNT {counted} for {ATTEMPTS} SYNs",
        drops.len(),
        if drops.len() == 1 { "y" } else { "ies" }
    );
    // The allowed source was never dropped.
    assert!(
        drops_of(&entries, ALLOWED).next().is_none(),
        "{ALLOWED} passed but has an xdp_drop; {}",
        context()
    );

    // list_changed: the list, the entries, who made the change.
    let change = deny_change(&entries)
        .unwrap_or_else(|| panic!("no list_changed for `deny add`; {}", context()));
    assert_eq!(field(change, "ADDED"), "2", "{change}");
    assert_eq!(field(change, "REMOVED"), "0", "{change}");
    assert_eq!(field(change, "PEER_UID"), "0", "root ran the CLI: {change}");
    let peer_pid: u32 = field(change, "PEER_PID")
        .parse()
        .unwrap_or_else(|_| panic!("PEER_PID is a number: {change}"));
    assert!(peer_pid > 0, "{change}");
    assert_eq!(field(change, "PRIORITY"), "5", "notice: {change}");

    // ban_added: the source, why, for how long.
    let ban = ban_of(&entries, BANNED)
        .unwrap_or_else(|| panic!("no ban_added for {BANNED}; {}", context()));
    assert_eq!(field(ban, "PRIORITY"), "4", "warning: {ban}");
    assert_eq!(field(ban, "TTL_SECS"), BAN_SECS.to_string(), "{ban}");
    assert!(
        field(ban, "REASON").starts_with(&format!("{THRESHOLD} authentication failures")),
        "{ban}"
    );

    // Nothing went to stderr: the journal took every event.
    assert!(
        !daemon.stderr().contains("journal cannot be used"),
        "{}",
        daemon.stderr()
    );
}
