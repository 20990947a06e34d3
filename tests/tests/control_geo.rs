//! Country databases and country rules through the control plane: `rampart
//! geo load` of each format the daemon reads (built here with
//! `rampart::geo::testdata`), `rampart country block|unblock|allow-only|list`
//! enforced by the kernel, and bad databases refused with the current table
//! kept.
//!
//! Needs root; skipped visibly otherwise.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::IpAddr, path::Path};

use ipnet::IpNet;
use rampart::control::protocol::exit;
use rampart::geo::testdata::{GeoLite2Csv, country_mmdb, dbip_csv, network_country_csv};
use rampart_tests::{
    control::{Cli, PORT, Rig, RigOptions},
    privileged,
};
use serde_json::Value;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn rig() -> Rig {
    Rig::start(RigOptions {
        client_addrs: vec![ip("198.18.0.4"), ip("198.18.0.5")],
        ..RigOptions::default()
    })
    .unwrap()
}

/// The country `check` gives a source, lower-cased (`None`: no country).
fn country_of(cli: &Cli, addr: &str) -> Option<String> {
    let c = cli.json(&["check", addr]).unwrap();
    c["country"].as_str().map(str::to_ascii_lowercase)
}

/// `geo load PATH --json`, checked: the reply's type and source.
fn load(cli: &Cli, path: &Path, format: &str) -> Value {
    let g = cli.json(&["geo", "load", path.to_str().unwrap()]).unwrap();
    assert_eq!(g["type"], "geo_loaded", "{g}");
    let source = g["source"].as_str().unwrap();
    assert!(source.contains(&path.display().to_string()), "{g}");
    assert!(source.contains(format), "names the format {format}: {g}");
    g
}

