//! Country databases: which country each IP prefix belongs to.
//!
//! [`load`] reads, recognising the format by content and layout rather than
//! by name:
//! - **MMDB**: a MaxMind (GeoIP2/GeoLite2 Country or City) or DB-IP country
//!   database, recognised by its metadata marker `\xAB\xCD\xEFMaxMind.com`
//!   (or the `.mmdb` extension, so that a file whose metadata was cut off is
//!   reported as a truncated MMDB file); see [`mmdb`];
//! - **GeoLite2 CSV**: `<product>-Blocks-IPv4.csv` / `-IPv6.csv` joined with
//!   `<product>-Locations-en.csv`, given as the directory holding them or as
//!   one Blocks file (recognised by its `network,geoname_id,...` header);
//! - **DB-IP CSV**: `start,end,country` inclusive ranges (dbip-country-lite),
//!   recognised by a first line of two addresses and a code;
//! - a directory of per-country zone files `<cc>.cidr` (or `<cc>.zone`),
//!   one entry per line, either flat or split into `ipv4/` and `ipv6/`
//!   subdirectories (the layout of the common country-ip-blocks downloads);
//! - a CSV file of `network,country` lines (an optional header line
//!   `network,country`).
//!
//! In the last two, entries are CIDRs, single addresses or inclusive ranges
//! `a-b` (see [`crate::rules::parse_entry`]); blank lines and `#` comments
//! are allowed. Country codes are two ASCII letters in either case: registry
//! region codes (`ap`, `eu`, `zz`) are ordinary codes there, while the
//! downloaded databases' "unknown" (DB-IP's `ZZ`, a MaxMind network with no
//! country) is skipped and counted in [`CountryData::unknown_networks`].
//! Nested prefixes of different countries are fine (the longest wins when
//! the table is compiled). One file giving the same prefix two countries is
//! an error; two zone files doing so (the registries' data has a few such
//! prefixes) is resolved by a fixed rule and reported in
//! [`CountryData::overlaps`].
//!
//! A file that does not parse completely (corrupt, truncated, or a line cut
//! mid-way) is an error naming the file, and the line for text formats:
//! nothing partial is ever returned.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use rampart_common::country_index;

use crate::rules::country_name;

mod error;
mod geolite2;
mod mmdb;
mod mmdb_writer;
mod plain;
mod range_csv;
#[doc(hidden)]
pub mod testdata;

pub use error::GeoError;

/// The format a country database was read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseFormat {
    /// A MaxMind DB file (MaxMind GeoIP2/GeoLite2, DB-IP).
    Mmdb,
    /// MaxMind's CSV layout: Blocks files joined with a Locations file.
    GeoLite2Csv,
    /// DB-IP's `start,end,country` ranges.
    DbIpCsv,
    /// `network,country` lines.
    NetworkCountryCsv,
    /// A directory of `<cc>.cidr` zone files.
    ZoneFiles,
}

impl fmt::Display for DatabaseFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatabaseFormat::Mmdb => "MMDB",
            DatabaseFormat::GeoLite2Csv => "GeoLite2 CSV",
            DatabaseFormat::DbIpCsv => "DB-IP CSV",
            DatabaseFormat::NetworkCountryCsv => "network,country CSV",
            DatabaseFormat::ZoneFiles => "zone files",
        })
    }
}

/// A loaded country database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountryData {
    /// Distinct prefixes in address order, with their
    /// `rampart_common::country_index`.
    prefixes: Vec<(IpNet, u16)>,
    v4_prefixes: usize,
    v6_prefixes: usize,
    countries: BTreeSet<u16>,
    overlaps: Vec<Overlap>,
    format: DatabaseFormat,
    source: String,
    unknown_networks: usize,
}

/// A prefix that two zone files give different countries. The country kept
/// is a specific one over a registry region code (`ap`, `eu`, `zz`), then the
/// first in alphabetical order, so the result does not depend on file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub prefix: IpNet,
    /// Country index kept for the prefix.
    pub kept: u16,
    pub kept_path: PathBuf,
    /// Country index dropped.
    pub dropped: u16,
    pub dropped_path: PathBuf,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is in {} and {}; kept {}",
            self.prefix,
            self.kept_path.display(),
            self.dropped_path.display(),
            country_name(self.kept)
        )
    }
}

