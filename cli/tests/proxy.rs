//! `seaportctl proxy tcp` and `seaportctl proxy http` as users run them:
//! the real seaportctl process, a real seaportd on 127.0.0.1:0, and real
//! upstream servers (TCP echo servers, hyper HTTP servers) registered with
//! the Rust client.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use seaport_client::{RegisterOptions, Registration, SeaportClient};
use seaport_server::Config;
use seaport_server::config::{EtcdConfig, StoreConfig};
use seaport_testkit::{EtcdCluster, PATIENCE, TestServer, eventually, test_config};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

type TestBody = BoxBody<Bytes, Infallible>;

/// A seaportctl proxy process, the addresses it listens on, and its log.
struct Proxy {
    child: Child,
    addrs: Vec<SocketAddr>,
    log: watch::Receiver<Vec<String>>,
}

impl Proxy {
    /// Starts `seaportctl --server SERVERS proxy ARGS` and waits for its
    /// `listeners` "listening on" lines.
    async fn start(servers: &[SocketAddr], args: &[&str], listeners: usize) -> Proxy {
        let servers: Vec<String> = servers.iter().map(ToString::to_string).collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_seaportctl"))
            .arg("--server")
            .arg(servers.join(","))
            .arg("proxy")
            .args(args)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, log) = watch::channel(Vec::new());
        let mut addrs = Vec::new();
        tokio::time::timeout(PATIENCE, async {
            while addrs.len() < listeners {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("the proxy ended: {:?}", tx.borrow()));
                if let Some((_, rest)) = line.split_once("listening on ") {
                    let address = rest.split_whitespace().next().unwrap();
                    let address = address.rsplit("://").next().unwrap();
                    addrs.push(address.parse().unwrap());
                }
                tx.send_modify(|log| log.push(line));
            }
        })
        .await
        .expect("the proxy listens in time");
        // Keep reading, so the proxy never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tx.send_modify(|log| log.push(line));
            }
        });
        Proxy { child, addrs, log }
    }

    fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Waits for a log line containing `needle`, and returns it.
    async fn logged(&self, needle: &str) -> String {
        let mut log = self.log.clone();
        let found = tokio::time::timeout(
            PATIENCE,
            log.wait_for(|lines| lines.iter().any(|l| l.contains(needle))),
        )
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?} in {:?}", self.log.borrow()))
        .unwrap();
        found.iter().find(|l| l.contains(needle)).unwrap().clone()
    }

    /// The proxy's peak resident memory, in bytes (VmHWM).
    fn peak_rss(&self) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }
}

async fn client(servers: &[SocketAddr]) -> SeaportClient {
    servers
        .iter()
        .fold(SeaportClient::builder(), |b, s| b.endpoint(s.to_string()))
        .connect()
        .await
        .unwrap()
}

fn loopback() -> RegisterOptions {
    RegisterOptions {
        bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ..RegisterOptions::default()
    }
}

/// An upstream server registered under a role; `kill` stops it and drops
/// every connection to it while its registration stays, as a crash would
/// until its session expires.
struct Upstream {
    registration: Registration,
    task: JoinHandle<()>,
}

impl Upstream {
    fn id(&self) -> String {
        self.registration.id().to_string()
    }

    async fn kill(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

/// A TCP server that writes its name and a newline, then echoes.
async fn tcp_upstream(client: &SeaportClient, role: &str, name: &str) -> Upstream {
    let (listener, registration) = client.bind(role, loopback()).await.unwrap();
    let name = format!("{name}\n");
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let name = name.clone();
            conns.spawn(async move {
                if stream.write_all(name.as_bytes()).await.is_ok() {
                    let (mut from, mut to) = stream.split();
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                }
            });
        }
    });
    Upstream { registration, task }
}

/// A hyper HTTP server under `role`: see `answer`.
async fn http_upstream(client: &SeaportClient, role: &str, name: &str) -> Upstream {
    let (listener, registration) = client.bind(role, loopback()).await.unwrap();
    let name: Arc<str> = name.into();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let name = name.clone();
            let service = hyper::service::service_fn(move |r| answer(name.clone(), r));
            conns.spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { registration, task }
}

fn text(body: String) -> Response<TestBody> {
    Response::new(Full::new(Bytes::from(body)).boxed())
}

