//! "Durable before acknowledged", end to end: a burst of `rampart deny add`
//! with rampartd SIGKILLed in the middle loses no acknowledged entry, and a
//! state directory that cannot take the change (full, read-only) refuses it
//! with a message naming the problem, while the kernel never sees it.
//!
//! Needs root (also for mounting a tmpfs and a loop-mounted ext4 image);
//! skipped visibly otherwise.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rampart::control::protocol::exit;
use rampart_tests::{
    control::{
        Rig, RigOptions,
        system::{Ext4Image, Tmpfs},
    },
    daemon::TempDir,
    privileged,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const BURST: u32 = 1000;
const WORKERS: usize = 6;
/// Acknowledged adds before the kill.
const KILL_AFTER: usize = 300;

#[test]
fn acknowledged_adds_survive_a_sigkill_in_the_middle_of_a_burst() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::start(RigOptions::default()).unwrap();
    let base = u32::from(Ipv4Addr::new(198, 18, 4, 0));
    let addrs: Arc<Vec<String>> = Arc::new(
        (0..BURST)
            .map(|i| Ipv4Addr::from(base + i).to_string())
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<(usize, i32, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (cli, addrs, next, acked, results) = (
                rig.cli.clone(),
                Arc::clone(&addrs),
                Arc::clone(&next),
                Arc::clone(&acked),
                Arc::clone(&results),
            );
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= addrs.len() {
                        break;
                    }
                    let run = cli.run(&["deny", "add", &addrs[i]]);
                    if run.code == 0 {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    results.lock().unwrap().push((i, run.code, run.stderr));
                }
            })
        })
        .collect();

    // SIGKILL in the middle of the burst, with adds in flight.
    while acked.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} adds acknowledged in 60 s",
            acked.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    rig.daemon().unwrap().signal(libc::SIGKILL);
    let killed_at = started.elapsed();
    let issued_at_kill = next.load(Ordering::SeqCst).min(addrs.len());
    for w in workers {
        w.join().unwrap();
    }
    rig.kill_daemon().unwrap();
    let results = results.lock().unwrap().clone();
    assert_eq!(results.len(), addrs.len());

    // Every command either succeeded, found no daemon (6), or lost its
    // connection mid-request (1: the change may or may not have been made).
    let mut ok = BTreeSet::new();
    let mut down = BTreeSet::new();
    let mut lost = BTreeSet::new();
    for (i, code, stderr) in &results {
        match *code {
            0 => ok.insert(*i),
            6 => down.insert(*i),
            1 => lost.insert(*i),
            other => panic!("`deny add {}` exited {other}: {stderr}", addrs[*i]),
        };
    }
    eprintln!(
        "burst: {} acknowledged, {} lost mid-request, {} refused (daemon down); \
         killed after {killed_at:?} with {issued_at_kill} issued",
        ok.len(),
        lost.len(),
        down.len()
    );
    assert!(
        ok.len() >= KILL_AFTER && ok.len() < addrs.len(),
        "{}",
        ok.len()
    );

    // The restart must succeed on the same state directory: nothing corrupt.
    rig.start_daemon().unwrap();
    let list = rig.cli.list("deny").unwrap();
    let listed: BTreeSet<String> = list
        .iter()
        .map(|e| {
            assert_eq!(e["origin"], "operator", "{e}");
            let entry = e["entry"].as_str().unwrap();
            entry.strip_suffix("/32").unwrap_or(entry).to_owned()
        })
        .collect();
    let all: BTreeSet<&String> = addrs.iter().collect();
    for entry in &listed {
        assert!(all.contains(entry), "an entry nobody added: {entry}");
    }
    let missing: Vec<&String> = ok
        .iter()
        .map(|&i| &addrs[i])
        .filter(|a| !listed.contains(*a))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged entries lost after SIGKILL, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let phantom: Vec<&String> = down
        .iter()
        .map(|&i| &addrs[i])
        .filter(|a| listed.contains(*a))
        .collect();
    assert!(
        phantom.is_empty(),
        "entries whose command found no daemon: {phantom:?}"
    );
    eprintln!(
        "after restart: {} listed ({} acknowledged + {} of the {} lost mid-request)",
        listed.len(),
        ok.len(),
        listed.len() - ok.len(),
        lost.len()
    );

    // And the kernel enforces them: the last acknowledged one, from a real
    // client address.
    let last = &addrs[*ok.iter().max().unwrap()];
    rig.pair
        .ip(
            &rig.pair.cli,
            &[
                "addr",
                "add",
                &format!("{last}/32"),
                "dev",
                &rig.pair.cli_if,
            ],
        )
        .unwrap();
    assert!(
        !rig.reach(last),
        "{last} acknowledged but not enforced after restart"
    );
    assert!(rig.reach("198.18.0.2"));
}

