//! The services by namespace and name, versions kept sorted, so a query
//! costs what the name holds rather than what the registry holds.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use seaport::Service;

use super::watch::Selector;

/// A service ordered by id within its version. The id's first bytes are
/// kept beside the `Arc` so that placing a registration among thousands of
/// one version rarely reads the services themselves: each such read is a
/// cache miss, and they made a register cost grow with the registry.
#[derive(Debug)]
struct ById {
    /// The id's first 8 bytes, zero-padded, big-endian: ordered as the ids.
    prefix: u64,
    service: Arc<Service>,
}

impl ById {
    fn new(service: Arc<Service>) -> ById {
        let mut head = [0u8; 8];
        let id = service.id.as_bytes();
        let n = id.len().min(8);
        head[..n].copy_from_slice(&id[..n]);
        ById {
            prefix: u64::from_be_bytes(head),
            service,
        }
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    fn cmp(&self, other: &Self) -> Ordering {
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| self.service.id.cmp(&other.service.id))
    }
}

/// A name's services in answer order: highest version first, unversioned
/// last, then by id.
type Versions = BTreeMap<Reverse<Option<semver::Version>>, BTreeSet<ById>>;

/// namespace -> name -> services in answer order.
#[derive(Debug, Default)]
pub(crate) struct Index {
    namespaces: HashMap<String, BTreeMap<String, Versions>>,
}

impl Index {
    /// Adds the service, or replaces the one with its version and id.
    pub(crate) fn insert(&mut self, service: Arc<Service>) {
        self.namespaces
            .entry(service.namespace.clone())
            .or_default()
            .entry(service.name.clone())
            .or_default()
            .entry(Reverse(service.version.clone()))
            .or_default()
            .replace(ById::new(service));
    }

    pub(crate) fn remove(&mut self, service: &Arc<Service>) {
        let Some(names) = self.namespaces.get_mut(&service.namespace) else {
            return;
        };
        let Some(versions) = names.get_mut(&service.name) else {
            return;
        };
        let version = Reverse(service.version.clone());
        let Some(ids) = versions.get_mut(&version) else {
            return;
        };
        ids.remove(&ById::new(service.clone()));
        if ids.is_empty() {
            versions.remove(&version);
            if versions.is_empty() {
                names.remove(&service.name);
                if names.is_empty() {
                    self.namespaces.remove(&service.namespace);
                }
            }
        }
    }

    /// Every service the selector matches, in the order the API promises
    /// (name, version descending, id). Clones `Arc`s, never services.
    pub(crate) fn select(&self, selector: &Selector) -> Vec<Arc<Service>> {
        let Some(names) = self.namespaces.get(&selector.namespace) else {
            return Vec::new();
        };
        let matching = |versions: &Versions| {
            versions
                .values()
                .flatten()
                .map(|s| &s.service)
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
    fn remove_takes_out_exactly_that_service_and_empty_groups() {
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
