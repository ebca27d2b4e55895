//! The cluster seam: which node is home to a partition, and so to a user, a handle or a thread.
//!
//! Ids carry their partition ([`partition`]); the [`Ring`] maps each of the [`PARTITIONS`]
//! partitions to a node; the [`Router`] turns that into a table, built once at start from the
//! configured node id and peers and read-only afterwards, so shards share it without a lock.
//! A client that reaches a node other than its home is sent a `REDIRECT` to the home's
//! address; a chat request that needs another node is forwarded there over the links
//! ([`forward`]), and the thread owner's pushes go to the recipients' homes in one
//! `PUSH_BATCH` per node (see ARCHITECTURE.md, "Cluster").

pub mod forward;
pub mod links;
pub mod presence;
pub mod reads;
pub use courier_protocol::placement::{partition, ring};

use std::collections::HashMap;

use courier_protocol::noise::PublicKey;
use courier_protocol::Frame;

pub use partition::{Partition, PARTITIONS};
use ring::Ring;

/// Where a user or thread lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home<'a> {
    Local,
    Remote { node: &'a str, addr: &'a str },
}

/// Answers "which node?" for a partition, precomputed over the ring of this node and its peers.
///
/// Invariant: **every node computes the same table** (partition → node id). The table is a
/// pure function of the set of node ids (see [`Ring`]) and of [`PARTITIONS`]: neither the order
/// of the peers, nor the node computing it, nor addresses enter into it.
#[derive(Debug, Clone)]
pub struct Router {
    local: String,
    /// Node ids, sorted (the ring's order), with their client-facing address (`host:port`) for
    /// redirects; the local node's is unused and empty.
    nodes: Vec<(String, String)>,
    /// Index of the local node in `nodes`.
    local_index: u32,
    /// Partition → index in `nodes`; [`PARTITIONS`] entries.
    table: Box<[u32]>,
    /// Each node's static Noise key, by index in `nodes` ([`Router::with_keys`]): a `REDIRECT`
    /// names it so the client can pin it. `None` on a plaintext cluster.
    keys: Box<[Option<PublicKey>]>,
}

