//! Default topic names and the header names of dead-letter records.
//!
//! Topic names carry the major schema version (`.v1`): a breaking change gets a
//! new topic, so old and new consumers can run side by side during a migration.

/// Health events, keyed by node id so that one node's events stay in order.
pub const HEALTH: &str = "weir.health.v1";
/// Access events, one per edge request.
pub const ACCESS: &str = "weir.access.v1";
/// Records that could not be decoded or validated, with the reason in headers.
pub const DLQ: &str = "weir.dlq.v1";

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
}
