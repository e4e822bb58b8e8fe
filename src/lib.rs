//! bosh-nats-sync: keeps the users of a BOSH director's NATS server in line with the
//! director's VMs. A level-triggered reconciler: desired users from the director API,
//! observed users from the auth file, write and reload when they differ.

pub mod app;
pub mod authfile;
pub mod config;
pub mod controller;
pub mod damping;
#[cfg(feature = "demo")]
pub mod demo;
pub mod desired;
pub mod director;
pub mod nats;
pub mod secret;
pub mod telemetry;
pub mod tls;
pub mod users;
pub mod userset;
