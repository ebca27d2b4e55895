//! The commit stage: a writer thread per shard that makes the shard's round batches durable
//! off its event loop.
//!
//! The shard hands a sealed round over with [`Committer::submit`] and keeps serving; the
//! writer thread runs the synced write and reports back through a one-slot channel, then
//! calls `notify` (the shard's waker). At most one batch per shard is in flight, so the
//! shard's writes reach the WAL in the order its rounds were sealed.
//!
//! Group commit across shards is RocksDB's own: writers that arrive while another write is in
//! progress queue up in its write thread, and the next leader writes all their batches as one
//! WAL record with one fsync (`WriteThread::JoinBatchGroup`, as tikv's store writers and a
//! database's log writer group theirs). With a writer per shard, the rounds of all shards
//! that are ready together share one WAL write and one sync.

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};

use super::{Batch, Error, Store};

/// Called by the writer thread after each finished commit (the shard's waker).
pub type Notify = Box<dyn Fn() + Send>;

/// A test gate: the writer takes one permit before each write, so a test decides when a
/// submitted batch becomes durable. Production committers have none.
pub type Gate = Receiver<()>;

/// One shard's handle on its writer thread.
pub struct Committer {
    jobs: Option<Sender<Batch>>,
    done: Receiver<Result<(), Error>>,
    in_flight: bool,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the writer thread of shard `shard`.
    pub fn spawn(store: Store, shard: u16, notify: Notify) -> std::io::Result<Committer> {
        Self::spawn_gated(store, shard, notify, None)
    }

    /// Like [`spawn`](Self::spawn), with a test gate (see [`Gate`]).
    pub fn spawn_gated(
        store: Store,
        shard: u16,
        notify: Notify,
        gate: Option<Gate>,
    ) -> std::io::Result<Committer> {
        // One slot each way: a shard has at most one batch in flight, so neither side waits.
        let (jobs, job_rx) = bounded::<Batch>(1);
        let (done_tx, done) = bounded(1);
        let thread = std::thread::Builder::new()
            .name(format!("commit-{shard}"))
            .spawn(move || {
                for batch in job_rx {
                    if let Some(gate) = &gate {
                        if gate.recv().is_err() {
                            return;
                        }
                    }
                    let result = store.commit(batch);
                    if done_tx.send(result).is_err() {
                        return;
                    }
                    notify();
                }
            })?;
        Ok(Committer {
            jobs: Some(jobs),
            done,
            in_flight: false,
            thread: Some(thread),
        })
    }

    /// Whether a batch was submitted and its result not yet taken.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Hands `batch` to the writer thread. Only one batch may be in flight: the caller takes
    /// the previous result first ([`poll`](Self::poll) or [`wait`](Self::wait)).
    pub fn submit(&mut self, batch: Batch) -> Result<(), Error> {
        assert!(!self.in_flight, "one batch in flight per shard");
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(batch));
        match sent {
            Some(Ok(())) => {
                self.in_flight = true;
                Ok(())
            }
            _ => Err(Error::CommitterStopped),
        }
    }

    /// The result of the batch in flight, if it is done (never waits).
    pub fn poll(&mut self) -> Option<Result<(), Error>> {
        if !self.in_flight {
            return None;
        }
        match self.done.try_recv() {
            Ok(result) => {
                self.in_flight = false;
                Some(result)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.in_flight = false;
                Some(Err(Error::CommitterStopped))
            }
        }
    }

    /// Waits for the result of the batch in flight (shutdown, and `--fsync always`).
    pub fn wait(&mut self) -> Option<Result<(), Error>> {
        if !self.in_flight {
            return None;
        }
        self.in_flight = false;
        Some(self.done.recv().unwrap_or(Err(Error::CommitterStopped)))
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the job channel ends the writer's loop once its current write returns.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
