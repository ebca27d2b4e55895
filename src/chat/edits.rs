//! Changes to an existing message by a member: replies (checked at SEND), edits and
//! reactions. All run on the thread's owner shard.
//!
//! They take the path of RECALL: the stored message is changed in the round's batch, and a
//! SYSTEM message (EDITED, REACTED) is appended in the same commit. That system message is what
//! members' devices get, as a MESSAGE_PUSH now and from SYNC later (its id is above any
//! watermark that predates the change), and it carries what a device needs to apply the
//! change without asking: the new body, or the reaction and the message's new counts. HISTORY
//! reads the changed message itself: the latest body, `edited_at`, the counts, plus the
//! caller's own reaction (`reactions` family), in `MESSAGES.meta`.
//!
//! A member who deleted a message for themselves (DELETE_FOR_ME) hears nothing more of it:
//! its notices (RECALLED, EDITED, REACTED) are not pushed to them, their HISTORY and SYNC
//! leave the notices out like the message, and their READERS, EDIT and REACT of it answer
//! UNKNOWN_MESSAGE. The message record says whether anyone deleted it
//! (`MessageRecord::deleted_for_some`), so a notice about a message nobody deleted costs
//! nothing more; only for one that somebody did, one `hidden` point read per member decides.

use std::sync::Arc;

use bytes::Bytes;
use courier_protocol::wire::Wire;
use courier_protocol::{
    Done, Edit, ErrorCode, Frame, MessageKind, MessageMeta, React, ReactionCount, SystemEvent,
    SystemEventKind,
};

use super::engine::{Engine, Reject};
use super::threads::internal;
use crate::caller::Caller;
use crate::clock::wall_us;
use crate::store::{Error as StoreError, MessageRecord, Store};

/// The answer about a message the caller deleted for themselves: the same as for none.
pub(super) const DELETED_FOR_YOU: Reject = (
    ErrorCode::UnknownMessage,
    "no such message (you deleted it for yourself)",
);

/// The message a notice (a RECALLED, EDITED or REACTED system message) is about, read from
/// the head of its body (`event` u8, `actor` u64, `subject` u64) without decoding the rest;
/// `None` for any other message.
pub(super) fn notice_subject(m: &MessageRecord) -> Option<u64> {
    if m.kind != MessageKind::System {
        return None;
    }
    let head = m.body.get(..17)?;
    match SystemEventKind::from_code(head[0])? {
        SystemEventKind::Recalled | SystemEventKind::Edited | SystemEventKind::Reacted => {
            Some(u64::from_be_bytes(head[9..17].try_into().ok()?))
        }
        _ => None,
    }
}

/// Whether `user` deleted message `id` (`m`) of `thread` for themselves, from the committed
/// state: no read when nobody deleted it.
pub(super) fn deleted_by(
    store: &Store,
    thread: u64,
    id: u64,
    m: &MessageRecord,
    user: u64,
) -> Result<bool, StoreError> {
    Ok(m.deleted_for_some && store.is_hidden(user, thread, id)?)
}

/// The longest reaction, in bytes of UTF-8 (an emoji with modifiers and joiners fits).
pub(super) const MAX_REACTION_BYTES: usize = 32;

/// A reaction is 1 to [`MAX_REACTION_BYTES`] bytes with no whitespace and no control
/// characters (empty means "remove mine" and is checked by the caller's meaning, not here).
fn check_reaction(reaction: &str) -> Result<(), Reject> {
    if reaction.len() > MAX_REACTION_BYTES
        || reaction
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err((
            ErrorCode::InvalidReaction,
            "a reaction is 1 to 32 bytes of UTF-8 (e.g. one emoji) without spaces or control characters; send it empty to remove yours",
        ));
    }
    Ok(())
}

