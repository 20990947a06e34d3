//! `cargo xtask run` (alias `demo`): the whole of rampart on a pair of network
//! namespaces this command creates, so nothing touches the host's real
//! interfaces. rampartd filters in the kernel and is a TLS gateway in front of
//! a demo backend, with a subscription key made by the `rampart` CLI and a
//! token of a demo JWT provider; the commands to try are printed. Ctrl-C
//! stops rampartd, then everything the demo made is removed. `--check` runs
//! every printed command itself and fails if one does not do what it says.
//!
//! Layout (addresses from the benchmarking range 198.18.0.0/15):
//!   rampart-demo-cli  198.18.0.2 (allowed), .3 (denied), .4 (country "xx")
//!          | veth
//!   rampart-demo-srv  198.18.0.1: rampartd's XDP filter on the veth, its
//!                     gateway on :8443 (TLS), the backend on 127.0.0.1:8080,
//!                     the admin listener on 127.0.0.1:9180

mod files;
mod tries;

use std::{
    os::unix::{net::UnixDatagram, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    process,
    setup::{self, Mode, Scope},
};

#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Run every printed command, check each does what it says, clean up and
    /// exit (non-zero if one did not); no waiting for Ctrl-C.
    #[arg(long)]
    pub(crate) check: bool,
}

const SRV: &str = "rampart-demo-srv";
const CLI: &str = "rampart-demo-cli";
const SRV_IF: &str = "rdemo-srv";
const CLI_IF: &str = "rdemo-cli";
const PINS: &str = "/sys/fs/bpf/rampart-demo";
/// The gateway's TLS listener.
const LISTEN: &str = "198.18.0.1:8443";
/// The admin listener (metrics, health), on the server namespace's loopback.
const ADMIN: &str = "127.0.0.1:9180";
/// Where journald takes structured entries; a socket file without a
/// journald behind it refuses connections.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Debian's journald binary, run standalone when systemd is not PID 1.
const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// Everything the demo creates; removed on drop, also after an error.
struct Demo {
    dir: PathBuf,
    /// The rampartd binary, to detach the filter on the way out.
    rampartd: PathBuf,
    daemon: Option<Child>,
    backend: Option<Child>,
    /// journald, when the demo had to start it.
    journald: Option<Child>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            stop(daemon, "rampartd");
        }
        if let Some(mut backend) = self.backend.take() {
            let _ = backend.kill();
            let _ = backend.wait();
        }
        let _ = Command::new(&self.rampartd)
            .arg("--detach")
            .arg("--config")
            .arg(self.dir.join("rampart.toml"))
            .stdout(Stdio::null())
            .status();
        for ns in [SRV, CLI] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir(PINS);
        if let Some(journald) = self.journald.take() {
            stop(journald, "systemd-journald");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("demo cleaned up: namespaces, filter pins and files removed");
    }
}

/// SIGTERM, then SIGKILL if `child` has not exited within 10 s.
fn stop(mut child: Child, name: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own child, which has not been reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(status)) = child.try_wait() {
            println!("{name} exited ({status})");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{name} did not stop within 10 s: killed");
    let _ = child.kill();
    let _ = child.wait();
}

fn ip(args: &[&str]) -> Result<()> {
    process::run(Command::new("ip").args(args))
}

