//! Runs a scenario from start to report: users, plan, workers, phases, verification.

use std::time::{Duration, Instant};

use crate::cli::{Cli, Command, Common};
use crate::cluster::{Cluster, Pairing};
use crate::fleet::{find_worker_exe, Fleet, PhaseDone};
use crate::hist::{Latencies, Summary};
use crate::ipc::{Collected, Counters, Init, Phase, StormTimes, ToWorker, TrafficSpec};
use crate::ledger::{verify, SeenLedger, SentLedger, Verdict};
use crate::plan::{Placement, Plan};
use crate::report::{Report, StormReport};
use crate::sys::{self, KernelSnapshot};
use crate::users::{read_users_file, register_users, UserRecord};
use crate::{Error, Result};

/// How many users (= connections) the scenario needs.
fn users_needed(cmd: &Command) -> Result<usize> {
    let n = match *cmd {
        Command::Connect { connections, .. } => connections,
        Command::Chat { pairs, .. } => pairs * 2,
        Command::Group {
            groups,
            members,
            publishers,
            ..
        } => {
            if members < 2 {
                return Err(Error::Args("a group needs --members 2 or more".into()));
            }
            if publishers > members {
                return Err(Error::Args("--publishers cannot exceed --members".into()));
            }
            groups * members
        }
        Command::Storm { connections, .. } => connections.div_ceil(2) * 2,
        Command::Mixed { connections, .. } => connections,
        Command::Worker => {
            return Err(Error::Args("`worker` is internal and has no report".into()))
        }
        Command::Probe(_) => {
            return Err(Error::Args(
                "`probe` has its own report: run it with courier_loadgen::probe::run".into(),
            ))
        }
    };
    if n == 0 {
        return Err(Error::Args("the scenario has no connections".into()));
    }
    Ok(n)
}

fn load_users(c: &Common, needed: usize, run_id: u32) -> Result<Vec<UserRecord>> {
    let users = match (&c.users, c.register) {
        (Some(path), _) => read_users_file(path)?,
        (None, true) if is_cluster(c) => {
            return Err(Error::Args(
                "on a cluster, provision the users on their home nodes (`courier admin provision --node ID=DATA_DIR` once per node, nodes stopped) and pass --users FILE".into(),
            ))
        }
        (None, true) => register_users(
            needed,
            c.servers[0],
            encryption(c)?,
            &format!("lg{run_id:08x}_"),
            16,
        )?,
        (None, false) => return Err(Error::NoUsers),
    };
    if users.len() < needed {
        return Err(Error::NotEnoughUsers {
            needed,
            have: users.len(),
        });
    }
    Ok(users)
}

/// The transport `--server-key` / `--insecure-plaintext` chose, for the loadgen's own
/// blocking connections (registering users, the probe).
pub fn encryption(c: &Common) -> Result<courier_protocol::session::Encryption> {
    use courier_protocol::session::Encryption;
    Ok(server_key(c)?.map_or(Encryption::Plaintext, Encryption::Pinned))
}

/// The key `--server-key` pins, `None` with `--insecure-plaintext`; neither is an error that
/// says how to get the key.
pub fn server_key(c: &Common) -> Result<Option<courier_protocol::noise::PublicKey>> {
    match (&c.server_key, c.insecure_plaintext) {
        (Some(text), _) => {
            courier_protocol::noise::PublicKey::parse(text, "the --server-key value")
                .map(Some)
                .map_err(|e| Error::Args(e.to_string()))
        }
        (None, true) => Ok(None),
        (None, false) => Err(Error::Args(
            "the server's connections are encrypted: pass --server-key HEX (`courier keys show \
             --data-dir DIR` on the server prints it), or --insecure-plaintext against a server \
             run with --insecure-plaintext"
                .into(),
        )),
    }
}

/// Whether the run is against a cluster's node list (`--peer` / `--nodes`).
fn is_cluster(c: &Common) -> bool {
    !c.peers.is_empty() || c.nodes.is_some()
}

