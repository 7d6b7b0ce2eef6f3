//! Who is calling: the identity a client certificate proves, and whether a
//! call needs one. What an identity may do is the registry's
//! [policy](crate::registry::Policy).

use rustls::pki_types::CertificateDer;
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::registry::{Actor, RegistryError};

/// The identity a certificate proves: its first URI SAN, else its first
/// DNS SAN, else its Common Name.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let sans: Vec<GeneralName<'_>> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let uri = sans.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    });
    let dns = sans.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    });
    let cn = || {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
    };
    uri.or(dns).or_else(cn)
}

/// The authorization settings of a running server.
#[derive(Debug, Default)]
pub struct Auth {
    /// Client certificates are verified (`--client-ca`): writes need one.
    pub mtls: bool,
    /// Reads need one too.
    pub require_cert_for_reads: bool,
}

impl Auth {
    /// The caller of `request`. Under mTLS a write (`write`) without a
    /// verified certificate, or a read when reads need one, is refused.
    pub fn caller<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
        write: bool,
    ) -> Result<Actor, Status> {
        if !self.mtls {
            return Ok(Actor::default());
        }
        let identity = request
            .peer_certs()
            .and_then(|certs| certs.first().and_then(identity));
        match identity {
            Some(identity) => Ok(Actor { identity }),
            None if write || self.require_cert_for_reads => Err(crate::grpc::reject(
                rpc,
                crate::grpc::Caller {
                    peer: request.remote_addr(),
                    identity: "",
                },
                RegistryError::NoCertificate { rpc },
            )),
            None => Ok(Actor::default()),
        }
    }
}
