//! One request: limits, routing, policies, forwarding, access log.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderValue};
use http::uri::PathAndQuery;
use http::{Extensions, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use ipnet::IpNet;

use super::activity::Activity;
use super::error::{self, ALLOWED_METHODS, Rejection};
use super::forwarded::{ClientHop, client_ip, remove_hop_by_hop, set_forwarding_headers};
use super::framing::Verdict;
use super::lingering::Lingering;
use super::path;
use super::policy::{RequestContext, RequestPolicy, ResponseContext, Stop, Transferred};
use super::proxy::{Backend, ClientBody, UpstreamBody, declared_length};
use super::routing::{RouteTable, request_host_value, valid_authority};
use super::settings::{AccessLog, Limits, is_trusted};
use super::sources::{InFlight, SourceRequests};
use super::{GatewayStats, RejectionSink, ResponseBody};
use crate::policy::client_cert::ClientCertificate;

/// One generation of the gateway: what a request is served with from start to
/// end. A reload installs a new one; requests in flight keep theirs.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) routes: Arc<RouteTable<Backend>>,
    pub(crate) limits: Limits,
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) access_log: AccessLog,
    pub(crate) policies: Vec<Arc<dyn RequestPolicy>>,
    /// The same counters in every generation.
    pub(crate) stats: Arc<GatewayStats>,
    /// Told about every gateway-made rejection (auto-bans).
    pub(crate) rejections: Option<Arc<dyn RejectionSink>>,
    /// HTTP/1.1 + HTTP/2 settings of the connections accepted under this generation.
    pub(crate) http: Arc<auto::Builder<TokioExecutor>>,
    /// One permit per request in flight to a backend (`max_backend_requests`): the
    /// same semaphore in every generation, resized by the server.
    pub(crate) backend_requests: Arc<tokio::sync::Semaphore>,
}