const CHUNK: usize = 64 * 1024;

/// A stream of `total` zero bytes in 64 KiB chunks, made as it is read.
fn zeros(total: u64) -> TestBody {
    let chunk = Bytes::from(vec![0u8; CHUNK]);
    let chunks = total.div_ceil(CHUNK as u64);
    let frames = (0..chunks).map(move |i| {
        let left = (total - i * CHUNK as u64).min(CHUNK as u64) as usize;
        Ok(Frame::data(chunk.slice(..left)))
    });
    StreamBody::new(tokio_stream::iter(frames)).boxed()
}

/// What an upstream answers: an upgrade becomes an echo; `/upload` counts
/// the body's bytes; `/download/N` streams N bytes; anything else is
/// "NAME METHOD PATH" and the X-Forwarded headers it got.
async fn answer(
    name: Arc<str>,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path_and_query().unwrap().to_string();
    if req.headers().contains_key("upgrade") {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgrade.await.unwrap());
            let mut buffer = [0u8; 1024];
            while let Ok(n @ 1..) = io.read(&mut buffer).await {
                io.write_all(&buffer[..n]).await.unwrap();
            }
        });
        let mut response = text(String::new());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        response
            .headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        return Ok(response);
    }
    if path == "/upload" {
        let mut body = req.into_body();
        let mut received = 0;
        while let Some(frame) = body.frame().await {
            received += frame.unwrap().data_ref().map_or(0, Bytes::len);
        }
        return Ok(text(format!("{name} received {received}")));
    }
    if let Some(total) = path.strip_prefix("/download/") {
        return Ok(Response::new(zeros(total.parse().unwrap())));
    }
    let header = |k: &str| {
        req.headers()
            .get(k)
            .map_or("-", |v| v.to_str().unwrap())
            .to_string()
    };
    Ok(text(format!(
        "{name} {} {path} xff={} xfh={} xfp={}",
        req.method(),
        header("x-forwarded-for"),
        header("x-forwarded-host"),
        header("x-forwarded-proto")
    )))
}

fn http_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `request`; returns the status and the body as text.
async fn send(
    client: &Client<HttpConnector, TestBody>,
    request: Request<TestBody>,
) -> (StatusCode, String) {
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get(client: &Client<HttpConnector, TestBody>, url: String) -> (StatusCode, String) {
    let request = Request::get(url).body(Empty::new().boxed()).unwrap();
    send(client, request).await
}

/// The name the instance that answered gave.
fn who(body: &str) -> String {
    body.split_whitespace().next().unwrap_or("").to_string()
}

/// Connects through a TCP proxy; returns the connection and the name of
/// the instance at the other end.
async fn tcp_via(proxy: SocketAddr) -> (BufReader<TcpStream>, String) {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, stream.read_line(&mut line))
        .await
        .expect("a greeting in time")
        .unwrap();
    (stream, line.trim().to_string())
}

fn counts(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

fn expect(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test]
async fn tcp_proxy_spreads_fails_over_and_takes_new_instances_at_once() {
    let server = TestServer::start().await;
    let registrar = client(&[server.addr]).await;
    let a = tcp_upstream(&registrar, "db@3.0.0", "a").await;
    let mut b = tcp_upstream(&registrar, "db@3.1.0", "b").await;
    let _c = tcp_upstream(&registrar, "db@3.2.0", "c").await;
    let _other = tcp_upstream(&registrar, "db@4.0.0", "other").await;
    let proxy = Proxy::start(
        &[server.addr],
        &["tcp", "--listen", "127.0.0.1:0", "db@3.x"],
        1,
    )
    .await;

    let mut names = Vec::new();
    for _ in 0..30 {
        let (mut conn, name) = tcp_via(proxy.addr()).await;
        conn.write_all(b"ping\n").await.unwrap();
        let mut echo = String::new();
        conn.read_line(&mut echo).await.unwrap();
        assert_eq!(echo, "ping\n", "bytes go both ways");
        names.push(name);
    }
    assert_eq!(counts(names), expect(&[("a", 10), ("b", 10), ("c", 10)]));

    // b dies with its registration still there: its connections are
    // refused, and no new client connection sees it.
    let (mut held, held_name) = tcp_via(proxy.addr()).await;
    b.kill().await;
    let names: Vec<String> = names_via(proxy.addr(), 20).await;
    assert!(names.iter().all(|n| n == "a" || n == "c"), "{names:?}");
    let line = proxy.logged(&format!("instance {} at", b.id())).await;
    assert!(line.contains("held off for"), "{line}");
    if held_name != "b" {
        held.write_all(b"still\n").await.unwrap();
        let mut echo = String::new();
        held.read_line(&mut echo).await.unwrap();
        assert_eq!(echo, "still\n", "open connections to live instances go on");
    }

    // A new instance is taken as soon as it is registered: the catalog is
    // live, so within a round of the two others at the most.
    let _d = tcp_upstream(&registrar, "db@3.3.0", "d").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, name) = tcp_via(proxy.addr()).await;
        if name == "d" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "d never served");
    }
    a.registration.free().await.unwrap();
    let names = names_via(proxy.addr(), 4).await;
    assert!(names.contains(&"d".to_string()), "{names:?}");
    drop(a.task);
}

