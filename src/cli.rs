//! Command-line interface: one subcommand per role.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

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
    /// Every role in one process on the local stack, for a first look: the
    /// agent, the health and access groups, the center with its dashboard,
    /// the edge (its limiter following the lag signal), the lag exporter,
    /// and a demo load.
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
    /// Take health reports over HTTP (for agents that cannot reach Kafka)
    /// and produce them to the health topic.
    Ingest(IngestArgs),
    /// Balance HTTP requests across the fleet's up nodes (and static
    /// backends), with passive health and retries.
    Balance(BalanceArgs),
    /// Manage Weir's Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Produce synthetic events with known totals.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Inspect and replay the dead-letter topic.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Consumer lag: list groups, describe one (offsets, lag in messages and
    /// seconds, owners, status).
    #[command(subcommand)]
    Lag(LagCommand),
    /// Admin tokens: make or rotate the signing key, issue a token.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// The server inventory, through a center's API (docs/inventory.md).
    Servers(ServersArgs),
    /// Mail the uptime reports requested on the report topic, one mail per
    /// request and recipient (a member of the `mail` consumer group).
    Mail(MailArgs),
    /// The daily uptime report: request one now, or run the schedule.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Print the effective configuration (defaults ← file ← environment) as
    /// TOML, passwords masked, after validating it.
    Config,
}

impl Command {
    /// Whether the command talks to Kafka (and so needs its TLS/SASL
    /// settings checked against the brokers before it starts).
    pub fn uses_kafka(&self) -> bool {
        !matches!(
            self,
            Command::Center(_) | Command::Config | Command::Auth(_) | Command::Servers(_)
        )
    }
}

/// `weir auth …`.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Make a new signing key the current one (the current becomes the
    /// previous, still accepted; older keys are dropped).
    Keygen(AuthKeygenArgs),
    /// Print a token signed with the current key (last line of output).
    Token(AuthTokenArgs),
}

/// Key algorithm of `weir auth keygen`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeyAlg {
    /// Ed25519 (verifiers need only the public key).
    Eddsa,
    /// HMAC-SHA256 with a 256-bit random secret.
    Hs256,
}

/// `weir auth keygen`.
#[derive(Debug, Args)]
pub struct AuthKeygenArgs {
    /// Algorithm of the new key.
    #[arg(long, value_enum, default_value = "eddsa")]
    pub alg: KeyAlg,
    /// Key file (overrides auth.key_file).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// Scope of `weir auth token`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TokenScope {
    /// Every endpoint.
    Admin,
    /// Read-only endpoints.
    Read,
}

/// `weir servers …`: a thin client of `/api/v1/servers`; it prints the
/// center's JSON and fails with the problem's detail on a refusal.
#[derive(Debug, Args)]
pub struct ServersArgs {
    /// The center (default: http:// + center.addr).
    #[arg(long, value_name = "URL", global = true)]
    pub center: Option<String>,
    /// A bearer token (`weir auth token`); writes need an admin one.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "WEIR_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub action: ServersAction,
}

/// `weir servers` actions.
#[derive(Debug, Subcommand)]
pub enum ServersAction {
    /// List servers (`GET /api/v1/servers?QUERY`), e.g. `tag=edge&sort=-last_seen`.
    List {
        /// The query string, as the API takes it.
        #[arg(default_value = "")]
        query: String,
    },
    /// Show one server and its ETag.
    Show {
        /// Server id.
        id: String,
    },
    /// Register a server from a JSON body (`{"id": …, "name": …}`).
    Add {
        /// The body.
        json: String,
    },
    /// Apply a JSON merge patch, only if the server is still at VERSION.
    Patch {
        /// Server id.
        id: String,
        /// The version read (its ETag without quotes).
        #[arg(long, value_name = "VERSION")]
        if_match: i64,
        /// The merge patch.
        json: String,
    },
    /// Decommission a server (kept for history).
    Rm {
        /// Server id.
        id: String,
    },
}

