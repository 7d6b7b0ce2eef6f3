//! `seaportctl proxy http`: an HTTP/1.1 and HTTP/2 gateway on hyper, over
//! TLS when asked. Bodies stream both ways; an upgrade (WebSocket) becomes
//! a tunnel; a request that failed before its instance answered is tried
//! on another when that is safe.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::ServerConfig;
use seaport_client::Service;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::balance::{Lease, Pool};
use super::body::{Body, Outgoing, Replay};
use super::pools::{PoolError, Pools};
use super::routes::{self, Miss, Target, USAGE};
use super::{Common, headers, held_off, log};

/// Instances tried at most for one request.
const MAX_ATTEMPTS: usize = 3;
/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's state, shared by every connection.
struct Gateway {
    pools: Arc<Pools>,
    hosts: Vec<(String, Arc<Pool>)>,
    upstream: Client<HttpConnector, Outgoing>,
    proto: &'static str,
}

/// Serves until SIGINT or SIGTERM, then lets requests in flight finish
/// for up to the grace.
pub(crate) async fn serve(
    listener: TcpListener,
    pools: Arc<Pools>,
    hosts: Vec<(String, Arc<Pool>)>,
    tls: Option<Arc<ServerConfig>>,
    common: &Common,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(common.connect_timeout));
    let gateway = Arc::new(Gateway {
        pools,
        hosts,
        upstream: Client::builder(TokioExecutor::new()).build(connector),
        proto: if tls.is_some() { "https" } else { "http" },
    });
    let acceptor = tls.map(TlsAcceptor::from);
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    log(format!(
        "proxy http listening on {}://{local}",
        gateway.proto
    ));
    let server = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let stop = super::stopping();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, mostly: wait rather than spin.
                    log(format!("proxy http {local}: accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            gateway: gateway.clone(),
            server: server.clone(),
            watcher: graceful.watcher(),
            peer,
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => connection.serve(stream).await,
                Some(acceptor) => {
                    // A client that cannot speak our TLS learns why from its own library.
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    if let Ok(Ok(tls)) = handshake.await {
                        connection.serve(tls).await;
                    }
                }
            }
        });
    }
    drop(listener);
    super::drain(graceful.shutdown(), common.grace).await;
}

/// One client connection.
struct Connection {
    gateway: Arc<Gateway>,
    server: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    peer: SocketAddr,
}

impl Connection {
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            gateway,
            server,
            watcher,
            peer,
        } = self;
        let service = hyper::service::service_fn(move |request| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle(request, peer).await) }
        });
        let connection = server
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        // A client that goes away mid-request is no news.
        let _ = watcher.watch(connection).await;
    }
}

/// Where a request may go.
enum Dest {
    /// Any instance of a role.
    Role(Arc<Pool>),
    /// This instance only.
    Instance(Service),
}

impl Dest {
    fn choose(&self, tried: &[String]) -> Option<Service> {
        match self {
            Dest::Role(pool) => pool.choose(tried),
            Dest::Instance(service) => tried.is_empty().then(|| service.clone()),
        }
    }

    fn name(&self) -> String {
        match self {
            Dest::Role(pool) => pool.pattern.clone(),
            Dest::Instance(service) => format!("instance {}", service.id),
        }
    }
}

impl Gateway {
    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let host = request.headers().get(HOST).cloned().or_else(|| {
            let authority = request.uri().authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        let host_text = host.as_ref().and_then(|h| h.to_str().ok());
        if let Some(pool) = routes::host_rule(&self.hosts, host_text) {
            let path = request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let dest = Dest::Role(pool.clone());
            return self.forward(dest, request, path, host, peer).await;
        }
        let uri = request.uri();
        let target = match routes::parse(uri.path(), uri.query()) {
            Ok(target) => target,
            Err(Miss::NotFound) => {
                let why = format!("no route for {}: {USAGE}", uri.path());
                return plain(StatusCode::NOT_FOUND, why);
            }
            Err(Miss::Bad(why)) => return plain(StatusCode::BAD_REQUEST, why),
        };
        match target {
            Target::Role { pattern, path } => match self.pools.get(&pattern).await {
                Ok(pool) => {
                    self.forward(Dest::Role(pool), request, path, host, peer)
                        .await
                }
                Err(e) => unavailable(e),
            },
            Target::List { pattern } => match self.pools.get(&pattern).await {
                Ok(pool) => list(&pool.catalog().services()),
                Err(e) => unavailable(e),
            },
            Target::Instance { id, path } => match self.pools.get("").await {
                Ok(all) => match all.catalog().service(&id) {
                    Some(service) => {
                        let dest = Dest::Instance(service);
                        self.forward(dest, request, path, host, peer).await
                    }
                    None => plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("no instance has the id {id:?}"),
                    ),
                },
                Err(e) => unavailable(e),
            },
        }
    }

