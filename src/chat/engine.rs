//! One shard's chat engine: routing, the round's staged writes, group commit.
//!
//! A request runs to completion inside [`Engine::handle`]: it validates, reads what it needs,
//! stages writes in the round's [`Batch`] and its answers in `pending`. Nothing leaves before
//! the batch is durable, so a SENT ack always means "on disk" (per the fsync mode) and a push
//! never announces a message that a crash could lose.
//!
//! With a commit stage ([`Engine::pipelined`], `--fsync batch` on a server), [`Engine::commit`]
//! seals the round and hands its batch to the shard's writer thread instead of writing it
//! inline; the shard keeps serving and builds the next round meanwhile. At most one sealed
//! round is in flight: the next is sealed when it is durable, and its answers are released
//! then. What a round staged stays visible to later rounds until it is durable (two
//! generations: `chat::round`); a failed commit fails the sealed round and the round built
//! on it (ARCHITECTURE.md, "Durability").

use crate::hash::{Map, Set};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_protocol::{Done, ErrorCode, ErrorReply, Frame, ReceiptKind, UserInfo};

use super::dedupe::RecentSends;
use super::limits::Staged;
use super::media::{self, Uploads};
use super::messages::TypingGate;
use super::round::RoundMap;
use super::threads::{self, ThreadCache};
use super::{messages, sync};
use super::{Effect, Shared};
use crate::caller::Caller;
use crate::store::committer::Committer;
use crate::store::{Batch, FsyncMode, MessageRecord, PrivateState};

/// Answers and pushes staged while a sealed round is in flight, past which the shard stops
/// reading its sockets until that round is durable (backpressure; see [`Engine::saturated`]).
pub const STAGED_BOUND: usize = 4096;

