//! The exact deny maps and their generations: how a batch of single-address
//! changes is staged so that one write of the configuration applies it
//! whole.
//!
//! Every entry carries the window of exact generations in which it applies
//! (`DenyEntry::from_gen..until_gen`). With generation `g` in force, a batch
//! writes new entries from `g + 1` on and retires removed ones at `g + 1`;
//! none of that changes a verdict until the configuration's generation
//! becomes `g + 1`, and then all of it does. Retired entries are deleted a
//! little later ([`RETIRE_GRACE_NS`]); entries that stay are not rewritten.
//!
//! This module owns the bookkeeping and talks to the maps through
//! [`DenyMaps`], so the logic is tested without a kernel.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use rampart_common::{DenyEntry, GEN_FOREVER, config_flags};

use super::{FilterError, lists::live_at};

/// The kernel's exact deny maps (one per family), as seen from here.
pub(crate) trait DenyMaps {
    /// Inserts or overwrites an entry; a full map is
    /// [`FilterError::DenyMapFull`].
    fn put(&mut self, addr: IpAddr, entry: DenyEntry) -> Result<(), FilterError>;
    /// Deletes an entry; an absent one is not an error.
    fn delete(&mut self, addr: IpAddr) -> Result<(), FilterError>;
}

/// The highest generation: entries staged for it still end before
/// [`GEN_FOREVER`]. Reaching it starts the count over ([`ExactSet::rebase`]).
pub(crate) const MAX_GEN: u32 = GEN_FOREVER - 1;

/// How long a retired entry stays in its map after the flip that retired
/// it. A packet that read the generation just before the flip may look the
/// entry up just after; it must still find it. XDP programs run without
/// preemption and take well under a microsecond, so this is a wide margin.
pub(crate) const RETIRE_GRACE_NS: u64 = 10_000_000;

fn family(addr: &IpAddr) -> usize {
    match addr {
        IpAddr::V4(_) => 0,
        IpAddr::V6(_) => 1,
    }
}

fn family_number(f: usize) -> u8 {
    if f == 0 { 4 } else { 6 }
}

/// The exact deny entries in the kernel, as written, with the generation in
/// force.
#[derive(Debug)]
pub(crate) struct ExactSet {
    /// Every entry in the maps, as written.
    entries: HashMap<IpAddr, DenyEntry>,
    /// The generation in force.
    generation: u32,
    /// Entries that apply in no generation from now on, with the time from
    /// which their grace runs (0: deletable at once).
    dead: HashMap<IpAddr, u64>,
    /// `dead` in time order; an item whose time no longer matches `dead`
    /// (the entry was written again since) is skipped.
    dead_queue: VecDeque<(u64, IpAddr)>,
    /// Entries in the maps, per family (IPv4, IPv6).
    stored: [usize; 2],
    /// Entries in force, per family (expired ones until they are tidied):
    /// what counts against the capacity.
    live: [usize; 2],
    /// Entries in force allowed per family (`filter.max_deny_entries`). The
    /// maps hold twice as many, so that a batch can replace every entry.
    capacity: u32,
    /// False after an undo failed: the maps may differ from the lists, and
    /// the next batch must compare everything.
    consistent: bool,
}

/// A staged batch: written, not yet in force.
#[derive(Debug)]
#[must_use = "a staged batch is either committed after the flip or aborted"]
pub(crate) struct Staged {
    next_gen: u32,
    /// What was written, with the value it replaced (None: it was absent).
    undo: Vec<(IpAddr, Option<DenyEntry>)>,
    /// Entries that stop applying at the flip.
    retired: Vec<IpAddr>,
    live_after: [usize; 2],
}

impl Staged {
    /// The generation that puts the batch in force.
    pub(crate) fn next_gen(&self) -> u32 {
        self.next_gen
    }

    /// Whether the batch changes nothing in the maps (no flip needed).
    pub(crate) fn is_empty(&self) -> bool {
        self.undo.is_empty()
    }

    /// Entries written.
    pub(crate) fn written(&self) -> usize {
        self.undo.len()
    }
}

/// What a batch needs, checked before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    live_after: [usize; 2],
    fresh: [usize; 2],
}

impl ExactSet {
    /// The bookkeeping of maps that hold `entries`, with generation `gen`
    /// in force. Entries outside their window (retired, or staged by a
    /// batch that never flipped) are deleted by the next [`ExactSet::reap`].
    pub(crate) fn new(entries: HashMap<IpAddr, DenyEntry>, generation: u32, capacity: u32) -> Self {
        let mut set = Self {
            entries: HashMap::with_capacity(entries.len()),
            generation,
            dead: HashMap::new(),
            dead_queue: VecDeque::new(),
            stored: [0; 2],
            live: [0; 2],
            capacity,
            consistent: true,
        };
        for (addr, e) in entries {
            set.stored[family(&addr)] += 1;
            if e.in_window(generation) {
                set.live[family(&addr)] += 1;
            } else {
                set.mark_dead(addr, 0);
            }
            set.entries.insert(addr, e);
        }
        set
    }

    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    /// Entries in the maps (retired ones included).
    pub(crate) fn stored(&self) -> usize {
        self.stored[0] + self.stored[1]
    }

