//! Soak driver (docs/soak.md): the real bosh-nats-sync binary in run mode for N minutes
//! against the simulated director with VM churn and random `/deployments` and `/vms`
//! failures, and a real nats-server; it samples memory, file descriptors and pass counters,
//! then checks the process survived, did not leak, and converges once the noise stops.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bosh_nats_sync::authfile::{self, Observed};
use bosh_nats_sync::pass::desired::{self, Subject, Subjects};
use bosh_nats_sync::users::UserSet;
use bosh_nats_sync::vm::Vm;
use clap::Parser;
use sim::churn::Churn;
use sim::director::{DirectorSim, Endpoint};
use sim::fault::Fault;
use sim::nats::NatsServer;
use sim::stage::Stage;
use tokio::process::Command;

#[derive(Debug, Parser)]
#[command(about = "Soak the bosh-nats-sync binary under churn and director faults")]
struct Args {
    /// Path of the binary under test (the release build).
    #[arg(long)]
    binary: PathBuf,
    /// How long to run under churn and faults.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Deployments on the simulated director.
    #[arg(long, default_value_t = 8)]
    deployments: usize,
    /// VMs each deployment hovers around.
    #[arg(long, default_value_t = 40)]
    vms: usize,
    /// Milliseconds between churn steps (one VM added or removed per deployment per step).
    #[arg(long, default_value_t = 1000)]
    churn_ms: u64,
    /// Probability that a `/deployments` or `/vms` request fails with a 500.
    #[arg(long, default_value_t = 0.05)]
    fault_probability: f64,
    /// intervals.poll_user_sync, seconds.
    #[arg(long, default_value_t = 2.0)]
    poll: f64,
    /// intervals.watch, seconds (0 turns the watch off): the churn's events are followed.
    #[arg(long, default_value_t = 1.0)]
    watch: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    sample_secs: f64,
    /// Replace the results section of this Markdown file (between the soak markers).
    #[arg(long)]
    report: Option<PathBuf>,
    /// How the run was started, for the report.
    #[arg(long, default_value = "scripts/soak")]
    command: String,
}

const USER: &str = "admin";
const PASSWORD: &str = "soak-password";
const BEGIN: &str = "<!-- soak-results:begin (written by scripts/soak) -->";
const END: &str = "<!-- soak-results:end -->";

/// Counters scraped from `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    changed: u64,
    unchanged: u64,
    error: u64,
    errors: u64,
    reloads_ok: u64,
    reloads_failed: u64,
    events_read: u64,
    partial_passes: u64,
    full_passes: u64,
}

/// One measurement of the process under test.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    rss_kib: u64,
    fds: usize,
    counters: Counters,
    file_users: usize,
}