/// The connection a request came on.
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) peer: SocketAddr,
    /// The configured address of the listener that accepted it: only the APIs that
    /// listener serves are routed to.
    pub(crate) listener: SocketAddr,
    /// `https` or `http`.
    pub(crate) proto: &'static str,
    /// The client certificate the TLS layer verified, if any.
    pub(crate) client_cert: Option<Arc<ClientCertificate>>,
    /// Its source's requests in flight to backends
    /// (`max_backend_requests_per_source`); `None` for a trusted proxy.
    pub(crate) source_requests: Option<SourceRequests>,
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Connection,
    request: Request<Incoming>,
    activity: &Arc<Activity>,
) -> Result<Response<HandledBody>, Infallible> {
    let started = Instant::now();
    GatewayStats::bump(&shared.stats.requests);
    let verdict = request
        .extensions()
        .get::<Verdict>()
        .copied()
        .unwrap_or(Verdict::Plain);
    // A stand-in for a head hyper would refuse has no method or path of its own.
    let stand_in = matches!(verdict, Verdict::Refused(_));
    let method = (!stand_in).then(|| request.method().clone());
    let path =
        (shared.access_log != AccessLog::Off && !stand_in).then(|| request.uri().path().to_owned());
    let version = request.version();
    // Over HTTP/1, a body the gateway's own answer leaves unsent or broken ends the
    // connection after the answer; the answer says so (below).
    let body_pending = version < Version::HTTP_2 && !request.body().is_end_stream();
    let expects_continue = body_pending
        && request
            .headers()
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    // Over HTTP/2, a body the gateway leaves unread (it answered first, or the body
    // was cut off at its limit) is read and dropped when it is dropped (`ClientBody`).
    let lingering = Lingering::of(&shared.limits);
    let request = request.map(|body| ClientBody::new(body, version, lingering));
    // Reported as a client that went away if hyper drops this future before the
    // answer is handed to it (`Unfinished`); completed below once it is.
    let mut unfinished = Unfinished {
        report: Some(Report {
            shared,
            backend: None,
            peer: conn.peer,
            method,
            path,
            status: 0,
            latency: std::time::Duration::ZERO,
            api: None,
            subscription: None,
            reason: None,
            bytes_sent: 0,
        }),
        refusal_told: false,
        started,
        activity,
    };
    let mut outcome = {
        let Some(report) = unfinished.report.as_mut() else {
            unreachable!("set just above")
        };
        process(&report.shared, &conn, request, verdict, &mut report.backend).await
    };
    let head = unfinished
        .report
        .as_ref()
        .is_some_and(|report| report.method == Some(http::Method::HEAD));
    if let Some(reason) = outcome.reason
        && reason == error::CLIENT_CONNECTION_FAILURE
        && activity.was_cut_off()
    {
        // The request body stopped because the gateway cut the connection at the
        // end of its drain time, not because the client went away.
        outcome = rejected(Rejection::drain_cut(), outcome.api);
    }
    if body_pending
        && outcome.reason.is_some()
        && (expects_continue
            || matches!(
                outcome.response.status(),
                StatusCode::BAD_REQUEST
                    | StatusCode::REQUEST_TIMEOUT
                    | StatusCode::PAYLOAD_TOO_LARGE
            ))
    {
        // The gateway's answer leaves the body unread (413, a body too slow, a
        // request refused before its `100-continue` was granted, so the client
        // never sent the body) or broken (400 for bad chunking): hyper closes the
        // connection after the answer, and the answer says so (as nginx's does;
        // RFC 9112 §9.6), so that the client does not send its next request on it.
        // The socket lingers (lingering.rs) so that a client still sending reads
        // the answer. Other answers to a request with a body (401, 429, ...) keep
        // the connection when hyper finds the body already received.
        outcome
            .response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if outcome.reason.is_some() && head {
        // The gateway's own answer to a HEAD has no content (RFC 9110 §9.3.2), and
        // keeps the `Content-Length` a GET would have had. hyper leaves the body out
        // over HTTP/1 only; over HTTP/2 it would send it, which clients take for a
        // protocol error and never see the status.
        let (parts, _) = std::mem::take(&mut outcome.response).into_parts();
        outcome.response = full(Response::from_parts(parts, Bytes::new()));
    }
    if let Some(reason) = outcome.reason {
        let status = outcome.response.status().as_u16();
        let subscription = outcome.subscription.as_deref();
        let Some(report) = unfinished.report.as_ref() else {
            unreachable!("taken only below")
        };
        let done = refused(
            &report.shared,
            conn.peer,
            reason,
            status,
            outcome.api.as_deref(),
            subscription,
        );
        // Counted and told: a client that goes away while the answer waits is
        // reported (`Unfinished`), not counted again.
        unfinished.refusal_told = true;
        if let Some(done) = done {
            let _ = tokio::time::timeout(super::REJECTION_WAIT, done).await;
        }
    }
    let Some(mut report) = unfinished.report.take() else {
        unreachable!("taken only here")
    };
    let Outcome {
        response,
        api,
        subscription,
        reason,
        streamed,
        on_end,
    } = outcome;
    report.status = response.status().as_u16();
    report.latency = started.elapsed();
    report.api = api;
    report.subscription = subscription;
    report.reason = reason;
    // A backend's body may still fail (the backend closes or resets before its
    // end, the client goes away, the drain time ends): the counters and the
    // access event wait for the body's end to say so. A body the gateway made is
    // reported now.
    let report = if streamed {
        Some(report)
    } else {
        // A body the gateway made, whole in memory.
        report.bytes_sent = response.body().size_hint().exact().unwrap_or(0);
        report.done(BodyEnd::Whole);
        None
    };
    if report.is_none() && on_end.is_none() {
        return Ok(response.map(HandledBody::Plain));
    }
    let activity = Arc::clone(activity);
    // Not boxed again: the body is already a box of its own.
    Ok(response.map(|body| {
        HandledBody::Reported(Reported {
            inner: body,
            bytes: 0,
            ended: false,
            on_end,
            report,
            activity,
        })
    }))
}

/// A response body as the handler hands it on: reported at its end, or not (a
/// gateway-made answer, reported when made). Not boxed once more over the body's
/// own box. Not `http_body_util::Either`: its `Body` bounds (`Into<Box<dyn Error>>`
/// on each side's error) are not proven general enough for the connection's
/// spawned future.
#[expect(
    clippy::large_enum_variant,
    reason = "most responses are a backend's, reported: boxing that variant would bring back the allocation per request this type saves"
)]
pub(crate) enum HandledBody {
    Reported(Reported),
    Plain(ResponseBody),
}

impl Body for HandledBody {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Reported(body) => Pin::new(body).poll_frame(cx),
            Self::Plain(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Reported(body) => body.is_end_stream(),
            Self::Plain(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Reported(body) => body.size_hint(),
            Self::Plain(body) => body.size_hint(),
        }
    }
}

