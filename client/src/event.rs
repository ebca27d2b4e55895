//! What the server tells the client without being asked, and what happens to the connection.

use std::time::Duration;

use courier_protocol::{ErrorCode, Message, MessageMeta, Presence, ReceiptKind, Thread};
use crossbeam_channel::Receiver;

/// One item of the event stream ([`Client::events`](crate::Client::events)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new message, pushed or recovered by sync after a reconnect; each `(thread, id)` is
    /// delivered once.
    Message(Message),
    /// What the message of the `Message` event just before carries besides itself: the
    /// message it replies to and, from a sync, its last edit and its reactions. Edits and
    /// reactions that happen later arrive as SYSTEM messages (EDITED, REACTED).
    MessageMeta {
        /// The thread.
        thread: u64,
        /// Which message (`meta.id`) and what it carries.
        meta: MessageMeta,
    },
    /// A member's delivered or read cursor advanced.
    Receipt {
        /// The thread.
        thread: u64,
        /// The member whose cursor moved (may be the user itself, on another device).
        user: u64,
        /// Which cursor.
        kind: ReceiptKind,
        /// Everything up to this message id is delivered / read.
        up_to: u64,
    },
    /// A subscribed contact went online or offline.
    Presence(Presence),
    /// A member started or stopped typing.
    Typing {
        /// The thread.
        thread: u64,
        /// Who is typing.
        user: u64,
        /// Started (true) or stopped.
        active: bool,
    },
    /// A thread's state as of a sync after a reconnect: members and receipt cursors may have
    /// moved while the client was away.
    ThreadUpdated(Thread),
    /// The connection dropped. A reconnecting client follows up with [`Event::Reconnected`]
    /// or [`Event::SessionEnded`].
    Disconnected {
        /// The code the server gave when it closed, if any.
        reason: Option<ErrorCode>,
    },
    /// The server sent this user to another node; the client reconnects there.
    Redirected {
        /// The node's name.
        node: String,
        /// Its address.
        addr: String,
    },
    /// A new connection is up, resumed and synced.
    Reconnected {
        /// The address connected to.
        addr: String,
    },
    /// The session is over for good: logged out, token revoked, or the client was closed.
    /// No more events follow.
    SessionEnded {
        /// Why, when the server said so.
        reason: Option<ErrorCode>,
    },
}

/// A blocking iterator over events; it ends after [`Event::SessionEnded`] has been taken.
pub struct Events<'a> {
    pub(crate) rx: &'a Receiver<Event>,
}

impl Iterator for Events<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.rx.recv().ok()
    }
}

pub(crate) fn recv_timeout(rx: &Receiver<Event>, timeout: Duration) -> Option<Event> {
    rx.recv_timeout(timeout).ok()
}
