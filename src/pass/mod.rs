//! One reconcile pass (§6): **observe** the subject files, the auth file and the director →
//! **decide** what the file must hold and whether nats-server must reload (pure functions of
//! those values) → **apply** the atomic write, the reload and its verification. The loop that
//! decides *when* a pass runs is the `reconcile` crate; this module only knows *what* a pass
//! does.
//!
//! - [`observe`]: every read a pass makes, and the [`Director`] it is given.
//! - [`desired`]: the director's VMs and the subjects → the desired users (§3).
//! - [`decide`]: the rules (§5.3, §6.2–§6.5), with [`damping`] for mass removals.
//! - [`apply`]: writing and reloading, and the [`Reload`] it is given.
//! - [`report`]: the pass's span, log line and health report.

pub mod apply;
pub mod damping;
pub mod decide;
pub mod desired;
pub mod observe;
pub mod report;
pub mod watch;

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use monitoring::{Health, Metrics, PassKind, SkipReason};
use reconcile::PassContext;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use crate::authfile::{self, AuthFileError};
use crate::config::{Config, DampingSettings};
use crate::director::{self, Refetched};
use crate::reload::{ReloadError, Reloaded};

pub use apply::Reload;
use decide::{BootstrapPoint, Decision, Memory};
use desired::{Skipped, Subjects};
pub use observe::Director;
pub use report::Report;
use watch::{View, Watch, WatchSettings};

/// Why a pass failed. Nothing on disk was changed by a failed pass except the bootstrap
/// users (§6.2, §6.3).
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Director(#[from] director::Error),
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    #[error(transparent)]
    Reload(#[from] ReloadError),
}

impl PassError {
    /// Every reason [`PassError::reason`] returns: those of the errors it wraps.
    pub const ALL_REASONS: [&'static str; 19] = report::concat(&[
        &director::Error::ALL_REASONS,
        &AuthFileError::ALL_REASONS,
        &ReloadError::ALL_REASONS,
    ]);

    /// A short, fixed label for metrics and `/status`.
    pub fn reason(&self) -> &'static str {
        match self {
            PassError::Director(e) => e.reason(),
            PassError::AuthFile(e) => e.reason(),
            PassError::Reload(e) => e.reason(),
        }
    }
}

/// A hook told about every write of the auth file, so the file watcher can ignore the
/// events of our own writes.
pub type WriteHook = Arc<dyn Fn(&Path, &Metadata) + Send + Sync>;

/// The files a pass reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    pub auth_file: PathBuf,
    pub director_subject: Option<PathBuf>,
    pub hm_subject: Option<PathBuf>,
}

impl Paths {
    pub fn of(config: &Config) -> Self {
        Self {
            auth_file: config.nats.auth_file.clone(),
            director_subject: config.director_subject_file.clone(),
            hm_subject: config.hm_subject_file.clone(),
        }
    }

    /// The files whose change should trigger a pass: the auth file and the subject files.
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.auth_file.clone()];
        paths.extend(self.director_subject.iter().cloned());
        paths.extend(self.hm_subject.iter().cloned());
        paths
    }
}

/// Runs passes over one director and one nats-server. Passes are serialised by `memory`'s
/// lock, so two callers can never interleave writes and reloads; the lock also holds what the
/// rules remember between passes.
pub struct Reconciler<D, R> {
    paths: Paths,
    damping: DampingSettings,
    director: D,
    reloader: R,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    on_write: Option<WriteHook>,
    memory: tokio::sync::Mutex<Passes>,
}

/// Carried across passes.
struct Passes {
    rules: Memory,
    /// Temporary files of a write interrupted by a crash are removed once, by the first
    /// pass — not by `check-config` or `diff`, which change nothing.
    cleaned_up: bool,
    /// With the watch on (§6.6): its memory, and the director as the passes last saw it.
    watched: Option<Watched>,
}

struct Watched {
    watch: Watch,
    view: Option<View>,
}

/// How a pass observes the director; everything after that is the same (§6.6).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Observation {
    /// Every deployment: `/info`, `/deployments`, every `/vms`.
    Full,
    /// The deployments the event log named since they were last fetched, over the view the
    /// passes keep; none, when only the auth file or a subject file changed.
    Partial,
}

