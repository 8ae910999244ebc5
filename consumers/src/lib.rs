//! Consuming side of Weir: the consumer-group runtime every aggregator runs
//! on, and the aggregators themselves.
//!
//! The runtime gives *exactly-once effect* in PostgreSQL: a batch's effects
//! and the batch's next offsets are committed in one transaction, and a member
//! that gains a partition seeks to the offsets stored there. Kafka's own
//! committed offsets are written afterwards, for the benefit of Kafka's tools
//! and lag monitors only.
#![warn(missing_docs)]

pub mod access;
pub mod health;
pub mod migrations;
pub mod runtime;

pub use access::AccessAggregator;
pub use health::HealthAggregator;
pub use runtime::{
    Aggregator, Applied, ConsumerConfig, FailureClass, GroupRuntime, GroupRuntimeBuilder, Record,
    RunReport, RuntimeError, StoreError,
};

/// Every schema migration of this crate (runtime, health, access); see
/// [`migrations`] to run one owner's alone.
pub static MIGRATOR: migrations::AllMigrations = migrations::AllMigrations;
