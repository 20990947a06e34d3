//! Verification: the good paths and the attack catalogue of reference/l7.md §7.

use super::*;

fn rejected(provider: &JwtProvider, token: &str) -> JwtRejection {
    match verify(provider, token) {
        Ok(_) => panic!("token accepted"),
        Err(e) => e,
    }
}

#[test]
fn a_good_token_verifies_and_exposes_its_claims() {
    let provider = rsa_provider("");
    let token = verify(&provider, &rs256(&good_claims())).unwrap();
    assert_eq!(token.claim("sub"), Some(&json!("alice")));
    assert_eq!(token.exp(), NOW + 600);
    assert_eq!(token.claims().len(), 5);
}

#[test]
fn every_asymmetric_family_verifies_with_pem_and_certificate_keys() {
    let ec = ec_key();
    let ed = ed_key();
    let cases = [
        (
            "ES256",
            &ec,
            EncodingKey::from_ec_pem(ec.private_pem.as_bytes()).unwrap(),
            Algorithm::ES256,
        ),
        (
            "EdDSA",
            &ed,
            EncodingKey::from_ed_pem(ed.private_pem.as_bytes()).unwrap(),
            Algorithm::EdDSA,
        ),
        ("PS256", rsa_key(), rsa_signer(rsa_key()), Algorithm::PS256),
    ];
    for (name, key, signer, alg) in cases {
        for pem in [&key.public_pem, &key.cert_pem] {
            let provider = settings(&format!(
                "name = \"x\"\nalgorithms = [\"{name}\"]\n[[keys]]\npem = '''\n{pem}'''\n"
            ))
            .validate()
            .unwrap();
            let token = sign(&json!({"alg": name}), &good_claims(), &signer, alg);
            assert!(verify(&provider, &token).is_ok(), "{name}");
        }
    }
}

#[test]
fn hmac_provider_verifies_hs256() {
    let secret = [42u8; 32];
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    let provider = settings(&format!(
        "name = \"x\"\nalgorithms = [\"HS256\"]\nkeys = [{{ hmac_secret_base64 = \"{b64}\" }}]\n"
    ))
    .validate()
    .unwrap();
    let signer = EncodingKey::from_secret(&secret).unwrap();
    let token = sign(
        &json!({"alg": "HS256"}),
        &good_claims(),
        &signer,
        Algorithm::HS256,
    );
    assert!(verify(&provider, &token).is_ok());
    // An RS256 token never reaches the HMAC key.
    assert!(matches!(
        rejected(&provider, &rs256(&good_claims())),
        JwtRejection::AlgorithmNotAllowed { .. }
    ));
}

#[test]
fn alg_none_is_refused() {
    let provider = rsa_provider("");
    for alg in ["none", "None", "NONE"] {
        let token = format!(
            "{}.{}.",
            B64.encode(json!({"alg": alg}).to_string()),
            B64.encode(good_claims().to_string())
        );
        assert!(matches!(
            rejected(&provider, &token),
            JwtRejection::Malformed { .. }
        ));
        // Even with a non-empty "signature".
        let token = format!("{token}AAAA");
        assert!(verify(&provider, &token).is_err());
    }
}

#[test]
fn key_confusion_hs256_signed_with_the_public_key_is_refused() {
    let provider = rsa_provider("");
    for secret in [
        rsa_key().public_pem.as_bytes(),
        rsa_key().spki_der.as_slice(),
    ] {
        let signer = EncodingKey::from_secret(secret).unwrap();
        let token = sign(
            &json!({"alg": "HS256", "kid": "k1"}),
            &good_claims(),
            &signer,
            Algorithm::HS256,
        );
        let e = rejected(&provider, &token);
        assert!(
            matches!(e, JwtRejection::AlgorithmNotAllowed { .. }),
            "{e:?}"
        );
        assert_eq!(e.reason(), reason::JWT_INVALID);
    }
}

#[test]
fn algorithms_outside_the_pinned_list_are_refused() {
    let provider = rsa_provider("");
    let token = sign(
        &json!({"alg": "RS512", "kid": "k1"}),
        &good_claims(),
        &rsa_signer(rsa_key()),
        Algorithm::RS512,
    );
    assert!(matches!(
        rejected(&provider, &token),
        JwtRejection::AlgorithmNotAllowed { .. }
    ));
    // A token claiming RS256 but signed with PS256 fails the signature.
    let token = sign(
        &json!({"alg": "RS256", "kid": "k1"}),
        &good_claims(),
        &rsa_signer(rsa_key()),
        Algorithm::PS256,
    );
    assert!(matches!(
        rejected(&provider, &token),
        JwtRejection::SignatureInvalid { .. }
    ));
}

