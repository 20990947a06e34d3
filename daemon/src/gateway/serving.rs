//! A gateway while it serves: reloads in two steps, [`ServingGateway::prepare`]
//! (everything built, new addresses bound; any problem and nothing changes) then
//! [`ServingGateway::apply`] (one atomic swap, infallible).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::backends::{self, BackendEntry};
use super::error::GatewayError;
use super::handler::Shared;
use super::proxy::Backend;
use super::routing::RouteTable;
use super::server::{self, BoundListener, Server};
use super::settings::{GatewaySettings, ListenerSettings};
use super::tls::ListenerTls;
use super::{Gateway, GatewayStats, RejectionSink, RequestPolicy};

/// A running gateway: its listeners accept, its current generation serves.
pub struct ServingGateway {
    server: Arc<Server>,
    backends: Vec<BackendEntry>,
    shutdown: CancellationToken,
    /// The task that waits for the listeners to drain; taken by `stopped`.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ServingGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingGateway")
            .field("listeners", &self.local_addrs())
            .field("apis", &self.backends.len())
            .finish_non_exhaustive()
    }
}

/// A reload ready to apply: new listeners bound, certificates loaded, backends
/// and routes built. Dropping it changes nothing (the new sockets close).
pub struct PreparedGateway {
    added: Vec<BoundListener>,
    /// Listeners kept, with their (re-read) TLS configuration.
    kept: Vec<(ListenerSettings, Option<Arc<ListenerTls>>)>,
    removed: Vec<SocketAddr>,
    backends: Vec<BackendEntry>,
    routes: Arc<RouteTable<Backend>>,
    settings: GatewaySettings,
}

impl std::fmt::Debug for PreparedGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedGateway")
            .field(
                "added",
                &self.added.iter().map(|l| l.local_addr).collect::<Vec<_>>(),
            )
            .field("kept", &self.kept.len())
            .field("removed", &self.removed)
            .field("apis", &self.backends.len())
            .finish_non_exhaustive()
    }
}

impl PreparedGateway {
    /// Backends of this reload that are the running ones (same API settings).
    pub fn backends_kept(&self, serving: &ServingGateway) -> usize {
        self.backends
            .iter()
            .filter(|new| {
                serving
                    .backends
                    .iter()
                    .any(|old| Arc::ptr_eq(&old.backend, &new.backend))
            })
            .count()
    }
}

/// What an applied reload changed in the listeners.
#[derive(Debug)]
pub struct AppliedGateway {
    /// Bound addresses of the listeners added.
    pub added: Vec<SocketAddr>,
    /// Configured addresses of the listeners removed (their connections drain).
    pub removed: Vec<SocketAddr>,
    closing: Vec<oneshot::Receiver<()>>,
}

impl AppliedGateway {
    /// Resolves once the sockets of the removed listeners are closed (new
    /// connections to them are refused from then on).
    pub async fn closed(self) {
        for closing in self.closing {
            let _ = closing.await;
        }
    }
}

/// A handle on a serving gateway: changes the current generation's policies or
/// rejection sink (keeping the rest), reads its listeners and counters.
#[derive(Clone)]
pub struct GatewayHandle {
    server: Arc<Server>,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle").finish_non_exhaustive()
    }
}

impl GatewayHandle {
    /// The next requests run `policies`; requests in flight finish with theirs.
    pub fn set_policies(&self, policies: Vec<Arc<dyn RequestPolicy>>) {
        self.server.publish(|current| Shared {
            policies,
            ..current.clone()
        });
    }

    /// The addresses bound now.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.server
            .listeners()
            .iter()
            .map(|l| l.local_addr)
            .collect()
    }

    pub fn stats(&self) -> Arc<GatewayStats> {
        Arc::clone(&self.server.current().stats)
    }

    /// The next rejections go to `sink` (`None`: nowhere).
    pub fn set_rejection_sink(&self, sink: Option<Arc<dyn RejectionSink>>) {
        self.server.publish(|current| Shared {
            rejections: sink,
            ..current.clone()
        });
    }
}

/// What the gateway builds from its settings before anything is bound: each
/// listener's TLS configuration (certificates, keys, client CAs and CRLs loaded),
/// the backends (keeping those of `previous` that serve an unchanged API) and the
/// route table. Start ([`Gateway::bind_reporting_all`]), reload
/// ([`ServingGateway::prepare`]) and `rampartd --check-config` ([`Gateway::check`])
/// all build through here, so what the check accepts is what they build. Every
/// problem is reported (never an empty list).
pub(crate) struct Unbound {
    /// One per listener, in order; `None` for plain HTTP.
    pub(crate) tls: Vec<Option<Arc<ListenerTls>>>,
    pub(crate) backends: Vec<BackendEntry>,
    pub(crate) routes: RouteTable<Backend>,
}

