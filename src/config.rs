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
use weir_auth::AuthConfig;
use weir_balance::BalanceConfig;
use weir_center::CenterConfig;
use weir_consumers::ConsumerConfig;
use weir_core::{DatabaseConfig, RedisConfig, Validate};
use weir_edge::{EdgeConfig, S3Config};
use weir_ingest::IngestConfig;
use weir_lag::LagConfig;
use weir_producers::LimiterConfig;
use weir_producers::{AgentConfig, KafkaConfig};

use weir_core::config::mask_url;
pub use weir_core::config::{parse_addr, ConfigError};
use weir_report::{MailConfig, ReportConfig};

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
    /// Report requests (`weir mail` consumes them).
    pub report: String,
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
            report: weir_schemas::topics::REPORT.into(),
            partitions: 6,
            replication: 1,
            retention: Duration::from_secs(7 * 86_400),
            dlq_retention: Duration::from_secs(30 * 86_400),
        }
    }
}

impl Validate for TopicsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, name) in [
            ("topics.health", &self.health),
            ("topics.access", &self.access),
            ("topics.dlq", &self.dlq),
            ("topics.report", &self.report),
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
        if !(1..=10_000).contains(&self.partitions) {
            return Err(ConfigError::new(
                "topics.partitions",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=32).contains(&self.replication) {
            return Err(ConfigError::new(
                "topics.replication",
                "must be between 1 and 32",
            ));
        }
        Ok(())
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

impl Validate for MetricsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.addr.is_empty() {
            parse_addr("metrics.addr", &self.addr)?;
        }
        Ok(())
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

impl Validate for LogConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            return Err(ConfigError::new(
                "log.level",
                format!("{:?} is not a log filter", self.level),
            ));
        }
        if !matches!(self.format.as_str(), "text" | "json") {
            return Err(ConfigError::new("log.format", "must be text or json"));
        }
        Ok(())
    }
}

/// `weir up`: every role in one process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpConfig {
    /// Health group members to run.
    pub consumers: usize,
    /// Seed the demo: objects in the bucket, a client load through the edge
    /// and a few simulated nodes, so the dashboard has something to show.
    pub demo: bool,
    /// Requests per second the demo sends through the edge.
    pub load_rate: u32,
    /// Objects the demo puts in the bucket.
    pub demo_objects: u32,
    /// Simulated nodes reporting health besides this host.
    pub demo_nodes: u32,
}

impl Default for UpConfig {
    fn default() -> Self {
        UpConfig {
            consumers: 2,
            demo: true,
            load_rate: 20,
            demo_objects: 300,
            demo_nodes: 5,
        }
    }
}

impl Validate for UpConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=64).contains(&self.consumers) {
            return Err(ConfigError::new("up.consumers", "must be between 1 and 64"));
        }
        // The demo is light by design; a load test is `weir gen access`.
        if self.load_rate > 10_000 {
            return Err(ConfigError::new("up.load_rate", "must be at most 10000"));
        }
        if !(1..=10_000).contains(&self.demo_objects) {
            return Err(ConfigError::new(
                "up.demo_objects",
                "must be between 1 and 10000",
            ));
        }
        if self.demo_nodes > 1000 {
            return Err(ConfigError::new("up.demo_nodes", "must be at most 1000"));
        }
        Ok(())
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
    /// HTTP ingest gateway for health reports.
    pub ingest: IngestConfig,
    /// Load balancer.
    pub balance: BalanceConfig,
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
    /// Admin tokens (center and edge).
    pub auth: AuthConfig,
    /// The daily uptime report's schedule.
    pub report: ReportConfig,
    /// SMTP for `weir mail`.
    pub mail: MailConfig,
}

