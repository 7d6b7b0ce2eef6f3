//! The load shapes: each runs for a bounded count and time and returns what
//! it measured. Workers share a few HTTP/2 connections, as services would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::bytes::Bytes;
use seaport::pb::{
    self, heartbeat_request::Kind as In, registry_client::RegistryClient, watch_event::Kind,
};
use tokio::sync::{Barrier, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::answers::{Free, Light, Register};
use crate::stats::Sample;

/// Opens `n` connections to the server.
pub(crate) async fn connect(addr: std::net::SocketAddr, n: usize) -> Vec<Channel> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect to seaportd");
        channels.push(channel);
    }
    channels
}

/// An open session; dropping it drops the stream (the session then lives
/// out its ttl).
pub(crate) struct Session {
    pub(crate) id: String,
    /// The ttl the server granted.
    pub(crate) ttl: Duration,
    tx: mpsc::Sender<pb::HeartbeatRequest>,
    rx: tonic::Streaming<pb::HeartbeatResponse>,
}

impl Session {
    pub(crate) async fn open(channel: Channel, ttl_ms: u64) -> Session {
        let open = pb::OpenSession {
            ttl_ms,
            client_name: "bench".into(),
        };
        Session::start(channel, In::Open(open)).await
    }

    /// Resumes the session `id`, as a client whose server died does on
    /// another.
    pub(crate) async fn resume(channel: Channel, id: String) -> Session {
        Session::start(channel, In::Resume(pb::ResumeSession { session_id: id })).await
    }

