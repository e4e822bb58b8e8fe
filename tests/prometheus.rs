//! The Grafana dashboard and the alert rules on a real Prometheus: `prometheus` (Debian
//! package `prometheus`) scrapes the real binary every second while it runs against the
//! simulated director (UAA) and a real nats-server, with the shipped alert rules loaded on a
//! time scale where a minute of the rules is a second (see [`scaled_rules`]). Through
//! Prometheus's HTTP API the test checks that the target is up and every rule evaluates
//! without error; that on the healthy process, before any failure, every query of the
//! dashboard returns data (the error panel with every known reason at 0; a quantile may be NaN
//! only over a histogram that observed nothing in its window) and every rule has
//! series to compare (§8: every label value known in advance exists from start-up); that the
//! outage alerts fire while the director is down and resolve when it returns; that the reload
//! alert fires on a reload nats-server rejects; and that the dashboard's queries still return
//! data after those failures.
//!
//! The binary is found as `$PROMETHEUS`, else `prometheus` on `PATH`; without it the test
//! fails (it never skips).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bosh_nats_sync::pass::report::ERROR_REASONS;
use common::{Auth, Env, http};
use serde_json::Value;
use sim::director::Vm;
use sim::events::NewEvent;
use sim::pki::bootstrap_agent_cn;

/// The scrape job's name: the dashboard's `$job` variable must find it, whatever it is.
const JOB: &str = "bosh-nats-sync-under-test";

/// How much faster than the shipped rules' clock the test runs: one minute of
/// `metrics/alerts.yml` is one second here.
const TIME_SCALE: u64 = 60;

/// What the dashboard's `$__rate_interval` becomes. Grafana derives it from the scrape
/// interval and the panel's resolution; here it is longer than the whole test, so each panel
/// query sees everything the test caused (a histogram quantile over a window without an
/// observation is NaN, which would say nothing about the query).
const RATE_INTERVAL: &str = "10m";

/// Long enough for a debug build on a busy 2-core machine; polls return as soon as they hold.
const WITHIN: Duration = Duration::from_secs(30);

/// Waiting for an alert: its condition has to hold through the scaled `for:` (up to 20 s for
/// `BoshNatsSyncStale`: 15 s without a success, then 5 s), plus scrape and evaluation lag.
const ALERT_WITHIN: Duration = Duration::from_secs(60);

const A: &str = "0a1b2c3d-0000-4000-8000-00000000000a";
const B: &str = "0a1b2c3d-0000-4000-8000-00000000000b";
const NEW: &str = "0a1b2c3d-0000-4000-8000-0000000000ee";
const LATER: &str = "0a1b2c3d-0000-4000-8000-0000000000ff";

/// The alerts a down director raises, all of which must fire and resolve.
const OUTAGE_ALERTS: [&str; 3] = [
    "BoshNatsSyncStale",
    "BoshNatsSyncConsecutiveFailures",
    "BoshNatsSyncWatchDegraded",
];
const RELOAD_ALERT: &str = "BoshNatsSyncReloadFailing";

// ---------------------------------------------------------------------------------------
// The shipped rules on the test's time scale.

/// `metrics/alerts.yml` (the text `shipped`) with every time divided by [`TIME_SCALE`],
/// and nothing else changed — names, labels, annotations and the shape of every expression
/// are the shipped ones:
///
/// - `for:` and `keep_firing_for:` of a rule, `interval:` of a group;
/// - every duration inside an expression's brackets: range selectors (`[15m]` → `[15s]`) and
///   subqueries (`[1h:5m]` → `[60s:5s]`);
/// - in an expression that uses `time()`, the number it is compared with (`<`, `<=`, `>`,
///   `>=`): with `time()` on one side it is a number of seconds (`time() - … > 900` →
///   `> 15`).
///
/// Counts and ratios elsewhere (`>= 5`, `> 0`, `== 1`) are kept. What could hold a time
/// this does not scale — `offset`, `@`, a `time()` expression with no or several numeric
/// comparisons, a duration that does not divide into whole milliseconds — is an error, so a
/// new rule cannot slip through unscaled.
fn scaled_rules(shipped: &str) -> Result<String, String> {
    use serde_yaml_ng::Value as Yaml;
    let mut doc: Yaml =
        serde_yaml_ng::from_str(shipped).map_err(|e| format!("alerts.yml is not YAML: {e}"))?;
    let groups = doc
        .get_mut("groups")
        .and_then(Yaml::as_sequence_mut)
        .ok_or("alerts.yml: no `groups` list")?;
    for group in groups {
        let group_name = group
            .get("name")
            .and_then(Yaml::as_str)
            .unwrap_or("(unnamed)")
            .to_owned();
        scale_key(group, "interval", &format!("group {group_name}"))?;
        let rules = group
            .get_mut("rules")
            .and_then(Yaml::as_sequence_mut)
            .ok_or_else(|| format!("alerts.yml: group {group_name}: no `rules` list"))?;
        for rule in rules {
            let name = rule
                .get("alert")
                .or_else(|| rule.get("record"))
                .and_then(Yaml::as_str)
                .unwrap_or("(unnamed)")
                .to_owned();
            let place = format!("rule {name}");
            for key in ["for", "keep_firing_for"] {
                scale_key(rule, key, &place)?;
            }
            let expr = rule
                .get("expr")
                .and_then(Yaml::as_str)
                .ok_or_else(|| format!("alerts.yml: {place}: no `expr` string"))?;
            let scaled = scale_expr(expr).map_err(|e| format!("alerts.yml: {place}: {e}"))?;
            rule.as_mapping_mut()
                .ok_or_else(|| format!("alerts.yml: {place} is not a mapping"))?
                .insert(Yaml::from("expr"), Yaml::from(scaled));
        }
    }
    serde_yaml_ng::to_string(&doc).map_err(|e| format!("cannot write the scaled rules: {e}"))
}

