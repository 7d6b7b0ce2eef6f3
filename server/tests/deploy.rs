//! deploy/ against the real seaportd: every flag and variable that the
//! Kubernetes manifests and the Dockerfile give seaportd is one it accepts
//! (`--print-config` parses them as a start would, then exits without
//! binding), and every port they name is one it listens on. A renamed flag
//! or a moved port fails here rather than in a cluster.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use seaport_server::REGISTRY_SERVICE;
use yaml_rust2::{Yaml, YamlLoader};

/// What the manifests' `fieldRef`s stand for in these tests: the kubelet
/// fills them in, so any value of the right shape will do.
const POD_IP: &str = "10.244.1.7";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// One YAML document of a manifest file.
struct Doc {
    file: String,
    yaml: Yaml,
}

impl Doc {
    fn kind(&self) -> &str {
        self.yaml["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: a document without kind", self.file))
    }

    fn name(&self) -> &str {
        self.yaml["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: a {} without metadata.name", self.file, self.kind()))
    }

    fn is_workload(&self) -> bool {
        matches!(self.kind(), "Deployment" | "StatefulSet")
    }

    /// A workload's pod template.
    fn template(&self) -> &Yaml {
        &self.yaml["spec"]["template"]
    }

    fn containers(&self) -> Vec<&Yaml> {
        list(&self.template()["spec"]["containers"])
    }

    fn replicas(&self) -> i64 {
        self.yaml["spec"]["replicas"].as_i64().unwrap_or(1)
    }
}

/// A deployment variant: a folder of deploy/kubernetes, applied as one.
struct Variant {
    name: String,
    docs: Vec<Doc>,
}

impl Variant {
    fn workloads(&self) -> impl Iterator<Item = &Doc> {
        self.docs.iter().filter(|d| d.is_workload())
    }

    fn one(&self, kind: &str, name: &str) -> &Doc {
        self.docs
            .iter()
            .find(|d| d.kind() == kind && d.name() == name)
            .unwrap_or_else(|| panic!("{}: no {kind} named {name}", self.name))
    }

    /// Every seaportd container, with its workload.
    fn seaportds(&self) -> Vec<(&Doc, &Yaml)> {
        let found: Vec<_> = self
            .workloads()
            .flat_map(|w| w.containers().into_iter().map(move |c| (w, c)))
            .filter(|(_, c)| is_seaport_image(str_at(c, "image")))
            .collect();
        assert!(!found.is_empty(), "{}: no seaportd container", self.name);
        found
    }
}

/// Every folder of deploy/kubernetes, its files' documents in file order.
fn variants() -> Vec<Variant> {
    let root = deploy_dir().join("kubernetes");
    let mut variants = Vec::new();
    for dir in sorted_entries(&root) {
        let mut docs = Vec::new();
        for file in sorted_entries(&dir) {
            if file.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let file = file.strip_prefix(&root).unwrap().display().to_string();
            let parsed = YamlLoader::load_from_str(&text)
                .unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
            for yaml in parsed.into_iter().filter(|y| !y.is_null()) {
                let doc = Doc {
                    file: file.clone(),
                    yaml,
                };
                for key in ["apiVersion", "kind"] {
                    assert!(
                        doc.yaml[key].as_str().is_some(),
                        "{file}: a document without {key}"
                    );
                }
                assert!(
                    doc.yaml["metadata"]["name"].as_str().is_some(),
                    "{file}: a {} without metadata.name",
                    doc.kind()
                );
                docs.push(doc);
            }
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !docs.is_empty(),
            "deploy/kubernetes/{name} holds no manifest"
        );
        variants.push(Variant { name, docs });
    }
    let names: Vec<_> = variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        ["cluster", "single"],
        "the variants deploy/README.md describes"
    );
    variants
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    entries
}

fn list(yaml: &Yaml) -> Vec<&Yaml> {
    yaml.as_vec()
        .map(|v| v.iter().collect())
        .unwrap_or_default()
}

fn str_at<'a>(yaml: &'a Yaml, key: &str) -> &'a str {
    yaml[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {yaml:?}"))
}

