//! The auth-file reader and writer (§4): `classify` takes any bytes without panicking,
//! and `render` output reads back as the same users using only escapes nats-server accepts;
//! the compact `UserSet` a pass compares and renders agrees with the users as values.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use arbitrary::{Arbitrary, Unstructured};
use bosh_nats_sync::authfile::{self, Observed};
use bosh_nats_sync::users::agent::AgentId;
use bosh_nats_sync::users::reference::{Permissions, User, Users};
use libfuzzer_sys::fuzz_target;

/// A user as the fuzzer builds it: any strings, any presence of the permission lists.
#[derive(Arbitrary, Debug)]
struct ArbUser {
    user: String,
    permissions: Option<(Option<Vec<String>>, Option<Vec<String>>)>,
    /// Use the one subject `classify` treats specially.
    nobody: bool,
    /// Be an agent user as this program writes it (when the id is valid), bootstrap or
    /// not, its publish list rotated by this much: the compact path of `UserSet`.
    agent: Option<(String, bool, u8)>,
}

impl From<ArbUser> for User {
    fn from(a: ArbUser) -> User {
        if let Some((id, bootstrap, rotate)) = &a.agent
            && let Ok(id) = AgentId::parse(id)
        {
            let mut user = bosh_nats_sync::users::agent::user(&id, *bootstrap);
            if let Some(publish) = user.permissions.as_mut().and_then(|p| p.publish.as_mut()) {
                publish.rotate_left(usize::from(*rotate) % 4);
            }
            return user;
        }
        User {
            user: if a.nobody {
                authfile::NOBODY.to_owned()
            } else {
                a.user
            },
            permissions: a
                .permissions
                .map(|(publish, subscribe)| Permissions { publish, subscribe }),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The bytes as a file on disk.
    let observed = authfile::reference::classify(data);
    match &observed {
        Observed::Missing => panic!("classify never reports a missing file"),
        // What was read is written back the same way and reads back the same.
        Observed::Users(users) => common::check_render(users),
        Observed::Empty | Observed::Unparseable(_) => {}
    }

    // The same bytes as a users value to render.
    let Ok(users) = Vec::<ArbUser>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let users = Users(users.into_iter().map(User::from).collect());
    common::check_render(&users);
});
