//! Flush consolidation for the server's connections, as Netty's
//! `FlushConsolidationHandler` and gRPC C-core's write combining do.
//!
//! The HTTP/2 connection task writes and flushes every time it runs, and
//! tokio runs a task right after the task that woke it. So when one change
//! wakes 10k watch streams, each stream's frame wakes the connection, which
//! writes that one frame: a syscall (and, over loopback, the receiver's
//! work too) per frame. [`Coalesced`] takes writes into a buffer, and a
//! flush that comes within [`BURST`] of the last write yields once before
//! writing, so every stream that is ready gets its frame in first; then one
//! write carries them all. On a quiet connection a lone frame (a pong, one
//! answer) goes out at once, as it would unwrapped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Bytes held before a write goes out without waiting for a flush; as
/// much as one HTTP/2 connection's frames for one change usually take.
const LIMIT: usize = 64 * 1024;

/// A flush this soon after the last write is taken as part of a burst and
/// waits for the rest of it; a lone message (a pong, an answer on a quiet
/// connection) goes out at once, with no extra wake-up of the runtime.
const BURST: Duration = Duration::from_millis(1);

/// A connection whose writes are gathered until a flush, and whose flush
/// lets the other ready tasks add to them first.
///
/// It says it has no vectored writes on purpose: h2 then copies DATA frames
/// of up to 1 KiB into its own buffer instead of chaining them (from 256
/// bytes), and a chained frame must be flushed before the next frame, such
/// as the answer's trailers, can follow: a flush in mid-burst, which yields.
pub(crate) struct Coalesced<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` is already written.
    written: usize,
    /// Whether this flush has already given way once.
    yielded: bool,
    /// When the buffer last went out.
    last_write: Option<Instant>,
}

impl<T> Coalesced<T> {
    /// Wraps a connection.
    pub(crate) fn new(inner: T) -> Self {
        Coalesced {
            inner,
            buf: Vec::new(),
            written: 0,
            yielded: false,
            last_write: None,
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
        let this = self.get_mut();
        if this.buf.len() + data.len() > LIMIT {
            ready!(this.poll_drain(cx))?;
            if data.len() > LIMIT {
                // A big write gains nothing from the buffer.
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        let in_burst = this.last_write.is_some_and(|at| at.elapsed() < BURST);
        if in_burst && !this.yielded {
            // Waking ourselves from inside our own poll puts this task at the
            // back of the run queue, behind the streams about to write.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        this.last_write = Some(Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;
    use tokio::io::AsyncReadExt;

    fn write_and_flush(
        conn: &mut Coalesced<tokio::io::DuplexStream>,
        data: &[u8],
    ) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            Pin::new(&mut *conn).poll_write(&mut cx, data),
            Poll::Ready(Ok(n)) if n == data.len()
        ));
        Pin::new(conn).poll_flush(&mut cx)
    }

    async fn read_once(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut buf = vec![0; 64];
        let n = peer.read(&mut buf).await.unwrap();
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn a_lone_write_goes_out_at_once_and_a_burst_goes_out_together() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut conn = Coalesced::new(ours);
        assert!(write_and_flush(&mut conn, b"pong").is_ready());
        assert_eq!(read_once(&mut peer).await, b"pong");

        // Right after a write: the flush gives way once, and what the other
        // streams write meanwhile joins it.
        assert!(write_and_flush(&mut conn, b"a").is_pending());
        assert!(write_and_flush(&mut conn, b"b").is_ready());
        assert_eq!(read_once(&mut peer).await, b"ab");

        tokio::time::sleep(BURST * 2).await;
        assert!(write_and_flush(&mut conn, b"quiet").is_ready());
        assert_eq!(read_once(&mut peer).await, b"quiet");
    }

    #[tokio::test]
    async fn a_write_bigger_than_the_buffer_passes_straight_through() {
        let (ours, mut peer) = tokio::io::duplex(4 * LIMIT);
        let mut conn = Coalesced::new(ours);
        let big = vec![7u8; LIMIT + 1];
        assert!(write_and_flush(&mut conn, &big).is_ready());
        let mut got = vec![0; big.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
    }

    #[test]
    fn answers_are_copied_by_h2_not_chained() {
        // Over a vectored connection h2 chains DATA frames from 256 bytes,
        // and each chained frame forces a flush (so a yield) mid-answer.
        let (ours, _peer) = tokio::io::duplex(64);
        assert!(!Coalesced::new(ours).is_write_vectored());
    }
}
