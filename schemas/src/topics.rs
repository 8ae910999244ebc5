//! Default topic names and the header names of dead-letter records.
//!
//! Topic names carry the major schema version (`.v1`): a breaking change gets a
//! new topic, so old and new consumers can run side by side during a migration.

/// Health events, keyed by node id so that one node's events stay in order.
pub const HEALTH: &str = "weir.health.v1";
/// Access events, one per edge request.
pub const ACCESS: &str = "weir.access.v1";
/// Records that could not be decoded or validated, or that a store rejected
/// (poison records), with the reason in headers.
pub const DLQ: &str = "weir.dlq.v1";
/// Requests for the daily uptime report (scheduled or manual), keyed by
/// request id, consumed by `weir mail`.
pub const REPORT: &str = "weir.report.v1";

/// Headers set on every dead-letter record, so an operator can find the
/// original record and replay it once the cause is fixed.
pub mod dlq_headers {
    /// Short machine-readable reason (`not_json`, `invalid`, `too_large`, …).
    pub const REASON: &str = "weir.dlq.reason";
    /// Human-readable detail of the failure.
    pub const DETAIL: &str = "weir.dlq.detail";
    /// Topic the record was read from.
    pub const SOURCE_TOPIC: &str = "weir.dlq.source.topic";
    /// Partition the record was read from.
    pub const SOURCE_PARTITION: &str = "weir.dlq.source.partition";
    /// Offset of the record in its source partition.
    pub const SOURCE_OFFSET: &str = "weir.dlq.source.offset";
    /// Consumer group that rejected it.
    pub const GROUP: &str = "weir.dlq.group";
    /// When it was rejected (RFC 3339).
    pub const TIME: &str = "weir.dlq.time";
    /// With reason `store_rejected`: the store that refused the record
    /// (`postgres`, `redis`, or an aggregator's own).
    pub const STORE: &str = "weir.dlq.store";
    /// With reason `store_rejected` by PostgreSQL: its SQLSTATE (`22P05`).
    pub const SQLSTATE: &str = "weir.dlq.sqlstate";
    /// Payload size before truncation to `consumer.dlq_max_payload`, when
    /// it was truncated (such a record cannot be replayed).
    pub const ORIGINAL_SIZE: &str = "weir.dlq.payload.original_size";
}
