//! High availability (docs/kubernetes.md), run for real on one machine: three nats-server processes
//! started from the nats.conf and the environment the Helm chart renders in cluster mode
//! (tests/chart/fixtures/cluster with route authorization, cluster-tls with route TLS, kept
//! fresh by tests/chart/run.sh) join into one cluster over authenticated routes on 127.0.0.1,
//! each with its own auth file, pid file and bosh-nats-sync sidecar (the chart's rendered
//! sidecar config, reloading by SIGHUP) against one simulated director.
//! Only what cannot be shared on one machine is changed (see [`node_config`]), so the tests
//! show that the chart's cluster block forms a cluster, that every node admits the director's
//! agents under the same permissions, that messages cross the routes, that the cluster
//! survives one node and its sidecar dying and coming back from the BOSH placeholder, that a
//! rogue server without the route credentials or certificate is refused by every node and
//! reads nothing (and joins once the security is removed, so those tests can fail), and that a
//! node leaving in lame duck (the chart's preStop hook) hands its agents to the others. A pod
//! that comes back turns ready only once a pass has read the director's agents.
//!
//! The chart's callout mode (tests/chart/fixtures/callout-cluster) runs the same way, its init
//! steps as rendered (the issuer seed copied out of its Secret, `bosh-nats-sync init`): every
//! sidecar answers in the one queue group, a node whose sidecar is gone still admits agents
//! (another node's sidecar answers), and a fresh pod's sidecar stays out of the queue group
//! until its admitted set is loaded.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use sim::director::{DirectorConfig, DirectorSim, Vm};
use sim::nats::{NatsClient, Permission};
use sim::pki::{CertFiles, DIRECTOR_CN, HM_CN, Pki, agent_cn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const AGENT: &str = "c1a55e7a-0000-4000-8000-0000000000a1";
/// Created while node 1 is down.
const NEW_AGENT: &str = "c1a55e7a-0000-4000-8000-0000000000a2";
const PASSWORD: &str = "pw-Cluster-Sekr1t";
const PLACEHOLDER: &str = "{authorization: {token: f0oBar}}";
/// How long a cluster may take to form, an agent to be admitted, a server to start.
const WITHIN: Duration = Duration::from_secs(30);

/// The rendered cluster: `cluster` (route authorization, the chart's default) or `cluster-tls`.
fn fixture_dir(fixture: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/chart/fixtures")
        .join(fixture)
}

/// The route credentials the test puts in the Secret the chart's environment refers to (the
/// chart makes its own password at install; any value of letters and digits behaves alike).
const ROUTE_USER: &str = "route";
const ROUTE_PASSWORD: &str = "RoutePw0Sekr1t9x";

/// The value of `key` in the Secret `name`, as the test provides it: the route credentials.
fn secret_value(name: &str, key: &str) -> String {
    match key {
        "user" => ROUTE_USER.to_owned(),
        "password" => ROUTE_PASSWORD.to_owned(),
        _ => panic!("the test provides no key {key} of Secret {name}"),
    }
}

/// A container's environment as Kubernetes builds it from the rendered entries: a Secret's key
/// (`valueFrom.secretKeyRef`) or a literal `value` in which `$(NAME)` is replaced by a variable
/// defined before it (`$$` escapes `$`). Panics naming the variable when a reference is
/// undefined, as the kubelet would leave it unexpanded and the server would not start.
fn kubernetes_env(entries: &Json) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for entry in entries.as_array().expect("an env list") {
        let name = entry["name"].as_str().expect("an env name").to_owned();
        let value = if let Some(reference) = entry["valueFrom"]["secretKeyRef"].as_object() {
            secret_value(
                reference["name"].as_str().expect("a Secret name"),
                reference["key"].as_str().expect("a Secret key"),
            )
        } else {
            let literal = entry["value"]
                .as_str()
                .unwrap_or_else(|| panic!("env {name}: neither a value nor a Secret key"));
            let mut out = String::new();
            let mut rest = literal;
            while let Some(at) = rest.find('$') {
                out.push_str(&rest[..at]);
                rest = &rest[at..];
                if let Some(tail) = rest.strip_prefix("$$") {
                    out.push('$');
                    rest = tail;
                } else if let Some(tail) = rest.strip_prefix("$(") {
                    let end = tail
                        .find(')')
                        .unwrap_or_else(|| panic!("env {name}: unclosed $( in {literal}"));
                    let var = &tail[..end];
                    let (_, v) = env
                        .iter()
                        .find(|(n, _)| n == var)
                        .unwrap_or_else(|| panic!("env {name}: $({var}) is not defined before it"));
                    out.push_str(v);
                    rest = &tail[end + 1..];
                } else {
                    out.push('$');
                    rest = &rest[1..];
                }
            }
            out.push_str(rest);
            out
        };
        env.push((name, value));
    }
    env
}

/// The service's certificate in the callout fixture's Secret: a subject of its own.
const SERVICE_CN: &str = "default.nats-sync.bosh-internal";

/// What the chart rendered for the cluster: the pod layout (mounts, init command, nats-server
/// command, sidecar arguments) and what names the routes (the StatefulSet's pods, the DNS
/// suffix of the headless Service, the route port).
struct Layout(Json);

impl Layout {
    fn load(fixture: &str) -> Layout {
        let path = fixture_dir(fixture).join("layout.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (tests/chart/run.sh --update-fixture)",
                path.display()
            )
        });
        let layout = Layout(serde_json::from_str(&text).expect("layout.json is JSON"));
        assert!(
            layout.pods().len() >= 3,
            "the cluster fixture renders {} pods; this test needs 3",
            layout.pods().len()
        );
        layout
    }

    fn mount(&self, container: &str, volume: &str) -> String {
        self.0["mounts"][container][volume]
            .as_str()
            .unwrap_or_else(|| panic!("layout.json: {container} mounts no volume {volume}"))
            .to_owned()
    }

    /// Every mount path of every container.
    fn mounts(&self) -> BTreeSet<String> {
        let mounts = self.0["mounts"]
            .as_object()
            .expect("layout.json has mounts");
        mounts
            .values()
            .flat_map(|m| m.as_object().expect("mounts of a container").values())
            .map(|p| p.as_str().expect("a mount path").to_owned())
            .collect()
    }

    fn strings(&self, key: &str) -> Vec<String> {
        self.0[key]
            .as_array()
            .unwrap_or_else(|| panic!("layout.json has no list {key}"))
            .iter()
            .map(|s| s.as_str().expect("a string").to_owned())
            .collect()
    }

    fn pods(&self) -> Vec<String> {
        self.0["cluster"]["pods"]
            .as_array()
            .expect("layout.json has cluster.pods: is this the cluster fixture?")
            .iter()
            .map(|p| p.as_str().expect("a pod name").to_owned())
            .collect()
    }

    fn dns_suffix(&self) -> &str {
        self.0["cluster"]["dns_suffix"]
            .as_str()
            .expect("layout.json has cluster.dns_suffix")
    }

    fn route_port(&self) -> u16 {
        let port = self.0["cluster"]["port"]
            .as_u64()
            .expect("layout.json has cluster.port");
        u16::try_from(port).expect("a port")
    }
}

/// One node's ports on 127.0.0.1: what differs between the pods' identical configurations
/// once they share one machine's loopback.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    monitoring: u16,
    route: u16,
    http: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            client: common::free_port(),
            monitoring: common::free_port(),
            route: common::free_port(),
            http: common::free_port(),
        }
    }
}

/// Where the parser of [`node_config`] is in the rendered file.
#[derive(Debug, PartialEq, Eq)]
enum Section {
    Top,
    Cluster,
    /// Inside a block of the cluster block (`authorization { … }`, `tls { … }`); `true` when
    /// the test removes it.
    ClusterBlock(bool),
    Routes,
}

/// How a node runs the rendered route security.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// As the chart renders it.
    AsRendered,
    /// The cluster block's `authorization` and `tls` blocks removed: routes anyone may join.
    /// Only to show that the rogue-server tests can fail.
    Removed,
    /// Route TLS without `verify_cert_and_check_known_urls`: any certificate of the cluster CA
    /// is a route. Only to show why the chart sets it.
    AnyCertificateOfTheCa,
}

