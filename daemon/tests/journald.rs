//! rampartd logging to a real journald: security events arrive with their
//! structured fields (`RAMPART_EVENT`, `SRC_IP`, `API`, `STATUS`, `REASON`,
//! `SUBSCRIPTION`, `PEER_UID`, `PRIORITY`) and are read back with
//! `journalctl -o json`; keys, tokens and Authorization values appear nowhere.
//!
//! When no journald answers on /run/systemd/journal/socket, the test starts
//! `/lib/systemd/systemd-journald` standalone (it needs no systemd as PID 1) and
//! stops it at the end, even when the test fails. Needs root (to run journald
//! and to read the journal); skipped visibly otherwise.
//!
//! The gateway alone (no `[filter]`): a TLS listener on loopback, one API that
//! requires a subscription key and has a rate limit.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;
// The journald guard and journal readers, shared with the rampart-tests crate.
#[allow(dead_code)]
#[path = "../../tests/src/journal.rs"]
mod journal;

use std::process::Command;
use std::time::Duration;

use gateway_support::*;
use journal::{Journald, field, wait_entries};
use rampart::policy::keys::{KeyStore, Scope};
use serde_json::Value;

fn find<'a>(entries: &'a [Value], event: &str, reason: Option<&str>) -> Option<&'a Value> {
    entries.iter().find(|e| {
        field(e, "RAMPART_EVENT") == event && reason.is_none_or(|r| field(e, "REASON") == r)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn security_events_reach_the_journal_with_their_fields() {
    let Some(_journald) = Journald::for_root_test() else {
        return;
    };

    let dir = TempDir::new("journald");
    let state_dir = dir.0.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let (_, keys) = KeyStore::open(&state_dir)
        .unwrap()
        .create("journal-e2e", Scope::AllApis)
        .unwrap();
    let pki = Pki::new();
    let cert = pki.leaf("gw", &["localhost"]);
    let backend = start_backend().await;
    let port = free_port();
    let runtime = dir.0.join("run");
    let config = dir.0.join("rampart.toml");
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\nlog_target = \"journald\"\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n\
         [[api]]\nname = \"ledger\"\npath_prefix = \"/ledger\"\nbackend = \"http://{backend}/\"\n\
         rate_limit = {{ calls = 2, period_secs = 60 }}\n",
        state = state_dir.display().to_string(),
        runtime = runtime.display().to_string(),
        cert = cert.cert_chain_pem.display().to_string(),
        key = cert.key_pem.display().to_string(),
    );
    let mut daemon = Rampartd::start(&config, &text, dir.0.join("rampartd.log"), port).await;
    let pid = daemon.child.id();
    let client = client(&pki, false);
    let url = daemon.url("/ledger/x");

    // Secrets a client sends; none may reach the journal.
    let wrong_key = format!("wrongkey{:016x}", rand_marker());
    let query_key = format!("querykey{:016x}", rand_marker());
    let token = format!("tokenvalue{:016x}", rand_marker());

    let (parts, _) = get(&client, &url).await;
    assert_eq!(parts.status, 401);
    let request = http::Request::get(&url)
        .header("Ocp-Apim-Subscription-Key", &wrong_key)
        .header("Authorization", format!("Bearer {token}"))
        .header("Cookie", format!("session={token}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let (parts, _) = send(&client, request).await;
    assert_eq!(parts.status, 401);
    let (parts, _) = get(&client, &format!("{url}?subscription-key={query_key}")).await;
    assert_eq!(parts.status, 401);

    // The rate limit: two calls a minute for the subscription, the third is 429.
    for expected in [200, 200, 429] {
        let request = http::Request::get(&url)
            .header("Ocp-Apim-Subscription-Key", keys.primary.expose())
            .body(http_body_util::Empty::new())
            .unwrap();
        let (parts, body) = send(&client, request).await;
        assert_eq!(parts.status, expected, "{body}");
    }

    // A control change by root: PEER_UID=0.
    let created = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("--socket")
        .arg(runtime.join("control.sock"))
        .args(["keys", "create", "journal-extra"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let created_text = String::from_utf8_lossy(&created.stdout).into_owned();

    daemon.signal(libc::SIGHUP);

    let (journal, entries) = wait_entries(pid, Duration::from_secs(20), |entries| {
        find(entries, "auth_failed", Some("SubscriptionKeyNotFound")).is_some()
            && find(entries, "auth_failed", Some("SubscriptionKeyInvalid")).is_some()
            && find(entries, "rate_limited", None).is_some()
            && find(entries, "keys_changed", None).is_some()
            && find(entries, "config_reloaded", None).is_some()
    });
    let context = || format!("journal of rampartd ({pid}):\n{journal}");

    let missing = find(&entries, "auth_failed", Some("SubscriptionKeyNotFound"))
        .unwrap_or_else(|| panic!("no auth_failed for a missing key; {}", context()));
    assert_eq!(field(missing, "SRC_IP"), "127.0.0.1", "{missing}");
    assert_eq!(field(missing, "API"), "ledger", "{missing}");
    assert_eq!(field(missing, "STATUS"), "401", "{missing}");
    assert_eq!(field(missing, "COUNT"), "1", "{missing}");
    assert_eq!(field(missing, "PRIORITY"), "4", "warning: {missing}");
    assert_eq!(field(missing, "SYSLOG_IDENTIFIER"), "rampartd", "{missing}");
    // The default view of the journal shows MESSAGE only: it names the facts.
    assert_eq!(
        field(missing, "MESSAGE"),
        "request refused: authentication failed (SubscriptionKeyNotFound, 1 from 127.0.0.1, api ledger)",
        "{missing}"
    );

    let invalid = find(&entries, "auth_failed", Some("SubscriptionKeyInvalid"))
        .unwrap_or_else(|| panic!("no auth_failed for a wrong key; {}", context()));
    assert_eq!(field(invalid, "SRC_IP"), "127.0.0.1", "{invalid}");
    assert_eq!(field(invalid, "STATUS"), "401", "{invalid}");
    // The second wrong key (in the query) is counted, not logged again: one
    // auth_failed per source and reason per 10 s.
    let invalid_events = entries
        .iter()
        .filter(|e| {
            field(e, "RAMPART_EVENT") == "auth_failed"
                && field(e, "REASON") == "SubscriptionKeyInvalid"
        })
        .count();
    assert_eq!(invalid_events, 1, "{}", context());

    let limited = find(&entries, "rate_limited", None)
        .unwrap_or_else(|| panic!("no rate_limited; {}", context()));
    assert_eq!(field(limited, "STATUS"), "429", "{limited}");
    assert_eq!(field(limited, "REASON"), "RateLimitExceeded", "{limited}");
    assert_eq!(field(limited, "SUBSCRIPTION"), "journal-e2e", "{limited}");
    assert_eq!(field(limited, "API"), "ledger", "{limited}");

    let keys_changed = find(&entries, "keys_changed", None)
        .unwrap_or_else(|| panic!("no keys_changed; {}", context()));
    assert_eq!(field(keys_changed, "PEER_UID"), "0", "{keys_changed}");
    assert!(
        !field(keys_changed, "PEER_PID").is_empty(),
        "{keys_changed}"
    );

    let reloaded = find(&entries, "config_reloaded", None)
        .unwrap_or_else(|| panic!("no config_reloaded; {}", context()));
    assert_eq!(field(reloaded, "PRIORITY"), "5", "notice: {reloaded}");

    // The access events went to the journal too (target rampart::access), each
    // with a MESSAGE (`journalctl -u rampartd` shows nothing of an entry without).
    let access = entries
        .iter()
        .find(|e| field(e, "TARGET") == "rampart::access" && field(e, "STATUS") == "200")
        .unwrap_or_else(|| panic!("no access event; {}", context()));
    assert_eq!(
        field(access, "MESSAGE"),
        format!("{} {} 200", field(access, "METHOD"), field(access, "PATH")),
        "{access}"
    );
    assert!(
        entries.iter().all(|e| !field(e, "MESSAGE").is_empty()),
        "an entry without MESSAGE; {}",
        context()
    );

    // No secret anywhere: not the wrong keys, the token, the cookie, nor the
    // real keys (used, and printed by `keys create`).
    for secret in [
        wrong_key.as_str(),
        query_key.as_str(),
        token.as_str(),
        keys.primary.expose(),
        keys.secondary.expose(),
    ] {
        assert!(!journal.contains(secret), "{secret} logged; {}", context());
    }
    for word in created_text.split_whitespace().filter(|w| w.len() >= 24) {
        assert!(!journal.contains(word), "created key {word} logged");
    }
    // Nothing went to stderr: the journal took every event.
    assert!(
        !daemon.log().contains("journal cannot be used"),
        "{}",
        daemon.log()
    );

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}");
}

/// A value for markers no other test uses.
fn rand_marker() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    u64::from_le_bytes(bytes)
}
