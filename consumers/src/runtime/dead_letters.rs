//! Dead letters: records that can never be applied, produced to the
//! dead-letter topic with headers saying why and where they came from, and
//! durable there before their offsets are stored.

use chrono::Utc;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use tracing::debug;
use weir_producers::EventProducer;
use weir_schemas::topics::dlq_headers;

use super::batch::DeadRecord;
use super::StoreError;

/// Where dead letters go and whose they are.
pub(crate) struct DeadLetters {
    pub producer: EventProducer,
    pub topic: String,
    pub source_topic: String,
    pub group: String,
}

impl DeadLetters {
    /// Produces the dead letters and waits until Kafka has them. Failing to
    /// do so is a transient failure like a store being down.
    pub async fn send(&self, dead: &[DeadRecord]) -> Result<(), StoreError> {
        let now = Utc::now().to_rfc3339();
        let mut pending = Vec::with_capacity(dead.len());
        for d in dead {
            let mut headers = OwnedHeaders::new();
            for (k, v) in [
                (dlq_headers::REASON, d.error.reason().to_string()),
                (dlq_headers::DETAIL, truncate(&d.error.to_string(), 1024)),
                (dlq_headers::SOURCE_TOPIC, self.source_topic.clone()),
                (dlq_headers::SOURCE_PARTITION, d.partition.to_string()),
                (dlq_headers::SOURCE_OFFSET, d.offset.to_string()),
                (dlq_headers::GROUP, self.group.clone()),
                (dlq_headers::TIME, now.clone()),
            ] {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            if d.original_size > d.payload.len() {
                headers = headers.insert(Header {
                    key: "weir.dlq.payload.original_size",
                    value: Some(d.original_size.to_string().as_bytes()),
                });
            }
            if let Some(ts) = d.timestamp {
                headers = headers.insert(Header {
                    key: "weir.dlq.source.timestamp",
                    value: Some(ts.to_string().as_bytes()),
                });
            }
            let key = d.key.as_deref().map(String::from_utf8_lossy);
            let fut = self.producer.enqueue_raw(
                &self.topic,
                key.as_deref(),
                &d.payload,
                Some(headers),
                "dead_letter",
            )?;
            pending.push(fut);
        }
        for fut in pending {
            fut.await?;
        }
        debug!(count = dead.len(), "dead letters durable");
        Ok(())
    }
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Reads a header's value as text (for `weir dlq` and tests).
pub fn header_text<M: Message>(msg: &M, name: &str) -> Option<String> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