/// The checks at the end, each with its figures; the run fails if any is not `ok`.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bosh_nats_sync::tls::install_crypto_provider();
    let work = tempfile::Builder::new()
        .prefix("bosh-nats-sync-soak-")
        .tempdir()?;
    let result = soak(&args, work.path()).await;
    match &result {
        Ok(true) => {}
        _ => {
            let kept = work.keep();
            eprintln!(
                "soak: work directory kept for inspection: {}",
                kept.display()
            );
            let log = std::fs::read_to_string(kept.join("bosh-nats-sync.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("soak: last lines of the binary's log:");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
    }
    if !result? {
        bail!("soak failed (see the checks above)");
    }
    Ok(())
}

async fn soak(args: &Args, dir: &Path) -> anyhow::Result<bool> {
    let stage = Stage::start(dir, args.deployments, args.vms, USER, PASSWORD)
        .await
        .map_err(|e| anyhow::anyhow!("staging the simulated director: {e}"))?;
    let director = &stage.director;
    let auth_file = stage.auth_file.clone();
    let nats_dir = dir.join("nats");
    std::fs::create_dir_all(&nats_dir)?;
    let nats = NatsServer::start(&nats_dir, &stage.pki, &auth_file)
        .await
        .context("starting nats-server ($NATS_SERVER, else nats-server on PATH)")?;

    let listen = free_port()?;
    let config = dir.join("bosh_nats_sync_config.yml");
    std::fs::write(
        &config,
        format!(
            "{director}\
             intervals:\n  poll_user_sync: {poll}\n  watch: {watch}\n\
             nats:\n  config_file_path: {auth}\n  nats_server_pid_file: {pid}\n  monitoring_url: {mon}\n\
             http:\n  listen: {listen}\n",
            director = stage.director_yaml(),
            poll = args.poll,
            watch = args.watch,
            auth = auth_file.display(),
            pid = nats.pid_file().display(),
            mon = nats.monitoring_url(),
        ),
    )?;

    let log = std::fs::File::create(dir.join("bosh-nats-sync.log"))?;
    let mut child = Command::new(&args.binary)
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.binary.display()))?;
    let pid = child.id().context("the binary exited at once")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let metrics_url = format!("http://{listen}/metrics");
    wait_until(Duration::from_secs(30), || async {
        scrape(&http, &metrics_url).await.is_ok()
    })
    .await
    .context("/metrics never answered")?;

    // Noise: churn on every deployment (recorded in the event log, as the director does),
    // and random 500s on the listing endpoints and the event log.
    let churns: Vec<Churn> = stage.churn_every_deployment(Duration::from_millis(args.churn_ms));
    for endpoint in [Endpoint::Deployments, Endpoint::Vms, Endpoint::Events] {
        director.set_fault(
            endpoint,
            Fault::status(500).with_probability(args.fault_probability),
        );
    }

    println!(
        "soak: {} min, pid {pid}, {} deployments × ~{} VMs, churn every {} ms, {:.0}% of /deployments, /vms and /events fail, poll {} s, watch {} s",
        args.minutes,
        args.deployments,
        args.vms,
        args.churn_ms,
        args.fault_probability * 100.0,
        args.poll,
        args.watch
    );
    println!("   t(s)  RSS(MiB)  fds  changed unchanged  error  errors  users");
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(args.sample_secs));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Some(status) = child.try_wait()? {
            bail!("the binary exited during the soak: {status}");
        }
        let sample = Sample {
            secs: start.elapsed().as_secs_f64(),
            rss_kib: rss_kib(pid)?,
            fds: open_fds(pid)?,
            counters: scrape(&http, &metrics_url).await?,
            file_users: authfile::read(&auth_file)?.users().map_or(0, UserSet::len),
        };
        println!("{}", row(&sample));
        samples.push(sample);
        if start.elapsed() >= total {
            break;
        }
    }
    let churned: u64 = churns
        .iter()
        .map(|c| c.stats().added() + c.stats().removed())
        .sum();
    let faults_fired = director.status_count(Endpoint::Deployments, 500)
        + director.status_count(Endpoint::Vms, 500)
        + director.status_count(Endpoint::Events, 500);
    let requests = director.request_count(Endpoint::Deployments)
        + director.request_count(Endpoint::Vms)
        + director.request_count(Endpoint::Events);

    // Quiet: no churn, no faults; the file must come to equal the director's state.
    for churn in &churns {
        churn.stop();
    }
    director.clear_faults();
    let quiet = Instant::now();
    let subjects = Subjects {
        director: Subject::parse(&std::fs::read_to_string(&stage.director_subject_file)?)?,
        hm: Subject::parse(&std::fs::read_to_string(&stage.hm_subject_file)?)?,
    };
    let expected = desired::compute(&subjects, director_vms(director)).users;
    // The first pass after the faults clear may wait out a backoff (capped at 60 s).
    let deadline = Duration::from_secs(60) + Duration::from_secs_f64(args.poll * 5.0);
    let converged = wait_until(deadline, || async {
        matches!(authfile::read(&auth_file), Ok(Observed::Users(u)) if u == expected)
    })
    .await
    .is_ok();
    let converge_secs = quiet.elapsed().as_secs_f64();
    let alive = child.try_wait()?.is_none();
    let final_counters = scrape(&http, &metrics_url).await.unwrap_or_default();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).context("pid fits an i32")?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let exit_ok = matches!(&exit, Ok(Ok(status)) if status.success());
    drop(nats);

    let checks = checks(
        &samples,
        total.as_secs_f64(),
        alive,
        converged,
        converge_secs,
        expected.len(),
        exit_ok,
    );
    let summary = Summary {
        args,
        samples: &samples,
        checks: &checks,
        churned,
        faults_fired,
        requests,
        final_counters,
    };
    let text = summary.markdown();
    println!("\n{text}");
    if let Some(path) = &args.report {
        replace_section(path, &text)?;
        println!("soak: results written to {}", path.display());
    }
    Ok(checks.iter().all(|c| c.ok))
}

