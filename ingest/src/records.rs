//! From a request body to records: splitting a batch, and judging each
//! record with the very function the health group decodes with
//! (`weir_schemas::decode`), so that nothing reaches the topic that the
//! consumers would refuse. Pure functions, tested without a server.

use serde::Serialize;
use weir_schemas::{decode, DecodeError, HealthEvent};

/// Why a whole body was refused before any record was looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Nothing but whitespace.
    Empty,
    /// A batch of more records than `ingest.max_batch_records`.
    TooManyRecords {
        /// The limit in force.
        limit: usize,
    },
}

/// Splits a body into its records: the whole body for a single report, one
/// record per non-blank line for `application/x-ndjson` (a `\r\n` line end
/// and a final newline are fine). Stops counting as soon as the batch
/// exceeds `max_records`, so a huge batch costs no more than its scan.
pub fn split(body: &[u8], ndjson: bool, max_records: usize) -> Result<Vec<&[u8]>, BodyError> {
    if !ndjson {
        let t = body.trim_ascii();
        return if t.is_empty() {
            Err(BodyError::Empty)
        } else {
            Ok(vec![t])
        };
    }
    let mut out = Vec::new();
    for line in body.split(|b| *b == b'\n') {
        let t = line.trim_ascii();
        if t.is_empty() {
            continue;
        }
        if out.len() == max_records {
            return Err(BodyError::TooManyRecords { limit: max_records });
        }
        out.push(t);
    }
    if out.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(out)
}

/// A record the consumers would refuse, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The decoder's class (`not_json`, `schema`, `invalid`, `too_large`,
    /// `unsupported_version`, `empty`): the same word a dead letter of this
    /// record would carry in `weir.dlq.reason`.
    pub code: &'static str,
    /// The field at fault (`seq`, `load_avg.one`, `interfaces[0].name`),
    /// when the fault is in one field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The decoder's message.
    pub message: String,
}

/// Judges one record exactly as a health consumer will: `Ok` with the event
/// when it would be applied, else why it would be dead-lettered.
pub fn judge(record: &[u8]) -> Result<HealthEvent, Refusal> {
    decode::<HealthEvent>(Some(record)).map_err(|e| Refusal {
        code: e.reason(),
        field: field_of(&e, record),
        message: e.to_string(),
    })
}

/// The field a decoding error is about. The decoder's own messages name
/// it in prose; this finds it as a path: for a wrong type, by decoding
/// again while tracking the path (only failed records pay for it); for a
/// missing field, from serde's message; for a refused value, from the
/// validation message, which starts with the field's name.
fn field_of(e: &DecodeError, record: &[u8]) -> Option<String> {
    match e {
        // Not an object at all: no field is at fault (serde's derived
        // structs would read an array by position; the decoder does not).
        DecodeError::Schema(_) if record.trim_ascii_start().first() != Some(&b'{') => None,
        DecodeError::Schema(msg) => {
            let mut de = serde_json::Deserializer::from_slice(record);
            let path = match serde_path_to_error::deserialize::<_, HealthEvent>(&mut de) {
                Err(pe) => pe.path().to_string(),
                Ok(_) => ".".into(),
            };
            let missing = msg
                .split_once("missing field `")
                .and_then(|(_, rest)| rest.split_once('`'))
                .map(|(name, _)| name);
            match (path.as_str(), missing) {
                (".", Some(m)) => Some(m.to_string()),
                (".", None) => None,
                (p, Some(m)) => Some(format!("{p}.{m}")),
                (p, None) => Some(p.to_string()),
            }
        }
        DecodeError::Invalid(msg) => {
            let name: String = msg
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
                .collect();
            let top = name.split('.').next().unwrap_or_default();
            top_level_fields().iter().any(|f| f == top).then_some(name)
        }
        DecodeError::UnsupportedVersion { .. } => Some("schema_version".into()),
        // Valid JSON whose number does not fit its field (1e111 for an
        // f32): serde calls it a syntax error, but a field is at fault.
        DecodeError::NotJson(_)
            if serde_json::from_slice::<serde::de::IgnoredAny>(record).is_ok() =>
        {
            let mut de = serde_json::Deserializer::from_slice(record);
            serde_path_to_error::deserialize::<_, HealthEvent>(&mut de)
                .err()
                .map(|pe| pe.path().to_string())
                .filter(|p| p != ".")
        }
        DecodeError::Empty | DecodeError::TooLarge { .. } | DecodeError::NotJson(_) => None,
    }
}

