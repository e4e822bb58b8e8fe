//! Admission without reloads (§12) measured: file mode and callout mode side by side, each
//! with N real agents connected to a real nats-server over TLS (every agent its own
//! certificate, an async-nats client in this process that stays connected throughout), while
//! the director creates VMs one after another. Per mode: how long each new VM's agent,
//! retrying with its bootstrap certificate, waits to be admitted; how often nats-server
//! reloaded meanwhile; how long a director client waited to connect; whether a connected agent
//! lost its connection; what nats-server spent in CPU. In callout mode also a restart of
//! nats-server with the N agents connected: how long until all are readmitted, and how fast
//! the program answered meanwhile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use sim::director::Vm;
use sim::nats::NatsServer;
use sim::pki::CertFiles;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::cells::{command, log_lines, pass_lines};
use crate::fleet::{Fleet, connect_fleet, options};
use crate::measure;
use crate::world::{CalloutKeys, CellConfig, CellFiles, World, agent_id, deployment_name};

/// How agents are admitted (`nats.admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The auth file, a reload per change (§4–§5).
    File,
    /// nats-server's auth callout, answered from memory (§12).
    Callout,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::File => "file",
            Mode::Callout => "callout",
        }
    }
}

/// What both modes are asked to do.
pub struct Plan {
    pub deployments: usize,
    pub vms: usize,
    pub latency: Duration,
    /// VMs created during the churn, per mode.
    pub creations: usize,
    /// Connected agents' VMs deleted one after another, per mode (after the churn, and in
    /// callout mode after the restart).
    pub deletions: usize,
    pub file_creations: usize,
    /// Between two creations, plus a deterministic jitter of up to the same again (as the
    /// watch's benchmark does).
    pub spacing: Duration,
    /// A new VM's agent tries again this long after a refused connect.
    pub retry: Duration,
    /// The director client's pause between two connects.
    pub director_every: Duration,
    /// Connects in flight while the N agents connect.
    pub connect_parallel: usize,
    /// The nats-server binary (2.14.5 is what BOSH ships).
    pub nats_server: PathBuf,
}

/// A histogram of `/metrics` (cumulative buckets), or the difference of two scrapes.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// `(le, cumulative count)`, ascending, `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// The series `name` (`name_bucket`, `name_sum`, `name_count`) of a `/metrics` text.
    pub fn parse(text: &str, name: &str) -> Histogram {
        let mut h = Histogram::default();
        let bucket = format!("{name}_bucket{{le=\"");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(&bucket)
                && let Some((le, value)) = rest.split_once("\"}")
            {
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                h.buckets
                    .push((le, value.trim().parse::<f64>().unwrap_or(0.0) as u64));
            } else if let Some(v) = line.strip_prefix(&format!("{name}_sum ")) {
                h.sum = v.trim().parse().unwrap_or(0.0);
            } else if let Some(v) = line.strip_prefix(&format!("{name}_count ")) {
                h.count = v.trim().parse::<f64>().unwrap_or(0.0) as u64;
            }
        }
        h
    }

    /// What was observed between `earlier` and `self`.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0, |(_, c)| *c)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, c)| (le, c.saturating_sub(before(le))))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// The upper bound of the bucket that holds the `q`-quantile: the quantile is at most
    /// that (`None` without observations).
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= rank.max(1))
            .map(|(le, _)| *le)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// A nats-server restart with the N agents connected (callout mode).
#[derive(Debug, Clone)]
pub struct Restart {
    /// SIGTERM → the old process gone.
    pub exited: Duration,
    /// SIGTERM → the new one listening.
    pub listening: Duration,
    /// SIGTERM → each agent connected again, for those that were (sorted).
    pub readmitted: Vec<Duration>,
    /// How long the driver waited for all of them.
    pub waited: Duration,
    /// Reconnects nats-server refused (`Authorization Violation`) and other failed attempts.
    pub refused: u64,
    /// Of the refusals, those before the program's responder was connected again (nats-server
    /// had nobody to ask).
    pub refused_before_responder: u64,
    pub failed_attempts: u64,
    /// The failed attempts (since the fleet connected) by what async-nats said.
    pub failures: BTreeMap<String, u64>,
    /// Answers of the program during the restart (`bosh_nats_sync_callout_answer_seconds`).
    pub answers: Histogram,
    /// The program's requests during the restart by result
    /// (`bosh_nats_sync_callout_requests_total`).
    pub results: BTreeMap<String, u64>,
    /// nats-server's `/varz` `connections` once all were back.
    pub connections_after: u64,
    /// SIGTERM → the program's responder connected (and subscribed) again.
    pub responder: Option<Duration>,
    /// CPU (user + system) from the SIGTERM until all were back: the new nats-server's
    /// (all of it: it started then), the program's, and this driver's (the agents' side of
    /// the TLS handshakes; the director simulator idles meanwhile).
    pub nats_cpu: Duration,
    pub program_cpu: Duration,
    pub driver_cpu: Duration,
}

