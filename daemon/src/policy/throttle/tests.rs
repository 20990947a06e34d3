use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Barrier};
use std::thread;

use super::*;

fn limiter(calls: u32, period: Duration) -> (RateLimiter<Arc<ManualClock>>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let limit = RateLimit::new(calls, period).unwrap();
    (
        RateLimiter::with_clock(limit, DEFAULT_MAX_KEYS, clock.clone()),
        clock,
    )
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
    let (rl, _) = limiter(100, Duration::from_secs(1));
    let admitted = AtomicUsize::new(0);
    let sent = AtomicUsize::new(0);
    let barrier = Barrier::new(32);
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
    assert_eq!(admitted.load(Ordering::SeqCst), 100);
}

/// The same with the real clock: 100 pass, plus at most one per 10 ms the burst took.
#[test]
fn accurate_with_real_clock() {
    let limit = RateLimit::new(100, Duration::from_secs(1)).unwrap();
    let rl = RateLimiter::with_clock(limit, DEFAULT_MAX_KEYS, MonotonicClock::new());
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
    let clock = Arc::new(ManualClock::new());
    let limit = RateLimit::new(10, Duration::from_secs(60)).unwrap();
    let max_keys = 64 * 100;
    let rl = RateLimiter::with_clock(limit, max_keys, clock.clone());
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
    assert!(tracked <= max_keys, "{tracked} keys tracked");
    assert!(tracked >= max_keys / 2, "{tracked} keys tracked");
    assert!(rl.evictions() >= 1_000_000 - max_keys as u64);
    // A key that is busy right now survives the flood only if it is not the closest to idle;
    // either way the map never exceeds its bound, and eviction never blocks a new key.
    for s in rl.shards.iter() {
        let s = s.lock().unwrap();
        assert!(s.capacity() <= 4 * 100, "capacity {}", s.capacity());
    }
}

#[test]
fn full_shard_keeps_the_busiest_keys() {
    let clock = Arc::new(ManualClock::new());
    let limit = RateLimit::new(10, Duration::from_secs(10)).unwrap();
    let rl = RateLimiter::with_clock(limit, 64 * 8, clock.clone());
    // "busy" uses its whole burst: its timestamp is furthest in the future.
    for _ in 0..10 {
        rl.check("busy").unwrap();
    }
    for i in 0..100_000 {
        let _ = rl.check(&format!("one-off-{i}"));
    }
    assert!(rl.check("busy").is_err(), "busy key was evicted");
}
