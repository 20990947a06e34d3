//! The rule lists as the daemon keeps them, and how they split between the
//! kernel's exact deny maps (single addresses) and the prefix table.
//!
//! A network may be on a list several times, once per origin (the
//! configuration, an operator, an automatic ban), each entry with its own
//! expiry: a reload that replaces the configuration's entries leaves the
//! others alone, and removing an operator's ban does not lift the
//! configuration's. The kernel sees one entry per network, the one that
//! lasts longest (see [`Slots::effective`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

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
    pub const ALL: [ListKind; 3] = [Self::Bypass, Self::Deny, Self::Allow];

    pub fn name(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Bypass => 0,
            Self::Deny => 1,
            Self::Allow => 2,
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

impl EntryOrigin {
    pub const ALL: [EntryOrigin; 3] = [Self::Config, Self::Operator, Self::Auto];

    fn index(self) -> usize {
        match self {
            Self::Config => 0,
            Self::Operator => 1,
            Self::Auto => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListEntry {
    pub net: IpNet,
    /// CLOCK_MONOTONIC expiry in ns; 0 = permanent.
    pub expires_ns: u64,
    pub origin: EntryOrigin,
}

/// Whether an entry of this expiry applies at `now`.
pub(crate) fn live_at(expires_ns: u64, now: u64) -> bool {
    expires_ns == 0 || now < expires_ns
}

/// Whether a network is a single address.
pub(crate) fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// Whether entries of `kind` for `net` go to the kernel's exact maps rather
/// than to the prefix table.
pub(crate) fn is_exact(kind: ListKind, net: &IpNet) -> bool {
    kind == ListKind::Deny && is_host(net)
}

/// The entries of one network on one list: an expiry per origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slots([u64; 3]);

/// A slot without an entry. An expiry this far away (584 years of uptime)
/// is stored one nanosecond earlier.
const ABSENT: u64 = u64::MAX;

impl Default for Slots {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl Slots {
    pub(crate) const EMPTY: Slots = Slots([ABSENT; 3]);

    pub(crate) fn get(&self, origin: EntryOrigin) -> Option<u64> {
        let v = self.0[origin.index()];
        (v != ABSENT).then_some(v)
    }

    pub(crate) fn set(&mut self, origin: EntryOrigin, expires_ns: Option<u64>) {
        self.0[origin.index()] = expires_ns.map_or(ABSENT, |e| e.min(ABSENT - 1));
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::EMPTY
    }

    /// The entry with this origin, if it exists and applies at `now`.
    pub(crate) fn live(&self, origin: EntryOrigin, now: u64) -> Option<u64> {
        self.get(origin).filter(|e| live_at(*e, now))
    }

    /// What the kernel applies: among the entries live at `now`, a
    /// permanent one, else the one that expires last (so the kernel's entry
    /// ends exactly when the last of them does). Ties go to the first
    /// origin in [`EntryOrigin::ALL`].
    pub(crate) fn effective(&self, now: u64) -> Option<(u64, EntryOrigin)> {
        let mut best: Option<(u64, EntryOrigin)> = None;
        for origin in EntryOrigin::ALL {
            let Some(e) = self.live(origin, now) else {
                continue;
            };
            let better = match best {
                None => true,
                Some((b, _)) => b != 0 && (e == 0 || e > b),
            };
            if better {
                best = Some((e, origin));
            }
        }
        best
    }

    fn entries(&self, net: IpNet) -> impl Iterator<Item = ListEntry> + '_ {
        EntryOrigin::ALL.into_iter().filter_map(move |origin| {
            self.get(origin).map(|expires_ns| ListEntry {
                net,
                expires_ns,
                origin,
            })
        })
    }
}

/// Every entry of every list. Expiring entries are also indexed by expiry,
/// so that [`Lists::expire`] costs what expires, not what is listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lists {
    maps: [BTreeMap<IpNet, Slots>; 3],
    expiring: BTreeSet<(u64, ListKind, IpNet, EntryOrigin)>,
}

impl Lists {
    fn map(&self, kind: ListKind) -> &BTreeMap<IpNet, Slots> {
        &self.maps[kind.index()]
    }

    /// Inserts or replaces the entry of `entry.origin` for `entry.net`
    /// (host bits cleared).
    pub fn insert(&mut self, kind: ListKind, entry: ListEntry) {
        let net = entry.net.trunc();
        let mut slots = self.slots(kind, &net);
        slots.set(entry.origin, Some(entry.expires_ns));
        self.set_slots(kind, net, slots);
    }

    /// Removes every entry for `net`; whether there was one.
    pub fn remove(&mut self, kind: ListKind, net: &IpNet) -> bool {
        let net = net.trunc();
        let had = !self.slots(kind, &net).is_empty();
        self.set_slots(kind, net, Slots::EMPTY);
        had
    }

    /// The entries of `kind` for `net` (empty when none).
    pub(crate) fn slots(&self, kind: ListKind, net: &IpNet) -> Slots {
        self.map(kind).get(net).copied().unwrap_or_default()
    }

    /// Replaces the entries of `kind` for `net` (a truncated network).
    pub(crate) fn set_slots(&mut self, kind: ListKind, net: IpNet, slots: Slots) {
        let old = self.slots(kind, &net);
        for origin in EntryOrigin::ALL {
            if let Some(e) = old.get(origin).filter(|e| *e != 0) {
                self.expiring.remove(&(e, kind, net, origin));
            }
            if let Some(e) = slots.get(origin).filter(|e| *e != 0) {
                self.expiring.insert((e, kind, net, origin));
            }
        }
        let map = &mut self.maps[kind.index()];
        if slots.is_empty() {
            map.remove(&net);
        } else {
            map.insert(net, slots);
        }
    }

    /// Every network of `kind` with its entries.
    pub(crate) fn iter(&self, kind: ListKind) -> impl Iterator<Item = (&IpNet, &Slots)> {
        self.map(kind).iter()
    }

    /// The entries that apply at `now`, in address order.
    pub fn live(&self, kind: ListKind, now: u64) -> Vec<ListEntry> {
        self.map(kind)
            .iter()
            .flat_map(|(net, s)| s.entries(*net))
            .filter(|e| live_at(e.expires_ns, now))
            .collect()
    }

    /// Number of networks on a list (whatever their origins and expiry).
    pub fn len(&self, kind: ListKind) -> usize {
        self.map(kind).len()
    }

    pub fn is_empty(&self) -> bool {
        self.maps.iter().all(BTreeMap::is_empty)
    }

    /// Removes the entries expired at `now`; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        self.expire_entries(now).len()
    }

    /// Removes the entries expired at `now` and returns them.
    pub(crate) fn expire_entries(&mut self, now: u64) -> Vec<(ListKind, IpNet, EntryOrigin)> {
        let mut gone = Vec::new();
        while let Some(&(e, kind, net, origin)) = self.expiring.first() {
            if live_at(e, now) {
                break;
            }
            let mut slots = self.slots(kind, &net);
            slots.set(origin, None);
            self.set_slots(kind, net, slots);
            gone.push((kind, net, origin));
        }
        gone
    }

    /// Single-address deny entries that apply at `now`, with the expiry the
    /// kernel applies: they go to the kernel's exact maps.
    pub fn exact_denies(&self, now: u64) -> Vec<(IpAddr, u64)> {
        self.map(ListKind::Deny)
            .iter()
            .filter(|(net, _)| is_host(net))
            .filter_map(|(net, s)| s.effective(now).map(|(e, _)| (net.addr(), e)))
            .collect()
    }

    /// The input of the table compiler. Expired entries are left out; the
    /// allowlist is active while it has a live entry.
    pub fn prefix_rules(
        &self,
        countries: Vec<(IpNet, u16)>,
        country_policy: CountryPolicy,
        now: u64,
    ) -> PrefixRules {
        self.prefix_rules_with(&BTreeMap::new(), countries, country_policy, now)
    }

    /// [`Lists::prefix_rules`] of these lists with the entries of
    /// `overlay` in place of their own (a batch not yet applied).
    pub(crate) fn prefix_rules_with(
        &self,
        overlay: &BTreeMap<(ListKind, IpNet), Slots>,
        countries: Vec<(IpNet, u16)>,
        country_policy: CountryPolicy,
        now: u64,
    ) -> PrefixRules {
        let effective = |kind: ListKind| -> Vec<(IpNet, u64)> {
            let own = self
                .map(kind)
                .iter()
                .filter(|(net, _)| !overlay.contains_key(&(kind, **net)))
                .map(|(net, s)| (*net, *s));
            let changed = overlay
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|((_, net), s)| (*net, *s));
            own.chain(changed)
                .filter(|(net, _)| !is_exact(kind, net))
                .filter_map(|(net, s)| s.effective(now).map(|(e, _)| (net, e)))
                .collect()
        };
        let allow: Vec<IpNet> = effective(ListKind::Allow)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        PrefixRules {
            bypass: effective(ListKind::Bypass)
                .into_iter()
                .map(|(n, _)| n)
                .collect(),
            deny: effective(ListKind::Deny),
            allowlist_active: !allow.is_empty(),
            allow,
            countries,
            country_policy,
        }
    }

    /// The most specific network of `kind`, at most `max_len` bits long,
    /// that covers `addr` and has an entry live at `now`, with the entry
    /// the kernel applies.
    pub(crate) fn covering(
        &self,
        kind: ListKind,
        addr: IpAddr,
        now: u64,
        max_len: u8,
    ) -> Option<ListEntry> {
        let map = self.map(kind);
        (0..=max_len).rev().find_map(|len| {
            let net = IpNet::new(addr, len).ok()?.trunc();
            let (expires_ns, origin) = map.get(&net)?.effective(now)?;
            Some(ListEntry {
                net,
                expires_ns,
                origin,
            })
        })
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
        assert!(l.is_empty());
    }

    #[test]
    fn one_network_holds_an_entry_per_origin() {
        let mut l = Lists::default();
        let mut e = entry("198.18.0.1/32", 50);
        l.insert(ListKind::Deny, e);
        e.origin = EntryOrigin::Config;
        e.expires_ns = 0;
        l.insert(ListKind::Deny, e);
        assert_eq!(l.live(ListKind::Deny, 0).len(), 2);
        assert_eq!(l.len(ListKind::Deny), 1);
        // The permanent entry is what the kernel applies.
        assert_eq!(l.exact_denies(0), vec![(e.net.addr(), 0)]);
        assert_eq!(l.expire(60), 1, "the operator's entry expired");
        assert_eq!(l.live(ListKind::Deny, 60), vec![e]);
        assert!(l.remove(ListKind::Deny, &e.net));
        assert!(l.is_empty());
    }

    #[test]
    fn the_longest_lasting_entry_applies() {
        let mut s = Slots::EMPTY;
        assert_eq!(s.effective(0), None);
        s.set(EntryOrigin::Auto, Some(100));
        s.set(EntryOrigin::Operator, Some(300));
        assert_eq!(s.effective(0), Some((300, EntryOrigin::Operator)));
        s.set(EntryOrigin::Config, Some(0));
        assert_eq!(s.effective(0), Some((0, EntryOrigin::Config)));
        s.set(EntryOrigin::Config, None);
        assert_eq!(s.effective(300), None, "all expired");
        s.set(EntryOrigin::Auto, Some(u64::MAX));
        assert_eq!(s.get(EntryOrigin::Auto), Some(u64::MAX - 1));
    }

    #[test]
    fn expiry_index_follows_replacements() {
        let mut l = Lists::default();
        l.insert(ListKind::Deny, entry("198.18.0.0/24", 10));
        // Made permanent: the old expiry must not remove it.
        l.insert(ListKind::Deny, entry("198.18.0.0/24", 0));
        assert_eq!(l.expire(20), 0);
        assert_eq!(l.live(ListKind::Deny, 20).len(), 1);
        l.insert(ListKind::Bypass, entry("198.18.1.0/24", 30));
        l.remove(ListKind::Bypass, &"198.18.1.0/24".parse().unwrap());
        assert_eq!(l.expire(40), 0);
        assert!(l.expiring.is_empty());
    }

    #[test]
    fn covering_finds_the_most_specific_live_network() {
        let mut l = Lists::default();
        l.insert(ListKind::Deny, entry("198.18.0.0/16", 0));
        l.insert(ListKind::Deny, entry("198.18.7.0/24", 10));
        let addr: IpAddr = "198.18.7.7".parse().unwrap();
        assert_eq!(
            l.covering(ListKind::Deny, addr, 0, 32).map(|e| e.net),
            Some("198.18.7.0/24".parse().unwrap())
        );
        assert_eq!(
            l.covering(ListKind::Deny, addr, 10, 32).map(|e| e.net),
            Some("198.18.0.0/16".parse().unwrap()),
            "the /24 has expired"
        );
        assert_eq!(l.covering(ListKind::Allow, addr, 0, 32), None);
        l.insert(ListKind::Deny, entry("198.18.7.7/32", 0));
        assert_eq!(
            l.covering(ListKind::Deny, addr, 0, 31).map(|e| e.net),
            Some("198.18.7.0/24".parse().unwrap()),
            "shorter than a host"
        );
    }
}