/// Desired users are computed from the simulator's own state, as the director would report it.
fn director_vms(director: &DirectorSim) -> Vec<Vm> {
    director
        .deployment_names()
        .iter()
        .filter_map(|name| director.vms(name))
        .flatten()
        .map(|vm| Vm {
            agent_id: vm.agent_id,
            permanent_nats_credentials: vm.permanent_nats_credentials.unwrap_or(false),
        })
        .collect()
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0u32), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { sum / f64::from(n) }
}

fn mib(kib: u64) -> f64 {
    // Exact for any RSS a machine has (< 2^53 KiB).
    #[allow(clippy::cast_precision_loss)]
    let kib = kib as f64;
    kib / 1024.0
}

/// RSS: the last minute's mean against the mean of the minute after warm-up (2 min; both
/// windows shrink to a fifth of the run for short runs). FDs: the last minute's lowest count
/// (leaks raise the floor; pooled connections come and go) against the baseline's highest.
fn checks(
    samples: &[Sample],
    total: f64,
    alive: bool,
    converged: bool,
    converge_secs: f64,
    expected_users: usize,
    exit_ok: bool,
) -> Vec<Check> {
    let warm = (total / 5.0).min(120.0);
    let window = (total / 5.0).min(60.0);
    let base: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.secs >= warm && s.secs < warm + window)
        .collect();
    let last: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.secs >= total - window)
        .collect();
    let base_rss = mean(base.iter().map(|s| mib(s.rss_kib)));
    let last_rss = mean(last.iter().map(|s| mib(s.rss_kib)));
    let growth = last_rss / base_rss - 1.0;
    // With the watch on, the events read between the two windows: memory must not follow
    // them (nothing of an event is kept once its deployment is refetched).
    let events_between = match (base.first(), last.last()) {
        (Some(b), Some(l)) => l
            .counters
            .events_read
            .saturating_sub(b.counters.events_read),
        _ => 0,
    };
    let base_fds = base.iter().map(|s| s.fds).max().unwrap_or(0);
    let last_fds = last.iter().map(|s| s.fds).min().unwrap_or(usize::MAX);
    vec![
        Check {
            name: "process alive throughout",
            ok: alive,
            detail: format!("{} samples", samples.len()),
        },
        Check {
            name: "RSS flat (growth ≤ 10%)",
            ok: !base.is_empty() && !last.is_empty() && growth <= 0.10,
            detail: format!(
                "{base_rss:.1} MiB ({warm:.0}–{:.0} s) → {last_rss:.1} MiB (last {window:.0} s): {:+.1}%, while {events_between} events were read",
                warm + window,
                growth * 100.0
            ),
        },
        Check {
            name: "no fd growth",
            ok: !base.is_empty() && !last.is_empty() && last_fds <= base_fds,
            detail: format!("baseline max {base_fds}, last-window min {last_fds}"),
        },
        Check {
            name: "converges after churn and faults stop",
            ok: converged,
            detail: format!(
                "auth file == desired users from the director's state ({expected_users} users) after {converge_secs:.1} s"
            ),
        },
        Check {
            name: "SIGTERM exits 0",
            ok: exit_ok,
            detail: "within 5 s".into(),
        },
    ]
}

struct Summary<'a> {
    args: &'a Args,
    samples: &'a [Sample],
    checks: &'a [Check],
    churned: u64,
    faults_fired: u64,
    requests: u64,
    final_counters: Counters,
}

