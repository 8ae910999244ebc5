//! The runtime's internal events (Vector's way, through `weir-core`'s
//! traits): one type per thing that happens to a member, whose `emit` writes
//! the log line and the metric together so they can never disagree.
//!
//! Events on the hot path (records skipped, batches committed) are
//! registered once per member, with the group label, and emit through
//! handles that hold their metric handles; rare events are one-off.
//!
//! Metrics: `weir_consumer_records_total{group,outcome}` (applied, skipped,
//! dead_lettered), `weir_consumer_batches_total`, `weir_consumer_batch_seconds`,
//! `weir_consumer_fenced_batches_total`, `weir_consumer_store_errors_total{store}`,
//! `weir_consumer_gap_records_total`, `weir_consumer_partitions_owned`,
//! `weir_consumer_seek_failures_total`, `weir_consumer_kafka_errors_total`.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use tracing::{debug, info, trace, warn};
use weir_core::{InternalEvent, InternalEventHandle, RegisterInternalEvent};

use super::FailureClass;

/// Every registered event of one member, looked up once when it starts.
pub(crate) struct MemberEvents {
    pub skipped: RecordsSkippedHandle,
    pub committed: BatchCommittedHandle,
    pub fenced: BatchFencedHandle,
    pub gap: RetentionGapHandle,
    pub owned: PartitionsOwnedHandle,
    pub store: StoreFailedHandle,
}

impl MemberEvents {
    /// The handles whose metric is one series per group are made here, in
    /// one place; the events with more to register register themselves.
    pub fn register(group: &str) -> Self {
        let g = || group.to_string();
        MemberEvents {
            skipped: RecordsSkippedHandle(
                metrics::counter!("weir_consumer_records_total", "group" => g(), "outcome" => "skipped"),
            ),
            committed: BatchCommitted { group }.register(),
            fenced: BatchFencedHandle(
                metrics::counter!("weir_consumer_fenced_batches_total", "group" => g()),
            ),
            gap: RetentionGapHandle(
                metrics::counter!("weir_consumer_gap_records_total", "group" => g()),
            ),
            owned: PartitionsOwnedHandle(
                metrics::gauge!("weir_consumer_partitions_owned", "group" => g()),
            ),
            store: StoreFailed { group }.register(),
        }
    }
}

/// Records below the stored offset, already applied: dropped.
pub(crate) struct RecordsSkippedHandle(Counter);

impl InternalEventHandle for RecordsSkippedHandle {
    /// (partition, offset)
    type Data = (i32, i64);
    fn emit(&self, (partition, offset): (i32, i64)) {
        trace!(partition, offset, "record already applied; skipped");
        self.0.increment(1);
    }
}

/// A batch's effects and offsets committed.
pub(crate) struct BatchCommitted<'a> {
    pub group: &'a str,
}

pub(crate) struct BatchCommittedHandle {
    applied: Counter,
    batches: Counter,
    seconds: Histogram,
}

/// What one committed batch carries.
pub(crate) struct CommittedBatch {
    pub records: usize,
    pub dead_lettered: usize,
    pub seconds: f64,
}

impl RegisterInternalEvent for BatchCommitted<'_> {
    type Handle = BatchCommittedHandle;
    fn register(self) -> Self::Handle {
        let g = self.group.to_string();
        BatchCommittedHandle {
            applied: metrics::counter!("weir_consumer_records_total", "group" => g.clone(), "outcome" => "applied"),
            batches: metrics::counter!("weir_consumer_batches_total", "group" => g.clone()),
            seconds: metrics::histogram!("weir_consumer_batch_seconds", "group" => g),
        }
    }
}

impl InternalEventHandle for BatchCommittedHandle {
    type Data = CommittedBatch;
    fn emit(&self, b: CommittedBatch) {
        debug!(
            records = b.records,
            dead_lettered = b.dead_lettered,
            seconds = b.seconds,
            "batch committed"
        );
        self.applied.increment(b.records as u64);
        self.batches.increment(1);
        self.seconds.record(b.seconds);
    }
}

/// The offset fence failed: another member moved the partition first.
pub(crate) struct BatchFencedHandle(Counter);

impl InternalEventHandle for BatchFencedHandle {
    /// The partition whose fence failed.
    type Data = i32;
    fn emit(&self, partition: i32) {
        warn!(
            partition,
            "offset fence failed: partition owned elsewhere; batch abandoned"
        );
        self.0.increment(1);
    }
}

/// Kafka delivered past the stored offset even after a seek: the records in
/// between are gone (retention).
pub(crate) struct RetentionGapHandle(Counter);

/// Where the gap is.
pub(crate) struct Gap {
    pub partition: i32,
    pub expected: i64,
    pub got: i64,
}

impl InternalEventHandle for RetentionGapHandle {
    type Data = Gap;
    fn emit(&self, g: Gap) {
        warn!(partition = g.partition, expected = g.expected, got = g.got,
              "records between the stored offset and the first available one are gone (retention); continuing");
        self.0
            .increment(g.got.saturating_sub(g.expected).max(0) as u64);
    }
}

