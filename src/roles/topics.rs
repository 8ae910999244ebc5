//! `weir topics`: Weir's topics, created idempotently through the admin API,
//! and scaled (partitions added, never removed) on an operator's request.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use tracing::{info, warn};
use weir_core::KafkaConfig;

use crate::config::TopicsConfig;

/// What `ensure` did to one topic.
#[derive(Debug)]
pub struct Ensured {
    /// Topic.
    pub name: String,
    /// Created now (false: it already existed).
    pub created: bool,
}

/// Creates the health, access, dead-letter and report topics when missing. Existing
/// topics are left alone: changing partitions is a deliberate operation,
/// never a side effect of starting a role.
pub async fn ensure(kafka: &KafkaConfig, topics: &TopicsConfig) -> anyhow::Result<Vec<Ensured>> {
    let admin: AdminClient<DefaultClientContext> = {
        let mut c = kafka.client_config("admin");
        kafka.apply_overrides(&mut c);
        c.create().context("creating the Kafka admin client")?
    };
    let retention = topics.retention.as_millis().to_string();
    let dlq_retention = topics.dlq_retention.as_millis().to_string();
    let specs = [
        (topics.health.as_str(), retention.as_str()),
        (topics.access.as_str(), retention.as_str()),
        (topics.dlq.as_str(), dlq_retention.as_str()),
        (topics.report.as_str(), retention.as_str()),
    ];
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|(name, ret)| {
            NewTopic::new(
                name,
                topics.partitions,
                TopicReplication::Fixed(topics.replication),
            )
            .set("retention.ms", ret)
        })
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(15)));
    let results = tokio::time::timeout(Duration::from_secs(30), admin.create_topics(&new, &opts))
        .await
        .with_context(|| format!("Kafka at {} did not answer within 30 s", kafka.brokers))?
        .with_context(|| format!("creating topics on {}", kafka.brokers))?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(name) => {
                info!(topic = %name, partitions = topics.partitions, "topic created");
                out.push(Ensured {
                    name,
                    created: true,
                });
            }
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => out.push(Ensured {
                name,
                created: false,
            }),
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    // Topic metadata takes a moment to reach every broker; wait until the
    // topics are visible so that producers started right after do not fail.
    for (name, _) in specs {
        let mut visible = false;
        for _ in 0..50 {
            let md = admin
                .inner()
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .with_context(|| format!("reading metadata of {name}"))?;
            if md
                .topics()
                .first()
                .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty())
            {
                visible = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !visible {
            warn!(topic = name, "topic not visible in metadata yet");
        }
    }
    Ok(out)
}

fn admin(kafka: &KafkaConfig) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    let mut c = kafka.client_config("admin");
    kafka.apply_overrides(&mut c);
    c.create().context("creating the Kafka admin client")
}

/// Partition count of `topic`, `None` when the topic does not exist.
fn partition_count(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> anyhow::Result<Option<i32>> {
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading metadata of {topic}"))?;
    Ok(md
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32))
}

/// What `weir topics scale` did or would do.
#[derive(Debug)]
pub struct ScalePlan {
    /// Topic.
    pub topic: String,
    /// Partitions before.
    pub from: i32,
    /// Partitions after.
    pub to: i32,
    /// Nothing was changed (dry run, or already at the count).
    pub dry_run: bool,
    /// What the operator must know before (or after) adding partitions.
    pub warning: Option<String>,
}

impl std::fmt::Display for ScalePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from == self.to {
            write!(
                f,
                "{}: already {} partitions, nothing to do",
                self.topic, self.to
            )
        } else if self.dry_run {
            write!(
                f,
                "{}: {} -> {} partitions (dry run: nothing changed)",
                self.topic, self.from, self.to
            )
        } else {
            write!(f, "{}: {} -> {} partitions", self.topic, self.from, self.to)
        }
    }
}

/// Whether the latest record of any partition carries a key (one record per
/// partition is read, for at most a few seconds). `None`: could not tell.
fn carries_keys(kafka: &KafkaConfig, topic: &str, partitions: i32) -> Option<bool> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let mut c = kafka.client_config("scale-probe");
    // No group id: the probe reads by assignment and leaves no trace.
    c.set("enable.auto.commit", "false");
    kafka.apply_overrides(&mut c);
    let consumer: BaseConsumer = c.create().ok()?;
    let mut tpl = TopicPartitionList::new();
    let mut expected = 0;
    for p in 0..partitions {
        let (lo, hi) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .ok()?;
        if hi > lo {
            tpl.add_partition_offset(topic, p, Offset::Offset(hi - 1))
                .ok()?;
            expected += 1;
        }
    }
    if expected == 0 {
        return None;
    }
    consumer.assign(&tpl).ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while seen < expected && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            if m.key().is_some_and(|k| !k.is_empty()) {
                return Some(true);
            }
            seen += 1;
        }
    }
    (seen == expected).then_some(false)
}

/// Adds partitions to `topic` so that it has `partitions`. Refuses a
/// decrease: Kafka cannot remove partitions, and a topic recreated with fewer
/// would lose its records. With `dry_run`, only says what it would do.
pub async fn scale(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    dry_run: bool,
) -> anyhow::Result<ScalePlan> {
    let admin = admin(kafka)?;
    let from = partition_count(&admin, topic)?
        .with_context(|| format!("topic {topic} does not exist on {}", kafka.brokers))?;
    if partitions < from {
        anyhow::bail!(
            "cannot decrease {topic} from {from} to {partitions} partitions: Kafka never removes \
             partitions (to shrink, create a new topic and move producers and consumers to it; \
             see docs/runbooks/partition-scaling.md)"
        );
    }
    let mut plan = ScalePlan {
        topic: topic.to_string(),
        from,
        to: partitions,
        dry_run,
        warning: None,
    };
    if partitions == from {
        return Ok(plan);
    }
    let (k, t) = (kafka.clone(), topic.to_string());
    let keyed = tokio::task::spawn_blocking(move || carries_keys(&k, &t, from))
        .await
        .ok()
        .flatten();
    plan.warning = match keyed {
        Some(false) => None,
        Some(true) => Some(format!(
            "{topic} carries keyed records: after the change a key can map to another \
             partition, so records of one key may be read out of order across the switch \
             and a consumer's per-key state may move to another member"
        )),
        None => Some(format!(
            "could not tell whether {topic} carries keyed records; if it does, a key can map \
             to another partition after the change"
        )),
    };
    if dry_run {
        return Ok(plan);
    }
    let new = NewPartitions::new(topic, partitions as usize);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = tokio::time::timeout(
        Duration::from_secs(60),
        admin.create_partitions([&new], &opts),
    )
    .await
    .with_context(|| format!("Kafka at {} did not answer within 60 s", kafka.brokers))?
    .with_context(|| format!("adding partitions to {topic}"))?;
    for r in res {
        if let Err((name, code)) = r {
            anyhow::bail!("adding partitions to {name}: {code}");
        }
    }
    info!(topic, from, to = partitions, "partitions added");
    // Wait until metadata shows the new partitions, so that what we print
    // is what producers and consumers will see.
    for _ in 0..100 {
        if partition_count(&admin, topic)? == Some(partitions) {
            return Ok(plan);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    warn!(
        topic,
        partitions, "new partitions not visible in metadata yet"
    );
    Ok(plan)
}
