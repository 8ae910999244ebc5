//! Cost of evaluating lag for many partitions per interval: what
//! `weir lag export` does after Kafka answered (tables, windows, statuses,
//! report, signal), on synthetic readings so that only our code is timed.
//!
//! `cargo run --release -p weir-consumers --example lag_eval -- [PARTITIONS] [ROUNDS]`
//! prints the wall time of one evaluation, median of ROUNDS. The loop is
//! single-threaded and does no I/O, so its wall time is an upper bound of its
//! CPU time (equal on an idle core).

use std::time::{Duration, Instant};

use weir_lag::{GroupInfo, GroupSnapshot, LagMonitor, Member, PartitionOffsets};

fn main() {
    let mut args = std::env::args().skip(1);
    let partitions: i32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let topics = 10;
    let per_topic = partitions / topics;
    let members: Vec<Member> = (0..20)
        .map(|i| Member {
            member_id: format!("weir-consume-{i}-0000"),
            client_id: format!("weir-consume-{i}"),
            host: "/10.0.0.1".into(),
            assignment: vec![],
        })
        .collect();
    let mut monitor = LagMonitor::new(Duration::from_secs(60));
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds as i64 {
        let snap = GroupSnapshot {
            info: GroupInfo {
                group: "bench".into(),
                state: "Stable".into(),
                protocol_type: "consumer".into(),
                group_type: "classic".into(),
                members: members.clone(),
            },
            partitions: (0..topics)
                .flat_map(|t| {
                    (0..per_topic).map(move |p| PartitionOffsets {
                        topic: format!("topic-{t}"),
                        partition: p,
                        committed: Some(round * 900 + i64::from(p % 7) * 10),
                        end: round * 1_000 + 500,
                        owner: Some((p % 20) as usize),
                    })
                })
                .collect(),
            at_ms: 1_800_000_000_000 + round * 2_000,
        };
        let start = Instant::now();
        let report = monitor.observe(&snap);
        let signal = report.signal(200);
        let json = serde_json::to_string(&signal).unwrap_or_default();
        times.push(start.elapsed());
        std::hint::black_box(json);
    }
    times.sort();
    let med = times[times.len() / 2];
    println!(
        "{} partitions: median {:.1} ms per evaluation (min {:.1} ms, max {:.1} ms, {} rounds)",
        topics * per_topic,
        med.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        rounds
    );
}
