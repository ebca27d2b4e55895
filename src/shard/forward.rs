//! A shard's side of request forwarding: chat requests of this node's users that need another
//! node go there as `FORWARD`, with a deadline in the shard's [`Pending`] table; answers come
//! back as [`ShardMsg::Answer`]; answers and pushes for other nodes' connections and users
//! leave over the links. See `cluster::forward` for the whole picture.
//!
//! **Users of other nodes.** OPEN_DIRECT, CREATE_GROUP, ADD_MEMBERS and CONTACT_ADD name users
//! whose existence the engine checks (`UNKNOWN_USER`), and GET_USERS names users to describe.
//! When one of them is homed elsewhere than where the request runs, this shard first *gathers*
//! them: it looks up its own node's users in the store and asks every other home with an
//! internal GET_USERS (tracked in the same table, under [`INTERNAL_SLOT`]). GET_USERS is then
//! answered here from what was gathered; the other requests run (here or forwarded) with
//! [`UsersChecked`] telling the engine what was found, so the engine answers `UNKNOWN_USER` at
//! the same point of its checks as on a single node. CONTACT_LIST of a user with contacts on
//! other nodes gathers their handles the same way. PRESENCE_QUERY naming users of other nodes
//! gathers their presence from their homes the same way (an internal PRESENCE_QUERY per home;
//! the caller's contacts were checked here, where they live).
//!
//! [`ShardMsg::Answer`]: super::mailbox::ShardMsg::Answer

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use courier_protocol::peer::{Forward, PushBatch};
use courier_protocol::wire::{Tail, Wire};
use courier_protocol::{
    decode_one, Contacts, ErrorCode, Frame, GetUsers, MessageKind, Presence, PresenceList,
    PresenceQuery, UserInfo, Users, MAX_FRAME_LEN,
};

use super::Shard;
use crate::caller::{Caller, ConnRef, UsersChecked};
use crate::chat::{check_get_users, held_for_send};
use crate::cluster::forward::{
    origin_of, reply_to, request_id_of, Key, Pending, FORWARD_TIMEOUT, INTERNAL_SLOT, MAX_PENDING,
};
use crate::cluster::links::{LinkError, NodeIndex, Payload};
use crate::cluster::{thread_of, Router};

/// Users asked of one node in one internal GET_USERS: 100 fit the GET_USERS limit of a node
/// with a `max_frame` as low as 5 KiB (`max_frame / 45`), so the check never meets it.
const CHECK_CHUNK: usize = 100;

/// A shard's forwarding state.
pub(super) struct Forwarder {
    /// Forwarded requests in flight, this shard's connections' and its own user checks.
    pub(super) pending: Pending,
    /// Requests waiting for their named users to be checked, by id (`ConnRef::gen` of the
    /// internal requests). Each has at least one entry in `pending`, so they are bounded by it.
    gathers: HashMap<u32, Gather>,
    next_gather: u32,
    /// Requests other nodes forwarded here whose answer has not left yet: the lane it goes
    /// back on (the request's, so that one thread's answers and pushes share a link and keep
    /// their order). An entry leaves with the answer; TYPING, never answered, gets none.
    reply_lanes: HashMap<(ConnRef, u32), u64>,
    /// Scratch: (home node, user) of a push's recipients on other nodes.
    remote: Vec<(u16, u64)>,
    expired: Vec<(Key, u16)>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder {
            pending: Pending::new(MAX_PENDING, FORWARD_TIMEOUT),
            gathers: HashMap::new(),
            next_gather: 0,
            reply_lanes: HashMap::new(),
            remote: Vec::new(),
            expired: Vec::new(),
        }
    }
}

