//! Forwarding to backends; bodies are streamed. HTTP/1.1 to plain-HTTP backends
//! goes through a small pool of hyper connections of its own ([`upstream`]);
//! TLS and HTTP/2 backends through hyper-util's pooled client.

mod timed;
mod upstream;

use std::error::Error as StdError;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, COOKIE, HOST, TRANSFER_ENCODING};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version, request};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{HttpConnector, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use url::Url;

use super::error::{GatewayError, Rejection};
use super::lingering::Lingering;
use super::settings::{ApiSettings, BackendProtocol, BackendTimeouts};
use super::sources::InFlight;
use super::{BoxError, ResponseBody};
use crate::policy::backend_auth::{ClientCertificate, Credential};

/// The body sent upstream: the client's body streamed and cut off past the size
/// limit, or a body collected (and checked) whole.
pub(crate) type UpstreamBody = Either<Limited<super::handler::Counted<ClientBody>>, Full<Bytes>>;

/// The client's request body, its errors marked as the client's (bad chunking, a
/// connection cut mid-body) so they are told apart from the backend's.
pub(crate) struct ClientBody {
    body: Option<Incoming>,
    /// HTTP/2: what is left unread when the body is dropped (the gateway answered
    /// first, the body was cut off at its size limit, or the backend answered first)
    /// is read and dropped in the background (`lingering::discard`), so that the
    /// stream is not reset under the answer.
    discard_rest: Option<Lingering>,
}

impl ClientBody {
    pub(crate) fn new(body: Incoming, version: http::Version, lingering: Lingering) -> Self {
        Self {
            body: Some(body),
            discard_rest: (version == http::Version::HTTP_2).then_some(lingering),
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let Some(lingering) = self.discard_rest
            && let Some(body) = self.body.take()
            && !hyper::body::Body::is_end_stream(&body)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(super::lingering::discard(body, lingering));
        }
    }
}

/// Reading the client's request body failed.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body")]
pub(crate) struct ClientBodyError(#[source] hyper::Error);

impl ClientBodyError {
    /// The client went away before the end of its body (its connection closed
    /// or reset mid-body), rather than sending one that cannot be read (bad
    /// chunking).
    pub(crate) fn client_gone(&self) -> bool {
        if self.0.is_incomplete_message() || self.0.is_canceled() {
            return true;
        }
        // Bad chunking is an io::Error too (InvalidInput): only a connection
        // that ended counts. Over HTTP/2, a stream the client reset or a
        // connection it ended (GOAWAY, or its socket) counts too, but not an
        // error h2 found in what the client sent (a body longer than declared).
        let mut current: Option<&(dyn StdError + 'static)> = Some(&self.0);
        while let Some(e) = current {
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                return h2.is_remote() || h2.is_io();
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return connection_ended(io);
            }
            current = e.source();
        }
        false
    }
}

/// The [`ClientBodyError`] in `error`'s chain, if any.
pub(crate) fn find_client_body_error<'a>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a ClientBodyError> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<ClientBodyError>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, ClientBodyError>>> {
        match self.body.as_mut() {
            Some(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(ClientBodyError))),
            // Only in drop.
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .as_ref()
            .is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.as_ref().map_or_else(
            || hyper::body::SizeHint::with_exact(0),
            hyper::body::Body::size_hint,
        )
    }
}

