//! The journal's line format and its scan.
//!
//! One record per line: the CRC-32 of the JSON record as 8 lower-case hex digits, a
//! space, the record (`{"seq":N,"changes":[...]}`), a newline. A record is written with
//! one write and made durable (fdatasync) before the change is acknowledged, so only the
//! last line can be incomplete after a crash; any earlier bad line is damage to
//! acknowledged data and is reported, never skipped.
//!
//! A torn last write shows as a line without its newline (the file's length was cut
//! short) or as NUL bytes inside it (blocks the file system had not written read as
//! zeros). A last line that has its newline and no NUL byte but fails its checksum does
//! not look like a torn write: it is reported as damage too, since it is more likely an
//! acknowledged record that was altered afterwards.

use serde::{Deserialize, Serialize};

use super::{Change, StateError};

/// Bytes before the record: 8 hex digits and a space.
pub(super) const HEADER_LEN: usize = 9;

#[derive(Serialize)]
struct RecordOut<'a> {
    seq: u64,
    changes: &'a [Change],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordIn {
    seq: u64,
    changes: Vec<Change>,
}

/// One complete, checksum-valid record.
#[derive(Debug)]
pub(super) struct Record {
    /// 1-based line number in the journal.
    pub line: usize,
    pub seq: u64,
    pub changes: Vec<Change>,
}

/// What a journal holds.
#[derive(Debug)]
pub(super) struct Scan {
    pub records: Vec<Record>,
    /// Length of the prefix made of whole, valid lines.
    pub good_len: usize,
    /// Bytes after `good_len`: a last record that looks like a torn write (cut short,
    /// or failing its checksum with NUL bytes in it). Most likely it was being written
    /// when the process stopped, so never acknowledged; corruption cannot be ruled out.
    pub torn_len: usize,
}

/// A line that stops the scan or the replay.
#[derive(Debug)]
pub(super) struct Damage {
    /// 1-based line number in the journal.
    pub line: usize,
    /// The journal's last line, whole but damaged itself (checksum, header or syntax);
    /// `false` for a damaged line before it, and for a valid record that cannot be
    /// replayed (sequence, content).
    pub last: bool,
    pub defect: RecordError,
}

/// Why a journal line is not a valid record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the line does not start with an 8-digit checksum and a space")]
    Malformed,
    #[error("checksum mismatch: the line says {stored:08x}, its record hashes to {actual:08x}")]
    Checksum { stored: u32, actual: u32 },
    #[error("the record does not parse")]
    Syntax {
        #[source]
        source: serde_json::Error,
    },
    /// A change this version does not know, in a record whose checksum is
    /// right: what a newer rampartd writes, not damage.
    #[error("a change of kind {kind:?}, which this version does not know")]
    NewerKind { kind: String },
    #[error("record {found} where record {expected} was expected")]
    Sequence { expected: u64, found: u64 },
    #[error("the record holds a change that is not valid")]
    Invalid {
        #[source]
        source: Box<StateError>,
    },
}

/// The line for record `seq`, newline included.
pub(super) fn encode(seq: u64, changes: &[Change]) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(&RecordOut { seq, changes })?;
    let mut line = Vec::with_capacity(HEADER_LEN + json.len() + 1);
    line.extend_from_slice(format!("{:08x} ", crc32fast::hash(&json)).as_bytes());
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

/// Splits a journal into records. A last line that looks like a torn write is returned
/// as `torn_len`; any other bad line is an error with its 1-based line number.
pub(super) fn scan(bytes: &[u8]) -> Result<Scan, Damage> {
    let mut records = Vec::new();
    let mut pos = 0;
    let mut line_no = 0;
    while pos < bytes.len() {
        line_no += 1;
        let Some(newline) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            // No newline: the write of this record did not finish.
            break;
        };
        let end = pos + newline + 1;
        let line = &bytes[pos..end - 1];
        let last = end == bytes.len();
        match decode(line) {
            Ok((seq, changes)) => records.push(Record {
                line: line_no,
                seq,
                changes,
            }),
            // A whole line whose checksum fails can still be a torn write: after a crash
            // the file's length may be durable while some of its blocks are not, and
            // those read as zeros.
            Err(RecordError::Malformed | RecordError::Checksum { .. })
                if last && line.contains(&0) =>
            {
                break;
            }
            Err(defect) => {
                return Err(Damage {
                    line: line_no,
                    last,
                    defect,
                });
            }
        }
        pos = end;
    }
    Ok(Scan {
        records,
        good_len: pos,
        torn_len: bytes.len() - pos,
    })
}

/// The checksum a line starts with and the rest of the line; `None` when the line does
/// not start with 8 hex digits and a space. (The snapshot has the same form.)
pub(super) fn split_header(line: &[u8]) -> Option<(u32, &[u8])> {
    let (header, rest) = line.split_at_checked(HEADER_LEN)?;
    let (digits, space) = header.split_at(HEADER_LEN - 1);
    if space != b" " || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let stored = std::str::from_utf8(digits)
        .ok()
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())?;
    Some((stored, rest))
}

fn decode(line: &[u8]) -> Result<(u64, Vec<Change>), RecordError> {
    let (stored, json) = split_header(line).ok_or(RecordError::Malformed)?;
    let actual = crc32fast::hash(json);
    if stored != actual {
        return Err(RecordError::Checksum { stored, actual });
    }
    let record: RecordIn = serde_json::from_slice(json).map_err(|source| {
        newer_kind(json).map_or(RecordError::Syntax { source }, |kind| {
            RecordError::NewerKind { kind }
        })
    })?;
    Ok((record.seq, record.changes))
}

/// The kinds of [`Change`] this version writes (their serde names).
pub(super) const CHANGE_KINDS: [&str; 5] = ["add", "remove", "replace", "set_countries", "set_geo"];

/// The first change of a record that does not parse whose kind this version
/// does not know (a change is an object with its kind as only key).
fn newer_kind(json: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Loose {
        changes: Vec<serde_json::Map<String, serde_json::Value>>,
    }
    let loose: Loose = serde_json::from_slice(json).ok()?;
    loose.changes.into_iter().find_map(|change| {
        let mut keys = change.keys();
        match (keys.next(), keys.next()) {
            (Some(kind), None) if !CHANGE_KINDS.contains(&kind.as_str()) => Some(kind.clone()),
            _ => None,
        }
    })
}