pub(crate) fn build_unbound(
    listeners: &[ListenerSettings],
    settings: &GatewaySettings,
    previous: &[BackendEntry],
    metrics: &super::metrics::HttpMetrics,
) -> Result<Unbound, Vec<GatewayError>> {
    let mut errors = Vec::new();
    let mut tls = Vec::with_capacity(listeners.len());
    let mut failed = Vec::new();
    for listener in listeners {
        match server::listener_tls(listener) {
            Ok(loaded) => tls.push(loaded),
            Err(e) => failed.push((listener.addr, e)),
        }
    }
    errors.extend(listener_errors(failed));
    let backends = backends::build(settings, previous, metrics)
        .map_err(|e| errors.extend(e))
        .unwrap_or_default();
    let routes = route_table(&backends).map_err(|e| errors.push(e));
    match routes {
        Ok(routes) if errors.is_empty() => Ok(Unbound {
            tls,
            backends,
            routes,
        }),
        _ => Err(errors),
    }
}

/// One error per problem, naming the listeners it stops: listeners sharing a bad
/// file get one error naming them all. The same problem says the same thing (each
/// names its file), so its text tells it apart.
pub(crate) fn listener_errors(
    failed: impl IntoIterator<Item = (SocketAddr, GatewayError)>,
) -> Vec<GatewayError> {
    let mut grouped: Vec<(String, Vec<SocketAddr>, GatewayError)> = Vec::new();
    for (addr, e) in failed {
        let text = crate::service::chain(&e);
        match grouped.iter_mut().find(|(seen, _, _)| *seen == text) {
            Some((_, addrs, _)) => addrs.push(addr),
            None => grouped.push((text, vec![addr], e)),
        }
    }
    grouped
        .into_iter()
        .map(|(_, addrs, source)| GatewayError::Listener {
            addrs,
            source: Box::new(source),
        })
        .collect()
}

pub(crate) fn route_table(backends: &[BackendEntry]) -> Result<RouteTable<Backend>, GatewayError> {
    RouteTable::from_shared(
        backends
            .iter()
            .map(|entry| (entry.api().clone(), Arc::clone(&entry.backend))),
    )
}

/// A generation made of `settings`, keeping what `current` has that a reload does
/// not change (counters, rejection sink, and the HTTP settings when the limits
/// are the same).
fn generation(
    routes: Arc<RouteTable<Backend>>,
    settings: &GatewaySettings,
    policies: Vec<Arc<dyn RequestPolicy>>,
    current: Option<&Shared>,
    stats: Arc<GatewayStats>,
    rejections: Option<Arc<dyn RejectionSink>>,
) -> Shared {
    let http = match current {
        Some(current) if current.limits == settings.limits => Arc::clone(&current.http),
        _ => Arc::new(server::http_builder(&settings.limits)),
    };
    // Requests in flight keep their permits across a reload; the server resizes it.
    let backend_requests = match current {
        Some(current) => Arc::clone(&current.backend_requests),
        None => Arc::new(tokio::sync::Semaphore::new(
            settings.limits.max_backend_requests.max(1),
        )),
    };
    Shared {
        routes,
        limits: settings.limits,
        trusted_proxies: settings.trusted_proxies.clone(),
        access_log: settings.access_log,
        policies,
        stats,
        rejections,
        http,
        backend_requests,
    }
}

impl ServingGateway {
    pub(crate) fn start(gateway: Gateway, shutdown: CancellationToken) -> Self {
        let Gateway {
            listeners,
            mut backends,
            routes,
            settings,
            policies,
            rejections,
            stats,
            certificates: _,
        } = gateway;
        let shared = generation(routes, &settings, policies, None, stats, rejections);
        let server = Server::new(shared, shutdown.clone());
        // Token files are watched and OAuth2 tokens fetched (and refreshed) while
        // serving; until a first OAuth2 token arrives its API answers 503.
        backends::start_upkeep(&mut backends, &shutdown);
        for listener in listeners {
            server.add_listener(listener);
        }
        let task = tokio::spawn(Arc::clone(&server).run());
        Self {
            server,
            backends,
            shutdown,
            task: Some(task),
        }
    }

