//! The registry core: plain Rust, no tonic (its Cargo.toml keeps it so).
//! It holds the services, the sessions that own them and the ports they
//! use, applies the rules (validation, policy, ownership, port choice), and
//! publishes every change on a feed that wakes `get` waiters and watches.

mod by_id;
mod error;
mod index;
mod limits;
mod policy;
mod ports;
mod sessions;
mod watch;

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use seaport::{FreeReason, Metadata, Role, Service, quote, validate_name};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

pub use error::{RegistryError, Result};
pub use limits::Limits;
pub use policy::Policy;
pub use seaport::EventKind;
pub use sessions::Eviction;
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
}

struct State {
    revision: u64,
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
    /// A new, empty registry and its session reaper, which runs until the
    /// guard is dropped. Must be called inside a tokio runtime.
    pub fn new(limits: Limits) -> (Registry, ReaperGuard) {
        let (feed, _) = broadcast::channel(limits.watch_buffer.max(1));
        let state = State {
            revision: first_revision(),
            index: Index::default(),
            by_id: ServicesById::default(),
            ports: Ports::new(limits.port_range.clone(), limits.port_quarantine),
            sessions: Sessions::default(),
            history: VecDeque::new(),
            evicted: Vec::new(),
        };
        let registry = Registry {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                limits,
                policy: RwLock::default(),
                feed,
                reaper_wake: Notify::new(),
                stopping: AtomicBool::new(false),
                labels: AtomicU64::new(0),
            }),
        };
        tokio::spawn(reap(registry.clone()));
        (registry.clone(), ReaperGuard(registry))
    }

    /// The limits this registry enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
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
    pub fn open_session(
        &self,
        ttl: Option<Duration>,
        observed_host: String,
        owner: String,
    ) -> SessionInfo {
        let ttl = self.shared.limits.clamp_ttl(ttl);
        let id = random_id();
        let label = self.next_label();
        let mut state = self.lock();
        state.sessions.insert(
            id.as_str().into(),
            Session {
                ttl,
                deadline: Some(Instant::now() + ttl),
                observed_host: observed_host.clone(),
                owner: owner.into(),
                label,
                services: Default::default(),
                evictions: None,
            },
        );
        drop(state);
        self.shared.reaper_wake.notify_one();
        SessionInfo {
            id,
            label,
            ttl,
            observed_host,
            resumed: false,
        }
    }

    fn next_label(&self) -> u64 {
        self.shared.labels.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers the server itself in a session of its own, which never
    /// expires and which no client can use, whatever id it sends.
    pub fn register_server(&self, new: NewService) -> Result<Arc<Service>> {
        let id = random_id();
        let session = Session {
            ttl: Duration::ZERO,
            deadline: None,
            observed_host: new.host.clone(),
            owner: "".into(),
            label: self.next_label(),
            services: Default::default(),
            evictions: None,
        };
        self.lock().sessions.insert(id.as_str().into(), session);
        self.register_in(
            NewService {
                session_id: id,
                ..new
            },
            &Actor::default(),
            Pinned::Allowed,
        )
    }

    /// Resumes a session that is still open, and pings it.
    pub fn resume_session(&self, id: &str, actor: &Actor) -> Result<SessionInfo> {
        let mut state = self.lock();
        session_of(&state, id, actor, Pinned::Refused)?;
        let session = state
            .sessions
            .ping(id, Instant::now())
            .ok_or(RegistryError::UnknownSession)?;
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
        state
            .sessions
            .ping(id, Instant::now())
            .ok_or(RegistryError::UnknownSession)?;
        Ok(state
            .sessions
            .open
            .get_mut(id)
            .and_then(|s| s.evictions.as_mut())
            .map_or_else(Vec::new, |e| e.take()))
    }

    /// Ends a session and frees its registrations; returns how many.
    pub fn close_session(&self, id: &str) -> Result<usize> {
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
    pub fn register(&self, new: NewService, actor: &Actor) -> Result<Arc<Service>> {
        self.register_in(new, actor, Pinned::Refused)
    }

    fn register_in(&self, new: NewService, actor: &Actor, pinned: Pinned) -> Result<Arc<Service>> {
        let limits = &self.shared.limits;
        // Every size is checked before work that grows with the input.
        limits.check_metadata(new.metadata.iter().map(|(k, v)| (k, v)))?;
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
        let namespace = namespace_or_default(&new.namespace)?;
        let metadata: Metadata = new.metadata.into_iter().collect();
        let port = u16::try_from(new.port).map_err(|_| {
            RegistryError::Invalid(format!(
                "port {} is out of range; use 1-65535, or 0 to have one assigned",
                new.port
            ))
        })?;

        let now = Instant::now();
        // Made before the lock: the other core may be waiting for it. A
        // clash with a registered id (one in 2^128) makes another under it.
        let generated = new.id.is_empty().then(random_id);
        let mut state = self.lock();
        let state = &mut *state;
        let (session_id, session) = session_of(state, &new.session_id, actor, pinned)?;
        if session
            .evictions
            .as_ref()
            .is_some_and(|e| e.contains(&new.id))
        {
            return Err(RegistryError::Evicted(new.id));
        }
        let session_id = session_id.clone();
        let host = if new.host.is_empty() {
            session.observed_host.clone()
        } else {
            new.host
        };
        if host.is_empty() {
            return Err(RegistryError::Invalid(
                "the server could not see this client's address; give a host".into(),
            ));
        }

        // An empty id asks for a new one: no need to look it up.
        let existing = if new.id.is_empty() {
            None
        } else {
            state.by_id.get(&new.id)
        };
        if let Some(existing) = existing {
            if existing.session_id != session_id {
                return Err(RegistryError::IdTaken(new.id));
            }
            let same = existing.name == role.name
                && existing.version == role.version
                && *existing.host == *host
                && *existing.namespace == *namespace
                && (port == 0 || existing.port == port);
            if same {
                return Ok(existing.clone());
            }
            return Err(RegistryError::IdConflict {
                id: new.id,
                existing: format!("{} at {}", existing.role(), existing.address()),
            });
        }
        if session.services.len() >= limits.max_registrations_per_session {
            return Err(RegistryError::TooManyRegistrations(
                limits.max_registrations_per_session,
            ));
        }
        let owner = session.owner.clone();

        let (host, port) = state.ports.reserve(&host, port, now)?;
        let id = match generated {
            Some(first) => std::iter::once(first)
                .chain(std::iter::repeat_with(random_id))
                .find(|id| !state.by_id.contains(id))
                .expect("ids are endless"),
            None => new.id,
        };

        let revision = state.revision + 1;
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
        self.publish(state, ChangeKind::Registered, service.clone(), None);
        Ok(service)
    }

    /// Changes a registration's metadata; only its owner may.
    pub fn update(
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
        let set: Metadata = change.set.into_iter().collect();
        let mut state = self.lock();
        let state = &mut *state;
        let (previous, _) = authorize(state, session_id, id, actor, || false)?;
        let previous = previous.clone();
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
        let service = Arc::new(Service {
            metadata,
            mod_revision: state.revision + 1,
            ..(*previous).clone()
        });
        place(state, &service);
        self.publish(state, ChangeKind::Updated, service.clone(), Some(previous));
        Ok(service)
    }

    /// Frees a registration; only its owner, or an admin, may.
    pub fn free(&self, session_id: &str, id: &str, actor: &Actor) -> Result<Arc<Service>> {
        // Read before the lock, as Register's is: the other core may be
        // waiting for it.
        let now = Instant::now();
        // The policy is read only for a caller who is not the owner: both
        // cores would otherwise write its lock word on every free.
        let admin = || {
            self.shared
                .policy
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_admin(&actor.identity)
        };
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
        let replayable = since > 0
            && since <= state.revision
            && state
                .history
                .front()
                .map_or(since == state.revision, |c| c.revision <= since + 1);
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
        let service = state.by_id.remove(id)?;
        state.index.remove(&service);
        state.ports.release(&service.host, service.port, now);
        self.publish(state, ChangeKind::Freed(reason), service.clone(), None);
        Some(service)
    }

    fn publish(
        &self,
        state: &mut State,
        kind: ChangeKind,
        service: Arc<Service>,
        previous: Option<Arc<Service>>,
    ) {
        state.revision += 1;
        let change = Change {
            revision: state.revision,
            kind,
            service,
            previous,
        };
        // Receivers subscribe under the lock, so none can appear between
        // this count and the send; with none, there is nothing to share.
        if self.shared.feed.receiver_count() > 0 {
            let _ = self.shared.feed.send(Arc::new(change.clone()));
        }
        if state.history.len() >= self.shared.limits.history {
            state.evicted.extend(state.history.pop_front());
        }
        if self.shared.limits.history > 0 {
            state.history.push_back(change);
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
    if session.deadline.is_none() && pinned == Pinned::Refused {
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
