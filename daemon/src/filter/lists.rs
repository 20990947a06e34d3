//! The rule lists as the daemon keeps them, and how they split between the
//! kernel's exact deny maps (single addresses) and the prefix table.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use crate::rules::{CountryPolicy, PrefixRules};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListKind {
    /// Management networks: never filtered.
    Bypass,
    Deny,
    Allow,
}

impl ListKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }
}

/// Where an entry comes from; kept so that listings can say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryOrigin {
    /// The configuration file.
    Config,
    /// An operator, through the control plane.
    Operator,
    /// An automatic ban.
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListEntry {
    pub net: IpNet,
    /// CLOCK_MONOTONIC expiry in ns; 0 = permanent.
    pub expires_ns: u64,
    pub origin: EntryOrigin,
}

impl ListEntry {
    fn live(&self, now: u64) -> bool {
        self.expires_ns == 0 || now < self.expires_ns
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lists {
    bypass: BTreeMap<IpNet, ListEntry>,
    deny: BTreeMap<IpNet, ListEntry>,
    allow: BTreeMap<IpNet, ListEntry>,
}

fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

impl Lists {
    fn map(&self, kind: ListKind) -> &BTreeMap<IpNet, ListEntry> {
        match kind {
            ListKind::Bypass => &self.bypass,
            ListKind::Deny => &self.deny,
            ListKind::Allow => &self.allow,
        }
    }

    fn map_mut(&mut self, kind: ListKind) -> &mut BTreeMap<IpNet, ListEntry> {
        match kind {
            ListKind::Bypass => &mut self.bypass,
            ListKind::Deny => &mut self.deny,
            ListKind::Allow => &mut self.allow,
        }
    }

    /// Inserts or replaces the entry for `entry.net`.
    pub fn insert(&mut self, kind: ListKind, entry: ListEntry) {
        let net = entry.net.trunc();
        self.map_mut(kind).insert(net, ListEntry { net, ..entry });
    }

    pub fn remove(&mut self, kind: ListKind, net: &IpNet) -> bool {
        self.map_mut(kind).remove(&net.trunc()).is_some()
    }

    pub fn live(&self, kind: ListKind, now: u64) -> Vec<ListEntry> {
        self.map(kind)
            .values()
            .filter(|e| e.live(now))
            .copied()
            .collect()
    }

    /// Removes expired entries; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let mut n = 0;
        for kind in [ListKind::Bypass, ListKind::Deny, ListKind::Allow] {
            let map = self.map_mut(kind);
            let before = map.len();
            map.retain(|_, e| e.live(now));
            n += before - map.len();
        }
        n
    }

    /// Single-address deny entries: they go to the kernel's exact maps.
    pub fn exact_denies(&self, now: u64) -> Vec<(IpAddr, u64)> {
        self.deny
            .values()
            .filter(|e| is_host(&e.net) && e.live(now))
            .map(|e| (e.net.addr(), e.expires_ns))
            .collect()
    }

    /// Whether the prefix-table part of the lists differs.
    pub fn prefix_differs(&self, other: &Lists) -> bool {
        let denies = |l: &Lists| -> Vec<ListEntry> {
            l.deny
                .values()
                .filter(|e| !is_host(&e.net))
                .copied()
                .collect()
        };
        self.bypass != other.bypass || self.allow != other.allow || denies(self) != denies(other)
    }

    /// The input of the table compiler. Expired entries are left out; the
    /// allowlist is active while it has a live entry.
    pub fn prefix_rules(
        &self,
        countries: Vec<(IpNet, u16)>,
        country_policy: CountryPolicy,
        now: u64,
    ) -> PrefixRules {
        let allow: Vec<IpNet> = self
            .live(ListKind::Allow, now)
            .iter()
            .map(|e| e.net)
            .collect();
        PrefixRules {
            bypass: self
                .live(ListKind::Bypass, now)
                .iter()
                .map(|e| e.net)
                .collect(),
            deny: self
                .deny
                .values()
                .filter(|e| !is_host(&e.net) && e.live(now))
                .map(|e| (e.net, e.expires_ns))
                .collect(),
            allowlist_active: !allow.is_empty(),
            allow,
            countries,
            country_policy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(s: &str, expires_ns: u64) -> ListEntry {
        ListEntry {
            net: s.parse().unwrap(),
            expires_ns,
            origin: EntryOrigin::Operator,
        }
    }

    #[test]
    fn host_denies_go_to_the_exact_maps_and_prefixes_to_the_table() {
        let mut l = Lists::default();
        l.insert(ListKind::Deny, entry("198.18.0.1/32", 0));
        l.insert(ListKind::Deny, entry("2001:db8::1/128", 5));
        l.insert(ListKind::Deny, entry("198.19.0.0/16", 0));
        let exact = l.exact_denies(0);
        assert_eq!(exact.len(), 2);
        let rules = l.prefix_rules(vec![], CountryPolicy::Off, 0);
        assert_eq!(rules.deny, vec![("198.19.0.0/16".parse().unwrap(), 0)]);
        assert!(!rules.allowlist_active);
        // expired at 5: gone from the exact set
        assert_eq!(l.exact_denies(5).len(), 1);
    }

    #[test]
    fn allowlist_is_active_while_it_has_live_entries() {
        let mut l = Lists::default();
        l.insert(ListKind::Allow, entry("198.18.0.0/24", 100));
        assert!(
            l.prefix_rules(vec![], CountryPolicy::Off, 99)
                .allowlist_active
        );
        assert!(
            !l.prefix_rules(vec![], CountryPolicy::Off, 100)
                .allowlist_active
        );
        assert_eq!(l.expire(100), 1);
        assert!(l.live(ListKind::Allow, 0).is_empty());
    }

    #[test]
    fn prefix_differs_ignores_exact_entries() {
        let mut a = Lists::default();
        let b = a.clone();
        a.insert(ListKind::Deny, entry("198.18.0.1/32", 0));
        assert!(!a.prefix_differs(&b));
        a.insert(ListKind::Bypass, entry("198.18.0.0/24", 0));
        assert!(a.prefix_differs(&b));
    }
}
