//! The seaportd under test: started from the release binary next to this
//! one (or reached at a given address), and its CPU and memory from /proc.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A seaportd child process, killed on drop.
pub(crate) struct Seaportd {
    pub(crate) addr: SocketAddr,
    child: Option<Child>,
}

impl Drop for Seaportd {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("SEAPORTD") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("own path");
    exe.with_file_name("seaportd")
}

impl Seaportd {
    /// Starts `seaportd` on a free 127.0.0.1 port with `extra` flags and
    /// waits until it accepts connections.
    pub(crate) async fn start(extra: &[String]) -> Seaportd {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let binary = binary();
        let mut child = Command::new(&binary)
            .args(["--listen", &addr.to_string(), "--drain-delay", "0s", "--log", "warn"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} (build it with `cargo build --release --bin seaportd`, or set SEAPORTD)", binary.display()));
        for _ in 0..400 {
            if serving(addr).await {
                return Seaportd {
                    addr,
                    child: Some(child),
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("seaportd did not report SERVING on {addr}");
    }

    /// A server someone else runs.
    pub(crate) fn external(addr: SocketAddr) -> Seaportd {
        Seaportd { addr, child: None }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Whether the server at `addr` answers its health check with SERVING:
/// on a store, only once it has loaded the registry.
async fn serving(addr: SocketAddr) -> bool {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("a valid address")
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|a| a.into_inner().status == 1)
}

/// CPU time (user + system) the process has used so far.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = ticks_per_second()?;
    Some(Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz))
}

/// The clock ticks a second in which /proc counts CPU time (`getconf
/// CLK_TCK`): the kernel's choice, so read from it, not assumed.
fn ticks_per_second() -> Option<u64> {
    static TICKS: OnceLock<Option<u64>> = OnceLock::new();
    *TICKS.get_or_init(|| clock_ticks(&std::fs::read("/proc/self/auxv").ok()?))
}

/// AT_CLKTCK from an auxiliary vector: (key, value) pairs of native words,
/// the same vector `getconf` reads through `sysconf`.
fn clock_ticks(auxv: &[u8]) -> Option<u64> {
    const AT_CLKTCK: usize = 17;
    let words: Vec<usize> = auxv
        .chunks_exact(size_of::<usize>())
        .map(|w| usize::from_ne_bytes(w.try_into().unwrap()))
        .collect();
    let pair = words.chunks_exact(2).find(|pair| pair[0] == AT_CLKTCK)?;
    Some(pair[1] as u64).filter(|&hz| hz > 0)
}

/// Resident set size in bytes.
pub(crate) fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_ticks_come_from_the_auxiliary_vector() {
        let auxv: Vec<u8> = [6, 4096, 17, 250, 0, 0]
            .iter()
            .flat_map(|w: &usize| w.to_ne_bytes())
            .collect();
        assert_eq!(clock_ticks(&auxv), Some(250));
        assert_eq!(clock_ticks(&auxv[..2 * size_of::<usize>()]), None);
        assert!(
            ticks_per_second().is_some(),
            "this process's own vector has it"
        );
    }

    #[test]
    fn cpu_time_reads_our_own_process() {
        let mine = cpu_time(std::process::id()).expect("/proc/self/stat");
        assert!(mine < Duration::from_secs(3600));
    }
}
