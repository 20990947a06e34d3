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
