//! The balancer's settings (`[balance]`, `[balance.pools.NAME]`,
//! `[[balance.routes]]`), their defaults, and the checks they must pass at
//! start ([`Validate`]), kept next to the fields they check.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_core::config::{nonzero_duration, parse_addr};
use weir_core::{ConfigError, Validate};

use crate::algorithm::Algorithm;

/// The pool requests go to when no route matches (and, without any pool
/// configured, the only one: every up node of the fleet).
pub const DEFAULT_POOL: &str = "default";

/// Settings of `weir balance` (`[balance]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceConfig {
    /// Where clients connect.
    pub addr: String,
    /// Admin address: `/pools` (each backend's state and why), `/metrics`,
    /// `/livez`, `/readyz`; kept apart from client traffic so it can stay
    /// on a private interface. Empty disables it.
    pub admin_addr: String,
    /// Algorithm of the default pool, and of pools that name none.
    pub algorithm: String,
    /// Open the listening socket with `SO_REUSEPORT`, so a new process can
    /// take the port over while this one drains.
    pub reuse_port: bool,
    /// Client connections served at once; further ones wait in the kernel's
    /// backlog.
    pub max_connections: usize,
    /// Time a client gets to send a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Bound on connecting to a backend.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on a backend's response head once the request is sent.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// A response body that makes no progress this long is cut; idle
    /// keep-alive connections to backends are closed after it too.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A client connection with no bytes read or written this long is
    /// closed: a tunnel (WebSocket) gone quiet, a client that holds a
    /// connection open without a request. At least `first_byte_timeout`
    /// and `idle_timeout`, so a request waiting on a slow backend is never
    /// cut by it.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// A client that reads nothing of a response this long is disconnected
    /// (nginx's `send_timeout`): it holds a connection slot and a backend
    /// connection, never memory beyond a buffer.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// How long in-flight requests get to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Full reload of the fleet snapshot this often, besides the change
    /// channel (a lost message is repaired within it).
    #[serde(with = "humantime_serde")]
    pub resync_interval: Duration,
    /// Consecutive failures (connect errors, timeouts, 5xx) that eject a
    /// backend.
    pub max_fails: u32,
    /// First ejection's length; each further one doubles it.
    #[serde(with = "humantime_serde")]
    pub eject_time: Duration,
    /// Longest ejection.
    #[serde(with = "humantime_serde")]
    pub eject_time_max: Duration,
    /// Never eject more than this share of a pool at once.
    pub max_ejected_share: f64,
    /// When fewer than this share of a pool's backends are usable, use all
    /// of them (a guess at a working one beats refusing every request).
    pub panic_threshold: f64,
    /// Extra attempts of one idempotent request on other backends.
    pub retries: u32,
    /// Retries allowed as a share of the requests of the last ten seconds.
    pub retry_budget: f64,
    /// Retries always allowed per second, whatever the share.
    pub retry_min_per_sec: u32,
    /// Ramp of a backend that just joined (`dynamic`): its weight grows
    /// from a tenth to full over this time.
    #[serde(with = "humantime_serde")]
    pub slow_start: Duration,
    /// `ip_hash`: a backend takes at most this factor × the mean in-flight
    /// load before clients hashed to it spill to the next one.
    pub hash_load_factor: f64,
    /// Stickiness of the default pool: empty or `cookie`.
    pub sticky: String,
    /// Forward plain HTTP/1.1 requests without a body by copying their
    /// heads with only the proxy's edits, as HAProxy and nginx do, rather
    /// than through hyper's header maps (docs/balance.md, "The direct
    /// path"). Anything else takes the hyper path either way; `false`
    /// sends every request through it.
    pub fast_path: bool,
    /// Pools by name (`[balance.pools.NAME]`).
    pub pools: BTreeMap<String, PoolConfig>,
    /// Path routes to pools; the longest matching prefix wins, requests
    /// that match none go to the `default` pool.
    pub routes: Vec<RouteConfig>,
}

impl BalanceConfig {
    /// The client connections' watchdog, as the core listener takes it.
    pub fn conn_limits(&self) -> weir_core::listener::ConnLimits {
        weir_core::listener::ConnLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.client_idle_timeout,
            send_timeout: self.send_timeout,
            max_buf_size: crate::upstream::MAX_BUF,
        }
    }
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            addr: "127.0.0.1:8090".into(),
            admin_addr: "127.0.0.1:8091".into(),
            algorithm: "round_robin".into(),
            reuse_port: true,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            client_idle_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            resync_interval: Duration::from_secs(10),
            max_fails: 3,
            eject_time: Duration::from_secs(5),
            eject_time_max: Duration::from_secs(120),
            max_ejected_share: 0.5,
            panic_threshold: 0.5,
            retries: 2,
            retry_budget: 0.2,
            retry_min_per_sec: 10,
            slow_start: Duration::from_secs(30),
            hash_load_factor: 1.25,
            sticky: String::new(),
            fast_path: true,
            pools: BTreeMap::new(),
            routes: Vec::new(),
        }
    }
}

