//! The gateway: TLS-terminating reverse proxy in front of the APIs.
//!
//! [`Gateway::bind`] checks the settings, loads the certificates and binds the
//! listeners; [`Gateway::serve`] then accepts connections until shutdown is asked
//! for, and drains in-flight requests before it returns. Each connection speaks
//! HTTP/1.1 or HTTP/2 (hyper's auto builder); each request is routed by host and
//! longest path prefix, passed through the [`RequestPolicy`] chain and forwarded
//! with its body streamed both ways.

mod error;
mod forwarded;
mod handler;
mod policy;
mod proxy;
mod routing;
mod server;
mod settings;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::policy::backend_auth::Credential;

pub use error::{GatewayError, Rejection};
pub use forwarded::{ClientHop, client_ip, remove_hop_by_hop, set_forwarding_headers};
pub use policy::{RequestContext, RequestPolicy, ResponseContext, Stop, Subscriber, Transferred};
pub use routing::RouteTable;
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
    /// Requests hyper refused as malformed (answered 400, or 431 for a huge head).
    pub malformed_requests: AtomicU64,
    /// Connections closed because a request head or TLS handshake was too slow.
    pub header_timeouts: AtomicU64,
    /// Requests that reached routing.
    pub requests: AtomicU64,
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
}

/// A gateway with its listeners bound, ready to serve.
pub struct Gateway {
    listeners: Vec<server::BoundListener>,
    routes: RouteTable<proxy::Backend>,
    settings: GatewaySettings,
    policies: Vec<Arc<dyn RequestPolicy>>,
    stats: Arc<GatewayStats>,
    certificates: CertReloader,
    /// `backend_auth` tokens kept current by background tasks while serving.
    credentials: Vec<(String, Arc<Credential>)>,
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
        let roots = proxy::backend_roots(&settings.backend_ca_pem)?;
        let backend_tls = proxy::client_config(roots.clone(), None)?;
        if let Some(api) = (settings.backend_auth.keys())
            .find(|name| !settings.apis.iter().any(|api| &api.name == *name))
        {
            return Err(GatewayError::BackendAuthUnknownApi { api: api.clone() });
        }
        let mut backends = Vec::with_capacity(settings.apis.len());
        let mut credentials = Vec::new();
        for api in &settings.apis {
            let failed = |source| GatewayError::BackendAuth {
                api: api.name.clone(),
                source: Box::new(source),
            };
            let (tls, credential) = match settings.backend_auth.get(&api.name) {
                None => (backend_tls.clone(), None),
                Some(BackendAuth::ClientCert { cert, key }) => {
                    let cert =
                        crate::policy::backend_auth::load_client_cert(cert, key).map_err(failed)?;
                    (proxy::client_config(roots.clone(), Some(cert))?, None)
                }
                Some(BackendAuth::BearerTokenFile(path)) => {
                    let credential = Credential::from_file(path).map_err(failed)?;
                    (backend_tls.clone(), Some(Arc::new(credential)))
                }
                Some(BackendAuth::OAuth2(oauth2)) => {
                    let credential = Credential::oauth2(oauth2).map_err(failed)?;
                    (backend_tls.clone(), Some(Arc::new(credential)))
                }
            };
            if let Some(credential) = &credential {
                credentials.push((api.name.clone(), Arc::clone(credential)));
            }
            backends.push((api.clone(), proxy::Backend::new(api, tls, credential)?));
        }
        let routes = RouteTable::new(backends)?;

        let mut bound = Vec::with_capacity(listeners.len());
        let mut reloadable = Vec::new();
        for listener in listeners {
            let mut client_cas = Vec::new();
            let tls = match &listener.transport {
                Transport::Tls(tls) => {
                    let resolver = Arc::new(CertResolver::load(tls)?);
                    reloadable.push((tls.clone(), Arc::clone(&resolver)));
                    let clients = tls::client_verification(&tls.client_auth)?;
                    let config = tls::server_config(resolver, clients.as_ref())?;
                    if let Some(clients) = clients {
                        client_cas = clients.cas;
                    }
                    Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
                }
                Transport::PlainHttp => None,
            };
            let socket =
                TcpListener::bind(listener.addr)
                    .await
                    .map_err(|source| GatewayError::Bind {
                        addr: listener.addr,
                        source,
                    })?;
            bound.push(server::BoundListener::new(
                listener.addr,
                socket,
                tls,
                client_cas,
            )?);
        }
        Ok(Self {
            listeners: bound,
            routes,
            settings,
            policies: Vec::new(),
            stats: Arc::default(),
            certificates: CertReloader {
                listeners: Arc::new(reloadable),
            },
            credentials,
        })
    }

    /// Adds a policy; policies run in the order they were added.
    #[must_use]
    pub fn with_policy(mut self, policy: Arc<dyn RequestPolicy>) -> Self {
        self.policies.push(policy);
        self
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.local_addr).collect()
    }

    /// A handle that reloads the certificates of every TLS listener (SIGHUP).
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
        // Token files are watched and OAuth2 tokens fetched (and refreshed) while
        // serving; until a first OAuth2 token arrives its API answers 503.
        for (api, credential) in self.credentials {
            tokio::spawn(credential.maintain(api, shutdown.clone()));
        }
        let shared = Arc::new(handler::Shared {
            routes: self.routes,
            limits: self.settings.limits,
            trusted_proxies: self.settings.trusted_proxies,
            access_log: self.settings.access_log,
            policies: self.policies,
            stats: self.stats,
        });
        server::serve(self.listeners, shared, shutdown).await;
    }
}

/// Reloads the certificates of all TLS listeners at once.
#[derive(Clone)]
pub struct CertReloader {
    listeners: Arc<Vec<(TlsSettings, Arc<CertResolver>)>>,
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
    pub fn reload(&self) -> Result<(), GatewayError> {
        let prepared = self
            .listeners
            .iter()
            .map(|(settings, _)| tls::PreparedCerts::load(settings))
            .collect::<Result<Vec<_>, _>>()?;
        for ((_, resolver), certs) in self.listeners.iter().zip(prepared) {
            resolver.install(certs);
        }
        Ok(())
    }
}
