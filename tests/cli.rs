//! The command line as an operator meets it: exit statuses, one-line errors naming the file
//! and the key, `check-config`, and `diff`.

mod common;

use std::process::Command;

use common::{Auth, Env, binary};
use sim::director::Vm;
use sim::pki::agent_cn;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(binary()).args(args).output().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn usage_errors_are_one_line_with_status_2() {
    for args in [&["--bogus"][..], &["frobnicate"], &["once"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("bosh-nats-sync: "), "{err}");
    }
}

#[test]
fn help_and_version() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.starts_with(&format!("bosh-nats-sync {}", env!("CARGO_PKG_VERSION")))
            && v.contains("(rev "),
        "{v}"
    );
    let out = run(&["--help"]);
    assert!(out.status.success());
    // `demo` is only in a build with the `demo` feature (`scripts/test` tests both builds).
    let words: &[&str] = if cfg!(feature = "demo") {
        &[
            "once",
            "diff",
            "check-config",
            "init",
            "callout-keys",
            "demo",
            "--config",
        ]
    } else {
        &[
            "once",
            "diff",
            "check-config",
            "init",
            "callout-keys",
            "--config",
        ]
    };
    for word in words {
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(word),
            "--help mentions {word}"
        );
    }
}

/// `callout-keys` (§12) needs no configuration and prints `NAME=value` lines whose seeds are
/// the printed public keys' — new ones on every run.
#[test]
fn callout_keys_print_seeds_that_parse_back_to_their_public_keys() {
    let lines = |args: &[&str]| {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(out.stderr.is_empty(), "{}", stderr(&out));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|line| {
                let (name, value) = line.split_once('=').unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect::<Vec<_>>()
    };
    let names =
        |lines: &[(String, String)]| lines.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();

    let issuer_only = lines(&["callout-keys"]);
    assert_eq!(names(&issuer_only), ["ISSUER_SEED", "ISSUER"]);
    let with_xkey = lines(&["callout-keys", "--xkey"]);
    assert_eq!(
        names(&with_xkey),
        ["ISSUER_SEED", "ISSUER", "XKEY_SEED", "XKEY"]
    );

    for keys in [&issuer_only, &with_xkey] {
        let (seed, public) = (&keys[0].1, &keys[1].1);
        assert!(
            seed.starts_with("SA") && public.starts_with('A'),
            "{public}"
        );
        let pair = nkeys::KeyPair::from_seed(seed).unwrap();
        assert_eq!(pair.key_pair_type(), nkeys::KeyPairType::Account);
        assert_eq!(&pair.public_key(), public);
    }
    let (seed, public) = (&with_xkey[2].1, &with_xkey[3].1);
    assert!(
        seed.starts_with("SX") && public.starts_with('X'),
        "{public}"
    );
    assert_eq!(&nkeys::XKey::from_seed(seed).unwrap().public_key(), public);

    assert_ne!(issuer_only[0], with_xkey[0], "a new issuer on every run");
}

#[test]
fn invalid_configuration_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.yml");
    let cases = [
        (
            "director:\n  url: https://d\n  user: u\n  password: p\nintervals:\n  poll_user_sync: 0\nnats:\n  config_file_path: /a\n  nats_server_pid_file: /p\n",
            "intervals.poll_user_sync",
        ),
        (
            "director:\n  user: u\n  password: p\nintervals:\n  poll_user_sync: 5\nnats:\n  config_file_path: /a\n  nats_server_pid_file: /p\n",
            "director.url",
        ),
        ("director: [\n", "invalid YAML"),
    ];
    for (text, key) in cases {
        std::fs::write(&path, text).unwrap();
        for mode in [
            &["-c", path.to_str().unwrap()][..],
            &["-c", path.to_str().unwrap(), "check-config"],
            &["-c", path.to_str().unwrap(), "once"],
        ] {
            let out = run(mode);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{mode:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert!(
                err.contains(path.to_str().unwrap()) && err.contains(key),
                "{key} in {err}"
            );
        }
    }
}

#[test]
fn check_config_reports_a_ca_file_without_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "this is not a certificate\n").unwrap();
    let path = dir.path().join("sync.yml");
    std::fs::write(
        &path,
        format!(
            "director:\n  url: https://10.0.0.6:25555\n  user: u\n  password: p\n  ca_cert: {}\nintervals:\n  poll_user_sync: 5\nnats:\n  config_file_path: /a\n  nats_server_pid_file: /p\n",
            ca.display()
        ),
    )
    .unwrap();
    let out = run(&["-c", path.to_str().unwrap(), "check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(ca.to_str().unwrap()),
        "{}",
        stderr(&out)
    );

    std::fs::write(&ca, sim::pki::Pki::generate().unwrap().ca.cert_pem()).unwrap();
    let out = run(&["-c", path.to_str().unwrap(), "check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));
}

/// `check-config` shows the watch's settings (§6.6): the defaults, and "off" for 0.
#[test]
fn check_config_prints_the_watch_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.yml");
    let base = "director:\n  url: https://10.0.0.6:25555\n  user: u\n  password: p\nintervals:\n  poll_user_sync: 5\n";
    let nats = "nats:\n  config_file_path: /a\n  nats_server_pid_file: /p\n";
    for (intervals, want) in [
        ("", "watch every 1s, resync every 300s)"),
        (
            "  watch: 0.5\n  resync: 60\n",
            "watch every 0.5s, resync every 60s)",
        ),
        (
            "  watch: 0\n",
            "watch off (full passes every 5s), resync every 300s unused)",
        ),
    ] {
        std::fs::write(&path, format!("{base}{intervals}{nats}")).unwrap();
        let out = run(&["-c", path.to_str().unwrap(), "check-config"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{intervals:?}: {}", stderr(&out));
        assert!(
            stdout.contains(want),
            "{intervals:?}: want {want:?} in {stdout}"
        );
    }
}

#[test]
fn secrets_may_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.yml");
    std::fs::write(
        &path,
        "director:\n  url: https://10.0.0.6:25555\n  user: u\nintervals:\n  poll_user_sync: 5\nnats:\n  config_file_path: /a\n  nats_server_pid_file: /p\n",
    )
    .unwrap();
    let out = run(&["-c", path.to_str().unwrap(), "check-config"]);
    assert_eq!(out.status.code(), Some(2), "no password anywhere");
    let out = Command::new(binary())
        .args(["-c", path.to_str().unwrap(), "check-config"])
        .env(
            "BOSH_NATS_SYNC_DIRECTOR_PASSWORD",
            "from-a-kubernetes-secret",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("from-a-kubernetes-secret"));
}

/// Unknown keys are warned about, one line each naming the file and the key, and ignored: the
/// file is still valid (the BOSH template may grow keys before this program knows them).
#[test]
fn check_config_warns_about_unknown_keys_in_the_files_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.yml");
    std::fs::write(
        &path,
        "future: 1\ndirector:\n  url: https://10.0.0.6:25555\n  user: u\n  password: p\n  shiny: true\nintervals:\n  poll_user_sync: 5\nnats:\n  config_file_path: /a\n  nats_server_pid_file: /p\n",
    )
    .unwrap();
    let out = run(&["-c", path.to_str().unwrap(), "check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    let file = path.display();
    assert_eq!(
        warnings,
        [
            format!("warning: {file}: unknown key future (ignored)"),
            format!("warning: {file}: unknown key director.shiny (ignored)"),
        ],
        "{stdout}"
    );
}

/// A secret of the wrong type is refused like any other value, and the message names the key,
/// never the value.
#[test]
fn a_malformed_secret_is_named_but_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.yml");
    for secret in ["password: [hunter2]", "client_secret: {hunter2: 1}"] {
        std::fs::write(
            &path,
            format!("director:\n  url: https://10.0.0.6:25555\n  user: u\n  client_id: c\n  {secret}\nintervals:\n  poll_user_sync: 5\nnats:\n  config_file_path: /a\n  nats_server_pid_file: /p\n"),
        )
        .unwrap();
        let out = run(&["-c", path.to_str().unwrap(), "check-config"]);
        assert_eq!(out.status.code(), Some(2));
        let key = secret.split(':').next().unwrap();
        assert_eq!(
            stderr(&out),
            format!(
                "bosh-nats-sync: invalid configuration: {}: director.{key}: must be a string\n",
                path.display()
            )
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_prints_the_changes_and_writes_nothing() {
    let env = Env::start(
        Auth::Basic,
        vec![Vm::agent("a1"), Vm::agent("a2").permanent(true)],
    )
    .await;
    let before = common::identity(&env.auth_file);
    // Another process's write in progress: diff and check-config must leave it alone.
    let in_progress = env.auth_file.with_file_name(".auth-inprogress.tmp");
    std::fs::write(&in_progress, "partial").unwrap();
    assert!(env.run(&["check-config"]).await.status.success());
    let out = env.run(&["diff"]).await;
    assert!(
        in_progress.exists(),
        "diff and check-config change nothing on disk"
    );
    std::fs::remove_file(&in_progress).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}{}", stderr(&out));
    assert!(
        stdout.contains(&format!("+ {}", sim::pki::bosh_subject(&agent_cn("a1")))),
        "{stdout}"
    );
    assert!(stdout.contains("not a users config"), "{stdout}");
    assert_eq!(
        common::identity(&env.auth_file),
        before,
        "diff writes nothing"
    );

    env.once(true).await;
    let out = env.run(&["diff"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("in sync"));

    // Only a user's permissions differ (a hand edit): diff lists it as changed, and the
    // pass that corrects it reports the same change.
    let text = env.auth_text();
    std::fs::write(
        &env.auth_file,
        text.replacen("\"director.>\"", "\"director.>\", \"_INBOX.>\"", 1),
    )
    .unwrap();
    let out = env.run(&["diff"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let director = sim::pki::bosh_subject(common::DIRECTOR_CN);
    assert!(
        stdout.contains(&format!("~ {director} (permissions differ)")),
        "{stdout}"
    );
    assert!(
        stdout.contains("a pass would write the file: 0 added, 0 removed, 1 changed"),
        "{stdout}"
    );
    let once = env.once(true).await;
    let log = format!("{}{}", String::from_utf8_lossy(&once.stdout), env.log());
    assert!(
        log.contains("added=0 removed=0 changed=1 written=true"),
        "{log}"
    );
    assert_eq!(
        env.auth_text(),
        text,
        "the pass wrote the director's users back"
    );

    env.director.remove_vm("cf", "a1");
    let out = env.run(&["diff"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout.contains(&format!("- {}", sim::pki::bosh_subject(&agent_cn("a1")))),
        "{stdout}"
    );

    env.director.set_down(true);
    let out = env.run(&["diff"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreachable director is an error"
    );
}

/// `diff` shows what the next pass would do, damping included: a mass removal is listed as
/// held (`!`, exit 4) while the next pass holds it, and an addition alongside it is listed as
/// what the pass writes (exit 3) — and `once` (a pass from a fresh process, as `diff` is)
/// then does exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_agrees_with_a_pass_about_held_removals() {
    let ids: Vec<String> = (0..12).map(|i| format!("agent-{i:02}")).collect();
    let vms = |ids: &[String]| ids.iter().map(|id| Vm::agent(id).permanent(true)).collect();
    let env = Env::start(Auth::Basic, vms(&ids)).await;
    env.once(true).await;

    // The director suddenly lists one VM of twelve.
    env.director.set_deployment("cf", vms(&ids[..1]));
    let out = env.run(&["diff"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}{}", stderr(&out));
    for id in &ids[1..] {
        let dn = sim::pki::bosh_subject(&agent_cn(id));
        assert!(
            stdout.contains(&format!("! {dn} (removal held by damping)")),
            "{stdout}"
        );
        assert!(!stdout.contains(&format!("- {dn}")), "{stdout}");
    }
    assert!(stdout.contains("a pass would write nothing"), "{stdout}");
    let before = std::fs::read(&env.auth_file).unwrap();
    env.once(true).await;
    assert_eq!(
        std::fs::read(&env.auth_file).unwrap(),
        before,
        "the pass held the removal, as diff said"
    );

    // A new VM as well: the pass writes it and keeps holding the removal.
    env.director
        .add_vm("cf", Vm::agent("fresh").permanent(true));
    let out = env.run(&["diff"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let fresh = sim::pki::bosh_subject(&agent_cn("fresh"));
    assert!(stdout.contains(&format!("+ {fresh}")), "{stdout}");
    assert!(
        stdout.contains("1 added, 0 removed, 0 changed, the held removals kept"),
        "{stdout}"
    );
    env.once(true).await;
    let text = env.auth_text();
    assert!(text.contains(&fresh), "{text}");
    assert!(
        ids.iter().all(|id| text.contains(&agent_cn(id))),
        "held agents stay: {text}"
    );
    assert_eq!(env.run(&["diff"]).await.status.code(), Some(4));
}

/// Without the `demo` feature (the default build, what operators run), `demo` is refused in
/// one line that says how to get it, and does nothing else.
#[cfg(not(feature = "demo"))]
#[test]
fn demo_without_the_feature_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["demo"][..], &["demo", "--duration", "1", "--dir"]] {
        let out = Command::new(binary())
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty());
        assert_eq!(
            stderr(&out).trim_end(),
            "bosh-nats-sync: this binary was built without the demo feature (cargo build --features demo)"
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

/// The README's first command: the real controller against the built-in simulated director
/// (and the real nats-server on PATH), in a directory of our choosing, for a few seconds.
#[cfg(feature = "demo")]
#[test]
fn the_demo_runs_the_controller_against_the_simulated_director() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let out = Command::new(binary())
        .args([
            "demo",
            "--duration",
            "4",
            // Only the watch explains a change within the run: full passes are 30 s apart.
            "--poll",
            "30",
            "--churn-ms",
            "200",
            "--deployments",
            "2",
            "--vms",
            "3",
        ])
        .arg("--listen")
        .arg(&listen)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    assert!(
        stdout.contains("verify_and_map"),
        "a real nats-server was started:\n{stdout}"
    );
    let auth = std::fs::read_to_string(dir.path().join("auth.json")).unwrap();
    let users = match bosh_nats_sync::authfile::reference::classify(auth.as_bytes()) {
        bosh_nats_sync::authfile::Observed::Users(u) => u,
        other => panic!("not a users file: {other:?}"),
    };
    assert!(
        users
            .iter()
            .any(|u| u.user.ends_with(".agent.bosh-internal")),
        "{auth}"
    );
    assert!(
        users
            .iter()
            .any(|u| u.user.ends_with("CN=default.director.bosh-internal")),
        "{auth}"
    );
    assert!(
        stdout.contains("pass changed the auth file") && stdout.contains("reloaded"),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.contains("kind=\"partial\"")
            && l.contains("refetched=")
            && l.contains("pass changed the auth file")),
        "the churn's VMs are admitted by partial passes:\n{stdout}"
    );
}
