//! A fake BOSH director: `/info`, `/deployments`, `/deployments/{name}/vms` and `/events` over real HTTP(S), with basic or UAA auth, runtime state changes, request accounting and fault injection.
//!
//! State changes come in two kinds, as on the real director. The event-recording ones
//! ([`DirectorHandle::create_vm`], [`DirectorHandle::delete_vm`],
//! [`DirectorHandle::create_deployment`], [`DirectorHandle::delete_deployment`]) change the
//! deployments and record the events the director records for them (SPEC §2.5; see
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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::get;
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::events::{DEFAULT_MAX_EVENTS, EventLog, LogSnapshot, NewEvent, Query, TASK_USER};
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

/// A VM whose creation has begun: the first `create`/`vm` event is recorded and the "CPI" is
/// at work; the VM has no row yet. [`DirectorHandle::finish_create_vm`] inserts the row and
/// records the second event.
#[derive(Debug, Clone)]
#[must_use = "an unfinished creation leaves a create/vm event without its second half"]
pub struct VmCreation {
    deployment: String,
    vm: Vm,
    task: String,
    first_event: Option<u64>,
}

impl VmCreation {
    /// The deployment the VM is created in.
    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// The VM as its row will be inserted.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The id of the first `create`/`vm` event (`None` with `record_events` off).
    pub fn first_event(&self) -> Option<u64> {
        self.first_event
    }
}

/// A copy of the director's database — its deployments and its event log, with the id
/// sequence — to hand to [`DirectorHandle::restore`], as an operator restores a backup.
#[derive(Debug, Clone)]
pub struct DirectorSnapshot {
    deployments: BTreeMap<String, VmList>,
    log: LogSnapshot,
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

/// `job/uuid`, the instance name the director writes into VM events.
fn instance_name(vm: &Vm) -> String {
    format!("{}/{}", vm.job, vm.id)
}

/// The event log, and the changes that record events as the real director does (SPEC §2.5).
impl DirectorHandle {
    fn log(&self) -> std::sync::MutexGuard<'_, EventLog> {
        lock(&self.shared.events)
    }

    /// A new task id, as the director numbers its tasks (`task` of [`NewEvent`]).
    pub fn new_task(&self) -> String {
        self.log().next_task()
    }

    /// Records an arbitrary event (a lock, a config, a task of no deployment, …); its id, or
    /// `None` with `record_events` off.
    pub fn record_event(&self, event: NewEvent) -> Option<u64> {
        self.log().record(event)
    }

    /// Creates a VM the way the director's create-VM step does: `create`/`vm` (deployment and
    /// instance, no `object_name`), the row inserted, then `create`/`vm` again with
    /// `object_name` = the cid and `parent_id` = the first. Returns the second event's id.
    pub fn create_vm(&self, deployment: &str, vm: Vm) -> Option<u64> {
        let creation = self.begin_create_vm(deployment, vm);
        self.finish_create_vm(creation)
    }

    /// The first half of [`DirectorHandle::create_vm`]: the first event only.
    pub fn begin_create_vm(&self, deployment: &str, vm: Vm) -> VmCreation {
        let task = self.new_task();
        self.begin_in_task(deployment, vm, task)
    }

    fn begin_in_task(&self, deployment: &str, vm: Vm, task: String) -> VmCreation {
        let first_event = self.record_event(
            NewEvent::new("create", "vm")
                .user(TASK_USER)
                .task(&task)
                .deployment(deployment)
                .instance(&instance_name(&vm)),
        );
        VmCreation {
            deployment: deployment.to_owned(),
            vm,
            task,
            first_event,
        }
    }

    /// The second half: the row is inserted (as [`DirectorHandle::add_vm`] does), then the
    /// second `create`/`vm` event is recorded. Returns its id.
    pub fn finish_create_vm(&self, creation: VmCreation) -> Option<u64> {
        let VmCreation {
            deployment,
            vm,
            task,
            first_event,
        } = creation;
        let event = NewEvent::new("create", "vm")
            .user(TASK_USER)
            .task(&task)
            .deployment(&deployment)
            .instance(&instance_name(&vm))
            .object_name(&vm.cid)
            .parent(first_event);
        self.add_vm(&deployment, vm);
        self.record_event(event)
    }

    /// Deletes the (first) VM of `deployment` whose cid is `cid` the way the director's
    /// delete-VM step does: `delete`/`vm`, the row deleted, `delete`/`vm` again with
    /// `parent_id`. Returns the VM; `None`, and no event, when there is no such VM.
    pub fn delete_vm(&self, deployment: &str, cid: &str) -> Option<Vm> {
        let task = self.new_task();
        self.delete_in_task(deployment, cid, &task)
    }

