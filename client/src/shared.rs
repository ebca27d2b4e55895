//! What both front ends hold and do alike, whatever their I/O: the current connection, the
//! session's memory ([`State`]) behind its lock, the event stream's sending side, and the
//! non-blocking steps around them (install a connection, emit, end, route a push, decide what
//! a close means). The blocking [`Client`](crate::Client) and the tokio
//! [`AsyncClient`](crate::AsyncClient) each wrap one [`Shared`] with their own connection type,
//! channel and wake-up, and add only what waits (connecting, requests, the reconnect loop).
//!
//! Lock order: `Shared::conn` before `Shared::state`; neither is held across a request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_protocol::{AuthOk, ErrorCode, Frame, Welcome};
use parking_lot::Mutex;

use crate::event::Event;
use crate::state::{AfterClose, Reconnect, ResumeFailure, Retry, State};
use crate::sync::SyncResult;
use crate::{ClientConfig, Error, Result};

/// A connection as the shared logic sees it.
pub(crate) trait Link: Send + Sync {
    /// Closes it on purpose (no reconnect follows).
    fn close(&self);
    fn is_closed(&self) -> bool;
    /// Whether this side closed it.
    fn closed_locally(&self) -> bool;
    /// The code the server gave when it closed, if any.
    fn close_reason(&self) -> Option<ErrorCode>;
    /// The `REDIRECT` the server sent on it, as (node, addr).
    fn redirect(&self) -> Option<(String, String)>;
    /// The key that `REDIRECT` named for its node (`None` on a plaintext cluster).
    fn redirect_key(&self) -> Option<courier_protocol::noise::PublicKey>;
    /// The server's `WELCOME`.
    fn welcome(&self) -> Welcome;
    /// The server's key as the encrypted handshake proved it; `None` in plaintext.
    fn server_key(&self) -> Option<courier_protocol::noise::PublicKey>;
    /// The largest frame the server accepts.
    fn max_frame(&self) -> u32;
}

/// The event stream's sending side.
pub(crate) trait EventTx: Send {
    fn send_event(&self, event: Event);
}

/// Wakes everyone waiting for the connection to change.
pub(crate) trait Wake: Send + Sync {
    fn wake_all(&self);
}

/// What the answer to `REGISTER` / `LOGIN` / `RESUME` means for a login.
pub(crate) enum AuthStep {
    /// Logged in; a reconnecting client catches up next.
    Done(AuthOk),
    /// The user lives on another node: open a connection to this address and try again there.
    Redirect(String),
}

/// The shared half of a client; see the module docs.
pub(crate) struct Shared<L, T, W> {
    pub(crate) config: ClientConfig,
    pub(crate) conn: Mutex<Option<Arc<L>>>,
    /// Woken when a connection is installed or the session ends.
    pub(crate) conn_changed: W,
    pub(crate) state: Mutex<State>,
    events_tx: Mutex<Option<T>>,
}

impl<L: Link, T: EventTx, W: Wake> Shared<L, T, W> {
    /// Remembers the key a trust-on-first-use connection to `addr` learned, so that reconnects
    /// there pin it (Noise Pipes: XX on first contact, IK after).
    pub(crate) fn learn_key(&self, addr: &str, conn: &L) {
        if self.config.encryption != courier_protocol::session::Encryption::TrustOnFirstUse {
            return;
        }
        if let Some(key) = conn.server_key() {
            self.state.lock().remember_key(addr, key);
        }
    }

    /// Remembers the key the `REDIRECT` on `conn` names for the node at `addr`, which the
    /// connection to `addr` then pins. The node that sent it proved its own key (the pinned
    /// one, or the one learned on first use), so the client trusts the key it vouches for; a
    /// client pinned to another key never got that far (its handshake was refused).
    fn learn_redirect_key(&self, addr: &str, conn: &L) {
        if self.config.encryption == courier_protocol::session::Encryption::Plaintext {
            return;
        }
        if let Some(key) = conn.redirect_key() {
            self.state.lock().remember_key(addr, key);
        }
    }

