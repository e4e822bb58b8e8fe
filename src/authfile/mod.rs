//! The auth file nats-server includes (§4): compare it with the users a pass wants, read and
//! classify it, and replace it atomically.
//!
//! A pass never needs the file's users as values when nothing changed: [`matches`] renders
//! the desired users straight into a comparison with the file's bytes, streaming, so the
//! steady state costs one read of the file and no allocation per user. Only when the bytes
//! differ is the file parsed — streaming too, into a compact [`UserSet`] ([`read`]) — and
//! compared as values (§4.3). Writes render straight into the temporary file.
//!
//! [`reference`] (tests and the `reference-model` feature only) holds the plain-value reader
//! and renderer the streaming code is checked against.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::users::{User, UserRef, UserSet, agent};

#[cfg(any(test, feature = "reference-model"))]
pub mod reference;

/// What the file on disk holds. Only [`Observed::Users`] with at least one user counts as a
/// usable config; every other state "holds no users" (§4.2). `U` is how the users are held:
/// compactly ([`UserSet`], from [`read`]), or as values in the reference model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed<U = UserSet> {
    /// There is no file.
    Missing,
    /// Not the JSON we write — e.g. BOSH pre-start's `{authorization: {token: f0oBar}}`
    /// placeholder, a truncated file or a hand edit gone wrong. Holds the parser's message.
    Unparseable(String),
    /// Valid JSON without users, e.g. `{}` or `"users": []`. Beware: nats-server treats
    /// both as "no authorization" and admits every certificate its CA signed.
    Empty,
    /// A users config. An empty list here means the file holds only [`NOBODY`]: it denies
    /// everyone.
    Users(U),
}

/// The one user of a file that must admit nobody. nats-server reads an empty users list as
/// "no authorization at all" (every client admitted, observed with 2.9.10), so "no users"
/// is written as this subject with no rights instead: no certificate is meant to carry it,
/// and one that did could neither publish nor subscribe.
pub const NOBODY: &str = "CN=nobody.bosh-nats-sync.invalid";

pub(crate) fn nobody() -> User {
    User::new(NOBODY.to_owned(), vec![], vec![])
}

/// How a file's users are held, as far as classifying the file needs.
pub trait HeldUsers: Default {
    fn count(&self) -> usize;
    /// The file's only user is [`NOBODY`]: it holds no users.
    fn is_only_nobody(&self) -> bool;
}

impl HeldUsers for UserSet {
    fn count(&self) -> usize {
        self.len()
    }
    fn is_only_nobody(&self) -> bool {
        self.is_only(&nobody())
    }
}

impl<U: HeldUsers> Observed<U> {
    pub fn users(&self) -> Option<&U> {
        match self {
            Observed::Users(u) => Some(u),
            _ => None,
        }
    }

    /// Whether the file already grants access to someone (so bootstrap must leave it alone).
    pub fn holds_users(&self) -> bool {
        self.users().is_some_and(|u| u.count() > 0)
    }

    /// A short name of the state, for logs and the dry run.
    pub fn describe(&self) -> String {
        match self {
            Observed::Missing => "missing".into(),
            Observed::Unparseable(why) => format!("not a users config ({why})"),
            Observed::Empty => "no users".into(),
            Observed::Users(u) => format!("{} users", u.count()),
        }
    }
}

/// A failure to read or replace the auth file. The file is never left half-written.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read the auth file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write the auth file {} ({step}): {source}", path.display())]
    Write {
        path: PathBuf,
        step: &'static str,
        source: io::Error,
    },
}

