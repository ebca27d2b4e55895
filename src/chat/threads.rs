//! Threads: the owner shard's cache, the views members see, direct threads, thread state and
//! THREAD_LIST. Group membership changes are in `groups.rs`.

use std::collections::VecDeque;

use crate::hash::Map;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use courier_protocol::wire::Wire;
use courier_protocol::{
    ErrorCode, Frame, ListThreads, Member, MessageKind, MessagePush, Role, SetThreadState,
    SystemEvent, SystemEventKind, Thread, ThreadInfo, ThreadKind, ThreadList, ThreadSummary,
};

use super::edits;
use super::engine::{Engine, Reject};
use super::messages::to_wire;
use super::Shared;
use crate::caller::{Caller, UsersChecked};
use crate::cluster::partition;
use crate::store::{MemberRecord, MessageRecord, PrivateState, Store, ThreadRecord, Visit};

/// Longest group name or private label, in bytes.
pub(super) const MAX_NAME: usize = 64;
/// Most thread summaries in one THREAD_LIST.
const MAX_LIST: usize = 100;
/// Thread summaries when LIST_THREADS asks for 0 (as HISTORY's 0 means 50 messages).
const DEFAULT_LIST: usize = 50;
/// Unread counts stop at this (clients show "999+").
const UNREAD_CAP: u32 = 999;

/// A thread as its owner shard holds it: authoritative while cached.
pub(super) struct ThreadState {
    pub rec: ThreadRecord,
    pub members: Map<u64, MemberRecord>,
    /// Member ids, shared by every push of the thread until membership changes.
    pub member_ids: Arc<[u64]>,
}

impl ThreadState {
    pub fn new_from(rec: ThreadRecord, members: Map<u64, MemberRecord>) -> Self {
        Self::new(rec, members)
    }

    pub fn new(rec: ThreadRecord, members: Map<u64, MemberRecord>) -> Self {
        let mut s = Self {
            rec,
            members,
            member_ids: Arc::from(Vec::new()),
        };
        s.refresh_ids();
        s
    }

    pub fn refresh_ids(&mut self) {
        let mut ids: Vec<u64> = self.members.keys().copied().collect();
        ids.sort_unstable();
        self.rec.member_count = ids.len() as u32;
        self.member_ids = ids.into();
    }
}

/// Threads owned by one shard, at most `limit` between rounds. Past the limit, CLOCK (second
/// chance) evicts only as many as needed: a thread used since the hand last passed gets its
/// bit cleared and one more turn. A thread used by a round that is not durable yet (the round
/// being built, or the sealed round the commit stage holds) is never evicted: its cached state
/// may be newer than the store (staged writes, dirty records), and a reload would lose that.
/// So the cache may exceed its limit by the threads those rounds touched; `durable` trims it
/// back.
pub(super) struct ThreadCache {
    map: Map<u64, Slot>,
    /// Every cached thread once, in the order the hand visits them (front first).
    ring: VecDeque<u64>,
    limit: usize,
    /// The round being built.
    round: u64,
    /// The oldest round not yet durable; a slot whose `round` is at least this is pinned.
    pinned_from: u64,
    /// A sweep this round found nothing to evict: do not sweep again until the next round.
    stuck: bool,
}

struct Slot {
    state: ThreadState,
    /// Used since the hand last passed.
    referenced: bool,
    /// The last round that used it.
    round: u64,
}

