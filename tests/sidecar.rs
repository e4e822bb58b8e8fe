//! The Kubernetes sidecar layout run for real, without Kubernetes (issue: run it where
//! operators run it): the nats-server and bosh-nats-sync configuration files rendered from
//! the Helm chart (tests/chart/fixtures/sidecar, kept fresh by tests/chart/run.sh) are placed
//! where the pod mounts them under a temporary root, the init container's command writes
//! the placeholder auth file, nats-server starts on the rendered config, and the binary
//! reloads it with SIGHUP (no nats-server executable configured) after syncing from the
//! simulated director. Only the mount roots, the listen ports and the director URL change.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use sim::director::{DirectorConfig, DirectorSim, Vm};
use sim::pki::{Pki, agent_cn, bootstrap_agent_cn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const AGENT: &str = "5e1dca2f-0000-4000-8000-00000000c4a7";
const NEW_AGENT: &str = "5e1dca2f-0000-4000-8000-00000000c4a8";
const PASSWORD: &str = "pw-Sidecar-Sekr1t";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart/fixtures/sidecar")
}

/// The rendered pod: which volume each container mounts where, the init container's
/// command, nats-server's command, the sidecar's arguments and probes.
struct Layout(Json);

impl Layout {
    fn load() -> Layout {
        let text = std::fs::read_to_string(fixture_dir().join("layout.json")).expect(
            "tests/chart/fixtures/sidecar/layout.json (tests/chart/run.sh --update-fixture)",
        );
        Layout(serde_json::from_str(&text).expect("layout.json is JSON"))
    }

    fn mount(&self, container: &str, volume: &str) -> String {
        self.0["mounts"][container][volume]
            .as_str()
            .unwrap_or_else(|| panic!("{container} mounts no volume {volume}"))
            .to_owned()
    }

    /// Every mount path of every container: the "roots" that move under the temp root.
    fn roots(&self) -> BTreeSet<String> {
        let mounts = self.0["mounts"].as_object().expect("mounts");
        mounts
            .values()
            .flat_map(|m| m.as_object().expect("mounts of a container").values())
            .map(|p| p.as_str().expect("mount path").to_owned())
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

    fn probe(&self, kind: &str) -> (String, u16) {
        let p = &self.0["probes"][kind];
        (
            p["path"].as_str().expect("probe path").to_owned(),
            p["port"].as_u64().expect("probe port") as u16,
        )
    }
}

/// Moves absolute paths under `root` when they lie in one of the pod's mounts.
struct Rooted {
    root: PathBuf,
    mounts: BTreeSet<String>,
}

impl Rooted {
    fn path(&self, pod_path: &str) -> PathBuf {
        assert!(
            self.mounts
                .iter()
                .any(|m| pod_path == m || pod_path.starts_with(&format!("{m}/"))),
            "{pod_path} lies in no volume the pod mounts"
        );
        self.root.join(pod_path.trim_start_matches('/'))
    }