#[test]
fn a_tampered_or_foreign_signature_is_refused() {
    let provider = rsa_provider("");
    let token = sign(
        &json!({"alg": "RS256", "kid": "k1"}),
        &good_claims(),
        &rsa_signer(other_rsa_key()),
        Algorithm::RS256,
    );
    let e = rejected(&provider, &token);
    assert_eq!(e, JwtRejection::SignatureInvalid { tried: 1 });
    assert_eq!(e.reason(), reason::SIGNATURE_INVALID);
    // Claims swapped after signing.
    let good = rs256(&good_claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = B64.encode(with(good_claims(), "sub", json!("root")).to_string());
    parts[1] = &forged;
    assert!(matches!(
        rejected(&provider, &parts.join(".")),
        JwtRejection::SignatureInvalid { .. }
    ));
}

#[test]
fn exp_is_required_numeric_and_checked() {
    let provider = rsa_provider("");
    let e = rejected(
        &provider,
        &rs256(&with(good_claims(), "exp", json!(NOW - 1))),
    );
    assert_eq!(e.reason(), reason::EXPIRED);
    let e = rejected(&provider, &rs256(&without(good_claims(), "exp")));
    assert_eq!(e, JwtRejection::BadTimeClaim { claim: "exp" });
    // CVE-2026-25537: a string exp must not bypass the check.
    let e = rejected(
        &provider,
        &rs256(&with(good_claims(), "exp", json!("99999999999"))),
    );
    assert_eq!(e, JwtRejection::BadTimeClaim { claim: "exp" });
    let e = rejected(&provider, &rs256(&with(good_claims(), "nbf", json!("0"))));
    assert_eq!(e, JwtRejection::BadTimeClaim { claim: "nbf" });
}

#[test]
fn nbf_in_the_future_is_refused() {
    let provider = rsa_provider("");
    let e = rejected(
        &provider,
        &rs256(&with(good_claims(), "nbf", json!(NOW + 1))),
    );
    assert_eq!(e.reason(), reason::NOT_YET_VALID);
    assert!(verify(&provider, &rs256(&with(good_claims(), "nbf", json!(NOW)))).is_ok());
}

#[test]
fn clock_skew_boundaries() {
    // Skew 0 (APIM): valid strictly before exp.
    let strict = rsa_provider("");
    assert!(matches!(
        rejected(&strict, &rs256(&with(good_claims(), "exp", json!(NOW)))),
        JwtRejection::Expired { .. }
    ));
    assert!(verify(&strict, &rs256(&with(good_claims(), "exp", json!(NOW + 1)))).is_ok());
    // Skew 60: exp up to 59 s in the past, nbf up to 60 s in the future.
    let lenient = rsa_provider("clock_skew_secs = 60");
    assert!(
        verify(
            &lenient,
            &rs256(&with(good_claims(), "exp", json!(NOW - 59)))
        )
        .is_ok()
    );
    assert!(
        verify(
            &lenient,
            &rs256(&with(good_claims(), "exp", json!(NOW - 60)))
        )
        .is_err()
    );
    assert!(
        verify(
            &lenient,
            &rs256(&with(good_claims(), "nbf", json!(NOW + 60)))
        )
        .is_ok()
    );
    assert!(
        verify(
            &lenient,
            &rs256(&with(good_claims(), "nbf", json!(NOW + 61)))
        )
        .is_err()
    );
}

#[test]
fn issuer_and_audience_are_any_of_and_required_when_configured() {
    let provider = rsa_provider("");
    let e = rejected(
        &provider,
        &rs256(&with(good_claims(), "iss", json!("https://evil.test"))),
    );
    assert_eq!(e.reason(), reason::ISSUER_NOT_ALLOWED);
    let e = rejected(&provider, &rs256(&without(good_claims(), "iss")));
    assert_eq!(e.reason(), reason::ISSUER_NOT_ALLOWED);
    let e = rejected(
        &provider,
        &rs256(&with(good_claims(), "aud", json!("api://other"))),
    );
    assert_eq!(e.reason(), reason::AUDIENCE_NOT_ALLOWED);
    let e = rejected(&provider, &rs256(&without(good_claims(), "aud")));
    assert_eq!(e.reason(), reason::AUDIENCE_NOT_ALLOWED);
    let array = with(good_claims(), "aud", json!(["api://other", AUD]));
    assert!(verify(&provider, &rs256(&array)).is_ok());
    let wrong_array = with(good_claims(), "aud", json!(["api://a", "api://b"]));
    assert!(verify(&provider, &rs256(&wrong_array)).is_err());
    // A type-confused iss (number) is refused.
    assert!(verify(&provider, &rs256(&with(good_claims(), "iss", json!(1)))).is_err());
    // So is an array, even one holding the allowed issuer (RFC 7519 §4.1.1: one
    // StringOrURI; jsonwebtoken alone takes it).
    let e = rejected(
        &provider,
        &rs256(&with(
            good_claims(),
            "iss",
            json!([ISS, "https://evil.test"]),
        )),
    );
    assert!(matches!(e, JwtRejection::IssuerNotAllowed), "{e:?}");
}

#[test]
fn unknown_kid_on_a_fetched_set_is_key_not_found_and_asks_one_refresh() {
    let provider = remote_provider("");
    let jwks = json!({"keys": [rsa_jwk(rsa_key(), "k1")]}).to_string();
    provider.install_keys(KeySet::from_jwks(jwks.as_bytes(), &[Algorithm::RS256]).unwrap());
    assert!(verify(&provider, &rs256(&good_claims())).is_ok());

    let token = sign(
        &json!({"alg": "RS256", "kid": "rotated"}),
        &good_claims(),
        &rsa_signer(rsa_key()),
        Algorithm::RS256,
    );
    let e = rejected(&provider, &token);
    assert_eq!(e.reason(), reason::SIGNATURE_KEY_NOT_FOUND);
    assert!(
        provider.planner().needs_refresh(NOW),
        "the unknown kid asked for a fetch"
    );
    let ticket = provider.planner().try_begin(NOW).unwrap();
    provider.planner().finish(ticket, NOW, true);
    // A second unknown kid within 5 minutes does not ask again.
    let _ = verify(&provider, &token);
    assert!(!provider.planner().needs_refresh(NOW + 1));
    // A kid-less token tries every key.
    let token = sign(
        &json!({"alg": "RS256"}),
        &good_claims(),
        &rsa_signer(rsa_key()),
        Algorithm::RS256,
    );
    assert!(verify(&provider, &token).is_ok());
}

#[test]
fn unknown_kid_with_static_keys_tries_every_key_as_apim_does() {
    let provider = rsa_provider("");
    let token = sign(
        &json!({"alg": "RS256", "kid": "whatever"}),
        &good_claims(),
        &rsa_signer(rsa_key()),
        Algorithm::RS256,
    );
    assert!(verify(&provider, &token).is_ok());
    let long = "k".repeat(300);
    let token = sign(
        &json!({"alg": "RS256", "kid": long}),
        &good_claims(),
        &rsa_signer(rsa_key()),
        Algorithm::RS256,
    );
    assert!(matches!(
        rejected(&provider, &token),
        JwtRejection::Malformed { .. }
    ));
}

#[test]
fn crit_header_is_refused() {
    let provider = rsa_provider("");
    let token = sign(
        &json!({"alg": "RS256", "kid": "k1", "crit": ["exp"], "exp": 1}),
        &good_claims(),
        &rsa_signer(rsa_key()),
        Algorithm::RS256,
    );
    assert_eq!(rejected(&provider, &token), JwtRejection::CriticalHeader);
}

#[test]
fn token_supplied_keys_are_never_used() {
    let provider = rsa_provider("");
    let attacker = other_rsa_key();
    let embedded = rsa_jwk(attacker, "k1");
    let x5c = base64::engine::general_purpose::STANDARD.encode(b"attacker certificate");
    for header in [
        json!({"alg": "RS256", "kid": "k1", "jwk": embedded}),
        json!({"alg": "RS256", "kid": "k1", "jku": "https://evil.test/jwks"}),
        json!({"alg": "RS256", "kid": "k1", "x5u": "https://evil.test/cert"}),
        json!({"alg": "RS256", "kid": "k1", "x5c": [x5c]}),
    ] {
        let forged = sign(
            &header,
            &good_claims(),
            &rsa_signer(attacker),
            Algorithm::RS256,
        );
        assert!(
            matches!(
                rejected(&provider, &forged),
                JwtRejection::SignatureInvalid { .. }
            ),
            "{header}"
        );
        // The same header on a token signed with the configured key is fine.
        let genuine = sign(
            &header,
            &good_claims(),
            &rsa_signer(rsa_key()),
            Algorithm::RS256,
        );
        assert!(verify(&provider, &genuine).is_ok(), "{header}");
    }
}

#[test]
fn oversized_tokens_are_refused_before_decoding() {
    let provider = rsa_provider("");
    let huge = "a".repeat(8_193);
    assert_eq!(
        rejected(&provider, &huge),
        JwtRejection::TooLarge {
            bytes: 8_193,
            limit: 8_192
        }
    );
    let small = rsa_provider("max_token_bytes = 256");
    assert!(matches!(
        rejected(&small, &rs256(&good_claims())),
        JwtRejection::TooLarge { .. }
    ));
}

#[test]
fn malformed_tokens_are_refused() {
    let provider = rsa_provider("");
    let claims = B64.encode(good_claims().to_string());
    for token in [
        "abc".to_owned(),
        "a.b".to_owned(),
        "a.b.c.d.e".to_owned(),
        "a..c".to_owned(),
        "a+b.c/d.e=f".to_owned(),
        format!("{}.{claims}.AAAA", B64.encode("not json")),
        format!(
            "{}.{claims}.AAAA",
            B64.encode("{\"alg\":\"RS256\",\"alg\":\"HS256\"}")
        ),
    ] {
        let e = rejected(&provider, &token);
        assert_eq!(e.reason(), reason::JWT_INVALID, "{token}: {e:?}");
    }
    // Claims that are not JSON behind a valid signature.
    let header = B64.encode(json!({"alg": "RS256"}).to_string());
    let message = format!("{header}.{}", B64.encode("[1,2"));
    let sig =
        jsonwebtoken::crypto::sign(message.as_bytes(), &rsa_signer(rsa_key()), Algorithm::RS256)
            .unwrap();
    assert!(matches!(
        rejected(&provider, &format!("{message}.{sig}")),
        JwtRejection::Malformed { .. }
    ));
}

#[test]
fn required_claims_all_any_and_separator() {
    let provider = rsa_provider(
        "required_claims = [\
           { name = \"scp\", values = [\"orders.read\", \"orders.write\"], match = \"any\", separator = \" \" },\
           { name = \"roles\", values = [\"Api.Call\", \"Api.Admin\"] },\
           { name = \"tid\" },\
         ]",
    );
    let claims = |scp: Value, roles: Value| {
        let c = with(good_claims(), "scp", scp);
        with(with(c, "roles", roles), "tid", json!("t1"))
    };
    let ok = claims(
        json!("profile orders.write"),
        json!(["Api.Admin", "Api.Call", "x"]),
    );
    assert!(verify(&provider, &rs256(&ok)).is_ok());

    let e = rejected(
        &provider,
        &rs256(&claims(json!("profile"), json!(["Api.Call", "Api.Admin"]))),
    );
    assert_eq!(
        e,
        JwtRejection::ClaimValueNotAllowed {
            name: "scp".into(),
            value: "profile".into()
        }
    );
    let e = rejected(
        &provider,
        &rs256(&claims(json!("orders.read"), json!(["Api.Call"]))),
    );
    assert!(matches!(e, JwtRejection::ClaimValueNotAllowed { ref name, .. } if name == "roles"));
    // Without the separator, a space-separated string is one value.
    let e = rejected(
        &provider,
        &rs256(&claims(json!("orders.read"), json!("Api.Call Api.Admin"))),
    );
    assert_eq!(e.reason(), reason::CLAIM_VALUE_NOT_ALLOWED);

    let e = rejected(&provider, &rs256(&good_claims()));
    assert_eq!(
        e,
        JwtRejection::ClaimsMissing {
            names: vec!["scp".into(), "roles".into(), "tid".into()]
        }
    );
    assert_eq!(e.reason(), reason::CLAIM_NOT_FOUND);
}

#[test]
fn claims_with_a_name_given_twice_are_refused() {
    let provider = rsa_provider("");
    // Signed by the provider's key: only the duplicate `roles` is wrong.
    let signed = |payload: &str| {
        let message = format!(
            "{}.{}",
            B64.encode(json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}).to_string()),
            B64.encode(payload)
        );
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &rsa_signer(rsa_key()),
            Algorithm::RS256,
        )
        .unwrap();
        format!("{message}.{signature}")
    };
    let claims = format!(
        r#""iss":"{ISS}","aud":"{AUD}","sub":"alice","exp":{},"nbf":{}"#,
        NOW + 600,
        NOW - 10
    );
    let once = signed(&format!(r#"{{{claims},"roles":["reader"]}}"#));
    assert!(verify(&provider, &once).is_ok());
    let twice = signed(&format!(
        r#"{{{claims},"roles":["reader"],"roles":["writer"]}}"#
    ));
    let e = rejected(&provider, &twice);
    assert_eq!(e.reason(), reason::JWT_INVALID, "{e:?}");
    // Also inside a claim's object.
    let nested = signed(&format!(r#"{{{claims},"ext":{{"a":1,"a":2}}}}"#));
    assert_eq!(rejected(&provider, &nested).reason(), reason::JWT_INVALID);
}
