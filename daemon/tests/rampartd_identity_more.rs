//! More identity checks through the real `rampartd` (issue 4): an identity provider
//! with OIDC discovery whose keys rotate (one refetch for a new `kid`, then a 5-minute
//! limit; the last good keys survive an outage), PS256/ES256/EdDSA/HS256 providers
//! with time and claim rules, hostile tokens, expired and thumbprint-matched client
//! certificates, and an `https://` backend whose CA is or is not in `backend_ca`.
//!
//! Every test writes its keys and configuration into its own temporary directory,
//! starts rampartd on a free loopback port and kills it on drop.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use gateway_support::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey};
use rampart::gateway::CertFiles;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

const ISS: &str = "https://idp.test/rampart";
const AUD: &str = "api://orders";
const INVALID: &str = "Invalid JWT.";

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// The daemon under test.
type Daemon = Rampartd;

/// One test's directory, gateway CA and certificate.
struct Setup {
    dir: TempDir,
    pki: Pki,
    cert: CertFiles,
    starts: AtomicU32,
}

impl Setup {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(&format!("idm-{name}"));
        std::fs::create_dir_all(dir.0.join("state")).unwrap();
        let pki = Pki::new();
        let cert = pki.leaf("gw", &["localhost"]);
        Self {
            dir,
            pki,
            cert,
            starts: AtomicU32::new(0),
        }
    }

    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.0.join(name);
        gateway_support::write_private(&path, contents);
        path
    }

    /// Starts rampartd on a new free port with one TLS listener (`tls_extra` appended
    /// inside its `tls = { ... }`) and `body`; waits until it listens.
    async fn start(&self, tls_extra: &str, body: &str) -> Daemon {
        let port = free_port();
        let n = self.starts.fetch_add(1, Ordering::Relaxed);
        let config = self.dir.0.join(format!("rampart-{n}.toml"));
        let text = format!(
            "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\n\n\
             [[listener]]\naddress = \"127.0.0.1:{port}\"\n\
             tls = {{ cert = {cert:?}, key = {key:?}{tls_extra} }}\n\n{body}\n",
            state = self.dir.0.join("state").display().to_string(),
            runtime = self.dir.0.join("run").display().to_string(),
            cert = self.cert.cert_chain_pem.display().to_string(),
            key = self.cert.key_pem.display().to_string(),
        );
        let log = self.dir.0.join(format!("rampartd-{n}.log"));
        Rampartd::start(&config, &text, log, port).await
    }
}

// ---------------------------------------------------------------------------
// Backends and clients
// ---------------------------------------------------------------------------

/// A plain HTTP backend echoing the request line and headers; counts requests.
async fn start_counting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let mut lines = format!("{} {}\n", request.method(), request.uri());
                    for (name, value) in request.headers() {
                        lines.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
                    }
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(lines)))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

type PlainClient = TestClient<Empty<Bytes>>;

/// GET `url` with `Authorization: Bearer token` when given.
async fn call(
    client: &PlainClient,
    url: &str,
    token: Option<&str>,
) -> (http::response::Parts, String) {
    let mut request = Request::get(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(client, request.body(Empty::new()).unwrap()).await
}

/// A refused token: 401 "Invalid JWT." with `Bearer error="invalid_token"`.
fn assert_invalid(parts: &http::response::Parts, body: &str) {
    assert_apim_error(parts, body, 401, INVALID);
    assert_eq!(
        parts.headers["www-authenticate"], "Bearer error=\"invalid_token\"",
        "{parts:?}"
    );
}

fn api(name: &str, prefix: &str, backend: SocketAddr, extra: &str) -> String {
    format!(
        "[[api]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nbackend = \"http://{backend}/\"\n\
         subscription = \"none\"\n{extra}\n"
    )
}

// ---------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------

/// A key pair as PEM (PKCS#8 private, SPKI public).
struct KeyPem {
    private_pem: String,
    public_pem: String,
}

fn key_pem(pair: &rcgen::KeyPair) -> KeyPem {
    KeyPem {
        private_pem: pair.serialize_pem(),
        public_pem: pair.public_key_pem(),
    }
}

/// Three RSA keys (k1, k2, k3), generated once for the whole file.
fn rsa_keys() -> &'static [KeyPem; 3] {
    static KEYS: OnceLock<[KeyPem; 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        std::array::from_fn(|_| {
            key_pem(
                &rcgen::KeyPair::generate_rsa_for(
                    &rcgen::PKCS_RSA_SHA256,
                    rcgen::RsaKeySize::_2048,
                )
                .unwrap(),
            )
        })
    })
}

