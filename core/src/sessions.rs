//! Sessions: who holds which registrations, and when each session expires
//! unless it hears from its client.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;
use tokio::time::Instant;

use super::by_id::ServicesById;
use super::store::SessionRecord;

/// One client's lease.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) ttl: Duration,
    /// `None` for the server's own session, which never expires and which
    /// no client may use.
    pub(crate) deadline: Option<Instant>,
    pub(crate) observed_host: String,
    pub(crate) owner: Arc<str>,
    /// A number for logs: the id is a secret of the session's holder.
    pub(crate) label: u64,
    /// The registrations it holds: the same `Arc`s as the registry's.
    pub(crate) services: ServicesById,
    /// What an admin freed of it; boxed and made on the first such free,
    /// so that the session's hot fields stay in as few cache lines as
    /// before.
    pub(crate) evictions: Option<Box<Evictions>>,
    /// Its lease in the store (0 in memory).
    pub(crate) lease: i64,
    /// Marked closed in the store, its lease about to be revoked.
    pub(crate) closing: bool,
}

impl Session {
    /// A session as `record` describes it, named `label` in logs, due to
    /// expire a ttl from now unless it is a server's own.
    pub(crate) fn of(record: &SessionRecord, label: u64) -> Session {
        let evictions = (!record.evicted.is_empty()).then(|| {
            let mut evictions = Box::<Evictions>::default();
            for eviction in &record.evicted {
                evictions.record(eviction.clone());
            }
            evictions
        });
        Session {
            ttl: record.ttl,
            deadline: (!record.pinned).then(|| Instant::now() + record.ttl),
            observed_host: record.observed_host.clone(),
            owner: record.owner.as_str().into(),
            label,
            services: Default::default(),
            evictions,
            lease: record.lease,
            closing: record.closing,
        }
    }

    /// The session as a store records it.
    pub(crate) fn record(&self, id: &str) -> SessionRecord {
        SessionRecord {
            id: id.to_string(),
            lease: self.lease,
            ttl: self.ttl,
            observed_host: self.observed_host.clone(),
            owner: self.owner.to_string(),
            pinned: self.pinned(),
            closing: self.closing,
            evicted: self
                .evictions
                .as_ref()
                .map_or_else(Vec::new, |e| e.recorded()),
        }
    }

    /// A server's own session, which no client may use.
    pub(crate) fn pinned(&self) -> bool {
        self.deadline.is_none()
    }
}

/// An admin's free of one of a session's registrations, as its holder
/// hears of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eviction {
    /// Id of the registration freed.
    pub id: String,
    /// Identity of the admin.
    pub by: String,
}

/// What admins freed of a session, so the session cannot register those
/// ids again, and the notices its holder has yet to hear, with its next
/// pong.
#[derive(Debug, Default)]
pub(crate) struct Evictions {
    /// Frees, newest last; at most [`EVICTIONS_KEPT`].
    ids: Vec<Eviction>,
    /// Notices not yet handed to the holder's Heartbeat stream.
    undelivered: Vec<Eviction>,
}

/// Evicted ids a session remembers; admins are trusted, but memory is
/// bounded all the same.
const EVICTIONS_KEPT: usize = 1024;

impl Evictions {
    /// Records an eviction for the holder to hear of.
    pub(crate) fn record(&mut self, eviction: Eviction) {
        if self.ids.len() >= EVICTIONS_KEPT {
            self.ids.remove(0);
        }
        self.ids.push(eviction.clone());
        if self.undelivered.len() < EVICTIONS_KEPT {
            self.undelivered.push(eviction);
        }
    }

    /// True when an admin freed `id` in this session.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.ids.iter().any(|e| e.id == id)
    }

    /// Every free recorded, oldest first.
    pub(crate) fn recorded(&self) -> Vec<Eviction> {
        self.ids.clone()
    }

    /// How many frees are recorded.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The notices not yet handed over, handed over.
    pub(crate) fn take(&mut self) -> Vec<Eviction> {
        std::mem::take(&mut self.undelivered)
    }
}

/// The open sessions and their expiry queue.
///
/// Every expiring session has exactly one entry in `expiries`, possibly
/// older than its deadline: a ping only moves `deadline` (cheap, no tree
/// update) and the reaper re-queues entries whose session was pinged.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    /// Keyed by the id every service of the session shares, rather than
    /// each holding a copy.
    pub(crate) open: HashMap<Arc<str>, Session>,
    expiries: BTreeSet<(Instant, Arc<str>)>,
}

impl Sessions {
    pub(crate) fn insert(&mut self, id: Arc<str>, session: Session) {
        if let Some(deadline) = session.deadline {
            self.expiries.insert((deadline, id.clone()));
        }
        self.open.insert(id, session);
    }

    /// Extends the session's life by its ttl from `now`.
    pub(crate) fn ping(&mut self, id: &str, now: Instant) -> Option<&Session> {
        let session = self.open.get_mut(id)?;
        if session.deadline.is_some() {
            session.deadline = Some(now + session.ttl);
        }
        Some(session)
    }

    /// Ids of the sessions whose deadline has passed, removed from the
    /// queue; re-queues the ones pinged since they were queued.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Arc<str>> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.expiries.first() {
            if *at > now {
                break;
            }
            let (_, id) = self.expiries.pop_first().expect("first exists");
            match self.open.get(&id).and_then(|s| s.deadline) {
                Some(deadline) if deadline > now => {
                    self.expiries.insert((deadline, id));
                }
                Some(_) => due.push(id),
                None => {}
            }
        }
        due
    }

    /// When the reaper should look next.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.expiries.first().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(ttl: Duration, now: Instant) -> Session {
        Session {
            ttl,
            deadline: Some(now + ttl),
            observed_host: "h".into(),
            owner: "".into(),
            label: 0,
            services: Default::default(),
            evictions: None,
            lease: 0,
            closing: false,
        }
    }

    #[test]
    fn only_sessions_not_pinged_within_their_ttl_come_due() {
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        let (quiet, pinged): (Arc<str>, Arc<str>) = ("quiet".into(), "pinged".into());
        let mut sessions = Sessions::default();
        sessions.insert(quiet.clone(), session(ttl, now));
        sessions.insert(pinged.clone(), session(ttl, now));
        sessions.ping(&pinged, now + Duration::from_secs(5));
        assert_eq!(sessions.due(now + ttl), [quiet]);
        assert_eq!(
            sessions.next_deadline(),
            Some(now + Duration::from_secs(15)),
            "the pinged session is queued again at its new deadline"
        );
        assert!(sessions.due(now + ttl).is_empty());
        assert_eq!(sessions.due(now + Duration::from_secs(15)), [pinged]);
    }
}
