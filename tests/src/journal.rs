//! A real journald for tests that read rampartd's entries back.
//!
//! When no journald answers on /run/systemd/journal/socket, [`Journald::ensure`]
//! starts `/lib/systemd/systemd-journald` standalone (it needs no systemd as
//! PID 1) and stops it on drop, also when the test fails; a journald that was
//! already running is left alone.
//!
//! Plain std + serde_json + libc, so that `daemon/tests/journald.rs` (which
//! cannot depend on this crate) includes the same file with `#[path]`.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
pub const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// Whether a journald receives on the native socket (a stale socket file left
/// by a journald that is gone refuses the datagram).
pub fn journald_alive() -> bool {
    UnixDatagram::unbound()
        .and_then(|s| s.send_to(&[], JOURNAL_SOCKET))
        .is_ok()
}

/// A journald this test started, stopped on drop; `None` inside when one was
/// already running (it is left alone).
pub struct Journald(Option<Child>);

impl Journald {
    /// A running journald: the one that answers, or one started now. `Err`
    /// says why there can be none (the caller skips).
    pub fn ensure() -> Result<Self, String> {
        if journald_alive() {
            return Ok(Self(None));
        }
        if !Path::new(JOURNALD).exists() {
            return Err(format!("{JOURNALD} is not installed"));
        }
        std::fs::create_dir_all("/run/systemd/journal").map_err(|e| e.to_string())?;
        let child = Command::new(JOURNALD)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {JOURNALD}: {e}"))?;
        let guard = Self(Some(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !journald_alive() {
            if Instant::now() > deadline {
                return Err("journald did not open its socket within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(guard)
    }

    /// For a test that needs root and a journald: the guard, or `None` after
    /// saying on stderr why the test is skipped.
    pub fn for_root_test() -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (to run journald and read the journal)");
            return None;
        }
        Self::ensure()
            .map_err(|why| eprintln!("skipped: no journald: {why}"))
            .ok()
    }

    /// Whether this guard started the journald (and will stop it).
    pub fn started_here(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // SAFETY: kill has no memory preconditions; the pid is our own child's.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every journal entry of process `pid`: the raw `journalctl -o json` text
/// and the entries as JSON objects.
pub fn entries_of(pid: u32) -> (String, Vec<Value>) {
    let out = Command::new("journalctl")
        .args(["-o", "json", "--no-pager", "--all"])
        .arg(format!("_PID={pid}"))
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let entries = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    (text, entries)
}

/// Polls the journal (`journalctl --sync`, then the entries of `pid`) until
/// `done` holds or `within` passed; the last read either way.
pub fn wait_entries(
    pid: u32,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> (String, Vec<Value>) {
    let deadline = Instant::now() + within;
    loop {
        let _ = Command::new("journalctl").arg("--sync").output();
        let (text, entries) = entries_of(pid);
        if done(&entries) || Instant::now() > deadline {
            return (text, entries);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A string field of a journal entry ("" when absent or not a string).
pub fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry[name].as_str().unwrap_or("")
}
