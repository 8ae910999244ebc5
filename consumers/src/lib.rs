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
pub mod runtime;

pub use access::AccessAggregator;
pub use health::HealthAggregator;
pub use runtime::{
    Aggregator, ConsumerConfig, GroupRuntime, Record, RunReport, RuntimeError, StoreError,
};

/// Schema migrations for the tables this crate owns.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
