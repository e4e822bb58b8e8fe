//! VM churn for demos and soak tests: a background task that keeps creating and deleting VMs in a simulated deployment.
//!
//! Each step first finishes the VM creations the previous step began (their rows appear and
//! their second `create`/`vm` events are recorded), then creates or deletes one VM, steering
//! the deployment's size towards `target_vms`, and now and then records events that name no
//! deployment (locks of releases, cloud-config updates), as a busy director's log holds. Every
//! change goes through the director's event-recording methods, so the log announces each one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::director::{DirectorHandle, Vm, VmCreation};
use crate::events::{NewEvent, TASK_USER};

/// How a [`Churn`] behaves.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    /// The deployment whose VMs churn (created if absent).
    pub deployment: String,
    /// Time between steps.
    pub interval: Duration,
    /// The size the deployment hovers around.
    pub target_vms: usize,
    /// Probability that a new VM takes until the next step to create: its first `create`/`vm`
    /// event is recorded now, its row and second event next step (the CPI at work).
    pub creating_ratio: f64,
    /// Probability that a new VM has `permanent_nats_credentials: true`.
    pub permanent_ratio: f64,
    /// Probability that a step also records a pair of events that name no deployment.
    pub other_events_ratio: f64,
    /// RNG seed for a reproducible sequence; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl ChurnConfig {
    /// Churn `deployment` every `interval` around `target_vms` VMs, 20% of them taking a step
    /// to create, 25% with permanent credentials, events of no deployment in 10% of the steps.
    pub fn new(deployment: &str, interval: Duration, target_vms: usize) -> Self {
        ChurnConfig {
            deployment: deployment.to_owned(),
            interval,
            target_vms,
            creating_ratio: 0.2,
            permanent_ratio: 0.25,
            other_events_ratio: 0.1,
            seed: None,
        }
    }

    /// Use a fixed seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// Counters of what a churn did.
#[derive(Debug, Default)]
pub struct ChurnStats {
    steps: AtomicU64,
    added: AtomicU64,
    removed: AtomicU64,
}

impl ChurnStats {
    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::SeqCst)
    }
    /// VMs added.
    pub fn added(&self) -> u64 {
        self.added.load(Ordering::SeqCst)
    }
    /// VMs removed.
    pub fn removed(&self) -> u64 {
        self.removed.load(Ordering::SeqCst)
    }
}

/// The churn state machine, usable step by step without a task (for deterministic tests).
///
/// Invariant: `next_index` grows by one per VM begun, so every VM gets a distinct
/// `cid`/`index`; `pending` holds the creations begun by the last step and not yet finished.
#[derive(Debug)]
pub struct Churner {
    director: DirectorHandle,
    config: ChurnConfig,
    rng: StdRng,
    next_index: u32,
    pending: Vec<VmCreation>,
    stats: Arc<ChurnStats>,
}

