//! The Grafana dashboard, checked without Grafana: its shape in Grafana's dashboard JSON
//! model, the data-source and job/instance variables every query goes through, units and
//! thresholds (the alert thresholds where a panel shows an alerted value), that it reads every
//! `bosh_nats_sync_` family the program exports and nothing it does not, and that
//! docs/observability.md lists each panel with the metrics it reads. `tests/prometheus.rs`
//! in the root crate runs every query against a real Prometheus scraping the real binary.
//!
//! The file is the chart's `dashboards/bosh-nats-sync.json` (Helm reads only files inside
//! the chart); `metrics/grafana-dashboard.json` is a symlink to it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// Units a panel may show: seconds, operations and requests per second, plain numbers,
/// bytes and a CPU ratio.
const UNITS: [&str; 6] = ["s", "ops", "reqps", "short", "bytes", "percentunit"];

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn canonical() -> PathBuf {
    crate_dir().join("../charts/bosh-nats-sync/dashboards/bosh-nats-sync.json")
}

fn dashboard() -> Value {
    let path = crate_dir().join("grafana-dashboard.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The dashboard's panels in order, rows included (a collapsed row's panels after it).
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("a panels list") {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("(untitled)")
}

fn exprs(panel: &Value) -> Vec<&str> {
    panel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["expr"].as_str())
        .collect()
}

/// The metric names an expression reads (`bosh_nats_sync_…` and `process_…`), each with the
/// label selector that follows it (`None` when there is none).
fn selectors(expr: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(start) = ["bosh_nats_sync_", "process_"]
        .iter()
        .filter_map(|prefix| rest.find(prefix))
        .min()
    {
        let is_word_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
        // Part of a longer word (e.g. `label_values`'s argument is fine, a suffix is not).
        if rest[..start].chars().next_back().is_some_and(is_word_char) {
            rest = &rest[start + 1..];
            continue;
        }
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_word_char(c)).unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let after = &tail[end..];
        let selector = after
            .strip_prefix('{')
            .and_then(|s| s.find('}').map(|close| s[..close].to_owned()));
        out.push((name, selector));
        rest = after;
    }
    out
}

/// The metric family a name read in a query belongs to (a histogram's `_bucket` series).
fn family(name: &str) -> &str {
    name.strip_suffix("_bucket").unwrap_or(name)
}

/// The families a panel reads.
fn families_read(panel: &Value) -> BTreeSet<String> {
    exprs(panel)
        .into_iter()
        .flat_map(selectors)
        .map(|(name, _)| family(&name).to_owned())
        .collect()
}

