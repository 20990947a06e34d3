//! The control plane end to end, as an operator uses it: a real rampartd with
//! `[filter]` attached to a veth in a test-made network namespace, the real
//! `rampart` CLI run as a subprocess against the test's own control socket,
//! and real TCP connections from the client namespace to check what the
//! kernel does after each command returns.
//!
//! Needs root (BPF, XDP, network namespaces, users); skipped visibly
//! otherwise. The binaries are the debug builds next to this test binary
//! (`cargo build -p rampart --bins` first).

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use rampart::control::{
    client::{Client, ClientError},
    protocol::{ErrorKind, ListName, Reply, Request, exit},
};
use rampart_tests::{
    control::{
        PORT, Rig, RigOptions,
        cli::As,
        find,
        system::{TempGroup, TempUser},
        unix_now,
    },
    privileged,
};
use serde_json::Value;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `kernel` of `stats --json`: `[[name, count], ...]`.
fn counter(stats: &Value, name: &str) -> u64 {
    stats["kernel"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].as_u64())
        .unwrap_or(0)
}

#[test]
fn status_stats_and_check_describe_the_daemon_and_the_kernel() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(
        RigOptions::clients(&["198.18.0.3", "2001:db8::3"], r#"deny = ["198.18.0.5"]"#).unwrap(),
    )
    .unwrap();
    let cli = &rig.cli;

    // status, for scripts and for people.
    let s = cli.json(&["status"]).unwrap();
    assert_eq!(s["type"], "status", "{s}");
    assert_eq!(s["pid"], rig.daemon().unwrap().pid(), "{s}");
    assert!(!s["version"].as_str().unwrap().is_empty(), "{s}");
    assert_eq!(s["config"], rig.config.display().to_string(), "{s}");
    let f = &s["filter"];
    assert!(
        f["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i.as_str().unwrap().contains(&rig.pair.srv_if)),
        "{s}"
    );
    assert_eq!(f["deny"], 1, "{s}");
    assert_eq!(f["allow"], 0, "{s}");
    assert_eq!(f["bypass"], 0, "{s}");
    assert_eq!(f["auto_bans"], 0, "{s}");
    assert_eq!(f["country_policy"], "off", "{s}");
    assert!(s["gateway"].is_null(), "no listener: {s}");
    let text = cli.ok(&["status"]).unwrap().stdout;
    assert!(text.starts_with("rampartd:"), "{text}");
    assert!(text.contains(&rig.pair.srv_if), "{text}");
    assert!(text.contains("gateway: off"), "{text}");

    // An operator entry, IPv4 and IPv6.
    let r = cli
        .json(&[
            "deny",
            "add",
            "198.18.0.3",
            "2001:db8::3",
            "--comment",
            "scanner",
        ])
        .unwrap();
    assert_eq!(r["type"], "changed", "{r}");
    assert_eq!(r["changed"], 2, "{r}");
    assert_eq!(r["unchanged"], 0, "{r}");
    assert!(!rig.reach("198.18.0.3"));
    assert!(!rig.reach("2001:db8::3"));
    assert!(rig.reach("198.18.0.2"));

    // check --port: the verdict, the list, entry and origin that decided.
    let c = cli
        .json(&["check", "198.18.0.3", "--port", &PORT.to_string()])
        .unwrap();
    assert_eq!(c["type"], "check", "{c}");
    assert_eq!(c["addr"], "198.18.0.3", "{c}");
    assert_eq!(c["port"], PORT, "{c}");
    assert_eq!(c["action"], "drop", "{c}");
    assert_eq!(c["reason"], "denied", "{c}");
    assert_eq!(c["list"], "deny", "{c}");
    assert_eq!(c["entry"], "198.18.0.3/32", "{c}");
    assert_eq!(c["origin"], "operator", "{c}");
    assert_eq!(c["in_scope"], true, "{c}");
    assert!(c["expires_in_secs"].is_null(), "{c}");
    let explanation = c["explanation"].as_str().unwrap();
    for word in ["198.18.0.3/32", "deny", "operator"] {
        assert!(explanation.contains(word), "{word}: {c}");
    }
    let text = cli
        .ok(&["check", "198.18.0.3", "--port", &PORT.to_string()])
        .unwrap()
        .stdout;
    assert!(text.starts_with("drop:"), "{text}");
    assert!(text.contains("deny 198.18.0.3/32 (operator)"), "{text}");
    assert!(text.contains("in the protected scope"), "{text}");

    // check without --port: no scope.
    let c = cli.json(&["check", "2001:db8::3"]).unwrap();
    assert_eq!(c["action"], "drop", "{c}");
    assert_eq!(c["entry"], "2001:db8::3/128", "{c}");
    assert!(c["port"].is_null() && c["in_scope"].is_null(), "{c}");

    // A configuration entry says so.
    let c = cli.json(&["check", "198.18.0.5"]).unwrap();
    assert_eq!(c["origin"], "config", "{c}");
    assert_eq!(c["list"], "deny", "{c}");

    // A source no rule drops; a port outside the protected scope.
    let c = cli
        .json(&["check", "198.18.0.2", "--port", &PORT.to_string()])
        .unwrap();
    assert_eq!(c["action"], "pass", "{c}");
    assert!(c["list"].is_null() && c["entry"].is_null(), "{c}");
    assert_eq!(c["in_scope"], true, "{c}");
    let c = cli.json(&["check", "198.18.0.2", "--port", "22"]).unwrap();
    assert_eq!(c["action"], "pass", "{c}");
    assert_eq!(c["in_scope"], false, "{c}");

    // check --exit-code: 10 when dropped, 0 when passed.
    assert_eq!(
        cli.run(&["check", "--exit-code", "198.18.0.3"]).code,
        i32::from(exit::CHECK_DROPPED)
    );
    assert_eq!(cli.run(&["check", "--exit-code", "198.18.0.2"]).code, 0);

    // stats: the kernel counted what the connections above did.
    assert!(!rig.reach("198.18.0.3"));
    assert!(rig.reach("198.18.0.2"));
    let st = cli.json(&["stats"]).unwrap();
    assert_eq!(st["type"], "stats", "{st}");
    assert!(counter(&st, "denied") > 0, "{st}");
    assert!(counter(&st, "passed") > 0, "{st}");
    assert_eq!(st["bans_issued"], 0, "{st}");
    assert!(st["drops_by_country"].is_array(), "{st}");
    let text = cli.ok(&["stats"]).unwrap().stdout;
    assert!(text.contains("kernel packets:"), "{text}");
    assert!(text.contains("denied"), "{text}");
    assert!(text.contains("automatic bans issued: 0"), "{text}");
}

#[test]
fn list_changes_are_enforced_when_the_command_returns() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::clients(&["198.18.0.3", "198.18.0.4"], "").unwrap()).unwrap();
    let cli = &rig.cli;
    // A second server port, outside the protected scope.
    let _other = rig.pair.serve(9090).unwrap();
    assert!(rig.reach("198.18.0.3"));

    // deny: each single attempt right after the command returned.
    cli.ok(&["deny", "add", "198.18.0.3"]).unwrap();
    assert!(!rig.reach("198.18.0.3"), "denied right after `deny add`");
    assert!(
        !rig.reach_port("198.18.0.3", 9090),
        "deny applies on every port"
    );
    assert!(rig.reach("198.18.0.4"));
    cli.ok(&["deny", "del", "198.18.0.3"]).unwrap();
    assert!(rig.reach("198.18.0.3"), "passes right after `deny del`");

    // allow: only listed sources reach the protected port; other ports stay open.
    cli.ok(&["allow", "add", "198.18.0.4"]).unwrap();
    assert!(!rig.reach("198.18.0.3"), "not on the allowlist");
    assert!(rig.reach("198.18.0.4"), "on the allowlist");
    assert!(
        rig.reach_port("198.18.0.3", 9090),
        "outside the protected scope"
    );
    let c = cli
        .json(&["check", "198.18.0.3", "--port", &PORT.to_string()])
        .unwrap();
    assert_eq!(c["action"], "drop", "{c}");
    cli.ok(&["allow", "del", "198.18.0.4"]).unwrap();
    assert!(rig.reach("198.18.0.3"), "allowlist empty again");

    // bypass beats deny.
    cli.ok(&["deny", "add", "198.18.0.3"]).unwrap();
    cli.ok(&["bypass", "add", "198.18.0.3"]).unwrap();
    assert!(rig.reach("198.18.0.3"), "bypassed");
    let c = cli.json(&["check", "198.18.0.3"]).unwrap();
    assert_eq!(c["action"], "pass", "{c}");
    assert_eq!(c["list"], "bypass", "{c}");
    cli.ok(&["bypass", "del", "198.18.0.3"]).unwrap();
    assert!(!rig.reach("198.18.0.3"), "denied again without the bypass");

    // The listing: what a script reads.
    cli.ok(&["deny", "add", "198.18.0.64/26", "--comment", "a block"])
        .unwrap();
    let before = unix_now();
    let list = cli.list("deny").unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let e = find(&list, "198.18.0.3/32").unwrap();
    assert_eq!(e["list"], "deny", "{e}");
    assert_eq!(e["origin"], "operator", "{e}");
    assert!(e["expires_at"].is_null(), "{e}");
    assert_eq!(e["added_by"], 0, "{e}");
    let added_at = e["added_at"].as_u64().unwrap();
    assert!(added_at <= before && added_at + 60 > before, "{e}");
    assert!(e["reason"].is_null(), "{e}");
    let e = find(&list, "198.18.0.64/26").unwrap();
    assert_eq!(e["comment"], "a block", "{e}");

    // ... and what people read: a header line and one row per entry.
    let text = cli.ok(&["deny", "list"]).unwrap().stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for column in ["ENTRY", "ORIGIN", "EXPIRES IN", "ADDED", "BY", "COMMENT"] {
        assert!(lines[0].contains(column), "{column}: {text}");
    }
    assert!(lines[0].starts_with("ENTRY"), "{text}");
    for entry in ["198.18.0.3/32", "198.18.0.64/26"] {
        let row = lines[1..]
            .iter()
            .find(|l| l.starts_with(entry))
            .unwrap_or_else(|| panic!("no row for {entry}: {text}"));
        assert!(row.contains("operator") && row.contains("never"), "{row}");
    }
    assert!(text.contains("a block"), "{text}");
    let text = cli.ok(&["allow", "list"]).unwrap().stdout;
    assert_eq!(text, "the allow list is empty\n");
    assert_eq!(cli.list("bypass").unwrap(), Vec::<Value>::new());
}

