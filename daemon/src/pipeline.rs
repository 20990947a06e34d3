//! The per-API policy chain the gateway runs, built from the configuration: a
//! [`RequestPolicy`] that applies, in APIM's order, the CORS preflight, the
//! subscription key, the rate limits and the header rules of the routed API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Uri, header, response};

use crate::config::{
    ApiConfig, Config, ListenerTransport, ProductConfig, RateLimitConfig, SubscriptionRequirement,
};
use crate::gateway::{
    ApiSettings, BackendProtocol, BackendTimeouts, CertFiles, GatewaySettings, Limits,
    ListenerSettings, RequestContext, RequestPolicy, ResponseContext, SniCert, Stop, TlsSettings,
    Transport,
};

#[cfg(test)]
mod tests;
use crate::policy::cors::{self, CorsPolicy};
use crate::policy::headers::HeaderRules;
use crate::policy::keys::{self, KeyRejection, KeyStore, KeyStoreError};
use crate::policy::throttle::{RateLimit, RateLimitHeaders, RateLimiter, ThrottleError};

/// Why the policies of a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot open the subscription store")]
    KeyStore(#[source] KeyStoreError),
    #[error("rate limit of {owner:?}")]
    RateLimit {
        owner: String,
        #[source]
        source: ThrottleError,
    },
    #[error("API {api:?}: invalid CORS settings")]
    Cors { api: String },
    #[error("API {api:?}: invalid header rules")]
    Headers { api: String },
}

/// The policies of every configured API, keyed by API name.
pub struct ApiPolicies {
    apis: HashMap<String, ApiPipeline>,
    keys: KeyStore,
    throttle_headers: RateLimitHeaders,
}

impl std::fmt::Debug for ApiPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiPolicies")
            .field("apis", &self.apis.len())
            .finish_non_exhaustive()
    }
}

struct ApiPipeline {
    cors: Option<CorsPolicy>,
    subscription: SubscriptionRequirement,
    key_header: String,
    key_query: String,
    forward_key: bool,
    products: Vec<String>,
    /// The API's own limit first, then each product's (shared by its APIs).
    limiters: Vec<Arc<RateLimiter>>,
    headers: HeaderRules,
}

/// The `Origin` of an actual (non-preflight) request, for the CORS response headers.
#[derive(Clone)]
struct RequestOrigin(Option<HeaderValue>);

/// The subscription a request was admitted under, for later policies and the log.
#[derive(Debug, Clone)]
pub struct SubscriptionName(pub String);

impl ApiPolicies {
    /// Builds the policies of `config`, with subscriptions from its state directory.
    pub fn from_config(config: &Config) -> Result<Self, PipelineError> {
        let keys = KeyStore::open(&config.daemon.state_dir).map_err(PipelineError::KeyStore)?;
        Self::new(&config.apis, &config.products, keys)
    }

    pub fn new(
        apis: &[ApiConfig],
        products: &[ProductConfig],
        keys: KeyStore,
    ) -> Result<Self, PipelineError> {
        let mut product_limiters = HashMap::new();
        for product in products {
            if let Some(limit) = product.rate_limit {
                product_limiters.insert(product.name.clone(), limiter(&product.name, limit)?);
            }
        }
        let mut pipelines = HashMap::with_capacity(apis.len());
        for api in apis {
            let mut limiters = Vec::new();
            if let Some(limit) = api.rate_limit {
                limiters.push(limiter(&api.name, limit)?);
            }
            limiters.extend(
                api.products
                    .iter()
                    .filter_map(|p| product_limiters.get(p).cloned()),
            );
            let cors = api
                .cors
                .as_ref()
                .map(|c| c.validate())
                .transpose()
                .map_err(|_| PipelineError::Cors {
                    api: api.name.clone(),
                })?;
            let headers = api.headers.validate().map_err(|_| PipelineError::Headers {
                api: api.name.clone(),
            })?;
            pipelines.insert(
                api.name.clone(),
                ApiPipeline {
                    cors,
                    subscription: api.subscription,
                    key_header: api.subscription_key_header.clone(),
                    key_query: api.subscription_key_query.clone(),
                    forward_key: api.forward_subscription_key,
                    products: api.products.clone(),
                    limiters,
                    headers,
                },
            );
        }
        Ok(Self {
            apis: pipelines,
            keys,
            throttle_headers: RateLimitHeaders::default(),
        })
    }
}

