//! Connection activity, for the idle timeout: requests, response bodies, bytes.
//!
//! HTTP/1 counts every byte moving. HTTP/2 does not: a client's PING, SETTINGS or
//! WINDOW_UPDATE frames move bytes (a PING makes the gateway answer), so one PING
//! every 30 s kept a connection with nothing to do open for ever, and one source held
//! every `max_connections` slot that way. Over HTTP/2 only the requests count, as in
//! Envoy's `idle_timeout`: one waiting for its response head, one starting, or a
//! response body moving (a chunk handed to hyper, which happens only while the
//! client reads).
//!
//! hyper polls an HTTP/2 body for its next chunk only once h2 has sent what it
//! holds of the last one down to less than the stream's send buffer, and h2 takes
//! a whole chunk at once: a client reading a backend's 64 KiB chunks slowly but
//! steadily (less than one per idle timeout) was cut as stalled. Over HTTP/2 a
//! chunk larger than the send buffer is handed on in pieces of its size, so that
//! the body moves as often as the client reads that much.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::server::H2_STREAM_SEND_BUFFER;
use super::watched::{Watch, Watched};

/// The largest piece of data an HTTP/2 body hands hyper at once: h2 buffers a
/// stream's data up to this, so a piece is handed on each time the client has
/// read about that much.
const H2_PIECE: usize = H2_STREAM_SEND_BUFFER;

/// What went on lately on a connection, for the idle timeout. Each event only sets
/// a flag (no clock read); the watcher looks at the flags four times per idle
/// period, so an idle connection is closed between 1 and 1.25 idle periods after
/// the last thing that counts.
pub(crate) struct Activity {
    /// Bytes moved (counted over HTTP/1 only).
    bytes: AtomicBool,
    /// A request started, or a response body moved.
    requests: AtomicBool,
    /// Requests waiting for their response head.
    in_flight: AtomicUsize,
    /// Its listener's drain time is over: the gateway cuts the connections left,
    /// and their requests left unanswered are not the client's doing. Shared by
    /// the listener's connections and set before any is cut, so that a request
    /// dropped at any point after (its connection's task aborted, or the runtime
    /// shutting down first) knows it.
    cut_off: Arc<AtomicBool>,
    /// The gateway closed the connection for its idle timeout: a response body
    /// left unsent is not known to be the client's doing.
    idle_cut: AtomicBool,
    /// Over HTTP/2, the response bodies being sent, each with the looks it has
    /// not moved for: one whose body stops moving for the idle timeout is cut
    /// (`Tracked::stream`), since the connection's own idle rule sees the other
    /// streams and would keep its backend connection held for ever.
    streams: Mutex<Vec<(Weak<dyn Stall>, u32)>>,
}

impl Activity {
    /// `cut_off`: its listener's flag, set when its drain time is over.
    pub(crate) fn new(cut_off: Arc<AtomicBool>) -> Self {
        Self {
            bytes: AtomicBool::new(true),
            requests: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            cut_off,
            idle_cut: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        }
    }

    /// Whether the gateway cut the connection.
    pub(crate) fn was_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Relaxed)
    }

    /// Marks the connection as closed for its idle timeout (before its task is
    /// aborted).
    pub(crate) fn idle_cut(&self) {
        self.idle_cut.store(true, Ordering::Relaxed);
    }

    /// Whether the gateway closed the connection for its idle timeout, or is
    /// cutting an HTTP/2 stream whose body did not move for it (`Stall::cut`,
    /// which drops the body on this thread).
    pub(crate) fn was_idle_cut(&self) -> bool {
        self.idle_cut.load(Ordering::Relaxed) || CUTTING_STALLED.get()
    }

    fn set(flag: &AtomicBool) {
        if !flag.load(Ordering::Relaxed) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Returns once nothing that counts happened for `idle` (to 1.25 `idle`);
    /// `http2` tells whether the connection speaks HTTP/2 (asked at each look: a
    /// plain connection is known to only once its preface has come).
    pub(crate) async fn idle_for(&self, idle: Duration, http2: impl Fn() -> bool) {
        const LOOKS: u32 = 4;
        let step = idle / LOOKS;
        let mut quiet = 0;
        loop {
            tokio::time::sleep(step).await;
            // Both flags are cleared at each look.
            let bytes = self.bytes.swap(false, Ordering::Relaxed) && !http2();
            let requests = self.requests.swap(false, Ordering::Relaxed);
            let busy = bytes || requests || self.in_flight.load(Ordering::Relaxed) > 0;
            self.sweep_streams(LOOKS);
            quiet = if busy { 0 } else { quiet + 1 };
            if quiet >= LOOKS {
                return;
            }
        }
    }
}

