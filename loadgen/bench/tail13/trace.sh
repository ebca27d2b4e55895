#!/bin/bash
# Usage: trace.sh B NAME "SERVER FLAGS" [RATE]; then python3 an.py B NAME (fdatasync of the server as ftrace saw it, loadgen p50/p99, courier_commit_seconds) and python3 q.py B/runs/NAME.ftrace (syncs queued right behind the other shard's). Root (ftrace).
# trace.sh B NAME "server flags" [rate]: one chat run with ftrace of fdatasync on the server and a metrics scrape at the end
B=$1; name=$2; sflags=$3; rate=${4:-1000}
port=$((19000 + RANDOM % 1000))
T=/sys/kernel/tracing/instances/tail13
mkdir -p $T
( cd "$(dirname "$0")/../../.." && B=$B WAIT_MAX=5 nice -n -10 bash loadgen/bench/run-one.sh $name "$sflags --metrics 127.0.0.1:$port" chat --pairs 1000 --rate $rate --duration 8 --settle-secs 3 ) &
rp=$!
for _ in $(seq 100); do spid=$(pgrep -f "^$B/bin/courier serve --data-dir $B/runs/$name.d" | head -1); [ -n "$spid" ] && break; sleep 0.1; done
echo 0 > $T/tracing_on; echo > $T/trace
echo 16384 > $T/buffer_size_kb
for e in sys_enter_fdatasync sys_exit_fdatasync sys_enter_fsync sys_exit_fsync; do echo 1 > $T/events/syscalls/$e/enable; done
echo 1 > $T/tracing_on
while kill -0 $rp 2>/dev/null; do m=$(curl -s --max-time 1 http://127.0.0.1:$port/metrics); [ -n "$m" ] && echo "$m" > $B/runs/$name.metrics; sleep 0.5; done
echo 0 > $T/tracing_on
grep -v '^#' $T/trace > $B/runs/$name.ftrace
for e in sys_enter_fdatasync sys_exit_fdatasync sys_enter_fsync sys_exit_fsync; do echo 0 > $T/events/syscalls/$e/enable; done
wait $rp
