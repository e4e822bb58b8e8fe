//! One reconcile pass (§6), in four steps, each in its own module and each called once, in
//! this order:
//!
//! 1. [`observe`]: every read — the subject files, the director (a full listing, or with the
//!    watch the deployments the event log named, over the view the passes keep), the desired
//!    users that means ([`desired`], §3), and what is admitted now compared with them (the
//!    observe side of the admission seam, [`observe::Admitted`]).
//! 2. [`decide`]: what must be admitted and whether nats-server must reload — pure functions
//!    of what was observed ([`damping`] holds mass removals).
//! 3. [`apply`]: the apply side of the seam, [`Admission`], makes the decision true (file
//!    mode: the atomic write of the auth file, the reload and its verification; callout mode:
//!    the state file and the swap of the set the responder answers from).
//! 4. [`report`]: what the steps found and did ([`report::Facts`]) becomes the log line, the
//!    metrics, `/status` and readiness, when the steps end however they end.
//!
//! Before them, while the director has not answered yet, the bootstrap rule (§6.2) is a small
//! pass of its own through the same four modules. [`Plan`] is steps 1 and 2: a pass applies
//! it, `diff` prints it. The loop that decides *when* a pass runs is the `reconcile` crate;
//! with the watch on, [`watch`] decides which kind of pass a tick of it runs.

pub mod apply;
pub mod damping;
pub mod decide;
pub mod desired;
pub mod observe;
pub mod report;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;

use metrics::{Health, Label, Metrics};
use reconcile::PassContext;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use crate::authfile::AuthFileError;
use crate::config::{Config, DampingSettings};
use crate::director;
use crate::reload::{ReloadError, Reloaded};

pub use apply::{Admission, FileAdmission, Loaded, Reload, WriteHook};
use decide::{BootstrapPoint, Decision, Memory};
use desired::{Skipped, Subjects};
pub use observe::Director;
use observe::{Following, Scope};
pub use report::Report;
use report::Reporter;
use watch::{Watch, WatchSettings};

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
}

/// Runs passes over one director and one nats-server. Passes are serialised by `carried`'s
/// lock, so two callers can never interleave writes and reloads; the lock also holds what
/// passes carry from one to the next.
pub struct Reconciler<D, A> {
    paths: Paths,
    damping: DampingSettings,
    director: D,
    admission: A,
    report: Reporter,
    carried: tokio::sync::Mutex<Carried>,
}

/// What passes carry from one to the next.
struct Carried {
    rules: Memory,
    /// What an interrupted store left behind is removed once, by the first pass — not by
    /// `check-config` or `diff`, which change nothing.
    cleaned_up: bool,
    /// With the watch on (§6.6): its memory, and the director as the passes last saw it.
    following: Option<Following>,
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

impl<D: Director, R: Reload> Reconciler<D, FileAdmission<R>> {
    /// A reconciler in file mode: the users are the auth file's, and `reloader` makes
    /// nats-server load it.
    pub fn new(
        paths: Paths,
        damping: DampingSettings,
        director: D,
        reloader: R,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        let admission = FileAdmission::new(paths.auth_file.clone(), reloader);
        Self::admitting(paths, damping, director, admission, metrics, health)
    }
}

impl<D: Director, A: Admission> Reconciler<D, A> {
    /// A reconciler whose decisions `admission` applies.
    pub fn admitting(
        paths: Paths,
        damping: DampingSettings,
        director: D,
        admission: A,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            paths,
            damping,
            director,
            admission,
            report: Reporter::new(metrics, health),
            carried: tokio::sync::Mutex::new(Carried {
                rules: Memory::AT_START,
                cleaned_up: false,
                following: None,
            }),
        }
    }

    /// Turns the watch on (§6.6): [`Reconciler::tick`] then follows the event log.
    pub fn follow_events(self, settings: WatchSettings) -> Self {
        let mut carried = self.carried.into_inner();
        carried.following = Some(Following {
            watch: Watch::new(settings),
            view: None,
        });
        Self {
            carried: tokio::sync::Mutex::new(carried),
            ..self
        }
    }

    /// Registers the hook called after each write of the admitted users.
    pub fn on_write(mut self, hook: WriteHook) -> Self {
        self.admission.set_on_write(hook);
        self
    }

