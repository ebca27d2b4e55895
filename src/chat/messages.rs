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
use super::Caller;
use crate::clock::wall_us;
use crate::store::MessageRecord;

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

    /// What `user` must not see of `thread`: messages up to the hidden-conversation mark and
    /// those deleted for themselves.
    fn hidden_for(&self, user: u64, thread: u64) -> Result<(u64, HashSet<u64>), Reject> {
        let store = &self.shared.store;
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

    pub(super) fn history(&mut self, caller: &Caller, f: History) -> Result<Option<Frame>, Reject> {
        self.member_state(caller, f.thread)?;
        let (upto, deleted) = self.hidden_for(caller.user, f.thread)?;
        let limit = match f.limit as usize {
            0 => DEFAULT_PAGE,
            n => n.min(self.shared.config.history_limit as usize),
        };
        let (after, before, newest_first) = match f.direction {
            Direction::Backward => (upto, if f.anchor == 0 { u64::MAX } else { f.anchor }, true),
            Direction::Forward => (f.anchor.max(upto), u64::MAX, false),
        };
        let budget = self.shared.config.max_reply_bytes;
        let mut messages = Vec::new();
        let mut size = 0;
        let mut full = false;
        let mut more = self
            .shared
            .store
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
        // Stamped, and the membership's change marker moved, so the caller's other devices
        // get the deletion from SYNC.
        let at = self.tick();
        self.batch.put_hidden(caller.user, thread, message, at);
        let mut state = self.private(caller.user, thread)?;
        state.changed_at = at;
        self.put_private(caller.user, thread, state);
        Ok(Some(Done {}.into()))
    }

    /// Members (other than the sender) whose delivered and read cursors reach `message`.
    pub(super) fn readers(
        &mut self,
        caller: &Caller,
        thread: u64,
        message: u64,
    ) -> Result<Option<Frame>, Reject> {
        let m = self
            .shared
            .store
            .message(thread, message)
            .map_err(internal)?;
        let state = self.member_state(caller, thread)?;
        let sender = m
            .ok_or((ErrorCode::UnknownMessage, "no such message"))?
            .sender;
        let mut delivered = Vec::new();
        let mut read = Vec::new();
        for (&user, c) in &state.members {
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
        delivered.sort_unstable();
        read.sort_unstable();
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
