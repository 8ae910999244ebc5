//! Describing consumer groups of both protocols through librdkafka's
//! `rd_kafka_DescribeConsumerGroups`, which the rdkafka crate does not wrap.
//!
//! Why this module holds `unsafe` code (the workspace denies it elsewhere):
//! the crate's `fetch_group_list` speaks only the classic `DescribeGroups`
//! API, to which a group of the new `consumer` protocol (KIP-848, generally
//! available since Kafka 4.0) answers "not found": such a group, healthy,
//! looked Dead with no members, and its `stopped` status reached the limiter
//! and the dashboard. librdkafka 2.12's admin call asks with the
//! `ConsumerGroupDescribe` API first and falls back to `DescribeGroups` for
//! classic groups and for brokers that do not know the new API (Kafka 3.x),
//! and decodes both kinds of assignment. Speaking the Kafka protocol
//! ourselves would mean a second TLS and SASL stack beside librdkafka's.
//!
//! The unsafe surface is kept to this file and to one pattern: every
//! librdkafka object we create (queue, options, result event) is owned by a
//! guard that destroys it exactly once; every pointer read from a result is
//! checked for null and copied into owned Rust values before the result
//! event is destroyed; strings are read with `CStr` (librdkafka's are
//! NUL-terminated) and converted lossily, so broker-supplied bytes can never
//! make us panic or read out of bounds.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr, CString};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};

use crate::reader::Member;

/// A group as `DescribeConsumerGroups` answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Described {
    /// Group id.
    pub group: String,
    /// State as Kafka names it (`Stable`, `Empty`, `Dead`, …; `Unknown` for
    /// the new protocol's `Assigning`/`Reconciling`, which librdkafka does
    /// not name).
    pub state: String,
    /// `classic` or `consumer` (KIP-848); `unknown` when the broker did not
    /// say.
    pub group_type: String,
    /// A group with no members and an empty protocol type: only offsets
    /// committed by tools.
    pub simple: bool,
    /// Members with their assignments.
    pub members: Vec<Member>,
    /// librdkafka's error for this group (code, text), if any.
    pub error: Option<(rd::rd_kafka_resp_err_t, String)>,
}

/// Why the whole request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("describing consumer groups: {0}")]
pub(crate) struct DescribeError(pub String);

/// Owns a librdkafka object and destroys it once.
struct Guard<T> {
    ptr: *mut T,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from the matching librdkafka constructor,
            // is non-null, and this guard is its only owner.
            unsafe { (self.destroy)(self.ptr) }
        }
    }
}

/// Waits for the answer to the admin request sent on `queue` (which times
/// out on its own after `ms`; we wait a little longer so that its own
/// timeout error, not ours, is what the caller sees), and fails with the
/// event's error if it carries one.
fn admin_answer(
    queue: &Guard<rd::rd_kafka_queue_t>,
    ms: i32,
    timeout: Duration,
) -> Result<Guard<rd::rd_kafka_event_t>, DescribeError> {
    // SAFETY: `queue` is live (its guard is borrowed).
    let event = Guard {
        ptr: unsafe { rd::rd_kafka_queue_poll(queue.ptr, ms.saturating_add(1_000)) },
        destroy: rd::rd_kafka_event_destroy,
    };
    if event.ptr.is_null() {
        return Err(DescribeError(format!("no answer within {timeout:?}")));
    }
    // SAFETY: `event` is a live event returned by the poll above.
    let code = unsafe { rd::rd_kafka_event_error(event.ptr) };
    if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: as above; the string lives as long as the event.
        let msg = unsafe { owned(rd::rd_kafka_event_error_string(event.ptr)) };
        return Err(DescribeError(msg.unwrap_or_else(|| format!("{code:?}"))));
    }
    Ok(event)
}

/// A NUL-terminated string from librdkafka, copied; `None` for null.
///
/// SAFETY (caller): `p` is null or points to a NUL-terminated string that
/// lives at least until this returns.
unsafe fn owned(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    Some(CStr::from_ptr(p).to_string_lossy().into_owned())
}

