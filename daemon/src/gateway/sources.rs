//! Client connections open per source address, for `max_connections_per_source`:
//! without a cap, one address could hold every `max_connections` slot (with idle
//! HTTP/2 connections, for as long as it liked) while every other client waited in
//! the kernel's backlog. nginx offers the same with `limit_conn`, HAProxy with a
//! stick table's `conn_cur`, Envoy with its connection limit filter.
//!
//! Counted at accept and uncounted when the connection ends: one lock per
//! connection, never per request. The table holds only sources with connections
//! open (at most `max_connections` of them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::IpNet;

/// Connections open per source: an IPv4 address, or the IPv6 prefix of
/// `ipv6_client_prefix` bits holding an IPv6 address (as rate limits count, since an
/// IPv6 client holds a whole /64); an IPv4-mapped IPv6 peer (a dual-stack listener)
/// counts as the IPv4 address.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    open: Mutex<HashMap<IpNet, usize>>,
}

impl Sources {
    /// Counts a connection from `source` unless `cap` of its source's connections
    /// are open already (`None`: refused). Uncounted when the returned guard is
    /// dropped.
    pub(crate) fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        cap: usize,
        ipv6_prefix: u8,
    ) -> Option<SourceSlot> {
        let source = crate::policy::ban::source_net(source, ipv6_prefix);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(source).or_insert(0);
        if *count >= cap {
            if *count == 0 {
                open.remove(&source);
            }
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            sources: Arc::clone(self),
            source,
        })
    }

    #[cfg(test)]
    fn open(&self, source: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&IpNet::from(source.to_canonical()))
            .copied()
            .unwrap_or(0)
    }
}

/// One connection counted for its source.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    sources: Arc<Sources>,
    source: IpNet,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self
            .sources
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
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
        assert!(held.iter().all(Option::is_some));
        assert!(sources.admit(a, 3, 64).is_none());
        assert!(sources.admit(ip("192.0.2.2"), 3, 64).is_some());
        drop(held);
        assert_eq!(sources.open(a), 0);
        assert!(sources.open.lock().unwrap().is_empty(), "no entry left");
        assert!(sources.admit(a, 3, 64).is_some());
    }

    #[test]
    fn an_ipv4_mapped_peer_counts_as_its_ipv4_address_and_ipv6_by_its_prefix() {
        let sources = Arc::new(Sources::default());
        let _v4 = sources.admit(ip("192.0.2.1"), 1, 64);
        assert!(sources.admit(ip("::ffff:192.0.2.1"), 1, 64).is_none());
        // Another address of the same /64 is the same source.
        let _one = sources.admit(ip("2001:db8::1"), 1, 64);
        assert!(sources.admit(ip("2001:db8::2"), 1, 64).is_none());
        assert!(sources.admit(ip("2001:db8:0:1::2"), 1, 64).is_some());
        // 128: per address.
        let _own = sources.admit(ip("2001:db8:9::1"), 1, 128);
        assert!(sources.admit(ip("2001:db8:9::2"), 1, 128).is_some());
    }

    #[test]
    fn a_refusal_leaves_no_entry() {
        let sources = Arc::new(Sources::default());
        assert!(sources.admit(ip("192.0.2.1"), 0, 64).is_none());
        assert!(sources.open.lock().unwrap().is_empty());
    }
}
