//! The web console (`--console-listen`): pages for people who would rather
//! look than read, served from files built into the binary, over HTTP, or
//! HTTPS with the main port's certificate.
//!
//! It reads the registry in this process, as the RPCs do: each open page
//! follows a registry Watch through server-sent events ([`events`]). It is
//! read-only for everyone; under mTLS an admin's certificate also frees and
//! drains, through the same rules as the RPCs ([`api`]). When reads need a
//! certificate, every request without one is refused.

mod api;
mod events;
mod facts;
mod recent;

pub(crate) use facts::About;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::auth::Auth;
use crate::registry::Registry;
use crate::tls::SharedTlsConfig;
use recent::Recent;

/// Consoles open at once on one server; more are refused.
pub(super) const MAX_VIEWERS: usize = 256;
/// Connections served at once; more are closed as they arrive.
const MAX_CONNECTIONS: usize = 512;
/// HTTP/2 streams one connection may hold (a page holds one or two).
const MAX_STREAMS: u32 = 32;

/// What the console needs of the server.
pub(crate) struct Context {
    /// The registry, in this process.
    pub(crate) registry: Registry,
    /// mTLS and whether reads need a certificate.
    pub(crate) auth: Arc<Auth>,
    /// The main port's TLS config, also the console's.
    pub(crate) tls: Option<SharedTlsConfig>,
    /// Whether the server reports SERVING.
    pub(crate) ready: watch::Receiver<bool>,
    /// gRPC Watch streams open.
    pub(crate) watchers: Arc<AtomicUsize>,
    /// Flips to true when the server stops serving.
    pub(crate) stop: watch::Receiver<bool>,
    /// What the server is.
    pub(crate) about: About,
    /// How long a connection has for its TLS handshake.
    pub(crate) handshake_timeout: Duration,
}

/// The console's state, shared by its tasks and requests.
struct Console {
    registry: Registry,
    auth: Arc<Auth>,
    about: About,
    recent: Arc<Mutex<Recent>>,
    /// The last revision `recent` has noted.
    seen: watch::Receiver<u64>,
    /// The server page's facts, as JSON.
    facts: watch::Receiver<Arc<str>>,
    ready: watch::Receiver<bool>,
    watchers: Arc<AtomicUsize>,
    /// A permit per open console.
    viewers: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl Console {
    /// Consoles open now.
    fn viewers(&self) -> usize {
        MAX_VIEWERS - self.viewers.available_permits()
    }
}

/// Who sent a request: its address and, under mTLS, its certificate's
/// identity.
#[derive(Clone, Debug)]
struct Peer {
    addr: SocketAddr,
    identity: Option<String>,
}

/// Completes once the server stops.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Milliseconds since the epoch, as the page's clock counts.
fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Serves the console on `listener` until the server stops.
pub(crate) fn spawn(listener: TcpListener, context: Context) {
    let Context {
        registry,
        auth,
        tls,
        ready,
        watchers,
        stop,
        about,
        handshake_timeout,
    } = context;
    let (feed, revision) = registry.changes();
    let recent = Arc::new(Mutex::new(Recent::new(revision, SystemTime::now())));
    let (seen_tx, seen) = watch::channel(revision);
    let (facts_tx, facts) = watch::channel(Arc::<str>::from("{}"));
    let console = Arc::new(Console {
        registry: registry.clone(),
        auth,
        about,
        recent: recent.clone(),
        seen,
        facts,
        ready,
        watchers,
        viewers: Arc::new(Semaphore::new(MAX_VIEWERS)),
        stop: stop.clone(),
    });
    facts_tx.send_replace(facts::now(&console).to_string().into());
    tokio::spawn(recent::follow(registry, feed, recent, seen_tx, stop));
    tokio::spawn(facts::keep(console.clone(), facts_tx));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(console = %addr, https = tls.is_some(), "web console serving");
    }
    tokio::spawn(accept(listener, console, tls, handshake_timeout));
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/console.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/console.js",
            get(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        )
        .route("/api/events", get(events::events))
        .route("/api/check", get(api::check))
        .route("/api/free", post(api::free))
        .route("/api/drain", post(api::drain))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: the console is at /, its API under /api/\n",
            )
        })
        .with_state(console)
}

const INDEX: &str = include_str!("assets/index.html");
const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// A built-in file. The page loads nothing from elsewhere and runs no
/// inline script, and says so to the browser.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Accepts connections until the server stops.
async fn accept(
    listener: TcpListener,
    console: Arc<Console>,
    tls: Option<SharedTlsConfig>,
    handshake_timeout: Duration,
) {
    let router = router(console.clone());
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut stop = console.stop.clone();
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors, the listener stays readable: pause
                // rather than spin.
                tracing::debug!("console: accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let (router, auth, tls, stop) = (
            router.clone(),
            console.auth.clone(),
            tls.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let Some(tls) = tls else {
                let peer = Peer {
                    addr,
                    identity: None,
                };
                return serve(TokioIo::new(tcp), peer, router, auth, stop).await;
            };
            let handshake = tokio::time::timeout(handshake_timeout, acceptor(&tls).accept(tcp));
            let Ok(Ok(stream)) = handshake.await else {
                return;
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(crate::auth::identity);
            serve(
                TokioIo::new(stream),
                Peer { addr, identity },
                router,
                auth,
                stop,
            )
            .await;
        });
    }
}

/// The main port's TLS config in force, offering HTTP/1.1 as well as
/// HTTP/2, as browsers and curl expect.
fn acceptor(tls: &SharedTlsConfig) -> TlsAcceptor {
    let mut config = (**tls.read().unwrap_or_else(|e| e.into_inner())).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Serves one connection until it closes, or, once the server stops,
/// until its requests in flight finish (event streams end at the stop).
async fn serve<I>(
    io: TokioIo<I>,
    peer: Peer,
    router: Router,
    auth: Arc<Auth>,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let (router, peer) = (router.clone(), peer.clone());
        let refused = auth.mtls && auth.require_cert_for_reads && peer.identity.is_none();
        async move {
            if refused {
                return Ok(no_certificate());
            }
            request.extensions_mut().insert(peer);
            router.oneshot(request).await
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// The answer to a request without a certificate when reads need one.
fn no_certificate() -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        "this server requires a client certificate for reads (--require-client-cert-for-reads), \
         and so does its console: give your browser a certificate signed by the server's --client-ca\n",
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
