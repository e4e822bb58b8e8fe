//! Making nats-server load the auth file (§5): signal a reload, then — when the
//! monitoring endpoint is known — verify the server really reloaded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Label;
use serde::Deserialize;
use tracing::Instrument;

use crate::config::NatsSettings;

/// A reload that did not happen (or could not be confirmed to have happened).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read the nats-server pid file {}: {source}", path.display())]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the nats-server pid file {} does not hold a pid ({content:?})", path.display())]
    BadPid { path: PathBuf, content: String },
    #[error("nats-server (pid {pid} from {}) is not running: {source}", path.display())]
    NotRunning {
        pid: i32,
        path: PathBuf,
        source: nix::Error,
    },
    #[error(
        "not permitted to signal nats-server (pid {pid} from {}): bosh-nats-sync must run as the \
         same user as nats-server (in a pod: the same runAsUser, with shareProcessNamespace)",
        path.display()
    )]
    NotPermitted { pid: i32, path: PathBuf },
    #[error(
        "not permitted to read the nats-server pid file {}: nats-server 2.14 and later write it \
         readable by its own user only (mode 0600), so bosh-nats-sync must run as the same user \
         as nats-server (in a pod: the same runAsUser, with shareProcessNamespace)",
        path.display()
    )]
    PidFileNotPermitted { path: PathBuf },
    #[error("cannot run {}: {source}", executable.display())]
    Spawn {
        executable: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("cannot read nats-server's monitoring endpoint {url}: {message}")]
    Monitor { url: String, message: String },
    #[error(
        "nats-server did not reload within {waited:?}: /varz config_load_time stayed {before} \
         (the server rejected the file or never got the signal; see its log)"
    )]
    NotApplied { before: String, waited: Duration },
    #[error(
        "nats-server reloaded, but /varz config_digest stayed {digest} although {} changed \
         since its last reload: the configuration nats-server loads does not include that file \
         (check the `include` in nats-server's config against nats.config_file_path)",
        auth_file.display()
    )]
    NotIncluded { digest: String, auth_file: PathBuf },
}

impl ReloadError {
    /// Every reason [`ReloadError::reason`] returns: the metrics export each from start-up
    /// (§8).
    pub const ALL_REASONS: [&'static str; 6] = [
        "reload_pid",
        "reload_permission",
        "reload_signal",
        "reload_monitor",
        "reload_rejected",
        "reload_not_included",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            ReloadError::PidFile { .. }
            | ReloadError::BadPid { .. }
            | ReloadError::NotRunning { .. } => "reload_pid",
            ReloadError::NotPermitted { .. } | ReloadError::PidFileNotPermitted { .. } => {
                "reload_permission"
            }
            ReloadError::Spawn { .. } | ReloadError::Command { .. } => "reload_signal",
            ReloadError::Monitor { .. } => "reload_monitor",
            ReloadError::NotApplied { .. } => "reload_rejected",
            ReloadError::NotIncluded { .. } => "reload_not_included",
        }
    }
}

/// How a successful reload was confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// `config_load_time` advanced after the signal.
    Verified,
    /// The signal was delivered; no monitoring endpoint to confirm it.
    Unverified,
}

impl Reloaded {
    /// The [`ReloadResult`] label of a reload that ended so.
    pub fn label(self) -> &'static str {
        ReloadResult::from(self).as_str()
    }
}

/// How a reload ended, successful or not: the `result` label of
/// `bosh_nats_sync_reloads_total` and of `/status`'s `last_reload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// Signalled, and nats-server's `config_load_time` advanced ([`Reloaded::Verified`]).
    Ok,
    /// Signalling failed, or the server did not load the new file (a [`ReloadError`]).
    Failed,
    /// Signalled without a monitoring endpoint to confirm the load ([`Reloaded::Unverified`]).
    Unverified,
}

impl ReloadResult {
    /// How a reload that returned `outcome` ended.
    pub fn of(outcome: &Result<Reloaded, ReloadError>) -> Self {
        match outcome {
            Ok(how) => Self::from(*how),
            Err(_) => Self::Failed,
        }
    }
}

