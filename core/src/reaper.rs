//! The memory store's reaper: sessions whose ttl passed are expired.

use std::sync::atomic::Ordering;
use std::time::Duration;

use seaport::FreeReason;
use tokio::time::Instant;

use crate::Registry;

impl Registry {
    /// Expires the sessions whose ttl has passed; returns when to look again.
    fn expire_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.lock();
        for id in state.sessions.due(now) {
            if let Some(session) = state.sessions.open.remove(&id) {
                tracing::info!(
                    session = session.label,
                    host = %session.observed_host,
                    identity = %session.owner,
                    services = session.services.len(),
                    "session expired"
                );
                crate::stats::Counters::bump(&self.shared.counters.expired);
                for service in session.services.into_services() {
                    self.remove_locked(&mut state, &service.id, now, FreeReason::Expired);
                }
            }
        }
        state.sessions.next_deadline()
    }
}

/// How often at most the reaper looks for expired sessions. Deadlines of
/// many sessions are spread over time; waking for each one would cost a
/// context switch per session per ttl, so a session is freed up to this
/// much after its ttl instead.
const REAP_TICK: Duration = Duration::from_millis(100);

/// Expires sessions as their ttl passes, until the reaper guard drops.
pub(crate) async fn reap(registry: Registry) {
    while !registry.shared.stopping.load(Ordering::Acquire) {
        let next = registry.expire_due();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.max(Instant::now() + REAP_TICK)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = registry.shared.reaper_wake.notified() => {}
        }
    }
}
