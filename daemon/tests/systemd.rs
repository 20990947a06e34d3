//! The systemd side of rampartd: the unit files in `packaging/systemd/` pass
//! `systemd-analyze verify` and keep their `systemd-analyze security` exposure,
//! and a real `rampartd` speaks the notification protocol to a `NOTIFY_SOCKET`
//! this test binds itself: READY=1 only once it serves, STATUS=, WATCHDOG=1 at
//! half of WATCHDOG_USEC, RELOADING=1 and READY=1 around good and bad reloads,
//! STOPPING=1 then exit 0 at SIGTERM. As root, a second run with `[filter]` on
//! a veth in a namespace of its own, under exactly the capability bounding set
//! of the unit, shows READY=1 comes after the filter is attached and that those
//! capabilities are enough.
//!
//! Every daemon is killed on drop and every directory, namespace and pin
//! removed, even when a test fails.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_support::{Rampartd, TempDir, free_port};

const UNIT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/systemd");
/// The exposure `systemd-analyze security` gives the unit (docs/operations.md):
/// a change of the unit that raises it must be a decision, not an accident.
const MAX_EXPOSURE: f64 = 2.5;

fn systemd_analyze() -> Option<PathBuf> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
    }
    found.then(|| PathBuf::from("systemd-analyze"))
}

/// The units in a temporary directory, ExecStart pointing at the built rampartd
/// (verify checks that the binary exists).
fn units_for_test(dir: &Path) -> (PathBuf, PathBuf) {
    let service = std::fs::read_to_string(Path::new(UNIT_DIR).join("rampartd.service")).unwrap();
    let exec = "ExecStart=/usr/sbin/rampartd ";
    assert_eq!(
        service.matches(exec).count(),
        1,
        "one ExecStart= line, with /usr/sbin/rampartd (the install step rewrites it)"
    );
    let service = service.replace(
        exec,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_rampartd")),
    );
    let service_path = dir.join("rampartd.service");
    std::fs::write(&service_path, service).unwrap();
    let socket_path = dir.join("rampartd.socket");
    std::fs::copy(Path::new(UNIT_DIR).join("rampartd.socket"), &socket_path).unwrap();
    (service_path, socket_path)
}

/// `KEY=` values of a unit file (comments and sections skipped).
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect()
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = TempDir::new("units");
    let (service, socket) = units_for_test(&dir.0);
    let out = Command::new(&analyze)
        .args(["verify", "--man=no", "--generators=no"])
        .arg(&service)
        .arg(&socket)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let about_us: Vec<&str> = stderr.lines().filter(|l| l.contains("rampartd")).collect();
    assert!(about_us.is_empty(), "warnings about the units:\n{stderr}");

    // What the issue asks of the unit, so that an edit cannot drop it unnoticed.
    let text = std::fs::read_to_string(&service).unwrap();
    for (key, value) in [
        ("Type", "notify"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("RuntimeDirectory", "rampart"),
        ("StateDirectory", "rampart"),
        ("ConfigurationDirectory", "rampart"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
    ] {
        assert_eq!(unit_values(&text, key), [value], "{key}=");
    }
    assert!(!unit_values(&text, "WatchdogSec").is_empty());
    // The stop timeout outlasts the default drain timeout (30 s).
    let stop = unit_values(&text, "TimeoutStopSec");
    let secs: u64 = stop[0].trim_end_matches('s').parse().unwrap();
    assert!(secs > 30, "TimeoutStopSec={secs}");
    // The socket unit is optional: no hard dependency on it.
    assert!(!text.contains("Requires=rampartd.socket"));
    let socket_text = std::fs::read_to_string(&socket).unwrap();
    assert_eq!(unit_values(&socket_text, "Service"), ["rampartd.service"]);
}

#[test]
fn unit_exposure_stays_as_documented() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = TempDir::new("security");
    let (service, _) = units_for_test(&dir.0);
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&service)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no score:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    println!("systemd-analyze security: {score}");
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{stdout}"
    );
}

/// The test's end of `NOTIFY_SOCKET`, with every message received and when.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    received: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Self {
            socket,
            path,
            received: Vec::new(),
        }
    }

    fn recv(&mut self, until: Instant) -> Option<(Instant, String)> {
        let left = until.checked_duration_since(Instant::now())?;
        self.socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        let message = (
            Instant::now(),
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        );
        self.received.push(message.clone());
        Some(message)
    }

    /// The first message with line `line` (e.g. "READY=1") within `timeout`.
    fn expect(&mut self, line: &str, timeout: Duration, daemon: &Rampartd) -> String {
        let until = Instant::now() + timeout;
        loop {
            match self.recv(until) {
                Some((_, m)) if m.lines().any(|l| l == line) => return m,
                Some(_) => {}
                None => panic!(
                    "no {line} within {timeout:?}; received {:?}\nlog:\n{}",
                    self.received,
                    daemon.log()
                ),
            }
        }
    }

    /// Every message received within `period`.
    fn collect(&mut self, period: Duration) -> Vec<(Instant, String)> {
        let until = Instant::now() + period;
        let mut all = Vec::new();
        while let Some(m) = self.recv(until) {
            all.push(m);
        }
        all
    }
}

