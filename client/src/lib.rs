//! `SeaportClient`: the Rust client of the Seaport registry.
//!
//! A client keeps a connection to one of its servers, failing over to the
//! next when it breaks. Reads (query, get, watch, catalog) need nothing
//! more. The first write (register, bind, update, free) opens a session,
//! which the client then holds in the background across reconnects, server
//! restarts and failover until it closes; registrations made through it
//! are re-asserted (same ids, hosts and ports) whenever the server has
//! forgotten them. It speaks domain types ([`Service`], [`Registration`],
//! [`Event`]), never generated ones.
//!
//! ```no_run
//! # async fn demo() -> seaport_client::Result<()> {
//! use seaport_client::{RegisterOptions, SeaportClient};
//!
//! let client = SeaportClient::connect(["127.0.0.1:9090"]).await?;
//! let (listener, registration) = client.bind("web@1.2.3", RegisterOptions::default()).await?;
//! println!("serving web@1.2.3 on port {}", registration.port());
//! let web = client.get("web@1.2.x").await?;
//! println!("web is at {}", web[0].address());
//! # drop(listener);
//! # Ok(()) }
//! ```

mod catalog;
mod connect;
mod error;
mod registration;
mod session;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use seaport::pb;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

pub use catalog::Catalog;
pub use error::{Error, Result};
pub use registration::{RegisterOptions, Registration, RegistrationGuard};
pub use seaport::EventKind;
pub use seaport::{Pattern, Range, Role, Service};
pub use watch::{Event, WatchStream};

use session::{Conn, Owned, Shared, Want};

/// How many ports `bind` tries before giving up.
const BIND_ATTEMPTS: usize = 5;

/// Codes that asking again would not change: the caller must fix
/// something first (a malformed request, a missing certificate, an
/// identity that may not do this).
pub(crate) fn is_final(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, InvalidArgument | Unauthenticated | PermissionDenied)
}

/// What happens to the client's connection and session, for logging or
/// reacting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The client is connected to `server` again (after a
    /// `Disconnected`), holding its session there if it has one. Told once
    /// per connection; the first one is made before `connect` returns.
    Connected {
        /// The server's address.
        server: String,
        /// The client's address as the server sees it; empty when the
        /// client holds no session (the server tells it when a session
        /// opens).
        observed_host: String,
    },
    /// The connection to `server` was lost; the client is reconnecting.
    Disconnected {
        /// The server's address.
        server: String,
        /// Why.
        reason: String,
    },
    /// The session was resumed on `server` after a drop: nothing was lost.
    Resumed {
        /// The server's address.
        server: String,
    },
    /// The server no longer knew the session; a new one is being opened.
    SessionLost,
    /// This many of the client's registrations were registered again.
    Reasserted {
        /// How many.
        count: usize,
    },
    /// An admin freed one of this client's registrations. That is final:
    /// the client forgets it and never registers it again.
    Evicted {
        /// Its id.
        id: String,
        /// The admin's identity.
        by: String,
    },
    /// One registration could not be re-asserted.
    ReassertFailed {
        /// Its id.
        id: String,
        /// The server's reason.
        reason: String,
    },
}

/// Client settings; see [`Builder`].
#[derive(Clone, Debug)]
pub struct Options {
    namespace: String,
    ttl: Duration,
    client_name: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    backoff_base: Duration,
    backoff_max: Duration,
    drain_wait: Duration,
    tls: Option<Tls>,
}

/// TLS settings: the CA that signs the server's certificate and, for mTLS,
/// this client's certificate and key (all PEM).
#[derive(Clone, Default)]
struct Tls {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Never prints the key: options end up in logs.
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: String::new(),
            ttl: Duration::ZERO,
            client_name: "seaport-client".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            drain_wait: Duration::ZERO,
            tls: None,
        }
    }
}

/// Builds a [`SeaportClient`].
#[derive(Clone, Debug, Default)]
pub struct Builder {
    endpoints: Vec<String>,
    options: Options,
}

impl Builder {
    /// Adds a server address (`host:port`); several give failover.
    pub fn endpoint(mut self, address: impl Into<String>) -> Self {
        self.endpoints.push(address.into());
        self
    }

