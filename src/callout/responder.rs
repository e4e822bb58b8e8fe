//! The responder (§12): subscribed to nats-server's authorization requests in the queue group
//! `bosh-nats-sync`, over TLS with the service's own client certificate, it answers each one
//! from the admitted set in memory — no file, no reload.
//!
//! Every request is answered in a task of its own, so a reconnect storm never queues behind
//! one signature. An agent the set does not know may simply be new (its VM booted before the
//! watch's next read of the event log): the responder then asks for an event poll at once
//! ([`Poller`], at most one per [`POLL_SPACING`] whatever arrives) and waits for a pass that
//! began after the request arrived — bounded below nats-server's authorization timeout —
//! before it answers, so an agent whose VM exists is admitted on its first try.
//!
//! The connection reconnects by itself (async-nats resubscribes after a reconnect); while it
//! is down, nats-server keeps the connections it already admitted and new agents retry. It is
//! made only once the admitted set is loaded, so a sidecar with nothing to answer from never
//! takes a request another sidecar of the cluster could answer.
//!
//! The same connection is the revoker's way into the system account (§12.6): the responder
//! hands it over through a [`Link`], and says each time it (re)connects.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admitted::Subscriber;
use super::answer::{UserTtl, reply};
use super::decide::{Refusal, Verdict, decide};
use super::keys::Keys;
use super::request::{self, SERVER_XKEY_HEADER};

/// The subject nats-server publishes authorization requests on.
pub const SUBJECT: &str = "$SYS.REQ.USER.AUTH";
/// The queue group every sidecar of a cluster answers in (§12.4): nats-server hands each
/// request to one of them — on any node of the cluster, not its own first (observed on
/// 2.14.5: `tests/cluster.rs`).
pub const QUEUE_GROUP: &str = "bosh-nats-sync";
/// Event polls asked for by unknown agents come at most this often.
pub const POLL_SPACING: Duration = Duration::from_millis(250);

/// Where and how the responder connects.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The local nats-server, `tls://127.0.0.1:4222` by default.
    pub url: String,
    /// The service's client certificate and key (its subject is one of the static users).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA that signed the server's certificate.
    pub ca_file: PathBuf,
}

impl Connection {
    /// TLS with the service's certificate, a 5 s connection timeout.
    fn options(&self) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::new()
            .name("bosh-nats-sync")
            .require_tls(true)
            .add_root_certificates(self.ca_file.clone())
            .add_client_certificate(self.cert_file.clone(), self.key_file.clone())
            .connection_timeout(Duration::from_secs(5))
    }

    /// One connection as the service, without retrying or reconnecting: for `diff`, which
    /// lists the connections a pass would close (§12.6) and exits.
    pub async fn connect_once(&self) -> Result<async_nats::Client, String> {
        self.options()
            .max_reconnects(Some(1))
            .connect(self.url.as_str())
            .await
            .map_err(|e| e.to_string())
    }
}

/// What the responder tells the rest of the program: one call per answer, and the state of
/// its connection. The program's implementation feeds the metrics, `/status` and `/readyz`.
pub trait Observer: Send + Sync + 'static {
    /// A request was answered (`refusal` `None`: admitted) after `latency`; `polled` when
    /// the answer waited for an event poll.
    fn answered(&self, refusal: Option<&Refusal>, latency: Duration, polled: bool);
    /// A request could not be answered at all (it did not verify, or the reply could not be
    /// made): `reason` is its metric label.
    fn unanswerable(&self, reason: &'static str, message: &str);
    /// The connection to nats-server is up, with the subscription in place, or down.
    fn connected(&self, up: bool);
}

/// Asks the control loop for an event poll, at most once per [`POLL_SPACING`]: asks that
/// arrive meanwhile are folded into one made when the spacing has passed.
#[derive(Clone)]
pub struct Poller {
    asked: Arc<Notify>,
}

