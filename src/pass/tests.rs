//! A whole pass — observe → decide → apply — with a scripted director and nats-server, a
//! real auth file in a temporary directory, and paused time: the rules of §5.3 and §6.2–§6.5
//! as a pass carries them from one pass to the next.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::path::Path;

use super::*;
use crate::authfile;
use crate::director::Refetched;
use crate::pass::desired::{Subject, compute};
use crate::pass::watch::View;
use crate::reload::Reloaded;
use crate::users::UserSet;
use crate::vm::Vm;

/// A director that answers as scripted, one answer per read; the last answer repeats.
struct ScriptedDirector(Mutex<VecDeque<Result<Vec<Vm>, ()>>>);

impl ScriptedDirector {
    fn new(answers: impl IntoIterator<Item = Result<Vec<Vm>, ()>>) -> Self {
        Self(Mutex::new(answers.into_iter().collect()))
    }
}

impl Director for ScriptedDirector {
    /// One deployment, `d`, holding the scripted VMs.
    fn fetch_view(&self) -> impl Future<Output = Result<View, director::Error>> + Send {
        let mut answers = self.0.lock().unwrap();
        let answer = if answers.len() > 1 {
            answers.pop_front()
        } else {
            answers.front().cloned()
        }
        .expect("the script has an answer");
        async move {
            answer
                .map(|vms| View::from([("d".to_owned(), vms)]))
                .map_err(|()| director::Error::Connection {
                    endpoint: "info",
                    url: "https://director.test:25555/info".into(),
                    detail: "connection refused".into(),
                })
        }
    }
    // Without the watch a pass reads nothing else; the watch's tests have their own director.
    async fn events(
        &self,
        _: director::EventsQuery,
    ) -> Result<Vec<director::Event>, director::Error> {
        unreachable!("a pass without the watch reads no events")
    }
    async fn deployment_names(&self) -> Result<Vec<String>, director::Error> {
        unreachable!("a pass without the watch lists no names alone")
    }
    async fn refetch(&self, _: &[String]) -> Result<Vec<(String, Refetched)>, director::Error> {
        unreachable!("a pass without the watch refetches nothing")
    }
}

/// What a scripted nats-server does with one reload.
#[derive(Debug, Clone, Copy)]
enum Step {
    Load,
    Reject,
    /// Never answers: the pass is cut short while it waits.
    Hang,
}

/// A nats-server that reloads as scripted (the last step repeats) and counts the reloads
/// asked of it.
struct ScriptedServer {
    steps: Mutex<VecDeque<Step>>,
    asked: AtomicUsize,
}

impl ScriptedServer {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            steps: Mutex::new(steps.into_iter().collect()),
            asked: AtomicUsize::new(0),
        }
    }
    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

impl Reload for ScriptedServer {
    fn reload(&self) -> impl Future<Output = Result<Reloaded, ReloadError>> + Send {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let mut steps = self.steps.lock().unwrap();
        let step = if steps.len() > 1 {
            steps.pop_front()
        } else {
            steps.front().copied()
        }
        .expect("the script has a step");
        async move {
            match step {
                Step::Load => Ok(Reloaded::Verified),
                Step::Reject => Err(ReloadError::NotApplied {
                    before: "2026-12-02T00:00:00Z".into(),
                    waited: Duration::from_secs(5),
                }),
                Step::Hang => std::future::pending().await,
            }
        }
    }
}

struct Setup<D = ScriptedDirector> {
    _dir: tempfile::TempDir,
    auth_file: PathBuf,
    health: Arc<Health>,
    writes: Arc<AtomicUsize>,
    reconciler: Reconciler<D, FileAdmission<ScriptedServer>>,
}

const DIRECTOR_DN: &str = "C=USA, O=Cloud Foundry, CN=default.director.bosh-internal";
const HM_DN: &str = "C=USA, O=Cloud Foundry, CN=default.hm.bosh-internal";

fn setup(
    file: Option<&[u8]>,
    director: ScriptedDirector,
    server: ScriptedServer,
    damping: DampingSettings,
) -> Setup {
    setup_with(file, director, server, damping)
}

