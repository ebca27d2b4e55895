//! Partitions and the id layout: which logical partition a user, a handle or a thread is in.
//!
//! A cluster has [`PARTITIONS`] logical partitions, **fixed for the life of the cluster** (the
//! partition is baked into every id and every token; changing the number would re-home
//! everything). The ring maps partitions, not ids, to nodes (the server's `cluster::Router`), so moving a
//! partition between nodes later moves whole key ranges.
//!
//! ```text
//!   63 62        53 52                                                  0
//!  +--+------------+-----------------------------------------------------+
//!  |0 | partition  |                seq (>= 1, per partition)             |
//!  |  |  10 bits   |                      53 bits                         |
//!  +--+------------+-----------------------------------------------------+
//! ```
//!
//! The top bit is always 0, so every id fits a signed 64-bit integer: TOML (courier-cli's
//! config file), SQL `BIGINT` and Java's `long` cannot hold a u64 above `i64::MAX`.
//!
//! Storage keys start with big-endian ids, so all of a partition's threads (and users) form one
//! contiguous key range in every column family keyed by thread (or user) first. Data written
//! before partitions existed has ids 1, 2, … and so lies in partition 0; it needs no migration.
//!
//! Every function here is pure: every node computes the same partition for the same input.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Logical partitions of a cluster. Fixed for the life of a cluster.
pub const PARTITIONS: u16 = 1024;
/// Bits of an id that hold its partition (the top ones but the sign bit).
pub const PARTITION_BITS: u32 = 10;
/// Bits of an id that hold the sequence number within its partition.
pub const SEQ_BITS: u32 = 63 - PARTITION_BITS;
/// The largest sequence number a partition can hand out.
pub const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;

const _: () = assert!(PARTITIONS as u64 == 1 << PARTITION_BITS);

/// A logical partition, `0..PARTITIONS`.
pub type Partition = u16;

/// Hash seeds, one per kind of key, so that a handle and a user pair with equal bytes are
/// placed independently.
const SEED_HANDLE: u64 = 0x6861_6e64_6c65; // "handle"
const SEED_PAIR: u64 = 0x7061_6972; // "pair"

/// The id with sequence number `seq` in `partition`. `seq` must be in `1..=MAX_SEQ` and
/// `partition` below [`PARTITIONS`] (both guaranteed by the store's allocator).
pub fn compose(partition: Partition, seq: u64) -> u64 {
    debug_assert!(partition < PARTITIONS && (1..=MAX_SEQ).contains(&seq));
    (u64::from(partition) << SEQ_BITS) | (seq & MAX_SEQ)
}

/// The partition an id (user or thread) lives in. (An id with the top bit set was never
/// allocated; it is placed like any other and then not found.)
pub fn of_id(id: u64) -> Partition {
    ((id >> SEQ_BITS) % u64::from(PARTITIONS)) as Partition
}

/// The sequence number of an id within its partition.
pub fn seq_of(id: u64) -> u64 {
    id & MAX_SEQ
}

/// The handle as placed: ASCII-lowercased, so that `Alice` and `alice` (one account: valid
/// handles are lowercase) always reach the same node.
fn normalise_into(handle: &str, buf: &mut [u8; 64]) -> Option<usize> {
    let bytes = handle.as_bytes();
    let out = buf.get_mut(..bytes.len())?;
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = b.to_ascii_lowercase();
    }
    Some(bytes.len())
}

/// The partition of a handle: xxh3 of the normalised handle, modulo [`PARTITIONS`]. The node
/// owning it decides claims of the handle and is the home of the user who holds it (the user's
/// id is allocated in this partition).
pub fn of_handle(handle: &str) -> Partition {
    let mut buf = [0u8; 64];
    let hash = match normalise_into(handle, &mut buf) {
        Some(len) => xxh3_64_with_seed(&buf[..len], SEED_HANDLE),
        // Longer than any valid handle: still placed (LOGIN with it fails at its home).
        None => xxh3_64_with_seed(handle.to_ascii_lowercase().as_bytes(), SEED_HANDLE),
    };
    (hash % u64::from(PARTITIONS)) as Partition
}

