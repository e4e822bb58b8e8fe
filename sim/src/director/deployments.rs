//! The deployments and their VMs, and the two endpoints that list them: `/deployments` and
//! `/deployments/{name}/vms`, with the real director's shapes (the extra `/vms` fields, the
//! JSON `404` of a deployment that does not exist).

use std::sync::atomic::Ordering;

use serde::Serialize;
use serde_json::Value;

use super::DirectorHandle;
use super::tasks::vm_stats_task;
use super::{Endpoint, FaultKey, Shared, as_the_director_sends, error_response};
use crate::fault::{FaultAction, delay_then_action, json_response, lock, mangle};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::json;

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
pub(super) enum VmList {
    Typed(Vec<Vm>),
    Raw(Value),
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
}

pub(super) fn deployment_missing(name: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"code": 70000, "description": format!("Deployment '{name}' doesn't exist")})
            .to_string()
            .into_bytes(),
    )
}

pub(super) async fn deployments(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let response = as_the_director_sends(
        Endpoint::Deployments,
        deployments_response(&shared, &uri, &headers).await,
    );
    shared.record(Endpoint::Deployments, &uri, &headers, response.status());
    response
}

pub(super) async fn deployments_response(
    shared: &Shared,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
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

pub(super) async fn vms(
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

pub(super) async fn vms_response(
    shared: &Shared,
    name: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
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
