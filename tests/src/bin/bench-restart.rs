//! `cargo xtask bench restart`: what clients see when the gateway restarts under
//! load, measured with wrk.
//!
//! wrk (`-t1 -c32`, keep-alive, TLS) runs for `--secs` seconds against the
//! gateway, which is restarted `--restarts` times at even intervals, and wrk's
//! own counts are reported: requests completed, non-2xx answers, socket errors
//! (connect, read, write, timeout). Three ways of restarting:
//!
//! - rampartd with its listening socket handed over: this program holds the
//!   socket, as systemd does with `rampartd.socket`, and passes it to each
//!   rampartd as fd 3 (`LISTEN_FDS=1`); a restart is SIGTERM (the old one drains
//!   and exits), then a new rampartd on the same socket.
//! - rampartd binding its listener itself: the same restart; between the old
//!   one's exit and the new one's bind, nothing listens.
//! - HAProxy's seamless reload: a new process started with `-sf OLDPID -x
//!   SOCKET` takes the listening sockets from the old one over its stats socket
//!   (`expose-fd listeners`); the old one finishes its connections and exits.
//!
//! The gateways forward to one nginx process answering `ok`. Placement as in the
//! gateway benchmark: the gateway on CPU 1, wrk and nginx on CPU 0. Everything
//! listens on 127.0.0.1 on free ports; every process and file this program
//! creates is removed on exit, also on failure.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use rampart_tests::activation::activated;
use rampart_tests::bench::{
    Child, debian_version, free_port, nginx_backend, output, pinned, self_signed_certificate,
};
use rampart_tests::daemon::TempDir;

/// CPU of the gateway under test; wrk and the backend run on the other.
const GATEWAY_CPU: &str = "1";
const CLIENT_CPU: &str = "0";
/// wrk's connections.
const CONNECTIONS: u32 = 32;

struct Args {
    rampartd: PathBuf,
    out: Option<PathBuf>,
    secs: u64,
    restarts: u32,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        rampartd: PathBuf::new(),
        out: None,
        secs: 10,
        restarts: 3,
    };
    let mut rampartd = None;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--rampartd" => rampartd = Some(PathBuf::from(v()?)),
            "--out" => a.out = Some(v()?.into()),
            "--secs" => a.secs = v()?.parse()?,
            "--restarts" => a.restarts = v()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    a.rampartd = match rampartd {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .join("rampartd"),
    };
    ensure!(
        a.secs >= 2 && a.restarts >= 1,
        "--secs must be at least 2 and --restarts at least 1"
    );
    Ok(a)
}

/// Waits (at most 20 s) until `GET /` on `port` answers 200 (a connection
/// waiting in a handed-over socket's backlog is answered once the new process
/// accepts it).
fn wait_ready(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let code = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--max-time", "10"])
            .arg(format!("https://127.0.0.1:{port}/"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()?;
        if code.stdout == b"200" {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "port {port} never answered 200");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// wrk's counts for one run.
#[derive(Debug, Default, Clone, Copy)]
struct WrkCounts {
    requests: u64,
    non_2xx: u64,
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
}

/// Reads wrk's output: the request count, `Non-2xx or 3xx responses: N` and
/// `Socket errors: connect N, read N, write N, timeout N` (absent when 0).
fn parse_wrk(text: &str) -> anyhow::Result<WrkCounts> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix).map(str::trim))
    };
    let mut counts = WrkCounts {
        requests: text
            .lines()
            .find_map(|l| {
                l.trim()
                    .split_once(" requests in ")
                    .and_then(|(n, _)| n.parse().ok())
            })
            .with_context(|| format!("no request count in wrk's output:\n{text}"))?,
        ..WrkCounts::default()
    };
    if let Some(n) = field("Non-2xx or 3xx responses:") {
        counts.non_2xx = n.parse()?;
    }
    if let Some(errors) = field("Socket errors:") {
        for part in errors.split(',') {
            let (name, n) = part
                .trim()
                .split_once(' ')
                .with_context(|| format!("socket errors: {errors}"))?;
            let n: u64 = n.parse()?;
            match name {
                "connect" => counts.connect = n,
                "read" => counts.read = n,
                "write" => counts.write = n,
                "timeout" => counts.timeout = n,
                other => bail!("unknown socket error kind {other}"),
            }
        }
    }
    Ok(counts)
}

/// One way of running and restarting a gateway.
trait Gateway {
    fn name(&self) -> String;
    /// Starts the first process; returns once it answers.
    fn start(&mut self) -> anyhow::Result<()>;
    /// Restarts; returns once the new process answers.
    fn restart(&mut self) -> anyhow::Result<()>;
    fn stop(&mut self) -> anyhow::Result<()>;
}

/// rampartd, with (`socket`) or without its listening socket handed over.
struct Rampartd<'a> {
    binary: &'a Path,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    socket: Option<std::net::TcpListener>,
    running: Option<Child>,
}

