//! Each role and command wired from its config: build, then run until the
//! shutdown token fires, then report how it ended. One file per role; this
//! module holds what several share and the dispatch from a command to its
//! role.

mod agent;
mod auth;
pub mod balance;
mod center;
mod consume;
pub mod demo;
pub mod dlq;
pub mod edge;
pub mod gen;
pub mod ingest;
pub mod lag;
mod report;
mod servers;
pub mod topics;
mod up;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::info;
use weir_consumers::MIGRATOR;
use weir_core::RedisHandle;
use weir_producers::EventProducer;

use crate::cli::{
    AuthCommand, Cli, Command, ConsumeCommand, DlqCommand, GenCommand, LagCommand, ReportCommand,
    TopicsCommand,
};
use crate::config::Config;
use crate::telemetry;

/// How long producers get to flush at shutdown.
pub(crate) const PRODUCER_DRAIN: Duration = Duration::from_secs(10);

pub(crate) fn producer(cfg: &Config, role: &str) -> anyhow::Result<Arc<EventProducer>> {
    Ok(Arc::new(
        EventProducer::new(&cfg.kafka, role).context("creating the Kafka producer")?,
    ))
}

pub(crate) fn pool(cfg: &Config) -> anyhow::Result<PgPool> {
    cfg.database.pool().context("database.url")
}

pub(crate) fn redis(cfg: &Config) -> anyhow::Result<Arc<RedisHandle>> {
    Ok(Arc::new(RedisHandle::new(&cfg.redis).context("redis.url")?))
}

/// Runs the migrations, waiting for PostgreSQL to come up (it may be starting
/// alongside us) for a bounded time.
pub async fn migrate(pool: &PgPool, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline && !shutdown.is_cancelled() => {
                info!(error = %e, "PostgreSQL not ready for migrations; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("running PostgreSQL migrations (database.url)"),
        }
    }
}

/// Fails when `topic` is known not to exist; if Kafka cannot be reached yet,
/// goes on (the producer buffers and retries).
pub async fn require_topic(
    producer: &Arc<EventProducer>,
    topic: &str,
    key: &str,
) -> anyhow::Result<()> {
    let (p, t) = (producer.clone(), topic.to_string());
    match tokio::task::spawn_blocking(move || p.topic_exists(&t, Duration::from_secs(10))).await? {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!(
            "topic {topic} ({key}) does not exist: create it with `weir topics ensure`"
        ),
        Err(e) => {
            tracing::warn!(%topic, error = %e, "cannot check the topic yet; records are buffered until Kafka answers");
            Ok(())
        }
    }
}

/// Runs the command of `cli` with `cfg` until it ends or a signal stops it.
pub async fn run(cli: Cli, cfg: Config) -> anyhow::Result<()> {
    let shutdown = weir_core::shutdown_on_signals();
    let handle = telemetry::init_metrics()?;
    let needs_metrics = !matches!(
        cli.command,
        Command::Topics(_)
            | Command::Config
            | Command::Auth(_)
            | Command::Servers(_)
            | Command::Dlq(_)
            | Command::Report(ReportCommand::Send(_))
            | Command::Lag(LagCommand::List(_) | LagCommand::Describe(_) | LagCommand::Advise(_))
    );
    if needs_metrics {
        if let Some(l) = telemetry::bind_metrics(&cfg.metrics.addr).await? {
            telemetry::spawn_metrics_server(l, handle.clone(), shutdown.clone());
        }
    }
    match cli.command {
        Command::Up(_) => up::up(&cfg, shutdown).await,
        Command::Agent(_) => {
            let r = agent::agent(&cfg, shutdown).await?;
            println!("{}", serde_json::to_string(&r)?);
            if r.failed > 0 {
                anyhow::bail!(
                    "{} of {} health reports were not delivered",
                    r.failed,
                    r.queued
                );
            }
            Ok(())
        }
        Command::Consume(ConsumeCommand::Health(_)) => {
            let r = consume::consume_health(&cfg, shutdown).await?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Command::Consume(ConsumeCommand::Access(_)) => {
            let r = consume::consume_access(&cfg, shutdown).await?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Command::Gen(GenCommand::Access(a)) => gen::command(&cfg, a, shutdown).await,
        Command::Gen(GenCommand::Replay(a)) => gen::replay_command(&cfg, a, shutdown).await,
        Command::Dlq(DlqCommand::List(a)) => dlq::list_command(&cfg, a).await,
        Command::Dlq(DlqCommand::Replay(a)) => dlq::replay_command(&cfg, a).await,
        Command::Center(_) => {
            let listener = center::bind_center(&cfg).await?;
            center::center(&cfg, listener, shutdown).await
        }
        Command::Lag(LagCommand::List(v)) => lag::run(&cfg, None, &v, shutdown).await,
        Command::Lag(LagCommand::Describe(d)) => {
            lag::run(&cfg, Some(&d.group), &d.view, shutdown).await
        }
        Command::Lag(LagCommand::Export(e)) => lag::export(&cfg, &e.groups, shutdown).await,
        Command::Lag(LagCommand::Advise(a)) => lag::advise(&cfg, &a, shutdown).await,
        Command::Ingest(_) => {
            let listener = ingest::bind(&cfg).await?;
            ingest::run(&cfg, listener, Some(handle), shutdown).await
        }
        Command::Balance(_) => {
            let (client, admin) = balance::bind(&cfg).await?;
            balance::run(&cfg, client, admin, Some(handle), shutdown).await
        }
        Command::Edge(_) => {
            let (client, admin) = edge::bind(&cfg).await?;
            edge::run(&cfg, client, admin, Some(handle), shutdown).await
        }
        Command::Mail(_) => {
            let r = report::mail(&cfg, shutdown).await?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Command::Report(ReportCommand::Send(a)) => report::send(&cfg, &a).await,
        Command::Report(ReportCommand::Schedule) => report::schedule(&cfg, shutdown).await,
        Command::Auth(AuthCommand::Keygen(a)) => auth::keygen(&cfg, &a),
        Command::Auth(AuthCommand::Token(a)) => auth::token(&cfg, &a),
        Command::Servers(a) => servers::servers(&cfg, a).await,
        Command::Config => {
            print!("{}", cfg.to_toml_masked()?);
            Ok(())
        }
        Command::Topics(TopicsCommand::Scale(a)) => {
            let plan = topics::scale(&cfg.kafka, &a.topic, a.partitions, a.dry_run).await?;
            if let Some(w) = &plan.warning {
                eprintln!("warning: {w}");
            }
            println!("{plan}");
            Ok(())
        }
        Command::Topics(TopicsCommand::Ensure) => {
            for t in topics::ensure(&cfg.kafka, &cfg.topics).await? {
                println!(
                    "{} {}",
                    t.name,
                    if t.created { "created" } else { "exists" }
                );
            }
            Ok(())
        }
    }
}
