//! The admin listener (`[daemon] admin_listen`): `/metrics` for Prometheus,
//! `/healthz` (liveness) and `/readyz` (readiness), plain HTTP/1.1 on the
//! daemon's runtime.
//!
//! It is loopback by default because `/metrics` reveals traffic (APIs,
//! countries dropped, bans). The gateway's counters are read here directly
//! (atomics); the kernel's counters and the rule tables belong to the control
//! thread, which is asked for a [`ControlSnapshot`] and given
//! [`CONTROL_TIMEOUT`] to answer: a busy or stuck control thread turns
//! `rampart_control_up` to 0 and `/readyz` to 503, and the gateway's part is
//! still served.
//!
//! Only `GET` and `HEAD` are answered (405 otherwise), unknown paths are 404.

mod exposition;
mod render;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::filter::Counters;
use crate::gateway::running::RunningGateway;

pub use render::render_metrics;

/// How long `/metrics` and `/readyz` wait for the control thread.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// A client has this long to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection's whole life (its one request: head, answer, and the client
/// reading it): one that does not read its answer cannot hold a slot for ever.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// Admin connections served at once, so a misbehaving scraper cannot take the
/// daemon's memory. At the limit, a new connection takes the place of the oldest
/// one still waiting for its request head (`Waiting`): any local user can reach
/// the listener, and connections that never send a head must not keep a health
/// probe out.
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} (daemon.admin_listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the control thread reports for `/metrics` and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct ControlSnapshot {
    /// `None` without `[filter]`.
    pub filter: Option<KernelSnapshot>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Unix seconds of the last successful reload, or of the start.
    pub last_reload_success: u64,
    /// Automatic bans put into the kernel since start.
    pub bans_issued: u64,
}

/// The kernel filter's counters and tables.
#[derive(Debug, Clone, Default)]
pub struct KernelSnapshot {
    /// `None` when the counters could not be read (logged).
    pub counters: Option<Counters>,
    /// Live entries per (list, origin): `("deny", "auto", 3)`.
    pub lists: Vec<(&'static str, &'static str, usize)>,
    pub country_prefixes: usize,
    /// Automatic (temporary) deny entries in force.
    pub active_bans: usize,
    pub interfaces_attached: usize,
}

/// Reload outcomes, kept by the control thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReloadCounts {
    pub ok: u64,
    pub failed: u64,
    /// Unix seconds of the last successful reload, or of the start.
    pub last_success: Option<u64>,
}

impl ReloadCounts {
    /// The counts of a daemon that loaded its configuration at `now`.
    pub fn started(now: u64) -> Self {
        Self {
            last_success: Some(now),
            ..Self::default()
        }
    }

    /// Counts a reload's outcome at `now` (Unix seconds).
    pub fn record(&mut self, ok: bool, now: u64) {
        if ok {
            self.ok += 1;
            self.last_success = Some(now);
        } else {
            self.failed += 1;
        }
    }
}

/// Asks the control thread for a snapshot; false when it is gone.
pub type AskControl =
    Arc<dyn Fn(tokio::sync::oneshot::Sender<ControlSnapshot>) -> bool + Send + Sync>;

/// Everything the admin listener reads.
pub struct AdminSources {
    pub gateway: Option<Arc<RunningGateway>>,
    pub control: AskControl,
    /// Unix seconds the daemon started at.
    pub started: f64,
}

