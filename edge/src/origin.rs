//! The origin: one S3 bucket (or a few), reached through aws-sdk-s3 with
//! path-style addressing, signed requests and bounded time.
//!
//! Every call is bounded by `s3.timeout` (connect, each attempt, and reading
//! the body), so a stalled or stopped S3 turns into a 504 or 502 instead of a
//! hung client. Results are plain enums for the conditions the edge expects
//! (missing, changed, unsatisfiable); [`OriginError`] is for failures.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::keys::ObjectKey;

/// Settings of the S3 origin (`[s3]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL (`http://127.0.0.1:19000`, `https://s3.eu-west-1.amazonaws.com`).
    pub endpoint: String,
    /// Bucket served at `/{key}`.
    pub bucket: String,
    /// Region used to sign requests.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (masked by `weir config`).
    pub secret_access_key: String,
    /// Bound on connecting, on each attempt, and on reading a body: past it
    /// the client gets 504.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per request (1 = no retry). Kept low: a client is waiting.
    pub max_attempts: u32,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: "http://127.0.0.1:19000".into(),
            bucket: "weir".into(),
            region: "us-east-1".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            timeout: Duration::from_secs(5),
            max_attempts: 2,
        }
    }
}

/// What the origin says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// Strong ETag, with its quotes, as S3 sends it.
    pub etag: String,
    /// Content type (`application/octet-stream` when S3 has none).
    pub content_type: String,
    /// Last modification, whole seconds.
    pub last_modified: Option<SystemTime>,
}

/// A failure talking to the origin. Cloneable so that every waiter of a
/// coalesced fetch sees the same result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// No answer within `s3.timeout` (→ 504).
    #[error("origin timed out")]
    Timeout,
    /// Could not reach the origin, or it failed (→ 502).
    #[error("origin unavailable: {0}")]
    Unavailable(String),
    /// The object changed since its ETag was taken (`If-Match` failed).
    #[error("object changed at the origin")]
    Changed,
}

/// A ranged or whole read.
#[derive(Debug)]
pub enum Fetched {
    /// The object (or the requested bytes of it) and its metadata.
    Found {
        /// Metadata of the whole object.
        meta: ObjectMeta,
        /// Bytes received.
        body: Bytes,
    },
    /// No such key.
    Missing,
    /// The range starts past the end (an empty object has no byte 0).
    Unsatisfiable,
}

/// An S3 client for the configured origin.
#[derive(Clone)]
pub struct Origin {
    client: aws_sdk_s3::Client,
    timeout: Duration,
}

impl Origin {
    /// Builds the client; connects lazily.
    pub fn new(cfg: &S3Config) -> Origin {
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(cfg.timeout)
            .operation_attempt_timeout(cfg.timeout)
            .operation_timeout(cfg.timeout * cfg.max_attempts.max(1))
            .build();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .endpoint_url(cfg.endpoint.clone())
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                cfg.access_key_id.clone(),
                cfg.secret_access_key.clone(),
                None,
                None,
                "weir-config",
            ))
            .timeout_config(timeouts)
            .retry_config(
                aws_sdk_s3::config::retry::RetryConfig::standard()
                    .with_max_attempts(cfg.max_attempts.max(1)),
            )
            .build();
        Origin {
            client: aws_sdk_s3::Client::from_conf(conf),
            timeout: cfg.timeout,
        }
    }

    /// The SDK client (uploads, tests).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// `HEAD`: the metadata, or `None` for a missing key.
    pub async fn head(&self, obj: &ObjectKey) -> Result<Option<ObjectMeta>, OriginError> {
        let res = self
            .client
            .head_object()
            .bucket(&obj.bucket)
            .key(&obj.key)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Some(ObjectMeta {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: out.e_tag().unwrap_or_default().to_string(),
                content_type: content_type(out.content_type()),
                last_modified: out.last_modified().and_then(to_system_time),
            })),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    /// `GET` of `range` (`bytes=a-b`, or the whole object when `None`),
    /// with `If-Match: if_match` when given. The body is read whole: callers
    /// ask for at most one slice or one memory-tier object.
    pub async fn get(
        &self,
        obj: &ObjectKey,
        range: Option<String>,
        if_match: Option<&str>,
    ) -> Result<Fetched, OriginError> {
        let res = self
            .client
            .get_object()
            .bucket(&obj.bucket)
            .key(&obj.key)
            .set_range(range)
            .set_if_match(if_match.map(str::to_string))
            .send()
            .await;
        let out = match res {
            Ok(out) => out,
            Err(e) => {
                return match status(&e) {
                    Some(404) => Ok(Fetched::Missing),
                    Some(412) => Err(OriginError::Changed),
                    Some(416) => Ok(Fetched::Unsatisfiable),
                    _ => Err(classify(e)),
                }
            }
        };
        let received = out.content_length().unwrap_or(0).max(0) as u64;
        // `Content-Range: bytes a-b/size` gives the whole size of a ranged read.
        let size = out
            .content_range()
            .and_then(|cr| cr.rsplit_once('/'))
            .and_then(|(_, total)| total.parse::<u64>().ok())
            .unwrap_or(received);
        let meta = ObjectMeta {
            size,
            etag: out.e_tag().unwrap_or_default().to_string(),
            content_type: content_type(out.content_type()),
            last_modified: out.last_modified().and_then(to_system_time),
        };
        let body = self.read_body(out.body).await?;
        if body.len() as u64 != received {
            return Err(OriginError::Unavailable(format!(
                "short body: {} of {received} bytes",
                body.len()
            )));
        }
        Ok(Fetched::Found { meta, body })
    }

    async fn read_body(&self, body: ByteStream) -> Result<Bytes, OriginError> {
        match tokio::time::timeout(self.timeout, body.collect()).await {
            Ok(Ok(b)) => Ok(b.into_bytes()),
            Ok(Err(e)) => Err(OriginError::Unavailable(format!("reading body: {e}"))),
            Err(_) => Err(OriginError::Timeout),
        }
    }
}

fn content_type(t: Option<&str>) -> String {
    t.filter(|t| !t.is_empty())
        .unwrap_or("application/octet-stream")
        .to_string()
}

fn to_system_time(t: &aws_sdk_s3::primitives::DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

fn status<E, R: HasStatus>(e: &SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(HasStatus::status_code)
}

trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn classify<E: std::error::Error + 'static, R: std::fmt::Debug + HasStatus>(
    e: SdkError<E, R>,
) -> OriginError {
    match &e {
        SdkError::TimeoutError(_) => OriginError::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => OriginError::Timeout,
        _ => {
            let detail = match status(&e) {
                Some(s) => format!("HTTP {s}"),
                None => aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
            };
            OriginError::Unavailable(detail)
        }
    }
}
