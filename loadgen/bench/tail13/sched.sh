#!/bin/bash
# Usage: sched.sh B NAME "SERVER FLAGS"; then python3 sched.py B/runs/NAME.sched (wake-up latency per thread). Root (ftrace).
# sched.sh B NAME "server flags": a 1K chat run with ftrace of the server's wake-ups (sched_wakeup → sched_switch in)
B=$1; name=$2; sflags=$3
T=/sys/kernel/tracing/instances/tail13sched
mkdir -p $T
( cd "$(dirname "$0")/../../.." && B=$B WAIT_MAX=5 nice -n -10 bash loadgen/bench/run-one.sh $name "$sflags" chat --pairs 1000 --rate 1000 --duration 8 --settle-secs 3 ) &
rp=$!
for _ in $(seq 100); do spid=$(pgrep -f "^$B/bin/courier serve --data-dir $B/runs/$name.d" | head -1); [ -n "$spid" ] && break; sleep 0.1; done
echo 0 > $T/tracing_on; echo > $T/trace; echo 65536 > $T/buffer_size_kb
sleep 4
echo 1 > $T/events/sched/sched_wakeup/enable; echo 1 > $T/events/sched/sched_switch/enable
echo 1 > $T/tracing_on
sleep 4
echo 0 > $T/tracing_on
grep -v '^#' $T/trace > $B/runs/$name.sched
echo 0 > $T/events/sched/sched_wakeup/enable; echo 0 > $T/events/sched/sched_switch/enable
wait $rp
