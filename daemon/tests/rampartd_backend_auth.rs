//! Backend authentication through the real `rampartd`: a client certificate for an
//! https backend that requires one, a bearer token read from a file (re-read when it
//! changes), an OAuth2 client credentials token (fetched once, cached), 503 while no
//! token can be had, and the configuration errors `--check-config` reports.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_support::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart::gateway::CertFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

const RAMPARTD: &str = env!("CARGO_BIN_EXE_rampartd");

/// Starts rampartd with a plain HTTP listener on `port` and `rest` (APIs, `[gateway]`).
async fn start(dir: &Path, port: u16, rest: &str) -> Rampartd {
    start_with_admin(dir, port, None, rest).await
}

/// As [`start`], with the admin listener (`/metrics`) on `admin` when given.
async fn start_with_admin(dir: &Path, port: u16, admin: Option<u16>, rest: &str) -> Rampartd {
    let config = dir.join(format!("rampart-{port}.toml"));
    let admin = admin.map_or_else(|| "off".to_owned(), |admin| format!("127.0.0.1:{admin}"));
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\nadmin_listen = {admin:?}\n\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\nplain_http = true\n\n{rest}\n",
        state = dir.join("state").display().to_string(),
        runtime = dir.join("run").display().to_string(),
        // The plain listener serves the APIs that name it.
        rest = rest.replace(
            "[[api]]\n",
            &format!("[[api]]\nlisteners = [\"127.0.0.1:{port}\"]\n"),
        ),
    );
    let log = dir.join(format!("rampartd-{port}.log"));
    Rampartd::start(&config, &text, log, port).await
}

type PlainClient = Client<HttpConnector, Empty<Bytes>>;

fn plain_client() -> PlainClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `url` with extra headers: the response head and body.
async fn get_with(
    client: &PlainClient,
    url: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, String) {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts, String::from_utf8_lossy(&body).into_owned())
}

/// A rustls server configuration for `files`, requiring client certificates from
/// `client_ca` when given.
fn server_config(files: &CertFiles, client_ca: Option<&Path>) -> rustls::ServerConfig {
    let chain: Vec<_> = CertificateDer::pem_file_iter(&files.cert_chain_pem)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&files.key_pem).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

type Handler = Arc<dyn Fn(Request<Bytes>, bool) -> Response<Full<Bytes>> + Send + Sync>;

/// A server on loopback: TLS with `tls` when given, plain otherwise; `handler` gets
/// each request (body collected) and whether the peer presented a certificate.
async fn serve(tls: Option<rustls::ServerConfig>, handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let service = |peer_cert: bool| {
                    let handler = Arc::clone(&handler);
                    service_fn(move |req: Request<Incoming>| {
                        let handler = Arc::clone(&handler);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            let body = body.unwrap_or_default();
                            Ok::<_, Infallible>(handler(
                                Request::from_parts(parts, body),
                                peer_cert,
                            ))
                        }
                    })
                };
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let peer_cert = stream.get_ref().1.peer_certificates().is_some();
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service(peer_cert))
                            .await;
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service(false))
                            .await;
                    }
                }
            });
        }
    });
    addr
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

/// A CA for client certificates and one certificate it issued, as PEM files.
fn client_pki(dir: &Path) -> (PathBuf, CertFiles) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "backend client CA");
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let ca_pem = dir.join("client-ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["gateway.test".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rampart gateway");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let files = CertFiles {
        cert_chain_pem: dir.join("gw-client.pem"),
        key_pem: dir.join("gw-client.key"),
    };
    std::fs::write(&files.cert_chain_pem, cert.pem()).unwrap();
    gateway_support::write_private(&files.key_pem, key.serialize_pem());
    (ca_pem, files)
}

