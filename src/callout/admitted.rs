//! The admitted set (§12): the agents callout mode lets in, and whether each may use its
//! bootstrap certificate. The passes write it — it is their desired state, damping included —
//! and the responder reads it: a [`tokio::sync::watch`] channel hands every answer the latest
//! set as a cheap shared snapshot, and lets an answer that waits for a pass learn when one
//! has finished. The revoker (§12.6) reads the same channel: [`Published::checks`] tells it
//! when the connections nats-server holds must be checked against the set again.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::users::{AgentId, UserSet};

/// Which agents are admitted: id → bootstrap certificate allowed (§3.1 lists its bootstrap
/// user). Invariant: built from a whole user set, never edited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmittedSet {
    agents: HashMap<Box<str>, bool>,
}

impl AdmittedSet {
    /// The agents of `users`, whatever part of the set holds them.
    pub fn of(users: &UserSet) -> Self {
        Self {
            agents: users
                .agents()
                .into_iter()
                .map(|(id, bootstrap)| (id.into(), bootstrap))
                .collect(),
        }
    }

    /// `None` for an agent the set does not hold; `Some(bootstrap allowed)` for one it does.
    pub fn lookup(&self, id: &AgentId) -> Option<bool> {
        self.agents.get(id.as_str()).copied()
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Whether this set takes back anything `before` allowed: an agent it no longer holds, or
    /// a bootstrap certificate it no longer allows.
    pub fn withdraws_from(&self, before: &AdmittedSet) -> bool {
        before
            .agents
            .iter()
            .any(|(id, bootstrap)| match self.agents.get(id) {
                None => true,
                Some(now) => *bootstrap && !now,
            })
    }
}

/// What the passes publish: the set, and when the last pass that published it began.
#[derive(Debug, Clone)]
pub struct Published {
    pub set: Arc<AdmittedSet>,
    /// `None` until a pass has finished: the set is the persisted one, from before this
    /// process started.
    pub pass_began: Option<Instant>,
    /// The set was loaded (from the state file or by a pass): answers may rely on it.
    pub loaded: bool,
    /// Revocation checks asked for (§12.6): counts up when a swap takes something back and
    /// when a full pass finishes. The revoker checks once for however many it missed.
    pub checks: u64,
}

/// The writing end, held by the admission of callout mode.
#[derive(Debug)]
pub struct Publisher(watch::Sender<Published>);

/// A reading end, for the responder.
pub type Subscriber = watch::Receiver<Published>;

impl Publisher {
    /// An empty, unloaded set.
    pub fn new() -> Self {
        Self(watch::Sender::new(Published {
            set: Arc::new(AdmittedSet::default()),
            pass_began: None,
            loaded: false,
            checks: 0,
        }))
    }

    pub fn subscribe(&self) -> Subscriber {
        self.0.subscribe()
    }

    /// The set as it is now.
    pub fn current(&self) -> Arc<AdmittedSet> {
        self.0.borrow().set.clone()
    }

    /// Replaces the set (a pass stored new users, or the persisted set was read at start);
    /// one that takes something back asks for a revocation check.
    pub fn swap(&self, set: AdmittedSet) {
        self.0.send_modify(|p| {
            if set.withdraws_from(&p.set) {
                p.checks += 1;
            }
            p.set = Arc::new(set);
            p.loaded = true;
        });
    }

    /// The set as it is is the one to answer from (a pass found the persisted set current,
    /// or there is none yet).
    pub fn mark_loaded(&self) {
        self.0
            .send_if_modified(|p| !std::mem::replace(&mut p.loaded, true));
    }

    /// A pass that began at `began` finished: whoever waits for a pass after some moment
    /// learns it, even when the set did not change. A `full` pass (start-up, resync) also asks
    /// for a revocation check, so that nothing depends on remembering who was admitted.
    pub fn pass_finished(&self, began: Instant, full: bool) {
        self.0.send_modify(|p| {
            p.pass_began = Some(began);
            if full {
                p.checks += 1;
            }
        });
    }
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pass::desired::{Subject, Subjects, compute};
    use crate::vm::Vm;

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    #[test]
    fn the_set_holds_each_agent_and_whether_its_bootstrap_certificate_is_allowed() {
        let subjects = Subjects {
            director: Subject::parse("CN=d").unwrap(),
            hm: Subject::parse("CN=h").unwrap(),
        };
        let vms = vec![
            Vm {
                agent_id: Some("new".into()),
                permanent_nats_credentials: false,
            },
            Vm {
                agent_id: Some("old".into()),
                permanent_nats_credentials: true,
            },
        ];
        let admitted = AdmittedSet::of(&compute(&subjects, vms).users);
        assert_eq!(
            admitted.len(),
            2,
            "the director and the health monitor are no agents"
        );
        assert_eq!(admitted.lookup(&id("new")), Some(true));
        assert_eq!(admitted.lookup(&id("old")), Some(false));
        assert_eq!(admitted.lookup(&id("gone")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn readers_see_each_swap_and_each_finished_pass() {
        let publisher = Publisher::new();
        let mut reader = publisher.subscribe();
        assert!(!reader.borrow().loaded);
        let began = Instant::now();
        publisher.pass_finished(began, false);
        assert!(reader.has_changed().unwrap());
        assert_eq!(reader.borrow_and_update().pass_began, Some(began));
        let mut users = UserSet::default();
        users.add_agents([(id("a"), true)]);
        publisher.swap(AdmittedSet::of(&users));
        let seen = reader.borrow_and_update().clone();
        assert!(seen.loaded);
        assert_eq!(seen.set.lookup(&id("a")), Some(true));
        assert_eq!(publisher.current().len(), 1);
    }

    fn set(agents: &[(&str, bool)]) -> AdmittedSet {
        let mut users = UserSet::default();
        users.add_agents(agents.iter().map(|(a, b)| (id(a), *b)));
        AdmittedSet::of(&users)
    }

    #[test]
    fn a_set_withdraws_an_agent_it_drops_or_a_bootstrap_certificate_it_no_longer_allows() {
        let before = set(&[("a", true), ("b", false)]);
        for (after, withdraws) in [
            (set(&[("a", true), ("b", false)]), false),
            (set(&[("a", true), ("b", false), ("c", true)]), false),
            (set(&[("a", true), ("b", true)]), false),
            (set(&[("a", false), ("b", false)]), true),
            (set(&[("a", true)]), true),
            (set(&[("a", true), ("c", false)]), true),
            (set(&[]), true),
        ] {
            assert_eq!(after.withdraws_from(&before), withdraws, "{after:?}");
        }
        assert!(!before.withdraws_from(&AdmittedSet::default()));
    }

    #[tokio::test(start_paused = true)]
    async fn revocation_checks_are_asked_for_by_withdrawals_and_full_passes() {
        let publisher = Publisher::new();
        let checks = || publisher.subscribe().borrow().checks;
        publisher.swap(set(&[("a", true), ("b", true)]));
        assert_eq!(checks(), 0, "the first set takes nothing back");
        publisher.swap(set(&[("a", true), ("b", true), ("c", true)]));
        publisher.pass_finished(Instant::now(), false);
        assert_eq!(checks(), 0, "an addition and a partial pass ask for none");
        publisher.swap(set(&[("a", true), ("b", false), ("c", true)]));
        assert_eq!(checks(), 1, "a bootstrap certificate taken back");
        publisher.swap(set(&[("a", true), ("c", true)]));
        assert_eq!(checks(), 2, "an agent removed");
        publisher.pass_finished(Instant::now(), true);
        assert_eq!(checks(), 3, "a full pass");
    }
}
