//! The simulated director's event log: what `GET /events` serves, recorded the way the real
//! director's `EventManager` records it and queried the way its `EventsController` queries it.
//!
//! Facts followed (§2.5, the director's `events_controller.rb`, `event_manager.rb` and
//! `scheduled_events_cleanup`): ids start at 1 and only grow (until a restore); a response is
//! newest first and at most 200 long; `before_id` is read with Ruby's `to_i` (so `abc` means 0
//! and matches nothing); `before_time` / `after_time` are epoch seconds or a time string, and
//! `after_time=T` means a timestamp of at least T+1 s; an unparseable time is a `400` whose body
//! is plain text under a JSON content type; the exact-match filters never match a field that
//! was not recorded; a field that is null or empty is left out of the JSON, except `context`,
//! which is `{}` when nothing was given; with `record_events` off nothing is recorded; the
//! clean-up keeps the newest `max_events` and every parent one of them names.

use serde::Serialize;
use serde_json::{Value, json};

/// How many events one `GET /events` answers at most (`EventsController::EVENT_LIMIT`).
pub const EVENT_LIMIT: usize = 200;

/// The director's default `director.events.max_events`.
pub const DEFAULT_MAX_EVENTS: usize = 10_000;

/// The user the simulated director's tasks run as.
pub const TASK_USER: &str = "admin";

/// An event to record; the log assigns its id and timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewEvent {
    /// The event this one completes (the second `create`/`vm` names the first).
    pub parent_id: Option<u64>,
    /// Who ran the task.
    pub user: Option<String>,
    /// `create`, `delete`, `update`, `acquire`, `release`, …
    pub action: String,
    /// `vm`, `deployment`, `instance`, `lock`, `cloud-config`, …
    pub object_type: String,
    /// The object's name (a VM's cid, a lock's name, a deployment's name).
    pub object_name: Option<String>,
    /// The task id, as the director stores it (a string).
    pub task: Option<String>,
    /// The deployment the event belongs to; `None` for locks, configs and tasks of no deployment.
    pub deployment: Option<String>,
    /// `job/uuid` of the instance.
    pub instance: Option<String>,
    /// The error the operation ended with.
    pub error: Option<String>,
    /// A JSON object; `None` records `{}`, as the director does.
    pub context: Option<Value>,
}

impl NewEvent {
    /// An event with this action and object type and nothing else.
    pub fn new(action: &str, object_type: &str) -> Self {
        NewEvent {
            action: action.to_owned(),
            object_type: object_type.to_owned(),
            ..NewEvent::default()
        }
    }

    /// Sets `object_name`.
    pub fn object_name(mut self, name: &str) -> Self {
        self.object_name = Some(name.to_owned());
        self
    }

    /// Sets `deployment`.
    pub fn deployment(mut self, deployment: &str) -> Self {
        self.deployment = Some(deployment.to_owned());
        self
    }

    /// Sets `instance`.
    pub fn instance(mut self, instance: &str) -> Self {
        self.instance = Some(instance.to_owned());
        self
    }

    /// Sets `task`.
    pub fn task(mut self, task: &str) -> Self {
        self.task = Some(task.to_owned());
        self
    }

    /// Sets `user`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    /// Sets `parent_id` (`None` leaves it unset, as an event recorded with events off gives).
    pub fn parent(mut self, parent_id: Option<u64>) -> Self {
        self.parent_id = parent_id;
        self
    }

    /// Sets `error`.
    pub fn error(mut self, error: &str) -> Self {
        self.error = Some(error.to_owned());
        self
    }

    /// Sets `context`.
    pub fn context(mut self, context: Value) -> Self {
        self.context = Some(context);
        self
    }
}

/// A recorded event, as the log holds it: every field as it was given (an empty string stays
/// an empty string; it is only left out of the JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The id; ids grow by one per recorded event.
    pub id: u64,
    /// Epoch seconds of the director's clock when it was recorded.
    pub timestamp: i64,
    /// Everything else, as given.
    pub fields: NewEvent,
}

/// The log. Invariant: `events` is sorted by id, strictly ascending, and every id is below
/// `next_id`; `next_task` is above every task id handed out.
#[derive(Debug, Clone)]
pub(crate) struct EventLog {
    events: Vec<Event>,
    next_id: u64,
    next_task: u64,
    /// `director.events.record_events`.
    pub(crate) record: bool,
    /// `director.events.max_events`.
    pub(crate) max_events: usize,
    /// A clock set by a test; `None` is the system clock.
    pub(crate) fixed_time: Option<i64>,
}

