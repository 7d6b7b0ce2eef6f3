//! The registry core: plain Rust, no tonic (its Cargo.toml keeps it so).
//! It holds the services, the sessions that own them and the ports they
//! use, applies the rules (validation, policy, ownership, port choice), and
//! publishes every change on a feed that wakes `get` waiters and watches.

mod apply;
mod by_id;
mod error;
mod index;
mod limits;
mod policy;
mod ports;
mod sessions;
mod store;
mod watch;

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use seaport::{FreeReason, Metadata, Role, Service, quote, validate_name};
use tokio::sync::{Notify, broadcast, watch as latest};
use tokio::time::Instant;

pub use error::{RegistryError, Result};
pub use limits::Limits;
pub use policy::Policy;
pub use seaport::EventKind;
pub use sessions::Eviction;
pub use store::{Applied, SessionRecord, Store, StoreFuture, StoreHealth, Write};
pub use watch::{Change, ChangeKind, Selector, Watch, WatchEvent};

use by_id::ServicesById;
use index::Index;
use ports::Ports;
use sessions::{Session, Sessions};

/// A cheap, cloneable handle on the registry.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

struct Shared {
    /// A std mutex: it is never held across an await, only for the few
    /// map operations of one call, so it is cheaper than an async one.
    state: Mutex<State>,
    limits: Limits,
    /// Who may register what and who is admin; replaced whole on reload.
    policy: RwLock<Arc<Policy>>,
    /// Every change, for watches and `get` waiters. Sent while the state
    /// lock is held, so subscribing under the lock misses nothing.
    feed: broadcast::Sender<Arc<Change>>,
    reaper_wake: Notify,
    stopping: AtomicBool,
    /// The last session label handed out.
    labels: AtomicU64,
    /// Where the truth lives when not in this process (etcd); `None` for
    /// the memory store, whose truth is the state itself.
    store: Option<Arc<dyn Store>>,
    /// The last revision the state reflects: a write through a store
    /// returns once its own revision is applied, so its writer reads it.
    applied: latest::Sender<u64>,
    /// Where the state stands with its store.
    health: latest::Sender<StoreHealth>,
}

struct State {
    revision: u64,
    /// `history` holds every change made after this revision.
    history_floor: u64,
    index: Index,
    by_id: ServicesById,
    ports: Ports,
    sessions: Sessions,
    /// The last `limits.history` changes, for watches resuming by revision:
    /// kept in the ring itself rather than behind an `Arc` each, so that a
    /// change no one watches costs no allocation, and evicting one reads
    /// the ring in order rather than a block made long ago.
    history: VecDeque<Change>,
    /// Changes pushed out of `history` under the lock, dropped by
    /// [`Locked`] after it is released.
    evicted: Vec<Change>,
}

/// The locked state. Dropping it releases the lock, then drops the changes
/// the history evicted meanwhile: an evicted change and the service it may
/// be the last to hold were made long ago and are no longer in the cache,
/// the slowest frees of a registration, and the other core may be waiting
/// for the lock.
struct Locked<'a>(Option<MutexGuard<'a, State>>);

impl Deref for Locked<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        self.0.as_ref().expect("held until dropped")
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.0.as_mut().expect("held until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(mut state) = self.0.take() {
            let evicted = std::mem::take(&mut state.evicted);
            drop(state);
            drop(evicted);
        }
    }
}

/// What a session open or resume granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Session id: a secret of its holder, never logged.
    pub id: String,
    /// A number that names the session in logs.
    pub label: u64,
    /// Granted ttl.
    pub ttl: Duration,
    /// Address the client was seen at.
    pub observed_host: String,
    /// True for a resumed session.
    pub resumed: bool,
}

/// The arguments of a registration, as received.
#[derive(Clone, Debug, Default)]
pub struct NewService {
    /// Session that will hold it.
    pub session_id: String,
    /// `name` or `name@version`.
    pub role: String,
    /// Namespace; empty means "default".
    pub namespace: String,
    /// Host; empty means the session's observed address.
    pub host: String,
    /// Port; 0 means assign one.
    pub port: u32,
    /// Id; empty means generate one.
    pub id: String,
    /// Metadata pairs as received, checked against the limits before
    /// anything is built from them.
    pub metadata: Vec<(String, String)>,
}

/// A metadata change.
#[derive(Clone, Debug, Default)]
pub struct MetadataChange {
    /// Pairs to set, as received.
    pub set: Vec<(String, String)>,
    /// Merge into the existing metadata instead of replacing it.
    pub merge: bool,
    /// Keys to remove when merging.
    pub remove: Vec<String>,
}

/// Who asks for a change: the identity of their client certificate (empty
/// without mTLS). What it may do is the [`Policy`]'s to say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    /// Certificate identity, or empty.
    pub identity: String,
}

/// Stops the session reaper when dropped.
pub struct ReaperGuard(Registry);

impl Drop for ReaperGuard {
    fn drop(&mut self) {
        self.0.shared.stopping.store(true, Ordering::Release);
        self.0.shared.reaper_wake.notify_one();
    }
}