impl Churner {
    /// A churner over `director`.
    pub fn new(director: DirectorHandle, config: ChurnConfig) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        if director.vms(&config.deployment).is_none() {
            director.create_deployment(&config.deployment, Vec::new());
        }
        Churner {
            director,
            config,
            rng,
            next_index: 0,
            pending: Vec::new(),
            stats: Arc::new(ChurnStats::default()),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<ChurnStats> {
        self.stats.clone()
    }

    /// One step: finish the creations begun last step, then create or delete one VM, and
    /// perhaps record events of no deployment.
    pub fn step(&mut self) {
        for creation in std::mem::take(&mut self.pending) {
            self.director.finish_create_vm(creation);
            self.stats.added.fetch_add(1, Ordering::SeqCst);
        }
        let deployment = self.config.deployment.clone();
        let cids: Vec<String> = self
            .director
            .vms(&deployment)
            .unwrap_or_default()
            .into_iter()
            .map(|vm| vm.cid)
            .collect();
        let len = cids.len();
        let target = self.config.target_vms;
        let add = if len < target / 2 + 1 {
            true
        } else if len > target + target / 2 {
            false
        } else {
            self.rng.random_bool(0.5)
        };
        if add {
            let vm = self.new_vm();
            if self
                .rng
                .random_bool(self.config.creating_ratio.clamp(0.0, 1.0))
            {
                self.pending
                    .push(self.director.begin_create_vm(&deployment, vm));
            } else {
                self.director.create_vm(&deployment, vm);
                self.stats.added.fetch_add(1, Ordering::SeqCst);
            }
        } else if len > 0 {
            let victim = &cids[self.rng.random_range(0..len)];
            if self.director.delete_vm(&deployment, victim).is_some() {
                self.stats.removed.fetch_add(1, Ordering::SeqCst);
            }
        }
        if self
            .rng
            .random_bool(self.config.other_events_ratio.clamp(0.0, 1.0))
        {
            self.record_other_events();
        }
        self.stats.steps.fetch_add(1, Ordering::SeqCst);
    }

    fn new_vm(&mut self) -> Vm {
        let mut vm = Vm::agent(&uuid(&mut self.rng));
        vm.index = self.next_index;
        vm.cid = format!("vm-{:08x}", self.next_index);
        vm.id = uuid(&mut self.rng);
        vm.ips = vec![format!(
            "10.0.{}.{}",
            (self.next_index / 250) % 250,
            self.next_index % 250 + 2
        )];
        self.next_index += 1;
        vm.permanent_nats_credentials = Some(
            self.rng
                .random_bool(self.config.permanent_ratio.clamp(0.0, 1.0)),
        );
        vm
    }

    /// A task of no deployment: a release's lock taken and released, or the cloud config
    /// updated (begun and finished).
    fn record_other_events(&mut self) {
        let task = self.director.new_task();
        let (action, object_type, object_name) = if self.rng.random_bool(0.5) {
            ("acquire", "lock", "lock:release:bosh-dns")
        } else {
            ("update", "cloud-config", "default")
        };
        let event = NewEvent::new(action, object_type)
            .user(TASK_USER)
            .task(&task)
            .object_name(object_name);
        let first = self.director.record_event(event.clone());
        let second = match action {
            "acquire" => NewEvent {
                action: "release".to_owned(),
                ..event
            },
            _ => event.parent(first),
        };
        self.director.record_event(second);
    }
}

/// A random version-4 UUID, lower-case hyphenated.
pub fn uuid(rng: &mut impl Rng) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A running churn task; it stops when dropped or on [`Churn::stop`].
#[derive(Debug)]
pub struct Churn {
    cancel: CancellationToken,
    stats: Arc<ChurnStats>,
}

impl Churn {
    /// Starts stepping every `config.interval` (first step after one interval); requires a
    /// Tokio runtime.
    pub fn start(director: DirectorHandle, config: ChurnConfig) -> Churn {
        let interval = config.interval;
        let mut churner = Churner::new(director, config);
        let stats = churner.stats();
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    _ = ticks.tick() => churner.step(),
                }
            }
        });
        Churn { cancel, stats }
    }

    /// The counters.
    pub fn stats(&self) -> &ChurnStats {
        &self.stats
    }

    /// Stops the task.
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::director::{DirectorConfig, DirectorSim};

    #[test]
    fn uuids_are_v4_shaped() {
        let mut rng = StdRng::seed_from_u64(1);
        let id = uuid(&mut rng);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }

    #[tokio::test]
    async fn steps_create_and_delete_vms_through_events() {
        let director = DirectorSim::start(DirectorConfig::basic("u", "p"))
            .await
            .unwrap();
        let mut config = ChurnConfig::new("churn", Duration::from_millis(10), 20).with_seed(7);
        config.creating_ratio = 0.5;
        let mut churner = Churner::new(director.handle(), config);
        let mut saw_pending = false;
        for _ in 0..200 {
            churner.step();
            let vms = director.vms("churn").unwrap();
            assert!(vms.len() <= 31, "size is steered towards the target");
            assert!(vms.iter().all(|vm| vm.agent_id.is_some()));
            // A creation begun this step: its first event is there, its row is not.
            if let Some(pending) = churner.pending.first() {
                saw_pending = true;
                assert!(!vms.iter().any(|vm| vm.cid == pending.vm().cid));
                assert!(
                    director
                        .events()
                        .iter()
                        .any(|e| Some(e.id) == pending.first_event())
                );
            }
        }
        let stats = churner.stats();
        assert_eq!(stats.steps(), 200);
        assert!(stats.added() > 20 && stats.removed() > 0);
        assert!(saw_pending);
        let vms = director.vms("churn").unwrap();
        assert!(
            vms.iter()
                .any(|vm| vm.permanent_nats_credentials == Some(true))
        );

        let events = director.events();
        let of = |action: &str, object_type: &str| {
            events
                .iter()
                .filter(|e| e.fields.action == action && e.fields.object_type == object_type)
                .collect::<Vec<_>>()
        };
        // Every VM created or deleted has its two events, the second naming the first.
        let completed = |action: &str| {
            of(action, "vm")
                .into_iter()
                .filter(|e| e.fields.parent_id.is_some())
                .inspect(|second| {
                    let first = events
                        .iter()
                        .find(|e| Some(e.id) == second.fields.parent_id)
                        .expect("the parent is in the log");
                    assert_eq!(first.fields.action, action);
                    assert_eq!(first.fields.deployment.as_deref(), Some("churn"));
                    assert_eq!(first.fields.instance, second.fields.instance);
                })
                .count() as u64
        };
        assert_eq!(completed("create"), stats.added());
        assert_eq!(completed("delete"), stats.removed());
        // The deployment was deployed through events too, and some events name none.
        assert_eq!(of("create", "deployment").len(), 2);
        assert!(events.iter().any(|e| e.fields.deployment.is_none()));
    }

    #[tokio::test(start_paused = true)]
    async fn task_steps_on_its_interval_and_stops_on_drop() {
        let director = DirectorSim::start(DirectorConfig::basic("u", "p"))
            .await
            .unwrap();
        let churn = Churn::start(
            director.handle(),
            ChurnConfig::new("d", Duration::from_secs(1), 5).with_seed(1),
        );
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(churn.stats().steps(), 10);
        churn.stop();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(churn.stats().steps(), 10);
    }
}
