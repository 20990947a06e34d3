//! The store's file: JSON, replaced atomically (temp file, fsync, rename, fsync dir).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
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
    let parsed: StoreFileIn =
        serde_json::from_slice(&bytes).map_err(|source| KeyStoreError::Corrupt {
            path: path.to_owned(),
            source,
        })?;
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

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file:
/// write a temp file in the same directory, fsync it, rename over, fsync the directory.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;

    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: a stale temp file is harmless, but do not leave it if we can help it.
        let _ = fs::remove_file(&tmp);
    }
    result
}
