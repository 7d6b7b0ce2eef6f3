//! seaportd as a process: what only a real process shows (signals, the
//! file descriptor limit).

use std::time::Duration;

use seaport::pb::{self, registry_client::RegistryClient};
use seaport_client::{RegisterOptions, SeaportClient};
use seaport_testkit::tls::{TempDir, identity_pem, init_certs, pem, tls_client, try_query};
use seaport_testkit::{PATIENCE, Seaportd, eventually};
use tokio::net::TcpStream;
use tokio_stream::StreamExt;

/// seaportd as a process, with what these tests read of it.
struct Process(Seaportd);

impl Process {
    /// Starts seaportd on an ephemeral port after the shell commands `setup`.
    async fn start(setup: &str) -> Self {
        Process(Seaportd::start(env!("CARGO_BIN_EXE_seaportd"), setup, &[]).await)
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// CPU time used so far (user and system), from /proc.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    }

    /// Whether a line of its log so far contains `needle`.
    fn logged(&self, needle: &str) -> bool {
        self.0.log().iter().any(|l| l.contains(needle))
    }

    /// A query answered, within `limit`.
    async fn answers_within(&self, limit: Duration) -> bool {
        let addr = self.0.addr;
        let query = async move {
            let mut client = RegistryClient::connect(format!("http://{addr}"))
                .await
                .ok()?;
            client.query(pb::QueryRequest::default()).await.ok()
        };
        matches!(tokio::time::timeout(limit, query).await, Ok(Some(_)))
    }
}

/// seaportd's flags for mTLS with the server certificate `init_certs`
/// made in `dir`, trusting the client CA in `client_ca`.
fn tls_args(dir: &std::path::Path, client_ca: &std::path::Path) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        "--tls-cert".into(),
        file("server.pem"),
        "--tls-key".into(),
        file("server-key.pem"),
        "--client-ca".into(),
        client_ca.display().to_string(),
    ]
}

/// Clock ticks per second, as /proc counts CPU time.
fn clock_ticks() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test]
async fn sighup_in_plaintext_leaves_it_serving() {
    let seaportd = Process::start("").await;
    assert!(seaportd.answers_within(PATIENCE).await);
    hangup(seaportd.pid());
    eventually("the SIGHUP to be handled", async || {
        seaportd.logged("SIGHUP: nothing to reload")
    })
    .await;
    assert!(
        seaportd.answers_within(PATIENCE).await,
        "still serving after SIGHUP"
    );
}

/// Sends SIGHUP to process `pid`.
fn hangup(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// The reload on SIGHUP, sent to this one server's process. The new client
/// CA keeps the old file's modification time, so the poll of modification
/// times cannot be what loads it (tests/e2e/tls.rs covers that poll).
#[tokio::test]
async fn sighup_rotates_the_client_ca_without_dropping_sessions() {
    let dir = TempDir::new("sighup");
    let next = TempDir::new("sighup-next");
    init_certs(dir.path(), &["alice"]);
    init_certs(next.path(), &["carol"]);
    let bundle = dir.path().join("clients-ca.pem");
    std::fs::copy(dir.path().join("ca.pem"), &bundle).unwrap();
    let args = tls_args(dir.path(), &bundle);
    let seaportd = Seaportd::start(env!("CARGO_BIN_EXE_seaportd"), "", &args).await;
    let addr = seaportd.addr;

    let (cert, key) = identity_pem(dir.path(), "alice");
    let alice = SeaportClient::builder()
        .endpoint(addr.to_string())
        .ca_pem(pem(dir.path(), "ca.pem"))
        .identity_pem(cert, key)
        .connect()
        .await
        .unwrap();
    let mut events = alice.events();
    alice
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    let carol = Some((next.path(), "carol"));
    assert!(
        try_query(addr, dir.path(), carol).await.is_err(),
        "carol's CA is not trusted yet"
    );

    let stamp = std::fs::metadata(&bundle).unwrap().modified().unwrap();
    std::fs::write(&bundle, pem(next.path(), "ca.pem")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&bundle)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    hangup(seaportd.pid());
    eventually("carol's CA to be trusted", async || {
        try_query(addr, dir.path(), carol).await.is_ok()
    })
    .await;
    let log = seaportd.log();
    assert!(
        log.iter().any(|l| l.contains("SIGHUP: reloading")),
        "{log:?}"
    );

    // Alice's session, on its connection from before, lives on.
    alice
        .register("web@1.0.1", RegisterOptions::default())
        .await
        .unwrap();
    assert_eq!(alice.query("web").await.unwrap().len(), 2);
    let mut blips = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::ZERO, events.next()).await {
        blips.push(event);
    }
    assert!(
        blips.is_empty(),
        "no disconnect, no session lost: {blips:?}"
    );
}

#[tokio::test]
async fn out_of_descriptors_it_backs_off_and_recovers() {
    let seaportd = Process::start("ulimit -n 256").await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(seaportd.0.addr).await.unwrap());
    }
    eventually("it to run out of descriptors", async || {
        seaportd.logged("accepting connections failed")
    })
    .await;
    // Not a wait for an event: the two seconds over which CPU is measured.
    let before = seaportd.cpu();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = seaportd.cpu() - before;
    assert!(
        used < Duration::from_millis(200),
        "used {used:?} of CPU in 2s while out of descriptors"
    );
    drop(idle);
    assert!(
        seaportd.answers_within(Duration::from_secs(2)).await,
        "answers again soon after the connections close"
    );
}

#[tokio::test]
async fn logs_are_json_lines_when_asked_and_plain_text_in_a_pipe() {
    let json = Seaportd::start(
        env!("CARGO_BIN_EXE_seaportd"),
        "",
        &["--log-format".into(), "json".into()],
    )
    .await;
    let lines = json.log();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["timestamp"].is_string() && value["level"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"seaportd serving\"")),
        "{lines:?}"
    );
    // Written to a pipe, not a terminal: no colour codes, even without
    // NO_COLOR (which the test kit otherwise sets).
    let text = Process::start("unset NO_COLOR").await;
    let lines = text.0.log();
    assert!(lines.iter().any(|l| l.contains("seaportd serving")));
    assert!(lines.iter().all(|l| !l.contains('\x1b')), "{lines:?}");
}

/// A refused request's log line names the caller's certificate identity as
/// well as its address. (A real process: refusals are logged at a bounded
/// rate per address, which other tests in one test binary would share.)
#[tokio::test]
async fn a_refusal_is_logged_with_the_callers_identity() {
    let dir = TempDir::new("refusal-identity");
    init_certs(dir.path(), &["bob"]);
    let args = tls_args(dir.path(), &dir.path().join("ca.pem"));
    let seaportd = Process(Seaportd::start(env!("CARGO_BIN_EXE_seaportd"), "", &args).await);
    let mut bob = tls_client(seaportd.0.addr, dir.path(), Some((dir.path(), "bob")))
        .await
        .unwrap();
    let refused = bob
        .free(pb::FreeRequest {
            session_id: "no-such-session".into(),
            id: "web-1".into(),
        })
        .await;
    assert!(refused.is_err());
    eventually("the refusal's log line", async || {
        seaportd.0.log().iter().any(|l| {
            l.contains("rejected:")
                && l.contains("rpc=\"Free\"")
                && l.contains("identity=\"bob\"")
                && l.contains("peer=127.0.0.1:")
        })
    })
    .await;
    assert!(
        !seaportd.logged("no-such-session"),
        "a session handle is never logged"
    );
}
