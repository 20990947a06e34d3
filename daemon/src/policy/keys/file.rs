//! The store's file: JSON, replaced atomically (temp file, fsync, rename, fsync dir).

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{KeyStoreError, Subscription};

const FORMAT_VERSION: u32 = 1;

#[derive(Serialize)]
struct StoreFileOut<'a> {
    version: u32,
    subscriptions: &'a [&'a Subscription],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFileIn {
    version: u32,
    subscriptions: Vec<Subscription>,
}

pub(super) fn load_subscriptions(path: &Path) -> Result<Vec<Subscription>, KeyStoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(KeyStoreError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |source| KeyStoreError::Corrupt {
        path: path.to_owned(),
        source,
    };
    let version = crate::state::format_version(&bytes).map_err(corrupt)?;
    if version > FORMAT_VERSION {
        return Err(KeyStoreError::NewerFormat {
            path: path.to_owned(),
            version,
            known: FORMAT_VERSION,
        });
    }
    let parsed: StoreFileIn = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if parsed.version != FORMAT_VERSION {
        return Err(KeyStoreError::Corrupt {
            path: path.to_owned(),
            source: serde::de::Error::custom(format!(
                "unsupported format version {}",
                parsed.version
            )),
        });
    }
    Ok(parsed.subscriptions)
}

pub(super) fn save_subscriptions(
    path: &Path,
    subscriptions: &[&Subscription],
) -> Result<(), KeyStoreError> {
    let file = StoreFileOut {
        version: FORMAT_VERSION,
        subscriptions,
    };
    let write_err = |source| KeyStoreError::Write {
        path: path.to_owned(),
        source,
    };
    let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| write_err(io::Error::other(e)))?;
    bytes.push(b'\n');
    replace_file(path, &bytes, 0o600).map_err(write_err)
}

/// Moved to the state module, which owns durable writes to the state directory.
pub(crate) use crate::state::replace_file;