impl ThreadCache {
    pub fn new(limit: usize) -> Self {
        Self {
            map: Map::default(),
            ring: VecDeque::new(),
            limit: limit.max(16),
            round: 0,
            pinned_from: 0,
            stuck: false,
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.ring.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// A cached thread, for reading; does not count as a use.
    pub fn get(&self, thread: u64) -> Option<&ThreadState> {
        self.map.get(&thread).map(|s| &s.state)
    }

    /// A cached thread, for a request of this round: marks it used and pins it until the
    /// round commits.
    pub fn get_mut(&mut self, thread: u64) -> Option<&mut ThreadState> {
        let round = self.round;
        self.map.get_mut(&thread).map(|s| {
            s.referenced = true;
            s.round = round;
            &mut s.state
        })
    }

    /// Caches a thread for this round (pinned until it commits), evicting unpinned threads
    /// while over the limit.
    pub fn insert(&mut self, thread: u64, state: ThreadState) -> &mut ThreadState {
        let slot = Slot {
            state,
            referenced: true,
            round: self.round,
        };
        if self.map.insert(thread, slot).is_none() {
            self.ring.push_back(thread);
        }
        self.evict_to_limit();
        &mut self
            .map
            .get_mut(&thread)
            .expect("a thread pinned this round is never evicted")
            .state
    }

    /// The round committed inline (or failed and the cache was cleared): nothing is pinned
    /// any more, so the cache goes back under its limit.
    pub fn end_round(&mut self) {
        self.seal();
        self.durable();
    }

    /// The round was handed to the commit stage: its threads stay pinned, and the next
    /// round's are pinned too.
    pub fn seal(&mut self) {
        self.round += 1;
    }

    /// Every sealed round is durable: only the round being built pins threads now.
    pub fn durable(&mut self) {
        self.pinned_from = self.round;
        self.stuck = false;
        self.evict_to_limit();
    }

    fn evict_to_limit(&mut self) {
        while self.map.len() > self.limit && !self.stuck {
            if !self.evict_one() {
                self.stuck = true;
            }
        }
    }

    /// Moves the hand until it evicts one thread: false if every thread is pinned.
    fn evict_one(&mut self) -> bool {
        // Two passes: the first may only clear reference bits.
        for _ in 0..2 * self.ring.len() {
            let Some(thread) = self.ring.pop_front() else {
                return false;
            };
            let Some(slot) = self.map.get_mut(&thread) else {
                continue;
            };
            if slot.round >= self.pinned_from {
                self.ring.push_back(thread);
            } else if slot.referenced {
                slot.referenced = false;
                self.ring.push_back(thread);
            } else {
                self.map.remove(&thread);
                return true;
            }
        }
        false
    }
}

/// A thread's view for `viewer`: shared state, members with cursors, private state.
pub(super) fn view(
    store: &Store,
    id: u64,
    state: &ThreadState,
    viewer: u64,
) -> Result<Thread, Reject> {
    let private = store
        .private_state(viewer, id)
        .map_err(internal)?
        .unwrap_or_default();
    let mut members: Vec<Member> = state
        .members
        .iter()
        .map(|(&user, m)| Member {
            user,
            role: if m.admin { Role::Admin } else { Role::Member },
            delivered: m.delivered,
            read: m.read,
        })
        .collect();
    members.sort_unstable_by_key(|m| m.user);
    Ok(Thread {
        id,
        kind: state.rec.kind,
        name: display_name(store, &state.rec, state.members.keys().copied(), viewer),
        members,
        last_msg_id: state.rec.last_msg_id,
        muted: private.muted,
        hidden: still_hidden(store, viewer, id, state.rec.last_msg_id, &private)
            .map_err(internal)?,
        label: private.label,
    })
}

/// What sync shows `viewer` of a thread they left or were removed from (`left` is their
/// tombstone): no members (the viewer among them least of all), nothing private, and as last
/// message the MEMBER_LEFT/MEMBER_REMOVED notice, the last message they may see.
pub(super) fn left_view(id: u64, rec: &ThreadRecord, left: &PrivateState) -> Thread {
    Thread {
        id,
        kind: rec.kind,
        name: rec.name.clone(),
        members: Vec::new(),
        last_msg_id: left.changed_at,
        muted: false,
        hidden: false,
        label: String::new(),
    }
}

/// A group's name, or for a direct thread the other member's handle: the one stored with
/// the thread (the peer may be homed on another node), else the peer's account here (a
/// direct thread created before handles were stored with it).
fn display_name(
    store: &Store,
    rec: &ThreadRecord,
    mut members: impl Iterator<Item = u64>,
    viewer: u64,
) -> String {
    if rec.kind == ThreadKind::Group {
        return rec.name.clone();
    }
    let Some(peer) = members.find(|&u| u != viewer) else {
        return String::new();
    };
    // `handles` is in pair order: the smaller user id's first.
    let stored = match rec.handles.as_slice() {
        [low, high] => Some(if peer < viewer { low } else { high }),
        _ => None,
    };
    match stored {
        Some(handle) if !handle.is_empty() => handle.clone(),
        _ => store
            .user(peer)
            .ok()
            .flatten()
            .map(|u| u.handle)
            .unwrap_or_default(),
    }
}

pub(super) fn internal(e: crate::store::Error) -> Reject {
    tracing::error!(error = %e, "store read failed");
    (
        ErrorCode::Internal,
        "the server could not read its store; retry",
    )
}

/// Encodes a system event as a message body; `users` is for MEMBER_ADDED only.
pub(super) fn system_body(
    event: SystemEventKind,
    actor: u64,
    subject: u64,
    text: &str,
    users: Vec<u64>,
) -> Bytes {
    let ev = SystemEvent {
        event,
        actor,
        subject,
        text: text.into(),
        users,
        ..SystemEvent::default()
    };
    let mut buf = BytesMut::with_capacity(ev.size());
    ev.put(&mut buf);
    buf.freeze()
}

impl Engine {
    /// The cached state of a thread this shard owns, loading it on a miss.
    pub(super) fn thread_state(&mut self, thread: u64) -> Result<&mut ThreadState, Reject> {
        if self.threads.get(thread).is_none() {
            let store = &self.shared.store;
            let rec = store
                .thread(thread)
                .map_err(internal)?
                .ok_or((ErrorCode::UnknownThread, "no such thread"))?;
            let members = store
                .members(thread)
                .map_err(internal)?
                .into_iter()
                .collect();
            return Ok(self.threads.insert(thread, ThreadState::new(rec, members)));
        }
        Ok(self.threads.get_mut(thread).expect("cached: checked above"))
    }

    /// The thread's state, if `caller` is a member.
    pub(super) fn member_state(
        &mut self,
        caller: &Caller,
        thread: u64,
    ) -> Result<&mut ThreadState, Reject> {
        let state = self.thread_state(thread)?;
        if !state.members.contains_key(&caller.user) {
            return Err((ErrorCode::NotMember, "you are not a member of this thread"));
        }
        Ok(state)
    }

    /// Stages `state` as `user`'s membership of `thread`; later requests of this round read it
    /// back through [`private`](Self::private).
    pub(super) fn put_private(&mut self, user: u64, thread: u64, state: PrivateState) {
        self.batch.put_private_state(user, thread, &state);
        self.round_private.insert((user, thread), state);
    }

    /// `user`'s membership of `thread`, this round's staged change included.
    pub(super) fn private(&self, user: u64, thread: u64) -> Result<PrivateState, Reject> {
        if let Some(state) = self.round_private.get(&(user, thread)) {
            return Ok(state.clone());
        }
        Ok(self
            .shared
            .store
            .private_state(user, thread)
            .map_err(internal)?
            .unwrap_or_default())
    }

    /// Marks the record of a thread this shard owns as changed; it is written at commit.
    pub(super) fn save_thread(&mut self, thread: u64) {
        self.dirty_threads.insert(thread);
    }

    /// Marks a member of a thread this shard owns as changed; it is written at commit.
    pub(super) fn save_member(&mut self, thread: u64, user: u64) {
        self.dirty_members.insert((thread, user));
    }

    /// Appends a message to a thread this shard owns and pushes it to every member's devices
    /// (and to `extra` users, e.g. a member just removed). Returns the message id.
    pub(super) fn append(
        &mut self,
        thread: u64,
        rec: MessageRecord,
        except: Option<&Caller>,
        extra: &[u64],
    ) -> Result<u64, Reject> {
        let mut users = self.thread_state(thread)?.member_ids.clone();
        if !extra.is_empty() {
            let mut all = users.to_vec();
            all.extend_from_slice(extra);
            users = all.into();
        }
        self.append_to(thread, rec, except, users)
    }

    /// Like [`append`](Self::append), pushed to `users` only.
    pub(super) fn append_to(
        &mut self,
        thread: u64,
        mut rec: MessageRecord,
        except: Option<&Caller>,
        users: Arc<[u64]>,
    ) -> Result<u64, Reject> {
        let id = self.tick();
        let state = self.thread_state(thread)?;
        state.rec.last_msg_id = id;
        state.rec.changed_at = id;
        if rec.kind != MessageKind::System {
            state.rec.countable += 1;
        }
        rec.seq = state.rec.countable;
        self.batch.put_message(thread, id, &rec);
        self.save_thread(thread);
        let push = MessagePush {
            reply_to: rec.reply_to,
            message: to_wire(thread, id, rec),
        };
        self.push(users, except, push.into());
        Ok(id)
    }

    /// Appends a system event to a thread this shard owns, for every member (and `extra`).
    pub(super) fn system(
        &mut self,
        thread: u64,
        caller: &Caller,
        event: SystemEventKind,
        subject: u64,
        text: &str,
        extra: &[u64],
    ) -> Result<u64, Reject> {
        let body = system_body(event, caller.user, subject, text, Vec::new());
        self.append_system(thread, caller, body, extra)
    }

    /// Appends a SYSTEM message with an encoded event `body`, for every member (and `extra`).
    pub(super) fn append_system(
        &mut self,
        thread: u64,
        caller: &Caller,
        body: Bytes,
        extra: &[u64],
    ) -> Result<u64, Reject> {
        let rec = MessageRecord {
            sender: caller.user,
            client_msg_id: 0,
            kind: MessageKind::System,
            recalled: false,
            body,
            ..Default::default()
        };
        self.append(thread, rec, None, extra)
    }

    /// Whether a user that `caller`'s request names exists: looked up here, unless the node
    /// the request came from has checked (the user is homed on another node, where only that
    /// node could look; see `UsersChecked`).
    pub(super) fn user_exists(&self, caller: &Caller, user: u64) -> Result<(), Reject> {
        match caller.checked {
            UsersChecked::AllExist => return Ok(()),
            UsersChecked::SomeMissing => return Err((ErrorCode::UnknownUser, "no such user")),
            UsersChecked::No | UsersChecked::MediaHeld => {}
        }
        match self.shared.store.user(user).map_err(internal)? {
            Some(_) => Ok(()),
            None => Err((ErrorCode::UnknownUser, "no such user")),
        }
    }

    /// Creates a thread record and its members in this round's batch. The new id is known
    /// to nobody until the reply leaves after the commit, so no other shard can race it.
    /// Its partition: a direct thread's is its user pair's, a group's its creator's
    /// (`cluster::partition`), so every node agrees where a thread lives.
    pub(super) fn create_thread(
        &mut self,
        kind: ThreadKind,
        name: &str,
        creator: u64,
        members: &[u64],
        handles: Vec<String>,
    ) -> Result<u64, Reject> {
        let home = match (kind, members) {
            (ThreadKind::Direct, &[a, b]) => partition::of_pair(a, b),
            _ => partition::of_group(creator),
        };
        let id = self.shared.store.next_thread_id(home).map_err(internal)?;
        let now = self.tick();
        let rec = ThreadRecord {
            kind,
            name: name.into(),
            created_by: creator,
            last_msg_id: 0,
            changed_at: now,
            member_count: members.len() as u32,
            countable: 0,
            handles,
            hidden_upto: 0,
        };
        self.batch.put_thread(id, &rec);
        let mut map = Map::default();
        for &user in members {
            let m = MemberRecord {
                admin: kind == ThreadKind::Group && user == creator,
                delivered: 0,
                read: 0,
                own_floor: 0,
            };
            self.batch.put_member(id, user, &m);
            let joined = PrivateState {
                changed_at: now,
                ..PrivateState::default()
            };
            self.batch.put_private_state(user, id, &joined);
            map.insert(user, m);
        }
        if self.shared.thread_shard(id) == self.shard {
            self.threads.insert(id, ThreadState::new(rec, map));
        }
        Ok(id)
    }

    pub(super) fn open_direct(
        &mut self,
        caller: &Caller,
        peer: u64,
    ) -> Result<Option<Frame>, Reject> {
        if peer == caller.user {
            return Err((
                ErrorCode::InvalidArgument,
                "a direct thread needs another user",
            ));
        }
        self.user_exists(caller, peer)?;
        let pair = (caller.user.min(peer), caller.user.max(peer));
        let existing = match self.round_directs.get(&pair) {
            Some(&t) => Some(t),
            None => self
                .shared
                .store
                .direct_thread(caller.user, peer)
                .map_err(internal)?,
        };
        let store = self.shared.store.clone();
        let thread = match existing {
            Some(t) => t,
            None => {
                let handles = self.pair_handles(pair)?;
                let t = self.create_thread(
                    ThreadKind::Direct,
                    "",
                    caller.user,
                    &[pair.0, pair.1],
                    handles.clone(),
                )?;
                self.batch.put_direct(pair.0, pair.1, t);
                self.round_directs.insert(pair, t);
                // The owner shard loads it from the store after this round's commit.
                let rec = ThreadRecord {
                    kind: ThreadKind::Direct,
                    member_count: 2,
                    created_by: caller.user,
                    handles,
                    ..Default::default()
                };
                let members = [
                    (pair.0, MemberRecord::default()),
                    (pair.1, MemberRecord::default()),
                ]
                .into_iter()
                .collect();
                return Ok(Some(
                    ThreadInfo {
                        thread: view(&store, t, &ThreadState::new(rec, members), caller.user)?,
                    }
                    .into(),
                ));
            }
        };
        // The pair's shard may not own the thread: read the committed state.
        let state = self.read_state(thread)?;
        Ok(Some(
            ThreadInfo {
                thread: view(&store, thread, &state, caller.user)?,
            }
            .into(),
        ))
    }

    /// The handles of a user pair (smaller id first) to store with their new direct thread:
    /// each from the handles the request came with (a user of another node; see
    /// [`handle_with`](Self::handle_with)), else from this node's accounts. Empty if neither
    /// is known (the thread's name is then looked up when it is read, as before).
    fn pair_handles(&self, pair: (u64, u64)) -> Result<Vec<String>, Reject> {
        let mut handles = Vec::with_capacity(2);
        for user in [pair.0, pair.1] {
            let handle = match self.handles.iter().find(|u| u.id == user) {
                Some(u) => u.handle.clone(),
                None => self
                    .shared
                    .store
                    .user(user)
                    .map_err(internal)?
                    .map(|u| u.handle)
                    .unwrap_or_default(),
            };
            handles.push(handle);
        }
        if handles.iter().all(String::is_empty) {
            handles.clear();
        }
        Ok(handles)
    }

    /// A thread's state for reading on any shard: the cache when this shard owns it, else
    /// the store (committed state).
    fn read_state(&mut self, thread: u64) -> Result<ThreadState, Reject> {
        if let Some(s) = self.threads.get(thread) {
            return Ok(ThreadState::new(s.rec.clone(), s.members.clone()));
        }
        let store = &self.shared.store;
        let rec = store
            .thread(thread)
            .map_err(internal)?
            .ok_or((ErrorCode::UnknownThread, "no such thread"))?;
        Ok(ThreadState::new(
            rec,
            store
                .members(thread)
                .map_err(internal)?
                .into_iter()
                .collect(),
        ))
    }

    pub(super) fn get_thread(
        &mut self,
        caller: &Caller,
        thread: u64,
    ) -> Result<Option<Frame>, Reject> {
        let store = self.shared.store.clone();
        let state = self.member_state(caller, thread)?;
        Ok(Some(
            ThreadInfo {
                thread: view(&store, thread, state, caller.user)?,
            }
            .into(),
        ))
    }

    pub(super) fn set_thread_state(
        &mut self,
        caller: &Caller,
        f: SetThreadState,
    ) -> Result<Option<Frame>, Reject> {
        if f.label.len() > MAX_NAME {
            return Err((ErrorCode::InvalidArgument, "a label is at most 64 bytes"));
        }
        let state = self.member_state(caller, f.thread)?;
        let last = state.rec.last_msg_id;
        // Notices about the messages hidden here are then checked against each member's
        // private state before they are pushed (`gone_now`).
        if f.hidden && last > state.rec.hidden_upto {
            state.rec.hidden_upto = last;
            self.save_thread(f.thread);
        }
        // A new change marker, so the caller's other devices get the state from SYNC.
        let state = PrivateState {
            muted: f.muted,
            hidden: f.hidden,
            hidden_upto: if f.hidden { last } else { 0 },
            label: f.label,
            changed_at: self.tick(),
            left: false,
        };
        self.put_private(caller.user, f.thread, state);
        Ok(Some(courier_protocol::Done {}.into()))
    }
}

/// The caller's threads by last message, newest first, from the committed state (runs on the
/// read pool): one prefix scan of memberships and one batched read of records.
/// The rows a LIST_THREADS page holds at most for the `limit` it asked for.
pub fn list_limit(limit: u16) -> usize {
    match limit {
        0 => DEFAULT_LIST,
        n => (n as usize).min(MAX_LIST),
    }
}

pub(super) fn list_threads(
    shared: &Shared,
    caller: &Caller,
    f: ListThreads,
) -> Result<Option<Frame>, Reject> {
    let store = &shared.store;
    let memberships = store.memberships(caller.user).map_err(internal)?;
    let ids: Vec<u64> = memberships.iter().map(|(t, _)| *t).collect();
    let records = store.threads(&ids).map_err(internal)?;
    let mut rows: Vec<(u64, u64, &PrivateState, ThreadRecord)> = Vec::new();
    for ((t, p), r) in memberships.iter().zip(records) {
        let Some(r) = r else { continue };
        let last = r.last_msg_id;
        if (f.before_msg_id, f.before_thread) != (0, 0)
            && (last, *t) >= (f.before_msg_id, f.before_thread)
        {
            continue;
        }
        if still_hidden(store, caller.user, *t, last, p).map_err(internal)? {
            continue;
        }
        rows.push((last, *t, p, r));
    }
    rows.sort_unstable_by_key(|r| std::cmp::Reverse((r.0, r.1)));
    let limit = list_limit(f.limit);
    let mut threads = Vec::new();
    let mut size = 0;
    let mut more = false;
    for (i, (last, id, private, rec)) in rows.iter().enumerate() {
        if i == limit || size > shared.config.max_reply_bytes / 2 {
            more = true;
            break;
        }
        let summary = thread_summary(store, caller.user, *id, *last, private, rec)?;
        size += summary.size();
        threads.push(summary);
    }
    Ok(Some(ThreadList { threads, more }.into()))
}

/// How many messages the viewer deleted for themselves (or notices about them) a thread
/// list row's preview passes over before it shows none.
const PREVIEW_SKIP_MAX: usize = 64;

/// Whether `viewer` deleted message `id` (`m`) of `thread` for themselves, or `m` is a notice
/// about one, or about a message at or below `upto` (the mark of the conversation they hid, 0
/// if none): no read unless the message was deleted by someone or is a notice about a message
/// above the mark.
fn deleted_for_viewer(
    store: &Store,
    viewer: u64,
    thread: u64,
    id: u64,
    m: &MessageRecord,
    upto: u64,
) -> Result<bool, crate::store::Error> {
    Ok(edits::deleted_by(store, thread, id, m, viewer)?
        || match edits::notice_subject(m) {
            Some(subject) => subject <= upto || store.is_hidden(viewer, thread, subject)?,
            None => false,
        })
}

/// The newest message of `thread` above `upto` that `viewer` can see (HISTORY's rule: not one
/// they deleted for themselves, nor a notice about one or about a message at or below
/// `upto`), and whether the thread shows anything above `upto`: past [`PREVIEW_SKIP_MAX`]
/// messages passed over there is no preview, and the thread counts as showing something.
fn newest_visible(
    store: &Store,
    viewer: u64,
    thread: u64,
    upto: u64,
) -> Result<(Option<courier_protocol::Message>, bool), crate::store::Error> {
    let mut newest = None;
    let mut skipped = 0;
    store.messages(thread, upto, u64::MAX, true, 1, |id, m| {
        if deleted_for_viewer(store, viewer, thread, id, &m, upto)? {
            skipped += 1;
            return Ok(if skipped > PREVIEW_SKIP_MAX {
                Visit::Stop
            } else {
                Visit::Skipped
            });
        }
        newest = Some(to_wire(thread, id, m));
        Ok(Visit::Took)
    })?;
    let shows = newest.is_some() || skipped > PREVIEW_SKIP_MAX;
    Ok((newest, shows))
}

/// Whether `viewer` still has `thread` (newest message `last`) hidden: they hid it
/// (`private`, `SET_THREAD_STATE`) and nothing above the mark is theirs to see. A new message
/// brings the conversation back; a notice about a message hidden with it (a reaction to it,
/// its edit or recall) does not.
pub(super) fn still_hidden(
    store: &Store,
    viewer: u64,
    thread: u64,
    last: u64,
    private: &PrivateState,
) -> Result<bool, crate::store::Error> {
    if !private.hidden {
        return Ok(false);
    }
    if last <= private.hidden_upto {
        return Ok(true);
    }
    Ok(!newest_visible(store, viewer, thread, private.hidden_upto)?.1)
}

fn thread_summary(
    store: &Store,
    viewer: u64,
    id: u64,
    last: u64,
    private: &PrivateState,
    rec: &ThreadRecord,
) -> Result<ThreadSummary, Reject> {
    let me = store
        .member(id, viewer)
        .map_err(internal)?
        .unwrap_or_default();
    let after = me.read.max(private.hidden_upto);
    let unread = store
        .count_unread(id, after, viewer, me.own_floor, rec.countable, UNREAD_CAP)
        .map_err(internal)?;
    let last_message = if last != 0 && last > private.hidden_upto {
        newest_visible(store, viewer, id, private.hidden_upto)
            .map_err(internal)?
            .0
    } else {
        None
    };
    let (peer, name) = if rec.kind == ThreadKind::Direct {
        let members = store.members(id).map_err(internal)?;
        let peer = members
            .iter()
            .map(|(u, _)| *u)
            .find(|&u| u != viewer)
            .unwrap_or(0);
        (
            peer,
            display_name(store, rec, std::iter::once(peer), viewer),
        )
    } else {
        (0, rec.name.clone())
    };
    Ok(ThreadSummary {
        id,
        kind: rec.kind,
        name,
        peer,
        member_count: rec.member_count.min(u16::MAX as u32) as u16,
        last_msg_id: last,
        unread,
        muted: private.muted,
        // Listed, so not hidden (`still_hidden`): a conversation the viewer hid is left out of
        // the list until a message brings it back, and then reads as THREAD_INFO reads it.
        hidden: false,
        label: private.label.clone(),
        last_message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ThreadState {
        ThreadState::new(ThreadRecord::default(), Map::default())
    }

    #[test]
    fn past_its_limit_the_cache_evicts_one_thread_per_new_one_and_keeps_the_used_ones() {
        let mut cache = ThreadCache::new(16);
        for t in 0..16 {
            cache.insert(t, state());
        }
        cache.end_round();
        assert_eq!(cache.len(), 16);
        // Round 2 uses threads 0..8 and brings in 4 new ones: 4 of the unused go.
        for t in 0..8 {
            assert!(cache.get_mut(t).is_some());
        }
        for t in 100..104 {
            cache.insert(t, state());
        }
        assert_eq!(cache.len(), 16);
        for t in (0..8).chain(100..104) {
            assert!(cache.get(t).is_some(), "thread {t} was used this round");
        }
        let unused_left = (8..16).filter(|&t| cache.get(t).is_some()).count();
        assert_eq!(unused_left, 4);
        cache.end_round();
        assert_eq!(cache.len(), 16);
    }

    #[test]
    fn a_thread_used_this_round_is_never_evicted_before_the_round_ends() {
        let mut cache = ThreadCache::new(16);
        for t in 0..16 {
            cache.insert(t, state());
        }
        cache.end_round();
        // Every thread is used (may hold staged state) this round; two more come in.
        for t in 0..16 {
            cache.get_mut(t).expect("cached").rec.last_msg_id = t + 1;
        }
        cache.insert(16, state());
        cache.insert(17, state());
        assert_eq!(
            cache.len(),
            18,
            "nothing unpinned to evict: over the limit for now"
        );
        for t in 0..16 {
            assert_eq!(cache.get(t).map(|s| s.rec.last_msg_id), Some(t + 1));
        }
        cache.end_round();
        assert_eq!(
            cache.len(),
            16,
            "back under the limit once the round committed"
        );
    }

    #[test]
    fn a_thread_of_a_sealed_round_stays_until_that_round_is_durable() {
        let mut cache = ThreadCache::new(16);
        for t in 0..16 {
            cache.insert(t, state());
        }
        cache.end_round();
        // The sealed round touched thread 3; the next round brings in 20 new threads.
        cache.get_mut(3).expect("cached").rec.last_msg_id = 99;
        cache.seal();
        for t in 100..120 {
            cache.insert(t, state());
        }
        assert_eq!(
            cache.get(3).map(|s| s.rec.last_msg_id),
            Some(99),
            "touched by a round not yet durable: never evicted"
        );
        cache.seal();
        cache.durable();
        assert_eq!(
            cache.len(),
            16,
            "back under the limit once every round is durable"
        );
    }

    #[test]
    fn a_cleared_cache_starts_over() {
        let mut cache = ThreadCache::new(16);
        for t in 0..20 {
            cache.insert(t, state());
        }
        cache.clear();
        cache.end_round();
        assert_eq!(cache.len(), 0);
        for t in 0..17 {
            cache.insert(t, state());
        }
        cache.end_round();
        assert_eq!(cache.len(), 16);
    }
}