fn api(name: &str, prefix: &str, backend: &str, extra: &str) -> String {
    format!(
        "[[api]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nbackend = \"{backend}\"\n\
         subscription = \"none\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_opens_a_backend_that_requires_one() {
    let dir = TempDir::new("backend-mtls");
    let server = Pki::new();
    let (client_ca, client_cert) = client_pki(&dir.0);
    let backend_files = server.leaf("mtls-backend", &["localhost"]);
    let backend = serve(
        Some(server_config(&backend_files, Some(&client_ca))),
        Arc::new(|req: Request<Bytes>, peer_cert: bool| {
            respond(
                StatusCode::OK,
                format!("{} peer-cert={peer_cert}", req.uri().path()),
            )
        }),
    )
    .await;
    let port = free_port();
    let url = format!("https://localhost:{}/", backend.port());
    let cert = client_cert.cert_chain_pem.display().to_string();
    let key = client_cert.key_pem.display().to_string();
    let rest = format!(
        "{}{}[gateway]\nbackend_ca = [{:?}]\n",
        api(
            "with-cert",
            "/with",
            &url,
            &format!("backend_auth = {{ client_cert = {cert:?}, client_key = {key:?} }}"),
        ),
        api("without-cert", "/without", &url, ""),
        server.ca_pem.display().to_string(),
    );
    let daemon = start(&dir.0, port, &rest).await;
    let client = plain_client();

    let (parts, body) = get_with(&client, &format!("http://127.0.0.1:{port}/with/x"), &[]).await;
    assert_eq!(parts.status, 200, "{body}\n{}", daemon.log());
    assert_eq!(body, "/x peer-cert=true");

    // The same backend without the certificate: the handshake fails, 502.
    let (parts, body) = get_with(&client, &format!("http://127.0.0.1:{port}/without/x"), &[]).await;
    assert_apim_error(&parts, &body, 502, "Bad gateway");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_token_file_replaces_the_clients_token_and_follows_the_file() {
    let dir = TempDir::new("backend-token-file");
    let token = dir.0.join("backend-token");
    std::fs::write(&token, "token-1\n").unwrap();
    let backend = start_backend().await;
    let port = free_port();
    let rest = api(
        "tokens",
        "/",
        &format!("http://{backend}/"),
        &format!(
            "backend_auth = {{ bearer_token_file = {:?} }}",
            token.display().to_string()
        ),
    );
    let daemon = start(&dir.0, port, &rest).await;
    let client = plain_client();
    let url = format!("http://127.0.0.1:{port}/echo");
    let sent = || async {
        let (parts, body) =
            get_with(&client, &url, &[("Authorization", "Bearer client-token")]).await;
        assert_eq!(parts.status, 200, "{body}");
        let auth: Vec<String> = body
            .lines()
            .filter_map(|l| l.strip_prefix("authorization: "))
            .map(str::to_owned)
            .collect();
        assert_eq!(auth.len(), 1, "{body}");
        auth.into_iter().next().unwrap()
    };
    assert_eq!(sent().await, "Bearer token-1");

    // Rewritten in place: within a few seconds requests carry the new token.
    std::fs::write(&token, "token-2\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let auth = sent().await;
        if auth == "Bearer token-2" {
            break;
        }
        assert_eq!(auth, "Bearer token-1");
        assert!(
            Instant::now() < deadline,
            "token-2 never sent\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Emptied, then removed: the last good token stays.
    std::fs::write(&token, "").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sent().await, "Bearer token-2");
    std::fs::remove_file(&token).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sent().await, "Bearer token-2");
    let log = daemon.log();
    assert!(log.contains("the last good token stays"), "{log}");
    assert!(
        !log.contains("token-2"),
        "the token is never logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_tokens_are_fetched_once_and_missing_ones_give_503() {
    let dir = TempDir::new("backend-oauth2");
    let server = Pki::new();
    let secret = dir.0.join("gw.secret");
    std::fs::write(&secret, "s3cret&value\n").unwrap();

    // The token endpoint: counts calls, keeps the last form body.
    let calls = Arc::new(AtomicUsize::new(0));
    let forms = Arc::new(Mutex::new(Vec::<String>::new()));
    let endpoint = {
        let calls = Arc::clone(&calls);
        let forms = Arc::clone(&forms);
        serve(
            Some(server_config(&server.leaf("idp", &["localhost"]), None)),
            Arc::new(move |req: Request<Bytes>, _| {
                if req.method() != http::Method::POST || req.uri().path() != "/token" {
                    return respond(StatusCode::NOT_FOUND, "");
                }
                let content_type = req.headers()[http::header::CONTENT_TYPE].clone();
                assert_eq!(content_type, "application/x-www-form-urlencoded");
                forms
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(req.body()).into_owned());
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                respond(
                    StatusCode::OK,
                    format!(
                        r#"{{"access_token":"at-{n}","token_type":"Bearer","expires_in":3600}}"#
                    ),
                )
            }),
        )
        .await
    };
    // A backend that counts what reaches it.
    let reached = Arc::new(AtomicUsize::new(0));
    let counted = {
        let reached = Arc::clone(&reached);
        serve(
            None,
            Arc::new(move |_: Request<Bytes>, _| {
                reached.fetch_add(1, Ordering::SeqCst);
                respond(StatusCode::OK, "reached")
            }),
        )
        .await
    };
    let backend = start_backend().await;
    let down = closed_port().await;
    let secret_path = secret.display().to_string();
    let ca = server.ca_pem.display().to_string();
    let rest = format!(
        "{}{}",
        api(
            "managed",
            "/managed",
            &format!("http://{backend}/"),
            &format!(
                "backend_auth = {{ oauth2 = {{ token_url = \"https://localhost:{}/token\", client_id = \"gw\", \
                 client_secret_file = {secret_path:?}, scope = \"api://backend/.default\", ca_file = {ca:?} }} }}",
                endpoint.port()
            ),
        ),
        api(
            "idp-down",
            "/down",
            &format!("http://{counted}/"),
            &format!(
                "backend_auth = {{ oauth2 = {{ token_url = \"https://localhost:{}/token\", client_id = \"gw\", \
                 client_secret_file = {secret_path:?}, ca_file = {ca:?} }} }}",
                down.port()
            ),
        ),
    );
    let port = free_port();
    let admin = free_port();
    let daemon = start_with_admin(&dir.0, port, Some(admin), &rest).await;
    let client = plain_client();
    let managed = format!("http://127.0.0.1:{port}/managed/echo");

    // The first token arrives shortly after start (503 until then).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (parts, body) = get_with(&client, &managed, &[]).await;
        if parts.status == 200 {
            break;
        }
        assert_apim_error(&parts, &body, 503, "Backend credentials are not available.");
        assert!(Instant::now() < deadline, "no token\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        let (parts, body) = get_with(
            &client,
            &managed,
            &[("Authorization", "Bearer client-token")],
        )
        .await;
        assert_eq!(parts.status, 200, "{body}");
        assert!(body.contains("authorization: Bearer at-1\n"), "{body}");
        assert!(!body.contains("client-token"), "{body}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let form = forms.lock().unwrap()[0].clone();
    let pairs: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
        .into_owned()
        .collect();
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} missing in {form}"))
            .to_owned()
    };
    assert_eq!(field("grant_type"), "client_credentials");
    assert_eq!(field("client_id"), "gw");
    assert_eq!(field("client_secret"), "s3cret&value");
    assert_eq!(field("scope"), "api://backend/.default");

    // No token endpoint: 503 with APIM's JSON, nothing forwarded.
    let (parts, body) = get_with(&client, &format!("http://127.0.0.1:{port}/down/x"), &[]).await;
    assert_apim_error(&parts, &body, 503, "Backend credentials are not available.");
    assert_eq!(reached.load(Ordering::SeqCst), 0);

    let log = daemon.log();
    assert!(log.contains("backend token request failed"), "{log}");
    assert!(
        !log.contains("s3cret"),
        "the secret is never logged:\n{log}"
    );

    // The scrape says which API has its token and which one's requests fail.
    let (parts, metrics) =
        get_with(&client, &format!("http://127.0.0.1:{admin}/metrics"), &[]).await;
    assert_eq!(parts.status, 200, "{metrics}");
    let value = |line: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
    };
    assert_eq!(value("rampart_backend_token_present{api=\"managed\"}"), 1);
    assert_eq!(
        value("rampart_backend_token_failures_total{api=\"managed\"}"),
        0
    );
    assert_eq!(value("rampart_backend_token_present{api=\"idp-down\"}"), 0);
    assert!(value("rampart_backend_token_failures_total{api=\"idp-down\"}") >= 1);
    assert!(!log.contains("at-1"), "the token is never logged:\n{log}");
}

