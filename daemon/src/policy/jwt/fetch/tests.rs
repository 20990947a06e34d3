//! Fetches against a loopback TLS server whose certificate comes from a test CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// What the server answers for one path.
#[derive(Clone)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
}

fn ok(body: impl Into<Vec<u8>>) -> Answer {
    Answer {
        status: 200,
        body: body.into(),
        delay: Duration::ZERO,
    }
}

struct TestIdp {
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    ca_pem: String,
}

impl TestIdp {
    fn url(&self, path: &str) -> Url {
        Url::parse(&format!("https://127.0.0.1:{}{path}", self.addr.port())).unwrap()
    }

    fn client(&self) -> JwksClient {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        JwksClient::new(roots).unwrap()
    }
}

/// A TLS server on 127.0.0.1 answering `routes(path)`; one request per connection.
async fn start_idp(routes: impl Fn(&str) -> Answer + Send + Sync + 'static) -> TestIdp {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = Arc::new(routes);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let routes = Arc::clone(&routes);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
                let answer = routes(&path);
                tokio::time::sleep(answer.delay).await;
                let head = format!(
                    "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.status,
                    answer.body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&answer.body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TestIdp {
        addr,
        ca: ca_cert.der().clone(),
        ca_pem: ca_cert.pem(),
    }
}

fn rsa_jwks() -> String {
    let pair = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&pair);
    let Some(super::super::der::SpkiKey::Rsa { n, e }) = super::super::der::parse_spki(&spki)
    else {
        panic!("not RSA");
    };
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    serde_json::json!({"keys": [{"kty": "RSA", "kid": "k1", "n": b64.encode(n), "e": b64.encode(e)}]})
        .to_string()
}

const LIMITS: FetchLimits = FetchLimits {
    timeout: Duration::from_secs(5),
    max_body_bytes: 64 * 1024,
};

#[tokio::test]
async fn fetches_a_jwks_over_verified_tls() {
    let jwks = rsa_jwks();
    let idp = start_idp(move |path| match path {
        "/keys" => ok(jwks.clone()),
        _ => Answer {
            status: 404,
            body: Vec::new(),
            delay: Duration::ZERO,
        },
    })
    .await;
    let set = fetch_jwks(
        &idp.client(),
        &idp.url("/keys"),
        &[Algorithm::RS256],
        &LIMITS,
    )
    .await
    .unwrap();
    assert_eq!(set.kids().collect::<Vec<_>>(), ["k1"]);

    let e = fetch_jwks(
        &idp.client(),
        &idp.url("/nope"),
        &[Algorithm::RS256],
        &LIMITS,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, FetchError::Status { status, .. } if status == 404),
        "{e:?}"
    );
}

#[tokio::test]
async fn refuses_untrusted_certificates_plain_http_big_and_slow_answers() {
    let idp = start_idp(|path| match path {
        "/big" => ok(vec![b' '; 100 * 1024]),
        "/slow" => Answer {
            status: 200,
            body: b"{}".to_vec(),
            delay: Duration::from_secs(3),
        },
        "/redirect" => Answer {
            status: 302,
            body: Vec::new(),
            delay: Duration::ZERO,
        },
        _ => ok("not json"),
    })
    .await;

    // A client trusting the Mozilla roots only does not trust the test CA.
    let mut public_roots = rustls::RootCertStore::empty();
    public_roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let public = JwksClient::new(public_roots).unwrap();
    let e = public.get(&idp.url("/keys"), &LIMITS).await.unwrap_err();
    assert!(matches!(e, FetchError::Request { .. }), "{e:?}");

    let http = Url::parse(&format!("http://127.0.0.1:{}/keys", idp.addr.port())).unwrap();
    let e = idp.client().get(&http, &LIMITS).await.unwrap_err();
    assert!(matches!(e, FetchError::NotHttps { .. }), "{e:?}");

    let e = idp
        .client()
        .get(&idp.url("/big"), &LIMITS)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Body { .. }), "{e:?}");

    let quick = FetchLimits {
        timeout: Duration::from_millis(300),
        ..LIMITS
    };
    let e = idp
        .client()
        .get(&idp.url("/slow"), &quick)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Timeout { .. }), "{e:?}");

    let e = idp
        .client()
        .get(&idp.url("/redirect"), &LIMITS)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Status { .. }), "{e:?}");

    let e = fetch_jwks(
        &idp.client(),
        &idp.url("/keys"),
        &[Algorithm::RS256],
        &LIMITS,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, FetchError::Jwks { .. }), "{e:?}");
}

#[tokio::test]
async fn a_provider_refreshes_through_discovery_and_keeps_its_keys_on_failure() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = Arc::new(std::sync::OnceLock::<u16>::new());
    let jwks = rsa_jwks();
    let idp = {
        let failing = Arc::clone(&failing);
        let port = Arc::clone(&port);
        start_idp(move |path| {
            if failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Answer {
                    status: 500,
                    body: Vec::new(),
                    delay: Duration::ZERO,
                };
            }
            match path {
                "/.well-known/openid-configuration" => ok(serde_json::json!({
                    "issuer": "https://idp.test",
                    "jwks_uri": format!("https://127.0.0.1:{}/keys", port.get().copied().unwrap_or(0)),
                })
                .to_string()),
                _ => ok(jwks.clone()),
            }
        })
        .await
    };
    port.set(idp.addr.port()).unwrap();
    let dir = std::env::temp_dir().join(format!("rampart-jwt-fetch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &idp.ca_pem).unwrap();
    let settings: super::super::JwtProviderSettings = toml::from_str(&format!(
        "name = \"oidc\"\nalgorithms = [\"RS256\"]\nissuers = [\"https://idp.test\"]\n\
         openid_config_url = \"{}\"\nca_file = \"{}\"\n",
        idp.url("/.well-known/openid-configuration"),
        ca_file.display()
    ))
    .unwrap();
    let provider = settings.validate().unwrap();
    assert!(!provider.has_keys());
    let ticket = provider.planner().try_begin(0).unwrap();
    assert_eq!(provider.refresh(&LIMITS).await.unwrap(), 1);
    provider.planner().finish(ticket, 0, true);
    assert!(provider.has_keys());

    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(provider.refresh(&LIMITS).await.is_err());
    assert!(provider.has_keys(), "the last good key set stays");
    let _ = std::fs::remove_dir_all(dir);
}