/// The names behind `n` connections made one after another.
async fn names_via(proxy: SocketAddr, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        names.push(tcp_via(proxy).await.1);
    }
    names
}

#[tokio::test]
async fn tcp_routes_share_a_process_and_a_role_with_no_instance_is_closed_at_once() {
    let server = TestServer::start().await;
    let registrar = client(&[server.addr]).await;
    let _a = tcp_upstream(&registrar, "cache@1.0.0", "cache").await;
    let proxy = Proxy::start(
        &[server.addr],
        &[
            "tcp",
            "--route",
            "127.0.0.1:0=cache@1.x",
            "--route",
            "127.0.0.1:0=couchdb@3.x",
            "--connect-timeout",
            "5s",
        ],
        2,
    )
    .await;
    // A half close crosses the proxy: the instance sees the end, answers
    // all it had, and closes in turn.
    let (conn, name) = tcp_via(proxy.addrs[0]).await;
    assert_eq!(name, "cache");
    let mut conn = conn.into_inner();
    conn.write_all(b"last words").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut rest))
        .await
        .expect("the instance closes in turn")
        .unwrap();
    assert_eq!(rest, b"last words");

    let started = tokio::time::Instant::now();
    let mut conn = TcpStream::connect(proxy.addrs[1]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    assert!(rest.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed without waiting on a connect"
    );
    let line = proxy.logged("closed the connection from 127.0.0.1:").await;
    assert!(
        line.contains("no instance of couchdb@3.x is registered"),
        "{line}"
    );
}

