use std::collections::BTreeSet;

use super::*;
use crate::filter::lists::ListEntry;

/// A network, or an address as a host network.
fn net(s: &str) -> IpNet {
    s.parse()
        .unwrap_or_else(|_| IpNet::from(s.parse::<IpAddr>().unwrap()))
}

fn lists(entries: &[(ListKind, &str, u64, EntryOrigin)]) -> Lists {
    let mut l = Lists::default();
    for (kind, n, expires_ns, origin) in entries {
        l.insert(
            *kind,
            ListEntry {
                net: net(n),
                expires_ns: *expires_ns,
                origin: *origin,
            },
        );
    }
    l
}

use EntryOrigin::{Auto, Config, Operator};
use ListKind::{Allow, Bypass, Deny};

fn add(kind: ListKind, items: &[(&str, u64, EntryOrigin)]) -> Change {
    Change::Add {
        kind,
        entries: items.iter().map(|(n, e, o)| (net(n), *e, *o)).collect(),
    }
}

#[test]
fn counts_say_what_changed() {
    let l = lists(&[
        (Deny, "198.18.0.1/32", 0, Operator),
        (Deny, "198.18.0.2/32", 50, Operator),
        (Deny, "198.18.0.3/32", 5, Operator),
    ]);
    let batch = [
        add(
            Deny,
            &[
                ("198.18.0.1", 0, Operator),   // already there
                ("198.18.0.2", 90, Operator),  // new expiry
                ("198.18.0.3", 0, Operator),   // had expired: added
                ("198.18.0.9", 0, Operator),   // new
                ("198.18.0.1", 0, Auto),       // new origin for a known network
                ("198.18.0.10/32", 0, Config), // new
            ],
        ),
        Change::Remove {
            kind: Deny,
            nets: vec![net("198.18.0.2/32"), net("198.18.0.77/32")],
        },
    ];
    let p = plan(&l, &batch, 10);
    assert_eq!(
        p.applied,
        Applied {
            added: 4,
            updated: 1,
            removed: 1,
            unchanged: 1,
            not_found: 1,
            ..Applied::default()
        }
    );
    assert_eq!(p.applied.changed(), 6);
    assert_eq!(l.live(Deny, 0).len(), 3, "planning changes nothing");
    assert!(!p.prefix_changed(&l, &[], &CountryPolicy::Off));
    let targets: BTreeSet<(IpAddr, Option<u64>)> = p.exact_targets(10).into_iter().collect();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        targets,
        BTreeSet::from([
            (ip("198.18.0.1"), Some(0)),
            (ip("198.18.0.2"), None),
            (ip("198.18.0.3"), Some(0)),
            (ip("198.18.0.9"), Some(0)),
            (ip("198.18.0.10"), Some(0)),
        ]),
        "the absent network to remove is not a target"
    );
}

#[test]
fn replacing_an_origin_keeps_the_others() {
    let l = lists(&[
        (Deny, "198.18.0.1/32", 0, Config),
        (Deny, "198.18.0.1/32", 100, Operator),
        (Deny, "198.18.0.2/32", 0, Config),
        (Deny, "198.18.0.3/32", 0, Operator),
        (Deny, "198.19.0.0/16", 0, Config),
    ]);
    let batch = [Change::ReplaceOrigin {
        kind: Deny,
        origin: Config,
        entries: vec![(net("198.18.0.2/32"), 0), (net("198.18.0.4/32"), 0)],
    }];
    let p = plan(&l, &batch, 0);
    assert_eq!(
        (
            p.applied.added,
            p.applied.removed,
            p.applied.unchanged,
            p.applied.not_found
        ),
        (1, 2, 1, 0)
    );
    assert!(
        p.prefix_changed(&l, &[], &CountryPolicy::Off),
        "198.19.0.0/16 left the table"
    );
    let mut after = l.clone();
    p.commit_lists(&mut after);
    let live: Vec<(IpNet, EntryOrigin)> = after
        .live(Deny, 0)
        .iter()
        .map(|e| (e.net, e.origin))
        .collect();
    assert_eq!(
        live,
        vec![
            (net("198.18.0.1/32"), Operator),
            (net("198.18.0.2/32"), Config),
            (net("198.18.0.3/32"), Operator),
            (net("198.18.0.4/32"), Config),
        ]
    );
    // The kernel's entry for .1 is now the operator's (it expires).
    assert_eq!(
        after
            .exact_denies(0)
            .iter()
            .find(|(a, _)| a.to_string() == "198.18.0.1"),
        Some(&("198.18.0.1".parse().unwrap(), 100))
    );
}

