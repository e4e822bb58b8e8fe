//! Crash safety (§4.4, §6.4): the real binary is SIGKILLed at random points while it
//! replaces a large auth file, hundreds of times. After every kill the file must parse and be
//! exactly the old or the new desired state — never a mix, a truncation or empty — and the
//! temporary files of killed writes must not pile up.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bosh_nats_sync::authfile::{self, Observed};
use bosh_nats_sync::users::reference::Users;
use common::{Auth, Env};
use rand::{Rng, SeedableRng};
use sim::director::Vm;

/// Agents per state; every other one without permanent credentials, so ~1.5 users each.
const AGENTS: usize = 1000;
/// Wall-clock budget of the kill loop, and its iteration bounds.
const BUDGET: Duration = Duration::from_secs(25);
const MIN_ITERATIONS: usize = 60;
const MAX_ITERATIONS: usize = 400;

/// The agents of one state: `prefix-0000`… The two states share no agent, so any mix of them
/// is visible.
fn agents(prefix: &str) -> Vec<(String, bool)> {
    (0..AGENTS)
        .map(|i| (format!("{prefix}-{i:04}"), i % 2 == 0))
        .collect()
}

fn director_vms(agents: &[(String, bool)]) -> Vec<Vm> {
    agents
        .iter()
        .map(|(id, permanent)| Vm::agent(id).permanent(*permanent))
        .collect()
}

/// The desired users for `agents`, computed by the library.
fn expected(env: &Env, agents: &[(String, bool)]) -> Users {
    let agents: Vec<(&str, bool)> = agents.iter().map(|(id, p)| (id.as_str(), *p)).collect();
    env.expected_users(&agents)
}

/// The temporary files in the auth file's directory (the writer's `.auth-*.tmp`).
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// Which of the two states the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    A,
    B,
}

/// The two desired states, as values and as the bytes the writer renders for them.
struct States {
    a: Users,
    b: Users,
    a_bytes: Vec<u8>,
    b_bytes: Vec<u8>,
}

impl States {
    fn new(a: Users, b: Users) -> States {
        let (a_bytes, b_bytes) = (
            authfile::reference::render(&a),
            authfile::reference::render(&b),
        );
        States {
            a,
            b,
            a_bytes,
            b_bytes,
        }
    }

    /// Which state the file holds; fails the test for anything else. The writer is
    /// deterministic, so equal bytes are the quick way to equal values; any other content is
    /// parsed and compared as values.
    fn of(&self, path: &Path, context: &str) -> State {
        let bytes = std::fs::read(path).unwrap();
        if bytes == self.a_bytes {
            return State::A;
        }
        if bytes == self.b_bytes {
            return State::B;
        }
        let users = match authfile::reference::classify(&bytes) {
            Observed::Users(users) => users,
            other => panic!(
                "{context}: the auth file is not a users config ({}); {} bytes, ending {:?}",
                other.describe(),
                bytes.len(),
                String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(200)..])
            ),
        };
        if users.same_as(&self.a) {
            State::A
        } else if users.same_as(&self.b) {
            State::B
        } else {
            panic!(
                "{context}: the auth file parses but is neither state ({} users, A has {}, B has {})",
                users.len(),
                self.a.len(),
                self.b.len()
            )
        }
    }
}