impl Activity {
    /// One look at the HTTP/2 response bodies: one that has not moved for `looks`
    /// looks in a row (the idle timeout) is cut; ended ones are forgotten.
    fn sweep_streams(&self, looks: u32) {
        let mut stalled = Vec::new();
        {
            let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
            streams.retain_mut(|(stream, quiet)| {
                let Some(stream) = stream.upgrade() else {
                    return false;
                };
                *quiet = if stream.moved() { 0 } else { *quiet + 1 };
                if *quiet >= looks {
                    stalled.push(stream);
                    return false;
                }
                true
            });
        }
        // Outside the lock: cutting drops a body (its backend connection).
        for stream in stalled {
            // Its access event has already the status sent (as a body cut by the
            // HTTP/1 idle timeout has): this line says what happened.
            tracing::info!(
                "HTTP/2 response body did not move for the idle timeout; stream cut and its backend connection closed"
            );
            stream.cut();
        }
    }
}

thread_local! {
    /// Set while this thread drops the body of a stalled HTTP/2 stream.
    static CUTTING_STALLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A response body the connection's watcher can cut (HTTP/2).
trait Stall: Send + Sync {
    /// Whether it moved since the last call.
    fn moved(&self) -> bool;
    /// Drops the body (its backend connection and its place in
    /// `max_backend_requests` with it) and wakes the stream, which ends with an
    /// error (hyper resets it).
    fn cut(&self);
}

/// An HTTP/2 response body, shared with its connection's watcher.
struct Stream<B> {
    moved: AtomicBool,
    state: Mutex<StreamState<B>>,
}

struct StreamState<B> {
    /// `None` once cut.
    body: Option<B>,
    /// What is left of a data chunk larger than `H2_PIECE`, handed on before the
    /// body is polled again; dropped with it when cut.
    rest: Bytes,
    waker: Option<Waker>,
}

impl<B: Send> Stall for Stream<B> {
    fn moved(&self) -> bool {
        self.moved.swap(false, Ordering::Relaxed)
    }

    fn cut(&self) {
        let (body, waker) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.rest = Bytes::new();
            (state.body.take(), state.waker.take())
        };
        // The body's drop reports its request (handler.rs's `Reported`), on this
        // thread: it asks `was_idle_cut` why it was dropped.
        CUTTING_STALLED.set(true);
        drop(body);
        CUTTING_STALLED.set(false);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Marks a request in progress on its connection until dropped (its response head
/// is ready).
pub(crate) struct Busy(Arc<Activity>);

impl Busy {
    pub(crate) fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Activity::set(&activity.requests);
        Self(activity)
    }

    /// Its connection's activity.
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.0
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        Activity::set(&self.0.requests);
    }
}

/// A response body that marks its connection active at each chunk handed on.
/// Over HTTP/2 ([`Tracked::stream`]) it is also cut when it does not move for the
/// idle timeout: a client that does not read one stream (or a backend that stalls
/// in the middle of a body) while other streams keep the connection busy would
/// otherwise hold its backend connection for ever.
pub(crate) struct Tracked<B> {
    inner: Inner<B>,
    activity: Arc<Activity>,
}

enum Inner<B> {
    Direct(B),
    Stream(Arc<Stream<B>>),
}

impl<B> Tracked<B> {
    /// An HTTP/1 body: the connection's idle timeout covers it.
    pub(crate) fn new(inner: B, activity: Arc<Activity>) -> Self {
        Self {
            inner: Inner::Direct(inner),
            activity,
        }
    }
}

impl<B: Send + 'static> Tracked<B> {
    /// An HTTP/2 stream's body, watched by its connection's watcher.
    pub(crate) fn stream(inner: B, activity: Arc<Activity>) -> Self {
        let stream = Arc::new(Stream {
            moved: AtomicBool::new(true),
            state: Mutex::new(StreamState {
                body: Some(inner),
                rest: Bytes::new(),
                waker: None,
            }),
        });
        let stall: Arc<dyn Stall> = stream.clone();
        let mut streams = activity
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if streams.len() == streams.capacity() {
            // Ended streams are forgotten here too, not only at the watcher's
            // looks (every quarter of the idle timeout): the list stays within
            // about twice the streams open, whatever the request rate.
            streams.retain(|(stream, _)| stream.strong_count() > 0);
        }
        streams.push((Arc::downgrade(&stall), 0));
        drop(streams);
        Self {
            inner: Inner::Stream(stream),
            activity,
        }
    }
}

