//! `Config::parse` as an operator meets it: every accepted form, every message.

use super::*;

/// Exactly what the BOSH `nats` job template renders (Ruby's YAML.dump of its params).
pub(crate) const BOSH_TEMPLATE: &str = "---
director:
  url: https://10.0.0.6:25555
  user: nats
  password: nats-password
  client_id:
  client_secret:
  ca_cert: \"/var/vcap/jobs/nats/config/uaa.pem\"
  director_subject_file: \"/var/vcap/data/nats/director-subject\"
  hm_subject_file: \"/var/vcap/data/nats/hm-subject\"
intervals:
  poll_user_sync: 10
nats:
  config_file_path: \"/var/vcap/data/nats/auth.json\"
  nats_server_executable: \"/var/vcap/packages/nats/bin/nats-server\"
  nats_server_pid_file: \"/var/vcap/sys/run/bpm/nats/nats.pid\"
logfile: \"/var/vcap/sys/log/nats/bosh-nats-sync.log\"
";

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/sync.yml"), text, no_env)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn the_bosh_template_is_accepted_unchanged() {
    let c = parse(BOSH_TEMPLATE).unwrap();
    assert_eq!(c.director.url.as_str(), "https://10.0.0.6:25555/");
    assert_eq!(c.director.basic.as_ref().unwrap().0, "nats");
    assert_eq!(
        c.director.basic.as_ref().unwrap().1.expose(),
        "nats-password"
    );
    assert!(c.director.uaa_client.is_none());
    assert_eq!(
        c.director.director_ca.as_deref(),
        Some(Path::new("/var/vcap/jobs/nats/config/uaa.pem"))
    );
    assert_eq!(c.director.connection_wait_timeout, Duration::from_secs(60));
    assert_eq!(c.director.max_concurrency, 4);
    assert_eq!(c.poll_interval, Duration::from_secs(10));
    assert_eq!(c.nats.auth_file, Path::new("/var/vcap/data/nats/auth.json"));
    assert_eq!(
        c.nats.executable.as_deref(),
        Some(Path::new("/var/vcap/packages/nats/bin/nats-server"))
    );
    assert_eq!(
        c.nats.pid_file,
        Path::new("/var/vcap/sys/run/bpm/nats/nats.pid")
    );
    assert_eq!(
        c.logfile.as_deref(),
        Some(Path::new("/var/vcap/sys/log/nats/bosh-nats-sync.log"))
    );
    assert_eq!(c.http_listen, Some("127.0.0.1:9758".parse().unwrap()));
    assert!(!c.ready_after_full_pass);
    assert_eq!(
        (c.backoff_min, c.backoff_max, c.pass_timeout),
        (
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(300)
        )
    );
    assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
    assert_eq!(c.damping, DampingSettings::default());
    // The template knows nothing of the watch: it is on, with its defaults (§6.6).
    assert_eq!(c.watch_interval, Some(Duration::from_secs(1)));
    assert_eq!(c.resync_interval, Duration::from_secs(300));
}

fn with_intervals(extra: &str) -> String {
    BOSH_TEMPLATE.replace(
        "  poll_user_sync: 10\n",
        &format!("  poll_user_sync: 10\n{extra}"),
    )
}

#[test]
fn the_watch_intervals_are_read() {
    let c = parse(&with_intervals("  watch: 0.5\n  resync: 600\n")).unwrap();
    assert_eq!(c.watch_interval, Some(Duration::from_millis(500)));
    assert_eq!(c.resync_interval, Duration::from_secs(600));
    assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
    // Strings holding numbers are accepted, as for every other interval.
    let c = parse(&with_intervals("  watch: \"2\"\n")).unwrap();
    assert_eq!(c.watch_interval, Some(Duration::from_secs(2)));
    // null is absent: the default.
    let c = parse(&with_intervals("  watch:\n  resync:\n")).unwrap();
    assert_eq!(
        (c.watch_interval, c.resync_interval),
        (Some(Duration::from_secs(1)), Duration::from_secs(300))
    );
}

#[test]
fn watch_zero_turns_the_watch_off() {
    let c = parse(&with_intervals("  watch: 0\n")).unwrap();
    assert_eq!(c.watch_interval, None);
    assert_eq!(c.resync_interval, Duration::from_secs(300));
    // With the watch off, resync is not compared with it (it is unused, but still
    // validated on its own).
    let c = parse(&with_intervals("  watch: 0\n  resync: 0.5\n")).unwrap();
    assert_eq!(
        (c.watch_interval, c.resync_interval),
        (None, Duration::from_millis(500))
    );
}

