//! CORS per API, after APIM's `cors` policy (reference/apim.md §10).
//!
//! [`CorsSettings`] is the configuration as written; [`CorsSettings::validate`] turns it
//! into a [`CorsPolicy`] the gateway uses per request:
//!
//! - [`preflight`] answers an `OPTIONS` request carrying `Origin` and
//!   `Access-Control-Request-Method`. Preflights are answered by the gateway and never
//!   reach the backend (APIM: "Only the `cors` policy is evaluated on the `OPTIONS`
//!   request during preflight").
//! - [`actual_response_headers`] gives the headers to add to the response of any other
//!   request that carries `Origin`.
//!
//! A disallowed origin is never rejected with an error: it simply gets no CORS headers,
//! and the browser refuses to hand the response to the page. For actual (non-preflight)
//! requests the request proceeds normally (APIM's `terminate-unmatched-request = false`;
//! Envoy, nginx and Kong behave the same way).

use std::fmt::Write as _;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, CONTENT_LENGTH, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use serde::Deserialize;
use url::Url;

#[cfg(test)]
mod tests;

/// CORS settings of one API (`[api.cors]`), as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins allowed to call the API: either the single entry `"*"` (any origin; only
    /// without credentials) or `scheme://host[:port]` entries, matched exactly after
    /// normalisation (scheme and host lowercased, default port 80/443 made explicit, so
    /// `https://a.example` and `https://a.example:443` are the same origin). Required.
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for; `"*"` allows any. Default: `GET` and `POST`
    /// (APIM's default when `allowed-methods` is absent). Names are uppercased.
    #[serde(default = "default_methods")]
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for (case-insensitive); `"*"` allows any.
    /// Default: none.
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    /// Response headers the page may read (`Access-Control-Expose-Headers`); `"*"`
    /// exposes all (only without credentials). Default: none.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (cookies, client certificates and
    /// `Authorization` are then usable from the page). Default: `false`, as in APIM.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer (`Access-Control-Max-Age`), in
    /// seconds. Default: 0 (APIM's default), which sends no header so the browser's
    /// own default (5 s in Chromium and Firefox) applies.
    #[serde(default)]
    pub max_age_secs: u32,
}

fn default_methods() -> Vec<String> {
    vec!["GET".to_owned(), "POST".to_owned()]
}

/// One error in [`CorsSettings`]; [`CorsSettings::validate`] reports all of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorsConfigError {
    #[error("allowed_origins is empty: list at least one origin, or \"*\"")]
    NoOrigins,
    #[error("allowed_origins: \"*\" must be the only entry when present")]
    WildcardOriginMixed,
    #[error(
        "allowed_origins = [\"*\"] cannot be combined with allow_credentials = true \
         (browsers refuse credentialed responses for any origin); list the origins instead"
    )]
    WildcardOriginWithCredentials,
    #[error(
        "expose_headers = [\"*\"] cannot be combined with allow_credentials = true \
         (browsers read \"*\" literally on credentialed requests); list the headers instead"
    )]
    WildcardExposeWithCredentials,
    #[error("allowed_origins: {origin:?} is not an origin: {problem}")]
    InvalidOrigin {
        origin: String,
        problem: &'static str,
    },
    #[error("allowed_methods is empty: leave it out for GET and POST, or list methods")]
    NoMethods,
    #[error("allowed_methods: {method:?} is not a valid HTTP method name")]
    InvalidMethod { method: String },
    #[error("{field}: {header:?} is not a valid HTTP header name")]
    InvalidHeader { field: &'static str, header: String },
}

/// A normalised origin: scheme, host and port, the port made explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginKey {
    scheme: String,
    host: String,
    port: u16,
}

