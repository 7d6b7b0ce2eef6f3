//! TLS to the gateway's clients, from the same kind of files as
//! seaportd's --tls-cert, --tls-key and --client-ca: rustls with the ring
//! provider only. With a client CA, every client must present a
//! certificate it signs.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};

use crate::{EXIT_USAGE, Failure};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn unusable(flag: &str, path: &Path, reason: impl std::fmt::Display) -> Failure {
    Failure {
        code: EXIT_USAGE,
        message: format!("{flag} {}: {reason}", path.display()),
    }
}

fn certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unusable(flag, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(flag, path, e))?;
    if certs.is_empty() {
        return Err(unusable(flag, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The server config for --tls-cert, --tls-key and --client-ca; any error
/// names its flag and file. Offers HTTP/2 and HTTP/1.1 by ALPN.
pub(crate) fn load(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, Failure> {
    let chain = certs("--tls-cert", cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| unusable("--tls-key", key, e))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable("--tls-cert", cert, e))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("--client-ca", ca)? {
                roots.add(c).map_err(|e| unusable("--client-ca", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| unusable("--client-ca", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| unusable("--tls-key", key, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
