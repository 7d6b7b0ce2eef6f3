//! The server's one conversion module: requests into the core's
//! arguments, and the core's answers into `pb` messages (services encoded
//! straight from the registry's records by [`wire`](crate::wire)).

use std::sync::Arc;

use crate::pb;
use crate::registry::{Eviction, MetadataChange, NewService, SessionInfo, WatchEvent};
use crate::wire;

/// A Register's arguments, as received; the core checks them.
pub(super) fn new_service(r: pb::RegisterRequest) -> NewService {
    NewService {
        session_id: r.session_id,
        role: r.role,
        namespace: r.namespace,
        host: r.host,
        port: r.port,
        id: r.id,
        metadata: r.metadata.into_iter().collect(),
    }
}

/// An Update's session, id and change, as received.
pub(super) fn metadata_change(r: pb::UpdateRequest) -> (String, String, MetadataChange) {
    let change = MetadataChange {
        set: r.metadata.into_iter().collect(),
        merge: r.merge,
        remove: r.remove_keys,
    };
    (r.session_id, r.id, change)
}

/// One registration as an answer carries it.
pub(super) fn service(s: Arc<seaport::Service>) -> Option<wire::Service> {
    Some(wire::Service(s))
}

/// A query's matches as an answer carries them.
pub(super) fn services(list: Vec<Arc<seaport::Service>>) -> Vec<wire::Service> {
    list.into_iter().map(wire::Service).collect()
}

/// One event of a watch.
pub(super) fn watch_event(event: WatchEvent) -> pb::WatchEvent {
    pb::WatchEvent {
        kind: seaport::pb::watch_event::Kind::from(event.kind) as i32,
        service: event.service.map(wire::Service),
        revision: event.revision,
        reason: event
            .reason
            .map_or(0, |r| seaport::pb::FreeReason::from(r) as i32),
    }
}

/// The first reply of a Heartbeat: the session, for its holder only.
pub(super) fn opened(info: &SessionInfo) -> pb::SessionOpened {
    pb::SessionOpened {
        session_id: info.id.clone(),
        ttl_ms: info.ttl.as_millis() as u64,
        observed_host: info.observed_host.clone(),
        resumed: info.resumed,
        server_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// An admin's free, as the session's holder hears of it.
pub(super) fn evicted(e: Eviction) -> pb::Evicted {
    pb::Evicted { id: e.id, by: e.by }
}
