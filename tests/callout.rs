//! Callout mode end to end (contract §12): the real `bosh-nats-sync -c CONFIG` answering a real
//! nats-server's authorization requests (`$NATS_SERVER`, 2.10 or later: `scripts/test` runs
//! this file under 2.14.5 and 2.15.1; 2.9.10 has no auth callout, and these tests end at
//! once under it — `tests/init.rs` shows it refusing `init`'s file) with TLS `verify_and_map`
//! and real agent certificates, against the simulated director and its event log.

mod common;

use std::time::{Duration, Instant};

use common::{Auth, Env, HM_CN, metrics, status, within};
use sim::director::{Endpoint, Vm};
use sim::fault::Fault;
use sim::nats::Permission;
use sim::pki::{agent_cn, bootstrap_agent_cn};

const A: &str = "0c0a1100-0000-4000-8000-00000000000a";
const B: &str = "0c0a1100-0000-4000-8000-00000000000b";
const NEW: &str = "0c0a1100-0000-4000-8000-0000000000ee";

/// How long the start-up may take on a loaded 2-core machine (it is far quicker).
const STARTUP: Duration = Duration::from_secs(30);
/// Generous bounds for what takes well under a second (the benchmark measures it).
const SOON: Duration = Duration::from_secs(10);

/// Callout mode — or, under a nats-server without it (2.9.10), the proof that the program
/// refuses it: configured for callout mode against that server, it exits at once with status
/// 2 and says why (then `None`: the test has nothing more to try).
async fn callout_env(vms: Vec<Vm>) -> Option<Env> {
    if !sim::nats::has_auth_callout(&sim::nats::version(&common::nats_server_path()).unwrap()) {
        let mut env = Env::start(Auth::Basic, vms).await;
        env.enable_callout();
        let out = env.run(&[]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}\n{}", env.log());
        let version = env.nats.version().trim_start_matches('v').to_owned();
        assert!(
            stderr.contains(&format!(
                "nats-server {version} has no auth callout (2.10 or later needed)"
            )),
            "{stderr}"
        );
        return None;
    }
    Some(Env::start_callout(Auth::Basic, vms).await)
}

