//! Weir's cross-process contracts: the events that cross Kafka, their schema
//! versions, the default topic names, the codec every producer and consumer
//! shares, the Redis key layout and the lag signal.
//!
//! Everything that travels between processes is defined here once, so that a
//! producer and a consumer can never disagree about a field. The JSON Schema
//! files in `schemas/json/` describe the same types for non-Rust clients; a test
//! keeps the two in step.
#![warn(missing_docs)]

pub mod access;
pub mod codec;
pub mod health;
pub mod keys;
pub mod lag;
pub mod report;
pub mod topics;

pub use access::{AccessEvent, CacheOutcome};
pub use codec::{
    decode, encode, DecodeError, Event, Priority, MAX_BYTE_COUNT, MAX_EVENT_BYTES, MAX_ID_BYTES,
    MAX_LATENCY_US, MAX_OBJECT_KEY_BYTES, MAX_SEQ, MAX_TEXT_BYTES,
};
pub use health::{HealthEvent, InterfaceStats, IpAddresses, LoadAverage};
pub use keys::RedisKeys;
pub use lag::{LagSignal, LagStatus, LimiterState, TopicEnds, TopicOffsets};
pub use report::{ReportKind, ReportRequest};
