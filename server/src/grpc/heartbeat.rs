//! The Heartbeat stream: opens or resumes a session, answers pings, and
//! closes the session on request. A stream that drops leaves the session
//! to its ttl, so a network blip frees nothing.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Status, Streaming};

use super::status::{Caller, invalid, reject};
use crate::pb::{self, heartbeat_request::Kind as In, heartbeat_response::Kind as Out};
use crate::registry::{Actor, Eviction, Registry, RegistryError, SessionInfo};

/// The RPC's name, as errors cite it.
const RPC: &str = "Heartbeat";

/// How long a new stream may wait before sending `open` or `resume`.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The address a client connected from, as registrations should show it:
/// IPv4-mapped IPv6 becomes plain IPv4.
pub(crate) fn observed_host(addr: Option<SocketAddr>) -> String {
    match addr.map(|a| a.ip()) {
        Some(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        Some(ip) => ip.to_string(),
        None => String::new(),
    }
}

fn reply(kind: Out) -> Result<pb::HeartbeatResponse, Status> {
    Ok(pb::HeartbeatResponse { kind: Some(kind) })
}

fn evicted_reply(e: Eviction) -> Result<pb::HeartbeatResponse, Status> {
    reply(Out::Evicted(super::convert::evicted(e)))
}

/// Handles the first message and returns the stream that serves the session.
pub(crate) async fn start(
    registry: Registry,
    peer: Option<SocketAddr>,
    actor: Actor,
    mut inbound: Streaming<pb::HeartbeatRequest>,
) -> Result<HeartbeatStream, Status> {
    let caller = Caller {
        peer,
        identity: &actor.identity,
    };
    let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, inbound.message())
        .await
        .map_err(|_| {
            invalid(
                RPC,
                caller,
                "no open or resume message within 10s of starting the stream",
            )
        })??;
    let info: SessionInfo = match first.and_then(|m| m.kind) {
        Some(In::Open(open)) => {
            let ttl = (open.ttl_ms > 0).then(|| Duration::from_millis(open.ttl_ms));
            let info = registry
                .open_session(ttl, observed_host(peer), actor.identity.clone())
                .await
                .map_err(|e| reject(RPC, caller, e))?;
            tracing::info!(session = info.label, client = %seaport::quote(&open.client_name),
                host = %info.observed_host, identity = %actor.identity,
                ttl_ms = info.ttl.as_millis() as u64, "session opened");
            info
        }
        Some(In::Resume(resume)) => {
            let info = registry
                .resume_session(&resume.session_id, &actor)
                .map_err(|e| reject(RPC, caller, e))?;
            tracing::info!(session = info.label, identity = %actor.identity, "session resumed");
            info
        }
        _ => {
            return Err(invalid(
                RPC,
                caller,
                "the first message must be `open` or `resume`",
            ));
        }
    };

    let mut queued = VecDeque::from([reply(Out::Opened(super::convert::opened(&info)))]);
    // A resumed session hears at once what admins freed while it was away.
    if info.resumed
        && let Ok(evicted) = registry.ping(&info.id)
    {
        queued.extend(evicted.into_iter().map(evicted_reply));
    }
    Ok(HeartbeatStream {
        registry,
        id: info.id,
        label: info.label,
        peer,
        identity: actor.identity.clone(),
        queued,
        inbound,
        closing: None,
        done: false,
    })
}

/// The server's side of one Heartbeat call: `opened`, then an answer to
/// each client message, each pong followed by an `evicted` for every
/// registration an admin freed since the last. The response reads the
/// client's messages itself, so a session costs no task of its own.
pub(crate) struct HeartbeatStream {
    registry: Registry,
    /// The session's id: a secret, never logged.
    id: String,
    /// The session's name in logs.
    label: u64,
    peer: Option<SocketAddr>,
    /// The certificate identity of its holder, for refusals' log lines.
    identity: String,
    /// Answers due before the next client message is read: `opened`, and
    /// the admins' frees a ping handed over after its pong.
    queued: VecDeque<Result<pb::HeartbeatResponse, Status>>,
    inbound: Streaming<pb::HeartbeatRequest>,
    /// A close under way: with a store, the frees take a round trip.
    closing: Option<Closing>,
    /// Set after the last answer (closed, or an error).
    done: bool,
}

/// A session's close, answering how many registrations it freed.
type Closing = Pin<Box<dyn Future<Output = Result<usize, RegistryError>> + Send>>;

impl HeartbeatStream {
    fn caller(&self) -> Caller<'_> {
        Caller {
            peer: self.peer,
            identity: &self.identity,
        }
    }

    /// The answer to one client message; `None` for a close, answered by
    /// [`HeartbeatStream::closed`] once it is done.
    fn answer(&mut self, kind: Option<In>) -> Option<Result<pb::HeartbeatResponse, Status>> {
        let (id, caller) = (&self.id, self.caller());
        Some(match kind {
            Some(In::Ping(ping)) => match self.registry.ping(id) {
                Ok(evicted) => {
                    self.queued.extend(evicted.into_iter().map(evicted_reply));
                    reply(Out::Pong(pb::Pong { seq: ping.seq }))
                }
                Err(e) => Err(reject(RPC, caller, e)),
            },
            Some(In::Close(_)) => {
                let (registry, id) = (self.registry.clone(), id.clone());
                self.closing = Some(Box::pin(async move { registry.close_session(&id).await }));
                return None;
            }
            Some(In::Open(_) | In::Resume(_)) => Err(invalid(
                RPC,
                caller,
                "this stream already holds a session; send `ping` or `close`",
            )),
            None => Err(invalid(
                RPC,
                caller,
                "empty heartbeat message; send `ping` or `close`",
            )),
        })
    }

    /// The answer to a close, once done.
    fn closed(
        &self,
        result: Result<usize, RegistryError>,
    ) -> Result<pb::HeartbeatResponse, Status> {
        match result {
            Ok(freed) => {
                let peer = self.peer.map(|p| p.to_string()).unwrap_or_default();
                tracing::info!(session = self.label, freed, %peer, identity = %self.identity, "session closed");
                reply(Out::Closed(pb::SessionClosed {
                    freed: freed as u32,
                }))
            }
            Err(e) => Err(reject(RPC, self.caller(), e)),
        }
    }
}

impl Stream for HeartbeatStream {
    type Item = Result<pb::HeartbeatResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(queued) = this.queued.pop_front() {
            return Poll::Ready(Some(queued));
        }
        if let Some(closing) = &mut this.closing {
            let result = ready!(closing.as_mut().poll(cx));
            this.closing = None;
            this.done = true;
            return Poll::Ready(Some(this.closed(result)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inbound).poll_next(cx)) {
            Some(Ok(message)) => {
                let Some(answer) = this.answer(message.kind) else {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                };
                this.done = !matches!(
                    answer,
                    Ok(pb::HeartbeatResponse {
                        kind: Some(Out::Pong(_))
                    })
                );
                Poll::Ready(Some(answer))
            }
            Some(Err(_)) | None => {
                tracing::info!(
                    session = this.label,
                    "heartbeat stream ended; session kept for its ttl"
                );
                this.done = true;
                Poll::Ready(None)
            }
        }
    }
}
