//! mTLS against a real seaportd, with real certificates: who may register,
//! update, free and read; the identity a certificate proves; an admin's
//! final free; health without a certificate; a rotated client CA.
//! seaportctl's own behaviour under TLS (its messages and exit codes) is
//! tested in cli/tests/tls.rs, and a reload on SIGHUP, which needs a
//! process of its own, in server/tests/process.rs.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use seaport::pb;
use seaport_client::{ClientEvent, RegisterOptions, SeaportClient};
use seaport_testkit::tls::{
    TempDir, expired_client, identity_pem, init_certs, pem, tls_client, tls_config, try_query,
};
use seaport_testkit::{Logs, PATIENCE, TestServer, admin, assert_status, eventually};
use tokio_stream::{Stream, StreamExt};
use tonic::Code;

/// A client holding client certificate `who` of `dir`'s CA.
async fn client(addr: SocketAddr, dir: &Path, who: &str) -> SeaportClient {
    let (cert, key) = identity_pem(dir, who);
    SeaportClient::builder()
        .endpoint(addr.to_string())
        .ca_pem(pem(dir, "ca.pem"))
        .identity_pem(cert, key)
        .connect()
        .await
        .unwrap()
}

fn query(pattern: &str) -> pb::QueryRequest {
    pb::QueryRequest {
        pattern: pattern.into(),
        ..Default::default()
    }
}

/// The first event of `events` that `pick` maps to a value.
async fn until<T>(
    events: &mut (impl Stream<Item = ClientEvent> + Unpin),
    pick: impl Fn(ClientEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.next().await {
            if let Some(value) = pick(event) {
                return value;
            }
        }
        panic!("the events ended")
    })
    .await
    .expect("the event in time")
}

/// The events delivered so far, without waiting for more.
async fn delivered(events: &mut (impl Stream<Item = ClientEvent> + Unpin)) -> Vec<ClientEvent> {
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::ZERO, events.next()).await {
        seen.push(event);
    }
    seen
}

#[tokio::test]
async fn without_a_certificate_writes_are_refused_and_reads_allowed() {
    let dir = TempDir::new("nocert");
    init_certs(dir.path(), &["alice"]);
    let server = TestServer::start_with(tls_config(dir.path())).await;
    let mut anon = tls_client(server.addr, dir.path(), None).await.unwrap();
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

    let alice = client(server.addr, dir.path(), "alice").await;
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
    let dir = TempDir::new("reads");
    init_certs(dir.path(), &["alice"]);
    let mut config = tls_config(dir.path());
    config.require_client_cert_for_reads = true;
    let server = TestServer::start_with(config).await;
    let mut anon = tls_client(server.addr, dir.path(), None).await.unwrap();
    assert_status(
        anon.query(query("")).await,
        Code::Unauthenticated,
        "Query needs a client certificate",
    );
    let mut alice = tls_client(server.addr, dir.path(), Some((dir.path(), "alice")))
        .await
        .unwrap();
    assert!(alice.query(query("")).await.is_ok());
}

#[tokio::test]
async fn a_certificate_from_another_ca_or_expired_fails_the_handshake() {
    let dir = TempDir::new("ca");
    let other = TempDir::new("other");
    init_certs(dir.path(), &["alice"]);
    init_certs(other.path(), &["mallory"]);
    expired_client(dir.path(), "late");

    let server = TestServer::start_with(tls_config(dir.path())).await;
    for (certs, who) in [(other.path(), "mallory"), (dir.path(), "late")] {
        let refused = try_query(server.addr, dir.path(), Some((certs, who)))
            .await
            .expect_err("the handshake must fail");
        assert!(!refused.is_empty(), "{who}: {refused}");
    }
    assert_eq!(
        try_query(server.addr, dir.path(), Some((dir.path(), "alice"))).await,
        Ok(()),
        "a certificate of the right CA works"
    );
}

#[tokio::test]
async fn the_policy_decides_who_registers_what_and_who_frees_anything() {
    let dir = TempDir::new("policy");
    init_certs(dir.path(), &["alice", "bob", "ops"]);
    let mut config = tls_config(dir.path());
    config.policy = Some(dir.file(
        "policy.toml",
        "admins = [\"ops\"]\n[[allow]]\nidentities = [\"alice\", \"bob\"]\nnames = [\"web\", \"web-*\"]\n",
    ));
    let server = TestServer::start_with(config).await;
    let alice = client(server.addr, dir.path(), "alice").await;
    let bob = client(server.addr, dir.path(), "bob").await;

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
    let meta = |v: &str| [("zone".to_string(), v.to_string())].into();
    let update_by_bob = bob.update(web.id(), meta("x"), true).await.unwrap_err();
    assert_eq!(update_by_bob.code(), Some(Code::PermissionDenied));

    // The owning identity may update it from another session.
    let alice_elsewhere = client(server.addr, dir.path(), "alice").await;
    let updated = alice_elsewhere
        .update(web.id(), meta("b"), true)
        .await
        .unwrap();
    assert_eq!(updated.metadata.get("zone").map(String::as_str), Some("b"));

    // An admin may free anything.
    let ops = client(server.addr, dir.path(), "ops").await;
    let freed = ops.free(web.id()).await.unwrap();
    assert_eq!(freed.id, web.id());
    assert!(bob.query("web").await.unwrap().is_empty());
}

