use std::fs;

use http::{HeaderMap, HeaderValue, StatusCode};

use super::*;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rampart-keys-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

const NO_PRODUCTS: &[&str] = &[];

#[test]
fn created_keys_are_random_hex_and_both_work() {
    let mut store = KeyStore::in_memory();
    let (sub, keys) = store.create("alice", Scope::AllApis).unwrap();
    assert_eq!(sub.state, SubscriptionState::Active);
    assert_eq!(keys.primary.expose().len(), 64);
    assert!(keys.primary.expose().chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(keys.primary, keys.secondary);
    for key in [&keys.primary, &keys.secondary] {
        let found = store
            .check(Some(key.expose().as_bytes()), "orders", NO_PRODUCTS)
            .unwrap();
        assert_eq!(found.name, "alice");
    }
    // The store keeps hashes only.
    assert_eq!(sub.primary, KeyHash::of(keys.primary.expose().as_bytes()));
    assert!(!format!("{keys:?}").contains(keys.primary.expose()));
}

#[test]
fn missing_unknown_and_inactive_keys_are_rejected() {
    let mut store = KeyStore::in_memory();
    let (_, keys) = store.create("alice", Scope::AllApis).unwrap();
    let key = keys.primary.expose().as_bytes();
    assert_eq!(
        store.check(None, "orders", NO_PRODUCTS).unwrap_err(),
        KeyRejection::Missing
    );
    assert_eq!(
        store
            .check(Some(b"nope"), "orders", NO_PRODUCTS)
            .unwrap_err(),
        KeyRejection::Unknown
    );
    store.suspend("alice").unwrap();
    assert_eq!(
        store.check(Some(key), "orders", NO_PRODUCTS).unwrap_err(),
        KeyRejection::NotActive {
            state: SubscriptionState::Suspended
        }
    );
    store.activate("alice").unwrap();
    assert!(store.check(Some(key), "orders", NO_PRODUCTS).is_ok());
    store.revoke("alice").unwrap();
    assert_eq!(
        store.check(Some(key), "orders", NO_PRODUCTS).unwrap_err(),
        KeyRejection::NotActive {
            state: SubscriptionState::Cancelled
        }
    );
    // Cancelled is final.
    assert!(matches!(
        store.activate("alice"),
        Err(KeyStoreError::Cancelled { .. })
    ));
}

#[test]
fn scopes_limit_which_apis_a_key_opens() {
    let mut store = KeyStore::in_memory();
    let (_, product) = store
        .create("gold-user", Scope::Product("gold".into()))
        .unwrap();
    let (_, api) = store
        .create("orders-only", Scope::Api("orders".into()))
        .unwrap();
    let p = product.primary.expose().as_bytes();
    let a = api.secondary.expose().as_bytes();
    assert!(store.check(Some(p), "orders", &["silver", "gold"]).is_ok());
    assert_eq!(
        store.check(Some(p), "orders", &["silver"]).unwrap_err(),
        KeyRejection::OutOfScope
    );
    assert!(store.check(Some(a), "orders", NO_PRODUCTS).is_ok());
    assert_eq!(
        store.check(Some(a), "billing", &["gold"]).unwrap_err(),
        KeyRejection::OutOfScope
    );
}

#[test]
fn a_scope_names_what_is_missing_from_the_configuration() {
    let (apis, products) = (["orders", "billing"], ["gold"]);
    assert_eq!(Scope::AllApis.missing(&apis, &products), None);
    assert_eq!(Scope::Api("orders".into()).missing(&apis, &products), None);
    assert_eq!(
        Scope::Api("keyed".into()).missing(&apis, &products),
        Some("API")
    );
    assert_eq!(
        Scope::Product("gold".into()).missing(&apis, &products),
        None
    );
    assert_eq!(
        Scope::Product("silver".into()).missing(&apis, &products),
        Some("product")
    );
    // No API is named "gold": a product's name is not an API's.
    assert_eq!(
        Scope::Api("gold".into()).missing(&apis, &products),
        Some("API")
    );
    assert_eq!(Scope::Api("keyed".into()).to_string(), "api:keyed");
    assert_eq!(Scope::Product("gold".into()).to_string(), "product:gold");
    assert_eq!(Scope::AllApis.to_string(), "all");
}

#[test]
fn rotation_replaces_one_key_only() {
    let mut store = KeyStore::in_memory();
    let (_, keys) = store.create("alice", Scope::AllApis).unwrap();
    let new_primary = store.rotate("alice", KeySlot::Primary).unwrap();
    assert!(
        store
            .check(Some(keys.primary.expose().as_bytes()), "x", NO_PRODUCTS)
            .is_err()
    );
    assert!(
        store
            .check(Some(new_primary.expose().as_bytes()), "x", NO_PRODUCTS)
            .is_ok()
    );
    assert!(
        store
            .check(Some(keys.secondary.expose().as_bytes()), "x", NO_PRODUCTS)
            .is_ok()
    );
}

#[test]
fn names_are_unique_and_validated() {
    let mut store = KeyStore::in_memory();
    store.create("alice", Scope::AllApis).unwrap();
    assert!(matches!(
        store.create("alice", Scope::AllApis),
        Err(KeyStoreError::Exists { .. })
    ));
    assert!(matches!(
        store.create("", Scope::AllApis),
        Err(KeyStoreError::InvalidName { .. })
    ));
    assert!(matches!(
        store.create("a b", Scope::AllApis),
        Err(KeyStoreError::InvalidName { .. })
    ));
    assert!(matches!(
        store.suspend("bob"),
        Err(KeyStoreError::NotFound { .. })
    ));
}

#[test]
fn store_survives_reopen_and_holds_no_plain_keys() {
    let dir = temp_dir("reopen");
    let (alice_key, bob_key) = {
        let mut store = KeyStore::open(&dir).unwrap();
        let (_, a) = store.create("alice", Scope::Api("orders".into())).unwrap();
        let (_, b) = store.create("bob", Scope::AllApis).unwrap();
        store.suspend("bob").unwrap();
        (a.primary, b.primary)
    };
    let text = fs::read_to_string(dir.join(STORE_FILE)).unwrap();
    assert!(!text.contains(alice_key.expose()));
    assert!(text.contains(&alice_key.hash().to_hex()));

    let store = KeyStore::open(&dir).unwrap();
    assert_eq!(store.list().count(), 2);
    assert!(
        store
            .check(Some(alice_key.expose().as_bytes()), "orders", NO_PRODUCTS)
            .is_ok()
    );
    assert_eq!(
        store
            .check(Some(bob_key.expose().as_bytes()), "orders", NO_PRODUCTS)
            .unwrap_err(),
        KeyRejection::NotActive {
            state: SubscriptionState::Suspended
        }
    );
    // No temp file left behind.
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(STORE_FILE)]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_store_is_an_error_not_an_empty_store() {
    let dir = temp_dir("corrupt");
    fs::write(
        dir.join(STORE_FILE),
        b"{ \"version\": 1, \"subscriptions\": [",
    )
    .unwrap();
    assert!(matches!(
        KeyStore::open(&dir),
        Err(KeyStoreError::Corrupt { .. })
    ));
    fs::write(
        dir.join(STORE_FILE),
        b"{ \"version\": 0, \"subscriptions\": [] }",
    )
    .unwrap();
    assert!(matches!(
        KeyStore::open(&dir),
        Err(KeyStoreError::Corrupt { .. })
    ));
    fs::remove_dir_all(&dir).unwrap();
}

/// A store a newer rampartd wrote (after a downgrade) says so, even when its
/// subscriptions have fields this version does not know; before, it was
/// "corrupt: unsupported format version 2".
#[test]
fn a_store_of_a_newer_format_says_so() {
    let dir = temp_dir("newer");
    fs::write(
        dir.join(STORE_FILE),
        b"{ \"version\": 2, \"subscriptions\": [{\"future\": 1}] }",
    )
    .unwrap();
    let err = KeyStore::open(&dir).unwrap_err();
    assert!(matches!(err, KeyStoreError::NewerFormat { version: 2, .. }));
    let text = err.to_string();
    assert!(
        text.contains("was written by a newer rampartd (format 2; this one reads format 1): upgrade rampartd, or restore a backup of the state directory"),
        "{text}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn failed_write_changes_nothing() {
    let dir = temp_dir("readonly");
    let mut store = KeyStore::open(&dir.join("missing-subdir")).unwrap();
    assert!(matches!(
        store.create("alice", Scope::AllApis),
        Err(KeyStoreError::Write { .. })
    ));
    assert_eq!(store.list().count(), 0);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn static_subscriptions_from_config_use_hashes_and_are_read_only() {
    let mut store = KeyStore::in_memory();
    let hash = KeyHash::from_hex(&hex::encode(Sha256::digest(b"static-key-1"))).unwrap();
    let other = KeyHash::of(b"static-key-2");
    store
        .set_static(vec![StaticSubscription {
            name: "partner".into(),
            scope: Scope::AllApis,
            state: SubscriptionState::Active,
            primary: hash,
            secondary: other,
        }])
        .unwrap();
    let sub = store
        .check(Some(b"static-key-1"), "x", NO_PRODUCTS)
        .unwrap();
    assert_eq!(sub.origin, Origin::Config);
    assert!(matches!(
        store.suspend("partner"),
        Err(KeyStoreError::FromConfig { .. })
    ));
    assert!(KeyHash::from_hex("abc").is_err());
    // Reload without it: gone.
    store.set_static(Vec::new()).unwrap();
    assert!(
        store
            .check(Some(b"static-key-1"), "x", NO_PRODUCTS)
            .is_err()
    );
    // A hash used twice is refused.
    let dup = StaticSubscription {
        name: "dup".into(),
        scope: Scope::AllApis,
        state: SubscriptionState::Active,
        primary: hash,
        secondary: hash,
    };
    assert!(matches!(
        store.set_static(vec![dup]),
        Err(KeyStoreError::DuplicateKey { .. })
    ));
}

#[test]
fn static_subscriptions_are_not_written_to_the_store() {
    let dir = temp_dir("static");
    let mut store = KeyStore::open(&dir).unwrap();
    store
        .set_static(vec![StaticSubscription {
            name: "partner".into(),
            scope: Scope::AllApis,
            state: SubscriptionState::Active,
            primary: KeyHash::of(b"p"),
            secondary: KeyHash::of(b"s"),
        }])
        .unwrap();
    store.create("alice", Scope::AllApis).unwrap();
    let reopened = KeyStore::open(&dir).unwrap();
    let names: Vec<_> = reopened.list().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["alice"]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rejections_carry_apim_messages_and_challenge() {
    let missing = KeyRejection::Missing.rejection("api.example.com", DEFAULT_HEADER);
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.reason, "SubscriptionKeyNotFound");
    assert_eq!(
        missing.body(),
        "{ \"statusCode\": 401, \"message\": \"Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API.\" }"
    );
    assert_eq!(missing.body().len(), 152);
    assert_eq!(
        missing.headers["www-authenticate"],
        "AzureApiManagementKey realm=\"https://api.example.com/\",name=\"Ocp-Apim-Subscription-Key\",type=\"header\""
    );
    for r in [
        KeyRejection::Unknown,
        KeyRejection::OutOfScope,
        KeyRejection::NotActive {
            state: SubscriptionState::Suspended,
        },
    ] {
        let rej = r.rejection("h", DEFAULT_HEADER);
        assert_eq!(rej.status, StatusCode::UNAUTHORIZED);
        assert_eq!(rej.reason, "SubscriptionKeyInvalid");
        assert_eq!(
            rej.message,
            "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription."
        );
        assert!(rej.headers.contains_key("www-authenticate"));
    }
    // A hostile host cannot break the quoted realm.
    let odd = KeyRejection::Missing.rejection("evil\",x=\"y", DEFAULT_HEADER);
    assert_eq!(
        odd.headers["www-authenticate"],
        "AzureApiManagementKey realm=\"https://evilxy/\",name=\"Ocp-Apim-Subscription-Key\",type=\"header\""
    );
}

#[test]
fn key_is_taken_from_header_first_then_query() {
    let mut headers = HeaderMap::new();
    let q = Some("a=1&subscription-key=from%2Dquery&b=2");
    let k = extract_key(&headers, q, DEFAULT_HEADER, DEFAULT_QUERY_PARAM).unwrap();
    assert_eq!(&*k.value, b"from-query");
    assert_eq!(k.location, KeyLocation::Query);
    headers.insert(DEFAULT_HEADER, HeaderValue::from_static("from-header"));
    let k = extract_key(&headers, q, DEFAULT_HEADER, DEFAULT_QUERY_PARAM).unwrap();
    assert_eq!(&*k.value, b"from-header");
    assert_eq!(k.location, KeyLocation::Header);
    assert!(!format!("{k:?}").contains("from-header"));
    // Header names are case-insensitive; custom names work.
    let mut custom = HeaderMap::new();
    custom.insert("x-api-key", HeaderValue::from_static("k"));
    assert!(extract_key(&custom, None, "X-Api-Key", "key").is_some());
    assert!(extract_key(&custom, Some("subscription-key=z"), "X-Other", "key").is_none());
    // Empty values count as absent.
    let mut empty = HeaderMap::new();
    empty.insert(DEFAULT_HEADER, HeaderValue::from_static(""));
    let k = extract_key(
        &empty,
        Some("subscription-key="),
        DEFAULT_HEADER,
        DEFAULT_QUERY_PARAM,
    );
    assert!(k.is_none());
    // A configured name that is not a valid header name finds nothing (no panic).
    assert!(extract_key(&headers, None, "bad name", DEFAULT_QUERY_PARAM).is_none());
    assert_eq!(
        strip_key(&mut empty, Some("a=1"), "bad name", "k").as_deref(),
        Some("a=1")
    );
}

#[test]
fn key_is_stripped_from_header_and_query() {
    let mut headers = HeaderMap::new();
    headers.insert(DEFAULT_HEADER, HeaderValue::from_static("k"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    let q = strip_key(
        &mut headers,
        Some("a=1&subscription-key=k&b=%20x&subscription%2Dkey=k2"),
        DEFAULT_HEADER,
        DEFAULT_QUERY_PARAM,
    );
    assert_eq!(q.as_deref(), Some("a=1&b=%20x"));
    assert!(!headers.contains_key(DEFAULT_HEADER));
    assert!(headers.contains_key("accept"));
    let q = strip_key(
        &mut headers,
        Some("subscription-key=k"),
        DEFAULT_HEADER,
        DEFAULT_QUERY_PARAM,
    );
    assert_eq!(q, None);
    assert_eq!(
        strip_key(&mut headers, None, DEFAULT_HEADER, DEFAULT_QUERY_PARAM),
        None
    );
}

#[test]
fn a_key_is_carried_exactly_where_extract_key_finds_one() {
    let mut with_header = HeaderMap::new();
    with_header.insert(DEFAULT_HEADER, HeaderValue::from_static("k"));
    let mut empty_header = HeaderMap::new();
    empty_header.insert(DEFAULT_HEADER, HeaderValue::from_static(""));
    let none = HeaderMap::new();
    let queries = [
        None,
        Some(""),
        Some("a=1&b=2"),
        Some("q=a+b&c=%20"),
        Some("subscription-key=k"),
        Some("a=1&subscription-key=k&b=2"),
        Some("subscription-key="),
        Some("subscription-key"),
        Some("subscription-key=&subscription-key=k"),
        Some("subscription%2Dkey=k"),
        Some("subscription%2dkey=k"),
        Some("%73ubscription-key=k"),
        Some("subscription-key%3Dk"),
        Some("Subscription-Key=k"),
        Some("subscription-keyx=k"),
        Some("subscription-ke=k"),
        Some("subscription-key%=k"),
        Some("&&subscription-key=k&&"),
        Some("subscription+key=k"),
    ];
    for headers in [&with_header, &empty_header, &none] {
        for query in queries {
            let expected =
                extract_key(headers, query, DEFAULT_HEADER, DEFAULT_QUERY_PARAM).is_some();
            assert_eq!(
                carries_key(headers, query, DEFAULT_HEADER, DEFAULT_QUERY_PARAM),
                expected,
                "{headers:?} {query:?}"
            );
        }
    }
    // Names with a space, a `%` and non-ASCII, decoded as extract_key decodes them.
    for (query, param) in [
        ("my+key=k", "my key"),
        ("my%20key=k", "my key"),
        ("a%25b=k", "a%b"),
        ("a%b=k", "a%b"),
        ("%C3%BC=k", "ü"),
    ] {
        assert!(
            extract_key(&none, Some(query), DEFAULT_HEADER, param).is_some(),
            "{query}"
        );
        assert!(
            carries_key(&none, Some(query), DEFAULT_HEADER, param),
            "{query}"
        );
    }
    assert!(!carries_key(&none, Some("a=1"), "bad name", "k"));
}
