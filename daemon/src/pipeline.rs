//! The per-API policy chain the gateway runs, built from the configuration: a
//! [`RequestPolicy`] that applies, in APIM's order, the CORS preflight, the
//! subscription key, the rate limits, the quotas, request validation and the
//! header rules of the routed API.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri, header, response};

use crate::config::{
    AccessLogConfig, BackendProtocolConfig, ClaimHeader, ClientAuthConfig, Config, CounterConfig,
    ListenerTransport, RateLimitConfig, RoleRule, SubscriptionRequirement,
};
use crate::gateway::{
    AccessLog, ApiSettings, BackendProtocol, BackendTimeouts, CertFiles, ClientAuth, ClientCa,
    GatewaySettings, Limits, ListenerSettings, RequestContext, RequestPolicy, ResponseContext,
    SniCert, Stop, StreamLimit, TlsSettings, Transferred, Transport, remove_client_copies,
};
use crate::policy::client_cert::ClientCertPolicy;
use crate::policy::cors::{self, CorsPolicy};
use crate::policy::headers::HeaderRules;
use crate::policy::jwt::{JwtProvider, JwtProviderSettings, JwtRejection, VerifiedToken};
use crate::policy::keys::{self, KeyHash, KeyRejection, KeyStore, KeyStoreError, Scope};
use crate::policy::quota::{Quota, QuotaCounters, QuotaError, QuotaUsage};
use crate::policy::throttle::{Admitted, RateLimitHeaders, RateLimiter, ThrottleError};
use crate::policy::validate::{BodyPlan, RequestInvalid, RequestValidator};

mod build;
#[cfg(test)]
mod tests;

pub use build::{open_quotas, static_subscriptions};

/// Quota counters kept at most (each a few dozen bytes); the ones closest to the end
/// of their window are dropped first when full.
const MAX_QUOTA_KEYS: usize = 1_000_000;

/// Why the policies of a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot open the subscription store")]
    KeyStore(#[source] KeyStoreError),
    #[error("cannot open the quota counters")]
    Quota(#[source] QuotaError),
    #[error("rate limit of {owner:?}")]
    RateLimit {
        owner: String,
        #[source]
        source: ThrottleError,
    },
    #[error("quota of {owner:?}")]
    QuotaSettings {
        owner: String,
        #[source]
        source: QuotaError,
    },
    #[error("API {api:?}: invalid CORS settings")]
    Cors { api: String },
    #[error("API {api:?}: invalid header rules")]
    Headers { api: String },
    #[error("API {api:?}: invalid validation settings")]
    Validation { api: String },
    #[error("jwt_provider {name:?}: {detail}")]
    JwtProvider { name: String, detail: String },
    #[error("API {api:?}: invalid client_certificate settings")]
    ClientCert { api: String },
    #[error("API {api:?}: unknown jwt_provider {provider:?}")]
    UnknownJwtProvider { api: String, provider: String },
}

/// The policies of every configured API, keyed by API name, with the
/// subscriptions keys are checked against. Cheap to copy with other
/// subscriptions ([`ApiPolicies::with_keys`]).
pub struct ApiPolicies {
    rules: Arc<PolicyRules>,
    keys: Arc<KeyStore>,
}

/// What a configuration makes of the policies; state that outlives a reload is
/// shared (quota counters) or taken over (unchanged limiters and providers).
struct PolicyRules {
    apis: foldhash::HashMap<String, ApiPipeline>,
    quotas: Arc<QuotaCounters>,
    /// Every limiter once (product limiters are shared by their APIs), for
    /// sweeping, with its owner (`api:NAME`, `product:NAME`) and settings.
    limiters: Vec<(String, RateLimitConfig, Arc<Limiter>)>,
    /// Every JWT provider with its settings, for the key refresh tasks.
    providers: Vec<ProviderEntry>,
    /// `[gateway] ipv6_client_prefix`: the IPv6 prefix a client address counts by.
    ipv6_client_prefix: u8,
}

struct ProviderEntry {
    settings: JwtProviderSettings,
    provider: Arc<JwtProvider>,
}

impl std::fmt::Debug for ApiPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiPolicies")
            .field("apis", &self.rules.apis.len())
            .finish_non_exhaustive()
    }
}

