//! A fake BOSH director: `/info`, `/deployments`, `/deployments/{name}/vms` and `/events` over real HTTP(S), with basic or UAA auth, runtime state changes, request accounting and fault injection.
//!
//! State changes come in two kinds, as on the real director. The event-recording ones
//! ([`DirectorHandle::create_vm`], [`DirectorHandle::delete_vm`],
//! [`DirectorHandle::create_deployment`], [`DirectorHandle::delete_deployment`]) change the
//! deployments and record the events the director records for them (§2.5; see
//! [`crate::events`]). The others (`set_deployment`, `add_vm`, `remove_vm`, `update_vms`, …)
//! change the deployments without an event, like the director's few internal paths that do.
//!
//! The answers have the real director's shapes, status codes and headers, as captured from
//! its own controllers (`src/director/testdata/director-responses/`, compared with these
//! answers by `sim/tests/captured.rs`): JSON under `text/html;charset=utf-8` on
//! `/deployments` and `/vms` (their errors too), under `application/json` on `/info` and
//! `/events` (whose `400` is plain text all the same); `WWW-Authenticate: Basic realm="BOSH
//! Director"` on every answer of an authenticated endpoint, in UAA mode too; a `401` as the
//! text `Not authorized: '<path>'`; `?format=full` on `/vms` a `302` to a task; an unknown
//! path Rack's plain-text `404`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sim::director::{DirectorSim, DirectorConfig, Vm};
//! use sim::pki::Pki;
//! let pki = Pki::generate()?;
//! let director = DirectorSim::start(DirectorConfig::basic("admin", "secret")
//!     .with_tls(pki.server_config()?)).await?;
//! director.set_deployment("cf", vec![Vm::agent("a1"), Vm::creating()]);
//! let url = director.url(); // https://127.0.0.1:PORT
//! # Ok(()) }
//! ```

//!
//! What it simulates, a module each: [`auth`] (basic or UAA bearer tokens, the `401`),
//! [`deployments`] (the deployments, their VMs and the two endpoints that list them),
//! [`event_log`] (the log's settings, backup and restore, `GET /events`), [`tasks`] (VMs and
//! deployments created and deleted the way the director's tasks do, with their events and
//! locks). This file holds what they share: the server, its configuration, fault rules and
//! request accounting, and `/info`.

mod auth;
mod deployments;
mod event_log;
mod tasks;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

pub use auth::{DirectorAuth, TokenError, verify_token};
pub use deployments::Vm;
use deployments::{VmList, deployment_missing, deployments, vms};
pub use event_log::DirectorSnapshot;
use event_log::{list_events, show_event};
pub use tasks::VmCreation;

use crate::events::{DEFAULT_MAX_EVENTS, EventLog, NewEvent};
use crate::fault::{
    Fault, FaultAction, FaultTable, delay_then_action, json_response, lock, mangle,
};
use crate::server::{Server, Transport};

/// A director API endpoint, for fault rules and request counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `GET /info`
    Info,
    /// `GET /deployments`
    Deployments,
    /// `GET /deployments/{name}/vms` (any deployment)
    Vms,
    /// `GET /events` and `GET /events/{id}`
    Events,
    /// Any other path (answered `404`).
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FaultKey {
    Endpoint(Endpoint),
    VmsOf(String),
}

/// How to start a [`DirectorSim`].
#[derive(Debug, Clone)]
pub struct DirectorConfig {
    /// Director name in `/info`.
    pub name: String,
    /// Director UUID in `/info`.
    pub uuid: String,
    /// Authentication mode.
    pub auth: DirectorAuth,
    /// Plain HTTP or HTTPS.
    pub transport: Transport,
    /// `director.events.record_events`: whether events are recorded (the job's own default
    /// is `false`; bosh-deployment, and so this simulator, sets `true`).
    pub record_events: bool,
    /// `director.events.max_events`: how many events a clean-up keeps (default 10 000).
    pub max_events: usize,
    /// Record the `start`/`director` event the real director records whenever it starts
    /// (stamped with the time of the start, whatever the ids around it). Off by default, so
    /// that a test's own events are numbered from 1.
    pub start_event: bool,
}

