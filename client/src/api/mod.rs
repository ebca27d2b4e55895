//! The typed requests, grouped by subject; each file adds methods to [`Client`](crate::Client).

mod account;
mod admin;
mod contacts;
mod media;
pub(crate) mod messages;
mod threads;
pub use messages::new_client_msg_id;
