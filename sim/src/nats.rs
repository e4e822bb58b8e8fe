//! Launches a real `nats-server` with `verify_and_map` TLS and an included auth file, and probes what a client certificate may publish and subscribe.
//!
//! Facts about nats-server 2.9.10 this module relies on (observed):
//! - `include` paths are joined onto the including file's directory, even absolute ones
//!   (`include "/a/b.json"` in `/etc/n.conf` opens `/etc/a/b.json`), so the launcher writes a
//!   path relative to its config file.
//! - A missing or unparseable included file stops the server at start-up (exit 1,
//!   `error parsing include file …`); an empty file, `{}` and the BOSH placeholder
//!   `{authorization: {token: f0oBar}}` all start.
//! - With an empty file or `{}` no authorization is configured: every certificate the CA
//!   signed connects, with no permission limits. The placeholder `token` config refuses every
//!   certificate client (`Authorization Violation`).
//! - `verify_and_map` matches the subject spelled `C=USA, O=Cloud Foundry, CN=x`,
//!   `C = USA, O = Cloud Foundry, CN = x` (OpenSSL) and `CN=x,O=Cloud Foundry,C=USA` (RFC 2253).
//! - A reload that removes a user closes that user's open connections.
//! - `--signal reload` / SIGHUP with an unparseable file exits 0 but the server keeps the old
//!   configuration; only `/varz` `config_load_time` tells (it advances on a successful reload).
//! - With `listen`/`http` port `-1` and `ports_file_dir`, the server writes
//!   `nats-server_<pid>.ports` = `{"nats":["tls://…"],"monitoring":["http://…"]}` once it
//!   listens, and removes it on exit; the pid file is left behind on exit.
//! - Started again with those ports written in (`NatsServer::start_again`), a stopped server
//!   listens where it did, so its clients reconnect to the same URL.
//!
//! And about callout mode's auth file (bosh-nats-sync's `init`, contract §12.3), included
//! at the top level like any other:
//! - 2.14.5 and 2.15.1 start with it: `authorization { timeout, users, auth_callout }`,
//!   `accounts { SYS { users } }` and `system_account` may all come from the one included
//!   file, the static users landing in `$G` beside the accounts.
//! - 2.9.10 has no `auth_callout` and refuses to start (exit 1) with
//!   `<file>:<line>:<column>: unknown field "auth_callout"`; [`has_auth_callout`] tells which
//!   is which from the version.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, Event, ServerError};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::fault::lock;
use crate::pki::{CertFiles, Pki, PkiError};

/// The environment variable that names the nats-server binary every test, benchmark, the
/// soak and the demo start (see [`executable`]).
pub const NATS_SERVER_ENV: &str = "NATS_SERVER";

