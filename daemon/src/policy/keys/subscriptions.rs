//! Subscriptions changed while the gateway serves (`rampart keys ...`).
//!
//! One writer at a time changes the [`KeyStore`] (each change written to
//! `subscriptions.json` before the call returns), then publishes an immutable
//! snapshot of it. The gateway checks keys against the snapshot its current
//! generation holds, so a request pays no lock and no extra atomic load for it;
//! the publisher installs a new generation before the change returns, so the next
//! request sees it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{
    IssuedKeys, KeySlot, KeyStore, KeyStoreError, PlainKey, Scope, StaticSubscription, Subscription,
};

/// Called with every new snapshot, before the change that made it returns.
type Publisher = Box<dyn Fn(Arc<KeyStore>) + Send + Sync>;

/// The subscriptions of a running gateway: shared, changed at run time, kept
/// across reloads (a reload replaces only those the configuration declares).
pub struct Subscriptions {
    inner: Mutex<Inner>,
}

struct Inner {
    store: KeyStore,
    snapshot: Arc<KeyStore>,
    publish: Option<Publisher>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions")
            .field("count", &self.lock().store.list().count())
            .finish_non_exhaustive()
    }
}

impl Subscriptions {
    /// Subscriptions kept in `store` (opened from the state directory, or in memory).
    pub fn new(store: KeyStore) -> Self {
        Self {
            inner: Mutex::new(Inner {
                snapshot: Arc::new(store.clone()),
                store,
                publish: None,
            }),
        }
    }

    /// The store in `state_dir` (`subscriptions.json`).
    pub fn open(state_dir: &std::path::Path) -> Result<Self, KeyStoreError> {
        KeyStore::open(state_dir).map(Self::new)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The subscriptions as they are now, for checking keys.
    pub fn snapshot(&self) -> Arc<KeyStore> {
        Arc::clone(&self.lock().snapshot)
    }

    /// Every later change calls `publish` with the new snapshot (under the writer
    /// lock, so snapshots are published in order) before it returns.
    pub fn set_publisher(&self, publish: impl Fn(Arc<KeyStore>) + Send + Sync + 'static) {
        self.lock().publish = Some(Box::new(publish));
    }

    /// Whether `statics` could replace the configuration's subscriptions now
    /// (names valid, no clash with a stored subscription, no key used twice).
    pub fn check_static(&self, statics: Vec<StaticSubscription>) -> Result<(), KeyStoreError> {
        let mut store = self.lock().store.clone();
        store.set_static(statics)
    }

    /// Replaces the configuration's subscriptions with `statics` and hands the new
    /// snapshot to `apply` (which installs it: a reload); the publisher is not
    /// called. Runtime changes wait meanwhile. On error nothing changes and
    /// `apply` is not called.
    pub fn replace_static<T>(
        &self,
        statics: Vec<StaticSubscription>,
        apply: impl FnOnce(Arc<KeyStore>) -> T,
    ) -> Result<T, KeyStoreError> {
        let mut inner = self.lock();
        let mut store = inner.store.clone();
        store.set_static(statics)?;
        let snapshot = Arc::new(store.clone());
        let applied = apply(Arc::clone(&snapshot));
        inner.store = store;
        inner.snapshot = snapshot;
        Ok(applied)
    }

    /// Applies `change` to the store (which writes the file), then publishes.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut KeyStore) -> Result<T, KeyStoreError>,
    ) -> Result<T, KeyStoreError> {
        let mut inner = self.lock();
        let out = change(&mut inner.store)?;
        let snapshot = Arc::new(inner.store.clone());
        inner.snapshot = Arc::clone(&snapshot);
        if let Some(publish) = &inner.publish {
            publish(snapshot);
        }
        Ok(out)
    }

    /// Creates an active subscription; its two keys are returned, the only time
    /// they are visible. Usable by the next request.
    pub fn create(&self, name: &str, scope: Scope) -> Result<IssuedKeys, KeyStoreError> {
        self.change(|store| store.create(name, scope).map(|(_, keys)| keys))
    }

