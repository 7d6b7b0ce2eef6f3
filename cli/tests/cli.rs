//! seaportctl as a user runs it, against a real seaportd on 127.0.0.1:0.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use seaport_client::{RegisterOptions, SeaportClient};
use seaport_testkit::{PATIENCE, TestServer, eventually, test_config};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn seaportctl(server: SocketAddr, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_seaportctl"));
    command
        .arg("--server")
        .arg(server.to_string())
        .args(args)
        .kill_on_drop(true);
    command
}

async fn run(server: SocketAddr, args: &[&str]) -> Output {
    tokio::time::timeout(PATIENCE, seaportctl(server, args).output())
        .await
        .expect("seaportctl finishes")
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn client(server: SocketAddr) -> SeaportClient {
    SeaportClient::connect([server.to_string()]).await.unwrap()
}

fn lines(child: &mut Child) -> Lines<BufReader<ChildStdout>> {
    BufReader::new(child.stdout.take().unwrap()).lines()
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("more output")
}

fn starts(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[tokio::test]
async fn register_runs_the_command_on_its_port_restarts_it_and_frees_on_sigterm() {
    let server = TestServer::start().await;
    let dir = scratch("restarts");
    let log = dir.join("starts");
    let _ = std::fs::remove_file(&log);
    let script = format!("echo \"$$ $PORT $1\" >> {}; exec sleep 60", log.display());
    let mut ctl = seaportctl(
        server.addr,
        &[
            "register",
            "web@1.2.3",
            "--meta",
            "zone=a",
            "--",
            "sh",
            "-c",
            &script,
            "sh",
        ],
    )
    .spawn()
    .unwrap();

    eventually("the command to start", async || starts(&log).len() == 1).await;
    let first = starts(&log).remove(0);
    assert_eq!(
        first[1], first[2],
        "the port is in PORT and the last argument"
    );
    let port: u16 = first[1].parse().unwrap();
    let watcher = client(server.addr).await;
    let web = watcher.query("web@1.2.x").await.unwrap();
    assert_eq!(
        (web.len(), web[0].port, web[0].metadata["zone"].as_str()),
        (1, port, "a")
    );

    kill(Pid::from_raw(first[0].parse().unwrap()), Signal::SIGKILL).unwrap();
    eventually("the command to be restarted", async || {
        starts(&log).len() == 2
    })
    .await;
    assert_eq!(starts(&log)[1][1], first[1], "restarted on the same port");

    kill(Pid::from_raw(ctl.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(PATIENCE, ctl.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "the child's status: killed by the forwarded SIGTERM"
    );
    assert!(
        watcher.query("web").await.unwrap().is_empty(),
        "freed when seaportctl stops"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_existing_service_is_registered_until_seaportctl_stops() {
    let server = TestServer::start().await;
    let mut ctl = seaportctl(
        server.addr,
        &["register", "db", "--port", "15432", "--host", "db-1"],
    )
    .spawn()
    .unwrap();
    let watcher = client(server.addr).await;
    eventually("db to be registered", async || {
        watcher.query("db").await.unwrap().len() == 1
    })
    .await;
    assert_eq!(
        watcher.query("db").await.unwrap()[0].address(),
        "db-1:15432"
    );
    kill(Pid::from_raw(ctl.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    assert!(
        tokio::time::timeout(PATIENCE, ctl.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
    assert!(watcher.query("db").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_tcp_check_frees_a_service_while_its_port_is_closed() {
    let server = TestServer::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut ctl = seaportctl(
        server.addr,
        &[
            "register",
            "api",
            "--port",
            &port,
            "--check",
            "tcp",
            "--check-interval",
            "100ms",
        ],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let watcher = client(server.addr).await;
    eventually("api to be registered", async || {
        watcher.query("api").await.unwrap().len() == 1
    })
    .await;
    drop(listener);
    eventually("api to be freed while closed", async || {
        watcher.query("api").await.unwrap().is_empty()
    })
    .await;
    let _listener = std::net::TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();
    eventually("api to come back", async || {
        watcher.query("api").await.unwrap().len() == 1
    })
    .await;
    kill(Pid::from_raw(ctl.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let _ = ctl.wait().await;
}

#[tokio::test]
async fn query_prints_a_table_json_or_addresses() {
    let server = TestServer::start().await;
    let owner = client(server.addr).await;
    let web = owner
        .register(
            "web@1.2.3",
            RegisterOptions::default()
                .host("10.0.0.7")
                .port(8080)
                .id("w1")
                .meta("zone", "a"),
        )
        .await
        .unwrap();

    let table = run(server.addr, &["query", "web@1.2.x"]).await;
    assert!(table.status.success(), "{}", stderr(&table));
    assert_eq!(
        stdout(&table),
        "NAME  VERSION  ADDRESS        ID  STATE  METADATA\nweb   1.2.3    10.0.0.7:8080  w1  up     zone=a\n"
    );
    let json = run(server.addr, &["query", "web", "-o", "json"]).await;
    let parsed: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(parsed[0]["id"], web.id());
    assert_eq!(parsed[0]["metadata"]["zone"], "a");
    assert_eq!(
        stdout(&run(server.addr, &["query", "web", "--addresses"]).await),
        "10.0.0.7:8080\n"
    );
    assert_eq!(
        stdout(&run(server.addr, &["query", "web", "--addresses", "-o", "json"]).await),
        "[\"10.0.0.7:8080\"]\n"
    );
    let show = run(server.addr, &["show"]).await;
    assert!(
        stdout(&show).contains("web\n  1.2.3\n    10.0.0.7:8080  w1  zone=a"),
        "{}",
        stdout(&show)
    );

    let bad = run(server.addr, &["query", "web@1.2.3.4"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("has more than three version parts"),
        "{}",
        stderr(&bad)
    );
}

#[tokio::test]
async fn get_waits_for_a_later_registration_and_times_out_cleanly() {
    let server = TestServer::start_with_admin(test_config()).await;
    let waiting = seaportctl(server.addr, &["get", "web@1.2.x", "--addresses"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("seaportctl's Get to wait at the server", async || {
        server.metric("seaport_get_waiters").await == Some(1.0)
    })
    .await;
    let owner = client(server.addr).await;
    owner
        .register(
            "web@1.2.5",
            RegisterOptions::default().host("10.0.0.8").port(9000),
        )
        .await
        .unwrap();
    let out = tokio::time::timeout(PATIENCE, waiting.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(stdout(&out), "10.0.0.8:9000\n");

    let timed_out = run(server.addr, &["get", "nobody", "--timeout", "300ms"]).await;
    assert_eq!(timed_out.status.code(), Some(4));
    assert_eq!(
        stderr(&timed_out),
        "seaportctl: nothing matched \"nobody\" within 300ms\n"
    );
}

#[tokio::test]
async fn watch_prints_a_line_for_a_service_that_comes_and_goes() {
    let server = TestServer::start().await;
    let mut watching = seaportctl(server.addr, &["watch", "web", "-v"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = lines(&mut watching);
    let owner = client(server.addr).await;
    // The watch may start before or after this; either way it sees the service.
    let web = owner
        .register(
            "web@1.0.0",
            RegisterOptions::default().port(7000).meta("zone", "a"),
        )
        .await
        .unwrap();
    let first = next_line(&mut out).await;
    let suffix = format!("web@1.0.0 127.0.0.1:7000 {} zone=a", web.id());
    assert!(
        first.ends_with(&suffix)
            && (first.contains(" registered ") || first.contains(" existing ")),
        "{first}"
    );
    web.free().await.unwrap();
    let second = next_line(&mut out).await;
    assert!(
        second.contains(" freed ") && second.ends_with(&suffix),
        "{second}"
    );
}

#[tokio::test]
async fn health_exits_zero_when_serving_and_five_when_unreachable() {
    let server = TestServer::start().await;
    let ok = run(server.addr, &["health"]).await;
    assert_eq!(
        (ok.status.code(), stdout(&ok).as_str()),
        (Some(0), "SERVING\n")
    );
    let ok = run(server.addr, &["health", "--service", "seaport.v1.Registry"]).await;
    assert_eq!(ok.status.code(), Some(0));
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = run(unused, &["health"]).await;
    assert_eq!(down.status.code(), Some(5));
    assert!(
        stderr(&down).contains(&format!("no Seaport server reachable at {unused}")),
        "{}",
        stderr(&down)
    );
}

#[tokio::test]
async fn register_without_command_or_port_is_a_usage_error() {
    let server = TestServer::start().await;
    let out = run(server.addr, &["register", "web@1.0.0"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("give a COMMAND after `--`"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn completions_are_printed_for_bash() {
    let out = run("127.0.0.1:1".parse().unwrap(), &["completions", "bash"]).await;
    assert!(out.status.success());
    assert!(stdout(&out).contains("seaportctl"));
}

#[tokio::test]
async fn free_update_and_drain_of_another_processs_registration_are_refused_and_explained() {
    let server = TestServer::start().await;
    let owner = client(server.addr).await;
    let web = owner
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap();
    for args in [
        vec!["free", web.id()],
        vec!["update", web.id(), "--meta", "zone=b"],
        vec!["drain", web.id()],
    ] {
        let out = run(server.addr, &args).await;
        assert_eq!(out.status.code(), Some(9), "{args:?}: {}", stderr(&out));
        for says in [
            "belongs to another session",
            "only the process that registered it",
            "under mTLS",
        ] {
            assert!(stderr(&out).contains(says), "{}", stderr(&out));
        }
    }
    let listed = owner.query("web").await.unwrap();
    assert!(
        listed.len() == 1 && !listed[0].draining && listed[0].metadata.is_empty(),
        "nothing changed: {listed:?}"
    );
}

/// The command runs in a process group of its own, which a stop signals
/// whole: a server behind `sh -c` stops with its shell.
#[tokio::test]
async fn a_stop_reaches_everything_the_command_started() {
    let server = TestServer::start().await;
    let dir = scratch("group");
    let (mut ctl, pid) = register_sh(
        server.addr,
        &dir.join("server.pid"),
        &["web@1.0.0"],
        "sleep 600 & echo $! > \"$PIDFILE\"; wait",
    )
    .await;
    kill(Pid::from_raw(ctl.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    tokio::time::timeout(PATIENCE, ctl.wait())
        .await
        .unwrap()
        .unwrap();
    eventually("the server behind the shell to stop", async || {
        !running(pid)
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether process `pid` runs: gone, or a zombie waiting for init to reap
/// it, is not running.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

/// The pid a command wrote to `path`, once it has.
async fn pid_in(path: &Path) -> i32 {
    eventually("the command to write its pid", async || {
        std::fs::read_to_string(path).is_ok_and(|p| p.ends_with('\n'))
    })
    .await;
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A command that serves until stopped, its pid in `$PIDFILE`.
const SERVE: &str = "echo $$ > \"$PIDFILE\"; exec sleep 600";

/// A scratch folder for one test, named for it and this process.
fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("seaportctl-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `seaportctl register ARGS... -- sh -c SCRIPT`, SCRIPT writing the pid
/// to watch into `$PIDFILE` (`pidfile`): seaportctl, and that pid once
/// written.
async fn register_sh(
    server: SocketAddr,
    pidfile: &Path,
    args: &[&str],
    script: &str,
) -> (Child, i32) {
    let mut all = vec!["register"];
    all.extend(args);
    all.extend(["--", "sh", "-c", script, "sh"]);
    let ctl = seaportctl(server, &all)
        .env("PIDFILE", pidfile)
        .spawn()
        .unwrap();
    (ctl, pid_in(pidfile).await)
}

/// A SIGKILLed seaportctl cannot stop its command, so the command gets a
/// parent-death signal: it must not go on holding a port the registry
/// frees with the session.
#[tokio::test]
async fn a_killed_seaportctl_takes_its_command_with_it() {
    let server = TestServer::start().await;
    let dir = scratch("orphan");
    let (mut ctl, pid) =
        register_sh(server.addr, &dir.join("command.pid"), &["web@1.0.0"], SERVE).await;
    assert!(running(pid));
    ctl.start_kill().unwrap();
    ctl.wait().await.unwrap();
    eventually("the command to die with seaportctl", async || !running(pid)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rolling update: of two instances, the one whose seaportctl is told
/// to stop drains first, keeps serving for --drain-wait, and from the
/// moment a client's catalog sees it draining, the client never picks it.
#[tokio::test]
async fn a_stopping_instance_drains_and_is_not_picked_while_it_still_serves() {
    let server = TestServer::start().await;
    let dir = scratch("rolling");
    let mut instances = Vec::new();
    for n in 0..2 {
        let id = format!("web-{n}");
        let args = ["web@1.0.0", "--id", &id, "--drain-wait", "1500ms"];
        let pidfile = dir.join(format!("{id}.pid"));
        instances.push(register_sh(server.addr, &pidfile, &args, SERVE).await);
    }
    let reader = client(server.addr).await;
    let catalog = reader.catalog("web@1.x").await.unwrap();
    eventually("both instances in the catalog", async || catalog.len() == 2).await;

    let (mut stopping, command) = instances.remove(0);
    kill(
        Pid::from_raw(stopping.id().unwrap() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    eventually("the catalog to see web-0 draining", async || {
        catalog
            .services()
            .iter()
            .any(|s| s.id == "web-0" && s.draining)
    })
    .await;
    assert!(running(command), "the instance serves while it drains");
    let mut picks = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while catalog.services().iter().any(|s| s.id == "web-0") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "web-0 never left the catalog"
        );
        assert_eq!(
            catalog.pick().unwrap().id,
            "web-1",
            "picked a draining instance"
        );
        picks += 1;
        // How often picks are sampled through the drain wait.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(picks > 50, "only {picks} picks during the drain wait");
    tokio::time::timeout(PATIENCE, stopping.wait())
        .await
        .unwrap()
        .unwrap();
    eventually("web-0's command to stop", async || !running(command)).await;
    let listed = reader.query("web").await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["web-1"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
