//! Quotas (APIM `quota` and `quota-by-key`): calls and kilobytes per fixed window per key.
//!
//! Windows are fixed: they start at `anchor` (APIM's subscription start or
//! `first-period-start`; the Unix epoch by default) and repeat every period; a period of
//! zero never renews. Counters are kept in memory and written to the state directory by
//! [`QuotaCounters::flush`], which the daemon calls periodically and at shutdown: no fsync
//! per request, at the cost of losing the calls since the last flush on a crash (APIM
//! documents the same slack). On start, counters are reloaded; a window that ended while
//! the daemon was down starts fresh.
//!
//! On disk: `quota.json`, every counter at some moment, and `quota.journal`, one line
//! per counter changed since, each line the counter's whole value (so replaying a line
//! twice changes nothing). A flush appends the counters changed since the last one,
//! so what it writes follows the traffic, not the size of the table: clients that send
//! a new `counter = "header:..."` value each make one counter, and a table of a million
//! counters rewritten every second would be over 100 MB a second. When the journal
//! has grown as large as the snapshot (at least [`COMPACT_MIN_BYTES`]), the next flush
//! writes a new snapshot and empties the journal.
//!
//! Memory is bounded by `max_keys`: counters of ended windows are dropped first; if the
//! table is still full, the least-used counters are dropped (those keys start from zero:
//! a flood of distinct keys must not grow memory, and must not lock out new keys either).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use super::Rejection;

/// Name of the counters' snapshot in the state directory.
pub const QUOTA_FILE: &str = "quota.json";
/// Name of the counters' journal (changes since the snapshot) in the state directory.
pub const QUOTA_JOURNAL: &str = "quota.journal";
/// The journal is folded into a new snapshot once it is this large and as large as
/// the snapshot.
pub const COMPACT_MIN_BYTES: u64 = 1024 * 1024;

/// Default bound on the number of counters kept.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

const FORMAT_VERSION: u32 = 1;

/// Wall-clock time in Unix seconds (quota windows outlive the process, so not monotonic).
pub trait WallClock: Send + Sync {
    fn now_unix(&self) -> u64;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_unix(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A clock set by hand, for tests.
#[derive(Debug, Default)]
pub struct ManualWallClock {
    secs: AtomicU64,
}

impl ManualWallClock {
    pub fn new(now_unix: u64) -> Self {
        Self {
            secs: AtomicU64::new(now_unix),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.secs.fetch_add(by.as_secs(), Ordering::SeqCst);
    }
}

impl WallClock for ManualWallClock {
    fn now_unix(&self) -> u64 {
        self.secs.load(Ordering::SeqCst)
    }
}

impl<C: WallClock + ?Sized> WallClock for std::sync::Arc<C> {
    fn now_unix(&self) -> u64 {
        (**self).now_unix()
    }
}

/// One configured quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    calls: Option<u64>,
    kilobytes: Option<u64>,
    /// Window length in seconds; 0 = never renews.
    period: u64,
    anchor: u64,
}

impl Quota {
    /// At least one of `calls` and `kilobytes`; `period` in whole seconds (zero: infinite);
    /// windows start at `anchor` (Unix seconds) and every `period` after it.
    pub fn new(
        calls: Option<u64>,
        kilobytes: Option<u64>,
        period: Duration,
        anchor: u64,
    ) -> Result<Self, QuotaError> {
        if calls.is_none() && kilobytes.is_none() {
            return Err(QuotaError::NoLimit);
        }
        if period.subsec_nanos() != 0 {
            return Err(QuotaError::FractionalPeriod { period });
        }
        Ok(Self {
            calls,
            kilobytes,
            period: period.as_secs(),
            anchor,
        })
    }

    /// `(start, end)` of the window containing `now`; `end` is `u64::MAX` if infinite.
    fn window(&self, now: u64) -> (u64, u64) {
        if self.period == 0 {
            return (self.anchor, u64::MAX);
        }
        let elapsed = now.saturating_sub(self.anchor);
        let start = self.anchor + elapsed / self.period * self.period;
        (start, start.saturating_add(self.period))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("a quota needs calls, kilobytes or both")]
    NoLimit,
    #[error("a quota period is whole seconds (got {period:?})")]
    FractionalPeriod { period: Duration },
    #[error("cannot read quota counters {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Counters of a format a newer rampartd writes (after a downgrade).
    #[error(
        "quota counters {path} were written by a newer rampartd (format {version}; this one reads format {known}): upgrade rampartd, or restore a backup of the state directory"
    )]
    NewerFormat {
        path: PathBuf,
        version: u32,
        known: u32,
    },
    #[error("quota counters {path} are corrupt (move the file away to start from zero)")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write quota counters {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Calls,
    Bandwidth,
}

