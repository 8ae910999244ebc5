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
use weir_producers::{EventProducer, Offer, ProduceError};
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
        match self.producer.offer(&self.topic, &ev) {
            // The delivery report is not awaited: the producer counts
            // deliveries and failures itself.
            Ok(Offer::Queued(_pending)) => {}
            // Consumers are behind: the limiter counted the shed event.
            Ok(Offer::Shed) => {}
            Err(ProduceError::QueueFull) => self.shed.emit(ShedReason::QueueFull),
            Err(e) => self.shed.emit(ShedReason::Error(e.to_string())),
        }
    }
}
