use std::collections::BTreeSet;

use super::*;

/// In-memory exact maps with a size limit per family and failures on
/// demand.
#[derive(Default)]
struct FakeMaps {
    map: HashMap<IpAddr, DenyEntry>,
    /// Entries allowed per family.
    slots: usize,
    /// Puts that succeed before every further put fails.
    puts_left: Option<usize>,
    fail_deletes: bool,
}

impl FakeMaps {
    fn new(slots: usize) -> Self {
        Self {
            slots,
            ..Self::default()
        }
    }

    fn full(addr: &IpAddr) -> FilterError {
        FilterError::DenyMapFull {
            family: family_number(family(addr)),
            capacity: 0,
        }
    }

    /// What the program would find applying in generation `g` at `now`.
    fn applying(&self, g: u32, now: u64) -> BTreeSet<IpAddr> {
        self.map
            .iter()
            .filter(|(_, e)| e.applies(g, now))
            .map(|(a, _)| *a)
            .collect()
    }
}

impl DenyMaps for FakeMaps {
    fn put(&mut self, addr: IpAddr, entry: DenyEntry) -> Result<(), FilterError> {
        if let Some(left) = &mut self.puts_left {
            if *left == 0 {
                return Err(Self::full(&addr));
            }
            *left -= 1;
        }
        let used = self
            .map
            .keys()
            .filter(|a| family(a) == family(&addr))
            .count();
        if !self.map.contains_key(&addr) && used >= self.slots {
            return Err(Self::full(&addr));
        }
        self.map.insert(addr, entry);
        Ok(())
    }

    fn delete(&mut self, addr: IpAddr) -> Result<(), FilterError> {
        if self.fail_deletes {
            return Err(Self::full(&addr));
        }
        self.map.remove(&addr);
        Ok(())
    }
}

fn v4(i: u32) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
}

fn set(addrs: impl IntoIterator<Item = IpAddr>) -> BTreeSet<IpAddr> {
    addrs.into_iter().collect()
}

/// Runs one batch through stage, flip and commit.
fn run(
    set: &mut ExactSet,
    maps: &mut FakeMaps,
    targets: &[(IpAddr, Option<u64>)],
    now: u64,
) -> Result<usize, FilterError> {
    let needs = set.check(targets)?;
    let staged = set.stage(maps, targets, needs, now)?;
    let n = staged.written();
    set.commit(staged, now);
    Ok(n)
}

