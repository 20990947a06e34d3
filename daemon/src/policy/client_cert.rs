//! Client certificates (mTLS) per API, after APIM's `validate-client-certificate` policy
//! (reference/apim.md §9): the certificate must be present, inside its validity window,
//! and match every attribute of at least one configured identity.
//!
//! Trust (the chain up to a configured CA) and revocation (CRL files) are checked by the
//! TLS layer before any of this runs. The gateway parses the certificate of a connection
//! once ([`ClientCertificate::from_der`]) and calls [`ClientCertPolicy::check`] for each
//! request of an API that asks for one; a refusal is a [`CertRejection`], answered with
//! 403 and APIM's JSON body ([`CertRejection::rejection`]), its reason going to the log.
//!
//! # Identity attributes and how they match
//!
//! | Attribute | Matches |
//! |---|---|
//! | `thumbprint` | SHA-1 (40 hex digits, APIM/.NET `Thumbprint`) or SHA-256 (64) of the certificate's DER |
//! | `serial_number` | the serial number, as an integer: hex, leading zeros optional |
//! | `common_name` | the subject's most specific CN, exactly |
//! | `subject` | the subject DN (see below) |
//! | `dns_name` | one of the subjectAltName dNSName entries, ASCII case-insensitive, no wildcard expansion |
//! | `issuer_subject` | the issuer DN |
//! | `issuer_thumbprint` | SHA-1 or SHA-256 of the issuing certificate |
//!
//! Hex attributes ignore case, `:` and white space. DNs are parsed and compared as RDN
//! sequences: attribute type names are case-insensitive, values exact, quoting as in the
//! APIM docs (`O="Contoso, Inc."`); the accepted syntax and the printed form are
//! described in `client_cert/dn.rs`. In short, [`ClientCertificate::subject`] prints as
//! .NET's `X500DistinguishedName.Name` (most specific RDN first, `", "` between RDNs),
//! and any string in that form, or in RFC 4514 form, is accepted in the configuration.
//!
//! The issuer thumbprint needs the issuing certificate: it is taken into account only if
//! its subject equals the leaf's issuer name and its key verifies the leaf's signature, so
//! that an extra certificate slipped into the presented chain cannot stand in for the CA.

use std::fmt;

use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::Rejection;

mod dn;
mod header;
#[cfg(test)]
mod tests;

use dn::Name;

/// Reason codes (APIM `LastError.Reason`) for the log and metrics.
pub mod reason {
    pub const NOT_FOUND: &str = "ClientCertificateNotFound";
    pub const EXPIRED: &str = "ClientCertificateExpired";
    pub const NOT_YET_VALID: &str = "ClientCertificateNotYetValid";
    pub const IDENTITY_NOT_MATCHED: &str = "ClientCertificateIdentityNotMatched";
}

/// Client-facing message when no certificate was presented (APIM's text).
pub const MISSING_MESSAGE: &str = "Client certificate missing.";
/// Client-facing message for any other refusal (APIM's text).
pub const INVALID_MESSAGE: &str = "Invalid client certificate.";

/// The names [`ClientCertificate::field`] accepts (`certificate_headers`).
pub const FIELDS: [&str; 7] = [
    "subject",
    "common_name",
    "serial_number",
    "thumbprint",
    "sha256_thumbprint",
    "issuer_subject",
    "dns_name",
];

/// The leaf certificate could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertParseError {
    #[error("client certificate is not valid DER X.509: {detail}")]
    Der { detail: String },
    #[error("client certificate has {count} bytes after its DER encoding")]
    TrailingData { count: usize },
}

/// The parsed client certificate of a connection (computed once per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    sha1_thumbprint: String,
    sha256_thumbprint: String,
    serial_number: String,
    /// `serial_number` without leading zeros: the form serial numbers compare in.
    serial_key: String,
    common_name: Option<String>,
    subject: String,
    subject_name: Name,
    dns_names: Vec<String>,
    issuer_subject: String,
    issuer_name: Name,
    issuer_sha1_thumbprint: Option<String>,
    issuer_sha256_thumbprint: Option<String>,
    not_before: u64,
    not_after: u64,
}

impl ClientCertificate {
    /// `leaf` DER; `issuer` DER of the issuing certificate when known (the next one in the
    /// presented chain, or the CA that verified it), for issuer thumbprints. An `issuer`
    /// that does not parse, whose subject is not the leaf's issuer name, or whose key does
    /// not verify the leaf's signature is ignored: the issuer thumbprints stay unknown
    /// (and `issuer_thumbprint` identities do not match). Only the leaf can fail.
    pub fn from_der(leaf: &[u8], issuer: Option<&[u8]>) -> Result<Self, CertParseError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(leaf)?;
        if !rest.is_empty() {
            return Err(CertParseError::TrailingData { count: rest.len() });
        }

