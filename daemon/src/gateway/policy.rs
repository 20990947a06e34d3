//! The hook where request policies (keys, throttling, CORS, validation, header
//! rules) plug into the gateway. Each policy runs after routing, in the order
//! the policies were added, and may stop the request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{Extensions, request, response};

use super::error::Rejection;

/// A request as a policy sees it, after routing and before forwarding.
pub struct RequestContext<'a> {
    /// The name of the API the request was routed to.
    pub api: &'a str,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client's address: the peer, or the client a trusted proxy names in
    /// `X-Forwarded-For`.
    pub client_ip: IpAddr,
    /// The client certificate the TLS layer verified (mTLS), if any.
    pub client_cert: Option<&'a crate::policy::client_cert::ClientCertificate>,
    /// Whether the request has a body.
    pub has_body: bool,
    /// Set by a policy that must see the whole body before it is forwarded: the
    /// gateway collects at most this many bytes and calls [`RequestPolicy::on_body`].
    /// With several policies asking, the smallest limit applies.
    pub collect_body: Option<u64>,
    /// Set by a policy that limits a body forwarded as it comes: past `bytes` (when
    /// fewer than `[gateway] max_body_bytes`) the request is refused with `rejection`
    /// instead of the gateway's own 413.
    pub stream_limit: Option<StreamLimit>,
    /// Set by a policy that wants [`RequestPolicy::on_complete`] with the body
    /// bytes of the exchange.
    pub count_bytes: bool,
    /// Method, URI and headers; a policy may change them (e.g. remove a key) and
    /// the backend receives the changed request.
    pub parts: &'a mut request::Parts,
    /// Carried to [`RequestPolicy::on_response`] of every policy of this request
    /// (e.g. the CORS origin that was allowed).
    pub state: &'a mut Extensions,
    /// The subscription the request was admitted under (or whose genuine key a
    /// policy refused): set by a policy that identifies the caller, reported in the
    /// request's access event. A field, not in `state`: most requests carry one,
    /// and `state` stays empty (unallocated) on the usual path.
    pub subscription: Option<Arc<str>>,
}

/// A policy's limit on a streamed request body, and its answer past it.
#[derive(Debug, Clone)]
pub struct StreamLimit {
    pub bytes: u64,
    /// Makes the answer, called with `bytes` only when a body passes them: most
    /// bodies stay under, and pay nothing for an answer they never get.
    pub rejection: fn(u64) -> Rejection,
}

/// What a policy sees of the response, gateway-made or from the backend.
pub struct ResponseContext<'a> {
    pub api: &'a str,
    pub peer: SocketAddr,
    pub state: &'a Extensions,
}

/// Body bytes that crossed the gateway for one request, reported at its end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// Why a request goes no further.
#[derive(Debug)]
pub enum Stop {
    /// Answered with APIM's JSON error body.
    Reject(Rejection),
    /// Answered by the gateway with this response (e.g. a CORS preflight).
    Respond(Box<http::Response<Bytes>>),
}

impl From<Rejection> for Stop {
    fn from(rejection: Rejection) -> Self {
        Self::Reject(rejection)
    }
}

/// A check or rewrite applied to every routed request.
pub trait RequestPolicy: Send + Sync + 'static {
    /// Lets the request go on (`Ok`) or stops it.
    #[expect(
        clippy::result_large_err,
        reason = "a Rejection (with its HeaderMap) is built only when a request is refused; boxing it would cost an allocation there and buy nothing on the pass path"
    )]
    fn on_request(&self, request: &mut RequestContext<'_>) -> Result<(), Stop>;

    /// The whole request body, when a policy asked for it with
    /// [`RequestContext::collect_body`]; `None` when it was longer than the limit.
    /// Runs for every policy, in order, after all `on_request`s passed.
    #[expect(
        clippy::result_large_err,
        reason = "a Rejection (with its HeaderMap) is built only when a request is refused; boxing it would cost an allocation there and buy nothing on the pass path"
    )]
    fn on_body(
        &self,
        _request: &mut RequestContext<'_>,
        _body: Option<&Bytes>,
    ) -> Result<(), Stop> {
        Ok(())
    }

    /// The body bytes of the exchange, once the response body has ended (or the
    /// client went away), when a policy asked with [`RequestContext::count_bytes`].
    fn on_complete(&self, _response: &ResponseContext<'_>, _transferred: Transferred) {}

    /// Adjusts the response headers of every routed request, including rejections
    /// made by this or another policy. Runs in reverse order of `on_request`.
    fn on_response(&self, _response: &ResponseContext<'_>, _parts: &mut response::Parts) {}
}
