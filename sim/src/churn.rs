//! VM churn for demos and soak tests: a background task that keeps creating and deleting VMs in a simulated deployment.
//!
//! Each step first finishes the VMs "being created" (gives their `null` agent id a UUID), then
//! adds or deletes one VM, steering the deployment's size towards `target_vms`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::director::{DirectorHandle, Vm};

/// How a [`Churn`] behaves.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    /// The deployment whose VMs churn (created if absent).
    pub deployment: String,
    /// Time between steps.
    pub interval: Duration,
    /// The size the deployment hovers around.
    pub target_vms: usize,
    /// Probability that a new VM starts with a `null` agent id (it gets one next step).
    pub creating_ratio: f64,
    /// Probability that a new VM has `permanent_nats_credentials: true`.
    pub permanent_ratio: f64,
    /// RNG seed for a reproducible sequence; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl ChurnConfig {
    /// Churn `deployment` every `interval` around `target_vms` VMs, 20% created with a null
    /// agent id, 25% with permanent credentials.
    pub fn new(deployment: &str, interval: Duration, target_vms: usize) -> Self {
        ChurnConfig {
            deployment: deployment.to_owned(),
            interval,
            target_vms,
            creating_ratio: 0.2,
            permanent_ratio: 0.25,
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
/// Invariant: `next_index` grows by one per VM added, so every VM gets a distinct `cid`/`index`.
#[derive(Debug)]
pub struct Churner {
    director: DirectorHandle,
    config: ChurnConfig,
    rng: StdRng,
    next_index: u32,
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
            director.set_deployment(&config.deployment, Vec::new());
        }
        Churner {
            director,
            config,
            rng,
            next_index: 0,
            stats: Arc::new(ChurnStats::default()),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<ChurnStats> {
        self.stats.clone()
    }

    /// One step: finish pending VMs, then add or remove one VM.
    pub fn step(&mut self) {
        let deployment = self.config.deployment.clone();
        let rng = &mut self.rng;
        let len = self
            .director
            .update_vms(&deployment, |vms| {
                for vm in vms.iter_mut().filter(|vm| vm.agent_id.is_none()) {
                    vm.agent_id = Some(uuid(rng));
                }
                vms.len()
            })
            .unwrap_or(0);
        let target = self.config.target_vms;
        let add = if len < target / 2 + 1 {
            true
        } else if len > target + target / 2 {
            false
        } else {
            self.rng.random_bool(0.5)
        };
        if add {
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
            if self
                .rng
                .random_bool(self.config.creating_ratio.clamp(0.0, 1.0))
            {
                vm.agent_id = None;
            }
            vm.permanent_nats_credentials = Some(
                self.rng
                    .random_bool(self.config.permanent_ratio.clamp(0.0, 1.0)),
            );
            self.director.add_vm(&deployment, vm);
            self.stats.added.fetch_add(1, Ordering::SeqCst);
        } else if len > 0 {
            let victim = self.rng.random_range(0..len);
            let removed = self.director.update_vms(&deployment, |vms| {
                if victim < vms.len() {
                    vms.remove(victim);
                    true
                } else {
                    false
                }
            });
            if removed == Some(true) {
                self.stats.removed.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.stats.steps.fetch_add(1, Ordering::SeqCst);
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
    async fn steps_add_remove_and_finish_pending_vms() {
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
            // Only the VM added by this step may still be pending.
            assert!(vms.iter().filter(|vm| vm.agent_id.is_none()).count() <= 1);
            saw_pending |= vms.iter().any(|vm| vm.agent_id.is_none());
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
