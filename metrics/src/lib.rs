//! Metrics for bosh-nats-sync: Prometheus metrics (§8), the control loop's health and
//! status (§7), and the axum server that exposes them.
//!
//! Who records what:
//! - the director client calls [`Metrics::director_request`] and [`Metrics::uaa_token_fetch`];
//! - computing desired users calls [`Metrics::vms_skipped`] and [`Metrics::subject_rejected`];
//! - the control loop reports passes, writes, reloads, scheduling and readiness to
//!   [`Health`], which updates `/status` and the matching metrics together;
//! - the watch of the event log (§6.6) reports its state to [`Health::watch`] (which also
//!   moves the state gauge), each completed event poll to [`Health::progress`], and counts
//!   events, passes by kind, unannounced changes and admission latency on [`Metrics`].
//!
//! Every metric is documented in `METRICS.md` next to this crate's `Cargo.toml`.

mod health;
mod registry;
mod server;

pub use health::{
    DesiredCounts, DesiredUsers, ErrorInfo, Health, LastPass, LastReload, NextPass, PassOutcome,
    PassSummary, ReloadOutcome, RunningPass, Status, Unhealthy, WatchInfo, WatchStatus,
};
pub use registry::{
    BuildInfo, Metrics, PassKind, PassResult, ReloadResult, SkipReason, SubjectKind, UserKind,
    WatchState,
};
pub use server::{BindError, SHUTDOWN_GRACE, bind, router, serve};
