//! `seaportctl proxy`: a TCP proxy and an HTTP gateway that send each
//! connection or request to a current instance of a role, chosen from a
//! catalog that a watch keeps live (no polling). While no registry server
//! answers, they go on forwarding from the catalog they last had.

mod balance;
mod body;
mod headers;
mod http;
mod pools;
mod routes;
mod splice;
mod tcp;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use tokio::net::TcpListener;

use crate::{Cli, EXIT_UNREACHABLE, EXIT_USAGE, Failure};
use balance::{Balance, Instances};
use pools::{PoolError, Pools};
use seaport_client::Service;

/// `seaportctl proxy ...`
#[derive(Subcommand, Debug)]
pub(crate) enum Proxy {
    /// Forward each TCP connection on --listen to an instance of ROLE (and on each --route's
    /// LISTEN to its ROLE); with no instance to reach, close it at once and log why.
    Tcp(TcpArgs),
    /// An HTTP gateway: /role/NAME@RANGE/PATH to an instance (as /PATH), /list/NAME@RANGE as
    /// JSON, /instance/ID/PATH to one instance, and --host rules (HOST=ROLE).
    Http(HttpArgs),
}

/// Flags both proxies take.
#[derive(clap::Args, Debug)]
pub(crate) struct Common {
    /// How the instances of a role share the connections (HTTP: the requests).
    #[arg(long, value_enum, default_value_t = Balance::RoundRobin)]
    balance: Balance,
    /// How long an instance may take to accept a connection before the next is tried.
    #[arg(long, default_value = "2s", value_parser = seaport::parse_duration)]
    connect_timeout: Duration,
    /// On SIGINT or SIGTERM: how long open connections and requests may take to finish.
    #[arg(long, default_value = "10s", value_parser = seaport::parse_duration)]
    grace: Duration,
}

/// `seaportctl proxy tcp`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct TcpArgs {
    /// Address to accept connections on for ROLE (port 0: any free port, logged).
    #[arg(long, requires = "role")]
    listen: Option<SocketAddr>,
    /// The role connections on --listen go to: `name` or `name@range`.
    #[arg(requires = "listen", value_parser = parse_role)]
    role: Option<String>,
    /// LISTEN=ROLE: one more listener and its role; repeatable.
    #[arg(long = "route", value_parser = parse_route, required_unless_present = "listen")]
    routes: Vec<(SocketAddr, String)>,
    #[command(flatten)]
    common: Common,
}

/// `seaportctl proxy http`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct HttpArgs {
    /// Address to serve HTTP on (HTTPS with --tls-cert).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// HOST=ROLE: requests for HOST (the Host header, or its first label: `stable` takes
    /// `stable.example.com`) go to ROLE with their path unchanged; `*=ROLE` takes every other
    /// host. Repeatable. The /role/, /list/ and /instance/ paths serve hosts no rule takes.
    #[arg(long = "host", value_parser = parse_host_rule)]
    hosts: Vec<(String, String)>,
    /// PEM certificate chain: serve HTTPS, as seaportd's --tls-cert.
    #[arg(long, env = "SEAPORT_PROXY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SEAPORT_PROXY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signs (mTLS).
    #[arg(long, env = "SEAPORT_PROXY_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Roles followed at once for /role/ and /list/; past that, the least recently used is dropped.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_roles: u32,
    #[command(flatten)]
    common: Common,
}

/// A role a route forwards to: a name, and usually a range.
fn parse_role(text: &str) -> Result<String, String> {
    let pattern: seaport::Pattern = text.parse().map_err(|e| format!("{e}"))?;
    if pattern.name.is_none() {
        return Err("give a role: NAME or NAME@RANGE".into());
    }
    Ok(text.to_string())
}

fn parse_route(text: &str) -> Result<(SocketAddr, String), String> {
    let (listen, role) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not LISTEN=ROLE (127.0.0.1:5985=couchdb@3.x)"))?;
    let listen = listen
        .parse()
        .map_err(|e| format!("{listen:?} is not an address to listen on (IP:PORT): {e}"))?;
    Ok((listen, parse_role(role)?))
}

fn parse_host_rule(text: &str) -> Result<(String, String), String> {
    let (host, role) = text
        .split_once('=')
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| format!("{text:?} is not HOST=ROLE (stable=web@0.0.x)"))?;
    Ok((host.to_ascii_lowercase(), parse_role(role)?))
}