/// Runs the program with the watch on and the HTTP server, waits for `/readyz`.
async fn running(env: &Env) -> (common::Running, String) {
    let base = env.write_config_http(60.0, &[("intervals.watch", "0.2")], "");
    let run = env.spawn_run();
    within(env, STARTUP, "/readyz answers 200", || async {
        common::http()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    (run, base)
}

/// The value of one sample of `/metrics`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_vm_s_agent_is_admitted_without_any_reload() {
    let Some(env) = callout_env(vec![Vm::agent(A), Vm::agent(B).permanent(true)]).await else {
        return;
    };
    env.director
        .record_event(sim::events::NewEvent::new("acquire", "lock"));
    let loaded_at = env.nats.config_load_time().await.unwrap();
    let (_run, base) = running(&env).await;
    assert!(env.admitted(&agent_cn(A)).await);
    assert!(env.admitted(&bootstrap_agent_cn(A)).await);
    assert!(env.admitted(&agent_cn(B)).await);

    // The director creates a VM; its agent dials in with its bootstrap certificate, as the
    // agent does, until it is let in.
    assert!(!env.admitted(&bootstrap_agent_cn(NEW)).await);
    let created = Instant::now();
    env.director.create_vm("cf", Vm::agent(NEW));
    within(&env, SOON, "the new agent is admitted", || async {
        env.admitted(&bootstrap_agent_cn(NEW)).await
    })
    .await;
    eprintln!("admitted {:?} after the VM's events", created.elapsed());
    assert_eq!(
        env.nats.config_load_time().await.unwrap(),
        loaded_at,
        "no reload: nats-server asked, and was answered from memory\n{}",
        env.diagnostics()
    );
    assert!(!env.nats.log().contains("Reloaded"), "{}", env.nats.log());
    let text = metrics(&base).await;
    assert!(
        sample(
            &text,
            r#"bosh_nats_sync_callout_requests_total{result="allowed"}"#
        ) >= Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"bosh_nats_sync_reloads_total{result="ok"}"#),
        Some(0.0),
        "{text}"
    );
    assert_eq!(sample(&text, "bosh_nats_sync_callout_connected"), Some(1.0));
    assert_eq!(
        sample(&text, "bosh_nats_sync_callout_admitted_agents"),
        Some(3.0)
    );
    let status = status(&base).await;
    assert_eq!(status["admission"], "callout", "{status}");
    assert_eq!(status["callout"]["connected"], true, "{status}");
    assert_eq!(status["callout"]["admitted_agents"], 3, "{status}");
    assert!(status["callout"]["restart_needed"].is_null(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_removed_and_wrong_kind_certificates_are_refused() {
    let Some(env) = callout_env(vec![Vm::agent(A), Vm::agent(B).permanent(true)]).await else {
        return;
    };
    env.director
        .record_event(sim::events::NewEvent::new("acquire", "lock"));
    let (_run, base) = running(&env).await;
    assert!(env.admitted(&agent_cn(A)).await);
    // Never a VM; not an agent's certificate at all; the bootstrap certificate of an agent
    // whose VM has permanent credentials.
    assert!(!env.admitted(&agent_cn(NEW)).await);
    assert!(!env.admitted("somebody.else.bosh-internal").await);
    assert!(!env.admitted(&bootstrap_agent_cn(B)).await);
    // The director deletes A's VM: from the next connect on, A is refused.
    env.director.delete_vm("cf", &format!("vm-{A}"));
    within(&env, SOON, "the removed agent is refused", || async {
        !env.admitted(&agent_cn(A)).await
    })
    .await;
    let status = status(&base).await;
    let refusals = status["callout"]["last_refusals"].as_array().unwrap();
    let reasons: Vec<&str> = refusals
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    for reason in ["unknown_agent", "not_agent", "bootstrap_refused"] {
        assert!(reasons.contains(&reason), "{status}");
    }
    assert!(
        refusals.iter().any(|r| r["agent"] == A),
        "a refusal names the agent: {status}"
    );
    let log = env.log();
    assert!(log.contains("bootstrap certificate not allowed"), "{log}");
    assert!(log.contains(B), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_agent_may_use_its_own_subjects_only() {
    let Some(env) = callout_env(vec![Vm::agent(A), Vm::agent(B)]).await else {
        return;
    };
    let (_run, _base) = running(&env).await;
    let me = agent_cn(A);
    for subject in [
        format!("hm.agent.heartbeat.{A}"),
        format!("hm.agent.alert.{A}"),
    ] {
        assert_eq!(
            env.may_publish(&me, &subject).await,
            Permission::Allowed,
            "{subject}"
        );
    }
    // The director observes its own subjects.
    let agent = env.connect(&me).await.unwrap();
    let director = env.connect(common::DIRECTOR_CN).await.unwrap();
    assert_eq!(
        sim::nats::probe_publish(&agent, &director, &format!("director.abc.{A}.x"))
            .await
            .unwrap(),
        Permission::Allowed
    );
    // Another agent's subjects, each watched by a client that may subscribe to it.
    let other = env.connect(&agent_cn(B)).await.unwrap();
    let hm = env.connect(HM_CN).await.unwrap();
    for (subject, observer) in [
        (format!("hm.agent.heartbeat.{B}"), &hm),
        (format!("director.abc.{B}.x"), &director),
        (format!("agent.{B}"), &other),
    ] {
        assert_eq!(
            sim::nats::probe_publish(&agent, observer, &subject)
                .await
                .unwrap(),
            Permission::Denied,
            "{subject}"
        );
    }
    assert_eq!(
        sim::nats::probe_subscribe(&agent, &director, &format!("agent.{A}"))
            .await
            .unwrap(),
        Permission::Allowed
    );
    assert_eq!(
        sim::nats::probe_subscribe(&agent, &director, &format!("agent.{B}"))
            .await
            .unwrap(),
        Permission::Denied
    );
}

/// The program down: connections it admitted stay, the director and the health monitor
/// (static users) still connect, a new agent waits; back up, the new agent is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_program_down_only_new_agents_wait() {
    let Some(env) = callout_env(vec![Vm::agent(A)]).await else {
        return;
    };
    env.director
        .record_event(sim::events::NewEvent::new("acquire", "lock"));
    let (mut run, _base) = running(&env).await;
    let held = env.connect(&agent_cn(A)).await.unwrap();
    run.child.kill().await.unwrap();
    // Killed: the responder's connection is gone (nats-server lists one client, the agent).
    env.director.create_vm("cf", Vm::agent(NEW));
    assert!(!env.admitted(&bootstrap_agent_cn(NEW)).await);
    assert!(env.admitted(common::DIRECTOR_CN).await);
    assert!(env.admitted(HM_CN).await);
    let observer = env.connect(HM_CN).await.unwrap();
    assert_eq!(
        sim::nats::probe_publish(&held, &observer, &format!("hm.agent.heartbeat.{A}"))
            .await
            .unwrap(),
        Permission::Allowed,
        "the admitted agent's connection lives on"
    );
    let _run = env.spawn_run();
    within(
        &env,
        STARTUP,
        "the new agent is admitted once the program is back",
        || async { env.admitted(&bootstrap_agent_cn(NEW)).await },
    )
    .await;
}

/// A restarted program answers from the set an earlier one persisted, before its first pass
/// has reached the director.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_slow_director_admits_known_agents_at_once() {
    let Some(env) = callout_env(vec![Vm::agent(A)]).await else {
        return;
    };
    let (mut run, _base) = running(&env).await;
    assert!(env.admitted(&agent_cn(A)).await);
    run.child.kill().await.unwrap();
    let state = env.callout.as_ref().unwrap().state_file.clone();
    assert!(
        std::fs::read_to_string(&state).unwrap().contains(A),
        "the admitted set is persisted"
    );
    env.director
        .set_fault(Endpoint::Info, Fault::delay(Duration::from_secs(600)));
    let before = env.log().len();
    let _run = env.spawn_run();
    within(&env, STARTUP, "the known agent is admitted", || async {
        env.admitted(&agent_cn(A)).await
    })
    .await;
    let log = env.log();
    let restarted = &log[before..];
    assert!(
        restarted.contains("answering from the persisted admitted set until the first pass")
            && restarted.contains("agents=1"),
        "{restarted}"
    );
    assert!(
        !restarted.contains("pass changed") && !restarted.contains("pass found"),
        "no pass has finished: the persisted set answered\n{restarted}"
    );
}

/// `user_ttl`: an admitted connection lives that long (±10 %), then nats-server closes it and
/// the agent, reconnecting, is admitted again; a removed agent's connection does not wait for
/// its expiry — it is closed at once (§12.6, `tests/revocation.rs`) — and it is not let back
/// in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_expire_after_user_ttl_and_only_admitted_agents_come_back() {
    let Some(mut env) = callout_env(vec![Vm::agent(A), Vm::agent(B)]).await else {
        return;
    };
    env.callout.as_mut().unwrap().user_ttl = 3.0;
    env.director
        .record_event(sim::events::NewEvent::new("acquire", "lock"));
    let (_run, base) = running(&env).await;
    let kept = env.connect(&agent_cn(A)).await.unwrap();
    let removed = env.connect(&agent_cn(B)).await.unwrap();
    env.director.delete_vm("cf", &format!("vm-{B}"));
    within(&env, SOON, "B is refused", || async {
        !env.admitted(&agent_cn(B)).await
    })
    .await;
    let expired = |client: &sim::nats::NatsClient| {
        client
            .server_errors()
            .iter()
            .any(|e| e.to_lowercase().contains("expired"))
    };
    within(&env, SOON, "B's connection is closed", || async {
        let connz = env.nats.connz().await.unwrap();
        !connz["connections"].as_array().unwrap().iter().any(|c| {
            c["tls_peer_certs"][0]["subject"]
                .as_str()
                .is_some_and(|s| s.contains(B))
        })
    })
    .await;
    within(&env, SOON, "A's connection expires", || async {
        expired(&kept)
    })
    .await;
    assert!(!expired(&removed), "closed before it could expire");
    // The kept agent reconnects (its client does, once) and is admitted again; the removed
    // one cannot.
    assert!(env.admitted(&agent_cn(A)).await);
    assert!(!env.admitted(&agent_cn(B)).await);
    let text = metrics(&base).await;
    assert!(
        sample(
            &text,
            r#"bosh_nats_sync_callout_requests_total{result="unknown_agent"}"#
        ) >= Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_file_others_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let Some(env) = callout_env(vec![Vm::agent(A)]).await else {
        return;
    };
    let seed = env.callout.as_ref().unwrap().issuer_seed_file.clone();
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o644)).unwrap();
    for args in [&["check-config"][..], &[]] {
        let out = env.run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&seed.display().to_string()) && stderr.contains("0644"),
            "{stderr}"
        );
        let secret = std::fs::read_to_string(&seed).unwrap();
        assert!(!stderr.contains(secret.trim()), "no seed in the message");
    }
}

