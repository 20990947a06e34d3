//! The real `rampartd` binary enforcing the gateway's policies against real TLS
//! clients: subscription keys by scope and state, the exact APIM error bodies,
//! rate-limit accuracy under concurrency, quota persistence across a restart,
//! CORS preflights, request validation, backend failures, slow and idle clients,
//! rate-limit headers and trusted proxies.
//!
//! Every test writes its own configuration (no `[filter]`: the gateway alone, no
//! privileges needed) into its own temporary directory, starts rampartd on a free
//! port and kills it on drop, even when the test fails.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gateway_support::*;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart::gateway::CertFiles;
use rampart::policy::keys::{KeyHash, KeyStore, Scope};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::time::Instant;

const MISSING_KEY: &str = "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API.";
const INVALID_KEY: &str = "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription.";

/// Tests whose assertions depend on timing within a second (rate-limit accuracy)
/// take this lock exclusively; every other test shares it, so the timing-sensitive
/// ones never compete for the CPU with another rampartd.
static TIMING: RwLock<()> = RwLock::const_new(());

enum TimingGuard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// The daemon under test.
type Daemon = Rampartd;

/// One test's directory, CA, gateway certificate and port.
struct Setup {
    dir: TempDir,
    state_dir: PathBuf,
    pki: Pki,
    cert: CertFiles,
    port: u16,
    starts: std::sync::atomic::AtomicU32,
    _timing: TimingGuard,
}

impl Setup {
    /// A setup that may run alongside other tests.
    async fn new(name: &str) -> Self {
        Self::with_guard(name, TimingGuard::Shared(TIMING.read().await))
    }

    /// A setup that runs alone (no other test's rampartd competes for the CPU).
    async fn exclusive(name: &str) -> Self {
        Self::with_guard(name, TimingGuard::Exclusive(TIMING.write().await))
    }

