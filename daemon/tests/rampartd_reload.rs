//! Reloading the gateway while it serves TLS clients: the real `rampartd` on
//! SIGHUP (APIs added and removed, a rate limit and a JWT provider changed,
//! listeners added and removed, bad files rejected whole, no request lost under
//! load), and the library's running gateway for subscriptions changed at run
//! time and the rejection sink.
//!
//! Every test writes its own configuration (no `[filter]`: the gateway alone, no
//! privileges needed) into its own temporary directory, on free loopback ports;
//! each daemon is killed on drop, even when the test fails.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use gateway_support::*;
use http::Request;
use http_body_util::Empty;
use rampart::gateway::CertFiles;
use rampart::gateway::running;
use rampart::policy::keys::{KeySlot, KeyStoreError, Scope};
use tokio_util::sync::CancellationToken;

/// Logged by the gateway once a reload is swapped in (and removed listeners closed).
const RELOADED: &str = "gateway reloaded";
/// Logged by the service when a reload is rejected.
const REJECTED: &str = "the running configuration stays";

/// One test's directory, CA, gateway certificate and backend.
struct Setup {
    dir: TempDir,
    state_dir: PathBuf,
    config: PathBuf,
    pki: Pki,
    cert: CertFiles,
    backend: SocketAddr,
}

impl Setup {
    async fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        let state_dir = dir.0.join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let pki = Pki::new();
        let cert = pki.leaf("gw", &["localhost"]);
        Self {
            config: dir.0.join("rampart.toml"),
            state_dir,
            pki,
            cert,
            backend: start_backend().await,
            dir,
        }
    }

    /// `[daemon]`, one TLS `[[listener]]` per port, then `body` (`{backend}` is
    /// replaced by the test backend's address).
    fn text(&self, ports: &[u16], body: &str) -> String {
        let mut text = format!(
            "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\n\n",
            state = self.state_dir.display().to_string(),
            runtime = self.dir.0.join("run").display().to_string(),
        );
        for port in ports {
            text.push_str(&format!(
                "[[listener]]\naddress = \"127.0.0.1:{port}\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n\n",
                cert = self.cert.cert_chain_pem.display().to_string(),
                key = self.cert.key_pem.display().to_string(),
            ));
        }
        text.push_str(&body.replace("{backend}", &self.backend.to_string()));
        text
    }

    async fn start(&self, text: &str, port: u16) -> Rampartd {
        Rampartd::start(&self.config, text, self.dir.0.join("rampartd.log"), port).await
    }

    /// Writes `text`, sends SIGHUP and waits until the gateway has taken it.
    async fn reload(&self, daemon: &Rampartd, text: &str) {
        let seen = daemon.log_count(RELOADED);
        std::fs::write(&self.config, text).unwrap();
        daemon.signal(libc::SIGHUP);
        daemon.wait_for_log(RELOADED, seen).await;
    }

    /// Writes `text`, sends SIGHUP and waits until the reload is rejected.
    async fn rejected(&self, daemon: &Rampartd, text: &str) -> String {
        let seen = daemon.log_count(REJECTED);
        std::fs::write(&self.config, text).unwrap();
        daemon.signal(libc::SIGHUP);
        daemon.wait_for_log(REJECTED, seen).await;
        daemon.log()
    }
}

fn url(port: u16, path: &str) -> String {
    format!("https://localhost:{port}{path}")
}

async fn status(client: &TestClient<Empty<Bytes>>, url: &str) -> u16 {
    get(client, url).await.0.status.as_u16()
}

async fn status_with(client: &TestClient<Empty<Bytes>>, url: &str, name: &str, value: &str) -> u16 {
    let request = Request::get(url)
        .header(name, value)
        .body(Empty::new())
        .unwrap();
    send(client, request).await.0.status.as_u16()
}

async fn keyed_status(client: &TestClient<Empty<Bytes>>, url: &str, key: &str) -> u16 {
    status_with(client, url, "Ocp-Apim-Subscription-Key", key).await
}

