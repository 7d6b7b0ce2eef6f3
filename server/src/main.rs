//! seaportd: flags to a `Config`, bind, `seaport_server::run` until SIGINT
//! or SIGTERM.

mod config_file;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, error::ErrorKind};
use seaport::parse_duration;
use seaport_server::config::{EtcdConfig, StoreConfig};
use seaport_server::{Config, registry::Limits, tls::TlsFiles};

/// mimalloc rather than glibc's malloc: every RPC allocates and frees a
/// few dozen small buffers across threads, where glibc spent about an
/// eighth of the server's time (perf, register+free at 100 sessions).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Seaport registry server: service registry and port assigner over gRPC.
#[derive(Parser, Debug)]
#[command(name = "seaportd", version, args_override_self = true)]
struct Args {
    /// TOML file with any of these flags as keys (`port-range = "20000-29999"`);
    /// flags and environment variables override it.
    #[arg(long, env = "SEAPORT_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration, as a --config file, and exit.
    #[arg(long)]
    print_config: bool,
    /// Address to serve gRPC on.
    #[arg(long, env = "SEAPORT_LISTEN", default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Host the server registers itself under as seaport@VERSION (default: the listen address).
    #[arg(long, env = "SEAPORT_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    /// Ports assigned to registrations that ask for none, as FIRST-LAST.
    #[arg(long, env = "SEAPORT_PORT_RANGE", default_value = "10000-65535", value_parser = parse_port_range)]
    port_range: RangeInclusive<u16>,
    /// How long a freed port is not assigned again.
    #[arg(long, env = "SEAPORT_PORT_QUARANTINE", default_value = "5s", value_parser = parse_duration)]
    port_quarantine: Duration,
    /// Shortest session ttl granted.
    #[arg(long, env = "SEAPORT_MIN_TTL", default_value = "1s", value_parser = parse_duration)]
    min_ttl: Duration,
    /// Longest session ttl granted.
    #[arg(long, env = "SEAPORT_MAX_TTL", default_value = "1h", value_parser = parse_duration)]
    max_ttl: Duration,
    /// Session ttl granted when the client asks for none.
    #[arg(long, env = "SEAPORT_DEFAULT_TTL", default_value = "30s", value_parser = parse_duration)]
    default_ttl: Duration,
    /// Registrations one session may hold.
    #[arg(
        long,
        env = "SEAPORT_MAX_REGISTRATIONS_PER_SESSION",
        default_value_t = 1024
    )]
    max_registrations_per_session: usize,
    /// Metadata entries per registration.
    #[arg(long, env = "SEAPORT_MAX_METADATA_ENTRIES", default_value_t = 64)]
    max_metadata_entries: usize,
    /// Bytes in one metadata value.
    #[arg(long, env = "SEAPORT_MAX_METADATA_VALUE", default_value_t = 4096)]
    max_metadata_value: usize,
    /// Bytes of all metadata keys and values of one registration.
    #[arg(long, env = "SEAPORT_MAX_METADATA_TOTAL", default_value_t = 16384)]
    max_metadata_total: usize,
    /// Changes kept for watches that resume from a revision.
    #[arg(long, env = "SEAPORT_HISTORY", default_value_t = 10_000)]
    history: usize,
    /// Changes a watcher may fall behind before it is told to resynchronise.
    #[arg(long, env = "SEAPORT_WATCH_BUFFER", default_value_t = 4096)]
    watch_buffer: usize,
    /// How long to keep serving after reporting NOT_SERVING on SIGTERM.
    #[arg(long, env = "SEAPORT_DRAIN_DELAY", default_value = "1s", value_parser = parse_duration)]
    drain_delay: Duration,
    /// Longest wait for calls in flight once the server stops accepting.
    #[arg(long, env = "SEAPORT_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// HTTP/2 streams one connection may hold (each watch is one).
    #[arg(long, env = "SEAPORT_MAX_CONCURRENT_STREAMS", default_value_t = 16_384)]
    max_concurrent_streams: u32,
    /// Largest request message decoded, in bytes; larger ones are refused unread.
    #[arg(long, env = "SEAPORT_MAX_MESSAGE_SIZE", default_value_t = 1024 * 1024)]
    max_message_size: usize,
    /// Connections served at once; more are closed as they arrive.
    #[arg(long, env = "SEAPORT_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Watch streams open at once, over all connections.
    #[arg(long, env = "SEAPORT_MAX_WATCHERS", default_value_t = 100_000)]
    max_watchers: usize,
    /// How long a new connection has for its TLS handshake and HTTP/2 preface.
    #[arg(long, env = "SEAPORT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// How long a connection with no open call is kept.
    #[arg(long, env = "SEAPORT_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Where the registry's truth lives: `memory` (this process, the
    /// default) or `etcd` (shared by every seaportd on the same etcd).
    #[arg(long, env = "SEAPORT_STORE", default_value = "memory")]
    store: StoreKind,
    /// etcd client URLs, comma-separated (with --store etcd).
    #[arg(long, env = "SEAPORT_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Prefix of every key Seaport writes in etcd.
    #[arg(long, env = "SEAPORT_ETCD_PREFIX", default_value = "/seaport")]
    etcd_prefix: String,
    /// PEM CA that signs the etcd members' certificates (https endpoints).
    #[arg(long, env = "SEAPORT_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd.
    #[arg(long, env = "SEAPORT_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// PEM private key for --etcd-cert.
    #[arg(long, env = "SEAPORT_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// PEM certificate chain for TLS on the main port.
    #[arg(long, env = "SEAPORT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SEAPORT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle that signs client certificates: turns on mTLS (writes need a certificate).
    #[arg(long, env = "SEAPORT_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// TOML policy: which identities may register which names, and who is admin.
    #[arg(long, env = "SEAPORT_POLICY", requires = "client_ca")]
    policy: Option<PathBuf>,
    /// Under mTLS, refuse Query, Get and Watch without a client certificate too.
    #[arg(
        long,
        env = "SEAPORT_REQUIRE_CLIENT_CERT_FOR_READS",
        requires = "client_ca"
    )]
    require_client_cert_for_reads: bool,
    /// Serve grpc.health.v1 and HTTP /healthz and /readyz in plaintext here (for probes).
    #[arg(long, env = "SEAPORT_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Serve the web console here: HTTP, or HTTPS with --tls-cert (off unless given).
    #[arg(long, env = "SEAPORT_CONSOLE_LISTEN")]
    console_listen: Option<SocketAddr>,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "SEAPORT_LOG", default_value = "info")]
    log: String,
    /// Log lines as `text` (coloured only on a terminal, and never with
    /// NO_COLOR set) or as `json`, one object a line.
    #[arg(long, env = "SEAPORT_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let hint = || {
        format!(
            "{text:?} is not a port range; write FIRST-LAST with 1 <= FIRST <= LAST <= 65535, such as 10000-65535"
        )
    };
    let (a, b) = text.split_once('-').ok_or_else(hint)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| hint())?,
        b.trim().parse().map_err(|_| hint())?,
    );
    if a == 0 || a > b {
        return Err(hint());
    }
    Ok(a..=b)
}