    /// The config for a connection to `addr`: the key learned there (on first use) or named
    /// for it by a `REDIRECT` is pinned; otherwise the configured encryption.
    pub(crate) fn config_for(&self, addr: &str) -> std::borrow::Cow<'_, ClientConfig> {
        let learned = if self.config.encryption == courier_protocol::session::Encryption::Plaintext
        {
            None
        } else {
            self.state.lock().key_for(addr)
        };
        match learned {
            Some(key) => std::borrow::Cow::Owned(self.config.clone().with_server_key(key)),
            None => std::borrow::Cow::Borrowed(&self.config),
        }
    }

    pub(crate) fn new(config: ClientConfig, addr: String, events_tx: T, wake: W) -> Self {
        Shared {
            state: Mutex::new(State::new(addr, config.max_held_pushes)),
            config,
            conn: Mutex::new(None),
            conn_changed: wake,
            events_tx: Mutex::new(Some(events_tx)),
        }
    }

    /// The current connection, or why there is none.
    pub(crate) fn current(&self) -> Result<Arc<L>> {
        if let Some(conn) = self.conn.lock().clone() {
            return Ok(conn);
        }
        Err(Error::Disconnected {
            reason: self.state.lock().last_reason,
        })
    }

    /// Makes `conn` current unless it already closed; false if it did.
    pub(crate) fn install(&self, conn: Arc<L>) -> bool {
        let mut cur = self.conn.lock();
        // Checked under the lock: a close after this point finds `conn` current in
        // `closed`.
        if conn.is_closed() {
            return false;
        }
        if let Some(old) = cur.replace(conn) {
            old.close();
        }
        self.conn_changed.wake_all();
        true
    }

    pub(crate) fn emit(&self, event: Event) {
        if let Some(tx) = self.events_tx.lock().as_ref() {
            tx.send_event(event);
        }
    }

    /// Ends the session: closes the connection, emits `SessionEnded` once and closes the
    /// stream.
    pub(crate) fn end(&self, reason: Option<ErrorCode>) {
        let conn = self.conn.lock().take();
        self.state.lock().end(reason);
        if let Some(conn) = conn {
            conn.close();
        }
        let tx = self.events_tx.lock().take();
        if let Some(tx) = tx {
            tx.send_event(Event::SessionEnded { reason });
        }
        self.conn_changed.wake_all();
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.state.lock().ended
    }

    /// Marks the session as ending on purpose, so the coming close is not reconnected.
    pub(crate) fn begin_end(&self) {
        self.state.lock().ended = true;
    }

    /// Holds pushes back until [`end_resync`](Self::end_resync).
    pub(crate) fn begin_resync(&self) {
        self.state.lock().begin_resync();
    }

    /// Emits `backlog`, then the pushes held meanwhile that are new, and stops holding.
    pub(crate) fn end_resync(&self, backlog: Vec<Event>) {
        let mut state = self.state.lock();
        // Emitted under the state lock so that a push cannot overtake the backlog.
        for event in state.end_resync(backlog) {
            self.emit(event);
        }
    }

    /// A push from the current connection.
    pub(crate) fn push(&self, frame: Frame) {
        let events = self.state.lock().push(frame);
        for event in events.into_iter().flatten() {
            self.emit(event);
        }
    }

    /// `conn` closed. Emits what follows and ends the session if that is what follows; returns
    /// `Some(redirect)` when the front end must reconnect (to the redirect's address if any).
    pub(crate) fn closed(&self, conn: &Arc<L>) -> Option<Option<String>> {
        {
            let mut cur = self.conn.lock();
            if !cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                // Not (or no longer) the current connection: whoever replaced it is in charge.
                return None;
            }
            *cur = None;
        }
        if conn.closed_locally() {
            return None;
        }
        let reason = conn.close_reason();
        let redirect = conn.redirect().map(|(_, addr)| addr);
        if let Some(addr) = &redirect {
            self.learn_redirect_key(addr, conn);
        }
        let next = self
            .state
            .lock()
            .after_close(reason, redirect, self.config.auto_reconnect);
        if next != AfterClose::Nothing {
            self.emit(Event::Disconnected { reason });
        }
        match next {
            AfterClose::Nothing | AfterClose::LeaveToAuthenticate => None,
            AfterClose::End(reason) => {
                self.end(reason);
                None
            }
            AfterClose::Reconnect(redirect) => Some(redirect),
        }
    }

    /// Call before sending an authentication request: a reconnecting client catches up after
    /// `AUTH_OK`, and a push may come right behind it, so pushes are held from now on.
    pub(crate) fn before_auth(&self) {
        if self.config.auto_reconnect {
            self.begin_resync();
        }
    }

    /// The answer (`result`) to the authentication request `request` sent on `conn`.
    pub(crate) fn auth_answer(
        &self,
        conn: &L,
        request: &'static str,
        result: Result<Frame>,
    ) -> Result<AuthStep> {
        if self.config.auto_reconnect && !matches!(result, Ok(Frame::AuthOk(_))) {
            // What the connection pushed meanwhile (it may be logged in already) comes out.
            self.end_resync(Vec::new());
        }
        match result {
            Ok(Frame::AuthOk(auth)) => {
                self.state.lock().logged_in(auth.clone());
                Ok(AuthStep::Done(auth))
            }
            Ok(other) => Err(Error::UnexpectedReply {
                request,
                reply: other.name(),
            }),
            Err(e) => {
                let Some((node, addr)) = conn.redirect() else {
                    return Err(e);
                };
                conn.close();
                self.learn_redirect_key(&addr, conn);
                self.state.lock().last_redirect = Some((node, addr.clone()));
                Ok(AuthStep::Redirect(addr))
            }
        }
    }

    /// A redirect was followed: `conn` is open at `addr`.
    pub(crate) fn moved(&self, addr: String, conn: Arc<L>) {
        self.state.lock().addr = addr;
        self.install(conn);
    }

    /// The error after following [`MAX_REDIRECTS`](crate::state::MAX_REDIRECTS) in a row.
    /// It names the last redirect followed (the connection it opened sent none).
    pub(crate) fn too_many_redirects(&self) -> Error {
        let (node, addr) = self.state.lock().last_redirect.clone().unwrap_or_default();
        Error::TooManyRedirects { node, addr }
    }

    /// Starts a catch-up: holds pushes; returns the saved watermark to sync from (`None`: the
    /// first sync, which only sets one).
    pub(crate) fn begin_catch_up(&self) -> Option<u64> {
        let mut state = self.state.lock();
        state.begin_catch_up();
        state.watermark
    }

    /// Ends a catch-up round, a sync from `since` that returned `result`: records it and emits
    /// what is new (unless it was the first sync). Returns the watermark to sync from in
    /// another round when held pushes were dropped meanwhile (the pushes stay held); else
    /// emits the pushes held meanwhile and stops holding.
    pub(crate) fn end_catch_up(
        &self,
        since: Option<u64>,
        result: &Result<SyncResult>,
    ) -> Option<u64> {
        let mut out = Vec::new();
        if let Ok(synced) = result {
            let mut state = self.state.lock();
            state.record_sync(synced, since.is_some(), &mut out);
            if let Some(again) = state.next_catch_up_round() {
                // Pushes are still held, so nothing overtakes this round's backlog.
                for event in out {
                    self.emit(event);
                }
                return Some(again);
            }
        }
        self.end_resync(out);
        None
    }

    /// The token a reconnect resumes with.
    pub(crate) fn saved_token(&self) -> Result<Bytes, ResumeFailure> {
        let state = self.state.lock();
        let auth = state.auth.as_ref().ok_or(ResumeFailure::Fatal(None))?;
        Ok(auth.token.clone())
    }

    /// The answer to a reconnect's `RESUME` on `conn` (sent after [`begin_resync`]); closes
    /// `conn` if it failed.
    ///
    /// [`begin_resync`]: Self::begin_resync
    pub(crate) fn resume_answer(
        &self,
        conn: &L,
        resumed: Result<Frame>,
    ) -> Result<(), ResumeFailure> {
        if !matches!(resumed, Ok(Frame::AuthOk(_))) {
            self.end_resync(Vec::new());
        }
        let failure = match resumed {
            Ok(Frame::AuthOk(auth)) => {
                self.state.lock().auth = Some(auth);
                return Ok(());
            }
            Ok(_) => ResumeFailure::Retry,
            Err(e) => ResumeFailure::of(&e, conn.redirect().map(|(_, to)| to)),
        };
        conn.close();
        Err(failure)
    }

    /// A reconnect's catch-up on `conn` (at `addr`) ended with `caught_up`: `conn` becomes
    /// current, or is closed.
    pub(crate) fn resume_done(
        &self,
        conn: Arc<L>,
        addr: &str,
        caught_up: Result<()>,
    ) -> Result<(), ResumeFailure> {
        let redirected = || ResumeFailure::redirected(conn.redirect().map(|(_, to)| to));
        if caught_up.is_err() {
            conn.close();
            return Err(redirected());
        }
        self.state.lock().addr = addr.to_string();
        if !self.install(Arc::clone(&conn)) {
            return Err(redirected());
        }
        Ok(())
    }

    /// What follows a reconnect attempt to `addr`: `None` when the loop is over (reconnected,
    /// or the session ended), else how long to wait before the next attempt.
    pub(crate) fn after_attempt(
        &self,
        plan: &mut Reconnect,
        addr: String,
        result: Result<(), ResumeFailure>,
    ) -> Option<Duration> {
        let failure = match result {
            Ok(()) => {
                self.emit(Event::Reconnected { addr });
                return None;
            }
            Err(failure) => failure,
        };
        match plan.failed(failure) {
            Retry::Now => Some(Duration::ZERO),
            Retry::After(delay) => Some(delay),
            Retry::End(reason) => {
                self.end(reason);
                None
            }
        }
    }

    /// The last `AUTH_OK`.
    pub(crate) fn auth(&self) -> Option<AuthOk> {
        self.state.lock().auth.clone()
    }

    pub(crate) fn user_id(&self) -> Option<u64> {
        self.state.lock().auth.as_ref().map(|a| a.user)
    }

    pub(crate) fn token(&self) -> Option<Vec<u8>> {
        let state = self.state.lock();
        state.auth.as_ref().map(|a| a.token.to_vec())
    }

    pub(crate) fn watermark(&self) -> Option<u64> {
        self.state.lock().watermark
    }

    pub(crate) fn set_watermark(&self, watermark: u64) {
        let mut state = self.state.lock();
        state.watermark = Some(watermark);
        state.watermarks.clear();
    }

    pub(crate) fn watermarks(&self) -> Vec<u64> {
        self.state.lock().watermarks.clone()
    }

    pub(crate) fn set_watermarks(&self, watermark: u64, per_node: Vec<u64>) {
        let mut state = self.state.lock();
        state.watermark = Some(watermark);
        state.watermarks = per_node;
    }

    /// The per-node watermarks saved with `since`, if `since` is the saved watermark.
    pub(crate) fn watermarks_for(&self, since: u64) -> Vec<u64> {
        let state = self.state.lock();
        if state.watermark == Some(since) {
            state.watermarks.clone()
        } else {
            Vec::new()
        }
    }

    pub(crate) fn server_addr(&self) -> String {
        self.state.lock().addr.clone()
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.conn.lock().is_some()
    }
}

