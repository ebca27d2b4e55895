//! The client handle: one current connection, the session (token, watermark, dedupe) and the
//! event stream, plus the reconnect loop.
//!
//! Lock order: `Inner::conn` before `Inner::state`; neither is held across a request.

use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use courier_protocol::noise::PublicKey;
use courier_protocol::session::Encryption;
use courier_protocol::{AuthOk, ErrorCode, Frame, Login, Message, Register, Resume, Welcome};
use crossbeam_channel::{unbounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use crate::backoff::Backoff;
use crate::connection::{Connection, Sink};
use crate::dedupe::Dedupe;
use crate::event::{self, Event, Events};
use crate::sync::{sync_pages, SyncResult};
use crate::{ClientConfig, Error, Result};

/// Redirects followed in a row before giving up: a loop between nodes is a server bug.
const MAX_REDIRECTS: usize = 4;
/// Without auto-reconnect, failed attempts to follow a redirect before giving up.
const REDIRECT_ATTEMPTS: usize = 3;

/// Takes the expected reply variant out of a call's result.
macro_rules! expect_reply {
    ($result:expr, $request:literal, $variant:ident) => {
        match $result? {
            courier_protocol::Frame::$variant(reply) => Ok(reply),
            other => Err($crate::Error::UnexpectedReply {
                request: $request,
                reply: other.name(),
            }),
        }
    };
}
pub(crate) use expect_reply;

/// A blocking Courier client. Every method may be called from any thread; replies are matched
/// to requests by request id, so calls on several threads proceed concurrently.
///
/// Pushes (messages, receipts, presence, typing) arrive on the event stream:
/// [`Client::events`] or [`Client::recv_event_timeout`]. Consume it, or it grows without bound.
///
/// With [`ClientConfig::auto_reconnect`], a dropped connection is re-established with jittered
/// exponential backoff: `HELLO`, `RESUME` with the saved token, then `SYNC` from the saved
/// watermark. Missed messages come out of the event stream, each `(thread, id)` once.
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    conn: Mutex<Option<Arc<Connection>>>,
    conn_changed: Condvar,
    pub(crate) state: Mutex<State>,
    events_tx: Mutex<Option<Sender<Event>>>,
    events_rx: Receiver<Event>,
}

pub(crate) struct State {
    /// Where the next reconnect goes: the address given, or the last redirect's.
    addr: String,
    auth: Option<AuthOk>,
    pub(crate) watermark: Option<u64>,
    pub(crate) dedupe: Dedupe,
    /// A resync is running: pushed messages wait in `held` so they come out after the backlog.
    resyncing: bool,
    held: Vec<Message>,
    ended: bool,
    last_reason: Option<ErrorCode>,
    /// With [`Encryption::TrustOnFirstUse`]: the key the server at this address proved, pinned
    /// for reconnects to it (Noise Pipes: XX on first contact, IK after).
    learned_key: Option<(String, PublicKey)>,
}

struct InnerSink(Weak<Inner>);

enum ResumeFailure {
    Redirect(String),
    Fatal(Option<ErrorCode>),
    Retry,
}

impl Client {
    /// Connects to `addr` (`host:port`) and performs the `HELLO`/`WELCOME` handshake. Then log
    /// in with [`register`](Self::register), [`login`](Self::login) or [`resume`](Self::resume).
    pub fn connect(addr: impl std::fmt::Display, config: ClientConfig) -> Result<Client> {
        let addr = addr.to_string();
        let (events_tx, events_rx) = unbounded();
        let inner = Arc::new(Inner {
            config,
            conn: Mutex::new(None),
            conn_changed: Condvar::new(),
            state: Mutex::new(State {
                addr: addr.clone(),
                auth: None,
                watermark: None,
                dedupe: Dedupe::new(),
                resyncing: false,
                held: Vec::new(),
                ended: false,
                last_reason: None,
                learned_key: None,
            }),
            events_tx: Mutex::new(Some(events_tx)),
            events_rx,
        });
        let conn = Connection::open(&addr, &inner.config, inner.sink())?;
        inner.learn_key(&addr, &conn);
        inner.install(conn);
        Ok(Client { inner })
    }

