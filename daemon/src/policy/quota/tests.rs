use std::fs;
use std::sync::Arc;

use super::*;

const T0: u64 = 1_700_000_000; // a multiple of 3600 plus 800 s
const HOUR: Duration = Duration::from_secs(3600);

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rampart-quota-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn calls(n: u64, period: Duration) -> Quota {
    Quota::new(Some(n), None, period, 0).unwrap()
}

#[test]
fn calls_are_counted_per_fixed_window() {
    let clock = Arc::new(ManualWallClock::new(T0));
    let q = QuotaCounters::in_memory(DEFAULT_MAX_KEYS, clock.clone());
    let quota = calls(3, HOUR);
    for i in 1..=3 {
        assert_eq!(q.check("alice", &quota).unwrap().calls, i);
    }
    let e = q.check("alice", &quota).unwrap_err();
    assert_eq!(e.kind, QuotaKind::Calls);
    // Epoch-aligned hour: T0 is 800 s into its hour.
    assert_eq!(e.retry_after, Some(Duration::from_secs(3600 - 800)));
    // Refused calls are not counted; other keys are independent.
    assert!(q.check("bob", &quota).is_ok());
    clock.advance(Duration::from_secs(2799));
    assert!(q.check("alice", &quota).is_err());
    clock.advance(Duration::from_secs(1));
    assert_eq!(q.check("alice", &quota).unwrap().calls, 1);
}

#[test]
fn anchor_sets_window_start() {
    let clock = Arc::new(ManualWallClock::new(T0));
    let q = QuotaCounters::in_memory(DEFAULT_MAX_KEYS, clock.clone());
    let quota = Quota::new(Some(1), None, HOUR, T0 - 10).unwrap();
    q.check("k", &quota).unwrap();
    assert_eq!(
        q.check("k", &quota).unwrap_err().retry_after,
        Some(Duration::from_secs(3590))
    );
}

#[test]
fn infinite_period_never_renews() {
    let clock = Arc::new(ManualWallClock::new(T0));
    let q = QuotaCounters::in_memory(DEFAULT_MAX_KEYS, clock.clone());
    let quota = calls(1, Duration::ZERO);
    q.check("k", &quota).unwrap();
    clock.advance(Duration::from_secs(10 * 365 * 86_400));
    let e = q.check("k", &quota).unwrap_err();
    assert_eq!(e.retry_after, None);
    let rej = e.rejection();
    assert!(!rej.headers.contains_key("retry-after"));
    assert_eq!(rej.message, "Out of call volume quota.");
}

#[test]
fn bandwidth_is_counted_in_kilobytes() {
    let clock = Arc::new(ManualWallClock::new(T0));
    let q = QuotaCounters::in_memory(DEFAULT_MAX_KEYS, clock.clone());
    let quota = Quota::new(None, Some(2), HOUR, 0).unwrap();
    q.check("k", &quota).unwrap();
    q.record_bytes("k", &quota, 2047);
    assert!(q.check("k", &quota).is_ok());
    q.record_bytes("k", &quota, 1);
    let e = q.check("k", &quota).unwrap_err();
    assert_eq!(e.kind, QuotaKind::Bandwidth);
    assert!(
        e.rejection()
            .message
            .starts_with("Out of bandwidth quota. Quota will be replenished in ")
    );
    assert!(Quota::new(None, None, HOUR, 0).is_err());
    assert!(Quota::new(Some(1), None, Duration::from_millis(1500), 0).is_err());
}

#[test]
fn rejection_matches_apim() {
    let e = QuotaExceeded {
        kind: QuotaKind::Calls,
        retry_after: Some(Duration::from_secs(3 * 3600 + 30 * 60 + 56)),
    };
    let rej = e.rejection();
    assert_eq!(rej.status, StatusCode::FORBIDDEN);
    assert_eq!(rej.reason, "QuotaExceeded");
    assert_eq!(rej.headers["retry-after"], "12656");
    assert_eq!(
        rej.body(),
        "{ \"statusCode\": 403, \"message\": \"Out of call volume quota. Quota will be replenished in 03:30:56.\" }"
    );
    assert_eq!(
        timespan(22 * 86_400 + 14 * 3600 + 18 * 60 + 12),
        "22.14:18:12"
    );
    assert_eq!(timespan(0), "00:00:00");
}