/// The cluster of `--peer` / `--nodes`, if given.
fn cluster(c: &Common) -> Result<Option<Cluster>> {
    if !is_cluster(c) {
        return Ok(None);
    }
    let mut specs = c.peers.clone();
    if let Some(path) = &c.nodes {
        specs.extend(Cluster::read_specs(path)?);
    }
    Cluster::parse(&specs, c.insecure_plaintext).map(Some)
}

/// On a cluster with `--pairing local`: the users in an order that puts each planned thread
/// on its members' home node.
fn arrange(
    cluster: &Cluster,
    pairing: Pairing,
    cmd: &Command,
    needed: usize,
    users: Vec<UserRecord>,
) -> Result<Vec<UserRecord>> {
    if pairing == Pairing::Any {
        return Ok(cluster.spread(users));
    }
    match *cmd {
        Command::Connect { .. } => Ok(users),
        Command::Chat { pairs, .. } => cluster.local_pairs(users, pairs),
        Command::Storm { .. } => cluster.local_pairs(users, needed / 2),
        Command::Group {
            groups, members, ..
        } => cluster.local_groups(users, groups, members),
        _ => Err(Error::Args(format!(
            "`{}` puts users of different nodes in threads: run it with --pairing any",
            cmd.name()
        ))),
    }
}

/// Runs the scenario `cli` describes and returns its report. Lost or duplicated messages are
/// results (`Report::passed` is false), not errors.
pub fn run(cli: &Cli) -> Result<Report> {
    let started = Instant::now();
    let c = &cli.common;
    let cluster = cluster(c)?;
    if c.servers.is_empty() && cluster.is_none() {
        return Err(Error::Args(
            "give at least one --server ADDR, or a cluster's nodes (--peer or --nodes)".into(),
        ));
    }
    if cluster.is_none() {
        server_key(c)?;
    }
    let _ = sys::raise_nofile_limit();
    let run_id: u32 = rand::random();
    // Message ids are microseconds since the epoch; nothing of this run is older than this.
    let run_since = sys::unix_micros().saturating_sub(2_000_000);
    let needed = users_needed(&cli.command)?;
    let source_ips = c
        .source_ips
        // The server's default --max-conns-per-addr is 1,000 (connections spread round robin).
        .unwrap_or(needed.div_ceil(1_000) as u32)
        .max(1);
    let at = Placement {
        servers: cluster
            .as_ref()
            .map_or_else(|| c.servers.clone(), Cluster::addrs),
        source_ips,
    };
    let mut users = load_users(c, needed, run_id)?;
    if let Some(cluster) = &cluster {
        users = arrange(cluster, c.pairing, &cli.command, needed, users)?;
    }
    let mut plan = match cli.command {
        Command::Connect { connections, .. } => Plan::connect(&users, connections, &at),
        Command::Chat { pairs, .. } => Plan::chat(&users, pairs, &at),
        Command::Group {
            groups,
            members,
            publishers,
            chunk,
            ..
        } => Plan::group(&users, groups, members, publishers, chunk, run_id, &at),
        Command::Storm { .. } => Plan::chat(&users, needed / 2, &at),
        Command::Mixed {
            connections,
            circle,
            ..
        } => Plan::mixed(&users, connections, circle, run_id, &at),
        Command::Worker | Command::Probe(_) => unreachable!("rejected by users_needed"),
    };
    if let Some(cluster) = &cluster {
        // Every user to its home node, with that node's key: no REDIRECT on the way.
        for conn in &mut plan.conns {
            let node = &cluster.nodes[cluster.home(users[conn.user as usize].id)];
            conn.server = node.addr;
            conn.key = node.key.map(|k| k.to_string());
        }
    }
    let n = plan.conns.len();
    let workers = c
        .workers
        .unwrap_or(n.div_ceil(c.conns_per_worker.max(1)))
        .clamp(1, n);
    let exe = if c.in_process {
        None
    } else {
        find_worker_exe(c.worker_exe.as_ref())
    };
    if exe.is_none() && !c.quiet {
        eprintln!("courier-loadgen: running {workers} worker(s) as threads (no courier-loadgen binary found)");
    }
    let mut fleet = Fleet::start(workers, exe, cli.command.name(), n as u64, c.quiet)?;
    let mut report = Report {
        scenario: cli.command.name().to_string(),
        connections: n as u64,
        workers: workers as u64,
        source_ips,
        servers: at.servers.iter().map(ToString::to_string).collect(),
        run_id,
        ..Default::default()
    };
    let result = drive(&mut fleet, cli, &plan, run_id, run_since, &mut report);
    fleet.shutdown();
    result?;
    report.duration_secs = started.elapsed().as_secs_f64();
    report.passed = report.lost == 0
        && report.duplicates == 0
        && report.out_of_order == 0
        && report.stale_acks == 0;
    Ok(report)
}

