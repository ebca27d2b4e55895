//! A consistent-hash ring: which node owns a key.
//!
//! Invariant: **every node computes the same owner.** The ring is a pure function of the *set*
//! of node ids: the order in which peers are listed, the node doing the computing and the time
//! do not enter into it. Each node is placed at [`VNODES`] points (xxh3 of `node id ‖ replica`),
//! the points are sorted, and a key belongs to the first point at or after xxh3 of the key,
//! wrapping around. Ties between equal points (astronomically rare) break on the node id, so
//! even they are resolved identically everywhere.
//!
//! Adding a node to `n` nodes moves only the keys that fall on the new node's points, about
//! `1 / (n + 1)` of them; no key moves between two old nodes.

use xxhash_rust::xxh3::xxh3_64;

/// Points per node: enough that each node's share is within a few percent of `1 / n`.
pub const VNODES: u32 = 128;

/// The ring over a set of node ids. Nodes are referred to by their index in [`Ring::nodes`],
/// which is sorted by id (so indices, too, agree on every node).
#[derive(Debug, Clone)]
pub struct Ring {
    nodes: Vec<String>,
    /// (point, node index), sorted by point then node id.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// Builds the ring over `ids`; duplicates count once. An empty set gives a ring that owns
    /// nothing ([`owner`](Self::owner) returns `None`).
    pub fn new<S: AsRef<str>>(ids: &[S]) -> Ring {
        let mut nodes: Vec<String> = ids.iter().map(|s| s.as_ref().to_owned()).collect();
        nodes.sort();
        nodes.dedup();
        let mut points = Vec::with_capacity(nodes.len() * VNODES as usize);
        for (index, id) in nodes.iter().enumerate() {
            let mut seed = Vec::with_capacity(id.len() + 5);
            for replica in 0..VNODES {
                seed.clear();
                seed.extend_from_slice(id.as_bytes());
                seed.push(0);
                seed.extend_from_slice(&replica.to_be_bytes());
                points.push((xxh3_64(&seed), index as u32));
            }
        }
        // Node indices follow sorted ids, so sorting the pairs breaks point ties by id.
        points.sort_unstable();
        Ring { nodes, points }
    }

    /// Node ids, sorted.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The id of the node that owns `key` (an already namespaced key, see [`key`]).
    pub fn owner(&self, key: &[u8]) -> Option<&str> {
        if self.points.is_empty() {
            return None;
        }
        let h = xxh3_64(key);
        let i = self.points.partition_point(|&(p, _)| p < h);
        let (_, node) = self.points[if i == self.points.len() { 0 } else { i }];
        Some(&self.nodes[node as usize])
    }
}

/// A ring key for an id in a namespace (`b'u'` users, `b't'` threads), so that user 7 and
/// thread 7 are placed independently.
pub fn key(namespace: u8, id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = namespace;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The ring key of a partition: the ring places partitions, not ids, on nodes (the server's
/// router and the load generator both place partition `p` at `ring.owner(&partition_key(p))`).
pub fn partition_key(partition: u16) -> [u8; 9] {
    key(b'p', u64::from(partition))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(ring: &Ring, n: u64) -> Vec<String> {
        (0..n)
            .map(|u| ring.owner(&key(b'u', u)).unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn every_node_computes_the_same_owner_whatever_the_listing_order() {
        let a = Ring::new(&["n1", "n2", "n3", "n4"]);
        let b = Ring::new(&["n3", "n1", "n4", "n2", "n1"]);
        assert_eq!(owners(&a, 10_000), owners(&b, 10_000));
    }

    #[test]
    fn adding_a_node_moves_about_one_nth_and_only_to_the_new_node() {
        let before = Ring::new(&["a", "b", "c", "d"]);
        let after = Ring::new(&["a", "b", "c", "d", "e"]);
        let n = 50_000;
        let (old, new) = (owners(&before, n), owners(&after, n));
        let moved: Vec<_> = old.iter().zip(&new).filter(|(o, n)| o != n).collect();
        assert!(
            moved.iter().all(|(_, n)| n.as_str() == "e"),
            "a key moved between old nodes"
        );
        let share = moved.len() as f64 / n as f64;
        assert!(
            (0.12..0.28).contains(&share),
            "moved share {share} is far from 1/5"
        );
    }

    #[test]
    fn load_is_spread_evenly() {
        let ring = Ring::new(&["a", "b", "c"]);
        let all = owners(&ring, 30_000);
        for node in ["a", "b", "c"] {
            let share = all.iter().filter(|o| o.as_str() == node).count() as f64 / 30_000.0;
            assert!((0.25..0.42).contains(&share), "{node} owns {share}");
        }
    }

    #[test]
    fn an_empty_ring_owns_nothing() {
        assert_eq!(Ring::new::<&str>(&[]).owner(&key(b'u', 1)), None);
    }
}
