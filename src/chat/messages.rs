//! Messages: send with idempotent retries, history, receipts (the three ticks), recall,
//! delete-for-me, readers, typing. All run on the thread's owner shard.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_protocol::wire::Wire;
use courier_protocol::{
    Direction, Done, ErrorCode, Frame, History, Message, MessageKind, Messages, ReadersList,
    Receipt, ReceiptKind, ReceiptPush, Send, Sent, SystemEventKind, TypingPush,
};

use super::dedupe::SendKey;
use super::edits;
use super::engine::{Engine, Reject};
use super::threads::{internal, system_body};
use super::Shared;
use crate::caller::Caller;
use crate::clock::wall_us;
use crate::hash::Map;
use crate::store::{MessageRecord, OutboxOp, Store, Visit};

/// Messages returned when a request asks for 0.
const DEFAULT_PAGE: usize = 50;
/// The most messages a receipt reads (their senders only) to find whom to tell; past this,
/// every member is told.
const RECEIPT_SCAN: usize = 256;
/// Least time between two TYPING_PUSHes of one user in one thread; a stop after a start goes
/// out at once all the same.
pub(super) const TYPING_INTERVAL: Duration = Duration::from_secs(3);
/// Size of the typing table below which it is not swept.
const TYPING_SWEEP_MIN: usize = 1024;

/// Both sorted recipient lists, merged.
fn union(a: &[u64], b: &[u64]) -> Arc<[u64]> {
    let mut all: Vec<u64> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    all.dedup();
    all.into()
}

/// Coalesces TYPING per (thread, user): at most one push per [`TYPING_INTERVAL`], except
/// that a stop right after a pushed start still goes out (receivers would otherwise show
/// "typing" until their own timeout). Bounded: entries older than the interval mean the same
/// as none and are swept once the table doubles.
pub(crate) struct TypingGate {
    origin: Instant,
    /// (thread, user) → when the last push went out (µs since `origin`), and whether it said
    /// "typing".
    last: Map<(u64, u64), (u64, bool)>,
    sweep_at: usize,
}

impl Default for TypingGate {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last: Map::default(),
            sweep_at: TYPING_SWEEP_MIN,
        }
    }
}

impl TypingGate {
    /// Whether a TYPING from `user` in `thread` is pushed now.
    pub fn admit_now(&mut self, thread: u64, user: u64, active: bool) -> bool {
        let now = self.origin.elapsed().as_micros() as u64;
        self.admit(thread, user, active, now)
    }

    /// Whether a TYPING from `user` in `thread` at `now` (µs, monotonic) is pushed.
    pub fn admit(&mut self, thread: u64, user: u64, active: bool, now: u64) -> bool {
        let interval = TYPING_INTERVAL.as_micros() as u64;
        let pass = match self.last.get(&(thread, user)) {
            None => true,
            Some(&(at, was_active)) => {
                now.saturating_sub(at) >= interval || (was_active && !active)
            }
        };
        if pass {
            if self.last.len() >= self.sweep_at {
                self.last
                    .retain(|_, &mut (at, _)| now.saturating_sub(at) < interval);
                self.sweep_at = (self.last.len() * 2).max(TYPING_SWEEP_MIN);
            }
            self.last.insert((thread, user), (now, active));
        }
        pass
    }
}

pub(super) fn to_wire(thread: u64, id: u64, m: MessageRecord) -> Message {
    Message {
        thread,
        id,
        sender: m.sender,
        client_msg_id: m.client_msg_id,
        kind: m.kind,
        recalled: m.recalled,
        body: m.body,
    }
}