fn status_of(message: &str) -> &str {
    message
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= in {message:?}"))
}

/// rampartd on `config`, notifying `notify`, watchdog 2 s.
fn spawn(
    config: &Path,
    notify: &NotifySocket,
    log: PathBuf,
    port: u16,
    wrap: &[String],
) -> Rampartd {
    let bin = env!("CARGO_BIN_EXE_rampartd");
    let mut command = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let child = command
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("WATCHDOG_PID")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "2000000")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Rampartd { child, log, port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rampartd_notifies_systemd() {
    let dir = TempDir::new("notify");
    let port = free_port();
    let runtime = dir.0.join("run");
    let good = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {run:?}\n\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\nplain_http = true\n",
        state = dir.0.join("state").display().to_string(),
        run = runtime.display().to_string(),
    );
    let config = dir.0.join("rampart.toml");
    gateway_support::write_private(&config, &good);
    let mut notify = NotifySocket::bind(&dir.0);
    let mut daemon = spawn(&config, &notify, dir.0.join("rampartd.log"), port, &[]);

    // READY=1: at that moment the listener accepts and the control socket listens.
    let ready = notify.expect("READY=1", Duration::from_secs(20), &daemon);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "READY=1 before the listener accepts"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(runtime.join("control.sock")).is_ok(),
        "READY=1 before the control socket listens"
    );
    let status = status_of(&ready);
    assert!(
        status.contains("no filter; gateway 1 listener, 0 requests; control ")
            && status.ends_with("control.sock"),
        "{status}"
    );

    // WATCHDOG=1 about every second (WATCHDOG_USEC = 2 s).
    let pings: Vec<Instant> = notify
        .collect(Duration::from_millis(4_500))
        .into_iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(at, _)| at)
        .collect();
    assert!(pings.len() >= 3, "{} pings in 4.5 s", pings.len());
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > Duration::from_millis(600) && gap < Duration::from_millis(1_600),
            "pings {gap:?} apart"
        );
    }

    // A good reload: RELOADING=1 (with MONOTONIC_USEC=), then READY=1.
    daemon.signal(libc::SIGHUP);
    let reloading = notify.expect("RELOADING=1", Duration::from_secs(10), &daemon);
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let reloaded = notify.expect("READY=1", Duration::from_secs(10), &daemon);
    assert!(
        status_of(&reloaded).starts_with("configuration reloaded; no filter; gateway 1 listener"),
        "{reloaded:?}"
    );

    // A bad file: READY=1 again (the running configuration serves), the
    // rejection in STATUS=.
    std::fs::write(&config, format!("{good}\nunknown_key = 1\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    notify.expect("RELOADING=1", Duration::from_secs(10), &daemon);
    let rejected = notify.expect("READY=1", Duration::from_secs(10), &daemon);
    let status = status_of(&rejected);
    assert!(
        status.contains("last reload rejected (running configuration kept)")
            && status.contains("unknown_key"),
        "{status}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    std::fs::write(&config, &good).unwrap();

    // SIGTERM: STOPPING=1, then exit 0.
    let pid = i32::try_from(daemon.child.id()).unwrap();
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    notify.expect("STOPPING=1", Duration::from_secs(10), &daemon);
    let exit = daemon.terminate().await;
    assert!(exit.success(), "{exit}\n{}", daemon.log());
}

/// A network namespace with a veth pair inside (`va` up, `vb` up), deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("rpsd{}", std::process::id());
        let ns = Self(name.clone());
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "-n", &name, "link", "add", "va", "type", "veth", "peer", "name", "vb",
        ]);
        for dev in ["lo", "va", "vb"] {
            ip(&["-n", &name, "link", "set", dev, "up"]);
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A pin directory under /sys/fs/bpf, detached and removed on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ =
            rampart::filter::detach(&self.0.join(format!("v{}", rampart_common::LAYOUT_VERSION)));
        let _ = rampart::filter::detach(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_attach_with_the_units_capabilities() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root (XDP, network namespaces)");
        return;
    }
    let unit = std::fs::read_to_string(Path::new(UNIT_DIR).join("rampartd.service")).unwrap();
    let caps = unit_values(&unit, "CapabilityBoundingSet");
    assert_eq!(caps.len(), 1);
    assert_eq!(unit_values(&unit, "AmbientCapabilities"), caps);
    // `-all,+bpf,+net_admin,...`: root keeps only these after exec, as under the unit.
    let bounding = std::iter::once("-all".to_owned())
        .chain(
            caps[0]
                .split_whitespace()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");

    let dir = TempDir::new("attach");
    let ns = Netns::new();
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/rampart-test-sd{}",
        std::process::id()
    )));
    let port = free_port();
    let runtime = dir.0.join("run");
    let text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {run:?}\npin_root = {pins:?}\n\n\
         [filter]\ninterfaces = [\"va\"]\nattach_mode = \"skb\"\nprotect = [\"tcp/{port}\"]\n\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\nplain_http = true\n",
        state = dir.0.join("state").display().to_string(),
        run = runtime.display().to_string(),
        pins = pins.0.display().to_string(),
    );
    let config = dir.0.join("rampart.toml");
    gateway_support::write_private(&config, &text);
    let mut notify = NotifySocket::bind(&dir.0);
    // The unit's environment, as far as it matters to the filter: its own
    // mount namespace with /proc showing processes only (ProcSubset=pid) and
    // /sys read-only but for the bpffs below it (ProtectKernelTunables= with
    // ReadWritePaths=/sys/fs/bpf); a 64 KiB RLIMIT_MEMLOCK (BPF memory is
    // charged to the cgroup instead); the bounding set; no new privileges.
    let wrap: Vec<String> = [
        "nsenter".to_owned(),
        format!("--net=/var/run/netns/{}", ns.0),
        "unshare".to_owned(),
        "--mount".to_owned(),
        "--propagation=slave".to_owned(),
        "sh".to_owned(),
        "-c".to_owned(),
        "mount -t proc -o subset=pid proc /proc && mount -o remount,bind,ro /sys && exec \"$0\" \"$@\""
            .to_owned(),
        "prlimit".to_owned(),
        "--memlock=65536:65536".to_owned(),
        "setpriv".to_owned(),
        format!("--bounding-set={bounding}"),
        "--inh-caps=-all".to_owned(),
        "--no-new-privs".to_owned(),
    ]
    .into();
    let mut daemon = spawn(&config, &notify, dir.0.join("rampartd.log"), port, &wrap);
    let ready = notify.expect("READY=1", Duration::from_secs(30), &daemon);
    // At READY=1 the filter is attached: its link is pinned.
    let link = pins
        .0
        .join(format!("v{}", rampart_common::LAYOUT_VERSION))
        .join("link_va_skb");
    let pinned = link.exists() || pins.0.join("link_va_skb").exists();
    assert!(
        pinned,
        "READY=1 before the link is pinned:\n{}",
        daemon.log()
    );
    // The log is written off-thread: it may trail the notification.
    daemon.wait_for_log("filter attached", 0).await;
    let status = status_of(&ready);
    assert!(
        status.starts_with("filtering va (deny 0, allow 0, countries 0); gateway 1 listener"),
        "{status}"
    );
    // The bounded set was in force.
    let pid = daemon.child.id();
    let rampartd_pid = rampartd_pid(pid);
    let proc_status = std::fs::read_to_string(format!("/proc/{rampartd_pid}/status")).unwrap();
    let eff = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    assert_eq!(
        eff, "000000c000001401",
        "CAP_CHOWN, NET_BIND_SERVICE, NET_ADMIN, PERFMON, BPF"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{rampartd_pid}/mountinfo")).unwrap();
    let options = |target: &str| {
        mounts
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .rfind(|f| f.get(4) == Some(&target))
            .map(|f| f.join(" "))
            .unwrap_or_default()
    };
    assert!(options("/proc").contains("subset=pid"), "{mounts}");
    assert!(options("/sys").contains(" ro,"), "{mounts}");
    assert!(options("/sys/fs/bpf").contains(" rw,"), "{mounts}");

    let exit = daemon.terminate().await;
    assert!(exit.success(), "{exit}\n{}", daemon.log());
}

/// The pid of the rampartd that `nsenter` and `setpriv` exec into (they exec,
/// so it is the child itself).
fn rampartd_pid(child: u32) -> u32 {
    let exe = std::fs::read_link(format!("/proc/{child}/exe")).unwrap();
    assert!(
        exe.ends_with("rampartd"),
        "nsenter/setpriv did not exec: {}",
        exe.display()
    );
    child
}
