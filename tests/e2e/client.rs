//! SeaportClient against real servers: sessions that survive restarts,
//! failover, watches, the catalog, bind.

use std::collections::BTreeMap;
use std::time::Duration;

use seaport_client::{ClientEvent, Error, EventKind, RegisterOptions, SeaportClient, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tonic::Code;

use seaport_testkit::*;

pub(crate) async fn client_for(addresses: &[std::net::SocketAddr]) -> SeaportClient {
    addresses
        .iter()
        .fold(SeaportClient::builder(), |b, a| b.endpoint(a.to_string()))
        .ttl(Duration::from_secs(5))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .expect("connect")
}

/// The next item of a stream, within the test's patience.
pub(crate) async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an item in time")
        .expect("stream open")
}

async fn until_event(
    events: &mut (impl Stream<Item = ClientEvent> + Unpin),
    want: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    loop {
        let e = next(events).await;
        if want(&e) {
            return e;
        }
    }
}

async fn snapshot(watch: &mut WatchStream) -> Vec<seaport_client::Service> {
    let mut services = Vec::new();
    loop {
        let e = next(watch).await.unwrap();
        match e.kind {
            EventKind::Existing => services.push(e.service.unwrap()),
            EventKind::Synced => return services,
            EventKind::Reset => services.clear(),
            other => panic!("unexpected {other:?} in a snapshot"),
        }
    }
}

#[tokio::test]
async fn register_query_get_update_and_free() {
    let server = TestServer::start().await;
    let client = client_for(&[server.addr]).await;
    let reg = client
        .register("web@1.2.3", RegisterOptions::default().meta("zone", "a"))
        .await
        .unwrap();
    assert!(reg.port() >= 10000);
    assert_eq!(reg.host(), "127.0.0.1");
    let other = client_for(&[server.addr]).await;
    let found = other.get("web@1.2.x").await.unwrap();
    assert_eq!(found[0].id, reg.id());
    assert_eq!(found[0].metadata["zone"], "a");
    assert!(other.query("web@2.x").await.unwrap().is_empty());

    let updated = client
        .update(
            reg.id(),
            BTreeMap::from([("zone".into(), "b".into())]),
            true,
        )
        .await
        .unwrap();
    assert_eq!(updated.metadata["zone"], "b");
    reg.free().await.unwrap();
    assert!(other.query("web").await.unwrap().is_empty());
}

#[tokio::test]
async fn errors_keep_the_servers_code_and_message() {
    let server = TestServer::start().await;
    let client = client_for(&[server.addr]).await;
    let e = client.query("web@1.2.3.4").await.unwrap_err();
    assert!(matches!(e, Error::Role(_)), "caught before sending: {e}");
    assert!(
        e.to_string().contains("has more than three version parts"),
        "{e}"
    );

    let reg = client
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let clash = client
        .register("api@1.0.0", RegisterOptions::default().port(reg.port()))
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Some(Code::AlreadyExists));
    assert!(
        clash.to_string().contains("is held by web@1.0.0"),
        "{clash}"
    );

    let timeout = client
        .get_timeout("nobody", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(timeout.code(), Some(Code::DeadlineExceeded));
}

#[tokio::test]
async fn connect_fails_clearly_when_no_server_answers() {
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let result = SeaportClient::builder()
        .endpoint(unused.to_string())
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await;
    let e = result.err().expect("no server there");
    assert!(
        e.to_string()
            .contains(&format!("no Seaport server reachable at {unused}")),
        "{e}"
    );
}

