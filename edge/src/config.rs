//! The edge's settings (`[edge]`), their defaults, and the checks they must
//! pass at start ([`Validate`]), kept next to the fields they check.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_core::config::parse_addr;
use weir_core::{ConfigError, Validate};

const MIB: u64 = 1024 * 1024;

/// Settings of `weir edge` (`[edge]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Client traffic listen address.
    pub addr: String,
    /// Admin listen address (purge, `/livez`, `/readyz`, `/metrics`): kept
    /// apart from client traffic so it can stay on a private interface.
    pub admin_addr: String,
    /// When non-empty, paths are `/{bucket}/{key}` and only these buckets
    /// are served; when empty, `/{key}` in `s3.bucket`.
    pub buckets: Vec<String>,
    /// `Cache-Control` sent to clients.
    pub cache_control: String,
    /// How long a cached object or metadata entry is used without asking
    /// the origin again.
    #[serde(with = "humantime_serde")]
    pub fresh_for: Duration,
    /// How long past `fresh_for` a cached object may still be served while
    /// the origin is failing.
    #[serde(with = "humantime_serde")]
    pub stale_grace: Duration,
    /// How long a missing key is answered 404 without asking the origin.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// TTL of the metadata entries shared in Redis.
    #[serde(with = "humantime_serde")]
    pub meta_ttl: Duration,
    /// After a Redis failure, how long to serve without it before trying
    /// again.
    #[serde(with = "humantime_serde")]
    pub redis_backoff: Duration,
    /// Byte budget of the memory tier.
    pub memory_budget: u64,
    /// Objects up to this size are kept whole in memory; larger ones are
    /// sliced to disk.
    pub memory_object_max: u64,
    /// Size of the slices large objects are fetched and cached in.
    pub slice_size: u64,
    /// Slices of a large object fetched ahead of the one being sent (each
    /// its own origin request, within `inflight_budget`): more makes a cold
    /// object stream faster from an origin with per-request latency.
    pub read_ahead: u64,
    /// Directory of the disk tier (`weir-slices` is created inside; the
    /// slices a previous run left there are served again after a restart);
    /// empty: a per-process directory under the system temporary directory,
    /// so nothing survives a restart.
    pub disk_dir: String,
    /// Byte budget of the disk tier.
    pub disk_budget: u64,
    /// Largest body `POST /upload` and `POST /fetch` accept (a policy
    /// limit: bodies stream to S3 in parts, so memory does not grow with it).
    pub upload_max: u64,
    /// Redirects `POST /fetch` follows.
    pub fetch_max_redirects: usize,
    /// Destinations `POST /fetch` may reach although they are internal
    /// (loopback, link-local, private, unspecified, multicast — refused by
    /// default, checked on the resolved address and after every redirect):
    /// host names, matched exactly, or addresses and networks
    /// (`10.1.0.0/16`, `127.0.0.1`).
    pub fetch_allow: Vec<String>,
    /// Bound on a whole `POST /fetch` download.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Base of the URLs answered for uploaded objects; empty:
    /// `http://{edge.addr}`.
    pub public_url: String,
    /// Client connections served at once; further ones wait in the
    /// kernel's accept backlog until a slot frees.
    pub max_connections: usize,
    /// Time a client gets to send a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A client connection without any progress (no bytes read or written)
    /// this long is closed: an idle keep-alive connection, or a client that
    /// neither sends nor reads.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A client that reads nothing of a response for this long, while the
    /// edge has bytes to send, is disconnected (nginx's `send_timeout`).
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Bytes that fills (origin reads on their way to a tier) and streamed
    /// responses may hold at once, across all requests; a request that
    /// would exceed it waits for room.
    pub inflight_budget: u64,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            addr: "127.0.0.1:8080".into(),
            admin_addr: "127.0.0.1:8082".into(),
            buckets: Vec::new(),
            cache_control: "public, max-age=60".into(),
            fresh_for: Duration::from_secs(60),
            stale_grace: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(5),
            meta_ttl: Duration::from_secs(60),
            redis_backoff: Duration::from_secs(5),
            memory_budget: 256 * MIB,
            memory_object_max: 50_000_000,
            slice_size: 4 * MIB,
            read_ahead: 8,
            disk_dir: String::new(),
            disk_budget: 10 * 1024 * MIB,
            upload_max: 100 * MIB,
            fetch_max_redirects: 3,
            fetch_allow: Vec::new(),
            fetch_timeout: Duration::from_secs(30),
            public_url: String::new(),
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            inflight_budget: 256 * MIB,
        }
    }
}

