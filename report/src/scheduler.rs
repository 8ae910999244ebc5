//! The daily schedule as a running task: every `report.tick` it asks the
//! pure schedule ([`crate::schedule`]) which days are due and requests the
//! ones no scheduler has requested yet.
//!
//! Exactly one request per day however many schedulers run: a day is
//! requested inside a PostgreSQL transaction that inserts the day's row in
//! `report_schedule` (`ON CONFLICT DO NOTHING`), produces the request and
//! waits for Kafka's acknowledgement, then commits. A second scheduler's
//! insert waits for the first's transaction and then does nothing; a
//! scheduler that dies before committing leaves no row, so the day is
//! requested again (the request id is the day's, so the mailer adds nothing
//! if the first produce did land).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weir_core::InternalEvent;
use weir_producers::EventProducer;
use weir_schemas::{ReportKind, ReportRequest};

use crate::config::ReportConfig;
use crate::events::ReportScheduled;
use crate::schedule::DailySchedule;

/// The scheduler's "now": the real clock, or a test clock that starts at a
/// given instant and runs faster (`report.fake_*`).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    fake: Option<(DateTime<Utc>, SystemTime, f64)>,
}

impl Clock {
    /// The real clock.
    pub fn real() -> Clock {
        Clock { fake: None }
    }

    /// A test clock that reads `start` at the real time `epoch` and runs
    /// `speed` times faster.
    pub fn fake(start: DateTime<Utc>, epoch: SystemTime, speed: f64) -> Clock {
        Clock {
            fake: Some((start, epoch, speed)),
        }
    }

    /// The clock `cfg` asks for.
    pub fn from_config(cfg: &ReportConfig) -> Clock {
        match cfg.fake_start().ok().flatten() {
            None => Clock::real(),
            Some(start) => {
                let epoch = if cfg.fake_epoch_ms == 0 {
                    SystemTime::now()
                } else {
                    UNIX_EPOCH + Duration::from_millis(cfg.fake_epoch_ms)
                };
                Clock::fake(start, epoch, cfg.fake_speed)
            }
        }
    }

    /// Now, by this clock.
    pub fn now(&self) -> DateTime<Utc> {
        match self.fake {
            None => Utc::now(),
            Some((start, epoch, speed)) => {
                let real = SystemTime::now()
                    .duration_since(epoch)
                    .unwrap_or_default()
                    .as_secs_f64();
                start + chrono::Duration::milliseconds((real * speed * 1000.0) as i64)
            }
        }
    }
}

/// The request id of a scheduled day: the same from every scheduler.
pub fn scheduled_id(day: NaiveDate) -> String {
    format!("daily-{day}")
}

/// Why a tick could not request its due days (it is retried next tick).
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// Kafka did not acknowledge the request.
    #[error("kafka: {0}")]
    Kafka(#[from] weir_producers::ProduceError),
}

/// The schedule task.
pub struct Scheduler {
    pool: PgPool,
    producer: Arc<EventProducer>,
    topic: String,
    schedule: DailySchedule,
    cfg: ReportConfig,
    clock: Clock,
    owner: String,
}

impl Scheduler {
    /// A scheduler for the validated `cfg`, producing to `topic`.
    pub fn new(
        pool: PgPool,
        producer: Arc<EventProducer>,
        topic: &str,
        cfg: &ReportConfig,
    ) -> Result<Self, weir_core::config::ConfigError> {
        Ok(Scheduler {
            pool,
            producer,
            topic: topic.to_string(),
            schedule: cfg.daily()?,
            cfg: cfg.clone(),
            clock: Clock::from_config(cfg),
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        })
    }

    /// Requests the due days not yet requested; how many this scheduler
    /// requested.
    pub async fn tick(&self) -> Result<usize, ScheduleError> {
        let now = self.clock.now();
        let catch_up =
            chrono::Duration::from_std(self.cfg.catch_up).unwrap_or(chrono::Duration::days(7));
        let due = self.schedule.due(now, catch_up);
        if due.is_empty() {
            return Ok(0);
        }
        let done: Vec<NaiveDate> =
            sqlx::query_scalar("SELECT day FROM report_schedule WHERE day = ANY($1)")
                .bind(&due)
                .fetch_all(&self.pool)
                .await?;
        let mut requested = 0;
        for day in due.into_iter().filter(|d| !done.contains(d)) {
            if self.request(day, now).await? {
                requested += 1;
            }
        }
        Ok(requested)
    }

    /// Requests `day` unless another scheduler did; `true` when this one did.
    async fn request(&self, day: NaiveDate, now: DateTime<Utc>) -> Result<bool, ScheduleError> {
        let id = scheduled_id(day);
        let mut tx = self.pool.begin().await?;
        let won = sqlx::query(
            "INSERT INTO report_schedule (day, request_id, claimed_by) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(day)
        .bind(&id)
        .bind(&self.owner)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !won {
            tx.rollback().await?;
            return Ok(false);
        }
        let req = ReportRequest {
            schema_version: 1,
            request_id: id.clone(),
            kind: ReportKind::Scheduled,
            from: day,
            to: day,
            tz: self.cfg.tz.clone(),
            recipients: self.cfg.recipients.clone(),
            requested_at: now,
        };
        // Acknowledged before the row commits: a crash in between leaves
        // no row, and the day is requested again.
        self.producer.send(&self.topic, &req).await?;
        tx.commit().await?;
        ReportScheduled {
            request_id: &id,
            day,
        }
        .emit();
        Ok(true)
    }

    /// Ticks every `report.tick` until `shutdown`; the first tick at once,
    /// so days missed while no scheduler ran are requested at start-up.
    pub async fn run(self, shutdown: CancellationToken) {
        let (next_day, next_at) = self.schedule.next_after(self.clock.now());
        info!(tz = %self.cfg.tz, at = %self.cfg.at, %next_day, %next_at, "report schedule running");
        loop {
            if let Err(e) = self.tick().await {
                warn!(error = %e, "report schedule: cannot request due days yet; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.tick) => {}
            }
        }
    }
}