    /// The files whose change should trigger a pass: where the admitted users are kept, and
    /// the subject files.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.admission.location().to_owned()];
        paths.extend(self.paths.director_subject.iter().cloned());
        paths.extend(self.paths.hm_subject.iter().cloned());
        paths
    }

    pub fn admission(&self) -> &A {
        &self.admission
    }

    /// One level-triggered full pass, inside `span` (see [`report::span`]), whose outcome
    /// fields it fills in. Cancel-safe: dropping the future at any await point leaves the
    /// file either untouched or completely replaced, and a reload interrupted by
    /// cancellation stays pending for the next pass.
    pub async fn full_pass(&self, span: Span) -> Result<Report, PassError> {
        let mut carried = self.carried.lock().await;
        self.pass(&mut carried, Scope::Full, span).await
    }

    /// One tick of the control loop. Without the watch: a full pass. With it (§6.6): read
    /// the event log; then a full pass when one is due (start-up, the schedule of the
    /// watch's state, a restored or unreadable log, a retry), else a partial pass when the
    /// log named deployments, a watched file changed, or a reload or a failed pass is
    /// pending, else nothing. Cancel-safe like [`Reconciler::full_pass`].
    pub async fn tick(&self, ctx: &PassContext) -> Result<Tick, PassError> {
        let mut carried = self.carried.lock().await;
        let Some(following) = carried.following.as_mut() else {
            let report = self
                .pass(&mut carried, Scope::Full, report::span_for(ctx))
                .await?;
            return Ok(Tick {
                report: Some(report),
                cause: None,
                next: None,
            });
        };
        let watch = &mut following.watch;
        let read_at = Instant::now();
        match observe::read_events(&self.director, watch.position())
            .instrument(tracing::debug_span!("watch.read_events"))
            .await
        {
            Ok(read) => self.report.events(&watch.absorb(read, Instant::now())),
            // `/events` failing is the watch failing, not the pass (§6.6).
            Err(e) => watch.read_failed(format!("reading the event log failed: {e}")),
        }
        self.report.watch(watch);
        let scope = match watch.full_due(Instant::now()) {
            Some(reason) => {
                if let watch::FullReason::Log(why) = &reason {
                    tracing::info!(reason = %why, "the event log cannot say what changed: listing the whole director");
                }
                Some((Scope::Full, reason.label().to_owned()))
            }
            None => partial_cause(ctx, watch.dirty_len(), carried.rules.reload_pending)
                .map(|why| (Scope::Partial, why)),
        };
        let (report, cause) = match scope {
            Some((scope, why)) => {
                let span = report::span_because(ctx, &why);
                (Some(self.pass(&mut carried, scope, span).await?), Some(why))
            }
            None => (None, None),
        };
        let watch = &mut carried.following.as_mut().expect("checked above").watch;
        self.report.watch(watch);
        Ok(Tick {
            report,
            cause,
            next: Some(watch.next_tick_in(read_at, Instant::now())),
        })
    }

    /// What the next pass would do, without writing or reloading: the same observation and
    /// decision as a pass, from the memory of a process that has just started.
    pub async fn plan_next(&self) -> Result<Plan, PassError> {
        let observation = observe::pass(
            &self.director,
            None,
            Scope::Full,
            &self.admission,
            &self.paths,
        )
        .await
        .map_err(|unobserved| unobserved.error)?;
        Ok(Plan::of(
            &Memory::AT_START,
            &self.damping,
            observation.desired,
            &observation.file,
        ))
    }

    /// A pass inside `span`: first the bootstrap rule (§6.2), then observe → decide → apply
    /// → report.
    async fn pass(
        &self,
        carried: &mut Carried,
        scope: Scope,
        span: Span,
    ) -> Result<Report, PassError> {
        self.report.started();
        span.record("kind", scope.as_str());
        let result = async {
            self.clean_up_once(carried);
            self.bootstrap(&mut carried.rules, BootstrapPoint::BeforeDirector, None)
                .await?;
            self.steps(carried, scope).await
        }
        .instrument(span.clone())
        .await;
        if carried.following.is_some() {
            self.report.kind(scope);
        }
        report::record(&span, result.as_ref());
        result
    }

    /// The four steps, each once, in order; what they found and did is reported when the
    /// steps end, however they end (see [`report::Facts`]).
    async fn steps(&self, carried: &mut Carried, scope: Scope) -> Result<Report, PassError> {
        let began = Instant::now();
        let mut facts = report::Facts::new(&self.report);
        // 1. Observe.
        let observation = match observe::pass(
            &self.director,
            carried.following.as_mut(),
            scope,
            &self.admission,
            &self.paths,
        )
        .await
        {
            Ok(observation) => observation,
            Err(unobserved) => {
                facts.refused = unobserved.refused;
                if unobserved.director_failed {
                    if scope == Scope::Full
                        && let Some(following) = carried.following.as_mut()
                    {
                        following.watch.full_pass_failed();
                    }
                    drop(facts);
                    self.bootstrap(
                        &mut carried.rules,
                        BootstrapPoint::DirectorFailed,
                        Some(&unobserved.subjects),
                    )
                    .await?;
                }
                return Err(unobserved.error);
            }
        };
        let observe::Observation {
            refused,
            desired,
            file,
            refetched,
            announced,
        } = observation;
        facts.refused = refused;
        // 2. Decide.
        let plan = Plan::of(&carried.rules, &self.damping, desired, &file);
        facts.skipped = Some(plan.skipped);
        facts.held = plan.decision.held.clone();
        // 3. Apply.
        let applied = apply::decision(&self.admission, &mut carried.rules, &plan.decision).await?;
        facts.stored = applied.written;
        let usable = !plan.decision.users.is_empty();
        let loaded = match applied.loaded {
            Some(result) => {
                facts.load(&result, usable);
                Some(result?)
            }
            None => {
                facts.converged = usable;
                None
            }
        };
        let held = plan.decision.held.is_some();
        if let Some(following) = carried.following.as_mut() {
            match scope {
                Scope::Full => following.watch.full_pass_done(Instant::now(), held),
                Scope::Partial => following.watch.held(held),
            }
        }
        self.admission.pass_finished(began, scope == Scope::Full);
        // 4. Report: the agents the events announced are admitted once nats-server has
        // verifiably loaded them, or once the responder answers from them (§8); the facts
        // go out as `facts` is dropped.
        if matches!(
            loaded,
            Some(Loaded::Reloaded(Reloaded::Verified) | Loaded::InMemory { .. })
        ) {
            facts.admitted = announced;
        }
        let Plan {
            skipped, decision, ..
        } = plan;
        Ok(Report {
            written: applied.written,
            reloaded: match loaded {
                Some(Loaded::Reloaded(how)) => Some(how),
                Some(Loaded::InMemory { .. }) | None => None,
            },
            counts: decision.counts,
            skipped,
            observed_users: decision.observed_users,
            changes: decision.changes,
            held: decision.held.map(|h| h.removing),
            refetched,
        })
    }

    /// What an interrupted store left behind is removed once, by the first pass.
    fn clean_up_once(&self, carried: &mut Carried) {
        if carried.cleaned_up {
            return;
        }
        carried.cleaned_up = true;
        let stale = self.admission.clean_up();
        if stale > 0 {
            tracing::info!(
                count = stale,
                "removed temporary files of an interrupted write of the admitted users"
            );
        }
    }

    /// The bootstrap rule at `point` of a pass (§6.2, §6.3), a small pass of its own:
    /// observe (the subject files, unless given, and the admitted users), decide, apply,
    /// report. A failed reload of the bootstrap users does not end the pass: the director may
    /// still answer, and the reload stays pending for the end of the pass.
    async fn bootstrap(
        &self,
        memory: &mut Memory,
        point: BootstrapPoint,
        subjects: Option<&Subjects>,
    ) -> Result<(), PassError> {
        if !self.admission.bootstraps() || !decide::bootstrap_allowed(memory, point) {
            return Ok(());
        }
        let read;
        let subjects = match subjects {
            Some(subjects) => subjects,
            None => {
                read = self.subjects().0;
                &read
            }
        };
        let file = self.admission.read()?;
        let Some(users) = decide::bootstrap_users(subjects, &file) else {
            return Ok(());
        };
        tracing::info!(
            file = %self.admission.location().display(),
            state = %file.describe(),
            users = users.len(),
            "the file of admitted users holds no users: writing the director/health-monitor users before the director answers"
        );
        let mut facts = report::Facts::new(&self.report);
        facts.bootstrap = true;
        apply::store(&self.admission, memory, &users)?;
        facts.stored = true;
        let loaded = apply::load(&self.admission, memory).await;
        facts.load(&loaded, !users.is_empty());
        if let Err(e) = loaded {
            tracing::warn!(error = %e, "reloading nats-server with the bootstrap users failed");
        }
        Ok(())
    }

    fn subjects(&self) -> (Subjects, Vec<observe::SubjectKind>) {
        observe::subjects(
            self.paths.director_subject.as_deref(),
            self.paths.hm_subject.as_deref(),
        )
    }
}

/// What a pass would do: what is admitted now, and the decision over it. A pass applies it;
/// `diff` prints it.
#[derive(Debug)]
pub struct Plan {
    /// What the file of admitted users holds, in words.
    pub file: String,
    pub skipped: Skipped,
    pub decision: Decision,
}

impl Plan {
    /// Step 2 of a pass: the rules over what step 1 observed — the desired users, and what
    /// is admitted now compared with them.
    fn of(
        memory: &Memory,
        damping: &DampingSettings,
        desired: desired::Desired,
        file: &observe::FileState,
    ) -> Self {
        Plan {
            file: file.describe(&desired.users),
            skipped: desired.skipped,
            decision: decide::decide(memory, damping, desired, file),
        }
    }
}

#[cfg(test)]
mod tests;
