//! The open-file limit, and what the gateway may hold of it.
//!
//! Every client connection is a file descriptor, and so is every request in flight
//! to a backend (its connection). Once the process runs out, every accept fails
//! (the gateway's and the admin listener's) and so does every backend connect.
//! `max_connections` bounds the first, `max_backend_requests` the second; at start
//! rampartd raises its soft `RLIMIT_NOFILE` to the hard limit (as nginx's
//! `worker_rlimit_nofile` and most daemons do: the soft limit of a shell is often
//! 1,024) and warns when the two limits and [`RESERVED`] do not fit in it. It
//! still starts: the limits are ceilings, most deployments never reach them.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for what is neither a client connection nor a request in
/// flight to a backend: rampartd's own files, sockets and BPF objects (about 20 to
/// 60), the admin listener and its scrapers, the control socket and its clients,
/// JWKS and OAuth2 token fetches, a connection each listener holds while it waits
/// for a free slot. Idle pooled backend connections (at most 1,024 per backend,
/// closed after `pool_idle_secs`) come out of what is left above the sum.
pub const RESERVED: u64 = 256;

/// The soft open-file limit before and after raising it to the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    pub was: u64,
    pub now: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit.
pub fn raise_open_file_limit() -> Result<OpenFileLimit, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(OpenFileLimit {
        was: soft,
        now: soft.max(hard),
    })
}

/// The descriptors the gateway may need with these limits:
/// `max_connections + max_backend_requests +` [`RESERVED`].
pub fn needed(max_connections: u32, max_backend_requests: u32) -> u64 {
    u64::from(max_connections) + u64::from(max_backend_requests) + RESERVED
}

/// Logs a warning when the gateway's limits do not fit in the open-file limit
/// `limit`; returns whether they fit.
pub fn check(max_connections: u32, max_backend_requests: u32, limit: u64) -> bool {
    shortfall(max_connections, max_backend_requests, limit).is_none()
}

/// The soft open-file limit now, if it can be read.
pub fn current_limit() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// When the gateway's limits do not fit in `limit`: the warning, logged and
/// returned (a reload's answer carries it).
pub fn shortfall(max_connections: u32, max_backend_requests: u32, limit: u64) -> Option<String> {
    let needed = needed(max_connections, max_backend_requests);
    if needed <= limit {
        return None;
    }
    let message = format!(
        "the open-file limit is lower than the gateway may need: max_connections + max_backend_requests + {RESERVED} reserved = {needed} descriptors, the limit is {limit}; lower [gateway] max_connections or max_backend_requests, or raise the limit (LimitNOFILE= in the systemd unit, ulimit -n); at the limit, accepts (the admin listener's too) and backend connections fail"
    );
    tracing::warn!(
        max_connections,
        max_backend_requests,
        reserved = RESERVED,
        needed,
        limit,
        "{message}"
    );
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_fit_in_the_units_limit() {
        let gateway = crate::config::GatewayConfig::default();
        let needed = needed(gateway.max_connections, gateway.max_backend_requests);
        assert_eq!(needed, 10_000 + 10_000 + 256);
        // packaging/systemd/rampartd.service: LimitNOFILE=65536.
        assert!(check(
            gateway.max_connections,
            gateway.max_backend_requests,
            65_536
        ));
        assert!(!check(
            gateway.max_connections,
            gateway.max_backend_requests,
            4_096
        ));
    }
}
