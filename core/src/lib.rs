//! The registry core: plain Rust, no tonic (its Cargo.toml keeps it so).
//! It holds the services, the sessions that own them and the ports they
//! use, applies the rules (validation, policy, ownership, port choice), and
//! publishes every change on a feed that wakes `get` waiters and watches.
//!
//! This file holds the handle, the locked state and the change machinery;
//! the calls live by job: `session_calls` (open, resume, ping, close),
//! `writes` (register, update, free and their rules), `reads` (query, get,
//! watch), `checks` (names, hosts, ids), `reaper` (the memory store's
//! expiry), and `store` and `apply`, the seam to a store that keeps the
//! truth elsewhere (etcd) and its feed back into the index.

mod apply;
mod by_id;
mod checks;
mod error;
mod index;
mod limits;
mod policy;
mod ports;
mod reads;
mod reaper;
mod session_calls;
mod sessions;
mod stats;
mod store;
mod watch;
mod writes;

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use seaport::{FreeReason, Service};
use tokio::sync::{Notify, broadcast, watch as latest};
use tokio::time::Instant;

pub use checks::namespace_or_default;
pub use error::{RegistryError, Result};
pub use limits::Limits;
pub use policy::Policy;
pub use seaport::EventKind;
pub use sessions::Eviction;
pub use stats::{HOSTS_LISTED, Stats};
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
    /// What happened, for metrics.
    counters: stats::Counters,
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
        tokio::spawn(reaper::reap(registry.clone()));
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
                counters: stats::Counters::default(),
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
}

/// How long a write through a store waits for the index to apply it.
const CATCH_UP: Duration = Duration::from_secs(5);

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
        draining: false,
    })
}

#[cfg(test)]
mod tests;
