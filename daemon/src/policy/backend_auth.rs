//! Backend authentication (APIM's `authentication-certificate` and managed identity):
//! a client certificate presented to an https backend, or an `Authorization: Bearer`
//! token set on every forwarded request, read from a file (re-read when it changes)
//! or obtained with OAuth2 client credentials (cached, refreshed before it expires).
//!
//! Requests only read the current token ([`Credential::authorization`]: one atomic
//! load); files are watched and tokens fetched by [`Credential::maintain`], a
//! background task.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Whole token exchange: connect, TLS, request and response body.
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token endpoint response read.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// Lifetime assumed when the token endpoint sends no `expires_in`.
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(300);
/// Longest lifetime taken from `expires_in`: a longer one (up to `u64::MAX`
/// seconds, past what an `Instant` can add) counts as this, so such a token is
/// refreshed at least daily.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 3_600);
/// How often a token file's metadata is checked.
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// First and longest wait between failed token requests.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// `[[api]] backend_auth`: how the gateway authenticates to the API's backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAuth {
    /// `{ client_cert, client_key }`: mTLS to an https backend.
    ClientCert { cert: PathBuf, key: PathBuf },
    /// `{ bearer_token_file }`: the file's (trimmed) content as a bearer token.
    BearerTokenFile(PathBuf),
    /// `{ oauth2 = { ... } }`: OAuth2 client credentials.
    OAuth2(OAuth2Settings),
}

/// `backend_auth.oauth2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Settings {
    /// https only.
    pub token_url: Url,
    pub client_id: String,
    /// Read at each token request (so a rotated secret is picked up); never logged.
    pub client_secret_file: PathBuf,
    pub scope: Option<String>,
    /// CA bundle trusted for the token endpoint instead of the Mozilla roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendAuthError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error("{path}: not a bearer token: {problem}")]
    BadToken {
        path: PathBuf,
        problem: TokenProblem,
    },
    #[error("{path}: PEM does not parse")]
    BadPem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("no certificate in {path}")]
    NoCertificate { path: PathBuf },
    #[error("no usable private key in {path}")]
    NoPrivateKey { path: PathBuf },
    #[error("certificate {cert} does not match key {key}")]
    CertKeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{path}: not a usable CA certificate")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the TLS configuration")]
    Tls {
        #[source]
        source: rustls::Error,
    },
    #[error("{url}: only https token endpoints are used")]
    NotHttps { url: String },
}

/// Why a token file's content is not a bearer token: RFC 6750's `b64token`, the
/// `token68` of RFC 7235 (letters, digits, `-._~+/`, then `=` padding only). Never
/// carries the token; a character is named only when it is not a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenProblem {
    /// `Bearer <token>`: the scheme, which rampartd adds itself.
    SchemeIncluded,
    /// A character that is not in `token68`, at a position counted from 1.
    Character { at: usize, what: String },
    /// `=` before the end (padding only ends a token).
    PaddingInside { at: usize },
    /// Nothing but `=`.
    OnlyPadding,
}

const TOKEN68: &str = "a token is letters, digits, \"-\", \".\", \"_\", \"~\", \"+\", \"/\", then \"=\" padding only (token68, RFC 7235)";

impl std::fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SchemeIncluded => f.write_str(
                "it starts with \"Bearer \", which rampartd adds itself: remove it, the file holds the token alone",
            ),
            Self::Character { at, what } => write!(f, "{what} at character {at}; {TOKEN68}"),
            Self::PaddingInside { at } => write!(f, "\"=\" at character {at}, before the end; {TOKEN68}"),
            Self::OnlyPadding => write!(f, "only \"=\"; {TOKEN68}"),
        }
    }
}

