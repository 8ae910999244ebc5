//! One call that gives a test everything it needs to run `weir` processes in
//! parallel with other tests: its own topics, consumer group, PostgreSQL
//! database, Redis key prefix and S3 bucket, and the `WEIR_*` environment
//! that points a child process at exactly those. Everything is removed when
//! the world is dropped (declare child processes after the world, so they
//! are stopped first).

use crate::bucket::TestBucket;
use crate::db::TestDb;
use crate::kafka::TestTopics;
use crate::names::unique;
use crate::process::weir_env;
use crate::redis_prefix::TestRedis;
use crate::stack::{stack, Stack};

/// A test's private slice of the stack. See the module documentation.
pub struct TestWorld {
    /// The services the world lives on.
    pub stack: Stack,
    /// Health, access and dead-letter topics.
    pub topics: TestTopics,
    /// Consumer group name (`WEIR_CONSUMER_GROUP`).
    pub group: String,
    /// PostgreSQL database.
    pub db: TestDb,
    /// Redis key prefix.
    pub redis: TestRedis,
    /// S3 bucket on the stack's S3 server.
    pub bucket: TestBucket,
}

/// How to build a [`TestWorld`]: on which services, with how many partitions.
pub struct WorldBuilder {
    stack: Stack,
    partitions: i32,
}

impl TestWorld {
    /// A world on the shared stack whose topics have `partitions` partitions.
    pub async fn create(partitions: i32) -> TestWorld {
        Self::builder().partitions(partitions).create().await
    }

    /// A builder, for worlds on other services (private instances).
    pub fn builder() -> WorldBuilder {
        WorldBuilder {
            stack: stack(),
            partitions: 1,
        }
    }

    /// Environment for a `weir` child process: topics, group, database,
    /// Redis URL and prefix, S3 origin, fast batches and session timeout,
    /// metrics on an ephemeral port.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut e = weir_env(
            &self.stack.kafka,
            &self.topics,
            &self.db.url,
            &self.redis.url,
            &self.redis.prefix,
            &self.group,
        );
        e.extend(self.bucket.env());
        e
    }

    /// [`TestWorld::env`] plus (or overridden by) `extra`; a later entry wins
    /// when a child process is spawned with it.
    pub fn env_with(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut e = self.env();
        e.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        e
    }
}

impl WorldBuilder {
    /// Services to use instead of the shared stack (e.g. private instances).
    pub fn on(mut self, stack: Stack) -> Self {
        self.stack = stack;
        self
    }

    /// Partitions of each topic (default 1).
    pub fn partitions(mut self, n: i32) -> Self {
        self.partitions = n;
        self
    }

    /// Creates topics, database, prefix and bucket.
    pub async fn create(self) -> TestWorld {
        let topics = TestTopics::create(&self.stack, self.partitions).await;
        let db = TestDb::create(&self.stack).await;
        let redis = TestRedis::new(&self.stack);
        let bucket = TestBucket::create().await;
        TestWorld {
            stack: self.stack,
            topics,
            group: unique("g"),
            db,
            redis,
            bucket,
        }
    }
}

impl Drop for TestWorld {
    fn drop(&mut self) {
        // The rest cleans up field by field; the group is only a name here.
        crate::groups::delete_groups(&self.stack.kafka, &[&self.group]);
    }
}
