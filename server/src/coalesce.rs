//! Flush consolidation for the server's connections, as Netty's
//! `FlushConsolidationHandler` and gRPC C-core's write combining do.
//!
//! The HTTP/2 connection task writes and flushes every time it runs, and
//! tokio runs a task right after the task that woke it. So when one change
//! wakes 10k watch streams, each stream's frame wakes the connection, which
//! writes that one frame: a syscall (and, over loopback, the receiver's
//! work too) per frame. [`Coalesced`] takes writes into a buffer and, on the
//! first flush after a quiet moment, yields once before writing, so every
//! stream that is ready gets its frame in first; then one write carries them
//! all. An idle connection pays one extra poll of its task per flush.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Bytes held before a write goes out without waiting for a flush; as
/// much as one HTTP/2 connection's frames for one change usually take.
const LIMIT: usize = 64 * 1024;

/// A connection whose writes are gathered until a flush, and whose flush
/// lets the other ready tasks add to them first.
pub struct Coalesced<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` is already written.
    written: usize,
    /// Whether this flush has already given way once.
    yielded: bool,
}

impl<T> Coalesced<T> {
    /// Wraps a connection.
    pub fn new(inner: T) -> Self {
        Coalesced {
            inner,
            buf: Vec::new(),
            written: 0,
            yielded: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        // Give the memory of a burst back once it is written.
        if self.buf.capacity() > LIMIT {
            self.buf.shrink_to(LIMIT);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = slices.iter().map(|s| s.len()).sum();
        if this.buf.len() + len > LIMIT {
            ready!(this.poll_drain(cx))?;
            if len > LIMIT {
                // A big write gains nothing from the buffer.
                return Pin::new(&mut this.inner).poll_write_vectored(cx, slices);
            }
        }
        for s in slices {
            this.buf.extend_from_slice(s);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.yielded {
            // Waking ourselves from inside our own poll puts this task at the
            // back of the run queue, behind the streams about to write.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: Connected> Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