fn sum(done: &[PhaseDone]) -> Counters {
    let mut t = Counters::default();
    for d in done {
        t.add(&d.counters);
    }
    t
}

fn drive(
    fleet: &mut Fleet,
    cli: &Cli,
    plan: &Plan,
    run_id: u32,
    run_since: u64,
    report: &mut Report,
) -> Result<()> {
    let c = &cli.common;
    let workers = fleet.len();
    let n = plan.conns.len();
    let parts = plan.split(workers);
    let senders_per_worker: Vec<usize> = parts
        .iter()
        .map(|p| {
            p.iter()
                .map(|c| c.threads.iter().filter(|t| t.send).count())
                .sum()
        })
        .collect();
    let total_senders: usize = senders_per_worker.iter().sum();
    let conns_per_worker: Vec<usize> = parts.iter().map(Vec::len).collect();
    for (w, conns) in parts.into_iter().enumerate() {
        let init = Init {
            worker: w,
            run_id,
            run_since,
            body_size: c.body_size,
            conns,
            // On a cluster every connection carries its own node's key.
            server_key: if is_cluster(c) {
                None
            } else {
                server_key(c)?.map(|k| k.to_string())
            },
            ws: c.ws,
        };
        fleet.send(w, &ToWorker::Init(init))?;
    }

    let server_before = c.server_pid.and_then(sys::process_rss_bytes);
    let kernel_before = c.server_pid.and_then(|_| KernelSnapshot::read());

    // Ramp.
    let (rate, sync, max_connecting) = match cli.command {
        Command::Connect { rate, .. } => (rate, false, 1_000),
        Command::Storm { max_connecting, .. } => (c.connect_rate, true, max_connecting),
        _ => (c.connect_rate, true, 1_000),
    };
    let ramp_secs = if rate > 0.0 {
        n as f64 / rate
    } else {
        n as f64 / 1_000.0
    };
    let t0 = Instant::now();
    fleet.broadcast(&ToWorker::Connect {
        rate: rate / workers as f64,
        max_connecting,
        sync,
    })?;
    let done = fleet.wait_done(Phase::Connect, Duration::from_secs_f64(ramp_secs + 300.0))?;
    let totals = sum(&done);
    report.connect_secs = t0.elapsed().as_secs_f64();
    report.connected = totals.ready;
    report.connect_failures = totals.failed;
    report.connect_rate_per_sec = totals.auth_ok as f64 / report.connect_secs.max(1e-9);
    fleet.note(&format!(
        "{} of {n} connections ready in {:.1}s ({:.0}/s)",
        totals.ready, report.connect_secs, report.connect_rate_per_sec
    ));

    let mut storm: Vec<StormTimes> = Vec::new();
    if let Command::Connect { hold, .. } = cli.command {
        fleet.sleep(Duration::from_secs_f64(hold))?;
        let ready = fleet.totals().ready.max(1) as f64;
        if let (Some(before), Some(after)) =
            (server_before, c.server_pid.and_then(sys::process_rss_bytes))
        {
            report.server_rss_bytes_per_conn = Some((after as f64 - before as f64) / ready);
        }
        if let (Some(before), Some(after)) = (
            kernel_before,
            c.server_pid.and_then(|_| KernelSnapshot::read()),
        ) {
            report.kernel_bytes_per_socket = before.bytes_per_socket(&after);
        }
    } else {
        fleet.broadcast(&ToWorker::Setup)?;
        let done = fleet.wait_done(Phase::Setup, Duration::from_secs(300))?;
        let threads: Vec<(u32, u64)> = done
            .iter()
            .flat_map(|d| d.threads.iter().copied())
            .collect();
        fleet.note(&format!("{} threads ready", threads.len()));

        let spec = traffic_spec(cli, n, c.settle_secs, threads);
        let duration = spec.duration_ms as f64 / 1000.0;
        let wait = Duration::from_secs_f64(duration + spec.drain_ms as f64 / 1000.0 + 60.0);
        let total_rate = spec.rate;
        let total_reconnects = spec.reconnects_per_sec;
        for w in 0..workers {
            let mut s = spec.clone();
            s.rate = if total_senders > 0 {
                total_rate * senders_per_worker[w] as f64 / total_senders as f64
            } else {
                0.0
            };
            s.reconnects_per_sec = total_reconnects * conns_per_worker[w] as f64 / n as f64;
            fleet.send(w, &ToWorker::Traffic(s))?;
        }
        let done = fleet.wait_done(Phase::Traffic, wait)?;
        storm = done.iter().filter_map(|d| d.storm).collect();
        report.traffic_secs = duration;
    }

    let (collected, verdict) = settle_and_verify(fleet, plan, c.settle_secs)?;
    fill_report(report, fleet, &collected, &verdict, &storm)
}