/// `seaport:0.1.0`, `registry.example/team/seaport:0.1.0`.
fn is_seaport_image(image: &str) -> bool {
    let repository = image.split(':').next().unwrap();
    repository.rsplit('/').next() == Some("seaport")
}

/// seaportd's effective configuration for these arguments and variables,
/// as `--print-config` prints it; a flag or value it refuses fails the test
/// with its usage error.
fn print_config(what: &str, args: &[String], env: &[(String, String)]) -> toml::Table {
    let mut command = Command::new(env!("CARGO_BIN_EXE_seaportd"));
    // Only what the manifest gives counts, not this shell's SEAPORT_*.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SEAPORT_") {
            command.env_remove(name);
        }
    }
    let out = command
        .args(args)
        .arg("--print-config")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "seaportd refuses {what}'s arguments {args:?} and environment {env:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().parse().unwrap()
}

/// The variables seaportd reads, as its `--help` names them: one it does
/// not know would be ignored without a word.
fn known_variables() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_seaportd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let known: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split('=').next().unwrap().to_string())
        .collect();
    assert!(
        known.contains("SEAPORT_LISTEN"),
        "seaportd --help names no variables: {help}"
    );
    known
}

fn assert_known(what: &str, env: &[(String, String)]) {
    let known = known_variables();
    for (name, _) in env {
        assert!(
            known.contains(name),
            "{what}: seaportd reads no {name}; it reads {known:?}"
        );
    }
}

/// A seaportd container as seaportd reads it, and the pod it runs in.
struct Seaportd {
    variant: String,
    what: String,
    config: toml::Table,
    container: Yaml,
    /// The pod template's spec.
    pod: Yaml,
    replicas: i64,
}

impl Seaportd {
    fn of(variant: &Variant, workload: &Doc, container: &Yaml) -> Seaportd {
        let what = format!(
            "{}: {} {} container {}",
            workload.file,
            workload.kind(),
            workload.name(),
            str_at(container, "name")
        );
        assert!(
            container["command"].is_badvalue(),
            "{what}: a command replaces the image's seaportd; give args only"
        );
        let args: Vec<String> = list(&container["args"])
            .into_iter()
            .map(|a| {
                a.as_str()
                    .unwrap_or_else(|| panic!("{what}: an argument that is no string: {a:?}"))
                    .to_string()
            })
            .collect();
        assert!(
            args.iter().all(|a| !a.contains("$(")),
            "{what}: give seaportd variables as SEAPORT_* env, not $(VAR) in args"
        );
        let env = list(&container["env"])
            .into_iter()
            .filter_map(|e| {
                let name = str_at(e, "name");
                name.starts_with("SEAPORT_")
                    .then(|| (name.to_string(), env_value(&what, e)))
            })
            .collect::<Vec<_>>();
        assert_known(&what, &env);
        let config = print_config(&format!("{} ({what})", variant.name), &args, &env);
        Seaportd {
            variant: variant.name.clone(),
            what,
            config,
            container: container.clone(),
            pod: workload.template()["spec"].clone(),
            replicas: workload.replicas(),
        }
    }

    fn get(&self, key: &str) -> &toml::Value {
        self.config
            .get(key)
            .unwrap_or_else(|| panic!("{}: seaportd runs without {key}", self.what))
    }

    fn text(&self, key: &str) -> &str {
        self.get(key).as_str().unwrap()
    }

    fn addr(&self, key: &str) -> SocketAddr {
        self.text(key).parse().unwrap()
    }

    fn duration(&self, key: &str) -> Duration {
        seaport::parse_duration(self.text(key)).unwrap()
    }
}

fn container_ports(container: &Yaml) -> Vec<(String, i64)> {
    list(&container["ports"])
        .into_iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The value the kubelet would give an `env` entry.
fn env_value(what: &str, entry: &Yaml) -> String {
    if let Some(value) = entry["value"].as_str() {
        return value.to_string();
    }
    match entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
        Some("status.podIP") => POD_IP.to_string(),
        other => panic!(
            "{what}: no stand-in for {} from {other:?}",
            str_at(entry, "name")
        ),
    }
}