/// `weir auth token`.
#[derive(Debug, Args)]
pub struct AuthTokenArgs {
    /// Who the token is for (`sub`).
    #[arg(long, value_name = "NAME")]
    pub subject: String,
    /// Lifetime (at most auth.max_ttl), e.g. 15m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "15m")]
    pub ttl: Duration,
    /// What it allows.
    #[arg(long, value_enum, default_value = "admin")]
    pub scope: TokenScope,
    /// Key file (overrides auth.key_file).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// `weir up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Health group members to run in the process.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub consumers: Option<u16>,
    /// No demo: no objects uploaded, no client load, no simulated nodes.
    #[arg(long)]
    pub no_demo: bool,
    /// Requests per second the demo sends through the edge (0: none).
    #[arg(long, value_name = "PER_SECOND", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub load_rate: Option<u32>,
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
    /// Report through a `weir ingest` gateway at this URL instead of Kafka
    /// (overrides agent.via), e.g. http://127.0.0.1:8095.
    #[arg(long, value_name = "URL")]
    pub via: Option<String>,
}

/// `weir consume …`.
#[derive(Debug, Subcommand)]
pub enum ConsumeCommand {
    /// Health events → Redis live state + PostgreSQL inventory and uptime.
    Health(ConsumeArgs),
    /// Access events → per-minute rollups in PostgreSQL + hot counters in Redis.
    Access(ConsumeArgs),
}

/// `weir gen …`.
#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// Synthetic access events (deterministic for a seed); prints the totals
    /// produced as JSON on stdout.
    Access(GenAccessArgs),
    /// Send the records of a file (`key<TAB>value` lines, as `gen access
    /// --write-to` writes them) to the access topic through Weir's producer,
    /// byte for byte and as fast as Kafka takes them; prints the totals as
    /// JSON. Replays a captured load, and measures the producer alone.
    Replay(GenReplayArgs),
}

/// `weir gen replay`.
#[derive(Debug, Args)]
pub struct GenReplayArgs {
    /// The file: one record per line, the key before the first tab (a line
    /// without a tab is a record without a key); empty lines are skipped.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `weir gen access`.
#[derive(Debug, Args)]
pub struct GenAccessArgs {
    /// Events to produce.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub count: u64,
    /// Distinct edge nodes.
    #[arg(long, value_name = "K", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub nodes: u32,
    /// Distinct objects (popularity is skewed: a few are very hot).
    #[arg(long, value_name = "M", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub objects: u32,
    /// Seed: the same seed gives the same events.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Events per second (default: as fast as Kafka takes them).
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub rate: Option<u64>,
    /// Event time of the first event (RFC 3339; default: now, to the minute).
    #[arg(long, value_name = "TIME")]
    pub start: Option<String>,
    /// Event time spanned by the events.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub span: Duration,
    /// Make every Nth record a poison record (not JSON), to exercise the
    /// dead-letter path; poison records are counted apart.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pub poison_every: Option<u64>,
    /// Write the records to FILE (one `key<TAB>value` line each, as `kcat -P
    /// -K '\t' -l FILE` reads them) instead of producing them: the same
    /// payloads for another producer, e.g. in bench/producer.
    #[arg(long, value_name = "FILE")]
    pub write_to: Option<PathBuf>,
}

/// `weir dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters (default: the last 50 of each partition).
    List(DlqListArgs),
    /// Produce dead letters back to their source topic.
    Replay(DlqReplayArgs),
}

/// `weir dlq list`.
#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// Only this partition of the dead-letter topic.
    #[arg(long, value_name = "P")]
    pub partition: Option<i32>,
    /// First offset (default: the last --limit).
    #[arg(long, value_name = "OFFSET")]
    pub from: Option<i64>,
    /// Last offset, inclusive.
    #[arg(long, value_name = "OFFSET")]
    pub to: Option<i64>,
    /// How many of the latest to list per partition when --from is absent.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: i64,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `weir dlq replay`.
