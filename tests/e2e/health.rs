//! grpc.health.v1 and reflection, as probes and tools use them.

use std::time::Duration;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use seaport_testkit::*;

async fn status(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> ServingStatus {
    let r = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap();
    r.into_inner().status()
}

#[tokio::test]
async fn serving_after_start_and_not_serving_while_draining() {
    let mut config = test_config();
    config.drain_delay = Duration::from_secs(3);
    let mut server = TestServer::start_with(config).await;
    let mut health = HealthClient::new(server.channel().await);
    assert_eq!(status(&mut health, "").await, ServingStatus::Serving);
    assert_eq!(
        status(&mut health, "seaport.v1.Registry").await,
        ServingStatus::Serving
    );
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);

    server.begin_shutdown();
    eventually("NOT_SERVING during the drain", || {
        let mut health = health.clone();
        async move {
            status(&mut health, "").await == ServingStatus::NotServing
                && status(&mut health, "seaport.v1.Registry").await == ServingStatus::NotServing
        }
    })
    .await;
    server.stop().await;
}

/// Long streams end at shutdown, so calls in flight finish well within the
/// grace instead of holding the server for all of it.
#[tokio::test]
async fn shutdown_ends_open_watch_and_heartbeat_streams() {
    let mut config = test_config();
    config.shutdown_grace = Duration::from_secs(60);
    let mut server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let mut session = open(&mut client, 0).await;
    let mut watcher = crate::watch::watch(&mut client, "web", 0).await;
    watcher.snapshot().await;
    server.begin_shutdown();
    assert!(watcher.ended().await, "the watch ends");
    let told = session.next().await;
    assert!(
        matches!(
            told,
            Ok(Some(seaport::pb::heartbeat_response::Kind::Stopping(_)))
        ),
        "the session is told to move first: {told:?}"
    );
    assert!(
        matches!(session.next().await, Ok(None) | Err(_)),
        "the heartbeat ends"
    );
    // Waits at most PATIENCE (10s), far less than the 60s grace.
    server.stop().await;
}

/// Once the drain ends the listener closes, so a new client is refused at
/// once rather than left waiting for a server that will not answer, while
/// a call in flight may still finish within the grace.
#[tokio::test]
async fn after_the_drain_new_connections_are_refused_while_calls_finish() {
    let mut config = test_config();
    config.shutdown_grace = Duration::from_secs(5);
    let mut server = TestServer::start_with_admin(config).await;
    let addr = server.addr;
    let mut client = server.client().await;
    // Waits for a name no one registers: in flight until the grace ends.
    let get = tokio::spawn(async move {
        client
            .get(seaport::pb::GetRequest {
                pattern: "nosuch".into(),
                ..Default::default()
            })
            .await
    });
    eventually("the Get to wait at the server", async || {
        server.metric("seaport_get_waiters").await == Some(1.0)
    })
    .await;
    server.begin_shutdown();
    eventually("a new connection to be refused", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        server.is_running(),
        "refused while the server still waits for the call in flight"
    );
    get.abort();
    server.stop().await;
}

/// When the grace runs out the server is gone: a call still open then is
/// cut off with it, not left running against a server that has stopped.
#[tokio::test]
async fn calls_still_open_when_the_grace_runs_out_are_cut_off() {
    let mut config = test_config();
    config.shutdown_grace = Duration::from_millis(500);
    let server = TestServer::start_with_admin(config).await;
    let mut client = server.client().await;
    let get = tokio::spawn(async move {
        client
            .get(seaport::pb::GetRequest {
                pattern: "nosuch".into(),
                timeout_ms: 60_000,
                ..Default::default()
            })
            .await
    });
    eventually("the Get to wait at the server", async || {
        server.metric("seaport_get_waiters").await == Some(1.0)
    })
    .await;
    server.stop().await;
    let answer = tokio::time::timeout(PATIENCE, get)
        .await
        .expect("the call ends with the server")
        .unwrap();
    let status = answer.expect_err("no answer from a stopped server");
    assert_ne!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
}

/// The services a reflection client of `$version` lists.
macro_rules! listed_services {
    ($version:ident, $server:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut reflection = ServerReflectionClient::new($server.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let reply = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("{reply:?}")
        };
        list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
    }};
}

#[tokio::test]
async fn reflection_lists_the_registry_and_health_services() {
    let server = TestServer::start().await;
    let names = listed_services!(v1, server);
    assert!(
        names.contains(&"seaport.v1.Registry".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

/// Tools that speak only the older reflection (grpcui, Postman, older
/// grpcurl, Python's reflection client) see the same services.
#[tokio::test]
async fn reflection_v1alpha_lists_them_too() {
    let server = TestServer::start().await;
    let names = listed_services!(v1alpha, server);
    assert!(
        names.contains(&"seaport.v1.Registry".to_string()),
        "{names:?}"
    );
}

/// The status line of an HTTP/1.1 request to `addr`.
async fn http_status(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    let answer = admin::http(addr, method, path).await;
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn the_admin_port_answers_its_probe_paths_only() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(seaport_server::run_with_admin(
        listener,
        Some(admin),
        test_config(),
        async {
            let _ = stopped.await;
        },
    ));
    for (method, path, expected) in [
        ("GET", "/healthz", "HTTP/1.1 200 OK"),
        ("GET", "/readyz", "HTTP/1.1 200 OK"),
        ("HEAD", "/healthz", "HTTP/1.1 200 OK"),
        ("GET", "/healthy", "HTTP/1.1 404 Not Found"),
        ("GET", "/", "HTTP/1.1 404 Not Found"),
        ("POST", "/healthz", "HTTP/1.1 405 Method Not Allowed"),
        ("DELETE", "/readyz", "HTTP/1.1 405 Method Not Allowed"),
    ] {
        assert_eq!(
            http_status(admin_addr, method, path).await,
            expected,
            "{method} {path}"
        );
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