/// One revocation check's observation of nats-server's connections, as the program logged it
/// (`observed nats-server's connections`, callout mode).
#[derive(Debug, Clone)]
pub struct Observed {
    pub connections: u64,
    pub requests: u64,
    pub replies: u64,
    pub bytes: u64,
    pub took: Duration,
}

/// Connected agents' VMs deleted one after another (§12.6): how soon each agent's connection
/// was closed, and what else happened meanwhile.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The deleted VMs' agents: delete event → connection closed, for each that was closed.
    pub closed: Vec<Duration>,
    /// Deleted VMs' agents still connected when the driver stopped waiting.
    pub not_closed: usize,
    /// How long the driver waited for the last of them.
    pub waited: Duration,
    /// Disconnections of the other connected agents meanwhile.
    pub others_closed: u64,
    /// nats-server's reloads meanwhile, and whether `config_load_time` moved.
    pub reloads: u64,
    pub config_load_time_moved: bool,
    /// The program's passes that changed something meanwhile: their durations.
    pub passes: Vec<Duration>,
    /// Callout mode: every revocation check's observation meanwhile.
    pub observations: Vec<Observed>,
    /// Callout mode: `bosh_nats_sync_callout_revocations_total` meanwhile, by result.
    pub results: BTreeMap<String, u64>,
    /// CPU (user + system) meanwhile: nats-server's and the program's.
    pub nats_cpu: Duration,
    pub program_cpu: Duration,
    /// First delete → the last agent closed (or the driver gave up).
    pub phase: Duration,
}

/// One mode's figures at one N.
#[derive(Debug, Clone)]
pub struct AdmissionRun {
    pub mode: Mode,
    /// Agents connected (N).
    pub agents: usize,
    pub deployments: usize,
    pub vms: usize,
    pub latency: Duration,
    pub users: u64,
    pub nats_version: String,
    /// How long the N agents took to connect (`connect_parallel` at a time).
    pub connect_all: Duration,
    /// nats-server's resident set with the N connected, before the churn.
    pub nats_rss_kib: u64,
    /// Second `create`/`vm` event → the agent admitted, one per creation.
    pub admissions: Vec<Duration>,
    /// Connect attempts of the new agents, all of them.
    pub attempts: u64,
    /// From the first creation until the last new agent was admitted.
    pub churn: Duration,
    /// The program's passes that changed something during the churn (in file mode: the
    /// write, nats-server's reload and its verification), as it logged them.
    pub changing_passes: Vec<Duration>,
    /// nats-server's "Reloaded server configuration" lines during the churn, and whether
    /// `/varz` `config_load_time` moved.
    pub reloads: u64,
    pub config_load_time_moved: bool,
    /// Each director connect during the churn: how long it waited, whether it got in.
    pub director: Vec<(Duration, bool)>,
    /// Disconnections of the N agents during the churn (async-nats events) and nats-server's
    /// connection count before and after it.
    pub disconnects: u64,
    pub connections_before: u64,
    pub connections_after: u64,
    /// CPU (user + system) during the churn: nats-server's and the program's.
    pub nats_cpu: Duration,
    pub program_cpu: Duration,
    /// Callout mode: the program's answers during the churn.
    pub answers: Option<Histogram>,
    pub restart: Option<Restart>,
    pub revocation: Option<Revocation>,
    /// `/proc/loadavg` when the run began and ended.
    pub load_before: String,
    pub load_after: String,
    /// The whole run, start-up included.
    pub wall: Duration,
}