/// Registry region codes used in delegation files instead of a country:
/// Asia/Pacific, Europe, reserved or unassigned.
const REGION_CODES: [[u8; 2]; 3] = [*b"ap", *b"eu", *b"zz"];

fn is_region(country: u16) -> bool {
    rampart_common::country_code(country).is_some_and(|c| REGION_CODES.contains(&c))
}

impl CountryData {
    /// Builds the data from prefixes: exact duplicates are dropped, and a
    /// prefix that separate files give different countries is resolved (see
    /// [`Overlap`]); one file giving a prefix two countries is an error.
    fn new(read: Read) -> Result<CountryData, GeoError> {
        let Read {
            mut entries,
            files,
            format,
            source,
            unknown_networks,
        } = read;
        let path = |i: usize| files.get(i).cloned().unwrap_or_default();
        // Stable: equal prefixes stay in file and line order.
        entries.sort_by_key(|e| e.net);
        let mut prefixes: Vec<(IpNet, u16)> = Vec::with_capacity(entries.len());
        let mut overlaps = Vec::new();
        for run in entries.chunk_by(|a, b| a.net == b.net) {
            let Some(first) = run.first() else {
                continue;
            };
            if run.iter().all(|e| e.country == first.country) {
                prefixes.push((first.net, first.country));
                continue;
            }
            for (i, a) in run.iter().enumerate() {
                if let Some(b) = run[i + 1..]
                    .iter()
                    .find(|b| b.file == a.file && b.country != a.country)
                {
                    return Err(GeoError::CountryConflict {
                        prefix: a.net,
                        first: a.country,
                        first_path: path(a.file),
                        first_line: a.line,
                        second: b.country,
                        second_path: path(b.file),
                        second_line: b.line,
                    });
                }
            }
            let kept = run
                .iter()
                .min_by_key(|e| (is_region(e.country), e.country))
                .unwrap_or(first);
            let mut dropped: Vec<&Entry> = Vec::new();
            for e in run {
                if e.country != kept.country && dropped.iter().all(|d| d.country != e.country) {
                    dropped.push(e);
                }
            }
            overlaps.extend(dropped.into_iter().map(|d| Overlap {
                prefix: kept.net,
                kept: kept.country,
                kept_path: path(kept.file),
                dropped: d.country,
                dropped_path: path(d.file),
            }));
            prefixes.push((kept.net, kept.country));
        }
        let v4_prefixes = prefixes
            .iter()
            .filter(|(n, _)| matches!(n, IpNet::V4(_)))
            .count();
        Ok(CountryData {
            v4_prefixes,
            v6_prefixes: prefixes.len() - v4_prefixes,
            countries: prefixes.iter().map(|&(_, c)| c).collect(),
            prefixes,
            overlaps,
            format,
            source,
            unknown_networks,
        })
    }

    /// Prefixes that separate files gave different countries, and which
    /// country was kept: worth a warning, not a refusal, because the
    /// registries' own data has a few (a prefix in both `eu` and `de`).
    pub fn overlaps(&self) -> &[Overlap] {
        &self.overlaps
    }

    /// Distinct prefixes in address order with their country index.
    pub fn prefixes(&self) -> &[(IpNet, u16)] {
        &self.prefixes
    }

    /// Number of IPv4 prefixes.
    pub fn v4_prefixes(&self) -> usize {
        self.v4_prefixes
    }

    /// Number of IPv6 prefixes.
    pub fn v6_prefixes(&self) -> usize {
        self.v6_prefixes
    }

    /// Country indexes present.
    pub fn countries(&self) -> &BTreeSet<u16> {
        &self.countries
    }

    /// Lower-case codes of the countries present, in order.
    pub fn country_codes(&self) -> Vec<String> {
        self.countries.iter().map(|&c| country_name(c)).collect()
    }

