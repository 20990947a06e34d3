//! `[[listener]]`, `[[api]]` and `[[product]]`: required keys, formats, and
//! the cross-references between them (an API naming an unknown product).

use std::collections::HashSet;
use std::net::SocketAddr;

use toml::Spanned;
use url::Url;

use super::Checker;
use crate::config::raw::{RawApi, RawListener, RawProduct, RawRateLimit, RawSni, RawTls, Text};
use crate::config::{
    ApiConfig, ListenerConfig, ListenerTransport, MAX_RATE_LIMIT_CALLS, MAX_RATE_LIMIT_PERIOD_SECS,
    ProductConfig, RateLimitConfig, SniCertConfig, SubscriptionRequirement,
};
use crate::policy::keys::{DEFAULT_HEADER, DEFAULT_QUERY_PARAM};

impl Checker<'_> {
    pub(super) fn listeners(&mut self, raw: Vec<Spanned<RawListener>>) -> Vec<ListenerConfig> {
        let mut seen = HashSet::new();
        let mut listeners = Vec::with_capacity(raw.len());
        for raw in raw {
            let section = raw.span().start;
            let raw = raw.into_inner();
            let Some(address) = self.required(section, "listener", "address", raw.address) else {
                continue;
            };
            let Ok(addr) = address.get_ref().parse::<SocketAddr>() else {
                self.error(
                    address.span().start,
                    format!(
                        "invalid `listener.address` {:?}: expected IP:PORT, e.g. \"0.0.0.0:443\" or \"[::]:443\"",
                        address.get_ref()
                    ),
                );
                continue;
            };
            if !seen.insert(addr) {
                self.error(
                    address.span().start,
                    format!("listener address {addr} appears twice"),
                );
            }
            let plain = raw.plain_http.as_ref().is_some_and(|p| *p.get_ref());
            let transport = match (raw.tls, plain) {
                (Some(tls), false) => self.tls(tls),
                (None, true) => Some(ListenerTransport::PlainHttp),
                (Some(tls), true) => {
                    self.error(
                        tls.span().start,
                        "a listener has either `tls` or `plain_http = true`, not both",
                    );
                    None
                }
                (None, false) => {
                    self.error(
                        section,
                        "[[listener]] needs `tls = { cert = PATH, key = PATH }` (or `plain_http = true` for plain HTTP)",
                    );
                    None
                }
            };
            if let Some(transport) = transport {
                listeners.push(ListenerConfig {
                    address: addr,
                    transport,
                });
            }
        }
        listeners
    }

    fn tls(&mut self, raw: Spanned<RawTls>) -> Option<ListenerTransport> {
        let section = raw.span().start;
        let raw = raw.into_inner();
        let cert = self.required(section, "listener.tls", "cert", raw.cert);
        let key = self.required(section, "listener.tls", "key", raw.key);
        let mut sni = Vec::new();
        for entry in raw.sni.unwrap_or_default() {
            if let Some(entry) = self.sni(entry) {
                sni.push(entry);
            }
        }
        Some(ListenerTransport::Tls {
            cert: self.path("listener.tls.cert", cert?),
            key: self.path("listener.tls.key", key?),
            sni,
        })
    }

    fn sni(&mut self, raw: Spanned<RawSni>) -> Option<SniCertConfig> {
        let section = raw.span().start;
        let raw = raw.into_inner();
        let hostname = self.required(section, "listener.tls.sni", "hostname", raw.hostname);
        let cert = self.required(section, "listener.tls.sni", "cert", raw.cert);
        let key = self.required(section, "listener.tls.sni", "key", raw.key);
        Some(SniCertConfig {
            hostname: hostname?.into_inner(),
            cert: self.path("listener.tls.sni.cert", cert?),
            key: self.path("listener.tls.sni.key", key?),
        })
    }

    pub(super) fn products(&mut self, raw: Vec<Spanned<RawProduct>>) -> Vec<ProductConfig> {
        let mut seen = HashSet::new();
        let mut products = Vec::with_capacity(raw.len());
        for raw in raw {
            let section = raw.span().start;
            let raw = raw.into_inner();
            let Some(name) = self.name(section, "product", raw.name, &mut seen) else {
                continue;
            };
            let rate_limit = raw.rate_limit.and_then(|r| self.rate_limit("product", r));
            products.push(ProductConfig { name, rate_limit });
        }
        products
    }

    pub(super) fn apis(
        &mut self,
        raw: Vec<Spanned<RawApi>>,
        products: &[ProductConfig],
    ) -> Vec<ApiConfig> {
        let mut seen = HashSet::new();
        let mut apis = Vec::with_capacity(raw.len());
        for raw in raw {
            let section = raw.span().start;
            let raw = raw.into_inner();
            let name = self.name(section, "api", raw.name, &mut seen);
            let path_prefix = self
                .required(section, "api", "path_prefix", raw.path_prefix)
                .and_then(|prefix| {
                    if prefix.get_ref().starts_with('/') {
                        Some(prefix.into_inner())
                    } else {
                        self.error(
                            prefix.span().start,
                            format!(
                                "`api.path_prefix` must start with '/', not {:?}",
                                prefix.get_ref()
                            ),
                        );
                        None
                    }
                });
            let backend = self
                .required(section, "api", "backend", raw.backend)
                .and_then(|backend| self.backend(backend));
            let mut api_products = Vec::new();
            for product in raw.products.map(Spanned::into_inner).unwrap_or_default() {
                if products.iter().any(|p| &p.name == product.get_ref()) {
                    api_products.push(product.into_inner());
                } else {
                    self.error(
                        product.span().start,
                        format!(
                            "unknown product {:?}: declare it with [[product]] name = {:?}",
                            product.get_ref(),
                            product.get_ref()
                        ),
                    );
                }
            }
            let subscription = self.choice(
                "api.subscription",
                raw.subscription,
                &SubscriptionRequirement::ALL,
                SubscriptionRequirement::default(),
            );
            let subscription_key_header = self.header_name(
                "api.subscription_key_header",
                raw.subscription_key_header,
                DEFAULT_HEADER,
            );
            let subscription_key_query = match raw.subscription_key_query {
                Some(query) if query.get_ref().is_empty() => {
                    self.error(
                        query.span().start,
                        "`api.subscription_key_query` must not be empty",
                    );
                    String::new()
                }
                Some(query) => query.into_inner(),
                None => DEFAULT_QUERY_PARAM.to_owned(),
            };
            let rate_limit = raw.rate_limit.and_then(|r| self.rate_limit("api", r));
            let cors = raw.cors.and_then(|cors| {
                let at = cors.span().start;
                let cors = cors.into_inner();
                match cors.validate() {
                    Ok(_) => Some(cors),
                    Err(errors) => {
                        for e in errors {
                            self.error(at, format!("invalid `api.cors`: {e}"));
                        }
                        None
                    }
                }
            });
            let headers = raw.headers.map_or_else(Default::default, |headers| {
                let at = headers.span().start;
                let headers = headers.into_inner();
                if let Err(errors) = headers.validate() {
                    for e in errors {
                        self.error(at, format!("invalid `api.headers`: {e}"));
                    }
                }
                headers
            });
            let (Some(name), Some(path_prefix), Some(backend)) = (name, path_prefix, backend)
            else {
                continue;
            };
            apis.push(ApiConfig {
                name,
                host: raw.host.map(Spanned::into_inner),
                path_prefix,
                backend,
                products: api_products,
                subscription,
                subscription_key_header,
                subscription_key_query,
                forward_subscription_key: raw.forward_subscription_key.unwrap_or(false),
                rate_limit,
                cors,
                headers,
            });
        }
        apis
    }

    /// A required key of a table that starts at `section`.
    fn required(
        &mut self,
        section: usize,
        table: &str,
        key: &str,
        value: Option<Text>,
    ) -> Option<Text> {
        if value.is_none() {
            self.error(section, format!("`{table}` needs `{key}`"));
        }
        value
    }

    /// A required, non-empty name not seen before in its kind of section.
    fn name(
        &mut self,
        section: usize,
        table: &str,
        value: Option<Text>,
        seen: &mut HashSet<String>,
    ) -> Option<String> {
        let name = self.required(section, table, "name", value)?;
        if name.get_ref().is_empty() {
            self.error(
                name.span().start,
                format!("`{table}.name` must not be empty"),
            );
            return None;
        }
        if !seen.insert(name.get_ref().clone()) {
            self.error(
                name.span().start,
                format!("{table} name {:?} appears twice", name.get_ref()),
            );
            return None;
        }
        Some(name.into_inner())
    }

    fn backend(&mut self, value: Text) -> Option<Url> {
        match Url::parse(value.get_ref()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            _ => {
                self.error(
                    value.span().start,
                    format!(
                        "invalid `api.backend` {:?}: expected an http:// or https:// URL with a host",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn header_name(&mut self, key: &str, value: Option<Text>, default: &str) -> String {
        let Some(value) = value else {
            return default.to_owned();
        };
        if http::HeaderName::from_bytes(value.get_ref().as_bytes()).is_err() {
            self.error(
                value.span().start,
                format!("invalid `{key}` {:?}: not a header name", value.get_ref()),
            );
        }
        value.into_inner()
    }

    fn rate_limit(&mut self, table: &str, raw: Spanned<RawRateLimit>) -> Option<RateLimitConfig> {
        let section = raw.span().start;
        let raw = raw.into_inner();
        if raw.calls.is_none() || raw.period_secs.is_none() {
            self.error(
                section,
                format!("`{table}.rate_limit` needs `calls` and `period_secs`"),
            );
            return None;
        }
        let errors = self.errors.len();
        let calls = self.integer(
            &format!("{table}.rate_limit.calls"),
            raw.calls,
            1..=MAX_RATE_LIMIT_CALLS,
            1,
        );
        let period_secs = self.integer(
            &format!("{table}.rate_limit.period_secs"),
            raw.period_secs,
            1..=MAX_RATE_LIMIT_PERIOD_SECS,
            1,
        );
        (self.errors.len() == errors).then_some(RateLimitConfig { calls, period_secs })
    }
}
