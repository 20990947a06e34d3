//! Request validation per API, after APIM's `validate-content` policy (reference/apim.md
//! §11) with the action fixed to `prevent`: allowed content types, JSON bodies that must
//! parse, an optional JSON Schema, and a size limit for the bodies that are validated.
//!
//! The gateway calls [`RequestValidator::check_head`] with the request headers; when
//! it answers [`BodyPlan::Buffer`], the gateway collects the body up to the limit
//! (reading at most `limit + 1` bytes) and calls [`RequestValidator::check_body`] with
//! the bytes. Bodies that need no validation are streamed untouched.
//!
//! Failures are [`RequestInvalid`] errors; [`RequestInvalid::to_rejection`] gives the
//! [`Rejection`] with status 400 (413 for a body over the limit) and a message that
//! names the problem without echoing the body or parser internals.

use std::path::PathBuf;

use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use jsonschema::error::ValidationErrorKind;
use serde::Deserialize;

use super::Rejection;

pub(crate) mod json;
#[cfg(test)]
mod tests;

/// Reason codes (APIM `LastError.Reason` style) for the log and metrics.
pub mod reason {
    pub const CONTENT_TYPE_MISSING: &str = "ContentTypeMissing";
    pub const CONTENT_TYPE_INVALID: &str = "ContentTypeInvalid";
    pub const CONTENT_TYPE_NOT_ALLOWED: &str = "ContentTypeNotAllowed";
    pub const CONTENT_ENCODING_NOT_SUPPORTED: &str = "ContentEncodingNotSupported";
    pub const BODY_TOO_LARGE: &str = "BodySizeLimitExceeded";
    pub const JSON_INVALID: &str = "JsonInvalid";
    pub const SCHEMA_VIOLATION: &str = "JsonSchemaViolation";
}

/// Why a request failed validation. `Display` is the client-facing message (APIM's
/// `validate-content` texts where it has them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestInvalid {
    #[error("Request's content type is not specified; a request body needs a Content-Type header.")]
    ContentTypeMissing,
    #[error("Request's Content-Type header is not a valid media type.")]
    ContentTypeInvalid,
    /// `media_type` is the parsed `type/subtype`: token characters only, safe to echo.
    #[error("Unspecified content type {media_type} is not allowed.")]
    ContentTypeNotAllowed { media_type: String },
    #[error(
        "Request's body is compressed (Content-Encoding) and cannot be validated; \
         send it uncompressed."
    )]
    ContentEncodingNotSupported,
    /// `size` when known (Content-Length or the collected length), `None` when reading
    /// stopped at `limit + 1` bytes.
    #[error(
        "Request's body {}exceeds the limit of {limit} bytes.",
        size.map(|size| format!("is {size} bytes long and it ")).unwrap_or_default()
    )]
    BodyTooLarge { size: Option<u64>, limit: u64 },
    #[error("Request's body is not valid JSON: {problem} at line {line}, column {column}.")]
    JsonInvalid {
        problem: &'static str,
        line: usize,
        column: usize,
    },
    /// Valid JSON the gateway does not parse: deeper than serde_json's recursion limit,
    /// or a number no `f64` holds (`1e400`).
    #[error(
        "Request's body is JSON the gateway does not accept: {problem} at line {line}, column {column}."
    )]
    JsonNotAccepted {
        problem: &'static str,
        line: usize,
        column: usize,
    },
    /// `key` is the key as a JSON string (cut to [`MAX_KEY_CHARS`]), `object` the JSON
    /// pointer of the object that has it twice.
    #[error("Request's body has a duplicate key {key} in the object at {object}.")]
    JsonDuplicateKey { key: String, object: String },
    /// `location` is a JSON pointer into the body, `detail` the schema rule with the
    /// body's values masked.
    #[error("Request's body does not conform to the schema at {location}: {detail}.")]
    SchemaViolation { location: String, detail: String },
}

