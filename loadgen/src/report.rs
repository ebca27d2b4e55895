//! The result of a run, as printed on stdout and written with `--json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::Summary;

/// Everything a run measured. Latencies are in microseconds; rates per second of wall time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub scenario: String,
    /// Connections planned (one per user).
    pub connections: u64,
    /// Connections authenticated at the end of the ramp.
    pub connected: u64,
    /// Connections given up on after retries.
    pub connect_failures: u64,
    /// Seconds from the first connect to the last connection ready.
    pub connect_secs: f64,
    /// Connections authenticated per second during the ramp.
    pub connect_rate_per_sec: f64,
    pub sent: u64,
    pub acked: u64,
    /// SENDs answered with a message from before the run: the server took them for retries
    /// of an earlier run's sends and stored nothing. Never expected; fails the run.
    pub stale_acks: u64,
    pub send_errors: u64,
    /// Distinct (message, recipient device) deliveries, by push or sync.
    pub delivered: u64,
    /// (message, recipient) pairs acked but never seen, after a final SYNC.
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Deliveries that were first seen in a SYNC (reconnects, or the final SYNC).
    pub recovered_by_sync: u64,
    /// Deliveries by push during the traffic window, per second of it.
    pub delivered_per_sec: f64,
    pub acked_per_sec: f64,
    pub ack_latency_us: Summary,
    pub delivery_latency_us: Summary,
    pub connect_latency_us: Summary,
    /// Server RSS growth from before the ramp to the hold point, per connected connection.
    pub server_rss_bytes_per_conn: Option<f64>,
    /// Kernel memory per TCP socket (`sys` module docs say how it is measured).
    pub kernel_bytes_per_socket: Option<f64>,
    /// The loadgen's own resident memory per connection, workers summed (process workers only).
    pub loadgen_rss_bytes_per_conn: Option<f64>,
    pub storm: Option<StormReport>,
    /// Ready connections closed by the server or the network.
    pub disconnects: u64,
    /// Connections the loadgen closed on purpose (mixed, storm) and reopened.
    pub reconnects: u64,
    /// ERROR_REPLY codes received, by name.
    pub errors: BTreeMap<String, u64>,
    pub setup_errors: u64,
    /// Seconds of traffic (the send window).
    pub traffic_secs: f64,
    /// Seconds of the whole run.
    pub duration_secs: f64,
    pub workers: u64,
    pub source_ips: u32,
    pub servers: Vec<String>,
    pub run_id: u32,
    /// Lost, duplicates, out of order and stale acks are all zero.
    pub passed: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct StormReport {
    pub dropped: u64,
    /// Longest time a worker took to close all its connections.
    pub drop_ms: u64,
    /// Time until every connection was back, authenticated and synced (slowest worker); null
    /// if some never came back.
    pub recover_ms: Option<u64>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }
}

/// Keys every JSON report has (issue 5's list, plus run facts); latency objects have
/// [`LATENCY_QUANTILES`].
pub const REQUIRED_KEYS: &[&str] = &[
    "scenario",
    "connections",
    "sent",
    "acked",
    "delivered",
    "lost",
    "duplicates",
    "delivered_per_sec",
    "ack_latency_us",
    "delivery_latency_us",
    "server_rss_bytes_per_conn",
    "kernel_bytes_per_socket",
    "duration_secs",
    "workers",
];

/// The quantiles of `ack_latency_us` and `delivery_latency_us`, in microseconds.
pub const LATENCY_QUANTILES: &[&str] = &["p50", "p99", "p999", "max"];

/// What a JSON report lacks of [`REQUIRED_KEYS`] and the latency quantiles (empty when whole).
pub fn missing_keys(v: &serde_json::Value) -> Vec<String> {
    let mut missing: Vec<String> = REQUIRED_KEYS
        .iter()
        .filter(|k| v.get(**k).is_none())
        .map(|k| k.to_string())
        .collect();
    for lat in ["ack_latency_us", "delivery_latency_us"] {
        for q in LATENCY_QUANTILES {
            if !v[lat][q].is_u64() {
                missing.push(format!("{lat}.{q}"));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_keys() {
        let r = Report {
            scenario: "chat".into(),
            passed: true,
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(missing_keys(&v), Vec::<String>::new());
        assert!(v["server_rss_bytes_per_conn"].is_null());
        assert!(v["kernel_bytes_per_socket"].is_null());
        let back: Report = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }
}
