//! Settings validation, static keys, JWKS and discovery documents.

use super::*;

/// Each error with its sources, as the configuration loader prints them.
fn errors_of(text: &str) -> Vec<String> {
    let Err(errors) = settings(text).validate() else {
        return Vec::new();
    };
    errors
        .iter()
        .map(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                text.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            text
        })
        .collect()
}

fn has(errors: &[String], needle: &str) -> bool {
    errors.iter().any(|e| e.contains(needle))
}

#[test]
fn minimal_provider_takes_documented_defaults() {
    let provider = rsa_provider("");
    assert_eq!(provider.name(), "corp");
    assert_eq!(provider.family(), KeyFamily::Rsa);
    assert_eq!(provider.origin(), &KeyOrigin::Static);
    assert!(provider.has_keys());
    let s = settings(&format!(
        "name = \"x\"\nalgorithms = [\"RS256\"]\n[[keys]]\npem = '''\n{}'''\n",
        rsa_key().public_pem
    ));
    assert_eq!(s.max_token_bytes, 8192);
    assert_eq!(s.clock_skew_secs, 0);
    assert_eq!(s.failed_status, 401);
    assert!(s.token.is_none(), "default: Authorization: Bearer");
}

#[test]
fn unknown_keys_are_refused_by_serde() {
    let text = "name = \"x\"\nalgorithms = [\"RS256\"]\njwks_url = \"https://a/k\"\nalgorithm = \"RS256\"\n";
    assert!(toml::from_str::<JwtProviderSettings>(text).is_err());
    let text = "name = \"x\"\nalgorithms = [\"RS256\"]\njwks_url = \"https://a/k\"\ntoken = { header = \"A\", prefix = \"x\" }\n";
    assert!(toml::from_str::<JwtProviderSettings>(text).is_err());
}

#[test]
fn every_error_is_reported_at_once() {
    let errors = errors_of(
        "name = \"\"\nalgorithms = [\"none\", \"RS256\", \"HS256\", \"XX999\"]\n\
         jwks_url = \"http://idp.test/keys\"\nclock_skew_secs = 301\nfailed_status = 200\n\
         max_token_bytes = 10\nfailure_message = \"\"\n\
         token = { header = \"X-Token\", scheme = \"Bearer\" }\n\
         required_claims = [{ name = \"\" }]\n",
    );
    for needle in [
        "name must not be empty",
        "\"none\" is never accepted",
        "mixed; a provider is pinned to one family",
        "\"XX999\" is not supported",
        "jwks_url: \"http://idp.test/keys\" is not an https URL",
        "clock_skew_secs: 301",
        "failed_status: 200",
        "max_token_bytes: 10",
        "failure_message",
        "scheme applies to header = \"Authorization\" only",
        "required_claims[0]: name must not be empty",
    ] {
        assert!(has(&errors, needle), "{needle:?} not in {errors:#?}");
    }
}

#[test]
fn exactly_one_key_source() {
    let errors = errors_of(
        "name = \"x\"\nalgorithms = [\"RS256\"]\njwks_url = \"https://a/k\"\n\
         openid_config_url = \"https://a/.well-known/openid-configuration\"\n",
    );
    assert!(has(
        &errors,
        "exactly one of openid_config_url, jwks_url and keys (2 set)"
    ));
    let errors = errors_of("name = \"x\"\nalgorithms = [\"RS256\"]\n");
    assert!(has(&errors, "(0 set)"));
}