fn permanent(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<(IpAddr, Option<u64>)> {
    addrs.into_iter().map(|a| (a, Some(0))).collect()
}

#[test]
fn a_staged_batch_changes_no_verdict_until_the_flip() {
    let mut maps = FakeMaps::new(100);
    let mut exact = ExactSet::new(HashMap::new(), 0, 50);
    run(&mut exact, &mut maps, &permanent((0..10).map(v4)), 1).unwrap();
    let g = exact.generation();
    let old = set((0..10).map(v4));
    assert_eq!(maps.applying(g, 1), old);

    // Remove 0..5, add 10..15, make 7 temporary.
    let mut targets: Vec<(IpAddr, Option<u64>)> = (0..5).map(|i| (v4(i), None)).collect();
    targets.extend(permanent((10..15).map(v4)));
    targets.push((v4(7), Some(1_000)));
    let needs = exact.check(&targets).unwrap();
    let staged = exact.stage(&mut maps, &targets, needs, 2).unwrap();
    let n = staged.next_gen();
    assert_eq!(n, g + 1);
    let new = set((5..15).map(v4));
    assert_eq!(maps.applying(g, 2), old, "nothing changed before the flip");
    assert_eq!(maps.applying(n, 2), new, "everything changes at the flip");
    exact.commit(staged, 2);
    assert_eq!(exact.generation(), n);
    assert_eq!(exact.applying(v4(7), 2).map(|e| e.expires_ns), Some(1_000));
    assert_eq!(exact.applying(v4(0), 2), None);
    // Retired entries stay for their grace, then go.
    assert_eq!(maps.map.len(), 15);
    assert_eq!(exact.reap(&mut maps, 1).unwrap(), 0);
    assert_eq!(exact.reap(&mut maps, 2).unwrap(), 5);
    assert_eq!(maps.map.len(), 10);
    assert_eq!(exact.stored(), 10);
    assert_eq!(maps.applying(n, 2), new);
}

#[test]
fn entries_that_stay_are_not_rewritten() {
    let mut maps = FakeMaps::new(100);
    let mut exact = ExactSet::new(HashMap::new(), 0, 50);
    run(&mut exact, &mut maps, &permanent((0..10).map(v4)), 1).unwrap();
    let written = run(&mut exact, &mut maps, &permanent((5..12).map(v4)), 2).unwrap();
    assert_eq!(written, 2, "only the two new entries");
    let written = run(&mut exact, &mut maps, &permanent((5..12).map(v4)), 3).unwrap();
    assert_eq!(written, 0);
}

#[test]
fn a_failed_write_undoes_the_batch() {
    let mut maps = FakeMaps::new(100);
    let mut exact = ExactSet::new(HashMap::new(), 0, 50);
    run(&mut exact, &mut maps, &permanent((0..10).map(v4)), 1).unwrap();
    let before = maps.map.clone();
    let g = exact.generation();

    // Retiring the ten old entries rewrites them; the sixth new one finds
    // the map full (as the kernel's E2BIG).
    let mut targets: Vec<(IpAddr, Option<u64>)> = (0..10).map(|i| (v4(i), None)).collect();
    targets.extend(permanent((10..20).map(v4)));
    maps.slots = 15;
    let needs = exact.check(&targets).unwrap();
    let err = exact.stage(&mut maps, &targets, needs, 2).unwrap_err();
    assert!(matches!(err, FilterError::DenyMapFull { family: 4, .. }));
    maps.slots = 100;
    assert_eq!(maps.map, before, "the maps are as they were");
    assert_eq!(exact.generation(), g);
    assert_eq!(exact.stored(), 10);
    assert!(exact.consistent());
    // The next batch works and counts from the same state.
    run(&mut exact, &mut maps, &targets, 3).unwrap();
    assert_eq!(maps.applying(exact.generation(), 3), set((10..20).map(v4)));
}

#[test]
fn what_a_failed_undo_leaves_never_applies() {
    let mut maps = FakeMaps::new(100);
    let mut exact = ExactSet::new(HashMap::new(), 0, 50);
    run(&mut exact, &mut maps, &permanent((0..3).map(v4)), 1).unwrap();
    let g = exact.generation();
    // New entries are written, then a write fails and so do the deletes
    // that would undo them.
    maps.puts_left = Some(2);
    maps.fail_deletes = true;
    let targets = permanent((10..13).map(v4));
    let needs = exact.check(&targets).unwrap();
    assert!(exact.stage(&mut maps, &targets, needs, 2).is_err());
    assert_eq!(maps.map.len(), 5, "two staged entries stayed");
    assert_eq!(maps.applying(g, 2), set((0..3).map(v4)));
    assert!(
        exact.consistent(),
        "they apply to nothing: no resync needed"
    );
    // They are deleted before the next batch can flip.
    maps.puts_left = None;
    maps.fail_deletes = false;
    assert_eq!(exact.reap(&mut maps, 2).unwrap(), 2);
    let targets = permanent([v4(20)]);
    run(&mut exact, &mut maps, &targets, 3).unwrap();
    assert_eq!(
        maps.applying(exact.generation(), 3),
        set([v4(0), v4(1), v4(2), v4(20)])
    );
}

#[test]
fn a_failed_restore_of_an_entry_in_force_asks_for_a_resync() {
    let mut maps = FakeMaps::new(100);
    let mut exact = ExactSet::new(HashMap::new(), 0, 50);
    run(&mut exact, &mut maps, &permanent((0..3).map(v4)), 1).unwrap();
    // Retiring 0 is written, adding 10 fails, restoring 0 fails.
    maps.puts_left = Some(1);
    let targets = vec![(v4(0), None), (v4(10), Some(0))];
    let needs = exact.check(&targets).unwrap();
    assert!(exact.stage(&mut maps, &targets, needs, 2).is_err());
    assert!(!exact.consistent());
    maps.puts_left = None;
    // A full comparison puts it right before the next flip.
    let full = exact.full_targets(&[(v4(0), 0), (v4(1), 0), (v4(2), 0)]);
    run(&mut exact, &mut maps, &full, 3).unwrap();
    exact.mark_consistent();
    assert_eq!(
        maps.applying(exact.generation(), 3),
        set((0..3).map(v4)),
        "0 still applies after the next flip"
    );
}

#[test]
fn capacity_counts_entries_in_force_and_room_allows_a_full_swap() {
    let mut maps = FakeMaps::new(6);
    let mut exact = ExactSet::new(HashMap::new(), 0, 3);
    run(&mut exact, &mut maps, &permanent((0..3).map(v4)), 1).unwrap();
    let more = permanent([v4(3)]);
    let err = exact.check(&more).unwrap_err();
    assert!(matches!(
        err,
        FilterError::DenyMapFull {
            family: 4,
            capacity: 3
        }
    ));
    // Swapping all three for three others fits (six slots).
    let mut swap: Vec<(IpAddr, Option<u64>)> = (0..3).map(|i| (v4(i), None)).collect();
    swap.extend(permanent((3..6).map(v4)));
    let needs = exact.check(&swap).unwrap();
    assert!(exact.has_room(&needs));
    run(&mut exact, &mut maps, &swap, 2).unwrap();
    // The retired three still take slots until they are reaped.
    let mut back: Vec<(IpAddr, Option<u64>)> = (3..6).map(|i| (v4(i), None)).collect();
    back.extend(permanent((6..9).map(v4)));
    let needs = exact.check(&back).unwrap();
    assert!(!exact.has_room(&needs));
    exact.reap(&mut maps, 2).unwrap();
    assert!(exact.has_room(&needs));
    run(&mut exact, &mut maps, &back, 3).unwrap();
    assert_eq!(maps.applying(exact.generation(), 3), set((6..9).map(v4)));
}

#[test]
fn a_renewed_expired_entry_applies_only_from_the_flip() {
    let mut maps = FakeMaps::new(100);
    let mut exact = ExactSet::new(HashMap::new(), 0, 50);
    run(
        &mut exact,
        &mut maps,
        &[(v4(1), Some(5)), (v4(2), Some(0))],
        1,
    )
    .unwrap();
    let g = exact.generation();
    // At 10, v4(1) has expired; renewing it must not make it apply early.
    let targets = vec![(v4(1), Some(100)), (v4(3), Some(0))];
    let needs = exact.check(&targets).unwrap();
    let staged = exact.stage(&mut maps, &targets, needs, 10).unwrap();
    assert_eq!(maps.applying(g, 10), set([v4(2)]));
    assert_eq!(
        maps.applying(staged.next_gen(), 10),
        set([v4(1), v4(2), v4(3)])
    );
    exact.commit(staged, 10);
}

#[test]
fn a_changed_expiry_of_an_entry_in_force_keeps_it_in_force() {
    let mut maps = FakeMaps::new(100);
    let mut exact = ExactSet::new(HashMap::new(), 0, 50);
    run(&mut exact, &mut maps, &[(v4(1), Some(0))], 1).unwrap();
    let g = exact.generation();
    let targets = vec![(v4(1), Some(1_000))];
    let needs = exact.check(&targets).unwrap();
    let staged = exact.stage(&mut maps, &targets, needs, 2).unwrap();
    assert_eq!(maps.applying(g, 2), set([v4(1)]));
    assert_eq!(maps.applying(staged.next_gen(), 2), set([v4(1)]));
    exact.commit(staged, 2);
    assert_eq!(maps.applying(exact.generation(), 1_000), set([]));
}

#[test]
fn the_generation_starts_over_before_it_runs_out() {
    let mut maps = FakeMaps::new(100);
    let g = MAX_GEN;
    let entries: HashMap<IpAddr, DenyEntry> = [(v4(1), 0), (v4(2), g - 7), (v4(3), g)]
        .into_iter()
        .map(|(a, from_gen)| {
            (
                a,
                DenyEntry {
                    expires_ns: 0,
                    from_gen,
                    until_gen: GEN_FOREVER,
                },
            )
        })
        .collect();
    maps.map = entries.clone();
    let mut exact = ExactSet::new(entries, g, 50);
    assert!(exact.needs_rebase());
    let all = set([v4(1), v4(2), v4(3)]);
    exact.rebase(&mut maps).unwrap();
    assert_eq!(maps.applying(g, 1), all, "still in force before the flip");
    assert_eq!(maps.applying(0, 1), all, "and after it");
    exact.rebased();
    assert!(!exact.needs_rebase());
    run(&mut exact, &mut maps, &[(v4(1), None), (v4(4), Some(0))], 2).unwrap();
    assert_eq!(maps.applying(1, 2), set([v4(2), v4(3), v4(4)]));
}

#[test]
fn reopened_maps_drop_what_is_outside_the_window() {
    let g = 40;
    let entry = |from_gen, until_gen| DenyEntry {
        expires_ns: 0,
        from_gen,
        until_gen,
    };
    let entries: HashMap<IpAddr, DenyEntry> = [
        (v4(1), entry(3, GEN_FOREVER)),
        // Retired at the last flip.
        (v4(2), entry(3, g)),
        // Staged by a batch that never flipped.
        (v4(3), entry(g + 1, GEN_FOREVER)),
    ]
    .into_iter()
    .collect();
    let mut maps = FakeMaps::new(100);
    maps.map = entries.clone();
    let mut exact = ExactSet::new(entries, g, 50);
    assert_eq!(exact.presence(), config_flags::EXACT_V4);
    assert_eq!(exact.reap(&mut maps, 0).unwrap(), 2);
    assert_eq!(maps.map.keys().copied().collect::<Vec<_>>(), vec![v4(1)]);
    // The next batch's flip to g + 1 does not revive v4(3).
    run(&mut exact, &mut maps, &[(v4(4), Some(0))], 1).unwrap();
    assert_eq!(maps.applying(g + 1, 1), set([v4(1), v4(4)]));
}

#[test]
fn full_targets_and_expired_entries() {
    let mut maps = FakeMaps::new(100);
    let mut exact = ExactSet::new(HashMap::new(), 0, 50);
    run(
        &mut exact,
        &mut maps,
        &[(v4(1), Some(0)), (v4(2), Some(10))],
        1,
    )
    .unwrap();
    let targets = exact.full_targets(&[(v4(2), 10), (v4(3), 0)]);
    assert_eq!(
        targets,
        vec![(v4(1), None), (v4(2), Some(10)), (v4(3), Some(0))]
    );
    // Expired entries go without a flip; entries in force stay.
    let g = exact.generation();
    assert_eq!(
        exact
            .delete_expired(&mut maps, &[v4(1), v4(2)], 10)
            .unwrap(),
        1
    );
    assert_eq!(exact.generation(), g);
    assert_eq!(maps.map.keys().copied().collect::<Vec<_>>(), vec![v4(1)]);
    assert_eq!(exact.presence(), config_flags::EXACT_V4);
}
