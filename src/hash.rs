//! The hash maps of the message path.
//!
//! Their keys are integers (thread, user, message and client message ids), looked up several
//! times per message. std's SipHash-1-3 took about 8% of a shard's time at the unthrottled rate
//! (BENCHMARKS.md, "Issue 13: the maps' hasher"). foldhash, hashbrown's own default, hashes a
//! `u64` in a few instructions. Its `RandomState` seeds each map from a per-process random
//! seed, so a client that chooses some of the ids (`client_msg_id`) cannot aim collisions at a
//! map without knowing the seed.

/// A `HashMap` with foldhash's seeded hasher; build with `Map::default()`.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with foldhash's seeded hasher; build with `Set::default()`.
pub type Set<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