struct ApiPipeline {
    cors: Option<CorsPolicy>,
    subscription: SubscriptionRequirement,
    key_header: String,
    key_query: String,
    forward_key: bool,
    /// The key is read under other names than APIM's defaults; a key sent under
    /// the defaults is removed too (unless `forward_key`).
    custom_key_names: bool,
    products: Vec<String>,
    /// The API's own rate limit and quota, for every request.
    own: ScopeLimits,
    /// Each product's (shared by its APIs), in the order of `products`: only for
    /// requests whose subscription is scoped to that product (APIM applies no
    /// product policy to all-access and API-scoped subscriptions, nor to calls
    /// without one).
    product_limits: Vec<ScopeLimits>,
    validator: Option<RequestValidator>,
    jwt: Option<ApiJwt>,
    client_cert: Option<ClientCertPolicy>,
    /// Certificate field name and the header it goes to.
    certificate_headers: Vec<(String, HeaderName)>,
    headers: HeaderRules,
}

/// The rate limit and quota of an API or of a product.
#[derive(Default)]
struct ScopeLimits {
    limiter: Option<Arc<Limiter>>,
    quota: Option<Arc<QuotaRule>>,
}

/// An API's JWT requirement: the provider, role rules, claims sent as headers.
struct ApiJwt {
    provider: Arc<JwtProvider>,
    roles_claim: String,
    roles: Vec<RoleRule>,
    claims_to_headers: Vec<(ClaimHeader, HeaderName)>,
}

/// The verified token of the request, for claim counters and later policies.
#[derive(Clone)]
pub struct Identity(pub VerifiedToken);

/// One configured rate limit.
struct Limiter {
    /// Shared with the limiter it replaced at a reload that renamed only its headers.
    limiter: Arc<RateLimiter>,
    counter: CounterConfig,
    headers: RateLimitHeaders,
    /// Whether admitted responses carry the remaining/total headers.
    announces: bool,
}

/// One configured quota; its counters live in [`PolicyRules::quotas`] under
/// `owner` + the counter key.
struct QuotaRule {
    owner: String,
    quota: Quota,
    counter: CounterConfig,
    counts_bytes: bool,
}

/// The `Origin` of an actual (non-preflight) request, for the CORS response headers.
#[derive(Clone)]
struct RequestOrigin(Option<HeaderValue>);

/// Rate-limit headers for the response of an admitted request.
#[derive(Clone)]
struct LimitHeaders(HeaderMap);

/// Quota counters that get this request's bytes once it completes.
#[derive(Clone)]
struct BandwidthKeys(Vec<(Arc<QuotaRule>, String)>);

/// The body must be validated once collected.
#[derive(Clone, Copy)]
struct ValidateBody;

impl ApiPolicies {
    /// Periodic upkeep (the daemon calls it every second): forgets idle rate-limit
    /// keys and ended quota windows, and writes changed quota counters to disk
    /// (batched: one atomic file replace per period, never one per request).
    pub fn maintain(&self) -> Result<(), QuotaError> {
        for (_, _, limiter) in &self.rules.limiters {
            limiter.limiter.sweep();
        }
        self.rules.quotas.sweep();
        self.rules.quotas.flush()
    }

    /// The JWT providers, for the tasks that fetch their keys.
    pub fn jwt_providers(&self) -> impl Iterator<Item = &Arc<JwtProvider>> {
        self.rules.providers.iter().map(|p| &p.provider)
    }

    /// Writes the quota counters now (at shutdown).
    pub fn flush(&self) -> Result<(), QuotaError> {
        self.rules.quotas.flush()
    }

    /// The subscriptions the policies check keys against.
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Names of the APIs with policies.
    pub fn api_names(&self) -> impl Iterator<Item = &str> {
        self.rules.apis.keys().map(String::as_str)
    }
}

/// The counter key of a client address: `ip:` and the address, or for IPv6, when
/// `ipv6_prefix` is shorter than 128, the prefix that holds it (`ip:2001:db8:1:2::/64`):
/// an IPv6 client usually holds a whole /64 and could otherwise take a fresh allowance
/// from each of its addresses. An IPv4-mapped address counts as the IPv4 address.
fn client_key(client: IpAddr, ipv6_prefix: u8) -> String {
    use std::fmt::Write as _;
    // Room for `ip:` and any address or network: one allocation.
    let mut key = String::with_capacity(56);
    let _ = match client.to_canonical() {
        IpAddr::V6(v6) if ipv6_prefix < 128 => match ipnet::Ipv6Net::new(v6, ipv6_prefix) {
            Ok(net) => write!(key, "ip:{}", net.trunc()),
            Err(_) => write!(key, "ip:{v6}"),
        },
        ip => write!(key, "ip:{ip}"),
    };
    key
}