#[test]
fn bad_watch_intervals_name_the_key_and_the_value() {
    let cases = [
        (
            "  watch: -1\n",
            "/etc/sync.yml: intervals.watch: must be zero or more seconds, got -1",
        ),
        (
            "  watch: 0.01\n",
            "/etc/sync.yml: intervals.watch: must be 0 (the watch off) or at least 0.1 seconds, got 0.01",
        ),
        (
            "  watch: off\n",
            "/etc/sync.yml: intervals.watch: must be a number",
        ),
        (
            "  watch: true\n",
            "/etc/sync.yml: intervals.watch: must be a number",
        ),
        (
            "  resync: 0\n",
            "/etc/sync.yml: intervals.resync: must be greater than zero seconds, got 0",
        ),
        (
            "  resync: -300\n",
            "/etc/sync.yml: intervals.resync: must be greater than zero seconds, got -300",
        ),
        (
            "  resync: often\n",
            "/etc/sync.yml: intervals.resync: must be a number",
        ),
        (
            "  resync: 1e12\n",
            "/etc/sync.yml: intervals.resync: 1000000000000 seconds is more than a year",
        ),
        (
            "  watch: 5\n  resync: 2\n",
            "/etc/sync.yml: intervals.resync: 2 seconds is shorter than intervals.watch (5 seconds)",
        ),
    ];
    for (extra, want) in cases {
        let got = err(&with_intervals(extra));
        assert!(got.starts_with(want), "want {want:?} in {got:?}");
    }
}

#[test]
fn damping_is_configurable() {
    let text = format!(
        "{BOSH_TEMPLATE}damping:\n  enabled: false\n  max_removal_fraction: 0.25\n  min_removals: 0\n  confirmations: 5\n"
    );
    let d = parse(&text).unwrap().damping;
    assert_eq!(
        (
            d.enabled,
            d.max_removal_fraction,
            d.min_removals,
            d.confirmations
        ),
        (false, 0.25, 0, 5)
    );
    assert!(
        err(&format!(
            "{BOSH_TEMPLATE}damping:\n  max_removal_fraction: 2\n"
        ))
        .contains("damping.max_removal_fraction: must be between 0 and 1")
    );
    assert!(
        err(&format!("{BOSH_TEMPLATE}damping:\n  confirmations: 0\n"))
            .contains("damping.confirmations")
    );
}

#[test]
fn director_ca_cert_wins_over_the_old_alias() {
    let text = BOSH_TEMPLATE.replace("  ca_cert:", "  director_ca_cert: /new.pem\n  ca_cert:");
    assert_eq!(
        parse(&text).unwrap().director.director_ca.as_deref(),
        Some(Path::new("/new.pem"))
    );
}

#[test]
fn new_keys_are_read() {
    let text = format!(
        "{BOSH_TEMPLATE}http:\n  listen: 0.0.0.0:9000\nlog:\n  format: json\n  level: debug\n\
         nats_extra: 1\n"
    )
    .replace("  poll_user_sync: 10", "  poll_user_sync: 2.5\n  backoff_min: 0.5\n  backoff_max: 30\n  pass_timeout: 120")
    .replace("  hm_subject_file", "  max_concurrency: 16\n  request_timeout: 5\n  hm_subject_file")
    .replace("  nats_server_pid_file", "  monitoring_url: http://127.0.0.1:8222\n  reload_verify_timeout: 3\n  nats_server_pid_file");
    let c = parse(&text).unwrap();
    assert_eq!(c.poll_interval, Duration::from_millis(2500));
    assert_eq!(c.backoff_min, Duration::from_millis(500));
    assert_eq!(c.director.max_concurrency, 16);
    assert_eq!(c.director.request_timeout, Duration::from_secs(5));
    assert_eq!(
        c.nats.monitoring_url.unwrap().as_str(),
        "http://127.0.0.1:8222/"
    );
    assert_eq!(c.http_listen, Some("0.0.0.0:9000".parse().unwrap()));
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.unknown_keys, ["nats_extra"]);
}

#[test]
fn http_can_be_disabled() {
    let c = parse(&format!("{BOSH_TEMPLATE}http:\n  enabled: false\n")).unwrap();
    assert_eq!(c.http_listen, None);
}

