//! Verification keys: algorithm families, key sets from a JWKS document or static
//! configuration, and the OIDC discovery document that points at the JWKS.

use std::fmt;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use url::Url;

use super::der::{SpkiKey, bit_length};

/// Smallest RSA modulus accepted, from configuration or a JWKS.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (aws-lc's verifiers refuse larger ones anyway).
pub const MAX_RSA_BITS: usize = 8192;
/// Most keys kept from one JWKS document; IdPs publish a handful.
pub const MAX_JWKS_KEYS: usize = 100;
/// Longest `kid` looked up; a longer one in a token is refused before any lookup.
pub const MAX_KID_BYTES: usize = 256;

/// The algorithm families a provider can be pinned to. RS* and PS* share RSA keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Hmac,
    Rsa,
    Ec,
    EdDsa,
}

impl KeyFamily {
    /// The family of a supported algorithm; `None` for algorithms this gateway does
    /// not know (jsonwebtoken's enum is non-exhaustive).
    pub fn of(alg: Algorithm) -> Option<Self> {
        Some(match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Self::Hmac,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Self::Rsa,
            Algorithm::ES256 | Algorithm::ES384 => Self::Ec,
            Algorithm::EdDSA => Self::EdDsa,
            _ => return None,
        })
    }
}

impl fmt::Display for KeyFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hmac => "HMAC (HS*)",
            Self::Rsa => "RSA (RS*/PS*)",
            Self::Ec => "ECDSA (ES*)",
            Self::EdDsa => "EdDSA",
        })
    }
}

/// One verification key. `Debug` never shows key material.
#[derive(Clone)]
pub struct VerificationKey {
    pub(crate) kid: Option<String>,
    /// The one algorithm this key may verify, when known (a JWK's `alg`, or an EC
    /// key's curve); `None` means any pinned algorithm of the family.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl VerificationKey {
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.alg.is_none_or(|own| own == alg)
    }
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why a key was not taken; static keys make these configuration errors, JWKS keys are
/// skipped (and logged) so that one odd key does not discard the whole set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key type {found} does not belong to the provider's {family} family")]
    WrongFamily { found: String, family: KeyFamily },
    #[error("RSA key of {bits} bits (at least {MIN_RSA_BITS}, at most {MAX_RSA_BITS})")]
    RsaSize { bits: usize },
    #[error("unsupported curve or key algorithm {what}")]
    Unsupported { what: String },
    #[error("key is not for signatures (use = {found})")]
    NotForSignatures { found: String },
    #[error("key algorithm {alg} is not among the provider's algorithms")]
    AlgorithmNotPinned { alg: String },
    #[error("key material is malformed: {detail}")]
    Malformed { detail: String },
}

/// The keys a provider verifies with: from static configuration, or a JWKS document.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub(crate) keys: Vec<VerificationKey>,
    /// Keys of the document that were not taken, with why (for the log).
    pub(crate) skipped: Vec<String>,
}

/// Why a whole JWKS document was refused (the provider keeps its last good set).
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("JWKS is not a JSON object with a \"keys\" array")]
    NotJwks {
        #[source]
        source: serde_json::Error,
    },
    #[error("JWKS has no usable key ({skipped} skipped: {reasons})")]
    NoUsableKey { skipped: usize, reasons: String },
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Keys in the set.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Why some keys of the document were left out, one line each.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The first few reasons keys were skipped, for a log line ("; "-separated,
    /// with how many more).
    pub fn skipped_summary(&self) -> String {
        const SHOWN: usize = 5;
        let mut summary = self
            .skipped
            .iter()
            .take(SHOWN)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("; ");
        if self.skipped.len() > SHOWN {
            summary.push_str(&format!("; and {} more", self.skipped.len() - SHOWN));
        }
        summary
    }

    /// The `kid`s of the set, in order (keys without one are left out).
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref())
    }

    pub(crate) fn from_keys(keys: Vec<VerificationKey>) -> Self {
        Self {
            keys,
            skipped: Vec::new(),
        }
    }

    /// Parses a JWKS document (RFC 7517 §5), keeping the keys that can verify one of
    /// `algorithms` (all of one family):
    ///
    /// * `use` must be `sig` or absent (many IdPs omit it); `key_ops`, when present,
    ///   must contain `verify`; a JWK `alg`, when present, must be a pinned algorithm;
    /// * `kty` must match the family (`RSA`, `EC` with P-256/P-384, `OKP` Ed25519);
    ///   symmetric `oct` keys are never taken from a JWKS (the key-confusion door);
    /// * RSA moduli of 2048 to 8192 bits.
    ///
    /// A document with no usable key is an error, so a broken IdP answer never replaces
    /// a working key set with an empty one.
    pub fn from_jwks(bytes: &[u8], algorithms: &[Algorithm]) -> Result<Self, KeySetError> {
        let doc: JwksDocument =
            serde_json::from_slice(bytes).map_err(|source| KeySetError::NotJwks { source })?;
        let mut set = Self::default();
        for (index, value) in doc.keys.into_iter().enumerate() {
            if set.keys.len() >= MAX_JWKS_KEYS {
                set.skipped
                    .push(format!("key #{index}: more than {MAX_JWKS_KEYS} keys"));
                continue;
            }
            let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
            let label = match &kid {
                Some(kid) => format!("key {:?}", truncate(kid, 64)),
                None => format!("key #{index}"),
            };
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(e) => {
                    set.skipped.push(format!("{label}: not a JWK: {e}"));
                    continue;
                }
            };
            match key_from_jwk(&jwk, algorithms) {
                Ok(key) => set.keys.push(key),
                Err(e) => set.skipped.push(format!("{label}: {e}")),
            }
        }
        if set.keys.is_empty() {
            return Err(KeySetError::NoUsableKey {
                skipped: set.skipped.len(),
                reasons: set.skipped_summary(),
            });
        }
        Ok(set)
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

