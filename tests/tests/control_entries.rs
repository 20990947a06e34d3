//! Operator list entries end to end, as listed and as enforced: what a comment
//! may hold (checked by the daemon as by the CLI, escaped when listed), and
//! what adding an entry that is already there does and says.
//!
//! Needs root (BPF, XDP, network namespaces); skipped visibly otherwise. The
//! binaries are the debug builds next to this test binary (`cargo build -p
//! rampart --bins` first).

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rampart::{
    control::{
        client::{Client, ClientError},
        protocol::{ErrorKind, ListName, Request, exit},
    },
    filter::{EntryOrigin, ListKind},
    state::{Change, StateStore, StoredEntry},
};
use rampart_tests::{
    control::{Rig, RigOptions, find, unix_now},
    privileged,
};
/// The one row of `deny list` (for people) that starts with `net`.
fn row(rig: &Rig, net: &str) -> String {
    let text = rig.cli.ok(&["deny", "list"]).unwrap().stdout;
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(net)).collect();
    assert_eq!(rows.len(), 1, "one row for {net}:\n{text}");
    rows[0].to_owned()
}

/// `rampart deny ARGS...`: exit 0, the reply sentence.
fn deny(rig: &Rig, args: &[&str]) -> String {
    let mut all = vec!["deny"];
    all.extend_from_slice(args);
    rig.cli.ok(&all).unwrap().stdout
}

/// The kernel's word on `addr`: its verdict and seconds left (`None`: for good).
fn kernel(rig: &Rig, addr: &str) -> (String, Option<u64>) {
    let c = rig.cli.json(&["check", addr]).unwrap();
    (
        c["action"].as_str().unwrap().to_owned(),
        c["expires_in_secs"].as_u64(),
    )
}

/// The listed expiry of `net` in seconds from now (`None`: never).
fn listed_ttl(rig: &Rig, net: &str) -> Option<u64> {
    let list = rig.cli.list("deny").unwrap();
    let e = find(&list, net).unwrap_or_else(|| panic!("{net} is not listed: {list:?}"));
    e["expires_at"]
        .as_u64()
        .map(|at| at.saturating_sub(unix_now()))
}

#[test]
fn comments_are_checked_by_the_daemon_as_by_the_cli() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::clients(&["198.18.0.7"], "").unwrap()).unwrap();
    let cli = &rig.cli;
    cli.ok(&["deny", "add", "198.18.0.9", "--comment", "kept"])
        .unwrap();
    let before = cli.list("deny").unwrap();

    // The CLI refuses an invisible bidi override (it reverses what follows).
    let run = cli.run(&[
        "deny",
        "add",
        "198.18.0.7",
        "--comment",
        "ticket \u{202e}1234",
    ]);
    assert_eq!(run.code, i32::from(exit::INVALID_INPUT), "{run}");
    assert!(
        run.stderr
            .starts_with("rampart: invalid --comment: it contains U+202E"),
        "{run}"
    );

    // A client that is not this CLI gets the same answer from the daemon:
    // a second line in `deny list`, a comment over 1024 bytes, format characters.
    let comments = [
        "line1\nFAKE".to_owned(),
        "line1\r\n198.18.0.1/32  operator  never".to_owned(),
        "x".repeat(5000),
        "ticket \u{202e}1234".to_owned(),
        "zero\u{200b}width".to_owned(),
        "\u{feff}bom".to_owned(),
        "isolate \u{2066}x\u{2069}".to_owned(),
    ];
    for comment in comments {
        let request = Request::ListAdd {
            list: ListName::Deny,
            entries: vec!["198.18.0.7".into()],
            ttl_secs: None,
            comment: Some(comment.clone()),
            replace: false,
        };
        let err = Client::connect(cli.socket())
            .unwrap()
            .call(request)
            .unwrap_err();
        match &err {
            ClientError::Daemon(reply) => {
                assert_eq!(
                    reply.kind,
                    ErrorKind::InvalidInput,
                    "{comment:?}: {reply:?}"
                );
                assert!(
                    reply.message.starts_with("invalid comment: "),
                    "{comment:?}: {reply:?}"
                );
            }
            other => panic!("{comment:?}: {other:?}"),
        }
        assert_eq!(err.exit_code(), exit::INVALID_INPUT, "{comment:?}");
    }
    // Also with --replace, which would have dropped the entry already there.
    let err = Client::connect(cli.socket())
        .unwrap()
        .call(Request::ListAdd {
            list: ListName::Deny,
            entries: vec!["198.18.0.7".into()],
            ttl_secs: None,
            comment: Some("a\nb".into()),
            replace: true,
        })
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::INVALID_INPUT, "{err:?}");

    // Nothing stored, nothing in the kernel.
    assert_eq!(cli.list("deny").unwrap(), before, "nothing changed");
    assert!(rig.reach("198.18.0.7"), "nothing reached the kernel");
    let text = cli.ok(&["deny", "list"]).unwrap().stdout;
    assert_eq!(text.lines().count(), 2, "a header and one entry:\n{text}");

    // What is allowed: one line of visible text, up to 1024 bytes.
    let long = "é".repeat(512);
    cli.ok(&["deny", "add", "198.18.0.7", "--comment", &long])
        .unwrap();
    let list = cli.list("deny").unwrap();
    assert_eq!(
        find(&list, "198.18.0.7/32").unwrap()["comment"],
        long.as_str()
    );
}