/// Scales the duration under `key` of the mapping `node`, when there is one.
fn scale_key(node: &mut serde_yaml_ng::Value, key: &str, place: &str) -> Result<(), String> {
    let Some(mapping) = node.as_mapping_mut() else {
        return Err(format!("alerts.yml: {place} is not a mapping"));
    };
    let Some(value) = mapping.get_mut(key) else {
        return Ok(());
    };
    let text = value
        .as_str()
        .ok_or_else(|| format!("alerts.yml: {place}: `{key}` is not a duration string"))?;
    let scaled = scale_duration(text).map_err(|e| format!("alerts.yml: {place}: `{key}`: {e}"))?;
    *value = serde_yaml_ng::Value::from(scaled);
    Ok(())
}

/// A Prometheus duration (`90s`, `1h30m`, `500ms`) in milliseconds.
fn parse_duration(text: &str) -> Option<u64> {
    // "ms" before "m", so that "5ms" is not 5 minutes and an "s".
    const UNITS: [(&str, u64); 7] = [
        ("ms", 1),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
        ("w", 604_800_000),
        ("y", 31_536_000_000),
    ];
    let mut rest = text;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, ms) = UNITS.iter().find(|(unit, _)| rest.starts_with(unit))?;
        rest = &rest[unit.len()..];
        total = total.checked_add(n.checked_mul(*ms)?)?;
    }
    Some(total)
}

/// `text`, a duration, divided by [`TIME_SCALE`], written in seconds when whole.
fn scale_duration(text: &str) -> Result<String, String> {
    let ms = parse_duration(text).ok_or_else(|| format!("`{text}` is not a duration"))?;
    if !ms.is_multiple_of(TIME_SCALE) {
        return Err(format!(
            "`{text}` divided by {TIME_SCALE} is not a whole number of milliseconds"
        ));
    }
    let scaled = ms / TIME_SCALE;
    Ok(if scaled.is_multiple_of(1000) {
        format!("{}s", scaled / 1000)
    } else {
        format!("{scaled}ms")
    })
}

