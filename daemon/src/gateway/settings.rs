//! Typed settings of the gateway, independent of the TOML configuration: the
//! configuration module validates its file and builds these.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

pub use crate::policy::backend_auth::{BackendAuth, OAuth2Settings};

/// One address the gateway accepts connections on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    pub addr: SocketAddr,
    /// What the listener speaks: TLS, or plain HTTP only when asked for explicitly.
    pub transport: Transport,
}

/// A listener's transport. There is no default: plain HTTP must be chosen by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tls(TlsSettings),
    PlainHttp,
}

/// Certificates of a TLS listener (PEM files, read at start and at each reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Served to clients that send no SNI or a name no other certificate covers.
    pub default_cert: CertFiles,
    /// Further certificates chosen by the SNI host name (exact, case-insensitive).
    pub sni_certs: Vec<SniCert>,
    /// Client certificates (mTLS).
    pub client_auth: ClientAuth,
}

/// Whether clients present certificates, checked against a CA bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for; without one the handshake still succeeds (APIs
    /// that need one answer 403), a certificate that does not verify fails it.
    Optional(ClientCa),
    /// The handshake fails without a certificate that verifies.
    Required(ClientCa),
}

/// The CAs client certificates must chain to, and revocation lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCa {
    /// PEM bundle of trusted CA certificates.
    pub ca_pem: PathBuf,
    /// PEM or DER CRL files; a revoked certificate fails the handshake.
    pub crls: Vec<PathBuf>,
}

/// A certificate chain and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert_chain_pem: PathBuf,
    pub key_pem: PathBuf,
}

/// A certificate served for one SNI host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    pub hostname: String,
    pub files: CertFiles,
}

/// One proxied API: requests whose host (if set) and path prefix match go to `backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    pub name: String,
    /// Matched against the request's host (without port), case-insensitively.
    pub host: Option<String>,
    /// Matched on whole path segments: `/orders` matches `/orders` and `/orders/1`,
    /// not `/ordersx`. `/` matches everything.
    pub path_prefix: String,
    /// The listeners (their configured addresses) whose connections may reach the API.
    pub listeners: Vec<SocketAddr>,
    /// `http://` or `https://` base URL; its path is prepended to the remaining path.
    pub backend: Url,
    pub backend_protocol: BackendProtocol,
    pub timeouts: BackendTimeouts,
}

/// The HTTP version spoken to a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackendProtocol {
    /// HTTP/1.1 to `http://`; over `https://`, HTTP/2 when the backend offers it (ALPN).
    #[default]
    Auto,
    /// HTTP/2 only: prior knowledge (h2c) to `http://`, ALPN `h2` to `https://`.
    Http2,
}

/// Timeouts towards one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendTimeouts {
    /// Connect, the TLS handshake to an https backend included (a refused or
    /// timed-out connect gives 502).
    pub connect: Duration,
    /// From sending the request to receiving the response head (504 when exceeded).
    pub response_header: Duration,
    /// How long an unused pooled upstream connection is kept.
    pub pool_idle: Duration,
}

impl Default for BackendTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(30),
            pool_idle: Duration::from_secs(90),
        }
    }
}

/// Limits that protect the gateway from clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers; larger requests get 431.
    pub max_header_bytes: usize,
    /// Request body; larger bodies get 413, by `Content-Length` or while streaming.
    pub max_body_bytes: u64,
    /// Concurrent client connections over all listeners; further ones wait in the
    /// kernel backlog until a slot frees.
    pub max_connections: usize,
    /// Concurrent client connections from one address (the TCP peer); one more is
    /// closed at accept. 0: no cap. Trusted proxies are not capped.
    pub max_connections_per_source: usize,
    /// The prefix an IPv6 source is counted by for `max_connections_per_source`
    /// (`[gateway] ipv6_client_prefix`; 128: per address).
    pub ipv6_client_prefix: u8,
    /// Requests in flight to backends, over all APIs (each holds a backend
    /// connection, a file descriptor); one more gets 503 without a connection.
    pub max_backend_requests: usize,
    /// Requests in flight to backends from one source (counted as
    /// `max_connections_per_source` counts); one more gets 503. 0: no cap.
    /// Trusted proxies are not capped.
    pub max_backend_requests_per_source: usize,
    /// Time allowed for the TLS handshake and for each request head (slowloris).
    pub header_read_timeout: Duration,
    /// A connection with nothing going on for this long is closed: over HTTP/1 no
    /// request waiting for its response head and no byte moving; over HTTP/2 no
    /// request waiting, none started and no response body moving (control frames
    /// such as PING do not count).
    pub idle_timeout: Duration,
    /// From a request's head to its response's head (reading and checking the
    /// body, forwarding, the backend's answer): 504 past it.
    pub request_timeout: Duration,
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// How long in-flight requests may run after shutdown was asked for.
    pub drain_timeout: Duration,
    /// Request paths with `%2F`, `%5C` or `\` are forwarded as they are instead of
    /// refused with 400 (see `gateway::path`).
    pub allow_encoded_slashes: bool,
    /// After the gateway ends a connection, the longest wait for the client's next
    /// bytes, which are read and dropped so that its socket closes without a reset
    /// (see `gateway::lingering`); zero turns lingering off.
    pub lingering_timeout: Duration,
    /// The longest lingering after a connection ends.
    pub lingering_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_body_bytes: 100 * 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_source: 256,
            ipv6_client_prefix: 64,
            max_backend_requests: 10_000,
            max_backend_requests_per_source: 2_500,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(300),
            max_concurrent_streams: 100,
            drain_timeout: Duration::from_secs(30),
            allow_encoded_slashes: false,
            lingering_timeout: Duration::from_secs(5),
            lingering_time: Duration::from_secs(30),
        }
    }
}

/// Which requests get an access event (`rampart::access`, level info).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccessLog {
    /// Every request.
    #[default]
    All,
    /// Requests answered with a status of 400 or more.
    Errors,
    /// None (counters still count).
    Off,
}

/// Everything the gateway needs besides its listeners.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub apis: Vec<ApiSettings>,
    pub limits: Limits,
    pub access_log: AccessLog,
    /// Peers whose `X-Forwarded-*` and `Forwarded` headers are kept; from any
    /// other peer they are replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// Extra CA certificates (PEM) trusted for `https://` backends, besides the
    /// Mozilla roots.
    pub backend_ca_pem: Vec<PathBuf>,
    /// `backend_auth` by API name: a client certificate for the backend, or the
    /// bearer token set on the requests forwarded to it.
    pub backend_auth: std::collections::HashMap<String, BackendAuth>,
}

/// Whether `peer` is one of the configured proxies (IPv4-mapped IPv6 counts as IPv4).
pub(crate) fn is_trusted(nets: &[IpNet], peer: IpAddr) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        IpAddr::V4(_) => peer,
    };
    nets.iter().any(|net| net.contains(&peer))
}
