//! Why a token was refused: the log detail, APIM's reason code and message.

/// Reason codes (APIM `LastError.Reason`) for the log and metrics. `TokenNotYetValid`
/// and `JwtKeysUnavailable` are rampart's: APIM folds the first into `JwtInvalid` and has
/// no equivalent of the second.
pub mod reason {
    pub const TOKEN_NOT_PRESENT: &str = "TokenNotPresent";
    pub const JWT_INVALID: &str = "JwtInvalid";
    pub const SIGNATURE_INVALID: &str = "TokenSignatureInvalid";
    pub const SIGNATURE_KEY_NOT_FOUND: &str = "TokenSignatureKeyNotFound";
    pub const EXPIRED: &str = "TokenExpired";
    pub const NOT_YET_VALID: &str = "TokenNotYetValid";
    pub const AUDIENCE_NOT_ALLOWED: &str = "TokenAudienceNotAllowed";
    pub const ISSUER_NOT_ALLOWED: &str = "TokenIssuerNotAllowed";
    pub const CLAIM_NOT_FOUND: &str = "TokenClaimNotFound";
    pub const CLAIM_VALUE_NOT_ALLOWED: &str = "TokenClaimValueNotAllowed";
    pub const KEYS_UNAVAILABLE: &str = "JwtKeysUnavailable";
}

const NOT_PRESENT_MESSAGE: &str = "JWT not present.";
const INVALID_MESSAGE: &str = "Invalid JWT.";
const KEYS_UNAVAILABLE_MESSAGE: &str = "Identity provider keys are not available.";

/// Why a token was refused. `Display` is the precise cause for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtRejection {
    #[error("no token at the configured location")]
    NotPresent,
    #[error("malformed token: {detail}")]
    Malformed { detail: String },
    #[error("token of {bytes} bytes is over the limit of {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("token header has \"crit\"; no critical extension is supported")]
    CriticalHeader,
    #[error("alg {alg} is not among the provider's algorithms")]
    AlgorithmNotAllowed { alg: String },
    #[error("no key {kid:?} in the provider's key set")]
    KeyNotFound { kid: String },
    #[error("signature does not verify with any key of the set ({tried} tried)")]
    SignatureInvalid { tried: usize },
    #[error("token expired at {exp} (now {now}, skew {skew} s)")]
    Expired { exp: u64, now: u64, skew: u64 },
    #[error("token not valid before {nbf} (now {now}, skew {skew} s)")]
    NotYetValid { nbf: u64, now: u64, skew: u64 },
    #[error("claim {claim} is missing or not a number")]
    BadTimeClaim { claim: &'static str },
    #[error("issuer not allowed or missing")]
    IssuerNotAllowed,
    #[error("audience not allowed or missing")]
    AudienceNotAllowed,
    #[error("missing required claims: {}", names.join(", "))]
    ClaimsMissing { names: Vec<String> },
    #[error("claim {name} has no accepted value")]
    ClaimValueNotAllowed { name: String, value: String },
    #[error("the provider's key set was never loaded")]
    KeysUnavailable,
    /// A claim sent to the backend as a header holds what no header value may
    /// (a control character: CR, LF, NUL, ...), or starts or ends with a space or
    /// tab (a malformed field over HTTP/2, RFC 9113 §8.2.1, for which a backend may
    /// drop the whole connection, other clients' requests included). Refused rather
    /// than sent without it (or with its `default`): the backend would take the
    /// request for one without that claim.
    #[error("claim {claim} cannot be sent as header {header}: {problem}")]
    ClaimNotHeaderSafe {
        claim: String,
        header: String,
        problem: &'static str,
    },
}

impl JwtRejection {
    /// APIM's reason code, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotPresent => reason::TOKEN_NOT_PRESENT,
            Self::Malformed { .. }
            | Self::TooLarge { .. }
            | Self::CriticalHeader
            | Self::AlgorithmNotAllowed { .. }
            | Self::BadTimeClaim { .. }
            | Self::ClaimNotHeaderSafe { .. } => reason::JWT_INVALID,
            Self::KeyNotFound { .. } => reason::SIGNATURE_KEY_NOT_FOUND,
            Self::SignatureInvalid { .. } => reason::SIGNATURE_INVALID,
            Self::Expired { .. } => reason::EXPIRED,
            Self::NotYetValid { .. } => reason::NOT_YET_VALID,
            Self::IssuerNotAllowed => reason::ISSUER_NOT_ALLOWED,
            Self::AudienceNotAllowed => reason::AUDIENCE_NOT_ALLOWED,
            Self::ClaimsMissing { .. } => reason::CLAIM_NOT_FOUND,
            Self::ClaimValueNotAllowed { .. } => reason::CLAIM_VALUE_NOT_ALLOWED,
            Self::KeysUnavailable => reason::KEYS_UNAVAILABLE,
        }
    }

    /// APIM's client-facing message (before `failure_message` replaces it).
    pub(crate) fn message(&self) -> String {
        match self {
            Self::NotPresent => NOT_PRESENT_MESSAGE.to_owned(),
            Self::ClaimsMissing { names } => format!(
                "JWT token is missing the following claims: {}. Access denied.",
                names.join(", ")
            ),
            Self::ClaimValueNotAllowed { name, value } => {
                format!("Claim {name} value of {value} is not allowed. Access denied.")
            }
            Self::KeysUnavailable => KEYS_UNAVAILABLE_MESSAGE.to_owned(),
            _ => INVALID_MESSAGE.to_owned(),
        }
    }
}
