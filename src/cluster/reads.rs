//! Cross-node reads: LIST_THREADS and SYNC of a user whose threads several nodes own.
//!
//! A thread's record, members, messages and each member's membership row live on the thread's
//! owner node, so a user's threads are spread over the nodes. The user's home node (where the
//! user is connected) answers their LIST_THREADS and SYNC on its read pool: the read worker
//! runs the local part, sends a `PEER_READ` to every other node that may hold a part, and
//! waits for the `PEER_READ_REPLY`s on a channel, all within one deadline
//! ([`READ_DEADLINE`]). Read workers may block; shards never wait on this.
//!
//! ```text
//!  home: read worker ── PEER_READ{id} ──► node B link thread ──► B's part workers
//!        waits ≤ 1.5 s ◄─ pending[id] ◄── home link thread ◄── PEER_READ_REPLY{id}
//! ```
//!
//! The receiving node never runs a part on its link thread: [`ClusterReads::accept`] puts it on
//! a bounded queue of *part workers* (see `shard::read_pool`), which only read their own store
//! and never wait on another node, so two nodes' workers can never wait on each other.
//! A reply whose id is not pending (it came after its deadline) is dropped and counted.
//! A node that is down, or does not answer in time, makes the whole read `UNAVAILABLE`,
//! naming the node: a partial answer is never presented as complete.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use courier_protocol::peer::{PeerRead, PeerReadReply};
use courier_protocol::wire::Wire;
use courier_protocol::{
    encode, BatchVector, Decoder, ErrorCode, ErrorReply, Frame, ListThreads, MediaGet, Sync, Tail,
    ThreadList, ThreadSummary, MAX_FRAME_LEN,
};
use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::links::{LinkError, Links, NodeIndex, Payload};
use crate::caller::{Caller, UsersChecked};
use crate::chat::{media_read, Engine, MediaRead, Shared};
use crate::metrics::ClusterReadMetrics;

/// How long a home node waits for the other nodes' parts of one read. Below the 2 s that
/// PROTOCOL.md promises for an `UNAVAILABLE`, leaving room for the read's queue and answer.
pub const READ_DEADLINE: Duration = Duration::from_millis(1500);

/// How often a read that waits for a node's first link looks again.
const LINK_POLL: Duration = Duration::from_millis(10);

/// Reads waiting for another node's part at once, over all read workers. Each worker waits
/// for at most one part per node, so this is reached only with very many read threads.
pub const MAX_PENDING: usize = 4096;

/// A part another node asked this node for, on its way to a part worker.
pub struct PartJob {
    pub from: NodeIndex,
    pub read: PeerRead,
}

/// Why another node's part could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    /// The node is down, not linked yet, or did not answer within the deadline.
    #[error("node {node} is unavailable; retry in a moment")]
    Unavailable { node: String },
    /// Too many reads are waiting for other nodes, or the link's queue is full.
    #[error("too many reads are waiting for other nodes; retry in a moment")]
    Busy,
    /// The node answered with something that is not a frame of this protocol.
    #[error(
        "node {node} answered a read with an undecodable frame: run the same release on every node"
    )]
    Garbled { node: String },
}

impl PartError {
    fn reply(&self, what: &str, metrics: &ClusterReadMetrics) -> Frame {
        if let PartError::Unavailable { .. } = self {
            metrics.unavailable.fetch_add(1, Ordering::Relaxed);
        }
        let (code, message) = match self {
            PartError::Unavailable { node } => (
                ErrorCode::Unavailable,
                format!(
                    "{what} needs node {node}, which owns some of your threads and is unavailable now; nothing partial was returned: retry in a moment"
                ),
            ),
            PartError::Busy => (ErrorCode::RateLimited, format!("{what}: {self}")),
            PartError::Garbled { .. } => (ErrorCode::Internal, format!("{what}: {self}")),
        };
        ErrorReply {
            code: code as u16,
            message,
        }
        .into()
    }
}

