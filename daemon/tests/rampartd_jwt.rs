//! The real `rampartd` binary validating JWTs end to end: a static RS256 key, roles
//! by method (403), claims sent to the backend as headers (client copies replaced),
//! APIM's 401 answers and challenges for absent, expired and forged tokens, a rate
//! limit counted per `sub` claim, keys fetched from a JWKS over https with a private
//! CA (and 503 while they never loaded), and `--check-config` errors.
//!
//! Every test writes its own keys, tokens and configuration (no `[filter]`: the
//! gateway alone, no privileges needed) into its own temporary directory, starts
//! rampartd on a free port and kills it on drop, even when the test fails.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use gateway_support::*;
use http::{Method, Request, Response};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey};
use rampart::gateway::CertFiles;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

const RAMPARTD: &str = env!("CARGO_BIN_EXE_rampartd");

const ISS: &str = "https://idp.test/rampart";
const AUD: &str = "api://orders";

const NOT_PRESENT: &str = "JWT not present.";
/// Every refused token but an absent one (expired included: `JwtRejection::message`).
const INVALID: &str = "Invalid JWT.";
const KEYS_UNAVAILABLE: &str = "Identity provider keys are not available.";
const ROLE_DENIED: &str = "Access denied: the token does not grant a role this operation requires.";

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// The daemon under test.
type Daemon = Rampartd;

/// One test's directory, CA, gateway certificate and port.
struct Setup {
    dir: TempDir,
    state_dir: PathBuf,
    pki: Pki,
    cert: CertFiles,
    port: u16,
    starts: AtomicU32,
}

impl Setup {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(&format!("jwt-{name}"));
        let state_dir = dir.0.join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let pki = Pki::new();
        let cert = pki.leaf("gw", &["localhost"]);
        Self {
            dir,
            state_dir,
            pki,
            cert,
            port: free_port(),
            starts: AtomicU32::new(0),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// Writes `contents` into the test directory; returns the path.
    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.0.join(name);
        gateway_support::write_private(&path, contents);
        path
    }

    /// Writes the configuration (`[daemon]`, one TLS `[[listener]]`, then `body`),
    /// starts rampartd on it and waits until it listens.
    async fn start(&self, body: &str) -> Daemon {
        let config = self.dir.0.join("rampart.toml");
        let text = self.config_text(body);
        let n = self.starts.fetch_add(1, Ordering::Relaxed);
        let log = self.dir.0.join(format!("rampartd-{n}.log"));
        Rampartd::start(&config, &text, log, self.port).await
    }

    /// Rewrites the configuration as [`Setup::start`] writes it, with `body`, and
    /// reloads `daemon` from it (SIGHUP), waiting until the gateway took it.
    async fn reload(&self, daemon: &Daemon, body: &str) {
        let config = self.dir.0.join("rampart.toml");
        gateway_support::write_private(&config, self.config_text(body));
        let seen = daemon.log_count("gateway reloaded");
        daemon.signal(libc::SIGHUP);
        daemon.wait_for_log("gateway reloaded", seen).await;
    }

    fn config_text(&self, body: &str) -> String {
        format!(
            "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\n\n\
             [[listener]]\naddress = \"127.0.0.1:{port}\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n\n\
             {body}\n",
            state = self.state_dir.display().to_string(),
            runtime = self.dir.0.join("run").display().to_string(),
            port = self.port,
            cert = self.cert.cert_chain_pem.display().to_string(),
            key = self.cert.key_pem.display().to_string(),
        )
    }
}

/// `rampartd --check-config FILE`: exit code and stderr.
fn check_config(file: &Path) -> (i32, String) {
    let out = Command::new(RAMPARTD)
        .arg("--check-config")
        .arg(file)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------

/// The identity provider's RSA key pair, generated once for the whole file.
struct IdpKey {
    private_pem: String,
    public_pem: String,
}

fn idp_key() -> &'static IdpKey {
    static KEY: OnceLock<IdpKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        IdpKey {
            private_pem: pair.serialize_pem(),
            public_pem: pair.public_key_pem(),
        }
    })
}

fn rsa_signer() -> EncodingKey {
    EncodingKey::from_rsa_pem(idp_key().private_pem.as_bytes()).unwrap()
}

/// The public key as a JWKS document with one key, `kid`.
fn jwks(kid: &str) -> String {
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa_signer(), Algorithm::RS256).unwrap();
    let jwk = serde_json::to_value(jwk).unwrap();
    json!({"keys": [{
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": jwk["n"],
        "e": jwk["e"],
    }]})
    .to_string()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `header.claims.signature`, the header written as given, signed with `alg` by `key`.
