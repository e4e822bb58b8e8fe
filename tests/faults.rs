//! The fault matrix (hardening; §2.4, §4.4, §5, §6.3): the real binary in run mode
//! against the simulated director/UAA and a real nats-server. For every fault: the auth file
//! is only ever the old or the new desired state (never partial or empty), the failure is
//! counted under its own `reason` in `/metrics` and shown in `/status`, the loop backs off
//! instead of spinning, and once the fault clears the file converges to the new desired
//! state and nats-server loads it — without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bosh_nats_sync::authfile::{self, Observed};
use bosh_nats_sync::users::reference::Users;
use common::{Auth, Env, http};
use serde_json::Value;
use sim::director::{Endpoint, Vm};
use sim::fault::Fault;
use sim::nats::NatsServer;
use sim::pki::agent_cn;

/// Agents before the fault (`cf`: A, `db`: C) and added while it lasts (`cf`: B, `db`: D).
const A: &str = "0a1b2c3d-0000-4000-8000-00000000000a";
const B: &str = "0a1b2c3d-0000-4000-8000-00000000000b";
const C: &str = "0a1b2c3d-0000-4000-8000-00000000000c";
const D: &str = "0a1b2c3d-0000-4000-8000-00000000000d";

/// Generous for a debug build on a busy 2-core machine; every wait returns as soon as its
/// condition holds.
const WITHIN: Duration = Duration::from_secs(30);
/// `intervals.backoff_min`: no two failed passes start closer together than this.
const BACKOFF_MIN: f64 = 0.2;

// ---------------------------------------------------------------------------------------
// The faults.

/// One fault: how it is injected and cleared, and how the program must classify it.
#[derive(Debug, Clone)]
enum Inject {
    /// A fault rule on a director endpoint.
    Director(Endpoint, Fault),
    /// A fault rule on one deployment's `/vms` (after `/deployments` succeeded).
    Vms(&'static str, Fault),
    /// UAA refuses connections.
    UaaDown,
    /// UAA signs tokens with a key that does not match `director.uaa_public_key`.
    UaaWrongKey,
    /// The auth file's directory is a read-only bind mount (root ignores mode bits).
    ReadOnlyDir,
    /// The auth file's directory is a full tmpfs.
    DiskFull,
    /// The pid file is gone.
    PidMissing,
    /// The pid file names a process that has exited.
    PidStale,
    /// nats-server is killed; a new one comes back on the same monitoring port.
    NatsDown,
    /// nats-server's own config becomes unparseable, so it rejects every reload.
    ReloadRejected,
}

/// How nats-server is told to reload in a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// `nats-server --signal reload=PIDFILE` (the BOSH job's way).
    Executable,
    /// SIGHUP to the pid read from the pid file (the sidecar's way).
    Sighup,
}

/// One row of the matrix.
struct Case {
    auth: Auth,
    signal: Signal,
    inject: Inject,
    /// Extra `("section.key", "value")` config settings.
    keys: &'static [(&'static str, &'static str)],
    /// The `reason` label the failures must be counted under, and no other.
    reason: &'static str,
    /// Text the error message in `/status` must hold, to show it is this fault that struck.
    message: Option<&'static str>,
}

impl Case {
    fn new(inject: Inject, reason: &'static str) -> Case {
        Case {
            auth: Auth::Basic,
            signal: Signal::Executable,
            inject,
            keys: &[],
            reason,
            message: None,
        }
    }

    fn message(mut self, text: &'static str) -> Case {
        self.message = Some(text);
        self
    }

    fn uaa(mut self) -> Case {
        self.auth = Auth::Uaa;
        self
    }

    fn sighup(mut self) -> Case {
        self.signal = Signal::Sighup;
        self
    }

    fn keys(mut self, keys: &'static [(&'static str, &'static str)]) -> Case {
        self.keys = keys;
        self
    }

    /// Whether the pass writes the file before it fails: reload failures happen after the
    /// write, every other fault before it.
    fn writes_before_failing(&self) -> bool {
        matches!(
            self.inject,
            Inject::PidMissing | Inject::PidStale | Inject::NatsDown | Inject::ReloadRejected
        )
    }

    /// Whether the auth file must live in a directory of its own (to mount over it).
    fn own_auth_dir(&self) -> bool {
        matches!(self.inject, Inject::ReadOnlyDir | Inject::DiskFull)
    }
}

