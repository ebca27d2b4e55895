#!/bin/bash
# One probe run for BENCHMARKS.md: probe.sh BIN_DIR NAME [PROBE ARGS…]
#
# BIN_DIR holds `courier` and `courier-loadgen`. Provisions 4 users into a fresh data dir,
# starts `courier serve --shards 1` (every connection on one shard: the case a heavy read would
# stall), runs `courier-loadgen probe` against it, writes $B/runs/NAME.json, stops the server it
# started (by pid) and removes the data. Logs the load average in $B/runs/index.tsv.
#
# B (default /var/tmp/probebench) holds runs/.
set -u
B=${B:-/var/tmp/probebench}
bin=$1; name=$2; shift 2
d=$B/runs/$name.d
mkdir -p "$B/runs"; rm -rf "$d"; mkdir -p "$d"
"$bin/courier" admin provision --data-dir "$d/data" --users 4 --prefix probe \
    --password pw-probe-1 --argon2-m-kib 64 --out "$d/users.txt" >/dev/null 2>"$d/provision.log" || exit 2
# Plaintext: the probe's connections (probe.rs) do not speak the encrypted transport yet.
"$bin/courier" serve --data-dir "$d/data" --listen 127.0.0.1:0 --shards 1 --fsync batch \
    --rate-limit 1000000 --insecure-plaintext >"$d/stdout" 2>"$B/runs/$name.server.log" &
spid=$!
for _ in $(seq 100); do grep -q "listening on" "$d/stdout" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^courier listening on //p' "$d/stdout" | head -1)
load=$(cut -d' ' -f1-3 /proc/loadavg)
"$bin/courier-loadgen" --server "$addr" --insecure-plaintext --users "$d/users.txt" --json "$B/runs/$name.json" \
    --quiet probe "$@" >/dev/null 2>"$B/runs/$name.lg.log"
rc=$?
kill -TERM "$spid"
for _ in $(seq 100); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$spid" 2>/dev/null && kill -KILL "$spid"
wait "$spid" 2>/dev/null
rm -rf "$d"
echo -e "$name\t$(date +%T)\tload=$load\trc=$rc" >> "$B/runs/index.tsv"
exit $rc
