//! The writes and their rules: register, update and free, decided under
//! the lock (session, owner, policy, port, id), then made in memory or
//! through the store.

use std::sync::Arc;

use seaport::{FreeReason, Metadata, Role, Service};
use tokio::time::Instant;

use crate::checks::{check_host, check_id, namespace_unchecked};
use crate::watch::ChangeKind;
use crate::{
    Actor, Eviction, Limits, MetadataChange, NewService, Pinned, Registry, RegistryError, Result,
    State, Store, Write, namespace_or_default, place, random_id, session_of,
};

impl Registry {
    /// Adds a service; see the proto's `Register` for the rules.
    pub async fn register(&self, new: NewService, actor: &Actor) -> Result<Arc<Service>> {
        self.register_in(new, actor, Pinned::Refused).await
    }

    pub(crate) async fn register_in(
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
        mut new: NewService,
        role: Role,
        port: u16,
        actor: &Actor,
        pinned: Pinned,
    ) -> Result<Arc<Service>> {
        let metadata: Metadata = std::mem::take(&mut new.metadata).into_iter().collect();
        let host = std::mem::take(&mut new.host);
        let now = Instant::now();
        // Made before the lock: the other core may be waiting for it. A
        // clash with a registered id (one in 2^128) makes another under it.
        let generated = new.id.is_empty().then(random_id);
        let mut state = self.lock();
        let state = &mut *state;
        let decided = decide(
            state,
            &self.shared.limits,
            Asked::of(&new, host, &role, port),
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
            draining: false,
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
        mut new: NewService,
        role: Role,
        port: u16,
        actor: &Actor,
        pinned: Pinned,
    ) -> Result<Arc<Service>> {
        let metadata: Metadata = std::mem::take(&mut new.metadata).into_iter().collect();
        let mut tries = 0;
        loop {
            tries += 1;
            let (write, id) = {
                let mut state = self.lock();
                let state = &mut *state;
                let decided = decide(
                    state,
                    &self.shared.limits,
                    Asked::of(&new, new.host.clone(), &role, port),
                    actor,
                    pinned,
                )?;
                let (session_id, host, owner, lease) = match decided {
                    Decided::Existing(existing) => return Ok(existing),
                    Decided::New {
                        session_id,
                        host,
                        owner,
                        lease,
                    } => (session_id, host, owner, lease),
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
                    draining: false,
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
            let next = Service {
                metadata,
                ..(*previous).clone()
            };
            return Ok(self.replace_here(state, previous, next));
        };
        let write = {
            let state = self.lock();
            let (previous, metadata) = updated(&state, limits, session_id, id, change, actor)?;
            let next = Service {
                metadata,
                ..(*previous).clone()
            };
            replacing(&state, &previous, next)
        };
        self.replace_through(store.as_ref(), write, id).await
    }

    /// Marks a registration draining: the same callers as `free` may. A
    /// registration already draining is answered as it is, with no change.
    pub async fn drain(&self, session_id: &str, id: &str, actor: &Actor) -> Result<Arc<Service>> {
        let Some(store) = &self.shared.store else {
            let mut state = self.lock();
            let state = &mut *state;
            let (previous, _) = authorize(state, session_id, id, actor, || self.is_admin(actor))?;
            if previous.draining {
                return Ok(previous.clone());
            }
            let previous = previous.clone();
            let next = Service {
                draining: true,
                ..(*previous).clone()
            };
            return Ok(self.replace_here(state, previous, next));
        };
        let write = {
            let state = self.lock();
            let (previous, _) = authorize(&state, session_id, id, actor, || self.is_admin(actor))?;
            if previous.draining {
                return Ok(previous.clone());
            }
            let next = Service {
                draining: true,
                ..(**previous).clone()
            };
            replacing(&state, previous, next)
        };
        self.replace_through(store.as_ref(), write, id).await
    }

    /// Puts `next` in `previous`'s place in memory, as an UPDATED change.
    fn replace_here(
        &self,
        state: &mut State,
        previous: Arc<Service>,
        next: Service,
    ) -> Arc<Service> {
        let revision = state.revision + 1;
        let service = Arc::new(Service {
            mod_revision: revision,
            ..next
        });
        place(state, &service);
        self.publish(
            state,
            revision,
            ChangeKind::Updated,
            service.clone(),
            Some(previous),
        );
        service
    }

    /// Makes a replacing `write` through the store; answers the
    /// registration `id` as the index then holds it.
    async fn replace_through(
        &self,
        store: &dyn Store,
        write: Write,
        id: &str,
    ) -> Result<Arc<Service>> {
        let revision = store.commit(write).await?;
        self.caught_up(revision).await?;
        let state = self.lock();
        state
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| RegistryError::UnknownService(id.to_string()))
    }

    /// Whether `actor` is an admin. Asked only of a caller who is not the
    /// owner: reading the policy on every owner's write would have both
    /// cores write its lock word.
    fn is_admin(&self, actor: &Actor) -> bool {
        self.shared
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_admin(&actor.identity)
    }

    /// Frees a registration; only its owner, or an admin, may.
    pub async fn free(&self, session_id: &str, id: &str, actor: &Actor) -> Result<Arc<Service>> {
        let admin = || self.is_admin(actor);
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

impl<'a> Asked<'a> {
    /// What `new` asks for, its role and port parsed, on `host`.
    fn of(new: &'a NewService, host: String, role: &'a Role, port: u16) -> Self {
        Asked {
            session_id: &new.session_id,
            id: &new.id,
            host,
            role,
            port,
            namespace: &new.namespace,
        }
    }
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

/// The store write that puts `next` in `previous`'s place, if
/// `previous` is unchanged meanwhile.
fn replacing(state: &State, previous: &Service, next: Service) -> Write {
    Write::Update {
        lease: state
            .sessions
            .open
            .get(&*previous.session_id)
            .map_or(0, |s| s.lease),
        previous_revision: previous.mod_revision,
        service: Arc::new(next),
    }
}

/// `first`, or another random id if a registration holds it (one chance
/// in 2^128).
fn unused_id(state: &State, first: String) -> String {
    std::iter::once(first)
        .chain(std::iter::repeat_with(random_id))
        .find(|id| !state.by_id.contains(id))
        .expect("ids are endless")
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

/// Times an assigned port is chosen again when another server took it.
const PORT_TRIES: usize = 8;