/// Checks that `token` (trimmed, not empty) is a `token68`.
pub fn check_token68(token: &str) -> Result<(), TokenProblem> {
    let bytes = token.as_bytes();
    if bytes.len() > 6
        && bytes[..6].eq_ignore_ascii_case(b"bearer")
        && matches!(bytes[6], b' ' | b'\t')
    {
        return Err(TokenProblem::SchemeIncluded);
    }
    let mut padding = None;
    for (i, c) in token.chars().enumerate() {
        let at = i + 1;
        if c == '=' {
            padding.get_or_insert(at);
            continue;
        }
        if let Some(at) = padding {
            return Err(TokenProblem::PaddingInside { at });
        }
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/') {
            continue;
        }
        let what = match c {
            ' ' => "a space".to_owned(),
            '\t' => "a tab".to_owned(),
            '\r' => "a carriage return (CR)".to_owned(),
            '\n' => "a line feed (LF)".to_owned(),
            c if c.is_control() => "a control character".to_owned(),
            c if !c.is_ascii() => "a non-ASCII character".to_owned(),
            c => format!("{c:?}"),
        };
        return Err(TokenProblem::Character { at, what });
    }
    if padding == Some(1) {
        return Err(TokenProblem::OnlyPadding);
    }
    Ok(())
}

/// Why a token request failed. Never carries the client secret.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the client secret")]
    Secret(#[source] BackendAuthError),
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: request failed")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url}: status {status}{}", code_suffix(.error))]
    Status {
        url: String,
        status: StatusCode,
        /// The OAuth2 `error` code of the body, when there is one.
        error: Option<String>,
    },
    #[error("{url}: response body over {limit} bytes or cut off")]
    Body { url: String, limit: usize },
    #[error("token response: {0}")]
    Response(#[from] TokenResponseError),
}

/// A token endpoint's 200 answer that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenResponseError {
    #[error("not a JSON object")]
    NotJson,
    #[error("no `access_token` string")]
    NoAccessToken,
    /// Not a `token68`: it would be sent as `Bearer <token>` otherwise (a space
    /// or a comma in it makes another header value than the backend expects).
    #[error("`access_token` is not a bearer token: {}", access_token_problem(.0))]
    BadAccessToken(TokenProblem),
    #[error("`token_type` is {0:?}, not \"Bearer\"")]
    NotBearer(String),
    #[error("`expires_in` is not a positive number of seconds")]
    BadExpiresIn,
}

