//! `weir agent`: samples the host every interval and produces `HealthEvent`s.
//!
//! The agent is meant to run on every edge node, so it is frugal: it refreshes
//! only the figures it reports (CPU, memory, network counters), reuses one
//! `sysinfo` state between samples, and never blocks its tick on Kafka — a
//! record is queued and its delivery report is collected by a separate task.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_core::config::{ConfigError, Validate};
use weir_core::InternalEvent;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sysinfo::{MemoryRefreshKind, Networks, System};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weir_schemas::{Event, HealthEvent, InterfaceStats, IpAddresses, LoadAverage};

use crate::producer::{EventProducer, PendingDelivery, ProduceError};

/// Settings of `weir agent`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Time between two samples.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Node identity; empty means the host name.
    pub node_id: String,
    /// Service the node runs.
    pub service: String,
    /// Public endpoint of the node; empty means `http://<node_id>`.
    pub endpoint: String,
    /// CDN role of the node.
    pub cdn_type: String,
    /// Public addresses to report (an agent behind NAT cannot discover them).
    pub wan_ips: Vec<String>,
    /// Stop after this many reports (0 = run until stopped); for tests and
    /// benchmarks.
    pub max_reports: u64,
    /// Base URL of a `weir ingest` gateway (`http://host:8095`); empty
    /// means Kafka directly. For hosts that cannot reach Kafka.
    pub via: String,
    /// Reports held while the gateway does not take them (503, 429, no
    /// answer); past it the oldest is dropped and counted as failed.
    pub backlog: usize,
    /// Bound on one request to the gateway, its acknowledgement included;
    /// longer than the gateway's `ingest.ack_timeout`, so its 503 arrives.
    #[serde(with = "humantime_serde")]
    pub http_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            interval: Duration::from_secs(1),
            node_id: String::new(),
            service: "edge".into(),
            endpoint: String::new(),
            cdn_type: "edge".into(),
            wan_ips: Vec::new(),
            max_reports: 0,
            via: String::new(),
            backlog: 10_000,
            http_timeout: Duration::from_secs(15),
        }
    }
}

impl Validate for AgentConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let i = self.interval;
        if i < Duration::from_millis(10) || i > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "agent.interval",
                format!(
                    "{} is outside 10ms..=1h",
                    humantime_serde::re::humantime::format_duration(i)
                ),
            ));
        }
        for (key, v) in [
            ("agent.node_id", &self.node_id),
            ("agent.service", &self.service),
            ("agent.endpoint", &self.endpoint),
            ("agent.cdn_type", &self.cdn_type),
        ] {
            if v.len() > 255 || v.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    key,
                    "must be at most 255 bytes, without control characters",
                ));
            }
        }
        if !self.via.is_empty() {
            let ok = reqwest::Url::parse(&self.via)
                .is_ok_and(|u| u.scheme() == "http" && u.host().is_some());
            if !ok {
                return Err(ConfigError::new(
                    "agent.via",
                    format!(
                        "{:?} is not an http:// URL of a weir ingest gateway (https is not built in: \
                         put a TLS proxy on the agent's host)",
                        self.via
                    ),
                ));
            }
        }
        if !(1..=1_000_000).contains(&self.backlog) {
            return Err(ConfigError::new(
                "agent.backlog",
                "must be between 1 and 1000000",
            ));
        }
        if self.http_timeout < Duration::from_millis(100)
            || self.http_timeout > Duration::from_secs(600)
        {
            return Err(ConfigError::new(
                "agent.http_timeout",
                "must be between 100ms and 10m",
            ));
        }
        Ok(())
    }
}

impl AgentConfig {
    /// The node id in force: configured, else the host name.
    pub fn resolved_node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        System::host_name()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown-host".into())
    }
}

/// Host sampler: keeps `sysinfo` state between samples so that CPU usage and
/// network rates are measured over the interval, not since boot.
pub struct Sampler {
    sys: System,
    networks: Networks,
    last: Instant,
    agent_id: String,
    node_id: String,
    cfg: AgentConfig,
    seq: u64,
}

impl Sampler {
    /// Takes the first reading so that the first event already has rates.
    pub fn new(cfg: &AgentConfig) -> Self {
        let mut sys = System::new();
        sys.refresh_cpu_usage();
        sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let networks = Networks::new_with_refreshed_list();
        Sampler {
            sys,
            networks,
            last: Instant::now(),
            agent_id: uuid::Uuid::new_v4().to_string(),
            node_id: cfg.resolved_node_id(),
            cfg: cfg.clone(),
            seq: 0,
        }
    }

