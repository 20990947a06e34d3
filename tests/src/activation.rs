//! Socket activation as systemd does it, for tests and benchmarks that hand a
//! listening socket to rampartd: the socket becomes fd 3 of the child, with
//! `LISTEN_FDS=1` and `LISTEN_PID` the child's own pid.
//!
//! Plain std + libc, so that `daemon/tests/restart.rs` (which cannot depend on
//! this crate) includes the same file with `#[path]`.

use std::{
    ffi::OsStr,
    net::TcpListener,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::Command,
};

/// `program args...` run with `socket` handed over. The command is a shell that
/// sets `LISTEN_PID=$$` and execs `program` (directly or through wrappers such
/// as taskset, which exec in turn), so the pid is the daemon's.
pub fn activated<S: AsRef<OsStr>>(socket: &TcpListener, program: &[S]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .args(program)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "rampartd.socket");
    let fd = socket.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe; the closure touches no
    // memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 gives fd 3 without close-on-exec; fd 3 already being the
            // socket needs the flag cleared by hand.
            let done = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}
