//! The contact book and user lookup. Contacts gate presence: only a contact's presence is
//! disclosed.

use courier_protocol::wire::Wire;
use courier_protocol::{Contacts, Done, ErrorCode, Frame, User, UserInfo, Users};

use super::engine::{Engine, Reject};
use super::threads::internal;
use super::ChatConfig;
use crate::caller::Caller;

/// Most ids one GET_USERS may ask for, unless the reply budget carries fewer.
const MAX_GET_USERS: usize = 1000;
/// The most bytes one `UserInfo` takes: id, handle length, a 32-byte handle.
const USER_INFO_BYTES: usize = 8 + 2 + 32;

/// Refuses a GET_USERS that asks for more users than one reply may carry. Also checked by a
/// node that gathers the answer from several nodes, before it asks any.
pub fn check_get_users(config: &ChatConfig, ids: &[u64]) -> Result<(), (ErrorCode, &'static str)> {
    let max = MAX_GET_USERS.min(config.max_reply_bytes.saturating_sub(16) / USER_INFO_BYTES);
    if ids.len() > max {
        return Err((
            ErrorCode::InvalidArgument,
            "too many users at once: ask for at most 1,000 (fewer when the server's max_frame is under 48 KiB: max_frame / 45)",
        ));
    }
    Ok(())
}

impl Engine {
    pub(super) fn contact_add(
        &mut self,
        caller: &Caller,
        user: u64,
    ) -> Result<Option<Frame>, Reject> {
        if user == caller.user {
            return Err((
                ErrorCode::InvalidArgument,
                "you cannot add yourself as a contact",
            ));
        }
        self.user_exists(caller, user)?;
        if self.is_contact(caller.user, user)? {
            return Ok(Some(Done {}.into()));
        }
        let max = self.shared.config.max_contacts;
        self.settle();
        let store = &self.shared.store;
        let committed = store
            .count_contacts(caller.user, max + 1)
            .map_err(internal)?;
        if self.staged.contacts_of(caller.user, committed) >= max {
            return Err((
                ErrorCode::TooManyContacts,
                "you have as many contacts as you may have; remove one first",
            ));
        }
        self.staged.set_contact(caller.user, user, true);
        self.batch.put_contact(caller.user, user);
        Ok(Some(Done {}.into()))
    }

    /// Whether `other` is a contact of `user`, counting this round's changes.
    fn is_contact(&self, user: u64, other: u64) -> Result<bool, Reject> {
        match self.staged.contact(user, other) {
            Some(present) => Ok(present),
            None => self.shared.store.is_contact(user, other).map_err(internal),
        }
    }

    pub(super) fn contact_remove(
        &mut self,
        caller: &Caller,
        user: u64,
    ) -> Result<Option<Frame>, Reject> {
        if self.is_contact(caller.user, user)? {
            self.staged.set_contact(caller.user, user, false);
            self.batch.delete_contact(caller.user, user);
        }
        Ok(Some(Done {}.into()))
    }

    /// Every contact, in one frame: the cap keeps the list under the reply budget. Should the
    /// store hold more (the cap was lowered after they were added), the list stops at the
    /// budget rather than send a frame clients were told they would never get.
    pub(super) fn contact_list(&mut self, caller: &Caller) -> Result<Option<Frame>, Reject> {
        let store = &self.shared.store;
        let budget = self.shared.config.max_reply_bytes.saturating_sub(16);
        let mut users = Vec::new();
        let mut size = 0;
        for id in store.contacts(caller.user).map_err(internal)? {
            if let Some(u) = store.user(id).map_err(internal)? {
                let info = UserInfo {
                    id,
                    handle: u.handle,
                };
                size += info.size();
                if size > budget || users.len() == u16::MAX as usize {
                    tracing::warn!(
                        user = caller.user,
                        "CONTACTS cut at the reply budget: the user has more contacts than the cap"
                    );
                    break;
                }
                users.push(info);
            }
        }
        Ok(Some(Contacts { users }.into()))
    }

    pub(super) fn lookup_user(&mut self, handle: &str) -> Result<Option<Frame>, Reject> {
        let id = self
            .shared
            .store
            .user_id_by_handle(handle)
            .map_err(internal)?;
        match id {
            Some(id) => Ok(Some(
                User {
                    user: UserInfo {
                        id,
                        handle: handle.into(),
                    },
                }
                .into(),
            )),
            None => Err((ErrorCode::UnknownUser, "no user has that handle")),
        }
    }

    /// Handles by id, so clients can name senders they have no contact entry for. Handles are
    /// public (LOOKUP_USER maps them the other way), so any user may ask.
    pub(super) fn get_users(&mut self, ids: &[u64]) -> Result<Option<Frame>, Reject> {
        check_get_users(&self.shared.config, ids)?;
        let mut users = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(u) = self.shared.store.user(id).map_err(internal)? {
                users.push(UserInfo {
                    id,
                    handle: u.handle,
                });
            }
        }
        Ok(Some(Users { users }.into()))
    }
}
