//! The real `rampartd` binary serving the gateway from its configuration: a TLS
//! listener on loopback, one API that requires a subscription key, a key created
//! in the state directory before start.
//!
//! The file has no `[filter]`, so rampartd runs the gateway alone and the test
//! needs no privileges.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use std::time::Duration;

use gateway_support::*;
use http::Request;
use http_body_util::Empty;
use rampart::policy::keys::{IssuedKeys, KeyStore, Scope};

/// rampartd serving `apis` (TOML `[[api]]` tables, given the backend's address)
/// on a TLS listener, with a subscription named `subscription` for all APIs.
struct Served {
    _dir: TempDir,
    keys: IssuedKeys,
    pki: Pki,
    port: u16,
    daemon: Rampartd,
}

impl Served {
    /// A raw TLS connection to the listener, speaking HTTP/1.1 (ALPN).
    async fn connect_http1(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let tls = self.pki.client_config(&[b"http/1.1"]);
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap()
    }
}

async fn serve(
    tag: &str,
    subscription: &str,
    apis: impl Fn(std::net::SocketAddr) -> String,
) -> Served {
    let dir = TempDir::new(tag);
    let state_dir = dir.0.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let (_, keys) = KeyStore::open(&state_dir)
        .unwrap()
        .create(subscription, Scope::AllApis)
        .unwrap();

    let pki = Pki::new();
    let cert = pki.leaf("gw", &["localhost"]);
    let backend = start_backend().await;
    let port = free_port();
    let config = dir.0.join("rampart.toml");
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n{apis}",
        state = state_dir.display().to_string(),
        runtime = dir.0.join("run").display().to_string(),
        cert = cert.cert_chain_pem.display().to_string(),
        key = cert.key_pem.display().to_string(),
        apis = apis(backend),
    );
    let log = dir.0.join("rampartd.log");
    let daemon = Rampartd::start(&config, &text, log, port).await;
    Served {
        _dir: dir,
        keys,
        pki,
        port,
        daemon,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rampartd_serves_an_api_with_subscription_keys() {
    let mut s = serve("rampartd", "e2e", |backend| {
        format!(
            "[[api]]\nname = \"echo\"\npath_prefix = \"/echo\"\nbackend = \"http://{backend}/\"\n"
        )
    })
    .await;

    let client = client(&s.pki, false);
    let url = format!("https://localhost:{}/echo/x", s.port);

    let (parts, body) = get(&client, &url).await;
    assert_apim_error(
        &parts,
        &body,
        401,
        "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API.",
    );
    let refused_bytes = body.len();
    assert!(
        parts.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("AzureApiManagementKey realm=\"https://localhost"),
        "{parts:?}"
    );

    let request = Request::get(&url)
        .header("Ocp-Apim-Subscription-Key", s.keys.primary.expose())
        .body(Empty::new())
        .unwrap();
    let (parts, body) = send(&client, request).await;
    assert_eq!(parts.status, 200, "{body}");
    assert!(body.starts_with("GET /x"), "{body}");
    let passed_bytes = body.len();
    assert!(
        !body
            .to_ascii_lowercase()
            .contains("ocp-apim-subscription-key"),
        "{body}"
    );
    assert!(!body.contains(s.keys.primary.expose()), "{body}");

    let (parts, body) = get(
        &client,
        &format!("{url}?a=1&subscription-key={}", s.keys.secondary.expose()),
    )
    .await;
    assert_eq!(parts.status, 200, "{body}");
    assert!(body.starts_with("GET /x?a=1\n"), "{body}");

    // One access event per request, naming the API, the subscription and, for a
    // refusal, APIM's reason; never the key.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = s.daemon.log();
    assert!(log.contains("gateway listening"), "{log}");
    // The configuration and the TLS key are written 0600, as an operator keeps
    // them: no warning that others can read them (every test's log had two).
    assert!(!log.contains("is not private"), "{log}");
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rampart::access"))
        .collect();
    assert_eq!(access.len(), 3, "{log}");
    assert!(
        access[0].contains("status=401")
            && access[0].contains("reason=\"SubscriptionKeyNotFound\""),
        "{log}"
    );
    assert!(
        access[1].contains("status=200") && access[1].contains("subscription=\"e2e\""),
        "{log}"
    );
    // The body bytes sent, the gateway's own answer's and the backend's.
    assert!(
        access[0].contains(&format!(" bytes_sent={refused_bytes} ")),
        "{refused_bytes}: {log}"
    );
    assert!(
        access[1].contains(&format!(" bytes_sent={passed_bytes} ")),
        "{passed_bytes}: {log}"
    );
    assert!(access[1].contains("api=\"echo\""), "{log}");
    assert!(!log.contains(s.keys.primary.expose()), "{log}");
    assert!(!log.contains(s.keys.secondary.expose()), "{log}");

    // No connection left open: the gateway stops as soon as it drains.
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = s.daemon.terminate().await;
    let log = s.daemon.log();
    assert!(status.success(), "{status}:\n{log}");
    // The stop in the order it happens: draining, then stopped (with no
    // connection open, "stopped" came first), then the daemon's last line.
    let at = |line: &str| {
        log.find(line)
            .unwrap_or_else(|| panic!("no {line:?} in the log:\n{log}"))
    };
    assert!(
        at("gateway draining") < at("gateway stopped")
            && at("gateway stopped") < at("rampartd stopping"),
        "{log}"
    );
}

/// Two APIs of one backend application, a public one without keys and an admin one
/// with: no spelling of an admin path under the public prefix escapes the admin
/// API's key check, and the backend is asked for the path the key was checked for.
#[tokio::test(flavor = "multi_thread")]
async fn public_prefix_does_not_reach_the_admin_api_around_its_key_check() {
    let mut s = serve("rampartd-paths", "ops", |backend| {
        format!(
            "[[api]]\nname = \"public\"\npath_prefix = \"/public\"\nbackend = \"http://{backend}/public\"\nsubscription = \"none\"\n\
             [[api]]\nname = \"admin\"\npath_prefix = \"/admin\"\nbackend = \"http://{backend}/admin\"\n"
        )
    })
    .await;
    let base = format!("https://localhost:{}", s.port);

    for client in [client(&s.pki, false), client(&s.pki, true)] {
        let (parts, body) = get(&client, &format!("{base}/public/docs")).await;
        assert_eq!(parts.status, 200, "{body}");
        assert!(body.starts_with("GET /public/docs\n"), "{body}");
        for path in [
            "/public/../admin/users",
            "/public/%2e%2e/admin/users",
            "/public/.%2E/admin/users",
            "//admin/users",
            "/%61dmin/users",
            "/public/docs/../../admin/users",
        ] {
            let (parts, body) = get(&client, &format!("{base}{path}")).await;
            assert_eq!(parts.status, 401, "{path}: {body}");
            let request = Request::get(format!("{base}{path}"))
                .header("Ocp-Apim-Subscription-Key", s.keys.primary.expose())
                .body(Empty::new())
                .unwrap();
            let (parts, body) = send(&client, request).await;
            assert_eq!(parts.status, 200, "{path}: {body}");
            assert!(body.starts_with("GET /admin/users\n"), "{path}: {body}");
        }
        // What a backend might read as a separator or as a dot segment (servlet
        // containers drop `;` parameters) is refused outright.
        for (path, message) in [
            (
                "/public/..%2Fadmin/users",
                "Bad request: the path contains an encoded slash or a backslash",
            ),
            (
                "/public/..;/admin/users",
                "Bad request: the path contains a dot segment with parameters",
            ),
            (
                "/admin;x/users",
                "Bad request: the path has parameters (;) in the segments that name the API",
            ),
        ] {
            let (parts, body) = get(&client, &format!("{base}{path}")).await;
            assert_apim_error(&parts, &body, 400, message);
        }
    }

    let status = s.daemon.terminate().await;
    assert!(status.success(), "{status}:\n{}", s.daemon.log());
}

/// `[gateway] lingering_timeout_secs` takes effect: by default a client still
/// uploading past `max_body_bytes` sends its whole body and then reads the 413 over
/// TLS; with lingering off (0) rampartd closes at once and the client's writes meet
/// a reset.
#[tokio::test(flavor = "multi_thread")]
async fn refused_upload_lingers_as_configured() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (setting, lingers) in [("", true), ("lingering_timeout_secs = 0\n", false)] {
        let mut s = serve("rampartd-linger", "uploader", |backend| {
            format!(
                "[gateway]\nmax_body_bytes = 1024\n{setting}\
                 [[api]]\nname = \"up\"\npath_prefix = \"/\"\nbackend = \"http://{backend}/\"\nsubscription = \"none\"\n"
            )
        })
        .await;
        let mut stream = s.connect_http1().await;
        let refused = upload(&mut stream, "/upload", 32 * 1024 * 1024).await;
        if lingers {
            assert!(refused.is_none(), "{refused:?}");
            stream.shutdown().await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
            assert!(answer.contains("connection: close"), "{answer}");
            assert!(
                answer.ends_with(r#"{ "statusCode": 413, "message": "Request entity too large" }"#),
                "{answer}"
            );
        } else {
            assert_reset(&refused.expect("a reset while the client still sends"));
        }
        assert!(s.daemon.terminate().await.success());
    }
}

/// A lingering connection does not hold up a stop: rampartd exits on SIGTERM while
/// a client that was answered 413 keeps its connection open and silent, far sooner
/// than the lingering would end.
#[tokio::test(flavor = "multi_thread")]
async fn stopping_does_not_wait_for_lingering_connections() {
    use tokio::io::AsyncReadExt;
    let mut s = serve("rampartd-linger-stop", "uploader", |backend| {
        format!(
            "[gateway]\nmax_body_bytes = 1024\nlingering_timeout_secs = 120\nlingering_time_secs = 300\n\
             [[api]]\nname = \"up\"\npath_prefix = \"/\"\nbackend = \"http://{backend}/\"\nsubscription = \"none\"\n"
        )
    })
    .await;
    let stream = s.connect_http1().await;
    // 1 MB of a declared 32 MB: the client is still "uploading" when answered.
    let (mut reader, mut writer) = tokio::io::split(stream);
    let head = "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 33554432\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut writer, head.as_bytes())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut writer, &vec![b'x'; 1024 * 1024])
        .await
        .unwrap();
    // The answer, and the gateway's side shut: it lingers now.
    let mut answer = Vec::new();
    reader.read_to_end(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let start = std::time::Instant::now();
    assert!(s.daemon.terminate().await.success());
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Open until here.
    drop((reader, writer));
}

/// A backend that answers every request with a head announcing 100 bytes, sends
/// 3, and closes the connection.
async fn start_short_body_backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nabc",
                    )
                    .await;
                // Dropped: closed 97 bytes short.
            });
        }
    });
    addr
}