/// `prefix` then `rest`, in one allocation of the exact size.
fn prefixed(prefix: &str, rest: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + rest.len());
    key.push_str(prefix);
    key.push_str(rest);
    key
}

/// The string a rate limit or quota counts under. Header values are hashed: they may
/// be secrets, and quota keys are written to disk.
fn counter_key(
    counter: &CounterConfig,
    subscription: Option<&str>,
    client: IpAddr,
    ipv6_prefix: u8,
    headers: &HeaderMap,
    identity: Option<&VerifiedToken>,
) -> String {
    let client = || client_key(client, ipv6_prefix);
    match counter {
        CounterConfig::Subscription => match subscription {
            Some(name) => prefixed("s:", name),
            None => client(),
        },
        CounterConfig::ClientIp => client(),
        // An empty value is no value: counted per client address, not in one
        // bucket that every client sending the header empty would share.
        CounterConfig::Header(name) => match headers.get(name.as_str()).filter(|v| !v.is_empty()) {
            Some(value) => {
                let hash = KeyHash::of(value.as_bytes()).to_hex();
                prefixed("h:", &hash[..32])
            }
            None => client(),
        },
        CounterConfig::Claim(name) => match identity.and_then(|t| t.claim(name)) {
            Some(serde_json::Value::String(value)) => {
                let hash = KeyHash::of(value.as_bytes()).to_hex();
                prefixed("c:", &hash[..32])
            }
            Some(other) => {
                let hash = KeyHash::of(other.to_string().as_bytes()).to_hex();
                prefixed("c:", &hash[..32])
            }
            None => client(),
        },
    }
}

impl RequestPolicy for ApiPolicies {
    fn on_request(&self, request: &mut RequestContext<'_>) -> Result<(), Stop> {
        let Some(api) = self.rules.apis.get(request.api) else {
            return Ok(());
        };
        if let Some(cors) = &api.cors {
            if let Some(preflight) = cors::preflight(cors, request.parts) {
                tracing::debug!(reason = preflight.verdict.reason(), "CORS preflight");
                let response = response::Response::from_parts(preflight.response, Bytes::new());
                return Err(Stop::Respond(Box::new(response)));
            }
            let origin = request.parts.headers.get(header::ORIGIN).cloned();
            request.state.insert(RequestOrigin(origin));
        }

        check_client_certificate(api, request)?;
        let (subscription, product) = self.subscription(api, request)?;
        if api.custom_key_names && !api.forward_key {
            // After the API's own key was read: its header or query name may be a default.
            remove_default_key(request.parts);
        }
        let product = product.and_then(|i| api.product_limits.get(i));
        if let Some(name) = &subscription {
            // Known from here on, so that a later refusal (token, rate limit,
            // quota) names the subscription in its log event.
            request.subscription = Some(Arc::clone(name));
        }
        let identity = match &api.jwt {
            Some(jwt) => Some(check_jwt(jwt, request)?),
            None => None,
        };
        let key = |counter: &CounterConfig| {
            counter_key(
                counter,
                subscription.as_deref(),
                request.client_ip,
                self.rules.ipv6_client_prefix,
                &request.parts.headers,
                identity.as_ref(),
            )
        };

        let mut announced = HeaderMap::new();
        let limiters = [
            api.own.limiter.as_ref(),
            product.and_then(|p| p.limiter.as_ref()),
        ];
        // Only admitted requests count: a request one limit or quota refuses takes
        // back what the ones before it counted.
        let mut counted: [Option<(&Limiter, Admitted)>; 2] = [None, None];
        for (slot, limiter) in counted.iter_mut().zip(limiters) {
            let Some(limiter) = limiter else { continue };
            match limiter.limiter.check(&key(&limiter.counter)) {
                Ok(admitted) => {
                    if limiter.announces {
                        announced.extend(admitted.headers(&limiter.headers));
                    }
                    *slot = Some((limiter, admitted));
                }
                Err(throttled) => {
                    refund_limits(&counted);
                    return Err(throttled.rejection(&limiter.headers).into());
                }
            }
        }
        let quotas = [
            api.own.quota.as_ref(),
            product.and_then(|p| p.quota.as_ref()),
        ];
        let mut used: [Option<(&Arc<QuotaRule>, String, QuotaUsage)>; 2] = [None, None];
        for (slot, rule) in used.iter_mut().zip(quotas) {
            let Some(rule) = rule else { continue };
            let counter = format!("{}|{}", rule.owner, key(&rule.counter));
            match self.rules.quotas.check(&counter, &rule.quota) {
                Ok(usage) => *slot = Some((rule, counter, usage)),
                Err(exceeded) => {
                    refund_limits(&counted);
                    for (_, counter, usage) in used.iter().flatten() {
                        self.rules.quotas.refund(counter, usage);
                    }
                    return Err(exceeded.rejection().into());
                }
            }
        }
        let mut bandwidth = Vec::new();
        for (rule, counter, _) in used.into_iter().flatten() {
            if rule.counts_bytes {
                bandwidth.push((Arc::clone(rule), counter));
            }
        }

        if let Some(validator) = &api.validator {
            match validator
                .check_head(&request.parts.headers, request.has_body)
                .map_err(|invalid| invalid.to_rejection())?
            {
                BodyPlan::Stream if request.has_body => {
                    // The 413 is built only for a body past the limit, not for
                    // every body.
                    request.stream_limit = Some(StreamLimit {
                        bytes: validator.max_body_bytes(),
                        rejection: |limit| {
                            RequestInvalid::BodyTooLarge { size: None, limit }.to_rejection()
                        },
                    });
                }
                BodyPlan::Stream => {}
                BodyPlan::Buffer { limit } => {
                    request.collect_body =
                        Some(request.collect_body.map_or(limit, |l| l.min(limit)));
                    request.state.insert(ValidateBody);
                }
            }
        }

        if !announced.is_empty() {
            request.state.insert(LimitHeaders(announced));
        }
        if !bandwidth.is_empty() {
            request.count_bytes = true;
            request.state.insert(BandwidthKeys(bandwidth));
        }
        if let Some(identity) = identity {
            request.state.insert(Identity(identity));
        }
        api.headers.apply_request(&mut request.parts.headers);
        Ok(())
    }