    async fn start(channel: Channel, first: In) -> Session {
        let (tx, rx) = mpsc::channel(4);
        tx.send(pb::HeartbeatRequest { kind: Some(first) })
            .await
            .unwrap();
        let mut stream = RegistryClient::new(channel)
            .heartbeat(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let opened = stream.message().await.unwrap().and_then(|m| m.kind);
        let Some(pb::heartbeat_response::Kind::Opened(opened)) = opened else {
            panic!("no session: {opened:?}")
        };
        Session {
            id: opened.session_id,
            ttl: Duration::from_millis(opened.ttl_ms),
            tx,
            rx: stream,
        }
    }

    /// Closes the session, which frees everything it registered.
    pub(crate) async fn close(mut self) {
        let close = pb::HeartbeatRequest {
            kind: Some(In::Close(pb::CloseSession {})),
        };
        if self.tx.send(close).await.is_ok() {
            while let Ok(Some(m)) = self.rx.message().await {
                if matches!(m.kind, Some(pb::heartbeat_response::Kind::Closed(_))) {
                    break;
                }
            }
        }
    }

    pub(crate) async fn ping(&self, seq: u64) {
        let _ = self
            .tx
            .send(pb::HeartbeatRequest {
                kind: Some(In::Ping(pb::Ping { seq })),
            })
            .await;
    }
}

/// Runs `workers` copies of `op` over the channels, each until the same
/// end, and gathers their latencies. The rate counts what completed by
/// that end over the time to it: each worker's last operation runs past
/// the end by up to its own latency, and timing to the last worker's
/// finish would charge that tail to the rate, twice as much for a
/// register+free pair as for a health check.
async fn closed_loop<F, Fut>(
    channels: &[Channel],
    workers: usize,
    duration: Duration,
    op: F,
) -> Sample
where
    F: Fn(usize, Channel, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Sample> + Send,
{
    let op = Arc::new(op);
    let end = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (op, channel) = (op.clone(), channels[w % channels.len()].clone());
        tasks.spawn(async move { op(w, channel, end).await });
    }
    let mut total = Sample::default();
    while let Some(sample) = tasks.join_next().await {
        total.merge(sample.unwrap());
    }
    total.elapsed = duration;
    total
}

/// grpc.health.v1 Check: the RPC stack's own limit where the bench runs.
pub(crate) async fn health(channels: &[Channel], workers: usize, duration: Duration) -> Sample {
    closed_loop(
        channels,
        workers,
        duration,
        move |_, channel, end| async move {
            let mut client = HealthClient::new(channel);
            let mut sample = Sample::default();
            while Instant::now() < end {
                let t = Instant::now();
                client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .unwrap();
                sample.record(t, end);
            }
            sample
        },
    )
    .await
}

/// Opens `n` sessions, spread over the channels as the workers are, so a
/// scenario's clock runs only while it does what it measures.
pub(crate) async fn open_sessions(channels: &[Channel], n: usize) -> Vec<Session> {
    let mut sessions = Vec::with_capacity(n);
    for w in 0..n {
        sessions.push(Session::open(channels[w % channels.len()].clone(), 600_000).await);
    }
    sessions
}

/// Closes the sessions, which frees what they registered.
pub(crate) async fn close_sessions(sessions: Vec<Session>) {
    let mut closing = tokio::task::JoinSet::new();
    for session in sessions {
        closing.spawn(session.close());
    }
    closing.join_all().await;
}

/// Register in a loop on each of the sessions, each RPC counted. With
/// `keep`, what it registers stays until the sessions close: a
/// registration's cost, to set beside etcd's lease grant + put. Without,
/// each registration is freed at once (register+free), the Free counted
/// too. `slice` numbers the calls on the same sessions, so each uses
/// hosts of its own: what earlier slices kept holds their hosts' ports.
pub(crate) async fn register(
    channels: &[Channel],
    sessions: Arc<Vec<String>>,
    duration: Duration,
    keep: bool,
    slice: u32,
) -> Sample {
    closed_loop(
        channels,
        sessions.len(),
        duration,
        move |w, channel, end| {
            let session = Bytes::from(sessions[w].clone());
            async move {
                let mut client = Light::new(channel);
                let mut sample = Sample::default();
                // Made once and shared by every request: the bench's own work
                // takes from the cores the server shares.
                let mut register = Register {
                    session_id: session.clone(),
                    role: Bytes::from(format!("bench-{w}@1.0.0")),
                    host: Bytes::new(),
                };
                let mut n = 0;
                while Instant::now() < end {
                    let t = Instant::now();
                    // A host per worker, as sessions on different machines
                    // would have (a freed port stays quarantined on its host),
                    // and a new one every 20k registrations, well within a
                    // host's assignable ports.
                    if n % 20_000 == 0 {
                        register.host = Bytes::from(format!("bench-{w}-{slice}-{}", n / 20_000));
                    }
                    let id = client.register(register.clone()).await;
                    sample.record(t, end);
                    if !keep {
                        let t = Instant::now();
                        let free = Free {
                            session_id: session.clone(),
                            id,
                        };
                        client.free(free).await;
                        sample.record(t, end);
                    }
                    n += 1;
                }
                sample
            }
        },
    )
    .await
}

/// Fills the registry up to `target` registrations: names `svc-N` with four
/// versions each, spread over hosts so explicit ports never clash.
pub(crate) async fn populate(
    channels: &[Channel],
    sessions: &[Session],
    from: usize,
    target: usize,
) {
    let workers = sessions.len();
    let ids: Vec<String> = sessions.iter().map(|s| s.id.clone()).collect();
    let ids = Arc::new(ids);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (ids, mut client) = (
            ids.clone(),
            RegistryClient::new(channels[w % channels.len()].clone()),
        );
        tasks.spawn(async move {
            let mut i = from + w;
            while i < target {
                let request = pb::RegisterRequest {
                    session_id: ids[w].clone(),
                    role: format!("svc-{}@1.{}.0", i / 4, i % 4),
                    host: format!("h{}", i / 50_000),
                    port: 10_000 + (i % 50_000) as u32,
                    metadata: [("zone".to_string(), "a".to_string())].into(),
                    ..Default::default()
                };
                client.register(request).await.unwrap();
                i += workers;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// Query `pattern`, which matches `expect` services, in a loop.
pub(crate) async fn query(
    channels: &[Channel],
    workers: usize,
    duration: Duration,
    pattern: &'static str,
    expect: usize,
) -> Sample {
    closed_loop(
        channels,
        workers,
        duration,
        move |_, channel, end| async move {
            let mut client = Light::new(channel);
            let mut sample = Sample::default();
            while Instant::now() < end {
                let t = Instant::now();
                let matches = client
                    .query(pb::QueryRequest {
                        pattern: pattern.into(),
                        ..Default::default()
                    })
                    .await;
                sample.record(t, end);
                assert_eq!(matches.services.len(), expect, "{pattern} matched");
            }
            sample
        },
    )
    .await
}

/// From sending a Register to a Get that was waiting for it returning (the
/// Get often returns before the Register's own reply arrives, so timing
/// from that reply would read zero). A few rounds first go uncounted, so
/// that even one counted round is not the first on a cold path.
pub(crate) async fn get_wakeup(channel: &Channel, rounds: usize) -> Sample {
    const WARM_UP: usize = 5;
    let session = Session::open(channel.clone(), 600_000).await;
    let mut client = RegistryClient::new(channel.clone());
    let mut sample = Sample::default();
    for r in 0..WARM_UP + rounds {
        let name = format!("wake-{r}");
        let mut waiter = client.clone();
        let pattern = name.clone();
        let get = tokio::spawn(async move {
            waiter
                .get(pb::GetRequest {
                    pattern,
                    ..Default::default()
                })
                .await
                .unwrap();
            Instant::now()
        });
        // Let the Get reach the server and start waiting.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let request = pb::RegisterRequest {
            session_id: session.id.clone(),
            role: name,
            ..Default::default()
        };
        let sent = Instant::now();
        client.register(request).await.unwrap();
        let woke = get.await.unwrap();
        if r >= WARM_UP {
            sample.push(woke.saturating_duration_since(sent));
        }
    }
    sample
}

/// Time from one Register until every one of `watchers` watchers (spread
/// over the channels) has received it; one figure per round, the same
/// watchers in every round. Also the server's CPU time a round, when it is
/// our child (`pid`), to tell its share from the watchers' own in this
/// process.
pub(crate) async fn watch_fanout(
    channels: &[Channel],
    watchers: usize,
    rounds: usize,
    pid: Option<u32>,
) -> (Sample, Option<Duration>) {
    let session = Session::open(channels[0].clone(), 600_000).await;
    let mut client = RegistryClient::new(channels[0].clone());
    let ready = Arc::new(Barrier::new(watchers + 1));
    let (arrived_tx, mut arrived) = mpsc::channel::<Instant>(watchers);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..watchers {
        let (ready, arrived_tx, channel) = (
            ready.clone(),
            arrived_tx.clone(),
            channels[w % channels.len()].clone(),
        );
        tasks.spawn(async move {
            let request = pb::WatchRequest {
                pattern: "fan".into(),
                ..Default::default()
            };
            let mut stream = RegistryClient::new(channel)
                .watch(request)
                .await
                .unwrap()
                .into_inner();
            while let Some(e) = stream.message().await.unwrap() {
                if e.kind() == Kind::Synced {
                    break;
                }
            }
            ready.wait().await;
            while let Some(e) = stream.message().await.unwrap() {
                if e.kind() == Kind::Registered && arrived_tx.send(Instant::now()).await.is_err() {
                    return;
                }
            }
        });
    }
    ready.wait().await;
    let mut sample = Sample::default();
    let mut server_cpu = pid.map(|_| Duration::ZERO);
    let started = Instant::now();
    for _ in 0..rounds {
        let cpu0 = pid.and_then(crate::server::cpu_time);
        let t0 = Instant::now();
        let request = pb::RegisterRequest {
            session_id: session.id.clone(),
            role: "fan".into(),
            ..Default::default()
        };
        client.register(request).await.unwrap();
        let mut last = t0;
        for _ in 0..watchers {
            let at = arrived
                .recv()
                .await
                .expect("every watcher receives the event");
            last = last.max(at);
        }
        sample.push(last - t0);
        let cpu1 = pid.and_then(crate::server::cpu_time);
        server_cpu = match (server_cpu, cpu0, cpu1) {
            (Some(total), Some(a), Some(b)) => Some(total + (b - a)),
            _ => None,
        };
    }
    sample.elapsed = started.elapsed();
    tasks.abort_all();
    (sample, server_cpu.map(|t| t / rounds as u32))
}
