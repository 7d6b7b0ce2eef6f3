//! The one mapping from registry errors to gRPC statuses, and the log line
//! each refusal gets, at a bounded rate per peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::registry::RegistryError;

/// The gRPC code for a registry error.
fn code(e: &RegistryError) -> Code {
    use RegistryError::*;
    match e {
        Role(_) | Invalid(_) => Code::InvalidArgument,
        UnknownSession | UnknownService(_) => Code::NotFound,
        PortTaken { .. } | IdTaken(_) | IdConflict { .. } => Code::AlreadyExists,
        NotOwner { .. } | NotSessionOwner { .. } | Evicted(_) => Code::PermissionDenied,
        PortsExhausted { .. } | TooManyRegistrations(_) | TooManyWatchers(_) => {
            Code::ResourceExhausted
        }
    }
}

/// Turns a registry error into a status, and logs it (see [`log_refusal`]).
pub(crate) fn reject(rpc: &'static str, peer: Option<SocketAddr>, e: RegistryError) -> Status {
    let code = code(&e);
    let message = e.to_string();
    log_refusal(rpc, peer, code, &message);
    Status::new(code, message)
}

/// A malformed request that never reached the core.
pub(crate) fn invalid(
    rpc: &'static str,
    peer: Option<SocketAddr>,
    message: impl Into<String>,
) -> Status {
    let message = message.into();
    log_refusal(rpc, peer, Code::InvalidArgument, &message);
    Status::invalid_argument(message)
}

/// Log lines of refusals one peer gets per [`WINDOW`]; a client that
/// keeps sending bad requests must not fill the disk.
const LINES_PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);
/// Peers remembered at once; past that the oldest windows are dropped.
const PEERS_KEPT: usize = 4096;

/// Per peer address: when its window started and how many refusals it had.
type Windows = Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>;

fn windows() -> &'static Windows {
    static WINDOWS: OnceLock<Windows> = OnceLock::new();
    WINDOWS.get_or_init(Default::default)
}

/// Logs one line per refused request, with the peer, at most
/// [`LINES_PER_WINDOW`] per peer per [`WINDOW`], then one line saying the
/// rest are not logged. Messages quote client input in short already.
pub(crate) fn log_refusal(rpc: &'static str, peer: Option<SocketAddr>, code: Code, message: &str) {
    let ip = peer.map(|p| p.ip());
    let now = Instant::now();
    let count = {
        let mut windows = windows().lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= PEERS_KEPT && !windows.contains_key(&ip) {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if windows.len() >= PEERS_KEPT {
                windows.clear();
            }
        }
        let (start, count) = windows.entry(ip).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            (*start, *count) = (now, 0);
        }
        *count += 1;
        *count
    };
    let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
    if count <= LINES_PER_WINDOW {
        tracing::info!(rpc, ?code, %peer, "rejected: {message}");
    } else if count == LINES_PER_WINDOW + 1 {
        tracing::info!(%peer, "more requests from this peer were rejected; not logging them for up to {WINDOW:?}");
    }
}
