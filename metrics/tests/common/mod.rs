//! Helpers shared by this crate's integration tests: label values in the program's style
//! (the crate has none of its own), a minimal HTTP/1.1 client and a way to record at least
//! one sample of every metric.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::{
    BuildInfo, CalloutRevocation, ErrorInfo, Health, Label, Labels, Metrics, PassSummary,
    ReloadSummary, WatchStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The states of a watch, as a program might define them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchState {
    Off,
    Unproven,
    Healthy,
    Failing,
    Blind,
}

impl Label for WatchState {
    const ALL: &'static [Self] = &[
        Self::Off,
        Self::Unproven,
        Self::Healthy,
        Self::Failing,
        Self::Blind,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Unproven => "unproven",
            Self::Healthy => "healthy",
            Self::Failing => "failing",
            Self::Blind => "blind",
        }
    }
}

/// The label values these tests hand the registry: the program's, as far as these tests
/// need them.
pub fn labels() -> Labels {
    Labels {
        pass_results: vec!["changed", "unchanged", "error"],
        error_reasons: vec!["connection"],
        user_kinds: vec!["director", "hm", "agent", "agent_bootstrap"],
        skip_reasons: vec!["no_agent_id", "invalid_agent_id", "duplicate"],
        subject_kinds: vec!["director", "hm"],
        reload_results: vec!["ok", "failed", "unverified"],
        director_endpoints: vec!["info", "deployments", "vms", "events", "uaa_token"],
        director_statuses: vec!["200"],
        uaa_token_results: vec!["ok", "error"],
        watch_states: WatchState::values(),
        pass_kinds: vec!["full", "partial"],
        callout_results: vec![
            "allowed",
            "unknown_agent",
            "not_agent",
            "bootstrap_refused",
            "bad_request",
            "error",
        ],
        revocation_results: vec!["kicked", "gone", "error"],
    }
}

/// A registry with [`labels`].
pub fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::with_labels(BuildInfo::UNKNOWN, &labels()))
}

/// The health record over `metrics`, the watch off until it reports.
pub fn health(metrics: Arc<Metrics>, limit: Duration) -> Health {
    Health::new(
        metrics,
        limit,
        watch(WatchState::Off, "the watch has not reported"),
    )
}

/// A report of `state`, with nothing read.
pub fn watch(state: WatchState, reason: &str) -> WatchStatus {
    WatchStatus {
        state: state.as_str(),
        reason: reason.to_owned(),
        cursor: None,
        events_read_at: None,
        last_event_id: None,
        last_full_pass_at: None,
        next_full_pass_at: None,
    }
}

/// Desired users by kind, as [`labels`] names the kinds.
pub fn desired(
    director: usize,
    hm: usize,
    agent: usize,
    bootstrap: usize,
) -> Vec<(&'static str, usize)> {
    vec![
        ("director", director),
        ("hm", hm),
        ("agent", agent),
        ("agent_bootstrap", bootstrap),
    ]
}

