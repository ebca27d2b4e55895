//! Contacts, user lookup and presence.

use courier_protocol::{
    ContactAdd, ContactList, ContactRemove, GetUsers, LookupUser, Presence, PresenceQuery,
    PresenceSubscribe, UserInfo,
};

use crate::{Client, Result};

/// Most ids one `GET_USERS` may carry; [`Client::users`] splits longer lists.
const GET_USERS_MAX: usize = 1000;

requests! {
    /// Adds a user to the caller's contacts.
    pub fn contact_add(user: u64) -> () {
        ContactAdd { user } => Done(_) => ()
    }

    /// Removes a user from the caller's contacts.
    pub fn contact_remove(user: u64) -> () {
        ContactRemove { user } => Done(_) => ()
    }

    /// The caller's contacts.
    pub fn contacts() -> Vec<UserInfo> {
        ContactList {} => Contacts(reply) => reply.users
    }

    /// Finds a user by handle (`UNKNOWN_USER` if there is none).
    pub fn lookup_user(handle: &str) -> UserInfo {
        LookupUser { handle: handle.into() } => User(reply) => reply.user
    }

    /// One `GET_USERS` of at most [`GET_USERS_MAX`] ids.
    fn users_page(ids: &[u64]) -> Vec<UserInfo> {
        GetUsers { users: ids.to_vec() } => Users(reply) => reply.users
    }

    /// Asks for presence pushes ([`Event::Presence`](crate::Event::Presence)) of these
    /// contacts for the life of the connection. Re-subscribe after a reconnect.
    pub fn presence_subscribe(users: &[u64]) -> () {
        PresenceSubscribe { users: users.to_vec() } => Done(_) => ()
    }

    /// Online state and last-seen time of these contacts.
    pub fn presence_query(users: &[u64]) -> Vec<Presence> {
        PresenceQuery { users: users.to_vec() } => PresenceList(reply) => reply.entries
    }
}

impl Client {
    /// The handles of these users, in the order asked; unknown ids are left out. Any number
    /// of ids: they go out in requests of at most 1,000.
    pub fn users(&self, ids: &[u64]) -> Result<Vec<UserInfo>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(GET_USERS_MAX) {
            out.extend(self.users_page(chunk)?);
        }
        Ok(out)
    }
}

#[cfg(feature = "tokio")]
impl crate::AsyncClient {
    /// The handles of these users, in the order asked; unknown ids are left out. Any number
    /// of ids: they go out in requests of at most 1,000.
    pub async fn users(&self, ids: &[u64]) -> Result<Vec<UserInfo>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(GET_USERS_MAX) {
            out.extend(self.users_page(chunk).await?);
        }
        Ok(out)
    }
}
