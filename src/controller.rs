//! One reconcile pass (SPEC §6): observe the auth file, compute the desired users from the
//! director, write when they differ, reload nats-server. The loop that decides *when* a
//! pass runs lives in the `reconcile` crate; this module only knows *what* a pass does.

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::Instrument;

use metrics::{DesiredCounts, Health, Metrics, ReloadOutcome, SkipReason, SubjectKind};

use crate::authfile::{self, AuthFileError, Observed};
use crate::config::Config;
use crate::damping::{Damper, Verdict};
use crate::desired::{self, Desired, Subject, Subjects};
use crate::director;
use crate::nats::{ReloadError, Reloaded, Reloader};
use crate::users::Users;
use crate::userset::UserSet;

/// Why a pass failed. Nothing on disk was changed by a failed pass except the bootstrap
/// config (SPEC §6.2, §6.3).
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

/// A problem found while building the controller: bad CA files and the like.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Director(#[from] director::ConfigError),
}

/// What a successful pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Whether the auth file was rewritten.
    pub written: bool,
    /// The reload performed in this pass, if any.
    pub reloaded: Option<Reloaded>,
    pub desired: desired::Counts,
    pub skipped: desired::Skipped,
    pub observed_users: usize,
    /// Subjects added and removed by this pass's write.
    pub added: usize,
    pub removed: usize,
    /// Mass-removal damping held back this many agent removals (SPEC §6.5).
    pub held: Option<usize>,
}

/// The difference between the file and the director, computed without acting on it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub observed: Observed,
    pub desired: Desired,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Subjects present on both sides whose permissions differ.
    pub changed: Vec<String>,
}

impl Plan {
    /// Whether a pass would write nothing: the same comparison a pass makes.
    pub fn in_sync(&self) -> bool {
        self.observed
            .users()
            .is_some_and(|u| UserSet::from_users(u.0.iter().cloned()) == self.desired.users)
    }
}

/// A hook told about every write of the auth file, so the file watcher can ignore the
/// events of our own writes.
pub type WriteHook = Arc<dyn Fn(&Path, &Metadata) + Send + Sync>;

/// Owns everything a pass needs. Passes are serialised by `state`'s lock, so two callers
/// can never interleave writes and reloads.
pub struct Controller {
    config: Config,
    director: director::Client,
    reloader: Reloader,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    on_write: Option<WriteHook>,
    state: tokio::sync::Mutex<State>,
}

/// Carried across passes.
struct State {
    /// nats-server may not have loaded the current file: true at start-up (SPEC §5.3),
    /// after every write, and after a failed reload until one succeeds.
    reload_pending: bool,
    /// Counts confirmations of a held mass removal across passes.
    damper: Damper,
    /// The director has answered a pass: from then on the bootstrap users are only a
    /// fall-back for when it fails (SPEC §6.2, §6.3).
    director_answered: bool,
    /// Temporary files of a write interrupted by a crash are removed once, by the first
    /// pass — not by `check-config` or `diff`, which change nothing.
    cleaned_up: bool,
}

impl Controller {
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, StartError> {
        let director = director::Client::new(config.director.clone(), metrics.clone())?;
        let reloader = Reloader::new(config.nats.clone());
        let config_damping = config.damping;

        Ok(Self {
            config,
            director,
            reloader,
            metrics,
            health,
            on_write: None,
            state: tokio::sync::Mutex::new(State {
                reload_pending: true,
                damper: Damper::new(config_damping),
                director_answered: false,
                cleaned_up: false,
            }),
        })
    }