/// The expression with its bracketed durations scaled and, when it uses `time()`, the number
/// it is compared with (see [`scaled_rules`]). String literals are left alone: a regex such
/// as `=~"[0-9]+"` holds brackets that are no range.
fn scale_expr(expr: &str) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    // The expression outside string literals, to look for what this cannot scale.
    let mut code = String::with_capacity(expr.len());
    let mut quote: Option<char> = None;
    let mut rest = expr;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match quote {
            Some(q) => {
                out.push(c);
                if c == '\\' && q != '`' {
                    if let Some(escaped) = rest.chars().next() {
                        out.push(escaped);
                        rest = &rest[escaped.len_utf8()..];
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None if matches!(c, '"' | '\'' | '`') => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '[' => {
                let end = rest
                    .find(']')
                    .ok_or_else(|| format!("an unclosed `[` in `{expr}`"))?;
                let scaled = rest[..end]
                    .split(':')
                    .map(|part| match part.trim() {
                        "" => Ok(String::new()),
                        duration => scale_duration(duration),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                out.push('[');
                out.push_str(&scaled.join(":"));
                out.push(']');
                code.push_str("[]");
                rest = &rest[end + 1..];
            }
            None => {
                out.push(c);
                code.push(c);
            }
        }
    }
    if quote.is_some() {
        return Err(format!("an unclosed string in `{expr}`"));
    }
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    if words.contains(&"offset") || code.contains('@') {
        return Err(format!(
            "`offset` or `@` in `{expr}` holds a time the test does not scale: teach \
             scaled_rules in tests/prometheus.rs"
        ));
    }
    if code.contains("time()") {
        return scale_time_comparison(&out);
    }
    Ok(out)
}

/// Divides the number compared with a `time()` expression by [`TIME_SCALE`]: the one `<`,
/// `<=`, `>` or `>=` (outside strings) followed by a number, optionally after `bool`.
fn scale_time_comparison(expr: &str) -> Result<String, String> {
    let bytes = expr.as_bytes();
    let mut found: Vec<(usize, usize)> = Vec::new();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == b'\\' && q != b'`' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' | b'\'' | b'`' => quote = Some(c),
            b'<' | b'>' => {
                let mut j = i + 1;
                if bytes.get(j) == Some(&b'=') {
                    j += 1;
                }
                while bytes.get(j).is_some_and(u8::is_ascii_whitespace) {
                    j += 1;
                }
                if expr[j..].starts_with("bool") {
                    j += 4;
                    while bytes.get(j).is_some_and(u8::is_ascii_whitespace) {
                        j += 1;
                    }
                }
                let end = j + expr[j..]
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .unwrap_or(expr.len() - j);
                if end > j {
                    found.push((j, end));
                }
            }
            _ => {}
        }
        i += 1;
    }
    let [(start, end)] = found[..] else {
        return Err(format!(
            "`{expr}` uses time() with {} numeric comparisons; the test scales the seconds \
             of exactly one: teach scaled_rules in tests/prometheus.rs",
            found.len()
        ));
    };
    let seconds: f64 = expr[start..end]
        .parse()
        .map_err(|e| format!("`{}` in `{expr}`: {e}", &expr[start..end]))?;
    // TIME_SCALE is small: exact as an f64.
    let scaled = seconds / TIME_SCALE as f64;
    Ok(format!("{}{scaled}{}", &expr[..start], &expr[end..]))
}

/// The alert names of a rules file.
fn alert_names(rules: &str) -> BTreeSet<String> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(rules).expect("the rules are YAML");
    doc["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn scaling_divides_every_time_and_nothing_else() {
    let ok = |expr: &str| scale_expr(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    assert_eq!(
        ok(r#"increase(x{reason=~"[0-9]+|a\"[1h]"}[15m]) > 0"#),
        r#"increase(x{reason=~"[0-9]+|a\"[1h]"}[15s]) > 0"#,
        "brackets in strings are no ranges"
    );
    assert_eq!(
        ok("min_over_time(rate(x[5m])[1h:5m]) > 0"),
        "min_over_time(rate(x[5s])[60s:5s]) > 0"
    );
    assert_eq!(ok("max_over_time(x[1h:])"), "max_over_time(x[60s:])");
    assert_eq!(ok("rate(x[90s]) >= 5"), "rate(x[1500ms]) >= 5");
    assert_eq!(ok("rate(x[1m30s])"), "rate(x[1500ms])");
    assert_eq!(ok("time() - t > 900"), "time() - t > 15");
    assert_eq!(ok("time() - t >= bool 90"), "time() - t >= bool 1.5");
    assert_eq!(ok("x == 1"), "x == 1");
    for bad in [
        "x offset 5m",
        "x @ 1700000000",
        "time() - t > 900 and time() - u < 60",
        "time() - t",
        "rate(x[7ms])",
        "rate(x[5q])",
        "rate(x[5m)",
        r#"x{a="b}"#,
    ] {
        assert!(scale_expr(bad).is_err(), "{bad} must be refused");
    }

    let rules = "groups:\n  - name: g\n    interval: 1m\n    rules:\n      - alert: X\n        \
                 expr: increase(x[15m]) > 0\n        for: 10m\n        labels:\n          \
                 severity: warning\n        annotations:\n          summary: 'in 15m'\n";
    let scaled: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&scaled_rules(rules).unwrap()).unwrap();
    let group = &scaled["groups"][0];
    assert_eq!(group["interval"].as_str(), Some("1s"));
    let rule = &group["rules"][0];
    assert_eq!(rule["expr"].as_str(), Some("increase(x[15s]) > 0"));
    assert_eq!(rule["for"].as_str(), Some("10s"));
    assert_eq!(rule["labels"]["severity"].as_str(), Some("warning"));
    assert_eq!(rule["annotations"]["summary"].as_str(), Some("in 15m"));
    assert!(scaled_rules(&rules.replace("for: 10m", "for: soon")).is_err());
}

// ---------------------------------------------------------------------------------------
// A Prometheus server and its HTTP API.

/// `$PROMETHEUS`, else `prometheus` from `PATH`; fails with the package to install.
fn prometheus_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PROMETHEUS") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("prometheus"))
                .find(|p| p.is_file())
        })
        .expect(
            "prometheus is not on PATH and $PROMETHEUS is not set: install it (Debian/Ubuntu: \
             apt-get install prometheus) or point PROMETHEUS at the binary",
        )
}

