//! What was sent and what was seen, and the check that every acknowledged message reached every
//! recipient.
//!
//! # Definitions
//!
//! - A message is identified by its logical thread (`thread`, an index chosen by the parent's
//!   plan), its sender (a user index) and the sender's sequence number in that thread (`seq`,
//!   1, 2, 3, …). These travel in the message body ([`BodyHeader`]), so a receiver needs no
//!   coordination to attribute a message. The `client_msg_id` is [`client_msg_id`]: unique per
//!   run, so a second run against the same users never repeats a first run's ids.
//! - **acked**: the sender read `SENT` for it, naming a message of this run.
//! - **stale ack**: a `SENT` naming a message from before the run: the server took the SEND
//!   for a retry of an earlier one with the same client id, stored nothing and pushed nothing.
//!   Never expected (client ids carry the run id); reported on its own, and it fails the run.
//! - **delivered**: a recipient device (every member but the sender; the loadgen runs one device
//!   per user) saw it, by `MESSAGE_PUSH` or in a `SYNC_BATCH`. Counted once per device.
//! - **lost**: acked but not seen by some recipient at the end of the run, after a final `SYNC`
//!   of that recipient. Counted once per (message, recipient).
//! - **duplicate**: the server pushed the same (thread, message id) twice to the same device
//!   within one connection lifetime. A message that arrives once by push and again by sync is
//!   expected (the protocol says to dedupe) and is not a duplicate; neither is a push repeated
//!   on a later connection.
//! - **out of order**: within one connection lifetime, a push whose message id is lower than an
//!   earlier push on the same thread, and which is not a duplicate.

use std::collections::{BTreeSet, HashMap};

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

/// Bytes at the front of every loadgen message body. The send time comes first, so any tool can
/// read the latency of a loadgen message.
///
/// ```text
///  0           8        12            16       20            28
/// +-----------+--------+-------------+--------+-------------+-----------+
/// | sent_ns   | run_id | thread key  | sender | seq         | padding…  |
/// | u64 BE    | u32 BE | u32 BE      | u32 BE | u64 BE      |           |
/// +-----------+--------+-------------+--------+-------------+-----------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyHeader {
    /// CLOCK_MONOTONIC of the sending process when the SEND was written.
    pub sent_ns: u64,
    /// Random per run: bodies of other runs (old history) are ignored.
    pub run_id: u32,
    pub thread: u32,
    pub sender: u32,
    pub seq: u64,
}

/// The `client_msg_id` of a sender's `seq`-th message of a run: the random run id above the
/// sequence number. With ids restarting at 1 in every run, a second run against the same
/// users and threads had every SEND taken for a retry of the first run's (answered with the
/// old message, nothing stored or pushed). A run would need 2^32 messages from one sender in
/// one thread before its ids repeated.
pub fn client_msg_id(run_id: u32, seq: u64) -> u64 {
    (u64::from(run_id) << 32) | (seq & 0xFFFF_FFFF)
}

impl BodyHeader {
    pub const LEN: usize = 28;

    /// Writes the header and pads the body to `body_len` bytes (at least the header).
    pub fn write(&self, body_len: usize, buf: &mut BytesMut) {
        buf.reserve(body_len.max(Self::LEN));
        buf.put_u64(self.sent_ns);
        buf.put_u32(self.run_id);
        buf.put_u32(self.thread);
        buf.put_u32(self.sender);
        buf.put_u64(self.seq);
        buf.put_bytes(b'.', body_len.saturating_sub(Self::LEN));
    }

    pub fn parse(body: &[u8]) -> Option<Self> {
        let b = body.get(..Self::LEN)?;
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Some(Self {
            sent_ns: u64_at(0),
            run_id: u32_at(8),
            thread: u32_at(12),
            sender: u32_at(16),
            seq: u64_at(20),
        })
    }
}

