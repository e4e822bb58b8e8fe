//! Monitoring for bosh-nats-sync: Prometheus metrics (§8), the control loop's health and
//! status (§7), and the axum server that exposes them.
//!
//! Who records what:
//! - the director client calls [`Metrics::director_request`] and [`Metrics::uaa_token_fetch`];
//! - computing desired users calls [`Metrics::vms_skipped`] and [`Metrics::subject_rejected`];
//! - the control loop reports passes, writes, reloads, scheduling and readiness to
//!   [`Health`], which updates `/status` and the matching metrics together.
//!
//! Every metric is documented in `METRICS.md` next to this crate's `Cargo.toml`.

mod health;
mod registry;
mod server;

pub use health::{
    DesiredCounts, DesiredUsers, ErrorInfo, Health, LastPass, LastReload, NextPass, PassOutcome,
    PassSummary, ReloadOutcome, RunningPass, Status, Unhealthy,
};
pub use registry::{
    BuildInfo, Metrics, PassResult, ReloadResult, SkipReason, SubjectKind, UserKind,
};
pub use server::{BindError, SHUTDOWN_GRACE, bind, router, serve};
