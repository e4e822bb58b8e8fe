//! The BOSH director API client (§2): `/info`, `/deployments`, `/deployments/{name}/vms`,
//! `/events`, basic or UAA authentication, TLS trust selection, timeouts, body cap, error
//! classes.
//!
//! One [`Client`] lives for the whole process: it holds one connection pool per trust domain
//! (director, UAA; shared when both trust the same roots), the cached UAA token and the auth
//! mode the last `/info` announced, so connections, tokens and the mode are reused across
//! passes. [`Client::fetch_view`] is one full read (it always asks `/info`: it is also the
//! reachability probe); the watch's reads — [`Client::events`], [`Client::deployment_names`],
//! [`Client::refetch`] — use the cached mode, so an event poll costs one request. Every
//! request is a `director.request` tracing span (endpoint, URL, status) and is counted in
//! `metrics` by endpoint and HTTP status or error class.
//!
//! - `tls`: which CA file (or the system store) each pool trusts.
//! - `auth`: the mode `/info` announces, basic credentials, the UAA token cache and JWT checks.
//! - `http`: one request with its size cap, transport-error classification, span and metrics.
//! - `answer`: what each endpoint's answer (status, body) means — a value or an [`Error`].
//! - `events`: [`Event`], [`EventsQuery`] and [`decode_events`] (§2.5).
//! - `error`: [`Error`] (per fetch) and [`SettingsError`] (construction or missing credentials).

mod answer;
mod auth;
#[cfg(test)]
mod captured;
mod error;
mod events;
mod http;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tokio::time::Instant;
use tracing::Instrument;

use crate::secret::Secret;
use crate::vm::Vm;
use auth::{Credentials, FetchedToken, Mode, TokenCache};
pub use error::{Error, SettingsError};
pub use events::{Event, EventsDecodeError, EventsQuery, decode_events};
use http::{Request, display_url};

/// Everything the client needs, already validated by `config`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL, e.g. `https://10.0.0.6:25555` (no trailing path is assumed).
    pub url: url::Url,
    /// `director.user` / `director.password`, used when `/info` does not say UAA.
    pub basic: Option<(String, Secret)>,
    /// `director.client_id` / `director.client_secret`, used when `/info` says UAA.
    pub uaa_client: Option<(String, Secret)>,
    /// `director.director_ca_cert` (or its alias `ca_cert`).
    pub director_ca: Option<PathBuf>,
    /// `director.uaa_ca_cert`.
    pub uaa_ca: Option<PathBuf>,
    /// `director.uaa_public_key`; `None` when absent or blank.
    pub uaa_public_key: Option<String>,
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Whole-request timeout, 30 s by default.
    pub request_timeout: Duration,
    /// Largest response body accepted, 64 MiB by default.
    pub max_body_bytes: usize,
    /// `/vms` requests in flight at once; 1 = the older programs' sequential behaviour
    /// (0 is treated as 1).
    pub max_concurrency: usize,
    /// How long connection-class failures of `/info` are retried within one pass.
    pub connection_wait_timeout: Duration,
}

/// The `endpoint` label of every request the client makes, in
/// `bosh_nats_sync_director_requests_total` and
/// `bosh_nats_sync_director_request_duration_seconds` (`events` is the watch's read of the
/// event log, §6.6; `uaa_token` the client-credentials grant at UAA). The metrics export each
/// from start-up (§8).
pub const ENDPOINTS: [&str; 5] = ["info", "deployments", "vms", "events", "uaa_token"];

/// The `status` every endpoint answers when it succeeds, the one status known in advance:
/// `bosh_nats_sync_director_requests_total` has it for every endpoint from start-up. Other
/// statuses and the error classes appear when they first occur.
pub const SUCCESS_STATUS: &str = "200";

/// The `result` label of `bosh_nats_sync_uaa_token_fetches_total`, exported from start-up.
pub const UAA_TOKEN_RESULTS: [&str; 2] = ["ok", "error"];

/// How often `/info` is retried while the director is unreachable (§6.4).
const INFO_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// What a full read logs for a deployment whose `/vms` answered 404 (§2.4).
const VANISHED: &str = "deployment vanished before its VMs were listed; taking it as having none";