#[tokio::test]
async fn proxy_flags_are_checked_before_anything_listens() {
    let out = Command::new(env!("CARGO_BIN_EXE_seaportctl"))
        .args([
            "--server",
            "127.0.0.1:1",
            "proxy",
            "tcp",
            "--route",
            "couchdb@3.x",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not LISTEN=ROLE"));
    let out = Command::new(env!("CARGO_BIN_EXE_seaportctl"))
        .args([
            "--server",
            "127.0.0.1:1",
            "proxy",
            "http",
            "--listen",
            "127.0.0.1:0",
            "--host",
            "stable=web@>>1",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("two operators"));
}

#[tokio::test]
async fn http_gateway_spreads_lists_and_tells_who_asked() {
    let server = TestServer::start().await;
    let registrar = client(&[server.addr]).await;
    let mut ids = BTreeMap::new();
    for (name, version) in [("a", "1.0.0"), ("b", "1.1.0"), ("c", "1.2.0")] {
        let up = http_upstream(&registrar, &format!("web@{version}"), name).await;
        ids.insert(name, up);
    }
    let proxy = Proxy::start(&[server.addr], &["http", "--listen", "127.0.0.1:0"], 1).await;
    let http = http_client();
    let base = format!("http://{}", proxy.addr());

    let mut names = Vec::new();
    for _ in 0..30 {
        let (status, body) = get(&http, format!("{base}/role/web@1.x/hello/there?x=1")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let host = proxy.addr().to_string();
        assert!(
            body.ends_with(&format!(
                "GET /hello/there?x=1 xff=127.0.0.1 xfh={host} xfp=http"
            )),
            "{body}"
        );
        names.push(who(&body));
    }
    assert_eq!(counts(names), expect(&[("a", 10), ("b", 10), ("c", 10)]));

    // A range with spaces, percent-encoded.
    let (status, body) = get(&http, format!("{base}/role/web@%3E%3D1.1.0%20%3C1.2.0/")).await;
    assert_eq!(
        (status, who(&body)),
        (StatusCode::OK, "b".to_string()),
        "{body}"
    );

    let (status, body) = get(&http, format!("{base}/list/web@1.x")).await;
    assert_eq!(status, StatusCode::OK);
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut want: Vec<String> = ids.values().map(Upstream::id).collect();
    want.sort();
    assert_eq!(listed, want);

    let b = ids["b"].id();
    for _ in 0..3 {
        let (status, body) = get(&http, format!("{base}/instance/{b}/only/b")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.starts_with("b GET /only/b "), "{body}");
    }

    let (status, body) = get(&http, format!("{base}/elsewhere")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("/role/NAME@RANGE/PATH"), "{body}");
    let (status, body) = get(&http, format!("{base}/role/web@%3E%3E1/")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("two operators"), "{body}");
}

/// The original seaport README's HTTP router, redone with seaportctl.
#[tokio::test]
async fn host_rules_route_as_the_original_router_did() {
    let server = TestServer::start().await;
    let registrar = client(&[server.addr]).await;
    let _stable = http_upstream(&registrar, "http@0.0.0", "version-0.0.0").await;
    let _unstable = http_upstream(&registrar, "http@0.1.0", "version-0.1.0").await;
    let proxy = Proxy::start(
        &[server.addr],
        &[
            "http",
            "--listen",
            "127.0.0.1:0",
            "--host",
            "unstable=http@0.1.x",
            "--host",
            "stable=http@0.0.x",
            "--host",
            "*=http@0.0.x",
        ],
        1,
    )
    .await;
    let http = http_client();
    for (host, want) in [
        ("stable", "version-0.0.0"),
        ("unstable", "version-0.1.0"),
        ("unstable.example.com:5000", "version-0.1.0"),
        ("anything.else", "version-0.0.0"),
    ] {
        let request = Request::get(format!("http://{}/some/page", proxy.addr()))
            .header("host", host)
            .body(Empty::new().boxed())
            .unwrap();
        let (status, body) = send(&http, request).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.starts_with(&format!("{want} GET /some/page ")),
            "{host}: {body}"
        );
        assert!(body.contains(&format!("xfh={host} ")), "{body}");
    }
}

#[tokio::test]
async fn http_gateway_fails_over_and_takes_new_instances_at_once() {
    let server = TestServer::start().await;
    let registrar = client(&[server.addr]).await;
    let _a = http_upstream(&registrar, "web@1.0.0", "a").await;
    let mut b = http_upstream(&registrar, "web@1.0.1", "b").await;
    let _c = http_upstream(&registrar, "web@1.0.2", "c").await;
    let proxy = Proxy::start(&[server.addr], &["http", "--listen", "127.0.0.1:0"], 1).await;
    let http = http_client();
    let base = format!("http://{}/role/web@1.x", proxy.addr());
    for _ in 0..6 {
        assert_eq!(get(&http, format!("{base}/")).await.0, StatusCode::OK);
    }

    // b dies, its registration still there. No request sees an error: the
    // GETs that meet b (on the connection the gateway kept, or on a new
    // one) are sent again to another instance, and b is held off; a POST
    // that meets b later finds its port refusing, which sent nothing.
    b.kill().await;
    let mut names = Vec::new();
    for _ in 0..3 {
        let (status, body) = get(&http, format!("{base}/")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        names.push(who(&body));
    }
    proxy.logged(&format!("instance {} at", b.id())).await;
    for i in 0..20 {
        let (status, body) = if i % 2 == 0 {
            get(&http, format!("{base}/")).await
        } else {
            let request = Request::post(format!("{base}/form"))
                .body(Full::new(Bytes::from_static(b"x=1")).boxed())
                .unwrap();
            send(&http, request).await
        };
        assert_eq!(status, StatusCode::OK, "{body}");
        names.push(who(&body));
    }
    assert!(names.iter().all(|n| n == "a" || n == "c"), "{names:?}");

    // A new instance is listed as soon as it is registered, and served.
    let d = http_upstream(&registrar, "web@1.0.3", "d").await;
    let list = format!("http://{}/list/web@1.x", proxy.addr());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !get(&http, list.clone()).await.1.contains(&d.id()) {
        assert!(tokio::time::Instant::now() < deadline, "d never listed");
        tokio::task::yield_now().await;
    }
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(who(&get(&http, format!("{base}/")).await.1));
    }
    assert!(names.contains(&"d".to_string()), "{names:?}");
}

#[tokio::test]
async fn draining_instances_get_no_new_connections() {
    let server = TestServer::start().await;
    let registrar = client(&[server.addr]).await;
    let mut web = Vec::new();
    for (name, version) in [("a", "1.0.0"), ("b", "1.0.1"), ("c", "1.0.2")] {
        web.push(http_upstream(&registrar, &format!("web@{version}"), name).await);
    }
    let _db_a = tcp_upstream(&registrar, "db@1.0.0", "a").await;
    let db_b = tcp_upstream(&registrar, "db@1.0.1", "b").await;
    let _db_c = tcp_upstream(&registrar, "db@1.0.2", "c").await;
    let http_proxy = Proxy::start(&[server.addr], &["http", "--listen", "127.0.0.1:0"], 1).await;
    let tcp_proxy = Proxy::start(
        &[server.addr],
        &["tcp", "--listen", "127.0.0.1:0", "db@1.x"],
        1,
    )
    .await;
    let http = http_client();
    let base = format!("http://{}", http_proxy.addr());
    let (mut open, mut opened_on) = tcp_via(tcp_proxy.addr()).await;
    while opened_on != "b" {
        (open, opened_on) = tcp_via(tcp_proxy.addr()).await;
    }

    registrar.drain(&web[1].id()).await.unwrap();
    registrar.drain(&db_b.id()).await.unwrap();

    // HTTP: once the gateway's catalog has it, b gets nothing new.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, body) = get(&http, format!("{base}/list/web@1.x")).await;
        let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
        let b = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == web[1].id().as_str());
        if b.is_some_and(|b| b["draining"] == true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never listed as draining"
        );
        tokio::task::yield_now().await;
    }
    let mut names = Vec::new();
    for _ in 0..12 {
        let (status, body) = get(&http, format!("{base}/role/web@1.x/")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        names.push(who(&body));
    }
    assert_eq!(counts(names), expect(&[("a", 6), ("c", 6)]));

    // TCP: a full round of the others without b, then none for b at all;
    // the connection b already had goes on.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while names_via(tcp_proxy.addr(), 3)
        .await
        .contains(&"b".to_string())
    {
        assert!(tokio::time::Instant::now() < deadline, "b still served");
    }
    let names = names_via(tcp_proxy.addr(), 12).await;
    assert_eq!(counts(names), expect(&[("a", 6), ("c", 6)]));
    open.write_all(b"still\n").await.unwrap();
    let mut echo = String::new();
    open.read_line(&mut echo).await.unwrap();
    assert_eq!(
        echo, "still\n",
        "open connections to a draining instance go on"
    );

    // Every instance draining: nothing to send to, and the answer says so.
    registrar.drain(&web[0].id()).await.unwrap();
    registrar.drain(&web[2].id()).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = get(&http, format!("{base}/role/web@1.x/")).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body, "every instance of web@1.x is draining\n");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still served: {body}"
        );
    }
}

