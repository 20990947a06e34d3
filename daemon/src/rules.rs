//! Prefix rules: parsing of address entries (`parse_entry`, `range_to_cidrs`)
//! and the compiler that folds bypass, deny, allowlist and country prefixes
//! into the kernel's prefix table (`compile`, `lookup`).
//!
//! The table layout is defined in `rampart_common` and walked by the XDP
//! program; [`lookup`] mirrors that walk so userspace can answer "what would
//! the kernel decide for this source" without a kernel.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};

mod compile;

pub use compile::{CompiledTable, TableStats, compile, lookup};

/// Errors of entry parsing and table compilation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("empty address entry")]
    Empty,
    #[error("`{input}` is not an IPv4 or IPv6 address")]
    InvalidAddress { input: String },
    #[error("`{input}` has an invalid prefix length (expected 0..={max})")]
    InvalidPrefixLength { input: String, max: u8 },
    #[error("{input} has host bits set; did you mean {network}?")]
    HostBitsSet { input: String, network: IpNet },
    #[error(
        "`{input}` is an IPv4-mapped prefix shorter than /96, which covers more than \
         IPv4 addresses; give the IPv4 network (::ffff:a.b.c.d/96+n is a.b.c.d/n)"
    )]
    MappedPrefixTooShort { input: String },
    /// `fe80::1%eth0`: a zone names a link of this host, meaningless for a
    /// source address the filter matches.
    #[error("`{input}`: zone indexes (%...) are not supported")]
    ZoneIndex { input: String },
    #[error("range `{input}` needs an address on each side of '-'")]
    IncompleteRange { input: String },
    #[error(
        "range `{input}` runs from an IPv4-mapped address (taken as IPv4) to another \
         IPv6 address; give the IPv4 and the IPv6 parts as separate ranges"
    )]
    MappedRange { input: String },
    #[error("range {start}-{end} mixes IPv4 and IPv6")]
    MixedFamilies { start: IpAddr, end: IpAddr },
    #[error("range {start}-{end} is reversed (start is after end)")]
    ReversedRange { start: IpAddr, end: IpAddr },
    #[error(
        "country prefix {prefix} is given two countries: {} and {}",
        country_name(*first),
        country_name(*second)
    )]
    CountryConflict {
        prefix: IpNet,
        /// Country indexes.
        first: u16,
        second: u16,
    },
    #[error("country prefix {prefix} has an invalid country index {index}")]
    InvalidCountry { prefix: IpNet, index: u16 },
    #[error("the rules need more than {limit} distinct classes")]
    TooManyClasses { limit: u32 },
    #[error("the rules need more than {limit} prefix table nodes (buffer size NODES_PER_BUFFER)")]
    TooManyNodes { limit: u32 },
}

/// Every prefix rule the kernel table is built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixRules {
    /// Sources that always pass.
    pub bypass: Vec<IpNet>,
    /// Denied prefixes with their expiry (CLOCK_MONOTONIC ns, the
    /// `bpf_ktime_get_ns` clock); 0 = never expires.
    pub deny: Vec<(IpNet, u64)>,
    /// The allowlist.
    pub allow: Vec<IpNet>,
    /// When true, sources not covered by `allow` are NOT_ALLOWLISTED.
    pub allowlist_active: bool,
    /// Country prefixes; the `u16` is a `rampart_common::country_index`.
    pub countries: Vec<(IpNet, u16)>,
    pub country_policy: CountryPolicy,
}

/// Which countries are blocked (for sources that are not allowlisted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CountryPolicy {
    /// No country blocking; countries are still recorded in classes.
    #[default]
    Off,
    /// Block these country indexes.
    Block(BTreeSet<u16>),
    /// Block every country except these; unknown sources (country 0) are
    /// blocked unless `allow_unknown`.
    AllowOnly {
        allowed: BTreeSet<u16>,
        allow_unknown: bool,
    },
}

impl CountryPolicy {
    /// Whether a source of this country (0 = unknown) is blocked.
    pub fn blocks(&self, country: u16) -> bool {
        match self {
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
        }
    }
}