impl RequestInvalid {
    /// 413 for a body over the limit, 400 for everything else.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Reason code for the log and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ContentTypeMissing => reason::CONTENT_TYPE_MISSING,
            Self::ContentTypeInvalid => reason::CONTENT_TYPE_INVALID,
            Self::ContentTypeNotAllowed { .. } => reason::CONTENT_TYPE_NOT_ALLOWED,
            Self::ContentEncodingNotSupported => reason::CONTENT_ENCODING_NOT_SUPPORTED,
            Self::BodyTooLarge { .. } => reason::BODY_TOO_LARGE,
            Self::JsonInvalid { .. }
            | Self::JsonNotAccepted { .. }
            | Self::JsonDuplicateKey { .. } => reason::JSON_INVALID,
            Self::SchemaViolation { .. } => reason::SCHEMA_VIOLATION,
        }
    }

    /// The gateway's answer: APIM's JSON error body with [`Self::status`].
    pub fn to_rejection(&self) -> Rejection {
        Rejection {
            status: self.status(),
            message: self.to_string(),
            headers: HeaderMap::new(),
            reason: self.reason(),
        }
    }
}

/// Longest schema error text (and JSON pointer) put into a message; the rest is cut.
const MAX_DETAIL_CHARS: usize = 300;

/// Longest duplicate key put into a message; the rest is cut.
const MAX_KEY_CHARS: usize = 64;

/// Default for [`ValidationSettings::max_body_bytes`]: 100 KiB, APIM's long-standing
/// `validate-content` limit.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 102_400;

/// Request validation settings of one API (`[api.validation]`), as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSettings {
    /// Media types a request body may have (`type/subtype`, case-insensitive; parameters
    /// such as `charset` are ignored). A request with a body and another or no
    /// `Content-Type` gets 400. Default: empty, meaning any content type, or, when a
    /// JSON Schema is set, the JSON types only (`application/json` and `+json`).
    #[serde(default)]
    pub content_types: Vec<String>,
    /// Bodies declared as JSON (`application/json` or any `+json` type) must parse.
    /// Default: `true`.
    #[serde(default = "default_true")]
    pub require_valid_json: bool,
    /// A JSON Schema (draft 4 to 2020-12, detected from `$schema`) that JSON bodies must
    /// satisfy, as a file read at load time. Remote and file `$ref`s are never followed.
    /// Default: none.
    #[serde(default)]
    pub json_schema_file: Option<PathBuf>,
    /// The same schema written inline (a TOML table); exclusive with `json_schema_file`.
    #[serde(default)]
    pub json_schema: Option<serde_json::Value>,
    /// Largest body, in bytes, that is buffered for validation; a larger JSON body gets
    /// 413. Default: [`DEFAULT_MAX_BODY_BYTES`].
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

fn default_true() -> bool {
    true
}

fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

impl Default for ValidationSettings {
    fn default() -> Self {
        Self {
            content_types: Vec::new(),
            require_valid_json: true,
            json_schema_file: None,
            json_schema: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// One error in [`ValidationSettings`]; [`ValidationSettings::validate`] reports all.
#[derive(Debug, thiserror::Error)]
pub enum ValidationConfigError {
    #[error("content_types: {media_type:?} is not a media type (expected type/subtype)")]
    InvalidContentType { media_type: String },
    #[error(
        "content_types: {media_type:?} is a pattern, but types are matched exactly: list \
         each type (such as application/json), or leave content_types out for any"
    )]
    WildcardContentType { media_type: String },
    #[error(
        "a json schema is set but content_types lists no JSON type (application/json or a \
         +json type), so the schema would never be applied: list one, or leave \
         content_types out for the JSON types only"
    )]
    SchemaWithoutJsonType,
    #[error("max_body_bytes must be greater than 0")]
    ZeroMaxBody,
    #[error("json_schema and json_schema_file are exclusive: keep one")]
    TwoSchemas,
    #[error("json_schema_file {path}: cannot be read")]
    SchemaUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("json_schema_file {path}: not JSON")]
    SchemaNotJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("json schema is not a valid schema: {detail}")]
    SchemaInvalid { detail: String },
    #[error("a json schema is set but require_valid_json = false: the schema needs parsed JSON")]
    SchemaWithoutJson,
}

