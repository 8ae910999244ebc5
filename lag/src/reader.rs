//! Reading a group's offsets from Kafka: committed offsets, log-end offsets
//! and the members that own each partition.
//!
//! Everything comes from Kafka's protocol APIs, never from parsing
//! `__consumer_offsets`:
//! - group state and members (with their assignments): `ListGroups` for
//!   the names, then `DescribeConsumerGroups` (librdkafka's admin call: the
//!   new protocol's `ConsumerGroupDescribe` for KIP-848 groups, classic
//!   `DescribeGroups` for the others; see [`crate::describe`]);
//! - committed offsets: `OffsetFetch` for all the group's partitions at
//!   once, through librdkafka's admin `ListConsumerGroupOffsets` on the same
//!   client (no consumer of the group: it never joins or disturbs the group,
//!   and no second client connects and looks up the coordinator);
//! - log-end offsets: `ListOffsets` for "latest", batched per broker (one
//!   request for a thousand partitions, not a thousand), read uncommitted as
//!   Kafka's own tool does.
//!
//! The calls block; async callers run them on `spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use weir_core::KafkaConfig;

use crate::describe::{describe_groups, list_group_offsets};

/// Why a group could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LagError {
    /// Kafka did not answer or refused.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being read.
        what: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// Kafka knows no such group (no members, no committed offsets).
    #[error("consumer group {0:?} does not exist")]
    GroupNotFound(String),
    /// Describing groups failed (timeout, authorization, …).
    #[error("{0}")]
    Describe(String),
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> LagError {
    let what = what.into();
    move |source| LagError::Kafka { what, source }
}

/// A member of a group, as the coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Member id (client id + a UUID, assigned by the coordinator).
    pub member_id: String,
    /// Client id the member set.
    pub client_id: String,
    /// Host the member connected from, as Kafka prints it (`/127.0.0.1`).
    pub host: String,
    /// Assigned partitions, topic by topic.
    pub assignment: Vec<(String, Vec<i32>)>,
}

/// A group as listed by the coordinator.
#[derive(Debug, Clone, Serialize)]
pub struct GroupInfo {
    /// Group id.
    pub group: String,
    /// Coordinator state: `Stable`, `Empty`, `PreparingRebalance`, …
    pub state: String,
    /// Embedded protocol type (`consumer` for Kafka consumers, empty for
    /// a group that only has offsets committed by tools).
    pub protocol_type: String,
    /// Group protocol: `classic`, or `consumer` for the new protocol of
    /// KIP-848 (Kafka 4.0+); empty when the group does not exist.
    pub group_type: String,
    /// Current members.
    pub members: Vec<Member>,
}

/// Offsets of one partition for one group, at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionOffsets {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset (the next record the group will read); `None` when
    /// the group never committed on this partition.
    pub committed: Option<i64>,
    /// Log-end offset (high watermark).
    pub end: i64,
    /// Index in [`GroupSnapshot::members`] of the member that owns it.
    pub owner: Option<usize>,
}

/// A group's offsets and members, read at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct GroupSnapshot {
    /// Group, state and members.
    #[serde(flatten)]
    pub info: GroupInfo,
    /// Every partition the group committed on or is assigned, sorted.
    pub partitions: Vec<PartitionOffsets>,
    /// When the log-end offsets were read (unix ms).
    pub at_ms: i64,
}

/// Partitions per `ListOffsets` request of [`LagReader`]'s offset reads:
/// small enough that librdkafka's quadratic matching of the answer stays
/// cheap (512² comparisons), large enough that 10 000 partitions take 20
/// requests.
const OFFSETS_CHUNK: usize = 512;

/// Offset requests of one read in flight at once.
const OFFSETS_IN_FLIGHT: usize = 4;

/// Current unix time in ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads groups and offsets with one Kafka client, so that `--watch` and the
/// exporter reuse its connections.
pub struct LagReader {
    timeout: Duration,
    meta: BaseConsumer,
}

impl LagReader {
    /// A reader; `timeout` bounds each request to Kafka.
    pub fn new(kafka: &KafkaConfig, timeout: Duration) -> Result<Self, LagError> {
        let meta = Self::consumer_config(kafka)
            .create()
            .map_err(kafka_err("creating the Kafka client"))?;
        Ok(LagReader { timeout, meta })
    }

    fn consumer_config(kafka: &KafkaConfig) -> rdkafka::ClientConfig {
        let mut c = kafka.client_config("lag");
        // Kafka's tool reads the high watermark, not the last stable offset.
        c.set("isolation.level", "read_uncommitted")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        kafka.apply_overrides(&mut c);
        c
    }

    /// Every group the cluster knows, with its members.
    pub fn list_groups(&self) -> Result<Vec<GroupInfo>, LagError> {
        self.groups(None)
    }

