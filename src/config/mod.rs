//! The YAML configuration file (§1.2): every key the BOSH `nats` job template writes,
//! plus optional new keys with defaults. It is read in two steps: serde reads its shape
//! (the sections and keys this program knows, each value as found, and the keys it does not
//! know), then validation checks every value, naming the key of any problem, and builds the
//! typed [`Config`] the rest of the program receives.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use crate::director;
use crate::secret::Secret;
use field::{Field, Invalid, Section, invalid, missing, plain};

mod field;
#[cfg(test)]
mod tests;

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

/// How agents are admitted (§12.2): by the auth file and a reload (the default), or by
/// answering nats-server's auth callout from memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    File,
    Callout(CalloutSettings),
}

/// `nats.callout` (§12.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutSettings {
    /// The local nats-server the responder connects to.
    pub url: String,
    /// The service's client certificate and key; its subject is one of the static users.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA that signed nats-server's certificate.
    pub ca_file: PathBuf,
    /// The account seed (`SA…`) that signs the answers.
    pub issuer_seed_file: PathBuf,
    /// The curve seed (`SX…`) when nats-server seals its requests (`auth_callout.xkey`).
    pub xkey_seed_file: Option<PathBuf>,
    /// How long an admitted connection lives before it must be admitted again; zero: for
    /// ever.
    pub user_ttl: Duration,
    /// The admitted set, persisted.
    pub state_file: PathBuf,
    /// `authorization.timeout`: how long nats-server lets a connect wait for its answer.
    pub timeout: Duration,
}

/// The default `nats.callout.url`.
pub const DEFAULT_CALLOUT_URL: &str = "tls://127.0.0.1:4222";

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
    /// `http.ready_after_full_pass` (§7): in file mode `/readyz` waits for the first pass
    /// that read the director, not the bootstrap users (for a pod of a cluster).
    pub ready_after_full_pass: bool,
    /// Mass-removal damping (§6.5).
    pub damping: DampingSettings,
    /// `nats.admission` and `nats.callout` (§12.2).
    pub admission: Admission,
    /// Keys the file has that this program does not know (warned about, then ignored).
    pub unknown_keys: Vec<String>,
}

/// Whether a configuration must name the director's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credentials {
    Required,
    /// For `init` (§12.3), which never asks the director: a pod's init step is given no
    /// director secret.
    Optional,
}

impl Config {
    /// Reads and validates `path`. `env` looks up environment variables (injected for tests).
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Self::load_with(path, env, Credentials::Required)
    }

    /// [`Config::load`] for `init`, which reads the configuration, the subject files, the
    /// certificates and the seeds but never asks the director: the director's credentials may
    /// be missing (everything else is checked as for `run`).
    pub fn load_for_init(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::load_with(path, env, Credentials::Optional)
    }

    fn load_with(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
        credentials: Credentials,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            key: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Self::parse_with(path, &text, env, credentials)
    }

    /// Validates YAML `text`, naming `path` in errors.
    pub fn parse(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::parse_with(path, text, env, Credentials::Required)
    }

    fn parse_with(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        credentials: Credentials,
    ) -> Result<Config, ConfigError> {
        let error = |key, message: String| ConfigError {
            path: path.to_owned(),
            key,
            message,
        };
        let root = match serde_yaml_ng::from_str(text).map(plain) {
            Ok(Value::Mapping(root)) => root,
            Ok(Value::Null) => Mapping::new(),
            Ok(_) => {
                let message = "the file must hold a YAML mapping (director:, intervals:, nats:)";
                return Err(error(None, message.to_owned()));
            }
            Err(e) => return Err(error(None, format!("invalid YAML: {e}"))),
        };
        let file = Section::<RawFile>::deserialize(Value::Mapping(root.clone()))
            .map_err(|e| error(None, format!("invalid YAML: {e}")))?;
        let unknown_keys = file.unknown_keys(&root);
        let config = file.keys.validate(path, unknown_keys, env, credentials);
        config.map_err(|Invalid { key, message }| error(Some(key), message))
    }
}

