//! Services by id, holding each service's `Arc` and nothing else: the id is
//! read from the service, not stored again as a key.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashbrown::HashSet;
use seaport::Service;

/// A service hashed and compared by its id.
#[derive(Debug)]
struct ById(Arc<Service>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash as the `str` it borrows as.
        self.0.id.as_str().hash(state);
    }
}

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

/// Services by id: every live service, and each session's own.
#[derive(Debug, Default)]
pub(crate) struct ServicesById {
    services: HashSet<ById>,
}

impl ServicesById {
    pub(crate) fn get(&self, id: &str) -> Option<&Arc<Service>> {
        self.services.get(id).map(|s| &s.0)
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.services.contains(id)
    }

    /// Adds the service, or replaces the one with its id.
    pub(crate) fn put(&mut self, service: Arc<Service>) {
        self.services.replace(ById(service));
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<Arc<Service>> {
        self.services.take(id).map(|s| s.0)
    }

    /// Every id held.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|s| &*s.0.id)
    }

    pub(crate) fn len(&self) -> usize {
        self.services.len()
    }

    pub(crate) fn into_services(self) -> impl Iterator<Item = Arc<Service>> {
        self.services.into_iter().map(|s| s.0)
    }
}
