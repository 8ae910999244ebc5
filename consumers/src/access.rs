//! The access aggregator (`weir consume access`): per-minute rollups per node
//! and object in PostgreSQL (exactly-once effect through the runtime), and hot
//! counters in Redis (best effort, see docs/delivery.md).

use std::sync::Arc;

use rustc_hash::FxHashMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgConnection;
use weir_schemas::{AccessEvent, CacheOutcome};

use crate::runtime::{Aggregator, Applied, Record};
use weir_core::RedisHandle;
use weir_schemas::RedisKeys;

/// Hot counters live this long in Redis: long enough for dashboards, short
/// enough that Redis does not become the archive.
const TOP_TTL_SECS: i64 = 2 * 3600;

/// A node's requests-per-second hash keeps the seconds of this rolling
/// window (and expires this long after its last write): one field per
/// second for ever (about 86 000 per node per day) would make Redis the
/// archive. A node's hash holds at most `RPS_WINDOW_SECS + RPS_AHEAD_SECS + 1`
/// fields whatever the traffic.
pub const RPS_WINDOW_SECS: i64 = 300;

/// Seconds ahead of this process's clock still counted (clock skew between
/// edge nodes and consumers); later ones are dropped, so that events with
/// future timestamps cannot grow the hash either.
pub const RPS_AHEAD_SECS: i64 = 60;

/// Adds a batch's counts to one node's per-second hash and trims it to the
/// window, in one step (inside the batch's MULTI/EXEC).
/// KEYS[1]: the hash. ARGV[1], ARGV[2]: the oldest and newest second kept;
/// ARGV[3]: expiry (s); then (second, count) pairs.
const RPS_SCRIPT: &str = r#"
local oldest, newest = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 4, #ARGV, 2 do
  local s = tonumber(ARGV[i])
  if s >= oldest and s <= newest then
    redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local s = tonumber(f)
  if s == nil or s < oldest or s > newest then
    redis.call('HDEL', KEYS[1], f)
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 0
"#;

/// Identity of one rollup row. Borrows from the batch's events: building a
/// key per event must not allocate (it was a tenth of a member's CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RollupKey<'a> {
    /// Start of the minute.
    pub minute: DateTime<Utc>,
    /// Edge node.
    pub node_id: &'a str,
    /// Object key.
    pub object_key: &'a str,
}

/// Sums of one minute × node × object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollup {
    /// Requests (one per event).
    pub requests: i64,
    /// Body bytes sent.
    pub bytes: i64,
    /// Served from cache (hit, revalidated).
    pub hits: i64,
    /// Needed the origin (miss, stream, coalesced).
    pub misses: i64,
    /// Served stale because the origin failed.
    pub stale: i64,
    /// Status classes.
    pub status: [i64; 4],
    /// Sum of total latency, µs.
    pub latency_sum_us: i64,
    /// Largest total latency, µs.
    pub latency_max_us: i64,
}

impl Rollup {
    /// Adds one event. Sums saturate rather than wrap or panic: the schema
    /// bounds each value so that a real row never gets near `i64::MAX`, and
    /// a row that did would rather stick at the maximum than go negative.
    pub fn add(&mut self, ev: &AccessEvent) {
        self.requests = self.requests.saturating_add(1);
        self.bytes = self.bytes.saturating_add(clamp(ev.bytes_sent));
        match ev.cache {
            CacheOutcome::Hit | CacheOutcome::Revalidated => self.hits += 1,
            CacheOutcome::Miss | CacheOutcome::Stream | CacheOutcome::Coalesced => self.misses += 1,
            CacheOutcome::Stale => self.stale += 1,
            CacheOutcome::Bypass => {}
        }
        if let Some(slot) = (ev.status / 100)
            .checked_sub(2)
            .and_then(|c| self.status.get_mut(c as usize))
        {
            *slot += 1;
        }
        let lat = clamp(ev.total_latency_us);
        self.latency_sum_us = self.latency_sum_us.saturating_add(lat);
        self.latency_max_us = self.latency_max_us.max(lat);
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The minute an event belongs to.
pub fn minute_of(ts: DateTime<Utc>) -> DateTime<Utc> {
    ts.duration_trunc(TimeDelta::minutes(1)).unwrap_or(ts)
}

/// Pre-aggregates a batch: one upsert statement may not touch the same
/// conflict key twice, and fewer rows is the point of rolling up.
pub fn rollup<'a>(
    events: impl IntoIterator<Item = &'a AccessEvent>,
) -> FxHashMap<RollupKey<'a>, Rollup> {
    let mut out: FxHashMap<RollupKey<'a>, Rollup> = FxHashMap::default();
    for ev in events {
        let key = RollupKey {
            minute: minute_of(ev.ts),
            node_id: &ev.node_id,
            object_key: &ev.object_key,
        };
        out.entry(key).or_default().add(ev);
    }
    out
}