    /// Identifier of this agent run.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The node id reported.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Samples the host and returns the next event.
    pub fn sample(&mut self) -> HealthEvent {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64().max(1e-3);
        self.last = now;
        self.sys.refresh_cpu_usage();
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        self.networks.refresh(true);

        let mut interfaces = Vec::new();
        let mut ips = IpAddresses {
            wan: self.cfg.wan_ips.clone(),
            ..IpAddresses::default()
        };
        for (name, data) in self.networks.iter() {
            let mut loopback = name == "lo";
            for net in data.ip_networks() {
                let addr = net.addr;
                if addr.is_loopback() {
                    loopback = true;
                    continue;
                }
                let text = addr.to_string();
                if is_lan(&addr) {
                    push_unique(&mut ips.lan, &text);
                } else if is_global(&addr) {
                    push_unique(&mut ips.wan, &text);
                }
                push_unique(&mut ips.device, &text);
            }
            if loopback {
                continue;
            }
            interfaces.push(InterfaceStats {
                name: name.clone(),
                rx_bytes_per_sec: (data.received() as f64 / elapsed).round() as u64,
                tx_bytes_per_sec: (data.transmitted() as f64 / elapsed).round() as u64,
                link_speed_mbps: link_speed_mbps(name),
            });
        }
        interfaces.sort_by(|a, b| a.name.cmp(&b.name));

        let load = System::load_average();
        let mib = 1024 * 1024;
        let total = self.sys.total_memory() / mib;
        let free = (self.sys.available_memory() / mib).min(total);
        self.seq += 1;
        let endpoint = if self.cfg.endpoint.is_empty() {
            format!("http://{}", self.node_id)
        } else {
            self.cfg.endpoint.clone()
        };
        HealthEvent {
            schema_version: HealthEvent::SCHEMA_VERSION,
            node_id: self.node_id.clone(),
            agent_id: self.agent_id.clone(),
            seq: self.seq,
            ts: Utc::now(),
            interval_ms: self.cfg.interval.as_millis().clamp(1, 3_600_000) as u64,
            service: self.cfg.service.clone(),
            endpoint,
            cdn_type: self.cfg.cdn_type.clone(),
            cores: self.sys.cpus().len() as u32,
            memory_total_mb: total,
            memory_free_mb: free,
            load_avg: LoadAverage {
                one: sane(load.one),
                five: sane(load.five),
                fifteen: sane(load.fifteen),
            },
            cpu_usage_pct: sane(f64::from(self.sys.global_cpu_usage())).min(100.0) as f32,
            interfaces,
            ips,
            uptime_secs: System::uptime(),
        }
    }
}

fn sane(v: f64) -> f64 {
    if v.is_finite() && v >= 0.0 {
        v
    } else {
        0.0
    }
}

fn push_unique(list: &mut Vec<String>, v: &str) {
    if !list.iter().any(|x| x == v) {
        list.push(v.to_string());
    }
}

fn is_lan(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            a.is_private()
                || a.is_link_local()
                || a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(a) => {
            (a.segments()[0] & 0xfe00) == 0xfc00 || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn is_global(addr: &IpAddr) -> bool {
    !addr.is_loopback() && !addr.is_unspecified() && !addr.is_multicast() && !is_lan(addr)
}

/// Link speed from sysfs; virtual interfaces answer -1 or an error.
fn link_speed_mbps(iface: &str) -> Option<u64> {
    if iface.contains('/') || iface.contains("..") {
        return None;
    }
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/speed")).ok()?;
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|s| *s > 0)
        .map(|s| s as u64)
}

/// How an agent run ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentReport {
    /// Node id reported.
    pub node_id: String,
    /// Agent run id.
    pub agent_id: String,
    /// Reports sampled and queued.
    pub queued: u64,
    /// Reports Kafka acknowledged.
    pub delivered: u64,
    /// Reports that failed (queue full or delivery error; through a
    /// gateway: refused as invalid, dropped from a full backlog, or still
    /// held at the drain deadline).
    pub failed: u64,
    /// Reports sent again after the gateway answered 429 or 503 or did not
    /// answer (0 when reporting to Kafka, whose producer retries inside).
    pub resent: u64,
}

/// The agent's clock: a tick every interval (missed ticks skipped, so a
/// stalled host does not burst), until shutdown or `max_reports`.
pub(crate) struct Schedule {
    ticker: tokio::time::Interval,
    shutdown: CancellationToken,
    max: u64,
    ticks: u64,
}

