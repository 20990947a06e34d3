//! The admin listener of the real `rampartd`: `/metrics` scraped with an HTTP
//! client and parsed strictly, counters moving with real traffic through the
//! gateway, `/healthz`, `/readyz` (ready while serving, 503 while draining),
//! `admin_listen = "off"`, a bad address, a port already taken.
//!
//! The files have no `[filter]`: no privileges needed. The kernel families
//! are tested in tests/tests/metrics.rs.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gateway_support::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rampart::policy::keys::{KeyStore, Scope};

type Plain = Client<HttpConnector, Empty<Bytes>>;

fn plain_client() -> Plain {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn request(client: &Plain, method: Method, url: &str, key: Option<&str>) -> (u16, String) {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(key) = key {
        builder = builder.header("Ocp-Apim-Subscription-Key", key);
    }
    let response = client
        .request(builder.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// One scrape: `name{label="value",...}` (labels in exposition order) -> value.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn get(&self, key: &str) -> f64 {
        self.samples.get(key).copied().unwrap_or(0.0)
    }
}

/// A strict parser of the Prometheus text format 0.0.4 as rampart writes it:
/// every line is `# HELP name text`, `# TYPE name type` (before the family's
/// samples, once), or a sample of the family last declared with well-formed
/// labels and a float value; no sample twice.
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    let mut family = String::new();
    let mut helped = HashSet::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let valid_name = |name: &str| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            assert!(helped.insert(name.to_owned()), "HELP twice: {line}");
            family = name.to_owned();
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(name, family, "TYPE after its HELP: {line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                scrape
                    .types
                    .insert(name.to_owned(), kind.to_owned())
                    .is_none(),
                "{line}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        assert!(valid_name(name), "{line}");
        let kind = scrape.types.get(&family).map(String::as_str);
        let in_family = name == family
            || (kind == Some("histogram")
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{family}{s}")));
        assert!(in_family, "{line} is not in the family {family}");
        if kind == Some("counter") {
            assert!(name.ends_with("_total"), "counters end in _total: {line}");
        }
        let mut rest = &line[name_end..];
        let mut key = name.to_owned();
        if let Some(labels) = rest.strip_prefix('{') {
            let (labels, tail) = parse_labels(labels, line);
            key.push('{');
            key.push_str(&labels);
            key.push('}');
            rest = tail;
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        assert!(
            scrape.samples.insert(key.clone(), value).is_none(),
            "sample twice: {key}"
        );
    }
    scrape
}

/// Labels after the `{`: `a="x",b="y"} 1` -> (`a="x",b="y"`, ` 1`), each value
/// unescaped and written back in Rust's quoting.
fn parse_labels<'a>(mut labels: &'a str, line: &str) -> (String, &'a str) {
    let mut out = String::new();
    loop {
        let eq = labels.find('=').unwrap();
        let label = &labels[..eq];
        assert!(
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert_eq!(&labels[eq + 1..eq + 2], "\"", "{line}");
        let bytes = labels.as_bytes();
        let mut i = eq + 2;
        let mut value = String::new();
        loop {
            match bytes[i] {
                b'\\' => {
                    value.push(match bytes[i + 1] {
                        b'\\' => '\\',
                        b'"' => '"',
                        b'n' => '\n',
                        other => panic!("bad escape \\{} in {line}", other as char),
                    });
                    i += 2;
                }
                b'"' => break,
                _ => {
                    let c = labels[i..].chars().next().unwrap();
                    value.push(c);
                    i += c.len_utf8();
                }
            }
        }
        out.push_str(&format!("{label}={value:?}"));
        i += 1;
        match bytes[i] {
            b',' => {
                out.push(',');
                labels = &labels[i + 1..];
            }
            b'}' => return (out, &labels[i + 1..]),
            other => panic!("unexpected {} in {line}", other as char),
        }
    }
}

async fn scrape(client: &Plain, admin: SocketAddr) -> Scrape {
    let (status, body) = request(
        client,
        Method::GET,
        &format!("http://{admin}/metrics"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

/// A plain-HTTP gateway with one keyed API and an admin listener, both on
/// loopback ports of their own.
struct Rig {
    _dir: TempDir,
    daemon: Rampartd,
    admin: SocketAddr,
    key: String,
}

async fn start_rig(name: &str) -> Rig {
    let dir = TempDir::new(name);
    let state_dir = dir.0.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let (_, keys) = KeyStore::open(&state_dir)
        .unwrap()
        .create("e2e", Scope::AllApis)
        .unwrap();
    let backend = start_backend().await;
    let port = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.0.join("rampart.toml");
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\nadmin_listen = \"{admin}\"\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\nplain_http = true\n\
         [[api]]\nname = \"echo\"\npath_prefix = \"/echo\"\nbackend = \"http://{backend}/\"\n\
         listeners = [\"127.0.0.1:{port}\"]\n",
        state = state_dir.display().to_string(),
        runtime = dir.0.join("run").display().to_string(),
    );
    let log = dir.0.join("rampartd.log");
    let daemon = Rampartd::start(&config, &text, log, port).await;
    Rig {
        _dir: dir,
        daemon,
        admin,
        key: keys.primary.expose().to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_with_traffic_and_health_endpoints_answer() {
    let rig = start_rig("admin-metrics").await;
    let client = plain_client();
    let admin = rig.admin;
    let api = format!("http://127.0.0.1:{}/echo/x", rig.daemon.port);

    assert_eq!(
        request(
            &client,
            Method::GET,
            &format!("http://{admin}/healthz"),
            None
        )
        .await,
        (200, "ok\n".to_owned())
    );
    assert_eq!(
        request(
            &client,
            Method::GET,
            &format!("http://{admin}/readyz"),
            None
        )
        .await,
        (200, "ready\n".to_owned())
    );
    assert_eq!(
        request(
            &client,
            Method::GET,
            &format!("http://{admin}/nothing"),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        request(
            &client,
            Method::POST,
            &format!("http://{admin}/metrics"),
            None
        )
        .await
        .0,
        405
    );
    let (status, body) = request(
        &client,
        Method::HEAD,
        &format!("http://{admin}/metrics"),
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (200, ""));

    let before = scrape(&client, admin).await;
    assert_eq!(before.get("rampart_control_up"), 1.0);
    assert!(
        before
            .samples
            .keys()
            .any(|k| k.starts_with("rampart_build_info{version="))
    );
    assert_eq!(
        before.types["rampart_http_request_duration_seconds"],
        "histogram"
    );
    assert_eq!(before.types["rampart_http_requests_total"], "counter");

    const N: u32 = 7;
    for _ in 0..N {
        let (status, body) = request(&client, Method::GET, &api, Some(&rig.key)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = request(&client, Method::GET, &api, None).await;
    assert_eq!(status, 401);
    let (status, _) = request(
        &client,
        Method::GET,
        &format!("http://127.0.0.1:{}/nowhere", rig.daemon.port),
        None,
    )
    .await;
    assert_eq!(status, 404);

    let after = scrape(&client, admin).await;
    let delta = |key: &str| after.get(key) - before.get(key);
    let ok = r#"rampart_http_requests_total{api="echo",status="200",reason=""}"#;
    let no_key =
        r#"rampart_http_requests_total{api="echo",status="401",reason="SubscriptionKeyNotFound"}"#;
    let unrouted = r#"rampart_http_requests_total{api="",status="404",reason="OperationNotFound"}"#;
    assert_eq!(delta(ok), f64::from(N), "{:#?}", after.samples);
    assert_eq!(delta(no_key), 1.0, "{:#?}", after.samples);
    assert_eq!(delta(unrouted), 1.0, "{:#?}", after.samples);
    let count = r#"rampart_http_request_duration_seconds_count{api="echo"}"#;
    assert_eq!(delta(count), f64::from(N + 1));
    assert_eq!(
        after.get(r#"rampart_http_request_duration_seconds_bucket{api="echo",le="+Inf"}"#),
        after.get(count)
    );
    assert!(after.get(r#"rampart_http_request_duration_seconds_sum{api="echo"}"#) > 0.0);
    assert_eq!(after.get(r#"rampart_rate_limited_total{api="echo"}"#), 0.0);
    assert!(after.get("rampart_http_connections_accepted_total") >= 1.0);

    // Reloads are counted by result.
    let reloads_ok = r#"rampart_reloads_total{result="ok"}"#;
    let seen = rig.daemon.log_count("configuration reloaded");
    rig.daemon.signal(libc::SIGHUP);
    rig.daemon
        .wait_for_log("configuration reloaded", seen)
        .await;
    let reloaded = scrape(&client, admin).await;
    assert_eq!(reloaded.get(reloads_ok) - after.get(reloads_ok), 1.0);
    assert!(
        reloaded.get("rampart_last_reload_success_timestamp_seconds")
            >= reloaded.get("rampart_start_time_seconds").floor()
    );
    // Counters survive the reload.
    assert_eq!(reloaded.get(ok), after.get(ok));

    // SIGTERM with a request in flight: while the gateway drains, /readyz is 503.
    let slow = {
        let client = client.clone();
        let url = format!("http://127.0.0.1:{}/echo/slow?ms=2500", rig.daemon.port);
        let key = rig.key.clone();
        tokio::spawn(async move { request(&client, Method::GET, &url, Some(&key)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut rig = rig;
    rig.daemon.signal(libc::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let (status, body) = loop {
        let answer = request(
            &client,
            Method::GET,
            &format!("http://{admin}/readyz"),
            None,
        )
        .await;
        if answer.0 == 503 || std::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: draining (stopping)\n")
    );
    assert_eq!(
        request(
            &client,
            Method::GET,
            &format!("http://{admin}/healthz"),
            None
        )
        .await
        .0,
        200,
        "alive while draining"
    );
    assert_eq!(slow.await.unwrap().0, 200, "the request in flight finished");
    let status = rig.daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", rig.daemon.log());
}

/// hunt9 M4: any local user can reach the admin listener. Connections that send
/// part of a request head and nothing more took all 64 slots (for the 5 s head
/// timeout each, reopened as they were closed), and `/healthz` and `/readyz` did
/// not answer. A new connection now takes the place of the oldest one still
/// without a head: the probes answer at once while 300 such connections are held.
#[tokio::test(flavor = "multi_thread")]
async fn connections_that_never_send_a_head_do_not_keep_the_probes_out() {
    use tokio::io::AsyncWriteExt;
    let mut rig = start_rig("admin-slow-heads").await;
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(rig.admin).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    let client = plain_client();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            request(
                &client,
                Method::GET,
                &format!("http://{}{path}", rig.admin),
                None,
            ),
        )
        .await;
        let Ok((status, _)) = answer else {
            panic!(
                "{path}: no answer in 3 s with 300 connections held\n{}",
                rig.daemon.log()
            );
        };
        assert_eq!(status, 200, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path}: {:?}",
            started.elapsed()
        );
    }
    drop(held);
    assert!(rig.daemon.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_listen_off_has_no_listener() {
    let dir = TempDir::new("admin-off");
    let port = free_port();
    let backend = start_backend().await;
    let config = dir.0.join("rampart.toml");
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\nadmin_listen = \"off\"\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\nplain_http = true\n\
         [[api]]\nname = \"echo\"\npath_prefix = \"/echo\"\nsubscription = \"none\"\nbackend = \"http://{backend}/\"\n\
         listeners = [\"127.0.0.1:{port}\"]\n",
        state = dir.0.join("state").display().to_string(),
        runtime = dir.0.join("run").display().to_string(),
    );
    let mut daemon = Rampartd::start(&config, &text, dir.0.join("rampartd.log"), port).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = daemon.log();
    assert!(log.contains("admin listener off"), "{log}");
    assert!(!log.contains("admin listener ready"), "{log}");
    // No socket of the daemon listens besides the gateway's.
    let pid = daemon.child.id();
    let listening = listening_ports(pid);
    assert_eq!(listening, vec![port], "{log}");
    assert!(daemon.terminate().await.success());
}

/// The TCP ports process `pid` listens on (from /proc).
fn listening_ports(pid: u32) -> Vec<u16> {
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        if let Ok(target) = std::fs::read_link(fd.unwrap().path()) {
            let target = target.display().to_string();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 0A = LISTEN
            if fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort_unstable();
    ports
}

#[test]
fn a_bad_admin_address_is_a_configuration_error() {
    let dir = TempDir::new("admin-bad");
    let config = dir.0.join("rampart.toml");
    write_private(
        &config,
        "[daemon]\nadmin_listen = \"localhost:9180\"\n\
         [[listener]]\naddress = \"127.0.0.1:8080\"\nplain_http = true\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rampartd"))
        .arg("--check-config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(":2:")
            && stderr
                .contains("`daemon.admin_listen` \"localhost:9180\" is not an address with a port"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_port_taken_is_a_start_error() {
    let dir = TempDir::new("admin-taken");
    // Held without SO_REUSEPORT: rampartd cannot share it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap();
    let port = free_port();
    let config = dir.0.join("rampart.toml");
    write_private(
        &config,
        format!(
            "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\nadmin_listen = \"{admin}\"\n\
             [[listener]]\naddress = \"127.0.0.1:{port}\"\nplain_http = true\n",
            state = dir.0.join("state").display().to_string(),
            runtime = dir.0.join("run").display().to_string(),
        ),
    );
    let log = dir.0.join("rampartd.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rampartd"))
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Killed on drop if it does not exit.
    let mut daemon = Rampartd {
        child,
        log: log.clone(),
        port,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rampartd did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = daemon.log();
    assert_eq!(status.code(), Some(71), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {admin}")),
        "{stderr}"
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_never_loaded_is_exported_with_its_failures() {
    let dir = TempDir::new("admin-jwks");
    let idp = Pki::new();
    // Nothing listens on the JWKS port: every fetch fails at once.
    let jwks_port = free_port();
    let port = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let backend = start_backend().await;
    let config = dir.0.join("rampart.toml");
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\nadmin_listen = \"{admin}\"\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\nplain_http = true\n\
         [[jwt_provider]]\nname = \"corp\"\nalgorithms = [\"RS256\"]\n\
         jwks_url = \"https://localhost:{jwks_port}/keys\"\nca_file = {ca:?}\n\
         [[api]]\nname = \"orders\"\npath_prefix = \"/orders\"\nsubscription = \"none\"\n\
         backend = \"http://{backend}/\"\njwt = {{ provider = \"corp\" }}\n\
         listeners = [\"127.0.0.1:{port}\"]\n",
        state = dir.0.join("state").display().to_string(),
        runtime = dir.0.join("run").display().to_string(),
        ca = idp.ca_pem.display().to_string(),
    );
    let daemon = Rampartd::start(&config, &text, dir.0.join("rampartd.log"), port).await;
    let client = plain_client();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let scraped = loop {
        let scraped = scrape(&client, admin).await;
        if scraped.get(r#"rampart_jwks_fetch_failures_total{provider="corp"}"#) >= 1.0 {
            break scraped;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no fetch failure counted:\n{:#?}\n{}",
            scraped.samples,
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(scraped.get(r#"rampart_jwks_loaded{provider="corp"}"#), 0.0);
    assert!(
        !scraped
            .samples
            .contains_key(r#"rampart_jwks_age_seconds{provider="corp"}"#),
        "no age without keys"
    );
    // Not a readiness matter: other APIs keep working (docs/operations.md).
    assert_eq!(
        request(
            &client,
            Method::GET,
            &format!("http://{admin}/readyz"),
            None
        )
        .await
        .0,
        200
    );
    // A request without a token is refused before the keys matter.
    let (status, _) = request(
        &client,
        Method::GET,
        &format!("http://127.0.0.1:{port}/orders/x"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let after = scrape(&client, admin).await;
    assert_eq!(
        after.get(
            r#"rampart_http_requests_total{api="orders",status="401",reason="TokenNotPresent"}"#
        ),
        1.0,
        "{:#?}",
        after.samples
    );
}
