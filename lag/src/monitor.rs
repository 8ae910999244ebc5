//! Turns successive snapshots into reports: lag in messages and seconds, the
//! owner of each partition, and a status per partition and per group.
//!
//! The monitor keeps state between snapshots (the end-offset tables behind
//! lag in seconds, and one sliding window per group and partition), so one
//! monitor lives as long as a `--watch` or an exporter. Memory is bounded:
//! each table and window is bounded, and entries for partitions that leave
//! a group are dropped.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::reader::GroupSnapshot;
use crate::seconds::EndOffsetHistory;
use crate::status::{LagStatus, LagWindow, Observation};

/// One partition in a report.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset; `None`: the group never committed here.
    pub committed: Option<i64>,
    /// Log-end offset.
    pub end: i64,
    /// max(0, end − committed); `None` when never committed.
    pub lag: Option<i64>,
    /// Lag in seconds, when the end-offset table can tell.
    pub lag_seconds: Option<f64>,
    /// `lag_seconds` is a lower bound (the committed offset predates the
    /// table).
    pub lag_seconds_at_least: bool,
    /// Owning member id, client id and host; `None` when unassigned.
    pub member_id: Option<String>,
    /// Owning member's client id.
    pub client_id: Option<String>,
    /// Owning member's host.
    pub host: Option<String>,
    /// Status from the window.
    pub status: LagStatus,
}

/// A group in a report.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// Group id.
    pub group: String,
    /// Coordinator state (`Stable`, `Empty`, …).
    pub state: String,
    /// Group protocol: `classic` or `consumer` (KIP-848); empty when Kafka
    /// does not know the group.
    pub protocol: String,
    /// Number of members.
    pub members: usize,
    /// Distinct topics among the partitions.
    pub topics: usize,
    /// Sum of the partitions' lag (never-committed partitions count 0).
    pub total_lag: i64,
    /// Largest lag in seconds among the partitions.
    pub max_lag_seconds: Option<f64>,
    /// Partitions the group never committed on.
    pub uncommitted_partitions: usize,
    /// Worst partition status.
    pub status: LagStatus,
    /// How much time the status windows cover, in seconds (0 for a single
    /// reading: only `stopped` and `ok` can be told then).
    pub observed_seconds: f64,
    /// Unix time of the reading, ms.
    pub at_ms: i64,
    /// Per partition, sorted by topic and partition.
    pub partitions: Vec<PartitionReport>,
}

/// Keeps the state that spans snapshots.
#[derive(Debug)]
pub struct LagMonitor {
    window_ms: i64,
    histories: HashMap<(String, i32), EndOffsetHistory>,
    seeded: HashSet<(String, i32)>,
    windows: HashMap<(String, String, i32), LagWindow>,
}

impl LagMonitor {
    /// A monitor whose status windows are `window` long.
    pub fn new(window: Duration) -> Self {
        LagMonitor {
            window_ms: window.as_millis().min(i64::MAX as u128) as i64,
            histories: HashMap::new(),
            seeded: HashSet::new(),
            windows: HashMap::new(),
        }
    }

    /// Partitions of `snap` that have lag and whose end-offset table was never
    /// seeded from the broker's time index.
    pub fn unseeded(&self, snap: &GroupSnapshot) -> Vec<(String, i32)> {
        snap.partitions
            .iter()
            .filter(|p| p.committed.is_some_and(|c| c < p.end))
            .map(|p| (p.topic.clone(), p.partition))
            .filter(|k| !self.seeded.contains(k))
            .collect()
    }

    /// Adds points from the broker's time index to a partition's table.
    pub fn seed(&mut self, topic: &str, partition: i32, points: Vec<(i64, i64)>) {
        let key = (topic.to_string(), partition);
        self.histories.entry(key.clone()).or_default().seed(points);
        self.seeded.insert(key);
    }