/// One pool (`[balance.pools.NAME]`), like an nginx `upstream`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Algorithm; empty: `balance.algorithm`.
    pub algorithm: String,
    /// Static backends, `http://host:port`, optionally followed by
    /// ` weight=N` (`"http://10.0.0.7:8080 weight=2"`).
    pub backends: Vec<String>,
    /// Also every up node of the fleet (filtered below); default: when no
    /// static backend is listed.
    pub fleet: Option<bool>,
    /// Only fleet nodes reporting this service.
    pub service: String,
    /// Only fleet nodes of this CDN role.
    pub cdn_type: String,
    /// Empty, or `cookie`: a client returns to the backend that served it.
    pub sticky: String,
}

/// A path route (`[[balance.routes]]`), like an nginx `location`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Path prefix (`/api/randoms`).
    pub prefix: String,
    /// Only requests for this host (`Host` header, port ignored); empty:
    /// any.
    pub host: String,
    /// Pool the matching requests go to.
    pub pool: String,
}

/// A static backend: its URL's authority and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticBackend {
    /// `host:port`.
    pub authority: String,
    /// Relative weight (0 drains it).
    pub weight: u32,
}

/// The `host:port` of an `http://` URL (path ignored), or why not.
pub fn http_authority(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(format!("{url:?} has no usable host"));
    }
    authority
        .parse::<hyper::http::uri::Authority>()
        .map_err(|_| format!("{url:?} has no usable host"))?;
    // `http` accepts any digits as a port; a connect would not.
    let tail = authority.rsplit(']').next().unwrap_or(authority);
    if let Some((_, port)) = tail.rsplit_once(':') {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{url:?} has no usable port"));
        }
    }
    Ok(authority.to_string())
}

/// Parses `"http://host:port"` or `"http://host:port weight=N"`.
pub fn parse_static(entry: &str) -> Result<StaticBackend, String> {
    let mut parts = entry.split_whitespace();
    let url = parts.next().ok_or("empty backend")?;
    let authority = http_authority(url)?;
    let mut weight = 1;
    for p in parts {
        let w = p
            .strip_prefix("weight=")
            .ok_or_else(|| format!("{p:?}: only weight=N may follow the URL"))?;
        weight = w
            .parse::<u32>()
            .ok()
            .filter(|w| *w <= 1000)
            .ok_or_else(|| format!("weight {w:?} is not a number in 0..=1000"))?;
    }
    Ok(StaticBackend { authority, weight })
}

fn share(key: &str, v: f64) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&v) {
        return Err(ConfigError::new(key, "must be between 0 and 1"));
    }
    Ok(())
}

fn sticky(key: &str, v: &str) -> Result<(), ConfigError> {
    if !matches!(v, "" | "cookie") {
        return Err(ConfigError::new(key, "must be empty or \"cookie\""));
    }
    Ok(())
}

