//! `cargo xtask bench gateway`: requests per second and latency of rampartd's
//! gateway, side by side with HAProxy 2.6 doing the same work, in one run.
//!
//! The work: TLS termination, a subscription-key check, a per-key rate limit
//! set high enough never to trigger, and a proxy to one backend (a single
//! nginx process returning `ok`). Both gateways serve the same certificate
//! and the same key, and log one line per request to /dev/null. wrk keeps
//! its connections alive, so TLS handshakes happen at the start only.
//!
//! Placement on the 2-core machine: the gateway under test (rampartd, whose
//! tokio runtime sizes itself from the affinity mask, or HAProxy with
//! `nbthread 1`) alone on CPU 1; wrk and nginx share CPU 0. The direct
//! figure is wrk against nginx over plain HTTP, with the same placement.
//!
//! The machine is a shared VM whose speed drifts by ±30% over a minute: the
//! systems are measured in interleaved rounds (the order rotating each
//! round) and the figures are medians, the ratios medians of per-round
//! ratios.
//!
//! Everything listens on 127.0.0.1 on ports picked free at start; every
//! process and file this program creates is removed on exit, also on failure.

use std::{
    fmt::Write as _,
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use rampart::policy::keys::{KeyStore, Scope};
use rampart_tests::bench::{
    Child, debian_version, free_port, nginx_backend, output, pinned, self_signed_certificate,
};
use rampart_tests::daemon::TempDir;

/// HAProxy's configuration, with `@NAME@` placeholders (see the file).
const HAPROXY_CFG: &str = include_str!("../../bench/haproxy-gateway.cfg");
const HAPROXY_JWT: &str = include_str!("../../bench/haproxy-jwt.cfg");
const JWT_ISSUER: &str = "https://issuer.example.test/";
const JWT_AUDIENCE: &str = "api://gateway-bench";

/// A wrk script printing the tail of the latency histogram (`--latency` stops at p99),
/// in microseconds, on one line after wrk's own report.
const TAIL_SCRIPT: &str = r#"done = function(summary, latency, requests)
  io.write(string.format("tail: p98 %d p99.5 %d p99.9 %d max %d\n",
    latency:percentile(98), latency:percentile(99.5), latency:percentile(99.9), latency.max))
end
"#;

/// The header rampartd reads keys from by default (and HAProxy is told to).
const KEY_HEADER: &str = "Ocp-Apim-Subscription-Key";

/// CPU of the gateway under test; wrk and the backend run on the other.
const GATEWAY_CPU: &str = "1";
const CLIENT_CPU: &str = "0";

struct Args {
    rampartd: PathBuf,
    out: Option<PathBuf>,
    rounds: usize,
    secs: u64,
    connections: u32,
    /// RUST_LOG for rampartd (unset by default: its configured `info`).
    rampartd_rust_log: Option<String>,
    /// Both gateways log one line per request (off by default: the work measured
    /// is TLS, key, rate limit and proxy).
    access_log: bool,
    /// Add an RS256 JWT check (iss, aud, exp, nbf) and a claim header to the work.
    jwt: bool,
    /// With --jwt: rampartd verifies every token (its verified-token cache off).
    jwt_no_cache: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut rampartd = None;
    let mut a = Args {
        rampartd: PathBuf::new(),
        out: None,
        rounds: 9,
        secs: 8,
        connections: 32,
        rampartd_rust_log: None,
        access_log: false,
        jwt: false,
        jwt_no_cache: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--rampartd" => rampartd = Some(PathBuf::from(v()?)),
            "--out" => a.out = Some(v()?.into()),
            "--rounds" => a.rounds = v()?.parse()?,
            "--secs" => a.secs = v()?.parse()?,
            "--connections" => a.connections = v()?.parse()?,
            "--rampartd-rust-log" => a.rampartd_rust_log = Some(v()?),
            "--access-log" => a.access_log = true,
            "--jwt" => a.jwt = true,
            "--jwt-no-cache" => {
                a.jwt = true;
                a.jwt_no_cache = true;
            }
            other => bail!("unknown argument {other}"),
        }
    }
    a.rampartd = match rampartd {
        Some(path) => path,
        // Built next to this binary (target/release with `cargo build --release`).
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .join("rampartd"),
    };
    ensure!(
        a.rounds >= 1 && a.secs >= 1,
        "--rounds and --secs must be at least 1"
    );
    Ok(a)
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
struct WrkRun {
    requests_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// From [`TAIL_SCRIPT`].
    p98_us: f64,
    p995_us: f64,
    p999_us: f64,
    max_us: f64,
    /// Requests completed in the run.
    requests: f64,
    /// CPU time (user + system) the gateway process spent per request, when known.
    cpu_us_per_request: Option<f64>,
    /// Share of the machine's CPU time the hypervisor gave to others during the
    /// run (steal in /proc/stat), in percent.
    steal_pct: f64,
}

/// Steal above this, in any run of a round, has the round run again.
const MAX_STEAL_PCT: f64 = 2.0;

/// The machine's CPU time so far, from the first line of /proc/stat: (steal,
/// all of user, nice, system, idle, iowait, irq, softirq and steal), in ticks.
fn cpu_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("unreadable cpu line in /proc/stat")?;
    ensure!(
        fields.len() == 8,
        "the cpu line of /proc/stat has {} fields",
        fields.len()
    );
    Ok((fields[7], fields.iter().sum()))
}