    /// Sends the request to an instance of `dest` at `path`, trying
    /// another when the first failed before it answered and sending again
    /// is safe: nothing reached the instance (it refused the connection),
    /// or the method is idempotent; in both cases only while the body is
    /// unread, as it is never buffered.
    async fn forward(
        &self,
        dest: Dest,
        mut request: Request<Incoming>,
        path: String,
        host: Option<HeaderValue>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let protocol = headers::upgrade(request.headers());
        let client_upgrade = protocol.is_some().then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        headers::to_instance(&mut parts.headers, protocol, peer.ip(), host, self.proto);
        let idempotent = parts.method.is_idempotent();
        let replay = Replay::new(body);
        let instances = self.pools.instances();
        let mut tried = Vec::new();
        let mut failure = None;
        while tried.len() < MAX_ATTEMPTS {
            let Some(service) = dest.choose(&tried) else {
                break;
            };
            let uri = match Uri::try_from(format!("http://{}{path}", service.address())) {
                Ok(uri) => uri,
                Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{path:?}: {e}")),
            };
            let mut attempt = Request::new(replay.attempt());
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = uri;
            *attempt.headers_mut() = parts.headers.clone();
            let lease = instances.lease(&service.id);
            match self.upstream.request(attempt).await {
                Ok(response) => {
                    instances.succeeded(&service.id);
                    return respond(response, parts.version, lease, client_upgrade);
                }
                Err(e) => {
                    let nothing_sent = e.is_connect();
                    failure = Some(held_off(instances, &dest.name(), &service, &causes(&e)));
                    tried.push(service.id);
                    if !(replay.is_unread() && (nothing_sent || idempotent)) {
                        break;
                    }
                }
            }
        }
        match failure {
            None => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                match &dest {
                    Dest::Role(pool) => pool.why_none(),
                    Dest::Instance(s) => format!("instance {} is gone", s.id),
                },
            ),
            Some(why) => plain(
                StatusCode::BAD_GATEWAY,
                format!("{} failed: {why}", dest.name()),
            ),
        }
    }
}

/// The instance's answer, as the client gets it (in the client's HTTP
/// version, whatever the instance's); a switch of protocols becomes a
/// tunnel between the two upgraded connections.
fn respond(
    mut response: Response<Incoming>,
    version: Version,
    lease: Lease,
    client_upgrade: Option<OnUpgrade>,
) -> Response<Body> {
    *response.version_mut() = version;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::to_client(response.headers_mut(), switching);
    match client_upgrade {
        Some(client) if switching => {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client, upstream, lease));
            response.map(|_| Body::Text(None))
        }
        _ => response.map(|body| Body::Upstream(body, Some(lease))),
    }
}

/// Copies both ways between an upgraded client and instance.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, _lease: Lease) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Err(e) => log(format!("proxy http: upgrade failed: {}", causes(&e))),
    }
}

/// An error and its sources, as one line.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The gateway's own answer: a status and a line of plain text.
fn plain(status: StatusCode, mut text: String) -> Response<Body> {
    text.push('\n');
    let mut response = Response::new(Body::text(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A role that cannot be followed: a malformed one is the client's to fix.
fn unavailable(e: PoolError) -> Response<Body> {
    let status = match e {
        PoolError::Role(_) => StatusCode::BAD_REQUEST,
        PoolError::Refused(..) | PoolError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    plain(status, e.to_string())
}

/// `/list/...`: the instances as `seaportctl query -o json` prints them.
fn list(services: &[Service]) -> Response<Body> {
    let json = crate::output::services(services, crate::output::Format::Json, false);
    let mut response = Response::new(Body::text(json));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
