//! How a pass is reported — in one place: its span (with the outcome recorded on it), its
//! one log line, and what its facts tell `/status`, `/healthz`, `/readyz` and the metrics.
//! The steps of a pass return what they found and did; [`Reporter`] turns those facts into
//! numbers and states as they happen, and [`finished`] ends a pass (the control loop's
//! observer and `once` both call it).

use std::sync::Arc;
use std::time::Duration;

use metrics::{ErrorInfo, Health, Label, Labels, Metrics, PassSummary, ReloadSummary};
use reconcile::{Failure, PassContext};
use tokio::time::Instant;
use tracing::Span;

use crate::director;
use crate::pass::PassError;
use crate::pass::apply::Loaded;
use crate::pass::damping::Held;
use crate::pass::desired::{Counts, SkipReason, Skipped, UserKind};
use crate::pass::observe::{Scope, SubjectKind};
use crate::pass::watch::{Absorbed, Watch, WatchState};
use crate::reload::{ReloadError, ReloadResult, Reloaded};
use crate::users::Changes;

/// What a successful pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether the auth file was rewritten.
    pub written: bool,
    /// The reload performed in this pass, if any.
    pub reloaded: Option<Reloaded>,
    /// The users the file holds now, by kind (held agents included).
    pub counts: Counts,
    pub skipped: Skipped,
    /// Users the file held before the pass.
    pub observed_users: usize,
    /// What this pass's write changed, subject by subject.
    pub changes: Changes,
    /// Mass-removal damping held back this many agent removals (§6.5).
    pub held: Option<usize>,
    /// A partial pass (§6.6): how many deployments it refetched; `None` for a full pass.
    pub refetched: Option<usize>,
}

impl Report {
    pub fn users_total(&self) -> usize {
        self.counts.total()
    }

    fn skipped_vms(&self) -> usize {
        self.skipped.total()
    }
}

/// How a pass ended: the `result` label of `bosh_nats_sync_passes_total`, of
/// `/status`'s `last_pass` and of the pass's span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PassResult {
    /// The auth file differed from the desired users and was rewritten.
    Changed,
    /// Nothing differed; nothing was written.
    Unchanged,
    /// The pass failed (its reason is counted in `bosh_nats_sync_errors_total`).
    Error,
}

impl PassResult {
    /// How a pass that returned `result` ended.
    pub fn of<E>(result: Result<&Report, E>) -> Self {
        match result {
            Ok(r) if r.written => Self::Changed,
            Ok(_) => Self::Unchanged,
            Err(_) => Self::Error,
        }
    }
}

impl Label for PassResult {
    const ALL: &'static [Self] = &[Self::Changed, Self::Unchanged, Self::Error];

    fn as_str(self) -> &'static str {
        match self {
            Self::Changed => "changed",
            Self::Unchanged => "unchanged",
            Self::Error => "error",
        }
    }
}

/// Every label value the program's metrics know in advance, each exported at 0 from
/// start-up (§8): the metrics crate has none of its own.
pub fn labels() -> Labels {
    Labels {
        pass_results: PassResult::values(),
        error_reasons: ERROR_REASONS.to_vec(),
        user_kinds: UserKind::values(),
        skip_reasons: SkipReason::values(),
        subject_kinds: SubjectKind::values(),
        reload_results: ReloadResult::values(),
        director_endpoints: director::ENDPOINTS.to_vec(),
        director_statuses: vec![director::SUCCESS_STATUS],
        uaa_token_results: director::UAA_TOKEN_RESULTS.to_vec(),
        // `Off` first: the state the gauge starts in, which `Watch::unreported` shows.
        watch_states: WatchState::values(),
        pass_kinds: Scope::values(),
        // The callout responder's and revoker's are not the passes': `modes::labels` adds
        // them.
        callout_results: Vec::new(),
        revocation_results: Vec::new(),
    }
}

