//! seaportd as a real process, for what only a process shows: signals,
//! descriptor limits, and a kill -9 that leaves no goodbye.

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::PATIENCE;

/// A seaportd started by `sh -c` (so a shell can set limits first), and the
/// address it serves on, read from its log. Killed when dropped.
pub struct Seaportd {
    child: Child,
    /// The address it serves gRPC on.
    pub addr: SocketAddr,
}

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
        let addr = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(at) = line.find("local=") {
                    let rest = &line[at + "local=".len()..];
                    let addr = rest.split_whitespace().next().unwrap();
                    return addr.parse::<SocketAddr>().unwrap();
                }
            }
            panic!("seaportd ended before serving");
        })
        .await
        .expect("seaportd says where it serves");
        // Keep draining the log so seaportd never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Seaportd { child, addr }
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
