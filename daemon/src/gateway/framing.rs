//! HTTP/1 request heads that hyper would take wrongly, or refuse without the gateway's
//! JSON answer.
//!
//! - A request with both `Content-Length` and `Transfer-Encoding` (the shape of request
//!   smuggling): hyper frames it by `Transfer-Encoding`, removes `Content-Length` before
//!   the request reaches the service, and closes the connection after the answer (RFC
//!   9112 §6.3 allows that), so the service cannot see that the header was there.
//!   rampart answers it 400.
//! - A head hyper refuses (not HTTP/1 syntax, a bad or a second different
//!   `Content-Length`, a `Transfer-Encoding` that does not end in `chunked` (RFC 9112
//!   §6.3: the body's length cannot be known; nginx answers 501 there too), a request
//!   target over 65,534 bytes, more than 100 fields, a head over hyper's buffer): hyper
//!   answers 400, 414 or 431 itself, with an empty body. rampart answers the same status
//!   with its JSON body.
//! - A `Transfer-Encoding` that ends in `chunked` but is not `chunked` alone (`gzip,
//!   chunked`, or `gzip` and `chunked` on two lines): hyper takes it and undoes the
//!   chunked coding, and the gateway, which removes `Transfer-Encoding` as hop-by-hop,
//!   would send the backend a still gzip-coded body with nothing saying so. rampart
//!   answers it 501 (RFC 9112 §6.1: a transfer coding the server does not understand;
//!   nginx answers 501 to any `Transfer-Encoding` other than `chunked`).
//!
//! [`FramingIo`] therefore reads the connection's bytes as hyper does, with httparse
//! (hyper's parser) and hyper's own checks: it follows each request's framing (the head,
//! then a `Content-Length` or chunked body) and hands hyper only whole heads; an
//! incomplete head is held back until its end arrives. A refused head never reaches
//! hyper: in its place hyper reads a stand-in request (`connection: close`), and nothing
//! more of the connection. The service counts the requests hyper hands it and asks
//! [`Framing::next`] about each; hyper hands them over in order, one per head, so the
//! service knows which one had both headers and which one stands in for a refused head.
//! Once the bytes are not HTTP/1 as hyper reads them (HTTP/2, a `CONNECT`), the reader
//! stops and passes everything through.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use tokio::io::ReadBuf;

use super::watched::{Release, Watch, Watched};

/// hyper's default limit of header fields per request; more: hyper answers 431.
const MAX_HEADERS: usize = 100;

/// Longest chunk-size line (with extensions) the reader keeps while it spans reads.
const MAX_CHUNK_LINE: usize = 4096;

/// hyper's longest request target; longer: 414.
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// hyper's largest `Content-Length`; larger: 431.
const MAX_CONTENT_LENGTH: u64 = u64::MAX - 2;

/// HTTP/2's connection preface: hyper serves HTTP/2 after it (on a plain listener).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What hyper reads in place of a refused head: a request that the service answers
/// with the refusal (it knows its number), after which hyper closes the connection.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n";

/// Why hyper would refuse a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 400: not HTTP/1 syntax, a bad `Content-Length` or two different ones, a
    /// `Transfer-Encoding` that does not end in `chunked`, or one in HTTP/1.0.
    BadRequest = 1,
    /// 414: a request target over 65,534 bytes.
    UriTooLong = 2,
    /// 431: a head over hyper's buffer, over 100 fields, a field name of 64 KiB.
    HeadTooLarge = 3,
    /// 501: a `Transfer-Encoding` other than a single `chunked` that hyper would take
    /// (it ends in `chunked`).
    NotChunkedOnly = 4,
}

impl Refusal {
    fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::BadRequest),
            2 => Some(Self::UriTooLong),
            3 => Some(Self::HeadTooLarge),
            4 => Some(Self::NotChunkedOnly),
            _ => None,
        }
    }
}

/// What the service is told about the next request hyper hands it; other than
/// `Plain`, a request extension that the handler answers (400, or the refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// An ordinary request.
    Plain,
    /// It had both `Content-Length` and `Transfer-Encoding`.
    BothLengths,
    /// It stands in for a head hyper would have refused.
    Refused(Refusal),
}

