//! Client connections open per source address, for `max_connections_per_source`:
//! without a cap, one address could hold every `max_connections` slot (with idle
//! HTTP/2 connections, for as long as it liked) while every other client waited in
//! the kernel's backlog. nginx offers the same with `limit_conn`, HAProxy with a
//! stick table's `conn_cur`, Envoy with its connection limit filter.
//!
//! Counted at accept and uncounted when the connection ends: one lock per
//! connection, never per request. The table holds only sources with connections
//! open (at most `max_connections` of them).
//!
//! Each source also has a count of its requests in flight to backends, for
//! `max_backend_requests_per_source`: without it, one address (256 connections x
//! 100 HTTP/2 streams) could hold every `max_backend_requests` permit and every
//! other client got 503. Each of its connections holds the source's counter, so a
//! request costs one atomic add and one subtract on it, no lock (nginx's
//! `limit_conn` counts HTTP/2 streams the same way).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::OwnedSemaphorePermit;

/// Connections open per source: an IPv4 address, or the IPv6 prefix of
/// `ipv6_client_prefix` bits holding an IPv6 address (as rate limits count, since an
/// IPv6 client holds a whole /64); an IPv4-mapped IPv6 peer (a dual-stack listener)
/// counts as the IPv4 address.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    open: Mutex<HashMap<IpNet, Source>>,
    /// Sources refused lately (`max_connections_per_source`): when each was last
    /// named in the log, and its refusals since. Touched only on a refusal.
    refused: Mutex<HashMap<IpNet, Refusals>>,
}

/// How often a refused source is named in the log at most: one line per source
/// per period, with the count since the last, as the filter's drop summaries.
pub(crate) const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Sources remembered for the refusal log before those whose period is over are
/// forgotten.
const REFUSALS_KEPT: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Refusals {
    logged_at: Instant,
    since: u64,
}

/// One source with connections open.
#[derive(Debug, Default)]
struct Source {
    connections: usize,
    /// Its requests in flight to backends, over all its connections.
    requests: Arc<AtomicUsize>,
}

impl Sources {
    /// Counts a connection from `source` unless `cap` of its source's connections
    /// are open already (`Err`: refused, with the source as counted; `usize::MAX`:
    /// no cap). Uncounted when the returned guard is dropped.
    pub(crate) fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        cap: usize,
        ipv6_prefix: u8,
    ) -> Result<SourceSlot, IpNet> {
        let source = crate::policy::ban::source_net(source, ipv6_prefix);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = open.entry(source).or_default();
        if entry.connections >= cap {
            if entry.connections == 0 {
                open.remove(&source);
            }
            return Err(source);
        }
        entry.connections += 1;
        Ok(SourceSlot {
            sources: Arc::clone(self),
            source,
            requests: Arc::clone(&entry.requests),
        })
    }

    /// Notes a refusal of `source` at `now`: the number of its refusals to log
    /// (this one and those not logged since its last line) when a line is due,
    /// `None` while its last line is less than [`REFUSAL_LOG_PERIOD`] old.
    pub(crate) fn refused(&self, source: IpNet, now: Instant) -> Option<u64> {
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(seen) = refused.get_mut(&source) {
            seen.since += 1;
            if now.duration_since(seen.logged_at) < REFUSAL_LOG_PERIOD {
                return None;
            }
            let count = seen.since;
            *seen = Refusals {
                logged_at: now,
                since: 0,
            };
            return Some(count);
        }
        if refused.len() >= REFUSALS_KEPT {
            refused.retain(|_, seen| now.duration_since(seen.logged_at) < REFUSAL_LOG_PERIOD);
        }
        // Still full: sources refused within the period are many; this one is
        // logged without being remembered (at most one line per refusal).
        if refused.len() < REFUSALS_KEPT {
            refused.insert(
                source,
                Refusals {
                    logged_at: now,
                    since: 0,
                },
            );
        }
        Some(1)
    }

    #[cfg(test)]
    fn open(&self, source: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&IpNet::from(source.to_canonical()))
            .map_or(0, |s| s.connections)
    }
}

/// A source as an operator knows it: an address alone, or an IPv6 prefix.
pub(crate) fn display(source: IpNet) -> String {
    if source.prefix_len() == source.max_prefix_len() {
        source.addr().to_string()
    } else {
        source.to_string()
    }
}

/// One connection counted for its source.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    sources: Arc<Sources>,
    source: IpNet,
    requests: Arc<AtomicUsize>,
}

impl SourceSlot {
    /// The source's count of requests in flight, shared by its connections.
    pub(crate) fn requests(&self) -> SourceRequests {
        SourceRequests(Arc::clone(&self.requests))
    }
}

