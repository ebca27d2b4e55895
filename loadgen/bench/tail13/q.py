import re, sys
# From an ftrace dump: commit-thread fdatasyncs, how many started right after another one ended (queued behind it)
ev = []; starts = {}
for line in open(sys.argv[1]):
    m = re.match(r'\s*(commit-\d)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): sys_fdatasync(\(| ->)', line)
    if not m: continue
    tid, ts = m.group(2), float(m.group(3))
    if m.group(4) == '(': starts[tid] = ts
    elif tid in starts: ev.append((starts.pop(tid), ts, m.group(1)))
ev.sort()
behind = 0; gaps = []
for a, b in zip(ev, ev[1:]):
    g = (b[0] - a[1]) * 1e6; gaps.append(g)
    if g < 60 and a[2] != b[2]: behind += 1
busy = sum(e[1] - e[0] for e in ev); span = ev[-1][1] - ev[0][0]
print(f"syncs={len(ev)} queued-behind-other-shard(<60us gap)={behind} ({100*behind/len(ev):.0f}%) disk-busy-in-fsync={100*busy/span:.0f}% of {span:.1f}s")