/// Forty addresses with a long comment: one journal record of well over a
/// page, so that it cannot fit in the journal's last partly used page.
fn big_add(comment: &str) -> Vec<String> {
    let mut args = vec!["deny".to_owned(), "add".to_owned(), "198.18.0.3".to_owned()];
    args.extend((1..40).map(|i| format!("198.18.9.{i}")));
    args.push("--comment".into());
    args.push(comment.into());
    args
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_full_state_directory_refuses_the_change_and_the_kernel_never_sees_it() {
    if !privileged() {
        return;
    }
    let base = TempDir::new().unwrap();
    let tmpfs = Tmpfs::new(&base.path, "64k").unwrap();
    let mut rig = Rig::start(RigOptions {
        client_addrs: vec![ip("198.18.0.3"), ip("198.18.0.4")],
        state_dir: Some(tmpfs.path.clone()),
        ..RigOptions::default()
    })
    .unwrap();
    let cli = rig.cli.clone();
    cli.ok(&["deny", "add", "198.18.0.4"]).unwrap();
    let before = cli.list("deny").unwrap();

    let filler = tmpfs.fill().unwrap();
    let args = big_add(&"x".repeat(200));
    let run = cli.run(&as_strs(&args));
    assert_eq!(run.code, i32::from(exit::FAILED), "{run}");
    assert!(
        run.stderr.contains("no space left"),
        "names the problem: {run}"
    );
    // Whoever watches the service learns of it too, not only the one who asked.
    rig.wait_for_log(
        "could not be written to the state directory",
        Duration::from_secs(5),
    )
    .unwrap();
    let log = rig.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("could not be written to the state directory")
            && l.to_lowercase().contains("no space left")),
        "the refusal is logged:\n{log}"
    );
    assert_eq!(cli.list("deny").unwrap(), before, "nothing changed");
    assert!(
        rig.reach("198.18.0.3"),
        "the kernel never saw the refused entry"
    );
    assert!(!rig.reach("198.18.0.4"), "earlier entries stay");
    let c = cli.json(&["check", "198.18.0.3"]).unwrap();
    assert_eq!(c["action"], "pass", "{c}");

    // Space again: the same change goes through, and the journal is sound
    // across a restart.
    std::fs::remove_file(filler).unwrap();
    cli.ok(&as_strs(&args)).unwrap();
    assert!(!rig.reach("198.18.0.3"));
    rig.kill_daemon().unwrap();
    rig.start_daemon().unwrap();
    let list = cli.list("deny").unwrap();
    assert_eq!(list.len(), 41, "{list:?}");
    assert!(!rig.reach("198.18.0.3") && !rig.reach("198.18.0.4"));
}

#[test]
fn a_read_only_state_directory_refuses_the_change_and_the_kernel_never_sees_it() {
    if !privileged() {
        return;
    }
    let base = TempDir::new().unwrap();
    let image = Ext4Image::new(&base.path).unwrap();
    let rig = Rig::start(RigOptions {
        client_addrs: vec![ip("198.18.0.3"), ip("198.18.0.4")],
        state_dir: Some(image.path.join("state")),
        ..RigOptions::default()
    })
    .unwrap();
    let cli = &rig.cli;
    cli.ok(&["deny", "add", "198.18.0.4"]).unwrap();
    let before = cli.list("deny").unwrap();

    // The file system turns read-only under the running daemon (its journal
    // open for writing), as ext4 does after an I/O error.
    image.fail_read_only().unwrap();
    let run = cli.run(&["deny", "add", "198.18.0.3"]);
    assert_eq!(run.code, i32::from(exit::FAILED), "{run}");
    assert!(run.stderr.contains("read-only"), "names the problem: {run}");
    let run = cli.run(&["deny", "del", "198.18.0.4"]);
    assert_eq!(run.code, i32::from(exit::FAILED), "{run}");
    assert_eq!(cli.list("deny").unwrap(), before, "nothing changed");
    assert!(
        rig.reach("198.18.0.3"),
        "the kernel never saw the refused entry"
    );
    assert!(!rig.reach("198.18.0.4"), "the kept entry is still enforced");
    // The daemon still answers.
    let s = cli.json(&["status"]).unwrap();
    assert_eq!(s["filter"]["deny"], 1, "{s}");
}

/// The files in `dir` whose names start with `journal.log.damaged-`.
fn set_aside_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal.log.damaged-"))
        })
        .collect();
    files.sort();
    files
}

/// `deny add` then `deny del` of 198.18.0.3 (journal records 1 and 2), and
/// rampartd stopped: the journal's bytes and where its last line starts.
fn added_and_removed(rig: &mut Rig) -> (Vec<u8>, usize) {
    rig.cli.ok(&["deny", "add", "198.18.0.3"]).unwrap();
    rig.cli.ok(&["deny", "del", "198.18.0.3"]).unwrap();
    rig.kill_daemon().unwrap();
    let journal = std::fs::read(rig.state_dir.join("journal.log")).unwrap();
    let text = String::from_utf8(journal.clone()).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().nth(1).unwrap().contains(r#""remove""#),
        "{text}"
    );
    let last = text.trim_end().rfind('\n').unwrap() + 1;
    (journal, last)
}

