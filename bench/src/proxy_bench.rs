//! seaport-proxy-bench: `seaportctl proxy` against direct connections, in
//! one run, on the same upstream servers: small HTTP requests (latency
//! with one in flight, throughput with many) and TCP (an echo's round
//! trip, a bulk transfer). Each figure alternates direct and proxied
//! slices, so that drift of the shared machine weighs on both alike.
//! Figures, never pass/fail.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use seaport_client::{RegisterOptions, SeaportClient};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// seaportctl proxy against direct connections.
#[derive(Parser, Debug)]
#[command(name = "seaport-proxy-bench")]
struct Args {
    /// Length of one slice; each time-based figure runs `--slices` slices a side.
    #[arg(long, default_value = "2s", value_parser = seaport::parse_duration)]
    slice: Duration,
    /// Slices a side, alternating direct and proxied.
    #[arg(long, default_value_t = 5)]
    slices: usize,
    /// Connections, one request in flight each, for the HTTP throughput row.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Bytes one bulk transfer moves (one per slice).
    #[arg(long, default_value_t = 1 << 30)]
    bulk_bytes: u64,
    /// Where the JSON results go.
    #[arg(long, default_value = "proxy-bench-results.json")]
    out: PathBuf,
}

/// A binary next to this one, or named by the environment variable.
fn binary(name: &str, var: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(
        || {
            std::env::current_exe()
                .expect("own path")
                .with_file_name(name)
        },
        PathBuf::from,
    )
}

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn seaportd() -> (Process, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let path = binary("seaportd", "SEAPORTD");
    let child = Command::new(&path)
        .args(["--listen", &addr.to_string(), "--log", "warn"])
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (set SEAPORTD)", path.display()));
    (Process(child), addr)
}

/// `seaportctl --server SERVER proxy ARGS`, and the addresses it listens on.
async fn proxy(server: SocketAddr, args: &[&str], listeners: usize) -> (Process, Vec<SocketAddr>) {
    let path = binary("seaportctl", "SEAPORTCTL");
    let mut child = Command::new(&path)
        .args(["--server", &server.to_string(), "proxy"])
        .args(args)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (set SEAPORTCTL)", path.display()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addrs = Vec::new();
    while addrs.len() < listeners {
        let line = lines.next_line().await.unwrap().expect("the proxy listens");
        if let Some((_, rest)) = line.split_once("listening on ") {
            let address = rest.split_whitespace().next().unwrap();
            addrs.push(address.rsplit("://").next().unwrap().parse().unwrap());
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (Process(child), addrs)
}

fn loopback() -> RegisterOptions {
    RegisterOptions {
        bind_ip: Ipv4Addr::LOCALHOST.into(),
        ..RegisterOptions::default()
    }
}

/// The upstreams: a small HTTP answer, a TCP echo, and a TCP source of
/// `bulk` bytes. Returns their direct addresses.
async fn upstreams(client: &SeaportClient, bulk: u64) -> [SocketAddr; 3] {
    let (web, w) = client.bind("bench-web@1.0.0", loopback()).await.unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = web.accept().await {
            let _ = stream.set_nodelay(true);
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"hello from bench-web\n",
                ))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    let (echo, e) = client.bind("bench-echo@1.0.0", loopback()).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let (mut from, mut to) = stream.split();
                let _ = tokio::io::copy(&mut from, &mut to).await;
            });
        }
    });
    let (source, s) = client.bind("bench-bulk@1.0.0", loopback()).await.unwrap();
    tokio::spawn(async move {
        let chunk = vec![7u8; 256 * 1024];
        while let Ok((mut stream, _)) = source.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let mut left = bulk;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    let at =
        |r: &seaport_client::Registration| -> SocketAddr { (Ipv4Addr::LOCALHOST, r.port()).into() };
    [at(&w), at(&e), at(&s)]
}

/// Latencies in microseconds, operations counted within the slices, and
/// the CPU the bench (client and upstreams) and the proxy used meanwhile.
#[derive(Default)]
struct Sample {
    micros: Vec<u32>,
    ops: u64,
    elapsed: Duration,
    bench_cpu: Duration,
    proxy_cpu: Duration,
}

/// CPU time (user and system) a process has used, from /proc, in the
/// kernel's usual 100 ticks a second.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime: the 12th and 13th fields after the command's name.
    let ticks: u64 = stat.rsplit_once(')').map_or(0, |(_, rest)| {
        rest.split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|t| t.parse::<u64>().ok())
            .sum()
    });
    Duration::from_millis(ticks * 10)
}

