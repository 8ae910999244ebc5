//! `AccessEvent`: one per request served by `weir edge`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::{
    check_id, check_max, check_text, Event, Priority, MAX_BYTE_COUNT, MAX_ID_BYTES, MAX_LATENCY_US,
    MAX_OBJECT_KEY_BYTES, MAX_SEQ, MAX_TEXT_BYTES,
};

/// How the edge answered a request, relative to its caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Served from the memory or disk tier.
    Hit,
    /// Fetched from the origin, then cached.
    Miss,
    /// Streamed from the origin without being kept whole in memory.
    Stream,
    /// Waited on another request's origin fetch (single flight).
    Coalesced,
    /// Served from cache past its freshness because the origin failed.
    Stale,
    /// Revalidated with the origin (not modified) and served from cache.
    Revalidated,
    /// Not cacheable (error, upload, purge).
    Bypass,
}

/// One request served by an edge node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessEvent {
    /// Schema version of this event (currently 1).
    pub schema_version: u32,
    /// When the request arrived.
    pub ts: DateTime<Utc>,
    /// Edge node that served it.
    pub node_id: String,
    /// Producing process; with `seq` it identifies the event for loss counting.
    pub source_id: String,
    /// Per-source sequence number, starting at 1.
    pub seq: u64,
    /// Request identifier (echoed in the `x-request-id` response header).
    pub request_id: String,
    /// HTTP method.
    pub method: String,
    /// Object key, percent-decoded.
    pub object_key: String,
    /// The `Range` header as sent, if any.
    #[serde(default)]
    pub range: Option<String>,
    /// HTTP status answered.
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes_sent: u64,
    /// Full size of the object, when known.
    #[serde(default)]
    pub object_size: Option<u64>,
    /// Cache outcome.
    pub cache: CacheOutcome,
    /// Time spent waiting on the origin, in microseconds (0 for hits).
    pub origin_latency_us: u64,
    /// Time to the last byte, in microseconds.
    pub total_latency_us: u64,
    /// Client address (IP, or IP:port).
    pub client_addr: String,
}

impl Event for AccessEvent {
    const SCHEMA_VERSION: u32 = 1;
    const KIND: &'static str = "access";
    const PRIORITY: Priority = Priority::Sheddable;

    fn key(&self) -> Option<&str> {
        Some(&self.node_id)
    }

    fn schema_version(&self) -> u32 {
        self.schema_version
    }

    fn validate(&self) -> Result<(), String> {
        check_id("node_id", &self.node_id)?;
        check_id("source_id", &self.source_id)?;
        if self.seq == 0 {
            return Err("seq starts at 1".into());
        }
        check_max("seq", self.seq, MAX_SEQ)?;
        if !(100..=599).contains(&self.status) {
            return Err(format!("status {} is not an HTTP status", self.status));
        }
        if self.method.is_empty() || self.method.len() > 16 {
            return Err("method must be 1 to 16 bytes".into());
        }
        check_text("method", &self.method, 16)?;
        check_text("request_id", &self.request_id, MAX_ID_BYTES)?;
        check_text("object_key", &self.object_key, MAX_OBJECT_KEY_BYTES)?;
        if let Some(range) = &self.range {
            check_text("range", range, MAX_TEXT_BYTES)?;
        }
        check_text("client_addr", &self.client_addr, MAX_ID_BYTES)?;
        check_max("bytes_sent", self.bytes_sent, MAX_BYTE_COUNT)?;
        if let Some(size) = self.object_size {
            check_max("object_size", size, MAX_BYTE_COUNT)?;
        }
        check_max("origin_latency_us", self.origin_latency_us, MAX_LATENCY_US)?;
        check_max("total_latency_us", self.total_latency_us, MAX_LATENCY_US)?;
        Ok(())
    }
}

impl AccessEvent {
    /// A complete, valid event for tests, examples and benchmarks.
    pub fn example(node_id: &str, seq: u64, ts: DateTime<Utc>) -> Self {
        AccessEvent {
            schema_version: Self::SCHEMA_VERSION,
            ts,
            node_id: node_id.into(),
            source_id: "00000000-0000-4000-8000-000000000000".into(),
            seq,
            request_id: format!("req-{seq}"),
            method: "GET".into(),
            object_key: "videos/ARMY OF THIEVES.mp4".into(),
            range: Some("bytes=0-1023".into()),
            status: 206,
            bytes_sent: 1024,
            object_size: Some(52_428_800),
            cache: CacheOutcome::Hit,
            origin_latency_us: 0,
            total_latency_us: 850,
            client_addr: "198.51.100.23".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn round_trips_and_validates() {
        let ev = AccessEvent::example("n1", 7, Utc::now());
        let bytes = encode(&ev).expect("encodes");
        let back: AccessEvent = decode(Some(&bytes)).expect("decodes");
        assert_eq!(ev, back);
        let mut bad = ev.clone();
        bad.status = 42;
        assert!(encode(&bad).is_err());
    }
}
