//! Errors of the gateway: start-up errors, and the JSON rejections sent to clients.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

/// The methods the gateway lets through: `Allow` of its 405 and of `OPTIONS *`.
pub(crate) const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Errors that stop the gateway from starting or a certificate reload from applying.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot read {path}")]
    ReadPem {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no certificate in {path}")]
    NoCertificate { path: PathBuf },
    #[error("no usable private key in {path}")]
    NoPrivateKey { path: PathBuf },
    #[error("{path}: PEM does not parse")]
    BadPem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate {cert} does not match key {key}")]
    CertKeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("SNI host name {hostname:?} is not a valid DNS name")]
    BadSniName { hostname: String },
    #[error("SNI host name {hostname:?} appears twice")]
    DuplicateSniName { hostname: String },
    #[error("certificate for {hostname:?} is not valid for that name")]
    SniNameNotInCertificate {
        hostname: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{path}: no usable certificate revocation list")]
    BadCrl {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{path}: not a usable CA certificate")]
    BadCaCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the TLS configuration")]
    TlsConfig {
        #[source]
        source: rustls::Error,
    },
    #[error("API {api:?}: backend URL {url} must be http or https with a host")]
    BadBackend { api: String, url: String },
    #[error("API {api:?}: path prefix {prefix:?} must start with '/'")]
    BadPathPrefix { api: String, prefix: String },
    #[error("API {api:?}: path prefix {prefix:?} {why}")]
    UnnormalPathPrefix {
        api: String,
        prefix: String,
        why: String,
    },
    /// `route` names the shared host and prefix as compared (host names without
    /// case, a prefix without its trailing `/`).
    #[error(
        "APIs {first:?} and {second:?} have the same host and path prefix ({route}): a request could not tell them apart"
    )]
    DuplicateRoute {
        first: String,
        second: String,
        route: String,
    },
    #[error("API {api:?}: backend_auth")]
    BackendAuth {
        api: String,
        #[source]
        source: Box<crate::policy::backend_auth::BackendAuthError>,
    },
    #[error("backend_auth given for {api:?}, which is not an API")]
    BackendAuthUnknownApi { api: String },
    /// What the TLS settings of one or more listeners cannot load: the same
    /// problem (one file shared by several listeners) is reported once, with
    /// every listener it stops.
    #[error("{}", listener_names(addrs))]
    Listener {
        addrs: Vec<SocketAddr>,
        #[source]
        source: Box<GatewayError>,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// `listener 127.0.0.1:443` or `listeners 127.0.0.1:443, 127.0.0.1:8443`.
fn listener_names(addrs: &[SocketAddr]) -> String {
    let names: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    match names.as_slice() {
        [one] => format!("listener {one}"),
        _ => format!("listeners {}", names.join(", ")),
    }
}

/// APIM's reason of a client that went away before the end of its exchange.
pub(crate) const CLIENT_CONNECTION_FAILURE: &str = "ClientConnectionFailure";

/// The reason of a request or response cut at the end of the drain time.
pub(crate) const DRAIN_TIMEOUT: &str = "DrainTimeout";

/// The reason of a response body the gateway cut because it did not move for the
/// idle timeout (its client did not read, or its backend stalled).
pub(crate) const IDLE_TIMEOUT: &str = "IdleTimeout";

/// The gateway's own refusals use the one rejection type of the policies.
pub use crate::policy::Rejection;

impl Rejection {
    pub fn new(status: StatusCode, message: impl Into<String>, reason: &'static str) -> Self {
        Self {
            status,
            message: message.into(),
            headers: HeaderMap::new(),
            reason,
        }
    }

    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Resource not found",
            "OperationNotFound",
        )
    }

    /// TRACE and CONNECT: never forwarded (see `handler::refused_method`).
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "MethodNotAllowed",
        )
        .with_header(
            http::header::ALLOW,
            HeaderValue::from_static(ALLOWED_METHODS),
        )
    }

    /// A target of `*` with another method than OPTIONS (see `handler::asterisk`).
    pub(crate) fn asterisk() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "Bad request: the target * is for OPTIONS only",
            "BadRequest",
        )
    }

    pub fn bad_gateway() -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "Bad gateway",
            "BackendConnectionFailure",
        )
    }

    /// `max_backend_requests` requests are in flight to backends: refused without
    /// opening a connection.
    pub fn backend_requests_exhausted() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            "BackendRequestLimit",
        )
    }

    /// `max_backend_requests_per_source` requests of the client's source are in
    /// flight to backends: the same answer, its own reason.
    pub fn backend_requests_per_source_exhausted() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            "BackendRequestLimitPerSource",
        )
    }

    /// `backend_auth` has no token to send (none obtained yet, or expired).
    pub fn backend_auth_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Backend credentials are not available.",
            "BackendAuthUnavailable",
        )
    }

    pub fn gateway_timeout() -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "Gateway timeout", "Timeout")
    }

    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request entity too large",
            "RequestEntityTooLarge",
        )
    }

    pub fn header_too_large() -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request header fields too large",
            "RequestHeaderFieldsTooLarge",
        )
    }

    /// A request line longer than the head may be (`max_header_bytes`).
    pub fn uri_too_long() -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            "Request URI too long",
            "RequestUriTooLong",
        )
    }

    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "Request timeout",
            CLIENT_CONNECTION_FAILURE,
        )
    }

    /// The client went away in the middle of its request body: nobody reads the
    /// answer, which is for the access event and the counters (APIM's reason).
    pub fn client_gone() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "Bad request",
            CLIENT_CONNECTION_FAILURE,
        )
    }

    /// A request or response the gateway itself cut at the end of its drain time (a
    /// stop, or a listener a reload removed): not the client's doing. Nobody reads the
    /// answer; APIM has no reason for it.
    pub fn drain_cut() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            DRAIN_TIMEOUT,
        )
    }

    pub fn bad_request() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", "BadRequest")
    }

    /// A request that frames its body twice (the shape of request smuggling).
    pub fn both_lengths() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "Bad request: both Content-Length and Transfer-Encoding are present",
            "BadRequest",
        )
    }

    /// A method with a lower-case letter (`post`). Methods are case-sensitive (RFC
    /// 9110 §9.1), so `post` is another method than `POST` to the gateway's rules
    /// (roles, CORS), while backends that upper-case it (Werkzeug, Django) act on it
    /// as `POST`: refused, as nginx refuses it.
    pub(crate) fn method_case() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "Bad request: the method is not in upper case",
            "BadRequest",
        )
    }

    /// An HTTP/2 field value with leading or trailing whitespace (RFC 9113 §8.2.1).
    pub(crate) fn padded_header_value() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "Bad request: a header value starts or ends with whitespace",
            "BadRequest",
        )
    }

    /// A request path the gateway does not route (see `gateway::path`).
    pub(crate) fn bad_path(problem: super::path::PathProblem) -> Self {
        Self::new(StatusCode::BAD_REQUEST, problem.message(), "BadRequest")
    }

    /// An HTTP/1.1 request without a `Host` header, or any request with more than
    /// one (RFC 9112, section 3.2: a server must answer 400).
    pub(crate) fn bad_host(count: usize) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            if count == 0 {
                "Bad request: the Host header is missing"
            } else {
                "Bad request: more than one Host header"
            },
            "BadRequest",
        )
    }

    /// A host (`Host`, `:authority`, an absolute-form target's authority) that names no
    /// host name or address (`routing::valid_authority`), or an HTTP/2 `Host` that
    /// names another host than `:authority` (RFC 9113 §8.3.1).
    pub(crate) fn invalid_host(differs: bool) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            if differs {
                "Bad request: the Host header differs from :authority"
            } else {
                "Bad request: the Host is not a valid host name or address"
            },
            "BadRequest",
        )
    }

    /// A request head hyper would refuse (with an empty body): the same status; 501
    /// for a `Transfer-Encoding` other than `chunked` that hyper would take.
    pub(crate) fn refused(refusal: super::framing::Refusal) -> Self {
        use super::framing::Refusal;
        match refusal {
            Refusal::BadRequest => Self::bad_request(),
            Refusal::UriTooLong => Self::uri_too_long(),
            Refusal::HeadTooLarge => Self::header_too_large(),
            Refusal::NotChunkedOnly => Self::new(
                StatusCode::NOT_IMPLEMENTED,
                "Transfer-Encoding other than chunked is not supported.",
                "NotImplemented",
            ),
        }
    }

    /// The full response, with `Content-Type: application/json`.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let body = Bytes::from(self.body());
        let mut response = Response::new(B::from(body.clone()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.extend(self.headers);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_apim_wire_form() {
        let rejection = Rejection::new(
            StatusCode::UNAUTHORIZED,
            "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API.",
            "SubscriptionKeyNotFound",
        );
        assert_eq!(rejection.body().len(), 152);
        assert_eq!(
            Rejection::not_found().body(),
            r#"{ "statusCode": 404, "message": "Resource not found" }"#
        );
    }

    #[test]
    fn message_is_json_escaped() {
        let rejection = Rejection::new(StatusCode::BAD_REQUEST, "a \"quoted\"\nline", "x");
        let parsed: serde_json::Value = serde_json::from_str(&rejection.body()).unwrap();
        assert_eq!(parsed["message"], "a \"quoted\"\nline");
        assert_eq!(parsed["statusCode"], 400);
    }

    #[test]
    fn response_has_json_content_type_and_extra_headers() {
        let response: Response<http_body_util::Full<Bytes>> = Rejection::not_found()
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("5"))
            .into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "5");
    }
}