/// Steal between two [`cpu_ticks`] readings, in percent of the time that passed.
fn steal_pct(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    after.0.saturating_sub(before.0) as f64 * 100.0 / total as f64
}

/// User + system CPU time of process `pid` so far, in microseconds.
fn cpu_time_us(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no memory preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks * 1e6 / per_sec)
}

/// A wrk duration (`812.00us`, `1.25ms`, `2.00s`, `1.00m`) in microseconds.
fn wrk_duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let factor = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * factor)
}

/// Reads `wrk --latency` output; fails on any error response or socket error.
fn parse_wrk(text: &str) -> anyhow::Result<WrkRun> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix).map(str::trim))
    };
    if let Some(n) = field("Non-2xx or 3xx responses:") {
        bail!("{n} responses were not 2xx or 3xx:\n{text}");
    }
    if let Some(errors) = field("Socket errors:") {
        bail!("socket errors ({errors}):\n{text}");
    }
    let requests_per_sec = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let percentile = |p: &str| {
        field(p)
            .and_then(wrk_duration_us)
            .with_context(|| format!("no {p} latency in wrk's output:\n{text}"))
    };
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .and_then(|(n, _)| n.parse().ok())
        })
        .with_context(|| format!("no request count in wrk's output:\n{text}"))?;
    let tail: Vec<f64> = field("tail:")
        .with_context(|| format!("no tail line (from the wrk script) in wrk's output:\n{text}"))?
        .split_whitespace()
        .skip(1)
        .step_by(2)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("unreadable tail line in wrk's output:\n{text}"))?;
    let [p98_us, p995_us, p999_us, max_us] = tail[..] else {
        bail!("the tail line has {} figures, not 4:\n{text}", tail.len());
    };
    Ok(WrkRun {
        requests_per_sec,
        p50_us: percentile("50%")?,
        p99_us: percentile("99%")?,
        p98_us,
        p995_us,
        p999_us,
        max_us,
        requests,
        cpu_us_per_request: None,
        steal_pct: 0.0,
    })
}

/// One system as wrk sees it.
struct Target {
    name: String,
    url: String,
    key: Option<String>,
    /// Further headers every request carries (the bearer token with --jwt).
    extra: Vec<String>,
    /// The gateway's process, for its CPU time per request.
    pid: Option<u32>,
}

impl Target {
    /// `script`: the wrk script ([`TAIL_SCRIPT`]).
    fn wrk(&self, script: &Path, secs: u64, connections: u32) -> anyhow::Result<WrkRun> {
        let mut cmd = pinned(CLIENT_CPU, "wrk");
        cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s")])
            .arg("--latency")
            .arg("-s")
            .arg(script);
        if let Some(key) = &self.key {
            cmd.args(["-H", &format!("{KEY_HEADER}: {key}")]);
        }
        for header in &self.extra {
            cmd.args(["-H", header]);
        }
        cmd.arg(&self.url);
        let before = self.pid.map(cpu_time_us).transpose()?;
        let ticks_before = cpu_ticks()?;
        let (stdout, _) = output(&mut cmd)?;
        let ticks_after = cpu_ticks()?;
        let after = self.pid.map(cpu_time_us).transpose()?;
        let mut run = parse_wrk(&stdout).with_context(|| format!("wrk against {}", self.name))?;
        run.steal_pct = steal_pct(ticks_before, ticks_after);
        if let (Some(before), Some(after)) = (before, after)
            && run.requests > 0.0
        {
            run.cpu_us_per_request = Some((after - before) / run.requests);
        }
        Ok(run)
    }

