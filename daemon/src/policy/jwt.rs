//! JWT / OIDC validation (APIM's `validate-jwt`, reference/apim.md §2), one
//! [`JwtProvider`] per `[[jwt_provider]]`.
//!
//! ```toml
//! [[jwt_provider]]
//! name = "corp"
//! # Where the token is; one of:
//! #   token = { header = "Authorization", scheme = "Bearer" }   (the default)
//! #   token = { header = "X-Token" }                            (the whole value)
//! #   token = { query = "access_token" }
//! #   token = { cookie = "session" }
//! algorithms = ["RS256", "PS256"]          # one family: HS*, RS*/PS*, ES*, or EdDSA
//! # Keys: exactly one of
//! openid_config_url = "https://login.example.com/tenant/v2.0/.well-known/openid-configuration"
//! #   jwks_url = "https://login.example.com/keys"
//! #   keys = [{ kid = "k1", pem_file = "/etc/rampart/idp.pem" },   # PUBLIC KEY or CERTIFICATE
//! #           { pem = "-----BEGIN PUBLIC KEY-----..." },
//! #           { hmac_secret_file = "/etc/rampart/hs.b64" },        # base64, >= 32 bytes
//! #           { hmac_secret_base64 = "..." }]
//! issuers = ["https://login.example.com/tenant/v2.0"]   # any of; default: not checked
//! audiences = ["api://orders"]                         # any of; default: not checked
//! required_claims = [
//!   { name = "scp", values = ["orders.read", "orders.write"], match = "any", separator = " " },
//!   { name = "tid", values = ["..."] },                # match = "all" by default
//! ]
//! clock_skew_secs = 0            # 0..=300, APIM's default 0
//! max_token_bytes = 8192         # refused before any decoding above this
//! failed_status = 401            # any 4xx
//! failure_message = "..."        # replaces every failure message (APIM's failure-message)
//! ca_file = "/etc/rampart/idp-ca.pem"   # fetches trust this bundle instead of the Mozilla roots
//! ```
//!
//! Verification ([`JwtProvider::verify`]), in order: the token at its location (absent:
//! 401 "JWT not present."), its size, three base64url segments, a header without
//! `crit`, an `alg` among the pinned ones (never taken from the token: `none` cannot be
//! configured, an HMAC provider never sees an RS/ES/PS token and the reverse), a key:
//! by `kid` in the set (unknown `kid`: 401 and a rate-limited refresh, see
//! [`refresh`]; static keys are all tried then, as APIM does), or every key of the set
//! when the token has no `kid`. `jku`, `x5u`, `jwk` and `x5c` are never used. Then the
//! signature (jsonwebtoken, aws-lc backend), `exp` required and numeric, `nbf` when
//! present, both with the clock skew (`now < exp + skew`, `now >= nbf - skew`), `iss` and
//! `aud` any-of (required in the token when configured), and `required_claims`.
//!
//! Time checks are done here with the caller's `now` rather than by jsonwebtoken (which
//! reads the system clock): the verified-token cache re-checks `exp` on every hit, and
//! tests drive the clock. jsonwebtoken still requires `exp` to be a number.
//!
//! Answers, as [`Rejection`]s from [`JwtProvider::rejection`]: `failed_status` (401) with
//! APIM's messages — "JWT not present.", "Invalid JWT.", "JWT token is missing the
//! following claims: a, b. Access denied.", "Claim X value of Y is not allowed. Access
//! denied." — or `failure_message` for all of them; with 401,
//! `WWW-Authenticate: Bearer` for an absent token (RFC 6750 §3.1: no error code when
//! credentials are missing) and `Bearer error="invalid_token"` otherwise. A provider whose
//! keys were never loaded answers 503 "Identity provider keys are not available."
//! (reason `JwtKeysUnavailable`). Reason codes are in [`reason`]; the precise cause is the
//! [`JwtRejection`]'s `Display`, for the log (it never contains the token).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use rustls_pki_types::TrustAnchor;
use serde_json::{Map, Value};
use url::Url;

use super::Rejection;
use super::validate::json::StrictObject;

mod cache;
mod claims;
mod der;
pub mod fetch;
mod keyset;
pub mod refresh;
mod rejection;
mod settings;
mod source;

#[cfg(test)]
mod tests;

