//! The console's JSON: a registration as the page shows it, the filter
//! check, and an admin's Free and Drain, which go through the same rules as
//! the RPCs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use seaport::{FreeReason, Service};
use serde_json::{Value, json};

use super::{Console, Peer};
use crate::registry::{Actor, EventKind, RegistryError, Selector};

/// The header every write must carry. A page on another site cannot send
/// it without a CORS preflight, which the console never grants, so a
/// browser holding an admin's certificate cannot be made to free anything.
pub(super) const WRITE_HEADER: &str = "x-seaport-console";

/// A registration as the page reads it: everything a Query answers (never
/// the session), and when it was registered.
pub(super) fn service_json(console: &Console, s: &Service, now: SystemTime) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "version": s.version.as_ref().map(ToString::to_string),
        "role": s.role(),
        "host": &*s.host,
        "port": s.port,
        "address": s.address(),
        "metadata": s.metadata.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect::<serde_json::Map<_, _>>(),
        "namespace": &*s.namespace,
        "owner": &*s.owner,
        "draining": s.draining,
        "create_revision": s.create_revision,
        "mod_revision": s.mod_revision,
        "registered": super::events::registered(console, s.create_revision, now),
    })
}

pub(super) fn event_word(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Existing => "existing",
        EventKind::Synced => "synced",
        EventKind::Registered => "registered",
        EventKind::Updated => "updated",
        EventKind::Freed => "freed",
        EventKind::Reset => "reset",
    }
}

pub(super) fn reason_word(reason: FreeReason) -> &'static str {
    match reason {
        FreeReason::Owner => "owner",
        FreeReason::Closed => "closed",
        FreeReason::Expired => "expired",
        FreeReason::Admin => "admin",
    }
}

/// A refusal as JSON, `{"error": "..."}`, with its status.
pub(super) fn refused(status: StatusCode, message: impl Into<String>) -> Response {
    answer(status, &json!({ "error": message.into() }))
}

/// `value` as a JSON answer.
pub(super) fn answer(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// A registry error as its RPC would answer it (and logged as the RPC's
/// refusals are), with the HTTP status of that gRPC code.
fn rejected(what: &'static str, peer: &Peer, e: RegistryError) -> Response {
    use tonic::Code;
    let caller = crate::grpc::Caller {
        peer: Some(peer.addr),
        identity: peer.identity.as_deref().unwrap_or_default(),
    };
    let status = crate::grpc::reject(what, caller, e);
    let http = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refused(http, status.message())
}

/// The selector of a query's `namespace` and `pattern`, or the refusal
/// that says what to fix.
pub(super) fn selector(
    console: &Console,
    query: &HashMap<String, String>,
) -> Result<Selector, Response> {
    let field = |name: &str| query.get(name).map_or("", String::as_str);
    console
        .registry
        .selector(field("pattern"), field("namespace"), std::iter::empty())
        .map_err(|e| match e {
            // A typo in the filter box is no refusal worth a log line.
            RegistryError::Role(_) | RegistryError::Invalid(_) => {
                refused(StatusCode::BAD_REQUEST, e.to_string())
            }
            other => refused(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
        })
}

/// `GET /api/check?namespace=&pattern=`: 200 when the filter is valid,
/// else 400 with the server's reason.
pub(super) async fn check(
    State(console): State<Arc<Console>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match selector(&console, &query) {
        Ok(s) => answer(
            StatusCode::OK,
            &json!({ "namespace": s.namespace, "pattern": s.pattern.to_string() }),
        ),
        Err(refusal) => refusal,
    }
}

/// What an admin asks of a registration.
#[derive(Clone, Copy, Debug)]
pub(super) enum Action {
    Free,
    Drain,
}

/// `POST /api/free?id=` and `POST /api/drain?id=`: under mTLS, for a
/// caller with a certificate, as Free and Drain would be through a session
/// of its own: the owner's identity or an admin may.
pub(super) async fn act(
    action: Action,
    console: Arc<Console>,
    peer: Peer,
    headers: HeaderMap,
    query: HashMap<String, String>,
) -> Response {
    let rpc = match action {
        Action::Free => "Free",
        Action::Drain => "Drain",
    };
    if !headers.contains_key(WRITE_HEADER) {
        return refused(
            StatusCode::FORBIDDEN,
            format!(
                "a write from the console carries the {WRITE_HEADER} header; use the console's buttons or send it"
            ),
        );
    }
    let Some(identity) = peer.identity.clone().filter(|_| console.auth.mtls) else {
        return refused(
            StatusCode::FORBIDDEN,
            "the console is read-only without mTLS and a client certificate; free or drain with seaportctl",
        );
    };
    let Some(id) = query.get("id").filter(|id| !id.is_empty()) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "give the registration's id: ?id=ID",
        );
    };
    let actor = Actor { identity };
    let registry = &console.registry;
    let session = match registry
        .open_session(
            Some(Duration::ZERO),
            peer.addr.ip().to_string(),
            actor.identity.clone(),
        )
        .await
    {
        Ok(s) => s,
        Err(e) => return rejected(rpc, &peer, e),
    };
    let done = match action {
        Action::Free => registry.free(&session.id, id, &actor).await,
        Action::Drain => registry.drain(&session.id, id, &actor).await,
    };
    if let Err(e) = registry.close_session(&session.id).await {
        tracing::warn!(
            session = session.label,
            "closing the console's session: {e}"
        );
    }
    match done {
        Ok(service) => {
            tracing::info!(id, identity = %actor.identity, "{rpc} from the console");
            let service = service_json(&console, &service, SystemTime::now());
            answer(StatusCode::OK, &json!({ "service": service }))
        }
        Err(e) => rejected(rpc, &peer, e),
    }
}

pub(super) async fn free(
    State(console): State<Arc<Console>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    act(Action::Free, console, peer, headers, query).await
}

pub(super) async fn drain(
    State(console): State<Arc<Console>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    act(Action::Drain, console, peer, headers, query).await
}