impl Rampartd<'_> {
    fn spawn(&self) -> anyhow::Result<Child> {
        let mut cmd = match &self.socket {
            None => pinned(GATEWAY_CPU, self.binary),
            // The shell execs taskset, which execs rampartd: one process.
            Some(socket) => activated(
                socket,
                &[
                    OsStr::new("taskset"),
                    OsStr::new("-c"),
                    OsStr::new(GATEWAY_CPU),
                    self.binary.as_os_str(),
                ],
            ),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(File::options().create(true).append(true).open(&self.log)?);
        Child::spawn("rampartd", &mut cmd)
    }
}

impl Gateway for Rampartd<'_> {
    fn name(&self) -> String {
        match self.socket {
            Some(_) => "rampartd, socket handed over (as rampartd.socket)".into(),
            None => "rampartd, binding its own socket".into(),
        }
    }

    fn start(&mut self) -> anyhow::Result<()> {
        self.running = Some(self.spawn()?);
        wait_ready(self.port)
            .with_context(|| std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut old) = self.running.take() {
            old.signal(libc::SIGTERM)?;
            let status = old.exited()?;
            ensure!(status.success(), "rampartd exited with {status}");
        }
        self.start()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut old) = self.running.take() {
            old.signal(libc::SIGTERM)?;
            old.exited()?;
        }
        Ok(())
    }
}

/// HAProxy with seamless reloads (`-x` + `-sf`).
struct Haproxy {
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    port: u16,
    running: Vec<Child>,
}

impl Haproxy {
    fn spawn(&self, old: Option<u32>) -> anyhow::Result<Child> {
        let mut cmd = pinned(GATEWAY_CPU, "haproxy");
        cmd.arg("-db").arg("-f").arg(&self.config);
        if let Some(old) = old {
            cmd.arg("-x").arg(&self.socket);
            cmd.arg("-sf").arg(old.to_string());
        }
        cmd.stdout(Stdio::null())
            .stderr(File::options().create(true).append(true).open(&self.log)?);
        Child::spawn("haproxy", &mut cmd)
    }
}

impl Gateway for Haproxy {
    fn name(&self) -> String {
        format!(
            "{}, seamless reload (-x, -sf)",
            debian_version("haproxy").replace("haproxy", "HAProxy")
        )
    }

    fn start(&mut self) -> anyhow::Result<()> {
        self.running.push(self.spawn(None)?);
        wait_ready(self.port)
            .with_context(|| std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        let old = self.running.last().map(|c| c.child.id());
        self.running.push(self.spawn(old)?);
        wait_ready(self.port)
            .with_context(|| std::fs::read_to_string(&self.log).unwrap_or_default())?;
        // Old processes leave once their connections are done; reap them.
        self.running
            .retain_mut(|c| !matches!(c.child.try_wait(), Ok(Some(_))));
        Ok(())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        self.running.clear();
        Ok(())
    }
}

/// What one run measured.
struct Outcome {
    name: String,
    wrk: WrkCounts,
    /// SIGTERM (or reload) to the new process answering, per restart.
    restarts: Vec<Duration>,
}

/// wrk for `secs` against `port` while `gateway` is restarted `restarts` times
/// at even intervals.
fn measure(
    gateway: &mut dyn Gateway,
    port: u16,
    secs: u64,
    restarts: u32,
) -> anyhow::Result<Outcome> {
    gateway.start()?;
    let wrk = Command::new("taskset")
        .args(["-c", CLIENT_CPU, "wrk", "-t1"])
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{secs}s"))
        .arg(format!("https://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk")?;
    let mut wrk = Some(wrk);
    let started = Instant::now();
    let every = Duration::from_secs(secs) / (restarts + 1);
    let mut durations = Vec::new();
    let result = (|| {
        for i in 1..=restarts {
            let at = every * i;
            if let Some(wait) = at.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            let restart = Instant::now();
            gateway.restart()?;
            durations.push(restart.elapsed());
        }
        anyhow::Ok(())
    })();
    let out = wrk
        .take()
        .context("wrk")?
        .wait_with_output()
        .context("waiting for wrk")?;
    let stopped = gateway.stop();
    result?;
    stopped?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "wrk failed ({}):\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Outcome {
        name: gateway.name(),
        wrk: parse_wrk(&text)?,
        restarts: durations,
    })
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let dir = TempDir::new()?;
    let path = |name: &str| dir.path.join(name);
    let text = |p: &Path| p.display().to_string();

    self_signed_certificate(&dir.path)?;

    let backend_port = free_port()?;
    let _nginx = nginx_backend(&dir.path, backend_port, CLIENT_CPU)?;

