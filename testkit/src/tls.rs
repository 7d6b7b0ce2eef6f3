//! mTLS for tests: real certificates in a temporary directory, laid out as
//! `seaportctl certs init` lays them out (`ca.pem`, `server.pem`,
//! `client-NAME.pem` and their `-key.pem`), a server configuration that
//! uses them, and raw gRPC clients that present them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use seaport::pb::registry_client::RegistryClient;
use seaport_server::Config;
use seaport_server::tls::TlsFiles;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A directory of its own under the system's temporary directory,
/// removed with everything in it when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `seaport-TAG-PID-N`.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "seaport-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` in it; the file's path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The file `name` in `dir`.
pub fn pem(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
}

/// Client `who`'s certificate and key in `dir`.
pub fn identity_pem(dir: &Path, who: &str) -> (Vec<u8>, Vec<u8>) {
    (
        pem(dir, &format!("client-{who}.pem")),
        pem(dir, &format!("client-{who}-key.pem")),
    )
}

/// A leaf certificate's parameters: CN `name`, for `usage`.
fn leaf(sans: Vec<String>, name: &str, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::new(sans).expect("valid names");
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params
}

/// Writes `name.pem` and `name-key.pem` into `dir`.
fn write_pair(dir: &Path, name: &str, cert: String, key: String) {
    std::fs::write(dir.join(format!("{name}.pem")), cert).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), key).unwrap();
}

/// Writes into `dir` a CA, a server certificate for localhost, 127.0.0.1
/// and ::1, and a client certificate for each of `clients` (its Common
/// Name is the identity), as `seaportctl certs init DIR --client ...` does.
pub fn init_certs(dir: &Path, clients: &[&str]) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "Seaport test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    write_pair(dir, "ca", issuer.pem(), ca_key_pem);

    let sans = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let server = leaf(sans, "seaportd", ExtendedKeyUsagePurpose::ServerAuth);
    let key = KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &issuer).unwrap().pem();
    write_pair(dir, "server", cert, key.serialize_pem());
    for who in clients {
        let client = leaf(Vec::new(), who, ExtendedKeyUsagePurpose::ClientAuth);
        let key = KeyPair::generate().unwrap();
        let cert = client.signed_by(&key, &issuer).unwrap().pem();
        write_pair(dir, &format!("client-{who}"), cert, key.serialize_pem());
    }
}

/// Writes an expired client certificate for `who` (valid in 2020 only),
/// signed by the CA in `dir`.
pub fn expired_client(dir: &Path, who: &str) {
    let text = |name| String::from_utf8(pem(dir, name)).unwrap();
    let ca_key = KeyPair::from_pem(&text("ca-key.pem")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&text("ca.pem"), ca_key).unwrap();
    let mut params = leaf(Vec::new(), who, ExtendedKeyUsagePurpose::ClientAuth);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap().pem();
    write_pair(dir, &format!("client-{who}"), cert, key.serialize_pem());
}

/// [`crate::test_config`] serving TLS with `dir`'s server certificate and
/// demanding client certificates of `dir`'s CA for writes.
pub fn tls_config(dir: &Path) -> Config {
    let mut config = Config {
        tls: Some(TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            client_ca: Some(dir.join("ca.pem")),
        }),
        ..crate::test_config()
    };
    // Clients ping every second, so an admin's free reaches its owner
    // (with the next pong) well within the tests' patience.
    config.limits.default_ttl = Duration::from_secs(3);
    config
}

/// A raw gRPC client of the TLS server at `addr`, trusting the CA in
/// `ca_dir`, presenting client certificate `who` (in its directory) if
/// given. The error is the handshake's, when it fails.
pub async fn tls_client(
    addr: SocketAddr,
    ca_dir: &Path,
    who: Option<(&Path, &str)>,
) -> Result<RegistryClient<Channel>, tonic::transport::Error> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem(ca_dir, "ca.pem")));
    if let Some((dir, name)) = who {
        let (cert, key) = identity_pem(dir, name);
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(RegistryClient::new(channel))
}

/// Whether a Query over a fresh TLS connection as `who` succeeds; the
/// failure as text if not.
pub async fn try_query(
    addr: SocketAddr,
    ca_dir: &Path,
    who: Option<(&Path, &str)>,
) -> Result<(), String> {
    let mut client = tls_client(addr, ca_dir, who)
        .await
        .map_err(|e| format!("{e:?}"))?;
    client
        .query(seaport::pb::QueryRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}
