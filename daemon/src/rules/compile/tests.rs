use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use rampart_common::{CHILD_BASE, MAX_INNER_NODES, country_index};

use super::*;
use crate::rules::CountryPolicy;

use class_flags::{ALLOWLISTED, BYPASS, COUNTRY_BLOCKED, DENY, NOT_ALLOWLISTED};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cc(code: &str) -> u16 {
    let b = code.as_bytes();
    country_index([b[0], b[1]]).unwrap()
}

fn class_at(table: &CompiledTable, addr: &str) -> Class {
    lookup(table, ip(addr)).1
}

fn class(flags: u16, country: u16, deny_expires_ns: u64) -> Class {
    Class {
        flags,
        country,
        _pad: 0,
        deny_expires_ns,
    }
}

fn inner_nodes(table: &CompiledTable) -> usize {
    table.nodes.len() - FIRST_INNER_NODE as usize
}

#[test]
fn empty_rules_give_one_class_and_no_inner_nodes() {
    let table = compile(&PrefixRules::default()).unwrap();
    assert_eq!(table.classes, vec![Class::default()]);
    assert_eq!(table.nodes.len(), FIRST_INNER_NODE as usize);
    assert!(
        table
            .nodes
            .iter()
            .all(|n| n.entries.iter().all(|&e| e == 0))
    );
    assert_eq!(lookup(&table, ip("1.2.3.4")), (0, Class::default()));
    assert_eq!(lookup(&table, ip("2001:db8::1")), (0, Class::default()));
    assert_eq!(
        table.stats(),
        TableStats {
            nodes: 512,
            v4_inner_nodes: 0,
            v6_inner_nodes: 0,
            classes: 1
        }
    );
}

#[test]
fn node_layout_follows_the_kernel_format() {
    let rules = PrefixRules {
        deny: vec![(net("10.1.0.0/16"), 0)],
        bypass: vec![net("10.2.3.0/24"), net("2001:db8::/32")],
        ..PrefixRules::default()
    };
    let table = compile(&rules).unwrap();
    let deny = lookup(&table, ip("10.1.200.1")).0;
    let bypass = lookup(&table, ip("10.2.3.4")).0;
    assert_ne!(deny, 0);
    assert_ne!(bypass, 0);
    // A /16 is one root entry: node = first byte, entry = second byte.
    assert_eq!(table.nodes[10].entries[1], deny);
    // A /24 needs one inner node under its root entry, filled at byte 3.
    let child = table.nodes[10].entries[2];
    assert!(child >= CHILD_BASE);
    let child = usize::from(child - CHILD_BASE);
    assert_eq!(child, FIRST_INNER_NODE as usize);
    assert_eq!(table.nodes[child].entries[3], bypass);
    assert_eq!(table.nodes[child].entries[2], 0);
    assert_eq!(table.nodes[child].entries[4], 0);
    // IPv6 root starts at node 256; 2001:db8::/32 is 0x20 0x01 | 0x0d 0xb8.
    let v6 = table.nodes[256 + 0x20].entries[0x01];
    assert!(v6 >= CHILD_BASE);
    let v6 = usize::from(v6 - CHILD_BASE);
    assert_eq!(table.nodes[v6].entries[0x0d], CHILD_BASE + v6 as u16 + 1);
    assert!(table.nodes[v6 + 1].entries[0xb8] < CHILD_BASE);
    assert_eq!(
        table.stats(),
        TableStats {
            nodes: 515,
            v4_inner_nodes: 1,
            v6_inner_nodes: 2,
            classes: 3
        }
    );
}

#[test]
fn inner_node_counts_by_prefix_length() {
    for (prefix, nodes) in [
        ("1.0.0.0/7", 0),
        ("1.2.0.0/16", 0),
        ("1.2.3.0/17", 1),
        ("1.2.3.0/24", 1),
        ("1.2.3.4/25", 2),
        ("1.2.3.4/32", 2),
        ("2001:db8::/16", 0),
        ("2001:db8::/24", 1),
        ("2001:db8::1/128", 14),
    ] {
        let rules = PrefixRules {
            allow: vec![net(prefix)],
            ..PrefixRules::default()
        };
        let table = compile(&rules).unwrap();
        assert_eq!(inner_nodes(&table), nodes, "{prefix}");
        let first: IpAddr = net(prefix).network();
        assert_eq!(class_at(&table, &first.to_string()).flags, ALLOWLISTED);
    }
}

