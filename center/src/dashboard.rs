//! The dashboard's live model: one [`Hub`] per center holds the fleet and
//! the pipeline as the page shows them, merges every change into one delta
//! per `center.push_interval`, and streams it to this center's clients over
//! SSE.
//!
//! Why a hub and not a stream per client: a thousand nodes reporting every
//! second are a thousand changes a second; merging them once per push
//! interval (a node that reported five times is sent once) and serializing
//! the delta once for every client keeps a center's cost per client at one
//! write of a shared buffer per interval. A client that connects gets a
//! snapshot; a client that reconnects with `Last-Event-ID` (or `?last_id=`)
//! gets the deltas it missed from a bounded replay ring, or a fresh snapshot
//! when they are gone; a client too slow for the broadcast gets a fresh
//! snapshot instead of unbounded memory. Either way it never misses a change.
//!
//! Inputs: health changes and lag signals from this center's Redis
//! subscription ([`crate::live`]), a reload of the fleet from Redis at every
//! (re)subscription, and a poll each second of what has no channel (topic log
//! ends and limiter states in Redis; access rollups in PostgreSQL, hot
//! counters in Redis).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use chrono::{DurationRound, TimeDelta, Utc};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weir_core::http::ApiError;
use weir_schemas::health::EXPIRY_INTERVALS;
use weir_schemas::{HealthEvent, LagSignal, LimiterState, TopicEnds};

use crate::api::CenterState;
use crate::events::{DashboardClient, DashboardDeltaSent};
use weir_core::InternalEvent;

/// Points of history kept per node and per group (the sparklines).
pub const HISTORY: usize = 40;

/// Nodes shown per access table and objects in the top list.
const ACCESS_ROWS: usize = 50;
const TOP_OBJECTS: isize = 10;

/// The deployment's topics, so the page can name their roles.
#[derive(Debug, Clone)]
pub struct DashboardTopics {
    /// Health events.
    pub health: String,
    /// Access events.
    pub access: String,
    /// Dead letters.
    pub dlq: String,
}

impl Default for DashboardTopics {
    fn default() -> Self {
        DashboardTopics {
            health: weir_schemas::topics::HEALTH.into(),
            access: weir_schemas::topics::ACCESS.into(),
            dlq: weir_schemas::topics::DLQ.into(),
        }
    }
}

/// A node's status on the page: `up` while it reports on time, `stale` once
/// two intervals passed without a report (its Redis key still lives), `down`
/// once its expiry (three intervals, the key's TTL) passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Reporting.
    Up,
    /// Late, not yet expired.
    Stale,
    /// Expired.
    Down,
}

impl NodeStatus {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Stale => "stale",
            NodeStatus::Down => "down",
        }
    }

    fn at(last_ms: i64, interval_ms: u64, now_ms: i64) -> NodeStatus {
        let age = now_ms.saturating_sub(last_ms);
        let interval = i64::try_from(interval_ms).unwrap_or(i64::MAX).max(1);
        if age > interval.saturating_mul(EXPIRY_INTERVALS) {
            NodeStatus::Down
        } else if age > interval.saturating_mul(2) {
            NodeStatus::Stale
        } else {
            NodeStatus::Up
        }
    }
}

/// One row of the fleet table.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    /// Node id.
    pub id: String,
    /// Status now.
    pub status: NodeStatus,
    /// Last report (unix ms).
    pub last_ms: i64,
    /// The node's report interval.
    pub interval_ms: u64,
    /// CPU use, %.
    pub cpu: f32,
    /// Memory in use, %.
    pub mem: f32,
    /// Memory, MiB.
    pub mem_total_mb: u64,
    /// Load average over one minute.
    pub load: f64,
    /// Cores.
    pub cores: u32,
    /// Bytes per second received, all interfaces.
    pub rx: u64,
    /// Bytes per second sent, all interfaces.
    pub tx: u64,
    /// Service and CDN type, for filters.
    pub service: String,
    /// CDN type.
    pub cdn_type: String,
    /// Reports seen by this center.
    pub reports: u64,
    /// CPU % of the last reports, oldest first.
    pub cpu_hist: VecDeque<f32>,
    /// Bandwidth (rx + tx, B/s) of the last reports, oldest first.
    pub bw_hist: VecDeque<u64>,
}

impl NodeRow {
    pub(crate) fn empty(id: &str) -> NodeRow {
        NodeRow {
            id: id.to_owned(),
            status: NodeStatus::Down,
            last_ms: 0,
            interval_ms: 1000,
            cpu: 0.0,
            mem: 0.0,
            mem_total_mb: 0,
            load: 0.0,
            cores: 0,
            rx: 0,
            tx: 0,
            service: String::new(),
            cdn_type: String::new(),
            reports: 0,
            cpu_hist: VecDeque::new(),
            bw_hist: VecDeque::new(),
        }
    }

