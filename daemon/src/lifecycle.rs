//! What keeps rampartd serving across restarts and bugs: listening sockets
//! inherited from systemd socket activation ([`sockets`]), so that a restart
//! refuses no connection, and panics reported through tracing ([`panics`]), so
//! that a bug in one request is logged and answered 500 instead of taking the
//! daemon down.

pub mod panics;
pub mod signals;
pub mod sockets;

/// Exit status when a part of the daemon that cannot be restarted on its own (the
/// control thread, the control socket) ended unexpectedly: sysexits.h
/// `EX_SOFTWARE`. The durable state is on disk; systemd (`Restart=on-failure`)
/// starts a fresh daemon rather than leave a half-alive one running.
pub const EXIT_INTERNAL: u8 = 70;