/// A request waiting for the users it names.
struct Gather {
    conn: ConnRef,
    request_id: u32,
    caller: Caller,
    frame: Frame,
    /// Where it runs once checked (`None`: here); GET_USERS is answered here instead.
    target: Option<u16>,
    /// A CONTACT_LIST: the GET_USERS of the contacts' ids is answered as CONTACTS.
    contacts: bool,
    /// Internal requests not answered yet.
    waiting: u32,
    /// Distinct users to check; those found (each once: a home answers for each user it
    /// was asked about and has).
    asked: usize,
    found: Vec<UserInfo>,
    /// A PRESENCE_QUERY: the presence of the users asked, this node's and the homes' answers.
    presence: Vec<Presence>,
}

impl Shard {
    fn local_node(&self) -> u16 {
        self.core.router.local_index()
    }

    /// Milliseconds since this shard started: the unit of forwarding deadlines.
    pub(super) fn now_ms64(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs a chat request of a user of this node: here, or on the node it needs.
    pub(super) fn chat_request(
        &mut self,
        slot: usize,
        mut caller: Caller,
        request_id: u32,
        frame: Frame,
    ) {
        if matches!(frame, Frame::ContactList(_)) && self.core.links.is_some() {
            return self.contact_list(slot, caller, request_id, frame);
        }
        let router = &self.core.router;
        let mut target = router.remote_node(caller.user, &frame);
        if target.is_some() {
            match &frame {
                // Media the sender uploaded lives here: the owner takes this node's word.
                Frame::Send(f)
                    if f.kind == MessageKind::Media
                        && held_for_send(&self.core.chat, &caller, f.thread, &f.body) =>
                {
                    caller.checked = UsersChecked::MediaHeld;
                }
                // The uploader reads their own media here, whatever thread it names.
                Frame::MediaGet(f) if self.uploaded_here(caller.user, &f.media) => target = None,
                _ => {}
            }
        }
        let router = &self.core.router;
        let runs_on = target.unwrap_or(router.local_index());
        let named = Router::named_users(&frame);
        if named.iter().any(|&u| router.user_node(u) != runs_on) {
            return self.gather(slot, caller, request_id, frame, target);
        }
        match target {
            Some(node) => {
                let handles = match self.direct_handles(&caller, &frame, Vec::new()) {
                    Ok(handles) => handles,
                    Err(e) => return self.internal(slot, request_id, &e),
                };
                self.forward(slot, caller, request_id, frame, node, handles)
            }
            None => self.run_here(slot, caller, request_id, frame),
        }
    }

    /// Whether `user` uploaded the media `media` names on this node (their home).
    fn uploaded_here(&self, user: u64, media: &[u8]) -> bool {
        let Ok(media) = <[u8; 32]>::try_from(media) else {
            return false;
        };
        self.core
            .chat
            .store
            .is_media_owner(&media, user)
            .unwrap_or(false)
    }

    /// The handles an `OPEN_DIRECT` carries to where it runs: the caller's (a user of this
    /// node) and what was gathered of the peer, so that the owner of the pair can store both
    /// with a direct thread it creates even when it holds neither user (`Engine::handle_with`).
    /// Empty for every other request.
    fn direct_handles(
        &self,
        caller: &Caller,
        frame: &Frame,
        mut found: Vec<UserInfo>,
    ) -> Result<Vec<UserInfo>, crate::store::Error> {
        if !matches!(frame, Frame::OpenDirect(_)) {
            return Ok(Vec::new());
        }
        if let Some(me) = self.core.chat.store.user(caller.user)? {
            found.push(UserInfo {
                id: caller.user,
                handle: me.handle,
            });
        }
        Ok(found)
    }

    /// Sends a request to `node`, tracked until its answer or its deadline. TYPING is neither
    /// tracked nor answered. `handles`: see [`direct_handles`](Self::direct_handles).
    fn forward(
        &mut self,
        slot: usize,
        caller: Caller,
        request_id: u32,
        frame: Frame,
        node: u16,
        handles: Vec<UserInfo>,
    ) {
        let typing = matches!(frame, Frame::Typing(_));
        let key = Key {
            slot: caller.conn.slot,
            gen: caller.conn.gen,
            request_id,
        };
        if !typing && !self.fwd.pending.insert(key, node, self.now_ms64()) {
            let message = format!(
                "too many requests are waiting for other nodes of the cluster (node {}); retry in a moment",
                self.core.router.node_id(node)
            );
            return self.reply_error(slot, request_id, ErrorCode::RateLimited, &message);
        }
        let lane = Router::lane(caller.user, &frame);
        if let Err(e) = self.send_forward(node, lane, caller, request_id, &frame, handles) {
            if !typing {
                self.fwd.pending.remove(key);
                self.link_refused(slot, request_id, node, e);
            }
        }
    }

    fn send_forward(
        &mut self,
        node: u16,
        lane: u64,
        caller: Caller,
        request_id: u32,
        frame: &Frame,
        handles: Vec<UserInfo>,
    ) -> Result<(), LinkError> {
        let bytes = self.encode(request_id, frame);
        let Some(links) = &self.core.links else {
            return Err(LinkError::Down);
        };
        let payload = Payload::Forward(Forward {
            lane,
            origin: origin_of(caller.conn),
            request_id,
            user: caller.user,
            device: caller.device,
            frame: bytes,
            checked: caller.checked,
            handles: Tail((!handles.is_empty()).then_some(handles)),
        });
        links.send(NodeIndex(node), lane, payload)?;
        if let Some(m) = links.peer_metrics(NodeIndex(node)) {
            m.forwards.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sends one internal request `ask` of gather `id` (its caller `internal`) to `node`, tracked
    /// in the same table as forwards. If it cannot be sent, the client's request (`slot`,
    /// `request_id`) is answered
    /// (`RATE_LIMITED` for a full table, or what the links refused) and the answer is false:
    /// the caller gives up the gather.
    fn ask_part(
        &mut self,
        (slot, request_id): (usize, u32),
        g: &mut Gather,
        id: u32,
        internal: Caller,
        node: u16,
        ask: &Frame,
    ) -> bool {
        g.waiting += 1;
        let key = Key {
            slot: INTERNAL_SLOT,
            gen: id,
            request_id: g.waiting,
        };
        if !self.fwd.pending.insert(key, node, self.now_ms64()) {
            let message = format!(
                "too many requests are waiting for other nodes of the cluster (node {}); retry in a moment",
                self.core.router.node_id(node)
            );
            self.reply_error(slot, request_id, ErrorCode::RateLimited, &message);
            return false;
        }
        if let Err(e) = self.send_forward(node, u64::from(id), internal, g.waiting, ask, Vec::new())
        {
            self.fwd.pending.remove(key);
            self.link_refused(slot, request_id, node, e);
            return false;
        }
        true
    }

    /// Answers a request the links did not take.
    fn link_refused(&mut self, slot: usize, request_id: u32, node: u16, e: LinkError) {
        let id = self.core.router.node_id(node).to_owned();
        let (code, message) = match e {
            LinkError::Down => (
                ErrorCode::Unavailable,
                format!(
                    "node {id} of the cluster, which this request needs (the thread or user lives there), \
                     is unreachable; nothing was changed: retry in a moment"
                ),
            ),
            LinkError::Full => (
                ErrorCode::RateLimited,
                format!("the link to node {id} of the cluster is full; nothing was changed: retry in a moment"),
            ),
        };
        self.reply_error(slot, request_id, code, &message);
    }

    /// Checks the users `frame` names before it runs (see the module docs).
    fn gather(
        &mut self,
        slot: usize,
        caller: Caller,
        request_id: u32,
        frame: Frame,
        target: Option<u16>,
    ) {
        self.gather_as(slot, caller, request_id, frame, target, false)
    }

    /// CONTACT_LIST of a user with contacts on other nodes: their handles are there. The
    /// contacts are read here (they live with their user) and described like a GET_USERS of
    /// their ids, answered as CONTACTS in the store's order, as the engine answers it.
    fn contact_list(&mut self, slot: usize, caller: Caller, request_id: u32, frame: Frame) {
        let ids = match self.core.chat.store.contacts(caller.user) {
            Ok(ids) => ids,
            Err(e) => return self.internal(slot, request_id, &e),
        };
        let local = self.local_node();
        if ids.iter().all(|&u| self.core.router.user_node(u) == local) {
            return self.run_here(slot, caller, request_id, frame);
        }
        let frame = Frame::GetUsers(GetUsers { users: ids });
        self.gather_as(slot, caller, request_id, frame, None, true)
    }

    fn gather_as(
        &mut self,
        slot: usize,
        caller: Caller,
        request_id: u32,
        frame: Frame,
        target: Option<u16>,
        contacts: bool,
    ) {
        let mut users = Router::named_users(&frame).to_vec();
        users.sort_unstable();
        users.dedup();
        match &frame {
            Frame::GetUsers(f) if !contacts => {
                if let Err((code, message)) = check_get_users(&self.core.chat.config, &f.users) {
                    return self.reply_error(slot, request_id, code, message);
                }
            }
            // More members than a group may have: the engine refuses it (GROUP_FULL) before
            // it looks any user up, so there is nothing to check.
            Frame::CreateGroup(_) | Frame::AddMembers(_)
                if users.len() > self.core.chat.config.max_group =>
            {
                return match target {
                    Some(node) => self.forward(slot, caller, request_id, frame, node, Vec::new()),
                    None => self.run_here(slot, caller, request_id, frame),
                };
            }
            _ => {}
        }
        let id = self.fwd.next_gather;
        self.fwd.next_gather = id.wrapping_add(1);
        let mut g = Gather {
            conn: caller.conn,
            request_id,
            caller,
            frame,
            target,
            contacts,
            waiting: 0,
            asked: users.len(),
            found: Vec::new(),
            presence: Vec::new(),
        };
        let local = self.local_node();
        let core = self.core.clone();
        let router = &core.router;
        let mut remote: Vec<(u16, u64)> = Vec::new();
        for &u in &users {
            let node = router.user_node(u);
            if node != local {
                remote.push((node, u));
                continue;
            }
            match core.chat.store.user(u) {
                Ok(Some(rec)) => g.found.push(UserInfo {
                    id: u,
                    handle: rec.handle,
                }),
                Ok(None) => {}
                Err(e) => return self.internal(slot, request_id, &e),
            }
        }
        remote.sort_unstable();
        let me = ConnRef {
            node: local,
            shard: self.id,
            slot: INTERNAL_SLOT,
            gen: id,
        };
        let internal = Caller {
            conn: me,
            checked: UsersChecked::No,
            ..caller
        };
        for group in remote.chunk_by(|a, b| a.0 == b.0) {
            let node = group[0].0;
            for chunk in group.chunks(CHECK_CHUNK) {
                let ask = Frame::GetUsers(GetUsers {
                    users: chunk.iter().map(|&(_, u)| u).collect(),
                });
                if !self.ask_part((slot, request_id), &mut g, id, internal, node, &ask) {
                    return;
                }
            }
        }
        if g.waiting == 0 {
            return self.finish_gather(g);
        }
        self.fwd.gathers.insert(id, g);
    }

    /// One internal GET_USERS answered (`bytes`: USERS or an error).
    fn gathered(&mut self, id: u32, bytes: Bytes) {
        let Some(g) = self.fwd.gathers.get_mut(&id) else {
            return;
        };
        match decode_one(bytes, MAX_FRAME_LEN).map(|e| e.frame) {
            Ok(Frame::Users(Users { users })) => {
                g.found.extend(users);
                g.waiting -= 1;
                // The home answers only for users it has: a user it left out does not exist.
                if g.waiting == 0 {
                    if let Some(g) = self.fwd.gathers.remove(&id) {
                        self.finish_gather(g);
                    }
                }
            }
            Ok(Frame::PresenceList(PresenceList { entries })) => {
                g.presence.extend(entries);
                g.waiting -= 1;
                if g.waiting == 0 {
                    if let Some(g) = self.fwd.gathers.remove(&id) {
                        self.finish_gather(g);
                    }
                }
            }
            Ok(Frame::ErrorReply(e)) => {
                let g = self.fwd.gathers.remove(&id);
                if let Some(slot) = g.as_ref().and_then(|g| self.local_slot(g.conn)) {
                    let code = ErrorCode::from_u16(e.code).unwrap_or(ErrorCode::Internal);
                    let request_id = g.map_or(0, |g| g.request_id);
                    self.reply_error(slot, request_id, code, &e.message);
                }
            }
            other => {
                tracing::warn!(shard = self.id, answer = ?other.map(|f| f.name()), "cluster: a user check got an answer that is not USERS; answered INTERNAL");
                if let Some(g) = self.fwd.gathers.remove(&id) {
                    if let Some(slot) = self.local_slot(g.conn) {
                        self.internal(slot, g.request_id, &"unexpected answer to a user check");
                    }
                }
            }
        }
    }

    /// Every named user is checked: answer GET_USERS, or run the request.
    fn finish_gather(&mut self, g: Gather) {
        let Some(slot) = self.local_slot(g.conn) else {
            return;
        };
        let mut caller = g.caller;
        match g.frame {
            Frame::PresenceQuery(q) => {
                // In the order asked, exactly as one node answers; every home answers for
                // every user it was asked about.
                let by_user: HashMap<u64, &Presence> =
                    g.presence.iter().map(|p| (p.user, p)).collect();
                let entries = q
                    .users
                    .iter()
                    .map(|u| {
                        by_user.get(u).map_or(
                            Presence {
                                user: *u,
                                online: false,
                                last_seen: 0,
                            },
                            |p| (*p).clone(),
                        )
                    })
                    .collect();
                self.send(
                    slot,
                    g.request_id,
                    &Frame::PresenceList(PresenceList { entries }),
                );
            }
            Frame::GetUsers(f) => {
                // In the order asked, as a single node answers: unknown ids are left out.
                let found: HashMap<u64, String> =
                    g.found.into_iter().map(|u| (u.id, u.handle)).collect();
                let users = f.users.iter().filter_map(|id| {
                    found.get(id).map(|h| UserInfo {
                        id: *id,
                        handle: h.clone(),
                    })
                });
                if !g.contacts {
                    let users = users.collect();
                    return self.send(slot, g.request_id, &Frame::Users(Users { users }));
                }
                // As the engine's CONTACT_LIST: one frame, cut at the reply budget.
                let budget = self.core.chat.config.max_reply_bytes.saturating_sub(16);
                let mut size = 0;
                let mut list = Vec::new();
                for info in users {
                    size += info.size();
                    if size > budget || list.len() == u16::MAX as usize {
                        tracing::warn!(
                            user = g.caller.user,
                            "CONTACTS cut at the reply budget: the user has more contacts than the cap"
                        );
                        break;
                    }
                    list.push(info);
                }
                self.send(
                    slot,
                    g.request_id,
                    &Frame::Contacts(Contacts { users: list }),
                );
            }
            frame => {
                caller.checked = if g.found.len() < g.asked {
                    UsersChecked::SomeMissing
                } else {
                    UsersChecked::AllExist
                };
                let handles = match self.direct_handles(&caller, &frame, g.found) {
                    Ok(handles) => handles,
                    Err(e) => return self.internal(slot, g.request_id, &e),
                };
                match g.target {
                    Some(node) => self.forward(slot, caller, g.request_id, frame, node, handles),
                    None => self.run_here_with(slot, caller, g.request_id, frame, handles),
                }
            }
        }
    }

    /// A PRESENCE_QUERY naming users of other nodes (contacts checked already): this node's
    /// users are read here, the others asked of their homes, one internal PRESENCE_QUERY per
    /// node under the same deadline as any forward; answered in `finish_gather`.
    pub(super) fn presence_gather(
        &mut self,
        slot: usize,
        caller: Caller,
        request_id: u32,
        users: Vec<u64>,
    ) {
        let id = self.fwd.next_gather;
        self.fwd.next_gather = id.wrapping_add(1);
        let local = self.local_node();
        let now = crate::clock::wall_us();
        let mut remote: Vec<(u16, u64)> = Vec::new();
        let mut here = Vec::new();
        for &u in &users {
            let node = self.core.router.user_node(u);
            if node != local {
                remote.push((node, u));
                continue;
            }
            match self.presence_of(u, now) {
                Ok(p) => here.push(p),
                Err(e) => return self.internal(slot, request_id, &e),
            }
        }
        remote.sort_unstable();
        remote.dedup();
        let mut g = Gather {
            conn: caller.conn,
            request_id,
            caller,
            frame: Frame::PresenceQuery(PresenceQuery { users }),
            target: None,
            contacts: false,
            waiting: 0,
            asked: 0,
            found: Vec::new(),
            presence: here,
        };
        let internal = Caller {
            conn: ConnRef {
                node: local,
                shard: self.id,
                slot: INTERNAL_SLOT,
                gen: id,
            },
            ..caller
        };
        // At most the contact cap in all (checked by the caller), so one request per node.
        for group in remote.chunk_by(|a, b| a.0 == b.0) {
            let node = group[0].0;
            let ask = Frame::PresenceQuery(PresenceQuery {
                users: group.iter().map(|&(_, u)| u).collect(),
            });
            if !self.ask_part((slot, request_id), &mut g, id, internal, node, &ask) {
                return;
            }
        }
        if g.waiting == 0 {
            return self.finish_gather(g);
        }
        self.fwd.gathers.insert(id, g);
    }

    /// A `FORWARD_REPLY` for `to` arrived: delivered if its request is still in flight.
    pub(super) fn on_answer(&mut self, to: ConnRef, bytes: Bytes) {
        let key = Key {
            slot: to.slot,
            gen: to.gen,
            request_id: request_id_of(&bytes),
        };
        if self.fwd.pending.remove(key).is_none() {
            // Answered UNAVAILABLE already (or never asked): the client was told to retry.
            return;
        }
        if to.slot == INTERNAL_SLOT {
            return self.gathered(to.gen, bytes);
        }
        if let Some(slot) = self.local_slot(to) {
            self.queue(slot, bytes);
        }
    }

    /// Answers `UNAVAILABLE` for every forwarded request past its deadline.
    pub(super) fn expire_forwards(&mut self) {
        if self
            .fwd
            .pending
            .next_deadline()
            .is_none_or(|d| d > self.now_ms64())
        {
            return;
        }
        let mut expired = std::mem::take(&mut self.fwd.expired);
        self.fwd.pending.expire(self.now_ms64(), &mut expired);
        let local = self.local_node();
        for (key, node) in expired.drain(..) {
            if let Some(m) = self
                .core
                .links
                .as_ref()
                .and_then(|l| l.peer_metrics(NodeIndex(node)))
            {
                m.forward_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            let (conn, request_id) = if key.slot == INTERNAL_SLOT {
                match self.fwd.gathers.remove(&key.gen) {
                    Some(g) => (g.conn, g.request_id),
                    None => continue,
                }
            } else {
                let conn = ConnRef {
                    node: local,
                    shard: self.id,
                    slot: key.slot,
                    gen: key.gen,
                };
                (conn, key.request_id)
            };
            if let Some(slot) = self.local_slot(conn) {
                let message = format!(
                    "node {} of the cluster did not answer within 2 s; the request may or may not have been \
                     applied: retry it (SEND with the same client message id is idempotent)",
                    self.core.router.node_id(node)
                );
                self.reply_error(slot, request_id, ErrorCode::Unavailable, &message);
            }
        }
        self.fwd.expired = expired;
    }

    /// How long until the next forwarding deadline, if any.
    pub(super) fn next_forward_deadline(&self) -> Option<std::time::Duration> {
        let due = self.fwd.pending.next_deadline()?;
        Some(std::time::Duration::from_millis(
            due.saturating_sub(self.now_ms64()),
        ))
    }

    /// A request another node forwarded is about to run here: remember its lane for the
    /// answer. Bounded: requests are answered in the round that runs them, so the map holds
    /// about one round's forwarded requests; should it ever pass the cap, it is emptied (the
    /// answers then take a lane of their own, still delivered, possibly out of order with the
    /// thread's pushes).
    pub(super) fn note_lane(&mut self, conn: ConnRef, request_id: u32, lane: u64) {
        if self.fwd.reply_lanes.len() >= MAX_PENDING {
            tracing::warn!(
                shard = self.id,
                "cluster: too many forwarded requests without an answer; forgetting their lanes"
            );
            self.fwd.reply_lanes.clear();
        }
        self.fwd.reply_lanes.insert((conn, request_id), lane);
    }

    /// Sends an encoded answer to a connection of another node (`FORWARD_REPLY`). If the
    /// link does not take it, the origin answers `UNAVAILABLE` at its deadline.
    pub(super) fn reply_remote(&mut self, to: ConnRef, request_id: u32, bytes: Bytes) {
        let lane = self
            .fwd
            .reply_lanes
            .remove(&(to, request_id))
            .unwrap_or(u64::from(to.slot) << 32 | u64::from(to.gen));
        if let Some(links) = &self.core.links {
            let _ = links.send(NodeIndex(to.node), lane, reply_to(to, bytes));
        }
    }

    /// Sends one push to the users of `users` homed on other nodes: one `PUSH_BATCH` per
    /// node, the push encoded once. Returns having removed nothing from `users`; the caller
    /// delivers to this node's users. A node that is down misses the push (counted): its
    /// users catch up with SYNC. `notify`: users of other nodes to consider for a push
    /// notification of this message (members, so recipients of the push too), each sent to
    /// its home in that node's batch.
    pub(super) fn push_remote(
        &mut self,
        users: &[u64],
        except: Option<ConnRef>,
        frame: &Frame,
        bytes: &Bytes,
        notify: Option<&[u64]>,
    ) {
        let Some(links) = &self.core.links else {
            return;
        };
        let local = self.core.router.local_index();
        let mut remote = std::mem::take(&mut self.fwd.remote);
        remote.clear();
        remote.extend(
            users
                .iter()
                .map(|&u| (self.core.router.user_node(u), u))
                .filter(|&(node, _)| node != local),
        );
        let notify: Vec<(u16, u64)> = notify
            .unwrap_or_default()
            .iter()
            .map(|&u| (self.core.router.user_node(u), u))
            .filter(|&(node, _)| node != local)
            .collect();
        if remote.is_empty() {
            self.fwd.remote = remote;
            return;
        }
        remote.sort_unstable();
        let lane = thread_of(frame).unwrap_or(0);
        for group in remote.chunk_by(|a, b| a.0 == b.0) {
            let node = group[0].0;
            let to_notify: Vec<u64> = notify
                .iter()
                .filter(|&&(n, _)| n == node)
                .map(|&(_, u)| u)
                .collect();
            let batch = PushBatch {
                users: group.iter().map(|&(_, u)| u).collect(),
                except: except.filter(|e| e.node == node).map(origin_of),
                frame: bytes.clone(),
                notify: if to_notify.is_empty() {
                    Tail::default()
                } else {
                    Tail::some(to_notify)
                },
            };
            let sent = links.send(NodeIndex(node), lane, Payload::PushBatch(batch));
            if let Some(m) = links.peer_metrics(NodeIndex(node)) {
                let counter = if sent.is_ok() {
                    &m.push_batches
                } else {
                    &m.push_dropped
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.fwd.remote = remote;
    }
}
