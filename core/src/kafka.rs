//! How every role reaches Kafka: bootstrap servers, client ids, compression,
//! TLS and SASL, and the raw librdkafka escape hatch, shared by producers,
//! consumers, the lag tools and the topics admin.
//!
//! Security is configured through named settings (`kafka.security_protocol`,
//! `kafka.ssl_ca_location`, `kafka.sasl_mechanism`, …) rather than only the
//! raw map, so that every mistake is caught at start with the name of the
//! setting at fault: a CA file that is not there, a SASL mechanism without
//! credentials, a client certificate without its key. [`KafkaConfig::client_config`]
//! applies them to every client Weir makes, so no role can forget them.
//! [`KafkaConfig::preflight`] then asks the brokers once, so that a wrong
//! password or a wrong CA ends the process in a second with one line naming
//! the setting, instead of librdkafka retrying forever in the background.

use crate::config::{is_secret_key, nonzero_duration, ConfigError, Validate};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};
use serde::{Deserialize, Serialize};

/// Compression codecs Kafka knows, by the names Kafka gives them
/// (`compression.type`).
pub const COMPRESSION_CODECS: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd"];

/// Security protocols, as Kafka names them (`security.protocol`).
pub const SECURITY_PROTOCOLS: &[&str] = &["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

/// SASL mechanisms Weir configures through named settings. GSSAPI
/// (Kerberos) and OAUTHBEARER need libraries Weir's librdkafka is not built
/// with (cyrus-sasl, libcurl for OIDC); see docs/configuration.md.
pub const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// How to reach Kafka, shared by every role. (`Debug` prints secrets as
/// `***`, so the struct can never leak them into a log line.)
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Client id prefix reported to the broker (shows up in Kafka's tools).
    pub client_id: String,
    /// How long the producer keeps retrying a record before reporting it
    /// failed. Long by default: a broker restart must not lose events.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// How long the producer waits to fill a batch; a few milliseconds trade
    /// a little latency for far fewer requests.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Records librdkafka may hold in memory before `enqueue` refuses more
    /// (the backpressure point).
    pub queue_max_messages: u32,
    /// Codec of the batches Weir's producers write: `none`, `gzip`,
    /// `snappy`, `lz4` (default: cheapest on CPU for JSON this size) or
    /// `zstd` (smallest). Consumers read every codec whatever this says.
    pub compression: String,
    /// `PLAINTEXT` (default), `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    pub security_protocol: String,
    /// PEM file of the CA(s) that signed the brokers' certificates; empty:
    /// the system's CA store (a public CA, as managed services use).
    pub ssl_ca_location: String,
    /// PEM file of this client's certificate, for mutual TLS.
    pub ssl_certificate_location: String,
    /// PEM file of this client's private key, for mutual TLS.
    pub ssl_key_location: String,
    /// Password of an encrypted private key. Secret: masked by `weir config`.
    pub ssl_key_password: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with the
    /// `SASL_*` protocols.
    pub sasl_mechanism: String,
    /// SASL user name.
    pub sasl_username: String,
    /// SASL password. Secret: masked by `weir config`.
    pub sasl_password: String,
    /// Raw librdkafka options, applied last (escape hatch: tuning, and what
    /// has no named setting). A key that a named setting also sets is refused.
    pub rdkafka: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:19092".into(),
            client_id: "weir".into(),
            message_timeout: Duration::from_secs(300),
            linger: Duration::from_millis(5),
            queue_max_messages: 100_000,
            compression: "lz4".into(),
            security_protocol: "PLAINTEXT".into(),
            ssl_ca_location: String::new(),
            ssl_certificate_location: String::new(),
            ssl_key_location: String::new(),
            ssl_key_password: String::new(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            rdkafka: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.masked();
        f.debug_struct("KafkaConfig")
            .field("brokers", &m.brokers)
            .field("client_id", &m.client_id)
            .field("message_timeout", &m.message_timeout)
            .field("linger", &m.linger)
            .field("queue_max_messages", &m.queue_max_messages)
            .field("compression", &m.compression)
            .field("security_protocol", &m.security_protocol)
            .field("ssl_ca_location", &m.ssl_ca_location)
            .field("ssl_certificate_location", &m.ssl_certificate_location)
            .field("ssl_key_location", &m.ssl_key_location)
            .field("ssl_key_password", &m.ssl_key_password)
            .field("sasl_mechanism", &m.sasl_mechanism)
            .field("sasl_username", &m.sasl_username)
            .field("sasl_password", &m.sasl_password)
            .field("rdkafka", &m.rdkafka)
            .finish()
    }
}

/// Refuses a value that is not one of `allowed` (compared without case).
fn one_of(key: &str, value: &str, allowed: &[&str]) -> Result<(), ConfigError> {
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(value)) {
        return Ok(());
    }
    Err(ConfigError::new(
        key,
        format!("{value:?} is not one of {}", allowed.join(", ")),
    ))
}

