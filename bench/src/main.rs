//! seaport-bench: measures a seaportd and prints each figure beside the
//! same server's grpc.health.v1 Check, a nearly empty RPC on the same
//! connections, so every figure is also a ratio to the RPC stack's limit.

mod answers;
mod scenarios;
mod server;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

use scenarios::Session;
use server::Seaportd;
use stats::Sample;

/// The load generator shares the cores with the server, so time its
/// allocator spends is time the server lacks; mimalloc spends less of it
/// than the system's malloc on small blocks freed across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmarks for seaportd. Figures, never pass/fail.
#[derive(Parser, Debug)]
#[command(name = "seaport-bench")]
struct Args {
    /// Measure this running server instead of starting one (CPU and memory need a started one).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// How long each throughput scenario runs.
    #[arg(long, default_value = "5s", value_parser = seaport::parse_duration)]
    duration: Duration,
    /// HTTP/2 connections the load is spread over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Concurrent sessions for register+free.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    sessions: Vec<usize>,
    /// Concurrent callers for query (and the health baseline beside it).
    #[arg(long, default_value_t = 32)]
    query_concurrency: usize,
    /// Registry sizes for query; memory is read at the largest.
    /// Given with no sizes, the query and memory rows are left out.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1000,10000,100000,1000000")]
    sizes: Vec<usize>,
    /// Rounds of the get wake-up scenario (0 leaves it out), after a few
    /// uncounted ones.
    #[arg(long, default_value_t = 200)]
    get_rounds: usize,
    /// Watcher counts for fan-out; given with no counts, fan-out is left out.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "100,1000,10000")]
    watchers: Vec<usize>,
    /// Changes sent to the same watchers, one at a time, in each fan-out scenario.
    #[arg(long, default_value_t = 5)]
    fanout_rounds: usize,
    /// Idle heartbeating sessions whose server CPU is measured.
    #[arg(long, default_value_t = 10_000)]
    idle_sessions: usize,
    /// How long the idle sessions are watched.
    #[arg(long, default_value = "20s", value_parser = seaport::parse_duration)]
    idle_window: Duration,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-results.json")]
    out: std::path::PathBuf,
    /// A quick pass with tiny sizes, to keep the benchmark working in CI.
    #[arg(long)]
    smoke: bool,
    /// Sessions resumed on a second seaportd after a kill -9 of the first
    /// (0 leaves it out); needs a shared store (--seaportd-arg).
    #[arg(long, default_value_t = 100)]
    failover_sessions: usize,
    /// A flag for the seaportd the bench starts (repeat for several), such
    /// as `--seaportd-arg=--store --seaportd-arg=etcd`.
    #[arg(long = "seaportd-arg", allow_hyphen_values = true)]
    seaportd_args: Vec<String>,
}

/// One line of the results table.
struct Row {
    scenario: String,
    rate: Option<f64>,
    p50_us: Option<u32>,
    p99_us: Option<u32>,
    baseline_rate: Option<f64>,
    baseline_p99_us: Option<u32>,
    /// Server CPU per operation, and per health check, in microseconds.
    cpu_us: Option<f64>,
    baseline_cpu_us: Option<f64>,
    /// The bench's own CPU per operation, and per health check: the load
    /// generator shares the cores, so what it spends the server lacks.
    bench_us: Option<f64>,
    baseline_bench_us: Option<f64>,
    note: String,
}

impl Row {
    fn from(scenario: String, mut s: Sample, mut baseline: Option<Sample>, note: String) -> Row {
        Row {
            scenario,
            rate: Some(s.rate()),
            p50_us: Some(s.quantile(0.5)),
            p99_us: Some(s.quantile(0.99)),
            baseline_rate: baseline.as_ref().map(Sample::rate),
            baseline_p99_us: baseline.as_mut().map(|b| b.quantile(0.99)),
            cpu_us: s.per_op_us(s.server_cpu),
            baseline_cpu_us: baseline.as_ref().and_then(|b| b.per_op_us(b.server_cpu)),
            bench_us: s.per_op_us(s.bench_cpu),
            baseline_bench_us: baseline.as_ref().and_then(|b| b.per_op_us(b.bench_cpu)),
            note,
        }
    }

