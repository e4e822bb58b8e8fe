//! The Prometheus registry: every metric of §8 and the methods that record them.
//!
//! Label values are the program's, not this crate's: short `&'static str`s from closed sets
//! it defines (its [`Label`](crate::Label) enums, its error enums' reasons), so a label can
//! never carry a deployment name, an agent id or anything else unbounded. The pass, write and
//! reload metrics are recorded through [`crate::Health`], which keeps `/status` and the
//! metrics in step; everything else is recorded here directly.
//!
//! Every counter and gauge whose label values are known in advance is exported with each of
//! them from start-up, at 0 (§8): a healthy process already has the series that alert rules
//! and dashboard panels query, so `rate(bosh_nats_sync_errors_total[5m])` is 0, not "no
//! data". The program hands those values to [`Metrics::with_labels`] ([`Labels`]). Not known
//! in advance, so absent until they occur: an HTTP status other than the success one and the
//! error classes of director requests. Histograms by label are not preset either: a
//! zero-count histogram has no latency to show (its quantiles are NaN), and how often the
//! thing happened is in the matching counter, which is.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::labels::Labels;

/// Buckets of the pass duration histogram: a pass with nothing to do on a small director
/// takes tens of milliseconds; the default pass timeout is 5 minutes.
const PASS_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets of the director request latency histogram: requests time out after 30 s.
const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of the admission latency histogram (§6.6): the target is 2 s at the 99th
/// percentile, a poll of the event log every second is the usual floor, and a VM whose agent
/// waits for a full pass (up to `poll_user_sync` plus the pass) lands in the top buckets.
const ADMISSION_LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0,
];

/// An answer is a lookup and two signatures; one that waits for an event poll takes up to
/// the authorization timeout (1 s by default).
const CALLOUT_ANSWER_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0,
];

/// What `bosh_nats_sync_build_info` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// The release version, e.g. `0.1.0`.
    pub version: &'static str,
    /// The source revision (a git commit), `unknown` when the build did not record one.
    pub revision: &'static str,
}

impl BuildInfo {
    /// For a registry outside the program (tests, tools): the program names its own build.
    pub const UNKNOWN: BuildInfo = BuildInfo {
        version: "unknown",
        revision: "unknown",
    };
}

/// Every metric the program exports, each registered exactly once in `registry` (so
/// [`Metrics::render`] shows them all). Counters and gauges whose label values form a closed
/// set are created for every value at start, so a query sees `0` rather than no series (see
/// the module's documentation for what is not).
pub struct Metrics {
    registry: Registry,
    passes: IntCounterVec,
    pass_duration: HistogramVec,
    errors: IntCounterVec,
    last_success: Gauge,
    consecutive_failures: IntGauge,
    desired_users: IntGaugeVec,
    observed_users: IntGauge,
    skipped_vms: IntCounterVec,
    subjects_rejected: IntCounterVec,
    auth_file_writes: IntCounter,
    reloads: IntCounterVec,
    held_passes: IntCounter,
    director_requests: IntCounterVec,
    director_request_duration: HistogramVec,
    uaa_token_fetches: IntCounterVec,
    watch_state: IntGaugeVec,
    watch_state_changes: IntCounterVec,
    /// The state `watch_state` shows as 1 (none while no state is known); a report of the
    /// same state again changes nothing.
    watch_current: Mutex<Option<&'static str>>,
    watch_events_read: IntCounter,
    watch_passes: IntCounterVec,
    watch_unannounced_changes: IntCounter,
    watch_admission_latency: Histogram,
    callout_requests: IntCounterVec,
    callout_answer_duration: Histogram,
    callout_admitted_agents: IntGauge,
    callout_connected: IntGauge,
    callout_polls: IntCounter,
    callout_revocations: IntCounterVec,
    callout_connections_observed: IntGauge,
}

/// The metric definitions below are constants of this file; an error from them is a bug
/// that the unit tests catch, not a runtime condition.
const STATIC_DEFINITION: &str = "static metric definition is valid";

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect(STATIC_DEFINITION);
    register(registry, c.clone());
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect(STATIC_DEFINITION);
    register(registry, c.clone());
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect(STATIC_DEFINITION);
    register(registry, g.clone());
    g
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect(STATIC_DEFINITION);
    register(registry, g.clone());
    g
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect(STATIC_DEFINITION);
    register(registry, h.clone());
    h
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect(STATIC_DEFINITION);
    register(registry, h.clone());
    h
}