    /// Creates an account and logs this device in.
    pub fn register(&self, handle: &str, password: &str) -> Result<AuthOk> {
        let device = self.inner.config.device.clone();
        self.authenticate(
            Register {
                handle: handle.into(),
                password: password.into(),
                device,
            }
            .into(),
        )
    }

    /// Logs in with a password.
    pub fn login(&self, handle: &str, password: &str) -> Result<AuthOk> {
        let device = self.inner.config.device.clone();
        self.authenticate(
            Login {
                handle: handle.into(),
                password: password.into(),
                device,
            }
            .into(),
        )
    }

    /// Logs in with the token of an earlier [`AuthOk`]; no password needed.
    pub fn resume(&self, token: &[u8]) -> Result<AuthOk> {
        self.authenticate(
            Resume {
                token: token.to_vec().into(),
            }
            .into(),
        )
    }

    fn authenticate(&self, frame: Frame) -> Result<AuthOk> {
        let request = frame.name();
        for _ in 0..=MAX_REDIRECTS {
            let conn = self.inner.current()?;
            // A reconnecting client catches up after AUTH_OK (`after_auth`).
            let catch_up = self.inner.config.auto_reconnect;
            if catch_up {
                self.inner.begin_resync();
            }
            let result = conn.request(frame.clone(), self.inner.config.request_timeout);
            if catch_up && !matches!(result, Ok(Frame::AuthOk(_))) {
                // What the connection pushed meanwhile (it may be logged in already) comes out.
                self.inner.end_resync(Vec::new());
            }
            match result {
                Ok(Frame::AuthOk(auth)) => {
                    {
                        let mut state = self.inner.state.lock();
                        state.auth = Some(auth.clone());
                        // A device with nothing saved starts at the login: what came before is
                        // history (`HISTORY`), not backlog.
                        if state.watermark.is_none() {
                            state.watermark = Some(auth.watermark);
                        }
                    }
                    self.after_auth(&conn)?;
                    return Ok(auth);
                }
                Ok(other) => {
                    return Err(Error::UnexpectedReply {
                        request,
                        reply: other.name(),
                    })
                }
                Err(e) => {
                    let Some((_node, addr)) = conn.redirect() else {
                        return Err(e);
                    };
                    conn.close();
                    let next = Connection::open(&addr, &self.inner.config, self.inner.sink())?;
                    self.inner.learn_key(&addr, &next);
                    self.inner.state.lock().addr = addr;
                    self.inner.install(next);
                }
            }
        }
        let (node, addr) = self.inner.current()?.redirect().unwrap_or_default();
        Err(Error::TooManyRedirects { node, addr })
    }

    /// A reconnecting client needs a watermark so that a later reconnect can sync the gap.
    fn after_auth(&self, conn: &Arc<Connection>) -> Result<()> {
        if !self.inner.config.auto_reconnect {
            return Ok(());
        }
        match self.inner.catch_up(conn) {
            // The reconnect that follows a dropped connection will sync instead.
            Err(e) if e.is_connection_error() => Ok(()),
            other => other,
        }
    }

    /// Sends a request and waits for its reply (any frame; `ERROR_REPLY` is an error). The
    /// typed methods are built on this.
    pub fn call(&self, frame: impl Into<Frame>) -> Result<Frame> {
        let conn = self.inner.current()?;
        conn.request(frame.into(), self.inner.config.request_timeout)
    }

    /// Sends a frame that has no reply, such as `TYPING`.
    pub fn send_frame(&self, frame: impl Into<Frame>) -> Result<()> {
        self.inner.current()?.send_only(frame.into())
    }

