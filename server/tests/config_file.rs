//! `seaportd --config FILE.toml`: every flag as a key; flags, then the
//! environment, then the file, then the defaults.

use std::process::Command;

use seaport_testkit::Seaportd;

/// A file under the temporary directory, removed on drop.
struct File(std::path::PathBuf);

impl File {
    fn new(name: &str, text: &str) -> File {
        let path = std::env::temp_dir().join(format!(
            "seaportd-{}-{name}-{}.toml",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, text).unwrap();
        File(path)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn seaportd(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_seaportd"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn flags_and_environment_override_the_file_and_print_config_shows_the_result() {
    let file = File::new(
        "settings",
        "max-watchers = 5\nidle-timeout = \"1m\"\ndefault-ttl = \"20s\"\netcd-endpoints = [\"http://a:2379\", \"http://b:2379\"]\n",
    );
    let out = seaportd(
        &[
            "--config",
            &file.path(),
            "--max-watchers",
            "7",
            "--print-config",
        ],
        &[("SEAPORT_IDLE_TIMEOUT", "2m")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    for line in [
        "max-watchers = \"7\"",
        "idle-timeout = \"2m\"",
        "default-ttl = \"20s\"",
        "etcd-endpoints = [\"http://a:2379\", \"http://b:2379\"]",
        "port-range = \"10000-65535\"",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "{line} not in:\n{printed}"
        );
    }
    // What it printed is a config file that gives the same configuration.
    let again = File::new("printed", &printed);
    let out = seaportd(&["--config", &again.path(), "--print-config"], &[]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), printed);
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let file = File::new("unknown", "listen = \"127.0.0.1:0\"\nmax-watcher = 5\n");
    let out = seaportd(&["--config", &file.path()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown key \"max-watcher\""), "{stderr}");
}

#[tokio::test]
async fn the_file_is_what_a_served_seaportd_runs_with() {
    let file = File::new("served", "log-format = \"json\"\n");
    let served = Seaportd::start(
        env!("CARGO_BIN_EXE_seaportd"),
        "",
        &["--config".into(), file.path()],
    )
    .await;
    let log = served.log();
    assert!(
        log.iter().all(|l| l.starts_with('{')),
        "JSON lines, as the file says: {log:?}"
    );
}

#[tokio::test]
async fn the_console_listens_where_the_file_says() {
    let file = File::new("console", "console-listen = \"127.0.0.1:0\"\n");
    let served = Seaportd::start(
        env!("CARGO_BIN_EXE_seaportd"),
        "",
        &["--config".into(), file.path()],
    )
    .await;
    let log = served.log();
    let addr = log
        .iter()
        .find(|l| l.contains("web console serving"))
        .and_then(|l| l.split("console=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the console's address in the log: {log:?}"));
    let page = tokio::task::spawn_blocking({
        let addr = addr.to_string();
        move || {
            use std::io::{Read, Write};
            let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nhost: seaport\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut page = String::new();
            tcp.read_to_string(&mut page).unwrap();
            page
        }
    })
    .await
    .unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>Seaport console</title>"), "{page}");
}
