//! seaportd as a real process, for what only a process shows: signals,
//! descriptor limits, and a kill -9 that leaves no goodbye.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::PATIENCE;

/// A seaportd started by `sh -c` (so a shell can set limits first), and the
/// address it serves on, read from its log. Killed when dropped.
pub struct Seaportd {
    child: Child,
    /// The address it serves gRPC on.
    pub addr: SocketAddr,
    /// Its log lines so far (stderr), the latest [`LOG_LINES`].
    log: Arc<Mutex<VecDeque<String>>>,
}

/// Log lines of a seaportd kept for a test to read.
pub const LOG_LINES: usize = 10_000;

impl Seaportd {
    /// Starts `binary` (the test's `CARGO_BIN_EXE_seaportd`) with `args`
    /// after the shell commands `setup`; it listens on `--listen` from
    /// `args`, or on an ephemeral port.
    pub async fn start(binary: &str, setup: &str, args: &[String]) -> Self {
        let listen = if args.iter().any(|a| a == "--listen") {
            ""
        } else {
            " --listen 127.0.0.1:0"
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{setup}\nexec \"$0\" \"$@\"{listen}"))
            .arg(binary)
            .args(args)
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("seaportd starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let keep = |log: &Mutex<VecDeque<String>>, line: String| {
            let mut log = log.lock().unwrap();
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line);
        };
        let addr = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let found = served_at(&line);
                keep(&log, line);
                if let Some(addr) = found {
                    return addr;
                }
            }
            panic!("seaportd ended before serving");
        })
        .await
        .expect("seaportd says where it serves");
        // Keep reading the log so seaportd never blocks on a full pipe.
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep(&kept, line);
            }
        });
        Seaportd { child, addr, log }
    }

    /// Its log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().iter().cloned().collect()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Kills it with SIGKILL, as a crash would, and waits until it is gone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill -9");
    }
}

/// The address in seaportd's "serving" line, in text (`local=ADDR`) or
/// JSON (`"local":"ADDR"`) logs.
fn served_at(line: &str) -> Option<SocketAddr> {
    let rest = match line.find("local=") {
        Some(at) => &line[at + "local=".len()..],
        None => &line[line.find("\"local\":\"")? + "\"local\":\"".len()..],
    };
    rest.split(|c: char| c.is_whitespace() || c == '"')
        .next()?
        .parse()
        .ok()
}
