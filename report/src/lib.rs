//! Weir's daily uptime report (issue 12, R1): a schedule and a manual
//! trigger put a [`weir_schemas::ReportRequest`] on `weir.report.v1`; `weir
//! mail` consumes it and mails the report, one mail per (request,
//! recipient), whatever is killed.
//!
//! - [`schedule`]: when each day's report fires, as pure functions (DST-
//!   correct, computed in UTC);
//! - [`scheduler`]: the task that requests due days, one request per day
//!   however many schedulers run;
//! - [`content`]: the report as text and HTML, and its `Message-ID`s;
//! - [`mailer`]: requests into a PostgreSQL outbox with the group's offsets,
//!   and the outbox out over SMTP;
//! - [`config`]: `[report]` and `[mail]`.
//!
//! It is a crate of its own because it joins three others (the center's
//! uptime query, the consumer runtime, the producer) that know nothing of
//! each other.
#![warn(missing_docs)]

pub mod config;
pub mod content;
mod events;
pub mod mailer;
pub mod schedule;
pub mod scheduler;

pub use config::{MailConfig, ReportConfig};
pub use events::describe_metrics;
pub use mailer::{migrator, ReportAggregator, Sender};
pub use schedule::DailySchedule;
pub use scheduler::{Clock, Scheduler};