fn limiter(owner: &str, limit: RateLimitConfig) -> Result<Arc<RateLimiter>, PipelineError> {
    let limit = RateLimit::new(limit.calls, Duration::from_secs(limit.period_secs.into()))
        .map_err(|source| PipelineError::RateLimit {
            owner: owner.to_owned(),
            source,
        })?;
    Ok(Arc::new(RateLimiter::new(limit)))
}

impl RequestPolicy for ApiPolicies {
    fn on_request(&self, request: &mut RequestContext<'_>) -> Result<(), Stop> {
        let Some(api) = self.apis.get(request.api) else {
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

        let subscription = self.subscription(api, request)?;

        let counter = match &subscription {
            Some(name) => format!("subscription:{name}"),
            None => format!("ip:{}", request.peer.ip()),
        };
        for limiter in &api.limiters {
            limiter
                .check(&counter)
                .map_err(|throttled| throttled.rejection(&self.throttle_headers))?;
        }
        if let Some(name) = subscription {
            request.state.insert(SubscriptionName(name));
        }

        api.headers.apply_request(&mut request.parts.headers);
        Ok(())
    }

    fn on_response(&self, response: &ResponseContext<'_>, parts: &mut response::Parts) {
        let Some(api) = self.apis.get(response.api) else {
            return;
        };
        if let (Some(cors), Some(RequestOrigin(origin))) =
            (&api.cors, response.state.get::<RequestOrigin>())
        {
            let added = cors::actual_response_headers(cors, origin.as_ref());
            remove_access_control(&mut parts.headers);
            parts.headers.extend(added);
        }
        api.headers.apply_response(&mut parts.headers);
    }
}

impl ApiPolicies {
    /// Checks the key the API asks for and removes it before forwarding; the name of
    /// the subscription it belongs to, if any.
    #[expect(
        clippy::result_large_err,
        reason = "a Rejection (with its HeaderMap) is built only when a request is refused; boxing it would cost an allocation there and buy nothing on the pass path"
    )]
    fn subscription(
        &self,
        api: &ApiPipeline,
        request: &mut RequestContext<'_>,
    ) -> Result<Option<String>, Stop> {
        if api.subscription == SubscriptionRequirement::None {
            return Ok(None);
        }
        let parts = &mut *request.parts;
        let presented = keys::extract_key(
            &parts.headers,
            parts.uri.query(),
            &api.key_header,
            &api.key_query,
        );
        let result = match (&presented, api.subscription) {
            (None, SubscriptionRequirement::Optional) => Ok(None),
            (presented, _) => self
                .keys
                .check(
                    presented.as_ref().map(|k| k.value.as_slice()),
                    request.api,
                    &api.products,
                )
                .map(|sub| Some(sub.name.clone())),
        };
        let name = result.map_err(|rejected: KeyRejection| {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| parts.uri.host())
                .unwrap_or_default();
            rejected.rejection(host, &api.key_header)
        })?;
        if presented.is_some() && !api.forward_key {
            let query = keys::strip_key(
                &mut parts.headers,
                parts.uri.query(),
                &api.key_header,
                &api.key_query,
            );
            parts.uri = with_query(&parts.uri, query.as_deref());
        }
        Ok(name)
    }
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
                ListenerTransport::Tls { cert, key, sni } => Transport::Tls(TlsSettings {
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
            backend: api.backend.clone(),
            backend_protocol: BackendProtocol::default(),
            timeouts: BackendTimeouts::default(),
        })
        .collect();
    let settings = GatewaySettings {
        apis,
        limits: Limits::default(),
        trusted_proxies: Vec::new(),
        backend_ca_pem: Vec::new(),
    };
    (listeners, settings)
}
