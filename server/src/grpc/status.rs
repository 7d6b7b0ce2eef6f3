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
        NotOwner { .. } | NotSessionOwner { .. } | Evicted(_) | NotAllowed { .. } => {
            Code::PermissionDenied
        }
        NoCertificate { .. } => Code::Unauthenticated,
        NothingMatched { .. } => Code::DeadlineExceeded,
        PortsExhausted { .. } | TooManyRegistrations(_) | TooManyWatchers(_) => {
            Code::ResourceExhausted
        }
        Unavailable(_) => Code::Unavailable,
        Changed(_) => Code::Aborted,
    }
}

/// Who a request came from, as its refusal's log line names them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caller<'a> {
    /// The peer's address, when the transport knows it.
    pub(crate) peer: Option<SocketAddr>,
    /// The client certificate's identity; empty without one.
    pub(crate) identity: &'a str,
}

/// Turns a registry error into a status, and logs it (see [`log_refusal`]).
pub(crate) fn reject(rpc: &'static str, caller: Caller<'_>, e: RegistryError) -> Status {
    let code = code(&e);
    let message = e.to_string();
    log_refusal(rpc, caller, code, &message);
    Status::new(code, message)
}

/// A malformed request that never reached the core.
pub(crate) fn invalid(rpc: &'static str, caller: Caller<'_>, message: impl Into<String>) -> Status {
    let message = message.into();
    log_refusal(rpc, caller, Code::InvalidArgument, &message);
    Status::invalid_argument(message)
}

/// Log lines of refusals one peer gets per [`WINDOW`]; a client that
/// keeps sending bad requests must not fill the disk.
const LINES_PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);
/// Peers remembered at once; past that the oldest windows are dropped.
const PEERS_KEPT: usize = 4096;

/// Per peer address: when its window started and how many refusals it had.
#[derive(Default)]
struct Windows(HashMap<Option<IpAddr>, (Instant, u32)>);

/// What to log of one refusal.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The refusal itself.
    Log,
    /// That the peer's further refusals go unlogged for a while.
    Quiet,
    /// Nothing.
    Skip,
}

impl Windows {
    /// Counts a refusal of `ip`'s at `now` and says what to log of it.
    fn count(&mut self, ip: Option<IpAddr>, now: Instant) -> Verdict {
        if self.0.len() >= PEERS_KEPT && !self.0.contains_key(&ip) {
            self.0
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if self.0.len() >= PEERS_KEPT {
                self.0.clear();
            }
        }
        let (start, count) = self.0.entry(ip).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            (*start, *count) = (now, 0);
        }
        *count += 1;
        match *count {
            n if n <= LINES_PER_WINDOW => Verdict::Log,
            n if n == LINES_PER_WINDOW + 1 => Verdict::Quiet,
            _ => Verdict::Skip,
        }
    }
}

/// Logs one line per refused request, with the peer, at most
/// [`LINES_PER_WINDOW`] per peer per [`WINDOW`], then one line saying the
/// rest are not logged. Messages quote client input in short already.
pub(crate) fn log_refusal(rpc: &'static str, caller: Caller<'_>, code: Code, message: &str) {
    static WINDOWS: OnceLock<Mutex<Windows>> = OnceLock::new();
    let verdict = WINDOWS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .count(caller.peer.map(|p| p.ip()), Instant::now());
    let peer = caller
        .peer
        .map_or_else(|| "unknown".to_string(), |p| p.to_string());
    let identity = seaport::quote(caller.identity);
    match verdict {
        Verdict::Log => tracing::info!(rpc, ?code, %peer, %identity, "rejected: {message}"),
        Verdict::Quiet => {
            tracing::info!(%peer, "more requests from this peer were rejected; not logging them for up to {WINDOW:?}")
        }
        Verdict::Skip => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_gets_a_bounded_number_of_lines_per_window() {
        let mut windows = Windows::default();
        let (a, b) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..50).map(|_| windows.count(a, t0)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Log).count(), 10);
        assert_eq!(verdicts[10], Verdict::Quiet);
        assert_eq!(verdicts[49], Verdict::Skip);
        assert_eq!(
            windows.count(b, t0),
            Verdict::Log,
            "other peers are not held back"
        );
        assert_eq!(windows.count(a, t0 + WINDOW), Verdict::Log, "a new window");
    }

    #[test]
    fn the_peers_remembered_are_bounded() {
        let mut windows = Windows::default();
        let t0 = Instant::now();
        for i in 0..(PEERS_KEPT as u32 + 10) {
            windows.count(Some(IpAddr::from(i.to_be_bytes())), t0);
        }
        assert!(windows.0.len() <= PEERS_KEPT);
    }
}
