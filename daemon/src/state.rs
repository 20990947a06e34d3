//! Durable control-plane state: the list entries, country policy and country table the
//! CLI changes while traffic flows.
//!
//! Every acknowledged change is on disk first. The state directory holds:
//! - `state.json`, a snapshot (format version, sequence number of the last record it
//!   includes, entries, country policy, geo source) behind a CRC-32 of it, in the
//!   journal's line form; always replaced atomically;
//! - `journal.log`, an append-only journal with one checksummed record per line
//!   (`<crc32 hex> {"seq":N,"changes":[...]}`); one [`StateStore::commit`] is one record,
//!   so a batch of changes is replayed whole or not at all;
//! - `countries.csv`, the country table of the last `geo load`.
//!
//! A commit writes its record and fdatasyncs it before returning; on any error the
//! journal is cut back to its previous length and the in-memory state is untouched, so a
//! full disk or a read-only directory refuses the change and changes nothing. On open,
//! the records after the snapshot's sequence number are replayed. A last record that
//! looks torn by a crash (cut short, or with zeroed bytes) was most likely never
//! acknowledged: it is copied aside (`journal.log.damaged-<seq>`) and cut off. Any other
//! damaged record, the last one included, refuses the open. When the journal outgrows the
//! snapshot, the state is compacted: snapshot first, then the journal is truncated. A
//! crash between the two leaves records the snapshot already has; their sequence numbers
//! say so and replay skips them.
//!
//! One process at a time: the journal is locked (`flock`) while a store is open.
//!
//! Commits block on the disk (one fdatasync each, about what the disk's flush costs):
//! call them from a blocking task, not from the async request path.

mod countries;
mod error;
mod file;
mod format;
mod journal;
mod snapshot;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, TryLockError};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::CountryCode;
use crate::filter::{EntryOrigin, ListKind};
use crate::policy::quota::{SystemClock, WallClock};

pub use error::StateError;
pub(crate) use file::replace_file;
pub use journal::RecordError;
pub use snapshot::SnapshotDefect;

/// The snapshot's file name in the state directory.
pub const SNAPSHOT_FILE: &str = "state.json";
/// The journal's file name in the state directory.
pub const JOURNAL_FILE: &str = "journal.log";
/// The saved country table's file name in the state directory.
pub const COUNTRIES_FILE: &str = "countries.csv";

const FORMAT_VERSION: u32 = 1;

/// The journal is compacted once it is larger than this and than the snapshot: the cost
/// of a compaction (writing the whole state) is then spread over as many bytes of
/// records, and replay at start never reads more than about twice the state.
const COMPACT_MIN_BYTES: u64 = 1 << 20;

/// One operator or automatic list entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEntry {
    #[serde(with = "format::list_kind")]
    pub list: ListKind,
    #[serde(with = "format::net")]
    pub net: IpNet,
    /// [`EntryOrigin::Operator`] or [`EntryOrigin::Auto`]; configuration entries are
    /// never stored (they are read from the configuration file at every start).
    #[serde(with = "format::origin")]
    pub origin: EntryOrigin,
    /// Unix seconds; `None` = permanent. Wall-clock time because CLOCK_MONOTONIC starts
    /// again at every boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Uid of the control socket peer that added it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_by: Option<u32>,
    /// Unix seconds.
    pub added_at: u64,
    /// Why an automatic ban was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl StoredEntry {
    /// Whether the entry is still in force at `now` (Unix seconds).
    pub fn is_live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// The country policy set from the CLI (`country block|unblock|allow-only`). Codes are
/// two lower-case letters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CountryPolicyState {
    Off,
    Block(BTreeSet<String>),
    AllowOnly {
        countries: BTreeSet<String>,
        allow_unknown: bool,
    },
}

impl CountryPolicyState {
    fn codes(&self) -> impl Iterator<Item = &String> {
        let codes = match self {
            Self::Off => None,
            Self::Block(countries) | Self::AllowOnly { countries, .. } => Some(countries),
        };
        codes.into_iter().flatten()
    }

