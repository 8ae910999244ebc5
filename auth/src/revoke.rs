//! The deny-list: revoked tokens and per-subject "not before" times, in
//! Redis, where every center and edge instance reads them.
//!
//! A check is one pipelined round trip (the token's `(iss, jti)` marker and
//! its subject's "not before"); its "good" answer is trusted for
//! `auth.revocation_cache` (see `cache.rs`). A revoked marker lives `exp − now + leeway` seconds: until the
//! token would be refused as expired anyway (with `exp − now` it would be
//! valid again inside the leeway).

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use weir_core::RedisHandle;
use weir_schemas::RedisKeys;

use crate::token::Claims;

/// Reads and writes the deny-list.
#[derive(Clone)]
pub struct Revocations {
    redis: Arc<RedisHandle>,
    keys: RedisKeys,
    leeway: u64,
    max_ttl: u64,
}

/// Whether a verified token is still good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Not revoked.
    Good,
    /// Its `jti` is on the deny-list, or it was issued at or before its
    /// subject's "not before".
    Revoked,
}

impl Revocations {
    /// The deny-list under `keys`' prefix; `leeway` and `max_ttl` as in
    /// `[auth]`.
    pub fn new(
        redis: Arc<RedisHandle>,
        keys: RedisKeys,
        leeway: Duration,
        max_ttl: Duration,
    ) -> Self {
        Revocations {
            redis,
            keys,
            leeway: leeway.as_secs(),
            max_ttl: max_ttl.as_secs(),
        }
    }

    /// Whether `claims` have been revoked. An error means Redis could not
    /// say: the caller must refuse (fail closed).
    pub async fn standing(&self, claims: &Claims) -> Result<Standing, redis::RedisError> {
        let mut conn = self.redis.conn().await?;
        let (revoked, not_before): (bool, Option<u64>) = redis::pipe()
            .exists(self.keys.auth_revoked(&claims.iss, &claims.jti))
            .get(self.keys.auth_not_before(&claims.sub))
            .query_async(&mut conn)
            .await?;
        if revoked || not_before.is_some_and(|nb| claims.iat <= nb) {
            return Ok(Standing::Revoked);
        }
        Ok(Standing::Good)
    }

    /// Puts `claims`' `(iss, jti)` on the deny-list until `exp + leeway`;
    /// returns how many seconds it stays there.
    pub async fn revoke(&self, claims: &Claims, now: u64) -> Result<u64, redis::RedisError> {
        let ttl = (claims.exp + self.leeway).saturating_sub(now).max(1);
        let mut conn = self.redis.conn().await?;
        let () = conn
            .set_ex(self.keys.auth_revoked(&claims.iss, &claims.jti), 1u8, ttl)
            .await?;
        Ok(ttl)
    }

    /// Refuses every token of `subject` issued at or before `now` (log out
    /// everywhere). Kept for `auth.max_ttl + leeway`, the longest any such
    /// token can live.
    pub async fn revoke_subject(&self, subject: &str, now: u64) -> Result<(), redis::RedisError> {
        let mut conn = self.redis.conn().await?;
        let () = conn
            .set_ex(
                self.keys.auth_not_before(subject),
                now,
                self.max_ttl + self.leeway,
            )
            .await?;
        Ok(())
    }
}