        let subject_name = Name::from_x509(cert.subject());
        let issuer_name = Name::from_x509(cert.issuer());
        let serial_number = hex::encode_upper(cert.raw_serial());
        let serial_key = serial_key(&serial_number);

        let mut dns_names = Vec::new();
        match cert.subject_alternative_name() {
            Ok(Some(san)) => {
                for name in &san.value.general_names {
                    if let GeneralName::DNSName(dns) = name {
                        dns_names.push((*dns).to_owned());
                    }
                }
            }
            Ok(None) => {}
            Err(err) => {
                return Err(CertParseError::Der {
                    detail: format!("subjectAltName: {err}"),
                });
            }
        }

        let validity = cert.validity();
        let issuer_der = issuer.filter(|der| issued_by(&cert, der));

        Ok(Self {
            sha1_thumbprint: sha1_hex(leaf),
            sha256_thumbprint: sha256_hex(leaf),
            serial_number,
            serial_key,
            common_name: subject_name
                .last_value(dn::OID_COMMON_NAME)
                .map(str::to_owned),
            subject: subject_name.format(),
            subject_name,
            dns_names,
            issuer_subject: issuer_name.format(),
            issuer_name,
            issuer_sha1_thumbprint: issuer_der.map(sha1_hex),
            issuer_sha256_thumbprint: issuer_der.map(sha256_hex),
            not_before: unix_seconds(validity.not_before.timestamp()),
            not_after: unix_seconds(validity.not_after.timestamp()),
        })
    }

    /// SHA-1 of the DER, upper-case hex without separators (APIM/.NET `Thumbprint`).
    pub fn sha1_thumbprint(&self) -> &str {
        &self.sha1_thumbprint
    }

    /// SHA-256 of the DER, upper-case hex without separators.
    pub fn sha256_thumbprint(&self) -> &str {
        &self.sha256_thumbprint
    }

    /// Upper-case hex of the DER content octets of the serial number, as .NET's
    /// `SerialNumber`: a leading `00` byte is kept when the DER has it (a serial whose
    /// first byte is ≥ 0x80). Configured serial numbers compare as integers, so `8001`,
    /// `008001` and `00:80:01` all match this certificate's `008001`.
    pub fn serial_number(&self) -> &str {
        &self.serial_number
    }

    /// The most specific CN of the subject (the first one in [`Self::subject`]), if the
    /// subject has one with a string value.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The subject DN as .NET's `X500DistinguishedName.Name` prints it, e.g.
    /// `CN=name, OU=unit, O="Contoso, Inc.", C=US` (most specific first; see the module
    /// documentation of `client_cert::dn`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The subjectAltName dNSName entries, in certificate order.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The issuer DN, in the same form as [`Self::subject`].
    pub fn issuer_subject(&self) -> &str {
        &self.issuer_subject
    }

    /// SHA-1 thumbprint of the issuing certificate, when it was given and checks out.
    pub fn issuer_sha1_thumbprint(&self) -> Option<&str> {
        self.issuer_sha1_thumbprint.as_deref()
    }

    /// SHA-256 thumbprint of the issuing certificate, when it was given and checks out.
    pub fn issuer_sha256_thumbprint(&self) -> Option<&str> {
        self.issuer_sha256_thumbprint.as_deref()
    }

    /// Start of the validity window, Unix seconds (0 for dates before 1970).
    pub fn not_before(&self) -> u64 {
        self.not_before
    }

    /// End of the validity window (inclusive), Unix seconds (0 for dates before 1970).
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    /// A named field for `certificate_headers` (one of [`FIELDS`]): `subject`,
    /// `common_name`, `serial_number`, `thumbprint` (SHA-1), `sha256_thumbprint`,
    /// `issuer_subject`, `dns_name` (the first one). `None` for an unknown name or a field
    /// the certificate lacks. Subjects may hold any Unicode text, including characters
    /// that a header value cannot carry: [`Self::header_value`] encodes them.
    pub fn field(&self, name: &str) -> Option<String> {
        match name {
            "subject" => Some(self.subject.clone()),
            "common_name" => self.common_name.clone(),
            "serial_number" => Some(self.serial_number.clone()),
            "thumbprint" => Some(self.sha1_thumbprint.clone()),
            "sha256_thumbprint" => Some(self.sha256_thumbprint.clone()),
            "issuer_subject" => Some(self.issuer_subject.clone()),
            "dns_name" => self.dns_names.first().cloned(),
            _ => None,
        }
    }

    /// [`Self::field`] as the backend gets it in a header: `%`, control characters,
    /// non-ASCII text and the spaces and tabs at either end percent-encoded (UTF-8,
    /// uppercase hex), everything else as it is (see `client_cert/header.rs`).
    pub fn header_value(&self, name: &str) -> Option<HeaderValue> {
        self.field(name).map(|value| header::header_value(&value))
    }
}