fn rsa_signer(index: usize) -> EncodingKey {
    EncodingKey::from_rsa_pem(rsa_keys()[index].private_pem.as_bytes()).unwrap()
}

/// A JWK (RS256, `use = "sig"`) for RSA key `index`.
fn rsa_jwk(index: usize, kid: &str) -> Value {
    let jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa_signer(index), Algorithm::RS256).unwrap();
    let jwk = serde_json::to_value(jwk).unwrap();
    json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": jwk["n"], "e": jwk["e"]})
}

fn jwks(keys: &[(usize, &str)]) -> String {
    let keys: Vec<Value> = keys.iter().map(|(i, kid)| rsa_jwk(*i, kid)).collect();
    json!({ "keys": keys }).to_string()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `header.claims.signature`, the header written as given.
fn sign(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// An RS256 token with `kid`, signed by RSA key `index`.
fn rs256(claims: &Value, index: usize, kid: &str) -> String {
    sign(
        &json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        claims,
        &rsa_signer(index),
        Algorithm::RS256,
    )
}

/// Claims valid for the next 10 minutes for `sub`.
fn claims(sub: &str) -> Value {
    let now = now();
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": sub,
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 600,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

// ---------------------------------------------------------------------------
// An identity provider over https: discovery and a JWKS that can change or fail
// ---------------------------------------------------------------------------

struct IdpState {
    jwks: String,
    /// The JWKS endpoint answers 503.
    down: bool,
    /// Every path asked for, in order.
    paths: Vec<String>,
}

struct Idp {
    pki: Pki,
    port: u16,
    state: Arc<Mutex<IdpState>>,
    jwks_fetches: Arc<AtomicUsize>,
}

impl Idp {
    /// Serves `/.well-known/openid-configuration` (issuer and `jwks_uri`) and `/keys`
    /// over https for `localhost`, with a CA of its own.
    async fn start(jwks: String) -> Self {
        let pki = Pki::new();
        let files = pki.leaf("idp", &["localhost"]);
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
        let port = listener.local_addr().unwrap().port();
        let discovery = Bytes::from(
            json!({
                "issuer": ISS,
                "jwks_uri": format!("https://localhost:{port}/keys"),
                "id_token_signing_alg_values_supported": ["RS256"],
            })
            .to_string(),
        );
        let state = Arc::new(Mutex::new(IdpState {
            jwks,
            down: false,
            paths: Vec::new(),
        }));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let (shared, counter) = (Arc::clone(&state), Arc::clone(&jwks_fetches));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let (shared, counter, discovery) =
                    (Arc::clone(&shared), Arc::clone(&counter), discovery.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |request: Request<Incoming>| {
                        let path = request.uri().path().to_owned();
                        let mut state = shared.lock().unwrap();
                        state.paths.push(path.clone());
                        let response = match path.as_str() {
                            "/.well-known/openid-configuration" => Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(discovery.clone())),
                            "/keys" => {
                                counter.fetch_add(1, Ordering::Relaxed);
                                if state.down {
                                    Response::builder()
                                        .status(503)
                                        .body(Full::new(Bytes::from_static(b"down")))
                                } else {
                                    Response::builder()
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(state.jwks.clone())))
                                }
                            }
                            _ => Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new())),
                        };
                        drop(state);
                        async move { Ok::<_, Infallible>(response.unwrap()) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            pki,
            port,
            state,
            jwks_fetches,
        }
    }

    fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    fn publish(&self, jwks: String) {
        self.state.lock().unwrap().jwks = jwks;
    }

    fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    fn paths(&self) -> Vec<String> {
        self.state.lock().unwrap().paths.clone()
    }

    /// A `[[jwt_provider]]` "corp" (RS256) using discovery.
    fn discovery_provider(&self) -> String {
        format!(
            "[[jwt_provider]]\nname = \"corp\"\nalgorithms = [\"RS256\"]\n\
             openid_config_url = \"https://localhost:{port}/.well-known/openid-configuration\"\n\
             ca_file = {ca:?}\nissuers = [\"{ISS}\"]\naudiences = [\"{AUD}\"]\n",
            port = self.port,
            ca = self.pki.ca_pem.display().to_string()
        )
    }
}

