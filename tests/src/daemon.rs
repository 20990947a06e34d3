//! Running the real `rampartd` binary inside a test's network namespace,
//! owned by a guard that kills it on drop.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// The `rampartd` binary built next to this test binary.
pub fn rampartd_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target directory")?;
    let bin = dir.join("rampartd");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first (cargo build -p rampart, or run the tests with --workspace)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A temporary directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(crate::unique("rampart-test-"));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running `rampartd` (in network namespace `ns`); its stderr is kept.
pub struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `rampartd --config <config>` in `ns` and waits until it says
    /// it is running.
    pub fn start(ns: &str, config: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg(rampartd_bin()?)
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting rampartd")?;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().context("stderr")?;
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let d = Self {
            child: Some(child),
            log,
        };
        d.wait_for_log("rampartd running", Duration::from_secs(30))?;
        Ok(d)
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (or the daemon exits).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "rampartd did not log {needle:?} within {timeout:?}; log:\n{}",
            self.log()
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        // Never kill(0, ..): that would signal the test's whole process group.
        let Some(child) = &self.child else { return };
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, sig) };
    }

    /// Waits for the daemon to exit; returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        reap(&mut self.child, timeout)
    }
}

/// Waits up to `timeout` for rampartd (`child`) to exit and reaps it (`child`
/// becomes `None`); its exit code.
pub(crate) fn reap(child: &mut Option<Child>, timeout: Duration) -> anyhow::Result<Option<i32>> {
    let start = Instant::now();
    let running = child.as_mut().context("rampartd already reaped")?;
    while start.elapsed() < timeout {
        if let Some(status) = running.try_wait()? {
            *child = None;
            return Ok(status.code());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("rampartd did not exit within {timeout:?}")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