fn sign(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// An RS256 token with kid "k1" signed by the IdP key.
fn rs256(claims: &Value) -> String {
    rs256_kid(claims, "k1")
}

fn rs256_kid(claims: &Value, kid: &str) -> String {
    sign(
        &json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        claims,
        &rsa_signer(),
        Algorithm::RS256,
    )
}

/// Claims valid for the next 10 minutes for `sub`, with `roles`.
fn claims(sub: &str, roles: Value) -> Value {
    let now = now();
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": sub,
        "oid": format!("oid-{sub}"),
        "roles": roles,
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 600,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

/// A `[[jwt_provider]]` "corp" with the IdP's public key in a PEM file, kid "k1".
fn static_provider(setup: &Setup) -> String {
    let pem = setup.write("idp-public.pem", idp_key().public_pem.as_bytes());
    format!(
        "[[jwt_provider]]\nname = \"corp\"\nalgorithms = [\"RS256\"]\n\
         keys = [{{ kid = \"k1\", pem_file = {pem:?} }}]\n\
         issuers = [\"{ISS}\"]\naudiences = [\"{AUD}\"]\n",
        pem = pem.display().to_string()
    )
}

// ---------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------

type Client = TestClient<Empty<Bytes>>;

/// `method url` with `Authorization: Bearer token` (when given) and extra headers.
async fn call(
    client: &Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (http::response::Parts, String) {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(client, request.body(Empty::new()).unwrap()).await
}

/// An error as APIM writes it: the status, `Content-Type: application/json` and
/// exactly the body `{ "statusCode": N, "message": "..." }`.
fn assert_exact_error(parts: &http::response::Parts, body: &str, status: u16, message: &str) {
    assert_apim_error(parts, body, status, message);
    assert_eq!(
        body,
        format!(r#"{{ "statusCode": {status}, "message": "{message}" }}"#),
        "exact APIM wire form"
    );
}

/// A 401 for a token: the exact body and the challenge.
fn assert_401(parts: &http::response::Parts, body: &str, message: &str, challenge: &str) {
    assert_exact_error(parts, body, 401, message);
    let values: Vec<_> = parts
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(values, [challenge], "{parts:?}");
}

/// A refused token: 401 "Invalid JWT." with `Bearer error="invalid_token"`.
fn assert_invalid(parts: &http::response::Parts, body: &str) {
    assert_401(parts, body, INVALID, "Bearer error=\"invalid_token\"");
}

/// The values of `name` the echo backend saw (it writes one `name: value` line per
/// header, names in lower case).
fn echoed(body: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}: ");
    body.lines()
        .filter_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------------------
// A JWKS server
// ---------------------------------------------------------------------------

/// An https server for `localhost` (certificate from `pki`, a CA of its own) answering
/// `GET /keys` with `body`; counts the requests for `/keys`.
async fn start_jwks_server(pki: &Pki, body: String) -> (SocketAddr, Arc<AtomicUsize>) {
    start_failing_jwks_server(pki, body, Arc::new(AtomicBool::new(false))).await
}

/// [`start_jwks_server`], answering 500 to `/keys` while `down` is set.
async fn start_failing_jwks_server(
    pki: &Pki,
    body: String,
    down: Arc<AtomicBool>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let files = pki.leaf("jwks", &["localhost"]);
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&files.cert_chain_pem)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.key_pem).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&fetches);
    let body = Bytes::from(body);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counter = Arc::clone(&counter);
            let body = body.clone();
            let down = Arc::clone(&down);
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request: Request<Incoming>| {
                    let found = request.uri().path() == "/keys";
                    if found {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    let body = body.clone();
                    let failing = down.load(Ordering::Relaxed);
                    async move {
                        let response = if found && failing {
                            Response::builder()
                                .status(500)
                                .body(Full::new(Bytes::new()))
                        } else if found {
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(body))
                        } else {
                            Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new()))
                        };
                        Ok::<_, Infallible>(response.unwrap())
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, fetches)
}

/// An API "orders" on /orders behind provider "corp", reading roles from "roles".
fn orders_api(backend: SocketAddr) -> String {
    format!(
        r#"
[[api]]
name = "orders"
path_prefix = "/orders"
backend = "http://{backend}/"
subscription = "none"
jwt = {{ provider = "corp", roles_claim = "roles", roles = [
  {{ methods = ["POST", "PUT", "DELETE"], values = ["API.Write"] }},
  {{ values = ["API.Read"] }},
], claims_to_headers = [
  {{ claim = "oid", header = "X-User-Id", default = "anonymous" }},
  {{ claim = "tid", header = "X-Tenant-Id" }},
] }}
"#
    )
}

