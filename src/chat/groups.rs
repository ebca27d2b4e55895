//! Groups: create, add and remove members, leave, rename. Each change is a system message in
//! the thread and a membership row per user (a tombstone for those who leave).

use courier_protocol::{
    ErrorCode, Frame, MessageKind, MessagePush, SystemEventKind, ThreadInfo, ThreadKind,
};

use super::engine::{Engine, Reject};
use super::messages::to_wire;
use super::threads::{system_body, view, ThreadState, MAX_NAME};
use crate::caller::Caller;
use crate::store::{MemberRecord, MessageRecord, PrivateState, ThreadRecord};

fn valid_name(name: &str) -> Result<(), Reject> {
    if name.trim().is_empty() || name.len() > MAX_NAME {
        Err((
            ErrorCode::InvalidArgument,
            "a group name is 1 to 64 bytes and not only spaces",
        ))
    } else {
        Ok(())
    }
}

/// The membership row of a user who left or was removed at `at` (the system message's id).
fn tombstone(at: u64) -> PrivateState {
    PrivateState {
        changed_at: at,
        left: true,
        ..PrivateState::default()
    }
}

impl Engine {
    pub(super) fn create_group(
        &mut self,
        caller: &Caller,
        name: String,
        members: Vec<u64>,
    ) -> Result<Option<Frame>, Reject> {
        valid_name(&name)?;
        let mut all = members;
        all.push(caller.user);
        all.sort_unstable();
        all.dedup();
        if all.len() > self.shared.config.max_group {
            return Err((ErrorCode::GroupFull, "more members than a group may have"));
        }
        for &u in &all {
            self.user_exists(caller, u)?;
        }
        let thread = self.create_thread(ThreadKind::Group, &name, caller.user, &all, Vec::new())?;
        let store = self.shared.store.clone();
        let rec = ThreadRecord {
            kind: ThreadKind::Group,
            name: name.clone(),
            created_by: caller.user,
            ..Default::default()
        };
        let map = all
            .iter()
            .map(|&u| {
                (
                    u,
                    MemberRecord {
                        admin: u == caller.user,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let mut state = ThreadState::new(rec, map);
        // The creation notice goes to every member's devices; the creator's asking device
        // also gets THREAD_INFO. Staged directly: this shard may not own the new thread.
        let id = self.tick();
        let body = system_body(SystemEventKind::Created, caller.user, 0, &name, Vec::new());
        let msg = MessageRecord {
            sender: caller.user,
            client_msg_id: 0,
            kind: MessageKind::System,
            recalled: false,
            body,
            ..Default::default()
        };
        self.batch.put_message(thread, id, &msg);
        state.rec.last_msg_id = id;
        state.rec.changed_at = id;
        self.batch.put_thread(thread, &state.rec);
        if let Some(cached) = self.threads.get_mut(thread) {
            cached.rec = state.rec.clone();
        }
        self.push(
            state.member_ids.clone(),
            None,
            MessagePush {
                message: to_wire(thread, id, msg),
                reply_to: 0,
            }
            .into(),
        );
        Ok(Some(
            ThreadInfo {
                thread: view(&store, thread, &state, caller.user)?,
            }
            .into(),
        ))
    }

    fn admin_state(&mut self, caller: &Caller, thread: u64) -> Result<&mut ThreadState, Reject> {
        let state = self.member_state(caller, thread)?;
        if state.rec.kind != ThreadKind::Group {
            return Err((ErrorCode::NotAGroup, "only groups have members to manage"));
        }
        if !state.members.get(&caller.user).is_some_and(|m| m.admin) {
            return Err((ErrorCode::NotAdmin, "only a group admin may do this"));
        }
        Ok(state)
    }

    pub(super) fn add_members(
        &mut self,
        caller: &Caller,
        thread: u64,
        users: Vec<u64>,
    ) -> Result<Option<Frame>, Reject> {
        let max = self.shared.config.max_group;
        let state = self.admin_state(caller, thread)?;
        let mut new: Vec<u64> = users
            .into_iter()
            .filter(|u| !state.members.contains_key(u))
            .collect();
        new.sort_unstable();
        new.dedup();
        if state.members.len() + new.len() > max {
            return Err((
                ErrorCode::GroupFull,
                "the group would exceed its member limit",
            ));
        }
        for &u in &new {
            self.user_exists(caller, u)?;
        }
        let Some(&first) = new.first() else {
            return Ok(Some(courier_protocol::Done {}.into()));
        };
        let state = self.thread_state(thread)?;
        // A user added back may have sent messages in an earlier stay, all at or below the
        // newest message now; their read cursor starts at 0, so the unread count must not
        // take those for others' (see `MemberRecord::own_floor`).
        let fresh = MemberRecord {
            own_floor: if state.rec.countable > 0 {
                state.rec.last_msg_id
            } else {
                0
            },
            ..MemberRecord::default()
        };
        for &u in &new {
            state.members.insert(u, fresh.clone());
        }
        state.refresh_ids();
        for &u in &new {
            self.batch.put_member(thread, u, &fresh);
        }
        // One MEMBER_ADDED message names every user added, however many.
        let body = system_body(
            SystemEventKind::MemberAdded,
            caller.user,
            first,
            "",
            new.clone(),
        );
        let at = self.append_system(thread, caller, body, &[])?;
        for u in new {
            // A fresh membership; it replaces the tombstone of an earlier stay, if any.
            let joined = PrivateState {
                changed_at: at,
                ..PrivateState::default()
            };
            self.put_private(u, thread, joined);
        }
        Ok(Some(courier_protocol::Done {}.into()))
    }

    pub(super) fn remove_member(
        &mut self,
        caller: &Caller,
        thread: u64,
        user: u64,
    ) -> Result<Option<Frame>, Reject> {
        if user == caller.user {
            return self.leave_group(caller, thread);
        }
        let state = self.admin_state(caller, thread)?;
        if state.members.remove(&user).is_none() {
            return Err((
                ErrorCode::NotMember,
                "that user is not a member of this group",
            ));
        }
        state.refresh_ids();
        self.batch.delete_member(thread, user);
        let at = self.system(
            thread,
            caller,
            SystemEventKind::MemberRemoved,
            user,
            "",
            &[user],
        )?;
        self.put_private(user, thread, tombstone(at));
        Ok(Some(courier_protocol::Done {}.into()))
    }

    /// Leaving hands admin to the lowest remaining member id when the last admin leaves, so a
    /// group is never left without one.
    pub(super) fn leave_group(
        &mut self,
        caller: &Caller,
        thread: u64,
    ) -> Result<Option<Frame>, Reject> {
        let state = self.member_state(caller, thread)?;
        if state.rec.kind != ThreadKind::Group {
            return Err((ErrorCode::NotAGroup, "a direct thread cannot be left"));
        }
        state.members.remove(&caller.user);
        state.refresh_ids();
        let promote = if state.members.values().any(|m| m.admin) {
            None
        } else {
            state.members.keys().min().copied()
        };
        if let Some(u) = promote {
            if let Some(m) = state.members.get_mut(&u) {
                m.admin = true;
            }
            self.save_member(thread, u);
        }
        self.batch.delete_member(thread, caller.user);
        let at = self.system(
            thread,
            caller,
            SystemEventKind::MemberLeft,
            caller.user,
            "",
            &[caller.user],
        )?;
        self.put_private(caller.user, thread, tombstone(at));
        Ok(Some(courier_protocol::Done {}.into()))
    }

    pub(super) fn rename_group(
        &mut self,
        caller: &Caller,
        thread: u64,
        name: String,
    ) -> Result<Option<Frame>, Reject> {
        valid_name(&name)?;
        let state = self.member_state(caller, thread)?;
        if state.rec.kind != ThreadKind::Group {
            return Err((
                ErrorCode::NotAGroup,
                "a direct thread has no name to change",
            ));
        }
        state.rec.name = name.clone();
        self.system(thread, caller, SystemEventKind::Renamed, 0, &name, &[])?;
        Ok(Some(courier_protocol::Done {}.into()))
    }
}
