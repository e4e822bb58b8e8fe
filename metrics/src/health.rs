//! The control loop's record of its own progress, behind `/healthz`, `/readyz` and `/status`.
//!
//! The loop reports events (a pass started or finished, the file was written, nats-server
//! reloaded, the next pass is scheduled, the first usable config is loaded); the HTTP
//! handlers read the result. Each event also updates the matching metrics, so `/status` and
//! `/metrics` cannot disagree. Staleness is measured with `tokio::time::Instant` (testable
//! with paused time); the times shown to people are wall-clock.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use tokio::time::Instant;

use crate::registry::Metrics;

/// Extra allowance on top of the longest legitimate gap between two progress events, for
/// jitter and scheduling delays.
const LIVENESS_SLACK: Duration = Duration::from_secs(60);

/// Why something failed, as `/status` shows it: `reason` is the error's metric label
/// (`Error::reason()`), `message` its display text, shown on `/status` and therefore free of
/// secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorInfo {
    pub reason: &'static str,
    pub message: String,
}

/// Everything a finished pass reports, in the program's label values. `desired` and
/// `observed_users` are `None` when the pass failed before computing them; the last known
/// values are then kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassSummary {
    /// How it ended: its `result` label (`bosh_nats_sync_passes_total`, `/status`'s
    /// `last_pass.result`), one of [`Labels::pass_results`](crate::Labels::pass_results).
    pub result: &'static str,
    /// Why it failed; `None` for a pass that succeeded. A failed pass is counted in
    /// `bosh_nats_sync_errors_total` under its reason and adds to the consecutive failures;
    /// a successful one resets them and is the last success.
    pub error: Option<ErrorInfo>,
    /// Desired users by `kind` label (one of [`Labels::user_kinds`](crate::Labels::user_kinds)
    /// each), in the order `/status` lists them.
    pub desired: Option<Vec<(&'static str, usize)>>,
    pub observed_users: Option<usize>,
    /// Mass-removal damping held this pass back (§6.5); counted in
    /// `bosh_nats_sync_held_passes_total`.
    pub held: bool,
}

/// How a reload of nats-server ended (§5), in the program's label values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Its `result` label (`bosh_nats_sync_reloads_total`, `/status`'s `last_reload.result`),
    /// one of [`Labels::reload_results`](crate::Labels::reload_results).
    pub result: &'static str,
    /// nats-server confirmed it loaded the new configuration (`/status`'s
    /// `last_reload.verified`).
    pub verified: bool,
    /// Why it failed; `None` for a reload that did not fail. Before readiness, `/readyz` names
    /// the reason of a failed last reload.
    pub error: Option<ErrorInfo>,
}

/// Where the watch of the director's event log stands (§6.6), as the watch reports it.
/// Times are wall-clock, for display.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchStatus {
    /// Its `state` label: one of [`Labels::watch_states`](crate::Labels::watch_states).
    pub state: &'static str,
    /// Why it is in that state, for a person (free of secrets).
    pub reason: String,
    /// The newest event id the watch has taken into account; `None` before the log was read
    /// or while it is empty.
    pub cursor: Option<u64>,
    /// When the event log was last read successfully.
    pub events_read_at: Option<SystemTime>,
    /// The id of the newest event read.
    pub last_event_id: Option<u64>,
    pub last_full_pass_at: Option<SystemTime>,
    pub next_full_pass_at: Option<SystemTime>,
}

/// Why `/healthz` or `/readyz` answers 503: a short sentence for the response body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unhealthy(String);

/// A moment recorded for both purposes: `instant` for staleness, `wall` for display.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    instant: Instant,
    wall: SystemTime,
}

impl Stamp {
    fn now() -> Self {
        Self {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

#[derive(Clone, Debug)]
struct FinishedPass {
    started: Option<Stamp>,
    finished: Stamp,
    duration: Option<Duration>,
    result: &'static str,
    error: Option<ErrorInfo>,
    held: bool,
}

/// What the callout responder reported.
#[derive(Clone, Debug, Default)]
struct Callout {
    connected: bool,
    /// When `connected` last changed.
    since: Option<SystemTime>,
    /// It has been connected and subscribed at least once.
    subscribed_once: bool,
    admitted_agents: Option<usize>,
    /// The last refusals, newest last.
    refusals: std::collections::VecDeque<CalloutRefusal>,
    /// Why nats-server must restart before callout mode works as configured.
    restart_needed: Option<String>,
    /// The last revocations, newest last.
    revocations: std::collections::VecDeque<RevokedConnection>,
}

/// One revocation (§12.6), as the revoker reports it: a live connection the admitted set no
/// longer allows, and what closing it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalloutRevocation {
    /// The agent its certificate names (no secret).
    pub agent: String,
    /// The server that holds (or held) it.
    pub server: String,
    /// Why the set no longer allows it: a `result` of the callout's requests
    /// (`unknown_agent`, `bootstrap_refused`).
    pub reason: &'static str,
    /// What closing it did: one of [`Labels::revocation_results`](crate::Labels).
    pub result: &'static str,
}

/// One revocation, as `/status` lists it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RevokedConnection {
    pub at: String,
    pub agent: String,
    pub server: String,
    pub reason: &'static str,
    pub result: &'static str,
}

/// One refusal of the callout responder, as `/status` lists it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CalloutRefusal {
    pub at: String,
    /// The `result` label it was counted under.
    pub reason: &'static str,
    /// The agent its certificate named, if any (no secret: agent ids are in every log).
    pub agent: Option<String>,
}

