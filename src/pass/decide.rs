//! Decide: the rules of a pass as functions of plain values — what to write, whether to
//! reload, what damping holds, whether bootstrap applies (§5.3, §6.2–§6.5). No I/O, no
//! clock: what a pass remembers between passes is a [`Memory`] value the caller keeps, and
//! what it observed is passed in. `diff` prints what [`decide`] returns, so a dry run and a
//! pass cannot disagree.

use crate::authfile::Observed;
use crate::config::DampingSettings;
use crate::pass::damping::{self, Held, Pending, Verdict};
use crate::pass::desired::{self, Counts, Desired, Subjects};
use crate::pass::observe::FileState;
use crate::users::{Changes, UserSet};

/// What the rules remember from one pass to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// nats-server may not have loaded the current file (§5.3): true at start-up, after every
    /// write, and after a failed or abandoned reload until one succeeds.
    pub reload_pending: bool,
    /// The director has answered a pass: from then on the bootstrap users are only a
    /// fall-back for when it fails (§6.2, §6.3).
    pub director_answered: bool,
    /// A held mass removal and how many passes have confirmed it (§6.5).
    pub damping: Option<Pending>,
}

impl Memory {
    /// A process that has just started: nothing loaded for sure, the director never asked.
    pub const AT_START: Memory = Memory {
        reload_pending: true,
        director_answered: false,
        damping: None,
    };
}

/// The two points of a pass where the bootstrap users may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapPoint {
    /// Before the director is asked.
    BeforeDirector,
    /// After the director failed to answer.
    DirectorFailed,
}

/// Whether the bootstrap rule may apply at `point` (§6.2, §6.3): before the director, only
/// until it has first answered (later, a file that lost its users is rebuilt from the
/// director in one write — writing the bootstrap users first would drop every connected
/// agent for the length of the pass); after a failure, always. Only then is the file read.
pub fn bootstrap_allowed(memory: &Memory, point: BootstrapPoint) -> bool {
    match point {
        BootstrapPoint::BeforeDirector => !memory.director_answered,
        BootstrapPoint::DirectorFailed => true,
    }
}

/// The bootstrap users to write, when the file holds no users (§4.2) and does not already
/// hold exactly them: the director's and the health monitor's users — or, with neither
/// subject known, the sentinel that admits nobody, so that a file admitting everyone (`{}`,
/// an empty list) is closed. A file that holds users is left alone: agents keep working
/// across restarts.
pub fn bootstrap_users(subjects: &Subjects, file: &Observed) -> Option<UserSet> {
    if file.holds_users() {
        return None;
    }
    let users = desired::bootstrap(subjects).users;
    (file.users() != Some(&users)).then_some(users)
}

/// What a pass that reached the director does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the file holds once the decision is applied: the desired users, plus the agents
    /// damping holds back.
    pub users: UserSet,
    /// `users` by kind.
    pub counts: Counts,
    /// Whether the file must be written (its content differs from `users` as values).
    pub write: bool,
    /// Whether nats-server must be told to reload after the write (if any).
    pub reload: bool,
    /// The removals damping holds back on this pass.
    pub held: Option<Held>,
    /// Users the file held before (0 for a file without users).
    pub observed_users: usize,
    /// What the write changes, subject by subject (nothing when nothing is written): what a
    /// pass logs the counts of and `diff` prints.
    pub changes: Changes,
    /// What the next pass must be given, once this decision has been applied. A reload that
    /// then fails or is abandoned stays pending: the caller keeps `reload_pending` true until
    /// one succeeds.
    pub next: Memory,
}

