//! Prometheus metrics, served on the admin port at `/metrics`. An RPC
//! costs two atomic adds and a histogram bucket: its counters are made per
//! method and code at start, not looked up by label on the way. What the
//! registry holds (sessions, registrations, ports) is read when scraped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as Prometheus;
use tonic::Code;

use crate::registry::Registry;

/// The RPCs counted, in the order of [`Method`].
const METHODS: [&str; 8] = [
    "Heartbeat",
    "Register",
    "Update",
    "Free",
    "Drain",
    "Query",
    "Get",
    "Watch",
];

/// An RPC of the registry service.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Method {
    Heartbeat,
    Register,
    Update,
    Free,
    Drain,
    Query,
    Get,
    Watch,
}

/// gRPC's codes, OK to UNAUTHENTICATED.
const CODES: usize = 17;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    request: &'static str,
}

/// A histogram's constructor, as a family of them keeps it.
type NewHistogram = fn() -> Histogram;

/// From 50 µs to about 3 s, by threes.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 3.0, 11,
    ))
}

/// The etcd store's work: each request's round trip, keep-alive failures,
/// and the newest revision etcd answered at, from which the index's lag
/// behind etcd is read when scraped.
pub struct StoreMetrics {
    requests: Family<RequestLabels, Histogram, NewHistogram>,
    failures: Family<RequestLabels, Counter>,
    keep_alive_failures: Counter,
    newest: AtomicU64,
    lag: Gauge,
}

impl StoreMetrics {
    /// Nothing counted yet.
    pub fn new() -> Self {
        StoreMetrics {
            requests: Family::new_with_constructor(latency_histogram),
            failures: Family::default(),
            keep_alive_failures: Counter::default(),
            newest: AtomicU64::new(0),
            lag: Gauge::default(),
        }
    }

    fn register(&self, p: &mut Prometheus) {
        p.register(
            "etcd_request_duration_seconds",
            "Round trips to etcd, by request",
            self.requests.clone(),
        );
        p.register(
            "etcd_request_failures",
            "Requests to etcd that failed, by request",
            self.failures.clone(),
        );
        p.register(
            "etcd_keep_alive_failures",
            "Keep-alive streams that broke or could not be opened, and leases etcd no longer knew",
            self.keep_alive_failures.clone(),
        );
        p.register(
            "etcd_revision_lag",
            "Revisions the index is behind the newest etcd answered at",
            self.lag.clone(),
        );
    }
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "etcd")]
impl seaport_etcd::Observer for StoreMetrics {
    fn round_trip(&self, request: &'static str, took: Duration, ok: bool) {
        let labels = RequestLabels { request };
        self.requests
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if !ok {
            self.failures.get_or_create(&labels).inc();
        }
    }

    fn keep_alive_failed(&self) {
        self.keep_alive_failures.inc();
    }

    fn revision(&self, revision: u64) {
        self.newest.fetch_max(revision, Ordering::Relaxed);
    }
}

/// Every metric of one seaportd.
pub struct Metrics {
    prometheus: Prometheus,
    calls: Vec<[Counter; CODES]>,
    latency: Vec<Histogram>,
    connections: Counter,
    refused: Counter,
    handshakes_failed: Family<ReasonLabels, Counter>,
    // Read from the registry when scraped.
    registry: Registry,
    watchers: Arc<AtomicUsize>,
    sessions: Gauge,
    sessions_opened: Counter,
    sessions_resumed: Counter,
    sessions_expired: Counter,
    sessions_closed: Counter,
    registrations: Family<NamespaceLabels, Gauge>,
    ports_held: Family<HostLabels, Gauge>,
    port_range: Gauge,
    revision: Gauge,
    watching: Gauge,
    watch_resets: Counter,
    get_waiters: Gauge,
    store: Option<Arc<StoreMetrics>>,
}

impl Metrics {
    /// The metrics of a server on `registry`, whose Watch streams
    /// `watchers` counts, with its `store`'s when it has one (etcd).
    pub fn new(
        registry: Registry,
        watchers: Arc<AtomicUsize>,
        store: Option<Arc<StoreMetrics>>,
    ) -> Metrics {
        let mut prometheus = Prometheus::with_prefix("seaport");
        let rpcs = Family::<RpcLabels, Counter>::default();
        let durations = Family::<MethodLabels, Histogram, NewHistogram>::new_with_constructor(
            latency_histogram,
        );
        let calls = METHODS
            .iter()
            .map(|&method| {
                std::array::from_fn(|code| {
                    let code = format!("{:?}", Code::from_i32(code as i32));
                    rpcs.get_or_create(&RpcLabels { method, code }).clone()
                })
            })
            .collect();
        let latency = METHODS
            .iter()
            .map(|&method| durations.get_or_create(&MethodLabels { method }).clone())
            .collect();
        prometheus.register("rpcs", "RPCs answered, by method and gRPC code", rpcs);
        prometheus.register(
            "rpc_duration_seconds",
            "Time to answer a unary RPC, or to open a stream",
            durations,
        );
        let metrics = Metrics {
            prometheus,
            calls,
            latency,
            connections: Counter::default(),
            refused: Counter::default(),
            handshakes_failed: Family::default(),
            registry,
            watchers,
            sessions: Gauge::default(),
            sessions_opened: Counter::default(),
            sessions_resumed: Counter::default(),
            sessions_expired: Counter::default(),
            sessions_closed: Counter::default(),
            registrations: Family::default(),
            ports_held: Family::default(),
            port_range: Gauge::default(),
            revision: Gauge::default(),
            watching: Gauge::default(),
            watch_resets: Counter::default(),
            get_waiters: Gauge::default(),
            store,
        };
        metrics.register_all()
    }

