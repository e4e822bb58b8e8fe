//! Revocation end to end (contract §12.6): the real `bosh-nats-sync -c CONFIG` in callout mode
//! closing, through nats-server's system account, the live connections of agents the admitted
//! set no longer allows — on real nats-servers (`$NATS_SERVER`: `scripts/test` runs this file
//! under 2.14.5 and 2.15.1; 2.9.10 has no auth callout, and these tests end at once under it,
//! `tests/callout.rs` showing the program refusing it) with TLS `verify_and_map` and real
//! agents holding their connections, against the simulated director and its event log.
//!
//! Whether a connection is open is read from nats-server's own `/connz` (by `cid`), so "every
//! other connection untouched" means: the very same connections, not reconnected ones.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Auth, DIRECTOR_CN, Env, HM_CN, within};
use sim::director::Vm;
use sim::events::NewEvent;
use sim::nats::{NatsClient, NatsServer};
use sim::pki::{agent_cn, bootstrap_agent_cn, bosh_subject};

const A: &str = "0c0a1100-0000-4000-8000-00000000000a";
const B: &str = "0c0a1100-0000-4000-8000-00000000000b";
const C: &str = "0c0a1100-0000-4000-8000-00000000000c";
const N: &str = "0c0a1100-0000-4000-8000-0000000000ee";

/// The contract (§12.6): a deleted VM's live connection is closed within this of the VM's
/// delete event, with `intervals.watch` 1 s.
const CLOSED_WITHIN: Duration = Duration::from_secs(2);
/// How long the start-up may take on a loaded 2-core machine (it is far quicker).
const STARTUP: Duration = Duration::from_secs(30);
/// Generous bounds for what takes a second or two.
const SOON: Duration = Duration::from_secs(15);

/// Whether the nats-server under test has the callout; under 2.9.10 the tests end at once
/// (`tests/callout.rs` shows the program refusing it, `tests/init.rs` the server refusing
/// init's file).
fn has_callout() -> bool {
    let version = sim::nats::version(&common::nats_server_path()).unwrap();
    if !sim::nats::has_auth_callout(&version) {
        eprintln!("nats-server {version} has no auth callout: nothing to revoke");
        return false;
    }
    true
}

/// Callout mode with these VMs in deployment `cf`, the director's event log written (so the
/// watch is healthy and follows it), the watch every second, the HTTP server on.
async fn callout_env(vms: Vec<Vm>) -> Env {
    let env = Env::start_callout(Auth::Basic, vms).await;
    env.director.record_event(NewEvent::new("acquire", "lock"));
    env
}

/// Writes the configuration (the watch every second, `keys` on top) and starts the program;
/// waits for `/readyz`. Returns the process and the HTTP base URL.
async fn running(env: &Env, keys: &[(&str, &str)]) -> (common::Running, String) {
    let mut all = vec![("intervals.watch", "1")];
    all.extend_from_slice(keys);
    let base = env.write_config_http(60.0, &all, "");
    let run = start(env, &base).await;
    (run, base)
}

