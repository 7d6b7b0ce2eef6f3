//! One pool per role the proxy serves, each following its own catalog:
//! made on first use (a role named in a request, a route at start-up),
//! shared after that, and bounded in number.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seaport_client::SeaportClient;
use tokio::sync::OnceCell;

use super::balance::{Balance, Instances, Pool};

/// How long a new pool waits for the registry's first snapshot.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a pool could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// The role is malformed.
    #[error(transparent)]
    Role(#[from] seaport::RoleError),
    /// The registry refused the watch.
    #[error("watching {0}: {1}")]
    Refused(String, seaport_client::Error),
    /// The registry did not answer in time.
    #[error("the registry did not answer a watch of {0} within {secs}s", secs = FOLLOW_TIMEOUT.as_secs())]
    Timeout(String),
}

struct Slot {
    pool: OnceCell<Arc<Pool>>,
    /// Milliseconds since `Pools::epoch` at the last use, for eviction.
    used: AtomicU64,
}

/// The pools by role.
pub(crate) struct Pools {
    client: SeaportClient,
    balance: Balance,
    instances: Arc<Instances>,
    max: usize,
    epoch: Instant,
    // Never held across an await: a slot is taken out, then filled.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Pools {
    /// At most `max` roles are followed at once; past that, the one used
    /// least recently is dropped (its watch ends).
    pub(crate) fn new(client: SeaportClient, balance: Balance, max: usize) -> Self {
        Pools {
            client,
            balance,
            instances: Arc::new(Instances::default()),
            max: max.max(1),
            epoch: Instant::now(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// What the proxy knows of each instance, shared by every pool.
    pub(crate) fn instances(&self) -> &Arc<Instances> {
        &self.instances
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot of `pattern`; only a role not seen yet costs a parse.
    fn slot(&self, pattern: &str) -> Result<Arc<Slot>, PoolError> {
        let now = self.now_ms();
        if let Some(slot) = self.slots().get(pattern) {
            slot.used.store(now, Ordering::Relaxed);
            return Ok(slot.clone());
        }
        pattern.parse::<seaport::Pattern>()?;
        let mut slots = self.slots();
        if !slots.contains_key(pattern) && slots.len() >= self.max {
            let oldest = slots
                .iter()
                .min_by_key(|(_, s)| s.used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                slots.remove(&oldest);
            }
        }
        let slot = slots.entry(pattern.to_string()).or_insert_with(|| {
            Arc::new(Slot {
                pool: OnceCell::new(),
                used: AtomicU64::new(now),
            })
        });
        Ok(slot.clone())
    }

    /// The pool of `pattern` (`name` or `name@range`; empty: every
    /// service), following the registry from its first use on.
    pub(crate) async fn get(&self, pattern: &str) -> Result<Arc<Pool>, PoolError> {
        let slot = self.slot(pattern)?;
        slot.pool
            .get_or_try_init(|| async {
                let catalog = tokio::time::timeout(FOLLOW_TIMEOUT, self.client.catalog(pattern))
                    .await
                    .map_err(|_| PoolError::Timeout(pattern.to_string()))?
                    .map_err(|e| PoolError::Refused(pattern.to_string(), e))?;
                Ok(Arc::new(Pool::new(
                    pattern.to_string(),
                    catalog,
                    self.balance,
                    self.instances.clone(),
                )))
            })
            .await
            .cloned()
    }
}
