//! seaportctl: the Seaport command line, a thin layer over `SeaportClient`.

mod certs;
mod output;
mod proxy;
mod supervise;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{CommandFactory, Parser, Subcommand};
use seaport_client::{Error, RegisterOptions, SeaportClient};
use tokio_stream::StreamExt;
use tonic::Code;

use output::Format;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  health: the server is not SERVING
  2  usage error: a bad flag, role, pattern, duration, address or TLS file
  3  the server refused the request (its message says why)
  4  timed out (get --timeout)
  5  no server reachable: no TCP connection to any --server
  6  register: an admin freed the registration (COMMAND is stopped)
  7  TLS failed: a certificate not trusted, expired or for another name,
     or TLS on one side only (the message gives the TLS library's reason)
  8  the server needs a client certificate for this: give --cert and --key
  9  not allowed: the registration is another's, or the policy forbids it
  register -- COMMAND exits with COMMAND's own exit code";

/// A bad flag, role, pattern, duration, address or TLS file.
const EXIT_USAGE: u8 = 2;
/// The server refused the request; its message says why.
const EXIT_REFUSED: u8 = 3;
/// `get --timeout` passed.
const EXIT_TIMEOUT: u8 = 4;
/// No TCP connection to any server.
const EXIT_UNREACHABLE: u8 = 5;
/// TLS failed after TCP connected.
const EXIT_TLS: u8 = 7;
/// UNAUTHENTICATED: the call needs a client certificate.
const EXIT_UNAUTHENTICATED: u8 = 8;
/// PERMISSION_DENIED: not this caller's to change, or the policy forbids it.
const EXIT_DENIED: u8 = 9;

/// Seaport's command line: register services, find them, wait for them, watch them.
#[derive(Parser, Debug)]
#[command(name = "seaportctl", version, after_help = EXIT_CODES)]
struct Cli {
    /// Registry server address; repeat for failover.
    #[arg(
        short,
        long = "server",
        global = true,
        env = "SEAPORT_SERVER",
        value_delimiter = ',',
        default_value = "127.0.0.1:9090"
    )]
    servers: Vec<String>,
    /// Namespace to register and look in.
    #[arg(long, global = true, env = "SEAPORT_NAMESPACE", default_value = "")]
    namespace: String,
    /// CA certificate (PEM) that signs the server's certificate: speak TLS.
    #[arg(long, global = true, env = "SEAPORT_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, global = true, env = "SEAPORT_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM) for --cert.
    #[arg(long, global = true, env = "SEAPORT_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, env = "SEAPORT_OUTPUT", value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register NAME@VERSION: run COMMAND on an assigned port (appended as its last argument and set in PORT),
    /// restarting it when it exits; or, with --port and no COMMAND, register an existing service.
    Register(RegisterArgs),
    /// Print the services matching PATTERN (`name`, `name@range`, or nothing for all).
    Query {
        /// `name` or `name@range`.
        #[arg(default_value = "")]
        pattern: String,
        /// Print only host:port, one per line (with -o json, a JSON array).
        #[arg(long)]
        addresses: bool,
    },
    /// Wait until something matches PATTERN, print it and exit 0.
    Get {
        /// `name` or `name@range`.
        pattern: String,
        /// Give up after this long (500ms, 5s, 2m) with exit code 4.
        #[arg(long, value_parser = seaport::parse_duration)]
        timeout: Option<Duration>,
        /// Print only host:port.
        #[arg(long)]
        addresses: bool,
    },
    /// Print one line per register, update and free as they happen, starting with the current services.
    Watch {
        /// `name` or `name@range`; nothing watches everything.
        #[arg(default_value = "")]
        pattern: String,
        /// Add metadata to each line.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Print every service, grouped by name and version.
    Show,
    /// Free a registration by id: only its own process may, or under mTLS its owner's identity or an admin.
    Free {
        /// The registration's id.
        id: String,
    },
    /// Mark a registration draining (its instance is stopping: Get and proxies stop choosing it); the same callers as free may.
    Drain {
        /// The registration's id.
        id: String,
    },
    /// Change a registration's metadata: only its own process may, or under mTLS its owner's identity.
    Update {
        /// The registration's id.
        id: String,
        /// Metadata, KEY=VALUE; repeatable.
        #[arg(long = "meta", value_parser = parse_meta, required_unless_present = "remove")]
        meta: Vec<(String, String)>,
        /// Merge into the existing metadata instead of replacing it.
        #[arg(long)]
        merge: bool,
        /// Remove KEY from the metadata; repeatable; implies --merge.
        #[arg(long = "remove", value_name = "KEY")]
        remove: Vec<String>,
    },
    /// Development certificates.
    #[command(subcommand)]
    Certs(Certs),
    /// Check the server's grpc.health.v1 status: exit 0 when SERVING.
    Health {
        /// The service to check ("" is the whole server).
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Forward TCP connections or HTTP requests to the current instances of roles.
    #[command(subcommand)]
    Proxy(proxy::Proxy),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `seaportctl register`'s arguments.
#[derive(clap::Args, Debug)]
struct RegisterArgs {
    /// The role, `name@1.2.3` or `name`.
    role: String,
    /// Port to register (default: one the registry assigns).
    #[arg(long)]
    port: Option<u16>,
    /// Host to register (default: the address the server sees).
    #[arg(long)]
    host: Option<String>,
    /// Metadata, KEY=VALUE; repeatable.
    #[arg(long = "meta", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    /// Registration id (default: generated).
    #[arg(long)]
    id: Option<String>,
    /// Stop restarting COMMAND after this many restarts.
    #[arg(long)]
    max_restarts: Option<u32>,
    /// On SIGINT or SIGTERM, first mark the registration draining and wait this long (COMMAND still serving), then stop COMMAND and free it.
    #[arg(long, default_value = "0s", value_parser = seaport::parse_duration)]
    drain_wait: Duration,
    /// Existing service: free the registration while the port refuses TCP connections.
    #[arg(long, value_enum)]
    check: Option<Check>,
    /// How often --check probes the port.
    #[arg(long, default_value = "2s", value_parser = seaport::parse_duration)]
    check_interval: Duration,
    /// The command to run, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

/// `seaportctl certs ...`
#[derive(Subcommand, Debug)]
enum Certs {
    /// Write a development CA, a server certificate and client certificates into DIR.
    Init {
        /// Directory to write into (must not hold a CA yet).
        dir: PathBuf,
        /// Extra DNS names or addresses for the server certificate (localhost, 127.0.0.1 and ::1 are always in).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// A client certificate to make, for this identity; repeatable.
        #[arg(long = "client")]
        clients: Vec<String>,
        /// Days the server and client certificates are valid (the CA: ten years).
        #[arg(long, default_value_t = certs::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

/// Health checks of an existing service.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Check {
    /// The port accepts TCP connections.
    Tcp,
}

fn parse_meta(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub(crate) fn other(message: String) -> Self {
        Failure { code: 1, message }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Role(_) | Error::Transport(_) | Error::Settings(_) => EXIT_USAGE,
            Error::Status { code, .. } => match code {
                Code::DeadlineExceeded => EXIT_TIMEOUT,
                Code::Unauthenticated => EXIT_UNAUTHENTICATED,
                Code::PermissionDenied => EXIT_DENIED,
                _ => EXIT_REFUSED,
            },
            Error::Convert(_) | Error::Bind { .. } => EXIT_REFUSED,
            Error::Unavailable(_) | Error::Closed => EXIT_UNREACHABLE,
            Error::Tls { .. } => EXIT_TLS,
        };
        let message = match &e {
            Error::Unavailable(addresses) => {
                format!(
                    "no Seaport server reachable at {addresses}; start one with `seaportd --listen ADDRESS` or pass --server"
                )
            }
            Error::Transport(_) | Error::Settings(_) => {
                format!("{e}; check --server, --ca, --cert and --key")
            }
            // Their own exit codes say what kind of refusal they are.
            Error::Status {
                code: Code::Unauthenticated | Code::PermissionDenied,
                message,
            } => message.clone(),
            other => other.to_string(),
        };
        Failure { code, message }
    }
}

/// `free` or `update` refused because the registration is another's:
/// says who may change it.
fn not_yours(cli: &Cli, e: Error) -> Failure {
    let mut failure = Failure::from(e);
    if failure.code == EXIT_DENIED && cli.cert.is_none() {
        failure.message.push_str(
            ". Without mTLS only the process that registered it, through its own session, may update, drain or free it \
             (stop that process and its registrations are freed with its session); \
             under mTLS (seaportd --client-ca) so may a certificate of its owner's identity, and an admin's may drain or free it \
             (README: Securing a registry)",
        );
    }
    failure
}

fn read(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure {
        code: EXIT_USAGE,
        message: format!("{flag} {}: {e}", path.display()),
    })
}

/// PEM from --ca, and from --cert and --key.
type TlsPems = (Option<Vec<u8>>, Option<(Vec<u8>, Vec<u8>)>);

/// The TLS settings from --ca, --cert and --key.
fn tls(cli: &Cli) -> Result<TlsPems, Failure> {
    let ca = cli.ca.as_deref().map(|p| read(p, "--ca")).transpose()?;
    let identity = match (&cli.cert, &cli.key) {
        (Some(cert), Some(key)) => Some((read(cert, "--cert")?, read(key, "--key")?)),
        _ => None,
    };
    Ok((ca, identity))
}

/// A client builder for the servers and TLS settings of the flags.
fn builder(cli: &Cli) -> Result<seaport_client::Builder, Failure> {
    let mut builder = cli
        .servers
        .iter()
        .fold(SeaportClient::builder(), |b, s| b.endpoint(s.clone()));
    let (ca, identity) = tls(cli)?;
    if let Some(ca) = ca {
        builder = builder.ca_pem(ca);
    }
    if let Some((cert, key)) = identity {
        builder = builder.identity_pem(cert, key);
    }
    Ok(builder
        .namespace(cli.namespace.clone())
        .client_name("seaportctl")
        .connect_timeout(Duration::from_secs(2)))
}

async fn connect(cli: &Cli) -> Result<SeaportClient, Failure> {
    Ok(builder(cli)?.connect().await?)
}

/// Refuses a malformed pattern before any connection is made.
fn check_pattern(pattern: &str) -> Result<(), Failure> {
    pattern
        .parse::<seaport::Pattern>()
        .map(|_| ())
        .map_err(|e| Error::Role(e).into())
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Query { pattern, .. }
        | Command::Get { pattern, .. }
        | Command::Watch { pattern, .. } => check_pattern(pattern)?,
        Command::Register(args) => {
            args.role.parse::<seaport::Role>().map_err(Error::Role)?;
        }
        _ => {}
    }
    match &cli.command {
        Command::Completions { shell } => {
            let mut out = std::io::stdout();
            clap_complete::generate(*shell, &mut Cli::command(), "seaportctl", &mut out);
            Ok(0)
        }
        Command::Health { service } => health(&cli, service).await,
        Command::Register(args) => register(&cli, args).await,
        Command::Query { pattern, addresses } => query(&cli, pattern, *addresses).await,
        Command::Get {
            pattern,
            timeout,
            addresses,
        } => get(&cli, pattern, *timeout, *addresses).await,
        Command::Watch { pattern, verbose } => watch(&cli, pattern, *verbose).await,
        Command::Certs(Certs::Init {
            dir,
            server_names,
            clients,
            days,
        }) => certs_init(dir, server_names, clients, *days),
        Command::Free { id } => free(&cli, id).await,
        Command::Drain { id } => drain(&cli, id).await,
        Command::Update {
            id,
            meta,
            merge,
            remove,
        } => update(&cli, id, meta, *merge, remove).await,
        Command::Show => show(&cli).await,
        Command::Proxy(proxy) => proxy::run(&cli, proxy).await,
    }
}

/// Registers and holds the registration while COMMAND runs, or while the
/// existing service lives; exits as COMMAND did.
async fn register(cli: &Cli, args: &RegisterArgs) -> Result<u8, Failure> {
    let RegisterArgs {
        role,
        port,
        host,
        meta,
        id,
        max_restarts,
        drain_wait,
        check,
        check_interval,
        command,
    } = args;
    if command.is_empty() && port.is_none() {
        return Err(Failure {
            code: EXIT_USAGE,
            message: "give a COMMAND after `--` to run, or --port of an existing service".into(),
        });
    }
    let mut options = RegisterOptions {
        metadata: meta.iter().cloned().collect(),
        ..RegisterOptions::default()
    };
    options.port = *port;
    options.host = host.clone();
    options.id = id.clone();
    let client = connect(cli).await?;
    let mut signals = supervise::Signals::new(&client)?;
    let registration = client.register(role, options.clone()).await?;
    signals.watch_eviction(registration.id());
    signals.drain_first(&registration, *drain_wait);
    eprintln!(
        "seaportctl: registered {role} at {} (id {})",
        registration.service().address(),
        registration.id()
    );
    let code = if command.is_empty() {
        let probe = check.map(|Check::Tcp| {
            (
                host.clone().unwrap_or_else(|| "127.0.0.1".into()),
                *check_interval,
            )
        });
        supervise::hold_existing(&client, role, options, registration, probe, signals).await?
    } else {
        supervise::run_command(&registration, command, *max_restarts, signals).await?
    };
    client.close().await;
    Ok(u8::try_from(code).unwrap_or(1))
}

/// Prints what matches now.
async fn query(cli: &Cli, pattern: &str, addresses: bool) -> Result<u8, Failure> {
    let client = connect(cli).await?;
    let found = client.query(pattern).await?;
    println!("{}", output::services(&found, cli.output, addresses));
    client.close().await;
    Ok(0)
}

/// Waits until something matches (up to `timeout`, exit 4), and prints it.
async fn get(
    cli: &Cli,
    pattern: &str,
    timeout: Option<Duration>,
    addresses: bool,
) -> Result<u8, Failure> {
    let client = connect(cli).await?;
    let found = match timeout {
        Some(t) => client
            .get_timeout(pattern, t)
            .await
            .map_err(|e| match e.code() {
                Some(Code::DeadlineExceeded) => Failure {
                    code: EXIT_TIMEOUT,
                    message: format!("nothing matched {pattern:?} within {}ms", t.as_millis()),
                },
                _ => e.into(),
            })?,
        None => client.get(pattern).await?,
    };
    println!("{}", output::services(&found, cli.output, addresses));
    client.close().await;
    Ok(0)
}

/// Prints a line per service as it is, then per change, until interrupted.
async fn watch(cli: &Cli, pattern: &str, verbose: bool) -> Result<u8, Failure> {
    let client = connect(cli).await?;
    let mut events = client.watch(pattern)?;
    while let Some(event) = events.next().await {
        let event = event?;
        if event.kind == seaport_client::EventKind::Synced {
            continue;
        }
        let line = output::event_line(&event, cli.output, verbose, SystemTime::now());
        println!("{line}");
    }
    Ok(0)
}

/// Writes a development CA and certificates, and says how to use them.
fn certs_init(
    dir: &std::path::Path,
    server_names: &[String],
    clients: &[String],
    days: u32,
) -> Result<u8, Failure> {
    for path in certs::init(dir, server_names, clients, days)? {
        println!("wrote {}", path.display());
    }
    let d = dir.display();
    println!(
        "\nstart the registry with mTLS:\n  seaportd --tls-cert {d}/server.pem --tls-key {d}/server-key.pem --client-ca {d}/ca.pem"
    );
    if let Some(client) = clients.first() {
        println!(
            "and talk to it as {client}:\n  seaportctl --ca {d}/ca.pem --cert {d}/client-{client}.pem --key {d}/client-{client}-key.pem query"
        );
    }
    Ok(0)
}

/// Frees a registration by id.
async fn free(cli: &Cli, id: &str) -> Result<u8, Failure> {
    let client = connect(cli).await?;
    let freed = client.free(id).await.map_err(|e| not_yours(cli, e))?;
    println!("freed {} {} {}", freed.role(), freed.address(), freed.id);
    client.close().await;
    Ok(0)
}

/// Marks a registration draining.
async fn drain(cli: &Cli, id: &str) -> Result<u8, Failure> {
    let client = connect(cli).await?;
    let drained = client.drain(id).await.map_err(|e| not_yours(cli, e))?;
    println!(
        "draining {} {} {}",
        drained.role(),
        drained.address(),
        drained.id
    );
    client.close().await;
    Ok(0)
}

/// Replaces or merges a registration's metadata, removing the keys in
/// `remove` (which implies merging).
async fn update(
    cli: &Cli,
    id: &str,
    meta: &[(String, String)],
    merge: bool,
    remove: &[String],
) -> Result<u8, Failure> {
    let client = connect(cli).await?;
    let meta = meta.iter().cloned().collect();
    let updated = if remove.is_empty() {
        client.update(id, meta, merge).await
    } else {
        client.merge_metadata(id, meta, remove).await
    }
    .map_err(|e| not_yours(cli, e))?;
    println!("{}", output::services(&[updated], cli.output, false));
    client.close().await;
    Ok(0)
}

/// Prints every service, grouped by name and version.
async fn show(cli: &Cli) -> Result<u8, Failure> {
    let client = connect(cli).await?;
    let found = client.query("").await?;
    match cli.output {
        Format::Table => println!("{}", output::grouped(&found)),
        Format::Json => println!("{}", output::services(&found, Format::Json, false)),
    }
    client.close().await;
    Ok(0)
}

/// grpc.health.v1 Check against the first server: exit 0 when SERVING.
async fn health(cli: &Cli, service: &str) -> Result<u8, Failure> {
    let address = &cli.servers[0];
    let serving = builder(cli)?
        .health(service)
        .await
        .map_err(|e| match e {
            Error::Unavailable(detail) => Failure {
                code: EXIT_UNREACHABLE,
                message: format!(
                    "no Seaport server reachable at {detail}; start one with `seaportd --listen {address}`"
                ),
            },
            Error::Status { message, .. } => Failure {
                code: EXIT_REFUSED,
                message: format!("health check of {service:?}: {message}"),
            },
            other => other.into(),
        })?;
    println!("{}", if serving { "SERVING" } else { "NOT_SERVING" });
    Ok(if serving { 0 } else { 1 })
}

#[tokio::main]
async fn main() -> ExitCode {
    // One crypto provider, chosen explicitly: see DESIGN's note on rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("seaportctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
