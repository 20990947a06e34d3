//! `cargo xtask bench xdp`: runs the XDP benchmark (tests/src/bin/bench-xdp.rs)
//! in release mode and writes its figures into docs/benchmarks.md with the
//! command that reproduces them and the machine they come from.

use std::{fmt::Write as _, path::PathBuf};

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
    /// Country data at real size: a directory of <cc>.cidr zone files (as
    /// ../shared/data/geo). Without it a table with the real prefix-length
    /// mix is generated.
    #[arg(long, value_name = "DIR")]
    geo: Option<PathBuf>,
    /// BPF_PROG_TEST_RUN repeats per measurement (at least 1,000,000 for
    /// published figures).
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Seconds of trafgen traffic per measurement under traffic.
    #[arg(long, default_value_t = 3)]
    traffic_secs: u64,
    /// Print only; leave docs/benchmarks.md alone.
    #[arg(long)]
    no_write: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum What {
    /// ns per packet of the XDP program, side by side with xdp-filter.
    Xdp,
}

/// The section of docs/benchmarks.md this command owns.
const BEGIN: &str = "<!-- bench xdp: begin (written by `cargo xtask bench xdp`) -->";
const END: &str = "<!-- bench xdp: end -->";

pub(crate) fn run(options: &Options) -> Result<()> {
    let What::Xdp = options.what;
    if !setup::is_root() {
        bail!("the XDP benchmark loads programs and creates namespaces: run it as root");
    }
    setup::ensure(Scope::Host, Mode::Install)?;
    let root = process::workspace_root();
    let geo = options.geo.clone().or_else(|| {
        let shared = root.join("../shared/data/geo");
        shared.is_dir().then_some(shared)
    });
    let out = std::env::temp_dir().join(format!("rampart-bench-{}.md", std::process::id()));
    process::run(process::cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        PRIVILEGED_TESTS_PACKAGE,
        "--bin",
        "bench-xdp",
    ]))?;
    // The benchmark (and the test runs it makes) on CPU 1; trafgen, and with
    // it the veth receive path, runs on CPU 0.
    let mut cmd = std::process::Command::new("taskset");
    cmd.args(["-c", "1"])
        .arg(root.join("target/release/bench-xdp"));
    cmd.args(["--repeat", &options.repeat.to_string()]);
    cmd.args(["--traffic-secs", &options.traffic_secs.to_string()]);
    cmd.arg("--out").arg(&out);
    if let Some(geo) = &geo {
        cmd.arg("--geo").arg(geo);
    }
    process::run(&mut cmd)?;
    let figures = std::fs::read_to_string(&out).with_context(|| out.display().to_string())?;
    let _ = std::fs::remove_file(&out);
    if options.no_write {
        return Ok(());
    }
    let mut reproduce = String::from("cargo xtask bench xdp");
    if options.geo.is_some() || geo.is_some() {
        reproduce.push_str(" --geo ../shared/data/geo");
    }
    let mut section = String::new();
    writeln!(section, "{BEGIN}")?;
    writeln!(section, "Reproduce (as root): `{reproduce}`\n")?;
    writeln!(section, "Machine: {}\n", machine()?)?;
    section.push_str(&figures);
    writeln!(section, "{END}")?;
    let path = root.join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n\n".to_string());
    let doc = match (doc.find(BEGIN), doc.find(END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{}{}", &doc[..a], section, &doc[b + END.len() + 1..])
        }
        _ => format!("{doc}\n{section}"),
    };
    std::fs::write(&path, doc).with_context(|| path.display().to_string())?;
    println!("figures written to {}", path.display());
    Ok(())
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
    let kernel = process::stdout(std::process::Command::new("uname").arg("-r"))?;
    Ok(format!(
        "{model}, {cores} cores, {} GiB, Linux {}",
        mem_kb / 1024 / 1024,
        kernel.trim()
    ))
}
