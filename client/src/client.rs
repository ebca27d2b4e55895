//! The client handle: one current connection, the session (token, watermark, dedupe) and the
//! event stream, plus the reconnect loop.
//!
//! Lock order: `Inner::conn` before `Inner::state`; neither is held across a request.

use std::ops::Deref;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use courier_protocol::{AuthOk, ErrorCode, Frame, Welcome};
use crossbeam_channel::{unbounded, Receiver, Sender};
use parking_lot::Condvar;

use crate::api::account as auth;
use crate::connection::{Connection, Sink};
use crate::event::{self, Event, Events};
use crate::shared::{session_accessors, AuthStep, Link, Shared};
use crate::state::{Reconnect, ResumeFailure, MAX_REDIRECTS};
use crate::sync::sync_pages;
use crate::{ClientConfig, Result};

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
    shared: Shared<Connection, Sender<Event>, Condvar>,
    events_rx: Receiver<Event>,
}

impl Deref for Inner {
    type Target = Shared<Connection, Sender<Event>, Condvar>;

    fn deref(&self) -> &Self::Target {
        &self.shared
    }
}

struct InnerSink(Weak<Inner>);

impl Client {
    /// Connects to `addr` (`host:port`) and performs the `HELLO`/`WELCOME` handshake. Then log
    /// in with [`register`](Self::register), [`login`](Self::login) or [`resume`](Self::resume).
    pub fn connect(addr: impl std::fmt::Display, config: ClientConfig) -> Result<Client> {
        let addr = addr.to_string();
        let (events_tx, events_rx) = unbounded();
        let inner = Arc::new(Inner {
            shared: Shared::new(config, addr.clone(), events_tx, Condvar::new()),
            events_rx,
        });
        let conn = Connection::open(&addr, &inner.config, inner.sink())?;
        inner.learn_key(&addr, &conn);
        inner.install(conn);
        Ok(Client { inner })
    }

    /// Creates an account and logs this device in.
    pub fn register(&self, handle: &str, password: &str) -> Result<AuthOk> {
        self.authenticate(auth::register(&self.inner.config, handle, password))
    }

    /// Logs in with a password.
    pub fn login(&self, handle: &str, password: &str) -> Result<AuthOk> {
        self.authenticate(auth::login(&self.inner.config, handle, password))
    }

    /// Logs in with the token of an earlier [`AuthOk`]; no password needed.
    pub fn resume(&self, token: &[u8]) -> Result<AuthOk> {
        self.authenticate(auth::resume(token))
    }

    fn authenticate(&self, frame: Frame) -> Result<AuthOk> {
        let inner = &self.inner;
        for _ in 0..=MAX_REDIRECTS {
            let conn = inner.current()?;
            inner.before_auth();
            let result = conn.request(frame.clone(), inner.config.request_timeout);
            match inner.auth_answer(&conn, frame.name(), result)? {
                AuthStep::Done(auth) => {
                    self.after_auth(&conn)?;
                    return Ok(auth);
                }
                AuthStep::Redirect(addr) => {
                    let next = Connection::open(&addr, &inner.config_for(&addr), inner.sink())?;
                    inner.learn_key(&addr, &next);
                    inner.moved(addr, next);
                }
            }
        }
        Err(inner.too_many_redirects())
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

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Breaks the socket as a network failure would, to exercise reconnect.
    #[cfg(test)]
    pub(crate) fn break_connection(&self) {
        if let Ok(conn) = self.inner.current() {
            conn.break_for_test();
        }
    }
}

session_accessors!(Client);

impl Link for Connection {
    fn close(&self) {
        Connection::close(self);
    }

    fn is_closed(&self) -> bool {
        Connection::is_closed(self)
    }

    fn closed_locally(&self) -> bool {
        Connection::closed_locally(self)
    }

    fn close_reason(&self) -> Option<ErrorCode> {
        Connection::close_reason(self)
    }

    fn redirect(&self) -> Option<(String, String)> {
        Connection::redirect(self)
    }

    fn redirect_key(&self) -> Option<courier_protocol::noise::PublicKey> {
        Connection::redirect_key(self)
    }

    fn welcome(&self) -> Welcome {
        Connection::welcome(self)
    }

    fn server_key(&self) -> Option<courier_protocol::noise::PublicKey> {
        Connection::server_key(self)
    }

    fn max_frame(&self) -> u32 {
        Connection::max_frame(self)
    }
}

impl Inner {
    fn sink(self: &Arc<Self>) -> Arc<dyn Sink> {
        Arc::new(InnerSink(Arc::downgrade(self)))
    }

    /// Syncs from the saved watermark on `conn`: records everything in the dedupe set and
    /// emits what is new, unless this is the first sync (no watermark), which only sets one.
    /// Syncs again from the watermark it saved while held pushes overflowed meanwhile (see
    /// [`ClientConfig::max_held_pushes`]), at most `MAX_CATCH_UP_ROUNDS` times.
    fn catch_up(&self, conn: &Connection) -> Result<()> {
        let mut since = self.begin_catch_up();
        loop {
            let from = since.unwrap_or(0);
            let result = sync_pages(
                conn,
                from,
                self.watermarks_for(from),
                self.config.sync_page,
                self.config.request_timeout,
            );
            match self.end_catch_up(since, &result) {
                Some(again) => since = Some(again),
                None => return result.map(drop),
            }
        }
    }

    fn resume_on(self: &Arc<Self>, addr: &str) -> Result<(), ResumeFailure> {
        let token = self.saved_token()?;
        let conn = Connection::open(addr, &self.config_for(addr), self.sink())
            .map_err(|_| ResumeFailure::Retry)?;
        self.learn_key(addr, &conn);
        self.begin_resync();
        let resumed = conn.request(auth::resume(&token), self.config.request_timeout);
        self.resume_answer(&conn, resumed)?;
        let caught_up = self.catch_up(&conn);
        self.resume_done(conn, addr, caught_up)
    }
}

impl Sink for InnerSink {
    fn on_push(&self, _conn: &Arc<Connection>, frame: Frame) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        inner.push(frame);
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
        if let Some(redirect) = inner.closed(conn) {
            drop(inner);
            reconnect_loop(&self.0, redirect);
        }
    }
}

/// Reconnects until it works, the session ends or the client is dropped. Runs on the reader
/// thread of the connection that closed; holds no strong reference while sleeping.
fn reconnect_loop(weak: &Weak<Inner>, redirect: Option<String>) {
    let Some(inner) = weak.upgrade() else { return };
    let mut plan = Reconnect::new(&inner.config, redirect);
    drop(inner);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.is_ended() {
            return;
        }
        let addr = plan.target(&inner.state.lock());
        let result = inner.resume_on(&addr);
        let Some(delay) = inner.after_attempt(&mut plan, addr, result) else {
            return;
        };
        drop(inner);
        thread::sleep(delay);
    }
}
