//! The key file: the current signing key and the previous one, each with its
//! `kid` and exactly one algorithm.
//!
//! `weir auth keygen` makes a new key the current one and keeps the old
//! current as the previous; older keys are dropped. Verifiers accept both,
//! so tokens signed just before a rotation keep working until they expire,
//! and a second rotation retires them. The file holds secrets: it is written
//! with mode 0600 through a temporary file and a rename, so a reader never
//! sees half of it.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::is_word;

/// The algorithms a key may have. Nothing else (no `none`, no RSA) can be
/// configured, and each key verifies with its own algorithm only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Alg {
    /// Ed25519 signatures (the default): verifiers need only the public key.
    EdDSA,
    /// HMAC-SHA256 with a 256-bit random secret: every verifier holds the
    /// secret, which can also sign.
    HS256,
}

impl Alg {
    /// The algorithm as jsonwebtoken names it.
    pub fn jwt(self) -> Algorithm {
        match self {
            Alg::EdDSA => Algorithm::EdDSA,
            Alg::HS256 => Algorithm::HS256,
        }
    }

    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
        }
    }
}

/// One key as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    /// Key id, put in every token's header.
    pub kid: String,
    /// Its one algorithm.
    pub alg: Alg,
    /// Base64: the PKCS#8 DER private key (EdDSA) or the secret (HS256).
    pub secret: String,
    /// When it was made (RFC 3339), for the operator.
    pub created: String,
}

/// The key file's content: `keys[0]` is current, `keys[1]` (if any) the
/// previous.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Current first.
    pub keys: Vec<StoredKey>,
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The content is not a key file.
    #[error("{path}: not a Weir key file: {detail}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// No randomness from the OS.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(b)
}

impl KeyFile {
    /// Reads `path`; a missing file is an empty key file.
    pub fn read(path: &Path) -> Result<KeyFile, KeyError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KeyFile::default()),
            Err(source) => {
                return Err(KeyError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let invalid = |detail: String| KeyError::Invalid {
            path: path.display().to_string(),
            detail,
        };
        if text.len() > 64 * 1024 {
            return Err(invalid("larger than 64 KiB".into()));
        }
        let file: KeyFile = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        // Every key must load: a half-usable file is an operator's mistake
        // to see now, not at the first request.
        KeySet::from_file(&file).map_err(invalid)?;
        Ok(file)
    }

    /// A new key of `alg` becomes current; the current one becomes the
    /// previous; any older key is dropped.
    pub fn rotate(&mut self, alg: Alg, now: &str) -> Result<&StoredKey, KeyError> {
        let kid = random::<8>()?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let secret = match alg {
            Alg::EdDSA => {
                // PKCS#8 v1 (the seed alone): what OpenSSL and Python's
                // cryptography read everywhere; v2 with the public key is
                // refused by some of them.
                let seed = ed25519_dalek::pkcs8::KeypairBytes {
                    secret_key: random::<32>()?,
                    public_key: None,
                };
                let der = seed
                    .to_pkcs8_der()
                    .map_err(|e| KeyError::Random(format!("encoding the key: {e}")))?;
                STANDARD.encode(der.as_bytes())
            }
            Alg::HS256 => STANDARD.encode(random::<32>()?),
        };
        self.keys.insert(
            0,
            StoredKey {
                kid,
                alg,
                secret,
                created: now.to_string(),
            },
        );
        self.keys.truncate(2);
        Ok(&self.keys[0])
    }

    /// Writes the file with mode 0600 (directory created 0700), atomically.
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io)?;
            }
            #[cfg(not(unix))]
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let text = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f = opts.open(&tmp).map_err(io)?;
        let written = f.write_all(&text).and_then(|_| f.sync_all());
        if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(())
    }
}

/// One usable key.
pub struct Key {
    /// Its id.
    pub kid: String,
    /// Its one algorithm.
    pub alg: Alg,
    pub(crate) encoding: EncodingKey,
    pub(crate) decoding: DecodingKey,
    /// Raw Ed25519 public key (absent for HS256, whose secret is never
    /// published).
    public: Option<[u8; 32]>,
}

/// The keys a process signs and verifies with, looked up by `kid` (a map
/// key, never a file name).
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, Key>,
    current: Option<String>,
}

