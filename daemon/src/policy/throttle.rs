//! Rate limits (APIM `rate-limit` and `rate-limit-by-key`): calls per period per counter key.
//!
//! GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp per key):
//! a key may send `calls` requests at once, then one more every `period / calls`. Only
//! admitted requests move the timestamp, so a client hammering a closed limit does not
//! push its own retry time further away. With 100 calls per second and a burst of 400
//! requests, 100 pass, plus one per 10 ms that the burst lasts.
//!
//! Counters live in sharded maps behind a `Mutex` each: the decision and the update are
//! one critical section, so the count is exact under any concurrency. Memory is bounded:
//! a key whose timestamp is in the past is indistinguishable from a new key and is dropped
//! on sweep, and each shard holds at most `max_keys / SHARDS` keys; when a shard is full of
//! active keys, the ones closest to idle are evicted (they get a fresh bucket: a bounded
//! table under a flood of distinct keys is worth more than exactness for those keys).
//! Counter keys are stored as 64-bit keyed hashes, so a long header value costs no more
//! memory than a short one.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::Rejection;

/// Number of independently locked shards (a power of two).
const SHARDS: usize = 64;

/// Default bound on tracked keys across all shards (about 10 MB of counters at most).
pub const DEFAULT_MAX_KEYS: usize = 256 * 1024;

/// A monotonic clock. Tests use [`ManualClock`] instead of sleeping.
pub trait Clock: Send + Sync {
    /// Time since an arbitrary fixed origin; never goes backwards.
    fn now(&self) -> Duration;
}

/// The real clock: `Instant` since the limiter was built.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock moved by hand, for tests (here and in the gateway's).
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(duration_nanos(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }
}

/// `calls` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    calls: u32,
    period: Duration,
}

impl RateLimit {
    pub fn new(calls: u32, period: Duration) -> Result<Self, ThrottleError> {
        if calls == 0 || period.is_zero() {
            return Err(ThrottleError::InvalidLimit { calls, period });
        }
        Ok(Self { calls, period })
    }

    pub fn calls(&self) -> u32 {
        self.calls
    }

    pub fn period(&self) -> Duration {
        self.period
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleError {
    #[error(
        "a rate limit needs at least one call in a non-zero period (got {calls} per {period:?})"
    )]
    InvalidLimit { calls: u32, period: Duration },
    #[error("{name:?} is not a valid header name")]
    InvalidHeaderName { name: String },
}

/// What to count by (APIM's `counter-key`). The gateway turns it into the key string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterKey {
    /// The subscription's name (APIM `rate-limit`).
    Subscription,
    /// The client's address (after trusted-proxy handling).
    ClientIp,
    /// The value of a request header.
    Header(String),
    /// A claim of the verified JWT.
    Claim(String),
}

/// Response header names: APIM's `retry-after-header-name` (default `Retry-After`),
/// `remaining-calls-header-name` and `total-calls-header-name` (not sent by default).
#[derive(Debug, Clone)]
pub struct RateLimitHeaders {
    pub retry_after: HeaderName,
    pub remaining: Option<HeaderName>,
    pub total: Option<HeaderName>,
}

impl Default for RateLimitHeaders {
    fn default() -> Self {
        Self {
            retry_after: http::header::RETRY_AFTER,
            remaining: None,
            total: None,
        }
    }
}

impl RateLimitHeaders {
    /// From configured names; `None` keeps APIM's defaults.
    pub fn new(
        retry_after: Option<&str>,
        remaining: Option<&str>,
        total: Option<&str>,
    ) -> Result<Self, ThrottleError> {
        let parse = |name: &str| {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| ThrottleError::InvalidHeaderName {
                name: name.to_owned(),
            })
        };
        Ok(Self {
            retry_after: match retry_after {
                Some(n) => parse(n)?,
                None => http::header::RETRY_AFTER,
            },
            remaining: remaining.map(parse).transpose()?,
            total: total.map(parse).transpose()?,
        })
    }
}

/// An admitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Requests this key could still send right now.
    pub remaining: u32,
    pub limit: u32,
}

impl Admitted {
    /// The optional remaining/total headers for the response.
    pub fn headers(&self, names: &RateLimitHeaders) -> HeaderMap {
        let mut headers = HeaderMap::new();
        add_counts(&mut headers, names, self.remaining, self.limit);
        headers
    }
}

/// A refused request: the key is over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limit of {limit} calls exceeded; retry in {retry_after:?}")]
pub struct Throttled {
    /// When this request would have been admitted.
    pub retry_after: Duration,
    pub limit: u32,
}

impl Throttled {
    /// Whole seconds for `Retry-After`, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }

