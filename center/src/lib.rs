//! `weir center`: the fleet's health as JSON and as a live stream, and its
//! uptime.
//!
//! The center never talks to agents. Live state comes from Redis (one key per
//! reporting node, an index of every node ever seen, a pub/sub channel of
//! changes); uptime comes from PostgreSQL. Any number of centers can run: each
//! subscribes to the channel once and fans changes out to its own clients.
//!
//! - [`api`]: configuration, state, the router and the fleet endpoints;
//! - [`live`]: the Redis subscription and the SSE stream;
//! - [`uptime`]: uptime per node and per day from the health group's tables;
//! - [`dashboard`]: the live model behind the page (fleet, pipeline), its
//!   snapshot and its stream of merged deltas;
//! - [`inventory`]: the server inventory (`/api/v1/servers`): operator
//!   fields beside the health group's, versions and merge patches,
//!   decommissioning;
//! - [`reports`]: `POST /api/v1/reports`, the manual trigger of the daily
//!   report (admin);
//! - [`page`]: the page at `/`, server-rendered (it works without
//!   JavaScript) with its script and style embedded in the binary.
#![warn(missing_docs)]

pub mod api;
pub mod dashboard;
mod events;
pub mod inventory;
pub use events::describe_metrics;
pub mod live;
pub mod page;
pub mod reports;
pub mod uptime;

pub use api::{router, serve, CenterConfig, CenterState};
pub use dashboard::{DashboardTopics, Hub};
pub use live::Change;
pub use reports::ReportSink;
pub use uptime::{DailyUptime, NodeCoverage, NodeUptime, UptimeQuery};
