//! Country databases: which country each IP prefix belongs to.
//!
//! Two formats are read:
//! - a directory of per-country zone files `<cc>.cidr` (or `<cc>.zone`),
//!   one entry per line, either flat or split into `ipv4/` and `ipv6/`
//!   subdirectories (the layout of the common country-ip-blocks downloads);
//! - a CSV file of `network,country` lines (an optional header line
//!   `network,country`).
//!
//! Entries are CIDRs, single addresses or inclusive ranges `a-b` (see
//! [`crate::rules::parse_entry`]); blank lines and `#` comments are allowed.
//! Country codes are two ASCII letters in either case: registry region codes
//! (`ap`, `eu`, `zz`) are ordinary codes. Nested prefixes of different
//! countries are fine (the longest wins when the table is compiled). One
//! file giving the same prefix two countries is an error; two zone files
//! doing so (the registries' data has a few such prefixes) is resolved by a
//! fixed rule and reported in [`CountryData::overlaps`].

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use rampart_common::country_index;

use crate::rules::{RuleError, country_name, parse_entry};

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
        "{} holds no country prefixes (expected <cc>.cidr zone files, possibly under ipv4/ and ipv6/, or a network,country CSV file)",
        path.display()
    )]
    Empty { path: PathBuf },
}

/// A loaded country database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountryData {
    /// Distinct prefixes in address order, with their
    /// `rampart_common::country_index`.
    prefixes: Vec<(IpNet, u16)>,
    v4_prefixes: usize,
    v6_prefixes: usize,
    countries: BTreeSet<u16>,
    overlaps: Vec<Overlap>,
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

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
    fn new(mut entries: Vec<Entry>, files: &[PathBuf]) -> Result<CountryData, GeoError> {
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
    line: usize,
}

/// Loads a country database: a directory of zone files or a CSV file.
pub fn load(path: &Path) -> Result<CountryData, GeoError> {
    let meta = fs::metadata(path).map_err(|source| GeoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (entries, files) = if meta.is_dir() {
        load_dir(path)?
    } else {
        let entries = load_csv(path)?;
        (entries, vec![path.to_path_buf()])
    };
    if entries.is_empty() {
        return Err(GeoError::Empty {
            path: path.to_path_buf(),
        });
    }
    CountryData::new(entries, &files)
}

/// Zone files of `dir` and of its `ipv4/` and `ipv6/` subdirectories.
fn load_dir(dir: &Path) -> Result<(Vec<Entry>, Vec<PathBuf>), GeoError> {
    let mut files = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("ipv4"), dir.join("ipv6")] {
        if sub != dir && !sub.is_dir() {
            continue;
        }
        zone_files(&sub, &mut files)?;
    }
    files.sort();
    let mut entries = Vec::new();
    let mut paths = Vec::with_capacity(files.len());
    for (i, (path, country)) in files.into_iter().enumerate() {
        let text = read(&path)?;
        for (line, content) in lines(&text) {
            let nets = parse_entry(content).map_err(|source| GeoError::BadEntry {
                path: path.clone(),
                line,
                text: content.to_string(),
                source,
            })?;
            entries.extend(nets.into_iter().map(|net| Entry {
                net,
                country,
                file: i,
                line,
            }));
        }
        paths.push(path);
    }
    Ok((entries, paths))
}

/// Adds the zone files directly in `dir` with their country; files with
/// other extensions are ignored.
fn zone_files(dir: &Path, out: &mut Vec<(PathBuf, u16)>) -> Result<(), GeoError> {
    let io_err = |source| GeoError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if !matches!(ext.as_deref(), Some("cidr" | "zone")) {
            continue;
        }
        // Follows symlinks; a directory named like a zone file is skipped.
        if !path.is_file() {
            continue;
        }
        let country = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(code_index);
        match country {
            Some(c) => out.push((path, c)),
            None => return Err(GeoError::BadFileName { path }),
        }
    }
    Ok(())
}

/// Reads `network,country` lines.
fn load_csv(path: &Path) -> Result<Vec<Entry>, GeoError> {
    let text = read(path)?;
    let mut entries = Vec::new();
    let mut first = true;
    for (line, content) in lines(&text) {
        let header = first && is_header(content);
        first = false;
        if header {
            continue;
        }
        let bad_line = || GeoError::BadLine {
            path: path.to_path_buf(),
            line,
            text: content.to_string(),
        };
        let (network, code) = content.split_once(',').ok_or_else(bad_line)?;
        let (network, code) = (network.trim(), code.trim());
        if code.contains(',') || network.is_empty() {
            return Err(bad_line());
        }
        let country = code_index(code).ok_or_else(|| GeoError::BadCountry {
            path: path.to_path_buf(),
            line,
            code: code.to_string(),
        })?;
        let nets = parse_entry(network).map_err(|source| GeoError::BadEntry {
            path: path.to_path_buf(),
            line,
            text: network.to_string(),
            source,
        })?;
        entries.extend(nets.into_iter().map(|net| Entry {
            net,
            country,
            file: 0,
            line,
        }));
    }
    Ok(entries)
}

fn is_header(content: &str) -> bool {
    content.split_once(',').is_some_and(|(a, b)| {
        a.trim().eq_ignore_ascii_case("network") && b.trim().eq_ignore_ascii_case("country")
    })
}

/// The country index of a two-letter code, any case.
fn code_index(code: &str) -> Option<u16> {
    match code.as_bytes() {
        &[a, b] => country_index([a, b]),
        _ => None,
    }
}

fn read(path: &Path) -> Result<String, GeoError> {
    fs::read_to_string(path).map_err(|source| GeoError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Non-empty lines without comments, with 1-based line numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines().enumerate().filter_map(|(i, l)| {
        let content = l.split_once('#').map_or(l, |(before, _)| before).trim();
        (!content.is_empty()).then_some((i + 1, content))
    })
}

#[cfg(test)]
mod tests;
