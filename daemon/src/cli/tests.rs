use std::net::IpAddr;

use clap::Parser as _;

use super::{
    Cli, command,
    input::{self, InputError},
    output,
    run::{CliError, request, text},
};
use crate::control::protocol::{
    ChangeReply, CheckReply, CountriesReply, EntryView, EventView, KeySlotName, ListName, Reply,
    Request, ScopeSpec, StatsReply, SubscriptionView, exit,
};

fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("rampart").chain(args.iter().copied())).unwrap()
}

fn json_value(reply: &Reply) -> serde_json::Value {
    serde_json::to_value(output::json(reply)).unwrap()
}

fn request_of(args: &[&str]) -> Result<Request, InputError> {
    request(&parse(args).verb).map(|r| r.unwrap())
}

#[test]
fn the_command_is_well_formed() {
    command().debug_assert();
}

#[test]
fn durations_are_compact_and_parse_back() {
    assert_eq!(output::duration(0), "0s");
    assert_eq!(output::duration(59), "59s");
    assert_eq!(output::duration(598), "9m58s");
    assert_eq!(output::duration(3600), "1h");
    assert_eq!(output::duration(90_061), "1d1h1m1s");
    assert_eq!(output::duration(7 * 86_400), "7d");
    for secs in [1, 598, 3600, 90_061, 31_536_000] {
        let text = output::duration(secs);
        assert_eq!(input::ttl(&text).unwrap(), secs, "{text}");
    }
}

#[test]
fn times_are_utc_rfc3339() {
    assert_eq!(output::time(0), "1970-01-01T00:00:00Z");
    assert_eq!(output::time(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(
        output::time_ms(1_700_000_000_123),
        "2023-11-14T22:13:20.123Z"
    );
}

#[test]
fn tables_align_columns_without_trailing_blanks() {
    let mut table = output::Table::new(&["NAME", "N", "NOTE"], &[false, true]);
    table.row(vec!["a".into(), "1".into(), "-".into()]);
    table.row(vec!["longer".into(), "100".into(), "x".into()]);
    assert_eq!(
        table.render(0),
        "NAME      N  NOTE\n\
         a         1  -\n\
         longer  100  x\n"
    );
    assert_eq!(output::count(1, "entry", "entries"), "1 entry");
    assert_eq!(output::count(2, "entry", "entries"), "2 entries");
}

#[test]
fn ttls_must_be_positive_whole_and_sane() {
    assert_eq!(input::ttl("10m").unwrap(), 600);
    assert_eq!(input::ttl("1h 30m").unwrap(), 5400);
    assert_eq!(input::ttl("365d").unwrap(), 365 * 86_400);
    for bad in ["0s", "0", "10", "ten minutes", "1500ms", "366d", "-5m", ""] {
        let err = input::ttl(bad).unwrap_err();
        assert!(matches!(err, InputError::Ttl { .. }), "{bad}: {err:?}");
        assert!(err.to_string().starts_with("invalid --ttl"), "{err}");
    }
}

#[test]
fn ttls_take_the_documented_units_only() {
    for (text, secs) in [
        ("90s", 90),
        ("10m", 600),
        ("2h", 7_200),
        ("7d", 604_800),
        ("1h30m", 5_400),
        (" 1h 30m ", 5_400),
        ("10 m", 600),
        ("1d1h1m1s", 90_061),
        ("8760h", 365 * 86_400),
    ] {
        assert_eq!(input::ttl(text).unwrap(), secs, "{text}");
    }
    // Before, humantime read `M` as months: `10M` was a ban of 304 days.
    for (bad, unit) in [
        ("10M", "M"),
        ("1H", "H"),
        ("10min", "min"),
        ("2 months", "months"),
        ("2w", "w"),
        ("1y", "y"),
        ("1500ms", "ms"),
        ("10us", "us"),
        ("5ns", "ns"),
        ("1h30x", "x"),
    ] {
        let err = input::ttl(bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid --ttl `{bad}`: unknown unit `{unit}`; use whole numbers with the \
                 units s, m, h and d, like 90s, 10m, 1h30m or 7d"
            )
        );
    }
    assert_eq!(
        input::ttl("10").unwrap_err().to_string(),
        "invalid --ttl `10`: `10` has no unit; use whole numbers with the units s, m, h \
         and d, like 90s, 10m, 1h30m or 7d"
    );
    for bad in ["1.5h", "-5m", "h", "1h,30m", "1h30"] {
        let err = input::ttl(bad).unwrap_err();
        assert!(
            err.to_string()
                .contains("use whole numbers with the units s, m, h and d"),
            "{bad}: {err}"
        );
    }
    // Still more than zero and at most 365 days, however large the number.
    assert!(
        input::ttl("0m0s")
            .unwrap_err()
            .to_string()
            .ends_with("must be longer than zero")
    );
    for bad in [
        "365d1s",
        "8761h",
        "99999999999999999999s",
        "213503982334601d",
    ] {
        assert!(
            input::ttl(bad)
                .unwrap_err()
                .to_string()
                .contains("longer than 365d"),
            "{bad}"
        );
    }
}

#[test]
fn a_missing_entry_file_is_not_found() {
    let missing = std::env::temp_dir().join("rampart-no-such-dir-9f3c/list.txt");
    let err = CliError::from(input::entries(&[], Some(&missing), false).unwrap_err());
    assert_eq!(err.exit_code(), exit::NOT_FOUND);
    let report = err.report();
    assert!(
        report.starts_with(&format!("rampart: cannot read {}: ", missing.display())),
        "{report}"
    );
    // Another read error stays invalid input: a directory is not a list.
    let dir = std::env::temp_dir();
    let err = CliError::from(input::entries(&[], Some(&dir), false).unwrap_err());
    assert!(
        matches!(err, CliError::Input(InputError::ReadFile { .. })),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), exit::INVALID_INPUT);
}

