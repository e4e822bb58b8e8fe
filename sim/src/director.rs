//! A fake BOSH director: `/info`, `/deployments` and `/deployments/{name}/vms` over real HTTP(S), with basic or UAA auth, runtime state changes, request accounting and fault injection.
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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::get;
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::fault::{
    Fault, FaultAction, FaultTable, delay_then_action, json_response, lock, mangle,
};
use crate::server::{Server, Transport};
use crate::uaa::verify_token;

/// A director API endpoint, for fault rules and request counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `GET /info`
    Info,
    /// `GET /deployments`
    Deployments,
    /// `GET /deployments/{name}/vms` (any deployment)
    Vms,
    /// Any other path (answered `404`).
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FaultKey {
    Endpoint(Endpoint),
    VmsOf(String),
}

/// How the director authenticates its API clients.
#[derive(Clone)]
pub enum DirectorAuth {
    /// HTTP basic with this user and password; `/info` reports `"type":"basic"`.
    Basic {
        /// Accepted user name.
        user: String,
        /// Accepted password.
        password: String,
    },
    /// Bearer tokens from a UAA; `/info` reports `"type":"uaa"` and this URL.
    Uaa {
        /// The UAA base URL reported in `/info` (`user_authentication.options.url`).
        url: String,
        /// PEM public key that must have signed the tokens (RS256/384/512).
        public_key_pem: String,
    },
}

impl std::fmt::Debug for DirectorAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirectorAuth::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .finish_non_exhaustive(),
            DirectorAuth::Uaa { url, .. } => f
                .debug_struct("Uaa")
                .field("url", url)
                .finish_non_exhaustive(),
        }
    }
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
        }
    }

    /// A UAA-mode director over plain HTTP; see [`crate::uaa::UaaSim::director_auth`].
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
}

/// One VM as `/deployments/{name}/vms` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vm {
    /// `null` while the VM is being created.
    pub agent_id: Option<String>,
    /// Cloud id.
    pub cid: String,
    /// Instance group name.
    pub job: String,
    /// Instance index.
    pub index: u32,
    /// Instance id (UUID).
    pub id: String,
    /// Availability zone.
    pub az: Option<String>,
    /// IP addresses.
    pub ips: Vec<String>,
    /// Creation time, RFC 3339.
    pub vm_created_at: String,
    /// Whether this is the instance's active VM.
    pub active: bool,
    /// `None` leaves the key out, as older directors do (clients must read it as `false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permanent_nats_credentials: Option<bool>,
}

impl Vm {
    /// A running VM with this agent id and `permanent_nats_credentials: false`.
    pub fn agent(agent_id: &str) -> Self {
        Vm {
            agent_id: Some(agent_id.to_owned()),
            cid: format!("vm-{agent_id}"),
            job: "worker".to_owned(),
            index: 0,
            id: format!("instance-{agent_id}"),
            az: Some("z1".to_owned()),
            ips: vec!["10.0.0.10".to_owned()],
            vm_created_at: "2024-01-01T00:00:00Z".to_owned(),
            active: true,
            permanent_nats_credentials: Some(false),
        }
    }

    /// A VM being created: `agent_id` is `null`.
    pub fn creating() -> Self {
        Vm {
            agent_id: None,
            cid: "vm-pending".to_owned(),
            ..Vm::agent("pending")
        }
    }

    /// Sets `permanent_nats_credentials`.
    pub fn permanent(mut self, permanent: bool) -> Self {
        self.permanent_nats_credentials = Some(permanent);
        self
    }
}

