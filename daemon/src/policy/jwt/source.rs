//! Where a provider finds the token in a request.

use http::{HeaderMap, HeaderName, header};

/// A validated token location (see [`super::TokenSourceSettings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A header; `scheme` (e.g. `Bearer`) is required before the token when set.
    Header {
        name: HeaderName,
        scheme: Option<String>,
    },
    Query(String),
    Cookie(String),
}

/// What the request carries at the configured location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found<'a> {
    Token(&'a str),
    Absent,
    /// The location appears more than once, or holds bytes that cannot be a token: the
    /// gateway does not guess which value a backend or another check would read.
    Ambiguous(&'static str),
}

impl TokenSource {
    /// The default: `Authorization: Bearer <token>`.
    pub fn bearer() -> Self {
        Self::Header {
            name: header::AUTHORIZATION,
            scheme: Some("Bearer".into()),
        }
    }

    pub(crate) fn find<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Found<'a> {
        match self {
            Self::Header { name, scheme } => {
                let mut values = headers.get_all(name).iter();
                let Some(value) = values.next() else {
                    return Found::Absent;
                };
                if values.next().is_some() {
                    return Found::Ambiguous("the token header appears more than once");
                }
                let Ok(value) = value.to_str() else {
                    return Found::Ambiguous("the token header is not visible ASCII");
                };
                let token = match scheme {
                    Some(scheme) => match strip_scheme(value, scheme) {
                        Some(token) => token,
                        // Credentials of another scheme are not ours: no token.
                        None => return Found::Absent,
                    },
                    // `Authorization` without a configured scheme: a `Bearer` prefix is
                    // still the common form, so it is accepted and removed.
                    None if *name == header::AUTHORIZATION => {
                        strip_scheme(value, "Bearer").unwrap_or(value.trim())
                    }
                    None => value.trim(),
                };
                non_empty(token)
            }
            Self::Query(name) => {
                let Some(query) = query else {
                    return Found::Absent;
                };
                // Tokens are base64url and dots: they never need percent-decoding, so the
                // raw value is used and a percent-encoded one fails verification.
                let mut found = query
                    .split('&')
                    .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
                    .filter(|(key, _)| *key == name.as_str())
                    .map(|(_, value)| value);
                match (found.next(), found.next()) {
                    (None, _) => Found::Absent,
                    (Some(_), Some(_)) => {
                        Found::Ambiguous("the token query parameter appears more than once")
                    }
                    (Some(value), None) => non_empty(value),
                }
            }
            Self::Cookie(name) => {
                let mut found = Vec::new();
                for value in headers.get_all(header::COOKIE) {
                    let Ok(value) = value.to_str() else {
                        return Found::Ambiguous("a Cookie header is not visible ASCII");
                    };
                    for pair in value.split(';') {
                        if let Some((key, value)) = pair.trim().split_once('=')
                            && key == name.as_str()
                        {
                            found.push(value.trim_matches('"'));
                        }
                    }
                }
                match found.as_slice() {
                    [] => Found::Absent,
                    [value] => non_empty(value),
                    _ => Found::Ambiguous("the token cookie appears more than once"),
                }
            }
        }
    }
}

fn non_empty(token: &str) -> Found<'_> {
    if token.is_empty() {
        Found::Absent
    } else {
        Found::Token(token)
    }
}

/// `<scheme> 1*SP <token>`, the scheme compared case-insensitively (RFC 9110 §11.1).
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.trim_start().split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| rest.trim_matches(' '))
}