    fn with_guard(name: &str, guard: TimingGuard) -> Self {
        let dir = TempDir::new(name);
        let state_dir = dir.0.join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let pki = Pki::new();
        let cert = pki.leaf("gw", &["localhost"]);
        Self {
            dir,
            state_dir,
            pki,
            cert,
            port: free_port(),
            starts: std::sync::atomic::AtomicU32::new(0),
            _timing: guard,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    fn key_store(&self) -> KeyStore {
        KeyStore::open(&self.state_dir).unwrap()
    }

    /// Writes the configuration (`[daemon]`, one TLS `[[listener]]`, then `body`),
    /// starts rampartd on it and waits until it listens.
    async fn start(&self, body: &str) -> Daemon {
        let config = self.dir.0.join("rampart.toml");
        let text = format!(
            "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\n\n\
             [[listener]]\naddress = \"127.0.0.1:{port}\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n\n\
             {body}\n",
            state = self.state_dir.display().to_string(),
            runtime = self.dir.0.join("run").display().to_string(),
            port = self.port,
            cert = self.cert.cert_chain_pem.display().to_string(),
            key = self.cert.key_pem.display().to_string(),
        );
        let n = self
            .starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.dir.0.join(format!("rampartd-{n}.log"));
        Rampartd::start(&config, &text, log, self.port).await
    }
}

// ---------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------

type AnyBody = UnsyncBoxBody<Bytes, Infallible>;

/// GET with extra headers.
async fn get_with(
    client: &TestClient<Empty<Bytes>>,
    url: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, String) {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(client, request.body(Empty::new()).unwrap()).await
}

/// GET with the subscription key in APIM's default header.
async fn get_keyed(
    client: &TestClient<Empty<Bytes>>,
    url: &str,
    key: &str,
) -> (http::response::Parts, String) {
    get_with(client, url, &[("Ocp-Apim-Subscription-Key", key)]).await
}

/// A POST with a body (announced length) and a content type.
async fn post(
    client: &TestClient<AnyBody>,
    url: &str,
    content_type: &str,
    body: impl Into<Bytes>,
) -> (http::response::Parts, String) {
    let request = Request::post(url)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed_unsync())
        .unwrap();
    send(client, request).await
}

/// An error as APIM writes it: the status, `Content-Type: application/json` and
/// exactly the body `{ "statusCode": N, "message": "..." }`.
fn assert_exact_error(parts: &http::response::Parts, body: &str, status: u16, message: &str) {
    assert_apim_error(parts, body, status, message);
    assert_eq!(
        body,
        format!(r#"{{ "statusCode": {status}, "message": "{message}" }}"#),
        "exact APIM wire form"
    );
}

/// The message of a gateway error body, after checking its status and shape.
fn error_message(parts: &http::response::Parts, body: &str, status: u16) -> String {
    assert_eq!(parts.status.as_u16(), status, "body: {body}");
    assert_eq!(
        parts.headers["content-type"], "application/json",
        "{parts:?}"
    );
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["statusCode"], status, "{body}");
    json["message"].as_str().unwrap().to_owned()
}

fn retry_after(parts: &http::response::Parts) -> u64 {
    let value = parts
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {parts:?}"));
    let secs: u64 = value
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is not whole seconds"));
    assert!(secs >= 1, "Retry-After {secs}");
    secs
}

/// A TLS connection to the gateway, with ALPN http/1.1.
async fn tls_connect(setup: &Setup) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(setup.pki.client_config(&[b"http/1.1"])));
    let tcp = TcpStream::connect(("127.0.0.1", setup.port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// A request body sent in separate chunks without a length (chunked in HTTP/1.1).
struct Chunked(VecDeque<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

// ---------------------------------------------------------------------------
// A recording backend
// ---------------------------------------------------------------------------

struct Seen {
    method: Method,
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// What the recording backend received, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<Seen>>);

impl Recorder {
    fn count(&self, method: &Method) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == method)
            .count()
    }

    fn total(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn last_body(&self) -> (String, Bytes, http::HeaderMap) {
        let seen = self.0.lock().unwrap();
        let last = seen.last().expect("the backend received nothing");
        (last.path.clone(), last.body.clone(), last.headers.clone())
    }
}

/// A plain HTTP backend that records every request (method, path, headers, whole
/// body) and answers 200 with the body it received.
async fn start_recording_backend() -> (SocketAddr, Arc<Recorder>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorder = Arc::new(Recorder::default());
    let shared = Arc::clone(&recorder);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let recorder = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let recorder = Arc::clone(&recorder);
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        recorder.0.lock().unwrap().push(Seen {
                            method: parts.method.clone(),
                            path: parts.uri.to_string(),
                            headers: parts.headers.clone(),
                            body: body.clone(),
                        });
                        let mut response = Response::new(Full::new(body));
                        response
                            .headers_mut()
                            .insert("x-backend", "recording".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, recorder)
}

// ---------------------------------------------------------------------------
// 1. Keys by scope and state
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn subscription_keys_by_scope_and_state() {
    let setup = Setup::new("keys").await;
    let mut store = setup.key_store();
    let (_, gold) = store
        .create("gold-sub", Scope::Product("gold".to_owned()))
        .unwrap();
    let (_, billing) = store
        .create("billing-sub", Scope::Api("billing".to_owned()))
        .unwrap();
    let (_, suspended) = store.create("suspended-sub", Scope::AllApis).unwrap();
    store.suspend("suspended-sub").unwrap();
    drop(store);

    let file_primary = "file-all-primary-key-4f1c2a9e7b3d5c60";
    let file_secondary = "file-all-secondary-key-8a2b6c4d0e1f3a57";
    let cancelled_primary = "file-cancelled-primary-key-19e7c3b5a0d2";
    let cancelled_secondary = "file-cancelled-secondary-key-77c1d9e3b5a2";
    let hash = |key: &str| KeyHash::of(key.as_bytes()).to_hex();

    let backend = start_backend().await;
    let mut daemon = setup
        .start(&format!(
            r#"
[[product]]
name = "gold"

[[api]]
name = "orders"
path_prefix = "/orders"
backend = "http://{backend}/"
products = ["gold"]

[[api]]
name = "billing"
path_prefix = "/billing"
backend = "http://{backend}/"

[[subscription]]
name = "file-all"
scope = "all"
primary_key_sha256 = "{p}"
secondary_key_sha256 = "{s}"

[[subscription]]
name = "file-cancelled"
scope = "all"
state = "cancelled"
primary_key_sha256 = "{cp}"
secondary_key_sha256 = "{cs}"
"#,
            p = hash(file_primary),
            s = hash(file_secondary),
            cp = hash(cancelled_primary),
            cs = hash(cancelled_secondary),
        ))
        .await;

    let client = client(&setup.pki, false);
    let orders = setup.url("/orders/items");
    let billing_url = setup.url("/billing/invoices");

    // No key at all.
    let (parts, body) = get(&client, &orders).await;
    assert_exact_error(&parts, &body, 401, MISSING_KEY);

    // Product-scoped key: its product's API only.
    let (parts, body) = get_keyed(&client, &orders, gold.primary.expose()).await;
    assert_eq!(parts.status, 200, "{body}");
    assert!(body.starts_with("GET /items"), "{body}");
    let (parts, body) = get_keyed(&client, &billing_url, gold.primary.expose()).await;
    assert_exact_error(&parts, &body, 401, INVALID_KEY);
    // Its secondary key works as well.
    let (parts, body) = get_keyed(&client, &orders, gold.secondary.expose()).await;
    assert_eq!(parts.status, 200, "{body}");

    // API-scoped key: the reverse.
    let (parts, body) = get_keyed(&client, &billing_url, billing.primary.expose()).await;
    assert_eq!(parts.status, 200, "{body}");
    assert!(body.starts_with("GET /invoices"), "{body}");
    let (parts, body) = get_keyed(&client, &orders, billing.primary.expose()).await;
    assert_exact_error(&parts, &body, 401, INVALID_KEY);

    // Suspended: refused everywhere, both keys.
    for key in [&suspended.primary, &suspended.secondary] {
        for url in [&orders, &billing_url] {
            let (parts, body) = get_keyed(&client, url, key.expose()).await;
            assert_exact_error(&parts, &body, 401, INVALID_KEY);
        }
    }

    // From the config file, scope "all": by header and by query, on both APIs.
    for url in [&orders, &billing_url] {
        let (parts, body) = get_keyed(&client, url, file_primary).await;
        assert_eq!(parts.status, 200, "{body}");
        let (parts, body) = get(&client, &format!("{url}?subscription-key={file_primary}")).await;
        assert_eq!(parts.status, 200, "{body}");
        assert!(!body.contains(file_primary), "key forwarded: {body}");
        let (parts, body) = get_keyed(&client, url, file_secondary).await;
        assert_eq!(parts.status, 200, "{body}");
    }

    // Cancelled in the config file: refused, both keys, header or query.
    for key in [cancelled_primary, cancelled_secondary] {
        let (parts, body) = get_keyed(&client, &orders, key).await;
        assert_exact_error(&parts, &body, 401, INVALID_KEY);
        let (parts, body) = get(&client, &format!("{billing_url}?subscription-key={key}")).await;
        assert_exact_error(&parts, &body, 401, INVALID_KEY);
    }

    // A key nobody issued.
    let (parts, body) = get_keyed(&client, &orders, "not-a-key-of-anyone").await;
    assert_exact_error(&parts, &body, 401, INVALID_KEY);

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

// ---------------------------------------------------------------------------
// 2. Exact error bodies and headers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn error_bodies_and_headers_are_apim_exact() {
    let setup = Setup::new("errors").await;
    let backend = start_backend().await;
    let mut daemon = setup
        .start(&format!(
            r#"
[gateway]
max_header_bytes = 2048
max_body_bytes = 100

[[api]]
name = "open"
path_prefix = "/open"
backend = "http://{backend}/"
subscription = "none"

[[api]]
name = "limited"
path_prefix = "/limited"
backend = "http://{backend}/"
subscription = "none"
rate_limit = {{ calls = 1, period_secs = 60 }}

[[api]]
name = "metered"
path_prefix = "/metered"
backend = "http://{backend}/"
subscription = "none"
quota = {{ calls = 1, period_secs = 3600 }}
"#
        ))
        .await;
    let client = client(&setup.pki, false);
    let body_client: TestClient<AnyBody> = gateway_support::client(&setup.pki, false);

    // Sanity: the open API answers.
    let (parts, body) = get(&client, &setup.url("/open/x")).await;
    assert_eq!(parts.status, 200, "{body}");

    // 404: no API matches.
    let (parts, body) = get(&client, &setup.url("/nowhere/x")).await;
    assert_exact_error(&parts, &body, 404, "Resource not found");
    // A prefix matches whole segments only.
    let (parts, body) = get(&client, &setup.url("/openx")).await;
    assert_exact_error(&parts, &body, 404, "Resource not found");

    // 431: a head over max_header_bytes (2 KiB) with a 4 KiB header.
    let big = "a".repeat(4096);
    let (parts, body) = get_with(&client, &setup.url("/open/x"), &[("x-big", &big)]).await;
    assert_exact_error(&parts, &body, 431, "Request header fields too large");

    // 413: Content-Length over max_body_bytes (100).
    let (parts, body) = post(
        &body_client,
        &setup.url("/open/x"),
        "application/octet-stream",
        vec![b'z'; 200],
    )
    .await;
    assert_exact_error(&parts, &body, 413, "Request entity too large");
    // Within the limit it passes.
    let (parts, body) = post(
        &body_client,
        &setup.url("/open/x"),
        "application/octet-stream",
        vec![b'z'; 50],
    )
    .await;
    assert_eq!(parts.status, 200, "{body}");

    // 429 with Retry-After, and the same number of seconds in the message.
    let (parts, body) = get(&client, &setup.url("/limited/x")).await;
    assert_eq!(parts.status, 200, "{body}");
    let (parts, body) = get(&client, &setup.url("/limited/x")).await;
    let secs = retry_after(&parts);
    assert!(secs <= 70, "Retry-After {secs} for a 60 s period");
    assert_exact_error(
        &parts,
        &body,
        429,
        &format!("Rate limit is exceeded. Try again in {secs} seconds."),
    );

    // 403 for the quota, with Retry-After and the renewal time as hh:mm:ss.
    let (parts, body) = get(&client, &setup.url("/metered/x")).await;
    assert_eq!(parts.status, 200, "{body}");
    let (parts, body) = get(&client, &setup.url("/metered/x")).await;
    let secs = retry_after(&parts);
    assert!(secs <= 3600, "Retry-After {secs} for a one-hour quota");
    let hhmmss = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    assert_exact_error(
        &parts,
        &body,
        403,
        &format!("Out of call volume quota. Quota will be replenished in {hhmmss}."),
    );

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

// ---------------------------------------------------------------------------
// 3. Rate-limit accuracy under concurrency
// ---------------------------------------------------------------------------

const LOAD_CONNECTIONS: usize = 32;
const LOAD_REQUESTS: usize = 400;
/// The requests are spread evenly over this time, well within the 1 s period.
const LOAD_SPREAD: Duration = Duration::from_millis(850);

/// 400 requests in under a second over 32 connections against 100 calls per
/// second (sliding window): about 100 pass, the rest get 429.
async fn rate_limit_accuracy(h2: bool) {
    let setup = Setup::exclusive(if h2 { "accuracy-h2" } else { "accuracy-h1" }).await;
    let (_, keys) = setup.key_store().create("load", Scope::AllApis).unwrap();
    let backend = start_backend().await;
    let mut daemon = setup
        .start(&format!(
            r#"
[[api]]
name = "warmup"
path_prefix = "/warmup"
backend = "http://{backend}/"
subscription = "none"

[[api]]
name = "limited"
path_prefix = "/limited"
backend = "http://{backend}/"
rate_limit = {{ calls = 100, period_secs = 1 }}
"#
        ))
        .await;

    // Each task has its own client, hence its own connection, opened (TLS
    // handshake included) by a request to an API without a limit.
    let mut warmups = tokio::task::JoinSet::new();
    for _ in 0..LOAD_CONNECTIONS {
        let client = client(&setup.pki, h2);
        let url = setup.url("/warmup/x");
        warmups.spawn(async move {
            let (parts, body) = get(&client, &url).await;
            assert_eq!(parts.status, 200, "{body}");
            if h2 {
                assert_eq!(parts.version, http::Version::HTTP_2);
            }
            client
        });
    }
    let mut clients = Vec::new();
    while let Some(client) = warmups.join_next().await {
        clients.push(client.unwrap());
    }

    let start = Instant::now() + Duration::from_millis(100);
    let interval = LOAD_SPREAD / LOAD_REQUESTS as u32;
    let url = setup.url("/limited/x");
    let mut load = tokio::task::JoinSet::new();
    for (task, client) in clients.into_iter().enumerate() {
        let url = url.clone();
        let key = keys.primary.expose().to_owned();
        load.spawn(async move {
            let mut results = Vec::new();
            // Request number n goes at start + n × interval: task i sends
            // i, i + 32, i + 64, ...
            for n in (task..LOAD_REQUESTS).step_by(LOAD_CONNECTIONS) {
                tokio::time::sleep_until(start + interval * n as u32).await;
                let sent = Instant::now();
                let request = Request::get(&url)
                    .header("Ocp-Apim-Subscription-Key", &key)
                    .body(Empty::new())
                    .unwrap();
                let response = client.request(request).await.unwrap();
                let status = response.status();
                let version = response.version();
                let _ = response.into_body().collect().await.unwrap();
                results.push((status, version, sent));
            }
            results
        });
    }
    let mut results = Vec::new();
    while let Some(task) = load.join_next().await {
        results.extend(task.unwrap());
    }
    assert_eq!(results.len(), LOAD_REQUESTS);

    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    let throttled = results
        .iter()
        .filter(|r| r.0 == StatusCode::TOO_MANY_REQUESTS)
        .count();
    let first = results.iter().map(|r| r.2).min().unwrap();
    let last = results.iter().map(|r| r.2).max().unwrap();
    let span = last - first;
    let versions: std::collections::HashSet<_> = results.iter().map(|r| r.1).collect();
    let expected_version = if h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(versions.contains(&expected_version), "{versions:?}");
    assert_eq!(
        ok + throttled,
        LOAD_REQUESTS,
        "only 200 and 429 expected: {ok} ok, {throttled} throttled; other statuses: {:?}",
        results
            .iter()
            .filter(|r| r.0 != StatusCode::OK && r.0 != StatusCode::TOO_MANY_REQUESTS)
            .map(|r| r.0)
            .collect::<Vec<_>>()
    );
    eprintln!("{expected_version:?}: {ok} passed, {throttled} throttled, sent over {span:?}");
    assert!(
        (98..=102).contains(&ok),
        "{ok} of {LOAD_REQUESTS} requests passed a limit of 100/s (sent over {span:?})"
    );

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_is_accurate_under_concurrency_http1() {
    rate_limit_accuracy(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_is_accurate_under_concurrency_http2() {
    rate_limit_accuracy(true).await;
}

// ---------------------------------------------------------------------------
// 4. Quota persistence across a restart
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn quota_survives_a_restart() {
    let setup = Setup::new("quota").await;
    let (_, keys) = setup
        .key_store()
        .create("metered-sub", Scope::AllApis)
        .unwrap();
    let backend = start_backend().await;
    let config = format!(
        r#"
[[api]]
name = "metered"
path_prefix = "/metered"
backend = "http://{backend}/"
quota = {{ calls = 5, period_secs = 3600 }}
"#
    );
    let url = setup.url("/metered/x");
    let key = keys.primary.expose();

    // Quota windows are aligned to whole hours (Unix time): keep the test's few
    // seconds within one window.
    let into_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 3600;
    if into_hour > 3600 - 15 {
        tokio::time::sleep(Duration::from_secs(3600 - into_hour + 1)).await;
    }

    let mut daemon = setup.start(&config).await;
    let client = client(&setup.pki, false);
    for i in 0..3 {
        let (parts, body) = get_keyed(&client, &url, key).await;
        assert_eq!(parts.status, 200, "call {i}: {body}");
    }
    drop(client);
    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
    drop(daemon);

    // The counters changed since the last snapshot: one JSON line each.
    let journal = setup.state_dir.join("quota.journal");
    let text =
        std::fs::read_to_string(&journal).unwrap_or_else(|e| panic!("{}: {e}", journal.display()));
    for line in text.lines() {
        let _: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("quota.journal has a line that is not JSON ({e}): {text}"));
    }
    // One key: a line per flush that saw its calls (1 or 2 in these few ms).
    assert!((1..=3).contains(&text.lines().count()), "{text}");

    let mut daemon = setup.start(&config).await;
    // A fresh client: the old one's pooled connection went with the old daemon.
    let client = gateway_support::client(&setup.pki, false);
    for i in 3..5 {
        let (parts, body) = get_keyed(&client, &url, key).await;
        assert_eq!(parts.status, 200, "call {i} after the restart: {body}");
    }
    let (parts, body) = get_keyed(&client, &url, key).await;
    let message = error_message(&parts, &body, 403);
    assert!(
        message.starts_with("Out of call volume quota. Quota will be replenished in "),
        "{message}"
    );
    retry_after(&parts);

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

// ---------------------------------------------------------------------------
// 5. CORS preflight
// ---------------------------------------------------------------------------

fn access_control_headers(parts: &http::response::Parts) -> Vec<String> {
    parts
        .headers
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with("access-control-"))
        .collect()
}

fn header_list(parts: &http::response::Parts, name: &str) -> Vec<String> {
    parts
        .headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflight_is_answered_by_the_gateway() {
    let setup = Setup::new("cors").await;
    let (backend, recorder) = start_recording_backend().await;
    let mut daemon = setup
        .start(&format!(
            r#"
[[api]]
name = "web"
path_prefix = "/web"
backend = "http://{backend}/"
subscription = "none"
cors = {{ allowed_origins = ["https://app.example"], allowed_methods = ["GET", "POST"], allowed_headers = ["x-custom"], max_age_secs = 600 }}
"#
        ))
        .await;
    let client = client(&setup.pki, false);
    let url = setup.url("/web/resource");
    let preflight = |origin: &'static str| {
        Request::options(&url)
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "x-custom")
            .body(Empty::new())
            .unwrap()
    };

    // An allowed preflight.
    let (parts, body) = send(&client, preflight("https://app.example")).await;
    assert_eq!(parts.status, 200, "{parts:?} {body}");
    assert_eq!(
        parts.headers["access-control-allow-origin"], "https://app.example",
        "{parts:?}"
    );
    let methods = header_list(&parts, "access-control-allow-methods");
    assert!(
        methods.contains(&"get".to_owned()) && methods.contains(&"post".to_owned()),
        "{parts:?}"
    );
    assert_eq!(parts.headers["access-control-max-age"], "600", "{parts:?}");
    assert!(
        header_list(&parts, "access-control-allow-headers").contains(&"x-custom".to_owned()),
        "{parts:?}"
    );
    assert!(body.is_empty(), "{body}");
    assert!(parts.headers.get("x-backend").is_none(), "{parts:?}");

    // A preflight from an origin not allowed: no Access-Control-* at all.
    let (parts, _) = send(&client, preflight("https://evil.example")).await;
    assert!(
        access_control_headers(&parts).is_empty(),
        "disallowed origin got {parts:?}"
    );
    assert!(parts.headers.get("x-backend").is_none(), "{parts:?}");

    // No preflight ever reached the backend.
    assert_eq!(recorder.count(&Method::OPTIONS), 0);
    assert_eq!(recorder.total(), 0);

    // An actual request from the allowed origin: forwarded, with the origin allowed.
    let (parts, body) = get_with(&client, &url, &[("Origin", "https://app.example")]).await;
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(parts.headers["x-backend"], "recording");
    assert_eq!(
        parts.headers["access-control-allow-origin"], "https://app.example",
        "{parts:?}"
    );
    assert_eq!(recorder.count(&Method::GET), 1);

    // From another origin: forwarded too (CORS is the browser's check), without
    // any Access-Control-* header.
    let (parts, body) = get_with(&client, &url, &[("Origin", "https://evil.example")]).await;
    assert_eq!(parts.status, 200, "{body}");
    assert!(
        access_control_headers(&parts).is_empty(),
        "disallowed origin got {parts:?}"
    );
    assert_eq!(recorder.count(&Method::GET), 2);
    assert_eq!(recorder.count(&Method::OPTIONS), 0);

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

// ---------------------------------------------------------------------------
// 6. Validation errors
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn request_validation_rejects_bad_bodies_and_passes_good_ones() {
    let setup = Setup::new("validation").await;
    let (backend, recorder) = start_recording_backend().await;
    let mut daemon = setup
        .start(&format!(
            r#"
[[api]]
name = "orders"
path_prefix = "/orders"
backend = "http://{backend}/"
subscription = "none"
validation = {{ content_types = ["application/json"], max_body_bytes = 1024, json_schema = {{ type = "object", required = ["id"], properties = {{ id = {{ type = "integer" }} }} }} }}
"#
        ))
        .await;
    let client: TestClient<AnyBody> = gateway_support::client(&setup.pki, false);
    let url = setup.url("/orders/new");

    // Not an allowed content type.
    let (parts, body) = post(&client, &url, "text/plain", "hello").await;
    let message = error_message(&parts, &body, 400);
    assert!(
        message.contains("content type") && message.contains("text/plain"),
        "{message}"
    );

    // Malformed JSON: the message says so and where, without parser internals
    // or the body.
    let (parts, body) = post(&client, &url, "application/json", r#"{"id": 1, "secret": "#).await;
    let message = error_message(&parts, &body, 400);
    assert!(message.contains("JSON"), "{message}");
    assert!(
        message.contains("line 1") && message.contains("column"),
        "{message}"
    );
    for internal in ["serde", "Error(", "secret", "src/", ".rs"] {
        assert!(!message.contains(internal), "{internal:?} in {message}");
    }

    // Valid JSON that breaks the schema; the body's values are not echoed.
    let (parts, body) = post(
        &client,
        &url,
        "application/json",
        r#"{"id": "confidential-value-93"}"#,
    )
    .await;
    let message = error_message(&parts, &body, 400);
    assert!(message.contains("schema"), "{message}");
    assert!(!message.contains("confidential-value-93"), "{message}");
    let (parts, body) = post(&client, &url, "application/json", r#"{"name": "x"}"#).await;
    let message = error_message(&parts, &body, 400);
    assert!(message.contains("schema"), "{message}");

    // 2 KiB of JSON over the 1 KiB validation limit.
    let large = format!(r#"{{"id": 1, "pad": "{}"}}"#, "p".repeat(2048));
    let (parts, body) = post(&client, &url, "application/json", large).await;
    let message = error_message(&parts, &body, 413);
    assert!(message.contains("1024"), "{message}");

    assert_eq!(
        recorder.total(),
        0,
        "an invalid request reached the backend"
    );

    // A valid body passes, intact.
    let valid = r#"{"id": 42, "name": "widget", "tags": ["a", "b"], "price": 9.5}"#;
    let (parts, body) = post(&client, &url, "application/json; charset=utf-8", valid).await;
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(body, valid);
    let (path, received, _) = recorder.last_body();
    assert_eq!(path, "/new");
    assert_eq!(received, valid.as_bytes());

    // The same, chunked (no Content-Length), in several pieces.
    let pieces = [r#"{"id": 7,"#, r#" "name": "#, r#""chunked body""#, "}"];
    let request = Request::post(&url)
        .header("content-type", "application/json")
        .body(
            Chunked(
                pieces
                    .iter()
                    .map(|p| Bytes::from_static(p.as_bytes()))
                    .collect(),
            )
            .boxed_unsync(),
        )
        .unwrap();
    let (parts, body) = send(&client, request).await;
    let whole = pieces.concat();
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(body, whole);
    let (_, received, _) = recorder.last_body();
    assert_eq!(received, whole.as_bytes());
    assert_eq!(recorder.total(), 2);

    // A chunked body that breaks the schema is refused as well.
    let request = Request::post(&url)
        .header("content-type", "application/json")
        .body(
            Chunked(
                [
                    Bytes::from_static(b"{\"id\":"),
                    Bytes::from_static(b" 1.5}"),
                ]
                .into(),
            )
            .boxed_unsync(),
        )
        .unwrap();
    let (parts, body) = send(&client, request).await;
    error_message(&parts, &body, 400);
    assert_eq!(recorder.total(), 2);

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

/// The backend of the tests below, and APIs on it: `schemaonly` (a schema and no
/// `content_types`, as the tester's), `val` (JSON only, a schema) and `json` (JSON
/// only, no schema).
async fn start_validation_apis(setup: &Setup) -> (Daemon, Arc<Recorder>) {
    let (backend, recorder) = start_recording_backend().await;
    let daemon = setup
        .start(&format!(
            r#"
[[api]]
name = "schemaonly"
path_prefix = "/schemaonly"
backend = "http://{backend}/"
subscription = "none"
validation = {{ json_schema = {{ type = "object", required = ["a"], properties = {{ a = {{ type = "integer", maximum = 10 }} }}, additionalProperties = false }} }}

[[api]]
name = "val"
path_prefix = "/val"
backend = "http://{backend}/"
subscription = "none"
validation = {{ content_types = ["application/json"], json_schema = {{ type = "object", required = ["a"], properties = {{ a = {{ type = "integer", maximum = 10 }} }} }} }}

[[api]]
name = "json"
path_prefix = "/json"
backend = "http://{backend}/"
subscription = "none"
validation = {{ content_types = ["application/json"] }}
"#
        ))
        .await;
    (daemon, recorder)
}

/// A POST with these headers and body, over HTTP/1.1 or HTTP/2.
async fn post_raw(
    setup: &Setup,
    h2: bool,
    path: &str,
    headers: &[(&str, &str)],
    body: AnyBody,
) -> (http::response::Parts, String) {
    let client: TestClient<AnyBody> = gateway_support::client(&setup.pki, h2);
    let mut request = Request::post(setup.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (parts, body) = send(&client, request.body(body).unwrap()).await;
    let version = if h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    assert_eq!(parts.version, version);
    (parts, body)
}

fn full(body: &'static str) -> AnyBody {
    Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_without_content_types_refuses_bodies_not_declared_json() {
    let setup = Setup::new("validation-schema-only").await;
    let (mut daemon, recorder) = start_validation_apis(&setup).await;
    let body = r#"{"a":999,"admin":true}"#;

    for h2 in [false, true] {
        for (content_type, media_type) in [
            ("text/plain", "text/plain"),
            (
                "application/x-www-form-urlencoded",
                "application/x-www-form-urlencoded",
            ),
            ("application/json5", "application/json5"),
            ("Application/JSONX; charset=utf-8", "application/jsonx"),
        ] {
            let (parts, text) = post_raw(
                &setup,
                h2,
                "/schemaonly/x",
                &[("content-type", content_type)],
                full(body),
            )
            .await;
            assert_exact_error(
                &parts,
                &text,
                400,
                &format!("Unspecified content type {media_type} is not allowed."),
            );
        }
        let (parts, text) = post_raw(&setup, h2, "/schemaonly/x", &[], full(body)).await;
        assert_exact_error(
            &parts,
            &text,
            400,
            "Request's content type is not specified; a request body needs a Content-Type header.",
        );
        // Declared as JSON, the body is checked against the schema.
        let (parts, text) = post_raw(
            &setup,
            h2,
            "/schemaonly/x",
            &[("content-type", "application/json; charset=utf-8")],
            full(body),
        )
        .await;
        let message = error_message(&parts, &text, 400);
        assert!(
            message.starts_with("Request's body does not conform to the schema at /"),
            "{message}"
        );
    }
    assert_eq!(recorder.total(), 0, "a refused body reached the backend");

    // JSON that conforms passes (+json too), and so does a request without a body.
    for h2 in [false, true] {
        let (parts, text) = post_raw(
            &setup,
            h2,
            "/schemaonly/x",
            &[("content-type", "application/vnd.x+json")],
            full(r#"{"a":1}"#),
        )
        .await;
        assert_eq!(parts.status, 200, "{text}");
        assert_eq!(text, r#"{"a":1}"#);
        let (parts, text) = post_raw(
            &setup,
            h2,
            "/schemaonly/x",
            &[("content-type", "text/plain")],
            Empty::new().boxed_unsync(),
        )
        .await;
        assert_eq!(parts.status, 200, "{text}");
    }
    assert_eq!(recorder.total(), 4);

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn json_with_a_duplicate_key_is_refused() {
    let setup = Setup::new("validation-duplicates").await;
    let (mut daemon, recorder) = start_validation_apis(&setup).await;

    for h2 in [false, true] {
        for (path, body, expected) in [
            // The schema would see a = 1, a backend that keeps the first 99.
            (
                "/val/x",
                r#"{"a":99,"a":1}"#,
                r#"{ "statusCode": 400, "message": "Request's body has a duplicate key \"a\" in the object at /." }"#,
            ),
            (
                "/json/x",
                r#"{"a":1,"b":{"c":[{"d":1},{"d":2,"\u0064":3}]}}"#,
                r#"{ "statusCode": 400, "message": "Request's body has a duplicate key \"d\" in the object at /b/c/1." }"#,
            ),
        ] {
            let (parts, text) = post_raw(
                &setup,
                h2,
                path,
                &[("content-type", "application/json")],
                full(body),
            )
            .await;
            assert_eq!(parts.status, 400, "{text}");
            assert_eq!(parts.headers["content-type"], "application/json");
            assert_eq!(text, expected);
        }
    }
    assert_eq!(recorder.total(), 0, "a refused body reached the backend");

    // The same key in different objects is no duplicate.
    let body = r#"{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]}"#;
    let (parts, text) = post_raw(
        &setup,
        false,
        "/json/x",
        &[("content-type", "application/json")],
        full(body),
    )
    .await;
    assert_eq!(parts.status, 200, "{text}");
    assert_eq!(text, body);
    assert_eq!(recorder.total(), 1);

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_body_is_forwarded_however_it_is_framed() {
    let setup = Setup::new("validation-empty").await;
    let (mut daemon, recorder) = start_validation_apis(&setup).await;
    // One empty chunk: over HTTP/1.1 a chunked body of only the last chunk, over
    // HTTP/2 HEADERS without END_STREAM, then an empty DATA frame with it.
    let empty_chunk = || Chunked([Bytes::new()].into()).boxed_unsync();

    let mut forwarded = 0;
    for h2 in [false, true] {
        for (path, headers, body) in [
            (
                "/val/x",
                &[("content-type", "application/json")][..],
                empty_chunk(),
            ),
            (
                "/schemaonly/x",
                &[("content-type", "application/json")][..],
                empty_chunk(),
            ),
            (
                "/val/x",
                &[
                    ("content-type", "application/json"),
                    ("content-length", "0"),
                ][..],
                empty_chunk(),
            ),
            (
                "/val/x",
                &[("content-type", "text/plain"), ("content-length", "0")][..],
                empty_chunk(),
            ),
            (
                "/schemaonly/x",
                &[("content-length", "0")][..],
                empty_chunk(),
            ),
            // As before: no body at all, and Content-Length: 0 (END_STREAM on HEADERS).
            (
                "/val/x",
                &[("content-type", "application/json")][..],
                Empty::new().boxed_unsync(),
            ),
            (
                "/val/x",
                &[("content-type", "application/json")][..],
                full(""),
            ),
        ] {
            let (parts, text) = post_raw(&setup, h2, path, headers, body).await;
            assert_eq!(parts.status, 200, "h2 {h2} {path} {headers:?}: {text}");
            assert_eq!(text, "");
            forwarded += 1;
            assert_eq!(recorder.total(), forwarded, "h2 {h2} {path} {headers:?}");
            let (_, received, _) = recorder.last_body();
            assert!(received.is_empty());
        }
    }

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_json_and_numbers_out_of_range_are_named() {
    let setup = Setup::new("validation-deep").await;
    let (mut daemon, recorder) = start_validation_apis(&setup).await;
    let deep: &'static str = format!("{}{}", "[".repeat(200), "]".repeat(200)).leak();

    for h2 in [false, true] {
        for (body, message) in [
            (
                deep,
                "Request's body is JSON the gateway does not accept: nested deeper than 128 levels at line 1, column 128.",
            ),
            (
                r#"{"a":1e400}"#,
                "Request's body is JSON the gateway does not accept: a number out of range at line 1, column 10.",
            ),
        ] {
            let (parts, text) = post_raw(
                &setup,
                h2,
                "/json/x",
                &[("content-type", "application/json")],
                full(body),
            )
            .await;
            assert_exact_error(&parts, &text, 400, message);
        }
    }
    assert_eq!(recorder.total(), 0, "a refused body reached the backend");

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

// ---------------------------------------------------------------------------
// 7. Backend down or slow
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn backend_down_is_502_and_slow_backend_is_504() {
    let setup = Setup::new("backend-fail").await;
    let closed = closed_port().await;
    let backend = start_backend().await;
    let mut daemon = setup
        .start(&format!(
            r#"
[gateway]
request_timeout_secs = 1

[[api]]
name = "down"
path_prefix = "/down"
backend = "http://{closed}/"
subscription = "none"

[[api]]
name = "slow"
path_prefix = "/slow"
backend = "http://{backend}/"
subscription = "none"
"#
        ))
        .await;
    let client = client(&setup.pki, false);

    let started = Instant::now();
    let (parts, body) = get(&client, &setup.url("/down/x")).await;
    let elapsed = started.elapsed();
    assert_exact_error(&parts, &body, 502, "Bad gateway");
    assert!(elapsed < Duration::from_secs(2), "502 after {elapsed:?}");

    // The backend answers after 3 s; the request timeout is 1 s.
    let started = Instant::now();
    let (parts, body) = get(&client, &setup.url("/slow/slow?ms=3000")).await;
    let elapsed = started.elapsed();
    assert_exact_error(&parts, &body, 504, "Gateway timeout");
    assert!(
        elapsed < Duration::from_millis(2500),
        "504 after {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(800),
        "504 before the 1 s timeout: {elapsed:?}"
    );

    // A backend within the timeout still answers.
    let (parts, body) = get(&client, &setup.url("/slow/slow?ms=10")).await;
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(body, "slow done");

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

// ---------------------------------------------------------------------------
// 8. Slowloris
// ---------------------------------------------------------------------------

/// Reads until the peer closes (0 or an error); returns what was read and when.
async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    limit: Duration,
) -> Option<(Vec<u8>, Instant)> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
            Err(_elapsed) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((received, Instant::now())),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_connections_are_closed() {
    let setup = Setup::new("slowloris").await;
    let backend = start_backend().await;
    let mut daemon = setup
        .start(&format!(
            r#"
[gateway]
header_read_timeout_secs = 1

[[api]]
name = "echo"
path_prefix = "/echo"
backend = "http://{backend}/"
subscription = "none"
"#
        ))
        .await;

    // TLS, then a request head one byte every 200 ms (it would take 16 s).
    let tls = tls_connect(&setup).await;
    let started = Instant::now();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let head = format!(
        "GET /echo/x HTTP/1.1\r\nHost: localhost\r\nX-Slow: {}",
        "s".repeat(40)
    );
    let trickle = tokio::spawn(async move {
        for byte in head.into_bytes() {
            if writer.write_all(&[byte]).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let closed = read_until_closed(&mut reader, Duration::from_secs(6)).await;
    trickle.abort();
    let (received, at) = closed.expect("the slow connection is still open after 6 s");
    let after = at - started;
    assert!(
        after < Duration::from_secs(3),
        "slow head closed only after {after:?}"
    );
    let received = String::from_utf8_lossy(&received);
    assert!(!received.contains(" 200 "), "answered: {received}");

    // A TCP connection that never sends a ClientHello.
    let mut tcp = TcpStream::connect(("127.0.0.1", setup.port)).await.unwrap();
    let started = Instant::now();
    let closed = read_until_closed(&mut tcp, Duration::from_secs(6)).await;
    let (received, at) = closed.expect("a silent TCP connection is still open after 6 s");
    let after = at - started;
    assert!(
        after < Duration::from_secs(3),
        "silent connection closed only after {after:?}"
    );
    assert!(received.is_empty(), "{received:?}");

    // The gateway still serves.
    let client = client(&setup.pki, false);
    let (parts, body) = get(&client, &setup.url("/echo/x")).await;
    assert_eq!(parts.status, 200, "{body}");

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

// ---------------------------------------------------------------------------
// 9. Idle timeout
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed() {
    let setup = Setup::new("idle").await;
    let backend = start_backend().await;
    let mut daemon = setup
        .start(&format!(
            r#"
[gateway]
idle_timeout_secs = 1
header_read_timeout_secs = 10

[[api]]
name = "echo"
path_prefix = "/echo"
backend = "http://{backend}/"
subscription = "none"
"#
        ))
        .await;

    let tls = tls_connect(&setup).await;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);

    // Two complete requests on the one keep-alive connection.
    for _ in 0..2 {
        sender.ready().await.unwrap();
        let request = Request::get("/echo/x")
            .header("host", format!("localhost:{}", setup.port))
            .body(Empty::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response
                .headers()
                .get("connection")
                .is_none_or(|v| v != "close"),
            "{response:?}"
        );
        response.into_body().collect().await.unwrap();
    }
    let idle_since = Instant::now();

    // The sender stays alive: only the server can end the connection.
    let ended = tokio::time::timeout(Duration::from_secs(6), connection).await;
    let after = idle_since.elapsed();
    assert!(ended.is_ok(), "the idle connection is still open after 6 s");
    assert!(
        after < Duration::from_secs(3),
        "idle connection closed only after {after:?}"
    );
    assert!(
        after >= Duration::from_millis(500),
        "closed {after:?} after the response: too early for a 1 s idle timeout"
    );
    assert!(sender.is_closed());

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

// ---------------------------------------------------------------------------
// 10. Remaining / limit headers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_remaining_and_total_headers() {
    let setup = Setup::new("limit-headers").await;
    let backend = start_backend().await;
    let mut daemon = setup
        .start(&format!(
            r#"
[[api]]
name = "counted"
path_prefix = "/counted"
backend = "http://{backend}/"
subscription = "none"
rate_limit = {{ calls = 5, period_secs = 60, remaining_header = "X-RateLimit-Remaining", total_header = "X-RateLimit-Limit" }}
"#
        ))
        .await;
    let client = client(&setup.pki, false);
    let url = setup.url("/counted/x");

    for remaining in (0..5).rev() {
        let (parts, body) = get(&client, &url).await;
        assert_eq!(parts.status, 200, "{body}");
        assert_eq!(
            parts.headers["x-ratelimit-remaining"],
            remaining.to_string(),
            "{parts:?}"
        );
        assert_eq!(parts.headers["x-ratelimit-limit"], "5", "{parts:?}");
    }
    let (parts, body) = get(&client, &url).await;
    let secs = retry_after(&parts);
    assert_exact_error(
        &parts,
        &body,
        429,
        &format!("Rate limit is exceeded. Try again in {secs} seconds."),
    );

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

// ---------------------------------------------------------------------------
// 11. Trusted proxies
// ---------------------------------------------------------------------------

fn per_ip_limit_config(backend: SocketAddr, trusted: bool) -> String {
    let gateway = if trusted {
        "[gateway]\ntrusted_proxies = [\"127.0.0.1/32\"]\n"
    } else {
        ""
    };
    format!(
        r#"
{gateway}
[[api]]
name = "per-ip"
path_prefix = "/per-ip"
backend = "http://{backend}/"
subscription = "none"
rate_limit = {{ calls = 1, period_secs = 60, counter = "ip" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxy_clients_are_counted_apart() {
    let setup = Setup::new("trusted").await;
    let backend = start_backend().await;
    let mut daemon = setup.start(&per_ip_limit_config(backend, true)).await;
    let client = client(&setup.pki, false);
    let url = setup.url("/per-ip/x");
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];

    let (parts, body) = get_with(&client, &url, &from("203.0.113.1")).await;
    assert_eq!(parts.status, 200, "{body}");
    let (parts, body) = get_with(&client, &url, &from("203.0.113.2")).await;
    assert_eq!(
        parts.status, 200,
        "a second client was counted with the first: {body}"
    );
    let (parts, body) = get_with(&client, &url, &from("203.0.113.1")).await;
    let secs = retry_after(&parts);
    assert_exact_error(
        &parts,
        &body,
        429,
        &format!("Rate limit is exceeded. Try again in {secs} seconds."),
    );

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_is_ignored_without_trusted_proxies() {
    let setup = Setup::new("untrusted").await;
    let backend = start_backend().await;
    let mut daemon = setup.start(&per_ip_limit_config(backend, false)).await;
    let client = client(&setup.pki, false);
    let url = setup.url("/per-ip/x");

    let (parts, body) = get_with(&client, &url, &[("X-Forwarded-For", "203.0.113.1")]).await;
    assert_eq!(parts.status, 200, "{body}");
    let (parts, body) = get_with(&client, &url, &[("X-Forwarded-For", "203.0.113.2")]).await;
    let secs = retry_after(&parts);
    assert_exact_error(
        &parts,
        &body,
        429,
        &format!("Rate limit is exceeded. Try again in {secs} seconds."),
    );

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

/// A bandwidth quota counts the response bytes the client was sent (counted as the
/// body ends), and refuses once they pass it.
#[tokio::test(flavor = "multi_thread")]
async fn a_bandwidth_quota_counts_the_bytes_sent() {
    let setup = Setup::new("bandwidth").await;
    let (_, keys) = setup
        .key_store()
        .create("metered-sub", Scope::AllApis)
        .unwrap();
    let backend = start_backend().await;
    let config = format!(
        r#"
[[api]]
name = "metered"
path_prefix = "/metered"
backend = "http://{backend}/"
quota = {{ kilobytes = 1, period_secs = 0 }}
"#
    );
    let daemon = setup.start(&config).await;
    let client = client(&setup.pki, false);
    let url = setup.url("/metered/x");
    let key = keys.primary.expose();
    let mut served = 0;
    let refused = loop {
        let (parts, body) = get_keyed(&client, &url, key).await;
        if parts.status == 200 {
            served += 1;
            assert!(served < 20, "1 KiB never ran out:\n{}", daemon.log());
            continue;
        }
        break error_message(&parts, &body, 403);
    };
    assert!(served >= 1, "the first call was refused");
    assert!(refused.starts_with("Out of bandwidth quota."), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_body_bytes_limits_every_body_of_a_validated_api() {
    let setup = Setup::new("validation-max-size").await;
    let (backend, recorder) = start_recording_backend().await;
    let mut daemon = setup
        .start(&format!(
            r#"
[[api]]
name = "valct"
path_prefix = "/valct"
backend = "http://{backend}/"
subscription = "none"
validation = {{ content_types = ["application/xml", "application/json"], max_body_bytes = 100 }}
"#
        ))
        .await;
    let xml = |n: usize| format!("<a>{}</a>", "x".repeat(n - 7));
    let chunked = |text: String| {
        let pieces: VecDeque<Bytes> = text
            .into_bytes()
            .chunks(40)
            .map(Bytes::copy_from_slice)
            .collect();
        Chunked(pieces).boxed_unsync()
    };
    let xml_type = [("content-type", "application/xml")];
    for h2 in [false, true] {
        // By Content-Length, before anything is forwarded, with APIM's message.
        let body = Full::new(Bytes::from(xml(5007))).boxed_unsync();
        let (parts, body) = post_raw(&setup, h2, "/valct/x", &xml_type, body).await;
        assert_exact_error(
            &parts,
            &body,
            413,
            "Request's body is 5007 bytes long and it exceeds the limit of 100 bytes.",
        );
        // Without a length: refused once the limit is passed.
        let (parts, body) = post_raw(&setup, h2, "/valct/x", &xml_type, chunked(xml(5000))).await;
        assert_exact_error(
            &parts,
            &body,
            413,
            "Request's body exceeds the limit of 100 bytes.",
        );
        // Within the limit: forwarded as it came, streamed.
        let small = xml(100);
        let (parts, body) =
            post_raw(&setup, h2, "/valct/x", &xml_type, chunked(small.clone())).await;
        assert_eq!(parts.status, 200, "{body}");
        let (_, received, _) = recorder.last_body();
        assert_eq!(received, small.as_bytes());
    }
    assert!(
        recorder
            .0
            .lock()
            .unwrap()
            .iter()
            .all(|seen| seen.body.len() <= 100),
        "a body over the limit reached the backend whole"
    );

    let status = daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}