    /// Every subscription in name order (key hashes only, never keys).
    pub fn list(&self) -> Vec<Subscription> {
        self.lock().store.list().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<Subscription> {
        self.lock().store.get(name).cloned()
    }

    /// A new key in `slot`; the old one stops working with the next request, the
    /// other slot's key keeps working.
    pub fn rotate(&self, name: &str, slot: KeySlot) -> Result<PlainKey, KeyStoreError> {
        self.change(|store| store.rotate(name, slot))
    }

    /// Keys of a suspended subscription get 401 until it is activated again.
    pub fn suspend(&self, name: &str) -> Result<(), KeyStoreError> {
        self.change(|store| store.suspend(name))
    }

    pub fn activate(&self, name: &str) -> Result<(), KeyStoreError> {
        self.change(|store| store.activate(name))
    }

    /// Cancels the subscription for good; it stays listed.
    ///
    /// Like every change here, refused for a subscription from the configuration
    /// file ([`KeyStoreError::FromConfig`]): that one changes with the file.
    pub fn revoke(&self, name: &str) -> Result<(), KeyStoreError> {
        self.change(|store| store.revoke(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::keys::{KeyHash, KeyRejection, SubscriptionState};

    const NO_PRODUCTS: &[&str] = &[];

    fn statics(name: &str) -> Vec<StaticSubscription> {
        vec![StaticSubscription {
            name: name.to_owned(),
            scope: Scope::AllApis,
            state: SubscriptionState::Active,
            primary: KeyHash::of(b"static-primary"),
            secondary: KeyHash::of(b"static-secondary"),
        }]
    }

    #[test]
    fn every_change_is_published_in_order_before_it_returns() {
        let subs = Subscriptions::new(KeyStore::in_memory());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        subs.set_publisher(move |snapshot: Arc<KeyStore>| {
            log.lock().unwrap().push(snapshot.list().count());
        });
        let keys = subs.create("alice", Scope::AllApis).unwrap();
        subs.create("bob", Scope::AllApis).unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![1, 2]);
        let key = keys.primary.expose().as_bytes();
        assert!(subs.snapshot().check(Some(key), "a", NO_PRODUCTS).is_ok());

        subs.suspend("alice").unwrap();
        assert_eq!(
            subs.snapshot()
                .check(Some(key), "a", NO_PRODUCTS)
                .unwrap_err(),
            KeyRejection::NotActive {
                state: SubscriptionState::Suspended
            }
        );
        subs.activate("alice").unwrap();
        let new = subs.rotate("alice", KeySlot::Primary).unwrap();
        let snapshot = subs.snapshot();
        assert!(snapshot.check(Some(key), "a", NO_PRODUCTS).is_err());
        assert!(
            snapshot
                .check(Some(new.expose().as_bytes()), "a", NO_PRODUCTS)
                .is_ok()
        );
        assert_eq!(seen.lock().unwrap().len(), 5);
    }

    #[test]
    fn failed_changes_publish_nothing() {
        let subs = Subscriptions::new(KeyStore::in_memory());
        let count = Arc::new(Mutex::new(0));
        let published = Arc::clone(&count);
        subs.set_publisher(move |_| *published.lock().unwrap() += 1);
        subs.create("alice", Scope::AllApis).unwrap();
        assert!(matches!(
            subs.create("alice", Scope::AllApis),
            Err(KeyStoreError::Exists { .. })
        ));
        assert!(matches!(
            subs.suspend("nobody"),
            Err(KeyStoreError::NotFound { .. })
        ));
        assert_eq!(*count.lock().unwrap(), 1);
    }

    #[test]
    fn static_subscriptions_are_replaced_by_reloads_only() {
        let subs = Subscriptions::new(KeyStore::in_memory());
        subs.create("runtime", Scope::AllApis).unwrap();
        let installed = subs.replace_static(statics("partner"), |s| s.list().count());
        assert_eq!(installed.unwrap(), 2);
        for refused in [
            subs.suspend("partner"),
            subs.activate("partner"),
            subs.revoke("partner"),
            subs.rotate("partner", KeySlot::Secondary).map(|_| ()),
        ] {
            assert!(matches!(refused, Err(KeyStoreError::FromConfig { .. })));
        }
        assert!(matches!(
            subs.create("partner", Scope::AllApis),
            Err(KeyStoreError::Exists { .. })
        ));
        // A declared name clashing with a stored one is refused, and nothing changes.
        assert!(subs.check_static(statics("runtime")).is_err());
        let untouched = subs.replace_static(statics("runtime"), |_| panic!("not applied"));
        assert!(matches!(untouched, Err(KeyStoreError::Exists { .. })));
        assert!(subs.get("partner").is_some());
        // The runtime subscription survives a reload that drops the static one.
        subs.replace_static(Vec::new(), |_| ()).unwrap();
        let names: Vec<String> = subs.list().into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["runtime".to_owned()]);
    }
}
