//! The background task that holds this client's connection and, once a
//! write needs one, its session. Reads need no session: until the first
//! register, bind, update or free the task only keeps a connection to a
//! server that answers. From then on it keeps the Heartbeat stream alive,
//! reconnects with backoff and full jitter, fails over between servers,
//! resumes the session, and when the server no longer knows it, opens a new
//! one and re-asserts this client's own registrations.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seaport::pb::{
    self, heartbeat_request::Kind as In, heartbeat_response::Kind as Out,
    registry_client::RegistryClient,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::connect::{self, Connector, Seen, Trouble};
use crate::{ClientEvent, Error, Options};

/// The live connection, and the session held through it if any.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub(crate) rpc: RegistryClient<Channel>,
    pub(crate) server: String,
    /// Which connection this is, counted from 1, so that a call that saw
    /// this one fail can wait for a later one.
    pub(crate) number: u64,
    /// The session held through it; none until a write asks for one.
    pub(crate) session_id: Option<String>,
    /// The TLS failure its connections last met, if any.
    pub(crate) seen: Seen,
}

/// One of this client's own registrations, as it would be re-asserted.
#[derive(Clone, Debug)]
pub(crate) struct Owned {
    pub(crate) request: pb::RegisterRequest,
    /// Drained by this client: drained again when re-asserted.
    pub(crate) draining: bool,
}

/// Whether the client wants a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// Reads only: no session.
    Nothing,
    /// A write asked for one: hold it from now on.
    Session,
    /// The server refused to open one, and asking again would not change
    /// that (UNAUTHENTICATED, PERMISSION_DENIED); the next write asks again.
    Refused {
        /// The server's code.
        code: Code,
        /// The server's message, with what the session was for.
        message: String,
    },
}