    /// Records a snapshot and reports on it.
    pub fn observe(&mut self, snap: &GroupSnapshot) -> GroupReport {
        let group = &snap.info.group;
        let has_members = !snap.info.members.is_empty();
        let mut present = HashSet::new();
        let mut parts = Vec::with_capacity(snap.partitions.len());
        let mut observed_ms = 0i64;
        for p in &snap.partitions {
            let hkey = (p.topic.clone(), p.partition);
            let history = self.histories.entry(hkey).or_default();
            history.record(snap.at_ms, p.end);
            let wkey = (group.clone(), p.topic.clone(), p.partition);
            present.insert(wkey.clone());
            let window = self
                .windows
                .entry(wkey)
                .or_insert_with(|| LagWindow::new(self.window_ms));
            window.push(Observation {
                at_ms: snap.at_ms,
                committed: p.committed,
                end: p.end,
            });
            observed_ms = observed_ms.max(window.span_ms());
            let time = p
                .committed
                .and_then(|c| history.lag_time(c, p.end, snap.at_ms));
            let owner = p.owner.and_then(|i| snap.info.members.get(i));
            parts.push(PartitionReport {
                topic: p.topic.clone(),
                partition: p.partition,
                committed: p.committed,
                end: p.end,
                lag: p.committed.map(|c| (p.end - c).max(0)),
                lag_seconds: time.map(|t| t.seconds),
                lag_seconds_at_least: time.is_some_and(|t| t.at_least),
                member_id: owner.map(|m| m.member_id.clone()),
                client_id: owner.map(|m| m.client_id.clone()),
                host: owner.map(|m| m.host.clone()),
                status: window.status(has_members),
            });
        }
        self.windows
            .retain(|k, _| &k.0 != group || present.contains(k));
        let topics: HashSet<&str> = parts.iter().map(|p| p.topic.as_str()).collect();
        GroupReport {
            group: group.clone(),
            state: snap.info.state.clone(),
            protocol: snap.info.group_type.clone(),
            members: snap.info.members.len(),
            topics: topics.len(),
            total_lag: parts.iter().filter_map(|p| p.lag).sum(),
            max_lag_seconds: parts
                .iter()
                .filter_map(|p| p.lag_seconds)
                .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s)))),
            uncommitted_partitions: parts.iter().filter(|p| p.committed.is_none()).count(),
            status: parts
                .iter()
                .map(|p| p.status)
                .max()
                .unwrap_or(LagStatus::Ok),
            observed_seconds: observed_ms as f64 / 1000.0,
            at_ms: snap.at_ms,
            partitions: parts,
        }
    }

    /// Forgets end-offset tables of partitions no group reported for a while
    /// (the exporter calls this with the partitions of its last round).
    pub fn retain_partitions(&mut self, keep: &HashSet<(String, i32)>) {
        self.histories.retain(|k, _| keep.contains(k));
        self.seeded.retain(|k| keep.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::{GroupInfo, Member, PartitionOffsets};

    fn snap(at_ms: i64, members: bool, parts: &[(i32, Option<i64>, i64)]) -> GroupSnapshot {
        GroupSnapshot {
            info: GroupInfo {
                group: "g".into(),
                state: if members { "Stable" } else { "Empty" }.into(),
                protocol_type: "consumer".into(),
                group_type: "classic".into(),
                members: if members {
                    vec![Member {
                        member_id: "m-1".into(),
                        client_id: "c".into(),
                        host: "/127.0.0.1".into(),
                        assignment: vec![("t".into(), vec![0])],
                    }]
                } else {
                    vec![]
                },
            },
            partitions: parts
                .iter()
                .map(|&(partition, committed, end)| PartitionOffsets {
                    topic: "t".into(),
                    partition,
                    committed,
                    end,
                    owner: (members && partition == 0).then_some(0),
                })
                .collect(),
            at_ms,
        }
    }

    #[test]
    fn report_totals_owners_and_seconds() {
        let mut m = LagMonitor::new(Duration::from_secs(10));
        m.observe(&snap(0, true, &[(0, Some(0), 0), (1, None, 0)]));
        // 100 records/s on partition 0; the group reads up to 150.
        let r = m.observe(&snap(2_000, true, &[(0, Some(150), 200), (1, None, 0)]));
        assert_eq!(r.total_lag, 50);
        assert_eq!(r.uncommitted_partitions, 1);
        assert_eq!(r.partitions[0].member_id.as_deref(), Some("m-1"));
        assert_eq!(r.partitions[1].member_id, None);
        assert_eq!(r.partitions[1].lag, None);
        let s = r.partitions[0].lag_seconds.expect("seconds");
        assert!((s - 0.49).abs() < 1e-9, "{s}");
        assert_eq!(r.status, LagStatus::Ok);
        assert_eq!(r.observed_seconds, 2.0);
    }

    #[test]
    fn group_status_is_the_worst_partition() {
        let mut m = LagMonitor::new(Duration::from_secs(10));
        let r = m.observe(&snap(0, false, &[(0, Some(5), 5), (1, Some(1), 9)]));
        assert_eq!(r.partitions[0].status, LagStatus::Ok);
        assert_eq!(r.status, LagStatus::Stopped);
    }

    #[test]
    fn partitions_leaving_the_group_are_forgotten() {
        let mut m = LagMonitor::new(Duration::from_secs(10));
        m.observe(&snap(0, true, &[(0, Some(0), 0), (1, Some(0), 0)]));
        m.observe(&snap(1_000, true, &[(0, Some(0), 0)]));
        assert_eq!(m.windows.len(), 1);
        m.retain_partitions(&HashSet::from([("t".to_string(), 0)]));
        assert_eq!(m.histories.len(), 1);
    }
}