    /// A row that holds a figure no rate or latency column fits: its note.
    fn note(scenario: String, note: String) -> Row {
        Row {
            scenario,
            rate: None,
            p50_us: None,
            p99_us: None,
            baseline_rate: None,
            baseline_p99_us: None,
            cpu_us: None,
            baseline_cpu_us: None,
            bench_us: None,
            baseline_bench_us: None,
            note,
        }
    }

    fn json(&self) -> Value {
        json!({
            "scenario": self.scenario, "rate_per_s": self.rate, "p50_us": self.p50_us, "p99_us": self.p99_us,
            "health_rate_per_s": self.baseline_rate, "health_p99_us": self.baseline_p99_us,
            "server_cpu_us_per_op": self.cpu_us, "server_cpu_us_per_health_check": self.baseline_cpu_us,
            "bench_cpu_us_per_op": self.bench_us, "bench_cpu_us_per_health_check": self.baseline_bench_us,
            "rate_vs_health": self.rate.zip(self.baseline_rate).map(|(r, b)| r / b), "note": self.note,
        })
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<44} {:>11} {:>9} {:>9} {:>11} {:>7} {:>8} {:>8} {:>8} {:>8}  note",
        "scenario",
        "rate/s",
        "p50 us",
        "p99 us",
        "health/s",
        "ratio",
        "cpu us",
        "hc us",
        "bench us",
        "hc bench"
    );
    for r in rows {
        let rate = r.rate.map_or("-".into(), |v| format!("{v:.0}"));
        let base = r.baseline_rate.map_or("-".into(), |v| format!("{v:.0}"));
        let ratio = r
            .rate
            .zip(r.baseline_rate)
            .map_or("-".into(), |(a, b)| format!("{:.2}", a / b));
        let cpu = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let us = |v: Option<u32>| v.map_or("-".into(), |v| v.to_string());
        println!(
            "{:<44} {:>11} {:>9} {:>9} {:>11} {:>7} {:>8} {:>8} {:>8} {:>8}  {}",
            r.scenario,
            rate,
            us(r.p50_us),
            us(r.p99_us),
            base,
            ratio,
            cpu(r.cpu_us),
            cpu(r.baseline_cpu_us),
            cpu(r.bench_us),
            cpu(r.baseline_bench_us),
            r.note
        );
    }
}

/// Runs a scenario and notes the CPU time the bench itself used over it,
/// and the server's when the server is our child.
async fn with_cpu(pid: Option<u32>, scenario: impl Future<Output = Sample>) -> Sample {
    let cpu = |pid: Option<u32>| pid.and_then(server::cpu_time);
    let me = Some(std::process::id());
    let before = (cpu(pid), cpu(me));
    let mut sample = scenario.await;
    let spent =
        |a: Option<Duration>, b: Option<Duration>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
    sample.server_cpu = spent(before.0, cpu(pid));
    sample.bench_cpu = spent(before.1, cpu(me));
    sample
}

/// Slices each comparison is cut into.
const SLICES: u32 = 5;

/// Runs the health baseline and a scenario for `duration` each, in
/// alternating slices, so that drift in the speed of a shared machine
/// weighs on both alike.
async fn side_by_side<B, S>(
    pid: Option<u32>,
    duration: Duration,
    mut baseline: impl FnMut(Duration) -> B,
    mut scenario: impl FnMut(Duration) -> S,
) -> (Sample, Sample)
where
    B: Future<Output = Sample>,
    S: Future<Output = Sample>,
{
    let slice = duration / SLICES;
    let (mut base, mut measured) = (Sample::default(), Sample::default());
    for _ in 0..SLICES {
        base.append(with_cpu(pid, baseline(slice)).await);
        measured.append(with_cpu(pid, scenario(slice)).await);
    }
    (base, measured)
}

/// The server to measure: the one at `--addr`, or a seaportd of our own.
async fn server(args: &Args) -> Seaportd {
    if let Some(addr) = args.addr {
        return Seaportd::external(addr);
    }
    let largest = args.sizes.last().copied().unwrap_or(0);
    let mut flags = vec![
        "--max-registrations-per-session".to_string(),
        // The register scenario keeps what it registers until it ends.
        (largest + 1000).max(10_000_000).to_string(),
        // A single session frees thousands of ports a second on its host;
        // the default 5s quarantine would soon hold most of the range.
        "--port-quarantine".to_string(),
        "1s".to_string(),
    ];
    flags.extend(args.seaportd_args.iter().cloned());
    Seaportd::start(&flags).await
}

