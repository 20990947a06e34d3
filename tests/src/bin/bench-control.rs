//! `cargo xtask bench control`: how long `rampart deny add X` takes until the XDP
//! program drops X, side by side with xdp-filter (Debian's xdp-tools), in one run.
//!
//! The promise measured: a change is in the XDP maps before the CLI returns, and the
//! p99 from starting the CLI to the entry being enforced is at most 10 ms for one
//! entry.
//!
//! One sample: a prober thread inside a client namespace connects from a fresh source
//! address X to a closed port of the server namespace over and over (every 200 µs, a
//! short timeout each): an RST means the SYN passed the filter, a timeout that it was
//! dropped. Once X is seen passing, t0 is taken and the CLI (release build) is started;
//! t_return is when it has exited 0; t_enforced is the start of the first probe that
//! was dropped. Figures per sample: the CLI round trip (t_return - t0) and add to
//! enforced (t_enforced - t0). Every probe that started after t_return must be
//! dropped: one that passed is a violation of "in the maps before the CLI returns".
//!
//! rampartd (release build, `[filter]` attached to the server side of its own veth
//! pair, its own state, runtime and pin directories in a temporary directory) alone on
//! CPU 1; this program, its prober threads, the CLI and xdp-filter's own command on
//! CPU 0. xdp-filter is attached the same way to a second veth pair. Samples are taken
//! in interleaved rounds (the order alternating each round), with an empty deny list
//! and again with 100,000 entries loaded; then the time of bulk `--from-file` adds,
//! deletes and `--replace` of 100,000 entries.
//!
//! Traffic only flows inside the namespaces this program creates (198.18.0.0/15);
//! everything it creates (namespaces, XDP attachments, pins, rampartd, files) is
//! removed on exit, also on failure and on Ctrl-C.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs::File,
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use aya::maps::{Map, MapData, MapInfo, PerCpuHashMap, PerCpuValues};
use rampart_tests::bench::debian_version;
use rampart_tests::{PinDir, daemon::TempDir, netns::Pair};

/// rampartd's CPU; everything else (this program, the CLI, xdp-filter) runs on the
/// other one (`cargo xtask bench control` starts this program on CPU 0).
const RAMPARTD_CPU: &str = "1";

/// Nothing listens on this port in the server namespaces: a SYN that passes the
/// filter is answered by an RST at once (no connection state, no accept loop).
const PORT: u16 = 9;

/// Probes start this often while they pass (a dropped one lasts its timeout).
const PROBE_INTERVAL: Duration = Duration::from_micros(200);

/// Passing probes seen from X before the CLI is started.
const WARM_PASSES: usize = 3;

/// Probes started after the CLI returned that a sample waits for (each must be dropped).
const AFTER_RETURN: usize = 3;

/// A sample whose entry is not enforced this long after the CLI returned counts as
/// never enforced.
const ENFORCE_DEADLINE: Duration = Duration::from_secs(2);

/// Unmeasured samples per system before each condition's rounds.
const WARMUP_SAMPLES: usize = 3;

/// Where xdp-filter pins its maps (one instance per bpffs).
const XDP_FILTER_PINS: &str = "/sys/fs/bpf/xdp-filter";

struct Args {
    rampartd: PathBuf,
    rampart: PathBuf,
    out: Option<PathBuf>,
    samples: usize,
    rounds: usize,
    bulk: usize,
    bulk_runs: usize,
    probe_timeout: Duration,
    attach_mode: String,
}

fn args() -> anyhow::Result<Args> {
    let here = std::env::current_exe()?
        .parent()
        .context("this binary has no directory")?
        .to_path_buf();
    let mut a = Args {
        rampartd: here.join("rampartd"),
        rampart: here.join("rampart"),
        out: None,
        samples: 200,
        rounds: 5,
        bulk: 100_000,
        bulk_runs: 3,
        probe_timeout: Duration::from_millis(25),
        attach_mode: "native".to_string(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--rampartd" => a.rampartd = v()?.into(),
            "--rampart" => a.rampart = v()?.into(),
            "--out" => a.out = Some(v()?.into()),
            "--samples" => a.samples = v()?.parse()?,
            "--rounds" => a.rounds = v()?.parse()?,
            "--bulk" => a.bulk = v()?.parse()?,
            "--bulk-runs" => a.bulk_runs = v()?.parse()?,
            "--probe-timeout-ms" => a.probe_timeout = Duration::from_millis(v()?.parse()?),
            "--attach-mode" => a.attach_mode = v()?,
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(
        a.samples >= 1 && a.rounds >= 1 && a.bulk_runs >= 1,
        "--samples, --rounds and --bulk-runs must be at least 1"
    );
    ensure!(
        a.attach_mode == "native" || a.attach_mode == "skb",
        "--attach-mode is native or skb"
    );
    ensure!(
        a.probe_timeout >= Duration::from_millis(5),
        "--probe-timeout-ms below 5 would count slow answers as drops"
    );
    Ok(a)
}

// ---------------------------------------------------------------------------
// Ctrl-C: stop between samples and clean up (panics abort in release builds,
// so everything here fails with errors, never panics, and guards always run).

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, handler) };
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted; everything the benchmark created was removed");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Processes.

