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

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use monitoring::{Health, Metrics, SkipReason};
use tracing::{Instrument, Span};

use crate::authfile::{self, AuthFileError};
use crate::config::{Config, DampingSettings};
use crate::director;
use crate::reload::ReloadError;

pub use apply::Reload;
use decide::{BootstrapPoint, Decision, Memory};
use desired::{Skipped, Subjects};
pub use observe::Director;
pub use report::Report;

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
            }),
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

    /// One level-triggered pass, inside `span` (see [`report::span`]), whose outcome fields
    /// it fills in. Cancel-safe: dropping the future at any await point leaves the file
    /// either untouched or completely replaced, and a reload interrupted by cancellation
    /// stays pending for the next pass.
    pub async fn pass(&self, span: Span) -> Result<Report, PassError> {
        let result = self.pass_inner().instrument(span.clone()).await;
        report::record(&span, result.as_ref());
        result
    }

    async fn pass_inner(&self) -> Result<Report, PassError> {
        let mut passes = self.memory.lock().await;
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
        let memory = &mut passes.rules;
        let subjects = self.subjects();
        self.bootstrap(memory, BootstrapPoint::BeforeDirector, &subjects)
            .await?;
        let vms = match self.director.fetch_vms().await {
            Ok(vms) => vms,
            Err(e) => {
                self.bootstrap(memory, BootstrapPoint::DirectorFailed, &subjects)
                    .await?;
                return Err(e.into());
            }
        };
        let desired = desired::compute(&subjects, vms);
        self.record_skips(&desired.skipped);
        let skipped = desired.skipped;
        let file = observe::auth_file_against(&self.paths.auth_file, &desired.users)?;
        let decision = decide::decide(memory, &self.damping, desired, &file);
        self.apply(memory, decision, skipped).await
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
        })
    }

    /// What the next pass would do, without writing or reloading: the same observation and
    /// the same [`decide`] as a pass, from the memory of a process that has just started.
    pub async fn dry_run(&self) -> Result<DryRun, PassError> {
        let subjects = self.subjects();
        let vms = self.director.fetch_vms().await?;
        let desired = desired::compute(&subjects, vms);
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

/// What `diff` prints: the file as it is, and what the next pass would decide.
#[derive(Debug)]
pub struct DryRun {
    pub observed: authfile::Observed,
    pub decision: Decision,
}

#[cfg(test)]
mod tests;
