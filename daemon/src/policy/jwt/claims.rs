//! `required_claims`: APIM's `<required-claims>` (reference/apim.md §2.3).

use serde::Deserialize;
use serde_json::{Map, Value};

/// How the values of one required claim must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimMatch {
    /// Every configured value must be in the token (APIM's default).
    #[default]
    All,
    /// At least one configured value must be in the token.
    Any,
}

/// A claim the token must carry, as written in `[[jwt_provider.required_claims]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredClaim {
    pub name: String,
    /// Accepted values; empty means the claim only has to be present.
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default, rename = "match")]
    pub match_: ClaimMatch,
    /// Splits a string claim into values, e.g. `" "` for `scp`. JSON arrays are
    /// matched element by element without it.
    #[serde(default)]
    pub separator: Option<String>,
}

/// The first unmet requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimFailure {
    /// Every required claim that is absent (APIM names them all).
    Missing(Vec<String>),
    /// A present claim without an accepted value; `value` is the token's value,
    /// shortened, for APIM's message.
    ValueNotAllowed { name: String, value: String },
}

/// Longest claim value echoed in a message.
const MAX_ECHOED_VALUE: usize = 100;

pub(crate) fn check(
    required: &[RequiredClaim],
    claims: &Map<String, Value>,
) -> Result<(), ClaimFailure> {
    let missing: Vec<String> = required
        .iter()
        .filter(|r| claims.get(&r.name).is_none_or(Value::is_null))
        .map(|r| r.name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(ClaimFailure::Missing(missing));
    }
    for rule in required {
        let Some(value) = claims.get(&rule.name) else {
            continue;
        };
        if rule.values.is_empty() {
            continue;
        }
        let present = values_of(value, rule.separator.as_deref());
        let has = |wanted: &String| present.iter().any(|p| p == wanted);
        let ok = match rule.match_ {
            ClaimMatch::All => rule.values.iter().all(has),
            ClaimMatch::Any => rule.values.iter().any(has),
        };
        if !ok {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let value = match text.char_indices().nth(MAX_ECHOED_VALUE) {
                Some((at, _)) => format!("{}…", &text[..at]),
                None => text,
            };
            return Err(ClaimFailure::ValueNotAllowed {
                name: rule.name.clone(),
                value,
            });
        }
    }
    Ok(())
}

/// A claim's values as strings: a string (split by `separator` when set), the elements
/// of an array (each split too), or the JSON text of a number or boolean.
fn values_of(value: &Value, separator: Option<&str>) -> Vec<String> {
    fn push(out: &mut Vec<String>, value: &Value, separator: Option<&str>) {
        match value {
            Value::String(s) => match separator {
                Some(sep) if !sep.is_empty() => out.extend(
                    s.split(sep)
                        .filter(|part| !part.is_empty())
                        .map(str::to_owned),
                ),
                _ => out.push(s.clone()),
            },
            Value::Number(_) | Value::Bool(_) => out.push(value.to_string()),
            Value::Null | Value::Array(_) | Value::Object(_) => {}
        }
    }
    let mut out = Vec::new();
    match value {
        Value::Array(items) => items
            .iter()
            .for_each(|item| push(&mut out, item, separator)),
        other => push(&mut out, other, separator),
    }
    out
}
