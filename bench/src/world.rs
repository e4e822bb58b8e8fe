//! The simulated environment a benchmark runs in: test PKI, the simulated director over
//! HTTPS in this process, subject files, a SIGHUP-counting stand-in for nats-server, and one
//! directory per measured cell with its auth file and configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use sim::director::{DirectorConfig, DirectorSim, Endpoint, Vm};
use sim::fault::Fault;
use sim::pki::{Pki, PkiFiles};

const USER: &str = "bench";
const PASSWORD: &str = "bench-password";

/// The placeholder BOSH's pre-start writes before bosh-nats-sync ever ran.
pub const PLACEHOLDER: &str = "{authorization: {token: f0oBar}}\n";

/// Invariant: `pid_file` holds this process's pid, and `sighups` counts every SIGHUP this
/// process received since `start` — so a binary configured with `pid_file` and no
/// executable "reloads" by incrementing `sighups`.
pub struct World {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub files: PkiFiles,
    pub director: DirectorSim,
    director_subject: PathBuf,
    hm_subject: PathBuf,
    pid_file: PathBuf,
    sighups: Arc<AtomicU64>,
    /// A command the binary runs under (profilers), split on spaces.
    pub wrapper: Vec<String>,
}

/// The files of one measured cell.
pub struct CellFiles {
    pub dir: PathBuf,
    pub auth_file: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

/// What a cell's configuration varies.
pub struct CellConfig<'a> {
    pub concurrency: usize,
    pub poll_seconds: f64,
    /// `(pid file, monitoring URL)` of a real nats-server instead of the stand-in.
    pub nats: Option<(&'a Path, &'a str)>,
    /// `intervals.watch` (§6.6); `None` leaves the key out (the program's default).
    pub watch: Option<f64>,
    /// `nats.admission: callout` with these `nats.callout` keys (§12.2); `None`: file mode.
    pub callout: Option<&'a CalloutKeys>,
}

/// The files and settings of `nats.callout` (§12.2).
pub struct CalloutKeys {
    /// The local nats-server (`tls://127.0.0.1:PORT`).
    pub url: String,
    /// The service's own client certificate (a static user of the auth file).
    pub service: sim::pki::CertFiles,
    /// The issuer's account seed, mode 0600.
    pub issuer_seed_file: PathBuf,
    pub state_file: PathBuf,
    /// `nats.callout.timeout`, seconds.
    pub timeout: f64,
    /// `nats.callout.user_ttl`, seconds.
    pub user_ttl: f64,
}

