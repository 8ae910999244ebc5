//! `weir lag list` and `weir lag describe`: consumer lag for operators and
//! scripts, with exit codes a script can branch on; `weir lag export`: the
//! same figures as Prometheus metrics and a Redis signal for producers.
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
use weir_core::{InternalEvent, RedisHandle};
use weir_lag::advice::{self, Measured};
use weir_lag::events::{GroupLagExported, LagEvaluated, LagRead, LagReadFailed, SignalPublished};
use weir_lag::{
    seed_from_time_index, GroupReport, LagError, LagMonitor, LagReader, LagSignal, LagStatus,
};

use crate::cli::{LagAdviseArgs, LagViewArgs};
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

/// Which groups to read.
#[derive(Debug, Clone)]
enum Which {
    /// Every group the cluster lists.
    All,
    /// One group, which must exist.
    One(String),
    /// These groups; missing ones are skipped (they may not exist yet).
    Some(Vec<String>),
}

/// Reads the groups and builds reports. Blocking: the caller runs it on
/// `spawn_blocking`.
fn read(
    reader: &LagReader,
    monitor: &mut LagMonitor,
    which: &Which,
    time_index: bool,
) -> Result<Vec<GroupReport>, LagError> {
    let names: Vec<String> = match which {
        Which::One(g) => vec![g.clone()],
        Which::Some(gs) => gs.clone(),
        Which::All => reader.list_groups()?.into_iter().map(|g| g.group).collect(),
    };
    let mut reports = Vec::with_capacity(names.len());
    for name in names {
        let snap = match reader.snapshot(&name) {
            Ok(s) => s,
            // Listed a moment ago and gone now, or not created yet.
            Err(LagError::GroupNotFound(_)) if !matches!(which, Which::One(_)) => continue,
            Err(e) => return Err(e),
        };
        if !time_index {
            // Lag in seconds builds up from the readings (--watch) instead.
        } else if let Err(e) = seed_from_time_index(reader, monitor, &snap) {
            tracing::warn!(error = %e, "cannot read the broker's time index; lag in seconds builds up from readings instead");
        }
        reports.push(monitor.observe(&snap));
    }
    Ok(reports)
}

/// One reading on a blocking thread; the monitor goes there and back.
async fn read_async(
    reader: &Arc<LagReader>,
    monitor: LagMonitor,
    which: &Which,
    time_index: bool,
) -> anyhow::Result<(LagMonitor, Result<Vec<GroupReport>, LagError>)> {
    let (r, w) = (reader.clone(), which.clone());
    tokio::task::spawn_blocking(move || {
        let mut monitor = monitor;
        let res = read(&r, &mut monitor, &w, time_index);
        (monitor, res)
    })
    .await
    .context("the Kafka reader thread failed")
}