/// The chart's rendered nats.conf and the nats container's environment as node `index` of a
/// cluster on this machine runs them. Every pod of the StatefulSet gets the same file and the
/// same environment; on one machine only this must differ:
///
/// - quoted absolute paths inside the pod's mounts (the pid file, the TLS files, the route TLS
///   files) move under the node's `root`; the relative `include` of the auth file stays as
///   rendered (it resolves against the config's directory, which moved too);
/// - the top-level `listen` and `http` become this node's client and monitoring ports on
///   127.0.0.1;
/// - in the `cluster { … }` block, `listen` becomes this node's route port on 127.0.0.1. The
///   routes stay as rendered (`$NATS_ROUTE_<i>`, references to the environment); in the
///   environment, built from the rendered entries as Kubernetes builds it (Secret keys from
///   [`secret_value`], `$(VAR)` expanded), each route URL's `<pod><dns suffix>:<route port>`
///   becomes `127.0.0.1:<the route port of that pod's node>` (`localhost:…` with route TLS,
///   whose certificate names it), credentials untouched.
///
/// Everything else (the cluster's name, `no_advertise`, route `authorization` and `tls`, lame
/// duck, TLS with `verify_and_map`, comments) is kept line for line, unless `security` is
/// [`Security::Removed`].
///
/// Panics, quoting the file, when it is not shaped as expected: exactly one top-level
/// `listen` and `http`, one `cluster` block closed by `}` with one `listen` of the layout's
/// route port and one `routes: [` list whose entries are environment references whose URLs
/// name each pod of the layout exactly once — so a chart that stops rendering a route to every
/// peer fails here.
fn node_config(
    rendered: &str,
    layout: &Layout,
    root: &Path,
    ports: &[Ports],
    index: usize,
    security: Security,
) -> (String, Vec<(String, String)>) {
    let pods = layout.pods();
    assert_eq!(pods.len(), ports.len(), "one node per rendered pod");
    let mounts = layout.mounts();
    let move_paths = |line: &str| {
        mounts.iter().fold(line.to_owned(), |line, m| {
            let moved = root.join(m.trim_start_matches('/'));
            line.replace(&format!("\"{m}/"), &format!("\"{}/", moved.display()))
        })
    };
    let me = ports[index];
    let (mut top_listen, mut top_http, mut blocks, mut cluster_listen) = (0, 0, 0, 0);
    let mut route_vars = Vec::new();
    let mut section = Section::Top;
    let mut out = Vec::new();
    for line in rendered.lines() {
        let trimmed = line.trim();
        match section {
            Section::Top if line == "cluster {" => {
                blocks += 1;
                section = Section::Cluster;
                out.push(line.to_owned());
            }
            Section::Top if line.starts_with("listen:") => {
                top_listen += 1;
                out.push(format!("listen: \"127.0.0.1:{}\"", me.client));
            }
            Section::Top if line.starts_with("http:") => {
                top_http += 1;
                out.push(format!("http: \"127.0.0.1:{}\"", me.monitoring));
            }
            Section::Top => out.push(move_paths(line)),
            Section::Cluster if line == "}" => {
                section = Section::Top;
                out.push(line.to_owned());
            }
            Section::Cluster if trimmed.starts_with("listen:") => {
                cluster_listen += 1;
                let want = format!("listen: \"0.0.0.0:{}\"", layout.route_port());
                if trimmed != want {
                    unexpected_conf(
                        rendered,
                        &format!("the cluster's `{trimmed}` is not `{want}`"),
                    );
                }
                out.push(format!("  listen: \"127.0.0.1:{}\"", me.route));
            }
            Section::Cluster if trimmed.ends_with('{') => {
                let removed = security == Security::Removed
                    && (trimmed.starts_with("authorization") || trimmed.starts_with("tls"));
                section = Section::ClusterBlock(removed);
                if !removed {
                    out.push(line.to_owned());
                }
            }
            Section::Cluster if trimmed == "routes: [" => {
                section = Section::Routes;
                out.push(line.to_owned());
            }
            Section::Cluster if trimmed.starts_with("routes") => {
                unexpected_conf(
                    rendered,
                    &format!(
                        "`{trimmed}`: the routes must open with `routes: [` on a line of its own"
                    ),
                );
            }
            Section::Cluster => out.push(line.to_owned()),
            Section::ClusterBlock(removed) => {
                if trimmed == "}" {
                    section = Section::Cluster;
                }
                let dropped = security == Security::AnyCertificateOfTheCa
                    && trimmed.starts_with("verify_cert_and_check_known_urls:");
                if !removed && !dropped {
                    out.push(move_paths(line));
                }
            }
            Section::Routes if trimmed == "]" => {
                section = Section::Cluster;
                out.push(line.to_owned());
            }
            Section::Routes => {
                let var = trimmed.strip_prefix('$').unwrap_or_else(|| {
                    unexpected_conf(
                        rendered,
                        &format!(
                            "route line `{line}` is not one `$NAME` reference to the environment"
                        ),
                    )
                });
                route_vars.push(var.to_owned());
                out.push(line.to_owned());
            }
        }
    }
    if section != Section::Top {
        unexpected_conf(
            rendered,
            &format!("the file ends inside the cluster block ({section:?})"),
        );
    }
    for (what, count) in [
        ("top-level listen", top_listen),
        ("top-level http", top_http),
        ("cluster block", blocks),
        ("cluster listen", cluster_listen),
    ] {
        if count != 1 {
            unexpected_conf(rendered, &format!("want one {what}, found {count}"));
        }
    }
    // The environment, and in it each route's peer. With route TLS the peer is dialled by a
    // name its certificate holds (a DNS name, as the pods' are), otherwise by address.
    let host = if layout.0["mounts"]["nats"]["cluster-tls"].is_string() {
        "localhost"
    } else {
        "127.0.0.1"
    };
    let mut env = kubernetes_env(&layout.0["nats_env"]);
    let mut routed = Vec::new();
    for var in &route_vars {
        let (_, value) = env
            .iter_mut()
            .find(|(name, _)| name == var)
            .unwrap_or_else(|| {
                unexpected_conf(
                    rendered,
                    &format!("route ${var} is not in the nats container's environment"),
                )
            });
        let peer = pods
            .iter()
            .position(|pod| {
                value.contains(&format!(
                    "{pod}{}:{}\"",
                    layout.dns_suffix(),
                    layout.route_port()
                ))
            })
            .unwrap_or_else(|| {
                unexpected_conf(
                    rendered,
                    &format!(
                        "route ${var} ({}) names none of the pods {pods:?} as <pod>{}:{}",
                        value.replace(ROUTE_PASSWORD, "<password>"),
                        layout.dns_suffix(),
                        layout.route_port()
                    ),
                )
            });
        *value = value.replace(
            &format!(
                "{}{}:{}",
                pods[peer],
                layout.dns_suffix(),
                layout.route_port()
            ),
            &format!("{host}:{}", ports[peer].route),
        );
        routed.push(peer);
    }
    let mut sorted = routed.clone();
    sorted.sort_unstable();
    if sorted != (0..pods.len()).collect::<Vec<_>>() {
        unexpected_conf(
            rendered,
            &format!("the routes name pods {routed:?} of {pods:?}: want every pod exactly once"),
        );
    }
    (out.join("\n") + "\n", env)
}

/// Fails the test: the rendered nats.conf is not shaped as [`node_config`] expects.
fn unexpected_conf(rendered: &str, why: &str) -> ! {
    panic!(
        "the chart's cluster nats.conf (tests/chart/fixtures/cluster) is not what tests/cluster.rs \
         expects: {why}\n--- nats.conf:\n{rendered}"
    )
}

/// The chart's rendered sidecar config for one node: paths inside the pod's mounts move under
/// the node's root; the director's URL, the monitoring URL and the HTTP listen address take
/// this machine's values. Everything else — the watch, damping, SIGHUP reloads (no
/// nats-server executable) — stays as the chart renders it.
fn node_sync_config(
    rendered: &str,
    layout: &Layout,
    root: &Path,
    ports: Ports,
    director: &str,
) -> String {
    let mut config: Yaml =
        serde_yaml_ng::from_str(rendered).expect("the rendered config.yml is YAML");
    assert!(
        config["nats"].get("nats_server_executable").is_none(),
        "the chart's sidecar reloads by SIGHUP"
    );
    let mounts = layout.mounts();
    fn walk(value: &mut Yaml, mounts: &BTreeSet<String>, root: &Path) {
        match value {
            Yaml::String(s) if mounts.iter().any(|m| s.starts_with(&format!("{m}/"))) => {
                *s = root.join(s.trim_start_matches('/')).display().to_string();
            }
            Yaml::Mapping(m) => m.values_mut().for_each(|v| walk(v, mounts, root)),
            Yaml::Sequence(seq) => seq.iter_mut().for_each(|v| walk(v, mounts, root)),
            _ => {}
        }
    }
    walk(&mut config, &mounts, root);
    let mut set = |section: &str, key: &str, value: String| {
        let slot = config
            .get_mut(section)
            .and_then(|s| s.get_mut(key))
            .unwrap_or_else(|| panic!("the rendered sidecar config has no {section}.{key}"));
        *slot = Yaml::String(value);
    };
    set("director", "url", director.to_owned());
    set(
        "nats",
        "monitoring_url",
        format!("http://127.0.0.1:{}", ports.monitoring),
    );
    set("http", "listen", format!("127.0.0.1:{}", ports.http));
    if let Some(callout) = config["nats"].get_mut("callout") {
        let url = callout
            .get_mut("url")
            .expect("the rendered callout config has nats.callout.url");
        assert_eq!(
            url.as_str(),
            Some("tls://127.0.0.1:4222"),
            "the chart's sidecar reaches its own nats-server on the pod's loopback"
        );
        *url = Yaml::String(format!("tls://127.0.0.1:{}", ports.client));
    }
    serde_yaml_ng::to_string(&config).expect("YAML")
}

/// `GET path` on 127.0.0.1:port: the status code and the body, or None while nothing listens.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A child process with its output in a file; killed when dropped.
struct Process {
    name: String,
    child: Mutex<Option<Child>>,
    log: PathBuf,
}

