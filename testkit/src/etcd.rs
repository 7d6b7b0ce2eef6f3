//! A real etcd cluster for tests of the etcd-backed registry: `n` etcd
//! processes on 127.0.0.1 with ephemeral ports and temporary data
//! directories, so tests exercise the real consensus, elections and
//! restarts rather than a stand-in.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::PATIENCE;

/// How often a start polls its members.
const POLL: Duration = Duration::from_millis(50);
/// How long one health probe may take to connect; the members are local.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// How long one health probe waits for its answer: etcd's /health makes a
/// quorum read that itself gives up after a second.
const READ_TIMEOUT: Duration = Duration::from_millis(1500);
/// How many log lines a failed start shows.
const LOG_TAIL: usize = 20;

/// A real etcd cluster of `n` members on 127.0.0.1, each with its own
/// temporary data directory; stopped by PID and removed on drop, so no
/// test leaves processes or files behind.
pub struct EtcdCluster {
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
}

/// One member: its ports stay fixed for the cluster's life, since its
/// peers know it by its peer URL.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// In a mutex so that `is_running(&self)` can reap an exited process.
    child: Mutex<Option<Child>>,
}

/// Why members did not become ready.
enum Failure {
    /// Member `i` exited (most likely it could not bind a port).
    Exited(usize),
    /// These members were still not ready at the deadline.
    TimedOut(Vec<usize>),
}

impl EtcdCluster {
    /// Starts `n` members (1, 3 or 5) and waits until every member reports
    /// healthy (GET /health on its client URL answers {"health":"true"}),
    /// within [`PATIENCE`], so a test starts against a cluster with a
    /// leader. Panics with a message that says to install Debian's
    /// etcd-server when `etcd` is not on PATH.
    ///
    /// The ports are picked free just before etcd binds them, so another
    /// process can take one in between; the whole start is then retried
    /// once on fresh ports.
    pub async fn start(n: usize) -> EtcdCluster {
        assert!(
            matches!(n, 1 | 3 | 5),
            "an etcd cluster has 1, 3 or 5 members, not {n}"
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let cluster = EtcdCluster::spawn_new(n);
            let all: Vec<usize> = (0..n).collect();
            match cluster.wait_healthy(&all).await {
                Ok(()) => return cluster,
                // Dropping the cluster kills the members and removes its dir.
                Err(Failure::Exited(_)) if attempt == 1 => drop(cluster),
                Err(failure) => panic!("{}", cluster.explain("start", &failure)),
            }
        }
    }

    /// Client URLs, "http://127.0.0.1:PORT", one per member, in member
    /// order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The endpoints joined by commas, as --etcd-endpoints takes them.
    pub fn endpoints_flag(&self) -> String {
        self.endpoints().join(",")
    }

    /// Kills member `i` (SIGKILL, as a crash would) and waits for it to
    /// exit; its data directory stays, so it can start again.
    pub fn stop_member(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on the same ports and data directory (flag
    /// --initial-cluster-state existing), and waits until it reports
    /// healthy. Without a quorum of running members no member can be
    /// healthy, so then it waits only until the member's client port
    /// accepts TCP connections.
    pub async fn start_member(&mut self, i: usize) {
        assert!(!self.is_running(i), "etcd member {i} is already running");
        self.spawn_member(i, "existing");
        let running = (0..self.members.len())
            .filter(|&j| self.is_running(j))
            .count();
        let result = if running > self.members.len() / 2 {
            self.wait_healthy(&[i]).await
        } else {
            self.wait_listening(i).await
        };
        if let Err(failure) = result {
            panic!("{}", self.explain("restart", &failure));
        }
    }

    /// True while member i's process runs.
    pub fn is_running(&self, i: usize) -> bool {
        let mut child = self.members[i].child.lock().unwrap();
        match child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Whether member `i` answers GET /health with {"health":"true"} now:
    /// it runs, sees a leader and can read through a quorum.
    pub async fn is_healthy(&self, i: usize) -> bool {
        let port = self.members[i].client_port;
        tokio::task::spawn_blocking(move || probe_health(port))
            .await
            .unwrap_or(false)
    }

    /// Member `i`'s process id while it runs, for tests that check what
    /// became of it.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i]
            .child
            .lock()
            .unwrap()
            .as_ref()
            .map(Child::id)
    }

    /// The temporary directory that holds every member's data directory
    /// (`mN`) and log (`mN.log`); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a fresh directory, picks ports and spawns every member of a
    /// new cluster, without waiting for them.
    fn spawn_new(n: usize) -> EtcdCluster {
        let (dir, token) = unique_dir();
        let ports = free_ports(2 * n);
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: Mutex::new(None),
            })
            .collect();
        // Built before spawning, so a panic midway still cleans up.
        let cluster = EtcdCluster {
            dir,
            token,
            members,
        };
        for i in 0..n {
            cluster.spawn_member(i, "new");
        }
        cluster
    }

