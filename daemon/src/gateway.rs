//! The gateway: TLS-terminating reverse proxy in front of the APIs.
//!
//! [`Gateway::bind`] checks the settings, loads the certificates and binds the
//! listeners; [`Gateway::serve`] then accepts connections until shutdown is asked
//! for, and drains in-flight requests before it returns. [`Gateway::start`] serves
//! in the background and returns a [`ServingGateway`], which reloads everything
//! while serving (new listeners, routes, backends, settings, policies).
//! [`running`] builds all of it from the daemon's configuration. Each connection speaks
//! HTTP/1.1 or HTTP/2 (hyper's auto builder); each request is routed by host and
//! longest path prefix, passed through the [`RequestPolicy`] chain and forwarded
//! with its body streamed both ways.

mod activity;
mod backends;
pub(crate) mod descriptors;
mod draining;
mod error;
mod forwarded;
mod framing;
mod handler;
mod lingering;
pub mod metrics;
mod panics;
pub(crate) mod path;
mod policy;
mod proxy;
mod routing;
pub mod running;
pub mod security_events;
mod server;
mod serving;
mod settings;
mod sources;
mod tls;
mod watched;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use tokio_util::sync::CancellationToken;

pub use error::{GatewayError, Rejection};
pub use forwarded::{
    ClientHop, client_ip, remove_client_copies, remove_hop_by_hop, set_forwarding_headers,
};
pub(crate) use handler::refused_method;
pub use policy::{RequestContext, RequestPolicy, ResponseContext, Stop, StreamLimit, Transferred};
pub use routing::RouteTable;
pub(crate) use routing::request_host;
pub use serving::{AppliedGateway, GatewayHandle, PreparedGateway, ServingGateway};
pub use settings::{
    AccessLog, ApiSettings, BackendAuth, BackendProtocol, BackendTimeouts, CertFiles, ClientAuth,
    ClientCa, GatewaySettings, Limits, ListenerSettings, OAuth2Settings, SniCert, TlsSettings,
    Transport,
};
pub use tls::{
    CertResolver, ClientVerification, client_tls_config, client_verification, https_client,
};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: a backend's streamed body or a gateway-made one.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Counters of events that never reach a request handler.
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub connections_accepted: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Requests refused as malformed: heads hyper would refuse (400, 414, 431), a
    /// `Transfer-Encoding` other than `chunked` (501), a
    /// missing or repeated `Host`, a path the gateway does not route, a body that
    /// cannot be read (400).
    pub malformed_requests: AtomicU64,
    /// Connections closed because a request head or TLS handshake was too slow.
    pub header_timeouts: AtomicU64,
    /// Requests that reached routing.
    pub requests: AtomicU64,
    /// Requests whose handler panicked (answered 500; the daemon went on).
    pub request_panics: AtomicU64,
    /// Connections closed (accepted minus closed: connections open).
    pub connections_closed: AtomicU64,
    /// Connections closed at accept: their source had `max_connections_per_source`
    /// open already (not counted as accepted).
    pub connections_over_source_limit: AtomicU64,
    /// Responses by API, status and reason, and latency histograms (`/metrics`).
    pub http: metrics::HttpMetrics,
    /// Gateway-made error responses by APIM `LastError` reason.
    rejections: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl GatewayStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_rejection(&self, reason: &'static str) {
        let mut counts = self
            .rejections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry(reason).or_default() += 1;
    }

    /// Gateway-made error responses so far, by reason.
    pub fn rejections(&self) -> Vec<(&'static str, u64)> {
        let counts = self
            .rejections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.iter().map(|(reason, n)| (*reason, *n)).collect()
    }

    /// Every counter now (`rampart stats`).
    pub fn snapshot(&self) -> StatsSnapshot {
        let rejections = self.rejections();
        StatsSnapshot {
            connections_accepted: Self::get(&self.connections_accepted),
            tls_handshake_failures: Self::get(&self.tls_handshake_failures),
            malformed_requests: Self::get(&self.malformed_requests),
            header_timeouts: Self::get(&self.header_timeouts),
            requests: Self::get(&self.requests),
            connections_closed: Self::get(&self.connections_closed),
            connections_over_source_limit: Self::get(&self.connections_over_source_limit),
            request_panics: Self::get(&self.request_panics),
            rejected: rejections.iter().map(|(_, n)| n).sum(),
            rejections,
        }
    }
}