    /// One request with curl: (status, body).
    fn curl(&self, key: Option<&str>) -> anyhow::Result<(u16, String)> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sk", "-w", "\n%{http_code}"]);
        if let Some(key) = key {
            cmd.args(["-H", &format!("{KEY_HEADER}: {key}")]);
        }
        for header in &self.extra {
            cmd.args(["-H", header]);
        }
        let (stdout, _) = output(cmd.arg(&self.url))?;
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        Ok((status.trim().parse()?, body.to_string()))
    }

    /// A request with the key is proxied to the backend, one without is
    /// refused: both gateways do the work the benchmark claims.
    fn check(&self) -> anyhow::Result<()> {
        let (status, body) = self.curl(self.key.as_deref())?;
        ensure!(
            status == 200 && body == "ok\n",
            "{}: a request with the key got {status} {body:?}, expected the backend's 200 \"ok\"",
            self.name
        );
        if self.key.is_some() {
            let (status, _) = self.curl(None)?;
            ensure!(
                status == 401,
                "{}: a request without a key got {status}, expected 401",
                self.name
            );
            let (status, _) = self.curl(Some("not-a-key"))?;
            ensure!(
                status == 401,
                "{}: a request with a wrong key got {status}, expected 401",
                self.name
            );
        }
        Ok(())
    }

    /// The TLS version and cipher suite an OpenSSL client (as wrk) gets.
    fn tls(&self) -> anyhow::Result<String> {
        let port = self
            .url
            .rsplit(':')
            .next()
            .map(|p| p.trim_end_matches('/'))
            .unwrap_or_default();
        let (stdout, stderr) = output(
            Command::new("openssl")
                .args(["s_client", "-brief", "-connect"])
                .arg(format!("127.0.0.1:{port}")),
        )?;
        let text = stdout + &stderr;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| "?".to_string())
        };
        Ok(format!(
            "{} {}",
            field("Protocol version:"),
            field("Ciphersuite:")
        ))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `41234.6` as `41,235`.
