//! The tokio front end: [`AsyncClient`], the same client as the blocking [`Client`] on the
//! same [`Session`](courier_protocol::Session), with `async` methods.
//!
//! Tasks: each connection is one task that owns its socket and session ([`connection`]);
//! callers' futures send requests to it and await their replies; the heartbeat is the
//! session's `poll_timeout` slept on with `tokio::time`. Reconnecting runs on a task of its own,
//! spawned by the connection that dropped. Everything the two front ends hold and decide alike
//! (the current connection, what a push becomes, what follows a close, the reconnect schedule,
//! the catch-up's bookkeeping, `SYNC` paging) is in `shared.rs`, `state.rs` and `sync.rs`; the
//! requests are declared once for both in `api/`.
//!
//! [`Client`]: crate::Client

mod connection;
#[cfg(test)]
mod tests;

use std::ops::Deref;
use std::sync::{Arc, Weak};
use std::time::Duration;

use courier_protocol::{AuthOk, Frame};
use tokio::sync::{mpsc, Notify};

use self::connection::{Connection, Sink};
use crate::api::account as auth;
use crate::event::Event;
use crate::shared::{session_accessors, AuthStep, Shared};
use crate::state::{Reconnect, ResumeFailure, MAX_REDIRECTS};
use crate::sync::{expect_batch, SyncResult, SyncWalk};
use crate::{ClientConfig, Result};

/// A Courier client for tokio. It behaves as the blocking [`Client`](crate::Client) does,
/// method for method, with `async` calls: requests may run concurrently from several tasks
/// (replies are matched by request id), pushes come out of [`recv_event`](Self::recv_event),
/// and with [`ClientConfig::auto_reconnect`] a dropped connection is re-established with
/// jittered exponential backoff: `HELLO`, `RESUME` with the saved token, then `SYNC` from the
/// saved watermark, each missed message delivered once.
///
/// It must be created inside a tokio runtime with the time and I/O drivers enabled, and used
/// from that runtime. Consume the event stream, or it grows without bound.
///
/// ```no_run
/// use courier_client::{AsyncClient, ClientConfig, Event};
///
/// # async fn run() -> Result<(), courier_client::Error> {
/// let client = AsyncClient::connect("127.0.0.1:7878", ClientConfig::reconnecting()).await?;
/// client.login("alice", "correct horse").await?;
/// let bob = client.lookup_user("bob").await?;
/// let thread = client.open_direct(bob.id).await?;
/// client.send_text(thread.id, "hello").await?;
/// while let Some(event) = client.recv_event().await {
///     if let Event::Message(m) = event {
///         println!("{}: {}", m.sender, String::from_utf8_lossy(&m.body));
///     }
/// }
/// # Ok(()) }
/// ```
pub struct AsyncClient {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Shared<Connection, mpsc::UnboundedSender<Event>, Notify>,
    events_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
}

impl Deref for Inner {
    type Target = Shared<Connection, mpsc::UnboundedSender<Event>, Notify>;

    fn deref(&self) -> &Self::Target {
        &self.shared
    }
}

struct InnerSink(Weak<Inner>);

impl AsyncClient {
    /// Connects to `addr` (`host:port`) and performs the `HELLO`/`WELCOME` handshake. Then log
    /// in with [`register`](Self::register), [`login`](Self::login) or [`resume`](Self::resume).
    pub async fn connect(addr: impl std::fmt::Display, config: ClientConfig) -> Result<Self> {
        let addr = addr.to_string();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            shared: Shared::new(config, addr.clone(), events_tx, Notify::new()),
            events_rx: tokio::sync::Mutex::new(events_rx),
        });
        let conn = Connection::open(&addr, &inner.config, inner.sink()).await?;
        inner.learn_key(&addr, &conn);
        inner.install(conn);
        Ok(AsyncClient { inner })
    }

    /// Creates an account and logs this device in.
    pub async fn register(&self, handle: &str, password: &str) -> Result<AuthOk> {
        self.authenticate(auth::register(&self.inner.config, handle, password))
            .await
    }

    /// Logs in with a password.
    pub async fn login(&self, handle: &str, password: &str) -> Result<AuthOk> {
        self.authenticate(auth::login(&self.inner.config, handle, password))
            .await
    }

    /// Logs in with the token of an earlier [`AuthOk`]; no password needed.
    pub async fn resume(&self, token: &[u8]) -> Result<AuthOk> {
        self.authenticate(auth::resume(token)).await
    }

    async fn authenticate(&self, frame: Frame) -> Result<AuthOk> {
        let inner = &self.inner;
        for _ in 0..=MAX_REDIRECTS {
            let conn = inner.current()?;
            inner.before_auth();
            let result = conn
                .request(frame.clone(), inner.config.request_timeout)
                .await;
            match inner.auth_answer(&conn, frame.name(), result)? {
                AuthStep::Done(auth) => {
                    self.after_auth(&conn).await?;
                    return Ok(auth);
                }
                AuthStep::Redirect(addr) => {
                    let next =
                        Connection::open(&addr, &inner.config_for(&addr), inner.sink()).await?;
                    inner.learn_key(&addr, &next);
                    inner.moved(addr, next);
                }
            }
        }
        Err(inner.too_many_redirects())
    }

    /// A reconnecting client needs a watermark so that a later reconnect can sync the gap.
    async fn after_auth(&self, conn: &Connection) -> Result<()> {
        if !self.inner.config.auto_reconnect {
            return Ok(());
        }
        match self.inner.catch_up(conn).await {
            // The reconnect that follows a dropped connection will sync instead.
            Err(e) if e.is_connection_error() => Ok(()),
            other => other,
        }
    }

    /// Sends a request and waits for its reply (any frame; `ERROR_REPLY` is an error). The
    /// typed methods are built on this.
    pub async fn call(&self, frame: impl Into<Frame>) -> Result<Frame> {
        let conn = self.inner.current()?;
        conn.request(frame.into(), self.inner.config.request_timeout)
            .await
    }

    /// Sends a frame that has no reply, such as `TYPING`.
    pub async fn send_frame(&self, frame: impl Into<Frame>) -> Result<()> {
        self.inner.current()?.send_only(frame.into()).await
    }

    /// The next push or connection event; `None` once [`Event::SessionEnded`] has been taken.
    /// Events go to one receiver: calls from several tasks share the stream.
    pub async fn recv_event(&self) -> Option<Event> {
        self.inner.events_rx.lock().await.recv().await
    }

    /// The next event, waiting at most `timeout`; `None` on timeout or after the session ended.
    pub async fn recv_event_timeout(&self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.recv_event())
            .await
            .ok()
            .flatten()
    }

    /// The next event if one is waiting (and no other task is waiting for one).
    pub fn try_recv_event(&self) -> Option<Event> {
        self.inner.events_rx.try_lock().ok()?.try_recv().ok()
    }

    /// Everything that changed since the saved watermark (else the login's, else the
    /// beginning), over all pages. Saves the new watermark and counts the messages as seen, so
    /// the event stream will not repeat them.
    pub async fn sync(&self) -> Result<SyncResult> {
        let since = self.watermark().unwrap_or(0);
        self.sync_since(since).await
    }

    /// Like [`sync`](Self::sync) from an explicit watermark.
    pub async fn sync_since(&self, since: u64) -> Result<SyncResult> {
        let conn = self.inner.current()?;
        let result = self.inner.sync_pages(&conn, since).await?;
        self.inner
            .state
            .lock()
            .record_sync(&result, false, &mut Vec::new());
        Ok(result)
    }

    /// Waits until a connection is up (after a reconnect); false on timeout or session end.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let changed = self.inner.conn_changed.notified();
                tokio::pin!(changed);
                // Registered before looking, so a change in between is not missed.
                changed.as_mut().enable();
                if self.inner.conn.lock().is_some() {
                    return true;
                }
                if self.inner.is_ended() {
                    return false;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| self.is_connected())
    }
}

