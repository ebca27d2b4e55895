import sys, re, json
# fdatasync durations per thread from an ftrace dump; loadgen p50/p99 from the json; commit histogram
def pct(v, p):
    v = sorted(v); return v[min(len(v)-1, int(len(v)*p))] if v else 0
B, name = sys.argv[1], sys.argv[2]
try:
    starts = {}; durs = []; comms = {}
    for line in open(f"{B}/runs/{name}.ftrace"):
        m = re.match(r'\s*(.+?)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): sys_(fdatasync|fsync)(\(| ->)', line)
        if not m: continue
        comm, tid, ts, kind = m.group(1), m.group(2), float(m.group(3)), ('enter' if m.group(5)=='(' else 'exit')
        if kind == 'enter': starts[tid] = ts
        elif tid in starts:
            d = (ts - starts.pop(tid)) * 1e6; durs.append(d); comms[comm] = comms.get(comm, 0) + 1
    print(f"fdatasync n={len(durs)} p50={pct(durs,.5):.0f}us p90={pct(durs,.9):.0f} p99={pct(durs,.99):.0f} max={max(durs or [0]):.0f} by={comms}")
except FileNotFoundError: pass
d = json.load(open(f"{B}/runs/{name}.json"))
for k in ('delivery_latency_us', 'ack_latency_us'):
    h = d[k]; print(k, {x: h[x] for x in h if x in ('p50','p90','p99','p999','max','count')})
print('sent', d['sent'], 'delivered', d['delivered'], 'lost', d['lost'])
try:
    txt = open(f"{B}/runs/{name}.metrics").read()
    b = re.findall(r'courier_commit_seconds_bucket\{le="([^"]+)"\} (\d+)', txt)
    print('commit hist', ' '.join(f"{le}:{n}" for le, n in b))
except FileNotFoundError: pass
