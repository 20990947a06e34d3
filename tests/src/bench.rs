//! What the benchmark binaries (`tests/src/bin/bench-*.rs`) share: child
//! processes killed on drop, CPU pinning, running a tool, ports, package versions,
//! the gateways' certificate and the nginx backend.

use std::{
    fs::File,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

/// A child process, killed and reaped on drop.
///
/// A spawned process named for error messages; `child` is the process itself.
pub struct Child {
    pub name: &'static str,
    pub child: std::process::Child,
}

impl Child {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child })
    }

    /// Waits until something accepts connections on `port`; fails early if
    /// the process exits. `log` is shown on failure.
    pub fn wait_listening(&mut self, port: u16, log: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status} before listening{log}", self.name);
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on port {port} within 20 s{log}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most 40 s) for the process to exit.
    pub fn exited(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        ensure!(unsafe { libc::kill(pid, signal) } == 0, "kill {pid}");
        Ok(())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now (the kernel's pick for an ephemeral bind).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `taskset -c <cpu> <program>`: the program replaces taskset, so the child
/// is the program itself.
pub fn pinned(cpu: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpu]).arg(program);
    cmd
}

/// Runs `cmd`, returns its stdout and stderr; fails with both unless it exits with 0.
pub fn output(cmd: &mut Command) -> anyhow::Result<(String, String)> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{what} failed ({}):\n{stdout}{stderr}", out.status);
    }
    Ok((stdout, stderr))
}

pub fn debian_version(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", &format!("{package} ${{Version}}"), package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || package.to_string(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
}

/// The nginx configuration of the backend both gateway benchmarks proxy to.
const NGINX_CONF: &str = include_str!("../bench/nginx-backend.conf");

/// One self-signed P-256 certificate for localhost and 127.0.0.1 in `dir`:
/// `cert.pem` and `key.pem` (rampartd), and both in one file, `haproxy.pem`
/// (HAProxy wants the chain and the key together).
pub fn self_signed_certificate(dir: &Path) -> anyhow::Result<()> {
    output(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem")),
    )?;
    let pem = std::fs::read_to_string(dir.join("cert.pem"))?
        + &std::fs::read_to_string(dir.join("key.pem"))?;
    std::fs::write(dir.join("haproxy.pem"), pem)?;
    Ok(())
}

/// The backend: one nginx process answering `ok` on 127.0.0.1:`port`, pinned to
/// `cpu`, its files in `dir`; returned once it listens.
pub fn nginx_backend(dir: &Path, port: u16, cpu: &str) -> anyhow::Result<Child> {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        NGINX_CONF
            .replace("@DIR@", &dir.display().to_string())
            .replace("@PORT@", &port.to_string()),
    )?;
    let mut nginx = Child::spawn(
        "nginx",
        pinned(cpu, "nginx")
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("nginx-stderr.log"))?),
    )?;
    nginx.wait_listening(port, "")?;
    Ok(nginx)
}
