//! The services by namespace and name, versions kept sorted, so a query
//! costs what the name holds rather than what the registry holds.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use seaport::Service;
use semver::Version;

use super::watch::Selector;

/// Within one name: highest version first, unversioned last, then by id.
type VersionKey = (Reverse<Option<Version>>, String);

/// namespace -> name -> (version, id) -> service.
#[derive(Debug, Default)]
pub(crate) struct Index {
    namespaces: HashMap<String, BTreeMap<String, BTreeMap<VersionKey, Arc<Service>>>>,
}

fn key(s: &Service) -> VersionKey {
    (Reverse(s.version.clone()), s.id.clone())
}

impl Index {
    pub(crate) fn insert(&mut self, service: Arc<Service>) {
        self.namespaces
            .entry(service.namespace.clone())
            .or_default()
            .entry(service.name.clone())
            .or_default()
            .insert(key(&service), service);
    }

    pub(crate) fn remove(&mut self, service: &Service) {
        let Some(names) = self.namespaces.get_mut(&service.namespace) else {
            return;
        };
        let Some(versions) = names.get_mut(&service.name) else {
            return;
        };
        versions.remove(&key(service));
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
        let matching = |versions: &BTreeMap<VersionKey, Arc<Service>>| {
            versions
                .values()
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
