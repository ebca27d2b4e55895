//! The parent's side of the workers: start them (child processes re-running this binary with
//! the hidden `worker` subcommand, or threads), send commands, gather replies, print progress.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::ipc::{Collected, Counters, FromWorker, Phase, StormTimes, ToWorker};
use crate::worker::{self, Inbox};
use crate::{Error, Result};

enum Link {
    Process {
        child: Child,
        stdin: ChildStdin,
    },
    Thread {
        inbox: Inbox,
        handle: Option<JoinHandle<()>>,
    },
}

/// What a worker reported at the end of a phase.
pub struct PhaseDone {
    pub counters: Counters,
    pub threads: Vec<(u32, u64)>,
    pub storm: Option<StormTimes>,
}

pub struct Fleet {
    links: Vec<Link>,
    rx: Receiver<(usize, FromWorker)>,
    latest: Vec<Counters>,
    quiet: bool,
    label: String,
    target: u64,
    started: Instant,
    last_print: Instant,
    last_delivered: u64,
}

/// The binary to start workers from: `--worker-exe`, else this executable if it is
/// `courier-loadgen`, else a `courier-loadgen` next to it or one directory up (where cargo puts
/// binaries relative to test executables in `deps/`).
pub fn find_worker_exe(explicit: Option<&PathBuf>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.clone());
    }
    let me = std::env::current_exe().ok()?;
    if me.file_stem().is_some_and(|s| s == "courier-loadgen") {
        return Some(me);
    }
    let dir = me.parent()?;
    let found = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("courier-loadgen"))
        .find(|p| p.is_file());
    found
}