/// `weir lag list` (group `None`) and `weir lag describe GROUP`.
pub async fn run(
    cfg: &Config,
    group: Option<&str>,
    args: &LagViewArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let reader = Arc::new(LagReader::new(&cfg.kafka, cfg.lag.timeout)?);
    let mut monitor = LagMonitor::new(cfg.lag.window);
    let which = group.map_or(Which::All, |g| Which::One(g.to_string()));
    let tty = std::io::stdout().is_terminal();
    let mut readings = 0u64;
    let code = loop {
        let (m, res) = read_async(&reader, monitor, &which, !args.no_lag_time).await?;
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
    // The reader only read: no commit, no record in flight. Closing its
    // Kafka clients (librdkafka waits for every broker thread to finish)
    // would only delay the exit of a command scripts call in loops, so they
    // are left for the operating system to close with the process.
    std::mem::forget(reader);
    if code == 0 {
        Ok(())
    } else {
        Err(StatusExit(code).into())
    }
}

/// `weir lag export`: every `lag.interval`, reads the groups (all, or those
/// named), updates the Prometheus gauges and writes each group's signal to
/// Redis (a key that expires after three intervals, and the lag channel).
/// A failed reading or Redis write is logged and counted; the next interval
/// tries again, so the exporter outlives Kafka or Redis restarts.
pub async fn export(
    cfg: &Config,
    groups: &[String],
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The deployment's own topics: their log ends give the dashboard the
    // produce rates, dead letters included (no group reads that topic).
    let own_topics: Vec<String> = [&cfg.topics.health, &cfg.topics.access, &cfg.topics.dlq]
        .into_iter()
        .filter(|t| !t.is_empty())
        .cloned()
        .collect();
    let reader = Arc::new(LagReader::new(&cfg.kafka, cfg.lag.timeout)?);
    let redis = RedisHandle::new(&cfg.redis).context("redis.url")?;
    let keys = cfg.redis.keys();
    let which = if groups.is_empty() {
        Which::All
    } else {
        Which::Some(groups.to_vec())
    };
    let expiry_ms = (cfg.lag.interval.as_millis() * 3).clamp(1, u64::MAX as u128) as u64;
    let mut monitor = LagMonitor::new(cfg.lag.window);
    let mut tick = tokio::time::interval(cfg.lag.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(interval = ?cfg.lag.interval, groups = ?groups, "lag exporter started");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let started = std::time::Instant::now();
        let (m, res) = read_async(&reader, monitor, &which, true).await?;
        monitor = m;
        let reports = match res {
            Ok(r) => r,
            Err(e) => {
                LagReadFailed { error: &e }.emit();
                continue;
            }
        };
        LagRead.emit();
        let mut keep = std::collections::HashSet::new();
        for r in &reports {
            keep.extend(r.partitions.iter().map(|p| (p.topic.clone(), p.partition)));
            GroupLagExported { report: r }.emit();
            let signal = r.signal(cfg.lag.threshold);
            let published = publish(&redis, &keys, &signal, expiry_ms).await;
            SignalPublished {
                group: &r.group,
                result: published
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| e as &dyn std::fmt::Display),
            }
            .emit();
        }
        monitor.retain_partitions(&keep);
        match topic_ends(&reader, &own_topics).await {
            Ok(ends) => {
                if let Err(e) = publish_topic_ends(&redis, &keys, &ends, expiry_ms).await {
                    tracing::debug!(error = %e, "cannot write the topics' log ends");
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the topics' log ends"),
        }
        LagEvaluated {
            took: started.elapsed(),
        }
        .emit();
    }
    tracing::info!("lag exporter stopped");
    Ok(())
}

/// Sums of the log-end offsets of `topics` (missing topics are left out).
async fn topic_ends(
    reader: &Arc<LagReader>,
    topics: &[String],
) -> anyhow::Result<weir_schemas::TopicEnds> {
    let (r, wanted) = (reader.clone(), topics.to_vec());
    tokio::task::spawn_blocking(move || -> Result<weir_schemas::TopicEnds, LagError> {
        let all = r.topics()?;
        let parts: Vec<(String, i32)> = wanted
            .iter()
            .filter_map(|t| all.get(t).map(|n| (t, *n)))
            .flat_map(|(t, n)| (0..n).map(move |p| (t.clone(), p)))
            .collect();
        let ends = r.end_offsets(parts.iter())?;
        let mut sums: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for ((t, _), end) in ends {
            *sums.entry(t).or_default() += end;
        }
        Ok(weir_schemas::TopicEnds {
            at_ms: chrono::Utc::now().timestamp_millis(),
            topics: sums.into_iter().collect(),
        })
    })
    .await
    .context("the Kafka reader thread failed")?
    .map_err(Into::into)
}

async fn publish_topic_ends(
    redis: &RedisHandle,
    keys: &weir_schemas::RedisKeys,
    ends: &weir_schemas::TopicEnds,
    expiry_ms: u64,
) -> anyhow::Result<()> {
    let json = serde_json::to_string(ends)?;
    let mut conn = redis.conn().await?;
    redis::cmd("SET")
        .arg(keys.topic_ends())
        .arg(&json)
        .arg("PX")
        .arg(expiry_ms)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

/// Writes the key and publishes on the channel in one transaction.
async fn publish(
    redis: &RedisHandle,
    keys: &weir_schemas::RedisKeys,
    signal: &LagSignal,
    expiry_ms: u64,
) -> anyhow::Result<()> {
    let json = serde_json::to_string(signal)?;
    let mut conn = redis.conn().await?;
    redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(keys.lag(&signal.group))
        .arg(&json)
        .arg("PX")
        .arg(expiry_ms)
        .ignore()
        .cmd("PUBLISH")
        .arg(keys.lag_channel())
        .arg(&json)
        .ignore()
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

/// `weir lag advise GROUP`: two readings `--window` apart, then the
/// playbook. Exit 3 when the group does not exist.
pub async fn advise(
    cfg: &Config,
    args: &LagAdviseArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let reader = Arc::new(LagReader::new(&cfg.kafka, cfg.lag.timeout)?);
    let snap = |reader: Arc<LagReader>, group: String| async move {
        tokio::task::spawn_blocking(move || reader.snapshot(&group))
            .await
            .context("the Kafka reader thread failed")
    };
    let first = match snap(reader.clone(), args.group.clone()).await? {
        Ok(s) => s,
        Err(LagError::GroupNotFound(g)) => {
            eprintln!("weir: consumer group {g:?} does not exist");
            return Err(StatusExit(NOT_FOUND).into());
        }
        Err(e) => return Err(e.into()),
    };
    if !args.json {
        eprintln!(
            "measuring {} for {} …",
            args.group,
            humantime::format_duration(args.window)
        );
    }
    tokio::select! {
        _ = shutdown.cancelled() => anyhow::bail!("interrupted before the window ended"),
        _ = tokio::time::sleep(args.window) => {}
    }
    let second = snap(reader, args.group.clone()).await??;
    let measured = Measured::between(&first, &second)
        .context("the two readings carry the same time; try a longer --window")?;
    let a = advice::advise(&measured, args.target_rate);
    if args.json {
        println!("{}", serde_json::to_string(&a)?);
    } else {
        for l in &a.lines {
            println!("{l}");
        }
    }
    Ok(())
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
        "group {}  protocol {}  state {}  members {}  status {}  total lag {}  max lag {}  (window observed {:.0}s)\n",
        r.group,
        if r.protocol.is_empty() { "-" } else { &r.protocol },
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
