//! `weir topics`: Weir's topics, created idempotently through the admin API.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use tracing::{info, warn};
use weir_producers::KafkaConfig;

use crate::config::TopicsConfig;

/// What `ensure` did to one topic.
#[derive(Debug)]
pub struct Ensured {
    /// Topic.
    pub name: String,
    /// Created now (false: it already existed).
    pub created: bool,
}

/// Creates the health, access and dead-letter topics when missing. Existing
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
