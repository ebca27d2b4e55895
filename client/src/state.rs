//! What a client remembers across connections, and the decisions it takes on them, shared by
//! both front ends (the blocking [`Client`](crate::Client) and the tokio
//! [`AsyncClient`](crate::AsyncClient)): the token, the sync watermark, the dedupe set, the
//! pushes held back while a catch-up runs, what to do when a connection closes, and the
//! reconnect schedule. Nothing here does I/O or waits; the front ends do, and call in here to
//! decide.

use std::collections::VecDeque;
use std::time::Duration;

use courier_protocol::{AuthOk, ErrorCode, Frame, Message, MessageMeta};

use crate::backoff::Backoff;
use crate::dedupe::Dedupe;
use crate::event::Event;
use crate::sync::SyncResult;
use crate::{ClientConfig, Error, MAX_CATCH_UP_ROUNDS};

/// Redirects followed in a row before giving up: a loop between nodes is a server bug.
pub(crate) const MAX_REDIRECTS: usize = 4;
/// Without auto-reconnect, failed attempts to follow a redirect before giving up.
const REDIRECT_ATTEMPTS: usize = 3;

/// The session's memory; each front end keeps it behind one lock.
pub(crate) struct State {
    /// Where the next reconnect goes: the address given, or the last redirect's.
    pub(crate) addr: String,
    pub(crate) auth: Option<AuthOk>,
    pub(crate) watermark: Option<u64>,
    /// Against a cluster: the per-node watermarks `watermark` is the minimum of.
    pub(crate) watermarks: Vec<u64>,
    pub(crate) dedupe: Dedupe,
    /// A resync is running: pushed messages (with the message each replies to, 0 for none)
    /// wait in `held` so they come out after the backlog.
    resyncing: bool,
    /// At most `max_held` pushes; past it the oldest is dropped and `held_dropped` set.
    held: VecDeque<(Message, u64)>,
    max_held: usize,
    /// A held push was dropped since the current catch-up round began: the catch-up must sync
    /// again from the watermark it saved (that sync returns what was dropped).
    held_dropped: bool,
    /// Syncs the current catch-up has run.
    catch_up_rounds: usize,
    pub(crate) ended: bool,
    pub(crate) last_reason: Option<ErrorCode>,
    /// The last `REDIRECT` an authentication followed, as (node, addr): what the error after
    /// too many of them names.
    pub(crate) last_redirect: Option<(String, String)>,
    /// (address, key) to pin for connections to that address: with trust on first use the
    /// key the server there proved (Noise Pipes: XX on first contact, IK after), and the key a
    /// `REDIRECT` named for the node at that address. At most [`MAX_KNOWN_KEYS`], newest last.
    known_keys: Vec<(String, courier_protocol::noise::PublicKey)>,
}

/// Addresses whose key a client remembers: one per node of a cluster it was sent to.
pub(crate) const MAX_KNOWN_KEYS: usize = 16;

/// The `MessageMeta` event of a pushed message that replies to another.
fn reply_meta(message: &Message, reply_to: u64) -> Option<Event> {
    (reply_to != 0).then(|| Event::MessageMeta {
        thread: message.thread,
        meta: MessageMeta {
            id: message.id,
            reply_to,
            ..MessageMeta::default()
        },
    })
}

/// What a front end does after its current connection closed without being asked to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterClose {
    /// Nothing: the session had ended already (no event either).
    Nothing,
    /// Emit [`Event::Disconnected`]; the authentication waiting on this connection follows the
    /// redirect itself.
    LeaveToAuthenticate,
    /// Emit [`Event::Disconnected`], then end the session with this reason.
    End(Option<ErrorCode>),
    /// Emit [`Event::Disconnected`], then reconnect: to the redirect's address if there was one.
    Reconnect(Option<String>),
}