pub use cache::{DEFAULT_CAPACITY as DEFAULT_CACHE_CAPACITY, VerifiedTokenCache};
pub use claims::{ClaimMatch, RequiredClaim};
pub use fetch::{FetchError, FetchLimits, JwksClient, fetch_discovery, fetch_jwks};
pub use keyset::{
    DiscoveryError, KeyError, KeyFamily, KeySet, KeySetError, MIN_RSA_BITS, OidcDiscovery,
};
pub use refresh::RefreshPlanner;
pub use rejection::{JwtRejection, reason};
pub use settings::{
    DEFAULT_MAX_TOKEN_BYTES, JwtConfigError, JwtProviderSettings, MIN_HMAC_SECRET_BYTES,
    StaticKeySettings, TokenSourceSettings,
};
pub use source::TokenSource;

use cache::{CachedToken, TokenHash};
use claims::ClaimFailure;
use source::Found;

/// A token that passed every check. Claims are shared with the cache.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    claims: Arc<Map<String, Value>>,
    exp: u64,
}

impl VerifiedToken {
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }

    /// The token's `exp`, Unix seconds.
    pub fn exp(&self) -> u64 {
        self.exp
    }
}

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    Static,
    Jwks(Url),
    OpenIdConfig(Url),
}

/// Validated, immutable settings of a provider.
#[derive(Debug, Clone)]
pub(crate) struct ProviderConfig {
    pub(crate) name: String,
    pub(crate) source: TokenSource,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) family: KeyFamily,
    pub(crate) origin: KeyOrigin,
    pub(crate) issuers: Vec<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) required_claims: Vec<RequiredClaim>,
    pub(crate) clock_skew_secs: u64,
    pub(crate) max_token_bytes: usize,
    pub(crate) failed_status: StatusCode,
    pub(crate) failure_message: Option<String>,
    /// Verified tokens kept (0: every token is verified every time).
    pub(crate) cache_capacity: usize,
}

/// A key set as loaded, with the issuer of the discovery document it came through.
#[derive(Debug)]
struct LoadedKeys {
    set: KeySet,
    discovered_issuer: Option<String>,
}

/// The loaded key set with the jsonwebtoken validation one provider's settings make of
/// it (its issuers may come from the discovery document).
#[derive(Debug)]
struct JudgedKeys {
    loaded: Arc<LoadedKeys>,
    validation: Validation,
}

/// A provider's keys and what decides them: where they come from, the algorithms
/// taken, the CAs trusted for fetches; with the refresh schedule. Shared by the
/// providers of successive configurations while these do not change, so a reload that
/// changes only how tokens are judged (audiences, messages...) neither drops nor
/// refetches the keys, and the fetching task goes on.
#[derive(Debug)]
pub struct ProviderKeys {
    name: String,
    origin: KeyOrigin,
    algorithms: Vec<Algorithm>,
    /// The CAs `client` trusts, compared at a reload.
    roots: Vec<TrustAnchor<'static>>,
    client: Option<JwksClient>,
    /// The issuers a discovery document must name: those of the configuration in
    /// force (see [`JwtProvider::take_over_fetches`]).
    discovery_issuers: ArcSwap<Vec<String>>,
    loaded: ArcSwapOption<LoadedKeys>,
    planner: RefreshPlanner,
    /// Wakes the fetching task when an unknown `kid` asks for a refresh.
    refresh_wanted: tokio::sync::Notify,
}

impl ProviderKeys {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The refresh schedule (fetched keys only; static keys never need one).
    pub fn planner(&self) -> &RefreshPlanner {
        &self.planner
    }

    /// Resolves when an unknown `kid` asked for a refresh.
    pub async fn refresh_requested(&self) {
        self.refresh_wanted.notified().await;
    }

    pub fn has_keys(&self) -> bool {
        self.loaded.load().is_some()
    }

    /// Both fetch the same keys: same origin, algorithms and trusted CAs.
    fn same_source(&self, other: &Self) -> bool {
        self.client.is_some()
            && other.client.is_some()
            && self.origin == other.origin
            && self.algorithms == other.algorithms
            && self.roots == other.roots
    }

    /// Replaces the key set; requests in flight finish with the old one, and each
    /// provider empties its verified-token cache when it sees the new set, so a key
    /// withdrawn by the IdP stops accepting its tokens now.
    fn install(&self, set: KeySet, discovered_issuer: Option<&str>) {
        self.loaded.store(Some(Arc::new(LoadedKeys {
            set,
            discovered_issuer: discovered_issuer.map(str::to_owned),
        })));
    }

