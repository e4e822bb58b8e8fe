//! Reading YAML with serde without letting serde judge the values: each value is kept as
//! found ([`Field`]), so a value of the wrong type is reported by the configuration's own
//! checks — in the order they run, with the key, and never with the value, which may be a
//! secret — and each mapping keeps the keys it does not know ([`Section`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_yaml_ng::{Mapping, Value};

/// One value of the file, as found. Reading one never fails. Not `Debug`: it may hold a secret.
#[derive(Default)]
pub(super) enum Field<T> {
    /// Not in the file, or `null`.
    #[default]
    Absent,
    Given(T),
    /// A value of a type the key does not take.
    Wrong,
}

/// A mapping of the file: the keys `T` knows, and the others, in the file's order.
#[derive(Deserialize)]
pub(super) struct Section<T> {
    #[serde(flatten)]
    pub(super) keys: T,
    #[serde(flatten)]
    pub(super) unknown: Mapping,
}

/// A problem with one key (a dotted path such as `intervals.watch`).
pub(super) struct Invalid {
    pub(super) key: String,
    pub(super) message: String,
}

pub(super) fn invalid(key: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

pub(super) fn missing(key: &str) -> Invalid {
    invalid(key, "required key is missing")
}

/// A type a [`Field`] can hold, and the YAML values that give one.
pub(super) trait Accepts: Sized {
    /// What the key must be, for the message: "must be a number".
    const EXPECTED: &'static str;
    /// `None` when `value` has none of the accepted forms.
    fn accept(value: Value) -> Option<Self>;
}

/// Text; numbers and booleans are taken as their text (`password: 1234`).
impl Accepts for String {
    const EXPECTED: &'static str = "a string";
    fn accept(value: Value) -> Option<Self> {
        match value {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// A finite number, or a string holding one (`poll_user_sync: "10"`).
impl Accepts for f64 {
    const EXPECTED: &'static str = "a number";
    fn accept(value: Value) -> Option<Self> {
        let number = match value {
            Value::String(s) => s.trim().parse().ok(),
            other => other.as_f64(),
        };
        number.filter(|v: &f64| v.is_finite())
    }
}

/// `true` or `false`, not the strings.
impl Accepts for bool {
    const EXPECTED: &'static str = "true or false";
    fn accept(value: Value) -> Option<Self> {
        value.as_bool()
    }
}

impl<T: DeserializeOwned> Accepts for Section<T> {
    const EXPECTED: &'static str = "a mapping";
    fn accept(value: Value) -> Option<Self> {
        // A mapping never fails to deserialize: its values are `Field`s, and `plain` left no
        // key that is not a string and no tag, the two things serde cannot buffer.
        value.is_mapping().then(|| Self::deserialize(value).ok())?
    }
}

impl<'de, T: Accepts> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(deserializer)? {
            Value::Null => Field::Absent,
            value => T::accept(value).map_or(Field::Wrong, Field::Given),
        })
    }
}

impl<T: Accepts> Field<T> {
    /// The value, `None` when absent; a value of another type is an error naming `key`.
    pub(super) fn get(self, key: &str) -> Result<Option<T>, Invalid> {
        match self {
            Field::Absent => Ok(None),
            Field::Given(value) => Ok(Some(value)),
            Field::Wrong => Err(invalid(key, format!("must be {}", T::EXPECTED))),
        }
    }

    pub(super) fn required(self, key: &str) -> Result<T, Invalid> {
        self.get(key)?.ok_or_else(|| missing(key))
    }
}

impl<T: DeserializeOwned + Default> Field<Section<T>> {
    /// The section's keys, all absent when the section is.
    pub(super) fn keys(self, key: &str) -> Result<T, Invalid> {
        Ok(self
            .get(key)?
            .map_or_else(T::default, |section| section.keys))
    }

    /// The keys the section does not know; `None` when it is absent or not a mapping.
    pub(super) fn unknown(&self) -> Option<&Mapping> {
        match self {
            Field::Given(section) => Some(&section.unknown),
            _ => None,
        }
    }
}

