//! `[[jwt_provider]]` as written, and its validation into a [`JwtProvider`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use http::{HeaderName, StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde::Deserialize;
use url::Url;

use super::claims::RequiredClaim;
use super::der;
use super::keyset::{KeyError, KeyFamily, KeySet, VerificationKey, key_from_spki};
use super::source::TokenSource;
use super::{JwtProvider, KeyOrigin, ProviderConfig};

/// Default [`JwtProviderSettings::max_token_bytes`].
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8_192;
/// Largest configurable token size (hyper's h2 header list limit is 16 KiB).
pub const MAX_MAX_TOKEN_BYTES: usize = 65_536;
/// Largest configurable clock skew.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Shortest HMAC secret: 256 bits (RFC 7518 §3.2 for HS256; RFC 8725 §3.5).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
const MAX_FAILURE_MESSAGE_CHARS: usize = 1_024;

/// One `[[jwt_provider]]` table. See the module documentation for the TOML shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderSettings {
    pub name: String,
    /// Where the token is. Default: `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<TokenSourceSettings>,
    /// Accepted `alg` values, all of one family. Required.
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub openid_config_url: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub keys: Vec<StaticKeySettings>,
    /// Accepted `iss` values (any of). Empty: not checked, except that with
    /// `openid_config_url` the discovery document's issuer is required.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted `aud` values (any of; a token's `aud` may be an array). Empty: not
    /// checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub required_claims: Vec<RequiredClaim>,
    /// Tolerance for `exp` and `nbf`, 0..=300. Default 0 (APIM).
    #[serde(default)]
    pub clock_skew_secs: u64,
    /// Longer tokens are refused before any decoding. Default 8192.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Status of a refused token, 400..=499. Default 401.
    #[serde(default = "default_failed_status")]
    pub failed_status: u16,
    /// Replaces every failure message (APIM's `failed-validation-error-message`).
    #[serde(default)]
    pub failure_message: Option<String>,
    /// PEM bundle of the CAs trusted for the discovery and JWKS fetches, instead of the
    /// Mozilla roots (a private identity provider).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Keep verified tokens until their `exp` so a repeated token costs no signature
    /// check. Default `true`; `false` verifies every request (for comparisons).
    #[serde(default = "default_cache_tokens")]
    pub cache_tokens: bool,
}

fn default_cache_tokens() -> bool {
    true
}

fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}

fn default_failed_status() -> u16 {
    401
}

/// `token = { header = "...", scheme = "..." }`, `{ query = "..." }` or `{ cookie = "..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSourceSettings {
    #[serde(default)]
    pub header: Option<String>,
    /// Only with `header = "Authorization"` (APIM ignores a scheme elsewhere; here it is
    /// an error rather than silently ignored).
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

/// One static key: exactly one of the four forms, and an optional `kid`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKeySettings {
    #[serde(default)]
    pub kid: Option<String>,
    /// A file with a `PUBLIC KEY` (SPKI) or a `CERTIFICATE`.
    #[serde(default)]
    pub pem_file: Option<PathBuf>,
    /// The same PEM text inline.
    #[serde(default)]
    pub pem: Option<String>,
    /// A file holding the HMAC secret in standard base64 (surrounding whitespace ignored).
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// The HMAC secret in standard base64, inline (APIM's form).
    #[serde(default)]
    pub hmac_secret_base64: Option<String>,
}