/// What the steps of one pass found and did, handed to the [`Reporter`] when the pass ends —
/// whichever way: with its report, with an error half-way, or dropped (cut short by the pass
/// timeout or a signal), so a write and a failed reload are reported all the same.
pub struct Facts<'a> {
    reporter: &'a Reporter,
    /// Subject files whose content was refused (§3.2).
    pub refused: Vec<SubjectKind>,
    /// VMs left out of the desired users, by reason.
    pub skipped: Option<Skipped>,
    /// The removals damping held back (§6.5).
    pub held: Option<Held>,
    /// The admitted users were stored.
    pub stored: bool,
    /// What loading them did: how, or why it failed; `usable` when they let the director in.
    pub loaded: Option<(Result<Loaded, ErrorInfo>, bool)>,
    /// No load was due, and what nats-server holds is usable.
    pub converged: bool,
    /// These are the bootstrap rule's facts (§6.2): its users came from no pass that read
    /// the director.
    pub bootstrap: bool,
    /// When the events that announced the agents this pass admitted were read.
    pub admitted: Vec<Instant>,
}

impl<'a> Facts<'a> {
    pub fn new(reporter: &'a Reporter) -> Self {
        Self {
            reporter,
            refused: Vec::new(),
            skipped: None,
            held: None,
            stored: false,
            loaded: None,
            converged: false,
            bootstrap: false,
            admitted: Vec::new(),
        }
    }

    /// A load's outcome, as the facts keep it.
    pub fn load(&mut self, result: &Result<Loaded, ReloadError>, usable: bool) {
        let kept = match result {
            Ok(how) => Ok(*how),
            Err(e) => Err(ErrorInfo {
                reason: e.reason(),
                message: e.to_string(),
            }),
        };
        self.loaded = Some((kept, usable));
    }
}

impl Drop for Facts<'_> {
    fn drop(&mut self) {
        self.reporter.facts(self);
    }
}

/// Tells the metrics, `/status` and readiness what the steps of a pass found and did.
pub struct Reporter {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Reporter {
    pub fn new(metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Self { metrics, health }
    }

    /// Everything a pass's steps found and did, in the order they happened.
    fn facts(&self, facts: &Facts<'_>) {
        for kind in &facts.refused {
            self.metrics.subject_rejected(kind.as_str());
        }
        if let Some(skipped) = &facts.skipped {
            self.skipped(skipped);
        }
        if let Some(held) = &facts.held {
            tracing::warn!(
                removing = held.removing,
                agents_in_file = held.agents_in_file,
                seen = held.seen,
                needed = held.needed,
                "holding a mass removal of agents: it applies once the director reports the same state on {} consecutive passes",
                held.needed
            );
        }
        if facts.stored {
            self.health.auth_file_written();
        }
        if let Some((loaded, usable)) = &facts.loaded {
            self.loaded(loaded, *usable, facts.bootstrap);
        }
        if facts.converged {
            self.ready(true, facts.bootstrap);
        }
        if !facts.admitted.is_empty() {
            self.admitted(&facts.admitted);
        }
    }

    /// A pass began (`/healthz` sees progress, `/status` a running pass).
    pub fn started(&self) {
        self.health.pass_started();
    }

    /// A pass of `kind` ran with the watch on, whatever its result.
    pub fn kind(&self, kind: Scope) {
        self.metrics.pass_kind(kind.as_str());
    }

    /// VMs left out of the desired users (§3.3).
    fn skipped(&self, skipped: &Skipped) {
        for (reason, n) in skipped.by_reason() {
            if n > 0 {
                self.metrics.vms_skipped(reason.as_str(), n as u64);
            }
        }
    }