impl Process {
    fn spawn(name: String, argv: &[String], log: PathBuf, env: &[(&str, &str)]) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({argv:?}): {e}"));
        Process {
            name,
            child: Mutex::new(Some(child)),
            log,
        }
    }

    /// "running", "exited: …" (on its own) or "killed by the test", for messages.
    fn state(&self) -> String {
        let mut guard = self.child.lock().unwrap();
        match guard.as_mut() {
            None => "killed by the test".to_owned(),
            Some(child) => match child.try_wait().unwrap() {
                None => "running".to_owned(),
                Some(status) => format!("exited: {status}"),
            },
        }
    }

    /// Sends SIGTERM, as the kubelet does once a container's preStop hook has returned.
    fn terminate(&self) {
        let pid = self.child.lock().unwrap().as_ref().and_then(Child::id);
        let pid = pid.unwrap_or_else(|| panic!("{} is not running", self.name));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap_or_else(|e| panic!("SIGTERM to {}: {e}", self.name));
    }

    async fn kill(&self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut child) = child {
            child.kill().await.unwrap();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- {} ({}), last lines of {}:\n{}",
            self.name,
            self.state(),
            self.log.display(),
            lines[lines.len().saturating_sub(12)..].join("\n")
        )
    }
}

/// One pod of the StatefulSet on this machine: its mounts under `root`, its ports, its
/// nats-server and its sidecar.
struct Node {
    index: usize,
    root: PathBuf,
    ports: Ports,
    auth_file: PathBuf,
    /// The nats container's environment (route credentials and URLs).
    env: Vec<(String, String)>,
    nats: Option<Process>,
    sync: Option<Process>,
}

/// The test's world: the director, the PKI and the nodes.
struct World {
    dir: tempfile::TempDir,
    layout: Layout,
    pki: Pki,
    ca: PathBuf,
    director: DirectorSim,
    nodes: Vec<Node>,
    /// The cluster's name in the rendered nats.conf.
    cluster_name: String,
    /// Callout mode: what the issuer Secret holds (the same for every pod).
    issuer: Option<String>,
}

