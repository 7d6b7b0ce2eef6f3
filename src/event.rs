//! What a watch event says: the same words on the server and in every client.

/// The kind of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The service matched when the snapshot was taken.
    Existing,
    /// The snapshot (or replay) is complete; live changes follow.
    Synced,
    /// The service was registered (or entered the watched set).
    Registered,
    /// The service's metadata changed.
    Updated,
    /// The service was freed (or left the watched set).
    Freed,
    /// Forget what you have: a fresh snapshot and `Synced` follow.
    Reset,
}

/// Why a registration was freed, as `Freed` events say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FreeReason {
    /// Its owner freed it.
    Owner,
    /// Its session was closed by its client.
    Closed,
    /// Its session's ttl passed with no heartbeat.
    Expired,
    /// An admin freed it; final, its owner does not register it again.
    Admin,
}
