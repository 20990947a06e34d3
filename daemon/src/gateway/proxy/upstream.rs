//! HTTP/1.1 to plain-HTTP backends without hyper-util's legacy client: a small
//! stack of idle connections per backend, each a `SendRequest` handle whose
//! connection future runs in its own task (spawned once per connection).
//!
//! A connection goes back to the stack only when the backend's response was read
//! to its end and the connection is ready for another request; one whose response
//! was not read through, or that failed, is dropped (and so closed). The most
//! recently used connection is taken first (LIFO); idle ones close after the
//! backend's idle timeout, and at most [`MAX_IDLE`] are kept.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::UpstreamBody;

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
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

impl Http1Pool {
    pub(crate) fn new(
        host: String,
        port: u16,
        host_header: HeaderValue,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            host,
            port,
            host_header,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(VecDeque::new()),
            reaper: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Sends `request` (origin-form URI, no `Host` yet) and returns the response
    /// with its body streaming; the connection returns to the pool when that body
    /// has been read to its end.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        // As hyper-util's client: Host from the backend's URL, added last.
        request
            .headers_mut()
            .entry(http::header::HOST)
            .or_insert_with(|| self.host_header.clone());
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                // Boxed: a new connection is the rare case, and its future
                // inline would grow every request's future (moved by value at
                // each await up the chain) by its size.
                None => (Box::pin(self.connect()).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = PooledBody::new(body, sender, Arc::downgrade(self));
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut error) => match error.take_message() {
                    // Never started on a connection that was idle (the backend
                    // closed it meanwhile): another connection is tried, as
                    // hyper-util's client does.
                    Some(unsent) if reused => {
                        tracing::trace!(error = %error.error(), "idle backend connection unusable, retrying");
                        request = unsent;
                    }
                    _ => return Err(UpstreamError::Request(error.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection that is still open and ready.
    fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = idle.pop_back() {
            if now.duration_since(entry.since) >= self.idle_timeout {
                // The ones below are older still.
                idle.clear();
                return None;
            }
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Puts back a connection whose exchange ended: now if it is ready for the
    /// next request, else once it is (a task waits for that), unless it closes.
    fn put_back(pool: Weak<Self>, mut sender: SendRequest<UpstreamBody>) {
        if sender.is_ready() {
            if let Some(pool) = pool.upgrade() {
                pool.push(sender);
            }
        } else if !sender.is_closed() {
            tokio::spawn(async move {
                if sender.ready().await.is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    pool.push(sender);
                }
            });
        }
    }

    fn push(self: &Arc<Self>, sender: SendRequest<UpstreamBody>) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() >= MAX_IDLE {
                idle.pop_front();
            }
            idle.push_back(Idle {
                sender,
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
            now.duration_since(e.since) >= self.idle_timeout || e.sender.is_closed()
        }) {
            idle.pop_front();
        }
        idle.retain(|e| !e.sender.is_closed());
    }

    /// A new connection: TCP (no delay) to the backend's addresses in turn, the
    /// connect timeout shared among them as hyper-util's connector does, then
    /// the HTTP/1.1 handshake; the connection runs in its own task.
    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
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
        Ok(sender)
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
    slot: Option<(SendRequest<UpstreamBody>, Weak<Http1Pool>)>,
}

impl PooledBody {
    fn new(inner: Incoming, sender: SendRequest<UpstreamBody>, pool: Weak<Http1Pool>) -> Self {
        let mut body = Self {
            inner,
            slot: Some((sender, pool)),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((sender, pool)) = self.slot.take() {
            Http1Pool::put_back(pool, sender);
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
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Either, Full};
    use hyper::service::service_fn;

    use super::*;

    /// A backend answering `size` bytes to every request; counts its connections.
    async fn backend(size: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| async move {
                        let _read = request.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            vec![b'x'; size],
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn pool(addr: SocketAddr) -> Arc<Http1Pool> {
        Arc::new(Http1Pool::new(
            addr.ip().to_string(),
            addr.port(),
            HeaderValue::try_from(addr.to_string()).unwrap(),
            Duration::from_secs(1),
            Duration::from_secs(90),
        ))
    }

    fn request() -> Request<UpstreamBody> {
        Request::builder()
            .uri("/")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_read_through_is_reused() {
        let (addr, accepted) = backend(10).await;
        let pool = pool(addr);
        for _ in 0..5 {
            let response = pool.send(request()).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 10);
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_response_not_read_through_closes_its_connection() {
        let (addr, accepted) = backend(1 << 20).await;
        let pool = pool(addr);
        let response = pool.send(request()).await.unwrap();
        let mut body = response.into_body();
        let _first = body.frame().await.unwrap().unwrap();
        drop(body);
        let response = pool.send(request()).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 1 << 20);
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_the_backend_closed_is_replaced() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers one request per connection, keeping it alive, then closes it
        // while the pool holds it idle.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = stream.read(&mut buf).await.unwrap();
                        assert!(n > 0);
                        head.extend_from_slice(&buf[..n]);
                    }
                    stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                });
            }
        });
        let pool = pool(addr);
        for _ in 0..3 {
            let response = pool.send(request()).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_request_with_a_body_gets_its_answer_and_the_connection_is_reused() {
        let (addr, accepted) = backend(10).await;
        let pool = pool(addr);
        for _ in 0..3 {
            let request = Request::builder()
                .method("POST")
                .uri("/")
                .body(Either::Right(Full::new(Bytes::from(vec![b'y'; 100_000]))))
                .unwrap();
            let response = pool.send(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 10);
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let sent = pool(addr).send(request()).await;
        assert!(matches!(sent, Err(error) if error.is_connect()));
    }
}