/// What the reader of a connection tells its service.
#[derive(Debug, Default)]
pub(crate) struct Framing {
    /// Requests handed to the service so far.
    served: AtomicU64,
    /// The number (from 1) of the first request with both headers; 0 when none.
    ambiguous: AtomicU64,
    /// The number of the request standing in for a refused head; 0 when none.
    refused: AtomicU64,
    /// Why it was refused ([`Refusal`] as u8).
    refusal: AtomicU8,
    /// The first head was whole (or refused), or the connection is not followed.
    started: AtomicBool,
    /// The connection speaks HTTP/2 (ALPN chose it, or its preface came).
    http2: AtomicBool,
}

impl Framing {
    /// Whether hyper has the connection's first head (or the connection is not
    /// followed): until then, hyper's own header read timeout does not run.
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether the connection speaks HTTP/2, as far as is known yet.
    pub(crate) fn http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// Counts one more request handed to the service and tells what it is. (The
    /// reader and the service run in the connection's task: relaxed order suffices.)
    pub(crate) fn next(&self) -> Verdict {
        let number = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if number == self.ambiguous.load(Ordering::Relaxed) {
            return Verdict::BothLengths;
        }
        if number == self.refused.load(Ordering::Relaxed)
            && let Some(refusal) = Refusal::from_u8(self.refusal.load(Ordering::Relaxed))
        {
            return Verdict::Refused(refusal);
        }
        Verdict::Plain
    }
}

/// A connection's read side, followed request by request.
pub(crate) type FramingIo<S> = Watched<S, Follower>;

/// Follows a connection's requests, tells its [`Framing`], and hands hyper whole heads.
pub(crate) struct Follower {
    framing: Arc<Framing>,
    reader: Reader,
    /// An incomplete head, from its start: held back from hyper until its end.
    held: Vec<u8>,
    /// Bytes to hand to hyper before anything more is read; `queued_at`: how many of
    /// them it already has.
    queue: Vec<u8>,
    queued_at: usize,
    /// A head was refused: after the queue (ending with the stand-in), hyper reads
    /// nothing more.
    closed: bool,
    /// [`Framing::started`] is set (stored once, not at every read).
    started: bool,
}

impl Follower {
    /// `http1`: whether the connection speaks HTTP/1 (false after ALPN chose h2).
    /// `max_head`: the longest head hyper accepts.
    pub(crate) fn new(framing: Arc<Framing>, http1: bool, max_head: usize) -> Self {
        let mut reader = Reader::new(max_head);
        if !http1 {
            reader.state = State::Off;
            framing.started.store(true, Ordering::Relaxed);
            framing.http2.store(true, Ordering::Relaxed);
        }
        Self {
            framing,
            reader,
            held: Vec::new(),
            queue: Vec::new(),
            queued_at: 0,
            closed: false,
            started: !http1,
        }
    }

    /// Queues `before` (what came before the refused head), then the stand-in; hyper
    /// reads nothing after them.
    fn refuse(&mut self, before: &[u8]) {
        self.queue.extend_from_slice(before);
        self.queue.extend_from_slice(STAND_IN);
        self.closed = true;
    }