#[tokio::test]
async fn after_a_restart_every_client_reasserts_only_its_own_registrations() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let first = client_for(&[addr]).await;
    let second = client_for(&[addr]).await;
    let watcher = client_for(&[addr]).await;
    let mut events = first.events();
    let a = first
        .register("web@1.2.3", RegisterOptions::default().meta("zone", "a"))
        .await
        .unwrap();
    let b = second
        .register("web@1.3.0", RegisterOptions::default())
        .await
        .unwrap();
    let gone = client_for(&[addr]).await;
    gone.register("web@0.9.0", RegisterOptions::default())
        .await
        .unwrap();
    gone.close().await;
    let mut watch = watcher.watch("web").unwrap();
    assert_eq!(snapshot(&mut watch).await.len(), 2);

    server.stop().await;
    let server = TestServer::start_on(addr, test_config()).await;
    until_event(&mut events, |e| *e == ClientEvent::SessionLost).await;
    assert_eq!(
        until_event(&mut events, |e| matches!(e, ClientEvent::Reasserted { .. })).await,
        ClientEvent::Reasserted { count: 1 }
    );

    // The watcher is reset and sees both registrations again, whenever each
    // client gets to re-assert.
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let e = next(&mut watch).await.unwrap();
        match e.kind {
            EventKind::Reset => seen.clear(),
            EventKind::Existing | EventKind::Registered => {
                seen.insert(e.service.unwrap().id);
            }
            _ => {}
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, [a.id().to_string(), b.id().to_string()].into());

    let mut raw = server.client().await;
    let back = query(&mut raw, "web").await;
    let mut found: Vec<_> = back.iter().map(|s| (s.id.clone(), s.port)).collect();
    found.sort();
    let mut want = vec![
        (a.id().to_string(), u32::from(a.port())),
        (b.id().to_string(), u32::from(b.port())),
    ];
    want.sort();
    assert_eq!(
        found, want,
        "same ids and ports; nothing of the client that exited"
    );
    assert_eq!(
        back.iter().find(|s| s.id == a.id()).unwrap().metadata["zone"],
        "a"
    );
}

#[tokio::test]
async fn a_network_cut_shorter_than_the_ttl_loses_nothing_and_frees_nothing() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let watcher = client_for(&[server.addr]).await;
    let mut watch = watcher.watch("web").unwrap();
    assert!(snapshot(&mut watch).await.is_empty());
    let client = client_for(&[proxy.addr]).await;
    let mut events = client.events();
    let first = client
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    assert_eq!(next(&mut watch).await.unwrap().kind, EventKind::Registered);

    proxy.cut();
    let mut seen = Vec::new();
    loop {
        let e = next(&mut events).await;
        let done = matches!(e, ClientEvent::Connected { .. });
        seen.push(e);
        if done {
            break;
        }
    }
    assert!(
        matches!(seen[0], ClientEvent::Disconnected { .. }),
        "{seen:?}"
    );
    assert!(
        !seen.contains(&ClientEvent::SessionLost)
            && seen.contains(&ClientEvent::Resumed {
                server: proxy.addr.to_string()
            }),
        "the session was resumed: {seen:?}"
    );

    // The next event the watcher sees is this one: no free came before it.
    let second = client
        .register("web@2.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let e = next(&mut watch).await.unwrap();
    assert_eq!(
        (e.kind, e.service.unwrap().id),
        (EventKind::Registered, second.id().to_string())
    );
    assert_eq!(client.query("web").await.unwrap().len(), 2);
    assert!(
        client
            .query("web")
            .await
            .unwrap()
            .iter()
            .any(|s| s.id == first.id())
    );
}