    /// A blocking iterator over pushes and connection events; it ends after
    /// [`Event::SessionEnded`].
    pub fn events(&self) -> Events<'_> {
        Events {
            rx: &self.inner.events_rx,
        }
    }

    /// The next event, waiting at most `timeout`; `None` on timeout or after the session ended.
    pub fn recv_event_timeout(&self, timeout: Duration) -> Option<Event> {
        event::recv_timeout(&self.inner.events_rx, timeout)
    }

    /// The next event if one is waiting.
    pub fn try_recv_event(&self) -> Option<Event> {
        self.inner.events_rx.try_recv().ok()
    }

    /// The event receiver itself, for `select!` with other channels. Cloning it shares the
    /// stream: each event goes to one receiver.
    pub fn event_receiver(&self) -> Receiver<Event> {
        self.inner.events_rx.clone()
    }

    /// The last `AUTH_OK`: user id, device id, token, handle.
    pub fn auth(&self) -> Option<AuthOk> {
        self.inner.state.lock().auth.clone()
    }

    /// The logged-in user's id.
    pub fn user_id(&self) -> Option<u64> {
        self.inner.state.lock().auth.as_ref().map(|a| a.user)
    }

    /// The session token, to save for [`resume`](Self::resume).
    pub fn token(&self) -> Option<Vec<u8>> {
        self.inner
            .state
            .lock()
            .auth
            .as_ref()
            .map(|a| a.token.to_vec())
    }

    /// The sync watermark: everything up to it has been synced.
    pub fn watermark(&self) -> Option<u64> {
        self.inner.state.lock().watermark
    }

    /// Sets the watermark saved from an earlier run. A reconnecting client that logs in with a
    /// watermark set delivers what it missed since then as events. Without one, a login starts
    /// from the watermark in `AUTH_OK`: messages from before the login are in `history`.
    pub fn set_watermark(&self, watermark: u64) {
        self.inner.state.lock().watermark = Some(watermark);
    }

    /// The address the client (re)connects to: the one given, or the last redirect's.
    pub fn server_addr(&self) -> String {
        self.inner.state.lock().addr.clone()
    }

    /// The server's public key as the current connection's encrypted handshake proved it
    /// (the pinned key, or the one learned by trust on first use); `None` in plaintext.
    pub fn server_key(&self) -> Result<Option<courier_protocol::noise::PublicKey>> {
        Ok(self.inner.current()?.server_key())
    }

    /// The current connection's `WELCOME`.
    pub fn welcome(&self) -> Result<Welcome> {
        Ok(self.inner.current()?.welcome())
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.conn.lock().is_some()
    }

    /// Waits until a connection is up (after a reconnect); false on timeout or session end.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut conn = self.inner.conn.lock();
        while conn.is_none() {
            if self.inner.state.lock().ended {
                return false;
            }
            if self
                .inner
                .conn_changed
                .wait_until(&mut conn, deadline)
                .timed_out()
            {
                return conn.is_some();
            }
        }
        true
    }

    /// Closes the connection and ends the session (the token stays valid for a later resume).
    pub fn close(&self) {
        self.inner.end(None);
    }

    /// The largest frame the server accepts.
    pub(crate) fn max_frame(&self) -> Result<u32> {
        Ok(self.inner.current()?.max_frame())
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Marks the session as ending on purpose, so the coming close is not reconnected.
    pub(crate) fn begin_end(&self) {
        self.inner.state.lock().ended = true;
    }

    /// Breaks the socket as a network failure would, to exercise reconnect.
    #[cfg(test)]
    pub(crate) fn break_connection(&self) {
        if let Ok(conn) = self.inner.current() {
            conn.break_for_test();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.inner.end(None);
    }
}

impl Inner {
    fn sink(self: &Arc<Self>) -> Arc<dyn Sink> {
        Arc::new(InnerSink(Arc::downgrade(self)))
    }

    pub(crate) fn current(&self) -> Result<Arc<Connection>> {
        if let Some(conn) = self.conn.lock().clone() {
            return Ok(conn);
        }
        Err(Error::Disconnected {
            reason: self.state.lock().last_reason,
        })
    }

    /// Makes `conn` current unless it already closed; false if it did.
    fn install(&self, conn: Arc<Connection>) -> bool {
        let mut cur = self.conn.lock();
        // Checked under the lock: a close after this point finds `conn` current in `on_close`.
        if conn.is_closed() {
            return false;
        }
        if let Some(old) = cur.replace(conn) {
            old.close();
        }
        self.conn_changed.notify_all();
        true
    }

    fn is_ended(&self) -> bool {
        self.state.lock().ended
    }

    pub(crate) fn emit(&self, event: Event) {
        if let Some(tx) = self.events_tx.lock().as_ref() {
            let _ = tx.send(event);
        }
    }

    /// Ends the session: closes the connection, emits `SessionEnded` once and closes the
    /// stream.
    pub(crate) fn end(&self, reason: Option<ErrorCode>) {
        let conn = self.conn.lock().take();
        {
            let mut state = self.state.lock();
            state.ended = true;
            if reason.is_some() {
                state.last_reason = reason;
            }
        }
        if let Some(conn) = conn {
            conn.close();
        }
        let tx = self.events_tx.lock().take();
        if let Some(tx) = tx {
            let _ = tx.send(Event::SessionEnded { reason });
        }
        self.conn_changed.notify_all();
    }

    fn deliver_message(&self, message: Message) {
        let mut state = self.state.lock();
        if state.resyncing {
            state.held.push(message);
        } else if state.dedupe.insert(message.thread, message.id) {
            drop(state);
            self.emit(Event::Message(message));
        }
    }

    /// Syncs from the saved watermark on `conn`: records everything in the dedupe set and
    /// emits what is new, unless this is the first sync (no watermark), which only sets one.
    fn catch_up(&self, conn: &Connection) -> Result<()> {
        let since = {
            let mut state = self.state.lock();
            state.resyncing = true;
            state.watermark
        };
        let result = sync_pages(
            conn,
            since.unwrap_or(0),
            self.config.sync_page,
            self.config.request_timeout,
        );
        let mut out = Vec::new();
        if let Ok(synced) = &result {
            record_sync(&mut self.state.lock(), synced, since.is_some(), &mut out);
        }
        self.end_resync(out);
        result.map(|_| ())
    }

    /// Holds pushes back from now on: a catch-up follows the authentication about to be sent,
    /// and a push may come right behind its AUTH_OK.
    fn begin_resync(&self) {
        self.state.lock().resyncing = true;
    }

    /// Emits `backlog`, then the pushes held meanwhile that are new, and stops holding.
    fn end_resync(&self, mut backlog: Vec<Event>) {
        let mut state = self.state.lock();
        for message in std::mem::take(&mut state.held) {
            if state.dedupe.insert(message.thread, message.id) {
                backlog.push(Event::Message(message));
            }
        }
        state.resyncing = false;
        // Emitted under the state lock so that a push cannot overtake the backlog.
        for event in backlog {
            self.emit(event);
        }
    }

    /// Remembers the key a trust-on-first-use connection to `addr` learned.
    fn learn_key(&self, addr: &str, conn: &Connection) {
        if self.config.encryption != Encryption::TrustOnFirstUse {
            return;
        }
        if let Some(key) = conn.server_key() {
            self.state.lock().learned_key = Some((addr.to_string(), key));
        }
    }

    /// The config for a connection to `addr`: trust on first use becomes the key learned there.
    fn config_for(&self, addr: &str) -> std::borrow::Cow<'_, ClientConfig> {
        let learned = match &self.state.lock().learned_key {
            Some((at, key)) if at == addr => Some(*key),
            _ => None,
        };
        match learned {
            Some(key) => std::borrow::Cow::Owned(self.config.clone().with_server_key(key)),
            None => std::borrow::Cow::Borrowed(&self.config),
        }
    }

    fn resume_on(self: &Arc<Self>, addr: &str) -> Result<(), ResumeFailure> {
        let Some(token) = self.state.lock().auth.as_ref().map(|a| a.token.clone()) else {
            return Err(ResumeFailure::Fatal(None));
        };
        let conn = Connection::open(addr, &self.config_for(addr), self.sink())
            .map_err(|_| ResumeFailure::Retry)?;
        self.learn_key(addr, &conn);
        let redirected = |conn: &Connection| match conn.redirect() {
            Some((_, to)) => ResumeFailure::Redirect(to),
            None => ResumeFailure::Retry,
        };
        self.begin_resync();
        let resumed = conn.request(Resume { token }.into(), self.config.request_timeout);
        if !matches!(resumed, Ok(Frame::AuthOk(_))) {
            self.end_resync(Vec::new());
        }
        match resumed {
            Ok(Frame::AuthOk(auth)) => self.state.lock().auth = Some(auth),
            Ok(_) => {
                conn.close();
                return Err(ResumeFailure::Retry);
            }
            Err(Error::Server {
                code: code @ (ErrorCode::InvalidToken | ErrorCode::SessionRevoked),
                ..
            }) => {
                conn.close();
                return Err(ResumeFailure::Fatal(Some(code)));
            }
            Err(_) => {
                conn.close();
                return Err(redirected(&conn));
            }
        }
        if self.catch_up(&conn).is_err() {
            conn.close();
            return Err(redirected(&conn));
        }
        self.state.lock().addr = addr.to_string();
        if !self.install(Arc::clone(&conn)) {
            return Err(redirected(&conn));
        }
        Ok(())
    }
}

