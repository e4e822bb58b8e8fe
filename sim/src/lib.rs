//! A simulated BOSH environment for tests, demos and benchmarks: test PKI, fake director and UAA over HTTPS, a nats-server launcher.
//!
//! - [`pki`]: CAs, a `127.0.0.1`/`localhost` server certificate, BOSH NATS client certificates.
//! - [`director`]: the director API (`/info`, `/deployments`, `/deployments/{name}/vms`).
//! - [`uaa`]: the UAA token endpoint (client-credentials grant, RSA-signed JWTs).
//! - [`fault`]: fault rules shared by the director and the UAA.
//!
//! Every server binds `127.0.0.1:0`, serves from a Tokio task and stops when dropped.

pub mod churn;
pub mod director;
pub mod fault;
pub mod nats;
pub mod pki;
mod server;
pub mod uaa;

pub use server::Transport;