    /// Takes a report; false when it is not newer than the one shown.
    fn apply(&mut self, h: &HealthEvent, now_ms: i64) -> bool {
        let ts = h.ts.timestamp_millis();
        if ts <= self.last_ms {
            return false;
        }
        self.last_ms = ts;
        self.interval_ms = h.interval_ms.max(1);
        self.cpu = h.cpu_usage_pct;
        self.mem = if h.memory_total_mb > 0 {
            (100.0 * (h.memory_total_mb.saturating_sub(h.memory_free_mb)) as f64
                / h.memory_total_mb as f64) as f32
        } else {
            0.0
        };
        self.mem_total_mb = h.memory_total_mb;
        self.load = h.load_avg.one;
        self.cores = h.cores;
        self.rx = h.interfaces.iter().map(|i| i.rx_bytes_per_sec).sum();
        self.tx = h.interfaces.iter().map(|i| i.tx_bytes_per_sec).sum();
        self.service.clone_from(&h.service);
        self.cdn_type.clone_from(&h.cdn_type);
        self.reports += 1;
        push_bounded(&mut self.cpu_hist, self.cpu);
        push_bounded(&mut self.bw_hist, self.rx.saturating_add(self.tx));
        self.status = NodeStatus::at(self.last_ms, self.interval_ms, now_ms);
        true
    }
}

fn push_bounded<T>(v: &mut VecDeque<T>, x: T) {
    if v.len() == HISTORY {
        v.pop_front();
    }
    v.push_back(x);
}

/// Produce and consume rates of one topic.
#[derive(Debug, Clone, Serialize)]
pub struct TopicView {
    /// Topic.
    pub topic: String,
    /// health, access, dlq or other.
    pub role: &'static str,
    /// Sum of the log-end offsets.
    pub end: i64,
    /// Records produced per second (between the last two readings).
    pub produced_per_s: Option<f64>,
    /// Per group reading it: records consumed (committed) per second.
    pub consumed: Vec<ConsumedView>,
}

/// One group's consume rate of one topic.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumedView {
    /// Group.
    pub group: String,
    /// Records committed per second.
    pub per_s: Option<f64>,
}

/// One consumer group's lag.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    /// Group.
    pub group: String,
    /// ok, warning, rewinding, stalled, stopped.
    pub status: &'static str,
    /// Messages behind, all partitions.
    pub total_lag: i64,
    /// Seconds behind (largest partition), when known.
    pub lag_seconds: Option<f64>,
    /// Members.
    pub members: usize,
    /// Threshold per partition the limiter aims under.
    pub threshold: u64,
    /// When the exporter read it (unix ms).
    pub at_ms: i64,
    /// Total lag of the last signals, oldest first.
    pub hist: VecDeque<i64>,
}

/// Access traffic of one node (the last ten seconds for requests, the
/// current and previous minute's rollups for sizes and hit ratio).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AccessNode {
    /// Edge node.
    pub node_id: String,
    /// Requests per second.
    pub req_per_s: f64,
    /// Bytes per second.
    pub bytes_per_s: f64,
    /// Hits / (hits + misses).
    pub hit_ratio: Option<f64>,
}

/// One of this minute's most requested objects.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopObject {
    /// Object key.
    pub key: String,
    /// Requests this minute.
    pub requests: i64,
}

/// The access rollups as the page shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AccessView {
    /// Requests per second, all nodes.
    pub req_per_s: f64,
    /// Bytes per second, all nodes.
    pub bytes_per_s: f64,
    /// Hit ratio, all nodes.
    pub hit_ratio: Option<f64>,
    /// Per node (busiest first).
    pub nodes: Vec<AccessNode>,
    /// This minute's top objects.
    pub top: Vec<TopObject>,
}

/// Dead letters: records in the dead-letter topic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadLetters {
    /// Topic.
    pub topic: String,
    /// Records in it (sum of log ends).
    pub total: Option<i64>,
    /// Added per second.
    pub per_s: Option<f64>,
}

/// One producer's limiter.
#[derive(Debug, Clone, Serialize)]
pub struct LimiterView {
    /// Producer (node id).
    pub source: String,
    /// Group pacing it.
    pub group: String,
    /// Fraction of sheddable events admitted.
    pub fraction: f64,
    /// When it wrote it (unix ms).
    pub at_ms: i64,
}