#[test]
fn entries_are_addresses_cidrs_ranges_files_and_replacements() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::clients(&[], r#"deny = ["198.18.0.5"]"#).unwrap()).unwrap();
    let cli = &rig.cli;

    // Addresses, CIDRs and inclusive ranges (as the fewest CIDRs).
    let r = cli
        .json(&[
            "deny",
            "add",
            "198.18.0.64/26",
            "198.18.0.8-198.18.0.11",
            "198.18.0.20-198.18.0.22",
            "2001:db8:1::/48",
            "198.18.0.30",
        ])
        .unwrap();
    assert_eq!(r["changed"], 6, "{r}");
    assert_eq!(
        cli.list_entries("deny").unwrap(),
        [
            "198.18.0.20/31",
            "198.18.0.22/32",
            "198.18.0.30/32",
            "198.18.0.5/32",
            "198.18.0.64/26",
            "198.18.0.8/30",
            "2001:db8:1::/48",
        ]
    );
    // The same again: nothing changes.
    let r = cli
        .json(&["deny", "add", "198.18.0.30", "198.18.0.64/26"])
        .unwrap();
    assert_eq!(r["changed"], 0, "{r}");
    assert_eq!(r["unchanged"], 2, "{r}");
    // A config entry added by the operator stays the file's.
    let r = cli.json(&["deny", "add", "198.18.0.5"]).unwrap();
    assert_eq!(r["unchanged"], 1, "{r}");
    let list = cli.list("deny").unwrap();
    assert_eq!(find(&list, "198.18.0.5/32").unwrap()["origin"], "config");

    // --from-file, with comments and blank lines; `-` reads stdin.
    let file = rig
        .file(
            "more.txt",
            "# scanners\n198.18.1.1\n\n198.18.1.2   # trailing comment\n198.18.1.8-198.18.1.9\n",
        )
        .unwrap();
    let r = cli
        .json(&["deny", "add", "--from-file", file.to_str().unwrap()])
        .unwrap();
    assert_eq!(r["changed"], 3, "{r}");
    let run = cli.run_stdin(
        &["--json", "deny", "add", "--from-file", "-"],
        "198.18.1.20\n198.18.1.21\n",
    );
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.json().unwrap()["changed"], 2, "{run}");
    assert_eq!(cli.list("deny").unwrap().len(), 12);

    // --replace: the operator's entries become exactly these; config stays.
    let file = rig
        .file("replace.txt", "198.18.2.1\n198.18.2.0/30\n")
        .unwrap();
    let r = cli
        .json(&[
            "deny",
            "add",
            "--replace",
            "--from-file",
            file.to_str().unwrap(),
            "198.18.2.9",
            "--comment",
            "replaced",
        ])
        .unwrap();
    assert_eq!(r["type"], "changed", "{r}");
    let list = cli.list("deny").unwrap();
    let mut entries: Vec<(String, String)> = list
        .iter()
        .map(|e| {
            (
                e["entry"].as_str().unwrap().to_owned(),
                e["origin"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            ("198.18.0.5/32".to_owned(), "config".to_owned()),
            ("198.18.2.0/30".to_owned(), "operator".to_owned()),
            ("198.18.2.1/32".to_owned(), "operator".to_owned()),
            ("198.18.2.9/32".to_owned(), "operator".to_owned()),
        ],
        "{list:?}"
    );
    assert!(
        list.iter()
            .filter(|e| e["origin"] == "operator")
            .all(|e| e["comment"] == "replaced"),
        "{list:?}"
    );
    // An empty --replace clears the operator's entries only.
    let empty = rig.file("empty.txt", "# nothing\n").unwrap();
    cli.ok(&[
        "deny",
        "add",
        "--replace",
        "--from-file",
        empty.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(cli.list_entries("deny").unwrap(), ["198.18.0.5/32"]);

    // del: by range as added; partly absent is fine; wholly absent is 4;
    // a configuration entry is the file's (3), nothing changes.
    cli.ok(&["deny", "add", "198.18.0.8-198.18.0.11", "198.18.0.30"])
        .unwrap();
    let r = cli
        .json(&["deny", "del", "198.18.0.8-198.18.0.11", "198.18.0.31"])
        .unwrap();
    assert_eq!(r["changed"], 1, "{r}");
    assert_eq!(r["unchanged"], 1, "{r}");
    let run = cli.run(&["deny", "del", "198.18.0.77"]);
    assert_eq!(run.code, i32::from(exit::NOT_FOUND), "{run}");
    assert!(run.stderr.contains("not in the deny list"), "{run}");
    let run = cli.run(&["deny", "del", "198.18.0.5"]);
    assert_eq!(run.code, i32::from(exit::INVALID_INPUT), "{run}");
    assert!(run.stderr.contains("configuration file"), "{run}");
    assert_eq!(
        cli.list_entries("deny").unwrap(),
        ["198.18.0.30/32", "198.18.0.5/32"]
    );

    // RAMPART_SOCKET instead of --socket.
    let run = cli.run_env(&["--json", "deny", "list"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.json().unwrap().as_array().unwrap().len(), 2, "{run}");
}

#[test]
fn ipv4_mapped_entries_are_the_ipv4_entries_they_map() {
    if !privileged() {
        return;
    }
    // Before, `::ffff:a.b.c.d` was stored as an IPv6 entry the kernel never
    // matches (it sees the IPv4 source as IPv4): "added", and no effect.
    let rig = Rig::start(
        RigOptions::clients(
            &["198.18.0.3", "198.18.0.4", "198.18.0.5"],
            r#"deny = ["::ffff:198.18.0.5"]"#,
        )
        .unwrap(),
    )
    .unwrap();
    let cli = &rig.cli;
    let port = PORT.to_string();

    // A configuration-file entry.
    assert!(
        !rig.reach("198.18.0.5"),
        "config entry in mapped form applies"
    );
    let list = cli.list("deny").unwrap();
    assert_eq!(find(&list, "198.18.0.5/32").unwrap()["origin"], "config");

    // An operator entry: enforced, listed and checked as IPv4.
    assert!(rig.reach("198.18.0.3"));
    cli.ok(&["deny", "add", "::ffff:198.18.0.3"]).unwrap();
    assert!(!rig.reach("198.18.0.3"), "denied by its mapped form");
    assert!(rig.reach("198.18.0.4"));
    assert_eq!(
        cli.list_entries("deny").unwrap(),
        ["198.18.0.3/32", "198.18.0.5/32"]
    );
    for source in ["198.18.0.3", "::ffff:198.18.0.3"] {
        let c = cli.json(&["check", source, "--port", &port]).unwrap();
        assert_eq!(c["action"], "drop", "{source}: {c}");
        assert_eq!(c["list"], "deny", "{source}: {c}");
    }
    // A raw `check` request (another client than the CLI, which converts
    // first) is answered for the IPv4 source too; before, for the IPv6 one.
    let reply = Client::connect(cli.socket())
        .unwrap()
        .call(Request::Check {
            addr: ip("::ffff:198.18.0.3"),
            port: Some(PORT),
            udp: false,
        })
        .unwrap();
    let Reply::Check(c) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        (c.addr, c.action.as_str(), c.list),
        (ip("198.18.0.3"), "drop", Some(ListName::Deny)),
        "{c:?}"
    );
    let text = cli.ok(&["deny", "list"]).unwrap().stdout;
    assert!(!text.contains("::ffff"), "{text}");

    // Deleting by the mapped form deletes the IPv4 entry.
    cli.ok(&["deny", "del", "::ffff:198.18.0.3"]).unwrap();
    assert!(rig.reach("198.18.0.3"), "passes after `deny del`");
    assert_eq!(cli.list_entries("deny").unwrap(), ["198.18.0.5/32"]);

    // A mapped prefix in a bulk file: /96+n is /n.
    let file = rig
        .file("mapped.txt", "::ffff:198.18.0.0/126  # .0 to .3\n")
        .unwrap();
    cli.ok(&["deny", "add", "--from-file", file.to_str().unwrap()])
        .unwrap();
    assert!(!rig.reach("198.18.0.3"), "inside the mapped /126");
    assert!(rig.reach("198.18.0.4"), "outside the mapped /126");
    assert_eq!(
        cli.list_entries("deny").unwrap(),
        ["198.18.0.0/30", "198.18.0.5/32"]
    );
    // The bypass list too (it beats the deny /30).
    cli.ok(&["bypass", "add", "::ffff:198.18.0.3"]).unwrap();
    assert!(rig.reach("198.18.0.3"), "bypassed by its mapped form");
    assert_eq!(cli.list_entries("bypass").unwrap(), ["198.18.0.3/32"]);

    // Shorter than /96 covers more than IPv4: refused, nothing changed.
    let before = cli.list("deny").unwrap();
    let run = cli.run(&["deny", "add", "::ffff:198.18.0.0/80"]);
    assert_eq!(run.code, i32::from(exit::INVALID_INPUT), "{run}");
    assert!(
        run.stderr.contains("IPv4-mapped prefix shorter than /96"),
        "{run}"
    );
    assert_eq!(cli.list("deny").unwrap(), before, "nothing changed");
}

#[test]
fn temporary_entries_stop_and_vanish_at_expiry() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::clients(&["198.18.0.6"], "").unwrap()).unwrap();
    let cli = &rig.cli;
    let t0 = Instant::now();
    let now = unix_now();
    let r = cli
        .json(&["deny", "add", "198.18.0.6", "--ttl", "2s"])
        .unwrap();
    assert_eq!(r["changed"], 1, "{r}");
    assert!(!rig.reach("198.18.0.6"), "enforced at once");
    let list = cli.list("deny").unwrap();
    let e = find(&list, "198.18.0.6/32").unwrap();
    let at = e["expires_at"].as_u64().unwrap();
    assert!((now + 1..=now + 3).contains(&at), "{e} (now {now})");
    let c = cli.json(&["check", "198.18.0.6"]).unwrap();
    assert!(c["expires_in_secs"].as_u64().unwrap() <= 2, "{c}");
    let text = cli.ok(&["deny", "list"]).unwrap().stdout;
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|row| row.contains("1s") || row.contains("2s")),
        "{text}"
    );

    // Still enforced a second in.
    std::thread::sleep(Duration::from_secs(1).saturating_sub(t0.elapsed()));
    assert!(!rig.reach("198.18.0.6"), "still enforced before expiry");

    // Passes once expired: the kernel checks the expiry itself.
    let passed = rig
        .wait_reach("198.18.0.6", true, Duration::from_secs(5))
        .map(|_| t0.elapsed());
    let passed = passed.expect("the entry was never lifted");
    assert!(
        passed <= Duration::from_millis(2000 + 1500),
        "passes {passed:?} after a 2 s ttl"
    );
    // Gone from the list within ~1-2 s of expiry.
    let gone = loop {
        let list = cli.list("deny").unwrap();
        if find(&list, "198.18.0.6/32").is_none() {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "still listed {:?} after a 2 s ttl: {list:?}",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        gone <= Duration::from_millis(2000 + 2200),
        "listed until {gone:?}"
    );
    eprintln!("ttl 2s: passes after {passed:?}, unlisted after {gone:?}");
}