/// A Prometheus server on loopback with its storage under the test's directory; killed when
/// dropped (before the directory is removed: it is declared after the test's `Env`).
struct Prometheus {
    _child: tokio::process::Child,
    base: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) every second as job [`JOB`],
    /// evaluating `rules` every second; waits until it is ready.
    async fn start(dir: &Path, target: &str, rules: &str) -> Prometheus {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(dir.join("data")).expect("create the Prometheus directory");
        std::fs::write(dir.join("rules.yml"), rules).expect("write the scaled rules");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yml\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let port = common::free_port();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("create the Prometheus log");
        let binary = prometheus_binary();
        let mut child = tokio::process::Command::new(&binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("duplicate the log file"))
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}. Install Prometheus (Debian/Ubuntu: apt-get install \
                     prometheus) or point the PROMETHEUS environment variable at it.",
                    binary.display()
                )
            });
        let base = format!("http://127.0.0.1:{port}");
        let ready = common::poll(WITHIN, || {
            let exited = child.try_wait().expect("try_wait works");
            let url = format!("{base}/-/ready");
            async move {
                if let Some(status) = exited {
                    return Err(format!("prometheus exited: {status}"));
                }
                match http().get(&url).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("GET /-/ready: {}", r.status())),
                    Err(e) => Err(format!("GET /-/ready: {e}")),
                }
            }
        })
        .await;
        if let Err(last) = ready {
            panic!(
                "Prometheus ({}) did not become ready within {WITHIN:?}: {last}\n--- its log:\n{}",
                binary.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Prometheus {
            _child: child,
            base,
            log,
        }
    }

    /// The last lines of Prometheus's log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// GET an API path; its `data`, or why not (an error answer names Prometheus's reason).
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = url::Url::parse_with_params(&format!("{}{path}", self.base), params)
            .map_err(|e| format!("{path}: {e}"))?;
        let response = http()
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {path} {params:?}: {e}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| format!("GET {path} {params:?}: reading the body: {e}"))?;
        let json: Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path} {params:?}: {status}, not JSON ({e}): {body}"))?;
        if json["status"] != "success" {
            return Err(format!("GET {path} {params:?}: {status}: {body}"));
        }
        Ok(json["data"].clone())
    }

    /// An instant query's samples (`data.result` of a vector).
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", &[("query", promql)]).await?;
        match (data["resultType"].as_str(), data["result"].as_array()) {
            (Some("vector"), Some(result)) => Ok(result.clone()),
            _ => Err(format!("`{promql}`: not an instant vector: {data}")),
        }
    }

    /// Alert name → the states of its active alerts (`pending`, `firing`) and their labels.
    async fn active_alerts(&self) -> Result<BTreeMap<String, Vec<(String, Value)>>, String> {
        let data = self.api("/api/v1/alerts", &[]).await?;
        let mut active: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        for alert in data["alerts"].as_array().into_iter().flatten() {
            let name = alert["labels"]["alertname"]
                .as_str()
                .ok_or_else(|| format!("an alert without a name: {alert}"))?;
            let state = alert["state"].as_str().unwrap_or("?").to_owned();
            active
                .entry(name.to_owned())
                .or_default()
                .push((state, alert["labels"].clone()));
        }
        Ok(active)
    }

    /// Every rule of every group, as `/api/v1/rules` describes it.
    async fn rules(&self) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/rules", &[]).await?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }
}

/// [`common::poll`] until `check` returns `Ok` (printing how long that took, for
/// `--nocapture`); after `within`, fails with the last `Err`, Prometheus's log and the
/// program's.
async fn wait_for<T, F, Fut>(
    env: &Env,
    prometheus: &Prometheus,
    within: Duration,
    what: &str,
    check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    match common::poll(within, check).await {
        Ok(value) => {
            eprintln!("{:>8.3} s until {what}", start.elapsed().as_secs_f64());
            value
        }
        Err(last) => panic!(
            "timed out after {within:?} waiting for {what}; last: {last}\n\
             --- prometheus log (tail):\n{}\n{}",
            prometheus.log_tail(),
            env.diagnostics()
        ),
    }
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message()) }
}

/// Every rule named in `expected` is loaded (and no other), has been evaluated, and its last
/// evaluation succeeded.
async fn rules_evaluate_cleanly(
    prometheus: &Prometheus,
    expected: &BTreeSet<String>,
) -> Result<(), String> {
    let rules = prometheus.rules().await?;
    let loaded: BTreeSet<String> = rules
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    ensure(&loaded == expected && rules.len() == expected.len(), || {
        format!("loaded rules {loaded:?}, want those of alerts.yml: {expected:?}")
    })?;
    let unhealthy: Vec<String> = rules
        .iter()
        .filter(|r| {
            r["health"] != "ok"
                || r["lastError"].as_str().is_some_and(|e| !e.is_empty())
                || r["lastEvaluation"]
                    .as_str()
                    .is_none_or(|t| t.starts_with("0001-"))
        })
        .map(|r| {
            format!(
                "{} (health {}, lastError {}, lastEvaluation {})",
                r["name"], r["health"], r["lastError"], r["lastEvaluation"]
            )
        })
        .collect();
    ensure(unhealthy.is_empty(), || {
        format!("rules not evaluated cleanly: {unhealthy:?}")
    })
}

/// `text` with a Grafana template variable replaced by `value`, both spellings (`$name`,
/// `${name}`).
fn substitute(text: &str, name: &str, value: &str) -> String {
    text.replace(&format!("${{{name}}}"), value)
        .replace(&format!("${name}"), value)
}

/// A label value as Grafana puts a multi-value variable into a Prometheus query for `=~`:
/// regex metacharacters escaped with a backslash, which the PromQL string spells `\\`.
fn grafana_regex_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if "[]$^*+?.()|\\{}".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `label_values(SELECTOR, LABEL)` — a query variable's definition — split in two.
fn label_values(definition: &str) -> Option<(&str, &str)> {
    let inner = definition
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim(), label.trim()))
}