/// The partition of the direct thread of users `a` and `b`, whichever of them asks: both
/// users' nodes compute the same thread home.
pub fn of_pair(a: u64, b: u64) -> Partition {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&a.min(b).to_be_bytes());
    key[8..].copy_from_slice(&a.max(b).to_be_bytes());
    (xxh3_64_with_seed(&key, SEED_PAIR) % u64::from(PARTITIONS)) as Partition
}

/// The partition of a new group: its creator's (creation is local to the creator's home).
pub fn of_group(creator: u64) -> Partition {
    of_id(creator)
}

/// Bytes of a session token that name its user's partition (big-endian), before the random
/// rest. A token whose prefix is not a partition (`>= PARTITIONS`) predates partitions: it
/// was all random, and is resumed wherever it is presented.
pub const TOKEN_PREFIX: usize = 2;

/// Writes `partition` into the first [`TOKEN_PREFIX`] bytes of `token`.
pub fn stamp_token(token: &mut [u8], partition: Partition) {
    token[..TOKEN_PREFIX].copy_from_slice(&partition.to_be_bytes());
}

/// The partition a session token names, if it names one.
pub fn of_token(token: &[u8]) -> Option<Partition> {
    let prefix: [u8; TOKEN_PREFIX] = token.get(..TOKEN_PREFIX)?.try_into().ok()?;
    let partition = u16::from_be_bytes(prefix);
    (partition < PARTITIONS).then_some(partition)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ids_carry_their_partition(p in 0..PARTITIONS, seq in 1..=MAX_SEQ) {
            let id = compose(p, seq);
            prop_assert_eq!(of_id(id), p);
            prop_assert_eq!(seq_of(id), seq);
        }

        #[test]
        fn id_order_is_partition_then_seq(a in (0..PARTITIONS, 1..=MAX_SEQ), b in (0..PARTITIONS, 1..=MAX_SEQ)) {
            prop_assert_eq!(compose(a.0, a.1).cmp(&compose(b.0, b.1)), a.cmp(&b));
        }

        #[test]
        fn a_pair_has_one_partition_whoever_asks(a: u64, b: u64) {
            prop_assert_eq!(of_pair(a, b), of_pair(b, a));
        }

        #[test]
        fn a_token_names_the_partition_stamped_into_it(p in 0..PARTITIONS, rest: [u8; 30]) {
            let mut token = [0u8; 32];
            token[2..].copy_from_slice(&rest);
            stamp_token(&mut token, p);
            prop_assert_eq!(of_token(&token), Some(p));
        }
    }

    #[test]
    fn every_id_fits_a_signed_64_bit_integer() {
        assert!(i64::try_from(compose(PARTITIONS - 1, MAX_SEQ)).is_ok());
        assert_eq!(of_id(u64::MAX), PARTITIONS - 1);
    }

    #[test]
    fn pre_partition_ids_are_in_partition_zero() {
        for id in [1, 2, 1_000_000, MAX_SEQ] {
            assert_eq!(of_id(id), 0);
        }
    }

    #[test]
    fn handles_are_placed_case_insensitively_and_spread() {
        assert_eq!(of_handle("Alice"), of_handle("alice"));
        let long = "x".repeat(100);
        assert_eq!(of_handle(&long), of_handle(&long.to_uppercase()));
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            seen.insert(of_handle(&format!("user{i}")));
        }
        assert_eq!(
            seen.len(),
            PARTITIONS as usize,
            "some partition gets no handle"
        );
    }

    #[test]
    fn a_token_prefix_beyond_the_partitions_names_none() {
        assert_eq!(of_token(&[0x04, 0x00, 7, 7]), None);
        assert_eq!(of_token(&[0xff, 0xff]), None);
        assert_eq!(of_token(&[0x03]), None);
        assert_eq!(of_token(&[0x03, 0xff]), Some(1023));
    }

    /// The placement functions are part of the cluster's on-disk and on-wire contract: a change
    /// re-homes users whose ids and tokens already carry the old answer.
    #[test]
    fn placement_is_pinned() {
        assert_eq!(
            [
                of_handle("alice"),
                of_handle("bob"),
                of_pair(1, 2),
                of_pair(compose(5, 9), 3)
            ],
            PINNED
        );
    }
    const PINNED: [Partition; 4] = [182, 603, 587, 433];
}
