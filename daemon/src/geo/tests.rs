use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::rules::{self, CountryPolicy, PrefixRules, RuleError};

mod downloads;
mod mmdb;

/// A directory under the system temp dir, removed on drop. Hand-written to
/// keep the crate free of a test-only dependency for five lines.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rampart-geo-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn cc(code: &str) -> u16 {
    code_index(code).unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn flat_zone_directory() {
    let dir = TempDir::new();
    dir.write(
        "de.cidr",
        "# Germany\n\n5.1.0.0/16\n  2a00:1::/32  \n5.2.0.0/16 # trailing\n",
    );
    dir.write("FR.zone", "5.3.0.0/16\n5.3.4.0/24\n");
    dir.write("README.md", "not a zone file\n");
    dir.write("LICENSE", "");
    let data = load(&dir.0).unwrap();
    assert_eq!(
        data.prefixes(),
        &[
            (net("5.1.0.0/16"), cc("de")),
            (net("5.2.0.0/16"), cc("de")),
            (net("5.3.0.0/16"), cc("fr")),
            (net("5.3.4.0/24"), cc("fr")),
            (net("2a00:1::/32"), cc("de")),
        ]
    );
    assert_eq!(data.v4_prefixes(), 4);
    assert_eq!(data.v6_prefixes(), 1);
    assert_eq!(data.countries(), &[cc("de"), cc("fr")].into());
    assert_eq!(data.country_codes(), vec!["de", "fr"]);
}

#[test]
fn split_ipv4_ipv6_layout_with_region_codes() {
    let dir = TempDir::new();
    dir.write("ipv4/ap.cidr", "1.0.0.0/24\n");
    dir.write("ipv4/zz.cidr", "0.0.0.0/8\n");
    dir.write("ipv4/eu.cidr", "2.0.0.0/12\n");
    dir.write("ipv6/eu.cidr", "2001:600::/23\n");
    dir.write("ipv6/README", "ignored\n");
    dir.write("LICENSE", "ignored\n");
    // Other subdirectories are not read.
    dir.write("old/xx.cidr", "9.0.0.0/8\n");
    let data = load(&dir.0).unwrap();
    assert_eq!(data.v4_prefixes(), 3);
    assert_eq!(data.v6_prefixes(), 1);
    assert_eq!(data.country_codes(), vec!["ap", "eu", "zz"]);
    assert!(data.prefixes().contains(&(net("2001:600::/23"), cc("eu"))));
}

#[test]
fn zone_entries_may_be_ranges_and_addresses() {
    let dir = TempDir::new();
    dir.write("nl.cidr", "10.0.0.1-10.0.0.6\n10.1.1.1\n");
    let data = load(&dir.0).unwrap();
    let nets: Vec<IpNet> = data.prefixes().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        nets,
        [
            "10.0.0.1/32",
            "10.0.0.2/31",
            "10.0.0.4/31",
            "10.0.0.6/32",
            "10.1.1.1/32"
        ]
        .map(net)
        .to_vec()
    );
}

