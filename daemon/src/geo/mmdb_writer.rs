//! A MaxMind DB (MMDB) writer, for tests to build country databases.
//!
//! Hand-written: the Rust crates that write MMDB files are young or
//! unmaintained, and a test writer needs little of the format (MaxMind DB
//! spec 2.0, <https://maxmind.github.io/MaxMind-DB/>): a binary search tree
//! of 24-, 28- or 32-bit records, 16 zero bytes, a data section of encoded
//! values, then the metadata marker and a metadata map. Networks may nest
//! (the more specific wins); an IPv6 database keeps IPv4 at `::/96` and, by
//! default, points the `::ffff:0:0/96` and `2002::/16` aliases at that
//! subtree as MaxMind's own writer does.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// A value of the MMDB data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MmdbValue {
    String(String),
    Uint16(u16),
    Uint32(u32),
    Uint64(u64),
    Bool(bool),
    Map(Vec<(String, MmdbValue)>),
    Array(Vec<MmdbValue>),
}

impl MmdbValue {
    /// A map from `(key, value)` pairs.
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, MmdbValue)>) -> MmdbValue {
        MmdbValue::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn string(s: impl Into<String>) -> MmdbValue {
        MmdbValue::String(s.into())
    }
}

/// Errors of writing an MMDB file.
#[derive(Debug, thiserror::Error)]
pub enum MmdbWriteError {
    #[error("{network} is IPv6 but the database is IPv4-only")]
    Ipv6InIpv4Database { network: IpNet },
    #[error("record size {bits} is not 24, 28 or 32")]
    BadRecordSize { bits: u16 },
    #[error("the tree and data need {needed} in a record, more than {bits} bits hold")]
    RecordTooSmall { bits: u16, needed: u64 },
    #[error("a value of {size} elements or bytes is too large for the MMDB format")]
    ValueTooLarge { size: usize },
    #[error("cannot write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Builds an MMDB file from networks and their records.
#[derive(Debug, Clone)]
pub struct MmdbWriter {
    database_type: String,
    ip_version: u16,
    record_size: Option<u16>,
    ipv4_aliases: bool,
    build_epoch: u64,
    networks: Vec<(IpNet, MmdbValue)>,
}

/// The build time of written databases unless set: 2026-11-01 00:00 UTC.
pub const DEFAULT_BUILD_EPOCH: u64 = 1_793_491_200;

impl MmdbWriter {
    /// An IPv6 database (IPv4 under `::/96`, with aliases) of this
    /// `database_type`, e.g. `GeoLite2-Country`.
    pub fn new(database_type: &str) -> MmdbWriter {
        MmdbWriter {
            database_type: database_type.to_string(),
            ip_version: 6,
            record_size: None,
            ipv4_aliases: true,
            build_epoch: DEFAULT_BUILD_EPOCH,
            networks: Vec::new(),
        }
    }

    /// An IPv4-only database (`ip_version` 4, a 32-level tree).
    pub fn ipv4_only(mut self) -> MmdbWriter {
        self.ip_version = 4;
        self
    }

    /// Forces the record size (24, 28 or 32 bits); the smallest that fits
    /// is used otherwise.
    pub fn record_size(mut self, bits: u16) -> MmdbWriter {
        self.record_size = Some(bits);
        self
    }

    /// No `::ffff:0:0/96` and `2002::/16` aliases of the IPv4 subtree.
    pub fn without_ipv4_aliases(mut self) -> MmdbWriter {
        self.ipv4_aliases = false;
        self
    }

    pub fn build_epoch(mut self, epoch: u64) -> MmdbWriter {
        self.build_epoch = epoch;
        self
    }

    /// Adds a network. Nested networks are fine, in any order: an address
    /// gets the record of the longest network holding it. The same network
    /// twice keeps the last record.
    pub fn insert(&mut self, network: IpNet, record: MmdbValue) -> &mut MmdbWriter {
        self.networks.push((network, record));
        self
    }

