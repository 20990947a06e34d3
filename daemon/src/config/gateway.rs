//! The gateway sections: `[[listener]]`, `[[api]]` and `[[product]]`, validated.

use std::net::SocketAddr;
use std::path::PathBuf;

use url::Url;

use crate::policy::cors::CorsSettings;
use crate::policy::headers::HeaderRulesSettings;

/// Highest configurable `rate_limit.calls`.
pub const MAX_RATE_LIMIT_CALLS: u32 = 100_000_000;
/// Longest configurable `rate_limit.period_secs`: one day (quotas cover longer periods).
pub const MAX_RATE_LIMIT_PERIOD_SECS: u32 = 86_400;

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
    },
    PlainHttp,
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
    pub backend: Url,
    /// Names of `[[product]]`s, each checked to exist.
    pub products: Vec<String>,
    pub subscription: SubscriptionRequirement,
    pub subscription_key_header: String,
    pub subscription_key_query: String,
    pub forward_subscription_key: bool,
    pub rate_limit: Option<RateLimitConfig>,
    pub cors: Option<CorsSettings>,
    pub headers: HeaderRulesSettings,
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

/// `rate_limit = { calls, period_secs }`: counted per subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub calls: u32,
    pub period_secs: u32,
}

/// `[[product]]`: a group of APIs, with an optional rate limit per subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductConfig {
    pub name: String,
    pub rate_limit: Option<RateLimitConfig>,
}
