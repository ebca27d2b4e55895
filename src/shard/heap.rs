//! Giving the heap's free memory back to the kernel after a burst (issue 13).
//!
//! glibc keeps what is freed in the middle of its arenas for reuse: after a connect ramp the
//! handshake and read buffers of the connections that were in flight stay resident (about
//! 110 bytes per idle connection at 19K connections). `malloc_trim(0)` returns every whole
//! free page of every arena to the kernel (`madvise(MADV_DONTNEED)`; the pages stay mapped
//! and are faulted in again on reuse). It walks the arenas' free chunks with each arena
//! locked, so it runs from the shards' once-a-second tick, never on a request's path: at most
//! once a second in the whole process, by one shard at a time (the others skip it), and only
//! when the heap moved by at least [`TRIM_AFTER`] bytes since the last trim: the rises of its
//! free bytes (glibc's `mallinfo2().fordblks`) from one look to the next added up, or its
//! bytes in use (`uordblks`) that far from where they were (a ramp of connections frees its
//! handshake buffers between allocations that keep the free bytes flat); and once more when
//! the heap settles after it moved at all (the end of a ramp frees the buffers of the last
//! connections in flight, [`SETTLED`] bytes or more, and then stays still). A trimmed page still
//! counts as free, so the free bytes alone would ask for a trim every second after one burst.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics::HeapMetrics;

/// How far the heap must have moved since the last trim before another is worth its walk of
/// the arenas. What a ramp to 19K connections leaves freed and resident is under 1 MiB (the
/// handshake and read buffers of the ~1,000 connections in flight at a time): a 4 MiB
/// threshold on the free bytes never trimmed there.
pub const TRIM_AFTER: u64 = 512 << 10;

/// A heap that moved less than this in a second has settled; one that moved at least this
/// much since the last trim has something to give back once it settles.
pub const SETTLED: u64 = 64 << 10;

/// How often the free bytes are looked at (and at most trimmed).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// When to trim, from the arenas' free bytes at each check.
#[derive(Debug)]
struct Policy {
    /// The free bytes at the last look; `None` before the first.
    last: Option<u64>,
    /// The rises of the free bytes between looks since the last trim, added up.
    freed: u64,
    /// Bytes in use at the last trim (or the first look).
    used_at_trim: Option<u64>,
    /// Bytes in use at the last look.
    last_used: Option<u64>,
}

impl Policy {
    const fn new() -> Policy {
        Policy {
            last: None,
            freed: 0,
            used_at_trim: None,
            last_used: None,
        }
    }

    /// Whether to trim now that the arenas hold `free` bytes free and `used` in use.
    fn should_trim(&mut self, free: u64, used: u64) -> bool {
        let settled = match (self.last, self.last_used) {
            (Some(f), Some(u)) => free.abs_diff(f) < SETTLED && used.abs_diff(u) < SETTLED,
            _ => false,
        };
        if let Some(last) = self.last {
            self.freed = self.freed.saturating_add(free.saturating_sub(last));
        }
        self.last = Some(free);
        self.last_used = Some(used);
        let used_at_trim = *self.used_at_trim.get_or_insert(used);
        let moved = self.freed.max(used.abs_diff(used_at_trim));
        free >= TRIM_AFTER && (moved >= TRIM_AFTER || (settled && moved >= SETTLED))
    }

    /// A trim left `free` bytes free (trimmed pages included) and `used` in use: the next
    /// trim waits for the heap to move as far again.
    fn trimmed(&mut self, free: u64, used: u64) {
        self.last = Some(free);
        self.freed = 0;
        self.used_at_trim = Some(used);
    }
}

/// The process's trim state: shards share one ([`TRIMMER`]).
pub struct Trimmer {
    state: Mutex<(Option<Instant>, Policy)>,
}

/// The one every shard's tick uses.
pub static TRIMMER: Trimmer = Trimmer::new();

impl Trimmer {
    pub const fn new() -> Trimmer {
        Trimmer {
            state: Mutex::new((None, Policy::new())),
        }
    }

    /// Called from every shard's tick: when a second has passed since the last check and no
    /// other shard is checking, reads the arenas' free bytes and trims them if enough was
    /// freed, counting the trim and its time in `metrics`. Returns whether it trimmed.
    pub fn tick(&self, now: Instant, metrics: &HeapMetrics) -> bool {
        let Some(mut state) = self.state.try_lock() else {
            return false;
        };
        let (next, policy) = &mut *state;
        if next.is_some_and(|at| now < at) {
            return false;
        }
        *next = Some(now + CHECK_EVERY);
        let Some((free, used)) = heap_bytes() else {
            return false;
        };
        if !policy.should_trim(free, used) {
            return false;
        }
        let started = Instant::now();
        trim();
        let took = started.elapsed();
        let (free, used) = heap_bytes().unwrap_or((free, used));
        policy.trimmed(free, used);
        metrics.trimmed(took);
        tracing::debug!(
            free_bytes = free,
            took_us = took.as_micros() as u64,
            "returned the heap's free pages to the kernel (malloc_trim)"
        );
        true
    }
}