    /// Registers the hook called after each write of the auth file.
    pub fn on_write(mut self, hook: WriteHook) -> Self {
        self.on_write = Some(hook);
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The paths whose change should trigger a pass: the auth file and the subject files.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.config.nats.auth_file.clone()];
        paths.extend(self.config.director_subject_file.iter().cloned());
        paths.extend(self.config.hm_subject_file.iter().cloned());
        paths
    }

    /// One level-triggered pass. Cancel-safe: dropping the future at any await point leaves
    /// the file either untouched or completely replaced (the write itself is synchronous and
    /// atomic), and a reload interrupted by cancellation stays pending for the next pass.
    pub async fn pass(&self) -> Result<PassReport, PassError> {
        let mut state = self.state.lock().await;
        if !state.cleaned_up {
            state.cleaned_up = true;
            let stale = authfile::remove_stale_temp_files(&self.config.nats.auth_file);
            if stale > 0 {
                tracing::info!(
                    count = stale,
                    "removed temporary files of an interrupted write of the auth file"
                );
            }
        }
        let subjects = self.read_subjects();
        let path = &self.config.nats.auth_file;

        // Before the director has ever answered (start-up), a file without users gets the
        // bootstrap users first. Later, a file that lost its users (a truncation, a bad hand
        // edit) is rebuilt from the director in one write: writing the bootstrap users first
        // would make nats-server drop every agent's connection for the length of the pass.
        if !state.director_answered {
            let observed = authfile::read_set(path)?;
            self.bootstrap_if_empty(&mut state, &subjects, &observed)
                .await?;
        }
        let vms = match self.director.fetch_vms().await {
            Ok(vms) => {
                state.director_answered = true;
                vms
            }
            Err(e) => {
                // SPEC §6.3: while the director is unreachable, a file without users still
                // gets the bootstrap users.
                let observed = authfile::read_set(path)?;
                self.bootstrap_if_empty(&mut state, &subjects, &observed)
                    .await?;
                return Err(e.into());
            }
        };
        let mut desired = desired::compute(&subjects, vms);
        self.record_skips(&desired.skipped);

        let mut report = PassReport {
            written: false,
            reloaded: None,
            desired: desired.counts,
            skipped: desired.skipped,
            observed_users: desired.users.len(),
            added: 0,
            removed: 0,
            held: None,
        };
        // The steady state: the file holds exactly what this pass would write. Checked on
        // the bytes, streaming, without parsing the file or building a user.
        if authfile::matches(path, &desired.users)? {
            state.damper.settled();
        } else {
            // Something differs in the bytes; compare as values (SPEC §4.3).
            let observed = authfile::read_set(path)?;
            let no_users = UserSet::default();
            let observed_users = observed.users().unwrap_or(&no_users);
            if let Verdict::Hold {
                keep,
                removing,
                agents_in_file,
                seen,
                needed,
            } = state.damper.judge(observed_users, &desired.users)
            {
                tracing::warn!(
                    removing,
                    agents_in_file,
                    seen,
                    needed,
                    "holding a mass removal of agents: it applies once the director reports the same state on {needed} consecutive passes"
                );
                // The held agents stay, written exactly as the director last described
                // them; everything else — additions included — applies now.
                desired.keep_agents(keep);
                report.desired = desired.counts;
                report.held = Some(removing);
            }
            report.observed_users = observed_users.len();
            if observed.users() != Some(&desired.users) {
                (report.added, report.removed) = observed_users.subject_changes(&desired.users);
                self.write(&desired.users)?;
                report.written = true;
                state.reload_pending = true;
            }
        }
        if state.reload_pending {
            report.reloaded = Some(self.reload(&mut state, !desired.users.is_empty()).await?);
        } else if !desired.users.is_empty() {
            // Converged and nats-server has loaded this content (the last reload succeeded).
            self.health.mark_ready();
        }
        Ok(report)
    }

    /// Writes the bootstrap users when the file holds none and does not already say so.
    async fn bootstrap_if_empty(
        &self,
        state: &mut State,
        subjects: &Subjects,
        observed: &Observed<UserSet>,
    ) -> Result<(), PassError> {
        if observed.holds_users() {
            return Ok(());
        }
        let users = desired::bootstrap(subjects).users;
        if observed.users() == Some(&users) {
            return Ok(());
        }
        self.bootstrap(state, &users, observed).await
    }

    /// SPEC §6.2: before the director answers, a file that holds no users gets the director
    /// and health-monitor users, so those two can reach NATS while the director starts. A
    /// file that admits everyone (`{}`, an empty list) is closed the same way, even when no
    /// subject is known yet.
    async fn bootstrap(
        &self,
        state: &mut State,
        users: &UserSet,
        observed: &Observed<UserSet>,
    ) -> Result<(), PassError> {
        let usable = !users.is_empty();
        tracing::info!(
            file = %self.config.nats.auth_file.display(),
            state = %observed.describe(),
            users = users.len(),
            "the auth file holds no users: writing the director/health-monitor users before contacting the director"
        );
        self.write(users)?;
        state.reload_pending = true;
        // A failed reload here is not the end of the pass: the director may still answer,
        // and the reload is retried at the end of this pass.
        if let Err(e) = self.reload(state, usable).await {
            tracing::warn!(error = %e, "reloading nats-server with the bootstrap users failed");
        }
        Ok(())
    }

    /// The dry run: what a pass would change, without writing or reloading.
    pub async fn plan(&self) -> Result<Plan, PassError> {
        let subjects = self.read_subjects();
        let observed = authfile::read(&self.config.nats.auth_file)?;
        let vms = self.director.fetch_vms().await?;
        let desired = desired::compute(&subjects, vms);
        // The dry run lists subjects, so it holds the users as values.
        let wanted_users = desired.users.to_users();
        let empty = Users::default();
        let current = observed.users().unwrap_or(&empty);
        let (added, removed) = current.diff(&wanted_users);
        // By subject (the first user of a subject, as a linear search would find), so a dry
        // run over 150 000 users is not quadratic.
        let mut wanted = std::collections::HashMap::with_capacity(wanted_users.len());
        for u in wanted_users.iter() {
            wanted.entry(u.user.as_str()).or_insert(u);
        }
        let changed = current
            .iter()
            .filter_map(|old| {
                let new = wanted.get(old.user.as_str())?;
                (new.permissions != old.permissions).then(|| old.user.clone())
            })
            .collect();
        Ok(Plan {
            added: added.into_iter().map(str::to_owned).collect(),
            removed: removed.into_iter().map(str::to_owned).collect(),
            changed,
            observed,
            desired,
        })
    }

    fn write(&self, users: &UserSet) -> Result<(), AuthFileError> {
        let path = &self.config.nats.auth_file;
        let _span =
            tracing::info_span!("write_auth_file", file = %path.display(), users = users.len())
                .entered();
        let meta = authfile::write_set(path, users)?;
        if let Some(hook) = &self.on_write {
            hook(path, &meta);
        }
        self.health.auth_file_written();
        tracing::debug!(file = %path.display(), users = users.len(), "wrote the auth file");
        Ok(())
    }

    async fn reload(&self, state: &mut State, usable: bool) -> Result<Reloaded, ReloadError> {
        let span = tracing::info_span!(
            "reload",
            method = if self.config.nats.executable.is_some() {
                "executable"
            } else {
                "sighup"
            },
            verified = self.config.nats.monitoring_url.is_some()
        );
        match self.reloader.reload().instrument(span).await {
            Ok(how) => {
                state.reload_pending = false;
                self.health.reload_finished(match how {
                    Reloaded::Verified => ReloadOutcome::Verified,
                    Reloaded::Unverified => ReloadOutcome::Unverified,
                });
                if usable {
                    self.health.mark_ready();
                }
                Ok(how)
            }
            Err(e) => {
                self.health.reload_finished(ReloadOutcome::Failed {
                    reason: e.reason(),
                    message: e.to_string(),
                });
                Err(e)
            }
        }
    }

    fn record_skips(&self, skipped: &desired::Skipped) {
        let m = &self.metrics;
        for (reason, n) in [
            (SkipReason::NoAgentId, skipped.no_agent_id),
            (SkipReason::InvalidAgentId, skipped.invalid_agent_id),
            (SkipReason::Duplicate, skipped.duplicate),
        ] {
            if n > 0 {
                m.vms_skipped(reason, n as u64);
            }
        }
    }

    /// Reads both subject files (SPEC §3.2). Missing, unreadable or blank = unknown; a
    /// subject with control characters is refused, logged and counted.
    pub fn read_subjects(&self) -> Subjects {
        Subjects {
            director: self.read_subject(
                self.config.director_subject_file.as_deref(),
                SubjectKind::Director,
            ),
            hm: self.read_subject(
                self.config.hm_subject_file.as_deref(),
                SubjectKind::HealthMonitor,
            ),
        }
    }

    fn read_subject(&self, path: Option<&Path>, kind: SubjectKind) -> Option<Subject> {
        let path = path?;
        let content = match std::fs::read_to_string(path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the subject file; treating the subject as unknown");
                return None;
            }
        };
        match Subject::parse(&content) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "refusing the subject; treating it as unknown");
                self.metrics.subject_rejected(kind);
                None
            }
        }
    }
}

impl PassReport {
    pub fn desired_total(&self) -> usize {
        self.desired.director + self.desired.hm + self.desired.agent + self.desired.agent_bootstrap
    }
}

impl From<&PassReport> for DesiredCounts {
    fn from(r: &PassReport) -> Self {
        DesiredCounts {
            director: r.desired.director,
            hm: r.desired.hm,
            agent: r.desired.agent,
            agent_bootstrap: r.desired.agent_bootstrap,
        }
    }
}