/// `--log-format`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `--store`'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    Memory,
    Etcd,
}

impl Args {
    /// The configuration, or a usage error naming the flag to fix.
    fn config(self) -> Result<Config, clap::Error> {
        let usage = |msg: String| Args::command().error(ErrorKind::ValueValidation, msg);
        let store = match self.store {
            StoreKind::Memory => StoreConfig::Memory,
            StoreKind::Etcd if !cfg!(feature = "etcd") => {
                return Err(usage(
                    "this seaportd was built without etcd support; build it with `cargo build --release -p seaport-server --features etcd` (needs protoc)".into(),
                ));
            }
            StoreKind::Etcd if self.etcd_endpoints.is_empty() => {
                return Err(usage(
                    "--store etcd needs --etcd-endpoints, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379".into(),
                ));
            }
            StoreKind::Etcd => StoreConfig::Etcd(EtcdConfig {
                endpoints: self.etcd_endpoints,
                prefix: self.etcd_prefix,
                ca: self.etcd_ca,
                cert: self.etcd_cert,
                key: self.etcd_key,
            }),
        };
        if self.min_ttl.is_zero() {
            return Err(usage("--min-ttl must be above zero".into()));
        }
        if self.min_ttl > self.max_ttl {
            return Err(usage(format!(
                "--min-ttl ({:?}) is above --max-ttl ({:?})",
                self.min_ttl, self.max_ttl
            )));
        }
        if !(self.min_ttl..=self.max_ttl).contains(&self.default_ttl) {
            return Err(usage(format!(
                "--default-ttl ({:?}) must lie between --min-ttl ({:?}) and --max-ttl ({:?})",
                self.default_ttl, self.min_ttl, self.max_ttl
            )));
        }
        for (flag, value) in [
            (
                "--max-registrations-per-session",
                self.max_registrations_per_session,
            ),
            ("--watch-buffer", self.watch_buffer),
            (
                "--max-concurrent-streams",
                self.max_concurrent_streams as usize,
            ),
            ("--max-message-size", self.max_message_size),
            ("--max-connections", self.max_connections),
            ("--max-watchers", self.max_watchers),
            (
                "--handshake-timeout",
                self.handshake_timeout.as_millis() as usize,
            ),
            ("--idle-timeout", self.idle_timeout.as_millis() as usize),
        ] {
            if value == 0 {
                return Err(usage(format!("{flag} must be at least 1")));
            }
        }
        if self.max_metadata_value > self.max_metadata_total {
            return Err(usage(
                "--max-metadata-value is above --max-metadata-total".into(),
            ));
        }
        Ok(Config {
            limits: Limits {
                port_range: self.port_range,
                port_quarantine: self.port_quarantine,
                min_ttl: self.min_ttl,
                max_ttl: self.max_ttl,
                default_ttl: self.default_ttl,
                max_registrations_per_session: self.max_registrations_per_session,
                max_metadata_entries: self.max_metadata_entries,
                max_metadata_value: self.max_metadata_value,
                max_metadata_total: self.max_metadata_total,
                history: self.history,
                watch_buffer: self.watch_buffer,
                ..Limits::default()
            },
            advertise_host: self.advertise_host,
            drain_delay: self.drain_delay,
            shutdown_grace: self.shutdown_grace,
            max_concurrent_streams: self.max_concurrent_streams,
            max_message_size: self.max_message_size,
            max_connections: self.max_connections,
            max_watchers: self.max_watchers,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            tls: self.tls_cert.zip(self.tls_key).map(|(cert, key)| TlsFiles {
                cert,
                key,
                client_ca: self.client_ca,
            }),
            policy: self.policy,
            require_client_cert_for_reads: self.require_client_cert_for_reads,
            store,
        })
    }
}

