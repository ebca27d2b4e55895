//! The contact book and user lookup. Contacts gate presence: only a contact's presence is
//! disclosed.

use courier_protocol::{Contacts, Done, ErrorCode, Frame, User, UserInfo, Users};

use super::engine::{Engine, Reject};
use super::threads::internal;
use super::Caller;

/// Most ids one GET_USERS may ask for (the answer stays under the reply budget).
const MAX_GET_USERS: usize = 1000;

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
        if self.shared.store.user(user).map_err(internal)?.is_none() {
            return Err((ErrorCode::UnknownUser, "no such user"));
        }
        self.batch.put_contact(caller.user, user);
        Ok(Some(Done {}.into()))
    }

    pub(super) fn contact_remove(
        &mut self,
        caller: &Caller,
        user: u64,
    ) -> Result<Option<Frame>, Reject> {
        self.batch.delete_contact(caller.user, user);
        Ok(Some(Done {}.into()))
    }

    pub(super) fn contact_list(&mut self, caller: &Caller) -> Result<Option<Frame>, Reject> {
        let store = &self.shared.store;
        let mut users = Vec::new();
        for id in store.contacts(caller.user).map_err(internal)? {
            if let Some(u) = store.user(id).map_err(internal)? {
                users.push(UserInfo {
                    id,
                    handle: u.handle,
                });
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
        if ids.len() > MAX_GET_USERS {
            return Err((
                ErrorCode::InvalidArgument,
                "ask for at most 1,000 users at once",
            ));
        }
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
