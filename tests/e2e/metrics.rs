//! /metrics on the admin port, read as Prometheus reads it.

use seaport::pb;
use seaport_testkit::admin::{scrape, value};
use seaport_testkit::{TestServer, eventually, open, register, test_config};

#[tokio::test]
async fn metrics_count_rpcs_sessions_registrations_and_waiters() {
    let server = TestServer::start_with_admin(test_config()).await;
    let admin_addr = server.admin.unwrap();
    let mut client = server.client().await;
    let session = open(&mut client, 10_000).await;
    register(&mut client, &session, "web@1.0.0").await;
    let refused = client
        .register(pb::RegisterRequest {
            session_id: session.id.clone(),
            role: "Bad Name".into(),
            ..Default::default()
        })
        .await;
    assert!(refused.is_err());
    let mut watch = client
        .watch(pb::WatchRequest {
            pattern: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap();
    let mut waiting = client.clone();
    let get = tokio::spawn(async move {
        waiting
            .get(pb::GetRequest {
                pattern: "db".into(),
                ..Default::default()
            })
            .await
    });

    eventually("the Get to wait", async || {
        value(&scrape(admin_addr).await, "seaport_get_waiters", &[]) == Some(1.0)
    })
    .await;
    let metrics = scrape(admin_addr).await;
    let ok = |method| {
        value(
            &metrics,
            "seaport_rpcs_total",
            &[("method", method), ("code", "Ok")],
        )
    };
    assert_eq!(ok("Register"), Some(1.0));
    assert_eq!(ok("Heartbeat"), Some(1.0));
    assert_eq!(ok("Watch"), Some(1.0));
    assert_eq!(
        value(
            &metrics,
            "seaport_rpcs_total",
            &[("method", "Register"), ("code", "InvalidArgument")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &metrics,
            "seaport_rpc_duration_seconds_count",
            &[("method", "Register")]
        ),
        Some(2.0)
    );
    // The session, and the server's own.
    assert_eq!(value(&metrics, "seaport_sessions_open", &[]), Some(2.0));
    assert_eq!(
        value(&metrics, "seaport_sessions_opened_total", &[]),
        Some(1.0)
    );
    // web, and the server's own seaport@ registration.
    assert_eq!(
        value(
            &metrics,
            "seaport_registrations",
            &[("namespace", "default")]
        ),
        Some(2.0)
    );
    assert_eq!(value(&metrics, "seaport_watchers", &[]), Some(1.0));
    assert!(value(&metrics, "seaport_connections_total", &[]) >= Some(1.0));
    assert_eq!(
        value(&metrics, "seaport_port_range_size", &[]),
        Some(55536.0)
    );
    let held: f64 = metrics
        .samples
        .iter()
        .filter(|s| s.metric == "seaport_ports_held")
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => Some(v),
            _ => None,
        })
        .sum();
    assert_eq!(held, 2.0, "web's port and the server's own");

    session.close().await;
    let metrics = scrape(admin_addr).await;
    assert_eq!(
        value(&metrics, "seaport_sessions_closed_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &metrics,
            "seaport_registrations",
            &[("namespace", "default")]
        ),
        Some(1.0)
    );
    get.abort();
}