// ---------------------------------------------------------------------------------------
// Helpers: expected state, the HTTP endpoints, mounts.

fn vm(id: &str) -> Vm {
    Vm::agent(id).permanent(true)
}

/// The desired users for these agents, all with permanent credentials.
fn expected(env: &Env, agents: &[&str]) -> Users {
    let agents: Vec<(&str, bool)> = agents.iter().map(|id| (*id, true)).collect();
    env.expected_users(&agents)
}

/// The file's users, failing the test for anything that is not a users config.
fn file_users(path: &Path) -> Users {
    let bytes = std::fs::read(path).unwrap();
    match authfile::reference::classify(&bytes) {
        Observed::Users(users) => users,
        other => panic!(
            "the auth file is not a users config ({}):\n{}",
            other.describe(),
            String::from_utf8_lossy(&bytes)
        ),
    }
}

/// Files the writer left in the auth file's directory: with `whole_dir`, everything but the
/// auth file (the directory is the writer's alone); otherwise hidden or `.tmp` files (the
/// directory also holds the rest of the test's files).
fn strays(auth_file: &Path, whole_dir: bool) -> Vec<String> {
    let name = auth_file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    std::fs::read_dir(auth_file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| *n != name && (whole_dir || n.starts_with('.') || n.ends_with(".tmp")))
        .collect()
}

/// One look at the running process: `/metrics` and `/status`. `None` while the HTTP server
/// is not up yet.
struct Look {
    metrics: String,
    status: Value,
}

impl Look {
    /// `/metrics` first, then `/status`: the status is never older than the metrics.
    async fn take(client: &reqwest::Client, base: &str) -> Option<Look> {
        let metrics = client.get(format!("{base}/metrics")).send().await.ok()?;
        let metrics = metrics.text().await.ok()?;
        let status = client.get(format!("{base}/status")).send().await.ok()?;
        let status = status.json().await.ok()?;
        Some(Look { metrics, status })
    }

