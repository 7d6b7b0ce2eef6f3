//! `seaportctl certs init`: a development CA, a server certificate and
//! client certificates, so mTLS can be tried in a minute (the role
//! `rsa-json` plays in the original seaport's README).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::Failure;

fn failure(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::other(format!("{what}: {e}"))
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| failure(&format!("cannot write {}", path.display()), e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| failure(&path.display().to_string(), e))
}

/// Writes the CA, a server certificate for localhost, 127.0.0.1, ::1 and
/// `server_names`, and one client certificate per name in `clients`
/// (Common Name = the identity). Refuses to overwrite.
pub(crate) fn init(
    dir: &Path,
    server_names: &[String],
    clients: &[String],
) -> Result<Vec<PathBuf>, Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| failure(&format!("cannot create {}", dir.display()), e))?;
    if dir.join("ca.pem").exists() {
        return Err(Failure {
            code: 2,
            message: format!(
                "{} already holds a CA; pick an empty directory",
                dir.display()
            ),
        });
    }
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| failure("CA", e))?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Seaport development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(|e| failure("CA key", e))?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| failure("CA", e))?;

    let mut written = Vec::new();
    let mut emit = |name: &str, cert: String, key: String| -> Result<(), Failure> {
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        write(&cert_path, &cert, false)?;
        write(&key_path, &key, true)?;
        written.extend([cert_path, key_path]);
        Ok(())
    };
    emit("ca", ca.pem(), ca_key_pem)?;

    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    sans.extend(server_names.iter().cloned());
    let mut server = CertificateParams::new(sans).map_err(|e| failure("server names", e))?;
    server
        .distinguished_name
        .push(DnType::CommonName, "seaportd");
    let key = KeyPair::generate().map_err(|e| failure("server key", e))?;
    let cert = server
        .signed_by(&key, &ca)
        .map_err(|e| failure("server certificate", e))?;
    emit("server", cert.pem(), key.serialize_pem())?;

    for client in clients {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| failure("client", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, client.as_str());
        let key = KeyPair::generate().map_err(|e| failure("client key", e))?;
        let cert = params
            .signed_by(&key, &ca)
            .map_err(|e| failure(&format!("client {client}"), e))?;
        emit(&format!("client-{client}"), cert.pem(), key.serialize_pem())?;
    }
    Ok(written)
}
