//! The CSV downloads: MaxMind's GeoLite2 layout and DB-IP's ranges.

use std::net::IpAddr;

use super::super::testdata::{EUROPE_GEONAME_ID, GeoLite2Csv, dbip_csv, geoname_id};
use super::*;

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// IPv4 and IPv6, nested, a network known only by where it is registered,
/// continent-only networks with and without a registered country.
fn geolite2() -> GeoLite2Csv {
    let mut csv = GeoLite2Csv::new();
    csv.network(net("5.0.0.0/8"), "DE")
        .network(net("5.1.0.0/16"), "FR")
        .network(net("5.1.2.0/24"), "DE")
        .registered_only(net("5.2.0.0/16"), "SE")
        .continent_only(net("5.3.0.0/16"), Some("NL"))
        .continent_only(net("5.4.0.0/16"), None)
        .network(net("2a00::/16"), "DE")
        .network(net("2a00:1::/32"), "US");
    csv
}

fn geolite2_expected() -> Vec<(IpNet, u16)> {
    vec![
        (net("5.0.0.0/8"), cc("de")),
        (net("5.1.0.0/16"), cc("fr")),
        (net("5.1.2.0/24"), cc("de")),
        (net("5.2.0.0/16"), cc("se")),
        (net("5.3.0.0/16"), cc("nl")),
        (net("2a00::/16"), cc("de")),
        (net("2a00:1::/32"), cc("us")),
    ]
}

#[test]
fn geolite2_directory() {
    let dir = TempDir::new();
    geolite2().write(&dir.0).unwrap();
    // What else the zip holds is ignored.
    dir.write(
        "COPYRIGHT.txt",
        "Database and Contents Copyright (c) MaxMind, Inc.\n",
    );
    dir.write("GeoLite2-Country-Locations-de.csv", "not read\n");
    let data = load(&dir.0).unwrap();
    assert_eq!(data.prefixes(), geolite2_expected().as_slice());
    assert_eq!(data.format(), DatabaseFormat::GeoLite2Csv);
    assert_eq!(
        data.describe(),
        "GeoLite2 CSV (GeoLite2-Country-Blocks-IPv4.csv, GeoLite2-Country-Blocks-IPv6.csv; GeoLite2-Country-Locations-en.csv)"
    );
    // 5.4.0.0/16: a continent and no registered country.
    assert_eq!(data.unknown_networks(), 1);
}

#[test]
fn geolite2_blocks_file_with_its_locations() {
    let dir = TempDir::new();
    let files = geolite2().product("GeoIP2-Country").write(&dir.0).unwrap();
    let data = load(&files.blocks_ipv6).unwrap();
    assert_eq!(
        data.prefixes(),
        &[(net("2a00::/16"), cc("de")), (net("2a00:1::/32"), cc("us"))]
    );
    // Only a Locations file of another locale: used (codes do not depend on it).
    fs::rename(
        &files.locations,
        dir.0.join("GeoIP2-Country-Locations-ja.csv"),
    )
    .unwrap();
    let data = load(&files.blocks_ipv4).unwrap();
    assert_eq!(data.v4_prefixes(), 5);
    // A renamed Blocks file takes the directory's English Locations file.
    let sub = TempDir::new();
    let files = geolite2().write(&sub.0).unwrap();
    let renamed = sub.0.join("blocks.csv");
    fs::rename(&files.blocks_ipv4, &renamed).unwrap();
    assert_eq!(load(&renamed).unwrap().v4_prefixes(), 5);
}

#[test]
fn geolite2_older_six_column_layout() {
    let dir = TempDir::new();
    geolite2().without_anycast_column().write(&dir.0).unwrap();
    assert_eq!(
        load(&dir.0).unwrap().prefixes(),
        geolite2_expected().as_slice()
    );
}

