//! The director's event log as this client reads it (§2.5): the [`Event`] fields the watch
//! uses, the [`EventsQuery`] of one page, and [`decode_events`], which turns a `/events` body
//! into events — ids the director sends as strings holding integers, fields it leaves out
//! when null or empty.

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One event of `GET /events`: only the fields the watch reads. Invariant: every `Option`
/// is `None` for a field that was absent, null or empty, never `Some("")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    /// The event this one completes (the second `create`/`vm` names the first).
    pub parent_id: Option<u64>,
    /// Epoch seconds.
    pub timestamp: i64,
    pub action: Option<String>,
    pub object_type: Option<String>,
    pub object_name: Option<String>,
    pub deployment: Option<String>,
    pub instance: Option<String>,
}

/// The parameters of one `GET /events`: `before_id=N` pages back to ids below N,
/// `after_time=T` keeps events whose timestamp is at least T+1 s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventsQuery {
    pub before_id: Option<u64>,
    pub after_time: Option<i64>,
}

impl EventsQuery {
    /// The query pairs, in a fixed order; none for the default query.
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(before_id) = self.before_id {
            pairs.push(("before_id", before_id.to_string()));
        }
        if let Some(after_time) = self.after_time {
            pairs.push(("after_time", after_time.to_string()));
        }
        pairs
    }
}

/// Why a `/events` body is not a list of events. The index is the event's position in the
/// array (0 = the first, the newest).
#[derive(Debug, thiserror::Error)]
pub enum EventsDecodeError {
    /// Not JSON, not an array of objects, or a field of the wrong type.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// `id` or `parent_id` holds something other than a non-negative integer (as a string
    /// or a number).
    #[error("event at index {index}: {field} {value} is not an event id (an integer)")]
    BadId {
        index: usize,
        field: &'static str,
        /// The value as sent, shortened.
        value: String,
    },
    /// A field every event has is absent, null or empty.
    #[error("event at index {index}{}: no {field}", id.map(|id| format!(" (id {id})")).unwrap_or_default())]
    Missing {
        index: usize,
        id: Option<u64>,
        field: &'static str,
    },
}

/// Decodes a `/events` body. `id` and `parent_id` are strings holding integers (JSON
/// integers are accepted too); a field that is absent, null or empty is `None`; fields not
/// in [`Event`] (`user`, `task`, `context`, `error`, …) are ignored. An event without an `id`
/// or a `timestamp`, or with an id that is not an integer, is an error naming the event's
/// index. Public so the fuzz targets exercise exactly what the client runs.
pub fn decode_events(body: &[u8]) -> Result<Vec<Event>, EventsDecodeError> {
    let raw: Vec<RawEvent> = serde_json::from_slice(body)?;
    raw.into_iter()
        .enumerate()
        .map(|(index, event)| event.into_event(index))
        .collect()
}

/// An event as sent, before its ids are checked.
#[derive(serde::Deserialize)]
struct RawEvent {
    #[serde(default)]
    id: RawId,
    #[serde(default)]
    parent_id: RawId,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    object_type: Option<String>,
    #[serde(default)]
    object_name: Option<String>,
    #[serde(default)]
    deployment: Option<String>,
    #[serde(default)]
    instance: Option<String>,
}