/// Runs a proxy until SIGINT or SIGTERM.
pub(crate) async fn run(cli: &Cli, proxy: &Proxy) -> Result<u8, Failure> {
    match proxy {
        Proxy::Tcp(args) => tcp(cli, args).await,
        Proxy::Http(args) => http(cli, args).await,
    }
}

async fn tcp(cli: &Cli, args: &TcpArgs) -> Result<u8, Failure> {
    let mut wanted = args.routes.clone();
    if let (Some(listen), Some(role)) = (args.listen, &args.role) {
        wanted.insert(0, (listen, role.clone()));
    }
    // A taken port is the user's to fix before the registry is asked anything.
    let mut listeners = Vec::new();
    for (listen, _) in &wanted {
        listeners.push(bind(*listen, "--listen/--route").await?);
    }
    let client = crate::connect(cli).await?;
    let pools = Pools::new(client, args.common.balance, wanted.len());
    let mut routes = Vec::new();
    for ((_, role), listener) in wanted.iter().zip(listeners) {
        let pool = pools.get(role).await.map_err(start_failure)?;
        routes.push(tcp::Route { listener, pool });
    }
    tcp::serve(routes, &args.common).await;
    Ok(0)
}

async fn http(cli: &Cli, args: &HttpArgs) -> Result<u8, Failure> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::load(cert, key, args.client_ca.as_deref())?),
        _ => None,
    };
    let listener = bind(args.listen, "--listen").await?;
    let client = crate::connect(cli).await?;
    let pools = Arc::new(Pools::new(
        client,
        args.common.balance,
        args.max_roles as usize,
    ));
    let mut hosts = Vec::new();
    for (host, role) in &args.hosts {
        let pool = pools.get(role).await.map_err(start_failure)?;
        hosts.push((host.clone(), pool));
    }
    http::serve(listener, pools, hosts, tls, &args.common).await;
    Ok(0)
}

async fn bind(address: SocketAddr, flag: &str) -> Result<TcpListener, Failure> {
    TcpListener::bind(address).await.map_err(|e| Failure {
        code: EXIT_USAGE,
        message: format!("{flag} {address}: cannot listen there: {e}"),
    })
}

/// A route's role that cannot be followed at start-up.
fn start_failure(e: PoolError) -> Failure {
    match e {
        PoolError::Role(e) => seaport_client::Error::Role(e).into(),
        PoolError::Refused(_, e) => e.into(),
        PoolError::Timeout(_) => Failure {
            code: EXIT_UNREACHABLE,
            message: e.to_string(),
        },
    }
}

/// Holds off an instance that failed, logs it, and returns the reason.
fn held_off(instances: &Instances, role: &str, service: &Service, why: &str) -> String {
    let hold = instances.failed(&service.id);
    let reason = format!("{} at {}: {why}", service.id, service.address());
    log(format!(
        "proxy: {role}: instance {reason}; held off for {}ms",
        hold.as_millis()
    ));
    reason
}

/// One line on stderr: the proxies' log.
pub(crate) fn log(line: String) {
    eprintln!("seaportctl: {line}");
}

/// Resolves on SIGINT or SIGTERM.
async fn stopping() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let terminate = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    log("stopping: no new connections".into());
}

/// Waits for `finished` up to `grace`, and says when the grace ran out.
async fn drain(finished: impl Future<Output = ()>, grace: Duration) {
    if tokio::time::timeout(grace, finished).await.is_err() {
        log(format!(
            "grace of {}ms over: closing the connections still open",
            grace.as_millis()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_host_rules_parse_and_say_what_is_wrong() {
        assert_eq!(
            parse_route("127.0.0.1:5985=couchdb@3.x").unwrap(),
            ("127.0.0.1:5985".parse().unwrap(), "couchdb@3.x".into())
        );
        assert!(
            parse_route("couchdb@3.x")
                .unwrap_err()
                .contains("LISTEN=ROLE")
        );
        assert!(
            parse_route("localhost=couchdb")
                .unwrap_err()
                .contains("IP:PORT")
        );
        assert!(
            parse_route("127.0.0.1:1=web@>>1")
                .unwrap_err()
                .contains("two operators")
        );
        assert_eq!(
            parse_host_rule("Stable=web@0.0.x").unwrap(),
            ("stable".into(), "web@0.0.x".into())
        );
        assert!(parse_host_rule("=web").unwrap_err().contains("HOST=ROLE"));
        assert!(parse_role("").unwrap_err().contains("NAME or NAME@RANGE"));
    }
}
