//! Certificate, client CA and policy rotation without dropping sessions:
//! on SIGHUP, and when a file's modification time changes. A broken new
//! file is reported and the configuration in force stays. A SIGHUP never
//! ends seaportd, even when there is nothing to reload.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::Config;
use crate::registry::{Policy, Registry};
use crate::tls::SharedTlsConfig;

/// How often file modification times are checked.
const POLL: Duration = Duration::from_secs(2);

fn files(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config.policy.iter().cloned().collect();
    if let Some(tls) = &config.tls {
        files.extend([tls.cert.clone(), tls.key.clone()]);
        files.extend(tls.client_ca.iter().cloned());
    }
    files
}

fn stamps(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Reloads everything; keeps what is in force when anything is broken.
fn reload(config: &Config, tls: Option<&SharedTlsConfig>, registry: &Registry) {
    let new_tls = match (&config.tls, tls) {
        (Some(files), Some(_)) => match files.load() {
            Ok(c) => Some(c),
            Err(e) => {
                return tracing::warn!(
                    "reload refused, keeping the TLS configuration in force: {e}"
                );
            }
        },
        _ => None,
    };
    let new_policy = match &config.policy {
        Some(path) => match Policy::load(path) {
            Ok(p) => Some(p),
            Err(e) => return tracing::warn!("reload refused, keeping the policy in force: {e}"),
        },
        None => None,
    };
    if let (Some(c), Some(shared)) = (new_tls, tls) {
        *shared.write().unwrap_or_else(|e| e.into_inner()) = c;
    }
    if let Some(p) = new_policy {
        registry.set_policy(p);
    }
    tracing::info!("reloaded certificates, client CA and policy");
}

/// Starts watching until `stop` flips to true. The SIGHUP handler is
/// installed before this returns, so a SIGHUP sent as soon as the server is
/// up reloads rather than ending the process.
pub(crate) fn start(
    config: Config,
    tls: Option<SharedTlsConfig>,
    registry: Registry,
    stop: watch::Receiver<bool>,
) {
    match signal(SignalKind::hangup()) {
        Ok(hup) => {
            tokio::spawn(watch(config, tls, registry, hup, stop));
        }
        Err(e) => tracing::warn!("no SIGHUP reloads: {e}"),
    }
}

async fn watch(
    config: Config,
    tls: Option<SharedTlsConfig>,
    registry: Registry,
    mut hup: tokio::signal::unix::Signal,
    mut stop: watch::Receiver<bool>,
) {
    let files = files(&config);
    let mut seen = stamps(&files);
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if files.is_empty() {
                    tracing::info!("SIGHUP: nothing to reload (no TLS files or policy configured); still serving");
                    continue;
                }
                tracing::info!("SIGHUP: reloading");
                seen = stamps(&files);
                reload(&config, tls.as_ref(), &registry);
            }
            _ = poll.tick(), if !files.is_empty() => {
                let now = stamps(&files);
                if now != seen {
                    seen = now;
                    reload(&config, tls.as_ref(), &registry);
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
