//! The consumer-group runtime: batches of records from Kafka become effects in
//! PostgreSQL (and Redis) with exactly-once effect.
//!
//! How it holds together:
//! - Each batch's effects and its next offsets are written in one PostgreSQL
//!   transaction. The offset update is *fenced*: it only succeeds if the stored
//!   offset is still the one this member read before the batch, so a member
//!   that lost its partition (and does not know it yet) cannot apply a batch
//!   that the new owner also applies.
//! - When a member first sees a record of a partition it loads the stored
//!   offset and, if Kafka delivered from elsewhere, seeks there. Records below
//!   the stored offset are skipped.
//! - After the transaction, offsets are committed to Kafka asynchronously so
//!   that Kafka's own tools, Burrow and KEDA see the group's lag.
//! - Undecodable records go to the dead-letter topic, and are durable there
//!   before their offsets are stored. A store that is down pauses the group and
//!   the batch is retried with backoff; it never goes to the dead-letter topic.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weir_producers::{EventProducer, KafkaConfig};
use weir_schemas::topics::dlq_headers;
use weir_schemas::{decode, DecodeError, Event};

/// Settings of a consumer group member.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// Group id; empty means `weir-<role>` (e.g. `weir-health`).
    pub group: String,
    /// Largest batch, in records.
    pub batch_max_records: usize,
    /// Longest a batch waits to fill once its first record arrived: bounds
    /// latency at low traffic.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// Kafka session timeout: how long a silent member keeps its partitions.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Longest pause between two retries of a batch while a store is down.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// Deadline to finish the current batch on shutdown.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Largest payload copied into a dead letter; larger ones are truncated
    /// (with the original size in a header) so that the dead-letter topic
    /// can always take them.
    pub dlq_max_payload: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: String::new(),
            batch_max_records: 5000,
            batch_max_wait: Duration::from_millis(200),
            session_timeout: Duration::from_secs(10),
            retry_backoff_max: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(15),
            dlq_max_payload: 256 * 1024,
        }
    }
}

impl ConsumerConfig {
    /// The group id in force for a role.
    pub fn group_for(&self, role: &str) -> String {
        if self.group.is_empty() {
            format!("weir-{role}")
        } else {
            self.group.clone()
        }
    }
}

/// A decoded record with its coordinates.
#[derive(Debug, Clone)]
pub struct Record<E> {
    /// Source partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// The event.
    pub event: E,
}

/// A store failed; the batch will be retried.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The dead-letter topic could not take a record.
    #[error("dead-letter topic: {0}")]
    DeadLetter(#[from] weir_producers::ProduceError),
}

impl StoreError {
    fn store(&self) -> &'static str {
        match self {
            StoreError::Postgres(_) => "postgres",
            StoreError::Redis(_) => "redis",
            StoreError::DeadLetter(_) => "kafka",
        }
    }
}

/// What an aggregator does with a batch. The runtime owns delivery
/// (offsets, retries, rebalances, dead letters); an aggregator owns effects.
pub trait Aggregator: Send + Sync + 'static {
    /// The event type consumed.
    type Event: Event;

    /// Short role name (`health`, `access`) for metrics and the default group.
    fn role(&self) -> &'static str;

    /// Writes the batch's effects inside the runtime's transaction. Must not
    /// commit; the runtime commits together with the offsets.
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        batch: &'a [Record<Self::Event>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a;

    /// Effects outside PostgreSQL (Redis), run after the transaction
    /// committed and retried until they succeed; must be idempotent.
    fn publish<'a>(
        &'a self,
        batch: &'a [Record<Self::Event>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a;
}

/// Why the runtime stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Kafka client could not be created or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Totals of one run, reported at shutdown.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Records whose effects were committed.
    pub applied: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Records skipped because their offset was already applied.
    pub skipped: u64,
    /// Batches committed.
    pub batches: u64,
    /// Batches abandoned because another member owned the partition.
    pub fenced: u64,
    /// Attempts that failed because a store (or the dead-letter topic) was
    /// down; each was retried.
    pub store_errors: u64,
    /// Seconds from the first record to the last commit.
    pub busy_secs: f64,
    /// Records (applied + dead-lettered) per second over `busy_secs`.
    pub rate_per_sec: f64,
}

/// Logs progress every few seconds while records flow, so an operator
/// watching a backlog drain sees its rate.
struct Progress {
    first: Option<Instant>,
    last_log: Instant,
    logged_records: u64,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(10);

