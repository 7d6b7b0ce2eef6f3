//! The services by namespace and name, versions kept sorted, so a query
//! costs what the name holds rather than what the registry holds.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hashbrown::HashMap;
use seaport::Service;

use super::watch::Selector;

/// A service in answer order: highest version first, unversioned last,
/// then by id. The version (as [`version_key`]) and the id's first bytes
/// are kept beside the `Arc`, so placing a registration among thousands
/// rarely reads the services themselves: each such read is a cache miss,
/// and they made a register cost grow with the registry. 24 bytes, as a
/// name's services share B-tree nodes of 11 entries.
#[derive(Debug)]
struct Entry {
    version: u64,
    /// The id's first 8 bytes, zero-padded, big-endian: ordered as the ids.
    prefix: u64,
    service: Arc<Service>,
}

/// [`version_key`] of a service without a version: below every version.
const UNVERSIONED: u64 = 0;
/// [`version_key`] of a version that does not fit in one: the services'
/// own versions are compared instead.
const COMPLEX: u64 = u64::MAX;
/// Bits for each of major, minor and patch.
const PART: u32 = 20;

/// A version as one integer ordered as the versions are, when it is plain
/// (no pre-release or build, each part below 2^20), as nearly all are.
fn version_key(version: Option<&semver::Version>) -> u64 {
    let Some(v) = version else {
        return UNVERSIONED;
    };
    let fits = |n: u64| n < 1 << PART;
    if !(v.pre.is_empty() && v.build.is_empty() && fits(v.major) && fits(v.minor) && fits(v.patch))
    {
        return COMPLEX;
    }
    1 << (3 * PART) | v.major << (2 * PART) | v.minor << PART | v.patch
}

impl Entry {
    fn new(service: Arc<Service>) -> Entry {
        let mut head = [0u8; 8];
        let id = service.id.as_bytes();
        let n = id.len().min(8);
        head[..n].copy_from_slice(&id[..n]);
        Entry {
            version: version_key(service.version.as_ref()),
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
        let versions = if self.version == COMPLEX || other.version == COMPLEX {
            self.service.version.cmp(&other.service.version)
        } else {
            self.version.cmp(&other.version)
        };
        versions
            .reverse()
            .then(self.prefix.cmp(&other.prefix))
            .then_with(|| self.service.id.cmp(&other.service.id))
    }
}

/// namespace -> name -> services in answer order.
#[derive(Debug, Default)]
pub(crate) struct Index {
    namespaces: HashMap<Arc<str>, BTreeMap<String, Entries>>,
}

/// Past this many services a name's entries move from a sorted vector to a
/// tree.
const FEW: usize = 32;

/// One name's services in answer order. Most names have a few replicas: a
/// sorted vector holds four in 96 bytes where a tree's first node takes
/// 288, and finds one in as few comparisons. A name that grows past a few
/// moves to a tree for good, so that a registration never shifts thousands.
#[derive(Debug)]
enum Entries {
    Few(Vec<Entry>),
    Many(BTreeSet<Entry>),
}

impl Default for Entries {
    fn default() -> Self {
        Entries::Few(Vec::new())
    }
}

impl Entries {
    /// Adds the entry, or replaces the equal one.
    fn put(&mut self, entry: Entry) {
        match self {
            Entries::Few(few) => match few.binary_search(&entry) {
                Ok(at) => few[at] = entry,
                Err(at) if few.len() < FEW => few.insert(at, entry),
                Err(_) => {
                    let mut many: BTreeSet<Entry> = few.drain(..).collect();
                    many.insert(entry);
                    *self = Entries::Many(many);
                }
            },
            Entries::Many(many) => {
                many.replace(entry);
            }
        }
    }

    fn remove(&mut self, entry: &Entry) {
        match self {
            Entries::Few(few) => {
                if let Ok(at) = few.binary_search(entry) {
                    few.remove(at);
                }
            }
            Entries::Many(many) => {
                many.remove(entry);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Entries::Few(few) => few.len(),
            Entries::Many(many) => many.len(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Entries::Few(few) => few.is_empty(),
            Entries::Many(many) => many.is_empty(),
        }
    }

    fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        let (few, many) = match self {
            Entries::Few(few) => (few.as_slice(), None),
            Entries::Many(many) => (&[][..], Some(many)),
        };
        few.iter()
            .chain(many.into_iter().flatten())
            .map(|e| &e.service)
    }
}

impl Index {
    /// Services by namespace.
    pub(crate) fn counts(&self) -> Vec<(String, usize)> {
        self.namespaces
            .iter()
            .map(|(ns, names)| (ns.to_string(), names.values().map(Entries::len).sum()))
            .collect()
    }

    /// The index's own copy of a namespace's name, when it holds services
    /// there: new services share it rather than each holding a copy.
    pub(crate) fn namespace(&self, namespace: &str) -> Option<Arc<str>> {
        self.namespaces
            .get_key_value(namespace)
            .map(|(k, _)| k.clone())
    }

