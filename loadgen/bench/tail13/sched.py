import re, sys
# wake-up latency (sched_wakeup → switched in) per thread name, from an ftrace dump
woke = {}; lat = {}
for line in open(sys.argv[1]):
    m = re.search(r'\s([\d.]+): sched_wakeup: comm=(\S+) pid=(\d+)', line)
    if m:
        woke.setdefault(m.group(3), (float(m.group(1)), m.group(2))); continue
    m = re.search(r'\s([\d.]+): sched_switch: .* ==> next_comm=(\S+) next_pid=(\d+)', line)
    if m and m.group(3) in woke:
        t0, comm = woke.pop(m.group(3)); lat.setdefault(re.sub(r'-?\d+$', '', comm) if not comm.startswith(('shard','commit')) else comm, []).append((float(m.group(1)) - t0) * 1e6)
for comm, v in sorted(lat.items(), key=lambda x: -len(x[1]))[:10]:
    v.sort(); print(f"{comm:16s} n={len(v):6d} p50={v[len(v)//2]:.0f}us p90={v[int(len(v)*.9)]:.0f} p99={v[int(len(v)*.99)]:.0f} max={v[-1]:.0f}")