    fn new() -> Self {
        Progress {
            first: None,
            last_log: Instant::now(),
            logged_records: 0,
        }
    }

    /// The first record of a batch arrived.
    fn on_batch_start(&mut self) {
        self.first.get_or_insert_with(Instant::now);
    }

    fn on_commit(&mut self, group: &str, report: &mut RunReport) {
        let now = Instant::now();
        let first = *self.first.get_or_insert(now);
        let done = report.applied + report.dead_lettered;
        report.busy_secs = now.duration_since(first).as_secs_f64();
        if report.busy_secs > 0.0 {
            report.rate_per_sec = done as f64 / report.busy_secs;
        }
        if now.duration_since(self.last_log) >= Self::EVERY {
            let window = now.duration_since(self.last_log).as_secs_f64();
            let rate = (done - self.logged_records) as f64 / window;
            info!(
                group,
                records = done,
                rate_per_sec = rate.round(),
                "progress"
            );
            self.last_log = now;
            self.logged_records = done;
        }
    }
}

/// Rebalance notifications, collected in librdkafka's callback (which runs
/// inside `recv`) and read by the main loop right after.
#[derive(Default)]
struct GroupContext {
    revoked: Mutex<Vec<i32>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            info!(partitions = ?parts, "partitions revoked");
            if let Ok(mut r) = self.revoked.lock() {
                r.extend(parts);
            }
        }
    }

    fn post_rebalance(
        &self,
        _c: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(partitions = ?parts, "partitions assigned");
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// What the member knows of one partition it owns.
#[derive(Debug, Clone, Copy)]
struct PartitionState {
    /// Next offset stored in PostgreSQL (`None`: never stored).
    stored: Option<i64>,
    /// Next offset expected from Kafka (after the records already batched).
    next: i64,
    /// A seek to `stored` was already attempted; if Kafka still delivers past
    /// it, the records in between are gone (retention) and the gap is accepted.
    seeked: bool,
}

/// A record that failed to decode, kept until it is durable in the DLQ.
struct DeadRecord {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    original_size: usize,
    error: DecodeError,
    timestamp: Option<i64>,
}

/// A record as received, decoded later in parallel with the rest of the batch.
struct RawRecord {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    timestamp: Option<i64>,
}

/// Decodes raw records in order; failures become dead letters.
fn decode_all<E: Event>(
    raw: Vec<RawRecord>,
    dlq_max_payload: usize,
) -> (Vec<Record<E>>, Vec<DeadRecord>) {
    let mut records = Vec::with_capacity(raw.len());
    let mut dead = Vec::new();
    for r in raw {
        match decode::<E>(r.payload.as_deref()) {
            Ok(event) => records.push(Record {
                partition: r.partition,
                offset: r.offset,
                event,
            }),
            Err(error) => {
                let mut payload = r.payload.unwrap_or_default();
                let original_size = payload.len();
                payload.truncate(dlq_max_payload);
                dead.push(DeadRecord {
                    partition: r.partition,
                    offset: r.offset,
                    key: r.key,
                    payload,
                    original_size,
                    error,
                    timestamp: r.timestamp,
                });
            }
        }
    }
    (records, dead)
}

/// Below this many records a batch is decoded on the loop's own thread; above
/// it, half of it is decoded on a blocking thread at the same time (decoding
/// JSON is the largest CPU cost of a member).
const PARALLEL_DECODE_MIN: usize = 1024;

struct Batch<E> {
    raw: Vec<RawRecord>,
    records: Vec<Record<E>>,
    dead: Vec<DeadRecord>,
    dead_sent: bool,
    /// Per partition: (offset stored before the batch, next offset after it).
    ranges: BTreeMap<i32, (Option<i64>, i64)>,
}

impl<E> Batch<E> {
    fn new() -> Self {
        Batch {
            raw: Vec::new(),
            records: Vec::new(),
            dead: Vec::new(),
            dead_sent: false,
            ranges: BTreeMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.raw.len() + self.records.len() + self.dead.len()
    }

    fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    fn drop_partition(&mut self, p: i32) {
        self.raw.retain(|r| r.partition != p);
        self.records.retain(|r| r.partition != p);
        self.dead.retain(|r| r.partition != p);
        self.ranges.remove(&p);
    }
}

enum ApplyOutcome {
    Committed,
    Fenced(i32),
}

/// How a batch handed to the applying task ended.
enum Applied {
    /// Effects and offsets committed.
    Committed,
    /// Another member moved the partition's offset first.
    Fenced(i32),
    /// A store stayed down past the shutdown deadline.
    Abandoned,
}

/// A batch back from the applying task.
struct AppliedBatch<E> {
    batch: Batch<E>,
    outcome: Applied,
    store_errors: u64,
    seconds: f64,
}

/// One member of a consumer group running an aggregator.
pub struct GroupRuntime<A: Aggregator> {
    cfg: ConsumerConfig,
    kafka: KafkaConfig,
    group: String,
    topic: String,
    dlq_topic: String,
    pool: PgPool,
    aggregator: Arc<A>,
    dlq: EventProducer,
}

impl<A: Aggregator> GroupRuntime<A> {
    /// Wires a member; nothing connects until `run`.
    pub fn new(
        cfg: ConsumerConfig,
        kafka: KafkaConfig,
        topic: String,
        dlq_topic: String,
        pool: PgPool,
        aggregator: Arc<A>,
        dlq: EventProducer,
    ) -> Self {
        let group = cfg.group_for(aggregator.role());
        GroupRuntime {
            cfg,
            kafka,
            group,
            topic,
            dlq_topic,
            pool,
            aggregator,
            dlq,
        }
    }

    /// The group id this member joins.
    pub fn group(&self) -> &str {
        &self.group
    }

    fn consumer(&self) -> Result<StreamConsumer<GroupContext>, KafkaError> {
        let mut c = self
            .kafka
            .client_config(&format!("consume-{}", self.aggregator.role()));
        c.set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                self.cfg.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.cfg.session_timeout.as_millis() / 4)
                    .max(100)
                    .to_string(),
            )
            .set("fetch.wait.max.ms", "100")
            // librdkafka waits a whole second (its default) before fetching
            // again once its local queue is full; a member that drains that
            // queue in milliseconds then sits idle. 20 ms nearly doubled a
            // member's rate in bench/consume-health.
            .set("fetch.queue.backoff.ms", "20");
        self.kafka.apply_overrides(&mut c);
        c.create_with_context(GroupContext::default())
    }

    /// Runs until `shutdown` fires, then finishes the current batch (within
    /// the drain deadline), commits and leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunReport, RuntimeError> {
        let this = Arc::new(self);
        let consumer = this.consumer()?;
        consumer.subscribe(&[&this.topic])?;
        info!(group = %this.group, topic = %this.topic, "consumer started");
        let mut owned: HashMap<i32, PartitionState> = HashMap::new();
        let mut report = RunReport::default();
        let mut progress = Progress::new();
        // The batch being applied while the next one is collected: fetching
        // and decoding overlap the PostgreSQL transaction. Applies stay
        // strictly one after the other.
        let mut inflight: Option<tokio::task::JoinHandle<AppliedBatch<A::Event>>> = None;

        'outer: while !shutdown.is_cancelled() {
            let mut batch: Batch<A::Event> = Batch::new();
            // Wait for the first record of a batch as long as it takes (or,
            // with a batch in flight, until it is done).
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'outer,
                done = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    this.finish(&consumer, &mut owned, &mut report, done);
                    progress.on_commit(&this.group, &mut report);
                    continue;
                }
                m = consumer.recv() => m,
            };
            progress.on_batch_start();
            this.take(&consumer, first, &mut owned, &mut batch, &mut report)
                .await;
            let deadline = tokio::time::Instant::now() + this.cfg.batch_max_wait;
            while batch.len() < this.cfg.batch_max_records && !shutdown.is_cancelled() {
                let m = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    m = consumer.recv() => m,
                };
                this.take(&consumer, m, &mut owned, &mut batch, &mut report)
                    .await;
            }
            this.forget_revoked(&consumer, &mut owned, &mut batch);
            if let Ok(assigned) = consumer.assignment() {
                metrics::gauge!("weir_consumer_partitions_owned", "group" => this.group.clone())
                    .set(assigned.count() as f64);
            }
            if batch.is_empty() {
                continue;
            }
            this.decode_batch(&mut batch).await;
            // The previous batch must be committed before this one is
            // applied: its offsets are this batch's fence.
            if let Some(h) = inflight.take() {
                let done = h.await;
                this.finish(&consumer, &mut owned, &mut report, done);
                progress.on_commit(&this.group, &mut report);
                // It may have been abandoned: then this batch's view of those
                // partitions is stale too and its fence will fail.
            }
            // Optimistically, this batch's offsets are the next fence.
            for (p, (_, next)) in &batch.ranges {
                if let Some(s) = owned.get_mut(p) {
                    s.stored = Some(*next);
                }
            }
            let stopping = shutdown.is_cancelled();
            let task = {
                let (this, shutdown) = (this.clone(), shutdown.clone());
                tokio::spawn(async move { this.apply_batch(batch, shutdown, stopping).await })
            };
            inflight = Some(task);
        }
        if let Some(h) = inflight.take() {
            let done = h.await;
            this.finish(&consumer, &mut owned, &mut report, done);
            progress.on_commit(&this.group, &mut report);
        }
        info!(group = %this.group, applied = report.applied, dead_lettered = report.dead_lettered,
              skipped = report.skipped, batches = report.batches, "consumer stopping");
        consumer.unsubscribe();
        drop(consumer);
        Ok(report)
    }

    /// Takes a batch back from the applying task: on commit, tells Kafka
    /// (best effort) and counts; otherwise forgets the batch's partitions so
    /// that their next records reload the stored offsets and seek.
    fn finish(
        &self,
        consumer: &StreamConsumer<GroupContext>,
        owned: &mut HashMap<i32, PartitionState>,
        report: &mut RunReport,
        done: Result<AppliedBatch<A::Event>, tokio::task::JoinError>,
    ) {
        let done = match done {
            Ok(d) => d,
            // A panic while applying: crash, before anything else is stored.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        report.store_errors += done.store_errors;
        let batch = done.batch;
        match done.outcome {
            Applied::Committed => {
                let mut tpl = TopicPartitionList::new();
                for (p, (_, next)) in &batch.ranges {
                    let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*next));
                }
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    debug!(error = %e, "async commit to Kafka failed (PostgreSQL holds the truth)");
                }
                report.applied += batch.records.len() as u64;
                report.dead_lettered += batch.dead.len() as u64;
                report.batches += 1;
                let g = self.group.clone();
                metrics::counter!("weir_consumer_records_total", "group" => g.clone(), "outcome" => "applied").increment(batch.records.len() as u64);
                metrics::counter!("weir_consumer_records_total", "group" => g.clone(), "outcome" => "dead_lettered").increment(batch.dead.len() as u64);
                metrics::counter!("weir_consumer_batches_total", "group" => g.clone()).increment(1);
                metrics::histogram!("weir_consumer_batch_seconds", "group" => g)
                    .record(done.seconds);
            }
            Applied::Fenced(p) => {
                warn!(
                    partition = p,
                    "offset fence failed: partition owned elsewhere; batch abandoned"
                );
                report.fenced += 1;
                metrics::counter!("weir_consumer_fenced_batches_total", "group" => self.group.clone()).increment(1);
                for p in batch.ranges.keys() {
                    owned.remove(p);
                }
            }
            Applied::Abandoned => {
                for p in batch.ranges.keys() {
                    owned.remove(p);
                }
            }
        }
    }

    /// Drops the state of revoked partitions and their part of the batch:
    /// the new owner will read them from the stored offsets.
    fn forget_revoked(
        &self,
        consumer: &StreamConsumer<GroupContext>,
        owned: &mut HashMap<i32, PartitionState>,
        batch: &mut Batch<A::Event>,
    ) {
        let revoked: Vec<i32> = match consumer.context().revoked.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(_) => return,
        };
        for p in revoked {
            owned.remove(&p);
            if batch.ranges.contains_key(&p) {
                info!(
                    partition = p,
                    "abandoning revoked partition's part of the batch"
                );
            }
            batch.drop_partition(p);
        }
    }

    /// Places one received record into the batch (or the dead letters), or
    /// skips it / seeks, according to the stored offsets.
    async fn take(
        &self,
        consumer: &StreamConsumer<GroupContext>,
        msg: Result<BorrowedMessage<'_>, KafkaError>,
        owned: &mut HashMap<i32, PartitionState>,
        batch: &mut Batch<A::Event>,
        report: &mut RunReport,
    ) {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "kafka consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        };
        // A revocation may have happened inside this `recv`: apply it first
        // so that a record of a partition we just lost is not batched.
        self.forget_revoked(consumer, owned, batch);
        let (p, o) = (msg.partition(), msg.offset());
        let state = match owned.get(&p) {
            Some(s) => *s,
            None => match self.load_offset(p).await {
                Ok(stored) => {
                    let s = PartitionState {
                        stored,
                        next: stored.unwrap_or(o),
                        seeked: false,
                    };
                    owned.insert(p, s);
                    s
                }
                Err(e) => {
                    // Cannot know where to start: rewind to this record and
                    // try again after a pause.
                    warn!(partition = p, error = %e, "cannot read stored offset; retrying");
                    report.store_errors += 1;
                    metrics::counter!("weir_consumer_store_errors_total", "group" => self.group.clone(), "store" => "postgres").increment(1);
                    self.seek(consumer, p, o);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return;
                }
            },
        };
        if o < state.next {
            report.skipped += 1;
            metrics::counter!("weir_consumer_records_total", "group" => self.group.clone(), "outcome" => "skipped").increment(1);
            if state.stored.is_some_and(|s| o < s) && !state.seeked {
                // Kafka's committed offset lags the stored one: jump ahead.
                self.seek(consumer, p, state.next);
                if let Some(s) = owned.get_mut(&p) {
                    s.seeked = true;
                }
            }
            return;
        }
        if o > state.next {
            if !state.seeked {
                debug!(
                    partition = p,
                    offset = o,
                    stored = state.next,
                    "seeking to stored offset"
                );
                self.seek(consumer, p, state.next);
                if let Some(s) = owned.get_mut(&p) {
                    s.seeked = true;
                }
                return;
            }
            warn!(partition = p, expected = state.next, got = o,
                  "records between the stored offset and the first available one are gone (retention); continuing");
            metrics::counter!("weir_consumer_gap_records_total", "group" => self.group.clone())
                .increment((o - state.next) as u64);
        }
        batch.raw.push(RawRecord {
            partition: p,
            offset: o,
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            timestamp: msg.timestamp().to_millis(),
        });
        let entry = batch.ranges.entry(p).or_insert((state.stored, o));
        entry.1 = o + 1;
        if let Some(s) = owned.get_mut(&p) {
            s.next = o + 1;
        }
    }

    /// Decodes the batch's raw records, splitting a large batch across two
    /// threads.
    async fn decode_batch(&self, batch: &mut Batch<A::Event>) {
        let mut raw = std::mem::take(&mut batch.raw);
        let max = self.cfg.dlq_max_payload;
        let (records, dead) = if raw.len() < PARALLEL_DECODE_MIN {
            decode_all::<A::Event>(raw, max)
        } else {
            let second = raw.split_off(raw.len() / 2);
            let other = tokio::task::spawn_blocking(move || decode_all::<A::Event>(second, max));
            let (mut records, mut dead) = decode_all::<A::Event>(raw, max);
            match other.await {
                Ok((r, d)) => {
                    records.extend(r);
                    dead.extend(d);
                }
                // Only a panic in the decoder gets here: crash like the
                // inline half would, before any offset of the batch is stored.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
            (records, dead)
        };
        batch.records = records;
        batch.dead = dead;
    }

    fn seek(&self, consumer: &StreamConsumer<GroupContext>, p: i32, offset: i64) {
        if let Err(e) = consumer.seek(
            &self.topic,
            p,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            warn!(partition = p, offset, error = %e, "seek failed");
        }
    }

    async fn load_offset(&self, p: i32) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar::<_, i64>(
            "SELECT next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2 AND partition = $3",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(p)
        .fetch_optional(&self.pool)
        .await
    }

    /// Applies a batch (dead letters, then one transaction with its offsets)
    /// retrying while a store is down, then publishes its effects outside
    /// PostgreSQL. Runs in its own task, overlapping the next batch's fetch.
    async fn apply_batch(
        &self,
        mut batch: Batch<A::Event>,
        shutdown: CancellationToken,
        stopping: bool,
    ) -> AppliedBatch<A::Event> {
        let started = Instant::now();
        let mut store_errors = 0u64;
        let mut backoff = Duration::from_millis(100);
        let give_up_at = stopping.then(|| Instant::now() + self.cfg.drain_timeout);
        let outcome = loop {
            match self.try_apply(&mut batch).await {
                Ok(ApplyOutcome::Committed) => break Applied::Committed,
                Ok(ApplyOutcome::Fenced(p)) => break Applied::Fenced(p),
                Err(e) => {
                    store_errors += 1;
                    metrics::counter!("weir_consumer_store_errors_total", "group" => self.group.clone(), "store" => e.store()).increment(1);
                    let deadline_passed = give_up_at.is_some_and(|t| Instant::now() >= t);
                    if deadline_passed || (shutdown.is_cancelled() && !stopping) {
                        warn!(error = %e, "store unavailable at shutdown; batch left uncommitted for the next owner");
                        break Applied::Abandoned;
                    }
                    warn!(error = %e, retry_in = ?backoff, records = batch.len(), "batch not committed; pausing");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.cfg.retry_backoff_max);
                }
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        if matches!(outcome, Applied::Committed) {
            // Effects outside PostgreSQL, retried until they land (or shutdown).
            let mut backoff = Duration::from_millis(100);
            while let Err(e) = self.aggregator.publish(&batch.records).await {
                store_errors += 1;
                metrics::counter!("weir_consumer_store_errors_total", "group" => self.group.clone(), "store" => e.store()).increment(1);
                if shutdown.is_cancelled() {
                    warn!(error = %e, "live state not published at shutdown; the next reports will refresh it");
                    break;
                }
                warn!(error = %e, retry_in = ?backoff, "publishing live state failed; pausing");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.cfg.retry_backoff_max);
            }
        }
        AppliedBatch {
            batch,
            outcome,
            store_errors,
            seconds,
        }
    }

    async fn try_apply(&self, batch: &mut Batch<A::Event>) -> Result<ApplyOutcome, StoreError> {
        if !batch.dead.is_empty() && !batch.dead_sent {
            self.send_dead_letters(&batch.dead).await?;
            batch.dead_sent = true;
        }
        let mut tx = self.pool.begin().await?;
        if !batch.records.is_empty() {
            self.aggregator.apply(&mut tx, &batch.records).await?;
        }
        for (p, (stored, next)) in &batch.ranges {
            let rows = match stored {
                Some(prev) => sqlx::query(
                    "UPDATE consumer_offsets SET next_offset = $4, updated_at = now() \
                     WHERE group_id = $1 AND topic = $2 AND partition = $3 AND next_offset = $5",
                )
                .bind(&self.group)
                .bind(&self.topic)
                .bind(p)
                .bind(next)
                .bind(prev)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                None => sqlx::query(
                    "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(&self.group)
                .bind(&self.topic)
                .bind(p)
                .bind(next)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            };
            if rows != 1 {
                tx.rollback().await?;
                return Ok(ApplyOutcome::Fenced(*p));
            }
        }
        tx.commit().await?;
        Ok(ApplyOutcome::Committed)
    }

    /// Produces the batch's dead letters and waits until Kafka has them.
    /// Failing to do so is a transient failure like a store being down.
    async fn send_dead_letters(&self, dead: &[DeadRecord]) -> Result<(), StoreError> {
        let now = Utc::now().to_rfc3339();
        let mut pending = Vec::with_capacity(dead.len());
        for d in dead {
            warn!(partition = d.partition, offset = d.offset, reason = d.error.reason(), error = %d.error,
                  "record dead-lettered");
            let mut headers = OwnedHeaders::new();
            for (k, v) in [
                (dlq_headers::REASON, d.error.reason().to_string()),
                (dlq_headers::DETAIL, truncate(&d.error.to_string(), 1024)),
                (dlq_headers::SOURCE_TOPIC, self.topic.clone()),
                (dlq_headers::SOURCE_PARTITION, d.partition.to_string()),
                (dlq_headers::SOURCE_OFFSET, d.offset.to_string()),
                (dlq_headers::GROUP, self.group.clone()),
                (dlq_headers::TIME, now.clone()),
            ] {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            if d.original_size > d.payload.len() {
                headers = headers.insert(Header {
                    key: "weir.dlq.payload.original_size",
                    value: Some(d.original_size.to_string().as_bytes()),
                });
            }
            if let Some(ts) = d.timestamp {
                headers = headers.insert(Header {
                    key: "weir.dlq.source.timestamp",
                    value: Some(ts.to_string().as_bytes()),
                });
            }
            let key = d.key.as_deref().map(String::from_utf8_lossy);
            let fut = self.dlq.enqueue_raw(
                &self.dlq_topic,
                key.as_deref(),
                &d.payload,
                Some(headers),
                "dead_letter",
            )?;
            pending.push(fut);
        }
        for fut in pending {
            fut.await?;
        }
        debug!(count = dead.len(), "dead letters durable");
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Reads a header's value as text (for `weir dlq` and tests).
pub fn header_text<M: Message>(msg: &M, name: &str) -> Option<String> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