impl Poller {
    /// Starts the task that turns asks into calls of `poll` (the loop's manual trigger),
    /// until `cancel`.
    pub fn start(poll: impl Fn() + Send + 'static, cancel: CancellationToken) -> Self {
        let asked = Arc::new(Notify::new());
        let waiting = asked.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = waiting.notified() => {}
                }
                poll();
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(POLL_SPACING) => {}
                }
            }
        });
        Self { asked }
    }

    /// Asks for a poll (coalesced with any ask not yet served).
    pub fn ask(&self) {
        self.asked.notify_one();
    }
}

/// The responder's connection, as the revoker sees it: the client while there is one, and
/// how many times it has connected (a count that moves is a connection that came back up).
#[derive(Debug, Clone)]
pub struct Link<C = async_nats::Client> {
    pub client: Option<C>,
    pub connects: u64,
}

impl<C> Default for Link<C> {
    fn default() -> Self {
        Self {
            client: None,
            connects: 0,
        }
    }
}

/// Everything an answer needs, shared by the answering tasks.
pub struct Responder<O> {
    pub keys: Arc<Keys>,
    pub user_ttl: UserTtl,
    pub admitted: Subscriber,
    pub poller: Poller,
    /// How long an answer for an unknown agent waits for a pass (below nats-server's
    /// authorization timeout, so the answer still counts).
    pub wait_for_pass: Duration,
    pub observer: O,
    /// Where the connection is handed to the revoker.
    pub link: watch::Sender<Link>,
}

