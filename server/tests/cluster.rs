//! Several seaportd on one real three-member etcd cluster: one registry
//! with no single point of failure. Built with the `etcd` feature only
//! (scripts/test turns it on).
#![cfg(feature = "etcd")]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use seaport::pb::{self, registry_client::RegistryClient};
use seaport_client::{ClientEvent, RegisterOptions, SeaportClient};
use seaport_server::Config;
use seaport_server::config::{EtcdConfig, StoreConfig};
use seaport_testkit::admin::{scrape, value};
use seaport_testkit::{
    EtcdCluster, PATIENCE, Proxy, Seaportd, TestServer, assert_status, eventually, open, query,
    register, test_config,
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A test configuration on `etcd`.
fn on(etcd: &EtcdCluster) -> Config {
    Config {
        store: StoreConfig::Etcd(EtcdConfig {
            endpoints: etcd.endpoints(),
            prefix: "/seaport".into(),
            ca: None,
            cert: None,
            key: None,
        }),
        ..test_config()
    }
}

/// A seaportd on `etcd`, once it serves.
async fn server(etcd: &EtcdCluster) -> TestServer {
    let server = TestServer::start_with(on(etcd)).await;
    let channel = server.channel().await;
    eventually("the server loads the registry from etcd", async || {
        serving(&channel).await
    })
    .await;
    server
}

/// Whether grpc.health.v1 says SERVING.
async fn serving(channel: &Channel) -> bool {
    let answer = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await;
    answer.is_ok_and(|a| a.into_inner().status == 1)
}

/// Whether the server at `addr` answers SERVING.
async fn serves(addr: &str) -> bool {
    match Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
    {
        Ok(channel) => serving(&channel).await,
        Err(_) => false,
    }
}

/// A raw Watch of `pattern` from `since`.
async fn watch(
    client: &mut RegistryClient<Channel>,
    pattern: &str,
    since: u64,
) -> tonic::Streaming<pb::WatchEvent> {
    client
        .watch(pb::WatchRequest {
            pattern: pattern.into(),
            since_revision: since,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// (kind, id, revision) of the next `count` change events, markers skipped.
async fn changes(
    stream: &mut tonic::Streaming<pb::WatchEvent>,
    count: usize,
) -> Vec<(i32, String, u64)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let event = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the watch goes on");
        if let Some(service) = event.service
            && event.kind != pb::watch_event::Kind::Existing as i32
        {
            seen.push((event.kind, service.id, event.revision));
        }
    }
    seen
}

#[tokio::test]
async fn three_servers_serve_one_registry_in_one_order() {
    let etcd = EtcdCluster::start(3).await;
    let servers = [
        server(&etcd).await,
        server(&etcd).await,
        server(&etcd).await,
    ];
    let mut clients = Vec::new();
    let mut watches = Vec::new();
    for s in &servers {
        let mut client = s.client().await;
        watches.push(watch(&mut client, "web", 0).await);
        clients.push(client);
    }
    // A session opened on the first server is good on every server.
    let session = open(&mut clients[0], 10_000).await;
    let web = register(&mut clients[0], &session, "web@1.0.0").await;
    let third = &mut clients[2];
    eventually(
        "the third server sees the first's registration",
        async || query(third, "web").await.len() == 1,
    )
    .await;
    clients[1]
        .update(pb::UpdateRequest {
            session_id: session.id.clone(),
            id: web.id.clone(),
            metadata: [("zone".to_string(), "b".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    clients[2]
        .free(pb::FreeRequest {
            session_id: session.id.clone(),
            id: web.id.clone(),
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    for stream in &mut watches {
        seen.push(changes(stream, 3).await);
    }
    let kinds: Vec<i32> = seen[0].iter().map(|(k, _, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            pb::watch_event::Kind::Registered as i32,
            pb::watch_event::Kind::Updated as i32,
            pb::watch_event::Kind::Freed as i32
        ]
    );
    assert_eq!(seen[0], seen[1], "same events, same revisions");
    assert_eq!(seen[0], seen[2], "same events, same revisions");
}

#[tokio::test]
async fn a_thousand_concurrent_registrations_on_one_host_never_share_a_port() {
    let etcd = EtcdCluster::start(3).await;
    let mut config = on(&etcd);
    // Few ports for many registrations: servers choosing at random from
    // what they have heard of collide, and etcd's transaction settles it.
    config.limits.port_range = 20000..=21499;
    let servers = [
        TestServer::start_with(config.clone()).await,
        TestServer::start_with(config.clone()).await,
        TestServer::start_with(config).await,
    ];
    let mut sessions = Vec::new();
    for i in 0..30 {
        let mut client = servers[i % 3].client().await;
        eventually("the server serves", async || {
            serving(&servers[i % 3].channel().await).await
        })
        .await;
        sessions.push((open(&mut client, 30_000).await, client));
    }
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let (session, client) = &sessions[i % sessions.len()];
        let mut client = client.clone();
        let request = pb::RegisterRequest {
            session_id: session.id.clone(),
            role: format!("svc{i}@1.0.0"),
            host: "10.1.1.1".into(),
            ..Default::default()
        };
        calls.spawn(async move { client.register(request).await.map(|r| r.into_inner()) });
    }
    let mut ports = BTreeSet::new();
    while let Some(answer) = calls.join_next().await {
        let service = answer.unwrap().expect("registered").service.unwrap();
        assert!(
            ports.insert(service.port),
            "port {} given twice",
            service.port
        );
    }
    eprintln!(
        "1000 registrations over 3 servers in {:?}",
        started.elapsed()
    );
    // Each server answers once its own index has the write; the others
    // follow within a moment.
    for server in &servers {
        let mut client = server.client().await;
        eventually("every server sees every registration", async || {
            let held: BTreeSet<u32> = query(&mut client, "")
                .await
                .iter()
                .filter(|s| s.host == "10.1.1.1")
                .map(|s| s.port)
                .collect();
            held.len() == 1000
        })
        .await;
    }
}

#[tokio::test]
async fn clients_of_a_killed_server_resume_elsewhere_and_nothing_is_freed() {
    let etcd = EtcdCluster::start(3).await;
    let binary = env!("CARGO_BIN_EXE_seaportd");
    let args = |listen: &str| {
        vec![
            "--store".to_string(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            etcd.endpoints_flag(),
            "--min-ttl".into(),
            "1s".into(),
            "--listen".into(),
            listen.to_string(),
        ]
    };
    // The others' addresses, free now: the clients try them, find nothing,
    // and all settle on the first server.
    let spare = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    };
    let (b_addr, c_addr) = (spare(), spare());
    let a = Seaportd::start(binary, "", &args("127.0.0.1:0")).await;
    let a_addr = a.addr.to_string();
    eventually("the first server serves", async || serves(&a_addr).await).await;
    let mut clients = Vec::new();
    let mut streams = Vec::new();
    for i in 0..100 {
        let client = SeaportClient::builder()
            .endpoint(&a_addr)
            .endpoint(&b_addr)
            .endpoint(&c_addr)
            .ttl(Duration::from_secs(3))
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
            .unwrap();
        assert_eq!(client.server().as_deref(), Some(a_addr.as_str()));
        streams.push(client.events());
        let registration = client
            .register(
                &format!("svc@1.0.{i}"),
                RegisterOptions::default().port(30000 + i),
            )
            .await
            .unwrap();
        clients.push((client, registration));
    }
    let b = Seaportd::start(binary, "", &args(&b_addr)).await;
    let c = Seaportd::start(binary, "", &args(&c_addr)).await;
    for server in [&b, &c] {
        let addr = server.addr.to_string();
        eventually("the other servers serve", async || serves(&addr).await).await;
    }
    let mut watcher = client_of(&c.addr.to_string()).await;
    let mut freed = watch(&mut watcher, "svc", 0).await;

    let killed = Instant::now();
    a.kill().await;
    let mut resumed = tokio::task::JoinSet::new();
    for events in streams {
        let mut events = Box::pin(events);
        let a_addr = a_addr.clone();
        resumed.spawn(async move {
            loop {
                match tokio::time::timeout(PATIENCE, events.next()).await {
                    Ok(Some(ClientEvent::Connected { server, .. })) if server != a_addr => {
                        return Ok(killed.elapsed());
                    }
                    Ok(Some(ClientEvent::SessionLost)) => return Err("session lost"),
                    Ok(Some(_)) => {}
                    _ => return Err("no resume in time"),
                }
            }
        });
    }
    let mut times = Vec::new();
    while let Some(time) = resumed.join_next().await {
        times.push(time.unwrap().expect("every client resumes its session"));
    }
    times.sort();
    let (p50, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
    eprintln!("failover of 100 sessions: p50 {p50:?}, p99 {p99:?}");
    assert!(p99 < Duration::from_secs(2), "p99 {p99:?}");

    // Past the sessions' ttl: had a lease lapsed, its registration would go.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut on_b = client_of(&b.addr.to_string()).await;
    let left = query(&mut on_b, "svc").await;
    assert_eq!(left.len(), 100, "nothing lost");
    let quiet = tokio::time::timeout(Duration::from_millis(200), freed.message()).await;
    let mut events = Vec::new();
    if let Ok(Ok(Some(event))) = quiet {
        events.push(event);
    }
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(Duration::from_millis(100), freed.message()).await
    {
        events.push(event);
    }
    assert!(
        events
            .iter()
            .all(|e| e.kind != pb::watch_event::Kind::Freed as i32),
        "the watcher saw no FREED: {events:?}"
    );
    drop((b, c, clients));
}

/// A raw client of the server at `addr`.
async fn client_of(addr: &str) -> RegistryClient<Channel> {
    RegistryClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn etcd_losing_members_refuses_writes_serves_reads_and_loses_nothing() {
    let mut etcd = EtcdCluster::start(3).await;
    let server = server(&etcd).await;
    let mut client = server.client().await;
    let mut session = open(&mut client, 10_000).await;
    register(&mut client, &session, "web@1.0.0").await;

    etcd.stop_member(0);
    eventually("writes go on with one member down", async || {
        client
            .register(pb::RegisterRequest {
                session_id: session.id.clone(),
                role: "web@1.1.0".into(),
                ..Default::default()
            })
            .await
            .is_ok()
    })
    .await;

    etcd.stop_member(1);
    let channel = server.channel().await;
    eventually("health says NOT_SERVING without a quorum", async || {
        !serving(&channel).await
    })
    .await;
    let started = Instant::now();
    let refused = client
        .register(pb::RegisterRequest {
            session_id: session.id.clone(),
            role: "web@1.2.0".into(),
            ..Default::default()
        })
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert_status(refused, Code::Unavailable, "etcd");
    assert_eq!(query(&mut client, "web").await.len(), 2, "reads are served");
    session.ping(1).await.unwrap();

    etcd.start_member(0).await;
    etcd.start_member(1).await;
    eventually("health says SERVING again", async || {
        serving(&channel).await
    })
    .await;
    eventually("writes resume", async || {
        session.ping(2).await.is_ok()
            && client
                .register(pb::RegisterRequest {
                    session_id: session.id.clone(),
                    role: "web@1.3.0".into(),
                    ..Default::default()
                })
                .await
                .is_ok()
    })
    .await;
    assert_eq!(
        query(&mut client, "web").await.len(),
        3,
        "every registration is there"
    );
}

#[tokio::test]
async fn a_watch_resumes_by_revision_on_another_server() {
    let etcd = EtcdCluster::start(3).await;
    let (a, b) = (server(&etcd).await, server(&etcd).await);
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    let session = open(&mut on_a, 10_000).await;
    let mut first_watch = watch(&mut on_a, "web", 0).await;
    let first = register(&mut on_a, &session, "web@1.0.0").await;
    let seen = changes(&mut first_watch, 1).await;
    let since = seen[0].2;
    drop(first_watch);
    let second = register(&mut on_a, &session, "web@2.0.0").await;
    on_a.free(pb::FreeRequest {
        session_id: session.id.clone(),
        id: first.id.clone(),
    })
    .await
    .unwrap();
    let mut resumed = watch(&mut on_b, "web", since).await;
    let replay = changes(&mut resumed, 2).await;
    assert_eq!(
        replay
            .iter()
            .map(|(k, id, _)| (*k, id.clone()))
            .collect::<Vec<_>>(),
        [
            (pb::watch_event::Kind::Registered as i32, second.id),
            (pb::watch_event::Kind::Freed as i32, first.id)
        ],
        "exactly the changes after the revision"
    );
    assert!(replay[0].2 > since);
}

#[tokio::test]
async fn a_server_is_not_trusted_before_it_has_loaded_the_registry() {
    let mut etcd = EtcdCluster::start(3).await;
    for i in 0..3 {
        etcd.stop_member(i);
    }
    let server = TestServer::start_with(on(&etcd)).await;
    let mut client = server.client().await;
    assert!(!serving(&server.channel().await).await, "NOT_SERVING");
    let refused = client.query(pb::QueryRequest::default()).await;
    assert_status(refused, Code::Unavailable, "still loading");
    for i in 0..3 {
        etcd.start_member(i).await;
    }
    let channel = server.channel().await;
    eventually("it serves once loaded", async || serving(&channel).await).await;
    eventually("it registers itself once loaded", async || {
        query(&mut client, "seaport").await.len() == 1
    })
    .await;
}

/// With the etcd store, /metrics times each request to etcd, counts the
/// keep-alive stream's failures, and shows the index's lag behind etcd.
#[tokio::test]
async fn metrics_time_etcd_requests_and_count_keep_alive_failures() {
    let mut etcd = EtcdCluster::start(1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let server = TestServer::serve(listener, Some(admin), on(&etcd));
    let channel = server.channel().await;
    eventually("the server loads the registry from etcd", async || {
        serving(&channel).await
    })
    .await;
    let mut client = RegistryClient::new(channel);
    let session = open(&mut client, 5_000).await;
    register(&mut client, &session, "web@1.0.0").await;

    let count = |scrape, request| {
        value(
            scrape,
            "seaport_etcd_request_duration_seconds_count",
            &[("request", request)],
        )
    };
    let scraped = scrape(admin_addr).await;
    assert!(
        count(&scraped, "txn").unwrap() >= 2.0,
        "a session's record and a registration"
    );
    assert!(count(&scraped, "lease_grant").unwrap() >= 1.0);
    assert!(count(&scraped, "range").unwrap() >= 1.0, "the load");
    eventually("the index to catch up with etcd", async || {
        value(&scrape(admin_addr).await, "seaport_etcd_revision_lag", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(
        value(&scraped, "seaport_etcd_keep_alive_failures_total", &[]),
        Some(0.0)
    );

    etcd.stop_member(0);
    eventually(
        "the keep-alive stream's failure to be counted",
        async || {
            value(
                &scrape(admin_addr).await,
                "seaport_etcd_keep_alive_failures_total",
                &[],
            )
            .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
}

/// In a cluster, the console's server page lists the other seaportd that
/// share its etcd, as their own registrations announce them.
#[tokio::test]
async fn the_console_lists_the_other_servers_of_the_cluster() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let etcd = EtcdCluster::start(1).await;
    let other = server(&etcd).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let console = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let console_addr = console.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(seaport_server::run_with_console(
        listener,
        None,
        Some(console),
        on(&etcd),
        async {
            let _ = stopped.await;
        },
    ));
    // Until the server has loaded the registry, the console answers 503,
    // as a page would retry.
    let want = format!("\"address\":\"{}\"", other.addr);
    eventually("the console to list the other server", async || {
        let mut page = tokio::net::TcpStream::connect(console_addr).await.unwrap();
        page.write_all(b"GET /api/events HTTP/1.1\r\nhost: seaport\r\n\r\n")
            .await
            .unwrap();
        let mut read = String::new();
        let mut buf = vec![0u8; 16 * 1024];
        let found = tokio::time::timeout(Duration::from_secs(1), async {
            while !read.contains(&want) {
                match page.read(&mut buf).await {
                    Ok(n) if n > 0 => read.push_str(&String::from_utf8_lossy(&buf[..n])),
                    _ => return false,
                }
            }
            true
        })
        .await;
        found == Ok(true)
    })
    .await;
}

/// A seaportd cut off from etcd for longer than its own lease loses its
/// `seaport@` registration, as every server sees; once it reaches etcd
/// again it registers itself anew.
#[tokio::test]
async fn a_server_whose_own_lease_lapsed_registers_itself_again() {
    let etcd = EtcdCluster::start(1).await;
    let member: std::net::SocketAddr = etcd.endpoints()[0]
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let path = Proxy::start(member).await;
    let mut cut_off = on(&etcd);
    if let StoreConfig::Etcd(etcd) = &mut cut_off.store {
        etcd.endpoints = vec![format!("http://{}", path.addr)];
    }
    let a = TestServer::start_with(cut_off).await;
    let b = server(&etcd).await;
    let mut from_b = b.client().await;
    let a_listed =
        |services: Vec<pb::Service>| services.iter().any(|s| s.port == u32::from(a.addr.port()));
    eventually("b to list a", async || {
        a_listed(query(&mut from_b, "seaport").await)
    })
    .await;

    path.silence();
    // Its lease is 10 s: etcd expires it while a cannot keep it.
    tokio::time::timeout(Duration::from_secs(20), async {
        while a_listed(query(&mut from_b, "seaport").await) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a's registration to lapse while it cannot reach etcd");

    path.heal();
    eventually("a to register itself again", async || {
        a_listed(query(&mut from_b, "seaport").await)
    })
    .await;
}