#[test]
fn nested_prefixes_fold_their_ancestors() {
    let de = cc("de");
    let fr = cc("fr");
    let rules = PrefixRules {
        deny: vec![(net("10.0.0.0/8"), 0), (net("10.9.9.0/24"), 500)],
        allow: vec![net("10.1.2.0/24")],
        bypass: vec![net("10.1.2.6/31")],
        allowlist_active: true,
        countries: vec![(net("10.0.0.0/7"), de), (net("10.1.0.0/16"), fr)],
        country_policy: CountryPolicy::Block([de].into()),
    };
    let table = compile(&rules).unwrap();
    let na = NOT_ALLOWLISTED;
    assert_eq!(class_at(&table, "9.255.255.255"), class(na, 0, 0));
    assert_eq!(
        class_at(&table, "11.0.0.1"),
        class(na | COUNTRY_BLOCKED, de, 0)
    );
    assert_eq!(
        class_at(&table, "10.0.0.0"),
        class(na | DENY | COUNTRY_BLOCKED, de, 0)
    );
    assert_eq!(class_at(&table, "10.1.0.0"), class(na | DENY, fr, 0));
    assert_eq!(
        class_at(&table, "10.1.2.5"),
        class(ALLOWLISTED | DENY, fr, 0)
    );
    for a in ["10.1.2.6", "10.1.2.7"] {
        assert_eq!(
            class_at(&table, a),
            class(ALLOWLISTED | DENY | BYPASS, fr, 0)
        );
    }
    assert_eq!(
        class_at(&table, "10.1.2.8"),
        class(ALLOWLISTED | DENY, fr, 0)
    );
    // A permanent deny wins over a timed one nested in it.
    assert_eq!(
        class_at(&table, "10.9.9.9"),
        class(na | DENY | COUNTRY_BLOCKED, de, 0)
    );
    assert_eq!(class_at(&table, "12.0.0.0"), class(na, 0, 0));
    for a in ["::", "2001:db8::1"] {
        assert_eq!(lookup(&table, ip(a)), (0, class(na, 0, 0)));
    }
}

#[test]
fn deny_expiries_fold() {
    let rules = PrefixRules {
        deny: vec![
            (net("10.0.0.0/8"), 100),
            (net("10.1.0.0/16"), 300),
            (net("10.1.1.0/24"), 200),
            (net("10.2.0.0/16"), 50),
            (net("10.2.0.0/16"), 70),
            (net("10.3.0.0/16"), 70),
            (net("10.3.0.0/16"), 0),
        ],
        ..PrefixRules::default()
    };
    let table = compile(&rules).unwrap();
    assert_eq!(class_at(&table, "10.0.0.1"), class(DENY, 0, 100));
    assert_eq!(class_at(&table, "10.1.0.1"), class(DENY, 0, 300));
    assert_eq!(class_at(&table, "10.1.1.1"), class(DENY, 0, 300));
    assert_eq!(class_at(&table, "10.2.0.1"), class(DENY, 0, 100));
    assert_eq!(class_at(&table, "10.3.0.1"), class(DENY, 0, 0));
    assert_eq!(class_at(&table, "11.0.0.1"), Class::default());
}

#[test]
fn whole_address_space_rules() {
    let rules = PrefixRules {
        deny: vec![(net("0.0.0.0/0"), 0)],
        bypass: vec![net("::/0"), net("255.255.255.255/32")],
        ..PrefixRules::default()
    };
    let table = compile(&rules).unwrap();
    assert_eq!(class_at(&table, "0.0.0.0"), class(DENY, 0, 0));
    assert_eq!(class_at(&table, "128.1.2.3"), class(DENY, 0, 0));
    assert_eq!(
        class_at(&table, "255.255.255.255"),
        class(DENY | BYPASS, 0, 0)
    );
    assert_eq!(class_at(&table, "255.255.255.254"), class(DENY, 0, 0));
    assert_eq!(class_at(&table, "ffff::1"), class(BYPASS, 0, 0));
    // Class 0 stays the class of an uncovered source, used by nothing here.
    assert_eq!(table.classes[0], Class::default());
}

#[test]
fn class_zero_carries_policy_flags() {
    let de = cc("de");
    let rules = PrefixRules {
        countries: vec![(net("10.0.0.0/8"), de)],
        country_policy: CountryPolicy::AllowOnly {
            allowed: [de].into(),
            allow_unknown: false,
        },
        allow: vec![net("11.0.0.0/8")],
        ..PrefixRules::default()
    };
    let table = compile(&rules).unwrap();
    assert_eq!(table.classes[0], class(COUNTRY_BLOCKED, 0, 0));
    assert_eq!(lookup(&table, ip("12.0.0.1")).0, 0);
    assert_eq!(class_at(&table, "10.0.0.1"), class(0, de, 0));
    // Allowlisted sources are exceptions to country rules.
    assert_eq!(class_at(&table, "11.0.0.1"), class(ALLOWLISTED, 0, 0));

    let rules = PrefixRules {
        country_policy: CountryPolicy::AllowOnly {
            allowed: BTreeSet::new(),
            allow_unknown: true,
        },
        allowlist_active: true,
        ..rules
    };
    let table = compile(&rules).unwrap();
    assert_eq!(table.classes[0], class(NOT_ALLOWLISTED, 0, 0));
    assert_eq!(
        class_at(&table, "10.0.0.1"),
        class(NOT_ALLOWLISTED | COUNTRY_BLOCKED, de, 0)
    );
}

