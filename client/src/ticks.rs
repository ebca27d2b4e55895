//! The ticks next to a sender's own message, computed from the members' receipt cursors.

use courier_protocol::{Member, Message, MessageKind, ReceiptKind};

/// How far one of the user's own messages has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tick {
    /// ✓ — durable on the server.
    Sent,
    /// ✓✓ — reached a device of every other member.
    Delivered,
    /// ✓✓ (blue) — read by every other member.
    Read,
}

impl Tick {
    /// The tick as text: `✓` or `✓✓`; colour is the caller's business.
    pub fn symbol(self) -> &'static str {
        match self {
            Tick::Sent => "✓",
            Tick::Delivered | Tick::Read => "✓✓",
        }
    }
}

/// The tick of message `message` sent by `me`: a message is delivered (read) when every other
/// member's cursor is at or past it. A thread with no other member counts as read.
pub fn tick(members: &[Member], me: u64, message: u64) -> Tick {
    let others = || members.iter().filter(|m| m.user != me);
    if others().all(|m| m.read >= message) {
        Tick::Read
    } else if others().all(|m| m.delivered.max(m.read) >= message) {
        Tick::Delivered
    } else {
        Tick::Sent
    }
}

/// Applies a `RECEIPT_PUSH` to the members' cursors; cursors only move forward and read
/// implies delivered. Returns whether anything moved.
pub fn apply_receipt(members: &mut [Member], user: u64, kind: ReceiptKind, up_to: u64) -> bool {
    let Some(m) = members.iter_mut().find(|m| m.user == user) else {
        return false;
    };
    let before = (m.delivered, m.read);
    if kind == ReceiptKind::Read {
        m.read = m.read.max(up_to);
    }
    m.delivered = m.delivered.max(up_to);
    before != (m.delivered, m.read)
}

/// Applies what a new message says about its sender: sending moves the sender's own delivered
/// and read cursors to the message, and the server pushes no `RECEIPT_PUSH` for that move. So a
/// reply from the peer marks everything before it read. Returns whether anything moved.
pub fn apply_sent(members: &mut [Member], message: &Message) -> bool {
    if message.kind == MessageKind::System {
        return false;
    }
    apply_receipt(members, message.sender, ReceiptKind::Read, message.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: u64, delivered: u64, read: u64) -> Member {
        Member {
            user,
            delivered,
            read,
            ..Member::default()
        }
    }

    #[test]
    fn direct_thread_ticks_follow_the_peer() {
        let mut members = vec![member(1, 100, 100), member(2, 0, 0)];
        assert_eq!(tick(&members, 1, 100), Tick::Sent);
        assert!(apply_receipt(&mut members, 2, ReceiptKind::Delivered, 100));
        assert_eq!(tick(&members, 1, 100), Tick::Delivered);
        assert!(apply_receipt(&mut members, 2, ReceiptKind::Read, 150));
        assert_eq!(tick(&members, 1, 100), Tick::Read);
        assert!(
            !apply_receipt(&mut members, 2, ReceiptKind::Delivered, 120),
            "stale cursor"
        );
    }

    #[test]
    fn a_reply_reads_what_came_before_it() {
        let mut members = vec![member(1, 100, 100), member(2, 0, 0)];
        let reply = Message {
            thread: 7,
            id: 150,
            sender: 2,
            kind: MessageKind::Text,
            ..Message::default()
        };
        assert!(apply_sent(&mut members, &reply));
        assert_eq!(tick(&members, 1, 100), Tick::Read);
        let system = Message {
            kind: MessageKind::System,
            id: 200,
            ..reply
        };
        assert!(!apply_sent(&mut members, &system));
    }

    #[test]
    fn group_needs_every_other_member() {
        let members = vec![member(1, 0, 0), member(2, 50, 50), member(3, 50, 10)];
        assert_eq!(tick(&members, 1, 50), Tick::Delivered);
        assert_eq!(tick(&members, 1, 10), Tick::Read);
        assert_eq!(tick(&members, 1, 60), Tick::Sent);
    }
}
