//! rampartd's log output: tracing events to the journal, or one line each to stderr.
//!
//! `[daemon] log_target` picks the output ([`LogTarget`]). In the journal every
//! tracing field becomes a journal field of the same name in capitals (no prefix):
//! `rampart_event` is `RAMPART_EVENT`, `src_ip` is `SRC_IP`, so an operator filters
//! with `journalctl RAMPART_EVENT=auth_failed`. The identifier is `rampartd`, and
//! tracing levels map to syslog priorities as tracing-journald does: ERROR 3 (err),
//! WARN 4 (warning), INFO 5 (notice), DEBUG 6 (info), TRACE 7 (debug).
//!
//! Neither output makes the thread that logs wait for the reader: events are
//! formatted on that thread and written by a dedicated one through a bounded queue.
//! When a reader stops taking them (a paused journald, a stuck pipe) and the queue
//! is full, events are dropped and counted ([`dropped`], exported as
//! `rampart_log_entries_dropped_total`), and a warning with the number follows once
//! output moves again (`RAMPART_EVENT=log_dropped`). A gateway that waited instead
//! would stop answering: journald's socket queues about ten entries.
//!
//! The journal: [`journal`]. On stderr, lines go through tracing-appender's
//! non-blocking writer and a buffer, so a busy gateway writes its access events in
//! batches (one `write` per batch instead of one per request). The timestamp (UTC,
//! microseconds) reuses its formatted date and time within the same second.

mod journal;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{BufWriter, IsTerminal};
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use crate::config::LogTarget;

/// Lines waiting for the writer thread at most.
const QUEUED_LINES: usize = 64 * 1024;

/// The stderr writer's count of lines it dropped, once stderr is the output.
static STDERR_DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log events dropped since start because the output did not take them as fast
/// as rampartd wrote them (its queue was full).
pub fn dropped() -> u64 {
    journal::DROPPED.load(Ordering::Relaxed)
        + STDERR_DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// `SYSLOG_IDENTIFIER` of rampartd's journal entries (`journalctl -t rampartd`).
pub const SYSLOG_IDENTIFIER: &str = "rampartd";

/// Where the events go once [`init`] has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Journald,
    Stderr,
}

/// Keeps the log output working; hold it until exit. Dropping it writes what is
/// still queued for stderr.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    output: Output,
    _stderr: Option<WorkerGuard>,
    _journal: Option<journal::JournalGuard>,
}

impl LogGuard {
    /// Where the events go.
    pub fn output(&self) -> Output {
        self.output
    }
}

/// Installs the global subscriber at `default_level` (`RUST_LOG` overrides it),
/// writing to the output `target` selects (see [`LogTarget`]). When the journal
/// was asked for but its socket cannot be used, events go to stderr and the first
/// one says why.
pub fn init(default_level: &str, target: LogTarget) -> LogGuard {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level))
    };
    let want_journal = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    let mut unavailable = None;
    if want_journal {
        match journal::layer(SYSLOG_IDENTIFIER) {
            Ok((layer, guard)) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return LogGuard {
                    output: Output::Journald,
                    _stderr: None,
                    _journal: Some(guard),
                };
            }
            Err(error) => unavailable = Some(error),
        }
    }
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("rampartd-log")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let counter = writer.error_counter();
    let _ = STDERR_DROPPED.set(counter.clone());
    watch_stderr_drops(counter);
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(ansi)
        .with_timer(CachedUtc)
        .with_writer(Escaping {
            inner: writer,
            ansi,
        })
        .init();
    if let Some(error) = unavailable {
        tracing::warn!(
            %error,
            socket = JOURNAL_SOCKET,
            "log_target = \"journald\" but the journal cannot be used; logging to stderr"
        );
    }
    LogGuard {
        output: Output::Stderr,
        _stderr: Some(guard),
        _journal: None,
    }
}

/// A thread that, once a second, warns of the stderr lines dropped since its last
/// look (the warning goes through the same queue: while it is still full, that is
/// dropped and counted too, and the next look reports it).
fn watch_stderr_drops(counter: ErrorCounter) {
    let watch = move || {
        let mut reported = 0;
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let total = counter.dropped_lines();
            if total != reported {
                tracing::warn!(
                    rampart_event = "log_dropped",
                    dropped = total - reported,
                    dropped_total = total,
                    "{} log lines dropped: stderr did not take them as fast as rampartd wrote them \
                     (queue of {QUEUED_LINES} full)",
                    total - reported
                );
                reported = total;
            }
        }
    };
    // Without the thread, drops are still counted in /metrics.
    let _ = std::thread::Builder::new()
        .name("rampartd-logwatch".into())
        .spawn(watch);
}

/// The socket journald receives structured entries on.
pub(crate) const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Whether fd 2 is the journal stream systemd connected it to: systemd sets
/// `JOURNAL_STREAM=<device>:<inode>` of that stream, and the variable is only
/// believed when fd 2 still is that file (sd_journal_stream_fd(3), systemd.exec(5)),
/// so a child whose stderr was redirected keeps logging to its stderr.
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(stat) => stream_is(&stream, stat.st_dev, stat.st_ino),
        Err(_) => false,
    }
}

/// Whether `JOURNAL_STREAM`'s `<device>:<inode>` (decimal) names `dev` and `ino`.
fn stream_is(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().is_ok_and(|d| d == dev) && i.parse::<u64>().is_ok_and(|i| i == ino)
}

