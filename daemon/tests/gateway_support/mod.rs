//! Shared pieces of the gateway tests: certificates, a backend, clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart::gateway::{
    ApiSettings, BackendTimeouts, CertFiles, Gateway, GatewaySettings, Limits, ListenerSettings,
    SniCert, TlsSettings, Transport,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A temporary directory removed on drop.
/// Writes `contents` to `path` as an operator's configuration or key file is
/// kept: a new file is created 0600 (a file that exists keeps its mode). A
/// file others can read makes every rampartd started on it warn that it is
/// "not private", a warning a test then cannot tell from one it caused.
pub fn write_private(path: &std::path::Path, contents: impl AsRef<[u8]>) {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_ref()))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("rampart-gw-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA and leaf certificates it signs, written as PEM files.
pub struct Pki {
    pub dir: TempDir,
    pub ca_pem: PathBuf,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Self {
        let dir = TempDir::new("pki");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rampart test CA");
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = dir.0.join("ca.pem");
        std::fs::write(&ca_pem, cert.pem()).unwrap();
        Self {
            ca_der: cert.der().clone(),
            ca: rcgen::Issuer::new(params, key),
            ca_pem,
            dir,
        }
    }

    /// A leaf for `names`, written as `<file>.pem` (chain) and `<file>.key`.
    pub fn leaf(&self, file: &str, names: &[&str]) -> CertFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_chain_pem = self.dir.0.join(format!("{file}.pem"));
        let key_pem = self.dir.0.join(format!("{file}.key"));
        std::fs::write(&cert_chain_pem, cert.pem()).unwrap();
        write_private(&key_pem, key.serialize_pem());
        CertFiles {
            cert_chain_pem,
            key_pem,
        }
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

/// Bytes of the test pattern at `offset`: not periodic at any power of two.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// A request or response body of `len` pattern bytes, produced chunk by chunk.
pub struct PatternBody {
    offset: u64,
    len: u64,
    announce_len: bool,
}

impl PatternBody {
    pub fn new(len: u64, announce_len: bool) -> Self {
        Self {
            offset: 0,
            len,
            announce_len,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.offset >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.offset).min(64 * 1024);
        let start = self.offset;
        let chunk: Vec<u8> = (start..start + n).map(pattern_byte).collect();
        self.offset += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        if self.announce_len {
            SizeHint::with_exact(self.len - self.offset)
        } else {
            SizeHint::default()
        }
    }
}

/// Reads a body to the end, checking it is the pattern; returns its length.
pub async fn check_pattern(mut body: Incoming) -> Result<u64, String> {
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            for (i, b) in data.iter().enumerate() {
                if *b != pattern_byte(offset + i as u64) {
                    return Err(format!("byte {} differs", offset + i as u64));
                }
            }
            offset += data.len() as u64;
        }
    }
    Ok(offset)
}

type BackendBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: String) -> Response<BackendBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = status;
    r
}

/// The test backend. `/.../upload` checks a pattern body, `/.../download?n=N`
/// streams N pattern bytes, `/.../slow?ms=N` waits, anything else echoes the
/// request line and headers, one per line.
async fn backend_service(req: Request<Incoming>) -> Result<Response<BackendBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let version = format!("{:?}", req.version());
    let mut response = if path.ends_with("/upload") {
        match check_pattern(req.into_body()).await {
            Ok(n) => text(StatusCode::OK, format!("received {n}")),
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        }
    } else if path.ends_with("/download") {
        let n: u64 = query.trim_start_matches("n=").parse().unwrap_or(0);
        Response::new(PatternBody::new(n, true).boxed_unsync())
    } else if path.ends_with("/slow") {
        let ms: u64 = query.trim_start_matches("ms=").parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        text(StatusCode::OK, "slow done".to_owned())
    } else {
        let mut lines = format!("{} {}\n", req.method(), req.uri());
        for (name, value) in req.headers() {
            lines.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
        }
        text(StatusCode::OK, lines)
    };
    response
        .headers_mut()
        .insert("x-backend-version", version.parse().unwrap());
    response
        .headers_mut()
        .insert("connection", "keep-alive".parse().unwrap());
    Ok(response)
}

/// A plain HTTP backend (HTTP/1.1 and h2c) on loopback.
pub async fn start_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service_fn(backend_service))
                    .await;
            });
        }
    });
    addr
}

