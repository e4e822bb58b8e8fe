//! Ticks of the loop with the watch on (§6.6): a director with an event log, held as plain
//! values, a scripted nats-server, a real auth file, paused time.

use std::collections::BTreeMap;

use reconcile::{PassContext, Trigger};

use super::*;
use crate::director::{Event, EventsQuery};
use crate::pass::watch::{PAGE_CAP, WatchState};

/// What one deployment's `/vms` answers.
#[derive(Debug, Clone)]
enum Answer {
    Vms(Vec<Vm>),
    /// `404`.
    Missing,
    /// A `500`.
    Fails,
}

#[derive(Debug, Default)]
struct State {
    /// `/deployments` lists these; each answers its `/vms` as given.
    deployments: BTreeMap<String, Answer>,
    /// Oldest first.
    log: Vec<Event>,
    events_fail: bool,
    /// Requests by endpoint: events, deployments, vms (one per deployment), full views.
    events_read: usize,
    names_read: usize,
    vms_read: usize,
    views_read: usize,
}

/// A director whose event log pages like the real one (§2.5): newest first, at most 200,
/// `before_id`, `after_time` (at least T+1).
#[derive(Default)]
struct LogDirector(Mutex<State>);

fn failure() -> director::Error {
    director::Error::Connection {
        endpoint: "vms",
        url: "https://director.test:25555".into(),
        detail: "connection reset".into(),
    }
}

impl LogDirector {
    fn with(f: impl FnOnce(&mut State)) -> Self {
        let director = LogDirector::default();
        f(&mut director.0.lock().unwrap());
        director
    }
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
    /// Records an event naming `deployment`.
    fn event(&self, deployment: Option<&str>) {
        let mut s = self.state();
        let id = s.log.last().map_or(1, |e| e.id + 1);
        s.log.push(Event {
            id,
            parent_id: None,
            timestamp: 1_700_000_000 + id as i64,
            action: Some("create".into()),
            object_type: Some("vm".into()),
            object_name: None,
            deployment: deployment.map(str::to_owned),
            instance: None,
        });
    }
    fn set(&self, deployment: &str, answer: Answer) {
        self.state()
            .deployments
            .insert(deployment.to_owned(), answer);
    }
}

impl Director for LogDirector {
    async fn fetch_view(&self) -> Result<View, director::Error> {
        let mut s = self.state();
        s.views_read += 1;
        s.deployments
            .iter()
            .map(|(name, answer)| match answer {
                Answer::Vms(vms) => Ok((name.clone(), vms.clone())),
                Answer::Missing => Ok((name.clone(), Vec::new())),
                Answer::Fails => Err(failure()),
            })
            .collect()
    }
    async fn events(&self, query: EventsQuery) -> Result<Vec<Event>, director::Error> {
        let mut s = self.state();
        s.events_read += 1;
        if s.events_fail {
            return Err(director::Error::Connection {
                endpoint: "events",
                url: "https://director.test:25555/events".into(),
                detail: "403".into(),
            });
        }
        Ok(s.log
            .iter()
            .rev()
            .filter(|e| query.before_id.is_none_or(|b| e.id < b))
            .filter(|e| query.after_time.is_none_or(|t| e.timestamp > t))
            .take(PAGE_CAP)
            .cloned()
            .collect())
    }
    async fn deployment_names(&self) -> Result<Vec<String>, director::Error> {
        let mut s = self.state();
        s.names_read += 1;
        Ok(s.deployments.keys().cloned().collect())
    }
    async fn refetch(&self, names: &[String]) -> Result<Vec<(String, Refetched)>, director::Error> {
        let mut s = self.state();
        s.vms_read += names.len();
        names
            .iter()
            .map(|name| match s.deployments.get(name) {
                Some(Answer::Vms(vms)) => Ok((name.clone(), Refetched::Vms(vms.clone()))),
                Some(Answer::Missing) | None => Ok((name.clone(), Refetched::Gone)),
                Some(Answer::Fails) => Err(failure()),
            })
            .collect()
    }
}

