//! The shared integration-test environment: a generated PKI, the simulated director (and
//! UAA) over real HTTPS, a real nats-server with TLS `verify_and_map`, subject files, an
//! auth file, a config file written the way the BOSH job template writes it, and the real
//! `bosh-nats-sync` binary.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use sim::director::{DirectorConfig, DirectorSim, Vm};
use sim::nats::{NatsClient, NatsServer, Permission};
use sim::pki::{CertFiles, Pki, PkiFiles};
use sim::uaa::{UaaConfig, UaaSim};
use tempfile::TempDir;

pub const USER: &str = "nats-sync";
pub const PASSWORD: &str = "pw-Sekr1t-d1rector";
pub const CLIENT_ID: &str = "nats-sync-client";
pub const CLIENT_SECRET: &str = "cs-Sekr1t-uaa-client";
pub const DIRECTOR_CN: &str = "default.director.bosh-internal";
pub const HM_CN: &str = "default.hm.bosh-internal";

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_bosh-nats-sync")
}

/// The nats-server every test starts (`$NATS_SERVER`, else `nats-server` on PATH: see
/// `sim::nats::executable`), as an absolute path; fails naming what to install.
pub fn nats_server_path() -> PathBuf {
    let exe = sim::nats::executable();
    assert!(
        exe.is_file(),
        "{}",
        sim::nats::NatsError::NotInstalled(exe.clone())
    );
    std::fs::canonicalize(&exe).unwrap_or(exe)
}

/// How the simulated director authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Basic,
    Uaa,
}

/// One test's world. Everything lives in `dir` and stops when dropped.
pub struct Env {
    pub dir: TempDir,
    pub pki: Pki,
    pub files: PkiFiles,
    pub director: DirectorSim,
    pub uaa: Option<UaaSim>,
    pub nats: NatsServer,
    pub auth_file: PathBuf,
    pub director_subject_file: PathBuf,
    pub hm_subject_file: PathBuf,
    pub config_path: PathBuf,
    /// Callout mode (§12): the files `nats.callout` names; `None` in file mode.
    pub callout: Option<CalloutFiles>,
}

/// What `nats.callout` names, and the settings a test may change before it writes the
/// configuration again.
pub struct CalloutFiles {
    /// The service's client certificate (its own subject, a static user).
    pub service: CertFiles,
    pub issuer_seed_file: PathBuf,
    /// A curve seed: nats-server then seals its requests (`auth_callout.xkey`).
    pub xkey_seed_file: Option<PathBuf>,
    pub state_file: PathBuf,
    /// `nats.callout.user_ttl` (seconds).
    pub user_ttl: f64,
    /// `nats.callout.timeout` (seconds).
    pub timeout: f64,
}

/// The service's certificate in callout mode: a subject of its own.
pub const SERVICE_CN: &str = "default.nats-sync.bosh-internal";

