use std::path::Path;

use super::*;

#[test]
fn each_validation_error_is_located() {
    // (text, the one diagnostic it must produce)
    let cases: Vec<(String, &str)> = vec![
        // [filter] and interfaces
        (
            "[daemon]\n".into(),
            "t.toml:1:1: missing section [filter] (it must at least list `interfaces`) or [[listener]]",
        ),
        (
            "\n[filter]\nmonitor = true\n".into(),
            "t.toml:2:1: [filter] needs `interfaces`, e.g. interfaces = [\"eth0\"]",
        ),
        (
            "[filter]\ninterfaces = []\n".into(),
            "t.toml:2:14: `filter.interfaces` must list at least one interface",
        ),
        (
            "[filter]\ninterfaces = [\"eth0\", \"a23456789012345x\"]\n".into(),
            "t.toml:2:23: invalid interface name \"a23456789012345x\": it is longer than 15 bytes",
        ),
        (
            "[filter]\ninterfaces = [\"eth/0\"]\n".into(),
            "t.toml:2:15: invalid interface name \"eth/0\": it contains '/'",
        ),
        (
            "[filter]\ninterfaces = [\"eth0:1\"]\n".into(),
            "t.toml:2:15: invalid interface name \"eth0:1\": it contains ':'",
        ),
        (
            "[filter]\ninterfaces = [\"eth 0\"]\n".into(),
            "t.toml:2:15: invalid interface name \"eth 0\": it contains whitespace or a NUL",
        ),
        (
            "[filter]\ninterfaces = [\"\"]\n".into(),
            "t.toml:2:15: invalid interface name \"\": it is empty",
        ),
        (
            "[filter]\ninterfaces = [\"..\"]\n".into(),
            "t.toml:2:15: invalid interface name \"..\": \".\" and \"..\" are not interface names",
        ),
        (
            "[filter]\ninterfaces = [\"eth0\", \"eth0\"]\n".into(),
            "t.toml:2:23: interface \"eth0\" is listed twice",
        ),
        // enumerations
        (
            with_filter("attach_mode = \"auto\"\n"),
            "t.toml:3:15: invalid `filter.attach_mode` \"auto\": expected one of \"native\", \"skb\"",
        ),
        (
            format!("[daemon]\nlog_level = \"verbose\"\n{}", with_filter("")),
            "t.toml:2:13: invalid `daemon.log_level` \"verbose\": expected one of \"trace\", \"debug\", \"info\", \"warn\", \"error\"",
        ),
        // paths
        (
            format!("[daemon]\nstate_dir = \"var/lib\"\n{}", with_filter("")),
            "t.toml:2:13: `daemon.state_dir` must be an absolute path, not \"var/lib\"",
        ),
        (
            format!("[daemon]\npin_root = \"\"\n{}", with_filter("")),
            "t.toml:2:12: `daemon.pin_root` must be an absolute path, not \"\"",
        ),
        // protect
        (
            with_filter("protect = [\"tcp/443\", \"tcp/70000\"]\n"),
            "t.toml:3:23: invalid `filter.protect` entry \"tcp/70000\": port 70000 is out of range 1..=65535",
        ),
        (
            with_filter("protect = [\"udp/0\"]\n"),
            "t.toml:3:12: invalid `filter.protect` entry \"udp/0\": port 0 is out of range 1..=65535",
        ),
        (
            with_filter("protect = [\"tcp/99999999999999999999\"]\n"),
            "t.toml:3:12: invalid `filter.protect` entry \"tcp/99999999999999999999\": port 99999999999999999999 is out of range 1..=65535",
        ),
        (
            with_filter("protect = [\"tcp/500-400\"]\n"),
            "t.toml:3:12: invalid `filter.protect` entry \"tcp/500-400\": port range 500-400 is reversed",
        ),
        (
            with_filter("protect = [\"tcp/+443\"]\n"),
            "t.toml:3:12: invalid `filter.protect` entry \"tcp/+443\": \"+443\" is not a port number",
        ),
        (
            with_filter("protect = [\"sctp/443\"]\n"),
            "t.toml:3:12: invalid `filter.protect` entry \"sctp/443\": unknown protocol \"sctp\" (expected tcp or udp)",
        ),
        (
            with_filter("protect = [\"443\"]\n"),
            "t.toml:3:12: invalid `filter.protect` entry \"443\": expected \"tcp/PORT\", \"udp/PORT\", \"tcp/FIRST-LAST\" or \"all\"",
        ),
        (
            with_filter("protect = [\"tcp/443\", \"all\"]\n"),
            "t.toml:3:23: \"all\" must be the only entry of `filter.protect` (it covers every port)",
        ),
        // numbers
        (
            with_filter("events_per_second = 100001\n"),
            "t.toml:3:21: `filter.events_per_second` must be between 0 and 100000, not 100001",
        ),
        (
            with_filter("events_per_second = -1\n"),
            "t.toml:3:21: `filter.events_per_second` must be between 0 and 100000, not -1",
        ),
        (
            with_filter("events_burst = 0\n"),
            "t.toml:3:16: `filter.events_burst` must be between 1 and 100000, not 0",
        ),
        // geo
        (
            with_filter(
                "[filter.geo]\ndatabase = \"/g\"\nblock = [\"xx\"]\nallow_only = [\"de\"]\n",
            ),
            "t.toml:6:14: `filter.geo.block` and `filter.geo.allow_only` cannot both be set: choose one",
        ),
        (
            with_filter("[filter.geo]\ndatabase = \"/g\"\nblock = [\"de\", \"x1\"]\n"),
            "t.toml:5:16: invalid country code \"x1\" in `filter.geo.block`: expected two ASCII letters, e.g. \"de\"",
        ),
        (
            with_filter("[filter.geo]\ndatabase = \"/g\"\nallow_only = [\"deu\"]\n"),
            "t.toml:5:15: invalid country code \"deu\" in `filter.geo.allow_only`: expected two ASCII letters, e.g. \"de\"",
        ),
        (
            with_filter("[filter.geo]\ndatabase = \"/g\"\nallow_only = []\n"),
            "t.toml:5:14: `filter.geo.allow_only` must list at least one country (remove it to allow every country)",
        ),
        (
            with_filter("[filter.geo]\ndatabase = \"/g\"\nallow_unknown = true\n"),
            "t.toml:5:17: `filter.geo.allow_unknown` only applies together with `filter.geo.allow_only`",
        ),
        (
            with_filter("[filter.geo]\ndatabase = \"geo\"\n"),
            "t.toml:4:12: `filter.geo.database` must be an absolute path, not \"geo\"",
        ),
        // flood
        (
            with_filter("[filter.flood]\nburst = 10\n"),
            "t.toml:3:1: [filter.flood] needs `packets_per_second` (remove the section to disable the flood limit)",
        ),
        (
            with_filter("[filter.flood]\npackets_per_second = 0\n"),
            "t.toml:4:22: `filter.flood.packets_per_second` must be between 1 and 10000000, not 0",
        ),
        (
            with_filter("[filter.flood]\npackets_per_second = 10000001\n"),
            "t.toml:4:22: `filter.flood.packets_per_second` must be between 1 and 10000000, not 10000001",
        ),
        (
            with_filter("[filter.flood]\npackets_per_second = 10\nburst = 0\n"),
            "t.toml:5:9: `filter.flood.burst` must be between 1 and 100000000, not 0",
        ),
        (
            with_filter("[filter.flood]\npackets_per_second = 10\nipv6_prefix = 31\n"),
            "t.toml:5:15: `filter.flood.ipv6_prefix` must be between 32 and 128, not 31",
        ),
        (
            with_filter("[filter.flood]\npackets_per_second = 10\nipv6_prefix = 129\n"),
            "t.toml:5:15: `filter.flood.ipv6_prefix` must be between 32 and 128, not 129",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(single_error(&text), expected, "for:\n{text}");
    }
}

#[test]
fn address_entries_are_checked_by_the_rules_parser() {
    // The reason comes from `rules::parse_entry`; the position and the entry
    // from here.
    let cases = [
        (
            "bypass = [\"10.0.0.0/33\"]",
            "t.toml:3:11: invalid `filter.bypass` entry \"10.0.0.0/33\": ",
        ),
        (
            "deny = [\"10.0.0.1/8\"]",
            "t.toml:3:9: invalid `filter.deny` entry \"10.0.0.1/8\": ",
        ),
        (
            "allow = [\"192.0.2.1\", \"192.0.2.9-192.0.2.1\"]",
            "t.toml:3:23: invalid `filter.allow` entry \"192.0.2.9-192.0.2.1\": ",
        ),
        (
            "deny = [\"example.com\"]",
            "t.toml:3:9: invalid `filter.deny` entry \"example.com\": ",
        ),
        (
            "deny = [\"10.0.0.1-::1\"]",
            "t.toml:3:9: invalid `filter.deny` entry \"10.0.0.1-::1\": ",
        ),
    ];
    for (line, prefix) in cases {
        let error = single_error(&with_filter(&format!("{line}\n")));
        assert!(
            error.starts_with(prefix) && error.len() > prefix.len(),
            "{error:?} should start with {prefix:?} and give a reason"
        );
    }
    let host_bits = single_error(&with_filter("deny = [\"10.0.0.1/8\"]\n"));
    assert!(host_bits.contains("host bits"), "{host_bits}");
    let reversed = single_error(&with_filter("deny = [\"192.0.2.9-192.0.2.1\"]\n"));
    assert!(reversed.contains("reversed"), "{reversed}");
}

#[test]
fn every_error_is_reported_in_file_order() {
    let text = r#"[daemon]
log_level = "loud"
runtime_dir = "run"

[filter]
interfaces = ["eth0", "this-name-is-too-long"]
attach_mode = "generic"
protect = ["all", "tcp/0"]
deny = ["10.0.0.0/33", "192.0.2.1"]
events_burst = 0

[filter.geo]
block = ["zz", "1"]
allow_only = ["de"]

[filter.flood]
packets_per_second = 0
"#;
    let errors = parse_err(text);
    let lines_columns: Vec<String> = errors
        .iter()
        .map(|e| e.split(':').skip(1).take(2).collect::<Vec<_>>().join(":"))
        .collect();
    assert_eq!(
        lines_columns,
        [
            "2:13",  // log_level
            "3:15",  // runtime_dir relative
            "6:23",  // interface name too long
            "7:15",  // attach_mode
            "8:12",  // "all" mixed with ports
            "8:19",  // tcp/0
            "9:9",   // /33
            "10:16", // events_burst
            "13:16", // country "1"
            "14:14", // block and allow_only
            "17:22", // packets_per_second
        ],
        "{errors:#?}"
    );
    assert!(errors.iter().all(|e| e.starts_with("t.toml:")));
}

#[test]
fn error_display_lists_every_diagnostic_one_per_line() {
    let error = parse(
        &with_filter("monitor = true\nevents_burst = 0\nprotect = [\"x\"]\n"),
        Path::new("/etc/rampart/rampart.toml"),
    )
    .unwrap_err();
    assert_eq!(error.exit_code(), 64);
    let text = error.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("/etc/rampart/rampart.toml:4:16: "),
        "{text}"
    );
    assert!(
        lines[1].starts_with("/etc/rampart/rampart.toml:5:12: "),
        "{text}"
    );
}