/// The nats-server binary to start: `$NATS_SERVER` when set (a path, e.g. one of the release
/// binaries `scripts/nats-servers` installs), otherwise `nats-server` found on `PATH`
/// (Debian's package). When neither exists the bare name is returned, so starting it fails
/// with [`NatsError::NotInstalled`] naming what to install.
pub fn executable() -> PathBuf {
    if let Some(path) = std::env::var_os(NATS_SERVER_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// `executable --version`, e.g. `v2.14.5` (nats-server prints `nats-server: v2.14.5`).
pub fn version(executable: &Path) -> Result<String, NatsError> {
    let out = std::process::Command::new(executable)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NatsError::NotInstalled(executable.to_owned()),
            _ => NatsError::Io(e),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .rsplit(' ')
        .next()
        .filter(|v| out.status.success() && v.starts_with('v'))
        .map(str::to_owned)
        .ok_or_else(|| {
            NatsError::Monitoring(format!(
                "`{} --version` printed {:?} ({})",
                executable.display(),
                text.trim(),
                out.status
            ))
        })
}

/// Whether nats-server `version` (`v2.14.5`, `2.9.10`; a `-…` suffix ignored) has
/// `auth_callout`, which came with 2.10. `false` for what is not a version.
pub fn has_auth_callout(version: &str) -> bool {
    let version = version.trim().trim_start_matches('v');
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let mut numbers = core.split('.').map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (2, 10),
        _ => false,
    }
}

/// How long [`NatsServer::start`] waits for the server to listen.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors of the nats-server fixture and of the permission probes.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The `nats-server` binary was not found.
    #[error(
        "`{0}` not found: install nats-server (Debian/Ubuntu: `apt-get install nats-server`; \
         release binaries: `scripts/nats-servers`), put it on PATH or name it in $NATS_SERVER"
    )]
    NotInstalled(PathBuf),
    /// Writing the configuration or certificates failed.
    #[error("cannot prepare nats-server files: {0}")]
    Io(#[from] std::io::Error),
    /// Writing the certificates failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The server exited during start-up.
    #[error("nats-server {server} exited during start-up ({status}): {log}")]
    Exited {
        /// Which server: its version and path.
        server: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// The server did not become ready in time.
    #[error("nats-server {server} not ready within {timeout:?}: {log}")]
    NotReady {
        /// Which server: its version and path.
        server: String,
        /// How long was waited.
        timeout: Duration,
        /// The end of its log.
        log: String,
    },
    /// The monitoring endpoint answered something unexpected.
    #[error("monitoring endpoint: {0}")]
    Monitoring(String),
    /// A reload was not observed in time.
    #[error("config_load_time did not advance within {0:?}")]
    ReloadTimeout(Duration),
    /// A probe could not decide (e.g. the observer may not subscribe to the subject).
    #[error("probe of {subject:?} inconclusive: {why}")]
    Inconclusive {
        /// The subject probed.
        subject: String,
        /// What went wrong.
        why: String,
    },
    /// A NATS client operation failed.
    #[error("nats client: {0}")]
    Client(String),
}

impl NatsError {
    /// A short, stable label for metrics and assertions.
    pub fn reason(&self) -> &'static str {
        match self {
            NatsError::NotInstalled(_) => "not_installed",
            NatsError::Io(_) => "io",
            NatsError::Pki(_) => "pki",
            NatsError::Exited { .. } => "exited",
            NatsError::NotReady { .. } => "not_ready",
            NatsError::Monitoring(_) => "monitoring",
            NatsError::ReloadTimeout(_) => "reload_timeout",
            NatsError::Inconclusive { .. } => "inconclusive",
            NatsError::Client(_) => "client",
        }
    }
}

/// A running nats-server child process; killed when dropped.
///
/// Invariant: once constructed, the server has written its ports file, so `client_url` and
/// `monitoring_url` are the ports it actually listens on.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    pid: u32,
    /// `v2.14.5`.
    version: String,
    /// The binary.
    executable: PathBuf,
    /// The version and the path, for messages.
    server: String,
    client_url: String,
    monitoring_url: String,
    monitoring_addr: String,
    config_file: PathBuf,
    pid_file: PathBuf,
    log_file: PathBuf,
    ca_file: PathBuf,
}

impl NatsServer {
    /// Starts the nats-server [`executable`] names; see [`NatsServer::start_with`].
    pub async fn start(dir: &Path, pki: &Pki, auth_file: &Path) -> Result<NatsServer, NatsError> {
        NatsServer::start_with(&executable(), dir, pki, auth_file).await
    }

    /// Writes `nats.conf` (TLS with `verify_and_map`, `include` of `auth_file` by a path
    /// relative to `dir`, `pid_file`, monitoring, random ports) and the PKI files into `dir`,
    /// spawns `executable -c dir/nats.conf` and waits until it listens.
    ///
    /// `auth_file` must exist and parse, or nats-server refuses to start ([`NatsError::Exited`]).
    /// It prints (to stderr) which version it started, and its errors name it.
    pub async fn start_with(
        executable: &Path,
        dir: &Path,
        pki: &Pki,
        auth_file: &Path,
    ) -> Result<NatsServer, NatsError> {
        NatsServer::start_configured(executable, dir, pki, auth_file, "").await
    }

