//! The services by namespace and name, versions kept sorted, so a query
//! costs what the name holds rather than what the registry holds.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use seaport::Service;

use super::watch::Selector;

/// A service in answer order: highest version first, unversioned last,
/// then by id. The version and the id's first bytes are kept beside the
/// `Arc` so that placing a registration among thousands rarely reads the
/// services themselves: each such read is a cache miss, and they made a
/// register cost grow with the registry.
#[derive(Debug)]
struct Entry {
    version: Reverse<Option<semver::Version>>,
    /// The id's first 8 bytes, zero-padded, big-endian: ordered as the ids.
    prefix: u64,
    service: Arc<Service>,
}

impl Entry {
    fn new(service: Arc<Service>) -> Entry {
        let mut head = [0u8; 8];
        let id = service.id.as_bytes();
        let n = id.len().min(8);
        head[..n].copy_from_slice(&id[..n]);
        Entry {
            version: Reverse(service.version.clone()),
            prefix: u64::from_be_bytes(head),
            service,
        }
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (&self.version, self.prefix)
            .cmp(&(&other.version, other.prefix))
            .then_with(|| self.service.id.cmp(&other.service.id))
    }
}

/// namespace -> name -> services in answer order.
#[derive(Debug, Default)]
pub(crate) struct Index {
    namespaces: HashMap<String, BTreeMap<String, BTreeSet<Entry>>>,
}

impl Index {
    /// Adds the service, or replaces the one with its version and id.
    pub(crate) fn insert(&mut self, service: Arc<Service>) {
        self.namespaces
            .entry(service.namespace.clone())
            .or_default()
            .entry(service.name.clone())
            .or_default()
            .replace(Entry::new(service));
    }

    pub(crate) fn remove(&mut self, service: &Arc<Service>) {
        let Some(names) = self.namespaces.get_mut(&service.namespace) else {
            return;
        };
        let Some(entries) = names.get_mut(&service.name) else {
            return;
        };
        entries.remove(&Entry::new(service.clone()));
        if entries.is_empty() {
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
        let matching = |entries: &BTreeSet<Entry>| {
            entries
                .iter()
                .map(|e| &e.service)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(id: &str, version: Option<&str>) -> Arc<Service> {
        Arc::new(Service {
            id: id.into(),
            name: "web".into(),
            version: version.map(|v| v.parse().unwrap()),
            host: "h".into(),
            port: 1,
            metadata: Default::default(),
            namespace: "default".into(),
            owner: String::new(),
            session_id: "s".into(),
            create_revision: 1,
            mod_revision: 1,
        })
    }

    fn all(index: &Index) -> Vec<String> {
        let selector = Selector {
            namespace: "default".into(),
            pattern: "web".parse().unwrap(),
            metadata: Default::default(),
        };
        index
            .select(&selector)
            .iter()
            .map(|s| s.id.clone())
            .collect()
    }

    #[test]
    fn answers_are_ordered_by_version_descending_then_id_past_the_prefix() {
        let mut index = Index::default();
        // Ids that share their first 8 bytes, one that is a prefix of the
        // others, and one shorter than 8 bytes.
        for (id, version) in [
            ("instance-b", Some("1.0.0")),
            ("instance", Some("1.0.0")),
            ("instance-a", Some("1.0.0")),
            ("z", Some("2.0.0")),
            ("a", None),
            ("b", Some("1.0.0")),
        ] {
            index.insert(service(id, version));
        }
        assert_eq!(
            all(&index),
            ["z", "b", "instance", "instance-a", "instance-b", "a"]
        );
    }

    #[test]
    fn remove_takes_out_exactly_that_service_and_empty_names() {
        let mut index = Index::default();
        let (a, b) = (
            service("instance-a", Some("1.0.0")),
            service("instance-b", Some("1.0.0")),
        );
        index.insert(a.clone());
        index.insert(b.clone());
        index.remove(&a);
        assert_eq!(all(&index), ["instance-b"]);
        index.remove(&b);
        assert!(all(&index).is_empty());
        assert!(index.namespaces.is_empty());
    }
}
