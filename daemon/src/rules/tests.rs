use super::*;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn single_addresses_become_host_prefixes() {
    assert_eq!(parse_entry("192.0.2.7").unwrap(), nets(&["192.0.2.7/32"]));
    assert_eq!(
        parse_entry("  2001:db8::1 ").unwrap(),
        nets(&["2001:db8::1/128"])
    );
    assert_eq!(parse_entry("::").unwrap(), nets(&["::/128"]));
}

#[test]
fn cidrs_are_accepted_when_canonical() {
    assert_eq!(parse_entry("10.0.0.0/8").unwrap(), nets(&["10.0.0.0/8"]));
    assert_eq!(parse_entry("0.0.0.0/0").unwrap(), nets(&["0.0.0.0/0"]));
    assert_eq!(parse_entry("1.2.3.4/32").unwrap(), nets(&["1.2.3.4/32"]));
    assert_eq!(
        parse_entry("2001:db8::/32").unwrap(),
        nets(&["2001:db8::/32"])
    );
    assert_eq!(parse_entry("::/0").unwrap(), nets(&["::/0"]));
}

#[test]
fn host_bits_are_rejected_with_the_network_suggested() {
    let err = parse_entry("10.0.0.1/8").unwrap_err();
    assert_eq!(
        err,
        RuleError::HostBitsSet {
            input: "10.0.0.1/8".into(),
            network: "10.0.0.0/8".parse().unwrap(),
        }
    );
    assert_eq!(
        err.to_string(),
        "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"
    );
    let err = parse_entry("2001:db8::1/64").unwrap_err();
    assert!(
        err.to_string().contains("did you mean 2001:db8::/64?"),
        "{err}"
    );
}

#[test]
fn bad_prefix_lengths_are_rejected() {
    for s in [
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0.0/x",
        "10.0.0.0/+8",
        "::/129",
        "1.2.3.0/24/8",
        "10.0.0.0/-1",
        "10.0.0.1/ -1",
        "2001:db8::/-64",
        "::ffff:10.0.0.0/129",
    ] {
        let err = parse_entry(s).unwrap_err();
        assert!(
            matches!(err, RuleError::InvalidPrefixLength { .. }),
            "{s}: {err:?}"
        );
    }
    assert_eq!(
        parse_entry("10.0.0.0/33").unwrap_err().to_string(),
        "`10.0.0.0/33` has an invalid prefix length (expected 0..=32)"
    );
    // Before, the range split on '-' ran first: "`10.0.0.1/` is not an IPv4
    // or IPv6 address".
    assert_eq!(
        parse_entry("10.0.0.1/-1").unwrap_err().to_string(),
        "`10.0.0.1/-1` has an invalid prefix length (expected 0..=32)"
    );
}

#[test]
fn ipv4_mapped_forms_are_the_ipv4_entries_they_map() {
    // Addresses, in dotted and in hex form.
    assert_eq!(
        parse_entry("::ffff:198.18.0.2").unwrap(),
        nets(&["198.18.0.2/32"])
    );
    assert_eq!(
        parse_entry(" ::FFFF:c612:2 ").unwrap(),
        nets(&["198.18.0.2/32"])
    );
    // Prefixes: /96+n is /n.
    assert_eq!(
        parse_entry("::ffff:10.0.0.0/104").unwrap(),
        nets(&["10.0.0.0/8"])
    );
    assert_eq!(
        parse_entry("::ffff:198.18.0.2/128").unwrap(),
        nets(&["198.18.0.2/32"])
    );
    assert_eq!(parse_entry("::ffff:0:0/96").unwrap(), nets(&["0.0.0.0/0"]));
    // Ranges, also with one end written as IPv4.
    assert_eq!(
        parse_entry("::ffff:10.0.0.1-::ffff:10.0.0.6").unwrap(),
        nets(&["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"])
    );
    assert_eq!(
        parse_entry("::ffff:10.0.0.0-10.0.0.255").unwrap(),
        nets(&["10.0.0.0/24"])
    );
    // Host bits are judged, and the network suggested, as IPv4.
    assert_eq!(
        parse_entry("::ffff:10.0.0.1/104").unwrap_err().to_string(),
        "::ffff:10.0.0.1/104 has host bits set; did you mean 10.0.0.0/8?"
    );
    // IPv6 proper, including the other embeddings, stays IPv6.
    assert_eq!(parse_entry("::1").unwrap(), nets(&["::1/128"]));
    assert_eq!(parse_entry("::10.0.0.1").unwrap(), nets(&["::a00:1/128"]));
    assert_eq!(
        parse_entry("64:ff9b::10.0.0.1").unwrap(),
        nets(&["64:ff9b::a00:1/128"])
    );
    assert_eq!(parse_entry("::/0").unwrap(), nets(&["::/0"]));
}

