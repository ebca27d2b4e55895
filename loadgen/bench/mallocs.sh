#!/bin/bash
# malloc calls per delivered message, per server thread: mallocs.sh BIN_DIR NAME "SERVER FLAGS" LOADGEN ARGS…
#
# Starts the server and the loadgen as cpu-run.sh does, waits W seconds (default 4) into the
# run, then counts the server's calls of glibc's malloc and realloc for S seconds (default 4)
# with a uprobe (`perf probe -x libc.so.6 --add malloc`, made once; root), per thread. Prints
# the counts per thread and, divided by the messages delivered in the window (the loadgen's
# --rate times S, so give a paced rate), per message. Counting slows the server: the counts
# are what to read, not the latencies.
set -u
BD=$1; name=$2; sargs=$3; shift 3
W=${W:-4}; S=${S:-4}
# shellcheck source=serve.sh
. "$(dirname "$0")/serve.sh"
libc=$(ldd "$BD/courier" | awk '/libc.so.6/{print $3}')
for f in malloc realloc; do
    perf probe -l 2>/dev/null | grep -q "probe_libc:$f " || perf probe -q -x "$libc" --add "$f"
done
rate=$(echo "$@" | sed -n 's/.*--rate \([0-9]*\).*/\1/p')
serve "$BD" "$name" "$sargs"
"$BD/courier-loadgen" --server "$addr" "${tr[@]}" --users "$T/users19k.txt" --json "$d/out.json" \
    --quiet --server-pid "$spid" "$@" >/dev/null 2>"$d/lg.log" &
lpid=$!
sleep "$W"
perf stat -e probe_libc:malloc,probe_libc:realloc --per-thread -p "$spid" -o "$d/stat" -- sleep "$S" >/dev/null 2>&1
wait "$lpid"
kill -TERM "$spid"; wait "$spid" 2>/dev/null
python3 - "$d/stat" "$name" "${rate:-0}" "$S" <<'PY'
import collections, re, sys
path, name, rate, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
calls = collections.Counter()
for line in open(path):
    m = re.match(r'\s*(\S+)-\d+\s+([\d,]+)\s+probe_libc:(malloc|realloc)', line)
    if m:
        calls[m.group(1)] += int(m.group(2).replace(',', ''))
msgs = rate * secs
print(f"{name}: {msgs:.0f} messages in {secs:.0f} s")
for thread, n in sorted(calls.items(), key=lambda kv: -kv[1]):
    print(f"  {thread:16s} {n:9d} calls" + (f"  {n / msgs:.2f} per message" if msgs else ""))
PY
rm -rf "$d/data"
