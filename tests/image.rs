//! The container image run for real without a container runtime (docs/contract.md §10, "The
//! image"; docs/kubernetes.md, "Release build and image"): the image `scripts/build-image`
//! built (named by `BOSH_NATS_SYNC_IMAGE`; `tests/image/run.sh` builds it and runs these
//! tests) is exported with the container engine (`create` + `export`, which need no runtime)
//! and its entrypoint is run from the exported root filesystem with `chroot`, as the image's
//! user (UID 65532, no supplementary groups, no capabilities), with the image's environment
//! and nothing else: no shell, no libc, no loader, no other file than the image's own and the
//! configuration each test places inside, as the chart mounts it.
//!
//! Checked: the root filesystem holds exactly the binary, the CA bundle, passwd and group;
//! the image's configuration (user, entrypoint, `PATH`, port) is what the chart relies on;
//! `--version` and `check-config` run; a one-shot pass (`once`) against the simulated director
//! over HTTPS syncs a real nats-server (run as the same UID, reloaded by SIGHUP), verifying the
//! director with the CA the configuration names — and, with none named, with the image's CA
//! bundle: refused while the bundle lacks the director's CA, an error naming the empty trust
//! store when the bundle is removed, and accepted by an image whose bundle has the CA added.
//!
//! Every test needs root (for `chroot` and to switch users) and the image: it fails, saying
//! so, without them; `cargo test` skips them (ignored), `tests/image/run.sh` runs them.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use sim::director::{DirectorConfig, DirectorSim, Vm};
use sim::pki::{CertFiles, Pki, agent_cn};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// The image's user: `USER 65532:65532` in the Containerfile, the chart's `runAsUser`.
const UID: u32 = 65532;
/// The environment variable naming the image under test.
const IMAGE_ENV: &str = "BOSH_NATS_SYNC_IMAGE";
const AGENT: &str = "1ac7e5e2-0000-4000-8000-00000000da7a";
const USER: &str = "nats-sync";
const PASSWORD: &str = "pw-Image-Sekr1t";

/// Every file the image holds, with its mode (all root's), and nothing more.
const IMAGE_FILES: [(&str, u32); 4] = [
    ("etc/group", 0o644),
    ("etc/passwd", 0o644),
    ("etc/ssl/certs/ca-certificates.crt", 0o644),
    ("usr/local/bin/bosh-nats-sync", 0o755),
];
const IMAGE_DIRS: [&str; 6] = [
    "etc",
    "etc/ssl",
    "etc/ssl/certs",
    "usr",
    "usr/local",
    "usr/local/bin",
];
/// What `docker export` adds to every container's filesystem (mount points and files the
/// runtime fills in, all empty in an export; `podman export` adds none of them). They may be
/// present, and must hold nothing.
const ENGINE_ADDED: [&str; 8] = [
    ".dockerenv",
    "dev",
    "proc",
    "sys",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
    "etc/mtab",
];

/// Where the tests place the sidecar's files inside the root filesystem, as the chart mounts
/// them (tests/chart/fixtures/sidecar): the ConfigMap and the shared state volume.
const CONFIG_DIR: &str = "etc/bosh-nats-sync";
const STATE_DIR: &str = "var/run/nats";

fn engine() -> String {
    std::env::var("CONTAINER_ENGINE")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "podman".to_owned())
}

/// The image under test; fails naming how to get one.
fn image() -> String {
    std::env::var(IMAGE_ENV)
        .ok()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| {
            panic!("{IMAGE_ENV} is not set: run tests/image/run.sh, which builds the image with scripts/build-image and names it")
        })
}

/// Fails the test unless this process may `chroot` and switch users.
fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "chroot and switching to UID {UID} need root: run this test as root (CI does)"
    );
}

/// Runs the container engine; its stdout, or a failure quoting the command and its stderr.
fn run_engine(args: &[&str]) -> String {
    let engine = engine();
    let out = std::process::Command::new(&engine)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {engine}: {e}"));
    assert!(
        out.status.success(),
        "`{engine} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the engine prints UTF-8")
}

/// The image's configuration (`User`, `Entrypoint`, `Env`, `ExposedPorts`, …).
fn image_config(image: &str) -> Json {
    let text = run_engine(&["image", "inspect", "--format", "{{json .Config}}", image]);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{image}'s config: {e}: {text}"))
}

