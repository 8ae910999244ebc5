//! One member of a consumer group: the loop that collects a batch while the
//! previous one is applied, and the applying task (dead letters, one
//! transaction with the fenced offsets, then effects outside PostgreSQL).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};
use weir_core::{InternalEvent, InternalEventHandle};
use weir_producers::{EventProducer, KafkaConfig};

use super::batch::{decode_parallel, Batch, RawRecord};
use super::dead_letters::{Bisect, DeadLetters};
use super::events::{
    CommittedBatch, ConsumeFailed, Gap, MemberEvents, MemberStarted, RecordDeadLettered,
    SeekFailed, StoreFailure,
};
use super::offsets::{place, OffsetStore, PartitionState, Placement};
use super::rebalance::GroupContext;
use super::retry::Backoff;
use super::{Aggregator, ConsumerConfig, FailureClass, RunReport, RuntimeError, StoreError};

/// Most records librdkafka prefetches per partition (`queued.min.messages`)
/// whatever the batch size: 5 000 access events are about 2 MiB.
const PREFETCH_MAX_RECORDS: usize = 5000;

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
    pool: PgPool,
    aggregator: Arc<A>,
    offsets: OffsetStore,
    dead_letters: DeadLetters,
    events: MemberEvents,
}

/// Builds a [`GroupRuntime`]: the aggregator, its topic and the database
/// are required; everything else has a default (the default
/// [`ConsumerConfig`] and [`KafkaConfig`], the `weir.dlq.v1` topic, a
/// dead-letter producer of its own).
pub struct GroupRuntimeBuilder<A: Aggregator> {
    aggregator: Arc<A>,
    topic: String,
    pool: PgPool,
    cfg: ConsumerConfig,
    kafka: KafkaConfig,
    dlq_topic: String,
    dlq: Option<EventProducer>,
}

impl<A: Aggregator> GroupRuntimeBuilder<A> {
    /// The member's settings.
    pub fn config(mut self, cfg: ConsumerConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// The Kafka cluster.
    pub fn kafka(mut self, kafka: KafkaConfig) -> Self {
        self.kafka = kafka;
        self
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dlq_topic = topic.into();
        self
    }

    /// A producer for dead letters shared with the caller (who may flush it
    /// later); without it the runtime creates its own.
    pub fn dead_letter_producer(mut self, producer: EventProducer) -> Self {
        self.dlq = Some(producer);
        self
    }

    /// Wires the member; nothing connects until `run`.
    pub fn build(self) -> Result<GroupRuntime<A>, RuntimeError> {
        let producer = match self.dlq {
            Some(p) => p,
            None => EventProducer::new(&self.kafka, "dlq")?,
        };
        let group = self.cfg.group_for(A::ROLE);
        Ok(GroupRuntime {
            events: MemberEvents::register(&group),
            cfg: self.cfg,
            kafka: self.kafka,
            pool: self.pool,
            aggregator: self.aggregator,
            offsets: OffsetStore {
                group: group.clone(),
                topic: self.topic.clone(),
            },
            dead_letters: DeadLetters {
                producer,
                topic: self.dlq_topic,
                source_topic: self.topic,
                group,
            },
        })
    }
}

impl<A: Aggregator> GroupRuntime<A> {
    /// Starts building a member that runs `aggregator` on `topic`, storing
    /// effects and offsets in `pool`'s database (migrated with
    /// [`crate::migrations::runtime`] and the aggregator's own migrations).
    pub fn builder(
        aggregator: A,
        topic: impl Into<String>,
        pool: PgPool,
    ) -> GroupRuntimeBuilder<A> {
        GroupRuntimeBuilder {
            aggregator: Arc::new(aggregator),
            topic: topic.into(),
            pool,
            cfg: ConsumerConfig::default(),
            kafka: KafkaConfig::default(),
            dlq_topic: weir_schemas::topics::DLQ.to_string(),
            dlq: None,
        }
    }

    /// The group id this member joins.
    pub fn group(&self) -> &str {
        &self.offsets.group
    }

