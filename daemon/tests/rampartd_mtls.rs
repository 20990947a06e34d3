//! Client certificates (mTLS) through the real `rampartd`: a listener that asks for
//! certificates from its own CA, APIs with APIM-style identities, certificate fields
//! sent to the backend, a revoked certificate refused in the handshake.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use gateway_support::*;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rampart::gateway::CertFiles;

const RAMPARTD: &str = env!("CARGO_BIN_EXE_rampartd");

/// A CA for client certificates, and the certificates it issues.
struct ClientPki {
    ca_pem: PathBuf,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    dir: PathBuf,
}

/// A client certificate with its key.
struct ClientCert {
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    serial: rcgen::SerialNumber,
}

impl ClientPki {
    fn new(dir: &Path, name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = dir.join(format!("{name}.pem"));
        std::fs::write(&ca_pem, cert.pem()).unwrap();
        Self {
            ca_pem,
            ca: rcgen::Issuer::new(params, key),
            dir: dir.to_path_buf(),
        }
    }

    fn issue(&self, common_name: &str, organization: &str, serial: u64) -> ClientCert {
        self.issue_named(
            &[
                (rcgen::DnType::CommonName, common_name),
                (rcgen::DnType::OrganizationName, organization),
            ],
            &format!("{common_name}.clients.test"),
            serial,
        )
    }

    /// A client certificate whose subject has `attributes`, in this DER order.
    fn issue_named(
        &self,
        attributes: &[(rcgen::DnType, &str)],
        dns_name: &str,
        serial: u64,
    ) -> ClientCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![dns_name.to_owned()]).unwrap();
        for (kind, value) in attributes {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let serial = rcgen::SerialNumber::from(serial.to_be_bytes().to_vec());
        params.serial_number = Some(serial.clone());
        let cert = params.signed_by(&key, &self.ca).unwrap();
        ClientCert {
            chain: vec![cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            serial,
        }
    }

    /// A CRL revoking `revoked`, written as PEM; its path.
    fn crl(&self, revoked: &[&ClientCert]) -> PathBuf {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64.to_be_bytes().to_vec()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|cert| rcgen::RevokedCertParams {
                    serial_number: cert.serial.clone(),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca).unwrap();
        let path = self.dir.join("revoked.crl.pem");
        std::fs::write(&path, crl.pem().unwrap()).unwrap();
        path
    }
}

type TestClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// A client trusting the gateway's CA, presenting `cert` when given.
fn mtls_client(server: &Pki, cert: Option<&ClientCert>) -> TestClient {
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
            .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
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

/// GET `url` with extra headers: status and body, or the connection error.
async fn get(
    client: &TestClient,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(http::response::Parts, String), String> {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Ok((parts, String::from_utf8_lossy(&body).into_owned()))
}

async fn start(
    dir: &Path,
    server_cert: &CertFiles,
    port: u16,
    tls_extra: &str,
    apis: &str,
) -> Rampartd {
    let config = dir.join(format!("rampart-{port}.toml"));
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\n\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\n\
         tls = {{ cert = {cert:?}, key = {key:?}{tls_extra} }}\n\n{apis}\n",
        state = dir.join("state").display().to_string(),
        runtime = dir.join("run").display().to_string(),
        cert = server_cert.cert_chain_pem.display().to_string(),
        key = server_cert.key_pem.display().to_string(),
    );
    let log = dir.join(format!("rampartd-{port}.log"));
    Rampartd::start(&config, &text, log, port).await
}

fn assert_error(
    result: &Result<(http::response::Parts, String), String>,
    status: u16,
    message: &str,
) {
    let (parts, body) = result.as_ref().unwrap();
    assert_apim_error(parts, body, status, message);
}

/// rampartd asking for client certificates of `clients`' CA, without requiring one.
async fn start_optional_client_auth(
    dir: &Path,
    server_cert: &CertFiles,
    port: u16,
    clients: &ClientPki,
    apis: &str,
) -> Rampartd {
    let ca = clients.ca_pem.display().to_string();
    let tls_extra = format!(", client_auth = \"optional\", client_ca = {ca:?}");
    start(dir, server_cert, port, &tls_extra, apis).await
}

#[tokio::test(flavor = "multi_thread")]
async fn identities_decide_per_api_and_fields_reach_the_backend() {
    let dir = TempDir::new("mtls");
    let server = Pki::new();
    let server_cert = server.leaf("gw", &["localhost"]);
    let clients = ClientPki::new(&dir.0, "client-ca");
    let other_ca = ClientPki::new(&dir.0, "other-ca");
    let backend = start_backend().await;
    let port = free_port();
    let alice = clients.issue("alice", "Contoso, Inc.", 1001);
    let bob = clients.issue("bob", "Fabrikam", 1002);
    let stranger = other_ca.issue("alice", "Contoso, Inc.", 1003);
    let apis = format!(
        "[[api]]\nname = \"partners\"\npath_prefix = \"/partners\"\nbackend = \"http://{backend}/\"\n\
         subscription = \"none\"\n\
         client_certificate = {{ identities = [{{ common_name = \"alice\", subject = \"O=\\\"Contoso, Inc.\\\", CN=alice\" }}, {{ dns_name = \"carol.clients.test\" }}] }}\n\
         certificate_headers = [{{ field = \"subject\", header = \"X-Client-Subject\" }}, {{ field = \"thumbprint\", header = \"X-Client-Thumbprint\" }}]\n\
         [[api]]\nname = \"open\"\npath_prefix = \"/open\"\nbackend = \"http://{backend}/\"\nsubscription = \"none\"\n\
         certificate_headers = [{{ field = \"common_name\", header = \"X-Client-CN\" }}]\n"
    );
    let daemon = start_optional_client_auth(&dir.0, &server_cert, port, &clients, &apis).await;
    let log = || std::fs::read_to_string(&daemon.log).unwrap_or_default();
    let partners = format!("https://localhost:{port}/partners/x");
    let open = format!("https://localhost:{port}/open/x");

    // No certificate: the optional listener lets the connection in; the API that
    // needs one refuses with APIM's message (as 403), the other serves.
    let anonymous = mtls_client(&server, None);
    assert_error(
        &get(&anonymous, &partners, &[]).await,
        403,
        "Client certificate missing.",
    );
    let (parts, body) = get(
        &anonymous,
        &open,
        &[("X-Client-CN", "forged"), ("X_Client_CN", "forged")],
    )
    .await
    .unwrap();
    assert_eq!(parts.status, 200, "{body}");
    assert!(!body.to_ascii_lowercase().contains("x-client-cn"), "{body}");
    assert!(!body.to_ascii_lowercase().contains("x_client_cn"), "{body}");

    // A matching identity passes; its fields reach the backend, forged copies do not.
    let client = mtls_client(&server, Some(&alice));
    let (parts, body) = get(
        &client,
        &partners,
        &[
            ("X-Client-Subject", "CN=admin"),
            ("X-Client-Thumbprint", "00"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(parts.status, 200, "{body}\n{}", log());
    assert!(
        // rcgen writes CN before O; the subject is printed most specific (last) first.
        body.contains("x-client-subject: O=\"Contoso, Inc.\", CN=alice"),
        "{body}"
    );
    assert!(!body.contains("CN=admin"), "{body}");
    let thumbprint = body
        .lines()
        .find_map(|l| l.strip_prefix("x-client-thumbprint: "))
        .unwrap();
    assert_eq!(thumbprint.len(), 40, "{body}");
    assert!(
        thumbprint
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
    );
    let (_, body) = get(&client, &open, &[]).await.unwrap();
    assert!(body.contains("x-client-cn: alice"), "{body}");

    // A certificate of the same CA that matches no identity: 403.
    let client = mtls_client(&server, Some(&bob));
    assert_error(
        &get(&client, &partners, &[]).await,
        403,
        "Invalid client certificate.",
    );
    let (parts, _) = get(&client, &open, &[]).await.unwrap();
    assert_eq!(parts.status, 200);

    // The same subject from another CA never gets past the handshake.
    let client = mtls_client(&server, Some(&stranger));
    let refused = get(&client, &open, &[]).await;
    assert!(refused.is_err(), "{:?}", refused.map(|(p, _)| p.status));
}

/// Certificate fields that a header cannot carry as they are reach the backend
/// percent-encoded: before, a subject with a line break was dropped (the backend of
/// an authenticated client got no header), non-ASCII text went as raw UTF-8 bytes
/// and a common name's trailing space was trimmed by the backend. Plain ASCII fields
/// are unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn certificate_fields_a_header_cannot_carry_reach_the_backend_percent_encoded() {
    let dir = TempDir::new("mtls-encoded");
    let server = Pki::new();
    let server_cert = server.leaf("gw", &["localhost"]);
    let clients = ClientPki::new(&dir.0, "client-ca");
    let backend = start_backend().await;
    let port = free_port();
    let jose = clients.issue_named(
        &[
            (rcgen::DnType::CommonName, "José "),
            (rcgen::DnType::OrganizationalUnitName, "100% Ops\tTeam"),
            (rcgen::DnType::OrganizationName, "Müller\r\nGmbH"),
        ],
        "jose.clients.test",
        4001,
    );
    let apis = format!(
        "[[api]]\nname = \"partners\"\npath_prefix = \"/partners\"\nbackend = \"http://{backend}/\"\n\
         subscription = \"none\"\n\
         client_certificate = {{ identities = [{{ dns_name = \"jose.clients.test\" }}] }}\n\
         certificate_headers = [{{ field = \"subject\", header = \"X-Client-Subject\" }}, \
         {{ field = \"common_name\", header = \"X-Client-CN\" }}, \
         {{ field = \"dns_name\", header = \"X-Client-DNS\" }}, \
         {{ field = \"thumbprint\", header = \"X-Client-Thumbprint\" }}]\n"
    );
    let daemon = start_optional_client_auth(&dir.0, &server_cert, port, &clients, &apis).await;
    let log = || std::fs::read_to_string(&daemon.log).unwrap_or_default();
    let client = mtls_client(&server, Some(&jose));
    let (parts, body) = get(
        &client,
        &format!("https://localhost:{port}/partners/x"),
        &[("X-Client-Subject", "CN=admin"), ("X-Client-CN", "admin")],
    )
    .await
    .unwrap();
    assert_eq!(parts.status, 200, "{body}\n{}", log());
    let received = |name: &str| -> Vec<&str> {
        body.lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .collect()
    };
    // Printed most specific (last) first; O is quoted for its line break, CN for its
    // trailing space.
    assert_eq!(
        received("x-client-subject"),
        ["O=\"M%C3%BCller%0D%0AGmbH\", OU=100%25 Ops%09Team, CN=\"Jos%C3%A9 \""],
        "{body}"
    );
    assert_eq!(received("x-client-cn"), ["Jos%C3%A9%20"], "{body}");
    assert_eq!(received("x-client-dns"), ["jose.clients.test"], "{body}");
    let thumbprint = received("x-client-thumbprint");
    assert!(
        thumbprint.len() == 1
            && thumbprint[0].len() == 40
            && thumbprint[0].chars().all(|c| c.is_ascii_hexdigit()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn required_certificates_and_revocation_are_enforced_in_the_handshake() {
    let dir = TempDir::new("mtls-required");
    let server = Pki::new();
    let server_cert = server.leaf("gw", &["localhost"]);
    let clients = ClientPki::new(&dir.0, "client-ca");
    let backend = start_backend().await;
    let good = clients.issue("good", "Contoso", 2001);
    let revoked = clients.issue("revoked", "Contoso", 2002);
    let crl = clients.crl(&[&revoked]);
    let port = free_port();
    let ca = clients.ca_pem.display().to_string();
    let crl = crl.display().to_string();
    let _daemon = start(
        &dir.0,
        &server_cert,
        port,
        &format!(", client_auth = \"required\", client_ca = {ca:?}, crl = [{crl:?}]"),
        &format!(
            "[[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://{backend}/\"\nsubscription = \"none\"\n"
        ),
    )
    .await;
    let url = format!("https://localhost:{port}/x");

    let (parts, body) = get(&mtls_client(&server, Some(&good)), &url, &[])
        .await
        .unwrap();
    assert_eq!(parts.status, 200, "{body}");
    let without = get(&mtls_client(&server, None), &url, &[]).await;
    assert!(
        without.is_err(),
        "no certificate got through: {:?}",
        without.map(|(p, _)| p.status)
    );
    let with_revoked = get(&mtls_client(&server, Some(&revoked)), &url, &[]).await;
    assert!(
        with_revoked.is_err(),
        "a revoked certificate got through: {:?}",
        with_revoked.map(|(p, _)| p.status)
    );
}

#[test]
fn client_auth_needs_a_ca_and_a_bad_ca_file_is_refused() {
    let dir = TempDir::new("mtls-config");
    let server = Pki::new();
    let cert = server.leaf("gw", &["localhost"]);
    let check = |tls_extra: &str| {
        let config = dir.0.join("check.toml");
        std::fs::write(
            &config,
            format!(
                "[[listener]]\naddress = \"127.0.0.1:1\"\ntls = {{ cert = {:?}, key = {:?}{tls_extra} }}\n",
                cert.cert_chain_pem.display().to_string(),
                cert.key_pem.display().to_string(),
            ),
        )
        .unwrap();
        let out = Command::new(RAMPARTD)
            .arg("--check-config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = check(", client_auth = \"required\"");
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("needs `client_ca = PATH`"), "{text}");
    let not_a_ca = dir.0.join("empty.pem");
    std::fs::write(&not_a_ca, "not a certificate\n").unwrap();
    let (code, text) = check(&format!(
        ", client_auth = \"optional\", client_ca = {:?}",
        not_a_ca.display().to_string()
    ));
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("empty.pem"), "{text}");
}

/// An API is served only on the listeners it names (without `listeners`, on every TLS
/// listener): a certificate that another listener's CA issued never reaches an API
/// whose listener trusts only its own CA, and a plain listener serves only the APIs
/// that name it.
#[tokio::test(flavor = "multi_thread")]
async fn apis_are_served_only_on_their_listeners() {
    let dir = TempDir::new("mtls-listeners");
    let server = Pki::new();
    let server_cert = server.leaf("gw", &["localhost"]);
    let internal_ca = ClientPki::new(&dir.0, "internal-ca");
    let partner_ca = ClientPki::new(&dir.0, "partner-ca");
    let alice = internal_ca.issue("alice", "Contoso", 3001);
    // The same name, from the partner's CA.
    let partner_alice = partner_ca.issue("alice", "Contoso", 3002);
    let backend = start_backend().await;
    let (internal, partner, plain) = (free_port(), free_port(), free_port());
    let cert = server_cert.cert_chain_pem.display().to_string();
    let key = server_cert.key_pem.display().to_string();
    let listener = |port: u16, ca: &ClientPki| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:{port}\"\n\
             tls = {{ cert = {cert:?}, key = {key:?}, client_auth = \"optional\", client_ca = {:?} }}\n\n",
            ca.ca_pem.display().to_string()
        )
    };
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\n\n{}{}\
         [[listener]]\naddress = \"127.0.0.1:{plain}\"\nplain_http = true\n\n\
         [[api]]\nname = \"internal\"\npath_prefix = \"/internal\"\nbackend = \"http://{backend}/\"\n\
         subscription = \"none\"\nlisteners = [\"127.0.0.1:{internal}\"]\n\
         client_certificate = {{ identities = [{{ common_name = \"alice\" }}] }}\n\n\
         [[api]]\nname = \"partner\"\npath_prefix = \"/partner\"\nbackend = \"http://{backend}/\"\n\
         subscription = \"none\"\nlisteners = [\"127.0.0.1:{partner}\"]\nclient_certificate = {{}}\n\n\
         [[api]]\nname = \"open\"\npath_prefix = \"/open\"\nbackend = \"http://{backend}/\"\n\
         subscription = \"none\"\n\n\
         [[api]]\nname = \"health\"\npath_prefix = \"/health\"\nbackend = \"http://{backend}/\"\n\
         subscription = \"none\"\nlisteners = [\"127.0.0.1:{plain}\", \"127.0.0.1:{internal}\"]\n",
        listener(internal, &internal_ca),
        listener(partner, &partner_ca),
        state = dir.0.join("state").display().to_string(),
        runtime = dir.0.join("run").display().to_string(),
    );
    let config = dir.0.join("rampart.toml");
    let daemon = Rampartd::start(&config, &text, dir.0.join("rampartd.log"), plain).await;
    let log = || std::fs::read_to_string(&daemon.log).unwrap_or_default();
    let status = |result: Result<(http::response::Parts, String), String>| {
        result.map(|(parts, _)| parts.status.as_u16())
    };
    let url = |port: u16, path: &str| format!("https://localhost:{port}{path}");

    // The partner's "alice" on the partner listener: its API, not the internal one.
    let partner_client = mtls_client(&server, Some(&partner_alice));
    assert_eq!(
        status(get(&partner_client, &url(partner, "/partner/x"), &[]).await),
        Ok(200),
        "{}",
        log()
    );
    let around = get(&partner_client, &url(partner, "/internal/x"), &[]).await;
    assert_error(&around, 404, "Resource not found");
    // The internal alice: the internal API on its listener; not the partner API.
    let internal_client = mtls_client(&server, Some(&alice));
    assert_eq!(
        status(get(&internal_client, &url(internal, "/internal/x"), &[]).await),
        Ok(200)
    );
    assert_eq!(
        status(get(&internal_client, &url(internal, "/partner/x"), &[]).await),
        Ok(404)
    );
    // No `listeners`: every TLS listener.
    for port in [internal, partner] {
        let client = mtls_client(&server, None);
        assert_eq!(
            status(get(&client, &url(port, "/open/x"), &[]).await),
            Ok(200)
        );
    }
    // The plain listener serves only what names it.
    let client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let plain_status = |path: &'static str| {
        let client = client.clone();
        async move {
            let uri = format!("http://127.0.0.1:{plain}{path}");
            let response = client
                .request(Request::get(uri).body(Empty::new()).unwrap())
                .await
                .unwrap();
            response.status().as_u16()
        }
    };
    assert_eq!(plain_status("/health").await, 200);
    assert_eq!(plain_status("/open/x").await, 404);
    assert_eq!(plain_status("/internal/x").await, 404);
    assert_eq!(
        status(get(&mtls_client(&server, None), &url(internal, "/health"), &[]).await),
        Ok(200)
    );
    assert_eq!(
        status(get(&mtls_client(&server, None), &url(partner, "/health"), &[]).await),
        Ok(404)
    );
}

/// DER: `tag`, the length of `content`, `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n @ 0..=0x7f => out.push(n as u8),
        n @ 0x80..=0xff => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// A CRL as some tools make it: no `crlExtensions` (no CRL Number, no Authority
/// Key Identifier), version 2 or (without the version field) 1; with
/// `crl_number`, the same with a CRL Number. Its signature is not a real one:
/// rustls parses the list when the listener is built, and checks a signature only
/// against a client certificate.
fn crl_without_extensions(v2: bool, crl_number: bool) -> Vec<u8> {
    // ecdsa-with-SHA256
    let algorithm = der(
        0x30,
        &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
    );
    let common_name = [der(0x06, &[0x55, 0x04, 0x03]), der(0x0c, b"client-ca")].concat();
    let issuer = der(0x30, &der(0x31, &der(0x30, &common_name)));
    let mut tbs = Vec::new();
    if v2 {
        tbs.extend(der(0x02, &[0x01]));
    }
    tbs.extend(algorithm.clone());
    tbs.extend(issuer);
    tbs.extend(der(0x17, b"250101000000Z"));
    tbs.extend(der(0x17, b"491231235959Z"));
    if crl_number {
        // [0] { { id-ce-cRLNumber, OCTET STRING { INTEGER 1 } } }
        let extension = [
            der(0x06, &[0x55, 0x1d, 0x14]),
            der(0x04, &der(0x02, &[0x01])),
        ]
        .concat();
        tbs.extend(der(0xa0, &der(0x30, &der(0x30, &extension))));
    }
    let signature = der(
        0x03,
        &[0x00, 0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
    );
    der(0x30, &[der(0x30, &tbs), algorithm, signature].concat())
}

/// A CRL without the extensions RFC 5280 requires is refused by the check and by
/// start, with its file and what rampartd needs (before: "ParseError").
#[test]
fn a_crl_without_its_extensions_is_refused_saying_what_is_needed() {
    let dir = TempDir::new("mtls-crl-extensions");
    let server = Pki::new();
    let cert = server.leaf("gw", &["localhost"]);
    let clients = ClientPki::new(&dir.0, "client-ca");
    let config = dir.0.join("crl.toml");
    for (name, crl) in [
        ("v2.crl", crl_without_extensions(true, false)),
        ("v1.crl", crl_without_extensions(false, false)),
        ("numbered.crl", crl_without_extensions(true, true)),
    ] {
        let path = dir.0.join(name);
        std::fs::write(&path, &crl).unwrap();
        std::fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\nadmin_listen = \"off\"\n\n\
                 [[listener]]\naddress = \"127.0.0.1:{port}\"\n\
                 tls = {{ cert = {cert:?}, key = {key:?}, client_auth = \"required\", client_ca = {ca:?}, crl = [{crl:?}] }}\n",
                state = dir.0.join("state").display().to_string(),
                runtime = dir.0.join("run").display().to_string(),
                port = free_port(),
                cert = cert.cert_chain_pem.display().to_string(),
                key = cert.key_pem.display().to_string(),
                ca = clients.ca_pem.display().to_string(),
                crl = path.display().to_string(),
            ),
        )
        .unwrap();
        let expected = format!(
            "{}: no usable certificate revocation list: the CRL could not be parsed; rampartd needs \
             an X.509 v2 CRL with the CRL Number and Authority Key Identifier extensions (RFC 5280)",
            path.display()
        );
        if name == "numbered.crl" {
            // The same list with a CRL Number is taken.
            let out = Command::new(RAMPARTD)
                .arg("--check-config")
                .arg(&config)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{name}: {err}");
            continue;
        }
        for flag in ["--check-config", "--config"] {
            let out = Command::new(RAMPARTD)
                .arg(flag)
                .arg(&config)
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{name} {flag}: {err}");
            assert!(err.contains(&expected), "{name} {flag}: {err}");
        }
    }
}
