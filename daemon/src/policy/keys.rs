//! Subscription keys (APIM parity): subscriptions, their hashed keys, and the check.
//!
//! A subscription is a named pair of keys (primary, secondary) with a scope (all APIs, one
//! product, one API) and a state (only `active` passes). Keys are 32 random bytes shown once
//! as hex; only their SHA-256 is kept. Plain SHA-256 is enough here because the keys are
//! high-entropy: there is nothing to brute-force, so a slow password hash would only cost
//! CPU on every request.
//!
//! Lookup is by the hash in a `HashMap` (the hash of a random key tells an observer
//! nothing), then the stored hash is confirmed with a constant-time comparison: no linear
//! scan with an early exit whose timing depends on how much of a key matched.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Rejection;

mod extract;
pub(crate) mod file;
mod subscriptions;

pub use extract::{KeyLocation, PresentedKey, carries_key, extract_key, strip_key};
pub use subscriptions::Subscriptions;

/// APIM's default header for the key.
pub const DEFAULT_HEADER: &str = "Ocp-Apim-Subscription-Key";
/// APIM's default query parameter for the key (checked only if the header is absent).
pub const DEFAULT_QUERY_PARAM: &str = "subscription-key";
/// Name of the store's file in the state directory.
pub const STORE_FILE: &str = "subscriptions.json";

const MISSING_KEY_MESSAGE: &str = "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API.";
const INVALID_KEY_MESSAGE: &str = "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription.";

/// Random bytes in a generated key (256 bits; APIM requires at least 128).
const KEY_BYTES: usize = 32;

/// SHA-256 of a key. `Debug` shows only a prefix: enough to tell hashes apart in a log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hash of a presented or generated key.
    pub fn of(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    /// Parses 64 hex digits (the form accepted in the configuration file).
    pub fn from_hex(text: &str) -> Result<Self, KeyHashParseError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut out).map_err(|_| KeyHashParseError)?;
        Ok(Self(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

impl Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a key hash must be 64 hex digits (SHA-256 of the key)")]
pub struct KeyHashParseError;

/// A plain key, returned once at creation or rotation. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainKey(String);

impl PlainKey {
    fn generate() -> Result<Self, KeyStoreError> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| KeyStoreError::Random {
            detail: e.to_string(),
        })?;
        Ok(Self(hex::encode(bytes)))
    }

    /// The key to hand to the subscriber.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.0.as_bytes())
    }
}

impl fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainKey(<redacted>)")
    }
}

/// The two keys of a new subscription.
#[derive(Debug, Clone)]
pub struct IssuedKeys {
    pub primary: PlainKey,
    pub secondary: PlainKey,
}

/// Which of a subscription's two keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySlot {
    Primary,
    Secondary,
}

/// What a subscription grants access to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Scope {
    AllApis,
    Product(String),
    Api(String),
}

impl Scope {
    /// True if a key of this scope may call `api`, which belongs to `api_products`.
    pub fn covers<S: AsRef<str>>(&self, api: &str, api_products: &[S]) -> bool {
        match self {
            Self::AllApis => true,
            Self::Api(name) => name == api,
            Self::Product(name) => api_products.iter().any(|p| p.as_ref() == name),
        }
    }

    /// What this scope names that is not among the configured `apis` and
    /// `products`: `Some("API")` or `Some("product")`, `None` when it is there
    /// (or the scope is every API). Such a scope covers no request: none is
    /// routed to an API that is not configured, and no configured API belongs to
    /// a product that is not. A scope is a name, so an API or product configured
    /// again under that name is covered again (docs/gateway.md).
    pub fn missing<A: AsRef<str>, P: AsRef<str>>(
        &self,
        apis: &[A],
        products: &[P],
    ) -> Option<&'static str> {
        match self {
            Self::AllApis => None,
            Self::Api(name) => (!apis.iter().any(|a| a.as_ref() == name)).then_some("API"),
            Self::Product(name) => {
                (!products.iter().any(|p| p.as_ref() == name)).then_some("product")
            }
        }
    }
}