/// The rules of a pass over the director's answer (§4.3, §5.3, §6.5): compare the desired
/// users with the file as values, hold a mass removal until it is confirmed, write when
/// they differ, reload after a write or when the last reload of this content did not
/// succeed.
pub fn decide(
    memory: &Memory,
    damping: &DampingSettings,
    desired: Desired,
    file: &FileState,
) -> Decision {
    let Desired {
        mut users,
        mut counts,
        ..
    } = desired;
    let no_users = UserSet::default();
    let (observed, pending, held) = match file {
        // Nothing is being removed, so a held removal is no longer pending.
        FileState::Holds => (None, None, None),
        FileState::Differs(observed) => {
            let in_file = observed.users().unwrap_or(&no_users);
            let (verdict, pending) = damping::judge(damping, memory.damping, in_file, &users);
            let held = match verdict {
                Verdict::Apply => None,
                Verdict::Hold(held) => {
                    // The held agents stay, written exactly as the director last described
                    // them; everything else — additions included — applies now.
                    let (agents, bootstrap) = (users.agent_count(), users.bootstrap_count());
                    users.add_agents(held.keep.iter().map(|(id, b)| (id.clone(), *b)));
                    counts.agent += users.agent_count() - agents;
                    counts.agent_bootstrap += users.bootstrap_count() - bootstrap;
                    Some(held)
                }
            };
            (Some(observed), pending, held)
        }
    };
    let (write, observed_users, changes) = match observed {
        None => (false, users.len(), Changes::default()),
        Some(observed) => {
            let in_file = observed.users().unwrap_or(&no_users);
            let write = observed.users() != Some(&users);
            let changes = if write {
                in_file.changes(&users)
            } else {
                Changes::default()
            };
            (write, in_file.len(), changes)
        }
    };
    let reload = write || memory.reload_pending;
    Decision {
        users,
        counts,
        write,
        reload,
        held,
        observed_users,
        changes,
        next: Memory {
            reload_pending: reload,
            director_answered: true,
            damping: pending,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authfile::{self, NOBODY};
    use crate::pass::desired::{Subject, compute};
    use crate::users::User;
    use crate::vm::Vm;

    fn subjects() -> Subjects {
        Subjects {
            director: Subject::parse("C=USA, O=Cloud Foundry, CN=default.director.bosh-internal")
                .unwrap(),
            hm: Subject::parse("C=USA, O=Cloud Foundry, CN=default.hm.bosh-internal").unwrap(),
        }
    }

    fn desired(agents: impl IntoIterator<Item = usize>) -> Desired {
        let vms = agents
            .into_iter()
            .map(|i| Vm {
                agent_id: Some(format!("agent-{i}")),
                permanent_nats_credentials: i % 2 == 0,
            })
            .collect();
        compute(&subjects(), vms)
    }

    /// The file holding `users`, as a pass observes it when its bytes differ.
    /// What the streaming reader makes of `bytes`.
    fn read(bytes: &[u8]) -> Observed {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        std::fs::write(&path, bytes).unwrap();
        authfile::read(&path).unwrap()
    }

    fn file_with(users: &UserSet) -> FileState {
        let mut bytes = Vec::new();
        authfile::render_into(&mut bytes, users).unwrap();
        let observed = read(&bytes);
        assert_eq!(
            observed,
            Observed::Users(users.clone()),
            "the file reads back"
        );
        FileState::Differs(observed)
    }

    const SETTLED: Memory = Memory {
        reload_pending: false,
        director_answered: true,
        damping: None,
    };

    #[test]
    fn bootstrap_only_before_the_director_first_answers_and_after_a_failure() {
        use BootstrapPoint::*;
        assert!(bootstrap_allowed(&Memory::AT_START, BeforeDirector));
        assert!(!bootstrap_allowed(&SETTLED, BeforeDirector));
        assert!(bootstrap_allowed(&Memory::AT_START, DirectorFailed));
        assert!(bootstrap_allowed(&SETTLED, DirectorFailed));
    }

    #[test]
    fn bootstrap_writes_the_components_into_a_file_without_users_only() {
        let placeholder = read(b"{authorization: {token: f0oBar}}");
        let users = bootstrap_users(&subjects(), &placeholder).expect("placeholder replaced");
        assert_eq!(users, desired([]).users);
        assert_eq!(users.len(), 2);
        for no_users in [
            Observed::Missing,
            Observed::Empty,
            Observed::Users(UserSet::default()),
        ] {
            assert_eq!(bootstrap_users(&subjects(), &no_users), Some(users.clone()));
        }
        // Already exactly the bootstrap users: nothing to write.
        assert_eq!(bootstrap_users(&subjects(), &Observed::Users(users)), None);
        // A file with agents is left alone, even when the subjects are unknown.
        let FileState::Differs(with_agents) = file_with(&desired([1, 2]).users) else {
            unreachable!()
        };
        assert_eq!(bootstrap_users(&Subjects::default(), &with_agents), None);
    }

    /// `{}` and an empty list admit everyone: with no subject known, the file is closed with
    /// the sentinel user (rendered as the only user) — and a file holding only the sentinel
    /// is left as it is.
    #[test]
    fn no_subject_known_closes_a_file_that_admits_everyone_with_the_sentinel() {
        let users = bootstrap_users(&Subjects::default(), &Observed::Empty).expect("closed");
        assert!(users.is_empty());
        let mut bytes = Vec::new();
        authfile::render_into(&mut bytes, &users).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(NOBODY), "{text}");
        assert_eq!(text.matches("\"user\"").count(), 1, "{text}");
        let sentinel_only = Observed::Users(UserSet::default());
        assert_eq!(bootstrap_users(&Subjects::default(), &sentinel_only), None);
        assert!(
            UserSet::from_users([User::new(NOBODY.into(), vec![], vec![])]).is_only(&User::new(
                NOBODY.into(),
                vec![],
                vec![]
            ))
        );
    }

    #[test]
    fn the_steady_state_writes_nothing_and_reloads_only_when_pending() {
        let d = decide(
            &SETTLED,
            &DampingSettings::default(),
            desired(0..5),
            &FileState::Holds,
        );
        assert!(!d.write && !d.reload);
        assert_eq!(d.next, SETTLED);
        assert_eq!(
            d.observed_users,
            2 + 5 + 2,
            "two components, five agents, two bootstrap users"
        );
        // §5.3: at start-up the server may not have loaded the file: reload once.
        let d = decide(
            &Memory::AT_START,
            &DampingSettings::default(),
            desired(0..5),
            &FileState::Holds,
        );
        assert!(!d.write && d.reload);
        assert!(d.next.reload_pending && d.next.director_answered);
    }

    #[test]
    fn the_same_users_in_other_bytes_are_not_rewritten() {
        let want = desired(0..5);
        let d = decide(
            &SETTLED,
            &DampingSettings::default(),
            want.clone(),
            &file_with(&want.users),
        );
        assert!(!d.write && !d.reload, "{d:?}");
    }

    #[test]
    fn a_difference_is_written_and_reloaded_with_its_counts() {
        let d = decide(
            &SETTLED,
            &DampingSettings::default(),
            desired(0..6),
            &file_with(&desired(0..5).users),
        );
        assert!(d.write && d.reload && d.next.reload_pending);
        // agent-5 has a bootstrap user and its permanent one.
        assert_eq!((d.changes.added.len(), d.changes.removed.len()), (2, 0));
        assert_eq!(d.counts.agent, 6);
        assert_eq!(d.held, None);
        // A file that holds no users gets everything at once.
        let d = decide(
            &SETTLED,
            &DampingSettings::default(),
            desired(0..6),
            &FileState::Differs(Observed::Missing),
        );
        assert!(d.write);
        assert_eq!(
            (
                d.observed_users,
                d.changes.added.len(),
                d.changes.removed.len()
            ),
            (0, 2 + 6 + 3, 0)
        );
    }

    #[test]
    fn damping_holds_a_mass_removal_then_releases_it_and_additions_apply_at_once() {
        let settings = DampingSettings::default();
        let before = desired(0..40).users;
        let file = file_with(&before);
        let mut memory = SETTLED;
        for seen in 1..=2 {
            // The director suddenly reports 2 of 40 agents, plus a new one.
            let d = decide(&memory, &settings, desired([0, 1, 100]), &file);
            let held = d.held.as_ref().expect("held");
            assert_eq!(
                (held.removing, held.agents_in_file, held.seen),
                (38, 40, seen)
            );
            assert_eq!(held.needed, 3);
            assert!(d.write, "the new agent is written at once");
            assert_eq!(
                (d.changes.added.len(), d.changes.removed.len()),
                (1, 0),
                "nothing is removed while held"
            );
            assert_eq!(d.counts.agent, 41);
            memory = d.next;
            memory.reload_pending = false;
        }
        let d = decide(&memory, &settings, desired([0, 1, 100]), &file);
        assert_eq!(d.held, None, "the third confirmation applies");
        assert!(d.write);
        assert_eq!(
            d.changes.removed.len(),
            38 + 19,
            "38 agents, 19 of them with a bootstrap user"
        );
        assert_eq!(d.next.damping, None);

        // Disabled, nothing is held.
        let off = DampingSettings {
            enabled: false,
            ..settings
        };
        assert_eq!(decide(&SETTLED, &off, desired([0]), &file).held, None);
    }

    #[test]
    fn a_settled_file_forgets_a_held_removal() {
        let settings = DampingSettings::default();
        let file = file_with(&desired(0..40).users);
        let held = decide(&SETTLED, &settings, desired([]), &file);
        assert!(held.next.damping.is_some());
        let steady = decide(&held.next, &settings, desired(0..40), &FileState::Holds);
        assert_eq!(steady.next.damping, None);
        let again = decide(&steady.next, &settings, desired([]), &file);
        assert_eq!(again.held.map(|h| h.seen), Some(1), "the count starts over");
    }
}