/// The gateway's counters at one moment, since start (reloads keep counting).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections_accepted: u64,
    pub tls_handshake_failures: u64,
    pub malformed_requests: u64,
    pub header_timeouts: u64,
    /// Requests that reached routing.
    pub requests: u64,
    /// Connections closed (accepted minus closed: open now).
    pub connections_closed: u64,
    /// Connections closed at accept because their source had too many open.
    pub connections_over_source_limit: u64,
    /// Requests whose handler panicked (answered 500).
    pub request_panics: u64,
    /// Gateway-made error responses, all reasons.
    pub rejected: u64,
    /// Gateway-made error responses by APIM `LastError` reason, in reason order.
    pub rejections: Vec<(&'static str, u64)>,
}

/// Told about every error response the gateway makes (the rejections counted by
/// reason in [`GatewayStats`]), e.g. to ban sources that collect too many.
///
/// `peer` is the TCP peer, never an address from `X-Forwarded-For`: a ban applies
/// to what the kernel sees. Called on the request's task before the response is
/// sent, so it must not block; requests that pass never call it. When the
/// rejection leads to something the response should wait for (a ban being put
/// into the kernel, so that the client's next connection already meets it), the
/// sink returns a receiver: the response waits for it, at most
/// [`REJECTION_WAIT`].
pub trait RejectionSink: Send + Sync + 'static {
    fn rejected(
        &self,
        peer: IpAddr,
        reason: &'static str,
    ) -> Option<tokio::sync::oneshot::Receiver<()>>;
}

