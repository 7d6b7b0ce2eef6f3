//! What the registry alone costs, with no RPC around it: a register + free
//! on one thread with its memory in cache, then with other memory touched
//! between operations (as a server's HTTP/2 work does), then with two
//! threads taking turns with its lock; and a register into a name that
//! already holds many services. Set beside seaport-bench's per-RPC server
//! CPU, it tells how much of a registration's cost is the registry.
//!
//! `cargo run --release -p seaport-server --example registry_cost`
//! (`HISTORY=0` before it keeps no changes for resuming watches).

use std::time::{Duration, Instant};

use seaport_server::registry::{Actor, Limits, NewService, Registry, at_once};

/// Pairs timed in cache, and on two threads.
const PAIRS: usize = 1_000_000;
/// Pairs timed with other memory touched between operations.
const COLD_PAIRS: usize = 10_000;
/// Memory touched between operations for the cold figure.
const OTHER_MEMORY: usize = 4 << 20;
/// Long enough that no session expires during a run.
const TTL: Duration = Duration::from_secs(3600);

/// The port quarantine, shorter than the server's 5s so that every run is
/// in the server's steady state: nearly every free's quarantine entry
/// expires, at a later register, within the same run. With 5s, a run of a
/// second saw no expiry at all, and the next run paid for all of its.
const QUARANTINE: Duration = Duration::from_millis(200);

/// Registrations on one host before the next, as seaport-bench does: well
/// within a host's assignable ports while the freed ones are quarantined.
const PER_HOST: usize = 20_000;

/// One register + free on session `w`, each with its own name and hosts
/// as the bench's sessions have; returns the time spent in the registry,
/// `between` run after each operation outside the timing.
fn pair(
    registry: &Registry,
    sessions: &[String],
    w: usize,
    host: String,
    mut between: impl FnMut(),
) -> Duration {
    let actor = Actor::default();
    let new = NewService {
        session_id: sessions[w].clone(),
        role: format!("bench-{w}@1.0.0"),
        host,
        ..Default::default()
    };
    let t = Instant::now();
    let service = at_once(registry.register(new, &actor)).expect("register");
    let registering = t.elapsed();
    between();
    let t = Instant::now();
    at_once(registry.free(&sessions[w], &service.id, &actor)).expect("free");
    let freeing = t.elapsed();
    between();
    registering + freeing
}

/// Nanoseconds per pair over `count` pairs, cycling over the sessions;
/// hosts are named after `run`, so no run finds another's quarantine.
fn pairs(
    registry: &Registry,
    sessions: &[String],
    run: &str,
    start: usize,
    count: usize,
    mut between: impl FnMut(),
) -> f64 {
    // Earlier runs' quarantine expires, and one untimed pair clears it.
    std::thread::sleep(QUARANTINE);
    pair(
        registry,
        sessions,
        start % sessions.len(),
        format!("{run}-settle"),
        || {},
    );
    let spent: Duration = (0..count)
        .map(|i| {
            let w = (start + i * 7919) % sessions.len();
            let host = format!("{run}-{w}-{}", i / sessions.len() / PER_HOST);
            pair(registry, sessions, w, host, &mut between)
        })
        .sum();
    spent.as_nanos() as f64 / count as f64
}

/// Nanoseconds per register into one name while it grows from `from` to
/// `to` services (one version, as replicas of one release have).
fn grow(registry: &Registry, session: &str, from: usize, to: usize) -> f64 {
    let actor = Actor::default();
    let t = Instant::now();
    for i in from..to {
        let new = NewService {
            session_id: session.to_string(),
            role: "web@1.2.3".into(),
            host: format!("h{}", i / 50_000),
            ..Default::default()
        };
        at_once(registry.register(new, &actor)).expect("register");
    }
    t.elapsed().as_nanos() as f64 / (to - from) as f64
}

fn limits() -> Limits {
    Limits {
        max_ttl: TTL,
        max_registrations_per_session: usize::MAX,
        port_quarantine: QUARANTINE,
        // HISTORY=n sets the changes kept for resuming watches: evicting
        // the oldest (and freeing its service) is a cold read each time.
        history: std::env::var("HISTORY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Limits::default().history),
        ..Limits::default()
    }
}

#[tokio::main]
async fn main() {
    let mut other = vec![0u8; OTHER_MEMORY];
    let mut touch = || {
        for line in other.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&other);
    };
    for n in [10, 100, 1000] {
        let (registry, _reaper) = Registry::new(limits());
        let sessions: Vec<String> = (0..n)
            .map(|i| {
                at_once(registry.open_session(Some(TTL), format!("h{i}"), String::new()))
                    .unwrap()
                    .id
            })
            .collect();
        pairs(&registry, &sessions, "warm", 0, PAIRS, || {});
        let alone = pairs(&registry, &sessions, "alone", 0, PAIRS, || {});
        let cold = pairs(&registry, &sessions, "cold", 0, COLD_PAIRS, &mut touch);
        let threads: Vec<_> = [1, 3]
            .map(|start| {
                let (registry, sessions) = (registry.clone(), sessions.clone());
                std::thread::spawn(move || {
                    pairs(
                        &registry,
                        &sessions,
                        &format!("thread{start}"),
                        start,
                        PAIRS,
                        || {},
                    )
                })
            })
            .into_iter()
            .collect();
        let shared: Vec<f64> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        println!(
            "{n:>5} sessions, ns per register+free: {alone:>5.0} in cache, \
             {cold:>5.0} with {} MiB touched between operations, \
             {:>5.0} each on two threads at once",
            OTHER_MEMORY >> 20,
            shared.iter().sum::<f64>() / shared.len() as f64
        );
    }

    let (registry, _reaper) = Registry::new(limits());
    let session = at_once(registry.open_session(Some(TTL), "h".into(), String::new()))
        .unwrap()
        .id;
    let mut held = 0;
    for size in [100_000, 300_000] {
        grow(&registry, &session, held, size - 10_000);
        let ns = grow(&registry, &session, size - 10_000, size);
        held = size;
        println!("one name at {size:>7} services: {ns:>6.0} ns per register");
    }
}