/// `all`, `product:NAME` or `api:NAME`, as `rampart keys list` and the
/// configuration write it.
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AllApis => f.write_str("all"),
            Self::Product(name) => write!(f, "product:{name}"),
            Self::Api(name) => write!(f, "api:{name}"),
        }
    }
}

/// Subscription states; only `Active` passes. `Cancelled` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionState {
    Active,
    Suspended,
    Cancelled,
}

/// Where a subscription comes from: the store (managed with the CLI) or the config file
/// (read-only here; changed by editing the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Store,
    Config,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub name: String,
    pub scope: Scope,
    pub state: SubscriptionState,
    pub primary: KeyHash,
    pub secondary: KeyHash,
    /// Unix seconds; 0 for subscriptions from the config file.
    pub created_at: u64,
    #[serde(skip, default = "origin_store")]
    pub origin: Origin,
}

impl Subscription {
    /// Whether this subscription may call `api` (which belongs to `api_products`)
    /// now: only an active one, and only within its scope.
    pub fn admits<S: AsRef<str>>(&self, api: &str, api_products: &[S]) -> Result<(), KeyRejection> {
        if self.state != SubscriptionState::Active {
            return Err(KeyRejection::NotActive { state: self.state });
        }
        if !self.scope.covers(api, api_products) {
            return Err(KeyRejection::OutOfScope);
        }
        Ok(())
    }
}

fn origin_store() -> Origin {
    Origin::Store
}

/// A subscription declared in the configuration file: key hashes only, never plain keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticSubscription {
    pub name: String,
    pub scope: Scope,
    pub state: SubscriptionState,
    pub primary: KeyHash,
    pub secondary: KeyHash,
}

/// Why a presented key was refused. The gateway maps it with [`KeyRejection::rejection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    #[error("no subscription key in the request")]
    Missing,
    #[error("unknown subscription key")]
    Unknown,
    #[error("subscription is not active ({state:?})")]
    NotActive { state: SubscriptionState },
    #[error("subscription does not cover this API")]
    OutOfScope,
}

impl KeyRejection {
    /// APIM's `LastError` reason code, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "SubscriptionKeyNotFound",
            Self::Unknown | Self::NotActive { .. } | Self::OutOfScope => "SubscriptionKeyInvalid",
        }
    }

    /// The 401 APIM sends: `host` is the request's host (for the realm), `header_name` the
    /// header the API reads the key from.
    pub fn rejection(&self, host: &str, header_name: &str) -> Rejection {
        let message = match self {
            Self::Missing => MISSING_KEY_MESSAGE,
            _ => INVALID_KEY_MESSAGE,
        };
        let mut headers = HeaderMap::new();
        let challenge = format!(
            "AzureApiManagementKey realm=\"https://{}/\",name=\"{}\",type=\"header\"",
            sanitize_for_header(host),
            sanitize_for_header(header_name)
        );
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        Rejection {
            status: StatusCode::UNAUTHORIZED,
            message: message.to_owned(),
            headers,
            reason: self.reason(),
        }
    }
}

/// The host comes from the client: keep only characters that belong in a host[:port], so
/// it cannot break out of the quoted realm.
fn sanitize_for_header(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("no subscription named {name:?}")]
    NotFound { name: String },
    #[error("a subscription named {name:?} already exists")]
    Exists { name: String },
    #[error("subscription {name:?} comes from the config file; change it there")]
    FromConfig { name: String },
    #[error("subscription {name:?} is cancelled; create a new one")]
    Cancelled { name: String },
    #[error("a subscription name must be 1-256 characters of letters, digits, '-', '_', '.'")]
    InvalidName { name: String },
    #[error("subscription {name:?} uses a key hash already used by {other:?}")]
    DuplicateKey { name: String, other: String },
    #[error("cannot generate a random key: {detail}")]
    Random { detail: String },
    #[error("cannot read subscription store {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A store of a format a newer rampartd writes (after a downgrade).
    #[error(
        "subscription store {path} was written by a newer rampartd (format {version}; this one reads format {known}): upgrade rampartd, or restore a backup of the state directory"
    )]
    NewerFormat {
        path: PathBuf,
        version: u32,
        known: u32,
    },
    #[error("subscription store {path} is corrupt (refusing to start with no subscriptions)")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write subscription store {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// All subscriptions, with a hash index for the per-request check.