#[test]
fn geo_load_reads_every_format_and_country_rules_are_enforced() {
    if !privileged() {
        return;
    }
    let mut rig = rig();
    let cli = rig.cli.clone();

    // No database yet: nothing to block with.
    let c = cli.json(&["country", "list"]).unwrap();
    assert_eq!(c["policy"], "off", "{c}");
    assert!(c["database"].is_null(), "{c}");
    assert_eq!(
        (c["prefixes_v4"].clone(), c["prefixes_v6"].clone()),
        (Value::from(0), Value::from(0))
    );
    let run = cli.run(&["country", "block", "nl"]);
    assert_eq!(run.code, i32::from(exit::FAILED), "{run}");
    assert!(run.stderr.contains("no country database"), "{run}");
    assert_eq!(country_of(&cli, "198.18.0.4"), None);

    // MMDB (GeoLite2-Country layout).
    let mmdb = rig.path("country.mmdb");
    std::fs::write(
        &mmdb,
        country_mmdb([
            (net("198.18.0.4/32"), "de"),
            (net("198.18.0.128/25"), "de"),
            (net("2001:db8:4::/48"), "at"),
        ])
        .unwrap(),
    )
    .unwrap();
    let g = load(&cli, &mmdb, "MMDB");
    assert_eq!(g["countries"], 2, "{g}");
    assert!(g["prefixes_v4"].as_u64().unwrap() >= 2, "{g}");
    assert!(g["prefixes_v6"].as_u64().unwrap() >= 1, "{g}");
    assert_eq!(country_of(&cli, "198.18.0.4").as_deref(), Some("de"));
    assert_eq!(country_of(&cli, "198.18.0.200").as_deref(), Some("de"));
    assert_eq!(country_of(&cli, "2001:db8:4::1").as_deref(), Some("at"));
    assert_eq!(country_of(&cli, "198.18.0.5"), None);
    let c = cli.json(&["country", "list"]).unwrap();
    assert_eq!(c["prefixes_v4"], g["prefixes_v4"], "{c} {g}");
    assert_eq!(c["prefixes_v6"], g["prefixes_v6"], "{c} {g}");
    assert!(
        c["database"].as_str().unwrap().contains("country.mmdb"),
        "{c}"
    );

    // GeoLite2 CSV, as its directory of Blocks and Locations files.
    let dir = rig.path("geolite2");
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = GeoLite2Csv::new();
    csv.network(net("198.18.0.4/32"), "fr")
        .network(net("198.18.0.16/28"), "be")
        .network(net("2001:db8:5::/48"), "fr");
    csv.write(&dir).unwrap();
    let g = load(&cli, &dir, "GeoLite2 CSV");
    assert_eq!(g["countries"], 2, "{g}");
    assert_eq!(g["prefixes_v4"], 2, "{g}");
    assert_eq!(g["prefixes_v6"], 1, "{g}");
    assert_eq!(country_of(&cli, "198.18.0.4").as_deref(), Some("fr"));
    assert_eq!(country_of(&cli, "198.18.0.20").as_deref(), Some("be"));
    assert_eq!(
        country_of(&cli, "198.18.0.200"),
        None,
        "the old table is gone"
    );

    // DB-IP CSV ranges.
    let dbip = rig.path("dbip-country-lite.csv");
    std::fs::write(
        &dbip,
        dbip_csv([
            (ip("198.18.0.4"), ip("198.18.0.4"), "IT"),
            (ip("198.18.0.32"), ip("198.18.0.47"), "IT"),
            (ip("198.18.0.48"), ip("198.18.0.63"), "ZZ"),
            (ip("2001:db8:6::"), ip("2001:db8:6::ffff"), "IT"),
        ]),
    )
    .unwrap();
    let g = load(&cli, &dbip, "DB-IP CSV");
    assert_eq!(g["countries"], 1, "ZZ is DB-IP's unknown: {g}");
    assert_eq!(g["prefixes_v4"], 2, "{g}");
    assert_eq!(country_of(&cli, "198.18.0.4").as_deref(), Some("it"));
    assert_eq!(country_of(&cli, "198.18.0.40").as_deref(), Some("it"));
    assert_eq!(country_of(&cli, "198.18.0.50"), None);

    // network,country CSV.
    let plain = rig.path("plain.csv");
    std::fs::write(
        &plain,
        network_country_csv([
            (net("198.18.0.4/32"), "es"),
            (net("198.18.0.64/26"), "pt"),
            (net("2001:db8:7::/48"), "es"),
        ]),
    )
    .unwrap();
    let g = load(&cli, &plain, "network,country CSV");
    assert_eq!(
        (
            g["countries"].clone(),
            g["prefixes_v4"].clone(),
            g["prefixes_v6"].clone()
        ),
        (Value::from(2), Value::from(2), Value::from(1)),
        "{g}"
    );
    assert_eq!(country_of(&cli, "198.18.0.4").as_deref(), Some("es"));
    let text = cli
        .ok(&["geo", "load", plain.to_str().unwrap()])
        .unwrap()
        .stdout;
    assert!(
        text.starts_with("loaded ") && text.contains("2 IPv4 and 1 IPv6 prefixes"),
        "{text}"
    );

    // A directory of zone files, split into ipv4/ and ipv6/.
    let zones = rig.path("zones");
    std::fs::create_dir_all(zones.join("ipv4")).unwrap();
    std::fs::create_dir_all(zones.join("ipv6")).unwrap();
    std::fs::write(
        zones.join("ipv4/nl.cidr"),
        "# test zone\n198.18.0.4/32\n198.18.0.96-198.18.0.127\n",
    )
    .unwrap();
    std::fs::write(zones.join("ipv4/se.cidr"), "198.18.0.128/25\n").unwrap();
    std::fs::write(zones.join("ipv6/nl.zone"), "2001:db8:8::/48\n").unwrap();
    let g = load(&cli, &zones, "zone files");
    assert_eq!(g["countries"], 2, "{g}");
    assert_eq!(g["prefixes_v4"], 3, "{g}");
    assert_eq!(g["prefixes_v6"], 1, "{g}");
    assert_eq!(country_of(&cli, "198.18.0.4").as_deref(), Some("nl"));
    assert_eq!(country_of(&cli, "2001:db8:8::9").as_deref(), Some("nl"));

    // Country rules on this table: 198.18.0.4 is NL, 198.18.0.5 no country.
    assert!(rig.reach("198.18.0.4") && rig.reach("198.18.0.5"));
    let r = cli.json(&["country", "block", "NL"]).unwrap();
    assert_eq!(r["changed"], 1, "{r}");
    assert!(!rig.reach("198.18.0.4"), "NL blocked");
    assert!(rig.reach("198.18.0.5"), "no country: passes");
    let c = cli
        .json(&["check", "198.18.0.4", "--port", &PORT.to_string()])
        .unwrap();
    assert_eq!(c["reason"], "country", "{c}");
    assert_eq!(c["action"], "drop", "{c}");
    let c = cli.json(&["country", "list"]).unwrap();
    assert_eq!(c["policy"], "block", "{c}");
    assert_eq!(c["origin"], "operator", "{c}");
    let codes: Vec<String> = c["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_ascii_lowercase())
        .collect();
    assert_eq!(codes, ["nl"], "{c}");
    let text = cli.ok(&["country", "list"]).unwrap().stdout;
    assert!(text.contains("block (from operator)"), "{text}");
    assert!(text.contains("3 IPv4, 1 IPv6"), "{text}");
    let r = cli.json(&["country", "block", "nl", "se"]).unwrap();
    assert_eq!(
        (r["changed"].clone(), r["unchanged"].clone()),
        (Value::from(1), Value::from(1)),
        "{r}"
    );
    let st = cli.json(&["stats"]).unwrap();
    assert!(
        st["drops_by_country"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |p| p[0].as_str().unwrap().eq_ignore_ascii_case("nl") && p[1].as_u64().unwrap() > 0
            ),
        "drops counted by country: {st}"
    );
    let r = cli.json(&["country", "unblock", "nl", "se"]).unwrap();
    assert_eq!(r["changed"], 2, "{r}");
    assert!(rig.reach("198.18.0.4"), "unblocked");
    assert_eq!(cli.json(&["country", "list"]).unwrap()["policy"], "off");

    // allow-only: only NL passes; sources of no country only with --allow-unknown.
    cli.ok(&["country", "allow-only", "nl"]).unwrap();
    assert!(rig.reach("198.18.0.4"), "NL allowed");
    assert!(!rig.reach("198.18.0.5"), "unknown country dropped");
    let run = cli.run(&["country", "block", "se"]);
    assert_eq!(run.code, i32::from(exit::INVALID_INPUT), "{run}");
    assert!(run.stderr.contains("allow-only"), "{run}");
    cli.ok(&["country", "allow-only", "nl", "--allow-unknown"])
        .unwrap();
    assert!(rig.reach("198.18.0.5"), "unknown country allowed");
    let c = cli.json(&["country", "list"]).unwrap();
    assert_eq!(c["policy"], "allow_only", "{c}");
    assert_eq!(c["allow_unknown"], true, "{c}");
    let run = cli.run(&["country", "allow-only", "se"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(!rig.reach("198.18.0.4"), "only SE now");
    cli.ok(&["country", "allow-only", "--off"]).unwrap();
    assert!(
        rig.reach("198.18.0.4") && rig.reach("198.18.0.5"),
        "policy off"
    );
    assert_eq!(cli.json(&["country", "list"]).unwrap()["policy"], "off");

    // The loaded table and the policy survive a restart.
    cli.ok(&["country", "block", "nl"]).unwrap();
    rig.kill_daemon().unwrap();
    rig.start_daemon().unwrap();
    let c = cli.json(&["country", "list"]).unwrap();
    assert_eq!(c["policy"], "block", "{c}");
    assert!(c["database"].as_str().unwrap().contains("zones"), "{c}");
    assert_eq!(c["prefixes_v4"], 3, "{c}");
    assert_eq!(country_of(&cli, "198.18.0.4").as_deref(), Some("nl"));
    assert!(!rig.reach("198.18.0.4"), "still blocked after a restart");
}

#[test]
fn a_bad_database_is_refused_and_the_table_in_force_stays() {
    if !privileged() {
        return;
    }
    let rig = rig();
    let cli = &rig.cli;
    let good = rig.path("good.csv");
    std::fs::write(
        &good,
        network_country_csv([(net("198.18.0.4/32"), "es"), (net("2001:db8:7::/48"), "es")]),
    )
    .unwrap();
    load(cli, &good, "network,country CSV");
    cli.ok(&["country", "block", "es"]).unwrap();
    assert!(!rig.reach("198.18.0.4"));
    let before = cli.json(&["country", "list"]).unwrap();
    assert_eq!(before["prefixes_v4"], 1, "{before}");

    // A truncated MMDB file.
    let full = country_mmdb([(net("198.18.0.4/32"), "de"), (net("198.18.0.0/24"), "de")]).unwrap();
    let truncated = rig.path("truncated.mmdb");
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    // An MMDB whose data section is garbage but whose metadata is intact.
    let mut corrupt = full.clone();
    for b in corrupt.iter_mut().take(full.len() / 2) {
        *b = 0xff;
    }
    let corrupt_path = rig.path("corrupt.mmdb");
    std::fs::write(&corrupt_path, &corrupt).unwrap();
    // A CSV with a bad line after good ones, a line cut mid-way, a gzip file,
    // an empty file, and a Locations file given instead of the Blocks.
    let bad_line = rig
        .file(
            "bad-line.csv",
            "network,country\n198.18.0.4/32,de\nnot-a-network,de\n",
        )
        .unwrap();
    let cut = rig
        .file("cut.csv", "network,country\n198.18.0.4/32,de\n198.18.0.8/3")
        .unwrap();
    let gz = rig.path("db.csv.gz");
    std::fs::write(&gz, b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03").unwrap();
    let empty = rig.file("empty.csv", "").unwrap();
    let locations_dir = rig.path("geolite2");
    std::fs::create_dir_all(&locations_dir).unwrap();
    let mut csv = GeoLite2Csv::new();
    csv.network(net("198.18.0.4/32"), "de");
    let files = csv.write(&locations_dir).unwrap();

    for (path, needle) in [
        (&truncated, "truncated.mmdb"),
        (&corrupt_path, "corrupt.mmdb"),
        (&bad_line, "bad-line.csv:3"),
        (&cut, "cut.csv"),
        (&gz, "gzip"),
        (&empty, "empty.csv"),
        (&files.locations, "Locations"),
    ] {
        let run = cli.run(&["geo", "load", path.to_str().unwrap()]);
        assert_eq!(run.code, i32::from(exit::INVALID_INPUT), "{run}");
        assert!(run.stderr.contains(needle), "names {needle}: {run}");
        assert!(
            run.stderr.contains("the current country table stays"),
            "{run}"
        );
        assert_eq!(
            cli.json(&["country", "list"]).unwrap(),
            before,
            "table unchanged after {}",
            path.display()
        );
        assert_eq!(country_of(cli, "198.18.0.4").as_deref(), Some("es"));
        assert!(!rig.reach("198.18.0.4"), "still blocked as ES");
    }
}

/// With a table from `geo load` in force, the configuration's `[filter.geo]
/// database` is not used: when it goes missing, a reload and a start warn and go
/// on with the loaded table. Before, the reload was rejected and the start
/// exited 66 (a restart loop under systemd) for a file nothing read.
#[test]
fn a_missing_config_database_is_a_warning_while_a_loaded_table_is_in_force() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::prepare(RigOptions {
        client_addrs: vec![ip("198.18.0.4"), ip("198.18.0.5")],
        ..RigOptions::default()
    })
    .unwrap();
    let configured = rig
        .file(
            "configured.csv",
            &network_country_csv([(net("198.18.0.4/32"), "xx")]),
        )
        .unwrap();
    rig.opts.sections = format!(
        "[filter.geo]\ndatabase = \"{}\"\nblock = [\"xx\"]\n",
        configured.display()
    );
    rig.write_config().unwrap();
    rig.start_daemon().unwrap();
    assert!(!rig.reach("198.18.0.4") && rig.reach("198.18.0.5"));

    let loaded = rig
        .file(
            "loaded.csv",
            &network_country_csv([(net("198.18.0.5/32"), "xx")]),
        )
        .unwrap();
    load(&rig.cli, &loaded, "network,country");
    assert!(rig.reach("198.18.0.4") && !rig.reach("198.18.0.5"));

    std::fs::remove_file(&configured).unwrap();
    let run = rig.cli.run(&["reload"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout
            .contains("[filter.geo] database is not used while the table from `rampart geo load` is in force, and it cannot be loaded (cannot read"),
        "{run}"
    );
    assert!(rig.reach("198.18.0.4") && !rig.reach("198.18.0.5"));

    rig.kill_daemon().unwrap();
    rig.start_daemon().unwrap();
    assert!(
        rig.log()
            .contains("[filter.geo] database is not used while the table"),
        "{}",
        rig.log()
    );
    assert!(rig.reach("198.18.0.4") && !rig.reach("198.18.0.5"));
}

/// A change the daemon made is answered before it stops: SIGTERM while a
/// large `geo load` is being carried out leaves the client with the load's
/// success (exit 0), and the table is in force after a restart. Before, the
/// control socket's connections were dropped at once: the CLI said "the
/// connection closed before an answer" (exit 1) for a change in the journal.
#[test]
fn a_change_in_progress_at_sigterm_is_answered() {
    if !privileged() {
        return;
    }
    let mut rig = rig();
    // 250,000 IPv6 /64s of alternating countries (nothing merges): about two
    // seconds of work for a debug rampartd.
    let mut text = String::from("network,country\n");
    for i in 0u32..250_000 {
        let code = if i % 2 == 0 { "de" } else { "fr" };
        text.push_str(&format!(
            "2001:db8:{:x}:{:x}::/64,{code}\n",
            i >> 16,
            i & 0xffff
        ));
    }
    let big = rig.file("big.csv", &text).unwrap();
    let mut load = rig
        .cli
        .command(&["geo", "load", big.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert!(
        load.try_wait().unwrap().is_none(),
        "the load ended before SIGTERM: make the table bigger"
    );
    let (code, log) = rig.stop_daemon().unwrap();
    assert_eq!(code, Some(0), "{log}");
    let out = load.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}\n{log}");
    assert!(stdout.contains("big.csv"), "{stdout}");

    rig.start_daemon().unwrap();
    let c = rig.cli.json(&["country", "list"]).unwrap();
    // The source as `country list` shows it: one level of parentheses, the
    // file named once.
    assert_eq!(
        c["database"],
        format!("{} (network,country CSV), from geo load", big.display()),
        "{c}"
    );
    assert_eq!(c["prefixes_v6"], 250_000, "{c}");
}
