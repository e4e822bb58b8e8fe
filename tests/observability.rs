//! Observability end to end (§7, §8, §9): the real binary against the simulated director
//! and a real nats-server — every series known in advance exported from start-up, metric
//! values after real passes, `promtool check metrics`,
//! `/healthz` and `/readyz` through failures, no secret in any output, OTLP span export to
//! an in-process collector, the log file under logrotate's copytruncate, JSON log lines.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::{Auth, CLIENT_ID, CLIENT_SECRET, Env, PASSWORD, USER, http, until};
use serde_json::{Value, json};
use sim::director::{Endpoint, Vm};
use sim::fault::Fault;

const A: &str = "0a1b2c3d-0000-4000-8000-00000000000a";
const B: &str = "0a1b2c3d-0000-4000-8000-00000000000b";
const C: &str = "0a1b2c3d-0000-4000-8000-00000000000c";
const D: &str = "0a1b2c3d-0000-4000-8000-00000000000d";

/// Long enough for a debug build on a busy 2-core machine; polls return as soon as they hold.
const WITHIN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Helpers: HTTP, the exposition format, promtool, polling with a reason.

/// GET `base` + `path`: status and body, or why it could not be fetched.
async fn get(base: &str, path: &str) -> Result<(u16, String), String> {
    let response = http()
        .get(format!("{base}{path}"))
        .send()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("GET {path} body: {e}"))?;
    Ok((status, body))
}

/// One scrape of `/metrics`, parsed.
#[derive(Debug, Clone)]
struct Scrape {
    text: String,
    /// (metric name, labels) -> value, for every sample line.
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("a sample line: {line}"));
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("a sample value: {line}"));
                let (name, labels) = match series.split_once('{') {
                    None => (series.to_owned(), BTreeMap::new()),
                    Some((name, rest)) => {
                        (name.to_owned(), parse_labels(rest.trim_end_matches('}')))
                    }
                };
                (name, labels, value)
            })
            .collect();
        Scrape { text, samples }
    }

    /// The sum over every series of `name` whose labels include all of `labels`; `None` when
    /// no series matches.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like [`Scrape::sum`], 0 when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels).unwrap_or(0.0)
    }
}

/// `a="x",b="y"` (label values here never hold a quote or a comma).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("a label pair: {pair}"));
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

async fn scrape(base: &str) -> Result<Scrape, String> {
    match get(base, "/metrics").await? {
        (200, text) => Ok(Scrape::parse(text)),
        (status, body) => Err(format!("/metrics answered {status}: {body}")),
    }
}

/// `promtool check metrics` on `text`: it must exit 0 and say nothing. A missing promtool is
/// a failure, not a skip.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let tool =
        std::env::var_os("PROMTOOL").map_or_else(|| PathBuf::from("promtool"), PathBuf::from);
    let mut child = std::process::Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} — install it: apt-get install prometheus",
                tool.display()
            )
        });
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {:?}\n{said}\n--- text:\n{text}",
        out.status
    );
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message()) }
}

/// The director's request counts by endpoint, as the simulator saw them.
fn seen(env: &Env) -> [u64; 3] {
    [Endpoint::Info, Endpoint::Deployments, Endpoint::Vms].map(|e| env.director.request_count(e))
}

