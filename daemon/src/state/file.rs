//! Durable file operations shared by everything kept in the state directory.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file:
/// write a temp file in the same directory, fsync it, rename over, fsync the directory.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
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
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: a stale temp file is harmless, but do not leave it if we can help it.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Keeps `bytes` in a new file next to `path`, `<name>.damaged-<tag>` (`.1`, `.2`, ...
/// appended when that exists: an earlier copy is never overwritten), mode 0600, made
/// durable before this returns. Returns the file's path; on error, the path tried.
pub(super) fn set_aside(
    path: &Path,
    tag: u64,
    bytes: &[u8],
) -> Result<PathBuf, (PathBuf, io::Error)> {
    let dir = parent_dir(path);
    let mut name = path.file_name().unwrap_or(path.as_os_str()).to_owned();
    name.push(format!(".damaged-{tag}"));
    let mut copy = dir.join(&name);
    let mut n = 0;
    let mut f = loop {
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&copy);
        match created {
            Ok(f) => break f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => {
                n += 1;
                let mut numbered = name.clone();
                numbered.push(format!(".{n}"));
                copy = dir.join(numbered);
            }
            Err(e) => return Err((copy, e)),
        }
    };
    match f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| sync_dir(dir))
    {
        Ok(()) => Ok(copy),
        Err(e) => Err((copy, e)),
    }
}

/// Creates `dir` (and its parents) with mode 0700 if it is missing; an existing
/// directory keeps its mode, which is the operator's choice.
pub(super) fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Makes a directory's entries (a created or renamed file) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens `path` for reading and writing, creating it with mode 0600 if missing. When it
/// was created, the directory is synced so the file survives a crash.
pub(super) fn open_or_create(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    match options.clone().create_new(true).mode(0o600).open(path) {
        Ok(file) => {
            sync_dir(parent_dir(path))?;
            Ok(file)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => options.open(path),
        Err(e) => Err(e),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}