/// Validated settings, ready for per-request checks.
#[derive(Debug)]
pub struct RequestValidator {
    /// Lowercased `type/subtype` essences; empty means any (see `json_types_only`).
    content_types: Vec<String>,
    /// A schema is set and `content_types` is empty: a body must be declared as JSON,
    /// else the schema would be skipped for a body many backends parse as JSON anyway.
    json_types_only: bool,
    require_valid_json: bool,
    schema: Option<jsonschema::Validator>,
    max_body_bytes: u64,
}

impl ValidationSettings {
    /// Checks the settings, reads and compiles the schema, reporting every error found.
    pub fn validate(&self) -> Result<RequestValidator, Vec<ValidationConfigError>> {
        let mut errors = Vec::new();

        let mut content_types = Vec::with_capacity(self.content_types.len());
        for text in &self.content_types {
            match MediaType::parse(text) {
                // `*` is a token character: `application/*` would parse, and then
                // be compared literally with what clients send, refusing them all.
                Some(media) if media.essence.contains('*') => {
                    errors.push(ValidationConfigError::WildcardContentType {
                        media_type: text.clone(),
                    });
                }
                Some(media) if media.params_absent => content_types.push(media),
                _ => errors.push(ValidationConfigError::InvalidContentType {
                    media_type: text.clone(),
                }),
            }
        }
        if self.max_body_bytes == 0 {
            errors.push(ValidationConfigError::ZeroMaxBody);
        }

        let schema_value = match (&self.json_schema, &self.json_schema_file) {
            (Some(_), Some(_)) => {
                errors.push(ValidationConfigError::TwoSchemas);
                None
            }
            (Some(inline), None) => Some(inline.clone()),
            (None, Some(path)) => match read_schema(path) {
                Ok(value) => Some(value),
                Err(err) => {
                    errors.push(err);
                    None
                }
            },
            (None, None) => None,
        };
        let schema = match schema_value {
            Some(value) => {
                if !self.require_valid_json {
                    errors.push(ValidationConfigError::SchemaWithoutJson);
                }
                // Only bodies declared as JSON are checked against the schema.
                if !content_types.is_empty() && !content_types.iter().any(MediaType::is_json) {
                    errors.push(ValidationConfigError::SchemaWithoutJsonType);
                }
                match compile_schema(&value) {
                    Ok(validator) => Some(validator),
                    Err(err) => {
                        errors.push(err);
                        None
                    }
                }
            }
            None => None,
        };

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RequestValidator {
            json_types_only: content_types.is_empty() && schema.is_some(),
            content_types: content_types.into_iter().map(|m| m.essence).collect(),
            require_valid_json: self.require_valid_json,
            schema,
            max_body_bytes: self.max_body_bytes,
        })
    }
}

fn read_schema(path: &PathBuf) -> Result<serde_json::Value, ValidationConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        ValidationConfigError::SchemaUnreadable {
            path: path.clone(),
            source,
        }
    })?;
    serde_json::from_str(&text).map_err(|source| ValidationConfigError::SchemaNotJson {
        path: path.clone(),
        source,
    })
}

/// Compiles a JSON Schema. Without the crate's `resolve-http`/`resolve-file` features,
/// a `$ref` outside the document fails here, at load time, instead of fetching anything.
/// `format` is asserted in every draft (2019-09 and 2020-12 make it an annotation by
/// default), as APIM's `validate-content` checks formats; unknown formats are ignored.
pub fn compile_schema(
    schema: &serde_json::Value,
) -> Result<jsonschema::Validator, ValidationConfigError> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|err| ValidationConfigError::SchemaInvalid {
            detail: err.to_string(),
        })
}

/// What the gateway does with the body after [`RequestValidator::check_head`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlan {
    /// Forward the body as it comes (no body, or nothing to validate in it), at
    /// most [`RequestValidator::max_body_bytes`] of it.
    Stream,
    /// Collect the body, reading at most `limit + 1` bytes, then call
    /// [`RequestValidator::check_body`] (or [`RequestValidator::too_large`] when the
    /// limit was passed).
    Buffer { limit: u64 },
}

