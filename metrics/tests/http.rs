//! The HTTP endpoints over real TCP: status codes, content types and bodies.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{WatchState, desired, failed, get, reload_failed, reloaded, sample, succeeded};
use metrics::{Health, Label, Metrics, SHUTDOWN_GRACE, WatchStatus};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(120);

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start() -> Server {
    let listener = metrics::bind("127.0.0.1:0".parse().expect("literal address"))
        .await
        .expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("bound address");
    let metrics = common::metrics();
    let health = Arc::new(common::health(metrics.clone(), LIMIT));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(metrics::serve(
        listener,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    Server {
        addr,
        metrics,
        health,
        shutdown,
        task,
    }
}

#[tokio::test]
async fn readyz_is_503_until_marked_ready_then_200_for_good() {
    let s = start().await;
    let r = get(s.addr, "/readyz").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.starts_with("not ready: "), "{r:?}");
    assert!(
        r.content_type
            .as_deref()
            .unwrap_or("")
            .starts_with("text/plain"),
        "{r:?}"
    );

    s.health.pass_started();
    s.health
        .pass_finished(failed("connection", "connection refused"));
    let r = get(s.addr, "/readyz").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("last pass failed: connection"), "{r:?}");

    s.health.mark_ready();
    let r = get(s.addr, "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    // Later failures never take readiness away (§7).
    s.health.pass_started();
    s.health.pass_finished(failed("status", "HTTP 500"));
    s.health
        .reload_finished(reload_failed("reload", "config_load_time did not advance"));
    let r = get(s.addr, "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
}

#[tokio::test(start_paused = true)]
async fn healthz_follows_progress_and_failing_passes_count_as_progress() {
    let s = start().await;
    let r = get(s.addr, "/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    tokio::time::advance(LIMIT + Duration::from_secs(1)).await;
    let r = get(s.addr, "/healthz").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.body,
        "wedged: no pass started or finished and no event poll completed for 121s (limit 120s)\n"
    );

    // A failed pass (director down) is progress.
    s.health.pass_started();
    s.health
        .pass_finished(failed("connection", "connection refused"));
    let r = get(s.addr, "/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    // A pass that never ends is not.
    s.health.pass_started();
    tokio::time::advance(LIMIT + Duration::from_secs(30)).await;
    let r = get(s.addr, "/healthz").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains("current pass has been running for 150s"),
        "{r:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn event_polls_keep_healthz_alive_between_passes() {
    let s = start().await;
    s.health.pass_started();
    s.health
        .pass_finished(failed("connection", "connection refused"));
    // A quiet director under a healthy watch: no pass for five limits, a poll every 10 s.
    for _ in 0..(5 * LIMIT.as_secs() / 10) {
        tokio::time::advance(Duration::from_secs(10)).await;
        s.health.progress();
    }
    let r = get(s.addr, "/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    tokio::time::advance(LIMIT + Duration::from_secs(1)).await;
    let r = get(s.addr, "/healthz").await;
    assert_eq!(r.status, 503, "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn status_shows_the_watch() {
    let s = start().await;
    let st: serde_json::Value =
        serde_json::from_str(&get(s.addr, "/status").await.body).expect("JSON");
    let w = &st["watch"];
    assert_eq!(w["state"], "off", "{st}");
    assert!(w["reason"].is_string(), "{st}");
    for key in [
        "cursor",
        "last_event_id",
        "events_read_at",
        "last_full_pass_at",
        "next_full_pass_at",
    ] {
        assert!(w[key].is_null(), "{key} in {st}");
    }

    let now = std::time::SystemTime::now();
    s.health.watch(WatchStatus {
        state: WatchState::Blind.as_str(),
        reason: "a full pass found 2 deployments changed that no event announced".into(),
        cursor: Some(1_000_123),
        events_read_at: Some(now),
        last_event_id: Some(1_000_125),
        last_full_pass_at: Some(now),
        next_full_pass_at: Some(now + Duration::from_secs(10)),
    });
    let st: serde_json::Value =
        serde_json::from_str(&get(s.addr, "/status").await.body).expect("JSON");
    let w = st["watch"].as_object().expect("a watch object");
    let mut keys: Vec<&str> = w.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "cursor",
            "events_read_at",
            "last_event_id",
            "last_full_pass_at",
            "next_full_pass_at",
            "reason",
            "state"
        ]
    );
    assert_eq!(w["state"], "blind");
    assert_eq!(
        w["reason"],
        "a full pass found 2 deployments changed that no event announced"
    );
    assert_eq!(
        (w["cursor"].as_u64(), w["last_event_id"].as_u64()),
        (Some(1_000_123), Some(1_000_125))
    );
    for key in ["events_read_at", "last_full_pass_at", "next_full_pass_at"] {
        let t = w[key].as_str().unwrap_or_else(|| panic!("{key} in {st}"));
        assert!(t.len() == 20 && t.ends_with('Z'), "{key}: {t}");
    }
    let m = get(s.addr, "/metrics").await;
    assert_eq!(
        sample(&m.body, r#"bosh_nats_sync_watch_state{state="blind"}"#),
        Some("1")
    );
    assert_eq!(
        sample(&m.body, r#"bosh_nats_sync_watch_state{state="off"}"#),
        Some("0")
    );
}

#[tokio::test(start_paused = true)]
async fn status_reports_the_recorded_passes() {
    let s = start().await;
    let st: serde_json::Value =
        serde_json::from_str(&get(s.addr, "/status").await.body).expect("JSON");
    assert_eq!(st["ready"], false);
    assert_eq!(st["live"], true);
    assert!(st["last_pass"].is_null(), "{st}");
    assert!(st["desired_users"].is_null(), "{st}");

    s.health.pass_started();
    tokio::time::advance(Duration::from_millis(250)).await;
    s.health
        .pass_finished(succeeded(true, desired(1, 1, 3, 2), 2));
    s.health.auth_file_written();
    s.health.reload_finished(reloaded(false));
    s.health.mark_ready();
    s.health.pass_started();
    tokio::time::advance(Duration::from_secs(2)).await;
    s.health
        .pass_finished(failed("timeout", "director request timed out"));
    s.health.next_pass_in(Duration::from_secs(4));

    let r = get(s.addr, "/status").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let st: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(st["ready"], true, "{st}");
    assert_eq!(st["consecutive_failures"], 1, "{st}");
    let last = &st["last_pass"];
    assert_eq!(last["result"], "error", "{st}");
    assert_eq!(last["duration_seconds"], 2.0, "{st}");
    assert_eq!(last["error"]["reason"], "timeout", "{st}");
    assert_eq!(
        last["error"]["message"], "director request timed out",
        "{st}"
    );
    assert!(
        last["started_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{st}"
    );
    assert_eq!(st["desired_users"]["total"], 7, "{st}");
    assert_eq!(st["desired_users"]["agent"], 3, "{st}");
    assert_eq!(st["desired_users"]["agent_bootstrap"], 2, "{st}");
    assert_eq!(st["observed_users"], 2, "{st}");
    assert!(st["auth_file_written_at"].is_string(), "{st}");
    assert!(st["last_success_at"].is_string(), "{st}");
    assert_eq!(st["last_reload"]["result"], "unverified", "{st}");
    assert_eq!(st["last_reload"]["verified"], false, "{st}");
    assert_eq!(st["next_pass"]["in_seconds"], 4.0, "{st}");
    assert!(st["pass_running"].is_null(), "{st}");
}

#[tokio::test]
async fn metrics_are_served_as_prometheus_text() {
    let s = start().await;
    s.health.reload_finished(reload_failed(
        "reload",
        "nats-server --signal reload exited with status 1",
    ));
    s.health.reload_finished(reloaded(true));
    s.health.reload_finished(reloaded(true));
    s.health.pass_started();
    s.health
        .pass_finished(failed("connection", "connection refused"));
    s.metrics
        .director_request("deployments", "200", Duration::from_millis(30));

    let r = get(s.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type.as_deref(), Some("text/plain; version=0.0.4"));
    for (series, value) in [
        (r#"bosh_nats_sync_reloads_total{result="failed"}"#, "1"),
        (r#"bosh_nats_sync_reloads_total{result="ok"}"#, "2"),
        (r#"bosh_nats_sync_reloads_total{result="unverified"}"#, "0"),
        (r#"bosh_nats_sync_passes_total{result="error"}"#, "1"),
        (r#"bosh_nats_sync_errors_total{reason="connection"}"#, "1"),
        ("bosh_nats_sync_consecutive_failures", "1"),
        (
            r#"bosh_nats_sync_director_requests_total{endpoint="deployments",status="200"}"#,
            "1",
        ),
    ] {
        assert_eq!(
            sample(&r.body, series),
            Some(value),
            "{series} in\n{}",
            r.body
        );
    }
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let s = start().await;
    for path in ["/", "/metrics/x", "/health"] {
        let r = get(s.addr, path).await;
        assert_eq!(r.status, 404, "{path}: {r:?}");
    }
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let s = start().await;
    assert_eq!(get(s.addr, "/healthz").await.status, 200);
    s.shutdown.cancel();
    s.task
        .await
        .expect("server task did not panic")
        .expect("server ended cleanly");
    assert!(
        TcpStream::connect(s.addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_does_not_wait_forever_for_a_stuck_client() {
    let s = start().await;
    // A client that sends half a request and then stalls.
    let mut stuck = TcpStream::connect(s.addr).await.expect("connect");
    stuck
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send half a request");
    // Make sure the server has accepted the connection before shutting down.
    assert_eq!(get(s.addr, "/healthz").await.status, 200);
    let before = tokio::time::Instant::now();
    s.shutdown.cancel();
    s.task
        .await
        .expect("server task did not panic")
        .expect("server ended cleanly");
    assert_eq!(
        before.elapsed(),
        SHUTDOWN_GRACE,
        "returned after the grace period"
    );
    drop(stuck);
}

#[tokio::test]
async fn bind_errors_name_the_address() {
    let first = metrics::bind("127.0.0.1:0".parse().expect("literal address"))
        .await
        .expect("bind an ephemeral port");
    let addr = first.local_addr().expect("bound address");
    let err = metrics::bind(addr).await.expect_err("the port is taken");
    assert_eq!(err.addr, addr);
    assert_eq!(err.reason(), "bind");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot listen for HTTP on {addr}: ")),
        "{msg}"
    );
}
