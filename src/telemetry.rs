//! Logging and tracing setup (§9): `tracing` to stdout or an append-mode log file, text
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
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::LogFormat;

/// The OpenTelemetry `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`
/// names another.
pub const SERVICE_NAME: &str = "bosh-nats-sync";

/// The signal-specific and the generic endpoint variable, in the order the exporter reads them.
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long [`shutdown`] waits for the last spans to reach the collector. SIGTERM must end
/// the process within 2 s (§6.4); an unreachable collector must not hold it longer.
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
pub(crate) fn exported_targets() -> Targets {
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
}