impl World {
    async fn start(fixture: &str, security: Security) -> World {
        let layout = Layout::load(fixture);
        let callout = layout.0["mounts"]["issuer-seed"].is_object();
        // The chart's issuer Secret: 32 random bytes in base64, as its template makes them.
        let issuer = callout.then(|| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
        });
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate().unwrap();
        // The route TLS Secret's CA is the clients' CA, which the chart allows: then every
        // agent holds a certificate of the cluster CA.
        let route_cert = pki.ca.route_cert().unwrap();
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).unwrap();
        let pki_files = pki.write_to(&pki_dir).unwrap();
        let rendered_sync =
            std::fs::read_to_string(fixture_dir(fixture).join("sync-config/config.yml")).unwrap();
        let user: Yaml = serde_yaml_ng::from_str(&rendered_sync).unwrap();
        let user = user["director"]["user"]
            .as_str()
            .expect("the cluster fixture uses basic auth")
            .to_owned();
        let director = DirectorSim::start(
            DirectorConfig::basic(&user, PASSWORD).with_tls(pki.server_config().unwrap()),
        )
        .await
        .unwrap();
        let rendered_nats =
            std::fs::read_to_string(fixture_dir(fixture).join("nats-config/nats.conf")).unwrap();
        let cluster_name = rendered_nats
            .lines()
            .find_map(|l| l.strip_prefix("  name: "))
            .expect("the cluster block names the cluster")
            .trim_matches('"')
            .to_owned();
        let ports: Vec<Ports> = layout.pods().iter().map(|_| Ports::free()).collect();
        let mut nodes = Vec::new();
        for (index, ports_of) in ports.iter().enumerate() {
            let root = dir.path().join(format!("node-{index}"));
            // The ConfigMaps where the pod mounts them, then the node's own changes.
            for (volume, container) in [("nats-config", "nats"), ("sync-config", "bosh-nats-sync")]
            {
                let target = root.join(layout.mount(container, volume).trim_start_matches('/'));
                std::fs::create_dir_all(&target).unwrap();
                for entry in std::fs::read_dir(fixture_dir(fixture).join(volume)).unwrap() {
                    let entry = entry.unwrap();
                    std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
                }
            }
            let conf_dir = root.join(layout.mount("nats", "nats-config").trim_start_matches('/'));
            let (conf, env) = node_config(&rendered_nats, &layout, &root, &ports, index, security);
            std::fs::write(conf_dir.join("nats.conf"), conf).unwrap();
            // The route TLS Secret, when the chart mounts one.
            if let Some(dir) = layout.0["mounts"]["nats"]["cluster-tls"].as_str() {
                let dir = root.join(dir.trim_start_matches('/'));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("tls.crt"), route_cert.cert_pem()).unwrap();
                std::fs::write(dir.join("tls.key"), route_cert.key_pem()).unwrap();
                std::fs::write(dir.join("ca.crt"), pki.ca.cert_pem()).unwrap();
            }
            // The TLS Secret.
            let tls_dir = root.join(layout.mount("nats", "nats-tls").trim_start_matches('/'));
            std::fs::create_dir_all(&tls_dir).unwrap();
            std::fs::copy(&pki_files.server.cert, tls_dir.join("tls.crt")).unwrap();
            std::fs::copy(&pki_files.server.key, tls_dir.join("tls.key")).unwrap();
            std::fs::copy(&pki_files.ca_cert, tls_dir.join("ca.crt")).unwrap();
            if let Some(issuer) = &issuer {
                // Callout mode's Secrets: the service's certificate, the server Secret's CA,
                // and the issuer seed as the kubelet mounts it under fsGroup (0440).
                let mounted = |container: &str, volume: &str| {
                    let dir = root.join(layout.mount(container, volume).trim_start_matches('/'));
                    std::fs::create_dir_all(&dir).unwrap();
                    dir
                };
                let service = pki.client(SERVICE_CN).unwrap();
                let tls = mounted("bosh-nats-sync", "callout-tls");
                std::fs::write(tls.join("tls.crt"), service.cert_pem()).unwrap();
                std::fs::write(tls.join("tls.key"), service.key_pem()).unwrap();
                let ca = mounted("bosh-nats-sync", "nats-ca");
                std::fs::copy(&pki_files.ca_cert, ca.join("ca.crt")).unwrap();
                let source = mounted("issuer-seed", "callout-issuer").join("issuer.seed");
                std::fs::write(&source, issuer).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o440)).unwrap();
                mounted("bosh-nats-sync", "callout-keys");
            }
            let sync_dir = root.join(
                layout
                    .mount("bosh-nats-sync", "sync-config")
                    .trim_start_matches('/'),
            );
            let config =
                node_sync_config(&rendered_sync, &layout, &root, *ports_of, &director.url());
            let parsed: Yaml = serde_yaml_ng::from_str(&config).unwrap();
            let ca_path = parsed["director"]["director_ca_cert"]
                .as_str()
                .expect("the cluster fixture sets director.caCert");
            std::fs::write(ca_path, pki.ca.cert_pem()).unwrap();
            std::fs::write(sync_dir.join("config.yml"), &config).unwrap();
            let auth_file = PathBuf::from(parsed["nats"]["config_file_path"].as_str().unwrap());
            nodes.push(Node {
                index,
                root,
                ports: *ports_of,
                auth_file,
                env,
                nats: None,
                sync: None,
            });
        }
        World {
            dir,
            layout,
            pki,
            ca: pki_files.ca_cert,
            director,
            nodes,
            cluster_name,
            issuer,
        }
    }

    /// Everything a failure message needs: each process's state and the end of its log.
    fn diagnostics(&self) -> String {
        self.nodes
            .iter()
            .flat_map(|n| [&n.nats, &n.sync])
            .flatten()
            .map(Process::tail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls `check` until it is `Ok`, at most `within`; then fails with `what`, the last
    /// error and every process's log.
    async fn wait<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let start = Instant::now();
        if let Err(last) = common::poll(WITHIN, &mut check).await {
            panic!(
                "timed out after {WITHIN:?} waiting for {what}; last: {last}\n{}",
                self.diagnostics()
            );
        }
        eprintln!("{:>7.3} s until {what}", start.elapsed().as_secs_f64());
    }

    /// The init container: a fresh state volume (an emptyDir of a new pod) and the placeholder
    /// written by the chart's init command.
    fn init(&self, index: usize) {
        let node = &self.nodes[index];
        let state = node
            .root
            .join(self.layout.mount("nats", "state").trim_start_matches('/'));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).unwrap();
        let env: Vec<(String, String)> = self.layout.0["init_env"]
            .as_object()
            .expect("layout.json has init_env")
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().expect("a string");
                (
                    k.clone(),
                    node.root
                        .join(v.trim_start_matches('/'))
                        .display()
                        .to_string(),
                )
            })
            .chain(kubernetes_env(&self.layout.0["init_secret_env"]))
            .collect();
        let init = self.layout.strings("init_command");
        let status = std::process::Command::new(&init[0])
            .args(&init[1..])
            .envs(env)
            .status()
            .unwrap_or_else(|e| panic!("cannot run the init command {init:?}: {e}"));
        assert!(
            status.success(),
            "node {index}: the init command failed: {status}"
        );
        assert_eq!(
            std::fs::read_to_string(&node.auth_file).unwrap().trim(),
            PLACEHOLDER,
            "node {index}: the init command writes the BOSH placeholder"
        );
        if self.issuer.is_some() {
            self.init_callout(index);
        }
    }

    /// Callout mode's init steps after the placeholder's, in the rendered order and as
    /// rendered: the shell step that copies the issuer seed out of its Secret, then
    /// `bosh-nats-sync … init`. The copy is
    /// owner-only (the program refuses the Secret's group-readable file), and the auth file
    /// then holds the callout block.
    fn init_callout(&self, index: usize) {
        let node = &self.nodes[index];
        let keys = node.root.join(
            self.layout
                .mount("issuer-seed", "callout-keys")
                .trim_start_matches('/'),
        );
        let _ = std::fs::remove_dir_all(&keys);
        std::fs::create_dir_all(&keys).unwrap();
        let steps = self.layout.0["init_containers"]
            .as_array()
            .expect("layout.json has init_containers");
        let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
        assert_eq!(
            names,
            ["auth-placeholder", "issuer-seed", "callout-init"],
            "the callout pod's init steps"
        );
        for step in &steps[1..] {
            let strings = |key: &str| -> Vec<String> {
                step[key]
                    .as_array()
                    .unwrap_or_else(|| panic!("init step {}: no {key}", step["name"]))
                    .iter()
                    .map(|a| self.moved(&node.root, a.as_str().expect("a string")))
                    .collect()
            };
            let argv = if step.get("command").is_some() {
                strings("command")
            } else {
                let mut argv = vec![common::binary().to_owned()];
                argv.extend(strings("args"));
                argv
            };
            let env: Vec<(String, String)> = step["env"]
                .as_object()
                .expect("an init step's env")
                .iter()
                .map(|(k, v)| (k.clone(), self.moved(&node.root, v.as_str().unwrap())))
                .collect();
            let out = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .envs(env)
                .output()
                .unwrap_or_else(|e| panic!("cannot run the init step {argv:?}: {e}"));
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success(),
                "node {index}: init step {} failed: {}\n{text}",
                step["name"],
                out.status
            );
            assert!(
                !text.contains(self.issuer.as_deref().unwrap()),
                "the seed reached an init step's output"
            );
        }
        use std::os::unix::fs::PermissionsExt;
        let seed = keys.join("issuer.seed");
        let mode = std::fs::metadata(&seed).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "node {index}: the seed's copy is owner-only");
        let auth: Json = serde_json::from_str(&std::fs::read_to_string(&node.auth_file).unwrap())
            .expect("init writes JSON");
        assert!(
            auth["authorization"]["auth_callout"]["issuer"]
                .as_str()
                .is_some_and(|i| i.starts_with('A')),
            "node {index}: init wrote the callout block: {auth}"
        );
    }

    /// The `/metrics` sample `series` of node `index`'s sidecar (0 while it does not answer).
    async fn sample(&self, index: usize, series: &str) -> f64 {
        let Some((200, text)) = http_get(self.nodes[index].ports.http, "/metrics").await else {
            return 0.0;
        };
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Callout answers that admitted an agent, by node `index`'s sidecar.
    async fn allowed(&self, index: usize) -> f64 {
        self.sample(
            index,
            r#"bosh_nats_sync_callout_requests_total{result="allowed"}"#,
        )
        .await
    }

    /// Kills node `index`'s sidecar alone; its nats-server keeps running.
    async fn kill_sync(&mut self, index: usize) {
        if let Some(process) = self.nodes[index].sync.take() {
            process.kill().await;
        }
    }

    /// Callout answers that admitted an agent, by the sidecars of `nodes` together.
    async fn allowed_by(&self, nodes: &[usize]) -> f64 {
        let mut sum = 0.0;
        for &i in nodes {
            sum += self.allowed(i).await;
        }
        sum
    }

    /// Connects [`AGENT`] to each of `nodes` in turn until every sidecar of `answering` has
    /// admitted an agent (nats-server picks the member of the queue group that answers).
    async fn connect_until_answered(&self, nodes: &[usize], answering: &[usize]) {
        let mut round = 0;
        self.wait(
            &format!("the sidecars of nodes {answering:?} to answer"),
            || {
                let node = nodes[round % nodes.len()];
                round += 1;
                async move {
                    self.admitted(node, &agent_cn(AGENT)).await?;
                    let mut silent = Vec::new();
                    for &i in answering {
                        if self.allowed(i).await < 1.0 {
                            silent.push(i);
                        }
                    }
                    if silent.is_empty() {
                        Ok(())
                    } else {
                        Err(format!(
                            "after {round} connects, sidecars {silent:?} answered none"
                        ))
                    }
                }
            },
        )
        .await;
    }

    /// `/readyz` of node `index`'s sidecar: the status and the body, once it listens.
    async fn readyz(&self, index: usize) -> (u16, String) {
        let port = self.nodes[index].ports.http;
        let answer = common::poll(WITHIN, || async move {
            http_get(port, "/readyz")
                .await
                .ok_or_else(|| "not listening".to_owned())
        })
        .await;
        answer.unwrap_or_else(|e| {
            panic!(
                "node {index}'s sidecar never answered /readyz: {e}\n{}",
                self.diagnostics()
            )
        })
    }

    /// Starts node `index`'s nats-server as the pod's command runs it; waits for `/varz`.
    async fn start_nats(&mut self, index: usize) {
        let mut argv = self.layout.strings("nats_command");
        assert_eq!(argv[0], "nats-server", "the chart runs nats-server");
        argv[0] = common::nats_server_path().display().to_string();
        let root = self.nodes[index].root.clone();
        let argv: Vec<String> = argv.iter().map(|a| self.moved(&root, a)).collect();
        let log = self
            .dir
            .path()
            .join(format!("node-{index}-nats-server.log"));
        let env: Vec<(&str, &str)> = self.nodes[index]
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.nodes[index].nats = Some(Process::spawn(
            format!("node {index} nats-server"),
            &argv,
            log,
            &env,
        ));
        let port = self.nodes[index].ports.monitoring;
        self.wait(
            &format!("node {index}'s nats-server to serve /varz"),
            || async move {
                match http_get(port, "/varz").await {
                    Some((200, _)) => Ok(()),
                    other => Err(format!("/varz: {other:?}")),
                }
            },
        )
        .await;
    }

    /// Starts node `index`'s sidecar as the pod runs it (its own config, auth file, pid file).
    fn start_sync(&mut self, index: usize) {
        let root = self.nodes[index].root.clone();
        let mut argv = vec![common::binary().to_owned()];
        argv.extend(
            self.layout
                .strings("sidecar_args")
                .iter()
                .map(|a| self.moved(&root, a)),
        );
        let log = self
            .dir
            .path()
            .join(format!("node-{index}-bosh-nats-sync.log"));
        self.nodes[index].sync = Some(Process::spawn(
            format!("node {index} bosh-nats-sync"),
            &argv,
            log,
            &[(bosh_nats_sync::config::ENV_PASSWORD, PASSWORD)],
        ));
    }

    /// A pod path moved under `root` when it lies in one of the pod's mounts.
    fn moved(&self, root: &Path, arg: &str) -> String {
        if self
            .layout
            .mounts()
            .iter()
            .any(|m| arg.starts_with(&format!("{m}/")))
        {
            root.join(arg.trim_start_matches('/')).display().to_string()
        } else {
            arg.to_owned()
        }
    }

    /// Kills node `index`'s nats-server and sidecar (a pod lost with its node).
    async fn kill(&mut self, index: usize) {
        for process in [self.nodes[index].sync.take(), self.nodes[index].nats.take()]
            .into_iter()
            .flatten()
        {
            process.kill().await;
        }
    }

    /// Waits until the nodes in `up` form one cluster: each one's `/routez` lists routes to
    /// exactly the other nodes in `up` (by their `/varz` server ids). nats-server 2.10 and
    /// later pool several connections per peer, so peers are counted, not connections.
    /// Every pod as the StatefulSet starts them (Parallel): init, nats-server, then the
    /// sidecars; returns once the servers route to each other. The pods' indexes.
    async fn start_every_pod(&mut self) -> Vec<usize> {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        for &i in &all {
            self.init(i);
            self.start_nats(i).await;
        }
        for &i in &all {
            self.start_sync(i);
        }
        self.wait_cluster(&all).await;
        all
    }

    async fn wait_cluster(&self, up: &[usize]) {
        let ports: Vec<u16> = up.iter().map(|&i| self.nodes[i].ports.monitoring).collect();
        self.wait(&format!("nodes {up:?} to route to each other"), || {
            let ports = ports.clone();
            async move {
                let mut ids = Vec::new();
                for port in &ports {
                    let (_, varz) = http_get(*port, "/varz").await.ok_or("no /varz")?;
                    let varz: Json = serde_json::from_str(&varz).map_err(|e| e.to_string())?;
                    ids.push(varz["server_id"].as_str().ok_or("no server_id")?.to_owned());
                }
                for (i, port) in ports.iter().enumerate() {
                    let (_, routez) = http_get(*port, "/routez").await.ok_or("no /routez")?;
                    let routez: Json = serde_json::from_str(&routez).map_err(|e| e.to_string())?;
                    let num_routes = routez["num_routes"].as_u64().ok_or("no num_routes")?;
                    let peers: BTreeSet<&str> = routez["routes"]
                        .as_array()
                        .map(|r| r.iter().filter_map(|r| r["remote_id"].as_str()).collect())
                        .unwrap_or_default();
                    let want: BTreeSet<&str> =
                        ids.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, id)| id.as_str()).collect();
                    if peers != want || num_routes < want.len() as u64 {
                        return Err(format!(
                            "the server on monitoring port {port}: num_routes {num_routes}, peers {peers:?}, want {want:?}"
                        ));
                    }
                }
                Ok(())
            }
        })
        .await;
    }

    fn cert(&self, cn: &str) -> CertFiles {
        let certs = self.dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        self.pki.client(cn).unwrap().write_to(&certs, cn).unwrap()
    }

    /// Connects to node `index` with a certificate for `cn`.
    async fn connect(
        &self,
        index: usize,
        cn: &str,
    ) -> Result<NatsClient, async_nats::ConnectError> {
        let url = format!("tls://127.0.0.1:{}", self.nodes[index].ports.client);
        sim::nats::connect(&url, &self.ca, &self.cert(cn)).await
    }

    async fn client(&self, index: usize, cn: &str) -> NatsClient {
        self.connect(index, cn).await.unwrap_or_else(|e| {
            panic!(
                "{cn} cannot connect to node {index}: {e}\n{}",
                self.diagnostics()
            )
        })
    }

    /// Whether node `index` admits `cn` (a refusal must be an authorization violation).
    async fn admitted(&self, index: usize, cn: &str) -> Result<(), String> {
        match self.connect(index, cn).await {
            Ok(_) => Ok(()),
            Err(e) if sim::nats::is_authorization_violation(&e) => {
                Err(format!("node {index} refuses {cn}"))
            }
            Err(e) => panic!(
                "connecting to node {index} as {cn} failed for another reason: {e}\n{}",
                self.diagnostics()
            ),
        }
    }

    async fn wait_admitted(&self, nodes: &[usize], cn: &str) {
        for &index in nodes {
            self.wait(&format!("node {index} to admit {cn}"), || {
                self.admitted(index, cn)
            })
            .await;
        }
    }

    /// `/readyz` of node `index`'s sidecar answers 200 (the pod's readiness probe).
    async fn wait_ready(&self, index: usize) {
        let port = self.nodes[index].ports.http;
        self.wait(
            &format!("node {index}'s sidecar /readyz 200"),
            || async move {
                match http_get(port, "/readyz").await {
                    Some((200, _)) => Ok(()),
                    other => Err(format!("/readyz: {other:?}")),
                }
            },
        )
        .await;
    }

    /// A message `publisher` publishes on node `from` reaches `subscriber` on node `to`.
    async fn delivered(
        &self,
        from: usize,
        publisher: &str,
        to: usize,
        subscriber: &str,
        subject: &str,
    ) {
        let publishing = self.client(from, publisher).await;
        let subscribed = self.client(to, subscriber).await;
        let outcome = sim::nats::probe_subscribe(&subscribed, &publishing, subject).await;
        assert!(
            matches!(outcome, Ok(Permission::Allowed)),
            "{publisher} on node {from} → {subscriber} on node {to}, subject {subject}: {outcome:?}\n{}",
            self.diagnostics()
        );
    }

    /// What node `index` answers when agent `id` publishes to `subject` (the health monitor,
    /// on the same node, observes: `subject` must be one it may subscribe to, §3.1).
    async fn agent_may_publish(&self, index: usize, id: &str, subject: &str) -> Permission {
        let agent = self.client(index, &agent_cn(id)).await;
        let observer = self.client(index, HM_CN).await;
        sim::nats::probe_publish(&agent, &observer, subject)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "node {index}: probe of {subject} as agent {id}: {e}\n{}",
                    self.diagnostics()
                )
            })
    }

    /// What node `index` answers when agent `id` subscribes to `subject` (the director, on the
    /// same node, publishes).
    async fn agent_may_subscribe(&self, index: usize, id: &str, subject: &str) -> Permission {
        let agent = self.client(index, &agent_cn(id)).await;
        let director = self.client(index, DIRECTOR_CN).await;
        sim::nats::probe_subscribe(&agent, &director, subject)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "node {index}: probe of {subject} as agent {id}: {e}\n{}",
                    self.diagnostics()
                )
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_from_the_chart_admits_agents_on_every_node_and_survives_losing_one() {
    let start = Instant::now();
    let mut world = World::start("cluster", Security::AsRendered).await;
    world
        .director
        .create_deployment("cf", vec![Vm::agent(AGENT)]);
    let all = world.start_every_pod().await;
    world.wait_admitted(&all, &agent_cn(AGENT)).await;
    for &i in &all {
        world.wait_ready(i).await;
        world.admitted(i, DIRECTOR_CN).await.unwrap();
        world.admitted(i, HM_CN).await.unwrap();
    }

    // Across the routes: the director on the first node reaches the agent on the last; the
    // agent's heartbeat on the second reaches the health monitor on the first.
    let last = all.len() - 1;
    world
        .delivered(
            0,
            DIRECTOR_CN,
            last,
            &agent_cn(AGENT),
            &format!("agent.{AGENT}"),
        )
        .await;
    world
        .delivered(
            1,
            &agent_cn(AGENT),
            0,
            HM_CN,
            &format!("hm.agent.heartbeat.{AGENT}"),
        )
        .await;
    // The same permissions on every node: what the agent may not do, it may do nowhere.
    for &i in &all {
        assert_eq!(
            world.agent_may_publish(i, AGENT, "hm.director.alert").await,
            Permission::Denied,
            "node {i}: an agent may not raise the director's alerts"
        );
        assert_eq!(
            world
                .agent_may_publish(i, AGENT, &format!("hm.agent.heartbeat.{NEW_AGENT}"))
                .await,
            Permission::Denied,
            "node {i}: an agent may not send another agent's heartbeat"
        );
        assert_eq!(
            world
                .agent_may_subscribe(i, AGENT, &format!("agent.{NEW_AGENT}"))
                .await,
            Permission::Denied,
            "node {i}: an agent may not read another agent's inbox"
        );
    }

    // Node 1 and its sidecar die: the other two stay a cluster and keep admitting new agents.
    let lost = 1;
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != lost).collect();
    world.kill(lost).await;
    world.wait_cluster(&rest).await;
    world.director.create_vm("cf", Vm::agent(NEW_AGENT));
    world.wait_admitted(&rest, &agent_cn(NEW_AGENT)).await;
    world
        .delivered(
            rest[0],
            DIRECTOR_CN,
            rest[1],
            &agent_cn(NEW_AGENT),
            &format!("agent.{NEW_AGENT}"),
        )
        .await;

    // It comes back as a rescheduled pod: a new emptyDir, the placeholder, nats-server admits
    // nobody until its own sidecar has converged it.
    world.init(lost);
    world.start_nats(lost).await;
    assert!(
        world.admitted(lost, DIRECTOR_CN).await.is_err(),
        "the placeholder admits nobody"
    );
    world.wait_cluster(&all).await;
    // Its sidecar starts while the director is down: the bootstrap users let the director and
    // the health monitor in, but the pod is not ready — the Service would send it agents it
    // refuses (the chart sets http.ready_after_full_pass in a cluster).
    world.director.set_down(true);
    world.start_sync(lost);
    world
        .wait(&format!("node {lost} to admit the director"), || {
            world.admitted(lost, DIRECTOR_CN)
        })
        .await;
    world.admitted(lost, HM_CN).await.unwrap();
    let port = world.nodes[lost].ports.http;
    world
        .wait(
            &format!("node {lost}'s /readyz to say it waits for the agents"),
            || async move {
                match http_get(port, "/readyz").await {
                    Some((503, body))
                        if body.contains("no pass has read the director's agents yet") =>
                    {
                        Ok(())
                    }
                    Some((503, body)) => Err(body),
                    other => panic!("node {lost}: /readyz {other:?} with the director down"),
                }
            },
        )
        .await;
    assert!(
        world.admitted(lost, &agent_cn(AGENT)).await.is_err(),
        "no agent before a pass has read the director"
    );
    world.director.set_down(false);
    world.wait_admitted(&[lost], &agent_cn(NEW_AGENT)).await;
    world.wait_admitted(&[lost], &agent_cn(AGENT)).await;
    world.wait_ready(lost).await;
    assert_ne!(
        std::fs::read_to_string(&world.nodes[lost].auth_file)
            .unwrap()
            .trim(),
        PLACEHOLDER
    );
    world
        .delivered(
            lost,
            DIRECTOR_CN,
            0,
            &agent_cn(NEW_AGENT),
            &format!("agent.{NEW_AGENT}"),
        )
        .await;
    world
        .delivered(
            2,
            DIRECTOR_CN,
            lost,
            &agent_cn(AGENT),
            &format!("agent.{AGENT}"),
        )
        .await;
    assert_eq!(
        world
            .agent_may_publish(lost, NEW_AGENT, &format!("hm.agent.heartbeat.{AGENT}"))
            .await,
        Permission::Denied,
        "the restarted node: the same permissions"
    );

    for node in &world.nodes {
        let sync = node.sync.as_ref().expect("every sidecar runs again");
        assert!(
            !sync.log().contains(PASSWORD),
            "node {}: the password reached the log",
            node.index
        );
        assert_eq!(
            sync.state(),
            "running",
            "node {}\n{}",
            node.index,
            world.diagnostics()
        );
    }
    eprintln!("cluster test: {:.1} s", start.elapsed().as_secs_f64());
}

