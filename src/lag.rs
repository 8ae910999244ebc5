//! `weir lag list` and `weir lag describe`: consumer lag for operators and
//! scripts, with exit codes a script can branch on.
//!
//! Exit codes: 0 every group ok; 3 the group does not exist; 4 a group is
//! in `warning`; 5 a group is `stalled`, `stopped` or `rewinding`; 1 Kafka
//! could not be read; 2 bad flags or configuration.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use weir_consumers::lag::{
    seed_from_time_index, GroupReport, LagError, LagMonitor, LagReader, LagStatus,
};

use crate::cli::LagViewArgs;
use crate::config::Config;

/// Not an error: the exit status a finished `weir lag` command hands to
/// `main`, so that scripts can tell ok from warning from trouble.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct StatusExit(pub u8);

/// Exit status for the worst status seen.
fn exit_for(worst: LagStatus) -> u8 {
    match worst {
        LagStatus::Ok => 0,
        LagStatus::Warning => 4,
        LagStatus::Rewinding | LagStatus::Stalled | LagStatus::Stopped => 5,
    }
}

/// Exit status of a missing group.
const NOT_FOUND: u8 = 3;

/// Reads the groups (all of them, or one) and builds reports. Blocking: the
/// caller runs it on `spawn_blocking`.
fn read(
    reader: &LagReader,
    monitor: &mut LagMonitor,
    group: Option<&str>,
) -> Result<Vec<GroupReport>, LagError> {
    let names: Vec<String> = match group {
        Some(g) => vec![g.to_string()],
        None => reader.list_groups()?.into_iter().map(|g| g.group).collect(),
    };
    let mut reports = Vec::with_capacity(names.len());
    for name in names {
        let snap = match reader.snapshot(&name) {
            Ok(s) => s,
            // Listed a moment ago, gone now: skip it in a list.
            Err(LagError::GroupNotFound(_)) if group.is_none() => continue,
            Err(e) => return Err(e),
        };
        if let Err(e) = seed_from_time_index(reader, monitor, &snap) {
            tracing::warn!(error = %e, "cannot read the broker's time index; lag in seconds builds up from readings instead");
        }
        reports.push(monitor.observe(&snap));
    }
    Ok(reports)
}

/// `weir lag list` (group `None`) and `weir lag describe GROUP`.
pub async fn run(
    cfg: &Config,
    group: Option<&str>,
    args: &LagViewArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let reader =
        Arc::new(LagReader::new(&cfg.kafka, cfg.lag.timeout).context("creating the Kafka client")?);
    let mut monitor = LagMonitor::new(cfg.lag.window);
    let tty = std::io::stdout().is_terminal();
    let mut readings = 0u64;
    let code = loop {
        let (r, g) = (reader.clone(), group.map(str::to_string));
        let (m, res) = tokio::task::spawn_blocking(move || {
            let res = read(&r, &mut monitor, g.as_deref());
            (monitor, res)
        })
        .await
        .context("the Kafka reader thread failed")?;
        monitor = m;
        let reports = match res {
            Ok(r) => r,
            Err(LagError::GroupNotFound(g)) => {
                eprintln!("weir: consumer group {g:?} does not exist");
                return Err(StatusExit(NOT_FOUND).into());
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("Kafka at {}", cfg.kafka.brokers)))
            }
        };
        readings += 1;
        let worst = reports
            .iter()
            .map(|r| r.status)
            .max()
            .unwrap_or(LagStatus::Ok);
        let out = if args.json {
            json(group.is_some(), &reports)? + "\n"
        } else if group.is_some() {
            reports.iter().map(describe_text).collect()
        } else {
            list_text(&reports)
        };
        {
            let mut stdout = std::io::stdout().lock();
            if args.watch && tty && !args.json {
                // Redraw in place: home, clear screen.
                let _ = write!(stdout, "\x1b[H\x1b[2J");
            }
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
        }
        let done = !args.watch || args.count.is_some_and(|n| readings >= n);
        if done {
            break exit_for(worst);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break exit_for(worst),
            _ = tokio::time::sleep(cfg.lag.interval) => {}
        }
    };
    if code == 0 {
        Ok(())
    } else {
        Err(StatusExit(code).into())
    }
}

