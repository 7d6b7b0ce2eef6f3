//! Sessions only for writers, against real servers: a client that only
//! reads opens none (the servers' own logs say so), keeps reading across
//! failover, and its first write opens the one session it then keeps.

use std::time::Duration;

use seaport_client::{ClientEvent, EventKind, RegisterOptions, SeaportClient};
use seaport_testkit::{Logs, PATIENCE, TestServer};
use tokio_stream::{Stream, StreamExt};

const OPENED: &str = "session opened";

async fn client_for(addresses: &[std::net::SocketAddr]) -> SeaportClient {
    addresses
        .iter()
        .fold(SeaportClient::builder(), |b, a| b.endpoint(a.to_string()))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .expect("connect")
}

/// A client of two servers: it, the server it is on, and the other.
async fn two_servers() -> (SeaportClient, TestServer, TestServer) {
    let a = TestServer::start().await;
    let b = TestServer::start().await;
    let client = client_for(&[a.addr, b.addr]).await;
    if client.server() == Some(a.addr.to_string()) {
        (client, a, b)
    } else {
        (client, b, a)
    }
}

async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an item in time")
        .expect("stream open")
}

#[tokio::test]
async fn reads_open_no_session_and_the_first_write_opens_the_one_kept() {
    let logs = Logs::capture();
    let server = TestServer::start().await;
    let writer = client_for(&[server.addr]).await;
    writer
        .register("web@1.0.0", RegisterOptions::default().port(7000))
        .await
        .unwrap();
    assert_eq!(logs.count(OPENED), 1, "the writer's");

    let reader = client_for(&[server.addr]).await;
    assert_eq!(reader.server(), Some(server.addr.to_string()));
    assert_eq!(reader.query("web").await.unwrap().len(), 1);
    assert_eq!(reader.get("web@1.x").await.unwrap()[0].port, 7000);
    let nobody = reader
        .get_timeout("nobody", Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(nobody.code(), Some(tonic::Code::DeadlineExceeded));
    let mut watch = reader.watch("web").unwrap();
    assert_eq!(next(&mut watch).await.unwrap().kind, EventKind::Existing);
    assert_eq!(next(&mut watch).await.unwrap().kind, EventKind::Synced);
    let catalog = reader.catalog("web").await.unwrap();
    assert_eq!(catalog.len(), 1);
    assert_eq!(logs.count(OPENED), 1, "reads opened none: {}", logs.text());

    // The first write opens the session; later ones, and a free of the
    // last registration, keep it.
    let api = reader
        .register("api@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    reader
        .register("db@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    api.free().await.unwrap();
    assert_eq!(logs.count(OPENED), 2, "one session for the reader's writes");
    // Reads go on over the same connection.
    assert_eq!(reader.query("").await.unwrap().len(), 3);
    reader.close().await;
    assert!(
        writer.query("db").await.unwrap().is_empty(),
        "closed with its session"
    );
    assert_eq!(logs.count("session closed"), 1);
}

#[tokio::test]
async fn a_client_that_only_reads_fails_over_when_it_next_reads() {
    let logs = Logs::capture();
    let (client, current, other) = two_servers().await;
    let mut events = client.events();
    let other_addr = other.addr.to_string();
    assert_eq!(client.query("seaport").await.unwrap().len(), 1);

    current.stop().await;
    let found = client
        .query("seaport")
        .await
        .expect("answered by the other");
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].port,
        other.addr.port(),
        "the other server's own entry"
    );
    assert_eq!(client.server(), Some(other_addr.clone()));
    assert!(matches!(
        next(&mut events).await,
        ClientEvent::Disconnected { .. }
    ));
    assert_eq!(
        next(&mut events).await,
        ClientEvent::Connected {
            server: other_addr,
            observed_host: String::new(),
        },
        "no session, so no observed host"
    );
    assert_eq!(logs.count(OPENED), 0, "{}", logs.text());
}

#[tokio::test]
async fn a_watch_of_a_client_that_only_reads_moves_to_the_next_server() {
    let (client, current, other) = two_servers().await;
    let mut watch = client.watch("seaport").unwrap();
    assert_eq!(next(&mut watch).await.unwrap().kind, EventKind::Existing);
    assert_eq!(next(&mut watch).await.unwrap().kind, EventKind::Synced);
    current.stop().await;
    // Another server's revisions are not this one's: a reset, then its
    // snapshot.
    let mut kinds = Vec::new();
    while kinds.last() != Some(&EventKind::Synced) {
        let event = next(&mut watch).await.unwrap();
        if event.kind == EventKind::Existing {
            assert_eq!(event.service.unwrap().port, other.addr.port());
        }
        kinds.push(event.kind);
    }
    assert_eq!(kinds[0], EventKind::Reset, "{kinds:?}");
    assert_eq!(client.server(), Some(other.addr.to_string()));
}

/// A path that goes silent (packets dropped, no reset) is declared dead
/// within half the session's ttl, and the session resumed over another
/// route before the server would expire it: nothing is freed.
#[tokio::test]
async fn a_silent_path_is_left_for_another_before_the_session_expires() {
    let server = TestServer::start().await;
    let routes = [
        seaport_testkit::Proxy::start(server.addr).await,
        seaport_testkit::Proxy::start(server.addr).await,
    ];
    let client = SeaportClient::builder()
        .endpoint(routes[0].addr.to_string())
        .endpoint(routes[1].addr.to_string())
        .ttl(Duration::from_secs(3))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let web = client
        .register("web@1.0.0", RegisterOptions::default().port(7100))
        .await
        .unwrap();
    let on = client.server().unwrap();
    let (dead, alive) = if on == routes[0].addr.to_string() {
        (&routes[0], &routes[1])
    } else {
        (&routes[1], &routes[0])
    };
    let mut watcher = server.client().await;
    let mut changes = watcher
        .watch(seaport::pb::WatchRequest {
            pattern: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = client.events();
    let silenced = tokio::time::Instant::now();
    dead.silence();
    loop {
        if let ClientEvent::Connected { server, .. } = next(&mut events).await {
            assert_eq!(server, alive.addr.to_string());
            break;
        }
    }
    let moved = silenced.elapsed();
    eprintln!("silent path left, session resumed elsewhere in {moved:?}");
    assert!(moved < Duration::from_secs(3), "within the ttl: {moved:?}");
    // Past two ttls: an expiry would have shown as FREED by now.
    let quiet = tokio::time::timeout(Duration::from_secs(6), async {
        while let Ok(Some(event)) = changes.message().await {
            assert_ne!(
                event.kind,
                seaport::pb::watch_event::Kind::Freed as i32,
                "{event:?}"
            );
        }
    })
    .await;
    assert!(quiet.is_err(), "the watch stays open, with no FREED");
    let found = client.query("web").await.unwrap();
    assert_eq!(
        (found[0].id.as_str(), found[0].port),
        (web.id(), web.port())
    );
}