/// Records a completed sync: dedupe, floors, watermark; queues the events to emit.
pub(crate) fn record_sync(
    state: &mut State,
    synced: &SyncResult,
    deliver: bool,
    out: &mut Vec<Event>,
) {
    if deliver {
        out.extend(synced.threads.iter().cloned().map(Event::ThreadUpdated));
    }
    for message in &synced.messages {
        if state.dedupe.insert(message.thread, message.id) && deliver {
            out.push(Event::Message(message.clone()));
        }
    }
    // Sync returns every message above `since` in a changed thread, so everything up to the
    // newest one returned has now been seen.
    for message in &synced.messages {
        state.dedupe.raise_floor(message.thread, message.id);
    }
    state.watermark = Some(synced.watermark);
}

impl Sink for InnerSink {
    fn on_push(&self, _conn: &Arc<Connection>, frame: Frame) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        match frame {
            Frame::MessagePush(p) => inner.deliver_message(p.message),
            Frame::ReceiptPush(p) => inner.emit(Event::Receipt {
                thread: p.thread,
                user: p.user,
                kind: p.kind,
                up_to: p.up_to,
            }),
            Frame::PresencePush(p) => inner.emit(Event::Presence(p.presence)),
            Frame::TypingPush(p) => inner.emit(Event::Typing {
                thread: p.thread,
                user: p.user,
                active: p.active,
            }),
            // A push type this client does not know yet (a later server's) is no event.
            _ => {}
        }
    }

    fn on_redirect(&self, _conn: &Arc<Connection>, node: String, addr: String) {
        if let Some(inner) = self.0.upgrade() {
            inner.emit(Event::Redirected { node, addr });
        }
    }

    fn on_close(&self, conn: &Arc<Connection>) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        {
            let mut cur = inner.conn.lock();
            if !cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                // Not (or no longer) the current connection: whoever replaced it is in charge.
                return;
            }
            *cur = None;
        }
        if conn.closed_locally() {
            return;
        }
        let reason = conn.close_reason();
        let redirect = conn.redirect();
        let (authed, ended) = {
            let mut state = inner.state.lock();
            state.last_reason = reason;
            (state.auth.is_some(), state.ended)
        };
        if ended {
            return;
        }
        inner.emit(Event::Disconnected { reason });
        if !authed && redirect.is_some() {
            // `authenticate` is waiting on this connection and follows the redirect itself.
            return;
        }
        if !authed || reason == Some(ErrorCode::SessionRevoked) {
            inner.end(reason);
            return;
        }
        if !inner.config.auto_reconnect && redirect.is_none() {
            inner.end(reason);
            return;
        }
        drop(inner);
        reconnect_loop(&self.0, redirect.map(|(_, addr)| addr));
    }
}