    /// [`NatsServer::start_with`], with `extra` appended to `nats.conf` (a `server_name` and
    /// a `cluster { … }` block, say).
    pub async fn start_configured(
        executable: &Path,
        dir: &Path,
        pki: &Pki,
        auth_file: &Path,
        extra: &str,
    ) -> Result<NatsServer, NatsError> {
        let version = version(executable)?;
        let server = format!("{version} ({})", executable.display());
        let dir = std::fs::canonicalize(dir)?;
        let files = pki.write_to(&dir)?;
        let auth_file = absolute(auth_file)?;
        let include = relative_path(&dir, &auth_file);
        let ports_dir = dir.join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        let config_file = dir.join("nats.conf");
        let pid_file = dir.join("nats.pid");
        let log_file = dir.join("nats-server.log");
        let config = format!(
            "listen: \"127.0.0.1:-1\"\nhttp: \"127.0.0.1:-1\"\nports_file_dir: {ports}\npid_file: {pid}\n\
             tls {{\n  cert_file: {cert}\n  key_file: {key}\n  ca_file: {ca}\n  verify_and_map: true\n  timeout: 5\n}}\n\
             include {include}\n{extra}",
            ports = quote(&ports_dir),
            pid = quote(&pid_file),
            cert = quote(&files.server.cert),
            key = quote(&files.server.key),
            ca = quote(&files.ca_cert),
            include = quote(&include),
        );
        std::fs::write(&config_file, config)?;
        std::fs::File::create(&log_file)?;
        let (child, pid) = spawn(executable, &config_file, &log_file)?;
        let mut server = NatsServer {
            child,
            pid,
            version,
            executable: executable.to_owned(),
            server,
            client_url: String::new(),
            monitoring_url: String::new(),
            monitoring_addr: String::new(),
            config_file,
            pid_file,
            log_file,
            ca_file: files.ca_cert,
        };
        server.wait_ready(&ports_dir).await?;
        eprintln!(
            "started nats-server {} (pid {}, {})",
            server.server, server.pid, server.client_url
        );
        Ok(server)
    }

    /// Stops the server (SIGKILL) and waits until it has exited: its clients lose their
    /// connections. [`NatsServer::start_again`] starts it again.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts a stopped server again on the same configuration and the same ports, so that
    /// its clients (and the program) find it where it was. Its log goes on in the same file.
    pub async fn start_again(&mut self) -> Result<(), NatsError> {
        let port = self
            .client_url
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        let config = std::fs::read_to_string(&self.config_file)?
            .replacen(
                "listen: \"127.0.0.1:-1\"",
                &format!("listen: \"127.0.0.1:{port}\""),
                1,
            )
            .replacen(
                "http: \"127.0.0.1:-1\"",
                &format!("http: \"{}\"", self.monitoring_addr),
                1,
            );
        std::fs::write(&self.config_file, config)?;
        let (child, pid) = spawn(&self.executable, &self.config_file, &self.log_file)?;
        self.child = child;
        self.pid = pid;
        let ports_dir = self
            .config_file
            .parent()
            .expect("nats.conf lives in the server's directory")
            .join("ports");
        self.wait_ready(&ports_dir).await
    }

    /// `GET /connz?auth=true` as JSON: every client connection, with `cid`,
    /// `tls_peer_certs` and, for one admitted as a static user, `authorized_user`.
    pub async fn connz(&self) -> Result<Value, NatsError> {
        self.monitor("/connz?auth=true&limit=100000").await
    }