    /// Fetches the key set (through discovery when configured) and installs it. On
    /// failure the current set stays. The caller holds the planner's ticket.
    pub async fn refresh(&self, limits: &FetchLimits) -> Result<usize, FetchError> {
        let Some(client) = &self.client else {
            return Ok(self.loaded.load().as_ref().map_or(0, |k| k.set.len()));
        };
        match &self.origin {
            KeyOrigin::Static => Ok(0),
            KeyOrigin::Jwks(url) => {
                let set = fetch_jwks(client, url, &self.algorithms, limits).await?;
                let count = set.len();
                self.install(set, None);
                Ok(count)
            }
            KeyOrigin::OpenIdConfig(url) => {
                let issuers = self.discovery_issuers.load_full();
                let discovery = fetch_discovery(client, url, &issuers, limits).await?;
                let set = fetch_jwks(client, &discovery.jwks_uri, &self.algorithms, limits).await?;
                let count = set.len();
                self.install(set, Some(&discovery.issuer));
                Ok(count)
            }
        }
    }
}

/// One identity provider: settings, its keys (see [`ProviderKeys`]) and the
/// verified-token cache.
#[derive(Debug)]
pub struct JwtProvider {
    config: ProviderConfig,
    keys: Arc<ProviderKeys>,
    judged: ArcSwapOption<JudgedKeys>,
    cache: VerifiedTokenCache,
    signature_checks: AtomicU64,
}

/// Longest `kid` looked up.
const MAX_KID_BYTES: usize = keyset::MAX_KID_BYTES;

impl JwtProvider {
    pub(crate) fn new(
        config: ProviderConfig,
        keys: Option<KeySet>,
        fetch_roots: Option<rustls::RootCertStore>,
    ) -> Result<Self, JwtConfigError> {
        let (client, roots) = match fetch_roots {
            Some(roots) => {
                let anchors = roots.roots.clone();
                let client = JwksClient::new(roots)
                    .map_err(|source| JwtConfigError::TlsClient { source })?;
                (Some(client), anchors)
            }
            None => (None, Vec::new()),
        };
        let provider_keys = ProviderKeys {
            name: config.name.clone(),
            origin: config.origin.clone(),
            algorithms: config.algorithms.clone(),
            roots,
            client,
            discovery_issuers: ArcSwap::from_pointee(config.issuers.clone()),
            loaded: ArcSwapOption::empty(),
            planner: RefreshPlanner::default(),
            refresh_wanted: tokio::sync::Notify::new(),
        };
        if let Some(set) = keys {
            provider_keys.install(set, None);
            provider_keys
                .planner
                .loaded_at(jsonwebtoken::get_current_timestamp());
        }
        Ok(Self {
            cache: VerifiedTokenCache::new(config.cache_capacity),
            config,
            keys: Arc::new(provider_keys),
            judged: ArcSwapOption::empty(),
            signature_checks: AtomicU64::new(0),
        })
    }

    /// This provider with `running`'s keys, refresh schedule and fetching task when
    /// both fetch the same keys (same origin, algorithms and trusted CAs): settings that
    /// only decide how tokens are judged do not drop the keys. Static keys are never
    /// taken over (they are read again, like certificates).
    #[must_use]
    pub fn keeping_keys_of(mut self, running: &JwtProvider) -> Self {
        if self.config.name == running.config.name && self.keys.same_source(&running.keys) {
            self.keys = Arc::clone(&running.keys);
        }
        self
    }

