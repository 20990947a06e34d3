//! Folds [`PrefixRules`] into the kernel's multibit trie (stride 8) and
//! looks sources up in it the way the XDP program's `walk` does.
//!
//! Compilation in three steps:
//! 1. every distinct prefix gets the rules given exactly for it (merged);
//! 2. a walk of the prefixes in containment (pre-)order folds into each one
//!    the rules of all its ancestors, which gives the class of the addresses
//!    it covers and that no longer prefix covers;
//! 3. the prefixes are painted from shortest to longest: a longer prefix
//!    overwrites the part of the table its shorter ancestors painted,
//!    creating child nodes (initialised with the parent entry) on the way.
//!    A prefix whose class equals its nearest ancestor's is not painted.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use rampart_common::{
    CHILD_BASE, COUNTRY_SLOTS, Class, FIRST_INNER_NODE, MAX_CLASSES, MAX_DEPTH, NODE_FANOUT,
    NODES_PER_BUFFER, Node, V4_ROOT, V6_ROOT, class_flags,
};

use super::{PrefixRules, RuleError};

/// The content of one buffer of the kernel's prefix table.
#[derive(Clone)]
pub struct CompiledTable {
    /// Nodes from index 0: the IPv4 root (0..256), the IPv6 root
    /// (256..512), then inner nodes.
    pub nodes: Vec<Node>,
    /// Classes by id; id 0 is the class of a source no prefix covers.
    pub classes: Vec<Class>,
}

/// Sizes of a compiled table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableStats {
    /// All nodes, roots included.
    pub nodes: usize,
    /// Inner nodes reachable from the IPv4 root.
    pub v4_inner_nodes: usize,
    /// Inner nodes reachable from the IPv6 root.
    pub v6_inner_nodes: usize,
    /// Distinct classes.
    pub classes: usize,
}

impl CompiledTable {
    /// Node and class counts.
    pub fn stats(&self) -> TableStats {
        TableStats {
            nodes: self.nodes.len(),
            v4_inner_nodes: self.reachable_inner(V4_ROOT),
            v6_inner_nodes: self.reachable_inner(V6_ROOT),
            classes: self.classes.len(),
        }
    }

    /// Inner nodes reachable from a root (256 nodes from `root`).
    fn reachable_inner(&self, root: u32) -> usize {
        let mut seen = vec![false; self.nodes.len()];
        let mut todo: Vec<usize> = (root as usize..root as usize + NODE_FANOUT).collect();
        let mut count = 0;
        while let Some(n) = todo.pop() {
            let Some(node) = self.nodes.get(n) else {
                continue;
            };
            for &e in &node.entries {
                if e < CHILD_BASE {
                    continue;
                }
                let child = usize::from(e - CHILD_BASE);
                if let Some(s) = seen.get_mut(child)
                    && !*s
                {
                    *s = true;
                    count += 1;
                    todo.push(child);
                }
            }
        }
        count
    }
}

/// The class id and class the kernel finds for `addr`: the same walk as the
/// XDP program's `walk` and `class_of`.
pub fn lookup(table: &CompiledTable, addr: IpAddr) -> (u16, Class) {
    let mut bytes = [0u8; 16];
    let (root, len) = match addr {
        IpAddr::V4(a) => {
            bytes[..4].copy_from_slice(&a.octets());
            (V4_ROOT, 4)
        }
        IpAddr::V6(a) => {
            bytes = a.octets();
            (V6_ROOT, 16)
        }
    };
    let id = walk(&table.nodes, root, &bytes, len);
    let idx = u32::from(id) & (MAX_CLASSES - 1);
    let class = table.classes.get(idx as usize).copied().unwrap_or_default();
    (id, class)
}

fn walk(nodes: &[Node], root: u32, addr: &[u8; 16], len: usize) -> u16 {
    let mut entry = match nodes.get((root + u32::from(addr[0])) as usize) {
        Some(n) => n.entries[usize::from(addr[1])],
        None => return 0,
    };
    let mut depth = 2;
    while depth < MAX_DEPTH {
        if depth >= len || entry < CHILD_BASE {
            break;
        }
        let node = usize::from(entry - CHILD_BASE);
        entry = match nodes.get(node) {
            Some(n) => n.entries[usize::from(addr[depth])],
            None => return 0,
        };
        depth += 1;
    }
    if entry >= CHILD_BASE { 0 } else { entry }
}

/// A prefix with its address left-aligned in 128 bits (IPv4 in the top 32),
/// so both families share the byte arithmetic. Ordered by family, address,
/// then length: a pre-order of the containment tree.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Key {
    v6: bool,
    bits: u128,
    len: u8,
}

