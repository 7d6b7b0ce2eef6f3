//! The server page's facts: what this seaportd is and holds, recomputed
//! when its health changes and every few seconds while a console is open,
//! and handed to every open console through a watch channel, which keeps
//! only the latest.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::watch;

use super::{Console, millis, stopped};
use crate::registry::{DEFAULT_NAMESPACE, StoreHealth};

/// How often the facts are recomputed while a console is open: reading the
/// stats takes the registry's lock for time that grows with names and hosts.
const EVERY: Duration = Duration::from_secs(2);

/// What does not change while the server runs.
#[derive(Clone, Debug)]
pub(crate) struct About {
    /// `memory`, or `etcd` and its endpoints.
    pub(crate) store: String,
    /// The host and port this server registered itself under.
    pub(crate) host: String,
    /// See `host`.
    pub(crate) port: u16,
    /// When it started.
    pub(crate) started: SystemTime,
}

impl About {
    /// This server, registered as `host:port`, starting now.
    pub(crate) fn of(config: &crate::Config, host: String, port: u16) -> Self {
        let store = match &config.store {
            crate::config::StoreConfig::Memory => "memory".to_string(),
            crate::config::StoreConfig::Etcd(etcd) => format!(
                "etcd ({}, prefix {})",
                etcd.endpoints.join(", "),
                etcd.prefix
            ),
        };
        About {
            store,
            host,
            port,
            started: SystemTime::now(),
        }
    }
}

/// The facts now, as JSON.
pub(super) fn now(console: &Console) -> Value {
    let registry = &console.registry;
    let stats = registry.stats();
    let about = &console.about;
    let peers: Vec<Value> = registry
        .selector("seaport", DEFAULT_NAMESPACE, std::iter::empty())
        .map(|s| registry.query(&s).0)
        .unwrap_or_default()
        .iter()
        .filter(|s| !(*s.host == *about.host && s.port == about.port))
        .map(|s| {
            json!({
                "address": s.address(),
                "version": s.version.as_ref().map(ToString::to_string),
                "id": s.id,
            })
        })
        .collect();
    let store_health = match *registry.health().borrow() {
        StoreHealth::Syncing => "syncing",
        StoreHealth::Synced => "synced",
        StoreHealth::Unreachable => "unreachable",
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "store": about.store,
        "address": if about.host.contains(':') {
            format!("[{}]:{}", about.host, about.port)
        } else {
            format!("{}:{}", about.host, about.port)
        },
        "started": millis(about.started),
        "serving": *console.ready.borrow(),
        "store_health": store_health,
        "revision": stats.revision,
        "sessions": stats.sessions,
        "registrations": stats.registrations.iter().map(|(_, n)| n).sum::<usize>(),
        "watchers": console.watchers.load(Ordering::Relaxed),
        "viewers": console.viewers(),
        "namespaces": stats.registrations.iter()
            .map(|(name, n)| json!({"name": name, "registrations": n}))
            .collect::<Vec<_>>(),
        "ports_held": stats.ports_held.iter()
            .map(|(host, n)| json!({"host": host, "ports": n}))
            .collect::<Vec<_>>(),
        "peers": peers,
    })
}

/// Keeps `facts` current until the server stops: at once when serving or
/// the store's health changes, else every [`EVERY`] while a console is
/// open.
pub(super) async fn keep(console: Arc<Console>, facts: watch::Sender<Arc<str>>) {
    let mut stop = console.stop.clone();
    let mut ready = console.ready.clone();
    let mut health = console.registry.health();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tick.tick() => false,
            r = ready.changed() => match r {
                Ok(()) => true,
                Err(_) => return,
            },
            r = health.changed() => match r {
                Ok(()) => true,
                Err(_) => return,
            },
        };
        if changed || console.viewers() > 0 {
            let text: Arc<str> = now(&console).to_string().into();
            facts.send_if_modified(|old| {
                let modified = *old != text;
                *old = text;
                modified
            });
        }
    }
}