/// [`rollup`] as rows sorted by the table's primary key (minute, node,
/// object): PostgreSQL then walks the primary key's btree in order for the
/// batch's upsert instead of jumping around it, and two transactions that
/// touch the same rows lock them in the same order.
pub fn rollup_rows<'a>(
    events: impl IntoIterator<Item = &'a AccessEvent>,
) -> Vec<(RollupKey<'a>, Rollup)> {
    let mut rows: Vec<(RollupKey<'a>, Rollup)> = rollup(events).into_iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// Writes access events into rollups and hot counters.
pub struct AccessAggregator {
    redis: Arc<RedisHandle>,
    keys: RedisKeys,
}

impl AccessAggregator {
    /// An aggregator writing hot counters under `keys`.
    pub fn new(redis: Arc<RedisHandle>, keys: RedisKeys) -> Self {
        AccessAggregator { redis, keys }
    }
}

impl Aggregator for AccessAggregator {
    type Event = AccessEvent;

    const ROLE: &'static str = "access";

    async fn apply(&self, tx: &mut PgConnection, batch: &[Record<AccessEvent>]) -> Applied {
        let rows = rollup_rows(batch.iter().map(|r| &r.event));
        let n = rows.len();
        let mut minute = Vec::with_capacity(n);
        let mut node = Vec::with_capacity(n);
        let mut object = Vec::with_capacity(n);
        let mut cols: [Vec<i64>; 11] = Default::default();
        for (k, r) in rows {
            minute.push(k.minute);
            node.push(k.node_id);
            object.push(k.object_key);
            let vals = [
                r.requests,
                r.bytes,
                r.hits,
                r.misses,
                r.stale,
                r.status[0],
                r.status[1],
                r.status[2],
                r.status[3],
                r.latency_sum_us,
                r.latency_max_us,
            ];
            for (c, v) in cols.iter_mut().zip(vals) {
                c.push(v);
            }
        }
        sqlx::query(
            "INSERT INTO access_minute (minute, node_id, object_key, requests, bytes, hits, misses, stale, \
               status_2xx, status_3xx, status_4xx, status_5xx, latency_sum_us, latency_max_us) \
             SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], \
               $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[]) \
             ON CONFLICT (minute, node_id, object_key) DO UPDATE SET \
               requests = access_minute.requests + EXCLUDED.requests, \
               bytes = access_minute.bytes + EXCLUDED.bytes, \
               hits = access_minute.hits + EXCLUDED.hits, \
               misses = access_minute.misses + EXCLUDED.misses, \
               stale = access_minute.stale + EXCLUDED.stale, \
               status_2xx = access_minute.status_2xx + EXCLUDED.status_2xx, \
               status_3xx = access_minute.status_3xx + EXCLUDED.status_3xx, \
               status_4xx = access_minute.status_4xx + EXCLUDED.status_4xx, \
               status_5xx = access_minute.status_5xx + EXCLUDED.status_5xx, \
               latency_sum_us = access_minute.latency_sum_us + EXCLUDED.latency_sum_us, \
               latency_max_us = GREATEST(access_minute.latency_max_us, EXCLUDED.latency_max_us)",
        )
        .bind(&minute)
        .bind(&node)
        .bind(&object)
        .bind(&cols[0])
        .bind(&cols[1])
        .bind(&cols[2])
        .bind(&cols[3])
        .bind(&cols[4])
        .bind(&cols[5])
        .bind(&cols[6])
        .bind(&cols[7])
        .bind(&cols[8])
        .bind(&cols[9])
        .bind(&cols[10])
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn publish(&self, batch: &[Record<AccessEvent>]) -> Applied {
        // Top objects per minute, and requests per node per second.
        let mut top: FxHashMap<(i64, &str), i64> = FxHashMap::default();
        let mut rps: FxHashMap<(&str, i64), i64> = FxHashMap::default();
        for r in batch {
            let ev = &r.event;
            *top.entry((minute_of(ev.ts).timestamp(), ev.object_key.as_str()))
                .or_default() += 1;
            *rps.entry((ev.node_id.as_str(), ev.ts.timestamp()))
                .or_default() += 1;
        }
        let mut pipe = redis::pipe();
        // MULTI/EXEC: a reader never sees half a batch's counters.
        pipe.atomic();
        // Each minute's key is formatted once, not once per object (a
        // batch touches a few minutes and thousands of objects).
        let mut minute_keys: FxHashMap<i64, String> = FxHashMap::default();
        for ((minute, key), n) in top {
            let zkey = minute_keys
                .entry(minute)
                .or_insert_with(|| self.keys.top_objects(minute));
            pipe.cmd("ZINCRBY").arg(&*zkey).arg(n).arg(key).ignore();
        }
        for zkey in minute_keys.values() {
            pipe.cmd("EXPIRE").arg(zkey).arg(TOP_TTL_SECS).ignore();
        }
        // Per node: its (second, count) pairs, then one script call that
        // adds them and trims the hash to the window.
        let mut per_node: FxHashMap<&str, Vec<i64>> = FxHashMap::default();
        for ((node, second), n) in rps {
            per_node.entry(node).or_default().extend([second, n]);
        }
        let now = Utc::now().timestamp();
        for (node, pairs) in per_node {
            pipe.cmd("EVAL")
                .arg(RPS_SCRIPT)
                .arg(1)
                .arg(self.keys.node_rps(node))
                .arg(now - RPS_WINDOW_SECS)
                .arg(now + RPS_AHEAD_SECS)
                .arg(RPS_WINDOW_SECS)
                .arg(pairs)
                .ignore();
        }
        let mut conn = self.redis.conn().await?;
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(
        node: &str,
        key: &str,
        secs: i64,
        status: u16,
        cache: CacheOutcome,
        bytes: u64,
        lat: u64,
    ) -> AccessEvent {
        let mut e = AccessEvent::example(
            node,
            1,
            DateTime::from_timestamp(1_790_000_000 + secs, 0).unwrap_or_default(),
        );
        e.object_key = key.into();
        e.status = status;
        e.cache = cache;
        e.bytes_sent = bytes;
        e.total_latency_us = lat;
        e
    }

    #[test]
    fn rolls_up_per_minute_node_and_object() {
        // 1_790_000_000 is 20 s past a minute boundary.
        let evs = [
            ev("n1", "a", 0, 200, CacheOutcome::Hit, 100, 10),
            ev("n1", "a", 30, 206, CacheOutcome::Miss, 50, 40),
            ev("n1", "a", 45, 404, CacheOutcome::Bypass, 0, 5),
            ev("n1", "b", 1, 503, CacheOutcome::Stale, 7, 1),
            ev("n2", "a", 2, 304, CacheOutcome::Revalidated, 0, 3),
        ];
        let r = rollup(evs.iter());
        assert_eq!(r.len(), 4);
        let t0 = minute_of(evs[0].ts);
        let a1 = &r[&RollupKey {
            minute: t0,
            node_id: "n1",
            object_key: "a",
        }];
        assert_eq!((a1.requests, a1.bytes, a1.hits, a1.misses), (2, 150, 1, 1));
        assert_eq!(a1.status, [2, 0, 0, 0]);
        assert_eq!((a1.latency_sum_us, a1.latency_max_us), (50, 40));
        let next = &r[&RollupKey {
            minute: t0 + TimeDelta::minutes(1),
            node_id: "n1",
            object_key: "a",
        }];
        assert_eq!((next.requests, next.status), (1, [0, 0, 1, 0]));
        let b = &r[&RollupKey {
            minute: t0,
            node_id: "n1",
            object_key: "b",
        }];
        assert_eq!((b.stale, b.status), (1, [0, 0, 0, 1]));
        let totals: i64 = r.values().map(|x| x.requests).sum();
        assert_eq!(totals, 5);
    }

    #[test]
    fn rows_are_the_rollup_sorted_by_the_primary_key() {
        let evs = [
            ev("n2", "b", 70, 200, CacheOutcome::Hit, 1, 1),
            ev("n1", "b", 0, 200, CacheOutcome::Hit, 2, 1),
            ev("n2", "a", 0, 200, CacheOutcome::Hit, 3, 1),
            ev("n1", "a", 70, 200, CacheOutcome::Hit, 4, 1),
            ev("n1", "b", 1, 200, CacheOutcome::Hit, 5, 1),
        ];
        let rows = rollup_rows(evs.iter());
        let keys: Vec<(i64, &str, &str)> = rows
            .iter()
            .map(|(k, _)| (k.minute.timestamp(), k.node_id, k.object_key))
            .collect();
        let t0 = minute_of(evs[1].ts).timestamp();
        assert_eq!(
            keys,
            [
                (t0, "n1", "b"),
                (t0, "n2", "a"),
                (t0 + 60, "n1", "a"),
                (t0 + 60, "n2", "b"),
            ]
        );
        let map = rollup(evs.iter());
        assert!(rows.iter().all(|(k, r)| map.get(k) == Some(r)));
        assert_eq!(rows[0].1.bytes, 7, "n1/b's two events merged");
    }

    #[test]
    fn sums_saturate_instead_of_overflowing() {
        let huge = [
            ev("n1", "a", 0, 200, CacheOutcome::Hit, u64::MAX - 1, u64::MAX),
            ev("n1", "a", 1, 200, CacheOutcome::Hit, 1 << 62, 1 << 62),
        ];
        let r = rollup(huge.iter());
        let row = r.values().next().expect("one row");
        assert_eq!(
            (row.requests, row.bytes, row.latency_sum_us),
            (2, i64::MAX, i64::MAX)
        );
    }
}
