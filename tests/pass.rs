//! One reconcile pass end to end (issue: core pass): the real binary's `once` mode against
//! the simulated director over HTTPS and a real nats-server with `verify_and_map`.

mod common;

use std::time::Duration;

use common::{Auth, DIRECTOR_CN, Env, HM_CN, identity};
use sim::director::Vm;
use sim::fault::Fault;
use sim::nats::Permission;
use sim::pki::{agent_cn, bootstrap_agent_cn};

const A: &str = "0a1b2c3d-0000-4000-8000-00000000000a";
const B: &str = "0a1b2c3d-0000-4000-8000-00000000000b";

async fn agents_admitted_then_refused(auth: Auth) {
    let env = Env::start(
        auth,
        vec![Vm::agent(A).permanent(true), Vm::agent(B).permanent(false)],
    )
    .await;
    assert!(
        !env.admitted(&agent_cn(A)).await,
        "nobody is admitted before the first pass"
    );

    env.once(true).await;
    assert!(env.admitted(&agent_cn(A)).await);
    assert!(env.admitted(DIRECTOR_CN).await);
    assert_eq!(
        env.may_publish(&agent_cn(A), &format!("hm.agent.heartbeat.{A}"))
            .await,
        Permission::Allowed
    );
    assert_eq!(
        env.may_publish(&agent_cn(A), &format!("hm.agent.heartbeat.{B}"))
            .await,
        Permission::Denied
    );
    // B has no permanent credentials yet: its bootstrap certificate is admitted, A's is not.
    assert!(env.admitted(&bootstrap_agent_cn(B)).await);
    assert!(!env.admitted(&bootstrap_agent_cn(A)).await);

    env.director.remove_vm("cf", A);
    env.once(true).await;
    assert!(
        !env.admitted(&agent_cn(A)).await,
        "a deleted VM's agent is refused"
    );
    assert!(env.admitted(&agent_cn(B)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_director_agents_are_admitted_and_removed() {
    agents_admitted_then_refused(Auth::Basic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uaa_director_agents_are_admitted_and_removed() {
    agents_admitted_then_refused(Auth::Uaa).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_director_with_placeholder_writes_the_bootstrap_users() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    env.director.set_down(true);
    let out = env.once(false).await;
    assert!(!out.status.success());
    let text = env.auth_text();
    assert!(
        text.contains(&sim::pki::bosh_subject(DIRECTOR_CN))
            && text.contains(&sim::pki::bosh_subject(HM_CN)),
        "{text}"
    );
    assert!(!text.contains(A), "no agent without the director: {text}");
    assert!(
        env.admitted(DIRECTOR_CN).await,
        "the director can reach NATS while it starts"
    );
    assert!(env.admitted(HM_CN).await);
    assert!(!env.admitted(&agent_cn(A)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_director_leaves_a_users_file_untouched() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    env.once(true).await;
    let before = (env.auth_text(), identity(&env.auth_file));
    env.director.set_down(true);
    env.once(false).await;
    assert_eq!((env.auth_text(), identity(&env.auth_file)), before);
    assert!(
        env.admitted(&agent_cn(A)).await,
        "agents keep working while the director is down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_director_means_no_write_and_no_reload() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    env.once(true).await;
    // `once` reloads at start-up by design (§5.3); later passes of one `run` process
    // that find nothing to change must neither write nor reload.
    let before = identity(&env.auth_file);
    let loaded = env.nats.config_load_time().await.unwrap();
    let mut child = tokio::process::Command::new(common::binary())
        .arg("-c")
        .arg(&env.config_path)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::eventually(Duration::from_secs(20), "the start-up reload", || async {
        env.nats.config_load_time().await.is_ok_and(|t| t != loaded)
    })
    .await;
    let after_startup = env.nats.config_load_time().await.unwrap();
    // Rewriting a subject file with the same content triggers a pass that changes nothing
    // (with the watch on, the default, a partial pass over the kept view: it lists nothing,
    // so its log line is what shows it ran).
    std::fs::write(
        &env.hm_subject_file,
        format!("{}\n", sim::pki::bosh_subject(HM_CN)),
    )
    .unwrap();
    common::eventually(
        Duration::from_secs(20),
        "the second pass's summary in the log",
        || async { env.log().matches("found nothing to change").count() >= 2 },
    )
    .await;
    let because = format!("(file:{})\"", env.hm_subject_file.display());
    assert!(
        env.log()
            .lines()
            .any(|l| l.contains("found nothing to change") && l.contains(&because)),
        "the pass's log line names the file that asked for it ({because}):\n{}",
        env.log()
    );
    child.kill().await.unwrap();
    assert_eq!(
        identity(&env.auth_file),
        before,
        "no write when nothing differs"
    );
    assert_eq!(
        env.nats.config_load_time().await.unwrap(),
        after_startup,
        "no reload when nothing differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_deleted_between_calls_is_treated_as_gone() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    env.director.set_deployment("gone", vec![Vm::agent(B)]);
    env.director.delete_after_next_list("gone");
    env.once(true).await;
    assert!(env.admitted(&agent_cn(A)).await);
    assert!(!env.auth_text().contains(B));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_other_failure_writes_nothing() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    env.once(true).await;
    let before = (env.auth_text(), identity(&env.auth_file));
    env.director.set_deployment("other", vec![Vm::agent(B)]);
    env.director.remove_vm("cf", A);
    env.director.set_vms_fault("other", Fault::status(500));
    let out = env.once(false).await;
    assert_eq!(
        (env.auth_text(), identity(&env.auth_file)),
        before,
        "a failed pass writes nothing"
    );
    assert!(
        env.log().contains("status"),
        "the log names the failure:\n{}",
        env.log()
    );
    let _ = out;
    assert!(env.admitted(&agent_cn(A)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_director_ca_from_another_authority_fails_with_a_tls_error() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    let text = std::fs::read_to_string(&env.config_path).unwrap().replace(
        &env.files.ca_cert.display().to_string(),
        &env.files.other_ca_cert.display().to_string(),
    );
    std::fs::write(&env.config_path, text).unwrap();
    // Give the file users first, so bootstrap does not write either.
    std::fs::write(
        &env.auth_file,
        "{\"authorization\":{\"users\":[{\"user\":\"CN=x\"}]}}",
    )
    .unwrap();
    let before = identity(&env.auth_file);
    env.once(false).await;
    assert_eq!(identity(&env.auth_file), before);
    let log = env.log();
    assert!(
        log.contains("reason=\"tls\"") && log.contains("invalid peer certificate"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_admits_everyone_is_closed_even_with_nothing_to_admit() {
    let env = Env::start(Auth::Basic, vec![]).await;
    std::fs::remove_file(&env.director_subject_file).unwrap();
    std::fs::remove_file(&env.hm_subject_file).unwrap();
    // `{}` means "no authorization" to nats-server: any certificate of the CA gets in.
    std::fs::write(&env.auth_file, "{}").unwrap();
    env.nats.reload().unwrap();
    common::eventually(
        Duration::from_secs(10),
        "nats-server admits anyone with {}",
        || async { env.admitted("stranger.example").await },
    )
    .await;

    env.once(true).await;
    let text = env.auth_text();
    assert!(
        text.contains(bosh_nats_sync::authfile::NOBODY) && !text.contains("\"users\":[]"),
        "{text}"
    );
    assert!(
        !env.admitted("stranger.example").await,
        "no users must mean nobody, not everybody"
    );
}

/// The config file exactly as the BOSH `nats` job template renders it (Ruby's `YAML.dump`
/// of its params: `ca_cert`, null UAA keys, no new keys at all), paths moved to the test's
/// directory: `-c FILE` converges with nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bosh_job_templates_config_converges_unchanged() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    let text = format!(
        "---\ndirector:\n  url: {url}\n  user: {user}\n  password: {password}\n  client_id:\n  client_secret:\n  ca_cert: \"{ca}\"\n  director_subject_file: \"{ds}\"\n  hm_subject_file: \"{hs}\"\nintervals:\n  poll_user_sync: 10\nnats:\n  config_file_path: \"{auth}\"\n  nats_server_executable: \"{exe}\"\n  nats_server_pid_file: \"{pid}\"\nlogfile: \"{log}\"\n",
        url = env.director.url(),
        user = common::USER,
        password = common::PASSWORD,
        ca = env.files.ca_cert.display(),
        ds = env.director_subject_file.display(),
        hs = env.hm_subject_file.display(),
        auth = env.auth_file.display(),
        exe = common::nats_server_path().display(),
        pid = env.nats.pid_file().display(),
        log = env.log_path().display(),
    );
    std::fs::write(&env.config_path, text).unwrap();
    let out = env.run(&["check-config"]).await;
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("unknown key"));
    env.once(true).await;
    assert!(env.admitted(&agent_cn(A)).await);
    assert!(env.admitted(DIRECTOR_CN).await);
}

/// §4.3 through the binary: a file that grants the same rights in another form — users
/// and permission lists in another order, pretty-printed, as another writer would leave it
/// — is not rewritten. (A pass compares bytes first; this is the path where they differ and
/// the values decide.) One changed permission in the same form is rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_users_in_another_form_are_not_rewritten() {
    let env = Env::start(
        Auth::Basic,
        vec![Vm::agent(A), Vm::agent(B).permanent(true)],
    )
    .await;
    env.once(true).await;
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&env.auth_file).unwrap()).unwrap();
    let mut other_form = written.clone();
    let users = other_form["authorization"]["users"].as_array_mut().unwrap();
    assert_eq!(
        users.len(),
        2 + 3,
        "director, hm, A (bootstrap + permanent), B"
    );
    users.reverse();
    for user in users.iter_mut() {
        for list in ["publish", "subscribe"] {
            user["permissions"][list].as_array_mut().unwrap().reverse();
        }
    }
    std::fs::write(
        &env.auth_file,
        serde_json::to_string_pretty(&other_form).unwrap(),
    )
    .unwrap();
    let before = identity(&env.auth_file);
    env.once(true).await;
    assert_eq!(
        identity(&env.auth_file),
        before,
        "the same users in another form are not rewritten"
    );
    assert!(env.admitted(&agent_cn(A)).await && env.admitted(&agent_cn(B)).await);

    // The same form with one subscription more is a different config: rewritten as ours.
    let users = other_form["authorization"]["users"].as_array_mut().unwrap();
    users[0]["permissions"]["subscribe"]
        .as_array_mut()
        .unwrap()
        .push("agent.extra".into());
    std::fs::write(
        &env.auth_file,
        serde_json::to_string_pretty(&other_form).unwrap(),
    )
    .unwrap();
    env.once(true).await;
    let rewritten: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&env.auth_file).unwrap()).unwrap();
    assert_eq!(rewritten, written, "rewritten as this program writes it");
}
