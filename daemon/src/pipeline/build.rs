//! Building the policies of a configuration, at start and at each reload. A
//! reload keeps the state that must survive it: the quota counters (shared), the
//! rate-limit counters of limits that did not change, the JWT providers (with
//! their fetched keys) whose settings did not change.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::{
    ApiJwt, ApiPipeline, ApiPolicies, Limiter, MAX_QUOTA_KEYS, PipelineError, PolicyRules,
    ProviderEntry, QuotaRule, ScopeLimits,
};
use crate::config::{
    ApiConfig, Config, GatewayConfig, ProductConfig, QuotaConfig, RateLimitAlgorithm,
    RateLimitConfig, SubscriptionConfig,
};
use crate::policy::jwt::{JwtProvider, JwtProviderSettings};
use crate::policy::keys::{KeyStore, StaticSubscription};
use crate::policy::quota::{Quota, QuotaCounters, SystemClock};
use crate::policy::throttle::{Algorithm, RateLimit, RateLimitHeaders, RateLimiter};

impl ApiPolicies {
    /// Builds the policies of `config`, with subscriptions from its state directory
    /// plus those it declares, and quota counters persisted there.
    pub fn from_config(config: &Config) -> Result<Self, PipelineError> {
        let state_dir = &config.daemon.state_dir;
        let mut keys = KeyStore::open(state_dir).map_err(PipelineError::KeyStore)?;
        keys.set_static(static_subscriptions(&config.subscriptions))
            .map_err(PipelineError::KeyStore)?;
        let quotas = Arc::new(open_quotas(state_dir)?);
        Self::build(config, Arc::new(keys), quotas, None)
            .map_err(|mut errors| errors.swap_remove(0))
    }

    pub fn new(
        apis: &[ApiConfig],
        products: &[ProductConfig],
        jwt_providers: &[JwtProviderSettings],
        keys: KeyStore,
        quotas: QuotaCounters,
    ) -> Result<Self, PipelineError> {
        let rules = PolicyRules::build(
            apis,
            products,
            jwt_providers,
            Arc::new(quotas),
            GatewayConfig::default().ipv6_client_prefix,
            None,
        )
        .map_err(|mut errors| errors.swap_remove(0))?;
        Ok(Self {
            rules: Arc::new(rules),
            keys: Arc::new(keys),
        })
    }

    /// The policies of `config` with the subscriptions `keys` and the counters
    /// `quotas`, keeping from `previous` the rate-limit state of unchanged limits
    /// and the JWT providers of unchanged settings. Every problem is reported
    /// (never an empty list).
    pub fn build(
        config: &Config,
        keys: Arc<KeyStore>,
        quotas: Arc<QuotaCounters>,
        previous: Option<&ApiPolicies>,
    ) -> Result<Self, Vec<PipelineError>> {
        let rules = PolicyRules::build(
            &config.apis,
            &config.products,
            &config.jwt_providers,
            quotas,
            config.gateway.ipv6_client_prefix,
            previous.map(|p| &*p.rules),
        )?;
        Ok(Self {
            rules: Arc::new(rules),
            keys,
        })
    }

    /// The same policies with other subscriptions (a subscription changed at run
    /// time): nothing else is rebuilt or copied.
    #[must_use]
    pub fn with_keys(&self, keys: Arc<KeyStore>) -> Self {
        Self {
            rules: Arc::clone(&self.rules),
            keys,
        }
    }

    /// Installs the subscriptions the configuration declares (key hashes only).
    pub fn set_static_subscriptions(
        &mut self,
        subscriptions: &[SubscriptionConfig],
    ) -> Result<(), PipelineError> {
        let mut keys = (*self.keys).clone();
        keys.set_static(static_subscriptions(subscriptions))
            .map_err(PipelineError::KeyStore)?;
        self.keys = Arc::new(keys);
        Ok(())
    }
}

/// The `[[subscription]]`s of a configuration, for the key store.
pub fn static_subscriptions(subscriptions: &[SubscriptionConfig]) -> Vec<StaticSubscription> {
    subscriptions
        .iter()
        .map(|s| StaticSubscription {
            name: s.name.clone(),
            scope: s.scope.clone(),
            state: s.state,
            primary: s.primary,
            secondary: s.secondary,
        })
        .collect()
}

/// The quota counters persisted in `state_dir`.
pub fn open_quotas(state_dir: &Path) -> Result<QuotaCounters, PipelineError> {
    QuotaCounters::open(state_dir, MAX_QUOTA_KEYS, SystemClock).map_err(PipelineError::Quota)
}