impl Router {
    /// `peers` lists the *other* nodes as (id, client address); a peer with the local id is
    /// ignored. With no peers every partition is local.
    pub fn new(local: &str, peers: &[(String, String)]) -> Router {
        let addrs: HashMap<&str, &str> = peers
            .iter()
            .filter(|(id, _)| id != local)
            .map(|(id, addr)| (id.as_str(), addr.as_str()))
            .collect();
        let mut ids: Vec<&str> = addrs.keys().copied().collect();
        ids.push(local);
        let ring = Ring::new(&ids);
        let nodes: Vec<(String, String)> = ring
            .nodes()
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    addrs.get(id.as_str()).copied().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let index: HashMap<&str, u32> = ring
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i as u32))
            .collect();
        let table = (0..PARTITIONS)
            .map(|p| {
                let owner = ring.owner(&ring::partition_key(p));
                owner.and_then(|id| index.get(id).copied()).unwrap_or(0)
            })
            .collect();
        Router {
            local: local.to_owned(),
            local_index: index.get(local).copied().unwrap_or(0),
            keys: vec![None; nodes.len()].into(),
            nodes,
            table,
        }
    }

    /// The same router, knowing each node's static key (`keys`: (node id, key), as in the
    /// `--peer` list; ids that are not nodes are ignored).
    pub fn with_keys(mut self, keys: &[(String, Option<PublicKey>)]) -> Router {
        for (id, key) in keys {
            if let Some(i) = self.nodes.iter().position(|(node, _)| node == id) {
                self.keys[i] = *key;
            }
        }
        self
    }

    /// The static key of node `id`, if the cluster is encrypted and `id` is a node.
    pub fn key_of(&self, id: &str) -> Option<PublicKey> {
        let i = self.nodes.iter().position(|(node, _)| node == id)?;
        self.keys[i]
    }

    /// This node's id, announced in `WELCOME`.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The id of the node that owns `partition`.
    pub fn owner(&self, partition: Partition) -> &str {
        &self.nodes[self.table[usize::from(partition % PARTITIONS)] as usize].0
    }

    /// Whether this node owns `partition` (and so alone allocates ids in it).
    pub fn owns(&self, partition: Partition) -> bool {
        self.table[usize::from(partition % PARTITIONS)] == self.local_index
    }

    /// The partitions this node owns, ascending.
    pub fn owned(&self) -> impl Iterator<Item = Partition> + '_ {
        (0..PARTITIONS).filter(|&p| self.owns(p))
    }

    pub fn partition_home(&self, partition: Partition) -> Home<'_> {
        let index = self.table[usize::from(partition % PARTITIONS)];
        if index == self.local_index {
            return Home::Local;
        }
        let (node, addr) = &self.nodes[index as usize];
        Home::Remote { node, addr }
    }

    pub fn user_home(&self, user: u64) -> Home<'_> {
        self.partition_home(partition::of_id(user))
    }

    pub fn thread_home(&self, thread: u64) -> Home<'_> {
        self.partition_home(partition::of_id(thread))
    }

    /// The node that decides claims of `handle` and is home to the user holding it.
    pub fn handle_home(&self, handle: &str) -> Home<'_> {
        self.partition_home(partition::of_handle(handle))
    }

    /// This node's index in the sorted node list: the `NodeIndex` of the links, `ConnRef::node`.
    pub fn local_index(&self) -> u16 {
        self.local_index as u16
    }

    /// The id of the node at `index` of the sorted node list (`"?"` past its end).
    pub fn node_id(&self, index: u16) -> &str {
        self.nodes
            .get(usize::from(index))
            .map_or("?", |n| n.0.as_str())
    }

    /// The index of the node that owns `partition`.
    pub fn partition_node(&self, partition: Partition) -> u16 {
        self.table[usize::from(partition % PARTITIONS)] as u16
    }

    /// The index of the node that is home to `user`.
    pub fn user_node(&self, user: u64) -> u16 {
        self.partition_node(partition::of_id(user))
    }

    /// The index of the node a chat request of `user` (homed here) runs on, when that is not
    /// this node: the owner of the thread it names, of the direct thread it would open, or of
    /// the handle it looks up. The request is then forwarded there (`FORWARD`), and the
    /// answer comes back over the links. Everything else runs here: creating a group (a group
    /// lives with its creator), contacts (they live with their user), lists and sync.
    ///
    /// Users a request names on other nodes are not this function's business: see
    /// [`named_users`](Self::named_users).
    pub fn remote_node(&self, user: u64, frame: &Frame) -> Option<u16> {
        let node = match frame {
            Frame::OpenDirect(f) => self.partition_node(partition::of_pair(user, f.peer)),
            Frame::AddMembers(f) => self.thread_node(f.thread),
            Frame::RemoveMember(f) => self.thread_node(f.thread),
            Frame::LeaveGroup(f) => self.thread_node(f.thread),
            Frame::RenameGroup(f) => self.thread_node(f.thread),
            Frame::GetThread(f) => self.thread_node(f.thread),
            Frame::SetThreadState(f) => self.thread_node(f.thread),
            Frame::Send(f) => self.thread_node(f.thread),
            Frame::History(f) => self.thread_node(f.thread),
            Frame::Receipt(f) => self.thread_node(f.thread),
            Frame::Recall(f) => self.thread_node(f.thread),
            Frame::Edit(f) => self.thread_node(f.thread),
            Frame::React(f) => self.thread_node(f.thread),
            Frame::DeleteForMe(f) => self.thread_node(f.thread),
            Frame::Readers(f) => self.thread_node(f.thread),
            Frame::Typing(f) => self.thread_node(f.thread),
            Frame::LookupUser(f) => self.partition_node(partition::of_handle(&f.handle)),
            // The thread's owner checks who may read it (its members), and has the node
            // holding the bytes serve them.
            Frame::MediaGet(f) if f.thread != 0 => self.thread_node(f.thread),
            _ => return None,
        };
        (node != self.local_index()).then_some(node)
    }

    fn thread_node(&self, thread: u64) -> u16 {
        self.partition_node(partition::of_id(thread))
    }

    /// The users a chat request names whose existence the engine checks with a store lookup
    /// (`UNKNOWN_USER`): the peer of OPEN_DIRECT, the members of CREATE_GROUP and ADD_MEMBERS,
    /// the user of CONTACT_ADD, the ids of GET_USERS. A user homed on another node than the
    /// one the request runs on is known only there, so the origin asks its home first.
    pub fn named_users(frame: &Frame) -> &[u64] {
        match frame {
            Frame::OpenDirect(f) => std::slice::from_ref(&f.peer),
            Frame::CreateGroup(f) => &f.members,
            Frame::AddMembers(f) => &f.members,
            Frame::ContactAdd(f) => std::slice::from_ref(&f.user),
            Frame::GetUsers(f) => &f.users,
            _ => &[],
        }
    }

    /// The lane a forwarded request travels on (and its answers and the thread's pushes):
    /// the thread id for a thread's requests, so one thread's traffic keeps its order on one
    /// link; the user pair for OPEN_DIRECT; the handle's partition for LOOKUP_USER.
    pub fn lane(user: u64, frame: &Frame) -> u64 {
        match frame {
            Frame::OpenDirect(f) => user.min(f.peer) ^ user.max(f.peer).rotate_left(32),
            Frame::LookupUser(f) => u64::from(partition::of_handle(&f.handle)),
            other => thread_of(other).unwrap_or(user),
        }
    }

    /// The home of the user a session token was issued to; `Local` for a token from before
    /// partitions (it names none), which is then checked here.
    pub fn token_home(&self, token: &[u8]) -> Home<'_> {
        match partition::of_token(token) {
            Some(p) => self.partition_home(p),
            None => Home::Local,
        }
    }
}

