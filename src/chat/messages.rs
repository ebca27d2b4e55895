//! Messages: send with idempotent retries, history, receipts (the three ticks), recall,
//! delete-for-me, readers, typing. All run on the thread's owner shard.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use courier_protocol::wire::Wire;
use courier_protocol::{
    Direction, Done, ErrorCode, Frame, History, Message, MessageKind, Messages, ReadersList,
    Receipt, ReceiptKind, ReceiptPush, Send, Sent, SystemEventKind, TypingPush,
};

use super::engine::{Engine, Reject};
use super::threads::internal;
use super::{Caller, Shared};
use crate::clock::wall_us;
use crate::store::{MessageRecord, Store};

/// Messages returned when a request asks for 0.
const DEFAULT_PAGE: usize = 50;

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
        let key = (f.thread, caller.user, f.client_msg_id);
        let earlier = match self.round_sends.get(&key) {
            Some(&id) => Some(id),
            None => self
                .shared
                .store
                .dedupe(f.thread, caller.user, f.client_msg_id)
                .map_err(internal)?,
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
        };
        let id = self.append(f.thread, rec, Some(caller), &[])?;
        self.round_sends.insert(key, id);
        self.batch
            .put_dedupe(f.thread, caller.user, f.client_msg_id, id);
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

    /// Cumulative cursors that only move forward; read implies delivered. An advance is
    /// pushed to every member's devices (the sender's ticks; the reader's other devices).
    pub(super) fn receipt(&mut self, caller: &Caller, f: Receipt) -> Result<Option<Frame>, Reject> {
        let state = self.member_state(caller, f.thread)?;
        let up_to = f.up_to.min(state.rec.last_msg_id);
        let me = state
            .members
            .get_mut(&caller.user)
            .expect("member_state checked membership");
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
            let users = state.member_ids.clone();
            self.save_member(f.thread, caller.user);
            let changed = self.tick();
            self.thread_state(f.thread)?.rec.changed_at = changed;
            self.save_thread(f.thread);
            let push = ReceiptPush {
                thread: f.thread,
                user: caller.user,
                kind: f.kind,
                up_to,
            };
            self.push(users, Some(caller), push.into());
        }
        Ok(Some(Done {}.into()))
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
            .shared
            .store
            .message(thread, message)
            .map_err(internal)?
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
        m.body = Bytes::new();
        self.batch.put_message(thread, message, &m);
        self.system(thread, caller, SystemEventKind::Recalled, message, "", &[])?;
        Ok(Some(Done {}.into()))
    }

    pub(super) fn delete_for_me(
        &mut self,
        caller: &Caller,
        thread: u64,
        message: u64,
    ) -> Result<Option<Frame>, Reject> {
        self.member_state(caller, thread)?;
        if self
            .shared
            .store
            .message(thread, message)
            .map_err(internal)?
            .is_none()
        {
            return Err((ErrorCode::UnknownMessage, "no such message"));
        }
        self.batch.put_hidden(caller.user, thread, message);
        Ok(Some(Done {}.into()))
    }

    /// Ephemeral: pushed to the other members' devices, never stored, never answered.
    pub(super) fn typing(
        &mut self,
        caller: &Caller,
        thread: u64,
        active: bool,
    ) -> Result<Option<Frame>, Reject> {
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

/// What `user` must not see of `thread`: messages up to the hidden-conversation mark and
/// those deleted for themselves.
fn hidden_for(store: &Store, user: u64, thread: u64) -> Result<(u64, HashSet<u64>), Reject> {
    let upto = store
        .private_state(user, thread)
        .map_err(internal)?
        .filter(|p| p.hidden)
        .map_or(0, |p| p.hidden_upto);
    let deleted = store
        .hidden_messages(user, thread)
        .map_err(internal)?
        .into_iter()
        .collect();
    Ok((upto, deleted))
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
    let mut size = 0;
    let mut full = false;
    let mut more = store
        .messages(f.thread, after, before, newest_first, limit, |id, m| {
            if full {
                return Ok(());
            }
            if deleted.contains(&id) {
                return Ok(());
            }
            let m = to_wire(f.thread, id, m);
            size += m.size();
            if size > budget && !messages.is_empty() {
                full = true;
                return Ok(());
            }
            messages.push(m);
            Ok(())
        })
        .map_err(internal)?;
    more |= full;
    Ok(Some(
        Messages {
            thread: f.thread,
            messages,
            more,
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
    let sender = store
        .message(thread, message)
        .map_err(internal)?
        .ok_or((ErrorCode::UnknownMessage, "no such message"))?
        .sender;
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