fn register(registry: &Registry, c: impl Collector + 'static) {
    registry
        .register(Box::new(c))
        .expect("each metric name is registered once in a fresh registry");
}

impl Metrics {
    /// A fresh registry with every metric, [`BuildInfo::UNKNOWN`] and no label value known
    /// in advance, so no labelled series before it is recorded (for tests and tools; the
    /// program names its own build and values, see [`Metrics::with_labels`]).
    pub fn new() -> Self {
        Self::with_labels(BuildInfo::UNKNOWN, &Labels::default())
    }

    /// A fresh registry with every metric; `build` fills `bosh_nats_sync_build_info`, and
    /// every series of `labels` starts at 0 (the watch state's gauge at 1 for the first of
    /// `labels.watch_states`). They must be every value known in advance, so that no series
    /// first appears when it first happens; this crate does not know the program's values.
    pub fn with_labels(build: BuildInfo, labels: &Labels) -> Self {
        let registry = Registry::new();
        let r = &registry;

        let passes = counter_vec(
            r,
            "bosh_nats_sync_passes_total",
            "Finished reconciliation passes by result (changed, unchanged, error)",
            &["result"],
        );
        let pass_duration = histogram_vec(
            r,
            "bosh_nats_sync_pass_duration_seconds",
            "Duration of reconciliation passes, by result",
            &["result"],
            PASS_DURATION_BUCKETS,
        );
        let errors = counter_vec(
            r,
            "bosh_nats_sync_errors_total",
            "Failed passes by error reason",
            &["reason"],
        );
        let last_success = Gauge::new(
            "bosh_nats_sync_last_success_timestamp_seconds",
            "Unix time at which the last successful pass finished (0 before the first one)",
        )
        .expect(STATIC_DEFINITION);
        register(r, last_success.clone());
        let consecutive_failures = int_gauge(
            r,
            "bosh_nats_sync_consecutive_failures",
            "Passes that failed since the last successful one",
        );
        let desired_users = gauge_vec(
            r,
            "bosh_nats_sync_desired_users",
            "Users computed from the director on the last pass that got that far, by kind",
            &["kind"],
        );
        let observed_users = int_gauge(
            r,
            "bosh_nats_sync_observed_users",
            "Users found in the auth file on the last pass that read it",
        );
        let skipped_vms = counter_vec(
            r,
            "bosh_nats_sync_skipped_vms_total",
            "VMs left out of the desired users, by reason (counted on every pass that sees them)",
            &["reason"],
        );
        let subjects_rejected = counter_vec(
            r,
            "bosh_nats_sync_subjects_rejected_total",
            "Subject files whose content was rejected (e.g. control characters), by whose subject",
            &["kind"],
        );
        let auth_file_writes = counter(
            r,
            "bosh_nats_sync_auth_file_writes_total",
            "Times the auth file was written",
        );
        let reloads = counter_vec(
            r,
            "bosh_nats_sync_reloads_total",
            "nats-server reloads by result (ok = verified, failed, unverified)",
            &["result"],
        );
        let held_passes = counter(
            r,
            "bosh_nats_sync_held_passes_total",
            "Passes whose mass removal of agents was held back by damping",
        );
        let director_requests = counter_vec(
            r,
            "bosh_nats_sync_director_requests_total",
            "Requests made to the director and UAA, by endpoint and HTTP status (or error class)",
            &["endpoint", "status"],
        );
        let director_request_duration = histogram_vec(
            r,
            "bosh_nats_sync_director_request_duration_seconds",
            "Latency of requests to the director and UAA, by endpoint",
            &["endpoint"],
            REQUEST_DURATION_BUCKETS,
        );
        let uaa_token_fetches = counter_vec(
            r,
            "bosh_nats_sync_uaa_token_fetches_total",
            "UAA token fetches by result",
            &["result"],
        );
        let watch_state = gauge_vec(
            r,
            "bosh_nats_sync_watch_state",
            "State of the watch of the director's event log: 1 for the current state, 0 for the others",
            &["state"],
        );
        let watch_state_changes = counter_vec(
            r,
            "bosh_nats_sync_watch_state_changes_total",
            "Changes of the watch's state, by the state entered",
            &["state"],
        );
        let watch_events_read = counter(
            r,
            "bosh_nats_sync_watch_events_read_total",
            "New events read from the director's event log",
        );
        let watch_passes = counter_vec(
            r,
            "bosh_nats_sync_watch_passes_total",
            "Passes run with the watch on, by kind (full: the whole director listed; partial: only the deployments events named)",
            &["kind"],
        );
        let watch_unannounced_changes = counter(
            r,
            "bosh_nats_sync_watch_unannounced_changes_total",
            "Deployments a full pass found changed that no event had announced",
        );
        let watch_admission_latency = histogram(
            r,
            "bosh_nats_sync_watch_admission_latency_seconds",
            "Time from reading a VM's event to the verified reload that admitted its agent",
            ADMISSION_LATENCY_BUCKETS,
        );
        let callout_requests = counter_vec(
            r,
            "bosh_nats_sync_callout_requests_total",
            "Authorization requests nats-server handed to the callout responder, by result",
            &["result"],
        );
        let callout_answer_duration = histogram(
            r,
            "bosh_nats_sync_callout_answer_seconds",
            "Time from an authorization request's arrival to its answer",
            CALLOUT_ANSWER_BUCKETS,
        );
        let callout_admitted_agents = int_gauge(
            r,
            "bosh_nats_sync_callout_admitted_agents",
            "Agents in the admitted set the callout responder answers from",
        );
        let callout_connected = int_gauge(
            r,
            "bosh_nats_sync_callout_connected",
            "1 while the callout responder is connected to nats-server and subscribed, else 0",
        );
        let callout_polls = counter(
            r,
            "bosh_nats_sync_callout_polls_total",
            "Requests from an unknown agent that asked for an event poll and waited for a pass",
        );
        let callout_revocations = counter_vec(
            r,
            "bosh_nats_sync_callout_revocations_total",
            "Live connections the admitted set no longer allows, by what closing them did (kicked, gone, error)",
            &["result"],
        );
        let callout_connections_observed = int_gauge(
            r,
            "bosh_nats_sync_callout_connections_observed",
            "Client connections nats-server reported (every server of a cluster) at the last revocation check",
        );
        let build_info = gauge_vec(
            r,
            "bosh_nats_sync_build_info",
            "Always 1; the labels say which build is running",
            &["version", "revision"],
        );
        build_info
            .with_label_values(&[build.version, build.revision])
            .set(1);

        #[cfg(target_os = "linux")]
        register(
            r,
            prometheus::process_collector::ProcessCollector::for_self(),
        );

        // Every label value known in advance, at 0 (§8); the watch state's gauge shows the
        // first state.
        let preset = |family: &IntCounterVec, values: &[&'static str]| {
            for value in values {
                family.with_label_values(&[value]);
            }
        };
        preset(&passes, &labels.pass_results);
        preset(&errors, &labels.error_reasons);
        preset(&skipped_vms, &labels.skip_reasons);
        preset(&subjects_rejected, &labels.subject_kinds);
        preset(&reloads, &labels.reload_results);
        preset(&uaa_token_fetches, &labels.uaa_token_results);
        preset(&watch_state_changes, &labels.watch_states);
        preset(&watch_passes, &labels.pass_kinds);
        preset(&callout_requests, &labels.callout_results);
        preset(&callout_revocations, &labels.revocation_results);
        for kind in &labels.user_kinds {
            desired_users.with_label_values(&[kind]);
        }
        for endpoint in &labels.director_endpoints {
            for status in &labels.director_statuses {
                director_requests.with_label_values(&[endpoint, status]);
            }
        }
        let watch_initial = labels.watch_states.first().copied();
        for state in &labels.watch_states {
            watch_state
                .with_label_values(&[state])
                .set(i64::from(Some(*state) == watch_initial));
        }

        Self {
            registry,
            passes,
            pass_duration,
            errors,
            last_success,
            consecutive_failures,
            desired_users,
            observed_users,
            skipped_vms,
            subjects_rejected,
            auth_file_writes,
            reloads,
            held_passes,
            director_requests,
            director_request_duration,
            uaa_token_fetches,
            watch_state,
            watch_state_changes,
            watch_current: Mutex::new(watch_initial),
            watch_events_read,
            watch_passes,
            watch_unannounced_changes,
            watch_admission_latency,
            callout_requests,
            callout_answer_duration,
            callout_admitted_agents,
            callout_connected,
            callout_polls,
            callout_revocations,
            callout_connections_observed,
        }
    }