#[test]
fn a_comment_stored_before_comments_were_checked_is_listed_escaped() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::prepare(RigOptions::clients(&[], "").unwrap()).unwrap();
    // A state written by an older rampartd, which stored comments unchecked.
    {
        let mut store = StateStore::open(&rig.state_dir).unwrap();
        let entry = |net: &str, comment: &str| StoredEntry {
            list: ListKind::Deny,
            net: net.parse().unwrap(),
            origin: EntryOrigin::Operator,
            expires_at: None,
            comment: Some(comment.into()),
            added_by: Some(0),
            added_at: unix_now(),
            reason: None,
        };
        store
            .commit(&[Change::Add(vec![
                entry("198.18.0.21/32", "line1\n198.18.0.99/32  operator  never"),
                entry("198.18.0.22/32", "ticket \u{202e}4321 \u{1b}[2J"),
            ])])
            .unwrap();
    }
    rig.start_daemon().unwrap();

    let text = rig.cli.ok(&["deny", "list"]).unwrap().stdout;
    assert_eq!(text.lines().count(), 3, "one line per entry:\n{text}");
    assert!(
        !text.contains(['\u{202e}', '\u{1b}', '\r']),
        "printed raw:\n{text}"
    );
    assert!(
        row(&rig, "198.18.0.21/32").ends_with(r"line1\n198.18.0.99/32  operator  never"),
        "{text}"
    );
    assert!(
        row(&rig, "198.18.0.22/32").ends_with(r"ticket \u{202e}4321 \u{1b}[2J"),
        "{text}"
    );
    // Scripts get the text as it is stored.
    let list = rig.cli.list("deny").unwrap();
    assert_eq!(
        find(&list, "198.18.0.22/32").unwrap()["comment"],
        "ticket \u{202e}4321 \u{1b}[2J"
    );
}

