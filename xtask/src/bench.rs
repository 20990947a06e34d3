//! `cargo xtask bench xdp|gateway|control|restart`: runs a benchmark (tests/src/bin/bench-*.rs)
//! in release mode and writes its figures into docs/benchmarks.md with the
//! command that reproduces them and the machine they come from.

use std::{fmt::Write as _, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{
    PRIVILEGED_TESTS_PACKAGE, process,
    setup::{self, Mode, Scope},
};

#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// What to measure.
    #[arg(value_enum)]
    what: What,
    /// xdp: country data at real size, a directory of <cc>.cidr zone files (as
    /// ../shared/data/geo). Without it a table with the real prefix-length
    /// mix is generated.
    #[arg(long, value_name = "DIR")]
    geo: Option<PathBuf>,
    /// xdp: BPF_PROG_TEST_RUN repeats per measurement (at least 1,000,000 for
    /// published figures).
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// xdp: seconds of trafgen traffic per measurement under traffic.
    #[arg(long, default_value_t = 3)]
    traffic_secs: u64,
    /// gateway: interleaved rounds (rampartd, HAProxy, backend directly); nine, so
    /// that the median per-round ratio outlasts a few rounds the VM disturbed.
    #[arg(long, default_value_t = 9)]
    rounds: u32,
    /// gateway: seconds of wrk per system and round; restart: seconds of wrk per
    /// system.
    #[arg(long, default_value_t = 8)]
    secs: u64,
    /// restart: restarts during each wrk run.
    #[arg(long, default_value_t = 3)]
    restarts: u32,
    /// gateway: both gateways log one line per request (off by default).
    #[arg(long)]
    access_log: bool,
    /// gateway: add an RS256 JWT check and a claim header to the work (HAProxy runs
    /// the anchor's jwt_verify steps).
    #[arg(long)]
    jwt: bool,
    /// gateway: like --jwt, with rampartd's verified-token cache off.
    #[arg(long)]
    jwt_no_cache: bool,
    /// control: samples per system and deny-list size (one fresh address each).
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Print only; leave docs/benchmarks.md alone.
    #[arg(long)]
    no_write: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum What {
    /// ns per packet of the XDP program, side by side with xdp-filter.
    Xdp,
    /// req/s and latency of rampartd's TLS gateway, side by side with HAProxy.
    Gateway,
    /// `rampart deny add` to enforced in XDP, side by side with xdp-filter.
    Control,
    /// Requests failed while rampartd restarts under wrk load, with and without
    /// the listening socket handed over, and HAProxy's seamless reload.
    Restart,
}

impl What {
    fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Gateway => "gateway",
            Self::Control => "control",
            Self::Restart => "restart",
        }
    }

    /// The markers around the section of docs/benchmarks.md this command owns: one
    /// section per variant (`gateway`, `gateway --jwt`, ...).
    fn markers(self, variant: &str) -> (String, String) {
        let name = self.name();
        (
            format!(
                "<!-- bench {name}{variant}: begin (written by `cargo xtask bench {name}{variant}`) -->"
            ),
            format!("<!-- bench {name}{variant}: end -->"),
        )
    }
}

pub(crate) fn run(options: &Options) -> Result<()> {
    if !setup::is_root() {
        bail!(
            "the benchmarks load XDP programs and create namespaces (xdp, control), or \
             install and run HAProxy, nginx and wrk (gateway): run them as root"
        );
    }
    setup::ensure(Scope::Host, Mode::Install)?;
    let out = std::env::temp_dir().join(format!("rampart-bench-{}.md", std::process::id()));
    let reproduce = match options.what {
        What::Xdp => xdp(options, &out)?,
        What::Gateway => gateway(options, &out)?,
        What::Control => control(options, &out)?,
        What::Restart => restart(options, &out)?,
    };
    let figures = std::fs::read_to_string(&out).with_context(|| out.display().to_string())?;
    let _ = std::fs::remove_file(&out);
    if options.no_write {
        return Ok(());
    }
    let variant = match options.what {
        What::Gateway if options.jwt_no_cache => " --jwt-no-cache",
        What::Gateway if options.jwt => " --jwt",
        _ => "",
    };
    let (begin, end) = options.what.markers(variant);
    let mut section = String::new();
    writeln!(section, "{begin}")?;
    writeln!(section, "Reproduce (as root): `{reproduce}`\n")?;
    writeln!(section, "Machine: {}\n", machine()?)?;
    section.push_str(&figures);
    writeln!(section, "{end}")?;
    let path = process::workspace_root().join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n\n".to_string());
    let doc = match (doc.find(&begin), doc.find(&end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{}{}", &doc[..a], section, &doc[b + end.len() + 1..])
        }
        _ => format!("{doc}\n{section}"),
    };
    std::fs::write(&path, doc).with_context(|| path.display().to_string())?;
    println!("figures written to {}", path.display());
    Ok(())
}

/// Builds `bin` of the tests crate in release mode; returns its path.
fn build_bench(bin: &str) -> Result<PathBuf> {
    process::run(process::cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        PRIVILEGED_TESTS_PACKAGE,
        "--bin",
        bin,
    ]))?;
    Ok(process::workspace_root().join("target/release").join(bin))
}