/// The chart's callout mode in a cluster: every node's init steps (as rendered) give its
/// nats-server the callout block naming the one issuer, and every sidecar answers in the one
/// queue group — its own server's requests first. With one node's sidecar gone, agents
/// connecting to that node are still admitted (another node's sidecar answers over the routes)
/// and the director connects everywhere. A fresh pod whose sidecar cannot reach the director
/// stays out of the queue group and unready (nothing loaded to answer from), while the other
/// sidecars answer for its server; once a pass has loaded its set it answers and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_cluster_from_the_chart_answers_for_every_node_through_any_sidecar() {
    let version = sim::nats::version(&common::nats_server_path()).unwrap();
    if !sim::nats::has_auth_callout(&version) {
        eprintln!(
            "nats-server {version} has no auth callout: the chart's callout mode needs 2.10 or later (tests/init.rs checks the refusal)"
        );
        return;
    }
    let start = Instant::now();
    let mut world = World::start("callout-cluster", Security::AsRendered).await;
    world
        .director
        .create_deployment("cf", vec![Vm::agent(AGENT)]);
    let all = world.start_every_pod().await;
    for &i in &all {
        world.wait_ready(i).await;
    }
    // Every sidecar answers in the one queue group. nats-server hands each request to any
    // member, not its own node's first (observed on 2.14.5): agents keep connecting, to every
    // node in turn, until each sidecar has answered some.
    for &i in &all {
        world.wait_admitted(&[i], &agent_cn(AGENT)).await;
        world.admitted(i, DIRECTOR_CN).await.unwrap();
        world.admitted(i, HM_CN).await.unwrap();
    }
    world.connect_until_answered(&all, &all).await;
    let last = all.len() - 1;
    world
        .delivered(
            0,
            DIRECTOR_CN,
            last,
            &agent_cn(AGENT),
            &format!("agent.{AGENT}"),
        )
        .await;

    // Node 1's sidecar stops; its nats-server stays. Its agents are still admitted — by
    // another node's sidecar — and so is a VM created meanwhile; the director and the health
    // monitor connect everywhere.
    let gone = 1;
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != gone).collect();
    world.kill_sync(gone).await;
    let before = world.allowed_by(&others).await;
    world.wait_admitted(&[gone], &agent_cn(AGENT)).await;
    assert!(
        world.allowed_by(&others).await > before,
        "another node's sidecar answered for node {gone}\n{}",
        world.diagnostics()
    );
    world.director.create_vm("cf", Vm::agent(NEW_AGENT));
    world.wait_admitted(&[gone], &agent_cn(NEW_AGENT)).await;
    for &i in &all {
        world.admitted(i, DIRECTOR_CN).await.unwrap();
        world.admitted(i, HM_CN).await.unwrap();
    }

    // Node 1 comes back as a fresh pod (new emptyDirs, its init steps) while the director is
    // down: its sidecar has no admitted set — none persisted, no pass — so it stays out of the
    // queue group, and the other sidecars answer its server's agents from theirs.
    for &i in &others {
        let w = &world;
        w.wait(
            &format!("node {i}'s sidecar to hold both agents"),
            || async move {
                let n = w.sample(i, "bosh_nats_sync_callout_admitted_agents").await;
                (n == 2.0).then_some(()).ok_or(format!("{n} agents"))
            },
        )
        .await;
    }
    world.kill(gone).await;
    world.director.set_down(true);
    world.init(gone);
    world.start_nats(gone).await;
    world.wait_cluster(&all).await;
    world.start_sync(gone);
    let (status, body) = world.readyz(gone).await;
    assert_eq!(status, 503, "{body}\n{}", world.diagnostics());
    assert!(body.contains("no admitted set loaded yet"), "{body}");
    world.admitted(gone, DIRECTOR_CN).await.unwrap();
    world.wait_admitted(&[gone], &agent_cn(NEW_AGENT)).await;
    // Had it joined the queue group with nothing to answer from, it would have taken about a
    // third of every node's requests and refused them: twenty connects, every one admitted.
    for round in 0..20 {
        let node = all[round % all.len()];
        for id in [AGENT, NEW_AGENT] {
            if let Err(e) = world.admitted(node, &agent_cn(id)).await {
                panic!(
                    "round {round}: {e}: a fresh sidecar refused\n{}",
                    world.diagnostics()
                );
            }
        }
    }
    assert_eq!(
        world.allowed(gone).await,
        0.0,
        "the fresh sidecar answered nothing\n{}",
        world.diagnostics()
    );
    assert_eq!(
        world
            .sample(
                gone,
                r#"bosh_nats_sync_callout_requests_total{result="unknown_agent"}"#
            )
            .await,
        0.0,
        "and refused nobody"
    );
    assert_eq!(world.readyz(gone).await.0, 503, "still unready");
    // The director is back: its first pass loads the set, it joins the queue group, is ready,
    // and answers its own server's agents again.
    world.director.set_down(false);
    world.wait_ready(gone).await;
    world.connect_until_answered(&all, &[gone]).await;
    world
        .delivered(
            gone,
            DIRECTOR_CN,
            0,
            &agent_cn(NEW_AGENT),
            &format!("agent.{NEW_AGENT}"),
        )
        .await;

    let issuer = world.issuer.clone().unwrap();
    for node in &world.nodes {
        let sync = node.sync.as_ref().expect("every sidecar runs");
        let log = sync.log();
        assert!(
            !log.contains(PASSWORD),
            "node {}: the password reached the log",
            node.index
        );
        assert!(
            !log.contains(&issuer),
            "node {}: the seed reached the log",
            node.index
        );
        assert_eq!(
            sync.state(),
            "running",
            "node {}\n{}",
            node.index,
            world.diagnostics()
        );
    }
    eprintln!(
        "callout cluster test: {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// The substitution refuses a rendered file that lost a peer's route, rather than starting a
/// cluster the chart would not form.
#[test]
#[should_panic(expected = "want every pod exactly once")]
fn a_rendered_config_without_a_route_to_every_peer_is_refused() {
    let layout = Layout::load("cluster");
    let rendered =
        std::fs::read_to_string(fixture_dir("cluster").join("nats-config/nats.conf")).unwrap();
    let last = layout.pods().len() - 1;
    let without: Vec<&str> = rendered
        .lines()
        .filter(|l| l.trim() != format!("$NATS_ROUTE_{last}"))
        .collect();
    assert_ne!(
        without.len(),
        rendered.lines().count(),
        "the fixture routes to pod {last}"
    );
    let ports: Vec<Ports> = layout.pods().iter().map(|_| Ports::free()).collect();
    node_config(
        &(without.join("\n") + "\n"),
        &layout,
        Path::new("/x"),
        &ports,
        0,
        Security::AsRendered,
    );
}

/// And one without a cluster block (the single pod's nats.conf).
#[test]
#[should_panic(expected = "want one cluster block, found 0")]
fn a_rendered_config_without_a_cluster_block_is_refused() {
    let layout = Layout::load("cluster");
    let single = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/chart/fixtures/sidecar/nats-config/nats.conf");
    let ports: Vec<Ports> = layout.pods().iter().map(|_| Ports::free()).collect();
    node_config(
        &std::fs::read_to_string(single).unwrap(),
        &layout,
        Path::new("/x"),
        &ports,
        0,
        Security::AsRendered,
    );
}

/// How a node's refusal of the rogue's route shows.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    InRogueLog(&'static str),
    InNodeLog(&'static str),
}

/// A nats-server that is not one of the StatefulSet's pods: it routes to every node (with a
/// certificate of its own when `tls` is given, but without the route credentials), and a
/// client of its own subscribes to everything.
struct Rogue {
    process: Process,
    client_port: u16,
    monitoring_port: u16,
}

impl World {
    /// Starts the rogue server; `tls`: the certificate it presents (and what it is), trusting
    /// the real cluster CA so that only the nodes' side of the handshake can refuse it.
    async fn start_rogue(&self, tls: Option<(sim::pki::CertifiedKeyPem, &str)>) -> Rogue {
        let dir = self.dir.path().join("rogue");
        std::fs::create_dir_all(&dir).unwrap();
        let (client_port, monitoring_port, route_port) = (
            common::free_port(),
            common::free_port(),
            common::free_port(),
        );
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("    \"nats://127.0.0.1:{}\"", n.ports.route))
            .collect();
        let tls_block = match &tls {
            None => String::new(),
            Some((cert, _)) => {
                std::fs::write(dir.join("tls.crt"), cert.cert_pem()).unwrap();
                std::fs::write(dir.join("tls.key"), cert.key_pem()).unwrap();
                std::fs::write(dir.join("ca.crt"), self.pki.ca.cert_pem()).unwrap();
                format!(
                    "  tls {{\n    cert_file: \"{0}/tls.crt\"\n    key_file: \"{0}/tls.key\"\n    ca_file: \"{0}/ca.crt\"\n    timeout: 3\n  }}\n",
                    dir.display()
                )
            }
        };
        let conf = format!(
            "listen: \"127.0.0.1:{client_port}\"\nhttp: \"127.0.0.1:{monitoring_port}\"\n\
             cluster {{\n  name: \"{}\"\n  listen: \"127.0.0.1:{route_port}\"\n{tls_block}  routes: [\n{}\n  ]\n}}\n",
            self.cluster_name,
            routes.join("\n")
        );
        std::fs::write(dir.join("rogue.conf"), &conf).unwrap();
        let argv = vec![
            common::nats_server_path().display().to_string(),
            "--config".to_owned(),
            dir.join("rogue.conf").display().to_string(),
        ];
        let what = tls
            .as_ref()
            .map_or("without route credentials", |(_, w)| *w);
        let log = self.dir.path().join("rogue-nats-server.log");
        let process = Process::spawn(format!("the rogue server ({what})"), &argv, log, &[]);
        self.wait("the rogue server to serve /varz", || async move {
            match http_get(monitoring_port, "/varz").await {
                Some((200, _)) => Ok(()),
                other => Err(format!("/varz: {other:?}")),
            }
        })
        .await;
        Rogue {
            process,
            client_port,
            monitoring_port,
        }
    }

    /// Waits until every node has refused the rogue's route: for each node, a line naming the
    /// refusal, either in the rogue's log naming the node's route port, or (a refusal in the
    /// TLS handshake, which the rogue only sees as a closed connection) in the node's own log.
    async fn wait_refused(&self, rogue: &Rogue, refusal: Refusal) {
        self.wait("every node to refuse the rogue's route", || async move {
            let rogue_log = rogue.process.log();
            let missing: Vec<usize> = self
                .nodes
                .iter()
                .filter(|node| match refusal {
                    Refusal::InRogueLog(needle) => !rogue_log.lines().any(|l| {
                        l.contains(&format!("127.0.0.1:{} ", node.ports.route))
                            && l.contains(needle)
                    }),
                    Refusal::InNodeLog(needle) => {
                        !node.nats.as_ref().is_some_and(|p| p.log().contains(needle))
                    }
                })
                .map(|node| node.index)
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "no {refusal:?} yet from nodes {missing:?}\n{}",
                    rogue.process.tail()
                ))
            }
        })
        .await;
    }

    /// Waits until the rogue routes to every node.
    async fn wait_joined(&self, rogue: &Rogue) {
        let ids: BTreeSet<String> = self.server_ids().await.into_iter().collect();
        self.wait("the rogue to route to every node", || {
            let ids = ids.clone();
            async move {
                let routes = self.rogue_routes(rogue).await;
                if ids.is_subset(&routes) {
                    Ok(())
                } else {
                    Err(format!("rogue routes {routes:?}, nodes {ids:?}"))
                }
            }
        })
        .await;
    }

    /// The server ids of the rogue's routes, by its `/routez`.
    async fn rogue_routes(&self, rogue: &Rogue) -> BTreeSet<String> {
        let (_, routez) = http_get(rogue.monitoring_port, "/routez")
            .await
            .expect("the rogue serves /routez");
        let routez: Json = serde_json::from_str(&routez).unwrap();
        routez["routes"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|r| r["remote_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn server_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for node in &self.nodes {
            let (_, varz) = http_get(node.ports.monitoring, "/varz")
                .await
                .expect("a node serves /varz");
            let varz: Json = serde_json::from_str(&varz).unwrap();
            ids.push(varz["server_id"].as_str().unwrap().to_owned());
        }
        ids
    }

    /// Starts every node (init, nats-server, sidecar) and waits until the cluster has formed
    /// and every node admits `agent`.
    async fn start_all(&mut self, agent: &str) {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        for &i in &all {
            self.init(i);
            self.start_nats(i).await;
        }
        for &i in &all {
            self.start_sync(i);
        }
        self.wait_cluster(&all).await;
        self.wait_admitted(&all, &agent_cn(agent)).await;
    }
}