#[test]
fn a_torn_last_journal_record_is_set_aside_and_rampartd_starts() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::start(RigOptions::default()).unwrap();
    let (journal, last) = added_and_removed(&mut rig);
    // A write cut short by a crash: the last record without its second half
    // and its newline.
    let cut = last + (journal.len() - last) / 2;
    let path = rig.state_dir.join("journal.log");
    std::fs::write(&path, &journal[..cut]).unwrap();

    rig.start_daemon().unwrap();
    let copy = rig.state_dir.join("journal.log.damaged-2");
    let log = rig.log();
    let line = log
        .lines()
        .find(|l| l.contains("the last journal record is damaged or incomplete"))
        .unwrap_or_else(|| panic!("no warning about the torn record; log:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("(a torn write at a crash, or corruption); it is set aside"),
        "{line}"
    );
    assert!(
        line.contains(&format!("set_aside={}", copy.display())),
        "names the copy: {line}"
    );
    assert!(!log.contains("never acknowledged"), "{log}");
    // The dropped bytes are kept, private; the journal is cut back.
    assert_eq!(std::fs::read(&copy).unwrap(), &journal[last..cut]);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(set_aside_files(&rig.state_dir), vec![copy]);
    assert_eq!(std::fs::read(&path).unwrap(), &journal[..last]);
    // The state is record 1's: the removal in the torn record is not applied.
    assert_eq!(rig.cli.list_entries("deny").unwrap(), ["198.18.0.3/32"]);
    let c = rig.cli.json(&["check", "198.18.0.3"]).unwrap();
    assert_eq!(c["action"], "drop", "{c}");
}

#[test]
fn a_complete_but_damaged_last_journal_record_refuses_to_start() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::start(RigOptions::default()).unwrap();
    let (journal, last) = added_and_removed(&mut rig);
    // The acknowledged removal, edited while rampartd was stopped: the line
    // is whole (newline, no NUL byte), so it is not a torn write. Dropping
    // it would bring the removed entry back into force.
    let text = String::from_utf8(journal.clone()).unwrap();
    let damaged = format!(
        "{}{}",
        &text[..last],
        text[last..].replace("198.18.0.3/32", "198.18.0.3/31")
    );
    assert_ne!(damaged, text);
    let path = rig.state_dir.join("journal.log");
    std::fs::write(&path, &damaged).unwrap();

    let (code, stderr) = rig.start_refused(&rig.config).unwrap();
    assert_eq!(code, Some(74), "{stderr}");
    let expected = format!(
        "{}:2: the last journal record is complete but damaged (not a torn write, so probably an acknowledged change): restore the state directory, repair the line, or delete it to start without that change: checksum mismatch",
        path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    // Nothing was changed or set aside.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), damaged);
    assert!(set_aside_files(&rig.state_dir).is_empty());

    // The operator's way out: delete the line. rampartd starts without that
    // change.
    std::fs::write(&path, &text[..last]).unwrap();
    rig.start_daemon().unwrap();
    assert_eq!(rig.cli.list_entries("deny").unwrap(), ["198.18.0.3/32"]);
}

#[test]
fn an_edited_snapshot_refuses_to_start_and_names_the_file() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::prepare(RigOptions {
        client_addrs: vec![ip("198.18.0.4")],
        ..RigOptions::default()
    })
    .unwrap();
    // A snapshot as the previous version wrote it, without a checksum: read,
    // then rewritten with one.
    std::fs::create_dir_all(&rig.state_dir).unwrap();
    let path = rig.state_dir.join("state.json");
    std::fs::write(
        &path,
        r#"{"version":1,"seq":5,"entries":[{"list":"deny","net":"198.18.0.4/32","origin":"operator","added_by":0,"added_at":1700000000}],"countries":null,"geo":null}
"#,
    )
    .unwrap();
    rig.start_daemon().unwrap();
    assert_eq!(rig.cli.list_entries("deny").unwrap(), ["198.18.0.4/32"]);
    assert!(!rig.reach("198.18.0.4"), "the snapshot's entry is enforced");
    assert!(
        rig.log().contains(
            "the snapshot had no checksum (written by an earlier version): read unchecked, rewritten with one"
        ),
        "{}",
        rig.log()
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let (crc, json) = text.trim_end().split_once(' ').unwrap();
    assert!(
        crc.len() == 8 && crc.bytes().all(|b| b.is_ascii_hexdigit()),
        "{text}"
    );
    assert!(json.contains(r#""net":"198.18.0.4/32""#), "{text}");
    rig.kill_daemon().unwrap();

    // The prefix edited while rampartd was stopped: /32 to /31. Before, it
    // was enforced without a word.
    let edited = text.replace("198.18.0.4/32", "198.18.0.4/31");
    std::fs::write(&path, &edited).unwrap();
    let (code, stderr) = rig.start_refused(&rig.config).unwrap();
    assert_eq!(code, Some(74), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "rampartd: state directory: {} is corrupt: checksum mismatch: the file says {crc}, its contents hash to ",
            path.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        edited,
        "left as it is"
    );
    // The kernel keeps what it had while no rampartd runs.
    assert!(!rig.reach("198.18.0.4"));

    // Restored: rampartd starts with the /32.
    std::fs::write(&path, &text).unwrap();
    rig.start_daemon().unwrap();
    assert_eq!(rig.cli.list_entries("deny").unwrap(), ["198.18.0.4/32"]);
}
