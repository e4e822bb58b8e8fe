//! The reference reader and renderer of the auth file (tests and the `reference-model`
//! feature only): the file's users as plain values ([`Users`]), parsed whole and rendered
//! whole. The streaming [`read`](super::read), [`matches`](super::matches) and
//! [`render_into`](super::render_into) are checked against these — byte for byte, and value
//! for value — by unit tests, the integration tests and the fuzz targets.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::{AuthFileError, FileBody, HEAD, HeldUsers, Observed, TAIL, interpret};
use crate::users::reference::Users;
use crate::users::{User, UserSet};

impl HeldUsers for Users {
    fn count(&self) -> usize {
        self.len()
    }
    fn is_only_nobody(&self) -> bool {
        self.0.len() == 1 && self.0[0] == super::nobody()
    }
}

/// Reads and classifies the file, holding its users as values.
pub fn read(path: &Path) -> Result<Observed<Users>, AuthFileError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Observed::Missing),
        Err(source) => {
            return Err(AuthFileError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    Ok(classify(&bytes))
}

/// Classifies file content (see [`Observed`]).
pub fn classify(bytes: &[u8]) -> Observed<Users> {
    interpret(serde_json::from_slice::<FileBody<Users>>(bytes))
}

/// The file content for `users`, built as a whole: one JSON object, one user per line, no
/// users written as [`NOBODY`].
pub fn render(users: &Users) -> Vec<u8> {
    let nobody = [super::nobody()];
    let list: &[User] = if users.is_empty() { &nobody } else { &users.0 };
    let mut out = Vec::with_capacity(64 + list.len() * 320);
    out.extend_from_slice(HEAD);
    for (i, user) in list.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        serde_json::to_writer(&mut out, user).expect("serialising a User into a Vec cannot fail");
    }
    out.extend_from_slice(TAIL);
    out
}

/// What the streaming [`render_into`](super::render_into) writes for `users`, in memory.
pub fn render_set(users: &UserSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + users.len() * 330);
    super::render_into(&mut out, users).expect("writing into a Vec cannot fail");
    out
}

/// Replaces the file with the [`render`]ing of `users`, atomically (as [`super::write`]).
pub fn write(path: &Path, users: &Users) -> Result<fs::Metadata, AuthFileError> {
    super::write_with(path, |w| w.write_all(&render(users)))
}
