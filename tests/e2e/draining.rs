//! Draining and a server's stop, through SeaportClient and a real
//! seaportd: a draining instance stays listed but gets no new traffic,
//! survives a re-assert, and a stopping server sends its sessions
//! elsewhere.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use seaport_client::{ClientEvent, Error, EventKind, RegisterOptions, SeaportClient};
use tonic::Code;

use seaport_testkit::*;

use crate::client::{client_for, next};

#[tokio::test]
async fn a_drained_instance_is_listed_but_never_chosen() {
    let server = TestServer::start().await;
    let owner = client_for(&[server.addr]).await;
    let reader = client_for(&[server.addr]).await;
    let a = owner
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let b = owner
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let catalog = reader.catalog("web@1.x").await.unwrap();
    let mut watch = reader.watch("web").unwrap();
    while next(&mut watch).await.unwrap().kind != EventKind::Synced {}

    let drained = a.drain().await.unwrap();
    assert!(drained.draining);
    let event = next(&mut watch).await.unwrap();
    assert_eq!(event.kind, EventKind::Updated);
    let seen = event.service.unwrap();
    assert!(seen.id == a.id() && seen.draining, "{seen:?}");

    let listed = reader.query("web").await.unwrap();
    assert_eq!(listed.len(), 2, "a draining instance stays listed");
    assert!(listed.iter().any(|s| s.id == a.id() && s.draining));
    let got = reader.get("web").await.unwrap();
    assert_eq!(
        got.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [b.id()]
    );
    eventually("the catalog to see the drain", || {
        let draining = catalog
            .services()
            .iter()
            .any(|s| s.id == a.id() && s.draining);
        async move { draining }
    })
    .await;
    for _ in 0..50 {
        assert_eq!(catalog.pick().unwrap().id, b.id());
        assert_eq!(catalog.pick_random().unwrap().id, b.id());
    }
    assert!(catalog.pick_excluding(&[b.id()]).is_none());

    // Draining again changes nothing: the next event is b's update.
    let again = owner.drain(a.id()).await.unwrap();
    assert_eq!(again.mod_revision, drained.mod_revision);
    let updated = owner
        .update(a.id(), BTreeMap::from([("k".into(), "v".into())]), false)
        .await
        .unwrap();
    assert!(updated.draining, "an update keeps it draining");
    let event = next(&mut watch).await.unwrap();
    assert_eq!(event.service.unwrap().metadata.get("k").unwrap(), "v");
}

#[tokio::test]
async fn get_waits_while_every_match_drains() {
    let server = TestServer::start().await;
    let owner = client_for(&[server.addr]).await;
    let reader = client_for(&[server.addr]).await;
    let old = owner
        .register("api@2.0.0", RegisterOptions::default())
        .await
        .unwrap();
    old.drain().await.unwrap();
    let waited = reader
        .get_timeout("api@2.x", Duration::from_millis(200))
        .await;
    assert!(
        matches!(
            waited,
            Err(Error::Status {
                code: Code::DeadlineExceeded,
                ..
            })
        ),
        "{waited:?}"
    );
    let waiting = tokio::spawn(async move { reader.get("api@2.x").await });
    let new = owner
        .register("api@2.0.1", RegisterOptions::default())
        .await
        .unwrap();
    let got = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        got.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [new.id()]
    );
}

#[tokio::test]
async fn only_its_owner_may_drain_a_registration() {
    let server = TestServer::start().await;
    let owner = client_for(&[server.addr]).await;
    let stranger = client_for(&[server.addr]).await;
    let web = owner
        .register("web", RegisterOptions::default())
        .await
        .unwrap();
    let refused = stranger.drain(web.id()).await;
    assert!(
        matches!(refused, Err(Error::Status { code: Code::PermissionDenied, ref message }) if message.contains("owner")),
        "{refused:?}"
    );
    let unknown = owner.drain("no-such-id").await;
    assert!(
        matches!(
            unknown,
            Err(Error::Status {
                code: Code::NotFound,
                ..
            })
        ),
        "{unknown:?}"
    );
    assert!(!stranger.query("web").await.unwrap()[0].draining);
}