/// An image's root filesystem, exported into a directory: `create` (which runs nothing) and
/// `export`, then unpacked as root, so owners and modes are the image's.
struct Rootfs {
    root: PathBuf,
    config: Json,
}

impl Rootfs {
    fn export(image: &str, dir: &Path, name: &str) -> Rootfs {
        let root = dir.join(name);
        std::fs::create_dir(&root).unwrap();
        // The image's / : what the chrooted process sees as its root directory.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tar = dir.join(format!("{name}.tar"));
        let id = run_engine(&["create", image]);
        let id = id.trim();
        let exported = std::process::Command::new(engine())
            .args(["export", "-o"])
            .arg(&tar)
            .arg(id)
            .status();
        run_engine(&["rm", id]);
        assert!(
            exported.as_ref().is_ok_and(|s| s.success()),
            "`{} export` of {image}: {exported:?}",
            engine()
        );
        let untar = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&root)
            .arg("--numeric-owner")
            .status()
            .unwrap();
        assert!(untar.success(), "tar -xf {}: {untar}", tar.display());
        std::fs::remove_file(&tar).unwrap();
        Rootfs {
            root,
            config: image_config(image),
        }
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// The image's entrypoint followed by `args`, run chrooted into this root filesystem as
    /// UID 65532 (group 65532, no supplementary groups: a root process that changes its UID
    /// loses every capability) with the image's environment and `env`, the working directory
    /// `/`: what a container runtime does, without namespaces or cgroups.
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let entrypoint: Vec<String> = self.config["Entrypoint"]
            .as_array()
            .unwrap_or_else(|| panic!("the image has no entrypoint: {}", self.config))
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let image_env: Vec<(String, String)> = self.config["Env"]
            .as_array()
            .map(|vars| {
                vars.iter()
                    .map(|v| {
                        let (k, v) = v.as_str().unwrap().split_once('=').unwrap();
                        (k.to_owned(), v.to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut cmd = Command::new(&entrypoint[0]);
        cmd.args(&entrypoint[1..])
            .args(args)
            .env_clear()
            .envs(image_env)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let root = CString::new(self.root.as_os_str().as_bytes()).unwrap();
        let id = (
            nix::unistd::Uid::from_raw(UID),
            nix::unistd::Gid::from_raw(UID),
        );
        // SAFETY: between fork and exec only system calls run, on values prepared before the
        // fork (no allocation, no lock).
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::chroot(root.as_c_str())?;
                nix::unistd::chdir(c"/")?;
                nix::unistd::setgroups(&[])?;
                nix::unistd::setgid(id.1)?;
                nix::unistd::setuid(id.0)?;
                Ok(())
            });
        }
        cmd
    }

    /// [`Rootfs::command`] run to its end (at most a minute).
    async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let child = self.command(args, env).spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run the entrypoint in {} as UID {UID}: {e}",
                self.root.display()
            )
        });
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("bosh-nats-sync {args:?} ran for more than a minute"))
            .unwrap()
    }

    /// Writes `content` to `inside` (parents created), owned by root and readable by all, as
    /// a ConfigMap's files are.
    fn place(&self, inside: &str, content: &str) -> PathBuf {
        let path = self.path(inside);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every entry under `root` (relative paths), directories included.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, std::fs::Metadata)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .display()
            .to_string();
        if meta.is_dir() {
            walk(root, &entry.path(), out);
        }
        out.push((rel, meta));
    }
}