    /// nats-server was asked to take the stored users; `usable` when they let the director
    /// in (§7: readiness comes with the first verified load of such a file; of the bootstrap
    /// users, unless readiness waits for a pass that read the director). Only a reload counts
    /// as one: callout mode's loads are swaps in memory.
    fn loaded(&self, result: &Result<Loaded, ErrorInfo>, usable: bool, bootstrap: bool) {
        let result = match result {
            Ok(Loaded::InMemory { agents }) => {
                self.health.callout_admitted(*agents);
                return self.ready(usable, bootstrap);
            }
            Ok(Loaded::Reloaded(how)) => Ok(*how),
            Err(e) => Err(e),
        };
        self.health.reload_finished(ReloadSummary {
            result: match result {
                Ok(how) => ReloadResult::from(how).as_str(),
                Err(_) => ReloadResult::Failed.as_str(),
            },
            verified: matches!(result, Ok(Reloaded::Verified)),
            error: result.err().cloned(),
        });
        if result.is_ok() {
            self.ready(usable, bootstrap);
        }
    }

    fn ready(&self, usable: bool, bootstrap: bool) {
        match (usable, bootstrap) {
            (false, _) => {}
            (true, true) => self.health.bootstrap_loaded(),
            (true, false) => self.health.mark_ready(),
        }
    }

    /// Agents the event log announced were admitted by a verified reload; `since` is when
    /// each announcing event was read (§8).
    fn admitted(&self, since: &[Instant]) {
        let now = Instant::now();
        for at in since {
            self.metrics
                .admission_latency(now.saturating_duration_since(*at));
        }
    }

    /// A read of the event log: what it found, and that the loop is alive.
    pub fn events(&self, absorbed: &Absorbed) {
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
        if let Some((id, deployment)) = &absorbed.proof {
            tracing::info!(
                event = id,
                deployment = %deployment,
                "the blind watch read a new event naming a deployment: the next full pass decides whether the event log can be trusted again"
            );
        }
        self.health.progress();
    }