impl Env {
    /// Director (with `vms` in deployment `cf`), nats-server started on the BOSH pre-start
    /// placeholder auth file, subject files for the director and health monitor, and a
    /// config file in the BOSH template's shape.
    pub async fn start(auth: Auth, vms: Vec<Vm>) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::generate().expect("pki");
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).unwrap();
        let files = pki.write_to(&pki_dir).expect("pki files");
        let tls = pki.server_config().expect("server tls");
        let (director, uaa) = match auth {
            Auth::Basic => (
                DirectorSim::start(DirectorConfig::basic(USER, PASSWORD).with_tls(tls))
                    .await
                    .unwrap(),
                None,
            ),
            Auth::Uaa => {
                let uaa =
                    UaaSim::start(UaaConfig::new(CLIENT_ID, CLIENT_SECRET).with_tls(tls.clone()))
                        .await
                        .unwrap();
                let director =
                    DirectorSim::start(DirectorConfig::uaa(uaa.director_auth()).with_tls(tls))
                        .await
                        .unwrap();
                (director, Some(uaa))
            }
        };
        director.set_deployment("cf", vms);
        let auth_file = dir.path().join("auth.json");
        std::fs::write(&auth_file, "{authorization: {token: f0oBar}}\n").unwrap();
        let director_subject_file = dir.path().join("director-subject");
        let hm_subject_file = dir.path().join("hm-subject");
        std::fs::write(
            &director_subject_file,
            format!("{}\n", sim::pki::bosh_subject(DIRECTOR_CN)),
        )
        .unwrap();
        std::fs::write(
            &hm_subject_file,
            format!("{}\n", sim::pki::bosh_subject(HM_CN)),
        )
        .unwrap();
        let nats_dir = dir.path().join("nats");
        std::fs::create_dir_all(&nats_dir).unwrap();
        let nats = NatsServer::start(&nats_dir, &pki, &auth_file)
            .await
            .expect("nats-server starts");
        let config_path = dir.path().join("bosh_nats_sync_config.yml");
        let env = Env {
            dir,
            pki,
            files,
            director,
            uaa,
            nats,
            auth_file,
            director_subject_file,
            hm_subject_file,
            config_path,
            callout: None,
        };
        env.write_config("");
        env
    }

    /// [`Env::start`] in callout mode (§12): a service certificate and an issuer seed, the
    /// configuration with `nats.admission: callout`, `bosh-nats-sync init` writing the auth
    /// file, and nats-server (re)started on it — as the BOSH job's pre-start does.
    pub async fn start_callout(auth: Auth, vms: Vec<Vm>) -> Env {
        Env::start_callout_with(auth, vms, false).await
    }

    /// [`Env::start_callout`], with a curve seed when `xkey`: the requests come sealed.
    pub async fn start_callout_with(auth: Auth, vms: Vec<Vm>, xkey: bool) -> Env {
        use std::os::unix::fs::PermissionsExt;
        let mut env = Env::start(auth, vms).await;
        env.enable_callout();
        if xkey {
            let path = env.dir.path().join("callout").join("xkey.seed");
            let key = bosh_nats_sync::callout::CurveKey::generate();
            std::fs::write(&path, key.seed().as_bytes()).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            env.callout.as_mut().unwrap().xkey_seed_file = Some(path);
            env.write_config("");
        }
        let init = env.run(&["init"]).await;
        assert!(
            init.status.success(),
            "init: {}{}",
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );
        let nats_dir = env.dir.path().join("nats-callout");
        std::fs::create_dir_all(&nats_dir).unwrap();
        env.nats = NatsServer::start(&nats_dir, &env.pki, &env.auth_file)
            .await
            .expect("nats-server starts with init's callout file");
        env.write_config("");
        env
    }

    /// Writes the service's certificate and an issuer seed, and the configuration in
    /// callout mode (nats-server is left as it is).
    pub fn enable_callout(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let env = self;
        let keys = env.dir.path().join("callout");
        std::fs::create_dir_all(&keys).unwrap();
        let service = env
            .pki
            .client(SERVICE_CN)
            .unwrap()
            .write_to(&keys, "service")
            .unwrap();
        let issuer_seed_file = keys.join("issuer.seed");
        let issuer = bosh_nats_sync::callout::IssuerKey::generate();
        std::fs::write(&issuer_seed_file, issuer.seed().as_bytes()).unwrap();
        std::fs::set_permissions(&issuer_seed_file, std::fs::Permissions::from_mode(0o600))
            .unwrap();
        env.callout = Some(CalloutFiles {
            service,
            issuer_seed_file,
            xkey_seed_file: None,
            state_file: env.dir.path().join("agents.json"),
            user_ttl: 3600.0,
            timeout: 1.0,
        });
        env.write_config("");
    }

    /// The `nats:` lines of callout mode, when on.
    fn callout_keys(&self) -> String {
        let Some(c) = &self.callout else {
            return String::new();
        };
        format!(
            "\x20 admission: callout\n\x20 callout:\n    url: {url}\n    cert_file: {cert}\n    key_file: {key}\n\
             \x20   ca_file: {ca}\n    issuer_seed_file: {seed}\n    state_file: {state}\n\
             \x20   user_ttl: {ttl}\n    timeout: {timeout}\n{xkey}",
            url = self.nats.client_url(),
            cert = c.service.cert.display(),
            key = c.service.key.display(),
            ca = self.files.ca_cert.display(),
            seed = c.issuer_seed_file.display(),
            state = c.state_file.display(),
            ttl = c.user_ttl,
            timeout = c.timeout,
            xkey = c
                .xkey_seed_file
                .as_ref()
                .map(|p| format!("    xkey_seed_file: {}\n", p.display()))
                .unwrap_or_default(),
        )
    }

    /// Writes the config file: the BOSH job template's keys (with `ca_cert`, as the
    /// template spells it), reload through the nats-server executable, no HTTP server, a
    /// short connection wait — then `extra` YAML lines appended under their sections.
    pub fn write_config(&self, extra: &str) {
        self.write_config_with(60.0, extra);
    }

    /// [`Env::write_config`] with another `intervals.poll_user_sync`.
    pub fn write_config_with(&self, poll_seconds: f64, extra: &str) {
        let creds = match self.uaa {
            Some(_) => format!(
                "  user:\n  password:\n  client_id: {CLIENT_ID}\n  client_secret: {CLIENT_SECRET}\n"
            ),
            None => {
                format!("  user: {USER}\n  password: {PASSWORD}\n  client_id:\n  client_secret:\n")
            }
        };
        let text = format!(
            "---\ndirector:\n  url: {url}\n{creds}  ca_cert: {ca}\n  director_subject_file: {ds}\n  hm_subject_file: {hs}\n\
             \x20 connection_wait_timeout: 0\n\
             intervals:\n  poll_user_sync: {poll_seconds}\n\
             nats:\n  config_file_path: {auth}\n  nats_server_executable: {exe}\n  nats_server_pid_file: {pid}\n\
             \x20 monitoring_url: {mon}\n{callout}\
             logfile: {log}\n\
             http:\n  enabled: false\n{extra}",
            url = self.director.url(),
            ca = self.files.ca_cert.display(),
            ds = self.director_subject_file.display(),
            hs = self.hm_subject_file.display(),
            auth = self.auth_file.display(),
            exe = nats_server_path().display(),
            pid = self.nats.pid_file().display(),
            mon = self.nats.monitoring_url(),
            callout = self.callout_keys(),
            log = self.log_path().display(),
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("bosh-nats-sync.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `bosh-nats-sync -c CONFIG ARGS…` to completion.
    pub async fn run(&self, args: &[&str]) -> Output {
        tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(binary())
                .arg("-c")
                .arg(&self.config_path)
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the command finishes within 60 s")
        .expect("the binary runs")
    }

    /// `once`, asserting its exit status.
    pub async fn once(&self, expect_success: bool) -> Output {
        let out = self.run(&["once"]).await;
        assert_eq!(
            out.status.success(),
            expect_success,
            "once exited {:?}\nstdout: {}\nstderr: {}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out
    }

    pub fn auth_text(&self) -> String {
        std::fs::read_to_string(&self.auth_file).unwrap()
    }

    /// Writes a client certificate for `C=USA, O=Cloud Foundry, CN=<cn>` into the test dir.
    pub fn cert(&self, cn: &str) -> CertFiles {
        let certs = self.dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        self.pki.client(cn).unwrap().write_to(&certs, cn).unwrap()
    }

    /// Connects to nats-server as `cn`.
    pub async fn connect(&self, cn: &str) -> Result<NatsClient, async_nats::ConnectError> {
        self.nats.connect(&self.cert(cn)).await
    }

    /// Whether nats-server admits a client certificate for `cn` (refusal must be an
    /// authorization violation, not some other failure).
    pub async fn admitted(&self, cn: &str) -> bool {
        match self.connect(cn).await {
            Ok(_) => true,
            Err(e) if sim::nats::is_authorization_violation(&e) => false,
            Err(e) => panic!("connecting as {cn} failed for another reason: {e}"),
        }
    }

    /// May agent `cn` publish to `subject`? The health monitor observes.
    pub async fn may_publish(&self, cn: &str, subject: &str) -> Permission {
        let publisher = self.connect(cn).await.expect("publisher connects");
        let observer = self
            .connect(HM_CN)
            .await
            .expect("the health monitor connects");
        sim::nats::probe_publish(&publisher, &observer, subject)
            .await
            .expect("probe is conclusive")
    }
}

/// The one polling loop of the tests: calls `check` every 20 ms until it returns `Ok`, for at
/// most `within`; then gives up with its last `Err`. Every wait of the tests goes through it
/// (no fixed sleeps).
pub async fn poll<T, E, F, Fut>(within: Duration, mut check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(last) if tokio::time::Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// [`poll`] until `check` returns `Ok`, failing the test with `what` and the last `Err`.
pub async fn until<T, F, Fut>(within: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    match poll(within, check).await {
        Ok(value) => value,
        Err(last) => panic!("timed out after {within:?} waiting for {what}; last: {last}"),
    }
}

/// [`poll`] until `check` holds, failing the test with `what`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let holds = poll(within, || {
        let check = check();
        async move { if check.await { Ok(()) } else { Err(()) } }
    });
    assert!(
        holds.await.is_ok(),
        "timed out after {within:?} waiting for: {what}"
    );
}

/// The file's identity, to show it was not rewritten.
pub fn identity(path: &Path) -> (u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

impl Env {
    /// [`Env::write_config_with`], then each `("section.key", "value")` of `keys` set in the
    /// written file: the key's line in its section is replaced, or added to the section (a
    /// missing section is appended). A second `intervals:` mapping would be a duplicate YAML
    /// key, hence this instead of more `extra` text.
    pub fn write_config_full(&self, poll_seconds: f64, keys: &[(&str, &str)], extra: &str) {
        self.write_config_with(poll_seconds, extra);
        let mut lines: Vec<String> = std::fs::read_to_string(&self.config_path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        for (dotted, value) in keys {
            let (section, key) = dotted
                .split_once('.')
                .expect("keys are spelled section.key");
            let line = format!("  {key}: {value}");
            let Some(start) = lines.iter().position(|l| *l == format!("{section}:")) else {
                lines.push(format!("{section}:"));
                lines.push(line);
                continue;
            };
            let end = lines[start + 1..]
                .iter()
                .position(|l| !l.starts_with("  "))
                .map_or(lines.len(), |i| start + 1 + i);
            match lines[start + 1..end]
                .iter()
                .position(|l| l.starts_with(&format!("  {key}:")))
            {
                Some(i) => lines[start + 1 + i] = line,
                None => lines.insert(end, line),
            }
        }
        std::fs::write(&self.config_path, lines.join("\n") + "\n").unwrap();
    }

    /// Starts `bosh-nats-sync -c CONFIG` (the long-running mode the BOSH job uses) as a child
    /// that is killed when the handle is dropped. Its stdout and stderr go to
    /// [`Env::run_output_path`] (the log itself goes to the configured `logfile`).
    pub fn spawn_run(&self) -> Running {
        let out = std::fs::File::create(self.run_output_path()).unwrap();
        let child = tokio::process::Command::new(binary())
            .arg("-c")
            .arg(&self.config_path)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        Running { child }
    }

    pub fn run_output_path(&self) -> PathBuf {
        self.dir.path().join("run-output.txt")
    }

    /// The log and the process output, for assertion messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- log:\n{}\n--- stdout/stderr:\n{}\n--- nats-server log (tail):\n{}",
            self.log(),
            std::fs::read_to_string(self.run_output_path()).unwrap_or_default(),
            self.nats
                .log()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    /// Waits until the log holds at least `n` occurrences of `needle`.
    pub async fn log_count_reaches(&self, within: Duration, needle: &str, n: usize) {
        let reached = poll(within, || async {
            if self.log().matches(needle).count() >= n {
                Ok(())
            } else {
                Err(())
            }
        });
        assert!(
            reached.await.is_ok(),
            "timed out after {within:?} waiting for {n} × {needle:?} in the log\n{}",
            self.diagnostics()
        );
    }
}

/// A running `bosh-nats-sync -c CONFIG`; killed when dropped.
pub struct Running {
    pub child: tokio::process::Child,
}

impl Running {
    pub fn pid(&self) -> nix::unistd::Pid {
        let pid = self
            .child
            .id()
            .expect("the process has not been reaped yet");
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pids fit in i32"))
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("the process can be signalled");
    }

    /// Whether the process is still running (it must not exit on its own).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait works").is_none()
    }

    /// Waits for the exit, failing the test after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the process did not exit within {within:?}"))
            .expect("waiting for the child works")
    }
}

/// A TCP port on 127.0.0.1 for a process the test starts ([`sim::ports::free_port`]).
pub fn free_port() -> u16 {
    sim::ports::free_port()
}

impl Env {
    /// [`Env::write_config_full`] with the HTTP server enabled on `127.0.0.1:<free port>`;
    /// returns its base URL (`http://127.0.0.1:PORT`).
    pub fn write_config_http(
        &self,
        poll_seconds: f64,
        keys: &[(&str, &str)],
        extra: &str,
    ) -> String {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut all = vec![("http.enabled", "true"), ("http.listen", listen.as_str())];
        all.extend_from_slice(keys);
        self.write_config_full(poll_seconds, &all, extra);
        format!("http://{listen}")
    }
}

impl Env {
    /// The desired users for `agents` (id, has permanent credentials), computed by the
    /// library from this env's subject files — what a converged auth file must hold.
    pub fn expected_users(
        &self,
        agents: &[(&str, bool)],
    ) -> bosh_nats_sync::users::reference::Users {
        use bosh_nats_sync::pass::desired::{self, Subject, Subjects};
        let subject = |path: &Path| {
            Subject::parse(&std::fs::read_to_string(path).unwrap())
                .unwrap()
                .expect("the env writes both subjects")
        };
        let subjects = Subjects {
            director: Some(subject(&self.director_subject_file)),
            hm: Some(subject(&self.hm_subject_file)),
        };
        let vms: Vec<bosh_nats_sync::vm::Vm> = agents
            .iter()
            .map(|(id, permanent)| bosh_nats_sync::vm::Vm {
                agent_id: Some((*id).to_owned()),
                permanent_nats_credentials: *permanent,
            })
            .collect();
        bosh_nats_sync::users::reference::Users(desired::compute(&subjects, vms).users.to_users())
    }
}

/// An HTTP client for the binary's endpoints (`/metrics`, `/status`, …).
pub fn http() -> reqwest::Client {
    bosh_nats_sync::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}

/// Polls `check` until it holds (printing how long that took, for `--nocapture`); after
/// `within`, fails with the process's log.
/// `GET {base}/status` of a running program, as JSON.
pub async fn status(base: &str) -> serde_json::Value {
    http()
        .get(format!("{base}/status"))
        .send()
        .await
        .expect("/status answers")
        .json()
        .await
        .expect("/status is JSON")
}

/// `GET {base}/metrics` of a running program.
pub async fn metrics(base: &str) -> String {
    http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics is text")
}

pub async fn within<F, Fut>(env: &Env, within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    let held = poll(within, || {
        let check = check();
        async move { if check.await { Ok(()) } else { Err(()) } }
    });
    assert!(
        held.await.is_ok(),
        "timed out after {within:?} waiting for: {what}\n{}",
        env.diagnostics()
    );
    eprintln!("{:>8.3} s until {what}", start.elapsed().as_secs_f64());
}