/// How many refusals `/status` keeps.
const REFUSALS_KEPT: usize = 10;
/// How many revocations `/status` keeps.
const REVOCATIONS_KEPT: usize = 10;

#[derive(Clone, Debug)]
struct Reload {
    at: Stamp,
    summary: ReloadSummary,
}

/// The mutable part of [`Health`]. Invariants: `last_progress` is the latest of creation,
/// the last `pass_started`, the last `pass_finished` and the last `progress`; `running` is `Some` exactly
/// between a `pass_started` and the following `pass_finished`; `consecutive_failures`
/// counts failed passes since the last successful one.
#[derive(Debug)]
struct State {
    last_progress: Instant,
    running: Option<Stamp>,
    last_pass: Option<FinishedPass>,
    last_success: Option<SystemTime>,
    consecutive_failures: u64,
    desired: Option<Vec<(&'static str, usize)>>,
    observed_users: Option<usize>,
    file_written: Option<SystemTime>,
    last_reload: Option<Reload>,
    next_pass: Option<Stamp>,
    ready_since: Option<SystemTime>,
    /// The passes have given nats-server a usable set of users ([`Health::mark_ready`]).
    content_ready: bool,
    /// Only a pass that read the director makes the content ready, not the bootstrap users
    /// ([`Health::ready_after_full_pass`]).
    after_full_pass: bool,
    /// The bootstrap users are loaded, while readiness waits for a pass that read the
    /// director.
    bootstrap_loaded: bool,
    /// The watch's last report, or what the program said to show before it reports.
    watch: WatchStatus,
    /// Callout mode's responder (§12); `None` in file mode.
    callout: Option<Callout>,
}

/// Progress and readiness of the control loop, shared (in an `Arc`) between the loop and
/// the HTTP server. Updates take a short uncontended lock and never block on I/O.
#[derive(Debug)]
pub struct Health {
    metrics: Arc<Metrics>,
    /// `/healthz` fails when no pass started or finished for longer than this.
    staleness_limit: Duration,
    state: Mutex<State>,
}

impl Health {
    /// A loop that has not run a pass yet. Creation counts as progress, so the first pass
    /// has `staleness_limit` to start. Pass-related events also update `metrics`. `/status`
    /// shows `unreported` as the watch until it reports; its state should be the one the
    /// state gauge starts in (the first of [`Labels::watch_states`](crate::Labels::watch_states)).
    pub fn new(metrics: Arc<Metrics>, staleness_limit: Duration, unreported: WatchStatus) -> Self {
        Self {
            metrics,
            staleness_limit,
            state: Mutex::new(State {
                last_progress: Instant::now(),
                running: None,
                last_pass: None,
                last_success: None,
                consecutive_failures: 0,
                desired: None,
                observed_users: None,
                file_written: None,
                last_reload: None,
                next_pass: None,
                ready_since: None,
                content_ready: false,
                after_full_pass: false,
                bootstrap_loaded: false,
                watch: unreported,
                callout: None,
            }),
        }
    }

    /// A staleness limit for a loop with these settings: the longest legitimate gap between
    /// two progress events is the longer of the poll interval and the backoff cap (waiting
    /// for the next pass) or the pass timeout (a pass running); their sum plus a minute of
    /// slack is comfortably above either.
    pub fn liveness_limit(
        poll_interval: Duration,
        backoff_cap: Duration,
        pass_timeout: Duration,
    ) -> Duration {
        poll_interval.max(backoff_cap) + pass_timeout + LIVENESS_SLACK
    }

