//! What a batch holds while it is collected, decoded and applied, and when
//! it is full.

use std::collections::BTreeMap;

use weir_schemas::{decode, DecodeError, Event, MAX_EVENT_BYTES};

use super::{Record, StoreError};

/// Below this many records a batch is decoded on the loop's own thread; above
/// it, half of it is decoded on a blocking thread at the same time (decoding
/// JSON is the largest CPU cost of a member).
pub(crate) const PARALLEL_DECODE_MIN: usize = 1024;

/// A record as received, decoded later in parallel with the rest of the batch.
pub(crate) struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The payload's size as received (`payload` may hold less, see
    /// [`RawRecord::received`]).
    pub size: usize,
    pub timestamp: Option<i64>,
}

impl RawRecord {
    /// Copies a received record out of librdkafka's buffer. A payload larger
    /// than any event ([`MAX_EVENT_BYTES`]) will be dead-lettered without
    /// being parsed: only the part the dead letter keeps
    /// (`dlq_max_payload`) is copied.
    pub fn received(
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        timestamp: Option<i64>,
        dlq_max_payload: usize,
    ) -> Self {
        let size = payload.map_or(0, <[u8]>::len);
        let keep = if size > MAX_EVENT_BYTES {
            dlq_max_payload
        } else {
            size
        };
        RawRecord {
            partition,
            offset,
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(|p| p[..keep.min(p.len())].to_vec()),
            size,
            timestamp,
        }
    }

    /// Bytes this record holds in memory.
    pub fn held_bytes(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len) + self.key.as_ref().map_or(0, Vec::len)
    }
}

/// Why a record is dead-lettered.
#[derive(Debug)]
pub(crate) enum DeadCause {
    /// It is not an event (see [`DecodeError::reason`]).
    Decode(DecodeError),
    /// A store refused it for what it is (a poison record).
    Rejected {
        /// `postgres`, `redis`, or an aggregator's own store.
        store: &'static str,
        /// PostgreSQL's SQLSTATE, when it gave one.
        sqlstate: Option<String>,
        /// The store's message.
        message: String,
    },
}

impl DeadCause {
    /// The reason header (`not_json`, …, `store_rejected`).
    pub fn reason(&self) -> &'static str {
        match self {
            DeadCause::Decode(e) => e.reason(),
            DeadCause::Rejected { .. } => "store_rejected",
        }
    }

    /// The detail header.
    pub fn detail(&self) -> String {
        match self {
            DeadCause::Decode(e) => e.to_string(),
            DeadCause::Rejected { message, .. } => message.clone(),
        }
    }
}

/// A record that will be dead-lettered, kept until it is durable in the DLQ.
/// Its payload holds at most `consumer.dlq_max_payload` bytes.
pub(crate) struct DeadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub original_size: usize,
    pub cause: DeadCause,
    pub timestamp: Option<i64>,
}

impl DeadRecord {
    /// A decoded record that a store refused: its event is encoded again
    /// (the received bytes were dropped after decoding; unknown fields of
    /// a newer producer are lost) and its key is the event's key.
    pub fn rejected<E: Event>(r: &Record<E>, e: &StoreError, dlq_max_payload: usize) -> Self {
        let mut payload = serde_json::to_vec(&r.event).unwrap_or_default();
        let original_size = payload.len();
        payload.truncate(dlq_max_payload);
        DeadRecord {
            partition: r.partition,
            offset: r.offset,
            key: r.event.key().map(|k| k.as_bytes().to_vec()),
            payload,
            original_size,
            cause: DeadCause::Rejected {
                store: e.store(),
                sqlstate: e.sqlstate(),
                message: e.to_string(),
            },
            timestamp: None,
        }
    }
}

