//! bosh-nats-sync: keeps the users of a BOSH director's NATS server in line with the
//! director's VMs. A level-triggered reconciler: desired users from the director API,
//! observed users from the auth file, write and reload when they differ.
//!
//! Where things are (the behaviour each part follows is `docs/contract.md`, cited as `§N`):
//! - [`modes`]: the program's modes (run, once, diff, check-config, init), called by `main`;
//!   [`init`] writes the auth file nats-server starts with (§12.3).
//! - [`pass`]: one pass — observe → decide → apply — which the `reconcile` loop runs.
//! - [`director`]: the director's HTTP API (§2); [`vm`]: the VMs it reports.
//! - [`users`]: NATS users, the agent user's format, the compact set a pass compares.
//! - [`authfile`]: the auth file — compare, read, atomically write (§4).
//! - [`reload`]: making nats-server load it, verified (§5).
//! - [`callout`]: callout mode's answers to nats-server's authorization requests (§12).
//! - [`config`]: the YAML file (§1); [`telemetry`]: logs and span export (§9).

pub mod authfile;
pub mod callout;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod director;
pub mod init;
pub mod modes;
pub mod pass;
pub mod reload;
pub mod secret;
pub mod telemetry;
pub mod tls;
pub mod users;
pub mod vm;