/// What one tick of the loop did: with the watch, a tick reads the event log and runs a
/// pass only when there is something to look at; without it, every tick is a full pass.
#[derive(Debug)]
pub struct Tick {
    /// The pass this tick ran; `None` when the event log named nothing new.
    pub report: Option<Report>,
    /// With the watch: why the tick ran its pass (`events: 2 deployments`, `resync`,
    /// `file:/x/auth.json`, …), for its log line in place of the loop's `requeue`.
    pub cause: Option<String>,
    /// When the next tick is due; `None` without the watch (the loop's interval and
    /// triggers decide).
    pub next: Option<std::time::Duration>,
}

/// Why a tick of the watch runs a partial pass, or `None` when nothing asks for one: the
/// deployments the event log named, a watched file that changed, a manual trigger, a retry
/// after a failed pass, a reload still pending.
fn partial_cause(ctx: &PassContext, dirty: usize, reload_pending: bool) -> Option<String> {
    let mut causes: Vec<String> = Vec::new();
    match dirty {
        0 => {}
        1 => causes.push("events: 1 deployment".to_owned()),
        n => causes.push(format!("events: {n} deployments")),
    }
    causes.extend(ctx.changed_paths().map(|p| format!("file:{}", p.display())));
    if ctx.has(&reconcile::Trigger::Manual) {
        causes.push(reconcile::Trigger::Manual.to_string());
    }
    if ctx.consecutive_failures > 0 {
        causes.push("retry".to_owned());
    }
    if reload_pending {
        causes.push("reload pending".to_owned());
    }
    (!causes.is_empty()).then(|| causes.join(", "))
}

impl reconcile::Outcome for Tick {
    fn action(&self) -> reconcile::Action {
        match self.next {
            Some(delay) => reconcile::Action::Requeue(delay),
            None => reconcile::Action::AwaitTrigger,
        }
    }
}