/// Describes `groups` (each with both protocols, see the module
/// documentation), waiting at most `timeout` for the answer.
pub(crate) fn describe_groups<C: ClientContext>(
    client: &Client<C>,
    groups: &[String],
    timeout: Duration,
) -> Result<Vec<Described>, DescribeError> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<CString> = groups
        .iter()
        .map(|g| CString::new(g.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| DescribeError("a group id contains a NUL byte".into()))?;
    let mut ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    let rk = client.native_ptr();

    // SAFETY: `rk` is the live handle of `client`, borrowed for this call.
    let queue = Guard {
        ptr: unsafe { rd::rd_kafka_queue_new(rk) },
        destroy: rd::rd_kafka_queue_destroy,
    };
    // SAFETY: as above; the op type is a valid enum value.
    let options = Guard {
        ptr: unsafe {
            rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
            )
        },
        destroy: rd::rd_kafka_AdminOptions_destroy,
    };
    if queue.ptr.is_null() || options.ptr.is_null() {
        return Err(DescribeError(
            "librdkafka could not allocate a request".into(),
        ));
    }
    let mut errstr = [0 as c_char; 256];
    // SAFETY: `options` is live; `errstr` is writable for its whole length.
    let err = unsafe {
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.ptr,
            ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: librdkafka wrote a NUL-terminated message into `errstr`.
        let msg = unsafe { owned(errstr.as_ptr()) }.unwrap_or_default();
        return Err(DescribeError(msg));
    }
    // SAFETY: `ptrs` holds `ptrs.len()` pointers to NUL-terminated strings
    // (`names`) that librdkafka copies before returning; `options` and
    // `queue` are live.
    unsafe {
        rd::rd_kafka_DescribeConsumerGroups(
            rk,
            ptrs.as_mut_ptr(),
            ptrs.len(),
            options.ptr,
            queue.ptr,
        )
    };
    let event = admin_answer(&queue, ms, timeout)?;
    // SAFETY: as above; null when the event is of another type.
    let result = unsafe { rd::rd_kafka_event_DescribeConsumerGroups_result(event.ptr) };
    if result.is_null() {
        return Err(DescribeError(
            "librdkafka answered with another event".into(),
        ));
    }
    let mut count = 0usize;
    // SAFETY: `result` is live while `event` is; librdkafka sets `count` to
    // the length of the returned array.
    let descs = unsafe { rd::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut count) };
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: `descs` has `count` elements (librdkafka's contract).
        let d = unsafe { *descs.add(i) };
        if d.is_null() {
            continue;
        }
        // SAFETY: `d` is a live description owned by `event`.
        out.push(unsafe { read_group(d) });
    }
    Ok(out)
}

/// Copies one group description into owned values.
///
/// SAFETY (caller): `d` is a live description (owned by a live result event).
unsafe fn read_group(d: *const rd::rd_kafka_ConsumerGroupDescription_t) -> Described {
    let group = owned(rd::rd_kafka_ConsumerGroupDescription_group_id(d)).unwrap_or_default();
    let err = rd::rd_kafka_ConsumerGroupDescription_error(d);
    let error = (!err.is_null()).then(|| {
        (
            rd::rd_kafka_error_code(err),
            owned(rd::rd_kafka_error_string(err)).unwrap_or_default(),
        )
    });
    let state = owned(rd::rd_kafka_consumer_group_state_name(
        rd::rd_kafka_ConsumerGroupDescription_state(d),
    ))
    .unwrap_or_else(|| "Unknown".into());
    let group_type = owned(rd::rd_kafka_consumer_group_type_name(
        rd::rd_kafka_ConsumerGroupDescription_type(d),
    ))
    .unwrap_or_else(|| "Unknown".into())
    .to_ascii_lowercase();
    let simple = rd::rd_kafka_ConsumerGroupDescription_is_simple_consumer_group(d) != 0;
    let n = rd::rd_kafka_ConsumerGroupDescription_member_count(d);
    let mut members = Vec::with_capacity(n);
    for i in 0..n {
        let m = rd::rd_kafka_ConsumerGroupDescription_member(d, i);
        if m.is_null() {
            continue;
        }
        members.push(Member {
            member_id: owned(rd::rd_kafka_MemberDescription_consumer_id(m)).unwrap_or_default(),
            client_id: owned(rd::rd_kafka_MemberDescription_client_id(m)).unwrap_or_default(),
            host: owned(rd::rd_kafka_MemberDescription_host(m)).unwrap_or_default(),
            assignment: read_assignment(rd::rd_kafka_MemberDescription_assignment(m)),
        });
    }
    Described {
        group,
        state,
        group_type,
        simple,
        members,
        error,
    }
}

/// A member's assignment, topic by topic, partitions in order.
///
/// SAFETY (caller): `a` is null or a live assignment of a live description.
unsafe fn read_assignment(a: *const rd::rd_kafka_MemberAssignment_t) -> Vec<(String, Vec<i32>)> {
    if a.is_null() {
        return Vec::new();
    }
    let list = rd::rd_kafka_MemberAssignment_partitions(a);
    if list.is_null() || (*list).elems.is_null() {
        return Vec::new();
    }
    let cnt = usize::try_from((*list).cnt).unwrap_or(0);
    let elems = std::slice::from_raw_parts((*list).elems, cnt);
    let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for e in elems {
        if let Some(t) = owned(e.topic) {
            by_topic.entry(t).or_default().push(e.partition);
        }
    }
    by_topic
        .into_iter()
        .map(|(t, mut ps)| {
            ps.sort_unstable();
            (t, ps)
        })
        .collect()
}