#[test]
fn short_hmac_secret_is_refused() {
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
    let errors = errors_of(&format!(
        "name = \"x\"\nalgorithms = [\"HS256\"]\nkeys = [{{ hmac_secret_base64 = \"{short}\" }}]\n"
    ));
    assert!(has(&errors, "HMAC secret of 31 bytes"), "{errors:?}");
    let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let errors = errors_of(&format!(
        "name = \"x\"\nalgorithms = [\"HS256\"]\nkeys = [{{ hmac_secret_base64 = \"{good}\" }}]\n"
    ));
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn hmac_secret_file_is_read_and_never_shown() {
    let dir = temp_dir("hmac");
    let path = dir.join("secret.b64");
    let secret = base64::engine::general_purpose::STANDARD.encode([9u8; 48]);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    let s = settings(&format!(
        "name = \"x\"\nalgorithms = [\"HS512\"]\nkeys = [{{ hmac_secret_file = \"{}\" }}, {{ hmac_secret_base64 = \"{secret}\" }}]\n",
        path.display()
    ));
    assert!(!format!("{s:?}").contains(&secret));
    assert!(s.validate().is_ok());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hmac_keys_and_pem_keys_do_not_mix_and_hmac_is_never_fetched() {
    let secret = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
    let errors = errors_of(&format!(
        "name = \"x\"\nalgorithms = [\"RS256\"]\nkeys = [{{ hmac_secret_base64 = \"{secret}\" }}]\n"
    ));
    assert!(
        has(&errors, "an HMAC secret needs HS* algorithms"),
        "{errors:?}"
    );
    let errors = errors_of(&format!(
        "name = \"x\"\nalgorithms = [\"HS256\"]\n[[keys]]\npem = '''\n{}'''\n",
        rsa_key().public_pem
    ));
    assert!(
        has(&errors, "an HMAC secret needs HS* algorithms"),
        "{errors:?}"
    );
    let errors = errors_of("name = \"x\"\nalgorithms = [\"HS256\"]\njwks_url = \"https://a/k\"\n");
    assert!(has(&errors, "never from a fetched key set"), "{errors:?}");
}

#[test]
fn rsa_keys_under_2048_bits_are_refused() {
    let small = pem_of("PUBLIC KEY", &rsa_spki_der(1024));
    let errors = errors_of(&format!(
        "name = \"x\"\nalgorithms = [\"RS256\"]\n[[keys]]\npem = '''\n{small}'''\n"
    ));
    assert!(
        errors.iter().any(|e| e.starts_with("keys[0]")),
        "{errors:?}"
    );
    let Err(all) = settings(&format!(
        "name = \"x\"\nalgorithms = [\"RS256\"]\n[[keys]]\npem = '''\n{small}'''\n"
    ))
    .validate() else {
        panic!("accepted a 1024-bit key");
    };
    assert!(matches!(
        all[0],
        JwtConfigError::KeyNotUsable {
            source: KeyError::RsaSize { bits: 1024 },
            ..
        }
    ));
}

#[test]
fn pem_problems_are_reported() {
    let dir = temp_dir("pem");
    let missing = dir.join("missing.pem");
    let errors = errors_of(&format!(
        "name = \"x\"\nalgorithms = [\"RS256\"]\nkeys = [{{ pem_file = \"{}\" }}, {{ pem = \"garbage\" }}]\n",
        missing.display()
    ));
    assert!(has(&errors, "cannot be read"), "{errors:?}");
    assert!(
        has(&errors, "keys[1]: no PUBLIC KEY or CERTIFICATE"),
        "{errors:?}"
    );
    let errors = errors_of(&format!(
        "name = \"x\"\nalgorithms = [\"RS256\"]\n[[keys]]\npem = '''\n{}'''\n",
        rsa_key().private_pem
    ));
    assert!(has(&errors, "holds a private key"), "{errors:?}");
    let errors = errors_of(&format!(
        "name = \"x\"\nalgorithms = [\"ES256\"]\n[[keys]]\npem = '''\n{}'''\n",
        rsa_key().public_pem
    ));
    assert!(
        has(&errors, "does not belong to the provider's ECDSA"),
        "{errors:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn certificates_and_every_asymmetric_family_load() {
    for (alg, key) in [
        ("RS256", rsa_key()),
        ("ES256", &ec_key()),
        ("EdDSA", &ed_key()),
    ] {
        for pem in [&key.public_pem, &key.cert_pem] {
            let errors = errors_of(&format!(
                "name = \"x\"\nalgorithms = [\"{alg}\"]\n[[keys]]\npem = '''\n{pem}'''\n"
            ));
            assert!(errors.is_empty(), "{alg}: {errors:?}");
        }
    }
}

#[test]
fn ca_file_is_loaded_for_fetches_only() {
    let dir = temp_dir("ca");
    let path = dir.join("ca.pem");
    std::fs::write(&path, &rsa_key().cert_pem).unwrap();
    let ok = errors_of(&format!(
        "name = \"x\"\nalgorithms = [\"RS256\"]\njwks_url = \"https://idp.test/keys\"\nca_file = \"{}\"\n",
        path.display()
    ));
    assert!(ok.is_empty(), "{ok:?}");
    let errors = errors_of(&format!(
        "name = \"x\"\nalgorithms = [\"RS256\"]\nca_file = \"{}\"\n[[keys]]\npem = '''\n{}'''\n",
        path.display(),
        rsa_key().public_pem
    ));
    assert!(has(&errors, "ca_file is for fetched keys"), "{errors:?}");
    let errors = errors_of(&format!(
        "name = \"x\"\nalgorithms = [\"RS256\"]\njwks_url = \"https://a/k\"\nca_file = \"{}\"\n",
        dir.join("none.pem").display()
    ));
    assert!(has(&errors, "cannot be read"), "{errors:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn jwks_keeps_only_signature_keys_of_the_family() {
    let small = match parse_spki(&rsa_spki_der(1024)) {
        Some(SpkiKey::Rsa { n, e }) => {
            json!({"kty": "RSA", "kid": "small", "n": B64.encode(n), "e": B64.encode(e)})
        }
        other => panic!("{other:?}"),
    };
    let mut enc = rsa_jwk(rsa_key(), "enc");
    enc["use"] = json!("enc");
    let mut wrong_alg = rsa_jwk(rsa_key(), "rs512");
    wrong_alg["alg"] = json!("RS512");
    let mut no_use = rsa_jwk(other_rsa_key(), "no-use");
    no_use.as_object_mut().unwrap().remove("use");
    let doc = json!({"keys": [
        rsa_jwk(rsa_key(), "k1"),
        enc,
        small,
        wrong_alg,
        no_use,
        {"kty": "oct", "kid": "hs", "k": B64.encode([1u8; 32])},
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": B64.encode([1u8; 32]), "y": B64.encode([2u8; 32])},
        {"kty": "weird", "kid": "w"},
        "not an object",
    ]});
    let set = KeySet::from_jwks(doc.to_string().as_bytes(), &[Algorithm::RS256]).unwrap();
    assert_eq!(set.kids().collect::<Vec<_>>(), ["k1", "no-use"]);
    assert_eq!(set.skipped().len(), 7, "{:#?}", set.skipped());
}

#[test]
fn jwks_without_usable_keys_or_not_json_is_an_error() {
    let doc = json!({"keys": [{"kty": "oct", "k": "AAAA"}]});
    assert!(matches!(
        KeySet::from_jwks(doc.to_string().as_bytes(), &[Algorithm::RS256]),
        Err(KeySetError::NoUsableKey { skipped: 1, .. })
    ));
    assert!(matches!(
        KeySet::from_jwks(b"<html>", &[Algorithm::RS256]),
        Err(KeySetError::NotJwks { .. })
    ));
}

#[test]
fn jwks_ec_keys_are_bound_to_their_curve() {
    let key = ec_key();
    let Some(SpkiKey::EcP256(point)) = parse_spki(&key.spki_der) else {
        panic!("not P-256");
    };
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "e1", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])});
    let doc = json!({ "keys": [jwk] }).to_string();
    let set = KeySet::from_jwks(doc.as_bytes(), &[Algorithm::ES256, Algorithm::ES384]).unwrap();
    assert_eq!(set.keys[0].alg, Some(Algorithm::ES256));
    assert!(KeySet::from_jwks(doc.as_bytes(), &[Algorithm::ES384]).is_err());
}

#[test]
fn discovery_checks_issuer_and_https() {
    let doc = |issuer: &str, jwks: &str| json!({"issuer": issuer, "jwks_uri": jwks}).to_string();
    let ok = OidcDiscovery::parse(
        doc(ISS, "https://idp.test/keys").as_bytes(),
        &[ISS.to_owned()],
    )
    .unwrap();
    assert_eq!(ok.jwks_uri.as_str(), "https://idp.test/keys");
    assert!(matches!(
        OidcDiscovery::parse(
            doc("https://evil.test", "https://idp.test/keys").as_bytes(),
            &[ISS.to_owned()]
        ),
        Err(DiscoveryError::IssuerMismatch { .. })
    ));
    assert!(matches!(
        OidcDiscovery::parse(doc(ISS, "http://idp.test/keys").as_bytes(), &[]),
        Err(DiscoveryError::JwksUriNotHttps { .. })
    ));
    assert!(matches!(
        OidcDiscovery::parse(b"{}", &[]),
        Err(DiscoveryError::NotDiscovery { .. })
    ));
}