/// Two seaportd on the bench's store; sessions opened on the first, which
/// is then killed with SIGKILL; each session's latency is the time from
/// the kill until the second server has resumed it.
async fn failover(args: &Args) -> Row {
    let n = args.failover_sessions;
    let first = server(args).await;
    let second = server(args).await;
    let on_first = scenarios::connect(first.addr, args.connections).await;
    let sessions = scenarios::open_sessions(&on_first, n).await;
    let on_second = scenarios::connect(second.addr, args.connections).await;
    let killed = Instant::now();
    drop(first);
    let mut resumed = tokio::task::JoinSet::new();
    for (w, session) in sessions.iter().enumerate() {
        let (channel, id) = (on_second[w % on_second.len()].clone(), session.id.clone());
        resumed.spawn(async move {
            let session = Session::resume(channel, id).await;
            (killed.elapsed(), session)
        });
    }
    let mut sample = stats::Sample::default();
    let mut kept = Vec::new();
    while let Some(done) = resumed.join_next().await {
        let (latency, session) = done.expect("resumed");
        sample.push(latency);
        kept.push(session);
    }
    sample.elapsed = killed.elapsed();
    let mut row = Row::from(
        format!("failover, {n} sessions"),
        sample,
        None,
        "kill -9 of their seaportd -> each resumed on another".into(),
    );
    row.rate = None;
    scenarios::close_sessions(kept).await;
    drop(sessions);
    row
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if args.smoke {
        args.duration = Duration::from_millis(300);
        args.sessions = vec![1, 10];
        args.sizes = vec![1000];
        args.get_rounds = 5;
        args.watchers = vec![50];
        args.idle_sessions = 50;
        args.idle_window = Duration::from_secs(1);
    }
    args.sizes.sort_unstable();
    args.sizes.dedup();
    let mut server = server(&args).await;
    let mut channels = scenarios::connect(server.addr, args.connections).await;
    let mut rows = Vec::new();
    let d = args.duration;

    let shapes = [
        ("register+free", false, "per RPC"),
        (
            "register",
            true,
            "registrations kept until the session closes",
        ),
    ];
    for (name, keep, note) in shapes {
        for &n in &args.sessions {
            let (pid, on) = (server.pid(), channels.as_slice());
            // The same sessions through every slice, closed (freeing what
            // they kept) once the row is measured.
            let sessions = scenarios::open_sessions(on, n).await;
            let ids = Arc::new(sessions.iter().map(|s| s.id.clone()).collect::<Vec<_>>());
            let mut slice = 0;
            let (baseline, sample) = side_by_side(
                pid,
                d,
                |t| scenarios::health(on, n, t),
                |t| {
                    slice += 1;
                    scenarios::register(on, ids.clone(), t, keep, slice)
                },
            )
            .await;
            scenarios::close_sessions(sessions).await;
            rows.push(Row::from(
                format!("{name}, {n} sessions"),
                sample,
                Some(baseline),
                note.into(),
            ));
        }
    }

    // The rows below want a registry of a known size and a server whose
    // memory no earlier row has grown (an allocator keeps what it freed):
    // a seaportd of their own, when we start it.
    let more = !args.sizes.is_empty()
        || args.get_rounds > 0
        || !args.watchers.is_empty()
        || args.idle_sessions > 0;
    if args.addr.is_none() && more {
        drop(channels);
        drop(server);
        server = self::server(&args).await;
        channels = scenarios::connect(server.addr, args.connections).await;
    }
    let pid = server.pid();

    let writers: Vec<Session> = {
        let mut v = Vec::new();
        for i in 0..16 {
            v.push(Session::open(channels[i % channels.len()].clone(), 3_600_000).await);
        }
        v
    };
    let (empty, mut full) = (pid.and_then(server::rss), None);
    let mut filled = 0;
    for &size in &args.sizes {
        let t = Instant::now();
        scenarios::populate(&channels, &writers, filled, size).await;
        eprintln!(
            "populated {size} registrations in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        filled = size;
        // Read before the queries, which should leave nothing behind.
        full = pid.and_then(server::rss);
        let c = args.query_concurrency;
        for (kind, pattern, expect) in [("hit", "svc-42@1.x", 4), ("miss", "nosuch@1.x", 0)] {
            let (baseline, sample) = side_by_side(
                pid,
                d,
                |t| scenarios::health(&channels, c, t),
                |t| scenarios::query(&channels, c, t, pattern, expect),
            )
            .await;
            rows.push(Row::from(
                format!("query {kind} ({expect} of {size})"),
                sample,
                Some(baseline),
                String::new(),
            ));
        }
    }
    if let (Some(empty), Some(full)) = (empty, full) {
        // Signed: a shrinking RSS would be a finding, not a zero.
        let per = (full as f64 - empty as f64) / filled as f64;
        rows.push(Row::note(
            format!("memory, {filled} registrations"),
            format!(
                "RSS {:.0} MiB, {per:.0} bytes/registration over the empty server's {:.0} MiB",
                full as f64 / 1048576.0,
                empty as f64 / 1048576.0
            ),
        ));
    }
    drop(writers);

    if args.get_rounds > 0 {
        let wake = scenarios::get_wakeup(&channels[0], args.get_rounds).await;
        let mut row = Row::from(
            "get wake-up".into(),
            wake,
            None,
            format!(
                "Register sent -> waiting Get returning, {} rounds",
                args.get_rounds
            ),
        );
        // Rounds are paced by the bench, so their count over time is no rate.
        row.rate = None;
        rows.push(row);
    }

    for &w in &args.watchers {
        let (mut fan, cpu) = scenarios::watch_fanout(&channels, w, args.fanout_rounds, pid).await;
        let worst = fan.quantile(1.0);
        let mut row = Row::from(
            format!("watch fan-out, {w} watchers"),
            fan,
            None,
            String::new(),
        );
        row.rate = None;
        row.note = format!(
            "one register until all have it: worst of {} rounds {:.1} ms",
            args.fanout_rounds,
            f64::from(worst) / 1000.0
        );
        if let Some(cpu) = cpu {
            row.note += &format!(
                "; seaportd CPU {:.0} ms a round",
                cpu.as_secs_f64() * 1000.0
            );
        }
        rows.push(row);
    }

    if let Some(pid) = pid.filter(|_| args.idle_sessions > 0) {
        let mut idle = Vec::new();
        for i in 0..args.idle_sessions {
            idle.push(Session::open(channels[i % channels.len()].clone(), 0).await);
        }
        // Ping at a third of the granted (default) ttl, as every client
        // library does, spread evenly: session i pings at (i/n + k)
        // intervals. Timed by the schedule, not by sleeping between pings,
        // because tokio's timer rounds a sub-millisecond sleep up to 1ms.
        let interval = idle.first().map_or(Duration::from_secs(10), |s| s.ttl / 3);
        let pinger = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let n = idle.len().max(1) as u64;
            for k in 0u64.. {
                let due = started + interval.mul_f64(k as f64 / n as f64);
                tokio::time::sleep_until(due).await;
                idle[(k % n) as usize].ping(k / n).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (cpu0, t0) = (server::cpu_time(pid), Instant::now());
        tokio::time::sleep(args.idle_window).await;
        let (cpu1, wall) = (server::cpu_time(pid), t0.elapsed());
        pinger.abort();
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            let busy = (b - a).as_secs_f64() / wall.as_secs_f64();
            // The share is the ping rate times what each ping costs: the
            // cost is mostly the kernel waking an idle server, so it is
            // printed too, for a ping rate or a host other than this run's.
            let pings = args.idle_sessions as f64 / interval.as_secs_f64();
            rows.push(Row::note(
                format!("{} idle sessions heartbeating", args.idle_sessions),
                format!(
                    "server CPU {:.2}% of one core, {:.1} us a ping ({pings:.0} pings/s: each session's every {:.1}s)",
                    busy * 100.0,
                    busy / pings * 1e6,
                    interval.as_secs_f64()
                ),
            ));
        }
    }

    if args.failover_sessions > 0 && !args.seaportd_args.is_empty() && args.addr.is_none() {
        rows.push(failover(&args).await);
    }

    print_table(&rows);
    let results = json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "duration_s": d.as_secs_f64(),
        "connections": args.connections,
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    match std::fs::write(&args.out, serde_json::to_string_pretty(&results).unwrap()) {
        Ok(()) => eprintln!("results written to {}", args.out.display()),
        Err(e) => eprintln!("cannot write {}: {e}", args.out.display()),
    }
}
