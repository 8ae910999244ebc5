//! How every role reaches Kafka: bootstrap servers, client ids and the raw
//! librdkafka escape hatch, shared by producers, consumers and admin clients.

use crate::config::{nonzero_duration, ConfigError, Validate};
use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};

/// How to reach Kafka, shared by every role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Client id prefix reported to the broker (shows up in Kafka's tools).
    pub client_id: String,
    /// How long the producer keeps retrying a record before reporting it
    /// failed. Long by default: a broker restart must not lose events.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// How long the producer waits to fill a batch; a few milliseconds trade
    /// a little latency for far fewer requests.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Records librdkafka may hold in memory before `enqueue` refuses more
    /// (the backpressure point).
    pub queue_max_messages: u32,
    /// Raw librdkafka options, applied last (escape hatch: SASL, TLS, tuning).
    pub rdkafka: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:19092".into(),
            client_id: "weir".into(),
            message_timeout: Duration::from_secs(300),
            linger: Duration::from_millis(5),
            queue_max_messages: 100_000,
            rdkafka: BTreeMap::new(),
        }
    }
}

impl Validate for KafkaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::new(
                "kafka.brokers",
                "must list at least one host:port",
            ));
        }
        for b in self.brokers.split(',') {
            let b = b.trim();
            let ok = b
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(ConfigError::new(
                    "kafka.brokers",
                    format!("{b:?} is not host:port"),
                ));
            }
        }
        if self.client_id.is_empty() {
            return Err(ConfigError::new("kafka.client_id", "must not be empty"));
        }
        nonzero_duration("kafka.message_timeout", self.message_timeout)?;
        if self.queue_max_messages == 0 {
            return Err(ConfigError::new(
                "kafka.queue_max_messages",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl KafkaConfig {
    /// Base client settings common to producers, consumers and admin clients.
    pub fn client_config(&self, role: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("{}-{role}", self.client_id))
            .set("log_level", "4");
        c
    }

    /// Applies the raw `rdkafka` overrides last, so they win.
    pub fn apply_overrides(&self, c: &mut ClientConfig) {
        for (k, v) in &self.rdkafka {
            c.set(k, v);
        }
    }

    /// Producer settings: idempotent, acks from all in-sync replicas, so a
    /// retried batch is neither lost nor duplicated by the broker.
    pub fn producer_config(&self, role: &str) -> ClientConfig {
        let mut c = self.client_config(role);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", self.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                self.queue_max_messages.to_string(),
            );
        self.apply_overrides(&mut c);
        c
    }
}