/// A process that ignores SIGHUP, to receive the reloads: the point here is the file, and a
/// real nats-server re-parsing a megabyte-sized file on every iteration would only slow the
/// loop down. The real server reads the final file at the end.
async fn hup_sink(dir: &Path) -> (tokio::process::Child, std::path::PathBuf) {
    let child = tokio::process::Command::new("sh")
        .args(["-c", "trap '' HUP; exec sleep 600"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid_file = dir.join("sink.pid");
    std::fs::write(&pid_file, child.id().unwrap().to_string()).unwrap();
    (child, pid_file)
}

async fn once(env: &Env) -> tokio::process::Child {
    tokio::process::Command::new(common::binary())
        .arg("-c")
        .arg(&env.config_path)
        .arg("once")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// What the kills found.
#[derive(Debug, Default)]
struct Outcomes {
    /// Killed, and the file was still the old state.
    kept_old: usize,
    /// Killed, and the file was already the new state.
    got_new: usize,
    /// The process had finished before the kill.
    finished: usize,
    /// Killed while its temporary file existed (during the write).
    mid_write: usize,
    /// Kills after which a temporary file was left in the directory.
    left_temp: usize,
    /// The most temporary files seen at once.
    most_temps: usize,
}

impl Outcomes {
    fn record(&mut self, finished: bool, unchanged: bool, temp_seen: bool, temps: usize) {
        match (finished, unchanged) {
            (true, _) => self.finished += 1,
            (false, true) => self.kept_old += 1,
            (false, false) => self.got_new += 1,
        }
        if temp_seen && !finished {
            self.mid_write += 1;
        }
        if temps > 0 {
            self.left_temp += 1;
        }
        self.most_temps = self.most_temps.max(temps);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_leaves_the_old_or_the_new_file_and_no_pile_of_temp_files() {
    let env = Env::start(Auth::Basic, vec![]).await;
    let (state_a, state_b) = (agents("a"), agents("b"));
    let states = States::new(expected(&env, &state_a), expected(&env, &state_b));
    let (_sink, sink_pid) = hup_sink(env.dir.path()).await;
    let sink_pid = sink_pid.display().to_string();
    // Damping off: every toggle replaces all agents, which damping would rightly hold.
    env.write_config_full(
        60.0,
        &[
            ("nats.nats_server_executable", "\"\""),
            ("nats.nats_server_pid_file", sink_pid.as_str()),
            ("nats.monitoring_url", "\"\""),
            ("damping.enabled", "false"),
        ],
        "",
    );
    let dir = env.auth_file.parent().unwrap().to_owned();
    let set = |s: State| {
        env.director.set_deployment(
            "cf",
            director_vms(match s {
                State::A => &state_a,
                State::B => &state_b,
            }),
        )
    };

    // From the pre-start placeholder to state A: bootstrap writes first, which would
    // mislead the calibration.
    set(State::A);
    env.once(true).await;
    // Calibrate: how long one complete `once` takes, and when (after its start) the rename
    // replaces the file.
    let mut longest = Duration::ZERO;
    let mut rename_at = Vec::new();
    for s in [State::B, State::A, State::B, State::A] {
        set(s);
        let inode = common::identity(&env.auth_file).0;
        let started = Instant::now();
        let mut child = once(&env).await;
        let mut renamed = None;
        let status = loop {
            if renamed.is_none() && common::identity(&env.auth_file).0 != inode {
                renamed = Some(started.elapsed());
            }
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        assert!(status.success(), "{}", env.log());
        longest = longest.max(started.elapsed());
        rename_at.push(renamed.expect("the rename was seen"));
        assert_eq!(states.of(&env.auth_file, "calibration"), s);
    }
    let earliest = *rename_at.iter().min().unwrap();
    let latest = *rename_at.iter().max().unwrap();
    // Widened both ways: the timing varies from run to run.
    let around_rename =
        earliest.saturating_sub(Duration::from_millis(40))..latest + Duration::from_millis(20);
    eprintln!(
        "one `once` replacing {} bytes takes up to {longest:?}; renames seen at {rename_at:?}",
        std::fs::metadata(&env.auth_file).unwrap().len()
    );

    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut outcomes = Outcomes::default();
    let started = Instant::now();
    let mut iterations = 0;
    let mut before = states.of(&env.auth_file, "before the kills");
    while iterations < MAX_ITERATIONS && (iterations < MIN_ITERATIONS || started.elapsed() < BUDGET)
    {
        iterations += 1;
        let target = if before == State::A {
            State::B
        } else {
            State::A
        };
        set(target);
        // A killed predecessor's temporary file may still be there (until this process's
        // start-up removes it): only a new one means this process is writing.
        let stale = temp_files(&dir);
        let spawned = Instant::now();
        let mut child = once(&env).await;
        // A quarter of the kills anywhere in the process's life (a little beyond its usual end
        // included), a quarter around the rename, a quarter just after it, a quarter as soon as
        // the temporary file shows.
        let aim = rng.random_range(0..4);
        let mut temp_seen = false;
        let how = match aim {
            0 => {
                tokio::time::sleep(longest.mul_f64(rng.random_range(0.0..1.1))).await;
                "anywhere"
            }
            1 => {
                tokio::time::sleep(rng.random_range(around_rename.clone())).await;
                "around the rename"
            }
            2 => {
                // Right after the rename, before the process is done: the new file must be
                // whole. (The window is a few milliseconds; aiming at it by time alone hits
                // it only now and then.)
                let old = common::identity(&env.auth_file);
                while spawned.elapsed() < longest * 2
                    && child.try_wait().unwrap().is_none()
                    && common::identity(&env.auth_file) == old
                {
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
                "just after the rename"
            }
            _ => {
                let extra = Duration::from_micros(rng.random_range(0..3000));
                while spawned.elapsed() < longest * 2 && child.try_wait().unwrap().is_none() {
                    if temp_files(&dir).iter().any(|t| !stale.contains(t)) {
                        temp_seen = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
                // Blocking on purpose: tokio's timer only has millisecond resolution.
                std::thread::sleep(extra);
                "mid-write"
            }
        };
        let killed_at = spawned.elapsed();
        let exited_by_itself = child.try_wait().unwrap().is_some();
        let _ = child.start_kill();
        child.wait().await.unwrap();
        let context =
            format!("iteration {iterations} (seed {seed}, killed {how} after {killed_at:?})");
        let after = states.of(&env.auth_file, &context);
        let temps = temp_files(&dir);
        outcomes.record(exited_by_itself, after == before, temp_seen, temps.len());
        // Each start-up removes what earlier killed writes left, so at most the last one's
        // temporary file can be there.
        assert!(
            temps.len() <= 1,
            "{context}: temporary files pile up: {temps:?}"
        );
        before = after;
    }
    eprintln!(
        "{iterations} kills in {:?}: {outcomes:?}",
        started.elapsed()
    );
    assert!(iterations >= MIN_ITERATIONS);
    assert!(
        outcomes.kept_old > 0 && outcomes.got_new > 0 && outcomes.mid_write > 0,
        "kills landed before, during and after the write: {outcomes:?}"
    );

    // One more complete write: no temporary file stays behind, and the real nats-server
    // accepts the result.
    let before = states.of(&env.auth_file, "at the end");
    let target = if before == State::A {
        State::B
    } else {
        State::A
    };
    set(target);
    env.write_config_full(60.0, &[("damping.enabled", "false")], "");
    let loaded = env.nats.config_load_time().await.unwrap();
    env.once(true).await;
    assert_eq!(states.of(&env.auth_file, "the final write"), target);
    assert_eq!(temp_files(&dir), Vec::<String>::new());
    assert_ne!(
        env.nats.config_load_time().await.unwrap(),
        loaded,
        "nats-server loaded the final file (the write was verified)"
    );
    let (id, _) = &match target {
        State::A => &state_a,
        State::B => &state_b,
    }[1];
    assert!(env.admitted(&sim::pki::agent_cn(id)).await);
}
