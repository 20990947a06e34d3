//! HTTP/1.1 to plain-HTTP backends without hyper-util's legacy client: a small
//! stack of idle connections per backend, each a `SendRequest` handle whose
//! connection future runs in its own task (spawned once per connection).
//!
//! A connection goes back to the stack only when the backend's response was read
//! to its end and the connection is ready for another request; one whose response
//! was not read through, or that failed, is dropped (and so closed). The most
//! recently used connection is taken first (LIFO); idle ones close after the
//! backend's idle timeout, and at most [`MAX_IDLE`] are kept.
//!
//! A request that fails on a reused connection because the backend closed it
//! (its keep-alive timeout racing with the reuse, a restart) is sent once more,
//! on a new connection, when that is safe: it was never written, or it is
//! idempotent, has no body, its connection had been idle for a second and no
//! byte of its answer had come (see
//! [`Http1Pool::send`]).

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::UpstreamBody;
use crate::gateway::metrics::ApiMetrics;

/// How long a pooled connection must have been idle for a request written on it
/// and lost unanswered to be sent again (when idempotent and without a body):
/// backends close idle keep-alive connections after seconds (Node.js 5 s,
/// gunicorn 2 s, nginx 75 s), so a connection used within the last second was
/// not closed by such a timeout, and its requests are spared the copy a retry
/// needs.
pub(super) const REPLAY_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Idle connections kept per backend; more are closed when they come back.
pub(super) const MAX_IDLE: usize = 1024;

/// Why a request to the backend failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection could be made (refused, unreachable, timed out, no address).
    #[error("client error (Connect)")]
    Connect(#[source] Box<dyn StdError + Send + Sync>),
    /// The request or its response failed on an established connection.
    #[error("client error (SendRequest)")]
    Request(#[source] hyper::Error),
}

impl UpstreamError {
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

/// Connections to one backend (`host:port` of its `http://` URL).
pub(crate) struct Http1Pool {
    host: String,
    port: u16,
    /// The `Host` header sent: the backend's own name (and port when not 80).
    host_header: HeaderValue,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections, the most recently used at the back.
    idle: Mutex<VecDeque<Idle>>,
    /// Whether the task closing expired idle connections runs.
    reaper: std::sync::atomic::AtomicBool,
    /// The counters of the API this backend serves (requests sent again).
    metrics: Arc<ApiMetrics>,
}

struct Idle {
    connection: Connection,
    since: Instant,
}

/// One connection to the backend: the handle requests are sent by, and how many
/// bytes were read from it so far (its [`CountingStream`]'s count), by which a
/// failed request tells whether any of its answer had come.
struct Connection {
    sender: SendRequest<UpstreamBody>,
    received: Arc<AtomicU64>,
}

impl Http1Pool {
    pub(crate) fn new(
        host: String,
        port: u16,
        host_header: HeaderValue,
        connect_timeout: Duration,
        idle_timeout: Duration,
        metrics: Arc<ApiMetrics>,
    ) -> Self {
        Self {
            host,
            port,
            host_header,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(VecDeque::new()),
            reaper: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }
    }

    /// Sends `request` (origin-form URI, no `Host` yet) and returns the response
    /// with its body streaming; the connection returns to the pool when that body
    /// has been read to its end.
    ///
    /// On a reused connection that turns out closed (the backend's keep-alive
    /// timeout ran out as the request went, or it restarted), the request is sent
    /// once more, on a new connection (another idle one may be just as stale),
    /// when that cannot run it twice: hyper gave it back unwritten (all that
    /// hyper-util's client retries), or it is idempotent (RFC 9110 §9.2.2: GET,
    /// HEAD, OPTIONS, PUT, DELETE; TRACE is never forwarded), had no body, the
    /// connection had been idle for [`REPLAY_AFTER_IDLE`] at least, and it closed
    /// or was reset before a byte of the answer came. A request
    /// whose body went out, even in part, is never sent again: its 502 stays. A
    /// failure on a new connection is the backend's and is not retried. The
    /// caller's timer covers both attempts, so a retry never extends it.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        // As hyper-util's client: Host from the backend's URL, added last.
        request
            .headers_mut()
            .entry(http::header::HOST)
            .or_insert_with(|| self.host_header.clone());
        let Some((
            Connection {
                mut sender,
                received,
            },
            idle_for,
        )) = self.checkout()
        else {
            // Boxed: a new connection is the rare case, and its future inline
            // would grow every request's future (moved by value at each await
            // up the chain) by its size.
            let connection = Box::pin(self.connect()).await?;
            return self.send_on(connection, request).await;
        };
        // What to send again once hyper has written the request: its head (its
        // body is empty). A copy, as hyper keeps nothing of what it wrote; made
        // only for a connection that was idle long enough for a backend's
        // keep-alive timeout to close it, not on every busy connection's request.
        let replay = if idle_for >= REPLAY_AFTER_IDLE
            && request.method().is_idempotent()
            && request.body().is_end_stream()
        {
            let (head, body) = request.into_parts();
            let replay = head.clone();
            request = Request::from_parts(head, body);
            Some(replay)
        } else {
            None
        };
        let received_before = received.load(Ordering::Relaxed);
        let mut error = match sender.try_send_request(request).await {
            Ok(response) => return Ok(self.pooled(response, Connection { sender, received })),
            Err(error) => error,
        };
        let again = match (error.take_message(), replay) {
            (Some(unsent), _) => unsent,
            (None, Some(head))
                if received.load(Ordering::Relaxed) == received_before
                    && connection_lost(error.error()) =>
            {
                Request::from_parts(head, Either::Right(Full::new(Bytes::new())))
            }
            _ => return Err(UpstreamError::Request(error.into_error())),
        };
        tracing::debug!(
            backend = ?self.host_header,
            method = %again.method(),
            error = %error.error(),
            "reused backend connection closed before answering; sending the request again on a new connection"
        );
        self.metrics.record_backend_retry();
        let connection = Box::pin(self.connect()).await?;
        self.send_on(connection, again).await
    }

    /// Sends `request` on `connection`, with no second attempt.
    async fn send_on(
        self: &Arc<Self>,
        connection: Connection,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let Connection {
            mut sender,
            received,
        } = connection;
        match sender.send_request(request).await {
            Ok(response) => Ok(self.pooled(response, Connection { sender, received })),
            Err(error) => Err(UpstreamError::Request(error)),
        }
    }

    /// The response with its body holding `connection` until read to its end.
    fn pooled(
        self: &Arc<Self>,
        response: Response<Incoming>,
        connection: Connection,
    ) -> Response<PooledBody> {
        let (parts, body) = response.into_parts();
        let body = PooledBody::new(body, connection, Arc::downgrade(self));
        Response::from_parts(parts, body)
    }

    /// The most recently used idle connection that is still open and ready, and
    /// how long it was idle.
    fn checkout(&self) -> Option<(Connection, Duration)> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = idle.pop_back() {
            if now.duration_since(entry.since) >= self.idle_timeout {
                // The ones below are older still.
                idle.clear();
                return None;
            }
            if entry.connection.sender.is_ready() {
                return Some((entry.connection, now.duration_since(entry.since)));
            }
        }
        None
    }

    /// Puts back a connection whose exchange ended: now if it is ready for the
    /// next request, else once it is (a task waits for that), unless it closes.
    fn put_back(pool: Weak<Self>, mut connection: Connection) {
        if connection.sender.is_ready() {
            if let Some(pool) = pool.upgrade() {
                pool.push(connection);
            }
        } else if !connection.sender.is_closed() {
            tokio::spawn(async move {
                if connection.sender.ready().await.is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    pool.push(connection);
                }
            });
        }
    }

    fn push(self: &Arc<Self>, connection: Connection) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() >= MAX_IDLE {
                idle.pop_front();
            }
            idle.push_back(Idle {
                connection,
                since: Instant::now(),
            });
        }
        if !self.reaper.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self), self.idle_timeout));
        }
    }

    /// Closes the idle connections unused for the idle timeout.
    fn evict_expired(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while idle.front().is_some_and(|e| {
            now.duration_since(e.since) >= self.idle_timeout || e.connection.sender.is_closed()
        }) {
            idle.pop_front();
        }
        idle.retain(|e| !e.connection.sender.is_closed());
    }

    /// A new connection: TCP (no delay) to the backend's addresses in turn, the
    /// connect timeout shared among them as hyper-util's connector does, then
    /// the HTTP/1.1 handshake; the connection runs in its own task.
    async fn connect(&self) -> Result<Connection, UpstreamError> {
        let connect_error = |e: std::io::Error| UpstreamError::Connect(Box::new(e));
        let addrs: Vec<SocketAddr> = match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, self.port)],
            Err(_) => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(connect_error)?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(connect_error(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no address for {}", self.host),
            )));
        }
        let per_addr = self
            .connect_timeout
            .checked_div(u32::try_from(addrs.len()).unwrap_or(u32::MAX))
            .unwrap_or(self.connect_timeout);
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match tokio::time::timeout(per_addr, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    stream = Some(s);
                    break;
                }
                Ok(Err(e)) => last = Some(e),
                Err(_elapsed) => {
                    last = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect to {addr} timed out"),
                    ));
                }
            }
        }
        let Some(stream) = stream else {
            return Err(connect_error(
                last.unwrap_or_else(|| std::io::Error::other("no address connected")),
            ));
        };
        stream.set_nodelay(true).map_err(connect_error)?;
        let received = Arc::new(AtomicU64::new(0));
        let stream = CountingStream {
            inner: stream,
            received: Arc::clone(&received),
        };
        let (sender, connection) = Builder::new()
            .max_buf_size(super::MAX_RESPONSE_HEAD_BYTES)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "backend connection error");
            }
        });
        Ok(Connection { sender, received })
    }
}

