//! Decoding of the consumer protocol's member assignment, so that each
//! partition can be shown with the member that owns it.
//!
//! Kafka stores a consumer group member's assignment as opaque bytes in the
//! "consumer" embedded protocol:
//! `version: i16, [topic: string(i16 len), [partition: i32]], user_data: bytes`
//! (version 1+ may append more fields, which we do not need). The bytes come
//! from the broker, so every read is bounds-checked: a malformed assignment
//! yields an error, never a panic.

/// One member's assigned partitions, topic by topic.
pub type Assignment = Vec<(String, Vec<i32>)>;

/// Why assignment bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed consumer assignment at byte {at}: {what}")]
pub struct AssignmentError {
    /// Byte position where decoding failed.
    pub at: usize,
    /// What was expected there.
    pub what: &'static str,
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], AssignmentError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(AssignmentError { at: self.at, what })?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, AssignmentError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, AssignmentError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn len(&mut self, n: i64, what: &'static str) -> Result<usize, AssignmentError> {
        usize::try_from(n).map_err(|_| AssignmentError { at: self.at, what })
    }
}

/// Decodes a member's assignment. Empty bytes (a member that has joined but
/// not yet been assigned anything) decode to an empty assignment.
pub fn decode_assignment(buf: &[u8]) -> Result<Assignment, AssignmentError> {
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = Cursor { buf, at: 0 };
    let _version = c.i16("version")?;
    let topics = c.i32("topic count")?;
    let topics = c.len(topics.into(), "topic count")?;
    // Each topic needs at least 6 bytes: bound the allocation by the input.
    let mut out = Vec::with_capacity(topics.min(buf.len() / 6));
    for _ in 0..topics {
        let name_len = c.i16("topic name length")?;
        let name_len = c.len(name_len.into(), "topic name length")?;
        let name = c.take(name_len, "topic name")?;
        let name = std::str::from_utf8(name).map_err(|_| AssignmentError {
            at: c.at,
            what: "UTF-8 topic name",
        })?;
        let n = c.i32("partition count")?;
        let n = c.len(n.into(), "partition count")?;
        let mut parts = Vec::with_capacity(n.min(buf.len() / 4));
        for _ in 0..n {
            parts.push(c.i32("partition")?);
        }
        out.push((name.to_string(), parts));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes as the Java client does (version 0/1, user data null).
    fn encode(version: i16, a: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend((a.len() as i32).to_be_bytes());
        for (t, ps) in a {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes());
        b
    }

    #[test]
    fn decodes_topics_and_partitions() {
        let bytes = encode(1, &[("a", &[0, 2]), ("weir.health.v1", &[5])]);
        let a = decode_assignment(&bytes).expect("decodes");
        assert_eq!(
            a,
            vec![
                ("a".to_string(), vec![0, 2]),
                ("weir.health.v1".into(), vec![5])
            ]
        );
        assert_eq!(decode_assignment(&[]).expect("empty"), vec![]);
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        let good = encode(0, &[("topic", &[1, 2, 3])]);
        for cut in 1..good.len() - 4 {
            assert!(decode_assignment(&good[..cut]).is_err(), "cut at {cut}");
        }
        // Absurd counts do not allocate or loop forever.
        let mut huge = 0i16.to_be_bytes().to_vec();
        huge.extend(i32::MAX.to_be_bytes());
        assert!(decode_assignment(&huge).is_err());
        let mut neg = 0i16.to_be_bytes().to_vec();
        neg.extend((-5i32).to_be_bytes());
        assert!(decode_assignment(&neg).is_err());
    }
}