#[test]
fn readiness_may_wait_for_the_first_full_pass() {
    let c = parse(&format!(
        "{BOSH_TEMPLATE}http:\n  ready_after_full_pass: true\n"
    ))
    .unwrap();
    assert!(c.ready_after_full_pass);
    let e = parse(&format!(
        "{BOSH_TEMPLATE}http:\n  ready_after_full_pass: sometimes\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("http.ready_after_full_pass: must be"), "{e}");
}

#[test]
fn unknown_keys_are_reported_with_their_path() {
    let text = BOSH_TEMPLATE.replace(
        "  poll_user_sync: 10",
        "  poll_user_sync: 10\n  future_knob: 3",
    );
    assert_eq!(
        parse(&text).unwrap().unknown_keys,
        ["intervals.future_knob"]
    );
}

#[test]
fn secrets_come_from_the_environment() {
    let text = BOSH_TEMPLATE
        .replace("  password: nats-password\n", "")
        .replace(
            "  client_id:\n  client_secret:\n",
            "  client_id: sync-client\n",
        );
    let env = |k: &str| match k {
        ENV_PASSWORD => Some("from-env".to_string()),
        ENV_CLIENT_SECRET => Some("secret-from-env".to_string()),
        _ => None,
    };
    let c = Config::parse(Path::new("x.yml"), &text, env).unwrap();
    assert_eq!(c.director.basic.unwrap().1.expose(), "from-env");
    assert_eq!(c.director.uaa_client.unwrap().1.expose(), "secret-from-env");
}

#[test]
fn errors_name_the_file_and_the_key() {
    let cases = [
        (
            BOSH_TEMPLATE.replace("  url: https://10.0.0.6:25555\n", ""),
            "/etc/sync.yml: director.url: required key is missing",
        ),
        (
            BOSH_TEMPLATE.replace("poll_user_sync: 10", "poll_user_sync: 0"),
            "/etc/sync.yml: intervals.poll_user_sync: must be greater than zero seconds, got 0",
        ),
        (
            BOSH_TEMPLATE.replace("poll_user_sync: 10", "poll_user_sync: -3"),
            "intervals.poll_user_sync: must be greater than zero",
        ),
        (
            BOSH_TEMPLATE.replace("poll_user_sync: 10", "poll_user_sync: soon"),
            "intervals.poll_user_sync: must be a number",
        ),
        (
            BOSH_TEMPLATE.replace("  poll_user_sync: 10\n", ""),
            "intervals.poll_user_sync: required key is missing",
        ),
        (
            BOSH_TEMPLATE.replace(
                "  config_file_path: \"/var/vcap/data/nats/auth.json\"\n",
                "",
            ),
            "nats.config_file_path: required key is missing",
        ),
        (
            BOSH_TEMPLATE.replace(
                "  nats_server_pid_file: \"/var/vcap/sys/run/bpm/nats/nats.pid\"\n",
                "",
            ),
            "nats.nats_server_pid_file: required key is missing",
        ),
        (
            BOSH_TEMPLATE.replace("https://10.0.0.6:25555", "10.0.0.6:25555"),
            "director.url: \"10.0.0.6:25555\" is not an http(s) URL",
        ),
        (
            BOSH_TEMPLATE.replace("  user: nats\n", ""),
            "director: no credentials",
        ),
        (
            format!("{BOSH_TEMPLATE}http:\n  listen: everywhere\n"),
            "http.listen: \"everywhere\" is not an address",
        ),
        (
            format!("{BOSH_TEMPLATE}log:\n  format: xml\n"),
            "log.format: \"xml\" is neither",
        ),
        (
            BOSH_TEMPLATE.replace("intervals:\n  poll_user_sync: 10", "intervals: 10"),
            "intervals: must be a mapping",
        ),
        (
            "director: [unclosed".to_string(),
            "/etc/sync.yml: invalid YAML",
        ),
        ("- a list".to_string(), "must hold a YAML mapping"),
    ];
    for (text, want) in cases {
        let got = err(&text);
        assert!(got.contains(want), "want {want:?} in {got:?}");
    }
}

#[test]
fn an_unreadable_file_names_the_file() {
    let e = Config::load(Path::new("/nonexistent/sync.yml"), no_env)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/nonexistent/sync.yml: cannot read"), "{e}");
}

#[test]
fn secrets_never_reach_debug_output() {
    let c = parse(BOSH_TEMPLATE).unwrap();
    assert!(!format!("{c:?}").contains("nats-password"));
}

// What follows pins behaviour the tests above left open: every form the file may take, and
// every message, is part of the contract with operators.

/// The BOSH template with `line` (`key: value`) in `section`, replacing the template's line
/// for that key if it has one (the template's keys are unique across its sections).
fn set(section: &str, line: &str) -> String {
    let key = line.split(':').next().unwrap_or_default();
    let mut lines: Vec<&str> = BOSH_TEMPLATE
        .lines()
        .filter(|l| !l.starts_with(&format!("  {key}:")))
        .collect();
    let line = format!("  {line}");
    let header = format!("{section}:");
    match lines.iter().position(|l| *l == header) {
        Some(at) => lines.insert(at + 1, &line),
        None => lines.extend([header.as_str(), &line]),
    }
    lines.join("\n") + "\n"
}

#[test]
fn text_keys_take_numbers_and_booleans_as_their_text() {
    let c = parse(&set("director", "password: 12345")).unwrap();
    assert_eq!(c.director.basic.unwrap().1.expose(), "12345");
    let c = parse(&set("director", "user: true")).unwrap();
    assert_eq!(c.director.basic.unwrap().0, "true");
}

#[test]
fn numbers_may_be_written_as_strings_or_fractions() {
    let c = parse(&set("intervals", "poll_user_sync: \" 7 \"")).unwrap();
    assert_eq!(c.poll_interval, Duration::from_secs(7));
    let c = parse(&set("intervals", "poll_user_sync: \"2.5\"")).unwrap();
    assert_eq!(c.poll_interval, Duration::from_millis(2500));
    let c = parse(&set("director", "max_concurrency: \"8\"")).unwrap();
    assert_eq!(c.director.max_concurrency, 8);
    let c = parse(&set("director", "max_response_mib: 2.0")).unwrap();
    assert_eq!(c.director.max_body_bytes, 2 * 1024 * 1024);
    let c = parse(&set("damping", "max_removal_fraction: \"0.1\"")).unwrap();
    assert_eq!(c.damping.max_removal_fraction, 0.1);
    // Zero is a valid connection wait: the first failure of /info ends the pass.
    let c = parse(&set("director", "connection_wait_timeout: 0")).unwrap();
    assert_eq!(c.director.connection_wait_timeout, Duration::ZERO);
}

#[test]
fn bad_numbers_name_the_key_and_the_value() {
    for (section, line, want) in [
        (
            "intervals",
            "poll_user_sync: .inf",
            "intervals.poll_user_sync: must be a number",
        ),
        (
            "intervals",
            "poll_user_sync: \"inf\"",
            "intervals.poll_user_sync: must be a number",
        ),
        (
            "intervals",
            "poll_user_sync: .nan",
            "intervals.poll_user_sync: must be a number",
        ),
        (
            "intervals",
            "poll_user_sync: [10]",
            "intervals.poll_user_sync: must be a number",
        ),
        (
            "intervals",
            "pass_timeout: 0",
            "intervals.pass_timeout: must be greater than zero seconds, got 0",
        ),
        (
            "intervals",
            "backoff_min: -0.5",
            "intervals.backoff_min: must be greater than zero seconds, got -0.5",
        ),
        (
            "intervals",
            "backoff_max: 0.5",
            "intervals.backoff_max: must not be smaller than intervals.backoff_min",
        ),
        (
            "nats",
            "reload_verify_timeout: 0",
            "nats.reload_verify_timeout: must be greater than zero seconds, got 0",
        ),
        (
            "director",
            "connection_wait_timeout: -1",
            "director.connection_wait_timeout: must be zero or more seconds, got -1",
        ),
        (
            "director",
            "request_timeout: 31536001",
            "director.request_timeout: 31536001 seconds is more than a year",
        ),
        (
            "director",
            "max_concurrency: 0",
            "director.max_concurrency: must be a whole number of at least 1, got 0",
        ),
        (
            "director",
            "max_concurrency: 1.5",
            "director.max_concurrency: must be a whole number of at least 1, got 1.5",
        ),
        (
            "director",
            "max_response_mib: 2000000",
            "director.max_response_mib: must be a whole number of at least 1, got 2000000",
        ),
        (
            "damping",
            "min_removals: -1",
            "damping.min_removals: must be a whole number, got -1",
        ),
        (
            "damping",
            "min_removals: 2.5",
            "damping.min_removals: must be a whole number, got 2.5",
        ),
        (
            "damping",
            "confirmations: \"two\"",
            "damping.confirmations: must be a number",
        ),
        (
            "damping",
            "max_removal_fraction: -0.1",
            "damping.max_removal_fraction: must be between 0 and 1, got -0.1",
        ),
    ] {
        let got = err(&set(section, line));
        assert_eq!(got, format!("/etc/sync.yml: {want}"), "{line}");
    }
}

#[test]
fn booleans_are_true_or_false_not_strings() {
    for (section, line, want) in [
        (
            "http",
            "enabled: \"false\"",
            "http.enabled: must be true or false",
        ),
        (
            "damping",
            "enabled: 0",
            "damping.enabled: must be true or false",
        ),
        (
            "director",
            "url: [https://d]",
            "director.url: must be a string",
        ),
    ] {
        assert_eq!(err(&set(section, line)), format!("/etc/sync.yml: {want}"));
    }
}

#[test]
fn secrets_never_reach_error_messages() {
    for key in ["password", "client_secret"] {
        for value in [
            "[hunter2]",
            "{hunter2: hunter2}",
            "!secret hunter2",
            "[{a: [hunter2]}]",
        ] {
            let got = err(&set("director", &format!("{key}: {value}")));
            assert_eq!(
                got,
                format!("/etc/sync.yml: director.{key}: must be a string")
            );
        }
        // A syntax error on the secret's line names the line, not the secret.
        let got = err(&set("director", &format!("{key}: \"hunter2")));
        assert!(
            got.contains("invalid YAML") && got.contains("line "),
            "{got}"
        );
        assert!(!got.contains("hunter2"), "{got}");
        let got = err(&set(
            "director",
            &format!("{key}: hunter2\n  {key}: hunter3"),
        ));
        assert!(got.contains("invalid YAML"), "{got}");
        assert!(!got.contains("hunter"), "{got}");
    }
    // The environment's secret is checked for type on the file's side all the same.
    let text = set("director", "password: [hunter2]");
    let env = |k: &str| (k == ENV_PASSWORD).then(|| "from-env".to_owned());
    let got = Config::parse(Path::new("/etc/sync.yml"), &text, env)
        .unwrap_err()
        .to_string();
    assert_eq!(got, "/etc/sync.yml: director.password: must be a string");
}

#[test]
fn an_empty_environment_secret_hides_the_files() {
    // The variable counts as set even when empty: the file's password is not used, so a
    // Kubernetes Secret with an empty key fails loudly instead of falling back.
    let env = |k: &str| (k == ENV_PASSWORD).then(String::new);
    let got = Config::parse(Path::new("/etc/sync.yml"), BOSH_TEMPLATE, env)
        .unwrap_err()
        .to_string();
    assert!(
        got.starts_with("/etc/sync.yml: director: no credentials"),
        "{got}"
    );
}

#[test]
fn the_old_ca_cert_spelling() {
    let ca = |text: &str| parse(text).unwrap().director.director_ca;
    // Alone, or beside a null director_ca_cert, it is the director's CA.
    let null_new = BOSH_TEMPLATE.replace("  ca_cert:", "  director_ca_cert:\n  ca_cert:");
    assert_eq!(
        ca(&null_new).as_deref(),
        Some(Path::new("/var/vcap/jobs/nats/config/uaa.pem"))
    );
    // Beside a director_ca_cert it is ignored, whatever it holds, and warned about.
    let both = BOSH_TEMPLATE.replace(
        "  ca_cert: \"/var/vcap/jobs/nats/config/uaa.pem\"",
        "  ca_cert: [x]\n  director_ca_cert: \"\"",
    );
    let c = parse(&both).unwrap();
    assert_eq!(
        c.director.director_ca, None,
        "an empty director_ca_cert is none"
    );
    assert_eq!(c.unknown_keys, ["director.ca_cert"]);
    // A CA that cannot be read is named by the new spelling's key.
    let dir = tempfile::tempdir().unwrap();
    let text = BOSH_TEMPLATE.replace(
        "\"/var/vcap/jobs/nats/config/uaa.pem\"",
        dir.path().to_str().unwrap(),
    );
    let got = err(&text);
    assert!(
        got.starts_with(&format!(
            "/etc/sync.yml: director.director_ca_cert: cannot read {}: ",
            dir.path().display()
        )),
        "{got}"
    );
}

#[test]
fn ca_files_absent_are_a_fall_back_unreadable_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse(&set("director", "uaa_ca_cert: /nonexistent/uaa.pem")).unwrap();
    assert_eq!(
        c.director.uaa_ca.as_deref(),
        Some(Path::new("/nonexistent/uaa.pem"))
    );
    let got = err(&set(
        "director",
        &format!("uaa_ca_cert: {}", dir.path().display()),
    ));
    assert!(
        got.starts_with("/etc/sync.yml: director.uaa_ca_cert: cannot read"),
        "{got}"
    );
    // Blank is none.
    let c = parse(&set("director", "uaa_ca_cert: \"  \"")).unwrap();
    assert_eq!(c.director.uaa_ca, None);
}

#[test]
fn relative_paths_are_relative_to_the_file_and_empty_ones_absent() {
    let text = BOSH_TEMPLATE
        .replace("\"/var/vcap/data/nats/auth.json\"", "auth.json")
        .replace("\"/var/vcap/data/nats/hm-subject\"", "sub/hm")
        .replace("\"/var/vcap/data/nats/director-subject\"", "\"\"")
        .replace("\"/var/vcap/sys/log/nats/bosh-nats-sync.log\"", "../log")
        .replace("\"/var/vcap/jobs/nats/config/uaa.pem\"", "ca.pem");
    let c = Config::parse(Path::new("/etc/bosh/sync.yml"), &text, no_env).unwrap();
    assert_eq!(c.nats.auth_file, Path::new("/etc/bosh/auth.json"));
    assert_eq!(
        c.hm_subject_file.as_deref(),
        Some(Path::new("/etc/bosh/sub/hm"))
    );
    assert_eq!(c.director_subject_file, None);
    assert_eq!(c.logfile.as_deref(), Some(Path::new("/etc/bosh/../log")));
    assert_eq!(
        c.director.director_ca.as_deref(),
        Some(Path::new("/etc/bosh/ca.pem"))
    );
    // An empty required path is a missing one.
    let text = BOSH_TEMPLATE.replace("\"/var/vcap/data/nats/auth.json\"", "\"\"");
    assert!(err(&text).ends_with("nats.config_file_path: required key is missing"));
}

#[test]
fn the_uaa_public_key_is_kept_as_written_and_blank_is_none() {
    let c = parse(&set("director", "uaa_public_key: \"  \"")).unwrap();
    assert_eq!(c.director.uaa_public_key, None);
    let pem = "  uaa_public_key: |\n    -----BEGIN PUBLIC KEY-----\n    abc\n    -----END PUBLIC KEY-----\n";
    let c = parse(&BOSH_TEMPLATE.replace("  hm_subject_file", &format!("{pem}  hm_subject_file")))
        .unwrap();
    assert_eq!(
        c.director.uaa_public_key.as_deref(),
        Some("-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n")
    );
}

#[test]
fn sections_that_are_null_or_not_mappings() {
    assert_eq!(
        err(""),
        "/etc/sync.yml: director.url: required key is missing"
    );
    let got = err(&BOSH_TEMPLATE.replace("intervals:\n  poll_user_sync: 10", "intervals:"));
    assert_eq!(
        got,
        "/etc/sync.yml: intervals.poll_user_sync: required key is missing"
    );
    for (section, value) in [("damping", "[1]"), ("log", "text"), ("http", "!tag {}")] {
        let got = err(&format!("{BOSH_TEMPLATE}{section}: {value}\n"));
        assert_eq!(got, format!("/etc/sync.yml: {section}: must be a mapping"));
    }
    let c = parse(&format!("{BOSH_TEMPLATE}log: {{}}\nhttp: ~\ndamping:\n")).unwrap();
    assert_eq!(
        (c.log_format, c.http_listen.is_some()),
        (LogFormat::Text, true)
    );
}

#[test]
fn with_several_problems_the_first_in_check_order_is_reported() {
    // The checks run director, intervals, nats, logfile, log, http, damping, whatever the
    // order of the file.
    let text = format!(
        "damping:\n  confirmations: 0\nintervals:\n  poll_user_sync: 0\n{}",
        BOSH_TEMPLATE
            .trim_start_matches("---\n")
            .replace("intervals:\n  poll_user_sync: 10\n", "")
            .replace("  url: https://10.0.0.6:25555", "  url: nowhere")
    );
    assert_eq!(
        err(&text),
        "/etc/sync.yml: director.url: \"nowhere\" is not an http(s) URL with a host"
    );
    let text = text.replace("  url: nowhere", "  url: https://d");
    assert!(
        err(&text).ends_with("intervals.poll_user_sync: must be greater than zero seconds, got 0")
    );
}

#[test]
fn unknown_keys_are_listed_in_the_files_order() {
    let text = format!(
        "zz_top: 1\n{}future: {{a: 1}}\n1: one\nlog:\n  color: ~\n  level: debug\n",
        BOSH_TEMPLATE
            .trim_start_matches("---\n")
            .replace("  user: nats\n", "  user: nats\n  shiny: !tag x\n")
            .replace(
                "  poll_user_sync: 10\n",
                "  poll_user_sync: 10\n  jitter: [1]\n"
            )
    );
    assert_eq!(
        parse(&text).unwrap().unknown_keys,
        [
            "zz_top",
            "director.shiny",
            "intervals.jitter",
            "future",
            "Number(1)",
            "log.color"
        ]
    );
}

#[test]
fn a_known_key_with_a_custom_tag_has_the_wrong_type() {
    let got = err(&set("intervals", "poll_user_sync: !seconds 10"));
    assert_eq!(
        got,
        "/etc/sync.yml: intervals.poll_user_sync: must be a number"
    );
}

#[test]
fn log_level_format_listen_and_monitoring_url_are_checked() {
    let c = parse(&set("log", "level: info,bosh_nats_sync::director=debug")).unwrap();
    assert_eq!(c.log_level, "info,bosh_nats_sync::director=debug");
    for (section, line, want) in [
        (
            "log",
            "level: x=loudest",
            "log.level: \"x=loudest\" is not a log level or filter (e.g. info, debug)",
        ),
        (
            "log",
            "format: \"\"",
            "log.format: \"\" is neither \"text\" nor \"json\"",
        ),
        (
            "log",
            "format: JSON",
            "log.format: \"JSON\" is neither \"text\" nor \"json\"",
        ),
        (
            "nats",
            "monitoring_url: localhost:8222",
            "nats.monitoring_url: \"localhost:8222\" is not an http(s) URL with a host",
        ),
        (
            "nats",
            "monitoring_url: ftp://nats:8222",
            "nats.monitoring_url: \"ftp://nats:8222\" is not an http(s) URL with a host",
        ),
        (
            "director",
            "url: \"\"",
            "director.url: \"\" is not an http(s) URL with a host",
        ),
    ] {
        assert_eq!(
            err(&set(section, line)),
            format!("/etc/sync.yml: {want}"),
            "{line}"
        );
    }
    let c = parse(&set("nats", "monitoring_url: \"\"")).unwrap();
    assert_eq!(c.nats.monitoring_url, None, "empty is none");
    // The address is checked even with the server off.
    let text = format!("{BOSH_TEMPLATE}http:\n  enabled: false\n  listen: nowhere\n");
    assert_eq!(
        err(&text),
        "/etc/sync.yml: http.listen: \"nowhere\" is not an address like 127.0.0.1:9758"
    );
}

#[test]
fn yaml_syntax_errors_name_the_line() {
    let got = err("director:\n  url: https://d\n  user: [unclosed\n");
    assert!(got.starts_with("/etc/sync.yml: invalid YAML: "), "{got}");
    assert!(got.contains("line 3") || got.contains("line 4"), "{got}");
}

/// The BOSH template in callout mode, with the files of `nats.callout` in `dir`.
fn callout_config(dir: &Path, extra: &str) -> String {
    for name in ["service.pem", "service.key", "ca.pem", "issuer.nk"] {
        std::fs::write(dir.join(name), "x").unwrap();
    }
    format!(
        "{BOSH_TEMPLATE}  admission: callout\n  callout:\n    cert_file: service.pem\n    key_file: service.key\n    ca_file: ca.pem\n    issuer_seed_file: issuer.nk\n{extra}"
    )
    .replace("logfile: \"/var/vcap/sys/log/nats/bosh-nats-sync.log\"\n", "")
}

fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    Config::parse(&dir.join("sync.yml"), text, no_env)
}