impl Default for Trimmer {
    fn default() -> Self {
        Trimmer::new()
    }
}

/// Free and in-use bytes in the arenas (`mallinfo2().fordblks`, `uordblks`); `None` off
/// glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_bytes() -> Option<(u64, u64)> {
    // SAFETY: `mallinfo2` takes no arguments and only reads the allocator's statistics,
    // locking each arena itself; it is safe to call from any thread at any time.
    let m = unsafe { libc::mallinfo2() };
    Some((m.fordblks as u64, m.uordblks as u64))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_bytes() -> Option<(u64, u64)> {
    None
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: `malloc_trim` takes a padding and locks each arena itself while it releases
    // free pages; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_the_heap_moved_enough_since_the_last_trim() {
        let half = TRIM_AFTER / 2;
        let used = 64 << 20;
        let mut p = Policy::new();
        assert!(!p.should_trim(1 << 20, used), "the first look only looks");
        assert!(!p.should_trim((1 << 20) + half, used), "half freed");
        assert!(!p.should_trim(1 << 19, used), "reused");
        assert!(
            p.should_trim((1 << 19) + half, used),
            "the other half freed"
        );
        p.trimmed(32 << 20, used);
        assert!(
            !p.should_trim(32 << 20, used),
            "trimmed pages still count as free: no trim every second after one burst"
        );
        assert!(!p.should_trim(2 << 20, used), "reused");
        assert!(p.should_trim((2 << 20) + TRIM_AFTER, used), "freed again");
        p.trimmed(2 << 20, used);
        assert!(
            p.should_trim(2 << 20, used + TRIM_AFTER),
            "a ramp: the heap grew while its free bytes stayed where they were"
        );
        p.trimmed(2 << 20, used + TRIM_AFTER);
        assert!(
            !p.should_trim(TRIM_AFTER - 1, used),
            "less free than a trim is worth"
        );
        p.trimmed(2 << 20, used);
        let end = (2 << 20) + 2 * SETTLED;
        assert!(!p.should_trim(end, used), "still moving");
        assert!(
            p.should_trim(end, used),
            "the ramp ended: one more trim for what it freed last"
        );
        p.trimmed(end, used);
        assert!(!p.should_trim(end, used), "settled, nothing new");
    }

    /// (resident, all) whole pages inside the byte ranges `blocks` (address, length).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn resident_pages(blocks: &[(usize, usize)]) -> (usize, usize) {
        const PAGE: usize = 4096;
        let (mut resident, mut all) = (0, 0);
        let mut vec = Vec::new();
        for &(at, len) in blocks {
            // Past the free chunk's header and list pointers, which malloc_trim keeps.
            let start = (at + 64).next_multiple_of(PAGE);
            let end = (at + len) / PAGE * PAGE;
            if end <= start {
                continue;
            }
            vec.resize((end - start) / PAGE, 0u8);
            // SAFETY: `start..end` is page-aligned and lies in the process's heap, which stays
            // mapped (malloc_trim only advises the kernel); `vec` has a byte per page.
            let rc =
                unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
            assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
            resident += vec.iter().filter(|&&b| b & 1 == 1).count();
            all += vec.len();
        }
        (resident, all)
    }

    /// 16 MiB freed in the middle of an arena (every other 64 KiB block of 32 MiB, so the
    /// freed blocks cannot merge with the top and `free` cannot give them back by itself)
    /// stays resident until the next tick trims it; a tick within the second after does not
    /// look again.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_tick_after_a_burst_gives_the_freed_memory_back() {
        let trimmer = Trimmer::new();
        let metrics = HeapMetrics::default();
        let t0 = Instant::now();
        trimmer.tick(t0, &metrics);
        let blocks: Vec<Vec<u8>> = (0..512).map(|i| vec![i as u8 | 1; 64 << 10]).collect();
        let (freed, kept): (Vec<_>, Vec<_>) = blocks
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 2 == 0);
        let ranges: Vec<(usize, usize)> = freed
            .iter()
            .map(|(_, b)| (b.as_ptr() as usize, b.len()))
            .collect();
        drop(freed);
        let (held, pages) = resident_pages(&ranges);
        assert!(
            held * 10 >= pages * 9,
            "freed pages stay resident until trimmed ({held} of {pages})"
        );
        assert!(
            trimmer.tick(t0 + CHECK_EVERY, &metrics),
            "16 MiB were freed"
        );
        // Other tests' threads may reuse a few of the freed blocks meanwhile.
        let (after, _) = resident_pages(&ranges);
        assert!(
            after * 4 <= pages,
            "the trim left {after} of {pages} freed pages resident"
        );
        assert_eq!(metrics.trims(), 1);
        assert!(
            !trimmer.tick(t0 + CHECK_EVERY + CHECK_EVERY / 2, &metrics),
            "at most one look a second"
        );
        assert_eq!(kept.len(), 256);
    }
}
