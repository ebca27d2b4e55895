//! Cross-shard traffic: one bounded mailbox and one waker per shard.
//!
//! Shards share no connection state. Anything for a connection on another shard, or for a
//! thread another shard owns, travels as a [`ShardMsg`] through the target's mailbox (a bounded
//! crossbeam channel), after which the target's mio [`Waker`] is poked **once per round**, not
//! once per message. Nothing is dropped silently: a message a full mailbox refuses waits in the
//! sender's [`Outbox`] overflow and is retried next round (and counted).
//!
//! A poke is a `write(2)` on the target's eventfd. It is skipped when one is already on its
//! way: every sender of a shard (other shards, its commit stage, the auth and read workers,
//! the link thread) rings the shard's [`Doorbell`] and pokes only if it was the one to set it;
//! the shard clears it when its `poll` returned, before it looks at anything it may have been
//! woken for (see [`Doorbell`] for why no wake-up is lost).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// The connections of a [`ShardMsg::Deliver`]: one, inline (a reply or a push to one device,
/// the common case, which so allocates nothing), or several.
pub enum Recipients {
    One(ConnRef),
    Many(Vec<ConnRef>),
}

impl Recipients {
    pub fn of(group: &[ConnRef]) -> Recipients {
        match group {
            [one] => Recipients::One(*one),
            _ => Recipients::Many(group.to_vec()),
        }
    }

    pub fn as_slice(&self) -> &[ConnRef] {
        match self {
            Recipients::One(one) => std::slice::from_ref(one),
            Recipients::Many(many) => many,
        }
    }
}

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
    Deliver { to: Recipients, bytes: Bytes },
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
    /// Another node (index `node`) watches `users` of this node: send it their current state
    /// (`cluster::presence`).
    PresenceSnapshot { node: u16, users: Vec<u64> },
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

/// Whether a wake-up of one shard is on its way: set by the sender that pokes the shard's
/// waker, cleared by the shard once its `poll` returned (as tokio's and crossbeam's parkers
/// keep a "notified" state so that only the first of many notifications makes a syscall).
///
/// Why no wake-up is lost. A sender first makes its message visible (channel send, commit
/// result), then [`ring`](Self::ring)s; the shard first [`answer`](Self::answer)s, then looks
/// (drains its mailbox, polls its commit stage), then sleeps in `poll` if it found nothing.
/// Both are read-modify-writes of one flag with acquire-release ordering, so they are
/// totally ordered: if a ring comes after the answer, it finds the flag clear, pokes, and the
/// shard's next `poll` returns at once (the eventfd stays readable until then); if it comes
/// before, the answer reads the flag it set, which makes the sender's message visible to the
/// look that follows. A ring that finds the flag set skips the poke only because another
/// sender's poke after the last answer is still ahead of the shard. The interleavings are
/// driven by hand in `tests::no_interleaving_of_a_ring_and_an_answer_loses_a_wake_up`.
#[derive(Debug, Default)]
pub struct Doorbell {
    rung: AtomicBool,
    /// Pokes made (eventfd writes).
    pokes: AtomicU64,
    /// Rings that found a poke on its way and made none.
    elided: AtomicU64,
}

impl Doorbell {
    /// After making something visible to the shard: whether the caller must poke its waker.
    pub fn ring(&self) -> bool {
        let first = !self.rung.swap(true, Ordering::AcqRel);
        let counter = if first { &self.pokes } else { &self.elided };
        counter.fetch_add(1, Ordering::Relaxed);
        first
    }

    /// The shard, after its `poll` returned and before it looks at its mailbox and commit
    /// stage: later rings poke again.
    pub fn answer(&self) {
        self.rung.swap(false, Ordering::AcqRel);
    }

    /// (pokes made, pokes skipped) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.pokes.load(Ordering::Relaxed),
            self.elided.load(Ordering::Relaxed),
        )
    }
}

/// The sending side of one shard's mailbox.
#[derive(Clone)]
pub struct Mailbox {
    pub tx: Sender<ShardMsg>,
    pub waker: Arc<Waker>,
    pub doorbell: Arc<Doorbell>,
}

impl Mailbox {
    pub fn new(tx: Sender<ShardMsg>, waker: Arc<Waker>) -> Mailbox {
        Mailbox {
            tx,
            waker,
            doorbell: Arc::default(),
        }
    }

    /// Sends and wakes at once, blocking while the mailbox is full: for threads that are not
    /// shards (auth and read workers), which may wait.
    pub fn send_blocking(&self, msg: ShardMsg) -> bool {
        let sent = self.tx.send(msg).is_ok();
        if sent {
            self.wake();
        }
        sent
    }

