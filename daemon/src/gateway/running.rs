//! The daemon's gateway, built from its configuration: started with the daemon,
//! reloaded whole (SIGHUP, `rampart reload`), its subscriptions changed at run time
//! (`rampart keys ...`), drained at shutdown.
//!
//! A reload builds everything first: new listeners bound, certificates loaded,
//! backends, routes and policies built. Any problem and nothing changes; the error
//! lists every problem. Then one atomic swap: requests that arrive from then on use
//! the new configuration, requests in flight finish with the old one.
//!
//! What a reload keeps: the quota counters, the subscriptions created at run time,
//! the rate-limit counters of limits whose settings did not change, the JWT
//! providers whose settings did not change (with their fetched keys and their
//! refresh task), the backends of unchanged APIs (connection pools, backend
//! tokens), the listeners whose address did not change (no gap in accepting), the
//! gateway's counters and rejection sink.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

use super::{
    Gateway, GatewayError, GatewayHandle, GatewayStats, RejectionSink, RequestPolicy,
    ServingGateway, StatsSnapshot,
};
use crate::config::{Config, ConfigError};
use crate::pipeline::{self, ApiPolicies, PipelineError};
use crate::policy::jwt::ProviderKeys;
use crate::policy::jwt::refresh::keep_keys_fresh;
use crate::policy::keys::{KeyStoreError, Scope, Subscription, SubscriptionState, Subscriptions};
use crate::policy::quota::{QuotaCounters, QuotaError};
use crate::service::chain;

/// One thing wrong with a configuration, found while building the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("configuration")]
    Config(#[source] ConfigError),
    #[error("gateway")]
    Gateway(#[source] GatewayError),
    #[error("gateway policies")]
    Pipeline(#[source] PipelineError),
    #[error("subscriptions")]
    Subscriptions(#[source] KeyStoreError),
}

/// Why the gateway did not start or did not take a configuration: every problem
/// found (never none).
#[derive(Debug, thiserror::Error)]
pub struct GatewayConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for GatewayConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&chain(problem))?;
        }
        Ok(())
    }
}

impl GatewayConfigError {
    fn new(problems: Vec<Problem>) -> Self {
        Self { problems }
    }

    /// sysexits.h, from the first problem: 71 for an address that cannot be bound,
    /// 65 for an unreadable subscription store or quota counters that are corrupt
    /// or of a newer rampartd, 64 for the rest (configuration).
    pub fn exit_code(&self) -> u8 {
        match self.problems.first() {
            Some(Problem::Config(e)) => e.exit_code(),
            Some(Problem::Gateway(GatewayError::Bind { .. })) => 71,
            Some(
                Problem::Subscriptions(_)
                | Problem::Pipeline(
                    PipelineError::KeyStore(_)
                    | PipelineError::Quota(
                        QuotaError::NewerFormat { .. } | QuotaError::Corrupt { .. },
                    ),
                ),
            ) => 65,
            _ => 64,
        }
    }
}

/// The service's error for the first problem (its exit code follows it); the
/// caller logs the others.
impl From<GatewayConfigError> for crate::service::ServiceError {
    fn from(error: GatewayConfigError) -> Self {
        use crate::service::ServiceError;
        match error.problems.into_iter().next() {
            Some(Problem::Config(e)) => ServiceError::Config(e),
            Some(Problem::Gateway(e)) => ServiceError::Gateway(e),
            Some(Problem::Pipeline(e)) => ServiceError::Pipeline(e),
            // As `--check-config` says it (the problem itself, not "cannot open").
            Some(problem @ Problem::Subscriptions(_)) => {
                ServiceError::GatewayBuild(GatewayConfigError::new(vec![problem]))
            }
            // Not made: an error always has a problem. Still a configuration error.
            None => ServiceError::Config(ConfigError::Invalid {
                path: PathBuf::new(),
                errors: Vec::new(),
            }),
        }
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub apis_added: Vec<String>,
    pub apis_removed: Vec<String>,
    pub apis_changed: Vec<String>,
    /// Bound addresses of the new listeners.
    pub listeners_added: Vec<SocketAddr>,
    /// Configured addresses of the listeners removed (their connections drain).
    pub listeners_removed: Vec<SocketAddr>,
    /// APIs whose backend (connection pool, backend token) was kept.
    pub backends_kept: usize,
    /// JWT providers whose keys and refresh task were kept (their key source did
    /// not change, whatever else did).
    pub jwt_providers_kept: Vec<String>,
    /// JWT providers whose keys are fetched anew (new, or a changed key source).
    pub jwt_providers_started: Vec<String>,
    /// Subscriptions scoped to an API or product the new configuration does
    /// not have (each logged as a warning).
    pub dangling_scopes: Vec<DanglingScope>,
}

/// A subscription scoped to an API or product the configuration does not have
/// (removed from the file while the subscription stayed in the store): its keys
/// grant nothing until an API or product of that name is configured again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DanglingScope {
    pub subscription: String,
    pub scope: Scope,
    /// `"API"` or `"product"`.
    pub missing: &'static str,
}

