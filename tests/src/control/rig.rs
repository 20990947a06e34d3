//! One test's whole world: two network namespaces joined by a veth pair, a TCP
//! server on the server side, a real `rampartd` in the server namespace with
//! `[filter]` attached to the server-side veth, its own state, runtime and pin
//! directories, and the CLI pointed at its control socket.
//!
//! On drop, in this order: the daemon is killed, `rampartd --detach` removes
//! the filter (with a configuration known to be valid, in case the test left
//! a bad one), the pins are removed, the namespaces (and their veths) are
//! deleted, the directories removed.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::cli::Cli;
use crate::{
    PinDir,
    daemon::{Daemon, TempDir, rampartd_bin},
    netns::{Pair, Server},
};

/// The protected TCP port the test server listens on (`protect = ["tcp/8080"]`).
pub const PORT: u16 = 8080;
/// A dropped SYN is retransmitted after 1 s: a connection attempt shorter than
/// that sends exactly one SYN, so its result is the kernel's verdict at one
/// instant.
pub const QUICK: Duration = Duration::from_millis(700);

/// What a test adds to the standard configuration.
#[derive(Debug, Clone, Default)]
pub struct RigOptions {
    /// Extra client-side addresses (IPv4 in 198.18.0.0/24, IPv6 in 2001:db8::/64).
    pub client_addrs: Vec<IpAddr>,
    /// Lines added to `[daemon]`.
    pub daemon: String,
    /// Lines added to `[filter]`.
    pub filter: String,
    /// Sections after `[filter]` (`[filter.autoban]`, `[[listener]]`, ...).
    pub sections: String,
    /// The state directory (default: `<dir>/state`), e.g. a small tmpfs.
    pub state_dir: Option<PathBuf>,
}

impl RigOptions {
    /// Options with these client addresses and `[filter]` lines.
    pub fn clients(client: &[&str], filter: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client_addrs: client
                .iter()
                .map(|a| a.parse().with_context(|| format!("client address {a:?}")))
                .collect::<anyhow::Result<_>>()?,
            filter: filter.into(),
            ..Self::default()
        })
    }
}

pub struct Rig {
    daemon: Option<Daemon>,
    pub cli: Cli,
    pub opts: RigOptions,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// `<pin_root>/v<layout>`: where rampartd pins.
    pub pin_dir: PathBuf,
    cleanup_config: PathBuf,
    server: Option<Server>,
    pins: PinDir,
    pub pair: Pair,
    pub dir: TempDir,
}

impl Rig {
    /// Makes the namespaces, writes the configuration and starts rampartd.
    pub fn start(opts: RigOptions) -> anyhow::Result<Self> {
        let rig = Self::prepare(opts)?;
        rig.with_daemon()
    }

