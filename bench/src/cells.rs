//! One measured cell of the grid (a cold `once` pass and warm passes of the long-running
//! mode), the idle-memory run, and the real nats-server reload check.

use std::fmt;
use std::io::{BufRead, Seek};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::measure::{self, Finished};
use crate::world::{CellConfig, World};

/// One point of the grid.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub deployments: usize,
    pub vms: usize,
    pub latency: Duration,
    pub concurrency: usize,
}

impl Cell {
    /// The latency bound of one pass: `/info` and `/deployments` one after the other, then
    /// `ceil(deployments / concurrency)` rounds of `/vms`. `None` without latency.
    pub fn bound(&self) -> Option<Duration> {
        if self.latency.is_zero() {
            return None;
        }
        let rounds = self.deployments.div_ceil(self.concurrency.max(1)) as u32;
        Some(self.latency * (rounds + 2))
    }

    fn name(&self) -> String {
        format!(
            "d{}-v{}-l{}-c{}",
            self.deployments,
            self.vms,
            self.latency.as_millis(),
            self.concurrency
        )
    }

    fn limit(&self) -> Duration {
        self.bound().unwrap_or_default() * 5 + Duration::from_secs(120)
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} deployments x {} VMs, latency {} ms, concurrency {}",
            self.deployments,
            self.vms,
            self.latency.as_millis(),
            self.concurrency
        )
    }
}

/// What one cell measured.
#[derive(Debug, Clone)]
pub struct CellResult {
    pub cell: Cell,
    /// The `once` process from spawn to exit (placeholder file: bootstrap write, full write).
    pub cold: Finished,
    pub cold_requests: u64,
    /// `duration_ms` of the cold pass as the binary logged it.
    pub cold_pass: Duration,
    /// `duration_ms` of each warm pass (no-op passes of a long-running process).
    pub warm: Vec<Duration>,
    pub warm_requests_per_pass: f64,
    pub warm_cpu_per_pass: Duration,
    /// Peak resident set of the long-running process (`VmHWM`) and its resident set at the end.
    pub run_hwm_kib: u64,
    pub run_rss_kib: u64,
    /// Largest `RssAnon` sampled during the long-running process's passes, and at the end.
    pub run_peak_anon_kib: u64,
    pub run_anon_kib: u64,
    /// Writes and reloads seen during the warm passes (must both be 0).
    pub noop_writes: u64,
    pub noop_reloads: u64,
    pub users: u64,
}

impl CellResult {
    pub fn noop_clean(&self) -> bool {
        self.noop_writes == 0 && self.noop_reloads == 0
    }

    pub fn warm_mean(&self) -> Duration {
        self.warm.iter().sum::<Duration>() / self.warm.len().max(1) as u32
    }