/// A token endpoint's `access_token` that is not a token68 ("tok en-secret") was
/// sent as `Authorization: Bearer tok en-secret`. It is now refused as a token file
/// holding one is: an error in the log says why (without the token), nothing is
/// forwarded, and the API answers 503 as while no token has come.
#[tokio::test(flavor = "multi_thread")]
async fn an_oauth2_token_that_is_not_a_token68_is_not_sent() {
    let dir = TempDir::new("backend-oauth2-token68");
    let server = Pki::new();
    let secret = dir.0.join("gw.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let endpoint = serve(
        Some(server_config(&server.leaf("idp", &["localhost"]), None)),
        Arc::new(|_: Request<Bytes>, _| {
            respond(
                StatusCode::OK,
                r#"{"access_token":"tok en-secret","token_type":"Bearer","expires_in":3600}"#,
            )
        }),
    )
    .await;
    let reached = Arc::new(AtomicUsize::new(0));
    let counted = {
        let reached = Arc::clone(&reached);
        serve(
            None,
            Arc::new(move |_: Request<Bytes>, _| {
                reached.fetch_add(1, Ordering::SeqCst);
                respond(StatusCode::OK, "reached")
            }),
        )
        .await
    };
    let rest = api(
        "managed",
        "/managed",
        &format!("http://{counted}/"),
        &format!(
            "backend_auth = {{ oauth2 = {{ token_url = \"https://localhost:{}/token\", client_id = \"gw\", \
             client_secret_file = {:?}, ca_file = {:?} }} }}",
            endpoint.port(),
            secret.display().to_string(),
            server.ca_pem.display().to_string(),
        ),
    );
    let port = free_port();
    let daemon = start(&dir.0, port, &rest).await;
    daemon
        .wait_for_log("the token endpoint's answer is not used", 0)
        .await;
    let client = plain_client();
    for _ in 0..3 {
        let (parts, body) =
            get_with(&client, &format!("http://127.0.0.1:{port}/managed/x"), &[]).await;
        assert_apim_error(&parts, &body, 503, "Backend credentials are not available.");
    }
    assert_eq!(reached.load(Ordering::SeqCst), 0, "nothing is forwarded");
    let log = daemon.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("api=\"managed\"")
            && l.contains(
                "token response: `access_token` is not a bearer token: a space at character 4; \
                 a token is letters, digits"
            )),
        "{log}"
    );
    assert!(
        !log.contains("en-secret"),
        "the token is never logged:\n{log}"
    );
}

