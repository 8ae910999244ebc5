//! The gateway's settings (`[ingest]`), their defaults, and the checks they
//! must pass at start, kept next to the fields they check.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_core::config::parse_addr;
use weir_core::listener::ConnLimits;
use weir_core::{ConfigError, Validate};

/// Default listen address: loopback, because agents do not authenticate yet.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8095";

/// Settings of `weir ingest` (`[ingest]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Listen address (`WEIR_INGEST_ADDR`).
    pub addr: String,
    /// Agents present no token yet (there is no agent scope to check), so
    /// anyone who reaches the port can report for any node id. A
    /// non-loopback `addr` is refused unless this is set, to say that the
    /// network in front of the gateway is trusted (a private network, a
    /// firewall, a router that authenticates).
    pub allow_unauthenticated_remote: bool,
    /// Largest request body; a larger one is refused with 413 before it is
    /// read whole.
    pub max_body_bytes: usize,
    /// Most records in one `application/x-ndjson` batch; a longer batch is
    /// refused whole with 413.
    pub max_batch_records: usize,
    /// How long a record may wait for Kafka's acknowledgement (acks=all).
    /// It is also the gateway producer's `message.timeout.ms`, so a record
    /// answered 503 has been given up by the producer too and will not
    /// appear in the topic later beside the agent's resend.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Time a client gets to send a whole request body once its headers
    /// are in; a slower one gets 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Sustained reports per second accepted per node id; above it records
    /// get 429 with `Retry-After`.
    pub per_node_rate: u32,
    /// Reports per node id accepted at once above the sustained rate (an
    /// agent resending what it held while Kafka was away).
    pub per_node_burst: u32,
    /// Connections served at once; further ones wait in the kernel's accept
    /// backlog.
    pub max_connections: usize,
    /// Time a client gets to send a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection without any progress this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A client that reads nothing of an answer this long is disconnected.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            addr: DEFAULT_ADDR.into(),
            allow_unauthenticated_remote: false,
            max_body_bytes: 4 * 1024 * 1024,
            max_batch_records: 1000,
            ack_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            per_node_rate: 10,
            per_node_burst: 100,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
        }
    }
}

impl IngestConfig {
    /// The listener's limits. Answers are small JSON documents: 16 KiB of
    /// buffer holds one (and any sane request head).
    pub fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            send_timeout: self.send_timeout,
            max_buf_size: 16 * 1024,
        }
    }
}

impl Validate for IngestConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let addr: SocketAddr = parse_addr("ingest.addr", &self.addr)?;
        if !addr.ip().is_loopback() && !self.allow_unauthenticated_remote {
            return Err(ConfigError::new(
                "ingest.addr",
                format!(
                    "{addr} is not a loopback address and agents do not authenticate yet: \
                     anyone who reaches it could report for any node; set \
                     ingest.allow_unauthenticated_remote = true (WEIR_INGEST_ALLOW_UNAUTHENTICATED_REMOTE) \
                     if the network in front of it is trusted"
                ),
            ));
        }
        // At least one event of the largest size must fit.
        let min_body = weir_schemas::MAX_EVENT_BYTES;
        if !(min_body..=256 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(ConfigError::new(
                "ingest.max_body_bytes",
                format!("must be between {min_body} (one event of the largest size) and 268435456"),
            ));
        }
        if !(1..=100_000).contains(&self.max_batch_records) {
            return Err(ConfigError::new(
                "ingest.max_batch_records",
                "must be between 1 and 100000",
            ));
        }
        for (key, d) in [
            ("ingest.ack_timeout", self.ack_timeout),
            ("ingest.body_timeout", self.body_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
                return Err(ConfigError::new(key, "must be between 100ms and 10m"));
            }
        }
        if self.per_node_rate == 0 {
            return Err(ConfigError::new(
                "ingest.per_node_rate",
                "must be at least 1",
            ));
        }
        if self.per_node_burst == 0 {
            return Err(ConfigError::new(
                "ingest.per_node_burst",
                "must be at least 1",
            ));
        }
        self.conn_limits().validate("ingest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = IngestConfig::default();
        c.validate().expect("defaults");
        assert!(parse_addr("x", &c.addr).expect("addr").ip().is_loopback());
    }

    #[test]
    fn a_public_address_needs_the_acknowledgement() {
        let mut c = IngestConfig {
            addr: "0.0.0.0:8095".into(),
            ..IngestConfig::default()
        };
        let e = c.validate().expect_err("refused").to_string();
        assert!(
            e.contains("ingest.addr") && e.contains("allow_unauthenticated_remote"),
            "{e}"
        );
        c.allow_unauthenticated_remote = true;
        c.validate().expect("acknowledged");
        c.addr = "[::1]:8095".into();
        c.allow_unauthenticated_remote = false;
        c.validate().expect("IPv6 loopback");
    }

    #[test]
    fn bounds_name_their_key() {
        for (c, key) in [
            (
                IngestConfig {
                    max_body_bytes: 10,
                    ..IngestConfig::default()
                },
                "ingest.max_body_bytes",
            ),
            (
                IngestConfig {
                    max_batch_records: 0,
                    ..IngestConfig::default()
                },
                "ingest.max_batch_records",
            ),
            (
                IngestConfig {
                    ack_timeout: Duration::ZERO,
                    ..IngestConfig::default()
                },
                "ingest.ack_timeout",
            ),
            (
                IngestConfig {
                    per_node_rate: 0,
                    ..IngestConfig::default()
                },
                "ingest.per_node_rate",
            ),
            (
                IngestConfig {
                    idle_timeout: Duration::from_millis(1),
                    ..IngestConfig::default()
                },
                "ingest.idle_timeout",
            ),
        ] {
            let e = c.validate().expect_err(key).to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
