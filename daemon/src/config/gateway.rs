//! The gateway sections: `[[listener]]`, `[[api]]` and `[[product]]`, validated.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

use crate::policy::cors::CorsSettings;
use crate::policy::headers::HeaderRulesSettings;
use crate::policy::keys::{KeyHash, Scope, SubscriptionState};
use crate::policy::validate::ValidationSettings;

/// Highest configurable `rate_limit.calls`.
pub const MAX_RATE_LIMIT_CALLS: u32 = 100_000_000;
/// Longest configurable `rate_limit.period_secs`: one day (quotas cover longer periods).
pub const MAX_RATE_LIMIT_PERIOD_SECS: u32 = 86_400;
/// The IPv6 prefix a client is counted by, unless configured: what an ISP or a cloud
/// hands one customer (the unit Cloudflare's rate limiting counts IPv6 by).
pub const DEFAULT_IPV6_CLIENT_PREFIX: u8 = 64;
/// Bounds of `[gateway] ipv6_client_prefix` (128: per address).
pub const MIN_IPV6_CLIENT_PREFIX: u8 = 32;
pub const MAX_IPV6_CLIENT_PREFIX: u8 = 128;

/// `[[listener]]`: an address the gateway accepts connections on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub transport: ListenerTransport,
}

/// TLS, or plain HTTP only when `plain_http = true` says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerTransport {
    Tls {
        cert: PathBuf,
        key: PathBuf,
        /// Further certificates chosen by SNI host name.
        sni: Vec<SniCertConfig>,
        /// Client certificates (mTLS).
        client_auth: ClientAuthConfig,
    },
    PlainHttp,
}

/// `tls.client_auth` with `tls.client_ca` and `tls.crl`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClientAuthConfig {
    #[default]
    None,
    Optional {
        ca: PathBuf,
        crls: Vec<PathBuf>,
    },
    Required {
        ca: PathBuf,
        crls: Vec<PathBuf>,
    },
}

/// `tls.sni = [{ hostname, cert, key }]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCertConfig {
    pub hostname: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[[api]]`: one proxied API and its policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub name: String,
    pub host: Option<String>,
    pub path_prefix: String,
    /// The `[[listener]]`s (their addresses) that serve the API: those `listeners`
    /// names, else every TLS listener (plain-HTTP listeners serve only the APIs that
    /// name them).
    pub listeners: Vec<SocketAddr>,
    /// Whether the file names them (`listeners = [...]`); else they follow the TLS
    /// listeners.
    pub listeners_named: bool,
    pub backend: Url,
    /// Names of `[[product]]`s, each checked to exist.
    pub products: Vec<String>,
    pub subscription: SubscriptionRequirement,
    pub subscription_key_header: String,
    pub subscription_key_query: String,
    pub forward_subscription_key: bool,
    pub rate_limit: Option<RateLimitConfig>,
    pub quota: Option<QuotaConfig>,
    pub cors: Option<CorsSettings>,
    pub headers: HeaderRulesSettings,
    /// `[api.validation]`: checked before forwarding; `None` checks nothing.
    pub validation: Option<ValidationSettings>,
    /// `jwt = { provider, ... }`: a token from a `[[jwt_provider]]` is required.
    pub jwt: Option<ApiJwtConfig>,
    /// `client_certificate = { identities, check_validity }`: a verified client
    /// certificate matching an identity is required (403 otherwise).
    pub client_certificate: Option<crate::policy::client_cert::ClientCertSettings>,
    /// `certificate_headers = [{ field, header }]`: client certificate fields sent to
    /// the backend (client copies removed).
    pub certificate_headers: Vec<(String, String)>,
    pub backend_protocol: BackendProtocolConfig,
    pub timeouts: BackendTimeoutsConfig,
    /// `backend_auth = { ... }`: a client certificate for the backend, or a bearer
    /// token (from a file or OAuth2 client credentials) set on forwarded requests.
    pub backend_auth: Option<crate::policy::backend_auth::BackendAuth>,
}

/// `[[api]] jwt = { provider, roles_claim, roles, claims_to_headers }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiJwtConfig {
    /// Name of a `[[jwt_provider]]`.
    pub provider: String,
    /// The claim holding the caller's roles (an array, or a space-separated string).
    pub roles_claim: String,
    /// Evaluated in order; the first whose methods include the request's applies.
    /// Empty: any valid token passes. Not empty and no rule for the method: 403.
    pub roles: Vec<RoleRule>,
    pub claims_to_headers: Vec<ClaimHeader>,
}

