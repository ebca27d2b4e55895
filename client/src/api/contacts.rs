//! Contacts, user lookup and presence.

use courier_protocol::{
    ContactAdd, ContactList, ContactRemove, LookupUser, Presence, PresenceQuery, PresenceSubscribe,
    UserInfo,
};

use crate::client::expect_reply;
use crate::{Client, Result};

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
