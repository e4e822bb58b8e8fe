//! The benchmark driver: runs the real `bosh-nats-sync` release binary against the simulated
//! director (HTTPS, sim PKI) in this process, over a grid of director sizes, latencies and
//! concurrencies, and writes the figures as markdown (the generated part of BENCHMARKS.md).
//!
//! Benchmarks measure; they do not assert timings. The targets section only reports
//! whether each figure met its target.

mod admission;
mod cells;
mod fleet;
mod measure;
mod report;
mod watch;
mod world;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use cells::{Cell, CellResult};
use world::World;

/// Measure bosh-nats-sync against a simulated director and write the figures as markdown.
#[derive(Parser, Debug)]
#[command(about)]
pub struct Args {
    /// The binary under test (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/bosh-nats-sync")]
    pub binary: PathBuf,
    /// A small grid (10 and 100 deployments, concurrency 1 and 4) that runs in under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Deployment counts (default 10,100,1000,5000; quick: 10,100).
    #[arg(long, value_delimiter = ',')]
    pub deployments: Option<Vec<usize>>,
    /// VMs per deployment.
    #[arg(long, default_value_t = 20)]
    pub vms: usize,
    /// Per-request director latencies in milliseconds (default 0,20).
    #[arg(long, value_delimiter = ',')]
    pub latency_ms: Option<Vec<u64>>,
    /// `director.max_concurrency` values (default 1,4,16; quick: 1,4).
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Option<Vec<usize>>,
    /// Warm passes measured per cell after the run mode's first pass (1 when a pass is
    /// expected to take over 10 s).
    #[arg(long, default_value_t = 3)]
    pub warm_passes: usize,
    /// Deployments for the real nats-server reload check (default 5000; quick: 100; 0 skips it).
    #[arg(long)]
    pub nats_deployments: Option<usize>,
    /// The nats-server binaries of the reload check, one column each (default: the one
    /// `$NATS_SERVER` or PATH names; `scripts/bench` passes every supported version).
    #[arg(long, value_delimiter = ',')]
    pub nats_server: Option<Vec<PathBuf>>,
    /// Deployments for the watch's admission benchmark (default 1000; quick: 100; 0 skips
    /// it). It runs the binary with the watch on and with `intervals.watch: 0`.
    #[arg(long)]
    pub watch_deployments: Option<usize>,
    /// VM creations measured per watch mode (default 60; quick: 10).
    #[arg(long)]
    pub creations: Option<usize>,
    /// Seconds of a quiet director counted per watch mode (default 60; quick: 10).
    #[arg(long)]
    pub quiet_seconds: Option<u64>,
    /// Per-request director latency of the watch benchmark, milliseconds.
    #[arg(long, default_value_t = 20)]
    pub watch_latency_ms: u64,
    /// Only the watch benchmark (no grid, idle or reload figures).
    #[arg(long, conflicts_with = "nats_only")]
    pub watch_only: bool,
    /// Only the admission benchmark (§12.5): file mode and callout mode side by side with
    /// real TLS agents connected to the nats-server `$NATS_SERVER` names (2.10 or later).
    #[arg(long, conflicts_with_all = ["nats_only", "watch_only"])]
    pub callout_only: bool,
    /// Agents connected during the admission benchmark, one run per mode each.
    #[arg(long, value_delimiter = ',', default_value = "1000,3000")]
    pub callout_agents: Vec<usize>,
    /// Deployments of the admission benchmark.
    #[arg(long, default_value_t = 1000)]
    pub callout_deployments: usize,
    /// VMs created one after another per callout-mode run.
    #[arg(long, default_value_t = 20)]
    pub callout_creations: usize,
    /// Connected agents' VMs deleted one after another per run of the admission benchmark
    /// (revocation, §12.6; 0: none).
    #[arg(long, default_value_t = 20)]
    pub deletions: usize,
    /// VMs created per file-mode run (default: as many as in callout mode; fewer when a
    /// file-mode run would take too long).
    #[arg(long)]
    pub file_creations: Option<usize>,
    /// Connects in flight while the agents connect.
    #[arg(long, default_value_t = 32)]
    pub connect_parallel: usize,
    /// Agents connected to nats-server (each its own certificate) in the watch benchmark and
    /// the reload check: a reload costs nats-server connected clients × users (default 1000;
    /// quick: 20).
    #[arg(long)]
    pub agents: Option<usize>,
    /// Only the real nats-server reload check, for every `--nats-server`.
    #[arg(long)]
    pub nats_only: bool,
    /// Replace the generated section of this markdown file (between the bench markers).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Also write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Run the binary under this command (split on spaces), e.g. for profiling:
    /// `--wrapper "valgrind --tool=massif --massif-out-file=/tmp/massif.%p"`.
    /// Memory and CPU figures then describe the wrapper, not the binary alone.
    #[arg(long)]
    pub wrapper: Option<String>,
    /// Keep the idle process running this many seconds after measuring it (to inspect it).
    #[arg(long, default_value_t = 0)]
    pub hold_idle: u64,
    /// The command line to print as "reproduce with".
    #[arg(long, default_value = "scripts/bench")]
    pub command: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let binary = std::fs::canonicalize(&args.binary)
        .with_context(|| format!("{} (run cargo build --release)", args.binary.display()))?;
    let deployments = args.deployments.clone().unwrap_or(if args.quick {
        vec![10, 100]
    } else {
        vec![10, 100, 1000, 5000]
    });
    let latencies = args.latency_ms.clone().unwrap_or(vec![0, 20]);
    let concurrencies = args.concurrency.clone().unwrap_or(if args.quick {
        vec![1, 4]
    } else {
        vec![1, 4, 16]
    });
    let nats_deployments = args
        .nats_deployments
        .unwrap_or(if args.quick { 100 } else { 5000 });

