//! The read workers: requests that only read committed state, off the event loops.
//!
//! HISTORY, SYNC, LIST_THREADS, MEDIA_GET and READERS can read a lot (a page of 60 KiB of
//! messages, every thread of a user, 60 KiB of media). Run on a shard they would stall every
//! other connection of that shard for as long. Shards hand them to this pool through a bounded
//! channel ([`Engine::is_read`]); a worker answers from the store with [`Engine::read`], encodes
//! the answer and sends the bytes back to the connection's shard as [`ShardMsg::ReadDone`].
//!
//! The bound covers a read's whole life: queued, running, and its answer on the way back
//! through a mailbox, until the connection's shard has taken the answer
//! ([`ReadQueue::delivered`]). So at most `bound` answers (each at most one reply frame) exist
//! at once, however slowly shards drain their mailboxes. At the bound a new read is refused at
//! once with `RATE_LIMITED` ("retry in a moment"): a shard never waits for the pool. Workers
//! may block on a full mailbox (they are not shards).
//!
//! Ordering: the pool reads only committed state, and every answer to a write leaves its shard
//! only after the write is committed, so a read sent after the answer to a write sees it (see
//! [`Engine::read`]). Answers to reads may overtake answers to earlier requests of the same
//! connection; PROTOCOL.md section 4 says clients correlate by request id.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use courier_protocol::{encode, ErrorCode, ErrorReply, Frame};
use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::mailbox::{Mailbox, ShardMsg};
use super::Faults;
use crate::caller::Caller;
use crate::chat::{Engine, Shared};
use crate::cluster::reads::{ClusterReads, PartJob};
use crate::metrics::{Metrics, ReadMetrics};

/// Tests only: when this environment variable names a path, every read job waits until a file
/// exists there before it runs, so a test can hold a read "in progress" for as long as it needs
/// (and prove that the shard keeps serving meanwhile).
pub const TEST_GATE_ENV: &str = "COURIER_TEST_READ_GATE";

/// How often a gated job looks for its gate file.
const GATE_POLL: Duration = Duration::from_millis(2);

/// One read request and where its answer goes.
pub struct ReadRequest {
    pub caller: Caller,
    pub request_id: u32,
    pub frame: Frame,
}

enum Job {
    Read(ReadRequest),
    /// Sent once per worker at shutdown, after the jobs already queued.
    Stop,
}

/// Why a read could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is at its bound: answer `RATE_LIMITED`, the client retries later.
    Full,
    /// The pool has stopped (shutdown).
    Stopped,
}

/// The sending side, held by every shard.
#[derive(Clone)]
pub struct ReadQueue {
    tx: Sender<Job>,
    metrics: Arc<Metrics>,
    /// Reads accepted whose answer a shard has not taken yet.
    in_flight: Arc<AtomicUsize>,
    bound: usize,
}

impl ReadQueue {
    /// Queues `req` without waiting, unless `bound` reads are in flight.
    pub fn submit(&self, req: ReadRequest) -> Result<(), Refused> {
        let stats = self.stats();
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.bound {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        // Counted before the send so that a worker's decrement can never come first.
        stats.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Job::Read(req)) {
            Ok(()) => Ok(()),
            Err(e) => {
                stats.queued.fetch_sub(1, Ordering::Relaxed);
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                match e {
                    TrySendError::Full(_) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        Err(Refused::Full)
                    }
                    TrySendError::Disconnected(_) => Err(Refused::Stopped),
                }
            }
        }
    }

    /// A shard took the answer of one read ([`ShardMsg::ReadDone`]) off its mailbox.
    pub fn delivered(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn stats(&self) -> &ReadMetrics {
        &self.metrics.reads
    }
}

/// The workers, to be stopped and joined at shutdown.
pub struct ReadPool {
    queue: ReadQueue,
    workers: Vec<JoinHandle<()>>,
    /// In a cluster: the workers that answer other nodes' `PEER_READ`s, and their queue.
    parts: Option<PartWorkers>,
}

/// The part workers' queue (`None` stops one) and their threads.
type PartWorkers = (Sender<Option<PartJob>>, Vec<JoinHandle<()>>);