/// The director client. Invariant: `director` trusts the roots chosen for the director and
/// `uaa` those chosen for UAA (the same pool when both choices are equal); both live as
/// long as the client, so connections are reused across passes, as is the cached token.
/// `mode` is what the last successful `/info` announced, forgotten when the director answers
/// 401 (its authentication may have changed).
pub struct Client {
    settings: Settings,
    director: reqwest::Client,
    uaa: reqwest::Client,
    jwt_key: Option<jsonwebtoken::DecodingKey>,
    token: TokenCache,
    mode: std::sync::Mutex<Option<Mode>>,
    metrics: Arc<metrics::Metrics>,
}

/// What [`Client::refetch`] found for one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refetched {
    /// Its `/vms`, in the director's order.
    Vms(Vec<Vm>),
    /// `/deployments/{name}/vms` answered 404: the deployment is gone (or was never there).
    Gone,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &display_url(&self.settings.url))
            .field("verifies_uaa_tokens", &self.jwt_key.is_some())
            .finish_non_exhaustive()
    }
}

/// The credentials one read of the director uses, settled once `/info` has named the mode.
enum Auth<'a> {
    Basic {
        user: &'a str,
        password: &'a Secret,
    },
    Uaa {
        url: url::Url,
        client_id: &'a str,
        client_secret: &'a Secret,
    },
}

/// The part of a `/deployments` entry this client reads.
#[derive(serde::Deserialize)]
struct Deployment {
    name: String,
}

/// Whether `url` can be a base for the director's endpoints: `http` or `https`, with a host.
/// The one check of a URL the configuration names (the director's, nats-server's monitoring
/// endpoint).
pub fn is_http_base(url: &url::Url) -> bool {
    matches!(url.scheme(), "https" | "http") && url.host().is_some() && !url.cannot_be_a_base()
}

impl Client {
    /// Builds the HTTP clients (director and UAA trust, TLS 1.2 minimum, rustls/ring) and
    /// parses `uaa_public_key`. A CA file that exists, is non-blank and holds no certificate
    /// is a `SettingsError` naming the file.
    pub fn new(
        settings: Settings,
        metrics: Arc<metrics::Metrics>,
    ) -> Result<Client, SettingsError> {
        if !is_http_base(&settings.url) {
            return Err(SettingsError::DirectorUrl {
                url: display_url(&settings.url),
            });
        }
        let director_ca = settings.director_ca.as_deref();
        let (director_source, director_roots) = tls::select_roots(&[director_ca])?;
        let (uaa_source, uaa_roots) =
            tls::select_roots(&[settings.uaa_ca.as_deref(), director_ca])?;
        let director = http_client(&settings, director_roots)?;
        let uaa = if uaa_source == director_source {
            director.clone()
        } else {
            http_client(&settings, uaa_roots)?
        };
        tracing::debug!(
            ?director_source,
            ?uaa_source,
            "director client trust selected"
        );
        let jwt_key = auth::verification_key(settings.uaa_public_key.as_deref())
            .map_err(|detail| SettingsError::UaaPublicKey { detail })?;
        Ok(Client {
            settings,
            director,
            uaa,
            jwt_key,
            token: TokenCache::default(),
            mode: std::sync::Mutex::new(None),
            metrics,
        })
    }