impl Sample {
    fn quantile(&mut self, q: f64) -> u32 {
        self.micros.sort_unstable();
        let i = ((self.micros.len() as f64 - 1.0) * q).round() as usize;
        self.micros.get(i).copied().unwrap_or(0)
    }

    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU microseconds per operation.
    fn per_op(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.ops as f64
    }
}

/// One HTTP/1.1 connection's loop of GET `path` on `addr` until `end`.
async fn http_loop(addr: SocketAddr, path: String, end: Instant) -> Sample {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut sample = Sample::default();
    while Instant::now() < end {
        let request = Request::get(path.as_str())
            .header("host", "bench")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let started = Instant::now();
        let response = sender.send_request(request).await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.into_body().collect().await.unwrap();
        let done = Instant::now();
        sample.micros.push((done - started).as_micros() as u32);
        if done <= end {
            sample.ops += 1;
        }
    }
    sample
}

/// `connections` HTTP loops for one slice.
async fn http_slice(addr: SocketAddr, path: &str, connections: usize, slice: Duration) -> Sample {
    let end = Instant::now() + slice;
    let loops: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(http_loop(addr, path.to_string(), end)))
        .collect();
    let mut total = Sample {
        elapsed: slice,
        ..Sample::default()
    };
    for l in loops {
        let s = l.await.unwrap();
        total.micros.extend(s.micros);
        total.ops += s.ops;
    }
    total
}

/// 64-byte round trips on one connection for one slice.
async fn echo_slice(addr: SocketAddr, slice: Duration) -> Sample {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let message = [42u8; 64];
    let mut back = [0u8; 64];
    let mut sample = Sample {
        elapsed: slice,
        ..Sample::default()
    };
    let end = Instant::now() + slice;
    while Instant::now() < end {
        let started = Instant::now();
        stream.write_all(&message).await.unwrap();
        stream.read_exact(&mut back).await.unwrap();
        sample.micros.push(started.elapsed().as_micros() as u32);
        sample.ops += 1;
    }
    sample
}

/// One bulk transfer: the bytes read and how long they took.
async fn bulk_slice(addr: SocketAddr, bytes: u64) -> Sample {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut read = 0u64;
    loop {
        match stream.read(&mut buffer).await.unwrap() {
            0 => break,
            n => read += n as u64,
        }
    }
    assert_eq!(read, bytes, "the whole transfer arrived");
    Sample {
        ops: read,
        elapsed: started.elapsed(),
        ..Sample::default()
    }
}

/// Runs `slice` alternately direct and proxied, `n` times a side,
/// through the proxy whose process is `proxy`.
async fn alternate<F, Fut>(n: usize, proxy: u32, mut slice: F) -> (Sample, Sample)
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Sample>,
{
    let (mut direct, mut proxied) = (Sample::default(), Sample::default());
    let me = std::process::id();
    for _ in 0..n {
        for (side, via_proxy) in [(&mut direct, false), (&mut proxied, true)] {
            let (bench_before, proxy_before) = (cpu(me), cpu(proxy));
            let s = slice(via_proxy).await;
            side.bench_cpu += cpu(me) - bench_before;
            side.proxy_cpu += cpu(proxy) - proxy_before;
            side.micros.extend(s.micros);
            side.ops += s.ops;
            side.elapsed += s.elapsed;
        }
    }
    (direct, proxied)
}

fn latency_row(name: &str, mut direct: Sample, mut proxied: Sample) -> Value {
    let (d50, d99) = (direct.quantile(0.5), direct.quantile(0.99));
    let (p50, p99) = (proxied.quantile(0.5), proxied.quantile(0.99));
    println!(
        "{name:<40} p50 {d50:>6} us -> {p50:>6} us (+{:>4})   p99 {d99:>6} us -> {p99:>6} us (+{:>5})",
        i64::from(p50) - i64::from(d50),
        i64::from(p99) - i64::from(d99)
    );
    json!({"row": name, "direct_p50_us": d50, "proxied_p50_us": p50, "direct_p99_us": d99, "proxied_p99_us": p99,
           "direct_per_s": direct.rate(), "proxied_per_s": proxied.rate()})
}