    /// Groups and their members. Names come from `ListGroups` (every group
    /// of every protocol); states, members and assignments from
    /// `DescribeConsumerGroups`, which reads groups of the new `consumer`
    /// protocol (KIP-848) with their own describe API and classic groups
    /// with `DescribeGroups` (see [`crate::describe`]).
    fn groups(&self, group: Option<&str>) -> Result<Vec<GroupInfo>, LagError> {
        let names: Vec<String> = match group {
            Some(g) => vec![g.to_string()],
            None => {
                let list = self
                    .meta
                    .fetch_group_list(None, self.timeout)
                    .map_err(kafka("listing consumer groups"))?;
                let mut names: Vec<String> =
                    list.groups().iter().map(|g| g.name().to_string()).collect();
                names.sort();
                names.dedup();
                names
            }
        };
        let described = describe_groups(self.meta.client(), &names, self.timeout)
            .map_err(|e| LagError::Describe(e.to_string()))?;
        let mut out = Vec::with_capacity(described.len());
        for d in described {
            let not_found = d.error.as_ref().is_some_and(|(code, _)| {
                *code == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND
            });
            if let Some((_, text)) = d.error.as_ref().filter(|_| !not_found) {
                // One group that cannot be read (deleted meanwhile, its
                // coordinator moving) must not hide all the others.
                if group.is_none() {
                    tracing::warn!(group = %d.group, error = %text, "cannot describe a group; left out");
                    continue;
                }
                return Err(LagError::Describe(format!("group {}: {text}", d.group)));
            }
            out.push(GroupInfo {
                state: if not_found { "Dead".into() } else { d.state },
                protocol_type: if d.simple || not_found {
                    String::new()
                } else {
                    "consumer".into()
                },
                group_type: if not_found {
                    String::new()
                } else {
                    d.group_type
                },
                members: d.members,
                group: d.group,
            });
        }
        out.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(out)
    }