impl Engine {
    pub(super) fn send(&mut self, caller: &Caller, f: Send) -> Result<Option<Frame>, Reject> {
        if f.kind == MessageKind::System {
            return Err((
                ErrorCode::InvalidArgument,
                "system messages are written by the server only",
            ));
        }
        if f.body.len() > self.shared.config.max_body {
            return Err((
                ErrorCode::BodyTooLarge,
                "the message body is over the size limit",
            ));
        }
        self.member_state(caller, f.thread)?;
        let media = match f.kind {
            MessageKind::Media => Some(self.media_reference(caller, f.thread, &f.body)?),
            _ => None,
        };
        // `client_msg_id` 0 means "no idempotency": every such SEND is a new message.
        let idempotent = f.client_msg_id != 0;
        let key = (f.thread, caller.user, f.client_msg_id);
        let earlier = match idempotent {
            true => self.earlier_send(key)?,
            false => None,
        };
        if let Some(id) = earlier {
            return Ok(Some(
                Sent {
                    thread: f.thread,
                    message: id,
                    client_msg_id: f.client_msg_id,
                }
                .into(),
            ));
        }
        let rec = MessageRecord {
            sender: caller.user,
            client_msg_id: f.client_msg_id,
            kind: f.kind,
            recalled: false,
            body: f.body,
            reply_to: f.reply_to,
            ..Default::default()
        };
        if f.reply_to != 0 {
            self.check_reply(caller, f.thread, f.reply_to)?;
        }
        let id = self.append(f.thread, rec, Some(caller), &[])?;
        self.stage_push(f.thread, id, caller.user, f.kind)?;
        if let Some((media, holder)) = &media {
            self.link_media(media, holder, f.thread);
        }
        if idempotent {
            self.recent_sends.insert(key, id);
            self.batch
                .put_dedupe(f.thread, caller.user, f.client_msg_id, id);
        }
        // A sender has obviously received and read their own message.
        let state = self.thread_state(f.thread)?;
        if let Some(me) = state.members.get_mut(&caller.user) {
            me.delivered = me.delivered.max(id);
            me.read = me.read.max(id);
            self.save_member(f.thread, caller.user);
        }
        Ok(Some(
            Sent {
                thread: f.thread,
                message: id,
                client_msg_id: f.client_msg_id,
            }
            .into(),
        ))
    }

    /// The message id of an earlier send of `key` (thread, sender, client message id) inside
    /// the dedupe window, if any (see `chat::dedupe`): none without a lookup when the id is
    /// above the sender's bound in the thread, else from the recent sends, else the store.
    fn earlier_send(&mut self, key: SendKey) -> Result<Option<u64>, Reject> {
        let (thread, sender, client) = key;
        let store = &self.shared.store;
        let newest = match self.recent_sends.newest(thread, sender) {
            Some(newest) => newest,
            None => {
                let stored = store.newest_dedupe(thread, sender).map_err(internal)?;
                self.recent_sends.learn(thread, sender, stored.unwrap_or(0))
            }
        };
        if client > newest {
            return Ok(None);
        }
        let (now, window) = (wall_us(), self.shared.config.dedupe_window_us);
        Ok(match self.recent_sends.get(&key, now, window) {
            Some(id) => Some(id),
            None => store
                .dedupe(thread, sender, client)
                .map_err(internal)?
                .filter(|&id| now.saturating_sub(id) <= window),
        })
    }

    /// Stages a push notification of message `id` in this round's batch for each member the
    /// push gate picks (offline, not muting the thread, registered; see `push::Gate`), so the
    /// notification is durable exactly when the message is. Members homed on other nodes who
    /// did not mute the thread ride along with the message's push to their homes, which decide
    /// there (`PUSH_BATCH.notify`). Nothing without a gateway.
    fn stage_push(
        &mut self,
        thread: u64,
        id: u64,
        sender: u64,
        kind: MessageKind,
    ) -> Result<(), Reject> {
        if self.shared.push().is_none() {
            return Ok(());
        }
        let members = self.thread_state(thread)?.member_ids.clone();
        let Some(gate) = self.shared.push() else {
            return Ok(());
        };
        let event = OutboxOp::Event {
            thread,
            message: id,
            sender,
            kind,
            at: wall_us(),
        };
        let round = &self.round_private;
        // Empty (no allocation) unless members are homed on other nodes.
        let mut remote = Vec::new();
        gate.stage(
            &mut self.batch,
            thread,
            members.iter().copied().filter(|&u| u != sender),
            |user| round.get(&(user, thread)).map(|p| p.muted),
            &event,
            &mut remote,
        )
        .map_err(internal)?;
        if !remote.is_empty() {
            self.notify_remote(id, remote.into());
        }
        Ok(())
    }