/// `2026-11-29T21:51:00.123456Z`, the date and time part formatted once per second.
#[derive(Debug, Clone, Copy, Default)]
pub struct CachedUtc;

thread_local! {
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for CachedUtc {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        SECOND.with(|cell| {
            let mut cached = cell.borrow_mut();
            if cached.0 != secs {
                cached.1.clear();
                write_datetime(&mut cached.1, secs)?;
                cached.0 = secs;
            }
            write!(w, "{}.{:06}Z", cached.1, now.subsec_micros())
        })
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of Unix seconds (proleptic Gregorian, UTC).
pub fn write_datetime(out: &mut String, unix_secs: u64) -> std::fmt::Result {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days` for days since 1970-01-01 (non-negative).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Stderr's writer: each event is one line. A value that holds a line break or
/// another control character (a client's bytes, such as a token's header quoted in
/// a refusal's detail) is written escaped (`\n`, `\r`, `\x1b`), so that no client
/// can start a line of its own that reads as rampartd's (CWE-117) or send escape
/// sequences to a terminal. The formatter writes each event with one `write_all`
/// (tracing-subscriber's `fmt` layer), ending in its one line break; on a terminal
/// (`ansi`) the formatter's own colour sequences are kept.
struct Escaping<W> {
    inner: W,
    ansi: bool,
}

impl<'a, W: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for Escaping<W>
{
    type Writer = EscapingWriter<W::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter {
            inner: self.inner.make_writer(),
            ansi: self.ansi,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        EscapingWriter {
            inner: self.inner.make_writer_for(meta),
            ansi: self.ansi,
        }
    }
}

struct EscapingWriter<W> {
    inner: W,
    ansi: bool,
}

impl<W: std::io::Write> std::io::Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = buf.strip_suffix(b"\n").unwrap_or(buf);
        let escaped = |b: u8| (b < 0x20 && b != b'\t' && !(self.ansi && b == 0x1b)) || b == 0x7f;
        if !line.iter().any(|&b| escaped(b)) {
            self.inner.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 32);
        for &b in line {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b if escaped(b) => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                b => out.push(b),
            }
        }
        out.extend_from_slice(&buf[line.len()..]);
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datetime(secs: u64) -> String {
        let mut s = String::new();
        write_datetime(&mut s, secs).unwrap();
        s
    }

    fn escaped(event: &[u8], ansi: bool) -> Vec<u8> {
        use std::io::Write as _;
        let mut writer = EscapingWriter {
            inner: Vec::new(),
            ansi,
        };
        writer.write_all(event).unwrap();
        writer.inner
    }

    #[test]
    fn each_event_is_one_line_whatever_its_values_hold() {
        let plain = b"2026-11-30T22:31:00Z  INFO rampart::access: path=\"/x\" status=200\n";
        assert_eq!(escaped(plain, false), plain);
        let forged = b"INFO rampart::pipeline: JWT refused detail=variant `x\n2026 INFO rampart::access: status=200\r\x1b[2J\x7f`\n";
        assert_eq!(
            String::from_utf8(escaped(forged, false)).unwrap(),
            "INFO rampart::pipeline: JWT refused detail=variant `x\\n2026 INFO rampart::access: status=200\\r\\x1b[2J\\x7f`\n"
        );
        // On a terminal the formatter's colours stay; tabs stay either way.
        let coloured = b"\x1b[32m INFO\x1b[0m a\tb\n";
        assert_eq!(escaped(coloured, true), coloured);
        assert_eq!(escaped(b"a\tb\n", false), b"a\tb\n");
    }

    #[test]
    fn journal_stream_must_name_the_stderr_file() {
        assert!(stream_is("64769:1234", 64769, 1234));
        assert!(stream_is("64769:1234\n", 64769, 1234));
        assert!(!stream_is("64769:1235", 64769, 1234));
        assert!(!stream_is("64768:1234", 64769, 1234));
        assert!(!stream_is("", 64769, 1234));
        assert!(!stream_is("64769", 64769, 1234));
        assert!(!stream_is("x:1234", 64769, 1234));
    }

    #[test]
    fn dates_match_known_instants() {
        assert_eq!(datetime(0), "1970-01-01T00:00:00");
        assert_eq!(datetime(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(datetime(1_709_251_199), "2024-02-29T23:59:59");
        assert_eq!(datetime(1_798_552_260), "2026-12-29T13:51:00");
        assert_eq!(datetime(4_102_444_800), "2100-01-01T00:00:00");
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_previous() {
        // Walking day by day from 1970 to 2370, the date always advances by one
        // calendar day (month lengths and leap years included).
        let mut last = civil_from_days(0);
        for day in 1..146_097 {
            let (y, m, d) = civil_from_days(day);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let (ly, lm, ld) = last;
            let month_len = match lm {
                2 if (ly % 4 == 0 && ly % 100 != 0) || ly % 400 == 0 => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let expected = if ld < month_len {
                (ly, lm, ld + 1)
            } else if lm < 12 {
                (ly, lm + 1, 1)
            } else {
                (ly + 1, 1, 1)
            };
            assert_eq!((y, m, d), expected, "day {day} (leap {leap})");
            last = (y, m, d);
        }
    }
}
