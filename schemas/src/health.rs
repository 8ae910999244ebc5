//! `HealthEvent`: what a host agent reports about its node every interval.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::{
    check_id, check_max, check_range, check_text, Event, Priority, MAX_ID_BYTES, MAX_SEQ,
    MAX_TEXT_BYTES,
};

/// A node's live-state key lives this many reporting intervals: one or two
/// lost reports do not mark a node down, three do. The health group writes
/// the expiry and every reader of the fleet state (center, balancer) judges
/// "down" by it.
pub const EXPIRY_INTERVALS: i64 = 3;

/// One sample of a node's health, produced by `weir agent` every interval and
/// keyed by `node_id`.
///
/// `agent_id` + `seq` identify a report uniquely: `seq` starts at 1 each time
/// an agent starts and grows by one per report, so a consumer (or a test) can
/// count loss and duplication end to end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthEvent {
    /// Schema version of this event (currently 1).
    pub schema_version: u32,
    /// Stable identifier of the node (defaults to the host name).
    pub node_id: String,
    /// Identifier of this agent run; a restart gets a new one.
    pub agent_id: String,
    /// Per-agent-run sequence number, starting at 1.
    pub seq: u64,
    /// When the sample was taken.
    pub ts: DateTime<Utc>,
    /// The agent's reporting interval; consumers derive expiry and uptime
    /// coverage from it instead of assuming one.
    pub interval_ms: u64,
    /// Service the node runs (e.g. `edge`).
    pub service: String,
    /// Public endpoint clients use to reach the node (URL or host:port).
    pub endpoint: String,
    /// CDN role of the node (e.g. `edge`, `mid`, `origin-shield`).
    pub cdn_type: String,
    /// Logical CPU count.
    pub cores: u32,
    /// Total memory in MiB.
    pub memory_total_mb: u64,
    /// Available memory in MiB.
    pub memory_free_mb: u64,
    /// Load averages over 1, 5 and 15 minutes.
    #[serde(deserialize_with = "crate::codec::object")]
    pub load_avg: LoadAverage,
    /// Whole-host CPU usage in percent (0–100).
    pub cpu_usage_pct: f32,
    /// Per-interface throughput since the previous sample.
    #[serde(deserialize_with = "crate::codec::objects")]
    pub interfaces: Vec<InterfaceStats>,
    /// Addresses of the node.
    #[serde(deserialize_with = "crate::codec::object")]
    pub ips: IpAddresses,
    /// Host uptime in seconds.
    pub uptime_secs: u64,
}

/// Load averages as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadAverage {
    /// Over one minute.
    pub one: f64,
    /// Over five minutes.
    pub five: f64,
    /// Over fifteen minutes.
    pub fifteen: f64,
}

/// Throughput of one network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterfaceStats {
    /// Interface name (`eth0`).
    pub name: String,
    /// Received bytes per second over the last interval.
    pub rx_bytes_per_sec: u64,
    /// Transmitted bytes per second over the last interval.
    pub tx_bytes_per_sec: u64,
    /// Link speed in Mbit/s where the kernel knows it (absent for virtual links).
    #[serde(default)]
    pub link_speed_mbps: Option<u64>,
}

/// Addresses of a node, by reach.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpAddresses {
    /// Private (RFC 1918 / ULA) addresses.
    pub lan: Vec<String>,
    /// Public addresses (configured; an agent cannot see NAT from inside).
    pub wan: Vec<String>,
    /// Every address bound on the device, loopback excluded.
    pub device: Vec<String>,
}

impl Event for HealthEvent {
    const SCHEMA_VERSION: u32 = 1;
    const KIND: &'static str = "health";
    const PRIORITY: Priority = Priority::Critical;

    fn key(&self) -> Option<&str> {
        Some(&self.node_id)
    }

    fn schema_version(&self) -> u32 {
        self.schema_version
    }