#[tokio::test]
async fn the_admin_port_answers_health_without_a_certificate() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let dir = TempDir::new("admin");
    init_certs(dir.path(), &[]);
    let mut config = tls_config(dir.path());
    config.require_client_cert_for_reads = true;
    let server = TestServer::start_with_admin(config).await;
    let admin_addr = server.admin.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin_addr}"))
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
        let reply = admin::http(admin_addr, "GET", path).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("SERVING\n"), "{reply}");
    }
}

/// Without a signal: the poll of the files' modification times finds the
/// new client CA, and the session on a connection from before lives on.
#[tokio::test]
async fn a_changed_client_ca_file_is_loaded_without_dropping_sessions() {
    let dir = TempDir::new("rotate");
    let next = TempDir::new("next");
    init_certs(dir.path(), &["alice"]);
    init_certs(next.path(), &["carol"]);
    let bundle = dir.file("clients-ca.pem", "");
    std::fs::copy(dir.path().join("ca.pem"), &bundle).unwrap();
    let mut config = tls_config(dir.path());
    config.tls.as_mut().unwrap().client_ca = Some(bundle.clone());
    let server = TestServer::start_with(config).await;

    let alice = client(server.addr, dir.path(), "alice").await;
    let mut events = alice.events();
    alice
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let carol = Some((next.path(), "carol"));
    assert!(
        try_query(server.addr, dir.path(), carol).await.is_err(),
        "carol's CA is not trusted yet"
    );

    let before = std::fs::metadata(&bundle).unwrap().modified().unwrap();
    std::fs::write(&bundle, pem(next.path(), "ca.pem")).unwrap();
    // The file system's clock may be coarser than this test is quick: a
    // later modification time, for certain.
    std::fs::File::options()
        .write(true)
        .open(&bundle)
        .unwrap()
        .set_modified(before + Duration::from_secs(1))
        .unwrap();
    eventually("carol's CA to be trusted", async || {
        try_query(server.addr, dir.path(), carol).await.is_ok()
    })
    .await;
    alice
        .register("web@1.0.1", RegisterOptions::default())
        .await
        .unwrap();
    assert_eq!(alice.query("web").await.unwrap().len(), 2);
    let blips = delivered(&mut events).await;
    assert!(
        blips.is_empty(),
        "no disconnect, no session lost: {blips:?}"
    );
}

#[tokio::test]
async fn an_admins_free_is_final_even_across_a_restart() {
    let dir = TempDir::new("evict");
    init_certs(dir.path(), &["alice", "ops"]);
    let mut config = tls_config(dir.path());
    config.policy = Some(dir.file(
        "policy.toml",
        "admins = [\"ops\"]\n[[allow]]\nidentities = [\"alice\"]\nnames = [\"*\"]\n",
    ));
    let first = TestServer::start_with(config.clone()).await;
    let addr = first.addr;
    let alice = client(addr, dir.path(), "alice").await;
    let ops = client(addr, dir.path(), "ops").await;
    let mut events = alice.events();
    let evicted = alice
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let kept = alice
        .register("api@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let mut watcher = tls_client(addr, dir.path(), None).await.unwrap();
    let mut watch = watcher
        .watch(pb::WatchRequest {
            pattern: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    ops.free(evicted.id()).await.unwrap();
    let told = until(&mut events, |event| match event {
        ClientEvent::Evicted { id, by } => Some((id, by)),
        _ => None,
    })
    .await;
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
    first.stop().await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _second = TestServer::serve(listener, None, config);
    let count = until(&mut events, |event| match event {
        ClientEvent::Reasserted { count } => Some(count),
        _ => None,
    })
    .await;
    assert_eq!(count, 1);
    let found = alice.query("").await.unwrap();
    let ids: Vec<&str> = found.iter().map(|s| s.id.as_str()).collect();
    assert!(ids.contains(&kept.id()), "{ids:?}");
    assert!(!ids.contains(&evicted.id()), "{ids:?}");
}

/// A session's opening, close and expiry each get one log line that names
/// the client's address and its certificate's identity, never the id.
#[tokio::test]
async fn session_log_lines_name_the_peer_and_the_identity() {
    let logs = Logs::capture();
    let dir = TempDir::new("session-logs");
    init_certs(dir.path(), &["alice", "bob"]);
    let server = TestServer::start_with(tls_config(dir.path())).await;
    let alice = client(server.addr, dir.path(), "alice").await;
    alice
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    alice.close().await;
    let mut bob = tls_client(server.addr, dir.path(), Some((dir.path(), "bob")))
        .await
        .unwrap();
    let session = seaport_testkit::open(&mut bob, 200).await;
    let secret = session.drop_stream();
    eventually("bob's session to expire", async || {
        logs.count("session expired") == 1
    })
    .await;
    let line = |what: &str| {
        logs.text()
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line in {}", logs.text()))
            .to_string()
    };
    let opened = line("session opened");
    assert!(
        opened.contains("identity=alice") && opened.contains("host=127.0.0.1"),
        "{opened}"
    );
    let closed = line("session closed");
    assert!(
        closed.contains("identity=alice") && closed.contains("peer=127.0.0.1:"),
        "{closed}"
    );
    let expired = line("session expired");
    assert!(
        expired.contains("identity=bob") && expired.contains("host=127.0.0.1"),
        "{expired}"
    );
    assert!(
        !logs.text().contains(&secret),
        "a session id is never logged"
    );
}
