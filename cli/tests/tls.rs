//! mTLS and authorization against a real seaportd, with real certificates
//! made by `seaportctl certs init` (and rcgen for an expired one).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use seaport::pb::{self, registry_client::RegistryClient};
use seaport_client::{ClientEvent, RegisterOptions, SeaportClient};
use seaport_server::tls::TlsFiles;
use seaport_testkit::{PATIENCE, TestServer, assert_status, test_config};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!(
        "seaport-tls-{tag}-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    Dir(dir)
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn seaportctl(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_seaportctl"))
        .args(args)
        .output();
    tokio::time::timeout(PATIENCE, run).await.unwrap().unwrap()
}

/// seaportctl's flags to reach `server` as identity `who` of `dir`.
fn as_identity(server: SocketAddr, dir: &Path, who: &str) -> Vec<String> {
    let d = dir.display();
    vec![
        "--server".into(),
        server.to_string(),
        "--ca".into(),
        format!("{d}/ca.pem"),
        "--cert".into(),
        format!("{d}/client-{who}.pem"),
        "--key".into(),
        format!("{d}/client-{who}-key.pem"),
    ]
}

/// seaportctl as identity `who`, with `args` after the connection flags.
async fn seaportctl_as(server: SocketAddr, dir: &Path, who: &str, args: &[&str]) -> Output {
    let mut all = as_identity(server, dir, who);
    all.extend(args.iter().map(|a| a.to_string()));
    seaportctl(&all.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// CA with clients alice, bob and ops in `dir`.
async fn certs(dir: &Path, clients: &[&str]) {
    let mut args = vec!["certs", "init", dir.to_str().unwrap()];
    for c in clients {
        args.extend(["--client", c]);
    }
    let out = seaportctl(&args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("--client-ca"));
}

/// A TLS seaportd and its plaintext admin port; dropping it stops it.
struct Server {
    addr: SocketAddr,
    admin: SocketAddr,
    _server: TestServer,
}

async fn server(
    dir: &Path,
    client_ca: PathBuf,
    policy: Option<&str>,
    reads_need_cert: bool,
) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    server_on(listener, dir, client_ca, policy, reads_need_cert).await
}

/// `server`, on a listener of the caller's (for a restart on an address).
async fn server_on(
    listener: tokio::net::TcpListener,
    dir: &Path,
    client_ca: PathBuf,
    policy: Option<&str>,
    reads_need_cert: bool,
) -> Server {
    let policy = policy.map(|text| {
        let path = dir.join("policy.toml");
        std::fs::write(&path, text).unwrap();
        path
    });
    let mut config = seaport_server::Config {
        tls: Some(TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            client_ca: Some(client_ca),
        }),
        policy,
        require_client_cert_for_reads: reads_need_cert,
        ..test_config()
    };
    // Clients ping every second, so an admin's free reaches its owner
    // (with the next pong) well within the tests' patience.
    config.limits.default_ttl = Duration::from_secs(3);
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let server = TestServer::serve(listener, Some(admin), config);
    Server {
        addr: server.addr,
        admin: admin_addr,
        _server: server,
    }
}

fn pem(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

/// A raw gRPC client, with the client certificate `who` from `dir` if any.
async fn raw(
    addr: SocketAddr,
    ca_dir: &Path,
    who: Option<(&Path, &str)>,
) -> Result<RegistryClient<Channel>, tonic::transport::Error> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem(ca_dir, "ca.pem")));
    if let Some((dir, name)) = who {
        tls = tls.identity(Identity::from_pem(
            pem(dir, &format!("client-{name}.pem")),
            pem(dir, &format!("client-{name}-key.pem")),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(RegistryClient::new(channel))
}

async fn client(addr: SocketAddr, dir: &Path, name: &str) -> SeaportClient {
    SeaportClient::builder()
        .endpoint(addr.to_string())
        .ca_pem(pem(dir, "ca.pem"))
        .identity_pem(
            pem(dir, &format!("client-{name}.pem")),
            pem(dir, &format!("client-{name}-key.pem")),
        )
        .connect()
        .await
        .unwrap()
}

/// A Query over a fresh TLS connection as `who`; any failure as text.
async fn try_query(
    addr: SocketAddr,
    ca_dir: &Path,
    who: Option<(&Path, &str)>,
) -> Result<(), String> {
    let mut c = raw(addr, ca_dir, who).await.map_err(|e| e.to_string())?;
    c.query(query(""))
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

fn query(pattern: &str) -> pb::QueryRequest {
    pb::QueryRequest {
        pattern: pattern.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn without_a_certificate_writes_are_refused_and_reads_allowed() {
    let dir = tempdir("nocert");
    certs(&dir.0, &["alice"]).await;
    let server = server(&dir.0, dir.0.join("ca.pem"), None, false).await;
    let mut anon = raw(server.addr, &dir.0, None).await.unwrap();
    let register = anon
        .register(pb::RegisterRequest {
            session_id: "x".into(),
            role: "web".into(),
            ..Default::default()
        })
        .await;
    assert_status(
        register,
        Code::Unauthenticated,
        "Register needs a client certificate",
    );
    assert!(
        anon.query(query("")).await.is_ok(),
        "reads need no certificate"
    );

    let alice = client(server.addr, &dir.0, "alice").await;
    let web = alice
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    assert_eq!(
        &*web.service().owner,
        "alice",
        "the certificate's identity owns it"
    );
    let listed = anon
        .query(query("web"))
        .await
        .unwrap()
        .into_inner()
        .services;
    assert_eq!(listed[0].owner, "alice");
}

#[tokio::test]
async fn reads_can_require_a_certificate_too() {
    let dir = tempdir("reads");
    certs(&dir.0, &["alice"]).await;
    let server = server(&dir.0, dir.0.join("ca.pem"), None, true).await;
    let mut anon = raw(server.addr, &dir.0, None).await.unwrap();
    assert_status(
        anon.query(query("")).await,
        Code::Unauthenticated,
        "Query needs a client certificate",
    );
    let mut alice = raw(server.addr, &dir.0, Some((&dir.0, "alice")))
        .await
        .unwrap();
    assert!(alice.query(query("")).await.is_ok());
}

/// An expired client certificate for `who`, signed by `dir`'s CA.
fn expired_client(dir: &Path, who: &str) {
    let ca_key =
        rcgen::KeyPair::from_pem(&String::from_utf8(pem(dir, "ca-key.pem")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&String::from_utf8(pem(dir, "ca.pem")).unwrap(), ca_key)
            .unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, who);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(
        dir.join(format!("client-{who}.pem")),
        params.signed_by(&key, &issuer).unwrap().pem(),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("client-{who}-key.pem")),
        key.serialize_pem(),
    )
    .unwrap();
}

#[tokio::test]
async fn a_certificate_from_another_ca_or_expired_fails_the_handshake() {
    let dir = tempdir("ca");
    let other = tempdir("other");
    certs(&dir.0, &["alice"]).await;
    certs(&other.0, &["mallory"]).await;
    expired_client(&dir.0, "late");

    let server = server(&dir.0, dir.0.join("ca.pem"), None, false).await;
    for (certs_dir, who) in [(&other.0, "mallory"), (&dir.0, "late")] {
        let refused = try_query(server.addr, &dir.0, Some((certs_dir, who)))
            .await
            .expect_err("the handshake must fail");
        assert!(!refused.is_empty(), "{who}: {refused}");
    }
    let mut alice = raw(server.addr, &dir.0, Some((&dir.0, "alice")))
        .await
        .unwrap();
    assert!(
        alice.query(query("")).await.is_ok(),
        "a certificate of the right CA works"
    );
}

#[tokio::test]
async fn the_policy_decides_who_registers_what_and_who_frees_anything() {
    let dir = tempdir("policy");
    certs(&dir.0, &["alice", "bob", "ops"]).await;
    let policy = "admins = [\"ops\"]\n[[allow]]\nidentities = [\"alice\", \"bob\"]\nnames = [\"web\", \"web-*\"]\n";
    let server = server(&dir.0, dir.0.join("ca.pem"), Some(policy), false).await;
    let alice = client(server.addr, &dir.0, "alice").await;
    let bob = client(server.addr, &dir.0, "bob").await;

    let denied = alice
        .register("db@1.0.0", RegisterOptions::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Some(Code::PermissionDenied));
    assert!(
        denied
            .to_string()
            .contains("identity \"alice\" may not register \"db\""),
        "{denied}"
    );

    let web = alice
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let by_bob = bob.free(web.id()).await.unwrap_err();
    assert_eq!(by_bob.code(), Some(Code::PermissionDenied));
    assert!(
        by_bob.to_string().contains("belongs to identity \"alice\""),
        "{by_bob}"
    );
    let update_by_bob = bob
        .update(web.id(), [("x".to_string(), "y".to_string())].into(), true)
        .await
        .unwrap_err();
    assert_eq!(update_by_bob.code(), Some(Code::PermissionDenied));

    // The owning identity may update it from another session: here seaportctl's.
    let out = seaportctl_as(
        server.addr,
        &dir.0,
        "alice",
        &["update", web.id(), "--meta", "zone=b"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("zone=b"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The admin frees it, here through seaportctl.
    let out = seaportctl_as(server.addr, &dir.0, "ops", &["free", web.id()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("freed web@1.0.0"));
    assert!(bob.query("web").await.unwrap().is_empty());
}

#[tokio::test]
async fn sighup_rotates_the_client_ca_without_dropping_sessions() {
    let dir = tempdir("rotate");
    let next = tempdir("next");
    certs(&dir.0, &["alice"]).await;
    certs(&next.0, &["carol"]).await;
    let bundle = dir.0.join("clients-ca.pem");
    std::fs::copy(dir.0.join("ca.pem"), &bundle).unwrap();
    let server = server(&dir.0, bundle.clone(), None, false).await;

    let alice = client(server.addr, &dir.0, "alice").await;
    let mut events = alice.events();
    alice
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let carol = Some((next.0.as_path(), "carol"));
    assert!(
        try_query(server.addr, &dir.0, carol).await.is_err(),
        "carol's CA is not trusted yet"
    );

    std::fs::write(&bundle, pem(&next.0, "ca.pem")).unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if try_query(server.addr, &dir.0, carol).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new CA never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Alice's session, on its connection from before, lives on.
    alice
        .register("web@1.0.1", RegisterOptions::default())
        .await
        .unwrap();
    assert_eq!(alice.query("web").await.unwrap().len(), 2);
    let blips = std::iter::from_fn(|| events.next().now_or_never_event()).count();
    assert_eq!(blips, 0, "no disconnect, no session lost");
}

/// Events already delivered, without waiting.
trait NowOrNever {
    fn now_or_never_event(self) -> Option<ClientEvent>;
}

impl<F: std::future::Future<Output = Option<ClientEvent>>> NowOrNever for F {
    fn now_or_never_event(self) -> Option<ClientEvent> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::pin!(self).poll(&mut cx) {
            std::task::Poll::Ready(e) => e,
            std::task::Poll::Pending => None,
        }
    }
}

#[tokio::test]
async fn the_admin_port_answers_health_without_a_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let dir = tempdir("admin");
    certs(&dir.0, &[]).await;
    let server = server(&dir.0, dir.0.join("ca.pem"), None, true).await;
    let channel = Endpoint::from_shared(format!("http://{}", server.admin))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(status.into_inner().status(), ServingStatus::Serving);

    for path in ["/healthz", "/readyz"] {
        let mut http = tokio::net::TcpStream::connect(server.admin).await.unwrap();
        http.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut reply = String::new();
        http.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("SERVING\n"), "{reply}");
    }
}

/// What a certificate says of its validity and use.
struct Made {
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    /// Key usages: digital signature, certificate signing.
    signs: bool,
    signs_certs: bool,
    server_auth: bool,
    client_auth: bool,
}

/// What `pem_file` in `dir` says.
fn made(dir: &Path, pem_file: &str) -> Made {
    let text = pem(dir, pem_file);
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
    let cert = pem.parse_x509().unwrap();
    let usage = cert.key_usage().unwrap().map(|e| *e.value);
    let extended = cert.extended_key_usage().unwrap().map(|e| e.value.clone());
    Made {
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        signs: usage.is_some_and(|u| u.digital_signature()),
        signs_certs: usage.is_some_and(|u| u.key_cert_sign()),
        server_auth: extended.as_ref().is_some_and(|e| e.server_auth),
        client_auth: extended.as_ref().is_some_and(|e| e.client_auth),
    }
}

#[tokio::test]
async fn certs_init_makes_short_lived_certificates_with_their_usages() {
    let dir = tempdir("validity");
    certs(&dir.0, &["alice"]).await;
    let now = time::OffsetDateTime::now_utc();
    let days = |m: &Made| (m.not_after - now).whole_days();
    let ca = made(&dir.0, "ca.pem");
    let server = made(&dir.0, "server.pem");
    let alice = made(&dir.0, "client-alice.pem");
    for m in [&ca, &server, &alice] {
        let started = now - m.not_before;
        assert!(
            started >= time::Duration::minutes(59) && started <= time::Duration::minutes(61),
            "valid from an hour ago: {:?}",
            m.not_before
        );
    }
    assert!((3649..=3650).contains(&days(&ca)), "CA: {} days", days(&ca));
    assert!(
        (364..=365).contains(&days(&server)),
        "{} days",
        days(&server)
    );
    assert!((364..=365).contains(&days(&alice)), "{} days", days(&alice));
    assert!(ca.signs_certs);
    assert!(server.signs && !server.signs_certs && server.server_auth && !server.client_auth);
    assert!(alice.signs && !alice.signs_certs && alice.client_auth && !alice.server_auth);

    let short = tempdir("days");
    let out = seaportctl(&["certs", "init", short.0.to_str().unwrap(), "--days", "7"]).await;
    assert!(out.status.success());
    assert!((6..=7).contains(&days(&made(&short.0, "server.pem"))));
}

#[tokio::test]
async fn an_admins_free_is_final_even_across_a_restart() {
    let dir = tempdir("evict");
    certs(&dir.0, &["alice", "ops"]).await;
    let policy = "admins = [\"ops\"]\n[[allow]]\nidentities = [\"alice\"]\nnames = [\"*\"]\n";
    let first = server(&dir.0, dir.0.join("ca.pem"), Some(policy), false).await;
    let addr = first.addr;
    let alice = client(addr, &dir.0, "alice").await;
    let ops = client(addr, &dir.0, "ops").await;
    let mut events = alice.events();
    let evicted = alice
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let kept = alice
        .register("api@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let mut watcher = raw(addr, &dir.0, None).await.unwrap();
    let mut watch = watcher
        .watch(pb::WatchRequest {
            pattern: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    ops.free(evicted.id()).await.unwrap();
    let told = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.next().await {
            if let ClientEvent::Evicted { id, by } = event {
                return (id, by);
            }
        }
        panic!("events ended")
    })
    .await
    .expect("the owner is told");
    assert_eq!(told, (evicted.id().to_string(), "ops".to_string()));
    let freed = tokio::time::timeout(PATIENCE, async {
        loop {
            let event = watch.next().await.unwrap().unwrap();
            if event.kind() == pb::watch_event::Kind::Freed {
                return event;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(freed.reason(), pb::FreeReason::Admin);

    // The server restarts empty; alice's client opens a new session and
    // re-asserts what it still owns, which is not what the admin freed.
    drop(first);
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let _second = server_on(listener, &dir.0, dir.0.join("ca.pem"), Some(policy), false).await;
    let count = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.next().await {
            if let ClientEvent::Reasserted { count } = event {
                return count;
            }
        }
        panic!("events ended")
    })
    .await
    .expect("re-asserted after the restart");
    assert_eq!(count, 1);
    let found = alice.query("").await.unwrap();
    let ids: Vec<&str> = found.iter().map(|s| s.id.as_str()).collect();
    assert!(ids.contains(&kept.id()), "{ids:?}");
    assert!(!ids.contains(&evicted.id()), "{ids:?}");
}

#[tokio::test]
async fn seaportctl_register_stops_its_command_when_an_admin_frees_it() {
    let dir = tempdir("evict-ctl");
    certs(&dir.0, &["alice", "ops"]).await;
    let policy = "admins = [\"ops\"]\n[[allow]]\nidentities = [\"alice\"]\nnames = [\"*\"]\n";
    let server = server(&dir.0, dir.0.join("ca.pem"), Some(policy), false).await;
    let pidfile = dir.0.join("child.pid");
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let mut ctl = tokio::process::Command::new(env!("CARGO_BIN_EXE_seaportctl"))
        .args(as_identity(server.addr, &dir.0, "alice"))
        .args(["register", "web@1.0.0", "--", "sh", "-c", &script])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ops = client(server.addr, &dir.0, "ops").await;
    let web = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(web) = ops.query("web").await.unwrap().pop()
                && pidfile.exists()
            {
                return web;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("registered and running");
    let child: i32 = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(text) = std::fs::read_to_string(&pidfile)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    ops.free(&web.id).await.unwrap();
    let status = tokio::time::timeout(PATIENCE, ctl.wait())
        .await
        .expect("seaportctl exits")
        .unwrap();
    assert_eq!(status.code(), Some(6), "the evicted exit code");
    assert!(
        !Path::new(&format!("/proc/{child}")).exists(),
        "its command was stopped"
    );
    assert!(ops.query("web").await.unwrap().is_empty());
}

/// seaportctl's stdout and stderr, for assertion messages.
fn said(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// seaportctl with `--server server --ca ca` and `args`.
async fn seaportctl_ca(server: SocketAddr, ca: &Path, args: &[&str]) -> Output {
    let mut all = vec![
        "--server".to_string(),
        server.to_string(),
        "--ca".into(),
        ca.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    seaportctl(&all.iter().map(String::as_str).collect::<Vec<_>>()).await
}

#[tokio::test]
async fn reads_need_no_certificate_and_open_no_session() {
    let logs = seaport_testkit::Logs::capture();
    let dir = tempdir("reads-only");
    certs(&dir.0, &["alice"]).await;
    let server = server(&dir.0, dir.0.join("ca.pem"), None, false).await;
    let alice = client(server.addr, &dir.0, "alice").await;
    let web = alice
        .register(
            "web@1.2.3",
            RegisterOptions::default().port(8080).meta("zone", "a"),
        )
        .await
        .unwrap();
    assert_eq!(logs.count("session opened"), 1, "alice's");
    let ca = dir.0.join("ca.pem");

    // As the README's example has it: reads need no certificate.
    let query = seaportctl_ca(server.addr, &ca, &["query", "web", "--addresses"]).await;
    assert_eq!(query.status.code(), Some(0), "{}", said(&query));
    assert_eq!(String::from_utf8_lossy(&query.stdout), "127.0.0.1:8080\n");
    let get = seaportctl_ca(server.addr, &ca, &["get", "web@1.2.x", "--timeout", "5s"]).await;
    assert_eq!(get.status.code(), Some(0), "{}", said(&get));
    assert!(String::from_utf8_lossy(&get.stdout).contains(web.id()));
    let show = seaportctl_ca(server.addr, &ca, &["show"]).await;
    assert_eq!(show.status.code(), Some(0), "{}", said(&show));

    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_seaportctl"))
        .args(["--server", &server.addr.to_string(), "--ca"])
        .arg(&ca)
        .args(["watch", "web"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    let existing = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("watch prints the service");
    assert!(
        existing.contains(" existing web@1.2.3 127.0.0.1:8080 "),
        "{existing}"
    );
    web.free().await.unwrap();
    let freed = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("watch prints the free");
    assert!(freed.contains(" freed web@1.2.3 "), "{freed}");
    watch.kill().await.unwrap();

    // With a certificate too, reads open no session.
    let as_alice = seaportctl_as(server.addr, &dir.0, "alice", &["query"]).await;
    assert_eq!(as_alice.status.code(), Some(0), "{}", said(&as_alice));
    assert_eq!(
        logs.count("session opened"),
        1,
        "still only alice's: {}",
        logs.text()
    );
}

#[tokio::test]
async fn a_write_without_a_certificate_is_refused_at_once_with_exit_8() {
    let dir = tempdir("nocert-write");
    certs(&dir.0, &["alice"]).await;
    let server = server(&dir.0, dir.0.join("ca.pem"), None, false).await;
    let ca = dir.0.join("ca.pem");
    let out = seaportctl_ca(
        server.addr,
        &ca,
        &["register", "web@1.0.0", "--port", "8080"],
    )
    .await;
    assert_eq!(out.status.code(), Some(8), "{}", said(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs a client certificate") && stderr.contains("--cert and --key"),
        "{stderr}"
    );
    let out = seaportctl_ca(server.addr, &ca, &["free", "some-id"]).await;
    assert_eq!(out.status.code(), Some(8), "{}", said(&out));

    // The client: reads work, and the write's refusal comes at once, not
    // after its request timeout.
    let anon = SeaportClient::builder()
        .endpoint(server.addr.to_string())
        .ca_pem(pem(&dir.0, "ca.pem"))
        .request_timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    assert!(anon.query("").await.is_ok());
    let started = tokio::time::Instant::now();
    let refused = anon
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unauthenticated), "{refused}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(anon.query("").await.is_ok(), "reads go on");
}

#[tokio::test]
async fn reads_refused_without_a_certificate_exit_8_and_end_a_watch() {
    let dir = tempdir("reads-refused");
    certs(&dir.0, &[]).await;
    let server = server(&dir.0, dir.0.join("ca.pem"), None, true).await;
    let ca = dir.0.join("ca.pem");
    for args in [vec!["query"], vec!["get", "web"], vec!["watch"]] {
        let out = seaportctl_ca(server.addr, &ca, &args).await;
        assert_eq!(out.status.code(), Some(8), "{args:?}: {}", said(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("needs a client certificate"),
            "{}",
            said(&out)
        );
    }
}

#[tokio::test]
async fn tls_failures_name_their_cause_and_exit_7() {
    let dir = tempdir("tls-causes");
    let other = tempdir("tls-other");
    certs(&dir.0, &["alice"]).await;
    certs(&other.0, &["mallory"]).await;
    let tls = server(&dir.0, dir.0.join("ca.pem"), None, false).await;
    let plain = TestServer::start().await;

    let expect = |out: &Output, says: &[&str]| {
        assert_eq!(out.status.code(), Some(7), "{}", said(out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("seaportctl: TLS with "), "{stderr}");
        for s in says {
            assert!(stderr.contains(s), "{s:?} in {stderr}");
        }
        assert!(!stderr.contains("no Seaport server reachable"), "{stderr}");
    };
    // Another CA than the one that signed the server's certificate.
    let out = seaportctl_ca(tls.addr, &other.0.join("ca.pem"), &["query"]).await;
    expect(
        &out,
        &[
            "invalid peer certificate",
            "give the CA that signed it (--ca)",
        ],
    );
    // Plaintext to the TLS port, and TLS to a plaintext one.
    let out = seaportctl(&["--server", &tls.addr.to_string(), "query"]).await;
    expect(&out, &["give the CA that signed its certificate (--ca)"]);
    let out = seaportctl_ca(plain.addr, &dir.0.join("ca.pem"), &["query"]).await;
    expect(&out, &["drop --ca"]);
    // An address the server's certificate does not name.
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let elsewhere = server_on(listener, &dir.0, dir.0.join("ca.pem"), None, false).await;
    let out = seaportctl_ca(elsewhere.addr, &dir.0.join("ca.pem"), &["query"]).await;
    expect(&out, &["not valid for name", "--server-name"]);
    // A client certificate of another CA, and an expired one: the server's
    // alert says which.
    let mut as_mallory = as_identity(tls.addr, &other.0, "mallory");
    as_mallory[3] = dir.0.join("ca.pem").display().to_string();
    as_mallory.push("query".into());
    let out = seaportctl(&as_mallory.iter().map(String::as_str).collect::<Vec<_>>()).await;
    expect(
        &out,
        &[
            "received fatal alert",
            "the server refused this client's certificate",
        ],
    );
    expired_client(&dir.0, "late");
    let out = seaportctl_as(tls.addr, &dir.0, "late", &["query"]).await;
    expect(
        &out,
        &["received fatal alert: CertificateExpired", "has expired"],
    );
}

#[tokio::test]
async fn no_server_at_all_is_exit_5_with_no_server_reachable() {
    let dir = tempdir("none");
    certs(&dir.0, &[]).await;
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Each waits out its connect timeout (2s, twice): together.
    let (address, ca) = (unused.to_string(), dir.0.join("ca.pem"));
    let plain_args = ["--server", &address, "query"];
    let (plain, tls) = tokio::join!(
        seaportctl(&plain_args),
        seaportctl_ca(unused, &ca, &["query"]),
    );
    for out in [plain, tls] {
        assert_eq!(out.status.code(), Some(5), "{}", said(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains(&format!("no Seaport server reachable at {unused} (")),
            "{}",
            said(&out)
        );
    }
}

#[tokio::test]
async fn update_remove_takes_keys_out_and_keeps_the_rest() {
    let dir = tempdir("remove");
    certs(&dir.0, &["alice"]).await;
    let server = server(&dir.0, dir.0.join("ca.pem"), None, false).await;
    let alice = client(server.addr, &dir.0, "alice").await;
    let web = alice
        .register(
            "web@1.0.0",
            RegisterOptions::default()
                .meta("zone", "a")
                .meta("team", "x")
                .meta("tier", "1"),
        )
        .await
        .unwrap();
    let out = seaportctl_as(
        server.addr,
        &dir.0,
        "alice",
        &[
            "update",
            web.id(),
            "--remove",
            "team",
            "--remove",
            "tier",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed[0]["metadata"], serde_json::json!({"zone": "a"}));
    let out = seaportctl_as(
        server.addr,
        &dir.0,
        "alice",
        &[
            "update",
            web.id(),
            "--remove",
            "zone",
            "--meta",
            "owner=ops",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let now = alice.query("web").await.unwrap();
    assert_eq!(
        now[0].metadata.iter().collect::<Vec<_>>(),
        [(&"owner".to_string(), &"ops".to_string())]
    );
    let neither = seaportctl_as(server.addr, &dir.0, "alice", &["update", web.id()]).await;
    assert_eq!(neither.status.code(), Some(2), "{}", said(&neither));
}
