//! seaportctl under mTLS, against a real seaportd with real certificates
//! made by `seaportctl certs init`: the certificates it makes, its
//! messages and exit codes, and the sessions it opens. The server's own
//! mTLS rules are tested in the end-to-end suite (tests/e2e/tls.rs).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use seaport_client::{RegisterOptions, SeaportClient};
use seaport_testkit::tls::{TempDir, expired_client, identity_pem, pem, tls_config};
use seaport_testkit::{PATIENCE, TestServer, wait_for};
use tonic::Code;

async fn seaportctl(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_seaportctl"))
        .args(args)
        .output();
    tokio::time::timeout(PATIENCE, run).await.unwrap().unwrap()
}

/// seaportctl's flags to reach `server` as identity `who` of `dir`.
fn as_identity(server: SocketAddr, dir: &Path, who: &str) -> Vec<String> {
    let d = dir.display();
    vec![
        "--server".into(),
        server.to_string(),
        "--ca".into(),
        format!("{d}/ca.pem"),
        "--cert".into(),
        format!("{d}/client-{who}.pem"),
        "--key".into(),
        format!("{d}/client-{who}-key.pem"),
    ]
}

/// seaportctl as identity `who`, with `args` after the connection flags.
async fn seaportctl_as(server: SocketAddr, dir: &Path, who: &str, args: &[&str]) -> Output {
    let mut all = as_identity(server, dir, who);
    all.extend(args.iter().map(|a| a.to_string()));
    seaportctl(&all.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// `seaportctl certs init` into a fresh directory, with `clients`.
async fn certs(tag: &str, clients: &[&str]) -> TempDir {
    let dir = TempDir::new(tag);
    let mut args = vec!["certs", "init", dir.path().to_str().unwrap()];
    for c in clients {
        args.extend(["--client", c]);
    }
    let out = seaportctl(&args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("--client-ca"));
    dir
}

/// A TLS seaportd with `dir`'s certificates; with `reads_need_cert`,
/// reads need a client certificate too.
async fn server(dir: &Path, reads_need_cert: bool) -> TestServer {
    let mut config = tls_config(dir);
    config.require_client_cert_for_reads = reads_need_cert;
    TestServer::start_with(config).await
}

/// A client holding client certificate `who` of `dir`'s CA.
async fn client(addr: SocketAddr, dir: &Path, who: &str) -> SeaportClient {
    let (cert, key) = identity_pem(dir, who);
    SeaportClient::builder()
        .endpoint(addr.to_string())
        .ca_pem(pem(dir, "ca.pem"))
        .identity_pem(cert, key)
        .connect()
        .await
        .unwrap()
}

/// What a certificate says of its validity and use.
struct Made {
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    /// Key usages: digital signature, certificate signing.
    signs: bool,
    signs_certs: bool,
    server_auth: bool,
    client_auth: bool,
}

/// What `pem_file` in `dir` says.
fn made(dir: &Path, pem_file: &str) -> Made {
    let text = pem(dir, pem_file);
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
    let cert = pem.parse_x509().unwrap();
    let usage = cert.key_usage().unwrap().map(|e| *e.value);
    let extended = cert.extended_key_usage().unwrap().map(|e| e.value.clone());
    Made {
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        signs: usage.is_some_and(|u| u.digital_signature()),
        signs_certs: usage.is_some_and(|u| u.key_cert_sign()),
        server_auth: extended.as_ref().is_some_and(|e| e.server_auth),
        client_auth: extended.as_ref().is_some_and(|e| e.client_auth),
    }
}

#[tokio::test]
async fn certs_init_makes_short_lived_certificates_with_their_usages() {
    let dir = certs("validity", &["alice"]).await;
    let now = time::OffsetDateTime::now_utc();
    let days = |m: &Made| (m.not_after - now).whole_days();
    let ca = made(dir.path(), "ca.pem");
    let server = made(dir.path(), "server.pem");
    let alice = made(dir.path(), "client-alice.pem");
    for m in [&ca, &server, &alice] {
        let started = now - m.not_before;
        assert!(
            started >= time::Duration::minutes(59) && started <= time::Duration::minutes(61),
            "valid from an hour ago: {:?}",
            m.not_before
        );
    }
    assert!((3649..=3650).contains(&days(&ca)), "CA: {} days", days(&ca));
    assert!(
        (364..=365).contains(&days(&server)),
        "{} days",
        days(&server)
    );
    assert!((364..=365).contains(&days(&alice)), "{} days", days(&alice));
    assert!(ca.signs_certs);
    assert!(server.signs && !server.signs_certs && server.server_auth && !server.client_auth);
    assert!(alice.signs && !alice.signs_certs && alice.client_auth && !alice.server_auth);

    let short = TempDir::new("days");
    let out = seaportctl(&[
        "certs",
        "init",
        short.path().to_str().unwrap(),
        "--days",
        "7",
    ])
    .await;
    assert!(out.status.success());
    assert!((6..=7).contains(&days(&made(short.path(), "server.pem"))));
}

#[tokio::test]
async fn seaportctl_register_stops_its_command_when_an_admin_frees_it() {
    let dir = certs("evict-ctl", &["alice", "ops"]).await;
    let mut config = tls_config(dir.path());
    config.policy = Some(dir.file(
        "policy.toml",
        "admins = [\"ops\"]\n[[allow]]\nidentities = [\"alice\"]\nnames = [\"*\"]\n",
    ));
    let server = TestServer::start_with(config).await;
    let pidfile = dir.path().join("child.pid");
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let mut ctl = tokio::process::Command::new(env!("CARGO_BIN_EXE_seaportctl"))
        .args(as_identity(server.addr, dir.path(), "alice"))
        .args(["register", "web@1.0.0", "--", "sh", "-c", &script])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ops = client(server.addr, dir.path(), "ops").await;
    let web = wait_for("web to be registered", async || {
        ops.query("web").await.unwrap().pop()
    })
    .await;
    let child: i32 = wait_for("the command to start", async || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    })
    .await;

    // The admin frees it, here through seaportctl.
    let out = seaportctl_as(server.addr, dir.path(), "ops", &["free", &web.id]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("freed web@1.0.0"),
        "{}",
        said(&out)
    );
    let status = tokio::time::timeout(PATIENCE, ctl.wait())
        .await
        .expect("seaportctl exits")
        .unwrap();
    assert_eq!(status.code(), Some(6), "the evicted exit code");
    assert!(
        !Path::new(&format!("/proc/{child}")).exists(),
        "its command was stopped"
    );
    assert!(ops.query("web").await.unwrap().is_empty());
}

/// seaportctl's stdout and stderr, for assertion messages.
fn said(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// seaportctl with `--server server --ca ca` and `args`.
async fn seaportctl_ca(server: SocketAddr, ca: &Path, args: &[&str]) -> Output {
    let mut all = vec![
        "--server".to_string(),
        server.to_string(),
        "--ca".into(),
        ca.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    seaportctl(&all.iter().map(String::as_str).collect::<Vec<_>>()).await
}

#[tokio::test]
async fn reads_need_no_certificate_and_open_no_session() {
    let logs = seaport_testkit::Logs::capture();
    let dir = certs("reads-only", &["alice"]).await;
    let server = server(dir.path(), false).await;
    let alice = client(server.addr, dir.path(), "alice").await;
    let web = alice
        .register(
            "web@1.2.3",
            RegisterOptions::default().port(8080).meta("zone", "a"),
        )
        .await
        .unwrap();
    assert_eq!(logs.count("session opened"), 1, "alice's");
    let ca = dir.path().join("ca.pem");

    // As the README's example has it: reads need no certificate.
    let query = seaportctl_ca(server.addr, &ca, &["query", "web", "--addresses"]).await;
    assert_eq!(query.status.code(), Some(0), "{}", said(&query));
    assert_eq!(String::from_utf8_lossy(&query.stdout), "127.0.0.1:8080\n");
    let get = seaportctl_ca(server.addr, &ca, &["get", "web@1.2.x", "--timeout", "5s"]).await;
    assert_eq!(get.status.code(), Some(0), "{}", said(&get));
    assert!(String::from_utf8_lossy(&get.stdout).contains(web.id()));
    let show = seaportctl_ca(server.addr, &ca, &["show"]).await;
    assert_eq!(show.status.code(), Some(0), "{}", said(&show));

    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_seaportctl"))
        .args(["--server", &server.addr.to_string(), "--ca"])
        .arg(&ca)
        .args(["watch", "web"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    let existing = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("watch prints the service");
    assert!(
        existing.contains(" existing web@1.2.3 127.0.0.1:8080 "),
        "{existing}"
    );
    web.free().await.unwrap();
    let freed = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("watch prints the free");
    assert!(freed.contains(" freed web@1.2.3 "), "{freed}");
    watch.kill().await.unwrap();

    // With a certificate too, reads open no session.
    let as_alice = seaportctl_as(server.addr, dir.path(), "alice", &["query"]).await;
    assert_eq!(as_alice.status.code(), Some(0), "{}", said(&as_alice));
    assert_eq!(
        logs.count("session opened"),
        1,
        "still only alice's: {}",
        logs.text()
    );
}

#[tokio::test]
async fn a_write_without_a_certificate_is_refused_at_once_with_exit_8() {
    let dir = certs("nocert-write", &["alice"]).await;
    let server = server(dir.path(), false).await;
    let ca = dir.path().join("ca.pem");
    let out = seaportctl_ca(
        server.addr,
        &ca,
        &["register", "web@1.0.0", "--port", "8080"],
    )
    .await;
    assert_eq!(out.status.code(), Some(8), "{}", said(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs a client certificate") && stderr.contains("--cert and --key"),
        "{stderr}"
    );
    let out = seaportctl_ca(server.addr, &ca, &["free", "some-id"]).await;
    assert_eq!(out.status.code(), Some(8), "{}", said(&out));

    // The client: reads work, and the write's refusal comes at once, not
    // after its request timeout.
    let anon = SeaportClient::builder()
        .endpoint(server.addr.to_string())
        .ca_pem(pem(dir.path(), "ca.pem"))
        .request_timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    assert!(anon.query("").await.is_ok());
    let started = tokio::time::Instant::now();
    let refused = anon
        .register("web@1.0.0", RegisterOptions::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unauthenticated), "{refused}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(anon.query("").await.is_ok(), "reads go on");
}

#[tokio::test]
async fn reads_refused_without_a_certificate_exit_8_and_end_a_watch() {
    let dir = certs("reads-refused", &[]).await;
    let server = server(dir.path(), true).await;
    let ca = dir.path().join("ca.pem");
    for args in [vec!["query"], vec!["get", "web"], vec!["watch"]] {
        let out = seaportctl_ca(server.addr, &ca, &args).await;
        assert_eq!(out.status.code(), Some(8), "{args:?}: {}", said(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("needs a client certificate"),
            "{}",
            said(&out)
        );
    }
}

#[tokio::test]
async fn tls_failures_name_their_cause_and_exit_7() {
    let dir = certs("tls-causes", &["alice"]).await;
    let other = certs("tls-other", &["mallory"]).await;
    let tls = server(dir.path(), false).await;
    let plain = TestServer::start().await;

    let expect = |out: &Output, says: &[&str]| {
        assert_eq!(out.status.code(), Some(7), "{}", said(out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("seaportctl: TLS with "), "{stderr}");
        for s in says {
            assert!(stderr.contains(s), "{s:?} in {stderr}");
        }
        assert!(!stderr.contains("no Seaport server reachable"), "{stderr}");
    };
    // Another CA than the one that signed the server's certificate.
    let out = seaportctl_ca(tls.addr, &other.path().join("ca.pem"), &["query"]).await;
    expect(
        &out,
        &[
            "invalid peer certificate",
            "give the CA that signed it (--ca)",
        ],
    );
    // Plaintext to the TLS port, and TLS to a plaintext one.
    let out = seaportctl(&["--server", &tls.addr.to_string(), "query"]).await;
    expect(&out, &["give the CA that signed its certificate (--ca)"]);
    let out = seaportctl_ca(plain.addr, &dir.path().join("ca.pem"), &["query"]).await;
    expect(&out, &["drop --ca"]);
    // An address the server's certificate does not name.
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let elsewhere = TestServer::serve(listener, None, tls_config(dir.path()));
    let out = seaportctl_ca(elsewhere.addr, &dir.path().join("ca.pem"), &["query"]).await;
    expect(&out, &["not valid for name", "--server-name"]);
    // A client certificate of another CA, and an expired one: the server's
    // alert says which.
    let mut as_mallory = as_identity(tls.addr, other.path(), "mallory");
    as_mallory[3] = dir.path().join("ca.pem").display().to_string();
    as_mallory.push("query".into());
    let out = seaportctl(&as_mallory.iter().map(String::as_str).collect::<Vec<_>>()).await;
    expect(
        &out,
        &[
            "received fatal alert",
            "the server refused this client's certificate",
        ],
    );
    expired_client(dir.path(), "late");
    let out = seaportctl_as(tls.addr, dir.path(), "late", &["query"]).await;
    expect(
        &out,
        &["received fatal alert: CertificateExpired", "has expired"],
    );
}

#[tokio::test]
async fn no_server_at_all_is_exit_5_with_no_server_reachable() {
    let dir = certs("none", &[]).await;
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Each waits out its connect timeout (2s, twice): together.
    let (address, ca) = (unused.to_string(), dir.path().join("ca.pem"));
    let plain_args = ["--server", &address, "query"];
    let (plain, tls) = tokio::join!(
        seaportctl(&plain_args),
        seaportctl_ca(unused, &ca, &["query"]),
    );
    for out in [plain, tls] {
        assert_eq!(out.status.code(), Some(5), "{}", said(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains(&format!("no Seaport server reachable at {unused} (")),
            "{}",
            said(&out)
        );
    }
}

#[tokio::test]
async fn update_remove_takes_keys_out_and_keeps_the_rest() {
    let dir = certs("remove", &["alice"]).await;
    let server = server(dir.path(), false).await;
    let alice = client(server.addr, dir.path(), "alice").await;
    let web = alice
        .register(
            "web@1.0.0",
            RegisterOptions::default()
                .meta("zone", "a")
                .meta("team", "x")
                .meta("tier", "1"),
        )
        .await
        .unwrap();
    let out = seaportctl_as(
        server.addr,
        dir.path(),
        "alice",
        &[
            "update",
            web.id(),
            "--remove",
            "team",
            "--remove",
            "tier",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed[0]["metadata"], serde_json::json!({"zone": "a"}));
    let out = seaportctl_as(
        server.addr,
        dir.path(),
        "alice",
        &[
            "update",
            web.id(),
            "--remove",
            "zone",
            "--meta",
            "owner=ops",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let now = alice.query("web").await.unwrap();
    assert_eq!(
        now[0].metadata.iter().collect::<Vec<_>>(),
        [(&"owner".to_string(), &"ops".to_string())]
    );
    let neither = seaportctl_as(server.addr, dir.path(), "alice", &["update", web.id()]).await;
    assert_eq!(neither.status.code(), Some(2), "{}", said(&neither));
}