/// What the rogue's subscriber to `>` gets while the director, on the first node, publishes
/// to the agent subscribed on the last node, until the agent has its message and (when
/// `until_rogue`) the rogue has one too: the rogue's messages.
async fn publish_while_watching(world: &World, rogue: &Rogue, until_rogue: bool) -> Vec<String> {
    use futures::StreamExt;
    let spy = async_nats::connect(format!("nats://127.0.0.1:{}", rogue.client_port))
        .await
        .expect("a client of the rogue server connects to it");
    let mut spied = spy.subscribe(">").await.unwrap();
    spy.flush().await.unwrap();
    let last = world.nodes.len() - 1;
    let agent = world.client(last, &agent_cn(AGENT)).await;
    let mut inbox = agent
        .client()
        .subscribe(format!("agent.{AGENT}"))
        .await
        .unwrap();
    agent.client().flush().await.unwrap();
    let director = world.client(0, DIRECTOR_CN).await;
    let mut got_agent = false;
    let mut got_rogue = Vec::new();
    let deadline = Instant::now() + WITHIN;
    while Instant::now() < deadline && !(got_agent && (!until_rogue || !got_rogue.is_empty())) {
        director
            .client()
            .publish(format!("agent.{AGENT}"), "{\"method\":\"ping\"}".into())
            .await
            .unwrap();
        director.client().flush().await.unwrap();
        let tick = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                Some(_) = inbox.next() => got_agent = true,
                Some(m) = spied.next() => got_rogue.push(m.subject.to_string()),
                () = &mut tick => break,
            }
        }
    }
    assert!(
        got_agent,
        "the agent on node {last} never received the director's message\n{}",
        world.diagnostics()
    );
    // Whatever reached the rogue server is in its subscriber's hands once it has flushed.
    spy.flush().await.unwrap();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(1), spied.next()).await {
        got_rogue.push(m.subject.to_string());
    }
    got_rogue
}

