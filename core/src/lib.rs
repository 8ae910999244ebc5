//! What every Weir role shares and no single role owns: handles to the
//! stores (PostgreSQL, Redis), the Kafka client settings, the HTTP error type
//! every server answers with, the hardened listener of public servers
//! (`listener`), and the process's shutdown signal.
//!
//! Nothing here knows about events or aggregations; the contracts between
//! processes (event types, topic names, Redis key layout) live in
//! `weir-schemas`, and each role's logic in its own crate.
#![warn(missing_docs)]

pub mod config;
pub mod http;
pub mod kafka;
pub mod listener;
pub mod shutdown;
pub mod stores;
pub mod telemetry;

pub use config::{ConfigError, Validate};
pub use http::ApiError;
pub use kafka::KafkaConfig;
pub use shutdown::shutdown_on_signals;
pub use stores::{DatabaseConfig, RedisConfig, RedisHandle};
pub use telemetry::{CounterCache, InternalEvent, InternalEventHandle, RegisterInternalEvent};
