//! NATS users: the values an auth file lists ([`User`]), the one format of an agent's users
//! ([`agent`]), and the compact set a pass compares, renders and damps ([`UserSet`]).
//!
//! - `user`: a user and its permissions, as the file spells them.
//! - [`agent`]: everything about an agent user — its id, DN and permissions, how to recognise
//!   one in a file, how its bytes are written, and how reports of one agent are merged.
//! - `set`: [`UserSet`], users held compactly (one entry per agent), compared by value.
//! - [`reference`] (tests and the `reference-model` feature only): the plain value model the
//!   compact set and the streaming file code are checked against.

pub mod agent;
#[cfg(any(test, feature = "reference-model"))]
pub mod reference;
mod set;
mod user;

pub use agent::AgentId;
pub use set::{Changes, Dn, UserRef, UserSet};
pub use user::{Permissions, User};