/// A TLS backend (ALPN h2 and http/1.1) with a certificate for `localhost`.
pub async fn start_tls_backend(pki: &Pki) -> SocketAddr {
    let mut config = tls_server_config(pki);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service_fn(backend_service))
                    .await;
            });
        }
    });
    addr
}

/// A backend that writes exact bytes: for each request head it reads (no body),
/// the bytes `answer` gives for the request line and the request's number on its
/// connection (0 for the first), on the same connection, which it keeps open for
/// more; an empty answer closes the connection unanswered. It records each
/// request line with the number of the connection it came on (0, 1, ...), so a
/// test can tell whether a connection was used again. Over TLS (ALPN `http/1.1`
/// only) when `pki` is given.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub requests: Arc<std::sync::Mutex<Vec<(usize, String)>>>,
}

impl RawBackend {
    pub async fn start(pki: Option<&Pki>, answer: fn(&str, usize) -> &'static [u8]) -> Self {
        let acceptor = pki.map(|pki| {
            let mut config = tls_server_config(pki);
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        tokio::spawn(async move {
            for connection in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = Arc::clone(&seen);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                raw_answers(stream, connection, &seen, answer).await;
                            }
                        }
                        None => raw_answers(stream, connection, &seen, answer).await,
                    }
                });
            }
        });
        Self { addr, requests }
    }

    /// The connection each request line came on, in order.
    pub fn requests(&self) -> Vec<(usize, String)> {
        self.requests.lock().unwrap().clone()
    }
}

async fn raw_answers<S>(
    mut stream: S,
    connection: usize,
    seen: &std::sync::Mutex<Vec<(usize, String)>>,
    answer: fn(&str, usize) -> &'static [u8],
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut served = 0;
    loop {
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 4);
            let line = head.lines().next().unwrap_or("").to_owned();
            let bytes = answer(&line, served);
            served += 1;
            seen.lock().unwrap().push((connection, line));
            if bytes.is_empty() || stream.write_all(bytes).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A server configuration with a certificate for `localhost`.
fn tls_server_config(pki: &Pki) -> rustls::ServerConfig {
    let files = pki.leaf("backend", &["localhost"]);
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&files.cert_chain_pem)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.key_pem).unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap()
}

/// A loopback address where nothing listens.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

pub fn api(name: &str, host: Option<&str>, prefix: &str, backend: &str) -> ApiSettings {
    ApiSettings {
        name: name.to_owned(),
        host: host.map(str::to_owned),
        path_prefix: prefix.to_owned(),
        // Both listeners of `start_gateway_with` are configured as 127.0.0.1:0.
        listeners: vec!["127.0.0.1:0".parse().unwrap()],
        backend: backend.parse().unwrap(),
        backend_protocol: Default::default(),
        timeouts: BackendTimeouts::default(),
    }
}

/// A running gateway with a TLS and a plain listener.
pub struct Running {
    pub tls: SocketAddr,
    pub plain: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    pub stats: Arc<rampart::gateway::GatewayStats>,
    pub certificates: rampart::gateway::CertReloader,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn tls_settings(default_cert: CertFiles, sni_certs: Vec<SniCert>) -> TlsSettings {
    TlsSettings {
        default_cert,
        sni_certs,
        client_auth: rampart::gateway::ClientAuth::None,
    }
}

pub async fn start_gateway_with(
    tls: TlsSettings,
    settings: GatewaySettings,
    policy: Option<Arc<dyn rampart::gateway::RequestPolicy>>,
) -> Running {
    let listeners = [
        ListenerSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            transport: Transport::Tls(tls),
        },
        ListenerSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            transport: Transport::PlainHttp,
        },
    ];
    let mut gateway = Gateway::bind(&listeners, settings).await.unwrap();
    if let Some(policy) = policy {
        gateway = gateway.with_policy(policy);
    }
    let addrs = gateway.local_addrs();
    let stats = gateway.stats();
    let certificates = gateway.certificates();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.serve(shutdown.clone()));
    Running {
        tls: addrs[0],
        plain: addrs[1],
        shutdown,
        task,
        stats,
        certificates,
    }
}

pub fn settings(apis: Vec<ApiSettings>, limits: Limits) -> GatewaySettings {
    GatewaySettings {
        apis,
        limits,
        trusted_proxies: Vec::new(),
        backend_ca_pem: Vec::new(),
        access_log: rampart::gateway::AccessLog::All,
        backend_auth: Default::default(),
    }
}

pub type TestClient<B> = Client<hyper_rustls::HttpsConnector<HttpConnector>, B>;