/// One API's backend: its base URL and its own connection pool.
pub(crate) struct Backend {
    pub(crate) name: Arc<str>,
    base: Url,
    timeouts: BackendTimeouts,
    client: Client<timed::TimedConnect<HttpsConnector<HttpConnector>>, UpstreamBody>,
    /// HTTP/1.1 to an `http://` backend: connections of our own, not `client`'s.
    http1: Option<Arc<upstream::Http1Pool>>,
    /// `backend_protocol = "http2"`: requests never go out over HTTP/1.1.
    http2_only: bool,
    /// The `Authorization` every forwarded request carries (`backend_auth`).
    credential: Option<Arc<Credential>>,
    /// This API's request counters (kept across reloads, found by name).
    pub(crate) metrics: Arc<super::metrics::ApiMetrics>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("base", &self.base.as_str())
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl Backend {
    pub(crate) fn new(
        api: &ApiSettings,
        tls: rustls::ClientConfig,
        credential: Option<Arc<Credential>>,
        metrics: Arc<super::metrics::ApiMetrics>,
    ) -> Result<Self, GatewayError> {
        let scheme_ok = matches!(api.backend.scheme(), "http" | "https");
        if !scheme_ok || api.backend.host_str().is_none() {
            return Err(GatewayError::BadBackend {
                api: api.name.clone(),
                url: api.backend.to_string(),
            });
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(api.timeouts.connect));
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1();
        // Over TLS, ALPN offers h2 then http/1.1; plain http speaks HTTP/1.1
        // unless h2 prior knowledge is asked for.
        // `connect_secs` bounds the TLS handshake too (timed.rs).
        let connector = timed::TimedConnect {
            inner: builder.enable_http2().wrap_connector(http),
            timeout: api.timeouts.connect,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(api.timeouts.pool_idle)
            // As many as the HTTP/1.1 pool keeps (hyper-util keeps any number):
            // each is a file descriptor.
            .pool_max_idle_per_host(upstream::MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(api.backend_protocol == BackendProtocol::Http2)
            .http1_max_buf_size(MAX_RESPONSE_HEAD_BYTES)
            .http2_max_header_list_size(MAX_RESPONSE_HEAD_BYTES as u32)
            .build(connector);
        let http1 = (api.backend.scheme() == "http"
            && api.backend_protocol == BackendProtocol::Auto)
            .then(|| {
                let host = match api.backend.host() {
                    Some(url::Host::Ipv6(v6)) => v6.to_string(),
                    Some(host) => host.to_string(),
                    None => String::new(),
                };
                let port = api.backend.port_or_known_default().unwrap_or(80);
                // What hyper-util's client sends: the URI's host, and its port
                // unless it is the scheme's default.
                let host_header = match api.backend.port() {
                    Some(port) => format!("{}:{port}", host_for_uri(&api.backend)),
                    None => host_for_uri(&api.backend),
                };
                HeaderValue::try_from(host_header).ok().map(|host_header| {
                    Arc::new(upstream::Http1Pool::new(
                        host,
                        port,
                        host_header,
                        api.timeouts.connect,
                        api.timeouts.pool_idle,
                        Arc::clone(&metrics),
                    ))
                })
            })
            .flatten();
        Ok(Self {
            name: Arc::from(api.name.as_str()),
            base: api.backend.clone(),
            timeouts: api.timeouts,
            client,
            http1,
            http2_only: api.backend_protocol == BackendProtocol::Http2,
            credential,
            metrics,
        })
    }

    /// Sends the request and returns the backend's response head with its body
    /// streaming, or the rejection the client gets instead: 504 when the head has
    /// not come within the backend's response timeout or by `deadline` (the
    /// request's own), whichever is first (one timer). `permit` (its places in
    /// `max_backend_requests` and `max_backend_requests_per_source`) is held until
    /// the response body ends or is dropped.
    pub(crate) async fn forward(
        &self,
        parts: request::Parts,
        body: UpstreamBody,
        rest_of_path: &str,
        deadline: tokio::time::Instant,
        permit: InFlight,
    ) -> Result<Response<ResponseBody>, Rejection> {
        let mut parts = parts;
        if let Some(credential) = &self.credential {
            // Set after every policy ran (a JWT policy saw the client's token); the
            // client's Authorization is never forwarded in its place. Without a
            // token (none obtained yet, or expired) nothing is forwarded.
            match credential.authorization() {
                Some(value) => {
                    parts.headers.insert(AUTHORIZATION, value);
                }
                None => {
                    // Debug only: the background task warns about each failed token request.
                    tracing::debug!(api = %self.name, "no backend credentials; request refused");
                    return Err(Rejection::backend_auth_unavailable());
                }
            }
        }
        parts.version = Version::HTTP_11;
        if !self.http2_only {
            // HTTP/1.1, or HTTP/2 if an https backend picks it by ALPN, where one
            // field is as good as several.
            join_cookies(&mut parts.headers);
        }
        // The client sets Host from the URI: the backend sees its own name, the
        // original one travels in X-Forwarded-Host and Forwarded.
        parts.headers.remove(HOST);
        let own = tokio::time::Instant::now() + self.timeouts.response_header;
        let until = own.min(deadline);
        // CONNECT (authority-form) is left to hyper-util's client.
        if let Some(pool) = self
            .http1
            .as_ref()
            .filter(|_| parts.method != Method::CONNECT)
        {
            // Origin-form, as hyper-util's client sends over HTTP/1.1.
            parts.uri = Uri::from(self.upstream_path(rest_of_path, parts.uri.query())?);
            let request = Request::from_parts(parts, body);
            let sent = tokio::time::timeout_at(until, pool.send(request)).await;
            // A refused answer's body, dropped unread, closes its connection
            // (a 101's connection hyper never keeps).
            return self.answered(
                sent,
                deadline <= own,
                upstream::UpstreamError::is_connect,
                || {},
                permit,
            );
        }
        parts.uri = self.upstream_uri(rest_of_path, parts.uri.query())?;
        let mut request = Request::from_parts(parts, body);
        // hyper-util's pool takes an HTTP/1.1 connection back once its response
        // has been read off the wire, also when the body is dropped unread (a
        // short body is drained): a refused answer's connection is poisoned.
        let connection = capture_connection(&mut request);
        let sent = tokio::time::timeout_at(until, self.client.request(request)).await;
        self.answered(
            sent,
            deadline <= own,
            hyper_util::client::legacy::Error::is_connect,
            || {
                if let Some(connected) = connection.connection_metadata().as_ref() {
                    connected.poison();
                }
            },
            permit,
        )
    }

    /// What the client gets for the backend's answer (or its failure, or its
    /// silence until the timer ran out: `request_deadline_passed` tells which
    /// timer it was): the response head without hop-by-hop headers, its body
    /// streaming. An answer no client may be given ([`InvalidAnswer`]) is a 502,
    /// as a response hyper could not parse is; its body is dropped unread and
    /// `discard_connection` keeps its connection from being used again.
    #[expect(
        clippy::result_large_err,
        reason = "a Rejection (with its HeaderMap) is built only when a request is refused; boxing it would cost an allocation there and buy nothing on the pass path"
    )]
    fn answered<B, E>(
        &self,
        sent: Result<Result<Response<B>, E>, tokio::time::error::Elapsed>,
        request_deadline_passed: bool,
        is_connect: fn(&E) -> bool,
        discard_connection: impl FnOnce(),
        permit: InFlight,
    ) -> Result<Response<ResponseBody>, Rejection>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: StdError + Send + Sync + 'static,
        E: StdError + 'static,
    {
        let response = match sent {
            Err(_elapsed) => return Err(self.timed_out(request_deadline_passed)),
            Ok(Err(error)) => return Err(self.classify(&error, is_connect(&error))),
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        if let Some(invalid) = InvalidAnswer::of(&parts) {
            drop(body);
            discard_connection();
            return Err(self.classify(&invalid, false));
        }
        super::forwarded::remove_hop_by_hop(&mut parts.headers);
        // In the one box the body already takes: no allocation for the permit.
        let body = Permitted {
            inner: body,
            _permit: permit,
        }
        .map_err(|e| -> BoxError { Box::new(e) })
        .boxed_unsync();
        Ok(Response::from_parts(parts, body))
    }

    /// The 504 for a backend that did not answer in time.
    fn timed_out(&self, request_deadline_passed: bool) -> Rejection {
        tracing::warn!(
            api = %self.name,
            response_timeout = ?self.timeouts.response_header,
            request_deadline_passed,
            "backend did not answer in time"
        );
        Rejection::gateway_timeout()
    }

    fn classify(&self, error: &(dyn StdError + 'static), connect: bool) -> Rejection {
        if find_in_chain::<http_body_util::LengthLimitError>(error) {
            tracing::info!(api = %self.name, "request body over the limit while streaming");
            return Rejection::payload_too_large();
        }
        if let Some(body_error) = find_client_body_error(error) {
            if body_error.client_gone() {
                tracing::info!(api = %self.name, error = %Chain(error), "client went away in the middle of its request body");
                return Rejection::client_gone();
            }
            tracing::info!(api = %self.name, error = %Chain(error), "client request body unreadable");
            return Rejection::bad_request();
        }
        if connect {
            tracing::warn!(api = %self.name, error = %Chain(error), "backend connection failed");
        } else {
            tracing::warn!(api = %self.name, error = %Chain(error), "backend request failed");
        }
        Rejection::bad_gateway()
    }

    #[expect(
        clippy::result_large_err,
        reason = "a Rejection (with its HeaderMap) is built only when a request is refused; boxing it would cost an allocation there and buy nothing on the pass path"
    )]
    fn upstream_path(
        &self,
        rest_of_path: &str,
        query: Option<&str>,
    ) -> Result<PathAndQuery, Rejection> {
        let path_and_query = join_path(self.base.path(), rest_of_path, query);
        PathAndQuery::from_maybe_shared(Bytes::from(path_and_query))
            .map_err(|_| Rejection::bad_request())
    }

    #[expect(
        clippy::result_large_err,
        reason = "a Rejection (with its HeaderMap) is built only when a request is refused; boxing it would cost an allocation there and buy nothing on the pass path"
    )]
    fn upstream_uri(&self, rest_of_path: &str, query: Option<&str>) -> Result<Uri, Rejection> {
        let path_and_query = self.upstream_path(rest_of_path, query)?;
        let authority = match self.base.port() {
            Some(port) => format!("{}:{port}", host_for_uri(&self.base)),
            None => host_for_uri(&self.base),
        };
        let uri = Uri::builder()
            .scheme(self.base.scheme())
            .authority(authority)
            .path_and_query(path_and_query)
            .build();
        uri.map_err(|_| Rejection::bad_request())
    }
}