fn tempdir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    // nats-server runs as UID 65532 and reads its files here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the image: tests/image/run.sh builds it and runs these"]
async fn the_image_holds_the_binary_a_ca_bundle_and_a_non_root_user_and_nothing_else() {
    require_root();
    let image = image();
    let dir = tempdir();
    let rootfs = Rootfs::export(&image, dir.path(), "rootfs");

    // The configuration the chart relies on: the sidecar container gives only `args`, runs as
    // 65532 (runAsNonRoot needs a numeric user), and is probed on 9758.
    let config = &rootfs.config;
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/bosh-nats-sync"]),
        "{config}"
    );
    assert!(
        config["Cmd"].is_null() || config["Cmd"] == serde_json::json!([]),
        "no default arguments: {config}"
    );
    assert_eq!(
        config["Env"],
        serde_json::json!(["PATH=/usr/local/bin"]),
        "{config}"
    );
    assert!(config["ExposedPorts"].get("9758/tcp").is_some(), "{config}");

    // Exactly the four files, root's and not writable by the image's user; no loader, no libc,
    // no shell, no other file.
    let mut entries = Vec::new();
    walk(&rootfs.root, &rootfs.root, &mut entries);
    let mut files = Vec::new();
    for (rel, meta) in &entries {
        let added_by_engine = ENGINE_ADDED
            .iter()
            .any(|a| rel == a || rel.starts_with(&format!("{a}/")));
        if added_by_engine {
            assert!(
                meta.is_dir() || meta.is_symlink() || meta.len() == 0,
                "{rel} (added by the engine) holds something: {} bytes",
                meta.len()
            );
        } else if meta.is_dir() {
            assert!(
                IMAGE_DIRS.contains(&rel.as_str()),
                "unexpected directory {rel}"
            );
        } else {
            assert!(meta.is_file(), "{rel} is not a regular file");
            files.push((
                rel.clone(),
                format!("{:o}", meta.mode() & 0o7777),
                meta.uid(),
                meta.gid(),
            ));
        }
    }
    files.sort();
    let expected: Vec<_> = IMAGE_FILES
        .iter()
        .map(|(p, mode)| ((*p).to_owned(), format!("{mode:o}"), 0, 0))
        .collect();
    assert_eq!(files, expected, "the image's files (path, mode, uid, gid)");

    let passwd = std::fs::read_to_string(rootfs.path("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    let group = std::fs::read_to_string(rootfs.path("etc/group")).unwrap();
    assert!(group.lines().any(|l| l == "nonroot:x:65532:"), "{group}");
    let bundle = std::fs::read_to_string(rootfs.path("etc/ssl/certs/ca-certificates.crt")).unwrap();
    let anchors = bundle.matches("-----BEGIN CERTIFICATE-----").count();
    assert!(
        anchors > 50,
        "a public CA bundle, got {anchors} certificates"
    );
    let size: u64 = run_engine(&["image", "inspect", "--format", "{{.Size}}", &image])
        .trim()
        .parse()
        .expect("the image's size in bytes");
    assert!(
        size < 20 << 20,
        "the image is {size} bytes; the goal is under 20 MiB"
    );

    // It runs with nothing but that: a static binary, as 65532.
    let out = rootfs.run(&["--version"], &[]).await;
    assert!(out.status.success(), "--version: {}", text(&out));
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!("bosh-nats-sync {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );

    // check-config on a configuration placed inside, with its CA file: valid; then a CA file
    // that holds no certificate: exit 2, naming the file as the binary sees it.
    let pki = Pki::generate().unwrap();
    let config_file = format!("/{CONFIG_DIR}/config.yml");
    let ca_file = format!("/{CONFIG_DIR}/director-ca.pem");
    rootfs.place(&ca_file, pki.ca.cert_pem());
    rootfs.place(
        &config_file,
        &sync_config("https://10.0.0.6:25555", Some(&ca_file), 8222),
    );
    let password = [(bosh_nats_sync::config::ENV_PASSWORD, PASSWORD)];
    let out = rootfs
        .run(&["-c", &config_file, "check-config"], &password)
        .await;
    assert!(out.status.success(), "check-config: {}", text(&out));
    rootfs.place(&ca_file, "not a certificate\n");
    let out = rootfs
        .run(&["-c", &config_file, "check-config"], &password)
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{ca_file}: holds no PEM certificate")),
        "{stderr}"
    );
}

/// A one-shot pass, verifying the director with the CA file the configuration names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the image: tests/image/run.sh builds it and runs these"]
async fn a_pass_from_the_image_verifies_the_director_with_the_configured_ca() {
    require_root();
    let image = image();
    let dir = tempdir();
    let rootfs = Rootfs::export(&image, dir.path(), "rootfs");
    let world = World::start(dir.path(), &rootfs, Arc::new(Pki::generate().unwrap())).await;
    let ca_file = format!("/{CONFIG_DIR}/director-ca.pem");
    rootfs.place(&ca_file, world.pki.ca.cert_pem());
    world.write_config(&rootfs, Some(&ca_file));

    let out = world.once(&rootfs).await;
    assert!(out.status.success(), "once: {}", text(&out));
    world.assert_synced(&rootfs, &out).await;
}

/// With no CA file configured, the trust store is the image's CA bundle: a director whose CA
/// is not in it is refused, an image without the bundle says its trust store is empty, and an
/// image whose bundle has the director's CA added passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the image: tests/image/run.sh builds it and runs these"]
async fn without_a_configured_ca_the_image_trusts_its_ca_bundle() {
    require_root();
    let image = image();
    let dir = tempdir();
    let rootfs = Rootfs::export(&image, dir.path(), "rootfs");
    let pki = Arc::new(Pki::generate().unwrap());
    let world = World::start(dir.path(), &rootfs, pki.clone()).await;
    world.write_config(&rootfs, None);

    // The public bundle does not hold the test CA: the handshake fails, naming the director.
    let out = world.once(&rootfs).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains(&format!("TLS failure talking to {}", world.director.url()))
            && log.contains("UnknownIssuer"),
        "{}",
        text(&out)
    );

    // Without the bundle there is no trust store at all, and the error says so: the bundle is
    // the one place the binary looked.
    let bundle_path = rootfs.path("etc/ssl/certs/ca-certificates.crt");
    let bundle = std::fs::read_to_string(&bundle_path).unwrap();
    std::fs::remove_file(&bundle_path).unwrap();
    let out = world.once(&rootfs).await;
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains(
            "no CA file is configured and the system trust store holds no usable certificate"
        ),
        "{all}"
    );

    // An image built on this one whose bundle also holds the director's CA: the same
    // configuration, no CA file named, passes.
    let variant = VariantImage::build(
        &image,
        dir.path(),
        &format!("{bundle}{}", world.pki.ca.cert_pem()),
    );
    let rootfs = Rootfs::export(&variant.tag, dir.path(), "variant-rootfs");
    let world = World::start(dir.path(), &rootfs, pki).await;
    world.write_config(&rootfs, None);
    let out = world.once(&rootfs).await;
    assert!(out.status.success(), "once: {}", text(&out));
    world.assert_synced(&rootfs, &out).await;
}

