//! The web console's event stream against a page that stops reading: the
//! registry carries on at its own pace, and the page, once it reads again,
//! is reset to the registry as it is.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use seaport_client::{RegisterOptions, SeaportClient};
use seaport_testkit::{PATIENCE, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// Bytes of metadata per update, so that few updates fill the buffers.
const PAD: usize = 4000;

/// Reads `page` until what it has read holds `needle`; returns what it read.
async fn read_until(page: &mut tokio::net::TcpStream, read: &mut String, needle: &str) {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(PATIENCE * 3, async {
        while !read.contains(needle) {
            let n = page.read(&mut buf).await.expect("the stream is open");
            assert!(n > 0, "the stream ended before {needle:?}");
            read.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} never came"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_stops_reading_never_slows_the_registry_and_is_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let console = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let console_addr = console.local_addr().unwrap();
    let mut config = test_config();
    config.limits.watch_buffer = 64;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(seaport_server::run_with_console(
        listener,
        None,
        Some(console),
        config,
        async {
            let _ = stopped.await;
        },
    ));

    // A page with a small receive buffer opens its stream, sees it start,
    // then reads nothing.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut page = socket.connect(console_addr).await.unwrap();
    page.write_all(b"GET /api/events HTTP/1.1\r\nhost: seaport\r\n\r\n")
        .await
        .unwrap();
    let mut read = String::new();
    read_until(&mut page, &mut read, "\"kind\":\"synced\"").await;

    // Enough changes to fill every buffer between the registry and the
    // page: the server's socket's at its largest, and more.
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let updates = (wmem_max / PAD * 5 / 4 + 200).min(20_000);
    let client = SeaportClient::connect([addr.to_string()]).await.unwrap();
    let registration = client
        .register(
            "web@1.0.0",
            RegisterOptions {
                port: Some(10_000),
                ..RegisterOptions::default()
            },
        )
        .await
        .unwrap();
    let pad = "x".repeat(PAD);
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for n in 0..updates {
        let metadata = BTreeMap::from([
            ("n".to_string(), n.to_string()),
            ("pad".to_string(), pad.clone()),
        ]);
        let at = Instant::now();
        tokio::time::timeout(PATIENCE, client.update(registration.id(), metadata, false))
            .await
            .expect("an update is never held up by the page")
            .unwrap();
        slowest = slowest.max(at.elapsed());
    }
    println!(
        "{updates} updates in {:?} while the page read nothing; slowest {slowest:?}",
        started.elapsed()
    );

    // Reading again: the page's watch fell behind, so it is reset to the
    // registration as it is now.
    let reading = Instant::now();
    read_until(&mut page, &mut read, "\"kind\":\"reset\"").await;
    let after_reset = read.split("\"kind\":\"reset\"").nth(1).unwrap().to_string();
    let mut rest = after_reset;
    read_until(&mut page, &mut rest, "\"kind\":\"synced\"").await;
    let last = format!("\"n\":\"{}\"", updates - 1);
    assert!(
        rest.contains(&last),
        "the snapshot after the reset holds the last update"
    );
    println!("caught up in {:?}", reading.elapsed());

    client.close().await;
    let _ = stop.send(());
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the server stops with a page open")
        .unwrap()
        .unwrap();
}
