//! The HTTP server (§7): `/metrics`, `/healthz`, `/readyz` and `/status`, with
//! graceful shutdown on a `CancellationToken`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::registry::Metrics;

/// How long requests in flight may take to finish after shutdown is requested. The process
/// must exit within 2 s of SIGTERM (§6.4), and a client that opened a connection and
/// never finished its request would otherwise hold graceful shutdown open forever.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The listen address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {addr}: {error}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub error: io::Error,
}

impl BindError {
    /// The metric label / error reason of this failure.
    pub fn reason(&self) -> &'static str {
        "bind"
    }
}

/// Binds the HTTP listener, with an error that names the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| BindError { addr, error })
}

/// What every handler can reach. Both halves are shared with the control loop.
#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The routes, for serving on a listener of the caller's choosing (or testing in-process).
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .fallback(not_found)
        .with_state(AppState { metrics, health })
}

/// Serves the routes on `listener` until `shutdown` is cancelled, then lets requests in
/// flight finish for up to [`SHUTDOWN_GRACE`] and returns.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz and /status");
    }
    let server = axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let grace_expired = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = server => result,
        () = grace_expired => {
            tracing::warn!(
                grace = ?SHUTDOWN_GRACE,
                "HTTP connections still open after shutdown grace; dropping them"
            );
            Ok(())
        }
    }
}

async fn metrics_text(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        app.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(app): State<AppState>) -> Response {
    plain(app.health.liveness().map_err(|e| e.to_string()))
}

async fn readyz(State(app): State<AppState>) -> Response {
    plain(app.health.readiness().map_err(|e| e.to_string()))
}

async fn status(State(app): State<AppState>) -> Response {
    Json(app.health.status()).into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// 200 `ok` or 503 with the reason, as plain text for a probe or a person with curl.
fn plain(check: Result<(), String>) -> Response {
    match check {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}