    pub(crate) fn consistent(&self) -> bool {
        self.consistent
    }

    /// The entry for `addr` if it applies at `now` in the generation in
    /// force (what the kernel finds).
    pub(crate) fn applying(&self, addr: IpAddr, now: u64) -> Option<DenyEntry> {
        self.entries
            .get(&addr)
            .copied()
            .filter(|e| e.applies(self.generation, now))
    }

    /// `EXACT_V4 | EXACT_V6` for the maps that hold anything: the program
    /// skips the lookup in an empty one.
    pub(crate) fn presence(&self) -> u32 {
        let mut flags = 0;
        if self.stored[0] > 0 {
            flags |= config_flags::EXACT_V4;
        }
        if self.stored[1] > 0 {
            flags |= config_flags::EXACT_V6;
        }
        flags
    }

    fn mark_dead(&mut self, addr: IpAddr, since: u64) {
        self.dead.insert(addr, since);
        self.dead_queue.push_back((since, addr));
    }

    fn write(
        &mut self,
        maps: &mut impl DenyMaps,
        addr: IpAddr,
        e: DenyEntry,
    ) -> Result<(), FilterError> {
        maps.put(addr, e)?;
        if self.entries.insert(addr, e).is_none() {
            self.stored[family(&addr)] += 1;
        }
        Ok(())
    }

    fn erase(&mut self, maps: &mut impl DenyMaps, addr: IpAddr) -> Result<(), FilterError> {
        maps.delete(addr)?;
        if self.entries.remove(&addr).is_some() {
            self.stored[family(&addr)] -= 1;
        }
        self.dead.remove(&addr);
        Ok(())
    }

    /// Deletes the dead entries whose grace began at or before `before`;
    /// returns how many.
    pub(crate) fn reap(
        &mut self,
        maps: &mut impl DenyMaps,
        before: u64,
    ) -> Result<usize, FilterError> {
        let mut n = 0;
        while let Some(&(since, addr)) = self.dead_queue.front() {
            if since > before {
                break;
            }
            if self.dead.get(&addr) == Some(&since) {
                let still_dead = self
                    .entries
                    .get(&addr)
                    .is_none_or(|e| !e.in_window(self.generation));
                if still_dead {
                    self.erase(maps, addr)?;
                    n += 1;
                } else {
                    self.dead.remove(&addr);
                }
            }
            self.dead_queue.pop_front();
        }
        Ok(n)
    }

    /// When the grace of the most recently retired entry began, if any
    /// entry waits.
    pub(crate) fn newest_dead(&self) -> Option<u64> {
        if self.dead.is_empty() {
            return None;
        }
        self.dead_queue.back().map(|(since, _)| *since)
    }

    /// Checks a batch against the capacity before anything is written:
    /// `targets` are (address, expiry or None for no entry), one per address.
    pub(crate) fn check(&self, targets: &[(IpAddr, Option<u64>)]) -> Result<Needs, FilterError> {
        let mut live_after = self.live;
        let mut fresh = [0; 2];
        for (addr, target) in targets {
            let f = family(addr);
            let cur = self.entries.get(addr);
            let was_live = cur.is_some_and(|e| e.in_window(self.generation));
            match target {
                Some(_) if !was_live => {
                    live_after[f] += 1;
                    if cur.is_none() {
                        fresh[f] += 1;
                    }
                }
                None if was_live => live_after[f] -= 1,
                _ => {}
            }
        }
        for (f, n) in live_after.iter().enumerate() {
            if *n > self.capacity as usize {
                return Err(FilterError::DenyMapFull {
                    family: family_number(f),
                    capacity: self.capacity,
                });
            }
        }
        Ok(Needs { live_after, fresh })
    }

    /// Whether the maps have room for the batch's new addresses without
    /// deleting dead entries first.
    pub(crate) fn has_room(&self, needs: &Needs) -> bool {
        let slots = 2 * self.capacity as usize;
        (0..2).all(|f| self.stored[f] + needs.fresh[f] <= slots)
    }

