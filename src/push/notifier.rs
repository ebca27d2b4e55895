//! The `push-notifier` thread: delivers the outbox to the push gateway.
//!
//! One thread, one request at a time (ureq, blocking, with a global timeout per request and
//! keep-alive to the gateway): it may block, shards never wait for it. Its queue is the
//! `push_outbox` column family itself, at most one row per user, so nothing in memory grows
//! with the backlog and a restart loses nothing. Each pass reads one bounded page of rows
//! (resuming where the last stopped), POSTs the due ones, and merges each outcome back into
//! the row (see [`OutboxOp`]): a row overwritten by a newer message while its request was in
//! flight is not settled by the answer to the older one, and goes out again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use courier_protocol::MessageKind;
use crossbeam_channel::{RecvTimeoutError, Sender};
use serde_json::{json, Value};

use super::{Error, Pushers};
use crate::clock::wall_us;
use crate::metrics::PushMetrics;
use crate::store::{OutboxOp, OutboxRow, Pusher, Store};

/// The Matrix push gateway endpoint, appended to `--push-gateway` unless it already ends so.
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// Most bytes of a gateway answer read (its `rejected` list); the rest is ignored.
const MAX_ANSWER: u64 = 64 * 1024;

/// How the notifier delivers and retries.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// The full URL POSTed to (`http://host:port/_matrix/push/v1/notify`).
    pub url: String,
    /// Per request: connect, send and answer together.
    pub timeout: Duration,
    /// Outbox rows looked at per pass (due or not).
    pub page: usize,
    /// Sleep after a pass over the whole outbox: how late a new notification may leave.
    pub idle: Duration,
    /// First retry after this, doubling per failed attempt up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A notification still undelivered this long after it was first queued is dropped.
    pub give_up: Duration,
}

impl NotifierConfig {
    /// Defaults for the gateway at `gateway` (a base URL, or the full notify URL). Only plain
    /// `http://` is spoken: put a TLS-terminating proxy in front of a remote gateway.
    pub fn new(gateway: &str) -> Result<Self, Error> {
        let bad = |why| Error::GatewayUrl {
            url: gateway.to_owned(),
            why,
        };
        let rest = gateway
            .strip_prefix("http://")
            .ok_or_else(|| bad("it must start with http:// (no TLS: run the gateway, e.g. Sygnal, next to the server, or behind a local TLS proxy)"))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(bad("it names no host, e.g. http://127.0.0.1:5000"));
        }
        let base = gateway.trim_end_matches('/');
        let url = if base.ends_with(NOTIFY_PATH) {
            base.to_owned()
        } else {
            format!("{base}{NOTIFY_PATH}")
        };
        Ok(Self {
            url,
            timeout: Duration::from_secs(10),
            page: 256,
            idle: Duration::from_millis(100),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            give_up: Duration::from_secs(24 * 3600),
        })
    }

    /// The wait before attempt `attempt + 1` after `attempt` failures (1 and up).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doubled = self.backoff_base.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        doubled.min(self.backoff_max)
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: delivered; the gateway rejected these push keys.
    Delivered { rejected: Vec<String> },
    /// Network error, timeout, 5xx or 429: try again later.
    Failed { reason: &'static str },
    /// Another 4xx (or a status no gateway should send): the request itself is wrong and
    /// will not get better by retrying.
    Refused { status: u16 },
}

/// The outbox walk and the HTTP client; [`NotifierThread`] runs it.
pub struct Notifier {
    store: Store,
    pushers: Arc<Pushers>,
    config: NotifierConfig,
    agent: ureq::Agent,
    metrics: Arc<PushMetrics>,
    /// Where the next pass starts (`None`: at the first row).
    cursor: Option<u64>,
    page: Vec<(u64, OutboxRow)>,
    /// 4xx statuses already logged (each once per process).
    logged: Vec<u16>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub attempted: usize,
    /// The pass reached the end of the outbox (the next starts over).
    pub wrapped: bool,
}