#[test]
fn geolite2_layout_errors() {
    // No Locations file.
    let dir = TempDir::new();
    let files = geolite2().write(&dir.0).unwrap();
    fs::remove_file(&files.locations).unwrap();
    match load(&dir.0) {
        Err(GeoError::NoLocations { blocks, expected }) => {
            assert_eq!(blocks, files.blocks_ipv4);
            assert_eq!(expected, files.locations);
        }
        other => panic!("{other:?}"),
    }
    // The Locations file named instead of the Blocks file.
    let dir = TempDir::new();
    let files = geolite2().write(&dir.0).unwrap();
    assert!(matches!(
        load(&files.locations),
        Err(GeoError::LocationsGiven { path }) if path == files.locations
    ));
    // Two products in one directory.
    geolite2().product("GeoIP2-City").write(&dir.0).unwrap();
    match load(&dir.0) {
        Err(GeoError::SeveralProducts { products, .. }) => {
            assert_eq!(products, ["GeoIP2-City", "GeoLite2-Country"]);
        }
        other => panic!("{other:?}"),
    }
    // A geoname id the Locations file does not have.
    let dir = TempDir::new();
    let blocks = dir.write(
        "GeoLite2-Country-Blocks-IPv4.csv",
        format!(
            "network,geoname_id,registered_country_geoname_id,represented_country_geoname_id,is_anonymous_proxy,is_satellite_provider\n\
             5.1.0.0/16,{},,,0,0\n5.2.0.0/16,42,,,0,0\n",
            geoname_id("de")
        ),
    );
    let locations = dir.write(
        "GeoLite2-Country-Locations-en.csv",
        format!(
            "geoname_id,locale_code,continent_code,continent_name,country_iso_code,country_name,is_in_european_union\n\
             {},en,EU,Europe,DE,Germany,1\n{EUROPE_GEONAME_ID},en,EU,Europe,,,0\n",
            geoname_id("de")
        ),
    );
    let err = load(&dir.0).unwrap_err();
    match &err {
        GeoError::UnknownGeonameId {
            path,
            line,
            id,
            locations: l,
        } => assert_eq!((path, *line, *id, l), (&blocks, 3, 42, &locations)),
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with(&format!("{}:3: geoname_id 42 is not in", blocks.display())),
        "{err}"
    );
}

#[test]
fn geolite2_bad_fields_name_file_and_line() {
    let header = "network,geoname_id,registered_country_geoname_id,represented_country_geoname_id,is_anonymous_proxy,is_satellite_provider,is_anycast\n";
    let de = geoname_id("de");
    let cases = [
        (
            format!("5.1.0.0/16,{de},,,0,0,\n5.1.0.1/16,{de},,,0,0,\n"),
            "BadEntry",
            3,
        ),
        (format!("5.1.0.0/16,x{de},,,0,0,\n"), "BadGeonameId", 2),
        (format!("5.1.0.0/16,{de},,,0,2,\n"), "BadFlag", 2),
        (format!("5.1.0.0/16,{de},,,0,0\n"), "FieldCount", 2),
        ("network,country\n".to_string(), "MissingColumn", 1),
    ];
    for (body, kind, want) in cases {
        let dir = TempDir::new();
        GeoLite2Csv::new()
            .network(net("9.0.0.0/8"), "DE")
            .write(&dir.0)
            .unwrap();
        let text = if kind == "MissingColumn" {
            "network,geoname\n5.1.0.0/16,1\n".to_string()
        } else {
            format!("{header}{body}")
        };
        let path = dir.write("GeoLite2-Country-Blocks-IPv4.csv", text);
        let err = load(&dir.0).unwrap_err();
        let (got, line, p) = match &err {
            GeoError::BadEntry { path, line, .. } => ("BadEntry", *line, path),
            GeoError::BadGeonameId { path, line, .. } => ("BadGeonameId", *line, path),
            GeoError::BadFlag { path, line, .. } => ("BadFlag", *line, path),
            GeoError::FieldCount { path, line, .. } => ("FieldCount", *line, path),
            GeoError::MissingColumn { path, .. } => ("MissingColumn", 1, path),
            other => panic!("{kind}: {other:?}"),
        };
        assert_eq!((got, line, p), (kind, want, &path), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}:{want}: ", path.display())),
            "{err}"
        );
    }
}

