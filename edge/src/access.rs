//! A1: one `AccessEvent` per request, queued on the shared producer.
//!
//! Queuing never waits on Kafka: the producer's queue is bounded
//! (`kafka.queue_max_messages`) and when it is full the event is dropped and
//! counted in `weir_edge_access_events_shed_total`. An edge that stalls its
//! clients to keep its statistics complete would have its priorities wrong.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use weir_core::{InternalEventHandle, RegisterInternalEvent};
use weir_producers::{EventProducer, ProduceError};
use weir_schemas::{AccessEvent, CacheOutcome};

use crate::events::{AccessShed, AccessShedHandle, ShedReason};

/// Produces access events for one edge process.
pub struct AccessLog {
    producer: Arc<EventProducer>,
    topic: String,
    node_id: String,
    source_id: String,
    seq: AtomicU64,
    shed: AccessShedHandle,
}

/// What the handler knows about a request once it is answered.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// Arrival time.
    pub ts: DateTime<Utc>,
    /// Request id (also in `x-request-id`).
    pub request_id: String,
    /// `GET`, `HEAD`, `DELETE`, …
    pub method: String,
    /// Decoded key (the raw path when it did not decode).
    pub object_key: String,
    /// `Range` as sent.
    pub range: Option<String>,
    /// Status answered.
    pub status: u16,
    /// Body bytes sent.
    pub bytes_sent: u64,
    /// Whole size of the object, when known.
    pub object_size: Option<u64>,
    /// Cache outcome.
    pub cache: CacheOutcome,
    /// Time spent waiting on the origin, µs.
    pub origin_latency_us: u64,
    /// Time to the last byte, µs.
    pub total_latency_us: u64,
    /// Client address.
    pub client_addr: String,
}

/// Longest `object_key` an access event carries, in bytes: far under
/// PostgreSQL's btree row limit (2 704 bytes) for the rollup's index, so a
/// hostile path can never make the access pipeline's upsert fail.
pub const LOGGED_KEY_MAX: usize = 512;

/// Ends a key cut at [`LOGGED_KEY_MAX`].
pub const TRUNCATED_MARK: &str = "…[truncated]";

/// The key as an access event may carry it: control characters (NUL
/// included, which PostgreSQL's text refuses) replaced by U+FFFD, and cut
/// at [`LOGGED_KEY_MAX`] bytes, on a character boundary, marked
/// [`TRUNCATED_MARK`].
pub fn loggable_key(raw: &str) -> String {
    // Nearly every key: short enough and printable ASCII.
    if raw.len() <= LOGGED_KEY_MAX && raw.bytes().all(|b| matches!(b, b' '..=b'~')) {
        return raw.to_string();
    }
    let mut out = String::with_capacity(raw.len().min(LOGGED_KEY_MAX));
    for c in raw.chars() {
        let c = if c.is_control() { '\u{fffd}' } else { c };
        if out.len() + c.len_utf8() > LOGGED_KEY_MAX {
            while out.len() + TRUNCATED_MARK.len() > LOGGED_KEY_MAX {
                out.pop();
            }
            out.push_str(TRUNCATED_MARK);
            return out;
        }
        out.push(c);
    }
    out
}

impl AccessLog {
    /// Events go to `topic`, keyed by `node_id`.
    pub fn new(producer: Arc<EventProducer>, topic: String, node_id: String) -> AccessLog {
        AccessLog {
            producer,
            topic,
            node_id,
            source_id: uuid::Uuid::new_v4().to_string(),
            seq: AtomicU64::new(0),
            shed: AccessShed.register(),
        }
    }

    /// Queues the event; never waits.
    pub fn record(&self, r: AccessRecord) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let ev = AccessEvent {
            schema_version: 1,
            ts: r.ts,
            node_id: self.node_id.clone(),
            source_id: self.source_id.clone(),
            seq,
            request_id: r.request_id,
            method: r.method,
            object_key: r.object_key,
            range: r.range,
            status: r.status,
            bytes_sent: r.bytes_sent,
            object_size: r.object_size,
            cache: r.cache,
            origin_latency_us: r.origin_latency_us,
            total_latency_us: r.total_latency_us,
            client_addr: r.client_addr,
        };
        match self.producer.offer_detached(&self.topic, &ev) {
            // Queued (the producer counts its delivery or failure), or shed
            // while consumers are behind (the limiter counted it).
            Ok(_) => {}
            Err(ProduceError::QueueFull) => self.shed.emit(ShedReason::QueueFull),
            Err(e) => self.shed.emit(ShedReason::Error(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_are_cleaned_and_capped() {
        assert_eq!(loggable_key("a/b.txt"), "a/b.txt");
        assert_eq!(
            loggable_key("a\u{0}b\u{1}\u{7f}"),
            "a\u{fffd}b\u{fffd}\u{fffd}"
        );
        let k = loggable_key(&"é".repeat(600));
        assert!(k.len() <= LOGGED_KEY_MAX && k.ends_with(TRUNCATED_MARK));
        assert_eq!(loggable_key(&"x".repeat(512)), "x".repeat(512));
    }

    proptest! {
        #[test]
        fn any_key_fits_and_has_no_control_character(raw in "\\PC{0,700}|[\u{0}-\u{1f}a]{0,600}") {
            let k = loggable_key(&raw);
            prop_assert!(k.len() <= LOGGED_KEY_MAX);
            prop_assert!(!k.chars().any(char::is_control));
            if raw.len() <= LOGGED_KEY_MAX && !raw.chars().any(char::is_control) {
                prop_assert_eq!(k, raw);
            }
        }
    }
}
