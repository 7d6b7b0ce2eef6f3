//! `seaportctl proxy tcp`: each connection accepted on a route's listener
//! is forwarded to an instance of the route's role.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::balance::{Lease, Pool};
use super::{Common, held_off, log, splice};

/// A listener and the role its connections go to.
pub(crate) struct Route {
    pub(crate) listener: TcpListener,
    pub(crate) pool: Arc<Pool>,
}

/// Serves every route until SIGINT or SIGTERM, then waits up to the grace
/// for open connections to end.
pub(crate) async fn serve(routes: Vec<Route>, common: &Common) {
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let mut accepting = tokio::task::JoinSet::new();
    for Route { listener, pool } in routes {
        let local = listener
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        log(format!(
            "proxy tcp listening on {local} for {}",
            pool.pattern
        ));
        let open = open.clone();
        let connect_timeout = common.connect_timeout;
        accepting.spawn(async move {
            loop {
                let (inbound, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, mostly: wait rather than spin.
                        log(format!("proxy tcp {local}: accept: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (pool, open, local) = (pool.clone(), open.clone(), local.clone());
                tokio::spawn(async move {
                    forward(inbound, peer, &pool, connect_timeout, &local).await;
                    drop(open);
                });
            }
        });
    }
    drop(open);
    super::stopping().await;
    accepting.shutdown().await;
    super::drain(
        async move { while all_closed.recv().await.is_some() {} },
        common.grace,
    )
    .await;
}

/// Connects `inbound` to an instance and copies both ways until either
/// side closes; with no instance to reach, closes it at once and says why.
async fn forward(
    mut inbound: TcpStream,
    peer: SocketAddr,
    pool: &Pool,
    timeout: Duration,
    local: &str,
) {
    let (mut upstream, _lease) = match connect(pool, timeout).await {
        Ok(connected) => connected,
        Err(why) => {
            return log(format!(
                "proxy tcp {local}: closed the connection from {peer}: {why}"
            ));
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = splice::both_ways(&mut inbound, &mut upstream).await;
}

/// A connection to an instance of the pool's role: each one that refuses
/// or does not answer in time is held off and the next is tried.
async fn connect(pool: &Pool, timeout: Duration) -> Result<(TcpStream, Lease), String> {
    let mut tried = Vec::new();
    let mut failures = Vec::new();
    loop {
        let Some(service) = pool.choose(&tried) else {
            return Err(if failures.is_empty() {
                pool.why_none()
            } else {
                format!(
                    "every instance of {} failed: {}",
                    pool.pattern,
                    failures.join("; ")
                )
            });
        };
        let lease = pool.instances.lease(&service.id);
        let why = match tokio::time::timeout(timeout, TcpStream::connect(service.address())).await {
            Ok(Ok(stream)) => {
                pool.instances.succeeded(&service.id);
                let _ = stream.set_nodelay(true);
                return Ok((stream, lease));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {}ms", timeout.as_millis()),
        };
        failures.push(held_off(&pool.instances, &pool.pattern, &service, &why));
        tried.push(service.id);
    }
}