    fn topic(&self) -> &str {
        &self.offsets.topic
    }

    /// Partitions of the member's topic, from a short-lived client (0 when
    /// Kafka does not answer in time: the per-partition cap applies then).
    async fn topic_partitions(&self) -> usize {
        let cfg = self
            .kafka
            .client_config(&format!("consume-{}-meta", A::ROLE));
        let topic = self.topic().to_string();
        tokio::task::spawn_blocking(move || {
            let client: rdkafka::consumer::BaseConsumer = cfg.create().ok()?;
            let md = client
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .ok()?;
            md.topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len())
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
    }

    fn consumer(&self, partitions: usize) -> Result<StreamConsumer<GroupContext>, KafkaError> {
        let mut c = self.kafka.client_config(&format!("consume-{}", A::ROLE));
        c.set("group.id", self.group())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        if self.cfg.group_protocol == "consumer" {
            // KIP-848: the broker assigns (incrementally, as cooperative-sticky
            // does) and owns the session timeout; librdkafka refuses the
            // classic protocol's settings with it.
            c.set("group.protocol", "consumer");
        } else {
            c.set("partition.assignment.strategy", "cooperative-sticky")
                .set(
                    "session.timeout.ms",
                    self.cfg.session_timeout.as_millis().to_string(),
                )
                .set(
                    "heartbeat.interval.ms",
                    (self.cfg.session_timeout.as_millis() / 4)
                        .max(100)
                        .to_string(),
                );
        }
        c.set("fetch.wait.max.ms", "100")
            // librdkafka waits a whole second (its default) before fetching
            // again once its local queue is full; a member that drains that
            // queue in milliseconds then sits idle. 20 ms nearly doubled a
            // member's rate in bench/consume-health.
            .set("fetch.queue.backoff.ms", "20")
            // librdkafka prefetches up to 100 000 records per partition and
            // 64 MiB (its defaults): on a 300 000-record backlog that was 130
            // of a member's 142 MiB heap (heaptrack). One batch's worth per
            // partition keeps the pipeline fed; the rdkafka map overrides it.
            // Capped: a batch draws from every partition a member owns, so
            // a large batch (merging more rows per transaction) does not
            // need a large prefetch per partition.
            .set(
                "queued.min.messages",
                self.cfg
                    .batch_max_records
                    .min(PREFETCH_MAX_RECORDS)
                    .to_string(),
            )
            .set(
                "queued.max.messages.kbytes",
                (self.cfg.batch_max_bytes / 1024).to_string(),
            )
            // What still held the memory after that: each fetch response
            // of up to 1 MiB per partition (librdkafka's default), kept
            // decompressed (lz4: 4–5 MiB) until its last record is applied.
            // 256 KiB per partition halved the anonymous memory of a member
            // catching up on 300 000 access events, but a member still held
            // about that per partition it owned (health: 90 MiB on 6
            // partitions, 166 MiB on 12); so one budget is shared out over
            // the topic's partitions (docs/benchmarks.md).
            .set(
                "max.partition.fetch.bytes",
                self.cfg.fetch_bytes_per_partition(partitions).to_string(),
            );
        self.kafka.apply_overrides(&mut c);
        c.create_with_context(GroupContext::default())
    }

    /// Runs until `shutdown` fires, then finishes the current batch (within
    /// the drain deadline), commits and leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunReport, RuntimeError> {
        let span = info_span!("member", group = %self.group(), topic = %self.topic());
        Arc::new(self).run_member(shutdown).instrument(span).await
    }

