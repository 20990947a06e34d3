//! The real `rampartd` under clients that try to use up its resources: memory (an
//! HTTP/2 client that opens huge windows and never reads), connection slots (one
//! source holding them all, idle HTTP/2 connections kept open with PINGs), file
//! descriptors (requests held open at a backend). Each test checks what any other
//! client still gets.
//!
//! The files have no `[filter]`: rampartd runs the gateway alone and the tests need
//! no privileges. Clients bind 127.0.0.2 and 127.0.0.3 to be other sources.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_support::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

// ---------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------

/// The backend: `/endless` streams 64 KiB chunks for ever (counting the bytes it
/// produced), `/hold` answers only once released (counting the requests it holds),
/// `/trickle` sends 10 chunks 300 ms apart, `/sleep` answers after 2 s, `/large`
/// sends `large_body()` in one write, anything else "ok". It counts the
/// connections it accepted.
struct Backend {
    addr: SocketAddr,
    produced: Arc<AtomicU64>,
    held: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

#[derive(Clone)]
struct Counters {
    produced: Arc<AtomicU64>,
    held: Arc<AtomicUsize>,
    released: watch::Receiver<bool>,
}

type BackendBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// `/large`'s body: 192 KiB, no two neighbouring KiB alike.
fn large_body() -> Bytes {
    (0..192 * 1024).map(|i: u32| (i % 251) as u8).collect()
}

/// One 64 KiB chunk after another, for ever.
struct Endless {
    chunk: Bytes,
    produced: Arc<AtomicU64>,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.produced
            .fetch_add(self.chunk.len() as u64, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

async fn backend_service(
    counters: Counters,
    request: Request<Incoming>,
) -> Result<Response<BackendBody>, Infallible> {
    let text = |body: &'static str| {
        Response::new(http_body_util::Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync())
    };
    let response = match request.uri().path() {
        "/endless" => Response::new(
            Endless {
                chunk: Bytes::from(vec![b'x'; 64 * 1024]),
                produced: counters.produced,
            }
            .boxed_unsync(),
        ),
        "/hold" => {
            counters.held.fetch_add(1, Ordering::SeqCst);
            let mut released = counters.released;
            let _ = released.wait_for(|released| *released).await;
            counters.held.fetch_sub(1, Ordering::SeqCst);
            text("released")
        }
        "/trickle" => {
            let chunks = futures_util::stream::unfold(0, |n| async move {
                if n == 10 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                Some((Ok(Frame::data(Bytes::from_static(b"chunk\n"))), n + 1))
            });
            Response::new(http_body_util::StreamBody::new(chunks).boxed_unsync())
        }
        "/sleep" => {
            // Counted as held while it sleeps, so that a test can wait for it.
            counters.held.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(2)).await;
            counters.held.fetch_sub(1, Ordering::SeqCst);
            text("slept")
        }
        "/large" => Response::new(http_body_util::Full::new(large_body()).boxed_unsync()),
        "/upload" => match request.into_body().collect().await {
            Ok(body) => Response::new(
                http_body_util::Full::new(Bytes::from(format!("{} bytes", body.to_bytes().len())))
                    .boxed_unsync(),
            ),
            Err(_) => text("cut"),
        },
        _ => text("ok"),
    };
    Ok(response)
}

impl Backend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, released) = watch::channel(false);
        let counters = Counters {
            produced: Arc::new(AtomicU64::new(0)),
            held: Arc::new(AtomicUsize::new(0)),
            released,
        };
        let connections = Arc::new(AtomicUsize::new(0));
        let backend = Self {
            addr,
            produced: Arc::clone(&counters.produced),
            held: Arc::clone(&counters.held),
            connections: Arc::clone(&connections),
            release,
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let counters = counters.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request| backend_service(counters.clone(), request));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        backend
    }

    /// Waits (at most 20 s) until `/hold` holds `n` requests.
    async fn wait_held(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.held.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "the backend holds {} requests, not {n}",
                self.held.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// rampartd with a TLS and a plain listener and an admin listener, one API `/b`
/// (no subscription, both listeners) to the backend and one `/v` that validates
/// JSON bodies (the plain listener), `[gateway]` keys from `gateway`.
struct Served {
    _dir: TempDir,
    pki: Pki,
    tls: u16,
    plain: u16,
    admin: u16,
    runtime: std::path::PathBuf,
    config: std::path::PathBuf,
    /// The configuration's text, and the `[gateway]` keys in it.
    text: (String, String),
    daemon: Rampartd,
}

/// Sets RLIMIT_NOFILE in the child before it runs rampartd.
fn open_file_limit(command: &mut std::process::Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

async fn serve_with(
    tag: &str,
    backend: SocketAddr,
    gateway: &str,
    configure: impl FnOnce(&mut std::process::Command),
) -> Served {
    let dir = TempDir::new(tag);
    let pki = Pki::new();
    let cert = pki.leaf("gw", &["localhost"]);
    let (tls, plain, admin) = (free_port(), free_port(), free_port());
    let runtime = dir.0.join("run");
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         [gateway]\naccess_log = \"errors\"\n{gateway}\n\
         [[listener]]\naddress = \"127.0.0.1:{tls}\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n\
         [[listener]]\naddress = \"127.0.0.1:{plain}\"\nplain_http = true\n\
         [[api]]\nname = \"b\"\npath_prefix = \"/b\"\nbackend = \"http://{backend}/\"\nsubscription = \"none\"\n\
         listeners = [\"127.0.0.1:{tls}\", \"127.0.0.1:{plain}\"]\n\
         [[api]]\nname = \"v\"\npath_prefix = \"/v\"\nbackend = \"http://{backend}/\"\nsubscription = \"none\"\n\
         validation = {{ content_types = [\"application/json\"], json_schema = {{ type = \"object\" }} }}\n\
         listeners = [\"127.0.0.1:{plain}\"]\n",
        state = dir.0.join("state").display().to_string(),
        runtime = runtime.display().to_string(),
        cert = cert.cert_chain_pem.display().to_string(),
        key = cert.key_pem.display().to_string(),
    );
    let config = dir.0.join("rampart.toml");
    let log = dir.0.join("rampartd.log");
    let daemon = Rampartd::start_with(&config, &text, log, tls, configure).await;
    Served {
        _dir: dir,
        pki,
        tls,
        plain,
        admin,
        runtime,
        config,
        text: (text, gateway.to_owned()),
        daemon,
    }
}

async fn serve(tag: &str, backend: SocketAddr, gateway: &str) -> Served {
    serve_with(tag, backend, gateway, |_| {}).await
}

/// The access events of requests to `paths`, once there are `n` (waits at most 5 s;
/// fails with the log if there are not).
async fn access_events(s: &Served, paths: &[&str], n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = s.daemon.log();
        let events: Vec<String> = log
            .lines()
            .filter(|l| {
                l.contains("rampart::access")
                    && paths.iter().any(|p| l.contains(&format!("path=\"{p}\"")))
            })
            .map(str::to_owned)
            .collect();
        if events.len() >= n || Instant::now() > deadline {
            assert_eq!(events.len(), n, "{log}");
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/metrics` counts `n` requests to API `b` as `ClientConnectionFailure`.
async fn assert_clients_gone_counted(s: &Served, n: usize) {
    let (_, metrics) = s.admin("/metrics").await;
    let counted = format!("reason=\"ClientConnectionFailure\"}} {n}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rampart_http_requests_total{api=\"b\",")
                && l.ends_with(&counted)),
        "{metrics}"
    );
}

/// A TCP connection to `port` on 127.0.0.1 from `source` (another loopback address
/// is another client), with a receive buffer of `recv_buffer` bytes if given.
async fn connect_from(source: &str, port: u16, recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

impl Served {
    /// Writes the configuration with `gateway` as its `[gateway]` keys and reloads
    /// it (SIGHUP), waiting until the gateway took it.
    async fn reload(&mut self, gateway: &str) {
        let (text, keys) = &self.text;
        let text = text.replace(&format!("\n{keys}\n"), &format!("\n{gateway}\n"));
        std::fs::write(&self.config, &text).unwrap();
        self.text = (text, gateway.to_owned());
        let seen = self.daemon.log_count("gateway reloaded");
        self.daemon.signal(libc::SIGHUP);
        self.daemon.wait_for_log("gateway reloaded", seen).await;
    }

    fn tls_base(&self) -> String {
        format!("https://localhost:{}", self.tls)
    }

    fn plain_base(&self) -> String {
        format!("http://localhost:{}", self.plain)
    }

    /// A TLS handshake from `source`, ALPN `alpn`.
    async fn tls_from(
        &self,
        source: &str,
        alpn: &[u8],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = connect_from(source, self.tls, None).await;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.pki.client_config(&[alpn])));
        tokio::time::timeout(
            Duration::from_secs(5),
            connector.connect("localhost".try_into().unwrap(), tcp),
        )
        .await
        .unwrap_or_else(|_| panic!("TLS handshake from {source} hangs"))
    }

    /// One HTTP/1.1 GET over a TLS connection from `source`: status and body.
    async fn get_from(&self, source: &str, path: &str) -> (StatusCode, String) {
        let tls = self.tls_from(source, b"http/1.1").await.unwrap();
        get_on(tls, path).await
    }

    /// `GET path` on the admin listener: status and body.
    async fn admin(&self, path: &str) -> (StatusCode, String) {
        let tcp = tokio::time::timeout(
            Duration::from_secs(3),
            TcpStream::connect(("127.0.0.1", self.admin)),
        )
        .await
        .expect("the admin listener does not accept")
        .unwrap();
        tokio::time::timeout(Duration::from_secs(3), get_on(tcp, path))
            .await
            .expect("the admin listener does not answer")
    }
}

/// One HTTP/1.1 GET on `io`: status and body.
async fn get_on<S>(io: S, path: &str) -> (StatusCode, String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

// ---------------------------------------------------------------------------
// HTTP/2 clients
// ---------------------------------------------------------------------------

/// A stream whose reads never complete: the client above it never reads what the
/// server sends (its writes go through).
struct NeverRead<S>(S);

impl<S: Unpin> AsyncRead for NeverRead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NeverRead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// An HTTP/2 connection (prior knowledge, to the plain listener) that opened the
/// largest flow-control windows, asked for `path` on `streams` streams and never
/// reads. Closed when dropped.
struct NoReader {
    _responses: Vec<h2::client::ResponseFuture>,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for NoReader {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

async fn no_reader(port: u16, streams: usize, path: &str) -> NoReader {
    const MAX_WINDOW: u32 = (1 << 31) - 1;
    let tcp = connect_from("127.0.0.1", port, Some(4096)).await;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(MAX_WINDOW)
        .initial_connection_window_size(MAX_WINDOW)
        .handshake::<_, Bytes>(NeverRead(tcp))
        .await
        .unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut responses = Vec::new();
    for _ in 0..streams {
        let request = Request::get(format!("http://localhost:{port}{path}"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        responses.push(response);
        client = client.ready().await.unwrap();
    }
    NoReader {
        _responses: responses,
        connection,
    }
}

/// A request past `limit` gets 503 "Service unavailable" at once (within 1 s), not
/// after a wait for a place.
async fn refused_at_once(
    client: &h2::client::SendRequest<Bytes>,
    base: &str,
    path: &str,
    limit: &str,
) {
    let started = Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(3), h2_get(client, base, path))
        .await
        .unwrap_or_else(|_| panic!("the request past {limit} waits"))
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        refused,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{ "statusCode": 503, "message": "Service unavailable" }"#.to_owned()
        )
    );
}

/// An HTTP/2 client connection over `io`; the task ends when the connection does.
async fn h2_client<S>(
    io: S,
) -> (
    h2::client::SendRequest<Bytes>,
    h2::client::Connection<S, Bytes>,
)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    h2::client::handshake(io).await.unwrap()
}

/// GET `base` + `path` on an HTTP/2 connection: status and body.
async fn h2_get(
    client: &h2::client::SendRequest<Bytes>,
    base: &str,
    path: &str,
) -> Result<(StatusCode, String), h2::Error> {
    let mut client = client.clone().ready().await?;
    let request = Request::get(format!("{base}{path}")).body(()).unwrap();
    let (response, _) = client.send_request(request, true)?;
    let response = response.await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

/// hunt5 #1: a client that opens windows of 2^31-1 bytes, asks for an endless body
/// on 100 streams and never reads made rampartd buffer up to hyper's 400 KiB send
/// buffer per stream: about 60 MB per connection, 560 MB for 8. Now a stream
/// buffers at most 64 KiB plus one backend chunk, and the backend is read no
/// further: two such connections cost a few MiB each, and the backend stops
/// producing.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_that_does_not_read_pins_little_memory() {
    let backend = Backend::start().await;
    let mut s = serve("h2-noread", backend.addr, "").await;

    // Warm up: a connection and 100 streams served and read to the end, so that the
    // baseline includes what serving them allocates for good.
    let tcp = connect_from("127.0.0.1", s.plain, None).await;
    let (client, connection) = h2_client(tcp).await;
    let warm = tokio::spawn(connection);
    let mut gets = Vec::new();
    for _ in 0..100 {
        let client = client.clone();
        let base = s.plain_base();
        gets.push(tokio::spawn(async move {
            h2_get(&client, &base, "/b/fast").await
        }));
    }
    for get in gets {
        assert_eq!(get.await.unwrap().unwrap().0, StatusCode::OK);
    }
    drop(client);
    warm.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = s.daemon.status_kb("VmRSS");
    let fds_before = s.daemon.open_fds();

    const CONNECTIONS: usize = 2;
    let mut attackers = Vec::new();
    for _ in 0..CONNECTIONS {
        attackers.push(no_reader(s.plain, 100, "/b/endless").await);
    }
    // Until the backend has stopped producing (for a second): every buffer on the
    // way is full.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = backend.produced.load(Ordering::Relaxed);
    let mut still = 0;
    while still < 4 {
        assert!(
            Instant::now() < deadline,
            "the backend still produces after 30 s: {} MB so far",
            last >> 20
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = backend.produced.load(Ordering::Relaxed);
        still = if now == last && now > 0 { still + 1 } else { 0 };
        last = now;
    }
    let attacked = s.daemon.status_kb("VmRSS");
    let fds = s.daemon.open_fds();
    let grown_mb = attacked.saturating_sub(baseline) / 1024;
    eprintln!(
        "VmRSS {} MB -> {} MB (+{grown_mb} MB) with {CONNECTIONS} connections x 100 streams not read; \
         the backend produced {} MB in all; descriptors {fds_before} -> {fds}",
        baseline / 1024,
        attacked / 1024,
        last >> 20,
    );
    // Per connection, 100 streams, each with at most a 16 KiB send buffer and the
    // next chunk (together at most two 64 KiB chunks of the backend connection's
    // read buffer, each keeping its 64 KiB allocation), that connection's 64 KiB
    // read buffer and the request's own state (about 10 KiB): about 22 MB, 15 to
    // 19 MB measured. The old code took about 55 MB per connection.
    assert!(
        grown_mb < 25 * CONNECTIONS as u64,
        "rampartd grew by {grown_mb} MB for {CONNECTIONS} connections that do not read"
    );
    // The backend stopped (above) once the buffers on the way were full: the
    // kernel's socket buffers hold the most (at most their limits per stream).
    let kernel_max = |file: &str| -> u64 {
        let text = std::fs::read_to_string(file).unwrap();
        text.split_whitespace().last().unwrap().parse().unwrap()
    };
    let per_stream = kernel_max("/proc/sys/net/ipv4/tcp_wmem")
        + kernel_max("/proc/sys/net/ipv4/tcp_rmem")
        + (1 << 20);
    assert!(
        last < per_stream * 100 * CONNECTIONS as u64,
        "the backend produced {} MB",
        last >> 20
    );

    // Everyone else is still served.
    assert_eq!(s.get_from("127.0.0.2", "/b/fast").await.0, StatusCode::OK);
    drop(attackers);
    assert!(s.daemon.terminate().await.success());
}

// ---------------------------------------------------------------------------
// Connection slots
// ---------------------------------------------------------------------------

/// hunt5 #3: one address could hold every `max_connections` slot. With
/// `max_connections = 8` and no `max_connections_per_source`, one address gets a
/// quarter of them (2); its third connection is closed at accept, before TLS, and
/// counted, while another address is served, and once one of its connections
/// ends it gets another.
#[tokio::test(flavor = "multi_thread")]
async fn one_source_cannot_take_every_connection_slot() {
    let backend = Backend::start().await;
    let mut s = serve("per-source", backend.addr, "max_connections = 8").await;

    let first = s.tls_from("127.0.0.1", b"http/1.1").await.unwrap();
    let second = s.tls_from("127.0.0.1", b"http/1.1").await.unwrap();
    let refused = s.tls_from("127.0.0.1", b"http/1.1").await;
    assert!(
        refused.is_err(),
        "a third connection from 127.0.0.1 was accepted"
    );
    assert_eq!(
        s.get_from("127.0.0.2", "/b/fast").await,
        (StatusCode::OK, "ok".to_owned())
    );
    // The two held connections still serve.
    assert_eq!(get_on(first, "/b/fast").await.0, StatusCode::OK);
    drop(second);
    // The slot frees once rampartd has seen the close; each try before is refused
    // and counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refusals = 1;
    loop {
        if let Ok(tls) = s.tls_from("127.0.0.1", b"http/1.1").await {
            assert_eq!(get_on(tls, "/b/fast").await.0, StatusCode::OK);
            break;
        }
        refusals += 1;
        assert!(Instant::now() < deadline, "127.0.0.1 refused for good");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, metrics) = s.admin("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let counted = format!("rampart_http_connections_over_source_limit_total {refusals}");
    assert!(
        metrics.lines().any(|l| l == counted),
        "{counted}:\n{metrics}"
    );
    assert!(s.daemon.terminate().await.success());
}

/// A connection refused by `max_connections_per_source` was logged at debug only,
/// so the journal did not show a client (or a NAT gateway) being turned away. Now
/// a warning names the source and the limit, once per source every 10 s however
/// often it retries: five refusals of 127.0.0.1 and one of 127.0.0.2 give two lines.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_source_is_named_in_one_warning_not_one_per_connection() {
    let backend = Backend::start().await;
    let mut s = serve(
        "per-source-warning",
        backend.addr,
        "max_connections_per_source = 1",
    )
    .await;
    // The start-up probe's connection (from 127.0.0.1) may still be counted for a
    // moment: a refusal then is one more.
    let mut refusals = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    let _held = loop {
        match s.tls_from("127.0.0.1", b"http/1.1").await {
            Ok(tls) => break tls,
            Err(_) => refusals += 1,
        }
        assert!(Instant::now() < deadline, "127.0.0.1 refused for good");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for _ in 0..5 {
        assert!(s.tls_from("127.0.0.1", b"http/1.1").await.is_err());
    }
    let _other = s.tls_from("127.0.0.2", b"http/1.1").await.unwrap();
    assert!(s.tls_from("127.0.0.2", b"http/1.1").await.is_err());
    let (_, metrics) = s.admin("/metrics").await;
    let counted = format!(
        "rampart_http_connections_over_source_limit_total {}",
        refusals + 6
    );
    assert!(
        metrics.lines().any(|l| l == counted),
        "{counted}\n{metrics}"
    );
    let log = s.daemon.log();
    let warnings: Vec<_> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("max_connections_per_source"))
        .collect();
    assert_eq!(warnings.len(), 2, "{log}");
    for (line, source) in warnings.iter().zip(["127.0.0.1", "127.0.0.2"]) {
        assert!(
            line.contains(&format!("source={source} ")) && line.contains("limit=1"),
            "{line}"
        );
    }
    assert!(s.daemon.terminate().await.success());
}

/// Behind a trusted proxy the TCP peer is the proxy, which speaks for many
/// clients: it is not capped, other addresses are.
#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxy_is_not_capped() {
    let backend = Backend::start().await;
    let mut s = serve(
        "per-source-proxy",
        backend.addr,
        "max_connections_per_source = 1\ntrusted_proxies = [\"127.0.0.3\"]",
    )
    .await;
    let mut proxied = Vec::new();
    for _ in 0..3 {
        proxied.push(s.tls_from("127.0.0.3", b"http/1.1").await.unwrap());
    }
    for tls in proxied {
        assert_eq!(get_on(tls, "/b/fast").await.0, StatusCode::OK);
    }
    let _held = s.tls_from("127.0.0.1", b"http/1.1").await.unwrap();
    assert!(s.tls_from("127.0.0.1", b"http/1.1").await.is_err());
    assert!(s.daemon.terminate().await.success());
}

/// hunt5 #3: HTTP/2 PINGs kept an idle connection open for ever (every byte counted
/// as activity). Now an HTTP/2 connection with no request for `idle_timeout_secs`
/// is closed whatever control frames it sends, over TLS (ALPN) and in clear text
/// (prior knowledge).
#[tokio::test(flavor = "multi_thread")]
async fn http2_pings_do_not_keep_an_idle_connection_open() {
    let backend = Backend::start().await;
    let mut s = serve("h2-ping", backend.addr, "idle_timeout_secs = 1").await;
    let tls = s.tls_from("127.0.0.1", b"h2").await.unwrap();
    idle_despite_pings(tls, &s.tls_base(), "tls").await;
    let plain = connect_from("127.0.0.1", s.plain, None).await;
    idle_despite_pings(plain, &s.plain_base(), "plain").await;
    assert!(s.daemon.terminate().await.success());
}

/// Sends a request on an HTTP/2 connection over `io`, then a PING every 200 ms:
/// the connection must end 1 to 1.25 idle timeouts (1 s) after the request.
async fn idle_despite_pings<S>(io: S, base: &str, what: &str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, mut connection) = h2_client(io).await;
    let mut pings = connection.ping_pong().unwrap();
    let connection = tokio::spawn(connection);
    assert_eq!(
        h2_get(&client, base, "/b/fast").await.unwrap(),
        (StatusCode::OK, "ok".to_owned())
    );
    let idle_since = Instant::now();
    let pinging = tokio::spawn(async move {
        let mut answered = 0;
        while pings.ping(h2::Ping::opaque()).await.is_ok() {
            answered += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        answered
    });
    let ended = tokio::time::timeout(Duration::from_secs(6), connection).await;
    let after = idle_since.elapsed();
    assert!(
        ended.is_ok(),
        "{what}: the connection sending PINGs is still open after 6 s"
    );
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(2500),
        "{what}: closed {after:?} after its last request, for a 1 s idle timeout"
    );
    let answered = pinging.await.unwrap();
    assert!(answered >= 3, "{what}: {answered} PINGs answered");
}

/// What still counts over HTTP/2: a request waiting for its response head, and a
/// response body that moves, each for longer than the idle timeout.
#[tokio::test(flavor = "multi_thread")]
async fn http2_requests_in_progress_keep_their_connection() {
    let backend = Backend::start().await;
    let mut s = serve("h2-busy", backend.addr, "idle_timeout_secs = 1").await;
    let tls = s.tls_from("127.0.0.1", b"h2").await.unwrap();
    let (client, connection) = h2_client(tls).await;
    let connection = tokio::spawn(connection);
    assert_eq!(
        h2_get(&client, &s.tls_base(), "/b/sleep").await.unwrap(),
        (StatusCode::OK, "slept".to_owned())
    );
    let (status, body) = h2_get(&client, &s.tls_base(), "/b/trickle").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "chunk\n".repeat(10));
    assert!(!connection.is_finished());
    assert!(s.daemon.terminate().await.success());
}

/// A client that goes away in the middle of its request body (it declares 100
/// bytes, sends 50 and closes, or resets the connection) was not told apart from
/// one that sends a body that cannot be read; its access event and counter now
/// say APIM's `ClientConnectionFailure`.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_mid_body_is_a_client_connection_failure() {
    use tokio::io::AsyncWriteExt;
    let backend = Backend::start().await;
    let mut s = serve("client-gone", backend.addr, "").await;
    let mut tcp = connect_from("127.0.0.1", s.plain, None).await;
    tcp.write_all(b"POST /b/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&[b'x'; 50]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(tcp);

    // The same cut by a reset (SO_LINGER 0) over TLS.
    let mut tls = s.tls_from("127.0.0.1", b"http/1.1").await.unwrap();
    tls.write_all(b"POST /b/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&[b'x'; 50]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tls.get_ref().0.set_zero_linger().unwrap();
    drop(tls);

    let events = access_events(&s, &["/b/upload"], 2).await;
    for event in &events {
        assert!(
            event.contains("reason=\"ClientConnectionFailure\""),
            "{event}\n{}",
            s.daemon.log()
        );
    }
    assert_clients_gone_counted(&s, 2).await;
    assert!(s.daemon.terminate().await.success());
}

/// The same over HTTP/2: a client that closed its connection in the middle of
/// its request body, or reset its stream while the backend had not answered,
/// made hyper drop the request's handler before it knew its outcome, and the
/// request had no access event and was not counted; a stream reset in the middle
/// of the body was a malformed body (`BadRequest`). Each now has an event with
/// `ClientConnectionFailure`, and the counter.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_gone_mid_body_is_a_client_connection_failure() {
    let backend = Backend::start().await;
    let mut s = serve("h2-client-gone", backend.addr, "").await;
    let upload = |client: h2::client::SendRequest<Bytes>, base: String| async move {
        let mut client = client.ready().await.unwrap();
        let request = Request::post(format!("{base}/b/upload"))
            .header("content-length", "100")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(&[b'x'; 50]), false)
            .unwrap();
        (response, body)
    };

    // The whole connection closed (TLS, ALPN h2).
    let tls = s.tls_from("127.0.0.1", b"h2").await.unwrap();
    let (client, connection) = h2_client(tls).await;
    let connection = tokio::spawn(connection);
    let sent = upload(client, s.tls_base()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    connection.abort();
    let _ = connection.await;
    drop(sent);

    // The stream reset (plain listener, prior knowledge), the connection kept.
    let tcp = connect_from("127.0.0.1", s.plain, None).await;
    let (client, connection) = h2_client(tcp).await;
    let connection = tokio::spawn(connection);
    let (_response, mut body) = upload(client.clone(), s.plain_base()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    body.send_reset(h2::Reason::CANCEL);

    // And a request without a body whose client resets its stream while the
    // backend has not answered.
    let mut client = client.ready().await.unwrap();
    let request = Request::get(format!("{}/b/sleep", s.plain_base()))
        .body(())
        .unwrap();
    let (_response, mut stream) = client.send_request(request, true).unwrap();
    backend.wait_held(1).await;
    stream.send_reset(h2::Reason::CANCEL);

    let events = access_events(&s, &["/b/upload", "/b/sleep"], 3).await;
    for event in &events {
        assert!(
            event.contains("status=400")
                && event.contains("api=\"b\"")
                && event.contains("reason=\"ClientConnectionFailure\""),
            "{event}\n{}",
            s.daemon.log()
        );
    }
    assert_clients_gone_counted(&s, 3).await;
    assert!(!connection.is_finished());
    connection.abort();
    assert!(s.daemon.terminate().await.success());
}

/// hunt9 M3: over HTTP/2 a response body that does not move (its client does not
/// read that stream) held its backend connection, and its place in
/// `max_backend_requests`, for as long as the client kept the connection busy with
/// other streams: the idle timeout is the connection's. Now a stream's body that
/// does not move for the idle timeout is cut (the stream reset), and its backend
/// connection and place are given back: with one place, the other requests on the
/// connection get 503 while the unread stream holds it, then 200.
#[tokio::test]
async fn an_http2_stream_whose_body_stops_moving_gives_its_backend_connection_back() {
    let backend = Backend::start().await;
    let mut s = serve(
        "h2-stalled",
        backend.addr,
        "idle_timeout_secs = 1\nmax_backend_requests = 1\nmax_backend_requests_per_source = 0",
    )
    .await;
    let tcp = connect_from("127.0.0.1", s.plain, None).await;
    // A large connection window: the unread stream takes only its own 64 KiB.
    let (client, connection) = h2::client::Builder::new()
        .initial_connection_window_size(64 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut sender = client.clone().ready().await.unwrap();
    let request = Request::get(format!("{}/b/endless", s.plain_base()))
        .body(())
        .unwrap();
    let (response, _stream) = sender.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut unread = response.into_body();

    // Other requests on the connection every 200 ms keep it busy.
    let started = Instant::now();
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_secs(4) {
        let (status, _) = h2_get(&client, &s.plain_base(), "/b/x").await.unwrap();
        statuses.push((started.elapsed(), status));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        statuses[0].1,
        StatusCode::SERVICE_UNAVAILABLE,
        "{statuses:?}"
    );
    let freed = statuses
        .iter()
        .find(|(_, status)| *status == StatusCode::OK)
        .map(|(at, _)| *at);
    let Some(freed) = freed else {
        panic!("the unread stream held the backend place for 4 s: {statuses:?}");
    };
    // The idle timeout is looked at four times per period: cut after 1 to 1.25 s
    // without moving (it stopped moving once its 64 KiB window was full).
    assert!(freed < Duration::from_millis(2500), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .filter(|(at, _)| *at > freed)
            .all(|(_, status)| *status == StatusCode::OK),
        "{statuses:?}"
    );
    // The unread stream was reset: what was buffered, then an error.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match unread.data().await {
                Some(Ok(_)) => {}
                Some(Err(error)) => break Some(error),
                None => break None,
            }
        }
    })
    .await
    .unwrap();
    assert!(ended.is_some(), "the stalled stream ended without an error");
    // Its access event says the gateway cut it, with the status sent.
    let event = access_events(&s, &["/b/endless"], 1).await.remove(0);
    assert!(
        event.contains("status=200") && event.contains("reason=\"IdleTimeout\""),
        "{event}"
    );
    // (The connection itself carried the 200s after the cut.)
    connection.abort();
    assert!(s.daemon.terminate().await.success());
}

/// A client reading a large response slowly but steadily was cut as stalled over
/// HTTP/2: hyper took each of the backend's chunks (up to 64 KiB) whole and polled
/// the body again only once h2 had sent it, so a client reading less than a chunk
/// per idle timeout left the body unmoved for longer than that. Chunks now go on
/// in pieces of the stream's 16 KiB send buffer: a client taking 4 KiB every
/// 100 ms gets the whole body, over several idle timeouts, and nothing is cut.
#[tokio::test]
async fn a_slow_but_steady_http2_reader_of_a_large_body_is_not_cut() {
    let backend = Backend::start().await;
    let mut s = serve("h2-slow-reader", backend.addr, "idle_timeout_secs = 1").await;
    let tcp = connect_from("127.0.0.1", s.plain, None).await;
    let (client, connection) = h2_client(tcp).await;
    let connection = tokio::spawn(connection);
    let mut sender = client.ready().await.unwrap();
    let request = Request::get(format!("{}/b/large", s.plain_base()))
        .body(())
        .unwrap();
    let (response, _stream) = sender.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();

    // The stream's window (64 KiB) is given back 4 KiB every 100 ms: about 40 KiB
    // a second, less than one 64 KiB chunk per idle timeout.
    let started = Instant::now();
    let mut received = Vec::new();
    let mut unreleased = 0;
    let mut release_at = tokio::time::Instant::now();
    loop {
        match tokio::time::timeout_at(release_at, body.data()).await {
            Ok(Some(Ok(chunk))) => {
                unreleased += chunk.len();
                received.extend_from_slice(&chunk);
            }
            Ok(Some(Err(error))) => panic!(
                "cut after {} bytes, {:?}: {error}\n{}",
                received.len(),
                started.elapsed(),
                s.daemon.log()
            ),
            Ok(None) => break,
            Err(_) => {
                let n = unreleased.min(4096);
                body.flow_control().release_capacity(n).unwrap();
                unreleased -= n;
                release_at += Duration::from_millis(100);
            }
        }
    }
    let took = started.elapsed();
    assert!(
        received == large_body(),
        "{} bytes received",
        received.len()
    );
    // It did read for several idle timeouts.
    assert!(took > Duration::from_secs(2), "{took:?}");
    let log = s.daemon.log();
    assert!(!log.contains("did not move"), "{log}");
    assert!(!log.contains("path=\"/b/large\""), "{log}");
    connection.abort();
    assert!(s.daemon.terminate().await.success());
}

/// An HTTP/1 client that closes its connection while the backend has not answered
/// is reported too: hyper drops the request's handler when it sees the close.
#[tokio::test]
async fn an_http1_client_gone_before_the_answer_is_a_client_connection_failure() {
    use tokio::io::AsyncWriteExt;
    let backend = Backend::start().await;
    let mut s = serve("h1-client-gone", backend.addr, "").await;
    let mut http1 = connect_from("127.0.0.1", s.plain, None).await;
    http1
        .write_all(b"GET /b/hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    backend.wait_held(1).await;
    drop(http1);
    let event = access_events(&s, &["/b/hold"], 1).await.remove(0);
    assert!(
        event.contains("status=400") && event.contains("reason=\"ClientConnectionFailure\""),
        "{event}"
    );
    let _ = backend.release.send(true);
    assert!(s.daemon.terminate().await.success());
}

/// A request the gateway itself cuts off, at the end of its drain time, is not a
/// client that went away: no `ClientConnectionFailure` event for it, over HTTP/2
/// (its stream reset when the connection is dropped) or HTTP/1 (its handler dropped
/// with the connection's task). It had no event at all, and a response whose body
/// was cut had the event of a whole one (or none with `access_log = "errors"`):
/// each now has its event, reason `DrainTimeout` (503 for a request not answered
/// yet, the status sent for a body cut).
#[tokio::test]
async fn a_request_cut_at_the_end_of_the_drain_time_says_so() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let mut s = serve("drain-cut", backend.addr, "drain_timeout_secs = 1").await;

    let tcp = connect_from("127.0.0.1", s.plain, None).await;
    let (client, connection) = h2_client(tcp).await;
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::get(format!("{}/b/hold", s.plain_base()))
        .body(())
        .unwrap();
    let (_held, _stream) = client.send_request(request, true).unwrap();
    let mut client = client.ready().await.unwrap();
    let request = Request::get(format!("{}/b/trickle", s.plain_base()))
        .body(())
        .unwrap();
    let (trickling, _stream) = client.send_request(request, true).unwrap();
    let trickling = trickling.await.unwrap();
    assert_eq!(trickling.status(), StatusCode::OK);
    let mut http1 = connect_from("127.0.0.1", s.plain, None).await;
    http1
        .write_all(b"GET /b/hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut http1_body = connect_from("127.0.0.1", s.plain, None).await;
    http1_body
        .write_all(b"GET /b/trickle HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0; 1024];
    let read = http1_body.read(&mut head).await.unwrap();
    assert!(head[..read].starts_with(b"HTTP/1.1 200"), "{head:?}");
    backend.wait_held(2).await;

    assert!(s.daemon.terminate().await.success());
    let log = s.daemon.log();
    assert!(log.contains("drain time over"), "{log}");
    let events = access_events(&s, &["/b/hold"], 2).await;
    for event in &events {
        assert!(
            event.contains("status=503") && event.contains("reason=\"DrainTimeout\""),
            "{event}\n{log}"
        );
    }
    let events = access_events(&s, &["/b/trickle"], 2).await;
    for event in &events {
        assert!(
            event.contains("status=200") && event.contains("reason=\"DrainTimeout\""),
            "{event}\n{log}"
        );
    }
    assert!(!log.contains("ClientConnectionFailure"), "{log}");
    connection.abort();
    drop((http1, http1_body, trickling));
}

/// A request body the gateway is still reading to validate it when the drain time
/// ends: the gateway cut the connection, the client did nothing wrong. Over HTTP/2
/// the body's read failed and the request was reported as a client that went away
/// (`ClientConnectionFailure`, told to the automatic bans); over HTTP/1 it had no
/// event. Both now say `DrainTimeout`.
#[tokio::test]
async fn a_request_body_cut_at_the_end_of_the_drain_time_is_not_a_client_failure() {
    use tokio::io::AsyncWriteExt;
    let backend = Backend::start().await;
    let mut s = serve("drain-body", backend.addr, "drain_timeout_secs = 1").await;

    let tcp = connect_from("127.0.0.1", s.plain, None).await;
    let (client, connection) = h2_client(tcp).await;
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::post(format!("{}/v/x", s.plain_base()))
        .header("content-type", "application/json")
        .header("content-length", "100")
        .body(())
        .unwrap();
    let (_response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(Bytes::from_static(&[b' '; 50]), false)
        .unwrap();
    let mut http1 = connect_from("127.0.0.1", s.plain, None).await;
    http1
        .write_all(
            b"POST /v/x HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n",
        )
        .await
        .unwrap();
    http1.write_all(&[b' '; 50]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert!(s.daemon.terminate().await.success());
    let log = s.daemon.log();
    assert!(log.contains("drain time over"), "{log}");
    let events = access_events(&s, &["/v/x"], 2).await;
    for event in &events {
        assert!(
            event.contains("status=503") && event.contains("reason=\"DrainTimeout\""),
            "{event}\n{log}"
        );
    }
    assert!(!log.contains("ClientConnectionFailure"), "{log}");
    connection.abort();
    drop((http1, body));
}

/// A client that goes away in the middle of a response body (HTTP/1: it closes
/// its connection; HTTP/2: it resets its stream) had the access event of a whole
/// response, status 200 and no reason (so none with `access_log = "errors"`):
/// the event now has APIM's `ClientConnectionFailure`, with the status sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_response_body_the_client_leaves_is_a_client_connection_failure() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let mut s = serve("client-leaves-body", backend.addr, "").await;

    let mut http1 = connect_from("127.0.0.1", s.plain, None).await;
    http1
        .write_all(b"GET /b/endless HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0; 16 * 1024];
    while received.len() < 100_000 {
        let read = http1.read(&mut buffer).await.unwrap();
        assert!(read > 0, "the gateway closed the connection");
        received.extend_from_slice(&buffer[..read]);
    }
    assert!(received.starts_with(b"HTTP/1.1 200"));
    drop(http1);

    let tcp = connect_from("127.0.0.1", s.plain, None).await;
    let (client, connection) = h2_client(tcp).await;
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::get(format!("{}/b/endless", s.plain_base()))
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert!(body.data().await.unwrap().is_ok());
    stream.send_reset(h2::Reason::CANCEL);

    let events = access_events(&s, &["/b/endless"], 2).await;
    for event in &events {
        assert!(
            event.contains("status=200") && event.contains("reason=\"ClientConnectionFailure\""),
            "{event}\n{}",
            s.daemon.log()
        );
    }
    // The bytes sent before the client left: at least what each client read of the
    // body (over HTTP/1, 100,000 bytes less the head; over HTTP/2, one frame).
    let mut sent: Vec<u64> = events
        .iter()
        .map(|event| {
            let value = event.split(" bytes_sent=").nth(1).unwrap_or_default();
            let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
            digits
                .parse()
                .unwrap_or_else(|_| panic!("no bytes_sent: {event}"))
        })
        .collect();
    sent.sort_unstable();
    assert!(sent[0] > 0 && sent[1] >= 99_000, "{sent:?}: {events:?}");
    assert!(!connection.is_finished());
    connection.abort();
    assert!(s.daemon.terminate().await.success());
}

/// An HTTP/1 client that stops reading a response body is cut at the idle timeout
/// (no byte moves on its connection), and the request's access event says the
/// gateway cut it: the status sent, reason `IdleTimeout`, not a client that went
/// away (`ClientConnectionFailure`, which the automatic bans count).
#[tokio::test]
async fn an_http1_response_body_the_client_stops_reading_is_cut_as_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let mut s = serve("h1-stalled", backend.addr, "idle_timeout_secs = 1").await;
    let mut http1 = connect_from("127.0.0.1", s.plain, None).await;
    http1
        .write_all(b"GET /b/endless HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0; 64];
    let read = http1.read(&mut head).await.unwrap();
    assert!(
        head[..read].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &head[..read]
    );
    // Nothing more is read: the socket buffers fill and the body stops moving.
    let started = Instant::now();
    let event = access_events(&s, &["/b/endless"], 1).await.remove(0);
    assert!(
        event.contains("status=200") && event.contains("reason=\"IdleTimeout\""),
        "{event}\n{}",
        s.daemon.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    drop(http1);
    assert!(s.daemon.terminate().await.success());
}

// ---------------------------------------------------------------------------
// File descriptors
// ---------------------------------------------------------------------------

/// hunt5 #2: each request in flight to a backend holds a backend connection, and
/// nothing bounded them. With `max_backend_requests = 4` and four requests held at
/// the backend, the fifth gets 503 at once without a connection to the backend;
/// once the held ones finish, requests pass again. (The held requests come from one
/// source: `max_backend_requests_per_source = 0` leaves it uncapped.)
#[tokio::test(flavor = "multi_thread")]
async fn requests_past_max_backend_requests_get_503_at_once() {
    let backend = Backend::start().await;
    let mut s = serve(
        "backend-requests",
        backend.addr,
        "max_backend_requests = 4\nmax_backend_requests_per_source = 0",
    )
    .await;
    let tcp = connect_from("127.0.0.1", s.plain, None).await;
    let (client, connection) = h2_client(tcp).await;
    tokio::spawn(connection);
    let base = s.plain_base();
    let mut held = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        let base = base.clone();
        held.push(tokio::spawn(async move {
            h2_get(&client, &base, "/b/hold").await
        }));
    }
    backend.wait_held(4).await;

    refused_at_once(&client, &base, "/b/hold", "max_backend_requests").await;
    // The same over another connection and HTTP/1.1.
    let (status, _) = s.get_from("127.0.0.2", "/b/fast").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.held.load(Ordering::SeqCst), 4);
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        4,
        "no connection for the refused"
    );

    backend.release.send(true).unwrap();
    for request in held {
        assert_eq!(
            request.await.unwrap().unwrap(),
            (StatusCode::OK, "released".to_owned())
        );
    }
    assert_eq!(
        h2_get(&client, &base, "/b/fast").await.unwrap(),
        (StatusCode::OK, "ok".to_owned())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = s.daemon.log();
    assert_eq!(
        log.lines()
            .filter(
                |l| l.contains("rampart::access") && l.contains("reason=\"BackendRequestLimit\"")
            )
            .count(),
        2,
        "{log}"
    );
    let (_, metrics) = s.admin("/metrics").await;
    assert!(
        metrics.lines().any(|l| l
            == "rampart_http_requests_total{api=\"b\",status=\"503\",reason=\"BackendRequestLimit\"} 2"),
        "{metrics}"
    );
    assert!(s.daemon.terminate().await.success());
}

/// A reload changes `max_backend_requests` for the requests that come next; those
/// in flight keep their place (one source, not capped on its own).
#[tokio::test(flavor = "multi_thread")]
async fn max_backend_requests_changes_with_a_reload() {
    let backend = Backend::start().await;
    let mut s = serve(
        "backend-requests-reload",
        backend.addr,
        "max_backend_requests = 1\nmax_backend_requests_per_source = 0",
    )
    .await;
    let tcp = connect_from("127.0.0.1", s.plain, None).await;
    let (client, connection) = h2_client(tcp).await;
    tokio::spawn(connection);
    let base = s.plain_base();
    let hold = |client: &h2::client::SendRequest<Bytes>| {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move { h2_get(&client, &base, "/b/hold").await })
    };
    let first = hold(&client);
    backend.wait_held(1).await;
    let refused = h2_get(&client, &base, "/b/fast").await.unwrap();
    assert_eq!(refused.0, StatusCode::SERVICE_UNAVAILABLE);

    s.reload("max_backend_requests = 3\nmax_backend_requests_per_source = 0")
        .await;
    let more = [hold(&client), hold(&client)];
    backend.wait_held(3).await;
    assert_eq!(
        h2_get(&client, &base, "/b/fast").await.unwrap().0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Down to 2 while 3 are held: the next passes only once two have finished.
    s.reload("max_backend_requests = 2\nmax_backend_requests_per_source = 0")
        .await;
    assert_eq!(
        h2_get(&client, &base, "/b/fast").await.unwrap().0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    backend.release.send(true).unwrap();
    for held in std::iter::once(first).chain(more) {
        assert_eq!(held.await.unwrap().unwrap().0, StatusCode::OK);
    }
    // Two now, held by two requests that take 2 s at the backend.
    let sleeping: Vec<_> = (0..2)
        .map(|_| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move { h2_get(&client, &base, "/b/sleep").await })
        })
        .collect();
    backend.wait_held(2).await;
    assert_eq!(
        h2_get(&client, &base, "/b/fast").await.unwrap().0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    for request in sleeping {
        assert_eq!(request.await.unwrap().unwrap().0, StatusCode::OK);
    }
    assert!(s.daemon.terminate().await.success());
}

/// One source (256 connections x 100 HTTP/2 streams) could hold every
/// `max_backend_requests` permit, and every other client got 503. With
/// `max_backend_requests_per_source = 3`, 127.0.0.1 holds three requests over two
/// connections; its fourth gets the same 503 at once with its own reason, while
/// 127.0.0.2 is served and a trusted proxy (127.0.0.3) is not capped. A reload
/// raises the limit for the next requests.
#[tokio::test(flavor = "multi_thread")]
async fn one_source_cannot_take_every_backend_request() {
    let backend = Backend::start().await;
    let mut s = serve(
        "backend-requests-per-source",
        backend.addr,
        "max_backend_requests = 20\nmax_backend_requests_per_source = 3\ntrusted_proxies = [\"127.0.0.3\"]",
    )
    .await;
    let base = s.plain_base();
    let h2_from = |source: &'static str| {
        let plain = s.plain;
        async move {
            let (client, connection) = h2_client(connect_from(source, plain, None).await).await;
            tokio::spawn(connection);
            client
        }
    };
    let hold = |client: &h2::client::SendRequest<Bytes>| {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move { h2_get(&client, &base, "/b/hold").await })
    };
    let first = h2_from("127.0.0.1").await;
    let second = h2_from("127.0.0.1").await;
    let mut held = vec![hold(&first), hold(&first), hold(&second)];
    backend.wait_held(3).await;

    refused_at_once(&second, &base, "/b/fast", "max_backend_requests_per_source").await;
    // Another source is served, over HTTP/2 and HTTP/1.1.
    let other = h2_from("127.0.0.2").await;
    assert_eq!(
        h2_get(&other, &base, "/b/fast").await.unwrap(),
        (StatusCode::OK, "ok".to_owned())
    );
    assert_eq!(
        s.get_from("127.0.0.2", "/b/fast").await,
        (StatusCode::OK, "ok".to_owned())
    );
    // A trusted proxy speaks for many clients: four held, and a fifth passes.
    let proxy = h2_from("127.0.0.3").await;
    held.extend((0..4).map(|_| hold(&proxy)));
    backend.wait_held(7).await;
    assert_eq!(
        h2_get(&proxy, &base, "/b/fast").await.unwrap().0,
        StatusCode::OK
    );

    // A reload raises the limit: 127.0.0.1 gets a fourth while three are held.
    s.reload("max_backend_requests = 20\nmax_backend_requests_per_source = 4\ntrusted_proxies = [\"127.0.0.3\"]")
        .await;
    assert_eq!(
        h2_get(&first, &base, "/b/fast").await.unwrap(),
        (StatusCode::OK, "ok".to_owned())
    );

    backend.release.send(true).unwrap();
    for request in held {
        assert_eq!(request.await.unwrap().unwrap().0, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = s.daemon.log();
    let events: Vec<_> = log
        .lines()
        .filter(|l| l.contains("rampart::access") && l.contains("status=503"))
        .collect();
    assert_eq!(events.len(), 1, "{log}");
    assert!(
        events[0].contains("reason=\"BackendRequestLimitPerSource\"")
            && events[0].contains("peer=127.0.0.1:"),
        "{log}"
    );
    let (_, metrics) = s.admin("/metrics").await;
    assert!(
        metrics.lines().any(|l| l
            == "rampart_http_requests_total{api=\"b\",status=\"503\",reason=\"BackendRequestLimitPerSource\"} 1"),
        "{metrics}"
    );
    assert!(s.daemon.terminate().await.success());
}

/// hunt5 #2: three HTTP/2 connections with 100 requests each held at the backend
/// took 300 backend connections: at the open-file limit every accept failed, the
/// admin listener's too. With a limit of 512 descriptors and 600 such requests, the
/// caps keep rampartd below it: the admin listener and the control socket answer,
/// and a new client gets an answer (503) instead of a hang. (All from one source,
/// not capped on its own, so that the global limit is what is reached.)
#[tokio::test(flavor = "multi_thread")]
async fn admin_and_control_keep_working_when_the_gateway_is_at_its_limits() {
    let backend = Backend::start().await;
    let mut s = serve_with(
        "descriptors",
        backend.addr,
        "max_connections = 64\nmax_backend_requests = 64\nmax_backend_requests_per_source = 0",
        |command| open_file_limit(command, 512, 512),
    )
    .await;
    let mut attackers = Vec::new();
    for _ in 0..6 {
        attackers.push(no_reader(s.plain, 100, "/b/hold").await);
    }
    backend.wait_held(64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds = s.daemon.open_fds();
    eprintln!(
        "rampartd holds {fds} descriptors (limit 512); the backend holds {} requests",
        backend.held.load(Ordering::SeqCst)
    );

    assert_eq!(s.admin("/healthz").await.0, StatusCode::OK);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("status")
        .env("RAMPART_SOCKET", s.runtime.join("control.sock"))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(
        s.get_from("127.0.0.2", "/b/fast").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(fds < 400, "{fds} descriptors open");
    let log = s.daemon.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("open-file limit is lower"), "{log}");

    drop(attackers);
    backend.release.send(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.get_from("127.0.0.2", "/b/fast").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "still refused after the attack");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.daemon.terminate().await.success());
}

/// rampartd raises its soft open-file limit to the hard one at start, and warns
/// (naming the keys) when the gateway's limits do not fit in it.
#[tokio::test(flavor = "multi_thread")]
async fn the_open_file_limit_is_raised_and_checked_at_start_and_reload() {
    let backend = Backend::start().await;
    let mut s = serve_with(
        "nofile",
        backend.addr,
        "max_connections = 10000",
        |command| open_file_limit(command, 256, 4096),
    )
    .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.daemon.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["Max", "open", "files", "4096", "4096", "files"],
        "{limits}"
    );
    let log = s.daemon.log();
    assert!(
        log.contains("open-file limit raised to the hard limit") && log.contains("was=256"),
        "{log}"
    );
    assert!(
        log.contains("max_connections + max_backend_requests + 256 reserved = 20256 descriptors, the limit is 4096"),
        "{log}"
    );
    assert_eq!(s.get_from("127.0.0.1", "/b/fast").await.0, StatusCode::OK);

    // A reload checks again: limits that fit say nothing, limits raised past the
    // open-file limit are warned about in the reload's own message.
    let warning = "the open-file limit is lower than the gateway may need";
    let before = s.daemon.log_count(warning);
    s.reload("max_connections = 1000\nmax_backend_requests = 1000")
        .await;
    s.daemon.wait_for_log("configuration reloaded", 0).await;
    assert_eq!(s.daemon.log_count(warning), before, "{}", s.daemon.log());
    let reloads = s.daemon.log_count("configuration reloaded");
    s.reload("max_connections = 3000\nmax_backend_requests = 1000")
        .await;
    s.daemon
        .wait_for_log("configuration reloaded", reloads)
        .await;
    let log = s.daemon.log();
    let reloaded = log
        .lines()
        .rfind(|line| line.contains("configuration reloaded"))
        .unwrap();
    assert!(
        reloaded.contains(&format!(
            "{warning}: max_connections + max_backend_requests + 256 reserved = 4256 descriptors, the limit is 4096"
        )),
        "{log}"
    );
    assert_eq!(s.get_from("127.0.0.1", "/b/fast").await.0, StatusCode::OK);
    assert!(s.daemon.terminate().await.success());
}
