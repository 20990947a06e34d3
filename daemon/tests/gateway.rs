//! The gateway end to end on loopback: real TLS clients (hyper + rustls, curl,
//! openssl), a real backend, certificates made by the test.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_support::*;
use http::header::{HeaderValue, WWW_AUTHENTICATE};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use rampart::gateway::{
    BackendProtocol, BackendTimeouts, Limits, Rejection, RequestContext, RequestPolicy,
    ResponseContext, SniCert, Stop,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Setup {
    pki: Pki,
    backend: std::net::SocketAddr,
    gateway: Running,
}

async fn setup(limits: Limits) -> Setup {
    let pki = Pki::new();
    let backend = start_backend().await;
    let default_cert = pki.leaf("localhost", &["localhost", "127.0.0.1"]);
    let apis = vec![
        api("orders", None, "/orders", &format!("http://{backend}/api")),
        api(
            "root",
            Some("root.test"),
            "/",
            &format!("http://{backend}/"),
        ),
        api("echo", None, "/echo", &format!("http://{backend}/")),
    ];
    let gateway = start_gateway_with(
        tls_settings(default_cert, Vec::new()),
        settings(apis, limits),
        None,
    )
    .await;
    Setup {
        pki,
        backend,
        gateway,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_longest_prefix_and_rewrites_the_path() {
    let s = setup(Limits::default()).await;
    let client = client(&s.pki, false);
    let base = format!("https://localhost:{}", s.gateway.tls.port());

    let (parts, body) = get(&client, &format!("{base}/orders/42?x=1")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(body.starts_with("GET /api/42?x=1\n"), "{body}");
    assert!(body.contains(&format!("host: {}\n", s.backend)), "{body}");

    let (_, body) = get(&client, &format!("{base}/orders")).await;
    assert!(body.starts_with("GET /api\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_gets_apim_404() {
    let s = setup(Limits::default()).await;
    let client = client(&s.pki, false);
    let base = format!("https://localhost:{}", s.gateway.tls.port());
    for path in ["/nothing", "/ordersx", "/"] {
        let (parts, body) = get(&client, &format!("{base}{path}")).await;
        assert_apim_error(&parts, &body, 404, "Resource not found");
        assert_eq!(
            body,
            r#"{ "statusCode": 404, "message": "Resource not found" }"#
        );
    }
    // Each gateway-made error is counted by its APIM reason.
    assert_eq!(
        s.gateway.stats.rejections(),
        [("OperationNotFound", 3)],
        "rejection counters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_bound_api_matches_its_host_only() {
    let s = setup(Limits::default()).await;
    let port = s.gateway.tls.port();
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&s.pki.ca_pem)
        .args(["-H", "Host: root.test"])
        .arg(format!("https://localhost:{port}/anything"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.starts_with("GET /anything\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_both_work_with_hyper_client() {
    let s = setup(Limits::default()).await;
    let url = format!("https://localhost:{}/echo/v", s.gateway.tls.port());
    for h2 in [false, true] {
        let client = client(&s.pki, h2);
        let (parts, body) = get(&client, &url).await;
        assert_eq!(parts.status, StatusCode::OK, "{body}");
        let expected = if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(parts.version, expected);
        // Upstream is HTTP/1.1 to a plain backend, whatever the client spoke.
        assert_eq!(parts.headers["x-backend-version"], "HTTP/1.1");
        // The backend's hop-by-hop header does not reach the client.
        assert!(!parts.headers.contains_key("connection"));
    }
}

fn curl(pki: &Pki, args: &[&str], url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&pki.ca_pem)
        .args(args)
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or((&stdout, ""));
    (body.to_owned(), status.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_and_http1_over_tls12_and_tls13() {
    let s = setup(Limits::default()).await;
    let url = format!("https://localhost:{}/echo/x", s.gateway.tls.port());
    let pki = &s.pki;
    // curl blocks: run it off the runtime threads.
    let cases: [(&[&str], &str); 4] = [
        (&["--http2"], "2 200"),
        (&["--http1.1"], "1.1 200"),
        (&["--http2", "--tlsv1.2", "--tls-max", "1.2"], "2 200"),
        (&["--http1.1", "--tlsv1.3"], "1.1 200"),
    ];
    for (args, expected) in cases {
        let (body, status) = tokio::task::block_in_place(|| curl(pki, args, &url));
        assert_eq!(status, expected, "curl {args:?}: {body}");
        assert!(body.starts_with("GET /x\n"), "{body}");
    }
}

fn s_client(port: u16, version_flag: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "localhost", version_flag])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_accepted_tls_1_1_refused() {
    let s = setup(Limits::default()).await;
    let port = s.gateway.tls.port();
    tokio::task::block_in_place(|| {
        let (ok, text) = s_client(port, "-tls1_3", &[]);
        assert!(ok && text.contains("TLSv1.3"), "{text}");
        let (ok, text) = s_client(port, "-tls1_2", &[]);
        assert!(ok && text.contains("TLSv1.2"), "{text}");
        // SECLEVEL=0 makes openssl really offer TLS 1.1; the refusal is the server's.
        let (ok, text) = s_client(port, "-tls1_1", &["-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(!ok, "TLS 1.1 was accepted: {text}");
        assert!(
            text.contains("protocol version") || text.contains("alert"),
            "unexpected failure: {text}"
        );
    });
    assert!(rampart::gateway::GatewayStats::get(&s.gateway.stats.tls_handshake_failures) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_offers_h2_and_http11() {
    let s = setup(Limits::default()).await;
    let port = s.gateway.tls.port();
    tokio::task::block_in_place(|| {
        let (ok, text) = s_client(port, "-tls1_3", &["-alpn", "h2"]);
        assert!(ok && text.contains("ALPN protocol: h2"), "{text}");
        let (ok, text) = s_client(port, "-tls1_3", &["-alpn", "http/1.1"]);
        assert!(ok && text.contains("ALPN protocol: http/1.1"), "{text}");
    });
}

async fn peer_cert_der(pki: &Pki, port: u16, sni: &str) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(&[])));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (_, conn) = tls.get_ref();
    conn.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_is_chosen_by_sni_and_reloaded() {
    let pki = Pki::new();
    let backend = start_backend().await;
    let default_cert = pki.leaf("default", &["localhost"]);
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let sni = vec![
        SniCert {
            hostname: "a.test".to_owned(),
            files: a.clone(),
        },
        SniCert {
            hostname: "B.test".to_owned(),
            files: b.clone(),
        },
    ];
    let gw = start_gateway_with(
        tls_settings(default_cert, sni),
        settings(
            vec![api("echo", None, "/", &format!("http://{backend}/"))],
            Limits::default(),
        ),
        None,
    )
    .await;
    let port = gw.tls.port();
    let der = |f: &rampart::gateway::CertFiles| {
        let pem = std::fs::read(&f.cert_chain_pem).unwrap();
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(&pem)
            .unwrap()
            .to_vec()
    };
    let a_der = der(&a);
    let b_der = der(&b);
    assert_eq!(peer_cert_der(&pki, port, "a.test").await, a_der);
    assert_eq!(peer_cert_der(&pki, port, "b.test").await, b_der);

    // An HTTP/2 connection opened before the reload keeps working after it.
    let h2 = client(&pki, true);
    let url = format!("https://localhost:{port}/before");
    assert_eq!(get(&h2, &url).await.0.status, StatusCode::OK);

    // Renew a.test's certificate in place, then reload: new handshakes get it.
    let renewed = pki.leaf("a", &["a.test"]);
    let renewed_der = der(&renewed);
    assert_ne!(renewed_der, a_der);
    gw.certificates.reload().unwrap();
    assert_eq!(peer_cert_der(&pki, port, "a.test").await, renewed_der);
    assert_eq!(get(&h2, &url).await.0.status, StatusCode::OK);

    // A broken file is refused and the certificates in use stay.
    std::fs::write(&b.key_pem, "not a key").unwrap();
    assert_eq!(gw.certificates.reload().unwrap_err().len(), 1);
    assert_eq!(peer_cert_der(&pki, port, "b.test").await, b_der);
    assert_eq!(peer_cert_der(&pki, port, "a.test").await, renewed_der);
}

/// `CertReloader::reload` reported only the first listener whose certificate
/// failed. Now every problem is reported as start reports it: one per problem,
/// naming every listener it stops (two listeners sharing a broken file, a third
/// with its own), and the certificates in use stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_reload_reports_every_listener_that_fails() {
    use rampart::gateway::{Gateway, ListenerSettings, Transport};
    let pki = Pki::new();
    let backend = start_backend().await;
    let shared = pki.leaf("shared", &["localhost"]);
    let own = pki.leaf("own", &["localhost"]);
    let addrs: Vec<std::net::SocketAddr> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .collect();
    let files = [&shared, &shared, &own];
    let listeners: Vec<_> = addrs
        .iter()
        .zip(files)
        .map(|(addr, files)| ListenerSettings {
            addr: *addr,
            transport: Transport::Tls(tls_settings(files.clone(), Vec::new())),
        })
        .collect();
    let gateway = Gateway::bind(
        &listeners,
        settings(
            vec![api("echo", None, "/", &format!("http://{backend}/"))],
            Limits::default(),
        ),
    )
    .await
    .unwrap();
    let certificates = gateway.certificates();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(gateway.serve(shutdown.clone()));
    let served = peer_cert_der(&pki, addrs[2].port(), "localhost").await;

    std::fs::write(&shared.key_pem, "not a key").unwrap();
    std::fs::write(&own.key_pem, "not a key either").unwrap();
    let errors: Vec<String> = certificates
        .reload()
        .unwrap_err()
        .iter()
        .map(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })
        .collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].starts_with(&format!("listeners {}, {}: ", addrs[0], addrs[1]))
            && errors[0].contains(&shared.key_pem.display().to_string()),
        "{errors:#?}"
    );
    assert!(
        errors[1].starts_with(&format!("listener {}: ", addrs[2]))
            && errors[1].contains(&own.key_pem.display().to_string()),
        "{errors:#?}"
    );
    assert_eq!(
        peer_cert_der(&pki, addrs[2].port(), "localhost").await,
        served
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_set_and_client_forgeries_dropped() {
    let s = setup(Limits::default()).await;
    let client = client(&s.pki, false);
    let url = format!("https://localhost:{}/echo/h", s.gateway.tls.port());
    let request = Request::get(&url)
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .header("forwarded", "for=6.6.6.6")
        // Look-alikes that CGI-style servers read as the real headers.
        .header("x_forwarded_for", "6.6.6.6")
        .header("X_Forwarded_Host", "evil.example")
        // Headers backends read as the client's address or the URL asked for.
        .header("x-real-ip", "6.6.6.6")
        .header("true-client-ip", "6.6.6.6")
        .header("x-original-url", "/evil.example/admin")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("x-keep", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (_, body) = send(&client, request).await;
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    assert!(
        body.contains(&format!(
            "x-forwarded-host: localhost:{}\n",
            s.gateway.tls.port()
        )),
        "{body}"
    );
    assert!(
        body.contains("forwarded: for=127.0.0.1;host=\"localhost:"),
        "{body}"
    );
    assert!(!body.contains("6.6.6.6"), "{body}");
    assert!(!body.contains("evil.example"), "{body}");
    assert!(!body.contains("x-drop-me"), "{body}");
    assert!(body.contains("x-keep: 1\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_forwarding_headers_are_kept() {
    let pki = Pki::new();
    let backend = start_backend().await;
    let mut gw_settings = settings(
        vec![api("echo", None, "/", &format!("http://{backend}/"))],
        Limits::default(),
    );
    gw_settings.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        gw_settings,
        None,
    )
    .await;
    let client = client(&pki, false);
    let url = format!("http://127.0.0.1:{}/h", gw.plain.port());
    let request = Request::get(&url)
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (_, body) = send(&client, request).await;
    assert!(
        body.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_gives_502_quickly() {
    let pki = Pki::new();
    let dead = closed_port().await;
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        settings(
            vec![api("dead", None, "/", &format!("http://{dead}/"))],
            Limits::default(),
        ),
        None,
    )
    .await;
    let client = client(&pki, false);
    let started = Instant::now();
    let (parts, body) = get(&client, &format!("https://localhost:{}/x", gw.tls.port())).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_apim_error(&parts, &body, 502, "Bad gateway");
    assert!(!body.contains("127.0.0.1"), "leaks internals: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_gives_504() {
    let pki = Pki::new();
    let backend = start_backend().await;
    let mut slow = api("slow", None, "/", &format!("http://{backend}/"));
    slow.timeouts = BackendTimeouts {
        response_header: Duration::from_millis(300),
        ..BackendTimeouts::default()
    };
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        settings(vec![slow], Limits::default()),
        None,
    )
    .await;
    let client = client(&pki, true);
    let started = Instant::now();
    let (parts, body) = get(
        &client,
        &format!("https://localhost:{}/slow?ms=3000", gw.tls.port()),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_apim_error(&parts, &body, 504, "Gateway timeout");
}

/// hunt9 L1: `connect_secs` covers the TLS handshake to an https backend, as nginx's
/// `proxy_connect_timeout` does. A backend that accepts TCP and never answers the
/// TLS handshake held the request until `response_secs` and got 504 (a late
/// backend); it is now a connection failure, 502, after `connect_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_finishes_tls_gives_502_after_the_connect_timeout() {
    let pki = Pki::new();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    // Accepts and holds every connection, never writing a byte.
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let mut api = api(
        "tlshang",
        None,
        "/",
        &format!("https://localhost:{}/", silent_addr.port()),
    );
    api.timeouts = BackendTimeouts {
        connect: Duration::from_millis(500),
        response_header: Duration::from_secs(20),
        ..BackendTimeouts::default()
    };
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        settings(vec![api], Limits::default()),
        None,
    )
    .await;
    let client = client(&pki, false);
    let started = Instant::now();
    let (parts, body) = tokio::time::timeout(
        Duration::from_secs(10),
        get(&client, &format!("https://localhost:{}/x", gw.tls.port())),
    )
    .await
    .expect("no answer in 10 s");
    let took = started.elapsed();
    assert_apim_error(&parts, &body, 502, "Bad gateway");
    assert!(took < Duration::from_secs(3), "{took:?}");
    held.abort();
}

/// Sends raw bytes on a plain connection and returns what came back until close.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_too_large_gets_431_and_a_url_too_long_414() {
    let limits = Limits {
        max_header_bytes: 8 * 1024,
        ..Limits::default()
    };
    let s = setup(limits).await;
    let h1 = client(&s.pki, false);
    let h2 = client(&s.pki, true);
    let url = format!("https://localhost:{}/echo/x", s.gateway.tls.port());
    let big = "a".repeat(16 * 1024);
    let request = Request::get(&url)
        .header("x-big", big.as_str())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (parts, body) = send(&h1, request).await;
    assert_apim_error(&parts, &body, 431, "Request header fields too large");

    // Over HTTP/2 the same limit applies.
    let request = Request::get(&url)
        .header("x-big", big.as_str())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (parts, body) = send(&h2, request).await;
    assert_apim_error(&parts, &body, 431, "Request header fields too large");

    // Far over the limit, past what hyper reads: the same answer, and the connection
    // is closed.
    let huge = format!(
        "GET /echo/x HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
        "b".repeat(512 * 1024)
    );
    let answer = raw_exchange(s.gateway.plain, huge.as_bytes()).await;
    assert_raw_error(&answer, 431, "Request header fields too large");

    // A URL longer than the whole head may be is what is too long: 414, as nginx
    // answers, over both versions; and past what hyper reads, before the line ends.
    let long_url = format!("{url}?q={}", "c".repeat(16 * 1024));
    for client in [&h1, &h2] {
        let request = Request::get(&long_url).body(Empty::<Bytes>::new()).unwrap();
        let (parts, body) = send(client, request).await;
        assert_apim_error(&parts, &body, 414, "Request URI too long");
    }
    let endless = format!("GET /echo/{} HTTP/1.1\r\n", "d".repeat(512 * 1024));
    let answer = raw_exchange(s.gateway.plain, endless.as_bytes()).await;
    assert_raw_error(&answer, 414, "Request URI too long");
}

/// A raw HTTP/1.1 answer is the gateway's JSON error, and closes the connection.
fn assert_raw_error(answer: &str, status: u16, message: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{answer}"
    );
    assert!(
        answer.contains("content-type: application/json"),
        "{answer}"
    );
    assert!(answer.contains("connection: close"), "{answer}");
    let body = format!(r#"{{ "statusCode": {status}, "message": "{message}" }}"#);
    assert!(answer.ends_with(&body), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_target_too_long_gets_414() {
    // A head limit above hyper's longest request target (65,534 bytes).
    let limits = Limits {
        max_header_bytes: 96 * 1024,
        ..Limits::default()
    };
    let s = setup(limits).await;
    let long = format!(
        "GET /echo/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(65_530)
    );
    let answer = raw_exchange(s.gateway.plain, long.as_bytes()).await;
    assert_raw_error(&answer, 414, "Request URI too long");
    // Just under it: served.
    let fits = format!(
        "GET /echo/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(65_520)
    );
    let answer = raw_exchange(s.gateway.plain, fits.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "{}",
        &answer[..answer.len().min(300)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_body_too_large_gets_413() {
    let limits = Limits {
        max_body_bytes: 1024 * 1024,
        ..Limits::default()
    };
    let s = setup(limits).await;
    let answer = raw_exchange(
        s.gateway.plain,
        b"POST /echo/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("content-type: application/json"),
        "{answer}"
    );
    assert!(
        answer.ends_with(r#"{ "statusCode": 413, "message": "Request entity too large" }"#),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_too_large_gets_413() {
    let limits = Limits {
        max_body_bytes: 1024 * 1024,
        ..Limits::default()
    };
    let s = setup(limits).await;
    let client = client(&s.pki, true);
    let url = format!("https://localhost:{}/echo/upload", s.gateway.tls.port());
    // Under the limit, without Content-Length: passes.
    let request = Request::post(&url)
        .body(PatternBody::new(512 * 1024, false))
        .unwrap();
    let (parts, body) = send(&client, request).await;
    assert_eq!(parts.status, StatusCode::OK, "{body}");
    assert_eq!(body, "received 524288");
    // Over it: cut off while streaming.
    let request = Request::post(&url)
        .body(PatternBody::new(3 * 1024 * 1024, false))
        .unwrap();
    let (parts, body) = send(&client, request).await;
    assert_apim_error(&parts, &body, 413, "Request entity too large");
}

/// A client uploading more than the limit goes on sending after the 413: the
/// gateway reads and drops the rest before it closes (lingering close), so the client
/// neither meets a reset while it sends nor loses the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upload_is_read_to_its_end_so_the_client_gets_the_413() {
    let limits = Limits {
        max_body_bytes: 1024 * 1024,
        ..Limits::default()
    };
    let s = setup(limits).await;
    let mut stream = TcpStream::connect(s.gateway.plain).await.unwrap();
    if let Some(error) = upload(&mut stream, "/echo/upload", 32 * 1024 * 1024).await {
        panic!("reset while the client sends: {error}");
    }
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("closed once the client has closed its side")
        .expect("the answer and a clean close, no reset");
    assert_raw_error(
        &String::from_utf8_lossy(&answer),
        413,
        "Request entity too large",
    );

    // curl over TLS, uploading a file over the limit, reports the 413.
    let dir = TempDir::new("upload");
    let file = dir.0.join("upload");
    // The pattern the backend checks, so that only the gateway's limit stops it.
    let pattern: Vec<u8> = (0..16 * 1024 * 1024).map(pattern_byte).collect();
    std::fs::write(&file, pattern).unwrap();
    let upload = format!("@{}", file.display());
    let url = format!("https://localhost:{}/echo/upload", s.gateway.tls.port());
    let pki = &s.pki;
    // By Content-Length, and while streaming (chunked, or HTTP/2 without a length).
    for version in ["--http1.1", "--http2"] {
        for framing in [&[][..], &["-H", "Transfer-Encoding: chunked"][..]] {
            let args = [&[version, "--data-binary", &upload][..], framing].concat();
            let (body, status) = tokio::task::block_in_place(|| curl(pki, &args, &url));
            assert!(status.ends_with(" 413"), "{args:?}: {status:?} {body}");
            assert_eq!(
                body, r#"{ "statusCode": 413, "message": "Request entity too large" }"#,
                "{args:?}"
            );
        }
    }
    // Any answer given before the body is read: an unknown route.
    let unknown = format!("https://localhost:{}/nowhere", s.gateway.tls.port());
    for version in ["--http1.1", "--http2"] {
        let (body, status) = tokio::task::block_in_place(|| {
            curl(pki, &[version, "--data-binary", &upload], &unknown)
        });
        assert!(status.ends_with(" 404"), "{version}: {status:?} {body}");
    }
}

/// Lingering ends when the client falls silent: its bytes after that meet a closed
/// socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lingering_ends_when_the_client_falls_silent() {
    let limits = Limits {
        max_body_bytes: 1024,
        lingering_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let s = setup(limits).await;
    let mut stream = TcpStream::connect(s.gateway.plain).await.unwrap();
    stream
        .write_all(b"POST /echo/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[b'x'; 10_000]).await.unwrap();
    // The answer, and the gateway's side shut after it.
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert_raw_error(
        &String::from_utf8_lossy(&answer),
        413,
        "Request entity too large",
    );
    // Still read while lingering...
    stream
        .write_all(&[b'x'; 10_000])
        .await
        .expect("read while lingering");
    // ... and not after a silence longer than the lingering timeout: the socket is
    // closed, and the kernel resets what comes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let start = Instant::now();
    let mut refused = None;
    while start.elapsed() < Duration::from_secs(3) {
        if let Err(error) = stream.write_all(&[b'x'; 1000]).await {
            refused = Some(error);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_reset(&refused.expect("writes after the lingering are refused"));
}

/// TRACE (which a backend answers by echoing the request, with the headers the
/// gateway added) and CONNECT (a tunnel) are refused with 405 and never forwarded;
/// the echo backend would answer either with 200. Other methods, custom ones too,
/// pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_and_connect_get_405_and_never_reach_the_backend() {
    let s = setup(Limits::default()).await;
    for request in [
        "TRACE /echo/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "CONNECT 198.18.0.9:22 HTTP/1.1\r\nHost: 198.18.0.9:22\r\nConnection: close\r\n\r\n",
        // Another method by RFC 9110 §9.1, but some backends take it for TRACE.
        "trace /echo/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_exchange(s.gateway.plain, request.as_bytes()).await;
        assert_raw_error(&answer, 405, "Method not allowed");
        assert!(
            answer.contains("allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"),
            "{answer}"
        );
    }
    let client = client::<Empty<Bytes>>(&s.pki, true);
    let url = format!("https://localhost:{}/echo/x", s.gateway.tls.port());
    let request = Request::builder()
        .method("TRACE")
        .uri(&url)
        .body(Empty::new())
        .unwrap();
    let (parts, body) = send(&client, request).await;
    assert_apim_error(&parts, &body, 405, "Method not allowed");
    let request = Request::builder()
        .method("PROPFIND")
        .uri(&url)
        .body(Empty::new())
        .unwrap();
    let (parts, body) = send(&client, request).await;
    assert_eq!(parts.status, StatusCode::OK, "{body}");
    assert!(body.starts_with("PROPFIND /x\n"), "{body}");
    assert_eq!(
        s.gateway
            .stats
            .rejections()
            .into_iter()
            .find(|(reason, _)| *reason == "MethodNotAllowed"),
        Some(("MethodNotAllowed", 4))
    );
}

/// One raw HTTP/1.1 request on the plain listener; the first line of the backend's
/// echo (`METHOD PATH`), or the whole answer when it is not a 200.
async fn echoed(addr: std::net::SocketAddr, target: &str) -> String {
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(addr, request.as_bytes()).await;
    match answer.strip_prefix("HTTP/1.1 200 ") {
        Some(rest) => {
            let body = rest.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            body.lines().next().unwrap_or_default().to_owned()
        }
        None => answer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_routed_and_forwarded_in_normal_form() {
    let s = setup(Limits::default()).await;
    let plain = s.gateway.plain;
    // Each of these reaches the backend as /orders/7 would (the orders API, whose
    // backend path is /api), never as a path under /echo: the API whose policies
    // apply is the one the backend serves.
    for target in [
        "/echo/../orders/7",
        "/echo/%2e%2E/orders/7",
        "/echo/.%2e/orders/7",
        "//orders//7",
        "/%6Frders/./7",
        "/orders/x/../7",
    ] {
        assert_eq!(echoed(plain, target).await, "GET /api/7", "{target}");
    }
    // The query is kept as sent; a trailing slash too; other escapes stay escaped.
    assert_eq!(
        echoed(plain, "/echo/../orders/7?a=%2F..&b=/../").await,
        "GET /api/7?a=%2F..&b=/../"
    );
    assert_eq!(echoed(plain, "/echo/a/b/..").await, "GET /a/");
    // Path parameters after the API's prefix are forwarded as they are.
    assert_eq!(echoed(plain, "/orders/7;v=1").await, "GET /api/7;v=1");
    assert_eq!(echoed(plain, "/echo/%c3%bc%20x").await, "GET /%C3%BC%20x");
    // Over TLS and HTTP/2 the same.
    let client = client(&s.pki, true);
    let base = format!("https://localhost:{}", s.gateway.tls.port());
    let (parts, body) = get(&client, &format!("{base}/echo/%2e%2e/orders/7")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(body.starts_with("GET /api/7\n"), "{body}");

    // What normalising cannot settle is refused and counted.
    let slash = "Bad request: the path contains an encoded slash or a backslash";
    for (target, message) in [
        ("/echo/..%2Forders/7", slash),
        ("/echo/..%5corders/7", slash),
        ("/echo\\..\\orders/7", slash),
        (
            "/echo/a%00.json",
            "Bad request: the path contains an encoded NUL",
        ),
        (
            "/echo/..;/orders/7",
            "Bad request: the path contains a dot segment with parameters",
        ),
        (
            "/orders;jsessionid=1/7",
            "Bad request: the path has parameters (;) in the segments that name the API",
        ),
        (
            "/echo/a%zz",
            "Bad request: the path contains an invalid percent-encoding",
        ),
    ] {
        assert_raw_error(&echoed(plain, target).await, 400, message);
    }
    assert_eq!(
        rampart::gateway::GatewayStats::get(&s.gateway.stats.malformed_requests),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_pass_when_allowed() {
    let limits = Limits {
        allow_encoded_slashes: true,
        ..Limits::default()
    };
    let s = setup(limits).await;
    assert_eq!(
        echoed(s.gateway.plain, "/echo/group%2fproject/../x").await,
        "GET /x"
    );
    assert_eq!(
        echoed(s.gateway.plain, "/echo/group%2fproject").await,
        "GET /group%2Fproject"
    );
    // An encoded NUL never passes.
    let answer = echoed(s.gateway.plain, "/echo/a%00").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_missing_or_repeated_gets_400() {
    let s = setup(Limits::default()).await;
    let answer = raw_exchange(
        s.gateway.plain,
        b"GET /echo/x HTTP/1.1\r\nHost: x\r\nHost: root.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_raw_error(&answer, 400, "Bad request: more than one Host header");
    let answer = raw_exchange(
        s.gateway.plain,
        b"GET /echo/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_raw_error(&answer, 400, "Bad request: the Host header is missing");
    // HTTP/1.0 has no Host requirement.
    let answer = raw_exchange(s.gateway.plain, b"GET /echo/x HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
    assert_eq!(
        rampart::gateway::GatewayStats::get(&s.gateway.stats.malformed_requests),
        2
    );
}

/// A host-bound API (root.test) is reached by its host only: a `Host` that is no
/// host name (a comma, userinfo, a port that is no number) is refused instead of
/// being routed past it to a host-less API and handed to the backend in
/// `X-Forwarded-Host`, where a backend reading up to the comma would take it for
/// root.test. The one trailing dot of a fully qualified name is the same host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_must_name_a_host_and_agree_with_authority() {
    let s = setup(Limits::default()).await;
    let invalid = "Bad request: the Host is not a valid host name or address";
    for host in [
        "root.test,evil",
        "root.test@evil",
        "user@root.test",
        "root.test:abc",
        "root.test..",
        "root%2etest",
    ] {
        let request = format!("GET /echo/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(s.gateway.plain, request.as_bytes()).await;
        assert_raw_error(&answer, 400, invalid);
    }
    // The authority of an absolute-form target is the request's host (RFC 9112
    // §3.2.2): userinfo in it is refused as well.
    let answer = raw_exchange(
        s.gateway.plain,
        b"GET http://u@root.test/x HTTP/1.1\r\nHost: root.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_raw_error(&answer, 400, invalid);
    for host in ["root.test.", "ROOT.test.:8080"] {
        let request = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(s.gateway.plain, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.contains("\r\n\r\nGET /x\n"), "{answer}");
        assert!(
            answer.contains(&format!("x-forwarded-host: {host}\n")),
            "{answer}"
        );
    }

    // HTTP/2: a `Host` beside `:authority` must name the same host (RFC 9113 §8.3.1).
    let h2 = client::<Empty<Bytes>>(&s.pki, true);
    let port = s.gateway.tls.port();
    let url = format!("https://localhost:{port}/echo/x");
    let request = Request::get(&url)
        .header("host", "root.test")
        .body(Empty::new())
        .unwrap();
    let (parts, body) = send(&h2, request).await;
    assert_eq!(parts.version, http::Version::HTTP_2);
    assert_apim_error(
        &parts,
        &body,
        400,
        "Bad request: the Host header differs from :authority",
    );
    let request = Request::get(&url)
        .header("host", format!("LOCALHOST:{port}"))
        .body(Empty::new())
        .unwrap();
    let (parts, body) = send(&h2, request).await;
    assert_eq!(parts.status, StatusCode::OK, "{body}");
    assert!(body.starts_with("GET /x\n"), "{body}");
    assert_eq!(
        rampart::gateway::GatewayStats::get(&s.gateway.stats.malformed_requests),
        8
    );
}

/// `*` names the server, not an API's resource: `OPTIONS *` is answered by the
/// gateway with the methods it lets through, `*` with any other method is
/// malformed; neither is routed (before, both reached root.test's backend as
/// `/*`, the API's prefix glued to the asterisk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_target_is_answered_by_the_gateway() {
    let s = setup(Limits::default()).await;
    let answer = raw_exchange(
        s.gateway.plain,
        b"OPTIONS * HTTP/1.1\r\nHost: root.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.contains("allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"),
        "{answer}"
    );
    assert!(answer.contains("content-length: 0\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "{answer}");
    let answer = raw_exchange(
        s.gateway.plain,
        b"GET * HTTP/1.1\r\nHost: root.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_raw_error(
        &answer,
        400,
        "Bad request: the target * is for OPTIONS only",
    );
}

/// An answer after which hyper closes the connection, because the request's body
/// was not sent (a refused `Expect: 100-continue`) or was broken (bad chunking),
/// says `Connection: close`, so that the client does not send its next request on
/// that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_end_the_connection_say_so() {
    let s = setup(Limits::default()).await;
    // Keep-alive requests: the `connection: close` is the gateway's.
    let answer = raw_exchange(
        s.gateway.plain,
        b"POST /nowhere HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 500\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    assert!(!answer.contains(" 100 "), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    let answer = raw_exchange(
        s.gateway.plain,
        b"POST /echo/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    // A refused request whose body came with it keeps its connection: the next
    // request on it is answered.
    let answer = raw_exchange(
        s.gateway.plain,
        b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /echo/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    assert!(answer.contains("GET /next\n"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_gets_400_and_is_counted() {
    let s = setup(Limits::default()).await;
    // Heads hyper refuses: the gateway's JSON answer, after the requests before them,
    // and the connection closed (well before raw_exchange's 5 s read timeout).
    let started = Instant::now();
    let answer = raw_exchange(
        s.gateway.plain,
        b"GET /echo/first HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/x HTTP/1.1\r\nBad Header\r\n\r\nGET /echo/after HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let (first, refused) = answer.split_once("HTTP/1.1 400 ").expect(&answer);
    assert!(
        first.starts_with("HTTP/1.1 200 ") && first.contains("GET /first"),
        "{answer}"
    );
    assert_raw_error(&format!("HTTP/1.1 400 {refused}"), 400, "Bad request");
    assert!(!answer.contains("after"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for head in [
        &b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
            [..],
        b"POST /echo/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        // Refusable before its end.
        b"GET /echo/x HTTP/1.1\r\nHost: x\r\nBad Header",
    ] {
        let answer = raw_exchange(s.gateway.plain, head).await;
        assert_raw_error(&answer, 400, "Bad request");
    }
    // Over TLS, sent a byte at a time.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(s.pki.client_config(&[b"http/1.1"])));
    let tcp = TcpStream::connect(s.gateway.tls).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    for byte in b"GET /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n" {
        tls.write_all(std::slice::from_ref(byte)).await.unwrap();
        tls.flush().await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    assert_raw_error(&String::from_utf8_lossy(&out), 400, "Bad request");
    // Bad chunk size.
    let answer = raw_exchange(
        s.gateway.plain,
        b"POST /echo/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.ends_with(r#"{ "statusCode": 400, "message": "Bad request" }"#),
        "{answer}"
    );
    assert_eq!(
        rampart::gateway::GatewayStats::get(&s.gateway.stats.malformed_requests),
        6
    );
}

/// A request smuggling attempt: pipelined behind an ordinary request, a request with
/// both `Content-Length` and `Transfer-Encoding`, then the request it would smuggle.
const SMUGGLING: &[u8] = b"GET /echo/first HTTP/1.1\r\nHost: x\r\n\r\n\
POST /echo/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n\
GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

fn assert_smuggling_refused(answer: &str) {
    let (first, second) = answer
        .split_once("HTTP/1.1 400 ")
        .unwrap_or_else(|| panic!("no 400: {answer}"));
    assert!(first.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(first.contains("GET /first"), "{answer}");
    assert!(second.contains("connection: close"), "{answer}");
    assert!(
        second.contains("content-type: application/json"),
        "{answer}"
    );
    assert!(
        second.ends_with(
            r#"{ "statusCode": 400, "message": "Bad request: both Content-Length and Transfer-Encoding are present" }"#
        ),
        "{answer}"
    );
    assert!(!answer.contains("smuggled"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_gets_400_and_closes() {
    let s = setup(Limits::default()).await;
    let malformed = || rampart::gateway::GatewayStats::get(&s.gateway.stats.malformed_requests);
    assert_smuggling_refused(&raw_exchange(s.gateway.plain, SMUGGLING).await);
    assert_eq!(malformed(), 1);
    // Over TLS (HTTP/1.1 by ALPN), and sent a byte at a time.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(s.pki.client_config(&[b"http/1.1"])));
    let tcp = TcpStream::connect(s.gateway.tls).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    for byte in SMUGGLING {
        // The gateway answers and closes once it has the refused head: the bytes
        // after it may find the connection gone (EPIPE), which is what it should do.
        if tls.write_all(std::slice::from_ref(byte)).await.is_err() || tls.flush().await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    assert_smuggling_refused(&String::from_utf8_lossy(&out));
    assert_eq!(malformed(), 2);
    // Either header alone is an ordinary request.
    let answer = raw_exchange(
        s.gateway.plain,
        b"POST /echo/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(malformed(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_after_header_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let s = setup(limits).await;
    let mut stream = TcpStream::connect(s.gateway.plain).await.unwrap();
    let started = Instant::now();
    let head =
        b"GET /echo/x HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed_after = None;
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(_)) => {
                // hyper may answer 408 before closing; then the close follows.
            }
            Err(_still_open) => {}
        }
    }
    let closed_after = closed_after.expect("the slow client was never cut off");
    assert!(
        closed_after >= Duration::from_millis(900),
        "{closed_after:?}"
    );
    assert!(closed_after < Duration::from_secs(3), "{closed_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_client_is_cut_off_after_header_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let s = setup(limits).await;
    let mut stream = TcpStream::connect(s.gateway.tls).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// A policy like the key check will be: rejects, strips a header, decorates the response.
struct TestPolicy;

#[derive(Clone)]
struct Seen(String);

impl RequestPolicy for TestPolicy {
    fn on_request(&self, request: &mut RequestContext<'_>) -> Result<(), Stop> {
        if request.parts.headers.contains_key("x-deny") {
            return Err(
                Rejection::new(StatusCode::UNAUTHORIZED, "Access denied", "Test")
                    .with_header(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static("Test realm=\"x\""),
                    )
                    .into(),
            );
        }
        request.parts.headers.remove("x-secret");
        request.state.insert(Seen(request.api.to_owned()));
        Ok(())
    }

    fn on_response(&self, response: &ResponseContext<'_>, parts: &mut http::response::Parts) {
        let api = response
            .state
            .get::<Seen>()
            .map_or("none", |s| s.0.as_str());
        parts
            .headers
            .insert("x-policy-api", HeaderValue::from_str(api).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_hook_can_reject_rewrite_and_decorate() {
    let pki = Pki::new();
    let backend = start_backend().await;
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        settings(
            vec![api("echo", None, "/echo", &format!("http://{backend}/"))],
            Limits::default(),
        ),
        Some(Arc::new(TestPolicy)),
    )
    .await;
    let client = client(&pki, false);
    let url = format!("https://localhost:{}/echo/p", gw.tls.port());

    let request = Request::get(&url)
        .header("x-deny", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (parts, body) = send(&client, request).await;
    assert_apim_error(&parts, &body, 401, "Access denied");
    assert_eq!(parts.headers[WWW_AUTHENTICATE], "Test realm=\"x\"");
    assert_eq!(parts.headers["x-policy-api"], "none");

    let request = Request::get(&url)
        .header("x-secret", "k")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (parts, body) = send(&client, request).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(!body.contains("x-secret"), "{body}");
    assert_eq!(parts.headers["x-policy-api"], "echo");

    // Unrouted requests never reach policies.
    let (parts, _) = get(
        &client,
        &format!("https://localhost:{}/other", gw.tls.port()),
    )
    .await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert!(!parts.headers.contains_key("x-policy-api"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_then_stops_accepting() {
    let s = setup(Limits::default()).await;
    let client = client(&s.pki, false);
    let url = format!(
        "https://localhost:{}/echo/slow?ms=700",
        s.gateway.tls.port()
    );
    let in_flight = tokio::spawn(async move {
        let (parts, body) = get(&client, &url).await;
        (parts.status, body)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let Running { shutdown, .. } = &s.gateway;
    shutdown.cancel();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "slow done");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(s.gateway.tls).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_h2c_backends() {
    let pki = Pki::new();
    let tls_backend = start_tls_backend(&pki).await;
    let plain_backend = start_backend().await;
    let mut h2c = api("h2c", None, "/h2c", &format!("http://{plain_backend}/"));
    h2c.backend_protocol = BackendProtocol::Http2;
    let apis = vec![
        api(
            "secure",
            None,
            "/secure",
            &format!("https://localhost:{}/", tls_backend.port()),
        ),
        h2c,
    ];
    let mut gw_settings = settings(apis.clone(), Limits::default());
    gw_settings.backend_ca_pem = vec![pki.ca_pem.clone()];
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        gw_settings,
        None,
    )
    .await;
    let client = client(&pki, false);
    let base = format!("https://localhost:{}", gw.tls.port());

    let (parts, body) = get(&client, &format!("{base}/secure/a")).await;
    assert_eq!(parts.status, StatusCode::OK, "{body}");
    // Over HTTP/2 the backend sees the absolute URI.
    let line = body.lines().next().unwrap();
    assert!(line.starts_with("GET ") && line.ends_with("/a"), "{body}");
    // ALPN picked HTTP/2 towards the TLS backend.
    assert_eq!(parts.headers["x-backend-version"], "HTTP/2.0");

    let (parts, body) = get(&client, &format!("{base}/h2c/b")).await;
    assert_eq!(parts.status, StatusCode::OK, "{body}");
    assert_eq!(parts.headers["x-backend-version"], "HTTP/2.0");

    // A backend certificate from an untrusted CA is a 502, not a connection.
    let untrusted = start_gateway_with(
        tls_settings(pki.leaf("localhost2", &["localhost"]), Vec::new()),
        settings(apis, Limits::default()),
        None,
    )
    .await;
    let url = format!("https://localhost:{}/secure/a", untrusted.tls.port());
    let (parts, body) = get(&client, &url).await;
    assert_apim_error(&parts, &body, 502, "Bad gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let s = setup(limits).await;
    let first = TcpStream::connect(s.gateway.plain).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = TcpStream::connect(s.gateway.plain).await.unwrap();
    second
        .write_all(b"GET /echo/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(early.is_err(), "served over the connection limit");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(3), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_bounded_by_the_drain_timeout() {
    let limits = Limits {
        drain_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let s = setup(limits).await;
    let client = client(&s.pki, false);
    let url = format!(
        "https://localhost:{}/echo/slow?ms=5000",
        s.gateway.tls.port()
    );
    let in_flight = tokio::spawn(async move {
        client
            .request(Request::get(url).body(Empty::<Bytes>::new()).unwrap())
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let Setup { gateway, .. } = s;
    gateway.shutdown.cancel();
    let mut gateway = gateway;
    (&mut gateway.task).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The request cut off at the end of the drain fails rather than hanging.
    let result = tokio::time::timeout(Duration::from_secs(2), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_err(), "{result:?}");
}

/// A backend that counts the connections it accepts and the requests it serves, and
/// echoes each request's line, headers and body.
async fn start_counting_backend() -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (accepted, served) = (Arc::clone(&connections), Arc::clone(&requests));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let served = Arc::clone(&served);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        served.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let mut echo = format!("{} {}\n", request.method(), request.uri());
                            for (name, value) in request.headers() {
                                echo.push_str(&format!(
                                    "{name}: {}\n",
                                    value.to_str().unwrap_or("?")
                                ));
                            }
                            let body = request.into_body().collect().await?.to_bytes();
                            echo.push_str(&String::from_utf8_lossy(&body));
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(echo))))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, connections, requests)
}

/// Raw bytes over TLS (HTTP/1.1 by ALPN); what came back until the gateway closed.
async fn raw_tls_exchange(pki: &Pki, addr: std::net::SocketAddr, request: &[u8]) -> String {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(&[b"http/1.1"])));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request).await.unwrap();
    tls.flush().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_other_than_chunked_gets_501_and_reaches_no_backend() {
    use std::sync::atomic::Ordering;
    let pki = Pki::new();
    let (backend, connections, requests) = start_counting_backend().await;
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        settings(
            vec![api("echo", None, "/echo", &format!("http://{backend}/"))],
            Limits::default(),
        ),
        None,
    )
    .await;
    let message = "Transfer-Encoding other than chunked is not supported.";
    let refused = |encoding: &str| {
        format!(
            "POST /echo/x HTTP/1.1\r\nHost: localhost\r\n{encoding}\r\n\
             5\r\nhello\r\n0\r\n\r\n\
             GET /echo/after HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
    };
    for encoding in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: GZIP , Chunked\r\n",
        // Two lines: one field, `gzip, chunked`.
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let answer = raw_tls_exchange(&pki, gw.tls, refused(encoding).as_bytes()).await;
        // The JSON 501 alone, with `connection: close`; the pipelined request after it
        // is not answered.
        assert_raw_error(&answer, 501, message);
        assert!(!answer.contains("after"), "{answer}");
    }
    // On the plain listener too.
    let answer = raw_exchange(
        gw.plain,
        refused("Transfer-Encoding: gzip, chunked\r\n").as_bytes(),
    )
    .await;
    assert_raw_error(&answer, 501, message);
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    assert_eq!(requests.load(Ordering::SeqCst), 0);
    assert_eq!(
        rampart::gateway::GatewayStats::get(&gw.stats.malformed_requests),
        5
    );
    assert!(
        gw.stats.rejections().contains(&("NotImplemented", 5)),
        "{:?}",
        gw.stats.rejections()
    );

    // `chunked` alone, in any case, is forwarded with its body.
    for encoding in ["chunked", "CHUNKED", "\tchunked "] {
        let answer = raw_tls_exchange(
            &pki,
            gw.tls,
            format!(
                "POST /echo/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:{encoding}\r\n\
                 Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 200 "),
            "{encoding:?}: {answer}"
        );
        assert!(answer.contains("\r\n\r\nPOST /x\n"), "{answer}");
        assert!(answer.ends_with("\nhello"), "{answer}");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    assert_eq!(
        rampart::gateway::GatewayStats::get(&gw.stats.malformed_requests),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_key_is_not_forwarded_by_apis_that_check_none() {
    let pki = Pki::new();
    let backend = start_backend().await;
    let to_backend = format!("http://{backend}/");
    let config = rampart::config::parse(
        "[filter]\ninterfaces = [\"eth0\"]\n\
         [[api]]\nname = \"open\"\npath_prefix = \"/open\"\nbackend = \"http://b\"\n\
         subscription = \"none\"\n\
         [[api]]\nname = \"forwarding\"\npath_prefix = \"/forwarding\"\nbackend = \"http://b\"\n\
         subscription = \"none\"\nforward_subscription_key = true\n\
         [[api]]\nname = \"custom\"\npath_prefix = \"/custom\"\nbackend = \"http://b\"\n\
         subscription = \"none\"\nsubscription_key_header = \"X-Api-Key\"\n\
         subscription_key_query = \"apikey\"\n\
         [[api]]\nname = \"optional\"\npath_prefix = \"/optional\"\nbackend = \"http://b\"\n\
         subscription = \"optional\"\n",
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    // A key that opens every API: what a client sends on every call to the host.
    let mut keys = rampart::policy::keys::KeyStore::in_memory();
    let (_, issued) = keys
        .create("client", rampart::policy::keys::Scope::AllApis)
        .unwrap();
    let key = issued.primary.expose().to_owned();
    let quotas =
        rampart::policy::quota::QuotaCounters::in_memory(1000, rampart::policy::quota::SystemClock);
    let policies =
        rampart::pipeline::ApiPolicies::new(&config.apis, &config.products, &[], keys, quotas)
            .unwrap();
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        settings(
            ["open", "forwarding", "custom", "optional"]
                .into_iter()
                .map(|name| api(name, None, &format!("/{name}"), &to_backend))
                .collect(),
            Limits::default(),
        ),
        Some(Arc::new(policies)),
    )
    .await;
    let h1 = client(&pki, false);
    let h2 = client(&pki, true);
    // What the echo backend got for `target`, sent with `header: key` and over HTTP/1.1
    // and HTTP/2: its request line and headers.
    let echoed = async |target: &str, header: &str| {
        let mut seen = Vec::new();
        for client in [&h1, &h2] {
            let request = Request::get(format!("https://localhost:{}{target}", gw.tls.port()))
                .header(header, key.as_str())
                .body(Empty::<Bytes>::new())
                .unwrap();
            let (parts, body) = send(client, request).await;
            assert_eq!(parts.status, StatusCode::OK, "{target}: {body}");
            seen.push(body);
        }
        seen
    };

    for body in echoed(
        &format!("/open/x?a=1&subscription-key={key}&b=%20two&subscription%2Dkey={key}&c=3"),
        "Ocp-Apim-Subscription-Key",
    )
    .await
    {
        assert!(body.starts_with("GET /x?a=1&b=%20two&c=3\n"), "{body}");
        assert!(!body.contains(&key), "{body}");
        assert!(
            !body.to_ascii_lowercase().contains("subscription-key"),
            "{body}"
        );
    }
    // The key in the query alone.
    for body in echoed(&format!("/open/x?subscription-key={key}"), "x-other").await {
        assert!(body.starts_with("GET /x\n"), "{body}");
    }
    // The API's own names, and the default ones, which it does not read but removes.
    for body in echoed(
        &format!("/custom/x?apikey={key}&subscription-key={key}&c=kept"),
        "X-Api-Key",
    )
    .await
    {
        assert!(body.starts_with("GET /x?c=kept\n"), "{body}");
        assert!(!body.contains(&key), "{body}");
    }
    for body in echoed("/custom/x", "Ocp-Apim-Subscription-Key").await {
        assert!(!body.contains(&key), "{body}");
    }
    // An optional API removes the key it checked.
    for body in echoed(
        &format!("/optional/x?a=1&subscription-key={key}"),
        "Ocp-Apim-Subscription-Key",
    )
    .await
    {
        assert!(body.starts_with("GET /x?a=1\n"), "{body}");
        assert!(!body.contains(&key), "{body}");
    }
    // forward_subscription_key = true: both reach the backend.
    for body in echoed(
        &format!("/forwarding/x?a=1&subscription-key={key}"),
        "Ocp-Apim-Subscription-Key",
    )
    .await
    {
        assert!(
            body.starts_with(&format!("GET /x?a=1&subscription-key={key}\n")),
            "{body}"
        );
        assert!(
            body.contains(&format!("ocp-apim-subscription-key: {key}\n")),
            "{body}"
        );
    }
    // Without a key, the request passes as it came.
    for client in [&h1, &h2] {
        let (parts, body) = get(
            client,
            &format!("https://localhost:{}/open/x?a=1&b=%20", gw.tls.port()),
        )
        .await;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(body.starts_with("GET /x?a=1&b=%20\n"), "{body}");
    }
}

/// The raw backend's answers in the tests of invalid backend answers: a plain 200
/// to `GET /good`, and on `/bad` an answer with both `Content-Length` and
/// `Transfer-Encoding` (the length is stale: the chunked body is 5 bytes).
fn length_and_chunked_on_bad(request_line: &str, _: usize) -> &'static [u8] {
    if request_line.starts_with("GET /bad ") {
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    }
}

/// As above, with a 101 Switching Protocols (which nobody asked for) on `/bad`.
fn switching_protocols_on_bad(request_line: &str, _: usize) -> &'static [u8] {
    if request_line.starts_with("GET /bad ") {
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    }
}

/// As above, with a status outside 100-599 (hunt9 L9: relayed, and counted as 5xx).
fn status_out_of_range_on_bad(request_line: &str, _: usize) -> &'static [u8] {
    if request_line.starts_with("GET /bad ") {
        b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    }
}

/// A gateway whose one API (at `/`) proxies over plain HTTP/1.1 to a raw backend
/// answering with `answer`.
async fn gateway_to_raw_backend(
    answer: fn(&str, usize) -> &'static [u8],
) -> (Pki, RawBackend, Running) {
    let pki = Pki::new();
    let backend = RawBackend::start(None, answer).await;
    let apis = vec![api("raw", None, "/", &format!("http://{}/", backend.addr))];
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        settings(apis, Limits::default()),
        None,
    )
    .await;
    (pki, backend, gw)
}

/// A backend that answers `/bad` with something no client may be given, over
/// plain HTTP/1.1 (the gateway's own pool) and over TLS (hyper-util's client):
/// HTTP/1.1 and HTTP/2 clients get the gateway's 502, a following request on a
/// fresh connection is answered, and the backend connection that carried the bad
/// answer is not used again.
async fn assert_invalid_backend_answer_gets_502(answer: fn(&str, usize) -> &'static [u8]) {
    let pki = Pki::new();
    let plain = RawBackend::start(None, answer).await;
    let tls = RawBackend::start(Some(&pki), answer).await;
    let apis = vec![
        api("plain", None, "/plain", &format!("http://{}/", plain.addr)),
        api(
            "tls",
            None,
            "/tls",
            &format!("https://localhost:{}/", tls.addr.port()),
        ),
    ];
    let mut gw_settings = settings(apis, Limits::default());
    gw_settings.backend_ca_pem = vec![pki.ca_pem.clone()];
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        gw_settings,
        None,
    )
    .await;
    let base = format!("https://localhost:{}", gw.tls.port());
    // Each on a connection of its own.
    let get_fresh = |h2: bool, url: String| {
        let client = client(&pki, h2);
        async move {
            tokio::time::timeout(Duration::from_secs(10), get(&client, &url))
                .await
                .expect("no answer within 10 s")
        }
    };
    for (prefix, backend) in [("/plain", &plain), ("/tls", &tls)] {
        for h2 in [false, true] {
            let (parts, body) = get_fresh(h2, format!("{base}{prefix}/bad")).await;
            assert_apim_error(&parts, &body, 502, "Bad gateway");
            let (parts, body) = get_fresh(h2, format!("{base}{prefix}/good")).await;
            assert_eq!(parts.status, StatusCode::OK, "{prefix} h2={h2}: {body}");
            assert_eq!(body, "ok");
        }
        let requests = backend.requests();
        assert_eq!(requests.len(), 4, "{requests:?}");
        for (i, (connection, line)) in requests.iter().enumerate() {
            if line.starts_with("GET /bad ") {
                assert!(
                    requests[i + 1..].iter().all(|(c, _)| c != connection),
                    "{prefix}: a connection was used after a refused answer: {requests:?}"
                );
            }
        }
    }
    assert_eq!(
        gw.stats.rejections(),
        [("BackendConnectionFailure", 4)],
        "rejection counters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_answer_with_content_length_and_transfer_encoding_gets_502() {
    assert_invalid_backend_answer_gets_502(length_and_chunked_on_bad).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_101_switching_protocols_gets_502() {
    assert_invalid_backend_answer_gets_502(switching_protocols_on_bad).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_status_out_of_range_gets_502() {
    assert_invalid_backend_answer_gets_502(status_out_of_range_on_bad).await;
}

/// A response head of `fields` header fields of 8 KiB each, with a body of `ok`.
fn large_head(fields: usize) -> Vec<u8> {
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
    for i in 0..fields {
        head.extend_from_slice(format!("X-Big-{i}: {}\r\n", "a".repeat(8 * 1024)).as_bytes());
    }
    head.extend_from_slice(b"\r\nok");
    head
}

/// As above, with a head of 160 KiB (20 fields of 8 KiB) on `/bad`: over the
/// gateway's 64 KiB for a response head; before, it was relayed whole to HTTP/1.1
/// clients and broke the stream of HTTP/2 clients under a 200.
fn large_head_on_bad(request_line: &str, _: usize) -> &'static [u8] {
    static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    if request_line.starts_with("GET /bad ") {
        HEAD.get_or_init(|| large_head(20))
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_response_head_over_64_kib_gets_502() {
    assert_invalid_backend_answer_gets_502(large_head_on_bad).await;
}

/// A response head of 40 KiB (5 fields of 8 KiB) is within the limit and relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_response_head_under_64_kib_is_relayed() {
    fn answer(_: &str, _: usize) -> &'static [u8] {
        static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        HEAD.get_or_init(|| large_head(5))
    }
    let (pki, _backend, gw) = gateway_to_raw_backend(answer).await;
    // Over HTTP/1.1: the test's HTTP/2 client takes no more than 16 KiB of header
    // fields (hyper's default), a limit of its own.
    let (parts, body) = get(
        &client(&pki, false),
        &format!("https://localhost:{}/x", gw.tls.port()),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK, "{body}");
    assert_eq!(parts.headers["x-big-4"].len(), 8 * 1024);
    assert_eq!(body, "ok");
}

/// The raw backend's answer to a request that is the first on its connection; the
/// next one on it closes the connection unanswered: a backend whose keep-alive
/// timeout runs out just as the gateway reuses the connection.
fn first_on_its_connection(_: &str, served_before: usize) -> &'static [u8] {
    if served_before == 0 {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    } else {
        b""
    }
}

/// A GET on a reused backend connection that the backend closes unanswered is sent
/// again, once, on a new connection, and answered: before, the client got 502. A
/// POST with a body in the same place keeps its 502 and reaches the backend once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_backend_connection_closed_under_it_is_sent_again_a_post_is_not() {
    let (pki, backend, gw) = gateway_to_raw_backend(first_on_its_connection).await;
    let base = format!("https://localhost:{}", gw.tls.port());
    let h1 = client(&pki, false);
    for path in ["/first", "/again"] {
        let (parts, body) = get(&h1, &format!("{base}{path}")).await;
        assert_eq!(parts.status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body, "ok");
        // Idle long enough for a backend's keep-alive timeout (a connection used
        // within the last second is not sent on again).
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let line = |connection: usize, line: &str| (connection, line.to_owned());
    assert_eq!(
        backend.requests(),
        [
            line(0, "GET /first HTTP/1.1"),
            line(0, "GET /again HTTP/1.1"),
            line(1, "GET /again HTTP/1.1"),
        ]
    );

    let post = Request::post(format!("{base}/post"))
        .body(http_body_util::Full::new(Bytes::from_static(b"once")))
        .unwrap();
    let (parts, body) = send(&client(&pki, false), post).await;
    assert_apim_error(&parts, &body, 502, "Bad gateway");
    assert_eq!(
        backend.requests().last(),
        Some(&line(1, "POST /post HTTP/1.1")),
        "the POST went out once, on the connection the GET left in the pool"
    );
    assert_eq!(backend.requests().len(), 4, "{:?}", backend.requests());

    let retries: u64 = (gw.stats.http.snapshot().iter())
        .map(|api| api.backend_retries)
        .sum();
    assert_eq!(retries, 1, "rampart_backend_retries_total");
    assert_eq!(
        gw.stats.rejections(),
        [("BackendConnectionFailure", 1)],
        "rejection counters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_fields_reach_an_http1_backend_as_one_cookie_line() {
    let pki = Pki::new();
    let backend = start_backend().await;
    let mut h2c = api("h2c", None, "/h2c", &format!("http://{backend}/"));
    h2c.backend_protocol = BackendProtocol::Http2;
    let apis = vec![
        api("echo", None, "/echo", &format!("http://{backend}/")),
        h2c,
    ];
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        settings(apis, Limits::default()),
        None,
    )
    .await;
    let base = format!("https://localhost:{}", gw.tls.port());
    let with_two_cookies = |path: &str| {
        Request::get(format!("{base}{path}"))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let cookie_lines = |body: &str| -> Vec<String> {
        body.lines()
            .filter(|line| line.starts_with("cookie:"))
            .map(str::to_owned)
            .collect()
    };
    // An HTTP/2 client sends each cookie as its own field (as browsers do); an
    // HTTP/1.1 client's two Cookie lines are joined the same way.
    for h2 in [true, false] {
        let (parts, body) = send(&client(&pki, h2), with_two_cookies("/echo/c")).await;
        assert_eq!(parts.status, StatusCode::OK, "{body}");
        assert_eq!(parts.headers["x-backend-version"], "HTTP/1.1");
        assert_eq!(cookie_lines(&body), ["cookie: a=1; b=2"], "h2={h2}: {body}");
    }
    // To an HTTP/2 backend they stay separate fields, as HTTP/2 allows.
    let (parts, body) = send(&client(&pki, true), with_two_cookies("/h2c/c")).await;
    assert_eq!(parts.headers["x-backend-version"], "HTTP/2.0");
    assert_eq!(
        cookie_lines(&body),
        ["cookie: a=1", "cookie: b=2"],
        "{body}"
    );
}

/// A TLS 1.3 client resumes its session however many other clients shook hands in
/// between (tickets, not a small server-side cache that strangers evict).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_after_hundreds_of_other_handshakes() {
    let s = setup(Limits::default()).await;
    let port = s.gateway.tls.port();
    let handshake = |config: Arc<rustls::ClientConfig>| async move {
        let connector = tokio_rustls::TlsConnector::from(config);
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        // Read what the server sent after the handshake (its tickets).
        use tokio::io::AsyncWriteExt as _;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        use tokio::io::AsyncReadExt as _;
        let _ = tls.read_to_end(&mut answer).await;
        tls.get_ref().1.handshake_kind()
    };
    let ours = Arc::new(s.pki.client_config(&[]));
    assert_eq!(
        handshake(Arc::clone(&ours)).await,
        Some(rustls::HandshakeKind::Full)
    );
    // 300 clients of their own (each its own session store).
    for _ in 0..300 {
        handshake(Arc::new(s.pki.client_config(&[]))).await;
    }
    assert_eq!(
        handshake(ours).await,
        Some(rustls::HandshakeKind::Resumed),
        "the first client's session did not resume"
    );
}

/// Over HTTP/2 a field value with leading or trailing whitespace makes the request
/// malformed (RFC 9113 §8.2.1; HTTP/1 parsing trims it): 400, and the backend never
/// sees a value that others would read trimmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_header_value_with_edge_whitespace_is_refused() {
    let pki = Pki::new();
    let backend = start_backend().await;
    let apis = vec![api("echo", None, "/echo", &format!("http://{backend}/"))];
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        settings(apis, Limits::default()),
        None,
    )
    .await;
    let base = format!("https://localhost:{}", gw.tls.port());
    for value in [" admin", "admin\t", "admin "] {
        let request = Request::get(format!("{base}/echo/w"))
            .header("x-role", HeaderValue::from_str(value).unwrap())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (parts, body) = send(&client(&pki, true), request).await;
        assert_eq!(parts.status, StatusCode::BAD_REQUEST, "{value:?}: {body}");
        assert_eq!(parts.headers["content-type"], "application/json");
        assert_eq!(
            body,
            r#"{ "statusCode": 400, "message": "Bad request: a header value starts or ends with whitespace" }"#
        );
    }
    // A value with inner whitespace passes, and so does the same padded value over
    // HTTP/1.1, where it is optional whitespace the parser trims.
    for (h2, value) in [(true, "a b"), (false, " admin ")] {
        let request = Request::get(format!("{base}/echo/w"))
            .header("x-role", HeaderValue::from_str(value).unwrap())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (parts, body) = send(&client(&pki, h2), request).await;
        assert_eq!(parts.status, StatusCode::OK, "{value:?}: {body}");
        assert!(
            body.lines()
                .any(|line| line == format!("x-role: {}", value.trim())),
            "{body}"
        );
    }
}

/// The gateway's own answers to a HEAD carry no content (RFC 9110 §9.3.2), over
/// HTTP/2 too, where hyper would send the JSON body as DATA and the client would see
/// a protocol error instead of the status; the `Content-Length` stays what a GET's
/// answer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_refused_by_the_gateway_gets_its_status_without_content() {
    let s = setup(Limits::default()).await;
    let base = format!("https://localhost:{}", s.gateway.tls.port());
    for h2 in [true, false] {
        let client = client::<Empty<Bytes>>(&s.pki, h2);
        let request = Request::head(format!("{base}/nope"))
            .body(Empty::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        assert_eq!(parts.status, StatusCode::NOT_FOUND, "h2={h2}");
        assert_eq!(parts.headers["content-type"], "application/json");
        assert_eq!(
            parts.headers["content-length"],
            r#"{ "statusCode": 404, "message": "Resource not found" }"#
                .len()
                .to_string()
        );
        assert!(body.is_empty(), "h2={h2}: {body:?}");
    }
    // A HEAD the backend answers is forwarded as before.
    let client = client::<Empty<Bytes>>(&s.pki, true);
    let request = Request::head(format!("{base}/echo/x"))
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
