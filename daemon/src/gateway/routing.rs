//! Host + longest path prefix routing of requests to APIs, among the APIs the
//! request's listener serves.

use std::net::SocketAddr;
use std::sync::Arc;

use super::error::GatewayError;
use super::settings::ApiSettings;

/// The routes of all APIs, checked once at start.
#[derive(Debug)]
pub struct RouteTable<T> {
    /// Sorted so that the first match is the best: longer prefixes first, and for
    /// the same prefix an API with a host before one without.
    routes: Vec<Route<T>>,
}

#[derive(Debug)]
struct Route<T> {
    host: Option<String>,
    prefix: String,
    /// The listeners (configured addresses) that serve it.
    listeners: Vec<SocketAddr>,
    target: Arc<T>,
}

impl<T> RouteTable<T> {
    /// Builds the table from `(settings, target)` pairs; `target` is what a match yields.
    pub fn new(entries: impl IntoIterator<Item = (ApiSettings, T)>) -> Result<Self, GatewayError> {
        Self::from_shared(
            entries
                .into_iter()
                .map(|(api, target)| (api, Arc::new(target))),
        )
    }

    /// Like [`RouteTable::new`], with targets that may also be in another table
    /// (a reload keeps the backends of unchanged APIs).
    pub fn from_shared(
        entries: impl IntoIterator<Item = (ApiSettings, Arc<T>)>,
    ) -> Result<Self, GatewayError> {
        let mut routes: Vec<(String, Route<T>)> = Vec::new();
        for (api, target) in entries {
            if !api.path_prefix.starts_with('/') {
                return Err(GatewayError::BadPathPrefix {
                    api: api.name,
                    prefix: api.path_prefix,
                });
            }
            if let Err(why) = super::path::normal_prefix(&api.path_prefix) {
                return Err(GatewayError::UnnormalPathPrefix {
                    api: api.name,
                    prefix: api.path_prefix,
                    why,
                });
            }
            let prefix = normalize_prefix(&api.path_prefix);
            let host = api.host.as_deref().map(str::to_ascii_lowercase);
            // The same host and prefix may lead to other APIs on other listeners.
            if let Some((first, _)) = routes.iter().find(|(_, r)| {
                r.host == host
                    && r.prefix == prefix
                    && r.listeners.iter().any(|l| api.listeners.contains(l))
            }) {
                let mut route = match &host {
                    Some(host) => {
                        format!("host {host:?}, names compared without case; prefix {prefix:?}")
                    }
                    None => format!("no host; prefix {prefix:?}"),
                };
                if let Some(shared) = first_route_listener(&routes, first, &api.listeners) {
                    route.push_str(&format!("; both served on listener {shared}"));
                }
                return Err(GatewayError::DuplicateRoute {
                    first: first.clone(),
                    second: api.name,
                    route,
                });
            }
            routes.push((
                api.name,
                Route {
                    host,
                    prefix,
                    listeners: api.listeners,
                    target,
                },
            ));
        }
        let mut routes: Vec<Route<T>> = routes.into_iter().map(|(_, r)| r).collect();
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then_with(|| b.host.is_some().cmp(&a.host.is_some()))
        });
        Ok(Self { routes })
    }

    /// The API for a request that came on `listener` (its configured address), by its
    /// host (any port is ignored) and path, if any, with the part of the path after
    /// the API's prefix (`""` or starting with `/`).
    pub fn route<'p>(
        &self,
        listener: SocketAddr,
        host: Option<&str>,
        path: &'p str,
    ) -> Option<(&Arc<T>, &'p str)> {
        let host = host.map(host_name);
        self.routes
            .iter()
            .find(|r| {
                if !r.listeners.contains(&listener) {
                    return false;
                }
                let host_ok = match (&r.host, host) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                    (Some(_), None) => false,
                };
                host_ok && prefix_matches(&r.prefix, path)
            })
            .map(|r| {
                let rest = if r.prefix == "/" {
                    path
                } else {
                    &path[r.prefix.len()..]
                };
                (&r.target, rest)
            })
    }
}

/// A listener that serves both the route of API `first` and `listeners`.
fn first_route_listener<T>(
    routes: &[(String, Route<T>)],
    first: &str,
    listeners: &[SocketAddr],
) -> Option<SocketAddr> {
    let (_, route) = routes.iter().find(|(name, _)| name == first)?;
    route
        .listeners
        .iter()
        .find(|l| listeners.contains(l))
        .copied()
}

/// `/a/b/` and `/a/b` are the same prefix; `/` stays `/`.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Whole-segment match: `/orders` matches `/orders`, `/orders/`, `/orders/1`, but not `/ordersx`.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The name a host is routed by: without its port and without the one trailing dot
/// of a fully qualified name (`example.com.:8443` -> `example.com`, as nginx
/// matches it).
fn host_name(host: &str) -> &str {
    let name = strip_port(host);
    match name.strip_suffix('.') {
        Some(name) if !name.is_empty() => name,
        _ => name,
    }
}