/// The longest a rejection's response waits for what its sink started.
pub const REJECTION_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl<F> RejectionSink for F
where
    F: Fn(IpAddr, &'static str) -> Option<tokio::sync::oneshot::Receiver<()>>
        + Send
        + Sync
        + 'static,
{
    fn rejected(
        &self,
        peer: IpAddr,
        reason: &'static str,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self(peer, reason)
    }
}

/// A gateway with its listeners bound, ready to serve.
pub struct Gateway {
    listeners: Vec<server::BoundListener>,
    backends: Vec<backends::BackendEntry>,
    routes: Arc<RouteTable<proxy::Backend>>,
    settings: GatewaySettings,
    policies: Vec<Arc<dyn RequestPolicy>>,
    rejections: Option<Arc<dyn RejectionSink>>,
    stats: Arc<GatewayStats>,
    certificates: CertReloader,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listeners", &self.local_addrs())
            .field("policies", &self.policies.len())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Checks the API settings, loads every certificate and binds every listener.
    pub async fn bind(
        listeners: &[ListenerSettings],
        settings: GatewaySettings,
    ) -> Result<Self, GatewayError> {
        Self::bind_reporting_all(listeners, settings)
            .await
            .map_err(|mut errors| errors.swap_remove(0))
    }

    /// [`Gateway::bind`], reporting every problem (never an empty list).
    pub async fn bind_reporting_all(
        listeners: &[ListenerSettings],
        settings: GatewaySettings,
    ) -> Result<Self, Vec<GatewayError>> {
        let mut errors = Vec::new();
        let stats = Arc::<GatewayStats>::default();
        let unbound = serving::build_unbound(listeners, &settings, &[], &stats.http)
            .map_err(|e| errors.extend(e));
        let mut sockets = Vec::with_capacity(listeners.len());
        for listener in listeners {
            match server::bind_socket(listener.addr).await {
                Ok(socket) => sockets.push(socket),
                Err(e) => errors.push(e),
            }
        }
        let Ok(serving::Unbound {
            tls,
            backends,
            routes,
        }) = unbound
        else {
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut bound = Vec::with_capacity(listeners.len());
        for ((listener, socket), tls) in listeners.iter().zip(sockets).zip(tls) {
            match server::BoundListener::new(listener.clone(), socket, tls) {
                Ok(listener) => bound.push(listener),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let certificates = CertReloader {
            listeners: Arc::new(
                bound
                    .iter()
                    .filter_map(|l| Some((l.settings.addr, l.tls.clone()?)))
                    .collect(),
            ),
        };
        Ok(Self {
            listeners: bound,
            backends,
            routes: Arc::new(routes),
            settings,
            policies: Vec::new(),
            rejections: None,
            stats,
            certificates,
        })
    }

    /// Builds what [`Gateway::bind_reporting_all`] builds, binding nothing: the
    /// listeners' TLS configurations, the backends and the route table (two APIs
    /// with the same host and prefix, a bad certificate...). For
    /// `rampartd --check-config`. Every problem is reported (never an empty list).
    pub fn check(
        listeners: &[ListenerSettings],
        settings: &GatewaySettings,
    ) -> Result<(), Vec<GatewayError>> {
        serving::build_unbound(listeners, settings, &[], &metrics::HttpMetrics::default()).map(drop)
    }

    /// Adds a policy; policies run in the order they were added.
    #[must_use]
    pub fn with_policy(mut self, policy: Arc<dyn RequestPolicy>) -> Self {
        self.policies.push(policy);
        self
    }

    /// Tells `sink` about every gateway-made rejection (see [`RejectionSink`]).
    #[must_use]
    pub fn with_rejection_sink(mut self, sink: Arc<dyn RejectionSink>) -> Self {
        self.rejections = Some(sink);
        self
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.local_addr).collect()
    }

    /// A handle that reloads the certificates of every TLS listener bound here.
    pub fn certificates(&self) -> CertReloader {
        self.certificates.clone()
    }

    pub fn stats(&self) -> Arc<GatewayStats> {
        Arc::clone(&self.stats)
    }

    /// Binds, serves until `shutdown` is cancelled and drains: [`Gateway::bind`],
    /// [`Gateway::with_policy`] for each policy, then [`Gateway::serve`].
    pub async fn run(
        listeners: &[ListenerSettings],
        settings: GatewaySettings,
        policies: Vec<Arc<dyn RequestPolicy>>,
        shutdown: CancellationToken,
    ) -> Result<(), GatewayError> {
        let mut gateway = Self::bind(listeners, settings).await?;
        gateway.policies.extend(policies);
        gateway.serve(shutdown).await;
        Ok(())
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight
    /// requests finish for at most `limits.drain_timeout`, and returns.
    pub async fn serve(self, shutdown: CancellationToken) {
        let mut serving = self.start(shutdown);
        if let Err(error) = serving.stopped().await {
            tracing::error!(%error, "gateway task failed");
        }
    }

    /// Starts serving in the background (on the current Tokio runtime) until
    /// `shutdown` is cancelled; the handle reloads the gateway while it serves.
    pub fn start(self, shutdown: CancellationToken) -> ServingGateway {
        ServingGateway::start(self, shutdown)
    }
}

/// Reloads the certificates of the TLS listeners a [`Gateway`] was bound with.
#[derive(Clone)]
pub struct CertReloader {
    /// Each TLS listener's configured address and TLS configuration.
    listeners: Arc<Vec<(SocketAddr, Arc<tls::ListenerTls>)>>,
}

impl std::fmt::Debug for CertReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertReloader")
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl CertReloader {
    /// Re-reads every certificate file. All of them must load, or nothing changes.
    /// New connections get the new certificates; established ones keep theirs.
    /// Every problem is reported (never an empty list), one per problem naming
    /// the listeners it stops, as start reports them.
    pub fn reload(&self) -> Result<(), Vec<GatewayError>> {
        let mut prepared = Vec::with_capacity(self.listeners.len());
        let mut failed = Vec::new();
        for (addr, listener) in self.listeners.iter() {
            match tls::PreparedCerts::load(&listener.settings) {
                Ok(certs) => prepared.push(certs),
                Err(e) => failed.push((*addr, e)),
            }
        }
        if !failed.is_empty() {
            return Err(serving::listener_errors(failed));
        }
        for ((_, listener), certs) in self.listeners.iter().zip(prepared) {
            listener.resolver.install(certs);
        }
        Ok(())
    }
}
