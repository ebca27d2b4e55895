//! The member list of a cluster and its hash, which two nodes compare before they link.
//!
//! Every node is started with the same list: id, client address, cluster address and static
//! Noise public key of every node, itself included (the key is left out only on clusters run
//! with `--insecure-plaintext`). [`Membership::hash`] is a pure function of that list (the order it
//! was given in does not matter), so two nodes agree on it exactly when they were configured
//! alike; PROTOCOL.md section 13 defines it byte for byte. A node's index in the list sorted by
//! id ([`Membership::index_of`]) names it in node frames (`Origin.node`).

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use courier_protocol::noise::PublicKey;
use courier_protocol::wire::Wire;
use xxhash_rust::xxh3::xxh3_64;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    /// Where clients reach it (`host:port`, sent in `REDIRECT`).
    pub client_addr: String,
    /// Where other nodes dial its links.
    pub cluster_addr: SocketAddr,
    /// Its static Noise key (`courier keys show` on that node): dialers pin it, and an
    /// acceptor checks that a dialer proved the key of the node its `PEER_HELLO` names. `None`
    /// only on plaintext clusters.
    pub key: Option<PublicKey>,
}

/// Why a member list cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("node id `{0}` is listed twice: give each node one --peer entry")]
    Duplicate(String),
    #[error("this node's id `{0}` is not in the member list: list every node, this one too, with the same --peer entries on every node")]
    LocalMissing(String),
    #[error("a cluster has at most 65,535 nodes")]
    TooMany,
}

/// The sorted member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    nodes: Vec<Node>,
    hash: u64,
}

/// A node's index in the sorted member list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIndex(pub u16);

impl Membership {
    /// Sorts `nodes` by id; refuses a list that names an id twice or lacks `local`.
    pub fn new(mut nodes: Vec<Node>, local: &str) -> Result<Membership, MembershipError> {
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(pair) = nodes.windows(2).find(|p| p[0].id == p[1].id) {
            return Err(MembershipError::Duplicate(pair[0].id.clone()));
        }
        if nodes.len() > u16::MAX as usize {
            return Err(MembershipError::TooMany);
        }
        if !nodes.iter().any(|n| n.id == local) {
            return Err(MembershipError::LocalMissing(local.to_owned()));
        }
        let mut bytes = BytesMut::new();
        for n in &nodes {
            n.id.put(&mut bytes);
            n.client_addr.put(&mut bytes);
            n.cluster_addr.to_string().put(&mut bytes);
            // A node configured with another key for a peer has another hash, so it is refused
            // (MEMBERSHIP) even where no handshake would have caught it.
            let key = n
                .key
                .map_or(Bytes::new(), |k| Bytes::copy_from_slice(k.as_bytes()));
            key.put(&mut bytes);
        }
        let hash = xxh3_64(&bytes);
        Ok(Membership { nodes, hash })
    }

    /// The hash sent in `PEER_HELLO` and `PEER_WELCOME`.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Every node, sorted by id.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn index_of(&self, id: &str) -> Option<NodeIndex> {
        self.nodes
            .binary_search_by(|n| n.id.as_str().cmp(id))
            .ok()
            .map(|i| NodeIndex(i as u16))
    }

    pub fn node(&self, index: NodeIndex) -> Option<&Node> {
        self.nodes.get(index.0 as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, port: u16) -> Node {
        Node {
            id: id.into(),
            client_addr: format!("127.0.0.1:{port}"),
            cluster_addr: SocketAddr::from(([127, 0, 0, 1], port + 1)),
            key: None,
        }
    }

    #[test]
    fn the_hash_ignores_order_and_sees_every_address() {
        let a = Membership::new(vec![node("a", 10), node("b", 20)], "a").unwrap();
        let b = Membership::new(vec![node("b", 20), node("a", 10)], "b").unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.index_of("b"), Some(NodeIndex(1)));
        let moved = Membership::new(vec![node("a", 10), node("b", 30)], "a").unwrap();
        assert_ne!(a.hash(), moved.hash());
        let mut other = node("b", 20);
        other.cluster_addr = SocketAddr::from(([127, 0, 0, 2], 21));
        let moved = Membership::new(vec![node("a", 10), other], "a").unwrap();
        assert_ne!(a.hash(), moved.hash());
        let grown = Membership::new(vec![node("a", 10), node("b", 20), node("c", 40)], "a");
        assert_ne!(a.hash(), grown.unwrap().hash());
    }

    #[test]
    fn the_hash_sees_every_key() {
        let keyed = |k: u8| {
            let mut b = node("b", 20);
            b.key = Some(PublicKey::from_bytes([k; 32]));
            Membership::new(vec![node("a", 10), b], "a").unwrap().hash()
        };
        let plain = Membership::new(vec![node("a", 10), node("b", 20)], "a").unwrap();
        assert_ne!(keyed(1), plain.hash());
        assert_ne!(keyed(1), keyed(2));
        assert_eq!(keyed(1), keyed(1));
    }

    #[test]
    fn a_list_without_this_node_or_with_a_duplicate_is_refused() {
        assert_eq!(
            Membership::new(vec![node("b", 20)], "a"),
            Err(MembershipError::LocalMissing("a".into()))
        );
        assert_eq!(
            Membership::new(vec![node("a", 10), node("a", 30)], "a"),
            Err(MembershipError::Duplicate("a".into()))
        );
    }
}
