import os, time, sys
# fdatasync cost of 200-byte writes on this disk: (a) appends to a plain file, (b) appends into a
# fallocate(KEEP_SIZE)'d file (what RocksDB does with its WAL), (c) overwrites of written blocks (WAL recycling)
d = sys.argv[1]; n = int(sys.argv[2])
FALLOC_FL_KEEP_SIZE = 1
import ctypes; libc = ctypes.CDLL("libc.so.6", use_errno=True)
def mk(name, mode):
    p = os.path.join(d, name); fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    if mode == 'prealloc': libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(64 << 20))
    if mode == 'recycled':
        os.write(fd, b'x' * (8 << 20)); os.fsync(fd); os.lseek(fd, 0, 0)
    return fd
fds = {m: mk('fs-' + m, m) for m in ('append', 'prealloc', 'recycled')}
res = {m: [] for m in fds}
buf = b'y' * 200
for i in range(n):
    for m, fd in fds.items():
        os.write(fd, buf); t = time.perf_counter(); os.fdatasync(fd); res[m].append((time.perf_counter() - t) * 1e6)
    time.sleep(0.0005)
for m, v in res.items():
    v.sort(); print(f"{m:9s} n={len(v)} p50={v[len(v)//2]:.0f}us p90={v[int(len(v)*.9)]:.0f} p99={v[int(len(v)*.99)]:.0f} max={v[-1]:.0f}")
