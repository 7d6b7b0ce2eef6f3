//! Serving the gRPC connections: our own accept loop and hyper's HTTP/2
//! server, as tonic's `Server` runs it, with what tonic's lacks.
//!
//! The accept loop bounds what a stranger can hold: connections past
//! `--max-connections` are closed as they arrive, accept errors such as
//! EMFILE back off rather than spin, a connection gets `--handshake-timeout`
//! for its TLS handshake and HTTP/2 preface, and one with no open call is
//! closed after `--idle-timeout`. Like tonic's, it enforces each call's
//! `grpc-timeout` on the wait for its answer.
//!
//! Streams' tasks run under our own executor: hyper sends each answer from
//! the stream's own task, and after every frame it reserves capacity for
//! the next, which h2 grants at once by waking the task that asked, the one
//! running. tokio takes a task that wakes itself as a yield: it queues it
//! again and unparks an idle worker, which wakes, finds nothing to do and
//! parks: a futex call and two context switches for each answer on a quiet
//! server, most of what a heartbeat's pong costs. So [`serve`] spawns them
//! wrapped in [`Repoll`], which polls a task that woke itself again at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tower::ServiceExt;

use crate::coalesce::Coalesced;
use crate::tls::SharedTlsConfig;

/// How connections are accepted and served.
#[derive(Clone)]
pub(crate) struct Settings {
    /// Streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// How often an idle connection is pinged.
    pub keepalive_interval: Duration,
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// How long a new connection has to complete its TLS handshake and
    /// send the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// How long a connection with no open stream is kept.
    pub idle_timeout: Duration,
    /// Where connections, refusals and failed handshakes are counted.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// The HTTP/2 client preface every gRPC connection starts with.
const PREFACE_LEN: u64 = 24;

/// Longest pause after an accept error such as EMFILE: short enough that
/// the server answers again soon after descriptors free up.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_millis(500);

/// How often a repeated warning (accept errors, refused connections) is
/// logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Serves `routes` on every connection accepted from `listener` (over TLS
/// when `tls` is set) until `shutdown` completes; then stops accepting,
/// asks every connection to finish its calls (HTTP/2 GOAWAY) and returns
/// once they all have. Dropped before then (its caller's grace ran out),
/// it closes every connection still open.
pub(crate) async fn serve(
    routes: Routes,
    listener: TcpListener,
    tls: Option<SharedTlsConfig>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    // Everything else keeps hyper's defaults. tonic passed `None` for some,
    // which for locally reset streams switched off hyper's limit of 1024,
    // a guard against reset floods (RUSTSEC-2024-0003).
    let mut builder = hyper::server::conn::http2::Builder::new(Executor);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_interval);
    let (stop_tx, stop_rx) = watch::channel(());
    let server = Server {
        routes: routes.prepare(),
        builder,
        tls,
        settings,
        stop: stop_rx,
    };
    // The connections' tasks: aborted, and so closed, if this is dropped.
    let mut connections = JoinSet::new();
    server.accept(listener, shutdown, &mut connections).await;
    let _ = stop_tx.send(());
    while connections.join_next().await.is_some() {}
}

/// What every connection's task needs.
struct Server {
    routes: Routes,
    builder: hyper::server::conn::http2::Builder<Executor>,
    tls: Option<SharedTlsConfig>,
    settings: Settings,
    /// Changes when the server stops, so each connection sends GOAWAY.
    /// (hyper-util's GracefulShutdown would do this, but its `watch` takes
    /// the connection for itself, and the idle timeout must send GOAWAY
    /// too, as tonic's `max_connection_age` must.)
    stop: watch::Receiver<()>,
}

/// Counts occurrences of a warning and logs it at most once per
/// [`WARN_EVERY`], with how many there were since.
struct Throttled {
    last: Option<Instant>,
    count: u64,
}

impl Throttled {
    fn new() -> Self {
        Throttled {
            last: None,
            count: 0,
        }
    }