/// Committed offsets of `group` on every partition it committed on, read
/// with librdkafka's `rd_kafka_ListConsumerGroupOffsets` (one `OffsetFetch`
/// for all topics, as Kafka's own tool sends) through `client`: no consumer
/// of the group, hence no second client with its own connections and
/// coordinator lookup. Partitions without a committed offset, or with a
/// per-partition error, are left out.
pub(crate) fn list_group_offsets<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    timeout: Duration,
) -> Result<Vec<(String, i32, i64)>, DescribeError> {
    let name =
        CString::new(group).map_err(|_| DescribeError("a group id contains a NUL byte".into()))?;
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    let rk = client.native_ptr();
    // SAFETY: `rk` is the live handle of `client`, borrowed for this call.
    let queue = Guard {
        ptr: unsafe { rd::rd_kafka_queue_new(rk) },
        destroy: rd::rd_kafka_queue_destroy,
    };
    // SAFETY: as above; the op type is a valid enum value.
    let options = Guard {
        ptr: unsafe {
            rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS,
            )
        },
        destroy: rd::rd_kafka_AdminOptions_destroy,
    };
    // SAFETY: `name` is NUL-terminated and outlives the call (librdkafka
    // copies it); a null partition list asks for every committed partition.
    let request = Guard {
        ptr: unsafe { rd::rd_kafka_ListConsumerGroupOffsets_new(name.as_ptr(), std::ptr::null()) },
        destroy: rd::rd_kafka_ListConsumerGroupOffsets_destroy,
    };
    if queue.ptr.is_null() || options.ptr.is_null() || request.ptr.is_null() {
        return Err(DescribeError(
            "librdkafka could not allocate a request".into(),
        ));
    }
    let mut errstr = [0 as c_char; 256];
    // SAFETY: `options` is live; `errstr` is writable for its whole length.
    let err = unsafe {
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.ptr,
            ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: librdkafka wrote a NUL-terminated message into `errstr`.
        let msg = unsafe { owned(errstr.as_ptr()) }.unwrap_or_default();
        return Err(DescribeError(msg));
    }
    let mut one = [request.ptr];
    // SAFETY: `one` holds one live request, which librdkafka copies before
    // returning (ours is destroyed by its guard); `options` and `queue` are
    // live.
    unsafe {
        rd::rd_kafka_ListConsumerGroupOffsets(rk, one.as_mut_ptr(), 1, options.ptr, queue.ptr)
    };
    let event = admin_answer(&queue, ms, timeout)?;
    // SAFETY: as above; null when the event is of another type.
    let result = unsafe { rd::rd_kafka_event_ListConsumerGroupOffsets_result(event.ptr) };
    if result.is_null() {
        return Err(DescribeError(
            "librdkafka answered with another event".into(),
        ));
    }
    let mut count = 0usize;
    // SAFETY: `result` is live while `event` is; librdkafka sets `count` to
    // the length of the returned array.
    let groups = unsafe { rd::rd_kafka_ListConsumerGroupOffsets_result_groups(result, &mut count) };
    let mut out = Vec::new();
    for i in 0..count {
        // SAFETY: `groups` has `count` elements (librdkafka's contract).
        let g = unsafe { *groups.add(i) };
        if g.is_null() {
            continue;
        }
        // SAFETY: `g` is a live group result owned by `event`.
        let gerr = unsafe { rd::rd_kafka_group_result_error(g) };
        if !gerr.is_null() {
            // SAFETY: `gerr` is live while `event` is.
            let msg = unsafe { owned(rd::rd_kafka_error_string(gerr)) }.unwrap_or_default();
            return Err(DescribeError(format!(
                "committed offsets of {group}: {msg}"
            )));
        }
        // SAFETY: as above; null or a list owned by `event`.
        let list = unsafe { rd::rd_kafka_group_result_partitions(g) };
        // SAFETY: `list` is checked for null; `elems` has `cnt` elements.
        unsafe {
            if list.is_null() || (*list).elems.is_null() {
                continue;
            }
            let cnt = usize::try_from((*list).cnt).unwrap_or(0);
            for e in std::slice::from_raw_parts((*list).elems, cnt) {
                if e.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || e.offset < 0 {
                    continue;
                }
                if let Some(t) = owned(e.topic) {
                    out.push((t, e.partition, e.offset));
                }
            }
        }
    }
    Ok(out)
}
