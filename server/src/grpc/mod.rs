//! The gRPC adapter: turns each RPC into a call on the registry core and
//! its answer into `pb` messages. No registry logic lives here.

mod convert;
mod heartbeat;
mod status;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::pb::{self, registry_server::Registry as RegistryApi};
use std::time::Instant;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};

use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use crate::auth::Auth;
use crate::metrics::{Method, Metrics};
use crate::registry::{Registry, RegistryError};
pub(crate) use status::{Caller, reject};

pub use crate::pb::registry_server::RegistryServer;

/// How much earlier than the call's deadline Get gives up, so that its
/// DEADLINE_EXCEEDED beats tonic's generic "Timeout expired" cancellation.
const GET_DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// The `seaport.v1.Registry` service.
pub struct RegistryRpcs {
    registry: Registry,
    auth: Arc<Auth>,
    /// Watch streams open now, and how many may be.
    watchers: Arc<AtomicUsize>,
    max_watchers: usize,
    stop: Stop,
    metrics: Arc<Metrics>,
}

/// The two moments of a server's stop, as the streams see them.
#[derive(Clone, Debug)]
pub struct Stop {
    /// Flips to true when the server starts leaving (SIGTERM): each session
    /// stream tells its client to move to another server, then ends; no new
    /// session starts here.
    pub leaving: watch::Receiver<bool>,
    /// Flips to true when the server stops serving: every long stream ends.
    pub stopped: watch::Receiver<bool>,
    /// How many session (Heartbeat) streams are open, so that a leaving
    /// server can wait for them to go.
    pub sessions: Arc<watch::Sender<usize>>,
}

impl RegistryRpcs {
    /// The service over a registry, checking callers with `auth`, with at
    /// most `max_watchers` Watch streams at once; `stop` moves sessions
    /// away and ends streams; every RPC is counted in `metrics`, and the
    /// Watch streams open in `watchers`.
    pub fn new(
        registry: Registry,
        auth: Arc<Auth>,
        (max_watchers, watchers): (usize, Arc<AtomicUsize>),
        stop: Stop,
        metrics: Arc<Metrics>,
    ) -> Self {
        RegistryRpcs {
            registry,
            auth,
            watchers,
            max_watchers,
            stop,
            metrics,
        }
    }
}

/// Counts one open Watch stream until dropped with it.
struct Watcher(Arc<AtomicUsize>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one open session stream until dropped with it.
struct SessionStream(Arc<watch::Sender<usize>>);

impl SessionStream {
    fn new(sessions: &Arc<watch::Sender<usize>>) -> Self {
        sessions.send_modify(|n| *n += 1);
        SessionStream(sessions.clone())
    }
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// grpc.health.v1 as tonic-health serves it, but with Watch streams that
/// end when the server stops, so that an open health watch does not hold
/// shutdown for the whole grace period.
#[derive(Clone)]
pub struct StoppingHealth {
    inner: Arc<HealthService>,
    stop: watch::Receiver<bool>,
}

impl StoppingHealth {
    /// Serves what `reporter` reports; `stop` ends the watches.
    pub fn new(reporter: HealthReporter, stop: watch::Receiver<bool>) -> Self {
        StoppingHealth {
            inner: Arc::new(HealthService::from_health_reporter(reporter)),
            stop,
        }
    }
}

#[tonic::async_trait]
impl Health for StoppingHealth {
    type WatchStream = Stopping<HealthCheckResponse>;

    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(until_stop(stream, &self.stop)))
    }
}

/// A long response stream that ends when the server stops.
pub type Stopping<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Ends `stream` when `stop` turns true, so open Heartbeat and Watch calls
/// finish within the shutdown grace.
fn until_stop<T, S>(stream: S, stop: &watch::Receiver<bool>) -> Stopping<T>
where
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    let stopping = WatchStream::new(stop.clone())
        .filter(|stop| *stop)
        .map(|_| None);
    // The stream's own end is a `None` too: a merge alone would wait for
    // both sides to end, and `stopping` ends only with the server.
    let ending = stream.map(Some).chain(tokio_stream::once(None));
    Box::pin(ending.merge(stopping).map_while(|item| item))
}