/// Why one reconnect attempt failed.
#[derive(Debug)]
pub(crate) enum ResumeFailure {
    /// The server sent the user elsewhere.
    Redirect(String),
    /// The token is no good: the session is over.
    Fatal(Option<ErrorCode>),
    /// Anything else: try again after a delay.
    Retry,
}

impl ResumeFailure {
    /// Classifies a failed `RESUME` (or the catch-up behind it) on a connection that sent
    /// `redirect`, if it did.
    pub(crate) fn of(error: &Error, redirect: Option<String>) -> ResumeFailure {
        match error {
            Error::Server {
                code: code @ (ErrorCode::InvalidToken | ErrorCode::SessionRevoked),
                ..
            } => ResumeFailure::Fatal(Some(*code)),
            _ => ResumeFailure::redirected(redirect),
        }
    }

    /// A connection that failed: follow its redirect, if it sent one, else retry.
    pub(crate) fn redirected(redirect: Option<String>) -> ResumeFailure {
        match redirect {
            Some(addr) => ResumeFailure::Redirect(addr),
            None => ResumeFailure::Retry,
        }
    }
}

/// The next step of a reconnect loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Try again at once (to the redirect's address).
    Now,
    /// Try again after this delay.
    After(Duration),
    /// Give up: end the session with this reason.
    End(Option<ErrorCode>),
}

/// The bookkeeping of one reconnect loop: where to, how many redirects and failures so far,
/// how long to wait.
pub(crate) struct Reconnect {
    backoff: Backoff,
    persistent: bool,
    target: Option<String>,
    redirects: usize,
    failures: usize,
}

impl Reconnect {
    /// A loop that starts at `redirect` if the close was a redirect, else at the saved address.
    pub(crate) fn new(config: &ClientConfig, redirect: Option<String>) -> Reconnect {
        Reconnect {
            backoff: Backoff::new(config.backoff),
            persistent: config.auto_reconnect,
            target: redirect,
            redirects: 0,
            failures: 0,
        }
    }

    /// Where the next attempt goes.
    pub(crate) fn target(&self, state: &State) -> String {
        self.target.clone().unwrap_or_else(|| state.addr.clone())
    }

    /// What to do after an attempt failed.
    pub(crate) fn failed(&mut self, failure: ResumeFailure) -> Retry {
        match failure {
            ResumeFailure::Redirect(to) => {
                self.redirects += 1;
                self.target = Some(to);
                if self.redirects <= MAX_REDIRECTS {
                    return Retry::Now;
                }
                self.redirects = 0;
            }
            ResumeFailure::Fatal(reason) => return Retry::End(reason),
            ResumeFailure::Retry => {
                self.failures += 1;
                if !self.persistent && self.failures >= REDIRECT_ATTEMPTS {
                    return Retry::End(None);
                }
            }
        }
        Retry::After(self.backoff.next_delay())
    }
}

impl State {
    /// A session for `addr` that holds at most `max_held` pushes during a catch-up (at least
    /// one).
    pub(crate) fn new(addr: String, max_held: usize) -> State {
        State {
            addr,
            auth: None,
            watermark: None,
            watermarks: Vec::new(),
            dedupe: Dedupe::new(),
            resyncing: false,
            held: VecDeque::new(),
            max_held: max_held.max(1),
            held_dropped: false,
            catch_up_rounds: 0,
            ended: false,
            last_reason: None,
            last_redirect: None,
            known_keys: Vec::new(),
        }
    }

    /// Pins `key` for connections to `addr` from now on (replacing what was known for it).
    pub(crate) fn remember_key(&mut self, addr: &str, key: courier_protocol::noise::PublicKey) {
        self.known_keys.retain(|(at, _)| at != addr);
        if self.known_keys.len() == MAX_KNOWN_KEYS {
            self.known_keys.remove(0);
        }
        self.known_keys.push((addr.to_owned(), key));
    }