/// The requests in flight to backends of one source (all its connections).
#[derive(Debug, Clone)]
pub(crate) struct SourceRequests(Arc<AtomicUsize>);

impl SourceRequests {
    /// Counts one more request unless `cap` are in flight already (`None`:
    /// refused). Uncounted when the returned guard is dropped.
    pub(crate) fn take(&self, cap: usize) -> Option<SourceRequest> {
        // Add first, then look: two connections of one source racing for the last
        // place cannot both get it (one may be refused needlessly, never let past).
        if self.0.fetch_add(1, Ordering::AcqRel) >= cap {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SourceRequest(Arc::clone(&self.0)))
    }
}

/// One request counted for its source.
#[derive(Debug)]
pub(crate) struct SourceRequest(Arc<AtomicUsize>);

impl Drop for SourceRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a request in flight to a backend holds until its response body ends or
/// is dropped: its `max_backend_requests` permit and, unless its source is not
/// capped, its place in `max_backend_requests_per_source`.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) _permit: OwnedSemaphorePermit,
    pub(crate) _source: Option<SourceRequest>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self
            .sources
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = open.get_mut(&self.source) {
            entry.connections -= 1;
            if entry.connections == 0 {
                open.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn a_source_gets_at_most_cap_connections_and_others_are_not_affected() {
        let sources = Arc::new(Sources::default());
        let a = ip("192.0.2.1");
        let held: Vec<_> = (0..3).map(|_| sources.admit(a, 3, 64)).collect();
        assert!(held.iter().all(Result::is_ok));
        assert!(sources.admit(a, 3, 64).is_err());
        assert!(sources.admit(ip("192.0.2.2"), 3, 64).is_ok());
        drop(held);
        assert_eq!(sources.open(a), 0);
        assert!(sources.open.lock().unwrap().is_empty(), "no entry left");
        assert!(sources.admit(a, 3, 64).is_ok());
    }

    #[test]
    fn an_ipv4_mapped_peer_counts_as_its_ipv4_address_and_ipv6_by_its_prefix() {
        let sources = Arc::new(Sources::default());
        let _v4 = sources.admit(ip("192.0.2.1"), 1, 64);
        assert!(sources.admit(ip("::ffff:192.0.2.1"), 1, 64).is_err());
        // Another address of the same /64 is the same source.
        let _one = sources.admit(ip("2001:db8::1"), 1, 64);
        assert!(sources.admit(ip("2001:db8::2"), 1, 64).is_err());
        assert!(sources.admit(ip("2001:db8:0:1::2"), 1, 64).is_ok());
        // 128: per address.
        let _own = sources.admit(ip("2001:db8:9::1"), 1, 128);
        assert!(sources.admit(ip("2001:db8:9::2"), 1, 128).is_ok());
    }

    #[test]
    fn a_sources_connections_share_one_count_of_requests() {
        let sources = Arc::new(Sources::default());
        let one = sources.admit(ip("192.0.2.1"), usize::MAX, 64).unwrap();
        let two = sources.admit(ip("192.0.2.1"), usize::MAX, 64).unwrap();
        let other = sources.admit(ip("192.0.2.2"), usize::MAX, 64).unwrap();
        let first = one.requests().take(2).unwrap();
        let _second = two.requests().take(2).unwrap();
        assert!(one.requests().take(2).is_none());
        assert!(two.requests().take(2).is_none());
        assert!(other.requests().take(2).is_some());
        drop(first);
        assert!(two.requests().take(2).is_some());
    }

    #[test]
    fn a_refusal_leaves_no_entry() {
        let sources = Arc::new(Sources::default());
        assert!(sources.admit(ip("192.0.2.1"), 0, 64).is_err());
        assert!(sources.open.lock().unwrap().is_empty());
    }

    #[test]
    fn a_refused_source_is_logged_once_per_period_with_the_count_since() {
        let sources = Sources::default();
        let a = IpNet::from(ip("192.0.2.1"));
        let b = IpNet::from(ip("192.0.2.2"));
        let start = Instant::now();
        assert_eq!(sources.refused(a, start), Some(1));
        for n in 1..5 {
            assert_eq!(sources.refused(a, start + Duration::from_secs(n)), None);
        }
        assert_eq!(sources.refused(b, start + Duration::from_secs(5)), Some(1));
        assert_eq!(
            sources.refused(a, start + REFUSAL_LOG_PERIOD),
            Some(5),
            "the four not logged and this one"
        );
        assert_eq!(sources.refused(a, start + REFUSAL_LOG_PERIOD), None);
    }
}