impl OriginKey {
    /// Parses a serialised origin (`scheme://host[:port]`, nothing else). `url` does the
    /// normalisation: lowercase scheme and host, IDNA, IPv6 brackets, default ports.
    fn parse(text: &str) -> Result<Self, &'static str> {
        // `Url::parse` would strip surrounding blanks and inner tabs; an origin has none.
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("an origin contains no blanks or control characters");
        }
        // `Url` takes `*` as a host character, so `https://*.example` would be a
        // literal no browser sends, not the pattern of subdomains it looks like.
        if text.contains('*') {
            return Err("origins are matched exactly, without wildcards: list each \
                        origin, or \"*\" alone for any");
        }
        let url = Url::parse(text).map_err(|_| "expected scheme://host[:port]")?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("the scheme must be http or https");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("an origin has no user information");
        }
        // `Url` reports an empty path as "/"; reject anything past the authority,
        // including a trailing "/", since browsers never send one in `Origin`.
        let authority = text
            .get(url.scheme().len()..)
            .and_then(|rest| rest.strip_prefix("://"))
            .ok_or("expected scheme://host[:port]")?;
        if authority.contains(['/', '?', '#']) {
            return Err("an origin has no path, query or fragment");
        }
        let host = url.host_str().ok_or("the host is missing")?;
        let port = url.port_or_known_default().ok_or("the port is missing")?;
        Ok(Self {
            scheme: url.scheme().to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed<T> {
    Any,
    List(Vec<T>),
}

impl<T: PartialEq> Allowed<T> {
    fn permits(&self, item: &T) -> bool {
        match self {
            Self::Any => true,
            Self::List(items) => items.contains(item),
        }
    }
}

/// Validated CORS settings, ready for [`preflight`] and [`actual_response_headers`].
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Allowed<OriginKey>,
    methods: Allowed<Method>,
    headers: Allowed<HeaderName>,
    /// Precomputed `Access-Control-Allow-Methods` for a list of methods.
    methods_value: Option<HeaderValue>,
    expose_value: Option<HeaderValue>,
    allow_credentials: bool,
    max_age_secs: u32,
}

impl CorsSettings {
    /// Checks the settings and builds the policy, reporting every error found.
    pub fn validate(&self) -> Result<CorsPolicy, Vec<CorsConfigError>> {
        let mut errors = Vec::new();

        let origins = if self.allowed_origins.is_empty() {
            errors.push(CorsConfigError::NoOrigins);
            Allowed::List(Vec::new())
        } else if self.allowed_origins.iter().any(|o| o == "*") {
            if self.allowed_origins.len() > 1 {
                errors.push(CorsConfigError::WildcardOriginMixed);
            }
            if self.allow_credentials {
                errors.push(CorsConfigError::WildcardOriginWithCredentials);
            }
            Allowed::Any
        } else {
            let mut keys = Vec::with_capacity(self.allowed_origins.len());
            for origin in &self.allowed_origins {
                match OriginKey::parse(origin) {
                    Ok(key) => keys.push(key),
                    Err(problem) => errors.push(CorsConfigError::InvalidOrigin {
                        origin: origin.clone(),
                        problem,
                    }),
                }
            }
            Allowed::List(keys)
        };

        let methods = if self.allowed_methods.is_empty() {
            errors.push(CorsConfigError::NoMethods);
            Allowed::List(Vec::new())
        } else if self.allowed_methods.iter().any(|m| m == "*") {
            Allowed::Any
        } else {
            let mut list = Vec::with_capacity(self.allowed_methods.len());
            for name in &self.allowed_methods {
                match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => list.push(method),
                    Err(_) => errors.push(CorsConfigError::InvalidMethod {
                        method: name.clone(),
                    }),
                }
            }
            Allowed::List(list)
        };

        let headers = header_list("allowed_headers", &self.allowed_headers, &mut errors);
        let expose = header_list("expose_headers", &self.expose_headers, &mut errors);
        if self.allow_credentials && expose == Allowed::Any {
            errors.push(CorsConfigError::WildcardExposeWithCredentials);
        }

        if !errors.is_empty() {
            return Err(errors);
        }

        let methods_value = match &methods {
            Allowed::Any => None,
            Allowed::List(list) => join_value(list.iter().map(Method::as_str)),
        };
        let expose_value = match &expose {
            Allowed::Any => Some(HeaderValue::from_static("*")),
            Allowed::List(list) => join_value(list.iter().map(HeaderName::as_str)),
        };
        Ok(CorsPolicy {
            origins,
            methods,
            headers,
            methods_value,
            expose_value,
            allow_credentials: self.allow_credentials,
            max_age_secs: self.max_age_secs,
        })
    }
}

