//! `weir ingest`: the gateway for agents that cannot reach Kafka (behind a
//! firewall, without librdkafka, a shell script with `curl`). They POST
//! their health reports over HTTP; the gateway judges every record with the
//! very decoder the health group uses, produces the good ones to the health
//! topic keyed by node id, and answers once Kafka acknowledged them.
//!
//! Stateless: many gateways run side by side behind any router. What one
//! holds is bounded — the body (`ingest.max_body_bytes`), the records of a
//! batch (`ingest.max_batch_records`), the producer's queue (a full queue
//! answers 503, never grows), the connections and their timeouts (the
//! shared listener of `weir_core::listener`), and the per-node limiter's
//! table (pruned every 10 s).
//!
//! Modules: [`config`] (`[ingest]` and its checks), [`records`] (body →
//! records → judged), [`limits`] (per-node rate), [`server`] (the routes
//! and `serve`).
#![warn(missing_docs)]

pub mod config;
mod events;
pub mod limits;
pub mod records;
pub mod server;

pub use config::IngestConfig;
pub use server::{router, serve, Ingest};
