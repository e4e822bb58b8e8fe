//! Logging setup (SPEC §9): `tracing` to stdout or an append-mode log file, text or JSON.

use std::fs::OpenOptions;
use std::path::Path;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`. The log file is
/// opened in append mode, so logrotate's copytruncate keeps working: every write goes to
/// the current end of the file, wherever that is after a truncation.
pub fn init(format: LogFormat, level: &str, logfile: Option<&Path>) -> std::io::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let writer = match logfile {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot open the log file {}: {e}", path.display()),
                    )
                })?;
            BoxMakeWriter::new(std::sync::Arc::new(file))
        }
        None => BoxMakeWriter::new(std::io::stdout),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match (format, logfile.is_some()) {
        (LogFormat::Json, _) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        (LogFormat::Text, true) => builder.with_ansi(false).try_init(),
        (LogFormat::Text, false) => builder.try_init(),
    };
    // A second initialisation (tests, the demo) keeps the first subscriber.
    drop(result);
    Ok(())
}