impl DirectorConfig {
    /// A basic-auth director over plain HTTP (use [`DirectorConfig::with_tls`] for HTTPS).
    pub fn basic(user: &str, password: &str) -> Self {
        DirectorConfig {
            name: "sim".to_owned(),
            uuid: "8b4b3c2e-0f0e-4a8e-9f6c-5a1d2e3f4a5b".to_owned(),
            auth: DirectorAuth::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            },
            transport: Transport::Plain,
            record_events: true,
            max_events: DEFAULT_MAX_EVENTS,
            start_event: false,
        }
    }

    /// A UAA-mode director over plain HTTP, whose `auth` a simulated UAA gives
    /// (`UaaSim::director_auth`).
    pub fn uaa(auth: DirectorAuth) -> Self {
        DirectorConfig {
            auth,
            ..DirectorConfig::basic("", "")
        }
    }

    /// Serve HTTPS with this server configuration.
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.transport = Transport::Tls(config);
        self
    }

    /// Sets `record_events`; a director started with `false` answers `GET /events` with `[]`
    /// for ever.
    pub fn with_record_events(mut self, record: bool) -> Self {
        self.record_events = record;
        self
    }

    /// Sets `max_events`.
    pub fn with_max_events(mut self, max_events: usize) -> Self {
        self.max_events = max_events;
        self
    }

    /// Sets `start_event`: the log begins with the director's own `start`/`director` event.
    pub fn with_start_event(mut self, start_event: bool) -> Self {
        self.start_event = start_event;
        self
    }
}

/// One request the director answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// The raw (still percent-encoded) path.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// The status sent.
    pub status: u16,
    /// Which kind of `Authorization` header came with it (never its value).
    pub auth: AuthSeen,
}

/// The kind of credentials a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSeen {
    /// No `Authorization` header.
    None,
    /// `Basic …`
    Basic,
    /// `Bearer …`
    Bearer,
    /// Something else.
    Other,
}

/// How many request records are kept; counters are kept for all requests.
const RECORD_LIMIT: usize = 10_000;

/// The director's version: `/info` sends it with the commit, the `start` event's context
/// without.
const VERSION: &str = "280.0.0";

/// The user of the director's own events (`start`/`director`).
const DIRECTOR_USER: &str = "_director";

/// The challenge of every answer of an authenticated endpoint. The director sends it in UAA
/// mode too: its controllers set it whatever the identity provider.
const REALM: &str = "Basic realm=\"BOSH Director\"";

/// The content type of `/deployments` and `/vms` answers, JSON bodies included (Sinatra's
/// default; those controllers never set one), and of every `401`.
const HTML: &str = "text/html;charset=utf-8";

/// The content type `/info` and `/events` set before anything else, so their plain-text
/// errors carry it too.
const JSON: &str = "application/json";

#[derive(Debug, Default)]
struct Stats {
    counts: HashMap<(Endpoint, u16), u64>,
    records: VecDeque<RequestRecord>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    uuid: String,
    auth: DirectorAuth,
    /// `http` or `https`, for the `Location` of a redirect.
    scheme: &'static str,
    /// Lock order: `deployments` before `events` wherever both are held.
    deployments: Mutex<BTreeMap<String, VmList>>,
    events: Mutex<EventLog>,
    delete_after_list: Mutex<Vec<String>>,
    faults: FaultTable<FaultKey>,
    stats: Mutex<Stats>,
    vms_in_flight: AtomicUsize,
    vms_max_in_flight: AtomicUsize,
}

/// A cloneable handle on a running director's state: mutate deployments, inject faults, read
/// request counts. All methods take effect for the next request.
///
/// Invariant: every clone refers to the same director; `vms_max_in_flight` never decreases
/// except through [`DirectorHandle::reset_stats`].
#[derive(Debug, Clone)]
pub struct DirectorHandle {
    shared: Arc<Shared>,
}

/// A running fake director; it stops when dropped. Dereferences to its [`DirectorHandle`].
#[derive(Debug)]
pub struct DirectorSim {
    server: Server,
    handle: DirectorHandle,
}

impl std::ops::Deref for DirectorSim {
    type Target = DirectorHandle;
    fn deref(&self) -> &DirectorHandle {
        &self.handle
    }
}