#[test]
fn removing_one_origin_leaves_the_network_listed_by_another() {
    let l = lists(&[
        (Deny, "198.18.0.1/32", 0, Config),
        (Deny, "198.18.0.1/32", 100, Auto),
    ]);
    let p = plan(
        &l,
        &[Change::RemoveOrigin {
            kind: Deny,
            origin: Auto,
            nets: vec![net("198.18.0.1/32"), net("198.18.0.2/32")],
        }],
        0,
    );
    assert_eq!((p.applied.removed, p.applied.not_found), (1, 1));
    assert_eq!(
        p.exact_targets(0),
        vec![("198.18.0.1".parse().unwrap(), Some(0))],
        "still denied, by the configuration"
    );
}

#[test]
fn prefix_changes_need_the_table_and_exact_ones_do_not() {
    let l = lists(&[(Deny, "198.18.0.0/24", 0, Config)]);
    let only_exact = plan(&l, &[add(Deny, &[("198.18.1.1", 0, Operator)])], 0);
    assert!(!only_exact.prefix_changed(&l, &[], &CountryPolicy::Off));
    for change in [
        add(Deny, &[("198.18.1.0/24", 0, Operator)]),
        add(Bypass, &[("198.18.1.1", 0, Operator)]),
        add(Allow, &[("198.18.1.1", 0, Operator)]),
        add(Deny, &[("198.18.0.0/24", 60, Operator)]),
        Change::Remove {
            kind: Deny,
            nets: vec![net("198.18.0.0/24")],
        },
        Change::Countries(vec![(net("198.19.0.0/16"), 5)]),
        Change::CountryPolicy(CountryPolicy::Block(BTreeSet::from([5]))),
    ] {
        let p = plan(&l, std::slice::from_ref(&change), 0);
        assert!(p.prefix_changed(&l, &[], &CountryPolicy::Off), "{change:?}");
    }
    // The same countries and policy again: nothing to rebuild.
    let countries = vec![(net("198.19.0.0/16"), 5)];
    let p = plan(
        &l,
        &[
            Change::Countries(countries.clone()),
            Change::CountryPolicy(CountryPolicy::Off),
            add(Deny, &[("198.18.0.0/24", 0, Config)]),
        ],
        0,
    );
    assert!(!p.prefix_changed(&l, &countries, &CountryPolicy::Off));
    assert_eq!(p.applied.unchanged, 1);
}

#[test]
fn the_planned_prefix_rules_are_those_of_the_lists_after_the_batch() {
    let l = lists(&[
        (Deny, "198.18.0.0/24", 0, Config),
        (Bypass, "198.18.3.0/24", 0, Config),
        (Allow, "198.18.4.0/24", 0, Config),
        (Deny, "198.18.9.9/32", 0, Config),
    ]);
    let batch = [
        add(Deny, &[("198.18.1.0/24", 70, Operator)]),
        Change::Remove {
            kind: Bypass,
            nets: vec![net("198.18.3.0/24")],
        },
        add(Allow, &[("2001:db8::/32", 0, Operator)]),
    ];
    let p = plan(&l, &batch, 0);
    let planned = l.prefix_rules_with(&p.touched, vec![], CountryPolicy::Off, 0);
    let mut after = l.clone();
    p.commit_lists(&mut after);
    let mut actual = after.prefix_rules(vec![], CountryPolicy::Off, 0);
    let mut planned = planned;
    for r in [&mut planned, &mut actual] {
        r.deny.sort();
        r.allow.sort();
        r.bypass.sort();
    }
    assert_eq!(planned, actual);
    assert!(actual.bypass.is_empty());
    assert_eq!(actual.deny.len(), 2, "the host entry is not a prefix");
}

#[test]
fn a_full_resync_lists_every_exact_entry_after_the_batch() {
    let l = lists(&[
        (Deny, "198.18.0.1/32", 0, Config),
        (Deny, "198.18.0.2/32", 0, Config),
    ]);
    let p = plan(
        &l,
        &[
            Change::Remove {
                kind: Deny,
                nets: vec![net("198.18.0.1/32")],
            },
            add(Deny, &[("198.18.0.3", 9, Auto)]),
        ],
        0,
    );
    let mut all = p.all_exact(&l, 0);
    all.sort();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(all, vec![(ip("198.18.0.2"), 0), (ip("198.18.0.3"), 9)]);
}
