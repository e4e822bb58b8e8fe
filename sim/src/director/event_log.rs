//! The event log as the director keeps it and serves it (§2.5): its settings
//! (`record_events`, `max_events`, the clock), a backup and its restore, and `GET /events`
//! and `GET /events/{id}`. The log itself is [`crate::events`].

use axum::extract::Query as UrlQuery;

use super::deployments::VmList;
use super::{DirectorHandle, Endpoint, FaultKey, Shared, as_the_director_sends, error_response};
use crate::events::{EventLog, LogSnapshot, NewEvent, Query};
use crate::fault::{FaultAction, delay_then_action, json_response, lock, mangle};
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::json;

/// A copy of the director's database — its deployments and its event log, with the id
/// sequence — to hand to [`DirectorHandle::restore`], as an operator restores a backup.
#[derive(Debug, Clone)]
pub struct DirectorSnapshot {
    deployments: BTreeMap<String, VmList>,
    log: LogSnapshot,
}

/// The event log's settings and contents, and a backup of the whole director.
impl DirectorHandle {
    pub(super) fn log(&self) -> std::sync::MutexGuard<'_, EventLog> {
        lock(&self.shared.events)
    }

    /// Records an arbitrary event (a lock, a config, a task of no deployment, …); its id, or
    /// `None` with `record_events` off.
    pub fn record_event(&self, event: NewEvent) -> Option<u64> {
        self.log().record(event)
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

pub(super) async fn list_events(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let response = as_the_director_sends(
        Endpoint::Events,
        list_events_response(&shared, &uri, &headers).await,
    );
    shared.record(Endpoint::Events, &uri, &headers, response.status());
    response
}

pub(super) async fn list_events_response(
    shared: &Shared,
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

pub(super) async fn show_event(
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

pub(super) async fn show_event_response(
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
