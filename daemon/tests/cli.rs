//! The `rampart` CLI as an operator runs it, with no rampartd: a missing or
//! dead socket, input refused before anything is sent, `--help`, and a fake
//! daemon (one thread, one canned answer) for the output and exit codes.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixListener},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use serde_json::{Value, json};

/// A scratch directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rampart-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn rampart(socket: &Path, args: &[&str]) -> Run {
    rampart_with_stdin(socket, args, "")
}

fn rampart_with_stdin(socket: &Path, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("RAMPART_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    finish(child.wait_with_output().unwrap())
}

/// A daemon that takes one connection, reads one request line and writes
/// the given response lines; `join` returns the request as JSON.
struct FakeDaemon {
    socket: PathBuf,
    thread: thread::JoinHandle<Value>,
    _dir: Dir,
}

impl FakeDaemon {
    fn answering(tag: &str, lines: Vec<Value>) -> Self {
        let dir = Dir::new(tag);
        let socket = dir.path("control.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let thread = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.ends_with('\n'), "one request line: {line:?}");
            let request: Value = serde_json::from_str(&line).unwrap();
            for answer in lines {
                let mut text = answer.to_string();
                text.push('\n');
                reader.get_mut().write_all(text.as_bytes()).unwrap();
            }
            request
        });
        Self {
            socket,
            thread,
            _dir: dir,
        }
    }

    fn ok(tag: &str, reply: Value) -> Self {
        Self::answering(tag, vec![json!({ "ok": reply })])
    }

    fn error(tag: &str, kind: &str, message: &str, details: &[&str]) -> Self {
        Self::answering(
            tag,
            vec![json!({ "error": { "kind": kind, "message": message, "details": details } })],
        )
    }

    fn request(self) -> Value {
        self.thread.join().unwrap()
    }
}

