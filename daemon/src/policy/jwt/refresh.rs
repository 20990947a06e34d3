//! When a provider's JWKS is fetched: pure bookkeeping, so the schedule is tested with a
//! hand-driven clock (Unix seconds) and the fetching task only asks and reports.
//!
//! * Hourly after the last success (APIM's interval).
//! * On a token with an unknown `kid`, at most once per 5 minutes (APIM's limit), so a
//!   stream of forged `kid`s cannot turn the gateway into a load generator for the IdP.
//! * After a failure: 30 s later while no key set was ever loaded (the provider answers
//!   503 meanwhile, so a quick retry matters), 5 minutes later when the last good set
//!   is still serving.
//! * Single-flight: [`RefreshPlanner::try_begin`] hands out at most one [`FetchTicket`]
//!   at a time; requests meanwhile verify with the current set.
//!
//! A clock that goes backwards never blocks a refresh: any interval measured against a
//! later recorded time counts as elapsed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

pub const REFRESH_INTERVAL_SECS: u64 = 3_600;
pub const UNKNOWN_KID_INTERVAL_SECS: u64 = 300;
pub const RETRY_UNLOADED_SECS: u64 = 30;
pub const RETRY_LOADED_SECS: u64 = 300;

#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    last_success: Option<u64>,
    last_attempt: Option<u64>,
    last_failure: Option<u64>,
    last_unknown_kid: Option<u64>,
    /// An unknown `kid` asked for a fetch that has not started yet.
    kid_requested: bool,
}

#[derive(Debug, Default)]
pub struct RefreshPlanner {
    marks: Mutex<Marks>,
    in_flight: AtomicBool,
    /// Fetches that failed since this provider was built (`/metrics`).
    failures: AtomicU64,
}

/// Proof that this caller runs the one fetch in progress; dropping it (even on a
/// panic or a cancelled future) lets the next fetch start.
#[derive(Debug)]
#[must_use = "the fetch is in progress until the ticket is dropped"]
pub struct FetchTicket<'a> {
    planner: &'a RefreshPlanner,
}

impl Drop for FetchTicket<'_> {
    fn drop(&mut self) {
        self.planner.in_flight.store(false, Ordering::Release);
    }
}

fn elapsed(now: u64, since: Option<u64>, interval: u64) -> bool {
    match since {
        None => true,
        Some(at) => now < at || now - at >= interval,
    }
}

