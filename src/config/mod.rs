//! The YAML configuration file (§1.2): every key the BOSH `nats` job template writes,
//! plus optional new keys with defaults. Validation happens here, once; the rest of the
//! program receives typed, checked settings.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use crate::director;
use crate::secret::Secret;

/// Environment variable that overrides `director.password`.
pub const ENV_PASSWORD: &str = "BOSH_NATS_SYNC_DIRECTOR_PASSWORD";
/// Environment variable that overrides `director.client_secret`.
pub const ENV_CLIENT_SECRET: &str = "BOSH_NATS_SYNC_DIRECTOR_CLIENT_SECRET";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9758";

/// The shortest `intervals.watch` other than 0 (off): every read of the event log is a
/// request to the director, so a shorter one would load it for no gain.
pub const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// A configuration problem, naming the file and (when there is one) the key.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{message}", path.display(), key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub key: Option<String>,
    pub message: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How nats-server is told to reload, and how the reload is verified (§5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// The auth file nats-server includes.
    pub auth_file: PathBuf,
    /// When set, reload with `EXECUTABLE --signal reload=PID_FILE`; otherwise SIGHUP.
    pub executable: Option<PathBuf>,
    pub pid_file: PathBuf,
    /// nats-server's monitoring endpoint (e.g. `http://127.0.0.1:8222`) for verifying reloads.
    pub monitoring_url: Option<url::Url>,
    /// How long to wait for `config_load_time` to advance after a reload signal.
    pub reload_verify_timeout: Duration,
}

/// Mass-removal damping (§6.5): when a pass's removals are held back. Invariant (checked by
/// [`Config::parse`]): `max_removal_fraction` is within 0..=1 and `confirmations` ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DampingSettings {
    pub enabled: bool,
    /// A pass may remove at most this fraction of the agents in the file without being held…
    pub max_removal_fraction: f64,
    /// …or at most this many agents, whichever is more.
    pub min_removals: usize,
    /// How many consecutive passes must compute the same desired state before it applies.
    pub confirmations: u32,
}

impl Default for DampingSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_removal_fraction: 0.5,
            min_removals: 10,
            confirmations: 3,
        }
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from, for messages.
    pub path: PathBuf,
    pub director: director::Settings,
    pub director_subject_file: Option<PathBuf>,
    pub hm_subject_file: Option<PathBuf>,
    /// `intervals.poll_user_sync`: the resync period; always > 0.
    pub poll_interval: Duration,
    /// `intervals.watch`: how often the director's event log is read (§6.6); `None` when
    /// the key is 0 (the watch is off). When set, at least [`MIN_WATCH_INTERVAL`].
    pub watch_interval: Option<Duration>,
    /// `intervals.resync`: the full-pass period while the watch is healthy (§6.6); always
    /// > 0, and not shorter than `watch_interval`.
    pub resync_interval: Duration,
    /// First retry delay after a failed pass; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A pass that takes longer is cancelled and counts as an error.
    pub pass_timeout: Duration,
    pub nats: NatsSettings,
    /// Append logs here; stdout when `None`.
    pub logfile: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Default log filter (`RUST_LOG` overrides it).
    pub log_level: String,
    /// Address of the metrics/health server; `None` when disabled.
    pub http_listen: Option<SocketAddr>,
    /// Mass-removal damping (§6.5).
    pub damping: DampingSettings,
    /// Keys the file has that this program does not know (warned about, then ignored).
    pub unknown_keys: Vec<String>,
}