/// The error a cut stream ends with (hyper resets the stream).
#[derive(Debug, thiserror::Error)]
#[error("the response body did not move for the idle timeout")]
pub(crate) struct StreamStalled;

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: From<StreamStalled>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = match &mut self.inner {
            Inner::Direct(body) => Pin::new(body).poll_frame(cx),
            Inner::Stream(stream) => {
                let mut state = stream.state.lock().unwrap_or_else(PoisonError::into_inner);
                let state = &mut *state;
                let Some(body) = state.body.as_mut() else {
                    return Poll::Ready(Some(Err(StreamStalled.into())));
                };
                let mut polled = if state.rest.is_empty() {
                    Pin::new(body).poll_frame(cx)
                } else {
                    let piece = state.rest.split_to(state.rest.len().min(H2_PIECE));
                    Poll::Ready(Some(Ok(Frame::data(piece))))
                };
                match &mut polled {
                    Poll::Pending => match &mut state.waker {
                        Some(waker) if waker.will_wake(cx.waker()) => {}
                        waker => *waker = Some(cx.waker().clone()),
                    },
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_mut()
                            && data.len() > H2_PIECE
                        {
                            // The piece stays in the frame, the rest is kept
                            // (no copy: both share the chunk's buffer).
                            let piece = data.split_to(H2_PIECE);
                            state.rest = std::mem::replace(data, piece);
                        }
                        stream.moved.store(true, Ordering::Relaxed);
                    }
                    Poll::Ready(_) => {}
                }
                polled
            }
        };
        if let Poll::Ready(Some(Ok(_))) = &polled {
            Activity::set(&self.activity.requests);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Direct(body) => body.is_end_stream(),
            Inner::Stream(stream) => stream
                .with_body(|body, rest| rest.is_empty() && body.is_some_and(Body::is_end_stream)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Direct(body) => body.size_hint(),
            Inner::Stream(stream) => stream.with_body(|body, rest| {
                let Some(body) = body else {
                    return SizeHint::default();
                };
                let mut hint = body.size_hint();
                let rest = rest.len() as u64;
                if rest > 0 {
                    // The upper bound first: a lower one above it panics.
                    if let Some(upper) = hint.upper() {
                        hint.set_upper(upper.saturating_add(rest));
                    }
                    hint.set_lower(hint.lower().saturating_add(rest));
                }
                hint
            }),
        }
    }
}

impl<B> Stream<B> {
    /// `f` of its body (`None` once cut) and the rest of its last chunk, under its
    /// lock.
    fn with_body<R>(&self, f: impl FnOnce(Option<&B>, &Bytes) -> R) -> R {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(state.body.as_ref(), &state.rest)
    }
}

/// A stream that records when bytes move.
pub(crate) type ActivityIo<S> = Watched<S, Arc<Activity>>;

impl Watch for Arc<Activity> {
    fn read(&mut self, bytes: &[u8]) -> usize {
        Activity::set(&self.bytes);
        bytes.len()
    }

