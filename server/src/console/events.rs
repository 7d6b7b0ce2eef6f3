//! `GET /api/events`: one console's live view as server-sent events.
//!
//! A task per console reads a registry `Watch` of its namespace and
//! filter and feeds a bounded channel that the response reads as the
//! browser takes it. A slow browser fills the channel, the task stops
//! reading its watch, and the watch, which reads the registry's broadcast
//! feed, falls behind and is reset to a fresh snapshot: it never slows the
//! registry or another console.
//!
//! Events, each a JSON object:
//! - `hello`: who the browser is (`identity`, `admin`, `mtls`);
//! - `service`: a watch event (`kind`, `revision`, `service`, `reason`);
//! - `recent`: after each `synced`, the latest changes the filter selects
//!   up to the snapshot (`changes`, each with `at`), for the change feed;
//! - `server`: the server page's facts, when they change.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::api::{event_word, reason_word, refused, selector, service_json};
use super::recent::{self, When};
use super::{Console, Peer, millis, stopped};
use crate::registry::{ChangeKind, EventKind, Selector, WatchEvent};

/// Events queued for one browser before its task waits.
const BUFFERED: usize = 64;
/// Changes sent for the change feed after a snapshot.
const FEED: usize = 100;
/// Longest wait for the console's memory of changes to reach a snapshot.
const CATCH_UP: Duration = Duration::from_secs(1);

/// Opens a console's event stream: `namespace`, `pattern` (`name@range`,
/// empty for all) and `since` (a revision to resume after) from the query.
pub(super) async fn events(
    State(console): State<Arc<Console>>,
    Extension(peer): Extension<Peer>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let selector = match selector(&console, &query) {
        Ok(s) => s,
        Err(refusal) => return refusal,
    };
    let since = match query.get("since").map(|s| s.parse::<u64>()) {
        None => 0,
        Some(Ok(revision)) => revision,
        Some(Err(_)) => {
            return refused(
                StatusCode::BAD_REQUEST,
                "since must be a revision: a whole number",
            );
        }
    };
    let Ok(permit) = console.viewers.clone().try_acquire_owned() else {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} consoles are open on this server, the most it serves; close one or use another server",
                super::MAX_VIEWERS
            ),
        );
    };
    let (tx, rx) = mpsc::channel(BUFFERED);
    tokio::spawn(feed(console, selector, since, peer, tx, permit));
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    (
        // Proxies that buffer responses (nginx) would hold the events back.
        [("x-accel-buffering", "no")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
        .into_response()
}

/// Feeds one browser until it goes or the server stops.
async fn feed(
    console: Arc<Console>,
    selector: Selector,
    since: u64,
    peer: Peer,
    tx: mpsc::Sender<Event>,
    _viewer: OwnedSemaphorePermit,
) {
    let mut stop = console.stop.clone();
    let mut facts = console.facts.clone();
    facts.mark_changed();
    let mut watch = console.registry.watch(selector.clone(), since);
    let identity = peer.identity.clone().unwrap_or_default();
    let hello = json!({
        "identity": identity,
        "mtls": console.auth.mtls,
        "admin": console.auth.mtls && peer.identity.is_some()
            && console.registry.is_admin(&crate::registry::Actor { identity }),
    });
    if !send(&tx, &mut stop, event("hello", &hello)).await {
        return;
    }
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tx.closed() => return,
            changed = facts.changed() => {
                if changed.is_err() {
                    return;
                }
                let text = facts.borrow_and_update().clone();
                if !send(&tx, &mut stop, Event::default().event("server").data(&*text)).await {
                    return;
                }
            }
            next = watch.next() => {
                let Some(next) = next else { return };
                let now = SystemTime::now();
                let data = watch_json(&console, &next, now);
                if !send(&tx, &mut stop, event("service", &data)).await {
                    return;
                }
                if next.kind == EventKind::Synced {
                    let changes = recent_json(&console, &selector, next.revision).await;
                    if !send(&tx, &mut stop, event("recent", &changes)).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Queues `event`, waiting while the browser is behind; false once the
/// browser has gone or the server stops.
async fn send(tx: &mpsc::Sender<Event>, stop: &mut watch::Receiver<bool>, event: Event) -> bool {
    tokio::select! {
        sent = tx.send(event) => sent.is_ok(),
        _ = stopped(stop) => false,
    }
}

fn event(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// A watch event as the page reads it.
fn watch_json(console: &Console, event: &WatchEvent, now: SystemTime) -> Value {
    json!({
        "kind": event_word(event.kind),
        "revision": event.revision,
        "service": event.service.as_ref().map(|s| service_json(console, s, now)),
        "reason": event.reason.map(reason_word),
        "when": matches!(event.kind, EventKind::Registered | EventKind::Updated | EventKind::Freed)
            .then(|| registered(console, event.revision, now)),
    })
}

/// The latest changes `selector` selects up to `revision`, oldest first,
/// once the console's memory has caught up with that revision.
async fn recent_json(console: &Console, selector: &Selector, revision: u64) -> Value {
    let mut seen = console.seen.clone();
    // It has as soon as the follower reads the feed: the change at
    // `revision` was sent before the snapshot was taken.
    let _ = tokio::time::timeout(CATCH_UP, seen.wait_for(|r| *r >= revision)).await;
    let now = SystemTime::now();
    let latest =
        recent::lock(&console.recent).latest(revision, FEED, |c| selector.classify(c).is_some());
    let changes: Vec<Value> = latest
        .iter()
        .filter_map(|seen| {
            let kind = selector.classify(&seen.change)?;
            let reason = match seen.change.kind {
                ChangeKind::Freed(reason) if kind == EventKind::Freed => Some(reason_word(reason)),
                _ => None,
            };
            Some(json!({
                "kind": event_word(kind),
                "revision": seen.change.revision,
                "at": millis(seen.at),
                "service": service_json(console, &seen.change.service, now),
                "reason": reason,
            }))
        })
        .collect();
    json!({ "revision": revision, "changes": changes })
}

/// When a registration was made, as the page shows its age.
pub(super) fn registered(console: &Console, revision: u64, now: SystemTime) -> Value {
    match recent::lock(&console.recent).when(revision, now) {
        When::At(at) => json!({ "at": millis(at) }),
        When::Before(start) => json!({ "before": millis(start) }),
    }
}
