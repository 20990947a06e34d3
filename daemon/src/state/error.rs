//! Errors of the state directory.

use std::io;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::{RecordError, SnapshotDefect};
use crate::filter::{EntryOrigin, ListKind};

/// Errors of the state directory. Storage errors are split so that the caller can say
/// what is wrong: [`StateError::NoSpace`], [`StateError::ReadOnly`], [`StateError::Write`].
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no space left on the file system of {}", path.display())]
    NoSpace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is on a read-only file system", path.display())]
    ReadOnly {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is locked: another rampartd uses this state directory", path.display())]
    Locked { path: PathBuf },
    #[error("{} is corrupt", path.display())]
    CorruptSnapshot {
        path: PathBuf,
        #[source]
        source: SnapshotDefect,
    },
    #[error("{} holds an entry or a policy that is not valid", path.display())]
    InvalidSnapshot {
        path: PathBuf,
        #[source]
        source: Box<StateError>,
    },
    /// State of a format a newer rampartd writes (after a downgrade).
    #[error(
        "{} was written by a newer rampartd (format {version}; this one reads format {known}): upgrade rampartd, or restore a backup of the state directory",
        path.display()
    )]
    NewerFormat {
        path: PathBuf,
        version: u32,
        known: u32,
    },
    /// A journal record holding a change a newer rampartd writes.
    #[error(
        "{}:{line}: written by a newer rampartd (a change of kind {kind:?}, which this version does not know): upgrade rampartd, or restore a backup of the state directory",
        path.display()
    )]
    NewerJournal {
        path: PathBuf,
        line: usize,
        kind: String,
    },
    #[error("{}: unsupported format version {version}", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error(
        "{}:{line}: damaged record before the end of the journal (an acknowledged change): restore the state directory or repair the line",
        path.display()
    )]
    CorruptJournal {
        path: PathBuf,
        line: usize,
        #[source]
        source: RecordError,
    },
    /// A record whose checksum is right but whose sequence number is not the next
    /// one (wherever it is: not damage, so "damaged record" would mislead).
    #[error(
        "{}:{line}: journal record {found} where record {expected} was expected (a record is missing, repeated or out of order): restore the state directory or repair the journal",
        path.display()
    )]
    JournalSequence {
        path: PathBuf,
        line: usize,
        expected: u64,
        found: u64,
    },
    #[error(
        "{}:{line}: the last journal record is complete but damaged (not a torn write, so probably an acknowledged change): restore the state directory, repair the line, or delete it to start without that change",
        path.display()
    )]
    DamagedLastRecord {
        path: PathBuf,
        line: usize,
        #[source]
        source: RecordError,
    },
    #[error("{}:{line}: invalid country table line {text:?}", path.display())]
    CorruptCountries {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("{net} ({} list) comes from the configuration file; such entries are not stored", list.name())]
    ConfigEntry { list: ListKind, net: IpNet },
    #[error("the configuration file's {} entries are not stored, so they cannot be replaced", list.name())]
    ConfigReplace { list: ListKind },
    #[error(
        "{net} ({} list, {origin:?}) is not a {replaced_origin:?} entry of the {} list being replaced",
        list.name(),
        replaced_list.name()
    )]
    ReplaceMismatch {
        net: IpNet,
        list: ListKind,
        origin: EntryOrigin,
        replaced_list: ListKind,
        replaced_origin: EntryOrigin,
    },
    #[error("{code:?} is not a two-letter country code")]
    BadCountry { code: String },
    #[error("country index {index} has no two-letter code")]
    BadCountryIndex { index: u16 },
    #[error("cannot encode a journal record")]
    Encode {
        #[source]
        source: serde_json::Error,
    },
}

impl StateError {
    /// A write error, classified by what the operator must fix.
    pub(super) fn write(path: &Path, source: io::Error) -> Self {
        let path = path.to_owned();
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                Self::NoSpace { path, source }
            }
            io::ErrorKind::ReadOnlyFilesystem => Self::ReadOnly { path, source },
            _ => Self::Write { path, source },
        }
    }
}