fn thousands(value: f64) -> String {
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let started = Instant::now();
    let dir = TempDir::new()?;
    let path = |name: &str| dir.path.join(name);
    let text = |p: &Path| p.display().to_string();

    // One self-signed P-256 certificate for both gateways; HAProxy wants the
    // chain and the key in one file.
    self_signed_certificate(&dir.path)?;

    // The key, created in rampartd's state directory before it starts; HAProxy
    // gets the same keys as its list.
    let state_dir = path("state");
    std::fs::create_dir_all(&state_dir)?;
    let (_, keys) = KeyStore::open(&state_dir)?.create("bench", Scope::AllApis)?;
    std::fs::write(
        path("keys.lst"),
        format!("{}\n{}\n", keys.primary.expose(), keys.secondary.expose()),
    )?;
    let key = keys.primary.expose().to_string();

    // With --jwt: an RSA key pair and one RS256 token (iss, aud, sub, nbf, exp).
    let mut extra = Vec::new();
    if args.jwt {
        output(
            Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .arg("-out")
                .arg(path("jwt_key.pem")),
        )?;
        output(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(path("jwt_key.pem"))
                .arg("-out")
                .arg(path("jwt_pub.pem")),
        )?;
        let token = rs256_token(&path("jwt_key.pem"))?;
        extra.push(format!("Authorization: Bearer {token}"));
    }

    let (backend_port, rampartd_port, haproxy_port) = (free_port()?, free_port()?, free_port()?);
    ensure!(
        backend_port != rampartd_port
            && backend_port != haproxy_port
            && rampartd_port != haproxy_port,
        "the kernel handed out the same free port twice; run again"
    );

    let mut nginx = nginx_backend(&dir.path, backend_port, CLIENT_CPU)?;

    let config = path("rampart.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = {state:?}\nruntime_dir = {runtime:?}\n\n\
             [[listener]]\naddress = \"127.0.0.1:{rampartd_port}\"\n\
             tls = {{ cert = {cert:?}, key = {key:?} }}\n\n\
             [[api]]\nname = \"bench\"\npath_prefix = \"/\"\n\
             backend = \"http://127.0.0.1:{backend_port}/\"\n\
             rate_limit = {{ calls = 100000000, period_secs = 1 }}\n{jwt_api}\n\
             [gateway]\naccess_log = \"{access_log}\"\n{jwt_provider}",
            access_log = if args.access_log { "all" } else { "off" },
            jwt_api = if args.jwt {
                "jwt = { provider = \"bench\", claims_to_headers = [{ claim = \"sub\", header = \"X-JWT-Sub\" }] }\n"
            } else {
                ""
            },
            jwt_provider = if args.jwt {
                format!(
                    "\n[[jwt_provider]]\nname = \"bench\"\nalgorithms = [\"RS256\"]\n\
                     issuers = [{JWT_ISSUER:?}]\naudiences = [{JWT_AUDIENCE:?}]\n\
                     cache_tokens = {}\nkeys = [{{ pem_file = {:?} }}]\n",
                    !args.jwt_no_cache,
                    text(&path("jwt_pub.pem"))
                )
            } else {
                String::new()
            },
            state = text(&state_dir),
            runtime = text(&path("run")),
            cert = text(&path("cert.pem")),
            key = text(&path("key.pem")),
        ),
    )?;
    output(
        Command::new(&args.rampartd)
            .arg("--check-config")
            .arg(&config),
    )?;
    let mut rampartd_cmd = pinned(GATEWAY_CPU, &args.rampartd);
    rampartd_cmd
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        // Its access log (one line per request at info) goes where HAProxy's
        // goes: nowhere. Configuration errors were shown by --check-config.
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(filter) = &args.rampartd_rust_log {
        rampartd_cmd.env("RUST_LOG", filter);
    }
    let mut rampartd = Child::spawn("rampartd", &mut rampartd_cmd)?;
    rampartd.wait_listening(
        rampartd_port,
        "; its configuration passed --check-config: run it by hand to see why",
    )?;

    let haproxy_cfg = path("haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        HAPROXY_CFG
            .replace("@CERT@", &text(&path("haproxy.pem")))
            .replace("@KEYS@", &text(&path("keys.lst")))
            .replace("@PORT@", &haproxy_port.to_string())
            .replace("@BACKEND@", &format!("127.0.0.1:{backend_port}"))
            .replace("@SOCKET@", &text(&path("haproxy.sock")))
            .replace(
                "@JWT@",
                &if args.jwt {
                    HAPROXY_JWT.replace("@JWT_PUB@", &text(&path("jwt_pub.pem")))
                } else {
                    String::new()
                },
            )
            .replace(
                "@LOGGING@",
                if args.access_log {
                    "    log global\n    option httplog\n    option dontlognull"
                } else {
                    "    no log"
                },
            ),
    )?;
    output(
        Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&haproxy_cfg),
    )?;
    let haproxy_log = path("haproxy.log");
    let mut haproxy = Child::spawn(
        "haproxy",
        pinned(GATEWAY_CPU, "haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&haproxy_cfg)
            // stdout carries the per-request log lines; stderr start-up messages.
            .stdout(Stdio::null())
            .stderr(File::create(&haproxy_log)?),
    )?;
    let shown = || {
        let log = std::fs::read_to_string(&haproxy_log).unwrap_or_default();
        format!(":\n{log}")
    };
    if let Err(e) = haproxy.wait_listening(haproxy_port, "") {
        bail!("{e}{}", shown());
    }

    let haproxy_version = debian_version("haproxy");
    let script = path("tail.lua");
    std::fs::write(&script, TAIL_SCRIPT)?;
    let targets = [
        Target {
            name: "rampartd".to_string(),
            url: format!("https://127.0.0.1:{rampartd_port}/"),
            key: Some(key.clone()),
            extra: extra.clone(),
            pid: Some(rampartd.child.id()),
        },
        Target {
            name: format!("HAProxy ({haproxy_version})"),
            url: format!("https://127.0.0.1:{haproxy_port}/"),
            key: Some(key),
            extra: extra.clone(),
            pid: Some(haproxy.child.id()),
        },
        Target {
            name: format!("backend directly ({}, plain HTTP)", debian_version("nginx")),
            url: format!("http://127.0.0.1:{backend_port}/"),
            key: None,
            extra: Vec::new(),
            pid: None,
        },
    ];
    for target in &targets {
        target.check()?;
    }
    let tls = [targets[0].tls()?, targets[1].tls()?];
    eprintln!(
        "TLS with an OpenSSL client: rampartd {}, HAProxy {}",
        tls[0], tls[1]
    );
    for target in &targets {
        eprintln!("warm-up: {}", target.name);
        target.wrk(&script, 2, args.connections)?;
    }

    let mut runs: Vec<Vec<WrkRun>> = vec![Vec::new(); targets.len()];
    // A round in which the hypervisor took the VM away (steal) measures the host,
    // not the gateways: it is run again, at most `rounds` times in all.
    let mut repeated = 0;
    let mut attempt = 0;
    while runs[0].len() < args.rounds {
        let round = runs[0].len();
        let mut this_round: Vec<(usize, WrkRun)> = Vec::new();
        for i in 0..targets.len() {
            // Rotate the order, so no system always runs right after another.
            let t = (attempt + i) % targets.len();
            let run = targets[t].wrk(&script, args.secs, args.connections)?;
            eprintln!(
                "round {}/{}: {}: {:.0} req/s, p50 {}, p99 {}, CPU {}, host steal {:.1}%",
                round + 1,
                args.rounds,
                targets[t].name,
                run.requests_per_sec,
                ms(run.p50_us),
                ms(run.p99_us),
                run.cpu_us_per_request
                    .map_or("-".to_string(), |us| format!("{us:.1} us/request")),
                run.steal_pct
            );
            this_round.push((t, run));
        }
        attempt += 1;
        let steal = this_round
            .iter()
            .map(|(_, r)| r.steal_pct)
            .fold(0.0, f64::max);
        if steal > MAX_STEAL_PCT && repeated < args.rounds {
            repeated += 1;
            eprintln!(
                "round {} again: the host's steal reached {steal:.1}%",
                round + 1
            );
            continue;
        }
        for (t, run) in this_round {
            runs[t].push(run);
        }
    }
    for (child, port) in [
        (&mut rampartd, rampartd_port),
        (&mut haproxy, haproxy_port),
        (&mut nginx, backend_port),
    ] {
        if let Some(status) = child.child.try_wait()? {
            bail!(
                "{} (port {port}) exited during the run with {status}",
                child.name
            );
        }
    }
    drop((haproxy, rampartd, nginx));

    let report = report(&args, &targets, &runs, &tls, repeated, started.elapsed())?;
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| out.display().to_string())?;
        eprintln!("written to {}", out.display());
    }
    Ok(())
}