impl Key {
    fn of(net: &IpNet) -> Key {
        match net {
            IpNet::V4(n) => Key {
                v6: false,
                bits: u128::from(u32::from(n.network())) << 96,
                len: n.prefix_len(),
            },
            IpNet::V6(n) => Key {
                v6: true,
                bits: u128::from(n.network()),
                len: n.prefix_len(),
            },
        }
    }

    fn contains(&self, other: &Key) -> bool {
        self.v6 == other.v6
            && self.len <= other.len
            && (self.len == 0 || (self.bits ^ other.bits) >> (128 - u32::from(self.len)) == 0)
    }

    /// Byte `i` (0-based) of the address.
    fn byte(&self, i: usize) -> usize {
        ((self.bits >> (120 - 8 * i)) & 0xff) as usize
    }
}

/// What the rules say about a prefix (its own, or folded with ancestors).
#[derive(Clone, Copy, Default)]
struct Facts {
    bypass: bool,
    /// Some(expiry) when denied; 0 = never expires.
    deny: Option<u64>,
    allow: bool,
    /// Country of the longest country prefix seen.
    country: Option<u16>,
}

/// A permanent deny wins; otherwise the latest expiry.
fn fold_expiry(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) if x == 0 || y == 0 => Some(0),
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Facts {
    /// `self` folded with the facts of a longer (more specific) prefix.
    fn then(&self, inner: &Facts) -> Facts {
        Facts {
            bypass: self.bypass || inner.bypass,
            deny: fold_expiry(self.deny, inner.deny),
            allow: self.allow || inner.allow,
            country: inner.country.or(self.country),
        }
    }

    fn class(&self, rules: &PrefixRules) -> Class {
        let mut flags = 0;
        if self.bypass {
            flags |= class_flags::BYPASS;
        }
        if self.deny.is_some() {
            flags |= class_flags::DENY;
        }
        if self.allow {
            flags |= class_flags::ALLOWLISTED;
        } else if rules.allowlist_active {
            flags |= class_flags::NOT_ALLOWLISTED;
        }
        let country = self.country.unwrap_or(0);
        if !self.allow && rules.country_policy.blocks(country) {
            flags |= class_flags::COUNTRY_BLOCKED;
        }
        Class {
            flags,
            country,
            _pad: 0,
            deny_expires_ns: self.deny.unwrap_or(0),
        }
    }
}

/// Deduplicated classes in order of first use.
struct Classes {
    ids: HashMap<(u16, u16, u64), u16>,
    list: Vec<Class>,
}

impl Classes {
    fn intern(&mut self, class: Class) -> Result<u16, RuleError> {
        let key = (class.flags, class.country, class.deny_expires_ns);
        if let Some(&id) = self.ids.get(&key) {
            return Ok(id);
        }
        let id = u16::try_from(self.list.len())
            .ok()
            .filter(|&id| u32::from(id) < MAX_CLASSES)
            .ok_or(RuleError::TooManyClasses { limit: MAX_CLASSES })?;
        self.ids.insert(key, id);
        self.list.push(class);
        Ok(id)
    }
}

/// Builds the table content of one buffer from the rules.
pub fn compile(rules: &PrefixRules) -> Result<CompiledTable, RuleError> {
    let prefixes = merged_prefixes(rules)?;

    let base = Facts::default();
    let mut classes = Classes {
        ids: HashMap::new(),
        list: Vec::new(),
    };
    let default_class = classes.intern(base.class(rules))?;

    // Containment walk: the stack holds the chain of ancestors of the
    // current prefix with their folded facts and class ids.
    let mut stack: Vec<(Key, Facts, u16)> = Vec::new();
    let mut paint: Vec<(Key, u16)> = Vec::new();
    for (key, own) in prefixes {
        while stack.last().is_some_and(|(k, _, _)| !k.contains(&key)) {
            stack.pop();
        }
        let (parent, parent_class) = stack
            .last()
            .map_or((base, default_class), |&(_, f, c)| (f, c));
        let facts = parent.then(&own);
        let class = classes.intern(facts.class(rules))?;
        if class != parent_class {
            paint.push((key, class));
        }
        stack.push((key, facts, class));
    }

    paint.sort_unstable_by_key(|&(k, _)| (k.len, k.v6, k.bits));
    let mut table = Painter {
        nodes: vec![
            Node {
                entries: [default_class; NODE_FANOUT]
            };
            FIRST_INNER_NODE as usize
        ],
    };
    for (key, class) in paint {
        table.paint(key, class)?;
    }
    Ok(CompiledTable {
        nodes: table.nodes,
        classes: classes.list,
    })
}