    /// The callout responder answered (or could not answer) one request: `result` is one of
    /// [`Labels::callout_results`]; `elapsed` from its arrival, when it was answered.
    pub fn callout_request(&self, result: &str, elapsed: Option<Duration>) {
        self.callout_requests.with_label_values(&[result]).inc();
        if let Some(elapsed) = elapsed {
            self.callout_answer_duration.observe(elapsed.as_secs_f64());
        }
    }

    /// An answer for an unknown agent asked for an event poll and waited for a pass.
    pub fn callout_poll(&self) {
        self.callout_polls.inc();
    }

    /// A connection the admitted set no longer allows was closed (or found gone, or could not
    /// be closed): `result` is one of [`Labels::revocation_results`].
    pub fn callout_revocation(&self, result: &str) {
        self.callout_revocations.with_label_values(&[result]).inc();
    }

    /// A revocation check saw `connections` client connections.
    pub fn callout_connections_observed(&self, connections: usize) {
        self.callout_connections_observed
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
    }

    /// The admitted set now holds `agents`.
    pub fn callout_admitted(&self, agents: usize) {
        self.callout_admitted_agents
            .set(i64::try_from(agents).unwrap_or(i64::MAX));
    }

    /// The responder's connection is up and subscribed, or not.
    pub fn callout_connected(&self, up: bool) {
        self.callout_connected.set(i64::from(up));
    }