#[test]
fn bad_input_exits_3_and_changes_nothing() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::clients(&["198.18.0.7"], r#"deny = ["198.18.0.5"]"#).unwrap())
        .unwrap();
    let cli = &rig.cli;
    cli.ok(&["deny", "add", "198.18.0.9", "--comment", "kept"])
        .unwrap();
    let deny_before = cli.list("deny").unwrap();
    let allow_before = cli.list("allow").unwrap();
    let countries_before = cli.json(&["country", "list"]).unwrap();
    let bad_file = rig.file("bad.txt", "198.18.0.7\n198.18.0.300\n").unwrap();
    let bad_file = bad_file.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["deny", "add", "198.18.0.300"],
        vec!["deny", "add", "198.18.0.7", "nonsense"],
        vec!["deny", "add", "198.18.0.9-198.18.0.5"],
        vec!["deny", "add", "198.18.0.1-2001:db8::1"],
        vec!["deny", "add", "198.18.0.1/24"],
        vec!["deny", "add", "198.18.0.7", "--ttl", "0"],
        vec!["deny", "add", "198.18.0.7", "--ttl", "0s"],
        vec!["deny", "add", "198.18.0.7", "--ttl", "soon"],
        vec!["deny", "add", "198.18.0.7", "--ttl", "400d"],
        // humantime's months: before, a ban of 304 days.
        vec!["deny", "add", "198.18.0.7", "--ttl", "10M"],
        vec!["deny", "add", "198.18.0.7", "--ttl", "1w"],
        vec!["deny", "add", "--from-file", bad_file],
        vec!["deny", "del", "198.18.0.9/33"],
        vec!["allow", "add", "::g"],
        vec!["bypass", "add", "198.18.0.7-198.18.0.6"],
        vec!["country", "block", "zzz"],
        vec!["country", "block", "1a"],
        vec!["country", "allow-only", "fr", "x"],
        vec!["check", "not-an-ip"],
    ];
    for args in &cases {
        let run = cli.run(args);
        assert_eq!(run.code, i32::from(exit::INVALID_INPUT), "{run}");
        assert!(run.stderr.starts_with("rampart: "), "{run}");
        assert!(run.stdout.is_empty(), "{run}");
    }
    let run = cli.run(&["deny", "add", "--from-file", bad_file]);
    assert!(run.stderr.contains("bad.txt:2"), "names the line: {run}");
    let run = cli.run(&["deny", "add", "198.18.0.9-198.18.0.5"]);
    assert!(run.stderr.contains("198.18.0.9"), "names the entry: {run}");
    let run = cli.run(&["deny", "add", "198.18.0.7", "--ttl", "10M"]);
    assert!(
        run.stderr
            .contains("unknown unit `M`; use whole numbers with the units s, m, h and d"),
        "names the units: {run}"
    );

    // The daemon checks too, for clients that are not this CLI.
    let daemon_side = [
        Request::ListAdd {
            list: ListName::Deny,
            entries: vec!["198.18.0.7".into(), "198.18.0.9-198.18.0.5".into()],
            ttl_secs: None,
            comment: None,
            replace: false,
        },
        Request::ListAdd {
            list: ListName::Deny,
            entries: vec!["198.18.0.7".into()],
            ttl_secs: Some(0),
            comment: None,
            replace: false,
        },
        // Over 365 days: before, a TTL this long overflowed the kernel expiry
        // (rampartd panicked after journaling it, and again at every start).
        Request::ListAdd {
            list: ListName::Deny,
            entries: vec!["198.18.0.7".into()],
            ttl_secs: Some(99_999_999_999_999),
            comment: None,
            replace: false,
        },
        Request::ListAdd {
            list: ListName::Deny,
            entries: vec!["198.18.0.7".into()],
            ttl_secs: Some(365 * 24 * 3600 + 1),
            comment: None,
            replace: false,
        },
        Request::ListAdd {
            list: ListName::Allow,
            entries: vec!["198.18.0.7/8".into()],
            ttl_secs: None,
            comment: None,
            replace: true,
        },
        Request::CountryBlock {
            countries: vec!["q1".into()],
        },
    ];
    for request in daemon_side {
        let err = Client::connect(cli.socket())
            .unwrap()
            .call(request.clone())
            .unwrap_err();
        match &err {
            ClientError::Daemon(reply) => {
                assert_eq!(
                    reply.kind,
                    ErrorKind::InvalidInput,
                    "{request:?}: {reply:?}"
                )
            }
            other => panic!("{request:?}: {other:?}"),
        }
        assert_eq!(err.exit_code(), exit::INVALID_INPUT);
    }

    assert_eq!(cli.list("deny").unwrap(), deny_before, "nothing changed");
    assert_eq!(cli.list("allow").unwrap(), allow_before, "nothing changed");
    assert_eq!(
        cli.json(&["country", "list"]).unwrap(),
        countries_before,
        "nothing changed"
    );
    assert!(rig.reach("198.18.0.7"), "nothing reached the kernel");
}

