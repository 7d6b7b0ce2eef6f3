//! Choosing an instance of a role for each connection or request: the
//! catalog's picks, less the instances that failed lately (held off with
//! a backoff) and those already tried for this connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seaport_client::{Catalog, Service};

/// How the instances of a role share the connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Balance {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// An instance chosen at random.
    Random,
    /// The instance with the fewest open connections (requests, for HTTP).
    LeastConnections,
}

/// The first hold after a failure; each failure in a row doubles it.
const HOLD_BASE: Duration = Duration::from_millis(500);
/// The longest hold.
const HOLD_MAX: Duration = Duration::from_secs(30);

/// What the proxy knows of each instance, across roles: its open
/// connections and its recent failures. Entries with nothing to say are
/// removed, so the map holds only instances in use or held off.
#[derive(Default)]
pub(crate) struct Instances {
    // Never held across an await: every method is a short critical section.
    state: Mutex<HashMap<String, Instance>>,
}

#[derive(Default)]
struct Instance {
    open: usize,
    failures: u32,
    held_until: Option<Instant>,
}

impl Instance {
    fn is_idle(&self, now: Instant) -> bool {
        self.open == 0 && self.held_until.is_none_or(|t| t + HOLD_MAX <= now)
    }
}

impl Instances {
    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instance>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ids held off now.
    fn held(&self, now: Instant) -> Vec<String> {
        self.state()
            .iter()
            .filter(|(_, i)| i.held_until.is_some_and(|t| t > now))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Connections open to `id` now.
    fn open(&self, id: &str) -> usize {
        self.state().get(id).map_or(0, |i| i.open)
    }

    /// Records that `id` refused or failed; returns how long it is held
    /// off: 0.5s, doubling with each failure in a row, up to 30s.
    pub(crate) fn failed(&self, id: &str) -> Duration {
        let now = Instant::now();
        let mut state = self.state();
        state.retain(|_, i| !i.is_idle(now));
        let instance = state.entry(id.to_string()).or_default();
        instance.failures = instance.failures.saturating_add(1);
        let hold = HOLD_BASE
            .saturating_mul(1 << (instance.failures - 1).min(16))
            .min(HOLD_MAX);
        instance.held_until = Some(now + hold);
        hold
    }

    /// Records that `id` answered: its failures are forgotten.
    pub(crate) fn succeeded(&self, id: &str) {
        let mut state = self.state();
        if let Some(instance) = state.get_mut(id) {
            instance.failures = 0;
            instance.held_until = None;
            if instance.open == 0 {
                state.remove(id);
            }
        }
    }

    /// Counts a connection to `id` until the lease is dropped.
    pub(crate) fn lease(self: &Arc<Self>, id: &str) -> Lease {
        self.state().entry(id.to_string()).or_default().open += 1;
        Lease {
            instances: self.clone(),
            id: id.to_string(),
        }
    }
}

/// One open connection (or request) to an instance.
pub(crate) struct Lease {
    instances: Arc<Instances>,
    id: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut state = self.instances.state();
        if let Some(instance) = state.get_mut(&self.id) {
            instance.open = instance.open.saturating_sub(1);
            if instance.is_idle(now) {
                state.remove(&self.id);
            }
        }
    }
}

/// The instances of one role: a catalog, live by a watch, and how to
/// choose among them.
pub(crate) struct Pool {
    /// The role, `name@range`, as given.
    pub(crate) pattern: String,
    catalog: Catalog,
    balance: Balance,
    pub(crate) instances: Arc<Instances>,
}

impl Pool {
    pub(crate) fn new(
        pattern: String,
        catalog: Catalog,
        balance: Balance,
        instances: Arc<Instances>,
    ) -> Self {
        Pool {
            pattern,
            catalog,
            balance,
            instances,
        }
    }

    /// The catalog behind the pool.
    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// An instance not in `tried`: one that is not held off if there is
    /// any, else a held-off one (better a second chance than refusing).
    /// None once every instance was tried, or when none matches.
    pub(crate) fn choose(&self, tried: &[String]) -> Option<Service> {
        let held = self.instances.held(Instant::now());
        let mut exclude: Vec<&str> = tried.iter().map(String::as_str).collect();
        let just_tried = exclude.len();
        exclude.extend(held.iter().map(String::as_str));
        self.pick(&exclude).or_else(|| {
            (!held.is_empty())
                .then(|| self.pick(&exclude[..just_tried]))
                .flatten()
        })
    }

    fn pick(&self, exclude: &[&str]) -> Option<Service> {
        match self.balance {
            Balance::RoundRobin => self.catalog.pick_excluding(exclude),
            Balance::Random => self.catalog.pick_random_excluding(exclude),
            Balance::LeastConnections => self
                .catalog
                .pick_least(exclude, |s| self.instances.open(&s.id)),
        }
    }

    /// Why `choose` found nothing, when nothing was tried.
    pub(crate) fn why_none(&self) -> String {
        if self.catalog.is_empty() {
            format!("no instance of {} is registered", self.pattern)
        } else {
            format!("every instance of {} is draining", self.pattern)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_double_up_to_the_longest_and_success_forgets() {
        let instances = Instances::default();
        let holds: Vec<Duration> = (0..8).map(|_| instances.failed("a")).collect();
        assert_eq!(holds[0], Duration::from_millis(500));
        assert_eq!(holds[1], Duration::from_secs(1));
        assert_eq!(holds[2], Duration::from_secs(2));
        assert_eq!(holds[7], HOLD_MAX);
        assert_eq!(instances.held(Instant::now()), ["a"]);
        instances.succeeded("a");
        assert!(instances.held(Instant::now()).is_empty());
        assert_eq!(instances.failed("a"), HOLD_BASE, "the count starts over");
    }

    #[test]
    fn leases_count_open_connections_and_leave_nothing_behind() {
        let instances = Arc::new(Instances::default());
        let first = instances.lease("a");
        let second = instances.lease("a");
        assert_eq!(instances.open("a"), 2);
        drop(first);
        assert_eq!(instances.open("a"), 1);
        drop(second);
        assert_eq!(instances.open("a"), 0);
        assert!(instances.state().is_empty());
    }

    #[test]
    fn a_hold_outlives_the_connections_that_saw_it() {
        let instances = Arc::new(Instances::default());
        let lease = instances.lease("a");
        instances.failed("a");
        drop(lease);
        assert_eq!(instances.held(Instant::now()), ["a"]);
        assert!(
            instances
                .held(Instant::now() + HOLD_BASE + Duration::from_millis(1))
                .is_empty()
        );
    }
}
