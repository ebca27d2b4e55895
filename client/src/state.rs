//! What a client remembers across connections, and the decisions it takes on them, shared by
//! both front ends (the blocking [`Client`](crate::Client) and the tokio
//! [`AsyncClient`](crate::AsyncClient)): the token, the sync watermark, the dedupe set, the
//! pushes held back while a catch-up runs, what to do when a connection closes, and the
//! reconnect schedule. Nothing here does I/O or waits; the front ends do, and call in here to
//! decide.

use std::time::Duration;

use courier_protocol::{AuthOk, ErrorCode, Frame, Message, MessageMeta};

use crate::backoff::Backoff;
use crate::dedupe::Dedupe;
use crate::event::Event;
use crate::sync::SyncResult;
use crate::{ClientConfig, Error};

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
    pub(crate) dedupe: Dedupe,
    /// A resync is running: pushed messages (with the message each replies to, 0 for none)
    /// wait in `held` so they come out after the backlog.
    resyncing: bool,
    held: Vec<(Message, u64)>,
    pub(crate) ended: bool,
    pub(crate) last_reason: Option<ErrorCode>,
    /// With trust on first use: the key the server at this address proved, pinned for
    /// reconnects to it (Noise Pipes: XX on first contact, IK after).
    pub(crate) learned_key: Option<(String, courier_protocol::noise::PublicKey)>,
}

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
    pub(crate) fn new(addr: String) -> State {
        State {
            addr,
            auth: None,
            watermark: None,
            dedupe: Dedupe::new(),
            resyncing: false,
            held: Vec::new(),
            ended: false,
            last_reason: None,
            learned_key: None,
        }
    }

    /// An `AUTH_OK` arrived for a login (not a reconnect).
    pub(crate) fn logged_in(&mut self, auth: AuthOk) {
        self.auth = Some(auth.clone());
        // A device with nothing saved starts at the login: what came before is history
        // (`HISTORY`), not backlog.
        if self.watermark.is_none() {
            self.watermark = Some(auth.watermark);
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
                    self.held.push((message, p.reply_to));
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
