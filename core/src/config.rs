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
