//! Runs the examples as a user would, against a real seaportd: the client
//! first (its get waits), then the server.

use std::path::PathBuf;
use std::process::Stdio;

use seaport_testkit::{PATIENCE, TestServer};
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
    let server = TestServer::start().await;
    let addr = server.addr.to_string();

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
    let line = tokio::time::timeout(PATIENCE, announced.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(line.starts_with("web@1.2.3 listening on "), "{line}");

    let output = tokio::time::timeout(PATIENCE, web_client.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "beep boop\n");

    // Ctrl-C closes its session: the registration goes at once.
    let pid = web_server.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(PATIENCE, web_server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let mut client = server.client().await;
    assert!(
        seaport_testkit::query(&mut client, "web").await.is_empty(),
        "freed at once by the close"
    );
    server.stop().await;
}
