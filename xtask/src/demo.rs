//! `cargo xtask demo`: rampartd on a pair of network namespaces this command
//! creates, so nothing touches the host's real interfaces. Prints what to
//! try; Ctrl-C stops rampartd, then everything the demo made is removed.
//!
//! Layout (addresses from the benchmarking range 198.18.0.0/15):
//!   rampart-demo-cli  198.18.0.2 (allowed), .3 (denied), .4 (country "xx")
//!          | veth
//!   rampart-demo-srv  198.18.0.1, an HTTP server on :8080, rampartd on the veth

use std::{
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
    /// Run the example requests, print their outcome and clean up (no
    /// waiting for Ctrl-C).
    #[arg(long)]
    check: bool,
}

const SRV: &str = "rampart-demo-srv";
const CLI: &str = "rampart-demo-cli";
const SRV_IF: &str = "rdemo-srv";
const CLI_IF: &str = "rdemo-cli";
const PINS: &str = "/sys/fs/bpf/rampart-demo";

/// Everything the demo creates; removed on drop, also after an error.
struct Demo {
    dir: PathBuf,
    server: Option<Child>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let bin = self.dir.join("rampartd-path");
        if let Ok(rampartd) = std::fs::read_to_string(&bin) {
            let _ = Command::new(rampartd.trim())
                .arg("--detach")
                .arg("--config")
                .arg(self.dir.join("rampart.toml"))
                .stdout(Stdio::null())
                .status();
        }
        for ns in [SRV, CLI] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir(PINS);
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("demo cleaned up: namespaces, filter pins and files removed");
    }
}

fn ip(args: &[&str]) -> Result<()> {
    process::run(Command::new("ip").args(args))
}

pub(crate) fn run(options: &Options) -> Result<()> {
    if !setup::is_root() {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    setup::ensure(Scope::Host, Mode::Install)?;
    process::run(process::cargo().args(["build", "-p", "rampart", "--bin", "rampartd"]))?;
    let rampartd = process::workspace_root().join("target/debug/rampartd");

    // Leftovers of an interrupted demo.
    for ns in [SRV, CLI] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    let dir = std::env::temp_dir().join("rampart-demo");
    std::fs::create_dir_all(&dir)?;
    let mut demo = Demo {
        dir: dir.clone(),
        server: None,
    };
    std::fs::write(dir.join("rampartd-path"), rampartd.display().to_string())?;

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
    for a in ["198.18.0.2/24", "198.18.0.3/24", "198.18.0.4/24"] {
        ip(&["-n", CLI, "addr", "add", a, "dev", CLI_IF])?;
    }

    std::fs::write(
        dir.join("countries.csv"),
        "network,country\n198.18.0.4/32,xx\n198.18.0.0/24,aa\n",
    )?;
    let config = dir.join("rampart.toml");
    std::fs::write(&config, demo_config(&dir))?;
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), "hello from behind rampart\n")?;
    demo.server = Some(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                SRV,
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "198.18.0.1",
                "--directory",
            ])
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the demo HTTP server")?,
    );

    // The demo owns Ctrl-C's aftermath: rampartd gets the signal and exits,
    // this process carries on to clean up.
    // SAFETY: setting a signal disposition has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let mut daemon = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{SRV}"))
        .arg(&rampartd)
        .arg("--config")
        .arg(&config)
        .spawn()
        .context("starting rampartd")?;
    wait_for_port()?;
    println!(
        "\nrampartd is filtering {SRV_IF} in namespace {SRV} (config: {}).",
        config.display()
    );
    println!("Try, in another terminal:");
    let tries = [
        ("198.18.0.2", "allowed: prints the page"),
        ("198.18.0.3", "on the deny list: times out (dropped in XDP)"),
        ("198.18.0.4", "country xx is blocked: times out"),
    ];
    for (src, what) in tries {
        println!(
            "  ip netns exec {CLI} curl -m 2 --interface {src} http://198.18.0.1:8080/   # {what}"
        );
    }
    println!("  nsenter --net=/var/run/netns/{SRV} bpftool net show   # the attached program");
    println!("Ctrl-C stops rampartd (the filter stays attached) and the demo cleans up.\n");
    if options.check {
        std::thread::sleep(Duration::from_millis(500));
        for (src, what) in tries {
            let ok = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    CLI,
                    "curl",
                    "-s",
                    "-m",
                    "2",
                    "--interface",
                    src,
                    "http://198.18.0.1:8080/",
                ])
                .stdout(Stdio::null())
                .status()?
                .success();
            println!(
                "{src}: {} ({what})",
                if ok { "connected" } else { "no answer" }
            );
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    }
    let status = daemon.wait()?;
    println!("rampartd exited ({status})");
    drop(demo);
    Ok(())
}

fn demo_config(dir: &Path) -> String {
    format!(
        r#"# rampart demo configuration (written by `cargo xtask demo`)
[daemon]
state_dir = "{state}"
runtime_dir = "{run}"
pin_root = "{PINS}"

[filter]
interfaces = ["{SRV_IF}"]
attach_mode = "native"
protect = ["tcp/8080"]
deny = ["198.18.0.3"]

[filter.geo]
database = "{geo}"
block = ["xx"]
"#,
        state = dir.join("state").display(),
        run = dir.join("run").display(),
        geo = dir.join("countries.csv").display(),
    )
}

/// Waits until the demo server answers from the allowed address.
fn wait_for_port() -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                CLI,
                "curl",
                "-s",
                "-m",
                "1",
                "--interface",
                "198.18.0.2",
                "http://198.18.0.1:8080/",
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the demo server did not answer within 20 s")
}
