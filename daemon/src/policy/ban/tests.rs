use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::thread;

use http::StatusCode;

use super::*;
use crate::policy::client_cert::CertRejection;
use crate::policy::jwt::JwtRejection;
use crate::policy::keys::KeyRejection;

const AUTH: &str = "SubscriptionKeyInvalid";
const RATE: &str = "RateLimitExceeded";
const SECOND: Duration = Duration::from_secs(1);

fn settings(auth_failures: u32, rate_limited: u32) -> AutobanSettings {
    AutobanSettings {
        auth_failures,
        rate_limited,
        ..AutobanSettings::default()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Records `n` failures one second apart from `start`; returns the bans and the time
/// after the last failure.
fn fail(
    tracker: &BanTracker,
    source: IpAddr,
    reason: &'static str,
    n: u32,
    start: Instant,
) -> (Vec<(u32, BanRequest)>, Instant) {
    let mut bans = Vec::new();
    let mut now = start;
    for i in 1..=n {
        if let Some(ban) = tracker.record(source, reason, now) {
            bans.push((i, ban));
        }
        now += SECOND;
    }
    (bans, now)
}

#[test]
fn the_threshold_th_failure_bans() {
    let tracker = BanTracker::new(settings(20, 50));
    let t0 = Instant::now();
    let source = ip("198.51.100.7");
    let (bans, _) = fail(&tracker, source, AUTH, 25, t0);
    assert_eq!(bans.len(), 1);
    let (nth, ban) = &bans[0];
    assert_eq!(*nth, 20);
    assert_eq!(
        ban,
        &BanRequest {
            source,
            class: FailureClass::Authentication,
            reason: "20 authentication failures within 60 s (last: SubscriptionKeyInvalid)".into(),
            ttl: Duration::from_secs(600),
        }
    );

    let source = ip("2001:db8::7");
    let (bans, _) = fail(&tracker, source, RATE, 50, t0);
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].0, 50);
    assert_eq!(bans[0].1.class, FailureClass::RateLimited);
    assert_eq!(
        bans[0].1.reason,
        "50 rate-limit rejections within 60 s (last: RateLimitExceeded)"
    );
}

#[test]
fn classes_count_separately_and_other_reasons_not_at_all() {
    let tracker = BanTracker::new(settings(3, 3));
    let t0 = Instant::now();
    let source = ip("192.0.2.1");
    for reason in [
        "QuotaExceeded",
        "RoleNotGranted",
        "OperationNotFound",
        "JwtKeysUnavailable",
    ] {
        assert_eq!(fail(&tracker, source, reason, 10, t0).0, vec![]);
    }
    assert!(tracker.record(source, AUTH, t0).is_none());
    assert!(tracker.record(source, AUTH, t0).is_none());
    assert!(tracker.record(source, RATE, t0).is_none());
    assert!(tracker.record(source, RATE, t0).is_none());
    let ban = tracker.record(source, "TokenExpired", t0).unwrap();
    assert_eq!(ban.class, FailureClass::Authentication);
}

#[test]
fn failures_older_than_the_window_slide_out() {
    let tracker = BanTracker::new(settings(3, 0));
    let t0 = Instant::now();
    let source = ip("192.0.2.1");
    // Failures at 0 s and 30 s; the third at 60 s sees only the one at 30 s.
    assert!(tracker.record(source, AUTH, t0).is_none());
    assert!(tracker.record(source, AUTH, t0 + 30 * SECOND).is_none());
    assert!(tracker.record(source, AUTH, t0 + 60 * SECOND).is_none());
    // 30 s, 60 s and 89.999 s are within one window: banned.
    let at = t0 + 89 * SECOND + Duration::from_millis(999);
    assert!(tracker.record(source, AUTH, at).is_some());

    // A steady rate just under the threshold never bans: 2 per window.
    let steady = ip("192.0.2.2");
    for i in 0..100u32 {
        assert!(tracker.record(steady, AUTH, t0 + 30 * i * SECOND).is_none());
    }
}

#[test]
fn a_ban_resets_the_counters_and_is_not_repeated_while_it_lasts() {
    let tracker = BanTracker::new(AutobanSettings {
        ban: 120 * SECOND,
        ..settings(5, 5)
    });
    let t0 = Instant::now();
    let source = ip("192.0.2.1");
    let (bans, now) = fail(&tracker, source, AUTH, 5, t0);
    assert_eq!(bans.len(), 1);
    // During the ban (the kernel drops its packets, but requests in flight still
    // fail): nothing is counted, nothing is banned.
    let (bans, _) = fail(&tracker, source, AUTH, 100, now);
    assert!(bans.is_empty());
    let ban_end = t0 + 4 * SECOND + 120 * SECOND;
    assert!(tracker.record(source, RATE, ban_end - SECOND).is_none());
    // After the ban the counts start from zero: four failures do not ban, a fifth does.
    let (bans, _) = fail(&tracker, source, AUTH, 5, ban_end);
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].0, 5);
}

