//! Metrics for bosh-nats-sync: Prometheus metrics (§8), the control loop's health and
//! status (§7), and the axum server that exposes them.
//!
//! It records what it is handed: label values are the program's (`&'static str`s from closed
//! sets it defines, typically enums implementing [`Label`]), and every value known in advance
//! is handed over at construction ([`Labels`], [`Metrics::with_labels`]) so that its series
//! is exported at 0 from start-up. The crate knows nothing of BOSH or NATS beyond the names
//! and help texts of the metrics.
//!
//! Who records what:
//! - the director client calls [`Metrics::director_request`] and [`Metrics::uaa_token_fetch`];
//! - computing desired users calls [`Metrics::vms_skipped`] and [`Metrics::subject_rejected`];
//! - the control loop reports passes ([`PassSummary`]), writes, reloads ([`ReloadSummary`]),
//!   scheduling and readiness to [`Health`], which updates `/status` and the matching metrics
//!   together;
//! - the watch of the event log (§6.6) reports its state to [`Health::watch`] (which also
//!   moves the state gauge), each completed event poll to [`Health::progress`], and counts
//!   events, passes by kind, unannounced changes and admission latency on [`Metrics`];
//! - callout mode's responder and revoker report answers, their connection, the admitted set
//!   and each revocation ([`Health::callout_revoked`]).
//!
//! Every metric is documented in `METRICS.md` next to this crate's `Cargo.toml`.

mod health;
mod labels;
mod registry;
mod server;

pub use health::{
    CalloutRevocation, DesiredUsers, ErrorInfo, Health, LastPass, LastReload, NextPass,
    PassSummary, ReloadSummary, RevokedConnection, RunningPass, Status, Unhealthy, WatchInfo,
    WatchStatus,
};
pub use labels::{Label, Labels};
pub use registry::{BuildInfo, Metrics};
pub use server::{BindError, SHUTDOWN_GRACE, bind, router, serve};