    /// Cumulative cursors that only move forward; read implies delivered. An advance is
    /// pushed to the senders of the messages it covers (their ticks) and to the reader's other
    /// devices, not to every member: in a group where everyone reads, that would be members²
    /// pushes. Several advances of one cursor in a round make one push. READERS tells anyone
    /// else who has read what.
    pub(super) fn receipt(&mut self, caller: &Caller, f: Receipt) -> Result<Option<Frame>, Reject> {
        let state = self.member_state(caller, f.thread)?;
        let up_to = f.up_to.min(state.rec.last_msg_id);
        let me = state
            .members
            .get_mut(&caller.user)
            .expect("member_state checked membership");
        let from = match f.kind {
            ReceiptKind::Delivered => me.delivered,
            ReceiptKind::Read => me.read,
        };
        let advanced = match f.kind {
            ReceiptKind::Delivered if up_to > me.delivered => {
                me.delivered = up_to;
                true
            }
            ReceiptKind::Read if up_to > me.read => {
                me.read = up_to;
                me.delivered = me.delivered.max(up_to);
                true
            }
            _ => false,
        };
        if advanced {
            let members = state.member_ids.clone();
            self.save_member(f.thread, caller.user);
            let changed = self.tick();
            self.thread_state(f.thread)?.rec.changed_at = changed;
            self.save_thread(f.thread);
            let mut users = self.receipt_audience(f.thread, caller.user, from, up_to, members)?;
            let key = (f.thread, caller.user, f.kind);
            let earlier = self.round_receipts.get(&key).copied();
            if let Some(earlier) = earlier.and_then(|index| self.retract(index)) {
                users = union(&earlier, &users);
            }
            let push = ReceiptPush {
                thread: f.thread,
                user: caller.user,
                kind: f.kind,
                up_to,
            };
            let index = self.push_indexed(users, Some(caller), push.into());
            self.round_receipts.insert(key, index);
        }
        Ok(Some(Done {}.into()))
    }

    /// Who hears that `reader`'s cursor moved from `from` to `up_to`: the reader's devices and
    /// the senders of the messages in between, if still members. Every member when the range
    /// is too long to read cheaply or reaches messages not committed yet, and in a thread of
    /// two, where the other member is the only other sender (nothing is read then).
    fn receipt_audience(
        &mut self,
        thread: u64,
        reader: u64,
        from: u64,
        up_to: u64,
        members: Arc<[u64]>,
    ) -> Result<Arc<[u64]>, Reject> {
        if members.len() <= 2 {
            return Ok(members);
        }
        let mut users = std::mem::take(&mut self.audience);
        users.clear();
        users.push(reader);
        let complete = self
            .shared
            .store
            .message_senders(thread, from, up_to, RECEIPT_SCAN, &mut users)
            .map_err(internal);
        let out = match complete {
            Ok(true) => {
                users.retain(|u| members.binary_search(u).is_ok());
                users.sort_unstable();
                users.dedup();
                Ok(if users.len() == members.len() {
                    members
                } else {
                    Arc::from(&users[..])
                })
            }
            Ok(false) => Ok(members),
            Err(e) => Err(e),
        };
        self.audience = users;
        out
    }

    /// The sender recalls a message within the window: it becomes a tombstone, and a
    /// RECALLED system message tells every member's devices (and later syncs).
    pub(super) fn recall(
        &mut self,
        caller: &Caller,
        thread: u64,
        message: u64,
    ) -> Result<Option<Frame>, Reject> {
        self.member_state(caller, thread)?;
        let mut m = self
            .message_now(thread, message)?
            .ok_or((ErrorCode::UnknownMessage, "no such message"))?;
        if m.sender != caller.user || m.kind == MessageKind::System {
            return Err((ErrorCode::NotSender, "only the sender may recall a message"));
        }
        if m.recalled {
            return Ok(Some(Done {}.into()));
        }
        if wall_us().saturating_sub(message) > self.shared.config.recall_window_us {
            return Err((
                ErrorCode::RecallWindowExpired,
                "the message is too old to recall",
            ));
        }
        m.recalled = true;
        if m.kind == MessageKind::Media {
            self.unlink_media(thread, &m.body);
        }
        m.body = Bytes::new();
        // A tombstone shows no reactions (and takes no new ones).
        if !m.reactions.is_empty() {
            self.drop_reactions(thread, message)?;
            m.reactions.clear();
        }
        let body = system_body(
            SystemEventKind::Recalled,
            caller.user,
            message,
            "",
            Vec::new(),
        );
        self.notice(thread, caller, body, message, &m)?;
        self.put_changed(thread, message, m);
        Ok(Some(Done {}.into()))
    }