#[test]
fn exempt_sources_are_never_banned() {
    let tracker = BanTracker::new(settings(2, 2));
    tracker.set_exempt(vec![
        "10.0.0.0/8".parse().unwrap(),
        "2001:db8:1::/48".parse().unwrap(),
    ]);
    let t0 = Instant::now();
    for source in ["10.1.2.3", "2001:db8:1::5", "::ffff:10.9.9.9"] {
        let (bans, _) = fail(&tracker, ip(source), AUTH, 10, t0);
        assert!(bans.is_empty(), "{source}");
    }
    assert_eq!(tracker.tracked(), 0);
    // An IPv4-mapped address is banned as the IPv4 address the kernel sees.
    let (bans, _) = fail(&tracker, ip("::ffff:192.0.2.9"), AUTH, 2, t0);
    assert_eq!(bans[0].1.source, ip("192.0.2.9"));

    // Replaced on reload: 10/8 is no longer exempt.
    tracker.set_exempt(vec!["192.0.2.0/24".parse().unwrap()]);
    let (bans, _) = fail(&tracker, ip("10.1.2.3"), AUTH, 2, t0);
    assert_eq!(bans.len(), 1);
    let (bans, _) = fail(&tracker, ip("192.0.2.10"), AUTH, 10, t0);
    assert!(bans.is_empty());
}

#[test]
fn disabled_classes_and_a_disabled_tracker_ban_nothing() {
    let t0 = Instant::now();
    let tracker = BanTracker::new(settings(0, 2));
    assert!(fail(&tracker, ip("192.0.2.1"), AUTH, 100, t0).0.is_empty());
    assert_eq!(fail(&tracker, ip("192.0.2.1"), RATE, 2, t0).0.len(), 1);

    tracker.set_settings(AutobanSettings {
        enabled: false,
        ..settings(2, 2)
    });
    assert!(fail(&tracker, ip("192.0.2.2"), AUTH, 100, t0).0.is_empty());
    assert!(fail(&tracker, ip("192.0.2.2"), RATE, 100, t0).0.is_empty());
}

#[test]
fn sweep_drops_idle_sources_but_keeps_bans_in_force() {
    let tracker = BanTracker::new(settings(3, 3));
    let t0 = Instant::now();
    tracker.record(ip("192.0.2.1"), AUTH, t0);
    fail(&tracker, ip("192.0.2.2"), AUTH, 3, t0);
    assert_eq!(tracker.tracked(), 2);
    assert_eq!(tracker.sweep(t0 + 59 * SECOND), 0);
    // The failing source is idle after a window; the banned one stays until its ban ends.
    assert_eq!(tracker.sweep(t0 + 62 * SECOND), 1);
    assert_eq!(tracker.tracked(), 1);
    assert!(
        tracker
            .record(ip("192.0.2.2"), AUTH, t0 + 300 * SECOND)
            .is_none()
    );
    assert_eq!(tracker.sweep(t0 + 2 * SECOND + 660 * SECOND), 1);
    assert_eq!(tracker.tracked(), 0);
}

#[test]
fn memory_stays_bounded_under_a_million_distinct_sources() {
    let tracker = BanTracker::new(settings(20, 50));
    let t0 = Instant::now();
    let cap = DEFAULT_MAX_TRACKED_SOURCES;
    let banned = ip("2001:db8::1");
    assert_eq!(fail(&tracker, banned, AUTH, 20, t0).0.len(), 1);
    for i in 0..1_000_000u32 {
        let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        // All within one window: none of them is idle.
        let now = t0 + Duration::from_micros(u64::from(i));
        assert!(tracker.record(source, AUTH, now).is_none());
        if i % 100_000 == 0 {
            assert!(tracker.tracked() <= cap, "{} at {i}", tracker.tracked());
        }
    }
    assert!(tracker.tracked() <= cap);
    assert!(tracker.tracked() > cap / 2);
    assert!(tracker.evictions() >= 900_000);
    // The source under a ban was evicted last: it is still not banned twice.
    assert!(
        fail(&tracker, banned, AUTH, 40, t0 + 2 * SECOND)
            .0
            .is_empty()
    );
}

