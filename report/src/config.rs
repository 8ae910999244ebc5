//! Settings of the report (`[report]`: the schedule and its recipients) and
//! of the mailer (`[mail]`: SMTP), each checked beside its struct.

use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use weir_core::config::{mask_url, ConfigError, Validate};
use weir_schemas::report::{check_address, check_recipients};

use crate::schedule::DailySchedule;

/// `[mail]`: how `weir mail` reaches its SMTP relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// SMTP relay: `smtp://host:port` (plain, for a local relay),
    /// `smtp://host:port?tls=required` (STARTTLS), `smtps://host:port`
    /// (TLS from the first byte); `user:password@` before the host logs
    /// in. The password is masked when the configuration is printed.
    pub smtp_url: String,
    /// Sender address (`From:` and the envelope).
    pub from: String,
    /// One SMTP delivery (connect, greet, send) gives up after this long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A delivery marked "sending" for longer than this is taken as left by
    /// a mailer that died mid-send, and is sent again (with the same
    /// `Message-ID`). Must exceed `mail.timeout`, or a slow send still in
    /// progress would be sent twice.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often the outbox is swept for deliveries to send or retry
    /// (besides the wake-up each new request gives).
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// Wait after a failed delivery before the next attempt (doubled per
    /// attempt, at most 32 times this).
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            smtp_url: "smtp://127.0.0.1:2525".into(),
            from: "weir@localhost".into(),
            timeout: Duration::from_secs(30),
            lease: Duration::from_secs(120),
            poll: Duration::from_secs(5),
            retry_backoff: Duration::from_secs(2),
        }
    }
}

impl MailConfig {
    /// The same settings with the SMTP password replaced by `***`, for
    /// printing.
    pub fn masked(&self) -> MailConfig {
        MailConfig {
            smtp_url: mask_url(&self.smtp_url),
            ..self.clone()
        }
    }
}

impl Validate for MailConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let scheme = self.smtp_url.split("://").next().unwrap_or_default();
        if !matches!(scheme, "smtp" | "smtps") || !self.smtp_url.contains("://") {
            return Err(ConfigError::new(
                "mail.smtp_url",
                "must be smtp://host:port, smtp://host:port?tls=required or smtps://host:port",
            ));
        }
        if let Err(e) =
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(&self.smtp_url)
        {
            return Err(ConfigError::new(
                "mail.smtp_url",
                format!("{}: {e}", mask_url(&self.smtp_url)),
            ));
        }
        check_address("mail.from", &self.from).map_err(|m| ConfigError::new("mail.from", m))?;
        let between = |key: &str, d: Duration, lo: Duration, hi: Duration| {
            if d < lo || d > hi {
                Err(ConfigError::new(
                    key,
                    format!(
                        "must be between {} and {}",
                        humantime::format_duration(lo),
                        humantime::format_duration(hi)
                    ),
                ))
            } else {
                Ok(())
            }
        };
        between(
            "mail.timeout",
            self.timeout,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        between(
            "mail.lease",
            self.lease,
            Duration::from_millis(500),
            Duration::from_secs(86_400),
        )?;
        if self.lease <= self.timeout {
            return Err(ConfigError::new(
                "mail.lease",
                "must be longer than mail.timeout (a send still in progress would be resent)",
            ));
        }
        between(
            "mail.poll",
            self.poll,
            Duration::from_millis(50),
            Duration::from_secs(3600),
        )?;
        between(
            "mail.retry_backoff",
            self.retry_backoff,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )
    }
}

