//! The fleet state as the balancer keeps it: a local snapshot of every node
//! that is up in Redis, loaded at start, kept current from the health
//! group's change channel, reloaded whole when the subscription is
//! re-established and every `balance.resync_interval` (so a lost message is
//! repaired), with a node marked down at `last_seen + expiry` even when no
//! message says so.
//!
//! While Redis cannot be read the snapshot is frozen, not emptied: nodes are
//! not expired for lack of news that cannot arrive, and the balancer keeps
//! serving the backends it last knew (passive health still ejects the ones
//! that fail).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weir_core::{InternalEvent, RedisHandle};
use weir_schemas::health::EXPIRY_INTERVALS;
use weir_schemas::{HealthEvent, RedisKeys};

use crate::backend::Load;
use crate::events::{FleetReachable, FleetUnreachable, SnapshotLoaded};

/// What the balancer needs of one node's latest report.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetNode {
    /// Node id.
    pub node_id: String,
    /// The endpoint it reported.
    pub endpoint: String,
    /// Its service.
    pub service: String,
    /// Its CDN role.
    pub cdn_type: String,
    /// Time of its report.
    pub last_seen: DateTime<Utc>,
    /// When it is down unless it reports again.
    pub expires: DateTime<Utc>,
    /// Its load, for `dynamic` weights.
    pub load: Load,
}

impl FleetNode {
    /// The node described by a health report.
    pub fn from_report(h: &HealthEvent) -> FleetNode {
        let expiry = chrono::Duration::milliseconds(
            i64::try_from(h.interval_ms)
                .unwrap_or(i64::MAX / 4)
                .saturating_mul(EXPIRY_INTERVALS),
        );
        FleetNode {
            node_id: h.node_id.clone(),
            endpoint: h.endpoint.clone(),
            service: h.service.clone(),
            cdn_type: h.cdn_type.clone(),
            last_seen: h.ts,
            expires: h.ts + expiry,
            load: Load {
                cores: h.cores,
                load1: h.load_avg.one,
                cpu_pct: f64::from(h.cpu_usage_pct),
            },
        }
    }
}

/// The nodes up as of the last news, by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetView {
    /// Nodes believed up.
    pub nodes: BTreeMap<String, FleetNode>,
    /// True while Redis cannot be read (the view is the last one known).
    pub stale: bool,
}

impl FleetView {
    /// Applies one report: a newer one replaces the node's; a report
    /// already past its expiry (a backlog replayed) does not make the node
    /// up. Returns what changed.
    pub fn apply(&mut self, h: &HealthEvent, now: DateTime<Utc>) -> Applied {
        let node = FleetNode::from_report(h);
        let cur = self.nodes.get(&node.node_id);
        if cur.is_some_and(|c| c.last_seen > node.last_seen) {
            return Applied::Nothing;
        }
        if node.expires <= now {
            return match self.nodes.remove(&node.node_id) {
                Some(_) => Applied::Membership,
                None => Applied::Nothing,
            };
        }
        let kind = match cur {
            Some(c)
                if c.endpoint == node.endpoint
                    && c.service == node.service
                    && c.cdn_type == node.cdn_type =>
            {
                Applied::Report
            }
            _ => Applied::Membership,
        };
        self.nodes.insert(node.node_id.clone(), node);
        kind
    }

    /// Removes the nodes whose expiry has passed; their ids.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Vec<String> {
        let gone: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.expires <= now)
            .map(|n| n.node_id.clone())
            .collect();
        for id in &gone {
            self.nodes.remove(id);
        }
        gone
    }
}

/// What a report changed in the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Nothing (an older report).
    Nothing,
    /// A node's load and time only: pools learn it within one sweep.
    Report,
    /// A node came up, went down, or changed its endpoint, service or role:
    /// pools learn it at once.
    Membership,
}

/// Reads every node that is up: the index of nodes, then their live keys
/// (a missing key is a node that expired).
pub async fn load_snapshot(
    redis: &RedisHandle,
    keys: &RedisKeys,
) -> Result<BTreeMap<String, FleetNode>, redis::RedisError> {
    let mut conn = redis.conn().await?;
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.nodes())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    let now = Utc::now();
    let mut nodes = BTreeMap::new();
    for chunk in ids.chunks(500) {
        let names: Vec<String> = chunk.iter().map(|id| keys.node(id)).collect();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&names)
            .query_async(&mut conn)
            .await?;
        for v in values.into_iter().flatten() {
            match serde_json::from_slice::<HealthEvent>(&v) {
                Ok(h) => {
                    let n = FleetNode::from_report(&h);
                    if n.expires > now {
                        nodes.insert(n.node_id.clone(), n);
                    }
                }
                Err(e) => warn!(error = %e, "unreadable node state in Redis; skipped"),
            }
        }
    }
    Ok(nodes)
}

