//! rampartd's lifecycle with the real binary: a restart under load with the
//! listening socket handed over (as systemd's `rampartd.socket` does) refuses no
//! connection and fails no request a client would not retry; the same restart
//! without hand-over does refuse connections; a panic in a request is answered
//! 500 and the daemon goes on; a SIGKILLed daemon restarted resumes with its
//! subscriptions and quota counters.
//!
//! No `[filter]` and loopback only: no privileges needed. Each daemon is killed
//! on drop, even when the test fails. The tests run one at a time (they measure).

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;
// Socket activation as systemd does it, shared with the rampart-tests crate.
#[path = "../../tests/src/activation.rs"]
mod activation;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_support::{TempDir, free_port, start_backend};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// The tests measure: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test's directory, backend and configuration file.
struct Setup {
    dir: TempDir,
    state_dir: PathBuf,
    config: PathBuf,
    port: u16,
    starts: u32,
}

impl Setup {
    /// Writes a configuration: one plain-HTTP listener on `port`, an API `echo`
    /// without keys and an API `metered` with keys and a quota, `extra` appended.
    async fn new(name: &str, port: u16, extra: &str) -> Self {
        let dir = TempDir::new(name);
        let state_dir = dir.0.join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let backend = start_backend().await;
        let config = dir.0.join("rampart.toml");
        let text = format!(
            "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\n\n\
             [gateway]\naccess_log = \"errors\"\ndrain_timeout_secs = 5\n\n\
             [[listener]]\naddress = \"127.0.0.1:{port}\"\nplain_http = true\n\n\
             [[api]]\nname = \"echo\"\npath_prefix = \"/echo\"\nbackend = \"http://{backend}/\"\n\
             subscription = \"none\"\n\n\
             [[api]]\nname = \"metered\"\npath_prefix = \"/metered\"\nbackend = \"http://{backend}/\"\n\
             quota = {{ calls = 5, period_secs = 3600 }}\n\n{extra}",
            state = state_dir.display().to_string(),
            runtime = dir.0.join("run").display().to_string(),
        )
        // The plain listener serves the APIs that name it.
        .replace(
            "[[api]]\n",
            &format!("[[api]]\nlisteners = [\"127.0.0.1:{port}\"]\n"),
        );
        gateway_support::write_private(&config, text);
        Self {
            dir,
            state_dir,
            config,
            port,
            starts: 0,
        }
    }

    /// Starts rampartd: binding its listener itself, or with `inherited` as fd 3
    /// and `LISTEN_FDS=1`, `LISTEN_PID` = its pid (what systemd does).
    fn spawn(&mut self, inherited: Option<&std::net::TcpListener>, env: &[(&str, &str)]) -> Daemon {
        let log = self.dir.0.join(format!("rampartd-{}.log", self.starts));
        self.starts += 1;
        let rampartd = env!("CARGO_BIN_EXE_rampartd");
        let mut cmd = match inherited {
            None => Command::new(rampartd),
            Some(socket) => activation::activated(socket, &[rampartd]),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(&log).unwrap());
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// A running rampartd; killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits (at most 40 s) for the exit status.
    async fn exited(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "rampartd did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits (at most 30 s) until `GET /echo/ready` on `addr` answers 200.
    async fn ready(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("rampartd exited with {status}:\n{}", self.log());
            }
            if let Ok(Ok((status, _))) =
                tokio::time::timeout(Duration::from_secs(5), get_once(addr, "/echo/ready", &[]))
                    .await
                && status == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rampartd not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Sender = http1::SendRequest<Empty<Bytes>>;

/// Why a connection could not be made.
enum ConnectError {
    Refused,
    Other(std::io::Error),
}

async fn connect(addr: SocketAddr) -> Result<Sender, ConnectError> {
    let stream = TcpStream::connect(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ConnectError::Refused
        } else {
            ConnectError::Other(e)
        }
    })?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Other(std::io::Error::other(e)))?;
    tokio::spawn(connection);
    Ok(sender)
}

fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Empty<Bytes>> {
    let mut request = Request::get(path).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Empty::new()).unwrap()
}

