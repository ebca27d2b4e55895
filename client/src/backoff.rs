//! Jittered exponential backoff between reconnect attempts.

use std::time::Duration;

use rand::Rng;

/// The shape of the delays: `initial`, doubling (by `factor`) up to `max`, each scattered by
/// ±`jitter` so that clients cut off together do not come back together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    /// The first delay.
    pub initial: Duration,
    /// The ceiling before jitter.
    pub max: Duration,
    /// Growth per attempt.
    pub factor: f64,
    /// Fraction of the delay added or removed at random, in `0.0..1.0`.
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            factor: 2.0,
            jitter: 0.2,
        }
    }
}

/// One run of attempts: call [`Backoff::next_delay`] after each failure.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    current: Duration,
}

impl Backoff {
    /// Starts at `policy.initial`.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            current: policy.initial,
        }
    }

    /// The delay before the next attempt; grows the base delay for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = base
            .mul_f64(self.policy.factor.max(1.0))
            .min(self.policy.max);
        let jitter = self.policy.jitter.clamp(0.0, 0.99);
        if jitter == 0.0 {
            return base;
        }
        let scale = rand::rng().random_range(1.0 - jitter..=1.0 + jitter);
        base.mul_f64(scale)
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.current = self.policy.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_ceiling_within_jitter() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let bases = [100u64, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000];
        for base in bases {
            let d = b.next_delay().as_secs_f64() * 1000.0;
            let base = base as f64;
            assert!(
                d >= base * 0.8 - 0.001 && d <= base * 1.2 + 0.001,
                "{d} vs {base}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[test]
    fn no_jitter_is_exact() {
        let policy = BackoffPolicy {
            jitter: 0.0,
            ..BackoffPolicy::default()
        };
        let mut b = Backoff::new(policy);
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }
}