fn rate_row(name: &str, unit: &str, scale: f64, direct: &Sample, proxied: &Sample) -> Value {
    let (d, p) = (direct.rate() / scale, proxied.rate() / scale);
    let ops_per_unit = scale;
    let (bench_d, bench_p) = (
        direct.per_op(direct.bench_cpu) * ops_per_unit,
        proxied.per_op(proxied.bench_cpu) * ops_per_unit,
    );
    let proxy_p = proxied.per_op(proxied.proxy_cpu) * ops_per_unit;
    println!(
        "{name:<40} {d:>10.0} {unit} -> {p:>10.0} {unit}   {:>5.1}% of direct; CPU us per {}: bench {bench_d:.1} -> {bench_p:.1}, proxy {proxy_p:.1}",
        100.0 * p / d,
        unit.trim_end_matches("/s")
    );
    json!({"row": name, "unit": unit, "direct": d, "proxied": p, "ratio": p / d,
           "bench_cpu_us_direct": bench_d, "bench_cpu_us_proxied": bench_p, "proxy_cpu_us": proxy_p})
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (_seaportd, server) = seaportd().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match SeaportClient::connect([server.to_string()]).await {
            Ok(client) => break client,
            Err(e) if Instant::now() > deadline => panic!("seaportd at {server}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let [web, echo, bulk] = upstreams(&client, args.bulk_bytes).await;
    let (http_proxy, http) = proxy(server, &["http", "--listen", "127.0.0.1:0"], 1).await;
    let (tcp_proxy, tcp) = proxy(
        server,
        &[
            "tcp",
            "--route",
            "127.0.0.1:0=bench-echo@1.x",
            "--route",
            "127.0.0.1:0=bench-bulk@1.x",
        ],
        2,
    )
    .await;
    // Both proxies' catalogs and connections warm before anything counts.
    http_slice(
        http[0],
        "/role/bench-web@1.x/",
        2,
        Duration::from_millis(200),
    )
    .await;
    echo_slice(tcp[0], Duration::from_millis(200)).await;

    let (http_pid, tcp_pid) = (http_proxy.0.id().unwrap(), tcp_proxy.0.id().unwrap());
    let http_at = |via: bool| {
        if via {
            (http[0], "/role/bench-web@1.x/")
        } else {
            (web, "/")
        }
    };
    let mut rows = Vec::new();
    let (d, p) = alternate(args.slices, http_pid, |via| {
        let (addr, path) = http_at(via);
        http_slice(addr, path, 1, args.slice)
    })
    .await;
    rows.push(latency_row("HTTP GET, 1 in flight", d, p));
    let (d, p) = alternate(args.slices, http_pid, |via| {
        let (addr, path) = http_at(via);
        http_slice(addr, path, args.concurrency, args.slice)
    })
    .await;
    let name = format!("HTTP GET, {} in flight", args.concurrency);
    rows.push(rate_row(&name, "req/s", 1.0, &d, &p));
    rows.push(latency_row(&name, d, p));
    let (d, p) = alternate(args.slices, tcp_pid, |via| {
        echo_slice(if via { tcp[0] } else { echo }, args.slice)
    })
    .await;
    rows.push(latency_row("TCP echo, 64 B round trip", d, p));
    let (d, p) = alternate(args.slices, tcp_pid, |via| {
        bulk_slice(if via { tcp[1] } else { bulk }, args.bulk_bytes)
    })
    .await;
    let name = format!("TCP bulk transfer, {} MiB", args.bulk_bytes >> 20);
    rows.push(rate_row(&name, "MiB/s", (1 << 20) as f64, &d, &p));

    let results = json!({"slice_s": args.slice.as_secs_f64(), "slices": args.slices, "rows": rows});
    std::fs::write(&args.out, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("wrote {}", args.out.display());
}