/// Nearest-rank quantile of `values` (sorted or not).
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl AdmissionRun {
    pub fn director_max(&self) -> Duration {
        self.director.iter().map(|d| d.0).max().unwrap_or_default()
    }

    pub fn director_failed(&self) -> usize {
        self.director.iter().filter(|d| !d.1).count()
    }

    pub fn summary(&self) -> String {
        let waits: Vec<Duration> = self.director.iter().map(|d| d.0).collect();
        format!(
            "{} mode, {} agents: admitted p50 {:.3} s, p99 {:.3} s, max {:.3} s ({} creations); \
             {} reloads; director connect max {:.3} s (p99 {:.3} s, {} tries, {} failed); \
             {} disconnects; nats-server CPU {:.1} s over {:.1} s{}",
            self.mode.label(),
            self.agents,
            quantile(&self.admissions, 0.5).as_secs_f64(),
            quantile(&self.admissions, 0.99).as_secs_f64(),
            quantile(&self.admissions, 1.0).as_secs_f64(),
            self.admissions.len(),
            self.reloads,
            self.director_max().as_secs_f64(),
            quantile(&waits, 0.99).as_secs_f64(),
            self.director.len(),
            self.director_failed(),
            self.disconnects,
            self.nats_cpu.as_secs_f64(),
            self.churn.as_secs_f64(),
            self.restart.as_ref().map_or(String::new(), |r| format!(
                "; restart: {}/{} readmitted, last {:.3} s after SIGTERM (listening at {:.3} s), answers p99 ≤ {}",
                r.readmitted.len(),
                self.agents,
                r.readmitted.last().copied().unwrap_or_default().as_secs_f64(),
                r.listening.as_secs_f64(),
                r.answers
                    .quantile_bound(0.99)
                    .map_or("-".to_owned(), |b| format!("{} s", b)),
            )),
        )
    }
}

/// One connect, held as long as nats-server holds it (up to `timeout`); the client is
/// dropped (disconnected) at once.
async fn connect_once(url: &str, ca: &Path, cert: &CertFiles, timeout: Duration) -> bool {
    options(ca, cert, timeout)
        .max_reconnects(Some(1))
        .connect(url)
        .await
        .is_ok()
}

/// A director client connecting every `every` until `stop`: how long each connect took.
async fn director_sampler(
    url: String,
    ca: PathBuf,
    cert: CertFiles,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<(Duration, bool)> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let ok = connect_once(&url, &ca, &cert, Duration::from_secs(900)).await;
        samples.push((started.elapsed(), ok));
        tokio::time::sleep(every).await;
    }
    samples
}

/// A new VM's agent: connects with its bootstrap certificate until nats-server lets it in,
/// `retry` after each refusal. How long after `since` it got in, and how many tries.
async fn new_agent(
    url: String,
    ca: PathBuf,
    cert: CertFiles,
    since: Instant,
    retry: Duration,
    limit: Duration,
) -> anyhow::Result<(Duration, u64)> {
    let mut tries = 0;
    loop {
        tries += 1;
        if connect_once(&url, &ca, &cert, Duration::from_secs(900)).await {
            return Ok((since.elapsed(), tries));
        }
        ensure!(
            since.elapsed() < limit,
            "{} not admitted within {limit:?} ({tries} tries)",
            cert.cert.display()
        );
        tokio::time::sleep(retry).await;
    }
}

/// `GET path` of the program's HTTP server (HTTP/1.0: the body ends with the connection).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: a malformed response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

const ANSWER_SECONDS: &str = "bosh_nats_sync_callout_answer_seconds";

const REQUESTS_TOTAL: &str = "bosh_nats_sync_callout_requests_total{result=\"";

/// The program's answer latencies and its requests by result, from `/metrics`.
async fn answers(addr: std::net::SocketAddr) -> anyhow::Result<Histogram> {
    Ok(callout_metrics(addr).await?.0)
}

