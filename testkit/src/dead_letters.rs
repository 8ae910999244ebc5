//! Reading a topic back as an operator would: every record with its key,
//! payload and headers from the beginning; for a dead-letter topic, with
//! its reason and source headers picked out.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// One record of a dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Record key (lossy UTF-8), empty when absent.
    pub key: String,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// `weir.dlq.reason`, when present.
    pub reason: Option<String>,
    /// `weir.dlq.source.topic`, when present.
    pub source_topic: Option<String>,
    /// Every header as (name, lossy UTF-8 value).
    pub headers: Vec<(String, String)>,
}

/// One record of a topic, as read back.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    /// Record key, empty when absent.
    pub key: Vec<u8>,
    /// Payload, empty when absent.
    pub payload: Vec<u8>,
    /// Every header as (name, lossy UTF-8 value).
    pub headers: Vec<(String, String)>,
}

/// Reads every record of `topic` from the beginning until no new record
/// arrived for `idle` (two minutes at most).
pub fn read_topic(brokers: &str, topic: &str, idle: Duration) -> Vec<TopicRecord> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", crate::names::unique("topic-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("Kafka consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("partition in list");
    }
    c.assign(&tpl).expect("assign");
    let (mut out, mut last, limit) = (Vec::new(), Instant::now(), Instant::now());
    while last.elapsed() < idle && limit.elapsed() < Duration::from_secs(120) {
        let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        last = Instant::now();
        let headers: Vec<(String, String)> = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_string(), v.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(TopicRecord {
            key: m.key().map(<[u8]>::to_vec).unwrap_or_default(),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        });
    }
    out
}

/// Reads every record of the dead-letter `topic` from the beginning until
/// no new record arrived for `idle` (two minutes at most).
pub fn read_dead_letters(brokers: &str, topic: &str, idle: Duration) -> Vec<DeadLetter> {
    read_topic(brokers, topic, idle)
        .into_iter()
        .map(|r| {
            let find = |name: &str| {
                r.headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            DeadLetter {
                key: String::from_utf8_lossy(&r.key).into_owned(),
                payload_len: r.payload.len(),
                reason: find("weir.dlq.reason"),
                source_topic: find("weir.dlq.source.topic"),
                headers: r.headers.clone(),
            }
        })
        .collect()
}