impl From<Reloaded> for ReloadResult {
    fn from(how: Reloaded) -> Self {
        match how {
            Reloaded::Verified => Self::Ok,
            Reloaded::Unverified => Self::Unverified,
        }
    }
}

impl Label for ReloadResult {
    const ALL: &'static [Self] = &[Self::Ok, Self::Failed, Self::Unverified];

    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Unverified => "unverified",
        }
    }
}

/// Signals and verifies reloads of one nats-server.
#[derive(Debug, Clone)]
pub struct Reloader {
    settings: NatsSettings,
    http: reqwest::Client,
    /// What the last verified reload loaded, where the server publishes a digest.
    loaded: Arc<Mutex<Option<Loaded>>>,
}

/// The part of `/varz` verification reads.
#[derive(Deserialize)]
struct Varz {
    config_load_time: String,
    /// A digest of the configuration the server has loaded (its parsed form, included files
    /// resolved): nats-server 2.14.5 and 2.15.1 publish it, 2.9.10 does not.
    #[serde(default)]
    config_digest: Option<String>,
}

/// A verified reload on a server that publishes `config_digest`: the digest it showed after,
/// and a hash of the auth file's bytes it loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loaded {
    digest: String,
    file: u64,
}

impl Reloader {
    pub fn new(settings: NatsSettings) -> Self {
        crate::tls::install_crypto_provider();
        // The monitoring endpoint is local; the short timeouts keep a wedged server from
        // holding a pass for long.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a reqwest client with only timeouts set always builds");
        Self {
            settings,
            http,
            loaded: Arc::default(),
        }
    }

    /// Signals a reload and, with a monitoring URL, waits until the server shows it loaded
    /// its configuration again. A `reload` span covers it.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let span = tracing::info_span!(
            "reload",
            method = if self.settings.executable.is_some() {
                "executable"
            } else {
                "sighup"
            },
            verified = self.settings.monitoring_url.is_some()
        );
        self.signal_and_verify().instrument(span).await
    }

    /// §5.2: the signal, then `config_load_time` must advance. Where the server publishes
    /// `config_digest` the reload must also have loaded the auth file: when the file's bytes
    /// changed since the last verified reload and the server still showed that reload's
    /// digest before the signal, a digest that stays the same means the server loaded a
    /// configuration that does not include the file ([`ReloadError::NotIncluded`]).
    async fn signal_and_verify(&self) -> Result<Reloaded, ReloadError> {
        let Some(base) = &self.settings.monitoring_url else {
            self.signal().await?;
            return Ok(Reloaded::Unverified);
        };
        let varz = base.join("varz").map_err(|e| ReloadError::Monitor {
            url: base.to_string(),
            message: e.to_string(),
        })?;
        let before = self.varz(&varz).await?;
        // Read before the signal: the content the server is asked to load.
        let file = before
            .config_digest
            .as_ref()
            .map(|_| file_hash(&self.settings.auth_file));
        self.signal().await?;
        let waited = self.settings.reload_verify_timeout;
        let deadline = tokio::time::Instant::now() + waited;
        let after = loop {
            // A read error while the server reloads is retried until the deadline.
            if let Ok(now) = self.varz(&varz).await
                && now.config_load_time != before.config_load_time
            {
                break now;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ReloadError::NotApplied {
                    before: before.config_load_time,
                    waited,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (Some(digest), Some(file)) = (after.config_digest, file) else {
            return Ok(Reloaded::Verified);
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = loaded.as_ref()
            && before.config_digest.as_deref() == Some(last.digest.as_str())
            && digest == last.digest
            && file != last.file
        {
            return Err(ReloadError::NotIncluded {
                digest,
                auth_file: self.settings.auth_file.clone(),
            });
        }
        *loaded = Some(Loaded { digest, file });
        Ok(Reloaded::Verified)
    }

    async fn varz(&self, varz: &url::Url) -> Result<Varz, ReloadError> {
        let err = |message: String| ReloadError::Monitor {
            url: varz.to_string(),
            message,
        };
        let resp = self
            .http
            .get(varz.clone())
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(err(format!("HTTP status {}", resp.status())));
        }
        resp.json().await.map_err(|e| err(e.to_string()))
    }

    /// Delivers the reload signal (§5.1).
    async fn signal(&self) -> Result<(), ReloadError> {
        match &self.settings.executable {
            Some(exe) => signal_with_executable(exe, &self.settings.pid_file).await,
            None => sighup(&self.settings.pid_file),
        }
    }
}

/// A hash of the file's bytes (`0` when it cannot be read: the reload itself then says why),
/// read in 64 KiB pieces: the file can be tens of MiB, and a pass must not hold it whole.
fn file_hash(path: &Path) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return 0;
    };
    let mut hasher = DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return hasher.finish(),
            Ok(n) => hasher.write(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return 0,
        }
    }
}