#[test]
fn unknown_keys_and_sections_are_rejected_with_their_position() {
    let cases = [
        (
            with_filter("monitr = true\n"),
            "t.toml:3:1: unknown field `monitr`",
        ),
        (
            with_filter("[listeners]\naddress = \"0.0.0.0:443\"\n"),
            "t.toml:3:2: unknown field `listeners`",
        ),
        (
            format!("{}[[apis]]\nname = \"x\"\n", with_filter("")),
            "t.toml:3:3: unknown field `apis`",
        ),
        (
            with_filter("[[api]]\nname = \"x\"\npath = \"/\"\n"),
            "t.toml:5:1: unknown field `path`",
        ),
        (
            with_filter("[filter.geo]\ndatabase = \"/g\"\n  blocked = [\"xx\"]\n"),
            "t.toml:5:3: unknown field `blocked`",
        ),
        (
            with_filter("[filter.flood]\npackets_per_second = 1\nrate = 2\n"),
            "t.toml:5:1: unknown field `rate`",
        ),
        (
            format!("[daemon]\nstate = \"/x\"\n{}", with_filter("")),
            "t.toml:2:1: unknown field `state`",
        ),
        (
            with_filter("[filter.nat]\n"),
            "t.toml:3:9: unknown field `nat`",
        ),
    ];
    for (text, prefix) in cases {
        let error = single_error(&text);
        assert!(
            error.starts_with(prefix),
            "{error:?} should start with {prefix:?}"
        );
    }
}

