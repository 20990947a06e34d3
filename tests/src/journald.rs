//! A rampartd that logs to a real journald (`[daemon] log_target = "journald"`);
//! the journald guard and journal readers are [`crate::journal`]'s, re-exported.
//!
//! A rampartd logging to the journal writes nothing to stderr, so the rig's
//! [`crate::daemon::Daemon`] (which waits for "rampartd running" there) cannot
//! start it: [`JournalDaemon`] waits until `rampart status` answers instead.

use std::{
    io::Read as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub use crate::journal::*;
use crate::{
    control::Cli,
    daemon::{rampartd_bin, reap},
};

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
        reap(&mut self.child, timeout)
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
