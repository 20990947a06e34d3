//! `cargo xtask setup`: installs what the build and the tests need beyond
//! rustup's stable and nightly toolchains, following the verified recipe of
//! the eBPF toolchain notes. Every step checks first, so a second run only
//! reports.
//!
//! The eBPF object is built with the nightly (`-Z build-std=core`, hence
//! rust-src) and linked by bpf-linker, which must use the same LLVM as the
//! nightly. There is no system LLVM of that version, so bpf-linker is built
//! against the `libLLVM` shared library the nightly ships.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::process;

/// The toolchain daemon/build.rs hands to aya-build (`Toolchain::Custom`).
const NIGHTLY: &str = "nightly";

const BPF_LINKER_VERSION: &str = "0.13.0";

/// The LLVM majors bpf-linker 0.13.0 has an `llvm-<major>` feature for.
const BPF_LINKER_LLVM_MAJORS: [u32; 3] = [21, 22, 23];

/// Debian packages the privileged tests and the benchmarks call.
///
/// haproxy, nginx and wrk are for `cargo xtask bench gateway`, which starts
/// its own nginx and HAProxy with their own configurations on free loopback
/// ports. Installing them may start Debian's nginx and haproxy services (nginx
/// on port 80, unless a policy-rc.d forbids starting services); the benchmark
/// neither needs nor disturbs them.
const PACKAGES: [&str; 11] = [
    "iproute2",
    "bpftool",
    "xdp-tools",
    "netsniff-ng",
    "ethtool",
    "curl",
    "openssl",
    "python3",
    "haproxy",
    "nginx",
    "wrk",
];

const BPFFS: &str = "/sys/fs/bpf";

const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Only report what is missing (exit status 1 if anything is); install nothing.
    #[arg(long)]
    check: bool,
}

pub(crate) fn run(options: &Options) -> Result<()> {
    let mode = if options.check {
        Mode::Check
    } else {
        Mode::Install
    };
    ensure(Scope::Host, mode)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Install,
    Check,
}

/// How much of the machine a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// What compiling needs: the nightly's rust-src and bpf-linker (all under
    /// `$HOME`, no root needed).
    Toolchain,
    /// Also what the privileged tests and the benchmarks need from the host:
    /// kernel BTF, Debian packages, bpffs.
    Host,
}

/// Brings the machine to `scope`, or with `Mode::Check` reports how far it is.
pub(crate) fn ensure(scope: Scope, mode: Mode) -> Result<()> {
    let nightly = Nightly::probe()?;
    println!(
        "nightly toolchain: ok ({}, LLVM {})",
        nightly.version, nightly.llvm_version
    );

    let host_steps: &[Step] = match scope {
        Scope::Toolchain => &[],
        Scope::Host => &HOST_STEPS,
    };
    let mut missing = Vec::new();
    for step in TOOLCHAIN_STEPS.iter().chain(host_steps) {
        let state =
            (step.check)(&nightly).with_context(|| format!("{}: check failed", step.name))?;
        let why = match state {
            State::Ready(detail) => {
                println!("{}: ok ({detail})", step.name);
                continue;
            }
            State::Missing(why) => why,
        };
        let install = match (mode, step.install) {
            (Mode::Check, _) => {
                println!("{}: MISSING ({why})", step.name);
                missing.push(step.name);
                continue;
            }
            (Mode::Install, None) => {
                bail!(
                    "{}: {why}; this is a prerequisite that setup cannot install",
                    step.name
                )
            }
            (Mode::Install, Some(install)) => install,
        };
        println!("{}: {why}; installing", step.name);
        install(&nightly).with_context(|| format!("{}: installation failed", step.name))?;
        match (step.check)(&nightly).with_context(|| format!("{}: check failed", step.name))? {
            State::Ready(detail) => println!("{}: ok ({detail})", step.name),
            State::Missing(why) => bail!("{}: still missing after installation: {why}", step.name),
        }
    }
    if !missing.is_empty() {
        bail!(
            "not ready: {}; run `cargo xtask setup` to install what is missing",
            missing.join(", ")
        );
    }
    Ok(())
}