/// The reason of a response whose backend body failed after its head was sent:
/// APIM's reason for a backend that aborts.
const BODY_CUT_OFF: &str = "BackendConnectionFailure";

/// How a response body ended.
enum BodyEnd<'a> {
    /// Sent whole (or it had none to send).
    Whole,
    /// The backend's body failed before its end.
    BackendFailed(&'a (dyn std::error::Error + 'static)),
    /// hyper dropped it before its end: the client went away (its connection
    /// closed, or its HTTP/2 stream reset).
    ClientGone,
    /// The gateway cut its connection at the end of the drain time.
    Drained,
    /// The gateway cut it (its connection over HTTP/1, its stream over HTTP/2)
    /// when it did not move for the idle timeout.
    Idle,
}

/// What a request's counters and access event say, once its response has ended.
struct Report {
    shared: Arc<Shared>,
    /// The API's backend (its request counters); `None` before routing.
    backend: Option<Arc<Backend>>,
    peer: SocketAddr,
    method: Option<http::Method>,
    path: Option<String>,
    /// As sent: a body cut off later does not change it.
    status: u16,
    /// From the request's arrival to its response head.
    latency: std::time::Duration,
    api: Option<Arc<str>>,
    subscription: Option<Arc<str>>,
    reason: Option<&'static str>,
    /// Response body bytes handed on to the client's connection (as nginx's
    /// `$body_bytes_sent`: up to the cut for a body cut before its end).
    bytes_sent: u64,
}

impl Report {
    /// Counts the response and writes its access event; `end` says how its body
    /// ended (a body cut before its end has the reason of the cut, its status
    /// stays the one sent).
    fn done(mut self, end: BodyEnd<'_>) {
        let cut = match end {
            BodyEnd::Whole => None,
            BodyEnd::BackendFailed(error) => {
                // As nginx's "upstream prematurely closed connection" and Envoy's
                // UPE: the client got the head, then a cut connection (HTTP/1) or
                // a reset stream (HTTP/2).
                tracing::warn!(
                    api = self.api.as_deref().unwrap_or("-"),
                    status = self.status,
                    error = %super::proxy::Chain(error),
                    "backend response body cut off; the client's response is incomplete"
                );
                Some(BODY_CUT_OFF)
            }
            BodyEnd::ClientGone => {
                tracing::debug!(
                    api = self.api.as_deref().unwrap_or("-"),
                    peer = %self.peer,
                    "client went away before the end of its response body"
                );
                Some(error::CLIENT_CONNECTION_FAILURE)
            }
            // The drain's warning says what happened, and the idle timeout's line.
            BodyEnd::Drained => Some(error::DRAIN_TIMEOUT),
            BodyEnd::Idle => Some(error::IDLE_TIMEOUT),
        };
        if let Some(reason) = cut {
            self.reason = Some(reason);
            self.shared.stats.count_rejection(reason);
        }
        let api_metrics = match &self.backend {
            Some(backend) => backend.metrics.as_ref(),
            None => self.shared.stats.http.unrouted(),
        };
        api_metrics.record(self.status, self.reason, self.latency);
        let logged = match self.shared.access_log {
            AccessLog::All => true,
            AccessLog::Errors => self.status >= 400 || cut.is_some(),
            AccessLog::Off => false,
        };
        if !logged {
            return;
        }
        tracing::info!(
            target: "rampart::access",
            peer = %self.peer,
            method = self.method.as_ref().map_or("-", http::Method::as_str),
            path = self.path.as_deref().unwrap_or("-"),
            status = self.status,
            latency_us = u64::try_from(self.latency.as_micros()).unwrap_or(u64::MAX),
            bytes_sent = self.bytes_sent,
            api = self.api.as_deref().unwrap_or("-"),
            subscription = self.subscription.as_deref().unwrap_or("-"),
            reason = self.reason.unwrap_or("-"),
            // The journal shows only MESSAGE by default (`journalctl -u rampartd`).
            "{} {} {}",
            self.method.as_ref().map_or("-", http::Method::as_str),
            self.path.as_deref().unwrap_or("-"),
            self.status,
        );
    }
}

