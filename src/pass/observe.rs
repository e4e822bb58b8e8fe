//! Observe: what a pass looks at — the two subject files, the auth file and the director.
//! Every read a pass makes is here; nothing here decides anything.

use std::future::Future;
use std::path::Path;

use monitoring::{Metrics, SubjectKind};

use crate::authfile::{self, AuthFileError, Observed};
use crate::director::{self, Event, EventsQuery, Refetched};
use crate::pass::desired::{Subject, Subjects};
use crate::pass::watch::{Pager, Position, Read, View};
use crate::users::UserSet;
use crate::vm::Vm;

/// The director, as a pass reads it: every VM of every deployment in one read (a full pass),
/// or the parts the watch reads (§6.6): the event log, the deployment names, the VMs of some
/// deployments. The real one is [`director::Client`]; tests give a pass plain values.
/// Every method is cancel-safe: dropping the future abandons the read.
pub trait Director: Send + Sync {
    /// One full read (§2.1): each deployment's VMs, by name.
    fn fetch_view(&self) -> impl Future<Output = Result<View, director::Error>> + Send;
    /// One page of the event log (§2.5).
    fn events(
        &self,
        query: EventsQuery,
    ) -> impl Future<Output = Result<Vec<Event>, director::Error>> + Send;
    /// The deployment names alone.
    fn deployment_names(&self)
    -> impl Future<Output = Result<Vec<String>, director::Error>> + Send;
    /// The VMs of these deployments, `Gone` for a `404`.
    fn refetch(
        &self,
        names: &[String],
    ) -> impl Future<Output = Result<Vec<(String, Refetched)>, director::Error>> + Send;
}

impl Director for director::Client {
    async fn fetch_view(&self) -> Result<View, director::Error> {
        Ok(director::Client::fetch_view(self)
            .await?
            .into_iter()
            .collect())
    }
    fn events(
        &self,
        query: EventsQuery,
    ) -> impl Future<Output = Result<Vec<Event>, director::Error>> + Send {
        director::Client::events(self, query)
    }
    fn deployment_names(
        &self,
    ) -> impl Future<Output = Result<Vec<String>, director::Error>> + Send {
        director::Client::deployment_names(self)
    }
    fn refetch(
        &self,
        names: &[String],
    ) -> impl Future<Output = Result<Vec<(String, Refetched)>, director::Error>> + Send {
        director::Client::refetch(self, names)
    }
}

/// Every VM of a view, for desired state.
pub fn vms(view: &View) -> Vec<Vm> {
    view.values().flatten().cloned().collect()
}

/// Reads every event newer than `from`, page by page (§2.5, §6.6).
pub async fn read_events<D: Director>(
    director: &D,
    from: Position,
) -> Result<Read, director::Error> {
    let mut pager = Pager::new(from);
    loop {
        let page = director.events(pager.query()).await?;
        if let Some(read) = pager.take(page) {
            return Ok(read);
        }
    }
}

/// The auth file, as compared with the users a pass wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    /// The file holds exactly the bytes writing the wanted users would produce: the steady
    /// state, found without parsing the file.
    Holds,
    /// Its bytes differ; this is what it holds (§4.2), to compare as values (§4.3).
    Differs(Observed),
}

/// Reads the file and compares it with `wanted`: bytes first, streaming; parsed only when the
/// bytes differ.
pub fn auth_file_against(path: &Path, wanted: &UserSet) -> Result<FileState, AuthFileError> {
    if authfile::matches(path, wanted)? {
        return Ok(FileState::Holds);
    }
    authfile::read(path).map(FileState::Differs)
}

/// Reads both subject files (§3.2). Missing, unreadable or blank = unknown; a subject with
/// control characters is refused, logged and counted.
pub fn subjects(director: Option<&Path>, hm: Option<&Path>, metrics: &Metrics) -> Subjects {
    Subjects {
        director: subject(director, SubjectKind::Director, metrics),
        hm: subject(hm, SubjectKind::HealthMonitor, metrics),
    }
}

fn subject(path: Option<&Path>, kind: SubjectKind, metrics: &Metrics) -> Option<Subject> {
    let path = path?;
    let content = match std::fs::read_to_string(path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the subject file; treating the subject as unknown");
            return None;
        }
    };
    match Subject::parse(&content) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "refusing the subject; treating it as unknown");
            metrics.subject_rejected(kind);
            None
        }
    }
}