/// An image `FROM` the one under test with another CA bundle; removed when dropped.
struct VariantImage {
    tag: String,
}

impl VariantImage {
    fn build(base: &str, dir: &Path, bundle: &str) -> VariantImage {
        let context = dir.join("variant-context");
        std::fs::create_dir(&context).unwrap();
        std::fs::write(
            context.join("Containerfile"),
            format!("FROM {base}\nCOPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n"),
        )
        .unwrap();
        let file = context.join("ca-certificates.crt");
        std::fs::write(&file, bundle).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let tag = format!("localhost/bosh-nats-sync-test-ca:{}", std::process::id());
        run_engine(&[
            "build",
            "--quiet",
            "-t",
            &tag,
            "-f",
            &context.join("Containerfile").display().to_string(),
            &context.display().to_string(),
        ]);
        VariantImage { tag }
    }
}

impl Drop for VariantImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new(engine())
            .args(["rmi", &self.tag])
            .stdout(Stdio::null())
            .status();
    }
}

/// The bosh-nats-sync configuration placed in the image, in the chart's shape: the director
/// over HTTPS with basic auth (the password from the environment, as the chart passes it),
/// the subject files and the state volume where the pod mounts them, SIGHUP reloads (no
/// nats-server executable in the image) verified through the monitoring port.
fn sync_config(url: &str, ca_file: Option<&str>, monitoring_port: u16) -> String {
    let ca = ca_file
        .map(|f| format!("  director_ca_cert: {f}\n"))
        .unwrap_or_default();
    format!(
        "director:\n  url: {url}\n  user: {USER}\n{ca}  \
         director_subject_file: /{CONFIG_DIR}/director-subject\n  \
         hm_subject_file: /{CONFIG_DIR}/hm-subject\n  connection_wait_timeout: 5\n\
         intervals:\n  poll_user_sync: 10\n\
         nats:\n  config_file_path: /{STATE_DIR}/auth.json\n  \
         nats_server_pid_file: /{STATE_DIR}/nats.pid\n  \
         monitoring_url: http://127.0.0.1:{monitoring_port}\n\
         http:\n  enabled: false\n"
    )
}

