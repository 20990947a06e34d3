//! Rate limits (APIM `rate-limit` and `rate-limit-by-key`): calls per period per counter key.
//!
//! Two algorithms ([`Algorithm`]); both count only admitted requests, so a client hammering a
//! closed limit does not push its own retry time further away.
//!
//! **Sliding window** (the default): at most `calls` requests are admitted in *any* interval
//! of length `period`, which is APIM's documented behaviour for `rate-limit` (a sliding window
//! of `renewal-period` seconds) and what its classic tiers enforce: with 100 calls per second
//! and 400 requests spread over one second, exactly 100 pass. The period is split into
//! `SLOTS` = 16 slots of `period / 16` (rounded up to whole nanoseconds); each key keeps the
//! admitted count of the last 17 slots in a ring (the 16 that cover the last period plus the
//! oldest, partially expired one) and their running total. A request is admitted when that
//! total is below `calls`. Counting the partially expired slot whole makes the bound strict:
//! any period-long interval lies within the 17 counted slots of its last admission. The
//! price is that a call is forgotten up to one slot late, so a client sending steadily (at
//! least once per slot and at least `calls` per period) gets `calls` per 17 slots, i.e. at
//! least `calls × (1 − 1/16)` per period in the long run (about 94 %). A sparser client also
//! loses its own gap between requests: with 1 call per second sent exactly once a second,
//! every other request is refused (0 s and 1 s lie in one period-long interval). 16 slots
//! keep the loss small while the entry stays at 80 bytes (17 × `u32` counts, a `u32` total
//! and the `u64` number of the newest slot, with no padding); 32 slots would halve the loss
//! and double the memory. When refused, `retry_after` is the time until the oldest slot
//! holding admitted calls leaves the window, so at least one call (all of that slot's) frees
//! up then. A refused request changes nothing, not even the key's age.
//!
//! **Token bucket** (GCRA, the generic cell rate algorithm, kept as one timestamp per key):
//! a key may send `calls` requests at once, then one more every `period / calls`. With 100
//! calls per second and a burst of 400 requests, 100 pass, plus one per 10 ms that the burst
//! lasts, so 400 requests spread over one second admit about 200. It matches APIM's v2 tiers,
//! spreads a client's calls smoothly instead of letting a whole window's worth through and
//! then refusing until slots expire, and costs 8 bytes per key. Choose it when smoothness and
//! memory matter more than the strict "never more than `calls` in any period" bound.
//!
//! Counters live in sharded maps behind a `Mutex` each: the decision and the update are
//! one critical section, so the count is exact under any concurrency. Memory is bounded:
//! a key with nothing left to remember (a token-bucket timestamp in the past, a window whose
//! last admission was more than `period` + one slot ago) is indistinguishable from a new key
//! and is dropped on sweep, and each shard holds at most `max_keys / SHARDS` keys; when a
//! shard is full of active keys, the ones closest to idle are evicted (token bucket: the
//! earliest timestamp; sliding window: the oldest last admission, then the fewest counted
//! calls). An evicted key starts afresh: a bounded table under a flood of distinct keys is
//! worth more than exactness for those keys. Counter keys are stored as 64-bit keyed hashes,
//! so a long header value costs no more memory than a short one: a map entry is 16 bytes
//! (token bucket) or 88 bytes (sliding window).

use foldhash::quality::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::Rejection;

/// Number of independently locked shards (a power of two).
const SHARDS: usize = 64;

/// Default bound on tracked keys across all shards. At that bound a limiter's maps take about
/// 9 MB with the token bucket and about 47 MB with the sliding window (hash-table slack
/// included); memory grows with the keys actually active, not up front.
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
    /// Requests this key could still send right now (sliding window: `calls` minus the
    /// calls counted in the window, this one included).
    pub remaining: u32,
    pub limit: u32,
    /// Where the call was counted, for [`RateLimiter::refund`].
    counted: Counted,
}

/// The key's hash and the sliding-window slot (or token-bucket interval) a call
/// was counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counted {
    hash: u64,
    slot: u64,
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
    /// How long until this request would have been admitted: token bucket, exactly; sliding
    /// window, until the oldest slot holding admitted calls leaves the window (at least 1 ns).
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