#[derive(Debug, Args)]
pub struct DlqReplayArgs {
    /// Partition of the dead-letter topic.
    #[arg(long, value_name = "P")]
    pub partition: i32,
    /// First offset to replay.
    #[arg(long, value_name = "OFFSET")]
    pub from: i64,
    /// Last offset to replay, inclusive.
    #[arg(long, value_name = "OFFSET")]
    pub to: i64,
    /// Show what would be replayed; produce nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `weir mail`.
#[derive(Debug, Args)]
pub struct MailArgs {
    /// SMTP relay (overrides mail.smtp_url).
    #[arg(long, value_name = "URL")]
    pub smtp_url: Option<String>,
}

/// `weir report …`.
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Request the report of a day (or of a range of days) now.
    Send(ReportSendArgs),
    /// Run the daily schedule alone (`weir center` runs it too when
    /// report.schedule is set).
    Schedule,
}

/// `weir report send`.
#[derive(Debug, Args)]
pub struct ReportSendArgs {
    /// The day (YYYY-MM-DD), or the first of a range with --until.
    #[arg(long, value_name = "DAY")]
    pub day: chrono::NaiveDate,
    /// Last day of a range (inclusive, at most 31 days).
    #[arg(long, value_name = "DAY")]
    pub until: Option<chrono::NaiveDate>,
    /// Recipient (repeat for several; default report.recipients).
    #[arg(long = "to", value_name = "ADDRESS")]
    pub to: Vec<String>,
    /// Time zone of the days (default report.tz).
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
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

/// `weir ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Listen address (overrides ingest.addr).
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
}

/// `weir balance`.
#[derive(Debug, Args)]
pub struct BalanceArgs {
    /// Client listen address (overrides balance.addr).
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
    /// Algorithm of the default pool (overrides balance.algorithm).
    #[arg(long, value_name = "NAME")]
    pub algorithm: Option<String>,
}

/// `weir topics …`.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create Weir's topics if missing (idempotent).
    Ensure,
    /// Add partitions to a topic (never removes any: Kafka cannot).
    Scale(ScaleArgs),
}

/// `weir topics scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Topic to scale.
    pub topic: String,
    /// Partition count wanted (must not be below the current count).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=100_000))]
    pub partitions: i32,
    /// Print what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `weir lag …`.
#[derive(Debug, Subcommand)]
pub enum LagCommand {
    /// Every consumer group: state, members, total lag, status.
    List(LagViewArgs),
    /// One group, partition by partition: committed and log-end offsets,
    /// lag, lag in seconds, owning member, status.
    Describe(LagDescribeArgs),
    /// Serve lag as Prometheus metrics (metrics.addr) and write each group's
    /// signal to Redis every lag.interval, until stopped.
    Export(LagExportArgs),
    /// Measure produce and consume rates over a window and print the backlog
    /// playbook's advice: consumers, partitions, producer cap, drain time.
    Advise(LagAdviseArgs),
}

/// `weir lag advise`.
#[derive(Debug, Args)]
pub struct LagAdviseArgs {
    /// Consumer group id.
    pub group: String,
    /// How long to measure the rates.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub window: Duration,
    /// Rate the group must sustain, records/s (default: produce rate × 1.2).
    #[arg(long, value_name = "PER_SECOND")]
    pub target_rate: Option<f64>,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// `weir lag export`.
#[derive(Debug, Args)]
pub struct LagExportArgs {
    /// Groups to export (repeatable; default: every group).
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Time between readings (overrides lag.interval).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,
}

/// Output options shared by `weir lag list` and `describe`.
#[derive(Debug, Args)]
pub struct LagViewArgs {
    /// Print JSON (one document per reading) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Read again every lag.interval and redraw in place, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop after N readings.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
    /// Time between readings (overrides lag.interval).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Length of the status window (overrides lag.window).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub window: Option<Duration>,
    /// Skip the broker's time-index probes (five `ListOffsets` by timestamp
    /// over every lagging partition), the slowest part of a single reading:
    /// LAG-TIME is then only a lower bound on the first reading (`>=0s`)
    /// and, with --watch, builds up from the readings themselves. Lag in messages, status and owners
    /// are unchanged (what Kafka's own tool prints, and more).
    #[arg(long)]
    pub no_lag_time: bool,
}

/// `weir lag describe`.
#[derive(Debug, Args)]
pub struct LagDescribeArgs {
    /// Consumer group id.
    pub group: String,
    /// Output options.
    #[command(flatten)]
    pub view: LagViewArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 1s, 250ms, 2m)"))
}

