//! Helpers shared by this crate's integration tests: a minimal HTTP/1.1 client and a way
//! to record at least one sample of every metric.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{
    DesiredCounts, Health, Metrics, PassKind, PassOutcome, PassSummary, ReloadOutcome, SkipReason,
    SubjectKind, WatchState, WatchStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    for endpoint in Metrics::DIRECTOR_ENDPOINTS {
        metrics.director_request(endpoint, "200", Duration::from_millis(4));
    }
    metrics.director_request("deployments", "connection", Duration::from_secs(2));
    metrics.uaa_token_fetch("ok");
    metrics.uaa_token_fetch("error");
    for reason in [
        SkipReason::NoAgentId,
        SkipReason::InvalidAgentId,
        SkipReason::Duplicate,
    ] {
        metrics.vms_skipped(reason, 1);
    }
    metrics.subject_rejected(SubjectKind::Director);
    metrics.subject_rejected(SubjectKind::HealthMonitor);

    health.pass_started();
    health.pass_finished(PassSummary {
        outcome: PassOutcome::Changed,
        desired: Some(DesiredCounts {
            director: 1,
            hm: 1,
            agent: 2,
            agent_bootstrap: 1,
        }),
        observed_users: Some(2),
        held: false,
    });
    health.auth_file_written();
    health.reload_finished(ReloadOutcome::Verified);
    health.reload_finished(ReloadOutcome::Unverified);
    health.reload_finished(ReloadOutcome::Failed {
        reason: "reload",
        message: "config_load_time did not advance within 5s".into(),
    });
    health.pass_started();
    health.pass_finished(PassSummary {
        outcome: PassOutcome::Unchanged,
        desired: Some(DesiredCounts::default()),
        observed_users: Some(5),
        held: true,
    });
    health.pass_started();
    health.pass_finished(PassSummary::failed("connection", "connection refused"));
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
            state,
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
    metrics.pass_kind(PassKind::Full);
    metrics.pass_kind(PassKind::Partial);
    metrics.unannounced_changes(1);
    metrics.admission_latency(Duration::from_millis(700));
}