/// A request whose answer has not been handed to hyper yet. hyper drops the
/// handler's future when the client goes away first: over HTTP/2, a client that
/// resets its stream or closes its connection (in the middle of its request body,
/// while the backend has not answered, or while a refusal waits for its ban); over
/// HTTP/1, a client that closes its connection. The request is then reported as
/// APIM reports a client that went away (`ClientConnectionFailure`; its access
/// event and counters), or as cut by the drain when the gateway cut the
/// connection.
struct Unfinished<'a> {
    /// The request as far as it is known (its API's backend once routed);
    /// `None` once its answer is handed on.
    report: Option<Report>,
    /// Its refusal was counted and told to the rejection sink (the answer waits
    /// for what the sink started): not counted again if the client goes away.
    refusal_told: bool,
    started: Instant,
    /// Its connection's: whether the gateway cut it.
    activity: &'a Activity,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        let Some(mut report) = self.report.take() else {
            return;
        };
        if std::thread::panicking() {
            // A handler that panicked is answered and counted by panics.rs.
            return;
        }
        report.latency = self.started.elapsed();
        report.api = report.backend.as_ref().map(|backend| backend.name.clone());
        if self.activity.was_cut_off() {
            // The gateway cut the connection at the end of its drain time (a stop,
            // or a listener a reload removed): not the client's doing, and the
            // drain's warning says so.
            tracing::debug!(peer = %report.peer, "request cut off at the end of the drain time");
            let rejection = Rejection::drain_cut();
            report.status = rejection.status.as_u16();
            report.reason = Some(rejection.reason);
            if !self.refusal_told {
                report.shared.stats.count_rejection(rejection.reason);
            }
            report.done(BodyEnd::Whole);
            return;
        }
        let rejection = Rejection::client_gone();
        report.status = rejection.status.as_u16();
        report.reason = Some(rejection.reason);
        tracing::debug!(
            api = report.api.as_deref().unwrap_or("-"),
            peer = %report.peer,
            "client went away before the answer to its request"
        );
        if !self.refusal_told {
            // Nobody waits for an answer: nothing waits for the sink either.
            let _ = refused(
                &report.shared,
                report.peer,
                rejection.reason,
                report.status,
                report.api.as_deref(),
                None,
            );
        }
        report.done(BodyEnd::Whole);
    }
}

/// Counts a refused request by its reason, records its security event and tells
/// the rejection sink about its TCP peer (never a forwarded address: a ban applies
/// to what the kernel sees); returns what the sink asks the answer to wait for.
fn refused(
    shared: &Shared,
    peer: SocketAddr,
    reason: &'static str,
    status: u16,
    api: Option<&str>,
    subscription: Option<&str>,
) -> Option<tokio::sync::oneshot::Receiver<()>> {
    shared.stats.count_rejection(reason);
    super::security_events::SECURITY_EVENTS.record(
        super::security_events::Rejected {
            src_ip: peer.ip(),
            reason,
            status,
            api,
            subscription,
        },
        Instant::now(),
    );
    shared
        .rejections
        .as_ref()
        .and_then(|sink| sink.rejected(peer.ip(), reason))
}

/// A response body that, when it ends (sent whole, failed, or dropped before its
/// end), hands its byte count to `on_end` and reports its request (a backend's
/// body: how it ended is in the event).
pub(crate) struct Reported {
    inner: ResponseBody,
    /// Data bytes so far.
    bytes: u64,
    /// Its end was reached (or it failed): a drop is no cut.
    ended: bool,
    on_end: Option<OnEnd>,
    report: Option<Report>,
    /// Its connection's: whether the gateway cut it (a body dropped before its
    /// end is then the drain's doing, not the client's).
    activity: Arc<Activity>,
}

impl Reported {
    fn finish(&mut self, end: BodyEnd<'_>) {
        self.ended = true;
        if let Some(on_end) = self.on_end.take() {
            on_end(self.bytes);
        }
        if let Some(mut report) = self.report.take() {
            report.bytes_sent = self.bytes;
            report.done(end);
        }
    }

    /// Why hyper dropped the body before it saw its end: a response with no
    /// content to send (to a HEAD, a 204 or a 304, which hyper does not poll) is
    /// whole; else the gateway cut the connection (the drain) or the body (the
    /// idle timeout), or the client went away (HTTP/1: its connection closed; HTTP/2: its stream reset or its
    /// connection closed).
    fn dropped_end(&self) -> BodyEnd<'static> {
        let no_content = self.report.as_ref().is_some_and(|report| {
            report.method == Some(http::Method::HEAD) || matches!(report.status, 204 | 304)
        });
        if no_content || self.inner.is_end_stream() {
            BodyEnd::Whole
        } else if self.activity.was_cut_off() {
            BodyEnd::Drained
        } else if self.activity.was_idle_cut() {
            BodyEnd::Idle
        } else {
            BodyEnd::ClientGone
        }
    }
}