enum State {
    /// Present; the detail says what was found.
    Ready(String),
    /// Absent or unusable; the text says why.
    Missing(String),
}

struct Step {
    name: &'static str,
    check: fn(&Nightly) -> Result<State>,
    /// `None` for prerequisites that setup reports but cannot provide.
    install: Option<fn(&Nightly) -> Result<()>>,
}

const TOOLCHAIN_STEPS: [Step; 3] = [
    Step {
        name: "rust-src",
        check: |nightly| check_component(nightly, "rust-src"),
        install: Some(|_| add_component("rust-src")),
    },
    // `cargo xtask test` lints the eBPF crate for its own target, with the nightly.
    Step {
        name: "clippy (nightly)",
        check: |nightly| check_component(nightly, "clippy"),
        install: Some(|_| add_component("clippy")),
    },
    Step {
        name: "bpf-linker",
        check: check_bpf_linker,
        install: Some(install_bpf_linker),
    },
];

const HOST_STEPS: [Step; 3] = [
    Step {
        name: "kernel BTF",
        check: check_kernel_btf,
        install: None,
    },
    Step {
        name: "Debian packages",
        check: check_packages,
        install: Some(install_packages),
    },
    Step {
        name: "bpffs",
        check: check_bpffs,
        install: Some(mount_bpffs),
    },
];

/// What the eBPF build needs to know about the nightly toolchain.
struct Nightly {
    /// The first line of `rustc -vV`.
    version: String,
    host: String,
    llvm_version: String,
    sysroot: PathBuf,
}

impl Nightly {
    fn probe() -> Result<Self> {
        let verbose_version = process::stdout(nightly_rustc().arg("-vV")).with_context(|| {
            format!(
                "the `{NIGHTLY}` toolchain is a prerequisite (the eBPF object needs \
                     -Z build-std): install it with `rustup toolchain install {NIGHTLY}`"
            )
        })?;
        let sysroot = process::stdout(nightly_rustc().args(["--print", "sysroot"]))?;
        Self::parse(&verbose_version, sysroot.trim())
    }

    /// Reads the output of `rustc -vV`.
    fn parse(verbose_version: &str, sysroot: &str) -> Result<Self> {
        let field = |name: &str| {
            verbose_version
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(|value| value.trim().to_owned())
                .with_context(|| format!("no `{name}` in `rustc -vV` output:\n{verbose_version}"))
        };
        Ok(Self {
            version: verbose_version
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            host: field("host")?,
            llvm_version: field("LLVM version")?,
            sysroot: PathBuf::from(sysroot),
        })
    }

    fn llvm_major(&self) -> Result<u32> {
        let major = self.llvm_version.split('.').next().unwrap_or_default();
        major
            .parse()
            .with_context(|| format!("LLVM version `{}` has no major number", self.llvm_version))
    }
}

/// `rustc +nightly`.
fn nightly_rustc() -> Command {
    let mut cmd = rustup_proxy("rustc");
    cmd.arg(format!("+{NIGHTLY}"));
    cmd
}

/// `cargo +nightly`, run from the workspace root.
pub(crate) fn nightly_cargo() -> Command {
    let mut cmd = rustup_proxy("cargo");
    cmd.arg(format!("+{NIGHTLY}"))
        .current_dir(process::workspace_root());
    cmd
}

/// A program that rustup provides (`rustup` itself or one of its proxies).
fn rustup_proxy(program: &str) -> Command {
    let mut cmd = Command::new(program);
    // rustup may otherwise download whatever nightly is current, which need not
    // be one that our crate versions and bpf-linker accept.
    cmd.env("RUSTUP_AUTO_INSTALL", "0");
    cmd
}