    fn lower_case(&self) -> Self {
        let lower =
            |codes: &BTreeSet<String>| codes.iter().map(|c| c.to_ascii_lowercase()).collect();
        match self {
            Self::Off => Self::Off,
            Self::Block(countries) => Self::Block(lower(countries)),
            Self::AllowOnly {
                countries,
                allow_unknown,
            } => Self::AllowOnly {
                countries: lower(countries),
                allow_unknown: *allow_unknown,
            },
        }
    }
}

/// Where the country table of the last `geo load` came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoState {
    /// A description of the source (its path, for the operator).
    pub source: String,
    /// Unix seconds.
    pub loaded_at: u64,
}

/// Everything the control plane has changed. Entries are keyed by list and network
/// (host bits cleared).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub entries: BTreeMap<(ListKind, IpNet), StoredEntry>,
    /// `None`: never set from the CLI (the configuration file decides).
    pub countries: Option<CountryPolicyState>,
    pub geo: Option<GeoState>,
}

impl State {
    /// The entries in force at `now` (Unix seconds).
    pub fn live(&self, now: u64) -> impl Iterator<Item = &StoredEntry> {
        self.entries.values().filter(move |e| e.is_live(now))
    }

    pub fn get(&self, list: ListKind, net: &IpNet) -> Option<&StoredEntry> {
        self.entries.get(&(list, net.trunc()))
    }

    /// Applies a change that [`validate`] accepted; never fails, so that a change is
    /// applied in memory exactly when its record is on disk.
    fn apply(&mut self, change: &Change) {
        match change {
            Change::Add(entries) => {
                for entry in entries {
                    self.insert(entry.clone());
                }
            }
            Change::Remove(keys) => {
                for (list, net) in keys {
                    self.entries.remove(&(*list, net.trunc()));
                }
            }
            Change::Replace {
                list,
                origin,
                entries,
            } => {
                self.entries
                    .retain(|(l, _), e| !(l == list && e.origin == *origin));
                for entry in entries {
                    self.insert(entry.clone());
                }
            }
            Change::SetCountries(policy) => self.countries = Some(policy.lower_case()),
            Change::SetGeo(geo) => self.geo = Some(geo.clone()),
        }
    }

    fn insert(&mut self, entry: StoredEntry) {
        let net = entry.net.trunc();
        self.entries
            .insert((entry.list, net), StoredEntry { net, ..entry });
    }

    /// Entries of an IPv4-mapped IPv6 network (`::ffff:a.b.c.d/96+n`), which
    /// earlier versions stored as given though the kernel never matches them (it
    /// sees an IPv4 source as IPv4), become the IPv4 entry they map, as the CLI now
    /// makes them; where that entry is there already, the one that lasts longer
    /// stays. Returns `(was, now)` for each entry changed.
    fn unmap_ipv4_mapped(&mut self) -> Vec<(IpNet, IpNet)> {
        let mapped: Vec<(ListKind, IpNet)> = self
            .entries
            .keys()
            .filter(|(_, net)| ipv4_of_mapped(net).is_some())
            .copied()
            .collect();
        let mut changed = Vec::with_capacity(mapped.len());
        for key in mapped {
            let Some(entry) = self.entries.remove(&key) else {
                continue;
            };
            let Some(v4) = ipv4_of_mapped(&key.1) else {
                continue;
            };
            changed.push((key.1, v4));
            let keep_old = self.entries.get(&(key.0, v4)).is_some_and(|old| {
                match (old.expires_at, entry.expires_at) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(old), Some(new)) => old >= new,
                }
            });
            if !keep_old {
                self.insert(StoredEntry { net: v4, ..entry });
            }
        }
        changed
    }

    /// Drops entries expired at `now`; returns how many.
    fn drop_expired(&mut self, now: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.is_live(now));
        before - self.entries.len()
    }
}

