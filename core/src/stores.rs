//! Connections to PostgreSQL and Redis.
//!
//! Both stores may be down when a process starts or at any time after: the
//! handles here connect lazily and time out every operation, so that a caller
//! sees an error it can answer (503, pause and retry) instead of a hang.

use crate::config::{mask_url, nonzero_duration, ConfigError, Validate};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
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

/// One connection attempt, shared by every caller that arrives while it runs.
type Attempt = Shared<BoxFuture<'static, Result<ConnectionManager, (redis::ErrorKind, String)>>>;

/// Where the handle's connection stands.
enum Conn {
    /// Nothing yet, or the last attempt failed: the next caller starts one.
    Idle,
    /// An attempt is running; callers join it instead of starting another
    /// (or queueing behind a lock for one timeout each).
    Connecting { id: u64, attempt: Attempt },
    /// Connected; the manager reconnects by itself from here on.
    Ready(ConnectionManager),
}

/// Lazily connected, self-reconnecting Redis connection shared by a process.
///
/// While Redis is unreachable (refused, or black-holed: accepting and never
/// answering), concurrent callers share one connection attempt, so each of
/// them waits at most one timeout, however many there are.
pub struct RedisHandle {
    client: redis::Client,
    timeout: Duration,
    conn: std::sync::Mutex<Conn>,
    attempts: std::sync::atomic::AtomicU64,
}

impl RedisHandle {
    /// Validates the URL; does not connect.
    pub fn new(cfg: &RedisConfig) -> Result<Self, redis::RedisError> {
        Ok(RedisHandle {
            client: redis::Client::open(cfg.url.as_str())?,
            timeout: cfg.timeout,
            conn: std::sync::Mutex::new(Conn::Idle),
            attempts: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The underlying client (for pub/sub connections).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A connection, establishing it on first use. Once established it
    /// reconnects by itself; every command is bounded by the timeout.
    pub async fn conn(&self) -> Result<ConnectionManager, redis::RedisError> {
        let (id, attempt) = {
            let mut state = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            match &*state {
                Conn::Ready(c) => return Ok(c.clone()),
                Conn::Connecting { id, attempt } => (*id, attempt.clone()),
                Conn::Idle => {
                    let id = self
                        .attempts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let attempt = self.attempt();
                    *state = Conn::Connecting {
                        id,
                        attempt: attempt.clone(),
                    };
                    (id, attempt)
                }
            }
        };
        let result = attempt.await;
        let mut state = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let current = matches!(&*state, Conn::Connecting { id: i, .. } if *i == id);
        match result {
            Ok(c) => {
                if current {
                    *state = Conn::Ready(c.clone());
                }
                Ok(c)
            }
            Err((kind, detail)) => {
                if current {
                    *state = Conn::Idle;
                }
                Err(redis::RedisError::from((
                    kind,
                    "cannot connect to Redis",
                    detail,
                )))
            }
        }
    }

    /// A connection attempt bounded by the timeout, as a future any number
    /// of callers can await together.
    fn attempt(&self) -> Attempt {
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let fut = ConnectionManager::new_with_config(self.client.clone(), cfg);
        let timeout = self.timeout;
        async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err((e.kind(), e.to_string())),
                Err(_) => Err((
                    redis::ErrorKind::IoError,
                    format!("timed out after {timeout:?}"),
                )),
            }
        }
        .boxed()
        .shared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_attempt_against_a_black_hole() {
        // A listener that accepts and never answers: the worst Redis.
        let (addr, task) = weir_testkit::black_hole().await;
        let cfg = RedisConfig {
            url: format!("redis://{addr}/"),
            timeout: Duration::from_millis(300),
            ..RedisConfig::default()
        };
        let h = std::sync::Arc::new(RedisHandle::new(&cfg).expect("url"));
        let t0 = std::time::Instant::now();
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move {
                    let t = std::time::Instant::now();
                    let r = h.conn().await;
                    (r.is_err(), t.elapsed())
                })
            })
            .collect();
        for c in calls {
            let (failed, took) = c.await.expect("join");
            assert!(failed, "a black hole cannot give a connection");
            assert!(
                took < Duration::from_millis(900),
                "one caller waited {took:?}"
            );
        }
        // Twenty callers, one timeout: not twenty timeouts in a row.
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
        // The failed attempt is forgotten: the next caller tries again.
        let t = std::time::Instant::now();
        assert!(h.conn().await.is_err());
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        task.abort();
    }
}
