//! File-change triggers: inotify on the files' parent directories, debounced, minus our own writes.
//!
//! Why parent directories: a file replaced by an atomic rename, or deleted and created again,
//! is a new inode, and a watch on the old inode would go quiet. Watching the directory
//! (non-recursively) sees every create, rename, write, truncation and delete of the name.
//!
//! Why [`SelfWrites`]: the loop's own pass writes a watched file; without a filter that write
//! would trigger another pass, which is harmless but noisy. The writer records the identity
//! (device, inode, length, modification time) the file has after its write; when a batch of
//! events ends, a path whose current identity equals a recorded one is skipped. An outside
//! change after our write alters the length, mtime or inode and is therefore still seen.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Which version of which file a path names: equal identities mean "the same bytes we wrote".
///
/// The inode changes on every atomic replace, the length and mtime (nanoseconds) on every
/// in-place write or truncation. The ctime is left out on purpose: a rename updates it, so a
/// writer can take the identity from its temporary file *before* renaming it into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileIdentity {
    /// The identity of the file behind `metadata` (e.g. `File::metadata` of the open file).
    pub fn from_metadata(metadata: &Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime: metadata.mtime(),
            mtime_nsec: metadata.mtime_nsec(),
        }
    }

    /// The identity of the file at `path` now (following symlinks).
    pub fn of(path: &Path) -> io::Result<Self> {
        fs::metadata(path).map(|m| Self::from_metadata(&m))
    }
}

/// A cloneable record of the writes this process made to watched files.
///
/// Invariant: at most one identity per recorded path (a new record replaces the old), so the
/// record stays as small as the set of files written.
#[derive(Debug, Clone, Default)]
pub struct SelfWrites {
    written: Arc<Mutex<HashMap<PathBuf, FileIdentity>>>,
}

impl SelfWrites {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record that we wrote `path` and it now has `identity`.
    ///
    /// Best called *before* renaming a temporary file into place, with the identity of the
    /// temporary file (`FileIdentity::from_metadata(&tmp.as_file().metadata()?)` after the last
    /// write and fsync): a record made only after the rename races the debounce and may let one
    /// extra pass through (harmless).
    pub fn record(&self, path: impl Into<PathBuf>, identity: FileIdentity) {
        self.lock().insert(path.into(), identity);
    }

    /// Record the identity `path` has now, after an in-place write.
    pub fn record_current(&self, path: &Path) -> io::Result<FileIdentity> {
        let identity = FileIdentity::of(path)?;
        self.record(path, identity);
        Ok(identity)
    }

