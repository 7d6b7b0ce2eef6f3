//! The one mapping from registry errors to gRPC statuses.

use tonic::{Code, Status};

use crate::registry::RegistryError;

/// The gRPC code for a registry error.
fn code(e: &RegistryError) -> Code {
    use RegistryError::*;
    match e {
        Role(_) | Invalid(_) => Code::InvalidArgument,
        UnknownSession(_) | UnknownService(_) => Code::NotFound,
        PortTaken { .. } | IdTaken(_) | IdConflict { .. } => Code::AlreadyExists,
        NotOwner { .. } | NotSessionOwner { .. } => Code::PermissionDenied,
        PortsExhausted { .. } | TooManyRegistrations(_) => Code::ResourceExhausted,
    }
}

/// Logs a rejected request (one line each) and turns it into a status.
pub(crate) fn reject(rpc: &'static str, e: RegistryError) -> Status {
    let code = code(&e);
    tracing::info!(rpc, ?code, "rejected: {e}");
    Status::new(code, e.to_string())
}

/// A malformed request that never reached the core.
pub(crate) fn invalid(rpc: &'static str, message: impl Into<String>) -> Status {
    let message = message.into();
    tracing::info!(rpc, code = ?Code::InvalidArgument, "rejected: {message}");
    Status::invalid_argument(message)
}