    /// The format the database was read in.
    pub fn format(&self) -> DatabaseFormat {
        self.format
    }

    /// What was read, for listings and logs: the format and what identifies
    /// the data, e.g. `MMDB (GeoLite2-Country, built 2026-11-01)`.
    pub fn describe(&self) -> &str {
        &self.source
    }

    /// Networks of the database that have no country (DB-IP's `ZZ`, a
    /// MaxMind network with neither a country nor a registered country):
    /// skipped, so their sources count as unknown.
    pub fn unknown_networks(&self) -> usize {
        self.unknown_networks
    }

    /// The prefixes, as `PrefixRules::countries`.
    pub fn into_prefixes(self) -> Vec<(IpNet, u16)> {
        self.prefixes
    }
}

/// One prefix read from a file.
struct Entry {
    net: IpNet,
    country: u16,
    /// Index into the list of files read.
    file: usize,
    /// 1-based; 0 where the format has no lines (MMDB).
    line: usize,
}

/// What one of the format readers found.
struct Read {
    entries: Vec<Entry>,
    /// The files read, indexed by `Entry::file`.
    files: Vec<PathBuf>,
    format: DatabaseFormat,
    source: String,
    unknown_networks: usize,
}

/// Loads a country database in any of the formats of the module
/// documentation, recognised by content and layout.
pub fn load(path: &Path) -> Result<CountryData, GeoError> {
    let meta = fs::metadata(path).map_err(|source| GeoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let read = if meta.is_dir() {
        match geolite2::blocks_in_dir(path)? {
            Some(set) => geolite2::load(&set)?,
            None => plain::load_dir(path)?,
        }
    } else {
        load_file(path)?
    };
    if read.entries.is_empty() {
        return Err(GeoError::Empty {
            path: path.to_path_buf(),
        });
    }
    CountryData::new(read)
}

/// The MMDB metadata marker (MaxMind DB spec, "Database Metadata").
const MMDB_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
/// The metadata section, marker included, is at most 128 KiB.
const MMDB_METADATA_MAX: usize = 128 * 1024;

fn load_file(path: &Path) -> Result<Read, GeoError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    if let Some(kind) = archive_kind(&bytes) {
        return Err(GeoError::Compressed {
            path: path.to_path_buf(),
            kind,
        });
    }
    let tail = &bytes[bytes.len().saturating_sub(MMDB_METADATA_MAX)..];
    let has_marker = tail.windows(MMDB_MARKER.len()).any(|w| w == MMDB_MARKER);
    let mmdb_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mmdb"));
    if has_marker || mmdb_name {
        return mmdb::load(path, bytes);
    }
    let text = text_of(path, bytes)?;
    match text_layout(&text) {
        TextLayout::GeoLite2Blocks => {
            let set = geolite2::blocks_file(path)?;
            geolite2::load(&set)
        }
        TextLayout::GeoLite2Locations => Err(GeoError::LocationsGiven {
            path: path.to_path_buf(),
        }),
        TextLayout::DbIp => range_csv::load(path, &text),
        TextLayout::NetworkCountry => plain::load_csv(path, &text),
    }
}

/// The text of a file of a text format.
fn read_text(path: &Path) -> Result<String, GeoError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    text_of(path, bytes)
}

/// The bytes as text; binary data (not UTF-8, or holding a NUL byte, which
/// no text format has) is an error naming the line it starts on.
fn text_of(path: &Path, bytes: Vec<u8>) -> Result<String, GeoError> {
    let not_text = |bytes: &[u8], at: usize| GeoError::NotText {
        path: path.to_path_buf(),
        line: bytes
            .get(..at)
            .unwrap_or_default()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1,
    };
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(not_text(&bytes, at));
    }
    String::from_utf8(bytes).map_err(|e| not_text(e.as_bytes(), e.utf8_error().valid_up_to()))
}

/// Archives an operator may point at by mistake: the downloads come packed.
fn archive_kind(bytes: &[u8]) -> Option<&'static str> {
    const KINDS: [(&[u8], &str); 4] = [
        (b"\x1f\x8b", "gzip"),
        (b"PK\x03\x04", "zip"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"7z\xbc\xaf\x27\x1c", "7-Zip"),
    ];
    KINDS
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
        .map(|&(_, kind)| kind)
}