    /// `GET <path>` of the monitoring endpoint (`/routez`, `/varz?…`) as JSON.
    pub async fn monitor(&self, path: &str) -> Result<Value, NatsError> {
        let body = http_get(&self.monitoring_addr, path).await?;
        serde_json::from_str(&body).map_err(|e| NatsError::Monitoring(e.to_string()))
    }

    async fn wait_ready(&mut self, ports_dir: &Path) -> Result<(), NatsError> {
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", self.pid));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(NatsError::Exited {
                    server: self.server.clone(),
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Ok(ports) = serde_json::from_str::<Value>(&text)
                && let (Some(client), Some(monitoring)) =
                    (ports["nats"][0].as_str(), ports["monitoring"][0].as_str())
            {
                self.client_url = client.to_owned();
                self.monitoring_url = monitoring.to_owned();
                self.monitoring_addr = monitoring.trim_start_matches("http://").to_owned();
                if self.varz().await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(NatsError::NotReady {
                    server: self.server.clone(),
                    timeout: START_TIMEOUT,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `tls://127.0.0.1:PORT`.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// `http://127.0.0.1:PORT` (the `/varz` base; what the controller's monitoring URL is).
    pub fn monitoring_url(&self) -> &str {
        &self.monitoring_url
    }

    /// The pid file nats-server writes (what `nats_server_pid_file` is).
    pub fn pid_file(&self) -> &Path {
        &self.pid_file
    }

    /// The version that runs, as `--version` printed it: `v2.14.5`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether this server has `auth_callout` (2.10 or later): see [`has_auth_callout`].
    pub fn has_auth_callout(&self) -> bool {
        has_auth_callout(&self.version)
    }

    /// The binary that runs.
    pub fn executable(&self) -> &Path {
        &self.executable
    }

    /// `/varz` `config_digest`, the digest of the configuration the server has loaded (its
    /// parsed form, included files resolved: whitespace does not change it). nats-server
    /// 2.14.5 and 2.15.1 publish it; 2.9.10 does not (`None`).
    pub async fn config_digest(&self) -> Result<Option<String>, NatsError> {
        Ok(self.varz().await?["config_digest"]
            .as_str()
            .filter(|d| !d.is_empty())
            .map(str::to_owned))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The generated `nats.conf`.
    pub fn config_file(&self) -> &Path {
        &self.config_file
    }

    /// The CA file the server trusts for client certificates (also signs its own).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The server's combined stdout/stderr log.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `GET /varz` as JSON.
    pub async fn varz(&self) -> Result<Value, NatsError> {
        let body = http_get(&self.monitoring_addr, "/varz").await?;
        serde_json::from_str(&body).map_err(|e| NatsError::Monitoring(e.to_string()))
    }

    /// `/varz` `config_load_time` (RFC 3339 text; it changes on every successful reload).
    pub async fn config_load_time(&self) -> Result<String, NatsError> {
        let varz = self.varz().await?;
        varz["config_load_time"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| NatsError::Monitoring("no config_load_time in /varz".into()))
    }

    /// Polls until `config_load_time` differs from `previous`; returns the new value.
    pub async fn wait_for_reload(
        &self,
        previous: &str,
        timeout: Duration,
    ) -> Result<String, NatsError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.config_load_time().await?;
            if now != previous {
                return Ok(now);
            }
            if Instant::now() >= deadline {
                return Err(NatsError::ReloadTimeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`NatsServer::reload`], then waits until `config_load_time` advances; how long that
    /// took (the server's reload of its configuration, its included files and all).
    pub async fn reload_and_wait(&self, timeout: Duration) -> Result<Duration, NatsError> {
        let before = self.config_load_time().await?;
        let started = Instant::now();
        self.reload()?;
        self.wait_for_reload(&before, timeout).await?;
        Ok(started.elapsed())
    }

    /// Restarts the server the way an operator's `restart` does: SIGTERM (nats-server closes
    /// every connection and exits), then the same configuration again, listening on the
    /// same client and monitoring ports — so clients that reconnect by themselves find it
    /// again. The log goes on in the same file. Returns how long after the signal the old
    /// process had exited and the new one listened.
    pub async fn restart(&mut self) -> Result<Restarted, NatsError> {
        let signalled = Instant::now();
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()?;
        if !status.success() {
            return Err(NatsError::Client(format!(
                "kill -TERM {} failed: {status}",
                self.pid
            )));
        }
        self.child.wait().await?;
        let exited = signalled.elapsed();
        self.start_again().await?;
        Ok(Restarted {
            exited,
            listening: signalled.elapsed(),
        })
    }

    /// Sends SIGHUP to the server (what `nats-server --signal reload` does).
    pub fn reload(&self) -> Result<(), NatsError> {
        let status = std::process::Command::new("kill")
            .arg("-HUP")
            .arg(self.pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(NatsError::Client(format!(
                "kill -HUP {} failed: {status}",
                self.pid
            )))
        }
    }

    /// Connects with a client certificate, trusting the server's CA; see [`connect`].
    pub async fn connect(&self, cert: &CertFiles) -> Result<NatsClient, async_nats::ConnectError> {
        connect(&self.client_url, &self.ca_file, cert).await
    }
}

/// Spawns `executable -c config_file`, its output appended to `log_file`.
fn spawn(
    executable: &Path,
    config_file: &Path,
    log_file: &Path,
) -> Result<(Child, u32), NatsError> {
    let log = std::fs::OpenOptions::new().append(true).open(log_file)?;
    let child = Command::new(executable)
        .arg("-c")
        .arg(config_file)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NatsError::NotInstalled(executable.to_owned()),
            _ => NatsError::Io(e),
        })?;
    let pid = child
        .id()
        .ok_or_else(|| NatsError::Monitoring("child exited before its pid was read".into()))?;
    Ok((child, pid))
}

/// What [`NatsServer::restart`] took, from its SIGTERM.
#[derive(Debug, Clone, Copy)]
pub struct Restarted {
    /// Until the old process had exited.
    pub exited: Duration,
    /// Until the new one listened (its ports file written, `/varz` answering).
    pub listening: Duration,
}

fn quote(path: &Path) -> String {
    // nats-server's parser accepts JSON-style double-quoted strings; test paths hold no quotes.
    format!("{:?}", path.to_string_lossy())
}

fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => std::fs::canonicalize(p)?,
        _ => std::env::current_dir()?,
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "auth file has no file name",
        )
    })?;
    Ok(parent.join(name))
}

