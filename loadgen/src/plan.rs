//! Scenario plans: which user connects where, which threads exist, who sends in them. Pure
//! functions of the arguments and the user list, so every worker and the verifier agree.

use std::net::{Ipv4Addr, SocketAddr};

use crate::ipc::{ConnSpec, ThreadRole, ThreadSetup};
use crate::users::UserRecord;

/// A planned run: one connection per user, and the members of every logical thread.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub conns: Vec<ConnSpec>,
    /// Members (user indices) of each logical thread, indexed by thread key.
    pub members: Vec<Vec<u32>>,
}

/// Where connections go: servers round robin, then source addresses round robin.
#[derive(Debug, Clone)]
pub struct Placement {
    pub servers: Vec<SocketAddr>,
    pub source_ips: u32,
}

impl Placement {
    fn place(&self, i: usize) -> (SocketAddr, Ipv4Addr) {
        let server = self.servers[i % self.servers.len()];
        let source = (i / self.servers.len()) as u32 % self.source_ips.max(1);
        (server, source_ip(source))
    }
}

/// The n-th source address: 127.0.0.1, 127.0.0.2, … 127.0.0.255, 127.0.1.0, …
pub fn source_ip(n: u32) -> Ipv4Addr {
    let x = n + 1;
    Ipv4Addr::new(127, (x >> 16) as u8, (x >> 8) as u8, x as u8)
}