impl ReadPool {
    /// Starts `threads` workers; at most `bound` reads are in flight at once. In a cluster
    /// (`cluster`), LIST_THREADS and SYNC gather the other nodes' parts, and `threads` more
    /// *part workers* answer the other nodes' parts from a queue of `bound` (they read only
    /// this node's store and never wait on another node, so nodes never wait on each other).
    pub fn spawn(
        shared: Arc<Shared>,
        mailboxes: Arc<[Mailbox]>,
        metrics: Arc<Metrics>,
        faults: &Faults,
        threads: usize,
        bound: usize,
        cluster: Option<Arc<ClusterReads>>,
    ) -> std::io::Result<ReadPool> {
        let (tx, rx) = crossbeam_channel::bounded(bound.max(1));
        let gate = std::env::var_os(TEST_GATE_ENV).map(PathBuf::from);
        let workers = (0..threads.max(1))
            .map(|i| {
                let worker = Worker {
                    shared: shared.clone(),
                    mailboxes: mailboxes.clone(),
                    rx: rx.clone(),
                    metrics: metrics.clone(),
                    gate: gate.clone(),
                    panic_on_history_limit: faults.panic_on_history_limit,
                    cluster: cluster.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("read-{i}"))
                    .spawn(move || worker.run())
            })
            .collect::<std::io::Result<_>>()?;
        let parts = match cluster {
            Some(cluster) => {
                let (tx, rx) = crossbeam_channel::bounded::<Option<PartJob>>(bound.max(1));
                let handles = (0..threads.max(1))
                    .map(|i| {
                        let (rx, cluster, shared) = (rx.clone(), cluster.clone(), shared.clone());
                        std::thread::Builder::new()
                            .name(format!("read-part-{i}"))
                            .spawn(move || run_parts(&cluster, &shared, &rx))
                    })
                    .collect::<std::io::Result<_>>()?;
                cluster.set_parts(tx.clone());
                Some((tx, handles))
            }
            None => None,
        };
        Ok(ReadPool {
            queue: ReadQueue {
                tx,
                metrics,
                in_flight: Arc::new(AtomicUsize::new(0)),
                bound: bound.max(1),
            },
            workers,
            parts,
        })
    }

    pub fn queue(&self) -> ReadQueue {
        self.queue.clone()
    }

    /// Lets the workers finish the jobs already queued, then stops and joins them. Call after
    /// the shards have stopped (nothing queues any more; answers to closed shards are dropped).
    pub fn shutdown(self) {
        for _ in &self.workers {
            if self.queue.tx.send(Job::Stop).is_err() {
                break;
            }
        }
        for w in self.workers {
            if w.join().is_err() {
                tracing::error!("a read worker panicked");
            }
        }
        if let Some((tx, handles)) = self.parts {
            // One stop (`None`) per part worker, behind the parts already queued.
            for _ in &handles {
                if tx.send(None).is_err() {
                    break;
                }
            }
            for h in handles {
                let _ = h.join();
            }
        }
    }
}

/// A part worker: answers other nodes' `PEER_READ`s until it is sent `None`.
fn run_parts(cluster: &ClusterReads, shared: &Shared, rx: &Receiver<Option<PartJob>>) {
    for job in rx {
        let Some(job) = job else { return };
        // Like a read, a part holds no state: a panic costs only its answer (the asking node
        // answers UNAVAILABLE at its deadline), and the worker goes on.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cluster.run_part(shared, job)
        }));
        if let Err(panic) = ran {
            tracing::error!(
                "a read part for another node panicked: {}",
                super::panic_message(&*panic)
            );
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    mailboxes: Arc<[Mailbox]>,
    rx: Receiver<Job>,
    metrics: Arc<Metrics>,
    gate: Option<PathBuf>,
    /// Fault injection: a HISTORY with this limit panics (tests only).
    panic_on_history_limit: Option<u16>,
    /// In a cluster: LIST_THREADS and SYNC gather every node's part.
    cluster: Option<Arc<ClusterReads>>,
}

impl Worker {
    fn inject_panic(&self, frame: &Frame) {
        if let (Some(limit), Frame::History(h)) = (self.panic_on_history_limit, frame) {
            if h.limit == limit {
                panic!("fault injection: HISTORY with limit {limit}");
            }
        }
    }

    fn run(self) {
        let stats = &self.metrics.reads;
        let mut enc = BytesMut::with_capacity(64 * 1024);
        for job in &self.rx {
            let req = match job {
                Job::Read(req) => req,
                Job::Stop => return,
            };
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            if let Some(gate) = &self.gate {
                while !gate.exists() {
                    std::thread::sleep(GATE_POLL);
                }
            }
            let ReadRequest {
                caller,
                request_id,
                frame,
            } = req;
            // A read holds no state, so a panic in one costs only its answer: answered
            // INTERNAL, logged, and the worker goes on. Dying instead would shrink the pool
            // until every read waited forever behind a healthy-looking server.
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.inject_panic(&frame);
                match &self.cluster {
                    Some(cluster) => cluster.read(&self.shared, &caller, frame),
                    None => Engine::read(&self.shared, &caller, frame),
                }
            }))
            .unwrap_or_else(|panic| {
                tracing::error!(
                    user = caller.user,
                    "a read panicked: {}; answered INTERNAL",
                    super::panic_message(&*panic)
                );
                Frame::ErrorReply(ErrorReply {
                    code: ErrorCode::Internal as u16,
                    message: "the server failed to answer this request; try again".into(),
                })
            });
            encode(request_id, &answer, &mut enc);
            let bytes = enc.split().freeze();
            stats.done.fetch_add(1, Ordering::Relaxed);
            let to = caller.conn;
            // A read another node forwarded names a shard of that node: any shard here sends
            // its answer back over the links.
            if let Some(mailbox) = self.mailboxes.get(to.shard as usize % self.mailboxes.len()) {
                mailbox.send_blocking(ShardMsg::ReadDone { to, bytes });
            }
        }
    }
}
