//! Sessions as callers see them: open, resume, ping and close, and the
//! server's own session, on the memory store or through a store.

use std::sync::Arc;
use std::time::Duration;

use seaport::{FreeReason, Service};
use tokio::time::Instant;

use crate::sessions::Session;
use crate::stats::Counters;
use crate::{
    Actor, Eviction, NewService, Pinned, Registry, RegistryError, Result, SessionInfo,
    SessionRecord, State, Store, random_id, session_of,
};

impl Registry {
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
        Counters::bump(&self.shared.counters.opened);
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
                tokio::spawn(keep_server_alive(
                    self.clone(),
                    store.clone(),
                    record.id.clone(),
                    lease,
                ));
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
        let session = self.heard_from(&mut state, id)?;
        Counters::bump(&self.shared.counters.resumed);
        Ok(SessionInfo {
            id: id.to_string(),
            label: session.label,
            ttl: session.ttl,
            observed_host: session.observed_host.clone(),
            resumed: true,
        })
    }

    /// The session `id`, alive for another ttl from now: here, and in the
    /// store, whose lease this server keeps alive from now on.
    fn heard_from<'a>(&self, state: &'a mut State, id: &str) -> Result<&'a Session> {
        let session = state
            .sessions
            .ping(id, Instant::now())
            .ok_or(RegistryError::UnknownSession)?;
        if let Some(store) = &self.shared.store {
            store.keep_alive(session.lease);
        }
        Ok(session)
    }

    /// Keeps a session alive for another ttl, and hands over what admins
    /// freed of it since the last ping (almost always nothing).
    pub fn ping(&self, id: &str) -> Result<Vec<Eviction>> {
        let mut state = self.lock();
        self.heard_from(&mut state, id)?;
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
        Counters::bump(&self.shared.counters.closed);
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
        Counters::bump(&self.shared.counters.closed);
        Ok(freed)
    }
}

/// The ttl of a server's own lease in a store: when the server dies, its
/// `seaport@` registration goes this long after.
const SERVER_TTL: Duration = Duration::from_secs(10);

/// Keeps the server's own lease alive while the registry lives and the
/// session `id` is open: a lease that lapsed (etcd out of reach for longer
/// than its ttl) is not kept, and the server registers itself anew.
async fn keep_server_alive(registry: Registry, store: Arc<dyn Store>, id: String, lease: i64) {
    let weak = Arc::downgrade(&registry.shared);
    drop(registry);
    let mut tick = tokio::time::interval(SERVER_TTL / 4);
    loop {
        tick.tick().await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        if (Registry { shared }).lease_of(&id).is_err() {
            return;
        }
        store.keep_alive(lease);
    }
}