/// What a backup of the director's database holds of the log: the events, and where the id
/// and task sequences stood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogSnapshot {
    events: Vec<Event>,
    next_id: u64,
    next_task: u64,
}

impl EventLog {
    pub(crate) fn new(record: bool, max_events: usize) -> Self {
        EventLog {
            events: Vec::new(),
            next_id: 1,
            next_task: 1,
            record,
            max_events,
            fixed_time: None,
        }
    }

    /// The director's clock in epoch seconds.
    pub(crate) fn now(&self) -> i64 {
        self.fixed_time.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        })
    }

    /// A new task id (tasks are numbered whether or not events are recorded).
    pub(crate) fn next_task(&mut self) -> String {
        let task = self.next_task;
        self.next_task += 1;
        task.to_string()
    }

    /// Records `event` and returns its id; `None` (nothing recorded) with `record_events` off.
    /// The log is cleaned up once it holds twice `max_events`: the real director's hourly job
    /// keeps it bounded by time, this keeps it bounded by size however fast a churn records.
    pub(crate) fn record(&mut self, event: NewEvent) -> Option<u64> {
        if !self.record {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let timestamp = self.now();
        self.events.push(Event {
            id,
            timestamp,
            fields: event,
        });
        if self.events.len() >= self.max_events.saturating_mul(2).max(2) {
            self.clean_up();
        }
        Some(id)
    }

    /// `EventManager#remove_old_events`: when more than `max_events` are held, deletes every
    /// event older than the newest `max_events`, except that the oldest parent those name is
    /// kept, and everything after it. Returns how many were deleted.
    pub(crate) fn clean_up(&mut self) -> usize {
        let max = self.max_events;
        if self.events.len() <= max {
            return 0;
        }
        // `order(desc id).limit(1, max_events).first.id`: the newest event not kept.
        let last_id = self.events[self.events.len() - 1 - max].id;
        // `order(desc id).limit(max_events).min(:parent_id)`
        let last_parent_id = self.events[self.events.len() - max..]
            .iter()
            .filter_map(|e| e.fields.parent_id)
            .min();
        let start = match last_parent_id {
            Some(parent) if parent <= last_id => parent,
            _ => last_id + 1,
        };
        if start == 0 {
            return 0;
        }
        let keep_from = self.events.partition_point(|e| e.id < start);
        self.events.drain(..keep_from);
        keep_from
    }

    pub(crate) fn all(&self) -> &[Event] {
        &self.events
    }

    pub(crate) fn clear(&mut self) {
        self.events.clear();
    }

    pub(crate) fn snapshot(&self) -> LogSnapshot {
        LogSnapshot {
            events: self.events.clone(),
            next_id: self.next_id,
            next_task: self.next_task,
        }
    }

    /// Puts back what a backup held; the settings and the clock stay (they are the director's
    /// configuration, not its database).
    pub(crate) fn restore(&mut self, snapshot: &LogSnapshot) {
        self.events = snapshot.events.clone();
        self.next_id = snapshot.next_id;
        self.next_task = snapshot.next_task;
    }

    /// The events a query selects, newest first, at most [`EVENT_LIMIT`].
    pub(crate) fn select(&self, query: &Query) -> Vec<&Event> {
        // Ids are ascending, so `before_id` is a cut rather than a filter.
        let end = match query.before_id {
            Some(before) if before <= 0 => 0,
            Some(before) => self.events.partition_point(|e| i128::from(e.id) < before),
            None => self.events.len(),
        };
        self.events[..end]
            .iter()
            .rev()
            .filter(|e| query.matches(e))
            .take(EVENT_LIMIT)
            .collect()
    }
}

/// The exact-match filters of `GET /events`, in the controller's order.
const FILTERS: [&str; 7] = [
    "task",
    "deployment",
    "instance",
    "user",
    "action",
    "object_type",
    "object_name",
];

/// A parsed `GET /events` query. Times are nanoseconds since the epoch.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Query {
    before_id: Option<i128>,
    before_time: Option<i128>,
    after_time: Option<i128>,
    filters: Vec<(&'static str, String)>,
}

const NANOS: i128 = 1_000_000_000;