fn header_list(
    field: &'static str,
    names: &[String],
    errors: &mut Vec<CorsConfigError>,
) -> Allowed<HeaderName> {
    if names.iter().any(|h| h == "*") {
        return Allowed::Any;
    }
    let mut list = Vec::with_capacity(names.len());
    for name in names {
        // `HeaderName` lowercases, which makes the later comparison case-insensitive.
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => list.push(header),
            Err(_) => errors.push(CorsConfigError::InvalidHeader {
                field,
                header: name.clone(),
            }),
        }
    }
    Allowed::List(list)
}

/// Joins tokens with ", "; `None` for an empty list. Method and header names are
/// tokens, so the result is always a valid header value.
fn join_value<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let mut joined = String::new();
    for item in items {
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(item);
    }
    if joined.is_empty() {
        return None;
    }
    HeaderValue::from_str(&joined).ok()
}

impl CorsPolicy {
    /// Whether the request's `Origin` value is allowed. `null` and anything that is not
    /// an http(s) origin never are (except with `"*"`).
    pub fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        match &self.origins {
            Allowed::Any => true,
            Allowed::List(keys) => origin
                .to_str()
                .ok()
                .and_then(|text| OriginKey::parse(text).ok())
                .is_some_and(|key| keys.contains(&key)),
        }
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        match self.origins {
            Allowed::Any => HeaderValue::from_static("*"),
            // Echo what the browser sent: it compares the value byte for byte with its
            // own serialisation, so a normalised form could fail where this cannot.
            Allowed::List(_) => origin.clone(),
        }
    }

    /// Adds `Vary: Origin` when the answer depends on the origin, so that a shared cache
    /// never serves one origin's answer (with or without CORS headers) to another. The
    /// `Vary` already there (the backend's: `Accept-Encoding`, `Cookie`...) is kept:
    /// `Origin` joins it (a field line more is the same list, RFC 9110 §5.3), unless it
    /// names `Origin` or `*` already.
    fn add_vary(&self, headers: &mut HeaderMap) {
        if self.origins == Allowed::Any {
            return;
        }
        let named = headers
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|name| name == "*" || name.eq_ignore_ascii_case("origin"));
        if !named {
            headers.append(VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// Why a preflight got (or did not get) CORS headers: for the access log and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreflightVerdict {
    Allowed,
    OriginNotAllowed,
    MethodNotAllowed,
    HeadersNotAllowed,
}

impl PreflightVerdict {
    /// Reason code for the log and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Allowed => "CorsPreflightAllowed",
            Self::OriginNotAllowed => "CorsOriginNotAllowed",
            Self::MethodNotAllowed => "CorsMethodNotAllowed",
            Self::HeadersNotAllowed => "CorsHeadersNotAllowed",
        }
    }
}

/// The gateway's answer to a preflight; the body is always empty.
#[derive(Debug)]
pub struct Preflight {
    pub response: http::response::Parts,
    pub verdict: PreflightVerdict,
}