async fn callout_metrics(
    addr: std::net::SocketAddr,
) -> anyhow::Result<(Histogram, BTreeMap<String, u64>)> {
    let (status, body) = http_get(addr, "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    let results = body
        .lines()
        .filter_map(|l| {
            let (result, value) = l.strip_prefix(REQUESTS_TOTAL)?.split_once("\"}")?;
            Some((result.to_owned(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect();
    Ok((Histogram::parse(&body, ANSWER_SECONDS), results))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// `nats-server`'s reloads so far: its "Reloaded server configuration" log lines.
fn reloads(nats: &NatsServer) -> u64 {
    nats.log().matches("Reloaded server configuration").count() as u64
}

async fn connections(nats: &NatsServer) -> anyhow::Result<u64> {
    nats.varz()
        .await?
        .get("connections")
        .and_then(serde_json::Value::as_u64)
        .context("no connections in /varz")
}

/// The binary under measurement; killed when dropped (an early error included).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The issuer seed, from the binary's own `callout-keys`, in an owner-only file.
fn issuer_seed(binary: &Path, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let out = std::process::Command::new(binary)
        .arg("callout-keys")
        .output()
        .context("bosh-nats-sync callout-keys")?;
    ensure!(out.status.success(), "callout-keys exited {}", out.status);
    let text = String::from_utf8(out.stdout)?;
    let seed = text
        .lines()
        .find_map(|l| l.strip_prefix("ISSUER_SEED="))
        .context("callout-keys printed no ISSUER_SEED")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut file, seed.as_bytes())?;
    Ok(())
}

/// nats-server on the cell's auth file, and the program's configuration for `mode`: in file
/// mode the auth file is BOSH's placeholder; in callout mode `init` writes it first, as the
/// job's pre-start does.
async fn prepare(
    world: &World,
    binary: &Path,
    plan: &Plan,
    mode: Mode,
    files: &CellFiles,
) -> anyhow::Result<(NatsServer, std::net::SocketAddr)> {
    let nats_dir = files.dir.join("nats");
    std::fs::create_dir_all(&nats_dir)?;
    let mut keys = None;
    if mode == Mode::Callout {
        let dir = files.dir.join("callout");
        std::fs::create_dir_all(&dir)?;
        let service = world
            .pki
            .client("default.nats-sync.bosh-internal")?
            .write_to(&dir, "service")?;
        let issuer_seed_file = dir.join("issuer.seed");
        issuer_seed(binary, &issuer_seed_file)?;
        let k = CalloutKeys {
            url: "tls://127.0.0.1:4222".to_owned(),
            service,
            issuer_seed_file,
            state_file: dir.join("agents.json"),
            timeout: 1.0,
            user_ttl: 3600.0,
        };
        // `init` needs neither nats-server nor the director: the pid file and the URL are
        // placeholders until nats-server runs.
        world.write_config(files, &config(&k, None, None))?;
        let init = measure::run_to_exit(
            command(world, binary, &files.config, &["init"]),
            Duration::from_secs(60),
        )
        .await?;
        ensure!(
            init.code == 0,
            "init exited {}: {}",
            init.code,
            std::fs::read_to_string(&files.log).unwrap_or_default()
        );
        keys = Some(k);
    }
    let nats = NatsServer::start_with(&plan.nats_server, &nats_dir, &world.pki, &files.auth_file)
        .await
        .context("starting nats-server")?;
    let listen = match &mut keys {
        Some(k) => {
            k.url = nats.client_url().to_owned();
            world.write_config(
                files,
                &config(k, Some(nats.pid_file()), Some(nats.monitoring_url())),
            )?
        }
        None => world.write_config(
            files,
            &CellConfig {
                concurrency: 4,
                poll_seconds: 10.0,
                nats: Some((nats.pid_file(), nats.monitoring_url())),
                watch: None,
                callout: None,
            },
        )?,
    };
    Ok((nats, listen))
}

/// Callout mode's configuration; the watch at its default either way.
fn config<'a>(
    keys: &'a CalloutKeys,
    pid_file: Option<&'a Path>,
    monitoring: Option<&'a str>,
) -> CellConfig<'a> {
    CellConfig {
        concurrency: 4,
        poll_seconds: 10.0,
        nats: pid_file.zip(monitoring),
        watch: None,
        callout: Some(keys),
    }
}

/// Runs `binary` in `mode` against the populated director and a real nats-server with
/// `certs.len()` agents connected, and measures `plan`.
pub async fn measure(
    world: &World,
    binary: &Path,
    plan: &Plan,
    mode: Mode,
    certs: &[CertFiles],
) -> anyhow::Result<AdmissionRun> {
    let run_started = Instant::now();
    let load_before = loadavg();
    let n = certs.len();
    let files = world.cell(&format!("admission-{}-n{n}", mode.label()))?;
    world.populate(plan.deployments, plan.vms);
    // A director that has deployed has an event log, so the watch is trusted (§6.6).
    world.director.clear_events();
    world
        .director
        .create_deployment(&deployment_name(0), Vec::new());
    world.set_latency(Duration::ZERO);
    let (mut nats, http) = prepare(world, binary, plan, mode, &files).await?;
    let nats_version = nats.version().to_owned();
    world.set_latency(plan.latency);
    let mut child = Running(
        command(world, binary, &files.config, &[])
            .spawn()
            .context("starting the binary")?,
    );
    let program_pid = child.0.id();

    // The start-up pass: in file mode its reload verified, in callout mode `/readyz` 200.
    let started = Instant::now();
    let users = loop {
        let (lines, _) = pass_lines(&files.log, 0)?;
        let done = match mode {
            Mode::File => lines.iter().find(|l| l["reloaded"].as_str() == Some("ok")),
            Mode::Callout => lines.first(),
        };
        if let Some(line) = done
            && (mode == Mode::File
                || http_get(http, "/readyz")
                    .await
                    .is_ok_and(|(status, _)| status == 200))
        {
            break line["desired"].as_u64().unwrap_or(0);
        }
        ensure!(
            child.0.try_wait()?.is_none(),
            "the binary exited: {}",
            std::fs::read_to_string(&files.log).unwrap_or_default()
        );
        ensure!(
            started.elapsed() < Duration::from_secs(900),
            "no start-up pass within 900 s: {}",
            std::fs::read_to_string(&files.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    eprintln!("bench:   connecting {n} agents ...");
    let connecting = Instant::now();
    let fleet = connect_fleet(
        nats.client_url(),
        nats.ca_file(),
        certs,
        plan.connect_parallel,
    )
    .await?;
    let connect_all = connecting.elapsed();
    eprintln!(
        "bench:   {n} agents connected in {:.1} s",
        connect_all.as_secs_f64()
    );
    let nats_rss_kib = measure::status_kib(nats.pid(), "VmRSS").unwrap_or(0);

    // The new VMs' bootstrap certificates, written before the clock runs.
    let creations = match mode {
        Mode::File => plan.file_creations,
        Mode::Callout => plan.creations,
    };
    let new_dir = files.dir.join("new-vms");
    std::fs::create_dir_all(&new_dir)?;
    let new_vms: Vec<(String, CertFiles)> = (0..creations)
        .map(|c| {
            let id = agent_id(1_000_000 + c, 0);
            let cert = world
                .pki
                .client(&sim::pki::bootstrap_agent_cn(&id))?
                .write_to(&new_dir, &format!("vm-{c}"))?;
            anyhow::Ok((id, cert))
        })
        .collect::<Result<_, _>>()?;
    let director_cert = world
        .pki
        .client(sim::pki::DIRECTOR_CN)?
        .write_to(&files.dir, "director")?;

    // The churn.
    let log_offset = pass_lines(&files.log, 0)?.1;
    let reloads_before = reloads(&nats);
    let load_time_before = nats.config_load_time().await?;
    let connections_before = connections(&nats).await?;
    let disconnects_before = fleet.events.disconnects.load(Ordering::SeqCst);
    let nats_cpu_before = measure::cpu_time(nats.pid()).unwrap_or_default();
    let program_cpu_before = measure::cpu_time(program_pid).unwrap_or_default();
    let answers_before = match mode {
        Mode::Callout => Some(answers(http).await?),
        Mode::File => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(director_sampler(
        nats.client_url().to_owned(),
        nats.ca_file().to_owned(),
        director_cert,
        plan.director_every,
        stop.clone(),
    ));
    let churn_started = Instant::now();
    let mut agents = Vec::with_capacity(creations);
    for (c, (id, cert)) in new_vms.into_iter().enumerate() {
        let deployment = deployment_name(c * 7919 % plan.deployments);
        let creation = world.director.begin_create_vm(&deployment, Vm::agent(&id));
        world.director.finish_create_vm(creation);
        // The clock starts at the second create/vm event: the row is in, the VM boots.
        agents.push(tokio::spawn(new_agent(
            nats.client_url().to_owned(),
            nats.ca_file().to_owned(),
            cert,
            Instant::now(),
            plan.retry,
            Duration::from_secs(3600),
        )));
        if c + 1 < creations {
            let jitter = plan
                .spacing
                .mul_f64((crate::world::mix(c as u64 + 1) % 1000) as f64 / 1000.0);
            tokio::time::sleep(plan.spacing + jitter).await;
        }
        ensure!(
            child.0.try_wait()?.is_none(),
            "the binary exited during the creations"
        );
    }
    let mut admissions = Vec::with_capacity(creations);
    let mut attempts = 0;
    for agent in agents {
        let (admitted, tries) = agent.await??;
        admissions.push(admitted);
        attempts += tries;
    }
    let churn = churn_started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let director = sampler.await?;
    let nats_cpu = measure::cpu_time(nats.pid())
        .unwrap_or_default()
        .saturating_sub(nats_cpu_before);
    let program_cpu = measure::cpu_time(program_pid)
        .unwrap_or_default()
        .saturating_sub(program_cpu_before);
    let disconnects = fleet.events.disconnects.load(Ordering::SeqCst) - disconnects_before;
    let reloads = reloads(&nats) - reloads_before;
    let config_load_time_moved = nats.config_load_time().await? != load_time_before;
    let connections_after = connections(&nats).await?;
    let answers = match answers_before {
        Some(before) => Some(answers(http).await?.since(&before)),
        None => None,
    };
    // A pass logs its line once its reload is verified, which may be a moment after the
    // last agent got in: in file mode, wait for one line per reload.
    let waiting = Instant::now();
    let changing_passes = loop {
        let passes: Vec<Duration> = pass_lines(&files.log, log_offset)?
            .0
            .iter()
            .filter(|l| l["written"].as_bool() == Some(true))
            .filter_map(|l| l["duration_ms"].as_u64().map(Duration::from_millis))
            .collect();
        if mode == Mode::Callout
            || passes.len() as u64 >= reloads
            || waiting.elapsed() > Duration::from_secs(120)
        {
            break passes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        child.0.try_wait()?.is_none(),
        "the binary exited during the churn"
    );

    let restart = match mode {
        Mode::Callout => Some(restart(&mut nats, &fleet, http, program_pid).await?),
        Mode::File => None,
    };
    let revocation = if plan.deletions > 0 {
        eprintln!(
            "bench:   deleting {} connected agents' VMs ...",
            plan.deletions
        );
        let r = revoke(
            world,
            plan,
            mode,
            &nats,
            &fleet,
            &files.log,
            http,
            program_pid,
        )
        .await?;
        eprintln!(
            "bench:   {} of {} closed: p50 {:.3} s, p99 {:.3} s after their delete events; \
             {} others disconnected, {} reloads",
            r.closed.len(),
            plan.deletions,
            quantile(&r.closed, 0.5).as_secs_f64(),
            quantile(&r.closed, 0.99).as_secs_f64(),
            r.others_closed,
            r.reloads
        );
        ensure!(
            child.0.try_wait()?.is_none(),
            "the binary exited during the deletions"
        );
        Some(r)
    } else {
        None
    };
    drop(fleet);
    drop(child);
    world.set_latency(Duration::ZERO);
    Ok(AdmissionRun {
        mode,
        agents: n,
        deployments: plan.deployments,
        vms: plan.vms,
        latency: plan.latency,
        users,
        nats_version,
        connect_all,
        nats_rss_kib,
        admissions,
        attempts,
        churn,
        changing_passes,
        reloads,
        config_load_time_moved,
        director,
        disconnects,
        connections_before,
        connections_after,
        nats_cpu,
        program_cpu,
        answers,
        restart,
        revocation,
        load_before,
        load_after: loadavg(),
        wall: run_started.elapsed(),
    })
}

/// How long a deleted VM's agent may stay connected before the driver stops waiting (file
/// mode closes it with a reload, which takes minutes with thousands connected).
const CLOSE_LIMIT: Duration = Duration::from_secs(900);

/// Deletes `plan.deletions` connected agents' VMs one after another (spaced as the churn's
/// creations) and waits until each agent's connection is closed: the agents are spread over
/// the fleet, each the VM of its own deployment. Reads the revocation checks' observations
/// from the program's log `log`.
#[allow(clippy::too_many_arguments)]
async fn revoke(
    world: &World,
    plan: &Plan,
    mode: Mode,
    nats: &NatsServer,
    fleet: &Fleet,
    log: &Path,
    http: std::net::SocketAddr,
    program_pid: u32,
) -> anyhow::Result<Revocation> {
    let events = &fleet.events;
    let n = events.connected_at.len();
    ensure!(
        plan.deletions <= n,
        "{} deletions asked for, {n} agents connected",
        plan.deletions
    );
    // 7919 is prime, so the deleted agents are distinct and spread over the fleet.
    let deleted: Vec<usize> = (0..plan.deletions).map(|c| (c * 7919 + 1) % n).collect();
    let disconnects = |i: usize| events.disconnects_of[i].load(Ordering::SeqCst);
    let others_before: u64 = (0..n)
        .filter(|i| !deleted.contains(i))
        .map(disconnects)
        .sum();
    let log_offset = std::fs::metadata(log).map_or(0, |m| m.len());
    let reloads_before = reloads(nats);
    let load_time_before = nats.config_load_time().await?;
    let cpu = |pid: u32| measure::cpu_time(pid).unwrap_or_default();
    let (nats_cpu_before, program_cpu_before) = (cpu(nats.pid()), cpu(program_pid));
    let results_before = match mode {
        Mode::Callout => revocation_results(http).await?,
        Mode::File => BTreeMap::new(),
    };

    let began = Instant::now();
    let mut deleted_at = Vec::with_capacity(deleted.len());
    for (c, &i) in deleted.iter().enumerate() {
        let id = agent_id(i % plan.deployments, i / plan.deployments);
        let deployment = deployment_name(i % plan.deployments);
        let at = events.at(std::time::Instant::now());
        ensure!(
            world
                .director
                .delete_vm(&deployment, &format!("vm-{id}"))
                .is_some(),
            "{deployment} has no VM vm-{id} to delete"
        );
        deleted_at.push(at);
        if c + 1 < deleted.len() {
            let jitter = plan
                .spacing
                .mul_f64((crate::world::mix(c as u64 + 7) % 1000) as f64 / 1000.0);
            tokio::time::sleep(plan.spacing + jitter).await;
        }
    }
    let closed_after = |(k, &i): (usize, &usize)| {
        let at = events.disconnected_at[i].load(Ordering::SeqCst);
        (at > deleted_at[k]).then(|| Duration::from_nanos(at - deleted_at[k]))
    };
    while deleted
        .iter()
        .enumerate()
        .any(|d| closed_after(d).is_none())
        && began.elapsed() < CLOSE_LIMIT
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let phase = began.elapsed();
    let closed: Vec<Duration> = deleted
        .iter()
        .enumerate()
        .filter_map(closed_after)
        .collect();
    let (nats_cpu, program_cpu) = (
        cpu(nats.pid()).saturating_sub(nats_cpu_before),
        cpu(program_pid).saturating_sub(program_cpu_before),
    );
    let others_closed = (0..n)
        .filter(|i| !deleted.contains(i))
        .map(disconnects)
        .sum::<u64>()
        - others_before;
    let reloads = reloads(nats) - reloads_before;
    let config_load_time_moved = nats.config_load_time().await? != load_time_before;
    // In file mode a pass logs its line once its reload is verified: wait for one per reload.
    let waiting = Instant::now();
    let passes = loop {
        let passes: Vec<Duration> = pass_lines(log, log_offset)?
            .0
            .iter()
            .filter(|l| l["written"].as_bool() == Some(true) || l["changed"].as_u64() > Some(0))
            .filter_map(|l| l["duration_ms"].as_u64().map(Duration::from_millis))
            .collect();
        if mode == Mode::Callout
            || passes.len() as u64 >= reloads
            || waiting.elapsed() > Duration::from_secs(120)
        {
            break passes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let observations = log_lines(log, log_offset, "observed nats-server's connections")?
        .iter()
        .map(|l| Observed {
            connections: l["connections"].as_u64().unwrap_or(0),
            requests: l["requests"].as_u64().unwrap_or(0),
            replies: l["replies"].as_u64().unwrap_or(0),
            bytes: l["bytes"].as_u64().unwrap_or(0),
            took: Duration::from_secs_f64(l["duration_ms"].as_f64().unwrap_or(0.0) / 1e3),
        })
        .collect();
    let results = match mode {
        Mode::Callout => revocation_results(http)
            .await?
            .into_iter()
            .map(|(result, n)| {
                let earlier = results_before.get(&result).copied().unwrap_or(0);
                (result, n.saturating_sub(earlier))
            })
            .collect(),
        Mode::File => BTreeMap::new(),
    };
    Ok(Revocation {
        not_closed: deleted.len() - closed.len(),
        closed,
        waited: phase,
        others_closed,
        reloads,
        config_load_time_moved,
        passes,
        observations,
        results,
        nats_cpu,
        program_cpu,
        phase,
    })
}

const REVOCATIONS_TOTAL: &str = "bosh_nats_sync_callout_revocations_total{result=\"";

/// The program's revocations so far by result, from `/metrics`.
async fn revocation_results(addr: std::net::SocketAddr) -> anyhow::Result<BTreeMap<String, u64>> {
    let (status, body) = http_get(addr, "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    Ok(body
        .lines()
        .filter_map(|l| {
            let (result, value) = l.strip_prefix(REVOCATIONS_TOTAL)?.split_once("\"}")?;
            Some((result.to_owned(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect())
}

/// How long every agent may take to come back before the driver stops waiting.
const READMIT_LIMIT: Duration = Duration::from_secs(180);

/// Restarts nats-server with the fleet connected and waits until every agent has connected
/// again (its `Connected` event after the old server exited).
async fn restart(
    nats: &mut NatsServer,
    fleet: &Fleet,
    http: std::net::SocketAddr,
    program_pid: u32,
) -> anyhow::Result<Restart> {
    let events = &fleet.events;
    let (before, results_before) = callout_metrics(http).await?;
    let cpu = |pid: u32| measure::cpu_time(pid).unwrap_or_default();
    let (program_before, driver_before) = (cpu(program_pid), cpu(std::process::id()));
    let (refused_before, failed_before) = (
        events.refused.load(Ordering::SeqCst),
        events.failed_attempts.load(Ordering::SeqCst),
    );
    let signalled = std::time::Instant::now();
    let responder = tokio::spawn(responder_back(http, signalled));
    let restarted = nats.restart().await.context("restarting nats-server")?;
    let gone = events.at(signalled + restarted.exited);
    let back = || {
        events
            .connected_at
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .filter(|&at| at > gone)
            .count()
    };
    while back() < events.connected_at.len() && signalled.elapsed() < READMIT_LIMIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = signalled.elapsed();
    let responder = responder.await?;
    let (nats_cpu, program_cpu, driver_cpu) = (
        cpu(nats.pid()),
        cpu(program_pid).saturating_sub(program_before),
        cpu(std::process::id()).saturating_sub(driver_before),
    );
    // Answers the program observed just after the last agent got its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let since = events.at(signalled);
    let mut readmitted: Vec<Duration> = events
        .connected_at
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .filter(|&at| at > gone)
        .map(|at| Duration::from_nanos(at - since))
        .collect();
    readmitted.sort_unstable();
    let failures = events
        .failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (after, results_after) = callout_metrics(http).await?;
    let answers = after.since(&before);
    let results = results_after
        .into_iter()
        .map(|(result, n)| {
            let earlier = results_before.get(&result).copied().unwrap_or(0);
            (result, n.saturating_sub(earlier))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let connections_after = connections(nats).await?;
    let refused_before_responder = responder.map_or(0, |back| {
        let back = events.at(signalled + back);
        events
            .refused_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|&&at| at > since && at < back)
            .count() as u64
    });
    Ok(Restart {
        exited: restarted.exited,
        listening: restarted.listening,
        readmitted,
        waited,
        refused: events.refused.load(Ordering::SeqCst) - refused_before,
        refused_before_responder,
        failed_attempts: events.failed_attempts.load(Ordering::SeqCst) - failed_before,
        failures,
        answers,
        results,
        connections_after,
        responder,
        nats_cpu,
        program_cpu,
        driver_cpu,
    })
}

/// How long after `signalled` the program's responder was connected to nats-server again:
/// its `bosh_nats_sync_callout_connected` gauge back at 1 after a 0, read every 10 ms.
async fn responder_back(
    http: std::net::SocketAddr,
    signalled: std::time::Instant,
) -> Option<Duration> {
    const CONNECTED: &str = "bosh_nats_sync_callout_connected ";
    let mut seen_down = false;
    while signalled.elapsed() < READMIT_LIMIT {
        if let Ok((200, body)) = http_get(http, "/metrics").await
            && let Some(up) = body
                .lines()
                .find_map(|l| l.strip_prefix(CONNECTED)?.trim().parse::<f64>().ok())
        {
            if up < 1.0 {
                seen_down = true;
            } else if seen_down {
                return Some(signalled.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_from_metrics_text() {
        let name = ANSWER_SECONDS;
        let text = |counts: [u64; 4], sum: f64| {
            format!(
                "# TYPE {name} histogram\n\
                 {name}_bucket{{le=\"0.001\"}} {}\n{name}_bucket{{le=\"0.005\"}} {}\n\
                 {name}_bucket{{le=\"1\"}} {}\n{name}_bucket{{le=\"+Inf\"}} {}\n\
                 {name}_sum {sum}\n{name}_count {}\n",
                counts[0], counts[1], counts[2], counts[3], counts[3]
            )
        };
        let before = Histogram::parse(&text([10, 10, 10, 10], 0.005), name);
        let after = Histogram::parse(&text([10, 108, 110, 110], 0.505), name);
        let d = after.since(&before);
        assert_eq!(d.count, 100);
        assert_eq!(d.quantile_bound(0.5), Some(0.005));
        assert_eq!(d.quantile_bound(0.98), Some(0.005));
        assert_eq!(d.quantile_bound(0.99), Some(1.0));
        assert!((d.mean().unwrap() - 0.005).abs() < 1e-9);
        assert_eq!(Histogram::default().quantile_bound(0.99), None);
    }
}
