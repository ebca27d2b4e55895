//! Sending (and replying), history, receipts, recall, edits, reactions, typing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_protocol::{
    DeleteForMe, Direction, Edit, History, MessageKind, Messages, React, Readers, ReadersList,
    Recall, Receipt, ReceiptKind, Send, Sent, Typing,
};

use crate::client::expect_reply;
use crate::{Client, Result};

/// A fresh, non-zero id for a message, chosen by the sender so a retry can be recognised.
pub fn new_client_msg_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

impl Client {
    /// Sends a message with a fresh `client_msg_id`; returns once it is durable (the first tick).
    pub fn send(&self, thread: u64, kind: MessageKind, body: impl Into<Bytes>) -> Result<Sent> {
        self.send_with_id(thread, new_client_msg_id(), kind, body)
    }

    /// Sends a text message.
    pub fn send_text(&self, thread: u64, text: &str) -> Result<Sent> {
        self.send(
            thread,
            MessageKind::Text,
            Bytes::copy_from_slice(text.as_bytes()),
        )
    }

    /// Sends with a caller-chosen `client_msg_id`. Sending the same id again in the same
    /// thread returns the original `SENT` and stores nothing.
    pub fn send_with_id(
        &self,
        thread: u64,
        client_msg_id: u64,
        kind: MessageKind,
        body: impl Into<Bytes>,
    ) -> Result<Sent> {
        self.send_reply_with_id(thread, client_msg_id, kind, body, 0)
    }

    /// Sends a text message that replies to (quotes) `reply_to`, a message of the same thread.
    pub fn send_reply(&self, thread: u64, reply_to: u64, text: &str) -> Result<Sent> {
        self.send_reply_with_id(
            thread,
            new_client_msg_id(),
            MessageKind::Text,
            Bytes::copy_from_slice(text.as_bytes()),
            reply_to,
        )
    }

    /// Sends with a caller-chosen `client_msg_id`, replying to `reply_to` (0: to nothing).
    pub fn send_reply_with_id(
        &self,
        thread: u64,
        client_msg_id: u64,
        kind: MessageKind,
        body: impl Into<Bytes>,
        reply_to: u64,
    ) -> Result<Sent> {
        let request = Send {
            thread,
            client_msg_id,
            kind,
            body: body.into(),
            reply_to,
        };
        expect_reply!(self.call(request), "Send", Sent)
    }

    /// Sends, and when the connection fails before `SENT` arrives, waits for the reconnect and
    /// retries with the same `client_msg_id` until `give_up_after` has passed. The server
    /// deduplicates, so the message is stored once however many attempts reached it.
    pub fn send_with_retry(
        &self,
        thread: u64,
        kind: MessageKind,
        body: impl Into<Bytes>,
        give_up_after: Duration,
    ) -> Result<Sent> {
        let deadline = Instant::now() + give_up_after;
        let client_msg_id = new_client_msg_id();
        let body = body.into();
        loop {
            match self.send_with_id(thread, client_msg_id, kind, body.clone()) {
                Err(e) if e.is_connection_error() => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || !self.wait_connected(left) {
                        return Err(e);
                    }
                    // A server still answering the old connection's writes would be racing us;
                    // the next attempt is on the new connection.
                }
                other => return other,
            }
        }
    }

    /// Messages older (`Backward`, newest first) or newer (`Forward`, oldest first) than
    /// `anchor`; anchor 0 means from the newest (backward) or the oldest (forward).
    pub fn history(
        &self,
        thread: u64,
        anchor: u64,
        direction: Direction,
        limit: u16,
    ) -> Result<Messages> {
        expect_reply!(
            self.call(History {
                thread,
                anchor,
                direction,
                limit
            }),
            "History",
            Messages
        )
    }

    /// Moves the caller's delivered or read cursor in a thread up to `up_to` (cumulative).
    pub fn receipt(&self, thread: u64, kind: ReceiptKind, up_to: u64) -> Result<()> {
        expect_reply!(
            self.call(Receipt {
                thread,
                kind,
                up_to
            }),
            "Receipt",
            Done
        )
        .map(drop)
    }

    /// Recalls one of the caller's messages (within the recall window).
    pub fn recall(&self, thread: u64, message: u64) -> Result<()> {
        expect_reply!(self.call(Recall { thread, message }), "Recall", Done).map(drop)
    }

    /// Replaces the body of one of the caller's messages (within the edit window). Members'
    /// devices get an EDITED system message; history shows the new body, marked edited.
    pub fn edit(&self, thread: u64, message: u64, body: impl Into<Bytes>) -> Result<()> {
        let request = Edit {
            thread,
            message,
            body: body.into(),
        };
        expect_reply!(self.call(request), "Edit", Done).map(drop)
    }

    /// Sets the caller's one reaction to a message (e.g. an emoji); an empty `reaction`
    /// removes it. Members' devices get a REACTED system message.
    pub fn react(&self, thread: u64, message: u64, reaction: &str) -> Result<()> {
        let request = React {
            thread,
            message,
            reaction: reaction.into(),
        };
        expect_reply!(self.call(request), "React", Done).map(drop)
    }

    /// Hides a message from the caller's own history on all their devices.
    pub fn delete_for_me(&self, thread: u64, message: u64) -> Result<()> {
        expect_reply!(
            self.call(DeleteForMe { thread, message }),
            "DeleteForMe",
            Done
        )
        .map(drop)
    }

    /// Which members have received and read a message.
    pub fn readers(&self, thread: u64, message: u64) -> Result<ReadersList> {
        expect_reply!(
            self.call(Readers { thread, message }),
            "Readers",
            ReadersList
        )
    }

    /// Tells the other members the caller is (or stopped) typing. Never answered.
    pub fn typing(&self, thread: u64, active: bool) -> Result<()> {
        self.send_frame(Typing { thread, active })
    }
}