    /// The configured staleness limit.
    pub fn staleness_limit(&self) -> Duration {
        self.staleness_limit
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves `State` consistent field by field, so a panic elsewhere while
        // holding the lock cannot leave it half-updated in a way that matters here.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A pass begins. Counts as progress for `/healthz`.
    pub fn pass_started(&self) {
        let now = Stamp::now();
        let mut s = self.state();
        s.last_progress = now.instant;
        s.running = Some(now);
        s.next_pass = None;
    }

    /// The control loop is alive though it ran no pass: a poll of the event log completed
    /// (§6.6), successfully or not. Counts as progress for `/healthz` exactly like
    /// [`Health::pass_started`]: with the watch healthy, full passes may be
    /// `intervals.resync` apart and partial ones only come with events, while the polls in
    /// between show that the loop still turns.
    pub fn progress(&self) {
        self.state().last_progress = Instant::now();
    }

    /// The watch's state, reason, cursor and schedule, shown on `/status`; also moves
    /// `bosh_nats_sync_watch_state` (and counts a change of state).
    pub fn watch(&self, status: WatchStatus) {
        let mut s = self.state();
        self.metrics.watch_state(status.state);
        s.watch = status;
    }

    /// A pass ended. Counts as progress; records the outcome for `/status` and in the
    /// metrics (passes, duration, errors, last success, consecutive failures, users, held).
    /// The duration is measured from the matching [`Health::pass_started`]; without one it
    /// is unknown and not observed in the histogram.
    pub fn pass_finished(&self, report: PassSummary) {
        let now = Stamp::now();
        let mut s = self.state();
        let started = s.running.take();
        let duration = started.map(|st| now.instant.saturating_duration_since(st.instant));
        s.last_progress = now.instant;

        let error_reason = report.error.as_ref().map(|e| e.reason);
        self.metrics
            .pass_finished(report.result, error_reason, duration);
        if error_reason.is_some() {
            s.consecutive_failures += 1;
        } else {
            s.consecutive_failures = 0;
            s.last_success = Some(now.wall);
            self.metrics.set_last_success(now.wall);
        }
        self.metrics
            .set_consecutive_failures(s.consecutive_failures);
        if let Some(desired) = report.desired {
            for &(kind, n) in &desired {
                self.metrics.set_desired_users(kind, n);
            }
            s.desired = Some(desired);
        }
        if let Some(observed) = report.observed_users {
            self.metrics.set_observed_users(observed);
            s.observed_users = Some(observed);
        }
        if report.held {
            self.metrics.pass_held();
        }
        s.last_pass = Some(FinishedPass {
            started,
            finished: now,
            duration,
            result: report.result,
            error: report.error,
            held: report.held,
        });
    }

    /// The auth file was written (by a pass or by the start-up bootstrap).
    pub fn auth_file_written(&self) {
        self.metrics.auth_file_written();
        self.state().file_written = Some(SystemTime::now());
    }

    /// nats-server was signalled to reload (by a pass or by start-up); `summary` says how
    /// it went.
    pub fn reload_finished(&self, summary: ReloadSummary) {
        self.metrics.reload(summary.result);
        self.state().last_reload = Some(Reload {
            at: Stamp::now(),
            summary,
        });
    }

    /// The loop scheduled its next pass `delay` from now (shown on `/status`).
    pub fn next_pass_in(&self, delay: Duration) {
        let now = Stamp::now();
        self.state().next_pass = Some(Stamp {
            instant: now.instant + delay,
            wall: now.wall + delay,
        });
    }

    /// The auth file holds a usable config and nats-server has loaded it. From the first
    /// call on, `/readyz` answers 200 for the rest of the process's life (§7); later
    /// calls change nothing.
    pub fn mark_ready(&self) {
        let mut s = self.state();
        s.content_ready = true;
        Self::maybe_ready(&mut s);
    }

    /// Readiness waits for the first pass that read the director: loading the bootstrap
    /// users ([`Health::bootstrap_loaded`]) no longer makes the process ready (§7, a pod of a
    /// cluster, where the Service would send agents to a server that refuses them).
    pub fn ready_after_full_pass(&self) {
        self.state().after_full_pass = true;
    }

    /// nats-server loaded the bootstrap users (§6.2): ready, unless readiness waits for a
    /// pass that read the director ([`Health::ready_after_full_pass`]).
    pub fn bootstrap_loaded(&self) {
        let mut s = self.state();
        if s.after_full_pass {
            s.bootstrap_loaded = true;
            return;
        }
        s.content_ready = true;
        Self::maybe_ready(&mut s);
    }

    /// Ready once the passes gave nats-server usable users — and in callout mode, once the
    /// responder has been subscribed too (§12.4): before that, nobody answers nats-server.
    fn maybe_ready(s: &mut State) {
        let callout_ok = s.callout.as_ref().is_none_or(|c| c.subscribed_once);
        if s.ready_since.is_none() && s.content_ready && callout_ok {
            s.ready_since = Some(SystemTime::now());
        }
    }

    /// Callout mode (§12): `/status` shows the responder, and readiness waits for it.
    pub fn callout_mode(&self) {
        self.state().callout.get_or_insert_with(Callout::default);
    }

    /// The responder's connection is up and subscribed, or down.
    pub fn callout_connected(&self, up: bool) {
        self.metrics.callout_connected(up);
        let mut s = self.state();
        let callout = s.callout.get_or_insert_with(Callout::default);
        if callout.connected != up || callout.since.is_none() {
            callout.connected = up;
            callout.since = Some(SystemTime::now());
        }
        callout.subscribed_once |= up;
        Self::maybe_ready(&mut s);
    }

    /// nats-server runs another `auth_callout` block than the configuration asks for, and
    /// cannot take a changed one on a reload: `/status` says so, with `why`.
    pub fn callout_restart_needed(&self, why: String) {
        let mut s = self.state();
        s.callout
            .get_or_insert_with(Callout::default)
            .restart_needed = Some(why);
    }

    /// The admitted set now holds `agents`.
    pub fn callout_admitted(&self, agents: usize) {
        self.metrics.callout_admitted(agents);
        let mut s = self.state();
        s.callout
            .get_or_insert_with(Callout::default)
            .admitted_agents = Some(agents);
    }

    /// The responder refused a client for `reason` (a `result` label); `agent` when its
    /// certificate named one.
    pub fn callout_refused(&self, reason: &'static str, agent: Option<String>) {
        let mut s = self.state();
        let refusals = &mut s.callout.get_or_insert_with(Callout::default).refusals;
        if refusals.len() == REFUSALS_KEPT {
            refusals.pop_front();
        }
        refusals.push_back(CalloutRefusal {
            at: rfc3339(SystemTime::now()),
            reason,
            agent,
        });
    }

    /// The revoker closed a connection the admitted set no longer allows, found it gone, or
    /// could not close it: counted by result, and kept for `/status`.
    pub fn callout_revoked(&self, revocation: CalloutRevocation) {
        self.metrics.callout_revocation(revocation.result);
        let mut s = self.state();
        let kept = &mut s.callout.get_or_insert_with(Callout::default).revocations;
        if kept.len() == REVOCATIONS_KEPT {
            kept.pop_front();
        }
        kept.push_back(RevokedConnection {
            at: rfc3339(SystemTime::now()),
            agent: revocation.agent,
            server: revocation.server,
            reason: revocation.reason,
            result: revocation.result,
        });
    }

    /// Whether [`Health::mark_ready`] has been called.
    pub fn is_ready(&self) -> bool {
        self.state().ready_since.is_some()
    }

    /// `Ok` while the loop makes progress: a pass started or finished, or an event poll
    /// completed ([`Health::progress`]), within the staleness limit. A failing pass is
    /// progress: a down director is not a liveness failure.
    pub fn liveness(&self) -> Result<(), Unhealthy> {
        let s = self.state();
        let silent = Instant::now().saturating_duration_since(s.last_progress);
        if silent <= self.staleness_limit {
            return Ok(());
        }
        let limit = self.staleness_limit.as_secs();
        Err(Unhealthy(match s.running {
            Some(started) => format!(
                "wedged: the current pass has been running for {}s (limit {limit}s)",
                Instant::now()
                    .saturating_duration_since(started.instant)
                    .as_secs()
            ),
            None => format!(
                "wedged: no pass started or finished and no event poll completed for {}s (limit {limit}s)",
                silent.as_secs()
            ),
        }))
    }

    /// `Ok` once [`Health::mark_ready`] has been called; before that, why not.
    pub fn readiness(&self) -> Result<(), Unhealthy> {
        let s = self.state();
        if s.ready_since.is_some() {
            return Ok(());
        }
        if s.content_ready {
            return Err(Unhealthy(
                "not ready: the callout responder has not subscribed to nats-server's authorization requests yet"
                    .to_owned(),
            ));
        }
        let mut reason = if s.callout.is_some() {
            String::from(
                "not ready: no admitted set loaded yet (none persisted, and no pass has read the director)",
            )
        } else if s.bootstrap_loaded {
            String::from(
                "not ready: nats-server has the director and health-monitor users, but no pass has read the director's agents yet (http.ready_after_full_pass)",
            )
        } else {
            String::from("not ready: nats-server has not loaded a usable auth file yet")
        };
        let reload_error = s
            .last_reload
            .as_ref()
            .and_then(|r| r.summary.error.as_ref());
        let pass_error = s.last_pass.as_ref().and_then(|p| p.error.as_ref());
        if let Some(e) = reload_error {
            reason.push_str(&format!(" (last reload failed: {})", e.reason));
        } else if let Some(e) = pass_error {
            reason.push_str(&format!(" (last pass failed: {})", e.reason));
        }
        Err(Unhealthy(reason))
    }

    /// A snapshot for `/status`.
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let s = self.state();
        Status {
            live: {
                let silent = now.saturating_duration_since(s.last_progress);
                silent <= self.staleness_limit
            },
            ready: s.ready_since.is_some(),
            ready_since: s.ready_since.map(rfc3339),
            pass_running: s.running.map(|st| RunningPass {
                started_at: rfc3339(st.wall),
                running_seconds: now.saturating_duration_since(st.instant).as_secs_f64(),
            }),
            last_pass: s.last_pass.as_ref().map(|p| LastPass {
                started_at: p.started.map(|st| rfc3339(st.wall)),
                finished_at: rfc3339(p.finished.wall),
                duration_seconds: p.duration.map(|d| d.as_secs_f64()),
                result: p.result,
                held: p.held,
                error: p.error.clone(),
            }),
            last_success_at: s.last_success.map(rfc3339),
            consecutive_failures: s.consecutive_failures,
            desired_users: s.desired.as_ref().map(|d| DesiredUsers {
                total: d.iter().map(|&(_, n)| n).sum(),
                by_kind: d.clone(),
            }),
            observed_users: s.observed_users,
            auth_file_written_at: s.file_written.map(rfc3339),
            last_reload: s.last_reload.as_ref().map(|r| LastReload {
                at: rfc3339(r.at.wall),
                result: r.summary.result,
                verified: r.summary.verified,
                error: r.summary.error.clone(),
            }),
            next_pass: s.next_pass.map(|np| NextPass {
                at: rfc3339(np.wall),
                in_seconds: np.instant.saturating_duration_since(now).as_secs_f64(),
            }),
            watch: WatchInfo {
                state: s.watch.state,
                reason: s.watch.reason.clone(),
                cursor: s.watch.cursor,
                last_event_id: s.watch.last_event_id,
                events_read_at: s.watch.events_read_at.map(rfc3339),
                last_full_pass_at: s.watch.last_full_pass_at.map(rfc3339),
                next_full_pass_at: s.watch.next_full_pass_at.map(rfc3339),
            },
            admission: if s.callout.is_some() {
                "callout"
            } else {
                "file"
            },
            callout: s.callout.as_ref().map(|c| CalloutInfo {
                connected: c.connected,
                since: c.since.map(rfc3339),
                admitted_agents: c.admitted_agents,
                last_refusals: c.refusals.iter().cloned().collect(),
                last_revocations: c.revocations.iter().cloned().collect(),
                restart_needed: c.restart_needed.clone(),
            }),
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The `/status` document. Times are RFC 3339 in UTC to the second; durations are seconds.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// What `/healthz` would answer.
    pub live: bool,
    /// What `/readyz` would answer.
    pub ready: bool,
    pub ready_since: Option<String>,
    pub pass_running: Option<RunningPass>,
    pub last_pass: Option<LastPass>,
    pub last_success_at: Option<String>,
    pub consecutive_failures: u64,
    pub desired_users: Option<DesiredUsers>,
    pub observed_users: Option<usize>,
    pub auth_file_written_at: Option<String>,
    pub last_reload: Option<LastReload>,
    pub next_pass: Option<NextPass>,
    /// The watch of the event log (§6.6); what the program gave [`Health::new`] until the
    /// watch reports.
    pub watch: WatchInfo,
    /// How agents are admitted: `file` or `callout` (§12).
    pub admission: &'static str,
    /// Callout mode's responder; absent in file mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callout: Option<CalloutInfo>,
}

/// The `callout` object of `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct CalloutInfo {
    /// Connected to nats-server and subscribed to its authorization requests.
    pub connected: bool,
    /// Since when `connected` holds.
    pub since: Option<String>,
    /// Agents in the admitted set; `None` until it is loaded.
    pub admitted_agents: Option<usize>,
    /// The last refusals, oldest first.
    pub last_refusals: Vec<CalloutRefusal>,
    /// The last revocations (§12.6), oldest first.
    pub last_revocations: Vec<RevokedConnection>,
    /// Why nats-server must restart (its `auth_callout` block is not the configured one).
    pub restart_needed: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunningPass {
    pub started_at: String,
    pub running_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LastPass {
    /// `None` when the pass was reported finished without having been reported started.
    pub started_at: Option<String>,
    pub finished_at: String,
    pub duration_seconds: Option<f64>,
    /// The pass's `result` label.
    pub result: &'static str,
    pub held: bool,
    pub error: Option<ErrorInfo>,
}

/// The `desired_users` object of `/status`: `total`, then one field per kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredUsers {
    pub total: usize,
    /// By `kind` label, in the order the pass reported them.
    pub by_kind: Vec<(&'static str, usize)>,
}

impl Serialize for DesiredUsers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1 + self.by_kind.len()))?;
        map.serialize_entry("total", &self.total)?;
        for (kind, n) in &self.by_kind {
            map.serialize_entry(kind, n)?;
        }
        map.end()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LastReload {
    pub at: String,
    /// The reload's `result` label.
    pub result: &'static str,
    pub verified: bool,
    pub error: Option<ErrorInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NextPass {
    pub at: String,
    /// 0 when the pass is due or overdue.
    pub in_seconds: f64,
}

/// The `watch` object of `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct WatchInfo {
    /// The watch's `state` label.
    pub state: &'static str,
    pub reason: String,
    pub cursor: Option<u64>,
    pub last_event_id: Option<u64>,
    pub events_read_at: Option<String>,
    pub last_full_pass_at: Option<String>,
    pub next_full_pass_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const LIMIT: Duration = Duration::from_secs(100);

    /// What these tests say of a watch that has not reported.
    const UNREPORTED: &str = "the watch has not reported";

    fn health() -> (Arc<Metrics>, Health) {
        let labels = crate::Labels {
            watch_states: vec!["off", "unproven", "healthy", "failing", "blind"],
            ..crate::Labels::default()
        };
        let metrics = Arc::new(Metrics::with_labels(crate::BuildInfo::UNKNOWN, &labels));
        let health = Health::new(metrics.clone(), LIMIT, watch("off", UNREPORTED));
        (metrics, health)
    }

    /// A watch in `state`, with nothing read yet.
    fn watch(state: &'static str, reason: &str) -> WatchStatus {
        WatchStatus {
            state,
            reason: reason.to_owned(),
            cursor: None,
            events_read_at: None,
            last_event_id: None,
            last_full_pass_at: None,
            next_full_pass_at: None,
        }
    }

    fn sample(metrics: &Metrics, series: &str) -> Option<String> {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    fn unchanged(desired: Vec<(&'static str, usize)>, observed: usize) -> PassSummary {
        PassSummary {
            result: "unchanged",
            error: None,
            desired: Some(desired),
            observed_users: Some(observed),
            held: false,
        }
    }

    fn failed(reason: &'static str, message: &str) -> PassSummary {
        PassSummary {
            result: "error",
            error: Some(ErrorInfo {
                reason,
                message: message.to_owned(),
            }),
            desired: None,
            observed_users: None,
            held: false,
        }
    }

    fn reload_failed(reason: &'static str, message: &str) -> ReloadSummary {
        ReloadSummary {
            result: "failed",
            verified: false,
            error: Some(ErrorInfo {
                reason,
                message: message.to_owned(),
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn creation_counts_as_progress_until_the_limit() {
        let (_, h) = health();
        assert_eq!(h.liveness(), Ok(()));
        advance(LIMIT).await;
        assert_eq!(h.liveness(), Ok(()));
        advance(Duration::from_secs(1)).await;
        let err = h.liveness().unwrap_err().to_string();
        assert_eq!(
            err,
            "wedged: no pass started or finished and no event poll completed for 101s (limit 100s)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failing_passes_are_progress() {
        let (_, h) = health();
        for _ in 0..5 {
            advance(LIMIT - Duration::from_secs(1)).await;
            h.pass_started();
            advance(Duration::from_secs(1)).await;
            h.pass_finished(failed("connection", "director unreachable"));
            assert_eq!(h.liveness(), Ok(()));
        }
        assert_eq!(h.status().consecutive_failures, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_running_past_the_limit_is_wedged() {
        let (_, h) = health();
        h.pass_started();
        advance(LIMIT + Duration::from_secs(5)).await;
        assert_eq!(
            h.liveness().unwrap_err().to_string(),
            "wedged: the current pass has been running for 105s (limit 100s)"
        );
        assert!(!h.status().live);
        h.pass_finished(unchanged(Vec::new(), 0));
        assert_eq!(h.liveness(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn ready_once_stays_ready() {
        let (_, h) = health();
        h.pass_finished(failed("connection", "refused"));
        assert_eq!(
            h.readiness().unwrap_err().to_string(),
            "not ready: nats-server has not loaded a usable auth file yet \
             (last pass failed: connection)"
        );
        h.reload_finished(reload_failed("reload", "config_load_time did not advance"));
        assert_eq!(
            h.readiness().unwrap_err().to_string(),
            "not ready: nats-server has not loaded a usable auth file yet \
             (last reload failed: reload)"
        );
        h.mark_ready();
        assert_eq!(h.readiness(), Ok(()));
        h.pass_finished(failed("status", "500"));
        h.reload_finished(reload_failed("reload", "x"));
        assert_eq!(h.readiness(), Ok(()));
        assert!(h.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn the_bootstrap_users_make_ready_unless_readiness_waits_for_a_full_pass() {
        let (_, h) = health();
        h.bootstrap_loaded();
        assert_eq!(h.readiness(), Ok(()), "by default the bootstrap users do");
        let (_, h) = health();
        h.ready_after_full_pass();
        h.bootstrap_loaded();
        assert_eq!(
            h.readiness().unwrap_err().to_string(),
            "not ready: nats-server has the director and health-monitor users, but no pass has \
             read the director's agents yet (http.ready_after_full_pass)"
        );
        h.pass_finished(failed("connection", "refused"));
        assert!(!h.is_ready(), "a failed pass changes nothing");
        h.mark_ready();
        assert_eq!(h.readiness(), Ok(()), "a pass that read the director does");
    }

    #[tokio::test(start_paused = true)]
    async fn in_callout_mode_readiness_names_what_is_missing() {
        let (_, h) = health();
        h.callout_mode();
        assert_eq!(
            h.readiness().unwrap_err().to_string(),
            "not ready: no admitted set loaded yet (none persisted, and no pass has read the director)"
        );
        h.mark_ready();
        assert_eq!(
            h.readiness().unwrap_err().to_string(),
            "not ready: the callout responder has not subscribed to nats-server's authorization requests yet"
        );
        h.callout_connected(true);
        assert_eq!(h.readiness(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn passes_update_status_and_metrics_together() {
        let (m, h) = health();
        let desired = vec![
            ("director", 1),
            ("hm", 1),
            ("agent", 3),
            ("agent_bootstrap", 2),
        ];

        h.pass_started();
        advance(Duration::from_millis(1500)).await;
        h.pass_finished(PassSummary {
            result: "changed",
            error: None,
            desired: Some(desired.clone()),
            observed_users: Some(2),
            held: false,
        });
        h.auth_file_written();
        h.reload_finished(ReloadSummary {
            result: "ok",
            verified: true,
            error: None,
        });

        h.pass_started();
        h.pass_finished(failed("timeout", "pass timed out after 300s"));
        h.pass_started();
        h.pass_finished(failed("connection", "connection refused"));
        h.next_pass_in(Duration::from_secs(4));
        advance(Duration::from_secs(1)).await;

        let st = h.status();
        assert_eq!(st.consecutive_failures, 2);
        let last = st.last_pass.expect("a pass finished");
        assert_eq!(last.result, "error");
        let err = last.error.expect("the last pass failed");
        assert_eq!(err.reason, "connection");
        assert_eq!(err.message, "connection refused");
        assert_eq!(last.duration_seconds, Some(0.0));
        // A failed pass keeps the last known user counts.
        let d = st.desired_users.expect("desired users known");
        assert_eq!((d.total, &d.by_kind), (7, &desired));
        assert_eq!(st.observed_users, Some(2));
        assert!(st.auth_file_written_at.is_some());
        assert!(st.last_success_at.is_some());
        let reload = st.last_reload.expect("reloaded");
        assert_eq!((reload.result, reload.verified), ("ok", true));
        assert_eq!(st.next_pass.expect("scheduled").in_seconds, 3.0);

        for (series, value) in [
            (r#"bosh_nats_sync_passes_total{result="changed"}"#, "1"),
            (r#"bosh_nats_sync_passes_total{result="error"}"#, "2"),
            (r#"bosh_nats_sync_errors_total{reason="timeout"}"#, "1"),
            (r#"bosh_nats_sync_errors_total{reason="connection"}"#, "1"),
            ("bosh_nats_sync_consecutive_failures", "2"),
            (r#"bosh_nats_sync_desired_users{kind="agent"}"#, "3"),
            (
                r#"bosh_nats_sync_desired_users{kind="agent_bootstrap"}"#,
                "2",
            ),
            (r#"bosh_nats_sync_desired_users{kind="hm"}"#, "1"),
            ("bosh_nats_sync_observed_users", "2"),
            ("bosh_nats_sync_auth_file_writes_total", "1"),
            (r#"bosh_nats_sync_reloads_total{result="ok"}"#, "1"),
            (
                r#"bosh_nats_sync_pass_duration_seconds_bucket{result="changed",le="1"}"#,
                "0",
            ),
            (
                r#"bosh_nats_sync_pass_duration_seconds_bucket{result="changed",le="2.5"}"#,
                "1",
            ),
            (
                r#"bosh_nats_sync_pass_duration_seconds_sum{result="changed"}"#,
                "1.5",
            ),
        ] {
            assert_eq!(sample(&m, series).as_deref(), Some(value), "{series}");
        }
        let ts: f64 = sample(&m, "bosh_nats_sync_last_success_timestamp_seconds")
            .expect("gauge exported")
            .parse()
            .expect("a number");
        assert!(ts > 1.7e9, "last success is a unix time, got {ts}");

        h.pass_started();
        h.pass_finished(unchanged(desired, 7));
        assert_eq!(h.status().consecutive_failures, 0);
        assert_eq!(
            sample(&m, "bosh_nats_sync_consecutive_failures").as_deref(),
            Some("0")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_passes_are_counted_and_shown() {
        let (m, h) = health();
        h.pass_started();
        h.pass_finished(PassSummary {
            held: true,
            ..unchanged(Vec::new(), 40)
        });
        assert!(h.status().last_pass.expect("finished").held);
        assert_eq!(
            sample(&m, "bosh_nats_sync_held_passes_total").as_deref(),
            Some("1")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_finish_without_a_start_has_no_duration() {
        let (m, h) = health();
        h.pass_finished(unchanged(Vec::new(), 0));
        let last = h.status().last_pass.expect("finished");
        assert_eq!((last.started_at, last.duration_seconds), (None, None));
        assert_eq!(
            sample(&m, r#"bosh_nats_sync_passes_total{result="unchanged"}"#).as_deref(),
            Some("1")
        );
        assert!(
            !m.render()
                .contains("bosh_nats_sync_pass_duration_seconds_count{result=\"unchanged\"}")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn event_polls_keep_a_loop_without_passes_alive() {
        let (_, h) = health();
        h.pass_started();
        h.pass_finished(unchanged(Vec::new(), 2));
        // A healthy watch on a quiet director: no pass for many limits, a poll every second.
        for _ in 0..(3 * LIMIT.as_secs()) {
            advance(Duration::from_secs(1)).await;
            h.progress();
            assert_eq!(h.liveness(), Ok(()));
        }
        assert!(h.status().live);
        // The polls stop: wedged once the limit has passed since the last one.
        advance(LIMIT).await;
        assert_eq!(h.liveness(), Ok(()));
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            h.liveness().unwrap_err().to_string(),
            "wedged: no pass started or finished and no event poll completed for 101s (limit 100s)"
        );
        assert!(!h.status().live);
        // One poll is progress again.
        h.progress();
        assert_eq!(h.liveness(), Ok(()));
        // Polls are not passes: the last pass and the counts stay as they were.
        let st = h.status();
        assert_eq!(st.last_pass.expect("a pass finished").result, "unchanged");
        assert_eq!(st.consecutive_failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_is_off_until_it_reports() {
        let (m, h) = health();
        let w = h.status().watch;
        assert_eq!((w.state, w.reason.as_str()), ("off", UNREPORTED));
        assert_eq!((w.cursor, w.last_event_id), (None, None));
        assert_eq!(
            (w.events_read_at, w.last_full_pass_at, w.next_full_pass_at),
            (None, None, None)
        );
        assert_eq!(
            sample(&m, r#"bosh_nats_sync_watch_state{state="off"}"#).as_deref(),
            Some("1")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn watch_reports_reach_status_and_the_state_gauge() {
        let (m, h) = health();
        let read_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        h.watch(WatchStatus {
            state: "unproven",
            reason: "the event log is empty".into(),
            cursor: None,
            events_read_at: Some(read_at),
            last_event_id: None,
            last_full_pass_at: Some(read_at - Duration::from_secs(2)),
            next_full_pass_at: Some(read_at + Duration::from_secs(8)),
        });
        let healthy = WatchStatus {
            state: "healthy",
            reason: "the event log answers and is being written".into(),
            cursor: Some(41),
            events_read_at: Some(read_at + Duration::from_secs(1)),
            last_event_id: Some(42),
            last_full_pass_at: Some(read_at - Duration::from_secs(2)),
            next_full_pass_at: Some(read_at + Duration::from_secs(298)),
        };
        h.watch(healthy.clone());
        h.watch(healthy);

        let w = h.status().watch;
        assert_eq!(w.state, "healthy");
        assert_eq!(w.reason, "the event log answers and is being written");
        assert_eq!((w.cursor, w.last_event_id), (Some(41), Some(42)));
        // Wall-clock times in the format of the rest of /status.
        assert_eq!(
            w.events_read_at.as_deref(),
            Some(rfc3339(read_at + Duration::from_secs(1)).as_str())
        );
        assert_eq!(w.last_full_pass_at.as_deref(), Some("2026-11-18T11:06:38Z"));
        assert_eq!(w.next_full_pass_at.as_deref(), Some("2026-11-18T11:11:38Z"));
        for (series, value) in [
            (r#"bosh_nats_sync_watch_state{state="healthy"}"#, "1"),
            (r#"bosh_nats_sync_watch_state{state="unproven"}"#, "0"),
            (r#"bosh_nats_sync_watch_state{state="off"}"#, "0"),
            (
                r#"bosh_nats_sync_watch_state_changes_total{state="healthy"}"#,
                "1",
            ),
            (
                r#"bosh_nats_sync_watch_state_changes_total{state="unproven"}"#,
                "1",
            ),
        ] {
            assert_eq!(sample(&m, series).as_deref(), Some(value), "{series}");
        }

        // A watch that reports off (it stopped) shows off, with what it said.
        h.watch(WatchStatus {
            state: "off",
            reason: "stopped".into(),
            cursor: None,
            events_read_at: None,
            last_event_id: None,
            last_full_pass_at: None,
            next_full_pass_at: None,
        });
        let w = h.status().watch;
        assert_eq!((w.state, w.reason.as_str()), ("off", "stopped"));
        assert_eq!(
            sample(&m, r#"bosh_nats_sync_watch_state{state="off"}"#).as_deref(),
            Some("1")
        );
    }

    #[test]
    fn liveness_limit_covers_the_longest_gap() {
        let limit = Health::liveness_limit(
            Duration::from_secs(30),
            Duration::from_secs(60),
            Duration::from_secs(300),
        );
        assert_eq!(limit, Duration::from_secs(60 + 300 + 60));
    }

    #[test]
    fn the_last_ten_revocations_are_shown_and_every_one_counted() {
        let (metrics, health) = health();
        health.callout_mode();
        for i in 0..12 {
            health.callout_revoked(CalloutRevocation {
                agent: format!("a{i}"),
                server: "n1".to_owned(),
                reason: "unknown_agent",
                result: if i == 11 { "gone" } else { "kicked" },
            });
        }
        let status = health.status();
        let shown = &status.callout.as_ref().unwrap().last_revocations;
        assert_eq!(shown.len(), REVOCATIONS_KEPT);
        assert_eq!(shown[0].agent, "a2", "oldest first, the first two dropped");
        assert_eq!(
            (shown[9].agent.as_str(), shown[9].server.as_str()),
            ("a11", "n1")
        );
        assert_eq!(
            (shown[9].reason, shown[9].result),
            ("unknown_agent", "gone")
        );
        assert_eq!(
            sample(
                &metrics,
                r#"bosh_nats_sync_callout_revocations_total{result="kicked"}"#
            ),
            Some("11".to_owned())
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["callout"]["last_revocations"][9]["agent"], "a11");
        assert!(json["callout"]["last_revocations"][9]["at"].is_string());
    }
}
