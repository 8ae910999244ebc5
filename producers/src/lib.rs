//! Producing side of Weir: the shared Kafka producer every role uses to emit
//! events, and the host agent (`weir agent`) that reports a node's health,
//! to Kafka or through a `weir ingest` gateway (`agent_http`).
//!
//! The producer validates each event before it leaves the process (an invalid
//! event is refused at its source rather than dead-lettered downstream) and
//! never blocks its caller on Kafka: `enqueue` hands the record to librdkafka's
//! bounded queue and returns a future for the delivery report.
#![warn(missing_docs)]

pub mod agent;
pub mod agent_http;
mod events;
pub use events::describe_metrics;
pub mod limiter;
pub mod producer;
pub mod signal;

pub use agent::{run_agent, AgentConfig, AgentReport, Sampler};
pub use agent_http::run_agent_via;
pub use limiter::{Decision, LagLimiter, LimiterConfig};
pub use producer::{Delivery, DeliveryHook, EventProducer, Offer, PendingDelivery, ProduceError};
pub use signal::{follow_signal, follow_signal_reporting};
pub use weir_core::KafkaConfig;
