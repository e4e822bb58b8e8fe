//! Whether to admit a connecting client (§12): a pure function of the request and the admitted
//! set. An agent whose id the set holds is admitted with exactly §3.1's permissions — the same
//! lists the auth file gives it — and a bootstrap certificate only where the set allows one;
//! everyone else is refused with a reason a metric can count and a message an operator can read.

use crate::users::{AgentId, Permissions, agent};

use super::identity::{Identity, identify};
use super::request::AuthorizationRequest;

/// The decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Admission),
    Refuse(Refusal),
}

/// An admitted agent, and what its user JWT lets it do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub id: AgentId,
    /// Whether it connected with its bootstrap certificate.
    pub bootstrap: bool,
    pub permissions: Permissions,
}

/// Why a client is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An agent's certificate, but the admitted set does not hold its id.
    UnknownAgent(AgentId),
    /// A verified certificate that is not an agent's.
    NotAgent,
    /// An agent's bootstrap certificate, where its VM has permanent credentials.
    BootstrapRefused(AgentId),
    /// No verified certificate to judge, or one that cannot be read.
    BadRequest(&'static str),
}

impl Refusal {
    /// The metric label (§12).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::UnknownAgent(_) => "unknown_agent",
            Refusal::NotAgent => "not_agent",
            Refusal::BootstrapRefused(_) => "bootstrap_refused",
            Refusal::BadRequest(_) => "bad_request",
        }
    }

    /// What the answer tells nats-server, which logs it (the client only sees
    /// `Authorization Violation`).
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::UnknownAgent(_) => "unknown agent",
            Refusal::NotAgent => "not an agent certificate",
            Refusal::BootstrapRefused(_) => "bootstrap certificate not allowed",
            Refusal::BadRequest(why) => why,
        }
    }

    /// The agent refused, when the certificate named one (an agent id is no secret: logs
    /// and `/status` name it).
    pub fn agent(&self) -> Option<&AgentId> {
        match self {
            Refusal::UnknownAgent(id) | Refusal::BootstrapRefused(id) => Some(id),
            Refusal::NotAgent | Refusal::BadRequest(_) => None,
        }
    }
}

const NO_VERIFIED_CERTIFICATE: &str = "no verified client certificate";
const UNREADABLE_CERTIFICATE: &str = "client certificate unreadable";

/// Decides `request` against the admitted set: `admitted(id)` is `None` for an agent the set
/// does not hold, and `Some(bootstrap allowed)` for one it does (a bootstrap certificate is
/// allowed where §3.1 lists the agent's bootstrap user).
pub fn decide(
    request: &AuthorizationRequest,
    admitted: impl Fn(&AgentId) -> Option<bool>,
) -> Verdict {
    let Some(leaf) = request.leaf_certificate() else {
        return Verdict::Refuse(Refusal::BadRequest(NO_VERIFIED_CERTIFICATE));
    };
    let (id, bootstrap) = match identify(leaf) {
        Ok(Identity::Agent { id, bootstrap }) => (id, bootstrap),
        Ok(Identity::NotAgent) => return Verdict::Refuse(Refusal::NotAgent),
        Err(_) => return Verdict::Refuse(Refusal::BadRequest(UNREADABLE_CERTIFICATE)),
    };
    judge(id, bootstrap, admitted)
}