/// Notes (once) that Redis cannot be read: the view is frozen as it is.
fn mark_stale(v: &mut FleetView, e: &str) {
    if !v.stale {
        FleetUnreachable { error: e }.emit();
        v.stale = true;
    }
}

/// How often expired nodes are swept out.
const SWEEP: Duration = Duration::from_millis(200);

/// Follows the fleet state into `tx` until `shutdown`. See the module
/// documentation.
pub async fn follow(
    redis: Arc<RedisHandle>,
    keys: RedisKeys,
    timeout: Duration,
    resync: Duration,
    tx: watch::Sender<Arc<FleetView>>,
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut view = FleetView::default();
    let mut first = true;
    let publish = |v: &FleetView| {
        // Ready once the first snapshot was read or found unreachable.
        ready.send_replace(true);
        tx.send_if_modified(|cur| {
            if **cur == *v {
                false
            } else {
                *cur = Arc::new(v.clone());
                true
            }
        });
    };
    while !shutdown.is_cancelled() {
        // Subscribe first, then read the snapshot: a change between the
        // two is then both in the snapshot and on the channel, never lost.
        let sub = tokio::time::timeout(timeout, async {
            let mut p = redis.client().get_async_pubsub().await?;
            p.subscribe(keys.health_channel()).await?;
            Ok::<_, redis::RedisError>(p)
        })
        .await;
        let pubsub = match sub {
            Ok(Ok(p)) => p,
            other => {
                let e = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                mark_stale(&mut view, &e);
                publish(&view);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        match tokio::time::timeout(timeout, load_snapshot(&redis, &keys)).await {
            Ok(Ok(nodes)) => {
                view.nodes = nodes;
                if view.stale {
                    FleetReachable.emit();
                    view.stale = false;
                }
                SnapshotLoaded {
                    up: view.nodes.len(),
                    why: if first { "start" } else { "resubscribe" },
                }
                .emit();
                first = false;
                publish(&view);
            }
            other => {
                let e = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                mark_stale(&mut view, &e);
                publish(&view);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        }
        let mut messages = pubsub.into_on_message();
        let mut sweep = tokio::time::interval(SWEEP);
        let mut reports_pending = false;
        let mut resync_tick = tokio::time::interval(resync);
        resync_tick.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sweep.tick() => {
                    let gone = view.expire(Utc::now());
                    if !gone.is_empty() {
                        debug!(nodes = ?gone, "nodes expired");
                    }
                    if !gone.is_empty() || reports_pending {
                        // Reports that only moved loads are passed on here,
                        // at most once a sweep, not once a report: a large
                        // fleet reports thousands of times a second.
                        reports_pending = false;
                        publish(&view);
                    }
                }
                _ = resync_tick.tick() => {
                    match tokio::time::timeout(timeout, load_snapshot(&redis, &keys)).await {
                        Ok(Ok(nodes)) => {
                            view.nodes = nodes;
                            SnapshotLoaded { up: view.nodes.len(), why: "resync" }.emit();
                            publish(&view);
                        }
                        other => {
                            let e = match other {
                                Ok(Err(e)) => e.to_string(),
                                _ => "timed out".into(),
                            };
                            mark_stale(&mut view, &e);
                            publish(&view);
                            break;
                        }
                    }
                }
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        mark_stale(&mut view, "subscription lost");
                        publish(&view);
                        break;
                    };
                    match serde_json::from_slice::<HealthEvent>(msg.get_payload_bytes()) {
                        Ok(h) => match view.apply(&h, Utc::now()) {
                            Applied::Membership => {
                                reports_pending = false;
                                publish(&view);
                            }
                            Applied::Report => reports_pending = true,
                            Applied::Nothing => {}
                        },
                        Err(e) => warn!(error = %e, "unreadable change on the health channel"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    #[test]
    fn reports_apply_in_time_order_and_expire() {
        let mut v = FleetView::default();
        let mut h = HealthEvent::example("n1", 2, at(10));
        assert_eq!(v.apply(&h, at(10)), Applied::Membership);
        let newer = HealthEvent::example("n1", 3, at(11));
        assert_eq!(v.apply(&newer, at(11)), Applied::Report);
        h = newer;
        // An older report does not roll the node back.
        let mut old = HealthEvent::example("n1", 1, at(9));
        old.endpoint = "http://old:1".into();
        assert_eq!(v.apply(&old, at(10)), Applied::Nothing);
        assert_eq!(v.nodes["n1"].endpoint, h.endpoint);
        // Interval 1 s: down 3 s after the last report.
        assert!(v.expire(at(13)).is_empty());
        assert_eq!(v.expire(at(14)), vec!["n1".to_string()]);
        // A replayed report already past its expiry does not bring it back.
        h.ts = at(5);
        assert_eq!(v.apply(&h, at(14)), Applied::Nothing);
        assert!(v.nodes.is_empty());
    }
}
