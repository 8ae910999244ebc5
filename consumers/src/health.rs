//! The health aggregator (`weir consume health`): latest state per node in
//! Redis with an expiry, inventory and coverage sessions in PostgreSQL, and
//! the uptime computed from them.
//!
//! Reports of a decommissioned server (issue 12, M1) are refused: `apply`
//! looks the batch's nodes up in `server_inventory` (one indexed query per
//! batch, in the batch's transaction) and writes nothing for them, and the
//! Redis script checks the decommissioned set (`RedisKeys::decommissioned`)
//! atomically with its write, so a batch that was already past `apply` when
//! the server was decommissioned cannot bring it back into the fleet view.
//! Each refused report is counted once per committed batch
//! (`weir_health_reports_refused_total{reason="decommissioned"}`).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sqlx::PgConnection;
use weir_schemas::HealthEvent;

use crate::runtime::{Aggregator, Applied, Record};
use weir_core::{InternalEvent, RedisHandle};
use weir_schemas::RedisKeys;

pub use weir_schemas::health::EXPIRY_INTERVALS;

/// Sets a node's live state only if it is not older than what Redis already
/// has (a slow member finishing an old batch must not roll the state back),
/// records its last-seen time in the index, and announces the change.
/// A decommissioned node (member of `KEYS[3]`) is left alone: returns 2.
const PUBLISH_SCRIPT: &str = r#"
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then
  return 2
end
local cur = redis.call('ZSCORE', KEYS[2], ARGV[1])
if cur and tonumber(cur) > tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[3])
end
return 1
"#;

/// Writes health events into Redis and PostgreSQL.
pub struct HealthAggregator {
    redis: Arc<RedisHandle>,
    keys: RedisKeys,
    script: redis::Script,
}

impl HealthAggregator {
    /// An aggregator writing under `keys`.
    pub fn new(redis: Arc<RedisHandle>, keys: RedisKeys) -> Self {
        HealthAggregator {
            redis,
            keys,
            script: redis::Script::new(PUBLISH_SCRIPT),
        }
    }
}

/// What one batch contributes for one node.
struct NodeBatch<'a> {
    first: DateTime<Utc>,
    reports: i64,
    latest: &'a HealthEvent,
    events: Vec<&'a HealthEvent>,
}

/// One coverage session: a maximal run of reports without a gap.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Session {
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// Reports added by this batch.
    pub reports: i64,
}

/// Extends or opens sessions with a node's events (sorted by time). A report
/// covers `[ts, ts + interval)`; a report arriving within half an interval of
/// the current session's end extends it, a later one opens a new session.
pub(crate) fn merge_sessions(
    last: Option<(DateTime<Utc>, DateTime<Utc>)>,
    events: &[&HealthEvent],
) -> Vec<Session> {
    let mut out: Vec<Session> = Vec::new();
    let mut cur: Option<Session> = last.map(|(s, e)| Session {
        started_at: s,
        ended_at: e,
        reports: 0,
    });
    for ev in events {
        let interval = ChronoDuration::milliseconds(ev.interval_ms as i64);
        let end = ev.ts + interval;
        match cur.as_mut() {
            Some(c) if ev.ts >= c.started_at && ev.ts <= c.ended_at + interval / 2 => {
                if end > c.ended_at {
                    c.ended_at = end;
                }
                c.reports += 1;
            }
            _ => {
                if let Some(c) = cur.take() {
                    out.push(c);
                }
                cur = Some(Session {
                    started_at: ev.ts,
                    ended_at: end,
                    reports: 1,
                });
            }
        }
    }
    if let Some(c) = cur {
        out.push(c);
    }
    // The pre-existing session is only rewritten if this batch touched it.
    out.retain(|s| s.reports > 0);
    out
}

impl Aggregator for HealthAggregator {
    type Event = HealthEvent;

    const ROLE: &'static str = "health";