/// The thread a request or push names, if any.
pub fn thread_of(frame: &Frame) -> Option<u64> {
    Some(match frame {
        Frame::AddMembers(f) => f.thread,
        Frame::RemoveMember(f) => f.thread,
        Frame::LeaveGroup(f) => f.thread,
        Frame::RenameGroup(f) => f.thread,
        Frame::GetThread(f) => f.thread,
        Frame::SetThreadState(f) => f.thread,
        Frame::Send(f) => f.thread,
        Frame::History(f) => f.thread,
        Frame::Receipt(f) => f.thread,
        Frame::Recall(f) => f.thread,
        Frame::Edit(f) => f.thread,
        Frame::React(f) => f.thread,
        Frame::DeleteForMe(f) => f.thread,
        Frame::Readers(f) => f.thread,
        Frame::Typing(f) => f.thread,
        Frame::MessagePush(f) => f.message.thread,
        Frame::ReceiptPush(f) => f.thread,
        Frame::TypingPush(f) => f.thread,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(id, addr)| (id.to_string(), addr.to_string()))
            .collect()
    }

    fn three() -> [Router; 3] {
        let all = [
            ("a", "10.0.0.1:7878"),
            ("b", "10.0.0.2:7878"),
            ("c", "10.0.0.3:7878"),
        ];
        // Each node lists its peers in its own order.
        [
            Router::new("a", &peers(&[all[2], all[1]])),
            Router::new("b", &peers(&[all[0], all[2]])),
            Router::new("c", &peers(&[all[1], all[0], all[2]])),
        ]
    }

    #[test]
    fn without_peers_everything_is_local() {
        let r = Router::new("solo", &[]);
        assert!((0..1000).all(|u| r.user_home(u) == Home::Local && r.thread_home(u) == Home::Local));
        assert_eq!(r.owned().count(), PARTITIONS as usize);
        assert_eq!(r.token_home(&[0xff; 32]), Home::Local);
    }

    #[test]
    fn every_node_computes_the_same_table() {
        let routers = three();
        for p in 0..PARTITIONS {
            let owner = routers[0].owner(p);
            for r in &routers {
                assert_eq!(r.owner(p), owner, "nodes disagree about partition {p}");
                match r.partition_home(p) {
                    Home::Local => assert_eq!(r.local(), owner),
                    Home::Remote { node, addr } => {
                        assert_ne!(r.local(), owner);
                        assert_eq!(node, owner);
                        let n = 1 + owner.as_bytes()[0] - b'a';
                        assert_eq!(addr, format!("10.0.0.{n}:7878"));
                    }
                }
            }
        }
        // Each partition has exactly one owner, and the load is spread.
        let owned: Vec<usize> = routers.iter().map(|r| r.owned().count()).collect();
        assert_eq!(owned.iter().sum::<usize>(), PARTITIONS as usize);
        assert!(owned.iter().all(|&n| (240..440).contains(&n)), "{owned:?}");
    }

    #[test]
    fn homes_follow_the_partition_in_ids_handles_and_tokens() {
        let routers = three();
        for r in &routers {
            for p in 0..PARTITIONS {
                let id = partition::compose(p, 12_345);
                assert_eq!(r.user_home(id), r.partition_home(p));
                assert_eq!(r.thread_home(id), r.partition_home(p));
                let mut token = [7u8; 32];
                partition::stamp_token(&mut token, p);
                assert_eq!(r.token_home(&token), r.partition_home(p));
            }
            for i in 0..500 {
                let handle = format!("user{i}");
                let p = partition::of_handle(&handle);
                assert_eq!(r.handle_home(&handle), r.partition_home(p));
            }
        }
    }

    #[test]
    fn requests_run_on_the_node_of_their_thread_and_name_the_users_to_check() {
        use courier_protocol::{AddMembers, CreateGroup, GetUsers, LookupUser, OpenDirect, Send};
        let routers = three();
        let a = &routers[0];
        let index = |node: &str| a.nodes.iter().position(|n| n.0 == node).unwrap() as u16;
        let on = |node: &str| {
            let p = (0..PARTITIONS).find(|&p| a.owner(p) == node).unwrap();
            partition::compose(p, 1)
        };
        let (here, there) = (on("a"), on("b"));
        assert_eq!(a.node_id(index("b")), "b");
        assert_eq!(a.local_index(), index("a"));
        let send = |thread| {
            Frame::Send(Send {
                thread,
                client_msg_id: 1,
                kind: courier_protocol::MessageKind::Text,
                body: Default::default(),
                reply_to: 0,
            })
        };
        assert_eq!(a.remote_node(here, &send(here)), None);
        assert_eq!(a.remote_node(here, &send(there)), Some(index("b")));
        assert_eq!(
            Router::lane(here, &send(there)),
            there,
            "a thread's lane is its id"
        );
        // Edits and reactions change a thread's messages: they belong to its owner too.
        let edit = Frame::Edit(courier_protocol::Edit {
            thread: there,
            message: 1,
            body: Default::default(),
        });
        let react = Frame::React(courier_protocol::React {
            thread: there,
            message: 1,
            reaction: "+1".into(),
        });
        assert_eq!(a.remote_node(here, &edit), Some(index("b")));
        assert_eq!(a.remote_node(here, &react), Some(index("b")));
        // A group lives with its creator: it runs here, naming its members to check.
        let group = |members: Vec<u64>| {
            Frame::CreateGroup(CreateGroup {
                name: "g".into(),
                members,
            })
        };
        assert_eq!(a.remote_node(here, &group(vec![here, there])), None);
        assert_eq!(
            Router::named_users(&group(vec![here, there])),
            &[here, there]
        );
        let add = |thread, members| Frame::AddMembers(AddMembers { thread, members });
        assert_eq!(a.remote_node(here, &add(here, vec![there])), None);
        assert_eq!(
            a.remote_node(here, &add(there, vec![here])),
            Some(index("b"))
        );
        assert_eq!(Router::named_users(&add(there, vec![here])), &[here]);
        let users = |users| Frame::GetUsers(GetUsers { users });
        assert_eq!(a.remote_node(here, &users(vec![here, there])), None);
        assert_eq!(Router::named_users(&users(vec![there])), &[there]);
        // A direct thread runs on its pair's node.
        let peer_here = (2..).map(|s| partition::compose(partition::of_id(here), s));
        let local_pair = peer_here
            .clone()
            .find(|&p| a.owns(partition::of_pair(here, p)))
            .unwrap();
        let remote_pair = peer_here
            .clone()
            .find(|&p| !a.owns(partition::of_pair(here, p)))
            .unwrap();
        let open = |peer| Frame::OpenDirect(OpenDirect { peer });
        assert_eq!(a.remote_node(here, &open(local_pair)), None);
        assert_eq!(
            a.remote_node(here, &open(remote_pair)),
            Some(a.partition_node(partition::of_pair(here, remote_pair)))
        );
        let handle = (0..)
            .map(|i| format!("h{i}"))
            .find(|h| a.handle_home(h) != Home::Local)
            .unwrap();
        let lookup = Frame::LookupUser(LookupUser {
            handle: handle.clone(),
        });
        assert_eq!(
            a.remote_node(here, &lookup),
            Some(a.partition_node(partition::of_handle(&handle)))
        );
        // Without peers nothing is remote.
        let solo = Router::new("a", &[]);
        assert_eq!(solo.remote_node(here, &send(there)), None);
        assert!((0..100).all(|u| solo.user_node(u) == solo.local_index()));
    }
}
