//! Provider settings, key sets, verification against the attack catalogue
//! (reference/l7.md §7), rejections and the verified-token cache. Keys are generated
//! here (rcgen); tokens are assembled by hand so headers can be forged.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};

use super::der::{SpkiKey, parse_spki};
use super::*;

mod keys;
mod rejections;
mod verify;

const NOW: u64 = 1_700_000_000;
const ISS: &str = "https://idp.test/tenant";
const AUD: &str = "api://orders";

/// A generated key pair: the private key as PKCS#8 PEM, the public key as SPKI PEM.
struct TestKey {
    private_pem: String,
    public_pem: String,
    spki_der: Vec<u8>,
    cert_pem: String,
}

fn make_key(pair: rcgen::KeyPair) -> TestKey {
    let params = rcgen::CertificateParams::new(vec!["idp.test".to_owned()]).unwrap();
    let cert = params.self_signed(&pair).unwrap();
    TestKey {
        private_pem: pair.serialize_pem(),
        public_pem: pair.public_key_pem(),
        spki_der: rcgen::PublicKeyData::subject_public_key_info(&pair),
        cert_pem: cert.pem(),
    }
}

fn rsa_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        make_key(
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap(),
        )
    })
}

/// A second RSA key: the attacker's.
fn other_rsa_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        make_key(
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap(),
        )
    })
}

fn ec_key() -> TestKey {
    make_key(rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap())
}

fn ed_key() -> TestKey {
    make_key(rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap())
}

fn rsa_signer(key: &TestKey) -> EncodingKey {
    EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).unwrap()
}

/// `header.claims.signature` with any header, signed with `alg` by `key`.
fn sign(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn rs256(claims: &Value) -> String {
    sign(
        &json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}),
        claims,
        &rsa_signer(rsa_key()),
        Algorithm::RS256,
    )
}

/// Claims valid at [`NOW`] for the default provider.
fn good_claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": NOW + 600, "nbf": NOW - 10})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    if let Some(map) = claims.as_object_mut() {
        map.remove(key);
    }
    claims
}

fn settings(toml_text: &str) -> JwtProviderSettings {
    toml::from_str(toml_text).unwrap()
}

/// The RS256 provider with the test key inline (kid "k1"), plus `extra` TOML lines.
fn rsa_provider(extra: &str) -> JwtProvider {
    let text = format!(
        "name = \"corp\"\nalgorithms = [\"RS256\"]\nissuers = [\"{ISS}\"]\naudiences = [\"{AUD}\"]\n{extra}\n\
         [[keys]]\nkid = \"k1\"\npem = '''\n{}'''\n",
        rsa_key().public_pem
    );
    settings(&text).validate().unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers
}

fn verify(provider: &JwtProvider, token: &str) -> Result<VerifiedToken, JwtRejection> {
    provider.verify(&bearer(token), None, NOW)
}

/// An RSA JWK of the test key.
fn rsa_jwk(key: &TestKey, kid: &str) -> Value {
    let Some(SpkiKey::Rsa { n, e }) = parse_spki(&key.spki_der) else {
        panic!("not an RSA key");
    };
    json!({"kty": "RSA", "use": "sig", "kid": kid, "n": B64.encode(n), "e": B64.encode(e)})
}

/// A provider fetching from a JWKS URL, never loaded.
fn remote_provider(extra: &str) -> JwtProvider {
    settings(&format!(
        "name = \"remote\"\nalgorithms = [\"RS256\"]\njwks_url = \"https://idp.test/keys\"\n\
         issuers = [\"{ISS}\"]\naudiences = [\"{AUD}\"]\n{extra}"
    ))
    .validate()
    .unwrap()
}

/// DER of an SPKI with an RSA modulus of `bits` bits (not a usable key: only its size
/// matters to the check).
fn rsa_spki_der(bits: usize) -> Vec<u8> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend([0x81, len as u8]);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(content);
        out
    }
    let mut n = vec![0x00, 0xc0];
    n.resize(bits / 8 + 1, 0x5a);
    let rsa = tlv(0x30, &[tlv(0x02, &n), tlv(0x02, &[1, 0, 1])].concat());
    let alg = tlv(
        0x30,
        &[
            tlv(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            ),
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    tlv(
        0x30,
        &[alg, tlv(0x03, &[&[0u8][..], &rsa].concat())].concat(),
    )
}

fn pem_of(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rampart-jwt-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
