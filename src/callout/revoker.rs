//! The revoker (§12.6): closes the live connections the admitted set no longer allows, in a
//! task of its own — never in the responder's answering path. A check is the same three steps
//! as a pass, one level down: observe the connections every server holds
//! ([`connz::observe`]), decide which to close ([`revoke::decide`], pure), close them
//! ([`connz::kick`]), and tell the [`RevocationObserver`].
//!
//! When: the admitted set asks for a check ([`Published::checks`](super::admitted::Published)
//! — a swap that took something back, every full pass: start-up and resync), and whenever the
//! responder's connection comes (back) up, since nothing could be closed while it was down.
//! Asks that arrive during a check are folded into one check after it. Only a set a pass of
//! this process has confirmed is checked against — never the persisted one a restart answers
//! from before its first pass — so that a restart revokes what an earlier process admitted
//! and nothing more. A check that could not see or close everything is repeated after 1 s,
//! doubling to 30 s; one that left a connection still waiting for its answer
//! ([`Decision::waiting`](super::revoke::Decision)) looks again once it has settled — once:
//! an agent the set refuses may keep trying for ever, each try waiting for its answer.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admitted::Subscriber;
use super::connz::{self, Gather, Kicked, Observation, ObserveError};
use super::responder::Link;
use super::revoke::{self, Kick};

/// nats-server's system account, as the revoker uses it: the real one is the responder's
/// [`async_nats::Client`]; tests give the loop one that answers as they script it.
pub trait SystemAccount: Clone + Send + Sync + 'static {
    /// Every server's connections ([`connz::observe`]).
    fn observe(
        &self,
        gather: &Gather,
    ) -> impl Future<Output = Result<Observation, ObserveError>> + Send;
    /// Closes connection `cid` of server `server_id` ([`connz::kick`]).
    fn kick(
        &self,
        server_id: &str,
        cid: u64,
        timeout: Duration,
    ) -> impl Future<Output = Kicked> + Send;
}

impl SystemAccount for async_nats::Client {
    async fn observe(&self, gather: &Gather) -> Result<Observation, ObserveError> {
        connz::observe(self, gather).await
    }

    async fn kick(&self, server_id: &str, cid: u64, timeout: Duration) -> Kicked {
        connz::kick(self, server_id, cid, timeout).await
    }
}

/// KICK requests in flight at once.
const KICKS_AT_ONCE: usize = 16;

/// What the revoker tells the rest of the program (the metrics, `/status`, the log).
pub trait RevocationObserver: Send + Sync + 'static {
    /// A check saw `observation` (every server's client connections, and what seeing them
    /// cost); seeing them took `took`.
    fn observed(&self, observation: &Observation, took: Duration);
    /// A connection the set no longer allows was closed, was already gone, or could not be
    /// closed.
    fn revoked(&self, kick: &Kick, kicked: &Kicked);
    /// A check could not see every connection (`why`): it is repeated.
    fn incomplete(&self, why: &str);
}

/// How long the revoker waits for what.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How old a connection nats-server has not said it admitted must be before it is judged
    /// (longer than its answer may take).
    pub settle: Duration,
    pub gather: Gather,
    /// How long a KICK may take.
    pub kick_timeout: Duration,
    /// A failed check is repeated after `retry.0`, doubling to `retry.1`.
    pub retry: (Duration, Duration),
}

impl Timing {
    /// The timing for nats-server's authorization `timeout`.
    pub fn for_authorization_timeout(timeout: Duration) -> Self {
        Self {
            settle: timeout + Duration::from_secs(1),
            gather: Gather::default(),
            kick_timeout: Duration::from_secs(2),
            retry: (Duration::from_secs(1), Duration::from_secs(30)),
        }
    }
}

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    Done,
    /// Done, but a connection may still be waiting for its answer: look again after this.
    Again(Duration),
    /// Not everything could be seen or closed.
    Failed,
}

/// Why the revoker looks again by itself.
#[derive(Debug, Clone, Copy)]
enum Again {
    /// The last check failed.
    Retry,
    /// The last check left connections waiting for their answer.
    Settle,
}

/// The revoker's inputs.
pub struct Revoker<O, C = async_nats::Client> {
    /// The set the passes publish.
    pub admitted: Subscriber,
    /// The responder's connection.
    pub link: watch::Receiver<Link<C>>,
    pub timing: Timing,
    pub observer: O,
}

