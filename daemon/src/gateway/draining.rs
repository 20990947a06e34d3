//! A gentler end for HTTP/1.1 keep-alive connections when rampartd stops.
//!
//! Closing an idle keep-alive connection races with the client's next request:
//! a client that writes a request as the close arrives sees the connection end
//! without an answer (wrk counts a read error; most HTTP clients retry an
//! idempotent request, but not a POST). So at shutdown the listener first stops
//! accepting, then waits a short "lame duck" period during which every HTTP/1.x
//! answer carries `Connection: close`: a busy connection ends cleanly after its
//! next answer, and the client opens a new one (with socket activation it waits
//! in the backlog for the next rampartd). Only then are the connections still
//! open (idle ones) shut down gracefully, as before. HTTP/2 needs none of this:
//! GOAWAY tells the client which streams were served.
//!
//! A listener removed by a reload is not the daemon stopping: it drains at once.

use std::time::Duration;

use http::header::{CONNECTION, HeaderValue};
use http::{Response, Version};
use hyper_util::server::graceful::GracefulShutdown;
use tokio_util::sync::CancellationToken;

/// How long a stopping listener lets busy keep-alive connections end after
/// their next answer (at most half the drain timeout).
const LAME_DUCK: Duration = Duration::from_millis(250);

/// Marks an HTTP/1.x answer `Connection: close` once the daemon is stopping;
/// hyper then closes the connection after writing it.
pub(crate) fn close_when_stopping<B>(
    response: &mut Response<B>,
    version: Version,
    shutdown: &CancellationToken,
) {
    if version < Version::HTTP_2 && shutdown.is_cancelled() {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// When the daemon is stopping and connections are open, waits until they have
/// ended or the lame-duck period is over, whichever comes first. Returns the
/// drain time left.
pub(crate) async fn lame_duck(
    graceful: &GracefulShutdown,
    shutdown: &CancellationToken,
    drain_timeout: Duration,
) -> Duration {
    if !shutdown.is_cancelled() {
        return drain_timeout;
    }
    let started = tokio::time::Instant::now();
    let until = started + LAME_DUCK.min(drain_timeout / 2);
    while graceful.count() > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drain_timeout.saturating_sub(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http1_answers_get_connection_close_and_only_when_stopping() {
        let shutdown = CancellationToken::new();
        let mut response = Response::new(());
        close_when_stopping(&mut response, Version::HTTP_11, &shutdown);
        assert!(response.headers().get(CONNECTION).is_none());
        shutdown.cancel();
        close_when_stopping(&mut response, Version::HTTP_2, &shutdown);
        assert!(response.headers().get(CONNECTION).is_none());
        close_when_stopping(&mut response, Version::HTTP_11, &shutdown);
        assert_eq!(response.headers()[CONNECTION], "close");
    }
}
