//! A panic while a request is handled (routing, policies, forwarding) is caught
//! around that request's future: the client gets 500 with the gateway's JSON error
//! body, the panic is logged (the panic hook, `lifecycle::panics`) and counted,
//! and the connection and the daemon go on serving.
//!
//! What the catch cannot cover: a panic while hyper polls a response body that is
//! already being sent (a streamed backend body). That panic ends the
//! connection's task (Tokio catches it): the client sees the connection close
//! mid-response; the daemon goes on.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;

use super::GatewayStats;
use super::activity::Activity;
use super::error::Rejection;
use super::handler::{Connection, HandledBody, Shared, handle};

/// [`handle`], with a panic answered `500 {"statusCode":500,"message":"Internal
/// server error"}`.
pub(crate) async fn handle_catching(
    shared: Arc<Shared>,
    conn: Connection,
    request: Request<Incoming>,
    activity: &Arc<Activity>,
) -> Result<Response<HandledBody>, Infallible> {
    let stats = Arc::clone(&shared.stats);
    let peer = conn.peer;
    // Unwind safety: what the request's future shares with others (counters,
    // caches, policy state behind mutexes that ignore poisoning) stays consistent
    // at every await point; a half-done request is abandoned whole.
    let handled = AssertUnwindSafe(async move {
        #[cfg(debug_assertions)]
        crate::lifecycle::panics::inject_request_fault(request.headers());
        handle(shared, conn, request, activity).await
    })
    .catch_unwind()
    .await;
    match handled {
        Ok(response) => response,
        Err(_panic) => {
            // The hook logged the message and location already.
            GatewayStats::bump(&stats.request_panics);
            stats.count_rejection(INTERNAL_ERROR_REASON);
            tracing::error!(%peer, "request handler panicked; answered 500");
            let response: Response<Full<Bytes>> = internal_error().into_response();
            Ok(response.map(|body| {
                HandledBody::Plain(body.map_err(|never| match never {}).boxed_unsync())
            }))
        }
    }
}

/// The `LastError` reason of a request whose handler panicked.
pub(crate) const INTERNAL_ERROR_REASON: &str = "InternalError";

fn internal_error() -> Rejection {
    Rejection::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal server error",
        INTERNAL_ERROR_REASON,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_error_has_the_gateway_body() {
        let body = internal_error().body();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["statusCode"], 500);
        assert_eq!(json["message"], "Internal server error");
    }
}