/// Runs `cmd` to completion; fails with its output unless it exits with 0.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// rampartd, stopped (SIGTERM, then SIGKILL) and reaped on drop.
struct Rampartd {
    child: std::process::Child,
    log: PathBuf,
}

impl Rampartd {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("rampartd exited with {status}; its log:\n{}", self.log());
        }
        Ok(())
    }
}

impl Drop for Rampartd {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// rampartd pins below `<pin_root>/v<layout>/`: detached (links unpinned, so the
/// program leaves the interface) and removed on drop; then the root by [`PinDir`].
struct PinsBelow(PathBuf);

impl Drop for PinsBelow {
    fn drop(&mut self) {
        if let Err(e) = rampart::filter::detach(&self.0) {
            eprintln!("cleanup of {}: {e}", self.0.display());
        }
    }
}

/// xdp-filter attached to a device of a namespace; unloaded on drop (which removes
/// its pinned maps once no interface uses them).
struct XdpFilter {
    ns: String,
    dev: String,
}

impl XdpFilter {
    fn load(pair: &Pair, mode: &str) -> anyhow::Result<Self> {
        ensure!(
            !Path::new(XDP_FILTER_PINS).exists(),
            "{XDP_FILTER_PINS} exists: xdp-filter is loaded somewhere else on this machine \
             (another benchmark, or a run that was killed: `xdp-filter unload --all` in its \
             namespace, or remove the directory)"
        );
        // nsenter keeps this mount namespace, so xdp-filter pins its maps in the host's
        // /sys/fs/bpf/xdp-filter where `xdp-filter ip` and this process find them.
        run(Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", pair.srv))
            .args(["xdp-filter", "load", "-m", mode, "-f", "ipv4,ipv6"])
            .arg(&pair.srv_if))?;
        Ok(Self {
            ns: pair.srv.clone(),
            dev: pair.srv_if.clone(),
        })
    }

    /// Fills its IPv4 map with `addrs` (source mode) directly: xdp-filter has no
    /// bulk add, and one process per address would take minutes.
    fn preload(&self, addrs: &[Ipv4Addr]) -> anyhow::Result<()> {
        let nproc = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        // MAP_FLAG_SRC = 1 (xdp-filter common_kern_user.h), on every CPU.
        let flags = || PerCpuValues::try_from(vec![1u64; nproc]);
        let map = MapData::from_pin(format!("{XDP_FILTER_PINS}/filter_ipv4"))?;
        let mut map: PerCpuHashMap<MapData, u32, u64> =
            PerCpuHashMap::try_from(Map::PerCpuHashMap(map))?;
        for a in addrs {
            map.insert(u32::from_ne_bytes(a.octets()), flags()?, 0)?;
        }
        Ok(())
    }

    fn capacity() -> anyhow::Result<usize> {
        Ok(MapInfo::from_pin(format!("{XDP_FILTER_PINS}/filter_ipv4"))?.max_entries() as usize)
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .args(["xdp-filter", "unload", &self.dev])
            .output();
    }
}

// ---------------------------------------------------------------------------
// Addresses.

/// The i-th probe source: 198.18.1.1 upwards, 250 a /24 (never the pair's own
/// 198.18.0.0/24).
fn source(i: usize) -> Ipv4Addr {
    let block = 1 + i / 250;
    Ipv4Addr::new(
        198,
        18 + (block / 256) as u8,
        (block % 256) as u8,
        1 + (i % 250) as u8,
    )
}

/// Most probe sources the 198.18.0.0/15 range holds this way.
const MAX_SOURCES: usize = 250 * 511;

/// Adds sources `0..n` to the client side of `pair` (one `ip -batch`), and a route
/// for them on the server side (its own address is in a /24).
fn add_sources(pair: &Pair, n: usize, dir: &Path) -> anyhow::Result<()> {
    let mut text = String::new();
    for i in 0..n {
        writeln!(text, "address add {}/32 dev {}", source(i), pair.cli_if)?;
    }
    let file = dir.join(format!("{}.batch", pair.cli));
    std::fs::write(&file, text)?;
    run(Command::new("ip")
        .args(["-n", &pair.cli, "-batch"])
        .arg(&file))?;
    pair.ip(
        &pair.srv,
        &["route", "add", "198.18.0.0/15", "dev", &pair.srv_if],
    )?;
    Ok(())
}

/// A small deterministic generator (xorshift64*): the same entries every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Two disjoint sets of `n` unicast IPv4 addresses outside 198.18.0.0/15 (the probe
/// sources), 10/8 and 127/8: deny entries only, never traffic.
fn entry_sets(n: usize) -> (Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
    let mut rng = Rng(0x5eed_c0de_0000_0001);
    let mut seen = BTreeSet::new();
    let mut sets = (Vec::with_capacity(n), Vec::with_capacity(n));
    while sets.1.len() < n {
        let a = rng.next() as u32;
        let first = a >> 24;
        if !(1..=223).contains(&first)
            || first == 10
            || first == 127
            || a & 0xfffe_0000 == 0xc612_0000
            || !seen.insert(a)
        {
            continue;
        }
        if sets.0.len() < n {
            sets.0.push(Ipv4Addr::from(a));
        } else {
            sets.1.push(Ipv4Addr::from(a));
        }
    }
    sets
}

fn write_entries(path: &Path, addrs: &[Ipv4Addr]) -> anyhow::Result<()> {
    let mut text = String::with_capacity(addrs.len() * 16);
    for a in addrs {
        writeln!(text, "{a}")?;
    }
    std::fs::write(path, text).with_context(|| path.display().to_string())
}

// ---------------------------------------------------------------------------
// The prober.

#[derive(Debug, Clone, Copy)]
struct Probe {
    start: Instant,
    passed: bool,
}

enum Report {
    Probe(Probe),
    Failed(String),
    Done,
}

struct Job {
    src: Ipv4Addr,
    stop: Arc<AtomicBool>,
    reports: mpsc::Sender<Report>,
}

/// One TCP connect from `src` to `dst`: `Ok(true)` when answered (RST or SYN-ACK:
/// the SYN passed the filter), `Ok(false)` on timeout (it was dropped).
fn probe(src: Ipv4Addr, dst: SocketAddrV4, timeout: Duration) -> io::Result<bool> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.bind(&SocketAddrV4::new(src, 0).into())?;
    match s.connect_timeout(&dst.into(), timeout) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(false),
        Err(e) => Err(e),
    }
}

