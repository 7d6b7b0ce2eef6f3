//! The etcd harness against the real `etcd`: a cluster starts healthy,
//! leaves nothing behind, and survives losing and regaining a member.

use std::path::Path;
use std::time::Duration;

use seaport_testkit::{EtcdCluster, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body of `GET /health` at `endpoint`, read independently of the
/// harness's own probe; None when nothing answers.
async fn health(endpoint: &str) -> Option<String> {
    let addr = endpoint.strip_prefix("http://").expect("an http URL");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .ok()
        .flatten()
}

async fn is_healthy(endpoint: &str) -> bool {
    health(endpoint)
        .await
        .is_some_and(|body| body.contains(r#""health":"true""#))
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn three_members_start_healthy_and_leave_nothing_behind() {
    let cluster = EtcdCluster::start(3).await;
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(cluster.endpoints_flag(), endpoints.join(","));
    for endpoint in &endpoints {
        assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
        let body = health(endpoint).await;
        assert!(
            body.as_deref()
                .is_some_and(|b| b.contains(r#""health":"true""#)),
            "{endpoint} answers /health with {body:?}"
        );
    }
    let pids: Vec<u32> = (0..3).map(|i| cluster.pid(i).expect("running")).collect();
    assert!(pids.iter().all(|&pid| process_exists(pid)));
    assert!((0..3).all(|i| cluster.is_running(i)));
    let dir = cluster.dir().to_owned();
    for name in ["m0", "m1", "m2"] {
        assert!(dir.join(name).is_dir(), "{name}'s data dir exists");
    }

    drop(cluster);
    for pid in pids {
        assert!(!process_exists(pid), "etcd {pid} is gone after drop");
    }
    assert!(!dir.exists(), "{} is removed after drop", dir.display());
    for endpoint in &endpoints {
        assert!(health(endpoint).await.is_none(), "{endpoint} is closed");
    }
}

#[tokio::test]
async fn a_killed_member_leaves_a_quorum_and_comes_back() {
    let mut cluster = EtcdCluster::start(3).await;
    let endpoints = cluster.endpoints();
    let pid = cluster.pid(0).unwrap();

    cluster.stop_member(0);
    assert!(!cluster.is_running(0));
    assert!(!process_exists(pid), "member 0's etcd is gone");
    assert!(cluster.dir().join("m0").is_dir(), "its data dir stays");
    assert!(health(&endpoints[0]).await.is_none(), "member 0 is closed");
    // If member 0 led, the other two elect a new leader first.
    eventually("members 1 and 2 healthy without member 0", async || {
        is_healthy(&endpoints[1]).await && is_healthy(&endpoints[2]).await
    })
    .await;

    cluster.start_member(0).await;
    assert!(cluster.is_running(0));
    assert_eq!(cluster.endpoints(), endpoints, "the same ports");
    for endpoint in &endpoints {
        assert!(is_healthy(endpoint).await, "{endpoint} healthy again");
    }
    assert!(cluster.is_healthy(0).await);
}