    /// One request to the director or UAA. `endpoint` is one of the program's
    /// [`Labels::director_endpoints`]; `status` is the HTTP status code ("200", "404") or an
    /// error class ("connection", "tls", "timeout"). Both must come from a fixed set: never a
    /// URL or a deployment name.
    pub fn director_request(&self, endpoint: &str, status: &str, elapsed: Duration) {
        self.director_requests
            .with_label_values(&[endpoint, status])
            .inc();
        self.director_request_duration
            .with_label_values(&[endpoint])
            .observe(elapsed.as_secs_f64());
    }

    /// One UAA token fetch; `result` is one of [`Labels::uaa_token_results`].
    pub fn uaa_token_fetch(&self, result: &str) {
        self.uaa_token_fetches.with_label_values(&[result]).inc();
    }

    /// `count` VMs left out of the desired users for the same `reason` (one of
    /// [`Labels::skip_reasons`]).
    pub fn vms_skipped(&self, reason: &str, count: u64) {
        self.skipped_vms.with_label_values(&[reason]).inc_by(count);
    }

    /// A subject file held a subject that was rejected and treated as unknown; `kind` (one of
    /// [`Labels::subject_kinds`]) says whose.
    pub fn subject_rejected(&self, kind: &str) {
        self.subjects_rejected.with_label_values(&[kind]).inc();
    }

    /// The watch is in `state` (§6.6; one of [`Labels::watch_states`]). A change of state
    /// moves the 1 of `bosh_nats_sync_watch_state` and counts one change into `state`;
    /// reporting the current state again changes nothing. Before any report the state is the
    /// first of [`Labels::watch_states`]. [`crate::Health::watch`] calls this, so a caller
    /// reporting to `/status` need not.
    pub fn watch_state(&self, state: &'static str) {
        // Held while both metrics change, so concurrent reports cannot leave two states at 1.
        let mut current = self
            .watch_current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *current == Some(state) {
            return;
        }
        if let Some(before) = *current {
            self.watch_state.with_label_values(&[before]).set(0);
        }
        self.watch_state.with_label_values(&[state]).set(1);
        self.watch_state_changes.with_label_values(&[state]).inc();
        *current = Some(state);
    }

