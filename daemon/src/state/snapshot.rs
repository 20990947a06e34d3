//! The snapshot, `state.json`: format version, the sequence number of the last journal
//! record it includes, and the whole state.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    Change, CountryPolicyState, FORMAT_VERSION, GeoState, State, StateError, StoredEntry,
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

/// Writes the snapshot of `state` at `seq`; returns its length in bytes.
pub(super) fn write(path: &Path, seq: u64, state: &State) -> Result<u64, StateError> {
    let snapshot = SnapshotOut {
        version: FORMAT_VERSION,
        seq,
        entries: state.entries.values().collect(),
        countries: &state.countries,
        geo: &state.geo,
    };
    let mut bytes =
        serde_json::to_vec(&snapshot).map_err(|source| StateError::Encode { source })?;
    bytes.push(b'\n');
    replace_file(path, &bytes, 0o600).map_err(|e| StateError::write(path, e))?;
    Ok(bytes.len() as u64)
}

/// `(seq, file length, state)` of the snapshot; an empty state if there is none.
pub(super) fn read(path: &Path) -> Result<(u64, u64, State), StateError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0, State::default())),
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
    // The version first, so that a newer format is reported as such, not as corrupt.
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let Version { version } = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if version != FORMAT_VERSION {
        return Err(StateError::UnsupportedVersion {
            path: path.to_owned(),
            version,
        });
    }
    let snapshot: SnapshotIn = serde_json::from_slice(&bytes).map_err(corrupt)?;
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
    Ok((snapshot.seq, bytes.len() as u64, state))
}