#[test]
fn countries_are_two_letters_in_lower_case() {
    assert_eq!(
        input::countries(&["DE".into(), "fr".into(), "Eu".into()]).unwrap(),
        ["de", "fr", "eu"]
    );
    for bad in ["DEU", "d", "", "d1", "ü", "--"] {
        let err = input::countries(&[bad.to_string()]).unwrap_err();
        assert!(matches!(err, InputError::Country { .. }), "{bad}: {err:?}");
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn names_refuse_empty_and_control_characters() {
    assert_eq!(
        input::name("subscription name", "acme-prod").unwrap(),
        "acme-prod"
    );
    assert!(input::name("subscription name", "").is_err());
    assert!(input::name("subscription name", "a\nb").is_err());
    assert!(input::name("subscription name", "a\u{7}").is_err());
    assert!(input::name("subscription name", &"x".repeat(257)).is_err());
    assert!(input::comment("ticket 42").is_ok());
}

#[test]
fn comments_refuse_line_breaks_format_characters_and_length() {
    assert_eq!(
        input::comment("ticket 42 — café").unwrap(),
        "ticket 42 — café"
    );
    assert_eq!(
        input::comment(&"é".repeat(512)).unwrap().len(),
        1024,
        "1024 bytes fit"
    );
    let refused = |text: &str| input::comment(text).unwrap_err().to_string();
    assert_eq!(
        refused(&"x".repeat(1025)),
        "invalid --comment: longer than 1024 bytes"
    );
    for text in [
        "line one\nFAKE",
        "a\rb",
        "a\tb",
        "a\u{1b}[2Jb",
        "a\u{85}b",
        "a\u{2028}b",
    ] {
        assert_eq!(
            refused(text),
            "invalid --comment: it contains control characters (one line only)",
            "{text:?}"
        );
    }
    assert_eq!(
        refused("evil\u{202e}txt.exe"),
        "invalid --comment: it contains U+202E, an invisible format character \
         (such as a bidirectional override or a zero-width space)"
    );
    for c in [
        '\u{200b}',
        '\u{200e}',
        '\u{200f}',
        '\u{202a}',
        '\u{2066}',
        '\u{2069}',
        '\u{feff}',
        '\u{ad}',
        '\u{e0001}',
    ] {
        let err = input::comment(&format!("a{c}b")).unwrap_err().to_string();
        assert!(err.contains(&format!("U+{:04X}", u32::from(c))), "{err}");
    }
}

#[test]
fn listings_escape_control_and_format_characters() {
    // As a state written before comments were checked may hold them.
    let reply = Reply::Entries {
        entries: vec![
            entry("192.0.2.1/32", "operator", None, Some("line1\nFAKE")),
            entry(
                "192.0.2.2/32",
                "operator",
                None,
                Some("a\u{202e}cba\u{200b}\u{1b}[31m"),
            ),
        ],
    };
    let shown = text(
        &Request::ListShow {
            list: ListName::Deny,
        },
        &reply,
        1_700_000_000,
    );
    assert_eq!(
        shown,
        "ENTRY         ORIGIN    EXPIRES IN  ADDED                 BY  COMMENT\n\
         192.0.2.1/32  operator  never       2023-11-14T22:13:20Z  0   line1\\nFAKE\n\
         192.0.2.2/32  operator  never       2023-11-14T22:13:20Z  0   a\\u{202e}cba\\u{200b}\\u{1b}[31m\n"
    );
    assert_eq!(shown.lines().count(), 3, "one line per entry");
    let subs = output::subscriptions(&[SubscriptionView {
        name: "x\u{2066}y".into(),
        scope: "all".into(),
        scope_missing: false,
        state: "active".into(),
        origin: "store".into(),
        created_at: 0,
    }]);
    assert!(subs.contains("x\\u{2066}y"), "{subs}");
    let event = output::event(&EventView {
        time_ms: 0,
        event: "list_changed".into(),
        message: "a\nb".into(),
        fields: vec![("K".into(), "v\u{202e}".into())],
    });
    assert_eq!(event.lines().count(), 1, "{event}");
    assert!(event.contains("a\\nb K=v\\u{202e}"), "{event}");
    assert_eq!(output::shown("plain — text"), "plain — text");
}

#[test]
fn bad_entries_are_named_once() {
    let err = input::entries(&["10.0.0.1".into(), "10.0.0.300".into()], None, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid entry: `10.0.0.300` is not an IPv4 or IPv6 address"
    );
    let err = input::entries(&["10.0.0.1-10.0.0.300".into()], None, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid entry `10.0.0.1-10.0.0.300`: `10.0.0.300` is not an IPv4 or IPv6 address"
    );
    let err = input::entries(&["10.0.0.1/8".into()], None, false).unwrap_err();
    assert!(err.to_string().contains("did you mean 10.0.0.0/8"), "{err}");
    assert!(matches!(
        input::entries(&[], None, false),
        Err(InputError::NoEntries { from_file: false })
    ));
    assert_eq!(
        input::entries(&[], None, true).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn entry_files_allow_comments_and_blank_lines_and_name_the_line() {
    let text = "# office\n192.0.2.0/24\n\n  198.51.100.1 - 198.51.100.9  # lab\n2001:db8::/32\n";
    assert_eq!(
        input::entries_in_text("list.txt", text).unwrap(),
        [
            "192.0.2.0/24",
            "198.51.100.1 - 198.51.100.9",
            "2001:db8::/32"
        ]
    );
    let err = input::entries_in_text("list.txt", "192.0.2.1\n# x\nnope\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "list.txt:3: invalid entry: `nope` is not an IPv4 or IPv6 address"
    );
}

#[test]
fn verbs_make_the_protocol_requests() {
    assert_eq!(
        request_of(&[
            "deny",
            "add",
            "192.0.2.1",
            "10.0.0.0/8",
            "--ttl",
            "10m",
            "--comment",
            "scan"
        ])
        .unwrap(),
        Request::ListAdd {
            list: ListName::Deny,
            entries: vec!["192.0.2.1".into(), "10.0.0.0/8".into()],
            ttl_secs: Some(600),
            comment: Some("scan".into()),
            replace: false,
        }
    );
    assert_eq!(
        request_of(&["bypass", "del", "192.0.2.0/24"]).unwrap(),
        Request::ListDel {
            list: ListName::Bypass,
            entries: vec!["192.0.2.0/24".into()],
        }
    );
    assert_eq!(
        request_of(&["allow", "list", "--json"]).unwrap(),
        Request::ListShow {
            list: ListName::Allow
        }
    );
    assert_eq!(
        request_of(&["check", "2001:db8::1", "--port", "53", "--udp"]).unwrap(),
        Request::Check {
            addr: "2001:db8::1".parse::<IpAddr>().unwrap(),
            port: Some(53),
            udp: true,
        }
    );
    // An IPv4-mapped source is checked as the IPv4 source it maps.
    assert_eq!(
        request_of(&["check", "::ffff:198.18.0.2"]).unwrap(),
        Request::Check {
            addr: "198.18.0.2".parse::<IpAddr>().unwrap(),
            port: None,
            udp: false,
        }
    );
    assert_eq!(
        request_of(&["country", "allow-only", "DE", "at", "--allow-unknown"]).unwrap(),
        Request::CountryAllowOnly {
            countries: vec!["de".into(), "at".into()],
            allow_unknown: true,
        }
    );
    assert_eq!(
        request_of(&["country", "allow-only", "--off"]).unwrap(),
        Request::CountryAllowOnly {
            countries: vec![],
            allow_unknown: false,
        }
    );
    assert_eq!(
        request_of(&["keys", "create", "acme", "--product", "starter"]).unwrap(),
        Request::KeysCreate {
            name: "acme".into(),
            scope: ScopeSpec::Product("starter".into()),
        }
    );
    assert_eq!(
        request_of(&["keys", "create", "acme"]).unwrap(),
        Request::KeysCreate {
            name: "acme".into(),
            scope: ScopeSpec::All,
        }
    );
    assert_eq!(
        request_of(&["keys", "rotate", "acme", "--secondary"]).unwrap(),
        Request::KeysRotate {
            name: "acme".into(),
            slot: KeySlotName::Secondary,
        }
    );
    assert_eq!(
        request_of(&["events", "--last", "5"]).unwrap(),
        Request::Events {
            follow: false,
            last: 5
        }
    );
    let Request::GeoLoad { path } = request_of(&["geo", "load", "db.mmdb"]).unwrap() else {
        panic!("not a geo load");
    };
    assert!(
        path.starts_with('/') && path.ends_with("/db.mmdb"),
        "{path}"
    );
    assert!(
        request(&parse(&["completions", "bash"]).verb)
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_command_line_refuses_what_it_can_tell() {
    for args in [
        &["country", "allow-only"][..],
        &["country", "allow-only", "DE", "--off"],
        &["country", "block"],
        &["keys", "create", "a", "--product", "p", "--api", "x"],
        &["check", "192.0.2.1", "--udp"],
        &["deny", "add"],
        &["deny", "remove", "192.0.2.1"],
    ] {
        assert!(
            Cli::try_parse_from(std::iter::once("rampart").chain(args.iter().copied())).is_err(),
            "{args:?}"
        );
    }
    assert!(matches!(
        request_of(&["check", "192.0.2.300"]),
        Err(InputError::Address { .. })
    ));
}

fn entry(entry: &str, origin: &str, expires_at: Option<u64>, comment: Option<&str>) -> EntryView {
    EntryView {
        list: ListName::Deny,
        entry: entry.into(),
        origin: origin.into(),
        expires_at,
        comment: comment.map(Into::into),
        added_by: Some(0),
        added_at: Some(1_700_000_000),
        reason: None,
    }
}

#[test]
fn deny_list_is_a_table_with_remaining_ttls() {
    let reply = Reply::Entries {
        entries: vec![
            entry("192.0.2.0/24", "operator", None, Some("scanners")),
            entry("198.51.100.7/32", "auto", Some(1_700_000_598), None),
            entry("203.0.113.9/32", "operator", Some(1_699_999_999), None),
        ],
    };
    let shown = text(
        &Request::ListShow {
            list: ListName::Deny,
        },
        &reply,
        1_700_000_000,
    );
    assert_eq!(
        shown,
        "ENTRY            ORIGIN    EXPIRES IN  ADDED                 BY  COMMENT\n\
         192.0.2.0/24     operator  never       2023-11-14T22:13:20Z  0   scanners\n\
         198.51.100.7/32  auto      9m58s       2023-11-14T22:13:20Z  0   -\n\
         203.0.113.9/32   operator  expired     2023-11-14T22:13:20Z  0   -\n"
    );
    let empty = text(
        &Request::ListShow {
            list: ListName::Bypass,
        },
        &Reply::Entries { entries: vec![] },
        0,
    );
    assert_eq!(empty, "the bypass list is empty\n");
}

#[test]
fn listings_in_json_are_bare_arrays_and_objects() {
    let reply = Reply::Entries {
        entries: vec![entry("192.0.2.0/24", "operator", None, None)],
    };
    // The protocol's field order, not alphabetical.
    let text = serde_json::to_string(&output::json(&reply)).unwrap();
    assert!(
        text.starts_with(r#"[{"list":"deny","entry":"192.0.2.0/24","origin":"operator""#),
        "{text}"
    );
    let value = json_value(&reply);
    assert!(value.is_array());
    assert_eq!(value[0]["entry"], "192.0.2.0/24");
    assert_eq!(value[0]["list"], "deny");

    let subs = Reply::Subscriptions {
        subscriptions: vec![SubscriptionView {
            name: "acme".into(),
            scope: "all".into(),
            scope_missing: false,
            state: "active".into(),
            origin: "store".into(),
            created_at: 0,
        }],
    };
    assert_eq!(json_value(&subs)[0]["state"], "active");

    let countries = Reply::Countries(CountriesReply {
        policy: "block".into(),
        countries: vec!["cn".into()],
        allow_unknown: false,
        origin: "operator".into(),
        database: None,
        prefixes_v4: 1,
        prefixes_v6: 2,
    });
    let value = json_value(&countries);
    assert_eq!(value["policy"], "block");
    assert!(value.get("type").is_none());

    let changed = json_value(&Reply::Changed(ChangeReply {
        changed: 1,
        updated: 0,
        unchanged: 0,
    }));
    assert_eq!(changed["type"], "changed");
    assert_eq!(changed["updated"], 0);
}

#[test]
fn created_keys_are_printed_with_the_shown_once_line() {
    let shown = text(
        &Request::KeysCreate {
            name: "acme".into(),
            scope: ScopeSpec::Api("orders".into()),
        },
        &Reply::KeysCreated {
            name: "acme".into(),
            primary: "p1".into(),
            secondary: "s2".into(),
        },
        0,
    );
    assert_eq!(
        shown,
        "subscription \"acme\" created, scope: API \"orders\"\n\
         primary key:    p1\n\
         secondary key:  s2\n\
         These keys are shown once: rampartd keeps only their hashes. Store them now.\n"
    );
}

#[test]
fn check_prints_the_explanation_then_the_rule() {
    let reply = Reply::Check(CheckReply {
        addr: "198.51.100.7".parse().unwrap(),
        port: Some(443),
        action: "drop".into(),
        reason: "denied".into(),
        list: Some(ListName::Deny),
        entry: Some("198.51.100.0/24".into()),
        origin: Some("operator".into()),
        expires_in_secs: Some(598),
        country: Some("de".into()),
        in_scope: Some(true),
        explanation: "198.51.100.7 is denied by 198.51.100.0/24.".into(),
    });
    let request = Request::Check {
        addr: "198.51.100.7".parse().unwrap(),
        port: Some(443),
        udp: false,
    };
    assert_eq!(
        text(&request, &reply, 0),
        "198.51.100.7 is denied by 198.51.100.0/24.\n  \
         verdict:  drop (denied)\n  \
         source:   198.51.100.7 (country de)\n  \
         port:     tcp/443, in the protected scope\n  \
         rule:     deny 198.51.100.0/24 (operator, expires in 9m58s)\n"
    );
}

#[test]
fn changes_and_stats_read_as_sentences() {
    let add = Request::ListAdd {
        list: ListName::Allow,
        entries: vec![],
        ttl_secs: Some(600),
        comment: None,
        replace: false,
    };
    let reply = |changed, updated, unchanged| {
        Reply::Changed(ChangeReply {
            changed,
            updated,
            unchanged,
        })
    };
    assert_eq!(
        text(&add, &reply(2, 0, 1), 0),
        "allow: 2 entries added, expiring in 10m; 1 already there\n"
    );
    assert_eq!(
        text(&add, &reply(3, 2, 0), 0),
        "allow: 1 entry added, 2 extended, expiring in 10m; 0 already there\n"
    );
    // Nothing stored, nothing expires: the entries there keep their own expiry.
    assert_eq!(
        text(&add, &reply(0, 0, 1), 0),
        "allow: 0 entries added, 1 already there\n"
    );
    let permanent = Request::ListAdd {
        list: ListName::Deny,
        entries: vec![],
        ttl_secs: None,
        comment: None,
        replace: false,
    };
    assert_eq!(
        text(&permanent, &reply(1, 1, 0), 0),
        "deny: 0 entries added, 1 made permanent, 0 already there\n"
    );
    assert_eq!(
        text(&permanent, &reply(1, 0, 2), 0),
        "deny: 1 entry added, 2 already there\n"
    );
    assert_eq!(
        text(
            &Request::KeysSuspend {
                name: "acme".into()
            },
            &Reply::Done,
            0
        ),
        "subscription \"acme\" suspended\n"
    );
    let stats = Reply::Stats(StatsReply {
        kernel: vec![("passed".into(), 1234), ("denied".into(), 5)],
        drops_by_country: vec![],
        requests: 10,
        rejections: vec![],
        bans_issued: 0,
    });
    assert_eq!(
        text(&Request::Stats, &stats, 0),
        "kernel packets:\n  \
         passed  1234\n  \
         denied     5\n\
         kernel drops by country: none\n\
         gateway requests: 10\n\
         gateway rejections: none\n\
         automatic bans issued: 0\n"
    );
}

#[test]
fn events_are_one_line_each() {
    let line = output::event(&EventView {
        time_ms: 1_700_000_000_123,
        event: "ban_added".into(),
        message: "198.51.100.7 banned for 10m".into(),
        fields: vec![
            ("source".into(), "198.51.100.7".into()),
            ("why".into(), "bad keys".into()),
        ],
    });
    assert_eq!(
        line,
        "2023-11-14T22:13:20.123Z  ban_added  198.51.100.7 banned for 10m source=198.51.100.7 why=\"bad keys\"\n"
    );
}

#[test]
fn subscriptions_from_the_configuration_have_no_creation_date() {
    let view = |name: &str, origin: &str, created_at: u64| SubscriptionView {
        name: name.into(),
        scope: "all".into(),
        scope_missing: false,
        state: "active".into(),
        origin: origin.into(),
        created_at,
    };
    let table = output::subscriptions(&[
        view("declared", "config", 0),
        view("made", "store", 1_796_000_000),
    ]);
    let declared = table.lines().find(|l| l.starts_with("declared")).unwrap();
    assert!(declared.trim_end().ends_with(" -"), "{table}");
    assert!(!table.contains("1970"), "{table}");
    let made = table.lines().find(|l| l.starts_with("made")).unwrap();
    assert!(made.contains("2026-11-30T"), "{table}");
}

/// `--from-file` odd inputs: a UTF-8 byte order mark at the start (Windows
/// Notepad) is skipped; an IPv6 zone index is named as such; a file without end
/// (`/dev/zero`) is refused at 256 MiB. Before, the BOM failed line 1 (printed
/// invisibly in the error), the zone error quoted half the entry (`fe80::1%hunt7`,
/// split at the interface name's '-'), and /dev/zero was read until memory ran out.
#[test]
fn entry_files_skip_a_bom_name_zones_and_are_capped() {
    let path = std::env::temp_dir().join(format!("rampart-cli-bom-{}", std::process::id()));
    std::fs::write(&path, "\u{feff}198.18.80.5\r\n198.18.80.6\r\n").unwrap();
    let got = input::entries(&[], Some(&path), false);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(got.unwrap(), ["198.18.80.5", "198.18.80.6"]);

    let err = CliError::from(input::entries(&["fe80::1%hunt7-a".into()], None, false).unwrap_err());
    assert_eq!(
        err.report(),
        "rampart: invalid entry: `fe80::1%hunt7-a`: zone indexes (%...) are not supported\n"
    );
    assert_eq!(err.exit_code(), exit::INVALID_INPUT);
    let err = input::entries_in_text("list.txt", "fe80::1%eth0/64\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "list.txt:1: invalid entry: `fe80::1%eth0/64`: zone indexes (%...) are not supported"
    );

    let err = CliError::from(
        input::entries(&[], Some(std::path::Path::new("/dev/zero")), false).unwrap_err(),
    );
    assert_eq!(
        err.report(),
        "rampart: /dev/zero is larger than 256 MiB: split it, or check that it is the list meant\n"
    );
    assert_eq!(err.exit_code(), exit::INVALID_INPUT);
}
