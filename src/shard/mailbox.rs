//! Cross-shard traffic: one bounded mailbox and one waker per shard.
//!
//! Shards share no connection state. Anything for a connection on another shard, or for a
//! thread another shard owns, travels as a [`ShardMsg`] through the target's mailbox (a bounded
//! crossbeam channel), after which the target's mio [`Waker`] is poked **once per round**, not
//! once per message. Nothing is dropped silently: a message a full mailbox refuses waits in the
//! sender's [`Outbox`] overflow and is retried next round (and counted).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use courier_protocol::{ErrorCode, Frame, UserInfo};
use crossbeam_channel::{Sender, TrySendError};
use mio::Waker;

use super::presence::Change;
use crate::caller::{Caller, ConnRef};
use crate::session::{AuthError, Authed, TokenDigest};

/// Messages a mailbox holds before senders overflow.
pub const MAILBOX_CAPACITY: usize = 64 * 1024;

/// Messages an [`Outbox`] keeps waiting for one target shard before that target counts as
/// congested: the sending shard then stops reading the connections whose requests go there,
/// until the backlog is down to half of this.
pub const OUTBOX_CAP: usize = 16 * 1024;

/// What one shard asks of another.
pub enum ShardMsg {
    /// A chat request for a thread this shard owns; the answer goes back as [`Deliver`].
    ///
    /// [`Deliver`]: ShardMsg::Deliver
    Request {
        caller: Caller,
        request_id: u32,
        frame: Frame,
        /// Handles of users of other nodes the request names, gathered by this node (see
        /// `Engine::handle_with`); empty for most requests.
        handles: Vec<UserInfo>,
    },
    /// One encoded frame for each of these local connections (a reply, or one push for every
    /// recipient on this shard).
    Deliver { to: Vec<ConnRef>, bytes: Bytes },
    /// Send `ERROR_REPLY(0, code)` to the connection and close it (e.g. `SESSION_REVOKED`).
    Kick { to: ConnRef, code: ErrorCode },
    /// Close the connection with `SESSION_REVOKED` if it authenticated with the token
    /// `digest` (logged out, or replaced by a new login of the same device).
    Revoke { to: ConnRef, digest: TokenDigest },
    /// A `REGISTER`/`LOGIN` finished on the auth workers.
    AuthDone {
        to: ConnRef,
        request_id: u32,
        result: Result<Authed, AuthError>,
    },
    /// A read request's encoded answer, from the read workers.
    ReadDone { to: ConnRef, bytes: Bytes },
    /// Users came online or went offline (for this shard's presence subscribers).
    Presence(Arc<[Change]>),
    /// A chat request another node forwarded (`FORWARD`) for a thread this shard owns; the
    /// caller's connection is on that node. `lane`: the link lane its answer goes back on.
    Forward {
        caller: Caller,
        request_id: u32,
        frame: Frame,
        lane: u64,
        /// `FORWARD.handles`: what the origin knows of the users the request names.
        handles: Vec<UserInfo>,
    },
    /// The answer to a request this shard forwarded (`FORWARD_REPLY`): an encoded frame for
    /// the local connection `to`, delivered only if the request is still in flight.
    Answer { to: ConnRef, bytes: Bytes },
}

/// The sending side of one shard's mailbox.
#[derive(Clone)]
pub struct Mailbox {
    pub tx: Sender<ShardMsg>,
    pub waker: Arc<Waker>,
}

impl Mailbox {
    /// Sends and wakes at once, blocking while the mailbox is full: for threads that are not
    /// shards (auth and read workers), which may wait.
    pub fn send_blocking(&self, msg: ShardMsg) -> bool {
        let sent = self.tx.send(msg).is_ok();
        if sent {
            let _ = self.waker.wake();
        }
        sent
    }

    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}

/// A shard's outgoing messages for one round, per target shard, plus what full mailboxes
/// refused earlier.
///
/// Bounded by backpressure, not by dropping: past `cap` messages for one target the target is
/// [`congested`](Outbox::congested) and the shard stops reading the connections whose requests
/// go there. Replies and pushes (`Deliver`) are still queued past the cap, since refusing them
/// would lose answers to requests already accepted; they are bounded by those requests. A
/// shard never stops draining its own mailbox (two shards waiting on each other would
/// deadlock).
pub struct Outbox {
    queues: Vec<VecDeque<ShardMsg>>,
    cap: usize,
}

/// What a [`Outbox::flush`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Messages left waiting because a mailbox was full.
    pub waiting: usize,
    /// Times a full mailbox refused a message this flush.
    pub refusals: usize,
}

impl Outbox {
    pub fn new(shards: usize, cap: usize) -> Outbox {
        Outbox {
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            cap: cap.max(2),
        }
    }