impl Summary<'_> {
    fn markdown(&self) -> String {
        let a = self.args;
        let c = self.final_counters;
        let mut md = String::new();
        let verdict = if self.checks.iter().all(|c| c.ok) {
            "PASS"
        } else {
            "FAIL"
        };
        let _ = writeln!(
            md,
            "Run: `{}` — {} min, {} deployments × ~{} VMs, churn every {} ms per deployment, \
             {:.0}% of `/deployments`, `/vms` and `/events` answered 500, poll every {} s, \
             watch every {} s (0: off), real nats-server. \
             Machine: {} cores. **{verdict}**\n",
            a.command,
            a.minutes,
            a.deployments,
            a.vms,
            a.churn_ms,
            a.fault_probability * 100.0,
            a.poll,
            a.watch,
            std::thread::available_parallelism().map_or(0, usize::from),
        );
        let _ = writeln!(
            md,
            "Over the run: {} VM additions/removals, {} of {} listing requests failed by the fault, \
             passes {} changed / {} unchanged / {} error ({} partial, {} full with the watch), \
             {} events read, {} errors counted, reloads {} ok / {} failed.\n",
            self.churned,
            self.faults_fired,
            self.requests,
            c.changed,
            c.unchanged,
            c.error,
            c.partial_passes,
            c.full_passes,
            c.events_read,
            c.errors,
            c.reloads_ok,
            c.reloads_failed,
        );
        md.push_str("| check | result | figures |\n|---|---|---|\n");
        for check in self.checks {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                check.name,
                if check.ok { "ok" } else { "FAILED" },
                check.detail
            );
        }
        md.push_str(
            "\n<details><summary>Samples</summary>\n\n\
             | t (s) | RSS (MiB) | fds | passes changed | unchanged | error | errors | users in file |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in self.samples {
            let k = s.counters;
            let _ = writeln!(
                md,
                "| {:.0} | {:.1} | {} | {} | {} | {} | {} | {} |",
                s.secs,
                mib(s.rss_kib),
                s.fds,
                k.changed,
                k.unchanged,
                k.error,
                k.errors,
                s.file_users
            );
        }
        md.push_str("\n</details>\n");
        md
    }
}

fn row(s: &Sample) -> String {
    let k = s.counters;
    format!(
        "{:7.0} {:9.1} {:4} {:8} {:9} {:6} {:7} {:6}",
        s.secs,
        mib(s.rss_kib),
        s.fds,
        k.changed,
        k.unchanged,
        k.error,
        k.errors,
        s.file_users
    )
}

/// Replaces what lies between the soak markers (appending them if the file lacks them).
fn replace_section(path: &Path, section: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{section}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &old[..b], &old[e + END.len()..]),
        _ => format!("{old}\n{block}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<Counters> {
    let text = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        // Counters are integers, written without a fraction.
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = value as u64;
        let has = |label: &str| series.contains(label);
        if series.starts_with("bosh_nats_sync_passes_total{") {
            if has("result=\"changed\"") {
                c.changed += value;
            } else if has("result=\"unchanged\"") {
                c.unchanged += value;
            } else if has("result=\"error\"") {
                c.error += value;
            }
        } else if series.starts_with("bosh_nats_sync_watch_events_read_total") {
            c.events_read += value;
        } else if series.starts_with("bosh_nats_sync_watch_passes_total{") {
            if has("kind=\"partial\"") {
                c.partial_passes += value;
            } else if has("kind=\"full\"") {
                c.full_passes += value;
            }
        } else if series.starts_with("bosh_nats_sync_errors_total") {
            c.errors += value;
        } else if series.starts_with("bosh_nats_sync_reloads_total{") {
            if has("result=\"ok\"") {
                c.reloads_ok += value;
            } else if has("result=\"failed\"") {
                c.reloads_failed += value;
            }
        }
    }
    Ok(c)
}

fn free_port() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        sim::ports::free_port(),
    )))
}

/// Polls `condition` about every 200 ms until it holds or `limit` passes.
async fn wait_until<F, Fut>(limit: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
