//! Batches of changes to the lists, worked out before anything is applied.
//!
//! [`plan`] reads the current lists and a batch and says what every network
//! the batch touches ends up with, without changing (or copying) the lists:
//! the cost is the batch's size, plus one pass over a list for each
//! [`Change::ReplaceOrigin`]. The plan then tells whether the prefix table
//! must be rebuilt and which exact deny entries change.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;

use super::lists::{EntryOrigin, ListKind, Lists, Slots, is_exact};
use crate::rules::CountryPolicy;

/// One change of a batch. Networks are taken without their host bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Adds entries (network, CLOCK_MONOTONIC expiry in ns or 0 for
    /// permanent, origin), or sets the expiry of the entry of the same
    /// network and origin.
    Add {
        kind: ListKind,
        entries: Vec<(IpNet, u64, EntryOrigin)>,
    },
    /// Removes every entry of these networks, whatever their origin.
    Remove {
        kind: ListKind,
        nets: Vec<IpNet>,
    },
    /// Removes the entries of these networks that have this origin; other
    /// origins' entries stay.
    RemoveOrigin {
        kind: ListKind,
        origin: EntryOrigin,
        nets: Vec<IpNet>,
    },
    /// Makes `entries` the whole set of `origin`'s entries on the list:
    /// entries of that origin not given are removed, other origins' entries
    /// stay (a configuration reload, a `--from-file --replace`). Each entry
    /// is (network, CLOCK_MONOTONIC expiry in ns, 0 = permanent).
    ReplaceOrigin {
        kind: ListKind,
        origin: EntryOrigin,
        entries: Vec<(IpNet, u64)>,
    },
    /// A new country table: (prefix, `rampart_common::country_index`).
    Countries(Vec<(IpNet, u16)>),
    CountryPolicy(CountryPolicy),
}

/// What a batch did, counted per entry (network and origin) as the batch
/// went: an entry added and removed in the same batch counts twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries that did not exist (or had expired).
    pub added: usize,
    /// Existing entries whose expiry changed.
    pub updated: usize,
    /// Entries removed (only those that still applied).
    pub removed: usize,
    /// Entries added as they already were.
    pub unchanged: usize,
    /// Networks to remove that had no live entry (of the origin asked for).
    pub not_found: usize,
    /// Whether the prefix table was rebuilt (prefix entries, countries or
    /// the country policy changed).
    pub table_rebuilt: bool,
    /// Exact deny entries written to the kernel.
    pub exact_written: usize,
}

impl Applied {
    /// Entries added, updated or removed.
    pub fn changed(&self) -> usize {
        self.added + self.updated + self.removed
    }
}

/// A batch worked out against the current lists.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The final entries of every network the batch touches (empty: the
    /// network leaves the list).
    pub touched: BTreeMap<(ListKind, IpNet), Slots>,
    pub countries: Option<Vec<(IpNet, u16)>>,
    pub policy: Option<CountryPolicy>,
    pub applied: Applied,
}

/// Works a batch out against `lists` at time `now`. Pure: nothing changes.
pub(crate) fn plan(lists: &Lists, batch: &[Change], now: u64) -> Plan {
    let mut p = Plan::default();
    for change in batch {
        match change {
            Change::Add { kind, entries } => {
                for (net, expires_ns, origin) in entries {
                    p.set(lists, *kind, net.trunc(), *origin, *expires_ns, now);
                }
            }
            Change::Remove { kind, nets } => {
                for net in nets {
                    p.remove(lists, *kind, net.trunc(), None, now);
                }
            }
            Change::RemoveOrigin { kind, origin, nets } => {
                for net in nets {
                    p.remove(lists, *kind, net.trunc(), Some(*origin), now);
                }
            }
            Change::ReplaceOrigin {
                kind,
                origin,
                entries,
            } => {
                let wanted: HashMap<IpNet, u64> =
                    entries.iter().map(|(n, e)| (n.trunc(), *e)).collect();
                let mut stale: Vec<IpNet> = lists
                    .iter(*kind)
                    .filter(|(net, _)| !p.touched.contains_key(&(*kind, **net)))
                    .filter(|(net, s)| s.get(*origin).is_some() && !wanted.contains_key(*net))
                    .map(|(net, _)| *net)
                    .collect();
                stale.extend(
                    p.touched
                        .iter()
                        .filter(|((k, net), s)| {
                            k == kind && s.get(*origin).is_some() && !wanted.contains_key(net)
                        })
                        .map(|((_, net), _)| *net),
                );
                for net in stale {
                    p.remove(lists, *kind, net, Some(*origin), now);
                }
                for (net, expires_ns) in entries {
                    p.set(lists, *kind, net.trunc(), *origin, *expires_ns, now);
                }
            }
            Change::Countries(c) => p.countries = Some(c.clone()),
            Change::CountryPolicy(c) => p.policy = Some(c.clone()),
        }
    }
    p
}