/// `{ methods = [...], values = [...], match = "any" | "all" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRule {
    /// Upper-case method names; empty: every method.
    pub methods: Vec<String>,
    pub values: Vec<String>,
    /// `true`: every value is required; `false` (default): any one.
    pub all: bool,
}

/// `{ claim, header, default }`: a claim sent to the backend as a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub claim: String,
    /// Lower-case header name.
    pub header: String,
    pub default: Option<String>,
}

/// `[[api]] backend_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendProtocolConfig {
    /// HTTP/1.1, or HTTP/2 over https when the backend offers it.
    #[default]
    Auto,
    /// HTTP/2 only (h2c prior knowledge over http).
    Http2,
}

impl BackendProtocolConfig {
    pub const ALL: [(&'static str, BackendProtocolConfig); 2] = [
        ("auto", BackendProtocolConfig::Auto),
        ("http2", BackendProtocolConfig::Http2),
    ];
}

/// `[[api]] timeouts = { connect_secs, response_secs, idle_secs }`, towards the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendTimeoutsConfig {
    /// TCP (and TLS) connect: 502 when exceeded.
    pub connect: Duration,
    /// From the request being sent to the response head: 504 when exceeded.
    pub response: Duration,
    /// Pooled idle upstream connections are closed after this.
    pub pool_idle: Duration,
}

impl Default for BackendTimeoutsConfig {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(30),
            pool_idle: Duration::from_secs(90),
        }
    }
}

/// `[[api]] subscription`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubscriptionRequirement {
    /// A valid key must be sent (APIM's default).
    #[default]
    Required,
    /// A key is checked when sent; requests without one pass anonymously.
    Optional,
    /// Keys are neither read nor removed.
    None,
}

impl SubscriptionRequirement {
    pub const ALL: [(&'static str, SubscriptionRequirement); 3] = [
        ("required", SubscriptionRequirement::Required),
        ("optional", SubscriptionRequirement::Optional),
        ("none", SubscriptionRequirement::None),
    ];
}

/// `rate_limit = { calls, period_secs, counter, algorithm, remaining_header, total_header }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub calls: u32,
    pub period_secs: u32,
    pub counter: CounterConfig,
    pub algorithm: RateLimitAlgorithm,
    /// Response header carrying the calls left (APIM `remaining-calls-header-name`).
    pub remaining_header: Option<String>,
    /// Response header carrying `calls` (APIM `total-calls-header-name`).
    pub total_header: Option<String>,
}

impl RateLimitConfig {
    /// `calls` per `period_secs`, per subscription, with the default algorithm.
    pub fn new(calls: u32, period_secs: u32) -> Self {
        Self {
            calls,
            period_secs,
            counter: CounterConfig::default(),
            algorithm: RateLimitAlgorithm::default(),
            remaining_header: None,
            total_header: None,
        }
    }

    /// Whether `other` counts the same way (the same calls, period, counter and
    /// algorithm), whatever headers announce the counts: a reload keeps the counters
    /// of such a limit.
    pub fn counts_like(&self, other: &Self) -> bool {
        let Self {
            calls,
            period_secs,
            counter,
            algorithm,
            remaining_header: _,
            total_header: _,
        } = self;
        *calls == other.calls
            && *period_secs == other.period_secs
            && *counter == other.counter
            && *algorithm == other.algorithm
    }
}

/// `rate_limit.algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitAlgorithm {
    /// `"sliding_window"`: never more than `calls` admitted in any `period_secs`
    /// (APIM's classic tiers).
    #[default]
    SlidingWindow,
    /// `"token_bucket"`: a burst of `calls`, then one call every `period / calls`
    /// (APIM's v2 tiers).
    TokenBucket,
}