    let world = World::start(args.wrapper.as_deref()).await?;
    let started = std::time::Instant::now();
    let mut results: Vec<CellResult> = Vec::new();
    let only = args.watch_only || args.nats_only || args.callout_only;
    let grid = if only { &[][..] } else { &deployments[..] };
    for &d in grid {
        world.populate(d, args.vms);
        for &latency in &latencies {
            for &concurrency in &concurrencies {
                let cell = Cell {
                    deployments: d,
                    vms: args.vms,
                    latency: Duration::from_millis(latency),
                    concurrency,
                };
                eprintln!("bench: {cell} ...");
                let warm = if cell.bound().unwrap_or_default() > Duration::from_secs(10) {
                    1
                } else {
                    args.warm_passes.max(1)
                };
                let result = cells::measure(&world, &binary, cell, warm)
                    .await
                    .with_context(|| format!("cell {cell}"))?;
                eprintln!("bench:   {}", result.summary());
                results.push(result);
            }
        }
    }
    world.set_latency(Duration::ZERO);

    let idle = if only {
        None
    } else {
        eprintln!("bench: idle RSS ...");
        world.populate(10, args.vms);
        let idle = cells::idle(&world, &binary, Duration::from_secs(args.hold_idle))
            .await
            .context("idle RSS")?;
        eprintln!("bench:   {idle:?}");
        Some(idle)
    };

    let agents = args.agents.unwrap_or(if args.quick { 20 } else { 1000 });
    let mut nats = Vec::new();
    if nats_deployments > 0 && !args.watch_only && !args.callout_only {
        world.populate(nats_deployments, args.vms);
        let servers = args
            .nats_server
            .clone()
            .unwrap_or_else(|| vec![sim::nats::executable()]);
        for exe in &servers {
            eprintln!(
                "bench: real nats-server {} reload with {nats_deployments} deployments ...",
                exe.display()
            );
            let certs = fleet::agent_certs(&world, agents, nats_deployments)
                .context("the agents' certificates")?;
            let n = cells::nats_reload(
                &world,
                &binary,
                exe,
                nats_deployments,
                args.vms,
                &certs,
                args.connect_parallel,
            )
            .await
            .with_context(|| format!("nats-server reload check ({})", exe.display()))?;
            eprintln!("bench:   {n:?}");
            nats.push(n);
        }
    }