#[test]
fn counters_survive_restart_after_flush() {
    let dir = temp_dir("restart");
    let clock = Arc::new(ManualWallClock::new(T0));
    let quota = calls(5, HOUR);
    {
        let q = QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock.clone()).unwrap();
        for _ in 0..3 {
            q.check("alice", &quota).unwrap();
        }
        q.check("bob", &quota).unwrap();
        q.flush().unwrap();
        // Not flushed: lost on a crash (batched by design).
        q.check("alice", &quota).unwrap();
    }
    let q = QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock.clone()).unwrap();
    assert_eq!(q.check("alice", &quota).unwrap().calls, 4);
    assert_eq!(q.check("bob", &quota).unwrap().calls, 2);
    q.flush().unwrap();
    // No temp file left behind.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);

    // Down past the end of the window: the next start begins a fresh one.
    clock.advance(HOUR);
    let q = QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock.clone()).unwrap();
    assert_eq!(q.tracked_keys(), 0);
    assert_eq!(q.check("alice", &quota).unwrap().calls, 1);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flush_writes_only_when_dirty() {
    let dir = temp_dir("dirty");
    let clock = Arc::new(ManualWallClock::new(T0));
    let q = QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock).unwrap();
    q.flush().unwrap();
    assert!(!dir.join(QUOTA_JOURNAL).exists());
    q.check("k", &calls(1, HOUR)).unwrap();
    q.flush().unwrap();
    let modified = fs::metadata(dir.join(QUOTA_JOURNAL))
        .unwrap()
        .modified()
        .unwrap();
    fs::remove_file(dir.join(QUOTA_JOURNAL)).unwrap();
    q.flush().unwrap();
    assert!(
        !dir.join(QUOTA_JOURNAL).exists() && !dir.join(QUOTA_FILE).exists(),
        "clean flush wrote {modified:?}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// The bytes of the journal and the snapshot (0 for a missing file).
fn sizes(dir: &Path) -> (u64, u64) {
    let len = |name| fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    (len(QUOTA_JOURNAL), len(QUOTA_FILE))
}

#[test]
fn a_flush_writes_the_counters_that_changed_not_the_table() {
    let dir = temp_dir("journal");
    let clock = Arc::new(ManualWallClock::new(T0));
    let quota = calls(5, HOUR);
    let q = QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock.clone()).unwrap();
    // A client that sends a new counter header value each time.
    for i in 0..5_000 {
        q.check(&format!("client-{i}"), &quota).unwrap();
    }
    q.flush().unwrap();
    let (journal, snapshot) = sizes(&dir);
    assert!(
        journal > 5_000 * 40 && snapshot == 0,
        "{journal} {snapshot}"
    );
    // Then one call a second: each flush writes one line, whatever the table holds.
    for _ in 0..3 {
        q.check("client-7", &quota).unwrap();
        q.flush().unwrap();
    }
    let (grown, _) = sizes(&dir);
    assert!(grown - journal < 3 * 200, "{journal} -> {grown}");
    drop(q);
    let q = QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock.clone()).unwrap();
    assert_eq!(q.tracked_keys(), 5_000);
    assert_eq!(q.check("client-7", &quota).unwrap().calls, 5);
    assert_eq!(q.check("client-8", &quota).unwrap().calls, 2);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_journal_as_large_as_the_snapshot_is_folded_into_a_new_one() {
    let dir = temp_dir("compact");
    let clock = Arc::new(ManualWallClock::new(T0));
    let quota = calls(1_000, HOUR);
    let q = QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock.clone()).unwrap();
    let mut flushes = 0;
    // Past COMPACT_MIN_BYTES of journal, the next flush writes a snapshot.
    while sizes(&dir).1 == 0 {
        for i in 0..1_000 {
            q.check(&format!("k{i}"), &quota).unwrap();
        }
        q.flush().unwrap();
        flushes += 1;
        assert!(
            flushes < 100,
            "no snapshot after {flushes} flushes: {:?}",
            sizes(&dir)
        );
    }
    assert_eq!(sizes(&dir).0, 0, "the journal is emptied");
    q.check("k1", &quota).unwrap();
    q.flush().unwrap();
    drop(q);
    let q = QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock.clone()).unwrap();
    assert_eq!(q.tracked_keys(), 1_000);
    assert_eq!(q.check("k1", &quota).unwrap().calls, flushes + 2);
    assert_eq!(q.check("k2", &quota).unwrap().calls, flushes + 1);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_journal_line_cut_short_is_left_out_and_later_lines_stay_readable() {
    let dir = temp_dir("torn");
    let clock = Arc::new(ManualWallClock::new(T0));
    let quota = calls(5, HOUR);
    let q = QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock.clone()).unwrap();
    q.check("a", &quota).unwrap();
    q.flush().unwrap();
    drop(q);
    // A crash in the middle of an append.
    let mut journal = fs::read(dir.join(QUOTA_JOURNAL)).unwrap();
    journal.extend_from_slice(br#"{"key":"b","counter":{"wind"#);
    fs::write(dir.join(QUOTA_JOURNAL), &journal).unwrap();
    let q = QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock.clone()).unwrap();
    assert_eq!(q.tracked_keys(), 1);
    q.check("b", &quota).unwrap();
    q.flush().unwrap();
    drop(q);
    let q = QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock.clone()).unwrap();
    assert_eq!(q.check("a", &quota).unwrap().calls, 2);
    assert_eq!(q.check("b", &quota).unwrap().calls, 2);
    // A bad line before the last is corruption, not a crash.
    drop(q);
    let mut journal = b"not json\n".to_vec();
    journal.extend(fs::read(dir.join(QUOTA_JOURNAL)).unwrap());
    fs::write(dir.join(QUOTA_JOURNAL), &journal).unwrap();
    assert!(matches!(
        QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock),
        Err(QuotaError::Corrupt { .. })
    ));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn failed_flush_is_retried() {
    let dir = temp_dir("failflush");
    let clock = Arc::new(ManualWallClock::new(T0));
    let q = QuotaCounters::open(&dir.join("gone"), DEFAULT_MAX_KEYS, clock).unwrap();
    q.check("k", &calls(1, HOUR)).unwrap();
    assert!(matches!(q.flush(), Err(QuotaError::Write { .. })));
    fs::create_dir_all(dir.join("gone")).unwrap();
    q.flush().unwrap();
    assert!(dir.join("gone").join(QUOTA_FILE).exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_file_is_an_error() {
    let dir = temp_dir("corrupt");
    fs::write(dir.join(QUOTA_FILE), b"{\"version\":1,\"counters\":{\"k\":").unwrap();
    let clock = Arc::new(ManualWallClock::new(T0));
    assert!(matches!(
        QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock),
        Err(QuotaError::Corrupt { .. })
    ));
    fs::remove_dir_all(&dir).unwrap();
}

/// A file of a newer format says so (with fields this version does not know),
/// not "corrupt"; a version never written is still corrupt.
#[test]
fn a_file_of_a_newer_format_says_so() {
    let dir = temp_dir("newer");
    fs::write(
        dir.join(QUOTA_FILE),
        b"{\"version\":2,\"counters\":{},\"future\":1}",
    )
    .unwrap();
    let clock = Arc::new(ManualWallClock::new(T0));
    let err = QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, Arc::clone(&clock)).unwrap_err();
    assert!(
        matches!(
            err,
            QuotaError::NewerFormat {
                version: 2,
                known: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        QuotaCounters::<SystemClock>::verify(&dir),
        Err(QuotaError::NewerFormat { .. })
    ));
    fs::write(dir.join(QUOTA_FILE), b"{\"version\":0,\"counters\":{}}").unwrap();
    assert!(matches!(
        QuotaCounters::open(&dir, DEFAULT_MAX_KEYS, clock),
        Err(QuotaError::Corrupt { .. })
    ));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exact_under_concurrency() {
    let clock = Arc::new(ManualWallClock::new(T0));
    let q = QuotaCounters::in_memory(DEFAULT_MAX_KEYS, clock);
    let quota = calls(100, HOUR);
    let admitted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| {
                for _ in 0..20 {
                    if q.check("shared", &quota).is_ok() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::SeqCst), 100);
}

#[test]
fn distinct_keys_do_not_grow_memory_without_limit() {
    let clock = Arc::new(ManualWallClock::new(T0));
    let q = QuotaCounters::in_memory(1000, clock.clone());
    let quota = calls(10, HOUR);
    for _ in 0..5 {
        q.check("heavy", &quota).unwrap();
    }
    for i in 0..200_000 {
        q.check(&format!("k{i}"), &quota).unwrap();
        assert!(q.tracked_keys() <= 1000);
    }
    // The heavily used counter is kept; one-off keys made way.
    assert_eq!(q.check("heavy", &quota).unwrap().calls, 6);
    clock.advance(HOUR);
    let tracked = q.tracked_keys();
    assert!(tracked > 0);
    assert_eq!(q.sweep(), tracked);
    assert_eq!(q.tracked_keys(), 0);
}

#[test]
fn a_refunded_call_is_no_longer_counted_in_its_window_only() {
    let clock = Arc::new(ManualWallClock::new(T0));
    let q = QuotaCounters::in_memory(DEFAULT_MAX_KEYS, clock.clone());
    let quota = calls(2, HOUR);
    q.check("alice", &quota).unwrap();
    let second = q.check("alice", &quota).unwrap();
    q.refund("alice", &second);
    assert_eq!(q.check("alice", &quota).unwrap().calls, 2);
    assert!(q.check("alice", &quota).is_err());
    // A call of a window that has ended since takes nothing from the new one.
    let last = q.check("bob", &quota).unwrap();
    clock.advance(HOUR);
    q.check("bob", &quota).unwrap();
    q.refund("bob", &last);
    assert_eq!(q.check("bob", &quota).unwrap().calls, 2);
}
