//! What the client gets, where the token is looked for, keys never loaded, the cache.

use super::*;

fn www_authenticate(rejection: &Rejection) -> Option<&str> {
    rejection
        .headers
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
}

#[test]
fn missing_token_is_401_jwt_not_present_with_a_bare_bearer_challenge() {
    let provider = rsa_provider("");
    let e = provider.verify(&HeaderMap::new(), None, NOW).unwrap_err();
    assert_eq!(e, JwtRejection::NotPresent);
    let r = provider.rejection(&e);
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.body(),
        "{ \"statusCode\": 401, \"message\": \"JWT not present.\" }"
    );
    assert_eq!(r.reason, "TokenNotPresent");
    assert_eq!(www_authenticate(&r), Some("Bearer"));
}

#[test]
fn invalid_token_is_401_invalid_jwt_with_invalid_token_challenge() {
    let provider = rsa_provider("");
    let e = verify(
        &provider,
        &rs256(&with(good_claims(), "exp", json!(NOW - 5))),
    )
    .unwrap_err();
    let r = provider.rejection(&e);
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.message, "Invalid JWT.");
    assert_eq!(r.reason, "TokenExpired");
    assert_eq!(www_authenticate(&r), Some("Bearer error=\"invalid_token\""));
    // The log detail is precise and never holds the token.
    let token = rs256(&with(good_claims(), "exp", json!(NOW - 5)));
    assert!(e.to_string().contains("expired at"));
    assert!(!e.to_string().contains(&token[..20]));
}

#[test]
fn claim_messages_follow_apim() {
    let provider = rsa_provider(
        "required_claims = [{ name = \"scp\" }, { name = \"tid\" }, { name = \"sub\", values = [\"bob\"] }]",
    );
    let e = verify(&provider, &rs256(&good_claims())).unwrap_err();
    assert_eq!(
        provider.rejection(&e).message,
        "JWT token is missing the following claims: scp, tid. Access denied."
    );
    let claims = with(with(good_claims(), "scp", json!("a")), "tid", json!("t"));
    let e = verify(&provider, &rs256(&claims)).unwrap_err();
    assert_eq!(
        provider.rejection(&e).message,
        "Claim sub value of alice is not allowed. Access denied."
    );
}

#[test]
fn failure_status_and_message_are_configurable() {
    let provider =
        rsa_provider("failed_status = 403\nfailure_message = \"Access denied: sign in.\"");
    for e in [
        provider.verify(&HeaderMap::new(), None, NOW).unwrap_err(),
        verify(&provider, "a.b.c").unwrap_err(),
    ] {
        let r = provider.rejection(&e);
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.message, "Access denied: sign in.");
        assert_eq!(www_authenticate(&r), None, "a challenge goes with 401 only");
    }
}

#[test]
fn keys_never_loaded_answer_503_then_work_once_installed() {
    let provider = remote_provider("");
    assert!(!provider.has_keys());
    assert!(provider.client().is_some());
    let token = rs256(&good_claims());
    let e = verify(&provider, &token).unwrap_err();
    assert_eq!(e, JwtRejection::KeysUnavailable);
    let r = provider.rejection(&e);
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.message, "Identity provider keys are not available.");
    assert_eq!(r.reason, "JwtKeysUnavailable");
    // A missing token is still "not present", keys or not.
    assert_eq!(
        provider.verify(&HeaderMap::new(), None, NOW).unwrap_err(),
        JwtRejection::NotPresent
    );

    let jwks = json!({"keys": [rsa_jwk(rsa_key(), "k1")]}).to_string();
    provider.install_keys(KeySet::from_jwks(jwks.as_bytes(), &[Algorithm::RS256]).unwrap());
    assert!(verify(&provider, &token).is_ok());
}

#[test]
fn discovered_issuer_is_required_when_none_is_configured() {
    let provider = settings(
        "name = \"oidc\"\nalgorithms = [\"RS256\"]\n\
         openid_config_url = \"https://idp.test/.well-known/openid-configuration\"\n",
    )
    .validate()
    .unwrap();
    let discovery = OidcDiscovery::parse(
        json!({"issuer": ISS, "jwks_uri": "https://idp.test/keys"})
            .to_string()
            .as_bytes(),
        &[],
    )
    .unwrap();
    let jwks = json!({"keys": [rsa_jwk(rsa_key(), "k1")]}).to_string();
    provider.install_discovered_keys(
        &discovery,
        KeySet::from_jwks(jwks.as_bytes(), &[Algorithm::RS256]).unwrap(),
    );
    let no_aud = without(good_claims(), "aud");
    assert!(verify(&provider, &rs256(&no_aud)).is_ok());
    let e = verify(
        &provider,
        &rs256(&with(no_aud, "iss", json!("https://evil.test"))),
    )
    .unwrap_err();
    assert_eq!(e.reason(), reason::ISSUER_NOT_ALLOWED);
    // Without audiences configured, aud is not checked.
    assert!(verify(&provider, &rs256(&good_claims())).is_ok());
}