fn check_component(nightly: &Nightly, component: &str) -> Result<State> {
    let installed = process::stdout(rustup_proxy("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    Ok(if has_component(&installed, component, &nightly.host) {
        State::Ready(format!("{NIGHTLY} component"))
    } else {
        State::Missing(format!("not a component of {NIGHTLY}"))
    })
}

/// Whether `rustup component list --installed` lists `component`, which it
/// prints bare (`rust-src`) or with the host triple (`clippy-x86_64-...`).
fn has_component(installed: &str, component: &str, host: &str) -> bool {
    installed.lines().map(str::trim).any(|line| {
        line == component
            || line
                .strip_prefix(component)
                .and_then(|rest| rest.strip_prefix('-'))
                == Some(host)
    })
}

fn add_component(component: &str) -> Result<()> {
    process::run(
        rustup_proxy("rustup")
            .args(["component", "add", component, "--toolchain", NIGHTLY])
            .stdin(Stdio::null()),
    )
}

fn check_bpf_linker(_: &Nightly) -> Result<State> {
    // Run it the way rustc will: from PATH and without the LD_LIBRARY_PATH that
    // cargo and rustup set for their children, so a binary that only finds
    // libLLVM by luck counts as missing.
    let output = Command::new("bpf-linker")
        .arg("--version")
        .env_remove("LD_LIBRARY_PATH")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(State::Missing("not installed".to_owned()));
        }
        Err(e) => return Err(e).context("cannot run `bpf-linker --version`"),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Ok(State::Missing(format!(
            "`bpf-linker --version` fails without LD_LIBRARY_PATH: {}",
            stderr.trim()
        )));
    }
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok(if version == format!("bpf-linker {BPF_LINKER_VERSION}") {
        State::Ready(version)
    } else {
        State::Missing(format!("found `{version}`, need {BPF_LINKER_VERSION}"))
    })
}

fn install_bpf_linker(nightly: &Nightly) -> Result<()> {
    let major = nightly.llvm_major()?;
    ensure!(
        BPF_LINKER_LLVM_MAJORS.contains(&major),
        "the {NIGHTLY} toolchain uses LLVM {major}; bpf-linker {BPF_LINKER_VERSION} supports \
         LLVM {BPF_LINKER_LLVM_MAJORS:?}"
    );
    let sysroot_lib = nightly.sysroot.join("lib");
    let libllvm = find_libllvm(&sysroot_lib)?;
    let prefix = home()?.join(".cache/rampart").join(format!("llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    let target = sysroot_lib.join(&libllvm);
    // `-lLLVM` needs the unversioned name at link time; the binary's RUNPATH is
    // `$prefix/lib` and its NEEDED entry the versioned name, so the loader
    // needs that one too.
    symlink_replacing(&target, &prefix_lib.join("libLLVM.so"))?;
    symlink_replacing(&target, &prefix_lib.join(&libllvm))?;
    process::run(
        process::cargo()
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--locked", "--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            // cargo skips a version it believes installed, even when the binary
            // no longer loads (say, after the nightly it linked to was updated).
            .arg("--force")
            .stdin(Stdio::null()),
    )
}

/// The file name of the nightly's `libLLVM.so.<version>` in `dir`.
fn find_libllvm(dir: &Path) -> Result<String> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with("libLLVM.so.")
        {
            names.push(name.to_owned());
        }
    }
    match names.as_slice() {
        [name] => Ok(name.clone()),
        [] => bail!(
            "no libLLVM.so.* in {}: this nightly does not ship LLVM as a shared library",
            dir.display()
        ),
        _ => bail!(
            "several libLLVM.so.* in {}: {}",
            dir.display(),
            names.join(", ")
        ),
    }
}

