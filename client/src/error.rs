//! The one error type of the client crate.

use tonic::Code;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the call; the code and message are the server's.
    #[error("{message} ({code:?})")]
    Status {
        /// The gRPC status code.
        code: Code,
        /// The server's message, which says what to fix.
        message: String,
    },
    /// A connection could not be set up.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The client's settings cannot work: an address that is not
    /// `host:port`, or TLS files that do not hold what they should.
    #[error("unusable settings: {0}")]
    Settings(String),
    /// A TCP connection was made but TLS failed: a certificate the other
    /// side does not trust, an expired one, a name the server's certificate
    /// does not list, or one side speaking TLS and the other not. The
    /// reason is the TLS library's, with what to fix.
    #[error("TLS with {server} failed: {reason}")]
    Tls {
        /// The server's address.
        server: String,
        /// Why, and what to fix.
        reason: String,
    },
    /// A role or pattern is malformed (caught before sending).
    #[error(transparent)]
    Role(#[from] seaport::RoleError),
    /// No TCP connection could be made to any configured or learned server
    /// in time; the text lists each address with the reason.
    #[error("no Seaport server reachable at {0}; is seaportd running there?")]
    Unavailable(String),
    /// The server sent a record that does not make a valid service.
    #[error(transparent)]
    Convert(#[from] seaport::ConvertError),
    /// `bind` could not listen on any port the registry assigned.
    #[error("could not listen on a registry-assigned port after {attempts} attempts: {source}")]
    Bind {
        /// How many ports were tried.
        attempts: usize,
        /// The last bind error.
        source: std::io::Error,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

impl Error {
    /// The gRPC code, when the server answered with one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