#[test]
fn exit_codes_for_not_found_usage_and_a_daemon_that_is_down() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::start(RigOptions::clients(&[], "").unwrap()).unwrap();
    let cli = rig.cli.clone();

    let run = cli.run(&["deny", "del", "198.18.0.77"]);
    assert_eq!(run.code, i32::from(exit::NOT_FOUND), "{run}");
    let run = cli.run(&["allow", "del", "2001:db8::77"]);
    assert_eq!(run.code, i32::from(exit::NOT_FOUND), "{run}");
    let missing = rig.path("no-such-database.csv");
    let run = cli.run(&["geo", "load", missing.to_str().unwrap()]);
    assert_eq!(run.code, i32::from(exit::NOT_FOUND), "{run}");
    assert!(run.stderr.contains("no-such-database.csv"), "{run}");
    // A list file the CLI reads itself: the same (before, 3).
    let missing = rig.path("no-such-list.txt");
    for list in ["deny", "allow", "bypass"] {
        for verb in ["add", "del"] {
            let run = cli.run(&[list, verb, "--from-file", missing.to_str().unwrap()]);
            assert_eq!(run.code, i32::from(exit::NOT_FOUND), "{run}");
            assert_eq!(
                run.stderr,
                format!(
                    "rampart: cannot read {}: No such file or directory (os error 2)\n",
                    missing.display()
                ),
                "{run}"
            );
        }
    }

    // Usage errors are clap's.
    assert_eq!(cli.run(&["deny"]).code, i32::from(exit::USAGE));
    assert_eq!(cli.run(&["frobnicate"]).code, i32::from(exit::USAGE));
    assert_eq!(cli.run(&["deny", "add"]).code, i32::from(exit::USAGE));

    // No socket at all.
    let nowhere = cli.with_socket(rig.path("nowhere/control.sock"));
    let run = nowhere.run(&["status"]);
    assert_eq!(run.code, i32::from(exit::DAEMON_DOWN), "{run}");
    assert!(
        run.stderr.contains("rampartd is not running")
            && run.stderr.contains("nowhere/control.sock"),
        "{run}"
    );
    let run = nowhere.run_env(&["deny", "add", "198.18.0.3"]);
    assert_eq!(run.code, i32::from(exit::DAEMON_DOWN), "{run}");

    // The daemon killed: its socket file may stay, nobody listens.
    rig.kill_daemon().unwrap();
    for args in [
        vec!["status"],
        vec!["deny", "add", "198.18.0.3"],
        vec!["deny", "list", "--json"],
        vec!["events", "--follow"],
    ] {
        let run = cli.run(&args);
        assert_eq!(run.code, i32::from(exit::DAEMON_DOWN), "{run}");
        assert!(run.stderr.contains("rampartd is not running"), "{run}");
    }
}

