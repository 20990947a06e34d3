//! Timed connection probes from the client namespace, for tests that watch a
//! change happen: each probe is one TCP connection attempt (one SYN, see
//! [`super::rig::QUICK`]) with the instants just before it started and just
//! after it ended.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::netns::connect_from;

/// One connection attempt.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub src: IpAddr,
    /// Whether `src` belongs to the set being replaced (the old set).
    pub old: bool,
    pub start: Instant,
    pub end: Instant,
    pub passed: bool,
}

impl Probe {
    /// Whether the probe saw the state after the change: an old source passing
    /// or a new one dropped. (Before: the old dropped, the new passing.)
    pub fn after(&self) -> bool {
        self.passed == self.old
    }
}

/// Threads in the client namespace, one per source, probing until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<anyhow::Result<Vec<Probe>>>>,
}

impl Prober {
    /// Starts one thread per `(source, old)`, each connecting to `dst(source)`
    /// with `timeout`, pausing `pause` after a connection that passed (a
    /// dropped one already waited `timeout`).
    pub fn start(
        ns: &str,
        sources: &[(IpAddr, bool)],
        dst: impl Fn(IpAddr) -> SocketAddr,
        timeout: Duration,
        pause: Duration,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &(src, old) in sources {
            let path = format!("/var/run/netns/{ns}");
            let file = File::open(&path).with_context(|| path.clone())?;
            let stop = Arc::clone(&stop);
            let to = dst(src);
            threads.push(std::thread::spawn(move || -> anyhow::Result<Vec<Probe>> {
                // SAFETY: a valid namespace fd; affects this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns: {}", std::io::Error::last_os_error());
                }
                let mut probes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let passed = connect_from(src, to, timeout);
                    let end = Instant::now();
                    probes.push(Probe {
                        src,
                        old,
                        start,
                        end,
                        passed,
                    });
                    if passed {
                        std::thread::sleep(pause);
                    }
                }
                Ok(probes)
            }));
        }
        Ok(Self { stop, threads })
    }

    /// Stops every thread and returns all probes, in start order.
    pub fn finish(mut self) -> anyhow::Result<Vec<Probe>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.threads.drain(..) {
            let probes = t
                .join()
                .map_err(|_| anyhow::anyhow!("a probe thread panicked"))??;
            all.extend(probes);
        }
        all.sort_by_key(|p| p.start);
        Ok(all)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Checks that the probes are consistent with one atomic switch from
/// "before" to "after" at a single instant T.
///
/// A probe's verdict is the kernel's at the one instant its SYN crossed the
/// XDP hook, somewhere inside `[start, end]`. If the switch is atomic, every
/// probe whose verdict instant is before T saw "before" for its source and
/// every probe after T saw "after". So if probe `a` saw "after" and probe `b`
/// saw "before", then `a`'s instant is after `b`'s; since `a.instant <=
/// a.end` and `b.start <= b.instant`, that is impossible when
/// `a.end < b.start`. Probes whose intervals overlap tell nothing about each
/// other and are never compared. A violation therefore proves that, at some
/// moment, the kernel held a mixed state (e.g. a new entry already enforced
/// while an old one still was, or the first-inserted new entry enforced
/// while the last-inserted one was not); no violation with probes on both
/// sides bounds any mixed state to less than the probes' spacing.
pub fn check_single_switch(probes: &[Probe]) -> Result<(), String> {
    let first_after = probes.iter().filter(|p| p.after()).min_by_key(|p| p.end);
    let last_before = probes.iter().filter(|p| !p.after()).max_by_key(|p| p.start);
    match (first_after, last_before) {
        (Some(a), Some(b)) if a.end < b.start => Err(format!(
            "mixed state: {} ({}) saw the new state (passed: {}) in a probe that ended {:?} \
             before a probe of {} ({}) that still saw the old state (passed: {})",
            a.src,
            if a.old { "old set" } else { "new set" },
            a.passed,
            b.start - a.end,
            b.src,
            if b.old { "old set" } else { "new set" },
            b.passed,
        )),
        _ => Ok(()),
    }
}
