//! The journal output, which never makes the thread that logs wait.
//!
//! tracing-journald sends each entry from the thread that logs it, on a blocking
//! socket. journald's native socket queues only `net.unix.max_dgram_qlen` datagrams
//! (10 by default), so a journald that pauses (stopped, busy flushing or rotating)
//! stopped the gateway's worker after about ten requests with `access_log = "all"`.
//!
//! Here an event is formatted on the thread that logs it, in journald's native
//! protocol with the fields tracing-journald writes (`PRIORITY`, `TARGET`,
//! `CODE_FILE`, `CODE_LINE`, `SYSLOG_IDENTIFIER`, then each field in capitals, no
//! prefix; rampartd opens no spans, so span fields are not carried), and handed to
//! a writer thread through a queue of [`QUEUED_ENTRIES`]. The writer sends them on
//! a blocking socket, one datagram each (a sealed memfd for an entry too large for
//! a datagram, as journald documents). When the queue is full the entry is dropped
//! and counted ([`super::dropped`], `rampart_log_entries_dropped_total`); once the
//! journal takes entries again, the writer sends a warning with the number
//! dropped (`RAMPART_EVENT=log_dropped`, `DROPPED`, `DROPPED_TOTAL`).

use std::fmt;
use std::io::{self, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

use super::JOURNAL_SOCKET;

/// Entries dropped because the journal did not take them in time (or had gone).
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Entries waiting for the writer thread at most: about 400 ms of access events
/// at 20,000 requests a second (a few MiB), enough to ride out journald's flushes.
pub const QUEUED_ENTRIES: usize = 8 * 1024;

/// How long dropping the guard waits for the queue to reach the journal.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Message {
    Entry(Vec<u8>),
    /// Answered once everything queued before it was sent.
    Flush(Sender<()>),
}

/// The tracing layer: formats and queues.
pub struct JournalLayer {
    queue: Sender<Message>,
    identifier: String,
}

/// Dropped at exit: waits (at most [`FLUSH_WAIT`]) until the writer sent what is
/// queued.
pub struct JournalGuard {
    queue: Sender<Message>,
}