    /// Writes the database to `path`.
    pub fn write(&self, path: &Path) -> Result<(), MmdbWriteError> {
        let bytes = self.to_bytes()?;
        fs::write(path, bytes).map_err(|source| MmdbWriteError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The database file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, MmdbWriteError> {
        let depth: u8 = if self.ip_version == 4 { 32 } else { 128 };
        let mut tree = Tree::default();
        let mut data = DataSection::default();
        // Shorter first, so that a more specific network overrides.
        let mut networks: Vec<&(IpNet, MmdbValue)> = self.networks.iter().collect();
        networks.sort_by_key(|(net, _)| tree_prefix_len(net, depth));
        for (net, record) in networks {
            let (key, len) = match (net, depth) {
                (IpNet::V4(v4), 32) => (u128::from(u32::from(v4.network())) << 96, v4.prefix_len()),
                (IpNet::V4(v4), _) => (u128::from(u32::from(v4.network())), v4.prefix_len() + 96),
                (IpNet::V6(_), 32) => {
                    return Err(MmdbWriteError::Ipv6InIpv4Database { network: *net });
                }
                (IpNet::V6(v6), _) => (u128::from(v6.network()), v6.prefix_len()),
            };
            let index = data.add(record)?;
            tree.insert(key, len, Link::Data(index));
        }
        if depth == 128 && self.ipv4_aliases {
            tree.alias_ipv4();
        }

        let numbers = tree.number();
        let node_count = numbers.order.len() as u64;
        let (data_bytes, offsets) = data.finish();
        let needed = node_count + 16 + data_bytes.len() as u64;
        let bits = match self.record_size {
            Some(bits @ (24 | 28 | 32)) => bits,
            Some(bits) => return Err(MmdbWriteError::BadRecordSize { bits }),
            None => [24, 28, 32]
                .into_iter()
                .find(|&b| needed < 1u64 << b)
                .unwrap_or(32),
        };
        if needed >= 1u64 << bits {
            return Err(MmdbWriteError::RecordTooSmall { bits, needed });
        }

        let record = |link: Link| -> u32 {
            let value = match link {
                Link::Empty => node_count,
                Link::Node(n) => numbers.of.get(&n).copied().unwrap_or_default(),
                Link::Data(i) => {
                    node_count + 16 + offsets.get(i).copied().unwrap_or_default() as u64
                }
            };
            // Fits: checked against `needed` above.
            value as u32
        };
        let mut out = Vec::new();
        for &n in &numbers.order {
            let [left, right] = tree.nodes.get(n).copied().unwrap_or_default();
            write_node(&mut out, bits, record(left), record(right));
        }
        out.extend([0u8; 16]);
        out.extend(&data_bytes);
        out.extend(b"\xAB\xCD\xEFMaxMind.com");
        encode(&self.metadata(node_count, bits), &mut out)?;
        Ok(out)
    }

    fn metadata(&self, node_count: u64, record_size: u16) -> MmdbValue {
        MmdbValue::map([
            ("binary_format_major_version", MmdbValue::Uint16(2)),
            ("binary_format_minor_version", MmdbValue::Uint16(0)),
            ("build_epoch", MmdbValue::Uint64(self.build_epoch)),
            ("database_type", MmdbValue::string(&self.database_type)),
            (
                "description",
                MmdbValue::map([("en", MmdbValue::string("rampart test database"))]),
            ),
            ("ip_version", MmdbValue::Uint16(self.ip_version)),
            ("languages", MmdbValue::Array(vec![MmdbValue::string("en")])),
            (
                "node_count",
                MmdbValue::Uint32(u32::try_from(node_count).unwrap_or(u32::MAX)),
            ),
            ("record_size", MmdbValue::Uint16(record_size)),
        ])
    }
}

fn tree_prefix_len(net: &IpNet, depth: u8) -> u8 {
    match net {
        IpNet::V4(v4) if depth == 128 => v4.prefix_len() + 96,
        _ => net.prefix_len(),
    }
}

/// What a record of the tree points at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Link {
    #[default]
    Empty,
    /// An index into `Tree::nodes`.
    Node(usize),
    /// An index into the data section's values.
    Data(usize),
}

/// The search tree as an arena of nodes; node 0 is the root.
struct Tree {
    nodes: Vec<[Link; 2]>,
}

impl Default for Tree {
    fn default() -> Tree {
        Tree {
            nodes: vec![[Link::Empty; 2]],
        }
    }
}

/// Bit `i` (0 = most significant) of a 128-bit key.
fn bit(key: u128, i: u8) -> usize {
    usize::from((key >> (127 - i)) & 1 == 1)
}

impl Tree {
    /// Points the network `key/len` (`key` left-aligned in 128 bits) at
    /// `link`, splitting any shorter network on the way.
    fn insert(&mut self, key: u128, len: u8, link: Link) {
        if len == 0 {
            // The whole address space: the root itself is always a node.
            self.nodes[0] = [link; 2];
            return;
        }
        let mut node = 0;
        for i in 0..len - 1 {
            node = self.child_node(node, bit(key, i));
        }
        self.nodes[node][bit(key, len - 1)] = link;
    }

