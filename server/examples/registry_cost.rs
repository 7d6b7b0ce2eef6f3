//! What the registry alone costs, with no RPC around it: a register + free
//! on one thread, then with two threads taking turns with its lock; and a
//! register into a name that already holds many services. Set beside
//! seaport-bench's per-RPC server CPU, it tells how much of a
//! registration's cost is the registry and how much the transport.
//!
//! `cargo run --release -p seaport-server --example registry_cost`

use std::time::{Duration, Instant};

use seaport_server::registry::{Actor, Limits, NewService, Registry};

const PAIRS: usize = 1_000_000;

/// Nanoseconds per register + free, cycling over the sessions, each with
/// its own name and host as the bench's sessions have.
fn pairs(registry: &Registry, sessions: &[String], start: usize) -> f64 {
    let actor = Actor::default();
    let t = Instant::now();
    for i in 0..PAIRS {
        let w = (start + i * 7919) % sessions.len();
        let new = NewService {
            session_id: sessions[w].clone(),
            role: format!("bench-{w}@1.0.0"),
            host: format!("bench-{w}"),
            ..Default::default()
        };
        let service = registry.register(new, &actor).expect("register");
        registry
            .free(&sessions[w], &service.id, &actor)
            .expect("free");
    }
    t.elapsed().as_nanos() as f64 / PAIRS as f64
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
        registry.register(new, &actor).expect("register");
    }
    t.elapsed().as_nanos() as f64 / (to - from) as f64
}

#[tokio::main]
async fn main() {
    for n in [10, 100, 1000] {
        // No quarantine: a few hosts churning a million ports would
        // otherwise run out of them.
        let limits = Limits {
            port_quarantine: Duration::ZERO,
            ..Limits::default()
        };
        let (registry, _reaper) = Registry::new(limits);
        let sessions: Vec<String> = (0..n)
            .map(|i| {
                registry
                    .open_session(None, format!("h{i}"), String::new())
                    .id
            })
            .collect();
        pairs(&registry, &sessions, 0); // warm up
        let alone = pairs(&registry, &sessions, 0);
        let threads: Vec<_> = [1, 3]
            .map(|start| {
                let (registry, sessions) = (registry.clone(), sessions.clone());
                std::thread::spawn(move || pairs(&registry, &sessions, start))
            })
            .into_iter()
            .collect();
        let shared: Vec<f64> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        println!(
            "{n:>5} sessions: {alone:>6.0} ns per register+free on one thread; \
             {:>6.0} ns each on two threads at once",
            shared.iter().sum::<f64>() / shared.len() as f64
        );
    }

    let (registry, _reaper) = Registry::new(Limits {
        max_registrations_per_session: usize::MAX,
        ..Limits::default()
    });
    let session = registry.open_session(None, "h".into(), String::new()).id;
    let mut held = 0;
    for size in [100_000, 300_000] {
        grow(&registry, &session, held, size - 10_000);
        let ns = grow(&registry, &session, size - 10_000, size);
        held = size;
        println!("one name at {size:>7} services: {ns:>6.0} ns per register");
    }
}