///
/// Every change is written to disk (atomic replace) before the call returns; if writing
/// fails, nothing changes in memory either. `Clone` so the gateway can publish a snapshot
/// (e.g. behind an `ArcSwap`) after each change.
#[derive(Debug, Default, Clone)]
pub struct KeyStore {
    path: Option<PathBuf>,
    subscriptions: BTreeMap<String, Subscription>,
    index: foldhash::HashMap<KeyHash, (String, KeySlot)>,
}

impl KeyStore {
    /// A store that is never written (tests, or a daemon with only static subscriptions).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Loads `state_dir/subscriptions.json`; a missing file is an empty store, a corrupt one
    /// an error.
    pub fn open(state_dir: &Path) -> Result<Self, KeyStoreError> {
        let path = state_dir.join(STORE_FILE);
        let subscriptions = file::load_subscriptions(&path)?;
        let mut store = Self {
            path: Some(path),
            subscriptions: BTreeMap::new(),
            index: foldhash::HashMap::default(),
        };
        let mut all = BTreeMap::new();
        for mut sub in subscriptions {
            sub.origin = Origin::Store;
            if all.contains_key(&sub.name) {
                return Err(KeyStoreError::Exists { name: sub.name });
            }
            all.insert(sub.name.clone(), sub);
        }
        store.install(all)?;
        Ok(store)
    }

