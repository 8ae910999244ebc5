//! Settings of a consumer group member (`[consumer]`) and their checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_core::{ConfigError, Validate};

/// Largest `consumer.dlq_max_payload`: a dead letter, with its headers,
/// must fit Kafka's default message limit (`message.max.bytes`, 1 048 588).
pub const DLQ_PAYLOAD_LIMIT: usize = 1_000_000;

/// Settings of a consumer group member.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// Group id; empty means `weir-<role>` (e.g. `weir-health`).
    pub group: String,
    /// Largest batch, in records.
    pub batch_max_records: usize,
    /// Largest batch, in bytes of keys and payloads received: bounds a
    /// member's memory when records are large (5 000 records of 1 MiB would
    /// otherwise make a 5 GiB batch, twice with pipelining). A single larger
    /// record still makes a batch of its own.
    pub batch_max_bytes: usize,
    /// Most bytes (compressed, as stored) one fetch asks for per partition
    /// (librdkafka's `max.partition.fetch.bytes`, whose 1 MiB default made a
    /// member catching up on a backlog hold several decompressed fetch
    /// responses of 4–5 MiB per partition at once: 104–130 MiB RSS). A larger
    /// record is still fetched whole.
    pub fetch_partition_max_bytes: usize,
    /// Most bytes (compressed) one fetch asks for over all partitions of
    /// the topic: each partition gets this divided by the topic's partition
    /// count, at most `fetch_partition_max_bytes` and at least 16 KiB. A
    /// member holds roughly its fetched buffers per partition it owns, so a
    /// fixed per-partition size made its memory grow with the partition
    /// count (a health member catching up: 90 MiB on 6 partitions, 166 MiB
    /// on 12; docs/benchmarks.md).
    pub fetch_total_max_bytes: usize,
    /// Longest a batch waits to fill once its first record arrived: bounds
    /// latency at low traffic.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// Kafka session timeout: how long a silent member keeps its partitions.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Longest pause between two retries of a batch while a store is down.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// Deadline to finish the current batch on shutdown.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Largest payload copied into a dead letter; larger ones are truncated
    /// (with the original size in a header) so that the dead-letter topic
    /// can always take them.
    pub dlq_max_payload: usize,
    /// Kafka's group protocol for Weir's own groups: `classic` (default) or
    /// `consumer`, the protocol of KIP-848, where the broker assigns
    /// partitions and a rebalance no longer pauses the whole group.
    /// `classic` stays the default because it works with every broker Weir
    /// supports (3.x included; `consumer` needs Kafka 4.0+) and with Kafka's
    /// own tools of those versions; with `consumer`, the broker's
    /// `group.consumer.session.timeout.ms` replaces `consumer.session_timeout`.
    /// The exactly-once fence does not depend on it (docs/delivery.md).
    pub group_protocol: String,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: String::new(),
            batch_max_records: 5000,
            batch_max_bytes: 16 * 1024 * 1024,
            fetch_partition_max_bytes: 256 * 1024,
            fetch_total_max_bytes: 1024 * 1024,
            batch_max_wait: Duration::from_millis(200),
            session_timeout: Duration::from_secs(10),
            retry_backoff_max: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(15),
            dlq_max_payload: 256 * 1024,
            group_protocol: "classic".into(),
        }
    }
}

impl ConsumerConfig {
    /// The group id in force for a role.
    pub fn group_for(&self, role: &str) -> String {
        if self.group.is_empty() {
            format!("weir-{role}")
        } else {
            self.group.clone()
        }
    }
}

impl ConsumerConfig {
    /// `max.partition.fetch.bytes` for a topic of `partitions` partitions:
    /// the total budget shared out, within [16 KiB, the per-partition cap].
    pub fn fetch_bytes_per_partition(&self, partitions: usize) -> usize {
        (self.fetch_total_max_bytes / partitions.max(1))
            .clamp(16 * 1024, self.fetch_partition_max_bytes.max(16 * 1024))
    }
}