    /// APIM's 429.
    pub fn rejection(&self, names: &RateLimitHeaders) -> Rejection {
        let secs = self.retry_after_secs();
        let mut headers = HeaderMap::new();
        headers.insert(names.retry_after.clone(), HeaderValue::from(secs));
        add_counts(&mut headers, names, 0, self.limit);
        Rejection {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("Rate limit is exceeded. Try again in {secs} seconds."),
            headers,
            reason: "RateLimitExceeded",
        }
    }
}

fn add_counts(headers: &mut HeaderMap, names: &RateLimitHeaders, remaining: u32, total: u32) {
    if let Some(name) = &names.remaining {
        headers.insert(name.clone(), HeaderValue::from(remaining));
    }
    if let Some(name) = &names.total {
        headers.insert(name.clone(), HeaderValue::from(total));
    }
}

/// One shard: keyed hash of the counter key -> theoretical arrival time (ns since origin).
type Shard = HashMap<u64, u64>;

/// The limiter for one configured rate limit.
pub struct RateLimiter<C: Clock = MonotonicClock> {
    limit: RateLimit,
    /// Emission interval: one call per `interval` ns in the long run.
    interval: u64,
    /// Burst tolerance: `calls` back-to-back calls pass.
    tolerance: u64,
    shard_cap: usize,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: C,
    evictions: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit", &self.limit)
            .field("tracked_keys", &self.tracked_keys())
            .finish_non_exhaustive()
    }
}

impl RateLimiter<MonotonicClock> {
    pub fn new(limit: RateLimit) -> Self {
        Self::with_clock(limit, DEFAULT_MAX_KEYS, MonotonicClock::new())
    }
}

impl<C: Clock> RateLimiter<C> {
    /// `max_keys` bounds the keys tracked at once (rounded to a multiple of the shard count).
    pub fn with_clock(limit: RateLimit, max_keys: usize, clock: C) -> Self {
        let period = duration_nanos(limit.period);
        // Round the interval up so the long-run rate never exceeds the limit.
        let interval = period.div_ceil(u64::from(limit.calls)).max(1);
        let tolerance = interval.saturating_mul(u64::from(limit.calls));
        Self {
            limit,
            interval,
            tolerance,
            shard_cap: (max_keys / SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: RandomState::new(),
            clock,
            evictions: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Counts one call for `key` if the limit allows it.
    pub fn check(&self, key: &str) -> Result<Admitted, Throttled> {
        let hash = self.hasher.hash_one(key);
        let now = duration_nanos(self.clock.now());
        let mut shard = self.shard(hash);
        let tat = shard.get(&hash).copied().unwrap_or(now).max(now);
        let new_tat = tat.saturating_add(self.interval);
        let ahead = new_tat - now;
        if ahead > self.tolerance {
            return Err(Throttled {
                retry_after: Duration::from_nanos(ahead - self.tolerance),
                limit: self.limit.calls,
            });
        }
        if !shard.contains_key(&hash) && shard.len() >= self.shard_cap {
            self.make_room(&mut shard, now);
        }
        shard.insert(hash, new_tat);
        let remaining = (self.tolerance - ahead) / self.interval;
        Ok(Admitted {
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            limit: self.limit.calls,
        })
    }

    /// Drops idle keys (their bucket is full again, so forgetting them changes nothing).
    /// Returns how many were dropped. The daemon calls this periodically.
    pub fn sweep(&self) -> usize {
        let now = duration_nanos(self.clock.now());
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.len();
            shard.retain(|_, tat| *tat > now);
            dropped += before - shard.len();
            if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
                shard.shrink_to_fit();
            }
        }
        dropped
    }

    /// Keys currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Active keys evicted because their shard was full (for metrics).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // The top bits pick the shard; the map re-hashes the full value.
        let index = (hash >> (64 - SHARDS.trailing_zeros())) as usize;
        // A panic while holding the lock cannot leave the map inconsistent (one insert).
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Called with a full shard: drop idle keys; if that frees less than an eighth, evict
    /// the keys closest to idle down to seven eighths (amortised O(1) per insert).
    fn make_room(&self, shard: &mut Shard, now: u64) {
        shard.retain(|_, tat| *tat > now);
        let target = self.shard_cap - self.shard_cap / 8;
        if shard.len() <= target && shard.len() < self.shard_cap {
            return;
        }
        let excess = shard.len() - target.min(shard.len().saturating_sub(1));
        let mut tats: Vec<u64> = shard.values().copied().collect();
        let (_, threshold, _) = tats.select_nth_unstable(excess - 1);
        let threshold = *threshold;
        let mut left = excess;
        shard.retain(|_, tat| {
            if left > 0 && *tat <= threshold {
                left -= 1;
                false
            } else {
                true
            }
        });
        self.evictions
            .fetch_add((excess - left) as u64, Ordering::Relaxed);
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
