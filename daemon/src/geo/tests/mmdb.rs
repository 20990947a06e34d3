//! MMDB files: the test writer against the `maxminddb` crate, and the loader.

use std::net::IpAddr;

use maxminddb::{Reader, WithinOptions};

use super::super::mmdb::utc_date;
use super::super::testdata::{
    DEFAULT_BUILD_EPOCH, MmdbValue, MmdbWriter, country_mmdb, country_record,
    registered_country_record,
};
use super::*;

/// IPv4 and IPv6, several countries, nested prefixes.
fn networks() -> Vec<(IpNet, &'static str)> {
    [
        ("5.0.0.0/8", "de"),
        ("5.1.0.0/16", "FR"),
        ("5.1.2.0/24", "DE"),
        ("5.1.2.128/25", "at"),
        ("81.2.69.142/32", "GB"),
        ("2a00::/16", "DE"),
        ("2a00:1::/32", "NL"),
        ("2a00:1:2::/48", "US"),
        ("2001:db8::1/128", "JP"),
    ]
    .into_iter()
    .map(|(n, c)| (net(n), c))
    .collect()
}

/// IPv4 and IPv6, several countries, none inside another: an MMDB tree
/// keeps these prefixes as they are.
fn flat_networks() -> Vec<(IpNet, &'static str)> {
    [
        ("5.0.0.0/16", "de"),
        ("5.1.0.0/16", "FR"),
        ("5.2.2.0/24", "DE"),
        ("81.2.69.142/32", "GB"),
        ("2a00::/32", "NL"),
        ("2a00:1:2::/48", "US"),
        ("2001:db8::1/128", "JP"),
    ]
    .into_iter()
    .map(|(n, c)| (net(n), c))
    .collect()
}

fn iso_code<S: AsRef<[u8]>>(reader: &Reader<S>, addr: &str) -> Option<String> {
    let result = reader.lookup(addr.parse::<IpAddr>().unwrap()).unwrap();
    result
        .decode_path(&maxminddb::path!["country", "iso_code"])
        .unwrap()
}

#[test]
fn writer_round_trips_through_maxminddb() {
    for bits in [24, 28, 32] {
        let mut writer = MmdbWriter::new("GeoLite2-Country").record_size(bits);
        for (n, c) in networks() {
            writer.insert(n, country_record(c));
        }
        let reader = Reader::from_source(writer.to_bytes().unwrap()).unwrap();
        reader.verify().unwrap();
        let meta = reader.metadata();
        assert_eq!(
            (
                meta.record_size,
                meta.ip_version,
                meta.database_type.as_str()
            ),
            (bits, 6, "GeoLite2-Country")
        );
        assert_eq!(meta.build_epoch, DEFAULT_BUILD_EPOCH);
        for (addr, want) in [
            ("5.9.9.9", Some("de")),
            ("5.1.9.9", Some("FR")),
            ("5.1.2.3", Some("DE")),
            ("5.1.2.200", Some("at")),
            ("81.2.69.142", Some("GB")),
            ("81.2.69.143", None),
            ("6.0.0.1", None),
            ("2a00:ffff::1", Some("DE")),
            ("2a00:1:ffff::1", Some("NL")),
            ("2a00:1:2::5", Some("US")),
            ("2001:db8::1", Some("JP")),
            ("2001:db8::2", None),
            // Through the aliases of the IPv4 subtree.
            ("::ffff:5.1.2.3", Some("DE")),
            ("2002:0501:0203::", Some("DE")),
        ] {
            assert_eq!(
                iso_code(&reader, addr).as_deref(),
                want,
                "{addr}, {bits}-bit records"
            );
        }
        let found = reader.lookup("5.1.2.3".parse().unwrap()).unwrap();
        assert_eq!(found.network().unwrap().to_string(), "5.1.2.0/25");
        // Every network once (the 5.1.2.0/24 around the /25 is what is left of it).
        let count = reader.networks(WithinOptions::default()).unwrap().count();
        assert!(count >= networks().len(), "{count}");
    }
}