/// One change of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Inserts the entries, replacing any entry of the same list and network (whatever
    /// its origin).
    Add(Vec<StoredEntry>),
    /// Removes these entries; absent ones are ignored.
    Remove(#[serde(with = "format::keys")] Vec<(ListKind, IpNet)>),
    /// Replaces every entry of `list` whose origin is `origin` with `entries` (each of
    /// that list and origin).
    Replace {
        #[serde(with = "format::list_kind")]
        list: ListKind,
        #[serde(with = "format::origin")]
        origin: EntryOrigin,
        entries: Vec<StoredEntry>,
    },
    SetCountries(CountryPolicyState),
    SetGeo(GeoState),
}

/// Checks what [`State::apply`] cannot: configuration entries, entries of another list
/// in a `Replace`, country codes.
fn validate(changes: &[Change]) -> Result<(), StateError> {
    let entry_ok = |e: &StoredEntry| match e.origin {
        EntryOrigin::Config => Err(StateError::ConfigEntry {
            list: e.list,
            net: e.net,
        }),
        EntryOrigin::Operator | EntryOrigin::Auto => Ok(()),
    };
    for change in changes {
        match change {
            Change::Add(entries) => entries.iter().try_for_each(entry_ok)?,
            Change::Replace {
                list,
                origin,
                entries,
            } => {
                if *origin == EntryOrigin::Config {
                    return Err(StateError::ConfigReplace { list: *list });
                }
                for e in entries {
                    entry_ok(e)?;
                    if e.list != *list || e.origin != *origin {
                        return Err(StateError::ReplaceMismatch {
                            net: e.net,
                            list: e.list,
                            origin: e.origin,
                            replaced_list: *list,
                            replaced_origin: *origin,
                        });
                    }
                }
            }
            Change::SetCountries(policy) => {
                if let Some(code) = policy.codes().find(|c| CountryCode::parse(c).is_none()) {
                    return Err(StateError::BadCountry { code: code.clone() });
                }
            }
            Change::Remove(_) | Change::SetGeo(_) => {}
        }
    }
    Ok(())
}

/// The state directory, open: the journal locked, the state replayed into memory.
#[derive(Debug)]
pub struct StateStore<C: WallClock = SystemClock> {
    dir: PathBuf,
    snapshot_path: PathBuf,
    journal_path: PathBuf,
    journal: File,
    /// Length of the journal's valid, acknowledged prefix.
    journal_len: u64,
    /// A failed append may have left bytes past `journal_len` that could not be cut off:
    /// they are cut before the next record is written.
    tail_dirty: bool,
    /// Sequence number of the last record (in the journal or the snapshot).
    seq: u64,
    snapshot_len: u64,
    compact_min_bytes: u64,
    state: State,
    clock: C,
}

impl StateStore {
    /// Opens (creating it with mode 0700 if missing) the state directory `dir` and
    /// replays its state.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        Self::open_with_clock(dir, SystemClock)
    }
}

