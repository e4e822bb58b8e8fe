//! Revocation's decision (§12.6): which of the connections nats-server holds the admitted set
//! no longer allows — a pure function of two plain values, like the pass's `decide`.
//!
//! A connection is an agent's when its peer certificate's subject (as nats-server spells it in
//! CONNZ: `CN=…,O=…,C=…`) reads, attribute by attribute, as an agent's or a bootstrap agent's
//! certificate ([`identify_subject`]). It is closed when the answer the responder would give it
//! now is a refusal ([`judge`]): its agent is not in the set, or it holds a bootstrap
//! certificate where the set no longer allows one. Never touched:
//!
//! - static users (the director, the health monitor, the service itself): nats-server admitted
//!   them from its own users and names them (`authorized_user`), whatever their certificate;
//! - anything that is not an agent's certificate, or has none;
//! - a connection nats-server has not yet said it admitted (no `issuer_key`) that opened
//!   less than [`Decision`]'s settle time ago: it may be waiting for its answer right now —
//!   a new VM's agent, whose pass has not run yet — and the answer decides it. It is counted
//!   ([`Decision::waiting`]) so the revoker looks again once it has settled.

use std::time::Duration;

use crate::users::AgentId;

use super::admitted::AdmittedSet;
use super::decide::{Refusal, Verdict, judge};
use super::identity::{Identity, identify_subject};

/// A server of the cluster, as its CONNZ reply names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Server {
    /// Its id (`N…`): the `<server_id>` of `$SYS.REQ.SERVER.<server_id>.KICK`.
    pub id: String,
    /// Its name (the id unless `server_name` is set), for logs and `/status`.
    pub name: String,
}

/// How nats-server admitted a connection, as CONNZ shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmittedBy {
    /// One of its static users (`authorized_user`).
    StaticUser,
    /// An answer of the callout (`issuer_key`: the account the user JWT admitted it to).
    Callout,
    /// Neither is shown: still waiting for its answer, or a server that does not say.
    Unknown,
}

/// One client connection of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The server's id for it.
    pub cid: u64,
    /// `tls_peer_certs[0].subject`; `None` without a client certificate.
    pub subject: Option<String>,
    pub admitted_by: AdmittedBy,
    /// How long it had been open when the server answered; `None` when its times could not
    /// be read (then it counts as settled).
    pub age: Option<Duration>,
}

/// The connections one server holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConnections {
    pub server: Server,
    pub connections: Vec<Connection>,
}

/// A connection to close, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kick {
    pub server: Server,
    pub cid: u64,
    /// The agent its certificate names.
    pub agent: AgentId,
    /// Whether that certificate is the agent's bootstrap one.
    pub bootstrap: bool,
    /// The refusal the responder would answer it with now: `unknown agent` or `bootstrap
    /// certificate not allowed`.
    pub refusal: Refusal,
}

/// What a check decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// The connections to close, in the order observed.
    pub kicks: Vec<Kick>,
    /// Agents' connections the set would refuse, left alone because they may still be
    /// waiting for their answer: look again once they have settled.
    pub waiting: usize,
    /// Agents' connections seen (allowed or not).
    pub agents: usize,
}