#[test]
fn syntax_and_type_errors_are_located() {
    let cases = [
        (with_filter("monitor = yes\n"), "t.toml:3:11: "),
        (
            with_filter("monitor = \"true\"\n"),
            "t.toml:3:11: invalid type: string \"true\", expected a boolean",
        ),
        (
            with_filter("events_per_second = 1.5\n"),
            "t.toml:3:21: invalid type: floating point `1.5`, expected i64",
        ),
        (
            with_filter("deny = \"10.0.0.1\"\n"),
            "t.toml:3:8: invalid type: string \"10.0.0.1\", expected a sequence",
        ),
        (
            with_filter("deny = [1]\n"),
            "t.toml:3:9: invalid type: integer `1`, expected a string",
        ),
        (
            "[filter]\ninterfaces = [\"eth0\"\n".to_string(),
            "t.toml:3:1: ",
        ),
        (
            with_filter("monitor = true\nmonitor = false\n"),
            "t.toml:4:1: ",
        ),
        (
            "filter = 3\n".to_string(),
            "t.toml:1:10: invalid type: integer `3`, expected a table",
        ),
    ];
    for (text, prefix) in cases {
        let error = single_error(&text);
        assert!(
            error.starts_with(prefix),
            "{error:?} should start with {prefix:?}"
        );
        let message = error.splitn(4, ':').nth(3).unwrap_or("").trim();
        assert!(!message.is_empty(), "{error:?} should explain");
        assert!(!error.contains('\n'), "{error:?} should be one line");
    }
}