/// `EXECUTABLE --signal reload=PIDFILE`, as the older programs did.
async fn signal_with_executable(exe: &Path, pid_file: &Path) -> Result<(), ReloadError> {
    let arg = format!("reload={}", pid_file.display());
    let out = tokio::process::Command::new(exe)
        .arg("--signal")
        .arg(&arg)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| ReloadError::Spawn {
            executable: exe.to_owned(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(ReloadError::Command {
        command: format!("{} --signal {arg}", exe.display()),
        status: out.status.to_string(),
        output: output.trim().to_owned(),
    })
}

/// SIGHUP to the pid in the pid file: works from a sidecar sharing the pod's process
/// namespace, where there is no nats-server binary to run.
fn sighup(pid_file: &Path) -> Result<(), ReloadError> {
    let content = std::fs::read_to_string(pid_file).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ReloadError::PidFileNotPermitted {
                path: pid_file.to_owned(),
            }
        } else {
            ReloadError::PidFile {
                path: pid_file.to_owned(),
                source,
            }
        }
    })?;
    let pid: i32 = content
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| ReloadError::BadPid {
            path: pid_file.to_owned(),
            content: content.trim().chars().take(40).collect(),
        })?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|source| match source {
        nix::Error::EPERM => ReloadError::NotPermitted {
            pid,
            path: pid_file.to_owned(),
        },
        source => ReloadError::NotRunning {
            pid,
            path: pid_file.to_owned(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, executable: Option<PathBuf>) -> NatsSettings {
        NatsSettings {
            auth_file: dir.join("auth.json"),
            executable,
            pid_file: dir.join("nats.pid"),
            monitoring_url: None,
            reload_verify_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn sighup_reaches_the_process_in_the_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        // A child that exits 0 only when it receives SIGHUP. Its SIGHUP disposition is reset
        // first: under `nohup` it would inherit "ignored", and bash cannot trap a signal that
        // was ignored when it started.
        let mut command = tokio::process::Command::new("bash");
        command
            .args([
                "-c",
                "trap 'exit 0' HUP; echo ready; while :; do sleep 0.05; done",
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: between fork and exec the closure only calls sigaction, which is
        // async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGHUP,
                    nix::sys::signal::SigHandler::SigDfl,
                )
                .map(drop)
                .map_err(std::io::Error::from)
            });
        }
        let mut child = command.spawn().unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
            .await
            .unwrap();
        std::fs::write(
            dir.path().join("nats.pid"),
            format!("{}\n", child.id().unwrap()),
        )
        .unwrap();
        let r = Reloader::new(settings(dir.path(), None));
        assert_eq!(r.reload().await.unwrap(), Reloaded::Unverified);
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    }

    #[tokio::test]
    async fn a_missing_or_stale_pid_file_is_a_reload_failure() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reloader::new(settings(dir.path(), None));
        let e = r.reload().await.unwrap_err();
        assert_eq!(e.reason(), "reload_pid");
        assert!(e.to_string().contains("nats.pid"), "{e}");

        std::fs::write(dir.path().join("nats.pid"), "garbage").unwrap();
        assert!(matches!(
            r.reload().await.unwrap_err(),
            ReloadError::BadPid { .. }
        ));

        // A pid that surely is not running: a child we already reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        std::fs::write(dir.path().join("nats.pid"), pid.to_string()).unwrap();
        assert!(matches!(
            r.reload().await.unwrap_err(),
            ReloadError::NotRunning { .. }
        ));
    }

    #[tokio::test]
    async fn a_failing_executable_reports_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("fake-nats-server");
        std::fs::write(
            &exe,
            "#!/bin/sh\necho \"unable to signal: $*\" >&2\nexit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let r = Reloader::new(settings(dir.path(), Some(exe)));
        let e = r.reload().await.unwrap_err().to_string();
        assert!(
            e.contains("--signal reload=")
                && e.contains("unable to signal: --signal reload=")
                && e.contains("nats.pid"),
            "{e}"
        );
    }
    /// The index of `e`'s variant. Exhaustive on purpose: a new variant does not compile
    /// until it has an arm here (the next index, with `VARIANTS` raised) and a sample below.
    fn variant(e: &ReloadError) -> usize {
        match e {
            ReloadError::PidFile { .. } => 0,
            ReloadError::BadPid { .. } => 1,
            ReloadError::NotRunning { .. } => 2,
            ReloadError::NotPermitted { .. } => 3,
            ReloadError::PidFileNotPermitted { .. } => 4,
            ReloadError::Spawn { .. } => 5,
            ReloadError::Command { .. } => 6,
            ReloadError::Monitor { .. } => 7,
            ReloadError::NotApplied { .. } => 8,
            ReloadError::NotIncluded { .. } => 9,
        }
    }
    const VARIANTS: usize = 10;

    #[test]
    fn the_result_label_says_how_a_reload_ended() {
        let failed = Err(ReloadError::BadPid {
            path: PathBuf::from("/var/vcap/sys/run/nats/nats.pid"),
            content: "garbage".into(),
        });
        for (outcome, label) in [
            (Ok(Reloaded::Verified), "ok"),
            (Ok(Reloaded::Unverified), "unverified"),
            (failed, "failed"),
        ] {
            assert_eq!(ReloadResult::of(&outcome).as_str(), label);
            assert!(ReloadResult::values().contains(&label), "{label}");
            if let Ok(how) = outcome {
                assert_eq!(how.label(), label);
            }
        }
    }

    #[test]
    fn all_reasons_lists_the_reason_of_every_variant() {
        use std::collections::BTreeSet;
        let path = PathBuf::from("/var/vcap/sys/run/nats/nats.pid");
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let samples = [
            ReloadError::PidFile {
                path: path.clone(),
                source: io(),
            },
            ReloadError::BadPid {
                path: path.clone(),
                content: "garbage".into(),
            },
            ReloadError::NotRunning {
                pid: 7,
                path: path.clone(),
                source: nix::Error::ESRCH,
            },
            ReloadError::NotPermitted {
                pid: 7,
                path: path.clone(),
            },
            ReloadError::PidFileNotPermitted { path },
            ReloadError::Spawn {
                executable: PathBuf::from("/var/vcap/packages/nats/bin/nats-server"),
                source: io(),
            },
            ReloadError::Command {
                command: "nats-server --signal reload".into(),
                status: "exit status: 1".into(),
                output: "no such process".into(),
            },
            ReloadError::Monitor {
                url: "http://127.0.0.1:8222/varz".into(),
                message: "connection refused".into(),
            },
            ReloadError::NotApplied {
                before: "2026-11-22T01:00:00Z".into(),
                waited: Duration::from_secs(5),
            },
            ReloadError::NotIncluded {
                digest: "sha256:abc".into(),
                auth_file: PathBuf::from("/var/vcap/data/nats/auth.json"),
            },
        ];
        let variants: BTreeSet<usize> = samples.iter().map(variant).collect();
        assert_eq!(
            variants,
            (0..VARIANTS).collect(),
            "a sample of every variant"
        );
        let reasons: BTreeSet<&str> = samples.iter().map(ReloadError::reason).collect();
        let listed: BTreeSet<&str> = ReloadError::ALL_REASONS.into_iter().collect();
        assert_eq!(reasons, listed);
        assert_eq!(
            listed.len(),
            ReloadError::ALL_REASONS.len(),
            "no reason twice"
        );
    }
}