    fn wrote(&mut self) {
        Activity::set(&self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the watcher finds `activity` idle within `within` (the test clock is
    /// paused: sleeps end at once, in order).
    async fn idle_within(activity: &Activity, http2: bool, within: Duration) -> bool {
        tokio::time::timeout(within, activity.idle_for(Duration::from_secs(1), || http2))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_keep_http1_busy_but_not_http2() {
        for http2 in [false, true] {
            let activity = Arc::new(Activity::new(Arc::default()));
            let mut watch = Arc::clone(&activity);
            let pinging = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    watch.read(b"PING");
                    watch.wrote();
                }
            };
            let idle = tokio::select! {
                () = pinging => unreachable!(),
                idle = idle_within(&activity, http2, Duration::from_secs(5)) => idle,
            };
            assert_eq!(idle, http2, "http2 = {http2}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_or_a_moving_body_keeps_http2_busy() {
        let activity = Arc::new(Activity::new(Arc::default()));
        let busy = Busy::new(Arc::clone(&activity));
        assert!(!idle_within(&activity, true, Duration::from_secs(5)).await);
        drop(busy);
        let mut body = Tracked::new(Endless, Arc::clone(&activity));
        let reading = async {
            loop {
                tokio::time::sleep(Duration::from_millis(400)).await;
                let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
                assert!(frame.is_some());
            }
        };
        let idle = tokio::select! {
            () = reading => unreachable!(),
            idle = idle_within(&activity, true, Duration::from_secs(5)) => idle,
        };
        assert!(!idle);
        // Then nothing: idle after 1 to 1.25 s.
        let start = tokio::time::Instant::now();
        assert!(idle_within(&activity, true, Duration::from_secs(5)).await);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took <= Duration::from_millis(1250),
            "{took:?}"
        );
    }

    /// A body of the frames given, whose size hint is exact.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = crate::gateway::BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            let data = self.0.iter().filter_map(Frame::data_ref).map(Bytes::len);
            SizeHint::with_exact(data.sum::<usize>() as u64)
        }
    }

    /// The next frame of `body`, which must be ready.
    fn next_frame<B>(body: &mut Tracked<B>) -> Option<Frame<Bytes>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: From<StreamStalled> + std::fmt::Debug,
    {
        let waker = std::task::Waker::noop();
        match Pin::new(body).poll_frame(&mut Context::from_waker(waker)) {
            Poll::Ready(frame) => frame.map(|frame| frame.unwrap()),
            Poll::Pending => panic!("the fake body is never pending"),
        }
    }

    /// What the connection's watcher holds of an HTTP/2 body.
    fn stream_of<B>(body: &Tracked<B>) -> Arc<Stream<B>> {
        match &body.inner {
            Inner::Stream(stream) => Arc::clone(stream),
            Inner::Direct(_) => panic!("not an HTTP/2 body"),
        }
    }

    /// A data chunk larger than the HTTP/2 send buffer is handed on in pieces of
    /// its size, whole and in order, then the trailers; the body is not at its
    /// end, and its size hint counts the rest, while a piece is left.
    #[test]
    fn a_large_http2_chunk_is_handed_on_in_pieces() {
        let chunk: Bytes = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = [
            Frame::data(chunk.clone()),
            Frame::trailers(trailers.clone()),
        ];
        let activity = Arc::new(Activity::new(Arc::default()));
        let mut body = Tracked::stream(Frames(frames.into()), activity);
        let stream = stream_of(&body);
        assert!(stream.moved(), "a new stream counts as moved");
        assert_eq!(body.size_hint().exact(), Some(100 * 1024));

        let mut received = Vec::new();
        let mut pieces = 0;
        while received.len() < chunk.len() {
            pieces += 1;
            let frame = next_frame(&mut body).expect("a piece");
            let piece = frame.into_data().expect("data before the trailers");
            assert_eq!(piece.len(), H2_PIECE.min(chunk.len() - received.len()));
            received.extend_from_slice(&piece);
            assert!(stream.moved(), "each piece counts as moving");
            assert!(!body.is_end_stream(), "the trailers are still to come");
            let left = (chunk.len() - received.len()) as u64;
            assert_eq!(body.size_hint().exact(), Some(left));
        }
        assert_eq!(received, chunk);
        assert_eq!(pieces, 7, "six of 16 KiB and one of 4 KiB");
        let frame = next_frame(&mut body).expect("the trailers");
        assert_eq!(frame.into_trailers().ok(), Some(trailers));
        assert!(body.is_end_stream());
        assert!(next_frame(&mut body).is_none());
    }

    /// The last piece of a body's last chunk is its end; a small chunk is handed
    /// on as it is.
    #[test]
    fn the_last_piece_ends_an_http2_body() {
        let big = Bytes::from(vec![b'x'; H2_PIECE + 1]);
        let small = Bytes::from_static(b"small");
        let frames = [Frame::data(small.clone()), Frame::data(big)];
        let activity = Arc::new(Activity::new(Arc::default()));
        let mut body = Tracked::stream(Frames(frames.into()), activity);
        let first = next_frame(&mut body).and_then(|f| f.into_data().ok());
        assert_eq!(first, Some(small));
        let piece = next_frame(&mut body).and_then(|f| f.into_data().ok());
        assert_eq!(piece.map(|p| p.len()), Some(H2_PIECE));
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(1));
        let last = next_frame(&mut body).and_then(|f| f.into_data().ok());
        assert_eq!(last.as_deref(), Some(&b"x"[..]));
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    /// A stream cut with a piece left ends with the error, the rest dropped.
    #[test]
    fn a_cut_http2_stream_drops_its_rest() {
        let frames = [Frame::data(Bytes::from(vec![b'x'; 3 * H2_PIECE]))];
        let activity = Arc::new(Activity::new(Arc::default()));
        let mut body = Tracked::stream(Frames(frames.into()), activity);
        let stream = stream_of(&body);
        assert!(next_frame(&mut body).is_some());
        stream.cut();
        assert!(stream.with_body(|body, rest| body.is_none() && rest.is_empty()));
        let waker = std::task::Waker::noop();
        let polled = Pin::new(&mut body).poll_frame(&mut Context::from_waker(waker));
        assert!(matches!(polled, Poll::Ready(Some(Err(_)))));
        assert!(!body.is_end_stream());
    }

    /// An endless body of one-byte chunks.
    struct Endless;

    impl Body for Endless {
        type Data = Bytes;
        type Error = crate::gateway::BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }
}
