//! The background task that holds this client's session: it keeps the
//! Heartbeat stream alive, reconnects with backoff and full jitter, fails
//! over between servers, resumes the session, and when the server no longer
//! knows it, opens a new one and re-asserts this client's own registrations.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seaport::pb::{
    self, heartbeat_request::Kind as In, heartbeat_response::Kind as Out,
    registry_client::RegistryClient,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::{ClientEvent, Options};

/// The live connection and session, as RPCs use them.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub(crate) rpc: RegistryClient<Channel>,
    pub(crate) session_id: String,
    pub(crate) server: String,
}

/// State shared by the client handles and the session task.
pub(crate) struct Shared {
    pub(crate) options: Options,
    endpoints: Mutex<Endpoints>,
    /// The current connection; `None` while (re)connecting.
    pub(crate) conn: watch::Sender<Option<Conn>>,
    /// This client's own registrations, as they would be re-asserted.
    pub(crate) owned: Mutex<BTreeMap<String, pb::RegisterRequest>>,
    pub(crate) events: broadcast::Sender<ClientEvent>,
    /// Flips to true when the client closes.
    pub(crate) closed: watch::Sender<bool>,
}

/// Configured servers first, then those learned from `seaport@*`
/// registrations, tried round robin from a random start, so that clients
/// given the same list spread over the servers rather than all taking the
/// first. None is ever dropped: a server that comes back is tried again.
struct Endpoints {
    all: Vec<String>,
    next: usize,
}

impl Endpoints {
    fn new(all: Vec<String>) -> Self {
        let next = fastrand::usize(..all.len().max(1));
        Endpoints { all, next }
    }

    fn next(&mut self) -> String {
        let e = self.all[self.next % self.all.len()].clone();
        self.next = (self.next + 1) % self.all.len();
        e
    }

    fn learn(&mut self, address: String) {
        if !self.all.contains(&address) {
            tracing::debug!(%address, "learned a registry server");
            self.all.push(address);
        }
    }
}

/// How one attempt to hold a session ended.
enum Ended {
    /// The client closed; stop.
    Closed,
    /// The server forgot the session: open a new one at once.
    SessionLost,
    /// The connection or stream failed; `was_up` if a session was held.
    Failed { reason: String, was_up: bool },
}

impl Shared {
    pub(crate) fn new(options: Options, endpoints: Vec<String>) -> Self {
        Shared {
            options,
            endpoints: Mutex::new(Endpoints::new(endpoints)),
            conn: watch::Sender::new(None),
            owned: Mutex::new(BTreeMap::new()),
            events: broadcast::Sender::new(64),
            closed: watch::Sender::new(false),
        }
    }

    pub(crate) fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(event);
    }

    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all
            .clone()
    }

    /// Stops re-asserting registration `id`.
    pub(crate) fn forget(&self, id: &str) {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn owned_requests(&self) -> Vec<pb::RegisterRequest> {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Runs until the client closes.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut session: Option<String> = None;
    let mut failures = 0u32;
    let mut closed = shared.closed.subscribe();
    loop {
        let server = shared
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next();
        match hold(&shared, &server, &mut session).await {
            Ended::Closed => break,
            Ended::SessionLost => {
                shared.conn.send_replace(None);
                shared.emit(ClientEvent::SessionLost);
                session = None;
                continue;
            }
            Ended::Failed { reason, was_up } => {
                if shared.conn.send_replace(None).is_some() || was_up {
                    shared.emit(ClientEvent::Disconnected {
                        server: server.clone(),
                        reason: reason.clone(),
                    });
                    failures = 0;
                }
                tracing::debug!(%server, %reason, "session attempt failed");
                failures = failures.saturating_add(1);
                let pause = full_jitter(
                    shared.options.backoff_base,
                    shared.options.backoff_max,
                    failures,
                );
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = until_closed(&mut closed) => break,
                }
            }
        }
    }
    shared.conn.send_replace(None);
}

/// A random pause in `[0, min(max, base * 2^attempt))`: spread out so that
/// many clients do not reconnect in step after a registry restart.
pub(crate) fn full_jitter(base: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(max);
    ceiling.mul_f64(fastrand::f64())
}

/// Completes when the client closes.
pub(crate) async fn until_closed(closed: &mut watch::Receiver<bool>) {
    let _ = closed.wait_for(|c| *c).await;
}

fn msg(kind: In) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest { kind: Some(kind) }
}

fn failed(reason: impl ToString, was_up: bool) -> Ended {
    Ended::Failed {
        reason: reason.to_string(),
        was_up,
    }
}

/// The endpoint for `server`, with TLS when configured.
pub(crate) fn endpoint(options: &Options, server: &str) -> Result<Endpoint, String> {
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{server}"))
        .map_err(|e| format!("bad address {server:?}: {e}"))?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true);
    let Some(tls) = &options.tls else {
        return Ok(endpoint);
    };
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = &tls.ca {
        config = config.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    endpoint
        .tls_config(config)
        .map_err(|e| format!("TLS settings: {e}"))
}

