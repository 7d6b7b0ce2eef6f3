//! Making a connection to one server, and telling why one failed: no TCP
//! connection at all (nothing listens there), or TLS refused after one was
//! made (a certificate not trusted, expired or for another name, or one
//! side speaking TLS and the other not). tonic reports all of these as a
//! bare "transport error", and a refusal of the client's certificate, which
//! TLS 1.3 sends after the handshake, as "connection closed"; a user needs
//! to know which, and what to fix. So the connector here makes the TCP
//! connection and the TLS over it itself, and remembers the TLS library's
//! reason when a connection fails.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription as Alert, CertificateError as Cert, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::Status;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::{Error, Options, Tls};

/// Why a server could not be used, as a user can act on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Trouble {
    /// No TCP connection: nothing listens there, no route, or no answer
    /// within the connect timeout.
    Unreachable(String),
    /// TCP connected, then TLS (or the start of HTTP/2) failed; the text
    /// is the TLS library's reason and what to fix.
    Tls(String),
    /// A connection that worked broke (the server went away).
    Lost(String),
}

impl Trouble {
    /// The error a caller sees for this trouble with `server`.
    pub(crate) fn error(&self, server: &str) -> Error {
        match self {
            Trouble::Unreachable(reason) | Trouble::Lost(reason) => {
                Error::Unavailable(format!("{server} ({reason})"))
            }
            Trouble::Tls(reason) => Error::Tls {
                server: server.to_string(),
                reason: reason.clone(),
            },
        }
    }
}

impl std::fmt::Display for Trouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trouble::Unreachable(r) | Trouble::Tls(r) | Trouble::Lost(r) => f.write_str(r),
        }
    }
}

/// The TLS failure last seen on the connections of one channel, for a call
/// that fails with no reason of its own.
pub(crate) type Seen = Arc<Mutex<Option<Trouble>>>;

/// A failure of the connector, carrying what it found.
#[derive(Debug)]
pub(crate) struct Failed(Trouble);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for Failed {}

/// Makes the connections of a client: TCP, and TLS over it when
/// configured. One per client; [`connect`] gives each channel its own copy
/// with its own record of what went wrong.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
    seen: Seen,
}

impl Connector {
    /// The connector for `options`; fails when the TLS settings cannot
    /// work (PEM that holds no certificate, a key that does not parse).
    pub(crate) fn new(options: &Options) -> Result<Connector, Error> {
        Ok(Connector {
            tls: options.tls.as_ref().map(tls_config).transpose()?,
            timeout: options.connect_timeout,
            seen: Seen::default(),
        })
    }

    async fn open(self, uri: Uri) -> Result<TokioIo<Recorded>, Failed> {
        let unreachable = |why: String| Failed(Trouble::Unreachable(why));
        let (host, port) = host_port(&uri);
        let tcp = match tokio::time::timeout(self.timeout, TcpStream::connect((host, port))).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                let ms = self.timeout.as_millis();
                return Err(unreachable(format!("no TCP connection within {ms}ms")));
            }
        };
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| Failed(Trouble::Tls(format!("{host:?}: {e}"))))?;
                let handshake = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp);
                match tokio::time::timeout(self.timeout, handshake).await {
                    Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                    Ok(Err(e)) => return Err(Failed(tls_trouble(&e, true))),
                    Err(_) => {
                        return Err(Failed(Trouble::Tls(format!(
                            "no TLS handshake within {}ms{}",
                            self.timeout.as_millis(),
                            mismatch_hint(true)
                        ))));
                    }
                }
            }
        };
        Ok(TokioIo::new(Recorded {
            stream,
            seen: self.seen,
        }))
    }
}