impl Fleet {
    /// Starts `count` workers: processes running `exe`, or threads when `exe` is `None`.
    pub fn start(
        count: usize,
        exe: Option<PathBuf>,
        label: &str,
        target: u64,
        quiet: bool,
    ) -> Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut links = Vec::with_capacity(count);
        for i in 0..count {
            let link = match &exe {
                Some(exe) => {
                    let mut child = Command::new(exe)
                        .arg("worker")
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::inherit())
                        .spawn()
                        .map_err(|source| Error::SpawnWorker {
                            exe: exe.clone(),
                            source,
                        })?;
                    let stdin = child.stdin.take().expect("stdin is piped");
                    let stdout = child.stdout.take().expect("stdout is piped");
                    let tx = tx.clone();
                    std::thread::Builder::new()
                        .name(format!("worker-{i}-reader"))
                        .spawn(move || {
                            for line in BufReader::new(stdout).lines() {
                                let Ok(line) = line else { break };
                                let msg = serde_json::from_str(&line).unwrap_or_else(|e| {
                                    FromWorker::Failed {
                                        reason: format!("bad report line: {e}"),
                                    }
                                });
                                if tx.send((i, msg)).is_err() {
                                    return;
                                }
                            }
                            let _ = tx.send((
                                i,
                                FromWorker::Failed {
                                    reason: "worker process exited".into(),
                                },
                            ));
                        })?;
                    Link::Process { child, stdin }
                }
                None => {
                    let (handle, inbox) = worker::spawn_thread(i, tx.clone())?;
                    Link::Thread {
                        inbox,
                        handle: Some(handle),
                    }
                }
            };
            links.push(link);
        }
        let now = Instant::now();
        Ok(Self {
            links,
            rx,
            latest: vec![Counters::default(); count],
            quiet,
            label: label.to_string(),
            target,
            started: now,
            last_print: now,
            last_delivered: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn send(&mut self, i: usize, msg: &ToWorker) -> Result<()> {
        let gone = |_| Error::WorkerGone {
            worker: i,
            phase: "sending a command",
        };
        match &mut self.links[i] {
            Link::Process { stdin, .. } => {
                let mut line = serde_json::to_vec(msg)?;
                line.push(b'\n');
                stdin.write_all(&line).map_err(gone)?;
                stdin.flush().map_err(gone)
            }
            Link::Thread { inbox, .. } => inbox.send(msg.clone()).map_err(gone),
        }
    }

    pub fn broadcast(&mut self, msg: &ToWorker) -> Result<()> {
        (0..self.len()).try_for_each(|i| self.send(i, msg))
    }

    /// Totals of the latest progress of every worker.
    pub fn totals(&self) -> Counters {
        let mut t = Counters::default();
        for c in &self.latest {
            t.add(c);
        }
        t
    }

    fn progress(&mut self, force: bool) {
        let now = Instant::now();
        if self.quiet || (!force && now.duration_since(self.last_print) < Duration::from_secs(1)) {
            return;
        }
        let dt = now.duration_since(self.last_print).as_secs_f64().max(1e-3);
        self.last_print = now;
        let t = self.totals();
        let rate = (t.delivered.saturating_sub(self.last_delivered)) as f64 / dt;
        self.last_delivered = t.delivered;
        let errors: u64 = t.errors.values().sum();
        eprintln!(
            "[{} {:>6.1}s] ready {}/{} failed {} | sent {} acked {} delivered {} ({:.0}/s) | dup {} errors {} disconnects {}",
            self.label,
            self.started.elapsed().as_secs_f64(),
            t.ready,
            self.target,
            t.failed,
            t.sent,
            t.acked,
            t.delivered,
            rate,
            t.duplicates,
            errors,
            t.disconnects
        );
    }

    pub fn note(&self, text: &str) {
        if !self.quiet {
            eprintln!(
                "[{} {:>6.1}s] {text}",
                self.label,
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// Receives one message, handling progress; `None` on timeout.
    fn next(&mut self, until: Instant, phase: &'static str) -> Result<Option<(usize, FromWorker)>> {
        loop {
            let left = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            if left.is_zero() && Instant::now() >= until {
                return Ok(None);
            }
            match self.rx.recv_timeout(left) {
                Ok((i, FromWorker::Progress(c))) => {
                    self.latest[i] = c;
                    self.progress(false);
                }
                Ok((i, FromWorker::Failed { reason })) => {
                    let _ = phase;
                    return Err(Error::Worker { worker: i, reason });
                }
                Ok(other) => return Ok(Some(other)),
                Err(RecvTimeoutError::Timeout) => self.progress(false),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::WorkerGone { worker: 0, phase })
                }
            }
        }
    }

    /// Waits for every worker to finish `phase`.
    pub fn wait_done(&mut self, phase: Phase, timeout: Duration) -> Result<Vec<PhaseDone>> {
        let name = phase_name(phase);
        let until = Instant::now() + timeout;
        let mut out: Vec<Option<PhaseDone>> = (0..self.len()).map(|_| None).collect();
        while out.iter().any(Option::is_none) {
            match self.next(until, name)? {
                None => {
                    let worker = out.iter().position(Option::is_none).unwrap_or(0);
                    return Err(Error::WorkerGone {
                        worker,
                        phase: name,
                    });
                }
                Some((
                    i,
                    FromWorker::Done {
                        phase: p,
                        counters,
                        threads,
                        storm,
                    },
                )) if p == phase => {
                    self.latest[i] = counters.clone();
                    out[i] = Some(PhaseDone {
                        counters,
                        threads,
                        storm,
                    });
                }
                Some(_) => {}
            }
        }
        self.progress(true);
        Ok(out.into_iter().map(|d| d.expect("all done")).collect())
    }

    /// Asks every worker for its ledgers and histograms.
    pub fn collect(&mut self, timeout: Duration) -> Result<Vec<Collected>> {
        self.broadcast(&ToWorker::Collect)?;
        let until = Instant::now() + timeout;
        let mut out: Vec<Option<Collected>> = (0..self.len()).map(|_| None).collect();
        while out.iter().any(Option::is_none) {
            match self.next(until, "collect")? {
                None => {
                    let worker = out.iter().position(Option::is_none).unwrap_or(0);
                    return Err(Error::WorkerGone {
                        worker,
                        phase: "collect",
                    });
                }
                Some((i, FromWorker::Collected(c))) => {
                    self.latest[i] = c.counters.clone();
                    out[i] = Some(*c);
                }
                Some(_) => {}
            }
        }
        Ok(out.into_iter().map(|c| c.expect("all collected")).collect())
    }

    /// Lets time pass while printing progress.
    pub fn sleep(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        while self.next(until, "hold")?.is_some() {}
        Ok(())
    }

    pub fn is_processes(&self) -> bool {
        matches!(self.links.first(), Some(Link::Process { .. }))
    }

    /// Tells every worker to exit and waits for it (a process that does not exit within ten
    /// seconds is killed: we started it, we hold its handle).
    pub fn shutdown(mut self) {
        let _ = self.broadcast(&ToWorker::Exit);
        for link in &mut self.links {
            match link {
                Link::Process { child, .. } => {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        match child.try_wait() {
                            Ok(Some(_)) => break,
                            Ok(None) if Instant::now() < deadline => {
                                std::thread::sleep(Duration::from_millis(20))
                            }
                            _ => {
                                let _ = child.kill();
                                let _ = child.wait();
                                break;
                            }
                        }
                    }
                }
                Link::Thread { handle, .. } => {
                    if let Some(h) = handle.take() {
                        let _ = h.join();
                    }
                }
            }
        }
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Connect => "connect",
        Phase::Setup => "setup",
        Phase::Traffic => "traffic",
        Phase::FinalSync => "final sync",
    }
}
