//! Listeners and connections: accept, TLS handshake, HTTP/1.1 + HTTP/2, graceful
//! shutdown; listeners added, changed and removed while serving (reload).
//!
//! Each request is served with the generation ([`Shared`]) current when it
//! arrives: one `ArcSwap` load per request. A connection takes its connection-level
//! settings (TLS configuration, HTTP builder, timeouts) when it is accepted.
//! Each listener runs in its own task: removing it stops its accepts (the socket is
//! closed at once) and drains its connections like a shutdown does, while the other
//! listeners go on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::GatewayStats;
use super::activity::{Activity, ActivityIo, Busy, Tracked};
use super::error::GatewayError;
use super::framing::{Follower, Framing, FramingIo, Verdict};
use super::handler::{Connection, Shared};
use super::lingering::{Lingering, Returning, linger};
use super::panics::handle_catching;
use super::proxy::Chain;
use super::settings::{Limits, ListenerSettings, Transport, is_trusted};
use super::sources::{SourceRequests, SourceSlot, Sources};
use super::tls::ListenerTls;
use crate::policy::client_cert::ClientCertificate;

/// A listener bound and ready, not yet accepting.
pub(crate) struct BoundListener {
    pub(crate) settings: ListenerSettings,
    socket: TcpListener,
    pub(crate) tls: Option<Arc<ListenerTls>>,
    pub(crate) local_addr: SocketAddr,
}

impl BoundListener {
    pub(crate) fn new(
        settings: ListenerSettings,
        socket: TcpListener,
        tls: Option<Arc<ListenerTls>>,
    ) -> Result<Self, GatewayError> {
        let local_addr = socket.local_addr().map_err(|source| GatewayError::Bind {
            addr: settings.addr,
            source,
        })?;
        Ok(Self {
            settings,
            socket,
            tls,
            local_addr,
        })
    }
}

/// Loads the TLS configuration of a listener (`None` for plain HTTP).
pub(crate) fn listener_tls(
    settings: &ListenerSettings,
) -> Result<Option<Arc<ListenerTls>>, GatewayError> {
    match &settings.transport {
        Transport::Tls(tls) => ListenerTls::load(tls).map(|tls| Some(Arc::new(tls))),
        Transport::PlainHttp => Ok(None),
    }
}

/// The listening socket for `addr`: the one systemd passed for it (socket
/// activation, `lifecycle::sockets`), or a new one. rampartd does not set
/// SO_REUSEPORT: a second process on the same port would take part of the
/// connections (docs/operations.md, "Lifecycle").
pub(crate) async fn bind_socket(addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    if let Some(inherited) = crate::lifecycle::sockets::take(addr)
        .map_err(|source| GatewayError::Bind { addr, source })?
    {
        return Ok(inherited);
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })
}

/// Response data an HTTP/2 stream buffers towards its client beyond the chunk it
/// has (hyper's default is 400 KiB). A client that opens large flow-control
/// windows and then stops reading made each of its streams buffer that much: about
/// 55 MB per connection with 100 streams. The backend's body is polled for its next
/// chunk (at most 64 KiB, `MAX_RESPONSE_HEAD_BYTES`, handed on in pieces of this
/// size: activity.rs) only while less than this is buffered, so a stream holds at
/// most this plus one chunk, and its backend connection is read no further
/// meanwhile. Measured with 100 such streams per
/// connection (daemon/tests/rampartd_limits.rs): 15 to 19 MB per connection at
/// 16 KiB, 25 MB at 64 KiB (backend read buffers included). Throughput does not depend
/// on it: the socket's send buffer, in the kernel, is what covers the network (4 x
/// 100 MB through daemon/tests/gateway_stream.rs took the same time at 16 and at
/// 400 KiB).
pub(crate) const H2_STREAM_SEND_BUFFER: usize = 16 * 1024;
/// The HTTP/2 flow-control windows rampartd grants a client for request bodies:
/// hyper's defaults, set here so that they stay what the memory bound counts on.
/// The connection window bounds the request data one connection makes rampartd
/// hold, whatever its streams. Envoy's edge settings take 64 KiB per stream; here
/// that made the 100 MB HTTP/2 upload of daemon/tests/gateway_stream.rs (over
/// loopback) take more than 30 s, one window per round trip, where its four 100 MB
/// transfers take about 8 s together with 1 MiB; and it buys no memory: a stream
/// with a 1 MiB window can only stall its own connection's uploads.
pub(crate) const H2_STREAM_WINDOW: u32 = 1024 * 1024;
pub(crate) const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

