//! systemd's service notifications (sd_notify(3)), so that `Type=notify` means
//! what it says: `READY=1` only once the filter is attached, the listeners are
//! bound and the control socket listens; `RELOADING=1` and `READY=1` around each
//! reload; `STOPPING=1` at SIGTERM; `WATCHDOG=1` at half of `WatchdogSec=`
//! while the daemon is healthy; and a one-line `STATUS=` for `systemctl status`.
//!
//! The watchdog proves both halves of the daemon alive: the pings are sent from
//! the main async loop (so a stalled runtime stops them) and only while the
//! control thread, the one owner of the kernel filter and the state, went round
//! its loop within the watchdog interval (it does at least once a second when
//! idle). A daemon stuck in either is killed and restarted by systemd.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) all of this is a no-op.

use std::{
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sd_notify::NotifyState;

use super::controller::Controller;
use crate::{control::protocol::ErrorReply, filter::ListKind, rules::CountryPolicy};

/// The longest `STATUS=` detail kept from a rejected reload.
const NOTE_CHARS: usize = 200;

/// The daemon's side of the notification protocol, shared by the main loop and
/// the control thread.
pub(crate) struct Notifier {
    /// `NOTIFY_SOCKET` was set at start; without it nothing is sent or built.
    enabled: bool,
    /// `WATCHDOG_USEC` (meant for this process), when systemd watches it.
    watchdog: Option<Duration>,
    /// The control socket, named in `STATUS=`.
    control: String,
    started: Instant,
    /// When the control thread last went round its loop (ms since `started`).
    control_beat: AtomicU64,
    /// The last `STATUS=` sent: an unchanged line is not sent again.
    status: Mutex<String>,
    /// What the last reload said when it was rejected; kept in `STATUS=` until
    /// a reload succeeds.
    reload_note: Mutex<Option<String>>,
    /// The watchdog pings are held back (logged once per stall).
    starving: AtomicBool,
}

impl Notifier {
    /// From the environment systemd sets (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
    /// `WATCHDOG_PID`); `control` is the control socket's path.
    pub(crate) fn from_env(control: &Path) -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = if enabled {
            sd_notify::watchdog_enabled()
        } else {
            None
        };
        Self::new(enabled, watchdog, control)
    }

    fn new(enabled: bool, watchdog: Option<Duration>, control: &Path) -> Self {
        Self {
            enabled,
            watchdog: watchdog.filter(|w| !w.is_zero()),
            control: control.display().to_string(),
            started: Instant::now(),
            control_beat: AtomicU64::new(0),
            status: Mutex::new(String::new()),
            reload_note: Mutex::new(None),
            starving: AtomicBool::new(false),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
        }
    }

    /// `READY=1` with the daemon's summary: everything is in place (the
    /// control thread has just been started: it counts as alive).
    pub(crate) fn ready(&self, summary: &str) {
        self.control_alive();
        let status = self.status_line(summary);
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.remember(status);
    }

    /// `RELOADING=1` (with `MONOTONIC_USEC=`, which systemd 253's
    /// `Type=notify-reload` wants and older versions ignore).
    pub(crate) fn reloading(&self) {
        if !self.enabled {
            return;
        }
        let mut states = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        states.push(NotifyState::Status("reloading the configuration"));
        self.send(&states);
    }

    /// `READY=1` again after a reload, `STATUS=` saying how it went; a
    /// rejection stays in the status line until a reload succeeds.
    pub(crate) fn reloaded(
        &self,
        result: &Result<String, ErrorReply>,
        summary: &str,
        not_applied: &[&str],
    ) {
        if !self.enabled {
            return;
        }
        // A rejection, or the start-only keys an applied reload left as they
        // were: kept until the next reload says otherwise.
        let note = match result {
            Err(e) => Some(rejection_note(e)),
            Ok(_) if !not_applied.is_empty() => Some(format!(
                "needs a restart to apply {}",
                not_applied.join(", ")
            )),
            Ok(_) => None,
        };
        if let Ok(mut kept) = self.reload_note.lock() {
            kept.clone_from(&note);
        }
        let status = match result {
            Ok(_) => format!("configuration reloaded; {}", self.status_line(summary)),
            Err(_) => self.status_line(summary),
        };
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.remember(status);
    }

    /// `STOPPING=1`: SIGTERM or SIGINT came; the gateway drains next.
    pub(crate) fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: draining in-flight requests; the filter stays attached"),
        ]);
    }

    /// The control thread is going round its loop.
    pub(crate) fn control_alive(&self) {
        self.control_beat
            .store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// A new `STATUS=` from the control thread's summary, sent when it changed.
    pub(crate) fn update(&self, summary: &str) {
        if !self.enabled {
            return;
        }
        let status = self.status_line(summary);
        let changed = self.status.lock().map_or(true, |last| *last != status);
        if changed {
            self.send(&[NotifyState::Status(&status)]);
            self.remember(status);
        }
    }

    /// How often the main loop calls [`Notifier::watchdog_ping`]: half of
    /// `WatchdogSec=`, as sd_watchdog_enabled(3) advises. `None`: no watchdog.
    pub(crate) fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog.map(|w| (w / 2).max(Duration::from_millis(1)))
    }

    /// The main loop's timer for [`Notifier::watchdog_ping`]; it never fires
    /// without a watchdog.
    pub(crate) async fn watchdog_tick(timer: &mut Option<tokio::time::Interval>) {
        match timer {
            Some(timer) => {
                timer.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// A timer of [`Notifier::watchdog_period`], or `None`.
    pub(crate) fn watchdog_timer(&self) -> Option<tokio::time::Interval> {
        self.watchdog_period().map(|period| {
            let mut timer = tokio::time::interval(period);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        })
    }

    /// `WATCHDOG=1`, sent from the main loop, unless the control thread has not
    /// gone round its loop for a whole watchdog interval: then the pings stop
    /// and systemd restarts the daemon when the interval runs out.
    pub(crate) fn watchdog_ping(&self) {
        let Some(limit) = self.watchdog else {
            return;
        };
        let beat = self.control_beat.load(Ordering::Relaxed);
        let silent = Duration::from_millis(self.elapsed_ms().saturating_sub(beat));
        if silent <= limit {
            if self.starving.swap(false, Ordering::Relaxed) {
                tracing::info!("the control thread answers again; watchdog pings resumed");
            }
            self.send(&[NotifyState::Watchdog]);
        } else if !self.starving.swap(true, Ordering::Relaxed) {
            tracing::error!(
                silent_secs = silent.as_secs(),
                "the control thread is stuck; watchdog pings stopped, systemd will restart rampartd"
            );
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn status_line(&self, summary: &str) -> String {
        let mut line = format!("{summary}; control {}", self.control);
        if let Some(note) = self.reload_note.lock().ok().and_then(|n| n.clone()) {
            line.push_str("; ");
            line.push_str(&note);
        }
        line
    }

    fn remember(&self, status: String) {
        if let Ok(mut last) = self.status.lock() {
            *last = status;
        }
    }
}

/// One line about a rejected reload: its first problem, shortened.
fn rejection_note(e: &ErrorReply) -> String {
    let detail = e.details.first().unwrap_or(&e.message);
    let mut detail: String = one_line(detail);
    if detail.chars().count() > NOTE_CHARS {
        detail = detail.chars().take(NOTE_CHARS).collect::<String>() + "...";
    }
    format!("last reload rejected (running configuration kept): {detail}")
}

/// `STATUS=` is one line: line breaks become spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The figures of the status line (all counts as the control thread sees them).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    /// `None`: no `[filter]`.
    pub filter: Option<FilterSummary>,
    /// `None`: no `[[listener]]`.
    pub gateway: Option<GatewaySummary>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FilterSummary {
    pub interfaces: Vec<String>,
    pub deny: usize,
    pub allow: usize,
    /// Countries named by the country policy (blocked, or allowed only).
    pub countries: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct GatewaySummary {
    pub listeners: usize,
    pub requests: u64,
}

impl std::fmt::Display for Summary {
    /// `filtering eth0 (deny 12, allow 0, countries 2); gateway 2 listeners, 1204 requests`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.filter {
            Some(x) => write!(
                f,
                "filtering {} (deny {}, allow {}, countries {})",
                x.interfaces.join(" "),
                x.deny,
                x.allow,
                x.countries
            )?,
            None => f.write_str("no filter")?,
        }
        match &self.gateway {
            Some(g) => write!(
                f,
                "; gateway {} listener{}, {} requests",
                g.listeners,
                if g.listeners == 1 { "" } else { "s" },
                g.requests
            ),
            None => f.write_str("; no gateway"),
        }
    }
}

impl Controller {
    /// The figures of `STATUS=`; cheap (list sizes, not lists).
    pub(crate) fn summary(&self) -> Summary {
        let filter = self.filter.as_ref().map(|f| FilterSummary {
            interfaces: self.interfaces.clone(),
            deny: f.lists().len(ListKind::Deny),
            allow: f.lists().len(ListKind::Allow),
            countries: match self.country_policy() {
                CountryPolicy::Off => 0,
                CountryPolicy::Block(set) => set.len(),
                CountryPolicy::AllowOnly { allowed, .. } => allowed.len(),
            },
        });
        let gateway = self.gateway.as_ref().map(|g| GatewaySummary {
            listeners: g.gateway.local_addrs().len(),
            requests: g.gateway.stats().requests,
        });
        Summary { filter, gateway }
    }

    /// Once a second on the control thread: the watchdog's proof of life, and
    /// the status line.
    pub(crate) fn notify_tick(&self) {
        self.notify.control_alive();
        if self.notify.enabled() {
            self.notify.update(&self.summary().to_string());
        }
    }

    /// [`Controller::reload`] with `RELOADING=1` before and `READY=1` after.
    pub(crate) fn notified_reload(&mut self) -> Result<String, ErrorReply> {
        self.notify.reloading();
        let result = self.reload();
        self.notify
            .reloaded(&result, &self.summary().to_string(), &self.not_applied);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::ErrorKind;

    #[test]
    fn summary_is_one_line_with_the_figures() {
        let s = Summary {
            filter: Some(FilterSummary {
                interfaces: vec!["eth0".into()],
                deny: 12,
                allow: 0,
                countries: 2,
            }),
            gateway: Some(GatewaySummary {
                listeners: 2,
                requests: 1204,
            }),
        };
        let n = Notifier::new(false, None, Path::new("/run/rampart/control.sock"));
        assert_eq!(
            n.status_line(&s.to_string()),
            "filtering eth0 (deny 12, allow 0, countries 2); gateway 2 listeners, 1204 requests; control /run/rampart/control.sock"
        );
        assert_eq!(Summary::default().to_string(), "no filter; no gateway");
    }

    #[test]
    fn a_rejected_reload_is_one_shortened_line() {
        let mut e = ErrorReply::new(ErrorKind::Config, "not reloaded");
        e.details = vec![format!("rampart.toml:3:1: bad\n{}", "x".repeat(500))];
        let note = rejection_note(&e);
        assert!(!note.contains('\n'));
        assert!(note.starts_with("last reload rejected"));
        assert!(note.contains("rampart.toml:3:1: bad x"));
        assert!(note.chars().count() < NOTE_CHARS + 80);
    }

    #[test]
    fn watchdog_period_is_half_the_interval() {
        let control = Path::new("/c");
        let n = Notifier::new(true, Some(Duration::from_secs(30)), control);
        assert_eq!(n.watchdog_period(), Some(Duration::from_secs(15)));
        assert_eq!(Notifier::new(true, None, control).watchdog_period(), None);
        assert_eq!(
            Notifier::new(true, Some(Duration::ZERO), control).watchdog_period(),
            None
        );
    }

    #[test]
    fn pings_stop_while_the_control_thread_is_silent() {
        // Not enabled: nothing is sent, only the decision is observed.
        let n = Notifier::new(false, Some(Duration::from_millis(50)), Path::new("/c"));
        n.control_alive();
        n.watchdog_ping();
        assert!(!n.starving.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(120));
        n.watchdog_ping();
        assert!(n.starving.load(Ordering::Relaxed));
        n.control_alive();
        n.watchdog_ping();
        assert!(!n.starving.load(Ordering::Relaxed));
    }
}