#[test]
fn ipv4_only_database_round_trips() {
    let mut writer = MmdbWriter::new("DBIP-Country-Lite").ipv4_only();
    writer.insert(net("10.0.0.0/8"), country_record("NL"));
    writer.insert(net("10.1.0.0/16"), country_record("BE"));
    let reader = Reader::from_source(writer.to_bytes().unwrap()).unwrap();
    reader.verify().unwrap();
    assert_eq!(reader.metadata().ip_version, 4);
    assert_eq!(iso_code(&reader, "10.1.2.3").as_deref(), Some("BE"));
    assert_eq!(iso_code(&reader, "10.2.2.3").as_deref(), Some("NL"));
    // IPv6 in an IPv4 database is the writer's error, not a panic.
    let mut writer = MmdbWriter::new("x").ipv4_only();
    writer.insert(net("2001:db8::/32"), country_record("NL"));
    assert!(writer.to_bytes().is_err());

    let dir = TempDir::new();
    let mut writer = MmdbWriter::new("DBIP-Country-Lite").ipv4_only();
    writer.insert(net("10.0.0.0/8"), country_record("NL"));
    let path = dir.0.join("dbip-country-lite.mmdb");
    writer.write(&path).unwrap();
    let data = load(&path).unwrap();
    assert_eq!(data.prefixes(), &[(net("10.0.0.0/8"), cc("nl"))]);
}

/// What the loader gives for `flat_networks()`: the same prefixes and
/// countries, in address order.
fn flat_expected() -> Vec<(IpNet, u16)> {
    let mut want: Vec<(IpNet, u16)> = flat_networks()
        .into_iter()
        .map(|(n, c)| (n, cc(&c.to_ascii_lowercase())))
        .collect();
    want.sort();
    want
}

#[test]
fn mmdb_gives_the_same_prefixes_and_countries() {
    let dir = TempDir::new();
    let path = dir.write(
        "GeoLite2-Country.mmdb",
        country_mmdb(flat_networks()).unwrap(),
    );
    let data = load(&path).unwrap();
    assert_eq!(data.prefixes(), flat_expected().as_slice());
    assert_eq!((data.v4_prefixes(), data.v6_prefixes()), (4, 3));
    assert_eq!(data.format(), DatabaseFormat::Mmdb);
    assert_eq!(data.describe(), "MMDB (GeoLite2-Country, built 2026-11-01)");
    assert_eq!(data.country_codes(), ["de", "fr", "gb", "jp", "nl", "us"]);
}

#[test]
fn nested_networks_keep_their_meaning() {
    // The tree has no nesting: a network with a more specific one inside
    // comes back as the pieces around it. Every address keeps its country.
    let dir = TempDir::new();
    let path = dir.write("nested.mmdb", country_mmdb(networks()).unwrap());
    let data = load(&path).unwrap();
    assert!(data.prefixes().len() > networks().len());
    let table = rules::compile(&PrefixRules {
        countries: data.into_prefixes(),
        ..PrefixRules::default()
    })
    .unwrap();
    let at = |a: &str| rules::lookup(&table, a.parse().unwrap()).1.country;
    for (addr, want) in [
        ("5.0.0.0", "de"),
        ("5.255.255.255", "de"),
        ("5.1.0.0", "fr"),
        ("5.1.255.255", "fr"),
        ("5.1.2.0", "de"),
        ("5.1.2.127", "de"),
        ("5.1.2.128", "at"),
        ("5.1.2.255", "at"),
        ("81.2.69.142", "gb"),
        ("2a00::", "de"),
        ("2a00:ffff::1", "de"),
        ("2a00:1::", "nl"),
        ("2a00:1:2::", "us"),
        ("2a00:1:2:ffff::1", "us"),
        ("2a00:1:3::", "nl"),
        ("2001:db8::1", "jp"),
    ] {
        assert_eq!(at(addr), cc(want), "{addr}");
    }
    for addr in [
        "4.255.255.255",
        "6.0.0.0",
        "81.2.69.141",
        "2001:db8::2",
        "2a01::",
    ] {
        assert_eq!(at(addr), 0, "{addr}");
    }
}