impl Drop for Reported {
    fn drop(&mut self) {
        if !self.ended {
            let end = self.dropped_end();
            self.finish(end);
        }
    }
}

impl Body for Reported {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish(BodyEnd::Whole);
                }
            }
            Poll::Ready(Some(Err(error))) => self.finish(BodyEnd::BackendFailed(error.as_ref())),
            Poll::Ready(None) => self.finish(BodyEnd::Whole),
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

/// Methods the gateway never forwards, whatever the API (405, as nginx answers):
/// a backend answering TRACE echoes the request it received, with the headers the
/// gateway added (the `backend_auth` credential, claim and certificate headers) to
/// the client; CONNECT asks the backend for a tunnel, which an API gateway does not
/// offer (hyper serves no upgrades here). APIM answers both with 404, as methods of
/// no operation.
pub(crate) fn refused_method(method: &http::Method) -> bool {
    // Methods are case-sensitive (RFC 9110 §9.1), but not every backend compares
    // them so (one may take `trace` for `TRACE`): any case is refused.
    let method = method.as_str();
    method.eq_ignore_ascii_case("TRACE") || method.eq_ignore_ascii_case("CONNECT")
}

/// A request for `*` (asterisk form) names the server, no API's resource: `OPTIONS *`
/// (RFC 9110 §9.3.7) is answered by the gateway with the methods it lets through;
/// any other method with `*` is malformed (RFC 9112 §3.2.4). Neither is routed:
/// no API prefix would stand in front of `*` at the backend.
fn asterisk(shared: &Shared, method: &http::Method) -> Outcome {
    if *method != http::Method::OPTIONS {
        return refused_malformed(shared, Rejection::asterisk(), None);
    }
    let mut response = Response::new(Bytes::new());
    response.headers_mut().insert(
        http::header::ALLOW,
        HeaderValue::from_static(ALLOWED_METHODS),
    );
    Outcome {
        response: full(response),
        api: None,
        subscription: None,
        reason: None,
        streamed: false,
        on_end: None,
    }
}

/// A request's response and what its access event reports.
struct Outcome {
    response: Response<ResponseBody>,
    api: Option<Arc<str>>,
    subscription: Option<Arc<str>>,
    /// APIM's `LastError` reason of a gateway-made error.
    reason: Option<&'static str>,
    /// The body is the backend's, still streaming (it may yet fail).
    streamed: bool,
    /// Called once with the response body's bytes when it has ended (the
    /// policies' `on_complete`: bandwidth quotas).
    on_end: Option<OnEnd>,
}

/// What a response body's end hands its byte count to.
type OnEnd = Box<dyn FnOnce(u64) + Send>;

fn rejected(rejection: Rejection, api: Option<Arc<str>>) -> Outcome {
    let reason = rejection.reason;
    Outcome {
        response: full(rejection.into_response()),
        api,
        subscription: None,
        reason: Some(reason),
        streamed: false,
        on_end: None,
    }
}

fn full(response: Response<Bytes>) -> Response<ResponseBody> {
    response.map(|bytes| {
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    })
}