/// Every seaportd container of every variant.
fn seaportds() -> Vec<Seaportd> {
    let variants = variants();
    let mut all = Vec::new();
    for variant in &variants {
        for (workload, container) in variant.seaportds() {
            all.push(Seaportd::of(variant, workload, container));
        }
    }
    all
}

#[test]
fn seaportd_accepts_every_manifests_flags_and_serves_the_pod() {
    for seaportd in seaportds() {
        let what = &seaportd.what;
        for key in ["listen", "admin-listen"] {
            assert!(
                seaportd.addr(key).ip().is_unspecified(),
                "{what}: {key} must take every address: the kubelet and the Service reach the pod on its own IP"
            );
        }
        assert_eq!(seaportd.text("log-format"), "json", "{what}");
        assert_eq!(
            seaportd.text("advertise-host"),
            POD_IP,
            "{what}: seaportd should register itself at the pod's IP"
        );
        let mut declared: Vec<i64> = container_ports(&seaportd.container)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        declared.sort();
        let mut listened = [
            seaportd.addr("listen").port(),
            seaportd.addr("admin-listen").port(),
        ]
        .map(i64::from)
        .to_vec();
        listened.sort();
        assert_eq!(
            declared, listened,
            "{what}: the container ports are the ports seaportd listens on"
        );
    }
}

#[test]
fn probes_ask_the_admin_ports_health_service() {
    for seaportd in seaportds() {
        let what = &seaportd.what;
        let admin = i64::from(seaportd.addr("admin-listen").port());
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if seaportd.container[probe].is_badvalue() {
                assert_eq!(probe, "startupProbe", "{what}: no {probe}");
                continue;
            }
            let grpc = &seaportd.container[probe]["grpc"];
            assert_eq!(
                grpc["port"].as_i64(),
                Some(admin),
                "{what}: {probe} must be a grpc probe on the admin port, which needs no client certificate"
            );
            if probe != "livenessProbe" {
                assert_eq!(
                    grpc["service"].as_str(),
                    Some(REGISTRY_SERVICE),
                    "{what}: {probe} must ask for the registry, which is SERVING only once it is ready"
                );
            }
        }
    }
}