impl fmt::Display for DanglingScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match &self.scope {
            Scope::Api(name) | Scope::Product(name) => name.as_str(),
            Scope::AllApis => "",
        };
        write!(
            f,
            "subscription {sub:?} is scoped to {what} {name:?}, which is not configured: its keys grant nothing until {article} {what} named {name:?} is (rampart keys revoke {sub} ends it)",
            sub = self.subscription,
            what = self.missing,
            article = if self.missing == "API" { "an" } else { "a" },
        )
    }
}

/// The subscriptions of `subscriptions` (cancelled ones aside: they grant
/// nothing anyway) whose scope names an API or product `config` does not have.
pub fn dangling_scopes<'a>(
    subscriptions: impl IntoIterator<Item = &'a Subscription>,
    config: &Config,
) -> Vec<DanglingScope> {
    let apis: Vec<&str> = config.apis.iter().map(|a| a.name.as_str()).collect();
    let products: Vec<&str> = config.products.iter().map(|p| p.name.as_str()).collect();
    subscriptions
        .into_iter()
        .filter(|s| s.state != SubscriptionState::Cancelled)
        .filter_map(|s| {
            let missing = s.scope.missing(&apis, &products)?;
            Some(DanglingScope {
                subscription: s.name.clone(),
                scope: s.scope.clone(),
                missing,
            })
        })
        .collect()
}

/// One warning per subscription whose scope is not configured.
fn warn_dangling(dangling: &[DanglingScope]) {
    for d in dangling {
        tracing::warn!(
            subscription = %d.subscription,
            scope = %d.scope,
            "{d}"
        );
    }
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "APIs +{} -{} ~{}, listeners +{} -{}, backends kept {}, JWT providers kept {} started {}",
            self.apis_added.len(),
            self.apis_removed.len(),
            self.apis_changed.len(),
            self.listeners_added.len(),
            self.listeners_removed.len(),
            self.backends_kept,
            self.jwt_providers_kept.len(),
            self.jwt_providers_started.len(),
        )
    }
}

/// A fetched JWT key set's freshness, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksStatus {
    pub provider: String,
    /// When the keys were last loaded (Unix seconds); `None`: never (the
    /// provider answers 503).
    pub loaded_at: Option<u64>,
    /// Fetches that failed since the provider was built (start, or a reload
    /// that changed its settings).
    pub fetch_failures: u64,
}

/// The policies the current generation runs, for upkeep and for publishing
/// subscription changes.
struct PolicySlot {
    current: Mutex<Arc<ApiPolicies>>,
    handle: GatewayHandle,
}

impl PolicySlot {
    fn lock(&self) -> MutexGuard<'_, Arc<ApiPolicies>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self) -> Arc<ApiPolicies> {
        Arc::clone(&self.lock())
    }
}

fn as_policies(policies: &Arc<ApiPolicies>) -> Vec<Arc<dyn RequestPolicy>> {
    vec![Arc::clone(policies) as Arc<dyn RequestPolicy>]
}

/// What only one reload at a time may touch.
struct Reloadable {
    serving: ServingGateway,
    /// The configuration in force.
    config: Config,
    /// Key refresh tasks of the JWT providers that fetch their keys.
    key_refresh: Vec<(Arc<ProviderKeys>, CancellationToken)>,
}

/// The gateway of a running daemon. Shared (`Arc`) between the service loop
/// (upkeep, shutdown) and the control thread (reload, subscriptions, status).
pub struct RunningGateway {
    reloadable: tokio::sync::Mutex<Reloadable>,
    policies: Arc<PolicySlot>,
    subscriptions: Arc<Subscriptions>,
    quotas: Arc<QuotaCounters>,
    stats: Arc<GatewayStats>,
    shutdown: CancellationToken,
    state_dir: PathBuf,
}