pub(crate) fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own head limit is a backstop (431 with an empty body); the handler
    // applies `max_header_bytes` first and answers with the JSON body.
    let backstop = head_backstop(limits);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(backstop);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(backstop).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_send_buf_size(H2_STREAM_SEND_BUFFER)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW);
    builder
}

/// The longest request head hyper reads.
fn head_backstop(limits: &Limits) -> usize {
    limits.max_header_bytes.saturating_mul(2).max(64 * 1024)
}

/// A listener that is accepting (or draining after it was removed).
struct Listener {
    settings: ListenerSettings,
    local_addr: SocketAddr,
    tls: Arc<ArcSwapOption<ListenerTls>>,
    /// Stops its accepts; its connections then drain.
    stop: CancellationToken,
    /// Resolves once its socket is closed.
    closed: oneshot::Receiver<()>,
}

/// What a listener accepting connections reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerInfo {
    pub(crate) settings: ListenerSettings,
    pub(crate) local_addr: SocketAddr,
}

/// The serving gateway: its current generation, its listeners, its connection slots.
pub(crate) struct Server {
    current: ArcSwap<Shared>,
    /// Held while a new generation is made from the current one, so that two
    /// changes never overwrite each other; what the semaphores are sized for.
    publishing: Mutex<SizedFor>,
    slots: Arc<Semaphore>,
    /// Connections open per source (`max_connections_per_source`).
    sources: Arc<Sources>,
    listeners: Mutex<Vec<Listener>>,
    stats: Arc<GatewayStats>,
    shutdown: CancellationToken,
    /// Cloned into every listener task; taken at shutdown, so that
    /// [`Server::run`] returns once the last listener has drained.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    drained: Mutex<Option<mpsc::Receiver<()>>>,
}

/// The limits the semaphores were last sized for.
struct SizedFor {
    /// `max_connections`: [`Server::slots`].
    connections: usize,
    /// `max_backend_requests`: [`Shared::backend_requests`], the same semaphore in
    /// every generation.
    backend_requests: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Server {
    pub(crate) fn new(shared: Shared, shutdown: CancellationToken) -> Arc<Self> {
        let max_connections = shared.limits.max_connections.max(1);
        let (alive, drained) = mpsc::channel(1);
        Arc::new(Self {
            stats: Arc::clone(&shared.stats),
            publishing: Mutex::new(SizedFor {
                connections: max_connections,
                backend_requests: shared.limits.max_backend_requests.max(1),
            }),
            current: ArcSwap::from_pointee(shared),
            slots: Arc::new(Semaphore::new(max_connections)),
            sources: Arc::new(Sources::default()),
            listeners: Mutex::new(Vec::new()),
            shutdown,
            alive: Mutex::new(Some(alive)),
            drained: Mutex::new(Some(drained)),
        })
    }

    /// The generation new requests are served with.
    pub(crate) fn current(&self) -> Arc<Shared> {
        self.current.load_full()
    }

    /// Makes the next generation from the current one and installs it: requests
    /// that arrive from now on use it, requests in flight finish with theirs.
    pub(crate) fn publish(&self, next: impl FnOnce(&Shared) -> Shared) {
        let mut sized_for = lock(&self.publishing);
        let next = next(&self.current.load());
        self.resize(
            &self.slots,
            &mut sized_for.connections,
            next.limits.max_connections.max(1),
        );
        self.resize(
            &next.backend_requests,
            &mut sized_for.backend_requests,
            next.limits.max_backend_requests.max(1),
        );
        self.current.store(Arc::new(next));
    }

    /// A limit changed: more permits at once; fewer as the ones in use come back.
    fn resize(&self, semaphore: &Arc<Semaphore>, sized_for: &mut usize, wanted: usize) {
        if wanted > *sized_for {
            semaphore.add_permits(wanted - *sized_for);
        } else if wanted < *sized_for {
            let excess = *sized_for - wanted;
            let forgotten = semaphore.forget_permits(excess);
            let rest = excess - forgotten;
            if rest > 0 {
                let slots = Arc::clone(semaphore);
                let shutdown = self.shutdown.clone();
                tokio::spawn(async move {
                    for _ in 0..rest {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            slot = Arc::clone(&slots).acquire_owned() => match slot {
                                Ok(slot) => slot.forget(),
                                Err(_closed) => return,
                            },
                        }
                    }
                });
            }
        }
        *sized_for = wanted;
    }