/// The pipeline panel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PipelineView {
    /// Per topic rates.
    pub topics: Vec<TopicView>,
    /// Per group lag.
    pub groups: Vec<GroupView>,
    /// Access rollups.
    pub access: AccessView,
    /// Dead letters.
    pub dead_letters: DeadLetters,
    /// Limiters.
    pub limiters: Vec<LimiterView>,
}

/// The whole page's state.
#[derive(Debug, Serialize)]
pub struct Snapshot<'a> {
    /// Sequence number of the last delta this snapshot includes.
    pub seq: u64,
    /// When it was taken (unix ms).
    pub at_ms: i64,
    /// Every node, by id.
    pub nodes: Vec<&'a NodeRow>,
    /// The pipeline.
    pub pipeline: &'a PipelineView,
}

/// A node in a delta: the row without its history, which the page extends
/// itself from each report (`cpu`, `rx + tx`) — the history was three
/// quarters of a delta's bytes.
#[derive(Serialize)]
struct NodeChange<'a> {
    id: &'a str,
    status: NodeStatus,
    last_ms: i64,
    interval_ms: u64,
    cpu: f32,
    mem: f32,
    mem_total_mb: u64,
    load: f64,
    cores: u32,
    rx: u64,
    tx: u64,
    service: &'a str,
    cdn_type: &'a str,
    reports: u64,
}

impl<'a> From<&'a NodeRow> for NodeChange<'a> {
    fn from(n: &'a NodeRow) -> Self {
        NodeChange {
            id: &n.id,
            status: n.status,
            last_ms: n.last_ms,
            interval_ms: n.interval_ms,
            cpu: n.cpu,
            mem: n.mem,
            mem_total_mb: n.mem_total_mb,
            load: n.load,
            cores: n.cores,
            rx: n.rx,
            tx: n.tx,
            service: &n.service,
            cdn_type: &n.cdn_type,
            reports: n.reports,
        }
    }
}

#[derive(Serialize)]
struct Delta<'a> {
    seq: u64,
    at_ms: i64,
    nodes: Vec<NodeChange<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline: Option<&'a PipelineView>,
}

/// One SSE event, serialized once for every client.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    seq: u64,
    kind: &'static str,
    data: Arc<str>,
}

impl Frame {
    fn event(&self) -> SseEvent {
        SseEvent::default()
            .id(self.seq.to_string())
            .event(self.kind)
            .data(&*self.data)
    }
}

/// Raw inputs of the pipeline panel, kept between readings to tell rates.
#[derive(Default)]
struct PipelineInputs {
    /// Latest and previous signal per group.
    signals: BTreeMap<String, (LagSignal, Option<LagSignal>)>,
    lag_hist: HashMap<String, VecDeque<i64>>,
    /// Latest and previous topic log ends.
    ends: Option<(TopicEnds, Option<TopicEnds>)>,
    access: AccessView,
    limiters: Vec<LimiterState>,
}

struct Inner {
    seq: u64,
    nodes: BTreeMap<String, NodeRow>,
    dirty: BTreeSet<String>,
    inputs: PipelineInputs,
    pipeline: PipelineView,
    pipeline_dirty: bool,
    ring: VecDeque<Frame>,
    /// The snapshot of `seq`, once built: clients connecting between two
    /// ticks share one serialization (500 reconnecting clients must not
    /// each hold the lock for a full fleet's JSON).
    snapshot: Option<Frame>,
}

/// The live model of one center (see the module's documentation).
pub struct Hub {
    inner: Mutex<Inner>,
    frames: broadcast::Sender<Frame>,
    topics: DashboardTopics,
    replay: usize,
    client_buffer: usize,
}

/// Most nodes a center tracks: a bound on memory whatever is in Redis.
pub const MAX_NODES: usize = 100_000;

impl Hub {
    /// An empty hub keeping `replay` deltas for reconnecting clients.
    pub fn new(topics: DashboardTopics, replay: usize, client_buffer: usize) -> Hub {
        let (frames, _) = broadcast::channel(client_buffer.max(4));
        Hub {
            inner: Mutex::new(Inner {
                seq: 0,
                nodes: BTreeMap::new(),
                dirty: BTreeSet::new(),
                inputs: PipelineInputs::default(),
                pipeline: PipelineView::default(),
                pipeline_dirty: false,
                ring: VecDeque::new(),
                snapshot: None,
            }),
            frames,
            topics,
            replay: replay.max(1),
            client_buffer,
        }
    }

