//! What the loadgen reads from and asks of the operating system: the open-file limit, the
//! monotonic clock, process RSS, and kernel socket memory.
//!
//! # How kernel bytes per socket are measured
//!
//! Before the ramp and at the hold point the parent reads `/proc/net/sockstat`
//! (`TCP: alloc A … mem M`, `M` in pages) and `Slab:` from `/proc/meminfo`. Then
//!
//! ```text
//! kernel_bytes_per_socket = (ΔSlab + ΔM × page_size) / ΔA
//! ```
//!
//! `ΔA` counts every TCP socket that appeared, and on loopback both ends of a connection are on
//! this host: one connection adds two sockets (ours and the server's), each costing about the
//! same (`struct tcp_sock`, inode, dentry, file, epoll item, buffers). So the figure is per
//! socket, which is also the kernel cost per connection *on the server* of a real deployment.
//! Slab is system-wide: run on a quiet machine, and expect a few percent of noise.

use std::time::{SystemTime, UNIX_EPOCH};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit with cur <= max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes on one host, which is what
/// lets a receiver compute delivery latency from the timestamp in a message body.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Microseconds since the Unix epoch: the unit of message ids and sync watermarks.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resident set size of a process in bytes (`VmRSS` of `/proc/PID/status`).
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmRSS:").map(|kib| kib * 1024)
}

/// Our own resident set size in bytes.
pub fn own_rss_bytes() -> Option<u64> {
    process_rss_bytes(std::process::id())
}

/// A snapshot of kernel memory spent on sockets; see the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelSnapshot {
    /// TCP sockets allocated (`TCP: alloc`).
    pub tcp_alloc: u64,
    /// Pages of TCP buffer memory (`TCP: mem`).
    pub tcp_mem_pages: u64,
    /// `Slab:` of /proc/meminfo, in bytes.
    pub slab_bytes: u64,
}

impl KernelSnapshot {
    pub fn read() -> Option<Self> {
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        Self::parse(&sockstat, &meminfo)
    }

    pub fn parse(sockstat: &str, meminfo: &str) -> Option<Self> {
        let tcp = sockstat.lines().find_map(|l| l.strip_prefix("TCP:"))?;
        let mut fields = tcp.split_whitespace();
        let (mut tcp_alloc, mut tcp_mem_pages) = (None, None);
        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
            match k {
                "alloc" => tcp_alloc = v.parse().ok(),
                "mem" => tcp_mem_pages = v.parse().ok(),
                _ => {}
            }
        }
        let slab_bytes = status_kib(meminfo, "Slab:")? * 1024;
        Some(Self {
            tcp_alloc: tcp_alloc?,
            tcp_mem_pages: tcp_mem_pages?,
            slab_bytes,
        })
    }

    /// Bytes per socket between `self` (before) and `after`; `None` when no socket appeared.
    pub fn bytes_per_socket(&self, after: &Self) -> Option<f64> {
        let sockets = after
            .tcp_alloc
            .checked_sub(self.tcp_alloc)
            .filter(|&n| n > 0)?;
        let slab = after.slab_bytes as f64 - self.slab_bytes as f64;
        let mem = (after.tcp_mem_pages as f64 - self.tcp_mem_pages as f64) * page_size() as f64;
        Some((slab + mem) / sockets as f64)
    }
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_snapshot_parses_sockstat_and_meminfo() {
        let sockstat =
            "sockets: used 300\nTCP: inuse 10 orphan 0 tw 2 alloc 12 mem 3\nUDP: inuse 1 mem 0\n";
        let meminfo = "MemTotal:       1000 kB\nSlab:             2048 kB\n";
        let s = KernelSnapshot::parse(sockstat, meminfo).unwrap();
        assert_eq!(
            s,
            KernelSnapshot {
                tcp_alloc: 12,
                tcp_mem_pages: 3,
                slab_bytes: 2048 * 1024
            }
        );
        let after = KernelSnapshot {
            tcp_alloc: 22,
            tcp_mem_pages: 3,
            slab_bytes: 2048 * 1024 + 20_000,
        };
        assert_eq!(s.bytes_per_socket(&after), Some(2000.0));
        assert_eq!(s.bytes_per_socket(&s), None);
    }

    #[test]
    fn own_process_figures_are_readable() {
        assert!(own_rss_bytes().unwrap() > 0);
        assert!(raise_nofile_limit().unwrap() > 0);
        let a = monotonic_ns();
        assert!(monotonic_ns() >= a);
        assert!(KernelSnapshot::read().is_some());
    }
}
