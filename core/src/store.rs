//! The seam to a store that keeps the truth outside this process (etcd).
//!
//! Data flows one way: the core decides a change by its rules, the store
//! makes it under preconditions (this id, this port on this host, are
//! free), and the store's feed brings every change, its own and other
//! servers', back to the index through [`Registry::apply`]. Reads never
//! reach the store. The embedded memory store needs no seam: its truth is
//! the index itself, changed under one lock.
//!
//! [`Registry::apply`]: crate::Registry::apply

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use seaport::Service;

use crate::{Eviction, Result};

/// What a store's calls return.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A store that keeps sessions as leases and registrations under them.
/// Errors are the core's: `UnknownSession` when the lease is gone,
/// `IdTaken` and `PortTaken` when a precondition failed, `Unavailable`
/// when the store cannot be reached.
pub trait Store: Send + Sync + 'static {
    /// Grants a lease of the session's ttl and records the session under
    /// it; returns the lease and the revision that recorded it.
    fn open<'a>(&'a self, session: &'a SessionRecord) -> StoreFuture<'a, (i64, u64)>;

    /// Asks that `lease` be kept alive: its holder was heard from.
    fn keep_alive(&self, lease: i64);

    /// Marks the session closed, then revokes its lease, which frees all it
    /// holds in one revision; returns that revision.
    fn close<'a>(&'a self, session: &'a SessionRecord) -> StoreFuture<'a, u64>;

    /// Makes `write` if its preconditions hold; returns its revision.
    fn commit(&self, write: Write) -> StoreFuture<'_, u64>;
}

/// A session as the store records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id: a secret of its holder, never logged.
    pub id: String,
    /// The store's lease (0 before one is granted).
    pub lease: i64,
    /// Its ttl.
    pub ttl: Duration,
    /// The address its client was seen at.
    pub observed_host: String,
    /// Certificate identity of its holder (empty without mTLS).
    pub owner: String,
    /// A server's own session, which no client may use.
    pub pinned: bool,
    /// Set just before the lease is revoked, so that every server reads the
    /// frees that follow as a close rather than an expiry.
    pub closing: bool,
    /// What admins freed of it, oldest first: never registered again by it.
    pub evicted: Vec<Eviction>,
}

/// A change the core asks the store to make.
#[derive(Clone, Debug)]
pub enum Write {
    /// A new registration under the session's lease; its id, and its port
    /// on its host, must be free, and its session open.
    Register {
        /// The registration (revisions are the store's to give).
        service: Arc<Service>,
        /// Its session's lease.
        lease: i64,
    },
    /// A changed registration (its metadata, or draining); it must be
    /// unchanged since `previous_revision`.
    Update {
        /// The registration as it is to be.
        service: Arc<Service>,
        /// Its `mod_revision` as the rules saw it.
        previous_revision: u64,
        /// Its session's lease.
        lease: i64,
    },
    /// A free; with `evicted`, the session's record noting an admin's free,
    /// written in the same transaction.
    Free {
        /// The registration as the rules saw it.
        service: Arc<Service>,
        /// The holder's session record, when an admin frees.
        evicted: Option<SessionRecord>,
    },
}

/// One change of the store's feed. The changes of one revision come
/// together (a transaction, or a lease's end), so the index can tell why a
/// registration went.
#[derive(Clone, Debug)]
pub enum Applied {
    /// A session was recorded or its record changed.
    Session(SessionRecord),
    /// A session's record went: it was closed or its lease expired.
    SessionGone(String),
    /// A registration was made or changed (with the store's revisions).
    Service(Service),
    /// A registration went.
    ServiceGone(String),
}

/// Where the index stands with its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreHealth {
    /// Not yet loaded: reads are refused.
    Syncing,
    /// Loaded and following the store's feed.
    Synced,
    /// The store cannot be reached: reads are answered from the index as it
    /// was, writes are refused.
    Unreachable,
}