    /// One full read of the director: `/info` (retrying connection-class failures about
    /// every second for `connection_wait_timeout`), `/deployments?exclude_*=true`, then
    /// every deployment's `/vms` with at most `max_concurrency` requests in flight.
    /// Deployments come in `/deployments` order, each with its VMs in the director's order.
    /// A 404 on one `/vms` = that deployment was deleted after the listing: it is left out
    /// (it has no VMs, and the next listing will not name it). Any other failure = `Err`.
    /// Cancel-safe: dropping the future aborts in-flight requests and sleeps.
    pub async fn fetch_view(&self) -> Result<Vec<(String, Vec<Vm>)>, Error> {
        // The span keeps the name traces and dashboards already know a full read by.
        let span = tracing::info_span!(
            "director.fetch_vms",
            deployments = tracing::field::Empty,
            vms = tracing::field::Empty,
        );
        async move {
            let mode = retry_transient(
                self.settings.connection_wait_timeout,
                INFO_RETRY_INTERVAL,
                || self.info(),
            )
            .await?;
            self.remember_mode(&mode);
            let auth = self.auth(mode)?;
            let deployments = self.deployments(&auth).await?;
            tracing::Span::current().record("deployments", deployments.len());
            let answers = self.vms_of_each(&auth, deployments, "deployments").await?;
            let view: Vec<(String, Vec<Vm>)> = answers
                .into_iter()
                .filter_map(|(name, answer)| match answer {
                    Refetched::Vms(vms) => Some((name, vms)),
                    Refetched::Gone => {
                        tracing::info!(deployment = name, "{VANISHED}");
                        None
                    }
                })
                .collect();
            let vms: usize = view.iter().map(|(_, vms)| vms.len()).sum();
            tracing::Span::current().record("vms", vms);
            Ok(view)
        }
        .instrument(span)
        .await
    }

    /// One page of the event log (§2.5): `GET /events` with the query's parameters, newest
    /// first, at most 200. One request when the auth mode is cached (see the type's
    /// invariant), else `/info` first (once: an event poll never waits for the director).
    pub async fn events(&self, query: EventsQuery) -> Result<Vec<Event>, Error> {
        let auth = self.auth(self.cached_mode().await?)?;
        let mut url = self.endpoint_url(&["events"]);
        let pairs = query.pairs();
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        let answer = self.send_authenticated("events", &url, &auth).await?;
        answer::events(&display_url(&url), &answer)
    }

    /// The deployment names alone: `GET /deployments` (with the cached auth mode, as
    /// [`Client::events`]).
    pub async fn deployment_names(&self) -> Result<Vec<String>, Error> {
        let auth = self.auth(self.cached_mode().await?)?;
        self.deployments(&auth).await
    }