/// The layer and its guard, or why the journal cannot be used (no journald
/// answers on its socket).
pub fn layer(identifier: &str) -> io::Result<(JournalLayer, JournalGuard)> {
    let socket = UnixDatagram::unbound()?;
    // An empty datagram: refused when no journald listens (as tracing-journald
    // checks), ignored by journald otherwise.
    socket.send_to(&[], JOURNAL_SOCKET)?;
    let (queue, entries) = crossbeam_channel::bounded(QUEUED_ENTRIES);
    let writer = Writer {
        socket,
        identifier: identifier.to_owned(),
        reported: 0,
    };
    // The writer lives as long as the process: the layer, in the global
    // subscriber, keeps its sender.
    std::thread::Builder::new()
        .name("rampartd-journal".into())
        .spawn(move || writer.run(&entries))?;
    Ok((
        JournalLayer {
            queue: queue.clone(),
            identifier: identifier.to_owned(),
        },
        JournalGuard { queue },
    ))
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut buf = Vec::with_capacity(512);
        let meta = event.metadata();
        put_header(
            &mut buf,
            *meta.level(),
            meta.target(),
            meta.file().zip(meta.line()),
            &self.identifier,
        );
        event.record(&mut Fields(&mut buf));
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(Message::Entry(buf))
        {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for JournalGuard {
    fn drop(&mut self) {
        let deadline = Instant::now() + FLUSH_WAIT;
        let (done, flushed) = crossbeam_channel::bounded(1);
        if self
            .queue
            .send_deadline(Message::Flush(done), deadline)
            .is_ok()
        {
            let _ = flushed.recv_deadline(deadline);
        }
    }
}

struct Writer {
    socket: UnixDatagram,
    identifier: String,
    /// [`DROPPED`] when the last warning about it was sent.
    reported: u64,
}

impl Writer {
    fn run(mut self, entries: &Receiver<Message>) {
        while let Ok(message) = entries.recv() {
            match message {
                Message::Entry(entry) => {
                    if send(&self.socket, &entry).is_ok() {
                        self.report_drops();
                    } else {
                        // journald went away: this entry is lost too.
                        DROPPED.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Message::Flush(done) => {
                    self.report_drops();
                    let _ = done.send(());
                }
            }
        }
    }

    /// After an entry reached the journal: a warning with the entries dropped
    /// since the last one, if any were.
    fn report_drops(&mut self) {
        let total = DROPPED.load(Ordering::Relaxed);
        if total == self.reported {
            return;
        }
        let dropped = total - self.reported;
        let mut buf = Vec::with_capacity(512);
        put_header(
            &mut buf,
            Level::WARN,
            module_path!(),
            Some((file!(), line!())),
            &self.identifier,
        );
        put_text(&mut buf, "RAMPART_EVENT", "log_dropped");
        put_text(&mut buf, "DROPPED", dropped);
        put_text(&mut buf, "DROPPED_TOTAL", total);
        put_text(
            &mut buf,
            "MESSAGE",
            format_args!(
                "{dropped} log entries dropped: the journal did not take them as fast as \
                 rampartd wrote them (queue of {QUEUED_ENTRIES} full)"
            ),
        );
        if send(&self.socket, &buf).is_ok() {
            self.reported = total;
        }
    }
}

/// One entry to the journal: a datagram, or a sealed memfd passed over the socket
/// when it is too large for one (the native protocol's way).
fn send(socket: &UnixDatagram, entry: &[u8]) -> io::Result<()> {
    loop {
        match socket.send_to(entry, JOURNAL_SOCKET) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                return send_memfd(socket, entry);
            }
            Err(e) => return Err(e),
        }
    }
}

fn send_memfd(socket: &UnixDatagram, entry: &[u8]) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};

    let fd = memfd_create(
        "rampartd-journal-entry",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(entry)?;
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    let fds = [file.as_raw_fd()];
    let address = UnixAddr::new(JOURNAL_SOCKET)?;
    sendmsg(
        socket.as_raw_fd(),
        &[],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        Some(&address),
    )?;
    Ok(())
}

/// `PRIORITY`, `TARGET`, `CODE_FILE`, `CODE_LINE` and `SYSLOG_IDENTIFIER`, with
/// tracing-journald's level mapping (ERROR 3 ... TRACE 7).
fn put_header(
    buf: &mut Vec<u8>,
    level: Level,
    target: &str,
    code: Option<(&str, u32)>,
    identifier: &str,
) {
    let priority = match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 5,
        Level::DEBUG => 6,
        Level::TRACE => 7,
    };
    put_text(buf, "PRIORITY", priority);
    put_text(buf, "TARGET", target);
    if let Some((file, line)) = code {
        put_text(buf, "CODE_FILE", file);
        put_text(buf, "CODE_LINE", line);
    }
    put_text(buf, "SYSLOG_IDENTIFIER", identifier);
}

/// A field whose value is `value` displayed.
fn put_text(buf: &mut Vec<u8>, name: &str, value: impl fmt::Display) {
    put_field(buf, name, |b| {
        let _ = write!(b, "{value}");
    });
}

/// The event's fields, each as a journal field ([`put_field`]).
struct Fields<'a>(&'a mut Vec<u8>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        put_text(self.0, field.name(), value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        put_text(self.0, field.name(), format_args!("{value:?}"));
    }
}