impl RequestValidator {
    /// Checks what the headers declare. `has_body` comes from the gateway (hyper knows
    /// whether the request has a body; an HTTP/2 body may come without Content-Length).
    /// An empty body is no body, however it is framed: `Content-Length: 0` here (over
    /// HTTP/2 it may still come with an empty DATA frame), and an empty chunked or
    /// HTTP/2 body in [`Self::check_body`].
    pub fn check_head(
        &self,
        headers: &HeaderMap,
        has_body: bool,
    ) -> Result<BodyPlan, RequestInvalid> {
        if !has_body || declared_length(headers) == Some(0) {
            return Ok(BodyPlan::Stream);
        }
        let media = content_type(headers)?;
        if !self.content_types.is_empty() {
            let Some(media) = &media else {
                return Err(RequestInvalid::ContentTypeMissing);
            };
            if !self.content_types.contains(&media.essence) {
                return Err(RequestInvalid::ContentTypeNotAllowed {
                    media_type: media.essence.clone(),
                });
            }
        } else if self.json_types_only {
            match &media {
                None => return Err(RequestInvalid::ContentTypeMissing),
                Some(media) if !media.is_json() => {
                    return Err(RequestInvalid::ContentTypeNotAllowed {
                        media_type: media.essence.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        // Every body is held to `max_body_bytes` (APIM's `max-size`), by its
        // Content-Length here, and while it streams (`BodyPlan::Stream`).
        if let Some(length) = declared_length(headers)
            && length > self.max_body_bytes
        {
            return Err(self.too_large(Some(length)));
        }
        let is_json = media.as_ref().is_some_and(MediaType::is_json);
        if !(is_json && self.require_valid_json) {
            return Ok(BodyPlan::Stream);
        }
        // A compressed body cannot be parsed here; forwarding it unparsed would let any
        // JSON past the check, so it is refused.
        if let Some(encoding) = headers.get(CONTENT_ENCODING)
            && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
        {
            return Err(RequestInvalid::ContentEncodingNotSupported);
        }
        Ok(BodyPlan::Buffer {
            limit: self.max_body_bytes,
        })
    }

    /// Validates a collected body. The headers are those given to `check_head`. An
    /// empty body passes, as a request without one does (a chunked body of only the
    /// last chunk, an HTTP/2 body of one empty DATA frame).
    pub fn check_body(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), RequestInvalid> {
        let length = u64::try_from(body.len()).unwrap_or(u64::MAX);
        if length > self.max_body_bytes {
            return Err(self.too_large(Some(length)));
        }
        if body.is_empty() {
            return Ok(());
        }
        let is_json = content_type(headers)?
            .as_ref()
            .is_some_and(MediaType::is_json);
        if !(is_json && self.require_valid_json) {
            return Ok(());
        }
        let value = json::parse(body).map_err(|refused| match refused {
            json::Refused::Json(err) => bad_json(&err),
            json::Refused::DuplicateKey { key, object } => duplicate_key(&key, &object),
        })?;
        if let Some(schema) = &self.schema
            && let Some(error) = schema.iter_errors(&value).next()
        {
            return Err(schema_violation(&error));
        }
        Ok(())
    }

    /// The 413 for a body over the limit; `size` when known (Content-Length or the
    /// collected length), `None` when reading stopped at `limit + 1` bytes.
    /// The most body bytes a request may send (`max_body_bytes`).
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes
    }

    pub fn too_large(&self, size: Option<u64>) -> RequestInvalid {
        RequestInvalid::BodyTooLarge {
            size,
            limit: self.max_body_bytes,
        }
    }
}

/// Names the kind of error and where, never serde_json's own text (which could change
/// between versions and talks about Rust types).
fn bad_json(err: &serde_json::Error) -> RequestInvalid {
    use serde_json::error::Category;
    let (line, column) = (err.line(), err.column());
    let problem = match err.classify() {
        Category::Eof => "unexpected end of input",
        // serde_json counts valid JSON it does not take among its syntax errors too; only
        // its text tells them apart (read on this error path only).
        Category::Syntax => {
            let text = err.to_string();
            let refused = if text.starts_with("recursion limit exceeded") {
                Some("nested deeper than 128 levels")
            } else if text.starts_with("number out of range") {
                Some("a number out of range")
            } else {
                None
            };
            if let Some(problem) = refused {
                return RequestInvalid::JsonNotAccepted {
                    problem,
                    line,
                    column,
                };
            }
            "syntax error"
        }
        // Parsing into a `Value` only fails with the two above; keep a neutral text for
        // anything else.
        Category::Data | Category::Io => "invalid content",
    };
    RequestInvalid::JsonInvalid {
        problem,
        line,
        column,
    }
}

/// The key quoted as a JSON string and the object's pointer (`/` for the top), both cut
/// to their limits.
fn duplicate_key(key: &str, object: &str) -> RequestInvalid {
    let key = serde_json::Value::from(cut(key, MAX_KEY_CHARS)).to_string();
    let object = if object.is_empty() {
        "/".to_owned()
    } else {
        cut(object, MAX_DETAIL_CHARS)
    };
    RequestInvalid::JsonDuplicateKey { key, object }
}

/// `text` up to `max` characters, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max).collect();
    cut.push('…');
    cut
}

/// Reports the first schema error, as APIM stops at the first set of errors. The
/// instance's values are masked: the message shows where and which rule, not the data.
fn schema_violation(error: &jsonschema::ValidationError<'_>) -> RequestInvalid {
    let location = error.instance_path().as_str();
    let location = if location.is_empty() { "/" } else { location }.to_owned();
    // The crate's masked text still names the client's own property names for
    // these ("Additional properties are not allowed ('x' was unexpected)"): said
    // like the other rules instead, without them.
    let detail = match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => match unexpected.len() {
            1 => "value has a property the schema does not allow".to_owned(),
            n => format!("value has {n} properties the schema does not allow"),
        },
        ValidationErrorKind::PropertyNames { error } => {
            format!("a property name is not allowed: {}", error.masked())
        }
        _ => error.masked().to_string(),
    };
    let detail = cut(&detail, MAX_DETAIL_CHARS);
    RequestInvalid::SchemaViolation { location, detail }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The request's media type, `None` without a `Content-Type` header.
fn content_type(headers: &HeaderMap) -> Result<Option<MediaType>, RequestInvalid> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(RequestInvalid::ContentTypeInvalid);
    }
    let text = value
        .to_str()
        .map_err(|_| RequestInvalid::ContentTypeInvalid)?;
    MediaType::parse(text)
        .map(Some)
        .ok_or(RequestInvalid::ContentTypeInvalid)
}

/// A media type reduced to what the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MediaType {
    /// `type/subtype`, lowercased.
    essence: String,
    /// No `;parameters` were given (required in the configuration).
    params_absent: bool,
}

impl MediaType {
    /// Reads `type/subtype[ OWS ; parameters]` (RFC 9110 §8.3.1), lowercased. Written
    /// here rather than with the `mime` crate, which refuses the optional blank before
    /// `;` that the RFC allows and accepts an empty subtype. Parameters are not needed
    /// by any check, so they are not parsed.
    fn parse(text: &str) -> Option<Self> {
        let (essence, params) = match text.split_once(';') {
            Some((essence, params)) => (essence, Some(params)),
            None => (text, None),
        };
        let essence = essence.trim_matches([' ', '\t']);
        let (kind, subtype) = essence.split_once('/')?;
        if !is_token(kind) || !is_token(subtype) {
            return None;
        }
        Some(Self {
            essence: essence.to_ascii_lowercase(),
            params_absent: params.is_none(),
        })
    }

    /// `application/json`, or any structured-syntax `+json` type
    /// (`application/problem+json`, `application/vnd.api+json`, ...).
    fn is_json(&self) -> bool {
        self.essence == "application/json" || self.essence.ends_with("+json")
    }
}

/// RFC 9110 `token`: one or more `tchar`.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
