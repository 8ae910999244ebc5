//! The consumer-group runtime: batches of records from Kafka become effects in
//! PostgreSQL (and Redis) with exactly-once effect.
//!
//! How it holds together:
//! - Each batch's effects and its next offsets are written in one PostgreSQL
//!   transaction. The offset update is *fenced* ([`offsets`]): it only
//!   succeeds if the stored offset is still the one this member read before
//!   the batch, so a member that lost its partition (and does not know it
//!   yet) cannot apply a batch that the new owner also applies.
//! - When a member first sees a record of a partition it loads the stored
//!   offset and, if Kafka delivered from elsewhere, seeks there. Records below
//!   the stored offset are skipped ([`offsets::place`]).
//! - After the transaction, offsets are committed to Kafka asynchronously so
//!   that Kafka's own tools, Burrow and KEDA see the group's lag.
//! - Undecodable records go to the dead-letter topic ([`dead_letters`]), and
//!   are durable there before their offsets are stored. A store that is down
//!   pauses the group and the batch is retried with backoff ([`retry`]); it
//!   never goes to the dead-letter topic.
//!
//! Where things are: [`config`] (settings and their checks), [`batch`] (what
//! a batch holds and when it is full), [`offsets`] (the fence and where a
//! record falls against the stored offset), [`dead_letters`], [`retry`],
//! [`rebalance`] (librdkafka's callbacks), [`member`] (the loop), `events`
//! (its internal events: each log line with its metric).

use std::future::Future;

use serde::Serialize;
use sqlx::PgConnection;
use weir_schemas::Event;

pub mod batch;
pub mod config;
pub mod dead_letters;
pub(crate) mod events;
pub use events::describe_metrics;
pub mod member;
pub mod offsets;
pub mod rebalance;
pub mod retry;

pub use config::ConsumerConfig;
pub use dead_letters::header_text;
pub use member::{GroupRuntime, GroupRuntimeBuilder};

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

/// Whether a store's failure is the record's fault or the store's. Decided
/// from the error's code or kind, never from its message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// The store rejected what it was given (PostgreSQL SQLSTATE class 22
    /// data exception, 23 integrity, 54 program limit; a Redis error reply):
    /// retrying cannot help. The runtime isolates the record and
    /// dead-letters it.
    Poison,
    /// The store is unreachable, timed out, overloaded or shutting down
    /// (connection errors, pool timeouts, classes 08, 53, 57, and anything
    /// not known to be poison): the runtime pauses and retries.
    Unavailable,
}

impl FailureClass {
    /// The class of a PostgreSQL SQLSTATE (`22P05`, `08006`, …).
    pub fn of_sqlstate(code: &str) -> FailureClass {
        match code.get(..2) {
            Some("22" | "23" | "54") => FailureClass::Poison,
            _ => FailureClass::Unavailable,
        }
    }

    /// The class of a sqlx error.
    pub fn of_postgres(e: &sqlx::Error) -> FailureClass {
        match e {
            sqlx::Error::Database(db) => db
                .code()
                .map_or(FailureClass::Unavailable, |c| Self::of_sqlstate(&c)),
            // A value the driver could not encode is the record's.
            sqlx::Error::Encode(_) => FailureClass::Poison,
            _ => FailureClass::Unavailable,
        }
    }

    /// The class of a Redis error: an error reply about a command's data is
    /// poison; I/O, timeouts, loading, read-only replicas, out of memory
    /// and cluster states are the store's.
    pub fn of_redis(e: &redis::RedisError) -> FailureClass {
        use redis::ErrorKind::*;
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
            return FailureClass::Unavailable;
        }
        match e.kind() {
            ResponseError | ExecAbortError => FailureClass::Poison,
            ExtensionError => match e.code() {
                Some("OOM" | "MISCONF" | "BUSY" | "NOREPLICAS" | "NOAUTH" | "NOPERM") => {
                    FailureClass::Unavailable
                }
                _ => FailureClass::Poison,
            },
            _ => FailureClass::Unavailable,
        }
    }
}

/// A store failed: either the store is unavailable (the batch is retried)
/// or it rejected a record (the record is isolated and dead-lettered); see
/// [`StoreError::class`].
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
    /// Another store, of an aggregator written outside this crate (an HTTP
    /// API, an object store, another database), which says itself whether
    /// the failure is the record's or the store's.
    #[error("{store}: {source}")]
    Other {
        /// Short name of the store, for logs and metric labels.
        store: &'static str,
        /// Poison or unavailable.
        class: FailureClass,
        /// The store's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Wraps another store's failure.
    pub fn other(
        store: &'static str,
        class: FailureClass,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Other {
            store,
            class,
            source: source.into(),
        }
    }

    /// Short name of the failed store, for logs and metric labels.
    pub fn store(&self) -> &'static str {
        match self {
            StoreError::Postgres(_) => "postgres",
            StoreError::Redis(_) => "redis",
            StoreError::DeadLetter(_) => "kafka",
            StoreError::Other { store, .. } => store,
        }
    }

    /// Whether the record is at fault (poison) or the store (unavailable).
    /// The dead-letter topic failing is always the store's.
    pub fn class(&self) -> FailureClass {
        match self {
            StoreError::Postgres(e) => FailureClass::of_postgres(e),
            StoreError::Redis(e) => FailureClass::of_redis(e),
            StoreError::DeadLetter(_) => FailureClass::Unavailable,
            StoreError::Other { class, .. } => *class,
        }
    }

    /// The PostgreSQL SQLSTATE, when PostgreSQL answered with one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            StoreError::Postgres(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// What [`Aggregator::apply`] and [`Aggregator::publish`] return: the
/// effects were written, or the store's reason why not (which the runtime
/// classifies into retry, bisect or dead-letter).
pub type Applied = Result<(), StoreError>;

/// What an aggregator does with a batch. The runtime owns delivery
/// (offsets, retries, rebalances, dead letters); an aggregator owns effects.
pub trait Aggregator: Send + Sync + 'static {
    /// The event type consumed.
    type Event: Event;

    /// Short role name (`health`, `access`) for metrics and the default
    /// group: a property of the aggregator's type, fixed at compile time.
    const ROLE: &'static str;

    /// Writes the batch's effects inside the runtime's transaction. Must not
    /// commit; the runtime commits together with the offsets.
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        batch: &'a [Record<Self::Event>],
    ) -> impl Future<Output = Applied> + Send + 'a;

    /// Effects outside PostgreSQL (Redis), run after the transaction
    /// committed and retried until they succeed; must be idempotent. By
    /// default there are none.
    fn publish<'a>(
        &'a self,
        batch: &'a [Record<Self::Event>],
    ) -> impl Future<Output = Applied> + Send + 'a {
        let _ = batch;
        async { Ok(()) }
    }
}

/// Why the runtime stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Kafka client could not be created or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The dead-letter producer could not be created.
    #[error("dead-letter producer: {0}")]
    Producer(#[from] weir_producers::ProduceError),
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
