#!/bin/bash
# CPU and context switches per message, per server thread: thread-cpu.sh BIN_DIR NAME "SERVER FLAGS" LOADGEN ARGS…
#
# Like cpu-run.sh (a fresh copy of the provisioned template, `courier serve` and
# `courier-loadgen` from BIN_DIR as separate processes, encrypted unless SERVER FLAGS hold
# --insecure-plaintext). Prints delivered/s and the delivery p50/p99 (µs), then for each server
# thread (by name: shard-N, commit-N, …) its CPU over the loadgen's whole run (connect, traffic,
# settle) from /proc/PID/task, per delivered message, and its voluntary and involuntary context
# switches per message; then the loadgen's (from /usr/bin/time). T (default /var/tmp/p13/tpl)
# holds d19k/ and users19k.txt; runs go to R (default /var/tmp/cpu-runs), removed after.
set -u
BD=$1; name=$2; sargs=$3; shift 3
# shellcheck source=serve.sh
. "$(dirname "$0")/serve.sh"
serve "$BD" "$name" "$sargs"
snap() {
    for t in /proc/"$spid"/task/*; do
        echo "$(cat "$t/comm") $(awk '{print $14+$15}' "$t/stat") $(awk '/^voluntary_ctxt/{v=$2}/^nonvoluntary/{n=$2}END{print v, n}' "$t/status")"
    done
}
snap >"$d/s0"
/usr/bin/time -f "%U %S %w %c" -o "$d/lgtime" "$BD/courier-loadgen" --server "$addr" "${tr[@]}" \
    --users "$T/users19k.txt" --json "$d/out.json" --quiet --server-pid "$spid" "$@" >/dev/null 2>"$d/lg.log"
snap >"$d/s1"
kill -TERM "$spid"; wait "$spid" 2>/dev/null
python3 - "$d" "$name" <<'PY'
import collections, json, sys
d, name = sys.argv[1], sys.argv[2]
j = json.load(open(d + '/out.json'))
n = j['delivered']
def threads(path):
    r = collections.defaultdict(lambda: [0, 0, 0])
    for line in open(path):
        comm, ticks, vol, invol = line.rsplit(None, 3)
        for i, v in enumerate((ticks, vol, invol)):
            r[comm][i] += int(v)
    return r
a, b = threads(d + '/s0'), threads(d + '/s1')
lat = j['delivery_latency_us']
print(f"{name}: delivered={n} dps={j['delivered_per_sec']:.0f} p50={lat['p50']} p99={lat['p99']}")
total = 0
for comm in sorted(b):
    t, v, nv = (b[comm][i] - a[comm][i] for i in range(3))
    total += t
    if t or v:
        print(f"  {comm:16s} cpu={t / 100:.2f}s us/msg={t * 1e4 / n:.2f} vcs/msg={v / n:.3f} ivcs/msg={nv / n:.3f}")
print(f"  {'server':16s} cpu={total / 100:.2f}s us/msg={total * 1e4 / n:.2f}")
u, s, w, c = open(d + '/lgtime').read().split()[-4:]
cpu = float(u) + float(s)
print(f"  {'loadgen':16s} cpu={cpu:.2f}s us/msg={cpu * 1e6 / n:.2f} vcs/msg={int(w) / n:.3f} ivcs/msg={int(c) / n:.3f}")
PY
rm -rf "$d/data"
