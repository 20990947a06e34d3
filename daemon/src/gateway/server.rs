//! Listeners and connections: accept, TLS handshake, HTTP/1.1 + HTTP/2, graceful
//! shutdown.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::GatewayStats;
use super::error::GatewayError;
use super::handler::{Connection, Shared, handle};
use super::proxy::Chain;
use super::settings::Limits;
use crate::policy::client_cert::ClientCertificate;

pub(crate) struct BoundListener {
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
    /// The CA certificates client certificates are verified against (issuer lookup).
    client_cas: Arc<Vec<CertificateDer<'static>>>,
    pub(crate) local_addr: SocketAddr,
}

impl BoundListener {
    pub(crate) fn new(
        configured: SocketAddr,
        socket: TcpListener,
        tls: Option<TlsAcceptor>,
        client_cas: Vec<CertificateDer<'static>>,
    ) -> Result<Self, GatewayError> {
        let local_addr = socket.local_addr().map_err(|source| GatewayError::Bind {
            addr: configured,
            source,
        })?;
        Ok(Self {
            socket,
            tls,
            client_cas: Arc::new(client_cas),
            local_addr,
        })
    }
}

/// Everything a connection task needs.
struct ConnectionSetup {
    shared: Arc<Shared>,
    http: Arc<auto::Builder<TokioExecutor>>,
    /// Cancelled when the drain time is over: connections still open are dropped.
    hard_stop: CancellationToken,
}

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own head limit is a backstop (431 with an empty body); the handler
    // applies `max_header_bytes` first and answers with the JSON body.
    let backstop = limits.max_header_bytes.saturating_mul(2).max(64 * 1024);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(backstop);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(backstop).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams);
    builder
}

pub(crate) async fn serve(
    listeners: Vec<BoundListener>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let limits = shared.limits;
    let setup = Arc::new(ConnectionSetup {
        http: Arc::new(http_builder(&limits)),
        shared,
        hard_stop: CancellationToken::new(),
    });
    let graceful = Arc::new(GracefulShutdown::new());
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));

    let mut accept_loops = tokio::task::JoinSet::new();
    for listener in listeners {
        tracing::info!(addr = %listener.local_addr, tls = listener.tls.is_some(), "gateway listening");
        accept_loops.spawn(accept_loop(
            listener,
            Arc::clone(&setup),
            Arc::clone(&slots),
            Arc::clone(&graceful),
            shutdown.clone(),
        ));
    }
    // The accept loops end when shutdown is cancelled, dropping their sockets.
    while accept_loops.join_next().await.is_some() {}

    match Arc::try_unwrap(graceful) {
        Ok(graceful) => {
            tracing::info!(connections = graceful.count(), "gateway draining");
            if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(timeout = ?limits.drain_timeout, "drain time over, closing remaining connections");
            }
        }
        Err(_) => tracing::warn!("gateway shutdown watcher still shared; not draining"),
    }
    setup.hard_stop.cancel();
    tracing::info!("gateway stopped");
}

/// Each accepted connection takes a watcher at once, so that shutdown also waits
/// for connections still in their TLS handshake.
async fn accept_loop(
    listener: BoundListener,
    setup: Arc<ConnectionSetup>,
    slots: Arc<Semaphore>,
    graceful: Arc<GracefulShutdown>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.socket.accept() => accepted,
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
        // The slot is taken after accept: taking it before would let an idle
        // listener hold a slot that another listener's clients need. While all
        // slots are taken, this listener holds one accepted connection unserved
        // and the rest wait in the kernel's backlog.
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_closed) => break,
            },
        };
        GatewayStats::bump(&setup.shared.stats.connections_accepted);
        let _ = stream.set_nodelay(true);
        let setup = Arc::clone(&setup);
        let tls = listener.tls.clone();
        let client_cas = Arc::clone(&listener.client_cas);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let hard_stop = setup.hard_stop.clone();
            let activity = Arc::new(Activity::new());
            let stream = ActivityIo {
                inner: stream,
                activity: Arc::clone(&activity),
            };
            let idle = setup.shared.limits.idle_timeout;
            // The connection runs in its own task, so that its many wake-ups (one
            // or more per request) do not poll the watchers below as well.
            let serving = tokio::spawn(serve_connection(
                stream,
                peer,
                tls,
                client_cas,
                Arc::clone(&activity),
                setup,
                watcher,
            ));
            let abort = serving.abort_handle();
            tokio::select! {
                _ = serving => {}
                () = hard_stop.cancelled() => abort.abort(),
                () = activity.idle_for(idle) => {
                    tracing::debug!(%peer, ?idle, "idle connection closed");
                    abort.abort();
                }
            }
            drop(slot);
        });
    }
}