    fn register_all(mut self) -> Metrics {
        let p = &mut self.prometheus;
        p.register(
            "connections",
            "Connections accepted",
            self.connections.clone(),
        );
        p.register(
            "connections_refused",
            "Connections closed at once: at --max-connections",
            self.refused.clone(),
        );
        p.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            self.handshakes_failed.clone(),
        );
        p.register("sessions_open", "Sessions open", self.sessions.clone());
        p.register(
            "sessions_opened",
            "Sessions opened here",
            self.sessions_opened.clone(),
        );
        p.register(
            "sessions_resumed",
            "Sessions resumed here",
            self.sessions_resumed.clone(),
        );
        p.register(
            "sessions_expired",
            "Sessions expired (in a cluster, as every server sees them)",
            self.sessions_expired.clone(),
        );
        p.register(
            "sessions_closed",
            "Sessions closed here",
            self.sessions_closed.clone(),
        );
        p.register(
            "registrations",
            "Registrations, by namespace",
            self.registrations.clone(),
        );
        p.register(
            "ports_held",
            "Ports held, by host (the 100 fullest hosts)",
            self.ports_held.clone(),
        );
        p.register(
            "port_range_size",
            "Ports in the range assigned from",
            self.port_range.clone(),
        );
        p.register(
            "revision",
            "The revision the index reflects",
            self.revision.clone(),
        );
        p.register("watchers", "Watch streams open", self.watching.clone());
        p.register(
            "watch_resets",
            "Watches reset for falling behind the feed",
            self.watch_resets.clone(),
        );
        p.register(
            "get_waiters",
            "Gets waiting for a match",
            self.get_waiters.clone(),
        );
        if let Some(store) = &self.store {
            store.register(p);
        }
        self
    }

    /// Counts an RPC answered with `code` after `elapsed`.
    pub(crate) fn rpc(&self, method: Method, code: Code, elapsed: Duration) {
        let m = method as usize;
        self.calls[m][(code as usize).min(CODES - 1)].inc();
        self.latency[m].observe(elapsed.as_secs_f64());
    }

    /// Counts a connection accepted.
    pub(crate) fn connection(&self) {
        self.connections.inc();
    }

    /// Counts a connection refused at the connection limit.
    pub(crate) fn refused(&self) {
        self.refused.inc();
    }

    /// Counts a failed TLS handshake, by a reason of a few kinds.
    pub(crate) fn handshake_failed(&self, error: Option<&std::io::Error>) {
        let reason = match error.map(|e| e.to_string().to_ascii_lowercase()) {
            None => "timeout",
            Some(e) if e.contains("unknownissuer") || e.contains("unknown ca") => "unknown_ca",
            Some(e) if e.contains("expired") || e.contains("notvalidyet") => "certificate_expired",
            Some(e) if e.contains("no certificate") || e.contains("nocertificates") => {
                "no_client_certificate"
            }
            Some(e) if e.contains("content type") || e.contains("corrupt") => "not_tls",
            Some(_) => "other",
        };
        self.handshakes_failed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The metrics in Prometheus's text format, with what the registry
    /// holds read now.
    pub fn render(&self) -> String {
        let stats = self.registry.stats();
        let set = |gauge: &Gauge, value: u64| {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.sessions, stats.sessions as u64);
        set(&self.port_range, stats.port_range as u64);
        set(&self.revision, stats.revision);
        set(&self.watching, self.watchers.load(Ordering::Relaxed) as u64);
        set(&self.get_waiters, stats.get_waiters);
        let total = |counter: &Counter, value: u64| {
            counter.inc_by(value.saturating_sub(counter.get()));
        };
        total(&self.sessions_opened, stats.sessions_opened);
        total(&self.sessions_resumed, stats.sessions_resumed);
        total(&self.sessions_expired, stats.sessions_expired);
        total(&self.sessions_closed, stats.sessions_closed);
        total(&self.watch_resets, stats.watch_resets);
        if let Some(store) = &self.store {
            let newest = store.newest.load(Ordering::Relaxed);
            set(&store.lag, newest.saturating_sub(stats.revision));
        }
        self.registrations.clear();
        for (namespace, count) in stats.registrations {
            set(
                &self
                    .registrations
                    .get_or_create(&NamespaceLabels { namespace }),
                count as u64,
            );
        }
        self.ports_held.clear();
        for (host, held) in stats.ports_held {
            set(
                &self.ports_held.get_or_create(&HostLabels { host }),
                held as u64,
            );
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.prometheus)
            .expect("writing to a String cannot fail");
        out
    }
}