/// Answers a CORS preflight, or returns `None` when the request is not one (it then goes
/// through the normal pipeline, and on to the backend if allowed).
///
/// A preflight is an `OPTIONS` request with both `Origin` and
/// `Access-Control-Request-Method`. A refused preflight gets an empty `200 OK` without
/// any `Access-Control-*` header, exactly like APIM (§10: "empty 200 OK"), Kong and
/// Envoy: the browser fails the preflight because the headers are missing, whatever the
/// status, so a 403 would tell a browser nothing more, while it would tell a prober which
/// origins are configured apart from each other and break APIM parity. The refusal is
/// still visible to the operator through [`Preflight::verdict`].
pub fn preflight(policy: &CorsPolicy, request: &http::request::Parts) -> Option<Preflight> {
    if request.method != Method::OPTIONS {
        return None;
    }
    let origin = request.headers.get(ORIGIN)?;
    let requested_method = request.headers.get(ACCESS_CONTROL_REQUEST_METHOD)?;

    let mut headers = HeaderMap::new();
    policy.add_vary(&mut headers);
    headers.append(
        VARY,
        HeaderValue::from_static("Access-Control-Request-Method, Access-Control-Request-Headers"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));

    let verdict = check_preflight(policy, origin, requested_method, &request.headers);
    if let Ok(grant) = &verdict {
        headers.insert(
            ACCESS_CONTROL_ALLOW_ORIGIN,
            policy.allow_origin_value(origin),
        );
        if policy.allow_credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        // With "*" the requested method is echoed: a literal "*" is ignored by browsers
        // on credentialed requests, the echo works everywhere.
        let methods = policy
            .methods_value
            .clone()
            .unwrap_or_else(|| requested_method.clone());
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, methods);
        if let Some(allowed) = &grant.headers {
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone());
        }
        // Sent as 0 too (APIM's default): without it, browsers cache a preflight
        // for their own default (5 s), not for the 0 configured.
        headers.insert(
            ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(policy.max_age_secs),
        );
    }

    let (mut response, ()) = Response::new(()).into_parts();
    response.status = StatusCode::OK;
    response.headers = headers;
    Some(Preflight {
        response,
        verdict: verdict.map_or_else(|refused| refused, |_| PreflightVerdict::Allowed),
    })
}

struct Grant {
    /// `Access-Control-Allow-Headers`: the requested headers, lowercased, when any.
    headers: Option<HeaderValue>,
}

fn check_preflight(
    policy: &CorsPolicy,
    origin: &HeaderValue,
    requested_method: &HeaderValue,
    request_headers: &HeaderMap,
) -> Result<Grant, PreflightVerdict> {
    if !policy.origin_allowed(origin) {
        return Err(PreflightVerdict::OriginNotAllowed);
    }
    // Methods are case-sensitive (browsers send standard ones uppercased).
    let method = Method::from_bytes(requested_method.as_bytes())
        .map_err(|_| PreflightVerdict::MethodNotAllowed)?;
    // The gateway refuses TRACE and CONNECT (405), even under `allowed_methods = ["*"]`.
    if !policy.methods.permits(&method) || crate::gateway::refused_method(&method) {
        return Err(PreflightVerdict::MethodNotAllowed);
    }

    let mut granted = String::new();
    for value in request_headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
        let text = value
            .to_str()
            .map_err(|_| PreflightVerdict::HeadersNotAllowed)?;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| PreflightVerdict::HeadersNotAllowed)?;
            if !policy.headers.permits(&header) {
                return Err(PreflightVerdict::HeadersNotAllowed);
            }
            if !granted.is_empty() {
                granted.push_str(", ");
            }
            let _ = write!(granted, "{header}");
        }
    }
    let headers = if granted.is_empty() {
        None
    } else {
        // Header names are tokens: always a valid value.
        Some(HeaderValue::from_str(&granted).map_err(|_| PreflightVerdict::HeadersNotAllowed)?)
    };
    Ok(Grant { headers })
}

/// Headers to add to the response of an actual (non-preflight) request whose `Origin`
/// is `origin` (`None` when the request has no `Origin`).
///
/// `Vary: Origin` is always included when the allowed origins are a list, even for a
/// refused origin or no origin at all, so caches keep the variants apart. The gateway
/// should drop any `Access-Control-*` headers the backend sent before adding these.
pub fn actual_response_headers(policy: &CorsPolicy, origin: Option<&HeaderValue>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    add_actual_response_headers(policy, origin, &mut headers);
    headers
}

/// Adds [`actual_response_headers`] to a response's `headers` (from which the
/// backend's `Access-Control-*` have gone), merging `Origin` into its `Vary`.
pub fn add_actual_response_headers(
    policy: &CorsPolicy,
    origin: Option<&HeaderValue>,
    headers: &mut HeaderMap,
) {
    policy.add_vary(headers);
    let Some(origin) = origin.filter(|o| policy.origin_allowed(o)) else {
        return;
    };
    headers.insert(
        ACCESS_CONTROL_ALLOW_ORIGIN,
        policy.allow_origin_value(origin),
    );
    if policy.allow_credentials {
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(expose) = &policy.expose_value {
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
    }
}