/// Makes plain the two things a YAML file may hold that serde cannot buffer in a
/// [`Section`]: a custom tag (`!foo x`) becomes a value no key takes (an empty sequence), so a
/// known key still reports its type error and an unknown one is only warned about; a key that
/// is not a string becomes its debug form (`Number(1)`), which is how a warning names it.
pub(super) fn plain(value: Value) -> Value {
    let plain_entry = |(key, value)| {
        let key = match key {
            Value::String(key) => key,
            other => format!("{other:?}"),
        };
        (Value::String(key), plain(value))
    };
    match value {
        Value::Tagged(_) => Value::Sequence(Vec::new()),
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(plain).collect()),
        Value::Mapping(mapping) => Value::Mapping(mapping.into_iter().map(plain_entry).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Shape {
        text: Field<String>,
        number: Field<f64>,
        flag: Field<bool>,
        inner: Field<Section<Inner>>,
    }

    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Inner {
        text: Field<String>,
    }

    fn read(yaml: &str) -> Section<Shape> {
        let value = plain(serde_yaml_ng::from_str(yaml).expect("valid YAML"));
        Section::deserialize(value).expect("reading a plain mapping never fails")
    }

    fn message(result: Result<impl Sized, Invalid>) -> String {
        match result {
            Ok(_) => "ok".to_owned(),
            Err(Invalid { key, message }) => format!("{key}: {message}"),
        }
    }

    #[test]
    fn each_type_takes_its_forms_and_null_is_absent() {
        let s = read("text: 1234\nnumber: ' 2.5 '\nflag: false\ninner: {text: true}").keys;
        assert_eq!(s.text.get("text").ok().flatten().as_deref(), Some("1234"));
        assert_eq!(s.number.get("number").ok().flatten(), Some(2.5));
        assert_eq!(s.flag.get("flag").ok().flatten(), Some(false));
        let inner = s.inner.keys("inner").ok().expect("a mapping");
        assert_eq!(inner.text.get("t").ok().flatten().as_deref(), Some("true"));

        let s = read("text: ~\nnumber: ~\nflag: ~\ninner: ~").keys;
        assert!(matches!(s.text, Field::Absent) && matches!(s.number, Field::Absent));
        assert!(matches!(s.flag, Field::Absent) && matches!(s.inner, Field::Absent));
        assert_eq!(
            message(s.inner.keys("inner")),
            "ok",
            "an absent section is empty"
        );
    }

    #[test]
    fn a_wrong_type_names_the_key_and_never_the_value() {
        for (yaml, want) in [
            ("text: [hunter2]", "text: must be a string"),
            ("text: {hunter2: hunter2}", "text: must be a string"),
            ("text: !secret hunter2", "text: must be a string"),
            ("number: hunter2", "number: must be a number"),
            ("number: .inf", "number: must be a number"),
            ("number: '.nan'", "number: must be a number"),
            ("flag: 'true'", "flag: must be true or false"),
            ("flag: 1", "flag: must be true or false"),
            ("inner: hunter2", "inner: must be a mapping"),
            ("inner: !tagged {text: hunter2}", "inner: must be a mapping"),
        ] {
            let s = read(yaml).keys;
            let got = [
                message(s.text.get("text")),
                message(s.number.get("number")),
                message(s.flag.get("flag")),
                message(s.inner.keys("inner")),
            ]
            .into_iter()
            .find(|m| m != "ok");
            assert_eq!(got.as_deref(), Some(want), "{yaml}");
        }
    }

    #[test]
    fn unknown_keys_are_kept_in_order_whatever_their_values() {
        let s =
            read("zz: !tag {a: [!t 1]}\ntext: x\n1: a\naa: [1, {b: 2}]\ninner: {x: 1, text: y}");
        let unknown: Vec<_> = s.unknown.keys().filter_map(Value::as_str).collect();
        assert_eq!(unknown, ["zz", "Number(1)", "aa"]);
        let inner = s.keys.inner.unknown().expect("a mapping");
        assert_eq!(
            inner.keys().filter_map(Value::as_str).collect::<Vec<_>>(),
            ["x"]
        );
    }
}
