//! Operator list entries end to end, as listed and as enforced: what a comment
//! may hold (checked by the daemon as by the CLI, escaped when listed).
//!
//! Needs root (BPF, XDP, network namespaces); skipped visibly otherwise. The
//! binaries are the debug builds next to this test binary (`cargo build -p
//! rampart --bins` first).

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use rampart::{
    control::{
        client::{Client, ClientError},
        protocol::{ErrorKind, ListName, Request, exit},
    },
    filter::{EntryOrigin, ListKind},
    state::{Change, StateStore, StoredEntry},
};
use rampart_tests::{
    control::{Rig, RigOptions},
    privileged,
};
use serde_json::Value;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn opts(client: &[&str], filter: &str) -> RigOptions {
    RigOptions {
        client_addrs: client.iter().map(|a| ip(a)).collect(),
        filter: filter.into(),
        ..RigOptions::default()
    }
}

/// The entry of `list` whose `entry` is `net`.
fn find<'a>(list: &'a [Value], net: &str) -> Option<&'a Value> {
    list.iter().find(|e| e["entry"] == net)
}

/// The one row of `deny list` (for people) that starts with `net`.
fn row(rig: &Rig, net: &str) -> String {
    let text = rig.cli.ok(&["deny", "list"]).unwrap().stdout;
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(net)).collect();
    assert_eq!(rows.len(), 1, "one row for {net}:\n{text}");
    rows[0].to_owned()
}

#[test]
fn comments_are_checked_by_the_daemon_as_by_the_cli() {
    if !privileged() {
        return;
    }
    let rig = Rig::start(opts(&["198.18.0.7"], "")).unwrap();
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
    let mut rig = Rig::prepare(opts(&[], "")).unwrap();
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