/// Polls `url` with `token` until it passes (the keys are fetched in the background);
/// every other answer must be `allowed` (a status).
async fn wait_until_ok(
    client: &PlainClient,
    url: &str,
    token: &str,
    allowed: u16,
    within: Duration,
    daemon: &Daemon,
    idp: &Idp,
) -> Duration {
    let started = Instant::now();
    loop {
        let (parts, body) = call(client, url, Some(token)).await;
        if parts.status == 200 {
            return started.elapsed();
        }
        assert_eq!(parts.status.as_u16(), allowed, "{body}\n{}", daemon.log());
        assert!(
            started.elapsed() < within,
            "token not accepted within {within:?} ({} JWKS fetches, paths {:?}):\n{}",
            idp.fetches(),
            idp.paths(),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// 1. Discovery and rotating keys
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rotated_keys_are_refetched_once_then_rate_limited() {
    let setup = Setup::new("rotate");
    let idp = Idp::start(jwks(&[(0, "k1")])).await;
    let (backend, hits) = start_counting_backend().await;
    let daemon = setup
        .start(
            "",
            &format!(
                "{}{}",
                idp.discovery_provider(),
                api(
                    "orders",
                    "/orders",
                    backend,
                    "jwt = { provider = \"corp\" }"
                )
            ),
        )
        .await;
    let client = client(&setup.pki, false);
    let url = daemon.url("/orders/items");

    // The first load: discovery, then the JWKS (503 until then).
    let first = rs256(&claims("alice"), 0, "k1");
    wait_until_ok(
        &client,
        &url,
        &first,
        503,
        Duration::from_secs(10),
        &daemon,
        &idp,
    )
    .await;
    assert_eq!(idp.fetches(), 1, "{:?}", idp.paths());
    let paths = idp.paths();
    assert_eq!(
        paths.first().map(String::as_str),
        Some("/.well-known/openid-configuration"),
        "{paths:?}"
    );

    // The IdP rotates: k2 is published, k1 dropped. A token with kid k2 makes the
    // gateway fetch once, then passes.
    idp.publish(jwks(&[(1, "k2")]));
    let rotated = rs256(&claims("bob"), 1, "k2");
    let took = wait_until_ok(
        &client,
        &url,
        &rotated,
        401,
        Duration::from_secs(5),
        &daemon,
        &idp,
    )
    .await;
    assert_eq!(
        idp.fetches(),
        2,
        "exactly one refetch for the new kid (took {took:?}): {:?}",
        idp.paths()
    );
    // A fresh k2 token passes too (not from the token cache).
    let (parts, body) = call(&client, &url, Some(&rs256(&claims("carol"), 1, "k2"))).await;
    assert_eq!(parts.status, 200, "{body}");

    // k1 is gone from the set: a new k1 token is refused.
    let (parts, body) = call(&client, &url, Some(&rs256(&claims("dave"), 0, "k1"))).await;
    assert_invalid(&parts, &body);

    // Yet another unknown kid right after: 401, and no further fetch (at most one per
    // 5 minutes), even when asked again and again.
    let before = hits.load(Ordering::SeqCst);
    for n in 0..5 {
        let token = rs256(&claims(&format!("eve{n}")), 2, "k3");
        let (parts, body) = call(&client, &url, Some(&token)).await;
        assert_invalid(&parts, &body);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(idp.fetches(), 2, "rate limited: {:?}", idp.paths());
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "refused tokens reached the backend"
    );

    // The JWKS endpoint goes down: the current keys keep serving.
    idp.set_down(true);
    for n in 0..3 {
        let (parts, body) = call(
            &client,
            &url,
            Some(&rs256(&claims(&format!("frank{n}")), 1, "k2")),
        )
        .await;
        assert_eq!(parts.status, 200, "{body}\n{}", daemon.log());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_good_keys_serve_while_the_jwks_endpoint_is_down() {
    let setup = Setup::new("jwks-outage");
    let idp = Idp::start(jwks(&[(0, "k1")])).await;
    let (backend, _) = start_counting_backend().await;
    let daemon = setup
        .start(
            "",
            &format!(
                "{}{}",
                idp.discovery_provider(),
                api(
                    "orders",
                    "/orders",
                    backend,
                    "jwt = { provider = \"corp\" }"
                )
            ),
        )
        .await;
    let client = client(&setup.pki, false);
    let url = daemon.url("/orders/items");
    let first = rs256(&claims("alice"), 0, "k1");
    wait_until_ok(
        &client,
        &url,
        &first,
        503,
        Duration::from_secs(10),
        &daemon,
        &idp,
    )
    .await;
    assert_eq!(idp.fetches(), 1);

    // The endpoint fails; an unknown kid makes the gateway try (and fail) a refetch.
    idp.set_down(true);
    let (parts, body) = call(&client, &url, Some(&rs256(&claims("x"), 1, "k2"))).await;
    assert_invalid(&parts, &body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while idp.fetches() < 2 {
        assert!(
            Instant::now() < deadline,
            "no refetch after an unknown kid: {:?}\n{}",
            idp.paths(),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.log().contains("JWT key fetch failed") {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The failed fetch kept the last good set: new k1 tokens pass.
    for n in 0..3 {
        let token = rs256(&claims(&format!("bob{n}")), 0, "k1");
        let (parts, body) = call(&client, &url, Some(&token)).await;
        assert_eq!(parts.status, 200, "{body}\n{}", daemon.log());
    }
    assert_eq!(idp.fetches(), 2, "{:?}", idp.paths());
}

// ---------------------------------------------------------------------------
// 2. Algorithms, time and claim rules
// ---------------------------------------------------------------------------

struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: &'static str,
}

impl Signer {
    fn token(&self, claims: &Value) -> String {
        let alg = serde_json::to_value(self.alg).unwrap();
        sign(
            &json!({"alg": alg, "typ": "JWT", "kid": self.kid}),
            claims,
            &self.key,
            self.alg,
        )
    }
}

fn provider(name: &str, alg: &str, keys: &str, extra: &str) -> String {
    format!(
        "[[jwt_provider]]\nname = \"{name}\"\nalgorithms = [\"{alg}\"]\nkeys = [{keys}]\n\
         issuers = [\"{ISS}\"]\naudiences = [\"{AUD}\"]\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn each_algorithm_family_and_the_time_and_claim_rules() {
    let setup = Setup::new("algs");
    let (backend, hits) = start_counting_backend().await;

    let rsa = &rsa_keys()[0];
    let ec = key_pem(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap());
    let ed = key_pem(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap());
    let mut secret = [0u8; 48];
    getrandom::fill(&mut secret).unwrap();

    let rsa_file = setup.write("rsa.pem", rsa.public_pem.as_bytes());
    let ec_file = setup.write("ec.pem", ec.public_pem.as_bytes());
    let ed_file = setup.write("ed.pem", ed.public_pem.as_bytes());
    let hs_file = setup.write(
        "hs.b64",
        base64::engine::general_purpose::STANDARD
            .encode(secret)
            .as_bytes(),
    );
    let pem_key = |kid: &str, path: &PathBuf| {
        format!(
            "{{ kid = \"{kid}\", pem_file = {:?} }}",
            path.display().to_string()
        )
    };
    let scp_rule = |mode: &str| {
        format!(
            "required_claims = [{{ name = \"scp\", values = [\"orders.read\", \"orders.write\"], \
             match = \"{mode}\", separator = \" \" }}]"
        )
    };
    let providers = [
        provider("ps", "PS256", &pem_key("p1", &rsa_file), ""),
        provider("es", "ES256", &pem_key("e1", &ec_file), &scp_rule("any")),
        provider(
            "es-all",
            "ES256",
            &pem_key("e1", &ec_file),
            &scp_rule("all"),
        ),
        provider(
            "es-skew",
            "ES256",
            &pem_key("e1", &ec_file),
            "clock_skew_secs = 120",
        ),
        provider("ed", "EdDSA", &pem_key("d1", &ed_file), ""),
        provider(
            "hs",
            "HS256",
            &format!(
                "{{ hmac_secret_file = {:?} }}",
                hs_file.display().to_string()
            ),
            "",
        ),
    ]
    .concat();
    let apis = [
        ("ps", "/ps"),
        ("es", "/es"),
        ("es-all", "/esall"),
        ("es-skew", "/esskew"),
        ("ed", "/ed"),
        ("hs", "/hs"),
    ]
    .iter()
    .map(|(name, prefix)| {
        api(
            name,
            prefix,
            backend,
            &format!("jwt = {{ provider = \"{name}\" }}"),
        )
    })
    .collect::<String>();
    let daemon = setup.start("", &format!("{providers}{apis}")).await;
    let client = client(&setup.pki, false);

    let ps = Signer {
        key: EncodingKey::from_rsa_pem(rsa.private_pem.as_bytes()).unwrap(),
        alg: Algorithm::PS256,
        kid: "p1",
    };
    let es = Signer {
        key: EncodingKey::from_ec_pem(ec.private_pem.as_bytes()).unwrap(),
        alg: Algorithm::ES256,
        kid: "e1",
    };
    let eddsa = Signer {
        key: EncodingKey::from_ed_pem(ed.private_pem.as_bytes()).unwrap(),
        alg: Algorithm::EdDSA,
        kid: "d1",
    };
    let hs = Signer {
        key: EncodingKey::from_secret(&secret).unwrap(),
        alg: Algorithm::HS256,
        kid: "h1",
    };
    let scoped = |sub: &str| with(claims(sub), "scp", json!("profile orders.read"));

    // A valid token of each family passes on its own provider.
    for (signer, path) in [(&ps, "/ps"), (&es, "/es"), (&eddsa, "/ed"), (&hs, "/hs")] {
        let (parts, body) = call(
            &client,
            &daemon.url(&format!("{path}/x")),
            Some(&signer.token(&scoped("alice"))),
        )
        .await;
        assert_eq!(parts.status, 200, "{path}: {body}\n{}", daemon.log());
        assert!(body.starts_with("GET /x"), "{body}");
    }
    // The algorithm is the provider's: another family's valid token is refused.
    for (signer, path) in [(&es, "/ps"), (&ps, "/es"), (&hs, "/ed"), (&eddsa, "/hs")] {
        let (parts, body) = call(
            &client,
            &daemon.url(&format!("{path}/x")),
            Some(&signer.token(&scoped("alice"))),
        )
        .await;
        assert_invalid(&parts, &body);
    }
    // RS256 with the PS256 provider's own key: the algorithm is pinned, not the key.
    let rs = sign(
        &json!({"alg": "RS256", "typ": "JWT", "kid": "p1"}),
        &scoped("alice"),
        &ps.key,
        Algorithm::RS256,
    );
    let (parts, body) = call(&client, &daemon.url("/ps/x"), Some(&rs)).await;
    assert_invalid(&parts, &body);

    let es_url = daemon.url("/es/x");
    let skew_url = daemon.url("/esskew/x");
    let all_url = daemon.url("/esall/x");
    let now = now();

    // Expired a minute ago: refused without skew, accepted with 120 s of skew.
    let expired = es.token(&with(scoped("bob"), "exp", json!(now - 60)));
    let (parts, body) = call(&client, &es_url, Some(&expired)).await;
    assert_invalid(&parts, &body);
    let (parts, body) = call(&client, &skew_url, Some(&expired)).await;
    assert_eq!(parts.status, 200, "{body}");
    // Expired long ago: refused even with skew.
    let mut stale = scoped("bob");
    stale["iat"] = json!(now - 1200);
    stale["nbf"] = json!(now - 1200);
    stale["exp"] = json!(now - 600);
    let long_expired = es.token(&stale);
    let (parts, body) = call(&client, &skew_url, Some(&long_expired)).await;
    assert_invalid(&parts, &body);

    // `nbf` a minute ahead: refused without skew, accepted when the skew covers it;
    // ten minutes ahead: refused either way.
    let early = es.token(&with(scoped("carol"), "nbf", json!(now + 60)));
    let (parts, body) = call(&client, &es_url, Some(&early)).await;
    assert_invalid(&parts, &body);
    let (parts, body) = call(&client, &skew_url, Some(&early)).await;
    assert_eq!(parts.status, 200, "{body}");
    let too_early = es.token(&with(
        with(scoped("carol"), "nbf", json!(now + 600)),
        "exp",
        json!(now + 1200),
    ));
    let (parts, body) = call(&client, &skew_url, Some(&too_early)).await;
    assert_invalid(&parts, &body);

    // A missing required claim: APIM's message naming it.
    let (parts, body) = call(&client, &es_url, Some(&es.token(&claims("dave")))).await;
    assert_apim_error(
        &parts,
        &body,
        401,
        "JWT token is missing the following claims: scp. Access denied.",
    );

    // match = "any": one of the values is enough; none is refused.
    let read_only = es.token(&with(claims("erin"), "scp", json!("orders.read")));
    let (parts, body) = call(&client, &es_url, Some(&read_only)).await;
    assert_eq!(parts.status, 200, "{body}");
    let profile_only = es.token(&with(claims("erin"), "scp", json!("profile")));
    let (parts, body) = call(&client, &es_url, Some(&profile_only)).await;
    assert_eq!(parts.status, 401, "{body}");
    let message = serde_json::from_str::<Value>(&body).unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with("Claim scp value of ")
            && message.ends_with(" is not allowed. Access denied."),
        "{body}"
    );

    // match = "all": one value is not enough, both are.
    let (parts, body) = call(&client, &all_url, Some(&read_only)).await;
    assert_eq!(parts.status, 401, "{body}");
    let message = serde_json::from_str::<Value>(&body).unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with("Claim scp value of ")
            && message.ends_with(" is not allowed. Access denied."),
        "{body}"
    );
    let both = es.token(&with(
        claims("frank"),
        "scp",
        json!("orders.write profile orders.read"),
    ));
    let (parts, body) = call(&client, &all_url, Some(&both)).await;
    assert_eq!(parts.status, 200, "{body}");
    let (parts, body) = call(&client, &all_url, Some(&es.token(&claims("frank")))).await;
    assert_apim_error(
        &parts,
        &body,
        401,
        "JWT token is missing the following claims: scp. Access denied.",
    );

    // 4 families + skew (2) + any (1) + all (1) = 8 requests reached the backend.
    assert_eq!(hits.load(Ordering::SeqCst), 8);
}

// ---------------------------------------------------------------------------
// 3. Hostile tokens
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tokens_are_refused_without_side_effects() {
    let setup = Setup::new("hostile");
    let idp = Idp::start(jwks(&[(0, "k1")])).await;
    let (backend, hits) = start_counting_backend().await;
    let daemon = setup
        .start(
            "",
            &format!(
                "{}{}[gateway]\nmax_header_bytes = 262144\n",
                idp.discovery_provider(),
                api(
                    "orders",
                    "/orders",
                    backend,
                    "jwt = { provider = \"corp\" }"
                )
            ),
        )
        .await;
    let client = client(&setup.pki, false);
    let url = daemon.url("/orders/items");
    let good = rs256(&claims("alice"), 0, "k1");
    wait_until_ok(
        &client,
        &url,
        &good,
        503,
        Duration::from_secs(10),
        &daemon,
        &idp,
    )
    .await;
    let served = hits.load(Ordering::SeqCst);

    // A kid holding a path, with a signature by the right key: 401; nothing but the
    // IdP's own URLs is ever fetched (at most the one refetch an unknown kid allows).
    for kid in [
        "../../../../etc/passwd",
        "/etc/passwd",
        "file:///etc/passwd",
    ] {
        let token = rs256(&claims("mallory"), 0, kid);
        let (parts, body) = call(&client, &url, Some(&token)).await;
        assert_invalid(&parts, &body);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paths = idp.paths();
    assert!(
        paths
            .iter()
            .all(|p| p == "/keys" || p == "/.well-known/openid-configuration"),
        "{paths:?}"
    );
    assert!(idp.fetches() <= 2, "{paths:?}");
    assert!(!daemon.log().contains("root:"), "{}", daemon.log());

    // A 64 KiB token: 401, quickly (over max_token_bytes, never decoded).
    let filler = B64.encode(vec![b'a'; 48 * 1024]);
    let huge = format!(
        "{}.{filler}.{}",
        B64.encode(json!({"alg": "RS256", "kid": "k1"}).to_string()),
        B64.encode([0u8; 256])
    );
    assert!(huge.len() >= 64 * 1024, "{}", huge.len());
    let started = Instant::now();
    let (parts, body) = call(&client, &url, Some(&huge)).await;
    assert_invalid(&parts, &body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Two segments (the signature cut off).
    let two = good.rsplit_once('.').unwrap().0.to_owned();
    let (parts, body) = call(&client, &url, Some(&two)).await;
    assert_invalid(&parts, &body);

    // A `crit` header, validly signed by the current key.
    let crit = sign(
        &json!({"alg": "RS256", "typ": "JWT", "kid": "k1", "crit": ["exp"]}),
        &claims("mallory"),
        &rsa_signer(0),
        Algorithm::RS256,
    );
    let (parts, body) = call(&client, &url, Some(&crit)).await;
    assert_invalid(&parts, &body);

    // None reached the backend; a good token still passes.
    assert_eq!(hits.load(Ordering::SeqCst), served);
    let (parts, body) = call(&client, &url, Some(&rs256(&claims("bob"), 0, "k1"))).await;
    assert_eq!(parts.status, 200, "{body}");
}

// ---------------------------------------------------------------------------
// 4. Client certificates: expired, thumbprints
// ---------------------------------------------------------------------------

struct ClientCa {
    ca_pem: PathBuf,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

struct ClientCert {
    der: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl ClientCa {
    fn new(dir: &std::path::Path) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = dir.join("client-ca.pem");
        std::fs::write(&ca_pem, cert.pem()).unwrap();
        Self {
            ca_pem,
            ca: rcgen::Issuer::new(params, key),
        }
    }

    /// A client certificate for `cn`; `expired`: valid two days ago until yesterday.
    fn issue(&self, cn: &str, expired: bool) -> ClientCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![format!("{cn}.clients.test")]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(2);
            params.not_after = now - time::Duration::days(1);
        }
        let cert = params.signed_by(&key, &self.ca).unwrap();
        ClientCert {
            der: cert.der().clone(),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

/// SHA-1 of the DER, upper-case hex with colons (`openssl x509 -fingerprint -sha1`).
fn openssl_sha1(cert: &ClientCert) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.der.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

type MtlsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

fn mtls_client(server: &Pki, cert: Option<&ClientCert>) -> MtlsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.ca_der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match cert {
        Some(cert) => builder
            .with_client_auth_cert(vec![cert.der.clone()], cert.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn mtls_get(
    client: &MtlsClient,
    url: &str,
) -> Result<(http::response::Parts, String), String> {
    let response = client
        .request(Request::get(url).body(Empty::new()).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Ok((parts, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_client_certificates_and_thumbprint_identities() {
    let setup = Setup::new("mtls");
    let clients = ClientCa::new(&setup.dir.0);
    let alice = clients.issue("alice", false);
    let bob = clients.issue("bob", false);
    let expired = clients.issue("alice", true);
    let thumbprint = openssl_sha1(&alice);
    assert_eq!(thumbprint.len(), 59, "{thumbprint}");
    let (backend, hits) = start_counting_backend().await;
    let apis = [
        api(
            "thumb",
            "/thumb",
            backend,
            &format!(
                "client_certificate = {{ identities = [{{ thumbprint = \"{thumbprint}\" }}] }}"
            ),
        ),
        api(
            "other",
            "/other",
            backend,
            &format!(
                "client_certificate = {{ identities = [{{ thumbprint = \"{}\" }}] }}",
                openssl_sha1(&bob)
            ),
        ),
        api("open", "/open", backend, ""),
    ]
    .concat();
    let ca = clients.ca_pem.display().to_string();
    let daemon = setup
        .start(
            &format!(", client_auth = \"optional\", client_ca = {ca:?}"),
            &apis,
        )
        .await;

    // The thumbprint as openssl prints it (SHA-1, upper case, colons) matches.
    let client = mtls_client(&setup.pki, Some(&alice));
    let (parts, body) = mtls_get(&client, &daemon.url("/thumb/x")).await.unwrap();
    assert_eq!(parts.status, 200, "{body}\n{}", daemon.log());
    // Another certificate's thumbprint does not.
    let result = mtls_get(&client, &daemon.url("/other/x")).await;
    let (parts, body) = result.unwrap();
    assert_apim_error(&parts, &body, 403, "Invalid client certificate.");
    let (parts, body) = mtls_get(
        &mtls_client(&setup.pki, Some(&bob)),
        &daemon.url("/thumb/x"),
    )
    .await
    .unwrap();
    assert_apim_error(&parts, &body, 403, "Invalid client certificate.");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // An expired certificate of the same CA, on the optional listener: the handshake
    // refuses it, for an API that wants a certificate and for one that does not.
    let client = mtls_client(&setup.pki, Some(&expired));
    for path in ["/thumb/x", "/open/x"] {
        let result = mtls_get(&client, &daemon.url(path)).await;
        assert!(
            result.is_err(),
            "{path}: an expired certificate got an answer: {:?}",
            result.map(|(p, b)| (p.status, b))
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the backend saw the expired certificate"
    );
    // No certificate at all is still let in to the open API.
    let (parts, body) = mtls_get(&mtls_client(&setup.pki, None), &daemon.url("/open/x"))
        .await
        .unwrap();
    assert_eq!(parts.status, 200, "{body}");
}

// ---------------------------------------------------------------------------
// 5. Backend TLS: the backend's CA must be trusted
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_https_backend_needs_its_ca_in_backend_ca() {
    let setup = Setup::new("backend-ca");
    let backend_pki = Pki::new();
    let decoy = Pki::new();
    let backend = start_tls_backend(&backend_pki).await;
    let body = |cas: &[&PathBuf]| {
        let cas: Vec<String> = cas
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        format!(
            "[[api]]\nname = \"tls\"\npath_prefix = \"/tls\"\n\
             backend = \"https://localhost:{}/\"\nsubscription = \"none\"\n\n\
             [gateway]\nbackend_ca = [{}]\n",
            backend.port(),
            cas.join(", ")
        )
    };
    let client = client(&setup.pki, false);

    // Only another CA listed: the backend's certificate is refused, 502 JSON.
    let daemon = setup.start("", &body(&[&decoy.ca_pem])).await;
    let (parts, text) = get(&client, &daemon.url("/tls/x")).await;
    assert_apim_error(&parts, &text, 502, "Bad gateway");
    assert!(!text.contains("GET "), "{text}");
    drop(daemon);

    // The same backend with its CA listed: 200 from the backend.
    let daemon = setup
        .start("", &body(&[&decoy.ca_pem, &backend_pki.ca_pem]))
        .await;
    let (parts, text) = get(&client, &daemon.url("/tls/x")).await;
    assert_eq!(parts.status, 200, "{text}\n{}", daemon.log());
    // Over TLS the backend may get HTTP/2, whose request line carries the whole URI.
    let line = text.lines().next().unwrap_or_default();
    assert!(line.starts_with("GET ") && line.ends_with("/x"), "{text}");
}