fn run_job(job: &Job, dst: SocketAddrV4, timeout: Duration) {
    let mut next = Instant::now();
    while !job.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        let start = Instant::now();
        next = start + PROBE_INTERVAL;
        let report = match probe(job.src, dst, timeout) {
            Ok(passed) => Report::Probe(Probe { start, passed }),
            Err(e) => Report::Failed(format!("probe from {} to {dst}: {e}", job.src)),
        };
        let failed = matches!(report, Report::Failed(_));
        if job.reports.send(report).is_err() || failed {
            break;
        }
    }
    let _ = job.reports.send(Report::Done);
}

/// A thread inside a client namespace that probes from one source at a time.
struct Prober {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    fn start(ns: &str, dst: SocketAddrV4, timeout: Duration) -> anyhow::Result<Self> {
        let path = format!("/var/run/netns/{ns}");
        let file = File::open(&path).with_context(|| path.clone())?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, entered) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            // SAFETY: a valid namespace fd; affects this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready.send(Err(format!("setns: {}", io::Error::last_os_error())));
                return;
            }
            let _ = ready.send(Ok(()));
            for job in queue {
                run_job(&job, dst, timeout);
            }
        });
        let prober = Self {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        entered
            .recv()
            .context("the prober thread ended")?
            .map_err(anyhow::Error::msg)?;
        Ok(prober)
    }

    fn begin(&self, src: Ipv4Addr) -> anyhow::Result<(mpsc::Receiver<Report>, StopOnDrop)> {
        let (reports, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        self.jobs
            .as_ref()
            .context("prober stopped")?
            .send(Job {
                src,
                stop: stop.clone(),
                reports,
            })
            .ok()
            .context("the prober thread ended")?;
        Ok((rx, StopOnDrop(stop)))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Stops a probing job when the sample is done (or fails).
struct StopOnDrop(Arc<AtomicBool>);

impl StopOnDrop {
    fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The next probe before `deadline`; `None` on the deadline or when the job ended.
fn next_probe(
    reports: &mpsc::Receiver<Report>,
    deadline: Instant,
) -> anyhow::Result<Option<Probe>> {
    let wait = deadline.saturating_duration_since(Instant::now());
    match reports.recv_timeout(wait) {
        Ok(Report::Probe(p)) => Ok(Some(p)),
        Ok(Report::Failed(e)) => bail!("{e}"),
        Ok(Report::Done) | Err(_) => Ok(None),
    }
}

// ---------------------------------------------------------------------------
// Samples.

#[derive(Debug, Clone, Copy)]
struct Sample {
    round_trip: Duration,
    /// None: not enforced within ENFORCE_DEADLINE after the CLI returned.
    enforced: Option<Duration>,
    /// Probes that started after the CLI returned, and how many of them passed.
    after_return: usize,
    violations: usize,
    /// Dropped probes before t0 (spurious timeouts: X was not denied yet).
    early_drops: usize,
    /// Passing probes after the first dropped one and before the CLI returned.
    flaps: usize,
    /// Median gap between probe starts while X passed.
    interval: Option<Duration>,
    /// rampartd rewrote its snapshot (journal compaction) during the sample.
    compacted: bool,
}

/// One sample: waits until `src` passes, runs `add(src)`, watches until enforced.
fn sample(
    prober: &Prober,
    src: Ipv4Addr,
    timeout: Duration,
    add: &dyn Fn(Ipv4Addr) -> anyhow::Result<()>,
) -> anyhow::Result<Sample> {
    let (reports, stop) = prober.begin(src)?;
    let mut probes = Vec::new();
    let warm_deadline = Instant::now() + Duration::from_secs(5);
    let mut passes = 0;
    while passes < WARM_PASSES {
        let p = next_probe(&reports, warm_deadline)?.with_context(|| {
            format!("{src} did not pass {WARM_PASSES} probes in a row within 5 s")
        })?;
        passes = if p.passed { passes + 1 } else { 0 };
        probes.push(p);
    }
    let t0 = Instant::now();
    add(src)?;
    let t_return = Instant::now();
    let deadline = t_return + ENFORCE_DEADLINE;
    loop {
        let after = probes.iter().filter(|p| p.start >= t_return).count();
        let dropped = probes.iter().any(|p| !p.passed && p.start >= t0);
        if after >= AFTER_RETURN && dropped {
            break;
        }
        match next_probe(&reports, deadline)? {
            Some(p) => probes.push(p),
            None => break,
        }
    }
    stop.stop();
    // The probe in flight when told to stop still counts.
    let drain = Instant::now() + timeout + Duration::from_secs(1);
    while let Some(p) = next_probe(&reports, drain)? {
        probes.push(p);
    }
    let first_drop = probes
        .iter()
        .filter(|p| !p.passed && p.start >= t0)
        .map(|p| p.start)
        .min();
    let passing: Vec<Instant> = probes
        .iter()
        .filter(|p| p.passed && p.start < t0)
        .map(|p| p.start)
        .collect();
    let interval = (passing.len() >= 2).then(|| {
        let gaps: Vec<Duration> = passing.windows(2).map(|w| w[1] - w[0]).collect();
        median_duration(gaps)
    });
    Ok(Sample {
        round_trip: t_return - t0,
        enforced: first_drop.map(|t| t - t0),
        after_return: probes.iter().filter(|p| p.start >= t_return).count(),
        violations: probes
            .iter()
            .filter(|p| p.start >= t_return && p.passed)
            .count(),
        early_drops: probes.iter().filter(|p| p.start < t0 && !p.passed).count(),
        flaps: first_drop.map_or(0, |d| {
            probes
                .iter()
                .filter(|p| p.passed && p.start > d && p.start < t_return)
                .count()
        }),
        interval,
        compacted: false,
    })
}

fn median_duration(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A system under test: its own namespaces, prober and add command.
struct System {
    name: String,
    prober: Prober,
    add: Box<dyn Fn(Ipv4Addr) -> anyhow::Result<()>>,
    next_source: usize,
    /// rampartd's snapshot file: a new inode after a sample means a compaction
    /// (snapshot rewritten, journal emptied) happened inside it.
    snapshot: Option<PathBuf>,
}

impl System {
    fn sample(&mut self, timeout: Duration) -> anyhow::Result<Sample> {
        check_interrupted()?;
        let src = source(self.next_source);
        self.next_source += 1;
        let inode = |path: &Option<PathBuf>| {
            use std::os::unix::fs::MetadataExt as _;
            path.as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| m.ino())
        };
        let before = inode(&self.snapshot);
        let mut sample = sample(&self.prober, src, timeout, &*self.add)
            .with_context(|| format!("{}: sample from {src}", self.name))?;
        sample.compacted = self.snapshot.is_some() && inode(&self.snapshot) != before;
        Ok(sample)
    }
}

/// Appends of 200 bytes, each followed by fdatasync, in `dir`: what one journal
/// record costs on this disk at the moment (ms each).
fn fdatasync_ms(dir: &Path, n: usize) -> anyhow::Result<Vec<f64>> {
    use std::io::Write as _;
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        file.write_all(&[b'x'; 200])?;
        file.sync_data()?;
        out.push(ms(t.elapsed()));
    }
    Ok(out)
}

/// fdatasync probes after each round.
const FDATASYNCS_PER_ROUND: usize = 20;

/// Samples of both systems under one condition, in interleaved rounds.
struct Condition {
    label: String,
    /// Per system, per round.
    samples: [Vec<Vec<Sample>>; 2],
    /// fdatasync times on the state directory's disk, between rounds (ms).
    fdatasync: Vec<f64>,
}

fn measure(
    label: String,
    systems: &mut [System; 2],
    args: &Args,
    disk: &Path,
) -> anyhow::Result<Condition> {
    let mut fdatasync = Vec::new();
    for system in systems.iter_mut() {
        for _ in 0..WARMUP_SAMPLES {
            system.sample(args.probe_timeout)?;
        }
    }
    let per_round = args.samples.div_ceil(args.rounds);
    let mut samples: [Vec<Vec<Sample>>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        for k in 0..2 {
            // Alternate which system goes first.
            let s = (round + k) % 2;
            let mut got = Vec::with_capacity(per_round);
            for _ in 0..per_round {
                got.push(systems[s].sample(args.probe_timeout)?);
            }
            let enforced: Vec<f64> = got.iter().map(enforced_ms).collect();
            eprintln!(
                "{label}, round {}/{}: {}: add to enforced p50 {:.2} ms, max {:.2} ms; \
                 {} probes after return passed",
                round + 1,
                args.rounds,
                systems[s].name,
                percentile(&enforced, 50.0),
                percentile(&enforced, 100.0),
                got.iter().map(|s| s.violations).sum::<usize>()
            );
            samples[s].push(got);
        }
        fdatasync.extend(fdatasync_ms(disk, FDATASYNCS_PER_ROUND)?);
    }
    Ok(Condition {
        label,
        samples,
        fdatasync,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn enforced_ms(s: &Sample) -> f64 {
    s.enforced.map_or(f64::INFINITY, ms)
}

/// Nearest-rank percentile of unsorted `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

// ---------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args = args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the control-plane benchmark needs root (XDP, network namespaces)");
    }
    for bin in [&args.rampartd, &args.rampart] {
        ensure!(
            bin.exists(),
            "{} is missing: `cargo build --release -p rampart` (cargo xtask bench control does)",
            bin.display()
        );
    }
    catch_signals();
    let started = Instant::now();
    let load_before = load_average();
    let per_condition = WARMUP_SAMPLES + args.samples.div_ceil(args.rounds) * args.rounds;
    let sources = 2 * per_condition;
    ensure!(
        sources <= MAX_SOURCES,
        "--samples too large for the probe range"
    );

    // Declared in the order they are torn down in reverse: rampartd stops, xdp-filter
    // unloads, rampart's pins are detached, then the namespaces and files go.
    let dir = TempDir::new()?;
    let state_fs = run(Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "-T"])
        .arg(&dir.path))?
    .trim()
    .to_string();
    let rampart_pair = Pair::new(&[])?;
    let xdp_pair = Pair::new(&[])?;
    eprintln!("adding {sources} probe sources to each client namespace...");
    add_sources(&rampart_pair, sources, &dir.path)?;
    add_sources(&xdp_pair, sources, &dir.path)?;

    let pin_root = PinDir::new();
    let _pins = PinsBelow(
        pin_root
            .path()
            .join(format!("v{}", rampart_common::LAYOUT_VERSION)),
    );
    let xdp_filter = XdpFilter::load(&xdp_pair, &args.attach_mode)?;
    let xdp_capacity = XdpFilter::capacity()?;

    let state_dir = dir.path.join("state");
    let runtime_dir = dir.path.join("run");
    let socket = runtime_dir.join("control.sock");
    let config = dir.path.join("rampart.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = {state:?}\nruntime_dir = {run:?}\npin_root = {pins:?}\n\n\
             [filter]\ninterfaces = [{iface:?}]\nattach_mode = {mode:?}\nprotect = [\"tcp/443\"]\n",
            state = state_dir.display().to_string(),
            run = runtime_dir.display().to_string(),
            pins = pin_root.path().display().to_string(),
            iface = rampart_pair.srv_if,
            mode = args.attach_mode,
        ),
    )?;
    run(Command::new(&args.rampartd)
        .arg("--check-config")
        .arg(&config))?;
    let log = dir.path.join("rampartd.log");
    let child = Command::new("taskset")
        .args(["-c", RAMPARTD_CPU, "nsenter"])
        .arg(format!("--net=/var/run/netns/{}", rampart_pair.srv))
        .arg(&args.rampartd)
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log)?)
        .spawn()
        .context("starting rampartd")?;
    let mut rampartd = Rampartd { child, log };
    let rampart_cli = |args_: &[&str]| {
        let mut cmd = Command::new(&args.rampart);
        cmd.arg("--socket").arg(&socket).args(args_);
        cmd
    };
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        rampartd.running()?;
        if socket.exists()
            && rampart_cli(&["status"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            break;
        }
        ensure!(
            Instant::now() < ready_by,
            "rampartd did not answer `rampart status` within 30 s; its log:\n{}",
            rampartd.log()
        );
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        rampartd.log().contains("filter attached"),
        "rampartd runs but did not attach its filter; its log:\n{}",
        rampartd.log()
    );
    eprintln!(
        "rampartd attached ({} mode) to {} in {}; xdp-filter to {} in {}",
        args.attach_mode, rampart_pair.srv_if, rampart_pair.srv, xdp_pair.srv_if, xdp_pair.srv
    );

    let rampart_bin = args.rampart.clone();
    let socket_for_add = socket.clone();
    let dst = |pair: &Pair| -> anyhow::Result<SocketAddrV4> {
        match pair.srv_v4 {
            std::net::IpAddr::V4(a) => Ok(SocketAddrV4::new(a, PORT)),
            std::net::IpAddr::V6(_) => bail!("the pair's server address is not IPv4"),
        }
    };
    let mut systems = [
        System {
            name: "rampart".to_string(),
            prober: Prober::start(&rampart_pair.cli, dst(&rampart_pair)?, args.probe_timeout)?,
            add: Box::new(move |src| {
                run(Command::new(&rampart_bin)
                    .arg("--socket")
                    .arg(&socket_for_add)
                    .args(["deny", "add", &src.to_string()]))
                .map(|_| ())
            }),
            next_source: 0,
            snapshot: Some(state_dir.join(rampart::state::SNAPSHOT_FILE)),
        },
        System {
            name: "xdp-filter".to_string(),
            prober: Prober::start(&xdp_pair.cli, dst(&xdp_pair)?, args.probe_timeout)?,
            add: Box::new(|src| {
                run(Command::new("xdp-filter").args(["ip", &src.to_string(), "--mode", "src"]))
                    .map(|_| ())
            }),
            next_source: 0,
            snapshot: None,
        },
    ];

    // Empty deny lists.
    let empty = measure(
        "empty deny list".to_string(),
        &mut systems,
        &args,
        &dir.path,
    )?;
    rampartd.running()?;

    // Bulk: add, delete, add again (the last add stays for the loaded condition).
    eprintln!("generating 2 x {} deny entries...", args.bulk);
    let (set_a, set_b) = entry_sets(args.bulk);
    let file_a = dir.path.join("entries-a.txt");
    let file_b = dir.path.join("entries-b.txt");
    write_entries(&file_a, &set_a)?;
    write_entries(&file_b, &set_b)?;
    let timed = |cmd: &mut Command| -> anyhow::Result<Duration> {
        check_interrupted()?;
        let t = Instant::now();
        run(cmd)?;
        Ok(t.elapsed())
    };
    let (mut bulk_add, mut bulk_del, mut bulk_replace) = (Vec::new(), Vec::new(), Vec::new());
    for run_ in 0..args.bulk_runs {
        if run_ > 0 {
            bulk_del.push(timed(
                rampart_cli(&["deny", "del", "--from-file"]).arg(&file_a),
            )?);
        }
        bulk_add.push(timed(
            rampart_cli(&["deny", "add", "--from-file"]).arg(&file_a),
        )?);
        eprintln!(
            "bulk run {}: add {:.2} s{}",
            run_ + 1,
            bulk_add.last().map_or(0.0, Duration::as_secs_f64),
            bulk_del
                .last()
                .filter(|_| run_ > 0)
                .map_or(String::new(), |d| format!(
                    " (after a delete of {:.2} s)",
                    d.as_secs_f64()
                ))
        );
    }
    let listed = run(&mut rampart_cli(&["--json", "deny", "list"]))?;
    let rampart_entries = serde_json::from_str::<serde_json::Value>(&listed)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len));
    // xdp-filter: as full as it goes, leaving room for the entries of both
    // conditions' samples (the first condition's are still in its map).
    let xdp_preload = xdp_capacity
        .saturating_sub(2 * per_condition + 16)
        .min(args.bulk);
    xdp_filter.preload(&set_a[..xdp_preload])?;
    rampartd.running()?;

    let loaded_label = format!("{} entries", thousands(args.bulk));
    let loaded = measure(loaded_label.clone(), &mut systems, &args, &dir.path)?;

    // --replace: the operator's entries become the other set, and back.
    for run_ in 0..args.bulk_runs {
        let file = if run_ % 2 == 0 { &file_b } else { &file_a };
        bulk_replace.push(timed(
            rampart_cli(&["deny", "add", "--replace", "--from-file"]).arg(file),
        )?);
        eprintln!(
            "replace run {}: {:.2} s",
            run_ + 1,
            bulk_replace.last().map_or(0.0, Duration::as_secs_f64)
        );
    }
    rampartd.running()?;
    drop(systems);
    drop(rampartd);
    drop(xdp_filter);

    let setup = Setup {
        args: &args,
        state_fs,
        xdp_version: debian_version("xdp-tools"),
        xdp_capacity,
        xdp_preload,
        rampart_entries,
        loaded_label,
        load: (load_before, load_average()),
        bulk_add,
        bulk_del,
        bulk_replace,
    };
    let report = report(&setup, &[empty, loaded], started.elapsed())?;
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| out.display().to_string())?;
        eprintln!("written to {}", out.display());
    }
    Ok(())
}

