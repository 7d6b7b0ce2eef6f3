//! What the console remembers of the registry's past, which the registry
//! itself keeps only as revisions: the latest changes with the time each
//! was seen, for the change feed, and when older revisions happened, for
//! the age of each registration.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, watch};

use super::stopped;
use crate::registry::{Change, Registry};

/// Changes kept for the change feed, over every namespace.
const CHANGES_KEPT: usize = 1000;
/// Marks kept at most; past that the older half is thinned.
const MARKS_KEPT: usize = 1024;
/// A mark is taken at the first change at least this long after the last
/// mark, so a time read from the marks is at most this early.
const MARK_EVERY: Duration = Duration::from_secs(1);

/// One change, and when the console saw it.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub(super) change: Arc<Change>,
    pub(super) at: SystemTime,
}

/// When a revision happened, as far as the console knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum When {
    /// At this time (within [`MARK_EVERY`] for changes no longer kept).
    At(SystemTime),
    /// Before the console started, which was at this time.
    Before(SystemTime),
}

/// The latest changes and the marks; behind a std mutex, held for a push
/// or a lookup, never across an await.
#[derive(Debug)]
pub(super) struct Recent {
    changes: VecDeque<Seen>,
    /// `(revision, time)`: every change above `revision` happened at or
    /// after `time`. The first is the console's start; revisions ascend.
    marks: Vec<(u64, SystemTime)>,
    /// The last revision seen.
    seen: u64,
}

impl Recent {
    /// Memory that starts at `revision`, seen at `now`.
    pub(super) fn new(revision: u64, now: SystemTime) -> Self {
        Recent {
            changes: VecDeque::new(),
            marks: vec![(revision, now)],
            seen: revision,
        }
    }

    /// Notes `change`, seen at `at`.
    pub(super) fn record(&mut self, change: Arc<Change>, at: SystemTime) {
        self.mark(change.revision, at);
        if self.changes.len() == CHANGES_KEPT {
            self.changes.pop_front();
        }
        self.changes.push_back(Seen { change, at });
    }

    /// Notes that changes up to `revision` happened by `at`, though they
    /// went unseen (the console fell behind the feed).
    pub(super) fn skipped(&mut self, revision: u64, at: SystemTime) {
        self.mark(revision, at);
    }

    fn mark(&mut self, revision: u64, at: SystemTime) {
        if revision <= self.seen {
            return;
        }
        let due = self.marks.last().is_none_or(|(_, last)| {
            at.duration_since(*last)
                .is_ok_and(|since| since >= MARK_EVERY)
        });
        if due {
            if self.marks.len() == MARKS_KEPT {
                // Every other of the older half: old times get coarser,
                // the start stays.
                let half = self.marks.len() / 2;
                let mut i = 0;
                self.marks.retain(|_| {
                    let keep = i >= half || i % 2 == 0;
                    i += 1;
                    keep
                });
            }
            self.marks.push((revision, at));
        }
        self.seen = revision;
    }

    /// When `revision` happened; `now` for one not seen yet.
    pub(super) fn when(&self, revision: u64, now: SystemTime) -> When {
        let (start, started) = self.marks[0];
        if revision <= start {
            return When::Before(started);
        }
        if revision > self.seen {
            return When::At(now);
        }
        if self
            .changes
            .front()
            .is_some_and(|c| c.change.revision <= revision)
        {
            let after = self
                .changes
                .partition_point(|c| c.change.revision <= revision);
            return When::At(self.changes[after - 1].at);
        }
        // The last mark at or below: the start's is, so there is one.
        let after = self.marks.partition_point(|(r, _)| *r <= revision);
        When::At(self.marks[after - 1].1)
    }

    /// The last `limit` changes at or below `upto` that `select` keeps,
    /// oldest first.
    pub(super) fn latest(
        &self,
        upto: u64,
        limit: usize,
        mut select: impl FnMut(&Change) -> bool,
    ) -> Vec<Seen> {
        let mut found: Vec<Seen> = self
            .changes
            .iter()
            .rev()
            .filter(|c| c.change.revision <= upto && select(&c.change))
            .take(limit)
            .cloned()
            .collect();
        found.reverse();
        found
    }
}