impl Query {
    /// Reads the query parameters (the last of repeated ones wins, as in Rack). `Err` is the
    /// director's 400 body.
    pub(crate) fn parse(pairs: &[(String, String)]) -> Result<Query, String> {
        let param = |name: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mut query = Query {
            before_id: param("before_id").map(ruby_to_i),
            ..Query::default()
        };
        if let Some(value) = param("before_time") {
            query.before_time = Some(
                timestamp_filter_value(value)
                    .ok_or_else(|| format!("Invalid before parameter: '{value}' "))?,
            );
        }
        if let Some(value) = param("after_time") {
            let after = timestamp_filter_value(value)
                .ok_or_else(|| format!("Invalid after parameter: '{value}' "))?;
            query.after_time = Some(after + NANOS);
        }
        for name in FILTERS {
            if let Some(value) = param(name) {
                query.filters.push((name, value.to_owned()));
            }
        }
        Ok(query)
    }

    fn matches(&self, event: &Event) -> bool {
        let at = i128::from(event.timestamp) * NANOS;
        if self.before_time.is_some_and(|before| at >= before) {
            return false;
        }
        if self.after_time.is_some_and(|after| at < after) {
            return false;
        }
        self.filters.iter().all(|(name, wanted)| {
            let f = &event.fields;
            let value = match *name {
                "task" => &f.task,
                "deployment" => &f.deployment,
                "instance" => &f.instance,
                "user" => &f.user,
                "action" => return f.action == *wanted,
                "object_type" => return f.object_type == *wanted,
                "object_name" => &f.object_name,
                _ => return false,
            };
            // SQL's `=` never matches a NULL.
            value.as_deref() == Some(wanted.as_str())
        })
    }
}

/// One event as `EventManager#event_to_hash` renders it: ids as strings, null and empty
/// fields left out.
#[derive(Serialize)]
struct EventJson<'a> {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<String>,
    timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deployment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a Value>,
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

impl Event {
    /// The event's JSON object, as `GET /events` sends it.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.json()).unwrap_or_else(|e| json!({"error": e.to_string()}))
    }

    fn json(&self) -> EventJson<'_> {
        static EMPTY_CONTEXT: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| json!({}));
        let f = &self.fields;
        EventJson {
            id: self.id.to_string(),
            parent_id: f.parent_id.map(|p| p.to_string()),
            timestamp: self.timestamp,
            user: non_empty(&f.user),
            action: Some(f.action.as_str()).filter(|a| !a.is_empty()),
            object_type: Some(f.object_type.as_str()).filter(|t| !t.is_empty()),
            object_name: non_empty(&f.object_name),
            error: non_empty(&f.error),
            task: non_empty(&f.task),
            deployment: non_empty(&f.deployment),
            instance: non_empty(&f.instance),
            // `{}` is neither nil nor '', so the director always sends it; `null` it drops.
            context: match &f.context {
                None => Some(&*EMPTY_CONTEXT),
                Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(other) => Some(other),
            },
        }
    }
}

/// The body of a `GET /events` answer.
pub(crate) fn to_body(events: &[&Event]) -> Result<Vec<u8>, serde_json::Error> {
    let list: Vec<EventJson<'_>> = events.iter().map(|e| e.json()).collect();
    serde_json::to_vec(&list)
}

/// Ruby's `String#to_i`: leading whitespace, a sign, digits with single underscores between
/// them; whatever follows is ignored, and no digits at all is 0.
pub(crate) fn ruby_to_i(text: &str) -> i128 {
    let text = text.trim_start_matches([' ', '\t', '\n', '\u{b}', '\u{c}', '\r']);
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let mut value: i128 = 0;
    let mut after_digit = false;
    for b in digits.bytes() {
        match b {
            b'0'..=b'9' => {
                value = value
                    .saturating_mul(10)
                    .saturating_add(i128::from(b - b'0'));
                after_digit = true;
            }
            b'_' if after_digit => after_digit = false,
            _ => break,
        }
    }
    if negative { -value } else { value }
}

/// `EventsController#timestamp_filter_value`: an integer (`\A[-+]?\d+\z`) is epoch seconds;
/// anything else goes to Ruby's `Time.parse`, of which this understands the forms a client
/// sends — `YYYY-MM-DD`, optionally followed by `T` or a space and `HH:MM[:SS[.frac]]`, and a
/// zone of `Z`, `UTC`, `±HH`, `±HHMM` or `±HH:MM` (none means UTC, the director's zone). `None`
/// where Ruby raises `ArgumentError`, and for what Ruby would guess at instead.
fn timestamp_filter_value(value: &str) -> Option<i128> {
    let unsigned = value.strip_prefix(['-', '+']).unwrap_or(value);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return Some(ruby_to_i(value).saturating_mul(NANOS));
    }
    parse_time(value.trim())
}