/// `--check-config` on `text`: exit code and stderr.
fn check(dir: &Path, name: &str, text: &str) -> (i32, String, PathBuf) {
    let path = dir.join(format!("{name}.toml"));
    gateway_support::write_private(&path, text);
    let out = Command::new(RAMPARTD)
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path,
    )
}

#[test]
fn configuration_errors_are_reported_with_their_position() {
    let dir = TempDir::new("backend-auth-check");
    let pki = Pki::new();
    let files = pki.leaf("client", &["gw.test"]);
    let secret = dir.0.join("secret");
    std::fs::write(&secret, "x").unwrap();
    let header = "[[listener]]\naddress = \"127.0.0.1:8443\"\nplain_http = true\n\
                  [[api]]\nname = \"a\"\npath_prefix = \"/\"\nlisteners = [\"127.0.0.1:8443\"]\n";
    // The `backend_auth` line is line 9; its value starts at column 16.
    let cases = [
        (
            "cert-http",
            format!(
                "backend = \"http://b/\"\nbackend_auth = {{ client_cert = {:?}, client_key = {:?} }}\n",
                files.cert_chain_pem.display().to_string(),
                files.key_pem.display().to_string()
            ),
            ":9:32: ",
            "needs an https:// backend",
        ),
        (
            "missing-token",
            format!(
                "backend = \"http://b/\"\nbackend_auth = {{ bearer_token_file = {:?} }}\n",
                dir.0.join("nope").display().to_string()
            ),
            ":9:38: ",
            "cannot read",
        ),
        (
            "http-token-url",
            format!(
                "backend = \"http://b/\"\nbackend_auth = {{ oauth2 = {{ token_url = \"http://idp/t\", client_id = \"gw\", client_secret_file = {:?} }} }}\n",
                secret.display().to_string()
            ),
            ":9:41: ",
            "expected an https:// URL",
        ),
        (
            "unknown-key",
            "backend = \"http://b/\"\nbackend_auth = { token = \"x\" }\n".to_owned(),
            ":9:",
            "unknown field `token`",
        ),
    ];
    for (name, api, position, message) in cases {
        let (code, err, path) = check(&dir.0, name, &format!("{header}{api}"));
        assert_eq!(code, 64, "{name}: {err}");
        assert!(
            err.contains(&format!("{}{position}", path.display())),
            "{name}: {err}"
        );
        assert!(err.contains(message), "{name}: {err}");
    }
}