    /// The `/vms` of just these deployments (with the cached auth mode, as
    /// [`Client::events`]), at most `max_concurrency` at once, answered in the order given.
    /// A 404 is [`Refetched::Gone`]; any other failure of any of them is `Err`. No names, no
    /// request.
    pub async fn refetch(&self, names: &[String]) -> Result<Vec<(String, Refetched)>, Error> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let span = tracing::info_span!("director.refetch", deployments = names.len());
        // Owned names: see `vms_of_each`.
        let names = names.to_vec();
        async move {
            let auth = self.auth(self.cached_mode().await?)?;
            self.vms_of_each(&auth, names, "events").await
        }
        .instrument(span)
        .await
    }

    /// Every named deployment's `/vms`, at most `max_concurrency` in flight, in the order of
    /// `names`. `source` is the endpoint the names came from, for the error of a name that
    /// cannot be a path segment.
    async fn vms_of_each(
        &self,
        auth: &Auth<'_>,
        names: Vec<String>,
        source: &'static str,
    ) -> Result<Vec<(String, Refetched)>, Error> {
        // Owned names: a stream over borrowed ones makes this future's `Send` proof fail
        // (a higher-ranked lifetime rustc cannot name), and the controller spawns it.
        let mut answers: Vec<(usize, String, Refetched)> =
            futures::stream::iter(names.into_iter().enumerate())
                .map(move |(index, name)| async move {
                    let answer = self.vms(auth, &name, source).await?;
                    Ok::<_, Error>((index, name, answer))
                })
                .buffer_unordered(self.settings.max_concurrency.max(1))
                .try_collect()
                .await?;
        answers.sort_unstable_by_key(|(index, _, _)| *index);
        Ok(answers
            .into_iter()
            .map(|(_, name, answer)| (name, answer))
            .collect())
    }

    /// The mode the last successful `/info` announced, or a new `/info` (one attempt).
    async fn cached_mode(&self) -> Result<Mode, Error> {
        if let Some(mode) = lock(&self.mode).clone() {
            return Ok(mode);
        }
        let mode = self.info().await?;
        self.remember_mode(&mode);
        Ok(mode)
    }

    fn remember_mode(&self, mode: &Mode) {
        *lock(&self.mode) = Some(mode.clone());
    }

    async fn info(&self) -> Result<Mode, Error> {
        let url = self.endpoint_url(&["info"]);
        let answer = self.send_director("info", &url, None).await?;
        answer::info(&display_url(&url), &answer)
    }

    fn auth(&self, mode: Mode) -> Result<Auth<'_>, Error> {
        match mode {
            Mode::Basic => match &self.settings.basic {
                Some((user, password)) => Ok(Auth::Basic { user, password }),
                None => Err(SettingsError::MissingCredentials {
                    mode: "basic",
                    keys: "director.user and director.password",
                }
                .into()),
            },
            Mode::Uaa { url } => match &self.settings.uaa_client {
                Some((client_id, client_secret)) => Ok(Auth::Uaa {
                    url,
                    client_id,
                    client_secret,
                }),
                None => Err(SettingsError::MissingCredentials {
                    mode: "UAA",
                    keys: "director.client_id and director.client_secret",
                }
                .into()),
            },
        }
    }

    async fn deployments(&self, auth: &Auth<'_>) -> Result<Vec<String>, Error> {
        let mut url = self.endpoint_url(&["deployments"]);
        url.query_pairs_mut()
            .append_pair("exclude_configs", "true")
            .append_pair("exclude_releases", "true")
            .append_pair("exclude_stemcells", "true")
            .append_pair("exclude_lock", "true");
        let answer = self.send_authenticated("deployments", &url, auth).await?;
        answer::deployments(&display_url(&url), &answer)
    }

    async fn vms(
        &self,
        auth: &Auth<'_>,
        deployment: &str,
        source: &'static str,
    ) -> Result<Refetched, Error> {
        let url = vms_url(&self.settings.url, deployment, source)?;
        let answer = self.send_authenticated("vms", &url, auth).await?;
        answer::vms(&display_url(&url), &answer)
    }

    async fn send_authenticated(
        &self,
        endpoint: &'static str,
        url: &url::Url,
        auth: &Auth<'_>,
    ) -> Result<answer::Answer, Error> {
        let credentials = match auth {
            Auth::Basic { user, password } => Credentials::Basic {
                user: (*user).to_string(),
                password: (*password).clone(),
            },
            Auth::Uaa {
                url: uaa,
                client_id,
                client_secret,
            } => {
                let token = self
                    .token
                    .get_or_fetch(uaa, || self.fetch_token(uaa, client_id, client_secret))
                    .await?;
                Credentials::Bearer(token)
            }
        };
        let answer = self
            .send_director(endpoint, url, Some(&credentials))
            .await?;
        if answer.status == 401 {
            // The director may have changed how it authenticates: the next read asks `/info`.
            *lock(&self.mode) = None;
            if let Auth::Uaa { .. } = auth {
                self.token.invalidate().await;
            }
        }
        Ok(answer)
    }

    async fn send_director(
        &self,
        endpoint: &'static str,
        url: &url::Url,
        credentials: Option<&Credentials>,
    ) -> Result<answer::Answer, Error> {
        let mut builder = self
            .director
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(credentials) = credentials {
            builder = credentials.apply(builder);
        }
        http::send(Request {
            endpoint,
            url: display_url(url),
            builder,
            max_body_bytes: self.settings.max_body_bytes,
            metrics: &self.metrics,
        })
        .await
    }

    /// `POST {uaa}/oauth/token` with the client-credentials grant, then verification when a
    /// key is configured. Every outcome is an `Auth` error or a token.
    async fn fetch_token(
        &self,
        uaa: &url::Url,
        client_id: &str,
        client_secret: &Secret,
    ) -> Result<FetchedToken, Error> {
        let result = self.request_token(uaa, client_id, client_secret).await;
        let [ok, error] = UAA_TOKEN_RESULTS;
        self.metrics
            .uaa_token_fetch(if result.is_ok() { ok } else { error });
        if let Err(e) = &result {
            tracing::warn!(error = %e, "UAA token fetch failed");
        }
        result
    }

    async fn request_token(
        &self,
        uaa: &url::Url,
        client_id: &str,
        client_secret: &Secret,
    ) -> Result<FetchedToken, Error> {
        let url = auth::token_url(uaa);
        let shown = display_url(&url);
        let builder = self
            .uaa
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .basic_auth(client_id, Some(client_secret.expose()))
            .body("grant_type=client_credentials");
        let body = http::send(Request {
            endpoint: "uaa_token",
            url: shown.clone(),
            builder,
            max_body_bytes: self.settings.max_body_bytes,
            metrics: &self.metrics,
        })
        .await
        .and_then(|answer| answer.into_success("uaa_token", &shown))
        .map_err(|e| Error::Auth {
            detail: format!("token request failed: {e}"),
        })?;
        let response: auth::TokenResponse =
            serde_json::from_slice(&body).map_err(|e| Error::Auth {
                detail: format!("token response from {shown} is not the expected JSON: {e}"),
            })?;
        if response.access_token.is_empty() {
            return Err(Error::Auth {
                detail: format!("token response from {shown} has an empty access_token"),
            });
        }
        if let Some(key) = &self.jwt_key {
            auth::verify_token(&response.access_token, key).map_err(|e| Error::TokenInvalid {
                detail: format!(
                    "token from {shown} failed verification against director.uaa_public_key: {e}"
                ),
            })?;
        }
        Ok(FetchedToken {
            token: Secret::new(response.access_token),
            expires_in: Duration::from_secs(response.expires_in.unwrap_or(0)),
        })
    }

    /// The director URL with `segments` appended to its path.
    fn endpoint_url(&self, segments: &[&str]) -> url::Url {
        let mut url = self.settings.url.clone();
        url.set_query(None);
        url.set_fragment(None);
        // `new` rejected URLs that cannot be a base, the only case where this has no effect.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }
}