/// Decides which of `servers`' connections `admitted` no longer allows. A connection nats-server
/// has not said it admitted is judged only once it is `settle` old (longer than any answer
/// may take: the authorization timeout and a margin).
pub fn decide(servers: &[ServerConnections], admitted: &AdmittedSet, settle: Duration) -> Decision {
    let mut decision = Decision::default();
    for ServerConnections {
        server,
        connections,
    } in servers
    {
        for connection in connections {
            if connection.admitted_by == AdmittedBy::StaticUser {
                continue;
            }
            let Some(subject) = &connection.subject else {
                continue;
            };
            let Identity::Agent { id, bootstrap } = identify_subject(subject) else {
                continue;
            };
            decision.agents += 1;
            let Verdict::Refuse(refusal) = judge(id.clone(), bootstrap, |a| admitted.lookup(a))
            else {
                continue;
            };
            let settled = connection.age.is_none_or(|age| age >= settle);
            if connection.admitted_by == AdmittedBy::Unknown && !settled {
                decision.waiting += 1;
                continue;
            }
            decision.kicks.push(Kick {
                server: server.clone(),
                cid: connection.cid,
                agent: id,
                bootstrap,
                refusal,
            });
        }
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::connz::parse_reply;
    use crate::users::UserSet;

    const CAPTURED: &str = include_str!("testdata/connz_replies.json");
    const SETTLE: Duration = Duration::from_secs(2);

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    fn set(agents: &[(&str, bool)]) -> AdmittedSet {
        let mut users = UserSet::default();
        users.add_agents(agents.iter().map(|(a, b)| (id(a), *b)));
        AdmittedSet::of(&users)
    }

    /// The captured replies (two routed 2.14.5 servers: the service twice on `n0`, `a1` on
    /// `n1`), as the observation reads them.
    fn captured() -> Vec<ServerConnections> {
        let replies: Vec<serde_json::Value> = serde_json::from_str(CAPTURED).unwrap();
        replies
            .iter()
            .map(|r| {
                let page = parse_reply(r.to_string().as_bytes()).unwrap();
                ServerConnections {
                    server: page.server,
                    connections: page.connections,
                }
            })
            .collect()
    }

    fn server(name: &str) -> Server {
        Server {
            id: format!("N{}", name.to_uppercase()),
            name: name.to_owned(),
        }
    }

    fn connection(cid: u64, subject: &str, admitted_by: AdmittedBy) -> Connection {
        Connection {
            cid,
            subject: Some(subject.to_owned()),
            admitted_by,
            age: Some(Duration::from_secs(60)),
        }
    }

    fn agent_subject(id: &str) -> String {
        format!("CN={id}.agent.bosh-internal,O=Cloud Foundry,C=USA")
    }

    fn bootstrap_subject(id: &str) -> String {
        format!("CN={id}.bootstrap.agent.bosh-internal,O=Cloud Foundry,C=USA")
    }

    /// (server name, cid, agent, refusal reason) of each kick.
    fn kicks(decision: &Decision) -> Vec<(String, u64, String, &'static str)> {
        decision
            .kicks
            .iter()
            .map(|k| {
                (
                    k.server.name.clone(),
                    k.cid,
                    k.agent.to_string(),
                    k.refusal.reason(),
                )
            })
            .collect()
    }

    #[test]
    fn the_captured_cluster_closes_a1_on_the_other_node_once_it_is_removed() {
        let servers = captured();
        assert_eq!(servers.len(), 2);
        let admitted = decide(&servers, &set(&[("a1", false)]), SETTLE);
        assert_eq!(admitted.kicks, []);
        assert_eq!(
            admitted.agents, 1,
            "the service's connections are no agent's"
        );
        let removed = decide(&servers, &set(&[("b2", true)]), SETTLE);
        assert_eq!(
            kicks(&removed),
            [("n1".to_owned(), 11, "a1".to_owned(), "unknown_agent")]
        );
        assert_eq!(
            removed.kicks[0].server.id, "NDCXU76ZPG7JIXAFUJGRPO3L5MRJJU557NG5J7HAW4P4UQY2572N6PWL",
            "kicked where it is connected"
        );
        assert_eq!(removed.kicks[0].refusal.message(), "unknown agent");
        assert_eq!(
            decide(&servers, &AdmittedSet::default(), SETTLE)
                .kicks
                .len(),
            1,
            "an empty set closes agents only"
        );
    }

    #[test]
    fn agents_are_closed_when_removed_or_their_bootstrap_certificate_is_taken_back() {
        let n0 = ServerConnections {
            server: server("n0"),
            connections: vec![
                connection(1, &agent_subject("a"), AdmittedBy::Callout),
                connection(2, &bootstrap_subject("a"), AdmittedBy::Callout),
                connection(3, &agent_subject("b"), AdmittedBy::Callout),
                connection(4, &bootstrap_subject("b"), AdmittedBy::Callout),
                connection(5, &agent_subject("gone"), AdmittedBy::Callout),
                connection(6, &bootstrap_subject("gone"), AdmittedBy::Callout),
            ],
        };
        let n1 = ServerConnections {
            server: server("n1"),
            connections: vec![connection(7, &agent_subject("gone"), AdmittedBy::Callout)],
        };
        let decision = decide(&[n0, n1], &set(&[("a", true), ("b", false)]), SETTLE);
        assert_eq!(
            kicks(&decision),
            [
                ("n0".to_owned(), 4, "b".to_owned(), "bootstrap_refused"),
                ("n0".to_owned(), 5, "gone".to_owned(), "unknown_agent"),
                ("n0".to_owned(), 6, "gone".to_owned(), "unknown_agent"),
                ("n1".to_owned(), 7, "gone".to_owned(), "unknown_agent"),
            ]
        );
        assert!(decision.kicks[0].bootstrap && !decision.kicks[1].bootstrap);
        assert_eq!(decision.agents, 7);
        assert_eq!(decision.waiting, 0);
    }

    #[test]
    fn static_users_and_what_is_not_an_agent_are_never_touched() {
        let n0 = ServerConnections {
            server: server("n0"),
            connections: vec![
                connection(
                    1,
                    "CN=default.director.bosh-internal,O=Cloud Foundry,C=USA",
                    AdmittedBy::StaticUser,
                ),
                connection(
                    2,
                    "CN=default.hm.bosh-internal,O=Cloud Foundry,C=USA",
                    AdmittedBy::StaticUser,
                ),
                connection(
                    3,
                    "CN=default.nats-sync.bosh-internal,O=Cloud Foundry,C=USA",
                    AdmittedBy::StaticUser,
                ),
                // A static user whose certificate reads as an agent's: nats-server admitted it
                // from its own users, not from the set.
                connection(4, &agent_subject("gone"), AdmittedBy::StaticUser),
                connection(
                    5,
                    "CN=somebody.else,O=Cloud Foundry,C=USA",
                    AdmittedBy::Callout,
                ),
                connection(
                    6,
                    "CN=gone.agent.bosh-internal,OU=x,O=Cloud Foundry,C=USA",
                    AdmittedBy::Callout,
                ),
                connection(
                    7,
                    "CN=gone.agent.bosh-internal,O=Cloud Foundry",
                    AdmittedBy::Callout,
                ),
                connection(8, "garbage", AdmittedBy::Callout),
                Connection {
                    cid: 9,
                    subject: None,
                    admitted_by: AdmittedBy::Unknown,
                    age: None,
                },
            ],
        };
        let decision = decide(&[n0], &AdmittedSet::default(), SETTLE);
        assert_eq!(decision.kicks, []);
        assert_eq!(decision.agents, 0);
    }

    #[test]
    fn a_connection_that_may_still_wait_for_its_answer_is_left_to_the_answer() {
        let young = |cid, admitted_by, age| Connection {
            cid,
            subject: Some(agent_subject("new")),
            admitted_by,
            age,
        };
        let n0 = ServerConnections {
            server: server("n0"),
            connections: vec![
                young(1, AdmittedBy::Unknown, Some(Duration::from_millis(300))),
                young(2, AdmittedBy::Unknown, Some(SETTLE)),
                young(3, AdmittedBy::Unknown, None),
                // Admitted already: nothing to wait for.
                young(4, AdmittedBy::Callout, Some(Duration::from_millis(300))),
            ],
        };
        let decision = decide(std::slice::from_ref(&n0), &AdmittedSet::default(), SETTLE);
        assert_eq!(
            decision.kicks.iter().map(|k| k.cid).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_eq!(decision.waiting, 1);
        // Once its VM is in the set, the young one is simply allowed.
        let decision = decide(&[n0], &set(&[("new", false)]), SETTLE);
        assert_eq!((decision.kicks.len(), decision.waiting), (0, 0));
    }
}
