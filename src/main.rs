//! `weir`: one binary, every role. Parse, load config, init telemetry, build,
//! run until a signal, report how it ended.

mod cli;
mod config;
mod roles;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;
use cli::Cli;
use config::{Config, ConfigError};
use roles::lag::StatusExit;

/// How long the start-up check of TLS/SASL settings may ask the brokers
/// (unreachable brokers end it early: roles start without Kafka).
const KAFKA_PREFLIGHT: std::time::Duration = std::time::Duration::from_secs(10);

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
    // Credentials and certificates the brokers refuse end the process here,
    // before any role starts, with one line naming the setting.
    if cli.command.uses_kafka() {
        if let Err(e) = cfg.kafka.preflight(KAFKA_PREFLIGHT) {
            eprintln!("weir: {e}");
            return ExitCode::from(2);
        }
    }
    telemetry::init_logs(&cfg);
    let runtime = match runtime_builder(&cli).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weir: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(roles::run(cli, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<StatusExit>().is_some() => {
            ExitCode::from(e.downcast_ref::<StatusExit>().map_or(1, |s| s.0))
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

/// The async runtime: tokio's multi-threaded one, except for the servers
/// that hold many client connections (`weir balance`, `weir edge`) on a
/// single CPU (pinned with `taskset`, or a one-CPU container), which run
/// everything on the thread that starts it, one event loop as HAProxy,
/// nginx and Varnish run per thread:
/// - with one CPU the multi-threaded scheduler has one worker and no one to
///   share work with, yet pays for its cross-thread bookkeeping on every
///   task wake-up, and its accept loop runs on a second thread;
/// - it is unfair past 256 ready connections: its worker's run queue holds
///   256 tasks, the rest overflow to a global queue it serves one task at a
///   time every few dozen polls, so while 256 connections go round quickly
///   the others wait. At 1 024 connections on one CPU the edge's p99 was
///   159 ms against nginx's 23 ms (p50 3.4 ms); on the current-thread
///   runtime, whose run queue has no such split, 24 ms (docs/benchmarks.md,
///   "Edge", 2026-12-04).
fn runtime_builder(cli: &Cli) -> tokio::runtime::Builder {
    let one_cpu = !std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    let many_clients = matches!(
        cli.command,
        cli::Command::Balance(_) | cli::Command::Edge(_)
    );
    if one_cpu && many_clients {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
}

/// Config from file and environment, then the command's flags on top.
fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    let mut cfg = Config::load(cli.config.as_deref(), std::env::vars())?;
    cli.apply(&mut cfg);
    cfg.validate()?;
    Ok(cfg)
}