fn http_client(
    settings: &Settings,
    roots: rustls::RootCertStore,
) -> Result<reqwest::Client, SettingsError> {
    let tls = tls::client_config(roots)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.request_timeout)
        // A redirect would carry credentials somewhere the configuration never named.
        .redirect(reqwest::redirect::Policy::none())
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .user_agent(concat!("bosh-nats-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SettingsError::HttpClient {
            detail: error::chain(&e),
        })
}

/// `{base}/deployments/{name}/vms` with the name as exactly one path segment: `/`, `?`,
/// `#`, `%`, `\` and spaces are percent-encoded. `.` and `..` cannot be sent as a segment
/// at all (URL normalisation would remove them), so such a name is an error of `source`, the
/// endpoint that named it.
fn vms_url(base: &url::Url, deployment: &str, source: &'static str) -> Result<url::Url, Error> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if matches!(deployment, "" | "." | "..") {
        return Err(Error::Decode {
            endpoint: source,
            url: display_url(base),
            detail: format!("deployment name {deployment:?} cannot be used in a URL path"),
        });
    }
    match url.path_segments_mut() {
        Ok(mut path) => {
            path.pop_if_empty()
                .extend(["deployments", deployment, "vms"]);
        }
        Err(()) => {
            return Err(Error::Config(SettingsError::DirectorUrl {
                url: display_url(base),
            }));
        }
    }
    Ok(url)
}

/// Decodes a `/deployments` body into the deployment names, the only field used. Public
/// so the fuzz targets exercise exactly what the client runs.
pub fn decode_deployments(body: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    let deployments: Vec<Deployment> = serde_json::from_slice(body)?;
    Ok(deployments.into_iter().map(|d| d.name).collect())
}

/// Decodes a `/deployments/{name}/vms` body. Public so the fuzz targets exercise exactly
/// what the client runs.
pub fn decode_vms(body: &[u8]) -> Result<Vec<Vm>, serde_json::Error> {
    serde_json::from_slice(body)
}

