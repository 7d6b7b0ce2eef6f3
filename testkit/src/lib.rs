//! The one test kit: starts real seaportd servers on ephemeral ports,
//! opens real sessions over gRPC, and waits for what a test expects,
//! for the end-to-end suite, seaportctl's tests and the client's alike;
//! makes real certificates for mTLS ([`tls`]); reads the admin port
//! ([`admin`]); runs real etcd clusters ([`EtcdCluster`]) for the etcd
//! backend; and captures the servers' log lines ([`Logs`]).

pub mod admin;
pub mod etcd;
pub mod logs;
pub mod process;
pub mod tls;

pub use etcd::EtcdCluster;
pub use logs::Logs;
pub use process::Seaportd;

use std::net::SocketAddr;
use std::time::Duration;

use seaport::pb::{
    self, heartbeat_request::Kind as In, heartbeat_response::Kind as Out,
    registry_client::RegistryClient,
};
use seaport_server::Config;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// How long any test waits for an event it expects.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A seaportd running in this process.
pub struct TestServer {
    /// The address it serves on.
    pub addr: SocketAddr,
    /// Its plaintext admin port (health, /metrics), if it has one.
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

/// The configuration tests use: quick shutdown, short ttls allowed.
pub fn test_config() -> Config {
    let mut config = Config {
        drain_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(2),
        ..Config::default()
    };
    config.limits.min_ttl = Duration::from_millis(100);
    config
}

impl TestServer {
    /// Starts a server with [`test_config`].
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    /// Starts a server with `config` on an ephemeral port.
    pub async fn start_with(config: Config) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), config).await
    }

    /// Starts a server with `config` and an admin port, both on ephemeral
    /// ports.
    pub async fn start_with_admin(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::serve(listener, Some(admin), config)
    }

    /// Starts a server on `addr` (for restarts on the same address).
    pub async fn start_on(addr: SocketAddr, config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        Self::serve(listener, None, config)
    }

    /// Serves on `listener`, and health in plaintext on `admin` if given.
    pub fn serve(
        listener: tokio::net::TcpListener,
        admin: Option<tokio::net::TcpListener>,
        config: Config,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let admin_addr = admin.as_ref().map(|a| a.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            seaport_server::run_with_admin(listener, admin, config, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        TestServer {
            addr,
            admin: admin_addr,
            stop: Some(stop),
            done,
        }
    }

    /// A plaintext channel to it.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    /// A connection whose HTTP/2 windows are the protocol's minimum, as a
    /// client that reads slowly would keep them.
    pub async fn slow_reader_client(&self) -> RegistryClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .expect("connect");
        RegistryClient::new(channel)
    }

    /// A raw gRPC client of it.
    pub async fn client(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel().await)
    }

    /// The value of the unlabelled metric `name` on its admin port.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let admin = self.admin.expect("a server started with an admin port");
        admin::value(&admin::scrape(admin).await, name, &[])
    }

    /// Signals shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether `run` has not returned yet.
    pub fn is_running(&self) -> bool {
        !self.done.is_finished()
    }

    /// Shuts the server down and waits until it has stopped.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        tokio::time::timeout(PATIENCE, &mut self.done)
            .await
            .expect("server stops")
            .unwrap();
    }
}

impl Drop for TestServer {
    /// A server a test drops shuts down, as one that ends does.
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// An open session and its Heartbeat stream.
pub struct Session {
    /// The session's id.
    pub id: String,
    /// The granted ttl.
    pub ttl_ms: u64,
    /// The address the server sees the client at.
    pub observed_host: String,
    /// True for a resumed session.
    pub resumed: bool,
    tx: mpsc::Sender<pb::HeartbeatRequest>,
    rx: Streaming<pb::HeartbeatResponse>,
}

fn msg(kind: In) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest { kind: Some(kind) }
}

/// Starts a Heartbeat stream with `first` as its first message.
pub async fn heartbeat(client: &mut RegistryClient<Channel>, first: In) -> Result<Session, Status> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(msg(first)).await.unwrap();
    let mut stream = client
        .heartbeat(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let reply = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("first reply")?;
    match reply.and_then(|r| r.kind) {
        Some(Out::Opened(o)) => Ok(Session {
            id: o.session_id,
            ttl_ms: o.ttl_ms,
            observed_host: o.observed_host,
            resumed: o.resumed,
            tx,
            rx: stream,
        }),
        other => panic!("expected opened, got {other:?}"),
    }
}

/// Opens a session with the given ttl (0: the server's default).
pub async fn open(client: &mut RegistryClient<Channel>, ttl_ms: u64) -> Session {
    heartbeat(
        client,
        In::Open(pb::OpenSession {
            ttl_ms,
            client_name: "test".into(),
        }),
    )
    .await
    .expect("open session")
}

