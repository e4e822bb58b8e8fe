//! What callout mode tells the metrics, `/status` and the log (§12.5): every answer by
//! result, its latency, the event polls unknown agents asked for, the connection, and each
//! refusal — logged with the agent id (no secret), at most [`REFUSAL_LINES_PER_SECOND`] a
//! second so that a reconnect storm of unknown agents cannot flood the log. And the
//! revoker's (§12.6): each revocation by result, logged with the agent id and the reason,
//! and the connections each check saw.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{CalloutRevocation, Health, Label, Metrics};
use tokio::time::Instant;

use super::connz::{Kicked, Observation};
use super::decide::Refusal;
use super::responder::Observer;
use super::revoke::Kick;
use super::revoker::RevocationObserver;

/// How the responder can answer a request: the `result` label of
/// `bosh_nats_sync_callout_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutResult {
    Allowed,
    UnknownAgent,
    NotAgent,
    BootstrapRefused,
    BadRequest,
    Error,
}

impl Label for CalloutResult {
    const ALL: &'static [Self] = &[
        Self::Allowed,
        Self::UnknownAgent,
        Self::NotAgent,
        Self::BootstrapRefused,
        Self::BadRequest,
        Self::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::UnknownAgent => "unknown_agent",
            Self::NotAgent => "not_agent",
            Self::BootstrapRefused => "bootstrap_refused",
            Self::BadRequest => "bad_request",
            Self::Error => "error",
        }
    }
}

/// What closing a connection the admitted set no longer allows did: the `result` label of
/// `bosh_nats_sync_callout_revocations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationResult {
    /// nats-server closed it.
    Kicked,
    /// It was no longer there.
    Gone,
    /// No answer, or an error: the check is repeated.
    Error,
}

impl Label for RevocationResult {
    const ALL: &'static [Self] = &[Self::Kicked, Self::Gone, Self::Error];

    fn as_str(self) -> &'static str {
        match self {
            Self::Kicked => "kicked",
            Self::Gone => "gone",
            Self::Error => "error",
        }
    }
}

impl RevocationResult {
    pub fn of(kicked: &Kicked) -> Self {
        match kicked {
            Kicked::Closed => Self::Kicked,
            Kicked::Gone => Self::Gone,
            Kicked::Failed(_) => Self::Error,
        }
    }
}

/// Refusals logged per second at most; the others are counted into the next line.
pub const REFUSAL_LINES_PER_SECOND: u32 = 10;

/// The responder's [`Observer`]: the metrics and `/status`.
pub struct Reported {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    lines: Mutex<Lines>,
}

/// The log's budget for refusals: `used` lines in the second that began at `window`.
struct Lines {
    window: Instant,
    used: u32,
    suppressed: u64,
}