#[test]
fn eviction_prefers_the_least_recently_seen() {
    // 64 shards of 16.
    let tracker = BanTracker::new(AutobanSettings {
        max_tracked_sources: 1024,
        ..settings(3, MAX_THRESHOLD)
    });
    let t0 = Instant::now();
    // One failure per millisecond: 20 s, within one window.
    let recent = ip("192.0.2.1");
    tracker.record(recent, AUTH, t0);
    tracker.record(recent, AUTH, t0);
    for i in 0..20_000u32 {
        let source = IpAddr::V6(Ipv6Addr::from(
            0x2001_0db8_0000_0000_0000_0000_0000_0000 + u128::from(i),
        ));
        tracker.record(source, AUTH, t0 + Duration::from_millis(u64::from(i)));
        if i % 25 == 0 {
            // Seen again and again (800 rate-limit rejections, under their threshold):
            // never the least recent in its shard.
            tracker.record(recent, RATE, t0 + Duration::from_millis(u64::from(i)));
        }
    }
    assert!(tracker.tracked() <= 1024);
    // Its two failures are still counted: the third bans.
    assert!(tracker.record(recent, AUTH, t0 + 20 * SECOND).is_some());
}

#[test]
fn concurrent_failures_ban_each_source_exactly_once() {
    let tracker = Arc::new(BanTracker::new(settings(20, 50)));
    let t0 = Instant::now();
    let sources: Arc<Vec<IpAddr>> = Arc::new(
        (0..200u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i)))
            .collect(),
    );
    let threads: Vec<_> = (0..8usize)
        .map(|t| {
            let tracker = Arc::clone(&tracker);
            let sources = Arc::clone(&sources);
            thread::spawn(move || {
                let mut bans = Vec::new();
                // 30 rounds over every source, each thread in its own order, both classes:
                // 160 authentication failures and 80 rate-limit rejections per source,
                // all within one window.
                for round in 0..30u64 {
                    for i in 0..sources.len() {
                        let source = sources[(i * 7 + t * 31) % sources.len()];
                        let reason = if round % 3 == 0 { RATE } else { AUTH };
                        let now = t0 + Duration::from_millis(round);
                        bans.extend(tracker.record(source, reason, now));
                    }
                }
                bans
            })
        })
        .collect();
    let mut per_source: HashMap<IpAddr, usize> = HashMap::new();
    for thread in threads {
        for ban in thread.join().unwrap() {
            *per_source.entry(ban.source).or_default() += 1;
        }
    }
    assert_eq!(per_source.len(), sources.len());
    assert!(per_source.values().all(|&n| n == 1), "{per_source:?}");
}

#[test]
fn reason_codes_of_the_policies_are_classified() {
    let auth = [
        KeyRejection::Missing.reason(),
        KeyRejection::Unknown.reason(),
        KeyRejection::OutOfScope.reason(),
        JwtRejection::NotPresent.reason(),
        JwtRejection::Expired {
            exp: 0,
            now: 0,
            skew: 0,
        }
        .reason(),
        JwtRejection::SignatureInvalid { tried: 1 }.reason(),
        JwtRejection::AudienceNotAllowed.reason(),
        JwtRejection::ClaimsMissing { names: vec![] }.reason(),
        CertRejection::Missing.reason(),
        CertRejection::Expired.reason(),
        CertRejection::IdentityNotMatched.reason(),
    ];
    for reason in auth {
        assert_eq!(
            FailureClass::of(reason),
            Some(FailureClass::Authentication),
            "{reason}"
        );
    }
    let throttled = crate::policy::throttle::Throttled {
        retry_after: SECOND,
        limit: 10,
    };
    let names = crate::policy::throttle::RateLimitHeaders::default();
    let rejection = throttled.rejection(&names);
    assert_eq!(rejection.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        FailureClass::of(rejection.reason),
        Some(FailureClass::RateLimited)
    );
    // The identity provider being down is not the client's failure.
    assert_eq!(
        FailureClass::of(JwtRejection::KeysUnavailable.reason()),
        None
    );
    assert_eq!(FailureClass::of("QuotaExceeded"), None);
    assert_eq!(FailureClass::of("RoleNotGranted"), None);
}

#[test]
fn age_handles_wrapping_and_a_clock_slightly_behind() {
    let now = u64::from(u32::MAX) + 1_000;
    assert_eq!(age(now, u32::MAX - 9), 1_009);
    assert_eq!(age(1_000, 1_500), 0);
    assert_eq!(age(5_000, 1_000), 4_000);
}
