//! Revocation's observe and apply (§12.6), through nats-server's system account on the
//! responder's own connection (one certificate, one connection):
//!
//! - **Observe**: `$SYS.REQ.SERVER.PING.CONNZ` with `{"auth": true, "sort": "cid", "offset": …,
//!   "limit": …}`. Every server of a cluster answers for its own connections, so the replies
//!   are gathered until a short quiet period; a server that holds more than a page is asked
//!   again with the next offset (the request goes to every server, and only those still paging
//!   are waited for) until all of its connections have been seen. A connection that closes
//!   between two pages moves every later one a place back, so the next page would start past
//!   one never seen: each next page starts [`overlap`] connections early, and one that does
//!   not reach back to a connection already seen (as many closed meanwhile, or more) makes
//!   the observation incomplete, so the check is repeated.
//! - **Apply**: `$SYS.REQ.SERVER.<server_id>.KICK` with `{"cid": N}`, as a request —
//!   nats-server ignores a system request without a reply subject. Its reply has no `error`
//!   when the connection was closed, and `no such client or leafnode id` when there was none
//!   (observed on 2.14.5 and 2.15.1).
//!
//! [`parse_reply`] turns one CONNZ reply into plain values; the decision over them is
//! [`super::revoke::decide`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use super::revoke::{AdmittedBy, Connection, Server, ServerConnections};

/// Where every server of the cluster answers with its connections.
pub const CONNZ_SUBJECT: &str = "$SYS.REQ.SERVER.PING.CONNZ";
/// nats-server's own page size for CONNZ (`data.limit` when none is asked for).
pub const PAGE: usize = 1024;
/// What a KICK reply's error says when the connection is no longer there.
const NO_SUCH_CLIENT: &str = "no such client";

/// Where one server closes one of its connections.
pub fn kick_subject(server_id: &str) -> String {
    format!("$SYS.REQ.SERVER.{server_id}.KICK")
}

/// How the replies to one CONNZ request are gathered.
#[derive(Debug, Clone, Copy)]
pub struct Gather {
    /// Connections asked for per server and request.
    pub page: usize,
    /// How long to wait for the first reply (then: no server answered).
    pub first: Duration,
    /// The replies of a cluster are complete once none came for this long.
    pub quiet: Duration,
}

impl Default for Gather {
    fn default() -> Self {
        Self {
            page: PAGE,
            first: Duration::from_secs(2),
            quiet: Duration::from_millis(100),
        }
    }
}

/// The connections every server that answered holds, and what could not be seen.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// By server id.
    pub servers: Vec<ServerConnections>,
    /// What is missing, in words (a reply that could not be read, a server that stopped
    /// answering before its last page): the check is repeated later.
    pub incomplete: Vec<String>,
    /// What seeing them cost: CONNZ requests sent (one per round of pages), replies read
    /// (one page of one server each) and their bytes.
    pub requests: usize,
    pub replies: usize,
    pub bytes: usize,
}

impl Observation {
    /// Connections seen, on all servers.
    pub fn connections(&self) -> usize {
        self.servers.iter().map(|s| s.connections.len()).sum()
    }
}

/// Why nothing could be observed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    #[error("cannot ask nats-server for its connections: {0}")]
    Request(String),
    #[error("no nats-server answered {CONNZ_SUBJECT} within {0:?}")]
    NoAnswer(Duration),
}

/// One server's reply to CONNZ: one page of its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub server: Server,
    /// All the connections it holds.
    pub total: usize,
    /// Where this page starts among them.
    pub offset: usize,
    pub connections: Vec<Connection>,
}

/// A reply that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("unreadable reply: {0}")]
    Unreadable(String),
    #[error("server {server} answered with an error: {description}")]
    Server { server: String, description: String },
}