/// A certificate chain and its key, checked to match.
pub struct ClientCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches Debug output.
        f.debug_struct("ClientCertificate")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BackendAuthError> {
    std::fs::read(path).map_err(|source| BackendAuthError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads a PEM certificate chain and PEM private key and checks that they match.
pub fn load_client_cert(cert: &Path, key: &Path) -> Result<ClientCertificate, BackendAuthError> {
    let pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| BackendAuthError::BadPem {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(BackendAuthError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => BackendAuthError::NoPrivateKey {
            path: key.to_owned(),
        },
        source => BackendAuthError::BadPem {
            path: key.to_owned(),
            source,
        },
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), private.clone_key(), &provider).map_err(
        |source| BackendAuthError::CertKeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        },
    )?;
    Ok(ClientCertificate {
        chain,
        key: private,
    })
}

/// A secret or token file's content, trimmed; empty is an error.
pub fn read_secret(path: &Path) -> Result<String, BackendAuthError> {
    let bytes = read(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        return Err(BackendAuthError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(text.to_owned())
}

/// A token file's content (surrounding white space, a final newline included,
/// trimmed) as the `Authorization` header value it gives: a `token68` only, so
/// that `Bearer tok` in the file is not sent as `Bearer Bearer tok`.
pub fn read_token_file(path: &Path) -> Result<HeaderValue, BackendAuthError> {
    let token = read_secret(path)?;
    let bad = |problem| BackendAuthError::BadToken {
        path: path.to_owned(),
        problem,
    };
    check_token68(&token).map_err(bad)?;
    // Not reached: a token68 is visible ASCII, always a header value.
    bearer(&token).ok_or_else(|| {
        bad(TokenProblem::Character {
            at: 1,
            what: "a character a header cannot carry".to_owned(),
        })
    })
}

/// `Bearer <token>`, marked sensitive; `None` when the token is not a header value.
fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The roots trusted for a token endpoint: `ca_file` alone, or the Mozilla roots.
pub fn token_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, BackendAuthError> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = ca_file else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| BackendAuthError::BadPem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(BackendAuthError::NoCertificate {
            path: path.to_owned(),
        });
    }
    for cert in certs {
        roots.add(cert).map_err(|source| BackendAuthError::BadCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// A token that can be set on forwarded requests, kept current in the background.
pub struct Credential {
    current: ArcSwapOption<HeaderValue>,
    source: Source,
    /// Token requests (OAuth2) or token file reads that failed.
    failures: AtomicU64,
}

enum Source {
    File(Mutex<TokenFile>),
    OAuth2(Box<OAuth2Client>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token never reaches Debug output.
        let kind = match &self.source {
            Source::File(_) => "bearer_token_file",
            Source::OAuth2(_) => "oauth2",
        };
        f.debug_struct("Credential")
            .field("source", &kind)
            .field("available", &self.current.load().is_some())
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A bearer token read from `path` now (an error when missing or empty), and
    /// re-read by [`Credential::maintain`] when the file changes.
    pub fn from_file(path: &Path) -> Result<Self, BackendAuthError> {
        let file = TokenFile::open(path)?;
        let current = ArcSwapOption::from_pointee(file.token.clone());
        Ok(Self {
            current,
            source: Source::File(Mutex::new(file)),
            failures: AtomicU64::new(0),
        })
    }

    /// OAuth2 client credentials; no token until [`Credential::maintain`] got one.
    pub fn oauth2(settings: &OAuth2Settings) -> Result<Self, BackendAuthError> {
        Ok(Self {
            current: ArcSwapOption::empty(),
            source: Source::OAuth2(Box::new(OAuth2Client::new(settings)?)),
            failures: AtomicU64::new(0),
        })
    }

    /// Token requests (OAuth2) or token file reads that failed since it was made.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The `Authorization` value to send, `None` while there is none (the request
    /// must then not be forwarded).
    pub fn authorization(&self) -> Option<HeaderValue> {
        self.current.load().as_deref().cloned()
    }

    /// Keeps the token current until `shutdown`: checks the file every second, or
    /// fetches a token, refreshes it before it expires and retries with backoff.
    pub async fn maintain(self: Arc<Self>, api: String, shutdown: CancellationToken) {
        match &self.source {
            Source::File(file) => loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(FILE_CHECK_INTERVAL) => {}
                }
                let changed = file
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .refresh_if_changed(&api, &self.failures);
                if let Some(token) = changed {
                    self.current.store(Some(Arc::new(token)));
                }
            },
            Source::OAuth2(client) => self.run_oauth2(client, &api, shutdown).await,
        }
    }

    async fn run_oauth2(&self, client: &OAuth2Client, api: &str, shutdown: CancellationToken) {
        let mut expires_at: Option<Instant> = None;
        let mut retry = RETRY_FIRST;
        loop {
            let fetched = tokio::select! {
                () = shutdown.cancelled() => return,
                fetched = client.fetch() => fetched,
            };
            let wake = match fetched {
                Ok(token) => {
                    let now = Instant::now();
                    let schedule = Schedule::new(token.expires_in);
                    self.current.store(Some(Arc::new(token.value)));
                    expires_at = now.checked_add(schedule.expires);
                    retry = RETRY_FIRST;
                    tracing::info!(
                        api,
                        expires_in = token.expires_in.as_secs(),
                        "backend token obtained"
                    );
                    now.checked_add(schedule.refresh)
                        .unwrap_or(now + MAX_EXPIRES_IN)
                }
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    let valid = expires_at.is_some_and(|at| at > now);
                    if matches!(e, TokenError::Response(_)) {
                        // The endpoint answered 200 with what is no usable token
                        // (none, not a bearer token, not a token68): not sent,
                        // and no retry mends it until the endpoint is fixed.
                        tracing::error!(
                            api,
                            error = %crate::service::chain(&e),
                            retry_in = ?wait,
                            has_valid_token = valid,
                            "backend token request failed; the token endpoint's answer is not used"
                        );
                    } else {
                        tracing::warn!(
                            api,
                            error = %crate::service::chain(&e),
                            retry_in = ?wait,
                            has_valid_token = valid,
                            "backend token request failed"
                        );
                    }
                    now + wait
                }
            };
            // Sleep until the next fetch, dropping the token if it expires first.
            loop {
                let expiry = expires_at.filter(|at| *at < wake);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(wake) => break,
                    () = sleep_until_some(expiry) => {
                        tracing::warn!(api, "backend token expired without a new one; requests get 503");
                        self.current.store(None);
                        expires_at = None;
                    }
                }
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When a token with a lifetime of `expires_in` is refreshed and when it expires,
/// both counted from when it was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub refresh: Duration,
    pub expires: Duration,
}

impl Schedule {
    /// Refreshed a margin before it expires: 10 % of its lifetime, at least 60 s,
    /// at most half of it; used until it expires.
    pub fn new(expires_in: Duration) -> Self {
        let margin = (expires_in / 10)
            .max(Duration::from_secs(60))
            .min(expires_in / 2);
        Self {
            refresh: expires_in - margin,
            expires: expires_in,
        }
    }
}

/// A bearer token file and what was last seen of it.
struct TokenFile {
    path: PathBuf,
    seen: Option<FileStamp>,
    token: HeaderValue,
    failing: bool,
}

/// What tells a rewritten file apart: inode, size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        // Follows symbolic links: a Kubernetes secret is a link swapped on update.
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

impl TokenFile {
    fn open(path: &Path) -> Result<Self, BackendAuthError> {
        let seen = FileStamp::of(path).ok();
        let token = read_token_file(path)?;
        Ok(Self {
            path: path.to_owned(),
            seen,
            token,
            failing: false,
        })
    }

    /// Re-reads the file when its metadata changed; the new token, if any. An
    /// unreadable, empty or invalid file keeps the last good token (warned once).
    /// `failures` counts each read that fails (once a second while it does).
    fn refresh_if_changed(&mut self, api: &str, failures: &AtomicU64) -> Option<HeaderValue> {
        let stamp = FileStamp::of(&self.path).ok();
        if stamp.is_some() && stamp == self.seen && !self.failing {
            return None;
        }
        let read = read_token_file(&self.path);
        match read {
            Ok(token) => {
                self.seen = stamp;
                let recovered = std::mem::replace(&mut self.failing, false);
                if token == self.token {
                    if recovered {
                        tracing::info!(api, path = %self.path.display(), "backend token file readable again");
                    }
                    return None;
                }
                tracing::info!(api, path = %self.path.display(), "backend token file re-read");
                self.token = token.clone();
                Some(token)
            }
            Err(e) => {
                self.seen = stamp;
                failures.fetch_add(1, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        api,
                        error = %crate::service::chain(&e),
                        "backend token file unusable; the last good token stays"
                    );
                }
                None
            }
        }
    }
}

/// A token and its lifetime as the endpoint gave them.
#[derive(Debug, PartialEq, Eq)]
pub struct Token {
    pub value: HeaderValue,
    pub expires_in: Duration,
}

/// Parses a token endpoint's 200 body (RFC 6749 §5.1). `expires_in` may be a
/// number or a numeric string (some identity providers send one).
pub fn parse_token_response(body: &[u8]) -> Result<Token, TokenResponseError> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| TokenResponseError::NotJson)?;
    let object = json.as_object().ok_or(TokenResponseError::NotJson)?;
    let access = object
        .get("access_token")
        .and_then(serde_json::Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or(TokenResponseError::NoAccessToken)?;
    match object.get("token_type").and_then(serde_json::Value::as_str) {
        Some(kind) if kind.eq_ignore_ascii_case("bearer") => {}
        Some(kind) => {
            return Err(TokenResponseError::NotBearer(
                kind.chars().take(32).collect(),
            ));
        }
        None => return Err(TokenResponseError::NotBearer(String::new())),
    }
    let expires_in = match object.get("expires_in") {
        None | Some(serde_json::Value::Null) => DEFAULT_EXPIRES_IN,
        // A float (`3600.0`, `1e9`) counts its whole seconds; `as` saturates one
        // beyond u64::MAX, and the lifetime is capped below.
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 1.0).map(|f| f as u64))
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .ok_or(TokenResponseError::BadExpiresIn)?,
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .ok_or(TokenResponseError::BadExpiresIn)?,
        Some(_) => return Err(TokenResponseError::BadExpiresIn),
    };
    let expires_in = expires_in.min(MAX_EXPIRES_IN);
    // As a token file's content: a token68 only, never sent otherwise.
    check_token68(access).map_err(TokenResponseError::BadAccessToken)?;
    // Not reached: a token68 is visible ASCII, always a header value.
    let value = bearer(access).ok_or_else(|| {
        TokenResponseError::BadAccessToken(TokenProblem::Character {
            at: 1,
            what: "a character a header cannot carry".to_owned(),
        })
    })?;
    Ok(Token { value, expires_in })
}