impl RefreshPlanner {
    fn marks(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True when a fetch is due at `now`: never loaded (with the retry delay after a
    /// failure), an hour after the last success, or an unknown `kid` asked for one.
    pub fn needs_refresh(&self, now: u64) -> bool {
        let marks = *self.marks();
        let retry = if marks.last_success.is_some() {
            RETRY_LOADED_SECS
        } else {
            RETRY_UNLOADED_SECS
        };
        if !elapsed(now, marks.last_failure, retry) {
            return false;
        }
        marks.kid_requested
            || marks.last_success.is_none()
            || elapsed(now, marks.last_success, REFRESH_INTERVAL_SECS)
    }

    /// A token named a `kid` the set does not have. Returns true when this asks for a
    /// fetch (at most once per [`UNKNOWN_KID_INTERVAL_SECS`]); the caller then wakes
    /// the fetching task.
    pub fn on_unknown_kid(&self, now: u64) -> bool {
        let mut marks = self.marks();
        if !elapsed(now, marks.last_unknown_kid, UNKNOWN_KID_INTERVAL_SECS) {
            return false;
        }
        marks.last_unknown_kid = Some(now);
        marks.kid_requested = true;
        true
    }

    /// Starts a fetch unless one is already running.
    pub fn try_begin(&self, now: u64) -> Option<FetchTicket<'_>> {
        self.in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        let mut marks = self.marks();
        marks.last_attempt = Some(now);
        marks.kid_requested = false;
        Some(FetchTicket { planner: self })
    }

    /// Records the outcome of the fetch `ticket` stands for.
    pub fn finish(&self, ticket: FetchTicket<'_>, now: u64, success: bool) {
        {
            let mut marks = self.marks();
            if success {
                marks.last_success = Some(now);
                marks.last_failure = None;
            } else {
                marks.last_failure = Some(now);
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(ticket);
    }

    /// When the key set was last loaded (Unix seconds); `None`: never.
    pub fn last_success(&self) -> Option<u64> {
        self.marks().last_success
    }

    /// Fetches that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Marks the set as loaded from configuration (static keys never refresh).
    pub(crate) fn loaded_at(&self, now: u64) {
        self.marks().last_success = Some(now);
    }
}

/// Fetches a provider's keys when their schedule says so (at start, hourly, on an
/// unknown `kid` at most every 5 minutes, retries after failures), until `stop`.
/// Only for providers that fetch their keys (`provider.client()` is `Some`).
pub async fn keep_keys_fresh(
    provider: std::sync::Arc<super::ProviderKeys>,
    stop: tokio_util::sync::CancellationToken,
) {
    let limits = super::FetchLimits::default();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    loop {
        let planner = provider.planner();
        if planner.needs_refresh(now())
            && let Some(ticket) = planner.try_begin(now())
        {
            let fetched = tokio::select! {
                () = stop.cancelled() => return,
                fetched = provider.refresh(&limits) => fetched,
            };
            match &fetched {
                Ok(keys) => tracing::info!(provider = provider.name(), keys, "JWT keys fetched"),
                Err(e) => tracing::warn!(
                    provider = provider.name(),
                    error = %crate::service::chain(e),
                    has_keys = provider.has_keys(),
                    "JWT key fetch failed; the last good keys stay"
                ),
            }
            planner.finish(ticket, now(), fetched.is_ok());
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = provider.refresh_requested() => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fetch_is_due_then_hourly() {
        let planner = RefreshPlanner::default();
        assert!(planner.needs_refresh(1_000));
        let ticket = planner.try_begin(1_000).unwrap();
        planner.finish(ticket, 1_000, true);
        assert!(!planner.needs_refresh(1_000));
        assert!(!planner.needs_refresh(1_000 + REFRESH_INTERVAL_SECS - 1));
        assert!(planner.needs_refresh(1_000 + REFRESH_INTERVAL_SECS));
    }

    #[test]
    fn unknown_kid_asks_at_most_once_per_five_minutes() {
        let planner = RefreshPlanner::default();
        let ticket = planner.try_begin(0).unwrap();
        planner.finish(ticket, 0, true);
        assert!(planner.on_unknown_kid(10));
        assert!(planner.needs_refresh(10));
        let ticket = planner.try_begin(10).unwrap();
        planner.finish(ticket, 11, true);
        assert!(!planner.on_unknown_kid(20), "within 5 minutes");
        assert!(!planner.on_unknown_kid(10 + UNKNOWN_KID_INTERVAL_SECS - 1));
        assert!(!planner.needs_refresh(200));
        assert!(planner.on_unknown_kid(10 + UNKNOWN_KID_INTERVAL_SECS));
        assert!(planner.needs_refresh(10 + UNKNOWN_KID_INTERVAL_SECS));
    }

    #[test]
    fn single_flight() {
        let planner = RefreshPlanner::default();
        let ticket = planner.try_begin(0).unwrap();
        assert!(planner.in_flight());
        assert!(planner.try_begin(0).is_none());
        drop(ticket);
        assert!(!planner.in_flight());
        assert!(planner.try_begin(1).is_some());
    }

    #[test]
    fn failures_retry_quickly_while_unloaded_slowly_when_stale_keys_serve() {
        let planner = RefreshPlanner::default();
        let ticket = planner.try_begin(0).unwrap();
        planner.finish(ticket, 0, false);
        assert!(!planner.needs_refresh(RETRY_UNLOADED_SECS - 1));
        assert!(planner.needs_refresh(RETRY_UNLOADED_SECS));

        let ticket = planner.try_begin(100).unwrap();
        planner.finish(ticket, 100, true);
        let later = 100 + REFRESH_INTERVAL_SECS;
        let ticket = planner.try_begin(later).unwrap();
        planner.finish(ticket, later, false);
        assert!(!planner.needs_refresh(later + RETRY_UNLOADED_SECS));
        assert!(planner.needs_refresh(later + RETRY_LOADED_SECS));
    }

    #[test]
    fn a_clock_going_back_does_not_block_refreshes() {
        let planner = RefreshPlanner::default();
        let ticket = planner.try_begin(10_000).unwrap();
        planner.finish(ticket, 10_000, true);
        assert!(planner.on_unknown_kid(10_000));
        assert!(planner.on_unknown_kid(5_000));
        assert!(planner.needs_refresh(5_000));
    }
}
