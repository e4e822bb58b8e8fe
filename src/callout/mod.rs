//! Callout mode's answering, without the connection (§12): who a connecting client is,
//! whether the admitted set lets it in, and the signed answer nats-server expects.
//!
//! nats-server hands every client that is not one of its static users to the service as an
//! authorization request on `$SYS.REQ.USER.AUTH`: a JWT it signed, sealed to the service's
//! curve key when `auth_callout.xkey` is set. Answering one is a pipeline of plain values:
//!
//! 1. [`request::open`]: open, verify and check the request → [`request::Request`];
//! 2. [`decide::decide`]: pure — the leaf of the chain nats-server verified, read by
//!    [`identity::identify`], against the admitted set → admit with §3.1's permissions, or
//!    refuse with a reason;
//! 3. [`answer::reply`]: the authorization-response JWT (with the user JWT inside when
//!    admitted), signed by the issuer and sealed back when the request was.
//!
//! [`keys`] reads the issuer's account seed and the optional curve seed from owner-only
//! files; [`jwt`] is the nkey JWT encoding all of them share, as nats-io/jwt v2 writes it.
//!
//! What nats-server must start with for any of this to happen: [`auth_file`] writes it
//! (§12.3), and [`server_version`] refuses a server older than 2.10, which has no callout.
//!
//! Revocation (§12.6) closes the live connections the set no longer allows, the same three
//! steps one level down, in [`revoker`]'s task of its own: [`connz`] observes every server's
//! connections through the system account and closes one, [`revoke::decide`] is the pure
//! decision between them.

pub mod admitted;
pub mod answer;
pub mod auth_file;
pub mod connz;
pub mod decide;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod report;
pub mod request;
pub mod responder;
pub mod revoke;
pub mod revoker;
pub mod server_version;
pub mod state;

pub use answer::{UserTtl, reply};
pub use decide::{Admission, Refusal, Verdict, decide};
pub use identity::{Identity, identify, identify_subject};
pub use keys::{CurveKey, IssuerKey, KeyError, Keys};
pub use request::{Request, RequestError, open};

/// Seconds since the epoch: the `now` of [`open`] and [`reply`].
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What `bosh-nats-sync callout-keys` prints (§12): a new issuer seed and its public key,
/// and with `xkey` a new curve pair, one `NAME=value` a line. Wiped from memory when dropped.
pub fn new_keys_text(xkey: bool) -> zeroize::Zeroizing<String> {
    let issuer = IssuerKey::generate();
    let mut text = zeroize::Zeroizing::new(String::new());
    let mut line = |name: &str, value: &str| {
        text.push_str(name);
        text.push('=');
        text.push_str(value);
        text.push('\n');
    };
    line("ISSUER_SEED", &issuer.seed());
    line("ISSUER", &issuer.public_key());
    if xkey {
        let curve = CurveKey::generate();
        line("XKEY_SEED", &curve.seed());
        line("XKEY", &curve.public_key());
    }
    text
}
