//! Runs the examples as a user would, against a real seaportd: the client
//! first (its get waits), then the server.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// target/debug/examples/NAME, next to this test's own binary.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

#[tokio::test]
async fn web_client_started_first_gets_beep_boop_from_web_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = seaport_server::Config {
        drain_delay: Duration::ZERO,
        ..Default::default()
    };
    let server = tokio::spawn(seaport_server::run(listener, config, async {
        let _ = stopped.await;
    }));

    let web_client = Command::new(example("web_client"))
        .env("SEAPORT_SERVER", &addr)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("web_client example is built");
    let mut web_server = Command::new(example("web_server"))
        .env("SEAPORT_SERVER", &addr)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("web_server example is built");
    let mut announced = BufReader::new(web_server.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), announced.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(line.starts_with("web@1.2.3 listening on "), "{line}");

    let output = tokio::time::timeout(Duration::from_secs(20), web_client.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "beep boop\n");

    web_server.kill().await.unwrap();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