fn json(single: bool, reports: &[GroupReport]) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct List<'a> {
        groups: &'a [GroupReport],
    }
    Ok(match (single, reports.first()) {
        (true, Some(r)) => serde_json::to_string(r)?,
        _ => serde_json::to_string(&List { groups: reports })?,
    })
}

fn seconds(s: Option<f64>, at_least: bool) -> String {
    match s {
        None => "-".into(),
        Some(s) if at_least => format!(">={s:.0}s"),
        Some(s) if s < 10.0 => format!("{s:.1}s"),
        Some(s) => format!("{s:.0}s"),
    }
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Left-aligned columns sized to their widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn describe_text(r: &GroupReport) -> String {
    let mut out = format!(
        "group {}  state {}  members {}  status {}  total lag {}  max lag {}  (window observed {:.0}s)\n",
        r.group,
        r.state,
        r.members,
        r.status,
        r.total_lag,
        seconds(r.max_lag_seconds, false),
        r.observed_seconds
    );
    if r.members == 0 {
        out.push_str("no active members: lag stays as last committed\n");
    }
    if r.uncommitted_partitions > 0 {
        let _ = writeln!(
            out,
            "{} partition(s) never committed by this group (offset \"-\")",
            r.uncommitted_partitions
        );
    }
    out.push('\n');
    let mut rows = vec![[
        "TOPIC",
        "PARTITION",
        "COMMITTED",
        "END",
        "LAG",
        "LAG-TIME",
        "STATUS",
        "MEMBER",
        "HOST",
        "CLIENT-ID",
    ]
    .map(String::from)
    .to_vec()];
    for p in &r.partitions {
        rows.push(vec![
            p.topic.clone(),
            p.partition.to_string(),
            opt(p.committed),
            p.end.to_string(),
            opt(p.lag),
            seconds(p.lag_seconds, p.lag_seconds_at_least),
            p.status.to_string(),
            p.member_id.clone().unwrap_or_else(|| "-".into()),
            p.host.clone().unwrap_or_else(|| "-".into()),
            p.client_id.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out + &table(&rows)
}

fn list_text(reports: &[GroupReport]) -> String {
    if reports.is_empty() {
        return "no consumer groups\n".into();
    }
    let mut rows = vec![[
        "GROUP",
        "STATE",
        "MEMBERS",
        "TOPICS",
        "PARTITIONS",
        "LAG",
        "MAX-LAG-TIME",
        "STATUS",
    ]
    .map(String::from)
    .to_vec()];
    for r in reports {
        rows.push(vec![
            r.group.clone(),
            r.state.clone(),
            r.members.to_string(),
            r.topics.to_string(),
            r.partitions.len().to_string(),
            r.total_lag.to_string(),
            seconds(r.max_lag_seconds, false),
            r.status.to_string(),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_order_by_severity() {
        assert_eq!(exit_for(LagStatus::Ok), 0);
        assert_eq!(exit_for(LagStatus::Warning), 4);
        for s in [LagStatus::Stalled, LagStatus::Stopped, LagStatus::Rewinding] {
            assert_eq!(exit_for(s), 5);
        }
    }

    #[test]
    fn tables_align_and_seconds_read_well() {
        let t = table(&[
            vec!["A".into(), "BB".into()],
            vec!["ccc".into(), "d".into()],
        ]);
        assert_eq!(t, "A    BB\nccc  d\n");
        assert_eq!(seconds(None, false), "-");
        assert_eq!(seconds(Some(1.234), false), "1.2s");
        assert_eq!(seconds(Some(86_400.0), true), ">=86400s");
    }
}