// ---------------------------------------------------------------------------------------
// Metrics after real passes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_hold_the_values_of_real_passes() {
    let vms = vec![
        Vm::agent(A).permanent(true),
        Vm::agent(B).permanent(false),
        Vm::agent(C).permanent(false),
        Vm::creating(),
    ];
    let env = Env::start(Auth::Basic, vms).await;
    // `x.>` would grant `agent.x.>`: it must be skipped and counted, never written.
    env.director.set_deployment_raw(
        "bad",
        json!([{ "agent_id": "x.>", "cid": "vm-x", "job": "worker", "index": 0, "id": "instance-x", "active": true }]),
    );
    let base = env.write_config_http(1.0, &[], "");
    let _running = env.spawn_run();

    let first = until(WITHIN, "the first changed pass", || async {
        let m = scrape(&base).await?;
        ensure(
            m.get("bosh_nats_sync_passes_total", &[("result", "changed")]) >= 1.0,
            || "no changed pass yet".into(),
        )?;
        Ok(m)
    })
    .await;
    for (kind, n) in [
        ("director", 1.0),
        ("hm", 1.0),
        ("agent", 3.0),
        ("agent_bootstrap", 2.0),
    ] {
        assert_eq!(
            first.sum("bosh_nats_sync_desired_users", &[("kind", kind)]),
            Some(n),
            "desired_users{{kind={kind}}}\n{}",
            first.text
        );
    }
    assert_eq!(
        first.sum("bosh_nats_sync_build_info", &[]),
        Some(1.0),
        "{}",
        first.text
    );
    assert!(
        !env.auth_text().contains("x.>"),
        "an invalid agent id never reaches the file: {}",
        env.auth_text()
    );
    promtool_check(&first.text);

    // In a quiet moment (no request answered between two looks at the simulator), every
    // counter agrees with what the director saw and with the number of passes.
    until(
        WITHIN,
        "counters consistent with the director's request counts",
        || async {
            let before = seen(&env);
            let m = scrape(&base).await?;
            ensure(seen(&env) == before, || {
                "a request was answered during the scrape".into()
            })?;
            for (endpoint, n) in ["info", "deployments", "vms"].into_iter().zip(before) {
                let total = m.get(
                    "bosh_nats_sync_director_requests_total",
                    &[("endpoint", endpoint)],
                );
                let ok = m.get(
                    "bosh_nats_sync_director_requests_total",
                    &[("endpoint", endpoint), ("status", "200")],
                );
                ensure(total == n as f64 && ok == n as f64, || {
                    format!("{endpoint}: metrics {total} ({ok} × 200), director saw {n}")
                })?;
            }
            let passes = m.get("bosh_nats_sync_passes_total", &[("result", "changed")])
                + m.get("bosh_nats_sync_passes_total", &[("result", "unchanged")]);
            ensure(
                m.get("bosh_nats_sync_passes_total", &[("result", "error")]) == 0.0,
                || "a pass failed".into(),
            )?;
            // Two deployments per pass: `cf` and `bad`.
            ensure(before[2] as f64 == 2.0 * passes, || {
                format!("{} /vms requests for {passes} passes", before[2])
            })?;
            for reason in ["invalid_agent_id", "no_agent_id"] {
                let skipped = m.get("bosh_nats_sync_skipped_vms_total", &[("reason", reason)]);
                ensure(skipped == passes, || {
                    format!(
                        "skipped_vms_total{{reason={reason}}} = {skipped} after {passes} passes"
                    )
                })?;
            }
            ensure(
                m.get(
                    "bosh_nats_sync_skipped_vms_total",
                    &[("reason", "duplicate")],
                ) == 0.0,
                || "duplicates counted".into(),
            )?;
            let count = m.get("bosh_nats_sync_pass_duration_seconds_count", &[]);
            ensure(count == passes, || {
                format!("pass_duration_seconds_count {count} for {passes} passes")
            })?;
            // The start-up bootstrap (placeholder file) and the first pass wrote and reloaded;
            // nothing since, as the director did not change.
            ensure(
                m.get("bosh_nats_sync_auth_file_writes_total", &[]) == 2.0,
                || "auth_file_writes_total != 2".into(),
            )?;
            ensure(
                m.get("bosh_nats_sync_reloads_total", &[("result", "ok")]) == 2.0,
                || "reloads_total{result=ok} != 2".into(),
            )?;
            ensure(
                m.get("bosh_nats_sync_reloads_total", &[("result", "failed")]) == 0.0,
                || "a reload failed".into(),
            )?;
            ensure(m.get("bosh_nats_sync_observed_users", &[]) == 7.0, || {
                "observed_users != 7".into()
            })?;
            ensure(
                m.get("bosh_nats_sync_consecutive_failures", &[]) == 0.0,
                || "consecutive_failures != 0".into(),
            )?;
            ensure(
                m.get("bosh_nats_sync_last_success_timestamp_seconds", &[]) > 1.0e9,
                || "no last success timestamp".into(),
            )?;
            ensure(passes >= 2.0, || {
                "waiting for an unchanged pass as well".into()
            })
        },
    )
    .await;

    // A director change: exactly one more changed pass, one more write, the new counts.
    let before = scrape(&base).await.unwrap();
    let changed = before.get("bosh_nats_sync_passes_total", &[("result", "changed")]);
    let writes = before.get("bosh_nats_sync_auth_file_writes_total", &[]);
    env.director.add_vm("cf", Vm::agent(D).permanent(true));
    let after = until(
        WITHIN,
        "a changed pass after the director change",
        || async {
            let m = scrape(&base).await?;
            let now = m.get("bosh_nats_sync_passes_total", &[("result", "changed")]);
            ensure(now == changed + 1.0, || {
                format!("passes_total{{result=changed}} = {now}, was {changed}")
            })?;
            Ok(m)
        },
    )
    .await;
    assert_eq!(
        after.sum("bosh_nats_sync_desired_users", &[("kind", "agent")]),
        Some(4.0),
        "{}",
        after.text
    );
    assert_eq!(
        after.sum(
            "bosh_nats_sync_desired_users",
            &[("kind", "agent_bootstrap")]
        ),
        Some(2.0),
        "{}",
        after.text
    );
    assert_eq!(
        after.get("bosh_nats_sync_auth_file_writes_total", &[]),
        writes + 1.0,
        "{}",
        after.text
    );
    assert!(env.auth_text().contains(D), "{}", env.auth_text());
    promtool_check(&after.text);
}