/// `counts` after one user's reaction moves from `previous` to `next` (either may be empty:
/// none), most frequent first (ties by reaction, so every server orders alike). `None` when
/// `next` would be one distinct reaction more than `max`.
fn recount(
    counts: &[ReactionCount],
    previous: &str,
    next: &str,
    max: usize,
) -> Option<Vec<ReactionCount>> {
    let mut out = counts.to_vec();
    if !previous.is_empty() {
        if let Some(i) = out.iter().position(|c| c.reaction == previous) {
            out[i].count = out[i].count.saturating_sub(1);
            if out[i].count == 0 {
                out.remove(i);
            }
        }
    }
    if !next.is_empty() {
        match out.iter().position(|c| c.reaction == next) {
            Some(i) => out[i].count += 1,
            None if out.len() >= max => return None,
            None => out.push(ReactionCount {
                reaction: next.into(),
                count: 1,
            }),
        }
    }
    out.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.reaction.cmp(&b.reaction))
    });
    Some(out)
}

/// The body of an EDITED or REACTED system message.
fn change_body(ev: SystemEvent) -> bytes::Bytes {
    let mut buf = bytes::BytesMut::with_capacity(ev.size());
    ev.put(&mut buf);
    buf.freeze()
}

/// What HISTORY and SYNC list for message `id` besides the message itself (`None` when it
/// neither replies, nor was edited, nor has reactions): `user`'s own reaction is read only for
/// a message that has any.
pub(super) fn meta(
    store: &Store,
    thread: u64,
    id: u64,
    m: &MessageRecord,
    user: u64,
) -> Result<Option<MessageMeta>, StoreError> {
    if !m.has_meta() {
        return Ok(None);
    }
    let mine = if m.reactions.is_empty() {
        String::new()
    } else {
        store.reaction(thread, id, user)?.unwrap_or_default()
    };
    Ok(Some(MessageMeta {
        id,
        reply_to: m.reply_to,
        edited_at: m.edited_at,
        reactions: m.reactions.clone(),
        mine,
    }))
}

impl Engine {
    /// Message `id` of `thread` as this round left it (changes staged earlier in the round
    /// included).
    pub(super) fn message_now(
        &self,
        thread: u64,
        id: u64,
    ) -> Result<Option<MessageRecord>, Reject> {
        if let Some(m) = self.round_messages.get(&(thread, id)) {
            return Ok(Some(m.clone()));
        }
        self.shared.store.message(thread, id).map_err(internal)
    }

    /// Stages a change to a stored message; later requests of the round read it back through
    /// [`message_now`](Self::message_now).
    pub(super) fn put_changed(&mut self, thread: u64, id: u64, m: MessageRecord) {
        self.batch.put_message(thread, id, &m);
        self.round_messages.insert((thread, id), m);
    }

    /// `user`'s reaction to a message as this round left it; empty for none.
    fn reaction_now(&self, thread: u64, id: u64, user: u64) -> Result<String, Reject> {
        if let Some(r) = self.round_reactions.get(&(thread, id, user)) {
            return Ok(r.clone());
        }
        Ok(self
            .shared
            .store
            .reaction(thread, id, user)
            .map_err(internal)?
            .unwrap_or_default())
    }

    /// Stages the removal of every reaction to a message (it was recalled: a tombstone keeps
    /// none), this round's included.
    pub(super) fn drop_reactions(&mut self, thread: u64, id: u64) -> Result<(), Reject> {
        let mut users = self.shared.store.reactors(thread, id).map_err(internal)?;
        users.extend(
            self.round_reactions
                .keys()
                .filter(|&&(t, m, _)| (t, m) == (thread, id))
                .map(|&(_, _, user)| user),
        );
        for user in users {
            self.batch.put_reaction(thread, id, user, "");
            self.round_reactions
                .insert((thread, id, user), String::new());
        }
        Ok(())
    }

    /// Whether message `id` (`m`) of `thread` is gone for `user`, this round's changes
    /// included: they deleted it for themselves, or it is at or below the mark of the
    /// conversation they hid (`SET_THREAD_STATE`). No read unless someone deleted the message
    /// or hid the conversation past it.
    pub(super) fn gone_now(
        &self,
        thread: u64,
        id: u64,
        m: &MessageRecord,
        user: u64,
    ) -> Result<bool, Reject> {
        if m.deleted_for_some
            && (self.staged.is_hidden(user, thread, id)
                || self
                    .shared
                    .store
                    .is_hidden(user, thread, id)
                    .map_err(internal)?)
        {
            return Ok(true);
        }
        // Not cached (callers load it first): read the private state rather than guess.
        let mark = self
            .threads
            .get(thread)
            .map_or(u64::MAX, |s| s.rec.hidden_upto);
        if id > mark {
            return Ok(false);
        }
        let private = self.private(user, thread)?;
        Ok(private.hidden && id <= private.hidden_upto)
    }