impl Validate for BalanceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let addr = parse_addr("balance.addr", &self.addr)?;
        if !self.admin_addr.is_empty() {
            let admin = parse_addr("balance.admin_addr", &self.admin_addr)?;
            if admin == addr {
                return Err(ConfigError::new(
                    "balance.admin_addr",
                    "must differ from balance.addr",
                ));
            }
        }
        Algorithm::parse(&self.algorithm).map_err(|m| ConfigError::new("balance.algorithm", m))?;
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(ConfigError::new(
                "balance.max_connections",
                "must be between 1 and 1000000",
            ));
        }
        for (key, d) in [
            ("balance.header_read_timeout", self.header_read_timeout),
            ("balance.connect_timeout", self.connect_timeout),
            ("balance.first_byte_timeout", self.first_byte_timeout),
            ("balance.idle_timeout", self.idle_timeout),
            ("balance.client_idle_timeout", self.client_idle_timeout),
            ("balance.send_timeout", self.send_timeout),
            ("balance.resync_interval", self.resync_interval),
            ("balance.eject_time", self.eject_time),
            ("balance.eject_time_max", self.eject_time_max),
        ] {
            nonzero_duration(key, d)?;
        }
        if self.client_idle_timeout < self.first_byte_timeout.max(self.idle_timeout) {
            return Err(ConfigError::new(
                "balance.client_idle_timeout",
                "must be at least balance.first_byte_timeout and balance.idle_timeout (a request waiting on a backend would be cut)",
            ));
        }
        if self.eject_time_max < self.eject_time {
            return Err(ConfigError::new(
                "balance.eject_time_max",
                "must be at least balance.eject_time",
            ));
        }
        if self.max_fails == 0 {
            return Err(ConfigError::new("balance.max_fails", "must be at least 1"));
        }
        share("balance.max_ejected_share", self.max_ejected_share)?;
        share("balance.panic_threshold", self.panic_threshold)?;
        share("balance.retry_budget", self.retry_budget)?;
        if self.retries > 10 {
            return Err(ConfigError::new("balance.retries", "must be at most 10"));
        }
        if !(1.0..=100.0).contains(&self.hash_load_factor) {
            return Err(ConfigError::new(
                "balance.hash_load_factor",
                "must be between 1 and 100",
            ));
        }
        sticky("balance.sticky", &self.sticky)?;
        for (name, p) in &self.pools {
            let key = |k: &str| format!("balance.pools.{name}.{k}");
            if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
                return Err(ConfigError::new(
                    format!("balance.pools.{name:?}"),
                    "a pool name is 1 to 64 printable characters",
                ));
            }
            if !p.algorithm.is_empty() {
                Algorithm::parse(&p.algorithm)
                    .map_err(|m| ConfigError::new(key("algorithm"), m))?;
            }
            for b in &p.backends {
                parse_static(b).map_err(|m| ConfigError::new(key("backends"), m))?;
            }
            if p.backends.is_empty() && p.fleet == Some(false) {
                return Err(ConfigError::new(
                    key("backends"),
                    "a pool without the fleet needs static backends",
                ));
            }
            sticky(&key("sticky"), &p.sticky)?;
        }
        for (i, r) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("balance.routes[{i}].{k}");
            if !r.prefix.starts_with('/') || r.prefix.chars().any(|c| c.is_control()) {
                return Err(ConfigError::new(
                    key("prefix"),
                    "must start with / and hold no control characters",
                ));
            }
            if r.host.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(ConfigError::new(key("host"), "must be a host name"));
            }
            if r.pool != DEFAULT_POOL && !self.pools.contains_key(&r.pool) {
                return Err(ConfigError::new(
                    key("pool"),
                    format!("{:?} is not a pool in [balance.pools]", r.pool),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BalanceConfig::default().validate().expect("defaults");
    }

    #[test]
    fn static_backends_parse() {
        assert_eq!(
            parse_static("http://127.0.0.1:9001"),
            Ok(StaticBackend {
                authority: "127.0.0.1:9001".into(),
                weight: 1
            })
        );
        assert_eq!(
            parse_static("http://h:80/x  weight=0").map(|b| (b.authority, b.weight)),
            Ok(("h:80".into(), 0))
        );
        for bad in [
            "",
            "https://h:1",
            "h:1",
            "http://",
            "http://u:p@h:1",
            "http://h:1 weight=x",
            "http://h:1 weight=-1",
            "http://h:1 weight=1001",
            "http://h:1 color=red",
            "http://h:99999",
            "http://h\u{0}:1",
        ] {
            assert!(parse_static(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest::proptest! {
        #[test]
        fn static_backend_parsing_never_panics_and_keeps_what_it_accepts(entry in "\\PC{0,40}") {
            if let Ok(b) = parse_static(&entry) {
                proptest::prop_assert!(entry.starts_with("http://"));
                proptest::prop_assert!(b.weight <= 1000);
                proptest::prop_assert!(!b.authority.is_empty() && !b.authority.contains(char::is_whitespace));
                let again = parse_static(&format!("http://{} weight={}", b.authority, b.weight));
                proptest::prop_assert_eq!(again, Ok(b));
            }
        }

        #[test]
        fn generated_backends_parse(host in "[a-z][a-z0-9-]{0,20}", port in 1u16.., weight in 0u32..=1000) {
            let b = parse_static(&format!("http://{host}:{port}/ignored weight={weight}"));
            proptest::prop_assert_eq!(b, Ok(StaticBackend { authority: format!("{host}:{port}"), weight }));
        }
    }

    #[test]
    fn errors_name_the_key() {
        let mut c = BalanceConfig::default();
        c.routes.push(RouteConfig {
            prefix: "/api".into(),
            host: String::new(),
            pool: "nope".into(),
        });
        let e = c.validate().expect_err("unknown pool");
        assert_eq!(e.key, "balance.routes[0].pool");

        let mut c = BalanceConfig::default();
        c.pools.insert(
            "p".into(),
            PoolConfig {
                algorithm: "fastest".into(),
                ..PoolConfig::default()
            },
        );
        assert_eq!(
            c.validate().expect_err("bad algorithm").key,
            "balance.pools.p.algorithm"
        );

        let c = BalanceConfig {
            max_ejected_share: 1.5,
            ..BalanceConfig::default()
        };
        assert_eq!(
            c.validate().expect_err("share").key,
            "balance.max_ejected_share"
        );
        let c = BalanceConfig {
            admin_addr: "127.0.0.1:8090".into(),
            ..BalanceConfig::default()
        };
        assert_eq!(c.validate().expect_err("same").key, "balance.admin_addr");
    }
}