/// Usage after an admitted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUsage {
    pub calls: u64,
    pub bytes: u64,
    /// When the window renews (`None`: never).
    pub renews_in: Option<Duration>,
    /// The start of the window the call was counted in, for [`QuotaCounters::refund`].
    window_start: u64,
}

/// A refused call: the key's quota for this window is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} quota exceeded")]
pub struct QuotaExceeded {
    pub kind: QuotaKind,
    /// Until the window renews (`None`: an infinite window never renews).
    pub retry_after: Option<Duration>,
}

impl QuotaExceeded {
    /// APIM's 403: "Out of call volume quota. Quota will be replenished in hh:mm:ss."
    /// (.NET `TimeSpan` form, `d.hh:mm:ss` past a day) with `Retry-After` in seconds.
    pub fn rejection(&self) -> Rejection {
        let what = match self.kind {
            QuotaKind::Calls => "Out of call volume quota.",
            QuotaKind::Bandwidth => "Out of bandwidth quota.",
        };
        let mut headers = HeaderMap::new();
        let message = match self.retry_after {
            Some(after) => {
                let secs = after.as_secs().max(1);
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
                format!("{what} Quota will be replenished in {}.", timespan(secs))
            }
            // APIM is silent about infinite windows: no renewal time to announce.
            None => what.to_owned(),
        };
        Rejection {
            status: StatusCode::FORBIDDEN,
            message,
            headers,
            reason: "QuotaExceeded",
        }
    }
}