    /// Makes this provider's settings the ones its key fetches use (the issuers a
    /// discovery document must name), once its configuration is in force: a reload
    /// that is rejected changes nothing.
    pub fn take_over_fetches(&self) {
        if **self.keys.discovery_issuers.load() != self.config.issuers {
            self.keys
                .discovery_issuers
                .store(Arc::new(self.config.issuers.clone()));
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn origin(&self) -> &KeyOrigin {
        &self.config.origin
    }

    pub fn algorithms(&self) -> &[Algorithm] {
        &self.config.algorithms
    }

    pub fn family(&self) -> KeyFamily {
        self.config.family
    }

    /// The keys, shared with the providers of earlier configurations that fetched
    /// the same ones.
    pub fn keys(&self) -> &Arc<ProviderKeys> {
        &self.keys
    }

    /// The refresh schedule (fetched keys only; static keys never need one).
    pub fn planner(&self) -> &RefreshPlanner {
        &self.keys.planner
    }

    /// The https client for this provider's fetches (`None` for static keys).
    pub fn client(&self) -> Option<&JwksClient> {
        self.keys.client.as_ref()
    }

    /// Signature verifications done so far (cache hits do none).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    pub fn has_keys(&self) -> bool {
        self.keys.has_keys()
    }

    /// Replaces the key set; requests in flight finish with the old one.
    pub fn install_keys(&self, set: KeySet) {
        self.keys.install(set, None);
    }

    /// Replaces the key set fetched through `discovery`; without configured issuers,
    /// the discovery document's issuer becomes the accepted one.
    pub fn install_discovered_keys(&self, discovery: &OidcDiscovery, set: KeySet) {
        self.keys.install(set, Some(&discovery.issuer));
    }

    /// Fetches the key set and installs it (see [`ProviderKeys::refresh`]).
    pub async fn refresh(&self, limits: &FetchLimits) -> Result<usize, FetchError> {
        self.keys.refresh(limits).await
    }

    /// The current key set with this provider's validation; a new set empties the
    /// verified-token cache first (a key the IdP withdrew stops accepting its tokens).
    fn judged(&self) -> Option<Arc<JudgedKeys>> {
        let loaded = self.keys.loaded.load_full()?;
        if let Some(judged) = self.judged.load().as_ref()
            && Arc::ptr_eq(&judged.loaded, &loaded)
        {
            return Some(Arc::clone(judged));
        }
        let validation = self.validation(loaded.discovered_issuer.as_deref());
        let judged = Arc::new(JudgedKeys { loaded, validation });
        self.judged.store(Some(Arc::clone(&judged)));
        self.cache.clear();
        Some(judged)
    }

    fn validation(&self, discovered_issuer: Option<&str>) -> Validation {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = self.config.algorithms.clone();
        // Checked here with the caller's clock (module docs); exp stays required.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let mut required = vec!["exp"];
        let issuers: Vec<&str> = if self.config.issuers.is_empty() {
            discovered_issuer.into_iter().collect()
        } else {
            self.config.issuers.iter().map(String::as_str).collect()
        };
        if !issuers.is_empty() {
            validation.set_issuer(&issuers);
            required.push("iss");
        }
        if self.config.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.config.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// The response for a refused token.
    pub fn rejection(&self, rejection: &JwtRejection) -> Rejection {
        let mut headers = HeaderMap::new();
        if matches!(rejection, JwtRejection::KeysUnavailable) {
            return Rejection {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: rejection.message(),
                headers,
                reason: rejection.reason(),
            };
        }
        let status = self.config.failed_status;
        if status == StatusCode::UNAUTHORIZED {
            let challenge = match rejection {
                JwtRejection::NotPresent => "Bearer",
                _ => "Bearer error=\"invalid_token\"",
            };
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        Rejection {
            status,
            message: self
                .config
                .failure_message
                .clone()
                .unwrap_or_else(|| rejection.message()),
            headers,
            reason: rejection.reason(),
        }
    }

    /// Verifies the request's token at `now` (Unix seconds).
    pub fn verify(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        now: u64,
    ) -> Result<VerifiedToken, JwtRejection> {
        let token = match self.config.source.find(headers, query) {
            Found::Token(token) => token,
            Found::Absent => return Err(JwtRejection::NotPresent),
            Found::Ambiguous(detail) => {
                return Err(JwtRejection::Malformed {
                    detail: detail.into(),
                });
            }
        };
        if token.len() > self.config.max_token_bytes {
            return Err(JwtRejection::TooLarge {
                bytes: token.len(),
                limit: self.config.max_token_bytes,
            });
        }
        let skew = self.config.clock_skew_secs;
        // Before the cache: a new key set empties it.
        let Some(judged) = self.judged() else {
            return Err(JwtRejection::KeysUnavailable);
        };
        let hash = TokenHash::of(token);
        if let Some(hit) = self.cache.get(&hash, now) {
            return Ok(VerifiedToken {
                claims: hit.claims,
                exp: hit.exp,
            });
        }
        check_shape(token)?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| JwtRejection::Malformed {
            detail: format!("header: {e}"),
        })?;
        if header.crit.is_some() {
            return Err(JwtRejection::CriticalHeader);
        }
        let alg = header.alg;
        if !self.config.algorithms.contains(&alg) {
            return Err(JwtRejection::AlgorithmNotAllowed {
                alg: format!("{alg:?}"),
            });
        }
        let candidates = self.candidates(&judged.loaded.set, header.kid.as_deref(), alg, now)?;
        let claims = self.verify_signature(token, &candidates, &judged.validation)?;
        // `iss` is one StringOrURI (RFC 7519 §4.1.1); jsonwebtoken also takes an
        // array and passes it when any element is allowed.
        if claims.get("iss").is_some_and(|iss| !iss.is_string()) {
            return Err(JwtRejection::IssuerNotAllowed);
        }
        let exp = time_claim(&claims, "exp")?.ok_or(JwtRejection::BadTimeClaim { claim: "exp" })?;
        if now >= exp.saturating_add(skew) {
            return Err(JwtRejection::Expired { exp, now, skew });
        }
        if let Some(nbf) = time_claim(&claims, "nbf")?
            && now < nbf.saturating_sub(skew)
        {
            return Err(JwtRejection::NotYetValid { nbf, now, skew });
        }
        claims::check(&self.config.required_claims, &claims).map_err(|f| match f {
            ClaimFailure::Missing(names) => JwtRejection::ClaimsMissing { names },
            ClaimFailure::ValueNotAllowed { name, value } => {
                JwtRejection::ClaimValueNotAllowed { name, value }
            }
        })?;
        let claims = Arc::new(claims);
        self.cache.insert(
            hash,
            CachedToken {
                claims: Arc::clone(&claims),
                exp,
                valid_until: exp.saturating_add(skew),
            },
            now,
        );
        Ok(VerifiedToken { claims, exp })
    }

    /// The keys to try: those with the token's `kid`, or all (no `kid`, or an unknown
    /// `kid` with static keys, as APIM does); only keys that accept `alg`.
    fn candidates<'a>(
        &self,
        set: &'a KeySet,
        kid: Option<&str>,
        alg: Algorithm,
        now: u64,
    ) -> Result<Vec<&'a keyset::VerificationKey>, JwtRejection> {
        let usable = |k: &&keyset::VerificationKey| k.accepts(alg);
        let Some(kid) = kid else {
            return Ok(set.keys.iter().filter(usable).collect());
        };
        if kid.len() > MAX_KID_BYTES {
            return Err(JwtRejection::Malformed {
                detail: format!("kid of {} bytes", kid.len()),
            });
        }
        let by_kid: Vec<_> = set
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .filter(usable)
            .collect();
        if !by_kid.is_empty() {
            return Ok(by_kid);
        }
        if self.config.origin == KeyOrigin::Static {
            return Ok(set.keys.iter().filter(usable).collect());
        }
        if self.keys.planner.on_unknown_kid(now) {
            self.keys.refresh_wanted.notify_one();
        }
        Err(JwtRejection::KeyNotFound {
            kid: kid.chars().take(64).collect(),
        })
    }

