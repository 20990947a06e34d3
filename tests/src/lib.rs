//! Helpers for rampart's privileged tests: crafted packets, and guards that
//! own every kernel object a test creates (pin directories, network
//! namespaces, processes) and remove it on drop, also when the test fails.

pub mod activation;
pub mod bench;
pub mod control;
pub mod daemon;
pub mod journal;
pub mod journald;
pub mod netns;
pub mod packet;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// True when the tests can use BPF and network namespaces. When false the
/// caller prints why and returns (the test is skipped, visibly).
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: needs root (BPF, XDP and network namespaces)");
    }
    root
}

/// Writes `contents` to `path` as an operator's configuration or key file
/// is kept: a new file is created 0600 (a file that exists keeps its mode).
/// A file others can read makes every rampartd started on it warn that it is
/// "not private" (`config::permissions`), a warning a test then cannot tell
/// from one its own change caused.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(contents.as_ref())
}

/// A name unique to this process and call, for pins and namespaces.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A pin directory under /sys/fs/bpf that is detached and removed on drop.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        Self {
            path: Path::new("/sys/fs/bpf").join(unique("rampart-test-")),
        }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = rampart::filter::detach(&self.path) {
            eprintln!("cleanup of {}: {e}", self.path.display());
        }
    }
}
