//! What can go wrong in the registry core, each with a message that says
//! what to fix. `grpc::status` maps these to gRPC codes in one place.

use seaport::{RoleError, quote};

/// A refused registry operation. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A malformed role, pattern, name or range.
    #[error(transparent)]
    Role(#[from] RoleError),
    /// Any other malformed argument; the message says which and how to fix it.
    #[error("{0}")]
    Invalid(String),
    /// The session is not open here. The message never repeats the id: a
    /// session id is a secret of its holder.
    #[error(
        "the session is not open (it was closed, expired, or the server restarted); open a new session"
    )]
    UnknownSession,
    /// No registration has this id.
    #[error("no service with id {} is registered", quote(.0))]
    UnknownService(String),
    /// Another live registration holds the port on that host.
    #[error(
        "port {port} on {host} is held by {holder_role} (id {holder_id}); free it or pick another port"
    )]
    PortTaken {
        /// The host.
        host: String,
        /// The port asked for.
        port: u16,
        /// Role of the registration holding it.
        holder_role: String,
        /// Id of the registration holding it.
        holder_id: String,
    },
    /// Another session holds a registration with this id.
    #[error("id {} is held by another session; pick another id or leave it empty", quote(.0))]
    IdTaken(String),
    /// This session holds the id already, for something else.
    #[error(
        "this session already registered id {} as {existing}; free it first or use another id",
        quote(id)
    )]
    IdConflict {
        /// The id.
        id: String,
        /// What it is registered as (`role at host:port`).
        existing: String,
    },
    /// The caller does not own the registration.
    #[error("service {} belongs to {}; only its owner (or an admin, to free it) may change or free it",
        quote(id), if owner.is_empty() { "another session".to_string() } else { format!("identity {owner:?}") })]
    NotOwner {
        /// The registration's id.
        id: String,
        /// Its owner identity (empty without mTLS).
        owner: String,
    },
    /// The session belongs to another identity.
    #[error(
        "the session belongs to identity {owner:?}; use a session opened with your own certificate"
    )]
    NotSessionOwner {
        /// Its owner identity.
        owner: String,
    },
    /// An admin freed this id in this session; that is final.
    #[error(
        "an admin freed registration {}; it is not registered again under that id (register under a new one if an operator allows it)", quote(.0)
    )]
    Evicted(String),
    /// No port of the range is free on the host.
    #[error("no free port left on {host} in {first}-{last}; free some or widen --port-range")]
    PortsExhausted {
        /// The host.
        host: String,
        /// First port of the range.
        first: u16,
        /// Last port of the range.
        last: u16,
    },
    /// The policy does not let this identity register this name.
    #[error(
        "identity {identity:?} may not register {name:?}; the server's --policy allows it other names only"
    )]
    NotAllowed {
        /// The caller's identity.
        identity: String,
        /// The name asked for.
        name: String,
    },
    /// The call needs a client certificate and came without one.
    #[error(
        "{rpc} needs a client certificate signed by this server's client CA; pass one (seaportctl --cert and --key)"
    )]
    NoCertificate {
        /// The RPC called.
        rpc: &'static str,
    },
    /// Nothing matched before the caller's deadline.
    #[error("no service matched {} within {waited_ms}ms", quote(pattern))]
    NothingMatched {
        /// The pattern asked for.
        pattern: String,
        /// How long it waited.
        waited_ms: u128,
    },
    /// As many watches are open as the server allows.
    #[error("the server has {0} watches open, its limit; retry later, or raise --max-watchers")]
    TooManyWatchers(usize),
    /// The session holds as many registrations as allowed.
    #[error(
        "session holds {0} registrations, the limit; free some or raise --max-registrations-per-session"
    )]
    TooManyRegistrations(usize),
    /// The store cannot be reached, or this server cannot serve yet; the
    /// message says which.
    #[error("{0}")]
    Unavailable(String),
    /// Another request changed the registration between this one's check
    /// and its write.
    #[error("service {} changed while this request was made; read it again and retry", quote(.0))]
    Changed(String),
}

/// Shorthand for results of the registry core.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