    /// (replay ring, client buffer) it was made with.
    pub fn sizes(&self) -> (usize, usize) {
        (self.replay, self.client_buffer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A node reported.
    pub fn apply_health(&self, h: &HealthEvent) {
        let now = Utc::now().timestamp_millis();
        let mut g = self.lock();
        if !g.nodes.contains_key(&h.node_id) && g.nodes.len() >= MAX_NODES {
            return;
        }
        let row = g
            .nodes
            .entry(h.node_id.clone())
            .or_insert_with(|| NodeRow::empty(&h.node_id));
        if row.apply(h, now) {
            g.dirty.insert(h.node_id.clone());
        }
    }

    /// Drops a node from the model (a decommissioned server): snapshots no
    /// longer show it. Pages already open keep its row until they reload
    /// (deltas only carry rows that exist).
    pub fn forget(&self, id: &str) {
        let mut g = self.lock();
        if g.nodes.remove(id).is_some() {
            g.dirty.remove(id);
            g.snapshot = None;
        }
    }

    /// The fleet as Redis has it: nodes with a live report, and nodes known
    /// (`last_ms`) whose report expired.
    pub fn reload(&self, live: Vec<HealthEvent>, known: Vec<(String, i64)>) {
        for h in &live {
            self.apply_health(h);
        }
        let mut g = self.lock();
        for (id, last_ms) in known {
            if g.nodes.len() >= MAX_NODES {
                break;
            }
            if !g.nodes.contains_key(&id) {
                let mut row = NodeRow::empty(&id);
                row.last_ms = last_ms;
                g.nodes.insert(id.clone(), row);
                g.dirty.insert(id);
            }
        }
    }

    /// A group's lag signal arrived.
    pub fn apply_lag(&self, s: LagSignal) {
        let mut g = self.lock();
        let inputs = &mut g.inputs;
        let hist = inputs.lag_hist.entry(s.group.clone()).or_default();
        match inputs.signals.get_mut(&s.group) {
            Some((cur, _)) if s.at_ms <= cur.at_ms => return,
            Some((cur, prev)) => {
                push_bounded(hist, s.total_lag);
                *prev = Some(std::mem::replace(cur, s));
            }
            None => {
                push_bounded(hist, s.total_lag);
                if inputs.signals.len() < 1000 {
                    inputs.signals.insert(s.group.clone(), (s, None));
                }
            }
        }
        g.pipeline_dirty = true;
    }

    /// The topics' log ends, access traffic and limiters, as polled.
    fn apply_poll(
        &self,
        ends: Option<TopicEnds>,
        access: Option<AccessView>,
        limiters: Option<Vec<LimiterState>>,
    ) {
        let mut g = self.lock();
        if let Some(e) = ends {
            let newer = match &g.inputs.ends {
                Some((cur, _)) => e.at_ms > cur.at_ms,
                None => true,
            };
            if newer {
                let prev = g.inputs.ends.take().map(|(cur, _)| cur);
                g.inputs.ends = Some((e, prev));
                g.pipeline_dirty = true;
            }
        }
        if let Some(a) = access {
            if a != g.inputs.access {
                g.inputs.access = a;
                g.pipeline_dirty = true;
            }
        }
        if let Some(l) = limiters {
            if l != g.inputs.limiters {
                g.inputs.limiters = l;
                g.pipeline_dirty = true;
            }
        }
    }

    /// Rebuilds the pipeline view from the inputs.
    fn build_pipeline(&self, i: &PipelineInputs) -> PipelineView {
        let rate = |a: i64, b: i64, dt_ms: i64| -> Option<f64> {
            (dt_ms > 0).then(|| ((a - b).max(0) as f64) * 1000.0 / dt_ms as f64)
        };
        let mut topics: BTreeMap<String, TopicView> = BTreeMap::new();
        let role = |t: &str| -> &'static str {
            if t == self.topics.health {
                "health"
            } else if t == self.topics.access {
                "access"
            } else if t == self.topics.dlq {
                "dlq"
            } else {
                "other"
            }
        };
        let view = |t: &str| -> TopicView {
            TopicView {
                topic: t.to_owned(),
                role: role(t),
                end: 0,
                produced_per_s: None,
                consumed: Vec::new(),
            }
        };
        if let Some((cur, prev)) = &i.ends {
            for (t, end) in &cur.topics {
                let mut v = view(t);
                v.end = *end;
                v.produced_per_s = prev.as_ref().and_then(|p| {
                    let before = p.topics.iter().find(|(pt, _)| pt == t)?.1;
                    rate(*end, before, cur.at_ms - p.at_ms)
                });
                topics.insert(t.clone(), v);
            }
        }
        let mut groups = Vec::new();
        for (group, (cur, prev)) in &i.signals {
            for t in &cur.topics {
                let entry = topics.entry(t.topic.clone()).or_insert_with(|| {
                    let mut v = view(&t.topic);
                    v.end = t.end;
                    v
                });
                let per_s = prev.as_ref().and_then(|p| {
                    let before = p.topics.iter().find(|pt| pt.topic == t.topic)?;
                    rate(t.committed, before.committed, cur.at_ms - p.at_ms)
                });
                if entry.produced_per_s.is_none() {
                    entry.produced_per_s = prev.as_ref().and_then(|p| {
                        let before = p.topics.iter().find(|pt| pt.topic == t.topic)?;
                        rate(t.end, before.end, cur.at_ms - p.at_ms)
                    });
                }
                entry.consumed.push(ConsumedView {
                    group: group.clone(),
                    per_s,
                });
            }
            groups.push(GroupView {
                group: group.clone(),
                status: cur.status.as_str(),
                total_lag: cur.total_lag,
                lag_seconds: cur.max_lag_seconds,
                members: cur.members,
                threshold: cur.threshold,
                at_ms: cur.at_ms,
                hist: i.lag_hist.get(group).cloned().unwrap_or_default(),
            });
        }
        let dlq = topics.get(&self.topics.dlq);
        let dead_letters = DeadLetters {
            topic: self.topics.dlq.clone(),
            total: dlq.map(|t| t.end),
            per_s: dlq.and_then(|t| t.produced_per_s),
        };
        PipelineView {
            topics: topics.into_values().collect(),
            groups,
            access: i.access.clone(),
            dead_letters,
            limiters: i
                .limiters
                .iter()
                .map(|l| LimiterView {
                    source: l.source.clone(),
                    group: l.group.clone(),
                    fraction: l.fraction,
                    at_ms: l.at_ms,
                })
                .collect(),
        }
    }

    /// One push interval: node statuses follow the clock, and whatever
    /// changed since the last tick goes out as one delta.
    pub fn tick(&self) {
        let now = Utc::now().timestamp_millis();
        let mut g = self.lock();
        let g = &mut *g;
        for row in g.nodes.values_mut() {
            let s = NodeStatus::at(row.last_ms, row.interval_ms, now);
            if s != row.status {
                row.status = s;
                g.dirty.insert(row.id.clone());
            }
        }
        if g.pipeline_dirty {
            g.pipeline = self.build_pipeline(&g.inputs);
        }
        if g.dirty.is_empty() && !g.pipeline_dirty {
            return;
        }
        let seq = g.seq + 1;
        let delta = Delta {
            seq,
            at_ms: now,
            nodes: g
                .dirty
                .iter()
                .filter_map(|id| g.nodes.get(id))
                .map(NodeChange::from)
                .collect(),
            pipeline: g.pipeline_dirty.then_some(&g.pipeline),
        };
        let data: Arc<str> = match serde_json::to_string(&delta) {
            Ok(s) => s.into(),
            Err(e) => {
                warn!(error = %e, "cannot encode a dashboard delta");
                return;
            }
        };
        g.seq = seq;
        g.dirty.clear();
        g.pipeline_dirty = false;
        let frame = Frame {
            seq,
            kind: "delta",
            data,
        };
        if g.ring.len() == self.replay {
            g.ring.pop_front();
        }
        g.ring.push_back(frame.clone());
        DashboardDeltaSent {
            bytes: frame.data.len(),
        }
        .emit();
        // No receivers is fine: nobody is watching.
        let _ = self.frames.send(frame);
    }

    fn snapshot_frame(&self, g: &mut Inner) -> Frame {
        if let Some(f) = g.snapshot.as_ref().filter(|f| f.seq == g.seq) {
            return f.clone();
        }
        let frame = Self::build_snapshot(g);
        g.snapshot = Some(frame.clone());
        frame
    }

    fn build_snapshot(g: &Inner) -> Frame {
        let snap = Snapshot {
            seq: g.seq,
            at_ms: Utc::now().timestamp_millis(),
            nodes: g.nodes.values().collect(),
            pipeline: &g.pipeline,
        };
        Frame {
            seq: g.seq,
            kind: "snapshot",
            data: serde_json::to_string(&snap)
                .unwrap_or_else(|_| "{}".into())
                .into(),
        }
    }

    /// The state as JSON (what `/api/v1/dashboard` answers).
    pub fn snapshot_json(&self) -> Arc<str> {
        let mut g = self.lock();
        self.snapshot_frame(&mut g).data
    }

    /// Calls `f` with the nodes and the pipeline, under the lock (the
    /// server-rendered page).
    pub fn with_state<R>(
        &self,
        f: impl FnOnce(u64, &BTreeMap<String, NodeRow>, &PipelineView) -> R,
    ) -> R {
        let g = self.lock();
        f(g.seq, &g.nodes, &g.pipeline)
    }

    /// A client's start: the deltas after `last_id` when the ring still has
    /// them all, else a snapshot; and the receiver of what follows, taken
    /// under the same lock so that nothing falls in between.
    pub(crate) fn subscribe(
        &self,
        last_id: Option<u64>,
    ) -> (Vec<Frame>, broadcast::Receiver<Frame>) {
        let mut g = self.lock();
        let rx = self.frames.subscribe();
        if let Some(id) = last_id {
            let oldest = g.ring.front().map_or(g.seq + 1, |f| f.seq);
            if id <= g.seq && id + 1 >= oldest {
                let missed = g.ring.iter().filter(|f| f.seq > id).cloned().collect();
                return (missed, rx);
            }
        }
        (vec![self.snapshot_frame(&mut g)], rx)
    }

    /// Clients connected to this hub's stream.
    pub fn clients(&self) -> usize {
        self.frames.receiver_count()
    }
}

/// Query of the dashboard stream: `last_id` is `Last-Event-ID` for clients
/// that cannot set the header (a tab taking over the shared connection).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    last_id: Option<String>,
}