impl EdgeConfig {
    /// The client listener's limits. At most one chunk of a response waits
    /// in a connection's buffer for a client that does not read.
    pub fn conn_limits(&self) -> weir_core::listener::ConnLimits {
        weir_core::listener::ConnLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            send_timeout: self.send_timeout,
            max_buf_size: crate::reply::CHUNK as usize,
        }
    }

    /// The disk tier's directory, resolving the empty default.
    pub fn resolved_disk_dir(&self) -> std::path::PathBuf {
        if self.disk_dir.is_empty() {
            std::env::temp_dir().join(format!("weir-edge-{}", std::process::id()))
        } else {
            self.disk_dir.clone().into()
        }
    }

    /// Base of the URLs answered for uploaded objects, without a trailing
    /// `/`.
    pub fn resolved_public_url(&self) -> String {
        if self.public_url.is_empty() {
            format!("http://{}", self.addr)
        } else {
            self.public_url.trim_end_matches('/').to_string()
        }
    }
}

/// S3's rules for bucket names (the subset that matters here: length and
/// characters).
pub(crate) fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
}

/// Header values are visible ASCII, space and tab.
fn valid_header_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

fn is_http_url(v: &str) -> bool {
    v.starts_with("http://") || v.starts_with("https://")
}

impl Validate for EdgeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let client = parse_addr("edge.addr", &self.addr)?;
        let admin = parse_addr("edge.admin_addr", &self.admin_addr)?;
        if client == admin && client.port() != 0 {
            return Err(ConfigError::new(
                "edge.admin_addr",
                "must differ from edge.addr",
            ));
        }
        if let Some(b) = self.buckets.iter().find(|b| !valid_bucket(b)) {
            return Err(ConfigError::new(
                "edge.buckets",
                format!("{b:?} is not an S3 bucket name"),
            ));
        }
        if !valid_header_value(&self.cache_control) {
            return Err(ConfigError::new(
                "edge.cache_control",
                "must be a valid header value",
            ));
        }
        if self.slice_size < 64 * 1024 || self.slice_size > 256 * MIB {
            return Err(ConfigError::new(
                "edge.slice_size",
                "must be between 64 KiB and 256 MiB",
            ));
        }
        if self.memory_object_max < self.slice_size || self.memory_object_max > u64::from(u32::MAX)
        {
            return Err(ConfigError::new(
                "edge.memory_object_max",
                "must be at least edge.slice_size and below 4 GiB",
            ));
        }
        if self.memory_budget < self.memory_object_max {
            return Err(ConfigError::new(
                "edge.memory_budget",
                "must be at least edge.memory_object_max",
            ));
        }
        if self.disk_budget < self.slice_size {
            return Err(ConfigError::new(
                "edge.disk_budget",
                "must hold at least one slice",
            ));
        }
        if self.upload_max == 0 {
            return Err(ConfigError::new("edge.upload_max", "must be at least 1"));
        }
        if self.fetch_max_redirects > 20 {
            return Err(ConfigError::new(
                "edge.fetch_max_redirects",
                "must be at most 20",
            ));
        }
        crate::destination::FetchPolicy::parse(&self.fetch_allow)
            .map_err(|m| ConfigError::new("edge.fetch_allow", m))?;
        if self.fetch_timeout.is_zero() {
            return Err(ConfigError::new(
                "edge.fetch_timeout",
                "must be more than 0s",
            ));
        }
        if !(self.public_url.is_empty() || is_http_url(&self.public_url)) {
            return Err(ConfigError::new(
                "edge.public_url",
                "must be an http:// or https:// URL",
            ));
        }
        if self.fresh_for.is_zero() {
            return Err(ConfigError::new("edge.fresh_for", "must be more than 0s"));
        }
        self.conn_limits().validate("edge")?;
        if !(1..=64).contains(&self.read_ahead) {
            return Err(ConfigError::new(
                "edge.read_ahead",
                "must be 1 to 64 slices",
            ));
        }
        if self.inflight_budget < (self.read_ahead + 1) * self.slice_size {
            return Err(ConfigError::new(
                "edge.inflight_budget",
                "must hold the slice being sent and those read ahead \
                 ((edge.read_ahead + 1) × edge.slice_size)",
            ));
        }
        Ok(())
    }
}