fn report(
    args: &Args,
    targets: &[Target],
    runs: &[Vec<WrkRun>],
    tls: &[String; 2],
    repeated: usize,
    elapsed: Duration,
) -> anyhow::Result<String> {
    let of = |t: usize, f: fn(&WrkRun) -> f64| median(runs[t].iter().map(f).collect());
    let rps = |r: &WrkRun| r.requests_per_sec;
    let p50 = |r: &WrkRun| r.p50_us;
    let p99 = |r: &WrkRun| r.p99_us;
    let p98 = |r: &WrkRun| r.p98_us;
    let p995 = |r: &WrkRun| r.p995_us;
    let p999 = |r: &WrkRun| r.p999_us;
    let max = |r: &WrkRun| r.max_us;
    let cpu = |r: &WrkRun| r.cpu_us_per_request.unwrap_or(f64::NAN);
    // Ratios within each round (the same few seconds of the machine's speed),
    // then their median.
    let ratio = |a: usize, b: usize, f: fn(&WrkRun) -> f64| {
        let per_round: Vec<f64> = runs[a]
            .iter()
            .zip(&runs[b])
            .map(|(x, y)| f(x) / f(y))
            .collect();
        let (lo, hi) = per_round
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        (median(per_round), lo, hi)
    };
    let mut out = String::new();
    writeln!(
        out,
        "### rampartd side by side with HAProxy, same run\n\n\
         The work: TLS termination (one self-signed P-256 certificate for both), a \
         subscription-key check (`{KEY_HEADER}` against one subscription), a per-key rate \
         limit of 100,000,000 calls per second (never reached), proxy to one nginx process \
         returning `ok` over plain HTTP on loopback. HAProxy: tests/bench/haproxy-gateway.cfg \
         (the project's HAProxy anchor, `nbthread 1`). {}{} TLS with an OpenSSL client such as \
         wrk: rampartd {}, HAProxy {}.\n\n\
         Placement (2 cores): the gateway under test alone on CPU 1 (`taskset`; rampartd's \
         tokio runtime then has one worker thread); wrk and the nginx backend share CPU 0, \
         for all three measurements. `wrk -t1 -c{} --latency` with keep-alive, {} interleaved \
         rounds of {} s (the order rotating each round); figures are medians over the rounds, \
         ratios medians of the per-round ratios (range in brackets). A round in which the \
         host's steal (the share of the machine's CPU time the hypervisor gave to others, \
         /proc/stat) exceeded {MAX_STEAL_PCT}% in any of its three runs was run again, at \
         most as many times as there are rounds: {repeated} this run.\n",
        if args.access_log {
            "Both log one line per request (rampartd `access_log = \"all\"`, HAProxy \
             `option httplog`), to /dev/null (`--access-log`)."
        } else {
            "Neither logs per request (rampartd `access_log = \"off\"`, HAProxy `no log`); \
             `--access-log` measures both with one line per request."
        },
        if args.jwt {
            format!(
                " With `--jwt{}`: plus an RS256 JWT in `Authorization` (2048-bit key), its \
                 signature, `iss`, `aud`, `exp` and `nbf` checked, and its `sub` sent to the \
                 backend as `X-JWT-Sub` (HAProxy: the anchor's `jwt_verify` steps, \
                 tests/bench/haproxy-jwt.cfg, which verify the signature of every request); \
                 rampartd's verified-token cache is {}.",
                if args.jwt_no_cache { "-no-cache" } else { "" },
                if args.jwt_no_cache {
                    "off (`cache_tokens = false`: every request is verified)"
                } else {
                    "on (the default: a repeated token is verified once)"
                }
            )
        } else {
            " Without `--jwt`, no JWT is checked.".to_string()
        },
        tls[0],
        tls[1],
        args.connections,
        args.rounds,
        args.secs
    )?;
    if let Some(filter) = &args.rampartd_rust_log {
        writeln!(out, "rampartd ran with `RUST_LOG={filter}`.\n")?;
    }
    writeln!(
        out,
        "| system | req/s | p50 | p98 | p99 | p99.5 | p99.9 | max | gateway CPU per request |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for (t, target) in targets.iter().enumerate() {
        let cpu: Vec<f64> = runs[t]
            .iter()
            .filter_map(|r| r.cpu_us_per_request)
            .collect();
        let cpu = if cpu.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1} µs", median(cpu))
        };
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {cpu} |",
            target.name,
            thousands(of(t, rps)),
            ms(of(t, p50)),
            ms(of(t, p98)),
            ms(of(t, p99)),
            ms(of(t, p995)),
            ms(of(t, p999)),
            ms(of(t, max))
        )?;
    }
    writeln!(out, "\n| ratio | median | range |\n|---|---:|---:|")?;
    let rows = [
        ("rampartd / HAProxy, req/s", ratio(0, 1, rps)),
        ("rampartd / HAProxy, p50", ratio(0, 1, p50)),
        ("rampartd / HAProxy, p99", ratio(0, 1, p99)),
        ("rampartd / HAProxy, p98", ratio(0, 1, p98)),
        ("rampartd / HAProxy, p99.5", ratio(0, 1, p995)),
        ("rampartd / HAProxy, p99.9", ratio(0, 1, p999)),
        ("rampartd / HAProxy, CPU per request", ratio(0, 1, cpu)),
        ("rampartd / direct, req/s", ratio(0, 2, rps)),
        ("HAProxy / direct, req/s", ratio(1, 2, rps)),
    ];
    for (name, (m, lo, hi)) in rows {
        writeln!(out, "| {name} | {m:.2} | [{lo:.2}, {hi:.2}] |")?;
    }
    writeln!(
        out,
        "\nGateway CPU per request: user + system time of the gateway's process \
         (/proc/PID/stat) over the requests wrk completed; steadier than req/s on a VM \
         whose speed drifts, and what a host pays per request."
    )?;
    let (rps_ratio, p99_ratio) = (rows[0].1.0, rows[2].1.0);
    let met = rps_ratio >= 1.0 && p99_ratio <= 1.0;
    writeln!(
        out,
        "\nTarget: rampartd at least 1.0x HAProxy's req/s with a p99 no higher than HAProxy's: \
         {} ({rps_ratio:.2}x the req/s, {p99_ratio:.2}x the p99).\n",
        if met { "met" } else { "not met" }
    )?;
    writeln!(
        out,
        "req/s per round, with the host's steal during the round in brackets (the share \
         of the machine's CPU time the hypervisor gave to others, from /proc/stat):\n"
    )?;
    for (t, target) in targets.iter().enumerate() {
        let list: Vec<String> = runs[t]
            .iter()
            .map(|r| format!("{} ({:.1}%)", thousands(r.requests_per_sec), r.steal_pct))
            .collect();
        writeln!(out, "- {}: {}", target.name, list.join(", "))?;
    }
    writeln!(out, "\nTotal benchmark time: {:.0?}.", elapsed)?;
    Ok(out)
}

