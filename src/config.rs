//! The `weir` configuration: one typed section per role, loaded from
//! defaults, then a TOML file, then `WEIR_<SECTION>_<KEY>` environment
//! variables, then command-line flags, and validated before anything starts.
//!
//! Every error names the key (`agent.interval`, or the environment variable
//! that set it) so that a typo is fixed in one look.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use weir_center::CenterConfig;
use weir_consumers::ConsumerConfig;
use weir_core::{DatabaseConfig, RedisConfig};
use weir_edge::{EdgeConfig, S3Config};
use weir_lag::LagConfig;
use weir_producers::LimiterConfig;
use weir_producers::{AgentConfig, KafkaConfig};

pub use weir_core::config::{parse_addr, ConfigError};

/// Topic names and how `weir topics ensure` creates them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Health events topic.
    pub health: String,
    /// Access events topic.
    pub access: String,
    /// Dead-letter topic.
    pub dlq: String,
    /// Partitions of each topic when created.
    pub partitions: i32,
    /// Replication factor when created.
    pub replication: i32,
    /// Retention of the event topics.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Retention of the dead-letter topic (longer: someone has to look).
    #[serde(with = "humantime_serde")]
    pub dlq_retention: Duration,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            health: weir_schemas::topics::HEALTH.into(),
            access: weir_schemas::topics::ACCESS.into(),
            dlq: weir_schemas::topics::DLQ.into(),
            partitions: 6,
            replication: 1,
            retention: Duration::from_secs(7 * 86_400),
            dlq_retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Where `/metrics`, `/livez` and `/readyz` are served for non-HTTP roles.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address; empty disables the metrics server. When left at the
    /// default and the port is taken (several roles on one host), an
    /// ephemeral port is used and logged.
    pub addr: String,
}

/// Default metrics address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            addr: DEFAULT_METRICS_ADDR.into(),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `weir=debug,rdkafka=warn`); `RUST_LOG`
    /// wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `weir up`: every role in one process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpConfig {
    /// Health group members to run.
    pub consumers: usize,
}

