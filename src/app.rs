//! The program's modes — run, once, diff, check-config, demo — each a function from a
//! validated configuration to an exit status. `main` only parses arguments and calls these.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{BuildInfo, Health, Metrics, PassOutcome};
use reconcile::{Action, BackoffConfig, PassContext, SelfWrites};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::controller::{Controller, PassError, PassReport};

/// `0.1.0 (rev abc123def456)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("BOSH_NATS_SYNC_REVISION"),
    ")"
);

/// Exit status when a pass failed (once) or the program could not start (run).
const EXIT_FAILED: u8 = 1;
/// Exit status for usage and configuration errors.
const EXIT_CONFIG: u8 = 2;
/// Exit status of `diff` when a pass would change something.
const EXIT_DIFFERS: u8 = 3;

pub fn build_info() -> BuildInfo {
    BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        revision: env!("BOSH_NATS_SYNC_REVISION"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // One thread is plenty for a controller that mostly waits on the network, and keeps
    // the resident memory small.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect(
            "building a current-thread tokio runtime only fails if the OS denies timers or epoll",
        )
}

/// The metrics registry and the loop's health record (which updates the same metrics).
fn observability(config: &Config) -> (Arc<Metrics>, Arc<Health>) {
    let metrics = Arc::new(Metrics::with_build_info(build_info()));
    let limit = Health::liveness_limit(
        config.poll_interval,
        config.backoff_max,
        config.pass_timeout,
    );
    (metrics.clone(), Arc::new(Health::new(metrics, limit)))
}

/// Cancels `token` on the first SIGTERM or SIGINT.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!(
                "cannot install SIGTERM/SIGINT handlers; stop the process with SIGKILL"
            );
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: stopping"),
            _ = int.recv() => tracing::info!("SIGINT received: stopping"),
        }
        token.cancel();
    });
}

