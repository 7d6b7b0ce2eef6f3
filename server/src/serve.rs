//! Serving the gRPC connections: hyper's HTTP/2 server, run as tonic's
//! `Server` runs it, but with our own executor for the streams' tasks.
//!
//! Why: hyper sends each answer from the stream's own task, and after every
//! frame it reserves capacity for the next, which h2 grants at once by
//! waking the task that asked, the one running. tokio takes a task that
//! wakes itself as a yield: it queues it again and unparks an idle worker,
//! which wakes, finds nothing to do and parks: a futex call and two context
//! switches for each answer on a quiet server, most of what a heartbeat's
//! pong costs. tonic's `Server` spawns these tasks on tokio as they are, so
//! [`serve`] spawns them wrapped in [`Repoll`], which polls a task that
//! woke itself again at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::{Stream, StreamExt};
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tower::ServiceExt;

/// The HTTP/2 settings we serve with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// Streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// How often an idle connection is pinged.
    pub keepalive_interval: Duration,
}

/// Serves `routes` on every connection `incoming` yields until `shutdown`
/// completes; then stops accepting, asks every connection to finish its
/// calls (HTTP/2 GOAWAY) and returns once they all have.
pub(crate) async fn serve<I, IO>(
    routes: Routes,
    incoming: I,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    // Everything else keeps hyper's defaults. tonic passed `None` for some,
    // which for locally reset streams switched off hyper's limit of 1024,
    // a guard against reset floods (RUSTSEC-2024-0003).
    let mut builder = hyper::server::conn::http2::Builder::new(Executor);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(settings.keepalive_interval);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    accept(routes.prepare(), incoming, &builder, stop_rx, shutdown).await;
    let _ = stop_tx.send(());
    stop_tx.closed().await;
}

/// Serves each connection accepted until `shutdown`, each on a task that
/// holds a clone of `stop` until the connection ends. Returning drops
/// `incoming`, so the listener closes at once and new clients are refused
/// rather than left waiting.
async fn accept<I, IO>(
    routes: Routes,
    incoming: I,
    builder: &hyper::server::conn::http2::Builder<Executor>,
    stop: tokio::sync::watch::Receiver<()>,
    shutdown: impl Future<Output = ()>,
) where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let mut incoming = std::pin::pin!(incoming);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let io = tokio::select! {
            _ = &mut shutdown => return,
            io = incoming.next() => match io {
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    tracing::debug!("accept failed: {e}");
                    continue;
                }
                None => return,
            },
        };
        // What tonic's `Server` adds to each request: the peer's address
        // and, under TLS, its certificates (`Request::peer_certs`).
        let info = io.connect_info();
        let routes = routes.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(tonic::body::Body::new);
            request.extensions_mut().insert(info.clone());
            routes.clone().oneshot(request)
        });
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = &mut connection => return log_end(result),
                _ = stop.changed() => connection.as_mut().graceful_shutdown(),
            }
            log_end(connection.await);
        });
    }
}

fn log_end(result: hyper::Result<()>) {
    if let Err(e) = result {
        tracing::debug!("connection ended: {e}");
    }
}

/// Spawns hyper's tasks on tokio, each in a [`Repoll`].
#[derive(Clone, Copy, Debug)]
struct Executor;

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Repoll::new(future));
    }
}

/// Times a task that woke itself is polled again at once before it is left
/// to tokio: hyper's one self-wake per frame needs one.
const AGAIN: usize = 2;

pin_project_lite::pin_project! {
    /// A task that, when it wakes itself while being polled, is polled again
    /// at once rather than queued behind the others (and another worker
    /// woken for it).
    struct Repoll<F> {
        #[pin]
        inner: F,
        state: Arc<Wakes>,
        waker: Waker,
    }
}

/// What the inner future's waker records.
#[derive(Default)]
struct Wakes {
    /// The inner future is being polled.
    polling: AtomicBool,
    /// It was woken during that poll.
    woken: AtomicBool,
    /// tokio's waker for the task, for wakes from outside a poll.
    task: Mutex<Option<Waker>>,
}

impl<F> Repoll<F> {
    fn new(inner: F) -> Self {
        let state = Arc::new(Wakes::default());
        Repoll {
            inner,
            waker: Waker::from(state.clone()),
            state,
        }
    }
}

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(SeqCst) {
            self.woken.store(true, SeqCst);
            // Still polling: the poll sees `woken` once it ends. Otherwise
            // it may have looked already, so wake the task as well.
            if self.polling.load(SeqCst) {
                return;
            }
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = &*task {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        {
            let mut task = this.state.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner_cx = Context::from_waker(this.waker);
        for _ in 0..=AGAIN {
            this.state.woken.store(false, SeqCst);
            this.state.polling.store(true, SeqCst);
            let polled = this.inner.as_mut().poll(&mut inner_cx);
            this.state.polling.store(false, SeqCst);
            if polled.is_ready() {
                // h2 may hold our waker a while longer; it need not keep
                // the finished task's memory.
                *this.state.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return polled;
            }
            if !this.state.woken.load(SeqCst) {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts the wakes that reach the task.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    /// Wakes itself while polled, `times` times, as hyper's stream task
    /// does after each frame; then is ready with how often it was polled.
    struct WakesItself {
        times: usize,
        polls: usize,
    }

    impl Future for WakesItself {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.times == 0 {
                return Poll::Ready(self.polls);
            }
            self.times -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn task() -> (Arc<Wakes>, Waker) {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        (wakes, waker)
    }

    #[test]
    fn a_task_that_wakes_itself_is_polled_again_at_once() {
        let (wakes, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut task = std::pin::pin!(Repoll::new(WakesItself { times: 1, polls: 0 }));
        assert_eq!(task.as_mut().poll(&mut cx), Poll::Ready(2));
        assert_eq!(
            wakes.0.load(SeqCst),
            0,
            "the runtime was not asked to poll it"
        );
        task.waker.wake_by_ref();
        assert_eq!(wakes.0.load(SeqCst), 0, "a finished task's waker is let go");
    }

    #[test]
    fn one_that_keeps_waking_itself_is_handed_back_to_the_runtime() {
        let (wakes, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut task = std::pin::pin!(Repoll::new(WakesItself {
            times: 10,
            polls: 0
        }));
        assert_eq!(task.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(task.inner.polls, AGAIN + 1);
        assert_eq!(wakes.0.load(SeqCst), 1, "woken once, to be polled later");
    }

    #[test]
    fn a_wake_between_polls_reaches_the_task() {
        let (wakes, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut task = std::pin::pin!(Repoll::new(rx));
        assert!(task.as_mut().poll(&mut cx).is_pending());
        tx.send(7).unwrap();
        assert_eq!(wakes.0.load(SeqCst), 1);
        assert_eq!(task.as_mut().poll(&mut cx), Poll::Ready(Ok(7)));
    }
}
