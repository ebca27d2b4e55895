//! Soak: 2,000 connections of mixed load (1:1 and group chat, receipts, presence, typing,
//! reconnects) for 60 s against a real server, which is SIGKILLed and restarted twice. At the
//! end every acknowledged message must have reached every recipient exactly once and in order
//! (the load generator's ledger, with a final SYNC for stragglers), and the server's memory
//! must be flat: RSS at the end within 10% of RSS in the middle of the steady part.
//!
//! RocksDB's memtables and block cache fill up over a run by design, up to their budgets
//! (`store::MEMTABLE_BUDGET_BYTES`, `BLOCK_CACHE_BYTES`); RSS is therefore compared net of
//! what RocksDB reports holding (`courier_rocksdb_memory_bytes`), and RocksDB's own memory is
//! checked against its budgets.
//!
//! The load generator runs in-process (threads) and reconnects by itself: the server comes
//! back on the same address, and its clients RESUME and SYNC what they missed. With
//! `--fsync batch` an ack is only sent after the fsync, so a SIGKILL loses nothing acked.

mod util;

use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use courier::store::{BLOCK_CACHE_BYTES, MEMTABLE_BUDGET_BYTES};
use courier_loadgen::{run, Cli};
use util::Server;

const CONNECTIONS: usize = 2_000;
const DURATION_SECS: u64 = 60;
/// When (seconds into the traffic) the server is killed and restarted.
const CRASHES_AT: [u64; 2] = [10, 20];
/// When RSS is read: the middle and the end of the steady part after the last restart.
const RSS_MIDDLE_AT: u64 = 40;
const RSS_END_AT: u64 = 58;

#[test]
fn soak_mixed_load_with_two_crashes_loses_nothing_and_memory_stays_flat() {
    let mut server = Server::start_with(&[
        "--rate-limit",
        "100000",
        "--fsync",
        "batch",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let users = server.provision(CONNECTIONS);
    let args = vec![
        "courier-loadgen".to_string(),
        "--quiet".into(),
        "--in-process".into(),
        "--server".into(),
        server.addr.to_string(),
        "--users".into(),
        users.display().to_string(),
        "--settle-secs".into(),
        "10".into(),
        server.client_args()[0].clone(),
        server.client_args()[1].clone(),
        "mixed".into(),
        "--connections".into(),
        CONNECTIONS.to_string(),
        "--duration".into(),
        DURATION_SECS.to_string(),
        "--rate".into(),
        "1000".into(),
        "--reconnects-per-sec".into(),
        "20".into(),
    ];
    let cli = Cli::try_parse_from(args).expect("valid loadgen arguments");
    let load = thread::spawn(move || run(&cli).expect("loadgen run"));

    // The loadgen connects its users first; wait until the server holds them all, so the
    // schedule below counts from the start of the traffic.
    let ramp_deadline = Instant::now() + Duration::from_secs(60);
    while server.open_sockets() < CONNECTIONS as u64 {
        assert!(
            Instant::now() < ramp_deadline,
            "the load generator did not connect {CONNECTIONS} users within 60 s ({} sockets)",
            server.open_sockets()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let start = Instant::now();
    let at = |secs: u64| start + Duration::from_secs(secs);
    for crash in CRASHES_AT {
        thread::sleep(at(crash).saturating_duration_since(Instant::now()));
        server.crash_and_restart_in_place();
    }
    thread::sleep(at(RSS_MIDDLE_AT).saturating_duration_since(Instant::now()));
    let middle = Memory::of(&server);
    thread::sleep(at(RSS_END_AT).saturating_duration_since(Instant::now()));
    let end = Memory::of(&server);

    let r = load.join().expect("the loadgen thread");
    assert_eq!(
        (r.lost, r.duplicates, r.out_of_order, r.stale_acks),
        (0, 0, 0, 0),
        "{r:#?}"
    );
    assert!(r.passed, "{r:#?}");
    assert!(
        r.acked > 10_000,
        "too little traffic to mean anything: {r:#?}"
    );
    assert!(
        r.disconnects >= CONNECTIONS as u64,
        "the crashes cut every connection: {r:#?}"
    );
    assert!(r.reconnects > 0, "{r:#?}");
    eprintln!(
        "soak: acked {}, delivered {}, recovered by sync {}, disconnects {}, reconnects {}; middle {middle:?}, end {end:?}",
        r.acked, r.delivered, r.recovered_by_sync, r.disconnects, r.reconnects,
    );
    let growth = end.own() as f64 / middle.own() as f64;
    assert!(
        growth <= 1.10,
        "server memory net of RocksDB's caches grew {:.1}% from the middle ({middle:?}) to the end ({end:?})",
        (growth - 1.0) * 100.0
    );
    assert!(
        end.memtables <= MEMTABLE_BUDGET_BYTES as u64
            && end.block_cache <= BLOCK_CACHE_BYTES as u64,
        "RocksDB holds more than its budgets: {end:?}"
    );
}

/// The server's resident memory and what RocksDB says it holds of it.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: u64,
    memtables: u64,
    block_cache: u64,
    table_readers: u64,
}

impl Memory {
    fn of(server: &Server) -> Memory {
        let metrics = server.metrics();
        let part = |p: &str| {
            Server::metric_sum(
                &metrics,
                &format!("courier_rocksdb_memory_bytes{{part=\"{p}\"}}"),
            ) as u64
        };
        Memory {
            rss: server.rss_bytes().expect("server RSS"),
            memtables: part("memtables"),
            block_cache: part("block_cache"),
            table_readers: part("table_readers"),
        }
    }

    /// RSS less RocksDB's budgeted buffers: what grows with connections and leaks.
    fn own(&self) -> u64 {
        self.rss
            .saturating_sub(self.memtables + self.block_cache + self.table_readers)
    }
}
