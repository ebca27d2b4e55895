//! Contacts, user lookup and presence.

use courier_protocol::{
    ContactAdd, ContactList, ContactRemove, GetUsers, LookupUser, Presence, PresenceQuery,
    PresenceSubscribe, UserInfo,
};

use crate::client::expect_reply;
use crate::{Client, Result};

/// Most ids one `GET_USERS` may carry; [`Client::users`] splits longer lists.
const GET_USERS_MAX: usize = 1000;

impl Client {
    /// Adds a user to the caller's contacts.
    pub fn contact_add(&self, user: u64) -> Result<()> {
        expect_reply!(self.call(ContactAdd { user }), "ContactAdd", Done).map(drop)
    }

    /// Removes a user from the caller's contacts.
    pub fn contact_remove(&self, user: u64) -> Result<()> {
        expect_reply!(self.call(ContactRemove { user }), "ContactRemove", Done).map(drop)
    }

    /// The caller's contacts.
    pub fn contacts(&self) -> Result<Vec<UserInfo>> {
        Ok(expect_reply!(self.call(ContactList {}), "ContactList", Contacts)?.users)
    }

    /// Finds a user by handle (`UNKNOWN_USER` if there is none).
    pub fn lookup_user(&self, handle: &str) -> Result<UserInfo> {
        Ok(expect_reply!(
            self.call(LookupUser {
                handle: handle.into()
            }),
            "LookupUser",
            User
        )?
        .user)
    }

    /// The handles of these users, in the order asked; unknown ids are left out. Any number
    /// of ids: they go out in requests of at most 1,000.
    pub fn users(&self, ids: &[u64]) -> Result<Vec<UserInfo>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(GET_USERS_MAX) {
            let request = GetUsers {
                users: chunk.to_vec(),
            };
            out.extend(expect_reply!(self.call(request), "GetUsers", Users)?.users);
        }
        Ok(out)
    }

    /// Asks for presence pushes ([`Event::Presence`](crate::Event::Presence)) of these
    /// contacts for the life of the connection. Re-subscribe after a reconnect.
    pub fn presence_subscribe(&self, users: &[u64]) -> Result<()> {
        expect_reply!(
            self.call(PresenceSubscribe {
                users: users.to_vec()
            }),
            "PresenceSubscribe",
            Done
        )
        .map(drop)
    }

    /// Online state and last-seen time of these contacts.
    pub fn presence_query(&self, users: &[u64]) -> Result<Vec<Presence>> {
        Ok(expect_reply!(
            self.call(PresenceQuery {
                users: users.to_vec()
            }),
            "PresenceQuery",
            PresenceList
        )?
        .entries)
    }
}