impl Notifier {
    pub fn new(
        store: Store,
        pushers: Arc<Pushers>,
        config: NotifierConfig,
        metrics: Arc<PushMetrics>,
    ) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .max_idle_connections(4)
            .build()
            .into();
        Self {
            store,
            pushers,
            config,
            agent,
            metrics,
            cursor: None,
            page: Vec::new(),
            logged: Vec::new(),
        }
    }

    /// One page of the outbox: every due row in it is attempted once.
    pub fn pass(&mut self) -> Result<Pass, Error> {
        let mut page = std::mem::take(&mut self.page);
        page.clear();
        let next = self
            .store
            .outbox_page(self.cursor, self.config.page, &mut page);
        let result = next.map_err(Error::from).and_then(|next| {
            self.cursor = next;
            let mut pass = Pass {
                wrapped: next.is_none(),
                ..Pass::default()
            };
            for (user, row) in &page {
                if row.next_attempt <= wall_us() {
                    self.deliver(*user, row)?;
                    pass.attempted += 1;
                }
            }
            Ok(pass)
        });
        self.page = page;
        if matches!(result, Ok(Pass { wrapped: true, .. })) {
            self.metrics
                .outbox_rows
                .store(self.store.outbox_estimate(), Ordering::Relaxed);
        }
        result
    }

    /// Attempts the notification `row` of `user` and records the outcome in the outbox.
    fn deliver(&mut self, user: u64, row: &OutboxRow) -> Result<(), Error> {
        let pushers = self.pushers.of(user)?;
        if pushers.is_empty() {
            // Every registration went (logout, rejected keys) after the row was staged.
            return self.settle(user, row);
        }
        let body = notification(row, &pushers).to_string();
        let outcome = self.post(&body);
        let now = wall_us();
        match outcome {
            Outcome::Delivered { rejected } => {
                bump(&self.metrics.sent);
                if !rejected.is_empty() {
                    let removed = self.pushers.reject(user, &rejected)?;
                    self.metrics
                        .rejected_keys
                        .fetch_add(removed as u64, Ordering::Relaxed);
                }
                self.settle(user, row)
            }
            Outcome::Refused { status } => {
                bump(&self.metrics.refused);
                if !self.logged.contains(&status) {
                    self.logged.push(status);
                    tracing::warn!(
                        status,
                        url = %self.config.url,
                        "the push gateway refused a notification; dropped (logged once per status)"
                    );
                }
                self.settle(user, row)
            }
            Outcome::Failed { reason } => {
                bump(match reason {
                    "network" => &self.metrics.failed_network,
                    _ => &self.metrics.failed_server,
                });
                let age = now.saturating_sub(row.first_queued);
                if age >= self.config.give_up.as_micros() as u64 {
                    bump(&self.metrics.gave_up);
                    return self.settle(user, row);
                }
                let attempt = row.attempt.saturating_add(1);
                let wait = self.config.backoff(attempt).as_micros() as u64;
                bump(&self.metrics.retries);
                self.apply(
                    user,
                    &OutboxOp::Retry {
                        attempt,
                        next_attempt: now.saturating_add(wait),
                    },
                )
            }
        }
    }

    /// One POST of `body` to the gateway.
    pub fn post(&self, body: &str) -> Outcome {
        let answer = self
            .agent
            .post(&self.config.url)
            .header("Content-Type", "application/json")
            .send(body.as_bytes());
        let mut answer = match answer {
            Ok(a) => a,
            Err(_) => return Outcome::Failed { reason: "network" },
        };
        let status = answer.status().as_u16();
        match status {
            200..=299 => {
                let text = answer
                    .body_mut()
                    .with_config()
                    .limit(MAX_ANSWER)
                    .read_to_string()
                    .unwrap_or_default();
                Outcome::Delivered {
                    rejected: rejected_keys(&text),
                }
            }
            429 | 500..=599 => Outcome::Failed {
                reason: "server_error",
            },
            _ => Outcome::Refused { status },
        }
    }

    /// The notification of version `row.message` is done with: the row goes, unless a newer
    /// message overwrote it meanwhile (then that one goes out on a later pass).
    fn settle(&self, user: u64, row: &OutboxRow) -> Result<(), Error> {
        self.apply(
            user,
            &OutboxOp::Settled {
                message: row.message,
            },
        )
    }

    /// Writes an outcome through the WAL without waiting for a sync: losing one in a power
    /// cut only sends a notification again (or retries sooner), and a sync per notification
    /// would bound the notifier by the disk (about 280/s here with it, see BENCHMARKS.md).
    fn apply(&self, user: u64, op: &OutboxOp) -> Result<(), Error> {
        let mut batch = self.store.batch();
        batch.outbox(user, op);
        self.store.commit_relaxed(batch)?;
        Ok(())
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The `rejected` push keys of a gateway's answer (none if it is not the expected JSON).
fn rejected_keys(answer: &str) -> Vec<String> {
    let Ok(Value::Object(answer)) = serde_json::from_str::<Value>(answer) else {
        return Vec::new();
    };
    match answer.get("rejected") {
        Some(Value::Array(keys)) => keys
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The Matrix push gateway request body for `row`, addressed to every device in `pushers`.
/// Ids are decimal strings: `event_id` the message, `room_id` the thread, `sender` the user.
/// No message body: bodies may be end-to-end encrypted, and the device syncs anyway.
pub fn notification(row: &OutboxRow, pushers: &[Pusher]) -> Value {
    let devices: Vec<Value> = pushers
        .iter()
        .map(|p| {
            let mut device = json!({
                "app_id": p.app_id,
                "pushkey": p.pushkey,
                "pushkey_ts": p.registered_at / 1_000_000,
            });
            if let Ok(Value::Object(data)) = serde_json::from_str::<Value>(&p.data) {
                device["data"] = Value::Object(data);
            }
            device
        })
        .collect();
    json!({
        "notification": {
            "event_id": row.message.to_string(),
            "room_id": row.thread.to_string(),
            "type": "m.room.message",
            "sender": row.sender.to_string(),
            "prio": "high",
            "content": { "msgtype": msgtype(row.kind) },
            "counts": { "unread": row.unread },
            "devices": devices,
        }
    })
}

/// The Matrix `msgtype` closest to a message kind (the content carries nothing else).
fn msgtype(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Media => "m.file",
        _ => "m.text",
    }
}

/// The notifier's thread, to be stopped at shutdown.
pub struct NotifierThread {
    stop: Sender<()>,
    handle: JoinHandle<()>,
}

impl NotifierThread {
    /// Runs `notifier` until [`shutdown`](Self::shutdown): passes back to back while there is
    /// work, a sleep of `idle` after each pass over the whole outbox. A failing pass (the
    /// store) is logged and retried after `idle`.
    pub fn spawn(mut notifier: Notifier) -> Result<NotifierThread, Error> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let idle = notifier.config.idle;
        let handle = std::thread::Builder::new()
            .name("push-notifier".into())
            .spawn(move || loop {
                let rest = match notifier.pass() {
                    Ok(Pass { wrapped: false, .. }) => Duration::ZERO,
                    Ok(Pass { wrapped: true, .. }) => idle,
                    Err(e) => {
                        tracing::error!(error = %e, "push notifier pass failed; retrying");
                        idle
                    }
                };
                match stopped.recv_timeout(rest) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(Error::Spawn)?;
        Ok(NotifierThread { stop, handle })
    }

    /// Stops the thread after its current request (at most the request timeout).
    pub fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.handle.join();
    }
}