/// Whether `error` is the connection ending under a request (closed, reset, or
/// its task gone) rather than something in the request or its answer.
fn connection_lost(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        return true;
    }
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return super::connection_ended(io);
        }
        source = e.source();
    }
    false
}

/// A backend connection's TCP stream, counting the bytes read from it: hyper
/// gives the same error for a connection closed before an answer and for one
/// closed in the middle of its head, and only the first may be sent again.
/// Hand-written: no crate wraps a stream for a byte count alone.
struct CountingStream {
    inner: TcpStream,
    received: Arc<AtomicU64>,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.received.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Closes expired idle connections every idle timeout, until the pool is gone.
async fn reap(pool: Weak<Http1Pool>, every: Duration) {
    let mut interval = tokio::time::interval_at(Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.evict_expired();
    }
}

/// A backend's response body; gives its connection back to the pool once read
/// to the end. Dropped before that (or failed), the connection is closed.
pub(crate) struct PooledBody {
    inner: Incoming,
    slot: Option<(Connection, Weak<Http1Pool>)>,
}

impl PooledBody {
    fn new(inner: Incoming, connection: Connection, pool: Weak<Http1Pool>) -> Self {
        let mut body = Self {
            inner,
            slot: Some((connection, pool)),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((connection, pool)) = self.slot.take() {
            Http1Pool::put_back(pool, connection);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) => {
                if self.inner.is_end_stream() {
                    self.release();
                }
            }
            Poll::Ready(Some(Err(_))) => self.slot = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
