//! The reads: query, get and watch, all answered from the index.

use std::collections::VecDeque;
use std::sync::Arc;

use seaport::{EventKind, Service};
use tokio::sync::broadcast;

use crate::stats::Waiting;
use crate::watch::{Change, Selector, Watch, WatchEvent};
use crate::{Registry, RegistryError, Result, StoreHealth, namespace_or_default};

impl Registry {
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

    /// Like `query`, but without draining services, and waits until at
    /// least one matches. Dropping the future leaves nothing behind.
    pub async fn get(&self, selector: &Selector) -> (Vec<Arc<Service>>, u64) {
        let mut waiting = None;
        loop {
            let mut feed = {
                let state = self.lock();
                let mut found = state.index.select(selector);
                found.retain(|s| !s.draining);
                if !found.is_empty() {
                    return (found, state.revision);
                }
                self.shared.feed.subscribe()
            };
            waiting.get_or_insert_with(|| Waiting::new(&self.shared.counters.get_waiters));
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
    pub(crate) fn snapshot(
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
}