impl<O: RevocationObserver, C: SystemAccount> Revoker<O, C> {
    /// Checks whenever asked, until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let Revoker {
            mut admitted,
            mut link,
            timing,
            observer,
        } = self;
        let (mut asked, mut connects) = (0, 0);
        // A check is asked for by a trigger or a retry; or only to look again at connections
        // that were still waiting for their answer — once, not for as long as a refused agent
        // keeps trying.
        let (mut triggered, mut settling) = (false, false);
        let mut again: Option<(Instant, Again)> = None;
        let mut delay = timing.retry.0;
        let mut servers_seen = 0;
        loop {
            let confirmed = {
                let published = admitted.borrow_and_update();
                triggered |= published.checks != asked;
                asked = published.checks;
                published.pass_began.is_some()
            };
            let client = {
                let link = link.borrow_and_update();
                triggered |= link.connects != connects;
                connects = link.connects;
                link.client.clone()
            };
            if let Some((at, why)) = again
                && at <= Instant::now()
            {
                again = None;
                match why {
                    Again::Retry => triggered = true,
                    Again::Settle => settling = true,
                }
            }
            if (triggered || settling)
                && confirmed
                && let Some(client) = client
            {
                let recheck = !triggered;
                (triggered, settling) = (false, false);
                let checked = tokio::select! {
                    _ = cancel.cancelled() => return,
                    c = check(&client, &admitted, &timing, &observer, &mut servers_seen) => c,
                };
                match checked {
                    Checked::Done => {
                        again = None;
                        delay = timing.retry.0;
                    }
                    Checked::Again(after) => {
                        again = (!recheck).then(|| (Instant::now() + after, Again::Settle));
                        delay = timing.retry.0;
                    }
                    Checked::Failed => {
                        again = Some((Instant::now() + delay, Again::Retry));
                        delay = (delay * 2).min(timing.retry.1);
                    }
                }
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = admitted.changed() => if changed.is_err() { return },
                changed = link.changed() => if changed.is_err() { return },
                _ = sleep_until(again.map(|(at, _)| at)) => {}
            }
        }
    }
}