    fn on_body(&self, request: &mut RequestContext<'_>, body: Option<&Bytes>) -> Result<(), Stop> {
        let Some(api) = self.rules.apis.get(request.api) else {
            return Ok(());
        };
        let (Some(validator), Some(ValidateBody)) =
            (&api.validator, request.state.get::<ValidateBody>())
        else {
            return Ok(());
        };
        let checked = match body {
            Some(body) => validator.check_body(&request.parts.headers, body),
            None => Err(validator.too_large(None)),
        };
        checked.map_err(|invalid| Stop::Reject(invalid.to_rejection()))
    }

    fn on_response(&self, response: &ResponseContext<'_>, parts: &mut response::Parts) {
        let Some(api) = self.rules.apis.get(response.api) else {
            return;
        };
        if let (Some(cors), Some(RequestOrigin(origin))) =
            (&api.cors, response.state.get::<RequestOrigin>())
        {
            remove_access_control(&mut parts.headers);
            cors::add_actual_response_headers(cors, origin.as_ref(), &mut parts.headers);
        }
        if let Some(LimitHeaders(headers)) = response.state.get::<LimitHeaders>() {
            parts.headers.extend(headers.clone());
        }
        api.headers.apply_response(&mut parts.headers);
    }

    fn on_complete(&self, response: &ResponseContext<'_>, transferred: Transferred) {
        if let Some(BandwidthKeys(keys)) = response.state.get::<BandwidthKeys>() {
            let bytes = transferred
                .request_bytes
                .saturating_add(transferred.response_bytes);
            for (rule, counter) in keys {
                self.rules.quotas.record_bytes(counter, &rule.quota, bytes);
            }
        }
    }
}

