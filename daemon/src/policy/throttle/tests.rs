use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Barrier};
use std::thread;

use super::*;

type TestLimiter = RateLimiter<Arc<ManualClock>>;

fn limiter_with(
    algorithm: Algorithm,
    calls: u32,
    period: Duration,
    max_keys: usize,
) -> (TestLimiter, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let limit = RateLimit::new(calls, period).unwrap();
    (
        RateLimiter::with_options(limit, algorithm, max_keys, clock.clone()),
        clock,
    )
}

/// The token bucket (GCRA), for the tests that assert its behaviour.
fn limiter(calls: u32, period: Duration) -> (TestLimiter, Arc<ManualClock>) {
    limiter_with(Algorithm::TokenBucket, calls, period, DEFAULT_MAX_KEYS)
}

/// The sliding window.
fn window(calls: u32, period: Duration) -> (TestLimiter, Arc<ManualClock>) {
    limiter_with(Algorithm::SlidingWindow, calls, period, DEFAULT_MAX_KEYS)
}

const ALGORITHMS: [Algorithm; 2] = [Algorithm::SlidingWindow, Algorithm::TokenBucket];

/// A seeded xorshift64*: deterministic randomness without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Hammers `key` from 32 threads until `sent` reaches `total`; returns the admissions.
fn hammer(rl: &TestLimiter, key: &str, total: usize) -> usize {
    let admitted = AtomicUsize::new(0);
    let sent = AtomicUsize::new(0);
    let barrier = Barrier::new(32);
    thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| {
                barrier.wait();
                while sent.fetch_add(1, Ordering::SeqCst) < total {
                    if rl.check(key).is_ok() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    admitted.into_inner()
}

#[test]
fn burst_of_calls_passes_then_one_per_interval() {
    let (rl, clock) = limiter(100, Duration::from_secs(1));
    for i in 0..100 {
        let a = rl.check("alice").unwrap();
        assert_eq!(a.remaining, 99 - i);
        assert_eq!(a.limit, 100);
    }
    let t = rl.check("alice").unwrap_err();
    assert_eq!(t.retry_after, Duration::from_millis(10));
    assert_eq!(t.retry_after_secs(), 1);
    // Other keys are independent.
    assert!(rl.check("bob").is_ok());
    clock.advance(Duration::from_millis(10));
    assert!(rl.check("alice").is_ok());
    assert!(rl.check("alice").is_err());
    // A full period of silence restores the whole burst.
    clock.advance(Duration::from_secs(1));
    for _ in 0..100 {
        assert!(rl.check("alice").is_ok());
    }
    assert!(rl.check("alice").is_err());
}

#[test]
fn rejected_calls_are_not_counted() {
    let (rl, clock) = limiter(5, Duration::from_secs(60));
    for _ in 0..5 {
        rl.check("k").unwrap();
    }
    for _ in 0..1000 {
        assert_eq!(
            rl.check("k").unwrap_err().retry_after,
            Duration::from_secs(12)
        );
    }
    clock.advance(Duration::from_secs(12));
    assert!(rl.check("k").is_ok());
}

#[test]
fn retry_after_rounds_up_and_message_matches_apim() {
    let (rl, clock) = limiter(5, Duration::from_secs(60));
    for _ in 0..5 {
        rl.check("k").unwrap();
    }
    clock.advance(Duration::from_millis(1500));
    let t = rl.check("k").unwrap_err();
    assert_eq!(t.retry_after, Duration::from_millis(10_500));
    assert_eq!(t.retry_after_secs(), 11);
    let rej = t.rejection(&RateLimitHeaders::default());
    assert_eq!(rej.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(rej.reason, "RateLimitExceeded");
    assert_eq!(rej.headers["retry-after"], "11");
    assert_eq!(rej.headers.len(), 1);
    assert_eq!(
        rej.body(),
        "{ \"statusCode\": 429, \"message\": \"Rate limit is exceeded. Try again in 11 seconds.\" }"
    );
}

#[test]
fn optional_count_headers() {
    let names = RateLimitHeaders::new(
        None,
        Some("X-RateLimit-Remaining"),
        Some("x-ratelimit-limit"),
    )
    .unwrap();
    let (rl, _) = limiter(3, Duration::from_secs(1));
    let h = rl.check("k").unwrap().headers(&names);
    assert_eq!(h["x-ratelimit-remaining"], "2");
    assert_eq!(h["x-ratelimit-limit"], "3");
    assert!(RateLimitHeaders::default().remaining.is_none());
    assert!(RateLimitHeaders::new(Some("bad header"), None, None).is_err());
    let custom = RateLimitHeaders::new(Some("X-Retry"), None, None).unwrap();
    rl.check("k").unwrap();
    rl.check("k").unwrap();
    let rej = rl.check("k").unwrap_err().rejection(&custom);
    assert!(rej.headers.contains_key("x-retry"));
    assert!(!rej.headers.contains_key("retry-after"));
}

#[test]
fn invalid_limits_are_refused() {
    assert!(RateLimit::new(0, Duration::from_secs(1)).is_err());
    assert!(RateLimit::new(1, Duration::ZERO).is_err());
}

/// 400 calls from 32 threads within one (frozen) second: exactly 100 pass.
#[test]
fn exact_under_concurrency() {
    for algorithm in ALGORITHMS {
        let (rl, _) = limiter_with(algorithm, 100, Duration::from_secs(1), DEFAULT_MAX_KEYS);
        assert_eq!(hammer(&rl, "shared", 400), 100, "{algorithm:?}");
    }
}

/// The same with the real clock (token bucket): 100 pass, plus at most one per 10 ms the
/// burst took.
#[test]
fn accurate_with_real_clock() {
    let limit = RateLimit::new(100, Duration::from_secs(1)).unwrap();
    let rl = RateLimiter::with_options(
        limit,
        Algorithm::TokenBucket,
        DEFAULT_MAX_KEYS,
        MonotonicClock::new(),
    );
    let admitted = AtomicUsize::new(0);
    let sent = AtomicUsize::new(0);
    let barrier = Barrier::new(32);
    let start = Instant::now();
    thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| {
                barrier.wait();
                while sent.fetch_add(1, Ordering::SeqCst) < 400 {
                    if rl.check("shared").is_ok() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let admitted = admitted.load(Ordering::SeqCst);
    let slack = (elapsed.as_millis() / 10) as usize + 1;
    assert!(admitted >= 100, "{admitted} admitted");
    assert!(
        admitted <= 100 + slack.max(2),
        "{admitted} admitted in {elapsed:?}"
    );
}

#[test]
fn idle_keys_are_swept() {
    let (rl, clock) = limiter(10, Duration::from_secs(1));
    for i in 0..1000 {
        rl.check(&format!("k{i}")).unwrap();
    }
    assert_eq!(rl.tracked_keys(), 1000);
    assert_eq!(rl.sweep(), 0);
    clock.advance(Duration::from_millis(100));
    assert_eq!(rl.sweep(), 1000);
    assert_eq!(rl.tracked_keys(), 0);
}

/// A million distinct keys at one instant (none idle) stay within the bound.
#[test]
fn a_million_keys_do_not_grow_memory_without_limit() {
    for algorithm in ALGORITHMS {
        let max_keys = 64 * 100;
        let (rl, _) = limiter_with(algorithm, 10, Duration::from_secs(60), max_keys);
        let mut key = String::new();
        for i in 0..1_000_000u32 {
            key.clear();
            std::fmt::Write::write_fmt(
                &mut key,
                format_args!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            )
            .unwrap();
            assert!(rl.check(&key).is_ok());
            if i % 100_000 == 0 {
                assert!(rl.tracked_keys() <= max_keys);
            }
        }
        let tracked = rl.tracked_keys();
        assert!(tracked <= max_keys, "{algorithm:?}: {tracked} keys tracked");
        assert!(
            tracked >= max_keys / 2,
            "{algorithm:?}: {tracked} keys tracked"
        );
        assert!(rl.evictions() >= 1_000_000 - max_keys as u64);
        // A key that is busy right now survives the flood only if it is not the closest to
        // idle; either way the map never exceeds its bound, and eviction never blocks a new key.
        for capacity in rl.shard_capacities() {
            assert!(capacity <= 4 * 100, "{algorithm:?}: capacity {capacity}");
        }
    }
}

/// A million distinct keys arriving over time (sliding window): keys idle for a period and
/// a slot are dropped, so sweeping keeps only the recent ones and nothing is evicted.
#[test]
fn sliding_window_a_million_keys_over_time_are_swept() {
    let max_keys = 64 * 1000;
    let (rl, clock) = limiter_with(
        Algorithm::SlidingWindow,
        10,
        Duration::from_secs(1),
        max_keys,
    );
    let mut key = String::new();
    for i in 0..1_000_000u32 {
        key.clear();
        std::fmt::Write::write_fmt(&mut key, format_args!("client-{i}")).unwrap();
        assert!(rl.check(&key).is_ok());
        // 10 000 new keys per second.
        clock.advance(Duration::from_micros(100));
        if i % 5_000 == 4_999 {
            rl.sweep();
            // At most the last period + slot + sweep interval of keys remain.
            assert!(rl.tracked_keys() <= 10_625 + 5_000, "{}", rl.tracked_keys());
        }
    }
    assert!(rl.tracked_keys() <= max_keys);
    assert_eq!(rl.evictions(), 0);
    // Now 100 s; the last admissions were in the slot [99.9375 s, 100 s), which stays in the
    // window until 101.0625 s - 0.0625 s = 101 s.
    clock.advance(Duration::from_secs(1) - Duration::from_nanos(1));
    rl.sweep();
    assert_eq!(
        rl.tracked_keys(),
        625,
        "the last slot's keys are still in the window"
    );
    clock.advance(Duration::from_nanos(1));
    assert_eq!(rl.sweep(), 625);
    assert_eq!(rl.tracked_keys(), 0);
    for capacity in rl.shard_capacities() {
        assert!(capacity <= 4 * 1000, "capacity {capacity}");
    }
}

#[test]
fn full_shard_keeps_the_busiest_keys() {
    let (rl, _) = limiter_with(Algorithm::TokenBucket, 10, Duration::from_secs(10), 64 * 8);
    // "busy" uses its whole burst: its timestamp is furthest in the future.
    for _ in 0..10 {
        rl.check("busy").unwrap();
    }
    for i in 0..100_000 {
        let _ = rl.check(&format!("one-off-{i}"));
    }
    assert!(rl.check("busy").is_err(), "busy key was evicted");
}

#[test]
fn sliding_window_is_the_default() {
    let limit = RateLimit::new(3, Duration::from_secs(1)).unwrap();
    assert_eq!(Algorithm::default(), Algorithm::SlidingWindow);
    assert_eq!(
        RateLimiter::new(limit).algorithm(),
        Algorithm::SlidingWindow
    );
    let rl = RateLimiter::with_clock(limit, 64, ManualClock::new());
    assert_eq!(rl.algorithm(), Algorithm::SlidingWindow);
    assert_eq!(
        RateLimiter::with_algorithm(limit, Algorithm::TokenBucket).algorithm(),
        Algorithm::TokenBucket
    );
    assert_eq!(rl.limit(), limit);
    // 17 × u32 counts, a u32 total and the u64 newest slot.
    assert_eq!(std::mem::size_of::<Window>(), 80);
}

#[test]
fn retry_after_secs_rounds_up_to_at_least_one_second() {
    let secs = |retry_after| {
        Throttled {
            retry_after,
            limit: 1,
        }
        .retry_after_secs()
    };
    assert_eq!(secs(Duration::ZERO), 1);
    assert_eq!(secs(Duration::from_nanos(1)), 1);
    assert_eq!(secs(Duration::from_secs(1)), 1);
    assert_eq!(secs(Duration::from_secs(1) + Duration::from_nanos(1)), 2);
    assert_eq!(secs(Duration::from_millis(59_500)), 60);
}

#[test]
fn optional_count_headers_sliding_window() {
    let names = RateLimitHeaders::new(None, Some("x-remaining"), Some("x-limit")).unwrap();
    let (rl, _) = window(3, Duration::from_secs(1));
    let h = rl.check("k").unwrap().headers(&names);
    assert_eq!(h["x-remaining"], "2");
    assert_eq!(h["x-limit"], "3");
    rl.check("k").unwrap();
    assert_eq!(rl.check("k").unwrap().remaining, 0);
    let rej = rl.check("k").unwrap_err().rejection(&names);
    assert_eq!(rej.headers["x-remaining"], "0");
    assert_eq!(rej.headers["retry-after"], "2");
}

/// The acceptance test's shape: 400 requests spread evenly over one second at 100 per second.
/// The sliding window admits exactly 100; the token bucket admits the burst and then refills.
#[test]
fn sliding_window_400_requests_over_one_second_admit_exactly_100() {
    let (rl, clock) = window(100, Duration::from_secs(1));
    let mut admitted = 0;
    for i in 0..400u32 {
        match rl.check("client") {
            Ok(a) => {
                admitted += 1;
                assert_eq!(a.remaining, 100 - admitted);
            }
            Err(t) => {
                // Everything was admitted in slot 0, which leaves the window at 17/16 s.
                assert_eq!(
                    t.retry_after,
                    Duration::from_micros(1_062_500) - Duration::from_micros(2_500) * i
                );
            }
        }
        clock.advance(Duration::from_micros(2_500));
    }
    assert_eq!(admitted, 100);

    let (rl, clock) = limiter(100, Duration::from_secs(1));
    let mut admitted = 0;
    for _ in 0..400 {
        admitted += usize::from(rl.check("client").is_ok());
        clock.advance(Duration::from_micros(2_500));
    }
    assert!(admitted > 190, "token bucket admitted {admitted}");
}

/// 32 threads hammer one key on a frozen clock, then while time advances in 1 ms steps
/// through the rest of the second: exactly 100 pass. Once the first slot has left the
/// window, its 100 calls are available again.
#[test]
fn sliding_window_exact_under_concurrency_as_time_advances() {
    let (rl, clock) = window(100, Duration::from_secs(1));
    assert_eq!(hammer(&rl, "shared", 400), 100);

    let admitted = AtomicUsize::new(0);
    let checks = AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    if rl.check("shared").is_ok() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                    checks.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        for _ in 1..1000 {
            // Let every thread have a go at each instant.
            let seen = checks.load(Ordering::SeqCst);
            while checks.load(Ordering::SeqCst) < seen + 64 {
                thread::yield_now();
            }
            clock.advance(Duration::from_millis(1));
        }
        stop.store(true, Ordering::SeqCst);
    });
    assert_eq!(clock.now(), Duration::from_millis(999));
    assert_eq!(
        admitted.load(Ordering::SeqCst),
        0,
        "admitted within the same second"
    );

    clock.advance(Duration::from_micros(1_062_500 - 999_000) - Duration::from_nanos(1));
    assert!(rl.check("shared").is_err());
    clock.advance(Duration::from_nanos(1));
    assert_eq!(hammer(&rl, "shared", 400), 100);
}

/// The acceptance test with the real clock: 400 requests from 32 threads within one second.
#[test]
fn sliding_window_exact_with_real_clock() {
    let limit = RateLimit::new(100, Duration::from_secs(1)).unwrap();
    let rl = RateLimiter::with_algorithm(limit, Algorithm::SlidingWindow);
    let admitted = AtomicUsize::new(0);
    let sent = AtomicUsize::new(0);
    let barrier = Barrier::new(32);
    let start = Instant::now();
    thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| {
                barrier.wait();
                while sent.fetch_add(1, Ordering::SeqCst) < 400 {
                    if rl.check("shared").is_ok() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    // Nothing frees up before 17/16 s (a starved CI machine could take longer).
    if start.elapsed() < Duration::from_secs(1) {
        assert_eq!(admitted.load(Ordering::SeqCst), 100);
    }
}

/// Reference model of the sliding window from the admission times alone: a request at `now`
/// counts the admissions since the start of the slot `SLOTS` before the current one.
fn model_decision(
    admissions: &[u64],
    calls: u32,
    slot_len: u64,
    now: u64,
) -> Result<u32, Duration> {
    let from = (now / slot_len).saturating_sub(SLOTS) * slot_len;
    // Admission times are recorded in order.
    let counted = &admissions[admissions.partition_point(|&t| t < from)..];
    let counted_len = u32::try_from(counted.len()).unwrap();
    if counted_len < calls {
        return Ok(calls - counted_len - 1);
    }
    let oldest_slot = counted[0] / slot_len;
    Err(Duration::from_nanos(
        (oldest_slot + SLOTS + 1) * slot_len - now,
    ))
}

/// A long seeded random run over several limits, keys and arrival patterns: no period-long
/// interval ever holds more than `calls` admissions, and every decision (admission,
/// remaining, retry_after) matches the reference model, so the window is not stricter
/// than it needs to be either.
#[test]
fn sliding_window_never_exceeds_calls_in_any_period() {
    let configs: [(u32, u64); 7] = [
        (1, 1_000_000_000),
        (7, 1_000_000_000),
        (100, 1_000_000_000),
        (3, 999_999_999),
        (13, 1_000_001),
        (5, 160),
        (2, 17),
    ];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for (calls, period) in configs {
        let (rl, clock) = window(calls, Duration::from_nanos(period));
        let slot_len = period.div_ceil(SLOTS);
        let keys = ["a", "b", "c"];
        let mut admissions: [Vec<u64>; 3] = Default::default();
        for _ in 0..30_000 {
            let step = match rng.below(100) {
                0..50 => 0,
                50..80 => rng.below(slot_len),
                80..95 => rng.below(period + 1),
                _ => rng.below(3 * period + 1),
            };
            clock.advance(Duration::from_nanos(step));
            let now = duration_nanos(clock.now());
            let k = usize::try_from(rng.below(3)).unwrap();
            let expected = model_decision(&admissions[k], calls, slot_len, now);
            match rl.check(keys[k]) {
                Ok(a) => {
                    assert_eq!(Ok(a.remaining), expected, "{calls}/{period}ns at {now}");
                    admissions[k].push(now);
                }
                Err(t) => {
                    assert_eq!(Err(t.retry_after), expected, "{calls}/{period}ns at {now}");
                }
            }
            if rng.below(1000) == 0 {
                rl.sweep();
            }
        }
        let calls = usize::try_from(calls).unwrap();
        for times in &admissions {
            assert!(
                times.len() > 3 * calls,
                "{calls}/{period}ns: too few admissions"
            );
            for pair in times.windows(calls + 1) {
                assert!(
                    pair[calls] - pair[0] > period,
                    "{} calls within {}ns, limit {calls}/{period}ns",
                    calls + 1,
                    pair[calls] - pair[0]
                );
            }
        }
    }
}

/// A client sending steadily, at least once per slot and at least `calls` per period, gets
/// at least calls × (1 − 1/SLOTS) per period in the long run, and never more than calls per
/// period. A sparser client loses up to a slot plus its own gap per freed call.
#[test]
fn sliding_window_steady_client_gets_at_least_fifteen_sixteenths() {
    let periods = 100u64;
    let period = Duration::from_secs(1);
    for calls in [1u32, 10, 100, 1000] {
        let least = u64::from(calls).max(SLOTS);
        for rate in [least, least * 3 / 2 + 1, least * 2, least * 10] {
            let (rl, clock) = window(calls, period);
            let gap = period / u32::try_from(rate).unwrap();
            let mut admitted = 0u64;
            for _ in 0..rate * periods {
                admitted += u64::from(rl.check("steady").is_ok());
                clock.advance(gap);
            }
            let floor = u64::from(calls) * periods * (SLOTS - 1) / SLOTS;
            assert!(
                admitted >= floor,
                "{calls}/s sent at {rate}/s: {admitted} admitted in {periods} s, < {floor}"
            );
            assert!(admitted <= u64::from(calls) * periods);
        }
    }
    // One call per second sent exactly once a second: 0 s and 1 s lie in one period-long
    // (closed) interval, so every other request is refused.
    let (rl, clock) = window(1, period);
    let mut admitted = 0;
    for _ in 0..periods {
        admitted += u64::from(rl.check("sparse").is_ok());
        clock.advance(period);
    }
    assert_eq!(admitted, periods / 2);
}

/// After exhausting the window, waiting `retry_after` frees exactly the calls of the oldest
/// busy slot; one nanosecond less frees nothing.
#[test]
fn sliding_window_retry_after_frees_the_oldest_slot() {
    // Slots of 3.75 s.
    let (rl, clock) = window(5, Duration::from_secs(60));
    rl.check("k").unwrap(); // 0 s, slot 0
    clock.advance(Duration::from_secs(10));
    rl.check("k").unwrap(); // 10 s, slot 2
    clock.advance(Duration::from_secs(10));
    for _ in 0..3 {
        rl.check("k").unwrap(); // 20 s, slot 5
    }
    // Rejections change nothing.
    for _ in 0..1000 {
        let t = rl.check("k").unwrap_err();
        assert_eq!(t.retry_after, Duration::from_millis(63_750 - 20_000));
        assert_eq!(t.retry_after_secs(), 44);
    }
    let t = rl.check("k").unwrap_err();
    clock.advance(t.retry_after - Duration::from_nanos(1));
    assert_eq!(
        rl.check("k").unwrap_err().retry_after,
        Duration::from_nanos(1)
    );
    clock.advance(Duration::from_nanos(1));
    // Slot 0 held one call: exactly one more passes.
    assert_eq!(rl.check("k").unwrap().remaining, 0);
    let t = rl.check("k").unwrap_err();
    assert_eq!(t.retry_after, Duration::from_millis(71_250 - 63_750));
    clock.advance(t.retry_after);
    assert!(rl.check("k").is_ok());
    let t = rl.check("k").unwrap_err();
    assert_eq!(t.retry_after, Duration::from_millis(82_500 - 71_250));
    // Slot 5 held three calls.
    clock.advance(t.retry_after);
    for _ in 0..3 {
        assert!(rl.check("k").is_ok());
    }
    assert!(rl.check("k").is_err());
}

#[test]
fn sliding_window_idle_keys_are_swept() {
    let (rl, clock) = window(10, Duration::from_secs(1));
    for i in 0..1000 {
        rl.check(&format!("k{i}")).unwrap();
    }
    assert_eq!(rl.tracked_keys(), 1000);
    clock.advance(Duration::from_secs(1));
    // A call at 0 s still counts at 1 s (the interval [0 s, 1 s] is one period long).
    assert_eq!(rl.sweep(), 0);
    clock.advance(Duration::from_micros(62_500) - Duration::from_nanos(1));
    assert_eq!(rl.sweep(), 0);
    clock.advance(Duration::from_nanos(1));
    assert_eq!(rl.sweep(), 1000);
    assert_eq!(rl.tracked_keys(), 0);
    assert_eq!(rl.check("k0").unwrap().remaining, 9);
}

/// A full shard evicts the keys with the oldest last admission first, then those with the
/// fewest counted calls.
#[test]
fn sliding_window_full_shard_evicts_the_oldest_admissions() {
    let (rl, clock) = limiter_with(
        Algorithm::SlidingWindow,
        10,
        Duration::from_secs(10),
        64 * 8,
    );
    for _ in 0..10 {
        rl.check("old").unwrap();
    }
    clock.advance(Duration::from_secs(1));
    for _ in 0..10 {
        rl.check("busy").unwrap();
    }
    for i in 0..100_000 {
        let _ = rl.check(&format!("one-off-{i}"));
    }
    assert!(rl.evictions() > 0);
    assert!(rl.check("busy").is_err(), "busy key was evicted");
    assert!(rl.check("old").is_ok(), "old key was kept");
}

#[test]
fn a_refunded_call_frees_its_place() {
    for (rl, clock) in [
        window(2, Duration::from_secs(10)),
        limiter(2, Duration::from_secs(10)),
    ] {
        rl.check("k").unwrap();
        let second = rl.check("k").unwrap();
        assert!(rl.check("k").is_err());
        rl.refund(&second);
        let again = rl.check("k").unwrap();
        assert_eq!(again.remaining, 0);
        assert!(rl.check("k").is_err());
        // Other keys are untouched.
        rl.refund(&rl.check("other").unwrap());
        assert_eq!(rl.check("other").unwrap().remaining, 1);
        drop(clock);
    }
}

#[test]
fn a_call_refunded_after_it_left_the_window_frees_nothing() {
    let (rl, clock) = window(1, Duration::from_secs(16));
    let old = rl.check("k").unwrap();
    clock.advance(Duration::from_secs(18));
    rl.check("k").unwrap();
    rl.refund(&old);
    assert!(rl.check("k").is_err());
}
