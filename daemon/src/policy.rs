//! Per-request checks, one module per concern.

use http::{HeaderMap, StatusCode};

pub mod backend_auth;
pub mod ban;
pub mod client_cert;
pub mod cors;
pub mod headers;
pub mod jwt;
pub mod keys;
pub mod quota;
pub mod throttle;
pub mod validate;

/// A request refused by a policy or by the gateway itself: what the client gets.
/// Constructors for the gateway's own refusals live in `gateway::error`.
///
/// The body is APIM's error envelope built from `status` and `message` (see
/// [`Rejection::body`]); `headers` are the extra response headers the check asks for
/// (`WWW-Authenticate`, `Retry-After`, ...). `reason` is APIM's `LastError` reason code:
/// it goes to the log and metrics, never into the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub message: String,
    pub headers: HeaderMap,
    pub reason: &'static str,
}

impl Rejection {
    /// APIM's wire form `{ "statusCode": N, "message": "..." }`: a space after `{`, after
    /// each `:` and `,`, before `}`, no trailing newline (the captured 401 has exactly
    /// that length). Sent with `Content-Type: application/json`.
    pub fn body(&self) -> String {
        // serde_json escapes the message; serialising a &str cannot fail.
        let message = serde_json::Value::from(self.message.as_str()).to_string();
        format!(
            "{{ \"statusCode\": {}, \"message\": {} }}",
            self.status.as_u16(),
            message
        )
    }
}
