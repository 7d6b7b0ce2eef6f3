//! /metrics on the admin port, read as Prometheus reads it.

use std::collections::HashMap;

use crate::PATIENCE;

/// The admin port's /metrics, parsed by a Prometheus text-format parser.
pub async fn scrape(admin: std::net::SocketAddr) -> prometheus_parse::Scrape {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

/// The value of `name` with exactly `labels`, if scraped.
pub fn value(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let want: HashMap<&str, &str> = labels.iter().copied().collect();
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && s.labels.len() == want.len()
                && want.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}