/// Parses one address entry: an address (a /32 or /128), a CIDR without
/// host bits, or an inclusive range `a-b` (turned into the fewest CIDRs).
///
/// An IPv4-mapped IPv6 form (`::ffff:a.b.c.d`, `::ffff:a.b.c.d/96+n`, a range
/// of them) is the IPv4 entry it maps: the kernel sees an IPv4 source as
/// IPv4, so the IPv6 form could never match (Linux drops IPv6 packets with a
/// mapped source), and operators copy such addresses from dual-stack logs.
pub fn parse_entry(s: &str) -> Result<Vec<IpNet>, RuleError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(RuleError::Empty);
    }
    // Before the range split: an interface name may hold a '-'.
    if s.contains('%') {
        return Err(RuleError::ZoneIndex {
            input: s.to_string(),
        });
    }
    if let Some((start, end)) = s.split_once('-')
        // `10.0.0.1/-1` is a CIDR with a negative length, not a range.
        && !start.trim_end().ends_with('/')
    {
        let (start, end) = (start.trim(), end.trim());
        if start.is_empty() || end.is_empty() {
            return Err(RuleError::IncompleteRange {
                input: s.to_string(),
            });
        }
        return range_entry(parse_addr(start)?, parse_addr(end)?, s);
    }
    if let Some((addr, len)) = s.split_once('/') {
        let addr = addr.trim();
        let ip = parse_addr(if addr.is_empty() { s } else { addr })?;
        let max = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let bad_len = || RuleError::InvalidPrefixLength {
            input: s.to_string(),
            max,
        };
        let len = len.trim();
        // u8's parser accepts a leading '+'; a prefix length is digits only.
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_len());
        }
        let len: u8 = len.parse().map_err(|_| bad_len())?;
        let net = match ip.to_canonical() {
            IpAddr::V4(v4) if ip.is_ipv6() => {
                if len > 128 {
                    return Err(bad_len());
                }
                let len = len.checked_sub(96).ok_or(RuleError::MappedPrefixTooShort {
                    input: s.to_string(),
                })?;
                IpNet::new(IpAddr::V4(v4), len).map_err(|_| bad_len())?
            }
            _ => IpNet::new(ip, len).map_err(|_| bad_len())?,
        };
        let network = net.trunc();
        if network != net {
            return Err(RuleError::HostBitsSet {
                input: s.to_string(),
                network,
            });
        }
        return Ok(vec![network]);
    }
    let ip = parse_addr(s)?.to_canonical();
    Ok(vec![IpNet::from(ip)])
}

/// The CIDRs of the inclusive range `start..=end` given as `input`, with
/// IPv4-mapped ends taken as the IPv4 addresses they map (see
/// [`parse_entry`]); a range from a mapped address to another IPv6 address
/// is an error.
pub fn range_entry(start: IpAddr, end: IpAddr, input: &str) -> Result<Vec<IpNet>, RuleError> {
    let (start4, end4) = (start.to_canonical(), end.to_canonical());
    if start4.is_ipv4() != end4.is_ipv4() && start.is_ipv6() && end.is_ipv6() {
        return Err(RuleError::MappedRange {
            input: input.to_string(),
        });
    }
    range_to_cidrs(start4, end4)
}

fn parse_addr(s: &str) -> Result<IpAddr, RuleError> {
    s.parse().map_err(|_| RuleError::InvalidAddress {
        input: s.to_string(),
    })
}

/// The minimal set of CIDRs covering the inclusive range `start..=end`, in
/// address order.
pub fn range_to_cidrs(start: IpAddr, end: IpAddr) -> Result<Vec<IpNet>, RuleError> {
    match (start, end) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            if a > b {
                return Err(RuleError::ReversedRange { start, end });
            }
            Ok(Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect())
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            if a > b {
                return Err(RuleError::ReversedRange { start, end });
            }
            Ok(Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect())
        }
        _ => Err(RuleError::MixedFamilies { start, end }),
    }
}

/// A country index as its two-letter code, for messages.
pub(crate) fn country_name(index: u16) -> String {
    match rampart_common::country_code(index) {
        Some([a, b]) => format!("{}{}", char::from(a), char::from(b)),
        None => format!("#{index}"),
    }
}

#[cfg(test)]
mod tests;