    /// Where the watch is, for `/status` and the metrics; a change of state is logged once.
    pub fn watch(&self, watch: &mut Watch) {
        if let Some((state, reason)) = watch.state_change() {
            tracing::info!(state = state.as_str(), reason, "watch state changed");
        }
        self.health.watch(watch.status());
    }
}

/// Every reason [`reason`] returns: a pass error's, or the loop's timeout (a `Failed`
/// failure is always counted under its inner error's reason). The program's metrics export
/// `bosh_nats_sync_errors_total` with each of them at 0 from start-up (§8).
pub const ERROR_REASONS: [&str; 20] = concat(&[
    &PassError::ALL_REASONS,
    &[Failure::<PassError>::TIMEOUT_REASON],
]);

/// `parts` one after another in one array. `N` must be their total length: a const that
/// gets it wrong does not compile.
pub(crate) const fn concat<const N: usize>(parts: &[&[&'static str]]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut filled = 0;
    let mut part = 0;
    while part < parts.len() {
        let mut i = 0;
        while i < parts[part].len() {
            assert!(filled < N, "more labels than the array holds");
            out[filled] = parts[part][i];
            filled += 1;
            i += 1;
        }
        part += 1;
    }
    assert!(filled == N, "fewer labels than the array holds");
    out
}

/// A pass's metric label for its failure: the reconciler's own reason, or the loop's.
pub fn reason(failure: &Failure<PassError>) -> &'static str {
    match failure {
        Failure::Failed(inner) => inner.reason(),
        other => other.reason(),
    }
}

/// Ends a pass: its log line, then `/status`, `/healthz` and the pass metrics. `pass` names
/// the pass of the loop and why it ran (`pass 3 (interval)`; `None` for `once`).
pub fn finished(
    health: &Health,
    pass: Option<String>,
    result: Result<&Report, &Failure<PassError>>,
    duration: Duration,
) {
    let duration_ms = duration.as_millis() as u64;
    let ended = PassResult::of(result).as_str();
    match result {
        Ok(r) => {
            tracing::info!(
                pass,
                kind = if r.refetched.is_some() {
                    "partial"
                } else {
                    "full"
                },
                refetched = r.refetched,
                desired = r.users_total(),
                agents = r.counts.agent,
                added = r.changes.added.len(),
                removed = r.changes.removed.len(),
                changed = r.changes.changed.len(),
                written = r.written,
                held_removals = r.held,
                reloaded = r.reloaded.map(|r| r.label()),
                skipped_vms = r.skipped_vms(),
                duration_ms,
                "pass {}",
                if r.written {
                    "changed the auth file"
                } else {
                    "found nothing to change"
                }
            );
            health.pass_finished(PassSummary {
                result: ended,
                error: None,
                desired: Some(
                    r.counts
                        .by_kind()
                        .map(|(kind, n)| (kind.as_str(), n))
                        .to_vec(),
                ),
                observed_users: Some(if r.written {
                    r.users_total()
                } else {
                    r.observed_users
                }),
                held: r.held.is_some(),
            });
        }
        Err(e) => {
            let reason = reason(e);
            tracing::error!(pass, reason, error = %e, duration_ms, "pass failed");
            health.pass_finished(PassSummary {
                result: ended,
                error: Some(ErrorInfo {
                    reason,
                    message: e.to_string(),
                }),
                desired: None,
                observed_users: None,
                held: false,
            });
        }
    }
}

/// The declared fields of a `pass` span, filled in by [`record`] when it ends, so that
/// a trace backend can filter passes by outcome and size.
pub fn span(pass: u64, triggers: &str) -> Span {
    tracing::info_span!(
        "pass",
        pass = i64::try_from(pass).unwrap_or(i64::MAX),
        triggers,
        kind = tracing::field::Empty,
        consecutive_failures = tracing::field::Empty,
        result = tracing::field::Empty,
        reason = tracing::field::Empty,
        desired = tracing::field::Empty,
        agents = tracing::field::Empty,
        added = tracing::field::Empty,
        removed = tracing::field::Empty,
        changed = tracing::field::Empty,
        written = tracing::field::Empty,
        reloaded = tracing::field::Empty,
        skipped_vms = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    )
}

/// [`span`] for a pass of the control loop: `triggers` lists why it runs (`interval`,
/// `file:/var/vcap/data/nats/auth.json`, `retry`, …), and the failures before it are kept.
pub fn span_for(ctx: &PassContext) -> Span {
    let triggers: Vec<String> = ctx.triggers.iter().map(ToString::to_string).collect();
    span_because(ctx, &triggers.join(", "))
}

/// [`span_for`] with `triggers` given: why a tick of the watch ran the pass.
pub fn span_because(ctx: &PassContext, triggers: &str) -> Span {
    let span = span(ctx.pass, triggers);
    span.record("consecutive_failures", i64::from(ctx.consecutive_failures));
    span
}

/// Records a pass's outcome on its span (one made by [`span`]; fields a span does not
/// declare are ignored). Call it before the span's last handle is dropped.
pub fn record(span: &Span, result: Result<&Report, &PassError>) {
    match result {
        Ok(r) => {
            span.record("result", PassResult::of(result).as_str());
            span.record("desired", count(r.users_total()));
            span.record("agents", count(r.counts.agent));
            span.record("added", count(r.changes.added.len()));
            span.record("removed", count(r.changes.removed.len()));
            span.record("changed", count(r.changes.changed.len()));
            span.record("written", r.written);
            span.record("reloaded", r.reloaded.map_or("no", |how| how.label()));
            span.record("skipped_vms", count(r.skipped_vms()));
            span.record("otel.status_code", "OK");
        }
        Err(e) => {
            span.record("result", PassResult::of(result).as_str());
            span.record("reason", e.reason());
            span.record("otel.status_code", "ERROR");
            // The reason, not the message: messages carry URLs and server output, and a
            // fixed label is what a trace backend groups by.
            span.record("otel.status_description", e.reason());
        }
    }
}

/// A count as a span field. `i64`, because tracing-opentelemetry exports `u64` fields as
/// strings, and a trace backend can only compare numbers (`added > 0`).
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use opentelemetry::Value;
    use opentelemetry::trace::{Status, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{Layer, Registry};

    use super::*;
    use crate::telemetry::exported_targets;

    /// Runs `f` under a subscriber that exports to memory, and returns the finished spans.
    fn export(f: impl FnOnce()) -> Vec<SpanData> {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = Registry::default().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(exported_targets()),
        );
        tracing::subscriber::with_default(subscriber, f);
        provider
            .force_flush()
            .expect("the in-memory exporter flushes");
        exporter.get_finished_spans().expect("finished spans")
    }

    fn attribute(span: &SpanData, key: &str) -> Option<Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    }

