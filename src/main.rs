//! `weir`: one binary, every role. Parse, load config, init telemetry, build,
//! run until a signal, report how it ended.

mod cli;
mod config;
mod edge;
mod roles;
mod telemetry;
mod topics;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, ConsumeCommand, TopicsCommand};
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
        Command::Consume(ConsumeCommand::Health(a)) => {
            if let Some(g) = &a.group {
                cfg.consumer.group = g.clone();
            }
        }
        Command::Center(a) => {
            if let Some(addr) = &a.addr {
                cfg.center.addr = addr.clone();
            }
        }
        Command::Edge(a) => {
            if let Some(addr) = &a.addr {
                cfg.edge.addr = addr.clone();
            }
            if let Some(addr) = &a.admin_addr {
                cfg.edge.admin_addr = addr.clone();
            }
        }
        Command::Topics(_) | Command::Config => {}
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn run(cli: Cli, cfg: Config) -> anyhow::Result<()> {
    let shutdown = telemetry::shutdown_on_signals();
    let handle = telemetry::init_metrics()?;
    let needs_metrics = !matches!(cli.command, Command::Topics(_) | Command::Config);
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
        Command::Center(_) => {
            let listener = roles::bind_center(&cfg).await?;
            roles::center(&cfg, listener, shutdown).await
        }
        Command::Edge(_) => {
            let (client, admin) = edge::bind(&cfg).await?;
            edge::run(&cfg, client, admin, Some(handle), shutdown).await
        }
        Command::Config => {
            print!("{}", cfg.to_toml_masked()?);
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