fn family_of(algorithms: &[Algorithm]) -> Option<KeyFamily> {
    algorithms.first().and_then(|alg| KeyFamily::of(*alg))
}

fn key_from_jwk(jwk: &Jwk, algorithms: &[Algorithm]) -> Result<VerificationKey, KeyError> {
    let common = &jwk.common;
    match &common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(PublicKeyUse::Encryption) => {
            return Err(KeyError::NotForSignatures {
                found: "enc".into(),
            });
        }
        Some(PublicKeyUse::Other(other)) => {
            return Err(KeyError::NotForSignatures {
                found: other.clone(),
            });
        }
    }
    if let Some(ops) = &common.key_operations {
        let verify = ops
            .iter()
            .any(|op| matches!(op, jsonwebtoken::jwk::KeyOperations::Verify));
        if !verify {
            return Err(KeyError::NotForSignatures {
                found: "key_ops without verify".into(),
            });
        }
    }
    let declared = match common.key_algorithm {
        None => None,
        Some(key_alg) => {
            let alg = algorithm_of(key_alg).filter(|alg| algorithms.contains(alg));
            match alg {
                Some(alg) => Some(alg),
                None => {
                    return Err(KeyError::AlgorithmNotPinned {
                        alg: format!("{key_alg:?}"),
                    });
                }
            }
        }
    };
    let family = family_of(algorithms).ok_or_else(|| KeyError::Unsupported {
        what: "no pinned algorithm".into(),
    })?;
    let malformed = |e: jsonwebtoken::errors::Error| KeyError::Malformed {
        detail: e.to_string(),
    };
    let wrong = |found: &str| KeyError::WrongFamily {
        found: found.into(),
        family,
    };
    let (key, curve_alg) = match (&jwk.algorithm, family) {
        (AlgorithmParameters::RSA(params), KeyFamily::Rsa) => {
            let key = DecodingKey::from_rsa_components(&params.n, &params.e).map_err(malformed)?;
            if let jsonwebtoken::DecodingKeyKind::RsaModulusExponent { n, .. } = key.kind() {
                check_rsa_bits(bit_length(n))?;
            }
            (key, None)
        }
        (AlgorithmParameters::EllipticCurve(params), KeyFamily::Ec) => {
            let (alg, len) = match params.curve {
                EllipticCurve::P256 => (Algorithm::ES256, 32),
                EllipticCurve::P384 => (Algorithm::ES384, 48),
                ref other => {
                    return Err(KeyError::Unsupported {
                        what: format!("{other:?}"),
                    });
                }
            };
            let key = DecodingKey::from_ec_components(&params.x, &params.y).map_err(malformed)?;
            let point = key.try_get_as_bytes().map_err(malformed)?;
            if point.len() != 1 + 2 * len {
                return Err(KeyError::Malformed {
                    detail: "EC coordinates do not match the curve".into(),
                });
            }
            (key, Some(alg))
        }
        (AlgorithmParameters::OctetKeyPair(params), KeyFamily::EdDsa) => {
            if params.curve != EllipticCurve::Ed25519 {
                return Err(KeyError::Unsupported {
                    what: format!("{:?}", params.curve),
                });
            }
            let key = DecodingKey::from_ed_components(&params.x).map_err(malformed)?;
            if key.try_get_as_bytes().map_err(malformed)?.len() != 32 {
                return Err(KeyError::Malformed {
                    detail: "Ed25519 key is not 32 bytes".into(),
                });
            }
            (key, None)
        }
        (AlgorithmParameters::RSA(_), _) => return Err(wrong("RSA")),
        (AlgorithmParameters::EllipticCurve(_), _) => return Err(wrong("EC")),
        (AlgorithmParameters::OctetKeyPair(_), _) => return Err(wrong("OKP")),
        (AlgorithmParameters::OctetKey(_), _) => return Err(wrong("oct")),
        (_, _) => return Err(wrong("unknown kty")),
    };
    let alg = match (declared, curve_alg) {
        (Some(d), Some(c)) if d != c => {
            return Err(KeyError::Malformed {
                detail: format!("alg {d:?} does not match the curve ({c:?})"),
            });
        }
        (d, c) => d.or(c),
    };
    if alg.is_some_and(|alg| !algorithms.contains(&alg)) {
        return Err(KeyError::AlgorithmNotPinned {
            alg: format!("{alg:?}"),
        });
    }
    Ok(VerificationKey {
        kid: common.key_id.clone(),
        alg,
        key,
    })
}