impl fmt::Debug for StaticKeySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeySettings")
            .field("kid", &self.kid)
            .field("pem_file", &self.pem_file)
            .field("pem", &self.pem.as_ref().map(|_| "<pem>"))
            .field("hmac_secret_file", &self.hmac_secret_file)
            .field(
                "hmac_secret_base64",
                &self.hmac_secret_base64.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// One error in a [`JwtProviderSettings`]; [`JwtProviderSettings::validate`] reports all.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("name must not be empty")]
    EmptyName,
    #[error("algorithms: at least one is required")]
    NoAlgorithms,
    #[error("algorithms: \"none\" is never accepted (unsigned tokens)")]
    AlgorithmNone,
    #[error(
        "algorithms: {name:?} is not supported (HS256/384/512, RS256/384/512, \
         PS256/384/512, ES256/384, EdDSA)"
    )]
    UnknownAlgorithm { name: String },
    #[error("algorithms: {first} and {other} mixed; a provider is pinned to one family")]
    MixedFamilies { first: KeyFamily, other: KeyFamily },
    #[error("token: {detail}")]
    TokenSource { detail: String },
    #[error("set exactly one of openid_config_url, jwks_url and keys ({found} set)")]
    KeySourceCount { found: usize },
    #[error("{field}: {url:?} is not an https URL")]
    NotHttps { field: &'static str, url: String },
    #[error(
        "{field}: a user name or password in the URL is never sent (and would be logged); \
         remove it"
    )]
    UrlCredentials { field: &'static str },
    #[error("HMAC secrets come from static keys only, never from a fetched key set")]
    HmacFromNetwork,
    #[error("ca_file is for fetched keys; this provider has static keys")]
    CaFileWithStaticKeys,
    #[error("ca_file {path}: cannot be read")]
    CaFileUnreadable {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("ca_file {path}: no usable CA certificate")]
    CaFileNoCertificate { path: PathBuf },
    #[error(
        "keys[{index}]: set exactly one of pem_file, pem, hmac_secret_file, hmac_secret_base64"
    )]
    KeyForm { index: usize },
    #[error("keys[{index}]: {path}: cannot be read")]
    KeyFileUnreadable {
        index: usize,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keys[{index}]: {detail}")]
    PemInvalid { index: usize, detail: &'static str },
    #[error("keys[{index}]: an HMAC secret is not base64 (standard alphabet)")]
    HmacNotBase64 { index: usize },
    #[error(
        "keys[{index}]: HMAC secret of {bytes} bytes; at least {MIN_HMAC_SECRET_BYTES} \
         random bytes (256 bits) are required"
    )]
    HmacTooShort { index: usize, bytes: usize },
    #[error("keys[{index}]: an HMAC secret needs HS* algorithms; a PEM key needs RS/PS/ES/EdDSA")]
    KeyKindMismatch { index: usize },
    #[error("keys[{index}]")]
    KeyNotUsable {
        index: usize,
        #[source]
        source: KeyError,
    },
    #[error("clock_skew_secs: {secs} is over the maximum of {MAX_CLOCK_SKEW_SECS}")]
    ClockSkew { secs: u64 },
    #[error("max_token_bytes: {bytes} is outside 256..={MAX_MAX_TOKEN_BYTES}")]
    MaxTokenBytes { bytes: usize },
    #[error("failed_status: {status} is not a 4xx status")]
    FailedStatus { status: u16 },
    #[error("failure_message: must be 1 to {MAX_FAILURE_MESSAGE_CHARS} characters")]
    FailureMessage,
    #[error("cannot build the TLS client for key fetches")]
    TlsClient {
        #[source]
        source: rustls::Error,
    },
    #[error("issuers/audiences: empty values are not allowed")]
    EmptyValue,
    #[error("required_claims[{index}]: {detail}")]
    RequiredClaim { index: usize, detail: &'static str },
}

impl JwtProviderSettings {
    /// Checks everything, reads key and CA files, and reports every error found.
    pub fn validate(&self) -> Result<JwtProvider, Vec<JwtConfigError>> {
        let mut errors = Vec::new();
        if self.name.trim().is_empty() {
            errors.push(JwtConfigError::EmptyName);
        }
        let algorithms = parse_algorithms(&self.algorithms, &mut errors);
        let family = algorithms.first().and_then(|alg| KeyFamily::of(*alg));
        let source = match &self.token {
            None => Some(TokenSource::bearer()),
            Some(settings) => settings.validate().map_err(|e| errors.push(e)).ok(),
        };

        let origin = self.key_origin(family, &mut errors);
        let static_keys = match (family, origin.as_ref()) {
            (Some(family), Some(KeyOrigin::Static)) => self.load_static_keys(family, &mut errors),
            _ => Vec::new(),
        };
        let fetch_roots = self.fetch_roots(origin.as_ref(), &mut errors);

        if self.clock_skew_secs > MAX_CLOCK_SKEW_SECS {
            errors.push(JwtConfigError::ClockSkew {
                secs: self.clock_skew_secs,
            });
        }
        if !(256..=MAX_MAX_TOKEN_BYTES).contains(&self.max_token_bytes) {
            errors.push(JwtConfigError::MaxTokenBytes {
                bytes: self.max_token_bytes,
            });
        }
        let failed_status = StatusCode::from_u16(self.failed_status)
            .ok()
            .filter(StatusCode::is_client_error);
        if failed_status.is_none() {
            errors.push(JwtConfigError::FailedStatus {
                status: self.failed_status,
            });
        }
        if let Some(message) = &self.failure_message {
            let chars = message.trim().chars().count();
            if chars == 0 || chars > MAX_FAILURE_MESSAGE_CHARS {
                errors.push(JwtConfigError::FailureMessage);
            }
        }
        if self
            .issuers
            .iter()
            .chain(&self.audiences)
            .any(|v| v.is_empty())
        {
            errors.push(JwtConfigError::EmptyValue);
        }
        for (index, claim) in self.required_claims.iter().enumerate() {
            let detail = if claim.name.is_empty() {
                Some("name must not be empty")
            } else if claim.separator.as_deref() == Some("") {
                Some("separator must not be empty")
            } else if claim.values.iter().any(String::is_empty) {
                Some("values must not be empty strings")
            } else {
                None
            };
            if let Some(detail) = detail {
                errors.push(JwtConfigError::RequiredClaim { index, detail });
            }
        }

        let (Some(source), Some(family), Some(origin), Some(failed_status), true) =
            (source, family, origin, failed_status, errors.is_empty())
        else {
            return Err(errors);
        };
        let config = ProviderConfig {
            name: self.name.clone(),
            source,
            algorithms,
            family,
            origin,
            issuers: self.issuers.clone(),
            audiences: self.audiences.clone(),
            required_claims: self.required_claims.clone(),
            clock_skew_secs: self.clock_skew_secs,
            max_token_bytes: self.max_token_bytes,
            failed_status,
            failure_message: self.failure_message.clone(),
            cache_capacity: if self.cache_tokens {
                super::DEFAULT_CACHE_CAPACITY
            } else {
                0
            },
        };
        let keys = (!static_keys.is_empty()).then(|| KeySet::from_keys(static_keys));
        JwtProvider::new(config, keys, fetch_roots).map_err(|e| vec![e])
    }