/// The names of `HealthEvent`'s fields, read from the type itself (its
/// serialized example), so that a field added to the schema is known here
/// without a list to keep in step.
fn top_level_fields() -> &'static [String] {
    static FIELDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        let example = HealthEvent::example("n", 1, chrono::DateTime::UNIX_EPOCH);
        match serde_json::to_value(example) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn good() -> Value {
        let e = HealthEvent::example("n1", 1, chrono::Utc::now());
        serde_json::to_value(e).expect("json")
    }

    fn refused(v: &Value) -> Refusal {
        judge(v.to_string().as_bytes()).expect_err("refused")
    }

    #[test]
    fn a_good_report_passes() {
        let e = judge(good().to_string().as_bytes()).expect("good");
        assert_eq!((e.node_id.as_str(), e.seq), ("n1", 1));
    }

    #[test]
    fn refusals_name_the_field() {
        let mut v = good();
        v["seq"] = json!("x");
        assert_eq!(
            (refused(&v).code, refused(&v).field.as_deref()),
            ("schema", Some("seq"))
        );
        let mut v = good();
        v["load_avg"]["five"] = json!([1]);
        assert_eq!(refused(&v).field.as_deref(), Some("load_avg.five"));
        let mut v = good();
        v["interfaces"][0]["rx_bytes_per_sec"] = json!(-1);
        assert_eq!(
            refused(&v).field.as_deref(),
            Some("interfaces[0].rx_bytes_per_sec")
        );
        let mut v = good();
        v.as_object_mut().expect("object").remove("uptime_secs");
        assert_eq!(refused(&v).field.as_deref(), Some("uptime_secs"));
        let mut v = good();
        v["node_id"] = json!("a\u{0}b");
        let r = refused(&v);
        assert_eq!((r.code, r.field.as_deref()), ("invalid", Some("node_id")));
        let mut v = good();
        v["seq"] = json!(0);
        assert_eq!(refused(&v).field.as_deref(), Some("seq"));
        let mut v = good();
        v["memory_free_mb"] = json!(1_000_000);
        assert_eq!(refused(&v).field.as_deref(), Some("memory_free_mb"));
        let mut v = good();
        v["schema_version"] = json!(99);
        let r = refused(&v);
        assert_eq!(
            (r.code, r.field.as_deref()),
            ("unsupported_version", Some("schema_version"))
        );
        // Found by the property below: a number too big for an f32 field.
        let mut v = good();
        v["cpu_usage_pct"] = json!(-7.412627485029765e111);
        assert_eq!(refused(&v).field.as_deref(), Some("cpu_usage_pct"));
        let r = judge(b"{not json").expect_err("not json");
        assert_eq!((r.code, r.field), ("not_json", None));
        let r = judge(b"[1,2]").expect_err("an array");
        assert_eq!((r.code, r.field), ("schema", None));
    }

    #[test]
    fn batches_split_on_lines_and_are_bounded() {
        let body = b"{\"a\":1}\r\n\n  {\"b\":2}\n";
        assert_eq!(
            split(body, true, 10).expect("two"),
            vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]
        );
        assert_eq!(
            split(b"1\n2\n3\n", true, 2),
            Err(BodyError::TooManyRecords { limit: 2 })
        );
        assert_eq!(split(b" \n\r\n", true, 2), Err(BodyError::Empty));
        assert_eq!(split(b"  ", false, 2), Err(BodyError::Empty));
        assert_eq!(split(b" {}\n", false, 1).expect("one"), vec![&b"{}"[..]]);
    }

    proptest! {
        /// Whatever the bytes, judging never panics, and a record it
        /// accepts is one the consumers' decoder accepts too.
        #[test]
        fn judging_arbitrary_bytes_agrees_with_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let ours = judge(&bytes).is_ok();
            let theirs = decode::<HealthEvent>(Some(&bytes)).is_ok();
            prop_assert_eq!(ours, theirs);
        }

        /// Changing one field of a good report to an arbitrary JSON value
        /// either passes or is refused naming a field.
        #[test]
        fn a_refusal_of_one_bad_field_names_a_field(
            key in prop::sample::select(vec!["seq", "node_id", "cores", "ts", "interval_ms", "cpu_usage_pct", "load_avg", "ips", "uptime_secs"]),
            value in prop_oneof![
                any::<i64>().prop_map(|n| json!(n)),
                any::<f64>().prop_map(|f| json!(f)),
                ".{0,20}".prop_map(|s| json!(s)),
                Just(json!(null)),
                Just(json!([])),
                Just(json!({})),
            ],
        ) {
            let mut v = good();
            v[key] = value;
            if let Err(r) = judge(v.to_string().as_bytes()) {
                prop_assert!(r.field.is_some(), "{:?}", r);
            }
        }

        /// Splitting never yields more than the limit nor a blank record.
        #[test]
        fn split_respects_its_bound(body in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b' '), Just(b'x')], 0..200), max in 1usize..20) {
            if let Ok(records) = split(&body, true, max) {
                prop_assert!(records.len() <= max && !records.is_empty());
                prop_assert!(records.iter().all(|r| !r.trim_ascii().is_empty()));
            }
        }
    }
}