impl ApiPolicies {
    /// Checks the key the API asks for and removes it before forwarding; the name of
    /// the subscription it belongs to, if any, and when that subscription is scoped
    /// to a product of the API, the product's index in `api.products`.
    #[expect(
        clippy::result_large_err,
        reason = "a Rejection (with its HeaderMap) is built only when a request is refused; boxing it would cost an allocation there and buy nothing on the pass path"
    )]
    fn subscription(
        &self,
        api: &ApiPipeline,
        request: &mut RequestContext<'_>,
    ) -> Result<(Option<Arc<str>>, Option<usize>), Stop> {
        let parts = &mut *request.parts;
        if api.subscription == SubscriptionRequirement::None {
            // No key is checked, but one sent (clients often send theirs on every
            // call) is not handed to this API's backend either.
            if !api.forward_key
                && keys::carries_key(
                    &parts.headers,
                    parts.uri.query(),
                    &api.key_header,
                    &api.key_query,
                )
            {
                remove_key(api, parts);
            }
            return Ok((None, None));
        }
        let presented = keys::extract_key(
            &parts.headers,
            parts.uri.query(),
            &api.key_header,
            &api.key_query,
        );
        // The key borrows the request's head, which is changed below.
        let had_key = presented.is_some();
        let result = match (&presented, api.subscription) {
            (None, SubscriptionRequirement::Optional) => Ok((None, None)),
            (None, _) => Err(KeyRejection::Missing),
            (Some(key), _) => match self.keys.owner(&key.value) {
                None => Err(KeyRejection::Unknown),
                Some(sub) => match sub.admits(request.api, &api.products) {
                    Ok(()) => {
                        let product = match &sub.scope {
                            Scope::Product(name) => api.products.iter().position(|p| p == name),
                            Scope::AllApis | Scope::Api(_) => None,
                        };
                        Ok((Some(Arc::from(sub.name.as_str())), product))
                    }
                    Err(refused) => {
                        // A genuine key of a suspended, cancelled or out-of-scope
                        // subscription: the refusal's log event names it.
                        request.subscription = Some(Arc::from(sub.name.as_str()));
                        Err(refused)
                    }
                },
            },
        };
        let admitted = result.map_err(|rejected: KeyRejection| {
            // The host the request was routed by.
            let host = crate::gateway::request_host(&parts.uri, &parts.headers).unwrap_or_default();
            rejected.rejection(host, &api.key_header)
        })?;
        if had_key && !api.forward_key {
            remove_key(api, parts);
        }
        Ok(admitted)
    }
}

/// Takes back the calls the limits admitted for a request refused after them.
fn refund_limits(counted: &[Option<(&Limiter, Admitted)>]) {
    for (limiter, admitted) in counted.iter().flatten() {
        limiter.limiter.refund(admitted);
    }
}

/// Removes the API's key header and query parameter before forwarding.
fn remove_key(api: &ApiPipeline, parts: &mut http::request::Parts) {
    let query = keys::strip_key(
        &mut parts.headers,
        parts.uri.query(),
        &api.key_header,
        &api.key_query,
    );
    // The URI is made again only when its query lost a parameter.
    if query.as_deref() != parts.uri.query() {
        parts.uri = with_query(&parts.uri, query.as_deref());
    }
}

/// Removes a key sent under APIM's default header and query names, for an API that
/// reads its key under other names: clients often send one key on every call to the
/// host, and it is not handed to a backend that has no use for it.
fn remove_default_key(parts: &mut http::request::Parts) {
    let (header, query) = (keys::DEFAULT_HEADER, keys::DEFAULT_QUERY_PARAM);
    if keys::carries_key(&parts.headers, parts.uri.query(), header, query) {
        let kept = keys::strip_key(&mut parts.headers, parts.uri.query(), header, query);
        parts.uri = with_query(&parts.uri, kept.as_deref());
    }
}

/// The API's client-certificate identities (403 without a matching certificate),
/// then the certificate fields sent as headers (the client's copies removed first),
/// percent-encoded where a header could not carry them as they are: the backend of
/// an authenticated client always gets them.
#[expect(
    clippy::result_large_err,
    reason = "a Rejection (with its HeaderMap) is built only when a request is refused; boxing it would cost an allocation there and buy nothing on the pass path"
)]
fn check_client_certificate(
    api: &ApiPipeline,
    request: &mut RequestContext<'_>,
) -> Result<(), Stop> {
    remove_client_copies(&mut request.parts.headers, |copy| {
        api.certificate_headers
            .iter()
            .any(|(_, name)| name.as_str() == copy)
    });
    if let Some(policy) = &api.client_cert {
        policy
            .check(request.client_cert, unix_now())
            .map_err(|rejected| {
                tracing::info!(
                    api = request.api,
                    peer = %request.peer,
                    reason = rejected.reason(),
                    detail = %rejected,
                    "client certificate refused"
                );
                Stop::Reject(rejected.rejection())
            })?;
    }
    if let Some(cert) = request.client_cert {
        for (field, name) in &api.certificate_headers {
            if let Some(value) = cert.header_value(field) {
                request.parts.headers.insert(name.clone(), value);
            }
        }
    }
    Ok(())
}

