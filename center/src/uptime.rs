//! Uptime from what the health group stored in PostgreSQL: the inventory
//! (`servers`) and the coverage sessions (`node_sessions`). Uptime is time
//! covered by reports divided by time since the node was first seen, over a
//! window and per UTC day.

use std::collections::HashMap;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;
use weir_schemas::health::EXPIRY_INTERVALS;

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
pub type Span = (DateTime<Utc>, DateTime<Utc>);

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
fn uptime_for(
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
        let nodes: Vec<String> = node.map(str::to_owned).into_iter().collect();
        self.page(from, to, node.map(|_| nodes.as_slice()), None, i64::MAX)
            .await
    }

    /// Uptime over `[from, to)` of at most `limit` nodes, in node id order:
    /// those of `nodes` (all when `None`) whose id sorts after `after` (the
    /// cursor of the previous page).
    pub async fn page(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        nodes: Option<&[String]>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<NodeUptime>, sqlx::Error> {
        let servers: Vec<ServerRow> = sqlx::query_as(
            "SELECT node_id, first_seen, last_seen, reports, interval_ms, now() FROM servers \
             WHERE first_seen < $2 AND ($3::text[] IS NULL OR node_id = ANY($3)) \
             AND ($4::text IS NULL OR node_id > $4) ORDER BY node_id LIMIT $5",
        )
        .bind(from)
        .bind(to)
        .bind(nodes)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool)
        .await?;
        let ids: Vec<&str> = servers.iter().map(|r| r.0.as_str()).collect();
        let sessions: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT node_id, started_at, ended_at FROM node_sessions \
             WHERE ended_at > $1 AND started_at < $2 AND node_id = ANY($3) \
             ORDER BY node_id, started_at",
        )
        .bind(from)
        .bind(to)
        .bind(&ids)
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

/// A node's uptime over a window with what a report shows beside it: the
/// outages (the gaps between its coverage sessions inside the observed part
/// of the window) and the reports of the sessions that touch the window.
#[derive(Debug, Clone, Serialize)]
pub struct NodeCoverage {
    /// Uptime exactly as `/api/v1/uptime` computes it for the same window.
    pub uptime: NodeUptime,
    /// Gaps `[start, end)` of the observed window not covered by reports.
    pub outages: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Reports of the coverage sessions that overlap the window (a session
    /// across midnight counts on both days: sessions are stored, single
    /// reports are not).
    pub reports: i64,
}

/// The gaps of `window` not covered by `sessions` (sorted by start).
pub fn gaps(sessions: &[Span], window: Span) -> Vec<Span> {
    let mut out = Vec::new();
    let mut cursor = window.0;
    for &(s, e) in sessions {
        if s >= window.1 {
            break;
        }
        if s > cursor {
            out.push((cursor, s));
        }
        cursor = cursor.max(e);
    }
    if cursor < window.1 {
        out.push((cursor, window.1));
    }
    out
}

impl UptimeQuery<'_> {
    /// [`UptimeQuery::page`] with each node's outages and reports in the
    /// window: what the daily report mails, from the same computation as
    /// the uptime API so that the two always agree.
    pub async fn coverage(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<NodeCoverage>, sqlx::Error> {
        let nodes = self.page(from, to, None, after, limit).await?;
        let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
        let sessions: Vec<(String, DateTime<Utc>, DateTime<Utc>, i64, DateTime<Utc>)> =
            sqlx::query_as(
                "SELECT node_id, started_at, ended_at, reports, now() FROM node_sessions \
                 WHERE ended_at > $1 AND started_at < $2 AND node_id = ANY($3) \
                 ORDER BY node_id, started_at",
            )
            .bind(from)
            .bind(to)
            .bind(&ids)
            .fetch_all(self.pool)
            .await?;
        let now: DateTime<Utc> = match sessions.first() {
            Some(s) => s.4,
            None => {
                sqlx::query_scalar("SELECT now()")
                    .fetch_one(self.pool)
                    .await?
            }
        };
        let mut by_node: HashMap<&str, (Vec<Span>, i64)> = HashMap::new();
        for (n, s, e, r, _) in &sessions {
            let entry = by_node.entry(n.as_str()).or_default();
            entry.0.push((*s, *e));
            entry.1 += r;
        }
        Ok(nodes
            .iter()
            .map(|n| {
                let (spans, reports) = by_node
                    .get(n.node_id.as_str())
                    .map(|(s, r)| (s.as_slice(), *r))
                    .unwrap_or((&[], 0));
                let window = (from.max(n.first_seen), to.min(now));
                let outages = if window.1 > window.0 {
                    gaps(spans, window)
                } else {
                    Vec::new()
                };
                NodeCoverage {
                    uptime: n.clone(),
                    outages,
                    reports,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + s, 0).unwrap_or_default()
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

    #[test]
    fn outages_are_the_gaps_between_sessions() {
        let s = [(t(10), t(20)), (t(15), t(30)), (t(50), t(60))];
        assert_eq!(
            gaps(&s, (t(0), t(100))),
            vec![(t(0), t(10)), (t(30), t(50)), (t(60), t(100))]
        );
        assert!(gaps(&[(t(0), t(100))], (t(10), t(90))).is_empty());
        assert_eq!(gaps(&[], (t(0), t(5))), vec![(t(0), t(5))]);
    }
}
