//! Counts for metrics: what the registry holds now, read when scraped, and
//! what happened since it started, counted as it happens.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Registry;

/// Hosts listed by [`Stats::ports_held`] at most: a label per host, so
/// bounded.
pub const HOSTS_LISTED: usize = 100;

/// What the registry holds and has done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sessions open (clients' and servers' own).
    pub sessions: usize,
    /// Registrations by namespace.
    pub registrations: Vec<(String, usize)>,
    /// Ports held by host, the fullest first, at most [`HOSTS_LISTED`].
    pub ports_held: Vec<(String, usize)>,
    /// Ports in the assignable range.
    pub port_range: usize,
    /// The revision the index reflects.
    pub revision: u64,
    /// Sessions opened here.
    pub sessions_opened: u64,
    /// Sessions resumed here.
    pub sessions_resumed: u64,
    /// Sessions that expired (every server of a cluster sees each).
    pub sessions_expired: u64,
    /// Sessions closed here.
    pub sessions_closed: u64,
    /// Watches reset for falling behind.
    pub watch_resets: u64,
    /// Gets waiting now.
    pub get_waiters: u64,
}

/// The counters, bumped where things happen.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) opened: AtomicU64,
    pub(crate) resumed: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) watch_resets: AtomicU64,
    pub(crate) get_waiters: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a waiting Get until dropped.
pub(crate) struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    pub(crate) fn new(waiters: &'a AtomicU64) -> Self {
        waiters.fetch_add(1, Ordering::Relaxed);
        Waiting(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Registry {
    /// What the registry holds now and has done: the holdings are read
    /// under the lock in time that grows with names and hosts, not with
    /// registrations.
    pub fn stats(&self) -> Stats {
        let counters = &self.shared.counters;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let state = self.lock();
        let mut ports_held = state.ports.held_by_host();
        let range = &self.shared.limits.port_range;
        Stats {
            sessions: state.sessions.open.len(),
            registrations: state.index.counts(),
            ports_held: {
                ports_held.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                ports_held.truncate(HOSTS_LISTED);
                ports_held
            },
            port_range: usize::from(*range.end() - *range.start()) + 1,
            revision: state.revision,
            sessions_opened: read(&counters.opened),
            sessions_resumed: read(&counters.resumed),
            sessions_expired: read(&counters.expired),
            sessions_closed: read(&counters.closed),
            watch_resets: read(&counters.watch_resets),
            get_waiters: read(&counters.get_waiters),
        }
    }
}
