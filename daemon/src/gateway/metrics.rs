//! The gateway's request counters for `/metrics`: responses by API, status and
//! reason, a latency histogram per API, and requests sent again to its backend.
//!
//! Counting is on every request's path, so it costs three relaxed atomic
//! additions and nothing else: each API's counters ([`ApiMetrics`]) are found
//! when its backend is built (the backend holds them), statuses map to a fixed
//! set of slots, and reason codes (APIM `LastError` reasons, `&'static str`s
//! from the policies) are interned once into a small append-only table, so a
//! request never takes a lock, allocates or formats. The registry of APIs is
//! locked only when backends are built (start, reload) and when `/metrics` is
//! scraped.
//!
//! The counters of an API live as long as the daemon: a reload that rebuilds
//! the API's backend finds them again by name, and an API removed by a reload
//! keeps its last values (Prometheus counters never go back).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use crate::policy::backend_auth::Credential;

/// The status codes counted one by one; any other code is counted in its
/// class (`"2xx"`, `"4xx"`, ...).
pub const STATUS_CODES: [u16; 32] = [
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 406, 408, 409,
    410, 412, 413, 414, 415, 422, 429, 431, 500, 501, 502, 503, 504,
];
/// Labels of the class slots that follow [`STATUS_CODES`].
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const STATUS_SLOTS: usize = STATUS_CODES.len() + STATUS_CLASSES.len();

/// Upper bounds (seconds) of the latency histogram's buckets: from half a
/// millisecond (a cached token, a local backend) to the default request timeout.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const LATENCY_BUCKETS_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Distinct reason codes counted by name; more than this (none today: the
/// policies have about 40) are counted as `"other"`.
pub const MAX_REASONS: usize = 63;
/// Row 0: responses without a reason (proxied); then one row per interned
/// reason; the last row: reasons past [`MAX_REASONS`].
const REASON_ROWS: usize = MAX_REASONS + 2;
const OTHER_ROW: usize = REASON_ROWS - 1;

/// The reason codes seen so far, in the order first seen. Shared by every
/// gateway of the process: it only names rows, the counts are per API.
static REASONS: [OnceLock<&'static str>; MAX_REASONS] = [const { OnceLock::new() }; MAX_REASONS];

/// The row of `reason`: interned on first sight, without a lock (a slot is
/// written once, by whoever claims it first).
fn reason_row(reason: &'static str) -> usize {
    for (i, slot) in REASONS.iter().enumerate() {
        let found = match slot.get() {
            Some(known) => *known,
            None => *slot.get_or_init(|| reason),
        };
        if std::ptr::eq(found, reason) || found == reason {
            return i + 1;
        }
    }
    OTHER_ROW
}

fn reason_name(row: usize) -> &'static str {
    match row {
        0 => "",
        OTHER_ROW => "other",
        _ => REASONS
            .get(row - 1)
            .and_then(|slot| slot.get().copied())
            .unwrap_or("other"),
    }
}

fn status_slot(status: u16) -> usize {
    match STATUS_CODES.binary_search(&status) {
        Ok(i) => i,
        Err(_) => {
            let class = usize::from(status / 100).clamp(1, 5) - 1;
            STATUS_CODES.len() + class
        }
    }
}

fn status_label(slot: usize) -> String {
    match STATUS_CODES.get(slot) {
        Some(code) => code.to_string(),
        None => STATUS_CLASSES
            .get(slot - STATUS_CODES.len())
            .copied()
            .unwrap_or("5xx")
            .to_owned(),
    }
}

/// One API's counters (also one for requests no API matched).
#[derive(Debug)]
pub struct ApiMetrics {
    /// `REASON_ROWS` x `STATUS_SLOTS` response counts.
    responses: Box<[AtomicU64]>,
    /// Per bucket (not cumulative), the last one past every bound.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
    /// Requests sent again on a new backend connection after the reused one
    /// they went out on turned out closed.
    backend_retries: AtomicU64,
    /// The API's `backend_auth` token, if it has one to keep (a token file or
    /// OAuth2): set by its backend at each build, read at each scrape.
    credential: Mutex<Option<Weak<Credential>>>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self {
            responses: (0..REASON_ROWS * STATUS_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
            latency_sum_ns: AtomicU64::new(0),
            backend_retries: AtomicU64::new(0),
            credential: Mutex::new(None),
        }
    }
}