    fn tell(&mut self, fed: &Fed) {
        if !self.started && (self.reader.heads > 0 || self.reader.state == State::Off) {
            self.started = true;
            self.framing.started.store(true, Ordering::Relaxed);
            if self.reader.http2 {
                self.framing.http2.store(true, Ordering::Relaxed);
            }
        }
        if let Some(number) = fed.ambiguous {
            // Only the first counts: hyper closes the connection after it.
            let _ = self.framing.ambiguous.compare_exchange(
                0,
                number,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        if let Some((number, refusal)) = fed.refused {
            self.framing.refusal.store(refusal as u8, Ordering::Relaxed);
            self.framing.refused.store(number, Ordering::Relaxed);
        }
    }
}

impl Watch for Follower {
    fn read(&mut self, bytes: &[u8]) -> usize {
        if self.held.is_empty() {
            // The common case: everything goes on where it lies.
            let fed = self.reader.feed(bytes, 0);
            self.tell(&fed);
            return match fed.end {
                End::All => bytes.len(),
                End::Hold(at) => {
                    self.held.extend_from_slice(&bytes[at..]);
                    at
                }
                End::Refused(at) => {
                    self.refuse(&[]);
                    at
                }
            };
        }
        // The held head's start comes first: all of it goes through the queue.
        let seen = self.held.len();
        let mut input = std::mem::take(&mut self.held);
        input.extend_from_slice(bytes);
        let fed = self.reader.feed(&input, seen);
        self.tell(&fed);
        match fed.end {
            End::All => self.queue.extend_from_slice(&input),
            End::Hold(at) => {
                self.queue.extend_from_slice(&input[..at]);
                input.drain(..at);
                self.held = input;
            }
            End::Refused(at) => self.refuse(&input[..at]),
        }
        0
    }

    fn release(&mut self, buf: &mut ReadBuf<'_>) -> Release {
        let left = &self.queue[self.queued_at..];
        if !left.is_empty() && buf.remaining() > 0 {
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            self.queued_at += n;
            if self.queued_at == self.queue.len() {
                self.queue = Vec::new();
                self.queued_at = 0;
            }
            return Release::Gave;
        }
        if self.closed {
            Release::Closed
        } else {
            Release::Nothing
        }
    }

    fn ended(&mut self) -> bool {
        if self.held.is_empty() {
            return false;
        }
        // The connection ended inside a head: parsed to the last byte, it is refused
        // or handed to hyper as it is (which then ends the connection as it would).
        let held = std::mem::take(&mut self.held);
        let fed = self.reader.feed(&held, 0);
        self.tell(&fed);
        match fed.end {
            End::Refused(at) => self.refuse(&held[..at]),
            End::All | End::Hold(_) => self.queue.extend_from_slice(&held),
        }
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A request head.
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
    /// The start of a chunk-size line that spans reads.
    partial: Vec<u8>,
    /// Request heads read (or refused) so far.
    heads: u64,
    max_head: usize,
    /// No byte of the connection has gone by yet.
    fresh: bool,
    /// HTTP/2's preface came (then nothing more is followed).
    http2: bool,
}

/// What one [`Reader::feed`] found.
#[derive(Debug, PartialEq, Eq)]
struct Fed {
    end: End,
    /// The number of a request with both `Content-Length` and `Transfer-Encoding`
    /// whose head ended in the input.
    ambiguous: Option<u64>,
    /// The number of a refused head in the input, and why.
    refused: Option<(u64, Refusal)>,
}

/// How much of the input may go on to hyper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// All of it.
    All,
    /// Up to this offset, where an incomplete head starts.
    Hold(usize),
    /// Up to this offset, where a refused head starts; nothing after it.
    Refused(usize),
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
    /// A head hyper refuses.
    Refused(Refusal),
    /// Not HTTP/1 as hyper reads it from here (HTTP/2, a `CONNECT`, a bad chunk).
    Stop,
}

impl Reader {
    fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            partial: Vec::new(),
            heads: 0,
            max_head,
            fresh: true,
            http2: false,
        }
    }