#[tokio::test]
async fn the_client_fails_over_to_the_next_server() {
    let a = TestServer::start().await;
    let b = TestServer::start().await;
    let client = client_for(&[a.addr, b.addr]).await;
    // Each client starts at a random one of its servers.
    let (current, other) = if client.server() == Some(a.addr.to_string()) {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(client.server(), Some(current.addr.to_string()));
    let mut events = client.events();
    let web = client
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();

    current.stop().await;
    let connected = until_event(&mut events, |e| matches!(e, ClientEvent::Connected { .. })).await;
    assert!(
        matches!(connected, ClientEvent::Connected { ref server, .. } if *server == other.addr.to_string()),
        "{connected:?}"
    );
    let mut raw = other.client().await;
    eventually("the registration re-asserted on b", || {
        let mut raw = raw.clone();
        async move { query(&mut raw, "web").await.len() == 1 }
    })
    .await;
    assert_eq!(query(&mut raw, "web").await[0].port, u32::from(web.port()));
}

#[tokio::test]
async fn the_client_fails_over_to_servers_it_learned_from_seaport_registrations() {
    let a = TestServer::start().await;
    let b = TestServer::start().await;
    // An operator tells a about b, as seaportd tells about itself.
    let mut raw_a = a.client().await;
    let s = open(&mut raw_a, 0).await;
    let b_entry = seaport::pb::RegisterRequest {
        host: "127.0.0.1".into(),
        port: u32::from(b.addr.port()),
        ..register_request(&s, "seaport@0.1.0")
    };
    register_with(&mut raw_a, b_entry).await;

    let client = client_for(&[a.addr]).await;
    // A session notices at once that its server went; a client that only
    // reads moves on at its next read (client/tests/sessions.rs).
    client
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let mut events = client.events();
    a.stop().await;
    let connected = until_event(&mut events, |e| matches!(e, ClientEvent::Connected { .. })).await;
    assert!(
        matches!(connected, ClientEvent::Connected { ref server, .. } if *server == b.addr.to_string()),
        "{connected:?}"
    );
}

#[tokio::test]
async fn a_watch_survives_a_restart_and_is_reset() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let client = client_for(&[addr]).await;
    let mut watch = client.watch("web").unwrap();
    assert!(snapshot(&mut watch).await.is_empty());
    let web = client
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let e = next(&mut watch).await.unwrap();
    assert_eq!(
        (e.kind, e.service.unwrap().id),
        (EventKind::Registered, web.id().to_string())
    );

    server.stop().await;
    let _server = TestServer::start_on(addr, test_config()).await;
    // The restarted server cannot resume the watch: the client passes on
    // its RESET, then the snapshot (with the re-asserted service, now or soon).
    loop {
        let e = next(&mut watch).await.unwrap();
        if e.kind == EventKind::Reset {
            break;
        }
    }
    let mut seen = snapshot(&mut watch)
        .await
        .into_iter()
        .map(|s| s.id)
        .collect::<Vec<_>>();
    while seen.is_empty() {
        let e = next(&mut watch).await.unwrap();
        if e.kind == EventKind::Registered {
            seen.push(e.service.unwrap().id);
        }
    }
    assert_eq!(seen, [web.id().to_string()]);
}

#[tokio::test]
async fn a_watch_with_a_bad_pattern_is_refused_at_once() {
    let server = TestServer::start().await;
    let client = client_for(&[server.addr]).await;
    let e = client.watch("web@>>1").err().expect("refused");
    assert!(e.to_string().contains("has two operators"), "{e}");
}