/// Whether every sample of an instant vector has a finite value (a quantile over no
/// observation is NaN).
fn all_finite(samples: &[Value]) -> bool {
    samples.iter().all(|s| {
        s["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

/// For a quantile query, `histogram_quantile(…, … NAME_bucket{SELECTOR}[RANGE] …)`, the query
/// of how many observations that histogram made in the window:
/// `sum(increase(NAME_count{SELECTOR}[RANGE]))`; `None` for any other query.
fn observations_query(promql: &str) -> Option<String> {
    if !promql.trim_start().starts_with("histogram_quantile(") {
        return None;
    }
    let bucket = promql.find("_bucket{")?;
    let name_start = promql[..bucket]
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let name = &promql[name_start..bucket];
    let rest = &promql[bucket + "_bucket".len()..];
    let selector = &rest[..=rest.find('}')?];
    let after = rest[selector.len()..].strip_prefix('[')?;
    let range = &after[..after.find(']')?];
    Some(format!("sum(increase({name}_count{selector}[{range}]))"))
}

#[test]
fn the_observations_of_a_quantile_query_are_its_histograms_count() {
    assert_eq!(
        observations_query(
            r#"histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket{job=~"j",instance=~"127\\.0\\.0\\.1:1"}[10m])))"#
        )
        .as_deref(),
        Some(r#"sum(increase(x_seconds_count{job=~"j",instance=~"127\\.0\\.0\\.1:1"}[10m]))"#)
    );
    assert_eq!(observations_query("sum(rate(x_total{a=\"b\"}[5m]))"), None);
    assert_eq!(observations_query("histogram_quantile(0.5, x)"), None);
}

fn workspace_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every alert rule of a rules file: its name and expression.
fn rule_exprs(rules: &str) -> Vec<(String, String)> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(rules).expect("the rules are YAML");
    doc["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .filter_map(|r| {
            Some((
                r["alert"].as_str()?.to_owned(),
                r["expr"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// The expression with `bool` after every comparison operator (outside strings, label
/// matchers and brackets) that has none: a filter (`x > 0`, which keeps only the series that
/// hold) becomes a 0 or 1 for every series compared, so the result shows which series the
/// rule has at all.
fn with_bool(expr: &str) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len() + 16);
    let mut chars = expr.char_indices().peekable();
    let mut quote: Option<char> = None;
    // Inside `{…}` (label matchers, where `!=` is no comparison) or `[…]` (durations).
    let mut closing: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        out.push(c);
        if let Some(q) = quote {
            if c == '\\' && q != '`' {
                if let Some((_, escaped)) = chars.next() {
                    out.push(escaped);
                }
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' if closing.is_none() => closing = Some('}'),
            '[' if closing.is_none() => closing = Some(']'),
            _ if Some(c) == closing => closing = None,
            _ if closing.is_some() => {}
            '=' | '!' | '<' | '>' => {
                let next = chars.peek().map(|(_, n)| *n);
                let operator = match (c, next) {
                    ('=' | '!' | '<' | '>', Some('=')) => {
                        out.push('=');
                        chars.next();
                        true
                    }
                    ('<' | '>', _) => true,
                    _ => false,
                };
                if !operator {
                    return Err(format!("a stray `{c}` at {i} in `{expr}`"));
                }
                let rest = &expr[chars.peek().map_or(expr.len(), |(j, _)| *j)..];
                let has_bool = rest.trim_start().strip_prefix("bool").is_some_and(|after| {
                    !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                });
                if !has_bool {
                    out.push_str(" bool");
                    if !rest.starts_with(char::is_whitespace) {
                        out.push(' ');
                    }
                }
            }
            _ => {}
        }
    }
    if quote.is_some() || closing.is_some() {
        return Err(format!("an unclosed string, `{{` or `[` in `{expr}`"));
    }
    Ok(out)
}

#[test]
fn with_bool_turns_every_comparison_into_a_value() {
    let ok = |expr: &str| with_bool(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    assert_eq!(ok("x > 0"), "x > bool 0");
    assert_eq!(ok("time() - t >= 15"), "time() - t >= bool 15");
    assert_eq!(ok("x >= bool 5"), "x >= bool 5");
    assert_eq!(ok("max(x) == 1"), "max(x) == bool 1");
    assert_eq!(ok("x<1"), "x< bool 1");
    assert_eq!(ok("x > boolean_y"), "x > bool boolean_y");
    assert_eq!(
        ok(r#"increase(x{a!="b",c=~"d|e>f"}[15s]) > 0 or rate(y{r="no"}[5s]) != 0"#),
        r#"increase(x{a!="b",c=~"d|e>f"}[15s]) > bool 0 or rate(y{r="no"}[5s]) != bool 0"#
    );
    assert_eq!(
        ok("min_over_time(rate(x[5s])[60s:5s]) <= 0"),
        "min_over_time(rate(x[5s])[60s:5s]) <= bool 0"
    );
    for bad in ["x = 1", r#"x{a="b} > 0"#, "rate(x[5s) > 0"] {
        assert!(with_bool(bad).is_err(), "{bad} must be refused");
    }
}

/// The dashboard's query variables, as [`panels_return_data`] fills them in for this target.
fn variables(target: &str) -> [(&'static str, String, String); 2] {
    [
        ("job", grafana_regex_escape(JOB), JOB.to_owned()),
        ("instance", grafana_regex_escape(target), target.to_owned()),
    ]
}

/// `text` with the dashboard's variables and `$__rate_interval` filled in.
fn resolve(text: &str, target: &str) -> String {
    let mut text = substitute(text, "__rate_interval", RATE_INTERVAL);
    for (name, escaped, _) in &variables(target) {
        text = substitute(&text, name, escaped);
    }
    text
}

/// The dashboard's query variables (`job`, `instance`) offer this target's values.
async fn dashboard_variables_find_the_target(prom: &Prometheus, dashboard: &Value, target: &str) {
    let variables = variables(target);
    let mut checked_variables = BTreeSet::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().expect("a variable has a name");
        let definition = variable["definition"].as_str().unwrap_or_default();
        let (selector, label) = label_values(definition).unwrap_or_else(|| {
            panic!("variable {name}: want a definition label_values(SELECTOR, LABEL), got {definition:?}")
        });
        let (_, _, want) = variables
            .iter()
            .find(|(n, _, _)| *n == label)
            .unwrap_or_else(|| panic!("variable {name} lists label {label}, not job or instance"));
        let selector = resolve(selector, target);
        let series = prom
            .api("/api/v1/series", &[("match[]", selector.as_str())])
            .await
            .unwrap_or_else(|e| panic!("variable {name}: {e}"));
        let values: BTreeSet<&str> = series
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s[label].as_str())
            .collect();
        assert!(
            values.contains(want.as_str()),
            "variable {name} ({definition}) offers {values:?}, not {want}"
        );
        checked_variables.insert(name.to_owned());
    }
    assert_eq!(
        checked_variables,
        BTreeSet::from(["instance".to_owned(), "job".to_owned()]),
        "the dashboard's query variables"
    );
}

/// Each panel's query returns data, every value a number (polling each, as a rate needs a
/// second scrape) — but for a quantile over a histogram that observed nothing in the query's
/// window, which is NaN whatever the query: then its `_count` must show that (see
/// [`observations_query`]), so a quantile of a histogram with observations is still held to
/// a number. In file mode that is the callout answer latency, which only callout mode
/// observes. `when` names the moment in failure messages. Returns how many queries.
async fn panels_return_data(
    env: &Env,
    prom: &Prometheus,
    dashboard: &Value,
    target: &str,
    when: &str,
) -> usize {
    let mut queries = 0;
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for query in panel["targets"].as_array().into_iter().flatten() {
            let expr = query["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr: {query}"));
            let promql = resolve(expr, target);
            assert!(
                !promql.contains('$'),
                "panel {title:?}: an unknown template variable in {promql}"
            );
            let what = format!(
                "panel {title:?} query {} to return data {when}",
                query["refId"]
            );
            wait_for(env, prom, WITHIN, &what, || async {
                let samples = prom.query(&promql).await?;
                ensure(!samples.is_empty(), || format!("no series for {promql}"))?;
                if all_finite(&samples) {
                    return Ok(());
                }
                let observed = observations_query(&promql).ok_or_else(|| {
                    format!("a value that is not a number for {promql}: {samples:?}")
                })?;
                let counts = prom.query(&observed).await?;
                ensure(
                    !counts.is_empty() && counts.iter().all(|s| s["value"][1] == "0"),
                    || {
                        format!(
                            "a value that is not a number for {promql}: {samples:?}, while its \
                             histogram observed something in the window ({observed}: {counts:?})"
                        )
                    },
                )
            })
            .await;
            queries += 1;
        }
    }
    assert!(
        queries >= 20,
        "only {queries} panel queries in the dashboard"
    );
    queries
}

// ---------------------------------------------------------------------------------------
// The test.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alert_rules_work_on_a_real_prometheus() {
    let started = Instant::now();
    let shipped = std::fs::read_to_string(workspace_file("metrics/alerts.yml"))
        .expect("read metrics/alerts.yml");
    let rules = scaled_rules(&shipped).unwrap_or_else(|e| panic!("{e}"));
    let expected_rules = alert_names(&shipped);
    assert_eq!(
        alert_names(&rules),
        expected_rules,
        "the scaled copy has the shipped alerts"
    );
    for name in OUTAGE_ALERTS.iter().chain([&RELOAD_ALERT]) {
        assert!(
            expected_rules.contains(*name),
            "metrics/alerts.yml has no alert {name}, which this test drives"
        );
    }
    let dashboard_path = workspace_file("metrics/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(&dashboard_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", dashboard_path.display())),
    )
    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", dashboard_path.display()));

    let env = Env::start(Auth::Uaa, vec![Vm::agent(A), Vm::agent(B).permanent(true)]).await;
    // An event in the log: the director records events, so the watch can become healthy.
    env.director.record_event(NewEvent::new("acquire", "lock"));
    // Tokens valid for 65 s are renewed 5 s after each fetch (the program renews with 60 s
    // left), so UAA token fetches go on while Prometheus watches: the token panels' rates
    // and the uaa_token latency then have observations to show (a counter's first value at
    // a target's first scrape is no increase).
    env.uaa
        .as_ref()
        .expect("a UAA environment")
        .set_expires_in(65);
    // The program's intervals on the same time scale as the rules (resync 300 s → 5 s,
    // backoff cap 60 s → 1 s), so a healthy watch keeps the last success fresher than
    // BoshNatsSyncStale's 15 (scaled) minutes, as it does with the defaults.
    let base = env.write_config_http(
        1.0,
        &[
            ("intervals.watch", "0.2"),
            ("intervals.resync", "5"),
            ("intervals.backoff_max", "1"),
            ("nats.reload_verify_timeout", "1"),
        ],
        "",
    );
    let target = base
        .strip_prefix("http://")
        .expect("the listener's base URL is http://host:port")
        .to_owned();
    let _running = env.spawn_run();
    let prometheus = Prometheus::start(env.dir.path(), &target, &rules).await;
    let prom = &prometheus;
    let env = &env;

    // --- A healthy start: the target is up, the rules evaluate, no alert is active.
    wait_for(env, prom, WITHIN, "the target to be up", || async {
        let data = prom.api("/api/v1/targets", &[("state", "active")]).await?;
        let targets = data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let [t] = &targets[..] else {
            return Err(format!("want one active target: {data}"));
        };
        ensure(
            t["labels"]["job"] == JOB && t["labels"]["instance"] == target.as_str(),
            || format!("the target's labels: {t}"),
        )?;
        ensure(t["health"] == "up", || format!("the target: {t}"))
    })
    .await;
    wait_for(
        env,
        prom,
        WITHIN,
        "every rule to be evaluated without error",
        || rules_evaluate_cleanly(prom, &expected_rules),
    )
    .await;
    wait_for(env, prom, WITHIN, "the watch to be healthy", || async {
        let found = prom
            .query(&format!(
                "bosh_nats_sync_watch_state{{job=\"{JOB}\",state=\"healthy\"}} == 1"
            ))
            .await?;
        ensure(!found.is_empty(), || {
            "watch_state{state=healthy} is not 1".into()
        })
    })
    .await;
    // A VM created: the watch reads its event and the agent is admitted, which observes the
    // event-to-admitted latency.
    env.director.create_vm("cf", Vm::agent(NEW));
    common::within(env, WITHIN, "the new VM's agent is admitted", || async {
        env.admitted(&bootstrap_agent_cn(NEW)).await
    })
    .await;
    wait_for(
        env,
        prom,
        WITHIN,
        "Prometheus to see the admission observed",
        || async {
            let found = prom
                .query(&format!(
                    "bosh_nats_sync_watch_admission_latency_seconds_count{{job=\"{JOB}\"}} > 0"
                ))
                .await?;
            ensure(!found.is_empty(), || "no admission observed yet".into())
        },
    )
    .await;
    wait_for(
        env,
        prom,
        WITHIN,
        "no alert active while all is well",
        || async {
            let active = prom.active_alerts().await?;
            ensure(active.is_empty(), || format!("active alerts: {active:?}"))
        },
    )
    .await;

    // --- Healthy, nothing failed yet: every series a panel or a rule reads is there (§8).
    // The dashboard's variables find this job and instance, and every panel's query returns
    // data — the error panel included, with every reason at 0.
    dashboard_variables_find_the_target(prom, &dashboard, &target).await;
    panels_return_data(env, prom, &dashboard, &target, "while healthy").await;
    let errors_panel = panels(&dashboard)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .find(|expr| expr.contains("bosh_nats_sync_errors_total"))
        .map(|expr| resolve(expr, &target))
        .expect("the dashboard has a panel of bosh_nats_sync_errors_total");
    let reasons = prom
        .query(&errors_panel)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let by_reason: BTreeMap<&str, &str> = reasons
        .iter()
        .filter_map(|s| Some((s["metric"]["reason"].as_str()?, s["value"][1].as_str()?)))
        .collect();
    let want: BTreeMap<&str, &str> = ERROR_REASONS.iter().map(|r| (*r, "0")).collect();
    assert_eq!(
        by_reason, want,
        "the error panel ({errors_panel}) while healthy: every reason the program knows, at 0"
    );
    for literal in [
        "connection",
        "unauthorized",
        "reload_rejected",
        "pass_timeout",
    ] {
        assert!(want.contains_key(literal), "{literal} is a known reason");
    }
    // Every endpoint the client used is a preset one: with UAA and the watch, all of them.
    let endpoints = prom
        .query(&format!(
            "sum by (endpoint) (increase(bosh_nats_sync_director_requests_total{{job=\"{JOB}\"}}[{RATE_INTERVAL}])) > 0"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let used: BTreeSet<&str> = endpoints
        .iter()
        .filter_map(|s| s["metric"]["endpoint"].as_str())
        .collect();
    let listed: BTreeSet<&str> = bosh_nats_sync::director::ENDPOINTS.into_iter().collect();
    assert!(
        used.is_subset(&listed) && used.contains("uaa_token") && used.contains("events"),
        "endpoints requested {used:?}, preset {listed:?}"
    );
    // Every alert rule, its comparisons made `bool`: each has series to compare — its
    // `increase(…)` and `rate(…)` over real zeros, not over nothing — and none holds.
    wait_for(
        env,
        prom,
        WITHIN,
        "every rule to compare real series, none of them true",
        || async {
            for (name, expr) in rule_exprs(&rules) {
                let promql = with_bool(&expr)?;
                let samples = prom.query(&promql).await?;
                ensure(!samples.is_empty(), || {
                    format!("rule {name}: no series for {promql}")
                })?;
                ensure(samples.iter().all(|s| s["value"][1] == "0"), || {
                    format!("rule {name} holds: {promql} = {samples:?}")
                })?;
            }
            Ok(())
        },
    )
    .await;

    // --- The director goes down: the outage alerts fire, with the target's labels.
    env.director.set_down(true);
    let active = wait_for(
        env,
        prom,
        ALERT_WITHIN,
        "the outage alerts to fire",
        || async {
            let active = prom.active_alerts().await?;
            let missing: Vec<&str> = OUTAGE_ALERTS
                .into_iter()
                .filter(|name| {
                    !active
                        .get(*name)
                        .is_some_and(|alerts| alerts.iter().any(|(state, _)| state == "firing"))
                })
                .collect();
            ensure(missing.is_empty(), || {
                format!("not firing yet: {missing:?}; active: {active:?}")
            })?;
            Ok(active)
        },
    )
    .await;
    for name in OUTAGE_ALERTS {
        for (_, labels) in &active[name] {
            assert!(
                labels["job"] == JOB && labels["instance"] == target.as_str(),
                "{name} carries the target's labels: {labels}"
            );
        }
    }
    let refused = prom
        .query(&format!(
            "bosh_nats_sync_errors_total{{job=\"{JOB}\",reason=\"connection\"}} > 0"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !refused.is_empty(),
        "the failed passes are counted under reason connection"
    );

    // --- It returns: they resolve.
    env.director.set_down(false);
    wait_for(
        env,
        prom,
        WITHIN,
        "the outage alerts to resolve",
        || async {
            let active = prom.active_alerts().await?;
            let still: Vec<&str> = OUTAGE_ALERTS
                .into_iter()
                .filter(|name| active.contains_key(*name))
                .collect();
            ensure(still.is_empty(), || format!("still active: {still:?}"))?;
            let rules = prom.rules().await?;
            let not_inactive: Vec<String> = rules
                .iter()
                .filter(|r| OUTAGE_ALERTS.iter().any(|name| r["name"] == *name))
                .filter(|r| r["state"] != "inactive")
                .map(|r| format!("{} is {}", r["name"], r["state"]))
                .collect();
            ensure(not_inactive.is_empty(), || format!("{not_inactive:?}"))
        },
    )
    .await;

    // --- nats-server rejects a reload: its own config no longer parses. A new VM makes
    // the program write the file and reload; the server keeps the previous users.
    let nats_config = env.nats.config_file().to_owned();
    let original = std::fs::read_to_string(&nats_config).expect("read nats-server's config");
    std::fs::write(&nats_config, format!("{original}\nbogus {{\n"))
        .expect("break nats-server's config");
    env.director.create_vm("cf", Vm::agent(LATER));
    wait_for(
        env,
        prom,
        ALERT_WITHIN,
        "BoshNatsSyncReloadFailing to fire",
        || async {
            let active = prom.active_alerts().await?;
            ensure(
                active
                    .get(RELOAD_ALERT)
                    .is_some_and(|alerts| alerts.iter().any(|(state, _)| state == "firing")),
                || format!("active: {active:?}"),
            )
        },
    )
    .await;
    let rejected = prom
        .query(&format!(
            "bosh_nats_sync_errors_total{{job=\"{JOB}\",reason=\"reload_rejected\"}} > 0"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !rejected.is_empty(),
        "the failure is nats-server's rejection (reason reload_rejected)\n{}",
        env.diagnostics()
    );
    assert!(
        !env.admitted(&bootstrap_agent_cn(LATER)).await,
        "nats-server rejected the file, so it still serves the previous users"
    );

    // --- After the failures, every panel still returns data (the error panel now with the
    // reasons that occurred above 0).
    let queries = panels_return_data(env, prom, &dashboard, &target, "after the failures").await;

    // Through all of that, every rule kept evaluating without error.
    rules_evaluate_cleanly(prom, &expected_rules)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- prometheus log (tail):\n{}", prom.log_tail()));
    std::fs::write(&nats_config, original).expect("restore nats-server's config");
    eprintln!(
        "{:>8.3} s in all ({queries} dashboard queries)",
        started.elapsed().as_secs_f64()
    );
}