/// For logs: enough to identify the certificate.
impl fmt::Display for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subject {:?}, issuer {:?}, serial {}, SHA-1 thumbprint {}",
            self.subject, self.issuer_subject, self.serial_number, self.sha1_thumbprint
        )
    }
}

impl From<x509_parser::nom::Err<x509_parser::error::X509Error>> for CertParseError {
    fn from(err: x509_parser::nom::Err<x509_parser::error::X509Error>) -> Self {
        Self::Der {
            detail: err.to_string(),
        }
    }
}

/// True if `issuer_der` parses, is named as `leaf`'s issuer and its key verifies `leaf`.
fn issued_by(leaf: &X509Certificate<'_>, issuer_der: &[u8]) -> bool {
    let Ok((_, issuer)) = x509_parser::parse_x509_certificate(issuer_der) else {
        return false;
    };
    issuer.subject().as_raw() == leaf.issuer().as_raw()
        && leaf.verify_signature(Some(issuer.public_key())).is_ok()
}

fn sha1_hex(der: &[u8]) -> String {
    hex::encode_upper(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        der,
    ))
}

fn sha256_hex(der: &[u8]) -> String {
    hex::encode_upper(Sha256::digest(der))
}

fn unix_seconds(timestamp: i64) -> u64 {
    u64::try_from(timestamp).unwrap_or(0)
}

/// Upper-case hex without leading zeros ("0" for zero): the form serials compare in.
fn serial_key(hex_digits: &str) -> String {
    let trimmed = hex_digits.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_ascii_uppercase()
    }
}

/// Hex text of the configuration: drops `:` and white space, checks the digits,
/// upper-cases. `None` if something else is left.
fn normalize_hex(text: &str) -> Option<String> {
    let digits: String = text
        .chars()
        .filter(|&c| c != ':' && !c.is_whitespace())
        .collect();
    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| digits.to_ascii_uppercase())
}

/// One `[[...identities]]` entry as written. All the attributes given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySettings {
    /// SHA-1 (40 hex digits) or SHA-256 (64) thumbprint; any case, `:` and spaces allowed.
    pub thumbprint: Option<String>,
    /// Serial number in hex; any case, `:` and spaces allowed, leading zeros optional.
    pub serial_number: Option<String>,
    /// The subject's common name, exactly.
    pub common_name: Option<String>,
    /// The subject DN, e.g. `CN=client, O="Contoso, Inc.", C=US`.
    pub subject: Option<String>,
    /// One of the subjectAltName DNS names (case-insensitive).
    pub dns_name: Option<String>,
    /// The issuer DN.
    pub issuer_subject: Option<String>,
    /// SHA-1 or SHA-256 thumbprint of the issuing certificate.
    pub issuer_thumbprint: Option<String>,
}

/// Client certificate settings of one API, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertSettings {
    /// A certificate must match every attribute of at least one of them. Default: none,
    /// meaning any certificate the TLS layer accepted.
    #[serde(default)]
    pub identities: Vec<IdentitySettings>,
    /// Refuse certificates outside their validity window (APIM's `validate-not-before`
    /// and `validate-not-after`). Default: `true`.
    #[serde(default = "default_true")]
    pub check_validity: bool,
}

fn default_true() -> bool {
    true
}

impl Default for ClientCertSettings {
    fn default() -> Self {
        Self {
            identities: Vec::new(),
            check_validity: true,
        }
    }
}