    /// Adds the service, or replaces the one with its version and id.
    pub(crate) fn insert(&mut self, service: Arc<Service>) {
        // Keys are copied only for a new namespace or name.
        let names = match self.namespaces.get_mut(&*service.namespace) {
            Some(names) => names,
            None => self
                .namespaces
                .entry(service.namespace.clone())
                .or_default(),
        };
        let entries = match names.get_mut(&service.name) {
            Some(entries) => entries,
            None => names.entry(service.name.clone()).or_default(),
        };
        entries.put(Entry::new(service));
    }

    pub(crate) fn remove(&mut self, service: &Arc<Service>) {
        let Some(names) = self.namespaces.get_mut(&*service.namespace) else {
            return;
        };
        let Some(entries) = names.get_mut(&service.name) else {
            return;
        };
        entries.remove(&Entry::new(service.clone()));
        if entries.is_empty() {
            names.remove(&service.name);
            if names.is_empty() {
                self.namespaces.remove(&*service.namespace);
            }
        }
    }

    /// Every service the selector matches, in the order the API promises
    /// (name, version descending, id). Clones `Arc`s, never services.
    pub(crate) fn select(&self, selector: &Selector) -> Vec<Arc<Service>> {
        let Some(names) = self.namespaces.get(selector.namespace.as_str()) else {
            return Vec::new();
        };
        let matching = |entries: &Entries| {
            entries
                .services()
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
    use crate::test_service;

    fn service(id: &str, version: Option<&str>) -> Arc<Service> {
        test_service(id, version, "h", 1)
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
            // Versions compared through the services: a pre-release sorts
            // below its release, a part too big for the key above the rest.
            ("pre", Some("1.0.0-rc.1")),
            ("big", Some("1.2000000.0")),
            ("pre2", Some("2.0.0-alpha")),
        ] {
            index.insert(service(id, version));
        }
        assert_eq!(
            all(&index),
            [
                "z",
                "pre2",
                "big",
                "b",
                "instance",
                "instance-a",
                "instance-b",
                "pre",
                "a"
            ]
        );
    }

    #[test]
    fn an_answer_across_all_names_is_ordered_by_name_then_version() {
        let mut index = Index::default();
        for (name, id, version) in [
            ("web", "w1", "1.0.0"),
            ("api", "a1", "1.0.0"),
            ("web", "w2", "2.0.0"),
            ("db", "d1", "1.0.0"),
            ("api", "a2", "3.0.0"),
        ] {
            let mut service = (*service(id, Some(version))).clone();
            service.name = name.into();
            index.insert(Arc::new(service));
        }
        let selector = Selector {
            namespace: "default".into(),
            pattern: "".parse().unwrap(),
            metadata: Default::default(),
        };
        let ids: Vec<String> = index
            .select(&selector)
            .iter()
            .map(|s| s.id.clone())
            .collect();
        assert_eq!(ids, ["a2", "a1", "d1", "w2", "w1"]);
    }

    #[test]
    fn a_name_keeps_answer_order_as_it_grows_past_a_few_and_shrinks() {
        let mut index = Index::default();
        let services: Vec<_> = (0..FEW * 3)
            .map(|i| service(&format!("id-{i:03}"), Some(&format!("1.{}.0", i % 7))))
            .collect();
        let order = |mut held: Vec<&Arc<Service>>| {
            held.sort_by(|a, b| b.version.cmp(&a.version).then(a.id.cmp(&b.id)));
            held.iter().map(|s| s.id.clone()).collect::<Vec<_>>()
        };
        // Inserted out of order, and each once more: a repeat replaces.
        let shuffled: Vec<_> = (0..services.len())
            .map(|i| &services[i * 7 % services.len()])
            .collect();
        for (n, s) in shuffled.iter().enumerate() {
            index.insert((*s).clone());
            index.insert((*s).clone());
            assert_eq!(
                all(&index),
                order(shuffled[..=n].to_vec()),
                "after {} inserts",
                n + 1
            );
        }
        for (n, s) in shuffled.iter().enumerate() {
            index.remove(s);
            assert_eq!(
                all(&index),
                order(shuffled[n + 1..].to_vec()),
                "after {} removals",
                n + 1
            );
        }
        assert!(index.namespaces.is_empty());
    }

    #[test]
    fn plain_versions_keys_are_ordered_as_the_versions() {
        let versions = [
            "0.0.1", "0.1.0", "0.1.9", "1.0.0", "1.0.10", "1.2.0", "10.0.0",
        ];
        let keys: Vec<u64> = versions
            .iter()
            .map(|v| version_key(Some(&v.parse().unwrap())))
            .collect();
        assert!(
            keys.windows(2)
                .all(|w| UNVERSIONED < w[0] && w[0] < w[1] && w[1] < COMPLEX)
        );
        for complex in ["1.0.0-rc.1", "1.0.0+build.5", "1048576.0.0"] {
            assert_eq!(version_key(Some(&complex.parse().unwrap())), COMPLEX);
        }
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
