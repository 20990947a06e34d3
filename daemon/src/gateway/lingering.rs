//! Lingering close: after the gateway ends a connection, it reads and discards what
//! the client still sends, for a while, before closing the socket.
//!
//! A socket closed with unread bytes in its receive buffer, or that receives bytes
//! after it was closed, answers with a reset. A client still sending (the rest of
//! an upload refused with 413, a pipelined request after a 400) then gets
//! "connection reset" on its next write, and stacks that discard received data on
//! a reset (Windows among them) lose the gateway's answer too. nginx reads on for
//! the same reason (`lingering_close`, `lingering_timeout` 5 s, `lingering_time`
//! 30 s), and so does this: the gateway's side is shut (FIN), then bytes are read and
//! dropped until the client closes its side, sends nothing for `lingering_timeout`,
//! or `lingering_time` has passed.
//!
//! The socket comes back from the HTTP side through [`Returning`]: hyper and the TLS
//! stream own it while they serve, and drop it when the connection is done.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::settings::Limits;

/// A client socket that goes back to the connection's owner when the HTTP side
/// drops it.
pub(crate) struct Returning {
    stream: Option<TcpStream>,
    back: Option<oneshot::Sender<TcpStream>>,
}

impl Returning {
    /// The socket to serve on, and where it comes back once served.
    pub(crate) fn new(stream: TcpStream) -> (Self, oneshot::Receiver<TcpStream>) {
        let (back, returned) = oneshot::channel();
        let returning = Self {
            stream: Some(stream),
            back: Some(back),
        };
        (returning, returned)
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.stream.as_mut() {
            Some(stream) => Ok(Pin::new(stream)),
            // Only in drop, after which nothing polls it.
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            // The owner may be gone (its task aborted): the socket closes here.
            let _ = back.send(stream);
        }
    }
}

impl AsyncRead for Returning {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for Returning {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_shutdown(cx)
    }
}

/// How long a closing connection reads on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lingering {
    /// The longest wait for the client's next bytes; zero: no lingering.
    pub(crate) timeout: Duration,
    /// The longest lingering in all.
    pub(crate) time: Duration,
}

impl Lingering {
    pub(crate) fn of(limits: &Limits) -> Self {
        Self {
            timeout: limits.lingering_timeout,
            time: limits.lingering_time,
        }
    }

    /// One read of what the client sends, given the time left for it: `None` when
    /// the client fell silent or lingering is over (after `deadline`).
    async fn read<T>(self, deadline: Instant, read: impl Future<Output = T>) -> Option<T> {
        let wait = self
            .timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::timeout(wait, read).await.ok()
    }
}

/// The HTTP/2 counterpart of lingering: reads and drops the body of a request the
/// gateway answered before reading it, so that the client finishes its upload and
/// reads the answer. Dropped at once, the body would reset the stream while the
/// client sends, and clients such as curl (7.88) then report a stream error instead
/// of the answer, where nginx's 413 reaches them.
pub(crate) async fn discard(mut body: Incoming, lingering: Lingering) {
    if lingering.timeout.is_zero() {
        return;
    }
    let deadline = Instant::now() + lingering.time;
    // Until the body's end, an error, silence or the deadline.
    while let Some(Some(Ok(_))) = lingering.read(deadline, body.frame()).await {}
}

/// Shuts the gateway's side of `stream` (if the HTTP side has not) and reads and
/// drops what the client sends until it closes its side, falls silent for
/// `lingering.timeout`, or `lingering.time` is over. The socket closes when it is
/// dropped, after this returns.
pub(crate) async fn linger(mut stream: TcpStream, lingering: Lingering) {
    if lingering.timeout.is_zero() {
        return;
    }
    // A second shutdown of the same side changes nothing; its error is moot.
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + lingering.time;
    let mut sink = vec![0u8; 16 * 1024];
    // Until the client closes its side (0), an error, silence or the deadline.
    while let Some(Ok(n)) = lingering.read(deadline, stream.read(&mut sink)).await
        && n > 0
    {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_socket_comes_back_when_the_serving_side_drops_it() {
        let (mut client, server) = pair().await;
        let (mut returning, returned) = Returning::new(server);
        returning.write_all(b"hello").await.unwrap();
        drop(returning);
        let mut server = returned.await.expect("returned on drop");
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // Still open: it serves on.
        server.write_all(b"!").await.unwrap();
        client.read_exact(&mut got[..1]).await.unwrap();
        assert_eq!(got[0], b'!');
    }

    #[tokio::test]
    async fn lingering_reads_until_the_client_closes_and_then_closes_cleanly() {
        let (mut client, server) = pair().await;
        let lingering = Lingering {
            timeout: Duration::from_secs(5),
            time: Duration::from_secs(30),
        };
        let lingered = tokio::spawn(linger(server, lingering));
        // The gateway's side is shut: the client reads the end at once.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        // Far more than the socket buffers hold: without reading, the writes would
        // stall, and a close would reset.
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..256 {
            client
                .write_all(&chunk)
                .await
                .expect("no reset while lingering");
        }
        client.shutdown().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), lingered)
            .await
            .expect("lingering ends when the client closes")
            .unwrap();
    }

    /// How long `linger` ran on `server` with `timeout` and `time` (in ms).
    async fn lingered(server: TcpStream, timeout: u64, time: u64) -> Duration {
        let start = Instant::now();
        let lingering = Lingering {
            timeout: Duration::from_millis(timeout),
            time: Duration::from_millis(time),
        };
        linger(server, lingering).await;
        start.elapsed()
    }

    #[tokio::test]
    async fn lingering_stops_when_the_client_falls_silent_or_time_is_up() {
        let bound = Duration::from_secs(5);
        // Silent: over after the timeout, long before the lingering time.
        let (_client, server) = pair().await;
        let took = lingered(server, 200, 10_000).await;
        assert!(
            took >= Duration::from_millis(200) && took < bound,
            "{took:?}"
        );
        // Trickling a byte every 50 ms: over after the lingering time.
        let (mut client, server) = pair().await;
        let trickle = tokio::spawn(async move {
            while client.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let took = lingered(server, 200, 600).await;
        assert!(
            took >= Duration::from_millis(600) && took < bound,
            "{took:?}"
        );
        trickle.abort();
        // Off: returns at once, the client still sending.
        let (mut client, server) = pair().await;
        client.write_all(b"x").await.unwrap();
        let took = lingered(server, 0, 10_000).await;
        assert!(took < bound, "{took:?}");
    }
}
