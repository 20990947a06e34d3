//! HTTP/1 requests that frame their body twice, with both `Content-Length` and
//! `Transfer-Encoding`: the shape of request smuggling. rampart answers them 400.
//!
//! hyper frames such a request by `Transfer-Encoding`, removes `Content-Length` before
//! the request reaches the service, and closes the connection after the answer
//! (RFC 9112 §6.3 allows that), so the service cannot see that the header was there.
//! [`FramingIo`] therefore reads the connection's bytes as hyper does, with httparse
//! (hyper's parser): it follows each request's framing (the head, then a
//! `Content-Length` or chunked body) and notes the number of the first request that
//! carried both headers. The service counts the requests hyper hands it and asks
//! [`Framing::next_is_ambiguous`] about each; hyper hands them over in order, one per
//! head. Once the bytes are not HTTP/1 as hyper reads them (HTTP/2, a `CONNECT`, a head
//! hyper will refuse), the reader stops: hyper's own handling applies from there,
//! which is never worse than answering the request (hyper closes the connection).

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::watched::{Watch, Watched};

/// hyper's default limit of header fields per request; a head with more is refused
/// by hyper, so the reader stops there too.
const MAX_HEADERS: usize = 100;

/// Longest chunk-size line (with extensions) the reader keeps while it spans reads.
const MAX_CHUNK_LINE: usize = 4096;

/// Marks (as a request extension) the request that had both `Content-Length` and
/// `Transfer-Encoding`; the handler answers it 400.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BothLengths;

/// What the reader of a connection tells its service.
#[derive(Debug, Default)]
pub(crate) struct Framing {
    /// Requests handed to the service so far.
    served: AtomicU64,
    /// The number (from 1) of the first request with both headers; 0 when none.
    ambiguous: AtomicU64,
}

impl Framing {
    /// Counts one more request handed to the service: whether it is the one with
    /// both `Content-Length` and `Transfer-Encoding`.
    pub(crate) fn next_is_ambiguous(&self) -> bool {
        let number = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        number == self.ambiguous.load(Ordering::Relaxed)
    }
}

/// A connection's read side, followed request by request.
pub(crate) type FramingIo<S> = Watched<S, Follower>;

/// Follows a connection's requests and tells its [`Framing`].
pub(crate) struct Follower {
    framing: Arc<Framing>,
    reader: Reader,
}

impl Follower {
    /// `http1`: whether the connection speaks HTTP/1 (false after ALPN chose h2).
    /// `max_head`: the longest head hyper accepts.
    pub(crate) fn new(framing: Arc<Framing>, http1: bool, max_head: usize) -> Self {
        let mut reader = Reader::new(max_head);
        if !http1 {
            reader.state = State::Off;
        }
        Self { framing, reader }
    }
}