    /// Follows the next bytes of the connection. When the state is a head held back
    /// before, `input` starts with it, and `seen` is how many of its bytes were fed
    /// already.
    fn feed(&mut self, input: &[u8], mut seen: usize) -> Fed {
        let mut fed = Fed {
            end: End::All,
            ambiguous: None,
            refused: None,
        };
        let mut at = 0;
        while at < input.len() {
            let bytes = &input[at..];
            match self.state {
                State::Off => break,
                State::Head if self.fresh => {
                    // HTTP/2's preface, only at the very start (as hyper checks).
                    if bytes.starts_with(H2_PREFACE) {
                        self.http2 = true;
                        self.stop();
                    } else if H2_PREFACE.starts_with(bytes) {
                        fed.end = End::Hold(at);
                        return fed;
                    } else {
                        self.fresh = false;
                    }
                }
                State::Head => {
                    // Empty lines before a head, which hyper skips: passed on, never
                    // held (nor parsed again and again).
                    let blank = empty_lines(bytes);
                    if blank > 0 {
                        at += blank;
                        seen = seen.saturating_sub(blank);
                        continue;
                    }
                    match self.head(bytes, seen) {
                        Parsed::Complete {
                            len,
                            next,
                            ambiguous,
                        } => {
                            self.heads += 1;
                            if ambiguous {
                                fed.ambiguous.get_or_insert(self.heads);
                            }
                            self.state = next;
                            at += len;
                            seen = 0;
                        }
                        // Also a lone CR, the start of an empty line.
                        Parsed::Partial => {
                            fed.end = End::Hold(at);
                            return fed;
                        }
                        Parsed::Refused(refusal) => {
                            self.heads += 1;
                            fed.refused = Some((self.heads, refusal));
                            fed.end = End::Refused(at);
                            self.stop();
                            return fed;
                        }
                        Parsed::Stop => self.stop(),
                    }
                }
                State::ChunkSize => {
                    // The common case: the whole line in this read, parsed where it
                    // lies. Otherwise it is gathered in `partial`.
                    let already = self.partial.len();
                    let line = if already == 0 {
                        bytes
                    } else {
                        self.partial.extend_from_slice(bytes);
                        &self.partial[..]
                    };
                    match chunk_size(line) {
                        Parsed::Complete { len, next, .. } => {
                            self.state = next;
                            self.partial.clear();
                            at += len - already;
                        }
                        Parsed::Partial => {
                            if already == 0 {
                                self.partial.extend_from_slice(bytes);
                            }
                            if self.partial.len() > MAX_CHUNK_LINE {
                                self.stop();
                            }
                            break;
                        }
                        Parsed::Refused(_) | Parsed::Stop => self.stop(),
                    }
                }
                State::Body(left) | State::ChunkData(left) => {
                    let take = left.min(bytes.len() as u64);
                    at += usize::try_from(take).unwrap_or(bytes.len());
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
                    at += take;
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
                    for (i, &byte) in bytes.iter().enumerate() {
                        match byte {
                            b'\n' if line == 0 => {
                                used = i + 1;
                                done = true;
                                break;
                            }
                            b'\n' => line = 0,
                            b'\r' => {}
                            _ => line += 1,
                        }
                    }
                    at += used;
                    self.state = if done {
                        State::Head
                    } else {
                        State::Trailers { line }
                    };
                }
            }
        }
        fed
    }

    /// The head at the start of `input`, as hyper takes it; `seen`: how many of its
    /// bytes were found incomplete before. It is parsed again only once new bytes end
    /// a line: a head sent a byte at a time costs a parse per line, and hyper refuses
    /// a head of over 100 lines.
    fn head(&self, input: &[u8], seen: usize) -> Parsed {
        let parsed = if seen > 0 && !input[seen..].contains(&b'\n') {
            Parsed::Partial
        } else {
            head(input, self.max_head)
        };
        match parsed {
            // hyper refuses a head its buffer fills without an end: the URL is too
            // long when the request line has not ended either.
            Parsed::Partial if input.len() >= self.max_head => {
                Parsed::Refused(if input.contains(&b'\n') {
                    Refusal::HeadTooLarge
                } else {
                    Refusal::UriTooLong
                })
            }
            parsed => parsed,
        }
    }

    fn stop(&mut self) {
        self.state = State::Off;
        self.partial = Vec::new();
    }
}

/// How many bytes at the start of `bytes` are whole empty lines (CRLF or LF).
fn empty_lines(bytes: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match bytes[at..] {
            [b'\n', ..] => at += 1,
            [b'\r', b'\n', ..] => at += 2,
            _ => return at,
        }
    }
}

