//! Finding the key in a request, and removing it before the request is forwarded.

use std::borrow::Cow;

use http::HeaderMap;

/// Where the key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLocation {
    Header,
    Query,
}

/// A key as sent by the client (header or query value, percent-decoded for the query),
/// borrowed from the request unless decoding changed it. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub value: Cow<'a, [u8]>,
    pub location: KeyLocation,
}

impl std::fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresentedKey")
            .field("value", &"<redacted>")
            .field("location", &self.location)
            .finish()
    }
}

/// APIM's order: the header if present, else the query parameter ("the query parameter is
/// checked only if the header isn't present"). An empty header value counts as absent.
/// `query` is the raw query string (without `?`).
pub fn extract_key<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    header_name: &str,
    query_param: &str,
) -> Option<PresentedKey<'a>> {
    let from_header = headers
        .get_all(header_name)
        .iter()
        .map(|v| v.as_bytes())
        .find(|v| !v.is_empty());
    if let Some(value) = from_header {
        return Some(PresentedKey {
            value: Cow::Borrowed(value),
            location: KeyLocation::Header,
        });
    }
    let query = query?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, value)| name == query_param && !value.is_empty())
        .map(|(_, value)| PresentedKey {
            value: match value {
                Cow::Borrowed(value) => Cow::Borrowed(value.as_bytes()),
                Cow::Owned(value) => Cow::Owned(value.into_bytes()),
            },
            location: KeyLocation::Query,
        })
}

/// Whether the request carries a key where [`extract_key`] looks, read the same way
/// (the query by `form_urlencoded`, which borrows unless a name or value has an
/// escape), without copying the key. For APIs that check no key but still remove
/// it before forwarding.
pub fn carries_key(
    headers: &HeaderMap,
    query: Option<&str>,
    header_name: &str,
    query_param: &str,
) -> bool {
    headers
        .get_all(header_name)
        .iter()
        .any(|value| !value.is_empty())
        || query.is_some_and(|query| {
            form_urlencoded::parse(query.as_bytes())
                .any(|(name, value)| name == query_param && !value.is_empty())
        })
}

/// Removes the key header and every `query_param` parameter, so the key never reaches the
/// backend. Returns the new query string (`None` if nothing is left); the other parameters
/// are kept byte for byte, in order.
pub fn strip_key(
    headers: &mut HeaderMap,
    query: Option<&str>,
    header_name: &str,
    query_param: &str,
) -> Option<String> {
    headers.remove(header_name);
    let query = query?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            form_urlencoded::parse(pair.as_bytes())
                .next()
                .is_none_or(|(name, _)| name != query_param)
        })
        .collect();
    let joined = kept.join("&");
    if joined.is_empty() {
        None
    } else {
        Some(joined)
    }
}