impl Watch for Follower {
    fn read(&mut self, bytes: &[u8]) {
        if let Some(number) = self.reader.feed(bytes) {
            // Only the first counts: hyper closes the connection after it.
            let _ = self.framing.ambiguous.compare_exchange(
                0,
                number,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A request head (its start in `partial` when it spans reads).
    Head,
    /// This many bytes of a `Content-Length` body left.
    Body(u64),
    /// A chunk-size line (its start in `partial` when it spans reads).
    ChunkSize,
    /// This many bytes of chunk data left, then the chunk's CRLF.
    ChunkData(u64),
    /// This many bytes of a chunk's closing CRLF left.
    ChunkEnd(u8),
    /// The trailer section after the last chunk, up to its empty line; `line`:
    /// bytes of the current line so far, CR not counted.
    Trailers { line: usize },
    /// Nothing more to follow on this connection.
    Off,
}

/// The pure part: request framing over a byte stream.
#[derive(Debug)]
struct Reader {
    state: State,
    /// The start of a head or a chunk-size line that spans reads.
    partial: Vec<u8>,
    /// Request heads read so far.
    heads: u64,
    max_head: usize,
}

/// A request head or a chunk-size line, parsed.
enum Parsed {
    /// Its length in bytes, the state after it, and whether it was a request head
    /// with both `Content-Length` and `Transfer-Encoding`.
    Complete {
        len: usize,
        next: State,
        ambiguous: bool,
    },
    /// Not yet complete.
    Partial,
    /// Not HTTP/1 as hyper reads it, refused by hyper, or a `CONNECT`.
    Stop,
}

impl Reader {
    fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            partial: Vec::new(),
            heads: 0,
            max_head,
        }
    }

    /// Follows the next bytes of the connection; returns the number of a request
    /// with both `Content-Length` and `Transfer-Encoding` whose head ended in them.
    fn feed(&mut self, mut bytes: &[u8]) -> Option<u64> {
        let mut ambiguous = None;
        while !bytes.is_empty() {
            match self.state {
                State::Off => return ambiguous,
                State::Head | State::ChunkSize => {
                    // The common case: the whole head or line in this read, parsed
                    // where it lies. Otherwise it is gathered in `partial`.
                    let already = self.partial.len();
                    let input = if already == 0 {
                        bytes
                    } else {
                        self.partial.extend_from_slice(bytes);
                        &self.partial[..]
                    };
                    let parsed = if self.state == State::Head {
                        head(input)
                    } else {
                        chunk_size(input)
                    };
                    match parsed {
                        Parsed::Complete {
                            len,
                            next,
                            ambiguous: both,
                        } => {
                            if self.state == State::Head {
                                self.heads += 1;
                                if both {
                                    ambiguous.get_or_insert(self.heads);
                                }
                            }
                            self.state = next;
                            self.partial.clear();
                            bytes = &bytes[len - already..];
                        }
                        Parsed::Partial => {
                            if already == 0 {
                                self.partial.extend_from_slice(bytes);
                            }
                            let limit = if self.state == State::Head {
                                self.max_head
                            } else {
                                MAX_CHUNK_LINE
                            };
                            if self.partial.len() > limit {
                                self.stop();
                            }
                            return ambiguous;
                        }
                        Parsed::Stop => {
                            self.stop();
                            return ambiguous;
                        }
                    }
                }
                State::Body(left) | State::ChunkData(left) => {
                    let take = left.min(bytes.len() as u64);
                    bytes = &bytes[usize::try_from(take).unwrap_or(bytes.len())..];
                    let left = left - take;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), left) => State::Body(left),
                        (_, 0) => State::ChunkEnd(2),
                        (_, left) => State::ChunkData(left),
                    };
                }
                State::ChunkEnd(left) => {
                    let take = usize::from(left).min(bytes.len());
                    bytes = &bytes[take..];
                    // `take` is at most 2.
                    let left = left - take as u8;
                    self.state = if left == 0 {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(left)
                    };
                }
                State::Trailers { mut line } => {
                    let mut used = bytes.len();
                    let mut done = false;
                    for (at, &byte) in bytes.iter().enumerate() {
                        match byte {
                            b'\n' if line == 0 => {
                                used = at + 1;
                                done = true;
                                break;
                            }
                            b'\n' => line = 0,
                            b'\r' => {}
                            _ => line += 1,
                        }
                    }
                    bytes = &bytes[used..];
                    self.state = if done {
                        State::Head
                    } else {
                        State::Trailers { line }
                    };
                }
            }
        }
        ambiguous
    }

    fn stop(&mut self) {
        self.state = State::Off;
        self.partial = Vec::new();
    }
}

/// Parses a request head.
fn head(input: &[u8]) -> Parsed {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(input, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Stop,
    };
    if request.method == Some("CONNECT") {
        return Parsed::Stop;
    }
    let mut chunked = false;
    let mut lengths = request
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("content-length"))
        .peekable();
    let has_length = lengths.peek().is_some();
    for header in request.headers.iter() {
        chunked |= header.name.eq_ignore_ascii_case("transfer-encoding");
    }
    // hyper frames by Transfer-Encoding when both are there, whatever the lengths say.
    let next = if chunked {
        State::ChunkSize
    } else {
        let mut length = None;
        for header in lengths {
            match parse_length(header.value) {
                Some(value) if length.is_none_or(|first| first == value) => length = Some(value),
                // hyper refuses an unreadable or a second, different length.
                _ => return Parsed::Stop,
            }
        }
        match length {
            Some(0) | None => State::Head,
            Some(len) => State::Body(len),
        }
    };
    Parsed::Complete {
        len,
        next,
        ambiguous: chunked && has_length,
    }
}