/// `check-config`: the file parses and validates, and the CA files hold certificates.
pub fn check_config(config: &Config) -> ExitCode {
    let (metrics, health) = observability(config);
    match Controller::new(config.clone(), metrics, health) {
        Ok(_) => {
            for key in &config.unknown_keys {
                println!(
                    "warning: {}: unknown key {key} (ignored)",
                    config.path.display()
                );
            }
            println!(
                "{}: OK (director {}, auth file {}, reload via {})",
                config.path.display(),
                config.director.url,
                config.nats.auth_file.display(),
                match &config.nats.executable {
                    Some(exe) => format!("{} --signal reload", exe.display()),
                    None => "SIGHUP".to_owned(),
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "bosh-nats-sync: invalid configuration: {}: {e}",
                config.path.display()
            );
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Builds the controller or reports why not (a configuration problem: exit 2).
fn controller(
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<Controller, ExitCode> {
    let path = config.path.clone();
    Controller::new(config, metrics, health).map_err(|e| {
        tracing::error!(error = %e, "cannot start");
        eprintln!(
            "bosh-nats-sync: invalid configuration: {}: {e}",
            path.display()
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

/// `once`: one pass, bounded by the pass timeout and cancelled by SIGTERM/SIGINT.
pub fn once(config: Config) -> ExitCode {
    let timeout = config.pass_timeout;
    let (metrics, health) = observability(&config);
    let controller = match controller(config, metrics, health) {
        Ok(c) => c,
        Err(code) => return code,
    };
    runtime().block_on(async {
        let cancel = CancellationToken::new();
        cancel_on_signals(cancel.clone());
        let started = tokio::time::Instant::now();
        let span = crate::telemetry::pass_span(1, "once");
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, controller.pass().instrument(span.clone())) => r,
            _ = cancel.cancelled() => {
                tracing::warn!("cancelled before the pass finished");
                return ExitCode::from(EXIT_FAILED);
            }
        };
        if let Ok(outcome) = &result {
            crate::telemetry::record_pass(&span, outcome.as_ref());
        }
        match result {
            Ok(Ok(report)) => {
                log_pass_success(None, &report, started.elapsed());
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                log_pass_error(None, e.reason(), &e, started.elapsed());
                ExitCode::from(EXIT_FAILED)
            }
            Err(_) => {
                tracing::error!(timeout = ?timeout, "the pass timed out; nothing was written");
                ExitCode::from(EXIT_FAILED)
            }
        }
    })
}

/// `diff`: print what a pass would change; writes and reloads nothing.
pub fn diff(config: Config) -> ExitCode {
    let timeout = config.pass_timeout;
    let auth_file = config.nats.auth_file.clone();
    let (metrics, health) = observability(&config);
    let controller = match controller(config, metrics, health) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let plan = runtime().block_on(async { tokio::time::timeout(timeout, controller.plan()).await });
    let plan = match plan {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => {
            eprintln!("bosh-nats-sync: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
        Err(_) => {
            eprintln!(
                "bosh-nats-sync: reading the director took longer than the {timeout:?} pass timeout"
            );
            return ExitCode::from(EXIT_FAILED);
        }
    };
    println!(
        "auth file {}: {}",
        auth_file.display(),
        plan.observed.describe()
    );
    println!("director: {} users desired", plan.desired.users.len());
    for user in &plan.added {
        println!("+ {user}");
    }
    for user in &plan.removed {
        println!("- {user}");
    }
    for user in &plan.changed {
        println!("~ {user} (permissions differ)");
    }
    if plan.in_sync() {
        println!("in sync: a pass would write nothing");
        ExitCode::SUCCESS
    } else {
        println!(
            "a pass would write the file: {} added, {} removed, {} changed",
            plan.added.len(),
            plan.removed.len(),
            plan.changed.len()
        );
        ExitCode::from(EXIT_DIFFERS)
    }
}

/// `run` (the default): the controller until SIGTERM/SIGINT, with the HTTP endpoints.
pub fn run(config: Config) -> ExitCode {
    runtime().block_on(run_until_cancelled(config, CancellationToken::new(), true))
}

/// The long-running mode; `signals` installs the SIGTERM/SIGINT handlers (the demo has its own).
pub async fn run_until_cancelled(
    config: Config,
    cancel: CancellationToken,
    signals: bool,
) -> ExitCode {
    if signals {
        cancel_on_signals(cancel.clone());
    }
    let (metrics, health) = observability(&config);
    let poll = config.poll_interval;
    let backoff = BackoffConfig {
        min: config.backoff_min,
        max: config.backoff_max,
        factor: 2.0,
        jitter: true,
    };
    let pass_timeout = config.pass_timeout;

    let server = match config.http_listen {
        Some(addr) => match metrics::bind(addr).await {
            Ok(listener) => {
                tracing::info!(address = %addr, "serving /metrics, /healthz, /readyz and /status");
                Some(tokio::spawn(metrics::serve(
                    listener,
                    metrics.clone(),
                    health.clone(),
                    cancel.clone(),
                )))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the HTTP server");
                eprintln!(
                    "bosh-nats-sync: {e} (set http.listen to another address or http.enabled: false)"
                );
                return ExitCode::from(EXIT_FAILED);
            }
        },
        None => None,
    };

    let self_writes = SelfWrites::new();
    let recorder = self_writes.clone();
    let controller = match controller(config, metrics, health.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let controller = Arc::new(controller.on_write(Arc::new(move |path, meta| {
        recorder.record(path, reconcile::FileIdentity::from_metadata(meta));
    })));
    let paths = controller.watched_paths();
    let last_report: Arc<Mutex<Option<PassReport>>> = Arc::default();

    let reconciler = {
        let controller = controller.clone();
        let last_report = last_report.clone();
        move |ctx: PassContext| {
            let controller = controller.clone();
            let last_report = last_report.clone();
            let span = crate::telemetry::pass_span_for(&ctx);
            async move {
                let result = controller.pass().instrument(span.clone()).await;
                crate::telemetry::record_pass(&span, result.as_ref());
                release_freed_memory();
                let report = result?;
                *last_report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
                Ok::<_, PassError>(Action::AwaitTrigger)
            }
        }
    };
    tracing::info!(
        version = VERSION,
        director = %controller.config().director.url,
        auth_file = %controller.config().nats.auth_file.display(),
        poll_interval = ?poll,
        "bosh-nats-sync starting"
    );
    reconcile::Controller::new(reconciler)
        .interval(poll)
        .watch(paths)
        .self_writes(self_writes)
        .backoff(backoff)
        .pass_timeout(pass_timeout)
        .observer(LoopObserver {
            health,
            last_report,
        })
        .run(cancel.clone())
        .await;
    cancel.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    tracing::info!("bosh-nats-sync stopped");
    ExitCode::SUCCESS
}

/// Feeds every pass to `/healthz`, `/status`, the metrics, and the one log line per pass.
struct LoopObserver {
    health: Arc<Health>,
    last_report: Arc<Mutex<Option<PassReport>>>,
}

impl reconcile::Observer<PassError> for LoopObserver {
    fn on_pass_start(&self, _ctx: &PassContext) {
        self.health.pass_started();
    }

    fn on_pass_end(&self, outcome: &reconcile::PassOutcome<'_, PassError>) {
        let report = self
            .last_report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match (&outcome.result, report) {
            (Ok(_), Some(report)) => {
                log_pass_success(Some(outcome.context), &report, outcome.duration);
                self.health.pass_finished(metrics::PassReport {
                    outcome: if report.written {
                        PassOutcome::Changed
                    } else {
                        PassOutcome::Unchanged
                    },
                    desired: Some((&report).into()),
                    observed_users: Some(if report.written {
                        report.desired_total()
                    } else {
                        report.observed_users
                    }),
                    held: report.held.is_some(),
                });
            }
            (Ok(_), None) => {
                tracing::error!("a pass succeeded without a report; this is a bug");
            }
            (Err(e), _) => {
                let reason = match e {
                    reconcile::PassError::Failed(inner) => inner.reason(),
                    other => other.reason(),
                };
                log_pass_error(Some(outcome.context), reason, e, outcome.duration);
                self.health
                    .pass_finished(metrics::PassReport::failed(reason, e.to_string()));
            }
        }
        if let Some(next) = outcome.next_pass_in() {
            self.health.next_pass_in(next);
        }
    }
}

fn log_pass_success(ctx: Option<&PassContext>, r: &PassReport, duration: Duration) {
    tracing::info!(
        pass = ctx.map(|c| c.to_string()),
        desired = r.desired_total(),
        agents = r.desired.agent,
        added = r.added,
        removed = r.removed,
        written = r.written,
        held_removals = r.held,
        reloaded = r.reloaded.map(|r| r.label()),
        skipped_vms = r.skipped.no_agent_id + r.skipped.invalid_agent_id + r.skipped.duplicate,
        duration_ms = duration.as_millis() as u64,
        "pass {}",
        if r.written {
            "changed the auth file"
        } else {
            "found nothing to change"
        }
    );
}

fn log_pass_error(
    ctx: Option<&PassContext>,
    reason: &str,
    error: &dyn std::error::Error,
    duration: Duration,
) {
    tracing::error!(
        pass = ctx.map(|c| c.to_string()),
        reason,
        error = %error,
        duration_ms = duration.as_millis() as u64,
        "pass failed"
    );
}

/// Hands the memory a pass freed back to the kernel. A pass over a big director allocates
/// and frees tens of MiB of small strings; glibc keeps freed chunks in its heap (the top of
/// the heap is rarely free, so it seldom trims by itself), and the process would sit at its
/// peak resident size between passes. musl returns memory by itself.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases the allocator's free lists; it is safe to
    // call at any time from any thread.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
