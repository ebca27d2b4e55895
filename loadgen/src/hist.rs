//! Latency histograms: recorded in microseconds per worker, shipped to the parent as hex of the
//! HdrHistogram V2 encoding, merged there, and summarised as p50/p99/p999/max.

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Significant figures kept: 0.1% resolution at every magnitude.
const SIGFIG: u8 = 3;

/// The latencies one worker (or, merged, the whole run) measured, in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// SEND written → SENT read by the sender.
    pub ack: Histogram<u64>,
    /// SEND written (timestamp in the body) → MESSAGE_PUSH read by a recipient.
    pub delivery: Histogram<u64>,
    /// Connect started → AUTH_OK read (TCP handshake, HELLO, RESUME).
    pub connect: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            ack: new_histogram(),
            delivery: new_histogram(),
            connect: new_histogram(),
        }
    }
}

pub fn new_histogram() -> Histogram<u64> {
    let mut h = Histogram::new(SIGFIG).expect("3 significant figures is a valid precision");
    h.auto(true);
    h
}

/// Records nanoseconds as microseconds (at least 1, so that a sub-microsecond sample counts).
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    // Auto-resizing histograms accept any value; saturate rather than fail on a wild clock.
    let _ = h.record((ns / 1000).max(1));
}

/// The wire form of [`Latencies`] in a worker's JSON line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncodedLatencies {
    pub ack: String,
    pub delivery: String,
    pub connect: String,
}

impl Latencies {
    pub fn encode(&self) -> EncodedLatencies {
        EncodedLatencies {
            ack: encode(&self.ack),
            delivery: encode(&self.delivery),
            connect: encode(&self.connect),
        }
    }

    pub fn decode(e: &EncodedLatencies) -> Result<Self> {
        Ok(Self {
            ack: decode(&e.ack)?,
            delivery: decode(&e.delivery)?,
            connect: decode(&e.connect)?,
        })
    }

    pub fn merge(&mut self, other: &Latencies) -> Result<()> {
        merge(&mut self.ack, &other.ack)?;
        merge(&mut self.delivery, &other.delivery)?;
        merge(&mut self.connect, &other.connect)
    }
}

/// Hex of the V2 serialization.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut out)
        .expect("serializing into a Vec cannot fail");
    hex::encode(out)
}

pub fn decode(s: &str) -> Result<Histogram<u64>> {
    let raw = hex::decode(s).map_err(|e| Error::Histogram(e.to_string()))?;
    let mut h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut raw.as_slice())
        .map_err(|e| Error::Histogram(format!("{e:?}")))?;
    h.auto(true);
    Ok(h)
}

pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<()> {
    into.add(from)
        .map_err(|e| Error::Histogram(format!("{e:?}")))
}

/// A latency distribution as it appears in the report, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    pub count: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
            count: h.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_equal_one_histogram_of_all_samples() {
        let mut all = new_histogram();
        let mut parts = vec![
            Latencies::default(),
            Latencies::default(),
            Latencies::default(),
        ];
        for i in 0..30_000u64 {
            let v = (i * 7919) % 250_000 + 1;
            all.record(v).unwrap();
            parts[(i % 3) as usize].ack.record(v).unwrap();
        }
        // Through the wire form, as the parent receives them.
        let mut merged = Latencies::default();
        for p in &parts {
            let wire = serde_json::to_string(&p.encode()).unwrap();
            let back = Latencies::decode(&serde_json::from_str(&wire).unwrap()).unwrap();
            merged.merge(&back).unwrap();
        }
        assert_eq!(merged.ack.len(), 30_000);
        assert_eq!(Summary::of(&merged.ack), Summary::of(&all));
        assert!(merged.delivery.is_empty());
    }

    #[test]
    fn summary_quantiles_and_empty() {
        let mut h = new_histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let s = Summary::of(&h);
        assert_eq!((s.p50, s.max, s.count), (500, 1000, 1000));
        assert_eq!(s.p99, 990);
        assert_eq!(Summary::of(&new_histogram()), Summary::default());
        let mut h = new_histogram();
        record_ns(&mut h, 10); // sub-microsecond counts as 1 µs
        record_ns(&mut h, 2_500_000);
        assert_eq!(h.min(), 1);
        assert!(
            h.equivalent(h.max(), 2500),
            "max {} is 2500 at 3 significant figures",
            h.max()
        );
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(decode("zz").is_err());
        assert!(decode("0011").is_err());
    }
}