/// The host a request names, and is routed by: the authority of its target
/// (HTTP/2's `:authority`, an HTTP/1 absolute-form target) or else `Host`.
pub(crate) fn request_host<'r>(
    uri: &'r http::Uri,
    headers: &'r http::HeaderMap,
) -> Option<&'r str> {
    uri.authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        })
}

/// [`request_host`] as a header value of its own, kept after the request is taken
/// apart (the forwarding headers): `Host`'s shares its bytes, an authority is copied.
/// `None` as for [`request_host`], also for a `Host` that is not visible ASCII.
pub(crate) fn request_host_value(
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Option<http::HeaderValue> {
    match uri.authority() {
        Some(authority) => http::HeaderValue::from_str(authority.as_str()).ok(),
        None => headers.get(http::header::HOST).cloned(),
    }
}

/// Whether `authority` (a `Host` value, an HTTP/2 `:authority`, the authority of an
/// absolute-form target) names a host the way DNS and IP addresses are written:
/// a name of letters, digits, `-`, `_` and dots (no empty label; one trailing dot
/// allowed), an IPv4 address, or an IPv6 address in brackets, then an optional
/// `:port` of digits. Userinfo (`user@host`, RFC 9110 §4.2.4 makes it an error),
/// commas, percent escapes and the rest of what RFC 3986 lets a registered name
/// hold are refused: a value routed as no host-bound API's host but read by a
/// backend as one (`admin.example,evil` taken at its first comma, from
/// `X-Forwarded-Host`) would reach that backend around the API's checks.
pub(crate) fn valid_authority(authority: &str) -> bool {
    let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((address, port)) = rest.split_once(']') else {
            return false;
        };
        if address.is_empty()
            || !address
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        if !address.contains(':') {
            return false;
        }
        (None, port)
    } else {
        match authority.find(':') {
            Some(colon) => (Some(&authority[..colon]), &authority[colon..]),
            None => (Some(authority), ""),
        }
    };
    let port_ok = match port.strip_prefix(':') {
        Some(digits) => digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()),
        None => port.is_empty(),
    };
    let name_ok = name.is_none_or(|name| {
        let name = name.strip_suffix('.').unwrap_or(name);
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    });
    port_ok && name_ok
}