/// A request's failure: the code and a sentence for the person behind the client.
pub(super) type Reject = (ErrorCode, &'static str);

pub struct Engine {
    pub(super) shared: Arc<Shared>,
    pub(super) shard: u16,
    pub(super) batch: Batch,
    /// Answers waiting for this round's commit.
    pending: Vec<Effect>,
    /// Answers whose writes are committed (filled by `flush`, drained by `commit`).
    ready: Vec<Effect>,
    /// The writer thread of `--fsync batch`; `None`: each round is written inline.
    committer: Option<Committer>,
    /// Answers of the sealed round in flight, released when its batch is durable.
    sealed: Vec<Effect>,
    /// When the round in flight was sealed.
    sealed_at: Option<Instant>,
    /// How long the last finished commit took from sealing to durable, not yet taken.
    commit_took: Option<Duration>,
    /// In-flight bounds (see [`Shared::watermark`]) of the sealed round and of the round
    /// being built; `u64::MAX`: none.
    sealed_bound: u64,
    current_bound: u64,
    /// Threads this shard owns, authoritative while cached.
    pub(super) threads: ThreadCache,
    pub(super) uploads: Uploads,
    /// Recent sends by (thread, sender, client id), this round's included: a retry inside one
    /// round must not store twice, and the store cannot see uncommitted writes.
    pub(super) recent_sends: RecentSends,
    /// Contacts and delete-for-me entries staged this round, for the per-user caps.
    pub(super) staged: Staged,
    /// Direct threads created this round, by user pair.
    pub(super) round_directs: RoundMap<(u64, u64), u64>,
    /// Memberships (user, thread) staged this round: a later request of the round reads these,
    /// since the store cannot see uncommitted writes.
    pub(super) round_private: RoundMap<(u64, u64), PrivateState>,
    /// Stored messages changed this round (recalled, edited, reacted to), by (thread, id): a
    /// later change of the round starts from these, since the store cannot see uncommitted
    /// writes.
    pub(super) round_messages: RoundMap<(u64, u64), MessageRecord>,
    /// Reactions staged this round by (thread, message, user); empty: removed.
    pub(super) round_reactions: RoundMap<(u64, u64, u64), String>,
    /// This round's receipt pushes by (thread, reader, kind): their index in `pending`, so a
    /// later advance of the same cursor replaces the push instead of adding one.
    pub(super) round_receipts: Map<(u64, u64, ReceiptKind), usize>,
    /// Scratch list of a receipt's recipients (kept to avoid an allocation per receipt).
    pub(super) audience: Vec<u64>,
    /// Rate limit of TYPING_PUSH per (thread, user).
    pub(super) typing: TypingGate,
    /// Highest clock value staged this round (recorded as the clock floor on commit).
    round_max: u64,
    /// Owned threads whose record changed this round: written once, at commit, however many
    /// messages the round added.
    pub(super) dirty_threads: Set<u64>,
    /// (thread, user) cursors and roles that changed this round, written once at commit.
    pub(super) dirty_members: Set<(u64, u64)>,
    /// The handles the request being handled came with ([`handle_with`](Self::handle_with)):
    /// users of other nodes, which the store here does not hold. Empty between requests.
    pub(super) handles: Vec<UserInfo>,
}

impl Engine {
    pub fn new(shared: Arc<Shared>, shard: u16) -> Self {
        let batch = shared.store.batch();
        let cache = shared.config.thread_cache;
        let recent = shared.config.recent_sends;
        Self {
            shared,
            shard,
            batch,
            pending: Vec::new(),
            ready: Vec::new(),
            committer: None,
            sealed: Vec::new(),
            sealed_at: None,
            commit_took: None,
            sealed_bound: u64::MAX,
            current_bound: u64::MAX,
            threads: ThreadCache::new(cache),
            uploads: Uploads::default(),
            recent_sends: RecentSends::new(recent),
            staged: Staged::default(),
            round_directs: RoundMap::default(),
            round_private: RoundMap::default(),
            round_messages: RoundMap::default(),
            round_reactions: RoundMap::default(),
            round_receipts: Map::default(),
            audience: Vec::new(),
            typing: TypingGate::default(),
            round_max: 0,
            dirty_threads: Set::default(),
            dirty_members: Set::default(),
            handles: Vec::new(),
        }
    }

    /// The shard that must run `frame` for `caller`, or `None` when `frame` is not a chat
    /// request (session, presence and admin frames are the shard's own business).
    ///
    /// Thread-scoped requests run on the thread's owner shard; opening a direct thread runs
    /// on the pair's shard; everything else (creating groups, lists, sync, contacts, media)
    /// runs where the caller is connected, except the caller's own capped sets (contacts,
    /// uploads), which run on the user's shard so one thread of execution counts them.
    pub fn shard_for(shared: &Shared, caller: &Caller, frame: &Frame) -> Option<u16> {
        let here = caller.conn.shard;
        let shard = match frame {
            Frame::OpenDirect(f) => shared.pair_shard(caller.user, f.peer),
            Frame::AddMembers(f) => shared.thread_shard(f.thread),
            Frame::RemoveMember(f) => shared.thread_shard(f.thread),
            Frame::LeaveGroup(f) => shared.thread_shard(f.thread),
            Frame::RenameGroup(f) => shared.thread_shard(f.thread),
            Frame::GetThread(f) => shared.thread_shard(f.thread),
            Frame::SetThreadState(f) => shared.thread_shard(f.thread),
            Frame::Send(f) => shared.thread_shard(f.thread),
            Frame::History(f) => shared.thread_shard(f.thread),
            Frame::Receipt(f) => shared.thread_shard(f.thread),
            Frame::Recall(f) => shared.thread_shard(f.thread),
            Frame::DeleteForMe(f) => shared.thread_shard(f.thread),
            Frame::Readers(f) => shared.thread_shard(f.thread),
            Frame::Typing(f) => shared.thread_shard(f.thread),
            Frame::Edit(f) => shared.thread_shard(f.thread),
            Frame::React(f) => shared.thread_shard(f.thread),
            Frame::ContactAdd(_)
            | Frame::ContactRemove(_)
            | Frame::ContactList(_)
            | Frame::MediaBegin(_)
            | Frame::MediaChunk(_)
            | Frame::MediaCommit(_) => shared.user_shard(caller.user),
            Frame::CreateGroup(_)
            | Frame::ListThreads(_)
            | Frame::Sync(_)
            | Frame::LookupUser(_)
            | Frame::GetUsers(_)
            | Frame::MediaGet(_) => here,
            _ => return None,
        };
        Some(shard)
    }

    /// Whether `frame` only reads committed state (HISTORY, SYNC, LIST_THREADS, MEDIA_GET,
    /// READERS): such a request may run on any thread through [`read`](Self::read), off the
    /// event loop, and needs no owner shard.
    pub fn is_read(frame: &Frame) -> bool {
        matches!(
            frame,
            Frame::History(_)
                | Frame::Sync(_)
                | Frame::ListThreads(_)
                | Frame::MediaGet(_)
                | Frame::Readers(_)
        )
    }

    /// Answers a read request ([`is_read`](Self::is_read)) from the committed state: its reply
    /// or an `ERROR_REPLY`. Touches no engine, so any thread may call it.
    ///
    /// Why this keeps read-your-writes: an answer to a write (SENT, DONE, …) leaves only after
    /// [`commit`](Self::commit) has written the round, and the store shows a write to every
    /// reader once its commit returns. A read a client sends after such an answer therefore
    /// sees the write, wherever and whenever it runs.
    pub fn read(shared: &Shared, caller: &Caller, frame: Frame) -> Frame {
        let result = match frame {
            Frame::History(f) => messages::history(shared, caller, f),
            Frame::Readers(f) => messages::readers(shared, caller, f.thread, f.message),
            Frame::Sync(f) => sync::sync(shared, caller, f),
            Frame::ListThreads(f) => threads::list_threads(shared, caller, f),
            Frame::MediaGet(f) => media::media_get(shared, caller, f),
            _ => Err((ErrorCode::UnknownFrame, "this frame is not a read request")),
        };
        Self::outcome_frame(result)
    }

    /// The frame a request's outcome is answered with: its reply, `DONE` when it has none, or
    /// an `ERROR_REPLY`.
    pub fn outcome_frame(result: Result<Option<Frame>, (ErrorCode, &'static str)>) -> Frame {
        match result {
            Ok(Some(frame)) => frame,
            Ok(None) => Done {}.into(),
            Err((code, message)) => ErrorReply {
                code: code as u16,
                message: message.into(),
            }
            .into(),
        }
    }

    /// Runs one chat request that came with the handles its origin knows of the users it
    /// names (in a cluster, `OPEN_DIRECT`: the caller's and the peer's, which the owner of a
    /// direct thread stores with it; see `threads.rs`).
    pub fn handle_with(
        &mut self,
        caller: Caller,
        request_id: u32,
        frame: Frame,
        handles: Vec<UserInfo>,
    ) {
        self.handles = handles;
        self.handle(caller, request_id, frame);
        self.handles.clear();
    }

    /// Runs one chat request. Its answers come out of [`commit`](Self::commit).
    pub fn handle(&mut self, caller: Caller, request_id: u32, frame: Frame) {
        let typing = matches!(frame, Frame::Typing(_));
        let result = match frame {
            Frame::OpenDirect(f) => self.open_direct(&caller, f.peer),
            Frame::CreateGroup(f) => self.create_group(&caller, f.name, f.members),
            Frame::AddMembers(f) => self.add_members(&caller, f.thread, f.members),
            Frame::RemoveMember(f) => self.remove_member(&caller, f.thread, f.user),
            Frame::LeaveGroup(f) => self.leave_group(&caller, f.thread),
            Frame::RenameGroup(f) => self.rename_group(&caller, f.thread, f.name),
            Frame::ListThreads(f) => threads::list_threads(&self.shared, &caller, f),
            Frame::GetThread(f) => self.get_thread(&caller, f.thread),
            Frame::SetThreadState(f) => self.set_thread_state(&caller, f),
            Frame::Send(f) => self.send(&caller, f),
            Frame::History(f) => messages::history(&self.shared, &caller, f),
            Frame::Receipt(f) => self.receipt(&caller, f),
            Frame::Recall(f) => self.recall(&caller, f.thread, f.message),
            Frame::DeleteForMe(f) => self.delete_for_me(&caller, f.thread, f.message),
            Frame::Readers(f) => messages::readers(&self.shared, &caller, f.thread, f.message),
            Frame::Sync(f) => sync::sync(&self.shared, &caller, f),
            Frame::Typing(f) => self.typing(&caller, f.thread, f.active),
            Frame::Edit(f) => self.edit(&caller, f),
            Frame::React(f) => self.react(&caller, f),
            Frame::ContactAdd(f) => self.contact_add(&caller, f.user),
            Frame::ContactRemove(f) => self.contact_remove(&caller, f.user),
            Frame::ContactList(_) => self.contact_list(&caller),
            Frame::LookupUser(f) => self.lookup_user(&f.handle),
            Frame::GetUsers(f) => self.get_users(&f.users),
            Frame::MediaBegin(f) => self.media_begin(&caller, f),
            Frame::MediaChunk(f) => self.media_chunk(&caller, f),
            Frame::MediaCommit(f) => self.media_commit(&caller, f.upload),
            Frame::MediaGet(f) => media::media_get(&self.shared, &caller, f),
            other => Err((ErrorCode::UnknownFrame, frame_not_chat(&other))),
        };
        match result {
            // TYPING is never answered, not even with an error.
            _ if typing => {}
            Ok(Some(frame)) => self.reply(&caller, request_id, frame),
            Ok(None) => {}
            Err((code, message)) => self.reply(
                &caller,
                request_id,
                ErrorReply {
                    code: code as u16,
                    message: message.into(),
                }
                .into(),
            ),
        }
        if self.shared.store.fsync_mode() == FsyncMode::Always {
            self.flush();
        }
    }

    /// An engine whose rounds are made durable by `committer` (the shard's writer thread),
    /// off the event loop. Use with `--fsync batch`; `always` writes each request inline.
    pub fn pipelined(shared: Arc<Shared>, shard: u16, committer: Committer) -> Self {
        let mut engine = Self::new(shared, shard);
        engine.committer = Some(committer);
        engine
    }

    /// Whether a sealed round is being committed.
    fn in_flight(&self) -> bool {
        self.committer.as_ref().is_some_and(Committer::in_flight)
    }

    /// Whether [`commit`](Self::commit) has work it can do now: answers to release, or a
    /// round to seal. While a round is in flight the committer wakes the shard when it is
    /// done, so the shard need not poll for it.
    pub fn has_pending(&self) -> bool {
        !self.ready.is_empty()
            || (!self.in_flight() && (!self.pending.is_empty() || !self.batch.is_empty()))
    }

    /// Whether the round being built is full while a sealed round is in flight: the shard
    /// stops reading its sockets until that round is durable (at most [`STAGED_BOUND`]
    /// answers, plus one request's, wait in a round behind one in flight).
    pub fn saturated(&self) -> bool {
        self.in_flight() && self.pending.len() >= STAGED_BOUND
    }

    /// Heap bytes of this shard's recent-sends table (see `dedupe`): bounded, it fills up to
    /// its capacity over the first sends, so memory checks subtract it like RocksDB's caches.
    pub fn dedupe_cache_bytes(&self) -> usize {
        self.recent_sends.heap_bytes()
    }

    /// How long the last finished commit took, from sealing its round to durable; once.
    pub fn take_commit_took(&mut self) -> Option<Duration> {
        self.commit_took.take()
    }

    /// Makes this round's writes durable (one WAL write and, per fsync mode, one sync) and
    /// appends the answers and pushes that became releasable to `out`. Call once per
    /// event-loop round.
    ///
    /// Inline (no committer): the round is written now and its answers released. Pipelined:
    /// a finished commit's answers are released; then, if no round is in flight, this round
    /// is sealed and handed to the committer, and its answers wait for it.
    pub fn commit(&mut self, out: &mut Vec<Effect>) {
        if let Some(result) = self.committer.as_mut().and_then(Committer::poll) {
            self.finish_sealed(result);
        }
        if !self.in_flight() {
            self.seal_and_write(false);
        }
        move_effects(out, &mut self.ready);
    }

    /// Like [`commit`](Self::commit), for a shard with nothing else to do this round (no
    /// mail, no bytes to write, no reads carried over): if no round is in flight and no
    /// answers wait to be released, this round is written and synced here, on the calling
    /// thread, and its answers come back at once. At low load that spares the two hand-overs
    /// (shard → writer thread → shard) a round costs, each a wake-up of another thread. Else
    /// it is [`commit`](Self::commit): answers already durable are never held behind a sync.
    ///
    /// Order and the watermark hold as for an inline engine: nothing is in flight, so this
    /// round reaches the WAL after every round sealed before it, and its bound is cleared
    /// only once the write returned.
    pub fn commit_idle(&mut self, out: &mut Vec<Effect>) {
        if let Some(result) = self.committer.as_mut().and_then(Committer::poll) {
            self.finish_sealed(result);
        }
        if !self.in_flight() {
            self.seal_and_write(self.ready.is_empty());
        }
        move_effects(out, &mut self.ready);
    }

    /// Waits for the round in flight, if any, and takes its result (its answers are
    /// released with this round's). For checks that add what the rounds staged to a count
    /// read from the store (the caps on contacts, delete-for-me entries and media usage):
    /// the store may already show the sealed round before the shard took its result, and
    /// would then count it twice. These requests are rare; the wait is one commit at most.
    pub(super) fn settle(&mut self) {
        if let Some(result) = self.committer.as_mut().and_then(Committer::wait) {
            self.finish_sealed(result);
        }
    }

    /// Commits everything staged and waits for it (shutdown): the round in flight, then the
    /// round being built.
    pub fn finish(&mut self, out: &mut Vec<Effect>) {
        if let Some(result) = self.committer.as_mut().and_then(Committer::wait) {
            self.finish_sealed(result);
        }
        self.seal_and_write(false);
        if let Some(result) = self.committer.as_mut().and_then(Committer::wait) {
            self.finish_sealed(result);
        }
        move_effects(out, &mut self.ready);
    }

    /// A user's last device went offline at `at` (µs): persisted as their last seen.
    pub fn record_last_seen(&mut self, user: u64, at: u64) {
        self.batch.put_last_seen(user, at);
    }

    /// Writes the round inline and releases its answers (`--fsync always`, per request).
    fn flush(&mut self) {
        debug_assert!(!self.in_flight());
        self.seal_and_write(false);
    }

    /// Seals the round being built (nothing may be in flight) and writes it: through the
    /// committer if there is one, the batch has writes and `inline` is false, else inline.
    /// An empty batch is durable at once (everything before it is).
    fn seal_and_write(&mut self, inline: bool) {
        if self.pending.is_empty()
            && self.batch.is_empty()
            && self.dirty_threads.is_empty()
            && self.dirty_members.is_empty()
        {
            return;
        }
        self.stage_dirty();
        if self.round_max != 0 {
            self.batch.clock_floor(self.shard, self.round_max);
        }
        let batch = std::mem::replace(&mut self.batch, self.shared.store.batch());
        move_effects(&mut self.sealed, &mut self.pending);
        self.sealed_at = Some(Instant::now());
        self.sealed_bound = self.current_bound;
        self.current_bound = u64::MAX;
        self.round_max = 0;
        self.round_receipts.clear();
        self.recent_sends.seal();
        self.staged.seal();
        self.round_directs.seal();
        self.round_private.seal();
        self.round_messages.seal();
        self.round_reactions.seal();
        self.uploads.seal();
        self.threads.seal();
        if batch.is_empty() {
            return self.finish_sealed(Ok(()));
        }
        let result = match self.committer.as_mut().filter(|_| !inline) {
            Some(committer) => committer.submit(batch),
            None => self.shared.store.commit(batch),
        };
        if result.is_err() || !self.in_flight() {
            self.finish_sealed(result);
        }
    }

    /// The sealed round's commit finished. Durable: its answers are released and what it
    /// staged is left to the store. Failed: its answers become INTERNAL errors, pushes are
    /// dropped (nothing was stored), and so does the round built on it since (its state was
    /// derived from what failed); the thread cache is emptied, since it may hold changes that
    /// never reached the disk.
    fn finish_sealed(&mut self, result: Result<(), crate::store::Error>) {
        self.commit_took = self.sealed_at.take().map(|t| t.elapsed());
        match result {
            Ok(()) => {
                move_effects(&mut self.ready, &mut self.sealed);
                self.recent_sends.durable();
                self.staged.durable();
                self.round_directs.durable();
                self.round_private.durable();
                self.round_messages.durable();
                self.round_reactions.durable();
                self.uploads.durable();
                self.threads.durable();
            }
            Err(e) => {
                tracing::debug!(shard = self.shard, error = %e, "commit failed; answering INTERNAL");
                let mut failed = std::mem::take(&mut self.sealed);
                move_effects(&mut failed, &mut self.pending);
                for effect in failed {
                    if let Effect::Reply { to, request_id, .. } = effect {
                        self.ready.push(Effect::Reply {
                            to,
                            request_id,
                            frame: ErrorReply {
                                code: ErrorCode::Internal as u16,
                                message: "the server could not store this; retry".into(),
                            }
                            .into(),
                        });
                    }
                }
                self.batch = self.shared.store.batch();
                self.dirty_threads.clear();
                self.dirty_members.clear();
                self.round_receipts.clear();
                self.round_max = 0;
                self.current_bound = u64::MAX;
                self.recent_sends.forget_round();
                self.staged.clear();
                self.round_directs.clear();
                self.round_private.clear();
                self.round_messages.clear();
                self.round_reactions.clear();
                self.uploads.end_round();
                self.threads.clear();
                self.threads.end_round();
            }
        }
        self.sealed_bound = u64::MAX;
        self.publish_bound();
    }

    /// Publishes the lowest clock value this shard has staged and not made durable.
    fn publish_bound(&self) {
        self.shared.in_flight[self.shard as usize]
            .0
            .store(self.sealed_bound.min(self.current_bound), Ordering::SeqCst);
    }

    /// Stages the final state of every thread record and member changed this round. A member
    /// no longer in the cache was removed this round (its delete is already staged) and must
    /// not be written back.
    fn stage_dirty(&mut self) {
        for thread in self.dirty_threads.drain() {
            if let Some(state) = self.threads.get(thread) {
                self.batch.put_thread(thread, &state.rec);
            }
        }
        for (thread, user) in self.dirty_members.drain() {
            if let Some(m) = self.threads.get(thread).and_then(|s| s.members.get(&user)) {
                self.batch.put_member(thread, user, m);
            }
        }
    }

    /// A clock value for a change staged this round. The first of a round publishes the
    /// in-flight bound first (see [`Shared::watermark`]).
    pub(super) fn tick(&mut self) -> u64 {
        if self.round_max == 0 {
            self.current_bound = self.shared.clock.last() + 1;
            self.publish_bound();
        }
        let t = self.shared.clock.tick();
        self.round_max = t;
        t
    }

    pub(super) fn reply(&mut self, caller: &Caller, request_id: u32, frame: Frame) {
        self.pending.push(Effect::Reply {
            to: caller.conn,
            request_id,
            frame,
        });
    }

    /// Pushes `frame` to every online device of `users` except the caller's connection.
    pub(super) fn push(&mut self, users: Arc<[u64]>, except: Option<&Caller>, frame: Frame) {
        self.pending.push(Effect::Push {
            users,
            except: except.map(|c| c.conn),
            frame,
            notify: None,
        });
    }

    /// Adds `users` (members homed on other nodes, sorted) to the push of message `message`,
    /// the last push of this round, as the users whose homes should consider a push
    /// notification of it (see [`Effect::Push`]).
    pub(super) fn notify_remote(&mut self, message: u64, users: Arc<[u64]>) {
        let last = self.pending.iter_mut().rev().find_map(|e| match e {
            Effect::Push {
                frame: Frame::MessagePush(p),
                notify,
                ..
            } if p.message.id == message => Some(notify),
            _ => None,
        });
        if let Some(notify) = last {
            *notify = Some(users);
        }
    }

    /// Like [`push`](Self::push); returns the push's place in this round's answers, valid
    /// until the round is committed, for [`retract`](Self::retract).
    pub(super) fn push_indexed(
        &mut self,
        users: Arc<[u64]>,
        except: Option<&Caller>,
        frame: Frame,
    ) -> usize {
        self.push(users, except, frame);
        self.pending.len() - 1
    }

    /// Takes back the push at `index` of this round (it stays in the list, addressed to
    /// nobody, so later indices hold) and returns whom it was for.
    pub(super) fn retract(&mut self, index: usize) -> Option<Arc<[u64]>> {
        match self.pending.get_mut(index) {
            Some(Effect::Push { users, .. }) => {
                Some(std::mem::replace(users, Arc::from(Vec::new())))
            }
            _ => None,
        }
    }
}

fn frame_not_chat(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) | Frame::Register(_) | Frame::Login(_) | Frame::Resume(_) => {
            "session frames are not chat requests"
        }
        _ => "this frame is not a request the chat engine serves",
    }
}

/// Moves every effect of `from` to the end of `to`. When `to` is empty (the usual case) the
/// two trade buffers instead: a round's effects pass through four lists (pending, sealed,
/// ready, the shard's), and copying each effect at every step was 3% of a shard's time at
/// the unthrottled rate.
fn move_effects(to: &mut Vec<Effect>, from: &mut Vec<Effect>) {
    if to.is_empty() {
        std::mem::swap(to, from);
    } else {
        to.append(from);
    }
}