#[test]
fn termination_grace_outlasts_the_drain_and_liveness_outlasts_both() {
    for seaportd in seaportds() {
        let what = &seaportd.what;
        let grace = seaportd.pod["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or_else(|| panic!("{what}: set terminationGracePeriodSeconds"));
        let drain = seaportd.duration("drain-delay") + seaportd.duration("shutdown-grace");
        assert!(
            Duration::from_secs(grace as u64) > drain,
            "{what}: terminationGracePeriodSeconds ({grace}) must exceed --drain-delay plus --shutdown-grace ({drain:?})"
        );
        // Kubernetes' defaults: every 10 s, 3 failures.
        let liveness = &seaportd.container["livenessProbe"];
        let window = liveness["periodSeconds"].as_i64().unwrap_or(10)
            * liveness["failureThreshold"].as_i64().unwrap_or(3);
        assert!(
            window >= grace,
            "{what}: the liveness probe would kill a draining seaportd (NOT_SERVING) after {window}s, within its {grace}s grace"
        );
    }
}

#[test]
fn a_registry_in_memory_runs_alone() {
    let mut single = 0;
    for seaportd in seaportds() {
        if seaportd.text("store") == "memory" {
            assert_eq!(
                seaportd.replicas, 1,
                "{}: replicas on the memory store would be registries apart behind one Service",
                seaportd.what
            );
        }
        if seaportd.variant == "single" {
            assert_eq!(seaportd.text("store"), "memory", "{}", seaportd.what);
            single += 1;
        }
    }
    assert_eq!(single, 1, "one seaportd in single/");
}

#[test]
fn services_target_ports_their_pods_declare() {
    for variant in variants() {
        for service in variant.docs.iter().filter(|d| d.kind() == "Service") {
            let what = format!("{}: Service {}", service.file, service.name());
            let selector = service.yaml["spec"]["selector"]
                .as_hash()
                .unwrap_or_else(|| panic!("{what}: no selector"));
            let pods: Vec<&Doc> = variant
                .workloads()
                .filter(|w| {
                    selector
                        .iter()
                        .all(|(k, v)| w.template()["metadata"]["labels"][k.as_str().unwrap()] == *v)
                })
                .collect();
            assert!(
                !pods.is_empty(),
                "{what}: its selector matches no pod of {}",
                variant.name
            );
            let declared: Vec<(String, i64)> = pods
                .iter()
                .flat_map(|w| w.containers())
                .flat_map(container_ports)
                .collect();
            for port in list(&service.yaml["spec"]["ports"]) {
                let target = &port["targetPort"];
                let found = match target {
                    Yaml::String(name) => declared.iter().any(|(n, _)| n == name),
                    Yaml::Integer(number) => declared.iter().any(|(_, p)| p == number),
                    Yaml::BadValue => declared
                        .iter()
                        .any(|(_, p)| Some(*p) == port["port"].as_i64()),
                    other => panic!("{what}: targetPort {other:?}"),
                };
                assert!(
                    found,
                    "{what}: targetPort {target:?} is no port its pods declare: {declared:?}"
                );
            }
        }
    }
}

#[test]
fn the_cluster_names_every_etcd_member_and_its_client_port() {
    let variants = variants();
    let cluster = variants.iter().find(|v| v.name == "cluster").unwrap();
    let etcd = cluster.one("StatefulSet", "etcd");
    let service_name = str_at(&etcd.yaml["spec"], "serviceName");
    let service = cluster.one("Service", service_name);
    assert_eq!(
        service.yaml["spec"]["clusterIP"].as_str(),
        Some("None"),
        "{}: the members' names (etcd-0.{service_name}) come from a headless Service",
        service.file
    );
    assert_eq!(
        service.yaml["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true),
        "{}: members not yet ready must resolve, or they never form a quorum",
        service.file
    );
    assert_eq!(
        etcd.yaml["spec"]["podManagementPolicy"].as_str(),
        Some("Parallel"),
        "{}: etcd-0 cannot be ready before the others start",
        etcd.file
    );
    let container = etcd.containers()[0];
    let port = |name: &str| {
        container_ports(container)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{}: etcd declares no {name} port", etcd.file))
            .1
    };
    let members: Vec<String> = (0..etcd.replicas())
        .map(|i| format!("{}-{i}.{service_name}", etcd.name()))
        .collect();

    let initial_cluster = list(&container["args"])
        .into_iter()
        .filter_map(|a| a.as_str()?.strip_prefix("--initial-cluster="))
        .next()
        .unwrap_or_else(|| panic!("{}: no --initial-cluster=", etcd.file));
    let expected: Vec<String> = (0..etcd.replicas())
        .map(|i| {
            format!(
                "{}-{i}=http://{}:{}",
                etcd.name(),
                members[i as usize],
                port("peer")
            )
        })
        .collect();
    assert_eq!(
        initial_cluster.split(',').collect::<Vec<_>>(),
        expected,
        "{}",
        etcd.file
    );

    let expected: BTreeSet<String> = members
        .iter()
        .map(|m| format!("http://{m}:{}", port("client")))
        .collect();
    for seaportd in seaportds().iter().filter(|s| s.variant == "cluster") {
        assert_eq!(seaportd.text("store"), "etcd", "{}", seaportd.what);
        let endpoints: BTreeSet<String> = seaportd
            .get("etcd-endpoints")
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect();
        assert_eq!(endpoints, expected, "{}: --etcd-endpoints", seaportd.what);
    }
}

/// `runAsNonRoot` and friends, at the container's level or the pod's.
fn security<'a>(workload: &'a Doc, container: &'a Yaml, key: &str) -> &'a Yaml {
    match &container["securityContext"][key] {
        Yaml::BadValue => &workload.template()["spec"]["securityContext"][key],
        value => value,
    }
}

#[test]
fn containers_run_unprivileged_on_a_read_only_root() {
    let image_user = dockerfile().user;
    for variant in variants() {
        for workload in variant.workloads() {
            for container in workload.containers() {
                let what = format!(
                    "{}: {} container {}",
                    workload.file,
                    workload.name(),
                    str_at(container, "name")
                );
                for (key, expected) in [
                    ("runAsNonRoot", true),
                    ("readOnlyRootFilesystem", true),
                    ("allowPrivilegeEscalation", false),
                ] {
                    assert_eq!(
                        security(workload, container, key).as_bool(),
                        Some(expected),
                        "{what}: {key}"
                    );
                }
                if is_seaport_image(str_at(container, "image")) {
                    assert_eq!(
                        security(workload, container, "runAsUser").as_i64(),
                        Some(image_user),
                        "{what}: the image's USER"
                    );
                    assert_eq!(
                        str_at(container, "image"),
                        format!("seaport:{}", env!("CARGO_PKG_VERSION")),
                        "{what}: the image deploy/README.md builds"
                    );
                }
            }
        }
    }
}

/// What the Dockerfile's last stage says about running seaportd.
struct Dockerfile {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    expose: BTreeSet<u16>,
    user: i64,
    /// Where COPY puts seaportd.
    copied_to: String,
}

fn dockerfile() -> Dockerfile {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let exec_form = |rest: &str| -> Vec<String> {
        serde_json::from_str(rest)
            .unwrap_or_else(|e| panic!("Dockerfile: write {rest} in exec form, a JSON array: {e}"))
    };
    let mut file = Dockerfile {
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        env: Vec::new(),
        expose: BTreeSet::new(),
        user: 0,
        copied_to: String::new(),
    };
    for line in &lines[last_from + 1..] {
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        match instruction {
            "ENTRYPOINT" => file.entrypoint = exec_form(rest),
            "CMD" => file.cmd = exec_form(rest),
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("Dockerfile: write ENV as KEY=VALUE: {pair}"));
                    file.env.push((k.to_string(), v.to_string()));
                }
            }
            "EXPOSE" => {
                for port in rest.split_whitespace() {
                    file.expose
                        .insert(port.trim_end_matches("/tcp").parse().unwrap());
                }
            }
            "USER" => {
                let uid = rest.split(':').next().unwrap();
                file.user = uid.parse().unwrap_or_else(|_| {
                    panic!("Dockerfile: USER by number, so runAsNonRoot can check it: {rest}")
                });
            }
            "COPY" if rest.contains("/seaportd") => {
                let to = rest.split_whitespace().last().unwrap();
                file.copied_to = format!("{}/seaportd", to.trim_end_matches('/'));
            }
            _ => {}
        }
    }
    file
}

