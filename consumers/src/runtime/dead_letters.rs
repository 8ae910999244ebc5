//! Dead letters: records that can never be applied, produced to the
//! dead-letter topic with headers saying why and where they came from, and
//! durable there before their offsets are stored.

use std::ops::Range;

use chrono::Utc;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use tracing::debug;
use weir_producers::EventProducer;
use weir_schemas::topics::dlq_headers;

use super::batch::{DeadCause, DeadRecord};
use super::{FailureClass, StoreError};

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
        if dead.is_empty() {
            return Ok(());
        }
        let now = Utc::now().to_rfc3339();
        let mut pending = Vec::with_capacity(dead.len());
        for d in dead {
            let mut headers = OwnedHeaders::new();
            for (k, v) in [
                (dlq_headers::REASON, d.cause.reason().to_string()),
                (dlq_headers::DETAIL, truncate(&d.cause.detail(), 1024)),
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
                    key: dlq_headers::ORIGINAL_SIZE,
                    value: Some(d.original_size.to_string().as_bytes()),
                });
            }
            if let DeadCause::Rejected {
                store, sqlstate, ..
            } = &d.cause
            {
                headers = headers.insert(Header {
                    key: dlq_headers::STORE,
                    value: Some(store.as_bytes()),
                });
                if let Some(code) = sqlstate {
                    headers = headers.insert(Header {
                        key: dlq_headers::SQLSTATE,
                        value: Some(code.as_bytes()),
                    });
                }
            }
            if let Some(ts) = d.timestamp {
                headers = headers.insert(Header {
                    key: "weir.dlq.source.timestamp",
                    value: Some(ts.to_string().as_bytes()),
                });
            }
            let fut = self.producer.enqueue_raw(
                &self.topic,
                d.key.as_deref(),
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

/// Finds the records a store refuses for what they are (poison), by
/// splitting: a part of the batch refused as poison is split in halves
/// until each offender stands alone; every other part is applied once, in
/// order. The caller applies each [`Bisect::next_part`] atomically (a
/// savepoint) and reports a failure with [`Bisect::failed`].
#[derive(Debug)]
pub(crate) struct Bisect {
    /// Parts still to try, the next one on top.
    todo: Vec<Range<usize>>,
    poison: Vec<(usize, StoreError)>,
}

impl Bisect {
    /// A search over `len` records.
    pub fn new(len: usize) -> Self {
        Bisect {
            todo: (len > 0).then_some(0..len).into_iter().collect(),
            poison: Vec::new(),
        }
    }

    /// The next part to apply.
    pub fn next_part(&mut self) -> Option<Range<usize>> {
        self.todo.pop()
    }

    /// `part` failed with `e`: poison splits it (or convicts a single
    /// record); an unavailable store ends the search with its error.
    pub fn failed(&mut self, part: Range<usize>, e: StoreError) -> Result<(), StoreError> {
        if e.class() != FailureClass::Poison {
            return Err(e);
        }
        if part.len() == 1 {
            self.poison.push((part.start, e));
        } else {
            let mid = part.start + part.len() / 2;
            self.todo.push(mid..part.end);
            self.todo.push(part.start..mid);
        }
        Ok(())
    }

    /// The offenders' indices, ascending, with the store's error.
    pub fn into_poison(self) -> Vec<(usize, StoreError)> {
        self.poison
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search over `n` records where a part fails as poison when it
    /// holds one of `bad` (all or nothing, like a savepoint); returns the
    /// offenders and the records applied, in the order applied.
    fn search(n: usize, bad: &[usize]) -> (Vec<usize>, Vec<usize>, usize) {
        let mut b = Bisect::new(n);
        let mut applied = Vec::new();
        let mut attempts = 0;
        while let Some(part) = b.next_part() {
            attempts += 1;
            if part.clone().any(|i| bad.contains(&i)) {
                let e = StoreError::other("test", FailureClass::Poison, "refused");
                b.failed(part, e).expect("poison splits");
            } else {
                applied.extend(part);
            }
        }
        let poison = b.into_poison().into_iter().map(|(i, _)| i).collect();
        (poison, applied, attempts)
    }

    #[test]
    fn bisection_convicts_exactly_the_offenders_and_applies_the_rest_once_in_order() {
        let table: [(usize, &[usize]); 7] = [
            (1, &[0]),
            (2, &[1]),
            (5000, &[4321]),
            (5000, &[0, 4999]),
            (10, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            (7, &[]),
            (0, &[]),
        ];
        for (n, bad) in table {
            let (poison, applied, _) = search(n, bad);
            assert_eq!(poison, bad, "n={n}");
            let rest: Vec<usize> = (0..n).filter(|i| !bad.contains(i)).collect();
            assert_eq!(applied, rest, "n={n}: the others, each once, in order");
        }
        // One offender among 5000 costs about 2·log2(5000) attempts, not 5000.
        assert!(search(5000, &[4321]).2 <= 2 * 13 + 1);
    }

    #[test]
    fn an_unavailable_store_ends_the_search_with_its_error() {
        let mut b = Bisect::new(4);
        let part = b.next_part().expect("a part");
        let down = StoreError::other("test", FailureClass::Unavailable, "connection refused");
        assert!(b.failed(part, down).is_err());
    }

    #[test]
    fn sqlstate_classes_decide_poison_or_unavailable() {
        use FailureClass::*;
        let table = [
            ("22021", Poison),      // invalid byte sequence (NUL in text)
            ("22P05", Poison),      // unsupported Unicode escape (\u0000 in jsonb)
            ("22003", Poison),      // numeric value out of range (bigint sum)
            ("23514", Poison),      // check violation
            ("54000", Poison),      // program limit (index row size)
            ("08006", Unavailable), // connection failure
            ("53300", Unavailable), // too many connections
            ("57P01", Unavailable), // admin shutdown
            ("40001", Unavailable), // serialization failure: retry
            ("XX000", Unavailable), // internal error: not the record's fault
            ("", Unavailable),
        ];
        for (code, want) in table {
            assert_eq!(FailureClass::of_sqlstate(code), want, "{code}");
        }
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(FailureClass::of_postgres(&io), Unavailable);
        assert_eq!(
            FailureClass::of_postgres(&sqlx::Error::PoolTimedOut),
            Unavailable
        );
        let reply = redis::RedisError::from((
            redis::ErrorKind::ResponseError,
            "ERR value is not an integer",
        ));
        assert_eq!(FailureClass::of_redis(&reply), Poison);
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(FailureClass::of_redis(&io), Unavailable);
    }
}