impl Connector {
    /// What the server says right after a TLS handshake, unasked. A TLS 1.3
    /// server refuses a client's certificate only after the handshake, with
    /// an alert that a connection already writing HTTP/2 can lose to the
    /// reset that follows; this one writes nothing, so it gets the alert.
    /// For a connection that failed with no reason of its own.
    async fn refusal_after_handshake(&self, uri: &Uri) -> Option<Trouble> {
        use tokio::io::AsyncReadExt;
        let config = self.tls.clone()?;
        let (host, port) = host_port(uri);
        let wait = self.timeout.min(Duration::from_secs(1));
        let tcp = tokio::time::timeout(wait, TcpStream::connect((host, port)))
            .await
            .ok()?
            .ok()?;
        let name = ServerName::try_from(host.to_string()).ok()?;
        let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        let mut tls = tokio::time::timeout(wait, handshake).await.ok()?.ok()?;
        match tokio::time::timeout(wait, tls.read(&mut [0; 1])).await {
            Ok(Err(e)) => Some(tls_trouble(&e, false)).filter(|t| matches!(t, Trouble::Tls(_))),
            _ => None,
        }
    }
}

/// The host and port of `uri`; an IPv6 literal without its brackets.
fn host_port(uri: &Uri) -> (&str, u16) {
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, uri.port_u16().unwrap_or(80))
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<Recorded>;
    type Error = Failed;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Failed>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().open(uri))
    }
}

/// The rustls client configuration for `tls`: its CA as the only root,
/// its identity for mTLS, HTTP/2 by ALPN.
fn tls_config(tls: &Tls) -> Result<Arc<ClientConfig>, Error> {
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::Settings(format!("{what}: {e}"));
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &tls.ca {
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(|e| bad("the CA certificate", &e))?;
            roots.add(cert).map_err(|e| bad("the CA certificate", &e))?;
        }
        if roots.is_empty() {
            return Err(bad("the CA certificate", &"no PEM certificate in it"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", &e))?
        .with_root_certificates(roots);
    let mut config = match &tls.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("the client certificate", &e))?;
            if chain.is_empty() {
                return Err(bad("the client certificate", &"no PEM certificate in it"));
            }
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("the client key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("the client certificate and key", &e))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A connection's stream: TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection's stream that records the TLS library's reason when it
/// fails, in the channel's [`Seen`]: hyper drops the error itself and tells
/// the calls only that the connection closed.
pub(crate) struct Recorded {
    stream: Stream,
    seen: Seen,
}

impl Recorded {
    fn record<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &result
            && let trouble @ Trouble::Tls(_) = tls_trouble(e, false)
        {
            *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(trouble);
        }
        result
    }
}

impl AsyncRead for Recorded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        this.record(result)
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        this.record(result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        this.record(result)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        };
        this.record(result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How often a connection is pinged; an answer must come within half.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// The endpoint for `server`. TLS, when configured, is the connector's;
/// the requests still say `https`.
pub(crate) fn endpoint(options: &Options, server: &str) -> Result<Endpoint, Error> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::Settings(format!("{server:?} is not a host:port address: {e}"))
    };
    // HTTP/2 pings notice a path gone silent on a connection with only a
    // watch or a waiting get on it, which a session's pongs do not cover.
    let endpoint = Endpoint::from_shared(format!("http://{server}"))
        .map_err(|e| bad(&e))?
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE / 2)
        .keep_alive_while_idle(true);
    if options.tls.is_none() {
        return Ok(endpoint);
    }
    let origin: Uri = format!("https://{server}").parse().map_err(|e| bad(&e))?;
    Ok(endpoint.origin(origin))
}

/// Connects to `server` and makes one call on the connection, `probe`,
/// since with TLS 1.3 a server's refusal of the client's certificate
/// arrives only after the handshake. Any answer of the server's, even a
/// refusal, shows the connection works: the probe's result is returned
/// with the channel and its record of TLS failures.
pub(crate) async fn connect<T, F>(
    connector: &Connector,
    options: &Options,
    server: &str,
    probe: impl FnOnce(Channel) -> F,
) -> Result<(Channel, Seen, Result<T, Status>), Trouble>
where
    F: Future<Output = Result<T, Status>>,
{
    let tls = options.tls.is_some();
    let endpoint = endpoint(options, server).map_err(|e| Trouble::Unreachable(e.to_string()))?;
    let connector = Connector {
        seen: Seen::default(),
        ..connector.clone()
    };
    let seen = connector.seen.clone();
    // A failure is either explained (the connector's finding, the TLS
    // library's reason) or, for now, only the text of the errors.
    let uri = endpoint.uri().clone();
    let attempt = async {
        let channel = endpoint
            .connect_with_connector(connector.clone())
            .await
            .map_err(|e| reason(&e, &seen).ok_or_else(|| chain_text(&e)))?;
        match probe(channel.clone()).await {
            Err(status) => match StdError::source(&status) {
                Some(e) => Err(reason(e, &seen).ok_or_else(|| chain_text(e))),
                None => Ok((channel, seen.clone(), Err(status))),
            },
            answer => Ok((channel, seen.clone(), answer)),
        }
    };
    // TCP and TLS have their own timeouts; this bounds the HTTP/2 start
    // and the probe, for a server that accepts and then says nothing.
    let limit = options.connect_timeout * 2;
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(Ok(explained))) => Err(explained),
        Ok(Err(Err(text))) => match connector.refusal_after_handshake(&uri).await {
            Some(refused) => Err(refused),
            None => Err(unexplained(&text, tls)),
        },
        Err(_) => Err(Trouble::Tls(format!(
            "the server accepted the connection but did not answer gRPC within {}ms{}",
            limit.as_millis(),
            mismatch_hint(tls)
        ))),
    }
}

