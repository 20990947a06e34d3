//! The real `rampart` binary, run as an operator runs it: as a subprocess,
//! with `--socket` (or `RAMPART_SOCKET`) naming the test's own socket.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};
use serde_json::Value;

/// The `rampart` binary built next to `rampartd` (see
/// [`crate::daemon::rampartd_bin`]).
pub fn rampart_bin() -> anyhow::Result<PathBuf> {
    let rampartd = crate::daemon::rampartd_bin()?;
    let bin = rampartd.with_file_name("rampart");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first (cargo build -p rampart --bins)",
            bin.display()
        );
    }
    Ok(bin)
}

/// What one `rampart` command did.
#[derive(Debug, Clone)]
pub struct Run {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for messages.
    pub args: String,
}

impl Run {
    /// The stdout parsed as one JSON document.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("`rampart {}` printed no JSON: {self}", self.args))
    }

    /// The stdout as JSON lines (`events --json`).
    pub fn json_lines(&self) -> anyhow::Result<Vec<Value>> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("not a JSON line: {l}")))
            .collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`rampart {}` exited {}\n--- stdout\n{}--- stderr\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }
}

/// Who runs the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum As {
    /// The test's own user (root).
    Root,
    /// Another uid and primary gid, with exactly these supplementary groups.
    User {
        uid: u32,
        gid: u32,
        groups: Vec<u32>,
    },
}

impl As {
    /// `nobody`, in no group.
    pub fn nobody() -> Self {
        As::User {
            uid: 65534,
            gid: 65534,
            groups: Vec::new(),
        }
    }
}

/// The CLI pointed at one daemon's control socket.
#[derive(Debug, Clone)]
pub struct Cli {
    bin: PathBuf,
    socket: PathBuf,
}

impl Cli {
    pub fn new(socket: impl Into<PathBuf>) -> anyhow::Result<Self> {
        Ok(Self {
            bin: rampart_bin()?,
            socket: socket.into(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The same CLI with another socket (e.g. one where nothing listens).
    pub fn with_socket(&self, socket: impl Into<PathBuf>) -> Self {
        Self {
            bin: self.bin.clone(),
            socket: socket.into(),
        }
    }

    /// `rampart --socket S ARGS...` as a command, not started (for `events
    /// --follow` and concurrent bursts).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("RAMPART_SOCKET")
            .env("NO_COLOR", "1");
        cmd
    }

    /// Runs `rampart --socket S ARGS...` and waits for it.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(self.command(args), args, As::Root, None)
    }

    /// Runs it with `stdin` as standard input.
    pub fn run_stdin(&self, args: &[&str], stdin: &str) -> Run {
        self.run_with(self.command(args), args, As::Root, Some(stdin))
    }

    /// Runs it without `--socket`: the socket comes from `RAMPART_SOCKET`.
    pub fn run_env(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("RAMPART_SOCKET", &self.socket)
            .env("NO_COLOR", "1");
        self.run_with(cmd, args, As::Root, None)
    }

    /// Runs it as another user (`setpriv`, which keeps the environment and
    /// sets exactly the groups given).
    pub fn run_as(&self, who: &As, args: &[&str]) -> Run {
        self.run_with(self.command(args), args, who.clone(), None)
    }

    /// Runs it, expects exit 0, returns the run.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<Run> {
        let run = self.run(args);
        if run.code != 0 {
            bail!("expected exit 0: {run}");
        }
        Ok(run)
    }

    /// Runs `rampart --json ARGS...`, expects exit 0, parses the output.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.ok(&all)?.json()
    }

    /// The entries of `deny list` (or `allow`, `bypass`) as JSON.
    pub fn list(&self, list: &str) -> anyhow::Result<Vec<Value>> {
        match self.json(&[list, "list"])? {
            Value::Array(entries) => Ok(entries),
            other => bail!("`{list} list --json` is not an array: {other}"),
        }
    }

    /// The `entry` fields of a list, sorted.
    pub fn list_entries(&self, list: &str) -> anyhow::Result<Vec<String>> {
        let mut out: Vec<String> = self
            .list(list)?
            .iter()
            .filter_map(|e| e["entry"].as_str().map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }

    fn run_with(&self, cmd: Command, args: &[&str], who: As, stdin: Option<&str>) -> Run {
        let mut cmd = match who {
            As::Root => cmd,
            As::User { uid, gid, groups } => {
                let mut wrapped = Command::new("setpriv");
                wrapped
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"));
                if groups.is_empty() {
                    wrapped.arg("--clear-groups");
                } else {
                    let list: Vec<String> = groups.iter().map(u32::to_string).collect();
                    wrapped.arg(format!("--groups={}", list.join(",")));
                }
                wrapped
                    .arg("--")
                    .arg(cmd.get_program())
                    .args(cmd.get_args());
                for (k, v) in cmd.get_envs() {
                    match v {
                        Some(v) => wrapped.env(k, v),
                        None => wrapped.env_remove(k),
                    };
                }
                wrapped
            }
        };
        let args = args.join(" ");
        let spawned = cmd
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                return Run {
                    code: -1,
                    stdout: String::new(),
                    stderr: format!("cannot start rampart: {e}"),
                    args,
                };
            }
        };
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let text = text.to_owned();
            // A writer thread: a large stdin must not deadlock against stdout.
            std::thread::spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            });
        }
        match child.wait_with_output() {
            Ok(out) => Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                args,
            },
            Err(e) => Run {
                code: -1,
                stdout: String::new(),
                stderr: format!("waiting for rampart: {e}"),
                args,
            },
        }
    }
}