impl Default for UpConfig {
    fn default() -> Self {
        UpConfig { consumers: 2 }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Topics.
    pub topics: TopicsConfig,
    /// Redis.
    pub redis: RedisConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// Health agent.
    pub agent: AgentConfig,
    /// Consumer group members.
    pub consumer: ConsumerConfig,
    /// Center API.
    pub center: CenterConfig,
    /// S3 origin of the edge.
    pub s3: S3Config,
    /// Object edge.
    pub edge: EdgeConfig,
    /// Metrics server.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
    /// All-in-one mode.
    pub up: UpConfig,
    /// Lag monitoring (`weir lag`).
    pub lag: LagConfig,
    /// Lag-aware limiting of sheddable events (the edge's access events).
    pub limiter: LimiterConfig,
}

/// Environment variables with the `WEIR_` prefix that are not configuration
/// (set by `deploy/local/env` for scripts and tests).
const NON_CONFIG_ENV: &[&str] = &[
    "WEIR_CONFIG",
    "WEIR_STACK_DIR",
    "WEIR_KAFKA_LIBS",
    "WEIR_DEPLOY_LOCAL",
    "WEIR_TEST_LOGS",
];

impl Config {
    /// Loads defaults ← file ← environment, then validates.
    pub fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut doc = serde_json::to_value(Config::default())
            .map_err(|e| ConfigError::new("<defaults>", e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| {
                let msg = e.message().to_string();
                ConfigError::new(path.display().to_string(), format!("invalid TOML: {msg}"))
            })?;
            let file_doc = serde_json::to_value(table)
                .map_err(|e| ConfigError::new("--config", e.to_string()))?;
            merge(&mut doc, file_doc);
        }
        apply_env(&mut doc, env)?;
        let cfg: Config = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(
                if path == "." { "<root>".into() } else { path },
                e.inner().to_string(),
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as TOML, with URL passwords replaced by `***`.
    pub fn to_toml_masked(&self) -> anyhow::Result<String> {
        let mut c = self.clone();
        c.database.url = mask_password(&c.database.url);
        c.redis.url = mask_password(&c.redis.url);
        if !c.s3.secret_access_key.is_empty() {
            c.s3.secret_access_key = "***".into();
        }
        Ok(toml::to_string(&c)?)
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.brokers.trim().is_empty() {
            return Err(ConfigError::new(
                "kafka.brokers",
                "must list at least one host:port",
            ));
        }
        for b in self.kafka.brokers.split(',') {
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
        for (key, name) in [
            ("topics.health", &self.topics.health),
            ("topics.access", &self.topics.access),
            ("topics.dlq", &self.topics.dlq),
        ] {
            let valid = !name.is_empty()
                && name.len() <= 249
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(ConfigError::new(
                    key,
                    format!("{name:?} is not a valid Kafka topic name"),
                ));
            }
        }
        if !(1..=10_000).contains(&self.topics.partitions) {
            return Err(ConfigError::new(
                "topics.partitions",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=32).contains(&self.topics.replication) {
            return Err(ConfigError::new(
                "topics.replication",
                "must be between 1 and 32",
            ));
        }
        if redis::Client::open(self.redis.url.as_str()).is_err() {
            return Err(ConfigError::new(
                "redis.url",
                format!("{:?} is not a Redis URL", self.redis.url),
            ));
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "redis.key_prefix",
                "must be non-empty, without whitespace",
            ));
        }
        if self
            .database
            .url
            .parse::<sqlx::postgres::PgConnectOptions>()
            .is_err()
            || !self.database.url.starts_with("postgres")
        {
            return Err(ConfigError::new("database.url", "is not a postgres:// URL"));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::new(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        let i = self.agent.interval;
        if i < Duration::from_millis(10) || i > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "agent.interval",
                format!("{} is outside 10ms..=1h", humantime::format_duration(i)),
            ));
        }
        weir_core::Validate::validate(&self.consumer)?;
        parse_addr("center.addr", &self.center.addr)?;
        if !self.metrics.addr.is_empty() {
            parse_addr("metrics.addr", &self.metrics.addr)?;
        }
        self.validate_edge()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::new(
                "log.level",
                format!("{:?} is not a log filter", self.log.level),
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::new("log.format", "must be text or json"));
        }
        if !(1..=64).contains(&self.up.consumers) {
            return Err(ConfigError::new("up.consumers", "must be between 1 and 64"));
        }
        let li = self.lag.interval;
        if li < Duration::from_millis(100) || li > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "lag.interval",
                "must be between 100ms and 1h",
            ));
        }
        if self.lag.window < li * 2 || self.lag.window > Duration::from_secs(86_400) {
            return Err(ConfigError::new(
                "lag.window",
                "must span at least two lag.interval readings and at most 24h",
            ));
        }
        if self.lag.timeout < Duration::from_millis(100)
            || self.lag.timeout > Duration::from_secs(300)
        {
            return Err(ConfigError::new(
                "lag.timeout",
                "must be between 100ms and 5m",
            ));
        }
        if self.lag.threshold == 0 {
            return Err(ConfigError::new("lag.threshold", "must be at least 1"));
        }
        let l = &self.limiter;
        if l.threshold == 0 {
            return Err(ConfigError::new("limiter.threshold", "must be at least 1"));
        }
        if !(l.min_fraction > 0.0 && l.min_fraction <= 1.0) {
            return Err(ConfigError::new(
                "limiter.min_fraction",
                "must be in (0, 1]",
            ));
        }
        if !(l.kp.is_finite() && l.kp >= 0.0 && l.ki.is_finite() && l.ki >= 0.0) {
            return Err(ConfigError::new(
                "limiter.kp",
                "kp and ki must be finite and non-negative",
            ));
        }
        if l.stale_after < self.lag.interval {
            return Err(ConfigError::new(
                "limiter.stale_after",
                "must be at least lag.interval",
            ));
        }
        Ok(())
    }
}

