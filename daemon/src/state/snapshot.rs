//! The snapshot, `state.json`: format version, the sequence number of the last journal
//! record it includes, and the whole state.
//!
//! The file is one line in the journal's form: the CRC-32 of the JSON as 8 lower-case
//! hex digits, a space, the JSON, a newline. The checksum is inside the one file so
//! that it is replaced atomically with what it covers. A file that starts with `{` is a
//! snapshot of an earlier version, written without a checksum: it is read unchecked
//! (and the store rewrites it with one).

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    Change, CountryPolicyState, FORMAT_VERSION, GeoState, State, StateError, StoredEntry, journal,
    replace_file, validate,
};

#[derive(Serialize)]
struct SnapshotOut<'a> {
    version: u32,
    seq: u64,
    entries: Vec<&'a StoredEntry>,
    countries: &'a Option<CountryPolicyState>,
    geo: &'a Option<GeoState>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotIn {
    // Checked first, by `read`.
    #[serde(rename = "version")]
    _version: u32,
    seq: u64,
    entries: Vec<StoredEntry>,
    countries: Option<CountryPolicyState>,
    geo: Option<GeoState>,
}

/// Why a snapshot cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDefect {
    #[error("it starts neither with an 8-digit checksum and a space nor with `{{`")]
    Malformed,
    #[error("checksum mismatch: the file says {stored:08x}, its contents hash to {actual:08x}")]
    Checksum { stored: u32, actual: u32 },
    #[error(transparent)]
    Syntax(serde_json::Error),
}

/// A snapshot as read.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub seq: u64,
    /// The file's length in bytes.
    pub len: u64,
    pub state: State,
    /// Written by an earlier version, without a checksum (so read unchecked).
    pub unchecked: bool,
}

/// Writes the snapshot of `state` at `seq`; returns its length in bytes.
pub(super) fn write(path: &Path, seq: u64, state: &State) -> Result<u64, StateError> {
    let snapshot = SnapshotOut {
        version: FORMAT_VERSION,
        seq,
        entries: state.entries.values().collect(),
        countries: &state.countries,
        geo: &state.geo,
    };
    // The JSON is written after room for the checksum, which is filled in after.
    let mut bytes = vec![b' '; journal::HEADER_LEN];
    serde_json::to_writer(&mut bytes, &snapshot).map_err(|source| StateError::Encode { source })?;
    let crc = crc32fast::hash(&bytes[journal::HEADER_LEN..]);
    bytes[..journal::HEADER_LEN - 1].copy_from_slice(format!("{crc:08x}").as_bytes());
    bytes.push(b'\n');
    replace_file(path, &bytes, 0o600).map_err(|e| StateError::write(path, e))?;
    Ok(bytes.len() as u64)
}

/// The snapshot; an empty state if there is none.
pub(super) fn read(path: &Path) -> Result<Snapshot, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Snapshot::default()),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |source| StateError::CorruptSnapshot {
        path: path.to_owned(),
        source,
    };
    let unchecked = bytes.first() == Some(&b'{');
    let json = if unchecked {
        &bytes[..]
    } else {
        let line = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let (stored, json) =
            journal::split_header(line).ok_or_else(|| corrupt(SnapshotDefect::Malformed))?;
        let actual = crc32fast::hash(json);
        if stored != actual {
            return Err(corrupt(SnapshotDefect::Checksum { stored, actual }));
        }
        json
    };
    let syntax = |e| corrupt(SnapshotDefect::Syntax(e));
    let version = super::format_version(json).map_err(syntax)?;
    if version > FORMAT_VERSION {
        return Err(StateError::NewerFormat {
            path: path.to_owned(),
            version,
            known: FORMAT_VERSION,
        });
    }
    if version != FORMAT_VERSION {
        return Err(StateError::UnsupportedVersion {
            path: path.to_owned(),
            version,
        });
    }
    let snapshot: SnapshotIn = serde_json::from_slice(json).map_err(syntax)?;
    let mut changes = vec![Change::Add(snapshot.entries)];
    changes.extend(snapshot.countries.map(Change::SetCountries));
    changes.extend(snapshot.geo.map(Change::SetGeo));
    validate(&changes).map_err(|e| StateError::InvalidSnapshot {
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    let mut state = State::default();
    for change in &changes {
        state.apply(change);
    }
    Ok(Snapshot {
        seq: snapshot.seq,
        len: bytes.len() as u64,
        state,
        unchecked,
    })
}
