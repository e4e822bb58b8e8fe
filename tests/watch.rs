//! The watch (§6.6) end to end: the real `bosh-nats-sync -c CONFIG` following the simulated
//! director's event log over HTTPS, with a real nats-server (`verify_and_map`) deciding who
//! gets in. `poll_user_sync` is long in these tests, so only the watch can explain an agent
//! admitted (or refused) within seconds.

mod common;

use std::time::{Duration, Instant};

use common::{Auth, Env, metrics, within};
use nix::sys::signal::Signal;
use sim::director::{Endpoint, Vm};
use sim::events::NewEvent;
use sim::fault::Fault;
use sim::pki::{agent_cn, bootstrap_agent_cn};

/// How long the start-up pass may take on a loaded 2-core machine (it is far quicker).
const STARTUP: Duration = Duration::from_secs(30);
/// A new VM's agent is admitted well within this with a 0.2 s watch interval (the
/// benchmark measures the real figure); a full pass would take `POLL`.
const ADMITTED: Duration = Duration::from_secs(5);
/// `intervals.poll_user_sync` when the test must not see a full pass.
const POLL: f64 = 30.0;
const WATCH: &str = "0.2";

/// `/status`'s `watch` object.
async fn watch_status(base: &str) -> serde_json::Value {
    common::status(base).await["watch"].clone()
}

/// Starts the long-running mode with the watch on (`intervals.watch` 0.2 s) and `extra`
/// config keys; waits until the start-up pass admitted `first`.
async fn watching(
    env: &Env,
    poll: f64,
    keys: &[(&str, &str)],
    first: &str,
) -> (common::Running, String) {
    let mut all = vec![("intervals.watch", WATCH)];
    all.extend_from_slice(keys);
    let base = env.write_config_http(poll, &all, "");
    let run = env.spawn_run();
    within(env, STARTUP, "the start-up pass admits the agents", || {
        env.admitted(first)
    })
    .await;
    (run, base)
}

fn full_passes(env: &Env) -> usize {
    env.log()
        .lines()
        .filter(|l| l.contains("pass::report:") && l.contains("kind=\"full\""))
        .count()
}

const A: &str = "0a1b2c3d-0000-4000-8000-00000000000a";
const B: &str = "0a1b2c3d-0000-4000-8000-00000000000b";
const NEW: &str = "0a1b2c3d-0000-4000-8000-0000000000ee";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_vm_is_admitted_within_seconds_while_the_poll_interval_is_long() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A), Vm::agent(B)]).await;
    env.director.record_event(NewEvent::new("acquire", "lock"));
    let (_run, base) = watching(&env, POLL, &[], &agent_cn(A)).await;
    within(&env, ADMITTED, "the watch is healthy", || async {
        watch_status(&base).await["state"] == "healthy"
    })
    .await;
    assert!(!env.admitted(&bootstrap_agent_cn(NEW)).await);

    // The director creates a VM: its agent dials in with its bootstrap certificate.
    let creation = env.director.begin_create_vm("cf", Vm::agent(NEW));
    env.director.finish_create_vm(creation);
    let created = Instant::now();
    within(
        &env,
        ADMITTED,
        "the new VM's bootstrap certificate is admitted",
        || async { env.admitted(&bootstrap_agent_cn(NEW)).await },
    )
    .await;
    assert!(created.elapsed() < Duration::from_secs_f64(POLL));
    assert_eq!(full_passes(&env), 1, "only the start-up pass was full");
    // The pass ends (its log line, its metrics) just after the reload that admitted it.
    within(
        &env,
        ADMITTED,
        "a partial pass's log line naming how many deployments it refetched",
        || async {
            env.log().lines().any(|l| {
                l.contains("kind=\"partial\"")
                        && l.contains("refetched=1")
                        // It names why it ran, not the loop's `requeue`.
                        && l.contains("pass=\"pass ")
                        && l.contains(" (events: 1 deployment)\"")
            })
        },
    )
    .await;
    let status = watch_status(&base).await;
    assert!(status["cursor"].as_u64().is_some(), "{status}");
    assert!(status["last_full_pass_at"].is_string(), "{status}");
    // The metrics say the same: a partial pass, events read, one admission observed.
    let metrics = metrics(&base).await;
    for series in [
        "bosh_nats_sync_watch_passes_total{kind=\"partial\"}",
        "bosh_nats_sync_watch_events_read_total",
        "bosh_nats_sync_watch_admission_latency_seconds_count",
        "bosh_nats_sync_watch_state{state=\"healthy\"}",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(series) && !l.ends_with(" 0")),
            "{series} is not positive:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_director_is_asked_for_its_event_log_only() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    let (_run, _base) = watching(&env, POLL, &[], &agent_cn(A)).await;
    env.director
        .record_event(NewEvent::new("acquire", "lock").object_name("lock:x"));
    // Let the read after the start-up pass settle, then count.
    within(&env, ADMITTED, "a few event polls", || async {
        env.director.request_count(Endpoint::Events) >= 3
    })
    .await;
    env.director.reset_stats();
    within(&env, ADMITTED, "ten event polls", || async {
        env.director.request_count(Endpoint::Events) >= 10
    })
    .await;
    let others = [Endpoint::Info, Endpoint::Deployments, Endpoint::Vms]
        .map(|e| env.director.request_count(e));
    assert_eq!(
        others,
        [0, 0, 0],
        "a quiet director costs one /events request a poll (full polling: /info, /deployments and every /vms)\n{}",
        env.diagnostics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_recorded_events_the_watch_is_unproven_and_full_passes_poll() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    env.director.set_record_events(false);
    let (_run, base) = watching(&env, 1.0, &[], &agent_cn(A)).await;
    let status = watch_status(&base).await;
    assert_eq!(status["state"], "unproven", "{status}");
    assert!(
        status["reason"].as_str().unwrap().contains("record_events"),
        "{status}"
    );
    env.director.create_vm("cf", Vm::agent(NEW));
    within(&env, STARTUP, "a full pass admits the new VM", || async {
        env.admitted(&bootstrap_agent_cn(NEW)).await
    })
    .await;
    within(&env, ADMITTED, "the full pass's log line", || async {
        full_passes(&env) >= 2
    })
    .await;
}