/// The simulated director (one deployment, one agent) over HTTPS, and a real nats-server run
/// as UID 65532 on the host whose auth file and pid file are in the image's state directory:
/// what the pod's nats container shares with the sidecar. chroot keeps the network and the
/// process namespace, so the binary reaches both on 127.0.0.1 and signals nats-server.
struct World {
    pki: Arc<Pki>,
    director: DirectorSim,
    nats: Child,
    nats_dir: PathBuf,
    client_port: u16,
    monitoring_port: u16,
    certs: PathBuf,
}

impl World {
    /// Starts both for `rootfs` (exported into `dir`), the director with a certificate of
    /// `pki`'s CA; nats-server's own files go to `dir/<rootfs>-nats`.
    async fn start(dir: &Path, rootfs: &Rootfs, pki: Arc<Pki>) -> World {
        let director = DirectorSim::start(
            DirectorConfig::basic(USER, PASSWORD).with_tls(pki.server_config().unwrap()),
        )
        .await
        .unwrap();
        director.set_deployment("cf", vec![Vm::agent(AGENT).permanent(true)]);

        let name = rootfs
            .root
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let nats_dir = dir.join(format!("{name}-nats"));
        let certs = dir.join(format!("{name}-certs"));
        std::fs::create_dir(&nats_dir).unwrap();
        std::fs::create_dir(&certs).unwrap();
        let files = pki.write_to(&nats_dir).unwrap();
        let (client_port, monitoring_port) = (sim::ports::free_port(), sim::ports::free_port());
        prepare_state(rootfs);
        let conf = nats_dir.join("nats.conf");
        std::fs::write(
            &conf,
            nats_conf(
                rootfs,
                client_port,
                monitoring_port,
                &files.server,
                &files.ca_cert,
            ),
        )
        .unwrap();
        chown_tree(&nats_dir);
        let nats = spawn_nats(&nats_dir, &conf);
        let mut world = World {
            pki,
            director,
            nats,
            nats_dir,
            client_port,
            monitoring_port,
            certs,
        };
        world.wait_for_nats(rootfs).await;
        world
    }

    fn nats_log(&self) -> String {
        std::fs::read_to_string(self.nats_dir.join("nats-server.log")).unwrap_or_default()
    }

    async fn wait_for_nats(&mut self, rootfs: &Rootfs) {
        let pid_file = rootfs.path(STATE_DIR).join("nats.pid");
        let varz = format!("http://127.0.0.1:{}/varz", self.monitoring_port);
        let http = common::http();
        common::until(
            Duration::from_secs(20),
            "nats-server listening, its pid file written",
            || {
                let exited = self.nats.try_wait().unwrap();
                let (pid_file, varz, http) = (pid_file.clone(), varz.clone(), http.clone());
                let log = self.nats_log();
                async move {
                    if let Some(status) = exited {
                        panic!("nats-server exited ({status}):\n{log}");
                    }
                    let up = http
                        .get(&varz)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    if up && pid_file.exists() {
                        Ok(())
                    } else {
                        Err(format!(
                            "monitoring answers: {up}; pid file: {}",
                            pid_file.exists()
                        ))
                    }
                }
            },
        )
        .await;
    }

    fn write_config(&self, rootfs: &Rootfs, ca_file: Option<&str>) {
        rootfs.place(
            &format!("/{CONFIG_DIR}/config.yml"),
            &sync_config(&self.director.url(), ca_file, self.monitoring_port),
        );
        rootfs.place(
            &format!("/{CONFIG_DIR}/director-subject"),
            &format!("{}\n", sim::pki::bosh_subject(sim::pki::DIRECTOR_CN)),
        );
        rootfs.place(
            &format!("/{CONFIG_DIR}/hm-subject"),
            &format!("{}\n", sim::pki::bosh_subject(sim::pki::HM_CN)),
        );
    }

    async fn once(&self, rootfs: &Rootfs) -> Output {
        let config = format!("/{CONFIG_DIR}/config.yml");
        rootfs
            .run(
                &["-c", &config, "once"],
                &[(bosh_nats_sync::config::ENV_PASSWORD, PASSWORD)],
            )
            .await
    }

    fn cert(&self, cn: &str) -> CertFiles {
        self.pki
            .client(cn)
            .unwrap()
            .write_to(&self.certs, cn)
            .unwrap()
    }