impl Validate for crate::origin::S3Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if !is_http_url(&self.endpoint) {
            return Err(ConfigError::new(
                "s3.endpoint",
                "must be an http:// or https:// URL",
            ));
        }
        if !valid_bucket(&self.bucket) {
            return Err(ConfigError::new(
                "s3.bucket",
                format!("{:?} is not an S3 bucket name", self.bucket),
            ));
        }
        if self.region.is_empty() {
            return Err(ConfigError::new(
                "s3.region",
                "must be set (requests are signed with it)",
            ));
        }
        if self.timeout < Duration::from_millis(10) || self.timeout > Duration::from_secs(300) {
            return Err(ConfigError::new(
                "s3.timeout",
                "must be between 10ms and 5m",
            ));
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err(ConfigError::new(
                "s3.max_attempts",
                "must be between 1 and 10",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(c: &EdgeConfig) -> Option<String> {
        c.validate().err().map(|e| e.key)
    }

    #[test]
    fn defaults_are_valid_and_each_check_names_its_key() {
        assert_eq!(key_of(&EdgeConfig::default()), None);
        let cases: Vec<(&str, Box<dyn Fn(&mut EdgeConfig)>)> = vec![
            ("edge.addr", Box::new(|c| c.addr = "nope".into())),
            (
                "edge.admin_addr",
                Box::new(|c| c.admin_addr = c.addr.clone()),
            ),
            ("edge.buckets", Box::new(|c| c.buckets = vec!["A_B".into()])),
            (
                "edge.cache_control",
                Box::new(|c| c.cache_control = "a\nb".into()),
            ),
            ("edge.slice_size", Box::new(|c| c.slice_size = 1)),
            ("edge.read_ahead", Box::new(|c| c.read_ahead = 0)),
            ("edge.read_ahead", Box::new(|c| c.read_ahead = 65)),
            (
                "edge.inflight_budget",
                Box::new(|c| c.inflight_budget = c.read_ahead * c.slice_size),
            ),
            ("edge.memory_budget", Box::new(|c| c.memory_budget = 1)),
            ("edge.upload_max", Box::new(|c| c.upload_max = 0)),
            (
                "edge.fetch_allow",
                Box::new(|c| c.fetch_allow = vec!["a b".into()]),
            ),
            (
                "edge.fetch_timeout",
                Box::new(|c| c.fetch_timeout = Duration::ZERO),
            ),
            (
                "edge.public_url",
                Box::new(|c| c.public_url = "ftp://x".into()),
            ),
            ("edge.fresh_for", Box::new(|c| c.fresh_for = Duration::ZERO)),
        ];
        for (key, set) in cases {
            let mut c = EdgeConfig::default();
            set(&mut c);
            assert_eq!(key_of(&c).as_deref(), Some(key), "{key}");
        }
    }
}