/// The 1-minute load average (/proc/loadavg).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

/// `100000` as `100,000`.
fn thousands(value: usize) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct Setup<'a> {
    args: &'a Args,
    state_fs: String,
    xdp_version: String,
    xdp_capacity: usize,
    xdp_preload: usize,
    rampart_entries: Option<usize>,
    loaded_label: String,
    /// 1-minute load average at the start and at the end.
    load: (String, String),
    bulk_add: Vec<Duration>,
    bulk_del: Vec<Duration>,
    bulk_replace: Vec<Duration>,
}

fn figures(v: &[f64]) -> String {
    format!(
        "{:.2} / {:.2} / {:.2} / {:.2} ms",
        percentile(v, 50.0),
        percentile(v, 90.0),
        percentile(v, 99.0),
        percentile(v, 100.0)
    )
}

fn report(c: &Setup, conditions: &[Condition], elapsed: Duration) -> anyhow::Result<String> {
    let a = c.args;
    let all = |cond: &Condition, s: usize| -> Vec<Sample> {
        cond.samples[s].iter().flatten().copied().collect()
    };
    let mut out = String::new();
    let intervals: Vec<Duration> = conditions
        .iter()
        .flat_map(|cond| [all(cond, 0), all(cond, 1)])
        .flatten()
        .filter_map(|s| s.interval)
        .collect();
    let interval = if intervals.is_empty() {
        "?".to_string()
    } else {
        format!("{:.0} µs", median_duration(intervals).as_secs_f64() * 1e6)
    };
    let n = a.samples.div_ceil(a.rounds) * a.rounds;
    writeln!(
        out,
        "### One deny entry, CLI to enforced: rampart side by side with xdp-filter, same run\n\n\
         Each system on the server side of its own veth pair between two network namespaces, \
         attached in {mode} mode: rampartd (release build, `[filter]` on the veth, state, \
         runtime and pin directories of its own; state directory on {fs}) and xdp-filter \
         ({xdp}, `xdp-filter load -m {mode}`). One sample: a prober thread in the client \
         namespace connects from a fresh source address X to a closed port of the server \
         (a probe every {interval} while they pass, measured; an RST = passed, a {timeout} ms \
         timeout = dropped); once X passes, t0, then the CLI (`rampart deny add X` with the release \
         `rampart`, or `xdp-filter ip X --mode src`) runs to exit 0 (t_return); enforced = the start of the first \
         dropped probe. CLI round trip = t_return - t0, add to enforced = enforced - t0 (it \
         includes starting the CLI process). Every probe started after t_return must be \
         dropped (the promise: in the maps before the CLI returns); the sample waits for \
         {after} such probes. Placement (2 cores): rampartd alone on CPU 1; the prober, the \
         CLI and xdp-filter's command on CPU 0 (xdp-filter has no daemon: its command \
         updates the map itself). {n} samples per system and list size, in {rounds} \
         interleaved rounds (the order alternating each round), after {warm} unmeasured \
         samples each; percentiles are nearest-rank over all samples (p99 of {n} is the \
         {rank} largest).\n",
        mode = a.attach_mode,
        fs = c.state_fs,
        xdp = c.xdp_version,
        timeout = a.probe_timeout.as_millis(),
        after = AFTER_RETURN,
        rounds = a.rounds,
        warm = WARMUP_SAMPLES,
        rank = match n - ((0.99 * n as f64).ceil() as usize).max(1) + 1 {
            1 => "1st".to_string(),
            2 => "2nd".to_string(),
            3 => "3rd".to_string(),
            k => format!("{k}th"),
        },
    )?;
    writeln!(
        out,
        "Durability differs: rampartd appends the change to its journal and fdatasyncs it \
         before it updates the maps and answers (a change the CLI saw succeed survives a \
         crash or reboot); xdp-filter writes no durable state and does no fsync (a reboot \
         forgets its entries).\n"
    )?;
    writeln!(
        out,
        "| deny list before | system | CLI round trip p50 / p90 / p99 / max | add to enforced p50 / p90 / p99 / max | probes after return that passed |\n\
         |---|---|---:|---:|---:|"
    )?;
    for cond in conditions {
        for s in 0..2 {
            let samples = all(cond, s);
            let rtt: Vec<f64> = samples.iter().map(|x| ms(x.round_trip)).collect();
            let enf: Vec<f64> = samples.iter().map(enforced_ms).collect();
            let list = if cond.label == c.loaded_label {
                if s == 0 {
                    format!(
                        "{} entries{}",
                        thousands(a.bulk),
                        c.rampart_entries
                            .map_or(String::new(), |e| format!(" ({} listed)", thousands(e)))
                    )
                } else {
                    format!(
                        "{} entries (xdp-filter's map holds {})",
                        thousands(c.xdp_preload),
                        thousands(c.xdp_capacity)
                    )
                }
            } else {
                "empty".to_string()
            };
            let name = if s == 0 {
                "rampart (`rampart deny add X`)"
            } else {
                "xdp-filter (`xdp-filter ip X --mode src`)"
            };
            writeln!(
                out,
                "| {list} | {name} | {} | {} | {} of {} |",
                figures(&rtt),
                figures(&enf),
                samples.iter().map(|x| x.violations).sum::<usize>(),
                samples.iter().map(|x| x.after_return).sum::<usize>()
            )?;
        }
    }
    writeln!(
        out,
        "\n| ratio rampart / xdp-filter, add to enforced | p50 | p99 | per-round p50 ratios |\n\
         |---|---:|---:|---|"
    )?;
    for cond in conditions {
        let enf = |s: usize| -> Vec<f64> { all(cond, s).iter().map(enforced_ms).collect() };
        let (r, x) = (enf(0), enf(1));
        let rounds: Vec<String> = cond.samples[0]
            .iter()
            .zip(&cond.samples[1])
            .map(|(rs, xs)| {
                let p =
                    |v: &[Sample]| percentile(&v.iter().map(enforced_ms).collect::<Vec<_>>(), 50.0);
                format!("{:.2}", p(rs) / p(xs))
            })
            .collect();
        writeln!(
            out,
            "| {} | {:.2} | {:.2} | {} |",
            cond.label,
            percentile(&r, 50.0) / percentile(&x, 50.0),
            percentile(&r, 99.0) / percentile(&x, 99.0),
            rounds.join(", ")
        )?;
    }
    let secs = |v: &[Duration]| -> String {
        let figures: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
        let list: Vec<String> = figures.iter().map(|f| format!("{f:.2}")).collect();
        format!(
            "{:.2} s | {} |",
            percentile(&figures, 50.0),
            list.join(", ")
        )
    };
    writeln!(
        out,
        "\n### Bulk changes (rampart, {n_bulk} IPv4 addresses from a file)\n\n\
         Wall time of the CLI, from start to exit 0 (reading the file, the request, the \
         journal record and its fdatasync, the map updates, the answer). xdp-filter has no \
         bulk add (one process per address); its map was filled directly for the figures \
         above.\n\n\
         | operation | median | runs (s) |\n|---|---:|---|\n\
         | `rampart deny add --from-file` ({n_bulk} new entries, list empty before) | {add}\n\
         | `rampart deny del --from-file` (the same {n_bulk}) | {del}\n\
         | `rampart deny add --replace --from-file` ({n_bulk} other entries replace {n_bulk}) | {rep}",
        n_bulk = thousands(a.bulk),
        add = secs(&c.bulk_add),
        del = if c.bulk_del.is_empty() {
            "- | - |".to_string()
        } else {
            secs(&c.bulk_del)
        },
        rep = secs(&c.bulk_replace),
    )?;

    // The target.
    let rampart = |cond: &Condition| -> Vec<Sample> { all(cond, 0) };
    let p99s: Vec<(String, f64)> = conditions
        .iter()
        .map(|cond| {
            let v: Vec<f64> = rampart(cond).iter().map(enforced_ms).collect();
            (cond.label.clone(), percentile(&v, 99.0))
        })
        .collect();
    let met = p99s.iter().all(|(_, p)| *p <= 10.0);
    let violations: usize = conditions
        .iter()
        .flat_map(rampart)
        .map(|s| s.violations)
        .sum();
    let after: usize = conditions
        .iter()
        .flat_map(rampart)
        .map(|s| s.after_return)
        .sum();
    writeln!(
        out,
        "\nTarget: p99 from CLI add to enforced at most 10 ms for one entry: **{}** ({}). \
         In the maps before the CLI returns: **{}** ({violations} of {after} probes started \
         after `rampart deny add` returned passed).\n",
        if met { "met" } else { "not met" },
        p99s.iter()
            .map(|(l, p)| format!("{l}: p99 {p:.2} ms"))
            .collect::<Vec<_>>()
            .join(", "),
        if violations == 0 { "met" } else { "not met" },
    )?;

    let mut notes = Vec::new();
    for cond in conditions {
        for (s, name) in ["rampart", "xdp-filter"].iter().enumerate() {
            let v = all(cond, s);
            let never = v.iter().filter(|x| x.enforced.is_none()).count();
            let early: usize = v.iter().map(|x| x.early_drops).sum();
            let flaps: usize = v.iter().map(|x| x.flaps).sum();
            if never + early + flaps > 0 {
                notes.push(format!(
                    "{name}, {}: {never} samples not enforced within {} s, {early} probe \
                     timeouts before the add, {flaps} passing probes after a dropped one",
                    cond.label,
                    ENFORCE_DEADLINE.as_secs()
                ));
            }
        }
    }
    if notes.is_empty() {
        writeln!(
            out,
            "Probe anomalies: none (no timeout before an add, no pass after a drop, every \
             entry enforced)."
        )?;
    } else {
        writeln!(out, "Probe anomalies: {}.", notes.join("; "))?;
    }
    let fdatasync: Vec<f64> = conditions
        .iter()
        .flat_map(|cond| cond.fdatasync.iter().copied())
        .collect();
    writeln!(
        out,
        "\nThe disk: fdatasync after a 200-byte append in the state directory's filesystem \
         ({fs}), {per} after each round ({total} in all): p50 / p90 / p99 / max {figs}. \
         Journal compactions (rampartd rewrote its snapshot) inside rampart's samples: {comp}.",
        fs = c.state_fs,
        per = FDATASYNCS_PER_ROUND,
        total = fdatasync.len(),
        figs = figures(&fdatasync),
        comp = conditions
            .iter()
            .map(|cond| {
                let v = all(cond, 0);
                let hit: Vec<f64> = v.iter().filter(|s| s.compacted).map(enforced_ms).collect();
                if hit.is_empty() {
                    format!("{}: none", cond.label)
                } else {
                    format!(
                        "{}: {} (add to enforced in them up to {:.2} ms)",
                        cond.label,
                        hit.len(),
                        percentile(&hit, 100.0)
                    )
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
    )?;
    writeln!(
        out,
        "\nOther load on the machine: 1-minute load average {} at the start, {} at the end \
         (other work on the 2 cores shows in every figure; the interleaved rounds give it to \
         both systems alike).",
        c.load.0, c.load.1
    )?;
    writeln!(out, "\nTotal benchmark time: {:.0?}.", elapsed)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_stay_in_the_benchmark_range_and_off_the_pair() {
        assert_eq!(source(0), Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(source(249), Ipv4Addr::new(198, 18, 1, 250));
        assert_eq!(source(250), Ipv4Addr::new(198, 18, 2, 1));
        let last = source(MAX_SOURCES - 1);
        assert_eq!(last, Ipv4Addr::new(198, 19, 255, 250));
    }

    #[test]
    fn entry_sets_are_disjoint_and_avoid_the_probe_range() {
        let (a, b) = entry_sets(1000);
        assert_eq!(a.len(), 1000);
        assert_eq!(b.len(), 1000);
        let a_set: BTreeSet<_> = a.iter().collect();
        assert!(b.iter().all(|x| !a_set.contains(x)));
        assert!(
            a.iter()
                .chain(&b)
                .all(|x| !(x.octets()[0] == 198 && (x.octets()[1] & 0xfe) == 18))
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 100.0);
        assert_eq!(percentile(&v, 99.0), 198.0);
        assert_eq!(percentile(&v, 100.0), 200.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }
}
