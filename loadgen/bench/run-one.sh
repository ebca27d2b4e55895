#!/bin/bash
# One BENCHMARKS.md run: run-one.sh NAME "SERVER FLAGS" LOADGEN ARGS…
#
# Starts `courier serve` on a fresh copy of the provisioned template ($B/tpl/d19k, see
# BENCHMARKS.md), runs `courier-loadgen` against it as a separate process, writes
# $B/runs/NAME.json, stops the server it started (by pid) and removes the copy. Waits (at most
# 120 s) until no compiler runs, since the benchmark machine is shared, and logs the load average
# in $B/runs/index.tsv. WAIT_MAX (seconds, default 120) bounds that wait.
#
# The server is encrypted unless SERVER FLAGS hold --insecure-plaintext; the loadgen pins the key
# the server printed, or goes plaintext with it.
#
# B (default /var/tmp/lgbench) holds bin/courier, bin/courier-loadgen, tpl/ and runs/.
set -u
B=${B:-/var/tmp/lgbench}
name=$1; sargs=$2; shift 2
d=$B/runs/$name.d
waited=0
while [ $waited -lt "${WAIT_MAX:-120}" ] && { pgrep -x rustc || pgrep -x cc1plus || pgrep -x cargo; } >/dev/null; do sleep 2; waited=$((waited+2)); done
rm -rf "$d"; mkdir -p "$d"; cp -a "$B/tpl/d19k" "$d/data"; sync # the copy's writeback is not the run's
# shellcheck disable=SC2086 # server flags are words
"$B/bin/courier" serve --data-dir "$d/data" --listen 127.0.0.1:0 $sargs >"$d/stdout" 2>"$B/runs/$name.server.log" &
spid=$!
for _ in $(seq 100); do grep -q "listening on" "$d/stdout" 2>/dev/null && break; sleep 0.1; done
sleep 0.2 # every listening line is printed at once; let the last one land
addr=$(sed -n 's/^courier listening on //p' "$d/stdout" | grep -v '^ws://' | head -1)
# Over WebSocket (--ws among the loadgen's arguments; SERVER FLAGS then hold --listen-ws): the
# loadgen connects to the WebSocket address.
case " $* " in *" --ws "*) addr=$(sed -n 's|^courier listening on ws://||p' "$d/stdout" | head -1) ;; esac
key=$(sed -n 's/^courier server key //p' "$d/stdout" | head -1)
case "$key" in none*|"") transport=(--insecure-plaintext) ;; *) transport=(--server-key "$key") ;; esac
"$B/bin/courier-loadgen" --server "$addr" "${transport[@]}" --users "$B/tpl/users19k.txt" --json "$B/runs/$name.json" \
    --quiet --server-pid "$spid" "$@" >/dev/null 2>"$B/runs/$name.lg.log"
rc=$?
kill -TERM "$spid"
for _ in $(seq 100); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$spid" 2>/dev/null && kill -KILL "$spid"
wait "$spid" 2>/dev/null
rm -rf "$d"
# The disk is mounted with `discard`: the removal's TRIMs go out at the next journal commit
# and would stall the next run's fsyncs. Let them go now.
sync; sleep 1
echo -e "$name\t$(date +%T)\tload=$(cut -d' ' -f1-3 /proc/loadavg)\twaited=${waited}s\trc=$rc" >> "$B/runs/index.tsv"
exit $rc