/// A backend that closes in the middle of its body: the client's connection is cut
/// (HTTP/1) or its stream reset (HTTP/2) after the 200 head, and the access event
/// says so (status 200 as sent, reason `BackendConnectionFailure`), with a warning;
/// a whole body is logged as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_body_cut_off_is_in_the_access_event() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("rampartd-body-cut");
    let pki = Pki::new();
    let cert = pki.leaf("gw", &["localhost"]);
    let short = start_short_body_backend().await;
    let whole = start_backend().await;
    let (port, admin) = (free_port(), free_port());
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\nlog_target = \"stderr\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\n\
         [gateway]\naccess_log = \"all\"\n\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n\n\
         [[api]]\nname = \"cut\"\npath_prefix = \"/cut\"\nbackend = \"http://{short}/\"\nsubscription = \"none\"\n\n\
         [[api]]\nname = \"whole\"\npath_prefix = \"/whole\"\nbackend = \"http://{whole}/\"\nsubscription = \"none\"\n",
        state = dir.0.join("state").display().to_string(),
        runtime = dir.0.join("run").display().to_string(),
        cert = cert.cert_chain_pem.display().to_string(),
        key = cert.key_pem.display().to_string(),
    );
    let daemon = Rampartd::start(
        &dir.0.join("rampart.toml"),
        &text,
        dir.0.join("rampartd.log"),
        port,
    )
    .await;
    let access = |path: &str| {
        daemon
            .log()
            .lines()
            .filter(|l| l.contains("rampart::access") && l.contains(&format!("path={path:?} ")))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };

    // HTTP/1.1: the head and the 3 bytes, then the connection ends, short.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(pki.client_config(&[b"http/1.1"])));
    let mut stream = tls
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    stream
        .write_all(b"GET /cut/h1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\nabc"), "{answer}");

    // HTTP/2: the head, then the stream is reset. When the reset comes before
    // the head has left (h2 drops a stream's frames not yet sent when it is
    // reset), the client sees only the reset.
    let h2 = client::<Empty<bytes::Bytes>>(&pki, true);
    let sent = h2
        .request(
            Request::get(format!("https://localhost:{port}/cut/h2"))
                .body(Empty::new())
                .unwrap(),
        )
        .await;
    match sent {
        Ok(response) => {
            assert_eq!(response.status(), 200);
            let body = http_body_util::BodyExt::collect(response.into_body()).await;
            assert!(body.is_err(), "a cut body arrived whole");
        }
        Err(error) => assert!(
            format!("{error:?}").contains("INTERNAL_ERROR"),
            "not the stream's reset: {error:?}"
        ),
    }

    // A whole body, as before.
    let (parts, _) = get(&h2, &format!("https://localhost:{port}/whole/x")).await;
    assert_eq!(parts.status, 200);

    daemon.wait_for_log("path=\"/whole/x\" ", 0).await;
    for path in ["/cut/h1", "/cut/h2"] {
        daemon.wait_for_log(&format!("path={path:?} "), 0).await;
        let events = access(path);
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(
            events[0].contains("status=200")
                && events[0].contains("reason=\"BackendConnectionFailure\""),
            "{}",
            events[0]
        );
    }
    let events = access("/whole/x");
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].contains("status=200") && events[0].contains("reason=\"-\""),
        "{}",
        events[0]
    );
    // Counted by API, status and reason (`/metrics`) and by reason (`rampart stats`).
    let mut metrics = tokio::net::TcpStream::connect(("127.0.0.1", admin))
        .await
        .unwrap();
    metrics
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut scraped = String::new();
    metrics.read_to_string(&mut scraped).await.unwrap();
    assert!(
        scraped.contains(
            "rampart_http_requests_total{api=\"cut\",status=\"200\",reason=\"BackendConnectionFailure\"} 2"
        ),
        "{scraped}"
    );
    assert!(
        scraped.contains("rampart_http_requests_total{api=\"whole\",status=\"200\",reason=\"\"} 1"),
        "{scraped}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("--socket")
        .arg(dir.0.join("run").join("control.sock"))
        .args(["--json", "stats"])
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        stats["rejections"],
        serde_json::json!([["BackendConnectionFailure", 2]]),
        "{stats}"
    );
    let log = daemon.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("WARN")
                && l.contains("backend response body cut off")
                && l.contains("api=\"cut\""))
            .count(),
        2,
        "{log}"
    );
}
