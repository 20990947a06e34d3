//! Errors of loading a country database.

use std::io;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::rules::{RuleError, country_name};

/// Errors of loading a country database. Every error names the file, and
/// the line when there is one.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{}: a zone file must be named after a two-letter country code, like de.cidr or DE.zone",
        path.display()
    )]
    BadFileName { path: PathBuf },
    #[error("{}:{line}: invalid network `{text}`", path.display())]
    BadEntry {
        path: PathBuf,
        line: usize,
        text: String,
        #[source]
        source: RuleError,
    },
    #[error("{}:{line}: `{code}` is not a two-letter country code", path.display())]
    BadCountry {
        path: PathBuf,
        line: usize,
        code: String,
    },
    #[error("{}:{line}: expected `network,country`, found `{text}`", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error(
        "{prefix} is given two countries: {} ({}:{first_line}) and {} ({}:{second_line})",
        country_name(*first),
        first_path.display(),
        country_name(*second),
        second_path.display()
    )]
    CountryConflict {
        prefix: IpNet,
        /// Country indexes.
        first: u16,
        first_path: PathBuf,
        first_line: usize,
        second: u16,
        second_path: PathBuf,
        second_line: usize,
    },
    #[error(
        "{} holds no country prefixes (expected an MMDB file, a GeoLite2 or DB-IP CSV download, <cc>.cidr zone files, possibly under ipv4/ and ipv6/, or a network,country CSV file)",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error("{} is a {kind} archive: unpack it and name the database inside", path.display())]
    Compressed { path: PathBuf, kind: &'static str },
    #[error(
        "{}:{line}: not UTF-8 text, and not an MMDB file either (no MaxMind DB metadata marker: a truncated download?)",
        path.display()
    )]
    NotText { path: PathBuf, line: usize },

    // MMDB
    #[error("{}: corrupt or truncated MMDB file", path.display())]
    Mmdb {
        path: PathBuf,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    #[error("{}: network {network} has the invalid country code `{code}`", path.display())]
    MmdbBadCountry {
        path: PathBuf,
        network: IpNet,
        code: String,
    },
    #[error(
        "{}: the MMDB database `{database_type}` has no country data (expected a Country or City database)",
        path.display()
    )]
    MmdbNoCountries {
        path: PathBuf,
        database_type: String,
    },

    // CSV downloads
    #[error("{}:{line}: unreadable CSV", path.display())]
    Csv {
        path: PathBuf,
        line: usize,
        #[source]
        source: csv::Error,
    },
    #[error(
        "{}:{line}: expected {expected} fields, found {found} (a truncated or damaged line?)",
        path.display()
    )]
    FieldCount {
        path: PathBuf,
        line: usize,
        expected: usize,
        found: usize,
    },
    #[error("{}:1: the header has no `{column}` column", path.display())]
    MissingColumn { path: PathBuf, column: &'static str },
    #[error("{}:{line}: `{column}` must be 0 or 1, not `{text}`", path.display())]
    BadFlag {
        path: PathBuf,
        line: usize,
        column: &'static str,
        text: String,
    },
    #[error("{}:{line}: `{column}` must be a number, not `{text}`", path.display())]
    BadGeonameId {
        path: PathBuf,
        line: usize,
        column: &'static str,
        text: String,
    },
    #[error(
        "{}:{line}: geoname_id {id} is not in {}",
        path.display(),
        locations.display()
    )]
    UnknownGeonameId {
        path: PathBuf,
        line: usize,
        id: u32,
        locations: PathBuf,
    },
    #[error(
        "{}:{line}: geoname_id {id} is listed twice with different countries",
        path.display()
    )]
    GeonameConflict { path: PathBuf, line: usize, id: u32 },
    #[error(
        "{}: no Locations file next to it (expected {})",
        blocks.display(),
        expected.display()
    )]
    NoLocations { blocks: PathBuf, expected: PathBuf },
    #[error(
        "{}: Blocks files of several products ({}): name one Blocks file",
        dir.display(),
        products.join(", ")
    )]
    SeveralProducts { dir: PathBuf, products: Vec<String> },
    #[error(
        "{} is a GeoLite2 Locations file: name the Blocks file or the directory holding both",
        path.display()
    )]
    LocationsGiven { path: PathBuf },
}