/// `ln -sf target link`.
fn symlink_replacing(target: &Path, link: &Path) -> Result<()> {
    match fs::symlink_metadata(link) {
        Ok(_) => {
            fs::remove_file(link).with_context(|| format!("cannot remove {}", link.display()))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", link.display())),
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set")
}

fn check_kernel_btf(_: &Nightly) -> Result<State> {
    Ok(if Path::new(KERNEL_BTF).exists() {
        State::Ready(KERNEL_BTF.to_owned())
    } else {
        State::Missing(format!(
            "no {KERNEL_BTF}: the kernel was built without CONFIG_DEBUG_INFO_BTF"
        ))
    })
}

fn check_packages(_: &Nightly) -> Result<State> {
    let missing = missing_packages()?;
    Ok(if missing.is_empty() {
        State::Ready(PACKAGES.join(", "))
    } else {
        State::Missing(format!("not installed: {}", missing.join(", ")))
    })
}

fn missing_packages() -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for package in PACKAGES {
        let output = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .output();
        let output = match output {
            Ok(output) => output,
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
                "dpkg-query not found: this step knows Debian's packages only; install {} \
                 with the system's package manager",
                PACKAGES.join(" ")
            ),
            Err(e) => return Err(e).context("cannot run dpkg-query"),
        };
        // dpkg-query exits with 1 for a package it has never heard of.
        if !output.status.success() || !is_installed(&String::from_utf8_lossy(&output.stdout)) {
            missing.push(package);
        }
    }
    Ok(missing)
}

/// Whether a dpkg `${Status}` ("want flag status") says installed.
fn is_installed(status: &str) -> bool {
    status.split_whitespace().nth(2) == Some("installed")
}

fn install_packages(_: &Nightly) -> Result<()> {
    let missing = missing_packages()?;
    ensure!(
        is_root(),
        "installing Debian packages needs root: run `cargo xtask setup` as root, or run \
         `apt-get install {}` yourself",
        missing.join(" ")
    );
    process::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()),
    )?;
    process::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()),
    )
}

fn check_bpffs(_: &Nightly) -> Result<State> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(if is_bpffs_mounted(&mounts) {
        State::Ready(format!("mounted at {BPFFS}"))
    } else {
        State::Missing(format!("not mounted at {BPFFS}"))
    })
}

fn is_bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    })
}

fn mount_bpffs(_: &Nightly) -> Result<()> {
    ensure!(
        is_root(),
        "mounting bpffs needs root: run `cargo xtask setup` as root, or run \
         `mount -t bpf bpf {BPFFS}` yourself"
    );
    process::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_from_verbose_version() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                    host: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\n\
                    LLVM version: 22.1.4\n";
        let nightly = Nightly::parse(text, "/sysroot").unwrap();
        assert_eq!(
            nightly.version,
            "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)"
        );
        assert_eq!(nightly.host, "x86_64-unknown-linux-gnu");
        assert_eq!(nightly.llvm_version, "22.1.4");
        assert_eq!(nightly.llvm_major().unwrap(), 22);
    }

    #[test]
    fn verbose_version_without_llvm_is_an_error() {
        let text = "rustc 1.97.0\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0\n";
        assert!(Nightly::parse(text, "/sysroot").is_err());
    }

    #[test]
    fn components_match_bare_or_with_the_host() {
        let host = "x86_64-unknown-linux-gnu";
        let installed = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\n\
                         rust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(installed, "rust-src", host));
        assert!(has_component(installed, "clippy", host));
        assert!(!has_component(installed, "rustfmt", host));
        assert!(!has_component(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust",
            host
        ));
    }

    #[test]
    fn dpkg_status() {
        assert!(is_installed("install ok installed"));
        assert!(is_installed("hold ok installed"));
        assert!(!is_installed("deinstall ok config-files"));
        assert!(!is_installed("install ok half-installed"));
        assert!(!is_installed(""));
    }

    #[test]
    fn bpffs_only_counts_a_bpf_mount_at_the_path() {
        let sysfs = "sysfs /sys sysfs rw,relatime 0 0\n";
        assert!(!is_bpffs_mounted(sysfs));
        assert!(is_bpffs_mounted(&format!(
            "{sysfs}bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0\n"
        )));
        assert!(!is_bpffs_mounted("none /sys/fs/bpf tmpfs rw 0 0\n"));
    }
}