/// Refuses a path that is not a readable regular file.
fn readable_file(key: &str, path: &str) -> Result<(), ConfigError> {
    let p = Path::new(path);
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => std::fs::File::open(p)
            .map(|_| ())
            .map_err(|e| ConfigError::new(key, format!("cannot read {path}: {e}"))),
        Ok(_) => Err(ConfigError::new(key, format!("{path} is not a file"))),
        Err(e) => Err(ConfigError::new(key, format!("cannot read {path}: {e}"))),
    }
}

impl Validate for KafkaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::new(
                "kafka.brokers",
                "must list at least one host:port",
            ));
        }
        for b in self.brokers.split(',') {
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
        if self.client_id.is_empty() {
            return Err(ConfigError::new("kafka.client_id", "must not be empty"));
        }
        nonzero_duration("kafka.message_timeout", self.message_timeout)?;
        if self.queue_max_messages == 0 {
            return Err(ConfigError::new(
                "kafka.queue_max_messages",
                "must be at least 1",
            ));
        }
        one_of("kafka.compression", &self.compression, COMPRESSION_CODECS)?;
        // librdkafka takes C strings: a NUL would fail deep inside client
        // creation without naming the setting; other control characters in
        // a path or a credential are a paste gone wrong.
        for (key, value) in [
            ("kafka.security_protocol", &self.security_protocol),
            ("kafka.ssl_ca_location", &self.ssl_ca_location),
            (
                "kafka.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            ("kafka.ssl_key_location", &self.ssl_key_location),
            ("kafka.ssl_key_password", &self.ssl_key_password),
            ("kafka.sasl_mechanism", &self.sasl_mechanism),
            ("kafka.sasl_username", &self.sasl_username),
            ("kafka.sasl_password", &self.sasl_password),
            ("kafka.client_id", &self.client_id),
            ("kafka.brokers", &self.brokers),
        ] {
            if value.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    key,
                    "must not contain control characters (NUL, newline, …)",
                ));
            }
        }
        for (k, v) in &self.rdkafka {
            if k.contains('\0') || v.contains('\0') {
                return Err(ConfigError::new(
                    format!("kafka.rdkafka.{k:?}"),
                    "must not contain a NUL byte",
                ));
            }
        }
        self.validate_security()?;
        // A raw key that a named setting also sets would silently win.
        for (raw, named) in self.named_settings() {
            if self.rdkafka.keys().any(|k| k.eq_ignore_ascii_case(raw)) {
                return Err(ConfigError::new(
                    format!("kafka.rdkafka.\"{raw}\""),
                    format!("is also set by {named}; set it in one place"),
                ));
            }
        }
        Ok(())
    }
}