/// Sleeps until `at`; for ever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One check: observe, decide, close, report. `servers_seen` is how many servers the last
/// check saw: fewer now may be a reply that came after the quiet period, so the check is
/// repeated.
async fn check(
    client: &impl SystemAccount,
    admitted: &Subscriber,
    timing: &Timing,
    observer: &impl RevocationObserver,
    servers_seen: &mut usize,
) -> Checked {
    let began = Instant::now();
    let observation = match client.observe(&timing.gather).await {
        Ok(observation) => observation,
        Err(e) => {
            observer.incomplete(&e.to_string());
            return Checked::Failed;
        }
    };
    let servers = observation.servers.len();
    observer.observed(&observation, began.elapsed());
    let mut failed = false;
    for why in &observation.incomplete {
        observer.incomplete(why);
        failed = true;
    }
    if servers < *servers_seen {
        observer.incomplete(&format!(
            "{servers} servers answered where {} did before",
            *servers_seen
        ));
        failed = true;
    }
    *servers_seen = servers;
    // The set as it is now, after the observation: every connection seen was admitted by
    // this set or an earlier one.
    let set = admitted.borrow().set.clone();
    let decision = revoke::decide(&observation.servers, &set, timing.settle);
    tracing::debug!(
        servers,
        connections = observation.connections(),
        agents = decision.agents,
        closing = decision.kicks.len(),
        waiting = decision.waiting,
        "revocation check"
    );
    let waiting = decision.waiting;
    let results: Vec<(Kick, Kicked)> = futures::stream::iter(decision.kicks)
        .map(|kick| async move {
            let kicked = client
                .kick(&kick.server.id, kick.cid, timing.kick_timeout)
                .await;
            (kick, kicked)
        })
        .buffer_unordered(KICKS_AT_ONCE)
        .collect()
        .await;
    for (kick, kicked) in &results {
        observer.revoked(kick, kicked);
        failed |= matches!(kicked, Kicked::Failed(_));
    }
    if failed {
        Checked::Failed
    } else if waiting > 0 {
        Checked::Again(timing.settle)
    } else {
        Checked::Done
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::callout::admitted::{AdmittedSet, Publisher};
    use crate::callout::revoke::{AdmittedBy, Connection, Server, ServerConnections};
    use crate::users::{AgentId, UserSet};

    /// A cluster as the tests script it: the connections each server holds (a kick removes
    /// one), kicks that fail, and what was asked of it.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Cluster>>);

    #[derive(Default)]
    struct Cluster {
        servers: Vec<ServerConnections>,
        /// The next this many kicks fail.
        failing_kicks: usize,
        /// The next this many observations find no server.
        unanswered: usize,
        /// How long an observation takes.
        takes: Duration,
        observations: usize,
        kicks: Vec<(String, u64)>,
    }

    impl Fake {
        fn lock(&self) -> std::sync::MutexGuard<'_, Cluster> {
            self.0.lock().unwrap()
        }

        /// Agent `id` connects to server `server` as connection `cid`, admitted by the callout.
        fn connect(&self, server: &str, cid: u64, id: &str, bootstrap: bool) {
            let mut cluster = self.lock();
            let server = Server {
                id: format!("N-{server}"),
                name: server.to_owned(),
            };
            let connection = Connection {
                cid,
                subject: Some(format!(
                    "CN={id}.{}agent.bosh-internal,O=Cloud Foundry,C=USA",
                    if bootstrap { "bootstrap." } else { "" }
                )),
                admitted_by: AdmittedBy::Callout,
                age: Some(Duration::from_secs(60)),
            };
            match cluster.servers.iter_mut().find(|s| s.server == server) {
                Some(s) => s.connections.push(connection),
                None => cluster.servers.push(ServerConnections {
                    server,
                    connections: vec![connection],
                }),
            }
        }

        fn kicked(&self) -> Vec<(String, u64)> {
            self.lock().kicks.clone()
        }

        fn observations(&self) -> usize {
            self.lock().observations
        }
    }

    impl SystemAccount for Fake {
        async fn observe(&self, _gather: &Gather) -> Result<Observation, ObserveError> {
            let takes = {
                let mut cluster = self.lock();
                cluster.observations += 1;
                cluster.takes
            };
            tokio::time::sleep(takes).await;
            let mut cluster = self.lock();
            if cluster.unanswered > 0 {
                cluster.unanswered -= 1;
                return Err(ObserveError::NoAnswer(Duration::from_secs(2)));
            }
            Ok(Observation {
                servers: cluster.servers.clone(),
                ..Observation::default()
            })
        }

        async fn kick(&self, server_id: &str, cid: u64, _timeout: Duration) -> Kicked {
            let mut cluster = self.lock();
            if cluster.failing_kicks > 0 {
                cluster.failing_kicks -= 1;
                return Kicked::Failed("no answer".into());
            }
            cluster.kicks.push((server_id.to_owned(), cid));
            let server = cluster
                .servers
                .iter_mut()
                .find(|s| s.server.id == server_id);
            let Some(server) = server else {
                return Kicked::Gone;
            };
            let before = server.connections.len();
            server.connections.retain(|c| c.cid != cid);
            if server.connections.len() < before {
                Kicked::Closed
            } else {
                Kicked::Gone
            }
        }
    }

    /// What the observer was told: (agent, result) per revocation, and incomplete checks.
    #[derive(Clone, Default)]
    struct Told(Arc<Mutex<Heard>>);

    type Heard = (Vec<(String, &'static str)>, usize);

    impl RevocationObserver for Told {
        fn observed(&self, _observation: &Observation, _took: Duration) {}

        fn revoked(&self, kick: &Kick, kicked: &Kicked) {
            let result = match kicked {
                Kicked::Closed => "kicked",
                Kicked::Gone => "gone",
                Kicked::Failed(_) => "error",
            };
            self.0
                .lock()
                .unwrap()
                .0
                .push((kick.agent.to_string(), result));
        }

        fn incomplete(&self, _why: &str) {
            self.0.lock().unwrap().1 += 1;
        }
    }

    impl Told {
        fn revoked(&self) -> Vec<(String, &'static str)> {
            self.0.lock().unwrap().0.clone()
        }

        fn incomplete(&self) -> usize {
            self.0.lock().unwrap().1
        }
    }

    fn set(agents: &[(&str, bool)]) -> AdmittedSet {
        let mut users = UserSet::default();
        users.add_agents(agents.iter().map(|(a, b)| (AgentId::parse(a).unwrap(), *b)));
        AdmittedSet::of(&users)
    }

    const TIMING: Timing = Timing {
        settle: Duration::from_secs(2),
        gather: Gather {
            page: 1024,
            first: Duration::from_secs(2),
            quiet: Duration::from_millis(100),
        },
        kick_timeout: Duration::from_secs(2),
        retry: (Duration::from_secs(1), Duration::from_secs(30)),
    };

    /// A running revoker over `cluster`, its connection up; the set and the link to drive it.
    struct World {
        publisher: Publisher,
        link: watch::Sender<Link<Fake>>,
        cluster: Fake,
        told: Told,
        cancel: CancellationToken,
    }

    impl World {
        fn start() -> World {
            let publisher = Publisher::new();
            let cluster = Fake::default();
            let (link, linked) = watch::channel(Link {
                client: Some(cluster.clone()),
                connects: 1,
            });
            let told = Told::default();
            let cancel = CancellationToken::new();
            tokio::spawn(
                Revoker {
                    admitted: publisher.subscribe(),
                    link: linked,
                    timing: TIMING,
                    observer: told.clone(),
                }
                .run(cancel.clone()),
            );
            World {
                publisher,
                link,
                cluster,
                told,
                cancel,
            }
        }

        /// Lets the revoker run until it waits again, `after` later.
        async fn settle(after: Duration) {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            tokio::time::advance(after).await;
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }

        fn full_pass(&self) {
            self.publisher.pass_finished(Instant::now(), true);
        }
    }

    impl Drop for World {
        fn drop(&mut self) {
            self.cancel.cancel();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_checked_before_a_pass_has_confirmed_the_set() {
        let world = World::start();
        world.cluster.connect("n0", 7, "a", false);
        // The persisted set a restart answers from: not a pass's, not checked against.
        world.publisher.swap(set(&[]));
        world.publisher.swap(set(&[("b", false)]));
        World::settle(Duration::from_secs(5)).await;
        assert_eq!(world.cluster.observations(), 0);
        // The first pass (a full one) confirms it: what an earlier process admitted goes.
        world.publisher.swap(set(&[("b", false)]));
        world.full_pass();
        World::settle(Duration::ZERO).await;
        assert_eq!(world.cluster.kicked(), [("N-n0".to_owned(), 7)]);
        assert_eq!(world.told.revoked(), [("a".to_owned(), "kicked")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removal_is_checked_at_once_an_addition_or_a_partial_pass_is_not() {
        let world = World::start();
        world.publisher.swap(set(&[("a", true), ("b", true)]));
        world.full_pass();
        World::settle(Duration::ZERO).await;
        assert_eq!(world.cluster.observations(), 1, "the start-up check");
        world.cluster.connect("n0", 1, "a", false);
        world.cluster.connect("n1", 2, "b", true);
        world.cluster.connect("n1", 3, "b", false);
        world
            .publisher
            .swap(set(&[("a", true), ("b", true), ("c", true)]));
        world.publisher.pass_finished(Instant::now(), false);
        World::settle(Duration::from_secs(60)).await;
        assert_eq!(world.cluster.observations(), 1, "nothing taken back");
        // b's VM gets permanent credentials: its bootstrap connection goes, the other stays.
        world
            .publisher
            .swap(set(&[("a", true), ("b", false), ("c", true)]));
        World::settle(Duration::ZERO).await;
        assert_eq!(world.cluster.kicked(), [("N-n1".to_owned(), 2)]);
        // a's VM is deleted.
        world.publisher.swap(set(&[("b", false), ("c", true)]));
        World::settle(Duration::ZERO).await;
        assert_eq!(
            world.cluster.kicked(),
            [("N-n1".to_owned(), 2), ("N-n0".to_owned(), 1)]
        );
        assert_eq!(world.cluster.observations(), 3);
        // Every full pass (a resync) checks again, finding nothing more to do.
        world.full_pass();
        World::settle(Duration::ZERO).await;
        assert_eq!(world.cluster.observations(), 4);
        assert_eq!(world.cluster.kicked().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_kick_or_observation_is_retried_with_backoff_never_given_up() {
        let world = World::start();
        world.cluster.connect("n0", 1, "a", false);
        world.cluster.lock().failing_kicks = 2;
        world.publisher.swap(set(&[]));
        world.full_pass();
        World::settle(Duration::ZERO).await;
        assert_eq!(world.told.revoked(), [("a".to_owned(), "error")]);
        World::settle(Duration::from_secs(1)).await;
        assert_eq!(world.told.revoked().len(), 2, "retried after 1 s");
        World::settle(Duration::from_millis(1500)).await;
        assert_eq!(world.told.revoked().len(), 2, "then after 2 s");
        World::settle(Duration::from_millis(500)).await;
        assert_eq!(world.told.revoked()[2], ("a".to_owned(), "kicked"));
        let observed = world.cluster.observations();
        World::settle(Duration::from_secs(600)).await;
        assert_eq!(
            world.cluster.observations(),
            observed,
            "done: no more checks"
        );

        // nats-server does not answer at all: the same.
        world.cluster.connect("n0", 2, "b", false);
        world.cluster.lock().unanswered = 3;
        world.full_pass();
        World::settle(Duration::from_secs(2)).await;
        World::settle(Duration::from_secs(2)).await;
        World::settle(Duration::from_secs(4)).await;
        assert_eq!(world.told.incomplete(), 3);
        assert_eq!(
            world.told.revoked().last().unwrap(),
            &("b".to_owned(), "kicked")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn asks_during_a_check_are_folded_into_one_check_after_it() {
        let world = World::start();
        world.cluster.lock().takes = Duration::from_secs(1);
        world.publisher.swap(set(&[("a", false)]));
        world.full_pass();
        World::settle(Duration::from_millis(100)).await;
        assert_eq!(world.cluster.observations(), 1);
        for _ in 0..5 {
            world.full_pass();
            world.link.send_modify(|l| l.connects += 1);
        }
        World::settle(Duration::from_secs(1)).await;
        assert_eq!(world.cluster.observations(), 2, "one more, at once");
        World::settle(Duration::from_secs(10)).await;
        assert_eq!(world.cluster.observations(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_comes_back_up_is_checked_and_a_lost_one_is_waited_for() {
        let world = World::start();
        world.publisher.swap(set(&[("a", false)]));
        world.full_pass();
        World::settle(Duration::ZERO).await;
        assert_eq!(world.cluster.observations(), 1);
        // The connection drops; a's VM is deleted meanwhile.
        world.link.send_modify(|l| l.client = None);
        world.cluster.connect("n0", 4, "a", false);
        world.publisher.swap(set(&[]));
        World::settle(Duration::from_secs(60)).await;
        assert_eq!(world.cluster.observations(), 1, "no connection, no check");
        world.link.send_modify(|l| {
            l.client = Some(world.cluster.clone());
            l.connects += 1;
        });
        World::settle(Duration::ZERO).await;
        assert_eq!(world.cluster.kicked(), [("N-n0".to_owned(), 4)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_still_waiting_for_its_answer_is_looked_at_again_once_settled() {
        let world = World::start();
        world.publisher.swap(set(&[]));
        world.cluster.connect("n0", 5, "new", false);
        {
            let mut cluster = world.cluster.lock();
            let c = &mut cluster.servers[0].connections[0];
            c.admitted_by = AdmittedBy::Unknown;
            c.age = Some(Duration::from_millis(100));
        }
        world.full_pass();
        World::settle(Duration::ZERO).await;
        assert_eq!(
            world.cluster.kicked(),
            [],
            "it may be waiting for its answer"
        );
        // It was admitted after all by an answer from a set just before the removal.
        world.cluster.lock().servers[0].connections[0].admitted_by = AdmittedBy::Callout;
        World::settle(TIMING.settle).await;
        assert_eq!(world.cluster.kicked(), [("N-n0".to_owned(), 5)]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_keeps_trying_is_looked_at_again_once_not_for_ever() {
        let world = World::start();
        world.publisher.swap(set(&[]));
        world.cluster.connect("n0", 5, "gone", false);
        {
            let mut cluster = world.cluster.lock();
            let c = &mut cluster.servers[0].connections[0];
            c.admitted_by = AdmittedBy::Unknown;
            c.age = Some(Duration::from_millis(100));
        }
        world.full_pass();
        World::settle(Duration::ZERO).await;
        World::settle(TIMING.settle).await;
        assert_eq!(world.cluster.observations(), 2, "one look again");
        World::settle(Duration::from_secs(60)).await;
        assert_eq!(world.cluster.observations(), 2, "and no more");
        assert_eq!(world.cluster.kicked(), []);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_missing_from_a_check_makes_it_look_again() {
        let world = World::start();
        world.cluster.connect("n0", 1, "a", false);
        world.cluster.connect("n1", 2, "b", false);
        world.publisher.swap(set(&[("a", false), ("b", false)]));
        world.full_pass();
        World::settle(Duration::ZERO).await;
        // n1's reply comes too late for this check.
        let n1 = world.cluster.lock().servers.remove(1);
        world.publisher.swap(set(&[("a", false)]));
        World::settle(Duration::ZERO).await;
        assert_eq!(world.told.incomplete(), 1);
        world.cluster.lock().servers.push(n1);
        World::settle(Duration::from_secs(1)).await;
        assert_eq!(world.cluster.kicked(), [("N-n1".to_owned(), 2)]);
    }
}