/// The families the program exports (from `# TYPE` lines, after recording everything).
fn exported() -> BTreeSet<String> {
    let metrics = common::metrics();
    let health = common::health(metrics.clone(), Duration::from_secs(600));
    common::record_everything(&metrics, &health);
    metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_metrics_crates_file_is_the_charts_file() {
    let link = crate_dir().join("grafana-dashboard.json");
    let meta =
        std::fs::symlink_metadata(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    assert!(
        meta.file_type().is_symlink(),
        "{} must be a symlink to the chart's dashboards/bosh-nats-sync.json (one file, which \
         Helm can read); a checkout without symlinks (git core.symlinks=false) breaks it",
        link.display()
    );
    assert_eq!(
        std::fs::canonicalize(&link).unwrap(),
        std::fs::canonicalize(canonical()).unwrap(),
        "{} points elsewhere",
        link.display()
    );
}

#[test]
fn the_dashboard_has_grafanas_shape() {
    let d = dashboard();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let uid = d["uid"]
        .as_str()
        .expect("a uid, so links and provisioning keep it");
    assert!(
        uid.len() <= 40
            && uid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "Grafana uids are at most 40 characters of [A-Za-z0-9_-]: {uid}"
    );
    assert!(d["id"].is_null(), "no database id in a file to import");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {} (36 and later: data sources by uid)",
        d["schemaVersion"]
    );
    assert!(d["time"]["from"].is_string() && d["time"]["to"].is_string());

    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(&str, [u64; 4])> = Vec::new();
    let mut bottom = 0;
    let mut last_y = 0;
    for panel in panels(&d) {
        let name = title(panel);
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: no id"));
        assert!(ids.insert(id), "{name}: id {id} is used twice");
        let g = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{name}: gridPos.{k} is not a number: {g}"))
        });
        assert!(w >= 1 && h >= 1 && x + w <= 24, "{name}: gridPos {g}");
        assert!(y >= last_y, "{name}: panels are listed top to bottom");
        last_y = y;
        for (other, [ox, oy, ow, oh]) in &boxes {
            let apart = x + w <= *ox || *ox + ow <= x || y + h <= *oy || *oy + oh <= y;
            assert!(apart, "{name} overlaps {other}");
        }
        boxes.push((name, [x, y, w, h]));
        if is_row(panel) {
            assert_eq!((x, w, h), (0, 24, 1), "{name}: a row spans the width");
            assert!(y >= bottom, "row {name} starts below the panels before it");
            continue;
        }
        bottom = bottom.max(y + h);
        assert!(
            ["stat", "timeseries", "state-timeline"].contains(&panel["type"].as_str().unwrap()),
            "{name}: panel type {}",
            panel["type"]
        );
        assert!(
            panel["description"].as_str().is_some_and(|s| s.len() > 20),
            "{name}: a description says what it shows"
        );
        let source = json!({"type": "prometheus", "uid": "${datasource}"});
        assert_eq!(
            panel["datasource"], source,
            "{name}: the data source variable"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{name}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"], source, "{name}: a query's data source");
            assert!(
                refs.insert(t["refId"].as_str().expect("a refId")),
                "{name}: refIds"
            );
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{name}");
            assert!(t["legendFormat"].is_string(), "{name}: a legend");
            // A stat shows the present: over a range, `watch_state == 1` or build_info would
            // also show the states and versions that ended within it.
            let stat = panel["type"] == "stat";
            assert_eq!(
                t["instant"], stat,
                "{name}: instant queries for stat panels only"
            );
            assert_eq!(t["range"], !stat, "{name}: range queries for graphs");
        }
        let defaults = &panel["fieldConfig"]["defaults"];
        let unit = defaults["unit"].as_str().unwrap_or("(none)");
        assert!(UNITS.contains(&unit), "{name}: unit {unit}");
        let steps = defaults["thresholds"]["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no thresholds"));
        assert_eq!(defaults["thresholds"]["mode"], "absolute", "{name}");
        assert!(steps[0]["value"].is_null(), "{name}: the base step");
        let values: Vec<f64> = steps[1..]
            .iter()
            .map(|s| s["value"].as_f64().expect("a threshold value"))
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "{name}: thresholds ascend"
        );
    }
    assert!(
        boxes.len() > 20,
        "expected a full dashboard, got {}",
        boxes.len()
    );
}

#[test]
fn the_variables_are_a_prometheus_data_source_a_job_and_an_instance() {
    let d = dashboard();
    let list = d["templating"]["list"].as_array().expect("templating.list");
    let by_name: BTreeMap<&str, &Value> = list
        .iter()
        .map(|v| (v["name"].as_str().expect("a variable name"), v))
        .collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["datasource", "instance", "job"]
    );
    let source = by_name["datasource"];
    assert_eq!(source["type"], "datasource");
    assert_eq!(source["query"], "prometheus");
    for (name, definition) in [
        ("job", "label_values(bosh_nats_sync_build_info, job)"),
        (
            "instance",
            "label_values(bosh_nats_sync_build_info{job=~\"$job\"}, instance)",
        ),
    ] {
        let v = by_name[name];
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(
            v["datasource"],
            json!({"type": "prometheus", "uid": "${datasource}"}),
            "{name}"
        );
        assert_eq!(v["definition"], definition, "{name}");
        assert_eq!(v["query"]["query"], definition, "{name}");
        assert_eq!(v["multi"], true, "{name}: several may be chosen");
        assert_eq!(v["includeAll"], true, "{name}");
        assert_eq!(v["allValue"], ".*", "{name}: All matches every value");
    }
}

#[test]
fn every_query_selects_by_the_job_and_instance_variables() {
    let d = dashboard();
    for panel in panels(&d).into_iter().filter(|p| !is_row(p)) {
        for expr in exprs(panel) {
            let found = selectors(expr);
            assert!(
                !found.is_empty(),
                "{}: reads no metric: {expr}",
                title(panel)
            );
            for (name, selector) in found {
                let selector = selector.unwrap_or_default();
                let matchers: Vec<&str> = selector.split(',').map(str::trim).collect();
                assert!(
                    matchers.starts_with(&["job=~\"$job\"", "instance=~\"$instance\""]),
                    "{}: {name} must be selected by job=~\"$job\",instance=~\"$instance\" \
                     (no hard-coded job): {expr}",
                    title(panel)
                );
                assert!(
                    !matchers[2..]
                        .iter()
                        .any(|m| m.starts_with("job") || m.starts_with("instance")),
                    "{}: {expr}",
                    title(panel)
                );
            }
            assert!(
                !expr.contains("[5m]") && !expr.contains("[1m]"),
                "{}: rate windows are $__rate_interval (or a deliberate longer one): {expr}",
                title(panel)
            );
        }
    }
}