/// Which algorithm a [`RateLimiter`] counts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// At most `calls` admitted in any interval of length `period` (APIM classic tiers).
    #[default]
    SlidingWindow,
    /// GCRA: a burst of `calls`, then one call per `period / calls` (APIM v2 tiers).
    TokenBucket,
}

/// Slots the sliding window splits a period into.
const SLOTS: u64 = 16;

/// Slots a sliding window keeps: the period's [`SLOTS`] plus the oldest, partially expired one.
const RING: usize = SLOTS as usize + 1;

/// Sliding-window state of one key: admitted calls per slot, 80 bytes.
///
/// Invariant: `counts` holds exactly the slots `newest - SLOTS ..= newest` (slot `s` at index
/// `s % RING`; slots before the origin count zero) and `total` is their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    /// Absolute slot number (`now / slot_len`) of the last admission.
    newest: u64,
    counts: [u32; RING],
    total: u32,
}

impl Window {
    fn new(slot: u64) -> Self {
        Self {
            newest: slot,
            counts: [0; RING],
            total: 0,
        }
    }

    fn index(slot: u64) -> usize {
        // RING is 17: the remainder always fits.
        (slot % RING as u64) as usize
    }

    /// Moves the window forward to `slot` (no-op if not newer): the slots it leaves behind
    /// are emptied. Their ring positions are exactly those of the new slots.
    fn advance(&mut self, slot: u64) {
        if slot <= self.newest {
            return;
        }
        if slot - self.newest >= RING as u64 {
            self.counts = [0; RING];
            self.total = 0;
        } else {
            for s in self.newest + 1..=slot {
                let i = Self::index(s);
                self.total -= self.counts[i];
                self.counts[i] = 0;
            }
        }
        self.newest = slot;
    }

    /// The oldest slot that still holds admitted calls.
    fn oldest_busy(&self) -> Option<u64> {
        (self.newest.saturating_sub(SLOTS)..=self.newest).find(|&s| self.counts[Self::index(s)] > 0)
    }

    /// Whether every admitted call has left the window by `slot` (the key is as good as new).
    fn idle_at(&self, slot: u64) -> bool {
        slot.saturating_sub(self.newest) > SLOTS
    }
}

/// One shard: keyed hash of the counter key -> per-key state.
/// Keys are already keyed 64-bit hashes: the map uses them as they are.
type Shard<S> = HashMap<u64, S, std::hash::BuildHasherDefault<PreHashed>>;

/// A hasher for keys that are already uniform 64-bit hashes.
#[derive(Default)]
struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // The shard took the top bits; the map's tags need them varied again.
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Sharded, bounded per-key state.
struct Table<S> {
    shards: Box<[Mutex<Shard<S>>]>,
    shard_cap: usize,
}

