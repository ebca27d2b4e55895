//! Running against a cluster: the node list, each user's home node, and the order of users
//! that makes a plan's threads live where their members do.
//!
//! The node list is the servers' own `--peer` list (`ID=CLIENT_ADDR@CLUSTER_ADDR#KEY`), given
//! as repeated `--peer` or one entry per line of a `--nodes` file. Every user connects to its
//! home node (the node owning its id's partition, as every node computes it,
//! `courier_protocol::placement`) pinning that node's key, so no connection needs a
//! `REDIRECT`; one that gets one anyway follows it with the key it names.
//!
//! Nodes forward requests to the node that owns a thread, so any users can share a thread:
//! [`Pairing::Any`] (the default) takes the users round-robin over their home nodes, so
//! consecutive users (a pair, a group) are homed on different nodes and threads cross nodes. [`Pairing::Local`] orders the users so that the plan's consecutive
//! pairs and groups have all their users and their thread on one node: nothing crosses nodes,
//! which measures what the nodes do alone (compare it with `any` for the cost of forwarding).

use std::net::SocketAddr;
use std::path::Path;

use courier_protocol::noise::PublicKey;
use courier_protocol::placement::partition::{self, Partition, PARTITIONS};
use courier_protocol::placement::ring::{self, Ring};

use crate::error::{Error, Result};
use crate::users::UserRecord;

/// How users are put together in threads on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pairing {
    /// Pairs (and groups) whose users and thread are all homed on one node: no request needs
    /// another node.
    Local,
    /// Users round-robin over their home nodes: threads across nodes (requests forwarded).
    Any,
}

/// One node of the cluster, as the loadgen needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    /// Where its clients connect.
    pub addr: SocketAddr,
    /// Its static key; `None` only on a plaintext cluster.
    pub key: Option<PublicKey>,
}

/// The cluster: its nodes and which node owns each partition.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// Partition → index in `nodes`.
    owner: Vec<usize>,
}

impl Cluster {
    /// From `--peer` entries and the lines of a `--nodes` file (blank lines and lines starting
    /// with `#` are skipped). Keys are required unless `plaintext`.
    pub fn parse(specs: &[String], plaintext: bool) -> Result<Cluster> {
        let mut nodes: Vec<Node> = Vec::with_capacity(specs.len());
        for spec in specs {
            let node = parse_node(spec)?;
            if nodes.iter().any(|n| n.id == node.id) {
                return Err(Error::Args(format!(
                    "node `{}` is listed twice: give each node once",
                    node.id
                )));
            }
            if node.key.is_none() && !plaintext {
                return Err(Error::Args(format!(
                    "node `{}` has no key: write it as ID=CLIENT_ADDR@CLUSTER_ADDR#KEY (`courier keys show --data-dir DIR` on that node), or pass --insecure-plaintext against a plaintext cluster",
                    node.id
                )));
            }
            nodes.push(node);
        }
        if nodes.is_empty() {
            return Err(Error::Args("the node list is empty".into()));
        }
        let ring = Ring::new(&nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>());
        let owner = (0..PARTITIONS)
            .map(|p| {
                let id = ring
                    .owner(&ring::partition_key(p))
                    .expect("a ring over at least one node owns every key");
                nodes
                    .iter()
                    .position(|n| n.id == id)
                    .expect("the ring's nodes are the listed ones")
            })
            .collect();
        Ok(Cluster { nodes, owner })
    }

