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

/// `url` as logged: its query left out (`?...`), as it may carry a key or a
/// signature, and any user name or password (refused in the configuration, but a
/// discovery document's `jwks_uri` is the identity provider's).
pub(crate) fn url_for_log(url: &url::Url) -> String {
    if url.query().is_none() && !has_user_info(url) {
        return url.as_str().to_owned();
    }
    let mut shown = url.clone();
    // Fails only for URLs that cannot have a user (no host): none here.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_fragment(None);
    match url.query() {
        None => shown.to_string(),
        Some(_) => {
            shown.set_query(None);
            format!("{shown}?...")
        }
    }
}

/// True when `url` names a user or a password (`https://user:pass@host/`).
pub(crate) fn has_user_info(url: &url::Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn logged_urls_show_no_query_and_no_user() {
        let shown = |text: &str| url_for_log(&url::Url::parse(text).unwrap());
        assert_eq!(shown("https://idp.test/keys"), "https://idp.test/keys");
        assert_eq!(
            shown("https://idp.test/keys?appid=1&sig=secret#x"),
            "https://idp.test/keys?..."
        );
        assert_eq!(
            shown("https://u:pw@idp.test:8443/t"),
            "https://idp.test:8443/t"
        );
        assert!(has_user_info(
            &url::Url::parse("https://u@idp.test/").unwrap()
        ));
        assert!(has_user_info(
            &url::Url::parse("https://:pw@idp.test/").unwrap()
        ));
        assert!(!has_user_info(
            &url::Url::parse("https://idp.test/").unwrap()
        ));
    }
}
