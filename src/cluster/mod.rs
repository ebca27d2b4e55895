//! The cluster seam: which node is home to a user or a thread.
//!
//! This release routes but does not link nodes: a client whose user lives on another node is
//! sent a `REDIRECT` to that node's address. The [`Router`] is built once at start from the
//! configured node id and peers and is read-only afterwards, so shards share it without a lock.

pub mod links;
pub mod ring;

use std::collections::HashMap;

use ring::Ring;

/// Where a user or thread lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home<'a> {
    Local,
    Remote { node: &'a str, addr: &'a str },
}

/// Answers "which node?" from the ring of this node and its peers.
#[derive(Debug, Clone)]
pub struct Router {
    local: String,
    /// Peer id → client-facing address (`host:port`) for redirects.
    peers: HashMap<String, String>,
    ring: Ring,
}

impl Router {
    /// `peers` lists the *other* nodes; a peer with the local id is ignored. With no peers
    /// everything is local.
    pub fn new(local: &str, peers: &[(String, String)]) -> Router {
        let peers: HashMap<String, String> = peers
            .iter()
            .filter(|(id, _)| id != local)
            .cloned()
            .collect();
        let mut ids: Vec<&str> = peers.keys().map(String::as_str).collect();
        ids.push(local);
        Router {
            local: local.to_owned(),
            ring: Ring::new(&ids),
            peers,
        }
    }

    /// This node's id, announced in `WELCOME`.
    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn user_home(&self, user: u64) -> Home<'_> {
        self.home(&ring::key(b'u', user))
    }

    pub fn thread_home(&self, thread: u64) -> Home<'_> {
        self.home(&ring::key(b't', thread))
    }

    fn home(&self, key: &[u8]) -> Home<'_> {
        if self.peers.is_empty() {
            return Home::Local;
        }
        match self.ring.owner(key) {
            Some(node) if node != self.local => match self.peers.get_key_value(node) {
                Some((node, addr)) => Home::Remote { node, addr },
                None => Home::Local,
            },
            _ => Home::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_peers_everything_is_local() {
        let r = Router::new("solo", &[]);
        assert!((0..1000).all(|u| r.user_home(u) == Home::Local && r.thread_home(u) == Home::Local));
    }

    #[test]
    fn two_nodes_agree_on_every_home() {
        let a = Router::new("a", &[("b".into(), "10.0.0.2:7878".into())]);
        let b = Router::new("b", &[("a".into(), "10.0.0.1:7878".into())]);
        let mut remote_from_a = 0;
        for u in 0..2000 {
            match (a.user_home(u), b.user_home(u)) {
                (Home::Local, Home::Remote { node: "a", addr }) => {
                    assert_eq!(addr, "10.0.0.1:7878")
                }
                (Home::Remote { node: "b", addr }, Home::Local) => {
                    assert_eq!(addr, "10.0.0.2:7878");
                    remote_from_a += 1;
                }
                other => panic!("nodes disagree about user {u}: {other:?}"),
            }
        }
        assert!((600..1400).contains(&remote_from_a));
    }
}