impl AuthFileError {
    /// Every reason [`AuthFileError::reason`] returns: the metrics export each from start-up
    /// (§8).
    pub const ALL_REASONS: [&'static str; 3] = ["auth_file_read", "auth_file_write", "disk_full"];

    pub fn reason(&self) -> &'static str {
        match self {
            AuthFileError::Read { .. } => "auth_file_read",
            AuthFileError::Write { source, .. } if source.kind() == io::ErrorKind::StorageFull => {
                "disk_full"
            }
            AuthFileError::Write { .. } => "auth_file_write",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody<U> {
    #[serde(default = "Option::default")]
    authorization: Option<Authorization<U>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Authorization<U> {
    #[serde(default = "Option::default")]
    users: Option<U>,
}

/// Reads and classifies the file, streaming: it is parsed from a buffered reader into a
/// compact [`UserSet`], so neither its bytes nor its users are ever held whole. Only I/O
/// failures other than "not found" are errors: any content at all is a state the next write
/// corrects.
pub fn read(path: &Path) -> Result<Observed, AuthFileError> {
    let read_error = |source| AuthFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Observed::Missing),
        Err(source) => return Err(read_error(source)),
    };
    match serde_json::from_reader::<_, FileBody<UserSet>>(BufReader::with_capacity(IO_BUFFER, file))
    {
        Err(e) if e.is_io() => Err(read_error(e.into())),
        parsed => Ok(interpret(parsed)),
    }
}

fn interpret<U: HeldUsers>(parsed: Result<FileBody<U>, serde_json::Error>) -> Observed<U> {
    match parsed {
        Ok(FileBody {
            authorization: Some(Authorization { users: Some(users) }),
        }) if users.count() == 0 => Observed::Empty,
        Ok(FileBody {
            authorization: Some(Authorization { users: Some(users) }),
        }) if users.is_only_nobody() => Observed::Users(U::default()),
        Ok(FileBody {
            authorization: Some(Authorization { users: Some(users) }),
        }) => Observed::Users(users),
        Ok(_) => Observed::Empty,
        Err(e) => Observed::Unparseable(e.to_string()),
    }
}

/// Buffer size for reading, comparing and writing the file.
const IO_BUFFER: usize = 64 * 1024;

/// Whether the file holds exactly the bytes [`write`] would write for `users`. Streams:
/// the rendering is compared with the file as it is produced and stops at the first
/// difference. A missing file does not match.
pub fn matches(path: &Path, users: &UserSet) -> Result<bool, AuthFileError> {
    let read_error = |source| AuthFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(read_error(source)),
    };
    let mut compare = Compare {
        file: BufReader::with_capacity(IO_BUFFER, file),
        differs: false,
    };
    let rendered = {
        let mut w = BufWriter::with_capacity(IO_BUFFER, &mut compare);
        render_into(&mut w, users).and_then(|()| w.flush())
    };
    match rendered {
        Ok(()) => Ok(compare.file.fill_buf().map_err(read_error)?.is_empty()),
        Err(_) if compare.differs => Ok(false),
        Err(source) => Err(read_error(source)),
    }
}

/// A writer that checks what is written against a file's next bytes; fails (setting
/// `differs`) at the first difference.
struct Compare {
    file: BufReader<File>,
    differs: bool,
}

impl Write for Compare {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            let available = self.file.fill_buf()?;
            let take = available.len().min(buf.len());
            if take == 0 || available[..take] != buf[..take] {
                self.differs = true;
                return Err(io::Error::other("the file differs"));
            }
            self.file.consume(take);
            buf = &buf[take..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(crate) const HEAD: &[u8] = b"{\"authorization\":{\"users\":[";
pub(crate) const TAIL: &[u8] = b"\n]}}\n";

/// Writes `users` in the file format: one JSON object, one user per line. Agent users are
/// written by [`agent::write_json`], other users through serde_json. No users is written as
/// [`NOBODY`], never as an empty list.
///
/// nats-server's parser rejects the escapes `\u`, `\b`, `\f` and `\/` (checked with
/// `nats-server -t`, 2.9.10); serde_json writes the first three only for control characters,
/// which neither a validated agent id nor a validated subject can contain, and never writes
/// `\/`.
pub fn render_into(w: &mut impl Write, users: &UserSet) -> io::Result<()> {
    w.write_all(HEAD)?;
    if users.is_empty() {
        w.write_all(b"\n")?;
        serde_json::to_writer(&mut *w, &nobody())?;
    } else {
        let mut first = true;
        users.for_each(|user| {
            w.write_all(if first { b"\n" } else { b",\n" })?;
            first = false;
            match user {
                UserRef::Other(user) => Ok(serde_json::to_writer(&mut *w, user)?),
                UserRef::Agent(id, bootstrap) => agent::write_json(w, id, bootstrap),
            }
        })?;
    }
    w.write_all(TAIL)
}

/// Replaces the file with `users`, atomically: a temporary file in the same directory is
/// written (rendered straight into it), fsynced, given the old file's mode (and owner, when
/// root), renamed over the target, and the directory is fsynced. Any failure leaves the old
/// file as it was. Returns the new file's metadata (so the caller can recognise its own
/// write).
pub fn write(path: &Path, users: &UserSet) -> Result<fs::Metadata, AuthFileError> {
    write_with(path, |w| render_into(w, users))
}

/// Temporary files of a write interrupted by a crash (SIGKILL, power loss) are the only
/// thing a crash can leave behind; they are removed at start-up. Returns how many.
///
/// A temporary file another process is still writing is left alone: [`write`] holds an
/// exclusive `flock` on its temporary file until the rename, and the kernel drops that lock
/// when the writer dies — so only a dead writer's file can be locked here. (An operator's
/// `once` or `diff` next to the running daemon must not pull the file from under its write.)
pub fn remove_stale_temp_files(path: &Path) -> usize {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(TEMP_PREFIX)
                && name.ends_with(TEMP_SUFFIX)
                && e.file_type().is_ok_and(|t| t.is_file())
        })
        .filter(|e| {
            // Locked while we remove it, so a writer cannot be mid-way through it.
            let Ok(_unused) = File::open(e.path())
                .map_err(|_| ())
                .and_then(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|_| ()))
            else {
                return false;
            };
            fs::remove_file(e.path()).is_ok()
        })
        .count()
}