    /// `count` new events were read from the director's event log.
    pub fn events_read(&self, count: u64) {
        self.watch_events_read.inc_by(count);
    }

    /// A pass of `kind` (one of [`Labels::pass_kinds`]) ran with the watch on.
    pub fn pass_kind(&self, kind: &str) {
        self.watch_passes.with_label_values(&[kind]).inc();
    }

    /// A full pass found `deployments` deployments changed that no event had announced.
    pub fn unannounced_changes(&self, deployments: u64) {
        self.watch_unannounced_changes.inc_by(deployments);
    }

    /// A VM's agent was admitted `elapsed` after its event was read: the verified reload
    /// that put it in nats-server's users finished then.
    pub fn admission_latency(&self, elapsed: Duration) {
        self.watch_admission_latency.observe(elapsed.as_secs_f64());
    }

    /// A pass was held back by mass-removal damping (§6.5); reported through
    /// `PassSummary::held` so `/status` shows it too.
    pub(crate) fn pass_held(&self) {
        self.held_passes.inc();
    }

    /// The registry, for a caller that wants to add its own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Encoding into a String fails only for a nameless or empty metric family, which
        // `Registry::gather` never returns; log rather than panic should that ever change.
        if let Err(err) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text) {
            tracing::error!(error = %err, "encoding metrics failed; the scrape is incomplete");
        }
        text
    }

    pub(crate) fn pass_finished(
        &self,
        result: &str,
        error_reason: Option<&str>,
        duration: Option<Duration>,
    ) {
        self.passes.with_label_values(&[result]).inc();
        if let Some(duration) = duration {
            self.pass_duration
                .with_label_values(&[result])
                .observe(duration.as_secs_f64());
        }
        if let Some(reason) = error_reason {
            self.errors.with_label_values(&[reason]).inc();
        }
    }

    pub(crate) fn set_last_success(&self, at: SystemTime) {
        let unix = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_success.set(unix);
    }

    pub(crate) fn set_consecutive_failures(&self, n: u64) {
        self.consecutive_failures.set(saturating_i64(n));
    }

    pub(crate) fn set_desired_users(&self, kind: &str, n: usize) {
        self.desired_users
            .with_label_values(&[kind])
            .set(saturating_i64(n as u64));
    }

    pub(crate) fn set_observed_users(&self, n: usize) {
        self.observed_users.set(saturating_i64(n as u64));
    }

    pub(crate) fn auth_file_written(&self) {
        self.auth_file_writes.inc();
    }

    pub(crate) fn reload(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Label;

    /// A state of a watch, as a program might define one: a [`Label`] enum.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum WatchState {
        Off,
        Unproven,
        Healthy,
        Failing,
        Blind,
    }

    impl Label for WatchState {
        const ALL: &'static [Self] = &[
            Self::Off,
            Self::Unproven,
            Self::Healthy,
            Self::Failing,
            Self::Blind,
        ];

        fn as_str(self) -> &'static str {
            match self {
                Self::Off => "off",
                Self::Unproven => "unproven",
                Self::Healthy => "healthy",
                Self::Failing => "failing",
                Self::Blind => "blind",
            }
        }
    }

    /// The label values these tests hand the registry, in the program's style.
    fn labels(error_reasons: &[&'static str]) -> Labels {
        Labels {
            pass_results: vec!["changed", "unchanged", "error"],
            error_reasons: error_reasons.to_vec(),
            user_kinds: vec!["director", "hm", "agent", "agent_bootstrap"],
            skip_reasons: vec!["no_agent_id", "invalid_agent_id", "duplicate"],
            subject_kinds: vec!["director", "hm"],
            reload_results: vec!["ok", "failed", "unverified"],
            director_endpoints: vec!["info", "deployments", "vms", "events", "uaa_token"],
            director_statuses: vec!["200"],
            uaa_token_results: vec!["ok", "error"],
            watch_states: WatchState::values(),
            pass_kinds: vec!["full", "partial"],
            callout_results: vec!["allowed", "unknown_agent", "error"],
            revocation_results: vec!["kicked", "gone", "error"],
        }
    }

    fn watching() -> Metrics {
        Metrics::with_labels(BuildInfo::UNKNOWN, &labels(&[]))
    }

    /// The sample line for `name_and_labels`, e.g. `x_total{a="b"} 1`, if present.
    fn sample<'a>(text: &'a str, name_and_labels: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
    }

    /// Every series of `labels`, as rendered (`name{label="value"}`), that a fresh registry
    /// must export at 0.
    fn preset_at_zero(labels: &Labels) -> Vec<String> {
        let series = |name: &str, label: &str, values: &[&str]| {
            values
                .iter()
                .map(|v| format!(r#"bosh_nats_sync_{name}{{{label}="{v}"}}"#))
                .collect::<Vec<_>>()
        };
        let mut all = Vec::new();
        all.extend(series("passes_total", "result", &labels.pass_results));
        all.extend(series("errors_total", "reason", &labels.error_reasons));
        all.extend(series("desired_users", "kind", &labels.user_kinds));
        all.extend(series("skipped_vms_total", "reason", &labels.skip_reasons));
        all.extend(series(
            "subjects_rejected_total",
            "kind",
            &labels.subject_kinds,
        ));
        all.extend(series("reloads_total", "result", &labels.reload_results));
        all.extend(series(
            "uaa_token_fetches_total",
            "result",
            &labels.uaa_token_results,
        ));
        all.extend(series(
            "watch_state_changes_total",
            "state",
            &labels.watch_states,
        ));
        all.extend(series("watch_passes_total", "kind", &labels.pass_kinds));
        all.extend(series(
            "callout_requests_total",
            "result",
            &labels.callout_results,
        ));
        all.extend(series(
            "callout_revocations_total",
            "result",
            &labels.revocation_results,
        ));
        for e in &labels.director_endpoints {
            for s in &labels.director_statuses {
                all.push(format!(
                    r#"bosh_nats_sync_director_requests_total{{endpoint="{e}",status="{s}"}}"#
                ));
            }
        }
        all.extend(
            [
                "auth_file_writes_total",
                "held_passes_total",
                "last_success_timestamp_seconds",
                "consecutive_failures",
                "observed_users",
                "watch_events_read_total",
                "watch_unannounced_changes_total",
                "watch_admission_latency_seconds_count",
                "callout_answer_seconds_count",
                "callout_admitted_agents",
                "callout_connected",
                "callout_polls_total",
                "callout_connections_observed",
            ]
            .map(|name| format!("bosh_nats_sync_{name}")),
        );
        all
    }

    /// The labelled series of `text`, but for the build's and the histograms' buckets.
    fn labelled_series(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("bosh_nats_sync_") && l.contains('{'))
            .filter(|l| !l.starts_with("bosh_nats_sync_build_info{") && !l.contains("_bucket{"))
            .collect()
    }

    #[test]
    fn closed_label_sets_start_at_zero() {
        let reasons = ["connection", "reload_rejected", "pass_timeout"];
        let labels = labels(&reasons);
        let text = Metrics::with_labels(BuildInfo::UNKNOWN, &labels).render();
        let expected = preset_at_zero(&labels);
        for series in &expected {
            assert_eq!(sample(&text, series), Some("0"), "{series} in\n{text}");
        }
        // The list above is built from the labels; a few literal names, should they be emptied.
        for series in [
            r#"bosh_nats_sync_passes_total{result="error"}"#,
            r#"bosh_nats_sync_errors_total{reason="pass_timeout"}"#,
            r#"bosh_nats_sync_desired_users{kind="agent_bootstrap"}"#,
            r#"bosh_nats_sync_reloads_total{result="unverified"}"#,
            r#"bosh_nats_sync_skipped_vms_total{reason="duplicate"}"#,
            r#"bosh_nats_sync_subjects_rejected_total{kind="hm"}"#,
            r#"bosh_nats_sync_uaa_token_fetches_total{result="error"}"#,
            r#"bosh_nats_sync_director_requests_total{endpoint="uaa_token",status="200"}"#,
            r#"bosh_nats_sync_director_requests_total{endpoint="events",status="200"}"#,
            r#"bosh_nats_sync_watch_state_changes_total{state="blind"}"#,
            r#"bosh_nats_sync_watch_passes_total{kind="partial"}"#,
            r#"bosh_nats_sync_callout_requests_total{result="unknown_agent"}"#,
            r#"bosh_nats_sync_callout_revocations_total{result="gone"}"#,
        ] {
            assert!(expected.iter().any(|s| s == series), "{series} is preset");
        }
        // Exactly the values given: the registry invents none (the state gauge has one
        // series per state, like the changes counter).
        let labelled = labelled_series(&text);
        let unlabelled = expected.iter().filter(|s| !s.contains('{')).count();
        assert_eq!(
            labelled.len(),
            expected.len() - unlabelled + labels.watch_states.len(),
            "{labelled:#?}"
        );
        // No latency before a request or a pass.
        for histogram in [
            "bosh_nats_sync_pass_duration_seconds_count{",
            "bosh_nats_sync_director_request_duration_seconds_count{",
        ] {
            assert!(!text.contains(histogram), "{histogram} in\n{text}");
        }
    }

    #[test]
    fn without_labels_no_labelled_series_is_made_up() {
        let text = Metrics::new().render();
        let labelled = labelled_series(&text);
        assert!(labelled.is_empty(), "{labelled:?}");
        // The unlabelled metrics are there all the same.
        assert_eq!(sample(&text, "bosh_nats_sync_held_passes_total"), Some("0"));
        // No watch state is known: none is at 1, and the first report is a change.
        let m = Metrics::new();
        m.watch_state("on");
        let text = m.render();
        assert_eq!(
            sample(&text, r#"bosh_nats_sync_watch_state{state="on"}"#),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                r#"bosh_nats_sync_watch_state_changes_total{state="on"}"#
            ),
            Some("1")
        );
    }

    #[test]
    fn build_info_is_one_with_its_labels() {
        let m = Metrics::with_labels(
            BuildInfo {
                version: "1.2.3",
                revision: "abc123",
            },
            &Labels::default(),
        );
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                r#"bosh_nats_sync_build_info{revision="abc123",version="1.2.3"}"#
            ),
            Some("1"),
            "{text}"
        );
    }

    #[test]
    fn direct_recorders_count() {
        let m = watching();
        m.vms_skipped("invalid_agent_id", 2);
        m.vms_skipped("no_agent_id", 1);
        m.vms_skipped("duplicate", 0);
        m.subject_rejected("director");
        m.pass_held();
        m.uaa_token_fetch("ok");
        m.director_request("vms", "404", Duration::from_millis(20));
        m.director_request("vms", "200", Duration::from_millis(3));
        let text = m.render();
        for (series, value) in [
            (
                r#"bosh_nats_sync_skipped_vms_total{reason="invalid_agent_id"}"#,
                "2",
            ),
            (
                r#"bosh_nats_sync_skipped_vms_total{reason="no_agent_id"}"#,
                "1",
            ),
            (
                r#"bosh_nats_sync_skipped_vms_total{reason="duplicate"}"#,
                "0",
            ),
            (
                r#"bosh_nats_sync_subjects_rejected_total{kind="director"}"#,
                "1",
            ),
            ("bosh_nats_sync_held_passes_total", "1"),
            (
                r#"bosh_nats_sync_uaa_token_fetches_total{result="ok"}"#,
                "1",
            ),
            (
                r#"bosh_nats_sync_director_requests_total{endpoint="vms",status="404"}"#,
                "1",
            ),
            (
                r#"bosh_nats_sync_director_request_duration_seconds_count{endpoint="vms"}"#,
                "2",
            ),
            (
                r#"bosh_nats_sync_director_request_duration_seconds_bucket{endpoint="vms",le="0.005"}"#,
                "1",
            ),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
    }

    /// The `bosh_nats_sync_watch_state` series by state, as rendered.
    fn watch_states(m: &Metrics) -> Vec<(&'static str, String)> {
        let text = m.render();
        WatchState::ALL
            .iter()
            .map(|s| {
                let series = format!(r#"bosh_nats_sync_watch_state{{state="{}"}}"#, s.as_str());
                let value = sample(&text, &series)
                    .unwrap_or_else(|| panic!("{series} in\n{text}"))
                    .to_owned();
                (s.as_str(), value)
            })
            .collect()
    }

    fn changes_into(m: &Metrics, state: WatchState) -> String {
        let series = format!(
            r#"bosh_nats_sync_watch_state_changes_total{{state="{}"}}"#,
            state.as_str()
        );
        sample(&m.render(), &series)
            .unwrap_or_else(|| panic!("{series} exported"))
            .to_owned()
    }

    /// Exactly `state` is at 1.
    fn only(state: &str) -> Vec<(&'static str, String)> {
        WatchState::ALL
            .iter()
            .map(|s| {
                let v = if s.as_str() == state { "1" } else { "0" };
                (s.as_str(), v.to_owned())
            })
            .collect()
    }

    #[test]
    fn the_watch_state_is_off_until_reported() {
        let m = watching();
        assert_eq!(watch_states(&m), only("off"));
        for &state in WatchState::ALL {
            assert_eq!(changes_into(&m, state), "0", "{state:?}");
        }
    }

    #[test]
    fn the_watch_state_gauge_moves_and_changes_are_counted_once() {
        let m = watching();
        m.watch_state(WatchState::Unproven.as_str());
        assert_eq!(watch_states(&m), only("unproven"));
        m.watch_state(WatchState::Healthy.as_str());
        // Reporting the same state again is no change.
        m.watch_state(WatchState::Healthy.as_str());
        m.watch_state(WatchState::Healthy.as_str());
        assert_eq!(watch_states(&m), only("healthy"));
        m.watch_state(WatchState::Failing.as_str());
        m.watch_state(WatchState::Healthy.as_str());
        m.watch_state(WatchState::Blind.as_str());
        assert_eq!(watch_states(&m), only("blind"));
        for (state, changes) in [
            (WatchState::Off, "0"),
            (WatchState::Unproven, "1"),
            (WatchState::Healthy, "2"),
            (WatchState::Failing, "1"),
            (WatchState::Blind, "1"),
        ] {
            assert_eq!(changes_into(&m, state), changes, "{state:?}");
        }
        // Back to off (the watch stopped) is a change like any other.
        m.watch_state(WatchState::Off.as_str());
        assert_eq!(watch_states(&m), only("off"));
        assert_eq!(changes_into(&m, WatchState::Off), "1");
    }

    #[test]
    fn watch_recorders_count() {
        let m = Metrics::new();
        m.events_read(3);
        m.events_read(0);
        m.events_read(200);
        m.pass_kind("full");
        m.pass_kind("partial");
        m.pass_kind("partial");
        m.unannounced_changes(2);
        m.admission_latency(Duration::from_millis(40));
        m.admission_latency(Duration::from_millis(1800));
        m.admission_latency(Duration::from_secs(45));
        let text = m.render();
        for (series, value) in [
            ("bosh_nats_sync_watch_events_read_total", "203"),
            (r#"bosh_nats_sync_watch_passes_total{kind="full"}"#, "1"),
            (r#"bosh_nats_sync_watch_passes_total{kind="partial"}"#, "2"),
            ("bosh_nats_sync_watch_unannounced_changes_total", "2"),
            ("bosh_nats_sync_watch_admission_latency_seconds_count", "3"),
            (
                r#"bosh_nats_sync_watch_admission_latency_seconds_bucket{le="0.05"}"#,
                "1",
            ),
            (
                r#"bosh_nats_sync_watch_admission_latency_seconds_bucket{le="1.5"}"#,
                "1",
            ),
            (
                r#"bosh_nats_sync_watch_admission_latency_seconds_bucket{le="2"}"#,
                "2",
            ),
            (
                r#"bosh_nats_sync_watch_admission_latency_seconds_bucket{le="30"}"#,
                "2",
            ),
            (
                r#"bosh_nats_sync_watch_admission_latency_seconds_bucket{le="+Inf"}"#,
                "3",
            ),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        let sum: f64 = sample(&text, "bosh_nats_sync_watch_admission_latency_seconds_sum")
            .expect("sum exported")
            .parse()
            .expect("a number");
        assert!((sum - 46.84).abs() < 1e-9, "sum in seconds, got {sum}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_exported() {
        let text = Metrics::new().render();
        assert!(
            text.lines()
                .any(|l| l.starts_with("process_resident_memory_bytes ")),
            "{text}"
        );
    }
}