/// The answer of a call that does not wait, as every call on the memory
/// store is: for benches and model tests that drive the registry from
/// plain threads. Panics if the call waits (a store's round trip).
pub fn at_once<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(answer) => answer,
        std::task::Poll::Pending => {
            panic!("at_once: the call waited; only the memory store's calls answer at once")
        }
    }
}

/// The namespace used when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Revisions start at the start time in microseconds, so a restarted
/// server's revisions lie above the old ones and a watch resuming from an
/// old revision is reset rather than replayed from unrelated history.
fn first_revision() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// 128 random bits as 32 lowercase hex digits, written directly: the
/// formatting machinery cost more than the rest of making an id.
fn random_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..);
    (0..32)
        .rev()
        .map(|i| char::from(HEX[(n >> (4 * i)) as usize & 0xf]))
        .collect()
}

impl Registry {
    /// A new, empty registry on the memory store, and its session reaper,
    /// which runs until the guard is dropped. Must be called inside a tokio
    /// runtime.
    pub fn new(limits: Limits) -> (Registry, ReaperGuard) {
        let registry = Registry::build(limits, None);
        tokio::spawn(reap(registry.clone()));
        (registry.clone(), ReaperGuard(registry))
    }

    /// A registry whose truth `store` keeps. It answers reads once the
    /// store has loaded it ([`Registry::load`]), and follows the store's
    /// feed ([`Registry::apply`]); sessions expire in the store, so there
    /// is no reaper here.
    pub fn with_store(limits: Limits, store: Arc<dyn Store>) -> Registry {
        Registry::build(limits, Some(store))
    }

