//! Apply: making a decision true. *How agents are admitted* is one seam, [`Admission`]: file
//! mode ([`FileAdmission`]) keeps the users in the auth file nats-server includes and makes
//! it reload (§4.4, §5); another mode keeps them elsewhere and answers nats-server from them.
//! Observe reads the admitted users through the same seam, so neither observe nor decide
//! knows which mode runs.
//!
//! A store is synchronous and atomic and a load is the last step, so a pass dropped at any
//! await point is never half-applied: the users are the old ones or the new ones, and a load
//! that did not finish stays pending. The steps return what they did; the report tells the
//! metrics, `/status` and readiness.

use std::fs::Metadata;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::authfile::{self, AuthFileError};
use crate::pass::decide::{Decision, Memory};
use crate::pass::observe::Admitted;
use crate::reload::{ReloadError, Reloaded, Reloader};
use crate::users::UserSet;

/// How the admitted users are replaced and how nats-server is made to take them — the apply
/// side of the admission seam (its observe side is [`Admitted`]).
pub trait Admission: Admitted {
    /// Replaces the admitted users, atomically.
    fn store(&self, users: &UserSet) -> Result<(), AuthFileError>;
    /// Makes nats-server take what was stored. Cancel-safe: an abandoned load is simply not
    /// known to have happened.
    fn load(&self) -> impl Future<Output = Result<Loaded, ReloadError>> + Send;
    /// Removes what an interrupted store left behind; how many were removed. Run once, by
    /// the first pass.
    fn clean_up(&self) -> usize;
    /// A pass that began at `began` succeeded, whatever it changed; `full` when it listed the
    /// whole director (start-up, resync, no watch).
    fn pass_finished(&self, _began: tokio::time::Instant, _full: bool) {}
    /// Registers the hook told about each store's write, so the file watcher can ignore
    /// the events of our own writes.
    fn set_on_write(&mut self, hook: WriteHook);
    /// Whether the bootstrap rule (§6.2) applies: the director's and the health monitor's
    /// users stored while the director has not answered. File mode: yes, they are the auth
    /// file's. Callout mode: no — they are static users of the file `init` wrote, and storing
    /// a set without agents would only take the admitted ones back.
    fn bootstraps(&self) -> bool {
        true
    }
}

/// How nats-server came to admit the stored users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// It reloaded its configuration (file mode).
    Reloaded(Reloaded),
    /// It asks the program, which now answers from the stored users (callout mode): no
    /// reload. How many agents the set the answers come from holds.
    InMemory { agents: usize },
}

/// nats-server, as file mode reloads it. The real one is [`Reloader`] (a signal, then
/// `/varz` verification); tests give a pass one that answers as they script it.
pub trait Reload: Send + Sync {
    /// Makes the server load the auth file. Cancel-safe.
    fn reload(&self) -> impl Future<Output = Result<Reloaded, ReloadError>> + Send;
}

impl Reload for Reloader {
    fn reload(&self) -> impl Future<Output = Result<Reloaded, ReloadError>> + Send {
        Reloader::reload(self)
    }
}

/// A hook told about every write of the auth file, so the file watcher can ignore the
/// events of our own writes.
pub type WriteHook = Arc<dyn Fn(&Path, &Metadata) + Send + Sync>;

/// File mode: the users are the auth file's, and nats-server takes them by reloading.
pub struct FileAdmission<R> {
    pub(super) path: PathBuf,
    reloader: R,
    on_write: Option<WriteHook>,
}

impl<R: Reload> FileAdmission<R> {
    pub fn new(path: PathBuf, reloader: R) -> Self {
        Self {
            path,
            reloader,
            on_write: None,
        }
    }

    pub fn reloader(&self) -> &R {
        &self.reloader
    }
}

impl<R: Reload> Admission for FileAdmission<R> {
    fn store(&self, users: &UserSet) -> Result<(), AuthFileError> {
        let _span =
            tracing::info_span!("write_auth_file", file = %self.path.display(), users = users.len())
                .entered();
        let meta = authfile::write(&self.path, users)?;
        if let Some(hook) = &self.on_write {
            hook(&self.path, &meta);
        }
        tracing::debug!(file = %self.path.display(), users = users.len(), "wrote the auth file");
        Ok(())
    }

    async fn load(&self) -> Result<Loaded, ReloadError> {
        self.reloader.reload().await.map(Loaded::Reloaded)
    }

    fn clean_up(&self) -> usize {
        authfile::remove_stale_temp_files(&self.path)
    }

    fn set_on_write(&mut self, hook: WriteHook) {
        self.on_write = Some(hook);
    }
}

/// Stores `users`, and marks a load pending before anything else can fail.
pub fn store<A: Admission>(
    admission: &A,
    memory: &mut Memory,
    users: &UserSet,
) -> Result<(), AuthFileError> {
    admission.store(users)?;
    memory.reload_pending = true;
    Ok(())
}

/// Makes nats-server take the stored users. Only a success clears `reload_pending` (§5.3):
/// a failed load, or one dropped with the pass, is retried by the next pass.
pub async fn load<A: Admission>(admission: &A, memory: &mut Memory) -> Result<Loaded, ReloadError> {
    let how = admission.load().await?;
    memory.reload_pending = false;
    Ok(how)
}

/// What applying a decision did.
#[derive(Debug)]
pub struct Applied {
    /// The users were stored.
    pub written: bool,
    /// The load asked of nats-server, when one was due.
    pub loaded: Option<Result<Loaded, ReloadError>>,
}

/// Applies `decision`: its memory becomes the pass's (a due load stays pending until it
/// succeeds), then the store and the load it asks for.
pub async fn decision<A: Admission>(
    admission: &A,
    memory: &mut Memory,
    decision: &Decision,
) -> Result<Applied, AuthFileError> {
    *memory = decision.next;
    if decision.write {
        store(admission, memory, &decision.users)?;
    }
    let loaded = if decision.reload {
        Some(load(admission, memory).await)
    } else {
        None
    };
    Ok(Applied {
        written: decision.write,
        loaded,
    })
}