#[tokio::test]
async fn a_drained_registration_stays_draining_when_reasserted() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let client = client_for(&[addr]).await;
    let mut events = client.events();
    let web = client
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    web.drain().await.unwrap();
    server.stop().await;
    let _again = TestServer::start_on(addr, test_config()).await;
    while !matches!(next(&mut events).await, ClientEvent::Reasserted { .. }) {}
    let listed = client.query("web").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].id == web.id() && listed[0].port == web.port() && listed[0].draining,
        "{listed:?}"
    );
}

#[tokio::test]
async fn close_with_a_drain_wait_drains_first_then_frees() {
    let server = TestServer::start().await;
    let wait = Duration::from_millis(600);
    let client = SeaportClient::builder()
        .endpoint(server.addr.to_string())
        .drain_wait(wait)
        .connect()
        .await
        .unwrap();
    let reader = client_for(&[server.addr]).await;
    let web = client
        .register("web", RegisterOptions::default())
        .await
        .unwrap();
    let mut watch = reader.watch("web").unwrap();
    while next(&mut watch).await.unwrap().kind != EventKind::Synced {}
    let closing = tokio::spawn(client.close());
    let drained = next(&mut watch).await.unwrap();
    let drained_at = Instant::now();
    assert_eq!(drained.kind, EventKind::Updated);
    assert!(drained.service.unwrap().draining);
    let freed = next(&mut watch).await.unwrap();
    assert_eq!(
        (freed.kind, freed.service.unwrap().id),
        (EventKind::Freed, web.id().to_string())
    );
    assert!(
        drained_at.elapsed() >= wait - Duration::from_millis(50),
        "freed {:?} after the drain, before the wait of {wait:?}",
        drained_at.elapsed()
    );
    closing.await.unwrap();
}

#[tokio::test]
async fn a_stopping_server_sends_its_sessions_to_the_next_server() {
    let config = || {
        let mut config = test_config();
        config.shutdown_grace = Duration::from_secs(5);
        config
    };
    let a = TestServer::start_with(config()).await;
    let b = TestServer::start_with(config()).await;
    let client = client_for(&[a.addr, b.addr]).await;
    let mut events = client.events();
    let web = client
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let (current, other) = if client.server() == Some(a.addr.to_string()) {
        (a, b)
    } else {
        (b, a)
    };

    let started = Instant::now();
    let stopped = tokio::spawn(current.stop());
    let left = next(&mut events).await;
    assert!(
        matches!(left, ClientEvent::Disconnected { ref reason, .. } if reason.contains("stopping")),
        "{left:?}"
    );
    let mut raw = other.client().await;
    eventually("the registration re-asserted on the other server", || {
        let mut raw = raw.clone();
        async move { query(&mut raw, "web").await.len() == 1 }
    })
    .await;
    let moved = started.elapsed();
    assert_eq!(query(&mut raw, "web").await[0].port, u32::from(web.port()));
    assert!(
        moved < Duration::from_secs(2),
        "moved after {moved:?}; the ttl is 5 s"
    );
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the server waited {:?} though its sessions had gone (grace 5 s)",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stopping_server_refuses_new_sessions() {
    let mut config = test_config();
    config.drain_delay = Duration::from_secs(2);
    let mut server = TestServer::start_with(config).await;
    let mut raw = server.client().await;
    let held = open(&mut raw, 5000).await;
    let mut held = held;
    server.begin_shutdown();
    let told = tokio::time::timeout(PATIENCE, held.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            told,
            Some(seaport::pb::heartbeat_response::Kind::Stopping(_))
        ),
        "{told:?}"
    );
    let refused = heartbeat(
        &mut raw,
        seaport::pb::heartbeat_request::Kind::Open(seaport::pb::OpenSession {
            ttl_ms: 5000,
            client_name: "late".into(),
        }),
    )
    .await;
    assert_status(refused.map(|_| ()), Code::Unavailable, "stopping");
}