fn parse_last_id(v: &str) -> Result<u64, ApiError> {
    v.trim()
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request("Last-Event-ID (last_id) must be a sequence number"))
}

/// `GET /api/v1/dashboard`: the page's state as JSON.
pub(crate) async fn snapshot(
    State(state): State<CenterState>,
) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        state.hub.snapshot_json().to_string(),
    )
}

/// Counts the client in the clients gauge while it is connected.
struct ClientGuard;

impl ClientGuard {
    fn new() -> ClientGuard {
        DashboardClient { connected: true }.emit();
        ClientGuard
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        DashboardClient { connected: false }.emit();
    }
}

/// `GET /api/v1/dashboard/stream`: a snapshot (or the missed deltas), then
/// one delta per push interval with changes; a client too slow for the
/// broadcast gets a fresh snapshot.
pub(crate) async fn stream(
    State(state): State<CenterState>,
    headers: HeaderMap,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
    keepalive: Duration,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let header = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID must be ASCII"))
        })
        .transpose()?;
    let last_id = match header.or(p.last_id.as_deref()) {
        Some(v) if !v.is_empty() => Some(parse_last_id(v)?),
        _ => None,
    };
    let hub = state.hub.clone();
    let (first, rx) = hub.subscribe(last_id);
    let stop = state.shutdown.clone().cancelled_owned();
    let guard = ClientGuard::new();
    let rest = futures::stream::unfold((rx, hub, guard), |(mut rx, hub, guard)| async move {
        let ev = match rx.recv().await {
            Ok(f) => f.event(),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!(missed = n, "dashboard client lagged; sending a snapshot");
                // Resubscribe first: the snapshot covers everything before.
                let (frames, fresh) = hub.subscribe(None);
                rx = fresh;
                frames.first().map(Frame::event).unwrap_or_default()
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(ev), (rx, hub, guard)))
    });
    let events = futures::stream::iter(first.into_iter().map(|f| Ok(f.event())))
        .chain(rest)
        .take_until(stop);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(keepalive)))
}

