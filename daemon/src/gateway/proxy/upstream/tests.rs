//! The HTTP/1.1 pool against real backends on loopback: hyper servers, and raw
//! ones that close a connection where a test wants it closed.

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
    counted_pool(addr, Arc::default())
}

/// A pool counting its retries in `metrics`.
fn counted_pool(addr: SocketAddr, metrics: Arc<ApiMetrics>) -> Arc<Http1Pool> {
    Arc::new(Http1Pool::new(
        addr.ip().to_string(),
        addr.port(),
        HeaderValue::try_from(addr.to_string()).unwrap(),
        Duration::from_secs(1),
        Duration::from_secs(90),
        metrics,
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

/// What a raw backend does with the request it just read.
#[derive(Clone, Copy)]
enum Reply {
    /// Writes these bytes and waits for the next request on the connection.
    Answer(&'static [u8]),
    /// Writes these bytes (none: answers nothing) and closes the connection.
    Close(&'static [u8]),
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A backend that reads request heads (no bodies) and does with each what
/// `reply` says for its number on its connection (0 for the first); it records
/// each request line with the number of the connection it came on.
async fn raw_backend(reply: fn(usize) -> Reply) -> (SocketAddr, Arc<Mutex<Vec<(usize, String)>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::clone(&seen);
    tokio::spawn(async move {
        for connection in 0.. {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                for n in 0.. {
                    let end = loop {
                        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                    buffer.drain(..end + 4);
                    let line = head.lines().next().unwrap_or("").to_owned();
                    requests.lock().unwrap().push((connection, line));
                    match reply(n) {
                        Reply::Answer(bytes) => stream.write_all(bytes).await.unwrap(),
                        Reply::Close(bytes) => {
                            let _ = stream.write_all(bytes).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Answers the first request on a connection, keeping it open, and closes it
/// unanswered when the next one comes: a keep-alive timeout that ran out just
/// as the connection was reused.
fn first_only(n: usize) -> Reply {
    if n == 0 {
        Reply::Answer(OK)
    } else {
        Reply::Close(b"")
    }
}

async fn send_within(
    pool: &Arc<Http1Pool>,
    request: Request<UpstreamBody>,
) -> Result<Bytes, UpstreamError> {
    let sent = tokio::time::timeout(Duration::from_secs(10), pool.send(request))
        .await
        .expect("no answer within 10 s")?;
    Ok(sent.into_body().collect().await.unwrap().to_bytes())
}

fn retries(metrics: &crate::gateway::metrics::HttpMetrics) -> u64 {
    metrics.snapshot().iter().map(|a| a.backend_retries).sum()
}

fn line(connection: usize, line: &str) -> (usize, String) {
    (connection, line.to_owned())
}

#[tokio::test]
async fn a_get_on_a_reused_connection_closed_unanswered_is_sent_again_on_a_new_one() {
    let (addr, requests) = raw_backend(first_only).await;
    let metrics = crate::gateway::metrics::HttpMetrics::default();
    let pool = counted_pool(addr, metrics.api("t"));
    assert_eq!(send_within(&pool, request()).await.unwrap(), "ok");
    // Idle long enough for a backend's keep-alive timeout.
    tokio::time::sleep(REPLAY_AFTER_IDLE).await;
    assert_eq!(send_within(&pool, request()).await.unwrap(), "ok");
    assert_eq!(
        *requests.lock().unwrap(),
        [
            line(0, "GET / HTTP/1.1"),
            line(0, "GET / HTTP/1.1"),
            line(1, "GET / HTTP/1.1")
        ]
    );
    assert_eq!(retries(&metrics), 1);
}

#[tokio::test]
async fn a_get_on_a_connection_used_within_the_second_is_not_sent_again() {
    let (addr, requests) = raw_backend(first_only).await;
    let metrics = crate::gateway::metrics::HttpMetrics::default();
    let pool = counted_pool(addr, metrics.api("t"));
    assert_eq!(send_within(&pool, request()).await.unwrap(), "ok");
    let sent = send_within(&pool, request()).await;
    assert!(matches!(&sent, Err(UpstreamError::Request(_))), "{sent:?}");
    assert_eq!(
        *requests.lock().unwrap(),
        [line(0, "GET / HTTP/1.1"), line(0, "GET / HTTP/1.1")]
    );
    assert_eq!(retries(&metrics), 0);
}

#[tokio::test]
async fn a_post_with_a_body_is_never_sent_twice() {
    let (addr, requests) = raw_backend(first_only).await;
    let metrics = crate::gateway::metrics::HttpMetrics::default();
    let pool = counted_pool(addr, metrics.api("t"));
    assert_eq!(send_within(&pool, request()).await.unwrap(), "ok");
    tokio::time::sleep(REPLAY_AFTER_IDLE).await;
    let post = Request::builder()
        .method("POST")
        .uri("/")
        .body(Either::Right(Full::new(Bytes::from_static(b"once"))))
        .unwrap();
    // Closed, or reset when the body came after the head was read.
    let sent = send_within(&pool, post).await;
    assert!(matches!(&sent, Err(UpstreamError::Request(_))), "{sent:?}");
    assert_eq!(
        *requests.lock().unwrap(),
        [line(0, "GET / HTTP/1.1"), line(0, "POST / HTTP/1.1")]
    );
    assert_eq!(retries(&metrics), 0);
}

#[tokio::test]
async fn a_get_whose_answer_had_begun_is_not_sent_again() {
    fn cut_in_the_head(n: usize) -> Reply {
        if n == 0 {
            Reply::Answer(OK)
        } else {
            Reply::Close(b"HTTP/1.1 200 OK\r\nContent-")
        }
    }
    let (addr, requests) = raw_backend(cut_in_the_head).await;
    let pool = pool(addr);
    assert_eq!(send_within(&pool, request()).await.unwrap(), "ok");
    tokio::time::sleep(REPLAY_AFTER_IDLE).await;
    let sent = send_within(&pool, request()).await;
    assert!(
        matches!(&sent, Err(UpstreamError::Request(e)) if e.is_incomplete_message()),
        "{sent:?}"
    );
    assert_eq!(requests.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_get_failing_on_a_new_connection_is_not_retried() {
    let (addr, requests) = raw_backend(|_| Reply::Close(b"")).await;
    let metrics = crate::gateway::metrics::HttpMetrics::default();
    let pool = counted_pool(addr, metrics.api("t"));
    let sent = send_within(&pool, request()).await;
    assert!(
        matches!(&sent, Err(UpstreamError::Request(e)) if e.is_incomplete_message()),
        "{sent:?}"
    );
    assert_eq!(*requests.lock().unwrap(), [line(0, "GET / HTTP/1.1")]);
    assert_eq!(retries(&metrics), 0);
}