impl fmt::Debug for RunningGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningGateway")
            .field("policies", &self.policies.current())
            .finish_non_exhaustive()
    }
}

/// The stored subscriptions [`check`] checks the file's `[[subscription]]`s against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredSubscriptions {
    /// Not read: start and a reload check the file's against the store they hold.
    Unread,
    /// `<state_dir>/subscriptions.json`, read now and only read: nothing is created
    /// or locked, and a missing file or state directory is an empty store (start
    /// creates them). `rampartd --check-config`, so that it refuses a name or key
    /// hash the store has already, as start does.
    ReadOnly,
}

/// Builds everything [`start`] and a reload build that needs no privileges and no
/// network, and throws it away: the subscriptions the file declares (with those
/// of the store when `stored` says so), the policies (rate limits, quotas, CORS,
/// validation, JWT providers with their static keys), the listeners' TLS
/// configurations, the backends and the route table. Through the same functions
/// as [`start`] and [`RunningGateway::reload`]: `rampartd --check-config` accepts
/// what they accept, and start and reload refuse a file before binding or
/// changing anything. Every problem is reported; the `Ok` value lists what could
/// not be checked (a store this user may not read), for the check to say.
pub fn check(
    config: &Config,
    stored: StoredSubscriptions,
) -> Result<Vec<String>, GatewayConfigError> {
    if config.listeners.is_empty() {
        return Ok(Vec::new());
    }
    let mut problems = Vec::new();
    let mut unchecked = Vec::new();
    let mut keys = match stored {
        StoredSubscriptions::Unread => crate::policy::keys::KeyStore::in_memory(),
        StoredSubscriptions::ReadOnly => {
            read_store(&config.daemon.state_dir, &mut problems, &mut unchecked)
        }
    };
    if let Err(e) = keys.set_static(pipeline::static_subscriptions(&config.subscriptions)) {
        problems.push(Problem::Subscriptions(e));
    }
    if stored == StoredSubscriptions::ReadOnly {
        read_quotas(&config.daemon.state_dir, &mut problems, &mut unchecked);
    }
    let quotas = QuotaCounters::in_memory(1, crate::policy::quota::SystemClock);
    if let Err(e) = ApiPolicies::build(config, Arc::new(keys), Arc::new(quotas), None) {
        problems.extend(e.into_iter().map(Problem::Pipeline));
    }
    let (listeners, settings) = pipeline::gateway_settings(config);
    if let Err(e) = Gateway::check(&listeners, &settings) {
        problems.extend(e.into_iter().map(Problem::Gateway));
    }
    if problems.is_empty() {
        Ok(unchecked)
    } else {
        Err(GatewayConfigError::new(problems))
    }
}

/// The subscription store of `state_dir` as start would open it, only read. A
/// store this process may not read is left unchecked when it does not run as
/// root (the check run by another user than the daemon's, which start does not
/// meet); any other error is the problem start would report.
fn read_store(
    state_dir: &std::path::Path,
    problems: &mut Vec<Problem>,
    unchecked: &mut Vec<String>,
) -> crate::policy::keys::KeyStore {
    use crate::policy::keys::KeyStore;
    match KeyStore::open(state_dir) {
        Ok(store) => store,
        Err(KeyStoreError::Read { path, source })
            if source.kind() == std::io::ErrorKind::PermissionDenied
                && !nix::unistd::geteuid().is_root() =>
        {
            unchecked.push(format!(
                "the [[subscription]] sections were not checked against the subscription store: cannot read {}: {source} (run the check as the user rampartd runs as)",
                path.display()
            ));
            KeyStore::in_memory()
        }
        Err(e) => {
            problems.push(Problem::Subscriptions(e));
            KeyStore::in_memory()
        }
    }
}

/// The quota counters of `state_dir` as start opens them (`quota.json`, then
/// `quota.journal`), only read: what start would refuse (a corrupt file) is a
/// problem; a file this process may not read is left unchecked when it does not
/// run as root, as [`read_store`] does.
fn read_quotas(
    state_dir: &std::path::Path,
    problems: &mut Vec<Problem>,
    unchecked: &mut Vec<String>,
) {
    match QuotaCounters::<crate::policy::quota::SystemClock>::verify(state_dir) {
        Ok(()) => {}
        Err(QuotaError::Read { path, source })
            if source.kind() == std::io::ErrorKind::PermissionDenied
                && !nix::unistd::geteuid().is_root() =>
        {
            unchecked.push(format!(
                "the quota counters were not checked: cannot read {}: {source} (run the check as the user rampartd runs as)",
                path.display()
            ));
        }
        // As start says it (`pipeline::open_quotas`).
        Err(e) => problems.push(Problem::Pipeline(PipelineError::Quota(e))),
    }
}