fn traffic_spec(cli: &Cli, n: usize, settle_secs: f64, threads: Vec<(u32, u64)>) -> TrafficSpec {
    let mut s = TrafficSpec {
        duration_ms: 0,
        rate: 0.0,
        window: 16,
        random_pick: false,
        receipts: false,
        read_receipts: false,
        typing: false,
        reconnects_per_sec: 0.0,
        storm_at_ms: None,
        max_connecting: 1_000,
        drain_ms: (settle_secs * 1000.0) as u64,
        threads,
    };
    let ms = |secs: f64| (secs * 1000.0) as u64;
    match cli.command {
        Command::Chat {
            rate,
            window,
            duration,
            receipts,
            ..
        } => {
            (s.rate, s.window, s.duration_ms, s.receipts) = (rate, window, ms(duration), receipts);
        }
        Command::Group {
            rate,
            duration,
            window,
            receipts,
            ..
        } => {
            (s.rate, s.window, s.duration_ms, s.receipts) = (rate, window, ms(duration), receipts);
        }
        Command::Storm {
            rate,
            duration,
            max_connecting,
            ..
        } => {
            s.rate = rate.unwrap_or((n as f64 / 10.0).max(1.0));
            s.duration_ms = ms(duration);
            s.storm_at_ms = Some(ms(duration / 2.0));
            s.max_connecting = max_connecting;
            // Recovery of every connection is part of the phase.
            s.drain_ms = s.drain_ms.max(120_000);
        }
        Command::Mixed {
            duration,
            rate,
            reconnects_per_sec,
            ..
        } => {
            s.rate = rate.unwrap_or((n as f64 / 20.0).max(1.0));
            s.reconnects_per_sec = reconnects_per_sec.unwrap_or(n as f64 / 200.0);
            s.duration_ms = ms(duration);
            (
                s.window,
                s.random_pick,
                s.receipts,
                s.read_receipts,
                s.typing,
            ) = (8, true, true, true, true);
        }
        Command::Connect { .. } | Command::Worker | Command::Probe(_) => {}
    }
    s
}

fn check(plan: &Plan, collected: &[Collected]) -> Verdict {
    let sent: Vec<SentLedger> = collected
        .iter()
        .flat_map(|c| c.sent.iter().cloned())
        .collect();
    let seen: Vec<SeenLedger> = collected
        .iter()
        .flat_map(|c| c.seen.iter().cloned())
        .collect();
    verify(|t| plan.members_of(t), &sent, &seen)
}

