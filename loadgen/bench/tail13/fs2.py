import os, time, threading, sys
# Usage: python3 fs2.py DIR SECONDS RATE THREADS
# Two threads, each: write 300 B to one shared preallocated file + fdatasync, paced so that
# both together make ~RATE syncs a second (like two shards' writer threads at 1K/s).
d = sys.argv[1]; secs = float(sys.argv[2]); rate = int(sys.argv[3]); nthr = int(sys.argv[4])
import ctypes; libc = ctypes.CDLL("libc.so.6", use_errno=True)
p = os.path.join(d, 'fs2-wal'); fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(64 << 20))
lock = threading.Lock(); res = []
def run():
    period = nthr / rate; t_next = time.perf_counter(); end = t_next + secs
    while time.perf_counter() < end:
        with lock:
            os.write(fd, b'z' * 300)
            t = time.perf_counter(); os.fdatasync(fd); res.append((time.perf_counter() - t) * 1e6)
        t_next += period
        dl = t_next - time.perf_counter()
        if dl > 0: time.sleep(dl)
ts = [threading.Thread(target=run) for _ in range(nthr)]
[t.start() for t in ts]; [t.join() for t in ts]
res.sort(); n = len(res)
print(f"threads={nthr} n={n} rate={n/secs:.0f}/s p50={res[n//2]:.0f}us p90={res[int(n*.9)]:.0f} p99={res[int(n*.99)]:.0f} p99.9={res[int(n*.999)]:.0f} max={res[-1]:.0f}")
os.unlink(p)
