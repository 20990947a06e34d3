use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::policy::quota::ManualWallClock;

mod storage;

const T0: u64 = 1_700_000_000;

type Store = StateStore<Arc<ManualWallClock>>;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rampart-state-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    /// The state directory inside (created by the store).
    fn state(&self) -> PathBuf {
        self.0.join("state")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &Path) -> Store {
    open_at(dir, T0)
}

fn open_at(dir: &Path, now: u64) -> Store {
    // The journal's lock belongs to its open file description: a child process that
    // another test is spawning (mount, umount) holds a copy of every descriptor until it
    // execs, so a store just dropped can still be locked for a moment.
    for _ in 0..100 {
        match StateStore::open_with_clock(dir, Arc::new(ManualWallClock::new(now))) {
            Err(StateError::Locked { .. }) => std::thread::sleep(Duration::from_millis(10)),
            other => return other.unwrap(),
        }
    }
    panic!("{} stays locked", dir.display());
}

/// The error of opening `dir` (waiting out a lock as [`open_at`] does).
fn open_err(dir: &Path) -> StateError {
    for _ in 0..100 {
        match StateStore::open(dir) {
            Err(StateError::Locked { .. }) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return e,
            Ok(_) => panic!("{} opened", dir.display()),
        }
    }
    panic!("{} stays locked", dir.display());
}

fn entry(list: ListKind, net: &str, origin: EntryOrigin) -> StoredEntry {
    StoredEntry {
        list,
        net: net.parse().unwrap(),
        origin,
        expires_at: None,
        comment: None,
        added_by: Some(1000),
        added_at: T0,
        reason: None,
    }
}

fn deny(net: &str) -> StoredEntry {
    entry(ListKind::Deny, net, EntryOrigin::Operator)
}

fn codes(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|c| (*c).to_owned()).collect()
}

/// A mix of every kind of change, one batch per element.
fn sample_batches() -> Vec<Vec<Change>> {
    let mut ban = entry(ListKind::Deny, "198.51.100.7/32", EntryOrigin::Auto);
    ban.expires_at = Some(T0 + 600);
    ban.reason = Some("20 authentication failures within 60 s".into());
    let mut commented = entry(ListKind::Allow, "203.0.113.0/24", EntryOrigin::Operator);
    commented.comment = Some("partner \"quoted\"\nline".into());
    vec![
        vec![Change::Add(vec![
            deny("192.0.2.1/32"),
            deny("2001:db8::/32"),
        ])],
        vec![
            Change::Add(vec![ban, commented]),
            Change::SetCountries(CountryPolicyState::Block(codes(&["ru", "KP"]))),
        ],
        vec![Change::Remove(vec![(
            ListKind::Deny,
            "192.0.2.1/32".parse().unwrap(),
        )])],
        vec![Change::Replace {
            list: ListKind::Bypass,
            origin: EntryOrigin::Operator,
            // Host bits are cleared: 10.1.2.3/8 is 10.0.0.0/8.
            entries: vec![entry(ListKind::Bypass, "10.1.2.3/8", EntryOrigin::Operator)],
        }],
        vec![Change::SetGeo(GeoState {
            source: "/srv/geo/dbip.csv".into(),
            loaded_at: T0,
        })],
        vec![Change::SetCountries(CountryPolicyState::AllowOnly {
            countries: codes(&["de", "fr"]),
            allow_unknown: true,
        })],
    ]
}

fn commit_all(store: &mut Store, batches: &[Vec<Change>]) {
    for batch in batches {
        store.commit(batch).unwrap();
    }
}

fn journal_bytes(dir: &Path) -> Vec<u8> {
    fs::read(dir.join(JOURNAL_FILE)).unwrap()
}

/// The journal's set-aside copies in `dir`, by name, with their contents.
fn set_aside(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter_map(|e| {
            let name = e.file_name().into_string().unwrap();
            name.starts_with("journal.log.damaged-")
                .then(|| (name, fs::read(e.path()).unwrap()))
        })
        .collect()
}

