//! The change feed: what a query selects, what changed, and the watch that
//! turns changes into the events one watcher should see.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use seaport::{EventKind, FreeReason, Pattern, Service};
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use super::Registry;

/// What a query, get or watch selects.
#[derive(Clone, Debug)]
pub struct Selector {
    /// Namespace to look in.
    pub namespace: String,
    /// Name and range to match.
    pub pattern: Pattern,
    /// key=value pairs the service's metadata must contain.
    pub metadata: BTreeMap<String, String>,
}

impl Selector {
    /// True when `service` is in this selector's set.
    pub fn matches(&self, service: &Service) -> bool {
        *service.namespace == *self.namespace
            && self
                .pattern
                .matches(&service.name, service.version.as_ref())
            && self
                .metadata
                .iter()
                .all(|(k, v)| service.metadata.get(k) == Some(v))
    }

    /// What `change` means to someone watching this selector's set, if
    /// anything: an update can move a service into or out of the set.
    pub fn classify(&self, change: &Change) -> Option<EventKind> {
        let now = self.matches(&change.service);
        match change.kind {
            ChangeKind::Registered => now.then_some(EventKind::Registered),
            ChangeKind::Freed(_) => now.then_some(EventKind::Freed),
            ChangeKind::Updated => {
                let before = change.previous.as_deref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(EventKind::Updated),
                    (false, true) => Some(EventKind::Registered),
                    (true, false) => Some(EventKind::Freed),
                    (false, false) => None,
                }
            }
        }
    }
}

/// What a change did to the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A service was added.
    Registered,
    /// A service's metadata changed.
    Updated,
    /// A service was removed, and why.
    Freed(FreeReason),
}

/// One change of the registry, shared by every watcher through an `Arc`.
#[derive(Clone, Debug)]
pub struct Change {
    /// Revision the change made.
    pub revision: u64,
    /// What it did.
    pub kind: ChangeKind,
    /// The service after the change (as it was, for a free).
    pub service: Arc<Service>,
    /// The service before an update.
    pub previous: Option<Arc<Service>>,
}

/// One event of a watch.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    /// What happened.
    pub kind: EventKind,
    /// The service concerned (none for Synced and Reset).
    pub service: Option<Arc<Service>>,
    /// Revision of the change, or of the snapshot.
    pub revision: u64,
    /// For a free: why (none when an update moved it out of the set).
    pub reason: Option<FreeReason>,
}

impl WatchEvent {
    /// A marker or snapshot event, about no change.
    pub(super) fn marker(kind: EventKind, service: Option<Arc<Service>>, revision: u64) -> Self {
        WatchEvent {
            kind,
            service,
            revision,
            reason: None,
        }
    }

    /// What `change` looks like to a watcher that classified it as `kind`.
    pub(super) fn of(change: &Change, kind: EventKind) -> Self {
        let reason = match change.kind {
            ChangeKind::Freed(reason) if kind == EventKind::Freed => Some(reason),
            _ => None,
        };
        WatchEvent {
            kind,
            service: Some(change.service.clone()),
            revision: change.revision,
            reason,
        }
    }
}

/// A live watch: the pending snapshot or replay, then the shared feed, as a
/// stream the gRPC response reads directly (no task of its own per watcher).
///
/// It reads the registry's broadcast feed, so a watcher that stops reading
/// costs the others nothing; when it falls further behind than the feed
/// holds, it is sent `Reset` and a fresh snapshot.
pub struct Watch {
    registry: Registry,
    selector: Selector,
    feed: BroadcastStream<Arc<Change>>,
    pending: VecDeque<WatchEvent>,
}

impl Watch {
    pub(super) fn new(
        registry: Registry,
        selector: Selector,
        feed: broadcast::Receiver<Arc<Change>>,
        pending: VecDeque<WatchEvent>,
    ) -> Self {
        Watch {
            registry,
            selector,
            feed: BroadcastStream::new(feed),
            pending,
        }
    }
}

impl Stream for Watch {
    type Item = WatchEvent;

    /// The next event for this watcher. The stream ends only if the
    /// registry does.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.pending.pop_front() {
                return Poll::Ready(Some(event));
            }
            match ready!(Pin::new(&mut this.feed).poll_next(cx)) {
                Some(Ok(change)) => {
                    if let Some(kind) = this.selector.classify(&change) {
                        return Poll::Ready(Some(WatchEvent::of(&change, kind)));
                    }
                }
                Some(Err(BroadcastStreamRecvError::Lagged(_))) => {
                    crate::stats::Counters::bump(&this.registry.shared.counters.watch_resets);
                    let (feed, mut pending) = this.registry.snapshot(&this.selector);
                    let revision = pending.back().map_or(0, |e| e.revision);
                    pending.push_front(WatchEvent::marker(EventKind::Reset, None, revision));
                    this.feed = BroadcastStream::new(feed);
                    this.pending = pending;
                }
                None => return Poll::Ready(None),
            }
        }
    }
}