    /// The node behind `node`'s record `side`, made a node if it was empty
    /// or data (which then covers both halves).
    fn child_node(&mut self, node: usize, side: usize) -> usize {
        match self.nodes[node][side] {
            Link::Node(n) => n,
            other => {
                let n = self.nodes.len();
                self.nodes.push([other; 2]);
                self.nodes[node][side] = Link::Node(n);
                n
            }
        }
    }

    /// Makes `::ffff:0:0/96` and `2002::/16` lead to the IPv4 subtree at
    /// `::/96`, the layout MaxMind's writer produces.
    fn alias_ipv4(&mut self) {
        let mut node = 0;
        for _ in 0..95 {
            match self.nodes[node][0] {
                Link::Node(n) => node = n,
                _ => return,
            }
        }
        let ipv4 = self.nodes[node][0];
        if ipv4 == Link::Empty {
            return;
        }
        for (key, len) in [(0xffffu128 << 32, 96), (0x2002u128 << 112, 16)] {
            self.insert(key, len, ipv4);
        }
    }

    /// Node numbers in breadth-first order from the root; a node reached
    /// twice (an alias) is numbered once.
    fn number(&self) -> Numbering {
        let mut numbering = Numbering {
            order: vec![0],
            of: HashMap::from([(0, 0)]),
        };
        let mut next = 0;
        while let Some(&n) = numbering.order.get(next) {
            next += 1;
            for link in self.nodes.get(n).copied().unwrap_or_default() {
                if let Link::Node(child) = link
                    && !numbering.of.contains_key(&child)
                {
                    numbering.of.insert(child, numbering.order.len() as u64);
                    numbering.order.push(child);
                }
            }
        }
        numbering
    }
}

struct Numbering {
    /// Arena indexes in file order.
    order: Vec<usize>,
    /// Arena index -> node number.
    of: HashMap<usize, u64>,
}

fn write_node(out: &mut Vec<u8>, bits: u16, left: u32, right: u32) {
    let (l, r) = (left.to_be_bytes(), right.to_be_bytes());
    match bits {
        24 => {
            out.extend(&l[1..]);
            out.extend(&r[1..]);
        }
        28 => {
            // The middle byte holds the top nibble of each record.
            out.extend(&l[1..]);
            out.push(((l[0] & 0x0f) << 4) | (r[0] & 0x0f));
            out.extend(&r[1..]);
        }
        _ => {
            out.extend(l);
            out.extend(r);
        }
    }
}

/// Distinct values, each encoded once.
#[derive(Default)]
struct DataSection {
    bytes: Vec<u8>,
    /// Offset of each added value (by add order).
    offsets: Vec<usize>,
    seen: HashMap<Vec<u8>, usize>,
}

impl DataSection {
    /// Adds a value; returns its index for `Link::Data`.
    fn add(&mut self, value: &MmdbValue) -> Result<usize, MmdbWriteError> {
        let mut encoded = Vec::new();
        encode(value, &mut encoded)?;
        let offset = match self.seen.get(&encoded) {
            Some(&offset) => offset,
            None => {
                let offset = self.bytes.len();
                self.bytes.extend(&encoded);
                self.seen.insert(encoded, offset);
                offset
            }
        };
        self.offsets.push(offset);
        Ok(self.offsets.len() - 1)
    }