impl PolicyRules {
    fn build(
        apis: &[ApiConfig],
        products: &[ProductConfig],
        jwt_providers: &[JwtProviderSettings],
        quotas: Arc<QuotaCounters>,
        ipv6_client_prefix: u8,
        previous: Option<&PolicyRules>,
    ) -> Result<Self, Vec<PipelineError>> {
        let mut errors = Vec::new();
        let mut providers = Vec::with_capacity(jwt_providers.len());
        for settings in jwt_providers {
            match provider(settings, previous) {
                Ok(provider) => providers.push(ProviderEntry {
                    settings: settings.clone(),
                    provider,
                }),
                Err(e) => errors.push(e),
            }
        }
        let mut limiters = Vec::new();
        let mut product_limiters = HashMap::new();
        let mut product_quotas = HashMap::new();
        for product in products {
            if let Some(limit) = &product.rate_limit {
                let owner = format!("product:{}", product.name);
                match limiter(&product.name, &owner, limit, previous) {
                    Ok(limiter) => {
                        limiters.push((owner, limit.clone(), Arc::clone(&limiter)));
                        product_limiters.insert(product.name.clone(), limiter);
                    }
                    Err(e) => errors.push(e),
                }
            }
            if let Some(quota) = &product.quota {
                match quota_rule(&format!("product:{}", product.name), quota) {
                    Ok(rule) => {
                        product_quotas.insert(product.name.clone(), rule);
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        let mut pipelines = foldhash::HashMap::default();
        for api in apis {
            let built = api_pipeline(
                api,
                &providers,
                &product_limiters,
                &product_quotas,
                previous,
                &mut limiters,
            );
            match built {
                Ok(pipeline) => {
                    pipelines.insert(api.name.clone(), pipeline);
                }
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            apis: pipelines,
            quotas,
            limiters,
            providers,
            ipv6_client_prefix,
        })
    }
}

/// The provider for `settings`: the running one when its settings did not change
/// and it fetches its keys (no refetch, no 503 meanwhile); else built anew, keeping
/// the running one's fetched keys when only how tokens are judged changed (static
/// keys are re-read, like certificates).
fn provider(
    settings: &JwtProviderSettings,
    previous: Option<&PolicyRules>,
) -> Result<Arc<JwtProvider>, PipelineError> {
    let running = || {
        previous
            .into_iter()
            .flat_map(|p| &p.providers)
            .filter(|p| p.provider.client().is_some())
    };
    if let Some(running) = running().find(|p| p.settings == *settings) {
        return Ok(Arc::clone(&running.provider));
    }
    let same_name = running().find(|p| p.settings.name == settings.name);
    settings
        .validate()
        .map(|built| match same_name {
            Some(running) => built.keeping_keys_of(&running.provider),
            None => built,
        })
        .map(Arc::new)
        .map_err(|errors| PipelineError::JwtProvider {
            name: settings.name.clone(),
            detail: errors
                .iter()
                .map(|e| crate::service::chain(e))
                .collect::<Vec<_>>()
                .join("; "),
        })
}

fn api_pipeline(
    api: &ApiConfig,
    providers: &[ProviderEntry],
    product_limiters: &HashMap<String, Arc<Limiter>>,
    product_quotas: &HashMap<String, Arc<QuotaRule>>,
    previous: Option<&PolicyRules>,
    all_limiters: &mut Vec<(String, RateLimitConfig, Arc<Limiter>)>,
) -> Result<ApiPipeline, Vec<PipelineError>> {
    let mut errors = Vec::new();
    let mut own = ScopeLimits::default();
    if let Some(limit) = &api.rate_limit {
        let owner = format!("api:{}", api.name);
        match limiter(&api.name, &owner, limit, previous) {
            Ok(limiter) => {
                all_limiters.push((owner, limit.clone(), Arc::clone(&limiter)));
                own.limiter = Some(limiter);
            }
            Err(e) => errors.push(e),
        }
    }
    if let Some(quota) = &api.quota {
        match quota_rule(&format!("api:{}", api.name), quota) {
            Ok(rule) => own.quota = Some(rule),
            Err(e) => errors.push(e),
        }
    }
    let product_limits = api
        .products
        .iter()
        .map(|p| ScopeLimits {
            limiter: product_limiters.get(p).cloned(),
            quota: product_quotas.get(p).cloned(),
        })
        .collect();
    let name = || api.name.clone();
    let cors = api
        .cors
        .as_ref()
        .map(|c| c.validate())
        .transpose()
        .map_err(|_| errors.push(PipelineError::Cors { api: name() }))
        .ok()
        .flatten();
    let headers = api
        .headers
        .validate()
        .map_err(|_| errors.push(PipelineError::Headers { api: name() }))
        .ok();
    let validator = api
        .validation
        .as_ref()
        .map(|v| v.validate())
        .transpose()
        .map_err(|_| errors.push(PipelineError::Validation { api: name() }))
        .ok()
        .flatten();
    let jwt = match &api.jwt {
        None => None,
        Some(config) => match providers
            .iter()
            .find(|p| p.settings.name == config.provider)
        {
            None => {
                errors.push(PipelineError::UnknownJwtProvider {
                    api: name(),
                    provider: config.provider.clone(),
                });
                None
            }
            Some(entry) => Some(ApiJwt {
                provider: Arc::clone(&entry.provider),
                roles_claim: config.roles_claim.clone(),
                roles: config.roles.clone(),
                claims_to_headers: config
                    .claims_to_headers
                    .iter()
                    .filter_map(|c| {
                        HeaderName::from_bytes(c.header.as_bytes())
                            .ok()
                            .map(|name| (c.clone(), name))
                    })
                    .collect(),
            }),
        },
    };
    let client_cert = api
        .client_certificate
        .as_ref()
        .map(|c| c.validate())
        .transpose()
        .map_err(|_| errors.push(PipelineError::ClientCert { api: name() }))
        .ok()
        .flatten();
    let certificate_headers = api
        .certificate_headers
        .iter()
        .filter_map(|(field, header)| {
            HeaderName::from_bytes(header.as_bytes())
                .ok()
                .map(|name| (field.clone(), name))
        })
        .collect();
    match headers {
        Some(headers) if errors.is_empty() => Ok(ApiPipeline {
            cors,
            subscription: api.subscription,
            key_header: api.subscription_key_header.clone(),
            key_query: api.subscription_key_query.clone(),
            forward_key: api.forward_subscription_key,
            custom_key_names: !api
                .subscription_key_header
                .eq_ignore_ascii_case(crate::policy::keys::DEFAULT_HEADER)
                || api.subscription_key_query != crate::policy::keys::DEFAULT_QUERY_PARAM,
            products: api.products.clone(),
            own,
            product_limits,
            validator,
            jwt,
            client_cert,
            certificate_headers,
            headers,
        }),
        _ => Err(errors),
    }
}

/// The limiter of `owner` (`api:NAME` or `product:NAME`): the running one, with
/// its counters, when its settings did not change; a new one that keeps the running
/// one's counters when only its header names did.
fn limiter(
    name: &str,
    owner: &str,
    config: &RateLimitConfig,
    previous: Option<&PolicyRules>,
) -> Result<Arc<Limiter>, PipelineError> {
    let running = previous
        .into_iter()
        .flat_map(|p| &p.limiters)
        .find(|(o, c, _)| o == owner && c.counts_like(config));
    if let Some((_, running_config, limiter)) = running
        && running_config == config
    {
        return Ok(Arc::clone(limiter));
    }
    let error = |source| PipelineError::RateLimit {
        owner: name.to_owned(),
        source,
    };
    let limit = RateLimit::new(config.calls, Duration::from_secs(config.period_secs.into()))
        .map_err(error)?;
    let algorithm = match config.algorithm {
        RateLimitAlgorithm::SlidingWindow => Algorithm::SlidingWindow,
        RateLimitAlgorithm::TokenBucket => Algorithm::TokenBucket,
    };
    let headers = RateLimitHeaders::new(
        None,
        config.remaining_header.as_deref(),
        config.total_header.as_deref(),
    )
    .map_err(error)?;
    let counts = match running {
        Some((_, _, running)) => Arc::clone(&running.limiter),
        None => Arc::new(RateLimiter::with_algorithm(limit, algorithm)),
    };
    Ok(Arc::new(Limiter {
        limiter: counts,
        counter: config.counter.clone(),
        announces: headers.remaining.is_some() || headers.total.is_some(),
        headers,
    }))
}

fn quota_rule(owner: &str, config: &QuotaConfig) -> Result<Arc<QuotaRule>, PipelineError> {
    let quota = Quota::new(
        config.calls,
        config.kilobytes,
        Duration::from_secs(config.period_secs),
        0,
    )
    .map_err(|source| PipelineError::QuotaSettings {
        owner: owner.to_owned(),
        source,
    })?;
    Ok(Arc::new(QuotaRule {
        owner: owner.to_owned(),
        quota,
        counter: config.counter.clone(),
        counts_bytes: config.kilobytes.is_some(),
    }))
}
