//! A request body parsed into a [`serde_json::Value`] the way the gateway checks it:
//! serde_json's parser (with its recursion limit of 128 levels), except that an object
//! with the same key twice is refused. `Value` keeps the last of two equal keys, and a
//! backend whose parser keeps the first would get a value the schema never saw
//! (`{"a": 99, "a": 1}`); RFC 8259 §4 leaves duplicates to the parser, I-JSON (RFC 7493
//! §2.3) forbids them. Keys are compared decoded (`"a"` and `"\u0061"` are the same).

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body was refused.
#[derive(Debug)]
pub(super) enum Refused {
    /// serde_json's error: syntax, end of input, recursion limit, number range.
    Json(serde_json::Error),
    /// `key` appears twice in the object at `object`, a JSON pointer (`""` for the top).
    DuplicateKey { key: String, object: String },
}

/// Parses `body` as one JSON value, refusing duplicate keys at any depth.
pub(super) fn parse(body: &[u8]) -> Result<Value, Refused> {
    let found = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed = Strict { found: &found }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match (parsed, found.into_inner()) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(Duplicate { key, mut path })) => {
            path.reverse();
            let object = path.iter().fold(String::new(), |mut pointer, step| {
                pointer.push('/');
                match step {
                    Step::Key(key) => pointer.push_str(&key.replace('~', "~0").replace('/', "~1")),
                    Step::Index(index) => pointer.push_str(&index.to_string()),
                }
                pointer
            });
            Err(Refused::DuplicateKey { key, object })
        }
        (Err(err), None) => Err(Refused::Json(err)),
    }
}

/// A JSON object decoded as [`parse`] decodes a body: an object with the same key
/// twice, at any depth, is an error. For the claims of a JWT (jsonwebtoken decodes
/// them with serde into the type it is asked for): a token with `roles` twice would
/// otherwise hold the last, where another reader of the same token finds the first.
#[derive(Debug)]
pub(crate) struct StrictObject(pub(crate) Map<String, Value>);

impl<'de> serde::Deserialize<'de> for StrictObject {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let found = RefCell::new(None);
        match (Strict { found: &found }).deserialize(deserializer)? {
            Value::Object(object) => Ok(Self(object)),
            _ => Err(de::Error::custom("not a JSON object")),
        }
    }
}

/// The duplicate found, and the way to its object, innermost step first (filled in as
/// the error goes back up, so a body without duplicates pays nothing for it).
struct Duplicate {
    key: String,
    path: Vec<Step>,
}

enum Step {
    Key(String),
    Index(usize),
}

/// A `Value` seed and visitor; `found` says why it failed when a duplicate was found.
#[derive(Clone, Copy)]
struct Strict<'a> {
    found: &'a RefCell<Option<Duplicate>>,
}

impl Strict<'_> {
    /// Adds `step` to the way to a duplicate found below it.
    fn on_the_way(&self, step: impl FnOnce() -> Step) {
        if let Some(duplicate) = self.found.borrow_mut().as_mut() {
            duplicate.path.push(step());
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // As serde_json's own `Value` visitor; its parser never yields a non-finite f64.
        Ok(Value::from(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(err) => {
                    self.on_the_way(|| Step::Index(items.len()));
                    return Err(err);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                *self.found.borrow_mut() = Some(Duplicate {
                    key,
                    path: Vec::new(),
                });
                return Err(de::Error::custom("duplicate key"));
            }
            match map.next_value_seed(self) {
                Ok(value) => {
                    object.insert(key, value);
                }
                Err(err) => {
                    self.on_the_way(|| Step::Key(key));
                    return Err(err);
                }
            }
        }
        Ok(Value::Object(object))
    }
}