#[test]
fn columns_count_characters_not_bytes() {
    let error = single_error("[filter]\ninterfaces = [\"é1\", \"a/b\"]\n");
    assert!(error.starts_with("t.toml:2:21: "), "{error}");
}

#[test]
fn load_reports_unreadable_and_non_utf8_files() {
    let dir = std::env::temp_dir().join(format!("rampart-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let missing = dir.join("missing.toml");
    let error = load(&missing).unwrap_err();
    assert!(matches!(&error, ConfigError::Io { path, .. } if *path == missing));
    assert_eq!(error.exit_code(), 66);
    assert!(std::error::Error::source(&error).is_some());

    let binary = dir.join("binary.toml");
    std::fs::write(&binary, b"[filter]\ninterfaces = [\"e\xfft\"]\n").unwrap();
    match load(&binary).unwrap_err() {
        ConfigError::Invalid { errors, .. } => {
            assert_eq!(errors.len(), 1);
            assert_eq!(
                errors[0].to_string(),
                format!("{}:2:17: the file is not valid UTF-8", binary.display())
            );
        }
        other => panic!("{other:?}"),
    }

    let good = dir.join("good.toml");
    std::fs::write(&good, with_filter("")).unwrap();
    assert_eq!(load(&good).unwrap(), parse_ok(&with_filter("")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn control_socket_settings_are_checked() {
    let errors = parse_err(
        "[daemon]\ncontrol_socket = \"run/control.sock\"\ncontrol_group = \"bad group\"\n",
    )
    .join("\n");
    assert!(
        errors.contains("`daemon.control_socket` must be an absolute path"),
        "{errors}"
    );
    assert!(
        errors.contains("`daemon.control_group` \"bad group\" is not a valid group name"),
        "{errors}"
    );
    let config = parse_ok(&format!(
        "[daemon]\ncontrol_socket = \"/run/x/c.sock\"\ncontrol_group = \"rampart\"\n{}",
        with_filter("")
    ));
    assert_eq!(
        config.daemon.control_socket(),
        std::path::Path::new("/run/x/c.sock")
    );
    assert_eq!(config.daemon.control_group.as_deref(), Some("rampart"));
}

#[test]
fn admin_listen_is_an_address_or_off() {
    let errors = parse_err(&format!(
        "[daemon]\nadmin_listen = \"localhost\"\n{}",
        with_filter("")
    ))
    .join("\n");
    assert!(
        errors.contains("`daemon.admin_listen` \"localhost\" is not an address with a port"),
        "{errors}"
    );
    let parse = |value: &str| {
        parse_ok(&format!(
            "[daemon]\nadmin_listen = \"{value}\"\n{}",
            with_filter("")
        ))
        .daemon
        .admin_listen
    };
    assert_eq!(parse("off"), None);
    assert_eq!(parse("[::1]:9100"), Some("[::1]:9100".parse().unwrap()));
    assert_eq!(
        parse_ok(&with_filter("")).daemon.admin_listen,
        Some(crate::config::DEFAULT_ADMIN_LISTEN)
    );
}

#[test]
fn a_filter_subsection_without_filter_says_it_needs_filter() {
    let listener = "[[listener]]\naddress = \"127.0.0.1:8443\"\ntls = { cert = \"/c.pem\", key = \"/k.pem\" }\n";
    for (section, key) in [
        ("autoban", "enabled = false"),
        ("geo", "block = [\"xx\"]"),
        ("flood", "packets_per_second = 100"),
    ] {
        let text = format!("{listener}[filter.{section}]\n{key}\n");
        assert_eq!(
            parse_err(&text),
            [format!(
                "t.toml:4:9: [filter.{section}] needs [filter] (with `interfaces`): it sets up \
                 the kernel filter, which this file does not configure; add [filter] or remove \
                 [filter.{section}]"
            )],
            "{text}"
        );
    }
    // After [filter.autoban], [filter] itself is no error.
    parse_ok(&format!(
        "{listener}[filter.autoban]\nenabled = false\n[filter]\ninterfaces = [\"eth0\"]\n"
    ));
}
