use std::path::Path;

use super::*;

#[test]
fn minimal_file_gets_every_default() {
    let config = parse_ok(&with_filter(""));
    let expected = Config {
        daemon: DaemonConfig {
            state_dir: "/var/lib/rampart".into(),
            runtime_dir: "/run/rampart".into(),
            pin_root: "/sys/fs/bpf/rampart".into(),
            log_level: LogLevel::Info,
            log_target: LogTarget::Auto,
            control_socket: None,
            control_group: None,
            admin_listen: Some("127.0.0.1:9180".parse().unwrap()),
        },
        filter: Some(FilterConfig {
            interfaces: vec!["eth0".into()],
            attach_mode: AttachMode::Native,
            protect: ProtectScope::Ports {
                tcp: vec![443..=443],
                udp: vec![],
            },
            drop_malformed: true,
            monitor: false,
            bypass: vec![],
            deny: vec![],
            allow: vec![],
            events_per_second: 100,
            events_burst: 50,
            max_deny_entries: 131_072,
            geo: None,
            flood: None,
            autoban: crate::policy::ban::AutobanSettings::default(),
        }),
        listeners: vec![],
        apis: vec![],
        products: vec![],
        subscriptions: vec![],
        gateway: GatewayConfig::default(),
        jwt_providers: vec![],
    };
    assert_eq!(config, expected);
    assert_eq!(config.daemon, DaemonConfig::default());
    assert_eq!(config.daemon.paths(), crate::paths::Paths::default());
    assert_eq!(
        config.filter.as_ref().unwrap().protect,
        ProtectScope::default()
    );
}

#[test]
fn default_protect_constant_matches_default_scope() {
    let config = parse_ok(&with_filter(&format!(
        "protect = [\"{DEFAULT_PROTECT}\"]\n"
    )));
    assert_eq!(
        config.filter.as_ref().unwrap().protect,
        ProtectScope::default()
    );
}

#[test]
fn every_key_can_be_set() {
    let config = parse_ok(
        r#"
[daemon]
state_dir = "/tmp/r/state"
runtime_dir = "/tmp/r/run"
pin_root = "/tmp/r/bpf"
log_level = "debug"

[filter]
interfaces = ["eth0", "enp3s0f1", "veth-test.10"]
attach_mode = "skb"
protect = ["udp/53", "tcp/8000-8080", "tcp/443", "tcp/8080-8090", "TCP/22"]
drop_malformed = false
monitor = true
bypass = ["10.0.0.0/8"]
deny = ["192.0.2.1", "2001:db8::/32", "198.51.100.0-198.51.100.3"]
allow = ["203.0.113.0/24"]
events_per_second = 0
events_burst = 1

[filter.geo]
database = "/srv/geo"
allow_only = ["DE", "fr", "de"]
allow_unknown = true

[filter.flood]
packets_per_second = 5000
"#,
    );
    let paths = config.daemon.paths();
    assert_eq!(paths.state_dir(), Path::new("/tmp/r/state"));
    assert_eq!(paths.control_socket(), Path::new("/tmp/r/run/control.sock"));
    assert_eq!(paths.pin_root(), Path::new("/tmp/r/bpf"));
    assert_eq!(config.daemon.log_level, LogLevel::Debug);

    let filter = config.filter.unwrap();
    assert_eq!(filter.interfaces, ["eth0", "enp3s0f1", "veth-test.10"]);
    assert_eq!(filter.attach_mode, AttachMode::Skb);
    assert_eq!(
        filter.protect,
        ProtectScope::Ports {
            tcp: vec![22..=22, 443..=443, 8000..=8090],
            udp: vec![53..=53],
        }
    );
    assert!(!filter.drop_malformed);
    assert!(filter.monitor);
    let nets = |list: &[&str]| -> Vec<IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
    assert_eq!(filter.bypass, nets(&["10.0.0.0/8"]));
    assert_eq!(
        filter.deny,
        nets(&["192.0.2.1/32", "2001:db8::/32", "198.51.100.0/30"])
    );
    assert_eq!(filter.allow, nets(&["203.0.113.0/24"]));
    assert_eq!(filter.events_per_second, 0);
    assert_eq!(filter.events_burst, 1);
    let de = CountryCode::parse("de").unwrap();
    let fr = CountryCode::parse("FR").unwrap();
    assert_eq!(de.as_str(), "de");
    assert_eq!(fr.to_string(), "fr");
    assert_eq!(de.index(), rampart_common::country_index(*b"de").unwrap());
    assert_eq!(
        filter.geo,
        Some(GeoConfig {
            database: "/srv/geo".into(),
            policy: CountryPolicy::AllowOnly {
                countries: vec![de, fr],
                allow_unknown: true,
            },
        })
    );
    assert_eq!(
        filter.flood,
        Some(FloodConfig {
            packets_per_second: 5000,
            burst: 5000,
            ipv6_prefix: 64,
        })
    );
}