    /// Starts accepting on `listener` (nothing happens after shutdown began).
    pub(crate) fn add_listener(self: &Arc<Self>, listener: BoundListener) {
        let Some(alive) = lock(&self.alive).clone() else {
            return;
        };
        let BoundListener {
            settings,
            socket,
            tls,
            local_addr,
        } = listener;
        tracing::info!(addr = %local_addr, tls = tls.is_some(), "gateway listening");
        let tls = Arc::new(ArcSwapOption::from(tls));
        let stop = self.shutdown.child_token();
        let (closed_tx, closed) = oneshot::channel();
        tokio::spawn(listener_task(
            Arc::clone(self),
            socket,
            ListenerAddrs {
                configured: settings.addr,
                local: local_addr,
            },
            Arc::clone(&tls),
            stop.clone(),
            closed_tx,
            alive,
        ));
        lock(&self.listeners).push(Listener {
            settings,
            local_addr,
            tls,
            stop,
            closed,
        });
    }

    /// Stops accepting on the listener configured for `addr`; its open connections
    /// drain. The receiver resolves once its socket is closed.
    pub(crate) fn remove_listener(&self, addr: SocketAddr) -> Option<oneshot::Receiver<()>> {
        let mut listeners = lock(&self.listeners);
        let index = listeners.iter().position(|l| l.settings.addr == addr)?;
        let listener = listeners.swap_remove(index);
        listener.stop.cancel();
        Some(listener.closed)
    }

    /// New settings (and TLS configuration) for the listener configured for
    /// `settings.addr`: new connections use them, open ones keep theirs.
    pub(crate) fn update_listener(
        &self,
        settings: ListenerSettings,
        tls: Option<Arc<ListenerTls>>,
    ) {
        let mut listeners = lock(&self.listeners);
        if let Some(listener) = listeners
            .iter_mut()
            .find(|l| l.settings.addr == settings.addr)
        {
            listener.tls.store(tls);
            listener.settings = settings;
        }
    }

    pub(crate) fn listeners(&self) -> Vec<ListenerInfo> {
        lock(&self.listeners)
            .iter()
            .map(|l| ListenerInfo {
                settings: l.settings.clone(),
                local_addr: l.local_addr,
            })
            .collect()
    }

    /// Serves until shutdown is asked for, then waits until every listener has
    /// drained (at most the drain timeout each, all at once).
    pub(crate) async fn run(self: Arc<Self>) {
        let Some(mut drained) = lock(&self.drained).take() else {
            return;
        };
        self.shutdown.cancelled().await;
        // No listener starts after this; the channel closes with the last one.
        drop(lock(&self.alive).take());
        while drained.recv().await.is_some() {}
        tracing::info!("gateway stopped");
    }
}