    /// Appends a notice (`body`, a RECALLED, EDITED or REACTED event) about message `subject`
    /// (`m`, as it was before the change) and pushes it to every member except those for
    /// whom `subject` is gone ([`gone_now`](Self::gone_now)). Returns the notice's id.
    pub(super) fn notice(
        &mut self,
        thread: u64,
        caller: &Caller,
        body: Bytes,
        subject: u64,
        m: &MessageRecord,
    ) -> Result<u64, Reject> {
        let state = self.thread_state(thread)?;
        let members = state.member_ids.clone();
        let users = if m.deleted_for_some || subject <= state.rec.hidden_upto {
            let mut keep = Vec::with_capacity(members.len());
            for &user in members.iter() {
                if !self.gone_now(thread, subject, m, user)? {
                    keep.push(user);
                }
            }
            Arc::from(keep)
        } else {
            members
        };
        let rec = MessageRecord {
            sender: caller.user,
            kind: MessageKind::System,
            body,
            ..Default::default()
        };
        self.append_to(thread, rec, None, users)
    }

    /// A SEND's `reply_to` must name a message of the same thread that a person wrote and did
    /// not recall.
    pub(super) fn check_reply(
        &self,
        caller: &Caller,
        thread: u64,
        reply_to: u64,
    ) -> Result<(), Reject> {
        let target = self.message_now(thread, reply_to)?.ok_or((
            ErrorCode::UnknownMessage,
            "reply_to names no message of this thread; quote a message of the thread you send to, or send 0",
        ))?;
        if self.gone_now(thread, reply_to, &target, caller.user)? {
            return Err((
                ErrorCode::UnknownMessage,
                "reply_to names a message you deleted for yourself; send without reply_to",
            ));
        }
        if target.kind == MessageKind::System {
            return Err((
                ErrorCode::InvalidArgument,
                "reply_to names a system notice; quote a message someone sent",
            ));
        }
        if target.recalled {
            return Err((
                ErrorCode::MessageRecalled,
                "the message you reply to was recalled; send without reply_to",
            ));
        }
        Ok(())
    }

    /// The sender replaces the body of their message within the edit window. An EDIT whose
    /// body is already the message's (a retry) changes nothing and answers DONE.
    pub(super) fn edit(&mut self, caller: &Caller, f: Edit) -> Result<Option<Frame>, Reject> {
        if f.body.len() > self.shared.config.max_body {
            return Err((
                ErrorCode::BodyTooLarge,
                "the new body is over the size limit",
            ));
        }
        self.member_state(caller, f.thread)?;
        let mut m = self
            .message_now(f.thread, f.message)?
            .ok_or((ErrorCode::UnknownMessage, "no such message"))?;
        if self.gone_now(f.thread, f.message, &m, caller.user)? {
            return Err(DELETED_FOR_YOU);
        }
        if m.sender != caller.user || m.kind == MessageKind::System {
            return Err((ErrorCode::NotSender, "only the sender may edit a message"));
        }
        if m.recalled {
            return Err((
                ErrorCode::MessageRecalled,
                "the message was recalled; send a new one instead",
            ));
        }
        // A MEDIA body names the media it shows, and who may download a media object follows
        // from the messages that were sent with it: an edit must not swap it for another.
        if m.kind != MessageKind::Text {
            return Err((
                ErrorCode::InvalidArgument,
                "only text messages can be edited; send the media again instead",
            ));
        }
        if m.body == f.body {
            return Ok(Some(Done {}.into()));
        }
        if wall_us().saturating_sub(f.message) > self.shared.config.edit_window_us {
            return Err((
                ErrorCode::EditWindowExpired,
                "the message is too old to edit; send a new one instead",
            ));
        }
        let body = change_body(SystemEvent {
            event: SystemEventKind::Edited,
            actor: caller.user,
            subject: f.message,
            body: f.body.clone(),
            ..SystemEvent::default()
        });
        let at = self.notice(f.thread, caller, body, f.message, &m)?;
        m.body = f.body;
        m.edited_at = at;
        self.put_changed(f.thread, f.message, m);
        Ok(Some(Done {}.into()))
    }