/// Loads `full` cut at every position inside its last line, expecting an
/// error that names `path` and the last line.
fn assert_every_cut_refused(
    dir: &TempDir,
    name: &str,
    full: &str,
    load_path: &Path,
    skip: &[usize],
) {
    let last_line = full.lines().count();
    let start = full.trim_end_matches('\n').rfind('\n').unwrap() + 1;
    for cut in start + 1..full.len() - 1 {
        if skip.contains(&cut) {
            continue;
        }
        let path = dir.write(name, &full[..cut]);
        let err = match load(load_path) {
            Err(e) => e,
            Ok(data) => panic!(
                "{name} cut at {cut} ({:?}) loaded: {data:?}",
                &full[start..cut]
            ),
        };
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{}:{last_line}: ", path.display())),
            "{name} cut at {cut} ({:?}): {text}",
            &full[start..cut]
        );
    }
    // Whole, it loads.
    dir.write(name, full);
    load(load_path).unwrap();
}

#[test]
fn geolite2_lines_cut_mid_way_are_refused() {
    // Six columns: every cut is caught (the last field is a 0/1 flag).
    let dir = TempDir::new();
    let csv = geolite2().without_anycast_column();
    csv.write(&dir.0).unwrap();
    let name = "GeoLite2-Country-Blocks-IPv6.csv";
    assert_every_cut_refused(&dir, name, &csv.blocks_ipv6(), &dir.0, &[]);
    let name = "GeoLite2-Country-Locations-en.csv";
    assert_every_cut_refused(&dir, name, &csv.locations(), &dir.0, &[]);

    // Seven: `is_anycast` may be empty, so a line cut right after its last
    // comma reads as a whole line; every other cut is caught.
    let dir = TempDir::new();
    let csv = geolite2();
    csv.write(&dir.0).unwrap();
    let full = csv.blocks_ipv4();
    let after_last_comma = full.trim_end_matches('\n').rfind(',').unwrap() + 1;
    let name = "GeoLite2-Country-Blocks-IPv4.csv";
    assert_every_cut_refused(&dir, name, &full, &dir.0, &[after_last_comma]);
}

#[test]
fn dbip_ranges_become_minimal_cidrs() {
    let dir = TempDir::new();
    let text = dbip_csv([
        (addr("1.0.0.0"), addr("1.0.0.255"), "AU"),
        (addr("1.0.1.0"), addr("1.0.3.255"), "CN"),
        (addr("5.1.0.1"), addr("5.1.0.6"), "DE"),
        (addr("6.0.0.0"), addr("6.255.255.255"), "ZZ"),
        (
            addr("2001:200::"),
            addr("2001:200:ffff:ffff:ffff:ffff:ffff:ffff"),
            "JP",
        ),
        (addr("2a00::"), addr("2a00::ffff"), "zz"),
    ]);
    let path = dir.write("dbip-country-lite-2026-11.csv", &text);
    let data = load(&path).unwrap();
    assert_eq!(
        data.prefixes(),
        &[
            (net("1.0.0.0/24"), cc("au")),
            (net("1.0.1.0/24"), cc("cn")),
            (net("1.0.2.0/23"), cc("cn")),
            (net("5.1.0.1/32"), cc("de")),
            (net("5.1.0.2/31"), cc("de")),
            (net("5.1.0.4/31"), cc("de")),
            (net("5.1.0.6/32"), cc("de")),
            (net("2001:200::/32"), cc("jp")),
        ]
    );
    assert_eq!(data.unknown_networks(), 2);
    assert_eq!(data.format(), DatabaseFormat::DbIpCsv);
    assert_eq!(data.describe(), "DB-IP CSV (dbip-country-lite-2026-11.csv)");
    // Quoted fields are read too.
    let path = dir.write("quoted.csv", "\"1.0.0.0\",\"1.0.0.255\",\"AU\"\n");
    assert_eq!(
        load(&path).unwrap().prefixes(),
        &[(net("1.0.0.0/24"), cc("au"))]
    );
    // Only ZZ: nothing known.
    let path = dir.write("zz.csv", "1.0.0.0,1.0.0.255,ZZ\n");
    assert!(matches!(load(&path), Err(GeoError::Empty { .. })));
}