#[test]
fn classes_are_deduplicated() {
    let rules = PrefixRules {
        deny: (0..200u32)
            .map(|i| (IpNet::from(IpAddr::V4(Ipv4Addr::from(i << 12))), 0))
            .collect(),
        ..PrefixRules::default()
    };
    let table = compile(&rules).unwrap();
    assert_eq!(table.classes, vec![Class::default(), class(DENY, 0, 0)]);
}

#[test]
fn identical_country_prefixes_must_agree() {
    let rules = PrefixRules {
        countries: vec![
            (net("10.0.0.0/8"), cc("de")),
            (net("10.0.0.0/8"), cc("de")),
            (net("10.0.0.0/8"), cc("fr")),
        ],
        ..PrefixRules::default()
    };
    let err = compile(&rules).err().unwrap();
    assert_eq!(
        err,
        RuleError::CountryConflict {
            prefix: net("10.0.0.0/8"),
            first: cc("de"),
            second: cc("fr"),
        }
    );
    assert_eq!(
        err.to_string(),
        "country prefix 10.0.0.0/8 is given two countries: de and fr"
    );
    let rules = PrefixRules {
        countries: vec![(net("10.0.0.0/8"), cc("de")), (net("10.0.0.0/9"), cc("fr"))],
        ..PrefixRules::default()
    };
    assert!(compile(&rules).is_ok());
}

#[test]
fn invalid_country_indexes_are_rejected() {
    for index in [0, COUNTRY_SLOTS as u16] {
        let rules = PrefixRules {
            countries: vec![(net("10.0.0.0/8"), index)],
            ..PrefixRules::default()
        };
        assert_eq!(
            compile(&rules).err(),
            Some(RuleError::InvalidCountry {
                prefix: net("10.0.0.0/8"),
                index
            })
        );
    }
}

#[test]
fn host_bits_in_rule_prefixes_are_ignored() {
    let rules = PrefixRules {
        deny: vec![(net("10.1.2.3/16"), 0)],
        ..PrefixRules::default()
    };
    let table = compile(&rules).unwrap();
    assert_eq!(class_at(&table, "10.1.0.0").flags, DENY);
    assert_eq!(class_at(&table, "10.1.255.255").flags, DENY);
    assert_eq!(class_at(&table, "10.2.0.0").flags, 0);
}

#[test]
fn class_limit() {
    let deny = |n: u32| -> Vec<(IpNet, u64)> {
        (0..n)
            .map(|i| (IpNet::from(IpAddr::V4(Ipv4Addr::from(i))), u64::from(i) + 1))
            .collect()
    };
    // Class 0 plus 8191 distinct deny classes fill the table exactly.
    let rules = PrefixRules {
        deny: deny(MAX_CLASSES - 1),
        ..PrefixRules::default()
    };
    let table = compile(&rules).unwrap();
    assert_eq!(table.classes.len(), MAX_CLASSES as usize);
    assert_eq!(class_at(&table, "0.0.31.254"), class(DENY, 0, 8191));
    let rules = PrefixRules {
        deny: deny(MAX_CLASSES),
        ..PrefixRules::default()
    };
    let err = compile(&rules).err().unwrap();
    assert_eq!(err, RuleError::TooManyClasses { limit: MAX_CLASSES });
    assert!(err.to_string().contains("8192"), "{err}");
}

#[test]
fn node_limit() {
    // /128s under ::/16 whose index is in bytes 2 and 3: they share the node
    // for byte 2 and one node for byte 3 per 256, and need 12 of their own.
    let bypass = |n: u32| -> Vec<IpNet> {
        (0..n)
            .map(|i| {
                let addr = (u128::from(i) << 96) | 0xffff;
                IpNet::from(IpAddr::V6(Ipv6Addr::from(addr)))
            })
            .collect()
    };
    let needed = |n: u32| 1 + n.div_ceil(256) + 12 * n;
    let fits = (0..)
        .take_while(|&n| needed(n) <= MAX_INNER_NODES)
        .last()
        .unwrap();
    let rules = PrefixRules {
        bypass: bypass(fits),
        ..PrefixRules::default()
    };
    let table = compile(&rules).unwrap();
    assert_eq!(
        table.nodes.len(),
        (FIRST_INNER_NODE + needed(fits)) as usize
    );
    assert!(table.nodes.len() <= NODES_PER_BUFFER as usize);
    assert_eq!(class_at(&table, "::ffff").flags, BYPASS);
    let rules = PrefixRules {
        bypass: bypass(fits + 1),
        ..PrefixRules::default()
    };
    let err = compile(&rules).err().unwrap();
    assert_eq!(
        err,
        RuleError::TooManyNodes {
            limit: NODES_PER_BUFFER
        }
    );
    assert!(err.to_string().contains("49152"), "{err}");
}

mod random;
