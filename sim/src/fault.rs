//! Fault injection for the simulated servers: what to do to a response, how often, and for how long.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use rand::Rng;

/// What a fault does to the response once it fires (after its delay, if any).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FaultAction {
    /// Nothing but the delay: the normal response, late.
    None,
    /// Answer with this status and an error body instead of the normal response
    /// (`401` carries `WWW-Authenticate`; a director `404` on `/vms` carries the real
    /// "doesn't exist" body).
    Status(u16),
    /// Send the headers (with the full `Content-Length`) and half the normal body, then drop
    /// the connection.
    ResetMidBody,
    /// Send the headers and half the normal body, wait this long, then send the rest.
    StallMidBody(Duration),
    /// `200` with a body that is not valid JSON.
    InvalidJson,
    /// `200` with a streamed JSON body of this many bytes (an array padded with whitespace),
    /// never held in memory at once. `content_length: false` sends it chunked.
    Oversized {
        /// Total body size in bytes.
        bytes: u64,
        /// Announce the size in `Content-Length` (else chunked transfer encoding).
        content_length: bool,
    },
}

/// One fault rule for an endpoint.
///
/// Invariant: `probability` is within `0.0..=1.0`; `remaining`, when set, counts the firings
/// left and the rule is discarded when it reaches zero.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    delay: Option<Duration>,
    action: FaultAction,
    probability: f64,
    remaining: Option<u32>,
}

impl Fault {
    fn new(action: FaultAction) -> Self {
        Fault {
            delay: None,
            action,
            probability: 1.0,
            remaining: None,
        }
    }

    /// Answer normally, but only after `delay`. A long delay is a stall: the request is held
    /// (other requests are served meanwhile) until the client gives up or the delay ends.
    pub fn delay(delay: Duration) -> Self {
        Fault::new(FaultAction::None).with_delay(delay)
    }

    /// Answer with `status` instead of the normal response.
    pub fn status(status: u16) -> Self {
        Fault::new(FaultAction::Status(status))
    }

    /// Drop the connection half-way through the body.
    pub fn reset_mid_body() -> Self {
        Fault::new(FaultAction::ResetMidBody)
    }

    /// Hold the connection half-way through the body for `stall`.
    pub fn stall_mid_body(stall: Duration) -> Self {
        Fault::new(FaultAction::StallMidBody(stall))
    }

    /// Answer `200` with a body that is not JSON.
    pub fn invalid_json() -> Self {
        Fault::new(FaultAction::InvalidJson)
    }

    /// Answer `200` with a `bytes`-long body announced by `Content-Length`.
    pub fn oversized(bytes: u64) -> Self {
        Fault::new(FaultAction::Oversized {
            bytes,
            content_length: true,
        })
    }

    /// Answer `200` with a `bytes`-long chunked body (no `Content-Length`).
    pub fn oversized_chunked(bytes: u64) -> Self {
        Fault::new(FaultAction::Oversized {
            bytes,
            content_length: false,
        })
    }

    /// Also wait `delay` before acting.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Fire on each request with this probability (clamped to `0.0..=1.0`); for soak tests.
    pub fn with_probability(mut self, probability: f64) -> Self {
        self.probability = probability.clamp(0.0, 1.0);
        self
    }

    /// Fire only for the next `n` matching requests, then disappear.
    pub fn times(mut self, n: u32) -> Self {
        self.remaining = Some(n);
        self
    }

    /// The action taken when the fault fires.
    pub fn action(&self) -> &FaultAction {
        &self.action
    }
}

/// The fault rules of one server, keyed by endpoint.
#[derive(Debug)]
pub(crate) struct FaultTable<K> {
    rules: Mutex<HashMap<K, Fault>>,
}

