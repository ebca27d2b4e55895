#!/bin/bash
# CPU per message: cpu-run.sh BIN_DIR NAME "SERVER FLAGS" LOADGEN ARGS…
#
# Like run-one.sh (a fresh copy of the provisioned template, `courier serve` and
# `courier-loadgen` from BIN_DIR as separate processes, encrypted unless SERVER FLAGS hold
# --insecure-plaintext), and prints one line: delivered/s, the server's CPU seconds over the
# loadgen's whole run (from /proc: connect, traffic and settle), the loadgen's (from
# /usr/bin/time), each per delivered message, and the delivery p99 (µs). The environment is
# passed to the server (e.g. GLIBC_TUNABLES for an experiment). T (default /var/tmp/p13/tpl)
# holds d19k/ and users19k.txt; runs go to R (default /var/tmp/cpu-runs), removed after.
set -u
BD=$1; name=$2; sargs=$3; shift 3
# shellcheck source=serve.sh
. "$(dirname "$0")/serve.sh"
serve "$BD" "$name" "$sargs"
s0=$(awk '{print $14+$15}' "/proc/$spid/stat")
/usr/bin/time -f "%U %S" -o "$d/lgtime" "$BD/courier-loadgen" --server "$addr" "${tr[@]}" \
    --users "$T/users19k.txt" --json "$d/out.json" --quiet --server-pid "$spid" "$@" >/dev/null 2>"$d/lg.log"
s1=$(awk '{print $14+$15}' "/proc/$spid/stat")
kill -TERM "$spid"; wait "$spid" 2>/dev/null
python3 - "$d" "$s0" "$s1" "$name" <<'PY'
import json, sys
d, s0, s1, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
j = json.load(open(d + '/out.json'))
u, s = map(float, open(d + '/lgtime').read().split()[-2:])
n = j['delivered']
print(f"{name}: dps={j['delivered_per_sec']:.0f} server_cpu={(s1 - s0) / 100:.2f}s "
      f"loadgen_cpu={u + s:.2f}s (u{u:.1f} s{s:.1f}) server_us/msg={(s1 - s0) * 1e4 / n:.2f} "
      f"lg_us/msg={(u + s) * 1e6 / n:.2f} p99={j['delivery_latency_us']['p99']}")
PY
rm -rf "$d/data"