fn setup_with<D: Director>(
    file: Option<&[u8]>,
    director: D,
    server: ScriptedServer,
    damping: DampingSettings,
) -> Setup<D> {
    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("auth.json");
    if let Some(bytes) = file {
        std::fs::write(&auth_file, bytes).unwrap();
    }
    let (director_subject, hm_subject) = (dir.path().join("director"), dir.path().join("hm"));
    std::fs::write(&director_subject, format!("subject={DIRECTOR_DN}\n")).unwrap();
    std::fs::write(&hm_subject, HM_DN).unwrap();
    let metrics = Arc::new(Metrics::with_labels(
        metrics::BuildInfo::UNKNOWN,
        &report::labels(),
    ));
    let health = Arc::new(Health::new(
        metrics.clone(),
        Duration::from_secs(600),
        Watch::unreported(),
    ));
    let writes = Arc::new(AtomicUsize::new(0));
    let counter = writes.clone();
    let paths = Paths {
        auth_file: auth_file.clone(),
        director_subject: Some(director_subject),
        hm_subject: Some(hm_subject),
    };
    let reconciler = Reconciler::new(paths, damping, director, server, metrics, health.clone())
        .on_write(Arc::new(move |_, _| {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
    Setup {
        _dir: dir,
        auth_file,
        health,
        writes,
        reconciler,
    }
}

fn vms(ids: impl IntoIterator<Item = usize>) -> Vec<Vm> {
    ids.into_iter()
        .map(|i| Vm {
            agent_id: Some(format!("agent-{i}")),
            permanent_nats_credentials: true,
        })
        .collect()
}

fn subjects() -> Subjects {
    Subjects {
        director: Subject::parse(DIRECTOR_DN).unwrap(),
        hm: Subject::parse(HM_DN).unwrap(),
    }
}

/// The file's users, read back.
fn file_users(path: &Path) -> Option<UserSet> {
    authfile::read(path).unwrap().users().cloned()
}

impl<D: Director> Setup<D> {
    async fn pass(&self) -> Result<Report, PassError> {
        self.reconciler.full_pass(Span::none()).await
    }
    fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
}

const PLACEHOLDER: &[u8] = b"{authorization: {token: f0oBar}}";

#[tokio::test(start_paused = true)]
async fn bootstrap_before_the_director_first_answers_then_the_director_s_users() {
    let s = setup(
        Some(PLACEHOLDER),
        ScriptedDirector::new([Err(()), Ok(vms(0..3))]),
        ScriptedServer::new([Step::Load]),
        DampingSettings::default(),
    );
    // The director is down: the director and health monitor can reach NATS all the same.
    let e = s.pass().await.unwrap_err();
    assert_eq!(e.reason(), "connection");
    assert_eq!(
        file_users(&s.auth_file),
        Some(compute(&subjects(), vec![]).users)
    );
    assert_eq!(
        (s.writes(), s.reconciler.admission().reloader().asked()),
        (1, 1)
    );
    assert!(s.health.is_ready(), "the bootstrap users were loaded");
    // It answers: its agents are written and loaded.
    let report = s.pass().await.unwrap();
    assert!(report.written);
    assert_eq!(report.reloaded, Some(Reloaded::Verified));
    assert_eq!(
        file_users(&s.auth_file),
        Some(compute(&subjects(), vms(0..3)).users)
    );
    assert_eq!(
        (s.writes(), s.reconciler.admission().reloader().asked()),
        (2, 2)
    );
    // Converged: nothing is written, nothing reloaded.
    let report = s.pass().await.unwrap();
    assert!(!report.written && report.reloaded.is_none());
    assert_eq!(
        (s.writes(), s.reconciler.admission().reloader().asked()),
        (2, 2)
    );
}

/// Once the director has answered, a file that lost its users is rebuilt from the director
/// in one write: a bootstrap write first would drop every connected agent for the length of
/// the pass.
#[tokio::test(start_paused = true)]
async fn never_bootstrap_after_the_director_has_answered() {
    let s = setup(
        None,
        ScriptedDirector::new([Ok(vms(0..3))]),
        ScriptedServer::new([Step::Load]),
        DampingSettings::default(),
    );
    s.pass().await.unwrap();
    let writes = s.writes();
    std::fs::write(&s.auth_file, b"").unwrap();
    let report = s.pass().await.unwrap();
    assert!(report.written);
    assert_eq!(
        s.writes(),
        writes + 1,
        "one write, straight to the director's users"
    );
    assert_eq!(
        file_users(&s.auth_file),
        Some(compute(&subjects(), vms(0..3)).users)
    );
}

/// With the director down and the file without users, the bootstrap users are still what
/// gets written (§6.3) — even after the director has answered before.
#[tokio::test(start_paused = true)]
async fn a_failing_director_still_gets_a_file_without_users_the_bootstrap_users() {
    let s = setup(
        None,
        ScriptedDirector::new([Ok(vms(0..3)), Err(())]),
        ScriptedServer::new([Step::Load]),
        DampingSettings::default(),
    );
    s.pass().await.unwrap();
    std::fs::remove_file(&s.auth_file).unwrap();
    s.pass().await.unwrap_err();
    assert_eq!(
        file_users(&s.auth_file),
        Some(compute(&subjects(), vec![]).users)
    );
    // A file that holds users is left alone while the director is down.
    let writes = s.writes();
    s.pass().await.unwrap_err();
    assert_eq!(s.writes(), writes);
}

#[tokio::test(start_paused = true)]
async fn a_reload_stays_pending_after_a_failed_one() {
    let s = setup(
        None,
        ScriptedDirector::new([Ok(vms(0..3))]),
        // The bootstrap reload loads; the full file is rejected once, then loaded.
        ScriptedServer::new([Step::Load, Step::Reject, Step::Load]),
        DampingSettings::default(),
    );
    let e = s.pass().await.unwrap_err();
    assert_eq!(e.reason(), "reload_rejected");
    assert_eq!(s.reconciler.admission().reloader().asked(), 2);
    // The file already holds the users: the next pass writes nothing but reloads again.
    let report = s.pass().await.unwrap();
    assert!(!report.written);
    assert_eq!(report.reloaded, Some(Reloaded::Verified));
    // And once loaded, not again.
    assert_eq!(s.pass().await.unwrap().reloaded, None);
    assert_eq!(s.reconciler.admission().reloader().asked(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_reload_stays_pending_after_a_cancelled_one() {
    let s = setup(
        Some(PLACEHOLDER),
        ScriptedDirector::new([Ok(vms(0..3))]),
        // The bootstrap users load; the reload of the full file never answers.
        ScriptedServer::new([Step::Load, Step::Hang, Step::Load]),
        DampingSettings::default(),
    );
    // The pass timeout drops the pass while nats-server does not answer.
    let cut = tokio::time::timeout(Duration::from_secs(300), s.pass()).await;
    assert!(cut.is_err(), "the pass was cut short");
    assert_eq!(
        file_users(&s.auth_file),
        Some(compute(&subjects(), vms(0..3)).users)
    );
    assert_eq!(s.reconciler.admission().reloader().asked(), 2);
    let report = s.pass().await.unwrap();
    assert!(!report.written, "the file was complete");
    assert_eq!(
        report.reloaded,
        Some(Reloaded::Verified),
        "the reload was still pending"
    );
    assert_eq!(s.pass().await.unwrap().reloaded, None);
    assert_eq!(s.reconciler.admission().reloader().asked(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_first_pass_reloads_once_even_when_the_file_is_current() {
    let users = compute(&subjects(), vms(0..3)).users;
    let mut bytes = Vec::new();
    authfile::render_into(&mut bytes, &users).unwrap();
    let s = setup(
        Some(&bytes),
        ScriptedDirector::new([Ok(vms(0..3))]),
        ScriptedServer::new([Step::Load]),
        DampingSettings::default(),
    );
    let report = s.pass().await.unwrap();
    assert!(!report.written);
    assert_eq!(
        report.reloaded,
        Some(Reloaded::Verified),
        "§5.3: once at start-up"
    );
    assert_eq!(s.writes(), 0);
    assert_eq!(s.pass().await.unwrap().reloaded, None);
}

#[tokio::test(start_paused = true)]
async fn damping_holds_a_mass_removal_across_passes_then_applies_it() {
    let s = setup(
        None,
        ScriptedDirector::new([Ok(vms(0..40)), Ok(vms([0])), Ok(vms([0])), Ok(vms([0]))]),
        ScriptedServer::new([Step::Load]),
        DampingSettings::default(),
    );
    s.pass().await.unwrap();
    for seen in 1..=2 {
        let report = s.pass().await.unwrap();
        assert_eq!(report.held, Some(39), "pass {seen} holds");
        assert_eq!(report.counts.agent, 40);
        assert_eq!(
            file_users(&s.auth_file),
            Some(compute(&subjects(), vms(0..40)).users)
        );
    }
    let report = s.pass().await.unwrap();
    assert_eq!(report.held, None);
    assert_eq!(report.changes.removed.len(), 39);
    assert_eq!(
        file_users(&s.auth_file),
        Some(compute(&subjects(), vms([0])).users)
    );
}

#[tokio::test(start_paused = true)]
async fn the_dry_run_decides_as_the_next_pass_would_and_changes_nothing() {
    let s = setup(
        None,
        ScriptedDirector::new([Ok(vms(0..40)), Ok(vms([0, 50]))]),
        ScriptedServer::new([Step::Load]),
        DampingSettings::default(),
    );
    s.pass().await.unwrap();
    let before = std::fs::read(&s.auth_file).unwrap();
    let reloads = s.reconciler.admission().reloader().asked();
    let dry = s.reconciler.plan_next().await.unwrap();
    let held = dry
        .decision
        .held
        .as_ref()
        .expect("the mass removal is held");
    assert_eq!((held.removing, held.seen, held.needed), (39, 1, 3));
    assert!(dry.decision.write, "agent-50 would be added");
    assert_eq!(dry.decision.changes.added.len(), 1);
    assert_eq!(std::fs::read(&s.auth_file).unwrap(), before);
    assert_eq!(
        s.reconciler.admission().reloader().asked(),
        reloads,
        "a dry run reloads nothing"
    );
}

/// `diff` prints the plan; a pass applies the same plan and reports the same changes.
#[tokio::test(start_paused = true)]
async fn a_pass_applies_the_plan_diff_prints_when_a_removal_is_held() {
    let s = setup(
        None,
        ScriptedDirector::new([Ok(vms(0..40)), Ok(vms([0, 50]))]),
        ScriptedServer::new([Step::Load]),
        DampingSettings::default(),
    );
    s.pass().await.unwrap();
    let plan = s.reconciler.plan_next().await.unwrap();
    let report = s.pass().await.unwrap();
    let held = plan.decision.held.as_ref().expect("held");
    assert_eq!(report.held, Some(held.removing));
    assert_eq!(report.changes, plan.decision.changes);
    assert_eq!(
        report.changes.added,
        [crate::users::Dn::Agent("agent-50".into(), false)],
        "the addition applies, the held removals are no change"
    );
    assert!(report.changes.removed.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_pass_applies_the_plan_diff_prints_when_only_permissions_differ() {
    let s = setup(
        None,
        ScriptedDirector::new([Ok(vms(0..3))]),
        ScriptedServer::new([Step::Load]),
        DampingSettings::default(),
    );
    s.pass().await.unwrap();
    // A hand edit grants the director one more subject.
    let text = std::fs::read_to_string(&s.auth_file).unwrap();
    let edited = text.replacen("\"director.>\"", "\"director.>\", \"_INBOX.>\"", 1);
    assert_ne!(edited, text);
    std::fs::write(&s.auth_file, edited).unwrap();
    let plan = s.reconciler.plan_next().await.unwrap();
    assert!(plan.decision.write);
    assert_eq!(
        plan.decision.changes.changed,
        [crate::users::Dn::Other(DIRECTOR_DN.into())]
    );
    assert!(plan.decision.changes.added.is_empty() && plan.decision.changes.removed.is_empty());
    let report = s.pass().await.unwrap();
    assert!(report.written);
    assert_eq!(report.changes, plan.decision.changes);
}

mod watched;