#[test]
fn protect_all_alone_and_empty_list() {
    let config = parse_ok(&with_filter("protect = [\"all\"]\n"));
    assert_eq!(config.filter.as_ref().unwrap().protect, ProtectScope::All);
    let config = parse_ok(&with_filter("protect = []\n"));
    assert_eq!(
        config.filter.as_ref().unwrap().protect,
        ProtectScope::Ports {
            tcp: vec![],
            udp: vec![],
        }
    );
}

#[test]
fn geo_variants() {
    let config = parse_ok(&with_filter(
        "[filter.geo]\ndatabase = \"/g\"\nblock = [\"XX\", \"yy\"]\n",
    ));
    let geo = config.filter.as_ref().unwrap().geo.clone().unwrap();
    assert_eq!(
        geo.policy,
        CountryPolicy::Block(vec![
            CountryCode::parse("xx").unwrap(),
            CountryCode::parse("yy").unwrap()
        ])
    );
    // A database without a policy only labels.
    let config = parse_ok(&with_filter("[filter.geo]\ndatabase = \"/g\"\n"));
    assert_eq!(
        config.filter.as_ref().unwrap().geo.clone().unwrap().policy,
        CountryPolicy::LabelOnly
    );
    // allow_unknown = false is harmless without allow_only.
    let config = parse_ok(&with_filter(
        "[filter.geo]\ndatabase = \"/g\"\nblock = [\"xx\"]\nallow_unknown = false\n",
    ));
    assert!(matches!(
        config.filter.as_ref().unwrap().geo.clone().unwrap().policy,
        CountryPolicy::Block(_)
    ));
    // An empty section labels with the default database, where Debian's
    // geoipupdate writes GeoLite2-Country.
    let config = parse_ok(&with_filter("[filter.geo]\n"));
    assert_eq!(
        config.filter.as_ref().unwrap().geo,
        Some(GeoConfig {
            database: DEFAULT_GEO_DATABASE.into(),
            policy: CountryPolicy::LabelOnly,
        })
    );
    assert_eq!(DEFAULT_GEO_DATABASE, "/var/lib/GeoIP/GeoLite2-Country.mmdb");
    // ... and so does a policy without a database.
    let config = parse_ok(&with_filter("[filter.geo]\nblock = [\"xx\"]\n"));
    let geo = config.filter.as_ref().unwrap().geo.clone().unwrap();
    assert_eq!(geo.database, std::path::PathBuf::from(DEFAULT_GEO_DATABASE));
    assert!(matches!(geo.policy, CountryPolicy::Block(_)));
    // allow_unknown defaults to false.
    let config = parse_ok(&with_filter(
        "[filter.geo]\ndatabase = \"/g\"\nallow_only = [\"de\"]\n",
    ));
    assert_eq!(
        config.filter.as_ref().unwrap().geo.clone().unwrap().policy,
        CountryPolicy::AllowOnly {
            countries: vec![CountryCode::parse("de").unwrap()],
            allow_unknown: false,
        }
    );
}

#[test]
fn flood_burst_given() {
    let config = parse_ok(&with_filter(
        "[filter.flood]\npackets_per_second = 10000000\nburst = 1\n",
    ));
    assert_eq!(
        config.filter.as_ref().unwrap().flood,
        Some(FloodConfig {
            packets_per_second: 10_000_000,
            burst: 1,
            ipv6_prefix: 64,
        })
    );
}

