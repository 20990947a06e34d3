//! A stream whose moving bytes something watches: the idle timeout (activity.rs)
//! and the request framing beside hyper (framing.rs), which may also hold read bytes
//! back and hand on others in their place.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a [`Watched`] stream tells about the bytes it moves.
pub(crate) trait Watch {
    /// `bytes` (not empty) were just read. Returns how many of them, from the start,
    /// go on to the reader now; the watcher keeps the others and hands on what it
    /// keeps through [`Watch::release`].
    fn read(&mut self, bytes: &[u8]) -> usize;
    /// Bytes were just written.
    fn wrote(&mut self) {}
    /// Called before each read from the stream: hands on bytes the watcher kept
    /// (as many as fit in `buf`).
    fn release(&mut self, _buf: &mut ReadBuf<'_>) -> Release {
        Release::Nothing
    }
    /// The stream ended. Returns whether the watcher now has bytes to release.
    fn ended(&mut self) -> bool {
        false
    }
}

/// What [`Watch::release`] did.
pub(crate) enum Release {
    /// Put bytes into the buffer.
    Gave,
    /// Nothing to hand on: read from the stream.
    Nothing,
    /// Nothing more is read from this stream (the reader finishes with what it has).
    Closed,
}

/// A stream and its watcher.
pub(crate) struct Watched<S, W> {
    pub(crate) inner: S,
    pub(crate) watch: W,
}

impl<S, W: Watch> Watched<S, W> {
    fn note_written(&mut self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled
            && *n > 0
        {
            self.watch.wrote();
        }
    }
}

impl<S: AsyncRead + Unpin, W: Watch + Unpin> AsyncRead for Watched<S, W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.watch.release(buf) {
                Release::Gave => return Poll::Ready(Ok(())),
                // Never woken: the reader is driven by what it already has.
                Release::Closed => return Poll::Pending,
                Release::Nothing => {}
            }
            let before = buf.filled().len();
            let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
            let read = buf.filled().len() - before;
            if read == 0 {
                // At the end of the stream, what the watcher kept goes first.
                if matches!(polled, Poll::Ready(Ok(()))) && this.watch.ended() {
                    continue;
                }
                return polled;
            }
            let pass = this.watch.read(&buf.filled()[before..]);
            if pass < read {
                buf.set_filled(before + pass);
            }
            if pass > 0 {
                return polled;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin, W: Watch + Unpin> AsyncWrite for Watched<S, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_written(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_written(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