impl RawEvent {
    fn into_event(self, index: usize) -> Result<Event, EventsDecodeError> {
        let id = self
            .id
            .into_id(index, "id")?
            .ok_or(EventsDecodeError::Missing {
                index,
                id: None,
                field: "id",
            })?;
        Ok(Event {
            id,
            parent_id: self.parent_id.into_id(index, "parent_id")?,
            timestamp: self.timestamp.ok_or(EventsDecodeError::Missing {
                index,
                id: Some(id),
                field: "timestamp",
            })?,
            action: non_empty(self.action),
            object_type: non_empty(self.object_type),
            object_name: non_empty(self.object_name),
            deployment: non_empty(self.deployment),
            instance: non_empty(self.instance),
        })
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// An id field as sent: whatever JSON it held, kept for the error message when it is not
/// an id.
#[derive(Debug, Default, PartialEq)]
enum RawId {
    /// Absent or null.
    #[default]
    Absent,
    Number(u64),
    Text(String),
    /// Any other JSON value, described.
    Other(String),
}

impl RawId {
    /// `None` for absent, null or `""`; the integer a string of ASCII digits or a
    /// non-negative JSON integer holds; anything else is `BadId`.
    fn into_id(self, index: usize, field: &'static str) -> Result<Option<u64>, EventsDecodeError> {
        let bad = |value: String| EventsDecodeError::BadId {
            index,
            field,
            value,
        };
        match self {
            RawId::Absent => Ok(None),
            RawId::Number(n) => Ok(Some(n)),
            RawId::Text(text) if text.is_empty() => Ok(None),
            RawId::Text(text) => {
                if text.bytes().all(|b| b.is_ascii_digit()) {
                    text.parse().map(Some).map_err(|_| bad(shorten(&text)))
                } else {
                    Err(bad(shorten(&text)))
                }
            }
            RawId::Other(described) => Err(bad(described)),
        }
    }
}

/// A string as it may appear in a message: quoted and escaped, at most 40 characters of it.
fn shorten(text: &str) -> String {
    const SHOWN: usize = 40;
    if text.chars().count() <= SHOWN {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(SHOWN).collect();
        format!("{head:?}… ({} bytes)", text.len())
    }
}

impl<'de> serde::Deserialize<'de> for RawId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawIdVisitor)
    }
}

struct RawIdVisitor;