/// A set of u64 as sorted, disjoint, non-adjacent inclusive ranges. Sequence numbers arrive
/// nearly in order, so a set is almost always a single range: a few bytes per (thread, sender).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `v`; returns false if it was already there.
    pub fn insert(&mut self, v: u64) -> bool {
        let r = &mut self.0;
        // Fast path: appending at or just after the end.
        if let Some(last) = r.last_mut() {
            if v == last.1 + 1 {
                last.1 = v;
                return true;
            }
            if v > last.1 + 1 {
                r.push((v, v));
                return true;
            }
        } else {
            r.push((v, v));
            return true;
        }
        // The first range whose end is >= v - 1.
        let i = r.partition_point(|&(_, hi)| hi.saturating_add(1) < v);
        if r[i].0 <= v && v <= r[i].1 {
            return false;
        }
        if r[i].1 + 1 == v {
            r[i].1 = v;
            if i + 1 < r.len() && r[i + 1].0 == v + 1 {
                r[i].1 = r[i + 1].1;
                r.remove(i + 1);
            }
        } else if v + 1 == r[i].0 {
            r[i].0 = v;
        } else {
            r.insert(i, (v, v));
        }
        true
    }

    pub fn contains(&self, v: u64) -> bool {
        let i = self.0.partition_point(|&(_, hi)| hi < v);
        i < self.0.len() && self.0[i].0 <= v
    }

    pub fn len(&self) -> u64 {
        self.0.iter().map(|&(lo, hi)| hi - lo + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many members of `self` are also in `other`.
    pub fn intersection_len(&self, other: &RangeSet) -> u64 {
        let (a, b) = (&self.0, &other.0);
        let (mut i, mut j, mut n) = (0, 0, 0);
        while i < a.len() && j < b.len() {
            let lo = a[i].0.max(b[j].0);
            let hi = a[i].1.min(b[j].1);
            if lo <= hi {
                n += hi - lo + 1;
            }
            if a[i].1 < b[j].1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        n
    }

    /// The first few members of `self` missing from `other`, for error messages.
    pub fn first_missing(&self, other: &RangeSet, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for &(lo, hi) in &self.0 {
            let mut v = lo;
            while v <= hi && out.len() < max {
                if !other.contains(v) {
                    out.push(v);
                }
                v += 1;
            }
        }
        out
    }
}

/// The messages one sender had acknowledged in one thread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentLedger {
    pub thread: u32,
    pub sender: u32,
    pub acked: RangeSet,
}

/// The messages of one sender in one thread that one user's device saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenLedger {
    pub user: u32,
    pub thread: u32,
    pub sender: u32,
    pub seen: RangeSet,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub acked: u64,
    /// (message, recipient) pairs where the message was acked and seen.
    pub delivered_acked: u64,
    /// (message, recipient) pairs where the message was acked and not seen.
    pub lost: u64,
    /// Recipients with at least one lost message: those get a final SYNC.
    pub users_with_gaps: BTreeSet<u32>,
    /// A few lost messages as `thread/sender/seq→user`, for the log.
    pub examples: Vec<String>,
}