impl Schedule {
    /// Starts the clock; the first report comes one interval from now, so
    /// that its rates cover a real interval (the sampler already holds a
    /// first reading).
    pub(crate) async fn start(cfg: &AgentConfig, shutdown: CancellationToken) -> Self {
        let mut ticker = tokio::time::interval(cfg.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticker.tick().await;
        Schedule {
            ticker,
            shutdown,
            max: cfg.max_reports,
            ticks: 0,
        }
    }

    /// Waits for the next report's time; `false` when the agent should stop.
    pub(crate) async fn next(&mut self) -> bool {
        if self.max > 0 && self.ticks >= self.max {
            return false;
        }
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => false,
            _ = self.ticker.tick() => {
                self.ticks += 1;
                true
            }
        }
    }
}

/// Runs the agent until `shutdown` fires (or `max_reports` is reached), then
/// flushes the producer within `drain` and reports what was delivered.
pub async fn run_agent(
    cfg: AgentConfig,
    topic: String,
    producer: Arc<EventProducer>,
    shutdown: CancellationToken,
    drain: Duration,
) -> AgentReport {
    let mut sampler = Sampler::new(&cfg);
    let mut report = AgentReport {
        node_id: sampler.node_id.clone(),
        agent_id: sampler.agent_id.clone(),
        ..AgentReport::default()
    };
    info!(node_id = %report.node_id, agent_id = %report.agent_id, %topic,
          interval = ?cfg.interval, "agent started");

    // Delivery reports are awaited off the tick path, through a bounded
    // channel: if Kafka stalls for longer than the channel holds, the tick
    // waits instead of letting memory grow.
    let (tx, mut rx) = mpsc::channel::<PendingDelivery>(4096);
    let collector = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, 0u64);
        while let Some(d) = rx.recv().await {
            match d.await {
                Ok(_) => ok += 1,
                Err(e) => {
                    failed += 1;
                    warn!(error = %e, "health report not delivered");
                }
            }
        }
        (ok, failed)
    });

    let mut schedule = Schedule::start(&cfg, shutdown).await;
    while schedule.next().await {
        let event = sampler.sample();
        debug!(seq = event.seq, "sampled");
        match producer.enqueue(&topic, &event) {
            Ok(pending) => {
                report.queued += 1;
                crate::events::ReportQueued.emit();
                if tx.send(pending).await.is_err() {
                    break;
                }
            }
            Err(ProduceError::QueueFull) => {
                report.failed += 1;
                warn!(seq = event.seq, "producer queue full; report dropped");
            }
            Err(e) => {
                report.failed += 1;
                warn!(seq = event.seq, error = %e, "report not queued");
            }
        }
    }
    drop(tx);
    let flush_producer = producer.clone();
    let _ = tokio::task::spawn_blocking(move || flush_producer.flush(drain)).await;
    match tokio::time::timeout(drain, collector).await {
        Ok(Ok((ok, failed))) => {
            report.delivered = ok;
            report.failed += failed;
        }
        _ => warn!("delivery reports still pending at the drain deadline"),
    }
    info!(
        queued = report.queued,
        delivered = report.delivered,
        failed = report.failed,
        "agent stopped"
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_schemas::encode;

    #[test]
    fn samples_are_valid_and_sequenced() {
        let cfg = AgentConfig {
            node_id: "test-node".into(),
            wan_ips: vec!["203.0.113.9".into()],
            ..AgentConfig::default()
        };
        let mut s = Sampler::new(&cfg);
        let a = s.sample();
        let b = s.sample();
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(a.agent_id, b.agent_id);
        assert_eq!(a.node_id, "test-node");
        assert!(a.cores >= 1);
        assert!(a.memory_total_mb > 0 && a.memory_free_mb <= a.memory_total_mb);
        assert!(a.ips.wan.contains(&"203.0.113.9".to_string()));
        assert!(a.interfaces.iter().all(|i| i.name != "lo"));
        encode(&a).expect("a sample is a valid event");
    }

    #[test]
    fn classifies_addresses() {
        let lan: IpAddr = "192.168.1.4".parse().expect("ip");
        let cgnat: IpAddr = "100.64.3.1".parse().expect("ip");
        let public: IpAddr = "203.0.113.9".parse().expect("ip");
        let ula: IpAddr = "fd00::1".parse().expect("ip");
        assert!(is_lan(&lan) && is_lan(&cgnat) && is_lan(&ula));
        assert!(is_global(&public) && !is_lan(&public));
    }
}