/// `/events` answering 403 (a client without read access to it) or 404 (a director without
/// the endpoint): the watch is failing, passes are not, and full passes poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_endpoint_answering_403_or_404_falls_back_to_polling() {
    for status in [403, 404] {
        let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
        env.director
            .set_fault(Endpoint::Events, Fault::status(status));
        let (_run, base) = watching(&env, 1.0, &[], &agent_cn(A)).await;
        within(&env, ADMITTED, "the watch reports failing", || async {
            watch_status(&base).await["state"] == "failing"
        })
        .await;
        let reason = watch_status(&base).await["reason"].clone();
        assert!(
            reason.as_str().unwrap().contains(&status.to_string()),
            "{reason}"
        );
        env.director.create_vm("cf", Vm::agent(NEW));
        within(&env, STARTUP, "a full pass admits the new VM", || async {
            env.admitted(&bootstrap_agent_cn(NEW)).await
        })
        .await;
        assert!(
            !env.log().contains("pass failed"),
            "/events failing is the watch failing, not the pass\n{}",
            env.diagnostics()
        );
        assert_eq!(
            env.log()
                .lines()
                .filter(|l| l.contains("watch state changed") && l.contains("state=\"failing\""))
                .count(),
            1,
            "a change of state is logged once\n{}",
            env.diagnostics()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_no_event_announced_makes_the_watch_blind_and_it_polls() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    env.director.record_event(NewEvent::new("acquire", "lock"));
    let (_run, base) = watching(&env, 1.0, &[("intervals.resync", "1")], &agent_cn(A)).await;
    within(&env, ADMITTED, "the watch is healthy", || async {
        watch_status(&base).await["state"] == "healthy"
    })
    .await;
    // One of the director's paths that changes a VM without recording an event.
    env.director.add_vm("cf", Vm::agent(NEW));
    within(&env, STARTUP, "the resync admits the VM", || async {
        env.admitted(&bootstrap_agent_cn(NEW)).await
    })
    .await;
    within(&env, ADMITTED, "the watch reports blind", || async {
        watch_status(&base).await["state"] == "blind"
    })
    .await;
    let metrics = metrics(&base).await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("bosh_nats_sync_watch_unannounced_changes_total")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}

/// The `watch state changed` lines of the log, in order, as `(state, reason)`.
fn state_changes(env: &Env) -> Vec<(String, String)> {
    let field = |line: &str, key: &str| {
        let start = line.find(&format!("{key}=\""))? + key.len() + 2;
        let end = start + line[start..].find('"')?;
        Some(line[start..end].to_owned())
    };
    env.log()
        .lines()
        .filter(|l| l.contains("watch state changed"))
        .filter_map(|l| Some((field(l, "state")?, field(l, "reason")?)))
        .collect()
}

/// A director that stops recording events (`record_events` off, or a restore) must not be
/// trusted again because a full pass happened to find nothing: until the log shows it is
/// written again and a full pass after that finds every change announced, full passes come
/// every `poll_user_sync`, so each VM created meanwhile is admitted within a poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_director_that_stops_recording_keeps_the_watch_blind_until_it_records_again() {
    // A resync far longer than a poll: a VM that waits for it waits `RESYNC`.
    const RESYNC: &str = "12";
    const WITHIN_A_POLL: Duration = Duration::from_secs(6);
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    env.director.record_event(NewEvent::new("acquire", "lock"));
    let (_run, base) = watching(&env, 1.0, &[("intervals.resync", RESYNC)], &agent_cn(A)).await;
    within(&env, ADMITTED, "the watch is healthy", || async {
        watch_status(&base).await["state"] == "healthy"
    })
    .await;

    env.director.set_record_events(false);
    env.director.create_vm("cf", Vm::agent(NEW));
    within(&env, STARTUP, "the resync admits the VM", || async {
        env.admitted(&bootstrap_agent_cn(NEW)).await
    })
    .await;
    within(&env, ADMITTED, "the watch reports blind", || async {
        watch_status(&base).await["state"] == "blind"
    })
    .await;

    // More VMs, one after another, while nothing is recorded: full passes every poll admit
    // each within a poll and a pass, and the quiet full passes between them leave it blind.
    for i in 0..4 {
        let id = format!("0a1b2c3d-0000-4000-8000-0000000001{i:02}");
        let passes = full_passes(&env);
        env.director.create_vm("cf", Vm::agent(&id));
        within(
            &env,
            WITHIN_A_POLL,
            "a full pass of the poll admits the VM",
            || async { env.admitted(&bootstrap_agent_cn(&id)).await },
        )
        .await;
        within(&env, WITHIN_A_POLL, "one more quiet full pass", || async {
            full_passes(&env) >= passes + 2
        })
        .await;
        let status = watch_status(&base).await;
        assert_eq!(status["state"], "blind", "{status}\n{}", env.diagnostics());
        assert!(
            status["reason"]
                .as_str()
                .unwrap()
                .contains("waiting for an event that names a deployment"),
            "{status}"
        );
    }

    // The director records again: the event of the next VM is the proof, and the full pass
    // after it, finding every change announced, ends the blindness.
    env.director.set_record_events(true);
    let last = "0a1b2c3d-0000-4000-8000-0000000001ff";
    env.director.create_vm("cf", Vm::agent(last));
    within(
        &env,
        WITHIN_A_POLL,
        "the recorded VM is admitted",
        || async { env.admitted(&bootstrap_agent_cn(last)).await },
    )
    .await;
    within(&env, STARTUP, "the watch is healthy again", || async {
        watch_status(&base).await["state"] == "healthy"
    })
    .await;
    let changes = state_changes(&env);
    let states: Vec<&str> = changes.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        states,
        ["healthy", "blind", "healthy"],
        "{changes:?}\n{}",
        env.diagnostics()
    );
    assert_eq!(changes[2].1, "the event log answers and is being written");
    let log = env.log();
    let proof = log
        .find("the blind watch read a new event naming a deployment")
        .expect("the proof is logged");
    let healthy_again = log
        .match_indices("watch state changed")
        .map(|(at, _)| at)
        .nth(2)
        .expect("three changes of state");
    assert!(proof < healthy_again, "healthy only after the proof\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_a_page_of_events_between_two_polls_are_all_read() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    env.director.create_deployment("other", vec![Vm::agent(B)]);
    let (_run, base) = watching(&env, POLL, &[], &agent_cn(A)).await;
    within(&env, ADMITTED, "the watch is healthy", || async {
        watch_status(&base).await["state"] == "healthy"
    })
    .await;
    // While /events fails, a VM is created and then 450 events bury it: the next read
    // must page back three times to find it.
    env.director.set_fault(Endpoint::Events, Fault::status(500));
    within(&env, ADMITTED, "the watch reports failing", || async {
        watch_status(&base).await["state"] == "failing"
    })
    .await;
    env.director.create_vm("cf", Vm::agent(NEW));
    for i in 0..450 {
        env.director
            .record_event(NewEvent::new("acquire", "lock").object_name(&format!("lock:{i}")));
    }
    env.director.reset_stats();
    env.director.clear_fault(Endpoint::Events);
    within(&env, ADMITTED, "the new VM is admitted", || async {
        env.admitted(&bootstrap_agent_cn(NEW)).await
    })
    .await;
    let paged = env
        .director
        .requests()
        .iter()
        .filter(|r| {
            r.endpoint == Endpoint::Events
                && r.query.as_deref().is_some_and(|q| q.contains("before_id="))
        })
        .count();
    assert!(paged >= 2, "{:?}", env.director.requests());
    assert_eq!(full_passes(&env), 1, "no relisting was needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_vms_and_deployments_are_refused_within_seconds() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    env.director
        .create_deployment("other", vec![Vm::agent(B), Vm::agent(NEW)]);
    let (_run, _base) = watching(&env, POLL, &[], &agent_cn(B)).await;
    env.director.delete_vm("other", &format!("vm-{NEW}"));
    within(
        &env,
        ADMITTED,
        "the deleted VM's agent is refused",
        || async { !env.admitted(&agent_cn(NEW)).await },
    )
    .await;
    assert!(env.admitted(&agent_cn(B)).await);
    assert!(env.director.delete_deployment("other"));
    within(
        &env,
        ADMITTED,
        "the deleted deployment's agents are refused",
        || async { !env.admitted(&agent_cn(B)).await },
    )
    .await;
    assert!(
        env.admitted(&agent_cn(A)).await,
        "other deployments keep theirs"
    );
    assert_eq!(full_passes(&env), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_director_restored_from_a_backup_is_relisted() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    env.director.record_event(NewEvent::new("acquire", "lock"));
    let backup = env.director.snapshot();
    let (_run, _base) = watching(&env, POLL, &[], &agent_cn(A)).await;
    for i in 0..20 {
        env.director
            .record_event(NewEvent::new("acquire", "lock").object_name(&format!("lock:{i}")));
    }
    env.director.create_vm("cf", Vm::agent(B));
    within(&env, ADMITTED, "B is admitted", || async {
        env.admitted(&bootstrap_agent_cn(B)).await
    })
    .await;
    // Restored: B never existed, and the log's ids start over below the cursor; then a VM
    // is created on the restored director.
    env.director.restore(&backup);
    env.director.create_vm("cf", Vm::agent(NEW));
    within(
        &env,
        ADMITTED,
        "the VM created after the restore is admitted",
        || async { env.admitted(&bootstrap_agent_cn(NEW)).await },
    )
    .await;
    within(
        &env,
        ADMITTED,
        "B, gone with the restore, is refused",
        || async { !env.admitted(&bootstrap_agent_cn(B)).await },
    )
    .await;
    within(&env, ADMITTED, "a second full pass", || async {
        full_passes(&env) >= 2
    })
    .await;
    assert!(env.log().contains("restored"), "{}", env.diagnostics());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_pass_that_would_cut_off_most_agents_is_held_by_damping() {
    let ids: Vec<String> = (0..40)
        .map(|i| format!("0a1b2c3d-0000-4000-8000-{i:012}"))
        .collect();
    let env = Env::start(Auth::Basic, ids.iter().map(|id| Vm::agent(id)).collect()).await;
    let (_run, _base) = watching(&env, POLL, &[], &agent_cn(&ids[0])).await;
    for id in &ids[1..] {
        env.director.delete_vm("cf", &format!("vm-{id}"));
    }
    env.log_count_reaches(ADMITTED, "held_removals=39", 1).await;
    assert!(
        env.admitted(&agent_cn(&ids[39])).await,
        "nobody is cut off by a partial pass\n{}",
        env.diagnostics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_for_a_deployment_the_director_still_lists_keeps_its_agents() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    env.director.create_deployment("other", vec![Vm::agent(B)]);
    let (_run, _base) = watching(&env, POLL, &[], &agent_cn(B)).await;
    env.director.set_vms_fault("other", Fault::status(404));
    env.director.record_event(
        NewEvent::new("update", "instance")
            .deployment("other")
            .instance("worker/0"),
    );
    env.log_count_reaches(ADMITTED, "still lists", 1).await;
    assert!(env.admitted(&agent_cn(B)).await, "{}", env.diagnostics());
    // Once it is really gone, the next event drops it.
    env.director.clear_vms_fault("other");
    assert!(env.director.delete_deployment("other"));
    within(
        &env,
        ADMITTED,
        "the deleted deployment's agent is refused",
        || async { !env.admitted(&agent_cn(B)).await },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_an_event_poll_in_flight() {
    let env = Env::start(Auth::Basic, vec![Vm::agent(A)]).await;
    let (mut run, base) = watching(&env, POLL, &[], &agent_cn(A)).await;
    env.director
        .set_fault(Endpoint::Events, Fault::delay(Duration::from_secs(120)));
    // Reads every 0.2 s, until one hangs: the last read stops moving for a second while the
    // loop is alive, so it is in that read.
    let last = std::sync::Mutex::new((serde_json::Value::Null, Instant::now()));
    within(&env, ADMITTED, "an event poll is in flight", || async {
        let read_at = watch_status(&base).await["events_read_at"].clone();
        let mut last = last.lock().unwrap();
        if read_at != last.0 {
            *last = (read_at, Instant::now());
            return false;
        }
        last.0.is_string() && last.1.elapsed() > Duration::from_secs(1)
    })
    .await;
    let signalled = Instant::now();
    run.signal(Signal::SIGTERM);
    let status = run.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", env.diagnostics());
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{}",
        env.diagnostics()
    );
}
