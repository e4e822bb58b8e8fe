//! Logging and tracing setup (SPEC §9): `tracing` to stdout or an append-mode log file, text
//! or JSON, plus OTLP/HTTP span export when the standard `OTEL_EXPORTER_OTLP_*` variables ask
//! for it.
//!
//! Without an OTLP endpoint in the environment no OpenTelemetry layer, exporter or thread
//! exists: the subscriber is the log formatter alone, so tracing costs what it did before.
//! With one, spans (`pass`, `director.fetch_vms`, `director.request`, `write_auth_file`,
//! `reload`) go through a batch processor on its own thread to the collector; [`shutdown`]
//! flushes them before the process exits.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::LogFormat;
use crate::controller::{PassError, PassReport};
use reconcile::PassContext;

/// The OpenTelemetry `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`
/// names another.
pub const SERVICE_NAME: &str = "bosh-nats-sync";

/// The signal-specific and the generic endpoint variable, in the order the exporter reads them.
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long [`shutdown`] waits for the last spans to reach the collector. SIGTERM must end
/// the process within 2 s (SPEC §6.4); an unreachable collector must not hold it longer.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Crates whose own spans and events are not exported: the exporter's HTTP stack would
/// otherwise trace its own exports, and the SDK's internal diagnostics belong in the log.
const NOT_EXPORTED: [&str; 6] = ["opentelemetry", "reqwest", "hyper", "h2", "rustls", "tower"];

/// The tracer provider, present only when OTLP export is on. Set once by [`init`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Why logging or tracing could not start. Both are problems of the environment the
/// operator controls, reported before the controller starts.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot open the log file {}: {source}", path.display())]
    LogFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up OTLP span export ({var} is set): {detail}")]
    Otlp { var: &'static str, detail: String },
}

impl InitError {
    /// A short, fixed label for metrics and messages.
    pub fn reason(&self) -> &'static str {
        match self {
            InitError::LogFile { .. } => "log_file",
            InitError::Otlp { .. } => "otlp_exporter",
        }
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`. The log file is
/// opened in append mode, so logrotate's copytruncate keeps working: every write goes to
/// the current end of the file, wherever that is after a truncation. When
/// [`otlp_requested`] finds an endpoint, spans are also exported over OTLP/HTTP.
///
/// A second call (tests, the demo) keeps the first subscriber and exports nothing more.
pub fn init(format: LogFormat, level: &str, logfile: Option<&Path>) -> Result<(), InitError> {
    let fmt = fmt_layer(format, level, logfile)?;
    let exporting = otlp_requested(|k| std::env::var(k).ok());
    let result = match exporting {
        None => Registry::default().with(fmt).try_init(),
        Some(var) => {
            if PROVIDER.get().is_some() {
                return Ok(());
            }
            let provider = provider().map_err(|detail| InitError::Otlp { var, detail })?;
            let tracer = provider.tracer(SERVICE_NAME);
            let otel = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(exported_targets());
            let result = Registry::default().with(fmt).with(otel).try_init();
            if result.is_ok() {
                // Only the first initialisation gets here: `try_init` fails otherwise.
                let _ = PROVIDER.set(provider);
            } else if let Err(e) = provider.shutdown() {
                tracing::debug!(error = %e, "discarding the unused OTLP exporter");
            }
            result
        }
    };
    match result {
        Ok(()) => {
            if let Some(var) = exporting {
                tracing::info!(
                    variable = var,
                    "exporting spans over OTLP/HTTP (see the OTEL_* environment variables)"
                );
            }
        }
        // A second initialisation (tests, the demo) keeps the first subscriber.
        Err(e) => drop(e),
    }
    Ok(())
}

/// Flushes and stops OTLP export, waiting at most about a second for the collector; a no-op
/// when nothing is exported. Call it once, as the process exits, outside any async runtime
/// (the batch processor's thread does the sending).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
    {
        tracing::warn!(error = %e, "not all spans reached the OTLP collector before exit");
    }
}

/// Which variable, if any, asks for OTLP span export: a non-blank
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`, unless the standard
/// switches `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off.
pub fn otlp_requested(env: impl Fn(&str) -> Option<String>) -> Option<&'static str> {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    if set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none")) {
        return None;
    }
    ENDPOINT_VARS.into_iter().find(|k| set(k).is_some())
}