/// Connects to `server`, opens or resumes the session and keeps it alive.
async fn hold(shared: &Shared, server: &str, session: &mut Option<String>) -> Ended {
    let options = &shared.options;
    let endpoint = match endpoint(options, server) {
        Ok(e) => e,
        Err(e) => return failed(e, false),
    };
    let channel = match tokio::time::timeout(options.connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => return failed(e, false),
        Err(_) => return failed("connect timed out", false),
    };
    let mut rpc = RegistryClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let first = match session {
        Some(id) => In::Resume(pb::ResumeSession {
            session_id: id.clone(),
        }),
        None => In::Open(pb::OpenSession {
            ttl_ms: options.ttl.as_millis() as u64,
            client_name: options.client_name.clone(),
        }),
    };
    let _ = tx.send(msg(first)).await;
    let opening = async {
        let mut stream = rpc.heartbeat(ReceiverStream::new(rx)).await?.into_inner();
        match stream.message().await? {
            Some(pb::HeartbeatResponse {
                kind: Some(Out::Opened(opened)),
            }) => Ok((stream, opened)),
            other => Err(Status::internal(format!(
                "expected `opened`, got {other:?}"
            ))),
        }
    };
    let (mut stream, opened) = match tokio::time::timeout(options.connect_timeout, opening).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(status)) if status.code() == Code::NotFound && session.is_some() => {
            return Ended::SessionLost;
        }
        Ok(Err(status)) => return failed(status.message(), false),
        Err(_) => return failed("no answer to open or resume", false),
    };
    *session = Some(opened.session_id.clone());
    if !opened.resumed {
        reassert(shared, &mut rpc, &opened.session_id).await;
    }
    shared.conn.send_replace(Some(Conn {
        rpc: rpc.clone(),
        session_id: opened.session_id.clone(),
        server: server.to_string(),
    }));
    shared.emit(ClientEvent::Connected {
        server: server.to_string(),
        observed_host: opened.observed_host,
    });
    learn_servers(shared, &mut rpc).await;

    let ttl = Duration::from_millis(opened.ttl_ms.max(1));
    let mut ticks = tokio::time::interval(ttl / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_answer = tokio::time::Instant::now();
    let mut closed = shared.closed.subscribe();
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if last_answer.elapsed() > ttl {
                    return failed("no answer to pings within the session ttl", true);
                }
                seq += 1;
                if tx.send(msg(In::Ping(pb::Ping { seq }))).await.is_err() {
                    return failed("heartbeat stream closed", true);
                }
            }
            reply = stream.message() => match reply {
                Ok(Some(pb::HeartbeatResponse { kind: Some(Out::Evicted(evicted)) })) => {
                    last_answer = tokio::time::Instant::now();
                    shared.forget(&evicted.id);
                    tracing::warn!(id = %evicted.id, by = %evicted.by, "an admin freed a registration of this client");
                    shared.emit(ClientEvent::Evicted { id: evicted.id, by: evicted.by });
                }
                Ok(Some(_)) => last_answer = tokio::time::Instant::now(),
                Ok(None) => return failed("the server ended the session stream", true),
                Err(status) if status.code() == Code::NotFound => return Ended::SessionLost,
                Err(status) => return failed(status.message(), true),
            },
            _ = until_closed(&mut closed) => {
                shared.conn.send_replace(None);
                let _ = tx.send(msg(In::Close(pb::CloseSession {}))).await;
                let _ = tokio::time::timeout(options.connect_timeout, stream.message()).await;
                return Ended::Closed;
            }
        }
    }
}

/// Registers this client's own registrations again under a new session,
/// with their ids, hosts and ports.
async fn reassert(shared: &Shared, rpc: &mut RegistryClient<Channel>, session_id: &str) {
    let owned = shared.owned_requests();
    if owned.is_empty() {
        return;
    }
    let mut count = 0;
    for mut request in owned {
        request.session_id = session_id.to_string();
        let id = request.id.clone();
        match rpc.register(request).await {
            Ok(_) => count += 1,
            Err(status) => {
                tracing::warn!(%id, reason = status.message(), "could not re-assert a registration");
                shared.emit(ClientEvent::ReassertFailed {
                    id,
                    reason: status.message().to_string(),
                });
            }
        }
    }
    shared.emit(ClientEvent::Reasserted { count });
}

/// Adds the registry servers registered as `seaport@*` to the endpoints.
async fn learn_servers(shared: &Shared, rpc: &mut RegistryClient<Channel>) {
    let request = pb::QueryRequest {
        pattern: "seaport".into(),
        ..Default::default()
    };
    let Ok(found) = rpc.query(request).await else {
        return;
    };
    let mut endpoints = shared.endpoints.lock().unwrap_or_else(|e| e.into_inner());
    for s in found.into_inner().services {
        let address = if s.host.contains(':') {
            format!("[{}]:{}", s.host, s.port)
        } else {
            format!("{}:{}", s.host, s.port)
        };
        endpoints.learn(address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_the_growing_ceiling() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..40 {
            let ceiling = (base * 2u32.pow(attempt.min(16))).min(max);
            for _ in 0..50 {
                assert!(full_jitter(base, max, attempt) <= ceiling);
            }
        }
        let spread: std::collections::HashSet<_> =
            (0..20).map(|_| full_jitter(base, max, 5)).collect();
        assert!(spread.len() > 10, "pauses are random, not in step");
    }

    #[test]
    fn clients_given_the_same_servers_start_at_different_ones() {
        let servers = vec!["a:1".to_string(), "b:2".into(), "c:3".into()];
        let firsts: std::collections::HashSet<String> = (0..60)
            .map(|_| Endpoints::new(servers.clone()).next())
            .collect();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }

    #[test]
    fn endpoints_rotate_and_learn_each_address_once() {
        let mut e = Endpoints {
            all: vec!["a:1".into(), "b:2".into()],
            next: 0,
        };
        e.learn("c:3".into());
        e.learn("a:1".into());
        let order: Vec<_> = (0..4).map(|_| e.next()).collect();
        assert_eq!(order, ["a:1", "b:2", "c:3", "a:1"]);
    }
}