impl RateLimitAlgorithm {
    pub const ALL: [(&'static str, RateLimitAlgorithm); 2] = [
        ("sliding_window", RateLimitAlgorithm::SlidingWindow),
        ("token_bucket", RateLimitAlgorithm::TokenBucket),
    ];
}

/// What a rate limit or quota counts by (APIM's `counter-key`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CounterConfig {
    /// `"subscription"`: per subscription; requests without one count per client address.
    #[default]
    Subscription,
    /// `"ip"`: per client address (the TCP peer, or the client a trusted proxy names).
    ClientIp,
    /// `"header:NAME"`: per value of a request header; requests without it count per
    /// client address.
    Header(String),
    /// `"claim:NAME"`: per value of a claim of the API's verified JWT; requests
    /// without it count per client address.
    Claim(String),
}

/// `quota = { calls, kilobytes, period_secs, counter }`: a fixed window (APIM quota).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaConfig {
    pub calls: Option<u64>,
    /// Request plus response body kilobytes (1,024 bytes).
    pub kilobytes: Option<u64>,
    /// Window length; 0 means the quota never renews.
    pub period_secs: u64,
    pub counter: CounterConfig,
}

/// `[[product]]`: a group of APIs, with an optional rate limit and quota per subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductConfig {
    pub name: String,
    pub rate_limit: Option<RateLimitConfig>,
    pub quota: Option<QuotaConfig>,
}

/// `[[subscription]]`: a subscription declared in the file, with key hashes only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    pub name: String,
    pub scope: Scope,
    pub state: SubscriptionState,
    pub primary: KeyHash,
    pub secondary: KeyHash,
}

/// `max_connections_per_source` when not given: this, or a quarter of
/// `max_connections` when that is less ([`default_connections_per_source`]).
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: u32 = 256;

/// The default `max_connections_per_source` for `max_connections`: 256, so that with
/// the default 10,000 slots one address holds at most 2.5 % of them, and at most a
/// quarter of a smaller `max_connections`, so that one address never takes every
/// slot (at least 1).
pub fn default_connections_per_source(max_connections: u32) -> u32 {
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE.min((max_connections / 4).max(1))
}

/// The default `max_backend_requests_per_source` for `max_backend_requests`: a
/// quarter of it (at least 1), so that one source never takes every request in
/// flight (2,500 of the default 10,000).
pub fn default_backend_requests_per_source(max_backend_requests: u32) -> u32 {
    (max_backend_requests / 4).max(1)
}

/// `[gateway]`: limits that protect the gateway, trusted proxies, backend CAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    pub max_header_bytes: u32,
    pub max_body_bytes: u64,
    pub max_connections: u32,
    /// Client connections from one address at once; 0: no cap.
    pub max_connections_per_source: u32,
    /// Requests in flight to backends over all APIs; more get 503.
    pub max_backend_requests: u32,
    /// Requests in flight to backends from one source; 0: no cap.
    pub max_backend_requests_per_source: u32,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub drain_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub backend_ca: Vec<PathBuf>,
    /// Threads serving requests; 0 = one per CPU the daemon may run on.
    pub worker_threads: u32,
    pub access_log: AccessLogConfig,
    /// Request paths with `%2F`, `%5C` or `\` are forwarded instead of refused.
    pub allow_encoded_slashes: bool,
    /// After the gateway ends a connection, the longest wait for the client's next
    /// bytes (read and dropped); zero: no lingering.
    pub lingering_timeout: Duration,
    /// The longest lingering after a connection ends.
    pub lingering_time: Duration,
    /// Length of the IPv6 prefix a client address is counted by (`counter = "ip"`,
    /// and the client-address fallback of the other counters); 128: per address.
    pub ipv6_client_prefix: u8,
}

/// `[gateway] access_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogConfig {
    #[default]
    All,
    Errors,
    Off,
}

impl AccessLogConfig {
    pub const ALL: [(&'static str, AccessLogConfig); 3] = [
        ("all", AccessLogConfig::All),
        ("errors", AccessLogConfig::Errors),
        ("off", AccessLogConfig::Off),
    ];
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_body_bytes: 100 * 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_source: default_connections_per_source(10_000),
            max_backend_requests: 10_000,
            max_backend_requests_per_source: default_backend_requests_per_source(10_000),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(300),
            max_concurrent_streams: 100,
            drain_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            backend_ca: Vec::new(),
            worker_threads: 0,
            access_log: AccessLogConfig::All,
            allow_encoded_slashes: false,
            lingering_timeout: Duration::from_secs(5),
            lingering_time: Duration::from_secs(30),
            ipv6_client_prefix: DEFAULT_IPV6_CLIENT_PREFIX,
        }
    }
}