/// Runs the XDP benchmark, its figures to `out`; returns the reproduce command.
fn xdp(options: &Options, out: &std::path::Path) -> Result<String> {
    let root = process::workspace_root();
    let geo = options.geo.clone().or_else(|| {
        let shared = root.join("../shared/data/geo");
        shared.is_dir().then_some(shared)
    });
    let bench = build_bench("bench-xdp")?;
    // The benchmark (and the test runs it makes) on CPU 1; trafgen, and with
    // it the veth receive path, runs on CPU 0.
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1"]).arg(bench);
    cmd.args(["--repeat", &options.repeat.to_string()]);
    cmd.args(["--traffic-secs", &options.traffic_secs.to_string()]);
    cmd.arg("--out").arg(out);
    if let Some(geo) = &geo {
        cmd.arg("--geo").arg(geo);
    }
    process::run(&mut cmd)?;
    let mut reproduce = String::from("cargo xtask bench xdp");
    if geo.is_some() {
        reproduce.push_str(" --geo ../shared/data/geo");
    }
    Ok(reproduce)
}

/// Builds the named binaries of the rampart package in release mode (into
/// target/release): what the benchmarks measure is what ships.
fn build_release(bins: &[&str]) -> Result<()> {
    let mut cmd = process::cargo();
    cmd.args(["build", "--release", "--quiet", "-p", "rampart"]);
    for bin in bins {
        cmd.args(["--bin", bin]);
    }
    process::run(&mut cmd)
}

/// Runs the gateway benchmark, its figures to `out`; returns the reproduce command.
fn gateway(options: &Options, out: &std::path::Path) -> Result<String> {
    // Both in release mode: the figures are the gateway's, not a debug build's.
    build_release(&["rampartd"])?;
    let bench = build_bench("bench-gateway")?;
    // The driver pins what it starts itself: the gateway under test to CPU 1,
    // wrk and the backend to CPU 0. It mostly waits for wrk.
    let mut cmd = Command::new(bench);
    cmd.arg("--rampartd")
        .arg(process::workspace_root().join("target/release/rampartd"));
    cmd.args(["--rounds", &options.rounds.to_string()]);
    cmd.args(["--secs", &options.secs.to_string()]);
    if options.access_log {
        cmd.arg("--access-log");
    }
    if options.jwt_no_cache {
        cmd.arg("--jwt-no-cache");
    } else if options.jwt {
        cmd.arg("--jwt");
    }
    cmd.arg("--out").arg(out);
    process::run(&mut cmd)?;
    let mut reproduce = String::from("cargo xtask bench gateway");
    if options.access_log {
        reproduce.push_str(" --access-log");
    }
    if options.jwt_no_cache {
        reproduce.push_str(" --jwt-no-cache");
    } else if options.jwt {
        reproduce.push_str(" --jwt");
    }
    if options.rounds != 9 {
        write!(reproduce, " --rounds {}", options.rounds)?;
    }
    if options.secs != 8 {
        write!(reproduce, " --secs {}", options.secs)?;
    }
    Ok(reproduce)
}

/// Runs the control-plane benchmark, its figures to `out`; returns the reproduce command.
fn control(options: &Options, out: &std::path::Path) -> Result<String> {
    // The daemon and the CLI as shipped: release builds.
    build_release(&["rampartd", "rampart"])?;
    let bench = build_bench("bench-control")?;
    let release = process::workspace_root().join("target/release");
    // The benchmark, its probers, the CLI and xdp-filter's command on CPU 0; it
    // starts rampartd on CPU 1 itself.
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"]).arg(bench);
    cmd.arg("--rampartd").arg(release.join("rampartd"));
    cmd.arg("--rampart").arg(release.join("rampart"));
    cmd.args(["--samples", &options.samples.to_string()]);
    cmd.arg("--out").arg(out);
    process::run(&mut cmd)?;
    let mut reproduce = String::from("cargo xtask bench control");
    if options.samples != 200 {
        write!(reproduce, " --samples {}", options.samples)?;
    }
    Ok(reproduce)
}

/// Runs the restart benchmark, its figures to `out`; returns the reproduce command.
fn restart(options: &Options, out: &std::path::Path) -> Result<String> {
    build_release(&["rampartd"])?;
    let bench = build_bench("bench-restart")?;
    // The driver pins what it starts itself: the gateway to CPU 1, wrk and the
    // backend to CPU 0.
    let mut cmd = Command::new(bench);
    cmd.arg("--rampartd")
        .arg(process::workspace_root().join("target/release/rampartd"));
    cmd.args(["--secs", &options.secs.to_string()]);
    cmd.args(["--restarts", &options.restarts.to_string()]);
    cmd.arg("--out").arg(out);
    process::run(&mut cmd)?;
    let mut reproduce = String::from("cargo xtask bench restart");
    if options.secs != 8 {
        write!(reproduce, " --secs {}", options.secs)?;
    }
    if options.restarts != 3 {
        write!(reproduce, " --restarts {}", options.restarts)?;
    }
    Ok(reproduce)
}

/// One line: CPU model, cores, memory, kernel.
fn machine() -> Result<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map_or("unknown CPU", str::trim)
        .to_string();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kernel = process::stdout(Command::new("uname").arg("-r"))?;
    Ok(format!(
        "{model}, {cores} cores, {} GiB, Linux {}",
        mem_kb / 1024 / 1024,
        kernel.trim()
    ))
}
