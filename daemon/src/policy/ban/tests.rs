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
            net: IpNet::from(source),
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
    assert_eq!(bans[0].1.net, net("2001:db8::/64"));
    assert_eq!(
        bans[0].1.reason,
        "50 rate-limit rejections within 60 s from addresses in 2001:db8::/64 \
         (last: RateLimitExceeded, from 2001:db8::7)"
    );
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

/// The `i`-th address of `prefix` (a /64 here), counted from its last bits.
fn nth(prefix: &str, i: u32) -> IpAddr {
    let base: Ipv6Addr = prefix.parse().unwrap();
    IpAddr::V6(Ipv6Addr::from(u128::from(base) + u128::from(i) * 0x1_0001))
}

#[test]
fn an_ipv6_client_that_changes_address_is_counted_and_banned_by_its_prefix() {
    let tracker = BanTracker::new(settings(20, 50));
    let t0 = Instant::now();
    // Twenty addresses of one /64, one failure each: the twentieth bans the /64.
    let mut bans = Vec::new();
    for i in 0..20 {
        bans.extend(tracker.record(nth("2001:db8:1:2::", i), AUTH, t0 + i * SECOND));
    }
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].net, net("2001:db8:1:2::/64"));
    assert_eq!(bans[0].source, nth("2001:db8:1:2::", 19));
    assert_eq!(
        bans[0].reason,
        "20 authentication failures within 60 s from addresses in 2001:db8:1:2::/64 \
         (last: SubscriptionKeyInvalid, from 2001:db8:1:2::13:13)"
    );
    assert_eq!(tracker.tracked(), 1, "one source, not twenty");
    // While the prefix is banned, none of its addresses counts.
    assert!(
        fail(&tracker, nth("2001:db8:1:2::", 99), AUTH, 40, t0)
            .0
            .is_empty()
    );
    // The next /64 is another client.
    let (bans, _) = fail(&tracker, ip("2001:db8:1:3::1"), AUTH, 19, t0);
    assert!(bans.is_empty());

    // IPv4 stays per address: twenty addresses of one /24 ban nothing.
    for i in 0..20u32 {
        let source = IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i));
        assert!(tracker.record(source, AUTH, t0).is_none());
    }
}

#[test]
fn the_ipv6_prefix_is_configurable_and_128_counts_per_address() {
    let tracker = BanTracker::new(AutobanSettings {
        ipv6_prefix: 128,
        ..settings(3, 3)
    });
    let t0 = Instant::now();
    for i in 0..10 {
        assert!(tracker.record(nth("2001:db8::", i), AUTH, t0).is_none());
    }
    let (bans, _) = fail(&tracker, ip("2001:db8::beef"), AUTH, 3, t0);
    assert_eq!(bans[0].1.net, net("2001:db8::beef/128"));
    assert_eq!(
        bans[0].1.reason,
        "3 authentication failures within 60 s (last: SubscriptionKeyInvalid)"
    );

    // A /56: one failure from each of three /64s of it bans the /56.
    tracker.set_settings(AutobanSettings {
        ipv6_prefix: 56,
        ..settings(3, 3)
    });
    let sources = [
        "2001:db8:7:100::1",
        "2001:db8:7:1aa::1",
        "2001:db8:7:1ff::9",
    ];
    let bans: Vec<_> = (sources.iter())
        .filter_map(|s| tracker.record(ip(s), AUTH, t0))
        .collect();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].net, net("2001:db8:7:100::/56"));
}

#[test]
fn source_net_is_the_address_or_its_ipv6_prefix() {
    assert_eq!(source_net(ip("192.0.2.7"), 64), net("192.0.2.7/32"));
    assert_eq!(
        source_net(ip("::ffff:192.0.2.7"), 64),
        net("192.0.2.7/32"),
        "an IPv4-mapped address is the IPv4 address"
    );
    assert_eq!(
        source_net(ip("2001:db8:1:2:3:4:5:6"), 64),
        net("2001:db8:1:2::/64")
    );
    assert_eq!(
        source_net(ip("2001:db8:1:2:3:4:5:6"), 80),
        net("2001:db8:1:2:3::/80")
    );
    assert_eq!(
        source_net(ip("2001:db8:1:2:3:4:5:6"), 128),
        net("2001:db8:1:2:3:4:5:6/128")
    );
    assert_eq!(source_net(ip("2001:db8:1:2::9"), 32), net("2001:db8::/32"));
    assert_eq!(net_text(&net("2001:db8::9/128")), "2001:db8::9");
    assert_eq!(net_text(&net("192.0.2.7/32")), "192.0.2.7");
    assert_eq!(net_text(&net("2001:db8::/64")), "2001:db8::/64");
}