#[test]
fn token_locations() {
    let token = rs256(&good_claims());
    let provider = rsa_provider("");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("bearer   {token}")).unwrap(),
    );
    assert!(
        provider.verify(&headers, None, NOW).is_ok(),
        "scheme is case-insensitive"
    );
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic dXNlcjpwYXNz"),
    );
    assert_eq!(
        provider.verify(&headers, None, NOW).unwrap_err(),
        JwtRejection::NotPresent
    );
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&token).unwrap(),
    );
    assert_eq!(
        provider.verify(&headers, None, NOW).unwrap_err(),
        JwtRejection::NotPresent,
        "scheme required"
    );
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers.append(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    assert!(matches!(
        provider.verify(&headers, None, NOW).unwrap_err(),
        JwtRejection::Malformed { .. }
    ));

    let custom = rsa_provider("token = { header = \"X-Token\" }");
    let mut headers = HeaderMap::new();
    headers.insert("x-token", HeaderValue::from_str(&token).unwrap());
    assert!(custom.verify(&headers, None, NOW).is_ok());
    assert_eq!(
        custom.verify(&bearer(&token), None, NOW).unwrap_err(),
        JwtRejection::NotPresent
    );

    let plain_auth = rsa_provider("token = { header = \"Authorization\" }");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&token).unwrap(),
    );
    assert!(plain_auth.verify(&headers, None, NOW).is_ok());
    assert!(plain_auth.verify(&bearer(&token), None, NOW).is_ok());

    let query = rsa_provider("token = { query = \"access_token\" }");
    let q = format!("a=1&access_token={token}&b=2");
    assert!(query.verify(&HeaderMap::new(), Some(&q), NOW).is_ok());
    assert_eq!(
        query
            .verify(&HeaderMap::new(), Some("a=1"), NOW)
            .unwrap_err(),
        JwtRejection::NotPresent
    );
    let twice = format!("access_token={token}&access_token=x");
    assert!(matches!(
        query
            .verify(&HeaderMap::new(), Some(&twice), NOW)
            .unwrap_err(),
        JwtRejection::Malformed { .. }
    ));

    let cookie = rsa_provider("token = { cookie = \"session\" }");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::COOKIE,
        HeaderValue::from_str(&format!("theme=dark; session={token}")).unwrap(),
    );
    assert!(cookie.verify(&headers, None, NOW).is_ok());
    headers.insert(header::COOKIE, HeaderValue::from_static("theme=dark"));
    assert_eq!(
        cookie.verify(&headers, None, NOW).unwrap_err(),
        JwtRejection::NotPresent
    );
}

#[test]
fn a_repeated_token_is_verified_once_until_it_expires() {
    let provider = rsa_provider("");
    let token = rs256(&with(good_claims(), "exp", json!(NOW + 100)));
    assert!(verify(&provider, &token).is_ok());
    let checks = provider.signature_checks();
    assert_eq!(checks, 1);
    for _ in 0..10 {
        let hit = verify(&provider, &token).unwrap();
        assert_eq!(hit.claim("sub"), Some(&json!("alice")));
    }
    assert_eq!(
        provider.signature_checks(),
        checks,
        "cache hits skip the signature"
    );

    // At exp the entry is dropped and the full path refuses the token.
    let e = provider
        .verify(&bearer(&token), None, NOW + 100)
        .unwrap_err();
    assert_eq!(e.reason(), reason::EXPIRED);
    assert_eq!(provider.signature_checks(), checks + 1);

    // Refused tokens are never cached.
    let bad = rs256(&with(good_claims(), "iss", json!("x")));
    let _ = verify(&provider, &bad);
    let _ = verify(&provider, &bad);
    assert_eq!(provider.signature_checks(), checks + 3);
}

#[test]
fn installing_keys_empties_the_cache() {
    let provider = remote_provider("");
    let jwks = json!({"keys": [rsa_jwk(rsa_key(), "k1")]}).to_string();
    provider.install_keys(KeySet::from_jwks(jwks.as_bytes(), &[Algorithm::RS256]).unwrap());
    let token = rs256(&good_claims());
    assert!(verify(&provider, &token).is_ok());
    // The IdP withdraws k1: its tokens stop verifying at once.
    let rotated = json!({"keys": [rsa_jwk(other_rsa_key(), "k2")]}).to_string();
    provider.install_keys(KeySet::from_jwks(rotated.as_bytes(), &[Algorithm::RS256]).unwrap());
    assert_eq!(
        verify(&provider, &token).unwrap_err().reason(),
        reason::SIGNATURE_KEY_NOT_FOUND
    );
}

#[test]
fn a_provider_is_shared_between_connection_tasks() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<JwtProvider>();
    shared::<VerifiedToken>();
}

#[test]
fn without_the_cache_every_request_checks_the_signature() {
    let provider = rsa_provider("cache_tokens = false");
    let token = rs256(&with(good_claims(), "exp", json!(NOW + 100)));
    for n in 1..=5 {
        assert!(verify(&provider, &token).is_ok());
        assert_eq!(provider.signature_checks(), n);
    }
}