    #[test]
    fn a_successful_pass_carries_its_summary() {
        let report = Report {
            written: true,
            reloaded: Some(Reloaded::Verified),
            counts: Counts {
                director: 1,
                hm: 1,
                agent: 3,
                agent_bootstrap: 2,
            },
            skipped: Skipped {
                no_agent_id: 1,
                invalid_agent_id: 1,
                duplicate: 0,
            },
            observed_users: 4,
            changes: Changes {
                added: ["a", "b", "c"]
                    .map(|id| crate::users::Dn::Agent(id.into(), false))
                    .into(),
                removed: Vec::new(),
                changed: vec![crate::users::Dn::Other("CN=d".into())],
            },
            held: None,
            refetched: None,
        };
        let spans = export(|| {
            let span = span(7, "interval");
            record(&span, Ok(&report));
        });
        let [span] = spans.as_slice() else {
            panic!("one span expected: {spans:?}")
        };
        assert_eq!(span.name, "pass");
        assert_eq!(span.status, Status::Ok);
        for (key, value) in [
            ("pass", Value::I64(7)),
            ("triggers", Value::from("interval")),
            ("result", Value::from("changed")),
            ("desired", Value::I64(7)),
            ("agents", Value::I64(3)),
            ("added", Value::I64(3)),
            ("removed", Value::I64(0)),
            ("changed", Value::I64(1)),
            ("written", Value::Bool(true)),
            ("reloaded", Value::from("ok")),
            ("skipped_vms", Value::I64(2)),
        ] {
            assert_eq!(attribute(span, key), Some(value), "{key}");
        }
        assert_eq!(attribute(span, "reason"), None);
    }

    #[test]
    fn a_loop_pass_span_lists_its_triggers() {
        let ctx = PassContext {
            pass: 4,
            triggers: vec![
                reconcile::Trigger::Interval,
                reconcile::Trigger::FileChanged(PathBuf::from("/var/vcap/data/nats/auth.json")),
            ],
            consecutive_failures: 2,
        };
        let spans = export(|| drop(span_for(&ctx)));
        let [span] = spans.as_slice() else {
            panic!("one span expected: {spans:?}")
        };
        assert_eq!(attribute(span, "pass"), Some(Value::I64(4)));
        assert_eq!(
            attribute(span, "triggers"),
            Some(Value::from("interval, file:/var/vcap/data/nats/auth.json"))
        );
        assert_eq!(attribute(span, "consecutive_failures"), Some(Value::I64(2)));
    }

    #[test]
    fn a_failed_pass_is_an_error_span_with_its_reason() {
        let error = PassError::Reload(crate::reload::ReloadError::BadPid {
            path: PathBuf::from("/var/vcap/sys/run/bpm/nats/nats.pid"),
            content: "garbage".into(),
        });
        let spans = export(|| {
            let span = span(2, "requeue");
            record(&span, Err(&error));
        });
        let [span] = spans.as_slice() else {
            panic!("one span expected: {spans:?}")
        };
        assert_eq!(attribute(span, "result"), Some(Value::from("error")));
        assert_eq!(attribute(span, "reason"), Some(Value::from(error.reason())));
        assert_eq!(span.status, Status::error(error.reason()));
        assert_eq!(attribute(span, "written"), None);
    }
    /// The index of `e`'s variant. Exhaustive on purpose: a new variant does not compile
    /// until it has an arm here (the next index, with `VARIANTS` raised) and a sample below.
    fn variant(e: &PassError) -> usize {
        match e {
            PassError::Director(_) => 0,
            PassError::AuthFile(_) => 1,
            PassError::Reload(_) => 2,
        }
    }
    const VARIANTS: usize = 3;