/// Every distinct prefix of the rules with the rules given for it, in
/// containment pre-order.
fn merged_prefixes(rules: &PrefixRules) -> Result<Vec<(Key, Facts)>, RuleError> {
    let mut items: Vec<(Key, IpNet, Facts)> = Vec::with_capacity(
        rules.bypass.len() + rules.deny.len() + rules.allow.len() + rules.countries.len(),
    );
    let mut add = |net: &IpNet, facts: Facts| items.push((Key::of(net), *net, facts));
    for net in &rules.bypass {
        add(
            net,
            Facts {
                bypass: true,
                ..Facts::default()
            },
        );
    }
    for (net, expires) in &rules.deny {
        add(
            net,
            Facts {
                deny: Some(*expires),
                ..Facts::default()
            },
        );
    }
    for net in &rules.allow {
        add(
            net,
            Facts {
                allow: true,
                ..Facts::default()
            },
        );
    }
    for &(net, country) in &rules.countries {
        if country == 0 || u32::from(country) >= COUNTRY_SLOTS {
            return Err(RuleError::InvalidCountry {
                prefix: net.trunc(),
                index: country,
            });
        }
        add(
            &net,
            Facts {
                country: Some(country),
                ..Facts::default()
            },
        );
    }
    // Stable: equal prefixes keep input order, so errors are deterministic.
    items.sort_by_key(|&(k, _, _)| k);

    let mut merged: Vec<(Key, Facts)> = Vec::with_capacity(items.len());
    for (key, net, facts) in items {
        match merged.last_mut() {
            Some((k, m)) if *k == key => {
                if let (Some(a), Some(b)) = (m.country, facts.country)
                    && a != b
                {
                    return Err(RuleError::CountryConflict {
                        prefix: net.trunc(),
                        first: a,
                        second: b,
                    });
                }
                *m = Facts {
                    bypass: m.bypass || facts.bypass,
                    deny: fold_expiry(m.deny, facts.deny),
                    allow: m.allow || facts.allow,
                    country: m.country.or(facts.country),
                };
            }
            _ => merged.push((key, facts)),
        }
    }
    Ok(merged)
}

/// The node pool being filled.
struct Painter {
    nodes: Vec<Node>,
}

impl Painter {
    /// Writes `class` over every entry the prefix covers. Prefixes come
    /// shortest first, so the covered entries hold classes, never children:
    /// children only exist under entries of longer prefixes' ancestors.
    fn paint(&mut self, key: Key, class: u16) -> Result<(), RuleError> {
        let root = if key.v6 { V6_ROOT } else { V4_ROOT } as usize;
        let top = (key.bits >> 112) as usize;
        if key.len <= 16 {
            let span = 1usize << (16 - key.len);
            for i in top..top + span {
                self.set(root + (i >> 8), i & 0xff, class);
            }
            return Ok(());
        }
        let mut node = root + (top >> 8);
        let mut idx = top & 0xff;
        let mut depth = 2;
        loop {
            let child = self.child(node, idx)?;
            let b = key.byte(depth);
            let rest = usize::from(key.len) - 8 * depth;
            if rest <= 8 {
                let span = 1usize << (8 - rest);
                for e in b..b + span {
                    self.set(child, e, class);
                }
                return Ok(());
            }
            node = child;
            idx = b;
            depth += 1;
        }
    }

    /// Sets an entry to a class; should it hold a child (which the painting
    /// order rules out), the whole subtree gets the class.
    fn set(&mut self, node: usize, idx: usize, class: u16) {
        let mut todo = vec![(node, idx)];
        while let Some((n, i)) = todo.pop() {
            let Some(entry) = self.nodes.get_mut(n).map(|n| &mut n.entries[i]) else {
                continue;
            };
            if *entry >= CHILD_BASE {
                let child = usize::from(*entry - CHILD_BASE);
                todo.extend((0..NODE_FANOUT).map(|e| (child, e)));
            } else {
                *entry = class;
            }
        }
    }

    /// The child under an entry, created (filled with the entry's class)
    /// when the entry holds a class.
    fn child(&mut self, node: usize, idx: usize) -> Result<usize, RuleError> {
        let too_many = RuleError::TooManyNodes {
            limit: NODES_PER_BUFFER,
        };
        let Some(parent) = self.nodes.get(node) else {
            return Err(too_many);
        };
        let entry = parent.entries[idx];
        if entry >= CHILD_BASE {
            return Ok(usize::from(entry - CHILD_BASE));
        }
        let child = self.nodes.len();
        if child >= NODES_PER_BUFFER as usize {
            return Err(too_many);
        }
        let pointer = u16::try_from(child)
            .ok()
            .and_then(|c| c.checked_add(CHILD_BASE))
            .ok_or(too_many)?;
        self.nodes.push(Node {
            entries: [entry; NODE_FANOUT],
        });
        if let Some(parent) = self.nodes.get_mut(node) {
            parent.entries[idx] = pointer;
        }
        Ok(child)
    }
}

#[cfg(test)]
mod tests;