#[derive(Deserialize)]
struct Reply {
    server: ServerInfo,
    data: Option<Connz>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ServerInfo {
    id: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct Connz {
    now: Option<String>,
    #[serde(default)]
    total: usize,
    #[serde(default)]
    offset: usize,
    #[serde(default)]
    connections: Option<Vec<ConnInfo>>,
}

#[derive(Deserialize)]
struct ConnInfo {
    cid: u64,
    start: Option<String>,
    authorized_user: Option<String>,
    issuer_key: Option<String>,
    tls_peer_certs: Option<Vec<PeerCert>>,
}

#[derive(Deserialize)]
struct PeerCert {
    subject: String,
}

fn time(text: Option<&str>) -> Option<SystemTime> {
    humantime::parse_rfc3339(text?).ok()
}

/// Reads one server's reply to CONNZ (`auth: true`).
pub fn parse_reply(bytes: &[u8]) -> Result<Page, ReplyError> {
    let reply: Reply =
        serde_json::from_slice(bytes).map_err(|e| ReplyError::Unreadable(e.to_string()))?;
    let server = Server {
        name: if reply.server.name.is_empty() {
            reply.server.id.clone()
        } else {
            reply.server.name
        },
        id: reply.server.id,
    };
    if let Some(error) = reply.error {
        return Err(ReplyError::Server {
            server: server.name,
            description: error.description,
        });
    }
    let data = reply
        .data
        .ok_or_else(|| ReplyError::Unreadable(format!("no data from server {}", server.name)))?;
    let now = time(data.now.as_deref());
    let connections = data
        .connections
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let nonempty = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
            Connection {
                cid: c.cid,
                subject: c
                    .tls_peer_certs
                    .and_then(|certs| certs.into_iter().next())
                    .map(|leaf| leaf.subject),
                admitted_by: if nonempty(&c.authorized_user) {
                    AdmittedBy::StaticUser
                } else if nonempty(&c.issuer_key) {
                    AdmittedBy::Callout
                } else {
                    AdmittedBy::Unknown
                },
                age: now
                    .zip(time(c.start.as_deref()))
                    .map(|(now, start)| now.duration_since(start).unwrap_or(Duration::ZERO)),
            }
        })
        .collect();
    Ok(Page {
        server,
        total: data.total,
        offset: data.offset,
        connections,
    })
}

/// How many connections each next page re-reads of the one before, for pages of `page`
/// (CONNZ sorted by `cid`, so a page that starts at a connection already seen left none out).
pub fn overlap(page: usize) -> usize {
    match page {
        0 | 1 => 0,
        2..=31 => 1,
        _ => page / 16,
    }
}

/// What one server has shown so far.
struct Seen {
    server: Server,
    total: usize,
    /// Where its next page starts.
    next: usize,
    connections: BTreeMap<u64, Connection>,
    done: bool,
}

impl Seen {
    /// Takes one page. `Err` when it may have skipped connections: it starts past every
    /// connection seen so far although it was asked to start among them (`overlap` > 0).
    fn take(&mut self, page: Page, overlap: usize) -> Result<(), String> {
        let got = page.connections.len();
        let first = page.connections.iter().map(|c| c.cid).min();
        let last_seen = self.connections.keys().next_back().copied();
        let skipped = overlap > 0
            && page.offset > 0
            && first
                .zip(last_seen)
                .is_some_and(|(first, last)| first > last);
        self.total = page.total;
        for connection in page.connections {
            self.connections.insert(connection.cid, connection);
        }
        let next = page.offset + got;
        // Done when the last page came (an empty one: connections closed meanwhile).
        self.done = got == 0 || next >= page.total;
        self.next = self.next.max(next);
        if skipped {
            return Err(format!(
                "server {}: at least {overlap} connections closed between two pages, so some \
                 may not have been seen",
                self.server.name
            ));
        }
        Ok(())
    }
}