    fn verify_signature(
        &self,
        token: &str,
        candidates: &[&keyset::VerificationKey],
        validation: &Validation,
    ) -> Result<Map<String, Value>, JwtRejection> {
        for key in candidates {
            self.signature_checks.fetch_add(1, Ordering::Relaxed);
            // Claims with a name given twice are refused (`StrictObject`).
            match jsonwebtoken::decode::<StrictObject>(token, &key.key, validation) {
                Ok(data) => return Ok(data.claims.0),
                // This key is not the one: try the next.
                Err(e) if is_key_mismatch(e.kind()) => continue,
                Err(e) => return Err(map_claims_error(e.kind())),
            }
        }
        Err(JwtRejection::SignatureInvalid {
            tried: candidates.len(),
        })
    }
}

fn is_key_mismatch(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidAlgorithm
    )
}

/// Errors after the signature verified: claims decoding and jsonwebtoken's checks.
fn map_claims_error(kind: &ErrorKind) -> JwtRejection {
    match kind {
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => {
            JwtRejection::BadTimeClaim { claim: "exp" }
        }
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => JwtRejection::IssuerNotAllowed,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
            JwtRejection::AudienceNotAllowed
        }
        ErrorKind::InvalidIssuer => JwtRejection::IssuerNotAllowed,
        ErrorKind::InvalidAudience => JwtRejection::AudienceNotAllowed,
        other => JwtRejection::Malformed {
            detail: format!("{other:?}"),
        },
    }
}

/// Three non-empty base64url segments (a JWS; a JWE has five), checked before any
/// decoding so garbage costs a byte scan.
fn check_shape(token: &str) -> Result<(), JwtRejection> {
    let base64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let segments: Vec<&str> = token.splitn(4, '.').collect();
    if segments.len() == 3 && segments.iter().all(|s| base64url(s)) {
        Ok(())
    } else {
        Err(JwtRejection::Malformed {
            detail: "not three base64url segments (a signed JWT)".into(),
        })
    }
}

/// A NumericDate claim: absent is `None`; a non-number (e.g. a string, CVE-2026-25537's
/// bypass) is an error; fractions are truncated.
fn time_claim(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, JwtRejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or(JwtRejection::BadTimeClaim { claim: name }),
        Some(_) => Err(JwtRejection::BadTimeClaim { claim: name }),
    }
}