#[test]
fn a_missing_socket_means_rampartd_is_not_running() {
    let dir = Dir::new("missing");
    let socket = dir.path("control.sock");
    let run = rampart(&socket, &["status"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        format!(
            "rampart: rampartd is not running (no control socket at {})\n",
            socket.display()
        )
    );
    assert!(run.stdout.is_empty());
}

#[test]
fn a_socket_nobody_listens_on_means_rampartd_is_not_running() {
    let dir = Dir::new("stale");
    let socket = dir.path("control.sock");
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let run = rampart(&socket, &["deny", "list"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("rampart: rampartd is not running"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_socket_comes_from_the_environment_too() {
    let dir = Dir::new("env");
    let socket = dir.path("from-env.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("status")
        .env("RAMPART_SOCKET", &socket)
        .output()
        .unwrap();
    let run = finish(out);
    assert_eq!(run.code, 6);
    assert!(
        run.stderr.contains(&*socket.to_string_lossy()),
        "{}",
        run.stderr
    );
}

#[test]
fn invalid_input_exits_3_and_sends_nothing() {
    let dir = Dir::new("invalid");
    let socket = dir.path("control.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let list_file = dir.path("list.txt");
    std::fs::write(&list_file, "# scanners\n192.0.2.0/24\n\n198.51.100.0/33\n").unwrap();
    let list_file = list_file.to_string_lossy().into_owned();
    let long_comment = "x".repeat(1025);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["deny", "add", "192.0.2.1", "10.0.0.256"],
            "`10.0.0.256`",
        ),
        (vec!["allow", "add", "10.0.0.9-10.0.0.1"], "reversed"),
        (
            vec!["bypass", "del", "10.0.0.1/8"],
            "did you mean 10.0.0.0/8",
        ),
        (
            vec!["deny", "add", "--from-file", &list_file],
            "list.txt:4: invalid entry",
        ),
        (vec!["deny", "add", "192.0.2.1", "--ttl", "0s"], "--ttl"),
        (
            vec!["deny", "add", "192.0.2.1", "--ttl", "forever"],
            "--ttl",
        ),
        (vec!["deny", "add", "192.0.2.1", "--ttl", "400d"], "365d"),
        (vec!["country", "block", "DE", "Germany"], "`Germany`"),
        (vec!["country", "allow-only", "d3"], "`d3`"),
        (
            vec!["deny", "add", "192.0.2.1", "--comment", "txt\u{202e}exe.sh"],
            "invalid --comment: it contains U+202E, an invisible format character",
        ),
        (
            vec!["deny", "add", "192.0.2.1", "--comment", "a\u{200b}b"],
            "U+200B",
        ),
        (
            vec!["deny", "add", "192.0.2.1", "--comment", "line1\nFAKE"],
            "control characters (one line only)",
        ),
        (
            vec!["deny", "add", "192.0.2.1", "--comment", &long_comment],
            "longer than 1024 bytes",
        ),
        (vec!["keys", "suspend", "a\tb"], "control characters"),
        (vec!["keys", "create", ""], "empty"),
        (vec!["check", "not-an-ip"], "`not-an-ip`"),
    ];
    for (args, needle) in cases {
        let run = rampart(&socket, &args);
        assert_eq!(run.code, 3, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.starts_with("rampart: "), "{}", run.stderr);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
    // Nothing connected: the CLI checked before it dialled.
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

#[test]
fn every_verb_has_help() {
    let socket = Path::new("/nonexistent/control.sock");
    let verbs: &[&[&str]] = &[
        &[],
        &["status"],
        &["stats"],
        &["check"],
        &["deny"],
        &["deny", "add"],
        &["deny", "del"],
        &["deny", "list"],
        &["allow", "add"],
        &["bypass", "list"],
        &["country"],
        &["country", "block"],
        &["country", "unblock"],
        &["country", "allow-only"],
        &["country", "list"],
        &["geo", "load"],
        &["keys"],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "rotate"],
        &["keys", "suspend"],
        &["keys", "activate"],
        &["keys", "revoke"],
        &["reload"],
        &["events"],
    ];
    for verb in verbs {
        let mut args = verb.to_vec();
        args.push("--help");
        let run = rampart(socket, &args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        let usage = format!("Usage: rampart {}", verb.join(" "));
        assert!(
            run.stdout.contains(usage.trim_end()),
            "{args:?}: {}",
            run.stdout
        );
    }
    // A verb that is not one: clap's usage error.
    let run = rampart(socket, &["deny", "remove", "192.0.2.1"]);
    assert_eq!(run.code, 2);
}

#[test]
fn deny_add_sends_the_list_add_request() {
    let daemon = FakeDaemon::ok(
        "add",
        json!({ "type": "changed", "changed": 3, "unchanged": 1 }),
    );
    let run = rampart_with_stdin(
        &daemon.socket.clone(),
        &[
            "deny",
            "add",
            "192.0.2.1",
            "--ttl",
            "10m",
            "--comment",
            "scanner",
            "--from-file",
            "-",
        ],
        "# from stdin\n198.51.100.0/24\n203.0.113.1-203.0.113.9\n",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "deny: 3 entries added, expiring in 10m; 1 already there\n"
    );
    assert_eq!(
        daemon.request(),
        json!({
            "version": 1,
            "op": "list_add",
            "list": "deny",
            "entries": ["192.0.2.1", "198.51.100.0/24", "203.0.113.1-203.0.113.9"],
            "ttl_secs": 600,
            "comment": "scanner",
            "replace": false,
        })
    );
}

fn entries_reply() -> Value {
    json!({
        "type": "entries",
        "entries": [
            {
                "list": "deny", "entry": "192.0.2.0/24", "origin": "config",
                "expires_at": null, "comment": null, "added_by": null, "added_at": null,
                "reason": null
            },
            {
                "list": "deny", "entry": "198.51.100.7/32", "origin": "auto",
                "expires_at": 4_000_000_000u64, "comment": null, "added_by": null,
                "added_at": 1_700_000_000, "reason": "bad subscription keys"
            }
        ]
    })
}

#[test]
fn deny_list_prints_a_table() {
    let daemon = FakeDaemon::ok("list", entries_reply());
    let run = rampart(&daemon.socket.clone(), &["deny", "list"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        daemon.request(),
        json!({ "version": 1, "op": "list_show", "list": "deny" })
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(
        lines[0].starts_with("ENTRY            ORIGIN  EXPIRES IN  "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("192.0.2.0/24     config  never       "),
        "{}",
        lines[1]
    );
    // The TTL column is relative to now (days, then hours, minutes, seconds);
    // whatever its width, the next columns line up under their headers.
    let columns: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(columns[..2], ["198.51.100.7/32", "auto"]);
    // It ends in the smallest unit that is not zero: `s` except at a whole
    // minute (once a minute, `...4m`), so any unit may end it.
    assert!(
        columns[2].contains('d') && columns[2].ends_with(['d', 'h', 'm', 's']),
        "{}",
        lines[2]
    );
    assert_eq!(
        lines[0].find("ADDED"),
        lines[2].find("2023-11-14T22:13:20Z")
    );
    assert_eq!(
        lines[0].find("COMMENT"),
        lines[2].find("bad subscription keys")
    );
    assert!(lines[2].ends_with("bad subscription keys"), "{}", lines[2]);
}

#[test]
fn listings_in_json_are_arrays() {
    let daemon = FakeDaemon::ok("list-json", entries_reply());
    let run = rampart(&daemon.socket.clone(), &["deny", "list", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    daemon.request();
    let value: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(value, entries_reply()["entries"]);

    let daemon = FakeDaemon::ok(
        "keys-json",
        json!({ "type": "subscriptions", "subscriptions": [
            { "name": "acme", "scope": "all", "state": "active", "origin": "store", "created_at": 1 }
        ]}),
    );
    let run = rampart(&daemon.socket.clone(), &["--json", "keys", "list"]);
    assert_eq!(daemon.request()["op"], "keys_list");
    let value: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(value[0]["name"], "acme");
}

#[test]
fn other_replies_in_json_keep_their_type() {
    let status = json!({
        "type": "status", "version": "0.1.0", "pid": 42, "uptime_secs": 61,
        "config": "/etc/rampart/rampart.toml", "filter": null, "gateway": null,
        "last_reload": null
    });
    let daemon = FakeDaemon::ok("status-json", status.clone());
    let run = rampart(&daemon.socket.clone(), &["status", "--json"]);
    assert_eq!(daemon.request(), json!({ "version": 1, "op": "status" }));
    let value: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(value, status);

    let daemon = FakeDaemon::ok("status", status);
    let run = rampart(&daemon.socket.clone(), &["status"]);
    daemon.request();
    assert!(
        run.stdout
            .starts_with("rampartd:  0.1.0 (pid 42, up 1m1s)\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn keys_create_prints_both_keys_once() {
    let daemon = FakeDaemon::ok(
        "keys",
        json!({ "type": "keys_created", "name": "acme", "primary": "k1-primary", "secondary": "k2-secondary" }),
    );
    let run = rampart(
        &daemon.socket.clone(),
        &["keys", "create", "acme", "--api", "orders"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        daemon.request(),
        json!({
            "version": 1, "op": "keys_create", "name": "acme",
            "scope": { "kind": "api", "name": "orders" }
        })
    );
    assert_eq!(
        run.stdout,
        "subscription \"acme\" created, scope: API \"orders\"\n\
         primary key:    k1-primary\n\
         secondary key:  k2-secondary\n\
         These keys are shown once: rampartd keeps only their hashes. Store them now.\n"
    );

    let daemon = FakeDaemon::ok(
        "keys-all",
        json!({ "type": "keys_created", "name": "b", "primary": "p", "secondary": "s" }),
    );
    let run = rampart(&daemon.socket.clone(), &["keys", "create", "b", "--json"]);
    assert_eq!(daemon.request()["scope"], json!({ "kind": "all" }));
    let value: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(value["type"], "keys_created");
    assert_eq!(value["primary"], "p");
}

fn check_reply(action: &str) -> Value {
    json!({
        "type": "check", "addr": "198.51.100.7", "port": 443, "action": action,
        "reason": if action == "drop" { "denied" } else { "passed" },
        "list": if action == "drop" { json!("deny") } else { Value::Null },
        "entry": if action == "drop" { json!("198.51.100.0/24") } else { Value::Null },
        "origin": if action == "drop" { json!("operator") } else { Value::Null },
        "expires_in_secs": null, "country": "de", "in_scope": true,
        "explanation": format!("the kernel would {action} packets from 198.51.100.7 to port 443")
    })
}

#[test]
fn check_explains_and_exit_code_says_dropped() {
    let daemon = FakeDaemon::ok("check-drop", check_reply("drop"));
    let run = rampart(
        &daemon.socket.clone(),
        &["check", "198.51.100.7", "--port", "443", "--exit-code"],
    );
    assert_eq!(
        daemon.request(),
        json!({ "version": 1, "op": "check", "addr": "198.51.100.7", "port": 443, "udp": false })
    );
    assert_eq!(run.code, 10, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "the kernel would drop packets from 198.51.100.7 to port 443\n  \
         verdict:  drop (denied)\n  \
         source:   198.51.100.7 (country de)\n  \
         port:     tcp/443, in the protected scope\n  \
         rule:     deny 198.51.100.0/24 (operator)\n"
    );

    // Without --exit-code a drop is still a successful answer.
    let daemon = FakeDaemon::ok("check-drop-0", check_reply("drop"));
    let run = rampart(&daemon.socket.clone(), &["check", "198.51.100.7"]);
    daemon.request();
    assert_eq!(run.code, 0);

    let daemon = FakeDaemon::ok("check-pass", check_reply("pass"));
    let run = rampart(
        &daemon.socket.clone(),
        &["check", "198.51.100.7", "--exit-code", "--json"],
    );
    daemon.request();
    assert_eq!(run.code, 0);
    let value: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(value["action"], "pass");
}

#[test]
fn daemon_errors_print_message_and_details_with_their_exit_code() {
    let daemon = FakeDaemon::error(
        "reload",
        "config",
        "the configuration file is invalid; the running configuration stays",
        &[
            "/etc/rampart/rampart.toml:3:1: unknown key `listner`",
            "/etc/rampart/rampart.toml:9:5: bad port",
        ],
    );
    let run = rampart(&daemon.socket.clone(), &["reload"]);
    assert_eq!(daemon.request(), json!({ "version": 1, "op": "reload" }));
    assert_eq!(run.code, 8);
    assert!(run.stdout.is_empty());
    assert_eq!(
        run.stderr,
        "rampart: the configuration file is invalid; the running configuration stays\n  \
         /etc/rampart/rampart.toml:3:1: unknown key `listner`\n  \
         /etc/rampart/rampart.toml:9:5: bad port\n"
    );

    for (kind, code, args) in [
        ("not_found", 4, &["keys", "revoke", "nobody"][..]),
        ("conflict", 7, &["keys", "create", "acme"]),
        ("invalid_input", 3, &["country", "block", "zz"]),
        ("permission_denied", 5, &["stats"]),
        ("storage", 1, &["allow", "del", "192.0.2.1"]),
        ("kernel", 1, &["bypass", "add", "192.0.2.0/24"]),
        ("unavailable", 1, &["geo", "load", "/var/lib/geo.mmdb"]),
        ("version", 1, &["status"]),
        ("internal", 1, &["country", "list"]),
    ] {
        let daemon = FakeDaemon::error(kind, kind, "it went wrong", &[]);
        let run = rampart(&daemon.socket.clone(), args);
        daemon.request();
        assert_eq!(run.code, code, "{kind}: {}", run.stderr);
        assert_eq!(run.stderr, "rampart: it went wrong\n", "{kind}");
    }
}

#[test]
fn country_verbs_send_lower_case_codes() {
    let daemon = FakeDaemon::ok(
        "block",
        json!({ "type": "changed", "changed": 2, "unchanged": 0 }),
    );
    let run = rampart(&daemon.socket.clone(), &["country", "block", "CN", "ru"]);
    assert_eq!(
        daemon.request(),
        json!({ "version": 1, "op": "country_block", "countries": ["cn", "ru"] })
    );
    assert_eq!(run.stdout, "2 countries blocked, 0 already blocked\n");

    let daemon = FakeDaemon::ok("off", json!({ "type": "done" }));
    let run = rampart(&daemon.socket.clone(), &["country", "allow-only", "--off"]);
    assert_eq!(
        daemon.request(),
        json!({ "version": 1, "op": "country_allow_only", "countries": [], "allow_unknown": false })
    );
    assert_eq!(run.stdout, "country policy off: no country is blocked\n");
}

#[test]
fn events_print_one_line_per_event() {
    let event = |ms: u64, what: &str| {
        json!({ "ok": { "type": "event", "time_ms": ms, "event": what,
                        "message": "something happened", "fields": [["source", "192.0.2.1"]] } })
    };
    let daemon = FakeDaemon::answering(
        "events",
        vec![
            event(1_700_000_000_000, "ban_added"),
            event(1_700_000_001_500, "ban_expired"),
            json!({ "ok": { "type": "done" } }),
        ],
    );
    let run = rampart(&daemon.socket.clone(), &["events", "--last", "2"]);
    assert_eq!(
        daemon.request(),
        json!({ "version": 1, "op": "events", "follow": false, "last": 2 })
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "2023-11-14T22:13:20.000Z  ban_added  something happened source=192.0.2.1\n\
         2023-11-14T22:13:21.500Z  ban_expired  something happened source=192.0.2.1\n"
    );

    // A follower whose rampartd stops (the connection closes) is told so and
    // exits 6, unlike one the operator interrupts.
    let daemon = FakeDaemon::answering("events-json", vec![event(1, "geo_loaded")]);
    let run = rampart(&daemon.socket.clone(), &["events", "--follow", "--json"]);
    assert_eq!(daemon.request()["follow"], true);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event"], "geo_loaded");
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        "rampart: rampartd closed the event stream (it stopped or restarted)\n"
    );
}

/// Keys the output could not take are lost (rampartd keeps hashes only): the
/// error says the subscription exists and how to get keys.
#[test]
fn keys_that_cannot_be_written_are_named_with_the_way_to_new_ones() {
    let daemon = FakeDaemon::ok(
        "keys-full",
        json!({ "type": "keys_created", "name": "acme", "primary": "p", "secondary": "s" }),
    );
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["keys", "create", "acme"])
        .env_remove("RAMPART_SOCKET")
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    daemon.request();
    let run = finish(out);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with(
            "rampart: subscription acme was created, but the output could not be written ("
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.ends_with(
            "run `rampart keys rotate acme` and `rampart keys rotate acme --secondary` to get new ones\n"
        ),
        "{}",
        run.stderr
    );
}

/// `status` says which countries the policy blocks, and a refused reload's
/// first problem (what rampartd records for it).
#[test]
fn status_names_the_countries_and_the_reload_problem() {
    let daemon = FakeDaemon::ok(
        "status-countries",
        json!({ "type": "status", "version": "0.1.0", "pid": 7, "uptime_secs": 61,
                "config": "/etc/rampart/rampart.toml",
                "last_reload": { "at": 1_700_000_000, "ok": false,
                                 "message": "/etc/rampart/rampart.toml:3:9: bad port" },
                "filter": { "interfaces": ["eth0 (skb)"], "pins": "/sys/fs/bpf/rampart/v3",
                            "deny": 1, "allow": 0, "bypass": 0, "auto_bans": 0,
                            "country_policy": "block",
                            "countries": ["CN", "KP", "RU", "XA", "XB", "XC", "XD", "XE", "XF", "XG"],
                            "country_prefixes": 4 },
                "gateway": null }),
    );
    let run = rampart(&daemon.socket.clone(), &["status"]);
    daemon.request();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(
            "countries:   block 10 countries: CN KP RU XA XB XC XD XE and 2 more; table of 4 prefixes\n"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("refused: /etc/rampart/rampart.toml:3:9: bad port\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_daemon_that_hangs_up_without_answering_is_a_failure() {
    let daemon = FakeDaemon::answering("hangup", vec![]);
    let run = rampart(&daemon.socket.clone(), &["status"]);
    daemon.request();
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("rampart: unexpected answer from rampartd"),
        "{}",
        run.stderr
    );
}

#[test]
fn completions_and_man_pages_come_from_the_clap_definition() {
    let run = rampart(Path::new("/nonexistent"), &["completions", "bash"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("allow-only"), "bash completion");
    let dir = Dir::new("man");
    let out = dir.path("man");
    let run = rampart(
        Path::new("/nonexistent"),
        &["generate-man", &out.to_string_lossy()],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    for page in ["rampart.1", "rampart-deny-add.1", "rampart-keys-create.1"] {
        let text = std::fs::read_to_string(out.join(page)).unwrap();
        assert!(
            text.starts_with(".ie"),
            "{page}: {}",
            &text[..40.min(text.len())]
        );
    }
    // Hidden helpers get no page.
    assert!(!out.join("rampart-completions.1").exists());
}

/// `setpriv` or `runuser` to run a command as `nobody`, if the machine has one.
fn as_nobody() -> Option<Command> {
    let found = |name: &str| {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
    };
    if let Some(setpriv) = found("setpriv") {
        let mut cmd = Command::new(setpriv);
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        return Some(cmd);
    }
    let runuser = found("runuser")?;
    let mut cmd = Command::new(runuser);
    cmd.args(["-u", "nobody", "--"]);
    Some(cmd)
}

#[test]
fn a_socket_the_user_may_not_reach_is_permission_denied() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to make a socket that nobody cannot reach");
        return;
    }
    let Some(mut cmd) = as_nobody() else {
        eprintln!("skipped: neither setpriv nor runuser is installed");
        return;
    };
    let dir = Dir::new("perm");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The binary where `nobody` may run it (the build tree may be closed to it).
    let binary = dir.path("rampart");
    std::fs::copy(env!("CARGO_BIN_EXE_rampart"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The socket inside a root-only directory, as rampartd makes it.
    let private = dir.path("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = private.join("control.sock");
    let _listener = UnixListener::bind(&socket).unwrap();

    let out = cmd
        .arg(&binary)
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .env_remove("RAMPART_SOCKET")
        .output()
        .unwrap();
    let run = finish(out);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        format!(
            "rampart: permission denied on {}; run as root or as a member of the control group\n",
            socket.display()
        )
    );
}