#[test]
fn the_image_exposes_the_ports_seaportd_listens_on() {
    let file = dockerfile();
    assert_ne!(file.user, 0, "Dockerfile: the image runs as root");
    assert_eq!(
        file.entrypoint.first(),
        Some(&file.copied_to),
        "Dockerfile: ENTRYPOINT is the seaportd COPY puts in the image"
    );
    assert_known("Dockerfile", &file.env);
    let args: Vec<String> = file.entrypoint[1..]
        .iter()
        .chain(&file.cmd)
        .cloned()
        .collect();
    let config = print_config("the Dockerfile", &args, &file.env);
    let addr = |key: &str| -> SocketAddr {
        config
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("Dockerfile: the image runs seaportd without {key}"))
            .parse()
            .unwrap()
    };
    let (listen, admin) = (addr("listen"), addr("admin-listen"));
    assert!(
        listen.ip().is_unspecified() && admin.ip().is_unspecified(),
        "Dockerfile: in a container seaportd must listen beyond loopback: {listen}, {admin}"
    );
    assert_eq!(
        file.expose,
        BTreeSet::from([listen.port(), admin.port()]),
        "Dockerfile: EXPOSE"
    );
    assert_eq!(
        config.get("log-format").and_then(|v| v.as_str()),
        Some("json")
    );
}