impl<S: Copy> Table<S> {
    fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_cap: (max_keys / SHARDS).max(1),
        }
    }

    fn lock(&self, hash: u64) -> MutexGuard<'_, Shard<S>> {
        // The top bits pick the shard; the map re-hashes the full value.
        let index = (hash >> (64 - SHARDS.trailing_zeros())) as usize;
        lock(&self.shards[index])
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Drops the keys `live` says are idle; returns how many.
    fn sweep(&self, live: impl Fn(&S) -> bool) -> usize {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|_, state| live(state));
            dropped += before - shard.len();
            if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
                shard.shrink_to_fit();
            }
        }
        dropped
    }

    /// Stores `state` for `hash`, making room first if the key is new and its shard is full.
    fn insert<K: Ord + Copy>(
        &self,
        shard: &mut Shard<S>,
        hash: u64,
        state: S,
        live: impl Fn(&S) -> bool,
        age: impl Fn(&S) -> K,
        evictions: &AtomicU64,
    ) {
        if !shard.contains_key(&hash) && shard.len() >= self.shard_cap {
            self.make_room(shard, live, age, evictions);
        }
        shard.insert(hash, state);
    }

    /// Called with a full shard: drop idle keys; if that frees less than an eighth, evict
    /// the keys with the smallest `age` (closest to idle) down to seven eighths (amortised
    /// O(1) per insert).
    fn make_room<K: Ord + Copy>(
        &self,
        shard: &mut Shard<S>,
        live: impl Fn(&S) -> bool,
        age: impl Fn(&S) -> K,
        evictions: &AtomicU64,
    ) {
        shard.retain(|_, state| live(state));
        let target = self.shard_cap - self.shard_cap / 8;
        if shard.len() <= target && shard.len() < self.shard_cap {
            return;
        }
        let excess = shard.len() - target.min(shard.len().saturating_sub(1));
        let mut ages: Vec<K> = shard.values().map(&age).collect();
        let (_, threshold, _) = ages.select_nth_unstable(excess - 1);
        let threshold = *threshold;
        let mut left = excess;
        shard.retain(|_, state| {
            if left > 0 && age(state) <= threshold {
                left -= 1;
                false
            } else {
                true
            }
        });
        evictions.fetch_add((excess - left) as u64, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn capacities(&self) -> Vec<usize> {
        self.shards.iter().map(|s| lock(s).capacity()).collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map inconsistent (one insert or retain).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The algorithm's parameters and per-key state.
enum Engine {
    SlidingWindow {
        /// Slot length in ns: `period / SLOTS`, rounded up (so `SLOTS` slots cover a period).
        slot_len: u64,
        table: Table<Window>,
    },
    TokenBucket {
        /// Emission interval: one call per `interval` ns in the long run.
        interval: u64,
        /// Burst tolerance: `calls` back-to-back calls pass.
        tolerance: u64,
        /// Theoretical arrival time (ns since origin) per key.
        table: Table<u64>,
    },
}

/// The limiter for one configured rate limit.
pub struct RateLimiter<C: Clock = MonotonicClock> {
    limit: RateLimit,
    engine: Engine,
    hasher: RandomState,
    clock: C,
    evictions: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit", &self.limit)
            .field("algorithm", &self.algorithm())
            .field("tracked_keys", &self.tracked_keys())
            .finish_non_exhaustive()
    }
}

impl RateLimiter<MonotonicClock> {
    /// A limiter with the default algorithm ([`Algorithm::SlidingWindow`]).
    pub fn new(limit: RateLimit) -> Self {
        Self::with_algorithm(limit, Algorithm::default())
    }

    pub fn with_algorithm(limit: RateLimit, algorithm: Algorithm) -> Self {
        Self::with_options(limit, algorithm, DEFAULT_MAX_KEYS, MonotonicClock::new())
    }
}

impl<C: Clock> RateLimiter<C> {
    /// The default algorithm with a chosen key bound and clock.
    pub fn with_clock(limit: RateLimit, max_keys: usize, clock: C) -> Self {
        Self::with_options(limit, Algorithm::default(), max_keys, clock)
    }

    /// `max_keys` bounds the keys tracked at once (rounded to a multiple of the shard count).
    pub fn with_options(limit: RateLimit, algorithm: Algorithm, max_keys: usize, clock: C) -> Self {
        let period = duration_nanos(limit.period);
        let engine = match algorithm {
            Algorithm::SlidingWindow => Engine::SlidingWindow {
                slot_len: period.div_ceil(SLOTS).max(1),
                table: Table::new(max_keys),
            },
            Algorithm::TokenBucket => {
                // Round the interval up so the long-run rate never exceeds the limit.
                let interval = period.div_ceil(u64::from(limit.calls)).max(1);
                Engine::TokenBucket {
                    interval,
                    tolerance: interval.saturating_mul(u64::from(limit.calls)),
                    table: Table::new(max_keys),
                }
            }
        };
        Self {
            limit,
            engine,
            hasher: RandomState::default(),
            clock,
            evictions: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.engine {
            Engine::SlidingWindow { .. } => Algorithm::SlidingWindow,
            Engine::TokenBucket { .. } => Algorithm::TokenBucket,
        }
    }

    /// Counts one call for `key` if the limit allows it.
    pub fn check(&self, key: &str) -> Result<Admitted, Throttled> {
        let hash = self.hasher.hash_one(key);
        let now = duration_nanos(self.clock.now());
        let calls = self.limit.calls;
        match &self.engine {
            Engine::SlidingWindow { slot_len, table } => {
                let slot_len = *slot_len;
                let slot = now / slot_len;
                let mut shard = table.lock(hash);
                // Work on a copy: a refused call changes nothing, not even the window's age.
                let mut window = shard.get(&hash).copied().unwrap_or(Window::new(slot));
                // A clock read that lost the race for the lock counts in the newest slot.
                window.advance(slot);
                if window.total >= calls {
                    // total >= calls >= 1, so some slot is busy.
                    let oldest = window.oldest_busy().unwrap_or(window.newest);
                    let frees_at = oldest.saturating_add(RING as u64).saturating_mul(slot_len);
                    return Err(Throttled {
                        retry_after: Duration::from_nanos(frees_at.saturating_sub(now).max(1)),
                        limit: calls,
                    });
                }
                window.counts[Window::index(window.newest)] += 1;
                window.total += 1;
                table.insert(
                    &mut shard,
                    hash,
                    window,
                    |w| !w.idle_at(slot),
                    |w| (w.newest, w.total),
                    &self.evictions,
                );
                Ok(Admitted {
                    remaining: calls - window.total,
                    limit: calls,
                    counted: Counted {
                        hash,
                        slot: window.newest,
                    },
                })
            }
            Engine::TokenBucket {
                interval,
                tolerance,
                table,
            } => {
                let (interval, tolerance) = (*interval, *tolerance);
                let mut shard = table.lock(hash);
                let tat = shard.get(&hash).copied().unwrap_or(now).max(now);
                let new_tat = tat.saturating_add(interval);
                let ahead = new_tat - now;
                if ahead > tolerance {
                    return Err(Throttled {
                        retry_after: Duration::from_nanos(ahead - tolerance),
                        limit: calls,
                    });
                }
                table.insert(
                    &mut shard,
                    hash,
                    new_tat,
                    |tat| *tat > now,
                    |tat| *tat,
                    &self.evictions,
                );
                let remaining = (tolerance - ahead) / interval;
                Ok(Admitted {
                    remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                    limit: calls,
                    counted: Counted {
                        hash,
                        slot: interval,
                    },
                })
            }
        }
    }

    /// Takes back a call [`Self::check`] admitted, when a later policy refused the
    /// request: only admitted requests count. The call is forgotten only while the
    /// window still holds it (a call that left it counts nothing any more), and a
    /// token bucket gets its interval back, which is exact whatever was admitted
    /// since (GCRA's timestamp is a sum of intervals). Calls refused meanwhile stay
    /// refused: the bound is never exceeded.
    pub fn refund(&self, admitted: &Admitted) {
        let Counted { hash, slot } = admitted.counted;
        match &self.engine {
            Engine::SlidingWindow { table, .. } => {
                let mut shard = table.lock(hash);
                if let Some(window) = shard.get_mut(&hash)
                    && slot + SLOTS >= window.newest
                {
                    let count = &mut window.counts[Window::index(slot)];
                    if *count > 0 {
                        *count -= 1;
                        window.total -= 1;
                    }
                }
            }
            Engine::TokenBucket { table, .. } => {
                let mut shard = table.lock(hash);
                if let Some(tat) = shard.get_mut(&hash) {
                    *tat = tat.saturating_sub(slot);
                }
            }
        }
    }

    /// Drops idle keys (nothing left to remember: forgetting them changes nothing).
    /// Returns how many were dropped. The daemon calls this periodically.
    pub fn sweep(&self) -> usize {
        let now = duration_nanos(self.clock.now());
        match &self.engine {
            Engine::SlidingWindow { slot_len, table } => {
                let slot = now / slot_len;
                table.sweep(|w| !w.idle_at(slot))
            }
            Engine::TokenBucket { table, .. } => table.sweep(|tat| *tat > now),
        }
    }

    /// Keys currently tracked.
    pub fn tracked_keys(&self) -> usize {
        match &self.engine {
            Engine::SlidingWindow { table, .. } => table.len(),
            Engine::TokenBucket { table, .. } => table.len(),
        }
    }

    /// Active keys evicted because their shard was full (for metrics).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn shard_capacities(&self) -> Vec<usize> {
        match &self.engine {
            Engine::SlidingWindow { table, .. } => table.capacities(),
            Engine::TokenBucket { table, .. } => table.capacities(),
        }
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