async fn serve_connection(
    stream: ActivityIo<TcpStream>,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    client_cas: Arc<Vec<CertificateDer<'static>>>,
    activity: Arc<Activity>,
    setup: Arc<ConnectionSetup>,
    watcher: Watcher,
) {
    let shared = &setup.shared;
    let stats = &shared.stats;
    let timeout = shared.limits.header_read_timeout;
    match tls {
        Some(acceptor) => {
            let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    GatewayStats::bump(&stats.tls_handshake_failures);
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_elapsed) => {
                    GatewayStats::bump(&stats.header_timeouts);
                    tracing::debug!(%peer, "TLS handshake too slow");
                    return;
                }
            };
            let client_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| client_certificate(chain, &client_cas, peer));
            let conn = Connection {
                peer,
                proto: "https",
                client_cert,
            };
            run_http(TokioIo::new(stream), conn, activity, &setup, watcher).await;
        }
        None => {
            let conn = Connection {
                peer,
                proto: "http",
                client_cert: None,
            };
            run_http(TokioIo::new(stream), conn, activity, &setup, watcher).await;
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

async fn run_http<I>(
    io: I,
    conn: Connection,
    activity: Arc<Activity>,
    setup: &Arc<ConnectionSetup>,
    watcher: Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let shared = Arc::clone(&setup.shared);
    let peer = conn.peer;
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let conn = conn.clone();
        let busy = Busy::new(Arc::clone(&activity));
        async move {
            let response = handle(shared, conn, request).await;
            drop(busy);
            response
        }
    });
    let connection = setup.http.serve_connection(io, service);
    if let Err(error) = watcher.watch(connection).await {
        let stats = &setup.shared.stats;
        match error.downcast_ref::<hyper::Error>() {
            Some(e) if e.is_parse() || e.is_parse_too_large() => {
                GatewayStats::bump(&stats.malformed_requests);
                tracing::debug!(%peer, error = %Chain(e), "malformed request");
            }
            Some(e) if e.is_timeout() => {
                GatewayStats::bump(&stats.header_timeouts);
                tracing::debug!(%peer, "request head too slow");
            }
            _ => {
                tracing::debug!(%peer, error = %Chain(error.as_ref()), "connection ended with an error")
            }
        }
    }
}

/// Whether bytes moved on a connection lately, and how many of its requests are
/// waiting for their response head; for the idle timeout. Moving bytes only sets a
/// flag (no clock read per read or write); the watcher looks at it four times per
/// idle period, so an idle connection is closed between 1 and 1.25 idle periods
/// after its last byte.
pub(crate) struct Activity {
    active: AtomicBool,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            active: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        if !self.active.load(Ordering::Relaxed) {
            self.active.store(true, Ordering::Relaxed);
        }
    }

    /// Returns once no byte moved and no request waited for `idle` (to 1.25 `idle`).
    async fn idle_for(&self, idle: Duration) {
        const LOOKS: u32 = 4;
        let step = idle / LOOKS;
        let mut quiet = 0;
        loop {
            tokio::time::sleep(step).await;
            let busy = self.active.swap(false, Ordering::Relaxed)
                || self.in_flight.load(Ordering::Relaxed) > 0;
            quiet = if busy { 0 } else { quiet + 1 };
            if quiet >= LOOKS {
                return;
            }
        }
    }
}

/// Marks a request in progress on its connection until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A stream that records when bytes move.
pub(crate) struct ActivityIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for ActivityIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ActivityIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