impl Reported {
    pub fn new(metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Self {
            metrics,
            health,
            lines: Mutex::new(Lines {
                window: Instant::now(),
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a refusal may be logged now, and how many were not since the last one.
    fn may_log(&self) -> Option<u64> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(lines.window) >= Duration::from_secs(1) {
            lines.window = now;
            lines.used = 0;
        }
        if lines.used >= REFUSAL_LINES_PER_SECOND {
            lines.suppressed += 1;
            return None;
        }
        lines.used += 1;
        Some(std::mem::take(&mut lines.suppressed))
    }
}

fn result_of(refusal: Option<&Refusal>) -> CalloutResult {
    match refusal {
        None => CalloutResult::Allowed,
        Some(Refusal::UnknownAgent(_)) => CalloutResult::UnknownAgent,
        Some(Refusal::NotAgent) => CalloutResult::NotAgent,
        Some(Refusal::BootstrapRefused(_)) => CalloutResult::BootstrapRefused,
        Some(Refusal::BadRequest(_)) => CalloutResult::BadRequest,
    }
}

impl Observer for Reported {
    fn answered(&self, refusal: Option<&Refusal>, latency: Duration, polled: bool) {
        let result = result_of(refusal).as_str();
        self.metrics.callout_request(result, Some(latency));
        if polled {
            self.metrics.callout_poll();
        }
        let Some(refusal) = refusal else {
            tracing::debug!(
                latency_ms = latency.as_secs_f64() * 1e3,
                polled,
                "admitted a client"
            );
            return;
        };
        let agent = refusal.agent().map(ToString::to_string);
        self.health.callout_refused(result, agent.clone());
        if let Some(suppressed) = self.may_log() {
            tracing::warn!(
                reason = refusal.message(),
                agent = agent.as_deref().unwrap_or(""),
                polled,
                suppressed_since_last = suppressed,
                "refused a client nats-server asked about"
            );
        }
    }

    fn unanswerable(&self, reason: &'static str, message: &str) {
        self.metrics.callout_request(reason, None);
        self.health.callout_refused(reason, None);
        if let Some(suppressed) = self.may_log() {
            tracing::warn!(
                reason,
                error = message,
                suppressed_since_last = suppressed,
                "could not answer an authorization request"
            );
        }
    }

    fn connected(&self, up: bool) {
        self.health.callout_connected(up);
    }
}

/// The revoker's observer: every revocation counted, shown and logged with its agent and
/// reason; the connections each check saw.
impl RevocationObserver for Reported {
    fn observed(&self, observation: &Observation, took: Duration) {
        let connections = observation.connections();
        self.metrics.callout_connections_observed(connections);
        tracing::info!(
            servers = observation.servers.len(),
            connections,
            requests = observation.requests,
            replies = observation.replies,
            bytes = observation.bytes,
            duration_ms = took.as_secs_f64() * 1e3,
            "observed nats-server's connections"
        );
    }

    fn revoked(&self, kick: &Kick, kicked: &Kicked) {
        let result = RevocationResult::of(kicked);
        self.health.callout_revoked(CalloutRevocation {
            agent: kick.agent.to_string(),
            server: kick.server.name.clone(),
            reason: kick.refusal.reason(),
            result: result.as_str(),
        });
        let agent = kick.agent.as_str();
        let reason = kick.refusal.message();
        let (server, cid, bootstrap) = (kick.server.name.as_str(), kick.cid, kick.bootstrap);
        match kicked {
            Kicked::Closed => tracing::info!(
                agent,
                reason,
                bootstrap,
                server,
                cid,
                "closed a connection the admitted set no longer allows"
            ),
            Kicked::Gone => tracing::info!(
                agent,
                reason,
                bootstrap,
                server,
                cid,
                "a connection the admitted set no longer allows was already gone"
            ),
            Kicked::Failed(error) => tracing::warn!(
                agent,
                reason,
                bootstrap,
                server,
                cid,
                error = error.as_str(),
                "could not close a connection the admitted set no longer allows; the check is repeated"
            ),
        }
    }

    fn incomplete(&self, why: &str) {
        tracing::warn!(
            error = why,
            "a revocation check could not see every connection; it is repeated"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refusal_lines_are_limited_per_second_and_the_rest_counted() {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new(
            metrics.clone(),
            Duration::from_secs(60),
            crate::pass::watch::Watch::unreported(),
        ));
        let reported = Reported::new(metrics, health);
        let logged: Vec<Option<u64>> = (0..15).map(|_| reported.may_log()).collect();
        assert_eq!(
            logged.iter().filter(|l| l.is_some()).count(),
            REFUSAL_LINES_PER_SECOND as usize
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            reported.may_log(),
            Some(5),
            "the next line counts what was left out"
        );
        assert_eq!(reported.may_log(), Some(0));
    }

    #[test]
    fn every_refusal_has_its_result_label() {
        let id = crate::users::AgentId::parse("a1").unwrap();
        let labels: Vec<&str> = [
            None,
            Some(Refusal::UnknownAgent(id.clone())),
            Some(Refusal::NotAgent),
            Some(Refusal::BootstrapRefused(id)),
            Some(Refusal::BadRequest("x")),
        ]
        .iter()
        .map(|r| result_of(r.as_ref()).as_str())
        .collect();
        assert_eq!(
            labels,
            [
                "allowed",
                "unknown_agent",
                "not_agent",
                "bootstrap_refused",
                "bad_request"
            ]
        );
        assert!(CalloutResult::values().contains(&"error"));
    }
}