impl Plan {
    fn slots(&mut self, lists: &Lists, kind: ListKind, net: IpNet) -> &mut Slots {
        self.touched
            .entry((kind, net))
            .or_insert_with(|| lists.slots(kind, &net))
    }

    fn set(
        &mut self,
        lists: &Lists,
        kind: ListKind,
        net: IpNet,
        origin: EntryOrigin,
        expires_ns: u64,
        now: u64,
    ) {
        let slots = self.slots(lists, kind, net);
        let before = slots.live(origin, now);
        slots.set(origin, Some(expires_ns));
        let after = slots.get(origin);
        let counter = match before {
            None => &mut self.applied.added,
            Some(b) if Some(b) == after => &mut self.applied.unchanged,
            Some(_) => &mut self.applied.updated,
        };
        *counter += 1;
    }

    fn remove(
        &mut self,
        lists: &Lists,
        kind: ListKind,
        net: IpNet,
        origin: Option<EntryOrigin>,
        now: u64,
    ) {
        // Looked up first, so that removing an absent network leaves no
        // trace in the plan.
        let current = self
            .touched
            .get(&(kind, net))
            .copied()
            .unwrap_or_else(|| lists.slots(kind, &net));
        let origins: &[EntryOrigin] = match &origin {
            Some(o) => std::slice::from_ref(o),
            None => &EntryOrigin::ALL,
        };
        if origins.iter().all(|o| current.get(*o).is_none()) {
            self.applied.not_found += 1;
            return;
        }
        let live = origins
            .iter()
            .filter(|o| current.live(**o, now).is_some())
            .count();
        if live == 0 {
            self.applied.not_found += 1;
        }
        self.applied.removed += live;
        let slots = self.slots(lists, kind, net);
        for o in origins {
            slots.set(*o, None);
        }
    }

    /// Whether the prefix table changes: a prefix entry, the country table
    /// or the country policy.
    pub(crate) fn prefix_changed(
        &self,
        lists: &Lists,
        countries: &[(IpNet, u16)],
        policy: &CountryPolicy,
    ) -> bool {
        self.countries.as_deref().is_some_and(|c| c != countries)
            || self.policy.as_ref().is_some_and(|p| p != policy)
            || self
                .touched
                .iter()
                .any(|((kind, net), s)| !is_exact(*kind, net) && *s != lists.slots(*kind, net))
    }

    /// The exact deny entries the kernel should hold after the batch for
    /// the addresses it touches: (address, expiry or `None` for no entry).
    pub(crate) fn exact_targets(&self, now: u64) -> Vec<(IpAddr, Option<u64>)> {
        self.touched
            .iter()
            .filter(|((kind, net), _)| is_exact(*kind, net))
            .map(|((_, net), s)| (net.addr(), s.effective(now).map(|(e, _)| e)))
            .collect()
    }

    /// Every exact deny entry after the batch (a full resynchronisation).
    pub(crate) fn all_exact(&self, lists: &Lists, now: u64) -> Vec<(IpAddr, u64)> {
        let mut all: HashMap<IpAddr, u64> = lists.exact_denies(now).into_iter().collect();
        for (addr, target) in self.exact_targets(now) {
            match target {
                Some(e) => all.insert(addr, e),
                None => all.remove(&addr),
            };
        }
        all.into_iter().collect()
    }

    /// Writes the touched entries into `lists`.
    pub(crate) fn commit_lists(self, lists: &mut Lists) {
        for ((kind, net), slots) in self.touched {
            lists.set_slots(kind, net, slots);
        }
    }
}

#[cfg(test)]
mod tests;