    pub(super) fn delete_for_me(
        &mut self,
        caller: &Caller,
        thread: u64,
        message: u64,
    ) -> Result<Option<Frame>, Reject> {
        self.member_state(caller, thread)?;
        let mut m = self
            .message_now(thread, message)?
            .ok_or((ErrorCode::UnknownMessage, "no such message"))?;
        let store = &self.shared.store;
        if self.staged.is_hidden(caller.user, thread, message)
            || store
                .is_hidden(caller.user, thread, message)
                .map_err(internal)?
        {
            return Ok(Some(Done {}.into()));
        }
        let max = self.shared.config.max_deleted_per_thread;
        self.settle();
        let store = &self.shared.store;
        let committed = store
            .count_hidden(caller.user, thread, max + 1)
            .map_err(internal)?;
        if committed + self.staged.hidden_in(caller.user, thread) >= max {
            return Err((
                ErrorCode::TooManyDeleted,
                "you deleted as many messages of this thread as you may; hide the whole thread (SET_THREAD_STATE) instead",
            ));
        }
        self.staged.hide(caller.user, thread, message);
        // Stamped, and the membership's change marker moved, so the caller's other devices
        // get the deletion from SYNC.
        let at = self.tick();
        self.batch.put_hidden(caller.user, thread, message, at);
        // Notices about the message now look for who deleted it (`edits::notice`).
        if !m.deleted_for_some {
            m.deleted_for_some = true;
            self.put_changed(thread, message, m);
        }
        let mut state = self.private(caller.user, thread)?;
        state.changed_at = at;
        self.put_private(caller.user, thread, state);
        Ok(Some(Done {}.into()))
    }

    /// Ephemeral: pushed to the other members' devices, never stored, never answered.
    pub(super) fn typing(
        &mut self,
        caller: &Caller,
        thread: u64,
        active: bool,
    ) -> Result<Option<Frame>, Reject> {
        self.member_state(caller, thread)?;
        if !self.typing.admit_now(thread, caller.user, active) {
            return Ok(None);
        }
        let state = self.member_state(caller, thread)?;
        let others: Arc<[u64]> = state
            .member_ids
            .iter()
            .copied()
            .filter(|&u| u != caller.user)
            .collect();
        self.push(
            others,
            Some(caller),
            TypingPush {
                thread,
                user: caller.user,
                active,
            }
            .into(),
        );
        Ok(None)
    }
}

/// The caller may read `thread` only as a member, checked on the committed state (the owner
/// shard's cache may hold this round's uncommitted changes, and reads run off the shard).
fn check_member(store: &Store, caller: &Caller, thread: u64) -> Result<(), Reject> {
    if store
        .member(thread, caller.user)
        .map_err(internal)?
        .is_some()
    {
        return Ok(());
    }
    match store.thread(thread).map_err(internal)? {
        None => Err((ErrorCode::UnknownThread, "no such thread")),
        Some(_) => Err((ErrorCode::NotMember, "you are not a member of this thread")),
    }
}

/// Whether a reader who hid the conversation up to `upto` (0: they did not) and deleted the
/// messages `deleted` for themselves must not see message `id` (`m`): one of those, or a
/// notice about one of them (RECALLED, EDITED, REACTED).
pub(super) fn hidden_from(upto: u64, deleted: &HashSet<u64>, id: u64, m: &MessageRecord) -> bool {
    let gone = |x: u64| x <= upto || deleted.contains(&x);
    (upto != 0 || !deleted.is_empty()) && (gone(id) || edits::notice_subject(m).is_some_and(gone))
}

/// What `user` must not see of `thread`: messages up to the hidden-conversation mark and
/// those deleted for themselves (and the notices about these, see [`hidden_from`]).
fn hidden_for(store: &Store, user: u64, thread: u64) -> Result<(u64, HashSet<u64>), Reject> {
    let upto = hidden_upto(store, user, thread)?;
    let deleted = store
        .hidden_messages(user, thread)
        .map_err(internal)?
        .into_iter()
        .collect();
    Ok((upto, deleted))
}

/// The mark up to which `user` hid the conversation `thread` (`SET_THREAD_STATE`), 0 if it is
/// not hidden.
fn hidden_upto(store: &Store, user: u64, thread: u64) -> Result<u64, Reject> {
    Ok(store
        .private_state(user, thread)
        .map_err(internal)?
        .filter(|p| p.hidden)
        .map_or(0, |p| p.hidden_upto))
}