/// Ticks the hub every `push_interval` and polls what has no channel every
/// second, until `shutdown`.
pub(crate) async fn run(state: CenterState, push_interval: Duration, shutdown: CancellationToken) {
    let ticker = {
        let (hub, stop) = (state.hub.clone(), shutdown.clone());
        async move {
            let mut t = tokio::time::interval(push_interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = t.tick() => hub.tick(),
                }
            }
        }
    };
    let poller = async {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = t.tick() => {}
            }
            // Each read is bounded: a store that hangs must not stall the rest.
            let bound = Duration::from_secs(2);
            let ends = tokio::time::timeout(bound, read_topic_ends(&state))
                .await
                .ok()
                .flatten();
            let limiters = tokio::time::timeout(bound, read_limiters(&state))
                .await
                .ok()
                .flatten();
            // Rollups from PostgreSQL every other second.
            let access = if n % 2 == 0 {
                tokio::time::timeout(bound, read_access(&state))
                    .await
                    .ok()
                    .flatten()
            } else {
                None
            };
            n += 1;
            state.hub.apply_poll(ends, access, limiters);
        }
    };
    tokio::join!(ticker, poller);
}

async fn read_topic_ends(state: &CenterState) -> Option<TopicEnds> {
    let mut c = state.redis.conn().await.ok()?;
    let raw: Option<String> = redis::cmd("GET")
        .arg(state.keys.topic_ends())
        .query_async(&mut c)
        .await
        .ok()?;
    serde_json::from_str(&raw?).ok()
}