impl Validate for ConsumerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.group_protocol.as_str(), "classic" | "consumer") {
            return Err(ConfigError::new(
                "consumer.group_protocol",
                format!("{:?} is not classic or consumer", self.group_protocol),
            ));
        }
        if !(1..=1_000_000).contains(&self.batch_max_records) {
            return Err(ConfigError::new(
                "consumer.batch_max_records",
                "must be between 1 and 1000000",
            ));
        }
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&self.batch_max_bytes) {
            return Err(ConfigError::new(
                "consumer.batch_max_bytes",
                "must be between 64 KiB (65536) and 1 GiB (1073741824)",
            ));
        }
        if !(16 * 1024..=64 * 1024 * 1024).contains(&self.fetch_partition_max_bytes) {
            return Err(ConfigError::new(
                "consumer.fetch_partition_max_bytes",
                "must be between 16 KiB (16384) and 64 MiB (67108864)",
            ));
        }
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&self.fetch_total_max_bytes) {
            return Err(ConfigError::new(
                "consumer.fetch_total_max_bytes",
                "must be between 64 KiB (65536) and 1 GiB (1073741824)",
            ));
        }
        if self.batch_max_wait > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "consumer.batch_max_wait",
                "must be at most 60s",
            ));
        }
        let st = self.session_timeout;
        if st < Duration::from_secs(1) || st > Duration::from_secs(300) {
            return Err(ConfigError::new(
                "consumer.session_timeout",
                "must be between 1s and 5m",
            ));
        }
        weir_core::config::nonzero_duration("consumer.retry_backoff_max", self.retry_backoff_max)?;
        weir_core::config::nonzero_duration("consumer.drain_timeout", self.drain_timeout)?;
        if !(1..=DLQ_PAYLOAD_LIMIT).contains(&self.dlq_max_payload) {
            return Err(ConfigError::new(
                "consumer.dlq_max_payload",
                format!("must be between 1 and {DLQ_PAYLOAD_LIMIT} bytes (a dead letter, headers included, must fit Kafka's default message limit of 1048588 bytes)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fetch_budget_is_shared_by_the_partitions() {
        let c = ConsumerConfig::default();
        assert_eq!(
            c.fetch_bytes_per_partition(1),
            256 * 1024,
            "capped per partition"
        );
        assert_eq!(c.fetch_bytes_per_partition(4), 256 * 1024);
        assert_eq!(c.fetch_bytes_per_partition(6), 1024 * 1024 / 6);
        assert_eq!(c.fetch_bytes_per_partition(12), 1024 * 1024 / 12);
        assert_eq!(c.fetch_bytes_per_partition(10_000), 16 * 1024, "floor");
        assert_eq!(
            c.fetch_bytes_per_partition(0),
            256 * 1024,
            "no partitions known"
        );
        for n in 1..200 {
            let b = c.fetch_bytes_per_partition(n);
            assert!((16 * 1024..=256 * 1024).contains(&b));
            assert!(b * n <= 1024 * 1024 || b == 16 * 1024, "{n}: {b}");
        }
    }

    #[test]
    fn defaults_are_valid_and_each_bound_names_its_key() {
        assert_eq!(ConsumerConfig::default().validate(), Ok(()));
        let cases: [(&str, ConsumerConfig); 10] = [
            (
                "consumer.fetch_total_max_bytes",
                ConsumerConfig {
                    fetch_total_max_bytes: 64 * 1024 - 1,
                    ..ConsumerConfig::default()
                },
            ),
            (
                "consumer.fetch_total_max_bytes",
                ConsumerConfig {
                    fetch_total_max_bytes: 1024 * 1024 * 1024 + 1,
                    ..ConsumerConfig::default()
                },
            ),
            (
                "consumer.fetch_partition_max_bytes",
                ConsumerConfig {
                    fetch_partition_max_bytes: 16 * 1024 - 1,
                    ..ConsumerConfig::default()
                },
            ),
            (
                "consumer.fetch_partition_max_bytes",
                ConsumerConfig {
                    fetch_partition_max_bytes: 64 * 1024 * 1024 + 1,
                    ..ConsumerConfig::default()
                },
            ),
            (
                "consumer.batch_max_bytes",
                ConsumerConfig {
                    batch_max_bytes: 1000,
                    ..ConsumerConfig::default()
                },
            ),
            (
                "consumer.retry_backoff_max",
                ConsumerConfig {
                    retry_backoff_max: Duration::ZERO,
                    ..ConsumerConfig::default()
                },
            ),
            (
                "consumer.dlq_max_payload",
                ConsumerConfig {
                    dlq_max_payload: 0,
                    ..ConsumerConfig::default()
                },
            ),
            (
                "consumer.batch_max_records",
                ConsumerConfig {
                    batch_max_records: 0,
                    ..ConsumerConfig::default()
                },
            ),
            (
                "consumer.batch_max_wait",
                ConsumerConfig {
                    batch_max_wait: Duration::from_secs(61),
                    ..ConsumerConfig::default()
                },
            ),
            (
                "consumer.session_timeout",
                ConsumerConfig {
                    session_timeout: Duration::from_millis(999),
                    ..ConsumerConfig::default()
                },
            ),
        ];
        for (key, cfg) in cases {
            assert_eq!(cfg.validate().map_err(|e| e.key), Err(key.to_string()));
        }
    }
}