    /// Writes a batch for the next generation. Nothing changes a verdict
    /// until the caller makes [`Staged::next_gen`] the generation in force
    /// and calls [`ExactSet::commit`]. On an error, what was written is
    /// undone and the error returned.
    pub(crate) fn stage(
        &mut self,
        maps: &mut impl DenyMaps,
        targets: &[(IpAddr, Option<u64>)],
        needs: Needs,
        now: u64,
    ) -> Result<Staged, FilterError> {
        debug_assert!(self.generation < MAX_GEN, "rebase before staging");
        let g = self.generation;
        let n = g + 1;
        let mut staged = Staged {
            next_gen: n,
            undo: Vec::new(),
            retired: Vec::new(),
            live_after: needs.live_after,
        };
        for (addr, target) in targets {
            let cur = self.entries.get(addr).copied();
            let live = cur.filter(|e| e.in_window(g));
            let write = match (target, live) {
                (Some(expires_ns), Some(c)) => {
                    // Still in force before the flip: keep its start unless
                    // it has expired (then it starts again at the flip).
                    let from_gen = if live_at(c.expires_ns, now) {
                        c.from_gen
                    } else {
                        n
                    };
                    Some(DenyEntry {
                        expires_ns: *expires_ns,
                        from_gen,
                        until_gen: GEN_FOREVER,
                    })
                }
                (Some(expires_ns), None) => Some(DenyEntry {
                    expires_ns: *expires_ns,
                    from_gen: n,
                    until_gen: GEN_FOREVER,
                }),
                (None, Some(c)) => {
                    staged.retired.push(*addr);
                    Some(DenyEntry { until_gen: n, ..c })
                }
                (None, None) => None,
            };
            let Some(e) = write.filter(|e| Some(*e) != cur) else {
                continue;
            };
            if let Err(err) = self.write(maps, *addr, e) {
                self.abort(maps, staged);
                return Err(err);
            }
            staged.undo.push((*addr, cur));
        }
        Ok(staged)
    }

    /// The flip happened at `now`: `staged.next_gen()` is in force.
    pub(crate) fn commit(&mut self, staged: Staged, now: u64) {
        self.generation = staged.next_gen;
        self.live = staged.live_after;
        for (addr, _) in &staged.undo {
            if self
                .entries
                .get(addr)
                .is_some_and(|e| e.in_window(self.generation))
            {
                self.dead.remove(addr);
            }
        }
        for addr in staged.retired {
            self.mark_dead(addr, now);
        }
    }

    /// The flip did not happen: restores what `staged` overwrote. What
    /// cannot be restored is recorded: an entry that would apply from the
    /// next generation on is deleted by the next reap; otherwise the set is
    /// marked inconsistent.
    pub(crate) fn abort(&mut self, maps: &mut impl DenyMaps, staged: Staged) {
        for (addr, prev) in staged.undo.into_iter().rev() {
            let restored = match prev {
                None => self.erase(maps, addr),
                Some(e) => self.write(maps, addr, e),
            };
            if restored.is_err() {
                // Left as staged. Outside the window in force, it applies to
                // nothing now (staging only moves an entry out of the window
                // when it did not apply either), and the reap at the start
                // of the next batch deletes it before any flip.
                let harmless = self
                    .entries
                    .get(&addr)
                    .is_none_or(|e| !e.in_window(self.generation));
                if harmless {
                    self.mark_dead(addr, 0);
                } else {
                    self.consistent = false;
                }
            }
        }
    }

    /// After a successful full comparison ([`ExactSet::full_targets`]).
    pub(crate) fn mark_consistent(&mut self) {
        self.consistent = true;
    }

    /// Targets that make the maps hold exactly `desired` (address, expiry),
    /// in address order.
    pub(crate) fn full_targets(&self, desired: &[(IpAddr, u64)]) -> Vec<(IpAddr, Option<u64>)> {
        let want: HashMap<IpAddr, u64> = desired.iter().copied().collect();
        let mut targets: Vec<(IpAddr, Option<u64>)> =
            desired.iter().map(|(a, e)| (*a, Some(*e))).collect();
        targets.extend(
            self.entries
                .iter()
                .filter(|(a, e)| e.in_window(self.generation) && !want.contains_key(a))
                .map(|(a, _)| (*a, None)),
        );
        targets.sort_unstable_by_key(|(a, _)| *a);
        targets.dedup_by_key(|(a, _)| *a);
        targets
    }

    /// Deletes the entries of `addrs` that have expired at `now` (the
    /// kernel ignores them already; no flip is needed).
    pub(crate) fn delete_expired(
        &mut self,
        maps: &mut impl DenyMaps,
        addrs: &[IpAddr],
        now: u64,
    ) -> Result<usize, FilterError> {
        let mut n = 0;
        for addr in addrs {
            let Some(e) = self.entries.get(addr).copied() else {
                continue;
            };
            if e.in_window(self.generation) && !live_at(e.expires_ns, now) {
                self.erase(maps, *addr)?;
                self.live[family(addr)] -= 1;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Whether the generation must start over before the next batch.
    pub(crate) fn needs_rebase(&self) -> bool {
        self.generation >= MAX_GEN
    }

    /// Rewrites every entry to apply from generation 0 on (still in force
    /// now), so that the caller can make 0 the generation in force and
    /// call [`ExactSet::rebased`]. Dead entries must have been reaped
    /// first: a retired entry would apply again.
    pub(crate) fn rebase(&mut self, maps: &mut impl DenyMaps) -> Result<(), FilterError> {
        let all: Vec<(IpAddr, DenyEntry)> = self.entries.iter().map(|(a, e)| (*a, *e)).collect();
        for (addr, e) in all {
            if !e.in_window(self.generation) {
                self.erase(maps, addr)?;
            } else if e.from_gen != 0 {
                self.write(maps, addr, DenyEntry { from_gen: 0, ..e })?;
            }
        }
        Ok(())
    }

    pub(crate) fn rebased(&mut self) {
        self.generation = 0;
    }
}

#[cfg(test)]
mod tests;