impl Config {
    fn validate_edge(&self) -> Result<(), ConfigError> {
        let s3 = &self.s3;
        if !(s3.endpoint.starts_with("http://") || s3.endpoint.starts_with("https://")) {
            return Err(ConfigError::new(
                "s3.endpoint",
                "must be an http:// or https:// URL",
            ));
        }
        let valid_bucket = |b: &str| {
            (3..=63).contains(&b.len())
                && b.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        };
        if !valid_bucket(&s3.bucket) {
            return Err(ConfigError::new(
                "s3.bucket",
                format!("{:?} is not an S3 bucket name", s3.bucket),
            ));
        }
        if s3.region.is_empty() {
            return Err(ConfigError::new(
                "s3.region",
                "must be set (requests are signed with it)",
            ));
        }
        if s3.timeout < Duration::from_millis(10) || s3.timeout > Duration::from_secs(300) {
            return Err(ConfigError::new(
                "s3.timeout",
                "must be between 10ms and 5m",
            ));
        }
        if !(1..=10).contains(&s3.max_attempts) {
            return Err(ConfigError::new(
                "s3.max_attempts",
                "must be between 1 and 10",
            ));
        }
        let e = &self.edge;
        let client = parse_addr("edge.addr", &e.addr)?;
        let admin = parse_addr("edge.admin_addr", &e.admin_addr)?;
        if client == admin && client.port() != 0 {
            return Err(ConfigError::new(
                "edge.admin_addr",
                "must differ from edge.addr",
            ));
        }
        if let Some(b) = e.buckets.iter().find(|b| !valid_bucket(b)) {
            return Err(ConfigError::new(
                "edge.buckets",
                format!("{b:?} is not an S3 bucket name"),
            ));
        }
        if invalid_header_value(&e.cache_control) {
            return Err(ConfigError::new(
                "edge.cache_control",
                "must be a valid header value",
            ));
        }
        if e.slice_size < 64 * 1024 || e.slice_size > 256 * 1024 * 1024 {
            return Err(ConfigError::new(
                "edge.slice_size",
                "must be between 64 KiB and 256 MiB",
            ));
        }
        if e.memory_object_max < e.slice_size || e.memory_object_max > u64::from(u32::MAX) {
            return Err(ConfigError::new(
                "edge.memory_object_max",
                "must be at least edge.slice_size and below 4 GiB",
            ));
        }
        if e.memory_budget < e.memory_object_max {
            return Err(ConfigError::new(
                "edge.memory_budget",
                "must be at least edge.memory_object_max",
            ));
        }
        if e.disk_budget < e.slice_size {
            return Err(ConfigError::new(
                "edge.disk_budget",
                "must hold at least one slice",
            ));
        }
        if e.upload_max == 0 {
            return Err(ConfigError::new("edge.upload_max", "must be at least 1"));
        }
        if e.fetch_max_redirects > 20 {
            return Err(ConfigError::new(
                "edge.fetch_max_redirects",
                "must be at most 20",
            ));
        }
        if e.fetch_timeout.is_zero() {
            return Err(ConfigError::new(
                "edge.fetch_timeout",
                "must be more than 0s",
            ));
        }
        let public_ok = e.public_url.is_empty()
            || e.public_url.starts_with("http://")
            || e.public_url.starts_with("https://");
        if !public_ok {
            return Err(ConfigError::new(
                "edge.public_url",
                "must be an http:// or https:// URL",
            ));
        }
        if e.fresh_for.is_zero() {
            return Err(ConfigError::new("edge.fresh_for", "must be more than 0s"));
        }
        Ok(())
    }
}