    async fn apply(&self, tx: &mut PgConnection, batch: &[Record<HealthEvent>]) -> Applied {
        // Decommissioned servers' reports are refused: nothing of them is
        // written (they are counted in `publish`, once the batch committed).
        let mut seen: Vec<&str> = batch.iter().map(|r| r.event.node_id.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        let refused: Vec<String> = sqlx::query_scalar(
            "SELECT node_id FROM server_inventory \
             WHERE status = 'decommissioned' AND node_id = ANY($1)",
        )
        .bind(&seen)
        .fetch_all(&mut *tx)
        .await?;
        // Pre-aggregate per node: one upsert statement may not touch the same
        // row twice.
        let mut nodes: HashMap<&str, NodeBatch<'_>> = HashMap::new();
        for r in batch.iter().filter(|r| !refused.contains(&r.event.node_id)) {
            let ev = &r.event;
            let e = nodes.entry(ev.node_id.as_str()).or_insert(NodeBatch {
                first: ev.ts,
                reports: 0,
                latest: ev,
                events: Vec::new(),
            });
            e.reports += 1;
            e.first = e.first.min(ev.ts);
            if (ev.ts, ev.seq) >= (e.latest.ts, e.latest.seq) {
                e.latest = ev;
            }
            e.events.push(ev);
        }
        if nodes.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = nodes.keys().map(|s| s.to_string()).collect();

        let mut first_seen = Vec::with_capacity(ids.len());
        let mut last_seen = Vec::with_capacity(ids.len());
        let mut reports = Vec::with_capacity(ids.len());
        let mut last_seq = Vec::with_capacity(ids.len());
        let mut agent = Vec::with_capacity(ids.len());
        let mut service = Vec::with_capacity(ids.len());
        let mut endpoint = Vec::with_capacity(ids.len());
        let mut cdn = Vec::with_capacity(ids.len());
        let mut interval = Vec::with_capacity(ids.len());
        let mut last_event = Vec::with_capacity(ids.len());
        for id in &ids {
            let n = &nodes[id.as_str()];
            first_seen.push(n.first);
            last_seen.push(n.latest.ts);
            reports.push(n.reports);
            last_seq.push(n.latest.seq as i64);
            agent.push(n.latest.agent_id.clone());
            service.push(n.latest.service.clone());
            endpoint.push(n.latest.endpoint.clone());
            cdn.push(n.latest.cdn_type.clone());
            interval.push(n.latest.interval_ms as i64);
            last_event.push(serde_json::to_value(n.latest).unwrap_or_default());
        }
        sqlx::query(
            "INSERT INTO servers (node_id, first_seen, last_seen, reports, last_seq, agent_id, service, endpoint, cdn_type, interval_ms, last_event) \
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::jsonb[]) \
             ON CONFLICT (node_id) DO UPDATE SET \
               first_seen = LEAST(servers.first_seen, EXCLUDED.first_seen), \
               reports = servers.reports + EXCLUDED.reports, \
               last_seen = GREATEST(servers.last_seen, EXCLUDED.last_seen), \
               last_seq = CASE WHEN EXCLUDED.last_seen >= servers.last_seen THEN EXCLUDED.last_seq ELSE servers.last_seq END, \
               agent_id = CASE WHEN EXCLUDED.last_seen >= servers.last_seen THEN EXCLUDED.agent_id ELSE servers.agent_id END, \
               service = CASE WHEN EXCLUDED.last_seen >= servers.last_seen THEN EXCLUDED.service ELSE servers.service END, \
               endpoint = CASE WHEN EXCLUDED.last_seen >= servers.last_seen THEN EXCLUDED.endpoint ELSE servers.endpoint END, \
               cdn_type = CASE WHEN EXCLUDED.last_seen >= servers.last_seen THEN EXCLUDED.cdn_type ELSE servers.cdn_type END, \
               interval_ms = CASE WHEN EXCLUDED.last_seen >= servers.last_seen THEN EXCLUDED.interval_ms ELSE servers.interval_ms END, \
               last_event = CASE WHEN EXCLUDED.last_seen >= servers.last_seen THEN EXCLUDED.last_event ELSE servers.last_event END, \
               updated_at = now()",
        )
        .bind(&ids)
        .bind(&first_seen)
        .bind(&last_seen)
        .bind(&reports)
        .bind(&last_seq)
        .bind(&agent)
        .bind(&service)
        .bind(&endpoint)
        .bind(&cdn)
        .bind(&interval)
        .bind(&last_event)
        .execute(&mut *tx)
        .await?;

        // Coverage sessions: continue each node's latest session.
        let rows: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT DISTINCT ON (node_id) node_id, started_at, ended_at FROM node_sessions \
             WHERE node_id = ANY($1) ORDER BY node_id, started_at DESC",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let last: HashMap<String, (DateTime<Utc>, DateTime<Utc>)> =
            rows.into_iter().map(|(n, s, e)| (n, (s, e))).collect();
        let (mut s_node, mut s_start, mut s_end, mut s_reports) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, n) in nodes.iter_mut() {
            n.events.sort_by_key(|e| (e.ts, e.seq));
            for s in merge_sessions(last.get(*id).copied(), &n.events) {
                s_node.push(id.to_string());
                s_start.push(s.started_at);
                s_end.push(s.ended_at);
                s_reports.push(s.reports);
            }
        }
        sqlx::query(
            "INSERT INTO node_sessions (node_id, started_at, ended_at, reports) \
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[]) \
             ON CONFLICT (node_id, started_at) DO UPDATE SET \
               ended_at = GREATEST(node_sessions.ended_at, EXCLUDED.ended_at), \
               reports = node_sessions.reports + EXCLUDED.reports",
        )
        .bind(&s_node)
        .bind(&s_start)
        .bind(&s_end)
        .bind(&s_reports)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn publish(&self, batch: &[Record<HealthEvent>]) -> Applied {
        let mut latest: HashMap<&str, (&HealthEvent, u64)> = HashMap::new();
        for r in batch {
            let e = latest
                .entry(r.event.node_id.as_str())
                .or_insert((&r.event, 0));
            e.1 += 1;
            if (r.event.ts, r.event.seq) >= (e.0.ts, e.0.seq) {
                e.0 = &r.event;
            }
        }
        let latest: Vec<(&str, (&HealthEvent, u64))> = latest.into_iter().collect();
        let mut conn = self.redis.conn().await?;
        let now = Utc::now();
        let mut pipe = redis::pipe();
        // Load the script in the same round trip: EVALSHA inside a pipeline
        // has no fallback, and a restarted Redis has forgotten every script.
        pipe.cmd("SCRIPT").arg("LOAD").arg(PUBLISH_SCRIPT).ignore();
        for &(id, (ev, _)) in &latest {
            let expiry = ev.interval_ms as i64 * EXPIRY_INTERVALS;
            let age = (now - ev.ts).num_milliseconds().max(0);
            let ttl = (expiry - age).max(0);
            let json = serde_json::to_string(ev).unwrap_or_default();
            pipe.invoke_script(
                self.script
                    .key(self.keys.node(id))
                    .key(self.keys.nodes())
                    .key(self.keys.decommissioned())
                    .arg(id)
                    .arg(ev.ts.timestamp_millis())
                    .arg(json)
                    .arg(ttl)
                    .arg(self.keys.health_channel()),
            );
        }
        let results: Vec<i64> = pipe.query_async(&mut conn).await?;
        let refused: u64 = latest
            .iter()
            .zip(&results)
            .filter(|(_, r)| **r == 2)
            .map(|((_, (_, n)), _)| n)
            .sum();
        if refused > 0 {
            ReportsRefused {
                reason: "decommissioned",
                reports: refused,
            }
            .emit();
        }
        Ok(())
    }
}

/// Reports of a node the health group will not take (a decommissioned
/// server), counted once per committed batch.
struct ReportsRefused {
    reason: &'static str,
    reports: u64,
}

impl InternalEvent for ReportsRefused {
    fn emit(self) {
        tracing::debug!(
            reason = self.reason,
            reports = self.reports,
            "health reports refused"
        );
        metrics::counter!("weir_health_reports_refused_total", "reason" => self.reason)
            .increment(self.reports);
    }
}

/// Help text of the health group's own metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "weir_health_reports_refused_total",
        "Health reports the health group refused, by reason (decommissioned: the server was decommissioned in the inventory)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + s, 0).unwrap_or_default()
    }

    fn ev(s: i64) -> HealthEvent {
        HealthEvent::example("n1", s as u64 + 1, t(s))
    }

    #[test]
    fn consecutive_reports_make_one_session() {
        let evs: Vec<HealthEvent> = (0..60).map(ev).collect();
        let refs: Vec<&HealthEvent> = evs.iter().collect();
        let s = merge_sessions(None, &refs);
        assert_eq!(
            s,
            vec![Session {
                started_at: t(0),
                ended_at: t(60),
                reports: 60
            }]
        );
    }

    #[test]
    fn a_gap_opens_a_new_session_and_a_batch_continues_the_last() {
        let evs: Vec<HealthEvent> = [0, 1, 2, 10, 11].into_iter().map(ev).collect();
        let refs: Vec<&HealthEvent> = evs.iter().collect();
        let s = merge_sessions(None, &refs);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].started_at, s[0].ended_at), (t(0), t(3)));
        assert_eq!(
            (s[1].started_at, s[1].ended_at, s[1].reports),
            (t(10), t(12), 2)
        );
        // The next batch extends the stored session rather than opening one.
        let next = [ev(12)];
        let refs: Vec<&HealthEvent> = next.iter().collect();
        let s = merge_sessions(Some((t(10), t(12))), &refs);
        assert_eq!(
            s,
            vec![Session {
                started_at: t(10),
                ended_at: t(13),
                reports: 1
            }]
        );
    }
}