/// Asks every server for its connections through `client` (the system account's), page by
/// page, and gathers what they hold.
pub async fn observe(
    client: &async_nats::Client,
    gather: &Gather,
) -> Result<Observation, ObserveError> {
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut incomplete = Vec::new();
    let mut cost = Cost::default();
    // The first round: whoever answers, until the replies stop coming.
    let replies = ask(client, gather, 0, None, &mut cost).await?;
    if replies.is_empty() {
        return Err(ObserveError::NoAnswer(gather.first));
    }
    let overlap = overlap(gather.page);
    absorb(replies, &mut seen, &mut incomplete, overlap);
    // Then the next pages of the servers that hold more, waiting for those only. Each round
    // moves the offset on (a server that answers brings a page, or is done); the bound only
    // guards against a server whose connections grow faster than they are read.
    for _ in 0..MAX_ROUNDS {
        let paging: BTreeSet<String> = seen
            .iter()
            .filter(|(_, s)| !s.done)
            .map(|(id, _)| id.clone())
            .collect();
        let Some(offset) = paging.iter().map(|id| seen[id].next).min() else {
            break;
        };
        let offset = offset.saturating_sub(overlap);
        let replies = ask(client, gather, offset, Some(&paging), &mut cost).await?;
        let answered: BTreeSet<String> = replies
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|p| p.server.id.clone())
            .collect();
        absorb(
            replies
                .into_iter()
                .filter(|r| r.as_ref().is_ok_and(|p| paging.contains(&p.server.id)))
                .collect(),
            &mut seen,
            &mut incomplete,
            overlap,
        );
        for id in paging.difference(&answered) {
            let s = seen.get_mut(id).expect("paging holds seen servers");
            s.done = true;
            incomplete.push(format!(
                "server {} did not answer for its connections from {offset} on (of {})",
                s.server.name, s.total
            ));
        }
    }
    for s in seen.values().filter(|s| !s.done) {
        incomplete.push(format!(
            "server {} still had connections to list after {MAX_ROUNDS} pages",
            s.server.name
        ));
    }
    Ok(Observation {
        servers: seen
            .into_values()
            .map(|s| ServerConnections {
                server: s.server,
                connections: s.connections.into_values().collect(),
            })
            .collect(),
        incomplete,
        requests: cost.requests,
        replies: cost.replies,
        bytes: cost.bytes,
    })
}

/// Requests sent, replies read and their bytes, so far.
#[derive(Default)]
struct Cost {
    requests: usize,
    replies: usize,
    bytes: usize,
}

/// Rounds of paging at most.
const MAX_ROUNDS: usize = 1000;

/// Takes the pages of one round into `seen`; what could not be read into `incomplete`.
fn absorb(
    replies: Vec<Result<Page, ReplyError>>,
    seen: &mut BTreeMap<String, Seen>,
    incomplete: &mut Vec<String>,
    overlap: usize,
) {
    for reply in replies {
        let taken = match reply {
            Ok(page) => seen
                .entry(page.server.id.clone())
                .or_insert_with(|| Seen {
                    server: page.server.clone(),
                    total: 0,
                    next: 0,
                    connections: BTreeMap::new(),
                    done: false,
                })
                .take(page, overlap),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = taken {
            incomplete.push(why);
        }
    }
}

/// One CONNZ request from `offset`: the replies until none came for [`Gather::quiet`] (the
/// first within [`Gather::first`]), or until every server of `awaited` has answered.
async fn ask(
    client: &async_nats::Client,
    gather: &Gather,
    offset: usize,
    awaited: Option<&BTreeSet<String>>,
    cost: &mut Cost,
) -> Result<Vec<Result<Page, ReplyError>>, ObserveError> {
    let request = |e: &dyn std::fmt::Display| ObserveError::Request(e.to_string());
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| request(&e))?;
    let body =
        serde_json::json!({"auth": true, "sort": "cid", "offset": offset, "limit": gather.page});
    client
        .publish_with_reply(CONNZ_SUBJECT, inbox, body.to_string().into())
        .await
        .map_err(|e| request(&e))?;
    cost.requests += 1;
    let started = Instant::now();
    let mut pages = Vec::new();
    let mut waiting: BTreeSet<String> = awaited.cloned().unwrap_or_default();
    loop {
        let deadline = match (pages.is_empty(), awaited) {
            (true, _) | (false, Some(_)) => started + gather.first,
            (false, None) => Instant::now() + gather.quiet,
        };
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await else {
            break;
        };
        cost.replies += 1;
        cost.bytes += message.payload.len();
        let page = parse_reply(&message.payload);
        if let Ok(page) = &page {
            waiting.remove(&page.server.id);
        }
        pages.push(page);
        if awaited.is_some() && waiting.is_empty() {
            break;
        }
    }
    let _ = replies.unsubscribe().await;
    Ok(pages)
}

/// What a KICK did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kicked {
    /// The server closed the connection.
    Closed,
    /// The server holds no such connection (any more).
    Gone,
    /// No answer, or an error: the next check tries again.
    Failed(String),
}

/// Reads a KICK reply.
pub fn parse_kick_reply(bytes: &[u8]) -> Kicked {
    #[derive(Deserialize)]
    struct KickReply {
        error: Option<ApiError>,
    }
    match serde_json::from_slice::<KickReply>(bytes) {
        Ok(KickReply { error: None }) => Kicked::Closed,
        Ok(KickReply { error: Some(e) }) if e.description.contains(NO_SUCH_CLIENT) => Kicked::Gone,
        Ok(KickReply { error: Some(e) }) => Kicked::Failed(e.description),
        Err(e) => Kicked::Failed(format!("unreadable reply: {e}")),
    }
}