/// Starts the gateway of `config` when it has listeners (`None` without): opens
/// the subscription store and quota counters, builds everything, binds every
/// listener, then serves on the current Tokio runtime until `shutdown` is
/// cancelled. Every problem is reported.
pub async fn start(
    config: &Config,
    shutdown: CancellationToken,
) -> Result<Option<RunningGateway>, GatewayConfigError> {
    if config.listeners.is_empty() {
        return Ok(None);
    }
    let mut problems = Vec::new();
    let state_dir = &config.daemon.state_dir;
    let subscriptions = Subscriptions::open(state_dir)
        .map_err(|e| problems.push(Problem::Subscriptions(e)))
        .ok();
    let quotas = pipeline::open_quotas(state_dir)
        .map_err(|e| problems.push(Problem::Pipeline(e)))
        .ok()
        .map(Arc::new);
    let keys = subscriptions.as_ref().and_then(|subs| {
        subs.replace_static(
            pipeline::static_subscriptions(&config.subscriptions),
            |keys| keys,
        )
        .map_err(|e| problems.push(Problem::Subscriptions(e)))
        .ok()
    });
    let policies = match (keys, &quotas) {
        (Some(keys), Some(quotas)) => ApiPolicies::build(config, keys, Arc::clone(quotas), None)
            .map_err(|e| problems.extend(e.into_iter().map(Problem::Pipeline)))
            .ok(),
        _ => None,
    };
    let (listeners, settings) = pipeline::gateway_settings(config);
    let gateway = Gateway::bind_reporting_all(&listeners, settings)
        .await
        .map_err(|e| problems.extend(e.into_iter().map(Problem::Gateway)))
        .ok();
    let (Some(subscriptions), Some(quotas), Some(policies), Some(gateway)) =
        (subscriptions, quotas, policies, gateway)
    else {
        return Err(GatewayConfigError::new(problems));
    };

    let policies = Arc::new(policies);
    let stats = gateway.stats();
    let serving = gateway
        .with_policy(Arc::clone(&policies) as Arc<dyn RequestPolicy>)
        .start(shutdown.clone());
    let slot = Arc::new(PolicySlot {
        current: Mutex::new(Arc::clone(&policies)),
        handle: serving.handle(),
    });
    let subscriptions = Arc::new(subscriptions);
    warn_dangling(&dangling_scopes(&subscriptions.list(), config));
    subscriptions.set_publisher(publish_subscriptions(Arc::clone(&slot)));
    let mut key_refresh = Vec::new();
    sync_key_refresh(&mut key_refresh, &policies, &shutdown);
    let addresses: Vec<String> = serving
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    tracing::info!(
        addresses = %addresses.join(","),
        apis = config.apis.len(),
        "gateway listening on {}",
        addresses.join(", ")
    );
    Ok(Some(RunningGateway {
        reloadable: tokio::sync::Mutex::new(Reloadable {
            serving,
            config: config.clone(),
            key_refresh,
        }),
        policies: slot,
        subscriptions,
        quotas,
        stats,
        shutdown,
        state_dir: state_dir.clone(),
    }))
}

/// Installs each new subscription snapshot in the current generation.
fn publish_subscriptions(
    slot: Arc<PolicySlot>,
) -> impl Fn(Arc<crate::policy::keys::KeyStore>) + Send + Sync + 'static {
    move |keys| {
        let mut current = slot.lock();
        let next = Arc::new(current.with_keys(keys));
        slot.handle.set_policies(as_policies(&next));
        *current = next;
    }
}