#[test]
fn flood_ipv6_prefix_given() {
    let flood = |text: &str| parse_ok(&with_filter(text)).filter.unwrap().flood.unwrap();
    let text = "[filter.flood]\npackets_per_second = 10\nipv6_prefix = 56\n";
    assert_eq!(flood(text).ipv6_prefix, 56);
    let text = "[filter.flood]\npackets_per_second = 10\nipv6_prefix = 128\n";
    assert_eq!(flood(text).ipv6_prefix, 128);
}

#[test]
fn rendered_default_is_the_default_configuration() {
    let text = render_default(&["eth0", "eth1"]);
    let config = parse_ok(&text);
    let mut expected = parse_ok(&with_filter(""));
    expected.filter.as_mut().unwrap().interfaces = vec!["eth0".into(), "eth1".into()];
    assert_eq!(config, expected);

    // Uncommenting the optional sections gives valid ones once a country
    // policy is chosen (the text shows both `block` and `allow_only`).
    let start = text.find("# [filter.geo]").unwrap();
    let uncommented: String = text[start..]
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| line.starts_with('[') || line.contains(" = "))
        .filter(|line| !line.starts_with("allow_only"))
        .map(|line| {
            // The placeholders of the key hashes, made real.
            let digit = if line.starts_with("primary") {
                "a"
            } else {
                "b"
            };
            line.replace("<64 hex digits>", &digit.repeat(64))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let config = parse_ok(&format!("{}{uncommented}", &text[..start]));
    assert!(matches!(
        config
            .filter
            .as_ref()
            .unwrap()
            .geo
            .clone()
            .map(|geo| geo.policy),
        Some(CountryPolicy::Block(_))
    ));
    assert_eq!(
        config.filter.as_ref().unwrap().flood,
        Some(FloodConfig {
            packets_per_second: 1000,
            burst: 1000,
            ipv6_prefix: 64,
        })
    );
    // ... and so do the gateway sections.
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.products.len(), 1);
    assert_eq!(config.apis[0].products, ["starter"]);
    assert_eq!(config.gateway, GatewayConfig::default());
    assert_eq!(config.subscriptions.len(), 1);
    assert!(config.apis[0].validation.is_some() && config.products[0].quota.is_some());
}

#[test]
fn interface_names_are_quoted_when_rendered() {
    let config = parse_ok(&render_default(&["we\"ird", "b\\s"]));
    assert_eq!(
        config.filter.as_ref().unwrap().interfaces,
        ["we\"ird", "b\\s"]
    );
}

#[test]
fn example_rampart_toml_is_the_rendered_default() {
    let path = examples_dir().join("rampart.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        render_default(&["eth0"]),
        "examples/rampart.toml differs from config::render_default(&[\"eth0\"])"
    );
    let config = load(&path).unwrap();
    assert_eq!(config.filter.as_ref().unwrap().interfaces, ["eth0"]);
}

#[test]
fn every_example_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            if let Err(e) = load(&path) {
                panic!("{e}");
            }
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "expected at least two example files, found {seen}"
    );
}

#[test]
fn edge_example_means_what_its_comments_say() {
    let config = load(&examples_dir().join("edge.toml")).unwrap();
    let filter = config.filter.unwrap();
    assert_eq!(filter.interfaces, ["eth0", "eth1"]);
    assert_eq!(
        filter.protect,
        ProtectScope::Ports {
            tcp: vec![443..=443],
            udp: vec![443..=443],
        }
    );
    assert_eq!(filter.bypass.len(), 2);
    // 203.0.113.200-219 is 200/29 + 208/29 + 216/30.
    assert_eq!(filter.deny.len(), 2 + 3);
    assert!(matches!(
        filter.geo.map(|geo| geo.policy),
        Some(CountryPolicy::Block(codes)) if codes.len() == 2
    ));
    assert_eq!(
        filter.flood,
        Some(FloodConfig {
            packets_per_second: 2000,
            burst: 4000,
            ipv6_prefix: 64,
        })
    );
}