/// `[report]`: the daily schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Run the schedule (in `weir center`, `weir up` and `weir report
    /// schedule`). Off, only manual requests are mailed.
    pub schedule: bool,
    /// Local time of day (`HH:MM`) at which the previous day's report is
    /// requested.
    pub at: String,
    /// IANA time zone of the schedule and of the days reported (`UTC`).
    pub tz: String,
    /// Recipients of the scheduled report (at least one when `schedule`).
    pub recipients: Vec<String>,
    /// Days missed while no scheduler ran are requested at start-up, up to
    /// this far back.
    #[serde(with = "humantime_serde")]
    pub catch_up: Duration,
    /// How often the scheduler looks for due days.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Test clock: when set (RFC 3339), the scheduler's "now" is this
    /// instant at the real time `fake_epoch_ms`, running `fake_speed` times
    /// faster than the real clock. Lets a test cover a year of days in
    /// seconds; never set in production.
    pub fake_start: String,
    /// Real time (unix milliseconds) at which the test clock reads
    /// `fake_start`; 0: when the process starts. Several schedulers given
    /// the same value share one test clock.
    pub fake_epoch_ms: u64,
    /// Speed of the test clock (1.0: real time).
    pub fake_speed: f64,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            schedule: false,
            at: "06:00".into(),
            tz: "UTC".into(),
            recipients: Vec::new(),
            catch_up: Duration::from_secs(7 * 86_400),
            tick: Duration::from_secs(30),
            fake_start: String::new(),
            fake_epoch_ms: 0,
            fake_speed: 1.0,
        }
    }
}

impl ReportConfig {
    /// The zone, once validated.
    pub fn zone(&self) -> Result<Tz, ConfigError> {
        self.tz.parse::<Tz>().map_err(|_| {
            ConfigError::new(
                "report.tz",
                format!(
                    "{:?} is not an IANA time zone (Europe/Berlin, UTC)",
                    self.tz
                ),
            )
        })
    }

    /// The schedule, once validated.
    pub fn daily(&self) -> Result<DailySchedule, ConfigError> {
        let at = NaiveTime::parse_from_str(&self.at, "%H:%M").map_err(|_| {
            ConfigError::new(
                "report.at",
                format!("{:?} is not a time like 06:00", self.at),
            )
        })?;
        Ok(DailySchedule::new(self.zone()?, at))
    }

    /// The test clock's start, when one is set.
    pub fn fake_start(&self) -> Result<Option<DateTime<Utc>>, ConfigError> {
        if self.fake_start.is_empty() {
            return Ok(None);
        }
        DateTime::parse_from_rfc3339(&self.fake_start)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| ConfigError::new("report.fake_start", "must be an RFC 3339 instant"))
    }
}

impl Validate for ReportConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.daily()?;
        if self.schedule || !self.recipients.is_empty() {
            check_recipients(&self.recipients)
                .map_err(|m| ConfigError::new("report.recipients", m))?;
        }
        if self.catch_up < Duration::from_secs(3600)
            || self.catch_up > Duration::from_secs(31 * 86_400)
        {
            return Err(ConfigError::new(
                "report.catch_up",
                "must be between 1h and 31 days",
            ));
        }
        if self.tick < Duration::from_millis(10) || self.tick > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "report.tick",
                "must be between 10ms and 1h",
            ));
        }
        self.fake_start()?;
        if !(self.fake_speed.is_finite() && (1.0..=10_000_000.0).contains(&self.fake_speed)) {
            return Err(ConfigError::new(
                "report.fake_speed",
                "must be between 1 and 10000000",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_key() {
        let mut m = MailConfig::default();
        assert!(m.validate().is_ok());
        m.smtp_url = "http://x".into();
        assert_eq!(
            m.validate().err().map(|e| e.key),
            Some("mail.smtp_url".into())
        );
        let m = MailConfig {
            lease: Duration::from_secs(1),
            ..MailConfig::default()
        };
        assert_eq!(m.validate().err().map(|e| e.key), Some("mail.lease".into()));
        let m = MailConfig {
            smtp_url: "smtp://weir:hunter2@relay:587?tls=required".into(),
            ..MailConfig::default()
        };
        assert!(m.validate().is_ok());
        assert!(!m.masked().smtp_url.contains("hunter2"));
        let r = ReportConfig {
            tz: "Europe/Atlantis".into(),
            ..ReportConfig::default()
        };
        assert_eq!(r.validate().err().map(|e| e.key), Some("report.tz".into()));
        let r = ReportConfig {
            schedule: true,
            ..ReportConfig::default()
        };
        assert_eq!(
            r.validate().err().map(|e| e.key),
            Some("report.recipients".into())
        );
        let r = ReportConfig {
            at: "25:00".into(),
            ..ReportConfig::default()
        };
        assert_eq!(r.validate().err().map(|e| e.key), Some("report.at".into()));
    }
}
