//! Callout mode's side of the [`Admission`] seam (§12.4): the admitted users are persisted in
//! the state file — the observed state a pass compares with, written atomically like the
//! auth file and in the same format — and loaded into the [`Publisher`] the responder reads.
//! nats-server is never reloaded for them.
//!
//! A store only persists; the load that follows it swaps the stored users in. At start-up the
//! persisted set is loaded before the first pass, so a restart answers from what an earlier
//! process persisted.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::authfile::{self, AuthFileError, Observed};
use crate::pass::observe::{Admitted, FileState, file_against};
use crate::pass::{Admission, Loaded, WriteHook};
use crate::reload::ReloadError;
use crate::users::UserSet;

use super::admitted::{AdmittedSet, Publisher};

/// The state file and the published set.
pub struct CalloutAdmission {
    state_file: PathBuf,
    publisher: Publisher,
    on_write: Option<WriteHook>,
    /// What the last store persisted, until a load swaps it in.
    stored: Mutex<Option<AdmittedSet>>,
}

impl CalloutAdmission {
    pub fn new(state_file: PathBuf, publisher: Publisher) -> Self {
        Self {
            state_file,
            publisher,
            on_write: None,
            stored: Mutex::new(None),
        }
    }

    fn swap(&self, admitted: AdmittedSet) {
        self.publisher.swap(admitted);
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Loads the persisted set, for the answers a restarted process gives before its first
    /// pass. A missing or unreadable state file loads nothing: the first pass will.
    pub fn load_persisted(&self) -> Result<usize, AuthFileError> {
        match authfile::read(&self.state_file)? {
            Observed::Users(users) => {
                let admitted = AdmittedSet::of(&users);
                let n = admitted.len();
                self.swap(admitted);
                Ok(n)
            }
            _ => Ok(0),
        }
    }
}

impl Admitted for CalloutAdmission {
    fn location(&self) -> &Path {
        &self.state_file
    }

    fn compare(&self, wanted: &UserSet) -> Result<FileState, AuthFileError> {
        file_against(&self.state_file, wanted)
    }

    fn read(&self) -> Result<Observed, AuthFileError> {
        authfile::read(&self.state_file)
    }
}

impl Admission for CalloutAdmission {
    fn store(&self, users: &UserSet) -> Result<(), AuthFileError> {
        let meta = authfile::write(&self.state_file, users)?;
        if let Some(hook) = &self.on_write {
            hook(&self.state_file, &meta);
        }
        *self.stored.lock().unwrap_or_else(|e| e.into_inner()) = Some(AdmittedSet::of(users));
        Ok(())
    }

    /// Swaps in what the last store persisted. Without a store since the last load (the
    /// first pass of a process, or a load retried) the published set already holds the
    /// persisted one: [`CalloutAdmission::load_persisted`] read it at start-up.
    async fn load(&self) -> Result<Loaded, ReloadError> {
        let stored = self.stored.lock().unwrap_or_else(|e| e.into_inner()).take();
        match stored {
            Some(admitted) => self.swap(admitted),
            None => self.publisher.mark_loaded(),
        }
        Ok(Loaded::InMemory {
            agents: self.publisher.current().len(),
        })
    }

    fn clean_up(&self) -> usize {
        authfile::remove_stale_temp_files(&self.state_file)
    }

    fn pass_finished(&self, began: tokio::time::Instant, full: bool) {
        self.publisher.pass_finished(began, full);
    }

    fn bootstraps(&self) -> bool {
        false
    }

    fn set_on_write(&mut self, hook: WriteHook) {
        self.on_write = Some(hook);
    }
}