fn parse_time(text: &str) -> Option<i128> {
    let (date, rest) = text.split_at_checked(10)?;
    let mut parts = date.split('-');
    let year: i64 = fixed_digits(parts.next()?, 4)?;
    let month: u32 = fixed_digits(parts.next()?, 2)?;
    let day: u32 = fixed_digits(parts.next()?, 2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let mut seconds = days_from_civil(year, month, day) * 86_400;
    let mut nanos: i128 = 0;
    let mut rest = rest;
    if let Some(time) = rest.strip_prefix(['T', 't', ' ']) {
        let (hh, tail) = time.split_at_checked(2)?;
        let hour: i64 = fixed_digits(hh, 2)?;
        let tail = tail.strip_prefix(':')?;
        let (mm, mut tail) = tail.split_at_checked(2)?;
        let minute: i64 = fixed_digits(mm, 2)?;
        let mut second = 0;
        if let Some(after) = tail.strip_prefix(':') {
            let (ss, after) = after.split_at_checked(2)?;
            second = fixed_digits(ss, 2)?;
            tail = after;
            if let Some(fraction) = tail.strip_prefix('.') {
                let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
                if len == 0 {
                    return None;
                }
                let digits = &fraction[..len.min(9)];
                nanos = digits.parse::<i128>().ok()? * 10i128.pow(9 - digits.len() as u32);
                tail = &fraction[len..];
            }
        }
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        seconds += hour * 3600 + minute * 60 + second;
        rest = tail;
    }
    let offset = match rest.trim_start() {
        "" | "Z" | "z" | "UTC" | "GMT" => 0,
        zone => zone_offset(zone)?,
    };
    Some(i128::from(seconds - offset) * NANOS + nanos)
}

/// `±HH`, `±HHMM` or `±HH:MM`, in seconds east of UTC.
fn zone_offset(zone: &str) -> Option<i64> {
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = zone[1..].replacen(':', "", 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (hours, minutes) = match digits.len() {
        2 => (fixed_digits::<i64>(&digits, 2)?, 0),
        4 => (
            fixed_digits::<i64>(&digits[..2], 2)?,
            fixed_digits::<i64>(&digits[2..], 2)?,
        ),
        _ => return None,
    };
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 3600 + minutes * 60))
}