#[test]
fn re_adding_an_entry_never_shortens_it_and_the_reply_says_what_changed() {
    if !privileged() {
        return;
    }
    let mut rig =
        Rig::start(RigOptions::clients(&["198.18.0.10", "198.18.0.11"], "").unwrap()).unwrap();

    // A permanent entry re-added with a TTL stays permanent.
    assert_eq!(
        deny(&rig, &["add", "198.18.0.10", "--comment", "for good"]),
        "deny: 1 entry added, 0 already there\n"
    );
    assert_eq!(
        deny(&rig, &["add", "198.18.0.10", "--ttl", "2m"]),
        "deny: 0 entries added, 1 already there\n"
    );
    assert_eq!(listed_ttl(&rig, "198.18.0.10/32"), None);
    let r = row(&rig, "198.18.0.10/32");
    assert!(r.contains(" never ") && r.ends_with("for good"), "{r}");
    assert_eq!(kernel(&rig, "198.18.0.10"), ("drop".into(), None));

    // A temporary entry: re-added with an earlier expiry, it is already there ...
    assert_eq!(
        deny(
            &rig,
            &["add", "198.18.0.11", "--ttl", "2m", "--comment", "scan"]
        ),
        "deny: 1 entry added, expiring in 2m; 0 already there\n"
    );
    assert_eq!(
        deny(&rig, &["add", "198.18.0.11", "--ttl", "1m"]),
        "deny: 0 entries added, 1 already there\n"
    );
    let ttl = listed_ttl(&rig, "198.18.0.11/32").unwrap();
    assert!((110..=120).contains(&ttl), "still 2m: {ttl} s");
    let (verdict, left) = kernel(&rig, "198.18.0.11");
    assert_eq!(verdict, "drop");
    assert!((110..=120).contains(&left.unwrap()), "kernel: {left:?}");

    // ... with a later one, extended (its comment kept), in the kernel too ...
    assert_eq!(
        deny(&rig, &["add", "198.18.0.11", "--ttl", "10m"]),
        "deny: 0 entries added, 1 extended, expiring in 10m; 0 already there\n"
    );
    let ttl = listed_ttl(&rig, "198.18.0.11/32").unwrap();
    assert!((590..=600).contains(&ttl), "extended to 10m: {ttl} s");
    let (_, left) = kernel(&rig, "198.18.0.11");
    assert!((590..=600).contains(&left.unwrap()), "kernel: {left:?}");
    assert!(row(&rig, "198.18.0.11/32").ends_with("scan"));

    // ... and without --ttl, made permanent.
    assert_eq!(
        deny(&rig, &["add", "198.18.0.11", "198.18.0.10"]),
        "deny: 0 entries added, 1 made permanent, 1 already there\n"
    );
    assert_eq!(listed_ttl(&rig, "198.18.0.11/32"), None);
    assert_eq!(kernel(&rig, "198.18.0.11"), ("drop".into(), None));

    // For scripts: `updated` counts the extended ones (part of `changed`).
    let r = rig
        .cli
        .json(&["deny", "add", "198.18.0.12", "--ttl", "1m"])
        .unwrap();
    assert_eq!(
        (&r["changed"], &r["updated"], &r["unchanged"]),
        (&1.into(), &0.into(), &0.into()),
        "{r}"
    );
    let r = rig
        .cli
        .json(&[
            "deny",
            "add",
            "198.18.0.12",
            "198.18.0.13",
            "198.18.0.10",
            "--ttl",
            "5m",
        ])
        .unwrap();
    assert_eq!(
        (&r["changed"], &r["updated"], &r["unchanged"]),
        (&2.into(), &1.into(), &1.into()),
        "{r}"
    );

    // What is stored is what is enforced: the same after a restart.
    rig.kill_daemon().unwrap();
    rig.start_daemon().unwrap();
    assert_eq!(listed_ttl(&rig, "198.18.0.10/32"), None);
    assert_eq!(listed_ttl(&rig, "198.18.0.11/32"), None);
    let ttl = listed_ttl(&rig, "198.18.0.12/32").unwrap();
    assert!((290..=300).contains(&ttl), "extended to 5m: {ttl} s");
    assert_eq!(kernel(&rig, "198.18.0.10"), ("drop".into(), None));
    assert!(!rig.reach("198.18.0.10") && !rig.reach("198.18.0.11"));

    // --replace still makes the operator's entries exactly these, TTL included.
    let out = deny(&rig, &["add", "--replace", "198.18.0.10", "--ttl", "2m"]);
    assert!(out.starts_with("deny: operator entries replaced"), "{out}");
    assert_eq!(rig.cli.list_entries("deny").unwrap(), ["198.18.0.10/32"]);
    let ttl = listed_ttl(&rig, "198.18.0.10/32").unwrap();
    assert!((110..=120).contains(&ttl), "replaced with 2m: {ttl} s");
    assert!(
        rig.reach("198.18.0.11"),
        "no longer listed, no longer denied"
    );
}

#[test]
fn re_adding_a_config_entry_with_a_ttl_says_nothing_of_an_expiry() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(RigOptions::clients(&[], r#"deny = ["198.18.1.0/24"]"#).unwrap()).unwrap();
    assert_eq!(
        deny(&rig, &["add", "198.18.1.0/24", "--ttl", "1m"]),
        "deny: 0 entries added, 1 already there\n"
    );
    let list = rig.cli.list("deny").unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let e = find(&list, "198.18.1.0/24").unwrap();
    assert_eq!(e["origin"], "config", "{e}");
    assert!(e["expires_at"].is_null(), "{e}");
    // Mixed: the expiry is said of the one added, not of the file's.
    assert_eq!(
        deny(&rig, &["add", "198.18.1.0/24", "198.18.2.1", "--ttl", "1m"]),
        "deny: 1 entry added, expiring in 1m; 1 already there\n"
    );
}