#[tokio::test]
async fn the_catalog_answers_locally_and_balances() {
    let server = TestServer::start().await;
    let client = client_for(&[server.addr]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            client
                .register("web@1.0.0", RegisterOptions::default())
                .await
                .unwrap(),
        );
    }
    let catalog = client.catalog("web@1.x").await.unwrap();
    assert_eq!(catalog.len(), 3);
    let picks: std::collections::HashSet<_> = (0..3).map(|_| catalog.pick().unwrap().id).collect();
    assert_eq!(picks.len(), 3, "round robin visits every instance");
    let failed = ids[0].id().to_string();
    for _ in 0..6 {
        assert_ne!(catalog.pick_excluding(&[&failed]).unwrap().id, failed);
    }
    assert!(catalog.pick_random().is_some());
    for _ in 0..6 {
        assert_ne!(
            catalog.pick_random_excluding(&[&failed]).unwrap().id,
            failed
        );
    }
    assert_eq!(catalog.service(&failed).unwrap().id, failed);
    assert!(catalog.service("no-such-id").is_none());
    // The least loaded wins; equal loads go round robin.
    let busy = ids[1].id().to_string();
    let load = |s: &seaport_client::Service| usize::from(s.id == busy);
    let least: std::collections::HashSet<_> = (0..4)
        .map(|_| catalog.pick_least(&[], load).unwrap().id)
        .collect();
    assert_eq!(least.len(), 2, "the two idle instances share the load");
    assert!(!least.contains(&busy), "the busy instance is not chosen");
    assert!(
        catalog
            .pick_least(&[&failed, ids[2].id()], load)
            .is_some_and(|s| s.id == busy)
    );

    let updated = ids[1].id().to_string();
    client
        .update(
            &updated,
            BTreeMap::from([("zone".into(), "b".into())]),
            false,
        )
        .await
        .unwrap();
    eventually("the catalog to follow the update", || {
        let zone = catalog
            .services()
            .into_iter()
            .find(|s| s.id == updated)
            .and_then(|s| s.metadata.get("zone").cloned());
        async move { zone.as_deref() == Some("b") }
    })
    .await;
    ids.remove(0).free().await.unwrap();
    eventually("the catalog to drop the freed instance", || {
        let n = catalog.len();
        async move { n == 2 }
    })
    .await;
}

#[tokio::test]
async fn bind_skips_a_port_taken_outside_the_registry() {
    let squatter = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let mut config = test_config();
    config.limits.port_range = taken..=taken + 1;
    let server = TestServer::start_with(config).await;
    let client = client_for(&[server.addr]).await;
    let (listener, reg) = client
        .bind("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    assert_eq!(reg.port(), taken + 1);
    assert_eq!(listener.local_addr().unwrap().port(), taken + 1);
    let mut raw = server.client().await;
    let web = query(&mut raw, "web").await;
    assert_eq!(web.len(), 1, "the registration on the taken port was freed");
}

#[tokio::test]
async fn a_guard_frees_its_registration_when_dropped() {
    let server = TestServer::start().await;
    let client = client_for(&[server.addr]).await;
    let guard = client
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap()
        .free_on_drop();
    assert_eq!(guard.registration().service().name, "web");
    drop(guard);
    eventually("the guarded registration to be freed", || {
        let client = client.clone();
        async move { client.query("web").await.unwrap().is_empty() }
    })
    .await;
}

#[tokio::test]
async fn closing_the_client_ends_its_session() {
    let server = TestServer::start().await;
    let client = client_for(&[server.addr]).await;
    client
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    client.close().await;
    let mut raw = server.client().await;
    assert!(query(&mut raw, "web").await.is_empty());
}

#[tokio::test]
async fn a_get_started_before_the_register_resolves_when_it_happens() {
    let server = TestServer::start().await;
    let client = client_for(&[server.addr]).await;
    let waiter = client_for(&[server.addr]).await;
    let get = tokio::spawn(async move { waiter.get("web@1.2.x").await });
    tokio::task::yield_now().await;
    let web = client
        .register("web@1.2.9", RegisterOptions::default())
        .await
        .unwrap();
    let found = tokio::time::timeout(PATIENCE, get)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(found[0].id, web.id());
}

/// docs/client-scenario.md, steps 1 to 6, as every language's client runs it
/// (step 7, mTLS, is in cli/tests/tls.rs).
#[tokio::test]
async fn the_shared_client_scenario() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let client = client_for(&[addr]).await;
    let other = client_for(&[addr]).await;

    // 1. register with an assigned port and metadata
    let reg = client
        .register("web@1.2.3", RegisterOptions::default().meta("zone", "a"))
        .await
        .unwrap();
    assert!((10000..=65535).contains(&reg.port()));
    // 2. another client's get finds it; web@2.x finds nothing
    assert_eq!(other.get("web@1.2.x").await.unwrap()[0].id, reg.id());
    assert!(other.query("web@2.x").await.unwrap().is_empty());
    // 3. a watch sees the snapshot, an update, then the free
    let mut watch = other.watch("web").unwrap();
    assert_eq!(snapshot(&mut watch).await.len(), 1);
    client
        .update(
            reg.id(),
            BTreeMap::from([("zone".into(), "b".into())]),
            false,
        )
        .await
        .unwrap();
    let updated = next(&mut watch).await.unwrap();
    assert_eq!(
        (
            updated.kind,
            updated.service.unwrap().metadata["zone"].as_str()
        ),
        (EventKind::Updated, "b")
    );
    reg.clone().free().await.unwrap();
    assert_eq!(next(&mut watch).await.unwrap().kind, EventKind::Freed);
    // 4. a get started before the registration completes once it exists
    let waiter = other.clone();
    let pending = tokio::spawn(async move { waiter.get("api@1.x").await });
    let api = client
        .register("api@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(PATIENCE, pending)
            .await
            .unwrap()
            .unwrap()
            .unwrap()[0]
            .id,
        api.id()
    );
    // 5. a restart on the same address: the registration comes back with its id and port
    server.stop().await;
    let _server = TestServer::start_on(addr, test_config()).await;
    eventually("api to come back", || {
        let client = client.clone();
        let want = (api.id().to_string(), api.port());
        async move {
            client
                .query("api")
                .await
                .is_ok_and(|s| s.len() == 1 && (s[0].id.clone(), s[0].port) == want)
        }
    })
    .await;
    // 6. a bad range: invalid argument with the reason
    let bad = client
        .get_timeout("web@1.2.3.4", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        bad.to_string()
            .contains("\"1.2.3.4\" has more than three version parts"),
        "{bad}"
    );
}