pub(crate) fn run(options: &Options) -> Result<()> {
    if !setup::is_root() {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    setup::ensure(Scope::Host, Mode::Install)?;
    process::run(process::cargo().args(["build", "-p", "rampart", "--bins"]))?;
    let bin = process::workspace_root().join("target/debug");

    // Leftovers of an interrupted demo.
    for ns in [SRV, CLI] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    let dir = std::env::temp_dir().join("rampart-demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut demo = Demo {
        dir: dir.clone(),
        rampartd: bin.join("rampartd"),
        daemon: None,
        backend: None,
        journald: None,
    };

    let journal = if journal_runs() {
        true
    } else if Path::new(JOURNALD).exists() {
        demo.journald = Some(start_journald()?);
        true
    } else {
        println!("no journald here ({JOURNALD} is missing): rampartd logs to this terminal");
        false
    };
    namespaces()?;
    files::write_all(&dir, if journal { "journald" } else { "stderr" })?;

    let backend_ready = dir.join("backend.ready");
    demo.backend = Some(
        Command::new("ip")
            .args(["netns", "exec", SRV, "python3"])
            .arg(dir.join("backend.py"))
            .arg(files::BACKEND)
            .arg(&backend_ready)
            .stdout(Stdio::null())
            // Its own process group: Ctrl-C is rampartd's to handle.
            .process_group(0)
            .spawn()
            .context("starting the demo backend")?,
    );
    wait_for_backend(&mut demo, &backend_ready)?;

    // The demo owns Ctrl-C's aftermath: rampartd gets the signal and exits,
    // this process carries on to clean up.
    // SAFETY: setting a signal disposition has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let config = dir.join("rampart.toml");
    demo.daemon = Some(
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{SRV}"))
            .arg(&demo.rampartd)
            .arg("--config")
            .arg(&config)
            .spawn()
            .context("starting rampartd")?,
    );
    wait_until_ready(&mut demo)?;

    let socket = dir.join("run/control.sock");
    let key = subscription_key(&bin.join("rampart"), &socket)?;
    let env_file = dir.join("env");
    std::fs::write(
        &env_file,
        format!(
            "export PATH=\"{}:$PATH\"\nexport RAMPART_SOCKET=\"{}\"\nexport KEY=\"{key}\"\nexport TOKEN=\"{}\"\nexport RAMPARTD_PID={}\n",
            bin.display(),
            socket.display(),
            files::token()?,
            // nsenter execs rampartd: the child's pid is rampartd's.
            demo.daemon.as_ref().map_or(0, Child::id),
        ),
    )
    .with_context(|| format!("cannot write {}", env_file.display()))?;

    let tries = tries::all(&tries::Setup { journal });
    println!(
        "\nrampartd is filtering {SRV_IF} in namespace {SRV} and serving https://{LISTEN}/ \
         (config: {}).",
        config.display()
    );
    println!("Subscription \"demo-client\" (product starter) has key {key}.");
    if journal {
        println!("rampartd logs to the journal: journalctl -t rampartd -f");
    }
    println!("Try, as root in another terminal:");
    tries::print(&tries, &env_file);
    println!("Ctrl-C stops rampartd (the filter stays attached) and the demo cleans up.\n");

    let mut failed = 0;
    if options.check {
        failed = tries::check(&tries, &env_file)?;
        println!(
            "demo check: {} of {} commands did what they say",
            tries.len() - failed,
            tries.len()
        );
        if let Some(daemon) = demo.daemon.take() {
            stop(daemon, "rampartd");
        }
    } else if let Some(daemon) = demo.daemon.as_mut() {
        let status = daemon.wait()?;
        println!("rampartd exited ({status})");
        demo.daemon = None;
    }
    drop(demo);
    if failed > 0 {
        bail!("{failed} demo command(s) did not do what they say");
    }
    Ok(())
}

/// The two namespaces and the veth pair between them.
fn namespaces() -> Result<()> {
    ip(&["netns", "add", SRV])?;
    ip(&["netns", "add", CLI])?;
    ip(&[
        "link", "add", SRV_IF, "netns", SRV, "type", "veth", "peer", "name", CLI_IF, "netns", CLI,
    ])?;
    for (ns, dev) in [(SRV, SRV_IF), (CLI, CLI_IF)] {
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    ip(&["-n", SRV, "addr", "add", "198.18.0.1/24", "dev", SRV_IF])?;
    // The first address is the source the client uses unless told otherwise.
    for a in ["198.18.0.2/24", "198.18.0.3/24", "198.18.0.4/24"] {
        ip(&["-n", CLI, "addr", "add", a, "dev", CLI_IF])?;
    }
    Ok(())
}

/// Whether a journald takes entries: its socket accepts a connection.
fn journal_runs() -> bool {
    UnixDatagram::unbound().is_ok_and(|s| s.connect(JOURNAL_SOCKET).is_ok())
}

/// Starts journald standalone (as on a machine whose PID 1 is not systemd)
/// and waits until it takes entries.
fn start_journald() -> Result<Child> {
    println!("no journald runs: starting {JOURNALD} for the demo (stopped at the end)");
    let child = Command::new(JOURNALD)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {JOURNALD}"))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if journal_runs() {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(child, "systemd-journald");
    bail!("{JOURNALD} did not open {JOURNAL_SOCKET} within 10 s")
}

/// Waits until the demo backend listens (it writes `ready` once bound), so
/// that the first proxied request does not race a slow interpreter start.
fn wait_for_backend(demo: &mut Demo, ready: &Path) -> Result<()> {
    wait_while_running(
        &mut demo.backend,
        "the demo backend",
        "the demo backend did not listen within 30 s",
        Duration::from_millis(50),
        || ready.exists(),
    )
}

/// Waits until the gateway answers the allowed client over TLS, which also
/// means the filter is attached (rampartd attaches before it listens).
fn wait_until_ready(demo: &mut Demo) -> Result<()> {
    wait_while_running(
        &mut demo.daemon,
        "rampartd",
        "rampartd's gateway did not answer within 30 s",
        Duration::from_millis(200),
        || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    CLI,
                    "curl",
                    "-sk",
                    "-o",
                    "/dev/null",
                    "-m",
                    "1",
                ])
                .arg(format!("https://{LISTEN}/"))
                .status()
                .is_ok_and(|s| s.success())
        },
    )
}

/// Polls `ready` every `pause` for up to 30 s while `child` (`what`) runs;
/// fails at once if it exits (taking it out of `child`, reaped), with
/// `timed_out` if it never gets ready.
fn wait_while_running(
    child: &mut Option<Child>,
    what: &str,
    timed_out: &str,
    pause: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(running) = child.as_mut()
            && let Some(status) = running.try_wait()?
        {
            *child = None;
            bail!("{what} exited at start ({status}); its error is above");
        }
        if ready() {
            return Ok(());
        }
        std::thread::sleep(pause);
    }
    bail!("{timed_out}")
}

/// Creates subscription "demo-client" of product "starter" with the real CLI
/// and returns its primary key.
fn subscription_key(rampart: &Path, socket: &Path) -> Result<String> {
    let json = process::stdout(Command::new(rampart).arg("--socket").arg(socket).args([
        "--json",
        "keys",
        "create",
        "demo-client",
        "--product",
        "starter",
    ]))?;
    let created: serde_json::Value =
        serde_json::from_str(&json).context("`rampart keys create --json` printed no JSON")?;
    created["primary"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no primary key in {json}"))
}