impl Cli {
    /// Lays the flags of the command over `cfg` (file and environment
    /// already applied): a flag given on the command line wins.
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(l) = &self.log_level {
            cfg.log.level = l.clone();
        }
        match &self.command {
            Command::Up(a) => a.apply(cfg),
            Command::Agent(a) => a.apply(cfg),
            Command::Consume(ConsumeCommand::Health(a) | ConsumeCommand::Access(a)) => a.apply(cfg),
            Command::Center(a) => a.apply(cfg),
            Command::Edge(a) => a.apply(cfg),
            Command::Ingest(a) => a.apply(cfg),
            Command::Balance(a) => a.apply(cfg),
            Command::Lag(LagCommand::List(v)) => v.apply(cfg),
            Command::Lag(LagCommand::Describe(d)) => d.view.apply(cfg),
            Command::Lag(LagCommand::Export(e)) => e.apply(cfg),
            Command::Auth(AuthCommand::Keygen(a)) => set_key_file(cfg, &a.key_file),
            Command::Auth(AuthCommand::Token(a)) => set_key_file(cfg, &a.key_file),
            Command::Mail(a) => {
                if let Some(u) = &a.smtp_url {
                    cfg.mail.smtp_url = u.clone();
                }
            }
            Command::Lag(LagCommand::Advise(_))
            | Command::Report(_)
            | Command::Topics(_)
            | Command::Config
            | Command::Gen(_)
            | Command::Servers(_)
            | Command::Dlq(_) => {}
        }
    }
}

fn set_key_file(cfg: &mut Config, file: &Option<PathBuf>) {
    if let Some(f) = file {
        cfg.auth.key_file = f.display().to_string();
    }
}

impl UpArgs {
    fn apply(&self, cfg: &mut Config) {
        if let Some(n) = self.consumers {
            cfg.up.consumers = n as usize;
        }
        if self.no_demo {
            cfg.up.demo = false;
        }
        if let Some(r) = self.load_rate {
            cfg.up.load_rate = r;
        }
    }
}

impl AgentArgs {
    fn apply(&self, cfg: &mut Config) {
        if let Some(i) = self.interval {
            cfg.agent.interval = i;
        }
        if let Some(n) = &self.node_id {
            cfg.agent.node_id = n.clone();
        }
        if let Some(c) = self.count {
            cfg.agent.max_reports = c;
        }
        if let Some(v) = &self.via {
            cfg.agent.via = v.clone();
        }
    }
}

impl IngestArgs {
    fn apply(&self, cfg: &mut Config) {
        if let Some(addr) = &self.addr {
            cfg.ingest.addr = addr.clone();
        }
    }
}

impl ConsumeArgs {
    fn apply(&self, cfg: &mut Config) {
        if let Some(g) = &self.group {
            cfg.consumer.group = g.clone();
        }
    }
}

impl CenterArgs {
    fn apply(&self, cfg: &mut Config) {
        if let Some(addr) = &self.addr {
            cfg.center.addr = addr.clone();
        }
    }
}

impl EdgeArgs {
    fn apply(&self, cfg: &mut Config) {
        if let Some(addr) = &self.addr {
            cfg.edge.addr = addr.clone();
        }
        if let Some(addr) = &self.admin_addr {
            cfg.edge.admin_addr = addr.clone();
        }
    }
}

impl BalanceArgs {
    fn apply(&self, cfg: &mut Config) {
        if let Some(addr) = &self.addr {
            cfg.balance.addr = addr.clone();
        }
        if let Some(a) = &self.algorithm {
            cfg.balance.algorithm = a.clone();
        }
    }
}

impl LagViewArgs {
    fn apply(&self, cfg: &mut Config) {
        if let Some(i) = self.interval {
            cfg.lag.interval = i;
        }
        if let Some(w) = self.window {
            cfg.lag.window = w;
        }
    }
}

impl LagExportArgs {
    fn apply(&self, cfg: &mut Config) {
        if let Some(i) = self.interval {
            cfg.lag.interval = i;
        }
    }
}
