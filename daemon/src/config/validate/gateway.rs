//! `[[listener]]`, `[[api]]` and `[[product]]`: required keys, formats, and
//! the cross-references between them (an API naming an unknown product).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use toml::Spanned;
use url::Url;

use super::Checker;
use crate::config::gateway::{
    AccessLogConfig, ApiJwtConfig, BackendProtocolConfig, BackendTimeoutsConfig, ClaimHeader,
    ClientAuthConfig, CounterConfig, GatewayConfig, QuotaConfig, RateLimitAlgorithm, RoleRule,
    SubscriptionConfig, default_backend_requests_per_source, default_connections_per_source,
};
use crate::config::gateway::{MAX_IPV6_CLIENT_PREFIX, MIN_IPV6_CLIENT_PREFIX};
use crate::config::raw::{
    RawApi, RawApiJwt, RawBackendAuth, RawBackendTimeouts, RawClaimHeader, RawGateway, RawListener,
    RawOAuth2, RawProduct, RawQuota, RawRateLimit, RawRoleRule, RawSni, RawSubscription, RawTls,
    Text, TextList,
};
use crate::config::{
    ApiConfig, ListenerConfig, ListenerTransport, MAX_RATE_LIMIT_CALLS, MAX_RATE_LIMIT_PERIOD_SECS,
    ProductConfig, RateLimitConfig, SniCertConfig, SubscriptionRequirement,
};
use crate::policy::backend_auth::{self, BackendAuth, OAuth2Settings};
use crate::policy::headers::{Side, forbidden_reason};
use crate::policy::jwt::JwtProviderSettings;
use crate::policy::keys::{DEFAULT_HEADER, DEFAULT_QUERY_PARAM, KeyHash, Scope, SubscriptionState};

/// Largest configurable quota `calls` or `kilobytes`.
const MAX_QUOTA: u64 = 1 << 48;
/// Longest quota window: ten years.
const MAX_QUOTA_PERIOD_SECS: u64 = 10 * 366 * 86_400;

const SUBSCRIPTION_STATES: [(&str, SubscriptionState); 3] = [
    ("active", SubscriptionState::Active),
    ("suspended", SubscriptionState::Suspended),
    ("cancelled", SubscriptionState::Cancelled),
];

/// Two listener addresses that cannot both be bound on Linux: the same port (not
/// 0, which the kernel picks) on the same address, or with a wildcard on either
/// side. `0.0.0.0:P` takes the port on every IPv4 address; `[::]:P` on every IPv6
/// address and, since rampartd's IPv6 sockets are dual-stack (it does not set
/// IPV6_V6ONLY, and Linux's `net.ipv6.bindv6only` is 0 unless changed), on every
/// IPv4 address too. An IPv4-mapped address (`[::ffff:127.0.0.1]`) is its IPv4
/// address.
pub(crate) fn listeners_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    use std::net::IpAddr;
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let plain = |ip: IpAddr| ip.to_canonical();
    match (plain(a.ip()), plain(b.ip())) {
        (x, y) if x == y => true,
        (IpAddr::V4(x), IpAddr::V4(y)) => x.is_unspecified() || y.is_unspecified(),
        (IpAddr::V6(x), IpAddr::V6(y)) => x.is_unspecified() || y.is_unspecified(),
        (IpAddr::V6(v6), IpAddr::V4(_)) | (IpAddr::V4(_), IpAddr::V6(v6)) => v6.is_unspecified(),
    }
}

/// Why two different addresses of [`listeners_overlap`] overlap.
fn overlap_reason(a: SocketAddr, b: SocketAddr) -> String {
    let port = a.port();
    let ips = [a.ip().to_canonical(), b.ip().to_canonical()];
    // `[::]` first: it is what makes an IPv6 and an IPv4 address overlap.
    let wildcard = (ips.iter().find(|ip| ip.is_ipv6() && ip.is_unspecified()))
        .or_else(|| ips.iter().find(|ip| ip.is_unspecified()));
    match wildcard {
        Some(std::net::IpAddr::V6(_)) => format!(
            "[::]:{port} takes port {port} on every IPv6 and IPv4 address \
             (rampartd's IPv6 listeners are dual-stack)"
        ),
        Some(std::net::IpAddr::V4(_)) => {
            format!("0.0.0.0:{port} takes port {port} on every IPv4 address")
        }
        None => "they are the same address".to_owned(),
    }
}

