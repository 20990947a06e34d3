//! Header rules per API, after APIM's `set-header` policy (reference/apim.md §12): set,
//! append or remove request headers before forwarding, and response headers before
//! returning (e.g. remove `Server` and `X-Powered-By`).
//!
//! Some headers are off limits (see [`forbidden_reason`]): rules cannot touch message
//! framing, hop-by-hop headers, the routing and client-identity headers the gateway
//! owns, or CORS headers, so a rule can never open a way around another check.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::gateway::remove_client_copies;

#[cfg(test)]
mod tests;

/// Header rules of one API (`[api.headers]`), as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesSettings {
    /// Applied in order to the request before it is forwarded. Default: none.
    #[serde(default)]
    pub request: Vec<HeaderRuleSettings>,
    /// Applied in order to the backend's response before it is returned. Default: none.
    #[serde(default)]
    pub response: Vec<HeaderRuleSettings>,
}

/// One rule: `{ name = "X-Env", action = "set", values = ["prod"] }`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRuleSettings {
    /// Header name (case-insensitive).
    pub name: String,
    /// What to do. Default: `set`.
    #[serde(default)]
    pub action: HeaderAction,
    /// Values for `set` and `append` (at least one; several become several header
    /// lines); none for `remove`.
    #[serde(default)]
    pub values: Vec<String>,
}

// Values may be credentials for the backend: Debug shows how many, not what.
impl fmt::Debug for HeaderRuleSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderRuleSettings")
            .field("name", &self.name)
            .field("action", &self.action)
            .field("values", &format_args!("[{} redacted]", self.values.len()))
            .finish()
    }
}

/// APIM's `exists-action`, without `skip`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderAction {
    /// Replace every existing value (APIM `override`).
    #[default]
    Set,
    /// Add the values after the existing ones (APIM `append`).
    Append,
    /// Remove the header entirely (APIM `delete`).
    Remove,
}

/// Which message a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Request => "request",
            Self::Response => "response",
        })
    }
}

/// One error in [`HeaderRulesSettings`]; [`HeaderRulesSettings::validate`] reports all.
/// `index` counts rules from 1 within their side. Values are never printed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderRuleError {
    #[error("{side} header rule {index}: {name:?} is not a valid header name")]
    InvalidName {
        side: Side,
        index: usize,
        name: String,
    },
    #[error(
        "{side} header rule {index} ({name}): value {value_index} is not a valid header \
         value (control characters such as CR or LF, and non-ASCII text, are not allowed)"
    )]
    InvalidValue {
        side: Side,
        index: usize,
        name: String,
        value_index: usize,
    },
    #[error("{side} header rule {index} ({name}): {action:?} needs at least one value")]
    MissingValue {
        side: Side,
        index: usize,
        name: String,
        action: HeaderAction,
    },
    #[error("{side} header rule {index} ({name}): remove takes no values")]
    ValuesOnRemove {
        side: Side,
        index: usize,
        name: String,
    },
    #[error("{side} header rule {index}: {name} cannot be changed by a rule: {why}")]
    Forbidden {
        side: Side,
        index: usize,
        name: String,
        why: &'static str,
    },
}

/// Why a header may not be set, appended or removed by a rule on `side`, or `None`.
///
/// - Framing (`Content-Length`, `Transfer-Encoding`) and hop-by-hop headers
///   (`Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`,
///   `Proxy-Authenticate`, `Proxy-Authorization`): hyper derives framing from the body,
///   and a mismatch is how request smuggling and response splitting start; hop-by-hop
///   headers are stripped by the proxy anyway. APIM forbids the same set.
/// - `Content-Encoding`: the gateway neither re-encodes nor decodes bodies, so changing
///   it would make the backend or the client misread the bytes (and a request body
///   relabelled after validation would no longer be what was validated).
/// - Request `Host`: the route (and so every policy) was chosen from it; the gateway
///   sets the backend's host itself.
/// - Request `Forwarded`, `X-Forwarded-*`, `X-Real-IP`: the gateway sets these from
///   the connection and its trusted proxies; a rule could forge the client address a
///   backend relies on.
/// - Response `Access-Control-*`: owned by the CORS policy; a rule could grant any
///   origin (or credentials) without the origin check.
pub fn forbidden_reason(side: Side, name: &HeaderName) -> Option<&'static str> {
    let name = name.as_str();
    match name {
        "content-length" | "transfer-encoding" => {
            return Some("message framing is set by the gateway");
        }
        "connection"
        | "keep-alive"
        | "proxy-connection"
        | "te"
        | "trailer"
        | "upgrade"
        | "proxy-authenticate"
        | "proxy-authorization" => {
            return Some("hop-by-hop headers apply to one connection only");
        }
        "content-encoding" => return Some("the gateway does not re-encode bodies"),
        _ => {}
    }
    match side {
        Side::Request => match name {
            "host" => Some("routing is decided on the client's Host"),
            "forwarded" | "x-real-ip" => Some("client identity headers are set by the gateway"),
            _ if name.starts_with("x-forwarded-") => {
                Some("client identity headers are set by the gateway")
            }
            _ => None,
        },
        Side::Response if name.starts_with("access-control-") => {
            Some("CORS headers are set by the cors policy")
        }
        Side::Response => None,
    }
}

