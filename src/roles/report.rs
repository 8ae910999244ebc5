//! `weir mail`, `weir report send` and `weir report schedule`: the daily
//! uptime report's roles (weir-report), wired from the config.

use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use weir_consumers::{GroupRuntime, RunReport};
use weir_producers::EventProducer;
use weir_report::{ReportAggregator, Scheduler, Sender};
use weir_schemas::{Event, ReportKind, ReportRequest};

use super::{migrate, pool, producer, require_topic, PRODUCER_DRAIN};
use crate::cli::ReportSendArgs;
use crate::config::Config;

/// The consumer runtime's and the health group's tables (the report reads
/// uptime from them), then the report's own.
pub async fn migrate_report(pool: &PgPool, shutdown: &CancellationToken) -> anyhow::Result<()> {
    migrate(pool, shutdown).await?;
    weir_report::migrator()
        .run(pool)
        .await
        .context("running the report's PostgreSQL migrations (database.url)")
}

/// `weir mail`: one member of the mail group, and the outbox sender.
pub async fn mail(cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<RunReport> {
    let pool = pool(cfg)?;
    migrate_report(&pool, &shutdown).await?;
    let wake = Arc::new(Notify::new());
    let sender = Sender::new(pool.clone(), cfg.mail.clone()).map_err(anyhow::Error::msg)?;
    let deadline = sender.drain_deadline();
    let stop_sender = shutdown.child_token();
    let sending = tokio::spawn(sender.run(wake.clone(), stop_sender.clone()));
    let dlq = EventProducer::new(&cfg.kafka, "dlq").context("creating the dead-letter producer")?;
    let mut consumer = cfg.consumer.clone();
    // A group shared by name with the other roles (tests set one) gets its
    // own name per topic, so the roles never rebalance one another.
    if !consumer.group.is_empty() {
        consumer.group = format!("{}.mail", consumer.group);
    }
    let runtime = GroupRuntime::builder(
        ReportAggregator::new(pool.clone(), wake),
        &cfg.topics.report,
        pool,
    )
    .config(consumer)
    .kafka(cfg.kafka.clone())
    .dead_letter_topic(&cfg.topics.dlq)
    .dead_letter_producer(dlq.clone())
    .build()?;
    let group = runtime.group().to_string();
    let report = runtime.run(shutdown).await;
    stop_sender.cancel();
    // The mail being sent finishes (or times out) before we exit.
    let _ = tokio::time::timeout(deadline, sending).await;
    let _ = tokio::task::spawn_blocking(move || dlq.flush(PRODUCER_DRAIN)).await;
    report.with_context(|| format!("consumer group {group}"))
}

/// `weir report schedule`: the schedule alone, until a signal.
pub async fn schedule(cfg: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !cfg.report.schedule {
        anyhow::bail!(
            "report.schedule is off: set it (WEIR_REPORT_SCHEDULE=true) and report.recipients"
        );
    }
    let pool = pool(cfg)?;
    migrate_report(&pool, &shutdown).await?;
    let producer = producer(cfg, "report")?;
    require_topic(&producer, &cfg.topics.report, "topics.report").await?;
    let scheduler = Scheduler::new(pool, producer.clone(), &cfg.topics.report, &cfg.report)?;
    scheduler.run(shutdown).await;
    let _ = tokio::task::spawn_blocking(move || producer.flush(PRODUCER_DRAIN)).await;
    Ok(())
}

/// Starts the schedule beside another role (`weir center`, `weir up`) when
/// report.schedule is set.
pub async fn spawn_schedule(
    cfg: &Config,
    pool: PgPool,
    producer: Arc<EventProducer>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if !cfg.report.schedule {
        return Ok(None);
    }
    weir_report::migrator()
        .run(&pool)
        .await
        .context("running the report's PostgreSQL migrations (database.url)")?;
    let scheduler = Scheduler::new(pool, producer, &cfg.topics.report, &cfg.report)?;
    Ok(Some(tokio::spawn(scheduler.run(shutdown))))
}

/// `weir report send`: puts one manual request on the report topic and
/// prints its id once Kafka acknowledged it.
pub async fn send(cfg: &Config, a: &ReportSendArgs) -> anyhow::Result<()> {
    let recipients = if a.to.is_empty() {
        cfg.report.recipients.clone()
    } else {
        a.to.clone()
    };
    let req = ReportRequest {
        schema_version: ReportRequest::SCHEMA_VERSION,
        request_id: format!("manual-{}", uuid::Uuid::new_v4().simple()),
        kind: ReportKind::Manual,
        from: a.day,
        to: a.until.unwrap_or(a.day),
        tz: a.tz.clone().unwrap_or_else(|| cfg.report.tz.clone()),
        recipients,
        requested_at: Utc::now(),
    };
    req.validate()
        .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
    let producer = producer(cfg, "report")?;
    require_topic(&producer, &cfg.topics.report, "topics.report").await?;
    let d = producer
        .send(&cfg.topics.report, &req)
        .await
        .with_context(|| format!("producing to {}", cfg.topics.report))?;
    eprintln!(
        "report of {}..={} ({}) for {} recipient(s) requested on {} [{}:{}]",
        req.from,
        req.to,
        req.tz,
        req.recipients.len(),
        cfg.topics.report,
        d.partition,
        d.offset
    );
    println!("{}", req.request_id);
    Ok(())
}
