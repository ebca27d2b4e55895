//! Sending (and replying), history, receipts, recall, edits, reactions, typing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use courier_protocol::{
    DeleteForMe, Direction, Edit, History, MessageKind, Messages, React, Readers, ReadersList,
    Recall, Receipt, ReceiptKind, Send, Sent, Typing,
};

use crate::{Client, Result};

/// A fresh, non-zero id for a message, chosen by the sender so a retry can be recognised:
/// the wall clock in milliseconds in the high 42 bits and 22 random bits, increasing within
/// this process even if the clock steps back. Ids that increase per sender and thread let the
/// server take a SEND as new without a dedupe lookup (PROTOCOL.md, `SEND`); the random bits
/// keep two devices of one user apart within a millisecond.
pub fn new_client_msg_id() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let fresh = (ms << 22) | (rand::random::<u64>() & ((1 << 22) - 1));
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let id = fresh.max(last.wrapping_add(1)).max(1);
        match LAST.compare_exchange_weak(last, id, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return id,
            Err(now) => last = now,
        }
    }
}

requests! {
    /// Sends with a caller-chosen `client_msg_id`, replying to `reply_to` (a message of the
    /// same thread; 0: to nothing). Sending the same id again in the same thread returns the
    /// original `SENT` and stores nothing.
    pub fn send_reply_with_id(
        thread: u64,
        client_msg_id: u64,
        kind: MessageKind,
        body: impl Into<Bytes>,
        reply_to: u64,
    ) -> Sent {
        Send { thread, client_msg_id, kind, body: body.into(), reply_to } => Sent(reply) => reply
    }

    /// Messages older (`Backward`, newest first) or newer (`Forward`, oldest first) than
    /// `anchor`; anchor 0 means from the newest (backward) or the oldest (forward).
    pub fn history(thread: u64, anchor: u64, direction: Direction, limit: u16) -> Messages {
        History { thread, anchor, direction, limit } => Messages(reply) => reply
    }

    /// Moves the caller's delivered or read cursor in a thread up to `up_to` (cumulative).
    pub fn receipt(thread: u64, kind: ReceiptKind, up_to: u64) -> () {
        Receipt { thread, kind, up_to } => Done(_) => ()
    }

    /// Recalls one of the caller's messages (within the recall window).
    pub fn recall(thread: u64, message: u64) -> () {
        Recall { thread, message } => Done(_) => ()
    }

    /// Replaces the body of one of the caller's messages (within the edit window). Members'
    /// devices get an EDITED system message; history shows the new body, marked edited.
    pub fn edit(thread: u64, message: u64, body: impl Into<Bytes>) -> () {
        Edit { thread, message, body: body.into() } => Done(_) => ()
    }

    /// Sets the caller's one reaction to a message (e.g. an emoji); an empty `reaction`
    /// removes it. Members' devices get a REACTED system message.
    pub fn react(thread: u64, message: u64, reaction: &str) -> () {
        React { thread, message, reaction: reaction.into() } => Done(_) => ()
    }

    /// Hides a message from the caller's own history on all their devices.
    pub fn delete_for_me(thread: u64, message: u64) -> () {
        DeleteForMe { thread, message } => Done(_) => ()
    }

    /// Which members have received and read a message.
    pub fn readers(thread: u64, message: u64) -> ReadersList {
        Readers { thread, message } => ReadersList(reply) => reply
    }
}

/// Whether [`Client::send_with_retry`] tries again after `error`, with `left` to go.
fn retry_send(error: &crate::Error, left: Duration) -> bool {
    error.is_connection_error() && !left.is_zero()
}

impl Client {
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
        let body = Bytes::copy_from_slice(text.as_bytes());
        self.send_reply_with_id(
            thread,
            new_client_msg_id(),
            MessageKind::Text,
            body,
            reply_to,
        )
    }

    /// Sends a message with a fresh `client_msg_id`; returns once it is durable (the first tick).
    pub fn send(&self, thread: u64, kind: MessageKind, body: impl Into<Bytes>) -> Result<Sent> {
        self.send_with_id(thread, new_client_msg_id(), kind, body)
    }

    /// Sends a text message.
    pub fn send_text(&self, thread: u64, text: &str) -> Result<Sent> {
        self.send(thread, MessageKind::Text, text.to_owned())
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
                Err(e) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !retry_send(&e, left) || !self.wait_connected(left) {
                        return Err(e);
                    }
                    // A server still answering the old connection's writes would be racing us;
                    // the next attempt is on the new connection.
                }
                sent => return sent,
            }
        }
    }

    /// Tells the other members the caller is (or stopped) typing. Never answered.
    pub fn typing(&self, thread: u64, active: bool) -> Result<()> {
        self.send_frame(Typing { thread, active })
    }
}

#[cfg(feature = "tokio")]
impl crate::AsyncClient {
    /// Sends with a caller-chosen `client_msg_id`. Sending the same id again in the same
    /// thread returns the original `SENT` and stores nothing.
    pub async fn send_with_id(
        &self,
        thread: u64,
        client_msg_id: u64,
        kind: MessageKind,
        body: impl Into<Bytes>,
    ) -> Result<Sent> {
        self.send_reply_with_id(thread, client_msg_id, kind, body, 0)
            .await
    }

    /// Sends a text message that replies to (quotes) `reply_to`, a message of the same thread.
    pub async fn send_reply(&self, thread: u64, reply_to: u64, text: &str) -> Result<Sent> {
        let body = Bytes::copy_from_slice(text.as_bytes());
        self.send_reply_with_id(
            thread,
            new_client_msg_id(),
            MessageKind::Text,
            body,
            reply_to,
        )
        .await
    }

    /// Sends a message with a fresh `client_msg_id`; returns once it is durable (the first tick).
    pub async fn send(
        &self,
        thread: u64,
        kind: MessageKind,
        body: impl Into<Bytes>,
    ) -> Result<Sent> {
        self.send_with_id(thread, new_client_msg_id(), kind, body)
            .await
    }

    /// Sends a text message.
    pub async fn send_text(&self, thread: u64, text: &str) -> Result<Sent> {
        self.send(thread, MessageKind::Text, text.to_owned()).await
    }

    /// Sends, and when the connection fails before `SENT` arrives, waits for the reconnect and
    /// retries with the same `client_msg_id` until `give_up_after` has passed. The server
    /// deduplicates, so the message is stored once however many attempts reached it.
    pub async fn send_with_retry(
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
            match self
                .send_with_id(thread, client_msg_id, kind, body.clone())
                .await
            {
                Err(e) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !retry_send(&e, left) || !self.wait_connected(left).await {
                        return Err(e);
                    }
                }
                sent => return sent,
            }
        }
    }

    /// Tells the other members the caller is (or stopped) typing. Never answered.
    pub async fn typing(&self, thread: u64, active: bool) -> Result<()> {
        self.send_frame(Typing { thread, active }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_message_ids_increase_and_carry_the_wall_clock_in_milliseconds() {
        let ms = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let before = ms();
        let ids: Vec<u64> = (0..10_000).map(|_| new_client_msg_id()).collect();
        let after = ms();
        assert!(ids.windows(2).all(|w| w[1] > w[0]), "increasing");
        assert!(ids[0] >> 22 >= before);
        // Ten thousand ids in a millisecond would run the clock part ahead by at most 1 ms.
        assert!(ids[ids.len() - 1] >> 22 <= after + 1);
    }
}