    let watch_deployments = if args.nats_only || args.callout_only {
        0
    } else {
        args.watch_deployments
            .unwrap_or(if args.quick { 100 } else { 1000 })
    };
    let mut watch_runs = Vec::new();
    if watch_deployments > 0 {
        let plan = watch::Plan {
            deployments: watch_deployments,
            vms: args.vms,
            latency: Duration::from_millis(args.watch_latency_ms),
            poll_seconds: 10.0,
            creations: args.creations.unwrap_or(if args.quick { 10 } else { 60 }),
            spacing: Duration::from_millis(700),
            quiet: Duration::from_secs(args.quiet_seconds.unwrap_or(if args.quick {
                10
            } else {
                60
            })),
            connect_parallel: args.connect_parallel,
        };
        let certs = fleet::agent_certs(&world, agents, plan.deployments)
            .context("the agents' certificates")?;
        for mode in [Some(1.0), None] {
            eprintln!(
                "bench: watch {mode:?}: {} x {} at {} ms ...",
                plan.deployments, plan.vms, args.watch_latency_ms
            );
            world.populate(plan.deployments, plan.vms);
            let run = watch::measure(&world, &binary, &plan, mode, &certs)
                .await
                .with_context(|| format!("the watch benchmark ({mode:?})"))?;
            eprintln!("bench:   {}", run.summary());
            watch_runs.push(run);
        }
    }

    let mut admission_runs = Vec::new();
    if args.callout_only {
        let exe = sim::nats::executable();
        let version = sim::nats::version(&exe)?;
        if !sim::nats::has_auth_callout(&version) {
            bail!(
                "nats-server {version} ({}) has no auth callout: name 2.10 or later in $NATS_SERVER",
                exe.display()
            );
        }
        let plan = admission::Plan {
            deployments: args.callout_deployments,
            vms: args.vms,
            latency: Duration::from_millis(args.watch_latency_ms),
            creations: args.callout_creations,
            deletions: args.deletions,
            file_creations: args.file_creations.unwrap_or(args.callout_creations),
            spacing: Duration::from_millis(700),
            retry: Duration::from_millis(100),
            director_every: Duration::from_millis(100),
            connect_parallel: args.connect_parallel,
            nats_server: exe,
        };
        let most = args.callout_agents.iter().copied().max().unwrap_or(0);
        let certs = fleet::agent_certs(&world, most, plan.deployments)
            .context("the agents' certificates")?;
        for &n in &args.callout_agents {
            for mode in [admission::Mode::File, admission::Mode::Callout] {
                eprintln!(
                    "bench: admission, {} mode, {n} agents connected, {} x {} at {} ms ...",
                    mode.label(),
                    plan.deployments,
                    plan.vms,
                    args.watch_latency_ms
                );
                let run = admission::measure(&world, &binary, &plan, mode, &certs[..n])
                    .await
                    .with_context(|| format!("admission, {} mode, {n} agents", mode.label()))?;
                eprintln!("bench:   {}", run.summary());
                admission_runs.push(run);
            }
        }
    }

    let report = report::Report {
        command: &args.command,
        results: &results,
        idle: idle.as_ref(),
        nats: &nats,
        watch: &watch_runs,
        admission: &admission_runs,
        elapsed: started.elapsed(),
    };
    let markdown = (!only).then(|| report.markdown());
    let watch_markdown = report.watch_markdown();
    let nats_markdown = report.nats_markdown();
    let admission_markdown = report.admission_markdown();
    match &args.markdown {
        Some(path) => {
            if let Some(markdown) = &markdown {
                report::replace_section(path, markdown)?;
            }
            if let Some(watch) = &watch_markdown {
                report::replace_watch_section(path, watch)?;
            }
            if let Some(section) = &nats_markdown {
                report::replace_nats_section(path, section)?;
            }
            if let Some(section) = &admission_markdown {
                report::replace_admission_section(path, section)?;
            }
            eprintln!("bench: wrote {}", path.display());
        }
        None => {
            for section in markdown
                .iter()
                .chain(&nats_markdown)
                .chain(&watch_markdown)
                .chain(&admission_markdown)
            {
                println!("{section}");
            }
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report.json())?)?;
    }
    let failed = results.iter().filter(|r| !r.noop_clean()).count();
    if failed > 0 {
        bail!("{failed} cell(s) wrote or reloaded on a no-op pass");
    }
    Ok(())
}
