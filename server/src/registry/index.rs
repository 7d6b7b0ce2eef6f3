//! The services by namespace and name, versions kept sorted, so a query
//! costs what the name holds rather than what the registry holds.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use seaport::Service;

use super::watch::Selector;

/// A service ordered as answers are: highest version first, unversioned
/// last, then by id. It holds only the `Arc`; the key is read from the
/// service, not stored again.
#[derive(Debug)]
struct ByVersion(Arc<Service>);

impl ByVersion {
    fn key(&self) -> (Reverse<Option<&semver::Version>>, &str) {
        (Reverse(self.0.version.as_ref()), &self.0.id)
    }
}

impl PartialEq for ByVersion {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for ByVersion {}

impl PartialOrd for ByVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// namespace -> name -> services in answer order.
#[derive(Debug, Default)]
pub(crate) struct Index {
    namespaces: HashMap<String, BTreeMap<String, BTreeSet<ByVersion>>>,
}

impl Index {
    /// Adds the service, or replaces the one with its version and id.
    pub(crate) fn insert(&mut self, service: Arc<Service>) {
        self.namespaces
            .entry(service.namespace.clone())
            .or_default()
            .entry(service.name.clone())
            .or_default()
            .replace(ByVersion(service));
    }

    pub(crate) fn remove(&mut self, service: &Arc<Service>) {
        let Some(names) = self.namespaces.get_mut(&service.namespace) else {
            return;
        };
        let Some(versions) = names.get_mut(&service.name) else {
            return;
        };
        versions.remove(&ByVersion(service.clone()));
        if versions.is_empty() {
            names.remove(&service.name);
            if names.is_empty() {
                self.namespaces.remove(&service.namespace);
            }
        }
    }

    /// Every service the selector matches, in the order the API promises
    /// (name, version descending, id). Clones `Arc`s, never services.
    pub(crate) fn select(&self, selector: &Selector) -> Vec<Arc<Service>> {
        let Some(names) = self.namespaces.get(&selector.namespace) else {
            return Vec::new();
        };
        let matching = |versions: &BTreeSet<ByVersion>| {
            versions
                .iter()
                .map(|s| &s.0)
                .filter(|s| selector.matches(s))
                .cloned()
                .collect::<Vec<_>>()
        };
        match &selector.pattern.name {
            Some(name) => names.get(name).map(matching).unwrap_or_default(),
            None => names.values().flat_map(matching).collect(),
        }
    }
}
