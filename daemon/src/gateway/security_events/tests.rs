use std::io::Write;
use std::sync::{Arc, Mutex};

use super::*;

/// The formatted events logged while `f` runs, one line each.
fn logged(f: impl FnOnce()) -> Vec<String> {
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    text.lines().map(str::to_owned).collect()
}

fn rejected(src: &str, reason: &'static str, status: u16) -> Rejected<'static> {
    Rejected {
        src_ip: src.parse().unwrap(),
        reason,
        status,
        api: Some("orders"),
        subscription: None,
    }
}

#[test]
fn reasons_map_to_events() {
    assert_eq!(
        SecurityEvent::of("SubscriptionKeyNotFound"),
        Some(SecurityEvent::AuthFailed)
    );
    assert_eq!(
        SecurityEvent::of("SubscriptionKeyInvalid"),
        Some(SecurityEvent::AuthFailed)
    );
    assert_eq!(
        SecurityEvent::of(crate::policy::jwt::reason::EXPIRED),
        Some(SecurityEvent::AuthFailed)
    );
    assert_eq!(
        SecurityEvent::of(crate::policy::client_cert::reason::NOT_FOUND),
        Some(SecurityEvent::AuthFailed)
    );
    assert_eq!(
        SecurityEvent::of("RateLimitExceeded"),
        Some(SecurityEvent::RateLimited)
    );
    assert_eq!(
        SecurityEvent::of("QuotaExceeded"),
        Some(SecurityEvent::QuotaExceeded)
    );
    assert_eq!(SecurityEvent::of("OperationNotFound"), None);
    assert_eq!(SecurityEvent::of("BackendConnectionFailure"), None);
}

#[test]
fn first_rejection_is_logged_at_once_and_repeats_once_per_window() {
    let events = SecurityEvents::new();
    let t0 = Instant::now();
    let lines = logged(|| {
        for i in 0..5 {
            events.record(
                rejected("192.0.2.7", "SubscriptionKeyInvalid", 401),
                t0 + Duration::from_millis(i),
            );
        }
        // Another reason of the same source has its own window.
        events.record(rejected("192.0.2.7", "RateLimitExceeded", 429), t0);
        events.flush(t0 + Duration::from_secs(9));
    });
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains("rampart_event=\"auth_failed\""),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("src_ip=192.0.2.7"), "{}", lines[0]);
    assert!(
        lines[0].contains("reason=\"SubscriptionKeyInvalid\""),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("status=401"), "{}", lines[0]);
    assert!(lines[0].contains("api=\"orders\""), "{}", lines[0]);
    assert!(lines[0].contains("count=1"), "{}", lines[0]);
    assert!(!lines[0].contains("subscription="), "{}", lines[0]);
    assert!(
        lines[1].contains("rampart_event=\"rate_limited\""),
        "{}",
        lines[1]
    );

    // The window ends: the 4 repeats in one event; the quiet reason is forgotten.
    let lines = logged(|| events.flush(t0 + WINDOW));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("rampart_event=\"auth_failed\""),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("count=4"), "{}", lines[0]);
    assert_eq!(events.tracked(), 1);

    // Quiet for a whole window: forgotten, and the next rejection is logged at once.
    let lines = logged(|| events.flush(t0 + 2 * WINDOW));
    assert!(lines.is_empty(), "{lines:#?}");
    assert_eq!(events.tracked(), 0);
    let lines = logged(|| {
        events.record(
            rejected("192.0.2.7", "SubscriptionKeyInvalid", 401),
            t0 + 2 * WINDOW,
        );
    });
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("count=1"), "{}", lines[0]);
}

#[test]
fn a_flood_costs_one_event_per_window() {
    let events = SecurityEvents::new();
    let t0 = Instant::now();
    let lines = logged(|| {
        for ms in 0..30_000u64 {
            let now = t0 + Duration::from_millis(ms);
            events.record(rejected("2001:db8::1", "SubscriptionKeyNotFound", 401), now);
            if ms % 1000 == 0 {
                events.flush(now);
            }
        }
    });
    // The first at once, then one per 10 s window (at 10 s and 20 s).
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[1].contains("count=9999") || lines[1].contains("count=10000"),
        "{}",
        lines[1]
    );
}

#[test]
fn other_rejections_are_not_security_events() {
    let events = SecurityEvents::new();
    let lines = logged(|| {
        events.record(
            rejected("192.0.2.1", "OperationNotFound", 404),
            Instant::now(),
        );
        events.flush_all();
    });
    assert!(lines.is_empty(), "{lines:#?}");
    assert_eq!(events.tracked(), 0);
}

#[test]
fn sources_past_the_limit_are_counted_together() {
    let events = SecurityEvents::new();
    let t0 = Instant::now();
    let lines = logged(|| {
        for i in 0..(MAX_SOURCES as u32 + 10) {
            let src = IpAddr::from(std::net::Ipv4Addr::from(0xC633_0000 + i));
            events.record(
                Rejected {
                    src_ip: src,
                    ..rejected("192.0.2.1", "SubscriptionKeyNotFound", 401)
                },
                t0,
            );
        }
        events.flush(t0 + Duration::from_secs(1));
    });
    assert_eq!(lines.len(), MAX_SOURCES + 1);
    let last = lines.last().unwrap();
    assert!(
        last.contains("rampart_event=\"events_suppressed\""),
        "{last}"
    );
    assert!(last.contains("count=10"), "{last}");
}