    /// The key to pin for `addr`, if one was learned or named for it.
    pub(crate) fn key_for(&self, addr: &str) -> Option<courier_protocol::noise::PublicKey> {
        self.known_keys
            .iter()
            .find_map(|(at, key)| (at == addr).then_some(*key))
    }

    /// An `AUTH_OK` arrived for a login (not a reconnect).
    pub(crate) fn logged_in(&mut self, auth: AuthOk) {
        self.auth = Some(auth.clone());
        // A device with nothing saved starts at the login: what came before is history
        // (`HISTORY`), not backlog.
        if self.watermark.is_none() {
            self.watermark = Some(auth.watermark);
            self.watermarks.clear();
        }
    }

    /// The events a push becomes, if any: messages are deduplicated, and held while a
    /// catch-up runs (they come out of [`end_resync`](Self::end_resync)); a message that
    /// replies to another is followed by its [`Event::MessageMeta`].
    pub(crate) fn push(&mut self, frame: Frame) -> [Option<Event>; 2] {
        let event = match frame {
            Frame::MessagePush(p) => {
                let message = p.message;
                if self.resyncing {
                    // Bounded: the oldest is dropped; the catch-up syncs again and recovers it
                    // (`next_catch_up_round`).
                    if self.held.len() >= self.max_held {
                        self.held.pop_front();
                        self.held_dropped = true;
                    }
                    self.held.push_back((message, p.reply_to));
                    None
                } else if self.dedupe.insert(message.thread, message.id) {
                    let meta = reply_meta(&message, p.reply_to);
                    return [Some(Event::Message(message)), meta];
                } else {
                    None
                }
            }
            Frame::ReceiptPush(p) => Some(Event::Receipt {
                thread: p.thread,
                user: p.user,
                kind: p.kind,
                up_to: p.up_to,
            }),
            Frame::PresencePush(p) => Some(Event::Presence(p.presence)),
            Frame::TypingPush(p) => Some(Event::Typing {
                thread: p.thread,
                user: p.user,
                active: p.active,
            }),
            // A push type this client does not know yet (a later server's) is no event.
            _ => None,
        };
        [event, None]
    }

    /// Holds pushes back from now on: a catch-up follows the authentication about to be sent,
    /// and a push may come right behind its AUTH_OK.
    pub(crate) fn begin_resync(&mut self) {
        self.resyncing = true;
    }

    /// Starts a catch-up: holds pushes, counts its rounds from here.
    pub(crate) fn begin_catch_up(&mut self) {
        self.begin_resync();
        self.held_dropped = false;
        self.catch_up_rounds = 0;
    }

    /// A catch-up round's sync completed (and was recorded): the watermark to sync from again
    /// if a held push was dropped meanwhile, while rounds are left. A push dropped from a full
    /// `held` came after that sync's walk began (an earlier message is in the sync), so it is
    /// above the watermark the sync saved; past [`MAX_CATCH_UP_ROUNDS`] it stays there for the
    /// next sync, so nothing is lost.
    pub(crate) fn next_catch_up_round(&mut self) -> Option<u64> {
        self.catch_up_rounds += 1;
        if !std::mem::take(&mut self.held_dropped) || self.catch_up_rounds >= MAX_CATCH_UP_ROUNDS {
            return None;
        }
        self.watermark
    }

    /// Pushes held right now (for tests).
    #[cfg(test)]
    pub(crate) fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Stops holding pushes; returns `backlog` followed by the held pushes that are new. Emit
    /// them before releasing the lock, so that a push cannot overtake the backlog.
    pub(crate) fn end_resync(&mut self, mut backlog: Vec<Event>) -> Vec<Event> {
        for (message, reply_to) in std::mem::take(&mut self.held) {
            if self.dedupe.insert(message.thread, message.id) {
                let meta = reply_meta(&message, reply_to);
                backlog.push(Event::Message(message));
                backlog.extend(meta);
            }
        }
        self.resyncing = false;
        backlog
    }

