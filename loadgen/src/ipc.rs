//! Messages between the parent and its workers: one JSON object per line, parent → worker on
//! the worker's stdin, worker → parent on its stdout (or the same values over channels when
//! workers are threads).
//!
//! A run is a sequence of phases the parent drives in lockstep: `Init`, `Connect` (→ `Done`),
//! `Setup` (→ `Done` with thread ids), `Traffic` (→ `Done`), `Collect` (→ `Collected`),
//! optionally `FinalSync` (→ `Done`) and `Collect` again, then `Exit`. Workers send `Progress`
//! once a second throughout.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::hist::EncodedLatencies;
use crate::ledger::{SeenLedger, SentLedger};

/// One connection (one user, one device) as planned by the parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnSpec {
    /// Logical user index in the plan (not the server's user id).
    pub user: u32,
    /// The RESUME token, hex.
    pub token: String,
    pub server: SocketAddr,
    /// Bound before connect when the server is on loopback.
    pub source: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<ThreadRole>,
    /// Server user ids to add as contacts and subscribe to for presence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<u64>,
    /// The key of `server` (hex) to pin, on a cluster (each node has its own); `None`: the
    /// run's `Init::server_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A thread this connection takes part in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRole {
    /// Logical thread index in the plan.
    pub key: u32,
    /// Whether this connection sends in it.
    pub send: bool,
    /// What this connection does to create the thread, if it is the one that does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<ThreadSetup>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThreadSetup {
    OpenDirect {
        peer: u64,
    },
    /// CREATE_GROUP with the first `chunk` members, then ADD_MEMBERS with `chunk` at a time.
    CreateGroup {
        name: String,
        members: Vec<u64>,
        chunk: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    Init(Init),
    /// Open every connection: `rate` per second for this worker (0 = no pacing), at most
    /// `max_connecting` handshakes at once; `sync` = SYNC after RESUME before counting as ready.
    Connect {
        rate: f64,
        max_connecting: usize,
        sync: bool,
    },
    Setup,
    Traffic(TrafficSpec),
    /// SYNC these users (logical indices) from the start of the run.
    FinalSync {
        users: Vec<u32>,
    },
    Collect,
    Exit,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Init {
    pub worker: usize,
    pub run_id: u32,
    /// A SYNC `since` (µs since the epoch) before any message of this run.
    pub run_since: u64,
    pub body_size: usize,
    pub conns: Vec<ConnSpec>,
    /// The server key every connection pins (hex); `None`: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_key: Option<String>,
    /// Connect over WebSocket (the servers are `--listen-ws` addresses).
    #[serde(default)]
    pub ws: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficSpec {
    pub duration_ms: u64,
    /// Messages per second for this worker; 0 = unthrottled (keep `window` in flight).
    pub rate: f64,
    pub window: u32,
    /// Pick the next sender at random rather than round robin.
    pub random_pick: bool,
    pub receipts: bool,
    /// Also send READ receipts, for about half of what arrives.
    pub read_receipts: bool,
    /// Send TYPING before about one message in ten.
    pub typing: bool,
    /// Planned reconnects per second for this worker.
    pub reconnects_per_sec: f64,
    /// Drop every connection at once this long after the start, then reconnect all.
    pub storm_at_ms: Option<u64>,
    pub max_connecting: usize,
    /// How long to wait after the end for acks (and a storm's recovery) before reporting.
    pub drain_ms: u64,
    /// (logical thread, server thread id) of every thread.
    pub threads: Vec<(u32, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Connect,
    Setup,
    Traffic,
    FinalSync,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    Progress(Counters),
    Done {
        phase: Phase,
        counters: Counters,
        /// Threads this worker created: (logical thread, server thread id).
        #[serde(default)]
        threads: Vec<(u32, u64)>,
        #[serde(default)]
        storm: Option<StormTimes>,
    },
    Collected(Box<Collected>),
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collected {
    pub counters: Counters,
    pub latencies: EncodedLatencies,
    pub sent: Vec<SentLedger>,
    pub seen: Vec<SeenLedger>,
    /// The worker process's resident set size.
    pub rss_bytes: Option<u64>,
}

/// How one worker lived through a storm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StormTimes {
    pub dropped: u64,
    /// Closing every connection.
    pub drop_ms: u64,
    /// From the drop until every connection that is not permanently failed was back and synced.
    pub recover_ms: Option<u64>,
}

/// Running totals of one worker (summed by the parent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Connections authenticated (and synced) right now.
    pub ready: u64,
    /// Successful authentications, reconnects included.
    pub auth_ok: u64,
    /// Connections given up on after retries.
    pub failed: u64,
    /// Connect or handshake attempts that failed (each retry counts).
    pub connect_errors: u64,
    /// Ready connections closed by the server or the network.
    pub disconnects: u64,
    /// Connections the loadgen closed on purpose and reopened.
    pub reconnects: u64,
    pub sent: u64,
    pub acked: u64,
    /// SENTs naming a message from before the run (see `ledger`): not counted as acked.
    pub stale_acks: u64,
    /// SENDs answered with ERROR_REPLY.
    pub send_errors: u64,
    /// MESSAGE_PUSH frames carrying loadgen messages of this run.
    pub pushes: u64,
    /// Distinct messages seen by recipients (push or sync), once per device.
    pub delivered: u64,
    /// Of `delivered`, seen by push during the traffic window.
    pub delivered_in_window: u64,
    /// Of `delivered`, seen first in a SYNC_BATCH.
    pub recovered_by_sync: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Messages of other runs or not written by the loadgen.
    pub foreign: u64,
    pub receipts_sent: u64,
    pub pings: u64,
    /// Sends skipped because the sender was not ready or its window was full.
    pub send_skipped: u64,
    /// Setup requests (open, create, add, contacts, subscribe) that failed.
    pub setup_errors: u64,
    /// ERROR_REPLY codes received, by name.
    pub errors: BTreeMap<String, u64>,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        let pairs = [
            (&mut self.ready, o.ready),
            (&mut self.auth_ok, o.auth_ok),
            (&mut self.failed, o.failed),
            (&mut self.connect_errors, o.connect_errors),
            (&mut self.disconnects, o.disconnects),
            (&mut self.reconnects, o.reconnects),
            (&mut self.sent, o.sent),
            (&mut self.acked, o.acked),
            (&mut self.stale_acks, o.stale_acks),
            (&mut self.send_errors, o.send_errors),
            (&mut self.pushes, o.pushes),
            (&mut self.delivered, o.delivered),
            (&mut self.delivered_in_window, o.delivered_in_window),
            (&mut self.recovered_by_sync, o.recovered_by_sync),
            (&mut self.duplicates, o.duplicates),
            (&mut self.out_of_order, o.out_of_order),
            (&mut self.foreign, o.foreign),
            (&mut self.receipts_sent, o.receipts_sent),
            (&mut self.pings, o.pings),
            (&mut self.send_skipped, o.send_skipped),
            (&mut self.setup_errors, o.setup_errors),
        ];
        for (a, b) in pairs {
            *a += b;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_single_json_lines_and_round_trip() {
        let spec = ConnSpec {
            user: 3,
            token: "ab".repeat(32),
            server: "127.0.0.1:7000".parse().unwrap(),
            source: Ipv4Addr::new(127, 0, 0, 2),
            threads: vec![ThreadRole {
                key: 1,
                send: true,
                setup: Some(ThreadSetup::CreateGroup {
                    name: "g".into(),
                    members: vec![1, 2],
                    chunk: 100,
                }),
            }],
            contacts: vec![],
            key: Some("cd".repeat(32)),
        };
        let msg = ToWorker::Init(Init {
            worker: 0,
            run_id: 9,
            run_since: 1,
            body_size: 64,
            conns: vec![spec],
            server_key: Some("ab".repeat(32)),
            ws: true,
        });
        let line = serde_json::to_string(&msg).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<ToWorker>(&line).unwrap(), msg);

        let mut c = Counters {
            sent: 2,
            ..Default::default()
        };
        c.errors.insert("NOT_MEMBER".into(), 1);
        let mut total = Counters::default();
        total.add(&c);
        total.add(&c);
        assert_eq!((total.sent, total.errors["NOT_MEMBER"]), (4, 2));
    }
}
