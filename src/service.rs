//! One registration, as every part of Seaport sees it.

use std::sync::Arc;

use semver::Version;

use crate::Metadata;

/// One registration: where an instance of `name@version` listens.
///
/// Host, namespace, owner and session id are shared, not copied: the
/// server's registry gives every registration on one host, in one
/// namespace or of one session the same string, four allocations fewer for
/// each registration it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Unique id of the registration.
    pub id: String,
    /// Service name.
    pub name: String,
    /// Exact version, when registered with one.
    pub version: Option<Version>,
    /// Host where the service listens.
    pub host: Arc<str>,
    /// Port where the service listens.
    pub port: u16,
    /// Free-form metadata, kept sorted so output is stable.
    pub metadata: Metadata,
    /// Namespace the registration lives in.
    pub namespace: Arc<str>,
    /// Identity that registered it (empty without mTLS).
    pub owner: Arc<str>,
    /// Session that holds it: known to the server only. A session id is a
    /// secret of its holder, so no answer carries it and clients see it
    /// empty.
    pub session_id: Arc<str>,
    /// Revision at which it was registered.
    pub create_revision: u64,
    /// Revision of its last change.
    pub mod_revision: u64,
    /// Its instance is stopping: listed, but chosen for no new traffic.
    pub draining: bool,
}

impl Service {
    /// The service's role as `name@version`, or `name` when unversioned.
    pub fn role(&self) -> String {
        match &self.version {
            Some(v) => format!("{}@{}", self.name, v),
            None => self.name.clone(),
        }
    }

    /// `host:port`, with IPv6 hosts in brackets so the result parses as an
    /// address.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}
