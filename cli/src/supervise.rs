//! `seaportctl register`: keeps a registration alive while a command runs
//! (restarting the command when it exits), or while an existing service
//! keeps accepting connections.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use seaport_client::{ClientEvent, RegisterOptions, Registration, SeaportClient};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::{Stream, StreamExt};

use crate::Failure;

/// The exit code of `seaportctl register` when an admin freed its
/// registration: it is not registered again, and COMMAND is stopped.
pub(crate) const EXIT_EVICTED: i32 = 6;

/// First pause before restarting a command that exited.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// How long a child has to exit after a forwarded signal.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What ends `seaportctl register`: SIGINT or SIGTERM, or an admin
/// freeing the registration. Installed before registering, so a signal
/// that comes while the registration is made is not fatal but stops
/// seaportctl the clean way once it is.
pub(crate) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    events: std::pin::Pin<Box<dyn Stream<Item = ClientEvent> + Send>>,
    /// The registration's id, once made.
    id: Option<String>,
    /// Drained for this long on a signal, before COMMAND stops.
    drain: Option<(Registration, Duration)>,
}

/// Why `seaportctl register` stops.
enum Stop {
    Signal(Signal),
    /// An admin freed the registration.
    Evicted,
}

impl Signals {
    pub(crate) fn new(client: &SeaportClient) -> Result<Self, Failure> {
        let install =
            |kind| signal(kind).map_err(|e| Failure::other(format!("cannot handle signals: {e}")));
        Ok(Signals {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
            events: Box::pin(client.events()),
            id: None,
            drain: None,
        })
    }

    /// On a signal, drains `registration` and waits `wait` before
    /// stopping: traffic moves to other instances while COMMAND still
    /// serves. A second signal cuts the wait short.
    pub(crate) fn drain_first(&mut self, registration: &Registration, wait: Duration) {
        if !wait.is_zero() {
            self.drain = Some((registration.clone(), wait));
        }
    }

    /// Watches for an admin's free of registration `id` from now on.
    pub(crate) fn watch_eviction(&mut self, id: &str) {
        self.id = Some(id.to_string());
    }

    async fn recv(&mut self) -> Stop {
        let stop = self.next().await;
        if let (Stop::Signal(_), Some((registration, wait))) = (&stop, self.drain.take()) {
            match registration.drain().await {
                Ok(_) => {
                    eprintln!(
                        "seaportctl: draining registration {} for {}",
                        registration.id(),
                        humantime::format_duration(wait)
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.next() => {}
                    }
                }
                Err(e) => eprintln!(
                    "seaportctl: could not drain registration {}: {e}",
                    registration.id()
                ),
            }
        }
        stop
    }

    async fn next(&mut self) -> Stop {
        loop {
            tokio::select! {
                _ = self.int.recv() => return Stop::Signal(Signal::SIGINT),
                _ = self.term.recv() => return Stop::Signal(Signal::SIGTERM),
                Some(event) = self.events.next() => {
                    if let ClientEvent::Evicted { id, by } = event
                        && self.id.as_ref() == Some(&id)
                    {
                        eprintln!("seaportctl: an admin ({by}) freed registration {id}; it is not registered again");
                        return Stop::Evicted;
                    }
                }
            }
        }
    }
}

/// The exit code a shell would report for `status`.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Sends `sig` to the child's whole process group (a `sh -c` wrapper's
/// server too), waits up to [`STOP_GRACE`], then kills the group.
async fn stop_child(child: &mut Child, sig: Signal) -> i32 {
    let group = child.id().map(|pid| Pid::from_raw(pid as i32));
    if let Some(group) = group {
        let _ = killpg(group, sig);
    }
    let code = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(status)) => exit_code(status),
        _ => {
            let _ = child.kill().await;
            128 + Signal::SIGKILL as i32
        }
    };
    // Whatever of the group outlived its leader.
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGKILL);
    }
    code
}

