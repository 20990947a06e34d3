//! Signals rampartd has no use for, or not yet.
//!
//! By default `SIGHUP`, `SIGUSR1` and `SIGUSR2` end a process. rampartd handles
//! `SIGHUP` (reload) once its runtime runs, about half a second after start (more
//! with a large country table): a `SIGHUP` before that, from a script or an
//! operator who does not wait for readiness, would end it without a word. `SIGUSR1`
//! and `SIGUSR2` it never uses, and a log-rotation script that sends `SIGUSR1` to
//! every daemon (as to nginx) would take the gateway down. All three are ignored
//! from the first instant; the reload handler replaces the ignore for `SIGHUP`.

/// Ignores `SIGHUP`, `SIGUSR1` and `SIGUSR2`; call first in `main`.
pub fn ignore_stray() {
    for signal in [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: SIG_IGN installs no handler code; setting a disposition is
        // async-signal-safe and valid at any time.
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
}