    /// Topics and their partition counts (internal topics left out).
    pub fn topics(&self) -> Result<BTreeMap<String, i32>, LagError> {
        let md = self
            .meta
            .fetch_metadata(None, self.timeout)
            .map_err(kafka("reading cluster metadata"))?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.name().starts_with("__"))
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect())
    }

    /// Reads one group: members, committed and log-end offsets.
    pub fn snapshot(&self, group: &str) -> Result<GroupSnapshot, LagError> {
        let t0 = std::time::Instant::now();
        // Three independent reads, sent at the same time instead of one
        // after the other: the group's description, the topics' partition
        // counts, and the committed offsets; then the log-end offsets of the
        // committed partitions of topics that exist. Only partitions a member
        // owns but the group never committed need a second log-end request
        // afterwards.
        let panicked = || LagError::Describe("a Kafka reader thread panicked".into());
        let (described, chain) = std::thread::scope(|scope| {
            let described = scope.spawn(|| {
                let r = self.groups(Some(group));
                (r, t0.elapsed())
            });
            let topics = scope.spawn(|| self.topics());
            let chain = (|| -> Result<_, LagError> {
                let committed = self.committed(group)?;
                let t_committed = t0.elapsed();
                let topics = topics.join().unwrap_or_else(|_| Err(panicked()))?;
                // Offsets of deleted topics are not shown (as before: the
                // topic's metadata is what tells a partition exists).
                let committed: BTreeMap<(String, i32), i64> = committed
                    .into_iter()
                    .filter(|((t, p), _)| topics.get(t).is_some_and(|n| p < n))
                    .collect();
                let ends = self.end_offsets(committed.keys())?;
                Ok((topics, committed, ends, t_committed))
            })();
            let described = described
                .join()
                .unwrap_or_else(|_| (Err(panicked()), t0.elapsed()));
            (described, chain)
        });
        let (groups, t_group) = described;
        let info = groups?
            .into_iter()
            .find(|g| g.group == group)
            .unwrap_or(GroupInfo {
                group: group.to_string(),
                state: "Dead".into(),
                protocol_type: String::new(),
                group_type: String::new(),
                members: Vec::new(),
            });
        let (topics, committed, mut ends, t_committed) = chain?;
        let mut owners: BTreeMap<(String, i32), usize> = BTreeMap::new();
        for (i, m) in info.members.iter().enumerate() {
            for (t, ps) in &m.assignment {
                for p in ps {
                    owners.insert((t.clone(), *p), i);
                }
            }
        }
        let mut keys: BTreeSet<(String, i32)> = committed.keys().cloned().collect();
        keys.extend(
            owners
                .keys()
                .filter(|(t, p)| topics.get(t).is_some_and(|n| p < n))
                .cloned(),
        );
        if keys.is_empty() && info.members.is_empty() && info.state == "Dead" {
            return Err(LagError::GroupNotFound(group.to_string()));
        }
        let missing: Vec<(String, i32)> = keys
            .iter()
            .filter(|k| !committed.contains_key(*k))
            .cloned()
            .collect();
        if !missing.is_empty() {
            ends.extend(self.end_offsets(missing.iter())?);
        }
        let at_ms = now_ms();
        tracing::debug!(
            group,
            partitions = keys.len(),
            group_ms = t_group.as_millis() as u64,
            committed_ms = t_committed.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            uncommitted_end_requests = u8::from(!missing.is_empty()),
            "group read"
        );
        let partitions = keys
            .into_iter()
            .map(|(topic, partition)| {
                let key = (topic, partition);
                PartitionOffsets {
                    committed: committed.get(&key).copied(),
                    end: ends.get(&key).copied().unwrap_or(0),
                    owner: owners.get(&key).copied(),
                    topic: key.0,
                    partition: key.1,
                }
            })
            .collect();
        Ok(GroupSnapshot {
            info,
            partitions,
            at_ms,
        })
    }

    /// Committed offsets of `group` on every partition it committed on
    /// (Kafka answers one `OffsetFetch` for all of them); partitions never
    /// committed are left out.
    fn committed(&self, group: &str) -> Result<BTreeMap<(String, i32), i64>, LagError> {
        let got = list_group_offsets(self.meta.client(), group, self.timeout)
            .map_err(|e| LagError::Describe(e.to_string()))?;
        Ok(got.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
    }

    /// Log-end offsets of `partitions`, in one batched request per broker.
    pub fn end_offsets<'a>(
        &self,
        partitions: impl Iterator<Item = &'a (String, i32)>,
    ) -> Result<HashMap<(String, i32), i64>, LagError> {
        self.offsets_at(partitions, Offset::End)
    }

    /// For each partition, the offset of the first record appended at or
    /// after `at_ms` (the log end at that time); partitions with no such
    /// record are left out.
    pub fn offsets_at_time<'a>(
        &self,
        partitions: impl Iterator<Item = &'a (String, i32)>,
        at_ms: i64,
    ) -> Result<HashMap<(String, i32), i64>, LagError> {
        self.offsets_at(partitions, Offset::Offset(at_ms.max(0)))
    }

    fn offsets_at<'a>(
        &self,
        partitions: impl Iterator<Item = &'a (String, i32)>,
        spec: Offset,
    ) -> Result<HashMap<(String, i32), i64>, LagError> {
        let all: Vec<&(String, i32)> = partitions.collect();
        if all.is_empty() {
            return Ok(HashMap::new());
        }
        // librdkafka matches each answered partition against the request's
        // list with a linear search (`rd_kafka_topic_partition_list_find`,
        // a `strcmp` per entry), so one request of n partitions costs n²
        // string comparisons: at 10 000 partitions that was 89 % of a
        // describe's CPU (1.05 s, perf). Requests of at most
        // OFFSETS_CHUNK partitions, a few in flight at once, keep it
        // linear in n and overlap the broker's answers.
        let chunks: Vec<&[&(String, i32)]> = all.chunks(OFFSETS_CHUNK).collect();
        if chunks.len() == 1 {
            return self.offsets_chunk(chunks[0], spec);
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = chunks.len().min(OFFSETS_IN_FLIGHT);
        let answers: Vec<Result<HashMap<(String, i32), i64>, LagError>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..workers)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut got = HashMap::new();
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(chunk) = chunks.get(i) else {
                                    return Ok(got);
                                };
                                got.extend(self.offsets_chunk(chunk, spec)?);
                            }
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(LagError::Describe("a Kafka reader thread panicked".into()))
                        })
                    })
                    .collect()
            });
        let mut out = HashMap::with_capacity(all.len());
        for a in answers {
            out.extend(a?);
        }
        Ok(out)
    }

    fn offsets_chunk(
        &self,
        partitions: &[&(String, i32)],
        spec: Offset,
    ) -> Result<HashMap<(String, i32), i64>, LagError> {
        let mut tpl = TopicPartitionList::with_capacity(partitions.len());
        for (t, p) in partitions {
            tpl.add_partition_offset(t, *p, spec)
                .map_err(kafka("building the offsets request"))?;
        }
        // A partition whose leader the client does not know yet (a topic
        // created a moment ago, a leader moving) fails the whole request;
        // librdkafka refreshes its metadata, so asking again shortly after
        // succeeds, as Kafka's own tool retries. Other errors fail at once.
        // Retried for up to the request timeout: a broker electing leaders
        // for a thousand new partitions under load took longer than 3 s.
        let deadline = std::time::Instant::now() + self.timeout;
        let mut pause = std::time::Duration::from_millis(50);
        let got = loop {
            match self.meta.offsets_for_times(tpl.clone(), self.timeout) {
                Ok(got) => break got,
                Err(e) if transient(&e) && std::time::Instant::now() + pause < deadline => {
                    tracing::debug!(error = %e, "offsets read: leader not known yet; asking again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
                Err(e) => return Err(kafka("reading log-end offsets")(e)),
            }
        };
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) if e.error().is_ok() => {
                    Some(((e.topic().to_string(), e.partition()), o))
                }
                _ => None,
            })
            .collect())
    }
}

/// Errors of an offsets read that a moment later, with fresh metadata, go
/// away.
fn transient(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::NotLeaderForPartition
                | C::LeaderNotAvailable
                | C::UnknownTopicOrPartition
                | C::NotCoordinator
                | C::FencedLeaderEpoch
                | C::UnknownLeaderEpoch
                | C::OffsetNotAvailable
        )
    )
}

fn kafka_err(what: &'static str) -> impl FnOnce(KafkaError) -> LagError {
    kafka(what)
}
