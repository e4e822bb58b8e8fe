//! One entry of `authorization.users`: a certificate subject DN and its permissions.

use serde::{Deserialize, Serialize};

/// What a NATS user may publish and subscribe to. `None` means the key is absent, which to
/// nats-server means "no restriction" — so an absent list and an empty list differ.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
}

/// One user: the subject DN a client certificate must carry, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Permissions>,
}

impl User {
    pub fn new(user: String, publish: Vec<String>, subscribe: Vec<String>) -> Self {
        Self {
            user,
            permissions: Some(Permissions {
                publish: Some(publish),
                subscribe: Some(subscribe),
            }),
        }
    }
}

/// A user from string slices, for tests.
#[cfg(test)]
pub(crate) fn u(name: &str, publish: &[&str], subscribe: &[&str]) -> User {
    User::new(
        name.into(),
        publish.iter().map(|s| s.to_string()).collect(),
        subscribe.iter().map(|s| s.to_string()).collect(),
    )
}