#[test]
fn dbip_ipv4_mapped_ranges_are_ipv4_ranges() {
    let dir = TempDir::new();
    let text = dbip_csv([
        (addr("::ffff:5.1.0.0"), addr("::ffff:5.1.255.255"), "DE"),
        (addr("::ffff:7.0.0.1"), addr("::ffff:7.0.0.2"), "FR"),
        (addr("2a00::"), addr("2a00::ffff"), "NL"),
    ]);
    let path = dir.write("dbip-country-lite-2026-11.csv", &text);
    let data = load(&path).unwrap();
    assert_eq!(
        data.prefixes(),
        &[
            (net("5.1.0.0/16"), cc("de")),
            (net("7.0.0.1/32"), cc("fr")),
            (net("7.0.0.2/32"), cc("fr")),
            (net("2a00::/112"), cc("nl")),
        ]
    );
    assert_eq!((data.v4_prefixes(), data.v6_prefixes()), (3, 1));
    // A range leaving the mapped space names its line, as a deny entry would.
    let path = dir.write("mixed.csv", "::ffff:5.1.0.0,2a00::,DE\n");
    let err = load(&path).unwrap_err();
    assert!(
        matches!(
            err,
            GeoError::BadEntry {
                line: 1,
                source: RuleError::MappedRange { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn dbip_errors_name_file_and_line() {
    let dir = TempDir::new();
    let cases = [
        ("1.0.0.0,1.0.0.255,AU\n1.0.0.9,1.0.0.1,AU\n", "BadEntry", 2),
        (
            "1.0.0.0,1.0.0.255,AU\n1.0.0.0,2001:db8::,AU\n",
            "BadEntry",
            2,
        ),
        (
            "1.0.0.0,1.0.0.255,AU\n\n1.0.0.0,1.0.0.x,AU\n",
            "BadEntry",
            3,
        ),
        ("1.0.0.0,1.0.0.255,AUS\n", "BadCountry", 1),
        ("1.0.0.0,1.0.0.255,AU\n1.0.0.0,1.0.0.255\n", "FieldCount", 2),
        (
            "1.0.0.0,1.0.0.255,AU\n1.0.0.0,1.0.0.255,AU,x\n",
            "FieldCount",
            2,
        ),
        // One file giving a range two countries.
        (
            "1.0.0.0,1.0.0.255,AU\n1.0.0.0,1.0.0.255,NZ\n",
            "CountryConflict",
            2,
        ),
    ];
    for (text, kind, want) in cases {
        let path = dir.write("dbip.csv", text);
        let err = load(&path).unwrap_err();
        let (got, line) = match &err {
            GeoError::BadEntry { line, .. } => ("BadEntry", *line),
            GeoError::BadCountry { line, .. } => ("BadCountry", *line),
            GeoError::FieldCount { line, .. } => ("FieldCount", *line),
            GeoError::CountryConflict { second_line, .. } => ("CountryConflict", *second_line),
            other => panic!("{text:?}: {other:?}"),
        };
        assert_eq!((got, line), (kind, want), "{text:?}: {err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn dbip_lines_cut_mid_way_are_refused() {
    let dir = TempDir::new();
    let full = dbip_csv([
        (addr("1.0.0.0"), addr("1.0.0.255"), "AU"),
        (addr("2001:200::"), addr("2001:200::ffff"), "JP"),
    ]);
    let path = dir.0.join("dbip.csv");
    assert_every_cut_refused(&dir, "dbip.csv", &full, &path, &[]);
}