/// Checks every acked message against every recipient. `members(thread)` lists the thread's
/// members (user indices), as planned.
pub fn verify<'a>(
    members: impl Fn(u32) -> &'a [u32],
    sent: &[SentLedger],
    seen: &[SeenLedger],
) -> Verdict {
    let empty = RangeSet::new();
    let index: HashMap<(u32, u32, u32), &RangeSet> = seen
        .iter()
        .map(|s| ((s.user, s.thread, s.sender), &s.seen))
        .collect();
    let mut v = Verdict::default();
    for s in sent {
        v.acked += s.acked.len();
        for &user in members(s.thread) {
            if user == s.sender {
                continue;
            }
            let got = index
                .get(&(user, s.thread, s.sender))
                .copied()
                .unwrap_or(&empty);
            let ok = s.acked.intersection_len(got);
            v.delivered_acked += ok;
            let lost = s.acked.len() - ok;
            if lost > 0 {
                v.lost += lost;
                v.users_with_gaps.insert(user);
                for seq in s.acked.first_missing(got, 3) {
                    if v.examples.len() < 10 {
                        v.examples.push(format!(
                            "thread {}/sender {}/seq {} → user {user}",
                            s.thread, s.sender, seq
                        ));
                    }
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;

    #[test]
    fn range_set_matches_a_btreeset_under_random_inserts() {
        let mut rng = rand::rng();
        for _ in 0..50 {
            let mut values: Vec<u64> = (0..300)
                .map(|_| rand::Rng::random_range(&mut rng, 1..200))
                .collect();
            values.shuffle(&mut rng);
            let (mut set, mut model) = (RangeSet::new(), BTreeSet::new());
            for v in values {
                assert_eq!(set.insert(v), model.insert(v), "insert {v}");
            }
            assert_eq!(set.len(), model.len() as u64);
            for v in 0..210 {
                assert_eq!(set.contains(v), model.contains(&v));
            }
            for w in set.0.windows(2) {
                assert!(
                    w[0].1 + 1 < w[1].0,
                    "ranges must be disjoint and non-adjacent: {:?}",
                    set.0
                );
            }
        }
    }

    #[test]
    fn in_order_inserts_stay_one_range() {
        let mut s = RangeSet::new();
        for v in 1..=10_000 {
            s.insert(v);
        }
        assert_eq!(s.0, vec![(1, 10_000)]);
        assert!(!s.insert(5));
    }

    #[test]
    fn intersection_and_missing() {
        let mut a = RangeSet::new();
        let mut b = RangeSet::new();
        for v in 1..=10 {
            a.insert(v);
        }
        for v in [2, 3, 4, 8, 11] {
            b.insert(v);
        }
        assert_eq!(a.intersection_len(&b), 4);
        assert_eq!(a.first_missing(&b, 3), vec![1, 5, 6]);
    }

    #[test]
    fn body_header_round_trips_and_pads() {
        let h = BodyHeader {
            sent_ns: 123_456_789,
            run_id: 7,
            thread: 3,
            sender: 9,
            seq: 42,
        };
        let mut buf = BytesMut::new();
        h.write(64, &mut buf);
        assert_eq!(buf.len(), 64);
        assert_eq!(&buf[..8], &123_456_789u64.to_be_bytes());
        assert_eq!(BodyHeader::parse(&buf), Some(h));
        assert_eq!(BodyHeader::parse(&buf[..27]), None);
        let mut small = BytesMut::new();
        h.write(0, &mut small);
        assert_eq!(small.len(), BodyHeader::LEN);
    }

    #[test]
    fn verify_counts_lost_per_recipient_and_ignores_the_sender() {
        let members = [vec![0u32, 1, 2]];
        let mut acked = RangeSet::new();
        for v in 1..=5 {
            acked.insert(v);
        }
        let sent = vec![SentLedger {
            thread: 0,
            sender: 0,
            acked,
        }];
        let mut full = RangeSet::new();
        let mut partial = RangeSet::new();
        for v in 1..=6 {
            full.insert(v); // 6 was delivered but never acked: fine.
        }
        for v in [1, 2, 4] {
            partial.insert(v);
        }
        let seen = vec![
            SeenLedger {
                user: 1,
                thread: 0,
                sender: 0,
                seen: full,
            },
            SeenLedger {
                user: 2,
                thread: 0,
                sender: 0,
                seen: partial,
            },
        ];
        let v = verify(|t| &members[t as usize], &sent, &seen);
        assert_eq!((v.acked, v.delivered_acked, v.lost), (5, 8, 2));
        assert_eq!(v.users_with_gaps.into_iter().collect::<Vec<_>>(), vec![2]);
        assert_eq!(v.examples.len(), 2);
    }
}