const SETTINGS: WatchSettings = WatchSettings {
    interval: Duration::from_secs(1),
    resync: Duration::from_secs(300),
    poll: Duration::from_secs(10),
};

fn agents(deployment: &str, n: usize) -> Vec<Vm> {
    (0..n)
        .map(|i| Vm {
            agent_id: Some(format!("{deployment}-agent-{i}")),
            permanent_nats_credentials: true,
        })
        .collect()
}

fn watched(director: LogDirector, damping: DampingSettings) -> Setup<LogDirector> {
    let mut s = setup_with(None, director, ScriptedServer::new([Step::Load]), damping);
    s.reconciler = s.reconciler.follow_events(SETTINGS);
    s
}

fn ctx(pass: u64, failures: u32) -> PassContext {
    PassContext {
        pass,
        triggers: vec![if pass == 1 {
            Trigger::Startup
        } else {
            Trigger::Requeue
        }],
        consecutive_failures: failures,
    }
}

impl Setup<LogDirector> {
    async fn tick(&self, n: u64) -> Result<Tick, PassError> {
        self.reconciler.tick(&ctx(n, 0)).await
    }
    async fn watch_state(&self) -> WatchState {
        let carried = self.reconciler.carried.lock().await;
        carried
            .following
            .as_ref()
            .expect("watch on")
            .watch
            .state()
            .0
    }
    fn director(&self) -> &LogDirector {
        &self.reconciler.director
    }
    fn agents_in_file(&self) -> Vec<String> {
        let mut ids: Vec<String> = file_users(&self.auth_file)
            .unwrap()
            .agents()
            .into_iter()
            .map(|(id, _)| id.to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

fn names(vms: &[Vm]) -> Vec<String> {
    let mut v: Vec<String> = vms.iter().filter_map(|vm| vm.agent_id.clone()).collect();
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn a_quiet_director_costs_one_events_request_a_tick() {
    let s = watched(
        LogDirector::with(|st| {
            st.deployments
                .insert("a".into(), Answer::Vms(agents("a", 2)));
        }),
        DampingSettings::default(),
    );
    s.director().event(Some("a"));
    let first = s.tick(1).await.unwrap();
    let report = first.report.expect("a full pass at start-up");
    assert!(report.refetched.is_none(), "full");
    assert_eq!(first.next, Some(SETTINGS.interval));
    assert_eq!(s.director().state().views_read, 1);
    for n in 2..12 {
        tokio::time::advance(SETTINGS.interval).await;
        let tick = s.tick(n).await.unwrap();
        assert!(tick.report.is_none(), "nothing to look at on tick {n}");
    }
    let st = s.director().state();
    assert_eq!(st.events_read, 11, "one page a tick");
    assert_eq!(
        (st.views_read, st.vms_read, st.names_read),
        (1, 0, 0),
        "and nothing else"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_vm_is_admitted_by_a_partial_pass_over_its_deployment_alone() {
    let s = watched(
        LogDirector::with(|st| {
            st.deployments
                .insert("a".into(), Answer::Vms(agents("a", 2)));
            st.deployments
                .insert("b".into(), Answer::Vms(agents("b", 2)));
        }),
        DampingSettings::default(),
    );
    s.director().event(None);
    let first = s.tick(1).await.unwrap();
    assert_eq!(first.cause.as_deref(), Some("startup"));
    tokio::time::advance(SETTINGS.interval).await;
    s.director().set("b", Answer::Vms(agents("b", 3)));
    s.director().event(Some("b"));
    s.director().event(None);
    let tick = s.tick(2).await.unwrap();
    assert_eq!(tick.cause.as_deref(), Some("events: 1 deployment"));
    let report = tick.report.expect("a partial pass");
    assert_eq!(report.refetched, Some(1));
    assert!(report.written);
    assert_eq!(report.reloaded, Some(Reloaded::Verified));
    let mut expected = names(&agents("a", 2));
    expected.extend(names(&agents("b", 3)));
    expected.sort();
    assert_eq!(s.agents_in_file(), expected);
    let st = s.director().state();
    assert_eq!((st.views_read, st.vms_read), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_404_drops_a_deployment_only_once_the_listing_confirms_it() {
    let s = watched(
        LogDirector::with(|st| {
            st.deployments
                .insert("a".into(), Answer::Vms(agents("a", 2)));
            st.deployments
                .insert("b".into(), Answer::Vms(agents("b", 2)));
        }),
        DampingSettings {
            enabled: false,
            ..DampingSettings::default()
        },
    );
    s.director().event(None);
    s.tick(1).await.unwrap();
    // Still listed, but its VMs answer 404: its agents stay.
    s.director().set("b", Answer::Missing);
    s.director().event(Some("b"));
    let tick = s.tick(2).await.unwrap();
    assert!(!tick.report.unwrap().written);
    assert_eq!(s.agents_in_file().len(), 4);
    assert_eq!(s.director().state().names_read, 1);
    // Deleted for real: gone from /deployments too.
    s.director().state().deployments.remove("b");
    s.director().event(Some("b"));
    let report = s.tick(3).await.unwrap().report.unwrap();
    assert!(report.written);
    assert_eq!(s.agents_in_file(), names(&agents("a", 2)));
}

#[tokio::test(start_paused = true)]
async fn a_failed_refetch_fails_the_pass_keeps_the_view_and_is_retried() {
    let s = watched(
        LogDirector::with(|st| {
            st.deployments
                .insert("a".into(), Answer::Vms(agents("a", 2)));
        }),
        DampingSettings {
            enabled: false,
            ..DampingSettings::default()
        },
    );
    s.director().event(None);
    s.tick(1).await.unwrap();
    s.director().set("a", Answer::Fails);
    s.director().event(Some("a"));
    let e = s.tick(2).await.unwrap_err();
    assert_eq!(e.reason(), "connection");
    assert_eq!(s.agents_in_file().len(), 2, "never treated as no VMs");
    // The retry (after the backoff) refetches it, though no new event names it.
    s.director().set("a", Answer::Vms(agents("a", 3)));
    let retry = s.reconciler.tick(&ctx(3, 1)).await.unwrap();
    assert_eq!(retry.report.unwrap().refetched, Some(1));
    assert_eq!(s.agents_in_file(), names(&agents("a", 3)));
}

#[tokio::test(start_paused = true)]
async fn a_partial_pass_that_would_cut_off_most_agents_is_held() {
    let s = watched(
        LogDirector::with(|st| {
            st.deployments
                .insert("a".into(), Answer::Vms(agents("a", 40)));
        }),
        DampingSettings::default(),
    );
    s.director().event(None);
    s.tick(1).await.unwrap();
    s.director().set("a", Answer::Vms(agents("a", 1)));
    s.director().event(Some("a"));
    let report = s.tick(2).await.unwrap().report.unwrap();
    assert_eq!(report.refetched, Some(1));
    assert!(report.held.is_some(), "{report:?}");
    assert_eq!(s.agents_in_file().len(), 40, "nobody cut off");
    // Held: confirmations come from full passes every poll interval, not the resync.
    let tick = s.tick(3).await.unwrap();
    assert!(tick.report.is_none());
    assert!(tick.next.unwrap() <= SETTINGS.interval);
    tokio::time::advance(SETTINGS.poll).await;
    let report = s.tick(4).await.unwrap().report.expect("a full pass");
    assert!(report.refetched.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failing_event_log_falls_back_to_full_passes_every_poll_interval() {
    let s = watched(
        LogDirector::with(|st| {
            st.deployments
                .insert("a".into(), Answer::Vms(agents("a", 1)));
            st.events_fail = true;
        }),
        DampingSettings::default(),
    );
    s.tick(1)
        .await
        .unwrap()
        .report
        .expect("a full pass at start-up");
    let mut full = 1;
    for n in 2..=31 {
        tokio::time::advance(SETTINGS.interval).await;
        if s.tick(n).await.unwrap().report.is_some() {
            full += 1;
        }
    }
    assert_eq!(full, 4, "at 0, 10, 20 and 30 s");
    assert_eq!(s.director().state().views_read, 4);
    assert_eq!(s.watch_state().await, WatchState::Failing);
}

#[tokio::test(start_paused = true)]
async fn an_unannounced_change_makes_the_watch_blind_and_it_polls() {
    let s = watched(
        LogDirector::with(|st| {
            st.deployments
                .insert("a".into(), Answer::Vms(agents("a", 1)));
        }),
        DampingSettings::default(),
    );
    s.director().event(None);
    s.tick(1).await.unwrap();
    // A VM created without an event; the resync finds it.
    s.director().set("a", Answer::Vms(agents("a", 2)));
    tokio::time::advance(SETTINGS.resync).await;
    let report = s.tick(2).await.unwrap().report.expect("the resync");
    assert!(report.written);
    tokio::time::advance(SETTINGS.interval).await;
    let tick = s.tick(3).await.unwrap();
    assert!(tick.report.is_none());
    assert_eq!(s.watch_state().await, WatchState::Blind);
    // Blind: full passes every poll interval.
    tokio::time::advance(SETTINGS.poll - SETTINGS.interval).await;
    let report = s.tick(4).await.unwrap().report.expect("a full pass");
    assert!(report.refetched.is_none());
}

#[tokio::test(start_paused = true)]
async fn more_than_a_page_of_events_between_two_ticks_are_all_read() {
    let s = watched(
        LogDirector::with(|st| {
            for d in ["a", "b", "c"] {
                st.deployments.insert(d.into(), Answer::Vms(agents(d, 1)));
            }
        }),
        DampingSettings::default(),
    );
    s.director().event(None);
    s.tick(1).await.unwrap();
    s.director().set("a", Answer::Vms(agents("a", 2)));
    s.director().event(Some("a"));
    for _ in 0..450 {
        s.director().event(None);
    }
    let report = s.tick(2).await.unwrap().report.expect("a partial pass");
    assert_eq!(
        report.refetched,
        Some(1),
        "the oldest event, three pages back"
    );
    assert_eq!(s.agents_in_file().len(), 4);
    assert_eq!(s.director().state().views_read, 1);
}

#[tokio::test(start_paused = true)]
async fn a_restored_director_is_relisted() {
    let s = watched(
        LogDirector::with(|st| {
            st.deployments
                .insert("a".into(), Answer::Vms(agents("a", 1)));
        }),
        DampingSettings::default(),
    );
    for _ in 0..50 {
        s.director().event(None);
    }
    s.tick(1).await.unwrap();
    {
        let mut st = s.director().state();
        st.log.truncate(20);
        st.deployments
            .insert("a".into(), Answer::Vms(agents("a", 3)));
    }
    let report = s.tick(2).await.unwrap().report.expect("a full pass");
    assert!(report.refetched.is_none());
    assert_eq!(s.agents_in_file().len(), 3);
    assert_eq!(s.director().state().views_read, 2);
}

#[test]
fn a_partial_pass_names_everything_that_asked_for_it() {
    let at = |triggers: Vec<Trigger>, failures: u32| PassContext {
        pass: 7,
        triggers,
        consecutive_failures: failures,
    };
    assert_eq!(
        partial_cause(&at(vec![Trigger::Requeue], 0), 0, false),
        None
    );
    assert_eq!(
        partial_cause(&at(vec![Trigger::Requeue], 0), 3, false).as_deref(),
        Some("events: 3 deployments")
    );
    let file = std::path::PathBuf::from("/var/vcap/data/nats/auth.json");
    assert_eq!(
        partial_cause(
            &at(vec![Trigger::FileChanged(file), Trigger::Manual], 2),
            1,
            true
        )
        .as_deref(),
        Some(
            "events: 1 deployment, file:/var/vcap/data/nats/auth.json, manual, retry, reload pending"
        )
    );
}
