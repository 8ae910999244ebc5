//! The health aggregator (`weir consume health`): latest state per node in
//! Redis with an expiry, inventory and coverage sessions in PostgreSQL, and
//! the uptime computed from them.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use weir_schemas::HealthEvent;

use crate::runtime::{Aggregator, Record, StoreError};
use crate::stores::{RedisHandle, RedisKeys};

/// A node's live-state key lives this many reporting intervals: one or two
/// lost reports do not mark a node down, three do.
pub const EXPIRY_INTERVALS: i64 = 3;

/// Sets a node's live state only if it is not older than what Redis already
/// has (a slow member finishing an old batch must not roll the state back),
/// records its last-seen time in the index, and announces the change.
const PUBLISH_SCRIPT: &str = r#"
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

    fn role(&self) -> &'static str {
        "health"
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        batch: &[Record<HealthEvent>],
    ) -> Result<(), StoreError> {
        // Pre-aggregate per node: one upsert statement may not touch the same
        // row twice.
        let mut nodes: HashMap<&str, NodeBatch<'_>> = HashMap::new();
        for r in batch {
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

    async fn publish(&self, batch: &[Record<HealthEvent>]) -> Result<(), StoreError> {
        let mut latest: HashMap<&str, &HealthEvent> = HashMap::new();
        for r in batch {
            let e = latest.entry(r.event.node_id.as_str()).or_insert(&r.event);
            if (r.event.ts, r.event.seq) >= (e.ts, e.seq) {
                *e = &r.event;
            }
        }
        let mut conn = self.redis.conn().await?;
        let now = Utc::now();
        let mut pipe = redis::pipe();
        // Load the script in the same round trip: EVALSHA inside a pipeline
        // has no fallback, and a restarted Redis has forgotten every script.
        pipe.cmd("SCRIPT").arg("LOAD").arg(PUBLISH_SCRIPT).ignore();
        for (id, ev) in latest {
            let expiry = ev.interval_ms as i64 * EXPIRY_INTERVALS;
            let age = (now - ev.ts).num_milliseconds().max(0);
            let ttl = (expiry - age).max(0);
            let json = serde_json::to_string(ev).unwrap_or_default();
            pipe.invoke_script(
                self.script
                    .key(self.keys.node(id))
                    .key(self.keys.nodes())
                    .arg(id)
                    .arg(ev.ts.timestamp_millis())
                    .arg(json)
                    .arg(ttl)
                    .arg(self.keys.health_channel()),
            );
        }
        let _: Vec<i64> = pipe.query_async(&mut conn).await?;
        Ok(())
    }
}

/// Uptime of one node over a window.
#[derive(Debug, Clone, Serialize)]
pub struct NodeUptime {
    /// Node.
    pub node_id: String,
    /// First report ever.
    pub first_seen: DateTime<Utc>,
    /// Last report.
    pub last_seen: DateTime<Utc>,
    /// Reports received in total.
    pub reports: i64,
    /// `up` while the last report is within the expiry, else `down`.
    pub status: &'static str,
    /// Seconds of the window covered by reports.
    pub covered_secs: f64,
    /// Seconds of the window since the node was first seen.
    pub observed_secs: f64,
    /// covered ÷ observed, between 0 and 1 (`null` when not yet observed).
    pub uptime: Option<f64>,
    /// The same per UTC day of the window.
    pub daily: Vec<DailyUptime>,
}

/// Uptime of one node on one UTC day.
#[derive(Debug, Clone, Serialize)]
pub struct DailyUptime {
    /// The day.
    pub day: NaiveDate,
    /// Seconds covered that day (within the window).
    pub covered_secs: f64,
    /// Seconds observed that day (within the window, since first seen).
    pub observed_secs: f64,
    /// covered ÷ observed.
    pub uptime: Option<f64>,
}

/// A coverage interval `[start, end)`.
type Span = (DateTime<Utc>, DateTime<Utc>);

/// A `servers` row as the uptime query reads it.
type ServerRow = (
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    i64,
    i64,
    DateTime<Utc>,
);

/// Computes uptime from the inventory and sessions in PostgreSQL.
pub struct UptimeQuery<'a> {
    /// Database holding the health tables.
    pub pool: &'a PgPool,
}

