//! The director's tasks as the event log shows them: a VM created or deleted the way its
//! create-VM and delete-VM steps do (two events around the row), a deploy or a delete of a
//! deployment inside the deployment lock, task numbers, and the task `?format=full` queues.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::deployments::{Vm, VmList};
use super::{DirectorHandle, Shared};
use crate::events::{NewEvent, TASK_USER};
use crate::fault::lock;

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

/// `job/uuid`, the instance name the director writes into VM events.
pub(super) fn instance_name(vm: &Vm) -> String {
    format!("{}/{}", vm.job, vm.id)
}

impl DirectorHandle {
    /// A new task id, as the director numbers its tasks (`task` of [`NewEvent`]).
    pub fn new_task(&self) -> String {
        self.log().next_task()
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
}

/// `?format=full`: the director queues a `vms` task to ask every agent for its stats and
/// redirects to it. The simulator only numbers the task (it serves no `/tasks`).
pub(super) fn vm_stats_task(shared: &Shared, headers: &HeaderMap) -> Response {
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
