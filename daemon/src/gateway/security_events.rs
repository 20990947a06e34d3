//! The gateway's security events: `auth_failed`, `rate_limited` and
//! `quota_exceeded`, aggregated per source and reason so that a client sending
//! garbage cannot flood the journal.
//!
//! The first rejection of a source for a reason is logged at once with
//! `count = 1`. Further rejections of that source for that reason are only
//! counted; every [`WINDOW`] the count is logged as one event (`count = N`, the
//! rejections since the previous event), and a source quiet for a whole window is
//! forgotten, so its next rejection is logged at once again. A source therefore
//! costs at most one event per reason per window, whatever its rate. At most
//! [`MAX_SOURCES`] sources are tracked at once; rejections of further sources are
//! counted together and reported as `rampart_event = "events_suppressed"`.
//!
//! An event carries the rejection's APIM reason, its status, the API, the
//! subscription when known (a rate limit or quota counted per subscription) and
//! the TCP peer (`src_ip`: what the kernel sees and what `rampart deny add`
//! takes). Never the key, token or any header value: the reason code says what
//! was wrong.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::policy::ban::FailureClass;

/// How often a source's repeated rejections are summed up into one event.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Sources tracked at once; past this, rejections are only counted.
pub const MAX_SOURCES: usize = 4096;

/// The events of the gateway: one per process, so that every generation of the
/// gateway (a reload makes a new one) shares the windows.
pub(crate) static SECURITY_EVENTS: LazyLock<SecurityEvents> = LazyLock::new(SecurityEvents::new);

/// What kind of security event a rejection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityEvent {
    /// A subscription key, token or client certificate missing or refused.
    AuthFailed,
    /// A rate limit (429).
    RateLimited,
    /// A usage quota (403).
    QuotaExceeded,
}

impl SecurityEvent {
    /// The event of a rejection's reason code; `None` for rejections that are not
    /// security events (404, 413, backend errors, ...).
    pub fn of(reason: &str) -> Option<Self> {
        // policy::quota's reason code.
        if reason == "QuotaExceeded" {
            return Some(Self::QuotaExceeded);
        }
        match FailureClass::of(reason)? {
            FailureClass::Authentication => Some(Self::AuthFailed),
            FailureClass::RateLimited => Some(Self::RateLimited),
        }
    }

    /// The `RAMPART_EVENT` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::AuthFailed => "auth_failed",
            Self::RateLimited => "rate_limited",
            Self::QuotaExceeded => "quota_exceeded",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::AuthFailed => "request refused: authentication failed",
            Self::RateLimited => "request refused: rate limit exceeded",
            Self::QuotaExceeded => "request refused: quota exceeded",
        }
    }
}

/// One rejected request, as the event reports it.
#[derive(Debug, Clone, Copy)]
pub struct Rejected<'a> {
    /// The TCP peer.
    pub src_ip: IpAddr,
    /// APIM's `LastError` reason.
    pub reason: &'static str,
    pub status: u16,
    pub api: Option<&'a str>,
    pub subscription: Option<&'a str>,
}

/// A source's window: what its first rejection said, and how many followed.
#[derive(Debug)]
struct Pending {
    event: SecurityEvent,
    status: u16,
    api: Option<String>,
    subscription: Option<String>,
    since: Instant,
    repeats: u64,
}

#[derive(Debug, Default)]
struct Sources {
    pending: HashMap<(IpAddr, &'static str), Pending>,
    /// Rejections of sources past [`MAX_SOURCES`], since the last flush.
    untracked: u64,
}

/// The aggregation windows of every source (see the module documentation).
#[derive(Debug, Default)]
pub struct SecurityEvents {
    sources: Mutex<Sources>,
}

impl SecurityEvents {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports a rejected request: logs it now if it is its source's first for the
    /// reason in this window, else counts it. Rejections that are no security event
    /// are ignored.
    pub fn record(&self, rejected: Rejected<'_>, now: Instant) {
        let Some(event) = SecurityEvent::of(rejected.reason) else {
            return;
        };
        {
            let Ok(mut sources) = self.sources.lock() else {
                return;
            };
            let key = (rejected.src_ip, rejected.reason);
            if let Some(pending) = sources.pending.get_mut(&key) {
                pending.repeats += 1;
                return;
            }
            if sources.pending.len() >= MAX_SOURCES {
                sources.untracked += 1;
                return;
            }
            sources.pending.insert(
                key,
                Pending {
                    event,
                    status: rejected.status,
                    api: rejected.api.map(str::to_owned),
                    subscription: rejected.subscription.map(str::to_owned),
                    since: now,
                    repeats: 0,
                },
            );
        }
        emit(event, &rejected, 1);
    }

    /// Logs the counts of the windows that ended by `now` and forgets the sources
    /// that stayed quiet during theirs. Called every second or so.
    pub fn flush(&self, now: Instant) {
        let mut due = Vec::new();
        let untracked = {
            let Ok(mut sources) = self.sources.lock() else {
                return;
            };
            sources.pending.retain(|&(src_ip, reason), pending| {
                if now.saturating_duration_since(pending.since) < WINDOW {
                    return true;
                }
                if pending.repeats == 0 {
                    return false;
                }
                due.push((
                    pending.event,
                    src_ip,
                    reason,
                    pending.status,
                    pending.api.clone(),
                    pending.subscription.clone(),
                    pending.repeats,
                ));
                pending.repeats = 0;
                pending.since = now;
                true
            });
            std::mem::take(&mut sources.untracked)
        };
        for (event, src_ip, reason, status, api, subscription, count) in due {
            let rejected = Rejected {
                src_ip,
                reason,
                status,
                api: api.as_deref(),
                subscription: subscription.as_deref(),
            };
            emit(event, &rejected, count);
        }
        if untracked > 0 {
            tracing::warn!(
                rampart_event = "events_suppressed",
                count = untracked,
                tracked_sources = MAX_SOURCES,
                "rejections of too many sources at once: not logged one by one"
            );
        }
    }

    /// Logs every count still pending (at shutdown).
    pub fn flush_all(&self) {
        self.flush(Instant::now() + WINDOW);
    }

    /// Sources with an open window.
    pub fn tracked(&self) -> usize {
        self.sources.lock().map_or(0, |s| s.pending.len())
    }
}

fn emit(event: SecurityEvent, rejected: &Rejected<'_>, count: u64) {
    tracing::warn!(
        rampart_event = event.name(),
        src_ip = %rejected.src_ip,
        api = rejected.api,
        subscription = rejected.subscription,
        reason = rejected.reason,
        status = rejected.status,
        count,
        "{} ({}, {count} from {}{}{})",
        event.message(),
        rejected.reason,
        rejected.src_ip,
        rejected.api.map_or(String::new(), |api| format!(", api {api}")),
        rejected
            .subscription
            .map_or(String::new(), |name| format!(", subscription {name}")),
    );
}

#[cfg(test)]
mod tests;
