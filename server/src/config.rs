//! Server configuration, as `run` takes it. The binary builds it from flags.

use std::time::Duration;

use std::path::PathBuf;

use crate::registry::Limits;
use crate::tls::TlsFiles;

/// Everything `run` needs besides the listener.
#[derive(Clone, Debug)]
pub struct Config {
    /// Limits and tunables of the registry core.
    pub limits: Limits,
    /// Host the server registers itself under; default: the listen address
    /// (127.0.0.1 when it listens on every address).
    pub advertise_host: Option<String>,
    /// How long to keep serving after reporting NOT_SERVING at shutdown.
    pub drain_delay: Duration,
    /// Longest wait for calls in flight once the server stops accepting.
    pub shutdown_grace: Duration,
    /// HTTP/2 streams one connection may hold (watches are streams).
    pub max_concurrent_streams: u32,
    /// Largest request message decoded, in bytes.
    pub max_message_size: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Watch streams open at once, over all connections.
    pub max_watchers: usize,
    /// How long a new connection has for its TLS handshake and HTTP/2
    /// preface.
    pub handshake_timeout: Duration,
    /// How long a connection with no open stream is kept.
    pub idle_timeout: Duration,
    /// TLS (and, with a client CA, mTLS) for the main port.
    pub tls: Option<TlsFiles>,
    /// Policy file: who may register which names, who is admin.
    pub policy: Option<PathBuf>,
    /// Under mTLS, refuse reads without a client certificate too.
    pub require_client_cert_for_reads: bool,
    /// Where the registry's truth lives.
    pub store: StoreConfig,
}

/// Where the registry's truth lives.
#[derive(Clone, Debug, Default)]
pub enum StoreConfig {
    /// In this process: the embedded default.
    #[default]
    Memory,
    /// In etcd, shared by every seaportd on it.
    Etcd(EtcdConfig),
}

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs of its members.
    pub endpoints: Vec<String>,
    /// Prefix of every key Seaport writes.
    pub prefix: String,
    /// CA of the members' certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate.
    pub cert: Option<PathBuf>,
    /// Key of the client certificate.
    pub key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            advertise_host: None,
            drain_delay: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            max_concurrent_streams: 16_384,
            max_message_size: 1024 * 1024,
            max_connections: 10_000,
            max_watchers: 100_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            tls: None,
            policy: None,
            require_client_cert_for_reads: false,
            store: StoreConfig::Memory,
        }
    }
}
