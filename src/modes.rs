//! The program's modes — run, once, diff, check-config, init — each a function from a validated
//! configuration to an exit status, and callout-keys, which needs none. `main` only parses
//! arguments and calls these.

use std::process::ExitCode;
use std::sync::Arc;

use metrics::{BuildInfo, Health, Label, Metrics};
use reconcile::{BackoffConfig, Failure, PassContext, SelfWrites};
use tokio_util::sync::CancellationToken;

use crate::callout::admitted::{Publisher, Subscriber};
use crate::callout::answer::UserTtl;
use crate::callout::report::Reported;
use crate::callout::responder::{self, Link, Poller, Responder};
use crate::callout::revoker::{Revoker, Timing};
use crate::callout::state::CalloutAdmission;
use crate::callout::{KeyError, Keys};
use crate::config::{Admission, CalloutSettings, Config};
use crate::director;
use crate::pass::observe::Admitted as _;
use crate::pass::watch::{Watch, WatchSettings};
use crate::pass::{FileAdmission, PassError, Paths, Reconciler, Tick, report};
use crate::reload::Reloader;
use crate::users::{AgentId, agent};

/// The version and revision this binary was built from (the revision comes from `build.rs`).
pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    revision: env!("BOSH_NATS_SYNC_REVISION"),
};

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
/// Exit status of `diff` when the next pass would write the file.
const EXIT_DIFFERS: u8 = 3;
/// Exit status of `diff` when the file differs from the director only by removals that
/// damping holds back: the next pass writes nothing.
const EXIT_HELD: u8 = 4;

/// The reconciler the modes run — the real director client, and the admission the
/// configuration chose (§12) — and what callout mode needs beside it.
enum Live {
    File(Reconciler<director::Client, FileAdmission<Reloader>>),
    Callout(Reconciler<director::Client, CalloutAdmission>, Box<Callout>),
}

/// Callout mode's parts beside the reconciler: the keys, where to connect, the set the
/// responder reads.
struct Callout {
    keys: Arc<Keys>,
    settings: CalloutSettings,
    admitted: Subscriber,
}

/// Runs `$body` with `$r` bound to the reconciler, whichever the mode.
macro_rules! with_reconciler {
    ($live:expr, $r:ident => $body:expr) => {
        match $live {
            Live::File($r) => $body,
            Live::Callout($r, _) => $body,
        }
    };
}

/// Why the program cannot start: a configuration problem found when its files are read.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Director(#[from] director::SettingsError),
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// One thread is plenty for a controller that mostly waits on the network, and keeps the
/// resident memory small. (The demo runs on it too.)
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect(
            "building a current-thread tokio runtime only fails if the OS denies timers or epoll",
        )
}

/// The metrics registry — every label value known in advance, every error reason a pass can
/// fail with among them, exported at 0 from the start (§8) — and the loop's health record
/// (which updates the same metrics; the watch off until it reports).
fn observability(config: &Config) -> (Arc<Metrics>, Arc<Health>) {
    let metrics = Arc::new(Metrics::with_labels(BUILD, &labels()));
    let limit = Health::liveness_limit(
        config.poll_interval,
        config.backoff_max,
        config.pass_timeout,
    );
    let health = Health::new(metrics.clone(), limit, Watch::unreported());
    if config.ready_after_full_pass {
        health.ready_after_full_pass();
    }
    (metrics, Arc::new(health))
}

/// Every label value known in advance, the program's whole vocabulary: the passes' and the
/// callout responder's (§8).
pub fn labels() -> metrics::Labels {
    metrics::Labels {
        callout_results: crate::callout::report::CalloutResult::values(),
        revocation_results: crate::callout::report::RevocationResult::values(),
        ..report::labels()
    }
}

