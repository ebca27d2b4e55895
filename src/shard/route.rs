//! Where answers and pushes go: local connections, or other shards' mailboxes.
//!
//! A push is encoded **once**; every recipient's queue holds a reference to the same bytes.
//! Recipients on other shards are grouped so each target shard gets one message per push.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use courier_protocol::{Frame, PresencePush};

use super::mailbox::{Recipients, ShardMsg};
use super::presence::Change;
use super::session::reason_for;
use super::Shard;
use crate::caller::ConnRef;
use crate::chat::Effect;

impl Shard {
    /// Sends one effect of a commit on its way.
    pub(super) fn route(&mut self, effect: Effect) {
        match effect {
            Effect::Reply {
                to,
                request_id,
                frame,
            } => {
                let bytes = self.encode(request_id, &frame);
                if to.node != self.core.router.local_index() {
                    return self.reply_remote(to, request_id, bytes);
                }
                self.deliver(to, bytes);
            }
            Effect::Push {
                users,
                except,
                frame,
                notify,
            } => {
                let bytes = self.encode(0, &frame);
                // Users homed on other nodes: one PUSH_BATCH per node; the directory here
                // knows only this node's connections.
                if self.core.links.is_some() {
                    self.push_remote(&users, except, &frame, &bytes, notify.as_deref());
                }
                let mut refs = std::mem::take(&mut self.refs);
                refs.clear();
                for &user in users.iter() {
                    self.core.directory.devices_into(user, &mut refs);
                }
                refs.retain(|r| Some(*r) != except);
                self.deliver_many(&mut refs, &bytes);
                self.refs = refs;
            }
        }
    }

    fn deliver(&mut self, to: ConnRef, bytes: Bytes) {
        if to.shard == self.id {
            if let Some(slot) = self.local_slot(to) {
                self.queue(slot, bytes);
            }
        } else {
            self.outbox.push(
                to.shard,
                ShardMsg::Deliver {
                    to: Recipients::One(to),
                    bytes,
                },
            );
        }
    }

    /// Delivers the same bytes to every connection in `refs` (sorted and deduplicated here),
    /// one mailbox message per other shard.
    fn deliver_many(&mut self, refs: &mut Vec<ConnRef>, bytes: &Bytes) {
        refs.sort_unstable_by_key(|r| (r.shard, r.slot, r.gen));
        refs.dedup();
        for group in refs.chunk_by(|a, b| a.shard == b.shard) {
            let shard = group[0].shard;
            if shard == self.id {
                for &r in group {
                    if let Some(slot) = self.local_slot(r) {
                        self.queue(slot, bytes.clone());
                    }
                }
            } else {
                self.outbox.push(
                    shard,
                    ShardMsg::Deliver {
                        to: Recipients::of(group),
                        bytes: bytes.clone(),
                    },
                );
            }
        }
    }

    /// Handles what other shards and the auth and read workers sent, up to a budget per round.
    pub(super) fn drain_mailbox(&mut self) {
        self.more_mail = false;
        for _ in 0..super::MAILBOX_BUDGET {
            let Ok(msg) = self.mailbox.try_recv() else {
                return;
            };
            match msg {
                ShardMsg::Request {
                    caller,
                    request_id,
                    frame,
                    handles,
                } => self.engine.handle_with(caller, request_id, frame, handles),
                ShardMsg::Forward {
                    caller,
                    request_id,
                    frame,
                    lane,
                    handles,
                } => {
                    if let Frame::PresenceQuery(q) = &frame {
                        self.note_lane(caller.conn, request_id, lane);
                        self.presence_query_for_node(caller, request_id, &q.users);
                        continue;
                    }
                    if !matches!(frame, Frame::Typing(_)) {
                        self.note_lane(caller.conn, request_id, lane);
                    }
                    self.engine.handle_with(caller, request_id, frame, handles)
                }
                ShardMsg::Answer { to, bytes } => self.on_answer(to, bytes),
                ShardMsg::ReadDone { to, bytes } => {
                    self.core.reads.delivered();
                    if to.node != self.core.router.local_index() {
                        // A read another node forwarded: its answer goes back over the links.
                        let request_id = crate::cluster::forward::request_id_of(&bytes);
                        self.reply_remote(to, request_id, bytes);
                    } else if let Some(slot) = self.local_slot(to) {
                        self.queue(slot, bytes);
                    }
                }
                ShardMsg::Deliver { to, bytes } => {
                    for &r in to.as_slice() {
                        if let Some(slot) = self.local_slot(r) {
                            self.queue(slot, bytes.clone());
                        }
                    }
                }
                ShardMsg::Kick { to, code } => {
                    if let Some(slot) = self.local_slot(to) {
                        self.fail(slot, 0, code, reason_for(code));
                    }
                }
                ShardMsg::Revoke { to, digest } => self.revoke_local(to, digest),
                ShardMsg::AuthDone {
                    to,
                    request_id,
                    result,
                } => self.on_auth_done(to, request_id, result),
                ShardMsg::Presence(changes) => {
                    for p in changes.iter() {
                        self.subs.changed(p);
                    }
                }
                ShardMsg::PresenceSnapshot { node, users } => self.presence_snapshot(node, &users),
            }
        }
        self.more_mail = true;
    }

    /// Sends this round's presence changes to every shard, if anyone subscribes anywhere.
    pub(super) fn broadcast_presence(&mut self) {
        if self.presence_out.is_empty() {
            return;
        }
        if self.core.links.is_some() {
            self.presence_to_nodes();
        }
        if self.core.presence_subscriptions.load(Ordering::Relaxed) == 0 {
            self.presence_out.clear();
            return;
        }
        let changes: Arc<[Change]> = self.presence_out.drain(..).collect();
        for shard in 0..self.core.mailboxes.len() as u16 {
            if shard == self.id {
                for p in changes.iter() {
                    self.subs.changed(p);
                }
            } else {
                self.outbox.push(shard, ShardMsg::Presence(changes.clone()));
            }
        }
    }

    /// Pushes the coalesced presence changes (called once a second).
    pub(super) fn flush_presence(&mut self) {
        if let (0, Some(links)) = (self.id, &self.core.links) {
            let core = &self.core;
            core.cluster_presence.retry_stale(links, &core.router);
        }
        let mut subs = std::mem::take(&mut self.subs);
        subs.flush(|p, watchers| {
            let bytes = self.encode(
                0,
                &Frame::PresencePush(PresencePush {
                    presence: p.clone(),
                }),
            );
            for &w in watchers {
                if let Some(slot) = self.local_slot(w) {
                    self.queue(slot, bytes.clone());
                }
            }
        });
        self.subs = subs;
    }
}