    /// Spawns member `i`'s etcd, appending its output to its log.
    fn spawn_member(&self, i: usize, state: &str) {
        let member = &self.members[i];
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let client_url = format!("http://127.0.0.1:{}", member.client_port);
        let peer_url = format!("http://127.0.0.1:{}", member.peer_port);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("create the etcd member's log file");
        let mut command = Command::new("etcd");
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(self.dir.join(&member.name))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            // Fast elections, so a test sees a new leader within a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log);
        // The flags alone configure the member, whatever the test's
        // environment says.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "`etcd` is not on PATH; these tests run a real etcd cluster: \
                 install Debian's etcd-server (apt-get install etcd-server)"
            ),
            Err(e) => panic!("cannot start etcd member {i}: {e}"),
        };
        *member.child.lock().unwrap() = Some(child);
    }

    /// Waits until every member in `which` reports healthy, polling.
    async fn wait_healthy(&self, which: &[usize]) -> Result<(), Failure> {
        let deadline = Instant::now() + PATIENCE;
        let mut pending = which.to_vec();
        loop {
            if let Some(&i) = pending.iter().find(|&&i| !self.is_running(i)) {
                return Err(Failure::Exited(i));
            }
            let mut probes = Vec::with_capacity(pending.len());
            for &i in &pending {
                let port = self.members[i].client_port;
                probes.push((i, tokio::task::spawn_blocking(move || probe_health(port))));
            }
            let mut still = Vec::new();
            for (i, probe) in probes {
                if !probe.await.unwrap_or(false) {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Failure::TimedOut(pending));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until member `i`'s client port accepts TCP connections.
    async fn wait_listening(&self, i: usize) -> Result<(), Failure> {
        let deadline = Instant::now() + PATIENCE;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.members[i].client_port));
        loop {
            let accepts = tokio::task::spawn_blocking(move || {
                TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).is_ok()
            })
            .await
            .unwrap_or(false);
            if accepts {
                return Ok(());
            }
            if !self.is_running(i) {
                return Err(Failure::Exited(i));
            }
            if Instant::now() >= deadline {
                return Err(Failure::TimedOut(vec![i]));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A panic message for a failed start: which members, and the end of
    /// each one's log, which says why.
    fn explain(&self, what: &str, failure: &Failure) -> String {
        let (headline, members) = match failure {
            Failure::Exited(i) => (format!("etcd member {i} exited"), vec![*i]),
            Failure::TimedOut(pending) => (
                format!("etcd members {pending:?} not ready within {PATIENCE:?}"),
                pending.clone(),
            ),
        };
        let mut message = format!("etcd cluster {what} failed: {headline}");
        for i in members {
            let path = self.log_path(i);
            message.push_str(&format!(
                "\n--- last {LOG_TAIL} lines of {} ---\n{}",
                path.display(),
                log_tail(&path)
            ));
        }
        message
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.members[i].name))
    }
}

impl Drop for EtcdCluster {
    /// Kills every member, waits for each to exit, and removes the data
    /// directories.
    fn drop(&mut self) {
        for member in &self.members {
            member.kill();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Member {
    /// SIGKILLs the process if there is one and reaps it.
    fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A new directory under the system's temporary directory, and the
/// unique name it was made with (also the cluster token, so members of
/// two clusters can never join each other).
fn unique_dir() -> (PathBuf, String) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let random = RandomState::new().hash_one(COUNTER.load(Ordering::Relaxed));
        let name = format!(
            "seaport-etcd-{}-{}-{random:016x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&name);
        match fs::create_dir(&dir) {
            Ok(()) => return (dir, name),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
}

/// `n` distinct free ports: all bound at once so none repeats, then
/// released for etcd to bind.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A raw `GET /health` over HTTP/1.0: true when the body says
/// `"health":"true"`.
fn probe_health(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    // HTTP/1.0: the server closes after its answer; a timeout keeps what
    // was read.
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).contains(r#""health":"true""#)
}

/// The last [`LOG_TAIL`] lines of the log at `path`.
fn log_tail(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Err(e) = File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        return format!("(cannot read the log: {e})");
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
}
