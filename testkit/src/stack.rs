//! Where the shared local stack is (`deploy/local/env` variables or their
//! defaults), and checks that fail a test with a message naming the service
//! that does not answer.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the shared local stack is, from `deploy/local/env` variables or
/// their defaults.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Kafka bootstrap servers.
    pub kafka: String,
    /// Redis URL.
    pub redis: String,
    /// PostgreSQL URL (the admin database; tests get their own).
    pub database: String,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The repository root (for `deploy/local` scripts).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// The shared stack's addresses.
pub fn stack() -> Stack {
    Stack {
        kafka: var("WEIR_KAFKA_BROKERS", "127.0.0.1:19092"),
        redis: var("WEIR_REDIS_URL", "redis://127.0.0.1:16379/"),
        database: var(
            "WEIR_DATABASE_URL",
            "postgres://weir:weir@127.0.0.1:15432/weir",
        ),
    }
}

/// The shared stack's S3 endpoint and credentials (`WEIR_S3_*`).
pub(crate) fn s3() -> S3Stack {
    S3Stack {
        endpoint: var("WEIR_S3_ENDPOINT", "http://127.0.0.1:19000"),
        region: var("WEIR_S3_REGION", "us-east-1"),
        access_key_id: s3_credentials().0,
        secret_access_key: s3_credentials().1,
    }
}

/// The local stack's S3 key id and secret (`WEIR_S3_ACCESS_KEY_ID`,
/// `WEIR_S3_SECRET_ACCESS_KEY`, else those `deploy/local` gives every S3
/// server it starts, private ones included). Garage checks signatures, so
/// a test that signs with anything else is refused.
pub fn s3_credentials() -> (String, String) {
    (
        var("WEIR_S3_ACCESS_KEY_ID", "weir-local"),
        var("WEIR_S3_SECRET_ACCESS_KEY", "weir-local-secret"),
    )
}

/// Where the S3 server is and how to sign for it. (Apart from [`Stack`],
/// whose fields tests construct literally for private services.)
#[derive(Debug, Clone)]
pub(crate) struct S3Stack {
    pub(crate) endpoint: String,
    pub(crate) region: String,
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
}

fn host_port(url: &str) -> Option<String> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next()?;
    Some(rest.split('/').next()?.to_string())
}

/// Whether something accepts TCP connections at `addr`.
pub(crate) fn answers(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// Fails the test, naming the service, when it does not answer.
pub fn require(service: &str, addr: &str, env_var: &str) {
    assert!(
        answers(addr),
        "{service} is not reachable at {addr} ({env_var}). Start the local stack with \
         `deploy/local/up` (or run the tests with `./dev test`, which does)."
    );
}

impl Stack {
    /// Asserts Kafka answers.
    pub fn require_kafka(&self) -> &Self {
        for b in self.kafka.split(',') {
            require("Kafka", b.trim(), "WEIR_KAFKA_BROKERS");
        }
        self
    }

    /// Asserts Redis answers.
    pub fn require_redis(&self) -> &Self {
        require(
            "Redis",
            &host_port(&self.redis).unwrap_or_default(),
            "WEIR_REDIS_URL",
        );
        self
    }

    /// Asserts PostgreSQL answers.
    pub fn require_postgres(&self) -> &Self {
        require(
            "PostgreSQL",
            &host_port(&self.database).unwrap_or_default(),
            "WEIR_DATABASE_URL",
        );
        self
    }
}