/// Collects until nothing is missing or `settle_secs` have passed; then, if messages are
/// still missing, has their recipients SYNC from the start of the run and collects again.
fn settle_and_verify(
    fleet: &mut Fleet,
    plan: &Plan,
    settle_secs: f64,
) -> Result<(Vec<Collected>, Verdict)> {
    let deadline = Instant::now() + Duration::from_secs_f64(settle_secs);
    let timeout = Duration::from_secs(120);
    loop {
        let collected = fleet.collect(timeout)?;
        let verdict = check(plan, &collected);
        if verdict.lost == 0 {
            return Ok((collected, verdict));
        }
        if Instant::now() >= deadline {
            break;
        }
        fleet.sleep(Duration::from_secs(1))?;
    }
    let collected = fleet.collect(timeout)?;
    let verdict = check(plan, &collected);
    if verdict.lost == 0 {
        return Ok((collected, verdict));
    }
    fleet.note(&format!(
        "{} deliveries missing for {} users; final SYNC (e.g. {})",
        verdict.lost,
        verdict.users_with_gaps.len(),
        verdict.examples.first().map_or("", String::as_str)
    ));
    let workers = fleet.len();
    let mut per_worker = vec![Vec::new(); workers];
    for &u in &verdict.users_with_gaps {
        per_worker[u as usize % workers].push(u);
    }
    for (w, users) in per_worker.into_iter().enumerate() {
        fleet.send(w, &ToWorker::FinalSync { users })?;
    }
    fleet.wait_done(Phase::FinalSync, timeout)?;
    let collected = fleet.collect(timeout)?;
    let verdict = check(plan, &collected);
    for e in &verdict.examples {
        fleet.note(&format!("lost: {e}"));
    }
    Ok((collected, verdict))
}

fn fill_report(
    report: &mut Report,
    fleet: &Fleet,
    collected: &[Collected],
    verdict: &Verdict,
    storm: &[StormTimes],
) -> Result<()> {
    let mut totals = Counters::default();
    let mut lat = Latencies::default();
    for c in collected {
        totals.add(&c.counters);
        lat.merge(&Latencies::decode(&c.latencies)?)?;
    }
    report.sent = totals.sent;
    report.acked = totals.acked;
    report.stale_acks = totals.stale_acks;
    report.send_errors = totals.send_errors;
    report.delivered = totals.delivered;
    report.lost = verdict.lost;
    report.duplicates = totals.duplicates;
    report.out_of_order = totals.out_of_order;
    report.recovered_by_sync = totals.recovered_by_sync;
    if report.traffic_secs > 0.0 {
        report.delivered_per_sec = totals.delivered_in_window as f64 / report.traffic_secs;
        report.acked_per_sec = totals.acked as f64 / report.traffic_secs;
    }
    report.ack_latency_us = Summary::of(&lat.ack);
    report.delivery_latency_us = Summary::of(&lat.delivery);
    report.connect_latency_us = Summary::of(&lat.connect);
    report.disconnects = totals.disconnects;
    report.reconnects = totals.reconnects;
    report.errors = totals.errors;
    report.setup_errors = totals.setup_errors;
    if fleet.is_processes() && report.connections > 0 {
        let rss: u64 = collected.iter().filter_map(|c| c.rss_bytes).sum();
        report.loadgen_rss_bytes_per_conn = Some(rss as f64 / report.connections as f64);
    }
    if !storm.is_empty() {
        let recover = storm
            .iter()
            .map(|s| s.recover_ms)
            .collect::<Option<Vec<u64>>>();
        report.storm = Some(StormReport {
            dropped: storm.iter().map(|s| s.dropped).sum(),
            drop_ms: storm.iter().map(|s| s.drop_ms).max().unwrap_or(0),
            recover_ms: recover.map(|r| r.into_iter().max().unwrap_or(0)),
        });
    }
    Ok(())
}