impl Checker<'_> {
    pub(super) fn listeners(&mut self, raw: Vec<Spanned<RawListener>>) -> Vec<ListenerConfig> {
        // Addresses so far, with where each was written.
        let mut seen: Vec<(SocketAddr, usize)> = Vec::new();
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
            let offset = address.span().start;
            if let Some((earlier, at)) = seen
                .iter()
                .find(|(earlier, _)| listeners_overlap(*earlier, addr))
            {
                let (line, _) = self.source.position(*at);
                let message = if *earlier == addr {
                    format!("listener address {addr} appears twice (first at line {line})")
                } else {
                    format!(
                        "listener address {addr} overlaps listener {earlier} (line {line}): {}; \
                         rampartd could not bind both, list one of them",
                        overlap_reason(*earlier, addr)
                    )
                };
                self.error(offset, message);
            } else {
                seen.push((addr, offset));
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
        let crls: Vec<std::path::PathBuf> = raw
            .crl
            .map(Spanned::into_inner)
            .unwrap_or_default()
            .into_iter()
            .map(|path| self.path("listener.tls.crl", path))
            .collect();
        let mode = self.choice(
            "listener.tls.client_auth",
            raw.client_auth,
            &[("none", 0u8), ("optional", 1), ("required", 2)],
            0,
        );
        let ca = raw
            .client_ca
            .map(|ca| self.path("listener.tls.client_ca", ca));
        let client_auth = match (mode, ca) {
            (0, None) if crls.is_empty() => ClientAuthConfig::None,
            (0, _) => {
                self.error(
                    section,
                    "`listener.tls.client_ca` and `crl` need `client_auth = \"optional\"` or `\"required\"`",
                );
                ClientAuthConfig::None
            }
            (_, None) => {
                self.error(
                    section,
                    "`listener.tls.client_auth` needs `client_ca = PATH` (the CAs client certificates must chain to)",
                );
                ClientAuthConfig::None
            }
            (1, Some(ca)) => ClientAuthConfig::Optional { ca, crls },
            (_, Some(ca)) => ClientAuthConfig::Required { ca, crls },
        };
        Some(ListenerTransport::Tls {
            cert: self.path("listener.tls.cert", cert?),
            key: self.path("listener.tls.key", key?),
            sni,
            client_auth,
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

    /// The products, and where each of their `claim:` counters is written (checked
    /// against their APIs by [`Self::claim_counters_have_tokens`]).
    pub(super) fn products(
        &mut self,
        raw: Vec<Spanned<RawProduct>>,
    ) -> (Vec<ProductConfig>, Vec<ClaimCounterAt>) {
        let mut seen = HashSet::new();
        let mut products = Vec::with_capacity(raw.len());
        let mut claim_counters = Vec::new();
        for raw in raw {
            let section = raw.span().start;
            let raw = raw.into_inner();
            let Some(name) = self.name(section, "product", raw.name, &mut seen) else {
                continue;
            };
            for (policy, counter) in claim_counters_of(raw.rate_limit.as_ref(), raw.quota.as_ref())
            {
                {
                    claim_counters.push(ClaimCounterAt {
                        product: name.clone(),
                        key: format!("product.{policy}.counter"),
                        counter: counter.get_ref().clone(),
                        at: counter.span().start,
                    });
                }
            }
            let rate_limit = raw.rate_limit.and_then(|r| self.rate_limit("product", r));
            let quota = raw.quota.and_then(|q| self.quota("product", q));
            products.push(ProductConfig {
                name,
                rate_limit,
                quota,
            });
        }
        (products, claim_counters)
    }

    /// A product's `claim:` counter needs a token on every API of the product: on
    /// an API without `jwt` every call would silently be counted by client address.
    pub(super) fn claim_counters_have_tokens(
        &mut self,
        counters: &[ClaimCounterAt],
        apis: &[ApiConfig],
    ) {
        for counter in counters {
            let without: Vec<String> = apis
                .iter()
                .filter(|api| api.jwt.is_none() && api.products.contains(&counter.product))
                .map(|api| format!("{:?}", api.name))
                .collect();
            if !without.is_empty() {
                self.error(
                    counter.at,
                    format!(
                        "invalid `{}` {:?}: product {:?} counts by a token claim, but its API {} has no `jwt`, so its calls would be counted by client address",
                        counter.key,
                        counter.counter,
                        counter.product,
                        without.join(", ")
                    ),
                );
            }
        }
    }

    pub(super) fn jwt_providers(
        &mut self,
        raw: Vec<Spanned<JwtProviderSettings>>,
    ) -> Vec<JwtProviderSettings> {
        let mut seen = HashSet::new();
        let mut providers = Vec::with_capacity(raw.len());
        for raw in raw {
            let at = raw.span().start;
            let settings = raw.into_inner();
            if !seen.insert(settings.name.clone()) {
                self.error(
                    at,
                    format!("jwt_provider name {:?} appears twice", settings.name),
                );
                continue;
            }
            match settings.validate() {
                Ok(_) => providers.push(settings),
                Err(errors) => {
                    for e in errors {
                        self.error(
                            at,
                            format!(
                                "invalid [[jwt_provider]] {:?}: {}",
                                settings.name,
                                chain(&e)
                            ),
                        );
                    }
                }
            }
        }
        providers
    }

    fn api_jwt(
        &mut self,
        raw: Spanned<RawApiJwt>,
        providers: &[JwtProviderSettings],
    ) -> Option<ApiJwtConfig> {
        let section = raw.span().start;
        let raw = raw.into_inner();
        let provider = self.required(section, "api.jwt", "provider", raw.provider)?;
        if !providers.iter().any(|p| &p.name == provider.get_ref()) {
            self.error(
                provider.span().start,
                format!(
                    "unknown jwt_provider {:?}: declare it with [[jwt_provider]] name = {:?}",
                    provider.get_ref(),
                    provider.get_ref()
                ),
            );
            return None;
        }
        let roles_claim = raw
            .roles_claim
            .map_or_else(|| "roles".to_owned(), Spanned::into_inner);
        let mut roles = Vec::new();
        for rule in raw.roles.unwrap_or_default() {
            if let Some(rule) = self.role_rule(rule) {
                roles.push(rule);
            }
        }
        let mut claims_to_headers = Vec::new();
        for entry in raw.claims_to_headers.unwrap_or_default() {
            if let Some(entry) = self.claim_header(entry) {
                claims_to_headers.push(entry);
            }
        }
        Some(ApiJwtConfig {
            provider: provider.into_inner(),
            roles_claim,
            roles,
            claims_to_headers,
        })
    }

    fn role_rule(&mut self, raw: Spanned<RawRoleRule>) -> Option<RoleRule> {
        let section = raw.span().start;
        let raw = raw.into_inner();
        let values = self.required_list(section, "api.jwt.roles", "values", raw.values)?;
        let mut methods = Vec::new();
        for method in raw.methods.map(Spanned::into_inner).unwrap_or_default() {
            match http::Method::from_bytes(method.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m.as_str().to_owned()),
                Err(_) => self.error(
                    method.span().start,
                    format!("invalid method {:?} in `api.jwt.roles`", method.get_ref()),
                ),
            }
        }
        let all = self.choice(
            "api.jwt.roles.match",
            raw.match_,
            &[("any", false), ("all", true)],
            false,
        );
        Some(RoleRule {
            methods,
            values,
            all,
        })
    }

    fn claim_header(&mut self, raw: Spanned<RawClaimHeader>) -> Option<ClaimHeader> {
        let section = raw.span().start;
        let raw = raw.into_inner();
        let claim = self.required(section, "api.jwt.claims_to_headers", "claim", raw.claim);
        let header = self.required(section, "api.jwt.claims_to_headers", "header", raw.header)?;
        if !self.settable_header(
            "api.jwt.claims_to_headers.header",
            &header,
            &[Side::Request],
        ) {
            return None;
        }
        let default = match raw.default {
            Some(value) if http::HeaderValue::from_str(value.get_ref()).is_err() => {
                self.error(
                    value.span().start,
                    "`api.jwt.claims_to_headers.default` is not a valid header value",
                );
                None
            }
            // A malformed field over HTTP/2 (RFC 9113 §8.2.1), as a claim's own value.
            Some(value)
                if value.get_ref().starts_with([' ', '\t'])
                    || value.get_ref().ends_with([' ', '\t']) =>
            {
                self.error(
                    value.span().start,
                    "`api.jwt.claims_to_headers.default` starts or ends with a space or tab",
                );
                None
            }
            other => other.map(Spanned::into_inner),
        };
        Some(ClaimHeader {
            claim: claim?.into_inner(),
            header: header.into_inner().to_ascii_lowercase(),
            default,
        })
    }

    /// A required, non-empty list of strings.
    fn required_list(
        &mut self,
        section: usize,
        table: &str,
        key: &str,
        value: Option<crate::config::raw::TextList>,
    ) -> Option<Vec<String>> {
        let Some(list) = value else {
            self.error(section, format!("`{table}` needs `{key}`"));
            return None;
        };
        if list.get_ref().is_empty() {
            self.error(
                list.span().start,
                format!("`{table}.{key}` must not be empty"),
            );
            return None;
        }
        Some(
            list.into_inner()
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
        )
    }

    pub(super) fn apis(
        &mut self,
        raw: Vec<Spanned<RawApi>>,
        products: &[ProductConfig],
        providers: &[JwtProviderSettings],
        listeners: &[ListenerConfig],
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
                        match crate::gateway::path::normal_prefix(prefix.get_ref()) {
                            Ok(()) => Some(prefix.into_inner()),
                            Err(why) => {
                                self.error(
                                    prefix.span().start,
                                    format!("`api.path_prefix` {:?} {why}", prefix.get_ref()),
                                );
                                None
                            }
                        }
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
            // A `claim:` counter counts by the API's token: without `jwt`, every call
            // would silently be counted by client address.
            if raw.jwt.is_none() {
                for (policy, counter) in
                    claim_counters_of(raw.rate_limit.as_ref(), raw.quota.as_ref())
                {
                    {
                        self.error(
                            counter.span().start,
                            format!(
                                "invalid `api.{policy}.counter` {:?}: the API has no `jwt` to take the claim from, so every call would be counted by client address",
                                counter.get_ref()
                            ),
                        );
                    }
                }
            }
            let rate_limit = raw.rate_limit.and_then(|r| self.rate_limit("api", r));
            let quota = raw.quota.and_then(|q| self.quota("api", q));
            let validation = raw.validation.and_then(|validation| {
                let at = validation.span().start;
                let validation = validation.into_inner();
                match validation.validate() {
                    Ok(_) => Some(validation),
                    Err(errors) => {
                        for e in errors {
                            self.error(at, format!("invalid `api.validation`: {}", chain(&e)));
                        }
                        None
                    }
                }
            });
            let jwt = raw.jwt.and_then(|jwt| self.api_jwt(jwt, providers));
            let listeners_named = raw.listeners.is_some();
            let served_on = self.api_listeners(section, raw.listeners, listeners);
            let client_certificate = raw.client_certificate.and_then(|settings| {
                let at = settings.span().start;
                let settings = settings.into_inner();
                match settings.validate() {
                    Ok(_) => {
                        if let Some(served_on) = &served_on {
                            self.client_cas_agree(at, &settings, served_on, listeners);
                        }
                        Some(settings)
                    }
                    Err(errors) => {
                        for e in errors {
                            self.error(
                                at,
                                format!("invalid `api.client_certificate`: {}", chain(&e)),
                            );
                        }
                        None
                    }
                }
            });
            let mut certificate_headers = Vec::new();
            for entry in raw.certificate_headers.unwrap_or_default() {
                let section = entry.span().start;
                let entry = entry.into_inner();
                let field = self.required(section, "api.certificate_headers", "field", entry.field);
                let header =
                    self.required(section, "api.certificate_headers", "header", entry.header);
                let (Some(field), Some(header)) = (field, header) else {
                    continue;
                };
                if !crate::policy::client_cert::FIELDS.contains(&field.get_ref().as_str()) {
                    self.error(
                        field.span().start,
                        format!(
                            "invalid `api.certificate_headers.field` {:?}: expected one of {}",
                            field.get_ref(),
                            crate::policy::client_cert::FIELDS.join(", ")
                        ),
                    );
                    continue;
                }
                if !self.settable_header(
                    "api.certificate_headers.header",
                    &header,
                    &[Side::Request],
                ) {
                    continue;
                }
                certificate_headers
                    .push((field.into_inner(), header.into_inner().to_ascii_lowercase()));
            }
            let backend_protocol = self.choice(
                "api.backend_protocol",
                raw.backend_protocol,
                &BackendProtocolConfig::ALL,
                BackendProtocolConfig::default(),
            );
            let timeouts = self.backend_timeouts(raw.timeouts);
            let backend_auth = raw
                .backend_auth
                .and_then(|auth| self.backend_auth(auth, backend.as_ref()));
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
            let (Some(name), Some(path_prefix), Some(backend), Some(served_on)) =
                (name, path_prefix, backend, served_on)
            else {
                continue;
            };
            apis.push(ApiConfig {
                name,
                host: raw.host.map(Spanned::into_inner),
                path_prefix,
                listeners: served_on,
                listeners_named,
                backend,
                products: api_products,
                subscription,
                subscription_key_header,
                subscription_key_query,
                forward_subscription_key: raw.forward_subscription_key.unwrap_or(false),
                rate_limit,
                quota,
                cors,
                headers,
                validation,
                jwt,
                client_certificate,
                certificate_headers,
                backend_protocol,
                timeouts,
                backend_auth,
            });
        }
        apis
    }

    /// `api.listeners`: the addresses of `[[listener]]`s, each once; without it, every
    /// TLS listener. Plain HTTP serves an API only when the API names it (APIM's APIs
    /// take HTTPS unless told otherwise): keys and tokens are not sent in clear text
    /// because a plain listener was added for something else.
    fn api_listeners(
        &mut self,
        section: usize,
        raw: Option<TextList>,
        listeners: &[ListenerConfig],
    ) -> Option<Vec<SocketAddr>> {
        let Some(raw) = raw else {
            let tls: Vec<SocketAddr> = listeners
                .iter()
                .filter(|l| matches!(l.transport, ListenerTransport::Tls { .. }))
                .map(|l| l.address)
                .collect();
            if tls.is_empty() && !listeners.is_empty() {
                self.error(
                    section,
                    "this [[api]] is served by no listener: without `listeners` an API is \
                     served on every TLS listener, and there is none; name the plain-HTTP \
                     listeners that serve it, e.g. listeners = [\"127.0.0.1:8080\"]",
                );
                return None;
            }
            return Some(tls);
        };
        let at = raw.span().start;
        let raw = raw.into_inner();
        if raw.is_empty() {
            self.error(
                at,
                "`api.listeners` is empty: name at least one [[listener]] address, or leave \
                 the key out to serve the API on every TLS listener",
            );
            return None;
        }
        let mut served_on = Vec::with_capacity(raw.len());
        let mut ok = true;
        for address in raw {
            let at = address.span().start;
            let text = address.into_inner();
            let Some(addr) = text
                .parse::<SocketAddr>()
                .ok()
                .filter(|addr| listeners.iter().any(|l| l.address == *addr))
            else {
                let known: Vec<String> = listeners.iter().map(|l| l.address.to_string()).collect();
                self.error(
                    at,
                    format!(
                        "`api.listeners` names {text:?}, which is not the address of a \
                         [[listener]] (written as in its `address`: {})",
                        if known.is_empty() {
                            "there is none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                ok = false;
                continue;
            };
            if served_on.contains(&addr) {
                self.error(at, format!("`api.listeners` names {addr} twice"));
                ok = false;
                continue;
            }
            served_on.push(addr);
        }
        ok.then_some(served_on)
    }

    /// An API that checks client certificates must not be served on listeners that
    /// trust different client CAs, unless each identity pins its issuer by thumbprint:
    /// the check takes the certificate the connection's listener verified, so a
    /// certificate from either CA with a matching name would pass.
    fn client_cas_agree(
        &mut self,
        at: usize,
        settings: &crate::policy::client_cert::ClientCertSettings,
        served_on: &[SocketAddr],
        listeners: &[ListenerConfig],
    ) {
        if !settings.identities.is_empty()
            && settings
                .identities
                .iter()
                .all(|identity| identity.issuer_thumbprint.is_some())
        {
            return;
        }
        let mut trusting: Vec<(SocketAddr, &std::path::Path)> = Vec::new();
        for listener in listeners.iter().filter(|l| served_on.contains(&l.address)) {
            if let ListenerTransport::Tls {
                client_auth:
                    ClientAuthConfig::Optional { ca, .. } | ClientAuthConfig::Required { ca, .. },
                ..
            } = &listener.transport
            {
                trusting.push((listener.address, ca));
            }
        }
        let Some((first, first_ca)) = trusting.first().copied() else {
            return;
        };
        if let Some((other, other_ca)) = trusting.iter().find(|(_, ca)| *ca != first_ca) {
            self.error(
                at,
                format!(
                    "`api.client_certificate` is checked on listeners that trust different \
                     client CAs ({first}: {}; {other}: {}): a certificate from either CA \
                     with a matching name would pass; serve the API on one of them with \
                     `listeners = [...]`, or pin every identity's issuer with \
                     `issuer_thumbprint`",
                    first_ca.display(),
                    other_ca.display()
                ),
            );
        }
    }

    /// `backend_auth`: exactly one of a client certificate, a token file or OAuth2;
    /// the files it names are read and checked now.
    fn backend_auth(
        &mut self,
        raw: Spanned<RawBackendAuth>,
        backend: Option<&Url>,
    ) -> Option<BackendAuth> {
        let section = raw.span().start;
        let raw = raw.into_inner();
        let forms = usize::from(raw.client_cert.is_some() || raw.client_key.is_some())
            + usize::from(raw.bearer_token_file.is_some())
            + usize::from(raw.oauth2.is_some());
        if forms != 1 {
            self.error(
                section,
                "`api.backend_auth` needs exactly one of `client_cert` with `client_key`, `bearer_token_file` or `oauth2`",
            );
            return None;
        }
        if let Some(path) = raw.bearer_token_file {
            let at = path.span().start;
            let path = self.path("api.backend_auth.bearer_token_file", path);
            if path.is_absolute()
                && let Err(e) = backend_auth::read_token_file(&path)
            {
                self.error(
                    at,
                    format!(
                        "invalid `api.backend_auth.bearer_token_file`: {}",
                        chain(&e)
                    ),
                );
                return None;
            }
            return Some(BackendAuth::BearerTokenFile(path));
        }
        if let Some(oauth2) = raw.oauth2 {
            return self.oauth2(oauth2).map(BackendAuth::OAuth2);
        }
        let cert = self.required(section, "api.backend_auth", "client_cert", raw.client_cert);
        let key = self.required(section, "api.backend_auth", "client_key", raw.client_key);
        let (cert, key) = (cert?, key?);
        let at = cert.span().start;
        if let Some(backend) = backend
            && backend.scheme() != "https"
        {
            self.error(
                at,
                format!(
                    "`api.backend_auth.client_cert` needs an https:// backend, not {:?}",
                    backend.as_str()
                ),
            );
            return None;
        }
        let cert = self.path("api.backend_auth.client_cert", cert);
        let key = self.path("api.backend_auth.client_key", key);
        if cert.is_absolute()
            && key.is_absolute()
            && let Err(e) = backend_auth::load_client_cert(&cert, &key)
        {
            self.error(
                at,
                format!("invalid `api.backend_auth.client_cert`: {}", chain(&e)),
            );
            return None;
        }
        Some(BackendAuth::ClientCert { cert, key })
    }

    fn oauth2(&mut self, raw: Spanned<RawOAuth2>) -> Option<OAuth2Settings> {
        let section = raw.span().start;
        let raw = raw.into_inner();
        let table = "api.backend_auth.oauth2";
        let token_url = self.required(section, table, "token_url", raw.token_url);
        let client_id = self.required(section, table, "client_id", raw.client_id);
        let secret = self.required(section, table, "client_secret_file", raw.client_secret_file);
        let errors = self.errors.len();
        let token_url = token_url.and_then(|url| match Url::parse(url.get_ref()) {
            Ok(parsed) if crate::policy::has_user_info(&parsed) => {
                self.error(
                    url.span().start,
                    format!(
                        "invalid `{table}.token_url`: a user name or password in the URL is \
                         never sent (and would be logged); the gateway authenticates with \
                         `client_id` and `client_secret_file`"
                    ),
                );
                None
            }
            Ok(parsed) if parsed.scheme() == "https" && parsed.host().is_some() => Some(parsed),
            _ => {
                self.error(
                    url.span().start,
                    format!(
                        "invalid `{table}.token_url` {:?}: expected an https:// URL with a host",
                        url.get_ref()
                    ),
                );
                None
            }
        });
        if let Some(id) = &client_id
            && id.get_ref().is_empty()
        {
            self.error(
                id.span().start,
                format!("`{table}.client_id` must not be empty"),
            );
        }
        let secret = secret.map(|secret| {
            let at = secret.span().start;
            let path = self.path(&format!("{table}.client_secret_file"), secret);
            if path.is_absolute()
                && let Err(e) = backend_auth::read_secret(&path)
            {
                // The error names the file, never its content.
                self.error(
                    at,
                    format!("invalid `{table}.client_secret_file`: {}", chain(&e)),
                );
            }
            path
        });
        let ca_file = raw.ca_file.map(|ca| {
            let at = ca.span().start;
            let path = self.path(&format!("{table}.ca_file"), ca);
            if path.is_absolute()
                && let Err(e) = backend_auth::token_roots(Some(&path))
            {
                self.error(at, format!("invalid `{table}.ca_file`: {}", chain(&e)));
            }
            path
        });
        let scope = raw.scope.map(Spanned::into_inner);
        if self.errors.len() != errors {
            return None;
        }
        Some(OAuth2Settings {
            token_url: token_url?,
            client_id: client_id?.into_inner(),
            client_secret_file: secret?,
            scope,
            ca_file,
        })
    }

    fn backend_timeouts(
        &mut self,
        raw: Option<Spanned<RawBackendTimeouts>>,
    ) -> BackendTimeoutsConfig {
        let defaults = BackendTimeoutsConfig::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let raw = raw.into_inner();
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        BackendTimeoutsConfig {
            connect: self.seconds(
                "api.timeouts.connect_secs",
                raw.connect_secs,
                1..=300,
                secs(defaults.connect),
            ),
            response: self.seconds(
                "api.timeouts.response_secs",
                raw.response_secs,
                1..=86_400,
                secs(defaults.response),
            ),
            pool_idle: self.seconds(
                "api.timeouts.pool_idle_secs",
                raw.pool_idle_secs,
                1..=3_600,
                secs(defaults.pool_idle),
            ),
        }
    }

    fn seconds(
        &mut self,
        key: &str,
        value: Option<Spanned<i64>>,
        range: RangeInclusive<u32>,
        default: u32,
    ) -> Duration {
        Duration::from_secs(self.integer(key, value, range, default).into())
    }

    fn counter(&mut self, key: &str, value: Option<Text>) -> CounterConfig {
        let Some(value) = value else {
            return CounterConfig::default();
        };
        match value.get_ref().as_str() {
            "subscription" => CounterConfig::Subscription,
            "ip" => CounterConfig::ClientIp,
            text if text.starts_with("claim:") && text.len() > "claim:".len() => {
                CounterConfig::Claim(text["claim:".len()..].to_owned())
            }
            text => match text.strip_prefix("header:") {
                Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                    CounterConfig::Header(name.to_ascii_lowercase())
                }
                _ => {
                    self.error(
                        value.span().start,
                        format!(
                            "invalid `{key}` {text:?}: expected \"subscription\", \"ip\", \"header:NAME\" or \"claim:NAME\""
                        ),
                    );
                    CounterConfig::default()
                }
            },
        }
    }

    fn quota(&mut self, table: &str, raw: Spanned<RawQuota>) -> Option<QuotaConfig> {
        let section = raw.span().start;
        let raw = raw.into_inner();
        if raw.period_secs.is_none() || (raw.calls.is_none() && raw.kilobytes.is_none()) {
            self.error(
                section,
                format!("`{table}.quota` needs `period_secs` and `calls`, `kilobytes` or both"),
            );
            return None;
        }
        let errors = self.errors.len();
        let calls = raw.calls.map(|calls| {
            self.integer64(
                &format!("{table}.quota.calls"),
                Some(calls),
                1..=MAX_QUOTA,
                1,
            )
        });
        let kilobytes = raw.kilobytes.map(|kb| {
            self.integer64(
                &format!("{table}.quota.kilobytes"),
                Some(kb),
                1..=MAX_QUOTA,
                1,
            )
        });
        let period_secs = self.integer64(
            &format!("{table}.quota.period_secs"),
            raw.period_secs,
            0..=MAX_QUOTA_PERIOD_SECS,
            0,
        );
        let counter = self.counter(&format!("{table}.quota.counter"), raw.counter);
        (self.errors.len() == errors).then_some(QuotaConfig {
            calls,
            kilobytes,
            period_secs,
            counter,
        })
    }

    pub(super) fn subscriptions(
        &mut self,
        raw: Vec<Spanned<RawSubscription>>,
        apis: &[ApiConfig],
        products: &[ProductConfig],
    ) -> Vec<SubscriptionConfig> {
        let mut seen = HashSet::new();
        let mut hashes = HashSet::new();
        let mut subscriptions = Vec::with_capacity(raw.len());
        for raw in raw {
            let section = raw.span().start;
            let raw = raw.into_inner();
            let name = self.name(section, "subscription", raw.name, &mut seen);
            let scope = self.scope(raw.scope, apis, products);
            let state = self.choice(
                "subscription.state",
                raw.state,
                &SUBSCRIPTION_STATES,
                SubscriptionState::Active,
            );
            let primary = self.key_hash(
                section,
                "primary_key_sha256",
                raw.primary_key_sha256,
                &mut hashes,
            );
            let secondary = self.key_hash(
                section,
                "secondary_key_sha256",
                raw.secondary_key_sha256,
                &mut hashes,
            );
            if let (Some(name), Some(scope), Some(primary), Some(secondary)) =
                (name, scope, primary, secondary)
            {
                subscriptions.push(SubscriptionConfig {
                    name,
                    scope,
                    state,
                    primary,
                    secondary,
                });
            }
        }
        subscriptions
    }

    /// `"all"`, `"product:NAME"` or `"api:NAME"` (default `"all"`), naming one that exists.
    fn scope(
        &mut self,
        value: Option<Text>,
        apis: &[ApiConfig],
        products: &[ProductConfig],
    ) -> Option<Scope> {
        let Some(value) = value else {
            return Some(Scope::AllApis);
        };
        let text = value.get_ref().as_str();
        let scope = if text == "all" {
            Some(Scope::AllApis)
        } else if let Some(name) = text.strip_prefix("product:") {
            products
                .iter()
                .any(|p| p.name == name)
                .then(|| Scope::Product(name.to_owned()))
        } else if let Some(name) = text.strip_prefix("api:") {
            apis.iter()
                .any(|a| a.name == name)
                .then(|| Scope::Api(name.to_owned()))
        } else {
            None
        };
        if scope.is_none() {
            self.error(
                value.span().start,
                format!(
                    "invalid `subscription.scope` {text:?}: expected \"all\", \"product:NAME\" or \"api:NAME\" naming a declared product or API"
                ),
            );
        }
        scope
    }

    fn key_hash(
        &mut self,
        section: usize,
        key: &str,
        value: Option<Text>,
        seen: &mut HashSet<String>,
    ) -> Option<KeyHash> {
        let value = self.required(section, "subscription", key, value)?;
        let text = value.get_ref().trim().to_ascii_lowercase();
        let Ok(hash) = KeyHash::from_hex(&text) else {
            self.error(
                value.span().start,
                format!(
                    "invalid `subscription.{key}`: expected the key's SHA-256 as 64 hex digits (e.g. `printf %s KEY | sha256sum`), never the key itself"
                ),
            );
            return None;
        };
        if !seen.insert(text) {
            self.error(
                value.span().start,
                "this key hash is used twice: every subscription key must be different",
            );
            return None;
        }
        Some(hash)
    }

    pub(super) fn gateway(&mut self, raw: Option<Spanned<RawGateway>>) -> GatewayConfig {
        let defaults = GatewayConfig::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let raw = raw.into_inner();
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let backend_ca = raw
            .backend_ca
            .map(Spanned::into_inner)
            .unwrap_or_default()
            .into_iter()
            .map(|path| self.path("gateway.backend_ca", path))
            .collect();
        let max_connections = self.integer(
            "gateway.max_connections",
            raw.max_connections,
            1..=1_000_000,
            defaults.max_connections,
        );
        let max_backend_requests = self.integer(
            "gateway.max_backend_requests",
            raw.max_backend_requests,
            1..=1_000_000,
            defaults.max_backend_requests,
        );
        GatewayConfig {
            max_header_bytes: self.integer(
                "gateway.max_header_bytes",
                raw.max_header_bytes,
                1024..=1024 * 1024,
                defaults.max_header_bytes,
            ),
            max_body_bytes: self.integer64(
                "gateway.max_body_bytes",
                raw.max_body_bytes,
                1..=1 << 40,
                defaults.max_body_bytes,
            ),
            max_connections,
            max_connections_per_source: self.integer(
                "gateway.max_connections_per_source",
                raw.max_connections_per_source,
                0..=1_000_000,
                default_connections_per_source(max_connections),
            ),
            max_backend_requests,
            max_backend_requests_per_source: self.integer(
                "gateway.max_backend_requests_per_source",
                raw.max_backend_requests_per_source,
                0..=1_000_000,
                default_backend_requests_per_source(max_backend_requests),
            ),
            header_read_timeout: self.seconds(
                "gateway.header_read_timeout_secs",
                raw.header_read_timeout_secs,
                1..=300,
                secs(defaults.header_read_timeout),
            ),
            idle_timeout: self.seconds(
                "gateway.idle_timeout_secs",
                raw.idle_timeout_secs,
                1..=3_600,
                secs(defaults.idle_timeout),
            ),
            request_timeout: self.seconds(
                "gateway.request_timeout_secs",
                raw.request_timeout_secs,
                1..=86_400,
                secs(defaults.request_timeout),
            ),
            max_concurrent_streams: self.integer(
                "gateway.max_concurrent_streams",
                raw.max_concurrent_streams,
                1..=10_000,
                defaults.max_concurrent_streams,
            ),
            drain_timeout: self.seconds(
                "gateway.drain_timeout_secs",
                raw.drain_timeout_secs,
                0..=3_600,
                secs(defaults.drain_timeout),
            ),
            trusted_proxies: self.networks("gateway.trusted_proxies", raw.trusted_proxies),
            backend_ca,
            worker_threads: self.integer(
                "gateway.worker_threads",
                raw.worker_threads,
                0..=1024,
                defaults.worker_threads,
            ),
            access_log: self.choice(
                "gateway.access_log",
                raw.access_log,
                &AccessLogConfig::ALL,
                defaults.access_log,
            ),
            allow_encoded_slashes: raw
                .allow_encoded_slashes
                .unwrap_or(defaults.allow_encoded_slashes),
            lingering_timeout: self.seconds(
                "gateway.lingering_timeout_secs",
                raw.lingering_timeout_secs,
                0..=300,
                secs(defaults.lingering_timeout),
            ),
            lingering_time: self.seconds(
                "gateway.lingering_time_secs",
                raw.lingering_time_secs,
                1..=3_600,
                secs(defaults.lingering_time),
            ),
            ipv6_client_prefix: self.prefix_len(
                "gateway.ipv6_client_prefix",
                raw.ipv6_client_prefix,
                MIN_IPV6_CLIENT_PREFIX..=MAX_IPV6_CLIENT_PREFIX,
                defaults.ipv6_client_prefix,
            ),
        }
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
            Ok(url) if crate::policy::has_user_info(&url) => {
                // Not echoed: the value holds a password.
                self.error(
                    value.span().start,
                    "invalid `api.backend`: a user name or password in the URL is never sent \
                     to the backend (and would show wherever the URL does); authenticate with \
                     `backend_auth` (a bearer token file, a client certificate or OAuth2)"
                        .to_owned(),
                );
                None
            }
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

    /// Whether the gateway may set a header named `value` itself (a claim, a
    /// certificate field, a rate-limit count): a header name that no header rule
    /// on any of `sides` would be refused (framing, hop-by-hop, `Host`, forwarding
    /// headers, see [`forbidden_reason`]); else an error at its position.
    fn settable_header(&mut self, key: &str, value: &Text, sides: &[Side]) -> bool {
        let Ok(name) = http::HeaderName::from_bytes(value.get_ref().as_bytes()) else {
            self.error(
                value.span().start,
                format!("invalid `{key}` {:?}: not a header name", value.get_ref()),
            );
            return false;
        };
        match sides.iter().find_map(|side| forbidden_reason(*side, &name)) {
            Some(why) => {
                self.error(
                    value.span().start,
                    format!(
                        "invalid `{key}` {:?}: {name} cannot be used: {why}",
                        value.get_ref()
                    ),
                );
                false
            }
            None => true,
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
        let counter = self.counter(&format!("{table}.rate_limit.counter"), raw.counter);
        let algorithm = self.choice(
            &format!("{table}.rate_limit.algorithm"),
            raw.algorithm,
            &RateLimitAlgorithm::ALL,
            RateLimitAlgorithm::default(),
        );
        // Sent on admitted responses and on the 429 (whose `Retry-After` they must
        // not replace); on either side of the gateway a count is no framing,
        // connection or forwarding header.
        let sides = [Side::Request, Side::Response];
        let mut header = |key: &str, value: Option<Text>| {
            let value = value?;
            let key = format!("{table}.rate_limit.{key}");
            if self.settable_header(&key, &value, &sides)
                && value.get_ref().eq_ignore_ascii_case("retry-after")
            {
                self.error(
                    value.span().start,
                    format!(
                        "invalid `{key}` {:?}: Retry-After is the limit's own header",
                        value.get_ref()
                    ),
                );
            }
            Some(value)
        };
        let remaining_header = header("remaining_header", raw.remaining_header);
        let total_header = header("total_header", raw.total_header);
        if let (Some(remaining), Some(total)) = (&remaining_header, &total_header)
            && remaining.get_ref().eq_ignore_ascii_case(total.get_ref())
        {
            self.error(
                total.span().start,
                format!(
                    "invalid `{table}.rate_limit.total_header` {:?}: the same header as `remaining_header`",
                    total.get_ref()
                ),
            );
        }
        let remaining_header = remaining_header.map(Spanned::into_inner);
        let total_header = total_header.map(Spanned::into_inner);
        (self.errors.len() == errors).then_some(RateLimitConfig {
            calls,
            period_secs,
            counter,
            algorithm,
            remaining_header,
            total_header,
        })
    }
}

/// Where a product's `claim:` counter is written.
pub(super) struct ClaimCounterAt {
    product: String,
    /// `product.rate_limit.counter` or `product.quota.counter`.
    key: String,
    counter: String,
    at: usize,
}

/// The counter, if it is a `claim:NAME` one (as [`Checker::counter`] reads it).
fn claim_counter(counter: &Option<Text>) -> Option<&Text> {
    counter
        .as_ref()
        .filter(|c| c.get_ref().starts_with("claim:") && c.get_ref().len() > "claim:".len())
}

/// The `claim:` counters of a rate limit and a quota, each with its policy's key.
fn claim_counters_of<'a>(
    rate_limit: Option<&'a Spanned<RawRateLimit>>,
    quota: Option<&'a Spanned<RawQuota>>,
) -> impl Iterator<Item = (&'static str, &'a Text)> {
    [
        ("rate_limit", rate_limit.map(|r| &r.get_ref().counter)),
        ("quota", quota.map(|q| &q.get_ref().counter)),
    ]
    .into_iter()
    .filter_map(|(policy, counter)| counter.and_then(claim_counter).map(|c| (policy, c)))
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    crate::service::chain(e)
}
