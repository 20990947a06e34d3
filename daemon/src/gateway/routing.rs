//! Host + longest path prefix routing of requests to APIs.

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
            if let Some((first, _)) = routes
                .iter()
                .find(|(_, r)| r.host == host && r.prefix == prefix)
            {
                return Err(GatewayError::DuplicateRoute {
                    first: first.clone(),
                    second: api.name,
                });
            }
            routes.push((
                api.name,
                Route {
                    host,
                    prefix,
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

    /// The API for a request's host (any port is ignored) and path, if any, with
    /// the part of the path after the API's prefix (`""` or starting with `/`).
    pub fn route<'p>(&self, host: Option<&str>, path: &'p str) -> Option<(&Arc<T>, &'p str)> {
        let host = host.map(strip_port);
        self.routes
            .iter()
            .find(|r| {
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

    fn api(name: &str, host: Option<&str>, prefix: &str) -> (ApiSettings, String) {
        (
            ApiSettings {
                name: name.to_owned(),
                host: host.map(str::to_owned),
                path_prefix: prefix.to_owned(),
                backend: url::Url::parse("http://127.0.0.1:1/").unwrap(),
                backend_protocol: Default::default(),
                timeouts: BackendTimeouts::default(),
            },
            name.to_owned(),
        )
    }

    fn route<'a>(table: &'a RouteTable<String>, host: Option<&str>, path: &str) -> Option<&'a str> {
        table.route(host, path).map(|(t, _)| t.as_str())
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
        assert_eq!(table.route(None, "/orders/1").map(|(_, r)| r), Some("/1"));
        assert_eq!(table.route(None, "/orders").map(|(_, r)| r), Some(""));
        assert_eq!(table.route(None, "/x/y").map(|(_, r)| r), Some("/x/y"));
    }

    #[test]
    fn strip_port_handles_ipv6() {
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("h:80"), "h");
        assert_eq!(strip_port("h"), "h");
    }
}
