//! Checks the exposition text and the example alert rules with Prometheus' own `promtool`
//! (Debian/Ubuntu package `prometheus`). These tests fail, never skip, without it.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// `$PROMTOOL`, or `promtool` from `PATH`.
fn promtool() -> PathBuf {
    std::env::var_os("PROMTOOL").map_or_else(|| PathBuf::from("promtool"), PathBuf::from)
}

fn run_promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let tool = promtool();
    let mut child = Command::new(&tool)
        .args(args)
        .current_dir(crate_dir())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}. Install promtool (Debian/Ubuntu: `apt-get install \
                 prometheus`) or point the PROMTOOL environment variable at it.",
                tool.display()
            )
        });
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes())
            .expect("write to promtool");
    }
    child.wait_with_output().expect("wait for promtool")
}

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The exposition text after recording every metric at least once.
fn rendered_with_everything() -> String {
    let metrics = common::metrics();
    let health = common::health(metrics.clone(), Duration::from_secs(600));
    common::record_everything(&metrics, &health);
    metrics.render()
}

/// Names of the metric families in exposition `text` (from `# TYPE` lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn promtool_finds_no_problem_in_the_metrics() {
    let text = rendered_with_everything();
    let out = run_promtool(&["check", "metrics"], Some(&text));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics reported problems: {}\n--- metrics:\n{text}",
        describe(&out)
    );
}

/// Guards the test above against a promtool that accepts anything.
#[test]
fn promtool_check_metrics_does_flag_a_bad_name() {
    let bad = "# HELP bosh_nats_sync_writes x\n# TYPE bosh_nats_sync_writes counter\n\
               bosh_nats_sync_writes 1\n";
    let out = run_promtool(&["check", "metrics"], Some(bad));
    assert!(!out.status.success(), "{}", describe(&out));
}

#[test]
fn every_metric_is_recorded_by_the_fixture() {
    let text = rendered_with_everything();
    for line in text.lines().filter(|l| l.starts_with("bosh_nats_sync_")) {
        let value = line.rsplit(' ').next().expect("a sample has a value");
        // The fixture leaves nothing at zero except buckets below an observation, the
        // desired-user kinds it sets to zero on purpose, and the watch states it is not in.
        if line.contains("_bucket{")
            || line.starts_with("bosh_nats_sync_desired_users{")
            || line.starts_with("bosh_nats_sync_watch_state{")
        {
            continue;
        }
        assert_ne!(value, "0", "the fixture does not record {line}");
    }
}

/// METRICS.md documents exactly the metric families the program exports.
#[test]
fn metrics_md_documents_every_family() {
    let text = rendered_with_everything();
    let exported: BTreeSet<String> = families(&text);
    let doc = std::fs::read_to_string(crate_dir().join("METRICS.md")).expect("read METRICS.md");
    // Table rows start with "| `name` |".
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| name.starts_with("bosh_nats_sync_") || name.starts_with("process_"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        documented, exported,
        "METRICS.md tables vs. exported families"
    );
}

#[test]
fn alert_rules_are_valid() {
    let out = run_promtool(&["check", "rules", "alerts.yml"], None);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 8 rules found"),
        "{}",
        describe(&out)
    );
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let out = run_promtool(&["test", "rules", "alerts_test.yml"], None);
    assert!(out.status.success(), "{}", describe(&out));
}

/// Every metric an alert rule uses is one the program exports.
#[test]
fn alert_rules_use_exported_metrics() {
    let exported = families(&rendered_with_everything());
    let rules = std::fs::read_to_string(crate_dir().join("alerts.yml")).expect("read alerts.yml");
    let mut used = BTreeSet::new();
    for (i, _) in rules.match_indices("bosh_nats_sync_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        used.insert(name);
    }
    // Annotations may name metrics too; all must exist.
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "alerts.yml uses unexported metrics {unknown:?}"
    );
    assert!(
        used.len() >= 5,
        "expected the rules to use several metrics: {used:?}"
    );
}

/// METRICS.md's alert table lists exactly the alerts of alerts.yml.
#[test]
fn metrics_md_documents_every_alert() {
    let rules = std::fs::read_to_string(crate_dir().join("alerts.yml")).expect("read alerts.yml");
    let defined: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    let doc = std::fs::read_to_string(crate_dir().join("METRICS.md")).expect("read METRICS.md");
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| name.starts_with("BoshNatsSync"))
        .map(str::to_owned)
        .collect();
    let defined: BTreeSet<String> = defined.into_iter().map(str::to_owned).collect();
    assert_eq!(documented, defined, "METRICS.md alert table vs. alerts.yml");
    assert_eq!(defined.len(), 8);
}