/// Starts the program on the configuration as written, and waits for `/readyz`.
async fn start(env: &Env, base: &str) -> common::Running {
    let run = env.spawn_run();
    within(env, STARTUP, "/readyz answers 200", || async {
        common::http()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    run
}

async fn status(base: &str) -> serde_json::Value {
    common::http()
        .get(format!("{base}/status"))
        .send()
        .await
        .expect("/status answers")
        .json()
        .await
        .expect("/status is JSON")
}

async fn metric(base: &str, series: &str) -> Option<f64> {
    let text = common::http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The client connections `nats` holds and has admitted, by the CN of their certificate:
/// their `cid`s. (A connection still waiting for its answer is listed too, without
/// `authorized_user` or `issuer_key`: left out.)
async fn connections(nats: &NatsServer) -> BTreeMap<String, Vec<u64>> {
    let connz = nats.connz().await.expect("/connz answers");
    let mut by_cn: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for c in connz["connections"].as_array().into_iter().flatten() {
        if c.get("authorized_user").is_none() && c.get("issuer_key").is_none() {
            continue;
        }
        let Some(subject) = c["tls_peer_certs"][0]["subject"].as_str() else {
            continue;
        };
        let cn = subject
            .split(',')
            .find_map(|rdn| rdn.strip_prefix("CN="))
            .unwrap_or(subject);
        by_cn
            .entry(cn.to_owned())
            .or_default()
            .push(c["cid"].as_u64().unwrap());
    }
    by_cn
}

/// The one connection `nats` holds for `cn`, waiting for it to show.
async fn cid_of(env: &Env, nats: &NatsServer, cn: &str) -> u64 {
    let found = common::poll(SOON, || async {
        match connections(nats).await.get(cn).map(Vec::as_slice) {
            Some([one]) => Ok(*one),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    found.unwrap_or_else(|last| panic!("{cn} is not connected once: {last}\n{}", env.diagnostics()))
}

/// Whether `nats` still holds connection `cid` of `cn`.
async fn holds(nats: &NatsServer, cn: &str, cid: u64) -> bool {
    connections(nats)
        .await
        .get(cn)
        .is_some_and(|cids| cids.contains(&cid))
}

/// Waits until `nats` no longer holds connection `cid` of `cn`; how long that took.
async fn closed(env: &Env, nats: &NatsServer, cn: &str, cid: u64, within: Duration) -> Duration {
    let start = Instant::now();
    common::within(
        env,
        within,
        &format!("{cn}'s connection {cid} is closed"),
        || async { !holds(nats, cn, cid).await },
    )
    .await;
    start.elapsed()
}

/// Agents (and the director and the health monitor) holding their connections.
struct Held {
    /// Kept open: dropping a client closes its connection.
    _clients: Vec<NatsClient>,
    /// CN → cid.
    cids: BTreeMap<String, u64>,
}

impl Held {
    async fn connect(env: &Env, nats: &NatsServer, cns: &[String]) -> Held {
        let mut clients = Vec::new();
        let mut cids = BTreeMap::new();
        for cn in cns {
            clients.push(
                sim::nats::connect(nats.client_url(), &env.files.ca_cert, &env.cert(cn))
                    .await
                    .unwrap_or_else(|e| panic!("{cn} connects: {e}")),
            );
            cids.insert(cn.clone(), cid_of(env, nats, cn).await);
        }
        Held {
            _clients: clients,
            cids,
        }
    }

    fn cid(&self, cn: &str) -> u64 {
        self.cids[cn]
    }

    /// Asserts that every connection but `except`'s is still the very same one.
    async fn untouched(&self, env: &Env, nats: &NatsServer, except: &[&str]) {
        let now = connections(nats).await;
        for (cn, cid) in &self.cids {
            if except.contains(&cn.as_str()) {
                continue;
            }
            assert!(
                now.get(cn).is_some_and(|cids| cids.contains(cid)),
                "{cn}'s connection {cid} is untouched: {now:?}\n{}",
                env.diagnostics()
            );
        }
    }
}

fn the_usual(ids: &[&str]) -> Vec<String> {
    let mut cns: Vec<String> = ids.iter().map(|id| agent_cn(id)).collect();
    cns.extend([DIRECTOR_CN.to_owned(), HM_CN.to_owned()]);
    cns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_vm_s_agent_is_closed_within_two_seconds_and_nobody_else() {
    if !has_callout() {
        return;
    }
    // A and B in one deployment with permanent credentials, C still booting (bootstrap).
    let env = callout_env(vec![
        Vm::agent(A).permanent(true),
        Vm::agent(B).permanent(true),
        Vm::agent(C),
    ])
    .await;
    let loaded_at = env.nats.config_load_time().await.unwrap();
    let (_run, base) = running(&env, &[]).await;
    let mut cns = the_usual(&[A, B]);
    cns.push(bootstrap_agent_cn(C));
    let held = Held::connect(&env, &env.nats, &cns).await;
    let a = agent_cn(A);

    let deleted = Instant::now();
    env.director.delete_vm("cf", &format!("vm-{A}"));
    let took = closed(&env, &env.nats, &a, held.cid(&a), SOON).await;
    eprintln!(
        "nats-server {}: A's connection closed {took:?} after its VM's delete event",
        env.nats.version()
    );
    assert!(
        deleted.elapsed() <= CLOSED_WITHIN,
        "closed {:?} after the delete event, over the {CLOSED_WITHIN:?} of §12.6\n{}",
        deleted.elapsed(),
        env.diagnostics()
    );
    // The pass that took A back, and the revocation that followed it (their timestamps).
    for line in env.log().lines().filter(|l| {
        l.contains("events: 1 deployment") && l.contains("pass changed")
            || l.contains("closed a connection")
    }) {
        eprintln!("{line}");
    }
    held.untouched(&env, &env.nats, &[&a]).await;
    assert_eq!(
        env.nats.config_load_time().await.unwrap(),
        loaded_at,
        "no reload\n{}",
        env.diagnostics()
    );
    // It cannot come back.
    assert!(!env.admitted(&a).await);

    let kicked = r#"bosh_nats_sync_callout_revocations_total{result="kicked"}"#;
    assert_eq!(metric(&base, kicked).await, Some(1.0));
    assert_eq!(
        metric(
            &base,
            r#"bosh_nats_sync_callout_revocations_total{result="error"}"#
        )
        .await,
        Some(0.0)
    );
    assert!(
        metric(&base, "bosh_nats_sync_callout_connections_observed").await >= Some(5.0),
        "the service, A, B, C, the director and the health monitor were seen"
    );
    let status = status(&base).await;
    let last = &status["callout"]["last_revocations"];
    assert_eq!(last.as_array().map(Vec::len), Some(1), "{status}");
    assert_eq!(last[0]["agent"], A, "{status}");
    assert_eq!(last[0]["reason"], "unknown_agent", "{status}");
    assert_eq!(last[0]["result"], "kicked", "{status}");
    assert!(last[0]["server"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(last[0]["at"].is_string());
    let log = env.log();
    let line = log
        .lines()
        .find(|l| l.contains("closed a connection the admitted set no longer allows"))
        .unwrap_or_else(|| panic!("a log line per revocation\n{log}"));
    assert!(
        line.contains(A) && line.contains("unknown agent"),
        "the agent and the reason: {line}"
    );
    // Each check's observation is logged with what it cost.
    let observed = log
        .lines()
        .rfind(|l| l.contains("observed nats-server's connections"))
        .unwrap_or_else(|| panic!("a log line per observation\n{log}"));
    let field = |name: &str| -> f64 {
        observed
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("{name}= in {observed}"))
    };
    assert_eq!(field("servers"), 1.0, "{observed}");
    assert!(field("connections") >= 5.0, "{observed}");
    assert_eq!(field("requests"), 1.0, "one page holds them: {observed}");
    assert_eq!(field("replies"), 1.0, "{observed}");
    assert!(field("bytes") > 1000.0, "{observed}");
    assert!(field("duration_ms") > 0.0, "{observed}");
}

/// nats-server lists at most a page of connections per CONNZ reply (1024 unless asked
/// otherwise; a large director holds more): the observation asks again from the next
/// offset until every connection has been seen. Shown on a real server with pages of 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observation_pages_through_every_connection() {
    use bosh_nats_sync::callout::connz::{Gather, observe, overlap};
    if !has_callout() {
        return;
    }
    let ids = [A, B, C, N];
    let vms = ids.iter().map(|id| Vm::agent(id).permanent(true)).collect();
    let env = callout_env(vms).await;
    let (_run, _base) = running(&env, &[]).await;
    let held = Held::connect(&env, &env.nats, &the_usual(&ids)).await;
    // The system account's view, through the service's own certificate as the program has it.
    let service = &env.callout.as_ref().unwrap().service;
    let system = sim::nats::connect(env.nats.client_url(), &env.files.ca_cert, service)
        .await
        .expect("the service's certificate connects");
    let total = env.nats.connz().await.unwrap()["total"].as_u64().unwrap() as usize;
    assert!(
        total >= 8,
        "4 agents, the director, the health monitor, two services"
    );
    let gather = Gather {
        page: 3,
        ..Gather::default()
    };
    let observation = observe(system.client(), &gather).await.expect("observed");
    assert!(
        observation.incomplete.is_empty(),
        "{:?}",
        observation.incomplete
    );
    assert_eq!(observation.servers.len(), 1);
    let seen: Vec<u64> = observation.servers[0]
        .connections
        .iter()
        .map(|c| c.cid)
        .collect();
    for (cn, cid) in &held.cids {
        assert!(
            seen.contains(cid),
            "{cn}'s connection {cid} seen in {seen:?}"
        );
    }
    assert!(seen.len() >= total, "{} of {total} seen", seen.len());
    // Pages of 3, each after the first re-reading one of the page before (connections that
    // close between two pages move the later ones back).
    assert_eq!(overlap(3), 1);
    assert_eq!(
        observation.requests,
        1 + (total - 3).div_ceil(2),
        "one request per page of 3, 2 of them new"
    );
    assert_eq!(observation.replies, observation.requests);
    assert!(observation.bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_connection_is_closed_once_its_vm_has_permanent_credentials() {
    if !has_callout() {
        return;
    }
    let env = callout_env(vec![Vm::agent(N), Vm::agent(B)]).await;
    let (_run, base) = running(&env, &[]).await;
    // The agent booted with its bootstrap certificate; its permanent one is connected too
    // (as right after it received it), and another VM is still booting.
    let boot = bootstrap_agent_cn(N);
    let mut cns = the_usual(&[N]);
    cns.extend([boot.clone(), bootstrap_agent_cn(B)]);
    let held = Held::connect(&env, &env.nats, &cns).await;

    env.director.update_vms("cf", |vms| {
        for vm in vms.iter_mut().filter(|vm| vm.cid == format!("vm-{N}")) {
            vm.permanent_nats_credentials = Some(true);
        }
    });
    env.director.record_event(
        NewEvent::new("update", "vm")
            .deployment("cf")
            .object_name(&format!("vm-{N}")),
    );
    closed(&env, &env.nats, &boot, held.cid(&boot), SOON).await;
    held.untouched(&env, &env.nats, &[&boot]).await;
    assert!(!env.admitted(&boot).await, "refused from now on");
    let status = status(&base).await;
    let last = &status["callout"]["last_revocations"][0];
    assert_eq!(
        (last["agent"].as_str(), last["reason"].as_str()),
        (Some(N), Some("bootstrap_refused")),
        "{status}"
    );
    assert!(
        env.log().contains("bootstrap certificate not allowed"),
        "{}",
        env.log()
    );
}

/// A restarted program revokes what an earlier one admitted: at start-up (its first full
/// pass) what was deleted while it was down, then, like the first, each VM deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_program_closes_agents_an_earlier_one_admitted() {
    if !has_callout() {
        return;
    }
    let env = callout_env(vec![
        Vm::agent(A).permanent(true),
        Vm::agent(B).permanent(true),
        Vm::agent(C).permanent(true),
    ])
    .await;
    let (mut first, base) = running(&env, &[]).await;
    let held = Held::connect(&env, &env.nats, &the_usual(&[A, B, C])).await;
    first.child.kill().await.unwrap();
    // Down: nobody revokes. A's VM is deleted meanwhile; its connection stays.
    env.director.delete_vm("cf", &format!("vm-{A}"));
    let (a, b) = (agent_cn(A), agent_cn(B));
    assert!(holds(&env.nats, &a, held.cid(&a)).await);

    let _second = start(&env, &base).await;
    closed(&env, &env.nats, &a, held.cid(&a), SOON).await;
    held.untouched(&env, &env.nats, &[&a]).await;
    // Then B's VM: closed within the bound, as by the first process.
    let deleted = Instant::now();
    env.director.delete_vm("cf", &format!("vm-{B}"));
    closed(&env, &env.nats, &b, held.cid(&b), SOON).await;
    assert!(
        deleted.elapsed() <= CLOSED_WITHIN,
        "closed {:?} after the delete event\n{}",
        deleted.elapsed(),
        env.diagnostics()
    );
    held.untouched(&env, &env.nats, &[&a, &b]).await;
}

/// Damping holds a mass removal: the agents stay in the admitted set, and so do their
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_removal_held_by_damping_closes_nobody() {
    if !has_callout() {
        return;
    }
    let ids: Vec<String> = (0..12)
        .map(|i| format!("0c0a1100-0000-4000-8000-0000000001{i:02}"))
        .collect();
    let env = callout_env(ids.iter().map(|id| Vm::agent(id).permanent(true)).collect()).await;
    // Held for good during the test; full passes every second while it holds.
    let base = env.write_config_http(
        1.0,
        &[("intervals.watch", "1"), ("damping.confirmations", "1000")],
        "",
    );
    let _run = start(&env, &base).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let held = Held::connect(&env, &env.nats, &the_usual(&refs[..4])).await;
    for id in &ids[..11] {
        env.director.delete_vm("cf", &format!("vm-{id}"));
    }
    env.log_count_reaches(SOON, "holding a mass removal of agents", 3)
        .await;
    held.untouched(&env, &env.nats, &[]).await;
    for result in ["kicked", "gone", "error"] {
        assert_eq!(
            metric(
                &base,
                &format!(r#"bosh_nats_sync_callout_revocations_total{{result="{result}"}}"#)
            )
            .await,
            Some(0.0),
            "{result}"
        );
    }
    assert!(
        metric(&base, "bosh_nats_sync_callout_connections_observed").await >= Some(7.0),
        "the held passes were full passes, each checked"
    );
}

/// nats-server stopped: the program keeps running; back up, it answers and revokes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_server_stopped_the_program_keeps_running_and_revokes_once_it_is_back() {
    if !has_callout() {
        return;
    }
    let mut env = callout_env(vec![
        Vm::agent(A).permanent(true),
        Vm::agent(B).permanent(true),
        Vm::agent(C).permanent(true),
    ])
    .await;
    let (mut run, base) = running(&env, &[]).await;
    // Agents that reconnect for as long as it takes, as the BOSH agent does.
    let mut agents = Vec::new();
    for id in [A, B, C] {
        agents.push(reconnecting(&env, &agent_cn(id)).await);
    }
    env.nats.stop().await;
    env.director.delete_vm("cf", &format!("vm-{C}"));
    env.log_count_reaches(SOON, "pass changed", 2).await;
    let healthz = common::http()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    assert!(run.is_running(), "the program keeps running");

    env.nats.start_again().await.unwrap();
    // A and B are back (C's VM is gone: refused); the program answered them.
    let (a, b, c) = (agent_cn(A), agent_cn(B), agent_cn(C));
    let a_cid = cid_of(&env, &env.nats, &a).await;
    let b_cid = cid_of(&env, &env.nats, &b).await;
    assert!(
        !connections(&env.nats).await.contains_key(&c),
        "C keeps trying, and is refused"
    );
    // And revokes again: A's VM deleted, A closed within the bound.
    within(&env, SOON, "the responder is connected again", || async {
        metric(&base, "bosh_nats_sync_callout_connected").await == Some(1.0)
    })
    .await;
    let deleted = Instant::now();
    env.director.delete_vm("cf", &format!("vm-{A}"));
    closed(&env, &env.nats, &a, a_cid, SOON).await;
    assert!(
        deleted.elapsed() <= CLOSED_WITHIN,
        "closed {:?} after the delete event\n{}",
        deleted.elapsed(),
        env.diagnostics()
    );
    assert!(holds(&env.nats, &b, b_cid).await);
    drop(agents);
}

/// Connects as `cn` with a client that reconnects for ever (the BOSH agent does), and waits
/// until nats-server lists it.
async fn reconnecting(env: &Env, cn: &str) -> async_nats::Client {
    let cert = env.cert(cn);
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(env.files.ca_cert.clone())
        .add_client_certificate(cert.cert, cert.key)
        .max_reconnects(None)
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(env.nats.client_url())
        .await
        .unwrap_or_else(|e| panic!("{cn} connects: {e}"));
    cid_of(env, &env.nats, cn).await;
    client
}

/// A TCP proxy between the program and nats-server, to make nats-server unreachable for the
/// program alone: the agents keep their direct connections.
struct Proxy {
    url: String,
    cut: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("tls://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("tls://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (is_cut, all) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(Ordering::SeqCst) {
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                all.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            url,
            cut,
            conns,
            accept,
        }
    }

    /// Drops every connection through it and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// nats-server unreachable for the program alone: the agents stay connected, the VM's
/// deletion cannot be applied — and is, once nats-server can be reached again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_nats_server_could_not_take_is_made_once_it_is_reachable() {
    if !has_callout() {
        return;
    }
    let env = callout_env(vec![
        Vm::agent(A).permanent(true),
        Vm::agent(B).permanent(true),
    ])
    .await;
    let proxy = Proxy::start(env.nats.client_url()).await;
    let base = env.write_config_http(60.0, &[("intervals.watch", "1")], "");
    let config = std::fs::read_to_string(&env.config_path).unwrap();
    let direct = format!("url: {}", env.nats.client_url());
    assert!(config.contains(&direct), "{config}");
    std::fs::write(
        &env.config_path,
        config.replace(&direct, &format!("url: {}", proxy.url)),
    )
    .unwrap();
    let mut run = start(&env, &base).await;
    let held = Held::connect(&env, &env.nats, &the_usual(&[A, B])).await;
    let a = agent_cn(A);

    proxy.cut();
    env.director.delete_vm("cf", &format!("vm-{A}"));
    env.log_count_reaches(SOON, "a revocation check could not see every connection", 1)
        .await;
    assert!(
        holds(&env.nats, &a, held.cid(&a)).await,
        "unreachable: not closed yet"
    );
    assert!(run.is_running());

    let restored = Instant::now();
    proxy.restore();
    closed(&env, &env.nats, &a, held.cid(&a), Duration::from_secs(30)).await;
    eprintln!(
        "closed {:?} after nats-server could be reached again",
        restored.elapsed()
    );
    held.untouched(&env, &env.nats, &[&a]).await;
    assert_eq!(
        metric(
            &base,
            r#"bosh_nats_sync_callout_revocations_total{result="kicked"}"#
        )
        .await,
        Some(1.0)
    );
}

/// `diff` in callout mode shows the connections a pass would close — and says so when it
/// cannot ask nats-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_shows_the_connections_a_pass_would_close() {
    if !has_callout() {
        return;
    }
    let mut env = callout_env(vec![
        Vm::agent(A).permanent(true),
        Vm::agent(B).permanent(true),
    ])
    .await;
    let (mut run, _base) = running(&env, &[]).await;
    let held = Held::connect(&env, &env.nats, &the_usual(&[A, B])).await;
    run.child.kill().await.unwrap();
    env.director.delete_vm("cf", &format!("vm-{A}"));
    let out = env.run(&["diff"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let a = agent_cn(A);
    assert!(
        stdout.contains(&format!(
            "x {} on {} (connection {}): unknown agent (a pass would close it)",
            bosh_subject(&a),
            env.nats.varz().await.unwrap()["server_name"]
                .as_str()
                .unwrap(),
            held.cid(&a)
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("nats-server (1 servers): 2 agent connections, 1 a pass would close"),
        "{stdout}"
    );
    // Nothing was closed: diff changes nothing.
    held.untouched(&env, &env.nats, &[]).await;

    env.nats.stop().await;
    let out = env.run(&["diff"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("cannot be asked for its connections")
            && stdout.contains("the connections a pass would close are not shown"),
        "{stdout}"
    );
}

/// Three routed nats-servers, each started on `init`'s callout file (one issuer), one program
/// connected to the first answering for all three: an agent connected to another node than
/// the program's is closed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_an_agent_on_another_node_is_closed_where_it_is_connected() {
    if !has_callout() {
        return;
    }
    let mut env = callout_env(vec![
        Vm::agent(A).permanent(true),
        Vm::agent(B).permanent(true),
        Vm::agent(C).permanent(true),
    ])
    .await;
    let routes: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let route_urls = routes
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut nodes = Vec::new();
    for (i, port) in routes.iter().enumerate() {
        let dir = env.dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        // Each node its own copy of the file init wrote (node 0 the program's own).
        let auth = if i == 0 {
            env.auth_file.clone()
        } else {
            let copy = dir.join("auth.json");
            std::fs::copy(&env.auth_file, &copy).unwrap();
            copy
        };
        let extra = format!(
            "server_name: n{i}\ncluster {{\n  name: c\n  listen: \"127.0.0.1:{port}\"\n  routes: [{route_urls}]\n}}\n"
        );
        nodes.push(
            NatsServer::start_configured(
                &common::nats_server_path(),
                &dir,
                &env.pki,
                &auth,
                &extra,
            )
            .await
            .unwrap(),
        );
    }
    for node in &nodes {
        within(&env, SOON, "the three nodes are routed", || async {
            node.monitor("/routez")
                .await
                .is_ok_and(|r| r["num_routes"].as_u64() >= Some(2))
        })
        .await;
    }
    let mut nodes = nodes.into_iter();
    env.nats = nodes.next().unwrap();
    let others: Vec<NatsServer> = nodes.collect();
    let (_run, base) = running(&env, &[]).await;
    // A on n1, B on n2, C, the director and the health monitor on n0.
    let a = Held::connect(&env, &others[0], &[agent_cn(A)]).await;
    let b = Held::connect(&env, &others[1], &[agent_cn(B)]).await;
    let rest = Held::connect(&env, &env.nats, &the_usual(&[C])).await;

    let deleted = Instant::now();
    env.director.delete_vm("cf", &format!("vm-{A}"));
    closed(&env, &others[0], &agent_cn(A), a.cid(&agent_cn(A)), SOON).await;
    assert!(
        deleted.elapsed() <= CLOSED_WITHIN,
        "closed on n1 {:?} after the delete event\n{}",
        deleted.elapsed(),
        env.diagnostics()
    );
    b.untouched(&env, &others[1], &[]).await;
    rest.untouched(&env, &env.nats, &[]).await;
    let status = status(&base).await;
    assert_eq!(
        status["callout"]["last_revocations"][0]["server"], "n1",
        "{status}"
    );
    assert!(
        metric(&base, "bosh_nats_sync_callout_connections_observed").await >= Some(6.0),
        "every node's connections were seen: the service, C, the director and the health \
         monitor on n0, A on n1, B on n2"
    );
    // B, on the third node, too.
    env.director.delete_vm("cf", &format!("vm-{B}"));
    closed(&env, &others[1], &agent_cn(B), b.cid(&agent_cn(B)), SOON).await;
    rest.untouched(&env, &env.nats, &[]).await;
}