// ---------------------------------------------------------------------------
// 1. A static RS256 key: roles, claim headers, refused tokens
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn static_rs256_key_roles_claim_headers_and_refusals() {
    let setup = Setup::new("static");
    let backend = start_backend().await;
    let daemon = setup
        .start(&format!(
            "{}{}",
            static_provider(&setup),
            orders_api(backend)
        ))
        .await;
    let client = client(&setup.pki, false);
    let url = setup.url("/orders/items");

    // A reader: GET passes, the backend sees the `oid` claim as X-User-Id.
    let reader = rs256(&claims("alice", json!(["API.Read"])));
    let (parts, body) = call(&client, Method::GET, &url, Some(&reader), &[]).await;
    assert_eq!(parts.status, 200, "{body}\n{}", daemon.log());
    assert!(body.starts_with("GET /items"), "{body}");
    assert_eq!(echoed(&body, "x-user-id"), ["oid-alice"], "{body}");

    // A client-sent X-User-Id is replaced by the claim, never added to.
    let (parts, body) = call(
        &client,
        Method::GET,
        &url,
        Some(&reader),
        &[("X-User-Id", "admin")],
    )
    .await;
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(echoed(&body, "x-user-id"), ["oid-alice"], "{body}");

    // A client-sent copy of a claim header without a default is removed when the
    // token lacks the claim, and replaced when it has it.
    let (parts, body) = call(
        &client,
        Method::GET,
        &url,
        Some(&reader),
        &[("X-Tenant-Id", "evil"), ("x-tenant-id", "evil2")],
    )
    .await;
    assert_eq!(parts.status, 200, "{body}");
    assert!(echoed(&body, "x-tenant-id").is_empty(), "{body}");
    let tenant = rs256(&with(
        claims("alice", json!(["API.Read"])),
        "tid",
        json!("t-1"),
    ));
    let (parts, body) = call(
        &client,
        Method::GET,
        &url,
        Some(&tenant),
        &[("X-Tenant-Id", "evil"), ("X_Tenant_Id", "evil")],
    )
    .await;
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(echoed(&body, "x-tenant-id"), ["t-1"], "{body}");
    assert!(!body.contains("evil"), "{body}");

    // A token without `oid`: the forged header is removed and the default sent.
    let no_oid = rs256(&without(claims("bob", json!(["API.Read"])), "oid"));
    let (parts, body) = call(
        &client,
        Method::GET,
        &url,
        Some(&no_oid),
        &[("X-User-Id", "admin")],
    )
    .await;
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(echoed(&body, "x-user-id"), ["anonymous"], "{body}");

    // The reader may not write: the first rule for POST/PUT/DELETE wants API.Write.
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let (parts, body) = call(&client, method.clone(), &url, Some(&reader), &[]).await;
        assert_exact_error(&parts, &body, 403, ROLE_DENIED);
        assert!(
            parts.headers.get("www-authenticate").is_none(),
            "{method}: {parts:?}"
        );
    }

    // Nor by writing the method in lower case: `post` is another method to the role
    // rules, but a backend that upper-cases methods (Werkzeug, Django) would act on it
    // as POST. The gateway refuses such a method before any policy.
    for method in ["post", "Post", "delete"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (parts, body) = call(&client, method.clone(), &url, Some(&reader), &[]).await;
        assert_exact_error(
            &parts,
            &body,
            400,
            "Bad request: the method is not in upper case",
        );
    }

    // A writer may POST. The second rule (all methods) wants API.Read, so a writer
    // without it is refused a GET: rules apply in order, the first for the method.
    let writer = rs256(&claims("carol", json!(["API.Write"])));
    let (parts, body) = call(&client, Method::POST, &url, Some(&writer), &[]).await;
    assert_eq!(parts.status, 200, "{body}");
    assert!(body.starts_with("POST /items"), "{body}");
    assert_eq!(echoed(&body, "x-user-id"), ["oid-carol"], "{body}");
    let (parts, body) = call(&client, Method::GET, &url, Some(&writer), &[]).await;
    assert_exact_error(&parts, &body, 403, ROLE_DENIED);

    // Roles as one space-separated string.
    let both = rs256(&claims("dave", json!("API.Read API.Write")));
    for method in [Method::GET, Method::POST] {
        let (parts, body) = call(&client, method, &url, Some(&both), &[]).await;
        assert_eq!(parts.status, 200, "{body}");
    }
    // No roles claim at all: refused (403: the token itself is valid).
    let no_roles = rs256(&without(claims("erin", json!([])), "roles"));
    let (parts, body) = call(&client, Method::GET, &url, Some(&no_roles), &[]).await;
    assert_exact_error(&parts, &body, 403, ROLE_DENIED);

    // No token: 401 "JWT not present." with a bare Bearer challenge.
    let (parts, body) = call(&client, Method::GET, &url, None, &[]).await;
    assert_401(&parts, &body, NOT_PRESENT, "Bearer");
    // Another scheme's credentials are not a token either.
    let (parts, body) = call(
        &client,
        Method::GET,
        &url,
        None,
        &[("authorization", "Basic YWxpY2U6c2VjcmV0")],
    )
    .await;
    assert_401(&parts, &body, NOT_PRESENT, "Bearer");

    // Expired two minutes ago (no clock skew configured).
    let expired = rs256(&with(
        claims("alice", json!(["API.Read"])),
        "exp",
        json!(now() - 120),
    ));
    let (parts, body) = call(&client, Method::GET, &url, Some(&expired), &[]).await;
    assert_invalid(&parts, &body);

    // Not valid yet.
    let early = rs256(&with(
        claims("alice", json!(["API.Read"])),
        "nbf",
        json!(now() + 300),
    ));
    let (parts, body) = call(&client, Method::GET, &url, Some(&early), &[]).await;
    assert_invalid(&parts, &body);

    // alg = none, no signature.
    let unsigned = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        B64.encode(claims("mallory", json!(["API.Write"])).to_string())
    );
    let (parts, body) = call(&client, Method::GET, &url, Some(&unsigned), &[]).await;
    assert_invalid(&parts, &body);

    // HS256 with the RSA public key's PEM as the HMAC secret (key confusion).
    let confused = sign(
        &json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}),
        &claims("mallory", json!(["API.Write"])),
        &EncodingKey::from_secret(idp_key().public_pem.as_bytes()).unwrap(),
        Algorithm::HS256,
    );
    let (parts, body) = call(&client, Method::GET, &url, Some(&confused), &[]).await;
    assert_invalid(&parts, &body);

    // A valid token's signature on other claims (roles raised).
    let mut segments: Vec<String> = reader.split('.').map(str::to_owned).collect();
    segments[1] = B64.encode(claims("alice", json!(["API.Read", "API.Write"])).to_string());
    let tampered = segments.join(".");
    let (parts, body) = call(&client, Method::POST, &url, Some(&tampered), &[]).await;
    assert_invalid(&parts, &body);

    // Wrong audience, wrong issuer, missing audience.
    for bad in [
        with(
            claims("alice", json!(["API.Read"])),
            "aud",
            json!("api://other"),
        ),
        with(
            claims("alice", json!(["API.Read"])),
            "iss",
            json!("https://evil.test/"),
        ),
        without(claims("alice", json!(["API.Read"])), "aud"),
    ] {
        let (parts, body) = call(&client, Method::GET, &url, Some(&rs256(&bad)), &[]).await;
        assert_invalid(&parts, &body);
    }

    // A kid the set does not have: static keys are all tried, so the signature still
    // verifies (APIM's behaviour) and the request passes.
    let other_kid = rs256_kid(&claims("alice", json!(["API.Read"])), "k9");
    let (parts, body) = call(&client, Method::GET, &url, Some(&other_kid), &[]).await;
    assert_eq!(parts.status, 200, "{body}");

    // Garbage.
    let (parts, body) = call(&client, Method::GET, &url, Some("not.a.jwt"), &[]).await;
    assert_invalid(&parts, &body);

    // The rejections did not disturb a good token.
    let (parts, body) = call(&client, Method::GET, &url, Some(&reader), &[]).await;
    assert_eq!(parts.status, 200, "{body}");
}

