//! The director's VMs + the two subjects → the desired NATS users (§3). Pure: no I/O.

use metrics::Label;

use crate::users::agent::{self, AgentId};
use crate::users::{User, UserSet};
use crate::vm::Vm;

/// A client-certificate subject DN as read from a subject file: trimmed, without an
/// `openssl x509 -subject` style `subject=` prefix, non-empty, free of control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(String);

/// A subject file's content that cannot be used as a NATS user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("the subject contains a control character")]
    ControlCharacter,
}

impl Subject {
    /// `Ok(None)` for blank content ("unknown"), `Err` for content that must be refused.
    pub fn parse(content: &str) -> Result<Option<Self>, SubjectError> {
        let trimmed = content.trim();
        let trimmed = trimmed
            .strip_prefix("subject=")
            .map_or(trimmed, str::trim_start);
        if trimmed.is_empty() {
            return Ok(None);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(SubjectError::ControlCharacter);
        }
        Ok(Some(Self(trimmed.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The subjects of the two BOSH components that always get a NATS user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subjects {
    pub director: Option<Subject>,
    pub hm: Option<Subject>,
}

/// Why a VM was left out of the desired users (§3.3): the `reason` label of
/// `bosh_nats_sync_skipped_vms_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// `agent_id` null or empty: normal for a moment while a VM is being created.
    NoAgentId,
    /// `agent_id` outside `[A-Za-z0-9_-]{1,128}`.
    InvalidAgentId,
    /// The same agent id reported a second time.
    Duplicate,
}

impl Label for SkipReason {
    const ALL: &'static [Self] = &[Self::NoAgentId, Self::InvalidAgentId, Self::Duplicate];

    fn as_str(self) -> &'static str {
        match self {
            Self::NoAgentId => "no_agent_id",
            Self::InvalidAgentId => "invalid_agent_id",
            Self::Duplicate => "duplicate",
        }
    }
}

/// VMs left out of the desired users, by reason (§3.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    pub no_agent_id: usize,
    pub invalid_agent_id: usize,
    pub duplicate: usize,
}

impl Skipped {
    /// The counts by their reason.
    pub fn by_reason(&self) -> [(SkipReason, usize); 3] {
        [
            (SkipReason::NoAgentId, self.no_agent_id),
            (SkipReason::InvalidAgentId, self.invalid_agent_id),
            (SkipReason::Duplicate, self.duplicate),
        ]
    }

    /// Every VM left out.
    pub fn total(&self) -> usize {
        self.no_agent_id + self.invalid_agent_id + self.duplicate
    }
}

/// Which rule of §3.1 made a user: the `kind` label of `bosh_nats_sync_desired_users` (and
/// a field of `/status`'s `desired_users`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UserKind {
    Director,
    HealthMonitor,
    Agent,
    AgentBootstrap,
}

impl Label for UserKind {
    const ALL: &'static [Self] = &[
        Self::Director,
        Self::HealthMonitor,
        Self::Agent,
        Self::AgentBootstrap,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Director => "director",
            Self::HealthMonitor => "hm",
            Self::Agent => "agent",
            Self::AgentBootstrap => "agent_bootstrap",
        }
    }
}

/// Desired users by kind, for metrics and the pass summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub director: usize,
    pub hm: usize,
    pub agent: usize,
    pub agent_bootstrap: usize,
}

impl Counts {
    /// The counts by their kind, in the order `/status` lists them.
    pub fn by_kind(&self) -> [(UserKind, usize); 4] {
        [
            (UserKind::Director, self.director),
            (UserKind::HealthMonitor, self.hm),
            (UserKind::Agent, self.agent),
            (UserKind::AgentBootstrap, self.agent_bootstrap),
        ]
    }

    /// Every desired user.
    pub fn total(&self) -> usize {
        self.director + self.hm + self.agent + self.agent_bootstrap
    }
}

/// The outcome of computing desired state: the users (compact: the two component users plus
/// one sorted entry per agent, rendered on demand) and what was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub users: UserSet,
    pub counts: Counts,
    pub skipped: Skipped,
}

/// The director's user (§3.1).
fn director_user(subject: &Subject) -> User {
    User::new(
        subject.as_str().to_owned(),
        vec!["agent.*".into(), "hm.director.alert".into()],
        vec!["director.>".into()],
    )
}

/// The health monitor's user (§3.1).
fn hm_user(subject: &Subject) -> User {
    User::new(
        subject.as_str().to_owned(),
        vec![],
        vec![
            "hm.agent.heartbeat.*".into(),
            "hm.agent.alert.*".into(),
            "hm.agent.shutdown.*".into(),
            "hm.director.alert".into(),
        ],
    )
}

/// The director/health-monitor-only users: what bootstrap writes before the director answers.
pub fn bootstrap(subjects: &Subjects) -> Desired {
    compute(subjects, Vec::new())
}