/// Parses a chunk-size line (with its extensions and CRLF).
fn chunk_size(input: &[u8]) -> Parsed {
    match httparse::parse_chunk_size(input) {
        Ok(httparse::Status::Complete((len, size))) => Parsed::Complete {
            len,
            next: if size == 0 {
                State::Trailers { line: 0 }
            } else {
                State::ChunkData(size)
            },
            ambiguous: false,
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Stop,
    }
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMUGGLE: &[u8] =
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    /// Feeds `stream` whole, then split at every position, then a byte at a time:
    /// the numbers of the ambiguous requests must not depend on how reads cut it.
    fn ambiguous_in(stream: &[u8]) -> Vec<u64> {
        let whole = feed(stream, &[stream.len()]);
        for cut in 1..stream.len() {
            assert_eq!(
                feed(stream, &[cut, stream.len() - cut]),
                whole,
                "cut at {cut}"
            );
        }
        assert_eq!(feed(stream, &vec![1; stream.len()]), whole, "byte by byte");
        whole
    }

    fn feed(stream: &[u8], reads: &[usize]) -> Vec<u64> {
        let mut reader = Reader::new(64 * 1024);
        let mut found = Vec::new();
        let mut at = 0;
        for &n in reads {
            found.extend(reader.feed(&stream[at..at + n]));
            at += n;
        }
        found
    }

    #[test]
    fn a_request_with_both_lengths_is_found_by_its_number_after_any_bodies() {
        let mut stream = Vec::new();
        // 1: no body.
        stream.extend_from_slice(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        // 2: a Content-Length body that looks like a smuggling head.
        stream.extend_from_slice(
            format!(
                "POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                SMUGGLE.len()
            )
            .as_bytes(),
        );
        stream.extend_from_slice(SMUGGLE);
        // 3: chunked, with an extension, data that looks like a head, and trailers.
        stream.extend_from_slice(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        stream.extend_from_slice(format!("{:x};ext=1\r\n", SMUGGLE.len()).as_bytes());
        stream.extend_from_slice(SMUGGLE);
        stream.extend_from_slice(b"\r\n3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n");
        // 4: leading empty lines are skipped, like hyper does; a zero length.
        stream.extend_from_slice(b"\r\nGET /b HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        // 5: both.
        stream.extend_from_slice(SMUGGLE);
        assert_eq!(ambiguous_in(&stream), [5]);
    }

    #[test]
    fn both_headers_are_found_in_any_order_case_and_with_any_lengths() {
        for head in [
            &b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nCONTENT-LENGTH: 3\r\nTRANSFER-ENCODING: gzip, chunked\r\n\r\n0\r\n\r\n",
            // Lengths hyper ignores once Transfer-Encoding came first.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nContent-Length: x\r\n\r\n0\r\n\r\n",
        ] {
            assert_eq!(ambiguous_in(head), [1], "{}", String::from_utf8_lossy(head));
        }
        assert!(ambiguous_in(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").is_empty());
        assert!(
            ambiguous_in(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                .is_empty()
        );
        // A header value that merely mentions the names.
        assert!(
            ambiguous_in(b"GET / HTTP/1.1\r\nX-A: Content-Length: 1\r\nX-B: Transfer-Encoding: chunked\r\n\r\n")
                .is_empty()
        );
    }

    #[test]
    fn the_reader_stops_where_hyper_would_not_read_http1() {
        // HTTP/2's preface, then bytes that would look like a smuggling head.
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        h2.extend_from_slice(SMUGGLE);
        assert!(ambiguous_in(&h2).is_empty());
        let mut connect = b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n".to_vec();
        connect.extend_from_slice(SMUGGLE);
        assert!(ambiguous_in(&connect).is_empty());
        // Two different lengths: hyper answers 400 itself.
        let mut lengths =
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec();
        lengths.extend_from_slice(SMUGGLE);
        assert!(ambiguous_in(&lengths).is_empty());
        // A bad chunk size.
        let mut chunk = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
        chunk.extend_from_slice(SMUGGLE);
        assert!(ambiguous_in(&chunk).is_empty());
        // A head longer than hyper takes.
        let mut reader = Reader::new(100);
        assert_eq!(reader.feed(&[b'G'; 101]), None);
        assert_eq!(reader.state, State::Off);
        assert!(reader.partial.capacity() == 0);
    }

    #[test]
    fn an_http2_connection_is_not_read() {
        let framing = Arc::new(Framing::default());
        let mut follower = Follower::new(Arc::clone(&framing), false, 1024);
        follower.read(SMUGGLE);
        assert!(!framing.next_is_ambiguous());
    }

    #[test]
    fn the_service_learns_which_request_it_is() {
        let framing = Framing::default();
        framing.ambiguous.store(2, Ordering::Relaxed);
        assert!(!framing.next_is_ambiguous());
        assert!(framing.next_is_ambiguous());
        assert!(!framing.next_is_ambiguous());
        let none = Framing::default();
        assert!((0..5).all(|_| !none.next_is_ambiguous()));
    }
}
