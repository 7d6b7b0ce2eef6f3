//! What a hostile or careless client can do: nothing that stalls the
//! registry, outlives its limits, or touches what is not its own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message;
use prost::bytes::{Buf, BufMut};
use seaport::pb::{self, heartbeat_request::Kind as In};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

use seaport_testkit::*;

/// Passes already encoded messages through, so a test can send a request
/// it encoded once, outside the time it measures.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A client that sends encoded requests as they are.
async fn raw_client(server: &TestServer) -> tonic::client::Grpc<tonic::transport::Channel> {
    let mut grpc =
        tonic::client::Grpc::new(server.channel().await).max_encoding_message_size(usize::MAX);
    grpc.ready().await.unwrap();
    grpc
}

/// Sends `body`, an encoded request, to `method` of the registry.
async fn raw_call(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    method: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(body), path, Raw)
        .await
        .map(tonic::Response::into_inner)
}

/// A Register with `entries` metadata pairs and a session that does not
/// exist, encoded.
fn stuffed_register(entries: usize) -> Vec<u8> {
    pb::RegisterRequest {
        session_id: "no-such-session".into(),
        role: "web@1.0.0".into(),
        metadata: (0..entries)
            .map(|i| (format!("k{i:08}"), String::new()))
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Sessions that ping every 300 ms on a 1 s ttl; returns a receiver that
/// gets any FREED event of their registrations.
async fn lively_sessions(server: &TestServer, count: usize) -> tokio::sync::mpsc::Receiver<String> {
    let mut client = server.client().await;
    let mut watch = client
        .watch(pb::WatchRequest {
            pattern: "lively".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..count {
        let mut client = server.client().await;
        let mut session = open(&mut client, 1000).await;
        register(&mut client, &session, "lively@1.0.0").await;
        tokio::spawn(async move {
            for seq in 0.. {
                // A live client's cadence, not a wait for anything.
                tokio::time::sleep(Duration::from_millis(300)).await;
                if session.ping(seq).await.is_err() {
                    return;
                }
            }
        });
    }
    let (tx, rx) = tokio::sync::mpsc::channel(count);
    tokio::spawn(async move {
        while let Some(Ok(event)) = watch.next().await {
            if event.kind() == pb::watch_event::Kind::Freed {
                let _ = tx.send(event.service.unwrap_or_default().id).await;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_register_is_refused_at_once_and_sessions_live_on() {
    let huge = stuffed_register(300_000);
    let many = stuffed_register(60_000);
    let server = TestServer::start().await;
    let mut freed = lively_sessions(&server, 20).await;
    assert!(huge.len() > 3_000_000, "{} bytes", huge.len());
    let mut grpc = raw_client(&server).await;
    // The best of three, so that a busy test machine does not count.
    let mut fastest = Duration::MAX;
    for _ in 0..3 {
        let body = huge.clone();
        let started = Instant::now();
        let answer = raw_call(&mut grpc, "/seaport.v1.Registry/Register", body).await;
        fastest = fastest.min(started.elapsed());
        let status = answer.expect_err("refused");
        assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
        assert!(
            status.message().contains("the limit is: 1048576 bytes"),
            "{}",
            status.message()
        );
    }
    assert!(
        fastest < Duration::from_millis(50),
        "answered in {fastest:?}"
    );
    // Under the message size limit, the count is checked before anything
    // is built from the pairs.
    assert!(many.len() < 1024 * 1024);
    let status = raw_call(&mut grpc, "/seaport.v1.Registry/Register", many)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("metadata has 60000 entries; the limit is 64"),
        "{}",
        status.message()
    );
    // Waits out the sessions' 1s ttl: had the huge requests starved their
    // pings, they would have expired by now. What must not happen has no
    // event to wait for.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(freed.try_recv().is_err(), "no healthy session expired");
    assert_eq!(query(&mut server.client().await, "lively").await.len(), 20);
}

/// Every string an answer to a reader holds.
fn strings_of(service: &pb::Service, into: &mut Vec<String>) {
    into.extend([
        service.id.clone(),
        service.name.clone(),
        service.version.clone(),
        service.host.clone(),
        service.namespace.clone(),
        service.owner.clone(),
        service.create_revision.to_string(),
        service.mod_revision.to_string(),
    ]);
    for (k, v) in &service.metadata {
        into.extend([k.clone(), v.clone()]);
    }
}

#[tokio::test]
async fn a_stranger_holding_every_answer_can_do_nothing() {
    let server = TestServer::start().await;
    let mut owner = server.client().await;
    let session = open(&mut owner, 0).await;
    let web = register_with(
        &mut owner,
        pb::RegisterRequest {
            metadata: HashMap::from([("zone".into(), "a".into())]),
            ..register_request(&session, "web@1.0.0")
        },
    )
    .await;

    let mut stranger = server.client().await;
    let mut answers: Vec<Vec<u8>> = Vec::new();
    let queried = stranger
        .query(pb::QueryRequest::default())
        .await
        .unwrap()
        .into_inner();
    answers.push(queried.encode_to_vec());
    let got = stranger
        .get(pb::GetRequest {
            pattern: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    answers.push(got.encode_to_vec());
    let mut watch = stranger
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut watched = Vec::new();
    while let Some(event) = watch.next().await {
        let event = event.unwrap();
        answers.push(event.encode_to_vec());
        if event.kind() == pb::watch_event::Kind::Synced {
            break;
        }
        watched.extend(event.service);
    }
    assert!(
        answers.iter().all(|a| !a
            .windows(session.id.len())
            .any(|w| w == session.id.as_bytes())),
        "no answer carries the session id"
    );

    let services = queried.services.clone();
    assert_eq!(services.len(), 2, "web and the server's own seaport@");
    let mut candidates = vec![String::new()];
    for s in services.iter().chain(&got.services).chain(&watched) {
        strings_of(s, &mut candidates);
    }
    candidates.sort();
    candidates.dedup();
    for candidate in &candidates {
        for s in &services {
            let free = stranger
                .free(pb::FreeRequest {
                    session_id: candidate.clone(),
                    id: s.id.clone(),
                })
                .await;
            assert_status(free, Code::NotFound, "the session is not open");
            let update = stranger
                .update(pb::UpdateRequest {
                    session_id: candidate.clone(),
                    id: s.id.clone(),
                    ..Default::default()
                })
                .await;
            assert_status(update, Code::NotFound, "the session is not open");
        }
        let taken = stranger
            .register(pb::RegisterRequest {
                session_id: candidate.clone(),
                role: "web@6.6.6".into(),
                ..Default::default()
            })
            .await;
        assert_status(taken, Code::NotFound, "the session is not open");
        let resumed = heartbeat(
            &mut stranger,
            In::Resume(pb::ResumeSession {
                session_id: candidate.clone(),
            }),
        )
        .await;
        assert_status(
            resumed.map(|s| s.id),
            Code::NotFound,
            "the session is not open",
        );
    }
    let after = query(&mut stranger, "").await;
    assert_eq!(after, services, "nothing changed");
    assert!(after.contains(&web));
}

#[tokio::test]
async fn the_heartbeat_stream_ends_after_closed_and_after_a_half_close() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let closed = open(&mut client, 0).await;
    assert_eq!(closed.close().await, 0, "close checks that the stream ends");
    let half = open(&mut client, 0).await;
    let id = half.id.clone();
    let end = half.half_close().await;
    assert!(matches!(end, Ok(None)), "ended: {end:?}");
    let resumed = heartbeat(
        &mut client,
        In::Resume(pb::ResumeSession { session_id: id }),
    )
    .await
    .expect("a half-close leaves the session to its ttl");
    assert!(resumed.resumed);
}

#[tokio::test]
async fn errors_quote_client_input_in_short() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let session = open(&mut client, 0).await;
    let huge = "W".repeat(1_000_000);
    let long_key = "k".repeat(100_000);
    let refusals = [
        client
            .register(register_request(&session, &huge))
            .await
            .map(|_| ()),
        client
            .register(pb::RegisterRequest {
                id: huge[..500_000].to_string(),
                ..register_request(&session, "web")
            })
            .await
            .map(|_| ()),
        client
            .register(pb::RegisterRequest {
                host: "é".repeat(100),
                ..register_request(&session, "web")
            })
            .await
            .map(|_| ()),
        client
            .register(pb::RegisterRequest {
                metadata: HashMap::from([(long_key.clone(), "v".into())]),
                ..register_request(&session, "web")
            })
            .await
            .map(|_| ()),
        client
            .query(pb::QueryRequest {
                pattern: format!("web@{}", "1".repeat(900)),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        client
            .query(pb::QueryRequest {
                pattern: huge.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        client
            .free(pb::FreeRequest {
                session_id: session.id.clone(),
                id: "x".repeat(120),
            })
            .await
            .map(|_| ()),
    ];
    for refusal in refusals {
        let status = refusal.expect_err("refused");
        assert!(
            matches!(status.code(), Code::InvalidArgument | Code::NotFound),
            "{status:?}"
        );
        // Each piece of input quoted is at most 100 bytes.
        assert!(
            status.message().len() < 400,
            "{} bytes: {}",
            status.message().len(),
            status.message()
        );
    }
}

#[tokio::test]
async fn hosts_are_addresses_or_names() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let session = open(&mut client, 0).await;
    for host in [
        "10.0.0.5",
        "fd00::5",
        "web-1.internal",
        "web-1.internal.",
        "DB",
    ] {
        let s = register_with(
            &mut client,
            pb::RegisterRequest {
                host: host.into(),
                port: 5000,
                ..register_request(&session, "web")
            },
        )
        .await;
        assert_eq!(s.host, host);
    }
}

#[tokio::test]
async fn watches_are_capped() {
    let mut config = test_config();
    config.max_watchers = 2;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let first = client.watch(pb::WatchRequest::default()).await.unwrap();
    let second = client.watch(pb::WatchRequest::default()).await.unwrap();
    let third = client.watch(pb::WatchRequest::default()).await;
    assert_status(third, Code::ResourceExhausted, "--max-watchers");
    drop(first);
    eventually("a closed watch frees its place", || {
        let mut client = client.clone();
        async move { client.watch(pb::WatchRequest::default()).await.is_ok() }
    })
    .await;
    drop(second);
}

/// Reads from `tcp` until the server closes it; true if it did in time.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn silent_idle_and_surplus_connections_are_closed() {
    let mut config = test_config();
    config.handshake_timeout = Duration::from_millis(300);
    config.idle_timeout = Duration::from_millis(600);
    config.max_connections = 3;
    let server = TestServer::start_with(config).await;

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(PREFACE).await.unwrap();
    let mut held = TcpStream::connect(server.addr).await.unwrap();
    held.write_all(PREFACE).await.unwrap();
    let mut surplus = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut surplus, Duration::from_secs(2)).await,
        "a connection past --max-connections is closed at once"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "no preface within the handshake timeout: closed"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "no stream for the idle timeout: closed"
    );
    drop(held);
    // A connection with a stream open stays past the idle timeout.
    let mut client = server.client().await;
    let mut session = open(&mut client, 5000).await;
    // Waits out the 600ms idle timeout, and more, to show that nothing
    // closes this connection: no event to wait for.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    session
        .ping(1)
        .await
        .expect("the heartbeat's connection stays");
}

/// The types of the HTTP/2 frames in `bytes`, as a server sent them.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length =
            usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

/// An idle connection is told to go (HTTP/2 GOAWAY) before it is closed,
/// so a client that starts a call just then retries it elsewhere rather
/// than losing it to a reset.
#[tokio::test]
async fn an_idle_connection_gets_goaway_before_it_is_closed() {
    const GOAWAY: u8 = 0x7;
    let mut config = test_config();
    config.idle_timeout = Duration::from_millis(300);
    // How long a client that does not answer the GOAWAY's ping is given.
    config.handshake_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(PREFACE).await.unwrap();
    let mut sent = Vec::new();
    tokio::time::timeout(PATIENCE, idle.read_to_end(&mut sent))
        .await
        .expect("closed in time")
        .unwrap();
    let types = frame_types(&sent);
    assert!(types.contains(&GOAWAY), "frames {types:?}");
}

#[tokio::test]
async fn an_open_health_watch_does_not_hold_shutdown() {
    let mut config = test_config();
    config.shutdown_grace = Duration::from_secs(30);
    let mut server = TestServer::start_with(config).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.next().await.is_some(), "the first status");
    let started = Instant::now();
    server.begin_shutdown();
    while let Some(Ok(_)) = watch.next().await {}
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_calls_deadline_bounds_the_wait_for_its_answer() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    // A bare HTTP/2 client: tonic's own would time the call out itself.
    let server = TestServer::start().await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    // A Heartbeat that never sends its first message waits for it up to
    // 10s on its own; the call's deadline ends it sooner.
    let silent = StreamBody::new(futures_pending::<Frame<prost::bytes::Bytes>>());
    let request = hyper::Request::post(format!(
        "http://{}/seaport.v1.Registry/Heartbeat",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", "300m")
    .body(silent)
    .unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(PATIENCE, send.send_request(request))
        .await
        .expect("answered")
        .unwrap();
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(status.as_deref(), Some("4"), "DEADLINE_EXCEEDED");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A body stream that never yields.
fn futures_pending<T>() -> impl tokio_stream::Stream<Item = Result<T, std::convert::Infallible>> {
    tokio_stream::pending()
}
