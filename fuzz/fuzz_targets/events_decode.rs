//! Decoding the director's `/events` bodies (§2.5): never a panic; what decodes holds exactly
//! what the documented rules make of the JSON; an error that names an event names the first
//! event those rules refuse.

#![no_main]

use bosh_nats_sync::director::{self, Event, EventsDecodeError};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The fields of an event in order, as serde reads a struct written as a JSON array.
const FIELDS: [&str; 8] = [
    "id",
    "parent_id",
    "timestamp",
    "action",
    "object_type",
    "object_name",
    "deployment",
    "instance",
];

/// An id by the documented rules, written out independently of the decoder: absent, null
/// or `""` is no id; a string of ASCII digits or a non-negative JSON integer is the number
/// (if it fits in 64 bits); anything else is refused.
fn expected_id(value: Option<&Value>) -> Result<Option<u64>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map(Some).map_err(|_| format!("{s} overflows"))
        }
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| format!("number {n}")),
        Some(other) => Err(format!("id {other}")),
    }
}

/// A text field: a non-empty string, or `None` for absent, null and `""`.
fn expected_text(value: Option<&Value>) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
        Some(other) => Err(format!("text {other}")),
    }
}

/// The event the rules make of one array element, or why they refuse it.
fn expected_event(entry: &Value) -> Result<Event, String> {
    let field = |name: &str| -> Option<&Value> {
        match entry {
            Value::Object(m) => m.get(name),
            Value::Array(a) => FIELDS
                .iter()
                .position(|f| *f == name)
                .and_then(|i| a.get(i)),
            _ => None,
        }
    };
    match entry {
        Value::Object(_) => {}
        Value::Array(a) if a.len() <= FIELDS.len() => {}
        other => return Err(format!("entry {other}")),
    }
    let id = expected_id(field("id"))?.ok_or("no id")?;
    let timestamp = match field("timestamp") {
        None | Some(Value::Null) => return Err("no timestamp".into()),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| format!("timestamp {n}"))?,
        Some(other) => return Err(format!("timestamp {other}")),
    };
    Ok(Event {
        id,
        parent_id: expected_id(field("parent_id"))?,
        timestamp,
        action: expected_text(field("action"))?,
        object_type: expected_text(field("object_type"))?,
        object_name: expected_text(field("object_name"))?,
        deployment: expected_text(field("deployment"))?,
        instance: expected_text(field("instance"))?,
    })
}

fuzz_target!(|data: &[u8]| {
    let decoded = director::decode_events(data);
    if let Err(e) = &decoded {
        // Messages about one event quote at most 40 characters of a bad value.
        if !matches!(e, EventsDecodeError::Json(_)) {
            assert!(e.to_string().len() < 300, "{e}");
        }
    }
    // serde_json's Value parser refuses some inputs the typed decoder skips over (an
    // ignored number out of f64 range), so the cross-check runs only where it can.
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match decoded {
        Ok(events) => {
            let entries = value.as_array().expect("events decode only from an array");
            assert_eq!(events.len(), entries.len());
            for (entry, event) in entries.iter().zip(&events) {
                assert_eq!(expected_event(entry).as_ref(), Ok(event), "{entry}");
                for text in [
                    &event.action,
                    &event.object_type,
                    &event.object_name,
                    &event.deployment,
                    &event.instance,
                ] {
                    assert_ne!(text.as_deref(), Some(""), "an empty field is None");
                }
            }
        }
        Err(EventsDecodeError::BadId { index, .. } | EventsDecodeError::Missing { index, .. }) => {
            let entries = value.as_array().expect("events decode only from an array");
            assert!(index < entries.len());
            for entry in &entries[..index] {
                assert!(expected_event(entry).is_ok(), "an earlier event was fine: {entry}");
            }
            assert!(
                expected_event(&entries[index]).is_err(),
                "the event named is refused by the rules: {}",
                entries[index]
            );
        }
        Err(EventsDecodeError::Json(_)) => {}
    }
});
