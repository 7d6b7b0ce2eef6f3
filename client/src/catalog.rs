//! A local, always-current view of the services matching a pattern, fed by
//! a watch, so lookups and load balancing need no RPC.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use seaport::Service;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use crate::{Error, EventKind, Result, WatchStream};

#[derive(Default)]
struct View {
    services: BTreeMap<String, Service>,
    /// A snapshot being received; swapped in at `Synced`, so lookups never
    /// see a half-built view.
    rebuilding: Option<BTreeMap<String, Service>>,
}

/// The services matching one pattern, kept current by a watch.
pub struct Catalog {
    view: Arc<RwLock<View>>,
    next: AtomicUsize,
    task: JoinHandle<()>,
}

impl Drop for Catalog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Catalog {
    /// Starts following `stream`; returns once the first snapshot is in.
    pub(crate) async fn start(mut stream: WatchStream) -> Result<Catalog> {
        let view = Arc::new(RwLock::new(View {
            rebuilding: Some(BTreeMap::new()),
            ..View::default()
        }));
        let (synced_tx, mut synced_rx) = watch::channel(false);
        // The first event decides whether the pattern was accepted.
        let first = stream.next().await.ok_or(Error::Closed)??;
        apply(&view, first.kind, first.service, &synced_tx);
        let feed = view.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                apply(&feed, event.kind, event.service, &synced_tx);
            }
        });
        let catalog = Catalog {
            view,
            next: AtomicUsize::new(0),
            task,
        };
        synced_rx
            .wait_for(|s| *s)
            .await
            .map_err(|_| Error::Closed)?;
        Ok(catalog)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every matching service, draining ones too, ordered by id.
    pub fn services(&self) -> Vec<Service> {
        self.read().services.values().cloned().collect()
    }

    /// How many services match.
    pub fn len(&self) -> usize {
        self.read().services.len()
    }

    /// True when nothing matches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The service with this id, if it matches (draining or not).
    pub fn service(&self, id: &str) -> Option<Service> {
        self.read().services.get(id).cloned()
    }

    /// The next service, round robin. The picks never choose a draining
    /// service: its instance is stopping.
    pub fn pick(&self) -> Option<Service> {
        self.pick_excluding(&[])
    }

    /// A service chosen at random.
    pub fn pick_random(&self) -> Option<Service> {
        self.pick_random_excluding(&[])
    }

    /// The next service round robin, skipping the ids in `exclude` (the
    /// instances that just failed), for failover.
    pub fn pick_excluding(&self, exclude: &[&str]) -> Option<Service> {
        let view = self.read();
        let candidates = candidates(&view, exclude);
        self.round_robin(&candidates)
    }

    /// A service chosen at random, skipping the ids in `exclude`.
    pub fn pick_random_excluding(&self, exclude: &[&str]) -> Option<Service> {
        let view = self.read();
        let candidates = candidates(&view, exclude);
        (!candidates.is_empty()).then(|| candidates[fastrand::usize(..candidates.len())].clone())
    }

    /// A service whose `load` (open connections, say) is the least,
    /// skipping the ids in `exclude`; ties go round robin, so equal loads
    /// still spread.
    pub fn pick_least(
        &self,
        exclude: &[&str],
        load: impl Fn(&Service) -> usize,
    ) -> Option<Service> {
        let view = self.read();
        let candidates = candidates(&view, exclude);
        let loads: Vec<usize> = candidates.iter().map(|s| load(s)).collect();
        let least = loads.iter().copied().min()?;
        let tied: Vec<&Service> = candidates
            .iter()
            .zip(&loads)
            .filter(|(_, l)| **l == least)
            .map(|(s, _)| *s)
            .collect();
        self.round_robin(&tied)
    }

    fn round_robin(&self, candidates: &[&Service]) -> Option<Service> {
        if candidates.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        Some(candidates[i].clone())
    }
}

/// The services a pick may choose: every one neither draining nor in
/// `exclude`.
fn candidates<'a>(view: &'a View, exclude: &[&str]) -> Vec<&'a Service> {
    view.services
        .values()
        .filter(|s| !s.draining && !exclude.contains(&s.id.as_str()))
        .collect()
}

fn apply(
    view: &RwLock<View>,
    kind: EventKind,
    service: Option<Service>,
    synced: &watch::Sender<bool>,
) {
    let mut view = view.write().unwrap_or_else(|e| e.into_inner());
    match (kind, service) {
        (EventKind::Reset, _) => view.rebuilding = Some(BTreeMap::new()),
        (EventKind::Existing, Some(s)) => {
            let target = match view.rebuilding.as_mut() {
                Some(rebuilding) => rebuilding,
                None => &mut view.services,
            };
            target.insert(s.id.clone(), s);
        }
        (EventKind::Synced, _) => {
            if let Some(fresh) = view.rebuilding.take() {
                view.services = fresh;
            }
            synced.send_replace(true);
        }
        (EventKind::Registered | EventKind::Updated, Some(s)) => {
            view.services.insert(s.id.clone(), s);
        }
        (EventKind::Freed, Some(s)) => {
            view.services.remove(&s.id);
        }
        _ => {}
    }
}