/// An HS256 token for `secret`, valid for ten minutes.
fn token(secret: &[u8]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "alice", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

fn provider(secret: &[u8]) -> String {
    format!(
        "[[jwt_provider]]\nname = \"idp\"\nalgorithms = [\"HS256\"]\n\
         keys = [{{ hmac_secret_base64 = \"{}\" }}]\n\n",
        base64::engine::general_purpose::STANDARD.encode(secret)
    )
}

async fn refused(port: u16) -> bool {
    matches!(
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_apis_limits_listeners_and_providers() {
    let setup = Setup::new("reload-all").await;
    let (kept, removed, added) = (free_port(), free_port(), free_port());
    let (old_secret, new_secret) = ([1u8; 32], [2u8; 32]);
    let before = setup.text(
        &[kept, removed],
        &format!(
            "{provider}\
             [[api]]\nname = \"one\"\npath_prefix = \"/one\"\nbackend = \"http://{{backend}}/\"\n\
             subscription = \"none\"\nrate_limit = {{ calls = 100, period_secs = 60 }}\n\n\
             [[api]]\nname = \"two\"\npath_prefix = \"/two\"\nbackend = \"http://{{backend}}/\"\n\
             subscription = \"none\"\n\n\
             [[api]]\nname = \"secure\"\npath_prefix = \"/secure\"\nbackend = \"http://{{backend}}/\"\n\
             subscription = \"none\"\njwt = {{ provider = \"idp\" }}\n",
            provider = provider(&old_secret)
        ),
    );
    let after = setup.text(
        &[kept, added],
        &format!(
            "{provider}\
             [[api]]\nname = \"one\"\npath_prefix = \"/one\"\nbackend = \"http://{{backend}}/\"\n\
             subscription = \"none\"\nrate_limit = {{ calls = 1, period_secs = 60 }}\n\n\
             [[api]]\nname = \"three\"\npath_prefix = \"/three\"\nbackend = \"http://{{backend}}/\"\n\
             subscription = \"none\"\n\n\
             [[api]]\nname = \"secure\"\npath_prefix = \"/secure\"\nbackend = \"http://{{backend}}/\"\n\
             subscription = \"none\"\njwt = {{ provider = \"idp\" }}\n",
            provider = provider(&new_secret)
        ),
    );
    let mut daemon = setup.start(&before, kept).await;
    let h1 = client(&setup.pki, false);
    let h2 = client(&setup.pki, true);
    let bearer = |secret: &[u8]| format!("Bearer {}", token(secret));

    for _ in 0..3 {
        assert_eq!(status(&h1, &url(kept, "/one/x")).await, 200);
    }
    assert_eq!(status(&h2, &url(kept, "/two/x")).await, 200);
    assert_eq!(status(&h1, &url(kept, "/three/x")).await, 404);
    assert_eq!(status(&h1, &url(removed, "/one/x")).await, 200);
    let secure = url(kept, "/secure/x");
    assert_eq!(
        status_with(&h1, &secure, "authorization", &bearer(&old_secret)).await,
        200
    );
    assert_eq!(
        status_with(&h1, &secure, "authorization", &bearer(&new_secret)).await,
        401
    );
    assert!(refused(added).await);

    setup.reload(&daemon, &after).await;

    // The new API answers, the removed one is gone, on an HTTP/2 connection
    // opened before the reload as on new ones.
    assert_eq!(status(&h2, &url(kept, "/three/x")).await, 200);
    assert_eq!(status(&h2, &url(kept, "/two/x")).await, 404);
    assert_eq!(status(&h1, &url(kept, "/two/x")).await, 404);
    // The changed limit counts anew, with the new number of calls.
    assert_eq!(status(&h1, &url(kept, "/one/x")).await, 200);
    assert_eq!(status(&h1, &url(kept, "/one/x")).await, 429);
    // The provider's new key is the one accepted.
    assert_eq!(
        status_with(&h1, &secure, "authorization", &bearer(&new_secret)).await,
        200
    );
    assert_eq!(
        status_with(&h1, &secure, "authorization", &bearer(&old_secret)).await,
        401
    );
    // The removed listener refuses new connections, the new one serves.
    assert!(refused(removed).await, "{}", daemon.log());
    assert_eq!(status(&h1, &url(added, "/three/x")).await, 200);

    let log = daemon.log();
    let line = log.lines().find(|l| l.contains(RELOADED)).unwrap();
    assert!(
        line.contains("APIs +1 -1 ~1") && line.contains("listeners +1 -1"),
        "{line}"
    );
    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configurations_are_rejected_whole_and_the_old_one_serves() {
    let setup = Setup::new("reload-bad").await;
    let port = free_port();
    let api = "[[api]]\nname = \"one\"\npath_prefix = \"/one\"\nbackend = \"http://{backend}/\"\n\
               subscription = \"none\"\n";
    let good = setup.text(&[port], api);
    let daemon = setup.start(&good, port).await;
    let h1 = client(&setup.pki, false);
    let serves = || async { status(&h1, &url(port, "/one/x")).await == 200 };
    assert!(serves().await);

    // An unknown key.
    let log = setup
        .rejected(
            &daemon,
            &setup.text(&[port], &format!("{api}no_such_key = 1\n")),
        )
        .await;
    assert!(log.contains("no_such_key"), "{log}");
    assert!(serves().await);

    // Several bad values: every one is reported.
    let log = setup
        .rejected(
            &daemon,
            &setup.text(
                &[port],
                &format!(
                    "{api}rate_limit = {{ calls = 0, period_secs = 60 }}\n\n\
                     [[api]]\nname = \"two\"\npath_prefix = \"/two\"\nbackend = \"ftp://x/\"\n"
                ),
            ),
        )
        .await;
    let rejection = log.lines().rev().find(|l| l.contains(REJECTED)).unwrap();
    assert!(rejection.contains("calls"), "{rejection}");
    assert!(rejection.contains("backend"), "{rejection}");
    assert!(serves().await);

    // A certificate file that does not exist.
    let missing = setup.dir.0.join("missing-cert.pem");
    let text = setup.text(&[port], api).replace(
        &format!("{:?}", setup.cert.cert_chain_pem.display().to_string()),
        &format!("{:?}", missing.display().to_string()),
    );
    let log = setup.rejected(&daemon, &text).await;
    assert!(log.contains("missing-cert.pem"), "{log}");
    assert!(serves().await);

    // A new listener on a port another process holds: nothing changes, the
    // listeners that were there keep serving.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let log = setup
        .rejected(&daemon, &setup.text(&[port, busy_port], api))
        .await;
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{busy_port}")),
        "{log}"
    );
    assert!(log.contains("gateway reload rejected"), "{log}");
    assert!(serves().await);
    drop(busy);

    // A good file is taken again afterwards.
    let with_two = setup.text(
        &[port],
        &format!(
            "{api}\n[[api]]\nname = \"two\"\npath_prefix = \"/two\"\nbackend = \"http://{{backend}}/\"\n\
             subscription = \"none\"\n"
        ),
    );
    setup.reload(&daemon, &with_two).await;
    assert_eq!(status(&h1, &url(port, "/two/x")).await, 200);
}

/// Requests from `clients` in a loop until `stop`: (answered 200, failed, the first
/// failures).
async fn keep_requesting(
    client: TestClient<Empty<Bytes>>,
    url: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let request = Request::get(&url).body(Empty::new()).unwrap();
        match client.request(request).await {
            Ok(response) => {
                let status = response.status();
                let body = http_body_util::BodyExt::collect(response.into_body()).await;
                match body {
                    Ok(_) if status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => failures.lock().unwrap().push(format!("status {status}")),
                    Err(e) => failures.lock().unwrap().push(format!("body: {e}")),
                }
            }
            Err(e) => failures.lock().unwrap().push(format!("request: {e:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_under_load_drops_no_request() {
    let setup = Setup::new("reload-load").await;
    let port = free_port();
    let load_api = "[[api]]\nname = \"load\"\npath_prefix = \"/load\"\nbackend = \"http://{backend}/\"\n\
                    subscription = \"none\"\n";
    // The two files differ in the gateway's limits, the load API's backend
    // settings (a new backend), its header rules and the other APIs.
    let first = setup.text(
        &[port],
        &format!(
            "[gateway]\naccess_log = \"errors\"\n\n{load_api}\n\
             [[api]]\nname = \"extra\"\npath_prefix = \"/extra\"\nbackend = \"http://{{backend}}/\"\n\
             subscription = \"none\"\nrate_limit = {{ calls = 5, period_secs = 60 }}\n"
        ),
    );
    let second = setup.text(
        &[port],
        &format!(
            "[gateway]\naccess_log = \"errors\"\nmax_header_bytes = 16384\n\n{load_api}\
             timeouts = {{ connect_secs = 4 }}\n\n\
             [[api]]\nname = \"other\"\npath_prefix = \"/other\"\nbackend = \"http://{{backend}}/\"\n\
             subscription = \"none\"\n"
        ),
    );
    let daemon = setup.start(&first, port).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    // 16 requests at a time over HTTP/1.1 keep-alive connections, 16 over one
    // HTTP/2 connection.
    for h2 in [false, true] {
        let shared = client(&setup.pki, h2);
        for _ in 0..16 {
            workers.push(tokio::spawn(keep_requesting(
                shared.clone(),
                url(port, "/load/x"),
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failures),
            )));
        }
    }
    while ok.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for round in 0..10 {
        let text = if round % 2 == 0 { &second } else { &first };
        let answered = ok.load(Ordering::Relaxed);
        setup.reload(&daemon, text).await;
        // Requests go on between reloads.
        while ok.load(Ordering::Relaxed) < answered + 100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(daemon.log_count(RELOADED), 10, "{}", daemon.log());
}

// ---------------------------------------------------------------------------
// The library's running gateway
// ---------------------------------------------------------------------------

fn parse(text: &str) -> rampart::config::Config {
    rampart::config::parse(text, Path::new("test.toml")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_subscriptions_apply_to_the_next_request_and_survive_restart() {
    let setup = Setup::new("runtime-keys").await;
    let port = free_port();
    let api =
        "[[api]]\nname = \"keyed\"\npath_prefix = \"/keyed\"\nbackend = \"http://{backend}/\"\n";
    let config = parse(&setup.text(&[port], api));
    let shutdown = CancellationToken::new();
    let gateway = running::start(&config, shutdown.clone())
        .await
        .unwrap()
        .unwrap();
    let subscriptions = gateway.subscriptions();
    let h1 = client(&setup.pki, false);
    let keyed = url(port, "/keyed/x");
    let with_key = |key: String| {
        let h1 = h1.clone();
        let keyed = keyed.clone();
        async move { keyed_status(&h1, &keyed, &key).await }
    };

    let keys = subscriptions.create("alice", Scope::AllApis).unwrap();
    let primary = keys.primary.expose().to_owned();
    let secondary = keys.secondary.expose().to_owned();
    assert_eq!(with_key(primary.clone()).await, 200);
    subscriptions.suspend("alice").unwrap();
    assert_eq!(with_key(primary.clone()).await, 401);
    subscriptions.activate("alice").unwrap();
    assert_eq!(with_key(primary.clone()).await, 200);
    let rotated = subscriptions.rotate("alice", KeySlot::Primary).unwrap();
    let rotated = rotated.expose().to_owned();
    assert_eq!(with_key(primary.clone()).await, 401);
    assert_eq!(with_key(rotated.clone()).await, 200);
    assert_eq!(with_key(secondary.clone()).await, 200);
    assert!(matches!(
        subscriptions.create("alice", Scope::AllApis),
        Err(KeyStoreError::Exists { .. })
    ));
    assert!(matches!(
        subscriptions.suspend("bob"),
        Err(KeyStoreError::NotFound { .. })
    ));

    // A reload adds a subscription from the file and keeps the runtime one; the
    // file's cannot be changed at run time.
    let partner = "partner-key-0123456789abcdef0123456789abcdef";
    let hash = |key: &str| rampart::policy::keys::KeyHash::of(key.as_bytes()).to_hex();
    let reloaded = parse(&setup.text(
        &[port],
        &format!(
            "{api}\n[[subscription]]\nname = \"partner\"\nscope = \"all\"\n\
             primary_key_sha256 = \"{}\"\nsecondary_key_sha256 = \"{}\"\n",
            hash(partner),
            hash("partner-secondary")
        ),
    ));
    gateway.reload(&reloaded).await.unwrap();
    assert_eq!(with_key(partner.to_owned()).await, 200);
    assert_eq!(with_key(rotated.clone()).await, 200);
    assert!(matches!(
        subscriptions.suspend("partner"),
        Err(KeyStoreError::FromConfig { .. })
    ));
    subscriptions.revoke("alice").unwrap();
    assert_eq!(with_key(secondary.clone()).await, 401);
    let bob = subscriptions
        .create("bob", Scope::Api("keyed".into()))
        .unwrap();
    let bob = bob.primary.expose().to_owned();

    shutdown.cancel();
    gateway.drained().await.unwrap();

    // A restart finds what was changed at run time.
    let shutdown = CancellationToken::new();
    let gateway = running::start(&reloaded, shutdown.clone())
        .await
        .unwrap()
        .unwrap();
    let h1 = client(&setup.pki, false);
    assert_eq!(keyed_status(&h1, &keyed, &bob).await, 200);
    assert_eq!(
        keyed_status(&h1, &keyed, &rotated).await,
        401,
        "alice was revoked"
    );
    assert_eq!(keyed_status(&h1, &keyed, &primary).await, 401);
    assert_eq!(keyed_status(&h1, &keyed, partner).await, 200);
    let listed: Vec<String> = gateway
        .subscriptions()
        .list()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed, ["alice", "bob", "partner"]);
    shutdown.cancel();
    gateway.drained().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rejections_reach_the_sink_with_the_tcp_peer_and_are_counted() {
    let setup = Setup::new("sink").await;
    let port = free_port();
    let config = parse(&setup.text(
        &[port],
        "[gateway]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n\
         [[api]]\nname = \"keyed\"\npath_prefix = \"/keyed\"\nbackend = \"http://{backend}/\"\n\n\
         [[api]]\nname = \"open\"\npath_prefix = \"/open\"\nbackend = \"http://{backend}/\"\n\
         subscription = \"none\"\n",
    ));
    let shutdown = CancellationToken::new();
    let gateway = running::start(&config, shutdown.clone())
        .await
        .unwrap()
        .unwrap();
    let seen: Arc<Mutex<Vec<(IpAddr, &'static str)>>> = Arc::default();
    let sink = Arc::clone(&seen);
    gateway.set_rejection_sink(Some(Arc::new(move |peer: IpAddr, reason: &'static str| {
        sink.lock().unwrap().push((peer, reason));
        None
    })));
    let h1 = client(&setup.pki, false);
    assert_eq!(status(&h1, &url(port, "/open/x")).await, 200);
    assert!(
        seen.lock().unwrap().is_empty(),
        "a request that passes is not reported"
    );
    // A forwarded address, even from a trusted proxy, is not what is reported.
    let keyed = url(port, "/keyed/x");
    let forwarded = status_with(&h1, &keyed, "x-forwarded-for", "198.51.100.7").await;
    assert_eq!(forwarded, 401);
    assert_eq!(status(&h1, &url(port, "/nowhere")).await, 404);
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (loopback, "SubscriptionKeyNotFound"),
            (loopback, "OperationNotFound")
        ]
    );

    // The sink and the counters survive a reload.
    gateway.reload(&config).await.unwrap();
    assert_eq!(status(&h1, &url(port, "/nowhere")).await, 404);
    assert_eq!(seen.lock().unwrap().len(), 3);
    let stats = gateway.stats();
    assert_eq!(stats.requests, 4);
    assert_eq!(stats.rejected, 3);
    assert_eq!(
        stats.rejections,
        [("OperationNotFound", 2), ("SubscriptionKeyNotFound", 1)]
    );
    shutdown.cancel();
    gateway.drained().await.unwrap();
}

/// A refusal's answer waits for what the rejection sink started (a ban being put
/// into the kernel). A client that went away during that wait had no access
/// event and was not counted in the responses: hyper dropped the request after
/// the handler had let go of its report. It is now reported as any client gone
/// before its answer: 400 `ClientConnectionFailure` (its refusal counted once).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_while_its_refusal_waits_for_the_sink_is_reported() {
    use tokio::io::AsyncWriteExt;
    let setup = Setup::new("sink-wait").await;
    let port = free_port();
    let config = parse(&setup.text(
        &[port],
        "[[api]]\nname = \"keyed\"\npath_prefix = \"/keyed\"\nbackend = \"http://{backend}/\"\n",
    ));
    let shutdown = CancellationToken::new();
    let gateway = running::start(&config, shutdown.clone())
        .await
        .unwrap()
        .unwrap();
    // The sink starts a "ban" that never ends: the answer waits its full time.
    let pending: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>> = Arc::default();
    let sink = Arc::clone(&pending);
    gateway.set_rejection_sink(Some(Arc::new(move |_: IpAddr, _: &'static str| {
        let (done, applied) = tokio::sync::oneshot::channel();
        sink.lock().unwrap().push(done);
        Some(applied)
    })));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(setup.pki.client_config(&[b"http/1.1"])));
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /keyed/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pending.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sink was not told"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(tls);

    let responses = |gateway: &running::RunningGateway| {
        gateway
            .http_metrics()
            .into_iter()
            .find(|api| api.api == "keyed")
            .map(|api| api.responses)
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while responses(&gateway).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let responses = responses(&gateway);
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert_eq!(
        (
            responses[0].status.as_str(),
            responses[0].reason,
            responses[0].count
        ),
        ("400", "ClientConnectionFailure", 1)
    );
    // The refusal itself was counted once, when it was made.
    assert_eq!(gateway.stats().rejections, [("SubscriptionKeyNotFound", 1)]);
    shutdown.cancel();
    gateway.drained().await.unwrap();
}

/// `rampart --socket SOCKET reload`: exit code and stdout.
fn rampart_reload(socket: &Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("--socket")
        .arg(socket)
        .arg("reload")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Removing `control_group` and reloading: the rest of the file is applied,
/// the answer and the log name the key that was not, and the socket keeps its
/// group until a restart (as the answer says). Root only: the socket is
/// given to the group `users` (gid 100).
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_changes_control_group_says_it_needs_a_restart() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to give the control socket to a group");
        return;
    }
    use std::os::unix::fs::MetadataExt as _;
    let setup = Setup::new("reload-group").await;
    let port = free_port();
    let api = |name: &str| {
        format!(
            "[[api]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nbackend = \"http://{{backend}}/\"\nsubscription = \"none\"\n"
        )
    };
    let with_group = setup.text(&[port], &api("one")).replacen(
        "[daemon]\n",
        "[daemon]\ncontrol_group = \"users\"\nadmin_listen = \"off\"\n",
        1,
    );
    let without_group = setup.text(&[port], &api("two")).replacen(
        "[daemon]\n",
        "[daemon]\nadmin_listen = \"off\"\n",
        1,
    );
    let mut daemon = setup.start(&with_group, port).await;
    let socket = setup.dir.0.join("run").join("control.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::metadata(&socket).unwrap().gid(), 100);

    std::fs::write(&setup.config, &without_group).unwrap();
    let (code, answer) = rampart_reload(&socket);
    assert_eq!(code, 0, "{answer}");
    let expected = format!(
        "configuration reloaded from {}, except [daemon] control_group: read only at start, \
         their running values stay until rampartd restarts",
        setup.config.display()
    );
    assert_eq!(answer.trim_end(), expected);
    // The log is written by a thread of its own: the line may follow the answer.
    daemon
        .wait_for_log("not_applied=[daemon] control_group", 0)
        .await;
    let log = daemon.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains(&expected)
            && l.contains("not_applied=[daemon] control_group")),
        "{log}"
    );
    // The rest was applied; the group was not.
    let h1 = client(&setup.pki, false);
    assert_eq!(status(&h1, &url(port, "/two/x")).await, 200);
    assert_eq!(status(&h1, &url(port, "/one/x")).await, 404);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (100, 0o660));

    // A second reload of the same file still says so: the running group is
    // still the one rampartd started with.
    let (code, answer) = rampart_reload(&socket);
    assert_eq!((code, answer.trim_end()), (0, expected.as_str()));
    // Back to the group it started with: nothing left to say.
    std::fs::write(&setup.config, &with_group).unwrap();
    let (code, answer) = rampart_reload(&socket);
    assert_eq!(code, 0, "{answer}");
    assert_eq!(
        answer.trim_end(),
        format!("configuration reloaded from {}", setup.config.display())
    );
    daemon.terminate().await;
}

/// An API's `listeners` changed by a reload move it (its backend kept), and an API
/// without `listeners` is served on a TLS listener the reload adds; neither counts
/// as a changed API unless its own `listeners` changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_apis_between_listeners() {
    let setup = Setup::new("reload-listeners").await;
    let (a, b, c) = (free_port(), free_port(), free_port());
    let apis = |pinned: u16| {
        format!(
            "[[api]]\nname = \"pinned\"\npath_prefix = \"/pinned\"\nbackend = \"http://{{backend}}/\"\n\
             subscription = \"none\"\nlisteners = [\"127.0.0.1:{pinned}\"]\n\n\
             [[api]]\nname = \"everywhere\"\npath_prefix = \"/all\"\nbackend = \"http://{{backend}}/\"\n\
             subscription = \"none\"\n"
        )
    };
    let before = setup.text(&[a, b], &apis(a));
    let daemon = setup.start(&before, a).await;
    let h1 = client::<Empty<Bytes>>(&setup.pki, false);
    assert_eq!(status(&h1, &url(a, "/pinned/x")).await, 200);
    assert_eq!(status(&h1, &url(b, "/pinned/x")).await, 404);

    // Moved to b, and a third listener added.
    setup
        .reload(&daemon, &setup.text(&[a, b, c], &apis(b)))
        .await;
    let fresh = client::<Empty<Bytes>>(&setup.pki, false);
    assert_eq!(status(&fresh, &url(a, "/pinned/x")).await, 404);
    assert_eq!(status(&fresh, &url(b, "/pinned/x")).await, 200);
    assert_eq!(status(&fresh, &url(c, "/pinned/x")).await, 404);
    for port in [a, b, c] {
        assert_eq!(status(&fresh, &url(port, "/all/x")).await, 200, "on {port}");
    }
    let log = daemon.log();
    let line = log.lines().rfind(|l| l.contains(RELOADED)).unwrap();
    assert!(
        line.contains("APIs +0 -0 ~1") && line.contains("listeners +1 -0"),
        "only the moved API changed: {line}"
    );
    assert!(line.contains("backends kept 2"), "{line}");
}

