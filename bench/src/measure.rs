//! Child processes measured from the outside: wall time and `wait4` rusage of a finished
//! child, `/proc/<pid>` figures (resident memory, CPU ticks) of a running one.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child that ran to completion.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// Exit status, or `128 + signal` when a signal ended it.
    pub code: i32,
    /// From `spawn` to the reaping `wait4`.
    pub wall: Duration,
    /// The child's peak resident set: the largest `VmHWM` of `/proc/<pid>/status` sampled
    /// every 2 ms (`VmHWM` only grows, so the last sample holds the peak up to 2 ms before
    /// exit). Not `ru_maxrss`: Linux records in a child's `ru_maxrss` the high-water mark of
    /// the address space it replaced at `execve` — for a `posix_spawn`ed (vfork) child,
    /// the spawning driver's own, which holds the simulated director.
    pub max_rss_kib: u64,
    /// `ru_utime + ru_stime`.
    pub cpu: Duration,
    /// The largest `RssAnon` (heap, stacks: private memory, without the binary's
    /// file-backed pages) seen by sampling `/proc/<pid>/status` every 2 ms.
    pub peak_anon_kib: u64,
}

/// Spawns `command` and waits for it (at most `limit`, then SIGKILL and an error).
pub async fn run_to_exit(mut command: Command, limit: Duration) -> anyhow::Result<Finished> {
    let start = Instant::now();
    let child = command.spawn().context("spawning the binary")?;
    wait_child(child, start, limit).await
}

/// Reaps `child` with `wait4` (so the rusage is this child's alone, not every child's).
pub async fn wait_child(child: Child, start: Instant, limit: Duration) -> anyhow::Result<Finished> {
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // `std::process::Child` neither kills nor reaps on drop; `wait4` below does the reaping.
    drop(child);
    let waiter = tokio::task::spawn_blocking(move || wait4(pid));
    tokio::pin!(waiter);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let (mut peak_anon_kib, mut max_rss_kib) = (0, 0);
    let mut sample = tokio::time::interval(Duration::from_millis(2));
    let (status, usage) = loop {
        tokio::select! {
            r = &mut waiter => break r.context("waiter task")??,
            _ = sample.tick() => {
                peak_anon_kib = peak_anon_kib.max(status_kib(pid as u32, "RssAnon").unwrap_or(0));
                max_rss_kib = max_rss_kib.max(status_kib(pid as u32, "VmHWM").unwrap_or(0));
            }
            _ = &mut deadline => {
                // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = waiter.await;
                bail!("pid {pid} did not finish within {limit:?}; killed");
            }
        }
    };
    let wall = start.elapsed();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    Ok(Finished {
        code,
        wall,
        max_rss_kib,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        peak_anon_kib,
    })
}

fn wait4(pid: i32) -> anyhow::Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; zero is a valid value for every field.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; pid is our own unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context(format!("wait4({pid})"));
        }
    }
}

/// A `kB` line of `/proc/<pid>/status`, e.g. `VmHWM` (peak resident) or `VmRSS`.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `utime + stime` of a running process, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after its last `)` do not.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos((utime + stime) * 1_000_000_000 / hz))
}

/// `(inode, mtime ns)`: a rewrite by rename changes the inode, an in-place one the mtime.
pub fn identity(path: &Path) -> Option<(u64, i128)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.ino(),
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    ))
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, signal) };
}