    /// The namespace for registrations and queries (default `default`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.options.namespace = namespace.into();
        self
    }

    /// The session ttl to ask for; the server clamps it to its bounds.
    /// Unset (zero), the server's `--default-ttl` applies.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.ttl = ttl;
        self
    }

    /// A name for this client in the server's logs.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.options.client_name = name.into();
        self
    }

    /// How long to wait for a TCP connection, and for TLS over it; twice
    /// this for `connect` to find a server that answers.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// How long a call waits for a connection (a write: for its session)
    /// while the client reconnects.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.options.request_timeout = timeout;
        self
    }

    /// The first and the longest pause between reconnect attempts.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.options.backoff_base = base;
        self.options.backoff_max = max;
        self
    }

    /// How long [`close`](SeaportClient::close) leaves this client's
    /// registrations draining before it frees them, so that traffic moves
    /// to other instances first (a rolling update). Zero, the default,
    /// frees at once.
    pub fn drain_wait(mut self, wait: Duration) -> Self {
        self.options.drain_wait = wait;
        self
    }

    /// Speaks TLS, trusting the CA in `ca_pem` for the server's certificate.
    pub fn ca_pem(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.options.tls.get_or_insert_with(Tls::default).ca = Some(ca_pem.into());
        self
    }

    /// Presents this client certificate and key (mTLS); implies TLS.
    pub fn identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.options.tls.get_or_insert_with(Tls::default).identity =
            Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Asks the first endpoint's grpc.health.v1 for `service`'s status
    /// ("" for the server as a whole), over the same TLS settings a client
    /// would use, and opens no session. True when SERVING.
    pub async fn health(self, service: &str) -> Result<bool> {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let server = self
            .endpoints
            .first()
            .ok_or_else(|| Error::Unavailable("no endpoint configured".into()))?;
        connect::endpoint(&self.options, server)?;
        let connector = connect::Connector::new(&self.options)?;
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        let check = |channel| async move { HealthClient::new(channel).check(request).await };
        let (_, _, answer) = connect::connect(&connector, &self.options, server, check)
            .await
            .map_err(|trouble| trouble.error(server))?;
        Ok(answer?.into_inner().status() == ServingStatus::Serving)
    }

    /// Connects to a server that answers, trying the endpoints in turn for
    /// up to twice the connect timeout, and opens no session (the first
    /// write does). Fails at once when every endpoint refuses TLS, which
    /// waiting would not mend; otherwise, in time, with why each failed.
    pub async fn connect(self) -> Result<SeaportClient> {
        if self.endpoints.is_empty() {
            return Err(Error::Unavailable("no endpoint configured".into()));
        }
        // Settings that cannot work (a malformed address, unreadable PEM)
        // fail here rather than as a timeout.
        for server in &self.endpoints {
            connect::endpoint(&self.options, server)?;
        }
        let connector = connect::Connector::new(&self.options)?;
        let wait = self.options.connect_timeout * 2;
        let shared = Arc::new(Shared::new(self.options, self.endpoints, connector));
        let task = tokio::spawn(session::run(shared.clone()));
        let life = Life {
            shared: shared.clone(),
            task: std::sync::Mutex::new(Some(task)),
        };
        // Dropping the client on an error stops its task.
        let client = SeaportClient {
            shared,
            life: Arc::new(life),
        };
        let mut conn = client.shared.conn.subscribe();
        let mut troubles = client.shared.troubles();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = conn.wait_for(Option::is_some) => return Ok(client),
                changed = troubles.changed() => {
                    if let Some(e) = client.shared.all_refuse_tls() {
                        return Err(e);
                    }
                    if changed.is_err() {
                        return Err(Error::Closed);
                    }
                }
                _ = &mut deadline => return Err(client.shared.stuck()),
            }
        }
    }
}

/// Completes when the connection is another than `old`.
async fn changed_from(
    rx: &mut tokio::sync::watch::Receiver<Option<Conn>>,
    old: &Conn,
) -> Result<()> {
    let other = |c: &Option<Conn>| c.as_ref().is_some_and(|c| c.number != old.number);
    rx.wait_for(other)
        .await
        .map(|_| ())
        .map_err(|_| Error::Closed)
}

