//! The backlog playbook applied to measured rates (`weir lag advise`):
//! how many consumers to run, how many partitions are needed, what rate to
//! cap producers at, and whether (and when) the backlog will be gone.
//!
//! Rates come from two readings of the group a window apart. Each line of
//! advice carries the numbers it was computed from, so an operator can check
//! it instead of trusting it.

use serde::Serialize;

use crate::reader::GroupSnapshot;

/// Produce and consume rates of a group over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measured {
    /// Records appended per second, all partitions.
    pub produce_per_s: f64,
    /// Offsets committed per second, all partitions.
    pub consume_per_s: f64,
    /// Partitions of the group.
    pub partitions: usize,
    /// Members at the second reading.
    pub members: usize,
    /// Total lag at the second reading.
    pub total_lag: i64,
    /// Seconds between the readings.
    pub window_s: f64,
    /// Unix time of the second reading, ms.
    pub at_ms: i64,
}

impl Measured {
    /// Rates between two readings of the same group. Partitions present in
    /// only one reading are left out of the rates; a committed offset going
    /// backwards counts as no progress, not negative progress.
    pub fn between(a: &GroupSnapshot, b: &GroupSnapshot) -> Option<Measured> {
        let dt = (b.at_ms - a.at_ms) as f64 / 1000.0;
        if dt <= 0.0 {
            return None;
        }
        let (mut produced, mut consumed) = (0i64, 0i64);
        for pb in &b.partitions {
            let Some(pa) = a
                .partitions
                .iter()
                .find(|p| p.topic == pb.topic && p.partition == pb.partition)
            else {
                continue;
            };
            produced += (pb.end - pa.end).max(0);
            if let (Some(ca), Some(cb)) = (pa.committed, pb.committed) {
                consumed += (cb - ca).max(0);
            }
        }
        Some(Measured {
            produce_per_s: produced as f64 / dt,
            consume_per_s: consumed as f64 / dt,
            partitions: b.partitions.len(),
            members: b.info.members.len(),
            total_lag: b
                .partitions
                .iter()
                .filter_map(|p| p.committed.map(|c| (p.end - c).max(0)))
                .sum(),
            window_s: dt,
            at_ms: b.at_ms,
        })
    }
}

/// What to do, with the figures behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    /// The measurement it rests on.
    pub measured: Measured,
    /// Rate the group must sustain (the target, or produce rate × headroom).
    pub target_per_s: f64,
    /// Consume rate of one member (`None` without members or progress).
    pub per_member_per_s: Option<f64>,
    /// Consumers to run (never more than partitions).
    pub consumers: Option<usize>,
    /// Partitions needed to reach the target with one member each.
    pub partitions_needed: Option<usize>,
    /// Rate to cap producers at until partitions are added (`None`: no cap
    /// needed).
    pub producer_cap_per_s: Option<f64>,
    /// Lag shrinks over the window.
    pub shrinking: bool,
    /// Seconds until the lag is gone at the measured rates.
    pub drained_in_s: Option<f64>,
    /// The playbook's lines, for people.
    pub lines: Vec<String>,
}

/// Margin over the produce rate a group should be able to take, so that a
/// backlog drains and bursts are absorbed.
pub const HEADROOM: f64 = 1.2;