/// The path of `to` relative to directory `from`; both absolute and free of `..`.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c.as_os_str());
    }
    rel
}

async fn http_get(addr: &str, path: &str) -> Result<String, NatsError> {
    let fail = |e: std::io::Error| NatsError::Monitoring(format!("GET {path}: {e}"));
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(fail)?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(fail)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(fail)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| NatsError::Monitoring(format!("GET {path}: malformed response")))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(NatsError::Monitoring(format!("GET {path}: {status}")));
    }
    Ok(body.to_owned())
}

/// A NATS client that records the server's asynchronous errors (`-ERR`), which is how nats-server
/// reports permission violations.
///
/// Invariant: `errors` holds every server error received since connecting, in order.
#[derive(Debug, Clone)]
pub struct NatsClient {
    client: Client,
    errors: Arc<Mutex<Vec<String>>>,
    notify: Arc<Notify>,
}

/// Connects to `url` over TLS, trusting `ca_file` and presenting `cert`, failing at once
/// (no retries) when the server refuses the certificate.
///
/// A certificate whose subject is not an auth-file user fails with
/// [`ConnectErrorKind::AuthorizationViolation`]; one from an untrusted CA fails during the
/// TLS handshake (the server drops the connection: usually [`ConnectErrorKind::Io`]).
pub async fn connect(
    url: &str,
    ca_file: &Path,
    cert: &CertFiles,
) -> Result<NatsClient, async_nats::ConnectError> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let notify = Arc::new(Notify::new());
    let (sink, wake) = (errors.clone(), notify.clone());
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca_file.to_owned())
        .add_client_certificate(cert.cert.clone(), cert.key.clone())
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(1))
        .event_callback(move |event| {
            let (sink, wake) = (sink.clone(), wake.clone());
            async move {
                let text = match event {
                    Event::ServerError(ServerError::Other(text)) => text,
                    Event::ServerError(ServerError::AuthorizationViolation) => {
                        "Authorization Violation".to_owned()
                    }
                    _ => return,
                };
                lock(&sink).push(text);
                wake.notify_waiters();
            }
        })
        .connect(url)
        .await?;
    Ok(NatsClient {
        client,
        errors,
        notify,
    })
}