impl Plan {
    fn with_users(users: &[UserRecord], n: usize, at: &Placement) -> Self {
        let conns = users[..n]
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let (server, source) = at.place(i);
                ConnSpec {
                    user: i as u32,
                    token: hex::encode(&u.token),
                    server,
                    source,
                    threads: Vec::new(),
                    contacts: Vec::new(),
                    key: None,
                }
            })
            .collect();
        Self {
            conns,
            members: Vec::new(),
        }
    }

    fn thread(&mut self, members: Vec<u32>) -> u32 {
        self.members.push(members);
        (self.members.len() - 1) as u32
    }

    /// A direct thread of users `a` and `b`: `a` opens it and sends; `b` sends too when
    /// `both_send`.
    fn direct_pair(&mut self, users: &[UserRecord], a: u32, b: u32, both_send: bool) {
        let key = self.thread(vec![a, b]);
        let peer = users[b as usize].id;
        self.role(a, key, true, Some(ThreadSetup::OpenDirect { peer }));
        self.role(b, key, both_send, None);
    }

    fn role(&mut self, user: u32, key: u32, send: bool, setup: Option<ThreadSetup>) {
        self.conns[user as usize]
            .threads
            .push(ThreadRole { key, send, setup });
    }

    /// Idle connections, no threads.
    pub fn connect(users: &[UserRecord], n: usize, at: &Placement) -> Self {
        Self::with_users(users, n, at)
    }

    /// Pair p: user 2p sends to user 2p+1 in their direct thread (thread key p).
    pub fn chat(users: &[UserRecord], pairs: usize, at: &Placement) -> Self {
        let mut plan = Self::with_users(users, pairs * 2, at);
        for p in 0..pairs as u32 {
            let (a, b) = (2 * p, 2 * p + 1);
            plan.direct_pair(users, a, b, false);
        }
        plan
    }

    /// Group g: users g·m … g·m+m-1; the first creates it, the first `publishers` send.
    pub fn group(
        users: &[UserRecord],
        groups: usize,
        members: usize,
        publishers: usize,
        chunk: usize,
        run_id: u32,
        at: &Placement,
    ) -> Self {
        let mut plan = Self::with_users(users, groups * members, at);
        for g in 0..groups {
            let idx: Vec<u32> = (g * members..(g + 1) * members).map(|u| u as u32).collect();
            let key = plan.thread(idx.clone());
            let others: Vec<u64> = idx[1..].iter().map(|&u| users[u as usize].id).collect();
            let name = format!("lg-{run_id:08x}-{g}");
            for (k, &u) in idx.iter().enumerate() {
                let setup = (k == 0).then(|| ThreadSetup::CreateGroup {
                    name: name.clone(),
                    members: others.clone(),
                    chunk,
                });
                plan.role(u, key, k < publishers.max(1), setup);
            }
        }
        plan
    }

    /// Circles of about `circle` friends: a group of the circle where everyone writes, a ring
    /// of direct threads where both sides write, ring neighbours as contacts with presence.
    pub fn mixed(
        users: &[UserRecord],
        n: usize,
        circle: usize,
        run_id: u32,
        at: &Placement,
    ) -> Self {
        let mut plan = Self::with_users(users, n, at);
        let circles = (n / circle.max(2)).max(1);
        for c in 0..circles {
            let idx: Vec<u32> = (c..n).step_by(circles).map(|u| u as u32).collect();
            if idx.len() < 2 {
                continue;
            }
            let key = plan.thread(idx.clone());
            let others: Vec<u64> = idx[1..].iter().map(|&u| users[u as usize].id).collect();
            let name = format!("lg-{run_id:08x}-c{c}");
            for (k, &u) in idx.iter().enumerate() {
                let setup = (k == 0).then(|| ThreadSetup::CreateGroup {
                    name: name.clone(),
                    members: others.clone(),
                    chunk: 256,
                });
                plan.role(u, key, true, setup);
            }
            let ring = if idx.len() == 2 { 1 } else { idx.len() };
            for k in 0..ring {
                let (a, b) = (idx[k], idx[(k + 1) % idx.len()]);
                plan.direct_pair(users, a, b, true);
                let (ida, idb) = (users[a as usize].id, users[b as usize].id);
                plan.conns[a as usize].contacts.push(idb);
                plan.conns[b as usize].contacts.push(ida);
            }
        }
        plan
    }

    /// Members of a logical thread.
    pub fn members_of(&self, key: u32) -> &[u32] {
        self.members.get(key as usize).map_or(&[], Vec::as_slice)
    }

    /// Splits the connections over `workers`: connection i goes to worker i mod workers, so
    /// both ends of a thread usually live in different processes.
    pub fn split(&self, workers: usize) -> Vec<Vec<ConnSpec>> {
        let mut out = vec![Vec::new(); workers.max(1)];
        let k = out.len();
        for (i, c) in self.conns.iter().enumerate() {
            out[i % k].push(c.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(n: usize) -> Vec<UserRecord> {
        (0..n)
            .map(|i| UserRecord {
                id: 100 + i as u64,
                handle: format!("u{i}"),
                token: vec![i as u8],
            })
            .collect()
    }

    fn at() -> Placement {
        Placement {
            servers: vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
            source_ips: 3,
        }
    }

    #[test]
    fn source_addresses_count_up_from_127_0_0_1() {
        assert_eq!(source_ip(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(254), Ipv4Addr::new(127, 0, 0, 255));
        assert_eq!(source_ip(255), Ipv4Addr::new(127, 0, 1, 0));
    }

    #[test]
    fn chat_pairs_one_sender_one_receiver_spread_over_servers_and_sources() {
        let plan = Plan::chat(&users(10), 4, &at());
        assert_eq!(plan.conns.len(), 8);
        assert_eq!(
            plan.members,
            vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]]
        );
        assert!(plan.conns[0].threads[0].send && !plan.conns[1].threads[0].send);
        assert_eq!(
            plan.conns[0].threads[0].setup,
            Some(ThreadSetup::OpenDirect { peer: 101 })
        );
        assert_ne!(plan.conns[0].server, plan.conns[1].server);
        let sources: std::collections::BTreeSet<_> = plan.conns.iter().map(|c| c.source).collect();
        assert_eq!(sources.len(), 3);
        let split = plan.split(3);
        assert_eq!(
            split.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 2]
        );
    }

    #[test]
    fn group_creator_adds_everyone_else_and_publishers_send() {
        let plan = Plan::group(&users(12), 2, 5, 2, 2, 7, &at());
        assert_eq!(plan.members[1], vec![5, 6, 7, 8, 9]);
        match &plan.conns[5].threads[0].setup {
            Some(ThreadSetup::CreateGroup {
                members, chunk: 2, ..
            }) => assert_eq!(members, &vec![106, 107, 108, 109]),
            other => panic!("{other:?}"),
        }
        let senders: Vec<u32> = plan
            .conns
            .iter()
            .filter(|c| c.threads[0].send)
            .map(|c| c.user)
            .collect();
        assert_eq!(senders, vec![0, 1, 5, 6]);
    }

    #[test]
    fn mixed_circles_cover_every_user_with_a_group_and_two_directs() {
        let plan = Plan::mixed(&users(20), 20, 5, 1, &at());
        for c in &plan.conns {
            assert_eq!(c.threads.len(), 3, "user {}", c.user);
            assert_eq!(c.contacts.len(), 2);
        }
        for (key, m) in plan.members.iter().enumerate() {
            for &u in m {
                assert!(plan.conns[u as usize]
                    .threads
                    .iter()
                    .any(|t| t.key == key as u32));
            }
        }
        let tiny = Plan::mixed(&users(2), 2, 8, 1, &at());
        assert_eq!(tiny.members.len(), 2);
    }
}