/// A page of a thread's history, from the committed state (runs on the read pool).
pub(super) fn history(
    shared: &Shared,
    caller: &Caller,
    f: History,
) -> Result<Option<Frame>, Reject> {
    let store = &shared.store;
    check_member(store, caller, f.thread)?;
    let (upto, deleted) = hidden_for(store, caller.user, f.thread)?;
    let limit = match f.limit as usize {
        0 => DEFAULT_PAGE,
        n => n.min(shared.config.history_limit as usize),
    };
    let (after, before, newest_first) = match f.direction {
        Direction::Backward => (upto, if f.anchor == 0 { u64::MAX } else { f.anchor }, true),
        Direction::Forward => (f.anchor.max(upto), u64::MAX, false),
    };
    let budget = shared.config.max_reply_bytes;
    let mut messages = Vec::new();
    let mut metas = Vec::new();
    let mut size = 0;
    let more = store
        .messages(f.thread, after, before, newest_first, limit, |id, m| {
            if hidden_from(upto, &deleted, id, &m) {
                return Ok(Visit::Skipped);
            }
            let meta = edits::meta(store, f.thread, id, &m, caller.user)?;
            let m = to_wire(f.thread, id, m);
            size += m.size() + meta.as_ref().map_or(0, Wire::size);
            if size > budget && !messages.is_empty() {
                return Ok(Visit::Stop);
            }
            messages.push(m);
            metas.extend(meta);
            Ok(Visit::Took)
        })
        .map_err(internal)?;
    Ok(Some(
        Messages {
            thread: f.thread,
            messages,
            more,
            meta: metas,
        }
        .into(),
    ))
}

/// Members (other than the sender) whose delivered and read cursors reach `message`, from the
/// committed state (runs on the read pool).
pub(super) fn readers(
    shared: &Shared,
    caller: &Caller,
    thread: u64,
    message: u64,
) -> Result<Option<Frame>, Reject> {
    let store = &shared.store;
    check_member(store, caller, thread)?;
    let m = store
        .message(thread, message)
        .map_err(internal)?
        .ok_or((ErrorCode::UnknownMessage, "no such message"))?;
    if message <= hidden_upto(store, caller.user, thread)?
        || edits::deleted_by(store, thread, message, &m, caller.user).map_err(internal)?
    {
        return Err(edits::DELETED_FOR_YOU);
    }
    let sender = m.sender;
    let mut delivered = Vec::new();
    let mut read = Vec::new();
    for (user, c) in store.members(thread).map_err(internal)? {
        if user == sender {
            continue;
        }
        if c.delivered >= message {
            delivered.push(user);
        }
        if c.read >= message {
            read.push(user);
        }
    }
    Ok(Some(
        ReadersList {
            thread,
            message,
            delivered,
            read,
        }
        .into(),
    ))
}
#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    #[test]
    fn typing_is_pushed_at_most_once_per_interval_but_a_stop_after_a_start_goes_out() {
        let mut gate = TypingGate::default();
        assert!(gate.admit(1, 7, true, 10 * SEC));
        for ms in 1..50 {
            assert!(
                !gate.admit(1, 7, true, 10 * SEC + ms * 1000),
                "a refresh at {ms} ms"
            );
        }
        assert!(
            gate.admit(1, 7, false, 10 * SEC + 60_000),
            "stop after start"
        );
        assert!(!gate.admit(1, 7, false, 10 * SEC + 70_000), "a second stop");
        assert!(
            !gate.admit(1, 7, true, 10 * SEC + 80_000),
            "a start right after a stop"
        );
        assert!(
            gate.admit(1, 7, true, 13 * SEC + 60_000),
            "a start after the interval"
        );
        assert!(gate.admit(2, 7, true, 13 * SEC + 60_001), "another thread");
        assert!(gate.admit(1, 8, true, 13 * SEC + 60_002), "another user");
    }

    #[test]
    fn the_typing_table_sweeps_what_has_expired() {
        let mut gate = TypingGate::default();
        for user in 0..TYPING_SWEEP_MIN as u64 {
            assert!(gate.admit(1, user, true, 0));
        }
        assert_eq!(gate.last.len(), TYPING_SWEEP_MIN);
        assert!(gate.admit(1, u64::MAX, true, 10 * SEC));
        assert_eq!(gate.last.len(), 1, "the expired entries were swept");
        assert!(
            gate.admit(1, 0, true, 10 * SEC),
            "a swept entry admits again"
        );
    }
}