    /// Sets the caller's one reaction to a message (empty: removes it). Setting the reaction
    /// the caller already has changes nothing and answers DONE.
    pub(super) fn react(&mut self, caller: &Caller, f: React) -> Result<Option<Frame>, Reject> {
        check_reaction(&f.reaction)?;
        self.member_state(caller, f.thread)?;
        let mut m = self
            .message_now(f.thread, f.message)?
            .ok_or((ErrorCode::UnknownMessage, "no such message"))?;
        if self.gone_now(f.thread, f.message, &m, caller.user)? {
            return Err(DELETED_FOR_YOU);
        }
        if m.kind == MessageKind::System {
            return Err((
                ErrorCode::InvalidArgument,
                "system notices take no reactions; react to a message someone sent",
            ));
        }
        if m.recalled {
            return Err((
                ErrorCode::MessageRecalled,
                "the message was recalled and takes no reactions",
            ));
        }
        let previous = self.reaction_now(f.thread, f.message, caller.user)?;
        if previous == f.reaction {
            return Ok(Some(Done {}.into()));
        }
        let counts = recount(
            &m.reactions,
            &previous,
            &f.reaction,
            self.shared.config.max_reactions,
        )
        .ok_or((
            ErrorCode::TooManyReactions,
            "the message has as many different reactions as it may; react with one it already has",
        ))?;
        let body = change_body(SystemEvent {
            event: SystemEventKind::Reacted,
            actor: caller.user,
            subject: f.message,
            text: f.reaction.clone(),
            reactions: counts.clone(),
            ..SystemEvent::default()
        });
        self.notice(f.thread, caller, body, f.message, &m)?;
        self.batch
            .put_reaction(f.thread, f.message, caller.user, &f.reaction);
        self.round_reactions
            .insert((f.thread, f.message, caller.user), f.reaction);
        m.reactions = counts;
        self.put_changed(f.thread, f.message, m);
        Ok(Some(Done {}.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(list: &[(&str, u32)]) -> Vec<ReactionCount> {
        list.iter()
            .map(|&(r, n)| ReactionCount {
                reaction: r.into(),
                count: n,
            })
            .collect()
    }

    #[test]
    fn a_reaction_is_short_and_has_no_spaces_or_controls() {
        for ok in ["👍", "+1", "👨‍👩‍👧‍👦", "ok", &"x".repeat(MAX_REACTION_BYTES)]
        {
            assert!(check_reaction(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "a b",
            "\n",
            "\u{7}",
            " ",
            &"x".repeat(MAX_REACTION_BYTES + 1),
        ] {
            assert_eq!(
                check_reaction(bad).unwrap_err().0,
                ErrorCode::InvalidReaction,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn recount_moves_one_users_reaction_and_orders_by_count() {
        let two = counts(&[("👍", 2), ("😂", 1)]);
        assert_eq!(
            recount(&two, "", "😂", 8).unwrap(),
            counts(&[("👍", 2), ("😂", 2)])
        );
        assert_eq!(
            recount(&two, "👍", "😂", 8).unwrap(),
            counts(&[("😂", 2), ("👍", 1)])
        );
        assert_eq!(recount(&two, "😂", "", 8).unwrap(), counts(&[("👍", 2)]));
        assert_eq!(
            recount(&two, "", "🎉", 8).unwrap(),
            counts(&[("👍", 2), ("🎉", 1), ("😂", 1)])
        );
    }

    #[test]
    fn recount_refuses_one_distinct_reaction_over_the_cap_but_not_a_move_within_it() {
        let full = counts(&[("a", 1), ("b", 1)]);
        assert_eq!(recount(&full, "", "c", 2), None);
        assert_eq!(
            recount(&full, "", "a", 2).unwrap(),
            counts(&[("a", 2), ("b", 1)])
        );
        // The caller's own reaction was the only "b": moving it to "c" frees its place.
        assert_eq!(
            recount(&full, "b", "c", 2).unwrap(),
            counts(&[("a", 1), ("c", 1)])
        );
    }
}