    #[test]
    fn error_reasons_are_every_reason_a_failed_pass_is_counted_under() {
        use std::collections::BTreeSet;
        let samples = [
            PassError::Director(crate::director::Error::Auth {
                detail: "UAA answered 401".into(),
            }),
            PassError::AuthFile(crate::authfile::AuthFileError::Read {
                path: PathBuf::from("/var/vcap/data/nats/auth.json"),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            }),
            PassError::Reload(crate::reload::ReloadError::NotPermitted {
                pid: 7,
                path: PathBuf::from("/var/vcap/sys/run/bpm/nats/nats.pid"),
            }),
        ];
        let variants: BTreeSet<usize> = samples.iter().map(variant).collect();
        assert_eq!(
            variants,
            (0..VARIANTS).collect(),
            "a sample of every variant"
        );
        // A pass error's reason is its wrapped error's, whose own test covers its variants:
        // the list holds every wrapped list, in full.
        for e in &samples {
            assert!(
                PassError::ALL_REASONS.contains(&e.reason()),
                "{}",
                e.reason()
            );
        }
        for inner in [
            &crate::director::Error::ALL_REASONS[..],
            &crate::authfile::AuthFileError::ALL_REASONS,
            &crate::reload::ReloadError::ALL_REASONS,
        ] {
            for r in inner {
                assert!(PassError::ALL_REASONS.contains(r), "{r}");
            }
        }
        // What `reason` returns for every failure of the loop is listed.
        let [director, ..] = samples;
        for failure in [
            Failure::Failed(director),
            Failure::Timeout(Duration::from_secs(300)),
        ] {
            assert!(ERROR_REASONS.contains(&reason(&failure)), "{failure}");
        }
        // `reconcile_failed` never is: a Failed failure is counted under its inner reason.
        assert!(!ERROR_REASONS.contains(&Failure::<PassError>::FAILED_REASON));
        let unique: BTreeSet<&str> = ERROR_REASONS.into_iter().collect();
        assert_eq!(unique.len(), ERROR_REASONS.len(), "no reason twice");
        // Literal names, should the lists be emptied.
        for r in [
            "connection",
            "unauthorized",
            "config",
            "disk_full",
            "reload_rejected",
            "pass_timeout",
        ] {
            assert!(ERROR_REASONS.contains(&r), "{r}");
        }
    }

    #[test]
    fn the_metrics_start_in_the_state_an_unreported_watch_shows() {
        let labels = labels();
        assert_eq!(
            labels.watch_states.first(),
            Some(&Watch::unreported().state)
        );
        assert_eq!(Watch::unreported().state, "off");
    }

    #[test]
    fn the_pass_result_is_what_the_pass_did() {
        let mut report = Report {
            written: true,
            reloaded: None,
            counts: Counts::default(),
            skipped: Skipped::default(),
            observed_users: 0,
            changes: Changes::default(),
            held: None,
            refetched: None,
        };
        assert_eq!(PassResult::of::<()>(Ok(&report)).as_str(), "changed");
        report.written = false;
        assert_eq!(PassResult::of::<()>(Ok(&report)).as_str(), "unchanged");
        assert_eq!(PassResult::of(Err(())).as_str(), "error");
    }

    #[test]
    fn concat_joins_in_order() {
        const JOINED: [&str; 3] = concat(&[&["a"], &[], &["b", "c"]]);
        assert_eq!(JOINED, ["a", "b", "c"]);
    }
}
