//! Sessions: open, ping, close, resume after a dropped stream, expiry.

use seaport::pb::{self, heartbeat_request::Kind as In, watch_event::Kind};
use tonic::Code;

use crate::watch::{Watcher, watch};
use seaport_testkit::*;

#[tokio::test]
async fn open_grants_a_clamped_ttl_and_tells_the_client_its_address() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    assert_eq!(s.ttl_ms, 30_000, "the default ttl");
    assert_eq!(s.observed_host, "127.0.0.1");
    assert!(!s.resumed);
    let short = open(&mut client, 1).await;
    assert_eq!(short.ttl_ms, 100, "clamped to --min-ttl");
    let long = open(&mut client, u64::MAX).await;
    assert_eq!(long.ttl_ms, 3_600_000, "clamped to --max-ttl");
}

#[tokio::test]
async fn pings_are_answered_with_their_seq() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut s = open(&mut client, 0).await;
    assert_eq!(s.ping(7).await.unwrap(), 7);
    assert_eq!(s.ping(8).await.unwrap(), 8);
}

#[tokio::test]
async fn close_frees_every_registration_at_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    register(&mut client, &s, "web@1.0.0").await;
    register(&mut client, &s, "web@1.1.0").await;
    assert_eq!(query(&mut client, "web").await.len(), 2);
    assert_eq!(s.close().await, 2);
    assert!(query(&mut client, "web").await.is_empty());
}

#[tokio::test]
async fn a_dropped_stream_resumed_within_its_ttl_frees_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 3000).await;
    let first = register(&mut client, &s, "web@1.0.0").await;
    let mut watcher: Watcher = watch(&mut client, "web", 0).await;
    watcher.snapshot().await;

    let id = s.drop_stream();
    let mut resumed = heartbeat(
        &mut client,
        In::Resume(pb::ResumeSession {
            session_id: id.clone(),
        }),
    )
    .await
    .unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.id, id);
    assert_eq!(resumed.ping(1).await.unwrap(), 1);

    // The next thing the watcher sees is this new registration: no free,
    // no flapping, came before it.
    let second = register(&mut client, &resumed, "web@2.0.0").await;
    let e = watcher.next().await;
    assert_eq!(
        (e.kind(), e.service.unwrap().id),
        (Kind::Registered, second.id)
    );
    let ids: Vec<_> = query(&mut client, "web")
        .await
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert!(ids.contains(&first.id));
}

#[tokio::test]
async fn a_silent_session_expires_and_watchers_see_each_free() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 300).await;
    let a = register(&mut client, &s, "web@1.0.0").await;
    let b = register(&mut client, &s, "web@1.0.1").await;
    let mut watcher = watch(&mut client, "web", 0).await;
    assert_eq!(watcher.snapshot().await.len(), 2);
    let id = s.drop_stream();

    let mut freed = vec![watcher.next().await, watcher.next().await];
    assert!(freed.iter().all(|e| e.kind() == Kind::Freed));
    freed.sort_by_key(|e| e.revision);
    let mut ids: Vec<_> = freed.into_iter().map(|e| e.service.unwrap().id).collect();
    ids.sort();
    let mut want = vec![a.id, b.id];
    want.sort();
    assert_eq!(ids, want);
    assert!(query(&mut client, "web").await.is_empty());

    let resumed = heartbeat(
        &mut client,
        In::Resume(pb::ResumeSession { session_id: id }),
    )
    .await;
    assert_status(resumed.map(|s| s.id), Code::NotFound, "open a new session");
}

#[tokio::test]
async fn pings_keep_a_short_session_alive() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut s = open(&mut client, 300).await;
    register(&mut client, &s, "web@1.0.0").await;
    for seq in 0..8 {
        // Time passing is the point: 800ms of pings, each within the ttl,
        // outlast a 300ms ttl.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        s.ping(seq).await.unwrap();
    }
    assert_eq!(
        query(&mut client, "web").await.len(),
        1,
        "alive after 800ms of a 300ms ttl"
    );
}

#[tokio::test]
async fn the_first_message_must_open_or_resume() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let r = heartbeat(&mut client, In::Ping(pb::Ping { seq: 1 })).await;
    assert_status(
        r.map(|s| s.id),
        Code::InvalidArgument,
        "the first message must be `open` or `resume`",
    );
    let r = heartbeat(
        &mut client,
        In::Resume(pb::ResumeSession {
            session_id: "nope".into(),
        }),
    )
    .await;
    assert_status(r.map(|s| s.id), Code::NotFound, "the session is not open");
}

#[tokio::test]
async fn a_second_open_on_the_same_stream_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut s = open(&mut client, 0).await;
    s.send(In::Open(pb::OpenSession::default())).await;
    assert_status(
        s.next().await,
        Code::InvalidArgument,
        "already holds a session",
    );
}
