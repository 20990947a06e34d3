//! Random rule sets checked against a reference that scans every rule.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rampart_common::Class;

use super::super::{Facts, compile, lookup};
use super::class;
use crate::rules::{CountryPolicy, PrefixRules};
use rampart_common::class_flags::{ALLOWLISTED, BYPASS, COUNTRY_BLOCKED, DENY, NOT_ALLOWLISTED};

/// The class of `addr` computed by scanning every rule: the specification
/// the compiled table must agree with.
fn reference(rules: &PrefixRules, addr: IpAddr) -> Class {
    let bypass = rules.bypass.iter().any(|n| n.contains(&addr));
    let mut deny: Option<u64> = None;
    for (n, e) in &rules.deny {
        if n.contains(&addr) {
            deny = Some(match deny {
                None => *e,
                Some(d) if d == 0 || *e == 0 => 0,
                Some(d) => d.max(*e),
            });
        }
    }
    let allow = rules.allow.iter().any(|n| n.contains(&addr));
    let country = rules
        .countries
        .iter()
        .filter(|(n, _)| n.contains(&addr))
        .max_by_key(|(n, _)| n.prefix_len())
        .map_or(0, |&(_, c)| c);
    let mut flags = 0;
    if bypass {
        flags |= BYPASS;
    }
    if deny.is_some() {
        flags |= DENY;
    }
    if allow {
        flags |= ALLOWLISTED;
    } else if rules.allowlist_active {
        flags |= NOT_ALLOWLISTED;
    }
    let blocked = match &rules.country_policy {
        CountryPolicy::Off => false,
        CountryPolicy::Block(set) => set.contains(&country),
        CountryPolicy::AllowOnly {
            allowed,
            allow_unknown,
        } => {
            if country == 0 {
                !allow_unknown
            } else {
                !allowed.contains(&country)
            }
        }
    };
    if blocked && !allow {
        flags |= COUNTRY_BLOCKED;
    }
    class(flags, country, deny.unwrap_or(0))
}

/// splitmix64: a tiny deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn u128(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

/// An address near one of a few seeds, so that random prefixes nest and
/// overlap.
fn random_addr(rng: &mut Rng, seeds: &[u128], v6: bool) -> IpAddr {
    let mut bits = seeds[rng.below(seeds.len() as u64) as usize];
    // Flip a few random bits, mostly low ones.
    for _ in 0..rng.below(4) {
        let width = if v6 { 128 } else { 32 };
        let low = rng.below(width) + 1;
        let bit = width - 1 - rng.below(low);
        bits ^= 1 << bit;
    }
    if v6 {
        IpAddr::V6(Ipv6Addr::from(bits))
    } else {
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    }
}

fn random_net(rng: &mut Rng, seeds4: &[u128], seeds6: &[u128]) -> IpNet {
    let v6 = rng.below(2) == 1;
    let addr = random_addr(rng, if v6 { seeds6 } else { seeds4 }, v6);
    let max = if v6 { 129 } else { 33 };
    // Every length, with extra weight on the byte boundaries and long ones.
    let len = match rng.below(4) {
        0 => (rng.below(max / 8 + 1) * 8).min(max - 1),
        1 => max - 1 - rng.below(5),
        _ => rng.below(max),
    } as u8;
    IpNet::new(addr, len).unwrap().trunc()
}

fn random_rules(rng: &mut Rng) -> PrefixRules {
    let seeds4: Vec<u128> = (0..1 + rng.below(4))
        .map(|_| u128::from(rng.next() as u32))
        .collect();
    let seeds6: Vec<u128> = (0..1 + rng.below(4)).map(|_| rng.u128()).collect();
    let count = |rng: &mut Rng| rng.below(12) as usize;
    let mut rules = PrefixRules {
        allowlist_active: rng.below(2) == 1,
        ..PrefixRules::default()
    };
    for _ in 0..count(rng) {
        rules.bypass.push(random_net(rng, &seeds4, &seeds6));
    }
    for _ in 0..count(rng) {
        let expiry = [0, 10, 20, 30][rng.below(4) as usize];
        rules.deny.push((random_net(rng, &seeds4, &seeds6), expiry));
    }
    for _ in 0..count(rng) {
        rules.allow.push(random_net(rng, &seeds4, &seeds6));
    }
    for _ in 0..count(rng) * 2 {
        let n = random_net(rng, &seeds4, &seeds6);
        if rules.countries.iter().all(|(m, _)| *m != n) {
            rules.countries.push((n, 1 + rng.below(5) as u16));
        }
    }
    let some =
        |rng: &mut Rng| -> BTreeSet<u16> { (1..=5u16).filter(|_| rng.below(2) == 1).collect() };
    rules.country_policy = match rng.below(3) {
        0 => CountryPolicy::Off,
        1 => CountryPolicy::Block(some(rng)),
        _ => CountryPolicy::AllowOnly {
            allowed: some(rng),
            allow_unknown: rng.below(2) == 1,
        },
    };
    rules
}

/// Addresses at and around the edges of every rule prefix, and near them.
fn probe_addrs(rng: &mut Rng, rules: &PrefixRules) -> Vec<IpAddr> {
    let mut nets: Vec<IpNet> = rules.bypass.clone();
    nets.extend(rules.deny.iter().map(|(n, _)| *n));
    nets.extend(rules.allow.iter().copied());
    nets.extend(rules.countries.iter().map(|(n, _)| *n));
    let mut addrs = Vec::new();
    for n in &nets {
        let (lo, hi, width) = match n {
            IpNet::V4(n) => (
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
                32,
            ),
            IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast()), 128),
        };
        let span = hi - lo;
        let inside = lo
            + if span == u128::MAX {
                rng.u128()
            } else {
                rng.u128() % (span + 1)
            };
        for a in [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1), inside] {
            addrs.push(if width == 32 {
                IpAddr::V4(Ipv4Addr::from(a as u32))
            } else {
                IpAddr::V6(Ipv6Addr::from(a))
            });
        }
        let flip = 1u128 << rng.below(width);
        addrs.push(match n {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from((inside ^ flip) as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(inside ^ flip)),
        });
    }
    for _ in 0..20 {
        addrs.push(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)));
        addrs.push(IpAddr::V6(Ipv6Addr::from(rng.u128())));
    }
    addrs
}

#[test]
fn random_rule_sets_match_the_reference() {
    let mut rng = Rng(0x5eed_1234);
    let mut checked = 0;
    for round in 0..400 {
        let rules = random_rules(&mut rng);
        let table = compile(&rules).unwrap();
        let uncovered = Facts::default().class(&rules);
        assert_eq!(table.classes[0], uncovered, "round {round}");
        let distinct: BTreeSet<_> = table
            .classes
            .iter()
            .map(|c| (c.flags, c.country, c.deny_expires_ns))
            .collect();
        assert_eq!(distinct.len(), table.classes.len(), "round {round}");
        for addr in probe_addrs(&mut rng, &rules) {
            let (id, got) = lookup(&table, addr);
            assert_eq!(
                got,
                reference(&rules, addr),
                "round {round}: {addr} (class {id}) with {rules:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 10_000, "{checked}");
}

#[test]
fn compilation_is_deterministic() {
    let mut rng = Rng(42);
    for _ in 0..20 {
        let rules = random_rules(&mut rng);
        let a = compile(&rules).unwrap();
        let b = compile(&rules).unwrap();
        assert_eq!(a.classes, b.classes);
        assert_eq!(a.nodes.len(), b.nodes.len());
        assert!(
            a.nodes
                .iter()
                .zip(&b.nodes)
                .all(|(x, y)| x.entries == y.entries)
        );
    }
}