/// Starts a key refresh task for the keys of each provider of `policies` that
/// fetches its keys and has none yet (keys taken over from the running
/// configuration keep their task), stops those of keys no longer used. Returns the
/// names of the providers kept and started.
fn sync_key_refresh(
    tasks: &mut Vec<(Arc<ProviderKeys>, CancellationToken)>,
    policies: &ApiPolicies,
    shutdown: &CancellationToken,
) -> (Vec<String>, Vec<String>) {
    let mut kept = Vec::new();
    let mut started = Vec::new();
    let mut next: Vec<(Arc<ProviderKeys>, CancellationToken)> = Vec::new();
    for provider in policies.jwt_providers().filter(|p| p.client().is_some()) {
        provider.take_over_fetches();
        let keys = provider.keys();
        if next.iter().any(|(k, _)| Arc::ptr_eq(k, keys)) {
            continue;
        }
        match tasks.iter().position(|(k, _)| Arc::ptr_eq(k, keys)) {
            Some(index) => {
                kept.push(provider.name().to_owned());
                next.push(tasks.swap_remove(index));
            }
            None => {
                let stop = shutdown.child_token();
                tokio::spawn(keep_keys_fresh(Arc::clone(keys), stop.clone()));
                started.push(provider.name().to_owned());
                next.push((Arc::clone(keys), stop));
            }
        }
    }
    for (_, stop) in tasks.drain(..) {
        stop.cancel();
    }
    *tasks = next;
    (kept, started)
}

/// What changed between the APIs of `old` and `new`. An API that follows the TLS
/// listeners (no `listeners` of its own) is not changed by a listener added or
/// removed: that is the listeners' change.
fn api_changes(old: &Config, new: &Config, summary: &mut ReloadSummary) {
    let changed = |before: &crate::config::ApiConfig, after: &crate::config::ApiConfig| {
        if before.listeners_named || after.listeners_named {
            return before != after;
        }
        let unlisted = |api: &crate::config::ApiConfig| crate::config::ApiConfig {
            listeners: Vec::new(),
            ..api.clone()
        };
        unlisted(before) != unlisted(after)
    };
    for api in &new.apis {
        match old.apis.iter().find(|a| a.name == api.name) {
            None => summary.apis_added.push(api.name.clone()),
            Some(before) if changed(before, api) => summary.apis_changed.push(api.name.clone()),
            Some(_) => {}
        }
    }
    summary.apis_removed = (old.apis.iter())
        .filter(|a| !new.apis.iter().any(|n| n.name == a.name))
        .map(|a| a.name.clone())
        .collect();
    // Settings read only at start are the service's to report
    // (service::StartOnly): they are not the gateway's alone.
}

impl RunningGateway {
    /// Takes `config`: everything is built first (new listeners bound before
    /// anything else); on any problem nothing changes and the error lists every
    /// problem. Then the new configuration serves the next requests while those
    /// in flight finish with the old one. Removed listeners are closed when this
    /// returns. The outcome is logged.
    pub async fn reload(&self, config: &Config) -> Result<ReloadSummary, GatewayConfigError> {
        let mut reloadable = self.reloadable.lock().await;
        let result = self.reload_locked(&mut reloadable, config).await;
        match &result {
            Ok(summary) => tracing::info!(%summary, "gateway reloaded"),
            Err(e) => tracing::error!(
                problems = e.problems.len(),
                error = %e,
                "gateway reload rejected; the running gateway stays"
            ),
        }
        result
    }

    async fn reload_locked(
        &self,
        reloadable: &mut Reloadable,
        config: &Config,
    ) -> Result<ReloadSummary, GatewayConfigError> {
        let mut problems = Vec::new();
        let (listeners, settings) = pipeline::gateway_settings(config);
        let prepared = reloadable
            .serving
            .prepare(&listeners, settings)
            .await
            .map_err(|e| problems.extend(e.into_iter().map(Problem::Gateway)))
            .ok();
        let statics = pipeline::static_subscriptions(&config.subscriptions);
        if let Err(e) = self.subscriptions.check_static(statics.clone()) {
            problems.push(Problem::Subscriptions(e));
        }
        let policies = ApiPolicies::build(
            config,
            self.subscriptions.snapshot(),
            Arc::clone(&self.quotas),
            Some(&self.policies.current()),
        )
        .map_err(|e| problems.extend(e.into_iter().map(Problem::Pipeline)))
        .ok();
        let (Some(prepared), Some(policies)) = (prepared, policies) else {
            return Err(GatewayConfigError::new(problems));
        };
        if !problems.is_empty() {
            return Err(GatewayConfigError::new(problems));
        }

        let mut summary = ReloadSummary {
            backends_kept: prepared.backends_kept(&reloadable.serving),
            ..ReloadSummary::default()
        };
        api_changes(&reloadable.config, config, &mut summary);
        // The static subscriptions and the generation change together, with
        // runtime subscription changes waiting: none is lost or undone.
        let slot = &self.policies;
        let serving = &mut reloadable.serving;
        let (applied, policies) = self
            .subscriptions
            .replace_static(statics, |keys| {
                let policies = Arc::new(policies.with_keys(keys));
                let applied = serving.apply(prepared, as_policies(&policies));
                *slot.lock() = Arc::clone(&policies);
                (applied, policies)
            })
            .map_err(|e| GatewayConfigError::new(vec![Problem::Subscriptions(e)]))?;
        let (kept, started) =
            sync_key_refresh(&mut reloadable.key_refresh, &policies, &self.shutdown);
        summary.jwt_providers_kept = kept;
        summary.jwt_providers_started = started;
        summary.listeners_added.clone_from(&applied.added);
        summary.listeners_removed.clone_from(&applied.removed);
        summary.dangling_scopes = dangling_scopes(&self.subscriptions.list(), config);
        warn_dangling(&summary.dangling_scopes);
        applied.closed().await;
        reloadable.config = config.clone();
        Ok(summary)
    }