/// Environment variables with the `WEIR_` prefix that are not configuration
/// (set by `deploy/local/env` for scripts and tests).
const NON_CONFIG_ENV: &[&str] = &[
    "WEIR_CONFIG",
    "WEIR_STACK_DIR",
    "WEIR_STACK_PORT_OFFSET",
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

    /// The configuration as TOML, with every secret replaced by `***`: URL
    /// passwords, the S3 secret key, `kafka.sasl_password`,
    /// `kafka.ssl_key_password`, and raw Kafka settings whose name says they
    /// hold a secret (`sasl.password`, `ssl.key.password`, …).
    pub fn to_toml_masked(&self) -> anyhow::Result<String> {
        let mut c = self.clone();
        c.database.url = mask_url(&c.database.url);
        c.redis.url = mask_url(&c.redis.url);
        c.kafka = c.kafka.masked();
        c.mail = c.mail.masked();
        if !c.s3.secret_access_key.is_empty() {
            c.s3.secret_access_key = "***".into();
        }
        Ok(toml::to_string(&c)?)
    }

    /// Checks values that types alone cannot: each section checks itself
    /// (beside its struct), then the checks that span sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.topics.validate()?;
        self.redis.validate()?;
        self.database.validate()?;
        self.agent.validate()?;
        self.consumer.validate()?;
        self.center.validate()?;
        self.metrics.validate()?;
        self.validate_edge()?;
        self.ingest.validate()?;
        self.balance.validate()?;
        self.log.validate()?;
        self.up.validate()?;
        self.lag.validate()?;
        self.limiter.validate()?;
        self.auth.validate()?;
        self.report.validate()?;
        self.mail.validate()?;
        // Across sections.
        if self.ingest.ack_timeout <= self.kafka.linger {
            // It becomes the gateway producer's message timeout, which
            // librdkafka wants above linger.ms.
            return Err(ConfigError::new(
                "ingest.ack_timeout",
                "must be longer than kafka.linger",
            ));
        }
        if self.limiter.stale_after < self.lag.interval {
            return Err(ConfigError::new(
                "limiter.stale_after",
                "must be at least lag.interval",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The edge's sections check themselves (`weir_edge::config`).
    fn validate_edge(&self) -> Result<(), ConfigError> {
        self.s3.validate()?;
        self.edge.validate()
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
        // Raw Kafka settings that hold secrets are masked too; the rest shows.
        let file = write(
            "[kafka.rdkafka]\n\"sasl.password\" = \"hunter2\"\n\"ssl.key.password\" = \"k3y\"\n\"sasl.username\" = \"alice\"\n",
        );
        let c = Config::load(Some(&file.0), env(&[])).expect("loads");
        let text = c.to_toml_masked().expect("toml");
        assert!(!text.contains("hunter2") && !text.contains("k3y"), "{text}");
        assert!(text.contains("alice"), "{text}");
        // An invalid Redis URL's error does not echo its password.
        let e = Config::load(None, env(&[("WEIR_REDIS_URL", "rediss://:pa55w0rd@h:x/")]))
            .expect_err("invalid URL");
        assert_eq!(e.key, "redis.url");
        assert!(!e.to_string().contains("pa55w0rd"), "{e}");
        // Named Kafka secrets too, from the file or the environment.
        let c = Config::load(
            None,
            env(&[
                ("WEIR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                ("WEIR_KAFKA_SASL_MECHANISM", "PLAIN"),
                ("WEIR_KAFKA_SASL_USERNAME", "apikey"),
                ("WEIR_KAFKA_SASL_PASSWORD", "s3cr3t-api-secret"),
            ]),
        )
        .expect("loads");
        let shown = c.to_toml_masked().expect("toml");
        assert!(!shown.contains("s3cr3t-api-secret"), "{shown}");
        assert!(shown.contains("sasl_password = \"***\""), "{shown}");
        assert!(!format!("{c:?}").contains("s3cr3t-api-secret"));
        let c = Config::load(None, env(&[])).expect("loads");
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
                vec![("WEIR_KAFKA_COMPRESSION", "brotli")],
                "kafka.compression",
            ),
            (
                None,
                vec![("WEIR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")],
                "kafka.sasl_mechanism",
            ),
            (
                None,
                vec![
                    ("WEIR_KAFKA_SECURITY_PROTOCOL", "SSL"),
                    ("WEIR_KAFKA_SSL_CA_LOCATION", "/no/such/ca.pem"),
                ],
                "kafka.ssl_ca_location",
            ),
            (
                None,
                vec![
                    ("WEIR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                    ("WEIR_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
                    ("WEIR_KAFKA_SASL_USERNAME", "weir"),
                ],
                "kafka.sasl_password",
            ),
            (
                None,
                vec![("WEIR_CONSUMER_GROUP_PROTOCOL", "kip848")],
                "consumer.group_protocol",
            ),
            (
                None,
                vec![("WEIR_CENTER_KEEPALIVE", "0s")],
                "center.keepalive",
            ),
            (None, vec![("WEIR_REDIS_TIMEOUT", "0s")], "redis.timeout"),
            (
                None,
                vec![("WEIR_KAFKA_MESSAGE_TIMEOUT", "0s")],
                "kafka.message_timeout",
            ),
            (
                None,
                vec![("WEIR_AGENT_NODE_ID", "a\u{0}b")],
                "agent.node_id",
            ),
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
            (
                None,
                vec![("WEIR_BALANCE_ALGORITHM", "fastest")],
                "balance.algorithm",
            ),
            (None, vec![("WEIR_BALANCE_ADDR", "nowhere")], "balance.addr"),
            (
                None,
                vec![("WEIR_BALANCE_CLIENT_IDLE_TIMEOUT", "1s")],
                "balance.client_idle_timeout",
            ),
            (
                None,
                vec![("WEIR_BALANCE_SEND_TIMEOUT", "0s")],
                "balance.send_timeout",
            ),
            (
                Some("[balance.pools.api]\nbackends = [\"ftp://x\"]\n"),
                vec![],
                "balance.pools.api.backends",
            ),
            (
                Some("[[balance.routes]]\nprefix = \"/api\"\npool = \"missing\"\n"),
                vec![],
                "balance.routes[0].pool",
            ),
            (None, vec![("WEIR_AUTH_LEEWAY", "1h")], "auth.leeway"),
            (
                None,
                vec![("WEIR_AUTH_REVOCATION_CACHE", "5s")],
                "auth.revocation_cache",
            ),
            (None, vec![("WEIR_AUTH_ISSUER", "a/b")], "auth.issuer"),
            (
                None,
                vec![("WEIR_AUTH_PROTECT_READS", "maybe")],
                "WEIR_AUTH_PROTECT_READS",
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