/// The full desired state (§3.1). Deterministic: the same inputs in any order give the
/// same users in the same order. An agent id reported twice yields its users once; if any of
/// its reports lacks permanent credentials, it keeps its bootstrap user too (so the result
/// does not depend on which report came first). Takes the VMs by value: their agent ids
/// become the desired state's without being copied.
pub fn compute(subjects: &Subjects, vms: Vec<Vm>) -> Desired {
    let mut skipped = Skipped::default();
    // (agent id, needs a bootstrap user), sorted below; in place over the VM list.
    let mut agents: Vec<(AgentId, bool)> = vms
        .into_iter()
        .filter_map(|vm| {
            let raw = match vm.agent_id {
                Some(raw) if !raw.is_empty() => raw,
                _ => {
                    skipped.no_agent_id += 1;
                    return None;
                }
            };
            match AgentId::parse_string(raw) {
                Ok(id) => Some((id, !vm.permanent_nats_credentials)),
                Err((_, raw)) => {
                    skipped.invalid_agent_id += 1;
                    tracing::warn!(agent_id = ?raw, "skipping a VM whose agent id is not [A-Za-z0-9_-]{{1,128}}");
                    None
                }
            }
        })
        .collect();
    skipped.duplicate = agent::merge_by_id(&mut agents, |a| &a.0, |kept, later| kept.1 |= later.1);

    let mut counts = Counts::default();
    let mut components = Vec::with_capacity(2);
    if let Some(s) = &subjects.director {
        components.push(director_user(s));
        counts.director = 1;
    }
    if let Some(s) = &subjects.hm {
        components.push(hm_user(s));
        counts.hm = 1;
    }
    counts.agent = agents.len();
    counts.agent_bootstrap = agents.iter().filter(|(_, b)| *b).count();
    Desired {
        users: UserSet::desired(components, agents),
        counts,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(id: Option<&str>, permanent: bool) -> Vm {
        Vm {
            agent_id: id.map(str::to_owned),
            permanent_nats_credentials: permanent,
        }
    }

    #[test]
    fn subject_parsing() {
        let p = |s: &str| Subject::parse(s).map(|o| o.map(|s| s.0));
        assert_eq!(
            p("C=USA, O=Cloud Foundry, CN=default.director.bosh-internal\n"),
            Ok(Some(
                "C=USA, O=Cloud Foundry, CN=default.director.bosh-internal".into()
            ))
        );
        assert_eq!(
            p("subject=C=USA, O=Cloud Foundry, CN=d\n"),
            Ok(Some("C=USA, O=Cloud Foundry, CN=d".into()))
        );
        assert_eq!(
            p("subject= C = USA, O = Cloud Foundry, CN = d"),
            Ok(Some("C = USA, O = Cloud Foundry, CN = d".into()))
        );
        assert_eq!(p("  \n\t"), Ok(None));
        assert_eq!(p(""), Ok(None));
        assert_eq!(p("subject="), Ok(None));
        assert_eq!(p("CN=a\u{7}b"), Err(SubjectError::ControlCharacter));
        assert_eq!(p("CN=a\nCN=b"), Err(SubjectError::ControlCharacter));
    }

    #[test]
    fn skips_missing_invalid_and_duplicate_agent_ids() {
        let subjects = Subjects::default();
        let d = compute(
            &subjects,
            vec![
                vm(None, false),
                vm(Some(""), true),
                vm(Some("x.>"), false),
                vm(Some("a"), true),
                vm(Some("a"), true),
            ],
        );
        assert_eq!(
            d.skipped,
            Skipped {
                no_agent_id: 2,
                invalid_agent_id: 1,
                duplicate: 1
            }
        );
        let users = d.users.to_users();
        let names: Vec<_> = users.iter().map(|u| u.user.as_str()).collect();
        assert_eq!(names, ["C=USA, O=Cloud Foundry, CN=a.agent.bosh-internal"]);
    }

    #[test]
    fn order_of_director_responses_does_not_matter() {
        let subjects = Subjects {
            director: Subject::parse("CN=d").unwrap(),
            hm: Subject::parse("CN=h").unwrap(),
        };
        let mut vms = vec![
            vm(Some("b"), false),
            vm(Some("a"), true),
            vm(Some("c"), false),
            vm(Some("a"), false),
        ];
        let one = compute(&subjects, vms.clone());
        vms.reverse();
        assert_eq!(compute(&subjects, vms), one);
        // "a" is reported once without permanent credentials, so it keeps its bootstrap user.
        assert_eq!(
            one.counts,
            Counts {
                director: 1,
                hm: 1,
                agent: 3,
                agent_bootstrap: 3
            }
        );
    }

    #[test]
    fn bootstrap_holds_only_known_subjects() {
        let only_hm = Subjects {
            director: None,
            hm: Subject::parse("CN=h").unwrap(),
        };
        let d = bootstrap(&only_hm);
        assert_eq!(d.users.len(), 1);
        assert_eq!(d.users.to_users()[0].user, "CN=h");
        assert!(bootstrap(&Subjects::default()).users.is_empty());
    }
}
