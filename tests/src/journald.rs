//! A real journald for tests that read rampartd's entries back, and a rampartd
//! that logs to it (`[daemon] log_target = "journald"`).
//!
//! When no journald answers on /run/systemd/journal/socket, [`Journald::ensure`]
//! starts `/lib/systemd/systemd-journald` standalone (it needs no systemd as
//! PID 1) and stops it on drop, also when the test fails; a journald that was
//! already running is left alone. (The same guard as `daemon/tests/journald.rs`.)
//!
//! A rampartd logging to the journal writes nothing to stderr, so the rig's
//! [`crate::daemon::Daemon`] (which waits for "rampartd running" there) cannot
//! start it: [`JournalDaemon`] waits until `rampart status` answers instead.

use std::{
    io::Read as _,
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{control::Cli, daemon::rampartd_bin};

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

/// A `rampartd --config <config>` in network namespace `ns` whose log goes to
/// the journal; killed on drop if still running. Its stderr (empty unless
/// the journal could not be used) is kept in a file.
pub struct JournalDaemon {
    child: Option<Child>,
    stderr: std::path::PathBuf,
}

impl JournalDaemon {
    /// Starts it and waits (up to 30 s) until `cli` (pointed at its control
    /// socket) gets an answer to `rampart status`: by then the filter is
    /// attached and the configuration's lists are in the kernel.
    pub fn start(ns: &str, config: &Path, cli: &Cli, stderr: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(stderr).context("rampartd's stderr file")?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg(rampartd_bin()?)
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("starting rampartd")?;
        let mut d = Self {
            child: Some(child),
            stderr: stderr.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                d.child = None;
                bail!(
                    "rampartd exited ({status}) while starting; stderr:\n{}",
                    d.stderr()
                );
            }
            let run = cli.run(&["status"]);
            if run.code == 0 {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!(
                    "rampartd's control socket did not answer within 30 s: {run}\nstderr:\n{}",
                    d.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id (nsenter execs rampartd: the journal's `_PID`); 0 once
    /// it was reaped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What rampartd wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// SIGTERM, then waits up to `timeout` for the exit; the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let child = self.child.as_mut().context("rampartd already reaped")?;
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("rampartd did not exit within {timeout:?} of SIGTERM")
    }
}

impl Drop for JournalDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