/// A token file holding `Bearer <token>` or a token with a space: refused by the
/// check and by start with the position of `bearer_token_file` (exit 64), by a
/// reload (exit 8, the running token stays), and, re-read while serving, kept
/// out with a warning while the last good token is sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_that_is_not_a_token68_is_refused() {
    let dir = TempDir::new("backend-token68");
    let token = dir.0.join("backend-token");
    let backend = start_backend().await;
    let port = free_port();
    // `bearer_token_file` is on line 16, its value at column 38.
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\nadmin_listen = \"off\"\n\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\nplain_http = true\n\n\
         [[api]]\nname = \"tokens\"\npath_prefix = \"/\"\nlisteners = [\"127.0.0.1:{port}\"]\n\
         backend = \"http://{backend}/\"\nsubscription = \"none\"\n\
         backend_auth = {{ bearer_token_file = {token:?} }}\n",
        state = dir.0.join("state").display().to_string(),
        runtime = dir.0.join("run").display().to_string(),
        token = token.display().to_string(),
    );
    let config = dir.0.join("rampart.toml");
    gateway_support::write_private(&config, &text);
    let position = format!("{}:16:38: ", config.display());
    let scheme = format!(
        "{position}invalid `api.backend_auth.bearer_token_file`: {}: not a bearer token: \
         it starts with \"Bearer \", which rampartd adds itself: remove it, the file holds the token alone",
        token.display()
    );
    let space = format!(
        "{position}invalid `api.backend_auth.bearer_token_file`: {}: not a bearer token: \
         a space at character 4; a token is letters, digits, \"-\", \".\", \"_\", \"~\", \"+\", \"/\", \
         then \"=\" padding only (token68, RFC 7235)",
        token.display()
    );
    for (content, expected) in [("Bearer tok4\n", &scheme), ("tok 3 with spaces\n", &space)] {
        std::fs::write(&token, content).unwrap();
        let (code, err, _) = check(&dir.0, "token68", &text);
        assert_eq!(code, 64, "{content:?}: {err}");
        assert!(
            err.contains(&expected.replace(
                &config.display().to_string(),
                &dir.0.join("token68.toml").display().to_string()
            )),
            "{content:?}: {err}"
        );
        let out = Command::new(RAMPARTD)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{content:?}: {err}");
        assert!(err.contains(expected.as_str()), "{content:?}: {err}");
    }

    // A good token: served. The final newline is trimmed.
    std::fs::write(&token, "tok4\n").unwrap();
    let daemon = Rampartd::start(&config, &text, dir.0.join("rampartd.log"), port).await;
    let client = plain_client();
    let url = format!("http://127.0.0.1:{port}/echo");
    let sent = || async {
        let (parts, body) = get_with(&client, &url, &[]).await;
        assert_eq!(parts.status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix("authorization: "))
            .map(str::to_owned)
    };
    assert_eq!(sent().await.as_deref(), Some("Bearer tok4"));

    // Rewritten as "Bearer tok5": warned about, the last good token stays.
    std::fs::write(dir.0.join("next"), "Bearer tok5\n").unwrap();
    std::fs::rename(dir.0.join("next"), &token).unwrap();
    daemon
        .wait_for_log("it starts with \"Bearer \", which rampartd adds itself", 0)
        .await;
    let log = daemon.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("the last good token stays")
            && l.contains("not a bearer token")),
        "{log}"
    );
    assert_eq!(sent().await.as_deref(), Some("Bearer tok4"));

    // A reload reads the file as start does: refused, nothing changes.
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("--socket")
        .arg(dir.0.join("run").join("control.sock"))
        .arg("reload")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(err.contains(&scheme), "{err}");
    assert_eq!(sent().await.as_deref(), Some("Bearer tok4"));
    assert!(!daemon.log().contains("tok5"), "the token is never logged");
}
