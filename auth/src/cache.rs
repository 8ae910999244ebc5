//! Tokens already verified, so that an admin client sending the same token
//! on every request pays for one signature check and (at most) one Redis
//! round trip per `auth.revocation_cache`, not one of each per request.
//!
//! What is cached, and for how long:
//! - the claims of a token whose signature verified, while the key set it
//!   was verified with is still the one loaded (a rotation that drops the
//!   key empties it); the time checks (`exp`, `nbf`, `iat`) run again on
//!   every hit;
//! - "not revoked", for `auth.revocation_cache` (at most one second) from
//!   the moment Redis was asked. A logout on this instance removes the
//!   entry at once (and a check that was under way when it happened does
//!   not put it back); one on another instance is seen when the entry's
//!   standing expires. With Redis unreachable, admin requests fail closed
//!   once it has.
//!
//! Only tokens that verified get in, so a flood of forged tokens cannot
//! fill it; it holds at most [`CAPACITY`] tokens and forgets the expired
//! ones first when full.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::keys::KeySet;
use crate::token::Claims;

/// Most tokens held; each is at most `auth.max_token_len` bytes.
pub const CAPACITY: usize = 4096;

struct Entry {
    claims: Claims,
    /// The key set the signature was checked with.
    keys: Arc<KeySet>,
    /// When Redis last said "not revoked" (asked at that instant or later).
    good_since: Option<Instant>,
}

/// A hit: the claims, and whether the standing is still fresh.
pub(crate) struct Hit {
    pub claims: Claims,
    pub fresh: bool,
}

/// The verified-token cache of one server.
pub(crate) struct TokenCache {
    entries: Mutex<HashMap<Box<str>, Entry>>,
    standing_for: Duration,
    /// Bumped by every local logout: a standing asked for before it is not
    /// stored.
    epoch: AtomicU64,
}

impl TokenCache {
    pub fn new(standing_for: Duration) -> Self {
        TokenCache {
            entries: Mutex::new(HashMap::new()),
            standing_for,
            epoch: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The claims of `token` if it verified with `keys` (the set loaded
    /// now).
    pub fn get(&self, token: &str, keys: &Arc<KeySet>) -> Option<Hit> {
        let map = self.lock();
        let e = map.get(token)?;
        if !Arc::ptr_eq(&e.keys, keys) {
            return None;
        }
        let fresh = e
            .good_since
            .is_some_and(|t| t.elapsed() < self.standing_for);
        Some(Hit {
            claims: e.claims.clone(),
            fresh,
        })
    }

    /// The current epoch, read before Redis is asked.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Remembers `token` as verified with `keys` and, if `good_since` is
    /// set and no logout happened here since `epoch`, as not revoked since
    /// then.
    pub fn put(
        &self,
        token: &str,
        claims: &Claims,
        keys: Arc<KeySet>,
        good_since: Option<Instant>,
        epoch: u64,
        now_secs: u64,
    ) {
        let mut map = self.lock();
        let good_since = good_since.filter(|_| self.epoch.load(Ordering::Acquire) == epoch);
        if let Some(e) = map.get_mut(token) {
            if Arc::ptr_eq(&e.keys, &keys) {
                if good_since.is_some() {
                    e.good_since = good_since;
                }
                return;
            }
        }
        if map.len() >= CAPACITY {
            map.retain(|_, e| e.claims.exp > now_secs);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(
            token.into(),
            Entry {
                claims: claims.clone(),
                keys,
                good_since,
            },
        );
    }

    /// A logout here: `jti` (or, with `everyone`, every token of `subject`)
    /// is asked about again, and checks under way are not stored.
    pub fn forget(&self, jti: &str, subject: &str, everyone: bool) {
        let mut map = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        map.retain(|_, e| {
            if everyone {
                e.claims.sub != subject
            } else {
                e.claims.jti != jti
            }
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyFile;
    use crate::token::Scope;

    fn keys() -> Arc<KeySet> {
        let mut f = KeyFile::default();
        f.rotate(crate::Alg::EdDSA, "now").expect("key");
        Arc::new(KeySet::from_file(&f).expect("set"))
    }

    fn claims(jti: &str, sub: &str, exp: u64) -> Claims {
        Claims {
            iss: "weir".into(),
            sub: sub.into(),
            aud: "weir-admin".into(),
            exp,
            iat: 0,
            nbf: None,
            jti: jti.into(),
            scope: Scope::Admin,
        }
    }

    #[test]
    fn a_hit_needs_the_same_key_set_and_a_fresh_standing() {
        let c = TokenCache::new(Duration::from_millis(200));
        let (k1, k2) = (keys(), keys());
        let e = c.epoch();
        c.put(
            "t1",
            &claims("j1", "alice", 100),
            k1.clone(),
            Some(Instant::now()),
            e,
            0,
        );
        let hit = c.get("t1", &k1).expect("hit");
        assert!(hit.fresh);
        assert_eq!(hit.claims.jti, "j1");
        assert!(c.get("t1", &k2).is_none(), "another key set: verify again");
        assert!(c.get("t2", &k1).is_none());
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            !c.get("t1", &k1).expect("still verified").fresh,
            "standing expired"
        );
    }

    #[test]
    fn a_check_that_raced_a_logout_is_not_kept() {
        let c = TokenCache::new(Duration::from_secs(1));
        let k = keys();
        let before = c.epoch();
        c.forget("j1", "alice", false);
        c.put(
            "t1",
            &claims("j1", "alice", 100),
            k.clone(),
            Some(Instant::now()),
            before,
            0,
        );
        assert!(
            !c.get("t1", &k).expect("verified").fresh,
            "Redis was asked before the logout"
        );
        let e = c.epoch();
        c.put(
            "t1",
            &claims("j1", "alice", 100),
            k.clone(),
            Some(Instant::now()),
            e,
            0,
        );
        assert!(c.get("t1", &k).expect("verified").fresh);
    }

    #[test]
    fn logout_forgets_the_token_or_every_token_of_its_subject() {
        let c = TokenCache::new(Duration::from_secs(1));
        let k = keys();
        for (t, j, s) in [
            ("t1", "j1", "alice"),
            ("t2", "j2", "alice"),
            ("t3", "j3", "bob"),
        ] {
            c.put(
                t,
                &claims(j, s, 100),
                k.clone(),
                Some(Instant::now()),
                c.epoch(),
                0,
            );
        }
        c.forget("j1", "alice", false);
        assert!(c.get("t1", &k).is_none());
        assert!(c.get("t2", &k).is_some());
        c.forget("j2", "alice", true);
        assert!(c.get("t2", &k).is_none());
        assert!(c.get("t3", &k).is_some());
    }

    #[test]
    fn it_stays_bounded_and_drops_expired_tokens_first() {
        let c = TokenCache::new(Duration::from_secs(1));
        let k = keys();
        for i in 0..CAPACITY {
            let exp = if i % 2 == 0 { 10 } else { 1000 };
            c.put(
                &format!("t{i}"),
                &claims(&format!("j{i}"), "a", exp),
                k.clone(),
                None,
                0,
                0,
            );
        }
        assert_eq!(c.len(), CAPACITY);
        c.put("new", &claims("jn", "a", 1000), k.clone(), None, 0, 500);
        assert_eq!(
            c.len(),
            CAPACITY / 2 + 1,
            "expired ones went, live ones stayed"
        );
        assert!(c.get("t1", &k).is_some());
        assert!(c.get("t0", &k).is_none());
    }
}
