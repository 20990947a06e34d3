//! The hand-kept formats: a directory of `<cc>.cidr` zone files, and a
//! `network,country` CSV file.

use std::fs;
use std::path::{Path, PathBuf};

use super::{DatabaseFormat, Entry, GeoError, Read, code_index, io_error, lines};
use crate::rules::parse_entry;

/// Zone files of `dir` and of its `ipv4/` and `ipv6/` subdirectories.
pub(super) fn load_dir(dir: &Path) -> Result<Read, GeoError> {
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
        let text = fs::read_to_string(&path).map_err(io_error(&path))?;
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
    Ok(Read {
        entries,
        source: format!(
            "{} ({} in {})",
            DatabaseFormat::ZoneFiles,
            paths.len(),
            dir.display()
        ),
        files: paths,
        format: DatabaseFormat::ZoneFiles,
        unknown_networks: 0,
    })
}

/// Adds the zone files directly in `dir` with their country; files with
/// other extensions are ignored.
fn zone_files(dir: &Path, out: &mut Vec<(PathBuf, u16)>) -> Result<(), GeoError> {
    let io_err = io_error(dir);
    for entry in fs::read_dir(dir).map_err(&io_err)? {
        let path = entry.map_err(&io_err)?.path();
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
pub(super) fn load_csv(path: &Path, text: &str) -> Result<Read, GeoError> {
    let mut entries = Vec::new();
    let mut first = true;
    for (line, content) in lines(text) {
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
    Ok(Read {
        entries,
        files: vec![path.to_path_buf()],
        format: DatabaseFormat::NetworkCountryCsv,
        source: format!(
            "{} ({})",
            DatabaseFormat::NetworkCountryCsv,
            super::file_name(path)
        ),
        unknown_networks: 0,
    })
}

fn is_header(content: &str) -> bool {
    content.split_once(',').is_some_and(|(a, b)| {
        a.trim().eq_ignore_ascii_case("network") && b.trim().eq_ignore_ascii_case("country")
    })
}