    fn validate(&self) -> Result<(), String> {
        check_id("node_id", &self.node_id)?;
        check_id("agent_id", &self.agent_id)?;
        if self.seq == 0 {
            return Err("seq starts at 1".into());
        }
        check_max("seq", self.seq, MAX_SEQ)?;
        check_text("service", &self.service, MAX_ID_BYTES)?;
        check_text("endpoint", &self.endpoint, MAX_TEXT_BYTES)?;
        check_text("cdn_type", &self.cdn_type, MAX_ID_BYTES)?;
        if self.interval_ms == 0 || self.interval_ms > 3_600_000 {
            return Err(format!(
                "interval_ms = {} is outside 1..=3600000",
                self.interval_ms
            ));
        }
        if self.memory_free_mb > self.memory_total_mb {
            return Err(format!(
                "memory_free_mb ({}) exceeds memory_total_mb ({})",
                self.memory_free_mb, self.memory_total_mb
            ));
        }
        check_range("cpu_usage_pct", f64::from(self.cpu_usage_pct), 0.0, 100.0)?;
        for (name, v) in [
            ("load_avg.one", self.load_avg.one),
            ("load_avg.five", self.load_avg.five),
            ("load_avg.fifteen", self.load_avg.fifteen),
        ] {
            check_range(name, v, 0.0, 1.0e6)?;
        }
        if self.interfaces.len() > 1024 {
            return Err("more than 1024 interfaces".into());
        }
        for i in &self.interfaces {
            check_text("interfaces.name", &i.name, MAX_ID_BYTES)?;
        }
        for (field, list) in [
            ("ips.lan", &self.ips.lan),
            ("ips.wan", &self.ips.wan),
            ("ips.device", &self.ips.device),
        ] {
            if list.len() > 1024 {
                return Err(format!("{field} has more than 1024 addresses"));
            }
            for ip in list {
                check_text(field, ip, MAX_ID_BYTES)?;
            }
        }
        Ok(())
    }
}

impl HealthEvent {
    /// A complete, valid event for tests, examples and benchmarks.
    pub fn example(node_id: &str, seq: u64, ts: DateTime<Utc>) -> Self {
        HealthEvent {
            schema_version: Self::SCHEMA_VERSION,
            node_id: node_id.to_string(),
            agent_id: "00000000-0000-4000-8000-000000000000".into(),
            seq,
            ts,
            interval_ms: 1000,
            service: "edge".into(),
            endpoint: format!("http://{node_id}:8080"),
            cdn_type: "edge".into(),
            cores: 8,
            memory_total_mb: 16_000,
            memory_free_mb: 9_000,
            load_avg: LoadAverage {
                one: 0.5,
                five: 0.4,
                fifteen: 0.3,
            },
            cpu_usage_pct: 12.5,
            interfaces: vec![InterfaceStats {
                name: "eth0".into(),
                rx_bytes_per_sec: 125_000,
                tx_bytes_per_sec: 2_500_000,
                link_speed_mbps: Some(10_000),
            }],
            ips: IpAddresses {
                lan: vec!["10.0.0.7".into()],
                wan: vec!["203.0.113.7".into()],
                device: vec!["10.0.0.7".into()],
            },
            uptime_secs: 86_400,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode, DecodeError};

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn round_trips() {
        let ev = HealthEvent::example("n1", 1, now());
        let bytes = encode(&ev).expect("valid example encodes");
        let back: HealthEvent = decode(Some(&bytes)).expect("decodes");
        assert_eq!(ev, back);
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let mut v = serde_json::to_value(HealthEvent::example("n1", 1, now())).expect("json");
        v["gpu_temp_c"] = serde_json::json!(71);
        let bytes = serde_json::to_vec(&v).expect("bytes");
        let ev: HealthEvent = decode(Some(&bytes)).expect("future field ignored");
        assert_eq!(ev.node_id, "n1");
    }

    #[test]
    fn rejections_carry_their_reason() {
        let good = serde_json::to_value(HealthEvent::example("n1", 1, now())).expect("json");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not_json"),
            (b"{\"node_id\": ".to_vec(), "not_json"),
            (
                {
                    let mut v = good.clone();
                    v["cores"] = serde_json::json!("eight");
                    serde_json::to_vec(&v).expect("bytes")
                },
                "schema",
            ),
            (
                {
                    let mut v = good.clone();
                    v.as_object_mut().expect("object").remove("node_id");
                    serde_json::to_vec(&v).expect("bytes")
                },
                "schema",
            ),
            (
                {
                    let mut v = good.clone();
                    v["node_id"] = serde_json::json!("");
                    serde_json::to_vec(&v).expect("bytes")
                },
                "invalid",
            ),
            (
                {
                    let mut v = good.clone();
                    v["schema_version"] = serde_json::json!(2);
                    serde_json::to_vec(&v).expect("bytes")
                },
                "unsupported_version",
            ),
            (vec![b'x'; 1_000_000], "too_large"),
            (Vec::new(), "empty"),
        ];
        for (bytes, reason) in cases {
            let err = decode::<HealthEvent>(Some(&bytes)).expect_err("must be rejected");
            assert_eq!(err.reason(), reason, "{err}");
        }
        assert!(matches!(
            decode::<HealthEvent>(None),
            Err(DecodeError::Empty)
        ));
    }

    #[test]
    fn producers_refuse_invalid_events() {
        let mut ev = HealthEvent::example("n1", 1, now());
        ev.memory_free_mb = ev.memory_total_mb + 1;
        assert!(encode(&ev).is_err());
        ev = HealthEvent::example("n 1", 1, now());
        assert!(encode(&ev).is_err());
    }
}