impl Session {
    /// Pings and returns the pong's seq.
    pub async fn ping(&mut self, seq: u64) -> Result<u64, Status> {
        self.tx.send(msg(In::Ping(pb::Ping { seq }))).await.unwrap();
        match self.next().await? {
            Some(Out::Pong(p)) => Ok(p.seq),
            other => panic!("expected pong, got {other:?}"),
        }
    }

    /// Closes the session; returns how many registrations were freed.
    /// The stream ends after `closed`, as the proto says.
    pub async fn close(mut self) -> u32 {
        self.tx
            .send(msg(In::Close(pb::CloseSession {})))
            .await
            .unwrap();
        let freed = match self.next().await {
            Ok(Some(Out::Closed(c))) => c.freed,
            other => panic!("expected closed, got {other:?}"),
        };
        let after = self.next().await;
        assert!(
            matches!(after, Ok(None)),
            "the stream ends after closed: {after:?}"
        );
        freed
    }

    /// Half-closes the client's side; the stream must then end.
    pub async fn half_close(mut self) -> Result<Option<Out>, Status> {
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        self.next().await
    }

    /// Sends one message on the stream.
    pub async fn send(&self, kind: In) {
        self.tx.send(msg(kind)).await.unwrap();
    }

    /// The next reply, waited for with [`PATIENCE`].
    pub async fn next(&mut self) -> Result<Option<Out>, Status> {
        let reply = tokio::time::timeout(PATIENCE, self.rx.message())
            .await
            .expect("a reply in time")?;
        Ok(reply.and_then(|r| r.kind))
    }

    /// Drops the stream without closing the session (a network blip).
    pub fn drop_stream(self) -> String {
        self.id
    }
}

/// A Register of `role` under `session`.
pub fn register_request(session: &Session, role: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        session_id: session.id.clone(),
        role: role.into(),
        ..Default::default()
    }
}

/// Registers `role` under `session`; the stored record.
pub async fn register(
    client: &mut RegistryClient<Channel>,
    session: &Session,
    role: &str,
) -> pb::Service {
    register_with(client, register_request(session, role)).await
}

/// Sends `request`; the stored record.
pub async fn register_with(
    client: &mut RegistryClient<Channel>,
    request: pb::RegisterRequest,
) -> pb::Service {
    client
        .register(request)
        .await
        .expect("register")
        .into_inner()
        .service
        .expect("service")
}

/// The services matching `pattern` in the default namespace.
pub async fn query(client: &mut RegistryClient<Channel>, pattern: &str) -> Vec<pb::Service> {
    client
        .query(pb::QueryRequest {
            pattern: pattern.into(),
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .services
}

/// Asserts a call failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "message: {}", status.message());
    assert!(
        status.message().contains(needle),
        "{:?} does not contain {needle:?}",
        status.message()
    );
}

/// Waits for `cond` to hold, polling, for at most [`PATIENCE`]; for state
/// that no stream of ours announces (session expiry, a process's files,
/// a server's metrics), never as a stand-in for an event we can wait on.
pub async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut cond: F) {
    wait_for(what, async || cond().await.then_some(())).await
}

/// Polls `found` until it gives a value, for at most [`PATIENCE`], and
/// returns that value: [`eventually`] for a wait that yields something.
pub async fn wait_for<T, F: AsyncFnMut() -> Option<T>>(what: &str, mut found: F) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = found().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        // The poll's interval, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy in front of a server, whose connections can be cut at once
/// (a network blip) while it keeps accepting new ones, or silenced (a dead
/// path: packets dropped, no reset).
pub struct Proxy {
    /// The address clients connect to.
    pub addr: SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tracked, quiet) = (conns.clone(), silent.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let quiet = quiet.clone();
                tracked.lock().unwrap().spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let (from_client, to_client) = inbound.into_split();
                        let (from_server, to_server) = outbound.into_split();
                        tokio::join!(
                            forward(from_client, to_server, &quiet),
                            forward(from_server, to_client, &quiet)
                        );
                    }
                });
            }
        });
        Proxy {
            addr,
            conns,
            silent,
            accept,
        }
    }

    /// Drops every proxied connection.
    pub fn cut(&self) {
        self.conns.lock().unwrap().abort_all();
    }

    /// From now on forwards nothing, either way, on any connection, while
    /// keeping them all open: a path that went dead without a reset.
    pub fn silence(&self) {
        self.silent
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends a silence: the silenced connections are dropped, and new ones
    /// forward again.
    pub fn heal(&self) {
        self.cut();
        self.silent
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until either ends, dropping what it reads once
/// `silent` is set.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: &std::sync::atomic::AtomicBool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.load(std::sync::atomic::Ordering::Relaxed) {
            continue;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