    /// Wakes the shard, unless a wake-up is already on its way (see [`Doorbell`]). Call after
    /// making visible what the shard is woken for.
    pub fn wake(&self) {
        if self.doorbell.ring() {
            let _ = self.waker.wake();
        }
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
            boxes.push(Mailbox::new(tx, waker));
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
        let boxes = [Mailbox::new(tx, waker)];
        let mut out = Outbox::new(1, OUTBOX_CAP);
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
        let boxes = [Mailbox::new(tx, waker)];
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

    /// One step of a sender or of the shard, for driving their interleavings by hand.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Sender: the message into the channel.
        Send,
        /// Sender: `Mailbox::wake` (ring, and poke if first).
        Wake,
        /// Shard: its `poll` returned; `Doorbell::answer`.
        Answer,
        /// Shard: drains its mailbox.
        Look,
    }

    /// Runs `order` against a real mio `Poll`, `Waker` and channel. `earlier`: the shard was
    /// woken by an earlier wake it has not answered yet (its `poll` returned that event, the
    /// flag is still set). Whether the shard gets the message: in its look, or, if it found
    /// nothing, because its next `poll` (at most `patience`) returns and the look after finds
    /// it.
    fn delivered(order: &[Step], earlier: bool, patience: std::time::Duration) -> bool {
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, rx) = crossbeam_channel::bounded(4);
        let mailbox = Mailbox::new(tx, waker);
        let mut events = mio::Events::with_capacity(4);
        if earlier {
            mailbox.wake();
            poll.poll(&mut events, Some(std::time::Duration::ZERO))
                .unwrap();
            assert!(!events.is_empty(), "the earlier wake reached the poll");
        }
        let mut found = false;
        for step in order {
            match step {
                Step::Send => mailbox.tx.try_send(kick(1)).unwrap(),
                Step::Wake => mailbox.wake(),
                Step::Answer => mailbox.doorbell.answer(),
                Step::Look => found |= rx.try_recv().is_ok(),
            }
        }
        if found {
            return true;
        }
        poll.poll(&mut events, Some(patience)).unwrap();
        if events.is_empty() {
            return false;
        }
        mailbox.doorbell.answer();
        rx.try_recv().is_ok()
    }

    /// Every order of a sender's `[Send, Wake]` merged with the shard's `[Answer, Look]`,
    /// with and without an earlier wake-up not yet answered: the message always gets through,
    /// never by waiting out the timeout. The same driver finds the lost wake-up of the wrong
    /// order (the shard answering *after* it looked): the sender's ring finds the earlier
    /// flag, skips its poke, the answer clears the flag, and the shard sleeps on a message.
    #[test]
    fn no_interleaving_of_a_ring_and_an_answer_loses_a_wake_up() {
        let sender = [Step::Send, Step::Wake];
        let shard = [Step::Answer, Step::Look];
        let mut orders = 0;
        for mask in 0u32..16 {
            if mask.count_ones() != 2 {
                continue;
            }
            let (mut a, mut b) = (sender.iter(), shard.iter());
            let order: Vec<Step> = (0..4)
                .map(|i| {
                    let next = if mask & (1 << i) != 0 {
                        a.next()
                    } else {
                        b.next()
                    };
                    *next.unwrap()
                })
                .collect();
            orders += 1;
            for earlier in [false, true] {
                let started = std::time::Instant::now();
                assert!(
                    delivered(&order, earlier, std::time::Duration::from_secs(10)),
                    "{order:?} (earlier wake: {earlier}) lost the message"
                );
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(5),
                    "{order:?} (earlier wake: {earlier}) waited for the timeout"
                );
            }
        }
        assert_eq!(orders, 6);
        let wrong = [Step::Look, Step::Send, Step::Wake, Step::Answer];
        assert!(!delivered(
            &wrong,
            true,
            std::time::Duration::from_millis(100)
        ));
    }

    #[test]
    fn only_the_first_of_many_wakes_pokes_until_the_shard_answers() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let mailbox = Mailbox::new(tx, waker);
        let other = mailbox.clone();
        for _ in 0..3 {
            mailbox.wake();
            other.wake();
        }
        assert_eq!(mailbox.doorbell.counts(), (1, 5));
        mailbox.doorbell.answer();
        other.wake();
        assert_eq!(mailbox.doorbell.counts(), (2, 5));
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