impl Config {
    /// Reads and validates `path`. `env` looks up environment variables (injected for tests).
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            key: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Self::parse(path, &text, env)
    }

    /// Validates YAML `text`, naming `path` in errors.
    pub fn parse(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let root: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigError {
            path: path.to_owned(),
            key: None,
            message: format!("invalid YAML: {e}"),
        })?;
        let mut r = Reader {
            path,
            seen: BTreeSet::new(),
            unknown: Vec::new(),
        };
        let root = match root {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => {
                return Err(r.error(
                    None,
                    "the file must hold a YAML mapping (director:, intervals:, nats:)",
                ));
            }
        };
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let path_at = |p: String| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_relative() { base_dir.join(p) } else { p }
        };

        // director
        let url_text = r
            .string(&root, "director.url")?
            .ok_or_else(|| r.missing("director.url"))?;
        let url = r.http_url("director.url", &url_text)?;
        let user = r.string(&root, "director.user")?.filter(|s| !s.is_empty());
        let password = env(ENV_PASSWORD)
            .or(r.string(&root, "director.password")?)
            .filter(|s| !s.is_empty());
        let client_id = r
            .string(&root, "director.client_id")?
            .filter(|s| !s.is_empty());
        let client_secret = env(ENV_CLIENT_SECRET)
            .or(r.string(&root, "director.client_secret")?)
            .filter(|s| !s.is_empty());
        let director_ca = match r.string(&root, "director.director_ca_cert")? {
            Some(p) => Some(p),
            None => r.string(&root, "director.ca_cert")?,
        }
        .filter(|s| !s.trim().is_empty())
        .map(path_at);
        let uaa_ca = r
            .string(&root, "director.uaa_ca_cert")?
            .filter(|s| !s.trim().is_empty())
            .map(path_at);
        for (key, ca) in [
            ("director.director_ca_cert", &director_ca),
            ("director.uaa_ca_cert", &uaa_ca),
        ] {
            if let Some(p) = ca {
                check_readable_if_present(p).map_err(|m| r.error(Some(key), m))?;
            }
        }
        let uaa_public_key = r
            .string(&root, "director.uaa_public_key")?
            .filter(|s| !s.trim().is_empty());
        let director_subject_file = r
            .string(&root, "director.director_subject_file")?
            .filter(|s| !s.is_empty())
            .map(path_at);
        let hm_subject_file = r
            .string(&root, "director.hm_subject_file")?
            .filter(|s| !s.is_empty())
            .map(path_at);
        let connection_wait_timeout =
            r.seconds(&root, "director.connection_wait_timeout", 60.0, true)?;
        let connect_timeout = r.seconds(&root, "director.connect_timeout", 10.0, false)?;
        let request_timeout = r.seconds(&root, "director.request_timeout", 30.0, false)?;
        let max_concurrency = r.count(&root, "director.max_concurrency", 4)?;
        let max_body_bytes = r.count(&root, "director.max_response_mib", 64)? * 1024 * 1024;

        if user.is_some() != password.is_some() {
            tracing::debug!("only one of director.user / director.password is set");
        }
        let basic = user.zip(password.map(Secret::new));
        let uaa_client = client_id.zip(client_secret.map(Secret::new));
        if basic.is_none() && uaa_client.is_none() {
            return Err(r.error(
                Some("director"),
                format!(
                    "no credentials: set user and password (basic auth) or client_id and client_secret (UAA); \
                     the secrets may come from {ENV_PASSWORD} / {ENV_CLIENT_SECRET}"
                ),
            ));
        }

        // intervals
        let poll_interval = r.seconds_required(&root, "intervals.poll_user_sync")?;
        let backoff_min = r.seconds(&root, "intervals.backoff_min", 1.0, false)?;
        let backoff_max = r.seconds(&root, "intervals.backoff_max", 60.0, false)?;
        if backoff_max < backoff_min {
            return Err(r.error(
                Some("intervals.backoff_max"),
                "must not be smaller than intervals.backoff_min",
            ));
        }
        let pass_timeout = r.seconds(&root, "intervals.pass_timeout", 300.0, false)?;
        let watch = r.seconds(&root, "intervals.watch", 1.0, true)?;
        let watch_interval = (!watch.is_zero()).then_some(watch);
        if watch_interval.is_some_and(|w| w < MIN_WATCH_INTERVAL) {
            return Err(r.error(
                Some("intervals.watch"),
                format!(
                    "must be 0 (the watch off) or at least {} seconds, got {}",
                    MIN_WATCH_INTERVAL.as_secs_f64(),
                    watch.as_secs_f64()
                ),
            ));
        }
        let resync_interval = r.seconds(&root, "intervals.resync", 300.0, false)?;
        if let Some(watch) = watch_interval
            && resync_interval < watch
        {
            return Err(r.error(
                Some("intervals.resync"),
                format!(
                    "{} seconds is shorter than intervals.watch ({} seconds): full passes would \
                     run more often than the event log is read; raise it, or set intervals.watch: 0",
                    resync_interval.as_secs_f64(),
                    watch.as_secs_f64()
                ),
            ));
        }

        // nats
        let auth_file = r
            .string(&root, "nats.config_file_path")?
            .filter(|s| !s.is_empty())
            .map(path_at)
            .ok_or_else(|| r.missing("nats.config_file_path"))?;
        let executable = r
            .string(&root, "nats.nats_server_executable")?
            .filter(|s| !s.is_empty())
            .map(path_at);
        let pid_file = r
            .string(&root, "nats.nats_server_pid_file")?
            .filter(|s| !s.is_empty())
            .map(path_at)
            .ok_or_else(|| r.missing("nats.nats_server_pid_file"))?;
        let monitoring_url = match r
            .string(&root, "nats.monitoring_url")?
            .filter(|s| !s.is_empty())
        {
            None => None,
            Some(text) => Some(r.http_url("nats.monitoring_url", &text)?),
        };
        let reload_verify_timeout = r.seconds(&root, "nats.reload_verify_timeout", 5.0, false)?;

        // logging
        let logfile = r
            .string(&root, "logfile")?
            .filter(|s| !s.is_empty())
            .map(path_at);
        let log_format = match r.string(&root, "log.format")?.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(r.error(
                    Some("log.format"),
                    format!("{other:?} is neither \"text\" nor \"json\""),
                ));
            }
        };
        let log_level = r
            .string(&root, "log.level")?
            .unwrap_or_else(|| "info".into());
        if tracing_subscriber_filter_is_invalid(&log_level) {
            return Err(r.error(
                Some("log.level"),
                format!("{log_level:?} is not a log level or filter (e.g. info, debug)"),
            ));
        }

        // http
        let http_enabled = r.boolean(&root, "http.enabled", true)?;
        let listen_text = r
            .string(&root, "http.listen")?
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            r.error(
                Some("http.listen"),
                format!("{listen_text:?} is not an address like 127.0.0.1:9758"),
            )
        })?;

        // damping
        let defaults = DampingSettings::default();
        let damping = DampingSettings {
            enabled: r.boolean(&root, "damping.enabled", defaults.enabled)?,
            max_removal_fraction: match r.number(&root, "damping.max_removal_fraction")? {
                None => defaults.max_removal_fraction,
                Some(f) if (0.0..=1.0).contains(&f) => f,
                Some(f) => {
                    return Err(r.error(
                        Some("damping.max_removal_fraction"),
                        format!("must be between 0 and 1, got {f}"),
                    ));
                }
            },
            min_removals: match r.number(&root, "damping.min_removals")? {
                None => defaults.min_removals,
                Some(v) if v >= 0.0 && v.fract() == 0.0 => v as usize,
                Some(v) => {
                    return Err(r.error(
                        Some("damping.min_removals"),
                        format!("must be a whole number, got {v}"),
                    ));
                }
            },
            confirmations: r.count(
                &root,
                "damping.confirmations",
                defaults.confirmations as usize,
            )? as u32,
        };

        r.collect_unknown(&root, "");
        Ok(Config {
            path: path.to_owned(),
            director: director::Settings {
                url,
                basic,
                uaa_client,
                director_ca,
                uaa_ca,
                uaa_public_key,
                connect_timeout,
                request_timeout,
                max_body_bytes,
                max_concurrency,
                connection_wait_timeout,
            },
            director_subject_file,
            hm_subject_file,
            poll_interval,
            watch_interval,
            resync_interval,
            backoff_min,
            backoff_max,
            pass_timeout,
            nats: NatsSettings {
                auth_file,
                executable,
                pid_file,
                monitoring_url,
                reload_verify_timeout,
            },
            logfile,
            log_format,
            log_level,
            http_listen: http_enabled.then_some(listen),
            damping,
            unknown_keys: r.unknown,
        })
    }
}