/// Routes are a trust boundary: a nats-server that is not one of the pods and holds no route
/// credentials tries to route to every node of the cluster the chart renders (route
/// authorization, its default). Every node refuses it, and its subscriber to `>` receives
/// nothing of what the director sends an agent across the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_route_credentials_is_refused_by_every_node() {
    let mut world = World::start("cluster", Security::AsRendered).await;
    world
        .director
        .create_deployment("cf", vec![Vm::agent(AGENT)]);
    world.start_all(AGENT).await;
    let rogue = world.start_rogue(None).await;
    world
        .wait_refused(&rogue, Refusal::InRogueLog("Authorization Violation"))
        .await;
    let received = publish_while_watching(&world, &rogue, false).await;
    assert!(
        received.is_empty(),
        "the rogue server received {received:?}\n{}",
        rogue.process.tail()
    );
    assert!(
        world.rogue_routes(&rogue).await.is_empty(),
        "the rogue has routes\n{}",
        rogue.process.tail()
    );
    // The cluster itself is whole, and the route password is in no log.
    world
        .wait_cluster(&(0..world.nodes.len()).collect::<Vec<_>>())
        .await;
    for node in &world.nodes {
        for process in [&node.nats, &node.sync].into_iter().flatten() {
            assert!(
                !process.log().contains(ROUTE_PASSWORD),
                "{}: the route password is in its log",
                process.name
            );
        }
    }
}

/// The same rogue against the same cluster with the route security removed from nats.conf
/// (what the chart rendered before): it joins every node and reads the director's command to
/// the agent. This is what the test above would see if the chart stopped authenticating
/// routes, so that test can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_route_security_the_same_rogue_joins_and_reads_the_bus() {
    let mut world = World::start("cluster", Security::Removed).await;
    world
        .director
        .create_deployment("cf", vec![Vm::agent(AGENT)]);
    world.start_all(AGENT).await;
    let rogue = world.start_rogue(None).await;
    world.wait_joined(&rogue).await;
    let received = publish_while_watching(&world, &rogue, true).await;
    assert!(
        received.contains(&format!("agent.{AGENT}")),
        "the rogue server received {received:?}"
    );
}

/// One agent's connection as a BOSH agent holds it: TLS with its client certificate, every
/// node's client URL (the Service's endpoints) tried in order, reconnecting without limit;
/// what happened to it, with when.
struct HeldAgent {
    id: String,
    client: async_nats::Client,
    inbox: async_nats::Subscriber,
    events: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl World {
    async fn hold_agent(&self, id: &str) -> HeldAgent {
        let cert = self.cert(&agent_cn(id));
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let servers: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| {
                format!("tls://127.0.0.1:{}", n.ports.client)
                    .parse()
                    .unwrap()
            })
            .collect();
        let client = async_nats::ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(self.ca.clone())
            .add_client_certificate(cert.cert.clone(), cert.key.clone())
            .connection_timeout(Duration::from_secs(5))
            .retain_servers_order()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempt| Duration::from_millis(50 * attempt.min(10) as u64))
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    sink.lock()
                        .unwrap()
                        .push((Instant::now(), event.to_string()));
                }
            })
            .connect(servers)
            .await
            .unwrap_or_else(|e| panic!("agent {id} cannot connect: {e}\n{}", self.diagnostics()));
        let inbox = client.subscribe(format!("agent.{id}")).await.unwrap();
        client.flush().await.unwrap();
        HeldAgent {
            id: id.to_owned(),
            client,
            inbox,
            events,
        }
    }
}