/// Follows every change of `registry` into `recent` until `stop`, telling
/// `seen` the last revision noted.
pub(super) async fn follow(
    registry: Registry,
    mut feed: broadcast::Receiver<Arc<Change>>,
    recent: Arc<Mutex<Recent>>,
    seen: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let received = tokio::select! {
            _ = stopped(&mut stop) => return,
            received = feed.recv() => received,
        };
        let revision = match received {
            Ok(change) => {
                let revision = change.revision;
                lock(&recent).record(change, SystemTime::now());
                revision
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let (fresh, revision) = registry.changes();
                feed = fresh;
                lock(&recent).skipped(revision, SystemTime::now());
                revision
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        seen.send_replace(revision);
    }
}

/// The lock; a panic while it was held leaves the memory usable.
pub(super) fn lock(recent: &Mutex<Recent>) -> std::sync::MutexGuard<'_, Recent> {
    recent.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ChangeKind;
    use std::time::UNIX_EPOCH;

    fn change(revision: u64) -> Arc<Change> {
        Arc::new(Change {
            revision,
            kind: ChangeKind::Registered,
            service: Arc::new(seaport::Service {
                id: format!("s{revision}"),
                name: "web".into(),
                version: None,
                host: "127.0.0.1".into(),
                port: 10000,
                metadata: Default::default(),
                namespace: "default".into(),
                owner: "".into(),
                session_id: "".into(),
                create_revision: revision,
                mod_revision: revision,
                draining: false,
            }),
            previous: None,
        })
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn a_kept_change_has_its_own_time_and_older_ones_their_mark() {
        let mut recent = Recent::new(100, at(0));
        // One change every 300ms: a mark at 101 (t=300), 105 (t=1500), ...
        for (i, revision) in (101..=130).enumerate() {
            recent.record(change(revision), at(300 * (i as u64 + 1)));
        }
        assert_eq!(recent.when(100, at(99_999)), When::Before(at(0)));
        assert_eq!(recent.when(103, at(99_999)), When::At(at(900)));
        assert_eq!(
            recent.when(131, at(99_999)),
            When::At(at(99_999)),
            "not seen yet: now"
        );
        // Past the kept changes, the marks answer, at most MARK_EVERY early.
        let mut recent = Recent::new(100, at(0));
        for revision in 101..=(101 + CHANGES_KEPT as u64 + 10) {
            recent.record(change(revision), at(300 * (revision - 100)));
        }
        for revision in [101, 102, 103, 104, 105, 106, 110] {
            let When::At(t) = recent.when(revision, at(0)) else {
                panic!("{revision} is after the start");
            };
            let truth = at(300 * (revision - 100));
            assert!(
                t <= truth && truth.duration_since(t).unwrap() < MARK_EVERY,
                "{revision}: {t:?} for {truth:?}"
            );
        }
    }

    #[test]
    fn marks_stay_bounded_and_keep_the_start() {
        let mut recent = Recent::new(0, at(0));
        for revision in 1..=(3 * MARKS_KEPT as u64) {
            recent.record(change(revision), at(1000 * revision));
        }
        assert!(recent.marks.len() <= MARKS_KEPT);
        assert_eq!(recent.marks[0], (0, at(0)));
        assert!(recent.marks.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(recent.changes.len(), CHANGES_KEPT);
        let When::At(t) = recent.when(5, at(0)) else {
            panic!()
        };
        assert!(t <= at(5000), "never later than the truth");
    }

    #[test]
    fn latest_takes_the_newest_selected_up_to_a_revision() {
        let mut recent = Recent::new(0, at(0));
        for revision in 1..=10 {
            recent.record(change(revision), at(revision));
        }
        let revisions =
            |seen: Vec<Seen>| seen.iter().map(|s| s.change.revision).collect::<Vec<_>>();
        assert_eq!(revisions(recent.latest(8, 3, |_| true)), [6, 7, 8]);
        assert_eq!(
            revisions(recent.latest(10, 3, |c| c.revision % 2 == 1)),
            [5, 7, 9]
        );
    }
}