impl<K: Eq + Hash + Clone> FaultTable<K> {
    pub(crate) fn new() -> Self {
        FaultTable {
            rules: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn set(&self, key: K, fault: Fault) {
        lock(&self.rules).insert(key, fault);
    }

    pub(crate) fn clear(&self, key: &K) {
        lock(&self.rules).remove(key);
    }

    pub(crate) fn clear_all(&self) {
        lock(&self.rules).clear();
    }

    /// Decides whether the rule for `key` fires for this request, and consumes one firing.
    pub(crate) fn fire(&self, key: &K) -> Option<Fault> {
        let mut rules = lock(&self.rules);
        let rule = rules.get_mut(key)?;
        if rule.probability < 1.0 && !rand::rng().random_bool(rule.probability) {
            return None;
        }
        let fired = rule.clone();
        if let Some(remaining) = rule.remaining.as_mut() {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                rules.remove(key);
            }
        }
        Some(fired)
    }
}

/// Locks a mutex, recovering from poisoning: the simulator's state stays usable after a
/// panicking test thread, which is what a test harness wants.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits for the fault's delay; returns the action to apply afterwards.
pub(crate) async fn delay_then_action(fault: Option<Fault>) -> FaultAction {
    match fault {
        None => FaultAction::None,
        Some(fault) => {
            if let Some(delay) = fault.delay {
                precise_sleep(delay).await;
            }
            fault.action
        }
    }
}

/// Sleeps `delay`, to within a fraction of a millisecond. tokio's timer has millisecond
/// granularity and rounds a deadline up to the next tick, so a plain 20 ms sleep takes 20–21
/// ms plus the wake-up: a simulated director slower than the latency it was given, which
/// would skew every benchmark figure measured against that latency. The last 2 ms are slept
/// on a blocking thread (`nanosleep`), against a deadline taken when the wait began (tokio's
/// clock: on a paused clock everything but that tail of at most 2 ms advances instantly).
async fn precise_sleep(delay: Duration) {
    const COARSE_MARGIN: Duration = Duration::from_millis(2);
    let deadline = tokio::time::Instant::now() + delay;
    if let Some(coarse) = delay.checked_sub(COARSE_MARGIN) {
        tokio::time::sleep(coarse).await;
    }
    let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
    if !rest.is_zero() {
        // A dropped wait leaves at most 2 ms of sleep on the blocking thread.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

static PAD: [u8; 64 * 1024] = [b' '; 64 * 1024];

/// Mangles a normal JSON body (`200`) according to a body-level action.
/// `Status` actions are handled by the caller, who knows the endpoint's error body.
pub(crate) fn mangle(action: &FaultAction, body: Vec<u8>) -> Response {
    match action {
        FaultAction::None | FaultAction::Status(_) => json_response(StatusCode::OK, body),
        FaultAction::InvalidJson => json_response(StatusCode::OK, b"[{\"name\": \"trunc".to_vec()),
        FaultAction::ResetMidBody => {
            let (head, total) = split_half(body);
            // The pause makes the body stream pending, which is when hyper flushes the
            // headers and the first half; erroring at once would drop them unsent.
            let stream = futures::stream::once(async move { Ok(head) }).chain(
                futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "simulated reset",
                    ))
                }),
            );
            sized_stream(Body::from_stream(stream), Some(total))
        }
        FaultAction::StallMidBody(stall) => {
            let stall = *stall;
            let total = body.len() as u64;
            let mut body = body;
            let tail = Bytes::from(body.split_off(body.len() / 2));
            let head = Bytes::from(body);
            let stream = futures::stream::once(async move { Ok::<_, io::Error>(head) }).chain(
                futures::stream::once(async move {
                    tokio::time::sleep(stall).await;
                    Ok(tail)
                }),
            );
            sized_stream(Body::from_stream(stream), Some(total))
        }
        FaultAction::Oversized {
            bytes,
            content_length,
        } => {
            let total = (*bytes).max(2);
            let padding = total - 2;
            let full_chunks = padding / PAD.len() as u64;
            let rest = (padding % PAD.len() as u64) as usize;
            let stream = futures::stream::once(async { Bytes::from_static(b"[") })
                .chain(futures::stream::iter(0..full_chunks).map(|_| Bytes::from_static(&PAD)))
                .chain(futures::stream::once(async move {
                    Bytes::from_static(&PAD[..rest])
                }))
                .chain(futures::stream::once(async { Bytes::from_static(b"]") }))
                .map(Ok::<_, io::Error>);
            sized_stream(Body::from_stream(stream), content_length.then_some(total))
        }
    }
}

fn split_half(body: Vec<u8>) -> (Bytes, u64) {
    // A body of fewer than two bytes cannot be cut in a way the client notices; pad it.
    let mut body = body;
    if body.len() < 2 {
        body.extend_from_slice(b"  ");
    }
    let total = body.len() as u64;
    body.truncate(body.len() / 2);
    (Bytes::from(body), total)
}

fn sized_stream(body: Body, length: Option<u64>) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}

/// A complete JSON response.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delay is never cut short: the blocking tail sleeps to the deadline set when the
    /// wait began.
    #[tokio::test]
    async fn precise_sleep_lasts_at_least_the_delay() {
        for ms in [0, 1, 2, 3, 25] {
            let delay = Duration::from_millis(ms);
            let start = std::time::Instant::now();
            precise_sleep(delay).await;
            assert!(
                start.elapsed() >= delay,
                "{ms} ms took {:?}",
                start.elapsed()
            );
        }
    }

    /// On a paused clock a long delay advances tokio's clock (all but the blocking tail of at
    /// most 2 ms, which is real time), so a test making the director hang for 30 s does not
    /// wait 30 s.
    #[tokio::test(start_paused = true)]
    async fn precise_sleep_follows_a_paused_clock() {
        let start = tokio::time::Instant::now();
        let wall = std::time::Instant::now();
        precise_sleep(Duration::from_secs(30)).await;
        assert!(start.elapsed() >= Duration::from_millis(29_998));
        assert!(
            wall.elapsed() < Duration::from_secs(29),
            "{:?}",
            wall.elapsed()
        );
    }

    #[test]
    fn times_limits_firings() {
        let table = FaultTable::new();
        table.set("x", Fault::status(500).times(2));
        assert!(table.fire(&"x").is_some());
        assert!(table.fire(&"x").is_some());
        assert!(table.fire(&"x").is_none());
    }

    #[test]
    fn probability_zero_never_fires_and_one_always_does() {
        let table = FaultTable::new();
        table.set("never", Fault::status(500).with_probability(0.0));
        table.set("always", Fault::status(500).with_probability(1.0));
        for _ in 0..100 {
            assert!(table.fire(&"never").is_none());
            assert!(table.fire(&"always").is_some());
        }
        table.clear(&"always");
        assert!(table.fire(&"always").is_none());
    }

    #[tokio::test]
    async fn oversized_body_has_exact_length() {
        let response = mangle(
            &FaultAction::Oversized {
                bytes: 200_000,
                content_length: true,
            },
            Vec::new(),
        );
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "200000");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(body.len(), 200_000);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed, serde_json::json!([]));
    }
}
