//! Mass-removal damping (SPEC §6.5): a pass that would cut off most agents at once is held
//! until the director has said the same thing on several consecutive passes. Pure: no I/O.
//!
//! Why: an empty `/deployments` from a UAA client that lost its `bosh.read` scope, or a
//! director restored from an old backup, would otherwise disconnect every agent at once —
//! and the health monitor may then recreate every VM. A real `bosh delete-deployment` is
//! only delayed by a few passes. Additions are never held.

use std::collections::BTreeMap;

use crate::desired::AgentId;
use crate::userset::UserSet;

/// When to hold. Invariant (checked by `config`): `max_removal_fraction` is within 0..=1
/// and `confirmations` ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DampingSettings {
    pub enabled: bool,
    /// A pass may remove at most this fraction of the agents in the file without being held…
    pub max_removal_fraction: f64,
    /// …or at most this many agents, whichever is more.
    pub min_removals: usize,
    /// How many consecutive passes must compute the same desired state before it applies.
    pub confirmations: u32,
}

impl Default for DampingSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_removal_fraction: 0.5,
            min_removals: 10,
            confirmations: 3,
        }
    }
}

/// What to do with a pass's desired users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Write the desired users as they are.
    Apply,
    /// Keep these agents (id → had a bootstrap user) in the file for now; write the rest.
    Hold {
        keep: BTreeMap<AgentId, bool>,
        removing: usize,
        agents_in_file: usize,
        /// This desired state has now been seen on `seen` consecutive passes, of `needed`.
        seen: u32,
        needed: u32,
    },
}

/// Remembers the desired state of the last held pass, to count confirmations.
#[derive(Debug, Default)]
pub struct Damper {
    settings: DampingSettings,
    /// Fingerprint of the last held desired state and how many passes in a row computed it.
    pending: Option<(u64, u32)>,
}

impl Damper {
    pub fn new(settings: DampingSettings) -> Self {
        Self {
            settings,
            pending: None,
        }
    }

    pub fn settings(&self) -> &DampingSettings {
        &self.settings
    }

    /// A pass found the file already as desired: nothing is being removed, so a held
    /// removal is no longer pending (what [`Damper::judge`] concludes for such a pass).
    pub fn settled(&mut self) {
        self.pending = None;
    }

    /// Judges a pass that would replace `observed` with `desired`. Allocates only the two
    /// borrowed agent lists, and the kept agents when it holds.
    pub fn judge(&mut self, observed: &UserSet, desired: &UserSet) -> Verdict {
        if !self.settings.enabled {
            return Verdict::Apply;
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
        let limit = (self.settings.max_removal_fraction * agents_in_file as f64)
            .max(self.settings.min_removals as f64);
        if (removing as f64) <= limit {
            self.pending = None;
            return Verdict::Apply;
        }
        let print = desired.fingerprint();
        let seen = match self.pending {
            Some((p, n)) if p == print => n + 1,
            _ => 1,
        };
        if seen >= self.settings.confirmations {
            self.pending = None;
            return Verdict::Apply;
        }
        self.pending = Some((print, seen));
        Verdict::Hold {
            keep: gone
                .into_iter()
                .filter_map(|(id, bootstrap)| Some((AgentId::parse(id).ok()?, bootstrap)))
                .collect(),
            removing,
            agents_in_file,
            seen,
            needed: self.settings.confirmations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{self, Subjects, agent_of};
    use crate::director::Vm;

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
    fn recognises_agent_users() {
        assert_eq!(
            agent_of("C=USA, O=Cloud Foundry, CN=a-1.agent.bosh-internal"),
            Some((AgentId::parse("a-1").unwrap(), false))
        );
        assert_eq!(
            agent_of("C=USA, O=Cloud Foundry, CN=a-1.bootstrap.agent.bosh-internal"),
            Some((AgentId::parse("a-1").unwrap(), true))
        );
        assert_eq!(
            agent_of("C=USA, O=Cloud Foundry, CN=default.director.bosh-internal"),
            None
        );
        assert_eq!(agent_of("CN=x.agent.bosh-internal"), None);
    }

    #[test]
    fn everything_gone_is_held_for_k_minus_one_passes_then_applied() {
        let mut d = Damper::new(DampingSettings::default());
        let before = users(0..40);
        let empty = users([]);
        for seen in 1..=2 {
            match d.judge(&before, &empty) {
                Verdict::Hold {
                    keep,
                    removing,
                    agents_in_file,
                    seen: s,
                    needed,
                } => {
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
            Verdict::Hold { seen: 1, .. }
        ));
        assert!(matches!(
            d.judge(&before, &users([])),
            Verdict::Hold { seen: 2, .. }
        ));
        assert!(matches!(
            d.judge(&before, &users([100])),
            Verdict::Hold { seen: 1, .. }
        ));
        // A pass below the threshold forgets the pending state.
        assert_eq!(d.judge(&before, &before), Verdict::Apply);
        assert!(matches!(
            d.judge(&before, &users([])),
            Verdict::Hold { seen: 1, .. }
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
