//! Kafka consumer groups driven by a test: records produced to chosen
//! partitions, a member that joins and commits exactly the offsets the test
//! says, and commits made without joining (a group with no member), so that
//! lag tooling can be checked against known figures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Produces `n` small records to `topic`/`partition` and waits until Kafka
/// acknowledged them all.
pub async fn produce(brokers: &str, topic: &str, partition: i32, n: usize) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "2")
        .create()
        .expect("Kafka producer");
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let payload = format!("record {i}");
        let rec: FutureRecord<'_, (), str> = FutureRecord::to(topic)
            .partition(partition)
            .payload(&payload);
        let fut = p
            .send_result(rec)
            .map_err(|(e, _)| e)
            .expect("record queued");
        pending.push(fut);
    }
    for f in pending {
        f.await
            .expect("producer alive")
            .map_err(|(e, _)| e)
            .expect("record acknowledged");
    }
}

fn consumer(brokers: &str, group: &str, client_id: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("Kafka consumer")
}

fn tpl(offsets: &[(&str, i32, i64)]) -> TopicPartitionList {
    let mut t = TopicPartitionList::new();
    for (topic, p, o) in offsets {
        t.add_partition_offset(topic, *p, Offset::Offset(*o))
            .expect("offset in list");
    }
    t
}

/// Commits offsets for `group` without joining it (as a tool resetting
/// offsets does); the group has no member.
pub fn commit_without_joining(brokers: &str, group: &str, offsets: &[(&str, i32, i64)]) {
    let c = consumer(brokers, group, "weir-test-committer");
    c.commit(&tpl(offsets), CommitMode::Sync)
        .expect("commit without joining");
}

/// A member of a group, polled on its own thread so that it stays in the
/// group, committing only what the test tells it to.
pub struct GroupMember {
    consumer: Arc<BaseConsumer>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupMember {
    /// Joins `group` subscribed to `topics` and waits until it was assigned
    /// `partitions` partitions in all.
    pub fn join(
        brokers: &str,
        group: &str,
        client_id: &str,
        topics: &[&str],
        partitions: usize,
    ) -> GroupMember {
        let c = Arc::new(consumer(brokers, group, client_id));
        c.subscribe(topics).expect("subscribe");
        let start = Instant::now();
        while c.assignment().map(|a| a.count()).unwrap_or(0) < partitions {
            let _ = c.poll(Duration::from_millis(100));
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "member of {group} was never assigned {partitions} partitions"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (c, stop) = (c.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = c.poll(Duration::from_millis(50));
                }
            }
        });
        GroupMember {
            consumer: c,
            stop,
            thread: Some(thread),
        }
    }

    /// Commits exactly these offsets (synchronously).
    pub fn commit(&self, offsets: &[(&str, i32, i64)]) {
        self.consumer
            .commit(&tpl(offsets), CommitMode::Sync)
            .expect("member commit");
    }

    /// Leaves the group.
    pub fn leave(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.consumer.unsubscribe();
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Deletes consumer groups (best effort), for a test's cleanup.
pub fn delete_groups(brokers: &str, groups: &[&str]) {
    let brokers = brokers.to_string();
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    crate::blocking::on_own_thread(move || async move {
        let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
        let _ = crate::kafka::admin(&brokers)
            .delete_groups(&refs, &rdkafka::admin::AdminOptions::new())
            .await;
    });
}