impl KeySet {
    /// Loads every key of `file`.
    pub fn from_file(file: &KeyFile) -> Result<KeySet, String> {
        let mut set = KeySet::default();
        for (i, k) in file.keys.iter().enumerate() {
            if !is_word(&k.kid) {
                return Err(format!("key {i}: kid {:?} is not a plain word", k.kid));
            }
            let secret = STANDARD
                .decode(&k.secret)
                .map_err(|e| format!("key {}: secret is not base64: {e}", k.kid))?;
            let key = match k.alg {
                Alg::EdDSA => {
                    let sk = ed25519_dalek::SigningKey::from_pkcs8_der(&secret)
                        .map_err(|e| format!("key {}: not an Ed25519 PKCS#8 key: {e}", k.kid))?;
                    let public = sk.verifying_key().to_bytes();
                    Key {
                        kid: k.kid.clone(),
                        alg: k.alg,
                        encoding: EncodingKey::from_ed_der(&secret),
                        decoding: DecodingKey::from_ed_der(&public),
                        public: Some(public),
                    }
                }
                Alg::HS256 => {
                    if secret.len() < 32 {
                        return Err(format!("key {}: an HS256 secret needs 256 bits", k.kid));
                    }
                    Key {
                        kid: k.kid.clone(),
                        alg: k.alg,
                        encoding: EncodingKey::from_secret(&secret),
                        decoding: DecodingKey::from_secret(&secret),
                        public: None,
                    }
                }
            };
            if set.keys.insert(k.kid.clone(), key).is_some() {
                return Err(format!("kid {} appears twice", k.kid));
            }
            if i == 0 {
                set.current = Some(k.kid.clone());
            }
        }
        Ok(set)
    }

    /// The key with id `kid`.
    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.get(kid)
    }

    /// The key new tokens are signed with.
    pub fn current(&self) -> Option<&Key> {
        self.current.as_deref().and_then(|k| self.keys.get(k))
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The public keys as a JWKS document (Ed25519 keys only; an HS256
    /// secret is never published).
    pub fn jwks(&self) -> serde_json::Value {
        let mut keys: Vec<_> = self
            .keys
            .values()
            .filter_map(|k| {
                let x = k.public?;
                Some(json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "use": "sig",
                    "alg": "EdDSA",
                    "kid": k.kid,
                    "x": URL_SAFE_NO_PAD.encode(x),
                }))
            })
            .collect();
        keys.sort_by(|a, b| a["kid"].as_str().cmp(&b["kid"].as_str()));
        json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_previous_key_and_drops_older_ones() {
        let mut f = KeyFile::default();
        let a = f.rotate(Alg::EdDSA, "t1").expect("key").kid.clone();
        let b = f.rotate(Alg::HS256, "t2").expect("key").kid.clone();
        let c = f.rotate(Alg::EdDSA, "t3").expect("key").kid.clone();
        let set = KeySet::from_file(&f).expect("loads");
        assert_eq!(set.current().expect("current").kid, c);
        assert!(set.get(&b).is_some());
        assert!(set.get(&a).is_none(), "a second rotation retires a key");
        // Only the Ed25519 key is published.
        let jwks = set.jwks();
        assert_eq!(jwks["keys"].as_array().expect("keys").len(), 1);
        assert_eq!(jwks["keys"][0]["kid"], c.as_str());
        assert!(!jwks.to_string().contains(&f.keys[1].secret));
    }

    #[test]
    fn a_file_is_written_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("weir-keys-{}", uuid::Uuid::new_v4()));
        let path = dir.join("sub").join("keys.json");
        assert!(KeyFile::read(&path)
            .expect("missing is empty")
            .keys
            .is_empty());
        let mut f = KeyFile::default();
        f.rotate(Alg::EdDSA, "now").expect("key");
        f.write(&path).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = KeyFile::read(&path).expect("read");
        assert_eq!(back.keys[0].kid, f.keys[0].kid);
        std::fs::write(
            &path,
            b"{\"keys\":[{\"kid\":\"../x\",\"alg\":\"HS256\",\"secret\":\"\",\"created\":\"\"}]}",
        )
        .expect("write");
        assert!(KeyFile::read(&path).is_err());
        std::fs::write(
            &path,
            b"{\"keys\":[{\"kid\":\"a\",\"alg\":\"none\",\"secret\":\"\",\"created\":\"\"}]}",
        )
        .expect("write");
        assert!(
            KeyFile::read(&path).is_err(),
            "alg none cannot be configured"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
