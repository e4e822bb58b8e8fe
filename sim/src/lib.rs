//! A simulated BOSH environment for tests, demos and benchmarks: test PKI, fake director and UAA over HTTPS, a nats-server launcher.
//!
//! - [`pki`]: CAs, a `127.0.0.1`/`localhost` server certificate, BOSH NATS client certificates.
//! - [`director`]: the director API (`/info`, `/deployments`, `/deployments/{name}/vms`,
//!   `/events`).
//! - [`events`]: the director's event log, recorded and queried as the real one does it.
//! - [`uaa`]: the UAA token endpoint (client-credentials grant, RSA-signed JWTs).
//! - [`fault`]: fault rules shared by the director and the UAA.
//! - [`captured`]: responses captured from the real director, and their file format's reader
//!   (what the simulated director's answers are compared with).
//! - [`churn`]: a background task that keeps adding and removing VMs (demo, soak).
//! - [`ports`]: ports for servers another process binds, outside the ephemeral range.
//! - [`nats`]: a real `nats-server` with `verify_and_map`, and probes of what a certificate
//!   may publish or subscribe.
//!
//! Every server binds `127.0.0.1:0`, serves from a Tokio task and stops when dropped.

pub mod captured;
pub mod churn;
pub mod director;
pub mod events;
pub mod fault;
pub mod nats;
pub mod pki;
pub mod ports;
mod server;
pub mod stage;
pub mod uaa;

/// The NATS client the [`nats`] probes use, re-exported so callers use the same version.
pub use async_nats;
pub use server::Transport;