session_accessors!(AsyncClient);

impl Inner {
    fn sink(self: &Arc<Self>) -> Arc<dyn Sink> {
        Arc::new(InnerSink(Arc::downgrade(self)))
    }

    /// Asks for `SYNC` pages on `conn` until the server says there are no more.
    async fn sync_pages(&self, conn: &Connection, since: u64) -> Result<SyncResult> {
        let mut walk = SyncWalk::new(since, self.watermarks_for(since), self.config.sync_page);
        loop {
            let reply = conn
                .request(walk.request(), self.config.request_timeout)
                .await?;
            if let Some(result) = walk.feed(expect_batch(reply)?) {
                return Ok(result);
            }
        }
    }

    /// Syncs from the saved watermark on `conn`: records everything in the dedupe set and
    /// emits what is new, unless this is the first sync (no watermark), which only sets one.
    /// Syncs again from the watermark it saved while held pushes overflowed meanwhile (see
    /// [`ClientConfig::max_held_pushes`]), at most `MAX_CATCH_UP_ROUNDS` times.
    async fn catch_up(&self, conn: &Connection) -> Result<()> {
        let mut since = self.begin_catch_up();
        loop {
            let result = self.sync_pages(conn, since.unwrap_or(0)).await;
            match self.end_catch_up(since, &result) {
                Some(again) => since = Some(again),
                None => return result.map(drop),
            }
        }
    }

    async fn resume_on(self: &Arc<Self>, addr: &str) -> Result<(), ResumeFailure> {
        let token = self.saved_token()?;
        let conn = Connection::open(addr, &self.config_for(addr), self.sink())
            .await
            .map_err(|_| ResumeFailure::Retry)?;
        self.learn_key(addr, &conn);
        self.begin_resync();
        let resumed = conn
            .request(auth::resume(&token), self.config.request_timeout)
            .await;
        self.resume_answer(&conn, resumed)?;
        let caught_up = self.catch_up(&conn).await;
        self.resume_done(conn, addr, caught_up)
    }
}

impl Sink for InnerSink {
    fn on_push(&self, frame: Frame) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        inner.push(frame);
    }

    fn on_redirect(&self, node: String, addr: String) {
        if let Some(inner) = self.0.upgrade() {
            inner.emit(Event::Redirected { node, addr });
        }
    }

    fn on_close(&self, conn: &Arc<Connection>) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        if let Some(redirect) = inner.closed(conn) {
            tokio::spawn(reconnect_loop(Arc::downgrade(&inner), redirect));
        }
    }
}

/// Reconnects until it works, the session ends or the client is dropped; holds no strong
/// reference while sleeping.
async fn reconnect_loop(weak: Weak<Inner>, redirect: Option<String>) {
    let Some(inner) = weak.upgrade() else { return };
    let mut plan = Reconnect::new(&inner.config, redirect);
    drop(inner);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.is_ended() {
            return;
        }
        let addr = plan.target(&inner.state.lock());
        let result = inner.resume_on(&addr).await;
        let Some(delay) = inner.after_attempt(&mut plan, addr, result) else {
            return;
        };
        drop(inner);
        tokio::time::sleep(delay).await;
    }
}