    /// Reads a `--nodes` file: one node per line.
    pub fn read_specs(path: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::UsersFile {
            path: path.to_owned(),
            source,
        })?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect())
    }

    /// The index of the node that owns `partition`.
    pub fn owner(&self, partition: Partition) -> usize {
        self.owner[usize::from(partition % PARTITIONS)]
    }

    /// The home node of user `id` (its id carries its partition).
    pub fn home(&self, id: u64) -> usize {
        self.owner(partition::of_id(id))
    }

    /// Every node's client address, in list order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Orders `users` so that each pair `2p, 2p + 1` of the first `pairs * 2` is homed on one
    /// node together with its direct thread. Users that find no such partner come after.
    pub fn local_pairs(&self, users: Vec<UserRecord>, pairs: usize) -> Result<Vec<UserRecord>> {
        let mut buckets = self.buckets(users);
        let mut ordered = Vec::with_capacity(pairs * 2);
        let mut rest = Vec::new();
        // Node by node in turn, so that pairs spread over the nodes.
        while ordered.len() < pairs * 2 && buckets.iter().any(|b| b.1.len() >= 2) {
            for (node, bucket) in buckets.iter_mut() {
                if ordered.len() >= pairs * 2 || bucket.len() < 2 {
                    continue;
                }
                let a = bucket.remove(0);
                match bucket
                    .iter()
                    .position(|b| self.owner(partition::of_pair(a.id, b.id)) == *node)
                {
                    Some(i) => {
                        ordered.push(a);
                        ordered.push(bucket.remove(i));
                    }
                    None => rest.push(a),
                }
            }
        }
        if ordered.len() < pairs * 2 {
            return Err(Error::Args(format!(
                "only {} pairs of users share a home node with their direct thread ({pairs} needed): provision more users, or use --pairing any",
                ordered.len() / 2
            )));
        }
        ordered.extend(rest);
        ordered.extend(buckets.into_iter().flat_map(|b| b.1));
        Ok(ordered)
    }

    /// Orders `users` so that each run of `size` among the first `groups * size` is homed on
    /// one node (a group lives on its creator's node).
    pub fn local_groups(
        &self,
        users: Vec<UserRecord>,
        groups: usize,
        size: usize,
    ) -> Result<Vec<UserRecord>> {
        let mut buckets = self.buckets(users);
        let mut ordered = Vec::with_capacity(groups * size);
        let mut made = 0;
        while made < groups && buckets.iter().any(|b| b.1.len() >= size) {
            for (_, bucket) in buckets.iter_mut() {
                if made < groups && bucket.len() >= size {
                    ordered.extend(bucket.drain(..size));
                    made += 1;
                }
            }
        }
        if made < groups {
            return Err(Error::Args(format!(
                "only {made} groups of {size} users share a home node ({groups} needed): provision more users, or use --pairing any"
            )));
        }
        ordered.extend(buckets.into_iter().flat_map(|b| b.1));
        Ok(ordered)
    }

    /// Orders `users` round-robin over their home nodes (each node's in file order): a users
    /// file lists them node by node (`courier admin provision --node`), and consecutive users
    /// (a pair, a group) should come from different nodes, so that threads cross nodes and
    /// every node has connections whatever part of the file a scenario takes.
    pub fn spread(&self, users: Vec<UserRecord>) -> Vec<UserRecord> {
        let mut buckets: Vec<std::collections::VecDeque<UserRecord>> = self
            .buckets(users)
            .into_iter()
            .map(|(_, b)| b.into())
            .collect();
        let mut ordered = Vec::with_capacity(buckets.iter().map(|b| b.len()).sum());
        while buckets.iter().any(|b| !b.is_empty()) {
            for b in &mut buckets {
                ordered.extend(b.pop_front());
            }
        }
        ordered
    }

    /// Users by home node, each bucket in file order.
    fn buckets(&self, users: Vec<UserRecord>) -> Vec<(usize, Vec<UserRecord>)> {
        let mut buckets: Vec<(usize, Vec<UserRecord>)> =
            (0..self.nodes.len()).map(|i| (i, Vec::new())).collect();
        for u in users {
            let home = self.home(u.id);
            buckets[home].1.push(u);
        }
        buckets
    }
}