/// A hyper + rustls client trusting the test CA; `h2` picks HTTP/2 by ALPN.
pub fn client<B>(pki: &Pki, h2: bool) -> TestClient<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(pki.client_config(&[]))
        .https_or_http();
    let connector = if h2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build(connector)
}

pub async fn get(client: &TestClient<Empty<Bytes>>, url: &str) -> (http::response::Parts, String) {
    send(client, Request::get(url).body(Empty::new()).unwrap()).await
}

pub async fn send<B>(client: &TestClient<B>, request: Request<B>) -> (http::response::Parts, String)
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts, String::from_utf8_lossy(&body).into_owned())
}

/// Parses a gateway error body and checks its shape.
/// Sends a POST head to `path` declaring `total` body bytes, then the body in 64 KiB
/// chunks (more than the socket buffers hold, for totals of megabytes), as a client
/// uploading a file does; the error of the first write that fails, if one does.
pub async fn upload<W>(stream: &mut W, path: &str, total: usize) -> Option<std::io::Error>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {total}\r\n\r\n");
    if let Err(error) = stream.write_all(head.as_bytes()).await {
        return Some(error);
    }
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..total.div_ceil(chunk.len()) {
        if let Err(error) = stream.write_all(&chunk).await {
            return Some(error);
        }
    }
    None
}

/// A write refused because the peer closed the connection: the kernel's reset.
pub fn assert_reset(error: &std::io::Error) {
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{error}"
    );
}

pub fn assert_apim_error(parts: &http::response::Parts, body: &str, status: u16, message: &str) {
    assert_eq!(parts.status.as_u16(), status, "body: {body}");
    assert_eq!(parts.headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["statusCode"], status);
    assert_eq!(json["message"], message);
}

/// A running `rampartd` (this package's binary) on a TLS or plain listener at `port`;
/// killed on drop, so a failed test leaves no process behind.
pub struct Rampartd {
    pub child: std::process::Child,
    /// Its stderr (the log).
    pub log: PathBuf,
    pub port: u16,
}

impl Rampartd {
    /// Writes `text` to `config`, starts rampartd on it with stderr to `log`, and
    /// waits (at most 20 s) until `port` accepts connections.
    pub async fn start(config: &std::path::Path, text: &str, log: PathBuf, port: u16) -> Self {
        Self::start_with(config, text, log, port, |_| {}).await
    }

    /// [`Rampartd::start`], with `configure` applied to the command first (limits
    /// set before exec, say).
    pub async fn start_with(
        config: &std::path::Path,
        text: &str,
        log: PathBuf,
        port: u16,
        configure: impl FnOnce(&mut std::process::Command),
    ) -> Self {
        write_private(config, text);
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rampartd"));
        command
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(&log).unwrap());
        configure(&mut command);
        let child = command.spawn().unwrap();
        let mut daemon = Self { child, log, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!(
                    "rampartd exited with {status}:\n{}\nconfiguration:\n{text}",
                    daemon.log()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return daemon;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "rampartd did not listen on {port}:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A line of its /proc/PID/status, such as `VmRSS` (the number, in kB).
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in\n{status}"))
    }

    /// Its open file descriptors now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// `https://localhost:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// SIGTERM, then waits (at most 40 s) for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        let pid = i32::try_from(self.child.id()).unwrap();
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "rampartd did not stop after SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the daemon.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// How many lines of the log contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits (at most 30 s) until more than `seen` lines of the log contain `needle`.
    pub async fn wait_for_log(&self, needle: &str, seen: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.log_count(needle) <= seen {
            assert!(
                std::time::Instant::now() < deadline,
                "no new {needle:?} in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Rampartd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now, for a rampartd to listen on.
///
/// It is below the kernel's ephemeral range, so that nothing else takes it between
/// this check and rampartd's bind: a `bind(:0)` (another test's backend) and the
/// local port of an outgoing connection both come from that range. When one did
/// take it, the readiness check (a connection to the port) found that other
/// listener, and a TLS client got plain HTTP back. Each port is handed out once per
/// test binary, from a start that differs between processes.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    const LOWEST: u64 = 10_000;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOWEST);
    assert!(
        span >= 1_000,
        "ephemeral ports start at {ephemeral}: no room below"
    );
    let _ = NEXT.compare_exchange(
        0,
        u64::from(std::process::id()) * 7919 % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = LOWEST + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = u16::try_from(port).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOWEST} and {ephemeral}");
}