#[test]
fn ipv4_mapped_forms_reaching_beyond_ipv4_are_refused() {
    // Shorter than /96: more than the mapped space.
    for s in ["::ffff:10.0.0.0/80", "::ffff:0:0/95", "::ffff:0:0/0"] {
        assert_eq!(
            parse_entry(s).unwrap_err(),
            RuleError::MappedPrefixTooShort { input: s.into() },
            "{s}"
        );
    }
    assert_eq!(
        parse_entry("::ffff:10.0.0.0/80").unwrap_err().to_string(),
        "`::ffff:10.0.0.0/80` is an IPv4-mapped prefix shorter than /96, which covers \
         more than IPv4 addresses; give the IPv4 network (::ffff:a.b.c.d/96+n is a.b.c.d/n)"
    );
    // A range from the mapped space into the rest of IPv6.
    for s in ["::ffff:10.0.0.1-2001:db8::1", "::1-::ffff:10.0.0.1"] {
        assert_eq!(
            parse_entry(s).unwrap_err(),
            RuleError::MappedRange { input: s.into() },
            "{s}"
        );
    }
    assert_eq!(
        parse_entry("::ffff:10.0.0.1-2001:db8::1")
            .unwrap_err()
            .to_string(),
        "range `::ffff:10.0.0.1-2001:db8::1` runs from an IPv4-mapped address (taken as \
         IPv4) to another IPv6 address; give the IPv4 and the IPv6 parts as separate ranges"
    );
    // Reversed once mapped, as IPv4 ranges are.
    assert_eq!(
        parse_entry("::ffff:10.0.0.9-::ffff:10.0.0.1").unwrap_err(),
        RuleError::ReversedRange {
            start: ip("10.0.0.9"),
            end: ip("10.0.0.1"),
        }
    );
}

#[test]
fn invalid_input_is_rejected() {
    assert_eq!(parse_entry("").unwrap_err(), RuleError::Empty);
    assert_eq!(parse_entry("   ").unwrap_err(), RuleError::Empty);
    for s in [
        "10.0.0",
        "example.com",
        "10.0.0.256",
        "1.2.3.0/24-1.2.4.0",
        "1.2.3.4-1.2.3.5-1.2.3.6",
    ] {
        let err = parse_entry(s).unwrap_err();
        assert!(
            matches!(err, RuleError::InvalidAddress { .. }),
            "{s}: {err:?}"
        );
    }
    assert_eq!(
        parse_entry("example.com").unwrap_err().to_string(),
        "`example.com` is not an IPv4 or IPv6 address"
    );
}

#[test]
fn ranges_become_minimal_cidrs() {
    assert_eq!(
        parse_entry("10.0.0.1-10.0.0.6").unwrap(),
        nets(&["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"])
    );
    assert_eq!(
        parse_entry("10.0.0.0 - 10.0.0.255").unwrap(),
        nets(&["10.0.0.0/24"])
    );
    assert_eq!(
        parse_entry("10.0.0.5-10.0.0.5").unwrap(),
        nets(&["10.0.0.5/32"])
    );
    assert_eq!(
        parse_entry("2001:db8::-2001:db8::ffff").unwrap(),
        nets(&["2001:db8::/112"])
    );
    assert_eq!(
        parse_entry("2001:db8::1 -2001:db8::2").unwrap(),
        nets(&["2001:db8::1/128", "2001:db8::2/128"])
    );
}

