//! Property tests of the event decoder: it never panics, whatever the bytes,
//! and it accepts exactly the events a simple reference model of validity
//! accepts (bounded strings without control characters, counts that cannot
//! overflow a `bigint` sum, the ranges of the schema).

use chrono::Utc;
use proptest::prelude::*;
use serde_json::json;
use weir_schemas::{decode, AccessEvent, HealthEvent};

/// Characters that matter to the rules: plain, whitespace, control (C0, DEL,
/// C1, NUL), multi-byte, anything.
fn a_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => prop::char::range('a', 'z'),
        1 => Just(' '),
        1 => Just('\0'),
        1 => prop::char::range('\u{1}', '\u{1f}'),
        1 => prop::char::range('\u{7f}', '\u{9f}'),
        1 => Just('é'),
        1 => Just('\u{3000}'),
        1 => any::<char>(),
    ]
}

/// Strings around the bounds: short ones, and ones near 255 and 2048 bytes.
fn a_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(a_char(), 0..20),
        prop::collection::vec(a_char(), 250..260),
        prop::collection::vec(prop::char::range('a', 'z'), 2040..2056),
        prop::collection::vec(a_char(), 2040..2056),
    ]
    .prop_map(|v| v.into_iter().collect())
}

/// Numbers around the bounds: small, near 2^40, near 2^63, anything.
fn a_count() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..10_000,
        (1u64 << 40) - 2..(1u64 << 40) + 2,
        604_800_000_000u64 - 1..604_800_000_000u64 + 2,
        (i64::MAX as u64) - 1..(i64::MAX as u64) + 2,
        any::<u64>(),
    ]
}

/// The reference model, written from the rules, not from the code.
fn control(c: char) -> bool {
    c <= '\u{1f}' || ('\u{7f}'..='\u{9f}').contains(&c)
}

fn model_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && !s.chars().any(|c| control(c) || c.is_whitespace())
}

fn model_text(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(control)
}

#[derive(Debug, Clone)]
struct Access {
    node_id: String,
    object_key: String,
    method: String,
    request_id: String,
    seq: u64,
    status: u16,
    bytes_sent: u64,
    total_latency_us: u64,
}

fn an_access() -> impl Strategy<Value = Access> {
    (
        a_string(),
        a_string(),
        prop_oneof![Just("GET".to_string()), a_string()],
        a_string(),
        a_count(),
        prop_oneof![100u16..600, any::<u16>()],
        a_count(),
        a_count(),
    )
        .prop_map(
            |(
                node_id,
                object_key,
                method,
                request_id,
                seq,
                status,
                bytes_sent,
                total_latency_us,
            )| Access {
                node_id,
                object_key,
                method,
                request_id,
                seq,
                status,
                bytes_sent,
                total_latency_us,
            },
        )
}

impl Access {
    fn valid(&self) -> bool {
        model_id(&self.node_id)
            && model_text(&self.object_key, 2048)
            && !self.method.is_empty()
            && model_text(&self.method, 16)
            && model_text(&self.request_id, 255)
            && (1..=i64::MAX as u64).contains(&self.seq)
            && (100..=599).contains(&self.status)
            && self.bytes_sent <= 1 << 40
            && self.total_latency_us <= 604_800_000_000
    }

    fn json(&self) -> Vec<u8> {
        let mut doc = serde_json::to_value(AccessEvent::example("n1", 1, Utc::now()))
            .expect("example serializes");
        doc["node_id"] = json!(self.node_id);
        doc["object_key"] = json!(self.object_key);
        doc["method"] = json!(self.method);
        doc["request_id"] = json!(self.request_id);
        doc["seq"] = json!(self.seq);
        doc["status"] = json!(self.status);
        doc["bytes_sent"] = json!(self.bytes_sent);
        doc["total_latency_us"] = json!(self.total_latency_us);
        serde_json::to_vec(&doc).expect("bytes")
    }
}

#[derive(Debug, Clone)]
struct Health {
    node_id: String,
    service: String,
    endpoint: String,
    iface: String,
    ip: String,
    seq: u64,
}

fn a_health() -> impl Strategy<Value = Health> {
    (
        a_string(),
        a_string(),
        a_string(),
        a_string(),
        a_string(),
        a_count(),
    )
        .prop_map(|(node_id, service, endpoint, iface, ip, seq)| Health {
            node_id,
            service,
            endpoint,
            iface,
            ip,
            seq,
        })
}

impl Health {
    fn valid(&self) -> bool {
        model_id(&self.node_id)
            && model_text(&self.service, 255)
            && model_text(&self.endpoint, 1024)
            && model_text(&self.iface, 255)
            && model_text(&self.ip, 255)
            && (1..=i64::MAX as u64).contains(&self.seq)
    }

    fn json(&self) -> Vec<u8> {
        let mut doc = serde_json::to_value(HealthEvent::example("n1", 1, Utc::now()))
            .expect("example serializes");
        doc["node_id"] = json!(self.node_id);
        doc["service"] = json!(self.service);
        doc["endpoint"] = json!(self.endpoint);
        doc["interfaces"][0]["name"] = json!(self.iface);
        doc["ips"]["lan"] = json!([self.ip]);
        doc["seq"] = json!(self.seq);
        serde_json::to_vec(&doc).expect("bytes")
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn any_bytes_decode_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode::<AccessEvent>(Some(&bytes));
        let _ = decode::<HealthEvent>(Some(&bytes));
    }

    #[test]
    fn corrupted_events_decode_without_panicking(
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let good = serde_json::to_vec(&AccessEvent::example("n1", 1, Utc::now())).expect("bytes");
        let mut bad = good.clone();
        bad[at.index(good.len())] = byte;
        let _ = decode::<AccessEvent>(Some(&bad));
        let _ = decode::<AccessEvent>(Some(&good[..cut.index(good.len())]));
    }

}

// Events of up to 2 KiB strings are slower to generate: fewer cases.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn access_decoder_agrees_with_the_model(a in an_access()) {
        let got = decode::<AccessEvent>(Some(&a.json()));
        prop_assert_eq!(got.is_ok(), a.valid(), "{:?} → {:?}", a, got.err());
    }

    #[test]
    fn health_decoder_agrees_with_the_model(h in a_health()) {
        let got = decode::<HealthEvent>(Some(&h.json()));
        prop_assert_eq!(got.is_ok(), h.valid(), "{:?} → {:?}", h, got.err());
    }
}