/// Parses a request head with hyper's checks (`Server::parse` in hyper's h1 role), in
/// hyper's order.
fn head(input: &[u8], max_head: usize) -> Parsed {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(input, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Refused(Refusal::HeadTooLarge),
        Err(_) => return Parsed::Refused(Refusal::BadRequest),
    };
    if len > max_head {
        return Parsed::Refused(Refusal::HeadTooLarge);
    }
    let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version)
    else {
        return Parsed::Stop;
    };
    if path.len() > MAX_URI_LEN {
        return Parsed::Refused(Refusal::UriTooLong);
    }
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Parsed::Refused(Refusal::BadRequest);
    }
    if request.headers.iter().any(|h| h.name.len() >= 1 << 16) {
        return Parsed::Refused(Refusal::HeadTooLarge);
    }
    if !plain_origin_form(path) && http::Uri::try_from(path).is_err() {
        return Parsed::Refused(Refusal::BadRequest);
    }
    // Framing, header by header: the last `Transfer-Encoding` decides whether the body
    // is chunked; a `Content-Length` after one is ignored, before one it must be valid.
    // `only_chunked`: there is one `Transfer-Encoding`, and it is just `chunked`.
    let (mut encoded, mut chunked, mut has_length) = (false, false, false);
    let mut only_chunked = false;
    let mut length = None;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if version != 1 {
                return Parsed::Refused(Refusal::BadRequest);
            }
            only_chunked = !encoded && is_only_chunked(header.value);
            encoded = true;
            chunked = is_chunked(header.value);
        } else if header.name.eq_ignore_ascii_case("content-length") {
            has_length = true;
            if encoded {
                continue;
            }
            match (from_digits(header.value), length) {
                (None, _) => return Parsed::Refused(Refusal::BadRequest),
                (Some(value), Some(first)) if value != first => {
                    return Parsed::Refused(Refusal::BadRequest);
                }
                (Some(value), None) if value > MAX_CONTENT_LENGTH => {
                    return Parsed::Refused(Refusal::HeadTooLarge);
                }
                (Some(value), _) => length = Some(value),
            }
        }
    }
    if encoded && !chunked {
        return Parsed::Refused(Refusal::BadRequest);
    }
    if method == "CONNECT" {
        return Parsed::Stop;
    }
    // hyper would undo only the chunked coding, and the backend would get the bytes of
    // the others with nothing saying so. (With a `Content-Length` too, the request is
    // refused 400 for having both.)
    if encoded && !only_chunked && !has_length {
        return Parsed::Refused(Refusal::NotChunkedOnly);
    }
    let next = match (encoded, length) {
        (true, _) => State::ChunkSize,
        (false, Some(0) | None) => State::Head,
        (false, Some(len)) => State::Body(len),
    };
    Parsed::Complete {
        len,
        next,
        ambiguous: encoded && has_length,
    }
}

/// An origin-form target (`/path?query`) of only the characters RFC 3986 lets a
/// path and query hold unescaped (and `%`), which `http::Uri` accepts as they are:
/// the usual target is checked without the copy and parse that `Uri` makes.
fn plain_origin_form(path: &str) -> bool {
    path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@%?".contains(&b))
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
        // hyper fails the body; the handler answers 400.
        Err(_) => Parsed::Stop,
    }
}

/// hyper's `Content-Length` value: decimal digits only, no sign, no spaces, no list.
fn from_digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// A `Transfer-Encoding` value that is `chunked` alone (any case, with optional
/// whitespace around it).
fn is_only_chunked(value: &[u8]) -> bool {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !ows(b))
        .map_or(start, |at| at + 1);
    value[start..end].eq_ignore_ascii_case(b"chunked")
}