    /// Replaces the subscriptions that come from the config file (at start and on reload).
    /// On error nothing changes.
    pub fn set_static(&mut self, statics: Vec<StaticSubscription>) -> Result<(), KeyStoreError> {
        let mut all: BTreeMap<String, Subscription> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.origin == Origin::Store)
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for s in statics {
            validate_name(&s.name)?;
            if all.contains_key(&s.name) {
                return Err(KeyStoreError::Exists { name: s.name });
            }
            let sub = Subscription {
                name: s.name.clone(),
                scope: s.scope,
                state: s.state,
                primary: s.primary,
                secondary: s.secondary,
                created_at: 0,
                origin: Origin::Config,
            };
            all.insert(s.name, sub);
        }
        self.install(all)
    }

    /// Creates an active subscription and returns it with its two plain keys (the only
    /// time they are visible).
    pub fn create(
        &mut self,
        name: &str,
        scope: Scope,
    ) -> Result<(Subscription, IssuedKeys), KeyStoreError> {
        validate_name(name)?;
        if self.subscriptions.contains_key(name) {
            return Err(KeyStoreError::Exists {
                name: name.to_owned(),
            });
        }
        let keys = IssuedKeys {
            primary: PlainKey::generate()?,
            secondary: PlainKey::generate()?,
        };
        let sub = Subscription {
            name: name.to_owned(),
            scope,
            state: SubscriptionState::Active,
            primary: keys.primary.hash(),
            secondary: keys.secondary.hash(),
            created_at: unix_now(),
            origin: Origin::Store,
        };
        let mut all = self.subscriptions.clone();
        all.insert(name.to_owned(), sub.clone());
        self.commit(all)?;
        Ok((sub, keys))
    }

    /// Subscriptions in name order.
    pub fn list(&self) -> impl Iterator<Item = &Subscription> {
        self.subscriptions.values()
    }

    pub fn get(&self, name: &str) -> Option<&Subscription> {
        self.subscriptions.get(name)
    }

    /// Replaces one key with a new random one and returns it; the other key keeps working.
    pub fn rotate(&mut self, name: &str, slot: KeySlot) -> Result<PlainKey, KeyStoreError> {
        let key = PlainKey::generate()?;
        let hash = key.hash();
        self.modify(name, |sub| {
            match slot {
                KeySlot::Primary => sub.primary = hash,
                KeySlot::Secondary => sub.secondary = hash,
            }
            Ok(())
        })?;
        Ok(key)
    }

    pub fn suspend(&mut self, name: &str) -> Result<(), KeyStoreError> {
        self.set_state(name, SubscriptionState::Suspended)
    }

    pub fn activate(&mut self, name: &str) -> Result<(), KeyStoreError> {
        self.set_state(name, SubscriptionState::Active)
    }

    /// Cancels the subscription for good (APIM's `cancelled`); it stays listed.
    pub fn revoke(&mut self, name: &str) -> Result<(), KeyStoreError> {
        self.set_state(name, SubscriptionState::Cancelled)
    }

    /// The per-request check. `presented` is the key as sent (`None` if absent); `api` the
    /// routed API and `api_products` the products that contain it.
    pub fn check<S: AsRef<str>>(
        &self,
        presented: Option<&[u8]>,
        api: &str,
        api_products: &[S],
    ) -> Result<&Subscription, KeyRejection> {
        let presented = presented.ok_or(KeyRejection::Missing)?;
        let sub = self.owner(presented).ok_or(KeyRejection::Unknown)?;
        sub.admits(api, api_products)?;
        Ok(sub)
    }

    /// The subscription whose primary or secondary key `presented` is (the stored
    /// hash compared in constant time), whatever its state and scope: the gateway
    /// names it in the log when [`Subscription::admits`] refuses.
    pub fn owner(&self, presented: &[u8]) -> Option<&Subscription> {
        let hash = KeyHash::of(presented);
        let (name, slot) = self.index.get(&hash)?;
        let sub = self.subscriptions.get(name)?;
        let stored = match slot {
            KeySlot::Primary => &sub.primary,
            KeySlot::Secondary => &sub.secondary,
        };
        stored.ct_eq(&hash).then_some(sub)
    }

    fn set_state(&mut self, name: &str, state: SubscriptionState) -> Result<(), KeyStoreError> {
        self.modify(name, |sub| {
            sub.state = state;
            Ok(())
        })
    }

    fn modify(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut Subscription) -> Result<(), KeyStoreError>,
    ) -> Result<(), KeyStoreError> {
        let mut all = self.subscriptions.clone();
        let sub = all.get_mut(name).ok_or_else(|| KeyStoreError::NotFound {
            name: name.to_owned(),
        })?;
        if sub.origin == Origin::Config {
            return Err(KeyStoreError::FromConfig {
                name: name.to_owned(),
            });
        }
        if sub.state == SubscriptionState::Cancelled {
            return Err(KeyStoreError::Cancelled {
                name: name.to_owned(),
            });
        }
        change(sub)?;
        self.commit(all)
    }

    /// Writes the stored subscriptions, then installs the new set.
    fn commit(&mut self, all: BTreeMap<String, Subscription>) -> Result<(), KeyStoreError> {
        let index = build_index(&all)?;
        if let Some(path) = &self.path {
            let stored: Vec<&Subscription> =
                all.values().filter(|s| s.origin == Origin::Store).collect();
            file::save_subscriptions(path, &stored)?;
        }
        self.subscriptions = all;
        self.index = index;
        Ok(())
    }

    fn install(&mut self, all: BTreeMap<String, Subscription>) -> Result<(), KeyStoreError> {
        self.index = build_index(&all)?;
        self.subscriptions = all;
        Ok(())
    }
}

fn build_index(
    all: &BTreeMap<String, Subscription>,
) -> Result<foldhash::HashMap<KeyHash, (String, KeySlot)>, KeyStoreError> {
    let mut index = foldhash::HashMap::with_capacity_and_hasher(all.len() * 2, Default::default());
    for sub in all.values() {
        for (hash, slot) in [
            (sub.primary, KeySlot::Primary),
            (sub.secondary, KeySlot::Secondary),
        ] {
            if let Some((other, _)) = index.insert(hash, (sub.name.clone(), slot)) {
                return Err(KeyStoreError::DuplicateKey {
                    name: sub.name.clone(),
                    other,
                });
            }
        }
    }
    Ok(index)
}

fn validate_name(name: &str) -> Result<(), KeyStoreError> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(KeyStoreError::InvalidName {
            name: name.to_owned(),
        })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