// ---------------------------------------------------------------------------
// 2. A rate limit per `sub`
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_counts_per_sub_claim() {
    let setup = Setup::new("ratelimit");
    let backend = start_backend().await;
    let daemon = setup
        .start(&format!(
            r#"{provider}
[[api]]
name = "orders"
path_prefix = "/orders"
backend = "http://{backend}/"
subscription = "none"
jwt = {{ provider = "corp" }}
rate_limit = {{ calls = 2, period_secs = 60, counter = "claim:sub" }}
"#,
            provider = static_provider(&setup)
        ))
        .await;
    let client = client(&setup.pki, false);
    let url = setup.url("/orders/x");

    let alice = rs256(&claims("alice", json!([])));
    // Another token of the same subject (other claims, so another token).
    let alice_again = rs256(&with(claims("alice", json!([])), "oid", json!("second")));
    let bob = rs256(&claims("bob", json!([])));

    for token in [&alice, &bob, &alice_again, &bob] {
        let (parts, body) = call(&client, Method::GET, &url, Some(token), &[]).await;
        assert_eq!(parts.status, 200, "{body}\n{}", daemon.log());
    }
    // Alice's third call, with either of her tokens; Bob's third.
    for token in [&alice, &alice_again, &bob] {
        let (parts, body) = call(&client, Method::GET, &url, Some(token), &[]).await;
        assert_eq!(parts.status, 429, "{body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["statusCode"], 429, "{body}");
        assert!(
            json["message"]
                .as_str()
                .unwrap()
                .starts_with("Rate limit is exceeded. Try again in "),
            "{body}"
        );
        assert!(parts.headers.contains_key("retry-after"), "{parts:?}");
    }
    // A third subject still has its whole allowance.
    let carol = rs256(&claims("carol", json!([])));
    for _ in 0..2 {
        let (parts, body) = call(&client, Method::GET, &url, Some(&carol), &[]).await;
        assert_eq!(parts.status, 200, "{body}");
    }
    // No token: refused by the JWT check, before any counting.
    let (parts, body) = call(&client, Method::GET, &url, None, &[]).await;
    assert_401(&parts, &body, NOT_PRESENT, "Bearer");
}

// ---------------------------------------------------------------------------
// 3. Keys from a JWKS over https with a private CA
// ---------------------------------------------------------------------------

fn remote_provider(jwks_port: u16, ca_file: &Path) -> String {
    format!(
        "[[jwt_provider]]\nname = \"corp\"\nalgorithms = [\"RS256\"]\n\
         jwks_url = \"https://localhost:{jwks_port}/keys\"\nca_file = {ca:?}\n\
         issuers = [\"{ISS}\"]\naudiences = [\"{AUD}\"]\n",
        ca = ca_file.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_fetched_from_a_jwks_over_https_with_a_private_ca() {
    let setup = Setup::new("jwks");
    // The IdP's CA is not the gateway's: only `ca_file` makes its certificate trusted.
    let idp_pki = Pki::new();
    let (jwks_addr, fetches) = start_jwks_server(&idp_pki, jwks("k1")).await;
    let backend = start_backend().await;
    let daemon = setup
        .start(&format!(
            "{}{}",
            remote_provider(jwks_addr.port(), &idp_pki.ca_pem),
            orders_api(backend)
        ))
        .await;
    let client = client(&setup.pki, false);
    let url = setup.url("/orders/items");
    let reader = rs256(&claims("alice", json!(["API.Read"])));

    // The keys are fetched in the background after the start: poll for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (parts, body) = call(&client, Method::GET, &url, Some(&reader), &[]).await;
        if parts.status == 200 {
            assert_eq!(echoed(&body, "x-user-id"), ["oid-alice"], "{body}");
            break;
        }
        assert_exact_error(&parts, &body, 503, KEYS_UNAVAILABLE);
        assert!(
            Instant::now() < deadline,
            "keys not fetched within 10 s ({} fetches):\n{}",
            fetches.load(Ordering::Relaxed),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fetches.load(Ordering::Relaxed) >= 1);

    // The fetched key enforces like a static one.
    let (parts, body) = call(&client, Method::POST, &url, Some(&reader), &[]).await;
    assert_exact_error(&parts, &body, 403, ROLE_DENIED);
    let writer = rs256(&claims("carol", json!(["API.Write"])));
    let (parts, body) = call(&client, Method::POST, &url, Some(&writer), &[]).await;
    assert_eq!(parts.status, 200, "{body}");
    let expired = rs256(&with(
        claims("alice", json!(["API.Read"])),
        "exp",
        json!(now() - 120),
    ));
    let (parts, body) = call(&client, Method::GET, &url, Some(&expired), &[]).await;
    assert_invalid(&parts, &body);
    // A kid the fetched set does not have: 401 (and at most one refetch, later).
    let unknown = rs256_kid(&claims("alice", json!(["API.Read"])), "k2");
    let (parts, body) = call(&client, Method::GET, &url, Some(&unknown), &[]).await;
    assert_invalid(&parts, &body);
    let (parts, body) = call(&client, Method::GET, &url, None, &[]).await;
    assert_401(&parts, &body, NOT_PRESENT, "Bearer");
}

/// hunt9 M2: a reload that changes only how tokens are judged (here `audiences`)
/// keeps the fetched keys, so a JWKS endpoint that is down meanwhile costs nothing;
/// before, the provider was built anew without keys and its APIs answered 503 until
/// the endpoint came back.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_changing_only_audiences_keeps_the_fetched_keys() {
    let setup = Setup::new("jwks-reload");
    let idp_pki = Pki::new();
    let down = Arc::new(AtomicBool::new(false));
    let (jwks_addr, fetches) =
        start_failing_jwks_server(&idp_pki, jwks("k1"), Arc::clone(&down)).await;
    let backend = start_backend().await;
    let provider = remote_provider(jwks_addr.port(), &idp_pki.ca_pem);
    let daemon = setup
        .start(&format!("{provider}{}", orders_api(backend)))
        .await;
    let client = client(&setup.pki, false);
    let url = setup.url("/orders/items");
    let reader = rs256(&claims("alice", json!(["API.Read"])));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (parts, _) = call(&client, Method::GET, &url, Some(&reader), &[]).await;
        if parts.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no keys:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The IdP fails from now on; only the audiences change.
    down.store(true, Ordering::Relaxed);
    let other = "api://other";
    let changed = provider.replace(
        &format!("audiences = [\"{AUD}\"]"),
        &format!("audiences = [\"{AUD}\", \"{other}\"]"),
    );
    assert_ne!(changed, provider);
    setup
        .reload(&daemon, &format!("{changed}{}", orders_api(backend)))
        .await;

    // Tokens are judged by the new settings with the kept keys: the known token, a
    // new one, one for the added audience; one for no listed audience is refused.
    let fresh = rs256(&claims("bob", json!(["API.Read"])));
    let for_other = rs256(&with(
        claims("carol", json!(["API.Read"])),
        "aud",
        json!(other),
    ));
    for _ in 0..3 {
        for token in [&reader, &fresh, &for_other] {
            let (parts, body) = call(&client, Method::GET, &url, Some(token), &[]).await;
            assert_eq!(parts.status, 200, "{body}\n{}", daemon.log());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let elsewhere = rs256(&with(
        claims("dave", json!(["API.Read"])),
        "aud",
        json!("api://elsewhere"),
    ));
    let (parts, body) = call(&client, Method::GET, &url, Some(&elsewhere), &[]).await;
    assert_invalid(&parts, &body);
    let log = daemon.log();
    assert!(log.contains("JWT providers kept 1 started 0"), "{log}");
    // Nothing was fetched for the reload.
    assert_eq!(fetches.load(Ordering::Relaxed), 1, "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_never_loaded_answer_503() {
    let setup = Setup::new("jwks-down");
    let idp_pki = Pki::new();
    // Nothing listens on the JWKS port.
    let jwks_port = free_port();
    let backend = start_backend().await;
    let daemon = setup
        .start(&format!(
            "{}{}",
            remote_provider(jwks_port, &idp_pki.ca_pem),
            orders_api(backend)
        ))
        .await;
    let client = client(&setup.pki, false);
    let url = setup.url("/orders/items");
    let reader = rs256(&claims("alice", json!(["API.Read"])));

    // Before and after the first fetch has failed (it fails at once: connection
    // refused), a token cannot be checked: 503, no challenge.
    for _ in 0..5 {
        let (parts, body) = call(&client, Method::GET, &url, Some(&reader), &[]).await;
        assert_exact_error(&parts, &body, 503, KEYS_UNAVAILABLE);
        assert!(
            parts.headers.get("www-authenticate").is_none(),
            "{parts:?}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The fetch failure is in the log.
    let log = daemon.log();
    assert!(log.contains("JWT key fetch failed"), "{log}");
}

// ---------------------------------------------------------------------------
// 4. Configuration errors
// ---------------------------------------------------------------------------

/// A configuration with a plain listener and `body`, written to `name` in `setup`'s
/// directory.
fn config_file(setup: &Setup, name: &str, body: &str) -> PathBuf {
    setup.write(
        name,
        format!(
            "[daemon]\nstate_dir = {state:?}\n\n[[listener]]\naddress = \"127.0.0.1:{port}\"\nplain_http = true\n\n{body}",
            state = setup.state_dir.display().to_string(),
            port = setup.port,
            // The plain listener serves the APIs that name it.
            body = body.replace(
                "[[api]]\n",
                &format!("[[api]]\nlisteners = [\"127.0.0.1:{}\"]\n", setup.port),
            ),
        )
        .as_bytes(),
    )
}

#[test]
fn check_config_reports_jwt_errors_with_exit_64() {
    let setup = Setup::new("check");
    let api = "[[api]]\nname = \"orders\"\npath_prefix = \"/orders\"\nbackend = \"http://127.0.0.1:9/\"\n\
               subscription = \"none\"\n";

    // The reference: a good provider and API pass.
    let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let good_secret = setup.write("hs-good.b64", secret.as_bytes());
    let good = config_file(
        &setup,
        "good.toml",
        &format!(
            "[[jwt_provider]]\nname = \"corp\"\nalgorithms = [\"HS256\"]\n\
             keys = [{{ hmac_secret_file = {path:?} }}]\n\n{api}jwt = {{ provider = \"corp\" }}\n",
            path = good_secret.display().to_string()
        ),
    );
    let (code, err) = check_config(&good);
    assert_eq!(code, 0, "{err}");

    // An API naming a provider nobody declared (`jwt` on line 14 of the file).
    let unknown = config_file(
        &setup,
        "unknown.toml",
        &format!("{api}jwt = {{ provider = \"nobody\" }}\n"),
    );
    let (code, err) = check_config(&unknown);
    assert_eq!(code, 64, "{err}");
    let expected = format!(
        "{}:14:20: unknown jwt_provider \"nobody\"",
        unknown.display()
    );
    assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");

    // An HMAC secret of 16 bytes (from a file), used by an API.
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
    let short_secret = setup.write("hs-short.b64", short.as_bytes());
    let short = config_file(
        &setup,
        "short.toml",
        &format!(
            "[[jwt_provider]]\nname = \"corp\"\nalgorithms = [\"HS256\"]\n\
             keys = [{{ hmac_secret_file = {path:?} }}]\n\n{api}jwt = {{ provider = \"corp\" }}\n",
            path = short_secret.display().to_string()
        ),
    );
    let (code, err) = check_config(&short);
    assert_eq!(code, 64, "{err}");
    let expected = format!(
        "{}:8:1: invalid [[jwt_provider]] \"corp\": keys[0]: HMAC secret of 16 bytes; \
         at least 32 random bytes (256 bits) are required",
        short.display()
    );
    assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    // The secret itself is never echoed.
    let secret_text = std::fs::read_to_string(&short_secret).unwrap();
    assert!(!err.contains(&secret_text), "{err}");

    // hunt9 L3: a user name and password in a key URL would never be sent, and were
    // logged at every failed fetch: refused, at the provider, without echoing them.
    for (field, url) in [
        ("jwks_url", "https://ju:JwksPw@idp.test/keys"),
        (
            "openid_config_url",
            "https://ju:JwksPw@idp.test/.well-known/openid-configuration",
        ),
    ] {
        let userinfo = config_file(
            &setup,
            "userinfo.toml",
            &format!(
                "[[jwt_provider]]\nname = \"corp\"\nalgorithms = [\"RS256\"]\n\
                 {field} = \"{url}\"\n\n{api}jwt = {{ provider = \"corp\" }}\n"
            ),
        );
        let (code, err) = check_config(&userinfo);
        assert_eq!(code, 64, "{err}");
        let expected = format!(
            "{}:8:1: invalid [[jwt_provider]] \"corp\": {field}: a user name or password in \
             the URL is never sent",
            userinfo.display()
        );
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
        assert!(!err.contains("JwksPw"), "{err}");
    }
}

/// hunt9 L7: keys of a JWKS that are skipped (here a symmetric `oct` key, never
/// taken from a JWKS) were never logged, so an IdP key refused here showed only as
/// 401s. The fetch now warns, naming the skipped key and why; the usable key works.
#[tokio::test(flavor = "multi_thread")]
async fn skipped_jwks_keys_are_logged() {
    let setup = Setup::new("jwks-skipped");
    let idp_pki = Pki::new();
    let mut doc: serde_json::Value = serde_json::from_str(&jwks("k1")).unwrap();
    doc["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kty": "oct", "kid": "hs-secret", "k": "AAAA"}));
    let (jwks_addr, _) = start_jwks_server(&idp_pki, doc.to_string()).await;
    let backend = start_backend().await;
    let daemon = setup
        .start(&format!(
            "{}{}",
            remote_provider(jwks_addr.port(), &idp_pki.ca_pem),
            orders_api(backend)
        ))
        .await;
    daemon.wait_for_log("JWKS keys skipped", 0).await;
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("JWKS keys skipped"))
        .unwrap();
    assert!(
        line.contains("WARN") && line.contains("kept=1") && line.contains("skipped=1"),
        "{line}"
    );
    assert!(line.contains("hs-secret"), "{line}");
}

/// hunt9 L3: a failed key fetch is logged without the URL's query (an IdP may
/// want a key or signature there).
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_key_fetch_logs_no_query_string() {
    let setup = Setup::new("jwks-query");
    let idp_pki = Pki::new();
    let jwks_port = free_port();
    let backend = start_backend().await;
    let provider = remote_provider(jwks_port, &idp_pki.ca_pem)
        .replace("/keys\"", "/keys?appid=7&sig=QuerySecret\"");
    assert!(provider.contains("QuerySecret"));
    let daemon = setup
        .start(&format!("{provider}{}", orders_api(backend)))
        .await;
    daemon.wait_for_log("JWT key fetch failed", 0).await;
    let log = daemon.log();
    assert!(!log.contains("QuerySecret"), "{log}");
    assert!(
        log.contains(&format!("https://localhost:{jwks_port}/keys?...")),
        "{log}"
    );
}

/// What a client writes into a token never starts a line of rampartd's log: a
/// token whose header's `alg` holds a line break and a made-up access line is
/// refused, and its detail is logged on the refusal's own line, escaped (before,
/// the made-up line stood in the log as rampartd's). A signed token whose claim
/// cannot be a header value (CR LF) is refused rather than forwarded without the
/// claim's header, or with its default (`anonymous`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_bytes_never_start_a_log_line_and_unsafe_claims_are_refused() {
    let setup = Setup::new("log-injection");
    let backend = start_backend().await;
    let daemon = setup
        .start(&format!(
            "{}{}",
            static_provider(&setup),
            orders_api(backend)
        ))
        .await;
    let client = client(&setup.pki, false);
    let url = setup.url("/orders/items");

    let forged =
        "x\n2026-11-30T22:31:00.000000Z  INFO rampart::access: peer=10.6.6.6:1 status=200 FORGED";
    let token = sign(
        &json!({"alg": forged, "typ": "JWT", "kid": "k1"}),
        &claims("alice", json!(["API.Read"])),
        &rsa_signer(),
        Algorithm::RS256,
    );
    let (parts, body) = call(&client, Method::GET, &url, Some(&token), &[]).await;
    assert_eq!(parts.status, 401, "{body}");
    daemon.wait_for_log("FORGED", 0).await;
    let log = daemon.log();
    assert!(
        !log.lines()
            .any(|line| line.contains("FORGED") && !line.contains("JWT refused")),
        "a client's bytes started a line of the log:\n{log}"
    );
    assert!(log.contains("`x\\n2026-11-30T22:31:00"), "{log}");

    let unsafe_claim = rs256(&with(
        claims("alice", json!(["API.Read"])),
        "oid",
        json!("alice\r\nX-Admin: 1"),
    ));
    let (parts, body) = call(&client, Method::GET, &url, Some(&unsafe_claim), &[]).await;
    assert_eq!(parts.status, 401, "{body}");
    assert!(body.contains("Invalid JWT."), "{body}");
    daemon
        .wait_for_log("cannot be sent as header x-user-id", 0)
        .await;
    // The same token with a plain claim passes.
    let plain = rs256(&with(
        claims("alice", json!(["API.Read"])),
        "oid",
        json!("alice"),
    ));
    let (parts, body) = call(&client, Method::GET, &url, Some(&plain), &[]).await;
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(echoed(&body, "x-user-id"), ["alice"], "{body}");
}

/// hunt9 M1: a claim sent as a header that starts or ends with a space or tab is a
/// malformed field over HTTP/2 (RFC 9113 §8.2.1); an h2 backend may drop the whole
/// connection for it, other clients' requests included. Such a token is refused as
/// invalid, as one whose claim holds a control character, and nothing is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_with_edge_whitespace_are_refused_and_never_forwarded() {
    let setup = Setup::new("padded-claim");
    fn ok(_: &str, _: usize) -> &'static [u8] {
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    }
    let backend = RawBackend::start(None, ok).await;
    let daemon = setup
        .start(&format!(
            "{}{}",
            static_provider(&setup),
            orders_api(backend.addr)
        ))
        .await;
    let client = client(&setup.pki, false);
    let url = setup.url("/orders/items");
    for padded in ["x ", " padded ", "tab\tx\t", "\tx"] {
        let token = rs256(&with(
            claims("alice", json!(["API.Read"])),
            "oid",
            json!(padded),
        ));
        let (parts, body) = call(&client, Method::GET, &url, Some(&token), &[]).await;
        assert_invalid(&parts, &body);
    }
    let refused = "cannot be sent as header x-user-id: it starts or ends with a space or tab";
    daemon.wait_for_log(refused, 3).await;
    assert_eq!(daemon.log_count(refused), 4, "{}", daemon.log());
    assert!(backend.requests().is_empty(), "{:?}", backend.requests());
    // Inner spaces are fine.
    let inner = rs256(&with(
        claims("alice", json!(["API.Read"])),
        "oid",
        json!("Alice Smith"),
    ));
    let (parts, body) = call(&client, Method::GET, &url, Some(&inner), &[]).await;
    assert_eq!(parts.status, 200, "{body}");
    assert_eq!(backend.requests().len(), 1);
}