/// The VMs of one deployment: typed, or raw JSON for malformed-data tests.
#[derive(Debug, Clone)]
enum VmList {
    Typed(Vec<Vm>),
    Raw(Value),
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
    deployments: Mutex<BTreeMap<String, VmList>>,
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
        let shared = Arc::new(Shared {
            name: config.name,
            uuid: config.uuid,
            auth: config.auth,
            deployments: Mutex::new(BTreeMap::new()),
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
    /// Creates or replaces a deployment with these VMs.
    pub fn set_deployment(&self, name: &str, vms: Vec<Vm>) {
        lock(&self.shared.deployments).insert(name.to_owned(), VmList::Typed(vms));
    }

    /// Creates or replaces a deployment whose `/vms` answers this JSON verbatim.
    pub fn set_deployment_raw(&self, name: &str, vms: Value) {
        lock(&self.shared.deployments).insert(name.to_owned(), VmList::Raw(vms));
    }

    /// Replaces all deployments.
    pub fn set_deployments(&self, deployments: impl IntoIterator<Item = (String, Vec<Vm>)>) {
        let mut map = lock(&self.shared.deployments);
        map.clear();
        map.extend(
            deployments
                .into_iter()
                .map(|(name, vms)| (name, VmList::Typed(vms))),
        );
    }

    /// Deletes a deployment; `true` if it existed.
    pub fn remove_deployment(&self, name: &str) -> bool {
        lock(&self.shared.deployments).remove(name).is_some()
    }

    /// Adds a VM to a deployment, creating the deployment if needed (a raw deployment is
    /// replaced by a typed one holding just this VM).
    pub fn add_vm(&self, deployment: &str, vm: Vm) {
        let mut map = lock(&self.shared.deployments);
        match map.get_mut(deployment) {
            Some(VmList::Typed(vms)) => vms.push(vm),
            _ => {
                map.insert(deployment.to_owned(), VmList::Typed(vec![vm]));
            }
        }
    }

    /// Removes the VMs whose agent id is `agent_id`; returns how many were removed.
    pub fn remove_vm(&self, deployment: &str, agent_id: &str) -> usize {
        self.retain_vms(deployment, |vm| vm.agent_id.as_deref() != Some(agent_id))
    }

    /// Keeps only the VMs of `deployment` for which `keep` is true; returns how many were removed.
    pub fn retain_vms(&self, deployment: &str, mut keep: impl FnMut(&Vm) -> bool) -> usize {
        let mut map = lock(&self.shared.deployments);
        match map.get_mut(deployment) {
            Some(VmList::Typed(vms)) => {
                let before = vms.len();
                vms.retain(|vm| keep(vm));
                before - vms.len()
            }
            _ => 0,
        }
    }

    /// Applies `change` to the VMs of `deployment` (if it exists and is typed).
    pub fn update_vms<R>(
        &self,
        deployment: &str,
        change: impl FnOnce(&mut Vec<Vm>) -> R,
    ) -> Option<R> {
        match lock(&self.shared.deployments).get_mut(deployment) {
            Some(VmList::Typed(vms)) => Some(change(vms)),
            _ => None,
        }
    }

    /// The deployment names, sorted.
    pub fn deployment_names(&self) -> Vec<String> {
        lock(&self.shared.deployments).keys().cloned().collect()
    }

    /// The typed VMs of a deployment (`None` if absent or raw).
    pub fn vms(&self, deployment: &str) -> Option<Vec<Vm>> {
        match lock(&self.shared.deployments).get(deployment) {
            Some(VmList::Typed(vms)) => Some(vms.clone()),
            _ => None,
        }
    }

    /// All agent ids currently present (non-null), sorted and deduplicated.
    pub fn agent_ids(&self) -> Vec<String> {
        let map = lock(&self.shared.deployments);
        let mut ids: Vec<String> = map
            .values()
            .filter_map(|list| match list {
                VmList::Typed(vms) => Some(vms),
                VmList::Raw(_) => None,
            })
            .flatten()
            .filter_map(|vm| vm.agent_id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

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

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        match &self.auth {
            DirectorAuth::Basic { user, password } => {
                let Some(encoded) = value.strip_prefix("Basic ") else {
                    return false;
                };
                let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim())
                else {
                    return false;
                };
                decoded == format!("{user}:{password}").as_bytes()
            }
            DirectorAuth::Uaa { public_key_pem, .. } => {
                let token = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "));
                token.is_some_and(|t| verify_token(t.trim(), public_key_pem).is_ok())
            }
        }
    }

    fn unauthorized(&self, uri: &Uri) -> Response {
        let mut response = Response::new(axum::body::Body::from(format!(
            "Not authorized: '{}'\n",
            uri.path()
        )));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        let challenge = match self.auth {
            DirectorAuth::Basic { .. } => "Basic realm=\"BOSH Director\"",
            DirectorAuth::Uaa { .. } => "Bearer realm=\"BOSH Director\"",
        };
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        response
    }
}

fn error_response(shared: &Shared, uri: &Uri, status: u16, deployment: Option<&str>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match (status, deployment) {
        (StatusCode::UNAUTHORIZED, _) => shared.unauthorized(uri),
        (StatusCode::NOT_FOUND, Some(name)) => deployment_missing(name),
        _ => json_response(
            status,
            json!({"code": 100, "description": format!("simulated failure ({})", status.as_u16())})
                .to_string()
                .into_bytes(),
        ),
    }
}

fn deployment_missing(name: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"code": 70000, "description": format!("Deployment '{name}' doesn't exist")})
            .to_string()
            .into_bytes(),
    )
}