/// Reconnects until it works, the session ends or the client is dropped. Runs on the reader
/// thread of the connection that closed; holds no strong reference while sleeping.
fn reconnect_loop(weak: &Weak<Inner>, redirect: Option<String>) {
    let Some(inner) = weak.upgrade() else { return };
    let mut backoff = Backoff::new(inner.config.backoff);
    let persistent = inner.config.auto_reconnect;
    drop(inner);
    let mut target = redirect;
    let (mut redirects, mut failures) = (0, 0);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.is_ended() {
            return;
        }
        let addr = target
            .clone()
            .unwrap_or_else(|| inner.state.lock().addr.clone());
        match inner.resume_on(&addr) {
            Ok(()) => {
                inner.emit(Event::Reconnected { addr });
                return;
            }
            Err(ResumeFailure::Redirect(to)) => {
                redirects += 1;
                target = Some(to);
                if redirects <= MAX_REDIRECTS {
                    continue;
                }
                redirects = 0;
            }
            Err(ResumeFailure::Fatal(reason)) => {
                inner.end(reason);
                return;
            }
            Err(ResumeFailure::Retry) => {
                failures += 1;
                if !persistent && failures >= REDIRECT_ATTEMPTS {
                    inner.end(None);
                    return;
                }
            }
        }
        let delay = backoff.next_delay();
        drop(inner);
        thread::sleep(delay);
    }
}