const TEMP_PREFIX: &str = ".auth-";
const TEMP_SUFFIX: &str = ".tmp";

pub(crate) fn write_with(
    path: &Path,
    content: impl FnOnce(&mut BufWriter<&mut File>) -> io::Result<()>,
) -> Result<fs::Metadata, AuthFileError> {
    let err = |step: &'static str| {
        move |source: io::Error| AuthFileError::Write {
            path: path.to_owned(),
            step,
            source,
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let old = fs::metadata(path).ok();

    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)
        .map_err(err("create a temporary file"))?;
    // Held until the rename: marks the temporary file as in use for
    // `remove_stale_temp_files` in other processes. Best effort: a filesystem without
    // `flock` only loses that protection.
    let _in_use = tmp
        .as_file()
        .try_clone()
        .ok()
        .and_then(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).ok());
    {
        let mut w = BufWriter::with_capacity(IO_BUFFER, tmp.as_file_mut());
        content(&mut w).map_err(err("write"))?;
        w.flush().map_err(err("write"))?;
    }
    let mode = old.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err("set the mode"))?;
    if let Some(m) = &old
        && nix::unistd::geteuid().is_root()
    {
        std::os::unix::fs::fchown(tmp.as_file(), Some(m.uid()), Some(m.gid()))
            .map_err(err("set the owner"))?;
    }
    tmp.as_file().sync_all().map_err(err("fsync"))?;
    let file = tmp
        .persist(path)
        .map_err(|e| err("rename over the target")(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync the directory"))?;
    file.metadata().map_err(err("stat the new file"))
}

#[cfg(test)]
mod tests {
    use super::reference::{classify, render, render_set};
    use super::*;
    use crate::pass::desired::{self, Subject, Subjects};
    use crate::users::reference::Users;
    use crate::vm::Vm;

    fn fixture() -> Users {
        Users(fixture_set().to_users())
    }

    fn fixture_set() -> UserSet {
        let subjects = Subjects {
            director: Subject::parse("C=USA, O=Cloud Foundry, CN=default.director.bosh-internal")
                .unwrap(),
            hm: Subject::parse("C=USA, O=Cloud Foundry, CN=default.hm.bosh-internal").unwrap(),
        };
        let vms = vec![
            Vm {
                agent_id: Some("perm-1".into()),
                permanent_nats_credentials: true,
            },
            Vm {
                agent_id: Some("boot-2".into()),
                permanent_nats_credentials: false,
            },
        ];
        desired::compute(&subjects, vms).users
    }

    #[test]
    fn renders_the_exact_json_with_literal_wildcards() {
        let text = String::from_utf8(render(&fixture())).unwrap();
        let expected = r#"{"authorization":{"users":[
{"user":"C=USA, O=Cloud Foundry, CN=default.director.bosh-internal","permissions":{"publish":["agent.*","hm.director.alert"],"subscribe":["director.>"]}},
{"user":"C=USA, O=Cloud Foundry, CN=default.hm.bosh-internal","permissions":{"publish":[],"subscribe":["hm.agent.heartbeat.*","hm.agent.alert.*","hm.agent.shutdown.*","hm.director.alert"]}},
{"user":"C=USA, O=Cloud Foundry, CN=boot-2.bootstrap.agent.bosh-internal","permissions":{"publish":["hm.agent.heartbeat.boot-2","hm.agent.alert.boot-2","hm.agent.shutdown.boot-2","director.*.boot-2.*"],"subscribe":["agent.boot-2"]}},
{"user":"C=USA, O=Cloud Foundry, CN=boot-2.agent.bosh-internal","permissions":{"publish":["hm.agent.heartbeat.boot-2","hm.agent.alert.boot-2","hm.agent.shutdown.boot-2","director.*.boot-2.*"],"subscribe":["agent.boot-2"]}},
{"user":"C=USA, O=Cloud Foundry, CN=perm-1.agent.bosh-internal","permissions":{"publish":["hm.agent.heartbeat.perm-1","hm.agent.alert.perm-1","hm.agent.shutdown.perm-1","director.*.perm-1.*"],"subscribe":["agent.perm-1"]}}
]}}
"#;
        assert_eq!(text, expected);
        assert!(!text.contains("\\u"), "nats-server rejects \\u escapes");
        assert!(text.contains("director.>"));
    }

    /// The streaming rendering is byte for byte the reference rendering of the same users.
    #[test]
    fn render_set_is_render_of_the_users() {
        let mut hand_edited = fixture().0;
        hand_edited.push(User::new(
            "CN=Zürich \"q\"".into(),
            vec![],
            vec!["a.>".into()],
        ));
        hand_edited.swap(0, 3);
        for set in [
            fixture_set(),
            UserSet::default(),
            UserSet::from_users(hand_edited),
        ] {
            assert_eq!(render_set(&set), render(&Users(set.to_users())), "{set:?}");
        }
    }

    #[test]
    fn matches_only_the_exact_bytes_and_read_reads_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let set = fixture_set();
        assert!(
            !matches(&path, &set).unwrap(),
            "a missing file does not match"
        );
        assert_eq!(read(&path).unwrap(), Observed::Missing);
        write(&path, &set).unwrap();
        assert_eq!(fs::read(&path).unwrap(), render(&fixture()));
        assert!(matches(&path, &set).unwrap());
        assert_eq!(read(&path).unwrap(), Observed::Users(set.clone()));
        assert!(!matches(&path, &UserSet::default()).unwrap());

        let bytes = render(&fixture());
        // One byte more, one byte less, one byte other: no match.
        for changed in [
            [bytes.as_slice(), b" "].concat(),
            bytes[..bytes.len() - 1].to_vec(),
            bytes
                .iter()
                .map(|&b| if b == b'1' { b'7' } else { b })
                .collect(),
        ] {
            fs::write(&path, &changed).unwrap();
            assert!(!matches(&path, &set).unwrap());
        }
        // The same users in another order: other bytes, the same values.
        let mut reordered = fixture();
        reordered.0.reverse();
        fs::write(&path, render(&reordered)).unwrap();
        assert!(!matches(&path, &set).unwrap());
        assert_eq!(read(&path).unwrap(), Observed::Users(set));
        // Every state classifies as it does from memory.
        for content in [
            &b"{}"[..],
            b"{authorization: {token: f0oBar}}",
            b"",
            b"{\"authorization\":{\"users\":[]}}",
            &render(&Users::default()),
        ] {
            fs::write(&path, content).unwrap();
            let from_memory = classify(content);
            match (read(&path).unwrap(), from_memory) {
                (Observed::Unparseable(_), Observed::Unparseable(_)) => {}
                (Observed::Users(a), Observed::Users(b)) => {
                    assert_eq!(a, UserSet::from_users(b.0))
                }
                (a, b) => assert_eq!(a.describe(), b.describe()),
            }
        }
    }

    #[test]
    fn non_ascii_is_written_as_utf8_not_escaped() {
        let users = Users(vec![User::new(
            "CN=Zürich".into(),
            vec![],
            vec!["a.>".into()],
        )]);
        let text = String::from_utf8(render(&users)).unwrap();
        assert!(text.contains("CN=Zürich") && text.contains("a.>") && !text.contains("\\u"));
    }

    #[test]
    fn classifies_every_state() {
        assert_eq!(classify(b"{}"), Observed::Empty);
        assert_eq!(classify(b"{\"authorization\":{}}"), Observed::Empty);
        assert_eq!(
            classify(b"{\"authorization\":{\"users\":[]}}"),
            Observed::Empty,
            "admits everyone"
        );
        assert!(matches!(
            classify(b"{authorization: {token: f0oBar}}"),
            Observed::Unparseable(_)
        ));
        assert!(matches!(classify(b""), Observed::Unparseable(_)));
        assert!(matches!(
            classify(b"{\"authorization\":{\"users\":[{\"user\":\"a\""),
            Observed::Unparseable(_)
        ));
        // Something that would change the server's config besides users is not ours.
        assert!(matches!(
            classify(b"{\"port\":4222}"),
            Observed::Unparseable(_)
        ));
        let users = fixture();
        match classify(&render(&users)) {
            Observed::Users(read) => assert_eq!(read, users),
            other => panic!("expected users, got {other:?}"),
        }
        assert!(!Observed::Users(Users::default()).holds_users());
        assert!(Observed::Users(users).holds_users());
    }

    #[test]
    fn no_users_is_written_as_nobody_never_as_an_empty_list() {
        let text = String::from_utf8(render(&Users::default())).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"authorization\":{{\"users\":[\n{{\"user\":\"{NOBODY}\",\"permissions\":{{\"publish\":[],\"subscribe\":[]}}}}\n]}}}}\n"
            )
        );
        assert_eq!(classify(text.as_bytes()), Observed::Users(Users::default()));
        assert!(!classify(text.as_bytes()).holds_users());
    }

    #[test]
    fn a_missing_file_is_a_state_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            reference::read(&dir.path().join("auth.json")).unwrap(),
            Observed::Missing
        );
    }

    #[test]
    fn writes_atomically_keeping_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        fs::write(&path, "{authorization: {token: f0oBar}}").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let users = fixture();
        let meta = reference::write(&path, &users).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o640);
        assert_eq!(reference::read(&path).unwrap(), Observed::Users(users));
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["auth.json"], "no temporary file is left behind");
    }

    #[test]
    fn stale_temp_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        for name in [
            ".auth-abc123.tmp",
            ".auth-x.tmp",
            "auth.json",
            "other.tmp",
            ".auth-keep",
        ] {
            fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(remove_stale_temp_files(&path), 2);
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".auth-keep", "auth.json", "other.tmp"]);
    }

    #[test]
    fn a_temp_file_another_writer_holds_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let temp = dir.path().join(".auth-inflt1.tmp");
        fs::write(&temp, "half a file").unwrap();
        // What `write` holds while it writes (flock conflicts between open file
        // descriptions, also within one process).
        let held = Flock::lock(File::open(&temp).unwrap(), FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        assert_eq!(remove_stale_temp_files(&path), 0);
        assert!(temp.exists(), "a live writer's temporary file stays");
        drop(held);
        assert_eq!(remove_stale_temp_files(&path), 1, "once its writer is gone");
        assert!(!temp.exists());
    }

    #[test]
    fn a_new_file_is_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let meta = reference::write(&path, &fixture()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o644);
    }

    /// Root ignores directory permissions, so when the tests run as root this test re-runs
    /// itself in a child process that drops to `nobody` first: the check is real either way.
    #[test]
    fn a_write_into_a_read_only_directory_leaves_the_old_file() {
        const CHILD: &str = "BNS_TEST_AS_NOBODY";
        if std::env::var_os(CHILD).is_some() {
            let nobody = nix::unistd::User::from_name("nobody")
                .unwrap()
                .expect("user nobody exists");
            nix::unistd::setgid(nobody.gid).unwrap();
            nix::unistd::setuid(nobody.uid).unwrap();
        } else if nix::unistd::geteuid().is_root() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "authfile::tests::a_write_into_a_read_only_directory_leaves_the_old_file",
                    "--nocapture",
                ])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "child run failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        fs::write(&path, "old content").unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
        let result = reference::write(&path, &fixture());
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let e = result.unwrap_err();
        assert_eq!(e.reason(), "auth_file_write");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "old content");
    }
    /// The index of `e`'s variant. Exhaustive on purpose: a new variant does not compile
    /// until it has an arm here (the next index, with `VARIANTS` raised) and a sample below.
    fn variant(e: &AuthFileError) -> usize {
        match e {
            AuthFileError::Read { .. } => 0,
            AuthFileError::Write { .. } => 1,
        }
    }
    const VARIANTS: usize = 2;

    #[test]
    fn all_reasons_lists_the_reason_of_every_variant() {
        use std::collections::BTreeSet;
        let path = PathBuf::from("/var/vcap/data/nats/auth.json");
        let samples = [
            AuthFileError::Read {
                path: path.clone(),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            },
            AuthFileError::Write {
                path: path.clone(),
                step: "write",
                source: io::Error::from(io::ErrorKind::StorageFull),
            },
            AuthFileError::Write {
                path,
                step: "rename",
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            },
        ];
        let variants: BTreeSet<usize> = samples.iter().map(variant).collect();
        assert_eq!(
            variants,
            (0..VARIANTS).collect(),
            "a sample of every variant"
        );
        let reasons: BTreeSet<&str> = samples.iter().map(AuthFileError::reason).collect();
        let listed: BTreeSet<&str> = AuthFileError::ALL_REASONS.into_iter().collect();
        assert_eq!(reasons, listed);
        assert_eq!(
            listed.len(),
            AuthFileError::ALL_REASONS.len(),
            "no reason twice"
        );
    }
}