/// State shared by the client handles and the session task.
pub(crate) struct Shared {
    pub(crate) options: Options,
    connector: Connector,
    endpoints: Mutex<Endpoints>,
    /// The configured servers, as given.
    configured: Vec<String>,
    /// The current connection; `None` while (re)connecting.
    pub(crate) conn: watch::Sender<Option<Conn>>,
    /// Whether a write asked for a session; set by the writers, read by
    /// the task.
    pub(crate) want: watch::Sender<Want>,
    /// Why each server failed at its last attempt; a server that works
    /// again is taken out.
    troubles: watch::Sender<BTreeMap<String, Trouble>>,
    /// The number of the latest connection a call found broken, and why.
    broken: watch::Sender<(u64, String)>,
    /// The server's answer when it last failed to open or resume the
    /// session (and asking again may help: UNAVAILABLE, say); cleared when
    /// one is held.
    session_failure: Mutex<Option<Status>>,
    /// This client's own registrations, as they would be re-asserted.
    pub(crate) owned: Mutex<BTreeMap<String, Owned>>,
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

/// How one connection ended.
enum Ended {
    /// The client closed; stop.
    Closed,
    /// The server forgot the session: open a new one at once.
    SessionLost,
    /// The connection or stream failed; `was_up` if it had worked.
    Failed { reason: String, was_up: bool },
    /// The server is stopping: resume the session at the next server now.
    Moving,
}

impl Shared {
    pub(crate) fn new(options: Options, endpoints: Vec<String>, connector: Connector) -> Self {
        Shared {
            options,
            connector,
            configured: endpoints.clone(),
            endpoints: Mutex::new(Endpoints::new(endpoints)),
            conn: watch::Sender::new(None),
            want: watch::Sender::new(Want::Nothing),
            troubles: watch::Sender::new(BTreeMap::new()),
            broken: watch::Sender::new((0, String::new())),
            session_failure: Mutex::new(None),
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

    fn owned_requests(&self) -> Vec<Owned> {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn troubles(&self) -> watch::Receiver<BTreeMap<String, Trouble>> {
        self.troubles.subscribe()
    }

    /// Tells the task that a call found connection `conn` broken, so that
    /// a client holding no session (no Heartbeat stream to notice) moves on
    /// to the next server.
    pub(crate) fn report_broken(&self, conn: &Conn, trouble: &Trouble) {
        self.broken.send_if_modified(|(number, reason)| {
            let newer = *number < conn.number;
            if newer {
                *number = conn.number;
                *reason = trouble.to_string();
            }
            newer
        });
    }

    /// The error for a caller that waited for a connection in vain: a TLS
    /// failure if any server gave one, since that is what to fix; else no
    /// server reachable, each address with its reason.
    pub(crate) fn stuck(&self) -> Error {
        let troubles = self.troubles.borrow();
        if let Some((server, tls)) = troubles.iter().find(|(_, t)| matches!(t, Trouble::Tls(_))) {
            return tls.error(server);
        }
        let list: Vec<String> = self
            .endpoints()
            .into_iter()
            .map(|e| match troubles.get(&e) {
                Some(t) => format!("{e} ({t})"),
                None => e,
            })
            .collect();
        Error::Unavailable(list.join(", "))
    }

    /// The error for a write that waited for the session in vain: the
    /// server's answer if it refused one, else as [`stuck`](Self::stuck).
    pub(crate) fn session_stuck(&self) -> Error {
        let failure = self
            .session_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match &*failure {
            Some(status) => Error::Status {
                code: status.code(),
                message: format!(
                    "the server could not open a session, which register, bind, update and free need: {}",
                    status.message()
                ),
            },
            None => self.stuck(),
        }
    }

    fn note_session_failure(&self, status: Option<Status>) {
        *self
            .session_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// When every configured server failed with TLS (which waiting does
    /// not mend), the error to give up with.
    pub(crate) fn all_refuse_tls(&self) -> Option<Error> {
        let troubles = self.troubles.borrow();
        let each: Option<Vec<&Trouble>> = self.configured.iter().map(|e| troubles.get(e)).collect();
        let each = each?;
        if !each.iter().all(|t| matches!(t, Trouble::Tls(_))) {
            return None;
        }
        let first = &self.configured[0];
        Some(troubles[first].error(first))
    }

    fn note(&self, server: &str, trouble: Trouble) {
        self.troubles.send_modify(|t| {
            t.insert(server.to_string(), trouble);
        });
    }

    fn clear(&self, server: &str) {
        self.troubles
            .send_if_modified(|t| t.remove(server).is_some());
    }

    fn next_endpoint(&self) -> String {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next()
    }

    /// Adds the registry servers registered as `seaport@*` to the endpoints.
    fn learn(&self, found: pb::QueryResponse) {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        for s in found.services {
            let address = if s.host.contains(':') {
                format!("[{}]:{}", s.host, s.port)
            } else {
                format!("{}:{}", s.host, s.port)
            };
            endpoints.learn(address);
        }
    }
}

/// Runs until the client closes.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut session: Option<String> = None;
    let mut failures = 0u32;
    let mut number = 0;
    let mut closed = shared.closed.subscribe();
    let tls = shared.options.tls.is_some();
    loop {
        let server = shared.next_endpoint();
        number += 1;
        // The probe: servers registered as `seaport@*`, learned for failover.
        let servers = |channel| async move {
            RegistryClient::new(channel)
                .query(pb::QueryRequest {
                    pattern: "seaport".into(),
                    ..Default::default()
                })
                .await
        };
        let connected = tokio::select! {
            connected = connect::connect(&shared.connector, &shared.options, &server, servers) => connected,
            _ = until_closed(&mut closed) => break,
        };
        let ended = match connected {
            Ok((channel, seen, found)) => {
                shared.clear(&server);
                if let Ok(found) = found {
                    shared.learn(found.into_inner());
                }
                let link = Link {
                    rpc: RegistryClient::new(channel),
                    server: &server,
                    number,
                    seen,
                    tls,
                };
                run_link(&shared, &link, &mut session).await
            }
            Err(trouble) => {
                shared.note(&server, trouble.clone());
                failed(trouble, false)
            }
        };
        // A stopping server: with another server to go to, move at once;
        // with none, reconnect as after a drop, so as not to spin on a
        // server that is going away.
        let ended = match ended {
            Ended::Moving if shared.endpoints().len() <= 1 => failed(STOPPING, true),
            other => other,
        };
        match ended {
            Ended::Closed => break,
            Ended::SessionLost => {
                shared.conn.send_replace(None);
                shared.emit(ClientEvent::SessionLost);
                session = None;
                continue;
            }
            Ended::Moving => {
                tracing::info!(%server, "the server is stopping; moving to the next");
                shared.emit(ClientEvent::Disconnected {
                    server: server.clone(),
                    reason: STOPPING.into(),
                });
                failures = 0;
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
                tracing::debug!(%server, %reason, "connection attempt failed");
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

/// Why a client left a server that told it it is stopping.
const STOPPING: &str = "the server is stopping";

fn msg(kind: In) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest { kind: Some(kind) }
}

fn failed(reason: impl ToString, was_up: bool) -> Ended {
    Ended::Failed {
        reason: reason.to_string(),
        was_up,
    }
}

/// One connection the task made.
struct Link<'a> {
    rpc: RegistryClient<Channel>,
    server: &'a str,
    /// Counted from 1 over the client's life.
    number: u64,
    seen: Seen,
    tls: bool,
}

impl Link<'_> {
    /// The connection as calls use it, with `session_id` if one is held.
    fn conn(&self, session_id: Option<String>) -> Conn {
        Conn {
            rpc: self.rpc.clone(),
            server: self.server.to_string(),
            number: self.number,
            session_id,
            seen: self.seen.clone(),
        }
    }
}

/// Serves calls over `link` until it fails or the client closes: reads
/// need nothing more; once a write wants a session, holds one through it.
/// `Connected` is told once per connection: when it is up for reads, or,
/// for a client that wants a session, once that is held.
async fn run_link(shared: &Shared, link: &Link<'_>, session: &mut Option<String>) -> Ended {
    let mut want = shared.want.subscribe();
    let mut closed = shared.closed.subscribe();
    let mut broken = shared.broken.subscribe();
    let mut told = false;
    loop {
        if *want.borrow_and_update() == Want::Session {
            match hold(shared, link, session, &mut told).await {
                Ok(ended) => return ended,
                // The connection stays, for reads.
                Err(refusal) => {
                    refused(shared, session, refusal);
                    want.borrow_and_update();
                }
            }
        }
        shared.conn.send_replace(Some(link.conn(None)));
        if !told {
            told = true;
            shared.emit(ClientEvent::Connected {
                server: link.server.to_string(),
                observed_host: String::new(),
            });
        }
        tokio::select! {
            _ = until_closed(&mut closed) => return Ended::Closed,
            _ = want.changed() => {}
            found = broken.wait_for(|(n, _)| *n >= link.number) => {
                let reason = found.map(|b| b.1.clone()).unwrap_or_default();
                return failed(reason, true);
            }
        }
    }
}

/// The server refused the session for good: no more asking until the next
/// write, whose caller is told why; registrations of a session lost this way
/// cannot be re-asserted.
fn refused(shared: &Shared, session: &mut Option<String>, Refusal { code, message }: Refusal) {
    tracing::warn!(?code, %message, "the server refused this client a session");
    if session.take().is_some() {
        for owned in shared.owned_requests() {
            shared.emit(ClientEvent::ReassertFailed {
                id: owned.request.id,
                reason: message.clone(),
            });
        }
    }
    shared.want.send_replace(Want::Refused {
        code,
        message: format!(
            "the server refused to open a session, which register, bind, update and free need: {message}"
        ),
    });
}

/// The server's final no to opening or resuming a session: UNAUTHENTICATED
/// or PERMISSION_DENIED, which asking again would not change.
struct Refusal {
    code: Code,
    message: String,
}

/// Opens or resumes the session over `link` and keeps it alive until the
/// connection fails or the client closes.
async fn hold(
    shared: &Shared,
    link: &Link<'_>,
    session: &mut Option<String>,
    told: &mut bool,
) -> Result<Ended, Refusal> {
    let options = &shared.options;
    let mut rpc = link.rpc.clone();
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
        Ok(Err(status)) => {
            return match connect::status_trouble(&status, &link.seen, link.tls, false) {
                Some(trouble) => Ok(failed(trouble, false)),
                None if status.code() == Code::NotFound && session.is_some() => {
                    Ok(Ended::SessionLost)
                }
                None if crate::is_final(status.code()) => Err(Refusal {
                    code: status.code(),
                    message: status.message().to_string(),
                }),
                None => {
                    let reason = status.message().to_string();
                    shared.note_session_failure(Some(status));
                    Ok(failed(reason, false))
                }
            };
        }
        Err(_) => return Ok(failed("no answer to open or resume", false)),
    };
    *session = Some(opened.session_id.clone());
    shared.note_session_failure(None);
    if opened.resumed {
        shared.emit(ClientEvent::Resumed {
            server: link.server.to_string(),
        });
    } else {
        reassert(shared, &mut rpc, &opened.session_id).await;
    }
    shared
        .conn
        .send_replace(Some(link.conn(Some(opened.session_id.clone()))));
    if !*told {
        *told = true;
        shared.emit(ClientEvent::Connected {
            server: link.server.to_string(),
            observed_host: opened.observed_host,
        });
    }

    let ttl = Duration::from_millis(opened.ttl_ms.max(1));
    let mut ticks = tokio::time::interval(ttl / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_answer = tokio::time::Instant::now();
    let mut closed = shared.closed.subscribe();
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                // Pings go every third of the ttl and a pong takes a round
                // trip: none for half the ttl is a dead path, declared
                // while the session can still be resumed elsewhere.
                if last_answer.elapsed() > ttl / 2 {
                    return Ok(failed("no answer to pings within half the session ttl", true));
                }
                seq += 1;
                if tx.send(msg(In::Ping(pb::Ping { seq }))).await.is_err() {
                    return Ok(failed("heartbeat stream closed", true));
                }
            }
            reply = stream.message() => match reply {
                Ok(Some(pb::HeartbeatResponse { kind: Some(Out::Evicted(evicted)) })) => {
                    last_answer = tokio::time::Instant::now();
                    shared.forget(&evicted.id);
                    tracing::warn!(id = %evicted.id, by = %evicted.by, "an admin freed a registration of this client");
                    shared.emit(ClientEvent::Evicted { id: evicted.id, by: evicted.by });
                }
                Ok(Some(pb::HeartbeatResponse { kind: Some(Out::Stopping(_)) })) => {
                    shared.conn.send_replace(None);
                    return Ok(Ended::Moving);
                }
                Ok(Some(_)) => last_answer = tokio::time::Instant::now(),
                Ok(None) => return Ok(failed("the server ended the session stream", true)),
                Err(status) if status.code() == Code::NotFound => return Ok(Ended::SessionLost),
                Err(status) => return Ok(failed(status.message(), true)),
            },
            _ = until_closed(&mut closed) => {
                shared.conn.send_replace(None);
                let _ = tx.send(msg(In::Close(pb::CloseSession {}))).await;
                // A pong on its way comes first; the registrations are
                // freed when `closed` comes.
                let confirmed = async {
                    while let Ok(Some(reply)) = stream.message().await {
                        if matches!(reply.kind, Some(Out::Closed(_))) {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(options.connect_timeout, confirmed).await;
                return Ok(Ended::Closed);
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
    for Owned {
        mut request,
        draining,
    } in owned
    {
        request.session_id = session_id.to_string();
        let id = request.id.clone();
        let mut answer = rpc.register(request).await.map(drop);
        if draining && answer.is_ok() {
            let drain = pb::DrainRequest {
                session_id: session_id.to_string(),
                id: id.clone(),
            };
            answer = rpc.drain(drain).await.map(drop);
        }
        match answer {
            Ok(()) => count += 1,
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