    fn finish(self) -> (Vec<u8>, Vec<usize>) {
        (self.bytes, self.offsets)
    }
}

/// Encodes a value in the MMDB data format.
fn encode(value: &MmdbValue, out: &mut Vec<u8>) -> Result<(), MmdbWriteError> {
    match value {
        MmdbValue::String(s) => {
            control(out, 2, s.len())?;
            out.extend(s.as_bytes());
        }
        MmdbValue::Uint16(v) => unsigned(out, 5, u64::from(*v))?,
        MmdbValue::Uint32(v) => unsigned(out, 6, u64::from(*v))?,
        MmdbValue::Uint64(v) => unsigned(out, 9, *v)?,
        MmdbValue::Bool(b) => control(out, 14, usize::from(*b))?,
        MmdbValue::Map(entries) => {
            control(out, 7, entries.len())?;
            for (key, value) in entries {
                control(out, 2, key.len())?;
                out.extend(key.as_bytes());
                encode(value, out)?;
            }
        }
        MmdbValue::Array(items) => {
            control(out, 11, items.len())?;
            for item in items {
                encode(item, out)?;
            }
        }
    }
    Ok(())
}

/// An unsigned integer in as few big-endian bytes as it needs.
fn unsigned(out: &mut Vec<u8>, type_number: u8, value: u64) -> Result<(), MmdbWriteError> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    control(out, type_number, bytes.len() - skip)?;
    out.extend(&bytes[skip..]);
    Ok(())
}

/// The control byte(s) of a value: type in the top 3 bits (0 and an extra
/// byte of `type - 7` for the extended types), then the size.
fn control(out: &mut Vec<u8>, type_number: u8, size: usize) -> Result<(), MmdbWriteError> {
    let (size_bits, extra): (u8, Vec<u8>) = match size {
        0..29 => (size as u8, Vec::new()),
        29..285 => (29, vec![(size - 29) as u8]),
        285..65_821 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        65_821..16_843_037 => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
        _ => return Err(MmdbWriteError::ValueTooLarge { size }),
    };
    if type_number <= 7 {
        out.push((type_number << 5) | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_number - 7);
    }
    out.extend(extra);
    Ok(())
}

/// A GeoIP2-style country record: `country` and `registered_country` with
/// `iso_code`, `geoname_id` and an English name, as GeoLite2-Country has.
pub fn country_record(iso_code: &str) -> MmdbValue {
    MmdbValue::map([
        (
            "continent",
            MmdbValue::map([("code", MmdbValue::string("EU"))]),
        ),
        ("country", place(iso_code)),
        ("registered_country", place(iso_code)),
    ])
}

/// A record with only `registered_country`, as MaxMind writes for networks
/// it places no further than the country they are registered in.
pub fn registered_country_record(iso_code: &str) -> MmdbValue {
    MmdbValue::map([("registered_country", place(iso_code))])
}

fn place(iso_code: &str) -> MmdbValue {
    let id = iso_code
        .bytes()
        .fold(0u32, |id, b| {
            id.wrapping_mul(256).wrapping_add(u32::from(b))
        })
        .wrapping_add(6_000_000);
    MmdbValue::map([
        ("geoname_id", MmdbValue::Uint32(id)),
        ("is_in_european_union", MmdbValue::Bool(false)),
        ("iso_code", MmdbValue::string(iso_code)),
        (
            "names",
            MmdbValue::map([("en", MmdbValue::string(format!("Country {iso_code}")))]),
        ),
    ])
}

/// A GeoLite2-Country-like MMDB of these networks (IPv4 and IPv6) and their
/// country codes.
pub fn country_mmdb<'a>(
    networks: impl IntoIterator<Item = (IpNet, &'a str)>,
) -> Result<Vec<u8>, MmdbWriteError> {
    let mut writer = MmdbWriter::new("GeoLite2-Country");
    for (net, code) in networks {
        writer.insert(net, country_record(code));
    }
    writer.to_bytes()
}
