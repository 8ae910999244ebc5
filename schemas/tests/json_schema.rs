//! Keeps the JSON Schema files in `schemas/json/` in step with the Rust types:
//! same properties, same required set, and both sides accept and reject the
//! same documents.

use std::collections::BTreeSet;

use chrono::Utc;
use serde_json::Value;
use weir_schemas::{decode, AccessEvent, Event, HealthEvent};

fn load(name: &str) -> Value {
    let path = format!("{}/json/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Walks the example and the schema together: every object in the example
/// must have exactly the schema's properties, and a property is `required` in
/// the schema exactly when removing it makes the Rust decoder fail.
fn check_object<E: Event>(schema: &Value, example: &Value, whole: &Value, path: &[String]) {
    let props = &schema["properties"];
    let name = if path.is_empty() {
        "<root>".to_string()
    } else {
        path.join(".")
    };
    assert_eq!(keys(props), keys(example), "properties of {name}");
    let required: BTreeSet<String> = schema["required"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for key in keys(example) {
        let mut doc = whole.clone();
        let mut target = &mut doc;
        for p in path {
            target = &mut target[p.as_str()];
        }
        target.as_object_mut().expect("object").remove(&key);
        let bytes = serde_json::to_vec(&doc).expect("bytes");
        let rust_requires = decode::<E>(Some(&bytes)).is_err();
        assert_eq!(
            required.contains(&key),
            rust_requires,
            "{name}.{key}: schema says required={}, Rust decoder says {}",
            required.contains(&key),
            rust_requires
        );
        let mut child_path = path.to_vec();
        child_path.push(key.clone());
        let sub_schema = &props[key.as_str()];
        let sub = &example[key.as_str()];
        if sub.is_object() {
            check_object::<E>(sub_schema, sub, whole, &child_path);
        } else if let (Some(items), Some(first)) =
            (sub.as_array(), sub.as_array().and_then(|a| a.first()))
        {
            let _ = items;
            if first.is_object() {
                let item_schema = &sub_schema["items"];
                assert_eq!(
                    keys(&item_schema["properties"]),
                    keys(first),
                    "items of {name}.{key}"
                );
            }
        }
    }
}

fn check<E: Event>(schema_file: &str, example: &E, bad: &[(&str, Value)]) {
    let schema = load(schema_file);
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let doc = serde_json::to_value(example).expect("serialize");
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "example rejected by {schema_file}: {errors:?}"
    );
    check_object::<E>(&schema, &doc, &doc, &[]);

    let mut future = doc.clone();
    future["added_in_a_later_version"] = Value::Bool(true);
    assert!(
        validator.is_valid(&future),
        "schema must tolerate unknown fields"
    );
    assert!(decode::<E>(Some(&serde_json::to_vec(&future).expect("bytes"))).is_ok());

    for (field, value) in bad {
        let mut d = doc.clone();
        d[*field] = value.clone();
        assert!(
            !validator.is_valid(&d),
            "{schema_file} accepted {field}={value}"
        );
        let bytes = serde_json::to_vec(&d).expect("bytes");
        assert!(
            decode::<E>(Some(&bytes)).is_err(),
            "decoder accepted {field}={value}"
        );
    }
}

#[test]
fn health_schema_matches_rust_type() {
    let ev = HealthEvent::example("edge-1", 1, Utc::now());
    check(
        "health-event.v1.json",
        &ev,
        &[
            ("cores", Value::from("eight")),
            ("seq", Value::from(0)),
            ("node_id", Value::from("")),
            ("cpu_usage_pct", Value::from(250.0)),
            ("schema_version", Value::from(2)),
            ("node_id", Value::from("edge\u{0}1")),
            ("agent_id", Value::from("a b")),
            ("service", Value::from("edge\u{0}")),
            ("endpoint", Value::from("x".repeat(1025))),
            ("cdn_type", Value::from("mid\u{7}")),
            ("seq", Value::from(u64::MAX)),
        ],
    );
}

#[test]
fn access_schema_matches_rust_type() {
    let ev = AccessEvent::example("edge-1", 1, Utc::now());
    check(
        "access-event.v1.json",
        &ev,
        &[
            ("status", Value::from(42)),
            ("cache", Value::from("sometimes")),
            ("seq", Value::from(0)),
            ("method", Value::from("")),
            ("object_key", Value::from("k".repeat(2049))),
            ("object_key", Value::from("a\u{0}b")),
            ("object_key", Value::from("a\u{1b}[31mred")),
            ("node_id", Value::from("edge\u{0}")),
            ("request_id", Value::from("r\u{85}")),
            ("range", Value::from("bytes=0-1\n")),
            ("client_addr", Value::from("x".repeat(256))),
            ("bytes_sent", Value::from(1u64 << 62)),
            ("object_size", Value::from(u64::MAX)),
            ("total_latency_us", Value::from(i64::MAX)),
            ("seq", Value::from(u64::MAX)),
        ],
    );
}

#[test]
fn report_request_schema_matches_rust_type() {
    let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).expect("day");
    let req = weir_schemas::ReportRequest {
        schema_version: 1,
        request_id: "daily-2026-12-01".into(),
        kind: weir_schemas::ReportKind::Scheduled,
        from: day,
        to: day,
        tz: "Europe/Berlin".into(),
        recipients: vec!["ops@example.com".into()],
        requested_at: Utc::now(),
    };
    check(
        "report-request.v1.json",
        &req,
        &[
            ("request_id", Value::String("a b".into())),
            ("kind", Value::String("weekly".into())),
            ("recipients", serde_json::json!([])),
            ("recipients", serde_json::json!(["no-at-sign"])),
            ("schema_version", serde_json::json!(0)),
            ("from", Value::String("1999-12-31".into())),
        ],
    );
}