/// A new issuer after nats-server started: nats-server cannot take a changed auth_callout
/// block on reload, and the program says it must restart, rather than answering in vain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_callout_block_is_reported_as_needing_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let Some(env) = callout_env(vec![Vm::agent(A)]).await else {
        return;
    };
    let seed = env.callout.as_ref().unwrap().issuer_seed_file.clone();
    std::fs::write(
        &seed,
        bosh_nats_sync::callout::IssuerKey::generate()
            .seed()
            .as_bytes(),
    )
    .unwrap();
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_run, base) = running(&env).await;
    let status = status(&base).await;
    let why = status["callout"]["restart_needed"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("nats-server must restart") && why.contains("init"),
        "{status}"
    );
    assert!(
        env.log().contains("nats-server must restart"),
        "{}",
        env.log()
    );
}

/// With a curve key (`auth_callout.xkey`) nats-server seals every request to it and the
/// answer goes back sealed to the server's own key: admission works the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_requests_are_opened_and_answered_sealed() {
    if callout_env(Vec::new()).await.is_none() {
        return;
    }
    let env = Env::start_callout_with(Auth::Basic, vec![Vm::agent(A)], true).await;
    assert!(
        std::fs::read_to_string(&env.auth_file)
            .unwrap()
            .contains("\"xkey\""),
        "init names the curve key"
    );
    env.director
        .record_event(sim::events::NewEvent::new("acquire", "lock"));
    let (_run, base) = running(&env).await;
    assert!(env.admitted(&agent_cn(A)).await);
    assert!(!env.admitted(&agent_cn(B)).await);
    env.director.create_vm("cf", Vm::agent(NEW));
    within(&env, SOON, "the new agent is admitted", || async {
        env.admitted(&bootstrap_agent_cn(NEW)).await
    })
    .await;
    let text = metrics(&base).await;
    assert_eq!(
        sample(
            &text,
            r#"bosh_nats_sync_callout_requests_total{result="bad_request"}"#
        ),
        Some(0.0),
        "every sealed request opened: {text}"
    );
}