#[test]
fn mmdb_is_recognised_by_content_whatever_its_name() {
    let dir = TempDir::new();
    for name in ["countries.dat", "geo.csv", "GeoIP2-Country"] {
        let path = dir.write(name, country_mmdb(flat_networks()).unwrap());
        let data = load(&path).unwrap();
        assert_eq!(data.format(), DatabaseFormat::Mmdb, "{name}");
        assert_eq!(data.prefixes(), flat_expected().as_slice(), "{name}");
    }
}

#[test]
fn ipv4_in_the_ipv6_tree_is_read_once_as_ipv4() {
    let dir = TempDir::new();
    // The default layout: IPv4 at ::/96, aliased from ::ffff:0:0/96 and
    // 2002::/16. The aliases really are in the file ...
    let bytes = country_mmdb([(net("5.1.0.0/16"), "de")]).unwrap();
    let reader = Reader::from_source(bytes.clone()).unwrap();
    let aliased: Vec<String> = reader
        .networks(WithinOptions::default().include_aliased_networks())
        .unwrap()
        .map(|r| r.unwrap().network().unwrap().to_string())
        .collect();
    assert!(aliased.len() >= 3, "{aliased:?}");
    // ... and not counted.
    let data = load(&dir.write("aliased.mmdb", bytes)).unwrap();
    assert_eq!(data.prefixes(), &[(net("5.1.0.0/16"), cc("de"))]);

    // A writer that stored IPv4-mapped networks as their own data: those
    // become IPv4 prefixes, dropped where ::/96 has the same prefix.
    let mut writer = MmdbWriter::new("Custom-Country").without_ipv4_aliases();
    writer.insert(net("5.1.0.0/16"), country_record("DE"));
    writer.insert(net("::ffff:5.1.0.0/112"), country_record("DE"));
    writer.insert(net("::ffff:9.9.0.0/112"), country_record("FR"));
    // IPv4-compatible ::a.b.c.d/96+n is IPv4 as well.
    writer.insert(net("::7.7.7.0/120"), country_record("NL"));
    writer.insert(net("2a00::/16"), country_record("IT"));
    let data = load(&dir.write("mapped.mmdb", writer.to_bytes().unwrap())).unwrap();
    assert_eq!(
        data.prefixes(),
        &[
            (net("5.1.0.0/16"), cc("de")),
            (net("7.7.7.0/24"), cc("nl")),
            (net("9.9.0.0/16"), cc("fr")),
            (net("2a00::/16"), cc("it")),
        ]
    );
    assert_eq!((data.v4_prefixes(), data.v6_prefixes()), (3, 1));
}

#[test]
fn registered_country_stands_in_and_unknown_networks_are_skipped() {
    let dir = TempDir::new();
    let mut writer = MmdbWriter::new("GeoLite2-Country");
    writer.insert(net("5.1.0.0/16"), country_record("DE"));
    // An anycast or satellite network: only where it is registered.
    writer.insert(net("5.2.0.0/16"), registered_country_record("SE"));
    // Placed on a continent only.
    writer.insert(
        net("5.3.0.0/16"),
        MmdbValue::map([(
            "continent",
            MmdbValue::map([("code", MmdbValue::string("EU"))]),
        )]),
    );
    // DB-IP's unknown.
    writer.insert(net("5.4.0.0/16"), country_record("ZZ"));
    // ip-location-db's flat layout.
    writer.insert(
        net("2a00::/16"),
        MmdbValue::map([("country_code", MmdbValue::string("PL"))]),
    );
    let data = load(&dir.write("geo.mmdb", writer.to_bytes().unwrap())).unwrap();
    assert_eq!(
        data.prefixes(),
        &[
            (net("5.1.0.0/16"), cc("de")),
            (net("5.2.0.0/16"), cc("se")),
            (net("2a00::/16"), cc("pl")),
        ]
    );
    assert_eq!(data.unknown_networks(), 2);
}

