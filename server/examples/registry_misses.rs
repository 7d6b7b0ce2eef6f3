//! The registry's memory traffic in the bench's shape, for cachegrind to
//! count: the bench's timings move by several percent with the shared host,
//! a cache-miss count under a simulated cache does not move at all.
//!
//! 1000 sessions, each with its own name and host as seaport-bench's are,
//! take turns to register and to free, with about half of them holding a
//! registration at any time, as the bench's 1000 callers do. Between two
//! operations it touches the next 4 KiB of an 8 MiB buffer, standing for
//! one RPC's HTTP/2 work, so a session's memory is pushed out of a 1 MiB
//! cache by the time it comes round again while what every operation
//! uses stays in it.
//!
//! `bench/misses.sh` runs it under cachegrind and prints cache misses per
//! register+free pair, by function. `registry_misses OPS` runs a warm-up
//! then OPS operations; `HISTORY=n` and `QUARANTINE_MS=n` set those limits.

use std::collections::VecDeque;
use std::time::Duration;

use seaport_server::registry::{Actor, Limits, NewService, Registry, at_once};

/// As seaportd: its allocator's misses are part of the count.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SESSIONS: usize = 1000;
/// Operations before the counted ones: the history fills and the
/// quarantine reaches its steady state (more than a second of them).
const WARM_UP: usize = 120_000;
/// The registry's clock moves this much per operation, about what the
/// bench's 1000 sessions see (85k RPCs a second), so its 1s quarantine
/// holds as many ports as it does there, however slowly cachegrind runs.
const OP_TIME: Duration = Duration::from_micros(12);
/// Memory one RPC's HTTP/2 work is taken to touch, and the pool it comes
/// from (twice what 1000 RPCs touch).
const RPC_MEMORY: usize = 4 << 10;
const OTHER_MEMORY: usize = 8 << 20;
/// Long enough that no session expires during a run.
const TTL: Duration = Duration::from_secs(3600);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    let ops: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("usage: registry_misses OPS");
    let limits = Limits {
        max_ttl: TTL,
        max_registrations_per_session: usize::MAX,
        // The bench starts seaportd with a 1s quarantine.
        port_quarantine: Duration::from_millis(env_or("QUARANTINE_MS", 1000)),
        history: env_or("HISTORY", Limits::default().history),
        ..Limits::default()
    };
    let (registry, _reaper) = Registry::new(limits);
    let sessions: Vec<String> = (0..SESSIONS)
        .map(|i| {
            at_once(registry.open_session(Some(TTL), format!("h{i}"), String::new()))
                .unwrap()
                .id
        })
        .collect();
    let actor = Actor::default();

    let mut other = vec![0u8; OTHER_MEMORY];
    let mut at = 0;
    let mut held: VecDeque<(usize, String)> = VecDeque::new();
    let mut next = 0;
    for op in 0..WARM_UP + ops {
        // Register and free take turns once half the sessions hold one.
        if op % 2 == 1 && held.len() >= SESSIONS / 2 {
            let (w, id) = held.pop_front().expect("half are held");
            at_once(registry.free(&sessions[w], &id, &actor)).expect("free");
        } else {
            let w = next % SESSIONS;
            next += 1;
            let new = NewService {
                session_id: sessions[w].clone(),
                role: format!("bench-{w}@1.0.0"),
                host: format!("bench-{w}"),
                ..Default::default()
            };
            let service = at_once(registry.register(new, &actor)).expect("register");
            held.push_back((w, service.id.clone()));
        }
        for line in other[at..at + RPC_MEMORY].chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        at = (at + RPC_MEMORY) % OTHER_MEMORY;
        std::hint::black_box(&other);
        tokio::time::advance(OP_TIME).await;
    }
}
