//! Observe: what a pass looks at — the two subject files, the admitted users (through the
//! [`Admission`](crate::pass::apply::Admission) seam) and the director: a full listing, or
//! the deployments the event log named, refetched into the view the passes keep (§6.6).
//! Every read a pass makes is here; nothing here decides anything, and nothing here reports:
//! what was found is returned.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;

use metrics::Label;
use tokio::time::Instant;

use crate::authfile::{self, AuthFileError, Observed};
use crate::director::{self, Event, EventsQuery, Refetched};
use crate::pass::apply::FileAdmission;
use crate::pass::desired::{self, Desired, Subject, Subjects};
use crate::pass::watch::{self, Pager, Position, Read, View, Watch};
use crate::pass::{PassError, Paths};
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

/// What is admitted now — the observe side of the admission seam (its apply side is
/// [`Admission`](crate::pass::Admission)): file mode's auth file, callout mode's state file.
pub trait Admitted: Send + Sync {
    /// What holds the admitted users, for log lines.
    fn location(&self) -> &Path;
    /// What is admitted now, compared with `wanted`: cheaply when they are the same.
    fn compare(&self, wanted: &UserSet) -> Result<FileState, AuthFileError>;
    /// What is admitted now, read whole (the bootstrap rule looks at it).
    fn read(&self) -> Result<Observed, AuthFileError>;
}

/// File mode: the users the auth file holds.
impl<R: Send + Sync> Admitted for FileAdmission<R> {
    fn location(&self) -> &Path {
        &self.path
    }

    fn compare(&self, wanted: &UserSet) -> Result<FileState, AuthFileError> {
        file_against(&self.path, wanted)
    }

    fn read(&self) -> Result<Observed, AuthFileError> {
        authfile::read(&self.path)
    }
}

/// A file in the auth file's format compared with `wanted`: bytes first, streaming; parsed
/// only when the bytes differ.
pub fn file_against(path: &Path, wanted: &UserSet) -> Result<FileState, AuthFileError> {
    if authfile::matches(path, wanted)? {
        return Ok(FileState::Holds);
    }
    authfile::read(path).map(FileState::Differs)
}

/// What a pass observed: the subject files (and the kinds whose content was refused), the
/// director's VMs as the desired users they mean (§3), and what is admitted now compared
/// with them.
pub struct Observation {
    pub refused: Vec<SubjectKind>,
    pub desired: Desired,
    pub file: FileState,
    /// Deployments refetched by a partial pass.
    pub refetched: Option<usize>,
    /// When the events that announced new agents were read, for the admission histogram.
    pub announced: Vec<Instant>,
}

/// A pass that could not observe: why, and the subjects it had read (the bootstrap rule
/// uses them when the director failed, §6.3).
pub struct Unobserved {
    pub error: PassError,
    pub subjects: Subjects,
    pub refused: Vec<SubjectKind>,
    /// The director failed (rather than the admitted users' file).
    pub director_failed: bool,
}

/// Step 1 of a pass: every read it makes — the subject files, the director (a full
/// listing, or with the watch the deployments its event log named), and the admitted users —
/// and the desired users they mean.
pub async fn pass<D: Director, A: Admitted>(
    client: &D,
    following: Option<&mut Following>,
    scope: Scope,
    admitted: &A,
    paths: &Paths,
) -> Result<Observation, Unobserved> {
    let (subjects, refused) = self::subjects(
        paths.director_subject.as_deref(),
        paths.hm_subject.as_deref(),
    );
    let seen = match director(client, following, scope).await {
        Ok(seen) => seen,
        Err(e) => {
            return Err(Unobserved {
                error: e.into(),
                subjects,
                refused,
                director_failed: true,
            });
        }
    };
    let desired = desired::compute(&subjects, seen.vms);
    match admitted.compare(&desired.users) {
        Ok(file) => Ok(Observation {
            refused,
            desired,
            file,
            refetched: seen.refetched,
            announced: seen.announced,
        }),
        Err(e) => Err(Unobserved {
            error: e.into(),
            subjects,
            refused,
            director_failed: false,
        }),
    }
}

/// The admitted users, as compared with the users a pass wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    /// The file holds exactly the bytes writing the wanted users would produce: the steady
    /// state, found without parsing the file.
    Holds,
    /// Its bytes differ; this is what it holds (§4.2), to compare as values (§4.3).
    Differs(Observed),
}

impl FileState {
    /// What the file holds, in words (`diff` prints it): `wanted` when it holds them.
    pub fn describe(&self, wanted: &crate::users::UserSet) -> String {
        match self {
            FileState::Holds => format!("{} users", wanted.len()),
            FileState::Differs(observed) => observed.describe(),
        }
    }
}

/// Whose subject file a subject was read from (§3.2): the `kind` label of
/// `bosh_nats_sync_subjects_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    Director,
    HealthMonitor,
}

impl Label for SubjectKind {
    const ALL: &'static [Self] = &[Self::Director, Self::HealthMonitor];

    fn as_str(self) -> &'static str {
        match self {
            Self::Director => "director",
            Self::HealthMonitor => "hm",
        }
    }
}

