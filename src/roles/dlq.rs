//! `weir dlq`: inspect the dead-letter topic and replay records to their
//! source topic once the cause is fixed.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use weir_consumers::runtime::header_text;
use weir_producers::{EventProducer, KafkaConfig};
use weir_schemas::topics::dlq_headers;

use crate::cli::{DlqListArgs, DlqReplayArgs};
use crate::config::{Config, ConfigError};

/// One dead letter as listed.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Partition in the dead-letter topic.
    pub partition: i32,
    /// Offset in the dead-letter topic.
    pub offset: i64,
    /// Why it was rejected.
    pub reason: String,
    /// Detail of the failure.
    pub detail: String,
    /// Where it came from.
    pub source_topic: String,
    /// Source partition.
    pub source_partition: String,
    /// Source offset.
    pub source_offset: String,
    /// When it was rejected.
    pub time: String,
    /// Payload bytes kept.
    pub size: usize,
    /// Original payload size when it was truncated (cannot be replayed).
    pub truncated_from: Option<usize>,
    /// The first bytes of the payload, for a look.
    pub preview: String,
    #[serde(skip)]
    key: Option<Vec<u8>>,
    #[serde(skip)]
    payload: Vec<u8>,
}

fn reader(kafka: &KafkaConfig) -> anyhow::Result<BaseConsumer> {
    let mut c = kafka.client_config("dlq");
    c.set("group.id", "weir-dlq-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    kafka.apply_overrides(&mut c);
    c.create().context("creating the Kafka consumer")
}

/// Reads dead letters `[from, to]` of each selected partition (default: the
/// last `limit` of every partition). Blocking: call from a blocking thread.
pub fn read(
    kafka: &KafkaConfig,
    topic: &str,
    partition: Option<i32>,
    from: Option<i64>,
    to: Option<i64>,
    limit: i64,
) -> anyhow::Result<Vec<DeadLetter>> {
    let c = reader(kafka)?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading metadata of {topic} from {}", kafka.brokers))?;
    let Some(t) = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
    else {
        bail!("dead-letter topic {topic} does not exist (topics.dlq)");
    };
    let parts: Vec<i32> = t
        .partitions()
        .iter()
        .map(|p| p.id())
        .filter(|p| partition.is_none_or(|want| want == *p))
        .collect();
    if parts.is_empty() {
        bail!("{topic} has no partition {}", partition.unwrap_or_default());
    }
    let mut out = Vec::new();
    for p in parts {
        let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let start = from.unwrap_or(high - limit).max(low);
        let end = to.map(|t| (t + 1).min(high)).unwrap_or(high);
        if start >= end {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
        c.assign(&tpl)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut next = start;
        while next < end {
            if std::time::Instant::now() > deadline {
                bail!("timed out reading {topic}[{p}] at offset {next}");
            }
            let Some(msg) = c.poll(Duration::from_millis(500)) else {
                continue;
            };
            let m = msg?;
            next = m.offset() + 1;
            let payload = m.payload().unwrap_or_default().to_vec();
            let preview: String = String::from_utf8_lossy(&payload[..payload.len().min(80)])
                .chars()
                .map(|ch| if ch.is_control() { '.' } else { ch })
                .collect();
            out.push(DeadLetter {
                partition: p,
                offset: m.offset(),
                reason: header_text(&m, dlq_headers::REASON).unwrap_or_default(),
                detail: header_text(&m, dlq_headers::DETAIL).unwrap_or_default(),
                source_topic: header_text(&m, dlq_headers::SOURCE_TOPIC).unwrap_or_default(),
                source_partition: header_text(&m, dlq_headers::SOURCE_PARTITION)
                    .unwrap_or_default(),
                source_offset: header_text(&m, dlq_headers::SOURCE_OFFSET).unwrap_or_default(),
                time: header_text(&m, dlq_headers::TIME).unwrap_or_default(),
                size: payload.len(),
                truncated_from: header_text(&m, "weir.dlq.payload.original_size")
                    .and_then(|s| s.parse().ok()),
                preview,
                key: m.key().map(<[u8]>::to_vec),
                payload,
            });
        }
    }
    Ok(out)
}

/// Prints dead letters as a table.
pub fn print_table(letters: &[DeadLetter]) {
    println!(
        "{:>4} {:>8}  {:<20} {:<40} {:<14} preview",
        "part", "offset", "reason", "source (topic/partition@offset)", "time"
    );
    for d in letters {
        let time = d.time.get(..19).unwrap_or(&d.time);
        println!(
            "{:>4} {:>8}  {:<20} {:<40} {:<14} {}{}",
            d.partition,
            d.offset,
            d.reason,
            format!(
                "{}/{}@{}",
                d.source_topic, d.source_partition, d.source_offset
            ),
            time,
            d.preview,
            d.truncated_from
                .map(|n| format!(" [truncated from {n} bytes]"))
                .unwrap_or_default(),
        );
    }
    println!("{} dead letter(s)", letters.len());
}

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    /// Records produced back to their source topic.
    pub replayed: u64,
    /// Records skipped because their payload was truncated.
    pub skipped_truncated: u64,
    /// Records skipped because they name no source topic.
    pub skipped_unknown_source: u64,
    /// Dry run: nothing was produced.
    pub dry_run: bool,
}

/// Produces the payload (and key) of each dead letter back to its source
/// topic, with a header naming the dead letter it came from.
pub async fn replay(
    producer: &EventProducer,
    letters: &[DeadLetter],
    dlq_topic: &str,
    dry_run: bool,
) -> anyhow::Result<ReplayReport> {
    let mut report = ReplayReport {
        dry_run,
        ..ReplayReport::default()
    };
    let mut pending = Vec::new();
    for d in letters {
        if d.truncated_from.is_some() {
            tracing::warn!(
                partition = d.partition,
                offset = d.offset,
                "payload was truncated; cannot be replayed"
            );
            report.skipped_truncated += 1;
            continue;
        }
        if d.source_topic.is_empty() {
            report.skipped_unknown_source += 1;
            continue;
        }
        report.replayed += 1;
        if dry_run {
            continue;
        }
        let origin = format!("{dlq_topic}/{}@{}", d.partition, d.offset);
        let headers = OwnedHeaders::new().insert(Header {
            key: "weir.replay.of",
            value: Some(origin.as_bytes()),
        });
        pending.push(producer.enqueue_raw(
            &d.source_topic,
            d.key.as_deref(),
            &d.payload,
            Some(headers),
            "replay",
        )?);
    }
    for p in pending {
        p.await.context("replayed record not acknowledged")?;
    }
    Ok(report)
}

/// `weir dlq list`: prints dead letters as a table or JSON lines.
pub async fn list_command(cfg: &Config, a: DlqListArgs) -> anyhow::Result<()> {
    let (kafka, topic) = (cfg.kafka.clone(), cfg.topics.dlq.clone());
    let letters = tokio::task::spawn_blocking(move || {
        read(&kafka, &topic, a.partition, a.from, a.to, a.limit.max(1))
    })
    .await??;
    if a.json {
        for d in &letters {
            println!("{}", serde_json::to_string(d)?);
        }
    } else {
        print_table(&letters);
    }
    Ok(())
}

/// `weir dlq replay`: sends a range of dead letters back to their topics.
pub async fn replay_command(cfg: &Config, a: DlqReplayArgs) -> anyhow::Result<()> {
    if a.to < a.from {
        return Err(ConfigError {
            key: "--to".into(),
            message: "must not be below --from".into(),
        }
        .into());
    }
    let (kafka, topic) = (cfg.kafka.clone(), cfg.topics.dlq.clone());
    let letters = tokio::task::spawn_blocking(move || {
        read(
            &kafka,
            &topic,
            Some(a.partition),
            Some(a.from),
            Some(a.to),
            1,
        )
    })
    .await??;
    let producer = weir_producers::EventProducer::new(&cfg.kafka, "replay")?;
    let report = replay(&producer, &letters, &cfg.topics.dlq, a.dry_run).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