/// Accepts on one listener until it is removed or the gateway shuts down, then
/// closes its socket and drains its connections: in-flight requests finish for at
/// most `drain_timeout`, then what is left is closed.
///
/// Each accepted connection takes a watcher at once, so that draining also waits
/// for connections still in their TLS handshake.
async fn listener_task(
    server: Arc<Server>,
    socket: TcpListener,
    ListenerAddrs {
        configured,
        local: local_addr,
    }: ListenerAddrs,
    tls: Arc<ArcSwapOption<ListenerTls>>,
    stop: CancellationToken,
    closed: oneshot::Sender<()>,
    _alive: mpsc::Sender<()>,
) {
    let graceful = GracefulShutdown::new();
    // Cancelled when the drain time is over: connections still open are dropped.
    let hard_stop = CancellationToken::new();
    // Set then, first: the requests of those connections are cut by the gateway.
    let drain_over = Arc::new(AtomicBool::new(false));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors or a connection reset before accept: wait
                // a little rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Counted for its source before it waits for a slot, so that one source
        // cannot queue for every slot either. Behind a trusted proxy the peer is
        // the proxy, which speaks for many clients: not capped. Counted also
        // without a connection cap: the count holds the source's requests in
        // flight (`max_backend_requests_per_source`, which a reload may turn on).
        let source_slot = {
            let current = server.current.load();
            let cap = match current.limits.max_connections_per_source {
                0 => usize::MAX,
                cap => cap,
            };
            if is_trusted(&current.trusted_proxies, peer.ip()) {
                None
            } else {
                match server
                    .sources
                    .admit(peer.ip(), cap, current.limits.ipv6_client_prefix)
                {
                    Ok(counted) => Some(counted),
                    Err(source) => {
                        GatewayStats::bump(&server.stats.connections_over_source_limit);
                        // Named in the journal so that an operator sees a client
                        // (or a NAT gateway) being refused, but at most once per
                        // source every 10 s: a source that retries in a loop would
                        // otherwise write a line per connection.
                        if let Some(refused) =
                            server.sources.refused(source, std::time::Instant::now())
                        {
                            tracing::warn!(
                                source = %super::sources::display(source),
                                limit = cap,
                                refused,
                                "connections refused: the source has max_connections_per_source open (logged at most once per source every 10 s; refused counts the refusals since its last line)"
                            );
                        }
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        // The slot is taken after accept: taking it before would let an idle
        // listener hold a slot that another listener's clients need. While all
        // slots are taken, this listener holds one accepted connection unserved
        // and the rest wait in the kernel's backlog.
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = Arc::clone(&server.slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_closed) => break,
            },
        };
        GatewayStats::bump(&server.stats.connections_accepted);
        let _ = stream.set_nodelay(true);
        let server = Arc::clone(&server);
        let tls = tls.load_full();
        let watcher = graceful.watcher();
        let hard_stop = hard_stop.clone();
        let drain_over = Arc::clone(&drain_over);
        tokio::spawn(async move {
            // Connection-level settings are the ones current at accept.
            let generation = server.current();
            let stats = Arc::clone(&server.stats);
            let activity = Arc::new(Activity::new(drain_over));
            let framing = Arc::new(Framing::default());
            let (stream, mut returned) = Returning::new(stream);
            let stream = ActivityIo {
                inner: stream,
                watch: Arc::clone(&activity),
            };
            let idle = generation.limits.idle_timeout;
            let lingering = Lingering::of(&generation.limits);
            // The connection runs in its own task, so that its many wake-ups (one
            // or more per request) do not poll the watchers below as well.
            let serving = tokio::spawn(serve_connection(
                stream,
                Addresses {
                    peer,
                    listener: configured,
                    requests: source_slot.as_ref().map(SourceSlot::requests),
                },
                tls,
                Watchers {
                    activity: Arc::clone(&activity),
                    framing: Arc::clone(&framing),
                },
                server,
                generation,
                watcher,
            ));
            let abort = serving.abort_handle();
            let served = tokio::select! {
                served = serving => served.unwrap_or(Ended::Cut),
                () = hard_stop.cancelled() => {
                    // Its requests still in progress are cut by the gateway, not
                    // abandoned by the client (`drain_over` says so).
                    abort.abort();
                    Ended::Cut
                }
                () = activity.idle_for(idle, || framing.http2()) => {
                    tracing::debug!(%peer, ?idle, "idle connection closed");
                    activity.idle_cut();
                    abort.abort();
                    Ended::Cut
                }
            };
            // The HTTP side has dropped the socket by now (its task is over).
            if served == Ended::Closed
                && let Ok(stream) = returned.try_recv()
            {
                tokio::select! {
                    () = linger(stream, lingering) => {}
                    () = hard_stop.cancelled() => {}
                }
            }
            GatewayStats::bump(&stats.connections_closed);
            drop(slot);
            drop(source_slot);
        });
    }
    drop(socket);
    let _ = closed.send(());
    let drain_timeout = server.current.load().limits.drain_timeout;
    tracing::info!(addr = %local_addr, connections = graceful.count(), "listener closed; draining its connections");
    let drain_timeout =
        super::draining::lame_duck(&graceful, &server.shutdown, drain_timeout).await;
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(addr = %local_addr, timeout = ?drain_timeout, "drain time over, closing remaining connections");
    }
    // Before the cut, and before this listener counts as drained (the runtime may
    // then stop and drop the connections' tasks before they see `hard_stop`).
    drain_over.store(true, Ordering::Relaxed);
    hard_stop.cancel();
}