/// An RS256 JWT signed with the PEM private key at `key` (by openssl): the claims
/// both gateways check, valid for two hours.
fn rs256_token(key: &Path) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let header = base64url(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = base64url(
        format!(
            r#"{{"iss":"{JWT_ISSUER}","aud":"{JWT_AUDIENCE}","sub":"bench-user","nbf":{},"exp":{}}}"#,
            now - 60,
            now + 7200
        )
        .as_bytes(),
    );
    let signing_input = format!("{header}.{claims}");
    let input = std::env::temp_dir().join(format!("rampart-bench-jwt-{}", std::process::id()));
    std::fs::write(&input, &signing_input)?;
    let signature = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&input)
        .output()?;
    let _ = std::fs::remove_file(&input);
    ensure!(
        signature.status.success(),
        "openssl could not sign the token"
    );
    Ok(format!("{signing_input}.{}", base64url(&signature.stdout)))
}

/// Unpadded base64url (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        let digits = chunk.len() + 1;
        for i in 0..digits {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64url(plain.as_bytes()), encoded);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    const WRK: &str = "Running 5s test @ https://127.0.0.1:8443/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   780.12us  200.00us   5.00ms   90.00%
    Req/Sec    41.00k     1.00k   43.00k    80.00%
  Latency Distribution
     50%  750.00us
     75%  800.00us
     90%  900.00us
     99%    1.50ms
  205000 requests in 5.00s, 30.00MB read
