//! The gateway's internal events: each writes its log line and its metric
//! together (`weir_core::telemetry`). Per-record counters come from a cache
//! keyed by their labels, registered once.

use weir_core::{CounterCache, InternalEvent};

/// `weir_ingest_records_total{outcome,reason}`.
static RECORDS: CounterCache<2> =
    CounterCache::new("weir_ingest_records_total", ["outcome", "reason"]);

/// `weir_ingest_requests_refused_total{reason}`.
static REFUSED: CounterCache<1> =
    CounterCache::new("weir_ingest_requests_refused_total", ["reason"]);

/// What became of one record of a request.
pub(crate) struct RecordAnswered<'a> {
    /// `accepted`, `invalid`, `rate_limited` or `unavailable`.
    pub outcome: &'static str,
    /// For `invalid`, the decoder's class (`schema`, `not_json`, …); for
    /// `unavailable`, `queue_full`, `kafka` or `timeout`; else `none`.
    pub reason: &'static str,
    /// The record's node id, when it has one (for the log line).
    pub node_id: Option<&'a str>,
}

impl InternalEvent for RecordAnswered<'_> {
    fn emit(self) {
        if self.outcome != "accepted" {
            // Debug: a flood of refusals is counted, not logged line by line.
            tracing::debug!(
                outcome = self.outcome,
                reason = self.reason,
                node_id = self.node_id.unwrap_or("-"),
                "record refused"
            );
        }
        RECORDS.get([self.outcome, self.reason]).increment(1);
    }
}

/// A whole request refused before its records were looked at.
pub(crate) struct RequestRefused {
    /// `too_large`, `too_many_records`, `body_timeout`, `empty` or
    /// `read_error`.
    pub reason: &'static str,
}

impl InternalEvent for RequestRefused {
    fn emit(self) {
        tracing::debug!(reason = self.reason, "request refused");
        REFUSED.get([self.reason]).increment(1);
    }
}

/// Kafka did not take a request's records: answered 503.
pub(crate) struct KafkaUnavailable<'a> {
    /// Records of the request answered 503.
    pub records: usize,
    /// What the producer said.
    pub detail: &'a str,
}

impl InternalEvent for KafkaUnavailable<'_> {
    fn emit(self) {
        tracing::warn!(
            records = self.records,
            detail = self.detail,
            "Kafka did not take the records; answered 503"
        );
        metrics::counter!("weir_ingest_unavailable_total").increment(1);
    }
}

/// The gateway's readiness changed.
pub(crate) struct Readiness {
    /// Whether Kafka has answered.
    pub ready: bool,
}

impl InternalEvent for Readiness {
    fn emit(self) {
        if self.ready {
            tracing::info!("Kafka answered; ready");
        }
        metrics::gauge!("weir_ingest_ready").set(if self.ready { 1.0 } else { 0.0 });
    }
}

/// Node ids the per-node limiter tracks, after a prune.
pub(crate) struct LimiterPruned {
    pub nodes: usize,
}

impl InternalEvent for LimiterPruned {
    fn emit(self) {
        metrics::gauge!("weir_ingest_limited_nodes").set(self.nodes as f64);
    }
}
