//! Apply: what a pass does about its decision — the atomic write of the auth file, then the
//! reload and its verification (§4.4, §5). The write is synchronous and atomic and the reload
//! is the last step, so a pass dropped at any await point is never half-applied: the file is
//! the old one or the new one, and a reload that did not finish stays pending.

use std::future::Future;

use monitoring::ReloadOutcome;

use crate::authfile::{self, AuthFileError};
use crate::pass::Reconciler;
use crate::pass::decide::Memory;
use crate::pass::observe::Director;
use crate::reload::{ReloadError, Reloaded, Reloader};
use crate::users::UserSet;

/// nats-server, as a pass reloads it. The real one is [`Reloader`] (a signal, then `/varz`
/// verification); tests give a pass one that answers as they script it.
pub trait Reload: Send + Sync {
    /// Makes the server load the auth file. Cancel-safe: an abandoned reload is simply not
    /// known to have happened.
    fn reload(&self) -> impl Future<Output = Result<Reloaded, ReloadError>> + Send;
}

impl Reload for Reloader {
    fn reload(&self) -> impl Future<Output = Result<Reloaded, ReloadError>> + Send {
        Reloader::reload(self)
    }
}

impl<D: Director, R: Reload> Reconciler<D, R> {
    /// Replaces the auth file with `users` (§4.4) and marks a reload pending before anything
    /// else can fail.
    pub(super) fn write(&self, memory: &mut Memory, users: &UserSet) -> Result<(), AuthFileError> {
        let path = &self.paths.auth_file;
        let _span =
            tracing::info_span!("write_auth_file", file = %path.display(), users = users.len())
                .entered();
        let meta = authfile::write(path, users)?;
        memory.reload_pending = true;
        if let Some(hook) = &self.on_write {
            hook(path, &meta);
        }
        self.health.auth_file_written();
        tracing::debug!(file = %path.display(), users = users.len(), "wrote the auth file");
        Ok(())
    }

    /// Reloads nats-server. Only a successful reload clears `reload_pending` (§5.3): a failed
    /// one, or one dropped with the pass, is retried by the next pass. Readiness (§7) comes
    /// with the first verified load of a file that holds users (`usable`).
    pub(super) async fn reload(
        &self,
        memory: &mut Memory,
        usable: bool,
    ) -> Result<Reloaded, ReloadError> {
        match self.reloader.reload().await {
            Ok(how) => {
                memory.reload_pending = false;
                self.health.reload_finished(match how {
                    Reloaded::Verified => ReloadOutcome::Verified,
                    Reloaded::Unverified => ReloadOutcome::Unverified,
                });
                if usable {
                    self.health.mark_ready();
                }
                Ok(how)
            }
            Err(e) => {
                self.health.reload_finished(ReloadOutcome::Failed {
                    reason: e.reason(),
                    message: e.to_string(),
                });
                Err(e)
            }
        }
    }
}