enum TextLayout {
    GeoLite2Blocks,
    GeoLite2Locations,
    DbIp,
    NetworkCountry,
}

/// Which text format `text` is, from its first line that is not blank or a
/// comment. Anything unrecognised is read as `network,country`, whose
/// errors name the offending line.
fn text_layout(text: &str) -> TextLayout {
    let Some((_, first)) = lines(text).next() else {
        return TextLayout::NetworkCountry;
    };
    let fields: Vec<String> = first
        .split(',')
        .map(|f| f.trim().trim_matches('"').to_ascii_lowercase())
        .collect();
    let has = |name: &str| fields.iter().any(|f| f == name);
    match fields.first().map(String::as_str) {
        Some("network") if has("geoname_id") => TextLayout::GeoLite2Blocks,
        Some("geoname_id") if has("locale_code") => TextLayout::GeoLite2Locations,
        _ if fields.len() == 3
            && fields[..2]
                .iter()
                .all(|f| f.parse::<std::net::IpAddr>().is_ok()) =>
        {
            TextLayout::DbIp
        }
        _ => TextLayout::NetworkCountry,
    }
}

/// The country index of a two-letter code, any case.
fn code_index(code: &str) -> Option<u16> {
    match code.as_bytes() {
        &[a, b] => country_index([a, b]),
        _ => None,
    }
}

/// A country code of a downloaded database.
enum DownloadCode {
    Country(u16),
    /// DB-IP's `ZZ`: no country known.
    Unknown,
    Invalid,
}

impl DownloadCode {
    fn parse(code: &str) -> DownloadCode {
        if code.eq_ignore_ascii_case("zz") {
            return DownloadCode::Unknown;
        }
        code_index(code).map_or(DownloadCode::Invalid, DownloadCode::Country)
    }
}

/// Non-empty lines without comments, with 1-based line numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines().enumerate().filter_map(|(i, l)| {
        let content = l.split_once('#').map_or(l, |(before, _)| before).trim();
        (!content.is_empty()).then_some((i + 1, content))
    })
}

/// The file name of `path` for descriptions.
fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> GeoError + '_ {
    move |source| GeoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Line numbers of `csv` records, from their byte offsets: the `csv`
/// crate's own line count skips blank lines. Records come in order, so each
/// stretch of text is counted once.
struct LineCounter<'a> {
    text: &'a str,
    byte: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> LineCounter<'a> {
        LineCounter {
            text,
            byte: 0,
            line: 1,
        }
    }

    /// The 1-based line of a byte offset at or after the previous one.
    fn line_at(&mut self, byte: u64) -> usize {
        let byte = usize::try_from(byte)
            .unwrap_or(usize::MAX)
            .min(self.text.len());
        if byte < self.byte {
            self.byte = 0;
            self.line = 1;
        }
        let skipped = self
            .text
            .as_bytes()
            .get(self.byte..byte)
            .unwrap_or_default();
        self.line += skipped.iter().filter(|&&b| b == b'\n').count();
        self.byte = byte;
        self.line
    }

    /// The line `record` starts on. Its position is where the reader
    /// started looking for it, before the blank lines it skipped.
    fn record(&mut self, record: &::csv::StringRecord) -> usize {
        let Some(start) = record.position().map(|p| p.byte()) else {
            return 0;
        };
        let from = usize::try_from(start).unwrap_or(usize::MAX);
        let blank = self
            .text
            .as_bytes()
            .get(from..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| b == b'\n' || b == b'\r')
            .count();
        self.line_at(start.saturating_add(blank as u64))
    }

    /// An error of the `csv` crate, naming file and line.
    fn error(&mut self, path: &Path, source: ::csv::Error) -> GeoError {
        let line = source.position().map_or(0, |p| self.line_at(p.byte()));
        GeoError::Csv {
            path: path.to_path_buf(),
            line,
            source,
        }
    }
}

#[cfg(test)]
mod tests;