/// Header values are visible ASCII, space and tab.
fn invalid_header_value(v: &str) -> bool {
    v.bytes()
        .any(|b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((creds, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Applies `WEIR_<SECTION>_<KEY>=value` variables. The type of each value is
/// taken from the default (number, boolean, list, text), so `6` is a number
/// for `topics.partitions` but text for `agent.node_id`.
fn apply_env(
    doc: &mut Value,
    env: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = doc.clone();
    let Some(sections) = defaults.as_object() else {
        return Ok(());
    };
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix("WEIR_") else {
            continue;
        };
        // `WEIR_TEST_*` is reserved for test knobs (sizes, logs), which the
        // processes a test spawns inherit.
        if NON_CONFIG_ENV.contains(&var.as_str()) || rest.starts_with("TEST_") {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let found = sections.iter().find_map(|(section, fields)| {
            let key = lower.strip_prefix(section.as_str())?.strip_prefix('_')?;
            let default = fields.as_object()?.get(key)?;
            Some((section.clone(), key.to_string(), default.clone()))
        });
        let Some((section, key, default)) = found else {
            return Err(ConfigError::new(
                &var,
                "is not a known setting (WEIR_<SECTION>_<KEY>, see docs/configuration.md)",
            ));
        };
        let value = match &default {
            Value::Number(n) => {
                let parsed = if n.is_f64() {
                    raw.trim()
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                } else if n.is_u64() {
                    raw.trim().parse::<u64>().ok().map(Value::from)
                } else {
                    raw.trim().parse::<i64>().ok().map(Value::from)
                };
                parsed.ok_or_else(|| {
                    ConfigError::new(&var, format!("expected a number, got {raw:?}"))
                })?
            }
            Value::Bool(_) => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Value::Bool(true),
                "false" | "0" | "no" | "off" => Value::Bool(false),
                _ => {
                    return Err(ConfigError::new(
                        &var,
                        format!("expected true or false, got {raw:?}"),
                    ))
                }
            },
            Value::Array(_) => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
            Value::Object(_) => {
                return Err(ConfigError::new(
                    &var,
                    "is a table; set its keys in the config file",
                ))
            }
            _ => Value::String(raw),
        };
        if let Some(obj) = doc.get_mut(&section).and_then(Value::as_object_mut) {
            obj.insert(key, value);
        } else {
            let mut m = Map::new();
            m.insert(key, value);
            doc[section] = Value::Object(m);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::new(text)
    }

    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn new(text: &str) -> Self {
                let p = std::env::temp_dir().join(format!(
                    "weir-cfg-{}-{}.toml",
                    std::process::id(),
                    uuid_like()
                ));
                std::fs::write(&p, text).expect("write temp config");
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        fn uuid_like() -> u64 {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            N.fetch_add(1, Ordering::Relaxed)
        }
    }

    #[test]
    fn effective_config_prints_without_secrets() {
        let c = Config::load(
            None,
            env(&[("WEIR_DATABASE_URL", "postgres://weir:s3cret@db:5432/weir")]),
        )
        .expect("loads");
        let text = c.to_toml_masked().expect("toml");
        assert!(text.contains("postgres://weir:***@db:5432/weir"), "{text}");
        assert!(!text.contains("s3cret"));
        // What it prints loads back to the same settings.
        let back: Config = toml::from_str(&text).expect("round trip");
        assert_eq!(back.agent.interval, c.agent.interval);
    }

    #[test]
    fn s3_settings_come_from_the_local_stack_variables() {
        let c = Config::load(
            None,
            env(&[
                ("WEIR_S3_ENDPOINT", "http://127.0.0.1:19000"),
                ("WEIR_S3_BUCKET", "weir"),
                ("WEIR_S3_REGION", "us-east-1"),
                ("WEIR_S3_ACCESS_KEY_ID", "test"),
                ("WEIR_S3_SECRET_ACCESS_KEY", "hunter2"),
                ("WEIR_EDGE_SLICE_SIZE", "1048576"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.s3.access_key_id, "test");
        assert_eq!(c.edge.slice_size, 1_048_576);
        let text = c.to_toml_masked().expect("toml");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, env(&[])).expect("defaults load");
        assert_eq!(c.agent.interval, Duration::from_secs(1));
        assert_eq!(c.topics.health, "weir.health.v1");
    }

    #[test]
    fn file_then_env_then_typed() {
        let f = write(
            "[agent]\ninterval = \"250ms\"\nnode_id = \"from-file\"\n[topics]\npartitions = 3\n",
        );
        let c = Config::load(
            Some(&f.0),
            env(&[
                ("WEIR_AGENT_NODE_ID", "from-env"),
                ("WEIR_CENTER_ADDR", "127.0.0.1:18081"),
                ("WEIR_CONSUMER_BATCH_MAX_RECORDS", "42"),
                ("WEIR_AGENT_WAN_IPS", "203.0.113.1, 203.0.113.2"),
                ("WEIR_STACK_DIR", "/ignored"),
                ("PATH", "/bin"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.agent.interval, Duration::from_millis(250));
        assert_eq!(c.agent.node_id, "from-env");
        assert_eq!(c.topics.partitions, 3);
        assert_eq!(c.center.addr, "127.0.0.1:18081");
        assert_eq!(c.consumer.batch_max_records, 42);
        assert_eq!(c.agent.wan_ips, vec!["203.0.113.1", "203.0.113.2"]);
    }

    #[test]
    fn errors_name_the_key() {
        let cases: Vec<(Option<&str>, Vec<(&str, &str)>, &str)> = vec![
            (Some("[agent]\nintervall = \"1s\"\n"), vec![], "agent"),
            (
                Some("[agent]\ninterval = \"soon\"\n"),
                vec![],
                "agent.interval",
            ),
            (
                Some("[agent]\ninterval = \"0s\"\n"),
                vec![],
                "agent.interval",
            ),
            (Some("[nope]\nx = 1\n"), vec![], "nope"),
            (Some("not toml ["), vec![], ".toml"),
            (
                None,
                vec![("WEIR_TOPICS_PARTITIONS", "many")],
                "WEIR_TOPICS_PARTITIONS",
            ),
            (None, vec![("WEIR_CENTER_ADR", "x")], "WEIR_CENTER_ADR"),
            (None, vec![("WEIR_CENTER_ADDR", "localhost")], "center.addr"),
            (None, vec![("WEIR_KAFKA_BROKERS", "")], "kafka.brokers"),
            (
                None,
                vec![("WEIR_DATABASE_URL", "mysql://x")],
                "database.url",
            ),
            (
                None,
                vec![("WEIR_TOPICS_HEALTH", "bad topic")],
                "topics.health",
            ),
            (None, vec![("WEIR_LAG_WINDOW", "1s")], "lag.window"),
            (None, vec![("WEIR_LAG_INTERVAL", "soon")], "lag.interval"),
            (Some("[lag]\nthreshhold = 5\n"), vec![], "lag"),
            (None, vec![("WEIR_S3_ENDPOINT", "s3.local")], "s3.endpoint"),
            (None, vec![("WEIR_S3_BUCKET", "Bad_Bucket")], "s3.bucket"),
            (
                None,
                vec![("WEIR_EDGE_SLICE_SIZE", "12")],
                "edge.slice_size",
            ),
            (
                None,
                vec![("WEIR_EDGE_ADMIN_ADDR", "127.0.0.1:8080")],
                "edge.admin_addr",
            ),
            (
                None,
                vec![("WEIR_EDGE_FRESH_FOR", "soon")],
                "edge.fresh_for",
            ),
        ];
        for (file, vars, key) in cases {
            let f = file.map(write);
            let err =
                Config::load(f.as_ref().map(|t| t.0.as_path()), env(&vars)).expect_err("must fail");
            assert!(err.to_string().contains(key), "{err} does not name {key}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }
}