#[test]
fn full_and_edge_ranges() {
    assert_eq!(
        range_to_cidrs(ip("0.0.0.0"), ip("255.255.255.255")).unwrap(),
        nets(&["0.0.0.0/0"])
    );
    assert_eq!(
        range_to_cidrs(ip("::"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")).unwrap(),
        nets(&["::/0"])
    );
    assert_eq!(
        range_to_cidrs(ip("255.255.255.255"), ip("255.255.255.255")).unwrap(),
        nets(&["255.255.255.255/32"])
    );
    assert_eq!(
        range_to_cidrs(ip("0.0.0.1"), ip("255.255.255.254"))
            .unwrap()
            .len(),
        62
    );
    assert_eq!(
        range_to_cidrs(ip("128.0.0.0"), ip("255.255.255.255")).unwrap(),
        nets(&["128.0.0.0/1"])
    );
    assert_eq!(
        range_to_cidrs(ip("::1"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
            .unwrap()
            .len(),
        128
    );
}

#[test]
fn range_cover_is_exact_and_minimal() {
    // Every CIDR inside the range, together contiguous from start to end,
    // and no two siblings that could merge.
    let cases = [
        ("10.0.0.1", "10.0.0.6"),
        ("1.2.3.4", "9.8.7.6"),
        ("0.0.0.0", "0.0.0.0"),
        ("192.168.0.0", "192.168.255.254"),
    ];
    for (a, b) in cases {
        let cidrs = range_to_cidrs(ip(a), ip(b)).unwrap();
        let mut next = u64::from(u32::from(a.parse::<std::net::Ipv4Addr>().unwrap()));
        for pair in cidrs.windows(2) {
            assert!(
                !(pair[0].is_sibling(&pair[1])
                    && pair[0]
                        .supernet()
                        .is_some_and(|s| s.network() == pair[0].network())),
                "{a}-{b}: {} and {} merge",
                pair[0],
                pair[1]
            );
        }
        for c in &cidrs {
            let IpNet::V4(c) = c else { panic!("family") };
            assert_eq!(
                u64::from(u32::from(c.network())),
                next,
                "{a}-{b}: gap at {c}"
            );
            next = u64::from(u32::from(c.broadcast())) + 1;
        }
        assert_eq!(
            next,
            u64::from(u32::from(b.parse::<std::net::Ipv4Addr>().unwrap())) + 1
        );
    }
}

#[test]
fn range_errors() {
    assert_eq!(
        parse_entry("10.0.0.9-10.0.0.1").unwrap_err(),
        RuleError::ReversedRange {
            start: ip("10.0.0.9"),
            end: ip("10.0.0.1"),
        }
    );
    assert_eq!(
        parse_entry("10.0.0.1-::1").unwrap_err(),
        RuleError::MixedFamilies {
            start: ip("10.0.0.1"),
            end: ip("::1"),
        }
    );
    assert_eq!(
        range_to_cidrs(ip("::2"), ip("::1"))
            .unwrap_err()
            .to_string(),
        "range ::2-::1 is reversed (start is after end)"
    );
    for s in ["10.0.0.1-", "-10.0.0.1", " - "] {
        assert!(
            matches!(
                parse_entry(s).unwrap_err(),
                RuleError::IncompleteRange { .. }
            ),
            "{s}"
        );
    }
}

#[test]
fn country_policy_decisions() {
    let de = rampart_common::country_index(*b"de").unwrap();
    let fr = rampart_common::country_index(*b"fr").unwrap();
    assert!(!CountryPolicy::Off.blocks(de));
    assert!(!CountryPolicy::Off.blocks(0));
    let block = CountryPolicy::Block([de].into());
    assert!(block.blocks(de));
    assert!(!block.blocks(fr));
    assert!(!block.blocks(0));
    let only = CountryPolicy::AllowOnly {
        allowed: [de].into(),
        allow_unknown: false,
    };
    assert!(!only.blocks(de));
    assert!(only.blocks(fr));
    assert!(only.blocks(0));
    let only_unknown = CountryPolicy::AllowOnly {
        allowed: [de].into(),
        allow_unknown: true,
    };
    assert!(!only_unknown.blocks(0));
    assert!(only_unknown.blocks(fr));
}