impl DirectorSim {
    /// Starts the director on `127.0.0.1:<free port>`; requires a Tokio runtime.
    pub async fn start(config: DirectorConfig) -> io::Result<DirectorSim> {
        let scheme = match config.transport {
            Transport::Plain => "http",
            Transport::Tls(_) => "https",
        };
        let mut log = EventLog::new(config.record_events, config.max_events);
        if config.start_event {
            // `Bosh::Director::App#initialize`: `start`/`director`, named by the uuid.
            log.record(
                NewEvent::new("start", "director")
                    .user(DIRECTOR_USER)
                    .object_name(&config.uuid)
                    .context(json!({"version": VERSION})),
            );
        }
        let shared = Arc::new(Shared {
            name: config.name,
            uuid: config.uuid,
            auth: config.auth,
            scheme,
            deployments: Mutex::new(BTreeMap::new()),
            events: Mutex::new(log),
            delete_after_list: Mutex::new(Vec::new()),
            faults: FaultTable::new(),
            stats: Mutex::new(Stats::default()),
            vms_in_flight: AtomicUsize::new(0),
            vms_max_in_flight: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/info", get(info))
            .route("/deployments", get(deployments))
            .route("/deployments/{name}/vms", get(vms))
            .route("/events", get(list_events))
            .route("/events/{id}", get(show_event))
            .fallback(not_found)
            .with_state(shared.clone());
        let server = Server::start(router, config.transport).await?;
        Ok(DirectorSim {
            server,
            handle: DirectorHandle { shared },
        })
    }

    /// The base URL, e.g. `https://127.0.0.1:40123` (no trailing slash).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The bound address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// A cloneable handle, e.g. for a churn task.
    pub fn handle(&self) -> DirectorHandle {
        self.handle.clone()
    }

    /// `true`: close the port (connections refused) and drop open connections;
    /// `false`: listen again on the same port.
    pub fn set_down(&self, down: bool) {
        self.server.set_down(down);
    }
}

impl DirectorHandle {
    /// The next `GET /deployments` still lists `name`, and then the deployment is deleted, so
    /// its `/vms` answers 404 — the race of a deployment deleted between the two calls.
    pub fn delete_after_next_list(&self, name: &str) {
        lock(&self.shared.delete_after_list).push(name.to_owned());
    }

    /// Installs a fault rule for an endpoint (replacing any previous one).
    pub fn set_fault(&self, endpoint: Endpoint, fault: Fault) {
        self.shared.faults.set(FaultKey::Endpoint(endpoint), fault);
    }

    /// Installs a fault rule for one deployment's `/vms`; it takes precedence over the
    /// [`Endpoint::Vms`] rule. `Fault::status(404)` answers the director's real
    /// "Deployment '<name>' doesn't exist" body.
    pub fn set_vms_fault(&self, deployment: &str, fault: Fault) {
        self.shared
            .faults
            .set(FaultKey::VmsOf(deployment.to_owned()), fault);
    }

    /// Removes the fault rule of an endpoint.
    pub fn clear_fault(&self, endpoint: Endpoint) {
        self.shared.faults.clear(&FaultKey::Endpoint(endpoint));
    }

    /// Removes the fault rule of one deployment's `/vms`.
    pub fn clear_vms_fault(&self, deployment: &str) {
        self.shared
            .faults
            .clear(&FaultKey::VmsOf(deployment.to_owned()));
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.shared.faults.clear_all();
    }

    /// Requests answered on `endpoint`, any status.
    pub fn request_count(&self, endpoint: Endpoint) -> u64 {
        lock(&self.shared.stats)
            .counts
            .iter()
            .filter(|((e, _), _)| *e == endpoint)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests answered on `endpoint` with `status`.
    pub fn status_count(&self, endpoint: Endpoint, status: u16) -> u64 {
        lock(&self.shared.stats)
            .counts
            .get(&(endpoint, status))
            .copied()
            .unwrap_or(0)
    }

    /// The most recent requests (up to 10 000), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.stats).records.iter().cloned().collect()
    }

    /// The raw query strings of every recorded `GET /deployments` (empty string when none).
    pub fn deployments_queries(&self) -> Vec<String> {
        lock(&self.shared.stats)
            .records
            .iter()
            .filter(|r| r.endpoint == Endpoint::Deployments)
            .map(|r| r.query.clone().unwrap_or_default())
            .collect()
    }

    /// The largest number of `/vms` requests that were being handled at the same time (a
    /// request counts from its arrival until its response head is ready, fault delays included).
    pub fn max_concurrent_vms(&self) -> usize {
        self.shared.vms_max_in_flight.load(Ordering::SeqCst)
    }

    /// Forgets counts, records and the concurrency maximum.
    pub fn reset_stats(&self) {
        *lock(&self.shared.stats) = Stats::default();
        self.shared.vms_max_in_flight.store(0, Ordering::SeqCst);
    }
}

impl Shared {
    fn record(&self, endpoint: Endpoint, uri: &Uri, headers: &HeaderMap, status: StatusCode) {
        let auth = match headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
        {
            None => AuthSeen::None,
            Some(v) if v.starts_with(b"Basic ") => AuthSeen::Basic,
            Some(v) if v.starts_with(b"Bearer ") || v.starts_with(b"bearer ") => AuthSeen::Bearer,
            Some(_) => AuthSeen::Other,
        };
        let mut stats = lock(&self.stats);
        *stats.counts.entry((endpoint, status.as_u16())).or_default() += 1;
        if stats.records.len() >= RECORD_LIMIT {
            stats.records.pop_front();
        }
        stats.records.push_back(RequestRecord {
            endpoint,
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            status: status.as_u16(),
            auth,
        });
    }
}

/// The headers every answer of an authenticated endpoint carries, whatever produced it
/// (fault rules included): the challenge, and the endpoint's content type (`401`s are the
/// filter's, before any controller set one). Rack's answer for a path no route takes
/// (`X-Cascade: pass`) comes from no controller and is left as it is.
fn as_the_director_sends(endpoint: Endpoint, mut response: Response) -> Response {
    if response.headers().contains_key("x-cascade") {
        return response;
    }
    let content_type = match endpoint {
        _ if response.status() == StatusCode::UNAUTHORIZED => HTML,
        Endpoint::Deployments | Endpoint::Vms => HTML,
        Endpoint::Events => JSON,
        Endpoint::Info | Endpoint::Other => return response,
    };
    let headers = response.headers_mut();
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Rack's answer for a path no route of the director takes; also what a director older than
/// an endpoint answers for it.
fn no_route(uri: &Uri) -> Response {
    let mut response = Response::new(axum::body::Body::from(format!("Not Found: {}", uri.path())));
    *response.status_mut() = StatusCode::NOT_FOUND;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert("x-cascade", HeaderValue::from_static("pass"));
    response
}

/// The answer a fault rule's status stands for: a `401` is the filter's, a `404` on `/vms` the
/// deployment's absence, a `404` on `/events` a director without the endpoint; any other
/// status is the director's JSON error.
fn error_response(
    shared: &Shared,
    endpoint: Endpoint,
    uri: &Uri,
    status: u16,
    deployment: Option<&str>,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match (status, deployment) {
        (StatusCode::UNAUTHORIZED, _) => shared.unauthorized(uri),
        (StatusCode::NOT_FOUND, Some(name)) => deployment_missing(name),
        (StatusCode::NOT_FOUND, None) if endpoint == Endpoint::Events => no_route(uri),
        _ => json_response(
            status,
            json!({"code": 100, "description": format!("simulated failure ({})", status.as_u16())})
                .to_string()
                .into_bytes(),
        ),
    }
}

async fn info(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let action = delay_then_action(shared.faults.fire(&FaultKey::Endpoint(Endpoint::Info))).await;
    let response = if let FaultAction::Status(code) = action {
        error_response(&shared, Endpoint::Info, &uri, code, None)
    } else {
        let user_authentication = match &shared.auth {
            DirectorAuth::Basic { .. } => json!({"type": "basic", "options": {}}),
            DirectorAuth::Uaa { url, .. } => {
                json!({"type": "uaa", "options": {"url": url, "urls": [url]}})
            }
        };
        let body = json!({
            "name": shared.name,
            "uuid": shared.uuid,
            "version": format!("{VERSION} (00000000)"),
            "user": shared.user(&headers),
            "cpi": "sim",
            "stemcell_os": "ubuntu-jammy",
            "stemcell_version": "1.0",
            "user_authentication": user_authentication,
            "features": {
                "local_dns": {"status": true, "extras": {"domain_name": "bosh"}},
                "snapshots": {"status": false},
                "config_server": {"status": false, "extras": {"urls": []}},
            },
        });
        mangle(&action, body.to_string().into_bytes())
    };
    shared.record(Endpoint::Info, &uri, &headers, response.status());
    response
}

async fn not_found(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let response = no_route(&uri);
    shared.record(Endpoint::Other, &uri, &headers, response.status());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let config = DirectorConfig::basic("admin", "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
        let uaa = DirectorAuth::Uaa {
            url: "https://u".into(),
            public_key_pem: "KEY".into(),
        };
        assert!(format!("{uaa:?}").contains("https://u"));
    }
}