/// Asks server `server_id` to close its connection `cid`, waiting at most `timeout`.
pub async fn kick(
    client: &async_nats::Client,
    server_id: &str,
    cid: u64,
    timeout: Duration,
) -> Kicked {
    let request = async_nats::Request::new()
        .payload(serde_json::json!({ "cid": cid }).to_string().into())
        .timeout(Some(timeout));
    match client.send_request(kick_subject(server_id), request).await {
        Ok(reply) => parse_kick_reply(&reply.payload),
        Err(e) => Kicked::Failed(match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                format!("no server {server_id} answered (no responders)")
            }
            async_nats::RequestErrorKind::TimedOut => format!("no answer within {timeout:?}"),
            _ => e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURED: &str = include_str!("testdata/connz_replies.json");
    const KICK_REPLY: &str = include_str!("testdata/kick_reply.json");

    fn captured() -> Vec<serde_json::Value> {
        serde_json::from_str(CAPTURED).unwrap()
    }

    #[test]
    fn the_captured_replies_read_as_each_server_s_connections() {
        let pages: Vec<Page> = captured()
            .iter()
            .map(|r| parse_reply(r.to_string().as_bytes()).unwrap())
            .collect();
        let n0 = &pages[0];
        assert_eq!(n0.server.name, "n0");
        assert_eq!(
            n0.server.id,
            "NCKXY6DTOJINVGYAAY2DS6IMTLGQTE3PS2YYMV2N4UCBJ75JGESSUKBK"
        );
        assert_eq!((n0.total, n0.offset), (2, 0));
        assert_eq!(
            n0.connections
                .iter()
                .map(|c| (c.cid, c.admitted_by))
                .collect::<Vec<_>>(),
            [(9, AdmittedBy::StaticUser), (12, AdmittedBy::StaticUser)]
        );
        let n1 = &pages[1];
        assert_eq!(n1.server.name, "n1");
        assert_eq!(
            n1.connections,
            [Connection {
                cid: 11,
                subject: Some("CN=a1.agent.bosh-internal,O=Cloud Foundry,C=USA".into()),
                admitted_by: AdmittedBy::Callout,
                // start …35.397020336Z, now …35.406771835Z
                age: Some(Duration::from_nanos(9_751_499)),
            }]
        );
    }

    #[test]
    fn what_a_reply_may_lack_or_say_instead() {
        let base = || captured()[1].clone();
        // No connections at all (an offset past the end): null or absent.
        for connections in [serde_json::Value::Null, serde_json::json!([])] {
            let mut reply = base();
            reply["data"]["connections"] = connections;
            reply["data"]["offset"] = 1024.into();
            let page = parse_reply(reply.to_string().as_bytes()).unwrap();
            assert_eq!(
                (page.connections.len(), page.offset, page.total),
                (0, 1024, 1)
            );
        }
        // No times, no certificate, an empty authorized_user.
        let mut reply = base();
        let c = &mut reply["data"]["connections"][0];
        c.as_object_mut().unwrap().remove("start");
        c.as_object_mut().unwrap().remove("tls_peer_certs");
        c.as_object_mut().unwrap().remove("issuer_key");
        c["authorized_user"] = "".into();
        let page = parse_reply(reply.to_string().as_bytes()).unwrap();
        assert_eq!(
            page.connections[0],
            Connection {
                cid: 11,
                subject: None,
                admitted_by: AdmittedBy::Unknown,
                age: None
            }
        );
        // A server without a name is named by its id.
        let mut reply = base();
        reply["server"].as_object_mut().unwrap().remove("name");
        let page = parse_reply(reply.to_string().as_bytes()).unwrap();
        assert_eq!(page.server.name, page.server.id);
        // An error instead of data.
        let mut reply = base();
        reply.as_object_mut().unwrap().remove("data");
        reply["error"] = serde_json::json!({"code": 403, "description": "not allowed"});
        assert_eq!(
            parse_reply(reply.to_string().as_bytes()),
            Err(ReplyError::Server {
                server: "n1".into(),
                description: "not allowed".into()
            })
        );
        assert!(matches!(parse_reply(b"{}"), Err(ReplyError::Unreadable(_))));
        assert!(matches!(
            parse_reply(b"not json"),
            Err(ReplyError::Unreadable(_))
        ));
    }

    #[test]
    fn kick_replies() {
        assert_eq!(parse_kick_reply(KICK_REPLY.as_bytes()), Kicked::Closed);
        let mut gone: serde_json::Value = serde_json::from_str(KICK_REPLY).unwrap();
        gone["error"] =
            serde_json::json!({"code": 500, "description": "no such client or leafnode id"});
        assert_eq!(parse_kick_reply(gone.to_string().as_bytes()), Kicked::Gone);
        gone["error"]["description"] = "something else".into();
        assert_eq!(
            parse_kick_reply(gone.to_string().as_bytes()),
            Kicked::Failed("something else".into())
        );
        assert!(matches!(parse_kick_reply(b"?"), Kicked::Failed(_)));
        assert_eq!(kick_subject("NDCX"), "$SYS.REQ.SERVER.NDCX.KICK");
    }

    fn page(server: &str, total: usize, offset: usize, cids: std::ops::Range<u64>) -> Page {
        Page {
            server: Server {
                id: server.into(),
                name: server.into(),
            },
            total,
            offset,
            connections: cids
                .map(|cid| Connection {
                    cid,
                    subject: None,
                    admitted_by: AdmittedBy::Unknown,
                    age: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_server_is_done_paging_once_its_last_page_came() {
        let mut seen = Seen {
            server: page("n0", 0, 0, 0..0).server,
            total: 0,
            next: 0,
            connections: BTreeMap::new(),
            done: false,
        };
        seen.take(page("n0", 5, 0, 0..2), 0).unwrap();
        assert!(!seen.done);
        assert_eq!(seen.next, 2);
        seen.take(page("n0", 5, 2, 2..4), 0).unwrap();
        assert!(!seen.done);
        seen.take(page("n0", 5, 4, 4..5), 0).unwrap();
        assert!(seen.done);
        assert_eq!(seen.connections.len(), 5);
        // Connections that closed meanwhile: an empty page ends it.
        let mut seen = Seen {
            done: false,
            next: 0,
            ..seen
        };
        seen.take(page("n0", 9, 0, 0..2), 0).unwrap();
        seen.take(page("n0", 9, 2, 0..0), 0).unwrap();
        assert!(seen.done);
    }

    fn fresh() -> Seen {
        Seen {
            server: page("n0", 0, 0, 0..0).server,
            total: 0,
            next: 0,
            connections: BTreeMap::new(),
            done: false,
        }
    }

    #[test]
    fn pages_overlap_so_a_connection_closed_between_them_hides_none() {
        assert_eq!(overlap(1), 0);
        assert_eq!(overlap(2), 1);
        assert_eq!(overlap(PAGE), 64);
        // cids 10..18 on the server, pages of 4 re-reading 2. Between the first and the
        // second page, cid 10 closes: every later connection moves a place back.
        let mut seen = fresh();
        seen.take(page("n0", 8, 0, 10..14), 2).unwrap();
        assert_eq!(seen.next, 4);
        // Asked from 4 - 2 = 2: now 13 is there, and 14 after it, which a page without
        // overlap would have skipped (it would have started at 4, which is now 15).
        seen.take(page("n0", 7, 2, 13..17), 2).unwrap();
        assert!(!seen.done);
        seen.take(page("n0", 7, 4, 15..18), 2).unwrap();
        assert!(seen.done);
        assert_eq!(seen.connections.len(), 8, "none left out");
        // As many closed as are re-read: the page starts past everything seen, and may have
        // skipped some (here 14), so the observation is incomplete and the check repeated.
        let mut seen = fresh();
        seen.take(page("n0", 8, 0, 10..14), 2).unwrap();
        let skipped = seen.take(page("n0", 6, 2, 15..18), 2).unwrap_err();
        assert!(
            skipped.contains("n0") && skipped.contains("at least 2"),
            "{skipped}"
        );
        // A page that re-reads what was seen is fine.
        let mut seen = fresh();
        seen.take(page("n0", 8, 0, 10..14), 2).unwrap();
        seen.take(page("n0", 8, 2, 12..16), 2).unwrap();
        seen.take(page("n0", 8, 4, 14..18), 2).unwrap();
        assert!(seen.done);
        assert_eq!(seen.connections.len(), 8);
    }
}
