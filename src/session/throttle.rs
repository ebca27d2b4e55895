//! Throttles for authentication: bounded tables of failures (or attempts) per key, with
//! exponential backoff or a fixed window, and a token bucket for a global rate.
//!
//! Every table is bounded ([`Table::new`]'s `cap`). When a new key finds the table full, an
//! entry whose state has lapsed is dropped if one turns up among a few sampled entries;
//! otherwise the least recently touched of the samples goes (redis's approximate LRU). A full
//! table therefore never refuses a key and never forgets everything at once. Eviction of a
//! live entry needs `cap` other keys to be recorded after it: callers size `cap` against the
//! rate at which keys can be recorded (see `accounts.rs`), so that an entry lapses before
//! churn could evict it.
//!
//! Time comes in as `now` so tests drive it by hand.

use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use indexmap::IndexMap;

/// Entries sampled to pick one to evict when a table is full.
const EVICTION_SAMPLES: usize = 8;

/// A source address as the throttles see it: an IPv4 address, or an IPv6 /64 (one host or
/// one site normally holds a whole /64, so counting single IPv6 addresses would count
/// nothing). An IPv4-mapped IPv6 address is its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Source::V6Prefix(prefix)
                }
            },
        }
    }
}

/// How recorded events turn into a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `free` events cost nothing; each one after that doubles the wait, from `base` up to
    /// `max`, counted from the latest event. After `reset` without an event, the key starts
    /// over.
    Backoff {
        free: u32,
        base: Duration,
        max: Duration,
        reset: Duration,
    },
    /// At most `limit` events per `window`, counted from the first event of the window.
    Window { limit: u32, window: Duration },
}

impl Policy {
    /// How long a key with `events` recorded, the latest at `last` (the window's start for
    /// [`Policy::Window`]), must still wait at `now`; `None`: not at all.
    fn wait(&self, events: u32, last: Instant, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(last);
        let wait = match *self {
            Policy::Backoff {
                free, base, max, ..
            } => {
                if events < free {
                    return None;
                }
                let doublings = (events - free).min(30);
                base.saturating_mul(1 << doublings).min(max)
            }
            Policy::Window { limit, window } => {
                if events < limit {
                    return None;
                }
                window
            }
        };
        wait.checked_sub(elapsed).filter(|w| !w.is_zero())
    }

    /// Whether an entry last touched at `last` counts nothing any more at `now`.
    fn lapsed(&self, last: Instant, now: Instant) -> bool {
        let span = match *self {
            Policy::Backoff { reset, .. } => reset,
            Policy::Window { window, .. } => window,
        };
        now.saturating_duration_since(last) >= span
    }

    /// The longest a key can be made to wait.
    pub fn longest_wait(&self) -> Duration {
        match *self {
            Policy::Backoff { max, .. } => max,
            Policy::Window { window, .. } => window,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    events: u32,
    /// Backoff: the latest event. Window: the window's first event.
    at: Instant,
    /// The latest time an event was recorded, for eviction.
    touched: Instant,
}

/// Events per key under one [`Policy`], for at most `cap` keys.
pub struct Table<K> {
    policy: Policy,
    cap: usize,
    map: IndexMap<K, Entry>,
}

impl<K: Hash + Eq + Copy> Table<K> {
    pub fn new(policy: Policy, cap: usize) -> Self {
        Self {
            policy,
            cap: cap.max(1),
            map: IndexMap::new(),
        }
    }

    /// How long `key` must wait before its next attempt; `None`: it may go now.
    pub fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let e = self.map.get(key)?;
        if self.policy.lapsed(e.at, now) {
            return None;
        }
        self.policy.wait(e.events, e.at, now)
    }

    /// Records one event (a failure, or an attempt) of `key` at `now`.
    pub fn record(&mut self, key: K, now: Instant) {
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            self.evict_one(now);
        }
        let policy = self.policy;
        let e = self.map.entry(key).or_insert(Entry {
            events: 0,
            at: now,
            touched: now,
        });
        if policy.lapsed(e.at, now) {
            e.events = 0;
            e.at = now;
        }
        e.events = e.events.saturating_add(1);
        if matches!(policy, Policy::Backoff { .. }) {
            e.at = now;
        }
        e.touched = now;
    }

    /// Takes back one event of `key` (an attempt that turned out fine).
    pub fn refund(&mut self, key: &K) {
        if let Some(e) = self.map.get_mut(key) {
            e.events = e.events.saturating_sub(1);
            if e.events == 0 {
                self.map.swap_remove(key);
            }
        }
    }

    /// Forgets `key` (its owner proved who they are).
    pub fn forget(&mut self, key: &K) {
        self.map.swap_remove(key);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops a lapsed entry among a few sampled ones if there is one, else the least recently
    /// touched sample.
    fn evict_one(&mut self, now: Instant) {
        let len = self.map.len();
        if len == 0 {
            return;
        }
        let start = rand::random_range(0..len);
        let mut victim = start;
        for i in 0..EVICTION_SAMPLES.min(len) {
            let at = (start + i * (len / EVICTION_SAMPLES).max(1)) % len;
            let Some((_, e)) = self.map.get_index(at) else {
                continue;
            };
            if self.policy.lapsed(e.at, now) {
                victim = at;
                break;
            }
            if self
                .map
                .get_index(victim)
                .is_some_and(|(_, v)| e.touched < v.touched)
            {
                victim = at;
            }
        }
        self.map.swap_remove_index(victim);
    }
}

/// A token bucket: `per_sec` tokens a second, at most `burst` saved up.
pub struct Bucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_sec: f64::from(per_sec.max(1)),
            burst,
            tokens: burst,
            at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let gained = now.saturating_duration_since(at).as_secs_f64() * self.per_sec;
            self.tokens = (self.tokens + gained).min(self.burst);
        }
        self.at = Some(now);
    }

    /// How long until a token is there; `None`: one is there now.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        (self.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
    }

    /// Takes a token (call after [`wait`](Self::wait) said one is there).
    pub fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    /// Gives a token back.
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }
}