/// Closes the session (if any) when the last client handle is dropped.
struct Life {
    shared: Arc<Shared>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Life {
    fn drop(&mut self) {
        let _ = self.shared.closed.send(true);
    }
}

/// A connection to the Seaport registry, holding a session from its first
/// write on. Cheap to clone; the session ends when the last clone is
/// dropped or on [`SeaportClient::close`] (not when its last registration
/// is freed: the next register reuses it).
#[derive(Clone)]
pub struct SeaportClient {
    shared: Arc<Shared>,
    life: Arc<Life>,
}

impl SeaportClient {
    /// Connects to one or more servers (`host:port`) with default options.
    pub async fn connect<I, S>(endpoints: I) -> Result<SeaportClient>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        endpoints
            .into_iter()
            .fold(Self::builder(), Builder::endpoint)
            .connect()
            .await
    }

    /// A builder for the options.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// What happens to the connection and session, from now on.
    pub fn events(&self) -> impl Stream<Item = ClientEvent> + use<> {
        BroadcastStream::new(self.shared.events.subscribe()).filter_map(|e| e.ok())
    }

    /// The server the client is connected to (and holds its session
    /// through, once it has one), if connected.
    pub fn server(&self) -> Option<String> {
        self.shared.conn.borrow().as_ref().map(|c| c.server.clone())
    }

    /// The current connection, for reads, waiting up to the request
    /// timeout while the client reconnects.
    async fn conn(&self) -> Result<Conn> {
        let mut rx = self.shared.conn.subscribe();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(self.shared.options.request_timeout, wait).await {
            Ok(Ok(conn)) => Ok(conn.clone().expect("waited for Some")),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(self.shared.stuck()),
        }
    }

    /// The current connection and the session held through it, for
    /// writes: asks for the session first (the client's first write opens
    /// it), and waits up to the request timeout for it. A refusal the
    /// server means (UNAUTHENTICATED, PERMISSION_DENIED) is returned at
    /// once.
    async fn session(&self) -> Result<(Conn, String)> {
        let mut want = self.shared.want.subscribe();
        self.shared.want.send_if_modified(|w| {
            let ask = *w != Want::Session;
            if ask {
                *w = Want::Session;
            }
            ask
        });
        let mut conn = self.shared.conn.subscribe();
        let held = conn.wait_for(|c| c.as_ref().is_some_and(|c| c.session_id.is_some()));
        let refused = want.wait_for(|w| matches!(w, Want::Refused { .. }));
        tokio::select! {
            held = held => {
                let conn = held.map_err(|_| Error::Closed)?.clone().expect("waited for Some");
                let id = conn.session_id.clone().expect("waited for a session");
                Ok((conn, id))
            }
            refused = refused => match &*refused.map_err(|_| Error::Closed)? {
                Want::Refused { code, message } => Err(Error::Status {
                    code: *code,
                    message: message.clone(),
                }),
                _ => unreachable!("waited for a refusal"),
            },
            _ = tokio::time::sleep(self.shared.options.request_timeout) => {
                Err(self.shared.session_stuck())
            }
        }
    }

    /// What a failed call means: the server's own status, or trouble with
    /// the connection (reported, so that a client with no session to
    /// notice it moves to the next server).
    fn failure(&self, conn: &Conn, status: tonic::Status) -> Error {
        let tls = self.shared.options.tls.is_some();
        match connect::status_trouble(&status, &conn.seen, tls, false) {
            Some(trouble) => {
                self.shared.report_broken(conn, &trouble);
                trouble.error(&conn.server)
            }
            None => status.into(),
        }
    }

