//! `bosh-nats-sync demo`: the real controller against a built-in simulated director, so a
//! newcomer sees it work with one command. Everything lives in one directory: a generated
//! CA, the simulated director over HTTPS (basic auth) with VMs that come and go, subject
//! files, the auth file, the config file — and a real nats-server with `verify_and_map` when
//! one is on PATH (otherwise this process stands in for it and receives the SIGHUP reloads).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sim::churn::Churn;
use sim::nats::NatsServer;
use sim::stage::Stage;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat};

/// Options of the `demo` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Directory for the generated files (default: a new temporary directory, kept).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Deployments on the simulated director.
    #[arg(long, default_value_t = 3)]
    pub deployments: usize,
    /// VMs per deployment (the churn keeps each deployment around this size).
    #[arg(long, default_value_t = 4)]
    pub vms: usize,
    /// Milliseconds between VM creations/deletions per deployment (0 = no churn).
    #[arg(long, default_value_t = 3000)]
    pub churn_ms: u64,
    /// Seconds between passes (intervals.poll_user_sync).
    #[arg(long, default_value_t = 5.0)]
    pub poll: f64,
    /// Seconds between reads of the director's event log (intervals.watch; 0 = off, every
    /// change then waits for a full pass).
    #[arg(long, default_value_t = 1.0)]
    pub watch: f64,
    /// Address for /metrics, /healthz, /readyz, /status.
    #[arg(long, default_value = crate::config::DEFAULT_LISTEN)]
    pub listen: String,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Do not start nats-server even if one is on PATH.
    #[arg(long)]
    pub no_nats: bool,
}

const USER: &str = "admin";
const PASSWORD: &str = "demo-password";

pub fn demo(args: DemoArgs) -> ExitCode {
    crate::telemetry::init(LogFormat::Text, "info", None).ok();
    crate::tls::install_crypto_provider();
    match crate::modes::runtime().block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bosh-nats-sync demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: DemoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            std::fs::canonicalize(d)?
        }
        None => tempfile::Builder::new()
            .prefix("bosh-nats-sync-demo-")
            .tempdir()?
            .keep(),
    };
    let stage = Stage::start(&dir, args.deployments, args.vms, USER, PASSWORD)
        .await
        .map_err(|e| e.to_string())?;
    let director = &stage.director;
    let auth_file = stage.auth_file.clone();
    let churns: Vec<Churn> = if args.churn_ms == 0 {
        Vec::new()
    } else {
        stage.churn_every_deployment(Duration::from_millis(args.churn_ms))
    };

    let nats = if !args.no_nats && is_executable(&sim::nats::executable()) {
        let nats_dir = dir.join("nats");
        std::fs::create_dir_all(&nats_dir)?;
        Some(NatsServer::start(&nats_dir, &stage.pki, &auth_file).await?)
    } else {
        None
    };
    let reloads = Arc::new(AtomicU64::new(0));
    let (pid_file, monitoring) = match &nats {
        Some(server) => (
            server.pid_file().to_owned(),
            format!("  monitoring_url: {}\n", server.monitoring_url()),
        ),
        None => {
            let pid_file = dir.join("stand-in-nats.pid");
            std::fs::write(&pid_file, std::process::id().to_string())?;
            stand_in_for_nats(reloads.clone())?;
            (pid_file, String::new())
        }
    };

    let config_path = dir.join("bosh_nats_sync_config.yml");
    std::fs::write(
        &config_path,
        format!(
            "---\n# Written by `bosh-nats-sync demo`: the BOSH job template's keys plus a few new ones.\n\
             {director}\
             intervals:\n  poll_user_sync: {poll}\n  watch: {watch}\n\
             nats:\n  config_file_path: {auth}\n  nats_server_pid_file: {pid}\n{monitoring}\
             http:\n  listen: {listen}\n",
            director = stage.director_yaml(),
            poll = args.poll,
            watch = args.watch,
            auth = auth_file.display(),
            pid = pid_file.display(),
            listen = args.listen,
        ),
    )?;
    let config = Config::load(&config_path, |_| None)?;

    println!("bosh-nats-sync demo — everything is in {}", dir.display());
    println!(
        "  simulated director: {} ({} deployments × ~{} VMs, churn every {} ms)",
        director.url(),
        args.deployments,
        args.vms,
        args.churn_ms
    );
    match &nats {
        Some(server) => println!(
            "  nats-server:        {} {} (verify_and_map; pid {}; monitoring {})",
            server.version(),
            server.client_url(),
            server.pid(),
            server.monitoring_url()
        ),
        None => println!(
            "  nats-server:        not on PATH and not named by $NATS_SERVER (apt-get install nats-server); this process receives the SIGHUP reloads instead"
        ),
    }
    if args.watch > 0.0 {
        println!(
            "  watch:              the event log read every {} s: each VM the churn creates is admitted by a partial pass that refetches only the deployments the events name (log lines kind=\"partial\" refetched=N, N of {}); full passes every {} s only until the log proves it is written, then every 300 s",
            args.watch, args.deployments, args.poll
        );
    } else {
        println!(
            "  watch:              off: every change waits for a full pass every {} s",
            args.poll
        );
    }
    println!("  config:             {}", config_path.display());
    println!(
        "  auth file:          {}   (watch it: watch -n1 cat {})",
        auth_file.display(),
        auth_file.display()
    );
    println!(
        "  status:             curl -s http://{}/status; curl -s http://{}/metrics",
        args.listen, args.listen
    );
    println!("  Ctrl-C stops it.\n");

    let cancel = CancellationToken::new();
    crate::modes::cancel_on_signals(cancel.clone());
    if let Some(secs) = args.duration {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            cancel.cancel();
        });
    }
    let code = crate::modes::run_until_cancelled(config, cancel).await;
    for churn in &churns {
        churn.stop();
    }
    if nats.is_none() {
        println!(
            "the stand-in received {} reload signals",
            reloads.load(Ordering::Relaxed)
        );
    }
    Ok(code)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Without nats-server, this process is the reload target: the pid file names it, and each
/// SIGHUP the controller sends is counted and logged.
fn stand_in_for_nats(reloads: Arc<AtomicU64>) -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let n = reloads.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(
                reloads = n,
                "stand-in nats-server: reload signal (SIGHUP) received"
            );
        }
    });
    Ok(())
}