/// Whole seconds to announce as a retry hint: at least 1, rounded up.
pub fn hint_secs(wait: Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn backoff(free: u32) -> Policy {
        Policy::Backoff {
            free,
            base: SEC,
            max: 60 * SEC,
            reset: 3600 * SEC,
        }
    }

    #[test]
    fn backoff_doubles_after_the_free_failures_up_to_the_cap() {
        let mut t = Table::new(backoff(3), 100);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.wait(&"a", now), None);
            t.record("a", now);
        }
        assert_eq!(t.wait(&"a", now), Some(SEC));
        assert_eq!(t.wait(&"b", now), None, "another key is not affected");
        let mut at = now + SEC;
        assert_eq!(t.wait(&"a", at), None);
        let mut expect = 2 * SEC;
        for _ in 0..10 {
            t.record("a", at);
            assert_eq!(t.wait(&"a", at), Some(expect.min(60 * SEC)));
            at += expect.min(60 * SEC);
            assert_eq!(t.wait(&"a", at), None);
            expect *= 2;
        }
        t.forget(&"a");
        assert_eq!(t.wait(&"a", at), None);
    }

    #[test]
    fn a_key_starts_over_after_the_reset_time() {
        let mut t = Table::new(backoff(1), 100);
        let now = Instant::now();
        t.record("a", now);
        t.record("a", now);
        assert!(t.wait(&"a", now).is_some());
        let later = now + 3600 * SEC;
        assert_eq!(t.wait(&"a", later), None);
        t.record("a", later);
        assert_eq!(
            t.wait(&"a", later),
            Some(SEC),
            "one failure since the reset"
        );
    }

    #[test]
    fn a_window_allows_its_limit_then_waits_for_the_window_to_end() {
        let mut t = Table::new(
            Policy::Window {
                limit: 2,
                window: 10 * SEC,
            },
            100,
        );
        let now = Instant::now();
        t.record(1, now);
        t.record(1, now + SEC);
        assert_eq!(t.wait(&1, now + 2 * SEC), Some(8 * SEC));
        assert_eq!(t.wait(&1, now + 10 * SEC), None);
        t.record(1, now + 10 * SEC);
        assert_eq!(t.wait(&1, now + 10 * SEC), None, "a new window");
    }

    #[test]
    fn refunds_take_back_an_attempt() {
        let mut t = Table::new(backoff(1), 100);
        let now = Instant::now();
        t.record("a", now);
        t.record("a", now);
        assert!(t.wait(&"a", now).is_some());
        t.refund(&"a");
        t.refund(&"a");
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_table_stays_at_its_cap_and_keeps_recent_keys() {
        let mut t = Table::new(backoff(1), 64);
        let now = Instant::now();
        // An old key that keeps failing, then a flood of new keys.
        for _ in 0..5 {
            t.record(u32::MAX, now);
        }
        for i in 0..100_000u32 {
            t.record(i, now + Duration::from_millis(u64::from(i)));
            assert!(t.len() <= 64);
        }
        assert_eq!(t.len(), 64);
        // The newest keys are (mostly) still there: eviction picks old entries.
        let newest_kept = (100_000 - 16..100_000u32)
            .filter(|i| t.map.contains_key(i))
            .count();
        assert!(
            newest_kept >= 12,
            "only {newest_kept} of the 16 newest kept"
        );
    }

    #[test]
    fn a_lapsed_entry_is_evicted_first() {
        let mut t = Table::new(backoff(1), 2);
        let now = Instant::now();
        t.record("old", now);
        t.record("live", now + 3000 * SEC);
        t.record("new", now + 3601 * SEC);
        assert!(t.map.contains_key("live") && t.map.contains_key("new"));
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let mut b = Bucket::new(2, 2);
        let now = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.wait(now), None);
            b.take(now);
        }
        assert_eq!(b.wait(now), Some(Duration::from_millis(500)));
        assert_eq!(b.wait(now + Duration::from_millis(500)), None);
        b.take(now + Duration::from_millis(500));
        b.give_back();
        assert_eq!(b.wait(now + Duration::from_millis(500)), None);
    }

    #[test]
    fn ipv6_is_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of("10.0.0.1".parse().unwrap()));
        assert_ne!(
            Source::of("10.0.0.1".parse().unwrap()),
            Source::of("10.0.0.2".parse().unwrap())
        );
    }

    #[test]
    fn hints_round_up_to_whole_seconds() {
        assert_eq!(hint_secs(Duration::ZERO), 1);
        assert_eq!(hint_secs(Duration::from_millis(1500)), 2);
        assert_eq!(hint_secs(Duration::from_secs(3)), 3);
    }
}