/// A pass that succeeded: `changed` when it wrote the file.
pub fn succeeded(
    changed: bool,
    desired: Vec<(&'static str, usize)>,
    observed: usize,
) -> PassSummary {
    PassSummary {
        result: if changed { "changed" } else { "unchanged" },
        error: None,
        desired: Some(desired),
        observed_users: Some(observed),
        held: false,
    }
}

/// A pass that failed before it knew the desired or observed users.
pub fn failed(reason: &'static str, message: &str) -> PassSummary {
    PassSummary {
        result: "error",
        error: Some(ErrorInfo {
            reason,
            message: message.to_owned(),
        }),
        desired: None,
        observed_users: None,
        held: false,
    }
}

/// A reload that did not fail; `verified` when the server confirmed it.
pub fn reloaded(verified: bool) -> ReloadSummary {
    ReloadSummary {
        result: if verified { "ok" } else { "unverified" },
        verified,
        error: None,
    }
}

/// A reload that failed.
pub fn reload_failed(reason: &'static str, message: &str) -> ReloadSummary {
    ReloadSummary {
        result: "failed",
        verified: false,
        error: Some(ErrorInfo {
            reason,
            message: message.to_owned(),
        }),
    }
}

/// A parsed response: status code, `Content-Type` header (if any) and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

/// `GET path` over a fresh connection that the server closes after answering.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the server");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let raw = String::from_utf8(raw).expect("response is UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header/body separator");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut content_type = None;
    for line in lines {
        let (name, value) = line.split_once(':').expect("a header line");
        let name = name.to_ascii_lowercase();
        assert_ne!(
            name, "transfer-encoding",
            "this client reads only sized bodies"
        );
        if name == "content-type" {
            content_type = Some(value.trim().to_owned());
        }
    }
    Reply {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// The value of the sample `series` (name with labels, as rendered) in exposition `text`.
pub fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
}

/// Records at least one sample of every metric the crate defines, through the same calls
/// the program makes.
pub fn record_everything(metrics: &Metrics, health: &Health) {
    for endpoint in labels().director_endpoints {
        metrics.director_request(endpoint, "200", Duration::from_millis(4));
    }
    metrics.director_request("deployments", "connection", Duration::from_secs(2));
    metrics.uaa_token_fetch("ok");
    metrics.uaa_token_fetch("error");
    for reason in labels().skip_reasons {
        metrics.vms_skipped(reason, 1);
    }
    for kind in labels().subject_kinds {
        metrics.subject_rejected(kind);
    }

    health.pass_started();
    health.pass_finished(succeeded(true, desired(1, 1, 2, 1), 2));
    health.auth_file_written();
    health.reload_finished(reloaded(true));
    health.reload_finished(reloaded(false));
    health.reload_finished(reload_failed(
        "reload",
        "config_load_time did not advance within 5s",
    ));
    health.pass_started();
    health.pass_finished(PassSummary {
        held: true,
        ..succeeded(false, desired(0, 0, 0, 0), 5)
    });
    health.pass_started();
    health.pass_finished(failed("connection", "connection refused"));
    health.mark_ready();
    health.next_pass_in(Duration::from_secs(2));

    // The watch (§6.6): through every state, ending where it started.
    for state in [
        WatchState::Unproven,
        WatchState::Healthy,
        WatchState::Failing,
        WatchState::Blind,
        WatchState::Off,
    ] {
        health.watch(WatchStatus {
            state: state.as_str(),
            reason: format!("the fixture says {}", state.as_str()),
            cursor: Some(7),
            events_read_at: Some(std::time::SystemTime::now()),
            last_event_id: Some(9),
            last_full_pass_at: Some(std::time::SystemTime::now()),
            next_full_pass_at: Some(std::time::SystemTime::now() + Duration::from_secs(300)),
        });
    }
    health.progress();
    metrics.events_read(4);
    for kind in labels().pass_kinds {
        metrics.pass_kind(kind);
    }
    metrics.unannounced_changes(1);
    metrics.admission_latency(Duration::from_millis(700));

    // Callout mode (§12): every result — answered ones with their latency, an unanswerable
    // one without — a request that waited for an event poll, the admitted set, the connection.
    health.callout_mode();
    for result in labels().callout_results {
        metrics.callout_request(result, Some(Duration::from_micros(400)));
    }
    metrics.callout_request("bad_request", None);
    metrics.callout_poll();
    health.callout_refused("unknown_agent", Some("a1".to_owned()));
    health.callout_admitted(3);
    health.callout_connected(true);
    // Revocation (§12.6): a check that saw connections, and every result.
    metrics.callout_connections_observed(12);
    for result in labels().revocation_results {
        health.callout_revoked(CalloutRevocation {
            agent: "a1".to_owned(),
            server: "n1".to_owned(),
            reason: "unknown_agent",
            result,
        });
    }
}
