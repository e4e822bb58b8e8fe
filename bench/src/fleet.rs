//! The agents a real director has: N TLS clients connected to nats-server, each with its own
//! certificate (an async-nats client in the driver), held from before a measurement to its
//! end. nats-server's reload costs connected clients × users, so every figure that involves
//! a reload is measured with them connected.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use async_nats::{ClientError, ConnectOptions, Event, ServerError};
use sim::pki::CertFiles;

use crate::world::{World, agent_id};

/// The agents' certificates, written once and shared by every run: agent `i` is VM
/// `i / deployments` of deployment `i % deployments` (its permanent certificate, which
/// every VM's user list holds), so they spread over the whole director.
pub fn agent_certs(world: &World, n: usize, deployments: usize) -> anyhow::Result<Vec<CertFiles>> {
    let dir = world.dir.path().join("agents");
    std::fs::create_dir_all(&dir)?;
    (0..n)
        .map(|i| {
            let id = agent_id(i % deployments, i / deployments);
            Ok(world
                .pki
                .client(&sim::pki::agent_cn(&id))?
                .write_to(&dir, &format!("agent-{i}"))?)
        })
        .collect()
}

/// What the N connected agents' clients reported.
pub struct FleetEvents {
    pub base: std::time::Instant,
    /// Per agent: nanoseconds after `base` of its last `Connected` event (0: none yet).
    pub connected_at: Vec<AtomicU64>,
    /// Per agent: nanoseconds after `base` of its last `Disconnected` event (0: none yet),
    /// and how many it had.
    pub disconnected_at: Vec<AtomicU64>,
    pub disconnects_of: Vec<AtomicU64>,
    pub disconnects: AtomicU64,
    pub refused: AtomicU64,
    /// When each refusal came, nanoseconds after `base`.
    pub refused_at: std::sync::Mutex<Vec<u64>>,
    pub failed_attempts: AtomicU64,
    /// The failed attempts by what async-nats said (`timed out`, `io error`, …).
    pub failures: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl FleetEvents {
    fn record(&self, agent: usize, event: &Event) {
        match event {
            Event::Connected => {
                let at = self.base.elapsed().as_nanos().max(1) as u64;
                self.connected_at[agent].store(at, Ordering::SeqCst);
            }
            Event::Disconnected => {
                let at = self.base.elapsed().as_nanos().max(1) as u64;
                self.disconnected_at[agent].store(at, Ordering::SeqCst);
                self.disconnects_of[agent].fetch_add(1, Ordering::SeqCst);
                self.disconnects.fetch_add(1, Ordering::SeqCst);
            }
            // A refused reconnect: nats-server's `-ERR` on the connection, or the connect
            // attempt's error (async-nats reports it as a client error naming its kind).
            Event::ServerError(ServerError::AuthorizationViolation) => self.refusal(),
            Event::ClientError(ClientError::Other(e)) if e.contains("authorization violation") => {
                self.refusal()
            }
            Event::ClientError(e) => {
                self.failed_attempts.fetch_add(1, Ordering::SeqCst);
                let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                *failures.entry(e.to_string()).or_default() += 1;
            }
            _ => {}
        }
    }

    fn refusal(&self) {
        self.refused.fetch_add(1, Ordering::SeqCst);
        let at = self.base.elapsed().as_nanos() as u64;
        self.refused_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(at);
    }

    /// Nanoseconds after `base`.
    pub fn at(&self, instant: std::time::Instant) -> u64 {
        instant.saturating_duration_since(self.base).as_nanos() as u64
    }
}

/// The N agents, connected; their connections end when this is dropped.
pub struct Fleet {
    _clients: Vec<async_nats::Client>,
    pub events: Arc<FleetEvents>,
}

/// A TLS client of `url` presenting `cert`, trusting `ca`: the agents reconnect by
/// themselves, forever (async-nats' default backoff), as an agent does.
pub fn options(ca: &Path, cert: &CertFiles, timeout: Duration) -> ConnectOptions {
    ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.to_owned())
        .add_client_certificate(cert.cert.clone(), cert.key.clone())
        .connection_timeout(timeout)
}

/// Connects every agent of `certs`, `parallel` at a time.
pub async fn connect_fleet(
    url: &str,
    ca: &Path,
    certs: &[CertFiles],
    parallel: usize,
) -> anyhow::Result<Fleet> {
    let events = Arc::new(FleetEvents {
        base: std::time::Instant::now(),
        connected_at: (0..certs.len()).map(|_| AtomicU64::new(0)).collect(),
        disconnected_at: (0..certs.len()).map(|_| AtomicU64::new(0)).collect(),
        disconnects_of: (0..certs.len()).map(|_| AtomicU64::new(0)).collect(),
        disconnects: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        refused_at: Default::default(),
        failed_attempts: AtomicU64::new(0),
        failures: Default::default(),
    });
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, cert) in certs.iter().enumerate() {
        let (url, ca, cert) = (url.to_owned(), ca.to_owned(), cert.clone());
        let (events, permits) = (events.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let mut tries = 0;
            loop {
                tries += 1;
                let sink = events.clone();
                let connected = options(&ca, &cert, Duration::from_secs(120))
                    .event_callback(move |event| {
                        let sink = sink.clone();
                        async move { sink.record(i, &event) }
                    })
                    .connect(url.as_str())
                    .await;
                match connected {
                    Ok(client) => return anyhow::Ok((i, client)),
                    // A loaded machine may time a handshake out; a refusal is a real error.
                    Err(e) if tries < 3 && !sim::nats::is_authorization_violation(&e) => {
                        eprintln!("bench:   agent {i}: {e}; again");
                    }
                    Err(e) => bail!("agent {i} ({}) cannot connect: {e}", cert.cert.display()),
                }
            }
        });
    }
    let mut clients: Vec<Option<async_nats::Client>> = vec![None; certs.len()];
    while let Some(joined) = tasks.join_next().await {
        let (i, client) = joined??;
        clients[i] = Some(client);
    }
    Ok(Fleet {
        _clients: clients.into_iter().flatten().collect(),
        events,
    })
}

impl Fleet {
    /// How many agents are connected (were, at least once).
    pub fn len(&self) -> usize {
        self.events.connected_at.len()
    }

    /// Disconnections of all the agents so far.
    pub fn disconnects(&self) -> u64 {
        self.events.disconnects.load(Ordering::SeqCst)
    }
}
