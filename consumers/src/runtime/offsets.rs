//! The stored offsets (`consumer_offsets`) are the truth of where a group
//! is: this module reads them, moves them with a fence, and decides where a
//! received record falls against them.
//!
//! The fence: a batch's offset update only succeeds if the stored offset is
//! still the one this member read before the batch, so a member that lost
//! its partition without knowing it cannot apply a batch twice.

use sqlx::{PgConnection, PgPool};

/// What the member knows of one partition it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    /// Next offset stored in PostgreSQL (`None`: never stored).
    pub stored: Option<i64>,
    /// Next offset expected from Kafka (after the records already batched).
    pub next: i64,
    /// A seek to `next` succeeded; if Kafka still delivers past it, the
    /// records in between are gone (retention) and the gap is accepted.
    pub seeked: bool,
}

impl PartitionState {
    /// The state of a partition seen for the first time, at `first_offset`,
    /// with `stored` read from PostgreSQL.
    pub fn new(stored: Option<i64>, first_offset: i64) -> Self {
        PartitionState {
            stored,
            next: stored.unwrap_or(first_offset),
            seeked: false,
        }
    }

    /// Records the outcome of a seek to `next`. A failed seek is not a done
    /// one: the next record past `next` must seek again, not be taken as a
    /// retention gap (which would skip the records in between).
    pub fn after_seek(&mut self, succeeded: bool) {
        self.seeked = succeeded;
    }
}

/// Where a received record falls against what is stored and batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Already applied (or already batched): drop it.
    Skip,
    /// Kafka delivered from the wrong place (its committed offset lags the
    /// stored one, or it is ahead of it): drop the record and seek to `to`.
    Seek {
        /// The offset to read next.
        to: i64,
    },
    /// The next expected record: batch it.
    Take,
    /// Past the next expected record even after seeking: the records in
    /// between are gone (retention). Batch it; `missing` records are lost.
    Gap {
        /// How many offsets were skipped over.
        missing: u64,
    },
}

/// Decides what to do with the record at `offset` of a partition in `state`.
pub fn place(state: &PartitionState, offset: i64) -> Placement {
    if offset < state.next {
        let behind_stored = state.stored.is_some_and(|s| offset < s);
        if behind_stored && !state.seeked {
            Placement::Seek { to: state.next }
        } else {
            Placement::Skip
        }
    } else if offset > state.next {
        if state.seeked {
            Placement::Gap {
                missing: (offset - state.next) as u64,
            }
        } else {
            Placement::Seek { to: state.next }
        }
    } else {
        Placement::Take
    }
}

/// A group's rows in `consumer_offsets` for one topic.
#[derive(Debug, Clone)]
pub(crate) struct OffsetStore {
    pub group: String,
    pub topic: String,
}

impl OffsetStore {
    /// The next offset stored for partition `p`, if any.
    pub async fn load(&self, pool: &PgPool, p: i32) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar::<_, i64>(
            "SELECT next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2 AND partition = $3",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(p)
        .fetch_optional(pool)
        .await
    }

    /// Moves partition `p` from `prev` (what this member read) to `next`
    /// inside the batch's transaction. `false`: the fence failed, another
    /// member moved it first; the transaction must be rolled back.
    pub async fn advance(
        &self,
        tx: &mut PgConnection,
        p: i32,
        prev: Option<i64>,
        next: i64,
    ) -> Result<bool, sqlx::Error> {
        let rows = match prev {
            Some(prev) => sqlx::query(
                "UPDATE consumer_offsets SET next_offset = $4, updated_at = now() \
                 WHERE group_id = $1 AND topic = $2 AND partition = $3 AND next_offset = $5",
            )
            .bind(&self.group)
            .bind(&self.topic)
            .bind(p)
            .bind(next)
            .bind(prev)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            None => sqlx::query(
                "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&self.group)
            .bind(&self.topic)
            .bind(p)
            .bind(next)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        Ok(rows == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(stored: Option<i64>, next: i64, seeked: bool) -> PartitionState {
        PartitionState {
            stored,
            next,
            seeked,
        }
    }

    #[test]
    fn where_a_record_falls_against_the_stored_offset() {
        use Placement::*;
        // (state, offset received, expected placement, why)
        let table: [(PartitionState, i64, Placement, &str); 10] = [
            (
                st(Some(10), 10, false),
                10,
                Take,
                "the stored offset itself",
            ),
            (
                st(None, 0, false),
                0,
                Take,
                "never stored: the first record",
            ),
            (
                st(Some(10), 12, false),
                12,
                Take,
                "the next after batched ones",
            ),
            (
                st(Some(10), 12, false),
                11,
                Skip,
                "already batched, not behind stored",
            ),
            (
                st(Some(10), 10, false),
                3,
                Seek { to: 10 },
                "Kafka's committed offset lags the stored one",
            ),
            (
                st(Some(10), 10, true),
                3,
                Skip,
                "behind stored after a seek: stale fetch, drop",
            ),
            (
                st(Some(10), 10, false),
                15,
                Seek { to: 10 },
                "Kafka delivered past the stored offset",
            ),
            (
                st(Some(10), 10, true),
                15,
                Gap { missing: 5 },
                "past it again after seeking: retention gap",
            ),
            (
                st(None, 4, false),
                7,
                Seek { to: 4 },
                "never stored, ahead of the first seen",
            ),
            (
                st(None, 4, true),
                7,
                Gap { missing: 3 },
                "never stored, still ahead after seeking",
            ),
        ];
        for (state, offset, want, why) in table {
            assert_eq!(place(&state, offset), want, "{why}: {state:?} at {offset}");
        }
    }

    #[test]
    fn a_failed_seek_is_not_taken_for_done() {
        let mut s = PartitionState::new(Some(10), 15);
        assert_eq!(place(&s, 15), Placement::Seek { to: 10 });
        s.after_seek(false);
        assert_eq!(
            place(&s, 16),
            Placement::Seek { to: 10 },
            "seek again: records 10..16 are not gone"
        );
        s.after_seek(true);
        assert_eq!(place(&s, 16), Placement::Gap { missing: 6 });
    }

    #[test]
    fn a_new_partition_starts_at_the_stored_offset_or_the_first_record() {
        assert_eq!(PartitionState::new(Some(42), 7).next, 42);
        assert_eq!(PartitionState::new(None, 7).next, 7);
        assert!(!PartitionState::new(Some(42), 7).seeked);
    }
}