/// Verifies the API's token, applies its role rules and sets the claim headers
/// (after removing the client's own copies, so they cannot be forged).
#[expect(
    clippy::result_large_err,
    reason = "a Rejection (with its HeaderMap) is built only when a request is refused; boxing it would cost an allocation there and buy nothing on the pass path"
)]
fn check_jwt(jwt: &ApiJwt, request: &mut RequestContext<'_>) -> Result<VerifiedToken, Stop> {
    remove_client_copies(&mut request.parts.headers, |copy| {
        jwt.claims_to_headers
            .iter()
            .any(|(_, name)| name.as_str() == copy)
    });
    let now = unix_now();
    let token = jwt
        .provider
        .verify(&request.parts.headers, request.parts.uri.query(), now)
        .map_err(|rejected| jwt_refused(jwt, request, &rejected))?;
    if !jwt.roles.is_empty() {
        let method = request.parts.method.as_str();
        let rule = jwt
            .roles
            .iter()
            .find(|rule| rule.methods.is_empty() || rule.methods.iter().any(|m| m == method));
        let granted = rule.is_some_and(|rule| {
            let held = roles_of(token.claim(&jwt.roles_claim));
            if rule.all {
                rule.values.iter().all(|v| held.contains(&v.as_str()))
            } else {
                rule.values.iter().any(|v| held.contains(&v.as_str()))
            }
        });
        if !granted {
            tracing::info!(
                api = request.api,
                peer = %request.peer,
                method,
                claim = jwt.roles_claim.as_str(),
                "role not granted"
            );
            return Err(Stop::Reject(crate::policy::Rejection {
                status: http::StatusCode::FORBIDDEN,
                message: "Access denied: the token does not grant a role this operation requires."
                    .to_owned(),
                headers: HeaderMap::new(),
                reason: "RoleNotGranted",
            }));
        }
    }
    for (config, name) in &jwt.claims_to_headers {
        let value = match token.claim(&config.claim) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Null) | None => config.default.clone(),
            Some(other) => Some(other.to_string()),
        };
        let Some(value) = value else { continue };
        match claim_header_value(&value) {
            Ok(value) => {
                request.parts.headers.insert(name.clone(), value);
            }
            Err(problem) => {
                let rejected = JwtRejection::ClaimNotHeaderSafe {
                    claim: config.claim.clone(),
                    header: name.to_string(),
                    problem,
                };
                return Err(jwt_refused(jwt, request, &rejected));
            }
        }
    }
    Ok(token)
}

/// A claim's value as a header value, or what keeps it from being one: a control
/// character, or a space or tab at either end (HTTP/1 parsing would trim it, but
/// over HTTP/2 the field is malformed, RFC 9113 §8.2.1, and a backend may answer
/// with a connection error that fails every request on that connection). Unlike
/// certificate fields, claims are not percent-encoded: a claim header carries the
/// token's value exactly (`%` as it is, non-ASCII text as its UTF-8 bytes), and a
/// backend given an encoded value would take it for another one.
fn claim_header_value(value: &str) -> Result<HeaderValue, &'static str> {
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err("it starts or ends with a space or tab");
    }
    HeaderValue::from_str(value).map_err(|_| "it holds a control character")
}

/// A refused token: its reason and detail to the log, the provider's answer to the
/// client.
fn jwt_refused(jwt: &ApiJwt, request: &RequestContext<'_>, rejected: &JwtRejection) -> Stop {
    tracing::info!(
        api = request.api,
        peer = %request.peer,
        provider = jwt.provider.name(),
        reason = rejected.reason(),
        detail = %rejected,
        "JWT refused"
    );
    Stop::Reject(jwt.provider.rejection(rejected))
}