/// One error in [`ClientCertSettings`]; [`ClientCertSettings::validate`] reports all.
/// `identity` is the index of the entry in `identities`, from 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientCertConfigError {
    #[error(
        "identities[{identity}]: no attribute set (an identity without any would match every certificate)"
    )]
    NoAttribute { identity: usize },
    #[error("identities[{identity}].{attribute}: empty")]
    Empty {
        identity: usize,
        attribute: &'static str,
    },
    #[error(
        "identities[{identity}].{attribute}: {value:?} is not a thumbprint \
         (40 hex digits for SHA-1 or 64 for SHA-256; ':' and spaces allowed)"
    )]
    BadThumbprint {
        identity: usize,
        attribute: &'static str,
        value: String,
    },
    #[error(
        "identities[{identity}].serial_number: {value:?} is not a serial number \
         (hex digits; ':' and spaces allowed)"
    )]
    BadSerialNumber { identity: usize, value: String },
    #[error("identities[{identity}].{attribute}: {value:?} is not a distinguished name: {detail}")]
    BadName {
        identity: usize,
        attribute: &'static str,
        value: String,
        detail: String,
    },
}

/// A configured thumbprint: normalized upper-case hex, its length telling the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Thumbprint {
    Sha1(String),
    Sha256(String),
}

impl Thumbprint {
    fn parse(text: &str) -> Option<Self> {
        let digits = normalize_hex(text)?;
        match digits.len() {
            40 => Some(Self::Sha1(digits)),
            64 => Some(Self::Sha256(digits)),
            _ => None,
        }
    }

    fn matches(&self, sha1: Option<&str>, sha256: Option<&str>) -> bool {
        match self {
            Self::Sha1(digits) => sha1 == Some(digits.as_str()),
            Self::Sha256(digits) => sha256 == Some(digits.as_str()),
        }
    }
}

/// A validated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    thumbprint: Option<Thumbprint>,
    serial_key: Option<String>,
    common_name: Option<String>,
    subject: Option<Name>,
    dns_name: Option<String>,
    issuer_subject: Option<Name>,
    issuer_thumbprint: Option<Thumbprint>,
}

impl Identity {
    fn matches(&self, cert: &ClientCertificate) -> bool {
        self.thumbprint
            .as_ref()
            .is_none_or(|t| t.matches(Some(&cert.sha1_thumbprint), Some(&cert.sha256_thumbprint)))
            && self
                .serial_key
                .as_ref()
                .is_none_or(|key| *key == cert.serial_key)
            && self
                .common_name
                .as_ref()
                .is_none_or(|cn| cert.common_name.as_ref() == Some(cn))
            && self
                .subject
                .as_ref()
                .is_none_or(|name| cert.subject_name.matches(name))
            && self.dns_name.as_ref().is_none_or(|wanted| {
                cert.dns_names
                    .iter()
                    .any(|dns| dns.eq_ignore_ascii_case(wanted))
            })
            && self
                .issuer_subject
                .as_ref()
                .is_none_or(|name| cert.issuer_name.matches(name))
            && self.issuer_thumbprint.as_ref().is_none_or(|t| {
                t.matches(
                    cert.issuer_sha1_thumbprint.as_deref(),
                    cert.issuer_sha256_thumbprint.as_deref(),
                )
            })
    }
}

impl IdentitySettings {
    fn validate(&self, index: usize, errors: &mut Vec<ClientCertConfigError>) -> Option<Identity> {
        let before = errors.len();
        let attributes = [
            ("thumbprint", &self.thumbprint),
            ("serial_number", &self.serial_number),
            ("common_name", &self.common_name),
            ("subject", &self.subject),
            ("dns_name", &self.dns_name),
            ("issuer_subject", &self.issuer_subject),
            ("issuer_thumbprint", &self.issuer_thumbprint),
        ];
        if attributes.iter().all(|(_, value)| value.is_none()) {
            errors.push(ClientCertConfigError::NoAttribute { identity: index });
            return None;
        }
        // An empty value is reported once, as empty, and not checked further.
        let mut present = |attribute: &'static str, value: &Option<String>| match value {
            Some(text) if text.trim().is_empty() => {
                errors.push(ClientCertConfigError::Empty {
                    identity: index,
                    attribute,
                });
                None
            }
            other => other.clone(),
        };
        let thumbprint = present("thumbprint", &self.thumbprint);
        let serial_number = present("serial_number", &self.serial_number);
        let common_name = present("common_name", &self.common_name);
        let subject = present("subject", &self.subject);
        let dns_name = present("dns_name", &self.dns_name);
        let issuer_subject = present("issuer_subject", &self.issuer_subject);
        let issuer_thumbprint = present("issuer_thumbprint", &self.issuer_thumbprint);