async fn process(
    shared: &Arc<Shared>,
    conn: &Connection,
    mut request: Request<ClientBody>,
    verdict: Verdict,
    // The API's backend, set once the request is routed (the caller's, so that a
    // request dropped before its outcome is counted with its API).
    routed: &mut Option<Arc<Backend>>,
) -> Outcome {
    let limits = &shared.limits;
    // What the framing follower found; hyper closes the connection after either answer.
    let malformed = match verdict {
        Verdict::Plain => None,
        Verdict::BothLengths => Some(Rejection::both_lengths()),
        Verdict::Refused(refusal) => Some(Rejection::refused(refusal)),
    };
    if let Some(rejection) = malformed {
        return refused_malformed(shared, rejection, None);
    }
    let (line, head) = head_size(&request);
    if head > limits.max_header_bytes {
        // The request line alone over the limit: the URL is what is too long (414,
        // as nginx answers); else the header fields are (431).
        return rejected(
            if line > limits.max_header_bytes {
                Rejection::uri_too_long()
            } else {
                Rejection::header_too_large()
            },
            None,
        );
    }
    if refused_method(request.method()) {
        return rejected(Rejection::method_not_allowed(), None);
    }
    if request
        .method()
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        return refused_malformed(shared, Rejection::method_case(), None);
    }
    if request.version() == Version::HTTP_2 && has_padded_value(request.headers()) {
        return refused_malformed(shared, Rejection::padded_header_value(), None);
    }
    if let Err(rejection) = normal_host_and_path(&mut request, limits.allow_encoded_slashes) {
        return refused_malformed(shared, rejection, None);
    }
    if request.uri().path() == "*" {
        return asterisk(shared, request.method());
    }
    let host = request_host_value(request.uri(), request.headers());
    let host_text = host.as_ref().and_then(|host| host.to_str().ok());
    let path = request.uri().path();
    let key = path::without_parameters(path);
    let Some((backend, key_rest)) = shared.routes.route(conn.listener, host_text, &key) else {
        return rejected(Rejection::not_found(), None);
    };
    let backend: &Arc<Backend> = routed.insert(Arc::clone(backend));
    let rest = match path::rest_after_prefix(path, &key, key_rest) {
        Ok(rest) => rest.to_owned(),
        Err(problem) => {
            let api = Some(backend.name.clone());
            return refused_malformed(shared, Rejection::bad_path(problem), api);
        }
    };
    let api = Some(backend.name.clone());

    let (mut parts, body) = request.into_parts();
    if declared_length(&parts).is_some_and(|len| len > limits.max_body_bytes) {
        return rejected(Rejection::payload_too_large(), api);
    }
    remove_hop_by_hop(&mut parts.headers);

    let mut state = Extensions::new();
    let mut ctx = RequestContext {
        api: &backend.name,
        peer: conn.peer,
        client_ip: client_ip(&parts.headers, conn.peer.ip(), &shared.trusted_proxies),
        client_cert: conn.client_cert.as_deref(),
        has_body: !body.is_end_stream(),
        collect_body: None,
        stream_limit: None,
        count_bytes: false,
        parts: &mut parts,
        state: &mut state,
        subscription: None,
    };
    let mut stopped = None;
    for policy in &shared.policies {
        if let Err(stop) = policy.on_request(&mut ctx) {
            stopped = Some(stop);
            break;
        }
    }
    let collect = ctx.collect_body;
    // A policy's limit on a streamed body, when it is below the gateway's own.
    let stream_limit = ctx
        .stream_limit
        .take()
        .filter(|l| l.bytes < limits.max_body_bytes);
    let count_bytes = ctx.count_bytes && stopped.is_none();
    let client_ip = ctx.client_ip;
    let has_body = ctx.has_body;
    let subscription = ctx.subscription.take();

    // Only allocated when a policy asked for byte counts (not on the usual path).
    let request_bytes = count_bytes.then(|| Arc::new(AtomicU64::new(0)));
    let (mut response, reason, streamed) = match stopped {
        Some(stop) => stopped_response(stop),
        None => {
            // One deadline for the whole exchange; one timer runs at a time.
            let deadline = tokio::time::Instant::now() + limits.request_timeout;
            let exchange = async {
                let max_body = limits.max_body_bytes;
                let upstream: UpstreamBody = match collect {
                    None => {
                        let max_body = stream_limit.as_ref().map_or(max_body, |l| l.bytes);
                        let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
                        let counted = Counted {
                            inner: body,
                            bytes: request_bytes.clone(),
                        };
                        Either::Left(Limited::new(counted, limit))
                    }
                    Some(limit) => {
                        let limit = limit.min(max_body);
                        let collected = match tokio::time::timeout_at(
                            deadline,
                            collect_body(body, limit),
                        )
                        .await
                        {
                            Ok(Ok(collected)) => collected,
                            Ok(Err(rejection)) => {
                                GatewayStats::bump(&shared.stats.malformed_requests);
                                return Err(Stop::Reject(rejection));
                            }
                            Err(_elapsed) => {
                                tracing::info!(api = %backend.name, timeout = ?limits.request_timeout, "request body too slow");
                                return Err(Stop::Reject(Rejection::request_timeout()));
                            }
                        };
                        if let (Some(bytes), Some(counter)) = (&collected, &request_bytes) {
                            counter.store(bytes.len() as u64, Ordering::Relaxed);
                        }
                        let mut ctx = RequestContext {
                            api: &backend.name,
                            peer: conn.peer,
                            client_ip,
                            client_cert: conn.client_cert.as_deref(),
                            has_body,
                            collect_body: collect,
                            stream_limit: None,
                            count_bytes,
                            parts: &mut parts,
                            state: &mut state,
                            subscription: None,
                        };
                        for policy in &shared.policies {
                            policy.on_body(&mut ctx, collected.as_ref())?;
                        }
                        let Some(bytes) = collected else {
                            return Err(Stop::Reject(Rejection::payload_too_large()));
                        };
                        Either::Right(Full::new(bytes))
                    }
                };
                // Each request in flight to a backend holds a connection (a file
                // descriptor) until its response body ends: past the limit, 503
                // without one, instead of running out of descriptors for every
                // client and the admin listener (a semaphore's try_acquire: one
                // atomic operation, no lock). One source gets at most its share
                // first (one atomic operation on its own counter), so that it
                // cannot take every permit; a trusted proxy speaks for many
                // clients and is not capped.
                let trusted = is_trusted(&shared.trusted_proxies, conn.peer.ip());
                let per_source = limits.max_backend_requests_per_source;
                let source = match &conn.source_requests {
                    Some(requests) if per_source > 0 && !trusted => {
                        let Some(taken) = requests.take(per_source) else {
                            tracing::debug!(api = %backend.name, peer = %conn.peer, limit = per_source, "max_backend_requests_per_source in flight from this source; request refused");
                            return Err(Stop::Reject(
                                Rejection::backend_requests_per_source_exhausted(),
                            ));
                        };
                        Some(taken)
                    }
                    _ => None,
                };
                let Ok(permit) = Arc::clone(&shared.backend_requests).try_acquire_owned() else {
                    tracing::debug!(api = %backend.name, limit = limits.max_backend_requests, "max_backend_requests in flight; request refused");
                    return Err(Stop::Reject(Rejection::backend_requests_exhausted()));
                };
                set_forwarding_headers(
                    &mut parts.headers,
                    ClientHop {
                        peer: conn.peer.ip(),
                        proto: conn.proto,
                        // Only a host that routing could read as text.
                        host: host.as_ref().filter(|_| host_text.is_some()),
                        trusted,
                    },
                );
                let in_flight = InFlight {
                    _permit: permit,
                    _source: source,
                };
                backend
                    .forward(parts, upstream, &rest, deadline, in_flight)
                    .await
                    .map_err(|rejection| {
                        // Past a policy's limit: its answer (APIM's validate-content
                        // message), not the gateway's.
                        let rejection = match stream_limit {
                            Some(limit) if rejection.reason == "RequestEntityTooLarge" => {
                                (limit.rejection)(limit.bytes)
                            }
                            _ => rejection,
                        };
                        if rejection.status == http::StatusCode::BAD_REQUEST {
                            GatewayStats::bump(&shared.stats.malformed_requests);
                        }
                        Stop::Reject(rejection)
                    })
            };
            match exchange.await {
                Ok(response) => (response, None, true),
                Err(stop) => stopped_response(stop),
            }
        }
    };

    if !shared.policies.is_empty() {
        let ctx = ResponseContext {
            api: &backend.name,
            peer: conn.peer,
            state: &state,
        };
        let (mut head, body) = response.into_parts();
        for policy in shared.policies.iter().rev() {
            policy.on_response(&ctx, &mut head);
        }
        response = Response::from_parts(head, body);
    }
    let mut on_end: Option<OnEnd> = None;
    if count_bytes {
        let shared = Arc::clone(shared);
        let name = backend.name.clone();
        let peer = conn.peer;
        let done = move |response_bytes: u64| {
            let ctx = ResponseContext {
                api: &name,
                peer,
                state: &state,
            };
            let transferred = Transferred {
                request_bytes: request_bytes
                    .as_ref()
                    .map_or(0, |counter| counter.load(Ordering::Relaxed)),
                response_bytes,
            };
            for policy in &shared.policies {
                policy.on_complete(&ctx, transferred);
            }
        };
        on_end = Some(Box::new(done));
    }
    Outcome {
        response,
        api,
        subscription,
        reason,
        streamed,
        on_end,
    }
}