#[derive(Clone)]
enum Operation {
    Set(Vec<HeaderValue>),
    Append(Vec<HeaderValue>),
    Remove,
}

#[derive(Clone)]
struct Rule {
    name: HeaderName,
    operation: Operation,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (action, count) = match &self.operation {
            Operation::Set(values) => ("set", values.len()),
            Operation::Append(values) => ("append", values.len()),
            Operation::Remove => ("remove", 0),
        };
        write!(f, "{action} {} ({count} values)", self.name)
    }
}

/// Validated header rules of one API.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    request: Vec<Rule>,
    response: Vec<Rule>,
}

impl HeaderRulesSettings {
    /// Checks every rule, reporting every error found.
    pub fn validate(&self) -> Result<HeaderRules, Vec<HeaderRuleError>> {
        let mut errors = Vec::new();
        let request = compile_side(Side::Request, &self.request, &mut errors);
        let response = compile_side(Side::Response, &self.response, &mut errors);
        if errors.is_empty() {
            Ok(HeaderRules { request, response })
        } else {
            Err(errors)
        }
    }
}

fn compile_side(
    side: Side,
    settings: &[HeaderRuleSettings],
    errors: &mut Vec<HeaderRuleError>,
) -> Vec<Rule> {
    let mut rules = Vec::with_capacity(settings.len());
    for (position, setting) in settings.iter().enumerate() {
        let index = position + 1;
        if let Some(rule) = compile_rule(side, index, setting, errors) {
            rules.push(rule);
        }
    }
    rules
}

fn compile_rule(
    side: Side,
    index: usize,
    setting: &HeaderRuleSettings,
    errors: &mut Vec<HeaderRuleError>,
) -> Option<Rule> {
    let Ok(name) = HeaderName::from_bytes(setting.name.as_bytes()) else {
        errors.push(HeaderRuleError::InvalidName {
            side,
            index,
            name: setting.name.clone(),
        });
        return None;
    };
    if let Some(why) = forbidden_reason(side, &name) {
        errors.push(HeaderRuleError::Forbidden {
            side,
            index,
            name: name.to_string(),
            why,
        });
        return None;
    }

    let error_count = errors.len();
    let mut values = Vec::with_capacity(setting.values.len());
    for (position, text) in setting.values.iter().enumerate() {
        // `from_str` refuses CR, LF and other controls; non-ASCII is refused too, as
        // peers disagree on how to decode it (RFC 9110 calls it obsolete).
        match HeaderValue::from_str(text) {
            Ok(value) if text.is_ascii() => values.push(value),
            _ => errors.push(HeaderRuleError::InvalidValue {
                side,
                index,
                name: name.to_string(),
                value_index: position + 1,
            }),
        }
    }
    match setting.action {
        HeaderAction::Remove if !setting.values.is_empty() => {
            errors.push(HeaderRuleError::ValuesOnRemove {
                side,
                index,
                name: name.to_string(),
            });
        }
        HeaderAction::Set | HeaderAction::Append if setting.values.is_empty() => {
            errors.push(HeaderRuleError::MissingValue {
                side,
                index,
                name: name.to_string(),
                action: setting.action,
            });
        }
        _ => {}
    }
    if errors.len() != error_count {
        return None;
    }

    let operation = match setting.action {
        HeaderAction::Set => Operation::Set(values),
        HeaderAction::Append => Operation::Append(values),
        HeaderAction::Remove => Operation::Remove,
    };
    Some(Rule { name, operation })
}

impl HeaderRules {
    /// Applies the request rules, in order, to the headers about to be forwarded.
    /// `set` and `remove` also drop the client's look-alikes of the header (`X_Env`
    /// for `X-Env`): CGI-style servers read both as one variable, so a look-alike
    /// would stand in for the header a rule scrubbed or set.
    pub fn apply_request(&self, headers: &mut HeaderMap) {
        apply(&self.request, headers, Side::Request);
    }

    /// Applies the response rules, in order, to the backend's response headers.
    pub fn apply_response(&self, headers: &mut HeaderMap) {
        apply(&self.response, headers, Side::Response);
    }

    /// Whether there is nothing to do (lets the gateway skip the call).
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

fn apply(rules: &[Rule], headers: &mut HeaderMap, side: Side) {
    // The header and, on the request, its look-alikes with `_` for `-`.
    let remove = |headers: &mut HeaderMap, name: &HeaderName| match side {
        // `copy` is read with `-` for `_`; so is the rule's name (`X_Env` too).
        Side::Request => remove_client_copies(headers, |copy| {
            let dashed = name
                .as_str()
                .bytes()
                .map(|b| if b == b'_' { b'-' } else { b });
            copy.bytes().eq(dashed)
        }),
        Side::Response => {
            headers.remove(name);
        }
    };
    for rule in rules {
        match &rule.operation {
            Operation::Set(values) => {
                remove(headers, &rule.name);
                for value in values {
                    headers.append(rule.name.clone(), value.clone());
                }
            }
            Operation::Append(values) => {
                for value in values {
                    headers.append(rule.name.clone(), value.clone());
                }
            }
            Operation::Remove => remove(headers, &rule.name),
        }
    }
}
