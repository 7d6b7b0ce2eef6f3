//! seaportd, the Seaport registry server, as a library: [`run`] serves the
//! registry on a bound listener until a shutdown signal, for the binary and
//! the tests alike.

pub mod admin;
pub mod auth;
mod coalesce;
pub mod config;
mod console;
pub mod grpc;
pub mod metrics;
pub use seaport_core as registry;
mod reload;
mod serve;
pub mod tls;
mod wire;

/// The server's stubs: `seaport::pb`'s messages, with `Service` encoded by
/// [`wire`].
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod pb {
    tonic::include_proto!("seaport.v1");
}

use std::future::Future;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::ServingStatus;

pub use config::Config;
use grpc::{RegistryRpcs, RegistryServer};
use registry::{NewService, Registry};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    /// The server stopped serving before it was told to.
    #[error("the server stopped serving on its own; this is a bug, please report it")]
    Stopped,
    /// Reflection could not be set up from the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server could not register itself.
    #[error("self-registration: {0}")]
    SelfRegistration(#[from] registry::RegistryError),
    /// A TLS file could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The policy file could not be used.
    #[error("policy: {0}")]
    Policy(String),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(String),
}

/// The gRPC service name of the registry, as health checks name it.
pub const REGISTRY_SERVICE: &str = "seaport.v1.Registry";

/// Serves the registry on `listener` until `shutdown` completes. Then it
/// leaves: reports NOT_SERVING and tells every session to move to another
/// server; after `config.drain_delay` (for probes and balancers to notice)
/// and once the sessions have gone, it stops: accepts no more, ends the
/// streams, and waits up to `config.shutdown_grace` for calls in flight.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    run_with_admin(listener, None, config, shutdown).await
}

/// `run`, also serving health in plaintext on `admin` (see [`admin`]).
pub async fn run_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    run_with_console(listener, admin, None, config, shutdown).await
}

