import os, time, sys, ctypes
# fs3.py DIR SECONDS RATE MODE: one thread, 300-byte write + fdatasync paced at RATE, into a file
# that is fallocate(KEEP_SIZE)'d (prealloc: RocksDB's WAL, i_size grows with every write) or
# already written and synced (recycled: RocksDB's recycled WAL, i_size never changes).
d, secs, rate, mode = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
libc = ctypes.CDLL("libc.so.6", use_errno=True)
p = os.path.join(d, 'fs3-' + mode); fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
if mode == 'prealloc':
    libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(64 << 20))
else:
    os.write(fd, b'x' * (64 << 20)); os.fsync(fd); os.lseek(fd, 0, 0)
res = []; period = 1 / rate; t_next = time.perf_counter(); end = t_next + secs
while time.perf_counter() < end:
    os.write(fd, b'z' * 300)
    t = time.perf_counter(); os.fdatasync(fd); res.append((time.perf_counter() - t) * 1e6)
    t_next += period
    dl = t_next - time.perf_counter()
    if dl > 0: time.sleep(dl)
res.sort(); n = len(res)
print(f"{mode:9s} n={n} rate={n/secs:.0f}/s p50={res[n//2]:.0f}us p90={res[int(n*.9)]:.0f} p99={res[int(n*.99)]:.0f} p99.9={res[int(n*.999)]:.0f} max={res[-1]:.0f}")
os.unlink(p)
