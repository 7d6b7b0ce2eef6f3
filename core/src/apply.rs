//! A store's feed into the index: the changes of each revision as the
//! store made them, and whole snapshots when the index loads or reloads.
//! Every server applies the same feed, so every server's watchers see the
//! same events at the same revisions.

use std::collections::HashSet;
use std::sync::Arc;

use seaport::{FreeReason, Service};
use tokio::time::Instant;

use crate::sessions::Session;
use crate::store::{Applied, SessionRecord, StoreHealth};
use crate::watch::ChangeKind;
use crate::{Registry, State};

impl Registry {
    /// Applies what the store changed at `revision`, all of it at once, so
    /// that the frees of a closed or expired session, and an admin's free
    /// with its note, are read together. A revision already applied (by a
    /// load) is ignored.
    pub fn apply(&self, revision: u64, changes: Vec<Applied>) {
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        if revision <= state.revision {
            return;
        }
        let mut sessions_gone = Vec::new();
        let mut services_gone = Vec::new();
        let mut evicted_now = HashSet::new();
        for change in changes {
            match change {
                Applied::Session(record) => {
                    evicted_now.extend(self.put_session(state, record));
                }
                Applied::SessionGone(id) => sessions_gone.push(id),
                Applied::Service(service) => self.put_service(state, revision, service),
                Applied::ServiceGone(id) => services_gone.push(id),
            }
        }
        for id in services_gone {
            let Some(service) = state.by_id.get(&id).cloned() else {
                continue;
            };
            let reason = match state.sessions.open.get_mut(&*service.session_id) {
                Some(session) if sessions_gone.contains(&service.session_id.to_string()) => {
                    if session.closing {
                        FreeReason::Closed
                    } else {
                        FreeReason::Expired
                    }
                }
                Some(session) => {
                    session.services.remove(&id);
                    if evicted_now.contains(&id) {
                        FreeReason::Admin
                    } else {
                        FreeReason::Owner
                    }
                }
                None => FreeReason::Expired,
            };
            self.remove_at(state, revision, &id, now, reason);
        }
        for id in sessions_gone {
            self.drop_session(state, revision, &id, now);
        }
        state.revision = revision;
        drop(guard);
        self.shared.applied.send_replace(revision);
    }

    /// Makes the index what the store holds at `revision`, publishing the
    /// differences as changes of that revision: the first load of an empty
    /// index, or a reload after the feed lost its place. Watches cannot
    /// resume from before it.
    pub fn load(&self, revision: u64, sessions: Vec<SessionRecord>, services: Vec<Service>) {
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let kept: HashSet<String> = sessions.iter().map(|s| s.id.clone()).collect();
        for record in sessions {
            self.put_session(state, record);
        }
        let listed: HashSet<String> = services.iter().map(|s| s.id.clone()).collect();
        let unlisted: Vec<String> = state
            .by_id
            .ids()
            .filter(|id| !listed.contains(*id))
            .map(str::to_string)
            .collect();
        for id in unlisted {
            if let Some(service) = state.by_id.get(&id).cloned()
                && let Some(session) = state.sessions.open.get_mut(&*service.session_id)
            {
                session.services.remove(&id);
            }
            self.remove_at(state, revision, &id, now, FreeReason::Expired);
        }
        for service in services {
            let unchanged = state
                .by_id
                .get(&service.id)
                .is_some_and(|s| s.mod_revision == service.mod_revision);
            if !unchanged {
                self.put_service(state, revision, service);
            }
        }
        let gone: Vec<String> = state
            .sessions
            .open
            .keys()
            .filter(|id| !kept.contains(&***id))
            .map(|id| id.to_string())
            .collect();
        for id in gone {
            self.drop_session(state, revision, &id, now);
        }
        state.revision = revision;
        state.history_floor = revision;
        drop(guard);
        self.shared.applied.send_replace(revision);
        self.set_health(StoreHealth::Synced);
    }

    /// Says where the index stands with its store, for health checks and
    /// for reads, which are refused until the first load.
    pub fn set_health(&self, health: StoreHealth) {
        self.shared.health.send_if_modified(|now| {
            let changed = *now != health;
            *now = health;
            changed
        });
    }

    /// Records a session or a change of its record; returns the ids an
    /// admin freed of it that this record notes for the first time.
    fn put_session(&self, state: &mut State, record: SessionRecord) -> Vec<String> {
        match state.sessions.open.get_mut(record.id.as_str()) {
            Some(session) => {
                session.closing = record.closing;
                session.lease = record.lease;
                let known = session.evictions.as_ref().map_or(0, |e| e.len());
                let new = record.evicted.get(known..).unwrap_or_default();
                for eviction in new {
                    session
                        .evictions
                        .get_or_insert_default()
                        .record(eviction.clone());
                }
                new.iter().map(|e| e.id.clone()).collect()
            }
            None => {
                let session = Session::of(&record, self.next_label());
                state
                    .sessions
                    .open
                    .insert(record.id.as_str().into(), session);
                Vec::new()
            }
        }
    }

    /// Places a registration the store made or changed, and publishes it.
    fn put_service(&self, state: &mut State, revision: u64, mut service: Service) {
        if let Some((session_id, _)) = state.sessions.open.get_key_value(&*service.session_id) {
            service.session_id = session_id.clone();
        }
        if let Some(namespace) = state.index.namespace(&service.namespace) {
            service.namespace = namespace;
        }
        let service = Arc::new(service);
        let previous = state.by_id.get(&service.id).cloned();
        let kind = if previous.is_some() {
            ChangeKind::Updated
        } else {
            ChangeKind::Registered
        };
        crate::place(state, &service);
        self.publish(state, revision, kind, service, previous);
    }

    /// Forgets a session the store no longer has, freeing what it still
    /// holds here.
    fn drop_session(&self, state: &mut State, revision: u64, id: &str, now: Instant) {
        let Some(session) = state.sessions.open.remove(id) else {
            return;
        };
        let reason = if session.closing {
            FreeReason::Closed
        } else {
            FreeReason::Expired
        };
        if !session.closing {
            crate::stats::Counters::bump(&self.shared.counters.expired);
        }
        if !session.pinned() {
            tracing::info!(
                session = session.label,
                host = %session.observed_host,
                identity = %session.owner,
                services = session.services.len(),
                closed = session.closing,
                "session ended in the store"
            );
        }
        for service in session.services.into_services() {
            self.remove_at(state, revision, &service.id, now, reason);
        }
    }
}