/// Ends a session stream when the server starts leaving, first telling
/// its client to move to another server, and counts it while open.
fn until_leaving<S>(stream: S, stop: &Stop) -> Stopping<pb::HeartbeatResponse>
where
    S: Stream<Item = Result<pb::HeartbeatResponse, Status>> + Send + 'static,
{
    let counted = SessionStream::new(&stop.sessions);
    let notice = WatchStream::new(stop.leaving.clone())
        .filter(|leaving| *leaving)
        .take(1)
        .map(|_| {
            Some(Ok(pb::HeartbeatResponse {
                kind: Some(pb::heartbeat_response::Kind::Stopping(
                    pb::ServerStopping {},
                )),
            }))
        })
        .chain(tokio_stream::once(None));
    let ending = stream
        .map(move |item| {
            let _counted = &counted;
            Some(item)
        })
        .chain(tokio_stream::once(None));
    Box::pin(ending.merge(notice).map_while(|item| item))
}

/// How long a Get may wait: the shorter of its `timeout_ms` and the call's
/// own deadline. The deadline is cut a little short so that the answer is
/// our DEADLINE_EXCEEDED rather than tonic's generic timeout.
fn get_deadline<T>(request: &Request<T>, timeout_ms: u64) -> Option<Duration> {
    let from_header = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::serve::parse_grpc_timeout)
        .map(|d| d.saturating_sub(GET_DEADLINE_MARGIN));
    let from_field = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
    match (from_header, from_field) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl RegistryRpcs {
    /// Runs an RPC's `call`, counting its answer and the time it took.
    async fn counted<T>(
        &self,
        method: Method,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let answer = call.await;
        let code = answer.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.metrics.rpc(method, code, started.elapsed());
        answer
    }

    async fn heartbeat_call(
        &self,
        request: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Stopping<pb::HeartbeatResponse>>, Status> {
        let peer = request.remote_addr();
        let actor = self.auth.caller(&request, "Heartbeat", true)?;
        let caller = Caller {
            peer,
            identity: &actor.identity,
        };
        if *self.stop.leaving.borrow() {
            let leaving = "this server is stopping: open or resume the session on another server";
            return Err(reject(
                "Heartbeat",
                caller,
                RegistryError::Unavailable(leaving.into()),
            ));
        }
        let stream =
            heartbeat::start(self.registry.clone(), peer, actor, request.into_inner()).await?;
        let stream = until_leaving(stream, &self.stop);
        Ok(Response::new(until_stop(stream, &self.stop.stopped)))
    }

    async fn register_call(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let peer = request.remote_addr();
        let actor = self.auth.caller(&request, "Register", true)?;
        let caller = Caller {
            peer,
            identity: &actor.identity,
        };
        let r = request.into_inner();
        let service = self
            .registry
            .register(convert::new_service(r), &actor)
            .await
            .map_err(|e| reject("Register", caller, e))?;
        Ok(Response::new(pb::RegisterResponse {
            service: convert::service(service),
        }))
    }

    async fn update_call(
        &self,
        request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let peer = request.remote_addr();
        let actor = self.auth.caller(&request, "Update", true)?;
        let caller = Caller {
            peer,
            identity: &actor.identity,
        };
        let (session_id, id, change) = convert::metadata_change(request.into_inner());
        let service = self
            .registry
            .update(&session_id, &id, change, &actor)
            .await
            .map_err(|e| reject("Update", caller, e))?;
        Ok(Response::new(pb::UpdateResponse {
            service: convert::service(service),
        }))
    }

    async fn free_call(
        &self,
        request: Request<pb::FreeRequest>,
    ) -> Result<Response<pb::FreeResponse>, Status> {
        let peer = request.remote_addr();
        let actor = self.auth.caller(&request, "Free", true)?;
        let caller = Caller {
            peer,
            identity: &actor.identity,
        };
        let r = request.into_inner();
        let service = self
            .registry
            .free(&r.session_id, &r.id, &actor)
            .await
            .map_err(|e| reject("Free", caller, e))?;
        Ok(Response::new(pb::FreeResponse {
            service: convert::service(service),
        }))
    }

    async fn drain_call(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let peer = request.remote_addr();
        let actor = self.auth.caller(&request, "Drain", true)?;
        let caller = Caller {
            peer,
            identity: &actor.identity,
        };
        let r = request.into_inner();
        let service = self
            .registry
            .drain(&r.session_id, &r.id, &actor)
            .await
            .map_err(|e| reject("Drain", caller, e))?;
        Ok(Response::new(pb::DrainResponse {
            service: convert::service(service),
        }))
    }

    async fn query_call(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let peer = request.remote_addr();
        let actor = self.auth.caller(&request, "Query", false)?;
        let caller = Caller {
            peer,
            identity: &actor.identity,
        };
        let r = request.into_inner();
        let selector = self
            .registry
            .selector(&r.pattern, &r.namespace, r.metadata)
            .map_err(|e| reject("Query", caller, e))?;
        let (found, revision) = self.registry.query(&selector);
        Ok(Response::new(pb::QueryResponse {
            services: convert::services(found),
            revision,
        }))
    }

    async fn get_call(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let peer = request.remote_addr();
        let actor = self.auth.caller(&request, "Get", false)?;
        let caller = Caller {
            peer,
            identity: &actor.identity,
        };
        let deadline = get_deadline(&request, request.get_ref().timeout_ms);
        let r = request.into_inner();
        let selector = self
            .registry
            .selector(&r.pattern, &r.namespace, r.metadata)
            .map_err(|e| reject("Get", caller, e))?;
        let wait = self.registry.get(&selector);
        let (found, revision) = match deadline {
            Some(d) => tokio::time::timeout(d, wait).await.map_err(|_| {
                reject(
                    "Get",
                    caller,
                    RegistryError::NothingMatched {
                        pattern: r.pattern.clone(),
                        waited_ms: d.as_millis(),
                    },
                )
            })?,
            None => wait.await,
        };
        Ok(Response::new(pb::GetResponse {
            services: convert::services(found),
            revision,
        }))
    }

    async fn watch_call(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Stopping<pb::WatchEvent>>, Status> {
        let peer = request.remote_addr();
        let actor = self.auth.caller(&request, "Watch", false)?;
        let caller = Caller {
            peer,
            identity: &actor.identity,
        };
        let r = request.into_inner();
        let selector = self
            .registry
            .selector(&r.pattern, &r.namespace, r.metadata)
            .map_err(|e| reject("Watch", caller, e))?;
        if self.watchers.fetch_add(1, Ordering::Relaxed) >= self.max_watchers {
            self.watchers.fetch_sub(1, Ordering::Relaxed);
            return Err(reject(
                "Watch",
                caller,
                RegistryError::TooManyWatchers(self.max_watchers),
            ));
        }
        let watcher = Watcher(self.watchers.clone());
        let events = self
            .registry
            .watch(selector, r.since_revision)
            .map(move |event| {
                let _counted = &watcher;
                Ok(convert::watch_event(event))
            });
        Ok(Response::new(until_stop(events, &self.stop.stopped)))
    }
}

/// Each RPC, counted with the code it answers and the time it took.
#[tonic::async_trait]
impl RegistryApi for RegistryRpcs {
    type HeartbeatStream = Stopping<pb::HeartbeatResponse>;
    type WatchStream = Stopping<pb::WatchEvent>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        self.counted(Method::Heartbeat, self.heartbeat_call(request))
            .await
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        self.counted(Method::Register, self.register_call(request))
            .await
    }

    async fn update(
        &self,
        request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        self.counted(Method::Update, self.update_call(request))
            .await
    }

    async fn free(
        &self,
        request: Request<pb::FreeRequest>,
    ) -> Result<Response<pb::FreeResponse>, Status> {
        self.counted(Method::Free, self.free_call(request)).await
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.counted(Method::Drain, self.drain_call(request)).await
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        self.counted(Method::Query, self.query_call(request)).await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.counted(Method::Get, self.get_call(request)).await
    }

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.counted(Method::Watch, self.watch_call(request)).await
    }
}