    /// Whether `shard` has `cap` or more messages waiting: stop feeding it.
    pub fn congested(&self, shard: u16) -> bool {
        self.queues
            .get(shard as usize)
            .is_some_and(|q| q.len() >= self.cap)
    }

    /// Whether `shard`'s backlog is down to half the cap: resume feeding it.
    pub fn relieved(&self, shard: u16) -> bool {
        self.queues
            .get(shard as usize)
            .is_none_or(|q| q.len() <= self.cap / 2)
    }

    /// Messages waiting for `shard`.
    pub fn waiting(&self, shard: u16) -> usize {
        self.queues.get(shard as usize).map_or(0, VecDeque::len)
    }

    pub fn push(&mut self, shard: u16, msg: ShardMsg) {
        if let Some(q) = self.queues.get_mut(shard as usize) {
            q.push_back(msg);
        }
    }

    /// Hands every queued message to its mailbox, in order per target, waking each target that
    /// received anything once. A full mailbox keeps the rest of its queue for the next flush; a
    /// closed one (its shard has exited during shutdown) drops it.
    pub fn flush(&mut self, mailboxes: &[Mailbox]) -> Flushed {
        let mut out = Flushed::default();
        for (queue, mailbox) in self.queues.iter_mut().zip(mailboxes) {
            let mut sent = false;
            while let Some(msg) = queue.pop_front() {
                match mailbox.tx.try_send(msg) {
                    Ok(()) => sent = true,
                    Err(TrySendError::Full(msg)) => {
                        queue.push_front(msg);
                        out.refusals += 1;
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        queue.clear();
                        break;
                    }
                }
            }
            if sent {
                mailbox.wake();
            }
            out.waiting += queue.len();
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }
}

/// Messages a [`Wakes`] lets wait for their wakes at most: a burst longer than this wakes its
/// shards in the middle, so a long burst never leaves a shard asleep on a filling mailbox.
pub const WAKE_EVERY: usize = 256;

/// The shards whose mailboxes took messages since the last [`flush`](Wakes::flush). A
/// producer that hands many messages on in a burst (the link thread handing on what one read
/// of the links brought) wakes each shard it fed once per burst, not once per message: one
/// `Waker::wake` (a syscall) per shard per burst. Messages are in the mailboxes at once, in
/// order; only the wake waits for the end of the burst (or for [`WAKE_EVERY`] messages).
/// Allocates only while it first meets each shard.
#[derive(Debug, Default)]
pub struct Wakes {
    /// Per shard: fed since the last flush.
    touched: Vec<bool>,
    /// The shards fed since the last flush, each once.
    list: Vec<u16>,
    /// Messages handed on since the last flush.
    queued: usize,
}

/// What a [`Wakes::flush`] did: messages handed on in the burst, and wakes it took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    pub messages: usize,
    pub wakes: usize,
}

impl Wakes {
    /// `shard`'s mailbox took a message. True once [`WAKE_EVERY`] messages wait for their
    /// wakes: flush now.
    pub fn queued(&mut self, shard: u16) -> bool {
        let i = shard as usize;
        if i >= self.touched.len() {
            self.touched.resize(i + 1, false);
        }
        if !self.touched[i] {
            self.touched[i] = true;
            self.list.push(shard);
        }
        self.queued += 1;
        self.queued >= WAKE_EVERY
    }

