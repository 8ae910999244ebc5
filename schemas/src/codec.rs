//! Encoding and decoding of events on the wire (JSON), with validation.
//!
//! Decoding is strict about what matters and lenient about what does not:
//! a missing required field, a wrong type or a value out of range is rejected
//! with a reason that ends up in the dead-letter headers; an unknown field
//! (a newer producer adding something) is ignored, so producers can be
//! upgraded before consumers.

use serde::{de::DeserializeOwned, Serialize};

/// Largest encoded event a consumer accepts. Anything bigger is not an event
/// produced by Weir and goes to the dead-letter topic without being parsed.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Longest identifier (node, source, agent, request), in bytes.
pub const MAX_ID_BYTES: usize = 255;

/// Longest object key, in bytes. The access rollup's primary key (minute,
/// node, object key) must fit one PostgreSQL btree entry (at most 2 704
/// bytes): 2 048 + 255 + the timestamp leave room. A longer key would make
/// the rollup upsert fail ("index row size … exceeds btree … maximum").
pub const MAX_OBJECT_KEY_BYTES: usize = 2048;

/// Longest free-text field (an endpoint URL, a `Range` header), in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Largest byte count an event may carry (1 TiB): the access rollup sums
/// them into `bigint`, and 2^63 / 2^40 = 8 million requests of the largest
/// size in one minute × node × object row still fit.
pub const MAX_BYTE_COUNT: u64 = 1 << 40;

/// Longest latency an event may carry, in microseconds (7 days); summed
/// into `bigint` like byte counts.
pub const MAX_LATENCY_US: u64 = 7 * 86_400 * 1_000_000;

/// Largest sequence number: stored as `bigint`.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// What the rate limiter may do with an event when consumers fall behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// May be sampled away under pressure (access events).
    Sheddable,
    /// Never dropped (health events): the fleet view depends on every one.
    Critical,
}

/// An event type that travels on its own topic.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Schema version this build writes; decoders accept this and older.
    const SCHEMA_VERSION: u32;
    /// Short name used in metrics and logs (`health`, `access`).
    const KIND: &'static str;
    /// How the producer's limiter treats this event.
    const PRIORITY: Priority;

    /// Partitioning key: events with the same key keep their order.
    fn key(&self) -> Option<&str>;

    /// Schema version carried by this instance.
    fn schema_version(&self) -> u32;

    /// Checks that go beyond types (ranges, non-empty identifiers).
    fn validate(&self) -> Result<(), String>;
}

/// Why a record could not become an event. Each variant maps to the short
/// reason written in the dead-letter headers.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Record has no value (a tombstone or an empty produce).
    #[error("record has no payload")]
    Empty,
    /// Record is larger than any event Weir produces.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the payload.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// Not JSON at all (syntax error, not UTF-8).
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not of the event's shape (missing field, wrong type).
    #[error("does not match the schema: {0}")]
    Schema(String),
    /// Shape is right but a value is not acceptable.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// Written by a newer major version that this build cannot read.
    #[error("schema version {found} is newer than supported version {supported}")]
    UnsupportedVersion {
        /// Version in the record.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
}

impl DecodeError {
    /// Short, stable reason for headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::Schema(_) => "schema",
            DecodeError::Invalid(_) => "invalid",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
        }
    }
}

/// Decodes and validates one event from a record payload.
pub fn decode<E: Event>(payload: Option<&[u8]>) -> Result<E, DecodeError> {
    let bytes = payload.ok_or(DecodeError::Empty)?;
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: MAX_EVENT_BYTES,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let event: E = object(&mut de)
        .and_then(|e| de.end().map(|()| e))
        .map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => DecodeError::Schema(e.to_string()),
                Category::Syntax | Category::Eof | Category::Io => {
                    DecodeError::NotJson(e.to_string())
                }
            }
        })?;
    if event.schema_version() > E::SCHEMA_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: event.schema_version(),
            supported: E::SCHEMA_VERSION,
        });
    }
    if event.schema_version() == 0 {
        return Err(DecodeError::Invalid(
            "schema_version must be at least 1".into(),
        ));
    }
    event.validate().map_err(DecodeError::Invalid)?;
    Ok(event)
}

/// Validates and encodes one event. Producers call this so that an invalid
/// event is refused at the source instead of landing in the dead-letter topic.
pub fn encode<E: Event>(event: &E) -> Result<Vec<u8>, String> {
    event.validate()?;
    serde_json::to_vec(event).map_err(|e| e.to_string())
}

/// Checks an identifier that ends up in Redis keys, SQL rows and URLs.
pub(crate) fn check_id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(format!("{field} is longer than {MAX_ID_BYTES} bytes"));
    }
    // Fast path: printable ASCII without space holds neither (nearly every
    // identifier); anything else is checked character by character.
    let plain = value.bytes().all(|b| b.is_ascii_graphic());
    if !plain && value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{field} must not contain whitespace or control characters"
        ));
    }
    Ok(())
}