/// A backend's response body with the `max_backend_requests` (and per-source)
/// places of its request, given back when the body is dropped (ended, or the
/// client went away).
struct Permitted<B> {
    inner: B,
    _permit: InFlight,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Permitted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A backend's response head that is well-formed to hyper's parser but that the
/// gateway refuses to relay (502, as nginx answers both).
#[derive(Debug, thiserror::Error)]
enum InvalidAnswer {
    /// `Content-Length` beside `Transfer-Encoding`: hyper reads the body by the
    /// latter and keeps both headers; relayed, the stale length would cut the
    /// body short over HTTP/1.1 and break the stream over HTTP/2. RFC 9112 §6.3
    /// calls such a message a likely smuggling attempt.
    #[error("invalid backend response: both Content-Length and Transfer-Encoding")]
    LengthAndTransferEncoding,
    /// A 1xx as the final answer: hyper passes on a 101 (the others it skips).
    /// The gateway never forwards `Upgrade` (hop-by-hop), so no switch was asked
    /// for; HTTP/2 has no 101 at all (RFC 9113 §8.6).
    #[error("invalid backend response: {0} as the final status")]
    Informational(http::StatusCode),
    /// A status past 599: hyper's parser takes any three digits, but HTTP's
    /// status codes are 100-599 (RFC 9110 §15); clients differ on the rest.
    #[error("invalid backend response: status {0} is not in 100-599")]
    OutOfRange(u16),
}

impl InvalidAnswer {
    fn of(parts: &http::response::Parts) -> Option<Self> {
        if parts.status.is_informational() {
            return Some(Self::Informational(parts.status));
        }
        if parts.status.as_u16() > 599 {
            return Some(Self::OutOfRange(parts.status.as_u16()));
        }
        if parts.headers.contains_key(TRANSFER_ENCODING)
            && parts.headers.contains_key(CONTENT_LENGTH)
        {
            return Some(Self::LengthAndTransferEncoding);
        }
        None
    }
}

/// Joins several `cookie` fields into one, separated by "; " (empty ones left
/// out), as RFC 9113 §8.2.3 requires before a request from an HTTP/2 client
/// (browsers send one field per cookie) goes out over HTTP/1.1, where a backend
/// may read only the first line; an HTTP/1.1 client's several lines are joined
/// the same way. Nothing is allocated for none or one.
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let cookies = headers.get_all(COOKIE);
    let len = cookies.iter().map(|v| v.len() + 2).sum::<usize>();
    let mut joined = Vec::with_capacity(len);
    for value in cookies.iter().filter(|v| !v.is_empty()) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Valid field values joined by "; " are a valid field value.
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(COOKIE, value);
    }
}