/// The declared fields of a `pass` span, filled in by [`record_pass`] when it ends, so that
/// a trace backend can filter passes by outcome and size.
pub fn pass_span(pass: u64, triggers: &str) -> Span {
    tracing::info_span!(
        "pass",
        pass = i64::try_from(pass).unwrap_or(i64::MAX),
        triggers,
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

/// [`pass_span`] for a pass of the control loop: `triggers` lists why it runs (`interval`,
/// `file:/var/vcap/data/nats/auth.json`, `retry`, …), and the failures before it are kept.
pub fn pass_span_for(ctx: &PassContext) -> Span {
    let triggers: Vec<String> = ctx.triggers.iter().map(ToString::to_string).collect();
    let span = pass_span(ctx.pass, &triggers.join(", "));
    span.record("consecutive_failures", i64::from(ctx.consecutive_failures));
    span
}

/// Records a pass's outcome on its span (one made by [`pass_span`]; fields a span does not
/// declare are ignored). Call it before the span's last handle is dropped.
pub fn record_pass(span: &Span, result: Result<&PassReport, &PassError>) {
    match result {
        Ok(r) => {
            span.record("result", if r.written { "changed" } else { "unchanged" });
            span.record("desired", count(r.desired_total()));
            span.record("agents", count(r.desired.agent));
            span.record("added", count(r.added));
            span.record("removed", count(r.removed));
            span.record("written", r.written);
            span.record("reloaded", r.reloaded.map_or("no", |how| how.label()));
            span.record(
                "skipped_vms",
                count(r.skipped.no_agent_id + r.skipped.invalid_agent_id + r.skipped.duplicate),
            );
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

/// The log formatter with its own level filter, so the exported spans do not depend on
/// how verbose the log is.
fn fmt_layer(
    format: LogFormat,
    level: &str,
    logfile: Option<&Path>,
) -> Result<Box<dyn Layer<Registry> + Send + Sync>, InitError> {
    let filter = log_filter(level, std::env::var("RUST_LOG").ok().as_deref());
    let (writer, ansi) = match logfile {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| InitError::LogFile {
                    path: path.to_owned(),
                    source,
                })?;
            (BoxMakeWriter::new(std::sync::Arc::new(file)), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        ),
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    Ok(match format {
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => layer.with_ansi(ansi).with_filter(filter).boxed(),
    })
}

/// `RUST_LOG` when set, else the configured level — with the OpenTelemetry SDK's own
/// diagnostics held at `warn` unless the level names them: at `debug` they would log every
/// batch, while a failed export is a warning an operator needs to see.
///
/// A `Targets` filter (`level` or `target=level,…`), not an `EnvFilter`: span and field
/// filters are not needed here, and `EnvFilter` links a regex engine — code the daemon
/// keeps resident (dropping it took the idle resident set from 8.0 to 6.9 MiB).
fn log_filter(level: &str, rust_log: Option<&str>) -> Targets {
    if let Some(filter) = rust_log.and_then(|v| v.parse::<Targets>().ok()) {
        return filter;
    }
    let filter = level
        .parse::<Targets>()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    if level.contains("opentelemetry") {
        return filter;
    }
    filter.with_target("opentelemetry", LevelFilter::WARN)
}

/// Spans and span events worth exporting: `info` and above from everything but the
/// exporter's own stack.
fn exported_targets() -> Targets {
    NOT_EXPORTED
        .into_iter()
        .fold(Targets::new().with_default(LevelFilter::INFO), |t, name| {
            t.with_target(name, LevelFilter::OFF)
        })
}

/// OTLP/HTTP with protobuf bodies through a batch processor on its own thread. Endpoint,
/// headers, timeout and compression come from the standard `OTEL_EXPORTER_OTLP_*`
/// variables, batching from `OTEL_BSP_*`, which the SDK reads itself.
fn provider() -> Result<SdkTracerProvider, String> {
    // The exporter's reqwest client uses rustls without a built-in provider.
    crate::tls::install_crypto_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build())
}

/// `service.name` = [`SERVICE_NAME`] unless the environment names the service, plus the
/// version; `OTEL_RESOURCE_ATTRIBUTES` adds the rest.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let versioned = detected
        .get(&Key::from_static_str("service.version"))
        .is_some();
    let mut builder = Resource::builder();
    if !named {
        builder = builder.with_service_name(SERVICE_NAME);
    }
    if !versioned {
        builder =
            builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::Value;
    use opentelemetry::trace::Status;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};

    use super::*;

    #[test]
    fn log_filter_takes_rust_log_then_the_level_and_quiets_the_exporter() {
        use tracing::Level;
        let f = log_filter("info", None);
        assert!(f.would_enable("bosh_nats_sync::controller", &Level::INFO));
        assert!(!f.would_enable("bosh_nats_sync::controller", &Level::DEBUG));
        assert!(!f.would_enable("opentelemetry_sdk", &Level::INFO));
        assert!(f.would_enable("opentelemetry_sdk", &Level::WARN));

        let f = log_filter("info,bosh_nats_sync::director=debug", None);
        assert!(f.would_enable("bosh_nats_sync::director::http", &Level::DEBUG));
        assert!(!f.would_enable("bosh_nats_sync::controller", &Level::DEBUG));

        let f = log_filter("info,opentelemetry=debug", None);
        assert!(f.would_enable("opentelemetry_sdk", &Level::DEBUG));

        // RUST_LOG wins when it parses; a broken one falls back to the configured level.
        let f = log_filter("info", Some("warn,reqwest=trace"));
        assert!(!f.would_enable("bosh_nats_sync::controller", &Level::INFO));
        assert!(f.would_enable("reqwest::connect", &Level::TRACE));
        let f = log_filter("debug", Some("x=loud"));
        assert!(f.would_enable("bosh_nats_sync::controller", &Level::DEBUG));
    }
    use crate::desired::{Counts, Skipped};
    use crate::nats::Reloaded;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn export_only_when_an_endpoint_is_set() {
        assert_eq!(otlp_requested(env(&[])), None);
        assert_eq!(
            otlp_requested(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")])),
            None
        );
        assert_eq!(
            otlp_requested(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])),
            Some("OTEL_EXPORTER_OTLP_ENDPOINT")
        );
        assert_eq!(
            otlp_requested(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces"
                ),
            ])),
            Some("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        );
    }

    #[test]
    fn the_standard_switches_turn_export_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(
            otlp_requested(env(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")])),
            None
        );
        assert_eq!(
            otlp_requested(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])),
            None
        );
        assert!(otlp_requested(env(&[endpoint, ("OTEL_SDK_DISABLED", "false")])).is_some());
        assert!(otlp_requested(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "otlp")])).is_some());
    }

    #[test]
    fn the_exporters_own_stack_is_not_exported() {
        let targets = exported_targets();
        assert!(targets.would_enable("bosh_nats_sync::controller", &tracing::Level::INFO));
        assert!(!targets.would_enable("bosh_nats_sync::controller", &tracing::Level::DEBUG));
        for target in [
            "opentelemetry_sdk",
            "opentelemetry-otlp",
            "hyper_util::client",
            "reqwest::connect",
        ] {
            assert!(
                !targets.would_enable(target, &tracing::Level::ERROR),
                "{target}"
            );
        }
    }

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
        let report = PassReport {
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
        };
        let spans = export(|| {
            let span = pass_span(7, "interval");
            record_pass(&span, Ok(&report));
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
        let spans = export(|| drop(pass_span_for(&ctx)));
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
        let error = PassError::Reload(crate::nats::ReloadError::BadPid {
            path: PathBuf::from("/var/vcap/sys/run/bpm/nats/nats.pid"),
            content: "garbage".into(),
        });
        let spans = export(|| {
            let span = pass_span(2, "requeue");
            record_pass(&span, Err(&error));
        });
        let [span] = spans.as_slice() else {
            panic!("one span expected: {spans:?}")
        };
        assert_eq!(attribute(span, "result"), Some(Value::from("error")));
        assert_eq!(attribute(span, "reason"), Some(Value::from(error.reason())));
        assert_eq!(span.status, Status::error(error.reason()));
        assert_eq!(attribute(span, "written"), None);
    }
}
