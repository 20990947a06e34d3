//! The file as serde reads it: every value optional and spanned, so that
//! validation can apply defaults, check every value and point at each one.
//!
//! Only syntax, types and key names are checked here; numbers are read as
//! TOML's `i64` and enumerations as strings so that a value out of range is
//! reported with all the other validation errors instead of stopping serde.

use serde::Deserialize;
use toml::Spanned;

use crate::policy::client_cert::ClientCertSettings;
use crate::policy::cors::CorsSettings;
use crate::policy::headers::HeaderRulesSettings;
use crate::policy::jwt::JwtProviderSettings;
use crate::policy::validate::ValidationSettings;

pub(super) type Text = Spanned<String>;
pub(super) type TextList = Spanned<Vec<Text>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of sections")]
pub(super) struct RawConfig {
    pub daemon: Option<RawDaemon>,
    pub filter: Option<Spanned<RawFilter>>,
    pub listener: Option<Vec<Spanned<RawListener>>>,
    pub api: Option<Vec<Spanned<RawApi>>>,
    pub product: Option<Vec<Spanned<RawProduct>>>,
    pub subscription: Option<Vec<Spanned<RawSubscription>>>,
    pub gateway: Option<Spanned<RawGateway>>,
    pub jwt_provider: Option<Vec<Spanned<JwtProviderSettings>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawDaemon {
    pub state_dir: Option<Text>,
    pub runtime_dir: Option<Text>,
    pub pin_root: Option<Text>,
    pub log_level: Option<Text>,
    pub log_target: Option<Text>,
    pub control_socket: Option<Text>,
    pub control_group: Option<Text>,
    pub admin_listen: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawFilter {
    pub interfaces: Option<TextList>,
    pub attach_mode: Option<Text>,
    pub protect: Option<TextList>,
    pub drop_malformed: Option<bool>,
    pub monitor: Option<bool>,
    pub bypass: Option<TextList>,
    pub deny: Option<TextList>,
    pub allow: Option<TextList>,
    pub events_per_second: Option<Spanned<i64>>,
    pub events_burst: Option<Spanned<i64>>,
    pub max_deny_entries: Option<Spanned<i64>>,
    pub geo: Option<Spanned<RawGeo>>,
    pub flood: Option<Spanned<RawFlood>>,
    pub autoban: Option<Spanned<RawAutoban>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawAutoban {
    pub enabled: Option<bool>,
    pub auth_failures: Option<Spanned<i64>>,
    pub rate_limited: Option<Spanned<i64>>,
    pub window_secs: Option<Spanned<i64>>,
    pub ban_secs: Option<Spanned<i64>>,
    pub max_tracked_sources: Option<Spanned<i64>>,
    pub ipv6_prefix: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawGeo {
    pub database: Option<Text>,
    pub block: Option<TextList>,
    pub allow_only: Option<TextList>,
    pub allow_unknown: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawFlood {
    pub packets_per_second: Option<Spanned<i64>>,
    pub burst: Option<Spanned<i64>>,
    pub ipv6_prefix: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawListener {
    pub address: Option<Text>,
    pub tls: Option<Spanned<RawTls>>,
    pub plain_http: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawTls {
    pub cert: Option<Text>,
    pub key: Option<Text>,
    pub sni: Option<Vec<Spanned<RawSni>>>,
    pub client_auth: Option<Text>,
    pub client_ca: Option<Text>,
    pub crl: Option<TextList>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawSni {
    pub hostname: Option<Text>,
    pub cert: Option<Text>,
    pub key: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawApi {
    pub name: Option<Text>,
    pub host: Option<Text>,
    pub path_prefix: Option<Text>,
    pub listeners: Option<TextList>,
    pub backend: Option<Text>,
    pub products: Option<TextList>,
    pub subscription: Option<Text>,
    pub subscription_key_header: Option<Text>,
    pub subscription_key_query: Option<Text>,
    pub forward_subscription_key: Option<bool>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub quota: Option<Spanned<RawQuota>>,
    pub cors: Option<Spanned<CorsSettings>>,
    pub headers: Option<Spanned<HeaderRulesSettings>>,
    pub validation: Option<Spanned<ValidationSettings>>,
    pub jwt: Option<Spanned<RawApiJwt>>,
    pub client_certificate: Option<Spanned<ClientCertSettings>>,
    pub certificate_headers: Option<Vec<Spanned<RawCertHeader>>>,
    pub backend_protocol: Option<Text>,
    pub timeouts: Option<Spanned<RawBackendTimeouts>>,
    pub backend_auth: Option<Spanned<RawBackendAuth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawBackendAuth {
    pub client_cert: Option<Text>,
    pub client_key: Option<Text>,
    pub bearer_token_file: Option<Text>,
    pub oauth2: Option<Spanned<RawOAuth2>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawOAuth2 {
    pub token_url: Option<Text>,
    pub client_id: Option<Text>,
    pub client_secret_file: Option<Text>,
    pub scope: Option<Text>,
    pub ca_file: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawCertHeader {
    pub field: Option<Text>,
    pub header: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawApiJwt {
    pub provider: Option<Text>,
    pub roles_claim: Option<Text>,
    pub roles: Option<Vec<Spanned<RawRoleRule>>>,
    pub claims_to_headers: Option<Vec<Spanned<RawClaimHeader>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawRoleRule {
    pub methods: Option<TextList>,
    pub values: Option<TextList>,
    #[serde(rename = "match")]
    pub match_: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawClaimHeader {
    pub claim: Option<Text>,
    pub header: Option<Text>,
    pub default: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawBackendTimeouts {
    pub connect_secs: Option<Spanned<i64>>,
    pub response_secs: Option<Spanned<i64>>,
    pub pool_idle_secs: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawQuota {
    pub calls: Option<Spanned<i64>>,
    pub kilobytes: Option<Spanned<i64>>,
    pub period_secs: Option<Spanned<i64>>,
    pub counter: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawSubscription {
    pub name: Option<Text>,
    pub scope: Option<Text>,
    pub state: Option<Text>,
    pub primary_key_sha256: Option<Text>,
    pub secondary_key_sha256: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawGateway {
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_source: Option<Spanned<i64>>,
    pub max_backend_requests: Option<Spanned<i64>>,
    pub max_backend_requests_per_source: Option<Spanned<i64>>,
    pub header_read_timeout_secs: Option<Spanned<i64>>,
    pub idle_timeout_secs: Option<Spanned<i64>>,
    pub request_timeout_secs: Option<Spanned<i64>>,
    pub max_concurrent_streams: Option<Spanned<i64>>,
    pub drain_timeout_secs: Option<Spanned<i64>>,
    pub trusted_proxies: Option<TextList>,
    pub backend_ca: Option<TextList>,
    pub worker_threads: Option<Spanned<i64>>,
    pub access_log: Option<Text>,
    pub allow_encoded_slashes: Option<bool>,
    pub lingering_timeout_secs: Option<Spanned<i64>>,
    pub lingering_time_secs: Option<Spanned<i64>>,
    pub ipv6_client_prefix: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawRateLimit {
    pub calls: Option<Spanned<i64>>,
    pub period_secs: Option<Spanned<i64>>,
    pub counter: Option<Text>,
    pub algorithm: Option<Text>,
    pub remaining_header: Option<Text>,
    pub total_header: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawProduct {
    pub name: Option<Text>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub quota: Option<Spanned<RawQuota>>,
}