/// What is wrong with a token endpoint's `access_token` (the scheme's advice is
/// for token files).
fn access_token_problem(problem: &TokenProblem) -> String {
    match problem {
        TokenProblem::SchemeIncluded => {
            "it starts with \"Bearer \", which rampartd adds itself".to_owned()
        }
        problem => problem.to_string(),
    }
}

/// The form body of a client credentials request.
fn token_request_body(client_id: &str, secret: &str, scope: Option<&str>) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    form.append_pair("client_id", client_id);
    form.append_pair("client_secret", secret);
    if let Some(scope) = scope {
        form.append_pair("scope", scope);
    }
    form.finish()
}

/// An https-only client of one token endpoint.
struct OAuth2Client {
    settings: OAuth2Settings,
    uri: Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl OAuth2Client {
    fn new(settings: &OAuth2Settings) -> Result<Self, BackendAuthError> {
        let not_https = || BackendAuthError::NotHttps {
            url: crate::policy::url_for_log(&settings.token_url),
        };
        if settings.token_url.scheme() != "https" {
            return Err(not_https());
        }
        let uri: Uri = settings
            .token_url
            .as_str()
            .parse()
            .map_err(|_| not_https())?;
        let roots = token_roots(settings.ca_file.as_deref())?;
        let client = crate::gateway::https_client(roots, Some(TOKEN_TIMEOUT))
            .map_err(|source| BackendAuthError::Tls { source })?;
        Ok(Self {
            settings: settings.clone(),
            uri,
            client,
        })
    }

    /// One client credentials exchange (no redirects followed, 200 only).
    async fn fetch(&self) -> Result<Token, TokenError> {
        let url = crate::policy::url_for_log(&self.settings.token_url);
        let secret = read_secret(&self.settings.client_secret_file).map_err(TokenError::Secret)?;
        let body = token_request_body(
            &self.settings.client_id,
            &secret,
            self.settings.scope.as_deref(),
        );
        drop(secret);
        let request = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "rampartd")
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else {
            return Err(TokenError::Body { url, limit: 0 });
        };
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|source| TokenError::Request {
                        url: url.clone(),
                        source,
                    })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_TOKEN_RESPONSE_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|_| TokenError::Body {
                    url: url.clone(),
                    limit: MAX_TOKEN_RESPONSE_BYTES,
                })?;
            if status != StatusCode::OK {
                return Err(TokenError::Status {
                    url: url.clone(),
                    status,
                    error: oauth_error_code(&body),
                });
            }
            Ok(parse_token_response(&body)?)
        };
        tokio::time::timeout(TOKEN_TIMEOUT, exchange)
            .await
            .map_err(|_| TokenError::Timeout {
                url: url.clone(),
                timeout: TOKEN_TIMEOUT,
            })?
    }
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref()
        .map(|e| format!(" (error {e:?})"))
        .unwrap_or_default()
}