/// How a connection's serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The HTTP side closed it (after an answer, or the client's close): the client
    /// may still be sending, so the socket lingers.
    Closed,
    /// Cut off (a failed or slow handshake, a slow head, the idle timeout, the end
    /// of the drain time): closed at once.
    Cut,
}

/// A listener's address as configured (what `api.listeners` names) and as bound
/// (its port when the configured one is 0).
struct ListenerAddrs {
    configured: SocketAddr,
    local: SocketAddr,
}

/// What follows a connection for the idle timeout: its activity, and whether it
/// speaks HTTP/2 (its framing).
struct Watchers {
    activity: Arc<Activity>,
    framing: Arc<Framing>,
}

/// The two ends of an accepted connection.
struct Addresses {
    peer: SocketAddr,
    /// The configured address of the listener that accepted it.
    listener: SocketAddr,
    /// Its source's requests in flight (`None`: a trusted proxy, not capped).
    requests: Option<SourceRequests>,
}

async fn serve_connection(
    stream: ActivityIo<Returning>,
    Addresses {
        peer,
        listener,
        requests,
    }: Addresses,
    tls: Option<Arc<ListenerTls>>,
    watchers: Watchers,
    server: Arc<Server>,
    generation: Arc<Shared>,
    watcher: Watcher,
) -> Ended {
    let stats = &server.stats;
    let timeout = generation.limits.header_read_timeout;
    match tls {
        Some(tls) => {
            let stream = match tokio::time::timeout(timeout, tls.acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    GatewayStats::bump(&stats.tls_handshake_failures);
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return Ended::Cut;
                }
                Err(_elapsed) => {
                    GatewayStats::bump(&stats.header_timeouts);
                    tracing::debug!(%peer, "TLS handshake too slow");
                    return Ended::Cut;
                }
            };
            let client_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| client_certificate(chain, &tls.client_cas, peer));
            let conn = Connection {
                peer,
                listener,
                proto: "https",
                client_cert,
                source_requests: requests,
            };
            let http1 = stream.get_ref().1.alpn_protocol() != Some(b"h2");
            run_http(stream, http1, conn, watchers, server, &generation, watcher).await
        }
        None => {
            let conn = Connection {
                peer,
                listener,
                proto: "http",
                client_cert: None,
                source_requests: requests,
            };
            // HTTP/2 with prior knowledge is told by its preface.
            run_http(stream, true, conn, watchers, server, &generation, watcher).await
        }
    }
}