    async fn admitted(&self, cn: &str) -> bool {
        let url = format!("tls://127.0.0.1:{}", self.client_port);
        match sim::nats::connect(&url, &self.nats_dir.join("ca.crt"), &self.cert(cn)).await {
            Ok(_) => true,
            Err(e) if sim::nats::is_authorization_violation(&e) => false,
            Err(e) => panic!("connecting as {cn} failed for another reason: {e}"),
        }
    }

    /// After a successful pass: the auth file was written by the image's user, nats-server
    /// reloaded it, the agent and the director are admitted, an unknown agent is not, and
    /// the password is in no output.
    async fn assert_synced(&self, rootfs: &Rootfs, out: &Output) {
        let auth = rootfs.path(STATE_DIR).join("auth.json");
        let meta = std::fs::metadata(&auth).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (UID, UID),
            "the auth file is written by the image's user"
        );
        let text_out = text(out);
        assert!(
            !text_out.contains(PASSWORD),
            "the password reached the output"
        );
        assert!(
            self.admitted(&agent_cn(AGENT)).await,
            "the agent is admitted after the pass\nauth file: {}\nnats-server:\n{}\n{text_out}",
            std::fs::read_to_string(&auth).unwrap(),
            self.nats_log()
        );
        assert!(self.admitted(sim::pki::DIRECTOR_CN).await, "the director");
        assert!(
            !self
                .admitted(&agent_cn("1ac7e5e2-0000-4000-8000-0000000000ff"))
                .await,
            "an agent the director does not know"
        );
        assert!(self.nats_log().contains("Reloaded"), "{}", self.nats_log());
    }
}

/// The state volume inside the image: the init container's placeholder, owned by 65532.
fn prepare_state(rootfs: &Rootfs) {
    let state = rootfs.path(STATE_DIR);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("auth.json"),
        "{authorization: {token: f0oBar}}\n",
    )
    .unwrap();
    chown_tree(&state);
}

/// TLS with `verify_and_map`, monitoring, the pid file and the auth file in the image's state
/// directory; nats-server joins an include path to the config file's directory (§10), so the
/// include is relative (nats.conf's directory and the root filesystem are siblings).
fn nats_conf(
    rootfs: &Rootfs,
    client_port: u16,
    monitoring_port: u16,
    server: &CertFiles,
    ca: &Path,
) -> String {
    let include = Path::new("..")
        .join(rootfs.root.file_name().unwrap())
        .join(STATE_DIR)
        .join("auth.json");
    format!(
        "listen: \"127.0.0.1:{client_port}\"\nhttp: \"127.0.0.1:{monitoring_port}\"\npid_file: \"{}\"\n\
         tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify_and_map: true\n  timeout: 5\n}}\n\
         include \"{}\"\n",
        rootfs.path(STATE_DIR).join("nats.pid").display(),
        server.cert.display(),
        server.key.display(),
        ca.display(),
        include.display()
    )
}

/// nats-server as UID 65532, no capabilities, the way the chart runs its container; its log
/// in `nats_dir/nats-server.log`.
fn spawn_nats(nats_dir: &Path, conf: &Path) -> Child {
    let log = std::fs::File::create(nats_dir.join("nats-server.log")).unwrap();
    let exe = std::fs::canonicalize(sim::nats::executable()).unwrap_or_else(|e| {
        panic!(
            "{}: {e}",
            sim::nats::NatsError::NotInstalled(sim::nats::executable())
        )
    });
    Command::new("setpriv")
        .args([
            format!("--reuid={UID}"),
            format!("--regid={UID}"),
            "--clear-groups".to_owned(),
            "--inh-caps=-all".to_owned(),
            "--bounding-set=-all".to_owned(),
            "--no-new-privs".to_owned(),
            "--".to_owned(),
        ])
        .arg(exe)
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run nats-server through setpriv: {e}"))
}

/// `chown -R 65532:65532`.
fn chown_tree(root: &Path) {
    let owner = Some(nix::unistd::Uid::from_raw(UID));
    let group = Some(nix::unistd::Gid::from_raw(UID));
    nix::unistd::chown(root, owner, group).unwrap();
    if root.is_dir() {
        for entry in std::fs::read_dir(root).unwrap() {
            chown_tree(&entry.unwrap().path());
        }
    }
}