    fn delete_in_task(&self, deployment: &str, cid: &str, task: &str) -> Option<Vm> {
        let vm = match lock(&self.shared.deployments).get(deployment) {
            Some(VmList::Typed(vms)) => vms.iter().find(|vm| vm.cid == cid).cloned(),
            _ => None,
        }?;
        let event = NewEvent::new("delete", "vm")
            .user(TASK_USER)
            .task(task)
            .deployment(deployment)
            .instance(&instance_name(&vm))
            .object_name(cid);
        let first = self.record_event(event.clone());
        self.update_vms(deployment, |vms| {
            if let Some(at) = vms.iter().position(|vm| vm.cid == cid) {
                vms.remove(at);
            }
        });
        self.record_event(event.parent(first));
        Some(vm)
    }

    /// Deploys `name` with these VMs, recording what a deploy records: the deployment lock
    /// acquired, `create`/`deployment` (`update` when it already exists), every VM created as
    /// [`DirectorHandle::create_vm`] does, the second deployment event, the lock released. An
    /// existing deployment keeps its VMs and gains these.
    pub fn create_deployment(&self, name: &str, vms: Vec<Vm>) {
        let task = self.new_task();
        let existed = {
            let mut map = lock(&self.shared.deployments);
            let existed = map.contains_key(name);
            if !existed {
                map.insert(name.to_owned(), VmList::Typed(Vec::new()));
            }
            existed
        };
        let action = if existed { "update" } else { "create" };
        self.in_deployment_lock(name, &task, action, || {
            for vm in vms {
                let creation = self.begin_in_task(name, vm, task.clone());
                self.finish_create_vm(creation);
            }
        });
    }

    /// Deletes a deployment the way `bosh delete-deployment` does: the lock, `delete`/
    /// `deployment`, every VM deleted as [`DirectorHandle::delete_vm`] does, the deployment
    /// removed, the second event, the lock released. `false`, and no event, if it is absent.
    pub fn delete_deployment(&self, name: &str) -> bool {
        let cids: Vec<String> = match lock(&self.shared.deployments).get(name) {
            None => return false,
            Some(VmList::Typed(vms)) => vms.iter().map(|vm| vm.cid.clone()).collect(),
            Some(VmList::Raw(_)) => Vec::new(),
        };
        let task = self.new_task();
        self.in_deployment_lock(name, &task, "delete", || {
            for cid in &cids {
                self.delete_in_task(name, cid, &task);
            }
            self.remove_deployment(name);
        });
        true
    }

    /// `acquire`/`lock`, `<action>`/`deployment`, `work`, the second deployment event with
    /// `parent_id`, `release`/`lock`.
    fn in_deployment_lock(&self, name: &str, task: &str, action: &str, work: impl FnOnce()) {
        let lock_name = format!("lock:deployment:{name}");
        let lock_event = |action: &str| {
            NewEvent::new(action, "lock")
                .user(TASK_USER)
                .task(task)
                .deployment(name)
                .object_name(&lock_name)
        };
        self.record_event(lock_event("acquire"));
        let event = NewEvent::new(action, "deployment")
            .user(TASK_USER)
            .task(task)
            .deployment(name)
            .object_name(name);
        let parent = self.record_event(event.clone());
        work();
        self.record_event(event.parent(parent));
        self.record_event(lock_event("release"));
    }

    /// Every event in the log, oldest first.
    pub fn events(&self) -> Vec<crate::events::Event> {
        self.log().all().to_vec()
    }

    /// The newest event's id (`None` for an empty log).
    pub fn last_event_id(&self) -> Option<u64> {
        self.log().all().last().map(|e| e.id)
    }

    /// Turns `record_events` on or off, as a redeploy of the director with the property
    /// changed does: off records nothing more, and the events already recorded stay and are
    /// served (the director keeps its table). For a log empty from the start, start the
    /// director with [`DirectorConfig::with_record_events`]`(false)` or call
    /// [`DirectorHandle::clear_events`].
    pub fn set_record_events(&self, record: bool) {
        self.log().record = record;
    }

    /// Whether events are being recorded.
    pub fn records_events(&self) -> bool {
        self.log().record
    }

    /// Sets `max_events` for the next clean-up.
    pub fn set_max_events(&self, max_events: usize) {
        self.log().max_events = max_events;
    }

    /// The director's hourly clean-up, now: keeps the newest `max_events` (and the parents
    /// they name); returns how many events were deleted. It also runs by itself whenever the
    /// log reaches twice `max_events`.
    pub fn clean_up_events(&self) -> usize {
        self.log().clean_up()
    }

    /// Empties the log (ids go on from where they were).
    pub fn clear_events(&self) {
        self.log().clear();
    }

    /// Fixes the director's clock at `epoch_seconds` (`None`: the system clock again). Event
    /// timestamps are read from it.
    pub fn set_time(&self, epoch_seconds: Option<i64>) {
        self.log().fixed_time = epoch_seconds;
    }

    /// The director's clock in epoch seconds.
    pub fn now(&self) -> i64 {
        self.log().now()
    }

