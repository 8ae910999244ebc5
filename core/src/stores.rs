//! Connections to PostgreSQL and Redis.
//!
//! Both stores may be down when a process starts or at any time after: the
//! handles here connect lazily and time out every operation, so that a caller
//! sees an error it can answer (503, pause and retry) instead of a hang.

use crate::config::{mask_url, nonzero_duration, ConfigError, Validate};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::Mutex;
use weir_schemas::RedisKeys;

/// PostgreSQL settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Connection URL (`postgres://user:pass@host:port/db`).
    pub url: String,
    /// Pool size per process.
    pub max_connections: u32,
    /// How long to wait for a connection before reporting the database down.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://weir:weir@127.0.0.1:15432/weir".into(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(3),
        }
    }
}

impl Validate for DatabaseConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.url.parse::<PgConnectOptions>().is_err() || !self.url.starts_with("postgres") {
            return Err(ConfigError::new("database.url", "is not a postgres:// URL"));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        nonzero_duration("database.connect_timeout", self.connect_timeout)
    }
}

impl DatabaseConfig {
    /// A pool that connects lazily: creating it never fails because the
    /// database is down, only because the URL is wrong.
    pub fn pool(&self) -> Result<PgPool, sqlx::Error> {
        let opts: PgConnectOptions = self.url.parse()?;
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(opts.application_name("weir")))
    }
}

/// Redis settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Connection URL (`redis://host:port/db`).
    pub url: String,
    /// Prefix of every key and channel Weir uses, so that several
    /// deployments (or tests) can share one Redis.
    pub key_prefix: String,
    /// Timeout of one command or connection attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:16379/".into(),
            key_prefix: "weir".into(),
            timeout: Duration::from_secs(2),
        }
    }
}

impl Validate for RedisConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if redis::Client::open(self.url.as_str()).is_err() {
            // Never echo the URL's password in an error.
            return Err(ConfigError::new(
                "redis.url",
                format!("{:?} is not a Redis URL", mask_url(&self.url)),
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "redis.key_prefix",
                "must be non-empty, without whitespace",
            ));
        }
        nonzero_duration("redis.timeout", self.timeout)
    }
}

impl RedisConfig {
    /// The key names under this config's prefix.
    pub fn keys(&self) -> RedisKeys {
        RedisKeys::new(&self.key_prefix)
    }
}

/// Lazily connected, self-reconnecting Redis connection shared by a process.
pub struct RedisHandle {
    client: redis::Client,
    timeout: Duration,
    conn: Mutex<Option<ConnectionManager>>,
}

impl RedisHandle {
    /// Validates the URL; does not connect.
    pub fn new(cfg: &RedisConfig) -> Result<Self, redis::RedisError> {
        Ok(RedisHandle {
            client: redis::Client::open(cfg.url.as_str())?,
            timeout: cfg.timeout,
            conn: Mutex::new(None),
        })
    }

    /// The underlying client (for pub/sub connections).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A connection, establishing it on first use. Once established it
    /// reconnects by itself; every command is bounded by the timeout.
    pub async fn conn(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let fut = ConnectionManager::new_with_config(self.client.clone(), cfg);
        let c = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| {
                redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "timed out connecting to Redis",
                ))
            })??;
        *guard = Some(c.clone());
        Ok(c)
    }
}