#[test]
fn the_socket_is_refused_to_others_and_open_to_the_control_group() {
    if !privileged() {
        return;
    }
    let group = TempGroup::new().unwrap();
    let member = TempUser::new(&[&group]).unwrap();
    let outsider = TempUser::new(&[]).unwrap();
    let rig = Rig::start(RigOptions {
        client_addrs: vec![ip("198.18.0.3"), ip("198.18.0.4")],
        daemon: format!("control_group = \"{}\"", group.name),
        ..RigOptions::default()
    })
    .unwrap();
    let cli = &rig.cli;

    let meta = std::fs::metadata(&rig.runtime_dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o750, "runtime dir mode");
    assert_eq!(meta.gid(), group.gid, "runtime dir group");

    // nobody, and a user in no relevant group: 5, nothing changes.
    let outsider = As::User {
        uid: outsider.uid,
        gid: 65534,
        groups: Vec::new(),
    };
    for who in [As::nobody(), outsider] {
        for args in [vec!["status"], vec!["deny", "add", "198.18.0.3"]] {
            let run = cli.run_as(&who, &args);
            assert_eq!(
                run.code,
                i32::from(exit::PERMISSION_DENIED),
                "{who:?}: {run}"
            );
            assert!(run.stderr.contains("permission denied"), "{run}");
        }
    }
    assert!(cli.list("deny").unwrap().is_empty());
    assert!(rig.reach("198.18.0.3"));

    // A member of the control group (supplementary group, as after a login).
    let supplementary = As::User {
        uid: member.uid,
        gid: 65534,
        groups: vec![group.gid],
    };
    let socket = std::fs::metadata(cli.socket()).unwrap();
    let run = cli.run_as(&supplementary, &["status"]);
    assert_eq!(
        run.code,
        0,
        "a control_group member is refused; socket mode {:o}, group {}: {run}",
        socket.permissions().mode() & 0o7777,
        socket.gid()
    );
    let run = cli.run_as(&supplementary, &["deny", "add", "198.18.0.3"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(!rig.reach("198.18.0.3"));
    let list = cli.list("deny").unwrap();
    assert_eq!(
        find(&list, "198.18.0.3/32").unwrap()["added_by"],
        member.uid,
        "the change records who made it"
    );
    // ... and as its primary group.
    let primary = As::User {
        uid: member.uid,
        gid: group.gid,
        groups: Vec::new(),
    };
    let run = cli.run_as(&primary, &["deny", "add", "198.18.0.4"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(!rig.reach("198.18.0.4"));

    // `geo load` reads the file with rampartd's rights (root's) and quotes a line it
    // cannot read: a member may not name a file, or it could read the first line of
    // any file root can. Root may; the member's attempt is logged.
    let dir = rampart_tests::daemon::TempDir::new().unwrap();
    let secret = dir.path.join("secret");
    std::fs::write(&secret, "root:SECRETHASH:19000:0:99999:7:::\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let table = dir.path.join("table.csv");
    std::fs::write(&table, "198.18.0.0/24,xx\n").unwrap();
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in [&secret, &table] {
        let run = cli.run_as(&supplementary, &["geo", "load", file.to_str().unwrap()]);
        assert_eq!(run.code, i32::from(exit::PERMISSION_DENIED), "{run}");
        assert!(!run.stderr.contains("SECRETHASH"), "{run}");
        assert!(run.stderr.contains("only root may ask for it"), "{run}");
    }
    assert!(
        rig.log().contains("country table load refused"),
        "{}",
        rig.log()
    );
    let run = cli.run(&["geo", "load", secret.to_str().unwrap()]);
    assert_eq!(run.code, i32::from(exit::INVALID_INPUT), "{run}");
    cli.ok(&["geo", "load", table.to_str().unwrap()]).unwrap();
}

#[test]
fn events_list_changes_and_follow_streams_new_ones() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::clients(&[], "").unwrap()).unwrap();
    let cli = &rig.cli;
    let start_ms = u128::from(unix_now()) * 1000;
    cli.ok(&["deny", "add", "198.18.0.3"]).unwrap();

    let run = cli.run(&["--json", "events"]);
    assert_eq!(run.code, 0, "{run}");
    let events = run.json_lines().unwrap();
    let change = events
        .iter()
        .find(|e| e["event"] == "list_changed")
        .unwrap_or_else(|| panic!("no list_changed: {run}"));
    assert!(
        change["message"].as_str().unwrap().contains("deny"),
        "{change}"
    );
    assert!(
        u128::from(change["time_ms"].as_u64().unwrap()) >= start_ms,
        "{change}"
    );
    let fields = change["fields"].as_array().unwrap();
    assert!(
        fields.iter().any(|f| f[0] == "LIST" && f[1] == "deny"),
        "{change}"
    );
    assert!(
        fields.iter().any(|f| f[0] == "PEER_UID" && f[1] == "0"),
        "{change}"
    );
    let text = cli.ok(&["events"]).unwrap().stdout;
    assert!(
        text.lines()
            .any(|l| l.contains("list_changed") && l.contains("LIST=deny")),
        "{text}"
    );

    // --follow: the backlog, then a change made after it started.
    let mut child = cli
        .command(&["--json", "events", "--follow", "--last", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10));
    let first = first.expect("events --follow printed no backlog");
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["event"], "list_changed", "{first}");
    cli.ok(&["deny", "add", "198.18.0.4", "198.18.0.5"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    let followed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let e: Value = serde_json::from_str(&line).unwrap();
                if e["event"] == "list_changed"
                    && e["message"].as_str().unwrap().contains("2 added")
                {
                    break Some(e);
                }
                seen.push(line);
            }
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        followed.is_some(),
        "the change did not reach the follower: {seen:?}"
    );
}

#[test]
fn reload_replaces_config_entries_keeps_operator_entries_and_refuses_bad_files() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(
        RigOptions::clients(
            &["198.18.0.3", "198.18.0.4", "198.18.0.5", "198.18.0.6"],
            r#"deny = ["198.18.0.3"]"#,
        )
        .unwrap(),
    )
    .unwrap();
    let cli = rig.cli.clone();
    cli.ok(&["deny", "add", "198.18.0.4"]).unwrap();
    assert!(!rig.reach("198.18.0.3"));

    let origins = |cli: &rampart_tests::control::Cli| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = cli
            .list("deny")
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["entry"].as_str().unwrap().to_owned(),
                    e["origin"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };

    // `rampart reload` with a good file.
    rig.write_filter_config(r#"deny = ["198.18.0.5"]"#).unwrap();
    let run = cli.run(&["reload"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("configuration reloaded"), "{run}");
    assert_eq!(
        origins(&cli),
        pairs(&[("198.18.0.4/32", "operator"), ("198.18.0.5/32", "config")])
    );
    assert!(rig.reach("198.18.0.3"), "old config entry lifted");
    assert!(!rig.reach("198.18.0.4"), "operator entry kept");
    assert!(!rig.reach("198.18.0.5"), "new config entry enforced");
    let s = cli.json(&["status"]).unwrap();
    assert_eq!(s["last_reload"]["ok"], true, "{s}");

    // A file with several errors: 8, each listed with its position; nothing changes.
    let bad = rig.config_text(
        r#"deny = ["198.18.0.6", "not-an-address", "10.0.0.1/8"]
allow = ["198.18.0.999"]"#,
        "",
    );
    std::fs::write(&rig.config, &bad).unwrap();
    let run = cli.run(&["reload"]);
    assert_eq!(run.code, i32::from(exit::BAD_CONFIG), "{run}");
    for needle in ["not-an-address", "10.0.0.1/8", "198.18.0.999"] {
        assert!(run.stderr.contains(needle), "{needle} not listed: {run}");
    }
    let config_name = rig.config.display().to_string();
    assert!(
        run.stderr
            .lines()
            .filter(|l| l.contains(&config_name))
            .count()
            >= 3,
        "each error with file:line:column: {run}"
    );
    assert_eq!(
        origins(&cli),
        pairs(&[("198.18.0.4/32", "operator"), ("198.18.0.5/32", "config")])
    );
    assert!(!rig.reach("198.18.0.5"), "old config still enforced");
    assert!(rig.reach("198.18.0.6"), "bad file not applied");
    let s = cli.json(&["status"]).unwrap();
    assert_eq!(s["last_reload"]["ok"], false, "{s}");

    // An unknown key.
    rig.write_filter_config("deny = [\"198.18.0.6\"]\nbogus_key = 1")
        .unwrap();
    let run = cli.run(&["reload"]);
    assert_eq!(run.code, i32::from(exit::BAD_CONFIG), "{run}");
    assert!(run.stderr.contains("bogus_key"), "{run}");
    assert!(rig.reach("198.18.0.6"), "bad file not applied");

    // SIGHUP: the same, without anyone to answer.
    let reloads_before = count_reloads(&cli);
    rig.write_filter_config(r#"deny = ["198.18.0.6"]"#).unwrap();
    rig.daemon().unwrap().signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while origins(&cli) != pairs(&[("198.18.0.4/32", "operator"), ("198.18.0.6/32", "config")]) {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload: {:?}",
            origins(&cli)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!rig.reach("198.18.0.6"));
    assert!(rig.reach("198.18.0.5"));
    assert!(!rig.reach("198.18.0.4"));

    std::fs::write(&rig.config, &bad).unwrap();
    rig.daemon().unwrap().signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = cli.json(&["status"]).unwrap();
        if s["last_reload"]["ok"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP with a bad file: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!rig.reach("198.18.0.6"), "old config still enforced");
    assert!(rig.reach("198.18.0.5"));
    assert_eq!(
        origins(&cli),
        pairs(&[("198.18.0.4/32", "operator"), ("198.18.0.6/32", "config")])
    );
    assert!(
        count_reloads(&cli) > reloads_before,
        "events record the reloads"
    );
    let events = cli.ok(&["--json", "events"]).unwrap().json_lines().unwrap();
    assert!(
        events.iter().any(|e| e["event"] == "reload_rejected"),
        "{events:?}"
    );
}

/// A reload refused because a new interface cannot be attached (lo has no
/// native XDP) changes nothing: the new deny entry is not in force, lo has no
/// program. Before, the rules (and the gateway's routes) had been swapped before
/// the attach failed, while the reply said the running configuration stayed.
#[test]
fn a_reload_that_cannot_attach_a_new_interface_changes_nothing() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::clients(&["198.18.0.6"], "").unwrap()).unwrap();
    assert!(rig.reach("198.18.0.6"));
    let srv_if = rig.pair.srv_if.clone();
    let run = rig
        .reload_with(&rig.config_with_interfaces(r#"deny = ["198.18.0.6"]"#, &[&srv_if, "lo"]))
        .unwrap();
    assert_eq!(run.code, i32::from(exit::BAD_CONFIG), "{run}");
    assert!(
        run.stderr.contains("attaching to lo in native mode failed"),
        "{run}"
    );
    assert!(
        rig.reach("198.18.0.6"),
        "the new deny entry is not in force"
    );
    assert!(rig.cli.list_entries("deny").unwrap().is_empty());
    assert!(
        !rig.xdp_attached("lo").unwrap(),
        "lo stays without a program"
    );
    assert!(rig.xdp_attached(&srv_if).unwrap());
    let status = rig.cli.json(&["status"]).unwrap();
    assert_eq!(
        status["filter"]["interfaces"],
        serde_json::json!([srv_if]),
        "{status}"
    );

    // The same file without lo: applied.
    rig.write_filter_config(r#"deny = ["198.18.0.6"]"#).unwrap();
    rig.cli.ok(&["reload"]).unwrap();
    assert!(!rig.reach("198.18.0.6"), "applied");
}

/// An interface taken out of `interfaces` is detached by the reload, and by
/// the next start when its link is still pinned. Before, it stayed attached and
/// filtering, unseen by status and metrics, until `rampartd --detach`.
#[test]
fn an_interface_removed_from_the_file_is_detached() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::start(RigOptions::clients(&["198.18.0.6"], "").unwrap()).unwrap();
    let ns = rig.pair.srv.clone();
    rig.pair
        .ip(
            &ns,
            &[
                "link", "add", "rmv-c", "type", "veth", "peer", "name", "rmv-d",
            ],
        )
        .unwrap();
    for dev in ["rmv-c", "rmv-d"] {
        rig.pair.ip(&ns, &["link", "set", dev, "up"]).unwrap();
    }
    let srv_if = rig.pair.srv_if.clone();
    let link = rig.pin_dir.join("link_rmv-c_native");
    let both = rig.config_with_interfaces("", &[&srv_if, "rmv-c"]);
    std::fs::write(&rig.config, &both).unwrap();
    rig.cli.ok(&["reload"]).unwrap();
    assert!(rig.xdp_attached("rmv-c").unwrap() && link.exists());

    rig.write_config().unwrap();
    rig.cli.ok(&["reload"]).unwrap();
    assert!(
        !rig.xdp_attached("rmv-c").unwrap(),
        "detached by the reload"
    );
    assert!(!link.exists());
    assert!(rig.xdp_attached(&srv_if).unwrap());
    assert!(
        rig.log()
            .contains("filter detached from rmv-c: it is not in [filter] interfaces"),
        "{}",
        rig.log()
    );

    // Attached again, then the file changes while no rampartd runs.
    std::fs::write(&rig.config, &both).unwrap();
    rig.cli.ok(&["reload"]).unwrap();
    assert!(rig.xdp_attached("rmv-c").unwrap());
    rig.kill_daemon().unwrap();
    rig.write_config().unwrap();
    rig.start_daemon().unwrap();
    assert!(!rig.xdp_attached("rmv-c").unwrap(), "detached at start");
    assert!(!link.exists());
    assert!(rig.xdp_attached(&srv_if).unwrap());
    assert!(
        rig.log()
            .contains("filter detached from rmv-c: it is not in [filter] interfaces"),
        "{}",
        rig.log()
    );
}

/// A change of attach_mode is applied by the reload (each interface re-attached
/// in the new mode) and by a start; when the new mode cannot be attached (lo
/// has no native XDP), the reload is rejected and every interface is back in
/// its old mode. Before, the reload said "reloaded" and changed nothing, and the
/// next start exited 69 (a restart loop under systemd).
#[test]
fn a_change_of_attach_mode_is_applied_or_refused_whole() {
    if !privileged() {
        return;
    }
    let mut rig =
        Rig::start(RigOptions::clients(&["198.18.0.6"], r#"deny = ["198.18.0.6"]"#).unwrap())
            .unwrap();
    let srv_if = rig.pair.srv_if.clone();
    let generic = |rig: &Rig, iface: &str| rig.link_details(iface).unwrap().contains("xdpgeneric");
    assert!(!generic(&rig, &srv_if));
    let skb = |ifaces: &[&str]| {
        rig.config_with_interfaces(r#"deny = ["198.18.0.6"]"#, ifaces)
            .replace(r#"attach_mode = "native""#, r#"attach_mode = "skb""#)
    };
    let skb_one = skb(&[&srv_if]);
    let skb_two = skb(&[&srv_if, "lo"]);
    let run = rig.reload_with(&skb_two).unwrap();
    assert_eq!(run.code, 0, "{run}");
    assert!(generic(&rig, &srv_if), "re-attached in skb mode");
    assert!(generic(&rig, "lo"));
    assert!(!rig.reach("198.18.0.6"), "still filtered");
    assert!(
        rig.log()
            .contains(&format!("re-attaching {srv_if} in skb mode (was native)")),
        "{}",
        rig.log()
    );

    // Back to native: lo cannot, so nothing changes.
    let run = rig
        .reload_with(&rig.config_with_interfaces(r#"deny = ["198.18.0.6"]"#, &[&srv_if, "lo"]))
        .unwrap();
    assert_eq!(run.code, i32::from(exit::BAD_CONFIG), "{run}");
    assert!(generic(&rig, &srv_if), "back in skb mode");
    assert!(generic(&rig, "lo"), "back in skb mode");
    assert!(!rig.reach("198.18.0.6"), "still filtered");

    // A start applies a change made while no rampartd ran.
    std::fs::write(&rig.config, &skb_one).unwrap();
    rig.cli.ok(&["reload"]).unwrap();
    rig.kill_daemon().unwrap();
    rig.write_config().unwrap();
    rig.start_daemon().unwrap();
    assert!(!generic(&rig, &srv_if), "native again");
    assert!(rig.xdp_attached(&srv_if).unwrap());
    assert!(!rig.reach("198.18.0.6"), "filtered");
}

fn count_reloads(cli: &rampart_tests::control::Cli) -> usize {
    cli.ok(&["--json", "events", "--last", "1000"])
        .unwrap()
        .json_lines()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "config_reloaded" || e["event"] == "reload_rejected")
        .count()
}

/// A second rampartd given the same pin_root (another state directory, so its own
/// state lock does not stop it) refuses before it touches the kernel. Before, it
/// attached its program over the running one's, applied its own (empty) lists and
/// only then failed on the control socket: the first daemon's deny entry no
/// longer dropped while `rampart check` still said it did.
#[test]
fn a_second_rampartd_on_the_same_pins_changes_nothing() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::clients(&["198.18.0.7"], "").unwrap()).unwrap();
    rig.cli.ok(&["deny", "add", "198.18.0.7"]).unwrap();
    assert!(!rig.reach("198.18.0.7"), "denied by the first daemon");

    let second_state = rig.dir.path.join("second-state");
    let second_run = rig.dir.path.join("second-run");
    let text = rig
        .config_text(&rig.opts.filter, &rig.opts.sections)
        .replace(
            &rig.state_dir.display().to_string(),
            &second_state.display().to_string(),
        )
        .replace(
            &rig.runtime_dir.display().to_string(),
            &second_run.display().to_string(),
        );
    let config = rig.file("second.toml", &text).unwrap();
    // Before, the second daemon (its own control socket) went on running.
    let (status, stderr) = rig.start_refused(&config).unwrap();
    assert_eq!(status, Some(75), "{stderr}");
    assert!(
        stderr.contains("another rampartd is running on the filter pinned at"),
        "{stderr}"
    );
    assert!(
        !rig.reach("198.18.0.7"),
        "the first daemon's entry still drops"
    );
    let check = rig
        .cli
        .run(&["check", "198.18.0.7", "--port", &PORT.to_string()]);
    assert!(check.stdout.contains("drop"), "{check}");
}

/// `rampartd --detach` while rampartd runs on the same pins (or the same state
/// directory) refuses, naming the running process, and detaches nothing. Before,
/// it removed the filter and exited 0, and the running daemon went on saying it
/// filtered (status, check, `deny add`) while the kernel dropped nothing.
#[test]
fn detach_while_rampartd_runs_is_refused() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::clients(&["198.18.0.7"], "").unwrap()).unwrap();
    // The rig writes its configuration 0600, as an operator keeps it: no
    // warning that others can read it (every test's log had one).
    let log = rig.log();
    assert!(!log.contains("is not private"), "{log}");
    rig.cli.ok(&["deny", "add", "198.18.0.7"]).unwrap();
    assert!(!rig.reach("198.18.0.7"), "denied");
    let pid = rig.daemon().unwrap().pid();
    let detach = |config: &std::path::Path| {
        std::process::Command::new(rampart_tests::daemon::rampartd_bin().unwrap())
            .arg("--detach")
            .arg("--config")
            .arg(config)
            .output()
            .unwrap()
    };
    let out = detach(&rig.config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "rampartd (pid {pid}) is running on the filter pinned at {}: stop it first",
            rig.pin_dir.display()
        )),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "nothing detached"
    );
    assert!(!rig.reach("198.18.0.7"), "the filter is still attached");
    assert!(
        rig.pin_dir
            .join(format!("link_{}_native", rig.pair.srv_if))
            .exists()
    );

    // Other pins, the same state directory: refused as well.
    let other_pins = rig.path("other-pins");
    let text = rig
        .config_text(&rig.opts.filter, &rig.opts.sections)
        .replace(
            &rig.pin_root().display().to_string(),
            &other_pins.display().to_string(),
        );
    let out = detach(&rig.file("other-pins.toml", &text).unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains(&format!("rampartd (pid {pid}) is running")),
        "{stderr}"
    );
    assert!(!rig.reach("198.18.0.7"), "the filter is still attached");
}

/// A second rampartd with its own pins and state on an interface the first one
/// filters cannot attach (EBUSY): it exits 69 saying another XDP program is
/// attached, and removes the pins it made. Before, the message gave only
/// "Device or resource busy" and the maps stayed pinned (kernel memory) until
/// `rampartd --detach` with that configuration.
#[test]
fn a_start_that_cannot_attach_removes_its_pins() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::clients(&["198.18.0.7"], "").unwrap()).unwrap();
    let second_root = rampart_tests::PinDir::new();
    let second_pins = second_root
        .path()
        .join(format!("v{}", rampart_common::LAYOUT_VERSION));
    let text = rig
        .config_text(&rig.opts.filter, &rig.opts.sections)
        .replace(
            &rig.state_dir.display().to_string(),
            &rig.path("second-state").display().to_string(),
        )
        .replace(
            &rig.runtime_dir.display().to_string(),
            &rig.path("second-run").display().to_string(),
        )
        .replace(
            &rig.pin_root().display().to_string(),
            &second_root.path().display().to_string(),
        );
    let config = rig.file("second.toml", &text).unwrap();
    let (status, stderr) = rig.start_refused(&config).unwrap();
    let left = second_pins.exists() || second_root.path().exists();
    let _ = rampart::filter::detach(&second_pins);
    assert_eq!(status, Some(69), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "attaching to {0} in native mode failed: another XDP program is attached to {0}",
            rig.pair.srv_if
        )),
        "{stderr}"
    );
    assert!(!left, "the second start's pins were removed");
    assert!(rig.xdp_attached(&rig.pair.srv_if).unwrap());
}

/// In monitor mode, turned on by a reload, a denied source passes and its drop
/// summary says the packets would have been dropped, not that they were.
#[test]
fn monitor_mode_drop_summaries_say_the_packets_passed() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::clients(&["198.18.0.6"], r#"deny = ["198.18.0.6"]"#).unwrap())
        .unwrap();
    assert!(!rig.reach("198.18.0.6"), "denied");
    rig.write_filter_config("deny = [\"198.18.0.6\"]\nmonitor = true")
        .unwrap();
    rig.cli.ok(&["reload"]).unwrap();
    assert!(rig.reach("198.18.0.6"), "monitor mode lets it through");
    // The summary is written every 10 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    let line = loop {
        let text = rig.cli.ok(&["events"]).unwrap().stdout;
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("  xdp_drop  ") && l.contains("SRC_IP=198.18.0.6 "))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no xdp_drop event within 15 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        line.contains("from 198.18.0.6 would have been dropped (monitor mode: passed; denied;"),
        "{line}"
    );
}