/// Applies the playbook. `target_per_s` overrides the rate to sustain
/// (default: the produce rate × [`HEADROOM`]).
pub fn advise(m: &Measured, target_per_s: Option<f64>) -> Advice {
    let target = target_per_s.unwrap_or(m.produce_per_s * HEADROOM);
    let p = m.partitions.max(1);
    let per_member =
        (m.members > 0 && m.consume_per_s > 0.0).then(|| m.consume_per_s / m.members as f64);
    let mut lines = vec![format!(
        "measured over {:.0} s: produce {:.1}/s, consume {:.1}/s, {} member(s), {} partition(s), lag {}",
        m.window_s, m.produce_per_s, m.consume_per_s, m.members, m.partitions, m.total_lag
    )];
    let (consumers, partitions_needed, cap) = match per_member {
        None if m.members == 0 => {
            lines.push(
                "consumers: none running; start at least 1 (at most {p}), then advise again to size the group"
                    .replace("{p}", &p.to_string()),
            );
            (None, None, None)
        }
        None => {
            lines.push(format!(
                "consumers: {} member(s) consumed nothing in {:.0} s: they are stalled; fix them before scaling (see docs/runbooks/backlog.md)",
                m.members, m.window_s
            ));
            (None, None, None)
        }
        Some(per) => {
            let raw = ((target / per).ceil() as usize).max(1);
            let run = raw.min(p);
            lines.push(format!(
                "consumers: run {run} (target {target:.1}/s ÷ {per:.1}/s per member = {raw}{})",
                if raw > p {
                    format!(", capped at {p} partitions")
                } else {
                    String::new()
                }
            ));
            if raw > p {
                let cap = per * p as f64 / HEADROOM;
                lines.push(format!(
                    "partitions: {raw} needed to reach {target:.1}/s at {per:.1}/s each (now {p}): weir topics scale TOPIC --partitions {raw}"
                ));
                lines.push(format!(
                    "producers: cap at {cap:.1}/s until then ({p} partitions × {per:.1}/s ÷ {HEADROOM} headroom)"
                ));
                (Some(run), Some(raw), Some(cap))
            } else {
                lines.push(format!("partitions: {p} suffice"));
                lines.push("producers: no cap needed".into());
                (Some(run), Some(p), None)
            }
        }
    };
    let net = m.consume_per_s - m.produce_per_s;
    let shrinking = m.total_lag > 0 && net > 0.0;
    let drained_in_s = if m.total_lag == 0 {
        Some(0.0)
    } else if shrinking {
        Some(m.total_lag as f64 / net)
    } else {
        None
    };
    lines.push(match drained_in_s {
        Some(_) if m.total_lag == 0 => "backlog: none".to_string(),
        Some(s) => {
            let by =
                chrono::DateTime::from_timestamp((m.at_ms as f64 / 1000.0 + s).round() as i64, 0)
                    .map_or_else(
                        || "?".into(),
                        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                    );
            format!(
                "backlog: shrinking at {net:.1}/s; {} left, gone in {s:.0} s (by {by})",
                m.total_lag
            )
        }
        None => format!(
            "backlog: growing at {:.1}/s; {} left, not shrinking at these rates",
            -net, m.total_lag
        ),
    });
    Advice {
        measured: m.clone(),
        target_per_s: target,
        per_member_per_s: per_member,
        consumers,
        partitions_needed,
        producer_cap_per_s: cap,
        shrinking,
        drained_in_s,
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::{GroupInfo, Member, PartitionOffsets};

    fn m(produce: f64, consume: f64, members: usize, partitions: usize, lag: i64) -> Measured {
        Measured {
            produce_per_s: produce,
            consume_per_s: consume,
            partitions,
            members,
            total_lag: lag,
            window_s: 30.0,
            at_ms: 1_000_000,
        }
    }

    #[test]
    fn more_consumers_within_partitions() {
        // 2 members take 100/s each; 300/s produced → target 360/s → 4.
        let a = advise(&m(300.0, 200.0, 2, 6, 5_000), None);
        assert_eq!(a.consumers, Some(4));
        assert_eq!(a.partitions_needed, Some(6));
        assert_eq!(a.producer_cap_per_s, None);
        assert!(!a.shrinking);
        assert!(a.lines.iter().any(|l| l.contains("run 4")), "{:?}", a.lines);
    }

    #[test]
    fn never_more_consumers_than_partitions() {
        // 1,000/s produced, 50/s per member, 6 partitions → 24 needed.
        let a = advise(&m(1_000.0, 100.0, 2, 6, 10_000), None);
        assert_eq!(a.consumers, Some(6));
        assert_eq!(a.partitions_needed, Some(24));
        let cap = a.producer_cap_per_s.expect("cap");
        assert!((cap - 250.0).abs() < 1e-9, "{cap}");
        assert!(a.lines.iter().any(|l| l.contains("--partitions 24")));
    }

    #[test]
    fn shrinking_backlog_says_when() {
        let a = advise(&m(100.0, 300.0, 3, 6, 10_000), None);
        assert!(a.shrinking);
        assert_eq!(a.drained_in_s, Some(50.0));
        assert!(a.lines.last().is_some_and(|l| l.contains("gone in 50 s")));
        let none = advise(&m(100.0, 100.0, 3, 6, 0), None);
        assert_eq!(none.drained_in_s, Some(0.0));
    }

    #[test]
    fn no_members_or_stalled_members() {
        let a = advise(&m(100.0, 0.0, 0, 6, 500), None);
        assert_eq!(a.consumers, None);
        assert!(a.lines[1].contains("none running"));
        let a = advise(&m(100.0, 0.0, 2, 6, 500), None);
        assert!(a.lines[1].contains("stalled"));
        // Division guards: no partitions, no rates.
        let a = advise(&m(0.0, 0.0, 0, 0, 0), Some(0.0));
        assert_eq!(a.drained_in_s, Some(0.0));
    }

    #[test]
    fn rates_between_two_readings() {
        let snap = |at_ms, c0, e0| GroupSnapshot {
            info: GroupInfo {
                group: "g".into(),
                state: "Stable".into(),
                protocol_type: "consumer".into(),
                group_type: "classic".into(),
                members: vec![Member {
                    member_id: "m".into(),
                    client_id: "c".into(),
                    host: "/h".into(),
                    assignment: vec![],
                }],
            },
            partitions: vec![PartitionOffsets {
                topic: "t".into(),
                partition: 0,
                committed: Some(c0),
                end: e0,
                owner: Some(0),
            }],
            at_ms,
        };
        let r = Measured::between(&snap(0, 0, 100), &snap(10_000, 300, 1_100)).expect("rates");
        assert_eq!(r.produce_per_s, 100.0);
        assert_eq!(r.consume_per_s, 30.0);
        assert_eq!(r.total_lag, 800);
        // A reset backwards is no progress; no time elapsed gives nothing.
        let r = Measured::between(&snap(0, 500, 600), &snap(1_000, 0, 600)).expect("rates");
        assert_eq!(r.consume_per_s, 0.0);
        assert!(Measured::between(&snap(0, 0, 0), &snap(0, 0, 0)).is_none());
    }
}