Requests/sec:  41000.00
Transfer/sec:      6.00MB
tail: p98 1300 p99.5 2500 p99.9 7000 max 12000
";

    #[test]
    fn wrk_output() {
        let run = parse_wrk(WRK).unwrap();
        assert_eq!(run.requests_per_sec, 41000.0);
        assert_eq!(run.p50_us, 750.0);
        assert_eq!(run.p99_us, 1500.0);
        assert_eq!(
            [run.p98_us, run.p995_us, run.p999_us, run.max_us],
            [1300.0, 2500.0, 7000.0, 12000.0]
        );
        let no_tail = WRK.replace("tail: p98 1300 p99.5 2500 p99.9 7000 max 12000\n", "");
        assert!(parse_wrk(&no_tail).is_err());
    }

    #[test]
    fn wrk_errors_fail_the_run() {
        let non2xx = WRK.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 5\nRequests/sec",
        );
        assert!(parse_wrk(&non2xx).is_err());
        let socket = WRK.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&socket).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(wrk_duration_us("2.00s"), Some(2e6));
        assert_eq!(wrk_duration_us("1.00m"), Some(60e6));
        assert_eq!(wrk_duration_us("12"), None);
    }

    #[test]
    fn steal_share() {
        assert_eq!(steal_pct((10, 1_000), (30, 2_000)), 2.0);
        assert_eq!(steal_pct((10, 1_000), (10, 1_000)), 0.0);
        let (steal, total) = cpu_ticks().unwrap();
        assert!(steal <= total && total > 0);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(41234.6), "41,235");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(185000.0), "185,000");
    }
}
