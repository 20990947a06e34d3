//! "What would the kernel do with a packet from this address?", answered
//! from what the daemon wrote into the kernel (the compiled table in force,
//! the exact entries and their generation, the settings), in the program's
//! order of decisions (`judge` in filter-ebpf).

use std::{fmt, net::IpAddr};

use ipnet::IpNet;
use rampart_common::{REASON_NAMES, class_flags, country_code, reason};

use super::{EntryOrigin, Filter, ListKind, lists::live_at, monotonic_ns};
use crate::rules;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
}

/// The program's verdict for a source, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub source: IpAddr,
    /// What happens to the packet (in monitor mode, drops pass).
    pub action: Action,
    /// The counter the packet moves: a name of `REASON_NAMES`.
    pub reason: &'static str,
    /// The list entry that decided (bypass, deny, or the allowlist entry
    /// that let a protected packet through), if one did.
    pub matched: Option<Matched>,
    /// The source's country (two lower-case letters), if the table knows it.
    pub country: Option<String>,
    /// Whether the destination is in the protected scope. Without a
    /// destination, the source is judged as protected traffic (the
    /// strictest case) and this is true.
    pub in_scope: bool,
    /// Monitor mode: drops are counted under their reason but pass.
    pub monitor: bool,
    /// A flood limit applies to this packet: it may still be dropped
    /// (`flood`) depending on its rate, which is not predicted here.
    pub flood_limited: bool,
}

/// A list entry behind a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matched {
    pub list: ListKind,
    pub net: IpNet,
    /// The expiry in force (CLOCK_MONOTONIC ns, 0 = permanent): for a deny
    /// prefix, the kernel's (the longest of the deny prefixes covering the
    /// source).
    pub expires_ns: u64,
    pub origin: EntryOrigin,
    /// Found in the exact deny maps rather than the prefix table.
    pub exact: bool,
}

impl Explanation {
    /// Whether the packet is dropped.
    pub fn dropped(&self) -> bool {
        self.action == Action::Drop
    }
}

fn origin_name(o: EntryOrigin) -> &'static str {
    match o {
        EntryOrigin::Config => "configuration",
        EntryOrigin::Operator => "operator",
        EntryOrigin::Auto => "automatic ban",
    }
}

/// One line for people: what happens and why.
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let drops = !matches!(self.reason, "passed" | "passed_unprotected" | "bypassed");
        match (self.action, drops) {
            (Action::Drop, _) => f.write_str("drop: ")?,
            (Action::Pass, true) => f.write_str("pass (monitor mode; would drop): ")?,
            (Action::Pass, false) => f.write_str("pass: ")?,
        }
        let entry = |f: &mut fmt::Formatter<'_>, m: &Matched| -> fmt::Result {
            write!(
                f,
                "{} is on the {} list ({}",
                m.net,
                m.list.name(),
                origin_name(m.origin)
            )?;
            if m.expires_ns != 0 {
                let left = m.expires_ns.saturating_sub(monotonic_ns()) / 1_000_000_000;
                write!(f, ", expires in {left} s")?;
            }
            f.write_str(")")
        };
        match (self.reason, &self.matched) {
            ("bypassed" | "denied", Some(m)) => entry(f, m)?,
            ("bypassed", None) => write!(f, "{} is on the bypass list", self.source)?,
            ("denied", None) => write!(f, "{} is on the deny list", self.source)?,
            ("malformed", _) => write!(
                f,
                "{} is an IPv4-mapped source, which no host sends: the packet is malformed",
                self.source
            )?,
            ("passed_unprotected", _) => {
                f.write_str("the destination is outside the protected scope")?
            }
            ("not_allowlisted", _) => {
                write!(f, "an allowlist is set and {} is not on it", self.source)?
            }
            ("country", _) => match &self.country {
                Some(c) => write!(f, "sources from country {c} are blocked")?,
                None => f.write_str("sources of no known country are blocked")?,
            },
            (_, m) => {
                f.write_str("no rule drops it")?;
                if let Some(m) = m {
                    f.write_str("; ")?;
                    entry(f, m)?;
                }
                if self.flood_limited {
                    f.write_str("; the flood limit drops it if it sends too fast")?;
                }
            }
        }
        if let Some(c) = self.country.as_deref().filter(|_| self.reason != "country") {
            write!(f, " [country {c}]")?;
        }
        Ok(())
    }
}

