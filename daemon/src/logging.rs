//! rampartd's log output: tracing events, one line each, to stderr.
//!
//! Lines are formatted on the thread that logs and written by a dedicated thread
//! through a buffer, so a busy gateway writes its access events in batches (one
//! `write` per batch instead of one per request) and never waits on a slow stderr
//! reader while the channel has room. Nothing is dropped: when the channel is full
//! the logging thread waits. The timestamp (UTC, microseconds) reuses its formatted
//! date and time within the same second.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{BufWriter, IsTerminal};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_appender::non_blocking::NonBlockingBuilder;
pub use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Lines waiting for the writer thread at most.
const QUEUED_LINES: usize = 64 * 1024;

/// Installs the global subscriber at `default_level` (`RUST_LOG` overrides it).
/// Keep the guard until exit: dropping it writes what is still queued.
pub fn init(default_level: &str) -> WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("rampartd-log")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(CachedUtc)
        .with_writer(writer)
        .init();
    guard
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

#[cfg(test)]
mod tests {
    use super::*;

    fn datetime(secs: u64) -> String {
        let mut s = String::new();
        write_datetime(&mut s, secs).unwrap();
        s
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