#[test]
fn the_dashboard_reads_every_family_and_only_exported_ones() {
    let d = dashboard();
    let read: BTreeSet<String> = panels(&d).into_iter().flat_map(families_read).collect();
    let exported = exported();
    let unknown: Vec<&String> = read.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard reads unexported metrics: {unknown:?}"
    );
    let unread: Vec<&String> = exported
        .iter()
        .filter(|f| f.starts_with("bosh_nats_sync_") && !read.contains(*f))
        .collect();
    assert!(unread.is_empty(), "no panel shows {unread:?}");
}

/// The number an alert of alerts.yml compares with, on its `expr:` line
/// (`… >= 5` → 5).
fn alert_threshold(alert: &str) -> f64 {
    let rules = std::fs::read_to_string(crate_dir().join("alerts.yml")).expect("alerts.yml");
    let mut lines = rules
        .lines()
        .skip_while(|l| l.trim() != format!("- alert: {alert}"));
    let expr = lines
        .find_map(|l| l.trim().strip_prefix("expr: "))
        .unwrap_or_else(|| panic!("alerts.yml: no one-line expr for {alert}"));
    expr.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("alerts.yml: {alert}'s expr does not end in a number: {expr}"))
}

/// Where a panel shows a value an alert watches, it turns red where the alert fires.
#[test]
fn alerted_values_turn_red_at_the_alert_thresholds() {
    let d = dashboard();
    let red_at = |metric: &str| -> Vec<(String, f64)> {
        panels(&d)
            .into_iter()
            .filter(|p| !is_row(p) && families_read(p).contains(metric))
            .map(|p| {
                let steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
                    .as_array()
                    .unwrap();
                let red = steps
                    .iter()
                    .find(|s| s["color"] == "red")
                    .and_then(|s| s["value"].as_f64())
                    .unwrap_or_else(|| panic!("{}: no red threshold", title(p)));
                (title(p).to_owned(), red)
            })
            .collect()
    };
    for (metric, alert) in [
        (
            "bosh_nats_sync_consecutive_failures",
            "BoshNatsSyncConsecutiveFailures",
        ),
        (
            "bosh_nats_sync_last_success_timestamp_seconds",
            "BoshNatsSyncStale",
        ),
    ] {
        let want = alert_threshold(alert);
        let panels = red_at(metric);
        assert!(!panels.is_empty(), "no panel shows {metric}");
        for (title, red) in panels {
            assert_eq!(red, want, "{title}: red where {alert} fires");
        }
    }
}

/// docs/observability.md's dashboard table: one line per panel, `| row | panel | metrics |
/// unit |`, naming exactly the families the panel reads and its unit.
#[test]
fn the_observability_docs_list_every_panel_with_its_metrics() {
    let d = dashboard();
    let doc_path = crate_dir().join("../docs/observability.md");
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", doc_path.display()));
    let header = "| row | panel | metrics | unit |";
    let table: Vec<&str> = doc
        .lines()
        .skip_while(|l| !l.starts_with(header))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(
        !table.is_empty(),
        "{}: no table starting `{header}`",
        doc_path.display()
    );
    let backticked = |cell: &str| -> BTreeSet<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    type Rows = BTreeMap<(String, String), (BTreeSet<String>, BTreeSet<String>)>;
    let mut documented: Rows = BTreeMap::new();
    for line in table {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [row, panel, metrics, unit] = cells[..] else {
            panic!(
                "{}: a table line without 4 cells: {line}",
                doc_path.display()
            );
        };
        let key = (row.to_owned(), panel.to_owned());
        let value = (backticked(metrics), backticked(unit));
        assert!(
            documented.insert(key, value).is_none(),
            "{}: {line} twice",
            doc_path.display()
        );
    }
    let mut shown: Rows = BTreeMap::new();
    let mut row = String::new();
    for panel in panels(&d) {
        if is_row(panel) {
            row = title(panel).to_owned();
            continue;
        }
        let unit = panel["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        shown.insert(
            (row.clone(), title(panel).to_owned()),
            (families_read(panel), BTreeSet::from([unit])),
        );
    }
    assert_eq!(
        documented,
        shown,
        "{}'s dashboard table vs. the dashboard's panels (row, title), the metrics they read \
         and their units",
        doc_path.display()
    );
}