/// How many partitions the member owns.
pub(crate) struct PartitionsOwnedHandle(Gauge);

impl InternalEventHandle for PartitionsOwnedHandle {
    type Data = usize;
    fn emit(&self, n: usize) {
        self.0.set(n as f64);
    }
}

/// A store (or the dead-letter topic) failed an attempt.
pub(crate) struct StoreFailed<'a> {
    pub group: &'a str,
}

pub(crate) struct StoreFailedHandle {
    group: String,
    postgres: Counter,
    redis: Counter,
    kafka: Counter,
}

/// One failed attempt: what failed, how, and what the member does next.
pub(crate) struct StoreFailure {
    pub store: &'static str,
    pub class: FailureClass,
    pub error: String,
    /// What the member does about it (`batch not committed; pausing`).
    pub action: &'static str,
    pub retry_in: Option<Duration>,
}

impl RegisterInternalEvent for StoreFailed<'_> {
    type Handle = StoreFailedHandle;
    fn register(self) -> Self::Handle {
        let c = |store: &'static str| metrics::counter!("weir_consumer_store_errors_total", "group" => self.group.to_string(), "store" => store);
        StoreFailedHandle {
            group: self.group.to_string(),
            postgres: c("postgres"),
            redis: c("redis"),
            kafka: c("kafka"),
        }
    }
}

impl InternalEventHandle for StoreFailedHandle {
    type Data = StoreFailure;
    fn emit(&self, f: StoreFailure) {
        warn!(store = f.store, class = ?f.class, error = %f.error, retry_in = ?f.retry_in, "{}", f.action);
        match f.store {
            "postgres" => self.postgres.increment(1),
            "redis" => self.redis.increment(1),
            "kafka" => self.kafka.increment(1),
            // Another store of an aggregator of its own: rare, not cached.
            other => metrics::counter!("weir_consumer_store_errors_total", "group" => self.group.clone(), "store" => other).increment(1),
        }
    }
}

/// A record went to the dead-letter topic (emitted once its offset is
/// stored, so a retried batch logs and counts it once).
pub(crate) struct RecordDeadLettered<'a> {
    pub group: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub reason: &'static str,
    pub detail: &'a str,
}

impl InternalEvent for RecordDeadLettered<'_> {
    fn emit(self) {
        warn!(partition = self.partition, offset = self.offset, reason = self.reason, error = %self.detail,
              "record dead-lettered");
        metrics::counter!("weir_consumer_records_total", "group" => self.group.to_string(), "outcome" => "dead_lettered", "reason" => self.reason).increment(1);
    }
}

/// Seeking a partition failed; the seek will be tried again.
pub(crate) struct SeekFailed<'a> {
    pub group: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub error: &'a str,
}

impl InternalEvent for SeekFailed<'_> {
    fn emit(self) {
        warn!(partition = self.partition, offset = self.offset, error = %self.error, "seek failed; will retry");
        metrics::counter!("weir_consumer_seek_failures_total", "group" => self.group.to_string())
            .increment(1);
    }
}

/// The Kafka consumer reported an error while receiving.
pub(crate) struct ConsumeFailed<'a> {
    pub group: &'a str,
    pub error: &'a str,
}

impl InternalEvent for ConsumeFailed<'_> {
    fn emit(self) {
        warn!(error = %self.error, "kafka consumer error");
        metrics::counter!("weir_consumer_kafka_errors_total", "group" => self.group.to_string())
            .increment(1);
    }
}

/// A member joined its group (log only).
pub(crate) struct MemberStarted<'a> {
    pub group: &'a str,
    pub topic: &'a str,
}

impl InternalEvent for MemberStarted<'_> {
    fn emit(self) {
        info!(group = %self.group, topic = %self.topic, "consumer started");
    }
}

/// Help text of the consumer runtime's metrics.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "weir_consumer_records_total",
        "Records handled by a group by outcome (applied, skipped, dead_lettered with its reason)"
    );
    describe_counter!("weir_consumer_batches_total", "Batches applied by a group");
    describe_histogram!(
        "weir_consumer_batch_seconds",
        Unit::Seconds,
        "Time to apply one batch (stores and offsets), by group"
    );
    describe_counter!(
        "weir_consumer_fenced_batches_total",
        "Batches abandoned because another member moved the stored offsets (fenced)"
    );
    describe_counter!(
        "weir_consumer_gap_records_total",
        "Records Kafka no longer had between the stored offset and the first one delivered"
    );
    describe_gauge!(
        "weir_consumer_partitions_owned",
        "Partitions assigned to this member, by group"
    );
    describe_counter!(
        "weir_consumer_store_errors_total",
        "Failed attempts to apply a batch by store (postgres, redis, dlq); the batch is retried"
    );
    describe_counter!(
        "weir_consumer_seek_failures_total",
        "Seeks to the stored offset that failed and will be retried"
    );
    describe_counter!(
        "weir_consumer_kafka_errors_total",
        "Errors reported by the Kafka consumer"
    );
}
