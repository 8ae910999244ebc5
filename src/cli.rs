//! Command-line interface: one subcommand per role.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Weir: health and access events of a CDN fleet, through Kafka, into Redis
/// and PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML); `WEIR_<SECTION>_<KEY>` variables override it.
    #[arg(long, global = true, env = "WEIR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter (overrides log.level), e.g. `debug` or `weir=debug`.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// The role to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Roles and tools.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every role in one process on the local stack: agent, health consumers
    /// and center, for a first look.
    Up(UpArgs),
    /// Sample this host every interval and produce health events.
    Agent(AgentArgs),
    /// Run one member of a consumer group.
    #[command(subcommand)]
    Consume(ConsumeCommand),
    /// Serve the fleet's health API and live stream.
    Center(CenterArgs),
    /// Serve S3 objects to CDN clients from memory and disk caches.
    Edge(EdgeArgs),
    /// Manage Weir's Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Print the effective configuration (defaults ← file ← environment) as
    /// TOML, passwords masked, after validating it.
    Config,
}

/// `weir up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Health group members to run in the process.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub consumers: Option<u16>,
}

/// `weir agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Time between two reports (e.g. 1s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Node identity (default: host name).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Stop after this many reports.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// `weir consume …`.
#[derive(Debug, Subcommand)]
pub enum ConsumeCommand {
    /// Health events → Redis live state + PostgreSQL inventory and uptime.
    Health(ConsumeArgs),
}

/// Options of a consumer member.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Consumer group id (default weir-<role>).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
}

/// `weir center`.
#[derive(Debug, Args)]
pub struct CenterArgs {
    /// Listen address (overrides center.addr).
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
}

/// `weir edge`.
#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// Client listen address (overrides edge.addr).
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
    /// Admin listen address (overrides edge.admin_addr).
    #[arg(long, value_name = "ADDR")]
    pub admin_addr: Option<String>,
}

/// `weir topics …`.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create Weir's topics if missing (idempotent).
    Ensure,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 1s, 250ms, 2m)"))
}