#[test]
fn spare_narrows_a_prefix_around_the_networks_it_must_not_cover() {
    let prefix = net("2001:db8:1:2::/64");
    let source = ip("2001:db8:1:2:8000::1");
    assert_eq!(spare(prefix, source, &[]), Some(prefix));
    assert_eq!(
        spare(
            prefix,
            source,
            &[net("2001:db8:1:3::/64"), net("10.0.0.0/8")]
        ),
        Some(prefix),
        "nothing to spare inside"
    );
    // A proxy in the lower half: the ban is the upper half.
    assert_eq!(
        spare(prefix, source, &[net("2001:db8:1:2::10/128")]),
        Some(net("2001:db8:1:2:8000::/65"))
    );
    // A proxy next to the source: the ban shrinks down to the address.
    assert_eq!(
        spare(prefix, source, &[net("2001:db8:1:2:8000::/127")]),
        None,
        "the /127 holds the source itself"
    );
    assert_eq!(
        spare(prefix, source, &[net("2001:db8:1:2:8000::/128")]),
        Some(net("2001:db8:1:2:8000::1/128"))
    );
    // A network around the whole prefix (the source is in it): nothing to ban.
    assert_eq!(spare(prefix, source, &[net("2001:db8::/32")]), None);
    // IPv4: an address, spared or not.
    assert_eq!(
        spare(net("192.0.2.7/32"), ip("192.0.2.7"), &[net("192.0.2.8/32")]),
        Some(net("192.0.2.7/32"))
    );
}

#[test]
fn a_lifted_prefix_ban_counts_its_addresses_again_at_once() {
    let tracker = BanTracker::new(settings(3, 3));
    let t0 = Instant::now();
    let (bans, now) = fail(&tracker, ip("2001:db8:5::1"), AUTH, 3, t0);
    assert_eq!(bans[0].1.net, net("2001:db8:5::/64"));
    assert!(
        fail(&tracker, ip("2001:db8:5::2"), AUTH, 3, now)
            .0
            .is_empty()
    );
    // Lifted by hand (the /64, or an address of it): counted again.
    tracker.forget(net("2001:db8:5::/64"));
    let (bans, now) = fail(&tracker, ip("2001:db8:5::3"), AUTH, 3, now);
    assert_eq!(bans.len(), 1);
    tracker.forget(net("2001:db8:5::3/128"));
    assert_eq!(fail(&tracker, ip("2001:db8:5::4"), AUTH, 3, now).0.len(), 1);
    // A wider network is not a source: nothing is forgotten.
    tracker.forget(net("2001:db8::/32"));
    assert!(
        fail(&tracker, ip("2001:db8:5::5"), AUTH, 3, now)
            .0
            .is_empty()
    );
    tracker.forget(net("192.0.2.0/24"));
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
    assert_eq!(bans[0].1.net, net("192.0.2.9/32"));
    // An exempt address inside a prefix is not counted; the prefix's other
    // addresses are (the kernel lets a bypassed address through a deny prefix).
    tracker.set_exempt(vec![net("2001:db8:2::5/128")]);
    assert!(
        fail(&tracker, ip("2001:db8:2::5"), AUTH, 10, t0)
            .0
            .is_empty()
    );
    let (bans, _) = fail(&tracker, ip("2001:db8:2::6"), AUTH, 2, t0);
    assert_eq!(bans[0].1.net, net("2001:db8:2::/64"));

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
        // One per /64: each its own source.
        let source = IpAddr::V6(Ipv6Addr::from(
            0x2001_0db8_0000_0000_0000_0000_0000_0000 + (u128::from(i) << 64),
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

#[test]
fn the_ban_target_spares_proxies_and_prefix_bans_are_bounded() {
    let tracker = BanTracker::new(settings(1, 1));
    let t0 = Instant::now();
    let ban = tracker.record(ip("2001:db8:1:2::99"), AUTH, t0).unwrap();
    let reason = "1 authentication failure within 60 s from addresses in 2001:db8:1:2::/64 \
                  (last: SubscriptionKeyInvalid, from 2001:db8:1:2::99)";
    assert_eq!(ban.reason, reason);
    assert_eq!(
        ban.target(&[], || 0),
        Some((net("2001:db8:1:2::/64"), reason.to_owned()))
    );
    // A trusted proxy in the /64: the largest prefix around the source without it.
    assert_eq!(
        ban.target(&[net("2001:db8:1:2::1:0/112")], || 0),
        Some((
            net("2001:db8:1:2::/112"),
            format!(
                "{reason}; banned as 2001:db8:1:2::/112: 2001:db8:1:2::/64 holds a trusted proxy"
            )
        ))
    );
    // At the limit of prefix bans: the address alone (the kernel's exact map).
    assert_eq!(
        ban.target(&[], || MAX_PREFIX_BANS - 1).map(|(n, _)| n),
        Some(net("2001:db8:1:2::/64"))
    );
    assert_eq!(
        ban.target(&[], || MAX_PREFIX_BANS),
        Some((
            net("2001:db8:1:2::99/128"),
            format!("{reason}; banned as 2001:db8:1:2::99 alone: 1024 prefix bans are in force")
        ))
    );
    // An address is not counted against the prefix bans.
    let v4 = tracker.record(ip("192.0.2.1"), AUTH, t0).unwrap();
    let counted = std::cell::Cell::new(false);
    let target = v4.target(&[], || {
        counted.set(true);
        MAX_PREFIX_BANS
    });
    assert_eq!(target.map(|(n, _)| n), Some(net("192.0.2.1/32")));
    assert!(!counted.get());
}