    /// The value of one series, e.g. `bosh_nats_sync_errors_total{reason="status"}`; 0 when
    /// absent.
    fn sample(&self, series: &str) -> f64 {
        self.metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    fn errors(&self, reason: &str) -> f64 {
        self.sample(&format!(
            "bosh_nats_sync_errors_total{{reason=\"{reason}\"}}"
        ))
    }

    /// All failed passes, whatever their reason.
    fn all_errors(&self) -> f64 {
        self.metrics
            .lines()
            .filter(|l| l.starts_with("bosh_nats_sync_errors_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    fn last_result(&self) -> &str {
        self.status["last_pass"]["result"].as_str().unwrap_or("")
    }
}

/// A mount over a test directory, lazily unmounted when dropped (also on a failed test).
struct Mount(PathBuf);

impl Mount {
    fn run(args: &[&str]) {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("mount/umount runs");
        assert!(
            out.status.success(),
            "{args:?} failed (these tests run as root, which may mount): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `dir` becomes read-only for everyone, root included.
    fn read_only(dir: &Path) -> Mount {
        let d = dir.to_str().unwrap();
        Mount::run(&["mount", "--bind", d, d]);
        let mount = Mount(dir.to_owned());
        Mount::run(&["mount", "-o", "remount,bind,ro", d]);
        mount
    }

    /// A `size`-byte tmpfs over `dir`.
    fn tmpfs(dir: &Path, size: &str) -> Mount {
        let d = dir.to_str().unwrap();
        Mount::run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            d,
        ]);
        Mount(dir.to_owned())
    }

    fn unmount(self) {
        Mount::run(&["umount", self.0.to_str().unwrap()]);
        std::mem::forget(self);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the filesystem of `dir` with `dir/filler` until a write fails for lack of space.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = [0u8; 4096];
    loop {
        match f.write(&block).and_then(|n| f.sync_all().map(|()| n)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
}

/// A script that starts nats-server with its monitoring endpoint on `port` (the sim picks
/// random ports), so a restarted server answers on the URL the controller was given.
fn nats_on_monitoring_port(dir: &Path, port: u16) -> PathBuf {
    let script = dir.join("nats-server-fixed-monitoring");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# $1 = -c, $2 = the config the sim just wrote\n\
             sed -i 's|^http: .*|http: \"127.0.0.1:{port}\"|' \"$2\"\nexec {exe} \"$@\"\n",
            exe = common::nats_server_path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &script,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    script
}

// ---------------------------------------------------------------------------------------
// The driver.

/// Where the test's moving parts are, beyond the env.
struct Setup {
    /// The auth file as configured (`nats.config_file_path`).
    auth_file: PathBuf,
    /// The pid file as configured.
    pid_file: PathBuf,
    /// `/metrics` and `/status` base URL.
    base: String,
}

/// Puts the auth file in a directory of its own (nats-server keeps including the env's path,
/// now a symlink to it), writes the config and returns where everything is.
fn set_up(env: &Env, case: &Case) -> Setup {
    let auth_file = if case.own_auth_dir() {
        let dir = env.dir.path().join("authdir");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("auth.json");
        std::fs::rename(&env.auth_file, &file).unwrap();
        std::os::unix::fs::symlink(&file, &env.auth_file).unwrap();
        file
    } else {
        env.auth_file.clone()
    };
    // The pid file the controller reads is a copy the test controls; nats-server's own
    // stays where it is.
    let pid_file = env.dir.path().join("run").join("nats.pid");
    std::fs::create_dir_all(pid_file.parent().unwrap()).unwrap();
    // nats-server --signal reads the whole file as the pid: no trailing newline.
    std::fs::write(&pid_file, env.nats.pid().to_string()).unwrap();
    let auth_text = auth_file.display().to_string();
    let pid_text = pid_file.display().to_string();
    let pid_for_config = if matches!(case.inject, Inject::NatsDown) {
        // A restarted nats-server rewrites its own pid file: follow that one.
        env.nats.pid_file().display().to_string()
    } else {
        pid_text
    };
    let mut keys: Vec<(&str, &str)> = vec![
        ("intervals.backoff_min", "0.2"),
        ("intervals.backoff_max", "1"),
        ("nats.reload_verify_timeout", "1"),
        ("nats.config_file_path", auth_text.as_str()),
        ("nats.nats_server_pid_file", pid_for_config.as_str()),
    ];
    if case.signal == Signal::Sighup {
        keys.push(("nats.nats_server_executable", "\"\""));
    }
    let key_pem;
    if matches!(case.inject, Inject::UaaWrongKey) {
        // One double-quoted YAML line; `\n` escapes keep the PEM's line breaks.
        key_pem = format!("{:?}", sim::uaa::PUBLIC_KEY_PEM);
        keys.push(("director.uaa_public_key", key_pem.as_str()));
    }
    keys.extend_from_slice(case.keys);
    let base = env.write_config_http(60.0, &keys, "");
    Setup {
        auth_file,
        pid_file,
        base,
    }
}

/// What must be undone to clear the fault.
enum Injected {
    Nothing,
    Mount(Mount),
    /// The directory holding the filler file of a full filesystem, and its mount.
    Full(PathBuf, Mount),
    /// nats-server's config and its original text.
    NatsConfig(PathBuf, String),
}

fn inject(env: &Env, setup: &Setup, inject: &Inject) -> Injected {
    match inject {
        Inject::Director(endpoint, fault) => env.director.set_fault(*endpoint, fault.clone()),
        Inject::Vms(deployment, fault) => env.director.set_vms_fault(deployment, fault.clone()),
        Inject::UaaDown => env.uaa.as_ref().unwrap().set_down(true),
        Inject::UaaWrongKey => env.uaa.as_ref().unwrap().set_sign_with_wrong_key(true),
        Inject::ReadOnlyDir => {
            return Injected::Mount(Mount::read_only(setup.auth_file.parent().unwrap()));
        }
        Inject::DiskFull => {
            let dir = setup.auth_file.parent().unwrap().to_owned();
            let content = std::fs::read(&setup.auth_file).unwrap();
            let mount = Mount::tmpfs(&dir, "64k");
            std::fs::write(&setup.auth_file, content).unwrap();
            fill(&dir);
            return Injected::Full(dir, mount);
        }
        Inject::PidMissing => std::fs::remove_file(&setup.pid_file).unwrap(),
        Inject::PidStale => {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            std::fs::write(&setup.pid_file, pid.to_string()).unwrap();
        }
        Inject::NatsDown => {
            let pid = nix::unistd::Pid::from_raw(env.nats.pid() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        }
        Inject::ReloadRejected => {
            let path = env.nats.config_file().to_owned();
            let original = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, format!("{original}\nbogus {{\n")).unwrap();
            return Injected::NatsConfig(path, original);
        }
    }
    Injected::Nothing
}

/// Clears the fault; returns a mount that must stay until the test ends.
async fn clear(env: &mut Env, setup: &Setup, inject: &Inject, injected: Injected) -> Option<Mount> {
    match (inject, injected) {
        (Inject::Director(endpoint, _), _) => env.director.clear_fault(*endpoint),
        (Inject::Vms(deployment, _), _) => env.director.clear_vms_fault(deployment),
        (Inject::UaaDown, _) => env.uaa.as_ref().unwrap().set_down(false),
        (Inject::UaaWrongKey, _) => env.uaa.as_ref().unwrap().set_sign_with_wrong_key(false),
        (Inject::ReadOnlyDir, Injected::Mount(mount)) => mount.unmount(),
        (Inject::DiskFull, Injected::Full(dir, mount)) => {
            // Space again; the auth file lives on this tmpfs until the test ends.
            std::fs::remove_file(dir.join("filler")).unwrap();
            return Some(mount);
        }
        (Inject::PidMissing | Inject::PidStale, _) => {
            std::fs::write(&setup.pid_file, env.nats.pid().to_string()).unwrap();
        }
        (Inject::NatsDown, _) => {
            let port: u16 = env
                .nats
                .monitoring_url()
                .rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse().ok())
                .expect("the monitoring URL ends with a port");
            let script = nats_on_monitoring_port(env.dir.path(), port);
            let nats_dir = env.dir.path().join("nats");
            let new = NatsServer::start_with(&script, &nats_dir, &env.pki, &env.auth_file)
                .await
                .expect("a new nats-server starts on the old monitoring port");
            assert_eq!(
                new.monitoring_url().trim_end_matches('/'),
                env.nats.monitoring_url().trim_end_matches('/')
            );
            drop(std::mem::replace(&mut env.nats, new));
        }
        (Inject::ReloadRejected, Injected::NatsConfig(path, original)) => {
            std::fs::write(path, original).unwrap();
        }
        (other, _) => unreachable!("no clean-up recorded for {other:?}"),
    }
    None
}

/// The whole scenario for one row of the matrix.
async fn fault_case(case: Case) {
    let mut env = Env::start(case.auth, vec![vm(A)]).await;
    env.director.set_deployment("db", vec![vm(C)]);
    let setup = set_up(&env, &case);
    let old = expected(&env, &[A, C]);
    let new = expected(&env, &[A, B, C, D]);

    // Converged on the old state, loaded by nats-server.
    env.once(true).await;
    assert!(file_users(&setup.auth_file).same_as(&old));

    // The director moves on, and the fault strikes.
    env.director.set_deployment("cf", vec![vm(A), vm(B)]);
    env.director.set_deployment("db", vec![vm(C), vm(D)]);
    let injected = inject(&env, &setup, &case.inject);
    let mut run = env.spawn_run();
    let client = http();
    let allowed_during_fault: Vec<&Users> = if case.writes_before_failing() {
        vec![&old, &new]
    } else {
        vec![&old]
    };

    // Failing: never anything but an allowed state on disk; retried with backoff.
    let started = Instant::now();
    let mut first_error: Option<Instant> = None;
    let look = loop {
        let users = file_users(&setup.auth_file);
        assert!(
            allowed_during_fault.iter().any(|u| users.same_as(u)),
            "while failing, the file must be {}:\n{}\n{}",
            if case.writes_before_failing() {
                "the old or the new desired state"
            } else {
                "the old state"
            },
            env.auth_text(),
            env.diagnostics()
        );
        if let Some(look) = Look::take(&client, &setup.base).await {
            let n = look.errors(case.reason);
            if n >= 1.0 && first_error.is_none() {
                first_error = Some(Instant::now());
            }
            if n >= 3.0 {
                break look;
            }
        }
        assert!(
            started.elapsed() < WITHIN,
            "no 3 failures with reason {:?} within {WITHIN:?}\n{}",
            case.reason,
            env.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let three_failures = first_error.unwrap().elapsed();
    assert!(
        three_failures >= Duration::from_secs_f64(1.5 * BACKOFF_MIN),
        "the 2nd and 3rd failures came {three_failures:?} after the 1st: no backoff\n{}",
        env.diagnostics()
    );
    assert_eq!(
        look.all_errors(),
        look.errors(case.reason),
        "every failure is counted under {:?} only:\n{}",
        case.reason,
        look.metrics
    );
    assert_eq!(look.last_result(), "error", "{}", look.status);
    assert_eq!(
        look.status["last_pass"]["error"]["reason"], case.reason,
        "{}",
        look.status
    );
    if let Some(text) = case.message {
        let message = look.status["last_pass"]["error"]["message"]
            .as_str()
            .unwrap();
        assert!(
            message.contains(text),
            "{message:?} should mention {text:?}"
        );
    }
    assert!(
        look.status["consecutive_failures"].as_u64().unwrap() >= 3,
        "{}",
        look.status
    );
    // A later scrape: the gauge may be updated a moment after the counter.
    let again = Look::take(&client, &setup.base).await.unwrap();
    assert!(
        again.sample("bosh_nats_sync_consecutive_failures") >= 3.0,
        "{}",
        again.metrics
    );
    if case.writes_before_failing() {
        assert!(
            file_users(&setup.auth_file).same_as(&new),
            "the write precedes the reload"
        );
        assert_eq!(
            look.status["last_reload"]["result"], "failed",
            "{}",
            look.status
        );
        assert_eq!(
            look.status["last_reload"]["error"]["reason"], case.reason,
            "{}",
            look.status
        );
    } else {
        assert!(file_users(&setup.auth_file).same_as(&old));
    }
    if !matches!(case.inject, Inject::NatsDown) {
        assert!(
            env.admitted(&agent_cn(A)).await,
            "agents keep working during the fault"
        );
    }
    assert!(run.is_running(), "a failure never ends the process");

    // The fault clears: the next retry converges, without a restart.
    let _mount = clear(&mut env, &setup, &case.inject, injected).await;
    let started = Instant::now();
    loop {
        let users = file_users(&setup.auth_file);
        assert!(
            users.same_as(&old) || users.same_as(&new),
            "the file is the old or the new state:\n{}",
            env.auth_text()
        );
        if users.same_as(&new)
            && let Some(look) = Look::take(&client, &setup.base).await
            && matches!(look.last_result(), "changed" | "unchanged")
        {
            assert_eq!(look.status["consecutive_failures"], 0, "{}", look.status);
            assert_eq!(
                look.status["last_reload"]["result"], "ok",
                "{}",
                look.status
            );
            assert_eq!(
                look.status["last_reload"]["verified"], true,
                "{}",
                look.status
            );
            // Scraped after `/status` showed the success (the other order races it).
            let again = Look::take(&client, &setup.base).await.unwrap();
            assert_eq!(
                again.sample("bosh_nats_sync_consecutive_failures"),
                0.0,
                "{}",
                again.metrics
            );
            break;
        }
        assert!(
            started.elapsed() < WITHIN,
            "no recovery within {WITHIN:?} after the fault cleared\n{}",
            env.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(run.is_running());
    for agent in [A, B, C, D] {
        assert!(
            env.admitted(&agent_cn(agent)).await,
            "nats-server admits {agent} after recovery\n{}",
            env.diagnostics()
        );
    }
    assert_eq!(
        strays(&setup.auth_file, case.own_auth_dir()),
        Vec::<String>::new(),
        "no temporary file is left behind"
    );
    drop(run);
}

// ---------------------------------------------------------------------------------------
// The matrix.

const REQUEST_TIMEOUT_1S: &[(&str, &str)] = &[("director.request_timeout", "1")];
const MAX_BODY_1MIB: &[(&str, &str)] = &[("director.max_response_mib", "1")];
const TWO_MIB: u64 = 2 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn director_500() {
    fault_case(Case::new(
        Inject::Director(Endpoint::Deployments, Fault::status(500)),
        "status",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn director_401() {
    fault_case(Case::new(
        Inject::Director(Endpoint::Deployments, Fault::status(401)),
        "unauthorized",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_stalls_past_the_request_timeout() {
    let stall = Fault::delay(Duration::from_secs(30));
    fault_case(
        Case::new(Inject::Director(Endpoint::Deployments, stall), "timeout")
            .keys(REQUEST_TIMEOUT_1S),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_half_way_past_the_request_timeout() {
    let stall = Fault::stall_mid_body(Duration::from_secs(30));
    fault_case(Case::new(Inject::Vms("db", stall), "timeout").keys(REQUEST_TIMEOUT_1S)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_outlives_the_pass_timeout() {
    let stall = Fault::delay(Duration::from_secs(30));
    fault_case(
        Case::new(
            Inject::Director(Endpoint::Deployments, stall),
            "pass_timeout",
        )
        .keys(&[("intervals.pass_timeout", "1")]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_body() {
    fault_case(Case::new(
        Inject::Vms("db", Fault::reset_mid_body()),
        "connection",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json() {
    fault_case(Case::new(
        Inject::Director(Endpoint::Deployments, Fault::invalid_json()),
        "decode",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_size_cap() {
    let fault = Fault::oversized(TWO_MIB);
    fault_case(
        Case::new(
            Inject::Director(Endpoint::Deployments, fault),
            "body_too_large",
        )
        .keys(MAX_BODY_1MIB),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_size_cap() {
    let fault = Fault::oversized_chunked(TWO_MIB);
    fault_case(Case::new(Inject::Vms("db", fault), "body_too_large").keys(MAX_BODY_1MIB)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_succeed_but_a_later_vms_fails() {
    // `cf` is read fine; writing what was read would drop C and D's users.
    fault_case(Case::new(Inject::Vms("db", Fault::status(500)), "status")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uaa_down() {
    fault_case(Case::new(Inject::UaaDown, "auth").uaa()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uaa_token_with_a_bad_signature() {
    fault_case(
        Case::new(Inject::UaaWrongKey, "token_invalid")
            .message("InvalidSignature")
            .uaa(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_files_directory_read_only() {
    fault_case(Case::new(Inject::ReadOnlyDir, "auth_file_write").message("Read-only file system"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_full() {
    fault_case(Case::new(Inject::DiskFull, "disk_full").message("No space left on device")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pid_file_missing_sighup() {
    fault_case(Case::new(Inject::PidMissing, "reload_pid").sighup()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pid_file_stale_sighup() {
    fault_case(
        Case::new(Inject::PidStale, "reload_pid")
            .message("is not running")
            .sighup(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pid_file_missing_executable() {
    fault_case(Case::new(Inject::PidMissing, "reload_signal")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_down() {
    fault_case(Case::new(Inject::NatsDown, "reload_monitor")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_nats_server_rejects() {
    fault_case(
        Case::new(Inject::ReloadRejected, "reload_rejected").message("config_load_time stayed"),
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Not a fault: a token about to expire is replaced before it does.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_uaa_token_is_refreshed_in_time_and_cached_until_then() {
    let env = Env::start(Auth::Uaa, vec![vm(A)]).await;
    let uaa = env.uaa.as_ref().unwrap();
    // 62 s of life with a 60 s refresh margin: each token serves about 2 s of passes.
    uaa.set_expires_in(62);
    let base = env.write_config_http(0.25, &[], "");
    let run = env.spawn_run();
    let client = http();
    let started = Instant::now();
    let look = loop {
        if let Some(look) = Look::take(&client, &base).await
            && look.sample("bosh_nats_sync_passes_total{result=\"unchanged\"}") >= 16.0
        {
            break look;
        }
        assert!(
            started.elapsed() < WITHIN,
            "no 16 passes\n{}",
            env.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    let passes = look.sample("bosh_nats_sync_passes_total{result=\"unchanged\"}")
        + look.sample("bosh_nats_sync_passes_total{result=\"changed\"}");
    let tokens = uaa.tokens_issued() as f64;
    assert_eq!(
        look.all_errors(),
        0.0,
        "no pass failed:\n{}",
        env.diagnostics()
    );
    assert_eq!(
        env.director.status_count(Endpoint::Deployments, 401)
            + env.director.status_count(Endpoint::Vms, 401),
        0,
        "the director never saw an expired token"
    );
    assert!(
        tokens >= 2.0,
        "the token was refreshed: {tokens} tokens over {passes} passes in {elapsed:.1} s"
    );
    assert!(
        tokens <= passes / 2.0,
        "the token is cached across passes: {tokens} tokens over {passes} passes in {elapsed:.1} s"
    );
    // About one token per 2 s of validity beyond the margin, plus the first one.
    assert!(
        tokens <= elapsed / 2.0 + 2.0,
        "{tokens} tokens in {elapsed:.1} s"
    );
    assert_eq!(
        look.sample("bosh_nats_sync_uaa_token_fetches_total{result=\"ok\"}"),
        tokens
    );
    drop(run);
}
