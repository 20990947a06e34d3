//! Listening sockets handed over by systemd socket activation (`LISTEN_FDS`,
//! `LISTEN_PID`, `LISTEN_FDNAMES`; sd_listen_fds(3)).
//!
//! With `rampartd.socket`, systemd owns the listening sockets and passes them to
//! each rampartd it starts. While one rampartd stops and the next starts, the
//! sockets stay open in systemd: new connections wait in the kernel's backlog
//! instead of being refused, and the new process accepts them.
//!
//! The sockets are read once, at the very start of `main` (before any thread
//! exists: reading them unsets the variables, so that nothing rampartd starts
//! inherits them), and kept here until the gateway binds its listeners: a
//! listener whose configured address equals an inherited socket's local address
//! adopts that socket instead of binding. What no listener claims is logged and
//! closed once the gateway has started ([`close_unclaimed`]). The sockets are
//! process-wide by nature (file descriptors of this process), hence the static.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Sockets inherited and not yet claimed by a listener.
static INHERITED: Mutex<Vec<Inherited>> = Mutex::new(Vec::new());

/// One inherited TCP listening socket.
#[derive(Debug)]
struct Inherited {
    local_addr: SocketAddr,
    /// Its name in `LISTEN_FDNAMES` (the `FileDescriptorName=` of the socket
    /// unit; systemd's default is the unit's name), for the log.
    name: Option<String>,
    socket: std::net::TcpListener,
}

fn inherited() -> MutexGuard<'static, Vec<Inherited>> {
    INHERITED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What [`take_from_env`] found, for the log (logging is not set up yet when it
/// runs).
#[derive(Debug, Default)]
pub struct Found {
    /// Local addresses of the TCP listening sockets kept for the listeners.
    pub tcp: Vec<SocketAddr>,
    /// File descriptors that were not TCP sockets, closed, with why.
    pub closed: Vec<String>,
}

/// Reads and unsets `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`, and keeps
/// the TCP sockets passed for the listeners; anything else passed is closed.
/// Sockets meant for another process (`LISTEN_PID` not ours) are left alone.
///
/// Call it first thing in `main`, while the process has one thread: it changes
/// the environment.
pub fn take_from_env() -> Found {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|names| names.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    // SAFETY: called while the process is single-threaded (see above).
    unsafe { std::env::remove_var("LISTEN_FDNAMES") };
    // listenfd implements the protocol: checks LISTEN_PID, unsets the variables,
    // checks each fd's socket type and marks it close-on-exec.
    let mut fds = listenfd::ListenFd::from_env();
    let mut found = Found::default();
    let mut kept = inherited();
    for index in 0..fds.len() {
        let name = names.get(index).cloned();
        let label = match &name {
            Some(name) => format!("fd {} ({name})", index + 3),
            None => format!("fd {}", index + 3),
        };
        match fds.take_tcp_listener(index) {
            Ok(Some(socket)) => match socket.local_addr() {
                Ok(local_addr) => {
                    found.tcp.push(local_addr);
                    kept.push(Inherited {
                        local_addr,
                        name,
                        socket,
                    });
                }
                Err(error) => found.closed.push(format!("{label}: {error}")),
            },
            Ok(None) => {}
            Err(error) => {
                // Not a TCP socket (a UNIX or UDP socket, or not a socket).
                if let Ok(Some(fd)) = fds.take_raw_fd(index) {
                    // SAFETY: the fd was passed to this process for it to own
                    // (sd_listen_fds(3)); listenfd handed it over and forgot it.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
                found.closed.push(format!("{label}: {error}"));
            }
        }
    }
    found
}

/// Logs what [`take_from_env`] found (once logging is set up).
pub fn log_found(found: &Found) {
    for addr in &found.tcp {
        tracing::info!(addr = %addr, "listening socket inherited (socket activation)");
    }
    for what in &found.closed {
        tracing::warn!(socket = %what, "inherited file descriptor is not a TCP listening socket; closed");
    }
}

/// The inherited socket bound to `addr`, if any, ready for Tokio (non-blocking).
/// Each socket is handed out once; `None` when nothing was inherited for `addr`.
pub fn take(addr: SocketAddr) -> std::io::Result<Option<tokio::net::TcpListener>> {
    let socket = {
        let mut kept = inherited();
        let Some(index) = kept.iter().position(|s| s.local_addr == addr) else {
            return Ok(None);
        };
        kept.swap_remove(index)
    };
    socket.socket.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(socket.socket)?;
    tracing::info!(
        addr = %addr,
        name = socket.name.as_deref().unwrap_or("-"),
        "listener adopts the inherited socket"
    );
    Ok(Some(listener))
}

/// Closes the inherited sockets no listener claimed, with a warning each: the
/// socket unit and the `[[listener]]` addresses are out of step.
pub fn close_unclaimed() {
    let unclaimed = std::mem::take(&mut *inherited());
    for socket in unclaimed {
        tracing::warn!(
            addr = %socket.local_addr,
            name = socket.name.as_deref().unwrap_or("-"),
            "inherited socket matches no [[listener]] address; closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_inherited_socket_is_taken_once_by_its_address() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local_addr = socket.local_addr().unwrap();
        inherited().push(Inherited {
            local_addr,
            name: Some("rampartd.socket".into()),
            socket,
        });
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(take(other).unwrap().is_none());
        let listener = take(local_addr).unwrap().unwrap();
        assert_eq!(listener.local_addr().unwrap(), local_addr);
        let (client, accepted) = tokio::join!(
            tokio::net::TcpStream::connect(local_addr),
            listener.accept()
        );
        assert!(client.is_ok() && accepted.is_ok());
        assert!(take(local_addr).unwrap().is_none());
    }
}