    fn key_origin(
        &self,
        family: Option<KeyFamily>,
        errors: &mut Vec<JwtConfigError>,
    ) -> Option<KeyOrigin> {
        let found = usize::from(self.openid_config_url.is_some())
            + usize::from(self.jwks_url.is_some())
            + usize::from(!self.keys.is_empty());
        if found != 1 {
            errors.push(JwtConfigError::KeySourceCount { found });
            return None;
        }
        let mut https = |field: &'static str, url: &str| {
            let parsed = Url::parse(url).ok();
            if parsed.as_ref().is_some_and(crate::policy::has_user_info) {
                errors.push(JwtConfigError::UrlCredentials { field });
                return None;
            }
            let parsed = parsed.filter(|u| u.scheme() == "https" && u.host_str().is_some());
            if parsed.is_none() {
                errors.push(JwtConfigError::NotHttps {
                    field,
                    url: url.to_owned(),
                });
            }
            parsed
        };
        let origin = if let Some(url) = &self.openid_config_url {
            KeyOrigin::OpenIdConfig(https("openid_config_url", url)?)
        } else if let Some(url) = &self.jwks_url {
            KeyOrigin::Jwks(https("jwks_url", url)?)
        } else {
            KeyOrigin::Static
        };
        if origin != KeyOrigin::Static && family == Some(KeyFamily::Hmac) {
            errors.push(JwtConfigError::HmacFromNetwork);
        }
        Some(origin)
    }

    fn load_static_keys(
        &self,
        family: KeyFamily,
        errors: &mut Vec<JwtConfigError>,
    ) -> Vec<VerificationKey> {
        let mut keys = Vec::new();
        for (index, settings) in self.keys.iter().enumerate() {
            match load_static_key(index, settings, family) {
                Ok(key) => keys.push(key),
                Err(e) => errors.push(e),
            }
        }
        keys
    }

    fn fetch_roots(
        &self,
        origin: Option<&KeyOrigin>,
        errors: &mut Vec<JwtConfigError>,
    ) -> Option<rustls::RootCertStore> {
        match (origin, &self.ca_file) {
            (Some(KeyOrigin::Static), Some(_)) => {
                errors.push(JwtConfigError::CaFileWithStaticKeys);
                None
            }
            (Some(KeyOrigin::Static) | None, None) => None,
            (_, None) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                Some(roots)
            }
            (_, Some(path)) => match load_ca_file(path) {
                Ok(roots) => Some(roots),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
        }
    }
}