/// Decodes raw records in order; failures become dead letters.
pub(crate) fn decode_all<E: Event>(
    raw: Vec<RawRecord>,
    dlq_max_payload: usize,
) -> (Vec<Record<E>>, Vec<DeadRecord>) {
    let mut records = Vec::with_capacity(raw.len());
    let mut dead = Vec::new();
    for r in raw {
        let decoded = if r.size > MAX_EVENT_BYTES {
            Err(DecodeError::TooLarge {
                size: r.size,
                limit: MAX_EVENT_BYTES,
            })
        } else {
            decode::<E>(r.payload.as_deref())
        };
        match decoded {
            Ok(event) => records.push(Record {
                partition: r.partition,
                offset: r.offset,
                event,
            }),
            Err(error) => {
                let mut payload = r.payload.unwrap_or_default();
                let original_size = r.size;
                payload.truncate(dlq_max_payload);
                dead.push(DeadRecord {
                    partition: r.partition,
                    offset: r.offset,
                    key: r.key,
                    payload,
                    original_size,
                    cause: DeadCause::Decode(error),
                    timestamp: r.timestamp,
                });
            }
        }
    }
    (records, dead)
}

/// Decodes raw records, splitting a large batch across two threads.
pub(crate) async fn decode_parallel<E: Event>(
    mut raw: Vec<RawRecord>,
    dlq_max_payload: usize,
) -> (Vec<Record<E>>, Vec<DeadRecord>) {
    if raw.len() < PARALLEL_DECODE_MIN {
        return decode_all::<E>(raw, dlq_max_payload);
    }
    let second = raw.split_off(raw.len() / 2);
    let other = tokio::task::spawn_blocking(move || decode_all::<E>(second, dlq_max_payload));
    let (mut records, mut dead) = decode_all::<E>(raw, dlq_max_payload);
    match other.await {
        Ok((r, d)) => {
            records.extend(r);
            dead.extend(d);
        }
        // Only a panic in the decoder gets here: crash like the inline half
        // would, before any offset of the batch is stored.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
    (records, dead)
}

/// One batch: raw records while it is collected, decoded records and dead
/// letters once it is decoded, and the offset range it moves per partition.
pub(crate) struct Batch<E> {
    pub raw: Vec<RawRecord>,
    pub records: Vec<Record<E>>,
    pub dead: Vec<DeadRecord>,
    pub dead_sent: bool,
    /// Poison records a store refused, isolated from the batch.
    pub rejected: Vec<DeadRecord>,
    pub rejected_sent: bool,
    /// Per partition: (offset stored before the batch, next offset after it).
    pub ranges: BTreeMap<i32, (Option<i64>, i64)>,
    /// Bytes of keys and payloads received into the batch.
    pub bytes: usize,
}

impl<E> Batch<E> {
    pub fn new() -> Self {
        Batch {
            raw: Vec::new(),
            records: Vec::new(),
            dead: Vec::new(),
            dead_sent: false,
            rejected: Vec::new(),
            rejected_sent: false,
            ranges: BTreeMap::new(),
            bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.raw.len() + self.records.len() + self.dead.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Moves the records at `poison` (indices into `records`, ascending)
    /// out of the batch into its rejected dead letters.
    pub fn reject(&mut self, poison: Vec<(usize, StoreError)>, dlq_max_payload: usize)
    where
        E: Event,
    {
        let mut at = poison.into_iter().peekable();
        let mut kept = Vec::with_capacity(self.records.len());
        for (i, r) in std::mem::take(&mut self.records).into_iter().enumerate() {
            match at.next_if(|(j, _)| *j == i) {
                Some((_, e)) => self
                    .rejected
                    .push(DeadRecord::rejected(&r, &e, dlq_max_payload)),
                None => kept.push(r),
            }
        }
        self.records = kept;
        self.rejected_sent = false;
    }

    /// Every dead letter of the batch: undecodable, then rejected.
    pub fn dead_letters(&self) -> impl Iterator<Item = &DeadRecord> {
        self.dead.iter().chain(&self.rejected)
    }

    /// Whether the batch reached one of its bounds (records, bytes
    /// received) and must be applied now. A single record larger than the
    /// byte bound still makes a batch of its own.
    pub fn is_full(&self, max_records: usize, max_bytes: usize) -> bool {
        self.len() >= max_records || self.bytes >= max_bytes
    }

    /// Adds a received record and extends its partition's range.
    pub fn push(&mut self, stored: Option<i64>, raw: RawRecord) {
        let entry = self
            .ranges
            .entry(raw.partition)
            .or_insert((stored, raw.offset));
        entry.1 = raw.offset + 1;
        self.bytes += raw.held_bytes();
        self.raw.push(raw);
    }

    /// The batch's partitions and offset ranges, for its tracing span
    /// (`0:[10..20) 3:[7..9)`; `-` where no offset was stored yet).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (p, (stored, next)) in &self.ranges {
            if !out.is_empty() {
                out.push(' ');
            }
            match stored {
                Some(s) => out.push_str(&format!("{p}:[{s}..{next})")),
                None => out.push_str(&format!("{p}:[-..{next})")),
            }
        }
        out
    }

    pub fn drop_partition(&mut self, p: i32) {
        self.raw.retain(|r| r.partition != p);
        self.records.retain(|r| r.partition != p);
        self.dead.retain(|r| r.partition != p);
        self.rejected.retain(|r| r.partition != p);
        self.ranges.remove(&p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use weir_schemas::AccessEvent;

    fn raw(partition: i32, offset: i64, payload: &[u8]) -> RawRecord {
        RawRecord::received(partition, offset, None, Some(payload), None, 10)
    }

    #[test]
    fn ranges_run_from_the_stored_offset_to_the_last_record_plus_one() {
        let mut b: Batch<AccessEvent> = Batch::new();
        assert!(b.is_empty());
        b.push(Some(10), raw(0, 10, b"x"));
        b.push(Some(10), raw(0, 11, b"x"));
        b.push(None, raw(1, 5, b"x"));
        assert_eq!(b.ranges[&0], (Some(10), 12));
        assert_eq!(b.ranges[&1], (None, 6));
        assert_eq!(b.len(), 3);
        b.drop_partition(0);
        assert_eq!((b.len(), b.ranges.len()), (1, 1));
    }

    #[test]
    fn a_batch_is_full_at_its_record_bound() {
        let mut b: Batch<AccessEvent> = Batch::new();
        for o in 0..3 {
            assert!(!b.is_full(3, usize::MAX));
            b.push(None, raw(0, o, b"x"));
        }
        assert!(b.is_full(3, usize::MAX));
    }

    #[test]
    fn a_batch_is_full_at_its_byte_bound() {
        let mut b: Batch<AccessEvent> = Batch::new();
        let kib = vec![b'x'; 1024];
        for o in 0..4 {
            assert!(!b.is_full(5000, 4096), "{} bytes", b.bytes);
            b.push(None, raw(0, o, &kib));
        }
        assert!(b.is_full(5000, 4096));
        // One record above the bound is a batch of its own.
        let mut one: Batch<AccessEvent> = Batch::new();
        one.push(None, raw(0, 0, &vec![b'x'; 100_000]));
        assert!(one.is_full(5000, 4096));
    }

    #[test]
    fn a_record_too_large_to_be_an_event_is_copied_only_up_to_the_dead_letter_cap() {
        let huge = vec![b'{'; MAX_EVENT_BYTES + 1];
        let r = RawRecord::received(0, 7, Some(b"k"), Some(&huge), None, 1000);
        assert_eq!((r.size, r.held_bytes()), (MAX_EVENT_BYTES + 1, 1001));
        let (records, dead) = decode_all::<AccessEvent>(vec![r], 1000);
        assert!(records.is_empty());
        assert_eq!(dead[0].cause.reason(), "too_large");
        assert_eq!(
            (dead[0].payload.len(), dead[0].original_size),
            (1000, MAX_EVENT_BYTES + 1)
        );
    }

    #[test]
    fn undecodable_records_become_truncated_dead_letters_in_order() {
        let good =
            weir_schemas::encode(&AccessEvent::example("n1", 1, Utc::now())).expect("encodes");
        let junk = vec![b'{'; 100];
        let (records, dead) = decode_all::<AccessEvent>(
            vec![raw(0, 0, &good), raw(0, 1, &junk), raw(0, 2, &good)],
            10,
        );
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].offset, dead[0].payload.len(), dead[0].original_size),
            (1, 10, 100)
        );
        assert_eq!(dead[0].cause.reason(), "not_json");
    }
}