fn tracing_subscriber_filter_is_invalid(filter: &str) -> bool {
    filter
        .parse::<tracing_subscriber::filter::Targets>()
        .is_err()
}

/// A CA file that is absent means "use the next trust source" (§2.3); one that exists
/// but cannot be read is a configuration error rather than a silent fall-back.
fn check_readable_if_present(path: &Path) -> Result<(), String> {
    match std::fs::read(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Walks the YAML tree by dotted keys, remembering which keys were asked for so the rest
/// can be reported as unknown.
struct Reader<'a> {
    path: &'a Path,
    seen: BTreeSet<String>,
    unknown: Vec<String>,
}

impl Reader<'_> {
    /// An `http` or `https` URL with a host: the director's, nats-server's monitoring endpoint.
    fn http_url(&self, key: &str, text: &str) -> Result<url::Url, ConfigError> {
        url::Url::parse(text)
            .ok()
            .filter(director::is_http_base)
            .ok_or_else(|| {
                self.error(
                    Some(key),
                    format!("{text:?} is not an http(s) URL with a host"),
                )
            })
    }

    fn error(&self, key: Option<&str>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }

    fn missing(&self, key: &str) -> ConfigError {
        self.error(Some(key), "required key is missing")
    }

    /// The value at a dotted key; `None` when absent or null.
    fn get<'v>(&mut self, root: &'v Mapping, key: &str) -> Result<Option<&'v Value>, ConfigError> {
        let mut node = root;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let prefix = parts[..=i].join(".");
            self.seen.insert(prefix.clone());
            match node.get(*part) {
                None | Some(Value::Null) => return Ok(None),
                Some(v) if i + 1 == parts.len() => return Ok(Some(v)),
                Some(Value::Mapping(m)) => node = m,
                Some(_) => return Err(self.error(Some(&prefix), "must be a mapping")),
            }
        }
        Ok(None)
    }

    fn string(&mut self, root: &Mapping, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(root, key)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(self.error(Some(key), "must be a string")),
        }
    }

    fn number(&mut self, root: &Mapping, key: &str) -> Result<Option<f64>, ConfigError> {
        let v = match self.get(root, key)? {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            Some(_) => None,
        };
        match v {
            Some(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(self.error(Some(key), "must be a number")),
        }
    }

    fn seconds_required(&mut self, root: &Mapping, key: &str) -> Result<Duration, ConfigError> {
        let v = self.number(root, key)?.ok_or_else(|| self.missing(key))?;
        self.to_duration(key, v, false)
    }

    fn seconds(
        &mut self,
        root: &Mapping,
        key: &str,
        default: f64,
        zero_ok: bool,
    ) -> Result<Duration, ConfigError> {
        let v = self.number(root, key)?.unwrap_or(default);
        self.to_duration(key, v, zero_ok)
    }

    fn to_duration(&self, key: &str, v: f64, zero_ok: bool) -> Result<Duration, ConfigError> {
        if v < 0.0 || (v == 0.0 && !zero_ok) {
            let bound = if zero_ok {
                "zero or more"
            } else {
                "greater than zero"
            };
            return Err(self.error(Some(key), format!("must be {bound} seconds, got {v}")));
        }
        if v > 86_400.0 * 365.0 {
            return Err(self.error(Some(key), format!("{v} seconds is more than a year")));
        }
        Ok(Duration::from_secs_f64(v))
    }

    fn count(&mut self, root: &Mapping, key: &str, default: usize) -> Result<usize, ConfigError> {
        match self.number(root, key)? {
            None => Ok(default),
            Some(v) if v >= 1.0 && v.fract() == 0.0 && v <= 1_000_000.0 => Ok(v as usize),
            Some(v) => Err(self.error(
                Some(key),
                format!("must be a whole number of at least 1, got {v}"),
            )),
        }
    }

    fn boolean(&mut self, root: &Mapping, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(root, key)? {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.error(Some(key), "must be true or false")),
        }
    }

    fn collect_unknown(&mut self, map: &Mapping, prefix: &str) {
        for (k, v) in map {
            let name = match k {
                Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            let full = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}.{name}")
            };
            if !self.seen.contains(&full) {
                self.unknown.push(full);
            } else if let Value::Mapping(m) = v {
                self.collect_unknown(m, &full);
            }
        }
    }
}

#[cfg(test)]
mod tests;