    async fn run_member(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<RunReport, RuntimeError> {
        let this = self;
        let partitions = this.topic_partitions().await;
        let consumer = this.consumer(partitions)?;
        consumer.subscribe(&[this.topic()])?;
        MemberStarted {
            group: this.group(),
            topic: this.topic(),
        }
        .emit();
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
                    // Nothing collected yet: a lost partition is simply
                    // reloaded when its next record arrives.
                    let _lost = this.finish(&consumer, &mut owned, &mut report, done);
                    progress.on_commit(this.group(), &mut report);
                    continue;
                }
                m = consumer.recv() => m,
            };
            progress.on_batch_start();
            this.take(&consumer, first, &mut owned, &mut batch, &mut report)
                .await;
            let deadline = tokio::time::Instant::now() + this.cfg.batch_max_wait;
            while !batch.is_full(this.cfg.batch_max_records, this.cfg.batch_max_bytes)
                && !shutdown.is_cancelled()
            {
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
                this.events.owned.emit(assigned.count());
            }
            if batch.is_empty() {
                continue;
            }
            this.decode_batch(&mut batch).await;
            // The previous batch must be committed before this one is
            // applied: its offsets are this batch's fence.
            if let Some(h) = inflight.take() {
                let done = h.await;
                let lost = this.finish(&consumer, &mut owned, &mut report, done);
                progress.on_commit(this.group(), &mut report);
                // It was fenced or abandoned: this batch read those
                // partitions' offsets while it was in flight, so its view of
                // them is stale and its fence would fail too. Drop them; their
                // next records reload the stored offsets and seek.
                for p in lost {
                    batch.drop_partition(p);
                }
                if batch.is_empty() {
                    continue;
                }
            }
            // Optimistically, this batch's offsets are the next fence.
            for (p, (_, next)) in &batch.ranges {
                if let Some(s) = owned.get_mut(p) {
                    s.stored = Some(*next);
                }
            }
            let stopping = shutdown.is_cancelled();
            let span = info_span!("batch", partitions = %batch.describe(), records = batch.len());
            let task = {
                let (this, shutdown) = (this.clone(), shutdown.clone());
                tokio::spawn(
                    async move { this.apply_batch(batch, shutdown, stopping).await }
                        .instrument(span),
                )
            };
            inflight = Some(task);
        }
        if let Some(h) = inflight.take() {
            let done = h.await;
            let _lost = this.finish(&consumer, &mut owned, &mut report, done);
            progress.on_commit(this.group(), &mut report);
        }
        info!(group = %this.group(), applied = report.applied, dead_lettered = report.dead_lettered,
              skipped = report.skipped, batches = report.batches, "consumer stopping");
        consumer.unsubscribe();
        drop(consumer);
        // Dead letters are awaited before their offsets are stored; this
        // only hands back the producer's resources within the deadline.
        let dlq = this.dead_letters.producer.clone();
        let deadline = this.cfg.drain_timeout;
        let _ = tokio::task::spawn_blocking(move || dlq.flush(deadline)).await;
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
    ) -> Vec<i32> {
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
                    let _ = tpl.add_partition_offset(self.topic(), *p, Offset::Offset(*next));
                }
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    debug!(error = %e, "async commit to Kafka failed (PostgreSQL holds the truth)");
                }
                report.applied += batch.records.len() as u64;
                let dead_lettered = batch.dead.len() + batch.rejected.len();
                report.dead_lettered += dead_lettered as u64;
                report.batches += 1;
                for d in batch.dead_letters() {
                    RecordDeadLettered {
                        group: self.group(),
                        partition: d.partition,
                        offset: d.offset,
                        reason: d.cause.reason(),
                        detail: &d.cause.detail(),
                    }
                    .emit();
                }
                self.events.committed.emit(CommittedBatch {
                    records: batch.records.len(),
                    dead_lettered,
                    seconds: done.seconds,
                });
                Vec::new()
            }
            Applied::Fenced(p) => {
                report.fenced += 1;
                self.events.fenced.emit(p);
                forget(owned, &batch)
            }
            Applied::Abandoned => forget(owned, &batch),
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
        let revoked = consumer.context().take_revoked();
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
                ConsumeFailed {
                    group: self.group(),
                    error: &e.to_string(),
                }
                .emit();
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
            None => match self.offsets.load(&self.pool, p).await {
                Ok(stored) => {
                    let s = PartitionState::new(stored, o);
                    owned.insert(p, s);
                    s
                }
                Err(e) => {
                    // Cannot know where to start: rewind to this record and
                    // try again after a pause.
                    report.store_errors += 1;
                    self.events.store.emit(StoreFailure {
                        store: "postgres",
                        class: FailureClass::of_postgres(&e),
                        error: e.to_string(),
                        action: "cannot read stored offset; retrying",
                        retry_in: Some(Duration::from_millis(500)),
                    });
                    debug!(
                        partition = p,
                        "rewinding to the record whose offset could not be placed"
                    );
                    self.seek(consumer, p, o);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return;
                }
            },
        };
        match place(&state, o) {
            Placement::Skip => {
                report.skipped += 1;
                self.events.skipped.emit((p, o));
                return;
            }
            Placement::Seek { to } => {
                if o < to {
                    report.skipped += 1;
                    self.events.skipped.emit((p, o));
                }
                debug!(partition = p, offset = o, to, "seeking to stored offset");
                let done = self.seek(consumer, p, to);
                if let Some(s) = owned.get_mut(&p) {
                    s.after_seek(done);
                }
                return;
            }
            Placement::Gap { .. } => self.events.gap.emit(Gap {
                partition: p,
                expected: state.next,
                got: o,
            }),
            Placement::Take => {}
        }
        batch.push(
            state.stored,
            RawRecord::received(
                p,
                o,
                msg.key(),
                msg.payload(),
                msg.timestamp().to_millis(),
                self.cfg.dlq_max_payload,
            ),
        );
        if let Some(s) = owned.get_mut(&p) {
            s.next = o + 1;
        }
    }

    /// Decodes the batch's raw records, splitting a large batch across two
    /// threads.
    async fn decode_batch(&self, batch: &mut Batch<A::Event>) {
        let raw = std::mem::take(&mut batch.raw);
        let (records, dead) = decode_parallel::<A::Event>(raw, self.cfg.dlq_max_payload).await;
        batch.records = records;
        batch.dead = dead;
    }

    /// Seeks partition `p` to `offset`; `false` when the seek failed
    /// (librdkafka refuses one while the partition's fetcher is not
    /// started, for example).
    fn seek(&self, consumer: &StreamConsumer<GroupContext>, p: i32, offset: i64) -> bool {
        match consumer.seek(
            self.topic(),
            p,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            Ok(()) => true,
            Err(e) => {
                SeekFailed {
                    group: self.group(),
                    partition: p,
                    offset,
                    error: &e.to_string(),
                }
                .emit();
                false
            }
        }
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
        let mut backoff = Backoff::new(self.cfg.retry_backoff_max);
        let give_up_at = stopping.then(|| Instant::now() + self.cfg.drain_timeout);
        let outcome = loop {
            match self.try_apply(&mut batch).await {
                Ok(ApplyOutcome::Committed) => break Applied::Committed,
                Ok(ApplyOutcome::Fenced(p)) => break Applied::Fenced(p),
                Err(e) => {
                    store_errors += 1;
                    let deadline_passed = give_up_at.is_some_and(|t| Instant::now() >= t);
                    if deadline_passed || (shutdown.is_cancelled() && !stopping) {
                        self.store_failed(&e, "store unavailable at shutdown; batch left uncommitted for the next owner", None);
                        break Applied::Abandoned;
                    }
                    let pause = backoff.next_delay();
                    self.store_failed(&e, "batch not committed; pausing", Some(pause));
                    tokio::time::sleep(pause).await;
                }
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        if matches!(outcome, Applied::Committed) {
            store_errors += self.publish(&mut batch, &shutdown).await;
        }
        AppliedBatch {
            batch,
            outcome,
            store_errors,
            seconds,
        }
    }

    fn store_failed(&self, e: &StoreError, action: &'static str, retry_in: Option<Duration>) {
        self.events.store.emit(StoreFailure {
            store: e.store(),
            class: e.class(),
            error: e.to_string(),
            action,
            retry_in,
        });
    }

    async fn try_apply(&self, batch: &mut Batch<A::Event>) -> Result<ApplyOutcome, StoreError> {
        if !batch.dead_sent {
            self.dead_letters.send(&batch.dead).await?;
            batch.dead_sent = true;
        }
        let mut tx = self.pool.begin().await?;
        if !batch.records.is_empty() {
            if let Err(e) = self.aggregator.apply(&mut tx, &batch.records).await {
                if e.class() != FailureClass::Poison {
                    return Err(e);
                }
                // A record the store refuses for what it is: find it (them)
                // by applying the batch again in halves, each under a
                // savepoint, and apply everything else.
                self.store_failed(
                    &e,
                    "store rejected the batch; isolating the records at fault",
                    None,
                );
                tx.rollback().await?;
                tx = self.pool.begin().await?;
                let mut bisect = Bisect::new(batch.records.len());
                while let Some(part) = bisect.next_part() {
                    let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
                    let res = self
                        .aggregator
                        .apply(&mut savepoint, &batch.records[part.clone()])
                        .await;
                    match res {
                        Ok(()) => savepoint.commit().await?,
                        Err(e) => {
                            savepoint.rollback().await?;
                            bisect.failed(part, e)?;
                        }
                    }
                }
                batch.reject(bisect.into_poison(), self.cfg.dlq_max_payload);
            }
        }
        // Poison records are durable in the DLQ before their offsets move.
        if !batch.rejected_sent {
            self.dead_letters.send(&batch.rejected).await?;
            batch.rejected_sent = true;
        }
        for (p, (stored, next)) in &batch.ranges {
            if !self.offsets.advance(&mut tx, *p, *stored, *next).await? {
                tx.rollback().await?;
                return Ok(ApplyOutcome::Fenced(*p));
            }
        }
        tx.commit().await?;
        Ok(ApplyOutcome::Committed)
    }

    /// Effects outside PostgreSQL, after the commit: retried while the
    /// store is unavailable (until shutdown); records it refuses are
    /// isolated like in the transaction and dead-lettered (their PostgreSQL
    /// effects are committed). Returns the failed attempts.
    async fn publish(&self, batch: &mut Batch<A::Event>, shutdown: &CancellationToken) -> u64 {
        let mut failures = 0;
        let mut backoff = Backoff::new(self.cfg.retry_backoff_max);
        loop {
            let result = match self.aggregator.publish(&batch.records).await {
                Ok(()) => return failures,
                Err(e) if e.class() == FailureClass::Poison => {
                    failures += 1;
                    self.store_failed(
                        &e,
                        "store rejected live state; isolating the records at fault",
                        None,
                    );
                    let mut bisect = Bisect::new(batch.records.len());
                    let mut res = Ok(());
                    while let Some(part) = bisect.next_part() {
                        if let Err(e) = self.aggregator.publish(&batch.records[part.clone()]).await
                        {
                            res = bisect.failed(part, e);
                            if res.is_err() {
                                break;
                            }
                        }
                    }
                    res.map(|()| bisect.into_poison())
                }
                Err(e) => Err(e),
            };
            let e = match result {
                Ok(poison) => {
                    let before = batch.rejected.len();
                    batch.reject(poison, self.cfg.dlq_max_payload);
                    match self.dead_letters.send(&batch.rejected[before..]).await {
                        Ok(()) => return failures,
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            failures += 1;
            if shutdown.is_cancelled() {
                self.store_failed(
                    &e,
                    "live state not published at shutdown; the next reports will refresh it",
                    None,
                );
                return failures;
            }
            let pause = backoff.next_delay();
            self.store_failed(&e, "publishing live state failed; pausing", Some(pause));
            tokio::time::sleep(pause).await;
        }
    }
}

/// Forgets the partitions of a batch that was not committed, so that their
/// next records reload the stored offsets and seek; returns them.
fn forget<E>(owned: &mut HashMap<i32, PartitionState>, batch: &Batch<E>) -> Vec<i32> {
    let lost: Vec<i32> = batch.ranges.keys().copied().collect();
    for p in &lost {
        owned.remove(p);
    }
    lost
}