#[test]
fn bad_zone_file_names_are_errors() {
    for name in ["deu.cidr", "d1.zone", "x.CIDR", "ipv4/germany.cidr"] {
        let dir = TempDir::new();
        dir.write("de.cidr", "5.1.0.0/16\n");
        let path = dir.write(name, "5.2.0.0/16\n");
        match load(&dir.0) {
            Err(GeoError::BadFileName { path: p }) => assert_eq!(p, path),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn bad_lines_name_file_and_line() {
    let dir = TempDir::new();
    let path = dir.write("de.cidr", "# header\n5.1.0.0/16\n\n5.1.0.1/8\n");
    let err = load(&dir.0).unwrap_err();
    match &err {
        GeoError::BadEntry {
            path: p,
            line,
            text,
            source,
        } => {
            assert_eq!(p, &path);
            assert_eq!(*line, 4);
            assert_eq!(text, "5.1.0.1/8");
            assert!(matches!(source, RuleError::HostBitsSet { .. }));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("{}:4: invalid network `5.1.0.1/8`", path.display())
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("did you mean 5.0.0.0/8?"), "{source}");
}

#[test]
fn csv_files() {
    let dir = TempDir::new();
    let path = dir.write(
        "geo.csv",
        "\u{feff}network,country\n# comment\n5.1.0.0/16,DE\n 5.2.0.0 - 5.2.0.3 , fr \n\n2a00::/16,de # x\n",
    );
    let data = load(&path).unwrap();
    assert_eq!(
        data.prefixes(),
        &[
            (net("5.1.0.0/16"), cc("de")),
            (net("5.2.0.0/30"), cc("fr")),
            (net("2a00::/16"), cc("de")),
        ]
    );
    // The header is optional, and only allowed first.
    let path = dir.write("plain.csv", "5.1.0.0/16,de\n");
    assert_eq!(load(&path).unwrap().v4_prefixes(), 1);
    let path = dir.write("late.csv", "5.1.0.0/16,de\nnetwork,country\n");
    assert!(matches!(
        load(&path),
        Err(GeoError::BadCountry { line: 2, .. })
    ));
}

#[test]
fn csv_errors() {
    let dir = TempDir::new();
    let cases = [
        ("5.1.0.0/16\n", "BadLine", 1),
        ("network,country\n5.1.0.0/16,de,x\n", "BadLine", 2),
        (",de\n", "BadLine", 1),
        ("5.1.0.0/16,deu\n", "BadCountry", 1),
        ("5.1.0.0/16,\n", "BadCountry", 1),
        ("5.1.0.0/16,d3\n", "BadCountry", 1),
        ("5.1.0.0/33,de\n", "BadEntry", 1),
        ("# c\n\nfoo,de\n", "BadEntry", 3),
    ];
    for (text, kind, want) in cases {
        let path = dir.write("bad.csv", text);
        let err = load(&path).unwrap_err();
        let (got_kind, line, p) = match &err {
            GeoError::BadLine { path, line, .. } => ("BadLine", *line, path),
            GeoError::BadCountry { path, line, .. } => ("BadCountry", *line, path),
            GeoError::BadEntry { path, line, .. } => ("BadEntry", *line, path),
            other => panic!("{text:?}: {other:?}"),
        };
        assert_eq!((got_kind, line), (kind, want), "{text:?}: {err}");
        assert_eq!(p, &path);
        assert!(
            err.to_string()
                .starts_with(&format!("{}:{want}: ", path.display())),
            "{err}"
        );
    }
}

#[test]
fn one_file_giving_a_prefix_two_countries_is_an_error() {
    let dir = TempDir::new();
    let path = dir.write(
        "geo.csv",
        "5.1.0.0/16,de\n5.1.0.0/16,DE\n# x\n5.1.0.0/16,at\n",
    );
    let err = load(&path).unwrap_err();
    match &err {
        GeoError::CountryConflict {
            prefix,
            first,
            first_path,
            first_line,
            second,
            second_path,
            second_line,
        } => {
            assert_eq!(*prefix, net("5.1.0.0/16"));
            assert_eq!((*first, first_path, *first_line), (cc("de"), &path, 1));
            assert_eq!((*second, second_path, *second_line), (cc("at"), &path, 4));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "5.1.0.0/16 is given two countries: de ({p}:1) and at ({p}:4)",
            p = path.display()
        )
    );
}

#[test]
fn zone_files_disagreeing_are_resolved_and_reported() {
    let dir = TempDir::new();
    let de = dir.write("ipv4/de.cidr", "5.1.0.0/16\n5.9.0.0/16\n");
    let eu = dir.write("ipv4/eu.cidr", "# eu\n5.9.0.0/16\n6.0.0.0/8\n");
    let us = dir.write("ipv4/us.cidr", "6.0.0.0/8\n");
    let aq = dir.write("ipv4/aq.cidr", "6.0.0.0/8\n7.0.0.0/8\n");
    let zz = dir.write("ipv6/zz.cidr", "2001:db8::/32\n");
    let ap = dir.write("ipv6/ap.cidr", "2001:db8::/32\n");
    let data = load(&dir.0).unwrap();
    // A country beats a region code; between countries the first code in
    // alphabetical order is kept, whatever the file order.
    assert_eq!(
        data.prefixes(),
        &[
            (net("5.1.0.0/16"), cc("de")),
            (net("5.9.0.0/16"), cc("de")),
            (net("6.0.0.0/8"), cc("aq")),
            (net("7.0.0.0/8"), cc("aq")),
            (net("2001:db8::/32"), cc("ap")),
        ]
    );
    let overlap = |prefix: &str, kept: (&str, &PathBuf), dropped: (&str, &PathBuf)| Overlap {
        prefix: net(prefix),
        kept: cc(kept.0),
        kept_path: kept.1.clone(),
        dropped: cc(dropped.0),
        dropped_path: dropped.1.clone(),
    };
    assert_eq!(
        data.overlaps(),
        &[
            overlap("5.9.0.0/16", ("de", &de), ("eu", &eu)),
            overlap("6.0.0.0/8", ("aq", &aq), ("eu", &eu)),
            overlap("6.0.0.0/8", ("aq", &aq), ("us", &us)),
            overlap("2001:db8::/32", ("ap", &ap), ("zz", &zz)),
        ]
    );
    assert_eq!(
        data.overlaps()[0].to_string(),
        format!(
            "5.9.0.0/16 is in {} and {}; kept de",
            de.display(),
            eu.display()
        )
    );
    assert_eq!(data.countries().len(), 3);
}

#[test]
fn duplicates_of_one_country_are_merged() {
    let dir = TempDir::new();
    dir.write("de.cidr", "5.1.0.0/16\n5.1.0.0/16\n");
    dir.write("ipv4/de.cidr", "5.1.0.0/16\n");
    let data = load(&dir.0).unwrap();
    assert_eq!(data.prefixes(), &[(net("5.1.0.0/16"), cc("de"))]);
}

#[test]
fn missing_and_empty_sources() {
    let dir = TempDir::new();
    assert!(matches!(load(&dir.0), Err(GeoError::Empty { .. })));
    dir.write("notes.txt", "5.1.0.0/16\n");
    dir.write("de.cidr", "# nothing yet\n");
    assert!(matches!(load(&dir.0), Err(GeoError::Empty { .. })));
    let missing = dir.0.join("nope");
    match load(&missing) {
        Err(GeoError::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn country_data_feeds_the_compiler() {
    let dir = TempDir::new();
    dir.write("ipv4/de.cidr", "5.0.0.0/8\n");
    dir.write("ipv4/fr.cidr", "5.1.2.0/24\n");
    dir.write("ipv6/fr.cidr", "2a01::/16\n");
    let data = load(&dir.0).unwrap();
    let rules = PrefixRules {
        countries: data.into_prefixes(),
        country_policy: CountryPolicy::Block([cc("fr")].into()),
        ..PrefixRules::default()
    };
    let table = rules::compile(&rules).unwrap();
    let at = |a: &str| rules::lookup(&table, a.parse().unwrap()).1;
    assert_eq!(at("5.9.9.9").country, cc("de"));
    assert_eq!(at("5.9.9.9").flags, 0);
    assert_eq!(at("5.1.2.3").country, cc("fr"));
    assert_eq!(
        at("5.1.2.3").flags,
        rampart_common::class_flags::COUNTRY_BLOCKED
    );
    assert_eq!(at("2a01::1").country, cc("fr"));
    assert_eq!(at("6.0.0.1").country, 0);
}

#[test]
fn plain_formats_are_described() {
    let dir = TempDir::new();
    dir.write("zones/de.cidr", "5.1.0.0/16\n");
    dir.write("zones/ipv6/fr.cidr", "2a01::/16\n");
    let data = load(&dir.0.join("zones")).unwrap();
    assert_eq!(data.format(), DatabaseFormat::ZoneFiles);
    assert_eq!(
        data.describe(),
        format!("zone files (2 in {})", dir.0.join("zones").display())
    );
    assert_eq!(data.unknown_networks(), 0);
    let path = dir.write("geo.csv", "5.1.0.0/16,de\n");
    let data = load(&path).unwrap();
    assert_eq!(data.format(), DatabaseFormat::NetworkCountryCsv);
    assert_eq!(data.describe(), "network,country CSV (geo.csv)");
}

#[test]
fn archives_and_binary_files_are_refused_by_name() {
    let dir = TempDir::new();
    for (name, bytes, kind) in [
        ("geo.csv.gz", &b"\x1f\x8b\x08\x00rest"[..], "gzip"),
        ("GeoLite2-Country-CSV.zip", b"PK\x03\x04rest", "zip"),
        ("dbip.csv.xz", b"\xfd7zXZ\x00rest", "xz"),
        ("geo.7z", b"7z\xbc\xaf\x27\x1crest", "7-Zip"),
    ] {
        let path = dir.write(name, bytes);
        match load(&path) {
            Err(GeoError::Compressed { path: p, kind: k }) => {
                assert_eq!((p, k), (path.clone(), kind));
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // Binary data is never read as text: the line it starts on is named.
    for (bytes, want) in [
        (&b"5.1.0.0/16,de\n5.2.0.0/16,\xff\n"[..], 2),
        (b"5.1.0.0/16,de\n\n\x00\x01\x02", 3),
    ] {
        let path = dir.write("geo.bin", bytes);
        let err = load(&path).unwrap_err();
        assert!(
            matches!(&err, GeoError::NotText { path: p, line } if *p == path && *line == want),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("{}:{want}: not UTF-8 text", path.display())),
            "{err}"
        );
    }
}

#[test]
fn a_plain_csv_cut_mid_line_is_refused_at_that_line() {
    let dir = TempDir::new();
    let full = "network,country\n5.1.0.0/16,de\n2a00::/16,fr\n";
    let last = full.len() - "2a00::/16,fr\n".len();
    // Every cut inside the last line (not at its end, not at its start).
    for cut in last + 1..full.len() - 1 {
        let path = dir.write("geo.csv", &full[..cut]);
        let err = load(&path).unwrap_err();
        let line = match &err {
            GeoError::BadLine { line, .. }
            | GeoError::BadCountry { line, .. }
            | GeoError::BadEntry { line, .. } => *line,
            other => panic!("cut at {cut}: {other:?}"),
        };
        assert_eq!(line, 3, "cut at {cut}: {err}");
    }
}