impl World {
    pub async fn start(wrapper: Option<&str>) -> anyhow::Result<World> {
        let dir = tempfile::Builder::new().prefix("bns-bench-").tempdir()?;
        let pki = Pki::generate().context("generating the PKI")?;
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir)?;
        let files = pki.write_to(&pki_dir).context("writing the PKI")?;
        let tls = pki.server_config().context("server TLS config")?;
        let director = DirectorSim::start(DirectorConfig::basic(USER, PASSWORD).with_tls(tls))
            .await
            .context("starting the simulated director")?;
        let director_subject = dir.path().join("director-subject");
        let hm_subject = dir.path().join("hm-subject");
        std::fs::write(
            &director_subject,
            sim::pki::bosh_subject("default.director.bosh-internal") + "\n",
        )?;
        std::fs::write(
            &hm_subject,
            sim::pki::bosh_subject("default.hm.bosh-internal") + "\n",
        )?;
        let pid_file = dir.path().join("stand-in.pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id()))?;
        let sighups = Arc::new(AtomicU64::new(0));
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP counter")?;
        let counter = sighups.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(World {
            dir,
            pki,
            files,
            director,
            director_subject,
            hm_subject,
            pid_file,
            sighups,
            wrapper: wrapper
                .map(|w| w.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
        })
    }

    /// SIGHUPs received so far (reloads signalled to the stand-in).
    pub fn sighups(&self) -> u64 {
        self.sighups.load(Ordering::SeqCst)
    }

    /// Replaces the director's state: `deployments` on-demand service instances with
    /// `vms` VMs each, half of them with permanent NATS credentials (so 1.5 users per VM).
    pub fn populate(&self, deployments: usize, vms: usize) {
        self.director
            .set_deployments((0..deployments).map(|d| (deployment_name(d), vm_list(d, vms))));
    }

    /// Every director request (`/info`, `/deployments`, `/vms`, `/events`) answers after
    /// `latency`.
    pub fn set_latency(&self, latency: Duration) {
        for endpoint in [
            Endpoint::Info,
            Endpoint::Deployments,
            Endpoint::Vms,
            Endpoint::Events,
        ] {
            if latency.is_zero() {
                self.director.clear_fault(endpoint);
            } else {
                self.director.set_fault(endpoint, Fault::delay(latency));
            }
        }
    }

    /// Requests the director answered since the last `reset_stats`.
    pub fn requests(&self) -> u64 {
        [
            Endpoint::Info,
            Endpoint::Deployments,
            Endpoint::Vms,
            Endpoint::Events,
            Endpoint::Other,
        ]
        .into_iter()
        .map(|e| self.director.request_count(e))
        .sum()
    }

    /// A fresh directory for a cell, its auth file holding BOSH's pre-start placeholder.
    pub fn cell(&self, name: &str) -> anyhow::Result<CellFiles> {
        let dir = self.dir.path().join("cells").join(name);
        std::fs::create_dir_all(&dir)?;
        let files = CellFiles {
            auth_file: dir.join("auth.json"),
            config: dir.join("bosh_nats_sync_config.yml"),
            log: dir.join("bosh-nats-sync.log"),
            dir,
        };
        std::fs::write(&files.auth_file, PLACEHOLDER)?;
        Ok(files)
    }

    /// The configuration the BOSH job template writes, plus the new keys a benchmark sets:
    /// concurrency, JSON logs, the HTTP server on a free port (returned), generous timeouts,
    /// and callout mode when asked for.
    pub fn write_config(
        &self,
        files: &CellFiles,
        c: &CellConfig<'_>,
    ) -> anyhow::Result<std::net::SocketAddr> {
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], sim::ports::free_port()));
        let (pid_file, monitoring) = match c.nats {
            Some((pid, url)) => (
                pid.to_path_buf(),
                format!("  monitoring_url: {url}\n  reload_verify_timeout: 900\n"),
            ),
            None => (self.pid_file.clone(), String::new()),
        };
        let text = format!(
            "---\n\
             director:\n  url: {url}\n  user: {USER}\n  password: {PASSWORD}\n  client_id:\n  client_secret:\n\
             \x20 director_ca_cert: {ca}\n  director_subject_file: {ds}\n  hm_subject_file: {hs}\n\
             \x20 connection_wait_timeout: 0\n  max_concurrency: {conc}\n\
             intervals:\n  poll_user_sync: {poll}\n  pass_timeout: 1800\n{watch}\
             nats:\n  config_file_path: {auth}\n  nats_server_pid_file: {pid}\n{monitoring}{callout}\
             logfile: {log}\n\
             log:\n  format: json\n\
             http:\n  listen: {listen}\n",
            url = self.director.url(),
            ca = self.files.ca_cert.display(),
            ds = self.director_subject.display(),
            hs = self.hm_subject.display(),
            conc = c.concurrency,
            poll = c.poll_seconds,
            watch = c.watch.map_or(String::new(), |w| format!("  watch: {w}\n")),
            auth = files.auth_file.display(),
            pid = pid_file.display(),
            callout = c.callout.map_or(String::new(), |k| self.callout_keys(k)),
            log = files.log.display(),
        );
        std::fs::write(&files.config, text)?;
        Ok(listen)
    }

    /// The `nats.admission` and `nats.callout` lines of callout mode.
    fn callout_keys(&self, k: &CalloutKeys) -> String {
        format!(
            "  admission: callout\n  callout:\n    url: {url}\n    cert_file: {cert}\n    key_file: {key}\n\
             \x20   ca_file: {ca}\n    issuer_seed_file: {seed}\n    state_file: {state}\n\
             \x20   timeout: {timeout}\n    user_ttl: {ttl}\n",
            url = k.url,
            cert = k.service.cert.display(),
            key = k.service.key.display(),
            ca = self.files.ca_cert.display(),
            seed = k.issuer_seed_file.display(),
            state = k.state_file.display(),
            timeout = k.timeout,
            ttl = k.user_ttl,
        )
    }
}

pub fn deployment_name(d: usize) -> String {
    format!("service-instance_{:08x}-{d:05}", mix(d as u64) as u32)
}

/// A UUID-shaped, unique, deterministic agent id (what real directors hand out).
pub fn agent_id(deployment: usize, vm: usize) -> String {
    let i = (deployment as u64) << 16 | vm as u64;
    let x = mix(i);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xffff,
        x & 0xfff,
        (x >> 52) & 0xfff,
        i
    )
}

fn vm_list(deployment: usize, vms: usize) -> Vec<Vm> {
    (0..vms)
        .map(|v| Vm::agent(&agent_id(deployment, v)).permanent(v % 2 == 0))
        .collect()
}

pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
