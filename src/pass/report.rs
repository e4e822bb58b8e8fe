//! How a pass is reported — in one place: its span (with the outcome recorded on it), its
//! one log line, and what it tells `/status`, `/healthz` and the pass metrics. The control
//! loop's observer and `once` both end a pass with [`finished`].

use std::time::Duration;

use monitoring::{DesiredCounts, Health, PassOutcome, PassSummary};
use reconcile::{Failure, PassContext};
use tracing::Span;

use crate::pass::PassError;
use crate::pass::desired::{Counts, Skipped};
use crate::reload::Reloaded;

/// What a successful pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether the auth file was rewritten.
    pub written: bool,
    /// The reload performed in this pass, if any.
    pub reloaded: Option<Reloaded>,
    /// The users the file holds now, by kind (held agents included).
    pub desired: Counts,
    pub skipped: Skipped,
    /// Users the file held before the pass.
    pub observed_users: usize,
    /// Subjects added and removed by this pass's write.
    pub added: usize,
    pub removed: usize,
    /// Mass-removal damping held back this many agent removals (§6.5).
    pub held: Option<usize>,
    /// A partial pass (§6.6): how many deployments it refetched; `None` for a full pass.
    pub refetched: Option<usize>,
}

impl Report {
    pub fn desired_total(&self) -> usize {
        self.desired.director + self.desired.hm + self.desired.agent + self.desired.agent_bootstrap
    }

    fn skipped_vms(&self) -> usize {
        self.skipped.no_agent_id + self.skipped.invalid_agent_id + self.skipped.duplicate
    }
}

/// A pass waits for the loop's next trigger: the interval, a file change, or a retry.
impl reconcile::Outcome for Report {
    fn action(&self) -> reconcile::Action {
        reconcile::Action::AwaitTrigger
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
                desired = r.desired_total(),
                agents = r.desired.agent,
                added = r.added,
                removed = r.removed,
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
                outcome: if r.written {
                    PassOutcome::Changed
                } else {
                    PassOutcome::Unchanged
                },
                desired: Some(DesiredCounts {
                    director: r.desired.director,
                    hm: r.desired.hm,
                    agent: r.desired.agent,
                    agent_bootstrap: r.desired.agent_bootstrap,
                }),
                observed_users: Some(if r.written {
                    r.desired_total()
                } else {
                    r.observed_users
                }),
                held: r.held.is_some(),
            });
        }
        Err(e) => {
            let reason = reason(e);
            tracing::error!(pass, reason, error = %e, duration_ms, "pass failed");
            health.pass_finished(PassSummary::failed(reason, e.to_string()));
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
            span.record("result", if r.written { "changed" } else { "unchanged" });
            span.record("desired", count(r.desired_total()));
            span.record("agents", count(r.desired.agent));
            span.record("added", count(r.added));
            span.record("removed", count(r.removed));
            span.record("written", r.written);
            span.record("reloaded", r.reloaded.map_or("no", |how| how.label()));
            span.record("skipped_vms", count(r.skipped_vms()));
            span.record("otel.status_code", "OK");
        }
        Err(e) => {
            span.record("result", "error");
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
            desired: Counts {
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
            added: 3,
            removed: 0,
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
    fn concat_joins_in_order() {
        const JOINED: [&str; 3] = concat(&[&["a"], &[], &["b", "c"]]);
        assert_eq!(JOINED, ["a", "b", "c"]);
    }
}