/// The file's shape: the sections and keys of the README's table, each value as found.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawFile {
    director: Field<Section<RawDirector>>,
    intervals: Field<Section<RawIntervals>>,
    nats: Field<Section<RawNats>>,
    logfile: Field<String>,
    log: Field<Section<RawLog>>,
    http: Field<Section<RawHttp>>,
    damping: Field<Section<RawDamping>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawDirector {
    url: Field<String>,
    user: Field<String>,
    password: Field<String>,
    client_id: Field<String>,
    client_secret: Field<String>,
    director_ca_cert: Field<String>,
    /// The older template's spelling of `director_ca_cert`: read only when that is absent,
    /// otherwise reported as unknown.
    ca_cert: Field<String>,
    uaa_ca_cert: Field<String>,
    uaa_public_key: Field<String>,
    director_subject_file: Field<String>,
    hm_subject_file: Field<String>,
    connection_wait_timeout: Field<f64>,
    connect_timeout: Field<f64>,
    request_timeout: Field<f64>,
    max_concurrency: Field<f64>,
    max_response_mib: Field<f64>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawIntervals {
    poll_user_sync: Field<f64>,
    backoff_min: Field<f64>,
    backoff_max: Field<f64>,
    pass_timeout: Field<f64>,
    watch: Field<f64>,
    resync: Field<f64>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawNats {
    config_file_path: Field<String>,
    nats_server_executable: Field<String>,
    nats_server_pid_file: Field<String>,
    monitoring_url: Field<String>,
    reload_verify_timeout: Field<f64>,
    admission: Field<String>,
    callout: Field<Section<RawCallout>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawCallout {
    url: Field<String>,
    cert_file: Field<String>,
    key_file: Field<String>,
    ca_file: Field<String>,
    issuer_seed_file: Field<String>,
    xkey_seed_file: Field<String>,
    user_ttl: Field<f64>,
    state_file: Field<String>,
    timeout: Field<f64>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawLog {
    format: Field<String>,
    level: Field<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawHttp {
    enabled: Field<bool>,
    listen: Field<String>,
    ready_after_full_pass: Field<bool>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawDamping {
    enabled: Field<bool>,
    max_removal_fraction: Field<f64>,
    min_removals: Field<f64>,
    confirmations: Field<f64>,
}

impl RawFile {
    /// Checks every value and builds the [`Config`]. Keys are checked in a fixed order, the
    /// order above, which decides the problem reported when there are several.
    fn validate(
        self,
        path: &Path,
        unknown_keys: Vec<String>,
        env: impl Fn(&str) -> Option<String>,
        credentials: Credentials,
    ) -> Result<Config, Invalid> {
        let dir = path.parent().unwrap_or(Path::new("."));

        let d = self.director.keys("director")?;
        let url = http_url("director.url", &d.url.required("director.url")?)?;
        let user = d.user.text("director.user")?;
        let password = env(ENV_PASSWORD).or(d.password.get("director.password")?);
        let client_id = d.client_id.text("director.client_id")?;
        let client_secret =
            env(ENV_CLIENT_SECRET).or(d.client_secret.get("director.client_secret")?);
        // The old spelling counts only when the new one is absent or null.
        let director_ca = match d.director_ca_cert.get("director.director_ca_cert")? {
            None => d.ca_cert.get("director.ca_cert")?,
            set => set,
        };
        let director_ca = non_blank(director_ca).map(|p| resolve(dir, p));
        let uaa_ca = d.uaa_ca_cert.get("director.uaa_ca_cert")?;
        let uaa_ca = non_blank(uaa_ca).map(|p| resolve(dir, p));
        readable_if_present("director.director_ca_cert", director_ca.as_deref())?;
        readable_if_present("director.uaa_ca_cert", uaa_ca.as_deref())?;
        let uaa_public_key = d.uaa_public_key.get("director.uaa_public_key")?;
        let director_subject_file = d
            .director_subject_file
            .path("director.director_subject_file", dir)?;
        let hm_subject_file = d.hm_subject_file.path("director.hm_subject_file", dir)?;
        let director = director::Settings {
            url,
            basic: user.zip(secret(password)),
            uaa_client: client_id.zip(secret(client_secret)),
            director_ca,
            uaa_ca,
            uaa_public_key: non_blank(uaa_public_key),
            connection_wait_timeout: d
                .connection_wait_timeout
                .seconds_or_zero("director.connection_wait_timeout", 60.0)?,
            connect_timeout: d
                .connect_timeout
                .seconds("director.connect_timeout", 10.0)?,
            request_timeout: d
                .request_timeout
                .seconds("director.request_timeout", 30.0)?,
            max_concurrency: d.max_concurrency.count("director.max_concurrency", 4)?,
            max_body_bytes: d.max_response_mib.count("director.max_response_mib", 64)? << 20, // MiB
        };
        if credentials == Credentials::Required
            && director.basic.is_none()
            && director.uaa_client.is_none()
        {
            return Err(invalid(
                "director",
                format!(
                    "no credentials: set user and password (basic auth) or client_id and client_secret (UAA); \
                     the secrets may come from {ENV_PASSWORD} / {ENV_CLIENT_SECRET}"
                ),
            ));
        }

        let i = self.intervals.keys("intervals")?;
        let poll = i.poll_user_sync.required("intervals.poll_user_sync")?;
        let poll_interval = duration("intervals.poll_user_sync", poll, false)?;
        let backoff_min = i.backoff_min.seconds("intervals.backoff_min", 1.0)?;
        let backoff_max = i.backoff_max.seconds("intervals.backoff_max", 60.0)?;
        if backoff_max < backoff_min {
            let message = "must not be smaller than intervals.backoff_min";
            return Err(invalid("intervals.backoff_max", message));
        }
        let pass_timeout = i.pass_timeout.seconds("intervals.pass_timeout", 300.0)?;
        let watch = i.watch.seconds_or_zero("intervals.watch", 1.0)?;
        let watch_interval = (!watch.is_zero()).then_some(watch);
        if watch_interval.is_some_and(|w| w < MIN_WATCH_INTERVAL) {
            let (min, watch) = (MIN_WATCH_INTERVAL.as_secs_f64(), watch.as_secs_f64());
            let message =
                format!("must be 0 (the watch off) or at least {min} seconds, got {watch}");
            return Err(invalid("intervals.watch", message));
        }
        let resync_interval = i.resync.seconds("intervals.resync", 300.0)?;
        if let Some(watch) = watch_interval
            && resync_interval < watch
        {
            let (resync, watch) = (resync_interval.as_secs_f64(), watch.as_secs_f64());
            let message = format!(
                "{resync} seconds is shorter than intervals.watch ({watch} seconds): full passes would \
                 run more often than the event log is read; raise it, or set intervals.watch: 0"
            );
            return Err(invalid("intervals.resync", message));
        }

        let n = self.nats.keys("nats")?;
        let nats = NatsSettings {
            auth_file: n
                .config_file_path
                .required_path("nats.config_file_path", dir)?,
            executable: n
                .nats_server_executable
                .path("nats.nats_server_executable", dir)?,
            pid_file: n
                .nats_server_pid_file
                .required_path("nats.nats_server_pid_file", dir)?,
            monitoring_url: (n.monitoring_url.text("nats.monitoring_url")?)
                .map(|url| http_url("nats.monitoring_url", &url))
                .transpose()?,
            reload_verify_timeout: (n.reload_verify_timeout)
                .seconds("nats.reload_verify_timeout", 5.0)?,
        };
        let admission = match n.admission.get("nats.admission")?.as_deref() {
            None | Some("file") => {
                // Keys of a mode not chosen are not read, but a typo of the mode is caught.
                Admission::File
            }
            Some("callout") => Admission::Callout(callout(n.callout, &nats.auth_file, dir)?),
            Some(other) => {
                let message = format!("{other:?} is neither \"file\" nor \"callout\"");
                return Err(invalid("nats.admission", message));
            }
        };

        let logfile = self.logfile.path("logfile", dir)?;
        let log = self.log.keys("log")?;
        let log_format = match log.format.get("log.format")?.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                let message = format!("{other:?} is neither \"text\" nor \"json\"");
                return Err(invalid("log.format", message));
            }
        };
        let log_level = log.level.get("log.level")?.unwrap_or_else(|| "info".into());
        if log_level
            .parse::<tracing_subscriber::filter::Targets>()
            .is_err()
        {
            let message = format!("{log_level:?} is not a log level or filter (e.g. info, debug)");
            return Err(invalid("log.level", message));
        }

        let http = self.http.keys("http")?;
        let http_enabled = http.enabled.get("http.enabled")?.unwrap_or(true);
        let listen = http.listen.get("http.listen")?;
        let ready_after_full_pass = (http.ready_after_full_pass)
            .get("http.ready_after_full_pass")?
            .unwrap_or(false);
        let listen = listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen.parse().map_err(|_| {
            let message = format!("{listen:?} is not an address like 127.0.0.1:9758");
            invalid("http.listen", message)
        })?;

        let dm = self.damping.keys("damping")?;
        let default = DampingSettings::default();
        let damping = DampingSettings {
            enabled: dm
                .enabled
                .get("damping.enabled")?
                .unwrap_or(default.enabled),
            max_removal_fraction: match dm
                .max_removal_fraction
                .get("damping.max_removal_fraction")?
            {
                None => default.max_removal_fraction,
                Some(f) if (0.0..=1.0).contains(&f) => f,
                Some(f) => {
                    let message = format!("must be between 0 and 1, got {f}");
                    return Err(invalid("damping.max_removal_fraction", message));
                }
            },
            min_removals: match dm.min_removals.get("damping.min_removals")? {
                None => default.min_removals,
                Some(v) if v >= 0.0 && v.fract() == 0.0 => v as usize,
                Some(v) => {
                    let message = format!("must be a whole number, got {v}");
                    return Err(invalid("damping.min_removals", message));
                }
            },
            confirmations: (dm.confirmations)
                .count("damping.confirmations", default.confirmations as usize)?
                as u32,
        };

        Ok(Config {
            path: path.to_owned(),
            director,
            director_subject_file,
            hm_subject_file,
            poll_interval,
            watch_interval,
            resync_interval,
            backoff_min,
            backoff_max,
            pass_timeout,
            nats,
            logfile,
            log_format,
            log_level,
            http_listen: http_enabled.then_some(listen),
            ready_after_full_pass,
            damping,
            admission,
            unknown_keys,
        })
    }
}

/// `nats.callout`, for `nats.admission: callout`: the certificate, key, CA and seed files
/// are required and must be readable (the seeds' modes are checked where they are read).
fn callout(
    section: Field<Section<RawCallout>>,
    auth_file: &Path,
    dir: &Path,
) -> Result<CalloutSettings, Invalid> {
    let c = section.keys("nats.callout")?;
    let file = |field: Field<String>, key: &str| -> Result<PathBuf, Invalid> {
        let path = field.required_path(key, dir)?;
        std::fs::metadata(&path)
            .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
        Ok(path)
    };
    let url = c
        .url
        .text("nats.callout.url")?
        .unwrap_or_else(|| DEFAULT_CALLOUT_URL.to_owned());
    if !(url.starts_with("tls://") || url.starts_with("nats://")) {
        let message = format!("{url:?} is not a nats:// or tls:// URL");
        return Err(invalid("nats.callout.url", message));
    }
    let xkey_seed_file = match c.xkey_seed_file.path("nats.callout.xkey_seed_file", dir)? {
        None => None,
        Some(path) => {
            std::fs::metadata(&path).map_err(|e| {
                let message = format!("cannot read {}: {e}", path.display());
                invalid("nats.callout.xkey_seed_file", message)
            })?;
            Some(path)
        }
    };
    let state_file = c
        .state_file
        .path("nats.callout.state_file", dir)?
        .unwrap_or_else(|| {
            let mut name = auth_file.as_os_str().to_owned();
            name.push(".agents.json");
            PathBuf::from(name)
        });
    let timeout = c.timeout.seconds("nats.callout.timeout", 1.0)?;
    if timeout > Duration::from_secs(60) {
        let message = format!(
            "{} seconds is longer than a connecting client waits",
            timeout.as_secs_f64()
        );
        return Err(invalid("nats.callout.timeout", message));
    }
    Ok(CalloutSettings {
        url,
        cert_file: file(c.cert_file, "nats.callout.cert_file")?,
        key_file: file(c.key_file, "nats.callout.key_file")?,
        ca_file: file(c.ca_file, "nats.callout.ca_file")?,
        issuer_seed_file: file(c.issuer_seed_file, "nats.callout.issuer_seed_file")?,
        xkey_seed_file,
        user_ttl: c
            .user_ttl
            .seconds_or_zero("nats.callout.user_ttl", 3600.0)?,
        state_file,
        timeout,
    })
}

impl Section<RawFile> {
    /// The keys this program does not know, as dotted paths in the order `root` has them
    /// (every key is a string: see [`plain`]).
    fn unknown_keys(&self, root: &Mapping) -> Vec<String> {
        let file = &self.keys;
        let alias_ignored = matches!(&file.director,
            Field::Given(d) if !matches!(d.keys.director_ca_cert, Field::Absent));
        let mut unknown = Vec::new();
        for (key, value) in root {
            let name = key.as_str().unwrap_or_default();
            let section = match name {
                "director" => file.director.unknown(),
                "intervals" => file.intervals.unknown(),
                "nats" => file.nats.unknown(),
                "log" => file.log.unknown(),
                "http" => file.http.unknown(),
                "damping" => file.damping.unknown(),
                _ if self.unknown.contains_key(key) => {
                    unknown.push(name.to_owned());
                    continue;
                }
                _ => None,
            };
            let (Some(section), Value::Mapping(keys)) = (section, value) else {
                continue;
            };
            for (key, value) in keys {
                let Some(key) = key.as_str() else { continue };
                if section.contains_key(key)
                    || (alias_ignored && name == "director" && key == "ca_cert")
                {
                    unknown.push(format!("{name}.{key}"));
                }
                // The one section within a section.
                if name == "nats"
                    && key == "callout"
                    && let Field::Given(nats) = &file.nats
                    && let Some(callout) = nats.keys.callout.unknown()
                    && let Value::Mapping(keys) = value
                {
                    let names = keys.keys().filter_map(Value::as_str);
                    for key in names.filter(|k| callout.contains_key(*k)) {
                        unknown.push(format!("nats.callout.{key}"));
                    }
                }
            }
        }
        unknown
    }
}

impl Field<String> {
    /// The text, `None` when absent or empty.
    fn text(self, key: &str) -> Result<Option<String>, Invalid> {
        Ok(self.get(key)?.filter(|s| !s.is_empty()))
    }

    /// A path, relative to `dir` unless absolute; `None` when absent or empty.
    fn path(self, key: &str, dir: &Path) -> Result<Option<PathBuf>, Invalid> {
        Ok(self.text(key)?.map(|p| resolve(dir, p)))
    }

    fn required_path(self, key: &str, dir: &Path) -> Result<PathBuf, Invalid> {
        self.path(key, dir)?.ok_or_else(|| missing(key))
    }
}

impl Field<f64> {
    /// Seconds, more than zero; `default` when absent.
    fn seconds(self, key: &str, default: f64) -> Result<Duration, Invalid> {
        duration(key, self.get(key)?.unwrap_or(default), false)
    }

    /// Seconds, zero or more; `default` when absent.
    fn seconds_or_zero(self, key: &str, default: f64) -> Result<Duration, Invalid> {
        duration(key, self.get(key)?.unwrap_or(default), true)
    }

    /// A whole number from 1 to a million; `default` when absent.
    fn count(self, key: &str, default: usize) -> Result<usize, Invalid> {
        match self.get(key)? {
            None => Ok(default),
            Some(v) if v >= 1.0 && v.fract() == 0.0 && v <= 1_000_000.0 => Ok(v as usize),
            Some(v) => Err(invalid(
                key,
                format!("must be a whole number of at least 1, got {v}"),
            )),
        }
    }
}

fn duration(key: &str, seconds: f64, zero_ok: bool) -> Result<Duration, Invalid> {
    if seconds < 0.0 || (seconds == 0.0 && !zero_ok) {
        let bound = if zero_ok {
            "zero or more"
        } else {
            "greater than zero"
        };
        return Err(invalid(
            key,
            format!("must be {bound} seconds, got {seconds}"),
        ));
    }
    if seconds > 86_400.0 * 365.0 {
        return Err(invalid(
            key,
            format!("{seconds} seconds is more than a year"),
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// An `http` or `https` URL with a host: the director's, nats-server's monitoring endpoint.
fn http_url(key: &str, text: &str) -> Result<url::Url, Invalid> {
    url::Url::parse(text)
        .ok()
        .filter(director::is_http_base)
        .ok_or_else(|| invalid(key, format!("{text:?} is not an http(s) URL with a host")))
}

/// A secret from the environment or the file; an empty one is none.
fn secret(value: Option<String>) -> Option<Secret> {
    value.filter(|s| !s.is_empty()).map(Secret::new)
}

/// Text that is not only whitespace; blank is none.
fn non_blank(text: Option<String>) -> Option<String> {
    text.filter(|s| !s.trim().is_empty())
}

/// A path of the file: relative ones are relative to the file's directory.
fn resolve(dir: &Path, path: String) -> PathBuf {
    let path = PathBuf::from(path);
    if path.is_relative() {
        dir.join(path)
    } else {
        path
    }
}

/// A CA file that is absent means "use the next trust source" (§2.3); one that exists
/// but cannot be read is a configuration error rather than a silent fall-back.
fn readable_if_present(key: &str, path: Option<&Path>) -> Result<(), Invalid> {
    let Some(path) = path else { return Ok(()) };
    match std::fs::read(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(invalid(key, format!("cannot read {}: {e}", path.display()))),
    }
}