async fn read_limiters(state: &CenterState) -> Option<Vec<LimiterState>> {
    let mut c = state.redis.conn().await.ok()?;
    // HSCAN-free: the hash has one field per producer; cap what is read.
    let len: usize = redis::cmd("HLEN")
        .arg(state.keys.limiters())
        .query_async(&mut c)
        .await
        .ok()?;
    if len > 10_000 {
        warn!(len, "too many limiter states to show");
        return None;
    }
    let all: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(state.keys.limiters())
        .query_async(&mut c)
        .await
        .ok()?;
    let mut out: Vec<LimiterState> = all
        .values()
        .filter_map(|v| serde_json::from_str(v).ok())
        .collect();
    out.sort_by(|a, b| a.source.cmp(&b.source));
    Some(out)
}

/// Requests per second from the per-node hot counters over the last ten
/// whole seconds; sizes and hit ratio from the current and previous
/// minute's rollups.
async fn read_access(state: &CenterState) -> Option<AccessView> {
    let now = Utc::now();
    let minute = now.duration_trunc(TimeDelta::minutes(1)).ok()?;
    let since = minute - TimeDelta::minutes(1);
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT node_id, sum(requests)::bigint, sum(bytes)::bigint, sum(hits)::bigint, sum(misses)::bigint \
         FROM access_minute WHERE minute >= $1 GROUP BY node_id ORDER BY sum(requests) DESC LIMIT $2",
    )
    .bind(since)
    .bind(ACCESS_ROWS as i64)
    .fetch_all(state.pool())
    .await
    .map_err(|e| debug!(error = %e, "cannot read access rollups"))
    .ok()?;
    let mut c = state.redis.conn().await.ok()?;
    let secs: Vec<i64> = (1..=10).map(|d| now.timestamp() - d).collect();
    let mut pipe = redis::pipe();
    for (node, ..) in &rows {
        pipe.cmd("HMGET").arg(state.keys.node_rps(node)).arg(&secs);
    }
    pipe.cmd("ZREVRANGE")
        .arg(state.keys.top_objects(minute.timestamp()))
        .arg(0)
        .arg(TOP_OBJECTS - 1)
        .arg("WITHSCORES");
    let mut replies: Vec<redis::Value> = pipe.query_async(&mut c).await.ok()?;
    let top_raw = replies.pop()?;
    let top: Vec<(String, f64)> = redis::from_redis_value(&top_raw).unwrap_or_default();
    let mut view = AccessView {
        top: top
            .into_iter()
            .map(|(key, n)| TopObject {
                key,
                requests: n as i64,
            })
            .collect(),
        ..AccessView::default()
    };
    let (mut hits, mut misses) = (0i64, 0i64);
    for ((node, requests, bytes, h, m), reply) in rows.into_iter().zip(replies) {
        let counts: Vec<Option<i64>> = redis::from_redis_value(&reply).unwrap_or_default();
        let req_per_s = counts.iter().flatten().sum::<i64>() as f64 / secs.len() as f64;
        let per_request = if requests > 0 {
            bytes as f64 / requests as f64
        } else {
            0.0
        };
        let node = AccessNode {
            node_id: node,
            req_per_s,
            bytes_per_s: req_per_s * per_request,
            hit_ratio: (h + m > 0).then(|| h as f64 / (h + m) as f64),
        };
        view.req_per_s += node.req_per_s;
        view.bytes_per_s += node.bytes_per_s;
        hits += h;
        misses += m;
        view.nodes.push(node);
    }
    view.hit_ratio = (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64);
    // Round so that an unchanged minute compares equal and sends nothing.
    for n in &mut view.nodes {
        n.req_per_s = (n.req_per_s * 10.0).round() / 10.0;
        n.bytes_per_s = n.bytes_per_s.round();
    }
    view.req_per_s = (view.req_per_s * 10.0).round() / 10.0;
    view.bytes_per_s = view.bytes_per_s.round();
    Some(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(id: &str, ts_ms: i64, cpu: f32) -> HealthEvent {
        let ts = chrono::DateTime::from_timestamp_millis(ts_ms).expect("ts");
        let mut h = HealthEvent::example(id, 1, ts);
        h.interval_ms = 1000;
        h.cpu_usage_pct = cpu;
        h
    }

    #[test]
    fn status_follows_the_clock() {
        assert_eq!(NodeStatus::at(0, 1000, 1500), NodeStatus::Up);
        assert_eq!(NodeStatus::at(0, 1000, 2500), NodeStatus::Stale);
        assert_eq!(NodeStatus::at(0, 1000, 3001), NodeStatus::Down);
        // A report from the future (clock skew) is up, not a panic.
        assert_eq!(NodeStatus::at(10_000, 1000, 0), NodeStatus::Up);
        assert_eq!(NodeStatus::at(i64::MIN, 1000, i64::MAX), NodeStatus::Down);
        // An absurd interval saturates rather than overflowing.
        assert_eq!(NodeStatus::at(0, u64::MAX, i64::MAX), NodeStatus::Up);
    }

    #[test]
    fn deltas_merge_replay_and_fall_back_to_a_snapshot() {
        let hub = Hub::new(DashboardTopics::default(), 3, 16);
        let now = Utc::now().timestamp_millis();
        let (first, mut rx) = hub.subscribe(None);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].kind, "snapshot");
        // Five reports of one node between two ticks: one row in one delta.
        for i in 0..5 {
            hub.apply_health(&health("n1", now + i, i as f32));
        }
        hub.apply_health(&health("n2", now, 1.0));
        // An older report changes nothing.
        hub.apply_health(&health("n1", now - 10, 99.0));
        hub.tick();
        let d = rx.try_recv().expect("a delta");
        assert_eq!(d.seq, 1);
        let v: serde_json::Value = serde_json::from_str(&d.data).expect("json");
        assert_eq!(v["nodes"].as_array().map(Vec::len), Some(2), "{v}");
        assert_eq!(v["nodes"][0]["cpu"], 4.0);
        // Deltas leave the history out (the page extends its own); the
        // snapshot has it.
        assert!(v["nodes"][0].get("cpu_hist").is_none(), "{v}");
        let snap: serde_json::Value = serde_json::from_str(&hub.snapshot_json()).expect("json");
        assert_eq!(
            snap["nodes"][0]["cpu_hist"].as_array().map(Vec::len),
            Some(5)
        );
        // Nothing changed: no delta.
        hub.tick();
        assert!(rx.try_recv().is_err());
        for s in 2..=5 {
            hub.apply_health(&health("n1", now + 100 * s, 1.0));
            hub.tick();
        }
        // Ring of 3 holds deltas 3..=5: after 2 they replay, after 1 not.
        let (frames, _) = hub.subscribe(Some(2));
        assert_eq!(
            frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let (frames, _) = hub.subscribe(Some(5));
        assert!(frames.is_empty(), "up to date: nothing to replay");
        let (frames, _) = hub.subscribe(Some(1));
        assert_eq!(frames[0].kind, "snapshot");
        assert_eq!(frames[0].seq, 5);
        // An id from the future (another center's, or forged) gets a snapshot.
        let (frames, _) = hub.subscribe(Some(u64::MAX));
        assert_eq!(frames[0].kind, "snapshot");
    }

    #[test]
    fn rates_come_from_two_readings() {
        let hub = Hub::new(DashboardTopics::default(), 8, 16);
        let sig = |at_ms: i64, end: i64, committed: i64| LagSignal {
            group: "weir-access".into(),
            total_lag: end - committed,
            partitions: 1,
            max_partition_lag: end - committed,
            max_lag_seconds: Some(0.5),
            threshold: 200,
            status: weir_schemas::LagStatus::Ok,
            members: 1,
            at_ms,
            topics: vec![weir_schemas::TopicOffsets {
                topic: weir_schemas::topics::ACCESS.into(),
                end,
                committed,
            }],
        };
        hub.apply_lag(sig(1000, 100, 90));
        hub.apply_lag(sig(3000, 300, 250));
        // Out of order: ignored.
        hub.apply_lag(sig(2000, 0, 0));
        hub.apply_poll(
            Some(TopicEnds {
                at_ms: 1000,
                topics: vec![(weir_schemas::topics::DLQ.into(), 5)],
            }),
            None,
            None,
        );
        hub.apply_poll(
            Some(TopicEnds {
                at_ms: 2000,
                topics: vec![(weir_schemas::topics::DLQ.into(), 7)],
            }),
            None,
            None,
        );
        hub.tick();
        hub.with_state(|_, _, p| {
            let access = p
                .topics
                .iter()
                .find(|t| t.role == "access")
                .expect("access");
            assert_eq!(access.produced_per_s, Some(100.0));
            assert_eq!(access.consumed[0].per_s, Some(80.0));
            assert_eq!(p.groups[0].hist, VecDeque::from(vec![10, 50]));
            assert_eq!(p.dead_letters.total, Some(7));
            assert_eq!(p.dead_letters.per_s, Some(2.0));
        });
    }
}