fn reason_name(r: u32) -> &'static str {
    REASON_NAMES.get(r as usize).copied().unwrap_or("unknown")
}

impl Filter {
    /// The kernel's verdict for a packet from `addr` to `dst` (IP protocol,
    /// destination port; port 0 = no port, as for a non-first fragment).
    /// The same order of decisions as the program: bypass, exact deny,
    /// deny prefix, scope, allowlist, country, flood (not predicted),
    /// monitor mode. Neighbour discovery (ICMPv6 133-137) always passes
    /// whatever this says; malformed packets are not considered, but for an
    /// IPv4-mapped IPv6 source, which the kernel takes as malformed (only a
    /// forger sends one).
    pub fn explain(&self, addr: IpAddr, dst: Option<(u8, u16)>) -> Explanation {
        let now = monotonic_ns();
        let (_, class) = rules::lookup(&self.table, addr);
        let mut e = Explanation {
            action: Action::Pass,
            reason: reason_name(reason::PASS),
            matched: None,
            country: country_code(class.country).map(|c| String::from_utf8_lossy(&c).into_owned()),
            source: addr,
            in_scope: dst.is_none_or(|(protocol, port)| self.settings.protects(protocol, port)),
            monitor: self.settings.monitor,
            flood_limited: false,
        };
        let verdict = |e: &mut Explanation, r: u32, drop: bool| {
            e.reason = reason_name(r);
            e.action = if drop && !e.monitor {
                Action::Drop
            } else {
                Action::Pass
            };
        };
        if let IpAddr::V6(v6) = addr
            && v6.to_ipv4_mapped().is_some()
        {
            verdict(&mut e, reason::MALFORMED, self.settings.drop_malformed);
            e.country = None;
            return e;
        }
        if class.flags & class_flags::BYPASS != 0 {
            verdict(&mut e, reason::BYPASS, false);
            e.matched = self.prefix_match(ListKind::Bypass, addr, now, None);
            return e;
        }
        if let Some(d) = self.kernel.exact_applying(addr, now) {
            verdict(&mut e, reason::DENY, true);
            let net = IpNet::from(addr);
            // Unknown to the lists only before the first change after a
            // restart (an entry of the previous run).
            e.matched = self
                .lists
                .slots(ListKind::Deny, &net)
                .effective(now)
                .map(|(_, origin)| Matched {
                    list: ListKind::Deny,
                    net,
                    expires_ns: d.expires_ns,
                    origin,
                    exact: true,
                });
            return e;
        }
        if class.flags & class_flags::DENY != 0 && live_at(class.deny_expires_ns, now) {
            verdict(&mut e, reason::DENY, true);
            e.matched = self.prefix_match(ListKind::Deny, addr, now, Some(class.deny_expires_ns));
            return e;
        }
        if !e.in_scope {
            verdict(&mut e, reason::PASS_UNPROTECTED, false);
            return e;
        }
        if class.flags & class_flags::NOT_ALLOWLISTED != 0 {
            verdict(&mut e, reason::NOT_ALLOWLISTED, true);
        } else if class.flags & class_flags::COUNTRY_BLOCKED != 0 {
            verdict(&mut e, reason::COUNTRY, true);
        } else {
            e.flood_limited = self.settings.flood.is_some();
            if class.flags & class_flags::ALLOWLISTED != 0 {
                e.matched = self.prefix_match(ListKind::Allow, addr, now, None);
            }
        }
        e
    }

    /// The most specific prefix entry of `kind` covering `addr` (single
    /// deny addresses are exact entries, not prefixes).
    fn prefix_match(
        &self,
        kind: ListKind,
        addr: IpAddr,
        now: u64,
        expires_ns: Option<u64>,
    ) -> Option<Matched> {
        let max = match (kind, addr) {
            (ListKind::Deny, IpAddr::V4(_)) => 31,
            (ListKind::Deny, IpAddr::V6(_)) => 127,
            (_, IpAddr::V4(_)) => 32,
            (_, IpAddr::V6(_)) => 128,
        };
        let entry = self.lists.covering(kind, addr, now, max)?;
        Some(Matched {
            list: kind,
            net: entry.net,
            expires_ns: expires_ns.unwrap_or(entry.expires_ns),
            origin: entry.origin,
            exact: false,
        })
    }
}