/// A roles claim: an array of strings, or one space-separated string.
fn roles_of(claim: Option<&serde_json::Value>) -> Vec<&str> {
    match claim {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str()).collect(),
        Some(serde_json::Value::String(s)) => s.split_whitespace().collect(),
        _ => Vec::new(),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The gateway decides CORS: whatever `Access-Control-*` the backend sent goes.
fn remove_access_control(headers: &mut HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// `uri` with its query replaced (`None` removes it).
fn with_query(uri: &Uri, query: Option<&str>) -> Uri {
    let path_and_query = match query {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    match path_and_query.parse() {
        Ok(pq) => {
            parts.path_and_query = Some(pq);
            Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
        }
        // The kept parameters come from a valid URI, so this does not happen.
        Err(_) => uri.clone(),
    }
}

/// The gateway's listeners and settings as `config` describes them.
pub fn gateway_settings(config: &Config) -> (Vec<ListenerSettings>, GatewaySettings) {
    let files = |cert: &std::path::Path, key: &std::path::Path| CertFiles {
        cert_chain_pem: cert.to_path_buf(),
        key_pem: key.to_path_buf(),
    };
    let listeners = config
        .listeners
        .iter()
        .map(|listener| ListenerSettings {
            addr: listener.address,
            transport: match &listener.transport {
                ListenerTransport::Tls {
                    cert,
                    key,
                    sni,
                    client_auth,
                } => Transport::Tls(TlsSettings {
                    client_auth: match client_auth {
                        ClientAuthConfig::None => ClientAuth::None,
                        ClientAuthConfig::Optional { ca, crls } => ClientAuth::Optional(ClientCa {
                            ca_pem: ca.clone(),
                            crls: crls.clone(),
                        }),
                        ClientAuthConfig::Required { ca, crls } => ClientAuth::Required(ClientCa {
                            ca_pem: ca.clone(),
                            crls: crls.clone(),
                        }),
                    },
                    default_cert: files(cert, key),
                    sni_certs: sni
                        .iter()
                        .map(|s| SniCert {
                            hostname: s.hostname.clone(),
                            files: files(&s.cert, &s.key),
                        })
                        .collect(),
                }),
                ListenerTransport::PlainHttp => Transport::PlainHttp,
            },
        })
        .collect();
    let apis = config
        .apis
        .iter()
        .map(|api| ApiSettings {
            name: api.name.clone(),
            host: api.host.clone(),
            path_prefix: api.path_prefix.clone(),
            listeners: api.listeners.clone(),
            backend: api.backend.clone(),
            backend_protocol: match api.backend_protocol {
                BackendProtocolConfig::Auto => BackendProtocol::Auto,
                BackendProtocolConfig::Http2 => BackendProtocol::Http2,
            },
            timeouts: BackendTimeouts {
                connect: api.timeouts.connect,
                response_header: api.timeouts.response,
                pool_idle: api.timeouts.pool_idle,
            },
        })
        .collect();
    let gateway = &config.gateway;
    let settings = GatewaySettings {
        apis,
        limits: Limits {
            max_header_bytes: gateway.max_header_bytes as usize,
            max_body_bytes: gateway.max_body_bytes,
            max_connections: gateway.max_connections as usize,
            max_connections_per_source: gateway.max_connections_per_source as usize,
            ipv6_client_prefix: gateway.ipv6_client_prefix,
            max_backend_requests: gateway.max_backend_requests as usize,
            max_backend_requests_per_source: gateway.max_backend_requests_per_source as usize,
            header_read_timeout: gateway.header_read_timeout,
            idle_timeout: gateway.idle_timeout,
            request_timeout: gateway.request_timeout,
            max_concurrent_streams: gateway.max_concurrent_streams,
            drain_timeout: gateway.drain_timeout,
            allow_encoded_slashes: gateway.allow_encoded_slashes,
            lingering_timeout: gateway.lingering_timeout,
            lingering_time: gateway.lingering_time,
        },
        trusted_proxies: gateway.trusted_proxies.clone(),
        access_log: match gateway.access_log {
            AccessLogConfig::All => AccessLog::All,
            AccessLogConfig::Errors => AccessLog::Errors,
            AccessLogConfig::Off => AccessLog::Off,
        },
        backend_ca_pem: gateway.backend_ca.clone(),
        backend_auth: config
            .apis
            .iter()
            .filter_map(|api| Some((api.name.clone(), api.backend_auth.clone()?)))
            .collect(),
    };
    (listeners, settings)
}
