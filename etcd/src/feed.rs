//! The feed: loads the index from etcd, then follows one watch of the
//! prefix, applying each revision's events together. When the watch
//! breaks it is taken up again from the next revision; when etcd has
//! compacted that revision away, the index is loaded again.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use seaport_core::{Applied, Registry, StoreHealth};

use crate::EtcdStore;
use crate::keys::{self, Kind};

/// The longest wait between two tries to reach etcd again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Keeps `registry` in step with etcd for as long as it lives.
pub(crate) async fn follow(store: Arc<EtcdStore>, registry: Registry) {
    let mut backoff = Duration::from_millis(50);
    let mut next: Option<u64> = None;
    loop {
        let from = match next {
            Some(revision) => revision,
            None => match load(&store, &registry).await {
                Ok(revision) => revision + 1,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load the registry from etcd; retrying");
                    set_health(&store, &registry, StoreHealth::Unreachable);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        match watch(&store, &registry, from, &mut backoff).await {
            Ok(last) => next = Some(last + 1),
            Err(Lost::Compacted) => next = None,
            Err(Lost::Unreachable(at, e)) => {
                tracing::warn!(error = %e, "the watch on etcd broke; serving reads from the last view");
                set_health(&store, &registry, StoreHealth::Unreachable);
                next = Some(at);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn set_health(store: &EtcdStore, registry: &Registry, health: StoreHealth) {
    // A registry that never loaded is still syncing, whatever else holds.
    let health = match (*store.health.borrow(), health) {
        (StoreHealth::Syncing, StoreHealth::Unreachable) => StoreHealth::Syncing,
        _ => health,
    };
    store.health.send_replace(match health {
        // The store's own view: writes are refused only while unreachable.
        StoreHealth::Syncing => StoreHealth::Syncing,
        other => other,
    });
    registry.set_health(health);
}

/// Keys read by one request of a load: a page stays well under gRPC's
/// 4 MiB message limit (a registration is a few hundred bytes, up to
/// 16 KiB with the most metadata allowed).
const PAGE: i64 = 200;

/// Loads every session and registration, page by page at one revision;
/// returns that revision.
async fn load(store: &EtcdStore, registry: &Registry) -> Result<u64, etcd_client::Error> {
    let prefix = store.keys.all();
    // The end of the prefix's range: its last byte plus one.
    let mut end = prefix.clone().into_bytes();
    *end.last_mut().expect("a prefix is never empty") += 1;
    let mut kv = store.client.kv_client();
    let mut from = prefix.into_bytes();
    let mut revision = 0;
    let mut sessions = Vec::new();
    let mut services = Vec::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            options = options.with_revision(revision as i64);
        }
        let answer = store
            .timed("range", kv.get(from.clone(), Some(options)))
            .await?;
        if revision == 0 {
            revision = crate::revision_of(answer.header());
        }
        for kv in answer.kvs() {
            match store.keys.kind(kv.key()) {
                Kind::Session(id) => {
                    sessions.extend(keys::decode_session(id, kv.lease(), kv.value()))
                }
                Kind::Service(id) => services.extend(keys::decode_service(
                    id,
                    kv.value(),
                    kv.create_revision(),
                    kv.mod_revision(),
                )),
                Kind::Other => {}
            }
        }
        match answer.kvs().last() {
            Some(last) if answer.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    let (count, held) = (sessions.len(), services.len());
    registry.load(revision, sessions, services);
    set_health(store, registry, StoreHealth::Synced);
    tracing::info!(
        revision,
        sessions = count,
        registrations = held,
        "registry loaded from etcd"
    );
    Ok(revision)
}

/// Why a watch ended.
enum Lost {
    /// etcd no longer has the revision to resume from.
    Compacted,
    /// The stream broke; resume from the revision given.
    Unreachable(u64, String),
}

/// Watches from revision `from`, applying each revision as it comes;
/// returns the last revision applied if etcd ends the watch cleanly.
async fn watch(
    store: &EtcdStore,
    registry: &Registry,
    from: u64,
    backoff: &mut Duration,
) -> Result<u64, Lost> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from as i64)
        .with_progress_notify();
    let mut last = from.saturating_sub(1);
    let mut stream = store
        .client
        .watch_client()
        .watch(store.keys.all(), Some(options))
        .await
        .map_err(|e| Lost::Unreachable(from, e.to_string()))?;
    loop {
        let answer = match stream.message().await {
            Ok(Some(answer)) => answer,
            Ok(None) => return Ok(last),
            Err(e) => return Err(Lost::Unreachable(last + 1, e.to_string())),
        };
        if answer.compact_revision() > 0 {
            return Err(Lost::Compacted);
        }
        if answer.canceled() {
            return Err(Lost::Unreachable(
                last + 1,
                format!("watch canceled: {}", seaport::quote(answer.cancel_reason())),
            ));
        }
        *backoff = Duration::from_millis(50);
        set_health(store, registry, StoreHealth::Synced);
        // Events come in revision order; one revision's stay together.
        let mut batch: Vec<Applied> = Vec::new();
        let mut at = 0;
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision() as u64;
            if revision != at && !batch.is_empty() {
                registry.apply(at, std::mem::take(&mut batch));
            }
            at = revision;
            let put = event.event_type() == EventType::Put;
            match (store.keys.kind(kv.key()), put) {
                (Kind::Session(id), true) => batch
                    .extend(keys::decode_session(id, kv.lease(), kv.value()).map(Applied::Session)),
                (Kind::Session(id), false) => batch.push(Applied::SessionGone(id.to_string())),
                (Kind::Service(id), true) => batch.extend(
                    keys::decode_service(id, kv.value(), kv.create_revision(), kv.mod_revision())
                        .map(Applied::Service),
                ),
                (Kind::Service(id), false) => batch.push(Applied::ServiceGone(id.to_string())),
                (Kind::Other, _) => {}
            }
            last = last.max(revision);
        }
        if at > 0 {
            registry.apply(at, batch);
        }
        // A progress notice moves the revision on with no events.
        let progressed = crate::revision_of(answer.header());
        store.observer.revision(progressed.max(last));
        if answer.events().is_empty() && progressed > last {
            last = progressed;
        }
    }
}