    let rampartd_config = |name: &str, port: u16| -> anyhow::Result<PathBuf> {
        let state = path(&format!("{name}-state"));
        std::fs::create_dir_all(&state)?;
        let config = path(&format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\n\n\
                 [gateway]\naccess_log = \"off\"\ndrain_timeout_secs = 10\n\n\
                 [[listener]]\naddress = \"127.0.0.1:{port}\"\n\
                 tls = {{ cert = {cert:?}, key = {key:?} }}\n\n\
                 [[api]]\nname = \"bench\"\npath_prefix = \"/\"\n\
                 backend = \"http://127.0.0.1:{backend_port}/\"\nsubscription = \"none\"\n",
                state = text(&state),
                runtime = text(&path(&format!("{name}-run"))),
                cert = text(&path("cert.pem")),
                key = text(&path("key.pem")),
            ),
        )?;
        output(
            Command::new(&args.rampartd)
                .arg("--check-config")
                .arg(&config),
        )?;
        Ok(config)
    };

    let mut outcomes = Vec::new();
    // With hand-over: this program holds the socket, like systemd.
    let socket = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = socket.local_addr()?.port();
    let mut handover = Rampartd {
        binary: &args.rampartd,
        config: rampartd_config("handover", port)?,
        log: path("handover.log"),
        port,
        socket: Some(socket),
        running: None,
    };
    outcomes.push(measure(&mut handover, port, args.secs, args.restarts)?);
    drop(handover);

    let port = free_port()?;
    let mut own = Rampartd {
        binary: &args.rampartd,
        config: rampartd_config("own", port)?,
        log: path("own.log"),
        port,
        socket: None,
        running: None,
    };
    outcomes.push(measure(&mut own, port, args.secs, args.restarts)?);
    drop(own);

    let port = free_port()?;
    let haproxy_cfg = path("haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "global\n    maxconn 4096\n    nbthread 1\n\
             \x20   stats socket {socket} mode 600 level admin expose-fd listeners\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n\
             \x20   timeout server 30s\n    timeout http-keep-alive 30s\n\
             frontend fe\n    bind 127.0.0.1:{port} ssl crt {cert} alpn http/1.1\n\
             \x20   default_backend be\n\
             backend be\n    http-reuse safe\n    server app1 127.0.0.1:{backend_port}\n",
            socket = text(&path("haproxy.sock")),
            cert = text(&path("haproxy.pem")),
        ),
    )?;
    output(
        Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&haproxy_cfg),
    )?;
    let mut haproxy = Haproxy {
        config: haproxy_cfg,
        socket: path("haproxy.sock"),
        log: path("haproxy.log"),
        port,
        running: Vec::new(),
    };
    outcomes.push(measure(&mut haproxy, port, args.secs, args.restarts)?);
    drop(haproxy);

    let report = report(&args, &outcomes)?;
    print!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| out.display().to_string())?;
    }
    Ok(())
}

fn report(args: &Args, outcomes: &[Outcome]) -> anyhow::Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "### Restart under load\n\n\
         `wrk -t1 -c{CONNECTIONS} -d{}s` (keep-alive, TLS) against the gateway, restarted {} \
         times at even intervals; wrk's own counts. rampartd: SIGTERM (the old process drains \
         and exits), then a new process, started the moment the old one has exited. With \
         hand-over the benchmark holds the listening socket and passes it as fd 3 \
         (`LISTEN_FDS=1`), as systemd does with `rampartd.socket`. HAProxy: a new process \
         started with `-x <stats socket> -sf <old pid>` (seamless reload: the listening \
         sockets move over the stats socket). The gateway on CPU 1, wrk and the nginx \
         backend on CPU 0; plain `GET /` proxied to nginx.\n",
        args.secs, args.restarts
    )?;
    writeln!(
        s,
        "| gateway | requests | non-2xx | connect errors | read errors | write errors | timeouts | restart to answering (each) |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|")?;
    for o in outcomes {
        let w = o.wrk;
        let restarts: Vec<String> = o
            .restarts
            .iter()
            .map(|d| format!("{} ms", d.as_millis()))
            .collect();
        writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            o.name,
            w.requests,
            w.non_2xx,
            w.connect,
            w.read,
            w.write,
            w.timeout,
            restarts.join(", ")
        )?;
    }
    writeln!(
        s,
        "\nA connect error is a refused connection (nothing listening); a read error a \
         connection closed without an answer. A stopping rampartd first lets each busy \
         keep-alive connection end after its next answer (`Connection: close` during a \
         lame-duck period of at most 0.25 s), which wrk follows without an error, then \
         closes the connections left; a request written on a connection as it is closed \
         would be a read error (wrk does not retry).\n"
    )?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_counts() {
        let text = "Running 10s test @ https://127.0.0.1:1/\n  1 threads and 32 connections\n\
                    \x20 51234 requests in 10.00s, 5.00MB read\n\
                    \x20 Socket errors: connect 12, read 3, write 0, timeout 1\n\
                    \x20 Non-2xx or 3xx responses: 7\nRequests/sec:   5123.40\n";
        let c = parse_wrk(text).unwrap();
        assert_eq!(
            (c.requests, c.non_2xx, c.connect, c.read, c.write, c.timeout),
            (51234, 7, 12, 3, 0, 1)
        );
        let clean = parse_wrk("  100 requests in 1.00s, 1KB read\n").unwrap();
        assert_eq!((clean.requests, clean.connect, clean.non_2xx), (100, 0, 0));
    }
}
