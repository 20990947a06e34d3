//! A journald that stops reading does not stop the gateway.
//!
//! journald's native socket queues about ten datagrams; a rampartd that sent its
//! entries from the thread that logs stopped answering after ten requests with
//! `access_log = "all"` once journald paused. Here the real journald is stopped
//! (SIGSTOP) while 10,000 requests go through rampartd: every one is answered,
//! the entries beyond rampartd's queue are dropped and counted in `/metrics`,
//! and once journald runs again the queued entries and a `log_dropped` warning
//! with the same count reach the journal.
//!
//! Its own test binary: stopping journald would disturb other tests reading the
//! journal at the same time. Needs root (to run journald, stop it and read the
//! journal); skipped visibly otherwise. journald is continued on drop, also when
//! the test fails.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;
#[allow(dead_code)]
#[path = "../../tests/src/journal.rs"]
mod journal;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_support::*;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use journal::{Journald, field, wait_entries};

type Plain = Client<HttpConnector, Empty<Bytes>>;

/// Requests sent while journald is stopped: more than rampartd's queue (8,192).
const REQUESTS: usize = 10_000;
const CLIENTS: usize = 4;

/// The journald processes, stopped; continued on drop.
struct Stopped(Vec<i32>);

impl Stopped {
    fn journald() -> Self {
        let out = Command::new("pgrep")
            .args(["-x", "systemd-journal"])
            .output()
            .unwrap();
        let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        assert!(!pids.is_empty(), "no systemd-journald process found");
        for &pid in &pids {
            // SAFETY: kill has no memory preconditions.
            assert_eq!(
                unsafe { libc::kill(pid, libc::SIGSTOP) },
                0,
                "SIGSTOP {pid}"
            );
        }
        Self(pids)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

async fn fetch(client: &Plain, url: &str) -> (u16, String) {
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(url.parse().unwrap()))
        .await
        .unwrap_or_else(|_| panic!("{url}: no answer within 5 s"))
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn dropped_metric(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("rampart_log_entries_dropped_total "))
        .unwrap_or_else(|| panic!("no rampart_log_entries_dropped_total in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_journald_does_not_stop_the_gateway() {
    let Some(_journald) = Journald::for_root_test() else {
        return;
    };

    let dir = TempDir::new("journald-stall");
    let backend = start_backend().await;
    let (port, admin) = (free_port(), free_port());
    let config = dir.0.join("rampart.toml");
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\nlog_target = \"journald\"\n\
         admin_listen = \"127.0.0.1:{admin}\"\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\nplain_http = true\n\
         [[api]]\nname = \"echo\"\npath_prefix = \"/\"\nbackend = \"http://{backend}/\"\n\
         subscription = \"none\"\nlisteners = [\"127.0.0.1:{port}\"]\n\
         [gateway]\naccess_log = \"all\"\n",
        state = dir.0.join("state").display().to_string(),
        runtime = dir.0.join("run").display().to_string(),
    );
    let mut daemon = Rampartd::start(&config, &text, dir.0.join("rampartd.log"), port).await;
    let pid = daemon.child.id();
    let client: Plain = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://127.0.0.1:{port}/x");
    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    assert_eq!(fetch(&client, &url).await.0, 200);
    assert_eq!(dropped_metric(&fetch(&client, &metrics).await.1), 0);

    let stopped = Stopped::journald();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..REQUESTS / CLIENTS {
                let (status, body) = fetch(&client, &url).await;
                assert_eq!(status, 200, "{body}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let took = started.elapsed();
    // Every request was answered (each within 5 s) while journald was stopped.
    let (status, text) = fetch(&client, &metrics).await;
    assert_eq!(status, 200);
    let dropped = dropped_metric(&text);
    // At most the queue (8,192), the socket's few datagrams and the one the
    // writer holds can wait for journald; the rest of the 10,001 access events
    // were dropped, and no more than those.
    assert!(
        (1_700..=10_001).contains(&dropped),
        "{dropped} dropped after {REQUESTS} requests in {took:?}"
    );

    drop(stopped);
    let access_events = |entries: &[serde_json::Value]| {
        entries
            .iter()
            .filter(|e| field(e, "TARGET") == "rampart::access")
            .count() as u64
    };
    let (journal, entries) = wait_entries(pid, Duration::from_secs(30), |entries| {
        entries
            .iter()
            .any(|e| field(e, "RAMPART_EVENT") == "log_dropped")
            && access_events(entries) + dropped >= REQUESTS as u64
    });
    let warning = entries
        .iter()
        .find(|e| field(e, "RAMPART_EVENT") == "log_dropped")
        .unwrap_or_else(|| panic!("no log_dropped entry; journal:\n{journal}"));
    assert_eq!(field(warning, "PRIORITY"), "4", "{warning}");
    assert_eq!(field(warning, "DROPPED"), dropped.to_string(), "{warning}");
    assert_eq!(
        field(warning, "DROPPED_TOTAL"),
        dropped.to_string(),
        "{warning}"
    );
    assert_eq!(field(warning, "SYSLOG_IDENTIFIER"), "rampartd", "{warning}");
    // The queued access events reached the journal once it ran again.
    let access = access_events(&entries);
    assert!(
        access + dropped >= REQUESTS as u64 && access >= 8_000,
        "{access} access events in the journal, {dropped} dropped"
    );

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}");
}