/// A field in the native protocol's binary-safe form (name, newline, value
/// length as 64-bit little endian, value, newline). The name as tracing-journald
/// makes it: dots become underscores, leading underscores (reserved for
/// journald's trusted fields) are dropped, other characters than letters, digits
/// and underscores are left out, letters are capitals.
fn put_field(buf: &mut Vec<u8>, name: &str, value: impl FnOnce(&mut Vec<u8>)) {
    buf.extend(
        name.bytes()
            .map(|c| if c == b'.' { b'_' } else { c })
            .skip_while(|&c| c == b'_')
            .filter(|&c| c == b'_' || c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase()),
    );
    buf.push(b'\n');
    buf.extend_from_slice(&[0; 8]);
    let start = buf.len();
    value(buf);
    let length = (buf.len() - start) as u64;
    buf[start - 8..start].copy_from_slice(&length.to_le_bytes());
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of an entry in the native protocol, as (name, value).
    fn parse(mut entry: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while !entry.is_empty() {
            let newline = entry.iter().position(|&c| c == b'\n').unwrap_or(0);
            let name = String::from_utf8_lossy(&entry[..newline]).into_owned();
            let mut length = [0u8; 8];
            length.copy_from_slice(&entry[newline + 1..newline + 9]);
            let length = u64::from_le_bytes(length) as usize;
            let value = &entry[newline + 9..newline + 9 + length];
            assert_eq!(entry[newline + 9 + length], b'\n');
            fields.push((name, String::from_utf8_lossy(value).into_owned()));
            entry = &entry[newline + 10 + length..];
        }
        fields
    }

    #[test]
    fn field_names_as_tracing_journald_makes_them() {
        let mut buf = Vec::new();
        put_field(&mut buf, "rampart_event", |b| b.extend_from_slice(b"x"));
        put_field(&mut buf, "_pid", |b| b.extend_from_slice(b"forged"));
        put_field(&mut buf, "log.target", |b| b.extend_from_slice(b"a\nb"));
        put_field(&mut buf, "src-ip", |b| b.extend_from_slice(b""));
        assert_eq!(
            parse(&buf),
            [
                ("RAMPART_EVENT".into(), "x".into()),
                ("PID".into(), "forged".into()),
                ("LOG_TARGET".into(), "a\nb".into()),
                ("SRCIP".into(), String::new()),
            ]
        );
    }

    /// Events through the layer (its queue read here, no journald): the header
    /// fields, the level mapping, the event's fields; a full queue drops and
    /// counts.
    #[test]
    fn events_become_entries_and_a_full_queue_drops() {
        use tracing_subscriber::layer::SubscriberExt as _;

        let (queue, entries) = crossbeam_channel::bounded(5);
        let layer = JournalLayer {
            queue,
            identifier: "rampartd".into(),
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        let before = DROPPED.load(Ordering::Relaxed);
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "rampart::t", "e");
            tracing::warn!(target: "rampart::t", rampart_event = "auth_failed", "w");
            tracing::info!(target: "rampart::access", status = 200u16, path = "/a b", "i");
            tracing::debug!(target: "rampart::t", "d");
            tracing::trace!(target: "rampart::t", "t");
            // The queue holds 5: these two are dropped and counted.
            tracing::info!(target: "rampart::t", "over");
            tracing::info!(target: "rampart::t", "over");
        });
        // Other tests may drop entries at the same time; at least these two.
        assert!(DROPPED.load(Ordering::Relaxed) - before >= 2);
        let got: Vec<Vec<(String, String)>> = entries
            .try_iter()
            .map(|m| match m {
                Message::Entry(e) => parse(&e),
                Message::Flush(_) => panic!("no flush was asked for"),
            })
            .collect();
        assert_eq!(got.len(), 5);
        let value = |entry: &[(String, String)], name: &str| {
            entry
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let priorities: Vec<String> = got.iter().map(|e| value(e, "PRIORITY")).collect();
        assert_eq!(priorities, ["3", "4", "5", "6", "7"]);
        let names: Vec<&str> = got[2].iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "PRIORITY",
                "TARGET",
                "CODE_FILE",
                "CODE_LINE",
                "SYSLOG_IDENTIFIER",
                "MESSAGE",
                "STATUS",
                "PATH"
            ]
        );
        assert_eq!(value(&got[2], "TARGET"), "rampart::access");
        assert_eq!(value(&got[2], "SYSLOG_IDENTIFIER"), "rampartd");
        assert_eq!(value(&got[2], "STATUS"), "200");
        assert_eq!(value(&got[2], "PATH"), "/a b");
        assert_eq!(value(&got[2], "MESSAGE"), "i");
        assert!(value(&got[2], "CODE_FILE").ends_with("journal.rs"));
        assert_eq!(value(&got[1], "RAMPART_EVENT"), "auth_failed");
    }
}