fn overlap_secs(a: (DateTime<Utc>, DateTime<Utc>), b: (DateTime<Utc>, DateTime<Utc>)) -> f64 {
    let start = a.0.max(b.0);
    let end = a.1.min(b.1);
    if end > start {
        (end - start).num_milliseconds() as f64 / 1000.0
    } else {
        0.0
    }
}

fn ratio(covered: f64, observed: f64) -> Option<f64> {
    (observed > 0.0).then(|| (covered / observed).clamp(0.0, 1.0))
}

/// Uptime of a node over a window, given its sessions: the covered time in
/// the window divided by the window's time since the node was first seen
/// (and not later than `now`).
pub(crate) fn uptime_for(
    first_seen: DateTime<Utc>,
    sessions: &[(DateTime<Utc>, DateTime<Utc>)],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (f64, f64, Vec<DailyUptime>) {
    let window = (from.max(first_seen), to.min(now));
    let covered: f64 = sessions.iter().map(|s| overlap_secs(*s, window)).sum();
    let observed = overlap_secs(window, window);
    let mut daily = Vec::new();
    if window.1 > window.0 {
        let mut day = window.0.date_naive();
        while let Some(start) = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc()) {
            if start >= window.1 {
                break;
            }
            let end = start + ChronoDuration::days(1);
            let w = (start.max(window.0), end.min(window.1));
            let c: f64 = sessions.iter().map(|s| overlap_secs(*s, w)).sum();
            let o = overlap_secs(w, w);
            daily.push(DailyUptime {
                day,
                covered_secs: c,
                observed_secs: o,
                uptime: ratio(c, o),
            });
            match day.succ_opt() {
                Some(d) => day = d,
                None => break,
            }
        }
    }
    (covered, observed, daily)
}

impl UptimeQuery<'_> {
    /// Uptime of every node (or one) over `[from, to)`.
    pub async fn run(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        node: Option<&str>,
    ) -> Result<Vec<NodeUptime>, sqlx::Error> {
        let servers: Vec<ServerRow> = sqlx::query_as(
            "SELECT node_id, first_seen, last_seen, reports, interval_ms, now() FROM servers \
             WHERE first_seen < $2 AND ($3::text IS NULL OR node_id = $3) ORDER BY node_id",
        )
        .bind(from)
        .bind(to)
        .bind(node)
        .fetch_all(self.pool)
        .await?;
        let sessions: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT node_id, started_at, ended_at FROM node_sessions \
             WHERE ended_at > $1 AND started_at < $2 AND ($3::text IS NULL OR node_id = $3) \
             ORDER BY node_id, started_at",
        )
        .bind(from)
        .bind(to)
        .bind(node)
        .fetch_all(self.pool)
        .await?;
        let mut by_node: HashMap<String, Vec<Span>> = HashMap::new();
        for (n, s, e) in sessions {
            by_node.entry(n).or_default().push((s, e));
        }
        Ok(servers
            .into_iter()
            .map(
                |(node_id, first_seen, last_seen, reports, interval_ms, now)| {
                    let s = by_node.get(&node_id).map(Vec::as_slice).unwrap_or(&[]);
                    let (covered, observed, daily) = uptime_for(first_seen, s, from, to, now);
                    let up = now - last_seen
                        <= ChronoDuration::milliseconds(interval_ms * EXPIRY_INTERVALS);
                    NodeUptime {
                        node_id,
                        first_seen,
                        last_seen,
                        reports,
                        status: if up { "up" } else { "down" },
                        covered_secs: covered,
                        observed_secs: observed,
                        uptime: ratio(covered, observed),
                        daily,
                    }
                },
            )
            .collect())
    }
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

    #[test]
    fn uptime_is_covered_over_observed() {
        // Reported for 60 s of a 120 s window starting at first sight.
        let (c, o, daily) = uptime_for(t(0), &[(t(0), t(60))], t(0), t(120), t(10_000));
        assert_eq!((c, o), (60.0, 120.0));
        assert_eq!(ratio(c, o), Some(0.5));
        assert!(!daily.is_empty());
        // Time before the node was first seen does not count against it.
        let (c, o, _) = uptime_for(t(60), &[(t(60), t(120))], t(0), t(120), t(10_000));
        assert_eq!(ratio(c, o), Some(1.0));
        // The future does not count either.
        let (_, o, _) = uptime_for(t(0), &[(t(0), t(30))], t(0), t(120), t(60));
        assert_eq!(o, 60.0);
    }
}