impl<'de> Visitor<'de> for RawIdVisitor {
    type Value = RawId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event id")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawId, E> {
        Ok(RawId::Number(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawId, E> {
        Ok(u64::try_from(v).map_or_else(|_| RawId::Other(v.to_string()), RawId::Number))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawId, E> {
        // `1e300` displays as 301 digits.
        let shown = v.to_string();
        Ok(RawId::Other(if shown.len() <= 24 {
            shown
        } else {
            format!("{v:e}")
        }))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawId, E> {
        Ok(RawId::Other(v.to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawId, E> {
        Ok(RawId::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<RawId, E> {
        Ok(RawId::Text(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<RawId, E> {
        Ok(RawId::Absent)
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawId, E> {
        Ok(RawId::Absent)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<RawId, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawId, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawId::Other("an array".to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawId, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(RawId::Other("an object".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64) -> Event {
        Event {
            id,
            parent_id: None,
            timestamp: 1_700_000_000,
            action: None,
            object_type: None,
            object_name: None,
            deployment: None,
            instance: None,
        }
    }

    #[test]
    fn ids_are_strings_or_integers() {
        let events = decode_events(
            br#"[
                {"id":"12","parent_id":"11","timestamp":1700000000,"action":"create",
                 "object_type":"vm","object_name":"i-1","deployment":"cf","instance":"w/0",
                 "user":"admin","task":"7","context":{"a":[1]},"error":"x"},
                {"id":11,"parent_id":9,"timestamp":1700000000},
                {"id":"18446744073709551615","timestamp":-1}
            ]"#,
        )
        .expect("decode");
        assert_eq!(
            events,
            [
                Event {
                    parent_id: Some(11),
                    action: Some("create".into()),
                    object_type: Some("vm".into()),
                    object_name: Some("i-1".into()),
                    deployment: Some("cf".into()),
                    instance: Some("w/0".into()),
                    ..event(12)
                },
                Event {
                    parent_id: Some(9),
                    ..event(11)
                },
                Event {
                    timestamp: -1,
                    ..event(u64::MAX)
                },
            ]
        );
        assert!(decode_events(b"[]").expect("empty").is_empty());
    }

    #[test]
    fn absent_null_and_empty_fields_are_none() {
        let events = decode_events(
            br#"[
                {"id":"3","timestamp":1700000000},
                {"id":"2","parent_id":null,"timestamp":1700000000,"action":null,
                 "object_type":null,"object_name":null,"deployment":null,"instance":null},
                {"id":"1","parent_id":"","timestamp":1700000000,"action":"","object_type":"",
                 "object_name":"","deployment":"","instance":""}
            ]"#,
        )
        .expect("decode");
        assert_eq!(events, [event(3), event(2), event(1)]);
    }

    #[test]
    fn deployment_names_come_through_as_sent() {
        for name in ["ünïcødé-日本", "a/b", "100%", "..", ".", "a b?c#d", "\\"] {
            let body = serde_json::json!([{"id": "1", "timestamp": 0, "deployment": name}]);
            let events = decode_events(body.to_string().as_bytes()).expect(name);
            assert_eq!(events[0].deployment.as_deref(), Some(name));
        }
    }

    #[test]
    fn ids_that_are_not_integers_are_errors_naming_the_id_and_the_index() {
        for (body, message) in [
            (
                r#"[{"id":"1","timestamp":0},{"id":"abc","timestamp":0}]"#,
                r#"event at index 1: id "abc" is not an event id (an integer)"#,
            ),
            (
                r#"[{"id":"1","parent_id":"-4","timestamp":0}]"#,
                r#"event at index 0: parent_id "-4" is not an event id (an integer)"#,
            ),
            (
                r#"[{"id":-4,"timestamp":0}]"#,
                "event at index 0: id -4 is not an event id (an integer)",
            ),
            (
                r#"[{"id":1.5,"timestamp":0}]"#,
                "event at index 0: id 1.5 is not an event id (an integer)",
            ),
            (
                r#"[{"id":" 1","timestamp":0}]"#,
                r#"event at index 0: id " 1" is not an event id (an integer)"#,
            ),
            (
                r#"[{"id":"18446744073709551616","timestamp":0}]"#,
                r#"event at index 0: id "18446744073709551616" is not an event id (an integer)"#,
            ),
            (
                r#"[{"id":1e300,"timestamp":0}]"#,
                "event at index 0: id 1e300 is not an event id (an integer)",
            ),
            (
                r#"[{"id":true,"timestamp":0}]"#,
                "event at index 0: id true is not an event id (an integer)",
            ),
            (
                r#"[{"id":{"n":1},"timestamp":0}]"#,
                "event at index 0: id an object is not an event id (an integer)",
            ),
            (
                r#"[{"id":[1],"timestamp":0}]"#,
                "event at index 0: id an array is not an event id (an integer)",
            ),
            (r#"[{"timestamp":0}]"#, "event at index 0: no id"),
            (r#"[{"id":"","timestamp":0}]"#, "event at index 0: no id"),
            (r#"[{"id":"5"}]"#, "event at index 0 (id 5): no timestamp"),
            (
                r#"[{"id":"5","timestamp":null}]"#,
                "event at index 0 (id 5): no timestamp",
            ),
        ] {
            let err = decode_events(body.as_bytes()).expect_err(body);
            assert_eq!(err.to_string(), message, "{body}");
        }
    }

    #[test]
    fn a_long_bad_id_is_shortened_in_the_message() {
        let id = "x".repeat(10_000);
        let body = format!(r#"[{{"id":"{id}","timestamp":0}}]"#);
        let message = decode_events(body.as_bytes())
            .expect_err("long")
            .to_string();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains("10000 bytes"), "{message}");
    }

    #[test]
    fn wrong_shapes_are_json_errors() {
        for body in [
            &b"{}"[..],
            b"[1]",
            b"[{\"id\":\"1\",\"timestamp\":\"now\"}]",
            b"[{\"id\":\"1\",\"timestamp\":0,\"deployment\":7}]",
            b"[{\"id\":\"1\",\"id\":\"2\",\"timestamp\":0}]",
            b"[{\"id\":\"1\",",
            b"",
        ] {
            let err = decode_events(body).expect_err(&String::from_utf8_lossy(body));
            assert!(matches!(err, EventsDecodeError::Json(_)), "{err}");
        }
    }

    #[test]
    fn query_pairs_name_only_what_is_set() {
        assert!(EventsQuery::default().pairs().is_empty());
        assert_eq!(
            EventsQuery {
                before_id: Some(9),
                after_time: Some(-3)
            }
            .pairs(),
            [
                ("before_id", "9".to_string()),
                ("after_time", "-3".to_string())
            ]
        );
    }
}