/// .NET `TimeSpan` default format: `hh:mm:ss`, or `d.hh:mm:ss` from one day on.
pub fn timespan(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    if days > 0 {
        format!("{days}.{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Counter {
    window_start: u64,
    window_end: u64,
    calls: u64,
    bytes: u64,
}

#[derive(Debug, Default)]
struct Table {
    counters: HashMap<String, Counter>,
    /// Keys whose counter changed since the last flush. Counters dropped (ended
    /// windows, eviction) are not journaled: ended ones are dropped again at load,
    /// and an evicted one coming back at a restart counts more, never less.
    changed: HashSet<String>,
}

/// One line of the journal: a counter's whole value.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalLine<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    counter: Counter,
}

/// What the files hold, and how large they are.
#[derive(Debug, Default)]
struct Files {
    snapshot_bytes: u64,
    journal_bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    version: u32,
    counters: HashMap<String, Counter>,
}

/// Quota counters for every key, persisted in the state directory.
#[derive(Debug)]
pub struct QuotaCounters<C: WallClock = SystemClock> {
    path: Option<PathBuf>,
    table: Mutex<Table>,
    /// Serialises flushes so an older snapshot never overwrites a newer one; the sizes
    /// of the files.
    flushing: Mutex<Files>,
    max_keys: usize,
    clock: C,
}

impl<C: WallClock> QuotaCounters<C> {
    /// Counters that are never written (tests, or no state directory).
    pub fn in_memory(max_keys: usize, clock: C) -> Self {
        Self {
            path: None,
            table: Mutex::new(Table::default()),
            flushing: Mutex::new(Files::default()),
            max_keys: max_keys.max(1),
            clock,
        }
    }

    /// Loads `state_dir/quota.json` and then `quota.journal` (missing: no counters;
    /// corrupt: an error; a last journal line cut short by a crash is left out),
    /// dropping windows that ended while the daemon was down.
    pub fn open(state_dir: &Path, max_keys: usize, clock: C) -> Result<Self, QuotaError> {
        let path = state_dir.join(QUOTA_FILE);
        let (mut counters, snapshot_bytes) = read_snapshot(&path)?;
        let journal_path = state_dir.join(QUOTA_JOURNAL);
        let journal_bytes = replay_journal(&journal_path, &mut counters, Repair::CutShortLine)?;
        let now = clock.now_unix();
        counters.retain(|_, c| c.window_end > now);
        let mut this = Self::in_memory(max_keys, clock);
        this.path = Some(path);
        this.table = Mutex::new(Table {
            counters,
            changed: HashSet::new(),
        });
        this.flushing = Mutex::new(Files {
            snapshot_bytes,
            journal_bytes,
        });
        Ok(this)
    }

    /// Reads `state_dir/quota.json` and `quota.journal` as [`QuotaCounters::open`]
    /// does and fails as it would, changing nothing (a last journal line cut short
    /// stays): `rampartd --check-config`.
    pub fn verify(state_dir: &Path) -> Result<(), QuotaError> {
        let (mut counters, _) = read_snapshot(&state_dir.join(QUOTA_FILE))?;
        replay_journal(
            &state_dir.join(QUOTA_JOURNAL),
            &mut counters,
            Repair::Nothing,
        )?;
        Ok(())
    }

    /// Counts one call for `key` if its quota allows it. Refused calls are not counted.
    pub fn check(&self, key: &str, quota: &Quota) -> Result<QuotaUsage, QuotaExceeded> {
        let now = self.clock.now_unix();
        let (start, end) = quota.window(now);
        let renews_in = (end != u64::MAX).then(|| Duration::from_secs(end - now));
        let mut table = self.lock();
        let current = table
            .counters
            .get(key)
            .copied()
            .filter(|c| c.window_start == start && c.window_end == end);
        let mut counter = current.unwrap_or(Counter {
            window_start: start,
            window_end: end,
            calls: 0,
            bytes: 0,
        });
        let exceeded = |kind| QuotaExceeded {
            kind,
            retry_after: renews_in,
        };
        if quota.calls.is_some_and(|max| counter.calls >= max) {
            return Err(exceeded(QuotaKind::Calls));
        }
        if quota
            .kilobytes
            .is_some_and(|kb| counter.bytes >= kb.saturating_mul(1024))
        {
            return Err(exceeded(QuotaKind::Bandwidth));
        }
        counter.calls += 1;
        if !table.counters.contains_key(key) && table.counters.len() >= self.max_keys {
            make_room(&mut table.counters, self.max_keys, now);
        }
        table.counters.insert(key.to_owned(), counter);
        if !table.changed.contains(key) {
            table.changed.insert(key.to_owned());
        }
        Ok(QuotaUsage {
            calls: counter.calls,
            bytes: counter.bytes,
            renews_in,
            window_start: start,
        })
    }

    /// Takes back a call [`Self::check`] counted for `key`, when a later policy
    /// refused the request: only admitted calls count. A window that has ended since
    /// is left alone.
    pub fn refund(&self, key: &str, usage: &QuotaUsage) {
        let mut table = self.lock();
        if let Some(c) = table.counters.get_mut(key)
            && c.window_start == usage.window_start
            && c.calls > 0
        {
            c.calls -= 1;
            if !table.changed.contains(key) {
                table.changed.insert(key.to_owned());
            }
        }
    }

    /// Adds transferred bytes to `key`'s bandwidth use (after the response). Bytes of a
    /// call counted in a window that has since ended go nowhere.
    pub fn record_bytes(&self, key: &str, quota: &Quota, bytes: u64) {
        let (start, _) = quota.window(self.clock.now_unix());
        let mut table = self.lock();
        if let Some(c) = table.counters.get_mut(key)
            && c.window_start == start
        {
            c.bytes = c.bytes.saturating_add(bytes);
            if !table.changed.contains(key) {
                table.changed.insert(key.to_owned());
            }
        }
    }

    /// Writes what changed since the last flush: the changed counters appended to the
    /// journal, or, once the journal is as large as the snapshot, a new snapshot of the
    /// whole table (atomic replace) and an empty journal.
    pub fn flush(&self) -> Result<(), QuotaError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut files = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        let compact = files.journal_bytes >= COMPACT_MIN_BYTES.max(files.snapshot_bytes);
        let journal_path = path.with_file_name(QUOTA_JOURNAL);
        let write_err = |path: &Path, source| QuotaError::Write {
            path: path.to_owned(),
            source,
        };
        if compact {
            let snapshot = {
                let mut table = self.lock();
                let now = self.clock.now_unix();
                table.counters.retain(|_, c| c.window_end > now);
                table.changed.clear();
                QuotaFile {
                    version: FORMAT_VERSION,
                    counters: table.counters.clone(),
                }
            };
            let result = serde_json::to_vec(&snapshot)
                .map_err(|e| write_err(path, std::io::Error::other(e)))
                .and_then(|bytes| {
                    super::keys::file::replace_file(path, &bytes, 0o600)
                        .map_err(|e| write_err(path, e))?;
                    Ok(bytes.len() as u64)
                })
                .and_then(|len| {
                    // The snapshot holds every line of the journal now; a crash
                    // before this truncation only replays lines already in it.
                    truncate(&journal_path).map_err(|e| write_err(&journal_path, e))?;
                    Ok(len)
                });
            return match result {
                Ok(len) => {
                    *files = Files {
                        snapshot_bytes: len,
                        journal_bytes: 0,
                    };
                    Ok(())
                }
                Err(e) => {
                    // Everything is to be written again.
                    let mut table = self.lock();
                    let keys: Vec<String> = table.counters.keys().cloned().collect();
                    table.changed.extend(keys);
                    Err(e)
                }
            };
        }
        let lines = {
            let mut table = self.lock();
            if table.changed.is_empty() {
                return Ok(());
            }
            let changed = std::mem::take(&mut table.changed);
            let mut lines = Vec::with_capacity(changed.len() * 96);
            for key in &changed {
                if let Some(counter) = table.counters.get(key) {
                    let line = JournalLine {
                        key: key.as_str().into(),
                        counter: *counter,
                    };
                    // A map of strings and numbers always serialises.
                    if serde_json::to_writer(&mut lines, &line).is_ok() {
                        lines.push(b'\n');
                    }
                }
            }
            lines
        };
        match append(&journal_path, &lines) {
            Ok(()) => {
                files.journal_bytes += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                // The journal may now end in part of a line: nothing is appended after
                // it, the next flush writes a snapshot of everything instead.
                files.journal_bytes = u64::MAX;
                Err(write_err(&journal_path, e))
            }
        }
    }

    /// Drops counters whose window has ended; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_unix();
        let mut table = self.lock();
        let before = table.counters.len();
        table.counters.retain(|_, c| c.window_end > now);
        before - table.counters.len()
    }

    pub fn tracked_keys(&self) -> usize {
        self.lock().counters.len()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `quota.json`'s counters and length (missing: none).
fn read_snapshot(path: &Path) -> Result<(HashMap<String, Counter>, u64), QuotaError> {
    let mut snapshot_bytes = 0;
    let counters = match std::fs::read(path) {
        Ok(bytes) => {
            snapshot_bytes = bytes.len() as u64;
            let corrupt = |source| QuotaError::Corrupt {
                path: path.to_owned(),
                source,
            };
            let version = crate::state::format_version(&bytes).map_err(corrupt)?;
            if version > FORMAT_VERSION {
                return Err(QuotaError::NewerFormat {
                    path: path.to_owned(),
                    version,
                    known: FORMAT_VERSION,
                });
            }
            let file: QuotaFile = serde_json::from_slice(&bytes).map_err(corrupt)?;
            if file.version != FORMAT_VERSION {
                return Err(QuotaError::Corrupt {
                    path: path.to_owned(),
                    source: serde::de::Error::custom(format!(
                        "unsupported format version {}",
                        file.version
                    )),
                });
            }
            file.counters
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
        Err(source) => {
            return Err(QuotaError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    Ok((counters, snapshot_bytes))
}

/// Whether [`replay_journal`] cuts off a last line without its newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repair {
    CutShortLine,
    Nothing,
}

/// Applies the journal's lines to `counters`; returns the journal's length. A last
/// line without its newline (a write cut short by a crash) is cut off, so that
/// lines appended later start on a line of their own; any other bad line is
/// corruption.
fn replay_journal(
    path: &Path,
    counters: &mut HashMap<String, Counter>,
    repair: Repair,
) -> Result<u64, QuotaError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(QuotaError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for line in bytes[..complete].split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let line: JournalLine<'_> =
            serde_json::from_slice(line).map_err(|source| QuotaError::Corrupt {
                path: path.to_owned(),
                source,
            })?;
        counters.insert(line.key.into_owned(), line.counter);
    }
    if complete < bytes.len() && repair == Repair::CutShortLine {
        let cut = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|file| {
                file.set_len(complete as u64)?;
                file.sync_data()
            });
        cut.map_err(|source| QuotaError::Write {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(complete as u64)
}

/// Appends `bytes` to the file at `path` (created 0600) and makes them durable.
fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_data()
}

/// Empties the file at `path`, if there is one, durably.
fn truncate(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(file) => {
            file.set_len(0)?;
            file.sync_data()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The table is full: drop ended windows; if that frees less than an eighth, drop the
/// least-used counters down to seven eighths (amortised O(1) per insert).
fn make_room(counters: &mut HashMap<String, Counter>, max_keys: usize, now: u64) {
    counters.retain(|_, c| c.window_end > now);
    let target = max_keys - max_keys / 8;
    if counters.len() <= target && counters.len() < max_keys {
        return;
    }
    let excess = counters.len() - target.min(counters.len().saturating_sub(1));
    let mut used: Vec<u64> = counters.values().map(|c| c.calls).collect();
    let (_, threshold, _) = used.select_nth_unstable(excess - 1);
    let threshold = *threshold;
    let mut left = excess;
    counters.retain(|_, c| {
        if left > 0 && c.calls <= threshold {
            left -= 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests;