impl TokenSourceSettings {
    fn validate(&self) -> Result<TokenSource, JwtConfigError> {
        let err = |detail: &str| JwtConfigError::TokenSource {
            detail: detail.to_owned(),
        };
        let set = [&self.header, &self.query, &self.cookie]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set != 1 {
            return Err(err("set exactly one of header, query and cookie"));
        }
        if let Some(name) = &self.header {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| err("header is not a valid header name"))?;
            let scheme = match &self.scheme {
                None => None,
                Some(_) if name != header::AUTHORIZATION => {
                    return Err(err("scheme applies to header = \"Authorization\" only"));
                }
                Some(scheme) if scheme.is_empty() || !scheme.bytes().all(is_tchar) => {
                    return Err(err("scheme must be a token such as Bearer"));
                }
                Some(scheme) => Some(scheme.clone()),
            };
            return Ok(TokenSource::Header { name, scheme });
        }
        if self.scheme.is_some() {
            return Err(err("scheme applies to header = \"Authorization\" only"));
        }
        let (name, make): (&String, fn(String) -> TokenSource) = match (&self.query, &self.cookie) {
            (Some(q), _) => (q, TokenSource::Query),
            (_, Some(c)) => (c, TokenSource::Cookie),
            (None, None) => return Err(err("set exactly one of header, query and cookie")),
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(err("query and cookie names must be non-empty tokens"));
        }
        Ok(make(name.clone()))
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_algorithms(names: &[String], errors: &mut Vec<JwtConfigError>) -> Vec<Algorithm> {
    if names.is_empty() {
        errors.push(JwtConfigError::NoAlgorithms);
    }
    let mut algorithms: Vec<Algorithm> = Vec::new();
    for name in names {
        if name.eq_ignore_ascii_case("none") {
            errors.push(JwtConfigError::AlgorithmNone);
            continue;
        }
        match Algorithm::from_str(name)
            .ok()
            .and_then(|a| KeyFamily::of(a).map(|f| (a, f)))
        {
            Some((alg, family)) => {
                if let Some(first) = algorithms.first().and_then(|a| KeyFamily::of(*a))
                    && first != family
                {
                    errors.push(JwtConfigError::MixedFamilies {
                        first,
                        other: family,
                    });
                    continue;
                }
                if !algorithms.contains(&alg) {
                    algorithms.push(alg);
                }
            }
            None => errors.push(JwtConfigError::UnknownAlgorithm { name: name.clone() }),
        }
    }
    algorithms
}

fn load_static_key(
    index: usize,
    settings: &StaticKeySettings,
    family: KeyFamily,
) -> Result<VerificationKey, JwtConfigError> {
    let forms = [
        settings.pem_file.is_some(),
        settings.pem.is_some(),
        settings.hmac_secret_file.is_some(),
        settings.hmac_secret_base64.is_some(),
    ];
    if forms.iter().filter(|set| **set).count() != 1 {
        return Err(JwtConfigError::KeyForm { index });
    }
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| JwtConfigError::KeyFileUnreadable {
            index,
            path: path.to_owned(),
            source,
        })
    };
    let kid = settings.kid.clone();
    let hmac = match (&settings.hmac_secret_file, &settings.hmac_secret_base64) {
        (Some(path), _) => Some(String::from_utf8_lossy(&read(path)?).trim().to_owned()),
        (_, Some(text)) => Some(text.trim().to_owned()),
        (None, None) => None,
    };
    if let Some(text) = hmac {
        if family != KeyFamily::Hmac {
            return Err(JwtConfigError::KeyKindMismatch { index });
        }
        let key = DecodingKey::from_base64_secret(&text)
            .map_err(|_| JwtConfigError::HmacNotBase64 { index })?;
        let bytes = key.try_get_as_bytes().map(<[u8]>::len).unwrap_or(0);
        if bytes < MIN_HMAC_SECRET_BYTES {
            return Err(JwtConfigError::HmacTooShort { index, bytes });
        }
        return Ok(VerificationKey {
            kid,
            alg: None,
            key,
        });
    }
    if family == KeyFamily::Hmac {
        return Err(JwtConfigError::KeyKindMismatch { index });
    }
    let pem = match (&settings.pem_file, &settings.pem) {
        (Some(path), _) => read(path)?,
        (_, Some(text)) => text.as_bytes().to_vec(),
        (None, None) => return Err(JwtConfigError::KeyForm { index }),
    };
    let spki =
        spki_from_pem(&pem).map_err(|detail| JwtConfigError::PemInvalid { index, detail })?;
    key_from_spki(spki, family, kid)
        .map_err(|source| JwtConfigError::KeyNotUsable { index, source })
}

/// The key of the first `PUBLIC KEY` or `CERTIFICATE` section. A private key in the
/// text is refused: it does not belong in the gateway's configuration.
fn spki_from_pem(pem: &[u8]) -> Result<der::SpkiKey, &'static str> {
    for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem) {
        let Ok((kind, der)) = section else {
            return Err("the PEM text is malformed");
        };
        let spki = match kind {
            SectionKind::PublicKey => der.as_slice(),
            SectionKind::Certificate => {
                der::certificate_spki(&der).ok_or("the certificate's public key cannot be read")?
            }
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                return Err("the PEM holds a private key; give the public key or certificate");
            }
            _ => continue,
        };
        return der::parse_spki(spki).ok_or("the public key cannot be parsed");
    }
    Err("no PUBLIC KEY or CERTIFICATE in the PEM text")
}

fn load_ca_file(path: &Path) -> Result<rustls::RootCertStore, JwtConfigError> {
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| JwtConfigError::CaFileUnreadable {
            path: path.to_owned(),
            source,
        })?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(JwtConfigError::CaFileNoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}
