//! TLS for the main port: rustls with the ring provider, client
//! certificates verified against `--client-ca` when given (optional at the
//! handshake, so reads can stay open; `auth` decides per call). The config
//! is behind a lock so a reload takes effect for new connections while
//! open ones, and the sessions on them, carry on.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio_rustls::TlsAcceptor;

/// Where the server's certificate, key and client CA live.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM bundle of CAs that sign client certificates (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// A TLS file that could not be used; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TlsError {
    path: String,
    reason: String,
}

fn tls_error(path: &std::path::Path, reason: impl ToString) -> TlsError {
    TlsError {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The one crypto provider (ring); see DESIGN's note on providers.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

impl TlsFiles {
    /// Reads the files into a server config; any error names the file.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| tls_error(&self.key, e))?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(&self.cert, e))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certs(ca)? {
                    roots.add(cert).map_err(|e| tls_error(ca, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| tls_error(ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| tls_error(&self.key, e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The TLS config in force; replaced whole on reload.
pub type SharedTlsConfig = Arc<RwLock<Arc<ServerConfig>>>;

/// An acceptor with the TLS config in force now, for one new connection.
pub(crate) fn acceptor(config: &SharedTlsConfig) -> TlsAcceptor {
    TlsAcceptor::from(config.read().unwrap_or_else(|e| e.into_inner()).clone())
}