/// Builds the reconciler — the director client checks its CA files and key here, callout
/// mode its seed files — or says why not (a configuration problem).
fn reconciler(
    config: &Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<Live, StartError> {
    let client = director::Client::new(config.director.clone(), metrics.clone())?;
    let paths = Paths::of(config);
    Ok(match &config.admission {
        Admission::File => Live::File(Reconciler::new(
            paths,
            config.damping,
            client,
            Reloader::new(config.nats.clone()),
            metrics,
            health,
        )),
        Admission::Callout(settings) => {
            let keys = Keys::from_files(
                &settings.issuer_seed_file,
                settings.xkey_seed_file.as_deref(),
            )?;
            health.callout_mode();
            let publisher = Publisher::new();
            let admitted = publisher.subscribe();
            let admission = CalloutAdmission::new(settings.state_file.clone(), publisher);
            let reconciler =
                Reconciler::admitting(paths, config.damping, client, admission, metrics, health);
            let callout = Callout {
                keys: Arc::new(keys),
                settings: settings.clone(),
                admitted,
            };
            Live::Callout(reconciler, Box::new(callout))
        }
    })
}

/// [`reconciler`] for the modes that run passes: a problem is logged, printed, and exit 2.
fn start(config: &Config, metrics: Arc<Metrics>, health: Arc<Health>) -> Result<Live, ExitCode> {
    reconciler(config, metrics, health).map_err(|e| {
        tracing::error!(error = %e, "cannot start");
        eprintln!(
            "bosh-nats-sync: invalid configuration: {}: {e}",
            config.path.display()
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
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

/// `callout-keys`: prints a new issuer key pair, and a curve pair with `xkey` (§12). The
/// seeds go to stdout only, for the operator or init container that asked.
pub fn callout_keys(xkey: bool) -> ExitCode {
    use std::io::Write;
    let text = crate::callout::new_keys_text(xkey);
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bosh-nats-sync: cannot write the keys: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// `init`: writes the auth file nats-server should start with (§12.3) and prints what it
/// holds — its path, the admission mode, the file's mode, the users — never a seed. Exit 0
/// when the file holds it (written, or already so), 2 when the configuration names something
/// that cannot work, 1 when the file cannot be read or written.
pub fn init(config: &Config) -> ExitCode {
    match crate::init::init(config) {
        Ok(done) => {
            println!(
                "{} {} ({} admission, mode {:04o}, {} users)",
                if done.written { "wrote" } else { "unchanged:" },
                done.path.display(),
                done.admission,
                done.mode,
                done.users
            );
            for line in &done.details {
                println!("  {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bosh-nats-sync: init: {e}");
            ExitCode::from(match e {
                crate::init::InitError::Config(_) => EXIT_CONFIG,
                crate::init::InitError::Io(_) => EXIT_FAILED,
            })
        }
    }
}

/// `check-config`: the file parses and validates, and the CA files hold certificates.
pub fn check_config(config: &Config) -> ExitCode {
    let (metrics, health) = observability(config);
    if let Err(e) = reconciler(config, metrics, health) {
        eprintln!(
            "bosh-nats-sync: invalid configuration: {}: {e}",
            config.path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    for key in &config.unknown_keys {
        println!(
            "warning: {}: unknown key {key} (ignored)",
            config.path.display()
        );
    }
    let admission = match &config.admission {
        Admission::File => format!(
            "reload via {}",
            match &config.nats.executable {
                Some(exe) => format!("{} --signal reload", exe.display()),
                None => "SIGHUP".to_owned(),
            }
        ),
        Admission::Callout(c) => format!(
            "callout mode: answering {} for nats-server at {}, admitted set in {}",
            responder::SUBJECT,
            c.url,
            c.state_file.display()
        ),
    };
    println!(
        "{}: OK (director {}, auth file {}, {admission}, {}{})",
        config.path.display(),
        config.director.url,
        config.nats.auth_file.display(),
        describe_watch(config),
        match (&config.admission, config.ready_after_full_pass) {
            (Admission::File, true) => ", ready after the first full pass",
            _ => "",
        }
    );
    ExitCode::SUCCESS
}

/// The watch's settings (§6.6) as `check-config` prints them.
fn describe_watch(config: &Config) -> String {
    let resync = config.resync_interval.as_secs_f64();
    match config.watch_interval {
        Some(watch) => format!(
            "watch every {}s, resync every {resync}s",
            watch.as_secs_f64()
        ),
        None => format!(
            "watch off (full passes every {}s), resync every {resync}s unused",
            config.poll_interval.as_secs_f64()
        ),
    }
}

/// `once`: one pass, bounded by the pass timeout and cancelled by SIGTERM/SIGINT.
pub fn once(config: Config) -> ExitCode {
    let timeout = config.pass_timeout;
    let (metrics, health) = observability(&config);
    let reconciler = match start(&config, metrics, health.clone()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime().block_on(async {
        let cancel = CancellationToken::new();
        cancel_on_signals(cancel.clone());
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, async {
                with_reconciler!(&reconciler, r => r.full_pass(report::span(1, "once")).await)
            }) => match r {
                Ok(result) => result.map_err(Failure::Failed),
                Err(_elapsed) => Err(Failure::Timeout(timeout)),
            },
            _ = cancel.cancelled() => {
                tracing::warn!("cancelled before the pass finished");
                return ExitCode::from(EXIT_FAILED);
            }
        };
        report::finished(&health, None, result.as_ref(), started.elapsed());
        match result {
            Ok(_) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(EXIT_FAILED),
        }
    })
}

/// `diff`: print what the next pass would do — the same observation and decision as a pass,
/// damping included — and write or reload nothing.
pub fn diff(config: Config) -> ExitCode {
    let timeout = config.pass_timeout;
    let (metrics, health) = observability(&config);
    let reconciler = match start(&config, metrics, health) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let location = with_reconciler!(&reconciler, r => r.admission().location().to_owned());
    let planned = runtime().block_on(async {
        tokio::time::timeout(timeout, async {
            with_reconciler!(&reconciler, r => r.plan_next().await)
        })
        .await
    });
    let plan = match planned {
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
    let decision = &plan.decision;
    let what = match config.admission {
        Admission::File => "auth file",
        Admission::Callout(_) => "admitted set",
    };
    let closing = match &config.admission {
        Admission::File => None,
        Admission::Callout(settings) => Some(runtime().block_on(connections_to_close(
            settings,
            &crate::callout::admitted::AdmittedSet::of(&decision.users),
        ))),
    };
    println!("{what} {}: {}", location.display(), plan.file);
    let held_users = decision.held.as_ref().map_or(0, |held| {
        held.keep.len() + held.keep.values().filter(|bootstrap| **bootstrap).count()
    });
    println!(
        "director: {} users desired",
        decision.users.len() - held_users
    );
    let changes = &decision.changes;
    for user in &changes.added {
        println!("+ {user}");
    }
    for user in &changes.removed {
        println!("- {user}");
    }
    for user in &changes.changed {
        println!("~ {user} (permissions differ)");
    }
    if let Some(held) = &decision.held {
        for (id, bootstrap) in &held.keep {
            for dn in held_subjects(id, *bootstrap) {
                println!("! {dn} (removal held by damping)");
            }
        }
        println!(
            "damping holds the removal of {} of the {} agents in the file: a pass applies it once the director reports the same state on {} consecutive passes (damping.confirmations)",
            held.removing, held.agents_in_file, held.needed
        );
    }
    if let Some(closing) = &closing {
        print_closing(&config, closing);
    }
    if decision.write {
        println!(
            "a pass would write the file: {} added, {} removed, {} changed{}",
            changes.added.len(),
            changes.removed.len(),
            changes.changed.len(),
            if decision.held.is_some() {
                ", the held removals kept"
            } else {
                ""
            }
        );
        ExitCode::from(EXIT_DIFFERS)
    } else if decision.held.is_some() {
        println!("a pass would write nothing: every difference is a held removal");
        ExitCode::from(EXIT_HELD)
    } else {
        println!("in sync: a pass would write nothing");
        ExitCode::SUCCESS
    }
}

/// `diff` in callout mode (§12.6): the live connections the set after the next pass would not
/// allow, as a revocation check would see them — or why nats-server could not be asked.
async fn connections_to_close(
    settings: &CalloutSettings,
    admitted: &crate::callout::admitted::AdmittedSet,
) -> Result<(usize, crate::callout::revoke::Decision), String> {
    let client = callout_connection(settings).connect_once().await?;
    let observed = crate::callout::connz::observe(&client, &Default::default()).await;
    drop(client);
    let observation = observed.map_err(|e| e.to_string())?;
    let timing = Timing::for_authorization_timeout(settings.timeout);
    Ok((
        observation.servers.len(),
        crate::callout::revoke::decide(&observation.servers, admitted, timing.settle),
    ))
}

/// Where and how callout mode connects to nats-server, as the service.
fn callout_connection(settings: &CalloutSettings) -> responder::Connection {
    responder::Connection {
        url: settings.url.clone(),
        cert_file: settings.cert_file.clone(),
        key_file: settings.key_file.clone(),
        ca_file: settings.ca_file.clone(),
    }
}

/// Prints what [`connections_to_close`] found: one `x` line per connection a pass would close.
fn print_closing(
    config: &Config,
    closing: &Result<(usize, crate::callout::revoke::Decision), String>,
) {
    let url = match &config.admission {
        Admission::Callout(settings) => settings.url.as_str(),
        Admission::File => return,
    };
    match closing {
        Ok((servers, decision)) => {
            for kick in &decision.kicks {
                println!(
                    "x {} on {} (connection {}): {} (a pass would close it)",
                    agent::user(&kick.agent, kick.bootstrap).user,
                    kick.server.name,
                    kick.cid,
                    kick.refusal.message()
                );
            }
            println!(
                "nats-server ({servers} servers): {} agent connections, {} a pass would close{}",
                decision.agents,
                decision.kicks.len(),
                if decision.waiting > 0 {
                    format!(
                        ", {} still connecting (their answer decides them)",
                        decision.waiting
                    )
                } else {
                    String::new()
                }
            );
        }
        Err(e) => println!(
            "nats-server at {url} cannot be asked for its connections ({e}): the connections a pass would close are not shown"
        ),
    }
}

/// The subjects an agent held by damping keeps in the file.
fn held_subjects(id: &AgentId, bootstrap: bool) -> impl Iterator<Item = String> + '_ {
    [true, false]
        .into_iter()
        .filter(move |kind| !*kind || bootstrap)
        .map(move |kind| agent::user(id, kind).user)
}

/// `run` (the default): the controller until SIGTERM/SIGINT, with the HTTP endpoints.
pub fn run(config: Config) -> ExitCode {
    runtime().block_on(async {
        let cancel = CancellationToken::new();
        cancel_on_signals(cancel.clone());
        run_until_cancelled(config, cancel).await
    })
}

/// The long-running mode, until `cancel` fires (on a signal, or when the demo ends).
pub async fn run_until_cancelled(config: Config, cancel: CancellationToken) -> ExitCode {
    let (metrics, health) = observability(&config);
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

    let live = match start(&config, metrics.clone(), health.clone()) {
        Ok(live) => live,
        Err(code) => return code,
    };
    match live {
        Live::File(reconciler) => {
            run_loop(&config, reconciler, metrics, health, None, &cancel).await
        }
        Live::Callout(reconciler, callout) => {
            if let Err(code) = callout_server(&config).await {
                return code;
            }
            match crate::init::callout_block_current(&config) {
                Ok(true) => {}
                Ok(false) => {
                    let message = format!(
                        "the auth file {} is not what `init` writes for this configuration (a new issuer, xkey, timeout or subject): nats-server must restart to take a changed auth_callout block — run `bosh-nats-sync -c {} init`, then restart nats-server",
                        config.nats.auth_file.display(),
                        config.path.display()
                    );
                    tracing::error!("{message}");
                    eprintln!("bosh-nats-sync: {message}");
                    health.callout_restart_needed(message);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot compare the auth file with what init writes")
                }
            }
            // A restart answers from what the last process persisted until its first pass.
            match reconciler.admission().load_persisted() {
                Ok(agents) => {
                    health.callout_admitted(agents);
                    if agents > 0 {
                        // A set to answer from: ready once the responder has subscribed.
                        health.mark_ready();
                    }
                    tracing::info!(
                        state_file = %callout.settings.state_file.display(),
                        agents,
                        "answering from the persisted admitted set until the first pass"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the persisted admitted set; the first pass makes it")
                }
            }
            run_loop(
                &config,
                reconciler,
                metrics,
                health,
                Some(*callout),
                &cancel,
            )
            .await
        }
    }
    cancel.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    tracing::info!("bosh-nats-sync stopped");
    ExitCode::SUCCESS
}

/// Callout mode needs nats-server 2.10 or later: with `nats.monitoring_url` set, a server
/// that says it is older is refused at once (exit 2); one that cannot be asked yet is
/// only warned about (it may be starting).
async fn callout_server(config: &Config) -> Result<(), ExitCode> {
    let Some(url) = &config.nats.monitoring_url else {
        return Ok(());
    };
    match crate::callout::server_version::check(url).await {
        Ok(version) => {
            tracing::info!(%version, "nats-server has auth callout");
            Ok(())
        }
        Err(e @ crate::callout::server_version::VersionError::NoCallout { .. }) => {
            tracing::error!(error = %e, "cannot run in callout mode");
            eprintln!(
                "bosh-nats-sync: {}: nats.admission: callout: {e}",
                config.path.display()
            );
            Err(ExitCode::from(EXIT_CONFIG))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask nats-server for its version; going on");
            Ok(())
        }
    }
}

/// The control loop over `reconciler` until `cancel`; in callout mode with the responder
/// beside it, answering from the set the passes publish and asking the loop for an event
/// poll when an unknown agent connects, and the revoker, closing through the responder's
/// connection what the set no longer allows (§12.6).
async fn run_loop<A: crate::pass::Admission + 'static>(
    config: &Config,
    reconciler: Reconciler<director::Client, A>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    callout: Option<Callout>,
    cancel: &CancellationToken,
) {
    let self_writes = SelfWrites::new();
    let recorder = self_writes.clone();
    let reconciler = reconciler.on_write(Arc::new(move |path, meta| {
        recorder.record(path, reconcile::FileIdentity::from_metadata(meta));
    }));
    let watch = watch_settings(config);
    let reconciler = Arc::new(match watch {
        Some(settings) => reconciler.follow_events(settings),
        None => reconciler,
    });
    let paths = reconciler.watched_paths();

    let pass = move |ctx: PassContext| {
        let reconciler = reconciler.clone();
        async move {
            let result = reconciler.tick(&ctx).await;
            release_freed_memory();
            result
        }
    };
    tracing::info!(
        version = VERSION,
        director = %config.director.url,
        auth_file = %config.nats.auth_file.display(),
        admission = if callout.is_some() { "callout" } else { "file" },
        poll_interval = ?config.poll_interval,
        watch_interval = ?watch.map(|w| w.interval),
        resync_interval = ?watch.map(|w| w.resync),
        "bosh-nats-sync starting"
    );
    let controller = reconcile::Controller::new(pass)
        .interval(config.poll_interval)
        .watch_files(paths)
        .self_writes(self_writes)
        .backoff(BackoffConfig {
            min: config.backoff_min,
            max: config.backoff_max,
            factor: 2.0,
            jitter: true,
        })
        .pass_timeout(config.pass_timeout)
        .observer(LoopObserver {
            health: health.clone(),
            watch: watch.is_some(),
        });
    if let Some(Callout {
        keys,
        settings,
        admitted,
    }) = callout
    {
        let trigger = controller.trigger_handle();
        let (link, linked) = tokio::sync::watch::channel(Link::default());
        let revoker = Revoker {
            admitted: admitted.clone(),
            link: linked,
            timing: Timing::for_authorization_timeout(settings.timeout),
            observer: Reported::new(metrics.clone(), health.clone()),
        };
        tokio::spawn(revoker.run(cancel.clone()));
        let responder = Responder {
            keys,
            user_ttl: UserTtl(settings.user_ttl),
            admitted,
            poller: Poller::start(move || trigger.trigger(), cancel.clone()),
            // Answered within nats-server's authorization timeout, or the answer is lost.
            wait_for_pass: settings.timeout.mul_f64(0.75),
            observer: Reported::new(metrics, health),
            link,
        };
        tokio::spawn(responder.run(callout_connection(&settings), cancel.clone()));
    }
    controller.run(cancel.clone()).await;
}

/// The watch's settings (§6.6), or `None` when `intervals.watch` is 0.
fn watch_settings(config: &Config) -> Option<WatchSettings> {
    config.watch_interval.map(|interval| WatchSettings {
        interval,
        resync: config.resync_interval,
        poll: config.poll_interval,
    })
}

/// Feeds every pass of the loop to [`report::finished`] and tells `/status` when the next
/// one is due. A tick of the watch that ran no pass is only progress.
struct LoopObserver {
    health: Arc<Health>,
    /// With the watch, the next pass is the watch's to schedule (its `/status` part).
    watch: bool,
}

impl reconcile::Observer<Tick, PassError> for LoopObserver {
    fn on_pass_end(&self, ended: &reconcile::EndedPass<'_, Tick, PassError>) {
        let ctx = ended.context;
        let (result, pass) = match ended.result {
            Ok(Tick { report: None, .. }) => {
                self.health.progress();
                return;
            }
            Ok(Tick {
                report: Some(report),
                cause,
                ..
            }) => (
                Ok(report),
                match cause {
                    Some(cause) => format!("pass {} ({cause})", ctx.pass),
                    None => ctx.to_string(),
                },
            ),
            Err(e) => (Err(e), ctx.to_string()),
        };
        report::finished(&self.health, Some(pass), result, ended.duration);
        if !self.watch
            && let Some(next) = ended.next_pass_in()
        {
            self.health.next_pass_in(next);
        }
    }
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