#[test]
fn file_mode_is_the_default_and_reads_no_callout_key() {
    assert_eq!(parse(BOSH_TEMPLATE).unwrap().admission, Admission::File);
    let text = format!("{BOSH_TEMPLATE}  admission: file\n  callout:\n    cert_file: /nowhere\n");
    let text = text.replace(
        "logfile: \"/var/vcap/sys/log/nats/bosh-nats-sync.log\"\n",
        "",
    );
    assert_eq!(parse(&text).unwrap().admission, Admission::File);
}

#[test]
fn callout_mode_takes_its_files_relative_to_the_config_and_has_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(dir.path(), &callout_config(dir.path(), "")).unwrap();
    let Admission::Callout(callout) = c.admission else {
        panic!("callout mode")
    };
    assert_eq!(callout.url, "tls://127.0.0.1:4222");
    assert_eq!(callout.cert_file, dir.path().join("service.pem"));
    assert_eq!(callout.issuer_seed_file, dir.path().join("issuer.nk"));
    assert_eq!(callout.xkey_seed_file, None);
    assert_eq!(callout.user_ttl, Duration::from_secs(3600));
    assert_eq!(callout.timeout, Duration::from_secs(1));
    assert_eq!(
        callout.state_file,
        Path::new("/var/vcap/data/nats/auth.json.agents.json")
    );
    let text = callout_config(
        dir.path(),
        "    url: nats://10.0.0.5:4222\n    user_ttl: 0\n    timeout: 2.5\n    state_file: state.json\n    xkey_seed_file: issuer.nk\n",
    );
    let Admission::Callout(callout) = parse_in(dir.path(), &text).unwrap().admission else {
        panic!("callout mode")
    };
    assert_eq!(callout.url, "nats://10.0.0.5:4222");
    assert_eq!(
        callout.user_ttl,
        Duration::ZERO,
        "0: connections never expire"
    );
    assert_eq!(callout.timeout, Duration::from_millis(2500));
    assert_eq!(callout.state_file, dir.path().join("state.json"));
    assert_eq!(callout.xkey_seed_file, Some(dir.path().join("issuer.nk")));
}

