//! What the store tells about its work, for seaportd's metrics: each
//! request's round trip, each keep-alive failure, and the newest revision
//! etcd answered at (the index's lag behind etcd is measured from it).

use std::time::Duration;

/// Told of the store's requests as they finish. Calls come on the store's
/// tasks: keep them to a few atomic operations.
pub trait Observer: Send + Sync + 'static {
    /// A request to etcd (`txn`, `lease_grant`, `lease_revoke`, `range`)
    /// answered, or failed, after `took`.
    fn round_trip(&self, request: &'static str, took: Duration, ok: bool);
    /// The keep-alive stream broke or could not be opened, or etcd no
    /// longer knew a lease it was asked to keep.
    fn keep_alive_failed(&self);
    /// etcd answered at `revision`.
    fn revision(&self, revision: u64);
}

/// No one listens: for tests and tools.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unobserved;

impl Observer for Unobserved {
    fn round_trip(&self, _: &'static str, _: Duration, _: bool) {}
    fn keep_alive_failed(&self) {}
    fn revision(&self, _: u64) {}
}