/// Locks a mutex whose data stays valid whatever a panicking holder was doing (a cached
/// value it replaces whole).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `attempt` until it succeeds, fails with a non-transient error, or `wait` has passed
/// since the first attempt; failed attempts are spaced `interval` apart (the last one lands
/// on the deadline). Uses tokio's clock, so it is cancel-safe and testable with paused time.
async fn retry_transient<T, F, Fut>(
    wait: Duration,
    interval: Duration,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + wait;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt().await {
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tracing::info!(error = %e, attempts, "director not reachable yet; retrying");
                tokio::time::sleep_until((Instant::now() + interval).min(deadline)).await;
            }
            Err(e) if e.is_transient() && attempts > 1 => {
                tracing::warn!(error = %e, attempts, "director still not reachable; giving up for this pass");
                return Err(e);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn base(u: &str) -> url::Url {
        url::Url::parse(u).expect("url")
    }

    #[test]
    fn deployment_names_are_one_encoded_segment() {
        let b = base("https://10.0.0.6:25555");
        let path = |name: &str| {
            vms_url(&b, name, "deployments")
                .expect("url")
                .path()
                .to_string()
        };
        assert_eq!(path("cf"), "/deployments/cf/vms");
        assert_eq!(path("a/b"), "/deployments/a%2Fb/vms");
        assert_eq!(path("a?b#c"), "/deployments/a%3Fb%23c/vms");
        assert_eq!(path("100%"), "/deployments/100%25/vms");
        assert_eq!(path("my dep"), "/deployments/my%20dep/vms");
        assert_eq!(path("a\\b"), "/deployments/a%5Cb/vms");
        assert_eq!(path("ünï"), "/deployments/%C3%BCn%C3%AF/vms");
        assert_eq!(path("..."), "/deployments/.../vms");
        for name in ["", ".", ".."] {
            let err = vms_url(&b, name, "events").expect_err(name);
            assert!(
                matches!(
                    err,
                    Error::Decode {
                        endpoint: "events",
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        let with_path = base("https://d.example/bosh/?x=1");
        assert_eq!(
            vms_url(&with_path, "cf", "deployments")
                .expect("url")
                .as_str(),
            "https://d.example/bosh/deployments/cf/vms"
        );
        // What the URL path decodes back to is exactly the name.
        let url = vms_url(&b, "a/b?c d%e", "deployments").expect("url");
        let segment = url
            .path_segments()
            .expect("segments")
            .nth(1)
            .expect("segment");
        let decoded = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .expect("utf8");
        assert_eq!(decoded, "a/b?c d%e");
    }

    #[test]
    fn vm_decoding_tolerates_nulls_and_absence() {
        let vms: Vec<Vm> = serde_json::from_str(
            r#"[
                {"agent_id":"a1","permanent_nats_credentials":true,"cid":"i-1","job":"x","index":0,"ips":["10.0.0.1"],"active":true},
                {"agent_id":null,"permanent_nats_credentials":null},
                {"permanent_nats_credentials":false},
                {"agent_id":"a4"}
            ]"#,
        )
        .expect("decode");
        assert_eq!(
            vms,
            vec![
                Vm {
                    agent_id: Some("a1".into()),
                    permanent_nats_credentials: true
                },
                Vm {
                    agent_id: None,
                    permanent_nats_credentials: false
                },
                Vm {
                    agent_id: None,
                    permanent_nats_credentials: false
                },
                Vm {
                    agent_id: Some("a4".into()),
                    permanent_nats_credentials: false
                },
            ]
        );
        assert!(
            serde_json::from_str::<Vec<Vm>>(r#"[{"permanent_nats_credentials":"yes"}]"#).is_err()
        );
    }

    #[test]
    fn deployments_decode_only_the_name() {
        let d: Vec<Deployment> = serde_json::from_str(
            r#"[{"name":"cf","releases":[{"name":"x"}],"stemcells":[],"cloud_config":"none","teams":[]}]"#,
        )
        .expect("decode");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].name, "cf");
    }

    fn settings() -> Settings {
        Settings {
            url: base("https://10.0.0.6:25555"),
            basic: Some(("admin".into(), Secret::new("basic-hunter2"))),
            uaa_client: Some(("nats_sync".into(), Secret::new("uaa-hunter2"))),
            director_ca: None,
            uaa_ca: None,
            uaa_public_key: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 64 << 20,
            max_concurrency: 4,
            connection_wait_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn secrets_never_show() {
        let s = settings();
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let e = Error::Config(SettingsError::MissingCredentials {
            mode: "basic",
            keys: "director.user",
        });
        assert!(!format!("{e} {e:?}").contains("hunter2"));
        let creds = Credentials::Basic {
            user: "admin".into(),
            password: Secret::new("hunter2"),
        };
        let req = creds
            .apply(test_client().get("https://d/x"))
            .build()
            .expect("request");
        assert!(!format!("{req:?}").contains("hunter2"));
        assert!(!format!("{req:?}").contains(&base64_of("admin:hunter2")));
    }

    /// A client that is never used to connect; only the requests it builds are inspected.
    fn test_client() -> reqwest::Client {
        let tls = tls::client_config(rustls::RootCertStore::empty()).expect("tls config");
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .expect("client")
    }

    fn base64_of(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn basic_header_is_standard_base64() {
        let creds = Credentials::Basic {
            user: "admin".into(),
            password: Secret::new("p@ss:wörd"),
        };
        let req = creds
            .apply(test_client().get("https://d/x"))
            .build()
            .expect("request");
        let header = req.headers()[reqwest::header::AUTHORIZATION]
            .to_str()
            .expect("ascii");
        assert_eq!(header, format!("Basic {}", base64_of("admin:p@ss:wörd")));
    }

    #[test]
    fn bad_configuration_is_refused_at_construction() {
        let metrics = Arc::new(metrics::Metrics::new());
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = dir.path().join("uaa_ca.pem");
        std::fs::write(&garbage, "garbage").expect("write");
        let err = Client::new(
            Settings {
                uaa_ca: Some(garbage.clone()),
                ..settings()
            },
            metrics.clone(),
        )
        .expect_err("garbage UAA CA accepted");
        assert!(err.to_string().contains("uaa_ca.pem"), "{err}");

        let err = Client::new(
            Settings {
                uaa_public_key: Some("nonsense".into()),
                ..settings()
            },
            metrics.clone(),
        )
        .expect_err("bad key accepted");
        assert!(matches!(err, SettingsError::UaaPublicKey { .. }), "{err}");

        let err = Client::new(
            Settings {
                url: base("mailto:x@y"),
                ..settings()
            },
            metrics,
        )
        .expect_err("mailto accepted");
        assert!(matches!(err, SettingsError::DirectorUrl { .. }), "{err}");
    }

    fn connection_error() -> Error {
        Error::Connection {
            endpoint: "info",
            url: "https://d/info".into(),
            detail: "refused".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn info_retries_transient_failures_about_every_second_until_the_wait_ends() {
        let attempts = AtomicUsize::new(0);
        let start = Instant::now();
        let err = retry_transient(Duration::from_secs(5), Duration::from_secs(1), || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(connection_error())
        })
        .await
        .expect_err("never succeeds");
        assert_eq!(err.reason(), "connection");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // t = 0, 1, 2, 3, 4, 5
        assert_eq!(attempts.load(Ordering::SeqCst), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn info_retry_stops_at_success_or_a_non_transient_error() {
        let attempts = AtomicUsize::new(0);
        let value = retry_transient(Duration::from_secs(60), Duration::from_secs(1), || async {
            if attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(connection_error())
            } else {
                Ok(7)
            }
        })
        .await
        .expect("third attempt succeeds");
        assert_eq!((value, attempts.load(Ordering::SeqCst)), (7, 3));

        let attempts = AtomicUsize::new(0);
        let start = Instant::now();
        let err = retry_transient(Duration::from_secs(60), Duration::from_secs(1), || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::Status {
                endpoint: "info",
                url: "https://d/info".into(),
                status: 500,
                detail: String::new(),
            })
        })
        .await
        .expect_err("status is final");
        assert_eq!(
            (err.reason(), attempts.load(Ordering::SeqCst)),
            ("status", 1)
        );
        assert_eq!(start.elapsed(), Duration::ZERO);

        let attempts = AtomicUsize::new(0);
        retry_transient(Duration::ZERO, Duration::from_secs(1), || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(connection_error())
        })
        .await
        .expect_err("no wait");
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }
}