#[tokio::test]
async fn update_replaces_merges_and_removes_keys() {
    let server = TestServer::start().await;
    let client = client_for(&[server.addr]).await;
    let meta = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let web = client
        .register(
            "web@1.0.0",
            RegisterOptions::default()
                .meta("zone", "a")
                .meta("tier", "1"),
        )
        .await
        .unwrap();
    let merged = client
        .update(web.id(), meta(&[("zone", "b"), ("rack", "7")]), true)
        .await
        .unwrap();
    assert_eq!(
        merged.metadata,
        meta(&[("rack", "7"), ("tier", "1"), ("zone", "b")])
            .into_iter()
            .collect()
    );
    let removed = client
        .merge_metadata(web.id(), meta(&[("new", "x")]), ["tier", "rack"])
        .await
        .unwrap();
    assert_eq!(
        removed.metadata,
        meta(&[("new", "x"), ("zone", "b")]).into_iter().collect()
    );
    let replaced = client
        .update(web.id(), meta(&[("only", "this")]), false)
        .await
        .unwrap();
    assert_eq!(
        replaced.metadata,
        meta(&[("only", "this")]).into_iter().collect()
    );
    assert_eq!(
        client.query("web").await.unwrap()[0].metadata,
        replaced.metadata
    );
}

/// A watch whose connection is cut resumes from the last revision it saw:
/// the changes made meanwhile come, with no RESET and no snapshot again.
#[tokio::test]
async fn a_cut_watch_resumes_from_its_last_revision() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let reader = client_for(&[proxy.addr]).await;
    let writer = client_for(&[server.addr]).await;
    let first = writer
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let mut watch = reader.watch("web").unwrap();
    assert_eq!(snapshot(&mut watch).await.len(), 1);
    proxy.cut();
    let second = writer
        .register("web@1.0.1", RegisterOptions::default())
        .await
        .unwrap();
    let first_id = first.id().to_string();
    first.free().await.unwrap();
    let e = next(&mut watch).await.unwrap();
    assert_eq!(
        (e.kind, e.service.unwrap().id),
        (EventKind::Registered, second.id().to_string())
    );
    let e = next(&mut watch).await.unwrap();
    assert_eq!(
        (e.kind, e.service.unwrap().id, e.reason),
        (EventKind::Freed, first_id, Some(seaport::FreeReason::Owner))
    );
}