#[test]
fn mmdb_without_countries_or_with_bad_codes_is_refused() {
    let dir = TempDir::new();
    let mut writer = MmdbWriter::new("GeoLite2-ASN");
    writer.insert(
        net("5.1.0.0/16"),
        MmdbValue::map([("autonomous_system_number", MmdbValue::Uint32(3320))]),
    );
    let path = dir.write("GeoLite2-ASN.mmdb", writer.to_bytes().unwrap());
    let err = load(&path).unwrap_err();
    assert!(
        matches!(&err, GeoError::MmdbNoCountries { path: p, database_type } if *p == path && database_type == "GeoLite2-ASN"),
        "{err:?}"
    );
    assert!(err.to_string().contains("GeoLite2-ASN"), "{err}");

    // A country database where no network has a country known.
    let path = dir.write(
        "zz.mmdb",
        country_mmdb([(net("5.1.0.0/16"), "ZZ")]).unwrap(),
    );
    assert!(matches!(load(&path), Err(GeoError::Empty { .. })));

    let path = dir.write(
        "bad.mmdb",
        country_mmdb([(net("5.1.0.0/16"), "DEU")]).unwrap(),
    );
    match load(&path) {
        Err(GeoError::MmdbBadCountry {
            path: p,
            network,
            code,
        }) => assert_eq!(
            (p, network, code.as_str()),
            (path, net("5.1.0.0/16"), "DEU")
        ),
        other => panic!("{other:?}"),
    }
}

fn assert_corrupt(path: &Path, what: &str) {
    match load(path) {
        Err(e @ GeoError::Mmdb { .. }) => {
            assert!(
                e.to_string().starts_with(&format!(
                    "{}: corrupt or truncated MMDB file",
                    path.display()
                )),
                "{what}: {e}"
            );
            assert!(std::error::Error::source(&e).is_some(), "{what}");
        }
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
fn truncated_or_damaged_mmdb_is_refused_whole() {
    let dir = TempDir::new();
    let bytes = country_mmdb(networks()).unwrap();
    let marker = bytes
        .windows(MMDB_MARKER.len())
        .rposition(|w| w == MMDB_MARKER)
        .unwrap();

    // Cut in half: no metadata left. Named .mmdb, it is a truncated MMDB
    // file; named otherwise, binary data that is no database.
    let half = dir.write("half.mmdb", &bytes[..bytes.len() / 2]);
    assert_corrupt(&half, "cut in half");
    let half = dir.write("half.dat", &bytes[..bytes.len() / 2]);
    assert!(
        matches!(load(&half), Err(GeoError::NotText { .. })),
        "{:?}",
        load(&half)
    );

    // Cut inside the metadata, at every length after the marker, and cut
    // the marker itself.
    for cut in marker + 1..bytes.len() {
        let path = dir.write("cut.mmdb", &bytes[..cut]);
        assert_corrupt(&path, &format!("cut at {cut} of {}", bytes.len()));
    }

    // Data records overwritten: the tree points at garbage.
    let mut damaged = bytes.clone();
    let node_count = Reader::from_source(bytes.clone())
        .unwrap()
        .metadata()
        .node_count as usize;
    let data_start = node_count * 6 + 16;
    for b in &mut damaged[data_start..marker] {
        *b = 0xff;
    }
    assert_corrupt(&dir.write("damaged.mmdb", &damaged), "damaged data");

    // A tree record pointing past the data section.
    let mut damaged = bytes.clone();
    damaged[0..3].copy_from_slice(&[0xff, 0xff, 0xff]);
    assert_corrupt(&dir.write("tree.mmdb", &damaged), "damaged tree");
}

#[test]
fn build_dates() {
    assert_eq!(utc_date(0), "1970-01-01");
    assert_eq!(utc_date(DEFAULT_BUILD_EPOCH), "2026-11-01");
    assert_eq!(utc_date(951_782_400), "2000-02-29");
    assert_eq!(utc_date(4_107_542_399), "2100-02-28");
}