    fn build(limits: Limits, store: Option<Arc<dyn Store>>) -> Registry {
        let (feed, _) = broadcast::channel(limits.watch_buffer.max(1));
        let revision = if store.is_some() { 0 } else { first_revision() };
        let health = if store.is_some() {
            StoreHealth::Syncing
        } else {
            StoreHealth::Synced
        };
        let state = State {
            revision,
            history_floor: revision,
            index: Index::default(),
            by_id: ServicesById::default(),
            ports: Ports::new(limits.port_range.clone(), limits.port_quarantine),
            sessions: Sessions::default(),
            history: VecDeque::new(),
            evicted: Vec::new(),
        };
        Registry {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                limits,
                policy: RwLock::default(),
                feed,
                reaper_wake: Notify::new(),
                stopping: AtomicBool::new(false),
                labels: AtomicU64::new(0),
                store,
                applied: latest::Sender::new(revision),
                health: latest::Sender::new(health),
            }),
        }
    }

    /// The limits this registry enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// True once the registry answers reads: at once on the memory store,
    /// after the first load through a store.
    pub fn is_synced(&self) -> bool {
        *self.shared.health.borrow() != StoreHealth::Syncing
    }

    /// Where the registry stands with its store, now and as it changes.
    pub fn health(&self) -> latest::Receiver<StoreHealth> {
        self.shared.health.subscribe()
    }

    /// Puts `policy` in force for every call from now on.
    pub fn set_policy(&self, policy: Policy) {
        *self
            .shared
            .policy
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    fn lock(&self) -> Locked<'_> {
        // A panic while holding the lock would be a bug; the state it
        // guards is still consistent map by map, so keep serving.
        Locked(Some(
            self.shared.state.lock().unwrap_or_else(|e| e.into_inner()),
        ))
    }

    /// Opens a session with the requested ttl (`None`: the default),
    /// clamped to the server's bounds.
    pub async fn open_session(
        &self,
        ttl: Option<Duration>,
        observed_host: String,
        owner: String,
    ) -> Result<SessionInfo> {
        let ttl = self.shared.limits.clamp_ttl(ttl);
        let record = SessionRecord {
            id: random_id(),
            lease: 0,
            ttl,
            observed_host,
            owner,
            pinned: false,
            closing: false,
            evicted: Vec::new(),
        };
        let label = match &self.shared.store {
            None => self.open_here(&record),
            Some(store) => self.open_through(store.as_ref(), record.clone()).await?,
        };
        Ok(SessionInfo {
            id: record.id,
            label,
            ttl,
            observed_host: record.observed_host,
            resumed: false,
        })
    }

    /// Opens the session in the memory store; returns its label.
    fn open_here(&self, record: &SessionRecord) -> u64 {
        let label = self.next_label();
        let mut state = self.lock();
        state
            .sessions
            .insert(record.id.as_str().into(), Session::of(record, label));
        drop(state);
        if !record.pinned {
            self.shared.reaper_wake.notify_one();
        }
        label
    }

    /// Opens the session in the store, and waits until the index has it;
    /// returns its label.
    async fn open_through(&self, store: &dyn Store, mut record: SessionRecord) -> Result<u64> {
        let (lease, revision) = store.open(&record).await?;
        record.lease = lease;
        self.caught_up(revision).await?;
        let state = self.lock();
        state
            .sessions
            .open
            .get(record.id.as_str())
            .map(|s| s.label)
            .ok_or(RegistryError::UnknownSession)
    }

    fn next_label(&self) -> u64 {
        self.shared.labels.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Waits until the index reflects `revision`, as a write through the
    /// store must before it answers, so its writer reads what it wrote.
    async fn caught_up(&self, revision: u64) -> Result<()> {
        let mut applied = self.shared.applied.subscribe();
        let wait = applied.wait_for(|at| *at >= revision);
        match tokio::time::timeout(CATCH_UP, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(RegistryError::Unavailable(format!(
                "the change was made, but this server's view of the store has not caught up within {}s; it will appear once it does",
                CATCH_UP.as_secs()
            ))),
        }
    }

    /// Registers the server itself in a session of its own, which never
    /// expires while the server lives and which no client can use,
    /// whatever id it sends. With a store, the session is the store's
    /// lease, which this server keeps alive as long as it runs.
    pub async fn register_server(&self, new: NewService) -> Result<Arc<Service>> {
        let record = SessionRecord {
            id: random_id(),
            lease: 0,
            ttl: SERVER_TTL,
            observed_host: new.host.clone(),
            owner: String::new(),
            pinned: true,
            closing: false,
            evicted: Vec::new(),
        };
        match &self.shared.store {
            None => {
                self.open_here(&record);
            }
            Some(store) => {
                self.open_through(store.as_ref(), record.clone()).await?;
                let lease = self.lease_of(&record.id)?;
                tokio::spawn(keep_server_alive(self.clone(), store.clone(), lease));
            }
        }
        self.register_in(
            NewService {
                session_id: record.id,
                ..new
            },
            &Actor::default(),
            Pinned::Allowed,
        )
        .await
    }

    fn lease_of(&self, id: &str) -> Result<i64> {
        let state = self.lock();
        state
            .sessions
            .open
            .get(id)
            .map(|s| s.lease)
            .ok_or(RegistryError::UnknownSession)
    }

    /// Resumes a session that is still open, and pings it. With a store,
    /// this server now keeps its lease alive: the session may have been
    /// held by another server that died.
    pub fn resume_session(&self, id: &str, actor: &Actor) -> Result<SessionInfo> {
        let mut state = self.lock();
        session_of(&state, id, actor, Pinned::Refused)?;
        let session = state
            .sessions
            .ping(id, Instant::now())
            .ok_or(RegistryError::UnknownSession)?;
        if let Some(store) = &self.shared.store {
            store.keep_alive(session.lease);
        }
        Ok(SessionInfo {
            id: id.to_string(),
            label: session.label,
            ttl: session.ttl,
            observed_host: session.observed_host.clone(),
            resumed: true,
        })
    }

    /// Keeps a session alive for another ttl, and hands over what admins
    /// freed of it since the last ping (almost always nothing).
    pub fn ping(&self, id: &str) -> Result<Vec<Eviction>> {
        let mut state = self.lock();
        let session = state
            .sessions
            .ping(id, Instant::now())
            .ok_or(RegistryError::UnknownSession)?;
        if let Some(store) = &self.shared.store {
            store.keep_alive(session.lease);
        }
        Ok(state
            .sessions
            .open
            .get_mut(id)
            .and_then(|s| s.evictions.as_mut())
            .map_or_else(Vec::new, |e| e.take()))
    }

    /// Ends a session and frees its registrations; returns how many.
    pub async fn close_session(&self, id: &str) -> Result<usize> {
        let Some(store) = &self.shared.store else {
            return self.close_here(id);
        };
        let (record, freed) = {
            let state = self.lock();
            let session = state
                .sessions
                .open
                .get(id)
                .filter(|s| !s.pinned())
                .ok_or(RegistryError::UnknownSession)?;
            (session.record(id), session.services.len())
        };
        let revision = store.close(&record).await?;
        self.caught_up(revision).await?;
        Ok(freed)
    }

    fn close_here(&self, id: &str) -> Result<usize> {
        let now = Instant::now();
        let mut state = self.lock();
        let session = state
            .sessions
            .open
            .remove(id)
            .ok_or(RegistryError::UnknownSession)?;
        let freed = session.services.len();
        for service in session.services.into_services() {
            self.remove_locked(&mut state, &service.id, now, FreeReason::Closed);
        }
        Ok(freed)
    }

    /// Adds a service; see the proto's `Register` for the rules.
    pub async fn register(&self, new: NewService, actor: &Actor) -> Result<Arc<Service>> {
        self.register_in(new, actor, Pinned::Refused).await
    }

    async fn register_in(
        &self,
        new: NewService,
        actor: &Actor,
        pinned: Pinned,
    ) -> Result<Arc<Service>> {
        let (role, port) = self.check_new(&new, actor, pinned)?;
        match &self.shared.store {
            None => self.register_here(new, role, port, actor, pinned),
            Some(store) => {
                self.register_through(store.as_ref(), new, role, port, actor, pinned)
                    .await
            }
        }
    }

    /// The rules a registration must pass before any table is read: every
    /// size before work that grows with the input, then the role, the
    /// policy, the namespace and the port. Returns the role and the port.
    fn check_new(&self, new: &NewService, actor: &Actor, pinned: Pinned) -> Result<(Role, u16)> {
        self.shared
            .limits
            .check_metadata(new.metadata.iter().map(|(k, v)| (k, v)))?;
        if !new.host.is_empty() {
            check_host(&new.host)?;
        }
        if !new.id.is_empty() {
            check_id(&new.id)?;
        }
        let role: Role = new.role.parse()?;
        if pinned == Pinned::Refused {
            // Read in place: a Register need not count a reference on the
            // policy, a line every core would write.
            let policy = self.shared.policy.read().unwrap_or_else(|e| e.into_inner());
            if !policy.may_register(&actor.identity, &role.name) {
                return Err(RegistryError::NotAllowed {
                    identity: actor.identity.clone(),
                    name: role.name,
                });
            }
        }
        namespace_or_default(&new.namespace)?;
        let port = u16::try_from(new.port).map_err(|_| {
            RegistryError::Invalid(format!(
                "port {} is out of range; use 1-65535, or 0 to have one assigned",
                new.port
            ))
        })?;
        Ok((role, port))
    }

    /// Registers in the memory store: the whole change under one lock.
    fn register_here(
        &self,
        new: NewService,
        role: Role,
        port: u16,
        actor: &Actor,
        pinned: Pinned,
    ) -> Result<Arc<Service>> {
        let metadata: Metadata = new.metadata.into_iter().collect();
        let now = Instant::now();
        // Made before the lock: the other core may be waiting for it. A
        // clash with a registered id (one in 2^128) makes another under it.
        let generated = new.id.is_empty().then(random_id);
        let mut state = self.lock();
        let state = &mut *state;
        let decided = decide(
            state,
            &self.shared.limits,
            Asked {
                session_id: &new.session_id,
                id: &new.id,
                host: new.host,
                role: &role,
                port,
                namespace: &new.namespace,
            },
            actor,
            pinned,
        )?;
        let (session_id, host, owner) = match decided {
            Decided::Existing(existing) => return Ok(existing),
            Decided::New {
                session_id,
                host,
                owner,
                ..
            } => (session_id, host, owner),
        };
        let (host, port) = state.ports.reserve(&host, port, now)?;
        let id = match generated {
            Some(first) => unused_id(state, first),
            None => new.id,
        };
        let revision = state.revision + 1;
        let namespace = namespace_unchecked(&new.namespace);
        let service = Arc::new(Service {
            id,
            name: role.name,
            version: role.version,
            host,
            port,
            metadata,
            namespace: state
                .index
                .namespace(namespace)
                .unwrap_or_else(|| namespace.into()),
            owner,
            session_id,
            create_revision: revision,
            mod_revision: revision,
        });
        place(state, &service);
        self.publish(
            state,
            revision,
            ChangeKind::Registered,
            service.clone(),
            None,
        );
        Ok(service)
    }

    /// Registers through the store: the rules decide under the lock, the
    /// store makes the change under its preconditions, and the answer is
    /// the registration as the index applied it. An assigned port that
    /// another server gave away meanwhile is chosen again.
    async fn register_through(
        &self,
        store: &dyn Store,
        new: NewService,
        role: Role,
        port: u16,
        actor: &Actor,
        pinned: Pinned,
    ) -> Result<Arc<Service>> {
        let metadata: Metadata = new.metadata.into_iter().collect();
        let mut tries = 0;
        loop {
            tries += 1;
            let (write, id) = {
                let mut state = self.lock();
                let state = &mut *state;
                let decided = decide(
                    state,
                    &self.shared.limits,
                    Asked {
                        session_id: &new.session_id,
                        id: &new.id,
                        host: new.host.clone(),
                        role: &role,
                        port,
                        namespace: &new.namespace,
                    },
                    actor,
                    pinned,
                )?;
                let Decided::New {
                    session_id,
                    host,
                    owner,
                    lease,
                } = decided
                else {
                    let Decided::Existing(existing) = decided else {
                        unreachable!("two kinds")
                    };
                    return Ok(existing);
                };
                let chosen = state.ports.choose(&host, port, Instant::now())?;
                let id = if new.id.is_empty() {
                    unused_id(state, random_id())
                } else {
                    new.id.clone()
                };
                let service = Arc::new(Service {
                    id: id.clone(),
                    name: role.name.clone(),
                    version: role.version.clone(),
                    host: host.into(),
                    port: chosen,
                    metadata: metadata.clone(),
                    namespace: namespace_unchecked(&new.namespace).into(),
                    owner,
                    session_id,
                    create_revision: 0,
                    mod_revision: 0,
                });
                (Write::Register { service, lease }, id)
            };
            match store.commit(write).await {
                Ok(revision) => {
                    self.caught_up(revision).await?;
                    let state = self.lock();
                    return state
                        .by_id
                        .get(&id)
                        .cloned()
                        .ok_or(RegistryError::UnknownSession);
                }
                // Another server gave the port away since this one last
                // heard: choose again, from a view that now has it.
                Err(RegistryError::PortTaken { .. }) if port == 0 && tries < PORT_TRIES => {
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Changes a registration's metadata; only its owner may.
    pub async fn update(
        &self,
        session_id: &str,
        id: &str,
        change: MetadataChange,
        actor: &Actor,
    ) -> Result<Arc<Service>> {
        let limits = &self.shared.limits;
        limits.check_metadata(change.set.iter().map(|(k, v)| (k, v)))?;
        if change.remove.len() > limits.max_metadata_entries {
            return Err(RegistryError::Invalid(format!(
                "remove_keys has {} keys; the limit is {} (--max-metadata-entries)",
                change.remove.len(),
                limits.max_metadata_entries
            )));
        }
        let Some(store) = &self.shared.store else {
            let mut state = self.lock();
            let state = &mut *state;
            let (previous, metadata) = updated(state, limits, session_id, id, change, actor)?;
            let revision = state.revision + 1;
            let service = Arc::new(Service {
                metadata,
                mod_revision: revision,
                ..(*previous).clone()
            });
            place(state, &service);
            self.publish(
                state,
                revision,
                ChangeKind::Updated,
                service.clone(),
                Some(previous),
            );
            return Ok(service);
        };
        let write = {
            let state = self.lock();
            let (previous, metadata) = updated(&state, limits, session_id, id, change, actor)?;
            Write::Update {
                lease: state
                    .sessions
                    .open
                    .get(&*previous.session_id)
                    .map_or(0, |s| s.lease),
                previous_revision: previous.mod_revision,
                service: Arc::new(Service {
                    metadata,
                    ..(*previous).clone()
                }),
            }
        };
        let revision = store.commit(write).await?;
        self.caught_up(revision).await?;
        let state = self.lock();
        state
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| RegistryError::UnknownService(id.to_string()))
    }

    /// Frees a registration; only its owner, or an admin, may.
    pub async fn free(&self, session_id: &str, id: &str, actor: &Actor) -> Result<Arc<Service>> {
        // The policy is read only for a caller who is not the owner: both
        // cores would otherwise write its lock word on every free.
        let admin = || {
            self.shared
                .policy
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_admin(&actor.identity)
        };
        let Some(store) = &self.shared.store else {
            return self.free_here(session_id, id, actor, admin);
        };
        let (service, evicted) = {
            let state = self.lock();
            let (service, by_owner) = authorize(&state, session_id, id, actor, admin)?;
            let evicted = match (by_owner, state.sessions.open.get(&*service.session_id)) {
                (false, Some(holder)) => {
                    tracing::info!(id, admin = %actor.identity, session = holder.label, "freed by an admin");
                    let mut record = holder.record(&service.session_id);
                    record.evicted.push(Eviction {
                        id: id.to_string(),
                        by: actor.identity.clone(),
                    });
                    Some(record)
                }
                _ => None,
            };
            (service.clone(), evicted)
        };
        let revision = store
            .commit(Write::Free {
                service: service.clone(),
                evicted,
            })
            .await?;
        self.caught_up(revision).await?;
        Ok(service)
    }

    fn free_here(
        &self,
        session_id: &str,
        id: &str,
        actor: &Actor,
        admin: impl FnOnce() -> bool,
    ) -> Result<Arc<Service>> {
        // Read before the lock, as Register's is: the other core may be
        // waiting for it.
        let now = Instant::now();
        let mut state = self.lock();
        let (service, by_owner) = authorize(&state, session_id, id, actor, admin)?;
        let service = service.clone();
        let reason = if by_owner {
            FreeReason::Owner
        } else {
            FreeReason::Admin
        };
        if let Some(session) = state.sessions.open.get_mut(&*service.session_id) {
            session.services.remove(id);
            if reason == FreeReason::Admin {
                tracing::info!(id, admin = %actor.identity, session = session.label, "freed by an admin");
                session.evictions.get_or_insert_default().record(Eviction {
                    id: id.to_string(),
                    by: actor.identity.clone(),
                });
            }
        }
        Ok(self
            .remove_locked(&mut state, id, now, reason)
            .expect("checked above"))
    }

    /// What a Query, Get or Watch asks for, checked: the metadata filter's
    /// size first, then the pattern and the namespace.
    pub fn selector<I>(&self, pattern: &str, namespace: &str, metadata: I) -> Result<Selector>
    where
        I: IntoIterator<Item = (String, String)>,
        I::IntoIter: ExactSizeIterator,
    {
        if *self.shared.health.borrow() == StoreHealth::Syncing {
            return Err(RegistryError::Unavailable(
                "this server is still loading the registry from its store; retry in a moment, or ask another server".into(),
            ));
        }
        let metadata = metadata.into_iter();
        if metadata.len() > self.shared.limits.max_metadata_entries {
            return Err(RegistryError::Invalid(format!(
                "the metadata filter has {} pairs; the limit is {} (--max-metadata-entries)",
                metadata.len(),
                self.shared.limits.max_metadata_entries
            )));
        }
        let metadata: std::collections::BTreeMap<String, String> = metadata.collect();
        self.shared.limits.check_metadata(metadata.iter())?;
        Ok(Selector {
            namespace: namespace_or_default(namespace)?.to_string(),
            pattern: pattern.parse()?,
            metadata,
        })
    }

    /// The services matching `selector` now, and the revision they reflect.
    pub fn query(&self, selector: &Selector) -> (Vec<Arc<Service>>, u64) {
        let state = self.lock();
        (state.index.select(selector), state.revision)
    }

    /// Like `query`, but waits until at least one service matches. Dropping
    /// the future leaves nothing behind.
    pub async fn get(&self, selector: &Selector) -> (Vec<Arc<Service>>, u64) {
        loop {
            let mut feed = {
                let state = self.lock();
                let found = state.index.select(selector);
                if !found.is_empty() {
                    return (found, state.revision);
                }
                self.shared.feed.subscribe()
            };
            loop {
                match feed.recv().await {
                    Ok(change) => {
                        if matches!(selector.classify(&change), Some(EventKind::Registered)) {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        }
    }

    /// Starts a watch: a snapshot then live changes, or, when `since` is
    /// still in the history, the changes after it.
    pub fn watch(&self, selector: Selector, since: u64) -> Watch {
        let state = self.lock();
        let replayable = since > 0 && since <= state.revision && since >= state.history_floor;
        if replayable {
            let feed = self.shared.feed.subscribe();
            let mut pending: VecDeque<WatchEvent> = state
                .history
                .iter()
                .filter(|c| c.revision > since)
                .filter_map(|c| selector.classify(c).map(|kind| WatchEvent::of(c, kind)))
                .collect();
            pending.push_back(WatchEvent::marker(EventKind::Synced, None, state.revision));
            drop(state);
            return Watch::new(self.clone(), selector, feed, pending);
        }
        drop(state);
        let (feed, mut pending) = self.snapshot(&selector);
        if since > 0 {
            let revision = pending.back().map_or(0, |e| e.revision);
            pending.push_front(WatchEvent::marker(EventKind::Reset, None, revision));
        }
        Watch::new(self.clone(), selector, feed, pending)
    }

    /// A fresh subscription and the snapshot it starts from, ending in Synced.
    fn snapshot(
        &self,
        selector: &Selector,
    ) -> (broadcast::Receiver<Arc<Change>>, VecDeque<WatchEvent>) {
        let state = self.lock();
        let feed = self.shared.feed.subscribe();
        let revision = state.revision;
        let mut pending: VecDeque<WatchEvent> = state
            .index
            .select(selector)
            .into_iter()
            .map(|s| WatchEvent::marker(EventKind::Existing, Some(s), revision))
            .collect();
        pending.push_back(WatchEvent::marker(EventKind::Synced, None, revision));
        (feed, pending)
    }

    /// Removes a service from every table and publishes the free. The
    /// caller has removed it from its session's set (or dropped the session).
    fn remove_locked(
        &self,
        state: &mut State,
        id: &str,
        now: Instant,
        reason: FreeReason,
    ) -> Option<Arc<Service>> {
        let revision = state.revision + 1;
        self.remove_at(state, revision, id, now, reason)
    }

    /// Removes a service from every table and publishes its free at
    /// `revision`.
    fn remove_at(
        &self,
        state: &mut State,
        revision: u64,
        id: &str,
        now: Instant,
        reason: FreeReason,
    ) -> Option<Arc<Service>> {
        let service = state.by_id.remove(id)?;
        state.index.remove(&service);
        state.ports.release(&service.host, service.port, now);
        self.publish(
            state,
            revision,
            ChangeKind::Freed(reason),
            service.clone(),
            None,
        );
        Some(service)
    }

    /// Publishes a change made at `revision`, the state's revision from now.
    fn publish(
        &self,
        state: &mut State,
        revision: u64,
        kind: ChangeKind,
        service: Arc<Service>,
        previous: Option<Arc<Service>>,
    ) {
        state.revision = revision;
        let change = Change {
            revision,
            kind,
            service,
            previous,
        };
        // Receivers subscribe under the lock, so none can appear between
        // this count and the send; with none, there is nothing to share.
        if self.shared.feed.receiver_count() > 0 {
            let _ = self.shared.feed.send(Arc::new(change.clone()));
        }
        if state.history.len() >= self.shared.limits.history
            && let Some(oldest) = state.history.pop_front()
        {
            state.history_floor = oldest.revision;
            state.evicted.push(oldest);
        }
        if self.shared.limits.history > 0 {
            state.history.push_back(change);
        } else {
            state.history_floor = revision;
        }
    }

    /// Expires the sessions whose ttl has passed; returns when to look again.
    fn expire_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.lock();
        for id in state.sessions.due(now) {
            if let Some(session) = state.sessions.open.remove(&id) {
                tracing::info!(
                    session = session.label,
                    services = session.services.len(),
                    "session expired"
                );
                for service in session.services.into_services() {
                    self.remove_locked(&mut state, &service.id, now, FreeReason::Expired);
                }
            }
        }
        state.sessions.next_deadline()
    }
}

/// Whether a call may use the server's own session.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pinned {
    /// The server registering itself.
    Allowed,
    /// Any client's call: the server's session is as unknown to it as any
    /// id it never opened.
    Refused,
}

/// The session `id`, if it is open and belongs to `actor`'s identity.
/// Returns the session's id as the table holds it, for its services to share.
fn session_of<'a>(
    state: &'a State,
    id: &str,
    actor: &Actor,
    pinned: Pinned,
) -> Result<(&'a Arc<str>, &'a Session)> {
    let (key, session) = state
        .sessions
        .open
        .get_key_value(id)
        .ok_or(RegistryError::UnknownSession)?;
    if session.pinned() && pinned == Pinned::Refused {
        return Err(RegistryError::UnknownSession);
    }
    if *session.owner != *actor.identity {
        return Err(RegistryError::NotSessionOwner {
            owner: session.owner.to_string(),
        });
    }
    Ok((key, session))
}

/// Puts a new or changed service in every table that holds it, so none
/// keeps an older record of it.
fn place(state: &mut State, service: &Arc<Service>) {
    state.ports.hold(service);
    state.index.insert(service.clone());
    state.by_id.put(service.clone());
    if let Some(session) = state.sessions.open.get_mut(&*service.session_id) {
        session.services.put(service.clone());
    }
}

/// The service `id`, if `actor` may change it through `session_id`: the
/// session that holds it, or under mTLS any session of the owning identity,
/// or an admin when `admin_may` says so (asked only of a caller who is not
/// the owner). Also says whether the caller is its owner.
fn authorize<'a>(
    state: &'a State,
    session_id: &str,
    id: &str,
    actor: &Actor,
    admin_may: impl FnOnce() -> bool,
) -> Result<(&'a Arc<Service>, bool)> {
    session_of(state, session_id, actor, Pinned::Refused)?;
    let service = state
        .by_id
        .get(id)
        .ok_or_else(|| RegistryError::UnknownService(id.to_string()))?;
    let owner = *service.session_id == *session_id
        || (!service.owner.is_empty() && *service.owner == *actor.identity);
    if owner || admin_may() {
        return Ok((service, owner));
    }
    Err(RegistryError::NotOwner {
        id: id.to_string(),
        owner: service.owner.to_string(),
    })
}

/// What a registration asks for, as the rules read it under the lock.
struct Asked<'a> {
    session_id: &'a str,
    id: &'a str,
    /// Empty: the session's observed address.
    host: String,
    role: &'a Role,
    port: u16,
    namespace: &'a str,
}

/// What the rules decided of a registration.
enum Decided {
    /// The session holds this very registration already: a re-assert.
    Existing(Arc<Service>),
    /// A new registration, to be made.
    New {
        /// The session's id as the table holds it, for services to share.
        session_id: Arc<str>,
        host: String,
        owner: Arc<str>,
        /// The session's lease in the store (0 in memory).
        lease: i64,
    },
}

/// The rules of a registration that read the tables: the session and its
/// owner, what admins freed of it, the host, an id already held, and the
/// session's count.
fn decide(
    state: &State,
    limits: &Limits,
    asked: Asked<'_>,
    actor: &Actor,
    pinned: Pinned,
) -> Result<Decided> {
    let (session_id, session) = session_of(state, asked.session_id, actor, pinned)?;
    if session
        .evictions
        .as_ref()
        .is_some_and(|e| e.contains(asked.id))
    {
        return Err(RegistryError::Evicted(asked.id.to_string()));
    }
    let host = if asked.host.is_empty() {
        session.observed_host.clone()
    } else {
        asked.host
    };
    if host.is_empty() {
        return Err(RegistryError::Invalid(
            "the server could not see this client's address; give a host".into(),
        ));
    }
    // An empty id asks for a new one: no need to look it up.
    let existing = if asked.id.is_empty() {
        None
    } else {
        state.by_id.get(asked.id)
    };
    if let Some(existing) = existing {
        if existing.session_id != *session_id {
            return Err(RegistryError::IdTaken(asked.id.to_string()));
        }
        let same = existing.name == asked.role.name
            && existing.version == asked.role.version
            && *existing.host == *host
            && *existing.namespace == *namespace_unchecked(asked.namespace)
            && (asked.port == 0 || existing.port == asked.port);
        if same {
            return Ok(Decided::Existing(existing.clone()));
        }
        return Err(RegistryError::IdConflict {
            id: asked.id.to_string(),
            existing: format!("{} at {}", existing.role(), existing.address()),
        });
    }
    if session.services.len() >= limits.max_registrations_per_session {
        return Err(RegistryError::TooManyRegistrations(
            limits.max_registrations_per_session,
        ));
    }
    Ok(Decided::New {
        session_id: session_id.clone(),
        host,
        owner: session.owner.clone(),
        lease: session.lease,
    })
}

/// A registration and the metadata `change` gives it, if `actor` may
/// change it through `session_id`.
fn updated(
    state: &State,
    limits: &Limits,
    session_id: &str,
    id: &str,
    change: MetadataChange,
    actor: &Actor,
) -> Result<(Arc<Service>, Metadata)> {
    let set: Metadata = change.set.into_iter().collect();
    let (previous, _) = authorize(state, session_id, id, actor, || false)?;
    let mut metadata = if change.merge {
        previous.metadata.clone()
    } else {
        Metadata::new()
    };
    if change.merge {
        for key in &change.remove {
            metadata.remove(key);
        }
    }
    metadata.extend(set);
    limits.check_metadata(metadata.iter())?;
    Ok((previous.clone(), metadata))
}

/// `first`, or another random id if a registration holds it (one chance
/// in 2^128).
fn unused_id(state: &State, first: String) -> String {
    std::iter::once(first)
        .chain(std::iter::repeat_with(random_id))
        .find(|id| !state.by_id.contains(id))
        .expect("ids are endless")
}

/// How long a write through a store waits for the index to apply it.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Times an assigned port is chosen again when another server took it.
const PORT_TRIES: usize = 8;

/// The ttl of a server's own lease in a store: when the server dies, its
/// `seaport@` registration goes this long after.
const SERVER_TTL: Duration = Duration::from_secs(10);

/// Keeps the server's own lease alive while the registry lives.
async fn keep_server_alive(registry: Registry, store: Arc<dyn Store>, lease: i64) {
    let weak = Arc::downgrade(&registry.shared);
    drop(registry);
    let mut tick = tokio::time::interval(SERVER_TTL / 4);
    loop {
        tick.tick().await;
        if weak.strong_count() == 0 {
            return;
        }
        store.keep_alive(lease);
    }
}

/// The namespace of a request already checked: the given one or the
/// default.
fn namespace_unchecked(namespace: &str) -> &str {
    if namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        namespace
    }
}

/// The namespace to use: the given one, checked, or the default.
pub fn namespace_or_default(namespace: &str) -> Result<&str> {
    if namespace.is_empty() {
        return Ok(DEFAULT_NAMESPACE);
    }
    validate_name("namespace", namespace)?;
    Ok(namespace)
}

/// Longest host name, as RFC 1123 allows.
const MAX_HOST_LEN: usize = 253;

/// Longest registration id.
const MAX_ID_LEN: usize = 128;

/// A host is an IP address (IPv6 without brackets) or an RFC 1123 name:
/// dot-separated labels of 1-63 letters, digits and `-`, not starting or
/// ending with `-`, at most 253 bytes in all. Anything else would be
/// handed to every client that connects to it.
fn check_host(host: &str) -> Result<()> {
    if host.len() > MAX_HOST_LEN {
        return Err(RegistryError::Invalid(format!(
            "host is {} bytes long; the limit is {MAX_HOST_LEN}",
            host.len()
        )));
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(RegistryError::Invalid(format!(
            "host {} is neither an IP address nor a host name; give one such as 10.0.0.5, fd00::5 (no brackets) or web-1.internal: labels of letters, digits and `-`, no port",
            quote(host)
        )));
    }
    Ok(())
}

fn check_id(id: &str) -> Result<()> {
    if id.len() > MAX_ID_LEN {
        return Err(RegistryError::Invalid(format!(
            "id is {} bytes long; the limit is {MAX_ID_LEN}",
            id.len()
        )));
    }
    if !id
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b':'))
    {
        return Err(RegistryError::Invalid(format!(
            "id {} is not valid; use letters, digits, `.`, `_`, `-` or `:`",
            quote(id)
        )));
    }
    Ok(())
}

/// How often at most the reaper looks for expired sessions. Deadlines of
/// many sessions are spread over time; waking for each one would cost a
/// context switch per session per ttl, so a session is freed up to this
/// much after its ttl instead.
const REAP_TICK: Duration = Duration::from_millis(100);

/// Expires sessions as their ttl passes, until the reaper guard drops.
async fn reap(registry: Registry) {
    while !registry.shared.stopping.load(Ordering::Acquire) {
        let next = registry.expire_due();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.max(Instant::now() + REAP_TICK)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = registry.shared.reaper_wake.notified() => {}
        }
    }
}

/// A `web` service in the default namespace, for the unit tests.
#[cfg(test)]
fn test_service(id: &str, version: Option<&str>, host: &str, port: u16) -> Arc<Service> {
    Arc::new(Service {
        id: id.into(),
        name: "web".into(),
        version: version.map(|v| v.parse().expect("a version")),
        host: host.into(),
        port,
        metadata: Default::default(),
        namespace: DEFAULT_NAMESPACE.into(),
        owner: "".into(),
        session_id: "s".into(),
        create_revision: 1,
        mod_revision: 1,
    })
}

#[cfg(test)]
mod tests;
