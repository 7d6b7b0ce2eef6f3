//! Port assignment: distinct, in range, conflicts refused, quarantine kept.

use std::collections::HashSet;
use std::time::Duration;

use seaport::pb;
use tonic::Code;

use seaport_testkit::*;

#[tokio::test]
async fn ten_thousand_registrations_on_one_host_get_distinct_ports_in_range() {
    let mut config = test_config();
    config.limits.port_range = 20000..=39999;
    config.limits.max_registrations_per_session = 20_000;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut client = client.clone();
        let session = s.id.clone();
        tasks.spawn(async move {
            let mut ports = Vec::new();
            for i in 0..1250 {
                let request = pb::RegisterRequest {
                    session_id: session.clone(),
                    role: format!("svc-{worker}-{i}@1.0.0"),
                    ..Default::default()
                };
                ports.push(
                    client
                        .register(request)
                        .await
                        .unwrap()
                        .into_inner()
                        .service
                        .unwrap()
                        .port,
                );
            }
            ports
        });
    }
    let mut seen = HashSet::new();
    while let Some(ports) = tasks.join_next().await {
        for port in ports.unwrap() {
            assert!((20000..=39999).contains(&port), "port {port} out of range");
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }
    assert_eq!(seen.len(), 10_000);
}

#[tokio::test]
async fn an_explicit_port_held_on_the_same_host_is_refused_naming_the_holder() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let web = register(&mut client, &s, "web@1.2.3").await;
    let clash = client
        .register(pb::RegisterRequest {
            port: web.port,
            ..register_request(&s, "api@2.0.0")
        })
        .await;
    assert_status(
        clash,
        Code::AlreadyExists,
        &format!("port {} on 127.0.0.1 is held by web@1.2.3", web.port),
    );
    let elsewhere = pb::RegisterRequest {
        port: web.port,
        host: "10.9.9.9".into(),
        ..register_request(&s, "api@2.0.0")
    };
    assert_eq!(
        register_with(&mut client, elsewhere).await.port,
        web.port,
        "another host may use it"
    );
}

#[tokio::test]
async fn a_freed_port_is_quarantined_and_an_exhausted_range_says_so() {
    let mut config = test_config();
    config.limits.port_range = 20000..=20000;
    config.limits.port_quarantine = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let a = register(&mut client, &s, "a").await;
    assert_eq!(a.port, 20000);
    let full = client.register(register_request(&s, "b")).await;
    assert_status(
        full,
        Code::ResourceExhausted,
        "no free port left on 127.0.0.1 in 20000-20000",
    );

    client
        .free(pb::FreeRequest {
            session_id: s.id.clone(),
            id: a.id,
        })
        .await
        .unwrap();
    let quarantined = client.register(register_request(&s, "b")).await;
    assert_status(quarantined, Code::ResourceExhausted, "no free port left");
    let explicit = register_with(
        &mut client,
        pb::RegisterRequest {
            port: 20000,
            ..register_request(&s, "c")
        },
    )
    .await;
    assert_eq!(explicit.port, 20000, "quarantine only steers assignment");
    client
        .free(pb::FreeRequest {
            session_id: s.id.clone(),
            id: explicit.id,
        })
        .await
        .unwrap();

    eventually("the quarantine to pass", || {
        let mut client = client.clone();
        let request = register_request(&s, "d");
        async move { client.register(request).await.is_ok() }
    })
    .await;
}
