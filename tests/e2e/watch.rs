//! Watch: snapshot then SYNCED, changes in revision order, resume, reset,
//! and a stalled watcher that slows nobody.

use std::collections::HashMap;

use seaport::pb::{self, registry_client::RegistryClient, watch_event::Kind};
use tonic::Streaming;
use tonic::transport::Channel;

use seaport_testkit::*;

/// One Watch stream.
pub(crate) struct Watcher {
    stream: Streaming<pb::WatchEvent>,
}

pub(crate) async fn watch(
    client: &mut RegistryClient<Channel>,
    pattern: &str,
    since_revision: u64,
) -> Watcher {
    let request = pb::WatchRequest {
        pattern: pattern.into(),
        since_revision,
        ..Default::default()
    };
    Watcher {
        stream: client.watch(request).await.expect("watch").into_inner(),
    }
}

impl Watcher {
    pub(crate) async fn next(&mut self) -> pb::WatchEvent {
        tokio::time::timeout(PATIENCE, self.stream.message())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("stream open")
    }

    /// True when the stream ends (cleanly or with a status) in time.
    pub(crate) async fn ended(&mut self) -> bool {
        matches!(
            tokio::time::timeout(PATIENCE, self.stream.message()).await,
            Ok(Ok(None) | Err(_))
        )
    }

    /// Reads EXISTING events up to SYNCED; returns the services.
    pub(crate) async fn snapshot(&mut self) -> Vec<pb::Service> {
        let mut services = Vec::new();
        loop {
            let e = self.next().await;
            match e.kind() {
                Kind::Existing => services.push(e.service.unwrap()),
                Kind::Synced => return services,
                other => panic!("unexpected {other:?} in a snapshot"),
            }
        }
    }
}

#[tokio::test]
async fn snapshot_then_synced_then_each_change_in_revision_order() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let old = register(&mut client, &s, "web@1.0.0").await;
    let mut watcher = watch(&mut client, "web@1.x", 0).await;
    assert_eq!(watcher.snapshot().await, vec![old.clone()]);

    register(&mut client, &s, "web@2.0.0").await; // not in the watched set
    register(&mut client, &s, "api@1.0.0").await; // nor this
    let new = register(&mut client, &s, "web@1.1.0").await;
    let update = pb::UpdateRequest {
        session_id: s.id.clone(),
        id: new.id.clone(),
        metadata: HashMap::from([("zone".into(), "b".into())]),
        ..Default::default()
    };
    client.update(update).await.unwrap();
    client
        .free(pb::FreeRequest {
            session_id: s.id.clone(),
            id: old.id.clone(),
        })
        .await
        .unwrap();

    let events = [
        watcher.next().await,
        watcher.next().await,
        watcher.next().await,
    ];
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.kind(), e.service.as_ref().unwrap().id.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (Kind::Registered, new.id.clone()),
            (Kind::Updated, new.id),
            (Kind::Freed, old.id)
        ]
    );
    assert!(events.windows(2).all(|w| w[0].revision < w[1].revision));
    assert_eq!(events[1].service.as_ref().unwrap().metadata["zone"], "b");
}

#[tokio::test]
async fn a_watch_resumes_from_a_revision_without_a_snapshot() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let first = register(&mut client, &s, "web@1.0.0").await;
    let second = register(&mut client, &s, "web@1.0.1").await;
    let third = register(&mut client, &s, "web@1.0.2").await;

    let mut watcher = watch(&mut client, "web", first.create_revision).await;
    let a = watcher.next().await;
    let b = watcher.next().await;
    assert_eq!(
        (a.kind(), a.service.unwrap().id),
        (Kind::Registered, second.id)
    );
    assert_eq!(
        (b.kind(), b.service.unwrap().id),
        (Kind::Registered, third.id.clone())
    );
    let synced = watcher.next().await;
    assert_eq!(
        (synced.kind(), synced.revision),
        (Kind::Synced, third.create_revision)
    );
}

#[tokio::test]
async fn a_revision_older_than_the_history_gets_reset_and_a_snapshot() {
    let mut config = test_config();
    config.limits.history = 2;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let first = register(&mut client, &s, "web@1.0.0").await;
    for v in ["1.0.1", "1.0.2", "1.0.3"] {
        register(&mut client, &s, &format!("web@{v}")).await;
    }
    let mut watcher = watch(&mut client, "web", first.create_revision).await;
    assert_eq!(watcher.next().await.kind(), Kind::Reset);
    assert_eq!(watcher.snapshot().await.len(), 4);
}

#[tokio::test]
async fn a_stalled_watcher_does_not_delay_another() {
    let mut config = test_config();
    config.limits.watch_buffer = 16;
    config.limits.max_registrations_per_session = 10_000;
    let server = TestServer::start_with(config).await;
    // Separate connections, as separate processes would have.
    let mut stalled_client = server.slow_reader_client().await;
    let mut stalled = watch(&mut stalled_client, "web", 0).await;
    let mut client = server.client().await;
    let mut live = watch(&mut client, "web", 0).await;
    assert!(stalled.snapshot().await.is_empty());
    assert!(live.snapshot().await.is_empty());

    // Enough bulk to fill the stalled stream's HTTP/2 window and queues.
    let s = open(&mut client, 600_000).await;
    let blob = "x".repeat(3000);
    let total = 400;
    for i in 0..total {
        let request = pb::RegisterRequest {
            metadata: HashMap::from([("blob".into(), blob.clone())]),
            ..register_request(&s, &format!("web@1.0.{i}"))
        };
        register_with(&mut client, request).await;
        let e = live.next().await;
        assert_eq!(
            (e.kind(), e.service.unwrap().version),
            (Kind::Registered, format!("1.0.{i}"))
        );
    }

    // The stalled watcher, read at last, was told to resynchronise.
    let mut kinds = Vec::new();
    loop {
        let e = stalled.next().await;
        kinds.push(e.kind());
        if e.kind() == Kind::Reset {
            break;
        }
        assert!(kinds.len() <= total, "no RESET after {total} events");
    }
    assert_eq!(stalled.snapshot().await.len(), total);
}