/// Checks a text field that ends up in SQL rows or JSON documents: bounded,
/// and without control characters (PostgreSQL `text` and `jsonb` refuse
/// NUL; the others corrupt logs and terminals).
pub(crate) fn check_text(field: &str, value: &str, max_bytes: usize) -> Result<(), String> {
    if value.len() > max_bytes {
        return Err(format!("{field} is longer than {max_bytes} bytes"));
    }
    // Fast path: printable ASCII (space included) holds no control
    // character; anything else is checked character by character.
    let plain = value.bytes().all(|b| matches!(b, b' '..=b'~'));
    if !plain && value.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(())
}

/// Checks that a count stays within `max`, so that sums of it cannot
/// overflow the stores' 64-bit integers.
pub(crate) fn check_max(field: &str, value: u64, max: u64) -> Result<(), String> {
    if value > max {
        return Err(format!("{field} = {value} exceeds {max}"));
    }
    Ok(())
}

/// Checks that a float is a real number in a range (JSON cannot carry NaN,
/// but a negative or absurd value can still arrive).
pub(crate) fn check_range(field: &str, value: f64, min: f64, max: f64) -> Result<(), String> {
    if !value.is_finite() || value < min || value > max {
        return Err(format!("{field} = {value} is outside {min}..={max}"));
    }
    Ok(())
}

/// Deserializes `T` from a JSON object only. serde's derived structs also
/// accept a JSON array of their fields in order (`"load_avg": [1, 2, 3]`),
/// which the JSON Schema files refuse; every struct of the wire format is
/// read through this so that the Rust decoder and the schemas agree.
pub(crate) fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    d.deserialize_map(ObjectVisitor(std::marker::PhantomData))
}

/// [`object`] for each element of an array.
pub(crate) fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Elements<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Elements<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of objects")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(Object(v)) = seq.next_element()? {
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Elements(std::marker::PhantomData))
}

/// One element read through [`object`].
struct Object<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object(d).map(Object)
    }
}

struct ObjectVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }
}

#[cfg(test)]
mod check_tests {
    use super::{check_id, check_text};

    /// The ASCII fast paths decide as the character-by-character rule does,
    /// for every character of the first planes (C0, DEL, C1, Latin-1 and
    /// Unicode whitespace included), alone and inside plain text.
    #[test]
    fn fast_paths_agree_with_the_character_rules() {
        let chars = (0u32..0x3100)
            .chain([0xFEFF, 0x1F600])
            .filter_map(char::from_u32);
        for c in chars {
            for s in [c.to_string(), format!("edge-{c}-01")] {
                let id_ok = !s.chars().any(|c| c.is_control() || c.is_whitespace());
                assert_eq!(check_id("f", &s).is_ok(), id_ok, "id {s:?}");
                let text_ok = !s.chars().any(char::is_control);
                assert_eq!(check_text("f", &s, 64).is_ok(), text_ok, "text {s:?}");
            }
        }
    }
}

#[cfg(test)]
mod object_only_tests {
    use crate::{decode, DecodeError, HealthEvent};

    #[test]
    fn structs_are_read_from_objects_only() {
        let ev = HealthEvent::example("n", 1, chrono::Utc::now());
        let good = serde_json::to_value(&ev).expect("json");
        let ok = serde_json::to_vec(&good).expect("bytes");
        assert!(decode::<HealthEvent>(Some(&ok)).is_ok());
        for (field, v) in [
            ("load_avg", serde_json::json!([1, 2, 3])),
            ("ips", serde_json::json!([[], [], []])),
            ("interfaces", serde_json::json!([["eth0", 1, 2, null]])),
        ] {
            let mut bad = good.clone();
            bad[field] = v;
            let bytes = serde_json::to_vec(&bad).expect("bytes");
            assert!(
                matches!(
                    decode::<HealthEvent>(Some(&bytes)),
                    Err(DecodeError::Schema(_))
                ),
                "{field} as an array was accepted"
            );
        }
        // The whole event as an array of its fields.
        let fields: Vec<serde_json::Value> = good
            .as_object()
            .expect("object")
            .values()
            .cloned()
            .collect();
        let bytes = serde_json::to_vec(&fields).expect("bytes");
        assert!(decode::<HealthEvent>(Some(&bytes)).is_err());
        // Trailing garbage after the object is not JSON.
        let mut trailing = ok.clone();
        trailing.extend_from_slice(b" {}");
        assert!(matches!(
            decode::<HealthEvent>(Some(&trailing)),
            Err(DecodeError::NotJson(_))
        ));
    }
}
