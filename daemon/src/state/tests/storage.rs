//! Storage failures: a full file system (a tiny tmpfs, when the tests run as root), a
//! read-only one, and how errors are classified.

use std::fs;
use std::io;
use std::process::Command;

use super::*;

/// A tiny tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(TempDir);

impl Tmpfs {
    /// `None` (after printing why) where mounting is not possible.
    fn mount(size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = TempDir::new("tmpfs");
        fs::create_dir_all(&dir.0).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir.0)
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs(dir)),
            other => {
                println!("skipped: cannot mount a tmpfs ({other:?})");
                None
            }
        }
    }

    fn remount(&self, option: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{option}")])
            .arg(&self.0.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {option}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0.0).status();
    }
}

/// An Add of `n` entries with long comments: a record of several pages, so that it
/// needs new blocks of a full file system.
fn big_batch(n: u32) -> Vec<Change> {
    let entries = (0..n)
        .map(|i| {
            let mut e = deny(&format!("198.19.{}.{}/32", i / 256, i % 256));
            e.comment = Some("x".repeat(200));
            e
        })
        .collect();
    vec![Change::Add(entries)]
}

#[test]
fn a_full_or_read_only_file_system_refuses_the_change_and_changes_nothing() {
    let Some(fs_guard) = Tmpfs::mount("256k") else {
        return;
    };
    let dir = fs_guard.0.0.join("state");
    let mut store = open(&dir);
    commit_all(&mut store, &sample_batches()[..2]);
    let before = store.state().clone();
    let journal = journal_bytes(&dir);

    // Fill the file system.
    let filler_path = fs_guard.0.0.join("filler");
    let mut filler = fs::File::create(&filler_path).unwrap();
    let block = vec![0u8; 4096];
    loop {
        use std::io::Write as _;
        match filler.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    drop(filler);

    let err = store.commit(&big_batch(40)).unwrap_err();
    assert!(matches!(err, StateError::NoSpace { .. }), "{err:?}");
    assert!(err.to_string().starts_with("no space left"), "{err}");
    assert_eq!(store.state(), &before);
    assert_eq!(store.seq(), 2);
    assert_eq!(journal_bytes(&dir), journal);
    // A compaction fails the same way and keeps the journal.
    assert!(matches!(store.compact(), Err(StateError::NoSpace { .. })));
    assert_eq!(journal_bytes(&dir), journal);
    assert!(!dir.join(SNAPSHOT_FILE).exists());

    // With room again, the same change goes through as the next record.
    fs::remove_file(&filler_path).unwrap();
    assert_eq!(store.commit(&big_batch(40)).unwrap(), 3);
    let after_space = store.state().clone();

    // Linux refuses to remount read-only while a file is open for writing: what is
    // tested here is a store opened on a read-only file system; errors of a commit are
    // classified by the same function (see the next test).
    drop(store);
    fs_guard.remount("ro");
    let err = open_err(&dir);
    assert!(matches!(err, StateError::ReadOnly { .. }), "{err:?}");
    assert!(err.to_string().contains("read-only file system"), "{err}");

    fs_guard.remount("rw");
    let store = open(&dir);
    assert_eq!(store.state(), &after_space);
    assert_eq!(store.seq(), 3);
}

#[test]
fn storage_errors_are_classified_for_the_operator() {
    let path = Path::new("/var/lib/rampart/journal.log");
    let classify = |errno| StateError::write(path, io::Error::from_raw_os_error(errno));
    assert!(matches!(classify(libc::ENOSPC), StateError::NoSpace { .. }));
    assert!(matches!(classify(libc::EDQUOT), StateError::NoSpace { .. }));
    assert!(matches!(classify(libc::EROFS), StateError::ReadOnly { .. }));
    assert!(matches!(classify(libc::EIO), StateError::Write { .. }));
    assert_eq!(
        classify(libc::EROFS).to_string(),
        "/var/lib/rampart/journal.log is on a read-only file system"
    );
}