    /// A copy of the deployments and the event log, for [`DirectorHandle::restore`].
    pub fn snapshot(&self) -> DirectorSnapshot {
        let deployments = lock(&self.shared.deployments);
        let log = self.log();
        DirectorSnapshot {
            deployments: deployments.clone(),
            log: log.snapshot(),
        }
    }

    /// Restores a snapshot, as an operator restores a database backup: the deployments and
    /// the event log go back, and so does the id sequence, so new events get ids a watcher
    /// has already seen. The settings (`record_events`, `max_events`) and the clock stay.
    pub fn restore(&self, snapshot: &DirectorSnapshot) {
        let mut deployments = lock(&self.shared.deployments);
        let mut log = self.log();
        deployments.clone_from(&snapshot.deployments);
        log.restore(&snapshot.log);
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

    /// What the controllers' `before` filter halts with: the path as text, the challenge.
    fn unauthorized(&self, uri: &Uri) -> Response {
        let mut response = Response::new(axum::body::Body::from(format!(
            "Not authorized: '{}'\n",
            uri.path()
        )));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        let headers = response.headers_mut();
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(HTML));
        response
    }

    /// The user named by valid basic credentials, as `/info` reports it (`null` otherwise;
    /// in UAA mode too, where the simulator does not read the token's user).
    fn user(&self, headers: &HeaderMap) -> Value {
        match &self.auth {
            DirectorAuth::Basic { user, .. } if self.authorized(headers) => json!(user),
            _ => Value::Null,
        }
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

async fn deployments(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let response = as_the_director_sends(
        Endpoint::Deployments,
        deployments_response(&shared, &uri, &headers).await,
    );
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
        return error_response(shared, Endpoint::Deployments, uri, code, None);
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
        as_the_director_sends(
            Endpoint::Vms,
            vms_response(&shared, &name, &uri, &headers).await,
        )
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
        return error_response(shared, Endpoint::Vms, uri, code, Some(name));
    }
    if !shared.authorized(headers) {
        return shared.unauthorized(uri);
    }
    let full = uri
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair == "format=full"));
    let body = match lock(&shared.deployments).get(name) {
        Some(_) if full => return vm_stats_task(shared, headers),
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

/// `?format=full`: the director queues a `vms` task to ask every agent for its stats and
/// redirects to it. The simulator only numbers the task (it serves no `/tasks`).
fn vm_stats_task(shared: &Shared, headers: &HeaderMap) -> Response {
    let task = lock(&shared.events).next_task();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let location = format!("{}://{host}/tasks/{task}", shared.scheme);
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

async fn list_events(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let response = as_the_director_sends(
        Endpoint::Events,
        list_events_response(&shared, &uri, &headers).await,
    );
    shared.record(Endpoint::Events, &uri, &headers, response.status());
    response
}

async fn list_events_response(shared: &Shared, uri: &Uri, headers: &HeaderMap) -> Response {
    let action = delay_then_action(shared.faults.fire(&FaultKey::Endpoint(Endpoint::Events))).await;
    if let FaultAction::Status(code) = action {
        return error_response(shared, Endpoint::Events, uri, code, None);
    }
    if !shared.authorized(headers) {
        return shared.unauthorized(uri);
    }
    let pairs = match UrlQuery::<Vec<(String, String)>>::try_from_uri(uri) {
        Ok(UrlQuery(pairs)) => pairs,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, e.body_text().into_bytes()),
    };
    // The director sets the JSON content type before it looks at the parameters, so its 400
    // is plain text under `application/json`.
    let query = match Query::parse(&pairs) {
        Ok(query) => query,
        Err(body) => return json_response(StatusCode::BAD_REQUEST, body.into_bytes()),
    };
    let body = {
        let log = lock(&shared.events);
        crate::events::to_body(&log.select(&query))
    };
    match body {
        Ok(body) => mangle(&action, body),
        Err(error) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"code": 100, "description": error.to_string()})
                .to_string()
                .into_bytes(),
        ),
    }
}

async fn show_event(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let response = as_the_director_sends(
        Endpoint::Events,
        show_event_response(&shared, &id, &uri, &headers).await,
    );
    shared.record(Endpoint::Events, &uri, &headers, response.status());
    response
}

async fn show_event_response(
    shared: &Shared,
    id: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let action = delay_then_action(shared.faults.fire(&FaultKey::Endpoint(Endpoint::Events))).await;
    if let FaultAction::Status(code) = action {
        return error_response(shared, Endpoint::Events, uri, code, None);
    }
    if !shared.authorized(headers) {
        return shared.unauthorized(uri);
    }
    let wanted = crate::events::ruby_to_i(id);
    let found = lock(&shared.events)
        .all()
        .iter()
        .find(|e| i128::from(e.id) == wanted)
        .map(crate::events::Event::to_json);
    match found {
        Some(event) => mangle(&action, event.to_string().into_bytes()),
        None => json_response(StatusCode::NOT_FOUND, b"Event not found".to_vec()),
    }
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
