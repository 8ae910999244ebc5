//! Kafka topics private to one test: created ready (every partition has a
//! leader) and deleted when the test ends.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::blocking::on_own_thread;
use crate::names::unique;
use crate::stack::Stack;

/// Topics created for one test and deleted when it ends.
pub struct TestTopics {
    brokers: String,
    /// Health topic name.
    pub health: String,
    /// Access topic name.
    pub access: String,
    /// Dead-letter topic name.
    pub dlq: String,
    /// Report request topic name.
    pub report: String,
}

/// An admin client on `brokers`.
pub(crate) fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("Kafka admin client")
}

impl TestTopics {
    /// Creates health, access, dead-letter and report topics with
    /// `partitions`.
    pub async fn create(stack: &Stack, partitions: i32) -> TestTopics {
        stack.require_kafka();
        let base = unique("t");
        let t = TestTopics {
            brokers: stack.kafka.clone(),
            health: format!("{base}.health"),
            access: format!("{base}.access"),
            dlq: format!("{base}.dlq"),
            report: format!("{base}.report"),
        };
        let admin = admin(&t.brokers);
        let new: Vec<NewTopic<'_>> = [&t.health, &t.access, &t.dlq, &t.report]
            .into_iter()
            .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
            .collect();
        let res = admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
            )
            .await
            .expect("create topics");
        for r in res {
            r.expect("topic created");
        }
        // Wait until metadata shows every partition with a leader.
        for name in [&t.health, &t.access, &t.dlq, &t.report] {
            let start = Instant::now();
            loop {
                let md = admin
                    .inner()
                    .fetch_metadata(Some(name), Duration::from_secs(5));
                let ok = md.is_ok_and(|m| {
                    m.topics().first().is_some_and(|tp| {
                        tp.error().is_none()
                            && tp.partitions().len() == partitions as usize
                            && tp.partitions().iter().all(|p| p.leader() >= 0)
                    })
                });
                if ok {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "topic {name} never became ready"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        t
    }

    /// Environment variables pointing `weir` at these topics.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("WEIR_TOPICS_HEALTH".into(), self.health.clone()),
            ("WEIR_TOPICS_ACCESS".into(), self.access.clone()),
            ("WEIR_TOPICS_DLQ".into(), self.dlq.clone()),
            ("WEIR_TOPICS_REPORT".into(), self.report.clone()),
        ]
    }
}

impl Drop for TestTopics {
    fn drop(&mut self) {
        let brokers = self.brokers.clone();
        let names = [
            self.health.clone(),
            self.access.clone(),
            self.dlq.clone(),
            self.report.clone(),
        ];
        on_own_thread(move || async move {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let _ = admin(&brokers)
                .delete_topics(&refs, &AdminOptions::new())
                .await;
        });
    }
}