/// What the read side of the cluster shares: the links, the pending-reads table, and the
/// queue to this node's part workers.
pub struct ClusterReads {
    local: NodeIndex,
    /// Node ids by index (the sorted member list), for error messages.
    names: Vec<String>,
    /// Set once the link thread runs (the links need their `Inbound`, which holds us).
    links: OnceLock<Links>,
    /// Set once the part workers run; `None` on it stops a part worker.
    parts: OnceLock<Sender<Option<PartJob>>>,
    /// Read id → where its answer goes. At most [`MAX_PENDING`] entries.
    pending: Mutex<HashMap<u64, Sender<Bytes>>>,
    next_id: AtomicU64,
    metrics: Arc<ClusterReadMetrics>,
    /// By node index: whether this node's links to it have been up since it started.
    linked: Box<[AtomicBool]>,
}

impl ClusterReads {
    pub fn new(
        local: NodeIndex,
        names: Vec<String>,
        metrics: Arc<ClusterReadMetrics>,
    ) -> ClusterReads {
        ClusterReads {
            metrics,
            linked: names.iter().map(|_| AtomicBool::new(false)).collect(),
            local,
            names,
            links: OnceLock::new(),
            parts: OnceLock::new(),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn set_links(&self, links: Links) {
        let _ = self.links.set(links);
    }

    /// Where [`accept`](Self::accept) queues parts; the part workers hold the receiver.
    pub fn set_parts(&self, parts: Sender<Option<PartJob>>) {
        let _ = self.parts.set(parts);
    }

    /// The number of nodes in the cluster.
    pub fn nodes(&self) -> usize {
        self.names.len()
    }

    pub fn local(&self) -> NodeIndex {
        self.local
    }

    fn name(&self, node: NodeIndex) -> String {
        self.names
            .get(node.0 as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{}", node.0))
    }

    /// Answers a LIST_THREADS or SYNC of `caller` (homed here) over every node; any other read
    /// is this node's alone. Runs on a read worker and may wait up to [`READ_DEADLINE`].
    pub fn read(&self, shared: &Shared, caller: &Caller, frame: Frame) -> Frame {
        match frame {
            Frame::ListThreads(f) => self.list_threads(shared, caller, f),
            Frame::Sync(f) => self.sync(shared, caller, f),
            Frame::MediaGet(f) => self.media_get(shared, caller, f),
            other => Engine::read(shared, caller, other),
        }
    }

    /// MEDIA_GET, on the node that owns the thread it names (forwarded here by the caller's
    /// home) or on the caller's home: access is checked here, and bytes held by another node
    /// (the uploader's home) are asked of it as a part (`PEER_READ` of the MEDIA_GET, which
    /// that node serves without checking again), within the same deadline as every part.
    fn media_get(&self, shared: &Shared, caller: &Caller, f: MediaGet) -> Frame {
        let answer = match media_read(shared, caller, f.clone()) {
            MediaRead::Answer(answer) => answer,
            MediaRead::Elsewhere(holder) => {
                let Some(node) = self.names.iter().position(|n| *n == holder) else {
                    return ErrorReply {
                        code: ErrorCode::Internal as u16,
                        message: format!(
                            "this media's bytes are on node {holder}, which is not in this cluster's member list"
                        ),
                    }
                    .into();
                };
                let node = NodeIndex(node as u16);
                let frame = Frame::MediaGet(f);
                let got = self.scatter(caller, &frame, &[node]).wait().pop();
                return match got.unwrap_or(Err(PartError::Unavailable { node: holder })) {
                    Ok(frame) => frame,
                    Err(PartError::Unavailable { node }) => {
                        self.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
                        ErrorReply {
                            code: ErrorCode::Unavailable as u16,
                            message: format!(
                                "this media's bytes are on node {node}, which is unavailable now; retry in a moment"
                            ),
                        }
                        .into()
                    }
                    Err(e) => e.reply("MEDIA_GET", &self.metrics),
                };
            }
        };
        Engine::outcome_frame(answer)
    }

    // ---- Home side ----

    /// Sends `frame` to every node in `nodes` as a part of `caller`'s read; the answers come
    /// out of [`Gather::wait`].
    fn scatter(&self, caller: &Caller, frame: &Frame, nodes: &[NodeIndex]) -> Gather<'_> {
        let bytes = encoded(frame);
        let deadline = Instant::now() + READ_DEADLINE;
        let asks = nodes
            .iter()
            .map(|&node| (node, self.ask(node, caller, bytes.clone(), deadline)))
            .collect();
        Gather {
            reads: self,
            deadline,
            asks,
        }
    }

    /// Registers a pending read and sends it to `node`. A node this one has not been linked
    /// to yet since it started (the links are forming) is waited for until `deadline`; a node
    /// that was linked and is down is `Unavailable` at once, so an outage does not hold every
    /// read worker for the whole deadline.
    fn ask(
        &self,
        node: NodeIndex,
        caller: &Caller,
        frame: Bytes,
        deadline: Instant,
    ) -> Result<Asked, PartError> {
        let Some(links) = self.links.get() else {
            return Err(PartError::Unavailable {
                node: self.name(node),
            });
        };
        let Some(linked) = self.linked.get(usize::from(node.0)) else {
            return Err(PartError::Unavailable {
                node: self.name(node),
            });
        };
        if links.is_up(node) {
            linked.store(true, Ordering::Relaxed);
        } else if !linked.load(Ordering::Relaxed) {
            while !links.is_up(node) && Instant::now() < deadline {
                std::thread::sleep(LINK_POLL);
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.len() >= MAX_PENDING {
                return Err(PartError::Busy);
            }
            pending.insert(id, tx);
        }
        let payload = Payload::PeerRead(PeerRead {
            id,
            user: caller.user,
            device: caller.device,
            frame,
        });
        match links.send(node, caller.user, payload) {
            Ok(()) => {
                self.metrics.parts_asked.fetch_add(1, Ordering::Relaxed);
                Ok(Asked { id, rx })
            }
            Err(e) => {
                self.forget(id);
                Err(match e {
                    LinkError::Down => PartError::Unavailable {
                        node: self.name(node),
                    },
                    LinkError::Full => PartError::Busy,
                })
            }
        }
    }

    fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// A `PEER_READ_REPLY` arrived (on the link thread): hands it to the waiting worker, or
    /// drops it when its read is no longer waiting.
    pub fn reply(&self, reply: PeerReadReply) {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&reply.id);
        match waiter {
            // A channel of one slot for one answer: never full, never blocks.
            Some(tx) => {
                let _ = tx.try_send(reply.frame);
            }
            None => {
                self.metrics.late_replies.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// LIST_THREADS over every node: each node lists the caller's threads it owns (unread
    /// counts and previews computed where the thread lives), and the lists are merged in list
    /// order (`last_msg_id`, then thread id, descending) and cut as on one node.
    fn list_threads(&self, shared: &Shared, caller: &Caller, f: ListThreads) -> Frame {
        const WHAT: &str = "LIST_THREADS";
        let others: Vec<NodeIndex> = (0..self.nodes() as u16)
            .map(NodeIndex)
            .filter(|&n| n != self.local)
            .collect();
        let gather = self.scatter(caller, &Frame::ListThreads(f.clone()), &others);
        let local = Engine::read(shared, caller, Frame::ListThreads(f.clone()));
        let mut parts = vec![(self.local, local)];
        for (node, answer) in others.iter().zip(gather.wait()) {
            match answer {
                Ok(frame) => parts.push((*node, frame)),
                Err(e) => return e.reply(WHAT, &self.metrics),
            }
        }
        let mut rows: Vec<ThreadSummary> = Vec::new();
        let mut more = false;
        for (node, part) in parts {
            match part {
                Frame::ThreadList(list) => {
                    more |= list.more;
                    rows.extend(list.threads);
                }
                error @ Frame::ErrorReply(_) => return error,
                other => {
                    tracing::error!(
                        frame = other.name(),
                        "a node answered LIST_THREADS with an unexpected frame"
                    );
                    return PartError::Garbled {
                        node: self.name(node),
                    }
                    .reply(WHAT, &self.metrics);
                }
            }
        }
        rows.sort_unstable_by_key(|r| std::cmp::Reverse((r.last_msg_id, r.id)));
        let limit = crate::chat::list_limit(f.limit);
        let budget = shared.config.max_reply_bytes / 2;
        let mut size = 0;
        let mut take = 0;
        for row in &rows {
            if take == limit || size > budget {
                more = true;
                break;
            }
            size += row.size();
            take += 1;
        }
        rows.truncate(take);
        ThreadList {
            threads: rows,
            more,
        }
        .into()
    }

    /// SYNC over every node, with a watermark per node (PROTOCOL.md `SYNC`, ARCHITECTURE.md
    /// "Sync and the watermark", "Across nodes"). A walk visits the nodes in member-list order;
    /// each page is one node's part, paged there by its own resume thread and computed against
    /// that node's own watermark, which the walk takes when it first reaches the node and
    /// carries in the vector from then on. A part with nothing in it does not end the page:
    /// the walk goes on to the next node at once.
    fn sync(&self, shared: &Shared, caller: &Caller, f: Sync) -> Frame {
        const WHAT: &str = "SYNC";
        let n = self.nodes();
        let invalid = |message: &str| -> Frame {
            ErrorReply {
                code: ErrorCode::InvalidArgument as u16,
                message: message.into(),
            }
            .into()
        };
        let vector = f.vector.0.unwrap_or_default();
        // The last completed sync's watermarks; a scalar (an older client, or a vector from a
        // cluster of another size) holds for every node: it is the minimum of a vector, so
        // no node's part can skip anything below it.
        let since = if vector.since.len() == n {
            vector.since
        } else {
            vec![f.since; n]
        };
        let first = f.watermark == 0 && f.after_thread == 0 && vector.watermarks.is_empty();
        let (mut watermarks, mut node) = if first {
            (vec![0; n], 0)
        } else if vector.watermarks.len() == n && usize::from(vector.after_node) < n {
            (vector.watermarks, vector.after_node)
        } else {
            return invalid(
                "this server is a cluster: a SYNC that continues a walk carries SYNC_BATCH.vector back (watermarks and next_node); start again with after_thread 0 and watermark 0",
            );
        };
        let (mut after_thread, mut after_message) = (f.after_thread, f.after_message);
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            let index = usize::from(node);
            let part = Sync {
                since: since[index],
                after_thread,
                after_message,
                limit: f.limit,
                watermark: watermarks[index],
                vector: Tail(None),
            };
            let answer = if NodeIndex(node) == self.local {
                Engine::read(shared, caller, Frame::Sync(part))
            } else {
                let frame = encoded(&Frame::Sync(part));
                let asked = self.ask(NodeIndex(node), caller, frame, deadline);
                let gather = Gather {
                    reads: self,
                    deadline,
                    asks: vec![(NodeIndex(node), asked)],
                };
                match gather.wait().pop() {
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => return e.reply(WHAT, &self.metrics),
                    None => unreachable!("one ask, one answer"),
                }
            };
            let mut batch = match answer {
                Frame::SyncBatch(batch) => batch,
                error @ Frame::ErrorReply(_) => return error,
                other => {
                    tracing::error!(
                        frame = other.name(),
                        "a node answered SYNC with an unexpected frame"
                    );
                    return PartError::Garbled {
                        node: self.name(NodeIndex(node)),
                    }
                    .reply(WHAT, &self.metrics);
                }
            };
            // The part's own watermark: taken there on the walk's first visit, before it read.
            watermarks[index] = batch.watermark;
            let last = index + 1 == n;
            let empty =
                batch.threads.is_empty() && batch.messages.is_empty() && batch.deleted.is_empty();
            if !batch.more && empty && !last {
                node += 1;
                (after_thread, after_message) = (0, 0);
                continue;
            }
            let next_node = if batch.more {
                node
            } else if last {
                0
            } else {
                batch.more = true;
                batch.next_thread = 0;
                batch.next_message = 0;
                node + 1
            };
            // The scalar: at the end the one number that is safe for every node (the
            // smallest), for a client that keeps only the scalar; before it, a continuation's
            // marker, never 0 (0 would start a new walk), unless every node's is 0.
            batch.watermark = if batch.more {
                watermarks.iter().copied().filter(|&w| w != 0).min()
            } else {
                watermarks.iter().copied().min()
            }
            .unwrap_or(batch.watermark);
            batch.vector = Tail::some(BatchVector {
                watermarks,
                next_node,
            });
            return Frame::SyncBatch(batch);
        }
    }

    // ---- Part side ----

    /// A `PEER_READ` arrived (on the link thread): queues it for a part worker without
    /// waiting; at the bound, or before the workers run, answers at once.
    pub fn accept(&self, from: NodeIndex, read: PeerRead) {
        let (id, user) = (read.id, read.user);
        let refused = match self.parts.get() {
            Some(parts) => match parts.try_send(Some(PartJob { from, read })) {
                Ok(()) => return,
                Err(TrySendError::Full(_)) => ErrorReply {
                    code: ErrorCode::RateLimited as u16,
                    message:
                        "the node that owns some of your threads is busy reading; retry in a moment"
                            .into(),
                },
                Err(TrySendError::Disconnected(_)) => ErrorReply {
                    code: ErrorCode::ShuttingDown as u16,
                    message:
                        "a node that owns some of your threads is shutting down; retry in a moment"
                            .into(),
                },
            },
            None => ErrorReply {
                code: ErrorCode::Unavailable as u16,
                message: "a node that owns some of your threads is starting; retry in a moment"
                    .into(),
            },
        };
        self.metrics.parts_refused.fetch_add(1, Ordering::Relaxed);
        self.answer(from, id, user, &refused.into());
    }

    /// Runs one part (on a part worker): this node's share of the read, over its own store.
    pub fn run_part(&self, shared: &Shared, job: PartJob) {
        let PartJob { from, read } = job;
        let mut buf = BytesMut::from(&read.frame[..]);
        let answer = match Decoder::new(MAX_FRAME_LEN).decode(&mut buf) {
            Ok(Some(env))
                if matches!(
                    env.frame,
                    Frame::ListThreads(_) | Frame::Sync(_) | Frame::MediaGet(_)
                ) =>
            {
                // A MEDIA_GET part comes from the node that owns the thread it names, which
                // checked that the caller may read the media (`media_get` above).
                let checked = match env.frame {
                    Frame::MediaGet(_) => UsersChecked::MediaHeld,
                    _ => UsersChecked::No,
                };
                let caller = Caller {
                    user: read.user,
                    device: read.device,
                    conn: crate::caller::ConnRef {
                        node: 0,
                        shard: 0,
                        slot: 0,
                        gen: 0,
                    },
                    checked,
                };
                Engine::read(shared, &caller, env.frame)
            }
            _ => ErrorReply {
                code: ErrorCode::Malformed as u16,
                message: "a node asked for a read part that is not LIST_THREADS, SYNC or MEDIA_GET: run the same release on every node".into(),
            }
            .into(),
        };
        self.answer(from, read.id, read.user, &answer);
    }

    fn answer(&self, to: NodeIndex, id: u64, user: u64, frame: &Frame) {
        let Some(links) = self.links.get() else {
            return;
        };
        let reply = Payload::PeerReadReply(PeerReadReply {
            id,
            frame: encoded(frame),
        });
        // Down or Full: the asking node's deadline answers its client UNAVAILABLE.
        if let Err(e) = links.send(to, user, reply) {
            tracing::debug!(node = to.0, error = %e, "a read part could not be answered");
        }
    }
}

/// `frame` encoded whole, with request id 0.
fn encoded(frame: &Frame) -> Bytes {
    let mut enc = BytesMut::new();
    encode(0, frame, &mut enc);
    enc.freeze()
}

/// One read sent to one node, waiting for its answer.
struct Asked {
    id: u64,
    rx: Receiver<Bytes>,
}

/// The parts of one read, sent to several nodes at once, sharing one deadline.
struct Gather<'a> {
    reads: &'a ClusterReads,
    deadline: Instant,
    asks: Vec<(NodeIndex, Result<Asked, PartError>)>,
}

impl Gather<'_> {
    /// Each node's answer, in the order asked; waits until the deadline at most.
    fn wait(self) -> Vec<Result<Frame, PartError>> {
        let reads = self.reads;
        self.asks
            .into_iter()
            .map(|(node, asked)| {
                let asked = asked?;
                let bytes = match asked.rx.recv_deadline(self.deadline) {
                    Ok(bytes) => bytes,
                    Err(_) => {
                        reads.forget(asked.id);
                        return Err(PartError::Unavailable {
                            node: reads.name(node),
                        });
                    }
                };
                let mut buf = BytesMut::from(&bytes[..]);
                match Decoder::new(MAX_FRAME_LEN).decode(&mut buf) {
                    Ok(Some(env)) => Ok(env.frame),
                    _ => Err(PartError::Garbled {
                        node: reads.name(node),
                    }),
                }
            })
            .collect()
    }
}