/// A policy's answer: the response, its reason, and `false` (the gateway made
/// the body; it cannot fail).
fn stopped_response(stop: Stop) -> (Response<ResponseBody>, Option<&'static str>, bool) {
    match stop {
        Stop::Reject(rejection) => {
            let reason = rejection.reason;
            (full(rejection.into_response()), Some(reason), false)
        }
        Stop::Respond(response) => (full(*response), None, false),
    }
}

/// Reads the whole body, at most `limit` bytes: `None` past the limit; a body that
/// cannot be read (bad chunking, the client gone) is a 400, a slow one a 408 once
/// the request timeout passes (the caller's).
async fn collect_body(body: ClientBody, limit: u64) -> Result<Option<Bytes>, Rejection> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(Some(collected.to_bytes())),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Ok(None),
        Err(error) => {
            tracing::debug!(%error, "request body unreadable");
            match super::proxy::find_client_body_error(error.as_ref()) {
                Some(body_error) if body_error.client_gone() => Err(Rejection::client_gone()),
                _ => Err(Rejection::bad_request()),
            }
        }
    }
}

/// A body that adds the length of each data frame to a shared counter.
pub(crate) struct Counted<B> {
    pub(crate) inner: B,
    pub(crate) bytes: Option<Arc<AtomicU64>>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(bytes)) = (&polled, &self.bytes)
            && let Some(data) = frame.data_ref()
        {
            bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
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

/// A request refused as malformed: counted as such.
fn refused_malformed(shared: &Shared, rejection: Rejection, api: Option<Arc<str>>) -> Outcome {
    GatewayStats::bump(&shared.stats.malformed_requests);
    rejected(rejection, api)
}

/// One `Host` (none only in HTTP/1.0 and HTTP/2) naming a host name or address (and
/// over HTTP/2 the same one as `:authority`), and the path put in normal form (`gateway::path`): routing, the policies and
/// the backend all see that one.
#[expect(
    clippy::result_large_err,
    reason = "a Rejection is built only when a request is refused; boxing it would cost an allocation there and buy nothing on the pass path"
)]
fn normal_host_and_path<B>(
    request: &mut Request<B>,
    allow_encoded_slashes: bool,
) -> Result<(), Rejection> {
    let hosts = request.headers().get_all(HOST).iter().count();
    if hosts > 1 || (hosts == 0 && request.version() == Version::HTTP_11) {
        return Err(Rejection::bad_host(hosts));
    }
    let header = request.headers().get(HOST);
    match request.uri().authority() {
        // HTTP/2's `:authority`, or the authority of an HTTP/1 absolute-form target
        // (which wins over `Host`, RFC 9112 §3.2.2).
        Some(authority) => {
            if !valid_authority(authority.as_str()) {
                return Err(Rejection::invalid_host(false));
            }
            if request.version() == Version::HTTP_2
                && header.is_some_and(|host| {
                    !host
                        .as_bytes()
                        .eq_ignore_ascii_case(authority.as_str().as_bytes())
                })
            {
                return Err(Rejection::invalid_host(true));
            }
        }
        None => {
            if header.is_some_and(|host| host.to_str().map_or(true, |h| !valid_authority(h))) {
                return Err(Rejection::invalid_host(false));
            }
        }
    }
    match path::normalize(request.uri().path(), allow_encoded_slashes) {
        Ok(Cow::Borrowed(_)) => Ok(()),
        Ok(Cow::Owned(normal)) => {
            *request.uri_mut() =
                with_path(request.uri(), &normal).ok_or_else(Rejection::bad_request)?;
            Ok(())
        }
        Err(problem) => Err(Rejection::bad_path(problem)),
    }
}

/// A field value that starts or ends with a space or tab. HTTP/1 parsing trims them
/// (they are optional whitespace there), but over HTTP/2 such a request is malformed
/// (RFC 9113 §8.2.1), and h2 does not check it: a backend reading the value as is
/// would see another value than a gateway or a cache that trims.
fn has_padded_value(headers: &http::HeaderMap) -> bool {
    headers.values().any(|value| {
        let bytes = value.as_bytes();
        matches!(bytes.first(), Some(b' ' | b'\t')) || matches!(bytes.last(), Some(b' ' | b'\t'))
    })
}

/// `uri` with `path` in place of its own, its query kept.
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(query) => PathAndQuery::try_from(format!("{path}?{query}")),
        None => PathAndQuery::try_from(path),
    }
    .ok()?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

/// Bytes of the request head as sent in HTTP/1.1 (request line + header lines);
/// the same measure is applied to HTTP/2 so both versions share one limit.
/// Returns the request line's bytes and the whole head's.
fn head_size<B>(request: &Request<B>) -> (usize, usize) {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = request.method().as_str().len() + target + 11;
    let head = request.headers().iter().fold(line, |sum, (name, value)| {
        sum + name.as_str().len() + value.len() + 4
    });
    (line, head)
}