impl<O: Observer> Responder<O> {
    /// Once the admitted set is loaded, connects, subscribes and answers until `cancel`. A
    /// failed connection is retried with backoff (1 s doubling to 30 s); the error is logged
    /// each time.
    ///
    /// Until the set is loaded — persisted by an earlier process, or made by a first pass —
    /// the responder stays out of the queue group: it could only refuse every agent, and in a
    /// cluster nats-server would hand it a share of every server's requests. The other
    /// sidecars answer them meanwhile (§12.4).
    pub async fn run(self, connection: Connection, cancel: CancellationToken) {
        let mut admitted = self.admitted.clone();
        if !admitted.borrow().loaded {
            tracing::info!(
                "the admitted set is not loaded yet (none persisted): answering nats-server's authorization requests once a pass has read the director"
            );
            tokio::select! {
                _ = cancel.cancelled() => return,
                loaded = admitted.wait_for(|p| p.loaded) => if loaded.is_err() { return },
            }
        }
        let this = Arc::new(self);
        let mut delay = Duration::from_secs(1);
        loop {
            let attempt = this.clone().serve(&connection, cancel.clone());
            match tokio::select! {
                _ = cancel.cancelled() => return,
                r = attempt => r,
            } {
                Ok(()) => return,
                Err(e) => {
                    this.link.send_modify(|link| link.client = None);
                    this.observer.connected(false);
                    tracing::warn!(url = %connection.url, error = %e, retry_in = ?delay, "the callout responder cannot reach nats-server");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// One connection's life: connect, subscribe, answer every request in a task of its own.
    async fn serve(
        self: Arc<Self>,
        connection: &Connection,
        cancel: CancellationToken,
    ) -> Result<(), ServeError> {
        let events = self.clone();
        let client = connection
            .options()
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            events.link.send_modify(|link| link.connects += 1);
                            events.observer.connected(true);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("the callout responder lost its connection to nats-server; reconnecting");
                            events.observer.connected(false);
                        }
                        other => tracing::debug!(event = %other, "nats connection event"),
                    }
                }
            })
            .connect(connection.url.as_str())
            .await
            .map_err(|e| ServeError(e.to_string()))?;
        let mut requests = client
            .queue_subscribe(SUBJECT, QUEUE_GROUP.to_owned())
            .await
            .map_err(|e| ServeError(e.to_string()))?;
        client
            .flush()
            .await
            .map_err(|e| ServeError(e.to_string()))?;
        self.link.send_modify(|link| {
            link.client = Some(client.clone());
            link.connects += 1;
        });
        self.observer.connected(true);
        tracing::info!(url = %connection.url, subject = SUBJECT, queue = QUEUE_GROUP, "answering nats-server's authorization requests");
        loop {
            let message = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                m = requests.next() => m,
            };
            let Some(message) = message else {
                return Err(ServeError("the subscription ended".to_owned()));
            };
            // Timed from here: the wait for a task to run it counts as part of the answer.
            let arrived = Instant::now();
            let this = self.clone();
            let client = client.clone();
            tokio::spawn(async move { this.answer(&client, message, arrived).await });
        }
    }

    /// Answers one request, taken from the subscription at `arrived`.
    async fn answer(
        &self,
        client: &async_nats::Client,
        message: async_nats::Message,
        arrived: Instant,
    ) {
        let Some(reply_to) = message.reply.clone() else {
            self.observer.unanswerable(
                "bad_request",
                "an authorization request without a reply subject",
            );
            return;
        };
        let server_xkey = message
            .headers
            .as_ref()
            .and_then(|h| h.get(SERVER_XKEY_HEADER))
            .map(|v| v.as_str().to_owned());
        let now = super::unix_now();
        let request = match request::open(&self.keys, &message.payload, server_xkey.as_deref(), now)
        {
            Ok(request) => request,
            Err(e) => {
                // Unverifiable: answering would sign whatever was sent. nats-server times the
                // client out instead.
                self.observer.unanswerable(e.reason(), &e.to_string());
                return;
            }
        };
        let mut polled = false;
        let mut verdict = self.decide(&request);
        if matches!(verdict, Verdict::Refuse(Refusal::UnknownAgent(_))) {
            polled = true;
            self.wait_for_a_pass_after(arrived).await;
            verdict = self.decide(&request);
        }
        let answer = match reply(
            &self.keys,
            &request,
            &verdict,
            self.user_ttl,
            super::unix_now(),
        ) {
            Ok(answer) => answer,
            Err(e) => {
                self.observer.unanswerable("error", &e.to_string());
                return;
            }
        };
        if let Err(e) = client.publish(reply_to, answer.into()).await {
            self.observer.unanswerable("error", &e.to_string());
            return;
        }
        let refusal = match &verdict {
            Verdict::Allow(_) => None,
            Verdict::Refuse(refusal) => Some(refusal),
        };
        self.observer.answered(refusal, arrived.elapsed(), polled);
    }

    fn decide(&self, request: &request::Request) -> Verdict {
        let published = self.admitted.borrow().set.clone();
        decide(&request.claims.nats, |id| published.lookup(id))
    }

    /// Asks for an event poll and waits until a pass that began after `arrived` has
    /// finished, or [`Responder::wait_for_pass`] has passed.
    async fn wait_for_a_pass_after(&self, arrived: Instant) {
        self.poller.ask();
        let mut admitted = self.admitted.clone();
        let after = |p: &super::admitted::Published| p.pass_began.is_some_and(|b| b >= arrived);
        let _ = tokio::time::timeout(self.wait_for_pass, admitted.wait_for(after)).await;
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ServeError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn asks_for_polls_are_spaced_and_folded() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = polls.clone();
        let cancel = CancellationToken::new();
        let poller = Poller::start(
            move || {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            },
            cancel.clone(),
        );
        let polled = || polls.load(std::sync::atomic::Ordering::SeqCst);
        poller.ask();
        tokio::task::yield_now().await;
        assert_eq!(polled(), 1, "the first ask polls at once");
        for _ in 0..50 {
            poller.ask();
        }
        tokio::time::advance(POLL_SPACING / 2).await;
        tokio::task::yield_now().await;
        assert_eq!(polled(), 1, "asks within the spacing wait");
        tokio::time::advance(POLL_SPACING / 2).await;
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(
            polled(),
            2,
            "and are folded into one poll when it has passed"
        );
        tokio::time::advance(POLL_SPACING * 4).await;
        tokio::task::yield_now().await;
        assert_eq!(polled(), 2, "no ask, no poll");
        cancel.cancel();
    }
}