/// Whether a connect error is nats-server refusing the certificate's subject.
pub fn is_authorization_violation(error: &async_nats::ConnectError) -> bool {
    error.kind() == ConnectErrorKind::AuthorizationViolation
}

/// The outcome of a permission probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// The operation worked: a message went through.
    Allowed,
    /// nats-server answered `Permissions Violation`.
    Denied,
}

impl NatsClient {
    /// The underlying async-nats client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Server errors received so far (e.g. `Permissions Violation for Publish to "x"`).
    pub fn server_errors(&self) -> Vec<String> {
        lock(&self.errors).clone()
    }

    /// How many server errors have been received so far; a probe only looks at later ones,
    /// so a violation from before a reload cannot answer a probe made after it.
    fn error_mark(&self) -> usize {
        lock(&self.errors).len()
    }

    fn has_error_since(&self, mark: usize, needle: &str) -> bool {
        lock(&self.errors)
            .iter()
            .skip(mark)
            .any(|e| e.contains(needle))
    }
}

/// How long a probe keeps trying before giving up as inconclusive.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a probe repeats its publish while waiting for evidence.
const PROBE_REPEAT: Duration = Duration::from_millis(50);

fn violation(kind: &str, subject: &str) -> String {
    format!("Permissions Violation for {kind} to \"{subject}\"")
}

/// May `publisher` publish to `subject`? `observer` must be allowed to subscribe to it.
///
/// Decided by positive evidence only, so the answer never depends on timing: `Allowed` when
/// the observer receives the probe message, `Denied` when nats-server answers the publisher
/// with `Permissions Violation for Publish to "<subject>"`. The publish is repeated until one
/// of the two happens (the observer's subscription may reach the server after the first
/// publish); after 10 s, or if the observer's own subscription is refused, the result is
/// [`NatsError::Inconclusive`].
pub async fn probe_publish(
    publisher: &NatsClient,
    observer: &NatsClient,
    subject: &str,
) -> Result<Permission, NatsError> {
    let nonce = format!("probe-{:016x}", rand::random::<u64>());
    let (publisher_mark, observer_mark) = (publisher.error_mark(), observer.error_mark());
    let mut sub = observer
        .client
        .subscribe(subject.to_owned())
        .await
        .map_err(|e| NatsError::Client(e.to_string()))?;
    observer
        .client
        .flush()
        .await
        .map_err(|e| NatsError::Client(e.to_string()))?;
    let deny = violation("Publish", subject);
    let observer_denied = violation("Subscription", subject);
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let result = loop {
        if publisher.has_error_since(publisher_mark, &deny) {
            break Ok(Permission::Denied);
        }
        if observer.has_error_since(observer_mark, &observer_denied) {
            break Err(NatsError::Inconclusive {
                subject: subject.to_owned(),
                why: "the observer may not subscribe to it".into(),
            });
        }
        if Instant::now() >= deadline {
            break Err(NatsError::Inconclusive {
                subject: subject.to_owned(),
                why: "neither the message nor a permissions violation arrived".into(),
            });
        }
        publisher
            .client
            .publish(subject.to_owned(), nonce.clone().into())
            .await
            .map_err(|e| NatsError::Client(e.to_string()))?;
        publisher
            .client
            .flush()
            .await
            .map_err(|e| NatsError::Client(e.to_string()))?;
        if receive_nonce(&mut sub, &nonce, &publisher.notify, &observer.notify).await {
            break Ok(Permission::Allowed);
        }
    };
    let _ = sub.unsubscribe().await;
    result
}