/// `diff` in callout mode: the same plan, over the admitted set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_shows_what_the_next_pass_would_admit() {
    let Some(env) = callout_env(vec![Vm::agent(A)]).await else {
        return;
    };
    let out = env.run(&["diff"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let state = env
        .callout
        .as_ref()
        .unwrap()
        .state_file
        .display()
        .to_string();
    assert!(
        stdout.contains(&format!("admitted set {state}: missing")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("+ {}", sim::pki::bosh_subject(&agent_cn(A)))),
        "{stdout}"
    );
    env.once(true).await;
    let out = env.run(&["diff"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// No bootstrap rule in callout mode: the director and the health monitor are static users of
/// init's file, so a director that is down while the admitted set has been lost writes nothing
/// and takes nobody's connection (file mode would write the component users alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_admitted_set_with_the_director_down_takes_nobody_back() {
    let Some(env) = callout_env(vec![Vm::agent(A)]).await else {
        return;
    };
    let (mut run, _base) = running(&env).await;
    let held = env.connect(&agent_cn(A)).await.unwrap();
    run.child.kill().await.unwrap();
    let state = env.callout.as_ref().unwrap().state_file.clone();
    std::fs::remove_file(&state).unwrap();
    env.director.set_down(true);
    let _run = env.spawn_run();
    env.log_count_reaches(STARTUP, "pass failed", 2).await;
    assert!(
        !state.exists(),
        "nothing was written in place of the lost set"
    );
    assert!(
        !env.log()
            .contains("writing the director/health-monitor users")
    );
    let observer = env.connect(HM_CN).await.unwrap();
    assert_eq!(
        sim::nats::probe_publish(&held, &observer, &format!("hm.agent.heartbeat.{A}"))
            .await
            .unwrap(),
        Permission::Allowed,
        "the admitted agent keeps its connection"
    );
    assert!(env.admitted(common::DIRECTOR_CN).await);
}