    /// Records a completed sync: dedupe, floors, watermark; with `deliver`, queues the events
    /// to emit (a catch-up after a reconnect; not the first sync, nor one the user asked for).
    pub(crate) fn record_sync(&mut self, synced: &SyncResult, deliver: bool, out: &mut Vec<Event>) {
        if deliver {
            out.extend(synced.threads.iter().cloned().map(Event::ThreadUpdated));
        }
        let metas: std::collections::HashMap<u64, &MessageMeta> =
            synced.meta.iter().map(|m| (m.id, m)).collect();
        for message in &synced.messages {
            if self.dedupe.insert(message.thread, message.id) && deliver {
                out.push(Event::Message(message.clone()));
                if let Some(&meta) = metas.get(&message.id) {
                    out.push(Event::MessageMeta {
                        thread: message.thread,
                        meta: meta.clone(),
                    });
                }
            }
        }
        // Sync returns every message above `since` in a changed thread, so everything up to
        // the newest one returned has now been seen.
        for message in &synced.messages {
            self.dedupe.raise_floor(message.thread, message.id);
        }
        self.watermark = Some(synced.watermark);
        self.watermarks = synced.watermarks.clone();
    }

    /// The current connection closed without this side asking, with the server's `reason`
    /// and `redirect` (its address) if it gave them. Decides what follows.
    pub(crate) fn after_close(
        &mut self,
        reason: Option<ErrorCode>,
        redirect: Option<String>,
        auto_reconnect: bool,
    ) -> AfterClose {
        self.last_reason = reason;
        if self.ended {
            return AfterClose::Nothing;
        }
        let authed = self.auth.is_some();
        if !authed && redirect.is_some() {
            return AfterClose::LeaveToAuthenticate;
        }
        if !authed || reason == Some(ErrorCode::SessionRevoked) {
            return AfterClose::End(reason);
        }
        if !auto_reconnect && redirect.is_none() {
            return AfterClose::End(reason);
        }
        AfterClose::Reconnect(redirect)
    }

    /// Marks the session over, keeping `reason` if there is one.
    pub(crate) fn end(&mut self, reason: Option<ErrorCode>) {
        self.ended = true;
        if reason.is_some() {
            self.last_reason = reason;
        }
    }
}

#[cfg(test)]
mod tests {
    use courier_protocol::MessagePush;

    use super::*;

    fn push(id: u64) -> Frame {
        Frame::MessagePush(MessagePush {
            message: Message {
                thread: 1,
                id,
                ..Message::default()
            },
            reply_to: 0,
        })
    }

    fn ids(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn held_pushes_are_bounded_and_an_overflow_asks_for_another_round() {
        let mut state = State::new("a".into(), 2);
        state.watermark = Some(10);
        state.begin_catch_up();
        for id in 11..=13 {
            assert_eq!(state.push(push(id)), [None, None], "held, not emitted");
        }
        assert_eq!(state.held_len(), 2, "the oldest held push was dropped");
        assert_eq!(
            state.next_catch_up_round(),
            Some(10),
            "a dropped push: sync again from the saved watermark"
        );
        assert_eq!(state.next_catch_up_round(), None, "nothing dropped since");
        assert_eq!(ids(&state.end_resync(Vec::new())), [12, 13]);
        let now: Vec<Event> = state.push(push(14)).into_iter().flatten().collect();
        assert_eq!(ids(&now), [14], "no longer held");
    }

    #[test]
    fn catch_up_rounds_are_bounded() {
        let mut state = State::new("a".into(), 1);
        state.watermark = Some(10);
        state.begin_catch_up();
        let mut rounds = 1;
        let mut id = 11;
        loop {
            state.push(push(id));
            state.push(push(id + 1));
            id += 2;
            if state.next_catch_up_round().is_none() {
                break;
            }
            rounds += 1;
        }
        assert_eq!(rounds, MAX_CATCH_UP_ROUNDS);
        assert_eq!(state.held_len(), 1);
    }
}
