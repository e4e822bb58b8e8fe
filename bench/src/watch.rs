//! The watch (§6.6) measured: how long after a VM's second `create`/`vm` event a real
//! nats-server admits the VM's bootstrap certificate, and what a quiet director is asked for
//! in a minute — with the watch on and with `intervals.watch: 0` (full polling, the older
//! programs' behaviour) side by side.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use sim::director::{Endpoint, Vm};
use tokio::time::Instant;

use crate::cells::{command, pass_lines};
use crate::world::{CellConfig, World, agent_id, deployment_name};

/// One mode's figures.
#[derive(Debug, Clone)]
pub struct WatchRun {
    /// `intervals.watch` in seconds; `None` = 0 (off).
    pub watch: Option<f64>,
    pub poll_seconds: f64,
    pub deployments: usize,
    pub vms: usize,
    pub latency: Duration,
    pub users: u64,
    /// Director requests per minute while nothing changed, and the window they were counted
    /// over.
    pub quiet_per_minute: f64,
    pub quiet_window: Duration,
    /// Of those, `/events` requests.
    pub quiet_events: u64,
    /// Second `create`/`vm` event → the bootstrap certificate admitted, one per creation.
    pub admissions: Vec<Duration>,
    /// How often each pending certificate was tried.
    pub probe_every: Duration,
    /// The nats-server measured (`v2.14.5`).
    pub nats_version: String,
    /// The median duration of the partial passes that wrote (refetch, desired state, write,
    /// reload and its verification), from their log lines.
    pub partial_pass_p50: Duration,
    /// nats-server's reload of the final file alone: SIGHUP until `config_load_time`
    /// advances, with nothing else running (the agents still connected).
    pub reload_alone: Duration,
    /// Agents connected to nats-server throughout (each its own certificate), how long they
    /// took to connect, and how many times one of them lost its connection meanwhile.
    pub agents: usize,
    pub connect_all: Duration,
    pub disconnects: u64,
}

impl WatchRun {
    pub fn label(&self) -> String {
        match self.watch {
            Some(s) => format!("watch ({s} s), resync 300 s"),
            None => "`intervals.watch: 0` (polling)".to_owned(),
        }
    }

    /// The `q`-quantile of the admissions (nearest rank).
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.admissions.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    pub fn max(&self) -> Duration {
        self.admissions.iter().max().copied().unwrap_or_default()
    }

    pub fn summary(&self) -> String {
        format!(
            "{}: p50 {:.3} s, p99 {:.3} s, max {:.3} s over {} creations; quiet {:.0} req/min",
            self.label(),
            self.quantile(0.5).as_secs_f64(),
            self.quantile(0.99).as_secs_f64(),
            self.max().as_secs_f64(),
            self.admissions.len(),
            self.quiet_per_minute
        )
    }
}

/// What one mode is asked to do.
pub struct Plan {
    pub deployments: usize,
    pub vms: usize,
    pub latency: Duration,
    pub poll_seconds: f64,
    pub creations: usize,
    /// Between two creations (plus a deterministic jitter of up to the same again, so that
    /// creations land at every phase of the event poll).
    pub spacing: Duration,
    pub quiet: Duration,
    /// Connects in flight while the agents connect.
    pub connect_parallel: usize,
}

