//! The country table of the last `geo load`, kept so that it survives restarts even if
//! the file it came from is gone: `network,country` lines under a `network,country`
//! header (the CSV form `geo::load` reads too), replaced atomically.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use ipnet::IpNet;

use super::StateError;
use super::file::replace_file;

const HEADER: &str = "network,country";

/// The file's text; every index must have a two-letter code.
pub(super) fn encode(prefixes: &[(IpNet, u16)]) -> Result<String, StateError> {
    // About 24 bytes per IPv4 line; IPv6 lines are longer, this is only a first guess.
    let mut text = String::with_capacity(HEADER.len() + 1 + prefixes.len() * 24);
    text.push_str(HEADER);
    text.push('\n');
    for &(net, index) in prefixes {
        let [a, b] =
            rampart_common::country_code(index).ok_or(StateError::BadCountryIndex { index })?;
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{net},{}{}", char::from(a), char::from(b));
    }
    Ok(text)
}

pub(super) fn save(path: &Path, prefixes: &[(IpNet, u16)]) -> Result<(), StateError> {
    let text = encode(prefixes)?;
    replace_file(path, text.as_bytes(), 0o600).map_err(|e| StateError::write(path, e))
}

/// `None` when no table was ever saved.
pub(super) fn load(path: &Path) -> Result<Option<Vec<(IpNet, u16)>>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut prefixes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if i == 0 && line == HEADER {
            continue;
        }
        let parsed = line.split_once(',').and_then(|(net, code)| {
            let net: IpNet = net.parse().ok()?;
            let index = rampart_common::country_index(code.as_bytes().try_into().ok()?)?;
            Some((net, index))
        });
        match parsed {
            Some(entry) => prefixes.push(entry),
            None => {
                return Err(StateError::CorruptCountries {
                    path: path.to_owned(),
                    line: i + 1,
                    text: line.chars().take(80).collect(),
                });
            }
        }
    }
    Ok(Some(prefixes))
}