    /// Reads `path` and reloads from it; the outcome is logged either way.
    pub async fn reload_file(
        &self,
        path: &std::path::Path,
    ) -> Result<ReloadSummary, GatewayConfigError> {
        match crate::config::load(path) {
            Ok(config) => self.reload(&config).await,
            Err(e) => {
                let error = GatewayConfigError::new(vec![Problem::Config(e)]);
                tracing::error!(
                    config = %path.display(),
                    error = %error,
                    "gateway reload rejected; the running gateway stays"
                );
                Err(error)
            }
        }
    }

    /// The subscriptions: created, rotated, suspended... at run time, each change
    /// durable and seen by the next request.
    pub fn subscriptions(&self) -> Arc<Subscriptions> {
        Arc::clone(&self.subscriptions)
    }

    /// Tells `sink` about every gateway-made rejection from now on (`None`: stop).
    pub fn set_rejection_sink(&self, sink: Option<Arc<dyn RejectionSink>>) {
        self.policies.handle.set_rejection_sink(sink);
    }

    /// The gateway's counters now (`rampart stats`); reloads keep counting.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The bound addresses of the listeners.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.policies.handle.local_addrs()
    }

    /// The names of the configured APIs.
    pub fn apis(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .policies
            .current()
            .api_names()
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }

    /// The state directory the subscriptions and quota counters live in (a
    /// reload does not move them).
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// Periodic upkeep, every second, off the request threads (it writes a file):
    /// forgets idle rate-limit keys and ended quota windows, writes changed quota
    /// counters, logs the security events summed up per source (one window per
    /// source, see [`super::security_events`]). A failure is logged and retried
    /// at the next call.
    pub fn maintain(&self) {
        super::security_events::SECURITY_EVENTS.flush(std::time::Instant::now());
        if let Err(e) = self.policies.current().maintain() {
            tracing::error!(error = %chain(&e), "writing the quota counters failed; retrying");
        }
    }

    /// Responses by API, status and reason, and latency histograms, now.
    pub fn http_metrics(&self) -> Vec<super::metrics::ApiSnapshot> {
        self.stats.http.snapshot()
    }

    /// The key sets of the JWT providers that fetch theirs (JWKS or OIDC
    /// discovery), now. Static keys have no age worth watching.
    pub fn jwks_status(&self) -> Vec<JwksStatus> {
        let policies = self.policies.current();
        let mut all: Vec<JwksStatus> = policies
            .jwt_providers()
            .filter(|p| p.client().is_some())
            .map(|p| JwksStatus {
                provider: p.name().to_owned(),
                loaded_at: p.has_keys().then(|| p.planner().last_success()).flatten(),
                fetch_failures: p.planner().failures(),
            })
            .collect();
        all.sort_by(|a, b| a.provider.cmp(&b.provider));
        all.dedup_by(|a, b| a.provider == b.provider);
        all
    }

    /// Waits until the gateway has stopped (after the shutdown token was
    /// cancelled: accepts stop, in-flight requests finish within the drain
    /// timeout), then writes the quota counters.
    pub async fn drained(&self) -> Result<(), QuotaError> {
        let mut reloadable = self.reloadable.lock().await;
        if let Err(e) = reloadable.serving.stopped().await {
            tracing::error!(error = %e, "gateway task failed");
        }
        super::security_events::SECURITY_EVENTS.flush_all();
        self.quotas.flush()
    }
}