impl ApiMetrics {
    /// Counts one response: its status, the reason of a gateway-made error
    /// (`None` when proxied or answered by a policy without error), and the
    /// time from the request's arrival to its response head.
    pub fn record(&self, status: u16, reason: Option<&'static str>, elapsed: Duration) {
        let row = reason.map_or(0, reason_row);
        if let Some(counter) = self.responses.get(row * STATUS_SLOTS + status_slot(status)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_NS.partition_point(|&bound| bound < ns);
        if let Some(counter) = self.latency.get(bucket) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Counts a request sent again on a new backend connection.
    pub fn record_backend_retry(&self) {
        self.backend_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// The backend token the API's requests carry from now on (`None`: no
    /// `backend_auth` token), for the scrapes.
    pub(crate) fn watch_credential(&self, credential: Option<&Arc<Credential>>) {
        *self
            .credential
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = credential.map(Arc::downgrade);
    }

    fn backend_token(&self) -> Option<BackendTokenReading> {
        let credential = self
            .credential
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(Weak::upgrade)?;
        Some(BackendTokenReading {
            present: credential.authorization().is_some(),
            failures: credential.failures(),
        })
    }

    fn snapshot(&self, api: &str) -> ApiSnapshot {
        let mut responses = Vec::new();
        for (i, counter) in self.responses.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                responses.push(ResponseCount {
                    status: status_label(i % STATUS_SLOTS),
                    reason: reason_name(i / STATUS_SLOTS),
                    count: n,
                });
            }
        }
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (bound, counter) in LATENCY_BUCKETS.iter().zip(&self.latency) {
            cumulative += counter.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.latency.last().map_or(0, |c| c.load(Ordering::Relaxed));
        ApiSnapshot {
            api: api.to_owned(),
            responses,
            latency_buckets: buckets,
            latency_count: count,
            latency_sum_seconds: self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            backend_retries: self.backend_retries.load(Ordering::Relaxed),
            backend_token: self.backend_token(),
        }
    }
}

/// An API's `backend_auth` token at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendTokenReading {
    /// A token is there to send (else the API's requests get 503).
    pub present: bool,
    /// Token requests (OAuth2) or token file reads that failed.
    pub failures: u64,
}

/// Responses of one status and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseCount {
    /// A code (`"200"`) or a class for uncommon codes (`"2xx"`).
    pub status: String,
    /// APIM's reason code of a gateway-made error; `""` when proxied.
    pub reason: &'static str,
    pub count: u64,
}

/// One API's counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSnapshot {
    /// `""` for requests no API matched.
    pub api: String,
    pub responses: Vec<ResponseCount>,
    /// (upper bound in seconds, cumulative count), as Prometheus buckets.
    pub latency_buckets: Vec<(f64, u64)>,
    pub latency_count: u64,
    pub latency_sum_seconds: f64,
    /// Requests sent again on a new backend connection (the reused one was closed).
    pub backend_retries: u64,
    /// Its `backend_auth` token, for an API that keeps one.
    pub backend_token: Option<BackendTokenReading>,
}

/// Every API's counters, found by name when backends are built.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    apis: Mutex<Vec<(String, Arc<ApiMetrics>)>>,
    unrouted: ApiMetrics,
}

impl HttpMetrics {
    /// The counters of `api`, created on first use; the same ones after a reload.
    pub fn api(&self, api: &str) -> Arc<ApiMetrics> {
        let mut apis = self.apis.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, metrics)) = apis.iter().find(|(name, _)| name == api) {
            return Arc::clone(metrics);
        }
        let metrics = Arc::new(ApiMetrics::default());
        apis.push((api.to_owned(), Arc::clone(&metrics)));
        metrics
    }

    /// The counters of requests no API matched (404 `OperationNotFound`, or
    /// refused before routing).
    pub fn unrouted(&self) -> &ApiMetrics {
        &self.unrouted
    }

    /// Every API's counters now, by name; the unrouted requests under `""`.
    pub fn snapshot(&self) -> Vec<ApiSnapshot> {
        let apis: Vec<(String, Arc<ApiMetrics>)> = self
            .apis
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut all: Vec<ApiSnapshot> = apis
            .iter()
            .map(|(name, metrics)| metrics.snapshot(name))
            .collect();
        all.sort_by(|a, b| a.api.cmp(&b.api));
        all.insert(0, self.unrouted.snapshot(""));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_their_slot_or_class() {
        assert_eq!(status_label(status_slot(200)), "200");
        assert_eq!(status_label(status_slot(429)), "429");
        assert_eq!(status_label(status_slot(418)), "4xx");
        assert_eq!(status_label(status_slot(299)), "2xx");
        assert_eq!(status_label(status_slot(99)), "1xx");
        assert_eq!(status_label(status_slot(999)), "5xx");
        assert!(STATUS_CODES.is_sorted(), "binary search needs sorted codes");
    }

    #[test]
    fn responses_are_counted_by_status_and_reason() {
        let metrics = HttpMetrics::default();
        let api = metrics.api("orders");
        for _ in 0..3 {
            api.record(200, None, Duration::from_micros(300));
        }
        api.record(
            401,
            Some("SubscriptionKeyNotFound"),
            Duration::from_millis(2),
        );
        api.record(
            401,
            Some("SubscriptionKeyNotFound"),
            Duration::from_secs(30),
        );
        assert!(
            Arc::ptr_eq(&api, &metrics.api("orders")),
            "found again by name"
        );
        let all = metrics.snapshot();
        assert_eq!(all[0].api, "");
        let orders = &all[1];
        assert_eq!(orders.api, "orders");
        let count = |status: &str, reason: &str| {
            orders
                .responses
                .iter()
                .find(|r| r.status == status && r.reason == reason)
                .map_or(0, |r| r.count)
        };
        assert_eq!(count("200", ""), 3);
        assert_eq!(count("401", "SubscriptionKeyNotFound"), 2);
        assert_eq!(orders.latency_count, 5);
        assert_eq!(orders.latency_buckets[0], (0.0005, 3));
        assert_eq!(orders.latency_buckets[3], (0.005, 4));
        assert_eq!(
            orders.latency_buckets.last(),
            Some(&(10.0, 4)),
            "30 s is past the last bound"
        );
        assert!((orders.latency_sum_seconds - 30.0029).abs() < 1e-9);
    }

    #[test]
    fn reasons_are_interned_once() {
        let a = reason_row("MetricsTestReason");
        let b = reason_row(String::from("MetricsTestReason").leak());
        assert_eq!(a, b);
        assert_eq!(reason_name(a), "MetricsTestReason");
        assert_ne!(reason_row("MetricsTestOtherReason"), a);
    }
}