impl<D: Director, R: Reload> Reconciler<D, R> {
    pub fn new(
        paths: Paths,
        damping: DampingSettings,
        director: D,
        reloader: R,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            paths,
            damping,
            director,
            reloader,
            metrics,
            health,
            on_write: None,
            memory: tokio::sync::Mutex::new(Passes {
                rules: Memory::AT_START,
                cleaned_up: false,
                watched: None,
            }),
        }
    }

    /// Turns the watch on (§6.6): [`Reconciler::tick`] then follows the event log.
    pub fn watch(self, settings: WatchSettings) -> Self {
        let mut passes = self.memory.into_inner();
        passes.watched = Some(Watched {
            watch: Watch::new(settings),
            view: None,
        });
        Self {
            memory: tokio::sync::Mutex::new(passes),
            ..self
        }
    }

    /// Registers the hook called after each write of the auth file.
    pub fn on_write(mut self, hook: WriteHook) -> Self {
        self.on_write = Some(hook);
        self
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// One level-triggered full pass, inside `span` (see [`report::span`]), whose outcome
    /// fields it fills in. Cancel-safe: dropping the future at any await point leaves the
    /// file either untouched or completely replaced, and a reload interrupted by
    /// cancellation stays pending for the next pass.
    pub async fn pass(&self, span: Span) -> Result<Report, PassError> {
        let mut passes = self.memory.lock().await;
        self.run(&mut passes, Observation::Full, span).await
    }

    /// One tick of the control loop. Without the watch: a full pass. With it (§6.6): read
    /// the event log; then a full pass when one is due (start-up, the schedule of the
    /// watch's state, a restored or unreadable log, a retry), else a partial pass when the
    /// log named deployments, a watched file changed, or a reload or a failed pass is
    /// pending, else nothing. Cancel-safe like [`Reconciler::pass`].
    pub async fn tick(&self, ctx: &PassContext) -> Result<Tick, PassError> {
        let mut passes = self.memory.lock().await;
        let Some(watched) = passes.watched.as_mut() else {
            let report = self
                .run(&mut passes, Observation::Full, report::span_for(ctx))
                .await?;
            return Ok(Tick {
                report: Some(report),
                cause: None,
                next: None,
            });
        };
        let read_at = Instant::now();
        self.read_events(&mut watched.watch).await;
        let now = Instant::now();
        let observation = match watched.watch.full_due(now) {
            Some(reason) => {
                if let watch::FullReason::Log(why) = &reason {
                    tracing::info!(reason = %why, "the event log cannot say what changed: listing the whole director");
                }
                Some((Observation::Full, reason.label().to_owned()))
            }
            None => {
                let watched = passes.watched.as_ref().expect("checked above");
                partial_cause(ctx, watched.watch.dirty_len(), passes.rules.reload_pending)
                    .map(|why| (Observation::Partial, why))
            }
        };
        let (report, cause) = match observation {
            Some((observation, why)) => {
                let span = report::span_because(ctx, &why);
                (
                    Some(self.run(&mut passes, observation, span).await?),
                    Some(why),
                )
            }
            None => (None, None),
        };
        let watch = &mut passes.watched.as_mut().expect("checked above").watch;
        self.report_watch(watch);
        Ok(Tick {
            report,
            cause,
            next: Some(watch.next_tick_in(read_at, Instant::now())),
        })
    }

    /// Reads the event log since the cursor and takes what it says; a failure only changes
    /// the watch's state (§6.6: `/events` failing is the watch failing, not the pass).
    async fn read_events(&self, watch: &mut Watch) {
        let span = tracing::debug_span!("watch.read_events");
        match observe::read_events(&self.director, watch.position())
            .instrument(span)
            .await
        {
            Ok(read) => {
                let absorbed = watch.absorb(read, Instant::now());
                if absorbed.events > 0 {
                    self.metrics.events_read(absorbed.events as u64);
                    tracing::debug!(
                        events = absorbed.events,
                        dirtied = absorbed.dirtied,
                        "read the event log"
                    );
                }
                if absorbed.unannounced > 0 {
                    self.metrics
                        .unannounced_changes(absorbed.unannounced as u64);
                }
            }
            Err(e) => watch.read_failed(format!("reading the event log failed: {e}")),
        }
        self.health.progress();
        self.report_watch(watch);
    }

    /// Tells `/status` and the metrics where the watch is, and logs a change of state once.
    fn report_watch(&self, watch: &mut Watch) {
        if let Some((state, reason)) = watch.state_change() {
            tracing::info!(state = state.as_str(), reason, "watch state changed");
        }
        self.health.watch(watch.status());
    }

    async fn run(
        &self,
        passes: &mut Passes,
        observation: Observation,
        span: Span,
    ) -> Result<Report, PassError> {
        self.health.pass_started();
        let kind = match observation {
            Observation::Full => PassKind::Full,
            Observation::Partial => PassKind::Partial,
        };
        span.record("kind", kind.as_str());
        let result = self
            .pass_inner(passes, observation)
            .instrument(span.clone())
            .await;
        if passes.watched.is_some() {
            self.metrics.pass_kind(kind);
        }
        report::record(&span, result.as_ref());
        result
    }

    async fn pass_inner(
        &self,
        passes: &mut Passes,
        observation: Observation,
    ) -> Result<Report, PassError> {
        if !passes.cleaned_up {
            passes.cleaned_up = true;
            let stale = authfile::remove_stale_temp_files(&self.paths.auth_file);
            if stale > 0 {
                tracing::info!(
                    count = stale,
                    "removed temporary files of an interrupted write of the auth file"
                );
            }
        }
        let subjects = self.subjects();
        self.bootstrap(&mut passes.rules, BootstrapPoint::BeforeDirector, &subjects)
            .await?;
        let full = observation == Observation::Full;
        let observed = match self
            .observe_director(passes.watched.as_mut(), observation)
            .await
        {
            Ok(observed) => observed,
            Err(e) => {
                if full && let Some(watched) = passes.watched.as_mut() {
                    watched.watch.full_pass_failed();
                }
                self.bootstrap(&mut passes.rules, BootstrapPoint::DirectorFailed, &subjects)
                    .await?;
                return Err(e);
            }
        };
        let desired = desired::compute(&subjects, observed.vms);
        self.record_skips(&desired.skipped);
        let skipped = desired.skipped;
        let file = observe::auth_file_against(&self.paths.auth_file, &desired.users)?;
        let memory = &mut passes.rules;
        let decision = decide::decide(memory, &self.damping, desired, &file);
        let held = decision.held.is_some();
        let mut report = self.apply(memory, decision, skipped).await?;
        report.refetched = observed.refetched;
        if let Some(watched) = passes.watched.as_mut() {
            if full {
                watched.watch.full_pass_done(Instant::now(), held);
            } else {
                watched.watch.held(held);
            }
        }
        // The agents the events announced are admitted once nats-server has verifiably
        // loaded them (§8).
        if report.reloaded == Some(Reloaded::Verified) {
            let now = Instant::now();
            for since in observed.announced {
                self.metrics
                    .admission_latency(now.saturating_duration_since(since));
            }
        }
        Ok(report)
    }

    /// The director's part of a pass: a full read, or the dirty deployments refetched into
    /// the view (§6.6). With the watch on, the view is kept for the next partial pass.
    async fn observe_director(
        &self,
        watched: Option<&mut Watched>,
        observation: Observation,
    ) -> Result<Observed, PassError> {
        let Some(watched) = watched else {
            let view = self.director.fetch_view().await?;
            return Ok(Observed {
                vms: observe::vms(&view),
                refetched: None,
                announced: Vec::new(),
            });
        };
        let Watched { watch, view } = watched;
        match (observation, view.as_mut()) {
            (Observation::Partial, Some(view)) => {
                let dirty = watch.dirty();
                let mut announced = Vec::new();
                if !dirty.is_empty() {
                    let answers = self.director.refetch(&dirty).await?;
                    let gone: Vec<&String> = answers
                        .iter()
                        .filter(|(_, answer)| *answer == Refetched::Gone)
                        .map(|(name, _)| name)
                        .collect();
                    // A 404 drops a deployment only once `/deployments` confirms it is gone:
                    // a partial pass keeps a wrong answer until the next event or resync.
                    let listed = if gone.is_empty() {
                        Vec::new()
                    } else {
                        self.director.deployment_names().await?
                    };
                    for (name, answer) in &answers {
                        let before = view.get(name);
                        let grew = match answer {
                            Refetched::Vms(vms) => {
                                let grew = has_new_agents(before.map(Vec::as_slice), vms);
                                view.insert(name.clone(), vms.clone());
                                grew
                            }
                            Refetched::Gone if listed.contains(name) => {
                                tracing::warn!(
                                    deployment = %name,
                                    "the director answered 404 for the VMs of a deployment it still lists; keeping its last known VMs"
                                );
                                false
                            }
                            Refetched::Gone => {
                                view.remove(name);
                                false
                            }
                        };
                        if grew && let Some(since) = watch.dirty_since(name) {
                            announced.push(since);
                        }
                    }
                    watch.fetched(&dirty);
                }
                Ok(Observed {
                    vms: observe::vms(view),
                    refetched: Some(dirty.len()),
                    announced,
                })
            }
            // A full pass, or a partial one before any view exists.
            _ => {
                let listed = self.director.fetch_view().await?;
                let mut announced = Vec::new();
                if let Some(before) = view.as_ref() {
                    let changed = watch::changed(before, &listed);
                    for name in &changed {
                        if let Some(since) = watch.dirty_since(name)
                            && let Some(vms) = listed.get(name)
                            && has_new_agents(before.get(name).map(Vec::as_slice), vms)
                        {
                            announced.push(since);
                        }
                    }
                    watch.listed(changed);
                } else {
                    watch.listed(Default::default());
                }
                let vms = observe::vms(&listed);
                *view = Some(listed);
                Ok(Observed {
                    vms,
                    refetched: None,
                    announced,
                })
            }
        }
    }

    /// Observe, decide and apply the bootstrap rule at `point` of a pass (§6.2, §6.3). A
    /// failed reload of the bootstrap users does not end the pass: the director may still
    /// answer, and the reload stays pending for the end of the pass.
    async fn bootstrap(
        &self,
        memory: &mut Memory,
        point: BootstrapPoint,
        subjects: &Subjects,
    ) -> Result<(), PassError> {
        if !decide::bootstrap_allowed(memory, point) {
            return Ok(());
        }
        let file = authfile::read(&self.paths.auth_file)?;
        let Some(users) = decide::bootstrap_users(subjects, &file) else {
            return Ok(());
        };
        tracing::info!(
            file = %self.paths.auth_file.display(),
            state = %file.describe(),
            users = users.len(),
            "the auth file holds no users: writing the director/health-monitor users before the director answers"
        );
        self.write(memory, &users)?;
        if let Err(e) = self.reload(memory, !users.is_empty()).await {
            tracing::warn!(error = %e, "reloading nats-server with the bootstrap users failed");
        }
        Ok(())
    }

    async fn apply(
        &self,
        memory: &mut Memory,
        decision: Decision,
        skipped: Skipped,
    ) -> Result<Report, PassError> {
        if let Some(held) = &decision.held {
            tracing::warn!(
                removing = held.removing,
                agents_in_file = held.agents_in_file,
                seen = held.seen,
                needed = held.needed,
                "holding a mass removal of agents: it applies once the director reports the same state on {} consecutive passes",
                held.needed
            );
        }
        // A reload that is due stays pending until it succeeds.
        *memory = decision.next;
        if decision.write {
            self.write(memory, &decision.users)?;
        }
        let usable = !decision.users.is_empty();
        let reloaded = if decision.reload {
            Some(self.reload(memory, usable).await?)
        } else {
            if usable {
                // Converged, and nats-server has loaded this content (the last reload
                // succeeded).
                self.health.mark_ready();
            }
            None
        };
        Ok(Report {
            written: decision.write,
            reloaded,
            desired: decision.counts,
            skipped,
            observed_users: decision.observed_users,
            added: decision.added,
            removed: decision.removed,
            held: decision.held.map(|h| h.removing),
            refetched: None,
        })
    }

    /// What the next pass would do, without writing or reloading: the same observation and
    /// the same [`decide`] as a pass, from the memory of a process that has just started.
    pub async fn dry_run(&self) -> Result<DryRun, PassError> {
        let subjects = self.subjects();
        let view = self.director.fetch_view().await?;
        let desired = desired::compute(&subjects, observe::vms(&view));
        let file = observe::auth_file_against(&self.paths.auth_file, &desired.users)?;
        let observed = match &file {
            observe::FileState::Differs(observed) => observed.clone(),
            observe::FileState::Holds => authfile::Observed::Users(desired.users.clone()),
        };
        let decision = decide::decide(&Memory::AT_START, &self.damping, desired, &file);
        Ok(DryRun { observed, decision })
    }

    fn subjects(&self) -> Subjects {
        observe::subjects(
            self.paths.director_subject.as_deref(),
            self.paths.hm_subject.as_deref(),
            &self.metrics,
        )
    }

    fn record_skips(&self, skipped: &Skipped) {
        for (reason, n) in [
            (SkipReason::NoAgentId, skipped.no_agent_id),
            (SkipReason::InvalidAgentId, skipped.invalid_agent_id),
            (SkipReason::Duplicate, skipped.duplicate),
        ] {
            if n > 0 {
                self.metrics.vms_skipped(reason, n as u64);
            }
        }
    }
}

/// What a pass observed of the director.
struct Observed {
    vms: Vec<crate::vm::Vm>,
    /// Deployments refetched by a partial pass.
    refetched: Option<usize>,
    /// When the events that announced new agents were read, for the admission histogram.
    announced: Vec<Instant>,
}

/// Whether `after` reports an agent id that `before` did not.
fn has_new_agents(before: Option<&[crate::vm::Vm]>, after: &[crate::vm::Vm]) -> bool {
    let known: std::collections::BTreeSet<&str> = before
        .unwrap_or_default()
        .iter()
        .filter_map(|vm| vm.agent_id.as_deref())
        .collect();
    after
        .iter()
        .filter_map(|vm| vm.agent_id.as_deref())
        .any(|id| !known.contains(id))
}

/// What `diff` prints: the file as it is, and what the next pass would decide.
#[derive(Debug)]
pub struct DryRun {
    pub observed: authfile::Observed,
    pub decision: Decision,
}

#[cfg(test)]
mod tests;
