//! A connector whose whole connect, the TLS handshake to an `https://` backend
//! included, is bounded by the API's `connect_secs`, as nginx bounds the upstream
//! TLS handshake by `proxy_connect_timeout`. hyper-util's `HttpConnector` bounds
//! only the TCP connect: a backend that accepted TCP and never finished TLS held
//! the request until `response_secs` and was reported as late (504), not as a
//! connection failure (502).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use tower_service::Service;

use super::BoxError;

/// `inner`, its connect future cut at `timeout`.
#[derive(Clone)]
pub(super) struct TimedConnect<C> {
    pub(super) inner: C,
    pub(super) timeout: Duration,
}

impl<C> Service<Uri> for TimedConnect<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_elapsed) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting (TLS handshake included) took over {timeout:?}"),
                )) as BoxError),
            }
        })
    }
}