impl<C: WallClock> StateStore<C> {
    /// [`StateStore::open`] with a given wall clock (expiry of entries).
    pub fn open_with_clock(dir: &Path, clock: C) -> Result<Self, StateError> {
        file::create_private_dir(dir).map_err(|source| StateError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let journal_path = dir.join(JOURNAL_FILE);
        let mut journal =
            file::open_or_create(&journal_path).map_err(|e| StateError::write(&journal_path, e))?;
        match journal.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StateError::Locked { path: journal_path });
            }
            Err(TryLockError::Error(e)) => return Err(StateError::write(&journal_path, e)),
        }
        let snapshot::Snapshot {
            seq: snapshot_seq,
            len: snapshot_len,
            mut state,
            unchecked,
        } = snapshot::read(&snapshot_path)?;

        let mut bytes = Vec::new();
        journal
            .read_to_end(&mut bytes)
            .map_err(|source| StateError::Read {
                path: journal_path.clone(),
                source,
            })?;
        let damaged = |d: journal::Damage| {
            let path = journal_path.clone();
            let (line, source) = (d.line, d.defect);
            if let RecordError::NewerKind { kind } = source {
                StateError::NewerJournal { path, line, kind }
            } else if let RecordError::Sequence { expected, found } = source {
                StateError::JournalSequence {
                    path,
                    line,
                    expected,
                    found,
                }
            } else if d.last {
                StateError::DamagedLastRecord { path, line, source }
            } else {
                StateError::CorruptJournal { path, line, source }
            }
        };
        let scan = journal::scan(&bytes).map_err(damaged)?;
        let (seq, stale) = replay(&scan, snapshot_seq, &mut state).map_err(damaged)?;
        let good_len = scan.good_len as u64;
        if scan.torn_len > 0 {
            // Kept, not destroyed: it may be corruption of an acknowledged record after
            // all. Named after the sequence number the record would have.
            let torn = &bytes[scan.good_len..];
            let copy = file::set_aside(&journal_path, seq + 1, torn)
                .map_err(|(path, e)| StateError::write(&path, e))?;
            tracing::warn!(
                path = %journal_path.display(),
                bytes = scan.torn_len,
                set_aside = %copy.display(),
                "the last journal record is damaged or incomplete (a torn write at a crash, or corruption); it is set aside"
            );
            journal
                .set_len(good_len)
                .and_then(|()| journal.sync_data())
                .map_err(|e| StateError::write(&journal_path, e))?;
        }
        state.drop_expired(clock.now_unix());
        let unmapped = state.unmap_ipv4_mapped();
        for (was, now) in &unmapped {
            tracing::warn!(
                was = %was,
                now = %now,
                "a list entry stored by an earlier version as an IPv4-mapped IPv6 network (never matched by the kernel) is taken as the IPv4 entry it maps"
            );
        }

        let mut store = Self {
            dir: dir.to_owned(),
            snapshot_path,
            journal_path,
            journal,
            journal_len: good_len,
            tail_dirty: false,
            seq,
            snapshot_len,
            compact_min_bytes: COMPACT_MIN_BYTES,
            state,
            clock,
        };
        if stale > 0 || !unmapped.is_empty() {
            store.compact()?;
        } else if unchecked {
            // Written by an earlier version: give it its checksum now rather than at
            // the next compaction. It was read fine, so failing here stops nothing.
            if let Err(e) = store.compact() {
                tracing::warn!(
                    path = %store.snapshot_path.display(),
                    error = %e,
                    "the snapshot has no checksum (written by an earlier version) and cannot be rewritten with one yet; it is read unchecked until the next compaction"
                );
                return Ok(store);
            }
        }
        if unchecked {
            tracing::info!(
                path = %store.snapshot_path.display(),
                "the snapshot had no checksum (written by an earlier version): read unchecked, rewritten with one"
            );
        }
        Ok(store)
    }

    /// The current state (every acknowledged change applied).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sequence number of the last acknowledged commit (0: none yet).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Applies `changes` as one durable record: when this returns `Ok`, they are on
    /// disk (fdatasync) and in [`Self::state`]; a crash replays all of them or none.
    /// On error nothing changed, on disk or in memory. Returns the record's sequence
    /// number (an empty batch writes nothing and returns the current one).
    pub fn commit(&mut self, changes: &[Change]) -> Result<u64, StateError> {
        if changes.is_empty() {
            return Ok(self.seq);
        }
        validate(changes)?;
        let seq = self.seq + 1;
        let line = journal::encode(seq, changes).map_err(|source| StateError::Encode { source })?;
        self.append(&line)?;
        self.seq = seq;
        for change in changes {
            self.state.apply(change);
        }
        if self.journal_len > self.compact_min_bytes.max(self.snapshot_len) {
            // The commit is durable already; a failed compaction is tried again after
            // the next commit, and the journal stays valid meanwhile.
            if let Err(e) = self.compact() {
                tracing::warn!(error = %e, "cannot compact the state journal");
            }
        }
        Ok(seq)
    }

    /// Writes the state as a new snapshot and empties the journal; drops expired
    /// entries. Done by [`Self::commit`] when the journal has grown.
    pub fn compact(&mut self) -> Result<(), StateError> {
        self.state.drop_expired(self.clock.now_unix());
        self.snapshot_len = snapshot::write(&self.snapshot_path, self.seq, &self.state)?;
        // A crash here leaves records the snapshot has: replay skips them by sequence.
        self.journal
            .set_len(0)
            .and_then(|()| self.journal.sync_data())
            .map_err(|e| StateError::write(&self.journal_path, e))?;
        self.journal_len = 0;
        self.tail_dirty = false;
        Ok(())
    }

    /// Saves the country table of a `geo load` (replacing the previous one atomically).
    /// Save it before committing the [`Change::SetGeo`] that describes it.
    pub fn save_countries(&self, prefixes: &[(IpNet, u16)]) -> Result<(), StateError> {
        countries::save(&self.dir.join(COUNTRIES_FILE), prefixes)
    }

    /// The saved country table; `None` if none was ever saved.
    pub fn load_countries(&self) -> Result<Option<Vec<(IpNet, u16)>>, StateError> {
        countries::load(&self.dir.join(COUNTRIES_FILE))
    }

    /// Appends one record and makes it durable, or leaves the journal as it was.
    fn append(&mut self, line: &[u8]) -> Result<(), StateError> {
        let err = |e| StateError::write(&self.journal_path, e);
        if self.tail_dirty {
            self.journal
                .set_len(self.journal_len)
                .and_then(|()| self.journal.sync_data())
                .map_err(err)?;
            self.tail_dirty = false;
        }
        let written = self
            .journal
            .write_all_at(line, self.journal_len)
            .and_then(|()| self.journal.sync_data());
        if let Err(e) = written {
            // Cut off whatever part of the record reached the file, so that it never
            // sits before a later record (where replay would call it damage).
            let cut = self
                .journal
                .set_len(self.journal_len)
                .and_then(|()| self.journal.sync_data());
            self.tail_dirty = cut.is_err();
            return Err(err(e));
        }
        self.journal_len += line.len() as u64;
        Ok(())
    }
}