    /// Wakes every shard fed since the last flush, once each.
    pub fn flush(&mut self, mailboxes: &[Mailbox]) -> Burst {
        let burst = Burst {
            messages: std::mem::take(&mut self.queued),
            wakes: self.list.len(),
        };
        for shard in self.list.drain(..) {
            self.touched[shard as usize] = false;
            if let Some(mailbox) = mailboxes.get(shard as usize) {
                mailbox.wake();
            }
        }
        burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shard `i`'s poll and mailbox, for counting its wakes.
    fn shards(
        n: usize,
    ) -> (
        Vec<mio::Poll>,
        Vec<Mailbox>,
        Vec<crossbeam_channel::Receiver<ShardMsg>>,
    ) {
        let mut polls = Vec::new();
        let mut boxes = Vec::new();
        let mut rxs = Vec::new();
        for _ in 0..n {
            let poll = mio::Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
            let (tx, rx) = crossbeam_channel::bounded(MAILBOX_CAPACITY);
            polls.push(poll);
            boxes.push(Mailbox { tx, waker });
            rxs.push(rx);
        }
        (polls, boxes, rxs)
    }

    /// Whether `poll` has a wake pending (and clears it).
    fn woken(poll: &mut mio::Poll) -> bool {
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::ZERO))
            .unwrap();
        !events.is_empty()
    }

    fn kick(slot: u32) -> ShardMsg {
        ShardMsg::Kick {
            to: ConnRef {
                shard: 0,
                slot,
                gen: 0,
                node: 0,
            },
            code: ErrorCode::SessionRevoked,
        }
    }

    #[test]
    fn a_burst_wakes_each_shard_it_fed_once_at_its_end_and_keeps_the_order() {
        let (mut polls, boxes, rxs) = shards(3);
        let mut wakes = Wakes::default();
        // 100 messages for shard 0 and 3 for shard 2, interleaved; shard 1 gets none.
        for slot in 0..100 {
            boxes[0].tx.try_send(kick(slot)).unwrap();
            assert!(!wakes.queued(0));
            if slot % 40 == 0 {
                boxes[2].tx.try_send(kick(slot)).unwrap();
                assert!(!wakes.queued(2));
            }
        }
        // In the mailboxes already; nobody woken during the burst.
        assert_eq!(rxs[0].len(), 100);
        assert!(polls.iter_mut().all(|p| !woken(p)));
        assert_eq!(
            wakes.flush(&boxes),
            Burst {
                messages: 103,
                wakes: 2
            }
        );
        assert!(woken(&mut polls[0]) && woken(&mut polls[2]));
        assert!(
            !woken(&mut polls[1]),
            "a shard that got nothing is not woken"
        );
        let slots: Vec<u32> = rxs[0]
            .try_iter()
            .map(|m| match m {
                ShardMsg::Kick { to, .. } => to.slot,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(slots, (0..100).collect::<Vec<_>>(), "order kept");
        // The next burst starts empty.
        assert_eq!(wakes.flush(&boxes), Burst::default());
        assert!(polls.iter_mut().all(|p| !woken(p)));
    }

    #[test]
    fn a_long_burst_asks_for_a_flush_every_wake_every_messages() {
        let (_polls, boxes, _rxs) = shards(1);
        let mut wakes = Wakes::default();
        let mut asked = 0;
        for _ in 0..WAKE_EVERY * 2 + 1 {
            if wakes.queued(0) {
                asked += 1;
                assert_eq!(wakes.flush(&boxes).messages, WAKE_EVERY);
            }
        }
        assert_eq!(asked, 2);
        assert_eq!(
            wakes.flush(&boxes),
            Burst {
                messages: 1,
                wakes: 1
            }
        );
    }

    #[test]
    fn a_full_mailbox_keeps_messages_in_order_for_the_next_flush() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, rx) = crossbeam_channel::bounded(2);
        let boxes = [Mailbox { tx, waker }];
        let mut out = Outbox::new(1, OUTBOX_CAP);
        let kick = |slot| ShardMsg::Kick {
            to: ConnRef {
                shard: 0,
                slot,
                gen: 0,
                node: 0,
            },
            code: ErrorCode::SessionRevoked,
        };
        for slot in 0..5 {
            out.push(0, kick(slot));
        }
        assert_eq!(
            out.flush(&boxes),
            Flushed {
                waiting: 3,
                refusals: 1
            }
        );
        let mut got = Vec::new();
        let drain = |got: &mut Vec<u32>| {
            while let Ok(ShardMsg::Kick { to, .. }) = rx.try_recv() {
                got.push(to.slot);
            }
        };
        drain(&mut got);
        assert_eq!(out.flush(&boxes).waiting, 1);
        drain(&mut got);
        assert_eq!(out.flush(&boxes).waiting, 0);
        drain(&mut got);
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(out.is_empty());
    }

    #[test]
    fn a_target_is_congested_at_the_cap_and_relieved_at_half() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, rx) = crossbeam_channel::bounded(4);
        let boxes = [Mailbox { tx, waker }];
        let mut out = Outbox::new(1, 8);
        let kick = ShardMsg::Kick {
            to: ConnRef {
                shard: 0,
                slot: 0,
                gen: 0,
                node: 0,
            },
            code: ErrorCode::SessionRevoked,
        };
        let push = |out: &mut Outbox| out.push(0, kick_like(&kick));
        for _ in 0..7 {
            push(&mut out);
        }
        assert!(!out.congested(0));
        push(&mut out);
        assert!(out.congested(0), "8 waiting is the cap");
        // The mailbox takes 4; 4 stay waiting: no longer congested, but not yet relieved…
        push(&mut out);
        out.flush(&boxes);
        assert_eq!(out.waiting(0), 5);
        assert!(!out.congested(0) && !out.relieved(0));
        // …until the target drained its mailbox and the rest went through.
        while rx.try_recv().is_ok() {}
        out.flush(&boxes);
        assert_eq!(out.waiting(0), 1);
        assert!(out.relieved(0));
        assert!(
            !out.congested(7) && out.relieved(7),
            "an unknown shard is never congested"
        );
    }

    fn kick_like(msg: &ShardMsg) -> ShardMsg {
        match msg {
            ShardMsg::Kick { to, code } => ShardMsg::Kick {
                to: *to,
                code: *code,
            },
            _ => unreachable!(),
        }
    }
}
