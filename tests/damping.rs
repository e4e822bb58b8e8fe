//! Mass-removal damping end to end (§6.5): the real binary in run mode against the
//! simulated director and a real nats-server.

mod common;

use std::time::Duration;

use common::{Auth, Env, eventually};
use sim::director::Vm;
use sim::pki::agent_cn;

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("agent-{i:03}")).collect()
}

fn vms(ids: &[String]) -> Vec<Vm> {
    ids.iter().map(|id| Vm::agent(id).permanent(true)).collect()
}

async fn run(env: &Env) -> tokio::process::Child {
    tokio::process::Command::new(common::binary())
        .arg("-c")
        .arg(&env.config_path)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn holds(env: &Env) -> usize {
    env.log().matches("holding a mass removal").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_director_that_suddenly_lists_nothing_is_believed_only_after_k_passes() {
    let old = ids(0..12);
    let env = Env::start(Auth::Basic, vms(&old)).await;
    env.write_config_with(0.3, "");
    let mut child = run(&env).await;
    eventually(
        Duration::from_secs(20),
        "all agents in the file",
        || async { old.iter().all(|id| env.auth_text().contains(&agent_cn(id))) },
    )
    .await;

    // Everything disappears, and one new VM arrives in another deployment at the same time.
    env.director.set_deployments([
        ("cf".to_owned(), vec![]),
        ("new".to_owned(), vms(&["fresh-1".to_owned()])),
    ]);
    // The pass writes the file, then reloads nats-server, then reports (its log lines, the
    // hold's among them): wait for the report too.
    eventually(
        Duration::from_secs(20),
        "the new agent added while the removal is held",
        || async { env.auth_text().contains(&agent_cn("fresh-1")) && holds(&env) >= 1 },
    )
    .await;
    assert!(
        old.iter().all(|id| env.auth_text().contains(&agent_cn(id))),
        "old agents stay while held"
    );
    assert!(
        env.admitted(&agent_cn(&old[0])).await,
        "and nats-server still admits them"
    );
    assert!(env.admitted(&agent_cn("fresh-1")).await);

    eventually(
        Duration::from_secs(20),
        "the removal applied after confirmations",
        || async { !env.auth_text().contains(&agent_cn(&old[0])) },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "nats-server reloaded without the old agents",
        || async { !env.admitted(&agent_cn(&old[0])).await },
    )
    .await;
    child.kill().await.unwrap();
    // A pass that raced the change may have seen a half-updated director and started its
    // own count; what must hold is that the removal applied right after the (K-1)th
    // consecutive held pass.
    let log = env.log();
    let held: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("holding a mass removal"))
        .collect();
    assert!(held.len() >= 2, "held on at least K-1 = 2 passes:\n{log}");
    assert!(
        held[held.len() - 1].contains("seen=2") && held[held.len() - 2].contains("seen=1"),
        "{log}"
    );
    assert!(env.auth_text().contains(&agent_cn("fresh-1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_below_the_minimum_count_applies_at_once() {
    let all = ids(0..8);
    let env = Env::start(Auth::Basic, vms(&all)).await;
    env.once(true).await;
    env.director.set_deployment("cf", vms(&all[5..]));
    env.once(true).await;
    let text = env.auth_text();
    assert!(
        all[..5].iter().all(|id| !text.contains(&agent_cn(id))),
        "5 of 8 removed at once:\n{text}"
    );
    assert!(all[5..].iter().all(|id| text.contains(&agent_cn(id))));
    assert_eq!(holds(&env), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damping_can_be_disabled() {
    let all = ids(0..12);
    let env = Env::start(Auth::Basic, vms(&all)).await;
    env.write_config_with(60.0, "damping:\n  enabled: false\n");
    env.once(true).await;
    env.director.set_deployment("cf", vec![]);
    env.once(true).await;
    assert!(!env.auth_text().contains(&agent_cn(&all[0])));
    assert_eq!(holds(&env), 0);
}