/// The largest response head a backend may send (status line and header fields):
/// a larger one gets the client a 502, as Envoy (60 KiB), HAProxy (`tune.bufsize`,
/// 16 KiB) and nginx (`proxy_buffer_size`, 4 or 8 KiB) refuse one; hyper alone
/// reads about 400 KiB and relays it, and over HTTP/2 the client's own limit (which
/// rampartd advertises too) then breaks the stream under a 200. Over HTTP/1.1 it
/// is also the most hyper buffers of a body at once.
pub(crate) const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

fn host_for_uri(url: &Url) -> String {
    match url.host() {
        Some(url::Host::Ipv6(v6)) => format!("[{v6}]"),
        Some(host) => host.to_string(),
        None => String::new(),
    }
}

/// Backend base path + what follows the API's prefix: `/api` + `/1` = `/api/1`.
pub(crate) fn join_path(base: &str, rest: &str, query: Option<&str>) -> String {
    let base = base.trim_end_matches('/');
    let absolute = if base.is_empty() {
        rest.starts_with('/')
    } else {
        base.starts_with('/')
    };
    // Written once at its exact size, so that it becomes the URI's bytes uncopied.
    let len =
        usize::from(!absolute) + base.len() + rest.len() + query.map_or(0, |query| 1 + query.len());
    let mut joined = String::with_capacity(len);
    if !absolute {
        joined.push('/');
    }
    joined.push_str(base);
    joined.push_str(rest);
    if let Some(query) = query {
        joined.push('?');
        joined.push_str(query);
    }
    joined
}

