//! How a config section says what is wrong with it.
//!
//! Every section of Weir's configuration is a struct in the crate that uses
//! it, and checks itself there ([`Validate`]), next to the fields it knows;
//! the binary only adds the checks that span sections. Every error names the
//! dotted key at fault (`edge.memory_object_max`), so a user can fix it
//! without reading code.

use std::net::SocketAddr;
use std::time::Duration;

/// A configuration error, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error: {key}: {message}")]
pub struct ConfigError {
    /// Dotted key (`agent.interval`) or environment variable.
    pub key: String,
    /// What is wrong and, where useful, what is expected.
    pub message: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A config section that checks its own values at start.
pub trait Validate {
    /// `Ok` when every value of the section is usable; otherwise the first
    /// problem, naming its key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Parses a listen or connect address, naming `key` when it is not one.
pub fn parse_addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse()
        .map_err(|_| ConfigError::new(key, format!("{v:?} is not an address like 127.0.0.1:8081")))
}

/// Refuses a zero duration where zero would mean "never" or "spin".
pub fn nonzero_duration(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::new(key, "must be greater than zero"));
    }
    Ok(())
}

/// `scheme://user:secret@host` → `scheme://user:***@host` (and
/// `scheme://:secret@host` → `scheme://:***@host`): the form in which a URL
/// may be printed or logged.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((creds, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => format!("{scheme}://***@{host}{path}"),
    }
}

/// Whether a raw setting's name says it holds a secret (`sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`, a token, a private
/// key's PEM): such values are masked wherever configuration is printed.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if ["password", "secret", "token", "credential", "passwd"]
        .iter()
        .any(|w| k.contains(w))
    {
        return true;
    }
    // `ssl.key.pem` holds a key; `ssl.key.location` only says where one is.
    k.split(['.', '_', '-'])
        .any(|seg| seg == "key" || seg == "pem")
        && !k.ends_with("location")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_masked() {
        for (url, masked) in [
            ("redis://:hunter2@h:1/0", "redis://:***@h:1/0"),
            ("postgres://u:p@h:5432/db", "postgres://u:***@h:5432/db"),
            ("redis://u@h/", "redis://***@h/"),
            ("redis://h:1/", "redis://h:1/"),
            ("redis://h/p@th", "redis://h/p@th"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(mask_url(url), masked, "{url}");
        }
    }

    #[test]
    fn secret_keys_are_recognised() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.token.endpoint.url",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "ssl.key.location",
            "security.protocol",
            "sasl.username",
            "linger.ms",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