/// The `error` code of an OAuth2 error body (RFC 6749 §5.2), shortened, printable.
fn oauth_error_code(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = json.get("error")?.as_str()?;
    Some(
        code.chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "rampart-backend-auth-{}-{name}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn token_file_is_re_read_when_it_changes_and_kept_when_it_breaks() {
        let dir = temp("file");
        let path = dir.join("token");
        std::fs::write(&path, "  token-1\n").unwrap();
        let mut file = TokenFile::open(&path).unwrap();
        let failures = AtomicU64::new(0);
        assert_eq!(file.token, "Bearer token-1");
        assert!(file.token.is_sensitive());
        // Unchanged: nothing re-read.
        assert_eq!(file.refresh_if_changed("t", &failures), None);
        // Rewritten (a new inode, as editors and secret stores do): the new token.
        std::fs::write(dir.join("next"), "token-22").unwrap();
        std::fs::rename(dir.join("next"), &path).unwrap();
        assert_eq!(
            file.refresh_if_changed("t", &failures),
            Some(HeaderValue::from_static("Bearer token-22"))
        );
        // Empty, then missing: the last good token stays.
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(file.refresh_if_changed("t", &failures), None);
        assert_eq!(file.token, "Bearer token-22");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.refresh_if_changed("t", &failures), None);
        assert_eq!(file.token, "Bearer token-22");
        // Each failed read counted (the scrapes' rampart_backend_token_failures_total).
        assert_eq!(failures.load(Ordering::Relaxed), 2);
        // Back with a new token.
        std::fs::write(&path, "token-3").unwrap();
        assert_eq!(
            file.refresh_if_changed("t", &failures),
            Some(HeaderValue::from_static("Bearer token-3"))
        );
        assert_eq!(failures.load(Ordering::Relaxed), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn token_file_must_exist_and_hold_a_token() {
        let dir = temp("start");
        let path = dir.join("token");
        assert!(matches!(
            Credential::from_file(&path),
            Err(BackendAuthError::Read { .. })
        ));
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(
            Credential::from_file(&path),
            Err(BackendAuthError::Empty { .. })
        ));
        std::fs::write(&path, "a\u{7f}b").unwrap();
        assert!(matches!(
            Credential::from_file(&path),
            Err(BackendAuthError::BadToken { .. })
        ));
        std::fs::write(&path, "abc").unwrap();
        let credential = Credential::from_file(&path).unwrap();
        assert_eq!(credential.authorization().unwrap(), "Bearer abc");
        assert!(!format!("{credential:?}").contains("abc"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_token_must_be_a_token68() {
        for good in [
            "abc",
            "a-b.c_d~e+f/g",
            "YWJj",
            "YWI=",
            "YQ==",
            "eyJ0.eyJz.c2ln",
        ] {
            assert_eq!(check_token68(good), Ok(()), "{good}");
        }
        let character = |at, what: &str| TokenProblem::Character {
            at,
            what: what.to_owned(),
        };
        for (bad, problem) in [
            ("Bearer tok4", TokenProblem::SchemeIncluded),
            ("bearer\ttok4", TokenProblem::SchemeIncluded),
            ("BEARER tok", TokenProblem::SchemeIncluded),
            ("tok 3 with spaces", character(4, "a space")),
            ("tok\r\nX: y", character(4, "a carriage return (CR)")),
            ("a\u{7f}b", character(2, "a control character")),
            ("tök", character(2, "a non-ASCII character")),
            ("to@k", character(3, "'@'")),
            ("ab=c", TokenProblem::PaddingInside { at: 3 }),
            ("==", TokenProblem::OnlyPadding),
        ] {
            assert_eq!(check_token68(bad), Err(problem), "{bad:?}");
        }
        // "Bearer" alone, or a token that only starts with those letters, is a token.
        assert_eq!(check_token68("Bearer"), Ok(()));
        assert_eq!(check_token68("BearerX"), Ok(()));
        let message = TokenProblem::SchemeIncluded.to_string();
        assert!(message.contains("remove it"), "{message}");
        let message = character(4, "a space").to_string();
        assert_eq!(
            message,
            "a space at character 4; a token is letters, digits, \"-\", \".\", \"_\", \"~\", \"+\", \"/\", then \"=\" padding only (token68, RFC 7235)"
        );
    }

    #[test]
    fn a_token_file_that_is_not_a_token_keeps_the_last_good_one() {
        let dir = temp("token68");
        let path = dir.join("token");
        std::fs::write(&path, "tok4\n").unwrap();
        let mut file = TokenFile::open(&path).unwrap();
        let failures = AtomicU64::new(0);
        for bad in ["Bearer tok5\n", "tok 5\n"] {
            std::fs::write(dir.join("next"), bad).unwrap();
            std::fs::rename(dir.join("next"), &path).unwrap();
            assert_eq!(file.refresh_if_changed("t", &failures), None, "{bad:?}");
            assert_eq!(file.token, "Bearer tok4");
        }
        std::fs::write(&path, "Bearer tok4").unwrap();
        assert!(matches!(
            Credential::from_file(&path),
            Err(BackendAuthError::BadToken {
                problem: TokenProblem::SchemeIncluded,
                ..
            })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn schedule_refreshes_a_margin_before_expiry() {
        let s = Schedule::new(Duration::from_secs(3600));
        assert_eq!(s.refresh, Duration::from_secs(3240));
        assert_eq!(s.expires, Duration::from_secs(3600));
        // At least 60 s early...
        assert_eq!(
            Schedule::new(Duration::from_secs(300)).refresh,
            Duration::from_secs(240)
        );
        // ...but never past half the lifetime.
        assert_eq!(
            Schedule::new(Duration::from_secs(60)).refresh,
            Duration::from_secs(30)
        );
        assert_eq!(
            Schedule::new(Duration::from_secs(1)).refresh,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn token_responses_parse() {
        let token = parse_token_response(
            br#"{"access_token":"at-1","token_type":"bearer","expires_in":3600}"#,
        )
        .unwrap();
        assert_eq!(token.value, "Bearer at-1");
        assert_eq!(token.expires_in, Duration::from_secs(3600));
        let token = parse_token_response(
            br#"{"access_token":"x","token_type":"Bearer","expires_in":"99"}"#,
        )
        .unwrap();
        assert_eq!(token.expires_in, Duration::from_secs(99));
        let token = parse_token_response(br#"{"access_token":"x","token_type":"Bearer"}"#).unwrap();
        assert_eq!(token.expires_in, DEFAULT_EXPIRES_IN);
        // Floats count their whole seconds.
        for (expires_in, secs) in [("3600.0", 3_600), ("1.5", 1), ("1e3", 1_000)] {
            let body = format!(
                r#"{{"access_token":"x","token_type":"Bearer","expires_in":{expires_in}}}"#
            );
            let token = parse_token_response(body.as_bytes()).unwrap();
            assert_eq!(token.expires_in, Duration::from_secs(secs), "{expires_in}");
        }
    }

    /// hunt9 L2: a lifetime near u64::MAX seconds panicked the refresh task when
    /// added to an `Instant` (the token was then never refreshed again).
    #[test]
    fn huge_lifetimes_are_capped_and_their_schedule_adds_to_now() {
        for expires_in in [
            "18446744073709551615",
            "9223372036854775808",
            "\"18446744073709551615\"",
            "1e300",
            "86401",
        ] {
            let body = format!(
                r#"{{"access_token":"x","token_type":"Bearer","expires_in":{expires_in}}}"#
            );
            let token = parse_token_response(body.as_bytes()).unwrap();
            assert_eq!(token.expires_in, MAX_EXPIRES_IN, "{expires_in}");
            let schedule = Schedule::new(token.expires_in);
            let now = tokio::time::Instant::now();
            assert!(now + schedule.refresh < now + schedule.expires);
        }
    }

    #[test]
    fn bad_token_responses_are_refused() {
        use TokenResponseError as E;
        let cases: [(&[u8], E); 13] = [
            (b"not json", E::NotJson),
            (b"[1]", E::NotJson),
            (br#"{"token_type":"Bearer"}"#, E::NoAccessToken),
            (
                br#"{"access_token":"","token_type":"Bearer"}"#,
                E::NoAccessToken,
            ),
            (
                br#"{"access_token":"x","token_type":"mac"}"#,
                E::NotBearer("mac".into()),
            ),
            (br#"{"access_token":"x"}"#, E::NotBearer(String::new())),
            (
                br#"{"access_token":"x","token_type":"Bearer","expires_in":0}"#,
                E::BadExpiresIn,
            ),
            (
                br#"{"access_token":"x","token_type":"Bearer","expires_in":0.5}"#,
                E::BadExpiresIn,
            ),
            (
                br#"{"access_token":"x","token_type":"Bearer","expires_in":-1.0}"#,
                E::BadExpiresIn,
            ),
            (
                br#"{"access_token":"a\nb","token_type":"Bearer","expires_in":5}"#,
                E::BadAccessToken(TokenProblem::Character {
                    at: 2,
                    what: "a line feed (LF)".to_owned(),
                }),
            ),
            (
                br#"{"access_token":"a b","token_type":"Bearer","expires_in":5}"#,
                E::BadAccessToken(TokenProblem::Character {
                    at: 2,
                    what: "a space".to_owned(),
                }),
            ),
            (
                br#"{"access_token":"Bearer ab","token_type":"Bearer"}"#,
                E::BadAccessToken(TokenProblem::SchemeIncluded),
            ),
            (
                br#"{"access_token":"a,b=\"c\"","token_type":"Bearer"}"#,
                E::BadAccessToken(TokenProblem::Character {
                    at: 2,
                    what: "','".to_owned(),
                }),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                parse_token_response(body),
                Err(expected),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            parse_token_response(br#"{"access_token":"x","token_type":"Bearer","expires_in":-5}"#),
            Err(E::BadExpiresIn)
        );
    }

    #[test]
    fn request_body_is_form_encoded() {
        assert_eq!(
            token_request_body("gw", "s&cr=t", Some("api://b/.default")),
            "grant_type=client_credentials&client_id=gw&client_secret=s%26cr%3Dt&scope=api%3A%2F%2Fb%2F.default"
        );
        assert_eq!(
            token_request_body("gw", "s", None),
            "grant_type=client_credentials&client_id=gw&client_secret=s"
        );
    }

    #[test]
    fn oauth2_needs_https() {
        let settings = OAuth2Settings {
            token_url: Url::parse("http://idp.test/token").unwrap(),
            client_id: "gw".into(),
            client_secret_file: "/nonexistent".into(),
            scope: None,
            ca_file: None,
        };
        assert!(matches!(
            Credential::oauth2(&settings),
            Err(BackendAuthError::NotHttps { .. })
        ));
    }

    #[test]
    fn error_codes_are_short_and_printable() {
        assert_eq!(
            oauth_error_code(br#"{"error":"invalid_client","error_description":"x"}"#).as_deref(),
            Some("invalid_client")
        );
        assert_eq!(oauth_error_code(b"<html>"), None);
    }
}
