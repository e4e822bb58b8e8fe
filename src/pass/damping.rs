//! Mass-removal damping (§6.5): a pass that would cut off most agents at once is held until
//! the director has said the same thing on several consecutive passes. Pure: no I/O, no
//! state of its own — what it remembers between passes is the [`Pending`] value the caller
//! keeps.
//!
//! Why: an empty `/deployments` from a UAA client that lost its `bosh.read` scope, or a
//! director restored from an old backup, would otherwise disconnect every agent at once —
//! and the health monitor may then recreate every VM. A real `bosh delete-deployment` is
//! only delayed by a few passes. Additions are never held.

use std::collections::BTreeMap;

use crate::config::DampingSettings;
use crate::users::{AgentId, UserSet};

/// What to do with a pass's desired users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Write the desired users as they are.
    Apply,
    /// Keep these agents (id → had a bootstrap user) in the file for now; write the rest.
    Hold(Held),
}

/// A held mass removal, with the numbers its log line and `diff` show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub keep: BTreeMap<AgentId, bool>,
    pub removing: usize,
    pub agents_in_file: usize,
    /// This desired state has now been seen on `seen` consecutive passes, of `needed`.
    pub seen: u32,
    pub needed: u32,
}

/// A held desired state, remembered across passes: its fingerprint and how many passes in a
/// row computed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    fingerprint: u64,
    seen: u32,
}

/// Judges a pass that would replace `observed` with `desired`, given what the previous
/// passes left `pending`. Returns the verdict and what the next pass must be given.
/// Allocates only the two borrowed agent lists, and the kept agents when it holds.
pub fn judge(
    settings: &DampingSettings,
    pending: Option<Pending>,
    observed: &UserSet,
    desired: &UserSet,
) -> (Verdict, Option<Pending>) {
    if !settings.enabled {
        return (Verdict::Apply, None);
    }
    let in_file = observed.agents();
    let agents_in_file = in_file.len();
    let wanted = desired.agents();
    // Both sorted by id: the agents in the file that the desired state lacks.
    let mut gone = Vec::new();
    let mut w = wanted.iter().peekable();
    for &(id, bootstrap) in &in_file {
        while w.next_if(|(other, _)| *other < id).is_some() {}
        if w.peek().is_none_or(|(other, _)| *other != id) {
            gone.push((id, bootstrap));
        }
    }
    let removing = gone.len();
    let limit =
        (settings.max_removal_fraction * agents_in_file as f64).max(settings.min_removals as f64);
    if (removing as f64) <= limit {
        return (Verdict::Apply, None);
    }
    let fingerprint = desired.fingerprint();
    let seen = match pending {
        Some(p) if p.fingerprint == fingerprint => p.seen + 1,
        _ => 1,
    };
    if seen >= settings.confirmations {
        return (Verdict::Apply, None);
    }
    let held = Held {
        keep: gone
            .into_iter()
            .filter_map(|(id, bootstrap)| Some((AgentId::parse(id).ok()?, bootstrap)))
            .collect(),
        removing,
        agents_in_file,
        seen,
        needed: settings.confirmations,
    };
    (Verdict::Hold(held), Some(Pending { fingerprint, seen }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pass::desired::{self, Subjects};
    use crate::vm::Vm;

    /// Runs passes through `judge`, carrying what it remembers, as a pass does.
    #[derive(Default)]
    struct Damper {
        settings: DampingSettings,
        pending: Option<Pending>,
    }

    impl Damper {
        fn new(settings: DampingSettings) -> Self {
            Self {
                settings,
                pending: None,
            }
        }

        fn judge(&mut self, observed: &UserSet, desired: &UserSet) -> Verdict {
            let (verdict, pending) = judge(&self.settings, self.pending, observed, desired);
            self.pending = pending;
            verdict
        }
    }

    fn users(ids: impl IntoIterator<Item = usize>) -> UserSet {
        let vms: Vec<Vm> = ids
            .into_iter()
            .map(|i| Vm {
                agent_id: Some(format!("agent-{i}")),
                permanent_nats_credentials: i % 2 == 0,
            })
            .collect();
        desired::compute(&Subjects::default(), vms).users
    }

    #[test]
    fn everything_gone_is_held_for_k_minus_one_passes_then_applied() {
        let mut d = Damper::new(DampingSettings::default());
        let before = users(0..40);
        let empty = users([]);
        for seen in 1..=2 {
            match d.judge(&before, &empty) {
                Verdict::Hold(Held {
                    keep,
                    removing,
                    agents_in_file,
                    seen: s,
                    needed,
                }) => {
                    assert_eq!(
                        (keep.len(), removing, agents_in_file, s, needed),
                        (40, 40, 40, seen, 3)
                    );
                    assert!(
                        keep[&AgentId::parse("agent-1").unwrap()],
                        "agent-1 has a bootstrap user"
                    );
                    assert!(
                        !keep[&AgentId::parse("agent-2").unwrap()],
                        "agent-2 has permanent credentials"
                    );
                }
                Verdict::Apply => panic!("pass {seen} must be held"),
            }
        }
        assert_eq!(d.judge(&before, &empty), Verdict::Apply);
    }

    #[test]
    fn a_small_drop_applies_at_once() {
        let mut d = Damper::new(DampingSettings::default());
        // 5 of 8 is more than half, but not more than the minimum count of 10.
        assert_eq!(d.judge(&users(0..8), &users(5..8)), Verdict::Apply);
        // 11 of 40 is more than 10, but not more than half.
        assert_eq!(d.judge(&users(0..40), &users(11..40)), Verdict::Apply);
    }

    #[test]
    fn a_changing_desired_state_restarts_the_count() {
        let mut d = Damper::new(DampingSettings::default());
        let before = users(0..40);
        assert!(matches!(
            d.judge(&before, &users([])),
            Verdict::Hold(Held { seen: 1, .. })
        ));
        assert!(matches!(
            d.judge(&before, &users([])),
            Verdict::Hold(Held { seen: 2, .. })
        ));
        assert!(matches!(
            d.judge(&before, &users([100])),
            Verdict::Hold(Held { seen: 1, .. })
        ));
        // A pass below the threshold forgets the pending state.
        assert_eq!(d.judge(&before, &before), Verdict::Apply);
        assert!(matches!(
            d.judge(&before, &users([])),
            Verdict::Hold(Held { seen: 1, .. })
        ));
    }

    #[test]
    fn disabled_never_holds() {
        let mut d = Damper::new(DampingSettings {
            enabled: false,
            ..Default::default()
        });
        assert_eq!(d.judge(&users(0..40), &users([])), Verdict::Apply);
    }
}