/// Rolling restarts lose nothing: the chart's preStop hook (`nats-server --signal ldm=<pid
/// file>`, run as rendered) puts a node into lame duck, and the kubelet's SIGTERM that follows
/// does not cut it short. The node stops accepting clients, waits the rendered grace period,
/// then closes its agents one by one (not all at once); each reconnects to another node, is
/// admitted there (its certificate is a user on every node) and receives the director's next
/// command; the node then exits on its own and the other two stay a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_in_lame_duck_hands_its_agents_to_the_others() {
    use futures::StreamExt;
    const AGENTS: usize = 4;
    let ids: Vec<String> = (0..AGENTS)
        .map(|i| format!("1a3ed0c0-0000-4000-8000-00000000000{i}"))
        .collect();
    let mut world = World::start("cluster", Security::AsRendered).await;
    world
        .director
        .create_deployment("cf", ids.iter().map(|id| Vm::agent(id)).collect::<Vec<_>>());
    world.start_all(&ids[AGENTS - 1]).await;
    let all: Vec<usize> = (0..world.nodes.len()).collect();
    for id in &ids {
        world.wait_admitted(&all, &agent_cn(id)).await;
    }
    let leaving = 0;
    let leaving_port = world.nodes[leaving].ports.client;
    let mut agents = Vec::new();
    for id in &ids {
        let agent = world.hold_agent(id).await;
        assert_eq!(
            agent.client.server_info().port,
            leaving_port,
            "agent {id} starts on node {leaving} (the first URL)"
        );
        agents.push(agent);
    }
    let grace: f64 = {
        let conf =
            std::fs::read_to_string(fixture_dir("cluster").join("nats-config/nats.conf")).unwrap();
        let value = conf
            .lines()
            .find_map(|l| l.strip_prefix("lame_duck_grace_period: "))
            .expect("the rendered nats.conf sets lame_duck_grace_period");
        value
            .trim_matches('"')
            .trim_end_matches('s')
            .parse()
            .unwrap()
    };

    // The pod leaves: the preStop hook as rendered, then SIGTERM to both containers.
    let root = world.nodes[leaving].root.clone();
    let mut hook = world.layout.strings("nats_pre_stop");
    assert_eq!(
        hook[0], "nats-server",
        "the hook runs the nats image's nats-server"
    );
    hook[0] = common::nats_server_path().display().to_string();
    let hook: Vec<String> = hook
        .iter()
        .map(|a| match a.split_once('=') {
            Some((k, path)) => format!("{k}={}", world.moved(&root, path)),
            None => a.clone(),
        })
        .collect();
    let signalled = Instant::now();
    let status = std::process::Command::new(&hook[0])
        .args(&hook[1..])
        .status()
        .unwrap_or_else(|e| panic!("cannot run the preStop hook {hook:?}: {e}"));
    assert!(
        status.success(),
        "the preStop hook {hook:?} failed: {status}"
    );
    for process in [&world.nodes[leaving].nats, &world.nodes[leaving].sync]
        .into_iter()
        .flatten()
    {
        process.terminate();
    }

    // Every agent moves to another node.
    for agent in &agents {
        world
            .wait(
                &format!("agent {} to reconnect to another node", agent.id),
                || async {
                    let port = agent.client.server_info().port;
                    let state = agent.client.connection_state();
                    if port != leaving_port && state == async_nats::connection::State::Connected {
                        Ok(())
                    } else {
                        Err(format!("on port {port}, {state:?}"))
                    }
                },
            )
            .await;
    }
    // nats-server leaves on its own once lame duck is over (SIGTERM did not stop it earlier).
    let nats = world.nodes[leaving].nats.as_ref().unwrap();
    world
        .wait(&format!("node {leaving}'s nats-server to exit"), || async {
            match nats.state() {
                s if s == "running" => Err(s),
                _ => Ok(()),
            }
        })
        .await;
    let log = nats.log();
    assert!(
        log.contains("Entering lame duck mode") && log.contains("Closing existing clients"),
        "node {leaving} went through lame duck\n{}",
        nats.tail()
    );

    // They were closed one by one after the grace period, not all at once.
    let disconnects: Vec<Instant> = agents
        .iter()
        .map(|a| {
            let events = a.events.lock().unwrap();
            events
                .iter()
                .find(|(_, e)| e == "disconnected")
                .unwrap_or_else(|| panic!("agent {}: no disconnect in {events:?}", a.id))
                .0
        })
        .collect();
    let first = *disconnects.iter().min().unwrap();
    let last = *disconnects.iter().max().unwrap();
    let after = first.duration_since(signalled).as_secs_f64();
    let spread = last.duration_since(first).as_secs_f64();
    eprintln!(
        "lame duck: first agent closed {after:.2} s after the hook, the last {spread:.2} s later"
    );
    assert!(
        after >= grace - 0.25,
        "the first agent was closed {after:.2} s after the hook, before the {grace} s grace period"
    );
    // Between two closes nats-server sleeps a random time in [si/2, si), si = (duration −
    // grace period) / clients, at most 1 s: here si = 1 s, so at least 3 × 0.5 s, less what a
    // late-noticed first close may take off (closed at once would be about 0 s).
    assert!(
        spread >= (AGENTS - 1) as f64 * 0.5 - 0.5,
        "the agents were closed within {spread:.2} s: all at once, not handed over"
    );

    // Each agent is admitted where it landed and receives the director's next command.
    world.wait_cluster(&[1, 2]).await;
    let director = world.client(1, DIRECTOR_CN).await;
    for agent in &mut agents {
        let subject = format!("agent.{}", agent.id);
        let deadline = Instant::now() + WITHIN;
        let mut received = false;
        while !received && Instant::now() < deadline {
            director
                .client()
                .publish(subject.clone(), "{\"method\":\"ping\"}".into())
                .await
                .unwrap();
            director.client().flush().await.unwrap();
            received = tokio::time::timeout(Duration::from_millis(200), agent.inbox.next())
                .await
                .is_ok_and(|m| m.is_some());
        }
        assert!(
            received,
            "agent {} on port {} never received {subject}\n{}",
            agent.id,
            agent.client.server_info().port,
            world.diagnostics()
        );
        let events = agent.events.lock().unwrap().clone();
        assert!(
            !events.iter().any(|(_, e)| e.contains("rror")),
            "agent {}: {events:?}",
            agent.id
        );
    }
}

/// The rogue must be refused and read nothing, or (`joins`) must join and read.
async fn rogue_outcome(world: &World, rogue: &Rogue, joins: bool) {
    if joins {
        world.wait_joined(rogue).await;
        let received = publish_while_watching(world, rogue, true).await;
        assert!(
            received.contains(&format!("agent.{AGENT}")),
            "the rogue server received {received:?}"
        );
    } else {
        let received = publish_while_watching(world, rogue, false).await;
        assert!(
            received.is_empty(),
            "the rogue server received {received:?}\n{}",
            rogue.process.tail()
        );
        assert!(
            world.rogue_routes(rogue).await.is_empty(),
            "the rogue has routes\n{}",
            rogue.process.tail()
        );
    }
}

/// Route TLS (cluster.tls.secretName, no route password), with the clients' CA as the
/// cluster CA: the nodes route to each other with the route certificate; a rogue with no
/// TLS, one with a route certificate of another CA, and one holding an agent's certificate of
/// the very CA the nodes trust are each refused by every node and read nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_route_tls_servers_without_a_route_certificate_are_refused() {
    let mut world = World::start("cluster-tls", Security::AsRendered).await;
    world
        .director
        .create_deployment("cf", vec![Vm::agent(AGENT)]);
    world.start_all(AGENT).await;
    // Each with what a node's refusal looks like from the rogue: a node demands TLS, which the
    // first cannot speak (it closes the route itself); it rejects the second's certificate in
    // the handshake; the third completes the handshake and is refused as a route.
    let rogues = [
        (
            None,
            Refusal::InRogueLog("Router connection closed: Client Closed"),
        ),
        (
            Some((
                world.pki.other_ca.route_cert().unwrap(),
                "a route certificate of another CA",
            )),
            Refusal::InNodeLog("TLS route handshake error"),
        ),
        (
            Some((
                world.pki.client(&agent_cn(AGENT)).unwrap(),
                "an agent's certificate of the cluster CA",
            )),
            Refusal::InRogueLog("Authorization Violation"),
        ),
    ];
    for (tls, refusal) in rogues {
        let rogue = world.start_rogue(tls).await;
        world.wait_refused(&rogue, refusal).await;
        rogue_outcome(&world, &rogue, false).await;
        rogue.process.kill().await;
    }
    world
        .wait_cluster(&(0..world.nodes.len()).collect::<Vec<_>>())
        .await;
}

/// Why the chart sets `verify_cert_and_check_known_urls` with route TLS: without it, any
/// certificate of the cluster CA is a route, so when that CA is the clients' CA a server
/// holding an agent's certificate joins and reads the bus; and with the route TLS removed
/// altogether, so does a server without any certificate. So the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_route_name_check_an_agents_certificate_joins() {
    for (security, tls) in [
        (Security::AnyCertificateOfTheCa, true),
        (Security::Removed, false),
    ] {
        let mut world = World::start("cluster-tls", security).await;
        world
            .director
            .create_deployment("cf", vec![Vm::agent(AGENT)]);
        world.start_all(AGENT).await;
        let cert = tls.then(|| {
            (
                world.pki.client(&agent_cn(AGENT)).unwrap(),
                "an agent's certificate of the cluster CA",
            )
        });
        let rogue = world.start_rogue(cert).await;
        rogue_outcome(&world, &rogue, true).await;
    }
}