/// `example.com:8443` -> `example.com`; `[::1]:443` -> `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::settings::BackendTimeouts;

    /// The listener the tests' requests come on.
    const L1: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8443);
    const L2: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

    fn api(name: &str, host: Option<&str>, prefix: &str) -> (ApiSettings, String) {
        api_on(name, host, prefix, &[L1])
    }

    fn api_on(
        name: &str,
        host: Option<&str>,
        prefix: &str,
        listeners: &[SocketAddr],
    ) -> (ApiSettings, String) {
        (
            ApiSettings {
                name: name.to_owned(),
                host: host.map(str::to_owned),
                path_prefix: prefix.to_owned(),
                listeners: listeners.to_vec(),
                backend: url::Url::parse("http://127.0.0.1:1/").unwrap(),
                backend_protocol: Default::default(),
                timeouts: BackendTimeouts::default(),
            },
            name.to_owned(),
        )
    }

    fn route<'a>(table: &'a RouteTable<String>, host: Option<&str>, path: &str) -> Option<&'a str> {
        table.route(L1, host, path).map(|(t, _)| t.as_str())
    }

    #[test]
    fn an_api_is_reached_only_on_its_listeners() {
        let table = RouteTable::new([
            api_on("internal", None, "/admin", &[L2]),
            api_on("both", None, "/", &[L1, L2]),
            api_on("public-admin", None, "/admin", &[L1]),
        ])
        .unwrap();
        let on = |listener, path| table.route(listener, None, path).map(|(t, _)| t.as_str());
        assert_eq!(on(L2, "/admin/x"), Some("internal"));
        assert_eq!(on(L1, "/admin/x"), Some("public-admin"));
        assert_eq!(on(L1, "/x"), Some("both"));
        let other = SocketAddr::from(([127, 0, 0, 1], 9443));
        assert_eq!(on(other, "/x"), None);
        // The same route on a shared listener is ambiguous.
        let error = RouteTable::new([
            api_on("a", None, "/x", &[L1, L2]),
            api_on("b", None, "/x", &[L2]),
        ])
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("both served on listener 127.0.0.1:8080"),
            "{error}"
        );
    }

    #[test]
    fn longest_prefix_wins() {
        let table = RouteTable::new([
            api("root", None, "/"),
            api("orders", None, "/orders"),
            api("order-items", None, "/orders/items/"),
        ])
        .unwrap();
        assert_eq!(route(&table, None, "/"), Some("root"));
        assert_eq!(route(&table, None, "/other"), Some("root"));
        assert_eq!(route(&table, None, "/orders"), Some("orders"));
        assert_eq!(route(&table, None, "/orders/1"), Some("orders"));
        assert_eq!(route(&table, None, "/orders/items"), Some("order-items"));
        assert_eq!(route(&table, None, "/orders/items/7"), Some("order-items"));
        assert_eq!(route(&table, None, "/ordersx"), Some("root"));
    }

    #[test]
    fn prefix_matches_whole_segments_only() {
        let table = RouteTable::new([api("orders", None, "/orders")]).unwrap();
        assert_eq!(route(&table, None, "/ordersx"), None);
        assert_eq!(route(&table, None, "/order"), None);
        assert_eq!(route(&table, None, "/orders/"), Some("orders"));
    }

    #[test]
    fn host_is_matched_case_insensitively_without_port() {
        let table = RouteTable::new([
            api("a", Some("api.example.com"), "/v1"),
            api("any", None, "/v1"),
        ])
        .unwrap();
        assert_eq!(
            route(&table, Some("API.example.com:8443"), "/v1/x"),
            Some("a")
        );
        assert_eq!(
            route(&table, Some("other.example.com"), "/v1/x"),
            Some("any")
        );
        assert_eq!(route(&table, None, "/v1/x"), Some("any"));
    }

    #[test]
    fn host_bound_api_needs_that_host() {
        let table = RouteTable::new([api("a", Some("api.example.com"), "/")]).unwrap();
        assert_eq!(route(&table, Some("evil.example.com"), "/"), None);
        assert_eq!(route(&table, None, "/"), None);
    }

    #[test]
    fn longer_prefix_beats_host_match() {
        let table =
            RouteTable::new([api("host-root", Some("h"), "/"), api("deep", None, "/a/b")]).unwrap();
        assert_eq!(route(&table, Some("h"), "/a/b/c"), Some("deep"));
        assert_eq!(route(&table, Some("h"), "/a"), Some("host-root"));
    }

    #[test]
    fn duplicate_and_bad_prefixes_are_rejected() {
        assert!(matches!(
            RouteTable::new([api("a", None, "/x/"), api("b", None, "/x")]),
            Err(GatewayError::DuplicateRoute { .. })
        ));
        assert!(matches!(
            RouteTable::new([api("a", None, "x")]),
            Err(GatewayError::BadPathPrefix { .. })
        ));
        assert!(RouteTable::new([api("a", Some("h"), "/x"), api("b", None, "/x")]).is_ok());
    }

    #[test]
    fn rest_of_path_follows_the_prefix() {
        let table = RouteTable::new([api("root", None, "/"), api("o", None, "/orders/")]).unwrap();
        assert_eq!(
            table.route(L1, None, "/orders/1").map(|(_, r)| r),
            Some("/1")
        );
        assert_eq!(table.route(L1, None, "/orders").map(|(_, r)| r), Some(""));
        assert_eq!(table.route(L1, None, "/x/y").map(|(_, r)| r), Some("/x/y"));
    }

    #[test]
    fn a_trailing_dot_names_the_same_host() {
        let table = RouteTable::new([
            api("admin", Some("admin.example"), "/"),
            api("site", None, "/"),
        ])
        .unwrap();
        assert_eq!(route(&table, Some("admin.example."), "/x"), Some("admin"));
        assert_eq!(
            route(&table, Some("ADMIN.example.:443"), "/x"),
            Some("admin")
        );
        assert_eq!(route(&table, Some("admin.example.."), "/x"), Some("site"));
        assert_eq!(host_name("."), ".");
    }

    #[test]
    fn authorities_are_host_names_or_addresses_with_a_port() {
        for good in [
            "example.com",
            "Example.COM:8443",
            "example.com.",
            "example.com.:443",
            "my_host-1.internal",
            "localhost",
            "127.0.0.1",
            "127.0.0.1:8443",
            "[::1]",
            "[::1]:443",
            "[2001:db8::ffff:198.18.0.1]",
            "example.com:",
        ] {
            assert!(valid_authority(good), "{good} refused");
        }
        for bad in [
            "",
            ".",
            ".example.com",
            "example..com",
            "example.com..",
            "admin.example,evil",
            "admin.example@evil",
            "user@admin.example",
            "user:pass@admin.example",
            "admin.example:abc",
            "admin.example:443:443",
            "admin.example:123456",
            "admin%2eexample",
            "admin example",
            "admin.example/x",
            "admin.example\\x",
            "admin.example;x",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:x",
            "[example.com]",
            "[::1%25eth0]",
        ] {
            assert!(!valid_authority(bad), "{bad} accepted");
        }
    }

    #[test]
    fn strip_port_handles_ipv6() {
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("h:80"), "h");
        assert_eq!(strip_port("h"), "h");
    }
}
