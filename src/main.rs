//! `weir`: one binary, every role. Parse, load config, init telemetry, build,
//! run until a signal, report how it ended.

mod cli;
mod config;
mod dlq;
mod edge;
mod gen;
mod lag;
mod roles;
mod telemetry;
mod topics;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, ConsumeCommand, DlqCommand, GenCommand, LagCommand, TopicsCommand};
use config::{Config, ConfigError};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line, naming the flag: the full usage is one `--help` away.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("error: invalid arguments");
            eprintln!("{first} (see weir --help)");
            return ExitCode::from(2);
        }
    };
    let cfg = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weir: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logs(&cfg);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weir: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<lag::StatusExit>().is_some() => {
            ExitCode::from(e.downcast_ref::<lag::StatusExit>().map_or(1, |s| s.0))
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "weir stopped with an error");
            eprintln!("weir: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Config from file and environment, then the command's flags on top.
fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    let mut cfg = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(l) = &cli.log_level {
        cfg.log.level = l.clone();
    }
    match &cli.command {
        Command::Up(a) => {
            if let Some(n) = a.consumers {
                cfg.up.consumers = n as usize;
            }
        }
        Command::Agent(a) => {
            if let Some(i) = a.interval {
                cfg.agent.interval = i;
            }
            if let Some(n) = &a.node_id {
                cfg.agent.node_id = n.clone();
            }
            if let Some(c) = a.count {
                cfg.agent.max_reports = c;
            }
        }
        Command::Consume(ConsumeCommand::Health(a) | ConsumeCommand::Access(a)) => {
            if let Some(g) = &a.group {
                cfg.consumer.group = g.clone();
            }
        }
        Command::Center(a) => {
            if let Some(addr) = &a.addr {
                cfg.center.addr = addr.clone();
            }
        }
        Command::Lag(
            LagCommand::List(v) | LagCommand::Describe(cli::LagDescribeArgs { view: v, .. }),
        ) => {
            if let Some(i) = v.interval {
                cfg.lag.interval = i;
            }
            if let Some(w) = v.window {
                cfg.lag.window = w;
            }
        }
        Command::Lag(LagCommand::Export(e)) => {
            if let Some(i) = e.interval {
                cfg.lag.interval = i;
            }
        }
        Command::Lag(LagCommand::Advise(_)) => {}
        Command::Topics(_) | Command::Config | Command::Gen(_) | Command::Dlq(_) => {}
        Command::Edge(a) => {
            if let Some(addr) = &a.addr {
                cfg.edge.addr = addr.clone();
            }
            if let Some(addr) = &a.admin_addr {
                cfg.edge.admin_addr = addr.clone();
            }
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn run(cli: Cli, cfg: Config) -> anyhow::Result<()> {
    let shutdown = telemetry::shutdown_on_signals();
    let handle = telemetry::init_metrics()?;
    let needs_metrics = !matches!(
        cli.command,
        Command::Topics(_)
            | Command::Config
            | Command::Dlq(_)
            | Command::Lag(LagCommand::List(_) | LagCommand::Describe(_) | LagCommand::Advise(_))
    );
    if needs_metrics {
        if let Some(l) = telemetry::bind_metrics(&cfg.metrics.addr).await? {
            telemetry::spawn_metrics_server(l, handle.clone(), shutdown.clone());
        }
    }
    match cli.command {
        Command::Up(_) => roles::up(&cfg, shutdown).await,
        Command::Agent(_) => {
            let r = roles::agent(&cfg, shutdown).await?;
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
            let r = roles::consume_health(&cfg, shutdown).await?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Command::Consume(ConsumeCommand::Access(_)) => {
            let r = roles::consume_access(&cfg, shutdown).await?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Command::Gen(GenCommand::Access(a)) => {
            let start = match &a.start {
                Some(t) => chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|e| ConfigError {
                        key: "--start".into(),
                        message: format!("{t:?} is not an RFC 3339 time: {e}"),
                    })?,
                None => weir_consumers::access::minute_of(chrono::Utc::now()),
            };
            let spec = gen::GenSpec {
                count: a.count,
                nodes: a.nodes,
                objects: a.objects,
                seed: a.seed,
                rate: a.rate,
                start,
                span: a.span,
                poison_every: a.poison_every,
            };
            let producer =
                std::sync::Arc::new(weir_producers::EventProducer::new(&cfg.kafka, "gen")?);
            roles::require_topic(&producer, &cfg.topics.access, "topics.access").await?;
            let totals = gen::run(spec, &cfg.topics.access, producer.clone(), shutdown).await?;
            let p = producer.clone();
            let _ =
                tokio::task::spawn_blocking(move || p.flush(std::time::Duration::from_secs(30)))
                    .await;
            println!("{}", serde_json::to_string(&totals)?);
            if totals.failed > 0 {
                anyhow::bail!("{} records were not acknowledged by Kafka", totals.failed);
            }
            Ok(())
        }
        Command::Dlq(DlqCommand::List(a)) => {
            let (kafka, topic) = (cfg.kafka.clone(), cfg.topics.dlq.clone());
            let letters = tokio::task::spawn_blocking(move || {
                dlq::read(&kafka, &topic, a.partition, a.from, a.to, a.limit.max(1))
            })
            .await??;
            if a.json {
                for d in &letters {
                    println!("{}", serde_json::to_string(d)?);
                }
            } else {
                dlq::print_table(&letters);
            }
            Ok(())
        }
        Command::Dlq(DlqCommand::Replay(a)) => {
            if a.to < a.from {
                return Err(ConfigError {
                    key: "--to".into(),
                    message: "must not be below --from".into(),
                }
                .into());
            }
            let (kafka, topic) = (cfg.kafka.clone(), cfg.topics.dlq.clone());
            let letters = tokio::task::spawn_blocking(move || {
                dlq::read(
                    &kafka,
                    &topic,
                    Some(a.partition),
                    Some(a.from),
                    Some(a.to),
                    1,
                )
            })
            .await??;
            let producer = weir_producers::EventProducer::new(&cfg.kafka, "replay")?;
            let report = dlq::replay(&producer, &letters, &cfg.topics.dlq, a.dry_run).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Center(_) => {
            let listener = roles::bind_center(&cfg).await?;
            roles::center(&cfg, listener, shutdown).await
        }
        Command::Lag(LagCommand::List(v)) => lag::run(&cfg, None, &v, shutdown).await,
        Command::Lag(LagCommand::Describe(d)) => {
            lag::run(&cfg, Some(&d.group), &d.view, shutdown).await
        }
        Command::Lag(LagCommand::Export(e)) => lag::export(&cfg, &e.groups, shutdown).await,
        Command::Lag(LagCommand::Advise(a)) => lag::advise(&cfg, &a, shutdown).await,
        Command::Edge(_) => {
            let (client, admin) = edge::bind(&cfg).await?;
            edge::run(&cfg, client, admin, Some(handle), shutdown).await
        }
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