/// The verified client certificate of a connection, parsed once; its issuer is the
/// next certificate the client sent, or the CA that signed it.
fn client_certificate(
    chain: &[CertificateDer<'_>],
    cas: &[CertificateDer<'static>],
    peer: SocketAddr,
) -> Option<Arc<ClientCertificate>> {
    let leaf = chain.first()?;
    let parse = |issuer: Option<&[u8]>| ClientCertificate::from_der(leaf, issuer);
    // The library accepts an issuer only if it signed the leaf; when the client sent
    // none (or a wrong one), the CA it was verified against is the issuer.
    let mut cert = parse(chain.get(1).map(|c| c.as_ref()));
    if let Ok(first) = &cert
        && first.issuer_sha1_thumbprint().is_none()
        && let Some(ca) = cas.iter().find(|ca| {
            ClientCertificate::from_der(ca, None)
                .is_ok_and(|ca| ca.subject() == first.issuer_subject())
        })
    {
        cert = parse(Some(ca));
    }
    match cert {
        Ok(cert) => Some(Arc::new(cert)),
        Err(error) => {
            tracing::info!(%peer, %error, "client certificate not parsed");
            None
        }
    }
}

/// Resolves once `timeout` has passed without the connection's first request head
/// being whole (never, if it was).
async fn first_head_overdue(framing: &Framing, timeout: std::time::Duration) {
    tokio::time::sleep(timeout).await;
    if framing.started() {
        std::future::pending::<()>().await;
    }
}

/// Serves HTTP on `stream`; `http1`: whether it may speak HTTP/1 (ALPN did not
/// choose h2), so that its request framing is followed (framing.rs).
async fn run_http<S>(
    stream: S,
    http1: bool,
    conn: Connection,
    Watchers { activity, framing }: Watchers,
    server: Arc<Server>,
    generation: &Shared,
    watcher: Watcher,
) -> Ended
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let io = TokioIo::new(FramingIo {
        inner: stream,
        watch: Follower::new(
            Arc::clone(&framing),
            http1,
            head_backstop(&generation.limits),
        ),
    });
    let stats = Arc::clone(&server.stats);
    let framing_watch = Arc::clone(&framing);
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let verdict = framing.next();
        if verdict != Verdict::Plain {
            request.extensions_mut().insert(verdict);
        }
        // The one generation load of the request.
        let shared = server.current();
        let conn = conn.clone();
        let activity = Arc::clone(&activity);
        let busy = Busy::new(Arc::clone(&activity));
        let version = request.version();
        // The server, not a clone of its shutdown token: cloning a token locks
        // its tree, twice per request.
        let server = Arc::clone(&server);
        async move {
            let mut response = handle_catching(shared, conn, request, busy.activity()).await;
            drop(busy);
            if let Ok(response) = &mut response {
                super::draining::close_when_stopping(response, version, &server.shutdown);
            }
            // Its chunks count as activity (over HTTP/2 bytes alone do not); over
            // HTTP/2 it is cut if it does not move for the idle timeout.
            response.map(|response| {
                response.map(|inner| {
                    if version == http::Version::HTTP_2 {
                        Tracked::stream(inner, activity)
                    } else {
                        Tracked::new(inner, activity)
                    }
                })
            })
        }
    });
    let connection = watcher.watch(generation.http.serve_connection(io, service));
    // hyper's header read timeout runs once hyper reads HTTP/1; until the first head is
    // whole, the follower holds it back (and hyper-util waits for its first bytes).
    let outcome = tokio::select! {
        biased;
        outcome = connection => outcome,
        () = first_head_overdue(&framing_watch, generation.limits.header_read_timeout) => {
            GatewayStats::bump(&stats.header_timeouts);
            tracing::debug!(%peer, "request head too slow");
            return Ended::Cut;
        }
    };
    let Err(error) = outcome else {
        return Ended::Closed;
    };
    match error.downcast_ref::<hyper::Error>() {
        Some(e) if e.is_parse() || e.is_parse_too_large() => {
            GatewayStats::bump(&stats.malformed_requests);
            tracing::debug!(%peer, error = %Chain(e), "malformed request");
            Ended::Closed
        }
        Some(e) if e.is_timeout() => {
            GatewayStats::bump(&stats.header_timeouts);
            tracing::debug!(%peer, "request head too slow");
            Ended::Cut
        }
        _ => {
            tracing::debug!(%peer, error = %Chain(error.as_ref()), "connection ended with an error");
            Ended::Closed
        }
    }
}