/// Runs `binary` against the populated director and a real nats-server with the watch
/// `watch` (seconds; `None` = off) and `agents` connected, and measures `plan`.
pub async fn measure(
    world: &World,
    binary: &Path,
    plan: &Plan,
    watch: Option<f64>,
    agents: &[sim::pki::CertFiles],
) -> anyhow::Result<WatchRun> {
    let name = format!(
        "watch-{}-d{}",
        watch.map_or("off".to_owned(), |s| s.to_string()),
        plan.deployments
    );
    let files = world.cell(&name)?;
    let nats_dir = files.dir.join("nats");
    std::fs::create_dir_all(&nats_dir)?;
    let nats = sim::nats::NatsServer::start(&nats_dir, &world.pki, &files.auth_file)
        .await
        .context("starting nats-server")?;
    world.write_config(
        &files,
        &CellConfig {
            concurrency: 4,
            poll_seconds: plan.poll_seconds,
            nats: Some((nats.pid_file(), nats.monitoring_url())),
            watch: Some(watch.unwrap_or(0.0)),
            callout: None,
        },
    )?;
    // A director that records events and has deployed has an event log: here, its last
    // deploy (an `update` of one deployment, its lock and deployment events). On an empty
    // log the watch is `unproven` (the director may not record events) and polls in full
    // every `poll_user_sync` until the first event (§6.6).
    world.director.clear_events();
    world
        .director
        .create_deployment(&deployment_name(0), Vec::new());
    world.set_latency(plan.latency);
    let mut child = Running(
        command(world, binary, &files.config, &[])
            .spawn()
            .context("starting the binary")?,
    );

    // The start-up pass: converged and verifiably loaded.
    let started = Instant::now();
    let users = loop {
        let (lines, _) = pass_lines(&files.log, 0)?;
        if let Some(line) = lines.iter().find(|l| l["reloaded"].as_str() == Some("ok")) {
            break line["desired"].as_u64().unwrap_or(0);
        }
        ensure!(
            child.0.try_wait()?.is_none(),
            "the binary exited: {}",
            std::fs::read_to_string(&files.log).unwrap_or_default()
        );
        ensure!(
            started.elapsed() < Duration::from_secs(900),
            "no verified start-up pass within 900 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // The director's agents, connected from here to the end.
    let connecting = Instant::now();
    let fleet = crate::fleet::connect_fleet(
        nats.client_url(),
        nats.ca_file(),
        agents,
        plan.connect_parallel,
    )
    .await?;
    let connect_all = connecting.elapsed();
    eprintln!(
        "bench:   {} agents connected in {:.1} s",
        fleet.len(),
        connect_all.as_secs_f64()
    );

    // A quiet director: nothing changes for `plan.quiet`.
    world.director.reset_stats();
    let quiet_started = Instant::now();
    tokio::time::sleep(plan.quiet).await;
    let quiet_window = quiet_started.elapsed();
    let quiet_requests = world.requests();
    let quiet_events = world.director.request_count(Endpoint::Events);
    let quiet_per_minute = quiet_requests as f64 * 60.0 / quiet_window.as_secs_f64();

    // Creations, each on a deployment of its own turn, while a prober tries every pending
    // bootstrap certificate in turn.
    let certs = files.dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    let probe_every = Duration::from_millis(25);
    let mut pending: BTreeMap<usize, (sim::pki::CertFiles, Instant)> = BTreeMap::new();
    let mut admissions = Vec::with_capacity(plan.creations);
    let mut next_creation = Instant::now();
    let mut created = 0;
    let deadline_per_vm = Duration::from_secs_f64(plan.poll_seconds * 3.0 + 120.0);
    while admissions.len() < plan.creations {
        if created < plan.creations && Instant::now() >= next_creation {
            let id = agent_id(1_000_000 + created, 0);
            let cert = world
                .pki
                .client(&sim::pki::bootstrap_agent_cn(&id))?
                .write_to(&certs, &format!("vm-{created}"))?;
            let deployment = deployment_name(created * 7919 % plan.deployments);
            let creation = world.director.begin_create_vm(&deployment, Vm::agent(&id));
            world.director.finish_create_vm(creation);
            // The clock starts at the second create/vm event: the row is in, the VM boots.
            pending.insert(created, (cert, Instant::now()));
            created += 1;
            let jitter = plan
                .spacing
                .mul_f64((crate::world::mix(created as u64) % 1000) as f64 / 1000.0);
            next_creation = Instant::now() + plan.spacing + jitter;
        }
        let mut done = Vec::new();
        for (&n, (cert, since)) in &pending {
            if nats.connect(cert).await.is_ok() {
                admissions.push(since.elapsed());
                done.push(n);
            } else {
                ensure!(
                    since.elapsed() < deadline_per_vm,
                    "VM {n} was not admitted within {deadline_per_vm:?}; log:\n{}",
                    std::fs::read_to_string(&files.log).unwrap_or_default()
                );
            }
        }
        for n in done {
            pending.remove(&n);
        }
        ensure!(
            child.0.try_wait()?.is_none(),
            "the binary exited during the creations"
        );
        tokio::time::sleep(probe_every).await;
    }
    drop(child);
    let disconnects = fleet.disconnects();
    world.set_latency(Duration::ZERO);
    let mut partial: Vec<Duration> = pass_lines(&files.log, 0)?
        .0
        .iter()
        .filter(|l| l["kind"].as_str() == Some("partial") && l["written"].as_bool() == Some(true))
        .filter_map(|l| l["duration_ms"].as_u64().map(Duration::from_millis))
        .collect();
    partial.sort_unstable();
    let partial_pass_p50 = partial.get(partial.len() / 2).copied().unwrap_or_default();
    let reload_alone = nats.reload_and_wait(Duration::from_secs(900)).await?;
    drop(fleet);
    Ok(WatchRun {
        agents: agents.len(),
        connect_all,
        disconnects,
        nats_version: nats.version().to_owned(),
        partial_pass_p50,
        reload_alone,
        watch,
        poll_seconds: plan.poll_seconds,
        deployments: plan.deployments,
        vms: plan.vms,
        latency: plan.latency,
        users,
        quiet_per_minute,
        quiet_window,
        quiet_events,
        admissions,
        probe_every,
    })
}

/// The binary under measurement; killed when dropped (an early error included).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