// ---------------------------------------------------------------------------------------
// Every series from start-up (§8).

/// Every series a fresh process exports before its first pass has ended, with its value:
/// every label value known in advance at 0 (the watch state's gauge at 1 for `off`). The one
/// place this test lists them, built from the lists the program itself hands its metrics
/// (`modes::labels()`: its label enums, its error enums' reasons, the director client's
/// endpoints, the callout responder's results), so neither can drift.
fn series_from_start_up() -> Vec<(String, f64)> {
    let labels = bosh_nats_sync::modes::labels();
    let labelled = |name: &str, label: &str, values: &[&str]| -> Vec<(String, f64)> {
        values
            .iter()
            .map(|v| (format!("bosh_nats_sync_{name}{{{label}=\"{v}\"}}"), 0.0))
            .collect()
    };
    let mut all = Vec::new();
    all.extend(labelled("passes_total", "result", &labels.pass_results));
    all.extend(labelled("errors_total", "reason", &labels.error_reasons));
    all.extend(labelled("desired_users", "kind", &labels.user_kinds));
    all.extend(labelled(
        "skipped_vms_total",
        "reason",
        &labels.skip_reasons,
    ));
    all.extend(labelled(
        "subjects_rejected_total",
        "kind",
        &labels.subject_kinds,
    ));
    all.extend(labelled("reloads_total", "result", &labels.reload_results));
    all.extend(labelled(
        "uaa_token_fetches_total",
        "result",
        &labels.uaa_token_results,
    ));
    all.extend(labelled(
        "watch_state_changes_total",
        "state",
        &labels.watch_states,
    ));
    all.extend(labelled("watch_passes_total", "kind", &labels.pass_kinds));
    all.extend(labelled(
        "callout_requests_total",
        "result",
        &labels.callout_results,
    ));
    all.extend(labelled(
        "callout_revocations_total",
        "result",
        &labels.revocation_results,
    ));
    all.extend(labels.watch_states.iter().map(|s| {
        (
            format!("bosh_nats_sync_watch_state{{state=\"{s}\"}}"),
            if *s == "off" { 1.0 } else { 0.0 },
        )
    }));
    for e in &labels.director_endpoints {
        for s in &labels.director_statuses {
            all.push((
                format!(
                    "bosh_nats_sync_director_requests_total{{endpoint=\"{e}\",status=\"{s}\"}}"
                ),
                0.0,
            ));
        }
    }
    all.extend(
        [
            "auth_file_writes_total",
            "held_passes_total",
            "last_success_timestamp_seconds",
            "consecutive_failures",
            "observed_users",
            "watch_events_read_total",
            "watch_unannounced_changes_total",
            "watch_admission_latency_seconds_count",
            "callout_answer_seconds_count",
            "callout_admitted_agents",
            "callout_connected",
            "callout_polls_total",
            "callout_connections_observed",
        ]
        .map(|name| (format!("bosh_nats_sync_{name}"), 0.0)),
    );
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_known_series_is_exported_from_start_up() {
    let expected = series_from_start_up();
    // Built from the program's lists; these literal ones must be among them, so that an
    // emptied list cannot pass unnoticed.
    for literal in [
        r#"bosh_nats_sync_errors_total{reason="connection"}"#,
        r#"bosh_nats_sync_errors_total{reason="unauthorized"}"#,
        r#"bosh_nats_sync_errors_total{reason="auth_file_write"}"#,
        r#"bosh_nats_sync_errors_total{reason="reload_rejected"}"#,
        r#"bosh_nats_sync_errors_total{reason="pass_timeout"}"#,
        r#"bosh_nats_sync_passes_total{result="error"}"#,
        r#"bosh_nats_sync_reloads_total{result="failed"}"#,
        r#"bosh_nats_sync_skipped_vms_total{reason="invalid_agent_id"}"#,
        r#"bosh_nats_sync_desired_users{kind="agent"}"#,
        r#"bosh_nats_sync_director_requests_total{endpoint="vms",status="200"}"#,
        r#"bosh_nats_sync_director_requests_total{endpoint="uaa_token",status="200"}"#,
        r#"bosh_nats_sync_watch_state{state="failing"}"#,
        r#"bosh_nats_sync_watch_state{state="off"}"#,
        r#"bosh_nats_sync_watch_passes_total{kind="partial"}"#,
        r#"bosh_nats_sync_subjects_rejected_total{kind="hm"}"#,
        r#"bosh_nats_sync_uaa_token_fetches_total{result="error"}"#,
        r#"bosh_nats_sync_callout_requests_total{result="unknown_agent"}"#,
        r#"bosh_nats_sync_callout_revocations_total{result="kicked"}"#,
        r#"bosh_nats_sync_callout_revocations_total{result="error"}"#,
    ] {
        assert!(
            expected.iter().any(|(series, _)| series == literal),
            "{literal} is not among the series expected from start-up"
        );
    }

    let env = Env::start(Auth::Uaa, vec![Vm::agent(A).permanent(true)]).await;
    let base = env.write_config_http(60.0, &[], "");
    // A converged auth file (one `once` before), so that the run writes and reloads nothing
    // before it asks the director (no bootstrap users: the file holds users).
    env.once(true).await;
    // The director holds every `/info` longer than the test lasts: the run's first pass
    // cannot end — neither succeed nor fail — while the test looks.
    env.director
        .set_fault(Endpoint::Info, Fault::delay(Duration::from_secs(600)));
    let _running = env.spawn_run();
    until(WITHIN, "the control loop to start", || async {
        scrape(&base).await?;
        ensure(env.log().contains("bosh-nats-sync starting"), || {
            "no start-up line in the log yet".into()
        })
    })
    .await;

    let m = scrape(&base).await.unwrap();
    // Taken before any pass or poll of the event log ended: /status, read after the scrape,
    // has no last pass and a watch that has not reported.
    let (_, body) = get(&base, "/status").await.unwrap();
    let status: Value = serde_json::from_str(&body).unwrap();
    assert!(
        status["last_pass"].is_null()
            && status["watch"]["state"] == "off"
            && status["watch"]["events_read_at"].is_null(),
        "the scrape must come before the first pass or poll ends: {status}\n{}",
        env.diagnostics()
    );
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|(series, want)| {
            let got = m.text.lines().find_map(|l| {
                l.strip_prefix(series.as_str())?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            });
            (got != Some(*want)).then(|| format!("{series}: {got:?}, want {want}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "series not exported as expected from start-up:\n{}\n--- /metrics:\n{}",
        wrong.join("\n"),
        m.text
    );
    // Nothing more in the preset families: every reason and endpoint is a listed one.
    for family in [
        "bosh_nats_sync_errors_total{",
        "bosh_nats_sync_director_requests_total{",
    ] {
        let extra: Vec<&str> = m
            .text
            .lines()
            .filter(|l| l.starts_with(family))
            .filter(|l| {
                !expected
                    .iter()
                    .any(|(s, _)| l.starts_with(&format!("{s} ")))
            })
            .collect();
        assert!(extra.is_empty(), "unlisted series {extra:?}\n{}", m.text);
    }
    assert_eq!(
        m.sum("bosh_nats_sync_build_info", &[]),
        Some(1.0),
        "{}",
        m.text
    );
    promtool_check(&m.text);
}

// ---------------------------------------------------------------------------------------
// Liveness and readiness through failures.

/// A pod of a cluster (`http.ready_after_full_pass`, which the chart sets there): the
/// bootstrap users let the director and the health monitor in, but the Service must not send
/// agents to this server before a pass has read them from the director — `/readyz` waits for
/// it. Without the key (a single pod, a BOSH VM) the bootstrap users make it ready, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_readiness_waits_for_the_first_full_pass_not_the_bootstrap_users() {
    for wait_for_full_pass in [true, false] {
        let env = Env::start(Auth::Basic, vec![Vm::agent(A).permanent(true)]).await;
        env.director.set_down(true);
        let mut keys = vec![("intervals.backoff_max", "1")];
        if wait_for_full_pass {
            keys.push(("http.ready_after_full_pass", "true"));
        }
        let base = env.write_config_http(1.0, &keys, "");
        let _running = env.spawn_run();
        until(
            WITHIN,
            "the bootstrap users let the director in",
            || async {
                ensure(env.admitted(common::DIRECTOR_CN).await, || {
                    "the director is refused".to_owned()
                })
            },
        )
        .await;
        until(
            WITHIN,
            "a failed pass after the bootstrap users",
            || async {
                let m = scrape(&base).await?;
                let errors = m.get("bosh_nats_sync_passes_total", &[("result", "error")]);
                ensure(errors >= 1.0, || format!("{errors} failed passes"))
            },
        )
        .await;
        assert!(!env.admitted(&sim::pki::agent_cn(A)).await, "no agent yet");
        let (status, body) = get(&base, "/readyz").await.unwrap();
        if !wait_for_full_pass {
            assert_eq!(status, 200, "the bootstrap users make ready: {body}");
            continue;
        }
        assert_eq!(status, 503, "{body}\n{}", env.diagnostics());
        assert!(
            body.starts_with(
                "not ready: nats-server has the director and health-monitor users, but no pass \
                 has read the director's agents yet (http.ready_after_full_pass)"
            ),
            "{body}"
        );
        env.director.set_down(false);
        until(
            WITHIN,
            "/readyz 200 once a pass has read the director",
            || async {
                let (status, body) = get(&base, "/readyz").await?;
                ensure(status == 200, || format!("{status} {body}"))
            },
        )
        .await;
        assert!(
            env.admitted(&sim::pki::agent_cn(A)).await,
            "ready means the director's agents are admitted\n{}",
            env.diagnostics()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_a_usable_config_and_survives_a_rejected_reload() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A).permanent(true)]).await;
    // No subjects: no bootstrap config, so nothing usable until the director answers.
    std::fs::remove_file(&env.director_subject_file).unwrap();
    std::fs::remove_file(&env.hm_subject_file).unwrap();
    env.director.set_down(true);
    let base = env.write_config_http(1.0, &[("intervals.backoff_max", "1")], "");
    let _running = env.spawn_run();

    until(
        WITHIN,
        "two failed passes while the director is down",
        || async {
            let m = scrape(&base).await?;
            let errors = m.get("bosh_nats_sync_passes_total", &[("result", "error")]);
            ensure(errors >= 2.0, || format!("{errors} failed passes"))
        },
    )
    .await;
    let (status, body) = get(&base, "/healthz").await.unwrap();
    assert_eq!(
        status,
        200,
        "a down director is not a liveness failure: {body}\n{}",
        env.diagnostics()
    );
    let (status, body) = get(&base, "/readyz").await.unwrap();
    assert_eq!(status, 503, "not ready before a usable config: {body}");
    assert!(body.starts_with("not ready"), "{body}");
    let m = scrape(&base).await.unwrap();
    assert!(
        m.get("bosh_nats_sync_consecutive_failures", &[]) >= 2.0,
        "{}",
        m.text
    );
    assert!(
        m.get("bosh_nats_sync_errors_total", &[]) >= 2.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            "bosh_nats_sync_director_requests_total",
            &[("status", "200")]
        ),
        0.0,
        "{}",
        m.text
    );

    env.director.set_down(false);
    until(WITHIN, "/readyz 200 once the director answers", || async {
        let (status, body) = get(&base, "/readyz").await?;
        ensure(status == 200, || format!("{status} {body}"))
    })
    .await;

    // nats-server's pid file now names a process that does not exist: the next reload
    // fails, the pass is an error — and readiness stays.
    let pid_file = env.nats.pid_file().to_owned();
    let real_pid = std::fs::read_to_string(&pid_file).unwrap();
    std::fs::write(&pid_file, "2147483646").unwrap();
    env.director.add_vm("cf", Vm::agent(B).permanent(true));
    let m = until(WITHIN, "a failed reload", || async {
        let m = scrape(&base).await?;
        let failed = m.get("bosh_nats_sync_reloads_total", &[("result", "failed")]);
        ensure(failed >= 1.0, || {
            format!("reloads_total{{result=failed}} = {failed}")
        })?;
        Ok(m)
    })
    .await;
    assert!(
        m.get("bosh_nats_sync_consecutive_failures", &[]) >= 1.0,
        "{}",
        m.text
    );
    let status = until(WITHIN, "/status showing the failed reload", || async {
        let (code, body) = get(&base, "/status").await?;
        let status: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        ensure(
            code == 200 && status["last_pass"]["result"] == "error",
            || format!("{code} {body}"),
        )?;
        Ok(status)
    })
    .await;
    assert_eq!(status["last_reload"]["result"], "failed", "{status:#}");
    assert_eq!(status["ready"], true, "{status:#}");
    assert!(
        status["consecutive_failures"].as_u64().unwrap_or(0) >= 1,
        "{status:#}"
    );
    assert!(
        status["last_pass"]["error"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{status:#}"
    );
    let (code, body) = get(&base, "/readyz").await.unwrap();
    assert_eq!(
        code, 200,
        "a rejected reload does not make the sidecar unready: {body}"
    );
    let (code, body) = get(&base, "/healthz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    promtool_check(&m.text);

    // Repaired, the pending reload goes through on a later pass.
    std::fs::write(&pid_file, real_pid).unwrap();
    until(WITHIN, "a successful pass after the repair", || async {
        let m = scrape(&base).await?;
        ensure(
            m.get("bosh_nats_sync_consecutive_failures", &[]) == 0.0,
            || "still failing".into(),
        )
    })
    .await;
    assert!(
        env.admitted(&sim::pki::agent_cn(B)).await,
        "{}",
        env.diagnostics()
    );
}

// ---------------------------------------------------------------------------------------
// Secrets.

/// Everything the program said: the log file, its stdout/stderr, `/metrics`, `/status`.
#[derive(Default)]
struct Said(Vec<(String, String)>);

impl Said {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.0.push((what.into(), text.into()));
    }

    fn add_output(&mut self, what: &str, out: &Output) {
        self.add(
            format!("{what} stdout"),
            String::from_utf8_lossy(&out.stdout),
        );
        self.add(
            format!("{what} stderr"),
            String::from_utf8_lossy(&out.stderr),
        );
    }

    async fn add_endpoints(&mut self, base: &str) {
        for path in ["/metrics", "/status", "/healthz", "/readyz"] {
            let (_, body) = get(base, path).await.unwrap();
            self.add(path, body);
        }
    }

    fn assert_free_of(&self, secrets: &[(&str, String)]) {
        assert!(
            self.0.iter().any(|(_, t)| t.contains("pass failed")),
            "the failure paths ran"
        );
        for (what, text) in &self.0 {
            for (name, secret) in secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{name} appears in {what}:\n{text}"
                );
            }
            // No bearer token of any kind: every JWT starts with a base64url `{"`.
            assert!(
                !text.contains("eyJ"),
                "something like a JWT appears in {what}:\n{text}"
            );
        }
    }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A config whose director CA is another PKI's: every TLS handshake fails verification.
fn wrong_ca(env: &Env) -> String {
    let other = sim::pki::Pki::generate().unwrap();
    let dir = env.dir.path().join("other-pki");
    std::fs::create_dir_all(&dir).unwrap();
    other.write_to(&dir).unwrap().ca_cert.display().to_string()
}

/// Success and failure paths in one long-running process (with `/metrics` and `/status`) and
/// in `once` runs: a director 401, the director down, a certificate from the wrong CA.
async fn exercise(env: &Env, said: &mut Said) {
    let base = env.write_config_http(
        1.0,
        &[("log.level", "debug"), ("intervals.backoff_max", "1")],
        "",
    );
    let mut running = env.spawn_run();
    env.log_count_reaches(WITHIN, "pass changed the auth file", 1)
        .await;
    said.add_endpoints(&base).await;
    env.director
        .set_fault(Endpoint::Deployments, Fault::status(401));
    env.log_count_reaches(WITHIN, "pass failed", 1).await;
    env.director.clear_faults();
    env.director.set_down(true);
    env.log_count_reaches(WITHIN, "pass failed", 2).await;
    said.add_endpoints(&base).await;
    env.director.set_down(false);
    running.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        running.wait_exit(Duration::from_secs(10)).await.success(),
        "{}",
        env.diagnostics()
    );
    said.add(
        "run output",
        std::fs::read_to_string(env.run_output_path()).unwrap(),
    );

    let out = env.once(true).await;
    said.add_output("once (success)", &out);
    env.director
        .set_fault(Endpoint::Deployments, Fault::status(401));
    said.add_output("once (401)", &env.once(false).await);
    // The same with the log on stdout (no `logfile`), as in a container.
    let with_file = std::fs::read_to_string(&env.config_path).unwrap();
    let without: String = with_file
        .lines()
        .filter(|l| !l.starts_with("logfile:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&env.config_path, without).unwrap();
    let out = env.run(&["once"]).await;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("pass failed"),
        "{out:?}"
    );
    said.add_output("once (401, log on stdout)", &out);
    env.director.clear_faults();
    let out = env.run(&["once"]).await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("DEBUG"),
        "{out:?}"
    );
    said.add_output("once (success, log on stdout)", &out);
    std::fs::write(&env.config_path, with_file).unwrap();
    let ca = wrong_ca(env);
    env.write_config_full(
        1.0,
        &[("log.level", "debug"), ("director.ca_cert", &ca)],
        "",
    );
    let out = env.once(false).await;
    let log = env.log();
    let last_failure = log
        .lines()
        .rev()
        .find(|l| l.contains("pass failed"))
        .unwrap_or_default();
    assert!(
        last_failure.contains("tls"),
        "the wrong CA fails the TLS handshake: {last_failure}\n{}",
        env.diagnostics()
    );
    said.add_output("once (wrong CA)", &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_secrets_appear_nowhere() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A).permanent(false)]).await;
    let mut said = Said::default();
    exercise(&env, &mut said).await;
    said.add("log file", env.log());
    said.assert_free_of(&[
        ("the password", PASSWORD.to_owned()),
        ("the basic credentials", b64(&format!("{USER}:{PASSWORD}"))),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uaa_secrets_and_tokens_appear_nowhere() {
    let env = Env::start(Auth::Uaa, vec![Vm::agent(A).permanent(false)]).await;
    let uaa = env.uaa.as_ref().expect("UAA mode");
    let mut said = Said::default();
    exercise(&env, &mut said).await;
    assert!(uaa.tokens_issued() >= 2, "tokens went through the program");

    // UAA down: a fresh process has no cached token and must fail without leaking anything.
    env.write_config_full(1.0, &[("log.level", "debug")], "");
    uaa.set_down(true);
    said.add_output("once (UAA down)", &env.once(false).await);
    uaa.set_down(false);

    said.add("log file", env.log());
    // Every token the UAA issues starts with the same header segment.
    let token = uaa.issue_token().unwrap();
    let header = token.split('.').next().unwrap().to_owned();
    said.assert_free_of(&[
        ("the client secret", CLIENT_SECRET.to_owned()),
        (
            "the client credentials",
            b64(&format!("{CLIENT_ID}:{CLIENT_SECRET}")),
        ),
        ("a UAA token", header),
    ]);
}

// ---------------------------------------------------------------------------------------
// OpenTelemetry: an in-process OTLP/HTTP collector.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;

/// Receives `POST /v1/traces` (protobuf) and keeps every request.
async fn collector() -> (String, Arc<Mutex<Vec<ExportTraceServiceRequest>>>) {
    use prost::Message as _;
    let received: Arc<Mutex<Vec<ExportTraceServiceRequest>>> = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        store.lock().unwrap().push(request);
                        (
                            axum::http::StatusCode::OK,
                            [("content-type", "application/x-protobuf")],
                            Vec::new(),
                        )
                    }
                    Err(e) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        e.to_string().into_bytes(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn text_value(v: &Option<AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text_value(&kv.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_before_exit() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A).permanent(false)]).await;
    let (endpoint, received) = collector().await;
    // A batch delay far beyond the test: the spans can only arrive through the flush at exit.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(common::binary())
            .arg("-c")
            .arg(&env.config_path)
            .arg("once")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_SDK_DISABLED")
            .env_remove("OTEL_TRACES_EXPORTER")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("once finishes")
    .expect("the binary runs");
    assert!(out.status.success(), "{:?}\n{}", out, env.diagnostics());

    let requests = received.lock().unwrap().clone();
    assert!(
        !requests.is_empty(),
        "no export reached the collector\n{}",
        env.diagnostics()
    );
    let mut spans: Vec<Span> = Vec::new();
    for request in &requests {
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref().expect("a resource");
            assert_eq!(
                attr(&resource.attributes, "service.name").as_deref(),
                Some("bosh-nats-sync")
            );
            spans.extend(rs.scope_spans.iter().flat_map(|s| s.spans.iter().cloned()));
        }
    }
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let one = |name: &str| -> &Span {
        let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span expected among {names:?}");
        found[0]
    };
    let pass = one("pass");
    assert_eq!(
        attr(&pass.attributes, "pass").as_deref(),
        Some("1"),
        "{pass:?}"
    );
    assert_eq!(
        attr(&pass.attributes, "triggers").as_deref(),
        Some("once"),
        "{pass:?}"
    );
    assert!(
        pass.parent_span_id.is_empty(),
        "the pass is a root span: {pass:?}"
    );
    for (key, value) in [
        ("result", "changed"),
        ("desired", "4"),
        ("agents", "1"),
        ("added", "2"),
        ("removed", "0"),
        ("written", "true"),
        ("reloaded", "ok"),
    ] {
        assert_eq!(
            attr(&pass.attributes, key).as_deref(),
            Some(value),
            "{key}: {pass:?}"
        );
    }
    let by_id = |id: &[u8]| spans.iter().find(|s| s.span_id == id);
    // Is `span` inside the pass (its parent chain reaches the pass span)?
    let under_pass = |span: &Span| {
        let mut current = span;
        while let Some(parent) = by_id(&current.parent_span_id) {
            if parent.span_id == pass.span_id {
                return true;
            }
            current = parent;
        }
        false
    };

    let fetch = one("director.fetch_vms");
    assert_eq!(
        fetch.parent_span_id, pass.span_id,
        "fetch_vms is a child of the pass"
    );
    let director_requests: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "director.request")
        .collect();
    assert_eq!(
        director_requests.len(),
        3,
        "info, deployments, one vms: {names:?}"
    );
    let mut endpoints: Vec<String> = Vec::new();
    for request in &director_requests {
        assert_eq!(
            request.trace_id, pass.trace_id,
            "same trace as the pass: {request:?}"
        );
        assert_eq!(request.parent_span_id, fetch.span_id, "{request:?}");
        assert!(under_pass(request));
        assert_eq!(
            attr(&request.attributes, "status").as_deref(),
            Some("200"),
            "{request:?}"
        );
        endpoints.push(attr(&request.attributes, "endpoint").expect("an endpoint attribute"));
    }
    endpoints.sort();
    assert_eq!(endpoints, ["deployments", "info", "vms"]);
    for name in ["write_auth_file", "reload"] {
        let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
        assert!(!found.is_empty(), "a {name} span among {names:?}");
        for span in found {
            assert_eq!(span.trace_id, pass.trace_id, "{span:?}");
            assert!(under_pass(span), "{name} inside the pass: {span:?}");
        }
    }
    let all = format!("{requests:?}");
    assert!(!all.contains(PASSWORD), "no secret in what was exported");
}

