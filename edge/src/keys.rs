//! Object keys from request paths: percent-decoded exactly once, then checked.
//!
//! The path is decoded once and only once so that `%2F` inside a key stays a
//! `/` in the key and `%252F` stays a literal `%2F`: decoding twice would let a
//! client reach a different object than the one it named. `+` is not a space
//! in a path (that is form encoding), so it is kept.

use percent_encoding::percent_decode_str;

/// S3's own limit on key length, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a path is not an object key. Each is answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Nothing after the slash (or after the bucket).
    #[error("the path names no object")]
    Empty,
    /// The decoded bytes are not UTF-8.
    #[error("the key is not valid UTF-8 once decoded")]
    NotUtf8,
    /// A NUL byte.
    #[error("the key contains a NUL byte")]
    Nul,
    /// A `..` segment, which some origins and file tiers resolve.
    #[error("the key contains a `..` segment")]
    DotDot,
    /// Longer than S3 allows.
    #[error("the key is longer than {MAX_KEY_BYTES} bytes")]
    TooLong,
    /// `/{bucket}/{key}` addressing with a bucket this edge does not serve.
    #[error("unknown bucket")]
    UnknownBucket,
}

/// Where an object lives: bucket and key, both decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    /// Bucket.
    pub bucket: String,
    /// Key inside the bucket.
    pub key: String,
}

impl ObjectKey {
    /// One string naming the object in caches and Redis: bucket and key
    /// separated by a character keys cannot contain (NUL is rejected).
    pub fn cache_id(&self) -> String {
        let mut id = String::with_capacity(self.bucket.len() + 1 + self.key.len());
        id.push_str(&self.bucket);
        id.push('\0');
        id.push_str(&self.key);
        id
    }
}

/// Decodes a request path (as sent, still percent-encoded, with its leading
/// `/`). With `buckets` empty every path is a key of `default_bucket`;
/// otherwise the first segment names one of `buckets`.
pub fn object_key(
    raw_path: &str,
    default_bucket: &str,
    buckets: &[String],
) -> Result<ObjectKey, KeyError> {
    let raw = raw_path.strip_prefix('/').unwrap_or(raw_path);
    let (bucket, raw_key) = if buckets.is_empty() {
        (default_bucket.to_string(), raw)
    } else {
        let (b, k) = raw.split_once('/').ok_or(KeyError::Empty)?;
        let b = decode(b)?;
        if !buckets.contains(&b) {
            return Err(KeyError::UnknownBucket);
        }
        (b, k)
    };
    // Checked on the raw form too: a key can never be longer decoded than
    // encoded, and this bounds the work done on hostile input.
    if raw_key.len() > 3 * MAX_KEY_BYTES {
        return Err(KeyError::TooLong);
    }
    let key = decode(raw_key)?;
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong);
    }
    if key.contains('\0') {
        return Err(KeyError::Nul);
    }
    if key.split('/').any(|seg| seg == "..") {
        return Err(KeyError::DotDot);
    }
    Ok(ObjectKey { bucket, key })
}

fn decode(s: &str) -> Result<String, KeyError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| KeyError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> Result<String, KeyError> {
        object_key(p, "weir", &[]).map(|k| k.key)
    }

    #[test]
    fn decodes_exactly_once() {
        assert_eq!(
            key("/ARMY%20OF%20THIEVES.mp4").as_deref(),
            Ok("ARMY OF THIEVES.mp4")
        );
        assert_eq!(key("/a%2Fb/c").as_deref(), Ok("a/b/c"));
        assert_eq!(key("/a%252Fb").as_deref(), Ok("a%2Fb"));
        assert_eq!(key("/a+b").as_deref(), Ok("a+b"));
        assert_eq!(
            key("/%E6%97%A5%E6%9C%AC/%C3%A9t%C3%A9").as_deref(),
            Ok("日本/été")
        );
        assert_eq!(key("/日本").as_deref(), Ok("日本"));
    }

    #[test]
    fn rejects_what_must_not_reach_the_origin() {
        assert_eq!(key("/"), Err(KeyError::Empty));
        assert_eq!(key("/a/../b"), Err(KeyError::DotDot));
        assert_eq!(key("/a/%2E%2E/b"), Err(KeyError::DotDot));
        assert_eq!(key("/..%2Fetc"), Err(KeyError::DotDot));
        assert_eq!(key("/a%00b"), Err(KeyError::Nul));
        assert_eq!(key("/%FF"), Err(KeyError::NotUtf8));
        assert_eq!(
            key(&format!("/{}", "k".repeat(1025))),
            Err(KeyError::TooLong)
        );
        assert!(key(&format!("/{}", "k".repeat(1024))).is_ok());
        // `..` inside a name is a name.
        assert_eq!(key("/a..b").as_deref(), Ok("a..b"));
    }

    #[test]
    fn bucket_in_path_when_configured() {
        let buckets = vec!["one".to_string(), "two".to_string()];
        let k = object_key("/two/x/y", "weir", &buckets).expect("valid");
        assert_eq!((k.bucket.as_str(), k.key.as_str()), ("two", "x/y"));
        assert_eq!(
            object_key("/three/x", "weir", &buckets),
            Err(KeyError::UnknownBucket)
        );
        assert_eq!(object_key("/one", "weir", &buckets), Err(KeyError::Empty));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_path_decodes_to_a_safe_key_or_an_error(p in "/?[^\u{0}]{0,80}|/(%[0-9A-Fa-f]{2}|[a-z./]){0,40}") {
            if let Ok(k) = object_key(&p, "weir", &[]) {
                prop_assert!(!k.key.is_empty() && k.key.len() <= MAX_KEY_BYTES);
                prop_assert!(!k.key.contains('\0'));
                prop_assert!(!k.key.split('/').any(|s| s == ".."));
            }
        }

        #[test]
        fn encoding_a_key_and_decoding_it_gives_it_back(key in "[^\u{0}]{1,60}") {
            prop_assume!(!key.split('/').any(|s| s == ".."));
            let path = format!(
                "/{}",
                percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC)
            );
            prop_assert_eq!(object_key(&path, "weir", &[]).map(|k| k.key), Ok(key));
        }
    }
}