    /// Everything but the daemon (for tests that prepare the state directory).
    pub fn prepare(opts: RigOptions) -> anyhow::Result<Self> {
        let dir = TempDir::new()?;
        let pair = Pair::new(&opts.client_addrs)?;
        let pins = PinDir::new();
        let pin_dir = pins
            .path()
            .join(format!("v{}", rampart_common::LAYOUT_VERSION));
        let state_dir = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path.join("state"));
        let runtime_dir = dir.path.join("run");
        let cli = Cli::new(runtime_dir.join("control.sock"))?;
        let config = dir.path.join("rampart.toml");
        let cleanup_config = dir.path.join("cleanup.toml");
        let server = pair.serve(PORT)?;
        let rig = Self {
            daemon: None,
            cli,
            opts,
            config,
            state_dir,
            runtime_dir,
            pin_dir,
            cleanup_config,
            server: Some(server),
            pins,
            pair,
            dir,
        };
        crate::write_private(&rig.cleanup_config, rig.config_text("", ""))?;
        crate::write_private(
            &rig.config,
            rig.config_text(&rig.opts.filter, &rig.opts.sections),
        )?;
        Ok(rig)
    }

    fn with_daemon(mut self) -> anyhow::Result<Self> {
        self.start_daemon()?;
        Ok(self)
    }

    /// The configuration file's text with these `[filter]` lines and sections
    /// (the `[daemon]` section is always the rig's).
    pub fn config_text(&self, filter: &str, sections: &str) -> String {
        format!(
            r#"[daemon]
state_dir = "{state}"
runtime_dir = "{run}"
pin_root = "{pins}"
{daemon}

[filter]
interfaces = ["{iface}"]
attach_mode = "native"
protect = ["tcp/{PORT}"]
{filter}

{sections}
"#,
            state = self.state_dir.display(),
            run = self.runtime_dir.display(),
            pins = self.pins.path().display(),
            daemon = self.opts.daemon,
            iface = self.pair.srv_if,
        )
    }

    /// Rewrites the configuration file with other `[filter]` lines (the
    /// sections stay).
    pub fn write_filter_config(&self, filter: &str) -> anyhow::Result<()> {
        crate::write_private(&self.config, self.config_text(filter, &self.opts.sections))?;
        Ok(())
    }

    /// Writes `config` as the configuration file and asks rampartd to reload it.
    pub fn reload_with(&self, config: &str) -> anyhow::Result<super::Run> {
        crate::write_private(&self.config, config)?;
        Ok(self.cli.run(&["reload"]))
    }

    /// Rewrites the configuration file from [`Self::opts`] (after a test
    /// changed them, e.g. to name a backend it started).
    pub fn write_config(&self) -> anyhow::Result<()> {
        crate::write_private(
            &self.config,
            self.config_text(&self.opts.filter, &self.opts.sections),
        )?;
        Ok(())
    }

    /// Starts rampartd (again) on the rig's configuration.
    pub fn start_daemon(&mut self) -> anyhow::Result<()> {
        if self.daemon.is_some() {
            bail!("rampartd is already running");
        }
        self.daemon = Some(Daemon::start(&self.pair.srv, &self.config)?);
        Ok(())
    }

    pub fn daemon(&self) -> anyhow::Result<&Daemon> {
        self.daemon.as_ref().context("rampartd is not running")
    }

    pub fn daemon_mut(&mut self) -> anyhow::Result<&mut Daemon> {
        self.daemon.as_mut().context("rampartd is not running")
    }

    /// Runs rampartd on `config` in the server namespace when it is expected to
    /// refuse to start: its exit code (`None`: still running after 15 s, then
    /// killed) and its standard error.
    pub fn start_refused(&self, config: &Path) -> anyhow::Result<(Option<i32>, String)> {
        use std::io::Read as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.pair.srv))
            .arg(rampartd_bin()?)
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("nsenter rampartd")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        Ok((status, stderr))
    }

    /// rampartd's log so far (empty when not running).
    pub fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// Waits until rampartd's log contains `needle` ([`Daemon::wait_for_log`]): its
    /// log is written by its own thread, so a line may come just after a reply.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.daemon
            .as_ref()
            .context("rampartd is not running")?
            .wait_for_log(needle, timeout)
    }

    /// SIGTERMs rampartd and reaps it: its exit code and its log.
    pub fn stop_daemon(&mut self) -> anyhow::Result<(Option<i32>, String)> {
        let mut d = self.daemon.take().context("rampartd is not running")?;
        d.signal(libc::SIGTERM);
        let code = d.wait(Duration::from_secs(60))?;
        Ok((code, d.log()))
    }

    /// SIGKILLs rampartd and reaps it; the pinned filter stays.
    pub fn kill_daemon(&mut self) -> anyhow::Result<()> {
        if let Some(mut d) = self.daemon.take() {
            d.signal(libc::SIGKILL);
            d.wait(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// The server address of `src`'s family.
    pub fn server_addr(&self, src: IpAddr) -> IpAddr {
        if src.is_ipv4() {
            self.pair.srv_v4
        } else {
            self.pair.srv_v6
        }
    }

    /// Whether a TCP connection from `src` (an address of the client side) to
    /// the protected port completes (one SYN: see [`QUICK`]).
    pub fn reach(&self, src: &str) -> bool {
        self.reach_port(src, PORT)
    }

    pub fn reach_port(&self, src: &str, port: u16) -> bool {
        match src.parse::<IpAddr>() {
            Ok(src) => self.pair.connects(src, self.server_addr(src), port, QUICK),
            Err(_) => false,
        }
    }

    /// Polls until `reach(src) == expected`; how long that took, or `None`.
    pub fn wait_reach(&self, src: &str, expected: bool, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.reach(src) == expected {
                return Some(start.elapsed());
            }
            if expected {
                // A failed attempt already took QUICK.
                continue;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// A file in the rig's directory, written with `text`.
    pub fn file(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path.join(name);
        crate::write_private(&path, text)?;
        Ok(path)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    /// Whether an XDP program is attached to `iface` in the server namespace
    /// (`ip -d link show`).
    pub fn xdp_attached(&self, iface: &str) -> anyhow::Result<bool> {
        Ok(self.link_details(iface)?.contains("prog/xdp"))
    }

    /// `ip -d link show dev IFACE` in the server namespace (`xdpgeneric`: a
    /// program attached in skb mode).
    pub fn link_details(&self, iface: &str) -> anyhow::Result<String> {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.pair.srv, "-d", "link", "show", "dev", iface])
            .output()
            .context("ip link show")?;
        if !out.status.success() {
            bail!(
                "ip link show {iface}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The configuration text with these `[filter]` lines and `interfaces`
    /// instead of the rig's one.
    pub fn config_with_interfaces(&self, filter: &str, interfaces: &[&str]) -> String {
        let list: Vec<String> = interfaces.iter().map(|i| format!("{i:?}")).collect();
        self.config_text(filter, &self.opts.sections).replace(
            &format!("interfaces = [\"{}\"]", self.pair.srv_if),
            &format!("interfaces = [{}]", list.join(", ")),
        )
    }

    /// The pin root (for messages).
    pub fn pin_root(&self) -> &Path {
        self.pins.path()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.signal(libc::SIGKILL);
            let _ = d.wait(Duration::from_secs(10));
        }
        // The user's way first; then the library's, whatever happened.
        match rampartd_bin() {
            Ok(bin) => {
                let out = std::process::Command::new(bin)
                    .arg("--detach")
                    .arg("--config")
                    .arg(&self.cleanup_config)
                    .output();
                match out {
                    Ok(o) if o.status.success() => {}
                    Ok(o) => eprintln!(
                        "cleanup: rampartd --detach failed: {}",
                        String::from_utf8_lossy(&o.stderr)
                    ),
                    Err(e) => eprintln!("cleanup: rampartd --detach: {e}"),
                }
            }
            Err(e) => eprintln!("cleanup: {e}"),
        }
        if let Err(e) = rampart::filter::detach(&self.pin_dir) {
            eprintln!("cleanup of {}: {e}", self.pin_dir.display());
        }
        self.server.take();
        // The remaining fields drop in order: pins (the root), pair
        // (namespaces and veths), dir.
    }
}