// ---------------------------------------------------------------------------------------
// The log file.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_leaves_no_hole_in_the_log_file() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A).permanent(false)]).await;
    env.write_config_with(1.0, "");
    let _running = env.spawn_run();
    env.log_count_reaches(WITHIN, "pass changed the auth file", 1)
        .await;
    env.log_count_reaches(WITHIN, "pass found nothing to change", 1)
        .await;
    let before = std::fs::metadata(env.log_path()).unwrap().len();
    assert!(before > 0);

    // What logrotate's copytruncate does after copying.
    std::fs::OpenOptions::new()
        .write(true)
        .open(env.log_path())
        .unwrap()
        .set_len(0)
        .unwrap();
    let bytes = until(WITHIN, "a pass line after the truncation", || async {
        let bytes = std::fs::read(env.log_path()).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&bytes);
        ensure(text.contains("pass found nothing to change"), || {
            format!("{} bytes: {text:?}", bytes.len())
        })?;
        Ok(bytes)
    })
    .await;
    let nuls = bytes.iter().filter(|b| **b == 0).count();
    assert_eq!(
        nuls,
        0,
        "{nuls} NUL bytes in the log after truncation: the writer kept its old offset; text: {:?}",
        String::from_utf8_lossy(&bytes).replace('\0', "")
    );
    assert!(
        !String::from_utf8_lossy(&bytes).contains("bosh-nats-sync starting"),
        "the old content is gone"
    );
    assert!(
        bytes.first().is_some_and(|b| b.is_ascii_digit()),
        "new lines start at the beginning: {:?}",
        String::from_utf8_lossy(&bytes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse_and_the_pass_line_has_its_fields() {
    let env = Env::start(
        Auth::Basic,
        vec![Vm::agent(A).permanent(false), Vm::agent(B).permanent(true)],
    )
    .await;
    env.write_config_full(1.0, &[("log.format", "json")], "");
    let _running = env.spawn_run();
    env.log_count_reaches(WITHIN, "pass found nothing to change", 1)
        .await;

    let log = env.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let changed: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "pass changed the auth file")
        .collect();
    let [changed] = changed.as_slice() else {
        panic!("one changed pass expected:\n{log}")
    };
    assert_eq!(changed["level"], "INFO", "{changed}");
    // Director, health monitor, A and its bootstrap user, B.
    assert_eq!(changed["desired"], 5, "{changed}");
    // The start-up bootstrap already wrote the director and health-monitor users.
    assert_eq!(changed["added"], 3, "{changed}");
    assert_eq!(changed["removed"], 0, "{changed}");
    assert_eq!(changed["written"], true, "{changed}");
    assert_eq!(changed["reloaded"], "ok", "{changed}");
    assert!(changed["duration_ms"].as_u64().is_some(), "{changed}");
    let unchanged = lines
        .iter()
        .find(|l| l["message"] == "pass found nothing to change")
        .unwrap();
    assert_eq!(unchanged["written"], false, "{unchanged}");
    assert_eq!(unchanged["added"], 0, "{unchanged}");
    assert!(unchanged["duration_ms"].as_u64().is_some(), "{unchanged}");
}

/// §6.4: SIGTERM ends the process within 2 s — also while an export hangs on a
/// collector that accepted the connection and never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_collector_does_not_delay_the_exit() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A).permanent(false)]).await;
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", stuck.local_addr().unwrap());
    env.write_config_with(60.0, "");
    let out = std::fs::File::create(env.run_output_path()).unwrap();
    let mut child = tokio::process::Command::new(common::binary())
        .arg("-c")
        .arg(&env.config_path)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    env.log_count_reaches(WITHIN, "pass changed the auth file", 1)
        .await;
    // The export is in flight once its connection is accepted; it is never answered.
    let (_held, _) = tokio::time::timeout(WITHIN, stuck.accept())
        .await
        .expect("an export arrives")
        .unwrap();

    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    let started = tokio::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the process exits")
        .unwrap();
    let elapsed = started.elapsed();
    assert!(status.success(), "{status:?}\n{}", env.diagnostics());
    assert!(
        elapsed < Duration::from_secs(2),
        "exit took {elapsed:?}\n{}",
        env.diagnostics()
    );
}