/// `ID=CLIENT_ADDR@CLUSTER_ADDR#KEY` (`#KEY` optional); the client address must be IP:PORT.
fn parse_node(spec: &str) -> Result<Node> {
    let bad = |why: &str| Error::Args(format!("node `{spec}`: {why}"));
    let (rest, key) = match spec.split_once('#') {
        Some((rest, key)) => (
            rest,
            Some(PublicKey::parse(key, "the key after `#`").map_err(|e| bad(&e.to_string()))?),
        ),
        None => (spec, None),
    };
    let (id, addrs) = rest.split_once('=').ok_or_else(|| {
        bad("write it as ID=CLIENT_ADDR@CLUSTER_ADDR#KEY, as in the servers' --peer list")
    })?;
    let client = addrs.rsplit_once('@').map_or(addrs, |(client, _)| client);
    let addr = client.parse().map_err(|_| {
        bad("the client address (before `@`) must be IP:PORT for the load generator")
    })?;
    if id.is_empty() {
        return Err(bad("the node id is empty"));
    }
    Ok(Node {
        id: id.to_owned(),
        addr,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, port: u16, key: u8) -> String {
        format!(
            "{id}=127.0.0.1:{port}@127.0.0.1:{}#{}",
            port + 1,
            hex::encode([key; 32])
        )
    }

    fn user(id: u64) -> UserRecord {
        UserRecord {
            id,
            handle: format!("u{id}"),
            token: vec![0; 32],
        }
    }

    /// Ids spread over every partition, as provisioning on a cluster makes them.
    fn users(n: u64) -> Vec<UserRecord> {
        (0..n)
            .map(|i| user((i % u64::from(PARTITIONS)) << 53 | (1 + i / 1024)))
            .collect()
    }

    #[test]
    fn the_list_parses_and_a_missing_key_is_refused_unless_plaintext() {
        let specs = vec![spec("a", 7000, 1), spec("b", 7010, 2)];
        let c = Cluster::parse(&specs, false).unwrap();
        assert_eq!(c.nodes[1].addr, "127.0.0.1:7010".parse().unwrap());
        assert_eq!(c.nodes[1].key, Some(PublicKey::from_bytes([2; 32])));
        let keyless = vec!["a=127.0.0.1:7000@127.0.0.1:7001".to_owned()];
        let err = Cluster::parse(&keyless, false).unwrap_err().to_string();
        assert!(err.contains("courier keys show"), "{err}");
        assert!(Cluster::parse(&keyless, true).is_ok());
        let named = vec!["a=node-a:7000@127.0.0.1:7001".to_owned()];
        assert!(Cluster::parse(&named, true).is_err());
    }

    #[test]
    fn any_pairing_alternates_the_home_nodes() {
        let specs: Vec<String> = (0..3)
            .map(|i| spec(&format!("n{i}"), 7000 + 10 * i, i as u8 + 1))
            .collect();
        let c = Cluster::parse(&specs, false).unwrap();
        // A file listed node by node, as provisioning writes it.
        let mut listed = users(60);
        listed.sort_by_key(|u| c.home(u.id));
        let spread = c.spread(listed);
        assert_eq!(spread.len(), 60);
        let homes: Vec<usize> = spread.iter().map(|u| c.home(u.id)).collect();
        let crossing = homes.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(
            crossing >= 40,
            "consecutive users mostly on different nodes: {homes:?}"
        );
    }

    #[test]
    fn local_pairs_share_a_home_with_their_thread_and_spread_over_the_nodes() {
        let specs = vec![
            spec("n0", 7000, 1),
            spec("n1", 7010, 2),
            spec("n2", 7020, 3),
        ];
        let c = Cluster::parse(&specs, false).unwrap();
        let ordered = c.local_pairs(users(600), 60).unwrap();
        assert_eq!(ordered.len(), 600, "nobody is dropped");
        let mut per_node = [0; 3];
        for pair in ordered[..120].chunks(2) {
            let home = c.home(pair[0].id);
            assert_eq!(c.home(pair[1].id), home);
            assert_eq!(c.owner(partition::of_pair(pair[0].id, pair[1].id)), home);
            per_node[home] += 1;
        }
        assert!(per_node.iter().all(|&n| n == 20), "{per_node:?}");
        let groups = c.local_groups(users(600), 6, 10).unwrap();
        for g in groups[..60].chunks(10) {
            assert!(g.iter().all(|u| c.home(u.id) == c.home(g[0].id)));
        }
        assert!(c.local_pairs(users(4), 60).is_err());
    }
}