/// The running admin listener.
pub struct AdminListener {
    local_addr: SocketAddr,
    draining: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl AdminListener {
    /// Binds `addr` (or takes the socket systemd passed for it) and serves on
    /// the current runtime until [`AdminListener::stop`]. A non-loopback
    /// address is allowed, with a warning.
    pub async fn start(addr: SocketAddr, sources: AdminSources) -> Result<Self, AdminError> {
        let listener = bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        if addr.ip().is_loopback() {
            tracing::info!(address = %local_addr, "admin listener ready: /metrics /healthz /readyz");
        } else {
            tracing::warn!(
                address = %local_addr,
                "admin listener on a non-loopback address: /metrics reveals traffic; \
                 restrict who can reach it"
            );
        }
        let draining = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let state = Arc::new(State {
            sources,
            draining: Arc::clone(&draining),
        });
        tokio::spawn(serve(listener, state, stop.clone()));
        Ok(Self {
            local_addr,
            draining,
            stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// From now on `/readyz` answers 503 "draining" (SIGTERM: the gateway
    /// stops accepting and finishes its requests); the listener keeps serving.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Stops accepting; connections being served finish on their own.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The socket systemd passed for `addr`, else a new one with SO_REUSEPORT: a
/// daemon started while another still drains on the same address (a restart
/// with socket hand-over) then starts instead of failing. Only processes of
/// the same user can share the port.
async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if let Some(inherited) = crate::lifecycle::sockets::take(addr)? {
        return Ok(inherited);
    }
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

struct State {
    sources: AdminSources,
    draining: Arc<AtomicBool>,
}

/// The connections that have not sent their request head yet, oldest first: the
/// ones a new connection may take the place of when every slot is taken.
#[derive(Default)]
struct Waiting {
    next: u64,
    connections: std::collections::BTreeMap<u64, CancellationToken>,
}

impl Waiting {
    fn lock(waiting: &std::sync::Mutex<Self>) -> std::sync::MutexGuard<'_, Self> {
        waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let waiting = Arc::new(std::sync::Mutex::new(Waiting::default()));
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Every slot taken: the oldest connection still without a request
                // head is closed to make room (one being answered keeps its slot;
                // an answer takes at most the control timeout).
                let oldest = Waiting::lock(&waiting).connections.pop_first();
                if let Some((_, evict)) = oldest {
                    tracing::debug!(
                        "admin listener full; closed the oldest connection without a request"
                    );
                    evict.cancel();
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_closed) => break,
                    },
                }
            }
        };
        let state = Arc::clone(&state);
        let evicted = CancellationToken::new();
        let id = {
            let mut waiting = Waiting::lock(&waiting);
            let id = waiting.next;
            waiting.next += 1;
            waiting.connections.insert(id, evicted.clone());
            id
        };
        let waiting = Arc::clone(&waiting);
        tokio::spawn(async move {
            let service = {
                let waiting = Arc::clone(&waiting);
                hyper::service::service_fn(move |request| {
                    // Its head has come: no longer one to make room with.
                    Waiting::lock(&waiting).connections.remove(&id);
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(respond(&state, &request).await) }
                })
            };
            // One request per connection: a connection is either waiting for its
            // head (and may be closed to make room) or being answered, never idle
            // between requests holding a slot.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                ended = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => match ended {
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "admin connection ended with an error");
                    }
                    Err(_elapsed) => {
                        tracing::debug!(%peer, "admin connection over its time; closed");
                    }
                    Ok(Ok(())) => {}
                },
                () = evicted.cancelled() => {}
            }
            Waiting::lock(&waiting).connections.remove(&id);
            drop(slot);
        });
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: String,
    head: bool,
) -> Response<Full<Bytes>> {
    let length = body.len();
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

const PLAIN: &str = "text/plain; charset=utf-8";
/// The Prometheus text exposition format.
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn respond(state: &State, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n".into(),
            false,
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let control = ask_control(&state.sources.control).await;
            let body = render_metrics(&state.sources, control.as_ref(), unix_now());
            text(StatusCode::OK, PROMETHEUS, body, head)
        }
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into(), head),
        "/readyz" => match not_ready(state).await {
            None => text(StatusCode::OK, PLAIN, "ready\n".into(), head),
            Some(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: {reason}\n"),
                head,
            ),
        },
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into(), head),
    }
}

/// Why the daemon should not get traffic now, or `None` when it should.
async fn not_ready(state: &State) -> Option<String> {
    if state.draining.load(Ordering::Relaxed) {
        return Some("draining (stopping)".into());
    }
    if let Some(gateway) = &state.sources.gateway
        && gateway.local_addrs().is_empty()
    {
        return Some("no gateway listener is bound".into());
    }
    let Some(control) = ask_control(&state.sources.control).await else {
        return Some(format!(
            "the control thread did not answer within {} s",
            CONTROL_TIMEOUT.as_secs()
        ));
    };
    if let Some(kernel) = &control.filter
        && kernel.interfaces_attached == 0
    {
        return Some("the kernel filter is not attached".into());
    }
    None
}

/// The control thread's snapshot, or `None` when it does not answer in time.
async fn ask_control(ask: &AskControl) -> Option<ControlSnapshot> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    if !ask(reply) {
        return None;
    }
    tokio::time::timeout(CONTROL_TIMEOUT, answer)
        .await
        .ok()?
        .ok()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
