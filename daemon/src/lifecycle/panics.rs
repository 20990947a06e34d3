//! Panics: reported through tracing (journald or stderr) with their message and
//! location, and counted.
//!
//! rampartd is built to unwind (the workspace profiles keep Rust's default): a
//! panic while serving a request is caught around that request's future and
//! answered 500 (`gateway::panics`); one in a connection or background task ends
//! that task only (Tokio catches it). A panic on the control thread or in the main
//! loop ends the daemon with [`super::EXIT_INTERNAL`] or Rust's 101, so that
//! systemd restarts it instead of leaving it half alive.
//!
//! Test only: debug builds have fault-injection points, off unless rampartd is
//! started with `RAMPARTD_FAULT_INJECTION`: `panic-on-header` makes a request with
//! the header `x-rampart-fault: panic` panic in the gateway's handler;
//! `panic-control-thread` makes the control thread panic as it starts. Release
//! builds do not contain them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Panics since start, on any thread.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// How many panics happened since the process started (caught or not).
pub fn count() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Replaces the default panic hook (a line on stderr) with an error event: its
/// message, file:line:column and thread, with a backtrace when `RUST_BACKTRACE`
/// asks for one. Install it once logging is set up.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(not a string)");
        let location = info
            .location()
            .map_or_else(|| "unknown".to_owned(), ToString::to_string);
        let thread = std::thread::current();
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => backtrace.to_string(),
            _ => String::new(),
        };
        tracing::error!(
            panic_message = message,
            location = %location,
            thread = thread.name().unwrap_or("unnamed"),
            backtrace = %backtrace,
            "panic: {message}"
        );
    }));
}

/// The environment variable that turns fault injection on (debug builds only).
#[cfg(debug_assertions)]
pub const FAULT_INJECTION_VAR: &str = "RAMPARTD_FAULT_INJECTION";

/// The request header that triggers a fault when fault injection is on.
#[cfg(debug_assertions)]
pub const FAULT_HEADER: &str = "x-rampart-fault";

/// Test only (debug builds): panics when fault injection is on
/// (`RAMPARTD_FAULT_INJECTION=panic-on-header`) and the request asks for it
/// (`x-rampart-fault: panic`). The variable is read once.
#[cfg(debug_assertions)]
pub fn inject_request_fault(headers: &http::HeaderMap) {
    static ENABLED: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| fault_injected("panic-on-header"));
    if *ENABLED && headers.get(FAULT_HEADER).is_some_and(|v| v == "panic") {
        panic!("fault injected: {FAULT_HEADER}: panic");
    }
}

/// Test only (debug builds): panics when fault injection is
/// `panic-control-thread`; called as the control thread starts.
#[cfg(debug_assertions)]
pub fn inject_control_fault() {
    if fault_injected("panic-control-thread") {
        panic!("fault injected: control thread");
    }
}

#[cfg(debug_assertions)]
fn fault_injected(fault: &str) -> bool {
    std::env::var(FAULT_INJECTION_VAR).is_ok_and(|v| v == fault)
}