#[test]
fn callout_mode_names_the_key_of_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let with = |extra: &str| {
        parse_in(dir.path(), &callout_config(dir.path(), extra))
            .unwrap_err()
            .to_string()
    };
    let text = callout_config(dir.path(), "").replace("    ca_file: ca.pem\n", "");
    let e = parse_in(dir.path(), &text).unwrap_err().to_string();
    assert!(
        e.ends_with("nats.callout.ca_file: required key is missing"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("issuer.nk")).unwrap();
    let text = callout_config(dir.path(), "");
    std::fs::remove_file(dir.path().join("issuer.nk")).unwrap();
    let e = parse_in(dir.path(), &text).unwrap_err().to_string();
    assert!(
        e.contains("nats.callout.issuer_seed_file: cannot read") && e.contains("issuer.nk"),
        "{e}"
    );
    let e = with("    url: https://x\n");
    assert!(
        e.contains("nats.callout.url: \"https://x\" is not a nats:// or tls:// URL"),
        "{e}"
    );
    let e = with("    user_ttl: -1\n");
    assert!(
        e.contains("nats.callout.user_ttl: must be zero or more seconds"),
        "{e}"
    );
    let e = with("    timeout: 0\n");
    assert!(
        e.contains("nats.callout.timeout: must be greater than zero"),
        "{e}"
    );
    let e = with("    xkey_seed_file: missing.xk\n");
    assert!(
        e.contains("nats.callout.xkey_seed_file: cannot read"),
        "{e}"
    );
    let text = BOSH_TEMPLATE.replace(
        "  nats_server_pid_file:",
        "  admission: callouts\n  nats_server_pid_file:",
    );
    let e = err(&text);
    assert!(
        e.ends_with("nats.admission: \"callouts\" is neither \"file\" nor \"callout\""),
        "{e}"
    );
}

#[test]
fn unknown_keys_of_nats_callout_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let text = callout_config(dir.path(), "    colour: blue\n");
    let c = parse_in(dir.path(), &text).unwrap();
    assert_eq!(c.unknown_keys, ["nats.callout.colour"]);
}

#[test]
fn init_may_go_without_the_director_s_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.yml");
    let text = BOSH_TEMPLATE
        .replace("  user: nats\n", "")
        .replace("  password: nats-password\n", "");
    assert!(!text.contains("password: nats"), "{text}");
    std::fs::write(&path, &text).unwrap();
    let e = Config::load(&path, |_| None).unwrap_err().to_string();
    assert!(e.contains("director: no credentials"), "{e}");
    let c = Config::load_for_init(&path, |_| None).unwrap();
    assert!(c.director.basic.is_none() && c.director.uaa_client.is_none());
    // Everything else is checked as for `run`.
    std::fs::write(
        &path,
        text.replace("poll_user_sync: 10", "poll_user_sync: -1"),
    )
    .unwrap();
    let e = Config::load_for_init(&path, |_| None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("intervals.poll_user_sync"), "{e}");
}