/// Reads both subject files (§3.2). Missing, unreadable or blank = unknown; a subject with
/// control characters is refused and logged, and its kind returned with the refusals.
pub fn subjects(director: Option<&Path>, hm: Option<&Path>) -> (Subjects, Vec<SubjectKind>) {
    let mut refused = Vec::new();
    let subjects = Subjects {
        director: subject(director, SubjectKind::Director, &mut refused),
        hm: subject(hm, SubjectKind::HealthMonitor, &mut refused),
    };
    (subjects, refused)
}

fn subject(
    path: Option<&Path>,
    kind: SubjectKind,
    refused: &mut Vec<SubjectKind>,
) -> Option<Subject> {
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
            refused.push(kind);
            None
        }
    }
}

/// With the watch on (§6.6): what the passes keep of the director between them — the watch
/// itself, and every deployment's VMs as the passes last saw them (none before the first
/// full pass).
pub struct Following {
    pub watch: Watch,
    pub view: Option<View>,
}

/// How much of the director a pass looks at; everything after that is the same (§6.6). The
/// kind of a pass: the `kind` label of `bosh_nats_sync_watch_passes_total` and the `kind` of
/// its span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every deployment: `/info`, `/deployments`, every `/vms`.
    Full,
    /// The deployments the event log named since they were last fetched, over the view the
    /// passes keep; none, when only the auth file or a subject file changed.
    Partial,
}

impl Label for Scope {
    const ALL: &'static [Self] = &[Self::Full, Self::Partial];

    fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Partial => "partial",
        }
    }
}

/// What a pass found of the director.
pub struct Seen {
    pub vms: Vec<Vm>,
    /// Deployments refetched by a partial pass.
    pub refetched: Option<usize>,
    /// When the events that announced new agents were read, for the admission histogram.
    pub announced: Vec<Instant>,
}

/// The director's part of a pass: a full listing, or the dirty deployments refetched into
/// the view (§6.6). With the watch on, the view is kept for the next partial pass, and a
/// full listing tells the watch which deployments changed.
pub async fn director<D: Director>(
    director: &D,
    following: Option<&mut Following>,
    scope: Scope,
) -> Result<Seen, director::Error> {
    let Some(Following { watch, view }) = following else {
        let view = director.fetch_view().await?;
        return Ok(Seen {
            vms: vms(&view),
            refetched: None,
            announced: Vec::new(),
        });
    };
    match (scope, view.as_mut()) {
        (Scope::Partial, Some(view)) => refetch_dirty(director, watch, view).await,
        // A full pass, or a partial one before any view exists.
        _ => {
            let listed = director.fetch_view().await?;
            let mut announced = Vec::new();
            let changed = match view.as_ref() {
                Some(before) => {
                    let changed = watch::changed(before, &listed);
                    for name in &changed {
                        if let Some(since) = watch.dirty_since(name)
                            && let Some(vms) = listed.get(name)
                            && has_new_agents(before.get(name).map(Vec::as_slice), vms)
                        {
                            announced.push(since);
                        }
                    }
                    changed
                }
                None => BTreeSet::new(),
            };
            watch.listed(changed);
            let vms = vms(&listed);
            *view = Some(listed);
            Ok(Seen {
                vms,
                refetched: None,
                announced,
            })
        }
    }
}

/// A partial pass's look at the director: the dirty deployments' VMs, into `view`. A `404`
/// drops a deployment only once `/deployments` confirms it is gone: a partial pass keeps a
/// wrong answer until the next event or resync.
async fn refetch_dirty<D: Director>(
    director: &D,
    watch: &mut Watch,
    view: &mut View,
) -> Result<Seen, director::Error> {
    let dirty = watch.dirty();
    let mut announced = Vec::new();
    if !dirty.is_empty() {
        let answers = director.refetch(&dirty).await?;
        let gone = answers.iter().any(|(_, a)| *a == Refetched::Gone);
        let listed = if gone {
            director.deployment_names().await?
        } else {
            Vec::new()
        };
        for (name, answer) in answers {
            let grew = match answer {
                Refetched::Vms(vms) => {
                    let grew = has_new_agents(view.get(&name).map(Vec::as_slice), &vms);
                    view.insert(name.clone(), vms);
                    grew
                }
                Refetched::Gone if listed.contains(&name) => {
                    tracing::warn!(
                        deployment = %name,
                        "the director answered 404 for the VMs of a deployment it still lists; keeping its last known VMs"
                    );
                    false
                }
                Refetched::Gone => {
                    view.remove(&name);
                    false
                }
            };
            if grew && let Some(since) = watch.dirty_since(&name) {
                announced.push(since);
            }
        }
        watch.fetched(&dirty);
    }
    Ok(Seen {
        vms: vms(view),
        refetched: Some(dirty.len()),
        announced,
    })
}

/// Whether `after` reports an agent id that `before` did not.
fn has_new_agents(before: Option<&[Vm]>, after: &[Vm]) -> bool {
    let known: BTreeSet<&str> = before
        .unwrap_or_default()
        .iter()
        .filter_map(|vm| vm.agent_id.as_deref())
        .collect();
    after
        .iter()
        .filter_map(|vm| vm.agent_id.as_deref())
        .any(|id| !known.contains(id))
}