    /// The addresses bound now (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.server
            .listeners()
            .iter()
            .map(|l| l.local_addr)
            .collect()
    }

    /// The listeners as configured, each with the address it is bound to.
    pub fn listeners(&self) -> Vec<(ListenerSettings, SocketAddr)> {
        self.server
            .listeners()
            .into_iter()
            .map(|l| (l.settings, l.local_addr))
            .collect()
    }

    pub fn stats(&self) -> Arc<GatewayStats> {
        Arc::clone(&self.server.current().stats)
    }

    /// A handle that changes the policies or the rejection sink of the current
    /// generation, and reads the listeners and counters.
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            server: Arc::clone(&self.server),
        }
    }

    /// Builds everything `listeners` and `settings` ask for, next to what serves
    /// now: new addresses are bound first, kept listeners' certificates re-read,
    /// backends of unchanged APIs kept. Every problem is reported (never an empty
    /// list); nothing running changes either way.
    pub async fn prepare(
        &self,
        listeners: &[ListenerSettings],
        settings: GatewaySettings,
    ) -> Result<PreparedGateway, Vec<GatewayError>> {
        let mut errors = Vec::new();
        let running = self.server.listeners();
        let is_running = |addr: SocketAddr| running.iter().any(|l| l.settings.addr == addr);
        let mut sockets = Vec::new();
        for listener in listeners.iter().filter(|l| !is_running(l.addr)) {
            match server::bind_socket(listener.addr).await {
                Ok(socket) => sockets.push((listener.addr, socket)),
                Err(e) => errors.push(e),
            }
        }
        let unbound = build_unbound(listeners, &settings, &self.backends, &self.stats().http)
            .map_err(|e| errors.extend(e));
        let Ok(Unbound {
            tls,
            backends,
            routes,
        }) = unbound
        else {
            return Err(errors);
        };
        let mut added = Vec::new();
        let mut kept = Vec::new();
        for (listener, tls) in listeners.iter().zip(tls) {
            if is_running(listener.addr) {
                kept.push((listener.clone(), tls));
                continue;
            }
            let Some(index) = sockets.iter().position(|(addr, _)| *addr == listener.addr) else {
                continue;
            };
            let (_, socket) = sockets.swap_remove(index);
            match BoundListener::new(listener.clone(), socket, tls) {
                Ok(listener) => added.push(listener),
                Err(e) => errors.push(e),
            }
        }
        let removed = running
            .iter()
            .map(|l| l.settings.addr)
            .filter(|addr| !listeners.iter().any(|l| l.addr == *addr))
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(PreparedGateway {
            added,
            kept,
            removed,
            backends,
            routes: Arc::new(routes),
            settings,
        })
    }

    /// Installs `prepared` with `policies` in one step: requests that arrive from
    /// now on use the new routes, backends, settings and policies; requests in
    /// flight finish with the old ones. New listeners start accepting, kept ones
    /// use their new TLS configuration for new connections, removed ones stop
    /// accepting and drain their connections.
    pub fn apply(
        &mut self,
        prepared: PreparedGateway,
        policies: Vec<Arc<dyn RequestPolicy>>,
    ) -> AppliedGateway {
        let PreparedGateway {
            added,
            kept,
            removed,
            mut backends,
            routes,
            settings,
        } = prepared;
        self.server.publish(|current| {
            generation(
                routes,
                &settings,
                policies,
                Some(current),
                Arc::clone(&current.stats),
                current.rejections.clone(),
            )
        });
        backends::start_upkeep(&mut backends, &self.shutdown);
        backends::stop_unused_upkeep(&self.backends, &backends);
        self.backends = backends;
        for (settings, tls) in kept {
            self.server.update_listener(settings, tls);
        }
        let added_addrs = added.iter().map(|l| l.local_addr).collect();
        for listener in added {
            self.server.add_listener(listener);
        }
        let closing = removed
            .iter()
            .filter_map(|addr| self.server.remove_listener(*addr))
            .collect();
        AppliedGateway {
            added: added_addrs,
            removed,
            closing,
        }
    }

    /// Waits until the gateway has stopped: shutdown was asked for and every
    /// listener has drained.
    pub async fn stopped(&mut self) -> Result<(), tokio::task::JoinError> {
        match self.task.take() {
            Some(task) => task.await,
            None => Ok(()),
        }
    }
}