/// Applies the scanned records after `snapshot_seq` to `state`. Returns the last
/// sequence number and how many records the snapshot already had; or the damaged record.
/// The IPv4 network an IPv4-mapped IPv6 network of at least /96 maps.
fn ipv4_of_mapped(net: &IpNet) -> Option<IpNet> {
    let IpNet::V6(v6) = net else {
        return None;
    };
    let v4 = v6.addr().to_ipv4_mapped()?;
    let len = v6.prefix_len().checked_sub(96)?;
    IpNet::new(std::net::IpAddr::V4(v4), len)
        .ok()
        .map(|n| n.trunc())
}

fn replay(
    scan: &journal::Scan,
    snapshot_seq: u64,
    state: &mut State,
) -> Result<(u64, usize), journal::Damage> {
    // A valid record that cannot be replayed is not a torn write wherever it is.
    let damage = |line, defect| journal::Damage {
        line,
        last: false,
        defect,
    };
    let mut seq = snapshot_seq;
    let mut stale = 0;
    for record in &scan.records {
        if seq == snapshot_seq && record.seq <= snapshot_seq {
            // Already in the snapshot: a compaction stopped before it truncated.
            stale += 1;
            continue;
        }
        if record.seq != seq + 1 {
            let defect = RecordError::Sequence {
                expected: seq + 1,
                found: record.seq,
            };
            return Err(damage(record.line, defect));
        }
        validate(&record.changes).map_err(|e| {
            let defect = RecordError::Invalid {
                source: Box::new(e),
            };
            damage(record.line, defect)
        })?;
        for change in &record.changes {
            state.apply(change);
        }
        seq = record.seq;
    }
    Ok((seq, stale))
}

/// The `version` field of a state file's JSON (`state.json`, `subscriptions.json`,
/// `quota.json`), read on its own before the rest, so that a file of a newer format
/// (with fields this rampartd does not know) is reported as newer, not as corrupt.
pub(crate) fn format_version(json: &[u8]) -> serde_json::Result<u32> {
    #[derive(serde::Deserialize)]
    struct Version {
        version: u32,
    }
    serde_json::from_slice::<Version>(json).map(|v| v.version)
}