/// What a call's failure says of the connection: `None` when the server
/// answered (the status is its own), else the trouble with the connection.
/// `connecting`: the connection has not worked yet, so a failure with no
/// reason of its own is still one of its start.
pub(crate) fn status_trouble(
    status: &Status,
    seen: &Seen,
    tls: bool,
    connecting: bool,
) -> Option<Trouble> {
    // A status the server sent carries no source; tonic's own, made from a
    // transport error, does.
    let source = StdError::source(status)?;
    Some(diagnose(source, seen, tls, connecting))
}

/// Classifies a transport error by what its chain of causes holds, and
/// else by the TLS failure the connection recorded.
fn diagnose(error: &(dyn StdError + 'static), seen: &Seen, tls: bool, connecting: bool) -> Trouble {
    match reason(error, seen) {
        Some(trouble) => trouble,
        None if connecting => unexplained(&chain_text(error), tls),
        None => Trouble::Lost(chain_text(error)),
    }
}

/// The reason a transport error gives: the connector's finding or the TLS
/// library's reason in its chain, or the TLS failure its connection
/// recorded.
fn reason(error: &(dyn StdError + 'static), seen: &Seen) -> Option<Trouble> {
    let causes = causes(error);
    if let Some(Failed(trouble)) = causes.iter().find_map(|e| e.downcast_ref::<Failed>()) {
        return Some(trouble.clone());
    }
    if let Some(refused) = causes
        .iter()
        .find_map(|e| e.downcast_ref::<rustls::Error>())
    {
        return Some(Trouble::Tls(explain(refused)));
    }
    seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// An error and its causes, as one line.
fn chain_text(error: &(dyn StdError + 'static)) -> String {
    let mut texts: Vec<String> = causes(error).iter().map(ToString::to_string).collect();
    // hyper's and h2's errors repeat their causes' text.
    texts.dedup_by(|later, earlier| earlier.ends_with(later.as_str()));
    texts.join(": ")
}

/// A connection that failed after TCP with no reason of its own (`text`
/// says what was seen): most likely one side speaks TLS and the other not.
fn unexplained(text: &str, tls: bool) -> Trouble {
    let fix = mismatch_hint(tls);
    Trouble::Tls(if tls {
        format!("the connection failed after TCP ({text}){fix}")
    } else {
        format!("the server did not answer plaintext HTTP/2 ({text}){fix}")
    })
}

/// The trouble an I/O error of a TLS stream (or its handshake) stands
/// for: the TLS library's reason when it has one. `handshake`: the error
/// ended the handshake, so one without a TLS reason is still a TLS failure.
fn tls_trouble(e: &io::Error, handshake: bool) -> Trouble {
    let inner = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    match inner {
        Some(refused) => Trouble::Tls(explain(refused)),
        None if handshake => Trouble::Tls(format!("{e}{}", mismatch_hint(true))),
        None => Trouble::Lost(e.to_string()),
    }
}

/// Every error in `error`'s chain, including those an `io::Error` wraps
/// (which its `source` skips).
fn causes<'a>(error: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut all = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        all.push(e);
        next = match e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    all
}

/// What a failed start of a connection after TCP most likely means.
fn mismatch_hint(tls: bool) -> &'static str {
    if tls {
        "; if the server does not serve TLS (seaportd without --tls-cert), connect without a CA (drop --ca)"
    } else {
        "; if the server serves TLS (seaportd --tls-cert), give the CA that signed its certificate (--ca)"
    }
}

/// The TLS library's reason, and what to fix.
fn explain(e: &rustls::Error) -> String {
    use rustls::Error as E;
    let fix = match e {
        E::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
            "the server's certificate is not signed by the CA this client trusts; give the CA that signed it (--ca)"
        }
        E::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            "the server's certificate has expired; give seaportd a new one (seaportctl certs init, then SIGHUP)"
        }
        E::InvalidCertificate(Cert::NotValidYet | Cert::NotValidYetContext { .. }) => {
            "the server's certificate is not valid yet; check the clocks"
        }
        E::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            "the server's certificate is not for the address connected to; connect by a name it lists, or make one that lists it (seaportctl certs init --server-name)"
        }
        E::InvalidCertificate(_) => "the server's certificate cannot be used",
        E::AlertReceived(Alert::CertificateExpired) => {
            "the server says this client's certificate has expired; get a new one (--cert and --key)"
        }
        E::AlertReceived(Alert::CertificateRequired) => {
            "the server requires a client certificate; give one (--cert and --key)"
        }
        E::AlertReceived(
            Alert::UnknownCA
            | Alert::BadCertificate
            | Alert::CertificateUnknown
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::AccessDenied
            | Alert::DecryptError,
        ) => {
            "the server refused this client's certificate; give one signed by the server's client CA (--cert and --key)"
        }
        E::InvalidMessage(_) => {
            "the server does not answer in TLS; if it serves plaintext (seaportd without --tls-cert), connect without a CA (drop --ca)"
        }
        _ => "",
    };
    if fix.is_empty() {
        e.to_string()
    } else {
        format!("{e}; {fix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_reason_found_inside_an_io_error_is_explained() {
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(Cert::UnknownIssuer),
        );
        match diagnose(&io, &Seen::default(), true, true) {
            Trouble::Tls(reason) => {
                assert!(reason.contains("UnknownIssuer"), "{reason}");
                assert!(reason.contains("(--ca)"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_connectors_finding_wins_however_wrapped() {
        let found = Trouble::Unreachable("connection refused".into());
        let inner: Box<dyn StdError + Send + Sync> = Box::new(Failed(found.clone()));
        let status = Status::from_error(inner);
        assert_eq!(
            status_trouble(&status, &Seen::default(), false, false),
            Some(found)
        );
        let answered = Status::permission_denied("not yours");
        assert_eq!(
            status_trouble(&answered, &Seen::default(), false, false),
            None
        );
    }

    #[test]
    fn a_bare_connection_closed_is_explained_by_what_the_stream_saw() {
        let seen = Seen::default();
        let alert = Trouble::Tls(explain(&rustls::Error::AlertReceived(Alert::UnknownCA)));
        *seen.lock().unwrap() = Some(alert.clone());
        let closed: Box<dyn StdError + Send + Sync> = "connection closed".into();
        let status = Status::from_error(closed);
        assert_eq!(status_trouble(&status, &seen, true, false), Some(alert));
    }
}