/// `run_with_admin`, also serving the web console on `console`.
pub async fn run_with_console(
    listener: TcpListener,
    admin: Option<TcpListener>,
    console: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let local = listener.local_addr()?;
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(RwLock::new(files.load()?))),
        None => None,
    };
    let policy = match &config.policy {
        Some(path) => registry::Policy::load(path).map_err(ServerError::Policy)?,
        None => registry::Policy::default(),
    };
    let auth = Arc::new(auth::Auth {
        mtls: config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        require_cert_for_reads: config.require_client_cert_for_reads,
    });
    let store_metrics = Arc::new(metrics::StoreMetrics::new());
    let (registry, _reaper) = open_store(&config, &store_metrics).await?;
    registry.set_policy(policy);
    let registered = if registry.is_synced() {
        Some(register_self(&registry, &config, local).await?)
    } else {
        // Through a store, once the index is loaded; until then the server
        // answers NOT_SERVING.
        None
    };
    // Ends with this function: a stopped server must not register itself
    // again, nor keep its registry alive.
    let mut own_tasks = tokio::task::JoinSet::new();
    own_tasks.spawn(stay_registered(
        registry.clone(),
        config.clone(),
        local,
        registered,
    ));

    let health = tonic_health::server::HealthReporter::new();
    let (serving_tx, serving_rx) = tokio::sync::watch::channel(true);
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(report_health(
        registry.health(),
        serving_tx.subscribe(),
        health.clone(),
        ready_tx,
    ));
    // v1alpha too: grpcui, Postman, older grpcurl and Python's reflection
    // client speak only that.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(seaport::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) =
        (reflection().build_v1()?, reflection().build_v1alpha()?);

    let watchers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let on_etcd = matches!(config.store, config::StoreConfig::Etcd(_));
    let metrics = Arc::new(metrics::Metrics::new(
        registry.clone(),
        watchers.clone(),
        on_etcd.then_some(store_metrics),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (leaving_tx, leaving_rx) = tokio::sync::watch::channel(false);
    let sessions = Arc::new(tokio::sync::watch::Sender::new(0usize));
    // Health Watch streams end at shutdown like the registry's own.
    let health_service = tonic_health::pb::health_server::HealthServer::new(
        grpc::StoppingHealth::new(health.clone(), stop_rx.clone()),
    );
    if let Some(admin) = admin {
        tracing::info!(admin = %admin.local_addr()?, "admin port serving health in plaintext");
        tokio::spawn(admin::run(
            admin,
            health_service.clone(),
            ready_rx.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ));
    }
    if let Some(listener) = console {
        console::spawn(
            listener,
            console::Context {
                registry: registry.clone(),
                auth: auth.clone(),
                tls: tls.clone(),
                ready: ready_rx,
                watchers: watchers.clone(),
                stop: stop_rx.clone(),
                about: console::About::of(&config, advertised_host(&config, local), local.port()),
                handshake_timeout: config.handshake_timeout,
            },
        );
    }
    // Always: a SIGHUP must never end the process, even with nothing to
    // reload.
    reload::start(
        config.clone(),
        tls.clone(),
        registry.clone(),
        stop_rx.clone(),
    );
    let registry_service = RegistryServer::new(RegistryRpcs::new(
        registry.clone(),
        auth,
        (config.max_watchers, watchers),
        grpc::Stop {
            leaving: leaving_rx,
            stopped: stop_rx.clone(),
            sessions: sessions.clone(),
        },
        metrics.clone(),
    ))
    .max_decoding_message_size(config.max_message_size);
    let routes = Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(registry_service);
    let settings = serve::Settings {
        max_concurrent_streams: config.max_concurrent_streams,
        keepalive_interval: std::time::Duration::from_secs(30),
        max_connections: config.max_connections,
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
        metrics,
    };
    // The listener closes when the server stops, with the streams.
    let mut stopping = stop_rx;
    let stopped = async move {
        let _ = stopping.wait_for(|stopped| *stopped).await;
    };
    let mut server = std::pin::pin!(serve::serve(routes, listener, tls, settings, stopped));
    tracing::info!(%local, version = env!("CARGO_PKG_VERSION"), tls = config.tls.is_some(), "seaportd serving");

    tokio::select! {
        _ = &mut server => return Err(ServerError::Stopped),
        _ = shutdown => {}
    }
    tracing::info!(drain_delay = ?config.drain_delay, sessions = *sessions.borrow(), "leaving: reporting NOT_SERVING and moving sessions to other servers");
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(REGISTRY_SERVICE, ServingStatus::NotServing)
        .await;
    let _ = serving_tx.send(false);
    drop(serving_rx);
    let _ = leaving_tx.send(true);
    // Probes and balancers get `drain_delay` to notice; session streams,
    // told to move, get up to the grace to go.
    let moved = async {
        let mut open = sessions.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    };
    let settle = async {
        tokio::join!(tokio::time::sleep(config.drain_delay), async {
            if tokio::time::timeout(config.shutdown_grace, moved)
                .await
                .is_err()
            {
                tracing::warn!(grace = ?config.shutdown_grace, sessions = *sessions.borrow(), "session streams still open after the grace period");
            }
        });
    };
    tokio::select! {
        _ = &mut server => return Err(ServerError::Stopped),
        _ = settle => {}
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(config.shutdown_grace, &mut server).await {
        Ok(()) => {}
        Err(_) => {
            tracing::warn!(grace = ?config.shutdown_grace, "calls still open after the grace period; closing them")
        }
    }
    tracing::info!("seaportd stopped");
    Ok(())
}

/// The host the server advertises itself under: `--advertise-host`, else
/// the address it listens on, else (listening on every address) the first
/// address of its interfaces that other machines can reach, IPv4 first.
/// Loopback only when the machine has nothing else, with a warning: clients
/// elsewhere would learn their own localhost as a registry server.
fn advertised_host(config: &Config, local: std::net::SocketAddr) -> String {
    if let Some(host) = &config.advertise_host {
        return host.clone();
    }
    if !local.ip().is_unspecified() {
        return local.ip().to_string();
    }
    let routable = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
        .min_by_key(|ip| ip.is_ipv6());
    match routable {
        Some(ip) => ip.to_string(),
        None => {
            tracing::warn!("no address but loopback to advertise; give --advertise-host");
            "127.0.0.1".to_string()
        }
    }
}

/// Link-local addresses (169.254/16, fe80::/10) only reach the same link,
/// and need a zone to be used at all.
fn is_link_local(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// The registry on the configured store, and the memory store's reaper
/// guard (none with etcd: sessions expire there).
async fn open_store(
    config: &Config,
    #[cfg_attr(not(feature = "etcd"), allow(unused_variables))] observer: &Arc<
        metrics::StoreMetrics,
    >,
) -> Result<(Registry, Option<registry::ReaperGuard>), ServerError> {
    match &config.store {
        config::StoreConfig::Memory => {
            let (registry, reaper) = Registry::new(config.limits.clone());
            Ok((registry, Some(reaper)))
        }
        #[cfg(feature = "etcd")]
        config::StoreConfig::Etcd(etcd) => {
            let options = seaport_etcd::EtcdOptions {
                endpoints: etcd.endpoints.clone(),
                prefix: etcd.prefix.clone(),
                ca: etcd.ca.clone(),
                cert: etcd.cert.clone(),
                key: etcd.key.clone(),
            };
            tracing::info!(endpoints = %etcd.endpoints.join(","), prefix = %etcd.prefix, "store: etcd");
            let registry =
                seaport_etcd::EtcdStore::start(&options, config.limits.clone(), observer.clone())
                    .await
                    .map_err(ServerError::Store)?;
            Ok((registry, None))
        }
        #[cfg(not(feature = "etcd"))]
        config::StoreConfig::Etcd(_) => Err(ServerError::Store(
            "this seaportd was built without the `etcd` feature".into(),
        )),
    }
}

/// Serves SERVING while the registry is synced with its store and the
/// server is not stopping, NOT_SERVING otherwise, on gRPC health and on
/// the admin port's /readyz.
async fn report_health(
    mut store: tokio::sync::watch::Receiver<registry::StoreHealth>,
    mut serving: tokio::sync::watch::Receiver<bool>,
    health: tonic_health::server::HealthReporter,
    ready: tokio::sync::watch::Sender<bool>,
) {
    loop {
        let synced = *store.borrow_and_update() == registry::StoreHealth::Synced;
        let up = synced && *serving.borrow_and_update();
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        health.set_service_status(REGISTRY_SERVICE, status).await;
        ready.send_replace(up);
        tokio::select! {
            changed = store.changed() => if changed.is_err() { return },
            changed = serving.changed() => if changed.is_err() { return },
        }
    }
}

/// Keeps this server registered as `seaport@<version>`: once the index is
/// loaded (`registered` is the registration made already, if any), and
/// again whenever its registration goes: its lease lapsed while etcd was
/// out of reach, or an admin freed it.
async fn stay_registered(
    registry: Registry,
    config: Config,
    local: std::net::SocketAddr,
    mut registered: Option<String>,
) {
    let mut health = registry.health();
    loop {
        if let Some(id) = registered.take() {
            if !until_gone(&registry, &id).await {
                return;
            }
            tracing::warn!("this server's own registration went; registering it again");
        }
        if health
            .wait_for(|h| *h == registry::StoreHealth::Synced)
            .await
            .is_err()
        {
            return;
        }
        match register_self(&registry, &config, local).await {
            Ok(id) => registered = Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register this server yet; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Completes when registration `id` is no longer in the index (true), or
/// the registry's feed ends (false).
async fn until_gone(registry: &Registry, id: &str) -> bool {
    use tokio_stream::StreamExt;
    let Ok(selector) = registry.selector("seaport", "", std::iter::empty()) else {
        return false;
    };
    let mut watch = registry.watch(selector, 0);
    while let Some(event) = watch.next().await {
        let gone = match event.kind {
            seaport::EventKind::Freed => event.service.is_some_and(|s| s.id == id),
            // A fresh snapshot follows a reset: see whether it is in it.
            seaport::EventKind::Synced => registry
                .selector("seaport", "", std::iter::empty())
                .map(|s| !registry.query(&s).0.iter().any(|s| s.id == id))
                .unwrap_or(false),
            _ => false,
        };
        if gone {
            return true;
        }
    }
    false
}

/// Registers the server as `seaport@<version>` so clients can discover
/// registry servers, as the original seaport does.
async fn register_self(
    registry: &Registry,
    config: &Config,
    local: std::net::SocketAddr,
) -> Result<String, ServerError> {
    let host = advertised_host(config, local);
    let service = registry
        .register_server(NewService {
            role: format!("seaport@{}", env!("CARGO_PKG_VERSION")),
            host,
            port: u32::from(local.port()),
            metadata: vec![("grpc".to_string(), REGISTRY_SERVICE.to_string())],
            ..Default::default()
        })
        .await?;
    Ok(service.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_on_every_address_advertises_one_others_can_reach() {
        let any = "0.0.0.0:9090".parse().unwrap();
        let host: std::net::IpAddr = advertised_host(&Config::default(), any).parse().unwrap();
        let reachable = if_addrs::get_if_addrs()
            .unwrap()
            .iter()
            .any(|i| !i.is_loopback() && !is_link_local(&i.ip()));
        assert_eq!(host.is_loopback(), !reachable, "advertised {host}");
        assert!(!host.is_unspecified());
        let one = "10.1.2.3:9090".parse().unwrap();
        assert_eq!(advertised_host(&Config::default(), one), "10.1.2.3");
        let named = Config {
            advertise_host: Some("seaport-1.internal".into()),
            ..Config::default()
        };
        assert_eq!(advertised_host(&named, any), "seaport-1.internal");
    }
}