fn fixed_digits<T: std::str::FromStr>(text: &str, len: usize) -> Option<T> {
    if text.len() == len && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn before_id_reads_like_ruby_to_i() {
        for (text, value) in [
            ("12", 12),
            ("  12abc", 12),
            ("+7", 7),
            ("-3", -3),
            ("1_000", 1000),
            ("1__2", 1),
            ("_1", 0),
            ("abc", 0),
            ("", 0),
            ("99999999999999999999999999999999999999999999", i128::MAX),
        ] {
            assert_eq!(ruby_to_i(text), value, "{text:?}");
        }
    }

    #[test]
    fn times_are_epoch_seconds_or_time_strings() {
        let at = |s: &str| timestamp_filter_value(s).map(|n| n / NANOS);
        assert_eq!(at("1700000000"), Some(1_700_000_000));
        assert_eq!(at("-5"), Some(-5));
        assert_eq!(at("+5"), Some(5));
        assert_eq!(at("1970-01-01"), Some(0));
        assert_eq!(at("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(at("2023-11-14 22:13:20 UTC"), Some(1_700_000_000));
        assert_eq!(at("2023-11-14T23:13:20+01:00"), Some(1_700_000_000));
        assert_eq!(at("2023-11-14T23:13:20+0100"), Some(1_700_000_000));
        assert_eq!(at("2023-11-14T21:13:20-01"), Some(1_700_000_000));
        assert_eq!(at("2023-11-14T22:13"), Some(1_699_999_980));
        assert_eq!(at("2024-02-29"), Some(1_709_164_800));
        assert_eq!(
            timestamp_filter_value("1970-01-01T00:00:01.25Z"),
            Some(NANOS + NANOS / 4)
        );
        for bad in [
            "",
            "soon",
            "12abc",
            "1.5",
            "2023-02-29",
            "2023-13-01",
            "2023-11-14T25:00:00Z",
            "2023-11-14T22:13:20 Mars",
            "2023-11-14T22:13:20.Z",
            "2023-1-1",
            "2023-11-14T22:13:20+1é1",
            "2023-11-14é",
        ] {
            assert_eq!(timestamp_filter_value(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn unparseable_times_are_the_directors_400_bodies() {
        assert_eq!(
            Query::parse(&pairs(&[("after_time", "soon")])),
            Err("Invalid after parameter: 'soon' ".to_owned())
        );
        assert_eq!(
            Query::parse(&pairs(&[("before_time", "x"), ("after_time", "y")])),
            Err("Invalid before parameter: 'x' ".to_owned()),
            "before_time is checked first"
        );
        let q = Query::parse(&pairs(&[("after_time", "1"), ("after_time", "10")])).unwrap();
        assert_eq!(q.after_time, Some(11 * NANOS), "the last value wins");
    }

    fn log_of(parents: &[Option<u64>]) -> EventLog {
        let mut log = EventLog::new(true, 1000);
        for parent in parents {
            log.record(NewEvent::new("create", "vm").parent(*parent));
        }
        log
    }

    fn ids(log: &EventLog) -> Vec<u64> {
        log.all().iter().map(|e| e.id).collect()
    }

    #[test]
    fn clean_up_keeps_the_newest_and_the_parents_they_name() {
        let mut log = log_of(&[None; 10]);
        log.max_events = 4;
        assert_eq!(log.clean_up(), 6);
        assert_eq!(ids(&log), [7, 8, 9, 10]);
        assert_eq!(log.clean_up(), 0, "nothing beyond max_events is left");

        // Event 9 names 3 as its parent: 3 and everything after it stay.
        let mut log = log_of(&[
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            Some(3),
            None,
        ]);
        log.max_events = 4;
        assert_eq!(log.clean_up(), 2);
        assert_eq!(ids(&log), [3, 4, 5, 6, 7, 8, 9, 10]);

        // A parent among the kept changes nothing; one just below them is kept too.
        let mut log = log_of(&[None, None, None, None, None, Some(5)]);
        log.max_events = 2;
        log.clean_up();
        assert_eq!(ids(&log), [5, 6]);
        let mut log = log_of(&[None, None, None, None, Some(4), None]);
        log.max_events = 2;
        log.clean_up();
        assert_eq!(ids(&log), [4, 5, 6]);

        // Ids go on growing after a clean-up.
        assert_eq!(log.record(NewEvent::new("x", "y")), Some(7));
    }

    #[test]
    fn the_log_cleans_itself_up_at_twice_max_events() {
        let mut log = EventLog::new(true, 5);
        for _ in 0..9 {
            log.record(NewEvent::new("create", "vm"));
        }
        assert_eq!(log.all().len(), 9);
        log.record(NewEvent::new("create", "vm"));
        assert_eq!(ids(&log), [6, 7, 8, 9, 10]);
    }

    #[test]
    fn nothing_is_recorded_with_record_events_off() {
        let mut log = EventLog::new(false, 10);
        assert_eq!(log.record(NewEvent::new("create", "vm")), None);
        assert!(log.all().is_empty());
        assert_eq!(log.next_task(), "1", "tasks are numbered all the same");
    }

    #[test]
    fn json_leaves_out_null_and_empty_fields_but_keeps_an_empty_context() {
        let mut log = EventLog::new(true, 10);
        log.fixed_time = Some(1_700_000_000);
        let mut event = NewEvent::new("create", "vm")
            .deployment("cf")
            .instance("")
            .parent(Some(41));
        event.object_name = Some(String::new());
        log.record(event);
        let json = log.all()[0].to_json();
        assert_eq!(
            json,
            json!({"id": "1", "parent_id": "41", "timestamp": 1_700_000_000_i64,
                   "action": "create", "object_type": "vm", "deployment": "cf", "context": {}})
        );
        let q = Query::parse(&pairs(&[("instance", "")])).unwrap();
        assert_eq!(
            log.select(&q).len(),
            1,
            "an empty string is stored and matched"
        );
        let q = Query::parse(&pairs(&[("task", "")])).unwrap();
        assert!(
            log.select(&q).is_empty(),
            "a field never set matches nothing"
        );
    }
}