/// A server that accepts, reads a request, and hangs up without an
/// answer; returns its registration's id.
async fn rude_upstream(client: &SeaportClient, role: &str) -> String {
    let (listener, registration) = client.bind(role, loopback()).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer).await;
        }
    });
    registration.id().to_string()
}

#[tokio::test]
async fn http_gateway_answers_503_and_502_with_a_reason() {
    let server = TestServer::start().await;
    let registrar = client(&[server.addr]).await;
    // Registered at a port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dead = registrar
        .register("dead@1.0.0", RegisterOptions::default().port(port))
        .await
        .unwrap();
    let _rude = rude_upstream(&registrar, "rude@1.0.0").await;
    let flaky = rude_upstream(&registrar, "flaky@1.0.0").await;
    let _polite = http_upstream(&registrar, "flaky@1.0.1", "polite").await;
    let proxy = Proxy::start(&[server.addr], &["http", "--listen", "127.0.0.1:0"], 1).await;
    let http = http_client();
    let base = format!("http://{}", proxy.addr());

    let (status, body) = get(&http, format!("{base}/role/none@1.x/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "no instance of none@1.x is registered\n");

    let (status, body) = get(&http, format!("{base}/role/dead@1.x/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.starts_with("dead@1.x failed: "), "{body}");
    assert!(
        body.contains(&format!("{} at 127.0.0.1:{port}", dead.id())),
        "{body}"
    );
    assert!(body.to_lowercase().contains("refused"), "{body}");

    let request = Request::post(format!("{base}/role/rude@1.x/order"))
        .body(Full::new(Bytes::from_static(b"one pizza")).boxed())
        .unwrap();
    let (status, body) = send(&http, request).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.starts_with("rude@1.x failed: "), "{body}");

    // With an instance that answers beside it, an idempotent request
    // that a rude one dropped is sent again there, and the client never
    // sees the failure. Round robin tries the rude one within two.
    for _ in 0..2 {
        let (status, body) = get(&http, format!("{base}/role/flaky@1.x/menu")).await;
        assert_eq!(
            (status, who(&body)),
            (StatusCode::OK, "polite".into()),
            "{body}"
        );
    }
    proxy.logged(&format!("instance {flaky} at")).await;

    let (status, body) = get(&http, format!("{base}/instance/no-such-id/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no-such-id"), "{body}");
}

#[tokio::test]
async fn http_gateway_passes_a_websocket_upgrade_through() {
    let server = TestServer::start().await;
    let registrar = client(&[server.addr]).await;
    let _chat = http_upstream(&registrar, "chat@1.0.0", "chat").await;
    let proxy = Proxy::start(&[server.addr], &["http", "--listen", "127.0.0.1:0"], 1).await;

    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    conn.write_all(
        b"GET /role/chat@1.x/socket HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(PATIENCE, conn.read_u8())
            .await
            .unwrap()
            .unwrap();
        head.push(byte);
    }
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");

    // A masked text frame, "hello", echoed as it was sent.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend(mask);
    frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    for _ in 0..3 {
        conn.write_all(&frame).await.unwrap();
        let mut echo = vec![0u8; frame.len()];
        tokio::time::timeout(PATIENCE, conn.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, frame);
    }
}

#[tokio::test]
async fn http_gateway_streams_100_mib_each_way_without_holding_it() {
    const TOTAL: u64 = 100 * 1024 * 1024;
    let server = TestServer::start().await;
    let registrar = client(&[server.addr]).await;
    let _files = http_upstream(&registrar, "files@1.0.0", "files").await;
    let proxy = Proxy::start(&[server.addr], &["http", "--listen", "127.0.0.1:0"], 1).await;
    let http = http_client();
    let base = format!("http://{}/role/files@1.x", proxy.addr());

    let request = Request::post(format!("{base}/upload"))
        .body(zeros(TOTAL))
        .unwrap();
    let (status, body) = send(&http, request).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, format!("files received {TOTAL}"))
    );

    let request = Request::get(format!("{base}/download/{TOTAL}"))
        .body(Empty::new().boxed())
        .unwrap();
    let response = http.request(request).await.unwrap();
    let mut body = response.into_body();
    let mut received = 0;
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap() {
        received += frame.unwrap().data_ref().map_or(0, Bytes::len) as u64;
    }
    assert_eq!(received, TOTAL);

    let peak = proxy.peak_rss();
    eprintln!("proxy peak RSS after 2 x 100 MiB: {} MiB", peak >> 20);
    assert!(peak < 48 << 20, "the proxy peaked at {} MiB", peak >> 20);
}

/// A seaportd on `etcd`, once it serves.
async fn on_etcd(etcd: &EtcdCluster) -> TestServer {
    let config = Config {
        store: StoreConfig::Etcd(EtcdConfig {
            endpoints: etcd.endpoints(),
            prefix: "/seaport".into(),
            ca: None,
            cert: None,
            key: None,
        }),
        ..test_config()
    };
    let server = TestServer::start_with(config).await;
    let addr = server.addr.to_string();
    eventually("the server loads the registry from etcd", async || {
        let builder = SeaportClient::builder().endpoint(addr.clone());
        builder.health("").await.unwrap_or_default()
    })
    .await;
    server
}

#[tokio::test]
async fn proxies_follow_a_cluster_and_keep_forwarding_when_no_server_answers() {
    let etcd = EtcdCluster::start(1).await;
    let first = on_etcd(&etcd).await;
    let second = on_etcd(&etcd).await;
    let servers = [first.addr, second.addr];
    let registrar = client(&servers).await;
    let _web = http_upstream(&registrar, "web@1.0.0", "a").await;
    let _db = tcp_upstream(&registrar, "db@1.0.0", "db").await;
    let http_proxy = Proxy::start(&servers, &["http", "--listen", "127.0.0.1:0"], 1).await;
    let tcp_proxy = Proxy::start(&servers, &["tcp", "--listen", "127.0.0.1:0", "db@1.x"], 1).await;
    let http = http_client();
    let base = format!("http://{}", http_proxy.addr());
    assert_eq!(
        who(&get(&http, format!("{base}/role/web@1.x/")).await.1),
        "a"
    );
    assert_eq!(tcp_via(tcp_proxy.addr()).await.1, "db");

    // The first server goes: whoever was on it moves to the second, and
    // the proxies follow what is registered from then on.
    first.stop().await;
    let b = http_upstream(&registrar, "web@1.0.1", "b").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !get(&http, format!("{base}/list/web@1.x"))
        .await
        .1
        .contains(&b.id())
    {
        assert!(tokio::time::Instant::now() < deadline, "b never listed");
        tokio::task::yield_now().await;
    }

    // No server answers: both proxies go on from their last catalog.
    second.stop().await;
    let mut names = Vec::new();
    for _ in 0..6 {
        let (status, body) = get(&http, format!("{base}/role/web@1.x/")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        names.push(who(&body));
    }
    assert_eq!(counts(names), expect(&[("a", 3), ("b", 3)]));
    for _ in 0..3 {
        assert_eq!(tcp_via(tcp_proxy.addr()).await.1, "db");
    }
}

/// `seaportctl certs init`'s files, removed when dropped.
struct CertDir(PathBuf);

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A GET over TLS to `addr`, trusting `ca.pem` of `dir`, as `who` if given.
async fn https_get(
    addr: SocketAddr,
    dir: &std::path::Path,
    who: Option<&str>,
    path: &str,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match who {
        Some(who) => {
            let chain = CertificateDer::pem_file_iter(dir.join(format!("client-{who}.pem")))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key =
                PrivateKeyDer::from_pem_file(dir.join(format!("client-{who}-key.pem"))).unwrap();
            config.with_client_auth_cert(chain, key).unwrap()
        }
        None => config.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

#[tokio::test]
async fn http_gateway_speaks_tls_with_seaportd_certificate_flags() {
    let dir =
        CertDir(std::env::temp_dir().join(format!("seaport-proxy-tls-{}", std::process::id())));
    let out = Command::new(env!("CARGO_BIN_EXE_seaportctl"))
        .args([
            "certs",
            "init",
            dir.0.to_str().unwrap(),
            "--client",
            "alice",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = TestServer::start().await;
    let registrar = client(&[server.addr]).await;
    let _web = http_upstream(&registrar, "web@1.0.0", "a").await;
    let file = |name: &str| dir.0.join(name).to_str().unwrap().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server-key.pem"), file("ca.pem"));
    let proxy = Proxy::start(
        &[server.addr],
        &[
            "http",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--client-ca",
            &ca,
        ],
        1,
    )
    .await;
    let body = https_get(proxy.addr(), &dir.0, Some("alice"), "/role/web@1.x/secure")
        .await
        .unwrap();
    assert!(body.starts_with("a GET /secure "), "{body}");
    assert!(body.ends_with("xfh=localhost xfp=https"), "{body}");
    let refused = https_get(proxy.addr(), &dir.0, None, "/role/web@1.x/secure").await;
    assert!(
        refused.is_err(),
        "a client with no certificate got {refused:?}"
    );
}
