//! The `[auth]` section: where the signing keys are, who issues tokens for
//! whom, and the bounds every token is checked against.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_core::config::{ConfigError, Validate};

/// Settings of admin authentication (`[auth]`, `WEIR_AUTH_*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The key file `weir auth keygen` writes and every verifier reads.
    /// Empty: [`AuthConfig::default_key_file`], so that keygen, token,
    /// center and edge on one host find it without flags.
    pub key_file: String,
    /// `iss` of issued tokens, and the only issuer accepted.
    pub issuer: String,
    /// `aud` of issued tokens, and the only audience accepted.
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (at most 5 minutes).
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Longest lifetime (`exp − iat`) a token may have.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Longest token accepted, in bytes; longer ones are refused before
    /// any decoding.
    pub max_token_len: usize,
    /// Require a token (read or admin scope) on the read-only fleet
    /// endpoints too.
    pub protect_reads: bool,
    /// Serve admin endpoints with no authentication at all. Only for a
    /// closed test bench; logged loudly at start.
    pub disabled: bool,
    /// How long a token found not revoked is trusted without asking Redis
    /// again (at most 1s; 0 asks on every request). A logout on another
    /// instance is refused here within this time; one on this instance at
    /// once. Redis unreachable: admin requests fail closed after it.
    #[serde(with = "humantime_serde")]
    pub revocation_cache: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            key_file: String::new(),
            issuer: "weir".into(),
            audience: "weir-admin".into(),
            leeway: Duration::from_secs(30),
            max_ttl: Duration::from_secs(24 * 3600),
            max_token_len: 4096,
            protect_reads: false,
            disabled: false,
            revocation_cache: Duration::from_millis(500),
        }
    }
}

/// Whether `s` is a short token-safe word (kid, jti, issuer, audience):
/// ASCII letters, digits, `-`, `_`, `.`, at most 64 bytes, never `..`.
pub(crate) fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Validate for AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.key_file.contains('\0') {
            return Err(ConfigError::new("auth.key_file", "must not contain NUL"));
        }
        if !is_word(&self.issuer) {
            return Err(ConfigError::new(
                "auth.issuer",
                "must be 1-64 of A-Z a-z 0-9 - _ .",
            ));
        }
        if !is_word(&self.audience) {
            return Err(ConfigError::new(
                "auth.audience",
                "must be 1-64 of A-Z a-z 0-9 - _ .",
            ));
        }
        if self.leeway > Duration::from_secs(300) {
            return Err(ConfigError::new("auth.leeway", "must be at most 5m"));
        }
        if self.max_ttl < Duration::from_secs(1) || self.max_ttl > Duration::from_secs(30 * 86_400)
        {
            return Err(ConfigError::new(
                "auth.max_ttl",
                "must be between 1s and 30d",
            ));
        }
        if self.revocation_cache > Duration::from_secs(1) {
            return Err(ConfigError::new(
                "auth.revocation_cache",
                "must be at most 1s (a logout must reach every instance within a second)",
            ));
        }
        if !(256..=16_384).contains(&self.max_token_len) {
            return Err(ConfigError::new(
                "auth.max_token_len",
                "must be between 256 and 16384",
            ));
        }
        Ok(())
    }
}

impl AuthConfig {
    /// `$XDG_CONFIG_HOME/weir/auth-keys.json`, else
    /// `$HOME/.config/weir/auth-keys.json`: the user's own config directory,
    /// which every role run by that user on the host resolves the same way.
    pub fn default_key_file() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".config"))
            })?;
        Some(base.join("weir").join("auth-keys.json"))
    }

    /// The key file in use: `auth.key_file`, else the default.
    pub fn resolved_key_file(&self) -> Result<PathBuf, ConfigError> {
        if !self.key_file.is_empty() {
            return Ok(PathBuf::from(&self.key_file));
        }
        Self::default_key_file().ok_or_else(|| {
            ConfigError::new(
                "auth.key_file",
                "is empty and neither XDG_CONFIG_HOME nor HOME is set; give a path",
            )
        })
    }

    /// The leeway in whole seconds, as the claims count time.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_name_their_key() {
        AuthConfig::default().validate().expect("defaults");
        for (cfg, key) in [
            (
                AuthConfig {
                    leeway: Duration::from_secs(301),
                    ..AuthConfig::default()
                },
                "auth.leeway",
            ),
            (
                AuthConfig {
                    issuer: "we ir".into(),
                    ..AuthConfig::default()
                },
                "auth.issuer",
            ),
            (
                AuthConfig {
                    audience: String::new(),
                    ..AuthConfig::default()
                },
                "auth.audience",
            ),
            (
                AuthConfig {
                    max_ttl: Duration::ZERO,
                    ..AuthConfig::default()
                },
                "auth.max_ttl",
            ),
            (
                AuthConfig {
                    max_token_len: 10,
                    ..AuthConfig::default()
                },
                "auth.max_token_len",
            ),
        ] {
            assert_eq!(cfg.validate().expect_err(key).key, key);
        }
    }

    #[test]
    fn words_refuse_paths_and_controls() {
        for ok in ["k1", "2026-12-02.a_b", "a"] {
            assert!(is_word(ok), "{ok}");
        }
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            "a\0b",
            "a b",
            "..",
            &"x".repeat(65),
        ] {
            assert!(!is_word(bad), "{bad:?}");
        }
    }
}