fn algorithm_of(key_alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match key_alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

pub(crate) fn check_rsa_bits(bits: usize) -> Result<(), KeyError> {
    if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::RsaSize { bits })
    }
}

/// A key parsed from a `PUBLIC KEY` PEM or a certificate, checked against the family.
pub(crate) fn key_from_spki(
    spki: SpkiKey,
    family: KeyFamily,
    kid: Option<String>,
) -> Result<VerificationKey, KeyError> {
    let wrong = |found: &str| KeyError::WrongFamily {
        found: found.into(),
        family,
    };
    let (key, alg) = match (spki, family) {
        (SpkiKey::Rsa { n, e }, KeyFamily::Rsa) => {
            check_rsa_bits(bit_length(&n))?;
            (DecodingKey::from_rsa_raw_components(&n, &e), None)
        }
        (SpkiKey::EcP256(point), KeyFamily::Ec) => {
            (DecodingKey::from_ec_der(&point), Some(Algorithm::ES256))
        }
        (SpkiKey::EcP384(point), KeyFamily::Ec) => {
            (DecodingKey::from_ec_der(&point), Some(Algorithm::ES384))
        }
        (SpkiKey::Ed25519(raw), KeyFamily::EdDsa) => (DecodingKey::from_ed_der(&raw), None),
        (SpkiKey::Unsupported, _) => {
            return Err(KeyError::Unsupported {
                what: "key algorithm or curve".into(),
            });
        }
        (SpkiKey::Rsa { .. }, _) => return Err(wrong("RSA")),
        (SpkiKey::EcP256(_) | SpkiKey::EcP384(_), _) => return Err(wrong("EC")),
        (SpkiKey::Ed25519(_), _) => return Err(wrong("Ed25519")),
    };
    Ok(VerificationKey { kid, alg, key })
}

/// What the gateway takes from an OIDC discovery document
/// (OpenID Connect Discovery 1.0 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcDiscovery {
    pub issuer: String,
    pub jwks_uri: Url,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery document is not JSON with string \"issuer\" and \"jwks_uri\"")]
    NotDiscovery {
        #[source]
        source: serde_json::Error,
    },
    #[error("discovery issuer {found:?} is not one of the configured issuers")]
    IssuerMismatch { found: String },
    #[error("jwks_uri {uri:?} is not an https URL")]
    JwksUriNotHttps { uri: String },
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

impl OidcDiscovery {
    /// Parses a discovery document. Its `issuer` must be one of `issuers` when any are
    /// configured (a document served for another tenant is refused); with none
    /// configured, it becomes the provider's accepted issuer. `jwks_uri` must be https.
    pub fn parse(bytes: &[u8], issuers: &[String]) -> Result<Self, DiscoveryError> {
        let doc: DiscoveryDocument = serde_json::from_slice(bytes)
            .map_err(|source| DiscoveryError::NotDiscovery { source })?;
        if !issuers.is_empty() && !issuers.contains(&doc.issuer) {
            return Err(DiscoveryError::IssuerMismatch { found: doc.issuer });
        }
        let jwks_uri = Url::parse(&doc.jwks_uri)
            .ok()
            .filter(|url| url.scheme() == "https" && url.host_str().is_some())
            .ok_or(DiscoveryError::JwksUriNotHttps { uri: doc.jwks_uri })?;
        Ok(Self {
            issuer: doc.issuer,
            jwks_uri,
        })
    }
}