    /// Counts one; true when it should be logged now, with `self.count`.
    fn hit(&mut self) -> bool {
        self.count += 1;
        let due = self.last.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            self.last = Some(Instant::now());
        }
        due
    }

    fn take(&mut self) -> u64 {
        std::mem::take(&mut self.count)
    }
}

/// True for accept errors about one connection (it went away before it
/// was accepted); any other, such as EMFILE, is about the process or the
/// system, and retrying at once would spin.
fn per_connection(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

impl Server {
    /// Accepts until `shutdown`. Returning drops the listener, so it closes
    /// at once and new clients are refused rather than left waiting.
    async fn accept(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        connections: &mut JoinSet<()>,
    ) {
        let server = Arc::new(self);
        let permits = Arc::new(Semaphore::new(server.settings.max_connections));
        let mut shutdown = std::pin::pin!(shutdown);
        let mut pause = Duration::ZERO;
        let (mut errors, mut refusals) = (Throttled::new(), Throttled::new());
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => {
                    pause = Duration::ZERO;
                    pair
                }
                Err(e) => {
                    // Out of descriptors the listener stays readable, so
                    // accepting again at once would spin: back off.
                    if !per_connection(&e) {
                        pause = (pause * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_PAUSE);
                    }
                    if errors.hit() {
                        tracing::warn!(
                            errors = errors.take(),
                            "accepting connections failed: {e}; backing off"
                        );
                    }
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                server.settings.metrics.refused();
                if refusals.hit() {
                    tracing::warn!(%peer, refused = refusals.take(), limit = server.settings.max_connections,
                        "connection refused: at --max-connections");
                }
                continue;
            };
            server.settings.metrics.connection();
            // Those that ended since the last accept.
            while connections.try_join_next().is_some() {}
            let server = server.clone();
            connections.spawn(async move {
                server.connection(tcp, peer).await;
                drop(permit);
            });
        }
    }

    /// Completes the handshakes of one connection, then serves it.
    async fn connection(&self, tcp: TcpStream, peer: std::net::SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let tcp = Coalesced::new(tcp);
        let Some(tls) = &self.tls else {
            return self.http2(Watched::new(tcp)).await;
        };
        let acceptor = crate::tls::acceptor(tls);
        let accept = acceptor.accept(tcp).into_fallible();
        match tokio::time::timeout(self.settings.handshake_timeout, accept).await {
            Ok(Ok(stream)) => self.http2(Watched::new(stream)).await,
            Ok(Err((e, mut tcp))) => {
                self.settings.metrics.handshake_failed(Some(&e));
                // The alert that tells the client why (a certificate of
                // another CA, an expired one) waits in the coalescing
                // buffer; without this flush the client sees only a close.
                let flush = tokio::io::AsyncWriteExt::flush(&mut tcp);
                let _ = tokio::time::timeout(self.settings.handshake_timeout, flush).await;
                tracing::info!(%peer, "TLS handshake failed: {e}");
            }
            Err(_) => {
                self.settings.metrics.handshake_failed(None);
                tracing::info!(%peer, "TLS handshake timed out")
            }
        }
    }

    /// Serves HTTP/2 on `io` until it ends, the server stops, the client
    /// sends no preface in time, or it has had no stream for the idle
    /// timeout.
    async fn http2<IO>(&self, io: Watched<IO>)
    where
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    {
        // What tonic's `Server` adds to each request: the peer's address
        // and, under TLS, its certificates (`Request::peer_certs`).
        let info = io.inner.connect_info();
        let activity = io.activity.clone();
        let routes = self.routes.clone();
        let tracked = activity.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(tonic::body::Body::new);
            request.extensions_mut().insert(info.clone());
            let stream = StreamGuard::new(tracked.clone());
            let deadline = request
                .headers()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_grpc_timeout);
            let answer = routes.clone().oneshot(request);
            async move {
                // The call's deadline bounds the wait for its answer, as
                // tonic's own server does; a stream, once answered, is the
                // client's to end.
                let response = match deadline {
                    Some(limit) => match tokio::time::timeout(limit, answer).await {
                        Ok(response) => response?,
                        Err(_) => tonic::Status::deadline_exceeded(format!(
                            "the call's deadline ({limit:?}) passed before it was answered"
                        ))
                        .into_http(),
                    },
                    None => answer.await?,
                };
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| tonic::body::Body::new(Guarded { body, stream })),
                )
            }
        });
        let connection = self.builder.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let mut stop = self.stop.clone();
        let no_preface = async {
            tokio::time::sleep(self.settings.handshake_timeout).await;
            if activity.read.load(SeqCst) >= PREFACE_LEN {
                std::future::pending::<()>().await;
            }
        };
        let idle = tokio::select! {
            result = &mut connection => return log_end(result),
            _ = stop.changed() => false,
            _ = no_preface => return,
            _ = activity.idle(self.settings.idle_timeout) => true,
        };
        connection.as_mut().graceful_shutdown();
        if !idle {
            return log_end(connection.await);
        }
        // An idle client that does not answer the GOAWAY's ping is closed
        // all the same.
        if let Ok(result) = tokio::time::timeout(self.settings.handshake_timeout, connection).await
        {
            log_end(result);
        }
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit.
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn log_end(result: hyper::Result<()>) {
    if let Err(e) = result {
        tracing::debug!("connection ended: {e}");
    }
}