    /// Runs the read `call` on the current connection; when the connection
    /// fails under it, runs it again on the next one, for up to the request
    /// timeout.
    async fn read<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(pb::registry_client::RegistryClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.shared.options.request_timeout;
        loop {
            let conn = self.conn().await?;
            let status = match call(conn.rpc.clone()).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => status,
            };
            let error = self.failure(&conn, status);
            if !matches!(error, Error::Unavailable(_)) || tokio::time::Instant::now() >= deadline {
                return Err(error);
            }
            self.wait_for_new_conn(&conn).await?;
        }
    }

    fn namespace(&self) -> String {
        self.shared.options.namespace.clone()
    }

    /// Registers `role` (`name@1.2.3` or `name`) under this client's session.
    pub async fn register(&self, role: &str, options: RegisterOptions) -> Result<Registration> {
        let role: Role = role.parse()?;
        let (conn, session_id) = self.session().await?;
        let request = pb::RegisterRequest {
            session_id,
            role: role.to_string(),
            namespace: options.namespace.unwrap_or_else(|| self.namespace()),
            host: options.host.unwrap_or_default(),
            port: u32::from(options.port.unwrap_or(0)),
            id: options.id.unwrap_or_default(),
            metadata: options.metadata.into_iter().collect(),
        };
        let reply = conn
            .rpc
            .clone()
            .register(request.clone())
            .await
            .map_err(|s| self.failure(&conn, s))?
            .into_inner();
        let service = Service::try_from(reply.service.unwrap_or_default())?;
        let remembered = pb::RegisterRequest {
            id: service.id.clone(),
            host: service.host.to_string(),
            port: u32::from(service.port),
            ..request
        };
        self.owned().insert(
            service.id.clone(),
            Owned {
                request: remembered,
                draining: false,
            },
        );
        Ok(Registration::new(self.clone(), service))
    }

    /// Registers `role` on a port the registry assigns and returns a
    /// listener already bound to it, so no other process can take the port
    /// in between. A port taken outside the registry is freed and another
    /// one asked for, a few times.
    pub async fn bind(
        &self,
        role: &str,
        options: RegisterOptions,
    ) -> Result<(tokio::net::TcpListener, Registration)> {
        let ip = options.bind_ip;
        let mut last = None;
        for _ in 0..BIND_ATTEMPTS {
            let registration = self.register(role, options.clone()).await?;
            match tokio::net::TcpListener::bind((ip, registration.port())).await {
                Ok(listener) => return Ok((listener, registration)),
                Err(e) => {
                    tracing::debug!(port = registration.port(), error = %e, "assigned port is taken locally; trying another");
                    registration.free().await?;
                    last = Some(e);
                    if options.port.is_some() {
                        break;
                    }
                }
            }
        }
        Err(Error::Bind {
            attempts: BIND_ATTEMPTS,
            source: last.expect("at least one attempt"),
        })
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Owned>> {
        self.shared.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces (or with `merge`, merges into) a registration's metadata.
    pub async fn update(
        &self,
        id: &str,
        metadata: BTreeMap<String, String>,
        merge: bool,
    ) -> Result<Service> {
        self.change_metadata(id, metadata, merge, Vec::new()).await
    }

    /// Merges `metadata` into a registration's and removes the keys in
    /// `remove`.
    pub async fn merge_metadata<I, K>(
        &self,
        id: &str,
        metadata: BTreeMap<String, String>,
        remove: I,
    ) -> Result<Service>
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        let remove = remove.into_iter().map(Into::into).collect();
        self.change_metadata(id, metadata, true, remove).await
    }

    async fn change_metadata(
        &self,
        id: &str,
        metadata: BTreeMap<String, String>,
        merge: bool,
        remove_keys: Vec<String>,
    ) -> Result<Service> {
        let (conn, session_id) = self.session().await?;
        let request = pb::UpdateRequest {
            session_id,
            id: id.to_string(),
            metadata: metadata.into_iter().collect(),
            merge,
            remove_keys,
        };
        let reply = conn
            .rpc
            .clone()
            .update(request)
            .await
            .map_err(|s| self.failure(&conn, s))?
            .into_inner();
        let service = Service::try_from(reply.service.unwrap_or_default())?;
        if let Some(owned) = self.owned().get_mut(id) {
            owned.request.metadata = service
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        Ok(service)
    }

    /// Frees a registration: this client's own, or, under mTLS, one its
    /// certificate's identity owns (or any, for an admin).
    pub async fn free(&self, id: &str) -> Result<Service> {
        let (conn, session_id) = self.session().await?;
        let request = pb::FreeRequest {
            session_id,
            id: id.to_string(),
        };
        let result = conn.rpc.clone().free(request).await;
        if result
            .as_ref()
            .map_or_else(|s| s.code() == tonic::Code::NotFound, |_| true)
        {
            self.owned().remove(id);
        }
        let reply = result.map_err(|s| self.failure(&conn, s))?;
        Ok(Service::try_from(
            reply.into_inner().service.unwrap_or_default(),
        )?)
    }

    /// Marks a registration draining: its instance is stopping, so `get`
    /// and the catalogs' picks stop choosing it, while it stays listed
    /// until freed. The same registrations as [`free`](Self::free) may be
    /// drained; draining is one-way. One of this client's own stays
    /// draining when re-asserted.
    pub async fn drain(&self, id: &str) -> Result<Service> {
        let (conn, session_id) = self.session().await?;
        let request = pb::DrainRequest {
            session_id,
            id: id.to_string(),
        };
        let reply = conn
            .rpc
            .clone()
            .drain(request)
            .await
            .map_err(|s| self.failure(&conn, s))?
            .into_inner();
        if let Some(owned) = self.owned().get_mut(id) {
            owned.draining = true;
        }
        Ok(Service::try_from(reply.service.unwrap_or_default())?)
    }

    /// The services matching `pattern` (`name`, `name@range` or empty) now.
    pub async fn query(&self, pattern: &str) -> Result<Vec<Service>> {
        let _: Pattern = pattern.parse()?;
        let request = pb::QueryRequest {
            pattern: pattern.into(),
            namespace: self.namespace(),
            ..Default::default()
        };
        let reply = self
            .read(|mut rpc| {
                let request = request.clone();
                async move { rpc.query(request).await }
            })
            .await?;
        reply
            .services
            .into_iter()
            .map(|s| Ok(Service::try_from(s)?))
            .collect()
    }

    /// Waits until at least one service matches `pattern`, across
    /// reconnects, and returns the matches.
    pub async fn get(&self, pattern: &str) -> Result<Vec<Service>> {
        self.get_inner(pattern, None).await
    }

    /// Like [`get`](Self::get), but gives up after `timeout` with
    /// `DEADLINE_EXCEEDED`.
    pub async fn get_timeout(&self, pattern: &str, timeout: Duration) -> Result<Vec<Service>> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.get_inner(pattern, Some(deadline)).await
    }

    async fn get_inner(
        &self,
        pattern: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Vec<Service>> {
        let _: Pattern = pattern.parse()?;
        loop {
            let conn = self.conn().await?;
            let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(Error::Status {
                    code: tonic::Code::DeadlineExceeded,
                    message: format!("no service matched {pattern:?} in time"),
                });
            }
            let request = pb::GetRequest {
                pattern: pattern.into(),
                namespace: self.namespace(),
                timeout_ms: left.map_or(0, |l| l.as_millis().max(1) as u64),
                ..Default::default()
            };
            match conn.rpc.clone().get(request).await {
                Ok(reply) => {
                    return reply
                        .into_inner()
                        .services
                        .into_iter()
                        .map(|s| Ok(Service::try_from(s)?))
                        .collect();
                }
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                    ) =>
                {
                    // The server went away mid-wait: wait on the next one.
                    let _ = self.failure(&conn, status);
                    self.wait_for_new_conn(&conn).await?;
                }
                Err(status) => return Err(self.failure(&conn, status)),
            }
        }
    }

    /// Waits until the connection is another than `old`.
    async fn wait_for_new_conn(&self, old: &Conn) -> Result<()> {
        let mut rx = self.shared.conn.subscribe();
        let mut closed = self.shared.closed.subscribe();
        tokio::select! {
            changed = changed_from(&mut rx, old) => changed,
            _ = session::until_closed(&mut closed) => Err(Error::Closed),
            // The same session may come back on the same server after a blip.
            _ = tokio::time::sleep(self.shared.options.backoff_max) => Ok(()),
        }
    }

    /// Watches the services matching `pattern`: the current ones, `Synced`,
    /// then every change. The watch survives reconnects and failover,
    /// resuming from the last revision seen; when the server cannot resume
    /// it, the stream delivers `Reset` and a fresh snapshot.
    pub fn watch(&self, pattern: &str) -> Result<WatchStream> {
        let _: Pattern = pattern.parse()?;
        Ok(watch::start(self.clone(), pattern.to_string()))
    }

    /// A local, always-current view of the services matching `pattern`,
    /// answering lookups with no RPC.
    pub async fn catalog(&self, pattern: &str) -> Result<Catalog> {
        Catalog::start(self.watch(pattern)?).await
    }

    /// Ends the session, if one was opened (freeing its registrations), and
    /// stops the client. With a [`drain_wait`](Builder::drain_wait), first
    /// drains this client's registrations and waits that long.
    pub async fn close(self) {
        let wait = self.shared.options.drain_wait;
        let ids: Vec<String> = self.owned().keys().cloned().collect();
        if !wait.is_zero() && !ids.is_empty() {
            for id in &ids {
                if let Err(e) = self.drain(id).await {
                    tracing::warn!(%id, error = %e, "could not drain a registration before closing");
                }
            }
            tokio::time::sleep(wait).await;
        }
        let _ = self.shared.closed.send(true);
        let task = self
            .life
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
