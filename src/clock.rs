//! The server clock: microseconds since the Unix epoch, strictly increasing across the whole
//! process, so every value it hands out is unique. Message ids are clock values, which makes
//! them unique, ordered within a thread, and readable as the time the server accepted them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Clock {
    last: AtomicU64,
}

/// Wall-clock microseconds since the Unix epoch.
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Clock {
    /// A clock that never hands out a value at or below `floor` (the highest value recorded
    /// before a restart), even if the wall clock moved back.
    pub fn new(floor: u64) -> Self {
        Self {
            last: AtomicU64::new(floor),
        }
    }

    /// The next value: `max(wall clock, last + 1)`.
    pub fn tick(&self) -> u64 {
        let now = wall_us();
        let mut prev = self.last.load(Ordering::SeqCst);
        loop {
            let next = now.max(prev + 1);
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }

    /// The last value handed out; every later [`tick`](Self::tick) is greater.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ticks_are_strictly_increasing_across_threads() {
        let clock = Arc::new(Clock::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = clock.clone();
                std::thread::spawn(move || (0..10_000).map(|_| c.tick()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a clock value was handed out twice");
    }

    #[test]
    fn a_floor_in_the_future_is_respected() {
        let floor = wall_us() + 10_000_000;
        let clock = Clock::new(floor);
        assert!(clock.tick() > floor);
    }
}