/// The body length the client declared in `Content-Length`, if any.
pub(crate) fn declared_length(parts: &request::Parts) -> Option<u64> {
    parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Whether `io` says the connection ended under the reader or writer (reset,
/// aborted, closed mid-write or mid-message), not that what it carried was bad.
pub(crate) fn connection_ended(io: &std::io::Error) -> bool {
    matches!(
        io.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
    )
}

/// Whether an error of type `E` is somewhere in `error`'s source chain.
pub(crate) fn find_in_chain<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Displays an error with its sources, for logs.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// A backend TLS configuration trusting `roots`, presenting `client_cert` when given.
pub(crate) fn client_config(
    roots: rustls::RootCertStore,
    client_cert: Option<ClientCertificate>,
) -> Result<rustls::ClientConfig, GatewayError> {
    super::tls::client_tls_config(roots, client_cert.map(|cert| (cert.chain, cert.key)))
        .map_err(|source| GatewayError::TlsConfig { source })
}

/// The roots trusted for backends: the Mozilla roots plus the extra CA certificates
/// configured (a private CA of the backends).
pub(crate) fn backend_roots(
    extra_roots: &[PathBuf],
) -> Result<rustls::RootCertStore, GatewayError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra_roots {
        let pem = std::fs::read(path).map_err(|source| GatewayError::ReadPem {
            path: path.clone(),
            source,
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| GatewayError::BadPem {
                path: path.clone(),
                source,
            })?;
        if certs.is_empty() {
            return Err(GatewayError::NoCertificate { path: path.clone() });
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|source| GatewayError::BadCaCertificate {
                    path: path.clone(),
                    source,
                })?;
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_without_double_slashes() {
        assert_eq!(join_path("/", "", None), "/");
        assert_eq!(join_path("/", "/a", None), "/a");
        assert_eq!(join_path("/api/", "/a/b", None), "/api/a/b");
        assert_eq!(join_path("/api", "", None), "/api");
        assert_eq!(join_path("", "", None), "/");
        assert_eq!(join_path("api", "/a", None), "/api/a");
        assert_eq!(join_path("", "a", Some("q=1")), "/a?q=1");
        assert_eq!(join_path("/api", "/a", Some("")), "/api/a?");
    }

    fn cookies(headers: &HeaderMap) -> Vec<&str> {
        headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect()
    }

    #[test]
    fn several_cookie_fields_are_joined_into_one() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1"));
        headers.append("x-other", HeaderValue::from_static("o"));
        headers.append(COOKIE, HeaderValue::from_static("b=2"));
        headers.append(COOKIE, HeaderValue::from_static(""));
        headers.append(COOKIE, HeaderValue::from_static("c=3; d=4"));
        join_cookies(&mut headers);
        assert_eq!(cookies(&headers), ["a=1; b=2; c=3; d=4"]);
        assert_eq!(headers["x-other"], "o");
    }

    fn head(status: u16, headers: &[(&'static str, &'static str)]) -> http::response::Parts {
        let mut response = Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response
            .body(())
            .map(|r| r.into_parts().0)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_final_1xx_or_length_beside_transfer_encoding_is_not_relayed() {
        let invalid = |parts| InvalidAnswer::of(&parts).map(|e| e.to_string());
        assert_eq!(
            invalid(head(
                200,
                &[("content-length", "3"), ("transfer-encoding", "chunked")]
            )),
            Some("invalid backend response: both Content-Length and Transfer-Encoding".into())
        );
        assert_eq!(
            invalid(head(
                101,
                &[("upgrade", "websocket"), ("connection", "upgrade")]
            )),
            Some("invalid backend response: 101 Switching Protocols as the final status".into())
        );
        assert_eq!(
            invalid(head(200, &[("transfer-encoding", "chunked")])),
            None
        );
        assert_eq!(invalid(head(200, &[("content-length", "3")])), None);
        assert_eq!(invalid(head(204, &[])), None);
    }

    #[test]
    fn one_cookie_field_or_none_is_left_as_it_is() {
        let mut headers = HeaderMap::new();
        join_cookies(&mut headers);
        assert!(!headers.contains_key(COOKIE));
        headers.append(COOKIE, HeaderValue::from_static("a=1; b=2"));
        join_cookies(&mut headers);
        assert_eq!(cookies(&headers), ["a=1; b=2"]);
    }
}