/// A command that runs `command[0]` and, where util-linux's `setpriv` is
/// installed, gets SIGTERM when seaportctl dies (a parent-death signal,
/// which survives exec), so a SIGKILLed seaportctl leaves no server
/// holding a port the registry has freed. Without setpriv it runs as is.
fn dying_with_us(command: &[String]) -> Result<Command, Failure> {
    let program = find_program(&command[0])
        .ok_or_else(|| Failure::other(format!("cannot run {:?}: not found", command[0])))?;
    Ok(match find_program("setpriv") {
        Some(setpriv) if cfg!(target_os = "linux") => {
            let mut wrapped = Command::new(setpriv);
            wrapped.args(["--pdeathsig", "TERM", "--"]).arg(program);
            wrapped
        }
        _ => Command::new(program),
    })
}

/// `name` if it holds a `/`, else the first executable file of that name
/// on PATH.
fn find_program(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let path = std::path::PathBuf::from(name);
        return executable(&path).then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// Runs `command` with the port appended and in PORT, restarting it when
/// it exits, until a signal (forwarded to it) or `max_restarts`. Returns
/// the child's exit code; the caller closes the session, freeing the port.
pub(crate) async fn run_command(
    registration: &Registration,
    command: &[String],
    max_restarts: Option<u32>,
    mut signals: Signals,
) -> Result<i32, Failure> {
    let port = registration.port().to_string();
    let mut restarts = 0;
    let mut backoff = FIRST_BACKOFF;
    loop {
        // A process group of its own, so that a stop reaches everything
        // the command started, not only its first process.
        let mut child = dying_with_us(command)?
            .args(&command[1..])
            .arg(&port)
            .env("PORT", &port)
            .process_group(0)
            .spawn()
            .map_err(|e| Failure::other(format!("cannot run {:?}: {e}", command[0])))?;
        let group = child.id().map(|pid| Pid::from_raw(pid as i32));
        let started = tokio::time::Instant::now();
        let status = tokio::select! {
            status = child.wait() => status.map_err(|e| Failure::other(format!("waiting for {:?}: {e}", command[0])))?,
            stop = signals.recv() => return Ok(match stop {
                Stop::Signal(sig) => stop_child(&mut child, sig).await,
                Stop::Evicted => {
                    stop_child(&mut child, Signal::SIGTERM).await;
                    EXIT_EVICTED
                }
            }),
        };
        let code = exit_code(status);
        // What the command left running would hold its port from the next.
        if let Some(group) = group {
            let _ = killpg(group, Signal::SIGTERM);
        }
        if max_restarts.is_some_and(|max| restarts >= max) {
            eprintln!(
                "seaportctl: {:?} exited with code {code}; restart limit reached",
                command[0]
            );
            return Ok(code);
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        eprintln!(
            "seaportctl: {:?} exited with code {code}; restarting in {}ms",
            command[0],
            backoff.as_millis()
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            stop = signals.recv() => return Ok(match stop {
                Stop::Signal(_) => code,
                Stop::Evicted => EXIT_EVICTED,
            }),
        }
        restarts += 1;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Holds the registration of an existing service until a signal (exit code
/// 0) or an admin's free ([`EXIT_EVICTED`]). With a TCP check, frees it
/// while the port refuses connections and registers it again (same id and
/// port) when it accepts again.
pub(crate) async fn hold_existing(
    client: &SeaportClient,
    role: &str,
    options: RegisterOptions,
    registration: Registration,
    check: Option<(String, Duration)>,
    mut signals: Signals,
) -> Result<i32, Failure> {
    let code = |stop| match stop {
        Stop::Signal(_) => 0,
        Stop::Evicted => EXIT_EVICTED,
    };
    let Some((host, interval)) = check else {
        return Ok(code(signals.recv().await));
    };
    let id = registration.id().to_string();
    let port = registration.port();
    let mut registered = true;
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            stop = signals.recv() => return Ok(code(stop)),
        }
        let up = matches!(
            tokio::time::timeout(
                interval,
                tokio::net::TcpStream::connect((host.as_str(), port))
            )
            .await,
            Ok(Ok(_))
        );
        if up && !registered {
            client
                .register(role, options.clone().id(id.clone()).port(port))
                .await?;
            eprintln!("seaportctl: {host}:{port} accepts connections again; registered");
            registered = true;
        } else if !up && registered {
            client.free(&id).await?;
            eprintln!(
                "seaportctl: {host}:{port} refuses connections; freed until it accepts again"
            );
            registered = false;
        }
    }
}