/// `rampart --socket SOCKET ARGS...`: exit code and stdout followed by stderr.
fn rampart_cli(socket: &Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Waits (at most 10 s) until the control socket exists.
async fn control_socket(setup: &Setup, daemon: &Rampartd) -> PathBuf {
    let socket = setup.dir.0.join("run").join("control.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    socket
}

/// Subscriptions scoped to an API and a product that a reload removes: the
/// reload answer and the log (a warning each, at reload and at start) name them
/// and what they miss, `keys list` marks their scope, and their keys grant
/// nothing. A scope is a name: the API configured again is covered again.
#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_whose_api_or_product_is_removed_are_reported() {
    let setup = Setup::new("reload-dangling").await;
    let port = free_port();
    let keyed =
        "[[api]]\nname = \"keyed\"\npath_prefix = \"/keyed\"\nbackend = \"http://{backend}/\"\n\n";
    let other = |products: &str| {
        format!(
            "[[api]]\nname = \"other\"\npath_prefix = \"/other\"\nbackend = \"http://{{backend}}/\"\n{products}\n"
        )
    };
    let text = |body: &str| {
        setup
            .text(&[port], body)
            .replacen("[daemon]\n", "[daemon]\nadmin_listen = \"off\"\n", 1)
    };
    let full = text(&format!(
        "[[product]]\nname = \"gold\"\n\n{keyed}{}",
        other("products = [\"gold\"]\n")
    ));
    let without = text(&other(""));
    let mut daemon = setup.start(&full, port).await;
    let socket = control_socket(&setup, &daemon).await;
    let create = |name: &str, scope: &[&str]| {
        let mut args = vec!["--json", "keys", "create", name];
        args.extend_from_slice(scope);
        let (code, out) = rampart_cli(&socket, &args);
        assert_eq!(code, 0, "{out}");
        let created: serde_json::Value = serde_json::from_str(&out).unwrap();
        created["primary"].as_str().unwrap().to_owned()
    };
    let api_key = create("s-keyed", &["--api", "keyed"]);
    let gold_key = create("s-gold", &["--product", "gold"]);
    let h1 = client(&setup.pki, false);
    assert_eq!(
        keyed_status(&h1, &url(port, "/keyed/x"), &api_key).await,
        200
    );
    assert_eq!(
        keyed_status(&h1, &url(port, "/other/x"), &gold_key).await,
        200
    );

    // The API and the product go.
    std::fs::write(&setup.config, &without).unwrap();
    let (code, answer) = rampart_reload(&socket);
    assert_eq!(code, 0, "{answer}");
    let gold = "subscription \"s-gold\" is scoped to product \"gold\", which is not configured: \
                its keys grant nothing until a product named \"gold\" is (rampart keys revoke s-gold ends it)";
    let api = "subscription \"s-keyed\" is scoped to API \"keyed\", which is not configured: \
               its keys grant nothing until an API named \"keyed\" is (rampart keys revoke s-keyed ends it)";
    assert_eq!(
        answer.trim_end(),
        format!(
            "configuration reloaded from {}; {gold}; {api}",
            setup.config.display()
        )
    );
    for sentence in [gold, api] {
        daemon.wait_for_log(sentence, 0).await;
    }
    let warned = |log: &str, sentence: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains(sentence))
            .count()
    };
    let log = daemon.log();
    assert_eq!((warned(&log, gold), warned(&log, api)), (1, 1), "{log}");
    let (code, listed) = rampart_cli(&socket, &["keys", "list"]);
    assert_eq!(code, 0, "{listed}");
    let scope_of = |name: &str| {
        let line = listed.lines().find(|l| l.starts_with(name)).unwrap();
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_eq!(scope_of("s-keyed"), "api:keyed (no such API)", "{listed}");
    assert_eq!(
        scope_of("s-gold"),
        "product:gold (no such product)",
        "{listed}"
    );
    let (_, json) = rampart_cli(&socket, &["--json", "keys", "list"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json[1]["scope"], "api:keyed");
    assert_eq!(json[1]["scope_missing"], true);
    // Their keys grant nothing.
    assert_eq!(
        keyed_status(&h1, &url(port, "/keyed/x"), &api_key).await,
        404
    );
    for key in [&api_key, &gold_key] {
        assert_eq!(keyed_status(&h1, &url(port, "/other/x"), key).await, 401);
    }

    // A start with that file warns too (in a new log).
    daemon.terminate().await;
    let daemon = setup.start(&without, port).await;
    for sentence in [gold, api] {
        daemon.wait_for_log(sentence, 0).await;
    }
    let log = daemon.log();
    assert_eq!((warned(&log, gold), warned(&log, api)), (1, 1), "{log}");

    // The API configured again under its name: the subscription covers it again,
    // and nothing is left to say.
    let socket = control_socket(&setup, &daemon).await;
    std::fs::write(&setup.config, text(&format!("{keyed}{}", other("")))).unwrap();
    let (code, answer) = rampart_reload(&socket);
    assert_eq!(code, 0, "{answer}");
    assert!(answer.contains(gold) && !answer.contains(api), "{answer}");
    assert_eq!(
        keyed_status(&h1, &url(port, "/keyed/x"), &api_key).await,
        200
    );
}

/// A certificate several listeners share that does not load: a reload is refused
/// with one line per problem, naming every listener it stops (before, the same
/// line came once per listener, naming none).
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_certificate_shared_by_listeners_is_reported_once_with_them() {
    let setup = Setup::new("reload-cert-listeners").await;
    let ports = [free_port(), free_port(), free_port()];
    let api = "[[api]]\nname = \"one\"\npath_prefix = \"/one\"\nbackend = \"http://{backend}/\"\n\
               subscription = \"none\"\n";
    let text = |ports: &[u16]| {
        setup
            .text(ports, api)
            .replacen("[daemon]\n", "[daemon]\nadmin_listen = \"off\"\n", 1)
    };
    let good = text(&ports);
    let daemon = setup.start(&good, ports[0]).await;
    let socket = control_socket(&setup, &daemon).await;
    let bad_cert = setup.dir.0.join("bad-gw.pem");
    std::fs::write(&bad_cert, "not a certificate\n").unwrap();
    let other = setup.pki.leaf("other", &["localhost"]);
    let cert = format!("{:?}", setup.cert.cert_chain_pem.display().to_string());
    let listeners = |ports: &[u16]| {
        ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let no_certificate = format!("no certificate in {}", bad_cert.display());
    let mismatch = format!(
        // rustls says the rest.
        "certificate {} does not match key {}: keys may not be consistent: KeyMismatch",
        other.cert_chain_pem.display(),
        setup.cert.key_pem.display()
    );
    let mut cases = vec![
        // Every listener's certificate does not load.
        (
            good.replace(&cert, &format!("{:?}", bad_cert.display().to_string())),
            vec![format!(
                "  gateway: listeners {}: {no_certificate}",
                listeners(&ports)
            )],
        ),
        // Every listener's certificate is another key's.
        (
            good.replace(
                &cert,
                &format!("{:?}", other.cert_chain_pem.display().to_string()),
            ),
            vec![format!(
                "  gateway: listeners {}: {mismatch}",
                listeners(&ports)
            )],
        ),
    ];
    // The first two listeners' certificate does not load, the third's is another key's.
    let mut mixed =
        text(&ports[..2]).replace(&cert, &format!("{:?}", bad_cert.display().to_string()));
    mixed.push_str(&format!(
        "\n[[listener]]\naddress = \"127.0.0.1:{}\"\ntls = {{ cert = {:?}, key = {:?} }}\n",
        ports[2],
        other.cert_chain_pem.display().to_string(),
        setup.cert.key_pem.display().to_string()
    ));
    cases.push((
        mixed,
        vec![
            format!(
                "  gateway: listeners {}: {no_certificate}",
                listeners(&ports[..2])
            ),
            format!("  gateway: listener 127.0.0.1:{}: {mismatch}", ports[2]),
        ],
    ));
    for (text, expected) in cases {
        std::fs::write(&setup.config, &text).unwrap();
        let (code, answer) = rampart_reload(&socket);
        assert_eq!(code, 8, "{answer}");
        let problems: Vec<&str> = answer.lines().filter(|l| l.starts_with("  ")).collect();
        assert_eq!(problems, expected, "{answer}");
    }
    let h1 = client(&setup.pki, false);
    assert_eq!(status(&h1, &url(ports[2], "/one/x")).await, 200);
}

/// A refused reload as an operator reads it: the missing file with the OS's
/// reason, and `rampart status` with the first problem rather than only "not
/// reloaded".
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_reload_says_why_in_the_answer_and_in_status() {
    let setup = Setup::new("reload-why").await;
    let port = free_port();
    let text = setup.text(
        &[port],
        "[[api]]\nname = \"one\"\npath_prefix = \"/one\"\nbackend = \"http://{backend}/\"\nsubscription = \"none\"\n",
    );
    let mut daemon = setup.start(&text, port).await;
    let socket = control_socket(&setup, &daemon).await;

    std::fs::remove_file(&setup.config).unwrap();
    let (code, answer) = rampart_reload(&socket);
    assert_eq!(code, 8, "{answer}");
    assert!(
        answer.contains(&format!(
            "cannot read configuration file {}: No such file or directory",
            setup.config.display()
        )),
        "{answer}"
    );
    let (code, status) = rampart_cli(&socket, &["status"]);
    assert_eq!(code, 0, "{status}");
    let line = status
        .lines()
        .find(|l| l.starts_with("last reload:"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        line.contains(&format!(
            " refused: cannot read configuration file {}: No such file or directory",
            setup.config.display()
        )),
        "{line}"
    );

    // Two problems: the first, and how many more.
    std::fs::write(
        &setup.config,
        text.replace(
            "path_prefix = \"/one\"",
            "path_prefix = \"one\"\nnonsense = 1",
        ),
    )
    .unwrap();
    let (code, answer) = rampart_reload(&socket);
    assert_eq!(code, 8, "{answer}");
    let (_, status) = rampart_cli(&socket, &["status"]);
    let line = status
        .lines()
        .find(|l| l.starts_with("last reload:"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains(" refused: "), "{line}");
    assert!(!line.contains("the running one stays"), "{line}");
    assert!(line.contains(&setup.config.display().to_string()), "{line}");
    daemon.terminate().await;
}