async fn info(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let action = delay_then_action(shared.faults.fire(&FaultKey::Endpoint(Endpoint::Info))).await;
    let response = if let FaultAction::Status(code) = action {
        error_response(&shared, &uri, code, None)
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
            "version": "280.0.0",
            "user": null,
            "cpi": "sim",
            "stemcell_os": "ubuntu-jammy",
            "stemcell_version": "1.0",
            "user_authentication": user_authentication,
            "features": {
                "local_dns": {"status": true, "extras": {"domain_name": "bosh"}},
                "power_dns": {"status": false, "extras": {"domain_name": "bosh"}},
                "snapshots": {"status": false},
                "config_server": {"status": false, "extras": {"urls": []}},
            },
        });
        mangle(&action, body.to_string().into_bytes())
    };
    shared.record(Endpoint::Info, &uri, &headers, response.status());
    response
}

async fn deployments(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let response = deployments_response(&shared, &uri, &headers).await;
    shared.record(Endpoint::Deployments, &uri, &headers, response.status());
    response
}

async fn deployments_response(shared: &Shared, uri: &Uri, headers: &HeaderMap) -> Response {
    let action = delay_then_action(
        shared
            .faults
            .fire(&FaultKey::Endpoint(Endpoint::Deployments)),
    )
    .await;
    if let FaultAction::Status(code) = action {
        return error_response(shared, uri, code, None);
    }
    if !shared.authorized(headers) {
        return shared.unauthorized(uri);
    }
    let excluded = |key: &str| {
        uri.query()
            .is_some_and(|q| q.split('&').any(|pair| pair == format!("{key}=true")))
    };
    let (configs, releases, stemcells, lock_info) = (
        !excluded("exclude_configs"),
        !excluded("exclude_releases"),
        !excluded("exclude_stemcells"),
        !excluded("exclude_lock"),
    );
    let names: Vec<String> = lock(&shared.deployments).keys().cloned().collect();
    let list: Vec<Value> = names
        .iter()
        .map(|name| {
            let mut d = serde_json::Map::new();
            d.insert("name".into(), json!(name));
            if configs {
                d.insert("cloud_config".into(), json!("latest"));
            }
            if releases {
                d.insert("releases".into(), json!([{"name": "bosh-dns", "version": "1.38.0"}]));
            }
            if stemcells {
                d.insert(
                    "stemcells".into(),
                    json!([{"name": "bosh-warden-boshlite-ubuntu-jammy-go_agent", "version": "1.0"}]),
                );
            }
            if lock_info {
                d.insert("locked".into(), json!(false));
            }
            d.insert("teams".into(), json!([]));
            Value::Object(d)
        })
        .collect();
    let doomed = std::mem::take(&mut *lock(&shared.delete_after_list));
    if !doomed.is_empty() {
        let mut map = lock(&shared.deployments);
        for name in doomed {
            map.remove(&name);
        }
    }
    mangle(&action, Value::Array(list).to_string().into_bytes())
}

/// Counts a `/vms` request as in flight for as long as it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.vms_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.vms_max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.vms_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn vms(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let response = {
        let _in_flight = InFlight::enter(&shared);
        vms_response(&shared, &name, &uri, &headers).await
    };
    shared.record(Endpoint::Vms, &uri, &headers, response.status());
    response
}

async fn vms_response(shared: &Shared, name: &str, uri: &Uri, headers: &HeaderMap) -> Response {
    let fault = shared
        .faults
        .fire(&FaultKey::VmsOf(name.to_owned()))
        .or_else(|| shared.faults.fire(&FaultKey::Endpoint(Endpoint::Vms)));
    let action = delay_then_action(fault).await;
    if let FaultAction::Status(code) = action {
        return error_response(shared, uri, code, Some(name));
    }
    if !shared.authorized(headers) {
        return shared.unauthorized(uri);
    }
    let body = match lock(&shared.deployments).get(name) {
        None => None,
        Some(VmList::Typed(vms)) => Some(serde_json::to_vec(vms)),
        Some(VmList::Raw(value)) => Some(serde_json::to_vec(value)),
    };
    match body {
        None => deployment_missing(name),
        Some(Ok(body)) => mangle(&action, body),
        Some(Err(error)) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"code": 100, "description": error.to_string()})
                .to_string()
                .into_bytes(),
        ),
    }
}

async fn not_found(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let response = json_response(
        StatusCode::NOT_FOUND,
        json!({"code": 404, "description": "Not found"})
            .to_string()
            .into_bytes(),
    );
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
