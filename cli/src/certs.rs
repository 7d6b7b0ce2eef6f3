//! `seaportctl certs init`: a development CA, a server certificate and
//! client certificates, so mTLS can be tried in a minute (the role
//! `rsa-json` plays in the original seaport's README).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

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

/// How long the CA is valid.
const CA_DAYS: i64 = 3650;

/// Server and client certificates are valid for this many days unless told.
pub(crate) const DEFAULT_DAYS: u32 = 365;

/// Validity from an hour ago (so a clock a little behind still accepts
/// it) to `days` from now.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

/// A leaf certificate's parameters: the usages of a TLS server or client
/// with an ECDSA key (digital signature only), valid for `days`.
fn leaf(
    names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    days: u32,
) -> Result<CertificateParams, Failure> {
    let mut params = CertificateParams::new(names).map_err(|e| failure("names", e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    validity(&mut params, i64::from(days));
    Ok(params)
}

/// Writes the CA (valid ten years), a server certificate for localhost,
/// 127.0.0.1, ::1 and `server_names`, and one client certificate per name
/// in `clients` (Common Name = the identity), each valid `days`. Refuses
/// to overwrite.
pub(crate) fn init(
    dir: &Path,
    server_names: &[String],
    clients: &[String],
    days: u32,
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
    validity(&mut ca_params, CA_DAYS);
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
    let server = leaf(sans, "seaportd", ExtendedKeyUsagePurpose::ServerAuth, days)?;
    let key = KeyPair::generate().map_err(|e| failure("server key", e))?;
    let cert = server
        .signed_by(&key, &ca)
        .map_err(|e| failure("server certificate", e))?;
    emit("server", cert.pem(), key.serialize_pem())?;

    for client in clients {
        let params = leaf(
            Vec::new(),
            client,
            ExtendedKeyUsagePurpose::ClientAuth,
            days,
        )?;
        let key = KeyPair::generate().map_err(|e| failure("client key", e))?;
        let cert = params
            .signed_by(&key, &ca)
            .map_err(|e| failure(&format!("client {client}"), e))?;
        emit(&format!("client-{client}"), cert.pem(), key.serialize_pem())?;
    }
    Ok(written)
}