/// The methods both front ends offer that neither waits in, written once: `$client` has a
/// field `inner` that dereferences to a [`Shared`].
macro_rules! session_accessors {
    ($client:ty) => {
        impl $client {
            /// The last `AUTH_OK`: user id, device id, token, handle.
            pub fn auth(&self) -> Option<courier_protocol::AuthOk> {
                self.inner.auth()
            }

            /// The logged-in user's id.
            pub fn user_id(&self) -> Option<u64> {
                self.inner.user_id()
            }

            /// The session token, to save for [`resume`](Self::resume).
            pub fn token(&self) -> Option<Vec<u8>> {
                self.inner.token()
            }

            /// The sync watermark: everything up to it has been synced.
            pub fn watermark(&self) -> Option<u64> {
                self.inner.watermark()
            }

            /// Sets the watermark saved from an earlier run. A reconnecting client that logs in
            /// with a watermark set delivers what it missed since then as events. Without one,
            /// a login starts from the watermark in `AUTH_OK`: messages from before the login
            /// are in `history`.
            pub fn set_watermark(&self, watermark: u64) {
                self.inner.set_watermark(watermark)
            }

            /// Against a cluster: the per-node watermarks saved with [`watermark`](Self::watermark)
            /// (empty against a single node). Save both, and give both back with
            /// [`set_watermarks`](Self::set_watermarks).
            pub fn watermarks(&self) -> Vec<u64> {
                self.inner.watermarks()
            }

            /// Like [`set_watermark`](Self::set_watermark), with the per-node watermarks saved
            /// with it. A scalar alone works against a cluster too (it is their minimum), at the
            /// cost of fetching again what some nodes had already synced.
            pub fn set_watermarks(&self, watermark: u64, per_node: Vec<u64>) {
                self.inner.set_watermarks(watermark, per_node)
            }

            /// The address the client (re)connects to: the one given, or the last redirect's.
            pub fn server_addr(&self) -> String {
                self.inner.server_addr()
            }

            /// The server's public key as the current connection's encrypted handshake proved
            /// it (the pinned key, or the one learned by trust on first use); `None` in
            /// plaintext.
            pub fn server_key(&self) -> $crate::Result<Option<courier_protocol::noise::PublicKey>> {
                Ok($crate::shared::Link::server_key(&*self.inner.current()?))
            }

            /// The current connection's `WELCOME`.
            pub fn welcome(&self) -> $crate::Result<courier_protocol::Welcome> {
                Ok($crate::shared::Link::welcome(&*self.inner.current()?))
            }

            /// Whether a connection is up right now.
            pub fn is_connected(&self) -> bool {
                self.inner.is_connected()
            }

            /// Closes the connection and ends the session (the token stays valid for a later
            /// resume).
            pub fn close(&self) {
                self.inner.end(None);
            }

            /// The largest frame the server accepts.
            pub(crate) fn max_frame(&self) -> $crate::Result<u32> {
                Ok($crate::shared::Link::max_frame(&*self.inner.current()?))
            }

            /// Marks the session as ending on purpose, so the coming close is not reconnected.
            pub(crate) fn begin_end(&self) {
                self.inner.begin_end();
            }
        }

        impl Drop for $client {
            fn drop(&mut self) {
                self.inner.end(None);
            }
        }
    };
}
pub(crate) use session_accessors;

impl EventTx for crossbeam_channel::Sender<Event> {
    fn send_event(&self, event: Event) {
        // A receiver gone means nobody listens any more: the event has nowhere to go.
        let _ = self.send(event);
    }
}

impl Wake for parking_lot::Condvar {
    fn wake_all(&self) {
        self.notify_all();
    }
}

#[cfg(feature = "tokio")]
impl EventTx for tokio::sync::mpsc::UnboundedSender<Event> {
    fn send_event(&self, event: Event) {
        let _ = self.send(event);
    }
}

#[cfg(feature = "tokio")]
impl Wake for tokio::sync::Notify {
    fn wake_all(&self) {
        self.notify_waiters();
    }
}