    pub fn summary(&self) -> String {
        format!(
            "cold {:.3} s (pass {:.3} s), warm {:.3} s, bound {}, {} req, peak RSS {:.1}/{:.1} MiB (anon {:.1}/{:.1}), CPU/pass {:.3}/{:.3} s, no-op writes {} reloads {}",
            self.cold.wall.as_secs_f64(),
            self.cold_pass.as_secs_f64(),
            self.warm_mean().as_secs_f64(),
            self.cell
                .bound()
                .map_or("-".into(), |b| format!("{:.3} s", b.as_secs_f64())),
            self.cold_requests,
            mib(self.cold.max_rss_kib),
            mib(self.run_hwm_kib),
            mib(self.cold.peak_anon_kib),
            mib(self.run_peak_anon_kib),
            self.cold.cpu.as_secs_f64(),
            self.warm_cpu_per_pass.as_secs_f64(),
            self.noop_writes,
            self.noop_reloads,
        )
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Cold: a fresh `once` on the placeholder file. Warm: the long-running mode on the file the
/// cold pass wrote; its first pass (start-up reload) is skipped, the next `warm` are measured.
pub async fn measure(
    world: &World,
    binary: &Path,
    cell: Cell,
    warm: usize,
) -> anyhow::Result<CellResult> {
    let files = world.cell(&cell.name())?;
    world.write_config(
        &files,
        &CellConfig {
            concurrency: cell.concurrency,
            poll_seconds: 0.3,
            nats: None,
            // Full passes on the poll interval: what the grid measures.
            watch: Some(0.0),
            callout: None,
        },
    )?;
    world.set_latency(cell.latency);

    world.director.reset_stats();
    let cold = measure::run_to_exit(
        command(world, binary, &files.config, &["once"]),
        cell.limit(),
    )
    .await?;
    let lines = pass_lines(&files.log, 0)?.0;
    ensure!(
        cold.code == 0,
        "once exited {}; log:\n{}",
        cold.code,
        std::fs::read_to_string(&files.log).unwrap_or_default()
    );
    let cold_requests = world.requests();
    let cold_line = lines.last().context("once logged no pass line")?;
    let cold_pass = duration_ms(cold_line)?;
    let users = cold_line["desired"].as_u64().unwrap_or(0);

    // Warm passes.
    let log_start = std::fs::metadata(&files.log)?.len();
    world.director.reset_stats();
    let start = Instant::now();
    let child = command(world, binary, &files.config, &[])
        .spawn()
        .context("spawning run mode")?;
    let pid = child.id();
    let mut offset = log_start;
    let mut seen: Vec<Value> = Vec::new();
    let mut marks = Vec::new(); // (cpu, requests, sighups, file identity) at each pass end
    let deadline = Instant::now() + cell.limit() * (warm as u32 + 1);
    let mut run_peak_anon_kib = 0;
    while seen.len() < warm + 1 {
        run_peak_anon_kib = run_peak_anon_kib.max(measure::status_kib(pid, "RssAnon").unwrap_or(0));
        let (new, next) = pass_lines(&files.log, offset)?;
        offset = next;
        let arrived = !new.is_empty();
        for line in new {
            if line["message"] == "pass failed" {
                measure::signal(pid, libc::SIGKILL);
                bail!("a pass failed: {line}");
            }
            marks.push((
                measure::cpu_time(pid).context("reading /proc/<pid>/stat")?,
                world.requests(),
                world.sighups(),
                measure::identity(&files.auth_file),
            ));
            seen.push(line);
        }
        if arrived && (seen.len() == 1 || seen.len() == warm + 1) {
            // A SIGHUP sent just before the pass line reaches this process's counter a moment
            // later; the next pass starts a poll interval (300 ms) after this one ended.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let last = marks.len() - 1;
            marks[last].2 = world.sighups();
        }
        if Instant::now() > deadline {
            measure::signal(pid, libc::SIGKILL);
            bail!("run mode did not finish {} passes in time", warm + 1);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let run_hwm_kib = measure::status_kib(pid, "VmHWM").unwrap_or(0);
    let run_rss_kib = measure::status_kib(pid, "VmRSS").unwrap_or(0);
    let run_anon_kib = measure::status_kib(pid, "RssAnon").unwrap_or(0);
    measure::signal(pid, libc::SIGTERM);
    let ended = measure::wait_child(child, start, Duration::from_secs(10)).await?;
    ensure!(ended.code == 0, "run mode exited {} on SIGTERM", ended.code);

    let first = marks[0];
    let last = marks[warm];
    let warm_lines = &seen[1..=warm];
    let mut noop_writes = warm_lines
        .iter()
        .filter(|l| l["written"] == Value::Bool(true))
        .count() as u64;
    if first.3 != last.3 {
        noop_writes = noop_writes.max(1);
    }
    let logged_reloads = warm_lines
        .iter()
        .filter(|l| l["reloaded"].is_string())
        .count() as u64;
    let noop_reloads = (last.2 - first.2).max(logged_reloads);
    Ok(CellResult {
        cell,
        cold,
        cold_requests,
        cold_pass,
        warm: warm_lines
            .iter()
            .map(duration_ms)
            .collect::<anyhow::Result<_>>()?,
        warm_requests_per_pass: (last.1 - first.1) as f64 / warm as f64,
        warm_cpu_per_pass: last.0.saturating_sub(first.0) / warm as u32,
        run_hwm_kib,
        run_rss_kib,
        run_peak_anon_kib: run_peak_anon_kib.max(run_anon_kib),
        run_anon_kib,
        noop_writes,
        noop_reloads,
        users,
    })
}

/// Resident memory of the long-running mode with a small director after a few passes.
#[derive(Debug, Clone)]
pub struct Idle {
    pub deployments: usize,
    pub passes: usize,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// `RssAnon` and `RssFile`: private memory and the binary's (and libraries') file pages.
    pub anon_kib: u64,
    pub file_kib: u64,
}

pub async fn idle(world: &World, binary: &Path, hold: Duration) -> anyhow::Result<Idle> {
    const PASSES: usize = 10;
    let files = world.cell("idle")?;
    world.write_config(
        &files,
        &CellConfig {
            concurrency: 4,
            poll_seconds: 0.1,
            nats: None,
            watch: Some(0.0),
            callout: None,
        },
    )?;
    let start = Instant::now();
    let child = command(world, binary, &files.config, &[])
        .spawn()
        .context("spawning run mode")?;
    let pid = child.id();
    let mut passes = 0;
    let mut offset = 0;
    while passes < PASSES {
        let (new, next) = pass_lines(&files.log, offset)?;
        offset = next;
        passes += new.len();
        if start.elapsed() > Duration::from_secs(60) {
            measure::signal(pid, libc::SIGKILL);
            bail!("idle run did not make {PASSES} passes in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rss_kib = measure::status_kib(pid, "VmRSS").unwrap_or(0);
    let hwm_kib = measure::status_kib(pid, "VmHWM").unwrap_or(0);
    let anon_kib = measure::status_kib(pid, "RssAnon").unwrap_or(0);
    let file_kib = measure::status_kib(pid, "RssFile").unwrap_or(0);
    if !hold.is_zero() {
        eprintln!(
            "bench: idle process {pid} (config {}) held for {hold:?}",
            files.config.display()
        );
        tokio::time::sleep(hold).await;
    }
    measure::signal(pid, libc::SIGTERM);
    measure::wait_child(child, start, Duration::from_secs(10)).await?;
    Ok(Idle {
        deployments: 10,
        passes,
        rss_kib,
        hwm_kib,
        anon_kib,
        file_kib,
    })
}

/// The big file against a real nats-server: a `once` pass whose reload is verified through
/// `/varz`, then a SIGHUP timed until `config_load_time` advances, then admission checks.
#[derive(Debug, Clone)]
pub struct NatsCheck {
    /// The nats-server measured: its version (`v2.14.5`).
    pub version: String,
    pub deployments: usize,
    pub vms: usize,
    pub users: u64,
    pub file_bytes: u64,
    pub once: Finished,
    pub reload: Duration,
    /// The same reload with `agents` connected (each its own certificate), and how long
    /// they took to connect; `None` with none asked for.
    pub agents: usize,
    pub reload_with_agents: Option<Duration>,
    pub connect_all: Duration,
    pub nats_rss_kib: u64,
    pub agent_admitted: bool,
    pub stranger_refused: bool,
}

/// Runs the check against the nats-server binary `executable`.
pub async fn nats_reload(
    world: &World,
    binary: &Path,
    executable: &Path,
    deployments: usize,
    vms: usize,
    agents: &[sim::pki::CertFiles],
    connect_parallel: usize,
) -> anyhow::Result<NatsCheck> {
    let version = sim::nats::version(executable)?;
    let files = world.cell(&format!("nats-d{deployments}-{version}"))?;
    let nats_dir = files.dir.join("nats");
    std::fs::create_dir_all(&nats_dir)?;
    let nats =
        sim::nats::NatsServer::start_with(executable, &nats_dir, &world.pki, &files.auth_file)
            .await
            .with_context(|| format!("starting nats-server {version}"))?;
    world.write_config(
        &files,
        &CellConfig {
            concurrency: 4,
            poll_seconds: 60.0,
            nats: Some((nats.pid_file(), nats.monitoring_url())),
            watch: None,
            callout: None,
        },
    )?;
    let once = measure::run_to_exit(
        command(world, binary, &files.config, &["once"]),
        Duration::from_secs(900),
    )
    .await?;
    let log = std::fs::read_to_string(&files.log).unwrap_or_default();
    ensure!(
        once.code == 0,
        "once against nats-server exited {}; log:\n{log}\nnats-server:\n{}",
        once.code,
        nats.log()
    );
    let lines = pass_lines(&files.log, 0)?.0;
    let users = lines
        .last()
        .and_then(|l| l["desired"].as_u64())
        .unwrap_or(0);
    ensure!(
        lines
            .last()
            .is_some_and(|l| l["reloaded"].as_str() == Some("ok")),
        "the reload was not verified: {log}"
    );

    let reload = nats.reload_and_wait(Duration::from_secs(300)).await?;
    let nats_rss_kib = measure::status_kib(nats.pid(), "VmRSS").unwrap_or(0);

    let certs = files.dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    let agent = sim::pki::agent_cn(&crate::world::agent_id(deployments - 1, 1));
    let cert = world.pki.client(&agent)?.write_to(&certs, "agent")?;
    let agent_admitted = nats.connect(&cert).await.is_ok();
    let stranger = sim::pki::agent_cn("not-a-vm-of-this-director");
    let cert = world.pki.client(&stranger)?.write_to(&certs, "stranger")?;
    let stranger_refused = match nats.connect(&cert).await {
        Ok(_) => false,
        Err(e) => sim::nats::is_authorization_violation(&e),
    };

    // The same reload with the director's agents connected: nats-server re-checks each of
    // them against every user.
    let started = std::time::Instant::now();
    let fleet =
        crate::fleet::connect_fleet(nats.client_url(), nats.ca_file(), agents, connect_parallel)
            .await?;
    let connect_all = started.elapsed();
    let reload_with_agents = if agents.is_empty() {
        None
    } else {
        eprintln!(
            "bench:   {} agents connected in {:.1} s; reloading",
            agents.len(),
            connect_all.as_secs_f64()
        );
        Some(nats.reload_and_wait(Duration::from_secs(1800)).await?)
    };
    ensure!(
        fleet.disconnects() == 0,
        "{} of the connected agents lost their connection in the reload",
        fleet.disconnects()
    );
    drop(fleet);
    Ok(NatsCheck {
        agents: agents.len(),
        reload_with_agents,
        connect_all,
        version,
        deployments,
        vms,
        users,
        file_bytes: std::fs::metadata(&files.auth_file)?.len(),
        once,
        reload,
        nats_rss_kib,
        agent_admitted,
        stranger_refused,
    })
}

pub fn command(world: &World, binary: &Path, config: &Path, args: &[&str]) -> Command {
    let mut c = match world.wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut c = Command::new(program);
            c.args(wrapper_args).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    c.arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // The binary's own environment, not the caller's log filter.
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    c
}

/// The JSON log lines from `offset` on whose message starts with `message`.
pub fn log_lines(log: &Path, offset: u64, message: &str) -> anyhow::Result<Vec<Value>> {
    let Ok(text) = std::fs::read(log) else {
        return Ok(Vec::new());
    };
    let from = (offset as usize).min(text.len());
    Ok(String::from_utf8_lossy(&text[from..])
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .collect())
}

/// The pass summary lines (JSON) of the log from byte `offset`, and the offset after the
/// last complete line.
pub fn pass_lines(log: &Path, offset: u64) -> anyhow::Result<(Vec<Value>, u64)> {
    let Ok(mut file) = std::fs::File::open(log) else {
        return Ok((Vec::new(), offset));
    };
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut reader = std::io::BufReader::new(file);
    let mut lines = Vec::new();
    let mut consumed = offset;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf)?;
        if n == 0 || !buf.ends_with('\n') {
            break;
        }
        consumed += n as u64;
        let Ok(v) = serde_json::from_str::<Value>(&buf) else {
            continue;
        };
        let is_pass = v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("pass "))
            && v.get("duration_ms").is_some();
        if is_pass {
            lines.push(v);
        }
    }
    Ok((lines, consumed))
}

fn duration_ms(line: &Value) -> anyhow::Result<Duration> {
    line["duration_ms"]
        .as_u64()
        .map(Duration::from_millis)
        .with_context(|| format!("no duration_ms in {line}"))
}