/// The rule itself, for an agent's certificate (`bootstrap`: its bootstrap one): what the
/// admitted set says of it. Revocation (§12.6) asks the same of a live connection.
pub fn judge(id: AgentId, bootstrap: bool, admitted: impl Fn(&AgentId) -> Option<bool>) -> Verdict {
    match admitted(&id) {
        None => Verdict::Refuse(Refusal::UnknownAgent(id)),
        Some(false) if bootstrap => Verdict::Refuse(Refusal::BootstrapRefused(id)),
        Some(_) => Verdict::Allow(Admission {
            permissions: agent::permissions(&id),
            id,
            bootstrap,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::request::{
        ClientTls, tests::CAPTURED, tests::CAPTURED_AT, tests::plain_keys,
    };
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn request_with_leaf(cn: &str) -> AuthorizationRequest {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "USA");
        dn.push(DnType::OrganizationName, "Cloud Foundry");
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        let leaf = params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        AuthorizationRequest {
            client_tls: Some(ClientTls {
                verified_chains: vec![vec![leaf]],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn id(raw: &str) -> AgentId {
        AgentId::parse(raw).unwrap()
    }

    /// The admitted set of the tests: `a` with a bootstrap user, `b` with permanent
    /// credentials only.
    fn admitted(agent: &AgentId) -> Option<bool> {
        match agent.as_str() {
            "a" => Some(true),
            "b" => Some(false),
            _ => None,
        }
    }

    #[test]
    fn an_admitted_agent_gets_exactly_its_permissions() {
        for (cn, agent, bootstrap) in [
            ("a.agent.bosh-internal", "a", false),
            ("a.bootstrap.agent.bosh-internal", "a", true),
            ("b.agent.bosh-internal", "b", false),
        ] {
            let Verdict::Allow(admission) = decide(&request_with_leaf(cn), admitted) else {
                panic!("{cn} refused");
            };
            assert_eq!(admission.id, id(agent));
            assert_eq!(admission.bootstrap, bootstrap);
            let expected = |list: &[&str]| {
                Some(
                    list.iter()
                        .map(|s| s.replace('A', agent))
                        .collect::<Vec<_>>(),
                )
            };
            assert_eq!(
                admission.permissions,
                Permissions {
                    publish: expected(&[
                        "hm.agent.heartbeat.A",
                        "hm.agent.alert.A",
                        "hm.agent.shutdown.A",
                        "director.*.A.*"
                    ]),
                    subscribe: expected(&["agent.A"]),
                }
            );
            // The very lists the auth file gives that agent's user.
            assert_eq!(
                Some(&admission.permissions),
                agent::user(&id(agent), bootstrap).permissions.as_ref()
            );
        }
    }

    #[test]
    fn every_refusal_has_its_reason_and_message() {
        let cases = [
            (
                request_with_leaf("c.agent.bosh-internal"),
                Refusal::UnknownAgent(id("c")),
                "unknown_agent",
                "unknown agent",
            ),
            (
                request_with_leaf("c.bootstrap.agent.bosh-internal"),
                Refusal::UnknownAgent(id("c")),
                "unknown_agent",
                "unknown agent",
            ),
            (
                request_with_leaf("b.bootstrap.agent.bosh-internal"),
                Refusal::BootstrapRefused(id("b")),
                "bootstrap_refused",
                "bootstrap certificate not allowed",
            ),
            (
                request_with_leaf("default.director.bosh-internal"),
                Refusal::NotAgent,
                "not_agent",
                "not an agent certificate",
            ),
            (
                AuthorizationRequest::default(),
                Refusal::BadRequest(NO_VERIFIED_CERTIFICATE),
                "bad_request",
                "no verified client certificate",
            ),
            (
                AuthorizationRequest {
                    client_tls: Some(ClientTls::default()),
                    ..Default::default()
                },
                Refusal::BadRequest(NO_VERIFIED_CERTIFICATE),
                "bad_request",
                "no verified client certificate",
            ),
            (
                AuthorizationRequest {
                    client_tls: Some(ClientTls {
                        verified_chains: vec![vec!["not a certificate".into()]],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Refusal::BadRequest(UNREADABLE_CERTIFICATE),
                "bad_request",
                "client certificate unreadable",
            ),
        ];
        for (request, refusal, reason, message) in cases {
            assert_eq!(
                decide(&request, admitted),
                Verdict::Refuse(refusal.clone()),
                "{message}"
            );
            assert_eq!(refusal.reason(), reason);
            assert_eq!(refusal.message(), message);
        }
        assert_eq!(Refusal::UnknownAgent(id("c")).agent(), Some(&id("c")));
        assert_eq!(Refusal::NotAgent.agent(), None);
    }

    #[test]
    fn the_captured_request_is_a1s() {
        let request = crate::callout::request::open(
            &plain_keys(),
            CAPTURED.trim().as_bytes(),
            None,
            CAPTURED_AT,
        )
        .unwrap();
        let only_a1 = |agent: &AgentId| (agent.as_str() == "a1").then_some(false);
        let Verdict::Allow(admission) = decide(&request.claims.nats, only_a1) else {
            panic!("a1 refused");
        };
        assert_eq!(admission.permissions, agent::permissions(&id("a1")));
        assert_eq!(
            decide(&request.claims.nats, |_| None),
            Verdict::Refuse(Refusal::UnknownAgent(id("a1")))
        );
    }
}