/// What a connection has done, for the preface and idle timeouts.
#[derive(Default)]
struct Activity {
    /// Bytes read from the client.
    read: AtomicU64,
    /// Streams open now.
    streams: AtomicUsize,
    /// When the last stream ended, in milliseconds since `since`.
    last_end_ms: AtomicU64,
    since: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            since: Some(Instant::now()),
            ..Activity::default()
        }
    }

    fn now_ms(&self) -> u64 {
        self.since.map_or(0, |s| s.elapsed().as_millis() as u64)
    }

    /// Completes once the connection has had no open stream for `timeout`.
    async fn idle(&self, timeout: Duration) {
        let timeout_ms = timeout.as_millis() as u64;
        loop {
            let idle_for = self.now_ms().saturating_sub(self.last_end_ms.load(SeqCst));
            if self.streams.load(SeqCst) == 0 && idle_for >= timeout_ms {
                return;
            }
            let wait = if self.streams.load(SeqCst) == 0 {
                timeout_ms - idle_for
            } else {
                timeout_ms
            };
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        }
    }
}

/// One open stream of a connection, counted until its response ends.
struct StreamGuard(Arc<Activity>);

impl StreamGuard {
    fn new(activity: Arc<Activity>) -> Self {
        activity.streams.fetch_add(1, SeqCst);
        StreamGuard(activity)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.last_end_ms.store(activity.now_ms(), SeqCst);
        activity.streams.fetch_sub(1, SeqCst);
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its stream's guard until it is done.
    struct Guarded {
        #[pin]
        body: tonic::body::Body,
        stream: StreamGuard,
    }
}

impl hyper::body::Body for Guarded {
    type Data = <tonic::body::Body as hyper::body::Body>::Data;
    type Error = <tonic::body::Body as hyper::body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection whose reads are counted, so a client that never sends the
/// HTTP/2 preface can be told apart.
struct Watched<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO> Watched<IO> {
    fn new(inner: IO) -> Self {
        Watched {
            inner,
            activity: Arc::new(Activity::new()),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        // Only the first bytes matter (the preface); stop counting after.
        if read > 0 && self.activity.read.load(SeqCst) < PREFACE_LEN {
            self.activity.read.fetch_add(read, SeqCst);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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
    fn grpc_timeout_header_values_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(
            parse_grpc_timeout("5é"),
            None,
            "no panic on a multi-byte unit"
        );
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