    fn rewrite(&self, value: &str) -> Option<String> {
        self.mounts
            .iter()
            .any(|m| value.starts_with(&format!("{m}/")))
            .then(|| self.path(value).display().to_string())
    }
}

fn free_port() -> u16 {
    sim::ports::free_port()
}

/// `chown -R uid:uid root`.
fn chown_tree(root: &Path, uid: u32) {
    let id = (
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    );
    nix::unistd::chown(root, id.0, id.1).unwrap();
    if root.is_dir() {
        for entry in std::fs::read_dir(root).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

/// Replaces the value of a top-level `key: "..."` line of nats.conf; exactly one must exist.
fn replace_conf_line(conf: &str, key: &str, value: &str) -> String {
    let prefix = format!("{key}:");
    let mut found = 0;
    let out: Vec<String> = conf
        .lines()
        .map(|line| {
            if line.starts_with(&prefix) {
                found += 1;
                format!("{key}: \"{value}\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(found, 1, "nats.conf has {found} `{key}:` lines:\n{conf}");
    out.join("\n") + "\n"
}

/// nats.conf: quoted absolute paths in a mount move under the root; the relative `include`
/// stays as rendered (it resolves against the config's directory, which moved too).
fn rewrite_nats_conf(
    conf: &str,
    rooted: &Rooted,
    client_port: u16,
    monitoring_port: u16,
) -> String {
    let mut out = conf.to_owned();
    for m in &rooted.mounts {
        out = out.replace(
            &format!("\"{m}/"),
            &format!("\"{}/", rooted.path(m).display()),
        );
    }
    let out = replace_conf_line(&out, "listen", &format!("127.0.0.1:{client_port}"));
    replace_conf_line(&out, "http", &format!("127.0.0.1:{monitoring_port}"))
}

fn rewrite_yaml(value: &mut Yaml, rooted: &Rooted) {
    match value {
        Yaml::String(s) => {
            if let Some(moved) = rooted.rewrite(s) {
                *s = moved;
            }
        }
        Yaml::Mapping(m) => m.values_mut().for_each(|v| rewrite_yaml(v, rooted)),
        Yaml::Sequence(seq) => seq.iter_mut().for_each(|v| rewrite_yaml(v, rooted)),
        _ => {}
    }
}

fn set(config: &mut Yaml, section: &str, key: &str, value: String) -> String {
    let slot = config
        .get_mut(section)
        .and_then(|s| s.get_mut(key))
        .unwrap_or_else(|| panic!("the rendered config has no {section}.{key}"));
    let old = slot.as_str().expect("a string").to_owned();
    *slot = Yaml::String(value);
    old
}

/// `GET path` on 127.0.0.1:port; the status code, or None while nothing listens.
async fn http_status(port: u16, path: &str) -> Option<u16> {
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
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Who a container's processes run as: the test's own user, or (the test running as root) a
/// UID with no capabilities at all, as the chart's security context gives each container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunAs {
    Me,
    Uid(u32),
}

impl RunAs {
    /// `argv` prefixed with `setpriv` so it runs as this identity: that UID, the pod's group
    /// (`runAsGroup`/`fsGroup`, which is what lets another UID read nats-server's 0640 pid
    /// file), empty inheritable and bounding capability sets, no_new_privs
    /// (`allowPrivilegeEscalation: false`).
    fn argv(self, argv: &[String]) -> Vec<String> {
        match self {
            RunAs::Me => argv.to_vec(),
            RunAs::Uid(uid) => {
                let mut full: Vec<String> = [
                    "setpriv".to_owned(),
                    format!("--reuid={uid}"),
                    format!("--regid={POD_UID}"),
                    format!("--groups={POD_UID}"),
                    "--inh-caps=-all".to_owned(),
                    "--bounding-set=-all".to_owned(),
                    "--no-new-privs".to_owned(),
                    "--".to_owned(),
                ]
                .into();
                full.extend_from_slice(argv);
                full
            }
        }
    }
}

/// Spawns `argv` as `who` with stdout and stderr into `log`; killed when dropped.
fn spawn(who: RunAs, argv: &[String], log: &Path, env: &[(&str, &str)]) -> Child {
    let file = std::fs::File::create(log).unwrap();
    let argv = who.argv(argv);
    Command::new(&argv[0])
        .args(&argv[1..])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"))
}

/// Whether the sidecar's SIGHUP is expected to reach nats-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Admitted,
    SignalRefused,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_layout_admits_agents_with_a_sighup_reload() {
    run_pod(RunAs::Me, RunAs::Me, Expect::Admitted).await;
}

/// The chart's claim: both containers as one non-root UID, every capability dropped,
/// no_new_privs — SIGHUP still reaches nats-server. Switching users needs root: `scripts/test`
/// (CI, as root) runs it with `--ignored`, and without root or setpriv it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and setpriv to switch UIDs: scripts/test runs it with --ignored"]
async fn one_unprivileged_uid_for_both_containers_needs_no_capability() {
    require_switching_users();
    run_pod(RunAs::Uid(POD_UID), RunAs::Uid(POD_UID), Expect::Admitted).await;
}

/// And why it must be the same UID: from another UID, without CAP_KILL, the signal is refused
/// (2.9.10) or the pid file cannot even be read (2.14 and later write it 0600).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and setpriv to switch UIDs: scripts/test runs it with --ignored"]
async fn a_sidecar_with_another_uid_cannot_signal() {
    require_switching_users();
    run_pod(
        RunAs::Uid(POD_UID),
        RunAs::Uid(POD_UID + 1),
        Expect::SignalRefused,
    )
    .await;
}

/// The chart's default `podSecurityContext.runAsUser`.
const POD_UID: u32 = 65532;

/// Fails the test unless this process can run others as another UID.
fn require_switching_users() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "switching UIDs needs root: run this test as root (CI does)"
    );
    let setpriv = std::process::Command::new("setpriv")
        .arg("--version")
        .output();
    assert!(
        setpriv.is_ok_and(|out| out.status.success()),
        "setpriv is missing: apt-get install util-linux"
    );
}

async fn run_pod(nats_as: RunAs, sync_as: RunAs, expect: Expect) {
    let layout = Layout::load();
    let dir = tempfile::tempdir().unwrap();
    let rooted = Rooted {
        root: dir.path().join("pod"),
        mounts: layout.roots(),
    };
    let (client_port, monitoring_port, http_port) = (free_port(), free_port(), free_port());

    // The ConfigMaps, where the pod mounts them.
    let pki = Pki::generate().unwrap();
    let nats_conf_dir = rooted.path(&layout.mount("nats", "nats-config"));
    let sync_conf_dir = rooted.path(&layout.mount("bosh-nats-sync", "sync-config"));
    for (volume, target) in [
        ("nats-config", &nats_conf_dir),
        ("sync-config", &sync_conf_dir),
    ] {
        std::fs::create_dir_all(target).unwrap();
        for entry in std::fs::read_dir(fixture_dir().join(volume)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
        }
    }
    let nats_conf = nats_conf_dir.join("nats.conf");
    let rendered_conf = std::fs::read_to_string(&nats_conf).unwrap();
    std::fs::write(
        &nats_conf,
        rewrite_nats_conf(&rendered_conf, &rooted, client_port, monitoring_port),
    )
    .unwrap();

    // The TLS Secret (tls.crt, tls.key, ca.crt) from the test PKI.
    let tls_dir = rooted.path(&layout.mount("nats", "nats-tls"));
    std::fs::create_dir_all(&tls_dir).unwrap();
    std::fs::create_dir_all(dir.path().join("pki")).unwrap();
    let pki_files = pki.write_to(&dir.path().join("pki")).unwrap();
    std::fs::copy(&pki_files.server.cert, tls_dir.join("tls.crt")).unwrap();
    std::fs::copy(&pki_files.server.key, tls_dir.join("tls.key")).unwrap();
    std::fs::copy(&pki_files.ca_cert, tls_dir.join("ca.crt")).unwrap();

    // The sidecar's config: the simulated director, moved roots and ports; nothing else.
    let config_path = sync_conf_dir.join("config.yml");
    let mut config: Yaml =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert!(
        config
            .get("nats")
            .and_then(|n| n.get("nats_server_executable"))
            .is_none(),
        "the chart's sidecar reloads by SIGHUP"
    );
    let user = config["director"]["user"]
        .as_str()
        .expect("the fixture variant uses basic auth")
        .to_owned();
    let director = DirectorSim::start(
        DirectorConfig::basic(&user, PASSWORD).with_tls(pki.server_config().unwrap()),
    )
    .await
    .unwrap();
    director.set_deployment("cf", vec![Vm::agent(AGENT).permanent(true)]);
    rewrite_yaml(&mut config, &rooted);
    set(&mut config, "director", "url", director.url().to_string());
    let rendered_monitoring = set(
        &mut config,
        "nats",
        "monitoring_url",
        format!("http://127.0.0.1:{monitoring_port}"),
    );
    assert!(rendered_conf.contains(&format!(
        "http: \"{}\"",
        rendered_monitoring.trim_start_matches("http://")
    )));
    let rendered_listen = set(
        &mut config,
        "http",
        "listen",
        format!("127.0.0.1:{http_port}"),
    );
    let (ready_path, ready_port) = layout.probe("readinessProbe");
    let (live_path, live_port) = layout.probe("livenessProbe");
    assert!(rendered_listen.ends_with(&format!(":{ready_port}")) && ready_port == live_port);
    // The director's CA where the chart mounts caCert.
    let ca_path = PathBuf::from(
        config["director"]["director_ca_cert"]
            .as_str()
            .expect("the fixture sets caCert"),
    );
    std::fs::write(&ca_path, pki.ca.cert_pem()).unwrap();
    std::fs::write(&config_path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let auth_file = PathBuf::from(config["nats"]["config_file_path"].as_str().unwrap());
    let pid_file = PathBuf::from(config["nats"]["nats_server_pid_file"].as_str().unwrap());

    // The init container, then nats-server: it starts only because the placeholder exists.
    let state_dir = rooted.path(&layout.mount("nats", "state"));
    std::fs::create_dir_all(&state_dir).unwrap();
    if let RunAs::Uid(uid) = nats_as {
        // Like the kubelet: volumes owned by the pod's user (fsGroup), an emptyDir is 0777.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_tree(&rooted.root, uid);
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let init_env: Vec<(String, String)> = layout.0["init_env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                rooted
                    .rewrite(v.as_str().unwrap())
                    .expect("init env holds a pod path"),
            )
        })
        .collect();
    let init = layout.strings("init_command");
    let init = nats_as.argv(&init);
    let status = std::process::Command::new(&init[0])
        .args(&init[1..])
        .envs(init_env)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the init container's command failed: {status}"
    );
    assert_eq!(
        std::fs::read_to_string(&auth_file).unwrap().trim(),
        "{authorization: {token: f0oBar}}"
    );

    let mut nats_argv = layout.strings("nats_command");
    assert_eq!(nats_argv[0], "nats-server");
    nats_argv[0] = common::nats_server_path().display().to_string();
    let nats_argv: Vec<String> = nats_argv
        .iter()
        .map(|a| rooted.rewrite(a).unwrap_or_else(|| a.clone()))
        .collect();
    let nats_log = dir.path().join("nats-server.log");
    let mut nats = spawn(nats_as, &nats_argv, &nats_log, &[]);
    let nats_log_text = || std::fs::read_to_string(&nats_log).unwrap_or_default();
    common::eventually(Duration::from_secs(20), "nats-server listening and its pid file", || {
        assert!(nats.try_wait().unwrap().is_none(), "nats-server exited:\n{}", nats_log_text());
        let pid_file = &pid_file;
        async move { pid_file.exists() && http_status(monitoring_port, "/varz").await == Some(200) }
    })
    .await;

    // The sidecar, as the pod runs it.
    let mut sync_argv = vec![common::binary().to_owned()];
    sync_argv.extend(
        layout
            .strings("sidecar_args")
            .iter()
            .map(|a| rooted.rewrite(a).unwrap_or_else(|| a.clone())),
    );
    let sync_log = dir.path().join("bosh-nats-sync.log");
    let mut sync = spawn(
        sync_as,
        &sync_argv,
        &sync_log,
        &[(bosh_nats_sync::config::ENV_PASSWORD, PASSWORD)],
    );
    let sync_log_text = || std::fs::read_to_string(&sync_log).unwrap_or_default();

    let url = format!("tls://127.0.0.1:{client_port}");
    let ca = tls_dir.join("ca.crt");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let cert = |cn: &str| pki.client(cn).unwrap().write_to(&certs, cn).unwrap();
    let admitted = |cn: String| {
        let (url, ca, cert) = (url.clone(), ca.clone(), cert(&cn));
        async move {
            match sim::nats::connect(&url, &ca, &cert).await {
                Ok(_) => true,
                Err(e) if sim::nats::is_authorization_violation(&e) => false,
                Err(e) => panic!("connecting as {cn} failed for another reason: {e}"),
            }
        }
    };

    if expect == Expect::SignalRefused {
        common::eventually(
            Duration::from_secs(30),
            "the refused signal in the sidecar's log",
            || {
                assert!(
                    sync.try_wait().unwrap().is_none(),
                    "bosh-nats-sync exited:\n{}",
                    sync_log_text()
                );
                // nats-server 2.9.10 writes its pid file with mode 0640: the sidecar reads
                // it and the signal is refused (EPERM). 2.14 and later write it 0600: the
                // read is refused first. Both say why, with the same fix, and the same reason.
                let log = sync_log_text();
                let refused = (log.contains("not permitted to signal nats-server")
                    || log.contains("not permitted to read the nats-server pid file"))
                    && log.contains("must run as the same user as nats-server")
                    && log.contains("reload_permission");
                async move { refused }
            },
        )
        .await;
        let auth = std::fs::read_to_string(&auth_file).unwrap();
        assert!(
            auth.contains(&sim::pki::bosh_subject(sim::pki::DIRECTOR_CN)),
            "written: {auth}"
        );
        assert!(
            !admitted(sim::pki::DIRECTOR_CN.to_owned()).await,
            "written but never loaded: nats-server did not get the signal"
        );
        common::eventually(Duration::from_secs(20), "the HTTP server", || async {
            http_status(http_port, &ready_path).await.is_some()
        })
        .await;
        assert_eq!(
            http_status(http_port, &ready_path).await,
            Some(503),
            "not ready: nothing loaded"
        );
        return;
    }

    common::eventually(
        Duration::from_secs(30),
        "the agent admitted after a SIGHUP reload",
        || {
            assert!(
                sync.try_wait().unwrap().is_none(),
                "bosh-nats-sync exited:\n{}",
                sync_log_text()
            );
            admitted(agent_cn(AGENT))
        },
    )
    .await;
    assert!(
        admitted(sim::pki::DIRECTOR_CN.to_owned()).await,
        "the director's subject file from the chart"
    );
    assert!(
        admitted(sim::pki::HM_CN.to_owned()).await,
        "the health monitor's subject file from the chart"
    );
    assert!(
        !admitted(bootstrap_agent_cn(AGENT)).await,
        "permanent credentials: no bootstrap user"
    );
    assert!(
        !admitted(agent_cn(NEW_AGENT)).await,
        "an unknown agent is refused"
    );

    // The probes the kubelet would send: the paths in the chart answer 200 on the rendered port.
    common::eventually(Duration::from_secs(20), "readiness probe 200", || async {
        http_status(http_port, &ready_path).await == Some(200)
    })
    .await;
    assert_eq!(
        http_status(http_port, &live_path).await,
        Some(200),
        "liveness probe"
    );

    // A new VM: the running sidecar's next pass (file watch or poll) admits it, by SIGHUP again.
    director.set_deployment(
        "cf",
        vec![
            Vm::agent(AGENT).permanent(true),
            Vm::agent(NEW_AGENT).permanent(true),
        ],
    );
    std::fs::write(
        sync_conf_dir.join("hm-subject"),
        std::fs::read(fixture_dir().join("sync-config/hm-subject")).unwrap(),
    )
    .unwrap();
    common::eventually(
        Duration::from_secs(30),
        "the new agent admitted",
        || async { admitted(agent_cn(NEW_AGENT)).await },
    )
    .await;

    let log = sync_log_text();
    assert!(!log.contains(PASSWORD), "the password reached the log");
    assert!(
        nats_log_text().contains("Reloaded"),
        "nats-server logged its reloads:\n{}",
        nats_log_text()
    );
    sync.kill().await.unwrap();
    nats.kill().await.unwrap();
}