        let thumbprint_of = |attribute: &'static str,
                             value: Option<String>,
                             errors: &mut Vec<ClientCertConfigError>| {
            let text = value?;
            let parsed = Thumbprint::parse(&text);
            if parsed.is_none() {
                errors.push(ClientCertConfigError::BadThumbprint {
                    identity: index,
                    attribute,
                    value: text,
                });
            }
            parsed
        };
        let name_of = |attribute: &'static str,
                       value: Option<String>,
                       errors: &mut Vec<ClientCertConfigError>| {
            let text = value?;
            match Name::parse(&text) {
                Ok(name) => Some(name),
                Err(err) => {
                    errors.push(ClientCertConfigError::BadName {
                        identity: index,
                        attribute,
                        detail: err.to_string(),
                        value: text,
                    });
                    None
                }
            }
        };

        let thumbprint = thumbprint_of("thumbprint", thumbprint, errors);
        let issuer_thumbprint = thumbprint_of("issuer_thumbprint", issuer_thumbprint, errors);
        let subject = name_of("subject", subject, errors);
        let issuer_subject = name_of("issuer_subject", issuer_subject, errors);
        let serial_key = serial_number.and_then(|text| match normalize_hex(&text) {
            Some(digits) => Some(serial_key(&digits)),
            None => {
                errors.push(ClientCertConfigError::BadSerialNumber {
                    identity: index,
                    value: text,
                });
                None
            }
        });

        (errors.len() == before).then(|| Identity {
            thumbprint,
            serial_key,
            common_name,
            subject,
            dns_name: dns_name.map(|dns| dns.trim().to_owned()),
            issuer_subject,
            issuer_thumbprint,
        })
    }
}

impl ClientCertSettings {
    /// Checks every identity, reporting every error found.
    pub fn validate(&self) -> Result<ClientCertPolicy, Vec<ClientCertConfigError>> {
        let mut errors = Vec::new();
        let identities: Vec<Identity> = self
            .identities
            .iter()
            .enumerate()
            .filter_map(|(index, identity)| identity.validate(index, &mut errors))
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ClientCertPolicy {
            identities,
            check_validity: self.check_validity,
        })
    }
}

/// Validated settings, ready for per-request checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertPolicy {
    identities: Vec<Identity>,
    check_validity: bool,
}

impl ClientCertPolicy {
    /// Ok when a certificate is present, within its validity window at `now` (Unix
    /// seconds; both ends inclusive) if `check_validity`, and matches every attribute of
    /// at least one identity (no identities configured: any certificate the TLS layer
    /// accepted passes). Checked in that order; the first failure is returned.
    pub fn check(&self, cert: Option<&ClientCertificate>, now: u64) -> Result<(), CertRejection> {
        let cert = cert.ok_or(CertRejection::Missing)?;
        if self.check_validity {
            if now < cert.not_before {
                return Err(CertRejection::NotYetValid);
            }
            if now > cert.not_after {
                return Err(CertRejection::Expired);
            }
        }
        if self.identities.is_empty() || self.identities.iter().any(|id| id.matches(cert)) {
            Ok(())
        } else {
            Err(CertRejection::IdentityNotMatched)
        }
    }

    /// Number of configured identities (0: any certificate passes).
    pub fn identity_count(&self) -> usize {
        self.identities.len()
    }
}

/// Why a request's client certificate was refused. `Display` is the precise reason for
/// the log; the client only gets [`Self::rejection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CertRejection {
    #[error("no client certificate was presented")]
    Missing,
    #[error("the client certificate has expired (its notAfter is in the past)")]
    Expired,
    #[error("the client certificate is not yet valid (its notBefore is in the future)")]
    NotYetValid,
    #[error("the client certificate matches none of the configured identities")]
    IdentityNotMatched,
}

impl CertRejection {
    /// APIM's `LastError.Reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => reason::NOT_FOUND,
            Self::Expired => reason::EXPIRED,
            Self::NotYetValid => reason::NOT_YET_VALID,
            Self::IdentityNotMatched => reason::IDENTITY_NOT_MATCHED,
        }
    }

    /// The gateway's answer: 403 with APIM's JSON body and message ("Client certificate
    /// missing." or "Invalid client certificate."). APIM itself answers 401; the issue
    /// asks for 403, the usual status for a refused client certificate.
    pub fn rejection(&self) -> Rejection {
        let message = match self {
            Self::Missing => MISSING_MESSAGE,
            _ => INVALID_MESSAGE,
        };
        Rejection {
            status: StatusCode::FORBIDDEN,
            message: message.to_owned(),
            headers: HeaderMap::new(),
            reason: self.reason(),
        }
    }
}