/// May `subscriber` subscribe to `subject`? `publisher` must be allowed to publish to it.
///
/// `Allowed` when a message published by `publisher` reaches the subscriber; `Denied` when
/// nats-server answers `Permissions Violation for Subscription to "<subject>"`. Same
/// repetition and timeout rules as [`probe_publish`].
pub async fn probe_subscribe(
    subscriber: &NatsClient,
    publisher: &NatsClient,
    subject: &str,
) -> Result<Permission, NatsError> {
    let nonce = format!("probe-{:016x}", rand::random::<u64>());
    let (subscriber_mark, publisher_mark) = (subscriber.error_mark(), publisher.error_mark());
    let mut sub = subscriber
        .client
        .subscribe(subject.to_owned())
        .await
        .map_err(|e| NatsError::Client(e.to_string()))?;
    subscriber
        .client
        .flush()
        .await
        .map_err(|e| NatsError::Client(e.to_string()))?;
    let deny = violation("Subscription", subject);
    let publisher_denied = violation("Publish", subject);
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let result = loop {
        if subscriber.has_error_since(subscriber_mark, &deny) {
            break Ok(Permission::Denied);
        }
        if publisher.has_error_since(publisher_mark, &publisher_denied) {
            break Err(NatsError::Inconclusive {
                subject: subject.to_owned(),
                why: "the publisher may not publish to it".into(),
            });
        }
        if Instant::now() >= deadline {
            break Err(NatsError::Inconclusive {
                subject: subject.to_owned(),
                why: "neither the message nor a permissions violation arrived".into(),
            });
        }
        publisher
            .client
            .publish(subject.to_owned(), nonce.clone().into())
            .await
            .map_err(|e| NatsError::Client(e.to_string()))?;
        publisher
            .client
            .flush()
            .await
            .map_err(|e| NatsError::Client(e.to_string()))?;
        if receive_nonce(&mut sub, &nonce, &subscriber.notify, &publisher.notify).await {
            break Ok(Permission::Allowed);
        }
    };
    let _ = sub.unsubscribe().await;
    result
}

/// Waits up to one repeat period for the nonce, returning early (false) when either client
/// records a server error, so a denial is noticed without waiting.
async fn receive_nonce(
    sub: &mut async_nats::Subscriber,
    nonce: &str,
    a: &Notify,
    b: &Notify,
) -> bool {
    use futures::StreamExt;
    let wait = tokio::time::sleep(PROBE_REPEAT);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            message = sub.next() => match message {
                Some(m) if m.payload.as_ref() == nonce.as_bytes() => return true,
                Some(_) => continue,
                None => return false,
            },
            () = a.notified() => return false,
            () = b.notified() => return false,
            () = &mut wait => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_callout_came_with_2_10() {
        for (version, has) in [
            ("v2.9.10", false),
            ("2.9.99", false),
            ("v1.4.1", false),
            ("v2.10.0", true),
            ("v2.10.0-RC.2", true),
            ("v2.14.5", true),
            ("2.15.1", true),
            ("v3.0.0", true),
            ("", false),
            ("nats-server", false),
        ] {
            assert_eq!(has_auth_callout(version), has, "{version}");
        }
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/b/c.json")),
            PathBuf::from("c.json")
        );
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/x/c.json")),
            PathBuf::from("../x/c.json")
        );
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/c.json")),
            PathBuf::from("../../c.json")
        );
    }
}