/// hyper's test of a `Transfer-Encoding` value: visible ASCII whose last coding is
/// `chunked`.
fn is_chunked(value: &[u8]) -> bool {
    let visible = value.iter().all(|&b| b == b'\t' || (32..127).contains(&b));
    visible
        && std::str::from_utf8(value).is_ok_and(|s| {
            s.rsplit(',')
                .next()
                .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMUGGLE: &[u8] =
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    /// What passes the quick check is what `http::Uri` accepts: each character on
    /// its own and in the usual targets.
    #[test]
    fn a_plain_origin_form_target_is_one_uri_accepts() {
        let mut targets: Vec<String> = (0x20u8..0x7f)
            .map(|b| format!("/a{}b?c{}d", b as char, b as char))
            .collect();
        targets.extend(
            [
                "/",
                "/api/v1/items?id=7&sort=name",
                "/a%2Fb;p=1/c@d:e",
                "/?",
                "//x",
                "/%zz",
            ]
            .map(str::to_owned),
        );
        let mut plain = 0;
        for target in &targets {
            if plain_origin_form(target) {
                plain += 1;
                assert!(http::Uri::try_from(target.as_str()).is_ok(), "{target:?}");
            }
        }
        // Not a check that passes nothing: the usual characters are plain.
        assert!(plain > 70, "{plain}");
        assert!(!plain_origin_form("/a b"));
        assert!(!plain_origin_form("/a#b"));
        assert!(!plain_origin_form("*"));
        assert!(!plain_origin_form("http://x/"));
    }

    const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

    /// What hyper reads and what its service is told.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        hyper: Vec<u8>,
        ambiguous: u64,
        refused: Option<(u64, Refusal)>,
    }

    /// `stream` arriving in `reads`, through a follower as a [`Watched`] stream moves
    /// it: before each read, what the follower releases (into a small buffer, so that
    /// releases take several reads); at the end, what it keeps.
    fn through(stream: &[u8], reads: &[usize], max_head: usize) -> Seen {
        let framing = Arc::new(Framing::default());
        let mut follower = Follower::new(Arc::clone(&framing), true, max_head);
        let mut hyper = Vec::new();
        let drain = |follower: &mut Follower, hyper: &mut Vec<u8>| {
            loop {
                let mut space = [0u8; 7];
                let mut buf = ReadBuf::new(&mut space);
                match follower.release(&mut buf) {
                    Release::Gave => hyper.extend_from_slice(buf.filled()),
                    Release::Nothing => return true,
                    Release::Closed => return false,
                }
            }
        };
        let mut at = 0;
        let mut open = true;
        for &n in reads {
            open = drain(&mut follower, &mut hyper);
            if !open {
                break;
            }
            let bytes = &stream[at..at + n];
            at += n;
            let pass = follower.read(bytes);
            hyper.extend_from_slice(&bytes[..pass]);
        }
        if open && drain(&mut follower, &mut hyper) && follower.ended() {
            drain(&mut follower, &mut hyper);
        }
        Seen {
            hyper,
            ambiguous: framing.ambiguous.load(Ordering::Relaxed),
            refused: (framing.refused.load(Ordering::Relaxed) > 0).then(|| {
                (
                    framing.refused.load(Ordering::Relaxed),
                    Refusal::from_u8(framing.refusal.load(Ordering::Relaxed)).unwrap(),
                )
            }),
        }
    }

    /// `stream` whole, then split in two at each position, then a byte at a time: what
    /// hyper reads and what the service is told must not depend on how reads cut it.
    fn seen_with(stream: &[u8], max_head: usize) -> Seen {
        let whole = through(stream, &[stream.len()], max_head);
        // Every position of a small stream; a sample of those of a large one.
        let step = if stream.len() > 8192 { 1021 } else { 1 };
        for cut in (1..stream.len()).step_by(step) {
            assert_eq!(
                through(stream, &[cut, stream.len() - cut], max_head),
                whole,
                "cut at {cut}"
            );
        }
        assert_eq!(
            through(stream, &vec![1; stream.len()], max_head),
            whole,
            "byte by byte"
        );
        whole
    }

    fn seen(stream: &[u8]) -> Seen {
        seen_with(stream, 64 * 1024)
    }

    /// The number of the request with both lengths in `stream`, which hyper reads
    /// unchanged.
    fn ambiguous_in(stream: &[u8]) -> u64 {
        let seen = seen(stream);
        assert_eq!(seen.hyper, stream, "{}", String::from_utf8_lossy(stream));
        assert_eq!(seen.refused, None);
        seen.ambiguous
    }

    /// `head` after a good request: hyper reads the good request then the stand-in,
    /// and nothing of what follows; the service is told that request 2 is refused.
    fn assert_refused(head: &[u8], refusal: Refusal) {
        let mut stream = GET.to_vec();
        stream.extend_from_slice(head);
        stream.extend_from_slice(GET);
        let seen = seen_with(&stream, 128 * 1024);
        let mut expected = GET.to_vec();
        expected.extend_from_slice(STAND_IN);
        let shown = String::from_utf8_lossy(&head[..head.len().min(200)]);
        assert!(seen.hyper == expected, "{shown}");
        assert_eq!(seen.refused, Some((2, refusal)), "{shown}");
    }

    #[test]
    fn a_request_with_both_lengths_is_found_by_its_number_after_any_bodies() {
        let mut stream = Vec::new();
        // 1: no body.
        stream.extend_from_slice(GET);
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
        stream.extend_from_slice(b"\r\n\nGET /b HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        // 5: both.
        stream.extend_from_slice(SMUGGLE);
        assert_eq!(ambiguous_in(&stream), 5);
    }

    #[test]
    fn both_headers_are_found_in_any_order_case_and_with_any_lengths() {
        for head in [
            &b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nCONTENT-LENGTH: 3\r\nTRANSFER-ENCODING: gzip, chunked\r\n\r\n0\r\n\r\n",
            // Lengths hyper ignores once Transfer-Encoding came first.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nContent-Length: x\r\n\r\n0\r\n\r\n",
        ] {
            assert_eq!(ambiguous_in(head), 1, "{}", String::from_utf8_lossy(head));
        }
        assert_eq!(
            ambiguous_in(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            0
        );
        assert_eq!(
            ambiguous_in(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            0
        );
        // A header value that merely mentions the names.
        assert_eq!(
            ambiguous_in(b"GET / HTTP/1.1\r\nX-A: Content-Length: 1\r\nX-B: Transfer-Encoding: chunked\r\n\r\n"),
            0
        );
    }

    #[test]
    fn heads_hyper_refuses_reach_it_as_the_stand_in() {
        let bad_request: &[&[u8]] = &[
            b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\na",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            // A bad length before Transfer-Encoding is still read.
            b"POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET http://[::1/ HTTP/1.1\r\n\r\n",
            // A lone CR before a head.
            b"\rGET / HTTP/1.1\r\n\r\n",
        ];
        for head in bad_request {
            assert_refused(head, Refusal::BadRequest);
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_refused(&many, Refusal::HeadTooLarge);
        let mut long = b"GET /".to_vec();
        long.resize(MAX_URI_LEN + 5, b'a');
        long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_refused(&long, Refusal::UriTooLong);
        let mut name = b"GET / HTTP/1.1\r\n".to_vec();
        name.resize(name.len() + (1 << 16), b'n');
        name.extend_from_slice(b": 1\r\n\r\n");
        assert_refused(&name, Refusal::HeadTooLarge);
    }

    #[test]
    fn a_transfer_encoding_other_than_chunked_alone_is_refused_501() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: , chunked\r\n\r\n0\r\n\r\n",
            // Spread over several lines: one field, `gzip, chunked`.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: \r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            assert_refused(head, Refusal::NotChunkedOnly);
        }
    }

    #[test]
    fn chunked_alone_in_any_case_and_whitespace_is_followed() {
        for value in ["chunked", "CHUNKED", "Chunked", "\tchunked", " chunked \t"] {
            let stream = format!(
                "POST / HTTP/1.1\r\nTransfer-Encoding:{value}\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"
            );
            let seen = seen(stream.as_bytes());
            assert_eq!(seen.hyper, stream.as_bytes(), "{value:?}");
            assert_eq!(seen.refused, None, "{value:?}");
        }
        assert!(is_only_chunked(b"chunked"));
        assert!(is_only_chunked(b" \tChUnKeD\t "));
        for value in [
            &b""[..],
            b" ",
            b"chunked,",
            b"gzip, chunked",
            b"chunked chunked",
            b"xchunked",
            b"chunke",
        ] {
            assert!(
                !is_only_chunked(value),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn a_head_longer_than_hyper_takes_is_refused_complete_or_not() {
        for head in [
            format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200)),
            format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(200)),
        ] {
            let seen = seen_with(head.as_bytes(), 100);
            assert_eq!(seen.hyper, STAND_IN);
            assert_eq!(seen.refused, Some((1, Refusal::HeadTooLarge)));
        }
        // Exactly the limit is taken.
        let head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(77));
        assert_eq!(head.len(), 100);
        assert_eq!(seen_with(head.as_bytes(), 100).hyper, head.as_bytes());
    }

    #[test]
    fn a_connection_ending_inside_a_head_hands_hyper_what_came() {
        // Incomplete but fine so far: hyper gets it and ends the connection itself.
        let fine = seen(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(fine.hyper, b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(fine.refused, None);
        // Already refusable: the stand-in.
        let bad = seen(b"GET / HTTP/1.1\r\nBad Header");
        assert_eq!(bad.hyper, STAND_IN);
        assert_eq!(bad.refused, Some((1, Refusal::BadRequest)));
    }

    #[test]
    fn the_reader_passes_on_what_is_not_http1_as_hyper_reads_it() {
        // HTTP/2's preface, then bytes that would look like a smuggling head.
        let mut h2 = H2_PREFACE.to_vec();
        h2.extend_from_slice(SMUGGLE);
        assert_eq!(ambiguous_in(&h2), 0);
        // A method that starts like the preface is HTTP/1.
        let mut pri = b"PRIX / HTTP/1.1\r\n\r\n".to_vec();
        pri.extend_from_slice(SMUGGLE);
        assert_eq!(ambiguous_in(&pri), 2);
        let mut connect = b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n".to_vec();
        connect.extend_from_slice(SMUGGLE);
        assert_eq!(ambiguous_in(&connect), 0);
        // A bad chunk size: hyper fails the body (the handler answers 400).
        let mut chunk = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
        chunk.extend_from_slice(SMUGGLE);
        assert_eq!(ambiguous_in(&chunk), 0);
    }

    #[test]
    fn an_http2_connection_is_not_read() {
        let framing = Arc::new(Framing::default());
        let mut follower = Follower::new(Arc::clone(&framing), false, 1024);
        assert_eq!(follower.read(SMUGGLE), SMUGGLE.len());
        let bad = b"GET / HTTP/1.1\r\nBad";
        assert_eq!(follower.read(bad), bad.len());
        assert_eq!(framing.next(), Verdict::Plain);
    }

    #[test]
    fn the_connection_has_started_once_the_first_head_is_whole() {
        let framing = Arc::new(Framing::default());
        let mut follower = Follower::new(Arc::clone(&framing), true, 1024);
        assert_eq!(follower.read(b"GET / HTTP/1.1\r\n"), 0);
        assert!(!framing.started());
        assert_eq!(follower.read(b"\r\n"), 0);
        assert!(framing.started());
        // HTTP/2 (by ALPN) is not followed: started from the first byte.
        let h2 = Arc::new(Framing::default());
        let _ = Follower::new(Arc::clone(&h2), false, 1024);
        assert!(h2.started());
    }

    #[test]
    fn http2_is_known_by_alpn_or_by_its_preface() {
        let h1 = Arc::new(Framing::default());
        let mut follower = Follower::new(Arc::clone(&h1), true, 1024);
        assert_eq!(follower.read(b"GET / HTTP/1.1\r\n\r\n"), 18);
        assert!(h1.started() && !h1.http2());
        let by_alpn = Arc::new(Framing::default());
        let _ = Follower::new(Arc::clone(&by_alpn), false, 1024);
        assert!(by_alpn.http2());
        // A plain connection: once the whole preface came, in two reads.
        let by_preface = Arc::new(Framing::default());
        let mut follower = Follower::new(Arc::clone(&by_preface), true, 1024);
        assert_eq!(follower.read(&H2_PREFACE[..10]), 0);
        assert!(!by_preface.http2());
        follower.read(&H2_PREFACE[10..]);
        assert!(by_preface.started() && by_preface.http2());
    }

    #[test]
    fn the_service_learns_which_request_it_is() {
        let framing = Framing::default();
        framing.ambiguous.store(2, Ordering::Relaxed);
        framing
            .refusal
            .store(Refusal::UriTooLong as u8, Ordering::Relaxed);
        framing.refused.store(4, Ordering::Relaxed);
        let verdicts: Vec<Verdict> = (0..5).map(|_| framing.next()).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Plain,
                Verdict::BothLengths,
                Verdict::Plain,
                Verdict::Refused(Refusal::UriTooLong),
                Verdict::Plain
            ]
        );
        let none = Framing::default();
        assert!((0..5).all(|_| none.next() == Verdict::Plain));
    }
}