#[test]
fn replay_equals_the_acknowledged_changes() {
    let tmp = TempDir::new("replay");
    let mut store = open(&tmp.state());
    assert_eq!(store.state(), &State::default());
    commit_all(&mut store, &sample_batches());
    let expected = store.state().clone();
    assert_eq!(store.seq(), 6);
    assert_eq!(expected.entries.len(), 4);
    assert!(
        expected
            .get(ListKind::Deny, &"192.0.2.1/32".parse().unwrap())
            .is_none()
    );
    let bypass = expected
        .get(ListKind::Bypass, &"10.0.0.0/8".parse().unwrap())
        .unwrap();
    assert_eq!(bypass.net, "10.0.0.0/8".parse::<IpNet>().unwrap());
    assert_eq!(
        expected.countries,
        Some(CountryPolicyState::AllowOnly {
            countries: codes(&["de", "fr"]),
            allow_unknown: true
        })
    );
    drop(store);

    let store = open(&tmp.state());
    assert_eq!(store.state(), &expected);
    assert_eq!(store.seq(), 6);
    // Country codes are kept in lower case.
    assert_eq!(
        sample_batches()[1][1],
        Change::SetCountries(CountryPolicyState::Block(codes(&["ru", "KP"])))
    );
}

#[test]
fn every_line_of_the_journal_is_a_checksummed_record() {
    let tmp = TempDir::new("format");
    let mut store = open(&tmp.state());
    commit_all(&mut store, &sample_batches()[..2]);
    let text = String::from_utf8(journal_bytes(&tmp.state())).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let (crc, json) = lines[0].split_once(' ').unwrap();
    assert_eq!(crc, format!("{:08x}", crc32fast::hash(json.as_bytes())));
    assert_eq!(
        json,
        r#"{"seq":1,"changes":[{"add":[{"list":"deny","net":"192.0.2.1/32","origin":"operator","added_by":1000,"added_at":1700000000},{"list":"deny","net":"2001:db8::/32","origin":"operator","added_by":1000,"added_at":1700000000}]}]}"#
    );
    assert!(lines[1].contains(r#""seq":2"#));
}

#[test]
fn a_torn_last_record_is_dropped_at_every_cut() {
    let tmp = TempDir::new("torn");
    let batches = sample_batches();
    let mut store = open(&tmp.state());
    commit_all(&mut store, &batches[..3]);
    let before = store.state().clone();
    let good = journal_bytes(&tmp.state());
    commit_all(&mut store, &batches[3..4]);
    let full = journal_bytes(&tmp.state());
    drop(store);
    assert!(full.len() > good.len() + 50);

    for cut in good.len()..full.len() {
        let case = TempDir::new("torn-case");
        fs::create_dir_all(case.state()).unwrap();
        fs::write(case.state().join(JOURNAL_FILE), &full[..cut]).unwrap();
        let mut store = open(&case.state());
        assert_eq!(store.state(), &before, "cut at byte {cut}");
        assert_eq!(store.seq(), 3);
        // The file is cut back to the good prefix, so later records follow good ones.
        assert_eq!(journal_bytes(&case.state()), good, "cut at byte {cut}");
        // The dropped bytes are kept beside the journal, named after record 4.
        let expected: BTreeMap<String, Vec<u8>> = if cut == good.len() {
            BTreeMap::new()
        } else {
            BTreeMap::from([(
                "journal.log.damaged-4".into(),
                full[good.len()..cut].to_vec(),
            )])
        };
        assert_eq!(set_aside(&case.state()), expected, "cut at byte {cut}");
        store.commit(&batches[4]).unwrap();
        drop(store);
        assert_eq!(open(&case.state()).seq(), 4, "cut at byte {cut}");
    }
}

#[test]
fn a_last_record_with_zeroed_bytes_is_set_aside_and_dropped() {
    let tmp = TempDir::new("torn-crc");
    let mut store = open(&tmp.state());
    commit_all(&mut store, &sample_batches()[..2]);
    let before = store.state().clone();
    let good = journal_bytes(&tmp.state());
    commit_all(&mut store, &sample_batches()[2..3]);
    drop(store);
    // Whole length durable, some block not: bytes of the last line are zeros.
    let mut bytes = journal_bytes(&tmp.state());
    let last = bytes.len() - 10;
    bytes[last - 20..last].fill(0);
    fs::write(tmp.state().join(JOURNAL_FILE), &bytes).unwrap();
    let mut store = open(&tmp.state());
    assert_eq!(store.state(), &before);
    assert_eq!(journal_bytes(&tmp.state()), good);
    let copy = tmp.state().join("journal.log.damaged-3");
    assert_eq!(fs::read(&copy).unwrap(), &bytes[good.len()..]);
    assert_eq!(
        fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The next record takes sequence number 3; torn again, its copy does not
    // replace the first one.
    commit_all(&mut store, &sample_batches()[2..3]);
    drop(store);
    let mut again = journal_bytes(&tmp.state());
    again.truncate(again.len() - 5);
    fs::write(tmp.state().join(JOURNAL_FILE), &again).unwrap();
    let store = open(&tmp.state());
    assert_eq!(store.state(), &before);
    assert_eq!(
        set_aside(&tmp.state()),
        BTreeMap::from([
            ("journal.log.damaged-3".into(), bytes[good.len()..].to_vec()),
            (
                "journal.log.damaged-3.1".into(),
                again[good.len()..].to_vec()
            ),
        ])
    );
}

#[test]
fn a_complete_last_record_failing_its_checksum_refuses_to_open() {
    let tmp = TempDir::new("last-crc");
    let mut store = open(&tmp.state());
    commit_all(&mut store, &sample_batches()[..3]);
    drop(store);
    let path = tmp.state().join(JOURNAL_FILE);
    // One byte of the last record changed (a /32 made a /31, say): the line is
    // whole, with its newline and no NUL byte, so not a torn write. It was most
    // likely acknowledged: dropping it would bring back the entry it removed.
    let mut damaged = journal_bytes(&tmp.state());
    let at = damaged.len() - 20;
    damaged[at] ^= 0x01;
    fs::write(&path, &damaged).unwrap();
    let err = open_err(&tmp.state());
    match &err {
        StateError::DamagedLastRecord { line, source, .. } => {
            assert_eq!(*line, 3);
            assert!(matches!(source, RecordError::Checksum { .. }), "{source:?}");
        }
        other => panic!("expected DamagedLastRecord, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("journal.log:3: the last journal record is complete but damaged"),
        "{text}"
    );
    assert!(
        text.contains("delete it to start without that change"),
        "{text}"
    );
    // Nothing changed on disk.
    assert_eq!(fs::read(&path).unwrap(), damaged);
    assert!(set_aside(&tmp.state()).is_empty());

    // A damaged header (not 8 hex digits) on a whole last line: the same.
    let mut damaged = journal_bytes(&tmp.state());
    damaged[at] ^= 0x01;
    let last_start = damaged[..damaged.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    damaged[last_start] = b'g';
    fs::write(&path, &damaged).unwrap();
    assert!(matches!(
        open_err(&tmp.state()),
        StateError::DamagedLastRecord {
            line: 3,
            source: RecordError::Malformed,
            ..
        }
    ));
}

#[test]
fn a_bad_record_before_the_last_is_an_error_naming_its_line() {
    let tmp = TempDir::new("middle");
    let mut store = open(&tmp.state());
    commit_all(&mut store, &sample_batches()[..4]);
    drop(store);
    let path = tmp.state().join(JOURNAL_FILE);
    let good = journal_bytes(&tmp.state());
    let text = String::from_utf8(good.clone()).unwrap();

    // A flipped byte in the second record.
    let at = text.match_indices('\n').next().unwrap().0 + 30;
    let mut damaged = good.clone();
    damaged[at] ^= 0x01;
    fs::write(&path, &damaged).unwrap();
    let err = open_err(&tmp.state());
    match &err {
        StateError::CorruptJournal { line, source, .. } => {
            assert_eq!(*line, 2);
            assert!(matches!(source, RecordError::Checksum { .. }), "{source:?}");
        }
        other => panic!("expected CorruptJournal, got {other:?}"),
    }
    assert!(err.to_string().contains("journal.log:2:"), "{err}");
    // Nothing was "repaired": the damaged file is left for the operator.
    assert_eq!(fs::read(&path).unwrap(), damaged);

    // A missing record (lines 1, 3, 4) is a sequence error at line 2.
    let lines: Vec<&str> = text.lines().collect();
    fs::write(&path, format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3])).unwrap();
    match open_err(&tmp.state()) {
        StateError::JournalSequence {
            line: 2,
            expected: 2,
            found: 3,
            ..
        } => {}
        other => panic!("expected a sequence error, got {other:?}"),
    }
    // The same as the last line (record 4 again where 5 was expected): the
    // message says what is wrong, not "damaged record before the end".
    fs::write(&path, format!("{text}{}\n", lines[3])).unwrap();
    let err = open_err(&tmp.state());
    assert_eq!(
        err.to_string(),
        format!(
            "{}:5: journal record 4 where record 5 was expected (a record is missing, \
             repeated or out of order): restore the state directory or repair the journal",
            path.display()
        )
    );

    // A checksum-valid last record that does not parse is an error too: it was
    // written whole, so it is not a torn write. (A change of a kind this version
    // does not know is a newer rampartd's: state_written_by_a_newer_rampartd_says_so.)
    let json = r#"{"seq":5,"changes":[{"add":{}}]}"#;
    let bad = format!("{}{:08x} {json}\n", text, crc32fast::hash(json.as_bytes()));
    fs::write(&path, bad).unwrap();
    assert!(matches!(
        open_err(&tmp.state()),
        StateError::DamagedLastRecord {
            line: 5,
            source: RecordError::Syntax { .. },
            ..
        }
    ));
    // A record before a torn tail is not the last: its damage is CorruptJournal.
    let bad = format!(
        "{}{:08x} {json}\n{{\"seq\"",
        text,
        crc32fast::hash(json.as_bytes())
    );
    fs::write(&path, bad).unwrap();
    assert!(matches!(
        open_err(&tmp.state()),
        StateError::CorruptJournal {
            line: 5,
            source: RecordError::Syntax { .. },
            ..
        }
    ));
    assert!(set_aside(&tmp.state()).is_empty());
}

#[test]
fn compaction_preserves_the_state() {
    let tmp = TempDir::new("compact");
    let mut store = open(&tmp.state());
    // Compact whenever the journal outgrows the snapshot.
    store.compact_min_bytes = 0;
    for i in 0..300u32 {
        let net = format!("198.18.{}.{}/32", i / 256, i % 256);
        store.commit(&[Change::Add(vec![deny(&net)])]).unwrap();
        if i % 3 == 0 {
            store
                .commit(&[Change::Remove(vec![(ListKind::Deny, net.parse().unwrap())])])
                .unwrap();
        }
    }
    commit_all(&mut store, &sample_batches());
    let expected = store.state().clone();
    let seq = store.seq();
    let journal_len = journal_bytes(&tmp.state()).len() as u64;
    let snapshot_len = fs::metadata(tmp.state().join(SNAPSHOT_FILE)).unwrap().len();
    assert!(snapshot_len > 0);
    assert!(
        journal_len <= snapshot_len,
        "{journal_len} > {snapshot_len}"
    );
    drop(store);

    let mut store = open(&tmp.state());
    assert_eq!(store.state(), &expected);
    assert_eq!(store.seq(), seq);
    // An explicit compaction leaves an empty journal and the same state.
    store.compact().unwrap();
    assert!(journal_bytes(&tmp.state()).is_empty());
    drop(store);
    let store = open(&tmp.state());
    assert_eq!(store.state(), &expected);
    assert_eq!(store.seq(), seq);
}

#[test]
fn a_crash_between_snapshot_and_truncation_is_harmless() {
    let tmp = TempDir::new("crash-compact");
    let mut store = open(&tmp.state());
    commit_all(&mut store, &sample_batches());
    let expected = store.state().clone();
    let journal = journal_bytes(&tmp.state());
    store.compact().unwrap();
    drop(store);
    // The truncation "never happened": the journal still has records 1..=6, which
    // the snapshot (seq 6) already includes.
    fs::write(tmp.state().join(JOURNAL_FILE), &journal).unwrap();

    let mut store = open(&tmp.state());
    assert_eq!(store.state(), &expected);
    assert_eq!(store.seq(), 6);
    // The stale records are gone, and later records replay after the snapshot.
    assert!(journal_bytes(&tmp.state()).is_empty());
    store
        .commit(&[Change::Add(vec![deny("192.0.2.99/32")])])
        .unwrap();
    let expected = store.state().clone();
    drop(store);
    let store = open(&tmp.state());
    assert_eq!(store.state(), &expected);
    assert_eq!(store.seq(), 7);
}

/// A store with sample state compacted into its snapshot; the snapshot's bytes.
fn compacted(tmp: &TempDir) -> (State, Vec<u8>) {
    let mut store = open(&tmp.state());
    commit_all(&mut store, &sample_batches());
    store.compact().unwrap();
    let state = store.state().clone();
    drop(store);
    (state, fs::read(tmp.state().join(SNAPSHOT_FILE)).unwrap())
}

#[test]
fn the_snapshot_carries_a_checksum_of_its_json() {
    let tmp = TempDir::new("snapshot-format");
    let (state, bytes) = compacted(&tmp);
    let text = String::from_utf8(bytes).unwrap();
    let line = text.strip_suffix('\n').unwrap();
    assert!(!line.contains('\n'), "one line");
    let (crc, json) = line.split_once(' ').unwrap();
    assert_eq!(crc, format!("{:08x}", crc32fast::hash(json.as_bytes())));
    assert!(
        json.starts_with(r#"{"version":1,"seq":6,"entries":["#),
        "{json}"
    );
    assert_eq!(open(&tmp.state()).state(), &state);
}

#[test]
fn a_changed_byte_in_the_snapshot_refuses_the_open() {
    let tmp = TempDir::new("snapshot-crc");
    let (_, good) = compacted(&tmp);
    let path = tmp.state().join(SNAPSHOT_FILE);
    // An edited prefix: the entry would be enforced as a /31.
    let text = String::from_utf8(good.clone()).unwrap();
    assert!(text.contains(r#""net":"2001:db8::/32""#), "{text}");
    let edited = text.replacen("2001:db8::/32", "2001:db8::/31", 1);
    assert_ne!(edited, text);
    type Case = (&'static str, Vec<u8>, fn(&SnapshotDefect) -> bool);
    let cases: Vec<Case> = vec![
        ("an edited prefix", edited.into_bytes(), |d| {
            matches!(d, SnapshotDefect::Checksum { .. })
        }),
        ("cut short", good[..good.len() / 2].to_vec(), |d| {
            matches!(d, SnapshotDefect::Checksum { .. })
        }),
        (
            "a damaged checksum",
            [b"z".as_slice(), &good[1..]].concat(),
            |d| matches!(d, SnapshotDefect::Malformed),
        ),
        ("empty", Vec::new(), |d| {
            matches!(d, SnapshotDefect::Malformed)
        }),
    ];
    for (what, bytes, expected) in cases {
        fs::write(&path, &bytes).unwrap();
        let err = open_err(&tmp.state());
        match &err {
            StateError::CorruptSnapshot { path: p, source } => {
                assert_eq!(p, &path, "{what}");
                assert!(expected(source), "{what}: {source:?}");
            }
            other => panic!("{what}: expected CorruptSnapshot, got {other:?}"),
        }
        // Nothing was rewritten.
        assert_eq!(fs::read(&path).unwrap(), bytes, "{what}");
    }
    fs::write(&path, text.replacen("2001:db8::/32", "2001:db8::/31", 1)).unwrap();
    let err = open_err(&tmp.state());
    let message = crate::service::chain(&err);
    assert!(
        message.starts_with(&format!(
            "{} is corrupt: checksum mismatch: the file says ",
            path.display()
        )),
        "{message}"
    );
}

#[test]
fn a_snapshot_without_checksum_is_read_and_rewritten_with_one() {
    let tmp = TempDir::new("snapshot-legacy");
    let (state, good) = compacted(&tmp);
    let path = tmp.state().join(SNAPSHOT_FILE);
    // As the previous version wrote it: the JSON and a newline.
    let legacy = good[journal::HEADER_LEN..].to_vec();
    assert_eq!(legacy[0], b'{');
    fs::write(&path, &legacy).unwrap();
    let mut store = open(&tmp.state());
    assert_eq!(store.state(), &state);
    assert_eq!(store.seq(), 6);
    // Rewritten at once, with its checksum, and the journal goes on after it.
    assert_eq!(fs::read(&path).unwrap(), good);
    store
        .commit(&[Change::Add(vec![deny("192.0.2.99/32")])])
        .unwrap();
    let expected = store.state().clone();
    drop(store);
    let store = open(&tmp.state());
    assert_eq!(store.state(), &expected);
    assert_eq!(store.seq(), 7);

    // A legacy snapshot that does not parse is corrupt, as before.
    drop(store);
    fs::write(&path, &legacy[..legacy.len() / 2]).unwrap();
    assert!(matches!(
        open_err(&tmp.state()),
        StateError::CorruptSnapshot {
            source: SnapshotDefect::Syntax(_),
            ..
        }
    ));
}

#[test]
fn a_journal_that_starts_after_the_snapshot_is_an_error() {
    let tmp = TempDir::new("gap");
    let mut store = open(&tmp.state());
    commit_all(&mut store, &sample_batches()[..2]);
    store.compact().unwrap();
    commit_all(&mut store, &sample_batches()[2..3]);
    drop(store);
    fs::remove_file(tmp.state().join(SNAPSHOT_FILE)).unwrap();
    assert!(matches!(
        open_err(&tmp.state()),
        StateError::JournalSequence {
            line: 1,
            expected: 1,
            found: 3,
            ..
        }
    ));
}

#[test]
fn expired_entries_are_dropped_at_load_and_filtered_by_live() {
    let tmp = TempDir::new("expiry");
    let mut store = open_at(&tmp.state(), T0);
    let mut ban = entry(ListKind::Deny, "198.51.100.7/32", EntryOrigin::Auto);
    ban.expires_at = Some(T0 + 600);
    store
        .commit(&[Change::Add(vec![ban.clone(), deny("192.0.2.1/32")])])
        .unwrap();
    assert_eq!(store.state().live(T0 + 599).count(), 2);
    assert_eq!(store.state().live(T0 + 600).count(), 1);
    drop(store);
    assert_eq!(open_at(&tmp.state(), T0 + 599).state().entries.len(), 2);
    let store = open_at(&tmp.state(), T0 + 600);
    assert_eq!(store.state().entries.len(), 1);
    assert!(store.state().get(ListKind::Deny, &ban.net).is_none());
}

#[test]
fn ipv4_mapped_entries_of_earlier_versions_load_as_the_ipv4_entries_they_map() {
    let tmp = TempDir::new("mapped");
    let mut store = open(&tmp.state());
    // As an earlier version stored `deny add ::ffff:198.51.100.7` and others.
    let mut short = deny("::ffff:192.0.2.1/128");
    short.expires_at = Some(T0 + 60);
    let mut ban = entry(ListKind::Deny, "198.51.100.9/32", EntryOrigin::Auto);
    ban.expires_at = Some(T0 + 600);
    let mut mapped_ban = entry(
        ListKind::Allow,
        "::ffff:10.0.0.0/104",
        EntryOrigin::Operator,
    );
    mapped_ban.comment = Some("office".into());
    store
        .commit(&[Change::Add(vec![
            deny("::ffff:198.51.100.7/128"),
            short,
            deny("192.0.2.1/32"),
            deny("::ffff:198.51.100.9/128"),
            ban,
            mapped_ban,
            deny("::/80"),
            deny("2001:db8::/32"),
        ])])
        .unwrap();
    drop(store);
    let store = open(&tmp.state());
    let nets: Vec<(ListKind, String)> = (store.state().entries.keys())
        .map(|(list, net)| (*list, net.to_string()))
        .collect();
    assert_eq!(
        nets,
        [
            (ListKind::Deny, "192.0.2.1/32".to_owned()),
            (ListKind::Deny, "198.51.100.7/32".to_owned()),
            (ListKind::Deny, "198.51.100.9/32".to_owned()),
            // Wider than the mapped space: left as it is.
            (ListKind::Deny, "::/80".to_owned()),
            (ListKind::Deny, "2001:db8::/32".to_owned()),
            (ListKind::Allow, "10.0.0.0/8".to_owned()),
        ]
    );
    let get = |list, net: &str| store.state().get(list, &net.parse().unwrap()).unwrap();
    // The permanent one outlasts the mapped 60 s one; the permanent mapped entry
    // outlasts the ban.
    assert_eq!(get(ListKind::Deny, "192.0.2.1/32").expires_at, None);
    let was_ban = get(ListKind::Deny, "198.51.100.9/32");
    assert_eq!(
        (was_ban.origin, was_ban.expires_at),
        (EntryOrigin::Operator, None)
    );
    assert_eq!(
        get(ListKind::Allow, "10.0.0.0/8").comment.as_deref(),
        Some("office")
    );
    // Written back: the next open reads the same without converting again.
    let state = store.state().clone();
    drop(store);
    assert_eq!(open(&tmp.state()).state(), &state);
}

#[test]
fn invalid_changes_are_refused_before_anything_is_written() {
    let tmp = TempDir::new("invalid");
    let mut store = open(&tmp.state());
    commit_all(&mut store, &sample_batches()[..1]);
    let before = store.state().clone();
    let journal = journal_bytes(&tmp.state());

    let from_config = entry(ListKind::Deny, "192.0.2.5/32", EntryOrigin::Config);
    let wrong_list = entry(ListKind::Allow, "192.0.2.6/32", EntryOrigin::Operator);
    type Case = (Vec<Change>, fn(&StateError) -> bool);
    let cases: Vec<Case> = vec![
        (
            // The valid first change is not applied either: a batch is all or nothing.
            vec![
                Change::Add(vec![deny("192.0.2.4/32")]),
                Change::Add(vec![from_config]),
            ],
            |e| matches!(e, StateError::ConfigEntry { .. }),
        ),
        (
            vec![Change::Replace {
                list: ListKind::Deny,
                origin: EntryOrigin::Config,
                entries: vec![],
            }],
            |e| matches!(e, StateError::ConfigReplace { .. }),
        ),
        (
            vec![Change::Replace {
                list: ListKind::Deny,
                origin: EntryOrigin::Operator,
                entries: vec![wrong_list],
            }],
            |e| matches!(e, StateError::ReplaceMismatch { .. }),
        ),
        (
            vec![Change::SetCountries(CountryPolicyState::Block(codes(&[
                "de", "d1",
            ])))],
            |e| matches!(e, StateError::BadCountry { code } if code == "d1"),
        ),
    ];
    for (changes, expected) in cases {
        let err = store.commit(&changes).unwrap_err();
        assert!(expected(&err), "{err:?}");
        assert_eq!(store.state(), &before);
        assert_eq!(store.seq(), 1);
        assert_eq!(journal_bytes(&tmp.state()), journal);
    }
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let tmp = TempDir::new("lock");
    let store = open(&tmp.state());
    let err = StateStore::open(&tmp.state()).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
    drop(store);
    open(&tmp.state());
}

#[test]
fn files_and_directory_are_private() {
    let tmp = TempDir::new("modes");
    let mut store = open(&tmp.state());
    commit_all(&mut store, &sample_batches()[..1]);
    store.compact().unwrap();
    store
        .save_countries(&[("192.0.2.0/24".parse().unwrap(), 1)])
        .unwrap();
    let mode = |name: &str| {
        fs::metadata(tmp.state().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    assert_eq!(mode(JOURNAL_FILE), 0o600);
    assert_eq!(mode(SNAPSHOT_FILE), 0o600);
    assert_eq!(mode(COUNTRIES_FILE), 0o600);
}

#[test]
fn the_country_table_survives_a_restart() {
    let tmp = TempDir::new("countries");
    let store = open(&tmp.state());
    assert_eq!(store.load_countries().unwrap(), None);
    let de = rampart_common::country_index(*b"de").unwrap();
    let us = rampart_common::country_index(*b"us").unwrap();
    let table: Vec<(IpNet, u16)> = vec![
        ("192.0.2.0/24".parse().unwrap(), de),
        ("198.51.100.0/22".parse().unwrap(), us),
        ("2001:db8::/32".parse().unwrap(), de),
    ];
    store.save_countries(&table).unwrap();
    drop(store);
    let store = open(&tmp.state());
    assert_eq!(store.load_countries().unwrap(), Some(table.clone()));
    assert_eq!(
        fs::read_to_string(tmp.state().join(COUNTRIES_FILE)).unwrap(),
        "network,country\n192.0.2.0/24,de\n198.51.100.0/22,us\n2001:db8::/32,de\n"
    );
    // It is the CSV form the geo loader reads, too.
    let loaded = crate::geo::load(&tmp.state().join(COUNTRIES_FILE)).unwrap();
    let mut read: Vec<(IpNet, u16)> = loaded.prefixes().to_vec();
    read.sort();
    let mut expected = table;
    expected.sort();
    assert_eq!(read, expected);

    // An index with no code is refused and the saved table kept.
    assert!(matches!(
        store.save_countries(&[("192.0.2.0/24".parse().unwrap(), 0)]),
        Err(StateError::BadCountryIndex { index: 0 })
    ));
    assert_eq!(store.load_countries().unwrap().map(|t| t.len()), Some(3));

    fs::write(
        tmp.state().join(COUNTRIES_FILE),
        "network,country\n192.0.2.0/24,de\n192.0.2.0/33,de\n",
    )
    .unwrap();
    assert!(matches!(
        store.load_countries(),
        Err(StateError::CorruptCountries { line: 3, .. })
    ));
}

#[test]
fn a_thousand_commits() {
    let tmp = TempDir::new("timing");
    let mut store = open(&tmp.state());
    let started = Instant::now();
    for i in 0..1000u32 {
        let net = format!("198.18.{}.{}/32", i / 256, i % 256);
        store.commit(&[Change::Add(vec![deny(&net)])]).unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "1000 commits (one fdatasync each) in {:.1} ms: {:.0} µs per commit, on {}",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / 1000.0,
        std::env::temp_dir().display()
    );
    let expected = store.state().clone();
    assert_eq!(expected.entries.len(), 1000);
    drop(store);
    assert_eq!(open(&tmp.state()).state(), &expected);
}

/// A line as the journal and the snapshot write it: checksum, space, JSON, newline.
fn checksummed(json: &str) -> Vec<u8> {
    format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes())).into_bytes()
}

/// State a newer rampartd wrote (seen after a downgrade) says so and how to go
/// on, with the exit code of a newer subscription store (65). Before, a journal
/// record of an unknown kind was "complete but damaged" with the advice to
/// delete it (losing the change), and a newer snapshot an "unsupported format
/// version" (exit 74).
#[test]
fn state_written_by_a_newer_rampartd_says_so() {
    let tmp = TempDir::new("newer");
    let mut store = open(&tmp.state());
    commit_all(&mut store, &sample_batches()[..2]);
    drop(store);
    let path = tmp.state().join(JOURNAL_FILE);
    let good = journal_bytes(&tmp.state());
    let newer = [
        good.clone(),
        checksummed(r#"{"seq":3,"changes":[{"future_kind":{"x":1}}]}"#),
    ]
    .concat();
    fs::write(&path, &newer).unwrap();
    let err = open_err(&tmp.state());
    let text = err.to_string();
    assert!(
        text.contains(
            r#"journal.log:3: written by a newer rampartd (a change of kind "future_kind", which this version does not know): upgrade rampartd, or restore a backup of the state directory"#
        ),
        "{text}"
    );
    assert!(!text.contains("delete"), "{text}");
    assert_eq!(crate::service::ServiceError::from(err).exit_code(), 65);
    // A known kind that does not parse is still damage.
    let damaged = [
        good.clone(),
        checksummed(r#"{"seq":3,"changes":[{"add":"not a list"}]}"#),
    ]
    .concat();
    fs::write(&path, &damaged).unwrap();
    assert!(matches!(
        open_err(&tmp.state()),
        StateError::DamagedLastRecord { .. }
    ));
    fs::write(&path, &good).unwrap();

    let snapshot = tmp.state().join(SNAPSHOT_FILE);
    fs::write(
        &snapshot,
        checksummed(r#"{"version":2,"seq":0,"entries":[],"future":true}"#),
    )
    .unwrap();
    let err = open_err(&tmp.state());
    let text = err.to_string();
    assert!(
        text.contains(
            "state.json was written by a newer rampartd (format 2; this one reads format 1): upgrade rampartd, or restore a backup of the state directory"
        ),
        "{text}"
    );
    assert_eq!(crate::service::ServiceError::from(err).exit_code(), 65);
}

#[test]
fn every_change_kind_written_is_known_to_the_newer_kind_check() {
    for change in sample_batches().iter().flatten() {
        let value = serde_json::to_value(change).unwrap();
        let kind = value.as_object().unwrap().keys().next().unwrap().clone();
        assert!(journal::CHANGE_KINDS.contains(&kind.as_str()), "{kind}");
    }
}