/// Completes on the first SIGINT or SIGTERM (Kubernetes sends SIGTERM).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = Args::command();
    let argv = config_file::with_file(&command, std::env::args_os().collect())
        .unwrap_or_else(|e| command.clone().error(ErrorKind::ValueValidation, e).exit());
    let matches = command.clone().get_matches_from(argv);
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if args.print_config {
        print!("{}", config_file::print(&command, &matches));
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|e| {
        Args::command()
            .error(ErrorKind::ValueValidation, format!("--log: {e}"))
            .exit()
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => {
            use std::io::IsTerminal;
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            logs.with_ansi(colour).init()
        }
    }
    // One crypto provider, chosen explicitly: see DESIGN's note on rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (listen, admin_listen, console_listen) =
        (args.listen, args.admin_listen, args.console_listen);
    let config = args.config().unwrap_or_else(|e| e.exit());
    let mtls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if !listen.ip().is_loopback() && !mtls {
        tracing::warn!(%listen, "no mTLS on a non-loopback address: anyone who can reach it may register and free services; \
            enable it with --tls-cert, --tls-key and --client-ca (`seaportctl certs init DIR` makes a development CA)");
    }
    let bind = |addr: SocketAddr, flag: &'static str| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} ({flag}): {e}"))
    };
    let listeners = async {
        let main = bind(listen, "--listen").await?;
        let admin = match admin_listen {
            Some(a) => Some(bind(a, "--admin-listen").await?),
            None => None,
        };
        let console = match console_listen {
            Some(a) => Some(bind(a, "--console-listen").await?),
            None => None,
        };
        Ok::<_, String>((main, admin, console))
    };
    let (listener, admin, console) = match listeners.await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("seaportd: {e}");
            return ExitCode::from(1);
        }
    };
    match seaport_server::run_with_console(listener, admin, console, config, shutdown_signal())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seaportd: {e}");
            ExitCode::from(1)
        }
    }
}