/// One request on a new connection: its status and body.
async fn get_once(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, String), String> {
    let mut sender = connect(addr).await.map_err(|e| match e {
        ConnectError::Refused => "refused".to_owned(),
        ConnectError::Other(e) => e.to_string(),
    })?;
    send(&mut sender, request(addr, path, headers))
        .await
        .map_err(|e| format!("{e:?}"))
}

/// A request on an open connection: its status and body. An error from
/// `send_request` comes before any response (the connection closed or failed):
/// what a client may retry for an idempotent request.
async fn send(
    sender: &mut Sender,
    request: Request<Empty<Bytes>>,
) -> Result<(StatusCode, String), hyper::Error> {
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// What the load saw.
#[derive(Default)]
struct Counts {
    /// Requests answered 200 (first try or after the one retry).
    served: AtomicU64,
    /// Connection attempts refused (nothing listening).
    refused: AtomicU64,
    /// Other connection failures (reset during the handshake...).
    connect_failed: AtomicU64,
    /// Requests that failed on their first try (no response on an open
    /// connection, or no connection at all).
    failed_raw: AtomicU64,
    /// Of those, requests that failed again when retried once: what a client
    /// that retries idempotent requests would see.
    failed_after_retry: AtomicU64,
    /// Answers other than 200 (never retried).
    not_ok: AtomicU64,
    /// The longest a request took (µs): the pause a client saw.
    max_latency_us: AtomicU64,
}

impl Counts {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn report(&self, what: &str, restart: Duration) -> String {
        format!(
            "{what}: served {} | refused connections {} | other connect failures {} | \
             requests failed {} raw, {} after one retry | non-200 {} | longest request {} ms | \
             SIGTERM to the new daemon ready {} ms",
            Self::get(&self.served),
            Self::get(&self.refused),
            Self::get(&self.connect_failed),
            Self::get(&self.failed_raw),
            Self::get(&self.failed_after_retry),
            Self::get(&self.not_ok),
            Self::get(&self.max_latency_us) / 1000,
            restart.as_millis(),
        )
    }
}

/// One client: GET requests until `stop`, on one keep-alive connection (made
/// again when it closes) or on a new connection each (`keep_alive` false). A
/// request that fails is retried once, on a new connection.
async fn client(addr: SocketAddr, keep_alive: bool, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut open: Option<Sender> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut outcome = None;
        for attempt in 0..2 {
            // A connection the server closed after its last answer
            // (`Connection: close` while draining) is not used again.
            if let Some(sender) = &mut open
                && sender.ready().await.is_err()
            {
                open = None;
            }
            let mut sender = match open.take() {
                Some(sender) => sender,
                None => match connect(addr).await {
                    Ok(sender) => sender,
                    Err(e) => {
                        match e {
                            ConnectError::Refused => Counts::bump(&counts.refused),
                            ConnectError::Other(_) => Counts::bump(&counts.connect_failed),
                        }
                        outcome = Some(Err(()));
                        if attempt == 0 {
                            Counts::bump(&counts.failed_raw);
                        }
                        continue;
                    }
                },
            };
            let sent = tokio::time::timeout(
                Duration::from_secs(20),
                send(&mut sender, request(addr, "/echo/load", &[])),
            )
            .await;
            match sent {
                Ok(Ok((status, _))) => {
                    outcome = Some(Ok(status));
                    if keep_alive {
                        open = Some(sender);
                    }
                    break;
                }
                Ok(Err(_)) | Err(_) => {
                    outcome = Some(Err(()));
                    if attempt == 0 {
                        Counts::bump(&counts.failed_raw);
                    }
                }
            }
        }
        match outcome {
            Some(Ok(StatusCode::OK)) => {
                Counts::bump(&counts.served);
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                counts.max_latency_us.fetch_max(us, Ordering::Relaxed);
            }
            Some(Ok(_)) => Counts::bump(&counts.not_ok),
            _ => {
                Counts::bump(&counts.failed_after_retry);
                // Nothing listens: do not spin.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Drives 4 keep-alive clients and 2 new-connection clients against rampartd,
/// restarts it once in the middle (SIGTERM, the next one started the moment the
/// first has exited, with the same socket when `handover`), and returns what
/// the clients saw and how long the restart took.
async fn restart_under_load(name: &str, handover: bool) -> (Arc<Counts>, Duration) {
    // With hand-over the test holds the listening socket, like systemd.
    let socket = handover.then(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let port = match &socket {
        Some(socket) => socket.local_addr().unwrap().port(),
        None => free_port(),
    };
    let mut setup = Setup::new(name, port, "").await;
    let addr = setup.addr();
    let mut first = setup.spawn(socket.as_ref(), &[]);
    first.ready(addr).await;

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let clients: Vec<_> = [true, true, true, true, false, false]
        .into_iter()
        .map(|keep_alive| {
            tokio::spawn(client(
                addr,
                keep_alive,
                Arc::clone(&stop),
                Arc::clone(&counts),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let served_before = Counts::get(&counts.served);
    assert!(served_before > 0, "no request served before the restart");

    let restart = Instant::now();
    first.signal(libc::SIGTERM);
    let status = first.exited().await;
    assert!(status.success(), "{status}:\n{}", first.log());
    let mut second = setup.spawn(socket.as_ref(), &[]);
    second.ready(addr).await;
    let restart = restart.elapsed();
    let served_at_ready = Counts::get(&counts.served);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(
        Counts::get(&counts.served) > served_at_ready,
        "the new daemon served nothing:\n{}",
        second.log()
    );
    if handover {
        let log = second.log();
        assert!(
            log.contains("listener adopts the inherited socket"),
            "the new daemon did not adopt the socket:\n{log}"
        );
    }
    second.signal(libc::SIGTERM);
    let status = second.exited().await;
    assert!(status.success(), "{status}:\n{}", second.log());
    (counts, restart)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_socket_handed_over_refuses_no_connection() {
    let _serial = SERIAL.lock().await;
    let (counts, restart) = restart_under_load("handover", true).await;
    println!("{}", counts.report("with hand-over", restart));
    assert_eq!(Counts::get(&counts.refused), 0, "connections refused");
    assert_eq!(Counts::get(&counts.connect_failed), 0, "connections failed");
    assert_eq!(
        Counts::get(&counts.failed_after_retry),
        0,
        "requests failed even when retried once"
    );
    assert_eq!(Counts::get(&counts.not_ok), 0, "answers other than 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_hand_over_refuses_connections() {
    let _serial = SERIAL.lock().await;
    let (counts, restart) = restart_under_load("no-handover", false).await;
    println!("{}", counts.report("without hand-over", restart));
    // Between the old daemon's exit and the new one's bind nothing listens; the
    // new-connection clients try every few milliseconds, the gap is longer.
    assert!(
        Counts::get(&counts.refused) > 0,
        "no connection refused while no daemon listened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inherited_sockets_without_a_listener_are_closed() {
    let _serial = SERIAL.lock().await;
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stray = socket.local_addr().unwrap();
    let port = free_port();
    let mut setup = Setup::new("stray-socket", port, "").await;
    let addr = setup.addr();
    let mut daemon = setup.spawn(Some(&socket), &[]);
    daemon.ready(addr).await;
    let log = daemon.log();
    assert!(
        log.contains("inherited socket matches no [[listener]] address; closed")
            && log.contains(&stray.to_string()),
        "{log}"
    );
    daemon.signal(libc::SIGTERM);
    let status = daemon.exited().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_request_is_answered_500_and_the_daemon_goes_on() {
    let _serial = SERIAL.lock().await;
    let port = free_port();
    let mut setup = Setup::new("panic", port, "").await;
    let addr = setup.addr();
    let mut daemon = setup.spawn(None, &[("RAMPARTD_FAULT_INJECTION", "panic-on-header")]);
    daemon.ready(addr).await;
    let fault = [("x-rampart-fault", "panic")];

    // HTTP/1.1: before, the panicking request, after, all on one connection.
    let mut sender = connect(addr).await.ok().unwrap();
    let (status, _) = send(&mut sender, request(addr, "/echo/before", &[]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    sender.ready().await.unwrap();
    let (status, body) = send(&mut sender, request(addr, "/echo/boom", &fault))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["statusCode"], 500, "{body}");
    assert_eq!(json["message"], "Internal server error", "{body}");
    sender.ready().await.unwrap();
    let (status, _) = send(&mut sender, request(addr, "/echo/after", &[]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "the connection went on");

    // HTTP/2 (h2c): the panicking stream is answered 500, the others on the same
    // connection are not disturbed.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let url = |path: &str| format!("http://{addr}{path}");
    let mut h2_other = h2.clone();
    let ok = h2.send_request(
        Request::get(url("/echo/h2-before"))
            .body(Empty::<Bytes>::new())
            .unwrap(),
    );
    let boom = h2_other.send_request(
        Request::get(url("/echo/h2-boom"))
            .header("x-rampart-fault", "panic")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    );
    let (ok, boom) = tokio::join!(ok, boom);
    assert_eq!(ok.unwrap().status(), StatusCode::OK);
    let boom = boom.unwrap();
    assert_eq!(boom.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = boom.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("Internal server error"),
        "{body:?}"
    );
    let after = h2
        .send_request(
            Request::get(url("/echo/h2-after"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::OK);

    // Alive, and the panics were logged with their message and location.
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "{}",
        daemon.log()
    );
    let (status, _) = get_once(addr, "/echo/still-there", &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let log = daemon.log();
    let panics: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("panic: fault injected"))
        .collect();
    assert_eq!(panics.len(), 2, "{log}");
    assert!(panics[0].contains("lifecycle/panics.rs"), "{log}");
    assert!(panics[0].contains("ERROR"), "{log}");

    daemon.signal(libc::SIGTERM);
    let status = daemon.exited().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_the_control_thread_stops_the_daemon_with_70() {
    let _serial = SERIAL.lock().await;
    let port = free_port();
    let mut setup = Setup::new("control-panic", port, "").await;
    let mut daemon = setup.spawn(
        None,
        &[("RAMPARTD_FAULT_INJECTION", "panic-control-thread")],
    );
    // Not half alive: it stops by itself, for systemd to restart it.
    let status = daemon.exited().await;
    let log = daemon.log();
    assert_eq!(status.code(), Some(70), "{log}");
    assert!(
        log.contains("panic: fault injected: control thread"),
        "{log}"
    );
    assert!(
        log.contains("the control thread ended unexpectedly"),
        "{log}"
    );
}

/// `rampart --json keys create NAME` against the daemon's control socket; the
/// primary key.
fn create_key(setup: &Setup, name: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("--socket")
        .arg(setup.dir.0.join("run/control.sock"))
        .args(["--json", "keys", "create", name])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    reply["primary"].as_str().unwrap().to_owned()
}

/// Status of `GET /metered/x` with `key`.
async fn metered(addr: SocketAddr, key: &str) -> StatusCode {
    get_once(addr, "/metered/x", &[("ocp-apim-subscription-key", key)])
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_daemon_restarted_resumes_its_subscriptions_and_quotas() {
    let _serial = SERIAL.lock().await;
    // Quota windows are aligned to whole hours: keep the test within one.
    let into_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 3600;
    if into_hour > 3600 - 30 {
        tokio::time::sleep(Duration::from_secs(3600 - into_hour + 1)).await;
    }
    let port = free_port();
    let mut setup = Setup::new("sigkill", port, "").await;
    let addr = setup.addr();
    let mut daemon = setup.spawn(None, &[]);
    daemon.ready(addr).await;

    // A subscription made at run time, and 3 of its 5 calls used.
    let key = create_key(&setup, "crash");
    for i in 0..3 {
        assert_eq!(metered(addr, &key).await, StatusCode::OK, "call {i}");
    }
    // Quota counters are written within a second of a change.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.signal(libc::SIGKILL);
    let status = daemon.exited().await;
    assert!(!status.success(), "{status}");
    assert!(setup.state_dir.join("quota.journal").exists());
    drop(daemon);

    let mut daemon = setup.spawn(None, &[]);
    daemon.ready(addr).await;
    for i in 3..5 {
        assert_eq!(
            metered(addr, &key).await,
            StatusCode::OK,
            "call {i} after the restart:\n{}",
            daemon.log()
        );
    }
    assert_eq!(
        metered(addr, &key).await,
        StatusCode::FORBIDDEN,
        "the 6th call is over the quota"
    );
    daemon.signal(libc::SIGTERM);
    let status = daemon.exited().await;
    assert!(status.success(), "{status}:\n{}", daemon.log());
}
