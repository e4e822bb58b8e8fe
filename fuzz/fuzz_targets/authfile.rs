//! The auth-file reader and writer (SPEC §4): `classify` takes any bytes without panicking,
//! and `render` output reads back as the same users using only escapes nats-server accepts.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use arbitrary::{Arbitrary, Unstructured};
use bosh_nats_sync::authfile::{self, Observed};
use bosh_nats_sync::users::{Permissions, User, Users};
use libfuzzer_sys::fuzz_target;

/// A user as the fuzzer builds it: any strings, any presence of the permission lists.
#[derive(Arbitrary, Debug)]
struct ArbUser {
    user: String,
    permissions: Option<(Option<Vec<String>>, Option<Vec<String>>)>,
    /// Use the one subject `classify` treats specially.
    nobody: bool,
}

impl From<ArbUser> for User {
    fn from(a: ArbUser) -> User {
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
    let observed = authfile::classify(data);
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