    /// Whether the file now at `path` is exactly what we last wrote. A missing file is never
    /// ours. Matching by identity rather than by path spelling means relative, absolute or
    /// symlinked spellings of the path all agree.
    pub fn is_own(&self, path: &Path) -> bool {
        match FileIdentity::of(path) {
            Ok(now) => self.lock().values().any(|ours| *ours == now),
            Err(_) => false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, FileIdentity>> {
        // The map is always left consistent (single inserts), so a panic elsewhere while the
        // lock was held does not make its content wrong.
        self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// State shared between notify's event thread and the loop.
///
/// Invariant: `pending` only ever holds caller-given paths (values of `names`); `notify` has a
/// permit whenever `pending` gained a path the loop has not yet taken.
struct Shared {
    /// Path as the kernel reports it (canonical directory + name) -> path as the caller gave it.
    names: HashMap<PathBuf, PathBuf>,
    pending: Mutex<BTreeSet<PathBuf>>,
    notify: Notify,
}

impl Shared {
    fn handle(&self, event: notify::Result<Event>) {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(error = %err, "file watch error; treating every watched file as changed");
                self.mark(self.names.values().cloned().collect());
                return;
            }
        };
        if event.need_rescan() {
            self.mark(self.names.values().cloned().collect());
            return;
        }
        // Opening and closing (our own reads included) change nothing; a write shows up as a
        // modify event as well.
        if event.kind.is_access() {
            return;
        }
        let hits: Vec<PathBuf> = event
            .paths
            .iter()
            .filter_map(|p| self.names.get(p).cloned())
            .collect();
        self.mark(hits);
    }

    fn mark(&self, paths: Vec<PathBuf>) {
        if paths.is_empty() {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(paths);
        self.notify.notify_one();
    }

    fn take(&self) -> BTreeSet<PathBuf> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Debounced changes of a set of files.
///
/// Invariant: `deadline` is set exactly while a batch is open: from the first event after the
/// last batch until `debounce` later. The window does not extend with more events, so a storm
/// of writes still yields a batch every `debounce`.
pub(crate) struct FileWatch {
    shared: Arc<Shared>,
    self_writes: SelfWrites,
    debounce: Duration,
    deadline: Option<Instant>,
    /// Dropping the watcher stops notify's thread; kept only for that.
    _watcher: RecommendedWatcher,
}

impl FileWatch {
    /// Watch `paths`. Paths whose directory is missing, or which cannot be watched, are
    /// skipped with a warning; `None` when nothing at all can be watched.
    pub(crate) fn start(
        paths: &[PathBuf],
        self_writes: SelfWrites,
        debounce: Duration,
    ) -> Option<Self> {
        let mut names = HashMap::new();
        let mut dirs = BTreeSet::new();
        for path in paths {
            match kernel_names(path) {
                Ok((dir, aliases)) => {
                    for alias in aliases {
                        names.insert(alias, path.clone());
                    }
                    dirs.insert(dir);
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "not watching file for changes");
                }
            }
        }
        if dirs.is_empty() {
            return None;
        }
        let shared = Arc::new(Shared {
            names,
            pending: Mutex::new(BTreeSet::new()),
            notify: Notify::new(),
        });
        let handler = {
            let shared = Arc::clone(&shared);
            move |event| shared.handle(event)
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(err) => {
                tracing::warn!(error = %err, "cannot create a file watcher; file changes will wait for the next interval");
                return None;
            }
        };
        let mut watching = 0;
        for dir in &dirs {
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => watching += 1,
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot watch directory; its files' changes will wait for the next interval");
                }
            }
        }
        if watching == 0 {
            return None;
        }
        Some(Self {
            shared,
            self_writes,
            debounce,
            deadline: None,
            _watcher: watcher,
        })
    }

    /// The next non-empty batch of changed files (caller-given paths), without our own writes.
    ///
    /// Cancel-safe: dropping the future loses nothing; an open batch stays open.
    pub(crate) async fn changed(&mut self) -> BTreeSet<PathBuf> {
        loop {
            match self.deadline {
                None => {
                    self.shared.notify.notified().await;
                    self.deadline = Some(Instant::now() + self.debounce);
                }
                Some(deadline) => {
                    tokio::time::sleep_until(deadline).await;
                    self.deadline = None;
                    let mut batch = self.shared.take();
                    batch.retain(|p| !self.self_writes.is_own(p));
                    if !batch.is_empty() {
                        return batch;
                    }
                }
            }
        }
    }
}

/// The directory to watch for `path`, and the paths inotify will report for changes of it.
///
/// Besides the file's own name, a symlink whose relative target goes through another entry of
/// the same directory (a Kubernetes ConfigMap volume: `subjects -> ..data/subjects`, updated by
/// renaming a new `..data` over the old one) also answers to that entry's name.
fn kernel_names(path: &Path) -> io::Result<(PathBuf, Vec<PathBuf>)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path does not name a file"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = fs::canonicalize(parent).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("directory {} is not usable: {err}", parent.display()),
        )
    })?;
    let mut aliases = vec![dir.join(name)];
    if let Ok(target) = fs::read_link(path)
        && target.is_relative()
        && let Some(Component::Normal(first)) = target.components().next()
        && first != name
    {
        aliases.push(dir.join(first));
    }
    Ok((dir, aliases))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Generous: inotify is fast, but CI machines are not.
    const DEADLINE: Duration = Duration::from_secs(10);
    const DEBOUNCE: Duration = Duration::from_millis(200);

    struct Fixture {
        dir: tempfile::TempDir,
        target: PathBuf,
        sentinel: PathBuf,
        watch: FileWatch,
        self_writes: SelfWrites,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("auth.json");
        let sentinel = dir.path().join("sentinel");
        fs::write(&target, "{}").expect("write target");
        fs::write(&sentinel, "0").expect("write sentinel");
        let self_writes = SelfWrites::new();
        let watch = FileWatch::start(
            &[target.clone(), sentinel.clone()],
            self_writes.clone(),
            DEBOUNCE,
        )
        .expect("watch starts");
        Fixture {
            dir,
            target,
            sentinel,
            watch,
            self_writes,
        }
    }

    async fn next_batch(watch: &mut FileWatch) -> BTreeSet<PathBuf> {
        tokio::time::timeout(DEADLINE, watch.changed())
            .await
            .expect("a change batch before the deadline")
    }

    /// Proves that nothing was reported for earlier activity: events arrive in order, so if
    /// the earlier activity had produced a batch, it would come before the sentinel's.
    async fn assert_only_sentinel_next(f: &mut Fixture) {
        fs::write(&f.sentinel, "poke").expect("poke sentinel");
        let batch = next_batch(&mut f.watch).await;
        assert_eq!(batch, BTreeSet::from([f.sentinel.clone()]));
    }

    fn set(p: &Path) -> BTreeSet<PathBuf> {
        BTreeSet::from([p.to_path_buf()])
    }

    #[tokio::test]
    async fn an_in_place_write_triggers() {
        let mut f = fixture();
        fs::write(&f.target, "{\"a\":1}").expect("write");
        assert_eq!(next_batch(&mut f.watch).await, set(&f.target));
    }

    #[tokio::test]
    async fn a_rename_over_triggers() {
        let mut f = fixture();
        let tmp = f.dir.path().join(".auth.json.tmp");
        fs::write(&tmp, "{\"b\":2}").expect("write tmp");
        fs::rename(&tmp, &f.target).expect("rename");
        assert_eq!(next_batch(&mut f.watch).await, set(&f.target));
    }

    #[tokio::test]
    async fn a_delete_and_recreate_triggers_each_time() {
        let mut f = fixture();
        fs::remove_file(&f.target).expect("delete");
        assert_eq!(next_batch(&mut f.watch).await, set(&f.target));
        fs::write(&f.target, "{}").expect("recreate");
        assert_eq!(next_batch(&mut f.watch).await, set(&f.target));
        // The directory watch survives the old inode going away.
        fs::write(&f.target, "{\"c\":3}").expect("write again");
        assert_eq!(next_batch(&mut f.watch).await, set(&f.target));
    }

    #[tokio::test]
    async fn a_truncation_triggers() {
        let mut f = fixture();
        fs::OpenOptions::new()
            .write(true)
            .open(&f.target)
            .expect("open")
            .set_len(0)
            .expect("truncate");
        assert_eq!(next_batch(&mut f.watch).await, set(&f.target));
    }

    #[tokio::test]
    async fn a_recorded_own_atomic_write_does_not_trigger() {
        let mut f = fixture();
        let mut tmp = tempfile::NamedTempFile::new_in(f.dir.path()).expect("tmp");
        tmp.write_all(b"{\"ours\":true}").expect("write tmp");
        tmp.as_file().sync_all().expect("fsync");
        let identity = FileIdentity::from_metadata(&tmp.as_file().metadata().expect("metadata"));
        f.self_writes.record(&f.target, identity);
        tmp.persist(&f.target).expect("rename into place");
        assert_only_sentinel_next(&mut f).await;
    }

    #[tokio::test]
    async fn a_recorded_own_in_place_write_does_not_trigger_but_a_later_edit_does() {
        let mut f = fixture();
        fs::write(&f.target, "{\"ours\":1}").expect("write");
        f.self_writes.record_current(&f.target).expect("record");
        assert_only_sentinel_next(&mut f).await;
        fs::write(&f.target, "{\"hand\":\"edit\"}").expect("hand edit");
        assert_eq!(next_batch(&mut f.watch).await, set(&f.target));
    }

    #[tokio::test]
    async fn other_files_and_reads_do_not_trigger() {
        let mut f = fixture();
        fs::write(f.dir.path().join("unrelated"), "x").expect("write other");
        fs::read(&f.target).expect("read target");
        assert_only_sentinel_next(&mut f).await;
    }

    #[tokio::test]
    async fn a_configmap_style_symlink_swap_triggers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::create_dir(d.join("..v1")).expect("v1");
        fs::write(d.join("..v1/subjects"), "a").expect("v1 file");
        std::os::unix::fs::symlink("..v1", d.join("..data")).expect("data link");
        std::os::unix::fs::symlink("..data/subjects", d.join("subjects")).expect("file link");
        let path = d.join("subjects");
        let mut watch = FileWatch::start(std::slice::from_ref(&path), SelfWrites::new(), DEBOUNCE)
            .expect("watch starts");

        fs::create_dir(d.join("..v2")).expect("v2");
        fs::write(d.join("..v2/subjects"), "b").expect("v2 file");
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).expect("tmp link");
        fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap");
        assert_eq!(next_batch(&mut watch).await, set(&path));
    }

    #[tokio::test]
    async fn missing_directories_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no/such/dir/auth.json");
        assert!(
            FileWatch::start(std::slice::from_ref(&missing), SelfWrites::new(), DEBOUNCE).is_none()
        );

        let present = dir.path().join("auth.json");
        let mut watch = FileWatch::start(&[missing, present.clone()], SelfWrites::new(), DEBOUNCE)
            .expect("the present one is watched");
        fs::write(&present, "{}").expect("create");
        assert_eq!(next_batch(&mut watch).await, set(&present));
    }

    #[test]
    fn identity_ignores_spelling_and_sees_every_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        fs::write(&path, "one").expect("write");
        let writes = SelfWrites::new();
        writes.record_current(&path).expect("record");
        assert!(writes.is_own(&path));
        assert!(writes.is_own(&dir.path().join(".").join("f")));
        fs::write(&path, "two!").expect("rewrite");
        assert!(!writes.is_own(&path));
        fs::remove_file(&path).expect("delete");
        assert!(!writes.is_own(&path));
    }
}