impl KafkaConfig {
    /// The security settings, checked together: each file exists, each
    /// setting fits the protocol, SASL has its mechanism and credentials.
    fn validate_security(&self) -> Result<(), ConfigError> {
        one_of(
            "kafka.security_protocol",
            &self.security_protocol,
            SECURITY_PROTOCOLS,
        )?;
        let tls = self.uses_tls();
        let sasl = self.uses_sasl();
        for (key, value) in [
            ("kafka.ssl_ca_location", &self.ssl_ca_location),
            (
                "kafka.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            ("kafka.ssl_key_location", &self.ssl_key_location),
            ("kafka.ssl_key_password", &self.ssl_key_password),
        ] {
            if !value.is_empty() && !tls {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "has no effect unless kafka.security_protocol is SSL or SASL_SSL (it is {})",
                        self.security_protocol
                    ),
                ));
            }
        }
        for (key, path) in [
            ("kafka.ssl_ca_location", &self.ssl_ca_location),
            (
                "kafka.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            ("kafka.ssl_key_location", &self.ssl_key_location),
        ] {
            if !path.is_empty() {
                readable_file(key, path)?;
            }
        }
        match (
            self.ssl_certificate_location.is_empty(),
            self.ssl_key_location.is_empty(),
        ) {
            (false, true) => return Err(ConfigError::new(
                "kafka.ssl_key_location",
                "is required with kafka.ssl_certificate_location (the certificate's private key)",
            )),
            (true, false) => {
                return Err(ConfigError::new(
                    "kafka.ssl_certificate_location",
                    "is required with kafka.ssl_key_location (the key's certificate)",
                ))
            }
            _ => {}
        }
        if !self.ssl_key_password.is_empty() && self.ssl_key_location.is_empty() {
            return Err(ConfigError::new(
                "kafka.ssl_key_password",
                "has no key to open: set kafka.ssl_key_location",
            ));
        }
        for (key, value) in [
            ("kafka.sasl_mechanism", &self.sasl_mechanism),
            ("kafka.sasl_username", &self.sasl_username),
            ("kafka.sasl_password", &self.sasl_password),
        ] {
            if !value.is_empty() && !sasl {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "has no effect unless kafka.security_protocol is SASL_SSL or SASL_PLAINTEXT (it is {})",
                        self.security_protocol
                    ),
                ));
            }
        }
        if sasl {
            if self.sasl_mechanism.is_empty() {
                // GSSAPI or OAUTHBEARER through the raw map are the user's
                // own business; otherwise a mechanism must be named.
                if self.raw("sasl.mechanisms").is_some() || self.raw("sasl.mechanism").is_some() {
                    return Ok(());
                }
                return Err(ConfigError::new(
                    "kafka.sasl_mechanism",
                    format!(
                        "is required with security_protocol {} ({})",
                        self.security_protocol,
                        SASL_MECHANISMS.join(", ")
                    ),
                ));
            }
            if self.sasl_mechanism.eq_ignore_ascii_case("OAUTHBEARER")
                || self.sasl_mechanism.eq_ignore_ascii_case("GSSAPI")
            {
                return Err(ConfigError::new(
                    "kafka.sasl_mechanism",
                    format!(
                        "{} is not offered: Weir's librdkafka is built without libcurl (OIDC) and cyrus-sasl (Kerberos); use {}",
                        self.sasl_mechanism,
                        SASL_MECHANISMS.join(", ")
                    ),
                ));
            }
            one_of(
                "kafka.sasl_mechanism",
                &self.sasl_mechanism,
                SASL_MECHANISMS,
            )?;
            if self.sasl_username.is_empty() {
                return Err(ConfigError::new(
                    "kafka.sasl_username",
                    format!("is required with sasl_mechanism {}", self.sasl_mechanism),
                ));
            }
            if self.sasl_password.is_empty() {
                return Err(ConfigError::new(
                    "kafka.sasl_password",
                    format!("is required with sasl_mechanism {}", self.sasl_mechanism),
                ));
            }
        }
        Ok(())
    }

    /// A raw override by its librdkafka name (case-insensitive).
    fn raw(&self, name: &str) -> Option<&str> {
        self.rdkafka
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The protocol as librdkafka spells it.
    fn protocol(&self) -> String {
        self.security_protocol.to_ascii_uppercase()
    }

    /// Whether connections are encrypted (`SSL`, `SASL_SSL`).
    pub fn uses_tls(&self) -> bool {
        matches!(self.protocol().as_str(), "SSL" | "SASL_SSL")
    }

    /// Whether clients authenticate with SASL.
    pub fn uses_sasl(&self) -> bool {
        matches!(self.protocol().as_str(), "SASL_SSL" | "SASL_PLAINTEXT")
    }

    /// librdkafka keys set from named settings (non-empty ones), with the
    /// named setting that sets each.
    fn named_settings(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if !self.security_protocol.eq_ignore_ascii_case("PLAINTEXT") {
            out.push(("security.protocol", "kafka.security_protocol"));
        }
        for (raw, named, value) in [
            (
                "ssl.ca.location",
                "kafka.ssl_ca_location",
                &self.ssl_ca_location,
            ),
            (
                "ssl.certificate.location",
                "kafka.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            (
                "ssl.key.location",
                "kafka.ssl_key_location",
                &self.ssl_key_location,
            ),
            (
                "ssl.key.password",
                "kafka.ssl_key_password",
                &self.ssl_key_password,
            ),
            (
                "sasl.mechanisms",
                "kafka.sasl_mechanism",
                &self.sasl_mechanism,
            ),
            (
                "sasl.mechanism",
                "kafka.sasl_mechanism",
                &self.sasl_mechanism,
            ),
            ("sasl.username", "kafka.sasl_username", &self.sasl_username),
            ("sasl.password", "kafka.sasl_password", &self.sasl_password),
        ] {
            if !value.is_empty() {
                out.push((raw, named));
            }
        }
        out
    }

    /// Base client settings common to producers, consumers and admin
    /// clients: servers, client id, and the security settings, so that every
    /// client Weir makes reaches a secured cluster the same way.
    pub fn client_config(&self, role: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("{}-{role}", self.client_id))
            .set("log_level", "4");
        if !self.security_protocol.eq_ignore_ascii_case("PLAINTEXT") {
            c.set("security.protocol", self.protocol());
        }
        for (key, value) in [
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
            ("ssl.key.password", &self.ssl_key_password),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
        ] {
            if !value.is_empty() {
                c.set(key, value.as_str());
            }
        }
        if !self.sasl_mechanism.is_empty() {
            c.set("sasl.mechanisms", self.sasl_mechanism.to_ascii_uppercase());
        }
        c
    }

    /// Applies the raw `rdkafka` overrides last, so they win over the
    /// role's own settings (never over a named setting: see `validate`).
    pub fn apply_overrides(&self, c: &mut ClientConfig) {
        for (k, v) in &self.rdkafka {
            c.set(k, v);
        }
    }

    /// Producer settings: idempotent, acks from all in-sync replicas, so a
    /// retried batch is neither lost nor duplicated by the broker.
    pub fn producer_config(&self, role: &str) -> ClientConfig {
        let mut c = self.client_config(role);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", self.compression.to_ascii_lowercase())
            .set("linger.ms", self.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                self.queue_max_messages.to_string(),
            );
        self.apply_overrides(&mut c);
        c
    }

    /// The raw overrides with every secret value (by its key's name)
    /// replaced by `***`: the form in which they may be printed or logged.
    pub fn masked_overrides(&self) -> BTreeMap<String, String> {
        self.rdkafka
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_key(k) {
                    "***".into()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// A copy whose secrets (`ssl_key_password`, `sasl_password`, secret
    /// raw overrides) read `***`, for printing.
    pub fn masked(&self) -> KafkaConfig {
        let mut c = self.clone();
        for s in [&mut c.ssl_key_password, &mut c.sasl_password] {
            if !s.is_empty() {
                *s = "***".into();
            }
        }
        c.rdkafka = self.masked_overrides();
        c
    }

    /// Asks the brokers for metadata once, when TLS or SASL is configured,
    /// so that credentials or certificates the brokers refuse stop the
    /// process at start with the setting at fault, rather than librdkafka
    /// retrying in the background forever. Brokers that cannot be reached
    /// at all are not an error here: roles start without Kafka and catch up
    /// (that is a fault of the network, not of the configuration).
    ///
    /// Blocking; at most `timeout`.
    pub fn preflight(&self, timeout: Duration) -> Result<(), ConfigError> {
        if !self.uses_tls() && !self.uses_sasl() {
            return Ok(());
        }
        let mut c = self.client_config("preflight");
        self.apply_overrides(&mut c);
        let client: BaseProducer<PreflightContext> = c
            .set_log_level(RDKafkaLogLevel::Emerg)
            .create_with_context(PreflightContext::default())
            .map_err(|e| self.creation_error(e))?;
        let deadline = Instant::now() + timeout;
        loop {
            let step = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            if client.client().fetch_metadata(None, step).is_ok() {
                return Ok(());
            }
            client.poll(Duration::ZERO);
            let seen = client.context().take();
            if let Some(err) = seen
                .iter()
                .find_map(|(code, reason)| self.refusal(*code, reason))
            {
                return Err(err);
            }
            // Nobody listening: not a configuration problem (see above).
            if seen.iter().any(|(_, r)| r.contains("Connection refused")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    /// librdkafka refused the settings when building a client (a key it
    /// cannot read, a certificate it cannot parse): name the setting.
    fn creation_error(&self, e: KafkaError) -> ConfigError {
        let text = e.to_string();
        let key = if text.contains("ssl.key") {
            "kafka.ssl_key_location"
        } else if text.contains("ssl.certificate") {
            "kafka.ssl_certificate_location"
        } else if text.contains("ssl.ca") {
            "kafka.ssl_ca_location"
        } else if text.contains("sasl") {
            "kafka.sasl_mechanism"
        } else {
            "kafka.rdkafka"
        };
        ConfigError::new(key, text)
    }

    /// Whether an error librdkafka reported means the brokers refused this
    /// configuration, and which setting to blame.
    fn refusal(&self, code: RDKafkaErrorCode, reason: &str) -> Option<ConfigError> {
        let r = reason.to_ascii_lowercase();
        let brief = reason
            .split_once(": ")
            .map_or(reason, |(_, rest)| rest)
            .trim();
        if code == RDKafkaErrorCode::Authentication || r.contains("sasl authentication error") {
            return Some(ConfigError::new(
                "kafka.sasl_password",
                format!(
                    "the brokers refused user {:?} with {} (check kafka.sasl_username and kafka.sasl_password): {brief}",
                    self.sasl_username, self.sasl_mechanism
                ),
            ));
        }
        if r.contains("certificate verify failed")
            || r.contains("broker certificate could not be verified")
        {
            return Some(ConfigError::new(
                "kafka.ssl_ca_location",
                format!("the brokers' certificate is not signed by a CA it trusts: {brief}"),
            ));
        }
        if r.contains("alert bad certificate")
            || r.contains("alert certificate required")
            || r.contains("alert unknown ca")
        {
            let what = if self.ssl_certificate_location.is_empty() {
                "the brokers require a client certificate (set kafka.ssl_certificate_location and kafka.ssl_key_location)"
            } else {
                "the brokers refused this client's certificate"
            };
            return Some(ConfigError::new(
                "kafka.ssl_certificate_location",
                format!("{what}: {brief}"),
            ));
        }
        if r.contains("wrong version number")
            || r.contains("packet length too long")
            || r.contains("incorrect security.protocol")
            || r.contains("plaintext broker listener")
            || r.contains("connecting to a ssl listener")
            || r.contains("unsupported sasl mechanism")
        {
            return Some(ConfigError::new(
                "kafka.security_protocol",
                format!(
                    "the brokers do not speak {} ({}) on {}: {brief}",
                    self.protocol(),
                    if self.sasl_mechanism.is_empty() {
                        "no SASL"
                    } else {
                        &self.sasl_mechanism
                    },
                    self.brokers
                ),
            ));
        }
        if code == RDKafkaErrorCode::SSL {
            return Some(ConfigError::new(
                "kafka.security_protocol",
                format!("TLS with the brokers failed: {brief}"),
            ));
        }
        None
    }
}

/// Collects the errors librdkafka reports while [`KafkaConfig::preflight`]
/// waits, and keeps its log quiet (the preflight's answer is the message).
#[derive(Default)]
struct PreflightContext {
    errors: Mutex<Vec<(RDKafkaErrorCode, String)>>,
}

impl PreflightContext {
    fn take(&self) -> Vec<(RDKafkaErrorCode, String)> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ClientContext for PreflightContext {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, _fac: &str, _log_message: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((code, reason.to_string()));
    }
}

impl rdkafka::producer::ProducerContext for PreflightContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> String {
        let p = std::env::temp_dir().join(format!("weir-kafka-{}-{name}", std::process::id()));
        std::fs::write(&p, "-----BEGIN CERTIFICATE-----\n").expect("write");
        p.display().to_string()
    }

    fn sasl_ssl() -> KafkaConfig {
        KafkaConfig {
            security_protocol: "SASL_SSL".into(),
            sasl_mechanism: "SCRAM-SHA-512".into(),
            sasl_username: "alice".into(),
            sasl_password: "hunter2".into(),
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn every_codec_kafka_names_is_accepted_and_nothing_else() {
        for codec in COMPRESSION_CODECS.iter().chain(&["ZSTD", "Gzip"]) {
            let c = KafkaConfig {
                compression: codec.to_string(),
                ..KafkaConfig::default()
            };
            assert!(c.validate().is_ok(), "{codec}");
            let p = c.producer_config("t");
            assert_eq!(
                p.get("compression.type"),
                Some(codec.to_ascii_lowercase().as_str())
            );
        }
        for bad in ["", "zstandard", "lz4hc", "brotli", "gzip,lz4", "none\0"] {
            let c = KafkaConfig {
                compression: bad.into(),
                ..KafkaConfig::default()
            };
            assert_eq!(c.validate().expect_err(bad).key, "kafka.compression");
        }
    }

    #[test]
    fn security_mistakes_name_the_setting() {
        let ca = file("ca.pem");
        let cases: Vec<(KafkaConfig, &str)> = vec![
            (
                KafkaConfig {
                    security_protocol: "TLS".into(),
                    ..KafkaConfig::default()
                },
                "kafka.security_protocol",
            ),
            (
                KafkaConfig {
                    security_protocol: "SSL".into(),
                    ssl_ca_location: "/no/such/ca.pem".into(),
                    ..KafkaConfig::default()
                },
                "kafka.ssl_ca_location",
            ),
            (
                KafkaConfig {
                    security_protocol: "SSL".into(),
                    ssl_ca_location: "/".into(),
                    ..KafkaConfig::default()
                },
                "kafka.ssl_ca_location",
            ),
            (
                KafkaConfig {
                    ssl_ca_location: ca.clone(),
                    ..KafkaConfig::default()
                },
                "kafka.ssl_ca_location",
            ),
            (
                KafkaConfig {
                    security_protocol: "SSL".into(),
                    ssl_certificate_location: ca.clone(),
                    ..KafkaConfig::default()
                },
                "kafka.ssl_key_location",
            ),
            (
                KafkaConfig {
                    security_protocol: "SSL".into(),
                    ssl_key_location: ca.clone(),
                    ..KafkaConfig::default()
                },
                "kafka.ssl_certificate_location",
            ),
            (
                KafkaConfig {
                    security_protocol: "SSL".into(),
                    ssl_key_password: "x".into(),
                    ..KafkaConfig::default()
                },
                "kafka.ssl_key_password",
            ),
            (
                KafkaConfig {
                    sasl_mechanism: String::new(),
                    ..sasl_ssl()
                },
                "kafka.sasl_mechanism",
            ),
            (
                KafkaConfig {
                    sasl_mechanism: "SCRAM-SHA-1".into(),
                    ..sasl_ssl()
                },
                "kafka.sasl_mechanism",
            ),
            (
                KafkaConfig {
                    sasl_mechanism: "OAUTHBEARER".into(),
                    ..sasl_ssl()
                },
                "kafka.sasl_mechanism",
            ),
            (
                KafkaConfig {
                    sasl_username: String::new(),
                    ..sasl_ssl()
                },
                "kafka.sasl_username",
            ),
            (
                KafkaConfig {
                    sasl_password: String::new(),
                    ..sasl_ssl()
                },
                "kafka.sasl_password",
            ),
            (
                KafkaConfig {
                    sasl_username: "alice".into(),
                    ..KafkaConfig::default()
                },
                "kafka.sasl_username",
            ),
            (
                KafkaConfig {
                    rdkafka: [("SASL.PASSWORD".to_string(), "x".to_string())].into(),
                    ..sasl_ssl()
                },
                "kafka.rdkafka.\"sasl.password\"",
            ),
            (
                KafkaConfig {
                    sasl_password: "hunter2\0".into(),
                    ..sasl_ssl()
                },
                "kafka.sasl_password",
            ),
            (
                KafkaConfig {
                    sasl_username: "alice\n".into(),
                    ..sasl_ssl()
                },
                "kafka.sasl_username",
            ),
            (
                KafkaConfig {
                    rdkafka: [("linger.ms".to_string(), "5\0".to_string())].into(),
                    ..KafkaConfig::default()
                },
                "kafka.rdkafka.\"linger.ms\"",
            ),
        ];
        for (c, key) in cases {
            let e = c.validate().expect_err(key);
            assert_eq!(e.key, key, "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        assert!(sasl_ssl().validate().is_ok());
        // Kerberos through the raw map stays possible.
        let raw = KafkaConfig {
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            rdkafka: [("sasl.mechanisms".to_string(), "GSSAPI".to_string())].into(),
            ..sasl_ssl()
        };
        assert!(raw.validate().is_ok());
        let _ = std::fs::remove_file(ca);
    }

    #[test]
    fn every_client_gets_the_security_settings_and_secrets_print_masked() {
        let c = KafkaConfig {
            security_protocol: "sasl_ssl".into(),
            ..sasl_ssl()
        };
        let cc = c.client_config("lag");
        assert_eq!(cc.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(cc.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(cc.get("sasl.username"), Some("alice"));
        assert_eq!(cc.get("sasl.password"), Some("hunter2"));
        assert!(c.producer_config("agent").get("sasl.password").is_some());
        let plain = KafkaConfig::default().client_config("x");
        assert_eq!(plain.get("security.protocol"), None);
        let mut m = c.clone();
        m.rdkafka
            .insert("sasl.oauthbearer.client.secret".into(), "s3".into());
        m.rdkafka.insert("linger.ms".into(), "7".into());
        let masked = m.masked();
        assert_eq!(masked.sasl_password, "***");
        assert_eq!(masked.rdkafka["sasl.oauthbearer.client.secret"], "***");
        assert_eq!(masked.rdkafka["linger.ms"], "7");
        assert!(!format!("{masked:?}").contains("hunter2"));
    }

    #[test]
    fn refusals_name_the_setting() {
        let c = sasl_ssl();
        for (code, reason, key) in [
            (RDKafkaErrorCode::Authentication, "sasl_ssl://h:1/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512", "kafka.sasl_password"),
            (RDKafkaErrorCode::SSL, "ssl://h:1/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified", "kafka.ssl_ca_location"),
            (RDKafkaErrorCode::BrokerTransportFailure, "ssl://h:1/bootstrap: Receive failed: error:0A000412:SSL routines::sslv3 alert bad certificate: SSL alert number 42", "kafka.ssl_certificate_location"),
            (RDKafkaErrorCode::SSL, "ssl://h:1/bootstrap: SSL handshake failed: error:0A00010B:SSL routines::wrong version number", "kafka.security_protocol"),
            (RDKafkaErrorCode::BrokerTransportFailure, "sasl_ssl://h:1/bootstrap: SSL handshake failed: Disconnected: SSL connection closed by peer: connecting to a PLAINTEXT broker listener? (after 19ms in state SSL_HANDSHAKE)", "kafka.security_protocol"),
        ] {
            assert_eq!(c.refusal(code, reason).expect(reason).key, key);
        }
        assert!(c
            .refusal(
                RDKafkaErrorCode::BrokerTransportFailure,
                "h:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused"
            )
            .is_none());
    }
}
